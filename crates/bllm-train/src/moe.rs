//! The `kind = "moe"` trainer: mixture-of-experts layers ([`bllm_nn::Moe`]) with float or binary
//! routers, on a synthetic clustered classification task (`data.task = "clusters"`) or inside
//! the byte-level transformer (`data.task = "lm"`), watched by the load-balance monitors.
//!
//! Every step records, per MoE layer, the load statistics of its routing decisions
//! (`bllm_monitor::load_stats`: normalised entropy, max/mean load, dropped fraction) and feeds a
//! [`bllm_monitor::CollapseTracker`]; entering collapse writes a `collapse` event (with its
//! reasons) and fires the `load_balance` monitor. The `routing_flip` monitor compares the first
//! expert of a fixed probe set between checks. Auxiliary-loss-free biases are updated after
//! each optimizer step.

use std::collections::BTreeMap;

use bllm_codes::rng::SplitMix64;
use bllm_data::TextCorpus;
use bllm_monitor::{CollapseThresholds, CollapseTracker, load_stats, routing_flip_rate};
use bllm_nn::{Balancing, ByteLm, Moe, MoeConfig, MoeTrace, RouterKind, Summarize};
use bllm_recipe::{ClustersSection, MoeData, MoeSection, MoeTask, Recipe};
use bllm_ste::{Ctx, Estimator};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::classify::{RunOptions, write_safetensors};
use crate::lm::{estimator, evaluate, lm_config_from, lm_loss, load_corpus, windows};
use crate::monitor::{LoopState, Verdict, Watch};
use crate::optim::{Opt, clip_and_step, save_checkpoint, start_or_resume, step_ctx};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::{Result, TrainError};

/// Probe tokens of the routing flip-rate monitor.
const PROBE: usize = 256;

/// What a finished MoE run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeSummary {
    /// Recipe name.
    pub name: String,
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// `clusters` or `lm`.
    pub task: String,
    /// Router name.
    pub router: String,
    /// Balancing name.
    pub balancing: String,
    /// `accuracy` (clusters) or `bpb` (lm, held-out bits per byte).
    pub metric_name: String,
    /// The task metric on held-out data.
    pub metric: f64,
    /// Held-out loss (nats).
    pub eval_loss: f64,
    /// Normalised load entropy, mean over logged steps and MoE layers (1 = balanced).
    pub load_entropy: f64,
    /// Max/mean expert load, mean over logged steps and layers (1 = balanced, E = one expert).
    pub max_over_mean: f64,
    /// Dropped slot fraction, mean over logged steps and layers.
    pub dropped_fraction: f64,
    /// Routing flip rate on the probe set, mean over checks.
    pub flip_rate: f64,
    /// Experts starving (under `dead_fraction / E` of the load for `dead_window` steps) at the
    /// end, summed over layers.
    pub dead_experts: usize,
    /// Times a layer entered collapse.
    pub collapse_events: usize,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped.
    pub monitor_events: usize,
    /// Mean of each monitor's logged value over the run.
    pub monitor_means: BTreeMap<String, f64>,
    /// Model storage in bytes.
    pub model_bytes: usize,
    /// float32-equivalent bytes.
    pub model_float32_bytes: usize,
}

/// The clusters-task model: `x → ReLU(E x) → h + MoE(h) → logits`.
#[derive(Module, Debug)]
pub struct MoeClassifier<B: Backend> {
    /// Input embedding `dim → d_model`.
    pub embed: Linear<B>,
    /// The mixture of experts (residual).
    pub moe: Moe<B>,
    /// Classifier head.
    pub head: Linear<B>,
}

impl<B: Backend> MoeClassifier<B> {
    /// Logits `[n, classes]` and the routing trace; `keys` are example ids (hash routing).
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        keys: &[u64],
        ctx: &Ctx,
    ) -> (Tensor<B, 2>, bllm_nn::MoeOutput<B>) {
        let h = burn::tensor::activation::relu(self.embed.forward(x));
        let out = self.moe.forward(h.clone(), Some(keys), ctx);
        let h = h + out.y.clone();
        (self.head.forward(h), out)
    }
}

