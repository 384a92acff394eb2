//! The `kind = "adapter"` trainer: a float byte-level LM pretrained on the source corpus
//! (cached by content) — or, with `model.pretrained`, a pretrained Llama
//! ([`super::pretrained_adapter`]) — then adapted to the target corpus with float LoRA, binary LoRA or
//! BitDelta on the chosen projections; it reports target-domain bits per byte before and after,
//! the forgetting on the source domain, and adapter bytes beside float LoRA bytes.
//!
//! BitDelta: a float fine-tune of the targeted weight matrices (everything else frozen, so the
//! deltas are the whole fine-tune) on the target for `train.steps`, then each matrix's delta
//! becomes `α · sign(Δ)` on the frozen base and only the α values are trained for
//! `adapter.distill_steps` steps to match the fine-tuned model's logits (MSE).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use bllm_data::TextCorpus;
use bllm_nn::{AdapterConfig, AdapterKind, ByteLm, ByteLmConfig};
use bllm_recipe::{AdapterTask, Recipe};
use bllm_ste::Ctx;
use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::sample;
use crate::dist::Group;
use crate::kinds::lm::{evaluate, lm_config_from, lm_loss, load_corpus, windows};
use crate::optim::{Opt, clip_and_step, grad_norm, recorder, save_model, step_ctx};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::trainer::{estimator, items, scalar, split_check, wrong_kind};
use crate::{Result, RunOptions, TrainError};

/// What a finished adapter run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterSummary {
    /// Recipe name.
    pub name: String,
    /// `lora`, `binary_lora` or `bitdelta`.
    pub adapter: String,
    /// LoRA rank (BitDelta: the rank of the float LoRA it is compared with).
    pub rank: usize,
    /// Adaptation steps.
    pub steps: usize,
    /// Target-domain held-out bits per byte of the base model.
    pub target_bpb_base: f64,
    /// … after adaptation.
    pub target_bpb: f64,
    /// Source-domain held-out bits per byte of the base model.
    pub source_bpb_base: f64,
    /// … after adaptation.
    pub source_bpb: f64,
    /// `source_bpb − source_bpb_base` (positive = forgetting).
    pub forgetting: f64,
    /// BitDelta: target bits per byte of the full float fine-tune it compresses.
    pub finetune_target_bpb: Option<f64>,
    /// Bytes of the adapters as stored (bits padded to words, metadata, scales).
    pub adapter_bytes: usize,
    /// Bytes of float32 LoRA adapters of the same rank on the same projections.
    pub float_lora_bytes: usize,
    /// `float_lora_bytes / adapter_bytes`.
    pub compression_vs_float_lora: f64,
    /// Trainable parameters during adaptation (BitDelta: during distillation).
    pub trainable_params: usize,
    /// With `model.pretrained`: perplexities, tokens and time on the pretrained base.
    #[serde(default)]
    pub pretrained: Option<PretrainedAdapterReport>,
}

/// What an adapter run on a pretrained base (`model.pretrained`) adds to [`AdapterSummary`]:
/// perplexities per token beside the bits per byte, and the cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainedAdapterReport {
    /// `model.pretrained`.
    pub model: String,
    /// Target held-out perplexity per token, base model.
    pub target_perplexity_base: f64,
    /// … after adaptation.
    pub target_perplexity: f64,
    /// Source held-out perplexity per token, base model.
    pub source_perplexity_base: f64,
    /// … after adaptation.
    pub source_perplexity: f64,
    /// BitDelta: target perplexity of the float fine-tune it compresses.
    pub finetune_target_perplexity: Option<f64>,
    /// Target held-out tokens scored.
    pub target_eval_tokens: usize,
    /// Source held-out tokens scored.
    pub source_eval_tokens: usize,
    /// Tokens of the target's training text.
    pub train_tokens: usize,
    /// Tokens seen by the adaptation (BitDelta: fine-tune and distillation): steps × batch ×
    /// context.
    pub tokens_trained: usize,
    /// Wall seconds of the run, loading to summary.
    pub wall_seconds: f64,
}

