//! The `kind = "lm"` trainer: a byte-level decoder-only transformer ([`bllm_nn::ByteLm`]) whose
//! projections are float, 1-bit or BitNet b1.58 per the recipe, trained with next-byte
//! cross-entropy and watched by every stability monitor.
//!
//! Batches are `train.batch_size` windows of `model.context + 1` bytes at seeded random offsets
//! of the training bytes. Evaluation tiles the held-out bytes (or their first `data.eval_bytes`)
//! with non-overlapping windows and reports loss (nats per byte), bits per byte and perplexity
//! per byte, beside the unigram baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bllm_data::TextCorpus;
use bllm_nn::{
    ActBinarization, AttentionKind, BinaryOptions, ByteLm, ByteLmConfig, LmStats, ProjKind,
    Projections, QuantRef,
};
use bllm_recipe::{LmModelSection, LmTask, Recipe};
use bllm_ste::{Ctx, Estimator};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{TextWindows, WindowBatcher, sample};
use crate::rundir::RunDir;
use crate::sites::Site;
use crate::trainer::{
    After, Kind, Loss, Metrics, Monitor, Outcome, Readings, estimator, scalar, train, wrong_kind,
};
use crate::{Result, RunOptions, TrainError};

/// What a finished LM run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmSummary {
    /// Recipe name.
    pub name: String,
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// Weight estimator of the binary projections (`bitnet`/`float` models name theirs too).
    pub estimator: String,
    /// Mean training loss (nats per byte) over the last logged window.
    pub train_loss: f64,
    /// Held-out loss, nats per byte.
    pub eval_loss: f64,
    /// Held-out bits per byte (`eval_loss / ln 2`).
    pub eval_bpb: f64,
    /// Held-out perplexity per byte (`exp(eval_loss)`).
    pub eval_perplexity: f64,
    /// Bits per byte of the held-out bytes under the training unigram distribution.
    pub unigram_bpb: f64,
    /// The run ended no better than the unigram baseline, or with a non-finite loss.
    pub diverged: bool,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped.
    pub monitor_events: usize,
    /// Mean of each monitor's logged value over the run.
    pub monitor_means: BTreeMap<String, f64>,
    /// Model storage in bytes (packed weights, scales, padding, metadata).
    pub model_bytes: usize,
    /// float32-equivalent bytes of the same model.
    pub model_float32_bytes: usize,
    /// A pretrained model's run (`model.pretrained`): the teacher's numbers, tokens, time.
    /// Losses above are then nats per token and `eval_bpb` counts the text's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<super::pretrained_lm::PretrainedReport>,
}

fn task(recipe: &Recipe) -> Result<&LmTask> {
    recipe.lm().ok_or_else(|| wrong_kind(recipe, "lm"))
}

/// The model configuration a recipe describes.
pub fn lm_config(recipe: &Recipe) -> Result<ByteLmConfig> {
    let t = task(recipe)?;
    lm_config_from(&t.model, estimator(recipe)?)
}

/// The model configuration of an LM `[model]` section with the recipe's estimator.
pub(crate) fn lm_config_from(m: &LmModelSection, estimator: Estimator) -> Result<ByteLmConfig> {
    let kind = |name: &str| ProjKind::parse(m.projection(name)).unwrap_or_default();
    Ok(ByteLmConfig {
        vocab: 256,
        d_model: m.d_model,
        layers: m.layers,
        heads: m.heads,
        mlp_ratio: m.mlp_ratio,
        context: m.context,
        projections: Projections {
            q: kind("q"),
            k: kind("k"),
            v: kind("v"),
            o: kind("o"),
            up: kind("up"),
            down: kind("down"),
            embed: kind("embed"),
            head: kind("head"),
        },
        binary: binary_options(m, estimator),
        attention: AttentionKind::parse(&m.attention).unwrap_or_default(),
        moe: None,
    })
}

/// The options of an LM `[model]` section's binary projections: the estimator, the scaling
/// (`model.scaling`, `model.learnable_scale`), input quantisation and SubLN.
pub(crate) fn binary_options(m: &LmModelSection, estimator: Estimator) -> BinaryOptions {
    BinaryOptions {
        estimator,
        scaling: crate::trainer::scaling_of(&m.scaling, m.learnable_scale),
        activations: ActBinarization::parse(&m.activations).unwrap_or_default(),
        sub_norm: m.sub_norm,
    }
}

/// Windows `[n, context + 1]` of `bytes` starting at `starts`, as (inputs, targets).
pub(crate) fn windows<B: Backend>(
    bytes: &[u8],
    starts: &[usize],
    context: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let items = starts
        .iter()
        .map(|&s| bytes[s..s + context + 1].to_vec())
        .collect();
    WindowBatcher.batch(items, device)
}

