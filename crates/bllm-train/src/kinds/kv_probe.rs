//! `kind = "kv_probe"`: a pretrained decoder (SmolLM2) read back through a quantized KV cache
//! on held-out text — inference only, no loop. One run probes one cache configuration
//! (`[cache]`) at every context of `data.contexts` on every text of `data.texts`; a `[sweep]`
//! over `cache` compares configurations. See `bllm_models::kv` for the quantizers and what is
//! measured.
//!
//! Files: `results.json` (= `summary.json`: every [`ProbeResult`], bytes per token at each
//! context vs the f16 cache, the float model's per-layer outlier statistics), `results.md`,
//! and one `metrics.jsonl` line per (text, context).

use std::path::{Path, PathBuf};
use std::time::Instant;

use bllm_data::TextCorpus;
use bllm_models::kv::probe::{
    Calibration, OutlierStats, ProbeCache, ProbeOptions, ProbeResult, f16_bytes_per_token,
    probe_text,
};
use bllm_models::kv::{CacheSpec, QuantSpec};
use bllm_models::{Llama, TextTokenizer};
use bllm_recipe::{KvProbeTask, Recipe};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::rundir::RunDir;
use crate::{Result, RunOptions, TrainError};

/// What a `kind = "kv_probe"` run measured (`results.json`, `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvProbeSummary {
    /// Recipe name.
    pub name: String,
    /// The cache's label (`cache.name`, or built from the quantizers).
    pub cache: String,
    /// The configuration.
    pub spec: CacheSpec,
    /// The model file.
    pub model: String,
    /// Bytes per token of the whole cache at each context: `(context, bytes)`.
    pub bytes_per_token: Vec<(usize, f64)>,
    /// Bytes per token of the f16 cache.
    pub f16_bytes_per_token: usize,
    /// Per (text, context).
    pub results: Vec<ProbeResult>,
    /// The float model's keys (before / after RoPE) and values, per layer, over every
    /// probed window.
    pub outliers: Vec<OutlierStats>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

/// A text's probed and calibration parts.
struct Text {
    name: String,
    probe: String,
    calibrate: String,
}

/// Bytes of a corpus part as text: a part cut from one file may start or end inside a
/// character (`TextCorpus` cuts at a line start only when one is near), so partial characters
/// at its two ends are dropped; any other invalid byte is an error naming the corpus.
fn utf8(bytes: Vec<u8>, path: &str, part: &str) -> Result<String> {
    let start = bytes
        .iter()
        .take(3)
        .take_while(|&&b| b & 0xC0 == 0x80)
        .count();
    let mut bytes = bytes;
    bytes.drain(..start);
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) if e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(valid);
            Ok(String::from_utf8(b).unwrap_or_default())
        }
        Err(e) => Err(TrainError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the {part} part is not UTF-8 text (byte {})",
                    e.utf8_error().valid_up_to() + start
                ),
            ),
        )),
    }
}

/// A corpus as `TextCorpus` reads it: a directory (`valid.txt` probed, `train.txt`
/// calibrates, `MANIFEST.json` checked) or one file (the last 10 % probed).
fn load_text(spec: &str) -> Result<Text> {
    let path = PathBuf::from(spec);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_owned());
    let corpus = TextCorpus::load(&path, 0.1)?;
    Ok(Text {
        name,
        probe: utf8(corpus.valid, spec, "held-out")?,
        calibrate: utf8(corpus.train, spec, "calibration")?,
    })
}

fn cache_spec(t: &KvProbeTask) -> Result<CacheSpec> {
    let side = |key: &str, table: &toml::Table| -> Result<QuantSpec> {
        toml::Value::Table(table.clone())
            .try_into::<QuantSpec>()
            .map_err(|e| TrainError::Unsupported(format!("cache.{key}: {e}")))
    };
    let spec = CacheSpec {
        keys: side("keys", &t.keys)?,
        values: side("values", &t.values)?,
        window: t.window,
    };
    spec.validate().map_err(|(k, e, f)| {
        TrainError::Unsupported(format!("cache.{k}: expected {e}, found {f}"))
    })?;
    Ok(spec)
}