/// The byte accounting of a run's adapters, one projection at a time ([`Tally::add`]).
#[derive(Default)]
pub(crate) struct Tally {
    /// Bytes of the adapters as stored (bits padded to words, scales, metadata).
    pub adapter_bytes: usize,
    /// Bytes of float32 LoRA of the same rank on the same projections.
    pub float_lora_bytes: usize,
    /// Trainable parameters during adaptation (BitDelta: during distillation).
    pub trainable: usize,
    /// The binary adapters' bit-planes, by projection name (when exported).
    pub exported: Vec<(String, bllm_nn::AdapterBits)>,
}

impl Tally {
    /// Counts projection `name`'s adapter (if it has one); with `export` keeps its bit-planes
    /// (binary LoRA, BitDelta).
    pub(crate) fn add<B: burn::tensor::backend::Backend>(
        &mut self,
        name: &str,
        p: &bllm_nn::Proj<B>,
        a: &bllm_recipe::AdapterSection,
        kind: AdapterKind,
        export: bool,
    ) -> bllm_nn::Result<()> {
        let Some(ad) = &p.adapter else {
            return Ok(());
        };
        self.adapter_bytes += ad.stored_bytes();
        let [d_in, d_out] = p.float.as_ref().map(|l| l.weight.dims()).unwrap_or([0, 0]);
        self.float_lora_bytes += 4 * a.rank * (d_in + d_out);
        self.trainable += match kind {
            AdapterKind::BitDelta => 1,
            AdapterKind::BinaryLora if a.learnable_scale => {
                a.rank * (d_in + d_out) + a.rank + d_out
            }
            _ => a.rank * (d_in + d_out),
        };
        if kind != AdapterKind::Lora && export {
            self.exported.push((name.to_owned(), ad.export()?));
        }
        Ok(())
    }
}

