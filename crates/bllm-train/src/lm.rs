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

use bllm_codes::rng::SplitMix64;
use bllm_data::TextCorpus;
use bllm_nn::{
    ActBinarization, AttentionKind, BinaryOptions, ByteLm, ByteLmConfig, LmStats, ProjKind,
    Projections, QuantRef, Scaling,
};
use bllm_recipe::{LmModelSection, LmTask, Recipe};
use bllm_ste::{Ctx, Estimator, Shadow};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::classify::{RunOptions, write_safetensors};
use crate::monitor::{LoopState, Verdict, Watch, fd_agreement};
use crate::optim::{Opt, clip_and_step, save_checkpoint, start_or_resume, step_ctx, to_vec};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::{Result, TrainError};

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
}

/// State saved in `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    rng_state: u64,
    #[serde(flatten)]
    watch: LoopState,
    last_levels: Vec<Vec<i8>>,
}

/// Monitor values averaged into [`LmSummary::monitor_means`].
const SUMMARISED: [&str; 9] = [
    "shadow_cosine",
    "fd_sign_agreement",
    "fd_spearman",
    "flip_ratio",
    "pass_through",
    "quant_error",
    "attention",
    "attention_min",
    "act_clamp",
];

fn task(recipe: &Recipe) -> Result<&LmTask> {
    recipe.lm().ok_or_else(|| {
        TrainError::Unsupported(format!(
            "recipe {:?} is kind = {:?}; the LM trainer runs kind = \"lm\"",
            recipe.name,
            recipe.kind.name()
        ))
    })
}

/// The weight estimator of a recipe (`[estimator]`).
pub(crate) fn estimator(recipe: &Recipe) -> Result<Estimator> {
    toml::Value::Table(recipe.estimator.clone())
        .try_into()
        .map_err(|e: toml::de::Error| TrainError::Unsupported(format!("estimator: {e}")))
}

/// The model configuration a recipe describes.
pub fn lm_config(recipe: &Recipe) -> Result<ByteLmConfig> {
    let t = task(recipe)?;
    lm_config_from(&t.model, estimator(recipe)?)
}

/// The model configuration of an LM `[model]` section with the recipe's estimator.
pub(crate) fn lm_config_from(m: &LmModelSection, estimator: Estimator) -> Result<ByteLmConfig> {
    let kind = |name: &str| ProjKind::parse(m.projection(name)).unwrap_or_default();
    let scaling = match (m.scaling.as_str(), m.learnable_scale) {
        ("per_tensor", l) => Scaling::PerTensor { learnable: l },
        ("per_channel", l) => Scaling::PerChannel { learnable: l },
        _ => Scaling::None,
    };
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
        binary: BinaryOptions {
            estimator,
            scaling,
            activations: ActBinarization::parse(&m.activations).unwrap_or_default(),
            sub_norm: m.sub_norm,
        },
        attention: AttentionKind::parse(&m.attention).unwrap_or_default(),
        moe: None,
    })
}

/// Windows `[n, context + 1]` of `bytes` starting at `starts`, as (inputs, targets).
pub(crate) fn windows<B: Backend>(
    bytes: &[u8],
    starts: &[usize],
    context: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let n = starts.len();
    let mut x = Vec::with_capacity(n * context);
    let mut y = Vec::with_capacity(n * context);
    for &s in starts {
        x.extend(bytes[s..s + context].iter().map(|&b| i64::from(b)));
        y.extend(bytes[s + 1..s + 1 + context].iter().map(|&b| i64::from(b)));
    }
    (
        Tensor::from_data(TensorData::new(x, [n, context]), device),
        Tensor::from_data(TensorData::new(y, [n * context]), device),
    )
}

/// Mean next-byte cross-entropy (nats) of `logits` `[n, t, 256]` against `targets` `[n·t]`.
pub(crate) fn lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, t, v] = logits.dims();
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.reshape([n * t, v]), targets)
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