impl<B: Backend> Summarize for MoeClassifier<B> {
    fn summarize(&self, name: &str, out: &mut Vec<bllm_nn::LayerSummary>) {
        self.embed.summarize(&format!("{name}embed"), out);
        self.moe.summarize(&format!("{name}moe"), out);
        self.head.summarize(&format!("{name}head"), out);
    }
}

/// The task data.
enum TaskData {
    Clusters {
        c: ClustersSection,
        xt: Vec<f32>,
        yt: Vec<i64>,
        xe: Vec<f32>,
        ye: Vec<i64>,
    },
    Text {
        corpus: TextCorpus,
        context: usize,
    },
}

impl TaskData {
    /// Examples (or window starts) of a training batch.
    fn sample(&self, rng: &mut SplitMix64, bs: usize) -> Vec<usize> {
        let n = match self {
            Self::Clusters { c, .. } => c.train_size,
            Self::Text { corpus, context } => corpus.train.len() - context,
        };
        (0..bs)
            .map(|_| (rng.next_u64() % n as u64) as usize)
            .collect()
    }
}

/// Gaussian clusters in groups: group centres `N(0, spread²)`, cluster centres at unit spread
/// around their group's (cluster `c` in group `c mod groups`), points at `noise`.
fn clusters(seed: u64, c: &ClustersSection) -> TaskData {
    let mut rng = SplitMix64::new(seed ^ 0xC1A5);
    let groups: Vec<f64> = (0..c.groups * c.dim)
        .map(|_| c.spread * rng.next_gaussian())
        .collect();
    let centres: Vec<f64> = (0..c.classes)
        .flat_map(|k| {
            let g = k % c.groups;
            (0..c.dim)
                .map(|j| groups[g * c.dim + j] + rng.next_gaussian())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sample = |n: usize| {
        let (mut x, mut y) = (Vec::with_capacity(n * c.dim), Vec::with_capacity(n));
        for _ in 0..n {
            let k = (rng.next_u64() % c.classes as u64) as usize;
            y.push(k as i64);
            x.extend(
                (0..c.dim).map(|j| (centres[k * c.dim + j] + c.noise * rng.next_gaussian()) as f32),
            );
        }
        (x, y)
    };
    let (xt, yt) = sample(c.train_size);
    let (xe, ye) = sample(c.eval_size);
    TaskData::Clusters {
        c: c.clone(),
        xt,
        yt,
        xe,
        ye,
    }
}

/// One MoE layer's routing in a step: (slot assignments, first choices, dropped slots).
type LayerRouting = (Vec<usize>, Vec<usize>, usize);

/// A model with MoE layers that the loop can train.
trait Routed<B: AutodiffBackend>: AutodiffModule<B> + Summarize + Clone {
    /// Task loss, auxiliary loss and each MoE layer's routing on a training batch.
    fn losses(
        &self,
        data: &TaskData,
        batch: &[usize],
        ctx: &Ctx,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Vec<LayerRouting>);
    /// Held-out (loss, metric).
    fn evaluate(&self, data: &TaskData, ctx: &Ctx) -> (f64, f64);
    /// First choices of every MoE layer on the probe set.
    fn probe(&self, data: &TaskData, ctx: &Ctx) -> Vec<Vec<usize>>;
    /// The MoE layers.
    fn moes_mut(&mut self) -> Vec<&mut Moe<B>>;
}

impl<B: AutodiffBackend> Routed<B> for MoeClassifier<B> {
    fn losses(
        &self,
        data: &TaskData,
        batch: &[usize],
        ctx: &Ctx,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Vec<LayerRouting>) {
        let TaskData::Clusters { c, xt, yt, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let dev = Default::default();
        let x: Vec<f32> = batch
            .iter()
            .flat_map(|&i| xt[i * c.dim..(i + 1) * c.dim].iter().copied())
            .collect();
        let y: Vec<i64> = batch.iter().map(|&i| yt[i]).collect();
        let keys: Vec<u64> = batch.iter().map(|&i| i as u64).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [batch.len(), c.dim]), &dev);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [batch.len()]), &dev);
        let (logits, out) = self.forward(x, &keys, ctx);
        let loss = CrossEntropyLossConfig::new().init(&dev).forward(logits, y);
        (
            loss,
            out.aux_loss,
            vec![(out.assignments, out.first_choice, out.dropped)],
        )
    }

    fn evaluate(&self, data: &TaskData, ctx: &Ctx) -> (f64, f64) {
        let TaskData::Clusters { c, xe, ye, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let m = self.valid();
        let dev = Default::default();
        let n = c.eval_size;
        let x =
            Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(xe.clone(), [n, c.dim]), &dev);
        let y =
            Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(ye.clone(), [n]), &dev);
        let keys: Vec<u64> = (0..n).map(|i| (c.train_size + i) as u64).collect();
        let (logits, _) = m.forward(x, &keys, ctx);
        let loss: f32 = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(logits.clone(), y.clone())
            .into_scalar()
            .elem();
        let pred = logits.argmax(1).squeeze_dim::<1>(1);
        let correct: f32 = pred.equal(y).float().sum().into_scalar().elem();
        (f64::from(loss), f64::from(correct) / n as f64)
    }

    fn probe(&self, data: &TaskData, ctx: &Ctx) -> Vec<Vec<usize>> {
        let TaskData::Clusters { c, xe, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let n = PROBE.min(c.eval_size);
        let x = Tensor::<B::InnerBackend, 2>::from_data(
            TensorData::new(xe[..n * c.dim].to_vec(), [n, c.dim]),
            &Default::default(),
        );
        let keys: Vec<u64> = (0..n).map(|i| (c.train_size + i) as u64).collect();
        vec![self.valid().forward(x, &keys, ctx).1.first_choice]
    }

    fn moes_mut(&mut self) -> Vec<&mut Moe<B>> {
        vec![&mut self.moe]
    }
}