/// Mean next-byte cross-entropy (nats) of `logits` `[n, t, 256]` against `targets` `[n·t]`.
pub(crate) fn lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, t, v] = logits.dims();
    bllm_ste::softmax::cross_entropy(logits.reshape([n * t, v]), targets)
}

/// Held-out loss in nats per byte over non-overlapping windows of `bytes`.
pub(crate) fn evaluate<B: burn::tensor::backend::Backend>(
    model: &ByteLm<B>,
    bytes: &[u8],
    context: usize,
    ctx: &Ctx,
) -> f64 {
    let count = (bytes.len() - 1) / context;
    let starts: Vec<usize> = (0..count).map(|i| i * context).collect();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in starts.chunks(64) {
        let (x, y) = windows::<B>(bytes, chunk, context, &Default::default());
        let l: f32 = lm_loss(model.forward(x, ctx), y).into_scalar().elem();
        sum += f64::from(l) * (chunk.len() * context) as f64;
        n += chunk.len() * context;
    }
    sum / n.max(1) as f64
}

/// The corpus of a `[data]` text section, cut to `train_bytes` / `eval_bytes`, checked to
/// hold at least one window of `context + 1` bytes in each part.
pub(crate) fn load_corpus(d: &bllm_recipe::TextSection, context: usize) -> Result<TextCorpus> {
    let mut corpus = TextCorpus::load(Path::new(&d.path), d.valid_fraction)?;
    if d.train_bytes > 0 {
        corpus.train.truncate(d.train_bytes);
    }
    if d.eval_bytes > 0 {
        corpus.valid.truncate(d.eval_bytes);
    }
    for (part, len) in [
        ("training (data.train_bytes)", corpus.train.len()),
        ("held-out (data.eval_bytes)", corpus.valid.len()),
    ] {
        if len < context + 1 {
            return Err(TrainError::Unsupported(format!(
                "data.path {}: the {part} bytes ({len}) are fewer than model.context + 1 ({})",
                d.path,
                context + 1
            )));
        }
    }
    Ok(corpus)
}

/// `kind = "lm"`.
struct Lm<'r> {
    recipe: &'r Recipe,
    cfg: ByteLmConfig,
    corpus: TextCorpus,
    train: TextWindows,
    unigram_bpb: f64,
}

impl Lm<'_> {
    fn eval_ctx(&self, step: usize, total: usize) -> Ctx {
        Ctx::at(step as f64 / total as f64)
            .with_seed(self.recipe.seed ^ 0xE7A1)
            .for_eval()
    }
}

/// A training batch of windows: inputs `[n, context]`, targets `[n · context]`.
pub(crate) type WindowBatch<B> = (Tensor<B, 2, Int>, Tensor<B, 1, Int>);

