//! `bllm report RUN_OR_SWEEP_DIR`: regenerate the tables and plot the curves.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bllm_train::{
    AdapterSummary, KvProbeSummary, LmSummary, MoeSummary, RetrievalSummary, RunSummary,
};
use clap::Args;

/// Arguments of `bllm report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A run directory (with metrics.jsonl) or a sweep directory (with run directories).
    pub dir: PathBuf,
}

/// Curves plotted: (metric key, split, title).
const CURVES: [(&str, &str, &str); 18] = [
    ("loss", "train", "training loss"),
    ("load_entropy", "train", "normalised load entropy (moe)"),
    ("max_over_mean", "train", "max / mean expert load (moe)"),
    ("dropped", "train", "dropped token slots (moe)"),
    (
        "routing_flip",
        "train",
        "routing flip rate on the probe set (moe)",
    ),
    ("bpb", "eval", "held-out bits per byte (lm)"),
    (
        "attention_min",
        "train",
        "lowest head attention entropy / density (lm)",
    ),
    (
        "attention",
        "train",
        "mean head attention entropy / density (lm)",
    ),
    (
        "act_clamp",
        "train",
        "BitLinear activation clamp fraction (lm)",
    ),
    ("recall", "eval", "query Hamming Recall@10 (retrieval)"),
    (
        "bit_balance",
        "train",
        "bit balance: mean |P(bit) − 0.5| (retrieval)",
    ),
    ("accuracy", "eval", "held-out accuracy"),
    ("grad_norm", "train", "gradient norm"),
    (
        "shadow_cosine",
        "train",
        "shadow cosine (STE vs surrogate gradient)",
    ),
    (
        "fd_sign_agreement",
        "train",
        "finite-difference sign agreement",
    ),
    ("flip_ratio", "train", "flip ratio"),
    ("pass_through", "train", "pass-through fraction"),
    (
        "quant_error",
        "train",
        "quantisation error ||W - aB|| / ||W||",
    ),
];

fn read_metrics(run: &Path) -> Result<Vec<serde_json::Value>> {
    let p = run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {} is not JSON", p.display(), i + 1))
        })
        .collect()
}