impl<B: AutodiffBackend> Routed<B> for ByteLm<B> {
    fn losses(
        &self,
        data: &TaskData,
        batch: &[usize],
        ctx: &Ctx,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Vec<LayerRouting>) {
        let TaskData::Text { corpus, context } = data else {
            unreachable!("the LM trains on text")
        };
        let dev = Default::default();
        let (x, y) = windows::<B>(&corpus.train, batch, *context, &dev);
        let mut trace = MoeTrace {
            aux_loss: Tensor::zeros([1], &dev),
            layers: Vec::new(),
        };
        let logits = self.forward_full(x, ctx, None, Some(&mut trace));
        (lm_loss(logits, y), trace.aux_loss, trace.layers)
    }

    fn evaluate(&self, data: &TaskData, ctx: &Ctx) -> (f64, f64) {
        let TaskData::Text { corpus, context } = data else {
            unreachable!("the LM trains on text")
        };
        let l = evaluate(&self.valid(), &corpus.valid, *context, ctx);
        (l, l / std::f64::consts::LN_2)
    }

    fn probe(&self, data: &TaskData, ctx: &Ctx) -> Vec<Vec<usize>> {
        let TaskData::Text { corpus, context } = data else {
            unreachable!("the LM trains on text")
        };
        let windows_n = (PROBE / context)
            .max(1)
            .min((corpus.valid.len() - 1) / context);
        let starts: Vec<usize> = (0..windows_n).map(|i| i * context).collect();
        let (x, _) =
            windows::<B::InnerBackend>(&corpus.valid, &starts, *context, &Default::default());
        let mut trace = MoeTrace {
            aux_loss: Tensor::zeros([1], &Default::default()),
            layers: Vec::new(),
        };
        let _ = self.valid().forward_full(x, ctx, None, Some(&mut trace));
        trace.layers.into_iter().map(|(_, f, _)| f).collect()
    }

    fn moes_mut(&mut self) -> Vec<&mut Moe<B>> {
        self.blocks
            .iter_mut()
            .filter_map(|b| b.moe.as_mut())
            .collect()
    }
}

/// Load-balance tracking of every MoE layer: statistics over a rolling window of steps,
/// collapse trackers, and whether each layer is in collapse now (an event is recorded when it
/// enters).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadWatch {
    experts: usize,
    capacity_factor: Option<f64>,
    window: usize,
    /// Per layer, the last `window` steps' (assignments, dropped fraction).
    recent: Vec<Vec<(Vec<usize>, f64)>>,
    trackers: Vec<CollapseTracker>,
    collapsed: Vec<bool>,
    /// Times a layer entered collapse.
    pub collapse_events: usize,
}