/// The float base model: loaded from the cache or pretrained on the source corpus (Adam at
/// `source.lr`, warmup then cosine to a tenth, `train.batch_size` windows) and cached under a
/// key of everything it depends on (model, source corpus and cut, steps, lr, batch, seed).
fn base_model<B: AutodiffBackend>(
    recipe: &Recipe,
    t: &AdapterTask,
    cfg: &ByteLmConfig,
    source: &TextCorpus,
) -> Result<(ByteLm<B>, PathBuf)> {
    let mut h = DefaultHasher::new();
    format!(
        "{:?}|{}|{}|{}|{}|{}",
        cfg,
        t.source.text.path,
        t.source.text.train_bytes,
        t.source.steps,
        t.source.lr,
        recipe.train.batch_size,
    )
    .hash(&mut h);
    recipe.seed.hash(&mut h);
    let dir = Path::new(&t.source.cache).join(format!("base-{:016x}", h.finish()));
    let model: ByteLm<B> = cfg.init(&Default::default(), recipe.seed)?;
    if dir.join("model.mpk").is_file() {
        let m = model
            .load_file(dir.join("model"), &recorder(), &Default::default())
            .map_err(|e| TrainError::Checkpoint {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        return Ok((m, dir));
    }
    let steps = t.source.steps;
    // The base's own schedule (not the adaptation's): warmup, cosine to lr / 10.
    let schedule = bllm_recipe::LrSchedule::Cosine {
        warmup_steps: (steps / 10).min(30),
        min_lr: t.source.lr / 10.0,
    };
    let lr = |step| learning_rate(&schedule, t.source.lr, step, steps);
    let span = source.train.len() - cfg.context;
    let model = phase(
        recipe,
        model,
        steps,
        0,
        lr,
        "base",
        None,
        &Split::whole(),
        |rng| sample(rng, span, recipe.train.batch_size),
        |m, starts, step| lm_batch_loss(m, source, starts, recipe, step, steps),
    )?;
    // Atomic: write into a temp directory, then rename.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("base"),
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save_model(&model, &tmp)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run cached the same base meanwhile: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((model, dir))
}

/// The next-byte loss of the windows starting at `starts`.
fn lm_batch_loss<B: AutodiffBackend>(
    model: &ByteLm<B>,
    corpus: &TextCorpus,
    starts: &[usize],
    recipe: &Recipe,
    step: usize,
    total: usize,
) -> Tensor<B, 1> {
    let context = model.config.context;
    let (x, y) = windows::<B>(&corpus.train, starts, context, &Default::default());
    let ctx = step_ctx(recipe, step, total);
    lm_loss(model.forward(x, &ctx), y)
}

/// How the steps of a phase are split: whole, into `train.accumulate` micro-batches in this
/// process, or one part per rank of a data-parallel group (gradients summed in part order,
/// then divided by the number of parts, as the training loop does).
pub(crate) struct Split<'g, B: burn::tensor::backend::Backend> {
    group: Option<&'g Group<B>>,
    accumulate: usize,
}

impl<'g, B: burn::tensor::backend::Backend> Split<'g, B> {
    /// Every step in one piece (the cached base model, whose bytes must not depend on how a
    /// run is split).
    pub(crate) fn whole() -> Self {
        Self {
            group: None,
            accumulate: 1,
        }
    }

    /// The recipe's `train.accumulate`, or this rank's part of `group`'s steps; the caller
    /// ran [`split_check`] before joining `group`.
    pub(crate) fn of(recipe: &Recipe, group: Option<&'g Group<B>>) -> Self {
        Self {
            group,
            accumulate: recipe.train.accumulate.max(1),
        }
    }

    fn parts(&self) -> usize {
        self.group.map_or(1, Group::world) * self.accumulate
    }

    /// The parts this process computes.
    fn mine(&self) -> Vec<usize> {
        match self.group {
            Some(g) => vec![g.rank()],
            None => (0..self.accumulate).collect(),
        }
    }
}

/// One phase of an adapter run: `steps` optimizer steps at `lr(step)` (only parameters that
/// require gradients move). Each step draws its examples (window starts) with `draw` from the
/// [`crate::rng::ADAPT`] stream number `phase_index`, takes this process's parts of them
/// (`split`) and minimises `loss(model, examples, step)`, the mean over the parts. A
/// non-finite loss or gradient norm stops the run with an error naming the phase; every
/// `train.log_every` steps (and the first) a `metrics.jsonl` line with `"phase": label` is
/// written when `run` is given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn phase<B: AutodiffBackend, M: AutodiffModule<B>>(
    recipe: &Recipe,
    mut model: M,
    steps: usize,
    phase_index: u64,
    lr: impl Fn(usize) -> f64,
    label: &str,
    run: Option<&RunDir>,
    split: &Split<'_, B::InnerBackend>,
    draw: impl Fn(&mut ChaCha8Rng) -> Vec<usize>,
    loss: impl Fn(&M, &[usize], usize) -> Tensor<B, 1>,
) -> Result<M> {
    let mut opt = Opt::new(recipe, &model);
    let mut rng = crate::rng::stream(recipe.seed, crate::rng::ADAPT, phase_index);
    let parts = split.parts();
    if let Some(g) = split.group {
        g.agree(
            &format!("the parameters the {label} phase starts from"),
            crate::optim::param_hash(&model),
        )?;
    }
    let dev = Default::default();
    for step in 0..steps {
        let examples = draw(&mut rng);
        let (v, grads) = if parts == 1 {
            let l = loss(&model, &examples, step);
            (scalar(l.clone()), l.backward())
        } else {
            let mut sum = None;
            let mut last = None;
            for i in split.mine() {
                let l = loss(&model, &items(&examples, i, parts)?, step);
                let v = scalar(l.clone()) as f32;
                let g = l.backward();
                let f = crate::optim::flatten_grads(&model, &g, &[v], &dev);
                sum = Some(match sum {
                    None => f,
                    Some(s) => s + f,
                });
                last = Some(g);
            }
            let (Some(mut sum), Some(mut grads)) = (sum, last) else {
                return Err(TrainError::Unsupported(format!(
                    "{label}: no part to compute"
                )));
            };
            if let Some(g) = split.group {
                sum = g.ordered_sum(
                    &format!("{label} step {}: the all-reduce of the gradients", step + 1),
                    sum,
                )?;
            }
            let c = crate::optim::scatter_grads(&model, &mut grads, sum, parts, 1);
            (f64::from(c[0]) / parts as f64, grads)
        };
        let gn = grad_norm(&model, &grads);
        if !(v.is_finite() && gn.is_finite()) {
            return Err(TrainError::Stopped {
                step,
                monitor: "non_finite".into(),
                reason: format!("{label}: loss {v}, gradient norm {gn}"),
            });
        }
        let lr = lr(step);
        model = clip_and_step(recipe, &mut opt, model, grads, gn, lr, &[]);
        if let Some(run) = run {
            if (step + 1) % recipe.train.log_every == 0 || step == 0 {
                run.append(
                    "metrics.jsonl",
                    &json!({"step": step + 1, "split": "train", "phase": label, "loss": v, "grad_norm": gn, "lr": lr}),
                )?;
            }
        }
    }
    tracing::info!(phase = label, steps, parts, "phase done");
    Ok(model)
}

