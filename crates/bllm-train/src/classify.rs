//! `kind = "classify"`: a binary MLP on a synthetic Gaussian-cluster task. Small and fast: the
//! trainer's test bed and the template for the other kinds.

use std::path::{Path, PathBuf};

use bllm_codes::rng::SplitMix64;
use bllm_nn::{BinaryLinear, BinaryLinearConfig, Scaling, kaiming_uniform};
use bllm_recipe::{DataSection, ModelSection, Recipe, Task};
use bllm_ste::{Ctx, Estimator};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::monitor::{LoopState, Verdict, Watch};
use crate::optim::{Opt, clip_and_step, save_checkpoint, start_or_resume, step_ctx, to_vec};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::{Result, TrainError};

/// The classify model: a stack of layers, each a float `Linear` or a `BinaryLinear`.
#[derive(Module, Debug)]
pub struct ClassifyMlp<B: Backend> {
    /// Float layers (first and/or last, when the recipe keeps them in float).
    pub float_layers: Vec<Linear<B>>,
    /// Binary layers.
    pub binary_layers: Vec<BinaryLinear<B>>,
    /// Layer order: `(is_float, index into its vector)`.
    pub plan: Vec<(bool, usize)>,
    /// Binarize hidden activations with `act`.
    pub binary_activations: bool,
    /// Estimator for hidden activations.
    pub act: Estimator,
}

impl<B: Backend> ClassifyMlp<B> {
    /// Builds the model of `recipe` with weights from its seed.
    pub fn new(recipe: &Recipe, estimator: &Estimator, device: &B::Device) -> Result<Self> {
        let (data_s, msec) = sections(recipe)?;
        let mut dims = vec![data_s.dim];
        dims.extend(&msec.hidden);
        dims.push(data_s.classes);
        let n = dims.len() - 1;
        let scaling = match (msec.scaling.as_str(), msec.learnable_scale) {
            ("per_tensor", l) => Scaling::PerTensor { learnable: l },
            ("per_channel", l) => Scaling::PerChannel { learnable: l },
            _ => Scaling::None,
        };
        let (mut float_layers, mut binary_layers, mut plan) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let seed = recipe.seed.wrapping_mul(1000).wrapping_add(i as u64);
            let float = (i == 0 && msec.float_first) || (i == n - 1 && msec.float_last);
            if float {
                plan.push((true, float_layers.len()));
                float_layers.push(Linear {
                    weight: Param::from_tensor(kaiming_uniform::<B>(
                        dims[i],
                        dims[i + 1],
                        seed,
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::zeros([dims[i + 1]], device))),
                });
            } else {
                plan.push((false, binary_layers.len()));
                let cfg = BinaryLinearConfig::new(dims[i], dims[i + 1])
                    .with_weight(estimator.clone())
                    .with_scaling(scaling.clone());
                binary_layers.push(cfg.init::<B>(device, seed)?);
            }
        }
        let model = Self {
            float_layers,
            binary_layers,
            plan,
            binary_activations: msec.binary_activations,
            act: estimator.clone(),
        };
        Ok(bllm_nn::with_deterministic_ids(model, 0))
    }

    /// Logits `[batch, classes]` for inputs `[batch, dim]`.
    pub fn forward(&self, x: Tensor<B, 2>, ctx: &Ctx) -> Tensor<B, 2> {
        let mut h = x;
        let last = self.plan.len().saturating_sub(1);
        for (i, &(float, j)) in self.plan.iter().enumerate() {
            let layer_ctx = ctx.fork(i as u64);
            h = if float {
                self.float_layers[j].forward(h)
            } else {
                self.binary_layers[j].forward(h, &layer_ctx)
            };
            if i < last {
                h = if self.binary_activations {
                    self.act.apply(h, &layer_ctx.fork(99))
                } else {
                    burn::tensor::activation::relu(h)
                };
            }
        }
        h
    }
}

impl<B: Backend> bllm_nn::Summarize for ClassifyMlp<B> {
    fn summarize(&self, name: &str, out: &mut Vec<bllm_nn::LayerSummary>) {
        for (i, &(float, j)) in self.plan.iter().enumerate() {
            let n = format!("{name}layer{i}");
            if float {
                self.float_layers[j].summarize(&n, out)
            } else {
                self.binary_layers[j].summarize(&n, out)
            }
        }
    }
}

/// Called after every step with (steps done, total steps, training loss).
pub type ProgressFn = Box<dyn FnMut(usize, usize, f64)>;

