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
use std::path::Path;
use std::sync::Arc;

use bllm_data::TextCorpus;
use bllm_monitor::{CollapseThresholds, CollapseTracker, load_stats, routing_flip_rate};
use bllm_nn::{Balancing, ByteLm, Moe, MoeConfig, MoeTrace, RouterKind, Summarize};
use bllm_recipe::{ClustersSection, MoeData, MoeSection, MoeTask, Recipe};
use bllm_ste::{Ctx, Estimator};
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{Clusters, TextWindows, normal, sample};
use crate::kinds::lm::{evaluate, lm_config_from, lm_loss, load_corpus, windows};
use crate::rundir::RunDir;
use crate::trainer::{
    After, Kind, Loss, Metrics, Monitor, Outcome, Readings, estimator, restore_state, train,
    wrong_kind,
};
use crate::{Result, RunOptions, TrainError};

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
        train: Clusters,
        eval: Clusters,
    },
    Text {
        corpus: TextCorpus,
        windows: TextWindows,
        context: usize,
    },
}

impl TaskData {
    /// Examples (or window starts) of a training batch.
    fn sample(&self, rng: &mut ChaCha8Rng, bs: usize) -> Vec<usize> {
        let n = match self {
            Self::Clusters { train, .. } => train.len(),
            Self::Text { windows, .. } => windows.len(),
        };
        sample(rng, n, bs)
    }
}