fn model_err(e: bllm_models::ModelError) -> TrainError {
    TrainError::Unsupported(e.to_string())
}

/// Runs a `kind = "kv_probe"` recipe into `opts.run_dir` (no resume: nothing is trained; run
/// it again).
pub fn run_kv_probe(recipe: &Recipe, opts: &mut RunOptions) -> Result<KvProbeSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_kv_probe_on -> KvProbeSummary)
}

fn run_kv_probe_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
) -> Result<KvProbeSummary> {
    let t = recipe.kv_probe().ok_or_else(|| {
        TrainError::Unsupported(format!(
            "recipe {} is kind = \"{}\", not \"kv_probe\"",
            recipe.name,
            recipe.kind.name()
        ))
    })?;
    if opts.resume {
        return Err(TrainError::Unsupported(
            "kind = \"kv_probe\" runs do not resume (nothing is trained; start the run again)"
                .into(),
        ));
    }
    let spec = cache_spec(t)?;
    let label = if t.cache_name.is_empty() {
        spec.label()
    } else {
        t.cache_name.clone()
    };
    let span = tracing::info_span!(
        "run",
        recipe = %recipe.name,
        kind = "kv_probe",
        dir = %opts.run_dir.display()
    );
    let _span = span.enter();
    let started = Instant::now();
    let texts = t
        .texts
        .iter()
        .map(|p| load_text(p))
        .collect::<Result<Vec<_>>>()?;
    let loaded = Llama::<B::InnerBackend>::load(Path::new(&t.pretrained), &Default::default())
        .map_err(model_err)?;
    let device = loaded.model.embed_tokens.val().device();
    let (model, tok): (_, TextTokenizer) = (loaded.model, loaded.tokenizer);
    let longest = t.contexts.iter().copied().max().unwrap_or(2);
    if longest > model.config.max_position_embeddings {
        return Err(TrainError::Unsupported(format!(
            "data.contexts: {longest} exceeds the model's max_position_embeddings {}",
            model.config.max_position_embeddings
        )));
    }
    let mut probe_ids = Vec::new();
    for text in &texts {
        let ids = tok.encode(&text.probe, false).map_err(model_err)?;
        if ids.len() < t.tokens + 1 {
            return Err(TrainError::Unsupported(format!(
                "data.tokens: {} has {} held-out tokens, {} (+1) wanted",
                text.name,
                ids.len(),
                t.tokens
            )));
        }
        probe_ids.push(ids);
    }
    let run = RunDir::open(&opts.run_dir, recipe, false)?;
    run.start(recipe)?;
    // Outlier channels are chosen on calibration text, never on the probed text.
    let needs_calib = spec.keys.outliers > 0.0 || spec.values.outliers > 0.0;
    let calib = if needs_calib {
        let mut all = Vec::new();
        for text in &texts {
            let ids = tok.encode(&text.calibrate, false).map_err(model_err)?;
            all.extend_from_slice(&ids[..ids.len().min(t.calibration_tokens)]);
        }
        let window = t.calibration_tokens.min(longest).max(2);
        tracing::info!(tokens = all.len(), "calibrating outlier channels");
        Some(Calibration::collect(&model, &all, window, &device))
    } else {
        None
    };
    let cache =
        ProbeCache::build(&spec, &model.config, calib.as_ref(), recipe.seed).map_err(model_err)?;
    let popts = ProbeOptions {
        rows: t.rows,
        bucket: t.bucket,
    };
    let units: usize = t.contexts.iter().map(|c| t.tokens / c).sum::<usize>() * texts.len();
    let mut done = 0;
    let mut stats = Calibration::default();
    let mut results = Vec::new();
    for (text, ids) in texts.iter().zip(&probe_ids) {
        for &context in &t.contexts {
            let windows = t.tokens / context;
            let ids = &ids[..windows * context + 1];
            let mut progress = opts.progress.take();
            let r = probe_text(
                &model,
                &cache,
                &text.name,
                ids,
                context,
                windows,
                &popts,
                &mut stats,
                &device,
                |w, _| {
                    if let Some(p) = progress.as_mut() {
                        p(done + w, units, 0.0);
                    }
                },
            )
            .map_err(model_err)?;
            opts.progress = progress;
            done += windows;
            tracing::info!(
                text = %text.name,
                context,
                perplexity = r.perplexity,
                perplexity_float = r.perplexity_float,
                top1 = r.top1_agreement,
                attention_kl = r.attention_kl,
                "probed"
            );
            run.append(
                "metrics.jsonl",
                &json!({"split": "eval", "text": text.name, "context": context,
                    "perplexity": r.perplexity, "perplexity_float": r.perplexity_float,
                    "perplexity_change": r.perplexity_change, "top1_agreement": r.top1_agreement,
                    "logit_kl": r.logit_kl, "attention_kl": r.attention_kl,
                    "attention_kl_peaked": r.attention_kl_peaked,
                    "attention_kl_flat": r.attention_kl_flat}),
            )?;
            results.push(r);
        }
    }
    let summary = KvProbeSummary {
        name: recipe.name.clone(),
        cache: label,
        spec,
        model: loaded.weights.display().to_string(),
        bytes_per_token: t
            .contexts
            .iter()
            .map(|&c| (c, cache.bytes_per_token(c)))
            .collect(),
        f16_bytes_per_token: f16_bytes_per_token(&model.config),
        results,
        outliers: stats.outliers(),
        seconds: started.elapsed().as_secs_f64(),
    };
    run.write_json("results.json", &summary)?;
    run.write_file("results.md", markdown(&summary).as_bytes())?;
    run.write_json("summary.json", &summary)?;
    Ok(summary)
}