impl<B: AutodiffBackend> Kind<B> for Lm<'_> {
    type Model = ByteLm<B>;
    type Batch = WindowBatch<B>;
    type Stats = ();
    type Summary = LmSummary;

    fn name(&self) -> &'static str {
        "lm"
    }

    fn model(&self, device: &B::Device) -> Result<ByteLm<B>> {
        Ok(self.cfg.init(device, self.recipe.seed)?)
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> Result<Self::Batch> {
        let starts = sample(order, self.train.len(), self.recipe.train.batch_size);
        Ok(self.train.batch::<B>(&starts, &Default::default()))
    }

    fn shard(&self, (x, y): &Self::Batch, index: usize, parts: usize) -> Result<Self::Batch> {
        Ok((
            crate::trainer::rows(x, index, parts)?,
            crate::trainer::rows(y, index, parts)?,
        ))
    }

    fn loss(&self, model: &ByteLm<B>, (x, y): &Self::Batch, ctx: &Ctx) -> Result<Loss<B, ()>> {
        Ok(Loss::new(lm_loss(model.forward(x.clone(), ctx), y.clone())))
    }

    fn sites<'a>(&'a self, model: &'a ByteLm<B>) -> Vec<Site<'a, B>> {
        lm_sites(model)
    }

    fn perturbed_loss(
        &self,
        model: &ByteLm<B::InnerBackend>,
        (x, y): &Self::Batch,
        ctx: &Ctx,
        site: usize,
        w: Tensor<B::InnerBackend, 2>,
    ) -> Option<f64> {
        let mut m = model.clone();
        m.set_quantised(site, w);
        Some(scalar(lm_loss(
            m.forward(x.clone().inner(), ctx),
            y.clone().inner(),
        )))
    }

    fn monitors(&self, _model: &ByteLm<B>) -> Result<Vec<Box<dyn Monitor<B, Self>>>> {
        Ok(vec![Box::new(LmStatsMonitor)])
    }

    fn evaluate(&self, model: &ByteLm<B>, step: usize, total: usize) -> Result<Metrics> {
        let l = evaluate(
            &model.valid(),
            &self.corpus.valid,
            self.cfg.context,
            &self.eval_ctx(step, total),
        );
        Ok(Metrics::from([
            ("loss".to_owned(), l),
            ("bpb".to_owned(), l / std::f64::consts::LN_2),
        ]))
    }

    fn export(&self, model: &ByteLm<B>, dir: &Path) -> Result<()> {
        export_layers(model.quantised(), self.recipe, "ByteLm", dir)
    }

    fn on_start(&self, run: &RunDir) -> Result<()> {
        // Written on every start and resume (the same bytes), so a restarted run has it.
        let d = &task(self.recipe)?.data;
        run.write_json(
            "data.json",
            &json!({"path": d.path, "train_bytes": self.corpus.train.len(), "eval_bytes": self.corpus.valid.len(), "unigram_bpb": self.unigram_bpb}),
        )
    }

    fn finish(
        &self,
        model: &ByteLm<B>,
        run: &RunDir,
        o: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<LmSummary> {
        let eval_loss = o.eval.get("loss").copied().unwrap_or(f64::NAN);
        let eval_bpb = eval_loss / std::f64::consts::LN_2;
        let sum = bllm_nn::summary(model);
        if final_dir.is_some() {
            run.write_file("summary.txt", sum.to_string().as_bytes())?;
        }
        let p = &self.cfg.projections;
        Ok(LmSummary {
            name: self.recipe.name.clone(),
            steps: o.steps,
            complete: o.complete,
            estimator: precision_label(
                &[p.q, p.k, p.v, p.o, p.up, p.down, p.embed, p.head],
                &self.cfg.binary.estimator,
            ),
            train_loss: o.train_loss,
            eval_loss,
            eval_bpb,
            eval_perplexity: eval_loss.exp(),
            unigram_bpb: self.unigram_bpb,
            diverged: !eval_bpb.is_finite() || eval_bpb >= self.unigram_bpb,
            skipped_steps: o.skipped_steps,
            monitor_events: o.monitor_events,
            monitor_means: o.monitor_means.clone(),
            model_bytes: sum.total_bytes(),
            model_float32_bytes: sum.float32_equivalent_bytes(),
            pretrained: None,
        })
    }
}

/// The weight sites of a byte LM: every quantised layer, named as `ByteLm::quantised` names
/// them.
pub(crate) fn lm_sites<B: AutodiffBackend>(model: &ByteLm<B>) -> Vec<Site<'_, B>> {
    model
        .quantised()
        .into_iter()
        .map(|(name, layer)| Site::Weights { name, layer })
        .collect()
}

/// `attention` (entropy or density per head; checked on the lowest head) and `act_clamp`
/// (fraction of BitLinear int8 activations at ±127), from one statistics forward of the
/// step's batch after the update.
pub(crate) struct LmStatsMonitor;

impl<B: AutodiffBackend> Monitor<B, Lm<'_>> for LmStatsMonitor {
    fn name(&self) -> &'static str {
        "lm_stats"
    }

    fn after_update(&mut self, cx: &After<'_, B, Lm<'_>>, out: &mut Readings) -> Result<()> {
        lm_stats(cx.model, &cx.batch.0, cx.ctx, |n| cx.due(n), out);
        Ok(())
    }
}

/// The statistics of [`LmStatsMonitor`] for a byte LM on inputs `x`.
pub(crate) fn lm_stats<B: AutodiffBackend>(
    model: &ByteLm<B>,
    x: &Tensor<B, 2, Int>,
    ctx: &Ctx,
    due: impl Fn(&str) -> bool,
    out: &mut Readings,
) {
    let (attention, clamp) = (due("attention"), due("act_clamp"));
    if !attention && !clamp {
        return;
    }
    let mut stats = LmStats::default();
    let _ = model
        .valid()
        .forward_with(x.clone().inner(), ctx, Some(&mut stats));
    let heads: Vec<f64> = stats.attention.iter().flatten().copied().collect();
    if attention && !heads.is_empty() {
        for (l, hs) in stats.attention.iter().enumerate() {
            for (h, v) in hs.iter().enumerate() {
                out.metric(format!("attention/l{l}h{h}"), *v);
            }
        }
        let mean = heads.iter().sum::<f64>() / heads.len() as f64;
        let min = heads.iter().copied().fold(f64::INFINITY, f64::min);
        out.metric("attention", mean);
        out.metric("attention_min", min);
        out.checks.push(("attention", min, false));
    }
    if clamp && !stats.act_clamp.is_empty() {
        let v = stats.act_clamp.iter().sum::<f64>() / stats.act_clamp.len() as f64;
        out.check("act_clamp", v, true);
    }
}