/// One step's load statistics of one layer, and why it collapsed (empty: healthy).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerLoad {
    /// The statistics.
    pub stats: bllm_monitor::LoadStats,
    /// Collapse reasons when the layer *entered* collapse at this step.
    pub entered: Vec<String>,
    /// Starving experts.
    pub dead: usize,
}

impl LoadWatch {
    /// A watch over `layers` layers of `experts` experts; statistics cover the last `window`
    /// steps.
    pub fn new(
        layers: usize,
        experts: usize,
        capacity_factor: f64,
        window: usize,
        thresholds: CollapseThresholds,
    ) -> Self {
        Self {
            experts,
            capacity_factor: (capacity_factor > 0.0).then_some(capacity_factor),
            window: window.max(1),
            recent: vec![Vec::new(); layers],
            trackers: vec![CollapseTracker::new(experts, thresholds); layers],
            collapsed: vec![false; layers],
            collapse_events: 0,
        }
    }

    /// Records one step's assignments of every layer; the statistics are those of the window
    /// (loads over all its slots, dropped fraction averaged over its steps).
    pub fn update(&mut self, assignments: &[&[usize]]) -> Vec<LayerLoad> {
        let mut out = Vec::new();
        for (l, a) in assignments.iter().enumerate() {
            let step = load_stats(a, self.experts, self.capacity_factor);
            let recent = &mut self.recent[l];
            recent.push((a.to_vec(), step.dropped_fraction));
            if recent.len() > self.window {
                recent.remove(0);
            }
            let all: Vec<usize> = recent.iter().flat_map(|(a, _)| a.iter().copied()).collect();
            let mut stats = load_stats(&all, self.experts, None);
            stats.dropped_fraction =
                recent.iter().map(|(_, d)| d).sum::<f64>() / recent.len() as f64;
            let why = self.trackers[l].update(&stats);
            let entered = if !why.is_empty() && !self.collapsed[l] {
                self.collapse_events += 1;
                why.clone()
            } else {
                Vec::new()
            };
            self.collapsed[l] = !why.is_empty();
            let dead = self.trackers[l].dead_experts().len();
            out.push(LayerLoad {
                stats,
                entered,
                dead,
            });
        }
        out
    }
}

/// State saved in `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    rng_state: u64,
    #[serde(flatten)]
    watch: LoopState,
    load: LoadWatch,
    last_probe: Vec<Vec<usize>>,
}

/// Monitor values averaged into [`MoeSummary::monitor_means`].
const SUMMARISED: [&str; 5] = [
    "load_entropy",
    "max_over_mean",
    "dropped",
    "routing_flip",
    "aux_loss",
];

fn task(recipe: &Recipe) -> Result<&MoeTask> {
    recipe.moe().ok_or_else(|| {
        TrainError::Unsupported(format!(
            "recipe {:?} is kind = {:?}; the MoE trainer runs kind = \"moe\"",
            recipe.name,
            recipe.kind.name()
        ))
    })
}

/// The MoE layer configuration of `[moe]`.
fn moe_config(s: &MoeSection, d_model: usize, estimator: Estimator) -> MoeConfig {
    MoeConfig {
        d_model,
        hidden: s.expert_hidden,
        experts: s.experts,
        top_k: s.top_k,
        capacity_factor: s.capacity_factor,
        router: RouterKind::parse(&s.router).unwrap_or_default(),
        balancing: Balancing::parse(&s.balancing).unwrap_or_default(),
        aux_alpha: s.aux_alpha,
        z_loss: s.z_loss,
        bias_gamma: s.bias_gamma,
        estimator,
        gumbel_tau: (s.gumbel_tau_start, s.gumbel_tau_end),
    }
}

/// Runs (or resumes) a `kind = "moe"` recipe into `opts.run_dir`.
pub fn run_moe(recipe: &Recipe, opts: &mut RunOptions) -> Result<MoeSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_moe_on -> MoeSummary)
}

