//! `bllm bench train`: milliseconds per training step of the bundled recipes on each CPU
//! backend, side by side with `scripts/bench_vs_torch.py` (the same models, batches and
//! optimizers in PyTorch).
//!
//! A case is a shipped recipe plus overrides. The step is the loop's step — batch from the
//! seeded stream, forward, loss, backward, gradient norm and clipping, optimizer update, the
//! `metrics.jsonl` line — with evaluation, checkpoints and the stability monitors switched off
//! (PyTorch's loop has none of them). Its time is the median interval between consecutive
//! steps after `--warmup` steps, so start-up, data loading, initialisation (ITQ) and the final
//! evaluation are excluded. The process's user and system CPU time over the measured steps
//! gives the system-time share (page faults and zeroing of fresh buffers show up there).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bllm_recipe::Kind;
use bllm_train::RunOptions;
use clap::Args;
use serde::Serialize;

/// Arguments of `bllm bench train`.
#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    /// Cases to run (default: all): lm-float, lm-binary, lm-6x256, retrieval, minilm, smollm2.
    /// minilm and smollm2 need `models/` (`python3 scripts/fetch_models.py`).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// CPU backends to compare.
    #[arg(long, value_delimiter = ',', default_value = "ndarray,flex")]
    pub backends: Vec<String>,
    /// Measured steps per case and backend (default: the case's own, 30 for the small
    /// models, 10 for MiniLM, 5 for SmolLM2).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Steps run before measuring (allocator and caches warm up; default: the case's own, 5
    /// or 2).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// The repository root: the cases' recipes are `recipes/…` and their data `datasets/…`
    /// under it.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Results of `scripts/bench_vs_torch.py --json` to print side by side.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Write the rows as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A benchmark case: a shipped recipe and the overrides that shape it.
pub struct Case {
    /// Name (the key of the PyTorch script's JSON too).
    pub name: &'static str,
    /// What it is.
    pub what: &'static str,
    /// Recipe path under `recipes/`.
    pub recipe: &'static str,
    /// Recipe keys that name files, each set to its path under the repository root
    /// (`data.path`, `data.texts`, `encoder.pretrained`, `model.pretrained`).
    pub paths: &'static [(&'static str, &'static str)],
    /// Recipe keys that name a list of files, each set to a one-element list of its path
    /// under the repository root (`data.eval_texts`).
    pub path_lists: &'static [(&'static str, &'static str)],
    /// Overrides applied after the recipe's own.
    pub overrides: &'static [&'static str],
    /// Measured steps unless `--steps` is given.
    pub steps: usize,
    /// Warm-up steps unless `--warmup` is given.
    pub warmup: usize,
}

/// The cases of issue #17's table (the same as `scripts/bench_vs_torch.py`).
pub const CASES: [Case; 6] = [
    Case {
        name: "lm-float",
        what: "float byte LM 2 × 64, context 64, batch 32",
        recipe: "lm/float.toml",
        paths: &[("data.path", "datasets/kjv-text")],
        path_lists: &[],
        overrides: &[],
        steps: 30,
        warmup: 5,
    },
    Case {
        name: "lm-binary",
        what: "same, 1-bit block projections, clipped STE",
        recipe: "ablation/ste.toml",
        paths: &[("data.path", "datasets/kjv-text")],
        path_lists: &[],
        overrides: &[],
        steps: 30,
        warmup: 5,
    },
    Case {
        name: "lm-6x256",
        what: "float byte LM 6 × 256, 8 heads, context 128, batch 16",
        recipe: "lm/float.toml",
        paths: &[("data.path", "datasets/kjv-text")],
        path_lists: &[],
        overrides: &[
            "model.d_model=256",
            "model.layers=6",
            "model.heads=8",
            "model.context=128",
            "train.batch_size=16",
        ],
        steps: 30,
        warmup: 5,
    },
    Case {
        name: "retrieval",
        what: "hash head 384 → 256, listwise over 9,000 rows, 256 anchors",
        recipe: "quickstart.toml",
        paths: &[("data.path", "datasets/kjv-minilm/embeddings.npy")],
        path_lists: &[],
        overrides: &["export.faiss=false"],
        steps: 30,
        warmup: 5,
    },
    Case {
        name: "minilm",
        what: "all-MiniLM-L6-v2, all 6 layers + 256-bit head, 64 verses vs a bank of 2,048",
        recipe: "retrieval/finetune-kjv.toml",
        paths: &[
            ("data.texts", "datasets/kjv-minilm/verses.txt"),
            ("encoder.pretrained", "models/minilm"),
        ],
        path_lists: &[],
        // Every layer trained, so the step is a whole MiniLM forward and backward; the bank's
        // refresh (every 50 steps) falls outside the measured steps.
        overrides: &["encoder.train_layers=6", "eval.methods=[]"],
        steps: 10,
        warmup: 2,
    },
    Case {
        name: "smollm2",
        what: "SmolLM2-135M, all block projections 1-bit (OneBit, SVID), batch 4 × 128 tokens",
        recipe: "pretrained/onebit-qat.toml",
        paths: &[
            ("data.path", "datasets/kjv-text"),
            ("model.pretrained", "models/smollm2"),
        ],
        path_lists: &[("data.eval_texts", "datasets/sotu-text")],
        // A short held-out evaluation at the end (outside the measured steps).
        overrides: &["data.eval_bytes=2048"],
        steps: 5,
        warmup: 2,
    },
];