/// Gaussian clusters in groups (from the [`crate::rng::DATA`] stream): group centres
/// `N(0, spread²)`, cluster centres at unit spread around their group's (cluster `c` in group
/// `c mod groups`), points at `noise`.
fn clusters(seed: u64, c: &ClustersSection) -> TaskData {
    let mut rng = crate::rng::stream(seed, crate::rng::DATA, 0);
    let groups: Vec<f64> = (0..c.groups * c.dim)
        .map(|_| c.spread * normal(&mut rng))
        .collect();
    let centres: Vec<f64> = (0..c.classes)
        .flat_map(|k| {
            let g = k % c.groups;
            (0..c.dim)
                .map(|j| groups[g * c.dim + j] + normal(&mut rng))
                .collect::<Vec<_>>()
        })
        .collect();
    let train = Clusters::draw(&mut rng, &centres, c.dim, c.noise, c.train_size);
    let eval = Clusters::draw(&mut rng, &centres, c.dim, c.noise, c.eval_size);
    TaskData::Clusters {
        c: c.clone(),
        train,
        eval,
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
        let TaskData::Clusters { train, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let (x, y) = train.batch::<B>(batch, &Default::default());
        let keys: Vec<u64> = batch.iter().map(|&i| i as u64).collect();

        let (logits, out) = self.forward(x, &keys, ctx);
        let loss = bllm_ste::softmax::cross_entropy(logits, y);
        (
            loss,
            out.aux_loss,
            vec![(out.assignments, out.first_choice, out.dropped)],
        )
    }

    fn evaluate(&self, data: &TaskData, ctx: &Ctx) -> (f64, f64) {
        let TaskData::Clusters { c, eval, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let m = self.valid();
        let n = eval.len();
        let idx: Vec<usize> = (0..n).collect();
        let (x, y) = eval.batch::<B::InnerBackend>(&idx, &Default::default());

        let keys: Vec<u64> = (0..n).map(|i| (c.train_size + i) as u64).collect();
        let (logits, _) = m.forward(x, &keys, ctx);
        let loss: f32 = bllm_ste::softmax::cross_entropy(logits.clone(), y.clone())
            .into_scalar()
            .elem();
        let pred = logits.argmax(1).squeeze_dim::<1>(1);
        let correct: f32 = pred.equal(y).float().sum().into_scalar().elem();
        (f64::from(loss), f64::from(correct) / n as f64)
    }

    fn probe(&self, data: &TaskData, ctx: &Ctx) -> Vec<Vec<usize>> {
        let TaskData::Clusters { c, eval, .. } = data else {
            unreachable!("the classifier trains on clusters")
        };
        let n = PROBE.min(eval.len());
        let idx: Vec<usize> = (0..n).collect();
        let (x, _) = eval.batch::<B::InnerBackend>(&idx, &Default::default());
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
        let TaskData::Text { windows, .. } = data else {
            unreachable!("the LM trains on text")
        };
        let dev = Default::default();
        let (x, y) = windows.batch::<B>(batch, &dev);
        let mut trace = MoeTrace {
            aux_loss: Tensor::zeros([1], &dev),
            layers: Vec::new(),
        };
        let logits = self.forward_full(x, ctx, None, Some(&mut trace));
        (lm_loss(logits, y), trace.aux_loss, trace.layers)
    }

    fn evaluate(&self, data: &TaskData, ctx: &Ctx) -> (f64, f64) {
        let TaskData::Text {
            corpus, context, ..
        } = data
        else {
            unreachable!("the LM trains on text")
        };
        let l = evaluate(&self.valid(), &corpus.valid, *context, ctx);
        (l, l / std::f64::consts::LN_2)
    }

    fn probe(&self, data: &TaskData, ctx: &Ctx) -> Vec<Vec<usize>> {
        let TaskData::Text {
            corpus, context, ..
        } = data
        else {
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
    /// Each step's dropped fraction is the one the capacity limit gives over the step's slots.
    pub fn update(&mut self, assignments: &[&[usize]]) -> Vec<LayerLoad> {
        let layers: Vec<(&[usize], Option<usize>)> =
            assignments.iter().map(|a| (*a, None)).collect();
        self.update_counted(&layers)
    }

    /// [`LoadWatch::update`] with each layer's dropped slots as its forward counted them (`None`:
    /// computed from the slots): a step run in parts (micro-batches, data-parallel ranks)
    /// applies the capacity to each part's tokens, which the joined slot list cannot tell.
    pub fn update_counted(&mut self, layers: &[(&[usize], Option<usize>)]) -> Vec<LayerLoad> {
        let mut out = Vec::new();
        for (l, &(a, dropped)) in layers.iter().enumerate() {
            let dropped_fraction = match dropped {
                Some(d) => d as f64 / a.len().max(1) as f64,
                None => load_stats(a, self.experts, self.capacity_factor).dropped_fraction,
            };
            let recent = &mut self.recent[l];
            recent.push((a.to_vec(), dropped_fraction));
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

fn task(recipe: &Recipe) -> Result<&MoeTask> {
    recipe.moe().ok_or_else(|| wrong_kind(recipe, "moe"))
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

/// A step's routing as exact whole numbers: per layer its slot assignments, its first choices
/// and its dropped count ([`Kind::stats_values`]).
fn routing_values(routing: &[LayerRouting]) -> Vec<f32> {
    let mut v = Vec::new();
    for (a, f, d) in routing {
        v.extend(a.iter().map(|&x| x as f32));
        v.extend(f.iter().map(|&x| x as f32));
        v.push(*d as f32);
    }
    v
}

/// The routing of every part of a step from their [`routing_values`] (laid out as `first`'s):
/// assignments and first choices concatenated in part order, dropped slots summed.
fn join_routing(first: &[LayerRouting], parts: &[&[f32]]) -> Result<Vec<LayerRouting>> {
    let mut out: Vec<LayerRouting> = first
        .iter()
        .map(|(a, f, _)| {
            (
                Vec::with_capacity(a.len() * parts.len()),
                Vec::with_capacity(f.len() * parts.len()),
                0,
            )
        })
        .collect();
    let need: usize = first.iter().map(|(a, f, _)| a.len() + f.len() + 1).sum();
    for (p, values) in parts.iter().enumerate() {
        if values.len() != need {
            return Err(TrainError::Unsupported(format!(
                "kind = \"moe\": part {p}'s routing has {} values where its {} layers need \
                 {need}",
                values.len(),
                first.len()
            )));
        }
        let mut rest = *values;
        for ((a, f, _), (ma, mf, md)) in first.iter().zip(out.iter_mut()) {
            let (ca, r) = rest.split_at(a.len());
            let (cf, r) = r.split_at(f.len());
            let (cd, r) = r.split_at(1);
            ma.extend(ca.iter().map(|&x| x as usize));
            mf.extend(cf.iter().map(|&x| x as usize));
            *md += cd[0] as usize;
            rest = r;
        }
    }
    Ok(out)
}

/// `kind = "moe"` over model `M` (the clusters classifier or a byte LM with MoE blocks).
struct MoeRun<'r, M> {
    recipe: &'r Recipe,
    task: &'r MoeTask,
    data: TaskData,
    layers: usize,
    build: Box<dyn Fn() -> Result<M> + 'r>,
}

impl<M> MoeRun<'_, M> {
    fn eval_ctx(&self, step: usize, total: usize) -> Ctx {
        Ctx::at(step as f64 / total as f64)
            .with_seed(self.recipe.seed ^ 0xE7A1)
            .for_eval()
    }
}

impl<B: AutodiffBackend, M: Routed<B>> Kind<B> for MoeRun<'_, M> {
    type Model = M;
    type Batch = Vec<usize>;
    type Stats = Vec<LayerRouting>;
    type Summary = MoeSummary;

    fn name(&self) -> &'static str {
        "moe"
    }

    fn model(&self, _device: &B::Device) -> Result<M> {
        (self.build)()
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> Result<Vec<usize>> {
        Ok(self.data.sample(order, self.recipe.train.batch_size))
    }

    /// Rows `index·n/parts ..` of the step's examples (window starts). Each part routes its
    /// own tokens, so the capacity limit applies per part (per rank), as in data-parallel MoE
    /// training elsewhere; [`Kind::merge_stats`] joins the parts' routing.
    fn shard(&self, batch: &Vec<usize>, index: usize, parts: usize) -> Result<Vec<usize>> {
        crate::trainer::items(batch, index, parts)
    }

    /// Per MoE layer: the slot assignments, the first choices and the dropped count.
    fn stats_values(&self, routing: &Self::Stats) -> Vec<f32> {
        routing_values(routing)
    }

    /// The parts' routing joined in part order ([`join_routing`]): the step's whole batch, for
    /// the bias updates and load monitors.
    fn merge_stats(&self, first: Self::Stats, parts: &[&[f32]]) -> Result<Self::Stats> {
        join_routing(&first, parts)
    }

    fn loss(&self, model: &M, batch: &Vec<usize>, ctx: &Ctx) -> Result<Loss<B, Self::Stats>> {
        let (task, aux, routing) = model.losses(&self.data, batch, ctx);
        Ok(Loss {
            total: task.clone() + aux.clone(),
            reported: Some(task),
            parts: vec![("aux_loss", aux)],
            stats: routing,
        })
    }

    fn after_update(&self, model: &mut M, routing: &Self::Stats) {
        for (m, (a, _, _)) in model.moes_mut().into_iter().zip(routing) {
            m.update_bias(a);
        }
    }

    fn monitors(&self, model: &M) -> Result<Vec<Box<dyn Monitor<B, Self>>>> {
        let cs = &self.task.moe.collapse;
        let thresholds = CollapseThresholds {
            min_entropy: cs.min_entropy,
            max_over_mean: cs.max_over_mean,
            dead_fraction: cs.dead_fraction,
            dead_window: cs.dead_window,
            max_dropped: cs.max_dropped,
        };
        let load = LoadWatch::new(
            self.layers,
            self.task.moe.experts,
            self.task.moe.capacity_factor,
            cs.window,
            thresholds,
        );
        let first = model.probe(&self.data, &self.eval_ctx(0, self.recipe.train.steps));
        Ok(vec![
            Box::new(LoadMonitor { watch: load }),
            Box::new(RoutingFlip { last: first }),
        ])
    }

    fn evaluate(&self, model: &M, step: usize, total: usize) -> Result<Metrics> {
        let (l, metric) = model.evaluate(&self.data, &self.eval_ctx(step, total));
        Ok(Metrics::from([
            ("loss".to_owned(), l),
            (metric_name(&self.data).to_owned(), metric),
        ]))
    }

    fn finish(
        &self,
        model: &M,
        run: &RunDir,
        o: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<MoeSummary> {
        let sum = bllm_nn::summary(model);
        if final_dir.is_some() {
            run.write_file("summary.txt", sum.to_string().as_bytes())?;
        }
        let means = &o.monitor_means;
        let get = |k: &str| means.get(k).copied().unwrap_or(f64::NAN);
        let total = |k: &str| o.monitor_totals.get(k).copied().unwrap_or(0.0) as usize;
        let name = metric_name(&self.data);
        Ok(MoeSummary {
            name: self.recipe.name.clone(),
            steps: o.steps,
            complete: o.complete,
            task: match self.data {
                TaskData::Clusters { .. } => "clusters".into(),
                TaskData::Text { .. } => "lm".into(),
            },
            router: self.task.moe.router.clone(),
            balancing: self.task.moe.balancing.clone(),
            metric_name: name.into(),
            metric: o.eval.get(name).copied().unwrap_or(f64::NAN),
            eval_loss: o.eval.get("loss").copied().unwrap_or(f64::NAN),
            load_entropy: get("load_entropy"),
            max_over_mean: get("max_over_mean"),
            dropped_fraction: get("dropped"),
            flip_rate: get("routing_flip"),
            dead_experts: total("dead_experts"),
            collapse_events: total("collapse_events"),
            skipped_steps: o.skipped_steps,
            monitor_events: o.monitor_events,
            monitor_means: means.clone(),
            model_bytes: sum.total_bytes(),
            model_float32_bytes: sum.float32_equivalent_bytes(),
        })
    }
}

/// Load balance of every MoE layer, every step (the starvation window counts steps):
/// [`LoadWatch`] statistics on the periodic log lines, a `collapse` event (with its reasons)
/// and a `load_balance` check when a layer enters collapse.
struct LoadMonitor {
    watch: LoadWatch,
}

impl<B: AutodiffBackend, M: Routed<B>> Monitor<B, MoeRun<'_, M>> for LoadMonitor {
    fn name(&self) -> &'static str {
        "load"
    }

    fn after_update(&mut self, cx: &After<'_, B, MoeRun<'_, M>>, out: &mut Readings) -> Result<()> {
        let routed: Vec<(&[usize], Option<usize>)> = cx
            .stats
            .iter()
            .map(|(a, _, d)| (a.as_slice(), Some(*d)))
            .collect();
        let loads = self.watch.update_counted(&routed);
        for (l, ld) in loads.iter().enumerate() {
            if !ld.entered.is_empty() {
                out.events.push(
                    json!({"step": cx.done, "event": "collapse", "layer": l, "reasons": ld.entered}),
                );
                tracing::warn!(step = cx.done, layer = l, reasons = ?ld.entered, "MoE layer collapsed");
                out.checks.push(("load_balance", 1.0, true));
            }
        }
        if cx.logged {
            let n = loads.len().max(1) as f64;
            for (l, ld) in loads.iter().enumerate() {
                out.metric(format!("load_entropy/l{l}"), ld.stats.normalized_entropy);
                out.metric(format!("max_over_mean/l{l}"), ld.stats.max_over_mean);
                out.metric(format!("dropped/l{l}"), ld.stats.dropped_fraction);
                out.metric(format!("loads/l{l}"), &ld.stats.fractions);
            }
            let mean = |f: fn(&LayerLoad) -> f64| loads.iter().map(f).sum::<f64>() / n;
            out.metric("load_entropy", mean(|l| l.stats.normalized_entropy));
            out.metric("max_over_mean", mean(|l| l.stats.max_over_mean));
            out.metric("dropped", mean(|l| l.stats.dropped_fraction));
            out.metric("dead_experts", loads.iter().map(|l| l.dead).sum::<usize>());
        }
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.watch).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        self.watch = restore_state("load", state)?;
        Ok(())
    }

    fn totals(&self) -> Metrics {
        let dead: usize = self
            .watch
            .trackers
            .iter()
            .map(|t| t.dead_experts().len())
            .sum();
        Metrics::from([
            ("dead_experts".to_owned(), dead as f64),
            (
                "collapse_events".to_owned(),
                self.watch.collapse_events as f64,
            ),
        ])
    }
}

/// `routing_flip`: the fraction of probe tokens whose first expert changed since the last
/// check, mean over layers.
struct RoutingFlip {
    last: Vec<Vec<usize>>,
}

impl<B: AutodiffBackend, M: Routed<B>> Monitor<B, MoeRun<'_, M>> for RoutingFlip {
    fn name(&self) -> &'static str {
        "routing_flip"
    }

    fn after_update(&mut self, cx: &After<'_, B, MoeRun<'_, M>>, out: &mut Readings) -> Result<()> {
        if !cx.due("routing_flip") {
            return Ok(());
        }
        let now = cx
            .model
            .probe(&cx.kind.data, &cx.kind.eval_ctx(cx.done, cx.total));
        let rates: Vec<f64> = now
            .iter()
            .zip(&self.last)
            .map(|(a, b)| routing_flip_rate(b, a))
            .collect();
        out.check(
            "routing_flip",
            rates.iter().sum::<f64>() / rates.len().max(1) as f64,
            true,
        );
        self.last = now;
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.last).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        self.last = restore_state("routing_flip", state)?;
        Ok(())
    }
}