fn run_moe_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<MoeSummary> {
    let t = task(recipe)?;
    let est = estimator(recipe)?;
    let dev = Default::default();
    match &t.data {
        MoeData::Clusters(c) => {
            let cfg = moe_config(&t.moe, t.d_model, est);
            let s = recipe.seed;
            let linear = |din, dout, i: u64| Linear {
                weight: Param::from_tensor(bllm_nn::kaiming_uniform::<B>(
                    din,
                    dout,
                    s.wrapping_mul(1000).wrapping_add(i),
                    &dev,
                )),
                bias: Some(Param::from_tensor(Tensor::zeros([dout], &dev))),
            };
            let model = MoeClassifier {
                embed: linear(c.dim, t.d_model, 1),
                moe: cfg.init(&dev, s.wrapping_add(7))?,
                head: linear(t.d_model, c.classes, 2),
            };
            let model = bllm_nn::with_deterministic_ids(model, 0);
            train(recipe, t, model, clusters(recipe.seed, c), 1, opts)
        }
        MoeData::Text(d) => {
            let Some(m) = &t.lm_model else {
                return Err(TrainError::Unsupported(
                    "data.task = \"lm\" needs the [model] of kind = \"lm\"".into(),
                ));
            };
            let mut cfg = lm_config_from(m, est.clone())?;
            cfg.moe = Some(moe_config(&t.moe, m.d_model, est));
            let corpus = load_corpus(d, m.context)?;
            let model: ByteLm<B> = cfg.init(&dev, recipe.seed)?;
            let data = TaskData::Text {
                corpus,
                context: m.context,
            };
            train(recipe, t, model, data, m.layers, opts)
        }
    }
}