/// The quantised level of every weight of every quantised layer: sign of the latent weight
/// for 1-bit layers, the ternary level for BitNet layers.
fn levels<B: AutodiffBackend>(model: &ByteLm<B>) -> Vec<Vec<i8>> {
    model
        .quantised()
        .iter()
        .map(|(_, q)| {
            let t = if q.ternary() {
                q.effective_weight(&Ctx::default()).inner()
            } else {
                q.latent().val().inner()
            };
            to_vec(t)
                .into_iter()
                .map(|w| {
                    if q.ternary() && w == 0.0 {
                        0
                    } else if w >= 0.0 {
                        1
                    } else {
                        -1
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs (or resumes) a `kind = "lm"` recipe into `opts.run_dir`.
pub fn run_lm(recipe: &Recipe, opts: &mut RunOptions) -> Result<LmSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_lm_on -> LmSummary)
}

fn run_lm_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<LmSummary> {
    let t = task(recipe)?;
    let cfg = lm_config(recipe)?;
    let context = cfg.context;
    let corpus = load_corpus(&t.data, context)?;
    let unigram_bpb = corpus.unigram_bits_per_byte();
    let dev = Default::default();
    let run = RunDir::open(&opts.run_dir, recipe, opts.resume)?;
    let mut model: ByteLm<B> = cfg.init(&dev, recipe.seed)?;
    let mut opt = Opt::new(recipe, &model);
    let mut state = TrainerState {
        step: 0,
        rng_state: recipe.seed ^ 0x1A_u64,
        watch: LoopState::new(recipe),
        last_levels: levels(&model),
    };
    let watch = Watch {
        recipe,
        run: &run,
        verbose: opts.verbose,
    };
    (model, opt, state) = start_or_resume(
        recipe,
        &run,
        opts.resume,
        (model, opt, state),
        |s: &TrainerState| s.step,
    )?;
    // Written on every start and resume (the same bytes), so a run restarted from step 0 has it.
    run.write_json(
        "data.json",
        &json!({"path": t.data.path, "train_bytes": corpus.train.len(), "eval_bytes": corpus.valid.len(), "unigram_bpb": unigram_bpb}),
    )?;
    let save = |name: &str, model: &ByteLm<B>, opt: &Opt<B, ByteLm<B>>, state: &TrainerState| {
        save_checkpoint(&run, name, model, opt, state, |dir| {
            write_safetensors(model, &dir.join("model.safetensors"))
        })
    };
    let checkpoint = |model: &ByteLm<B>, opt: &Opt<B, ByteLm<B>>, state: &TrainerState, note| {
        let p = save(&format!("checkpoint-{}", state.step), model, opt, state)?;
        run.checkpointed(state.step, &p, note, recipe.checkpoint.keep_last)
    };
    let total = recipe.train.steps;
    let stop_at = opts.max_steps.map_or(total, |m| m.min(total));
    let bs = recipe.train.batch_size;
    let eval_ctx = |step: usize| {
        Ctx::at(step as f64 / total as f64)
            .with_seed(recipe.seed ^ 0xE7A1)
            .for_eval()
    };
    let eval = |model: &ByteLm<B>, step: usize| -> f64 {
        evaluate(&model.valid(), &corpus.valid, context, &eval_ctx(step))
    };
    let span = corpus.train.len() - context;
    while state.step < stop_at {
        let step = state.step;
        let ctx = step_ctx(recipe, step, total);
        let mut rng = SplitMix64::new(state.rng_state);
        let starts: Vec<usize> = (0..bs)
            .map(|_| (rng.next_u64() % span as u64) as usize)
            .collect();
        state.rng_state = rng.state();
        let (x, y) = windows::<B>(&corpus.train, &starts, context, &dev);
        let loss = lm_loss(model.forward(x.clone(), &ctx), y.clone());
        let loss_v: f32 = loss.clone().into_scalar().elem();
        let loss_v = f64::from(loss_v);
        let grads = loss.backward();

        let due = |name: &str| watch.due_before(name, step);
        let mut before: Vec<(&str, f64, bool)> = Vec::new();
        let mut extra = serde_json::Map::new();
        let quantised = model.quantised();
        if (due("shadow_cosine") || due("finite_difference")) && !quantised.is_empty() {
            let g_ste: Vec<Tensor<B::InnerBackend, 2>> = quantised
                .iter()
                .map(|(_, q)| {
                    let p = q.latent().val();
                    p.grad(&grads).unwrap_or_else(|| p.inner().zeros_like())
                })
                .collect();
            if due("shadow_cosine") {
                let shadow = lm_loss(
                    model.forward(x.clone(), &ctx.with_shadow(Shadow::Surrogate)),
                    y.clone(),
                );
                let gs = shadow.backward();
                let mut cosines = Vec::new();
                for ((name, q), g) in quantised.iter().zip(&g_ste) {
                    let h = q.latent().val().grad(&gs).unwrap_or_else(|| g.zeros_like());
                    let dot: f32 = (g.clone() * h.clone()).sum().into_scalar().elem();
                    let ng: f32 = g.clone().square().sum().sqrt().into_scalar().elem();
                    let nh: f32 = h.square().sum().sqrt().into_scalar().elem();
                    let cos = f64::from(dot) / (f64::from(ng) * f64::from(nh)).max(1e-30);
                    extra.insert(format!("shadow_cosine/{name}"), json!(cos));
                    cosines.push(cos);
                }
                let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
                extra.insert("shadow_cosine".into(), json!(mean));
                before.push(("shadow_cosine", mean, false));
            }
            if due("finite_difference") {
                let base = model.valid();
                let latents: Vec<Tensor<B::InnerBackend, 2>> = quantised
                    .iter()
                    .map(|(_, q)| q.latent().val().inner())
                    .collect();
                let (xi, yi) = (x.clone().inner(), y.clone().inner());
                let (agree, rho, per) = fd_agreement(
                    &latents,
                    &g_ste,
                    recipe.monitors.fd_directions,
                    recipe.seed ^ step as u64,
                    |li, w| {
                        let mut m = base.clone();
                        m.set_quantised(li, w);
                        let l: f32 = lm_loss(m.forward(xi.clone(), &ctx), yi.clone())
                            .into_scalar()
                            .elem();
                        f64::from(l)
                    },
                );
                for ((name, _), a) in quantised.iter().zip(per) {
                    extra.insert(format!("fd_sign_agreement/{name}"), json!(a));
                }
                extra.insert("fd_sign_agreement".into(), json!(agree));
                extra.insert("fd_spearman".into(), json!(rho));
                before.push(("finite_difference", agree, false));
            }
        }
        drop(quantised);
        let grad_norm = crate::optim::grad_norm(&model, &grads);
        let (lz, gz, verdict) = watch.before_update(&mut state.watch, step, loss_v, grad_norm)?;
        let skip = match verdict {
            Verdict::Stop(stop) => {
                save(&format!("checkpoint-{step}"), &model, &opt, &state)?;
                return Err(stop.into_error(&run, step)?);
            }
            Verdict::Skip => true,
            Verdict::Update => false,
        };
        let lr = learning_rate(&recipe.schedule, recipe.optimizer.lr, step, total);
        if skip {
            watch.skipped(&mut state.watch, step, loss_v)?;
        } else {
            model = clip_and_step(recipe, &mut opt, model, grads, grad_norm, lr);
        }
        state.step += 1;
        if let Some(p) = opts.progress.as_mut() {
            p(state.step, total, loss_v);
        }
        state.watch.push_loss(loss_v, recipe.train.log_every);

        let mut metrics = json!({"step": state.step, "split": "train", "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "loss_z": lz, "grad_norm_z": gz});
        let done = state.step;
        let every = |name: &str| watch.due_after(name, done);
        let mut after = before;
        if let Some(obj) = metrics.as_object_mut() {
            obj.extend(extra);
        }
        let now = Ctx::at(done as f64 / total as f64);
        let quantised = model.quantised();
        if every("flip_ratio") && !quantised.is_empty() {
            let lv = levels(&model);
            let (mut flips, mut n) = (0usize, 0usize);
            for (a, b) in lv.iter().zip(&state.last_levels) {
                flips += a.iter().zip(b).filter(|(p, q)| p != q).count();
                n += a.len();
            }
            let v = flips as f64 / n.max(1) as f64;
            metrics["flip_ratio"] = json!(v);
            after.push(("flip_ratio", v, true));
            state.last_levels = lv;
        }
        if every("pass_through") && !quantised.is_empty() {
            let v = quantised
                .iter()
                .map(|(_, q)| {
                    q.estimator()
                        .pass_through_fraction(q.latent().val().inner(), &now)
                })
                .sum::<f64>()
                / quantised.len() as f64;
            metrics["pass_through"] = json!(v);
            after.push(("pass_through", v, false));
        }
        if every("quant_error") && !quantised.is_empty() {
            let v = quantised
                .iter()
                .map(|(_, q)| quant_error(q, &now))
                .sum::<f64>()
                / quantised.len() as f64;
            metrics["quant_error"] = json!(v);
            after.push(("quant_error", v, true));
        }
        drop(quantised);
        if every("attention") || every("act_clamp") {
            let mut stats = LmStats::default();
            let _ = model
                .valid()
                .forward_with(x.inner(), &ctx, Some(&mut stats));
            let heads: Vec<f64> = stats.attention.iter().flatten().copied().collect();
            if every("attention") && !heads.is_empty() {
                for (l, hs) in stats.attention.iter().enumerate() {
                    for (h, v) in hs.iter().enumerate() {
                        metrics[format!("attention/l{l}h{h}")] = json!(v);
                    }
                }
                let mean = heads.iter().sum::<f64>() / heads.len() as f64;
                let min = heads.iter().copied().fold(f64::INFINITY, f64::min);
                metrics["attention"] = json!(mean);
                metrics["attention_min"] = json!(min);
                after.push(("attention", min, false));
            }
            if every("act_clamp") && !stats.act_clamp.is_empty() {
                let v = stats.act_clamp.iter().sum::<f64>() / stats.act_clamp.len() as f64;
                metrics["act_clamp"] = json!(v);
                after.push(("act_clamp", v, true));
            }
        }
        if let Some(stop) = watch.after_update(&mut state.watch, state.step, &after)? {
            save(&format!("checkpoint-{}", state.step), &model, &opt, &state)?;
            return Err(stop.into_error(&run, state.step)?);
        }
        if let Some(m) = metrics.as_object() {
            state.watch.accumulate(m, &SUMMARISED);
        }
        if state.step % recipe.train.log_every == 0
            || metrics.as_object().is_some_and(|m| m.len() > 7)
        {
            run.append("metrics.jsonl", &metrics)?;
        }
        if recipe.eval.every > 0 && state.step % recipe.eval.every == 0 && state.step < total {
            let l = eval(&model, state.step);
            let bpb = l / std::f64::consts::LN_2;
            run.append(
                "metrics.jsonl",
                &json!({"step": state.step, "split": "eval", "loss": l, "bpb": bpb}),
            )?;
            if opts.verbose {
                eprintln!(
                    "step {}/{total}: train loss {loss_v:.4}, held-out {bpb:.4} bits/byte",
                    state.step
                );
            }
        }
        if recipe.checkpoint.every > 0
            && state.step % recipe.checkpoint.every == 0
            && state.step < total
        {
            checkpoint(&model, &opt, &state, "")?;
        }
    }

    let complete = state.step >= total;
    if !complete {
        checkpoint(&model, &opt, &state, " (stopped early by max_steps)")?;
    }
    let eval_loss = eval(&model, state.step);
    let eval_bpb = eval_loss / std::f64::consts::LN_2;
    let sum = bllm_nn::summary(&model);
    let summary = LmSummary {
        name: recipe.name.clone(),
        steps: state.step,
        complete,
        estimator: estimator_label(&cfg),
        train_loss: state.watch.recent_loss(),
        eval_loss,
        eval_bpb,
        eval_perplexity: eval_loss.exp(),
        unigram_bpb,
        diverged: !eval_bpb.is_finite() || eval_bpb >= unigram_bpb,
        skipped_steps: state.watch.skipped_steps,
        monitor_events: state.watch.monitor_events,
        monitor_means: state.watch.means(),
        model_bytes: sum.total_bytes(),
        model_float32_bytes: sum.float32_equivalent_bytes(),
    };
    if complete {
        run.append(
            "metrics.jsonl",
            &json!({"step": state.step, "split": "eval", "loss": eval_loss, "bpb": eval_bpb}),
        )?;
        let final_dir = save("final", &model, &opt, &state)?;
        if recipe.export.weights {
            export_weights(&model, recipe, &final_dir.join("export"))?;
        }
        run.write_file("summary.txt", sum.to_string().as_bytes())?;
        run.write_json("summary.json", &summary)?;
    }
    Ok(summary)
}

/// `‖W − Q(W)‖ / ‖W‖` of one quantised layer.
fn quant_error<B: AutodiffBackend>(q: &QuantRef<'_, B>, ctx: &Ctx) -> f64 {
    let w = q.latent().val().inner();
    let e = q.effective_weight(ctx).inner();
    let num: f32 = (w.clone() - e).square().sum().sqrt().into_scalar().elem();
    let den: f32 = w.square().sum().sqrt().into_scalar().elem();
    f64::from(num) / f64::from(den).max(1e-12)
}

/// What the summary names as the estimator: the recipe's for models with 1-bit projections,
/// `bitnet` / `float` otherwise.
fn estimator_label(cfg: &ByteLmConfig) -> String {
    let p = &cfg.projections;
    let all = [p.q, p.k, p.v, p.o, p.up, p.down, p.embed, p.head];
    if all.contains(&ProjKind::Binary) {
        cfg.binary.estimator.name().to_owned()
    } else if all.contains(&ProjKind::Bitnet) {
        "bitnet".into()
    } else {
        "float".into()
    }
}

/// Writes every quantised layer in the code contract layout under `dir/<layer>/`: 1-bit layers
/// as one codes directory (one row per output channel) + `scales.json`; BitNet layers as two
/// bit-planes `sign/` and `nonzero/` + `scales.json` with γ.
fn export_weights<B: AutodiffBackend>(
    model: &ByteLm<B>,
    recipe: &Recipe,
    dir: &Path,
) -> Result<()> {
    let info = |name: &str, what: &str| bllm_codes::io::ManifestInfo {
        source: None,
        encoder: Some(format!("ByteLm layer {name}: {what}")),
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
    for (name, q) in model.quantised() {
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
            scales(
                &out,
                json!({"scales": w.scales, "rows": "output channels", "bits": "input features"}),
            )?;
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