/// Held-out bits per byte of `model` on `bytes`.
fn bpb<B: AutodiffBackend>(model: &ByteLm<B>, bytes: &[u8], seed: u64) -> f64 {
    let ctx = Ctx::at(1.0).with_seed(seed ^ 0xE7A1).for_eval();
    evaluate(&model.valid(), bytes, model.config.context, &ctx) / std::f64::consts::LN_2
}

/// The LoRA (`kind` = float or binary) of `[adapter]`: its rank, α (`adapter.alpha`, 0 = the
/// rank, i.e. scale 1), the estimator of binary factors and whether their scales learn.
pub(crate) fn lora_config(
    a: &bllm_recipe::AdapterSection,
    kind: AdapterKind,
    estimator: bllm_ste::Estimator,
) -> AdapterConfig {
    AdapterConfig {
        kind,
        rank: a.rank,
        alpha: if a.alpha > 0.0 {
            a.alpha
        } else {
            a.rank as f64
        },
        estimator,
        learnable_scale: a.learnable_scale,
    }
}

/// Runs a `kind = "adapter"` recipe into `opts.run_dir` (no resume: a run takes minutes and
/// its base is cached; `--resume` is refused with an error).
pub fn run_adapter(recipe: &Recipe, opts: &mut RunOptions) -> Result<AdapterSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_adapter_on -> AdapterSummary)
}