/// `bllm report`.
pub fn report(a: ReportArgs) -> Result<()> {
    let dir = &a.dir;
    let runs: Vec<PathBuf> = if dir.join("metrics.jsonl").is_file() {
        vec![dir.clone()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("metrics.jsonl").is_file())
            .collect();
        v.sort();
        // A sweep directory lists its run order in runs.json: keep it (tables group in it).
        if let Some(order) = std::fs::read(dir.join("runs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        {
            let rank = |p: &PathBuf| {
                p.file_name()
                    .and_then(|n| order.iter().position(|o| n.to_string_lossy() == *o))
                    .unwrap_or(usize::MAX)
            };
            v.sort_by_key(|p| rank(p));
        }
        v
    };
    if runs.is_empty() {
        bail!(
            "{}: neither a run directory (metrics.jsonl) nor a sweep directory (run directories)",
            dir.display()
        );
    }
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)
        .with_context(|| format!("cannot create {}", plots.display()))?;
    let metrics: Vec<(String, Vec<serde_json::Value>)> = runs
        .iter()
        .map(|r| {
            Ok((
                r.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                read_metrics(r)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut written = 0;
    for (key, split, title) in CURVES {
        let series: Vec<(String, Vec<(f64, f64)>)> = metrics
            .iter()
            .map(|(name, rows)| {
                let pts = rows
                    .iter()
                    .filter(|r| r["split"] == split)
                    .filter_map(|r| Some((r["step"].as_f64()?, r.get(key)?.as_f64()?)))
                    .collect();
                (name.clone(), pts)
            })
            .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let file = plots.join(format!("{}.png", key.replace('/', "_")));
        crate::plot::lines(&file, title, "step", key, &series)?;
        written += 1;
    }
    written += kv_plots(&plots, &summaries::<KvProbeSummary>(&runs))?;
    written += pretrained_plot(&plots, &runs, &metrics)?;
    // Tables (sweeps): regroup the runs by their name without the seed.
    if runs.len() > 1 || runs[0] != *dir {
        let retrieval = summaries::<RetrievalSummary>(&runs);
        let lm = summaries::<LmSummary>(&runs);
        let moe = summaries::<MoeSummary>(&runs);
        let adapter = summaries::<AdapterSummary>(&runs);
        let kv = summaries::<KvProbeSummary>(&runs);
        let (csv, md) = if kv.iter().any(|(_, s)| s.is_some()) {
            crate::train::kv_probe_tables(&kv)
        } else if retrieval.iter().any(|(_, s)| s.is_some()) {
            crate::train::retrieval_tables(&retrieval)
        } else if adapter.iter().any(|(_, s)| s.is_some()) {
            crate::train::adapter_tables(&adapter)
        } else if moe.iter().any(|(_, s)| s.is_some()) {
            crate::train::moe_tables(&moe)
        } else if lm.iter().any(|(_, s)| s.is_some()) {
            crate::train::lm_tables(&lm)
        } else {
            crate::train::tables(&summaries::<RunSummary>(&runs))
        };
        crate::train::write_tables(dir, &csv, &md)?;
    }
    eprintln!(
        "{written} plots in {} ({} run{})",
        plots.display(),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Pretrained LM runs (`summary.json` with `pretrained`): held-out perplexity over the float
/// teacher's, against the tokens trained — what more compute buys. One plot, one line per run;
/// 0 plots when no run is a pretrained LM.
fn pretrained_plot(
    plots: &Path,
    runs: &[PathBuf],
    metrics: &[(String, Vec<serde_json::Value>)],
) -> Result<usize> {
    let mut series = Vec::new();
    for ((_, s), (name, rows)) in summaries::<LmSummary>(runs).into_iter().zip(metrics) {
        let Some(s) = s else {
            continue;
        };
        let Some(p) = s.pretrained.filter(|_| s.steps > 0) else {
            continue;
        };
        let per_step = p.tokens_trained as f64 / s.steps as f64;
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["split"] == "eval")
            .filter_map(|r| {
                Some((
                    r["step"].as_f64()? * per_step,
                    r["perplexity"].as_f64()? / p.teacher_perplexity,
                ))
            })
            .collect();
        if !pts.is_empty() {
            series.push((name.clone(), pts));
        }
    }
    if series.is_empty() {
        return Ok(0);
    }
    crate::plot::lines(
        &plots.join("perplexity_over_teacher.png"),
        "held-out perplexity / float teacher's (pretrained lm)",
        "training tokens",
        "perplexity / teacher perplexity",
        &series,
    )?;
    Ok(1)
}

/// `(group, summary)` of each run directory; `None` where `summary.json` is missing (a
/// stopped run) or of another kind.
fn summaries<S: serde::de::DeserializeOwned>(runs: &[PathBuf]) -> Vec<(String, Option<S>)> {
    runs.iter()
        .map(|r| {
            let name = r
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let summary = std::fs::read(r.join("summary.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            (crate::train::group_of(&name), summary)
        })
        .collect()
}

/// One named line of a plot.
type Series = (String, Vec<(f64, f64)>);

/// KV-probe plots (runs of `kind = "kv_probe"`): at the longest context, per text, attention
/// KL and NLL change by position and attention KL by layer, one line per cache; perplexity
/// change against bytes per token; the float model's outlier statistics per layer. KL is
/// plotted as log10 (it spans orders of magnitude). Returns how many were written.
fn kv_plots(dir: &Path, runs: &[(String, Option<KvProbeSummary>)]) -> Result<usize> {
    let runs: Vec<&KvProbeSummary> = runs.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let Some(first) = runs.first() else {
        return Ok(0);
    };
    let log = |v: f64| v.max(1e-12).log10();
    let mut written = 0;
    let longest = first.results.iter().map(|r| r.context).max().unwrap_or(0);
    let mut texts: Vec<&str> = first.results.iter().map(|r| r.text.as_str()).collect();
    texts.dedup();
    for text in &texts {
        let at = |s: &KvProbeSummary| {
            s.results
                .iter()
                .find(|r| r.text == *text && r.context == longest)
                .cloned()
        };
        let series = |f: &dyn Fn(&bllm_models::kv::probe::ProbeResult) -> Vec<(f64, f64)>| {
            runs.iter()
                .filter_map(|s| at(s).map(|r| (s.cache.clone(), f(&r))))
                .collect::<Vec<_>>()
        };
        let plots: [(&str, &str, &str, Vec<Series>); 3] = [
            (
                "attention_kl_by_position",
                "position",
                "log10 attention KL",
                series(&|r| {
                    r.positions
                        .iter()
                        .map(|p| (p.start as f64, log(p.attention_kl)))
                        .collect()
                }),
            ),
            (
                "nll_change_by_position",
                "position",
                "NLL change, nats",
                series(&|r| {
                    r.positions
                        .iter()
                        .map(|p| (p.start as f64, p.nll_change))
                        .collect()
                }),
            ),
            (
                "attention_kl_by_layer",
                "layer",
                "log10 attention KL",
                series(&|r| {
                    r.layers
                        .iter()
                        .map(|l| (l.layer as f64, log(l.attention_kl)))
                        .collect()
                }),
            ),
        ];
        for (key, x, y, s) in plots {
            if s.is_empty() {
                continue;
            }
            let file = dir.join(format!("kv_{key}_{text}_{longest}.png"));
            let title = format!("{key} ({text}, context {longest})");
            crate::plot::lines(&file, &title, x, y, &s)?;
            written += 1;
        }
        // Perplexity change against memory, the caches ordered by bytes per token.
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .filter_map(|s| {
                let r = at(s)?;
                let b = s.bytes_per_token.iter().find(|(c, _)| *c == longest)?.1;
                Some((b, log(r.perplexity_change.abs().max(1e-6))))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() > 1 {
            let file = dir.join(format!("kv_perplexity_vs_bytes_{text}_{longest}.png"));
            let title = format!("|perplexity change| vs cache size ({text}, context {longest})");
            crate::plot::lines(
                &file,
                &title,
                "bytes per token",
                "log10 |ppl / ppl_float - 1|",
                &[(text.to_string(), pts)],
            )?;
            written += 1;
        }
    }
    let o = &first.outliers;
    if !o.is_empty() {
        let names = ["keys before RoPE", "keys after RoPE", "values"];
        for (key, y, f) in [
            ("max_over_median", "max / median of channel max |x|", 0usize),
            ("kurtosis", "kurtosis", 1),
        ] {
            let s: Vec<(String, Vec<(f64, f64)>)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let pts = o
                        .iter()
                        .map(|l| {
                            let v = if f == 0 {
                                l.max_over_median[i]
                            } else {
                                l.kurtosis[i]
                            };
                            (l.layer as f64, v)
                        })
                        .collect();
                    (n.to_string(), pts)
                })
                .collect();
            crate::plot::lines(
                &dir.join(format!("kv_outliers_{key}.png")),
                &format!("float cache: {y} per layer"),
                "layer",
                y,
                &s,
            )?;
            written += 1;
        }
    }
    Ok(written)
}