/// How to run.
pub struct RunOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue from the newest complete checkpoint in `run_dir`.
    pub resume: bool,
    /// Stop after this many steps (the run stays resumable), e.g. to split a run.
    pub max_steps: Option<usize>,
    /// Print progress lines to stderr.
    pub verbose: bool,
    /// Progress callback (a progress bar), if any.
    pub progress: Option<ProgressFn>,
}

/// What a finished run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Recipe name.
    pub name: String,
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// Mean training loss over the last logged window.
    pub train_loss: f64,
    /// Held-out loss.
    pub eval_loss: f64,
    /// Held-out accuracy.
    pub eval_accuracy: f64,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped (`log`-only firings are in
    /// `events.jsonl` but not counted here).
    pub monitor_events: usize,
    /// Mean of each monitor's logged value over the run (`shadow_cosine`, `fd_sign_agreement`,
    /// `fd_spearman`, `flip_ratio`, `pass_through`, `quant_error`).
    pub monitor_means: std::collections::BTreeMap<String, f64>,
    /// Model storage: packed bytes / float32-equivalent bytes.
    pub model_bytes: usize,
    /// float32-equivalent bytes of the same model.
    pub model_float32_bytes: usize,
}

/// State saved in `trainer.json`: everything besides tensors that a bit-identical resume needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    rng_state: u64,
    #[serde(flatten)]
    watch: LoopState,
    last_signs: Vec<Vec<bool>>,
}

/// Monitor values averaged into [`RunSummary::monitor_means`].
const SUMMARISED: [&str; 6] = [
    "shadow_cosine",
    "fd_sign_agreement",
    "fd_spearman",
    "flip_ratio",
    "pass_through",
    "quant_error",
];

/// `[data]` and `[model]` of a classify recipe.
fn sections(recipe: &Recipe) -> Result<(&DataSection, &ModelSection)> {
    match &recipe.task {
        Task::Classify { data, model } => Ok((data, model)),
        _ => Err(TrainError::Unsupported(format!(
            "recipe {:?} is kind = {:?}; the classify trainer runs kind = \"classify\"",
            recipe.name,
            recipe.kind.name()
        ))),
    }
}

/// Synthetic Gaussian clusters: `classes` centres in `dim` dimensions, points at `noise` spread.
fn make_data(recipe: &Recipe, d: &DataSection) -> (Vec<f32>, Vec<i64>, Vec<f32>, Vec<i64>) {
    let mut rng = SplitMix64::new(recipe.seed ^ 0xDA7A);
    let centres: Vec<f64> = (0..d.classes * d.dim)
        .map(|_| rng.next_gaussian())
        .collect();
    let mut sample = |n: usize| {
        let mut x = Vec::with_capacity(n * d.dim);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let c = (rng.next_u64() % d.classes as u64) as usize;
            y.push(c as i64);
            x.extend(
                (0..d.dim).map(|k| (centres[c * d.dim + k] + d.noise * rng.next_gaussian()) as f32),
            );
        }
        (x, y)
    };
    let (xt, yt) = sample(d.train_size);
    let (xe, ye) = sample(d.eval_size);
    (xt, yt, xe, ye)
}

/// Signs of every binary layer's latent weights (after centring), for the flip ratio.
fn weight_signs<B: AutodiffBackend>(model: &ClassifyMlp<B>) -> Vec<Vec<bool>> {
    model
        .binary_layers
        .iter()
        .map(|l| {
            to_vec(l.weight.val().inner())
                .into_iter()
                .map(|w| w >= 0.0)
                .collect()
        })
        .collect()
}

/// Runs (or resumes) a classify recipe into `opts.run_dir`.
pub fn run(recipe: &Recipe, opts: &mut RunOptions) -> Result<RunSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_on -> RunSummary)
}