/// Runs (or resumes) a `kind = "moe"` recipe into `opts.run_dir`.
pub fn run_moe(recipe: &Recipe, opts: &mut RunOptions) -> Result<MoeSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_moe_on -> MoeSummary)
}

fn run_moe_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<MoeSummary> {
    let t = task(recipe)?;
    let est = estimator(recipe)?;
    match &t.data {
        MoeData::Clusters(c) => {
            opts.refuse_existing(recipe)?;
            let cfg = moe_config(&t.moe, t.d_model, est);
            let s = recipe.seed;
            let build = move || -> Result<MoeClassifier<B>> {
                let dev = Default::default();
                let linear = |din, dout, i: u64| Linear {
                    weight: Param::from_tensor(bllm_nn::kaiming_uniform::<B>(
                        din,
                        dout,
                        s.wrapping_mul(1000).wrapping_add(i),
                        &dev,
                    )),
                    bias: Some(Param::from_tensor(Tensor::zeros([dout], &dev))),
                };
                // Parameter ids are fixed by the loop (`train`).
                Ok(MoeClassifier {
                    embed: linear(c.dim, t.d_model, 1),
                    moe: cfg.init(&dev, s.wrapping_add(7))?,
                    head: linear(t.d_model, c.classes, 2),
                })
            };
            let kind = MoeRun {
                recipe,
                task: t,
                data: clusters(recipe.seed, c),
                layers: 1,
                build: Box::new(build),
            };
            train::<B, _>(recipe, opts, kind)
        }
        MoeData::Text(d) => {
            let Some(m) = &t.lm_model else {
                return Err(TrainError::Unsupported(
                    "data.task = \"lm\" needs the [model] of kind = \"lm\"".into(),
                ));
            };
            let mut cfg = lm_config_from(m, est.clone())?;
            cfg.moe = Some(moe_config(&t.moe, m.d_model, est));
            opts.refuse_existing(recipe)?;
            let corpus = load_corpus(d, m.context)?;
            let data = TaskData::Text {
                windows: TextWindows {
                    bytes: Arc::new(corpus.train.clone()),
                    context: m.context,
                },
                corpus,
                context: m.context,
            };
            let seed = recipe.seed;
            let kind = MoeRun {
                recipe,
                task: t,
                data,
                layers: m.layers,
                build: Box::new(move || -> Result<ByteLm<B>> {
                    Ok(cfg.init(&Default::default(), seed)?)
                }),
            };
            train::<B, _>(recipe, opts, kind)
        }
    }
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
    use bllm_codes::rng::SplitMix64;

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
    fn the_routing_of_every_part_joins_in_part_order() {
        // Two layers (top-2 over 3 tokens, top-1 over 3 tokens), two parts.
        let p0: Vec<LayerRouting> = vec![
            (vec![0, 1, 2, 3, 1, 0], vec![0, 2, 1], 1),
            (vec![4, 4, 5], vec![4, 4, 5], 0),
        ];
        let p1: Vec<LayerRouting> = vec![
            (vec![3, 3, 2, 1, 0, 7], vec![3, 2, 0], 2),
            (vec![6, 7, 6], vec![6, 7, 6], 3),
        ];
        let (v0, v1) = (routing_values(&p0), routing_values(&p1));
        assert_eq!(v0.len(), 6 + 3 + 1 + 3 + 3 + 1);
        let joined = join_routing(&p0, &[&v0, &v1]).unwrap();
        assert_eq!(joined[0].0, vec![0, 1, 2, 3, 1, 0, 3, 3, 2, 1, 0, 7]);
        assert_eq!(joined[0].1, vec![0, 2, 1, 3, 2, 0]);
        assert_eq!(joined[0].2, 3);
        assert_eq!(
            joined[1],
            (vec![4, 4, 5, 6, 7, 6], vec![4, 4, 5, 6, 7, 6], 3)
        );
        // One part is the part itself.
        assert_eq!(join_routing(&p0, &[&v0]).unwrap(), p0);
        // A part of another length is an error naming the counts.
        let e = join_routing(&p0, &[&v0, &v1[1..]]).unwrap_err().to_string();
        assert!(
            e.contains("part 1") && e.contains("16 values") && e.contains("need 17"),
            "{e}"
        );
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