/// One measured case on one backend.
#[derive(Debug, Serialize)]
struct Row {
    case: String,
    backend: String,
    ms_per_step: f64,
    /// System CPU time over user + system CPU time of the measured steps.
    sys_share: Option<f64>,
    steps: usize,
}

/// `(user, system)` CPU seconds of this process (Linux `/proc/self/stat`), if readable.
fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let u = f.get(11)?.parse::<f64>().ok()? / tick;
    let s = f.get(12)?.parse::<f64>().ok()? / tick;
    Some((u, s))
}

/// Step instants, and the CPU times after the last warm-up step and after the last step,
/// filled by the progress callback.
#[derive(Default)]
struct Clock {
    at: Vec<Instant>,
    cpu_from: Option<(f64, f64)>,
    cpu_to: Option<(f64, f64)>,
}

fn measure(a: &TrainBenchArgs, case: &Case, backend: &str, scratch: &Path) -> Result<Row> {
    let (steps, warmup) = (
        a.steps.unwrap_or(case.steps),
        a.warmup.unwrap_or(case.warmup),
    );
    let total = warmup + steps + 1;
    let mut ovs: Vec<String> = case.overrides.iter().map(|s| (*s).to_owned()).collect();
    for (key, rel) in case.paths {
        ovs.push(format!("{key}={:?}", a.repo.join(rel).to_string_lossy()));
    }
    for (key, rel) in case.path_lists {
        ovs.push(format!("{key}=[{:?}]", a.repo.join(rel).to_string_lossy()));
    }
    ovs.extend([
        format!("device={backend:?}"),
        format!("train.log_every={total}"),
        "eval.every=0".to_owned(),
        "checkpoint.every=0".to_owned(),
    ]);
    let path = a.repo.join("recipes").join(case.recipe);
    let mut recipe = crate::recipes::load(&path, &ovs)
        .with_context(|| format!("case {}: recipe {}", case.name, path.display()))?;
    recipe.sweep.clear();
    // The recipe's own schedule over its own length; the run stops after `total` steps.
    if recipe.train.steps < total {
        recipe.train.steps = total;
    }
    // The step alone: no stability monitors (PyTorch's loop has none).
    recipe.monitors.every = total + 1;
    for (_, m) in &mut recipe.monitors.monitors {
        m.enabled = false;
    }
    let from = warmup;
    let clock = Rc::new(RefCell::new(Clock::default()));
    let c = Rc::clone(&clock);
    let mut opts = RunOptions {
        dist: None,
        run_dir: scratch.join(format!("{}-{backend}", case.name)),
        resume: false,
        max_steps: Some(total),
        verbose: false,
        progress: Some(Box::new(move |done, _, _| {
            let mut c = c.borrow_mut();
            c.at.push(Instant::now());
            if done == from + 1 {
                c.cpu_from = cpu_times();
            } else if done == total {
                c.cpu_to = cpu_times();
            }
        })),
    };
    let r = match recipe.kind {
        Kind::Lm => bllm_train::run_lm(&recipe, &mut opts).map(|_| ()),
        Kind::Retrieval => bllm_train::run_retrieval(&recipe, &mut opts).map(|_| ()),
        Kind::Classify => bllm_train::run(&recipe, &mut opts).map(|_| ()),
        Kind::Moe => bllm_train::run_moe(&recipe, &mut opts).map(|_| ()),
        Kind::Adapter => bllm_train::run_adapter(&recipe, &mut opts).map(|_| ()),
        Kind::KvProbe => bllm_train::run_kv_probe(&recipe, &mut opts).map(|_| ()),
    };
    r.with_context(|| format!("case {} on {backend}", case.name))?;
    let c = clock.borrow();
    if c.at.len() < warmup + 2 {
        bail!(
            "case {}: only {} steps reported; expected {total}",
            case.name,
            c.at.len()
        );
    }
    let dt: Vec<f64> = c.at[from..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let sys_share = match (c.cpu_from, c.cpu_to) {
        (Some((u0, s0)), Some((u1, s1))) if (u1 - u0) + (s1 - s0) > 0.0 => {
            Some((s1 - s0) / ((u1 - u0) + (s1 - s0)))
        }
        _ => None,
    };
    Ok(Row {
        case: case.name.to_owned(),
        backend: backend.to_owned(),
        ms_per_step: crate::bench::median(dt) * 1e3,
        sys_share,
        steps,
    })
}

/// PyTorch's ms/step per case from `scripts/bench_vs_torch.py --json`.
fn torch_numbers(path: &Path) -> Result<(serde_json::Value, Vec<(String, f64)>)> {
    let v = crate::bench::read_torch_json(path)?;
    let cases = v
        .get("cases")
        .and_then(|c| c.as_object())
        .with_context(|| format!("--torch {}: expected an object \"cases\"", path.display()))?;
    let mut out = Vec::new();
    for (k, c) in cases {
        let ms = c
            .get("ms_per_step")
            .and_then(|m| m.as_f64())
            .with_context(|| {
                format!(
                    "--torch {}: cases.{k}.ms_per_step: expected a number",
                    path.display()
                )
            })?;
        out.push((k.clone(), ms));
    }
    Ok((v, out))
}

/// `bllm bench train`.
pub fn bench_train(a: TrainBenchArgs) -> Result<()> {
    let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    for c in &a.cases {
        if !names.contains(&c.as_str()) {
            bail!(
                "--cases: unknown case {c:?}; expected one of {}",
                names.join(", ")
            );
        }
    }
    for b in &a.backends {
        if !["ndarray", "flex"].contains(&b.as_str()) {
            bail!("--backends: unknown CPU backend {b:?}; expected ndarray or flex");
        }
    }
    if a.steps.is_some_and(|s| s < 3) {
        bail!("--steps must be at least 3 (the median of the step times is reported)");
    }
    let torch = a.torch.as_deref().map(torch_numbers).transpose()?;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let threads = rayon::current_num_threads();
    let count = |v: Option<usize>| v.map_or("the case's own".to_owned(), |n| n.to_string());
    eprintln!(
        "bllm bench train: {} measured steps after {} warm-up, {threads} threads",
        count(a.steps),
        count(a.warmup)
    );
    let mut rows = Vec::new();
    for case in CASES
        .iter()
        .filter(|c| a.cases.is_empty() || a.cases.iter().any(|n| n == c.name))
    {
        for b in &a.backends {
            let row = measure(&a, case, b, scratch.path())?;
            eprintln!(
                "  {:<10} {:<8} {:>9.1} ms/step",
                row.case, row.backend, row.ms_per_step
            );
            rows.push(row);
        }
    }
    println!();
    let mut head = format!("| case | {} ", a.backends.join(" | "));
    let mut rule = format!("|---|{}", "---:|".repeat(a.backends.len()));
    if torch.is_some() {
        head.push_str("| PyTorch ");
        rule.push_str("---:|");
        for b in &a.backends {
            head.push_str(&format!("| {b} / PyTorch "));
            rule.push_str("---:|");
        }
    }
    head.push_str("| system time |");
    rule.push_str("---:|");
    println!("ms per training step ({threads} threads)\n\n{head}\n{rule}");
    for case in CASES.iter() {
        let of: Vec<&Row> = rows.iter().filter(|r| r.case == case.name).collect();
        if of.is_empty() {
            continue;
        }
        let mut line = format!("| {} ({}) ", case.name, case.what);
        for r in &of {
            line.push_str(&format!("| {:.1} ", r.ms_per_step));
        }
        if let Some((_, t)) = &torch {
            match t.iter().find(|(k, _)| k == case.name) {
                Some((_, pt)) => {
                    line.push_str(&format!("| {pt:.1} "));
                    for r in &of {
                        line.push_str(&format!("| {:.2}× ", r.ms_per_step / pt));
                    }
                }
                None => line.push_str(&"| — ".repeat(of.len() + 1)),
            }
        }
        let sys: Vec<String> = of
            .iter()
            .map(|r| {
                r.sys_share
                    .map_or("—".into(), |s| format!("{:.1} %", s * 100.0))
            })
            .collect();
        line.push_str(&format!("| {} |", sys.join(" / ")));
        println!("{line}");
    }
    if torch.is_some() {
        println!(
            "\nbllm / PyTorch below 1 means bllm is faster; system time is system over user + \
             system CPU time of the measured steps, per backend."
        );
    }
    if let Some(p) = &a.json {
        let v = serde_json::json!({
            "threads": threads,
            "rows": rows,
            "torch": torch.map(|(v, _)| v),
        });
        bllm_codes::io::write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())
            .with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}