fn run_adapter_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
) -> Result<AdapterSummary> {
    let t = recipe
        .adapter()
        .ok_or_else(|| wrong_kind(recipe, "adapter"))?;
    if opts.resume {
        return Err(TrainError::Unsupported(
            "kind = \"adapter\" runs do not resume (the base model is cached; start the run again)"
                .into(),
        ));
    }
    let span = tracing::info_span!(
        "run",
        recipe = %recipe.name,
        kind = "adapter",
        dir = %opts.run_dir.display()
    );
    let _span = span.enter();
    if t.model.pretrained.is_some() {
        return super::pretrained_adapter::run_pretrained_adapter_on::<B>(recipe, opts, t);
    }
    let est = estimator(recipe)?;
    let cfg = lm_config_from(&t.model, est.clone())?;
    let context = cfg.context;
    let target = load_corpus(&t.data, context)?;
    let source = load_corpus(&t.source.text, context)?;
    let world = opts.dist.as_ref().map_or(1, |d| d.world);
    split_check(recipe, world)?;
    opts.refuse_existing(recipe)?;
    let (group, scratch) =
        crate::dist::join_for_phases::<B::InnerBackend>(recipe, opts.dist.as_ref())?;
    let split = Split::of(recipe, group.as_ref());
    let run = match &scratch {
        None => RunDir::open(&opts.run_dir, recipe, false)?,
        Some(s) => RunDir::prepare(s.path())?,
    };
    run.start(recipe)?;
    tracing::info!(
        source = %t.source.text.path,
        "base model: pretraining on the source or loading it from the cache"
    );
    let (base, base_dir) = base_model(recipe, t, &cfg, &source)?;
    let seed = recipe.seed;
    let target_bpb_base = bpb(&base, &target.valid, seed);
    let source_bpb_base = bpb(&base, &source.valid, seed);
    run.append(
        "metrics.jsonl",
        &json!({"step": 0, "split": "eval", "phase": "base", "target_bpb": target_bpb_base, "source_bpb": source_bpb_base, "base": base_dir.display().to_string()}),
    )?;
    let a = &t.adapter;
    let kind = AdapterKind::parse(&a.kind).unwrap_or_default();
    let steps = recipe.train.steps;
    let target_span = target.train.len() - context;
    let mut finetune_target_bpb = None;
    let frozen = base.clone().no_grad();
    let adapted = match kind {
        AdapterKind::Lora | AdapterKind::BinaryLora => {
            let acfg = lora_config(a, kind, est);
            let mut m = frozen;
            let mut i = 0u64;
            m.for_each_proj_mut(&a.targets, |_, p| {
                let [d_in, d_out] = p.float.as_ref().map(|l| l.weight.dims()).unwrap_or([0, 0]);
                i += 1;
                p.adapter = Some(acfg.init(
                    d_in,
                    d_out,
                    &Default::default(),
                    seed.wrapping_mul(7919).wrapping_add(i),
                )?);
                Ok(())
            })?;
            let m = bllm_nn::with_deterministic_ids(m, 0);
            let lr = |step| learning_rate(&recipe.schedule, recipe.optimizer.lr, step, steps);
            phase(
                recipe,
                m,
                steps,
                1,
                lr,
                "adapt",
                Some(&run),
                &split,
                |rng| sample(rng, target_span, recipe.train.batch_size),
                |m, starts, step| lm_batch_loss(m, &target, starts, recipe, step, steps),
            )?
        }
        AdapterKind::BitDelta => {
            // Fine-tune exactly the matrices BitDelta will carry (the other parameters stay
            // frozen), so that the 1-bit deltas stand for the whole fine-tune.
            let mut trainable = base.clone().no_grad();
            trainable.for_each_proj_mut(&a.targets, |_, p| {
                if let Some(l) = p.float.as_mut() {
                    l.weight = l.weight.clone().set_require_grad(true);
                }
                Ok(())
            })?;
            let lr = |step| learning_rate(&recipe.schedule, recipe.optimizer.lr, step, steps);
            let ft = phase(
                recipe,
                trainable,
                steps,
                2,
                lr,
                "finetune",
                Some(&run),
                &split,
                |rng| sample(rng, target_span, recipe.train.batch_size),
                |m, starts, step| lm_batch_loss(m, &target, starts, recipe, step, steps),
            )?;
            finetune_target_bpb = Some(bpb(&ft, &target.valid, seed));
            // Deltas of the targeted projections.
            let mut deltas = Vec::new();
            let mut ft_w = ft.clone();
            ft_w.for_each_proj_mut(&a.targets, |_, p| {
                if let Some(l) = &p.float {
                    deltas.push(l.weight.val().inner());
                }
                Ok(())
            })?;
            let mut m = frozen;
            let mut k = 0;
            m.for_each_proj_mut(&a.targets, |_, p| {
                if let Some(l) = &p.float {
                    let d = Tensor::<B, 2>::from_inner(deltas[k].clone() - l.weight.val().inner());
                    p.adapter = Some(AdapterConfig::bitdelta(d));
                }
                k += 1;
                Ok(())
            })?;
            let m = bllm_nn::with_deterministic_ids(m, 0);
            distill(
                recipe,
                m,
                &ft.valid(),
                &target,
                a.distill_steps,
                &run,
                &split,
            )?
        }
    };
    if let Some(g) = group {
        g.leave()?;
    }
    let target_bpb = bpb(&adapted, &target.valid, seed);
    let source_bpb = bpb(&adapted, &source.valid, seed);
    // Bytes: the adapters as stored, and float LoRA of the same rank on the same projections.
    let mut tally = Tally::default();
    let mut probe = adapted.clone();
    probe.for_each_proj_mut(&a.targets, |name, p| {
        tally.add(name, p, a, kind, recipe.export.weights)
    })?;
    let Tally {
        adapter_bytes,
        float_lora_bytes,
        trainable,
        exported,
    } = tally;
    let summary = AdapterSummary {
        name: recipe.name.clone(),
        adapter: a.kind.clone(),
        rank: a.rank,
        steps,
        target_bpb_base,
        target_bpb,
        source_bpb_base,
        source_bpb,
        forgetting: source_bpb - source_bpb_base,
        finetune_target_bpb,
        adapter_bytes,
        float_lora_bytes,
        compression_vs_float_lora: float_lora_bytes as f64 / adapter_bytes.max(1) as f64,
        trainable_params: trainable,
        pretrained: None,
    };
    run.append(
        "metrics.jsonl",
        &json!({"step": steps, "split": "eval", "phase": "adapted", "target_bpb": target_bpb, "source_bpb": source_bpb}),
    )?;
    run.write_checkpoint("final", |dir| {
        adapted
            .clone()
            .save_file(dir.join("model"), &recorder())
            .map_err(|e| TrainError::Checkpoint {
                path: dir.to_owned(),
                message: e.to_string(),
            })?;
        for (name, bits) in &exported {
            write_bits(&dir.join("export").join(name), name, bits, recipe)?;
        }
        Ok(())
    })?;
    run.write_file(
        "summary.txt",
        bllm_nn::summary(&adapted).to_string().as_bytes(),
    )?;
    run.write_json("summary.json", &summary)?;
    Ok(summary)
}