fn run_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<RunSummary> {
    let estimator: Estimator = toml::Value::Table(recipe.estimator.clone())
        .try_into()
        .map_err(|e: toml::de::Error| TrainError::Unsupported(format!("estimator: {e}")))?;
    let (data_s, _) = sections(recipe)?;
    let dev = Default::default();
    let run = RunDir::open(&opts.run_dir, recipe, opts.resume)?;
    let (xt, yt, xe, ye) = make_data(recipe, data_s);
    let dim = data_s.dim;
    let x_eval = Tensor::<B, 2>::from_data(TensorData::new(xe, [data_s.eval_size, dim]), &dev);
    let y_eval = Tensor::<B, 1, Int>::from_data(TensorData::new(ye, [data_s.eval_size]), &dev);

    let mut model = ClassifyMlp::<B>::new(recipe, &estimator, &dev)?;
    let mut opt = Opt::new(recipe, &model);
    let mut state = TrainerState {
        step: 0,
        rng_state: recipe.seed ^ 0xBA7C,
        watch: LoopState::new(recipe),
        last_signs: weight_signs(&model),
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

    let save = |run: &RunDir,
                name: &str,
                model: &ClassifyMlp<B>,
                opt: &Opt<B, ClassifyMlp<B>>,
                state: &TrainerState|
     -> Result<PathBuf> {
        save_checkpoint(run, name, model, opt, state, |dir| {
            write_safetensors(model, &dir.join("model.safetensors"))
        })
    };

    // A periodic (or early-stop) checkpoint: write it, record it, keep the newest N.
    let checkpoint = |model: &ClassifyMlp<B>,
                      opt: &Opt<B, ClassifyMlp<B>>,
                      state: &TrainerState,
                      note: &str|
     -> Result<()> {
        let p = save(
            &run,
            &format!("checkpoint-{}", state.step),
            model,
            opt,
            state,
        )?;
        run.checkpointed(state.step, &p, note, recipe.checkpoint.keep_last)
    };
    let total = recipe.train.steps;
    let stop_at = opts.max_steps.map_or(total, |m| m.min(total));
    let loss_fn = CrossEntropyLossConfig::new().init(&dev);
    let bs = recipe.train.batch_size;
    let eval = |model: &ClassifyMlp<B>, step: usize| -> (f64, f64) {
        let m = model.valid();
        let ctx = Ctx::at(step as f64 / total as f64)
            .with_seed(recipe.seed ^ 0xE7A1)
            .for_eval();
        let logits = m.forward(x_eval.clone().inner(), &ctx);
        let loss: f32 = CrossEntropyLossConfig::new()
            .init(&Default::default())
            .forward(logits.clone(), y_eval.clone().inner())
            .into_scalar()
            .elem();
        let pred = logits.argmax(1).squeeze_dim::<1>(1);
        let correct: f32 = pred
            .equal(y_eval.clone().inner())
            .float()
            .sum()
            .into_scalar()
            .elem();
        (
            f64::from(loss),
            f64::from(correct) / data_s.eval_size as f64,
        )
    };
    while state.step < stop_at {
        let step = state.step;
        let ctx = step_ctx(recipe, step, total);
        let mut rng = SplitMix64::new(state.rng_state);
        let idx: Vec<usize> = (0..bs)
            .map(|_| (rng.next_u64() % data_s.train_size as u64) as usize)
            .collect();
        state.rng_state = rng.state();
        let xb: Vec<f32> = idx
            .iter()
            .flat_map(|&i| xt[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        let yb: Vec<i64> = idx.iter().map(|&i| yt[i]).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(xb, [bs, dim]), &dev);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(yb, [bs]), &dev);

        let loss = loss_fn.forward(model.forward(x.clone(), &ctx), y.clone());
        let loss_v: f32 = loss.clone().into_scalar().elem();
        let loss_v = f64::from(loss_v);
        let grads = loss.backward();
        // Gradient-mismatch monitors run on this batch, before the update.
        let due = |name: &str| watch.due_before(name, step);
        let mut mismatch: Vec<(&str, f64, bool)> = Vec::new();
        let mut mismatch_metrics = serde_json::Map::new();
        if (due("shadow_cosine") || due("finite_difference")) && !model.binary_layers.is_empty() {
            let g_ste: Vec<Tensor<B::InnerBackend, 2>> = model
                .binary_layers
                .iter()
                .map(|l| {
                    l.weight
                        .val()
                        .grad(&grads)
                        .unwrap_or_else(|| l.weight.val().inner().zeros_like())
                })
                .collect();
            if due("shadow_cosine") {
                let shadow = loss_fn.forward(
                    model.forward(x.clone(), &ctx.with_shadow(bllm_ste::Shadow::Surrogate)),
                    y.clone(),
                );
                let gs = shadow.backward();
                let mut cosines = Vec::new();
                for (i, (l, g)) in model.binary_layers.iter().zip(&g_ste).enumerate() {
                    let h = l.weight.val().grad(&gs).unwrap_or_else(|| g.zeros_like());
                    let dot: f32 = (g.clone() * h.clone()).sum().into_scalar().elem();
                    let ng: f32 = g.clone().square().sum().sqrt().into_scalar().elem();
                    let nh: f32 = h.square().sum().sqrt().into_scalar().elem();
                    let cos = f64::from(dot) / (f64::from(ng) * f64::from(nh)).max(1e-30);
                    mismatch_metrics.insert(format!("shadow_cosine/binary{i}"), json!(cos));
                    mismatch_metrics.insert(
                        format!("shadow_norm_ratio/binary{i}"),
                        json!(f64::from(ng) / f64::from(nh).max(1e-30)),
                    );
                    cosines.push(cos);
                }
                let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
                mismatch_metrics.insert("shadow_cosine".into(), json!(mean));
                mismatch.push(("shadow_cosine", mean, false));
            }
            if due("finite_difference") {
                let (agree, rho) = finite_difference(
                    &model,
                    &g_ste,
                    &x,
                    &y,
                    &ctx,
                    recipe.monitors.fd_directions,
                    recipe.seed ^ step as u64,
                );
                mismatch_metrics.insert("fd_sign_agreement".into(), json!(agree));
                mismatch_metrics.insert("fd_spearman".into(), json!(rho));
                mismatch.push(("finite_difference", agree, false));
            }
        }
        let grad_norm = crate::optim::grad_norm(&model, &grads);

        let (lz, gz, verdict) = watch.before_update(&mut state.watch, step, loss_v, grad_norm)?;
        let skip = match verdict {
            Verdict::Stop(stop) => {
                save(&run, &format!("checkpoint-{step}"), &model, &opt, &state)?;
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
        let mut after: Vec<(&str, f64, bool)> = mismatch;
        if let Some(obj) = metrics.as_object_mut() {
            obj.extend(mismatch_metrics);
        }
        if every("flip_ratio") {
            let signs = weight_signs(&model);
            let (mut flips, mut n) = (0usize, 0usize);
            for (a, b) in signs.iter().zip(&state.last_signs) {
                flips += a.iter().zip(b).filter(|(p, q)| p != q).count();
                n += a.len();
            }
            metrics["flip_ratio"] = json!(flips as f64 / n.max(1) as f64);
            after.push(("flip_ratio", flips as f64 / n.max(1) as f64, true));
            state.last_signs = signs;
        }
        if every("pass_through") {
            let ctx_now = Ctx::at(state.step as f64 / total as f64);
            let fr: Vec<f64> = model
                .binary_layers
                .iter()
                .map(|l| {
                    l.config
                        .weight
                        .pass_through_fraction(l.weight.val().inner(), &ctx_now)
                })
                .collect();
            let v = fr.iter().sum::<f64>() / fr.len().max(1) as f64;
            metrics["pass_through"] = json!(v);
            after.push(("pass_through", v, false));
        }
        if every("quant_error") {
            let errs: Vec<f64> = model
                .binary_layers
                .iter()
                .map(|l| {
                    let w = l.weight.val().inner();
                    let q = l
                        .valid()
                        .effective_weight(&Ctx::at(state.step as f64 / total as f64));
                    let num: f32 = (w.clone() - q).square().sum().sqrt().into_scalar().elem();
                    let den: f32 = w.square().sum().sqrt().into_scalar().elem();
                    f64::from(num) / f64::from(den).max(1e-12)
                })
                .collect();
            let v = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
            metrics["quant_error"] = json!(v);
            after.push(("quant_error", v, true));
        }
        if let Some(stop) = watch.after_update(&mut state.watch, state.step, &after)? {
            save(
                &run,
                &format!("checkpoint-{}", state.step),
                &model,
                &opt,
                &state,
            )?;
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
            let (l, a) = eval(&model, state.step);
            run.append(
                "metrics.jsonl",
                &json!({"step": state.step, "split": "eval", "loss": l, "accuracy": a}),
            )?;
            if opts.verbose {
                eprintln!(
                    "step {}/{total}: train loss {loss_v:.4}, eval loss {l:.4}, eval accuracy {a:.3}",
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
    let (eval_loss, eval_accuracy) = eval(&model, state.step);
    let sum = bllm_nn::summary(&model);
    let summary = RunSummary {
        name: recipe.name.clone(),
        steps: state.step,
        complete,
        train_loss: state.watch.recent_loss(),
        eval_loss,
        eval_accuracy,
        skipped_steps: state.watch.skipped_steps,
        monitor_events: state.watch.monitor_events,
        monitor_means: state.watch.means(),
        model_bytes: sum.total_bytes(),
        model_float32_bytes: sum.float32_equivalent_bytes(),
    };
    if complete {
        run.append("metrics.jsonl", &json!({"step": state.step, "split": "eval", "loss": eval_loss, "accuracy": eval_accuracy}))?;
        let final_dir = save(&run, "final", &model, &opt, &state)?;
        if recipe.export.weights {
            export_weights(&model, recipe, &final_dir.join("export"))?;
        }
        run.write_json("summary.json", &summary)?;
    }
    Ok(summary)
}

/// Finite-difference check of the STE gradient on one batch: for each binary layer and `k`
/// seeded random ±1 directions `u` over its latent weights, compares the central difference
/// `[L(w + εu) − L(w − εu)] / 2ε` through the real binarized forward with `⟨g_STE, u⟩`
/// ([`crate::monitor::fd_agreement`]). Returns (sign agreement, Spearman rank correlation).
fn finite_difference<B: AutodiffBackend>(
    model: &ClassifyMlp<B>,
    g_ste: &[Tensor<B::InnerBackend, 2>],
    x: &Tensor<B, 2>,
    y: &Tensor<B, 1, Int>,
    ctx: &Ctx,
    k: usize,
    seed: u64,
) -> (f64, f64) {
    let base = model.valid();
    let (x, y) = (x.clone().inner(), y.clone().inner());
    let loss_fn = CrossEntropyLossConfig::new().init(&Default::default());
    let latents: Vec<Tensor<B::InnerBackend, 2>> =
        base.binary_layers.iter().map(|l| l.weight.val()).collect();
    let (agree, rho, _) = crate::monitor::fd_agreement(&latents, g_ste, k, seed, |li, w| {
        let mut m = base.clone();
        m.binary_layers[li].weight = Param::from_tensor(w);
        let l: f32 = loss_fn
            .forward(m.forward(x.clone(), ctx), y.clone())
            .into_scalar()
            .elem();
        f64::from(l)
    });
    (agree, rho)
}

/// Writes each binary layer's weights as a codes directory (`binary<i>/codes.bcodes` +
/// `manifest.json`, one row per output channel) and its scales (`binary<i>/scales.json`).
fn export_weights<B: AutodiffBackend>(
    model: &ClassifyMlp<B>,
    recipe: &Recipe,
    dir: &Path,
) -> Result<()> {
    for (i, layer) in model.binary_layers.iter().enumerate() {
        let out = dir.join(format!("binary{i}"));
        let w = match layer.binary_weights() {
            Ok(w) => w,
            Err(bllm_nn::NnError::Unsupported(_)) => continue, // ternary: no 1-bit export
            Err(e) => return Err(e.into()),
        };
        let info = bllm_codes::io::ManifestInfo {
            source: None,
            encoder: Some(format!(
                "BinaryLinear weights, layer binary{i}, estimator {}",
                layer.config.weight.name()
            )),
            recipe: Some(format!("{} (seed {})", recipe.name, recipe.seed)),
            tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
        };
        bllm_codes::io::write_codes_dir(&out, &w.codes, info).map_err(|e| {
            TrainError::Checkpoint {
                path: out.clone(),
                message: e.to_string(),
            }
        })?;
        let scales = serde_json::to_vec_pretty(
            &json!({ "scales": w.scales, "rows": "output channels", "bits": "input features" }),
        )
        .unwrap_or_default();
        bllm_codes::io::write_atomic(&out.join("scales.json"), &scales).map_err(|e| {
            TrainError::Checkpoint {
                path: out.clone(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Collects every float parameter with its dotted path (`binary_layers.0.weight`).
struct Named {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Named {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let t = p.val();
        self.out
            .push((self.path.join("."), t.dims().to_vec(), to_vec(t)));
    }
}

/// The model's tensors as safetensors (f32, named by module path), for inspection with any
/// safetensors reader; resume uses the exact Burn records beside it.
pub fn write_safetensors<B: burn::tensor::backend::Backend, M: Module<B>>(
    model: &M,
    path: &Path,
) -> Result<()> {
    let mut named = Named {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut named);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .out
        .into_iter()
        .map(|(n, shape, v)| (n, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Checkpoint {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let data = safetensors::serialize(views, &None).map_err(|e| TrainError::Checkpoint {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, data).map_err(|e| TrainError::io(path, e))
}