/// Runs (or resumes) a `kind = "lm"` recipe into `opts.run_dir`.
pub fn run_lm(recipe: &Recipe, opts: &mut RunOptions) -> Result<LmSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_lm_on -> LmSummary)
}

fn run_lm_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<LmSummary> {
    let t = task(recipe)?;
    if t.model.pretrained.is_some() {
        return super::pretrained_lm::run_pretrained_on::<B>(recipe, opts);
    }
    let cfg = lm_config(recipe)?;
    opts.refuse_existing(recipe)?;
    let corpus = load_corpus(&t.data, cfg.context)?;
    let kind = Lm {
        recipe,
        train: TextWindows {
            bytes: Arc::new(corpus.train.clone()),
            context: cfg.context,
        },
        unigram_bpb: corpus.unigram_bits_per_byte(),
        corpus,
        cfg,
    };
    train::<B, _>(recipe, opts, kind)
}

/// What the summary names as the estimator of a model whose projections are `kinds`: the
/// recipe's `estimator` when any is 1-bit, `bitnet` / `float` otherwise.
pub(crate) fn precision_label(kinds: &[ProjKind], estimator: &Estimator) -> String {
    if kinds.contains(&ProjKind::Binary) {
        estimator.name().to_owned()
    } else if kinds.contains(&ProjKind::Bitnet) {
        "bitnet".into()
    } else {
        "float".into()
    }
}

/// Writes every quantised layer of `layers` (named; `model` names the model in manifests) in
/// the code contract layout under `dir/<layer>/`: 1-bit layers as one codes directory (one row
/// per output channel) + `scales.json` (SVID adds the input value vector); BitNet layers as two
/// bit-planes `sign/` and `nonzero/` + `scales.json` with γ.
pub(crate) fn export_layers<B: Backend>(
    layers: Vec<(String, QuantRef<'_, B>)>,
    recipe: &Recipe,
    model: &str,
    dir: &Path,
) -> Result<()> {
    let info = |name: &str, what: &str| bllm_codes::io::ManifestInfo {
        source: None,
        encoder: Some(format!("{model} layer {name}: {what}")),
        recipe: Some(format!("{} (seed {})", recipe.name, recipe.seed)),
        tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
    };
    let write = |out: PathBuf, codes: &bllm_codes::PackedCodes, i| {
        bllm_codes::io::write_codes_dir(&out, codes, i).map_err(|e| TrainError::Checkpoint {
            path: out.clone(),
            message: e.to_string(),
        })
    };
    let scales = |out: &Path, v: serde_json::Value| {
        let bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
        bllm_codes::io::write_atomic(&out.join("scales.json"), &bytes).map_err(|e| {
            TrainError::Checkpoint {
                path: out.to_owned(),
                message: e.to_string(),
            }
        })
    };
    for (name, q) in layers {
        let out = dir.join(&name);
        let binary = match q {
            QuantRef::Table(l) => Some(l),
            QuantRef::Proj(p) => p.binary.as_ref(),
        };
        if let Some(l) = binary {
            let w = match l.binary_weights() {
                Ok(w) => w,
                Err(bllm_nn::NnError::Unsupported(_)) => continue, // ternary estimator
                Err(e) => return Err(e.into()),
            };
            write(
                out.clone(),
                &w.codes,
                info(&name, &format!("1-bit weights, {}", l.config.weight.name())),
            )?;
            let v = if w.input_scales.is_empty() {
                json!({"scales": w.scales, "rows": "output channels", "bits": "input features"})
            } else {
                json!({"scales": w.scales, "input_scales": w.input_scales, "rows": "output channels", "bits": "input features", "value": "input_scales[j] * scales[i] * (2*bit - 1)"})
            };
            scales(&out, v)?;
        } else if let QuantRef::Proj(p) = q {
            if let Some(l) = &p.bit {
                let (sign, nonzero, gamma) = l.packed_ternary()?;
                write(out.join("sign"), &sign, info(&name, "ternary sign plane"))?;
                write(
                    out.join("nonzero"),
                    &nonzero,
                    info(&name, "ternary non-zero plane"),
                )?;
                scales(
                    &out,
                    json!({"gamma": gamma, "rows": "output channels", "bits": "input features", "value": "gamma * (2*sign - 1) * nonzero"}),
                )?;
            }
        }
    }
    Ok(())
}