/// BitDelta's second stage: trains only the α values of `student` so that its logits match
/// `teacher`'s (MSE) on target batches, at the recipe's constant learning rate.
fn distill<B: AutodiffBackend>(
    recipe: &Recipe,
    student: ByteLm<B>,
    teacher: &ByteLm<B::InnerBackend>,
    corpus: &TextCorpus,
    steps: usize,
    run: &RunDir,
    split: &Split<'_, B::InnerBackend>,
) -> Result<ByteLm<B>> {
    let context = student.config.context;
    let span = corpus.train.len() - context;
    let lr = |_| recipe.optimizer.lr;
    phase(
        recipe,
        student,
        steps,
        3,
        lr,
        "distill",
        Some(run),
        split,
        |rng| sample(rng, span, recipe.train.batch_size),
        |m, starts, step| {
            let (x, _) = windows::<B>(&corpus.train, starts, context, &Default::default());
            let ctx = step_ctx(recipe, step, steps.max(1)).for_eval();
            let want = Tensor::<B, 3>::from_inner(teacher.forward(x.clone().inner(), &ctx));
            (m.forward(x, &ctx) - want).square().mean()
        },
    )
}

/// Writes one adapter's bit-planes (codes directories) and `scales.json` under `dir`.
pub(crate) fn write_bits(
    dir: &Path,
    name: &str,
    bits: &bllm_nn::AdapterBits,
    recipe: &Recipe,
) -> Result<()> {
    for (plane, codes) in &bits.planes {
        let out = dir.join(plane);
        let info = bllm_codes::io::ManifestInfo {
            source: None,
            encoder: Some(format!(
                "adapter {name}, plane {plane}: one row per output vector"
            )),
            recipe: Some(format!("{} (seed {})", recipe.name, recipe.seed)),
            tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
        };
        bllm_codes::io::write_codes_dir(&out, codes, info).map_err(|e| TrainError::Checkpoint {
            path: out.clone(),
            message: e.to_string(),
        })?;
    }
    let scales: serde_json::Map<String, serde_json::Value> = bits
        .scales
        .iter()
        .map(|(n, v)| (n.clone(), json!(v)))
        .collect();
    let body = json!({"scales": scales, "factor": bits.factor});
    bllm_codes::io::write_atomic(
        &dir.join("scales.json"),
        &serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
    .map_err(|e| TrainError::Checkpoint {
        path: dir.to_owned(),
        message: e.to_string(),
    })
}