/// The training loop shared by both tasks.
fn train<B: AutodiffBackend, M: Routed<B>>(
    recipe: &Recipe,
    t: &MoeTask,
    mut model: M,
    data: TaskData,
    layers: usize,
    opts: &mut RunOptions,
) -> Result<MoeSummary> {
    let run = RunDir::open(&opts.run_dir, recipe, opts.resume)?;
    let cs = &t.moe.collapse;
    let thresholds = CollapseThresholds {
        min_entropy: cs.min_entropy,
        max_over_mean: cs.max_over_mean,
        dead_fraction: cs.dead_fraction,
        dead_window: cs.dead_window,
        max_dropped: cs.max_dropped,
    };
    let mut opt = Opt::new(recipe, &model);
    let total = recipe.train.steps;
    let eval_ctx = |step: usize| {
        Ctx::at(step as f64 / total as f64)
            .with_seed(recipe.seed ^ 0xE7A1)
            .for_eval()
    };
    let mut state = TrainerState {
        step: 0,
        rng_state: recipe.seed ^ 0x3E,
        watch: LoopState::new(recipe),
        load: LoadWatch::new(
            layers,
            t.moe.experts,
            t.moe.capacity_factor,
            cs.window,
            thresholds,
        ),
        last_probe: model.probe(&data, &eval_ctx(0)),
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
    let save = |name: &str, model: &M, opt: &Opt<B, M>, state: &TrainerState| {
        save_checkpoint(&run, name, model, opt, state, |dir| {
            write_safetensors(model, &dir.join("model.safetensors"))
        })
    };
    let checkpoint = |model: &M, opt: &Opt<B, M>, state: &TrainerState, note| -> Result<()> {
        let p = save(&format!("checkpoint-{}", state.step), model, opt, state)?;
        run.checkpointed(state.step, &p, note, recipe.checkpoint.keep_last)
    };
    let stop_at = opts.max_steps.map_or(total, |m| m.min(total));
    let bs = recipe.train.batch_size;
    while state.step < stop_at {
        let step = state.step;
        let ctx = step_ctx(recipe, step, total);
        let mut rng = SplitMix64::new(state.rng_state);
        let batch = data.sample(&mut rng, bs);
        state.rng_state = rng.state();
        let (task_loss, aux, routing) = model.losses(&data, &batch, &ctx);
        let task_v: f32 = task_loss.clone().into_scalar().elem();
        let aux_v: f32 = aux.clone().into_scalar().elem();
        let loss = task_loss + aux;
        let loss_v = f64::from(task_v) + f64::from(aux_v);
        let grads = loss.backward();
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
            for (m, (a, _, _)) in model.moes_mut().into_iter().zip(&routing) {
                m.update_bias(a);
            }
        }
        state.step += 1;
        if let Some(p) = opts.progress.as_mut() {
            p(state.step, total, loss_v);
        }
        state
            .watch
            .push_loss(f64::from(task_v), recipe.train.log_every);

        // Load balance: every step (the starvation window counts steps).
        let assigned: Vec<&[usize]> = routing.iter().map(|(a, _, _)| a.as_slice()).collect();
        let loads = state.load.update(&assigned);
        let mut after: Vec<(&str, f64, bool)> = Vec::new();
        for (l, ld) in loads.iter().enumerate() {
            if !ld.entered.is_empty() {
                run.append(
                    "events.jsonl",
                    &json!({"step": state.step, "event": "collapse", "layer": l, "reasons": ld.entered}),
                )?;
                after.push(("load_balance", 1.0, true));
            }
        }
        let done = state.step;
        let logged = done % recipe.train.log_every == 0;
        let mut metrics = json!({"step": done, "split": "train", "loss": f64::from(task_v), "aux_loss": f64::from(aux_v), "lr": lr, "grad_norm": grad_norm, "loss_z": lz, "grad_norm_z": gz});
        if logged {
            let n = loads.len().max(1) as f64;
            for (l, ld) in loads.iter().enumerate() {
                metrics[format!("load_entropy/l{l}")] = json!(ld.stats.normalized_entropy);
                metrics[format!("max_over_mean/l{l}")] = json!(ld.stats.max_over_mean);
                metrics[format!("dropped/l{l}")] = json!(ld.stats.dropped_fraction);
                metrics[format!("loads/l{l}")] = json!(ld.stats.fractions);
            }
            let mean = |f: fn(&LayerLoad) -> f64| loads.iter().map(f).sum::<f64>() / n;
            metrics["load_entropy"] = json!(mean(|l| l.stats.normalized_entropy));
            metrics["max_over_mean"] = json!(mean(|l| l.stats.max_over_mean));
            metrics["dropped"] = json!(mean(|l| l.stats.dropped_fraction));
            metrics["dead_experts"] = json!(loads.iter().map(|l| l.dead).sum::<usize>());
        }
        if watch.due_after("routing_flip", done) {
            let now = model.probe(&data, &eval_ctx(done));
            let rates: Vec<f64> = now
                .iter()
                .zip(&state.last_probe)
                .map(|(a, b)| routing_flip_rate(b, a))
                .collect();
            let v = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
            metrics["routing_flip"] = json!(v);
            after.push(("routing_flip", v, true));
            state.last_probe = now;
        }
        if let Some(stop) = watch.after_update(&mut state.watch, done, &after)? {
            save(&format!("checkpoint-{done}"), &model, &opt, &state)?;
            return Err(stop.into_error(&run, done)?);
        }
        if let Some(m) = metrics.as_object() {
            if logged || m.contains_key("routing_flip") {
                state.watch.accumulate(m, &SUMMARISED);
                run.append("metrics.jsonl", &metrics)?;
            }
        }
        if recipe.eval.every > 0 && done % recipe.eval.every == 0 && done < total {
            let (l, metric) = model.evaluate(&data, &eval_ctx(done));
            let name = metric_name(&data);
            run.append(
                "metrics.jsonl",
                &json!({"step": done, "split": "eval", "loss": l, name: metric}),
            )?;
            if opts.verbose {
                eprintln!(
                    "step {done}/{total}: train loss {task_v:.4}, held-out {name} {metric:.4}"
                );
            }
        }
        if recipe.checkpoint.every > 0 && done % recipe.checkpoint.every == 0 && done < total {
            checkpoint(&model, &opt, &state, "")?;
        }
    }
    let complete = state.step >= total;
    if !complete {
        checkpoint(&model, &opt, &state, " (stopped early by max_steps)")?;
    }
    let (eval_loss, metric) = model.evaluate(&data, &eval_ctx(state.step));
    let sum = bllm_nn::summary(&model);
    let means = state.watch.means();
    let get = |k: &str| means.get(k).copied().unwrap_or(f64::NAN);
    let summary = MoeSummary {
        name: recipe.name.clone(),
        steps: state.step,
        complete,
        task: match data {
            TaskData::Clusters { .. } => "clusters".into(),
            TaskData::Text { .. } => "lm".into(),
        },
        router: t.moe.router.clone(),
        balancing: t.moe.balancing.clone(),
        metric_name: metric_name(&data).into(),
        metric,
        eval_loss,
        load_entropy: get("load_entropy"),
        max_over_mean: get("max_over_mean"),
        dropped_fraction: get("dropped"),
        flip_rate: get("routing_flip"),
        dead_experts: state
            .load
            .trackers
            .iter()
            .map(|t| t.dead_experts().len())
            .sum(),
        collapse_events: state.load.collapse_events,
        skipped_steps: state.watch.skipped_steps,
        monitor_events: state.watch.monitor_events,
        monitor_means: means,
        model_bytes: sum.total_bytes(),
        model_float32_bytes: sum.float32_equivalent_bytes(),
    };
    if complete {
        run.append(
            "metrics.jsonl",
            &json!({"step": state.step, "split": "eval", "loss": eval_loss, metric_name(&data): metric}),
        )?;
        save("final", &model, &opt, &state)?;
        run.write_file("summary.txt", sum.to_string().as_bytes())?;
        run.write_json("summary.json", &summary)?;
    }
    Ok(summary)
}