/// The header of [`markdown_rows`]' table.
pub const MARKDOWN_HEADER: &str = "| cache | text | context | B/token | saving vs f16 | Δppl | top-1 | logit KL | attn KL | peaked | flat | ρ(H, KL) | key err | value err |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

/// Bytes per token at `context` and the saving against the f16 cache.
pub fn bytes_at(s: &KvProbeSummary, context: usize) -> (f64, f64) {
    let b = s
        .bytes_per_token
        .iter()
        .find(|(c, _)| *c == context)
        .map_or(0.0, |x| x.1);
    (b, s.f16_bytes_per_token as f64 / b.max(1e-9))
}

/// One markdown row per (text, context) of a run (columns of [`MARKDOWN_HEADER`]).
pub fn markdown_rows(s: &KvProbeSummary) -> String {
    let mut md = String::new();
    for r in &s.results {
        let (b, saving) = bytes_at(s, r.context);
        md.push_str(&format!(
            "| {} | {} | {} | {b:.0} | {saving:.2}× | {:+.2} % | {:.3} | {:.4} | {:.4} | {:.4} | {:.4} | {:+.2} | {:.3} | {:.3} |\n",
            s.cache,
            r.text,
            r.context,
            100.0 * r.perplexity_change,
            r.top1_agreement,
            r.logit_kl,
            r.attention_kl,
            r.attention_kl_peaked,
            r.attention_kl_flat,
            r.entropy_kl_spearman,
            r.key_error,
            r.value_error
        ));
    }
    md
}

/// The run's table (`results.md`): one row per (text, context).
pub fn markdown(s: &KvProbeSummary) -> String {
    format!(
        "# KV-cache probe: {}\n\nmodel `{}`; f16 cache {} B/token; perplexity: float → this cache\n\n{}\n{MARKDOWN_HEADER}{}",
        s.cache,
        s.model,
        s.f16_bytes_per_token,
        s.results
            .iter()
            .map(|r| format!(
                "- {} @ {}: {:.3} → {:.3}\n",
                r.text, r.context, r.perplexity_float, r.perplexity
            ))
            .collect::<String>(),
        markdown_rows(s)
    )
}