fn metric_name(data: &TaskData) -> &'static str {
    match data {
        TaskData::Clusters { .. } => "accuracy",
        TaskData::Text { .. } => "bpb",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collapsed_router_raises_one_collapse_event_and_hash_routing_none() {
        let mut w = LoadWatch::new(2, 8, 1.25, 1, CollapseThresholds::default());
        // Layer 0: everything on expert 3 (forced collapse); layer 1: hashed keys.
        let collapsed = vec![3usize; 512];
        let hashed: Vec<usize> = (0..512u64)
            .map(|k| (SplitMix64::new(k).next_u64() % 8) as usize)
            .collect();
        let first = w.update(&[&collapsed, &hashed]);
        assert!(!first[0].entered.is_empty(), "collapse not reported");
        assert!(first[0].entered.iter().any(|r| r.contains("entropy")));
        assert!(first[0].stats.dropped_fraction > 0.8);
        assert!(
            first[1].entered.is_empty(),
            "hash routing reported as collapsed: {:?}",
            first[1]
        );
        // Staying collapsed is one event, not one per step.
        for _ in 0..10 {
            w.update(&[&collapsed, &hashed]);
        }
        assert_eq!(w.collapse_events, 1);
    }

    #[test]
    fn the_window_smooths_mini_batch_noise_of_a_random_router() {
        // 128 hashed tokens per step over 8 experts with capacity 1.25: single batches often
        // drop > 5 % or exceed the max/mean threshold by chance; 20-step windows do not.
        let thresholds = CollapseThresholds::default();
        let mut single = LoadWatch::new(1, 8, 1.25, 1, thresholds.clone());
        let mut windowed = LoadWatch::new(1, 8, 1.25, 20, thresholds);
        for step in 0..200u64 {
            let a: Vec<usize> = (0..128u64)
                .map(|k| (SplitMix64::new(step * 1000 + k).next_u64() % 8) as usize)
                .collect();
            single.update(&[&a]);
            windowed.update(&[&a]);
        }
        assert!(
            single.collapse_events > 0,
            "expected spurious single-batch events"
        );
        assert_eq!(windowed.collapse_events, 0);
    }

    #[test]
    fn starving_experts_count_after_the_window() {
        let t = CollapseThresholds {
            dead_window: 3,
            ..CollapseThresholds::default()
        };
        let mut w = LoadWatch::new(1, 4, 0.0, 1, t);
        // Expert 3 never used; the other three share evenly (no other collapse reason…
        // max/mean = 4/3 < 2, entropy = ln 3 / ln 4 ≈ 0.79 > 0.5).
        let a: Vec<usize> = (0..300).map(|i| i % 3).collect();
        assert_eq!(w.update(&[&a])[0].dead, 0);
        w.update(&[&a]);
        let last = w.update(&[&a]);
        assert_eq!(last[0].dead, 1);
        assert!(
            last[0].entered.iter().any(|r| r.contains("experts [3]")),
            "{last:?}"
        );
    }
}
