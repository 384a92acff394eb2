//! The one training loop. A [`Kind`] says what is trained (model, batches, loss, quantised
//! sites, evaluation, export, summary); [`train`] does everything that is the same for every
//! kind:
//!
//! ```text
//! open the run directory (refusal rules) → build the model and optimizer → start or resume
//! for each step:
//!   batch  = kind.batch(order stream)                 (stream position saved in trainer.json)
//!   loss   = kind.loss(model, batch, ctx)             (+ the kind's statistics)
//!   grads  = backward(loss)
//!   monitors.before_update(…)                         shadow cosine, finite differences, …
//!   verdict = non_finite → loss_spike → grad_spike    (log / warn / skip_step / stop)
//!   clip to train.grad_clip, optimizer step at lr(step)   (unless skipped)
//!   kind.after_update(model, stats)                   (e.g. MoE bias updates)
//!   monitors.after_update(…)                          flips, pass-through, quant error, loads…
//!   metrics.jsonl line; periodic evaluation; periodic checkpoint (pruned to keep_last)
//! final evaluation → final/ (+ kind.export) → kind.finish → summary.json
//! ```
//!
//! Monitors ([`Monitor`]) compose: the generic ones ([`crate::sites`]) read the sites a kind
//! lists and work for every kind; a kind adds its own (MoE load balance, retrieval bit
//! balance, LM attention) through [`Kind::monitors`]. Monitors return readings; the recipe's
//! action decides what happens ([`crate::monitor::Watch`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bllm_recipe::Recipe;
use bllm_ste::{Ctx, Shadow};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Result;
use crate::monitor::{LoopState, Verdict, Watch};
use crate::optim::{Opt, clip_and_step, save_checkpoint, start_or_resume, step_ctx};
use crate::rng::{ORDER, StreamState};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::sites::Site;

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
    /// Report periodic evaluations at `info` level (otherwise `debug`).
    pub verbose: bool,
    /// Progress callback (a progress bar), if any.
    pub progress: Option<ProgressFn>,
    /// This process's place in a data-parallel run (`None`: one process). Every rank runs the
    /// same recipe; rank 0 writes `run_dir` and runs the monitors, the others write nothing
    /// there (they resume from it read-only).
    pub dist: Option<crate::DistConfig>,
}

impl RunOptions {
    /// [`RunDir::refuse_existing`] for this run, before any work; a data-parallel rank other
    /// than 0 does not look at the run directory (rank 0 is creating it, and the directory may
    /// be on another machine).
    pub fn refuse_existing(&self, recipe: &Recipe) -> Result<()> {
        if self.dist.as_ref().is_some_and(|d| !d.leader()) {
            return Ok(());
        }
        RunDir::refuse_existing(&self.run_dir, recipe, self.resume)
    }
}

/// Named scalar metrics (a `metrics.jsonl` line's values, an evaluation's results).
pub type Metrics = BTreeMap<String, f64>;

/// A model the trainer's inner (no-autodiff) backend runs.
pub type Inner<B, K> = <<K as Kind<B>>::Model as AutodiffModule<B>>::InnerModule;

/// What a kind's loss returns for one batch.
pub struct Loss<B: AutodiffBackend, S> {
    /// The scalar the backward pass starts from (and the spike monitors watch).
    pub total: Tensor<B, 1>,
    /// The value logged as `loss` when it is not `total` (MoE logs the task loss and its
    /// auxiliary loss apart).
    pub reported: Option<Tensor<B, 1>>,
    /// Other scalars to log on the step's line (`aux_loss`).
    pub parts: Vec<(&'static str, Tensor<B, 1>)>,
    /// Statistics of this step the kind's monitors and [`Kind::after_update`] read.
    pub stats: S,
}

impl<B: AutodiffBackend, S: Default> Loss<B, S> {
    /// A loss with nothing else to report.
    pub fn new(total: Tensor<B, 1>) -> Self {
        Self {
            total,
            reported: None,
            parts: Vec::new(),
            stats: S::default(),
        }
    }
}

/// What the loop knows at the end of a run, for [`Kind::finish`].
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// Mean training loss over the last `train.log_every` steps.
    pub train_loss: f64,
    /// The final evaluation ([`Kind::evaluate`]).
    pub eval: Metrics,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped.
    pub monitor_events: usize,
    /// Mean of each monitor value logged over the run (keys without `/`).
    pub monitor_means: BTreeMap<String, f64>,
    /// End-of-run values the monitors report ([`Monitor::totals`], e.g. `dead_experts`).
    pub monitor_totals: Metrics,
}

/// One kind of training run. Implement it in one file under `kinds/` and add one arm to the
/// CLI's dispatch; the loop, run directory, checkpoints, resume, logs, monitors and
/// `summary.json` come from [`train`].
pub trait Kind<B: AutodiffBackend>: Sized {
    /// The trained module.
    type Model: AutodiffModule<B> + Clone;
    /// One training batch.
    type Batch;
    /// Per-step statistics of the loss (routing decisions, …), `()` when none.
    type Stats: Default;
    /// What a finished run reports (written as `summary.json`).
    type Summary: Serialize;

    /// The kind's recipe name (`"lm"`), for logs.
    fn name(&self) -> &'static str;

    /// The model with its initial weights (seeded from the recipe). The loop gives its
    /// parameters fixed ids (`bllm_nn::with_deterministic_ids`), so records are reproducible.
    fn model(&self, device: &B::Device) -> Result<Self::Model>;

    /// The batch of `step`, drawn from the run's order stream.
    fn batch(&self, order: &mut ChaCha8Rng, step: usize) -> Result<Self::Batch>;

    /// Part `index` of `parts` equal parts of `batch` (rows `index·n/parts ..`), for
    /// gradient accumulation (`train.accumulate`) and data-parallel runs: the loss of the
    /// whole batch must be the mean of its parts' losses. Default: not supported.
    fn shard(&self, _batch: &Self::Batch, _index: usize, _parts: usize) -> Result<Self::Batch> {
        Err(crate::TrainError::Unsupported(format!(
            "kind = {:?} cannot split its batches: train.accumulate > 1 and data-parallel runs \
             (--world) are not supported for it yet",
            self.name()
        )))
    }

    /// This step's statistics as exact whole numbers (each `|v| ≤ 2²⁴`, so exact in `f32`),
    /// for the steps that run in parts (`train.accumulate`, data-parallel ranks): they travel
    /// with the gradients and every part's reach [`Kind::merge_stats`]. Every part of a step
    /// must give the same length. Default: none (the first part's statistics stand for the
    /// step, right for statistics every part shares, such as the step number).
    fn stats_values(&self, _stats: &Self::Stats) -> Vec<f32> {
        Vec::new()
    }

    /// The statistics of a step run in parts, from every part's [`Kind::stats_values`] in part
    /// order (micro-batches in order; ranks in rank order); `first` is this process's first
    /// part's own. What [`Kind::after_update`] and the after-update monitors see. Default:
    /// `first`.
    fn merge_stats(&self, first: Self::Stats, _parts: &[&[f32]]) -> Result<Self::Stats> {
        Ok(first)
    }

    /// The training loss of `batch` under `ctx`.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        ctx: &Ctx,
    ) -> Result<Loss<B, Self::Stats>>;

    /// The loss the shadow-cosine monitor differentiates: by default the same network with
    /// every binarizer replaced by its smooth surrogate.
    fn shadow_loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        ctx: &Ctx,
    ) -> Result<Tensor<B, 1>> {
        Ok(self
            .loss(model, batch, &ctx.with_shadow(Shadow::Surrogate))?
            .total)
    }

    /// The model's quantised sites (binary / ternary weights, binary codes) the generic
    /// monitors watch, in a fixed order. Default: none.
    fn sites<'a>(&'a self, _model: &'a Self::Model) -> Vec<Site<'a, B>> {
        Vec::new()
    }

    /// The training loss of `batch` on the inner model with the latent weights of site
    /// `site` replaced by `w` (the finite-difference monitor). `None`: not supported.
    fn perturbed_loss(
        &self,
        _model: &Inner<B, Self>,
        _batch: &Self::Batch,
        _ctx: &Ctx,
        _site: usize,
        _w: Tensor<B::InnerBackend, 2>,
    ) -> Option<f64> {
        None
    }

    /// Called after each optimizer step that was taken (not after skipped ones).
    fn after_update(&self, _model: &mut Self::Model, _stats: &Self::Stats) {}

    /// The kind's own monitors, besides the generic ones.
    fn monitors(&self, _model: &Self::Model) -> Result<Vec<Box<dyn Monitor<B, Self>>>> {
        Ok(Vec::new())
    }

    /// Parameters trained at a multiple of the scheduled learning rate, as `(ids, scale)`
    /// groups (a pretrained encoder under a fresh head). Default: none, everything at the
    /// scheduled rate. Not supported with `optimizer.kind = "bop_adam"`.
    fn lr_groups(&self, _model: &Self::Model) -> Vec<(Vec<ParamId>, f64)> {
        Vec::new()
    }

    /// Held-out evaluation after `step` of `total` (periodic and final).
    fn evaluate(&self, model: &Self::Model, step: usize, total: usize) -> Result<Metrics>;

    /// Files besides the records every checkpoint holds (default: `model.safetensors`).
    fn checkpoint_files(&self, model: &Self::Model, dir: &Path) -> Result<()> {
        crate::write_safetensors(model, &dir.join("model.safetensors"))
    }

    /// Exports into `dir` (inside `final/`, when the recipe asks for weights). Default: none.
    fn export(&self, _model: &Self::Model, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Called once the run directory is ready (after start or resume), e.g. to record the data.
    fn on_start(&self, _run: &RunDir) -> Result<()> {
        Ok(())
    }

    /// The run's summary; `final_dir` is the final checkpoint when the run completed (the
    /// kind may add results and exports to the run directory then).
    fn finish(
        &self,
        model: &Self::Model,
        run: &RunDir,
        outcome: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<Self::Summary>;
}

/// What a monitor sees before the update of step `step` (0-based): the batch, its loss
/// statistics and gradients.
pub struct Before<'a, B: AutodiffBackend, K: Kind<B>> {
    /// The kind.
    pub kind: &'a K,
    /// The model before the update.
    pub model: &'a K::Model,
    /// The step's batch.
    pub batch: &'a K::Batch,
    /// The step's loss statistics.
    pub stats: &'a K::Stats,
    /// The step's context.
    pub ctx: &'a Ctx,
    /// Gradients of the step's loss.
    pub grads: &'a B::Gradients,
    /// The step (0-based).
    pub step: usize,
    /// The recipe.
    pub recipe: &'a Recipe,
    pub(crate) watch: &'a Watch<'a>,
}

impl<B: AutodiffBackend, K: Kind<B>> Before<'_, B, K> {
    /// Whether monitor `name` is enabled and due on this step.
    pub fn due(&self, name: &str) -> bool {
        self.watch.due_before(name, self.step)
    }
}

/// What a monitor sees after step `done` (1-based count of steps taken).
pub struct After<'a, B: AutodiffBackend, K: Kind<B>> {
    /// The kind.
    pub kind: &'a K,
    /// The model after the update.
    pub model: &'a K::Model,
    /// The step's batch.
    pub batch: &'a K::Batch,
    /// The step's loss statistics.
    pub stats: &'a K::Stats,
    /// The step's context.
    pub ctx: &'a Ctx,
    /// Steps done.
    pub done: usize,
    /// `train.steps`.
    pub total: usize,
    /// Whether this step's line is a periodic log line (`done % train.log_every == 0`).
    pub logged: bool,
    /// The recipe.
    pub recipe: &'a Recipe,
    pub(crate) watch: &'a Watch<'a>,
}

impl<B: AutodiffBackend, K: Kind<B>> After<'_, B, K> {
    /// Whether monitor `name` is enabled and due after this step.
    pub fn due(&self, name: &str) -> bool {
        self.watch.due_after(name, self.done)
    }
}

/// What monitors report for a step.
#[derive(Debug, Default)]
pub struct Readings {
    /// Values for the step's `metrics.jsonl` line (keys without `/` are averaged into the
    /// summary's `monitor_means`).
    pub metrics: serde_json::Map<String, Value>,
    /// `(recipe monitor name, value, fires when above the threshold)`: checked against the
    /// recipe's threshold and action.
    pub checks: Vec<(&'static str, f64, bool)>,
    /// Extra `events.jsonl` lines (e.g. MoE `collapse` with its reasons).
    pub events: Vec<Value>,
}

impl Readings {
    /// Sets metric `key`.
    pub fn metric(&mut self, key: impl Into<String>, value: impl Serialize) {
        self.metrics.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Logs `value` under `name` and checks it against monitor `name`'s threshold.
    pub fn check(&mut self, name: &'static str, value: f64, above: bool) {
        self.metric(name, value);
        self.checks.push((name, value, above));
    }
}

/// A monitor: computes values from the model, batch and gradients; never acts.
pub trait Monitor<B: AutodiffBackend, K: Kind<B>> {
    /// Key of its state in `trainer.json`.
    fn name(&self) -> &'static str;

    /// Before the update (gradients available).
    fn before_update(&mut self, _cx: &Before<'_, B, K>, _out: &mut Readings) -> Result<()> {
        Ok(())
    }

    /// After the update.
    fn after_update(&mut self, _cx: &After<'_, B, K>, _out: &mut Readings) -> Result<()> {
        Ok(())
    }

    /// State a bit-exact resume needs (`null`: none).
    fn state(&self) -> Value {
        Value::Null
    }

    /// Restores [`Monitor::state`].
    fn restore(&mut self, _state: Value) -> Result<()> {
        Ok(())
    }

    /// End-of-run values for [`Outcome::monitor_totals`].
    fn totals(&self) -> Metrics {
        Metrics::new()
    }
}

/// A monitor's saved state read back as `T`; an error names `monitors.<name>` of
/// `trainer.json`.
pub fn restore_state<T: serde::de::DeserializeOwned>(name: &str, state: Value) -> Result<T> {
    serde_json::from_value(state)
        .map_err(|e| crate::TrainError::Unsupported(format!("trainer.json: monitors.{name}: {e}")))
}

/// Everything besides tensors a bit-exact resume needs (`trainer.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    /// Gradient parts per step (ranks × micro-batches) the run was trained with.
    #[serde(default = "one")]
    parts: usize,
    order: StreamState,
    #[serde(flatten)]
    watch: LoopState,
    monitors: BTreeMap<String, Value>,
}

/// Rows `index·n/parts .. (index+1)·n/parts` of `t` along dimension 0 (a part of a batch, for
/// [`Kind::shard`]); `parts` must divide `n`.
pub fn rows<B: burn::tensor::backend::Backend, const D: usize, T>(
    t: &Tensor<B, D, T>,
    index: usize,
    parts: usize,
) -> Result<Tensor<B, D, T>>
where
    T: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>,
{
    let r = part_range(t.dims()[0], index, parts)?;
    Ok(t.clone().narrow(0, r.start, r.len()))
}

/// Items `index·n/parts .. (index+1)·n/parts` of `v` (a part of a batch of example indices,
/// for [`Kind::shard`]); `parts` must divide `n`.
pub fn items<T: Clone>(v: &[T], index: usize, parts: usize) -> Result<Vec<T>> {
    Ok(v[part_range(v.len(), index, parts)?].to_vec())
}

/// The range of part `index` of `parts` equal parts of `n` rows.
fn part_range(n: usize, index: usize, parts: usize) -> Result<std::ops::Range<usize>> {
    if parts == 0 || n % parts != 0 || index >= parts {
        return Err(crate::TrainError::Unsupported(format!(
            "a batch of {n} rows does not split into part {index} of {parts} equal parts"
        )));
    }
    let len = n / parts;
    Ok(index * len..(index + 1) * len)
}

/// The number of parts each step is split into (`world` ranks, or `train.accumulate`
/// micro-batches in one process); errors when both are asked for or the batch does not split.
pub(crate) fn split_check(recipe: &Recipe, world: usize) -> Result<usize> {
    let accumulate = recipe.train.accumulate.max(1);
    if world > 1 && accumulate > 1 {
        return Err(crate::TrainError::Unsupported(format!(
            "recipe {:?}: train.accumulate = {accumulate} with --world {world}: gradient \
             accumulation inside a data-parallel run is not supported; use one or the other",
            recipe.name
        )));
    }
    let parts = world * accumulate;
    if parts > 1 && recipe.train.batch_size % parts != 0 {
        return Err(crate::TrainError::Unsupported(format!(
            "recipe {:?}: train.batch_size = {} does not split into {parts} equal parts ({})",
            recipe.name,
            recipe.train.batch_size,
            if world > 1 {
                format!("one per rank, --world {world}")
            } else {
                format!("train.accumulate = {accumulate}")
            }
        )));
    }
    Ok(parts)
}

/// Checks a part's [`Kind::stats_values`]: `n` values (the first part's count), each a whole
/// number exact in `f32`.
fn stats_slot(kind: &str, values: &[f32], n: usize, step: usize) -> Result<()> {
    if values.len() != n {
        return Err(crate::TrainError::Unsupported(format!(
            "kind = {kind:?}, step {}: a part of the batch gave {} statistics values where the \
             first part gave {n}; the parts of a step must give the same number",
            step + 1,
            values.len()
        )));
    }
    if let Some(v) = values
        .iter()
        .find(|v| !(v.fract() == 0.0 && v.abs() <= 16_777_216.0))
    {
        return Err(crate::TrainError::Unsupported(format!(
            "kind = {kind:?}, step {}: statistics value {v} is not a whole number of at most \
             2^24 in magnitude, so it would not survive the sum across parts exactly",
            step + 1
        )));
    }
    Ok(())
}

fn one() -> usize {
    1
}

/// A loss's logged values: the total, the reported loss (if any) and the named parts.
fn loss_values<B: AutodiffBackend, S>(
    l: &Loss<B, S>,
) -> (f64, Option<f64>, Vec<(&'static str, f64)>) {
    (
        scalar(l.total.clone()),
        l.reported.clone().map(scalar),
        l.parts
            .iter()
            .map(|(n, t)| (*n, scalar(t.clone())))
            .collect(),
    )
}

/// The scalar value of a one-element tensor.
pub(crate) fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

/// Runs (or resumes) `kind` under `recipe` into `opts.run_dir`: the one loop every kind uses.
/// The directory rules of [`RunDir::open`] apply (a kind's entry point may also call
/// [`RunDir::refuse_existing`] before it loads its data, to fail before any work).
pub fn train<B: AutodiffBackend, K: Kind<B>>(
    recipe: &Recipe,
    opts: &mut RunOptions,
    kind: K,
) -> Result<K::Summary> {
    let span = tracing::info_span!(
        "run",
        rank = tracing::field::Empty,
        recipe = %recipe.name,
        kind = kind.name(),
        dir = %opts.run_dir.display()
    );
    if let Some(d) = &opts.dist {
        span.record("rank", d.rank);
    }
    let _span = span.enter();
    let dist = opts.dist.clone();
    if let Some(d) = &dist {
        d.validate()?;
    }
    let leader = dist.as_ref().is_none_or(crate::DistConfig::leader);
    let world = dist.as_ref().map_or(1, |d| d.world);
    let accumulate = recipe.train.accumulate;
    let parts = split_check(recipe, world)?;
    // Ranks other than 0 write only into a scratch directory, removed at the end.
    let scratch = match &dist {
        Some(d) if !d.leader() => Some(crate::dist::Scratch::new(d.rank)?),
        _ => None,
    };
    let run = match &scratch {
        None => RunDir::open(&opts.run_dir, recipe, opts.resume)?,
        Some(s) => RunDir::prepare(s.path())?,
    };
    let dev: B::Device = Default::default();
    // Fixed parameter ids (Burn draws random ones, which records store): the same recipe and
    // seed write the same bytes, for every kind.
    let model = bllm_nn::with_deterministic_ids(kind.model(&dev)?, 0);
    let opt = Opt::new(recipe, &model);
    let groups = kind.lr_groups(&model);
    if !groups.is_empty() && recipe.optimizer.kind == bllm_recipe::OptimizerKind::BopAdam {
        return Err(crate::TrainError::Unsupported(format!(
            "recipe {:?}: optimizer.kind = \"bop_adam\" cannot train parameter groups at their \
             own learning rates ({} groups here); use adam or adamw",
            recipe.name,
            groups.len()
        )));
    }
    // Monitors run on rank 0 only.
    let mut monitors = if leader {
        let mut m = crate::sites::generic_monitors::<B, K>(&kind, &model);
        m.extend(kind.monitors(&model)?);
        m
    } else {
        Vec::new()
    };
    let fresh = TrainerState {
        step: 0,
        parts,
        order: StreamState::of(&crate::rng::stream(recipe.seed, ORDER, 0), ORDER, 0),
        watch: LoopState::new(recipe),
        monitors: BTreeMap::new(),
    };
    let (mut model, mut opt, mut state) = if leader {
        start_or_resume(
            recipe,
            &run,
            opts.resume,
            (model, opt, fresh),
            |s: &TrainerState| s.step,
        )?
    } else {
        run.start(recipe)?;
        crate::optim::resume_read_only(
            recipe,
            &opts.run_dir,
            opts.resume,
            (model, opt, fresh),
            |s: &TrainerState| s.step,
        )?
    };
    for m in &mut monitors {
        if let Some(v) = state.monitors.remove(m.name()) {
            m.restore(v)?;
        }
    }
    if state.step > 0 {
        tracing::info!(step = state.step, "resumed");
        if state.parts != parts {
            let message = format!(
                "resumed with {parts} gradient part(s) per step where the run had {}: it \
                 continues, but is no longer bit-identical to an uninterrupted run",
                state.parts
            );
            tracing::warn!("{message}");
            run.append(
                "events.jsonl",
                &json!({"step": state.step, "event": "parts", "message": message}),
            )?;
        }
    }
    state.parts = parts;
    kind.on_start(&run)?;
    let mut order = state.order.restore(recipe.seed)?;
    if parts > 1 {
        // Fail before joining when the kind cannot split its batches.
        let probe = kind.batch(&mut order.clone(), state.step)?;
        kind.shard(&probe, 0, parts)?;
    }
    let total = recipe.train.steps;
    let stop_at = opts.max_steps.map_or(total, |m| m.min(total));
    // Join the data-parallel group and check that every rank starts from the same place.
    let mut group = match &dist {
        Some(d) => Some(crate::dist::Group::<B::InnerBackend>::join(d, &dev)?),
        None => None,
    };
    if let Some(g) = &group {
        g.agree(
            "the recipe",
            crate::dist::hash_bytes(recipe.resolved_toml().as_bytes()),
        )?;
        g.agree("the step to start from", state.step as u64)?;
        g.agree(
            "the step to stop at (train.steps, --max-steps)",
            stop_at as u64,
        )?;
        g.agree("the model's parameters", crate::optim::param_hash(&model))?;
        tracing::info!(
            rank = opts.dist.as_ref().map_or(0, |d| d.rank),
            world,
            step = state.step,
            "all ranks joined and agree"
        );
    }
    let watch = Watch { recipe, run: &run };

    // Writes checkpoint `name` (records, trainer.json with the monitors' state, the kind's
    // files; with `export`, the kind's export under `export/`).
    let save = |name: &str,
                model: &K::Model,
                opt: &Opt<B, K::Model>,
                state: &TrainerState,
                monitors: &[Box<dyn Monitor<B, K>>],
                order: &ChaCha8Rng,
                export: bool|
     -> Result<PathBuf> {
        let mut s = state.clone();
        s.order = StreamState::of(order, ORDER, 0);
        s.monitors = monitors
            .iter()
            .map(|m| (m.name().to_owned(), m.state()))
            .filter(|(_, v)| !v.is_null())
            .collect();
        save_checkpoint(&run, name, model, opt, &s, |dir| {
            kind.checkpoint_files(model, dir)?;
            if export {
                kind.export(model, &dir.join("export"))?;
            }
            Ok(())
        })
    };
    let checkpoint = |model: &K::Model,
                      opt: &Opt<B, K::Model>,
                      state: &TrainerState,
                      monitors: &[Box<dyn Monitor<B, K>>],
                      order: &ChaCha8Rng,
                      note: &str|
     -> Result<()> {
        let p = save(
            &format!("checkpoint-{}", state.step),
            model,
            opt,
            state,
            monitors,
            order,
            false,
        )?;
        tracing::info!(step = state.step, path = %p.display(), "checkpoint{note}");
        run.checkpointed(state.step, &p, note, recipe.checkpoint.keep_last)
    };

    while state.step < stop_at {
        let step = state.step;
        let ctx = step_ctx(recipe, step, total);
        let drawn = kind.batch(&mut order, step)?;
        // This process's parts of the step's batch: its rank's, or every micro-batch.
        let batches: Vec<K::Batch> = if parts == 1 {
            vec![drawn]
        } else {
            let mine: Vec<usize> = match &dist {
                Some(d) => vec![d.rank],
                None => (0..accumulate).collect(),
            };
            mine.iter()
                .map(|&i| kind.shard(&drawn, i, parts))
                .collect::<Result<_>>()?
        };
        let batch = &batches[0];
        let out = kind.loss(&model, batch, &ctx)?;
        let (mut loss_v, mut reported, mut parts_v) = loss_values(&out);
        let Loss {
            total: objective,
            stats,
            ..
        } = out;
        let mut stats = stats;
        let mut grads = objective.backward();

        // Monitors that need this step's gradients run before the update (on rank 0; they
        // see the first part of the batch and its own gradients).
        let mut readings = Readings::default();
        let before = Before {
            kind: &kind,
            model: &model,
            batch,
            stats: &stats,
            ctx: &ctx,
            grads: &grads,
            step,
            recipe,
            watch: &watch,
        };
        for m in &mut monitors {
            m.before_update(&before, &mut readings)?;
        }
        if parts > 1 {
            // The other micro-batches, then the ranks: gradients, losses and statistics summed
            // in order. Each part's statistics have a slot of their own (zeros elsewhere), so
            // the sum carries every part's values unchanged.
            let first_stats = kind.stats_values(&stats);
            let n_stats = first_stats.len();
            let own_slot = dist.as_ref().map_or(0, |d| d.rank);
            let control = |loss: f64,
                           rep: Option<f64>,
                           ps: &[(&str, f64)],
                           values: &[f32],
                           slot: usize|
             -> Result<Vec<f32>> {
                stats_slot(kind.name(), values, n_stats, step)?;
                let mut c = vec![loss as f32, rep.unwrap_or(0.0) as f32];
                c.extend(ps.iter().map(|(_, v)| *v as f32));
                let at = c.len() + slot * n_stats;
                c.resize(c.len() + parts * n_stats, 0.0);
                c[at..at + n_stats].copy_from_slice(values);
                Ok(c)
            };
            let n_losses = 2 + parts_v.len();
            let mut sum = crate::optim::flatten_grads(
                &model,
                &grads,
                &control(loss_v, reported, &parts_v, &first_stats, own_slot)?,
                &dev,
            );
            for (i, b) in batches.iter().enumerate().skip(1) {
                let o = kind.loss(&model, b, &ctx)?;
                let (l, r, ps) = loss_values(&o);
                let c = control(l, r, &ps, &kind.stats_values(&o.stats), i)?;
                let g = o.total.backward();
                sum = sum + crate::optim::flatten_grads(&model, &g, &c, &dev);
                grads = g;
            }
            if let Some(g) = &group {
                let t0 = std::time::Instant::now();
                let values = sum.dims()[0];
                sum = g.ordered_sum(
                    &format!("step {}: the all-reduce of the gradients", step + 1),
                    sum,
                )?;
                tracing::debug!(
                    step = step + 1,
                    values,
                    ms = t0.elapsed().as_secs_f64() * 1e3,
                    "all-reduce of the gradients"
                );
            }
            let c = crate::optim::scatter_grads(
                &model,
                &mut grads,
                sum,
                parts,
                n_losses + parts * n_stats,
            );
            let n = parts as f64;
            loss_v = f64::from(c[0]) / n;
            if reported.is_some() {
                reported = Some(f64::from(c[1]) / n);
            }
            for (k, (_, v)) in parts_v.iter_mut().enumerate() {
                *v = f64::from(c[2 + k]) / n;
            }
            if n_stats > 0 {
                let all: Vec<&[f32]> = c[n_losses..].chunks(n_stats).collect();
                stats = kind.merge_stats(stats, &all)?;
            }
        }
        let grad_norm = crate::optim::grad_norm(&model, &grads);
        let (lz, gz, verdict) = watch.before_update(&mut state.watch, step, loss_v, grad_norm)?;
        let skip = match verdict {
            Verdict::Stop(stop) => {
                save(
                    &format!("checkpoint-{step}"),
                    &model,
                    &opt,
                    &state,
                    &monitors,
                    &order,
                    false,
                )?;
                return Err(stop.into_error(&run, step)?);
            }
            Verdict::Skip => true,
            Verdict::Update => false,
        };
        let lr = learning_rate(&recipe.schedule, recipe.optimizer.lr, step, total);
        if skip {
            watch.skipped(&mut state.watch, step, loss_v)?;
        } else {
            model = clip_and_step(recipe, &mut opt, model, grads, grad_norm, lr, &groups);
            kind.after_update(&mut model, &stats);
        }
        state.step += 1;
        let done = state.step;
        if let Some(p) = opts.progress.as_mut() {
            p(done, total, loss_v);
        }
        let shown = reported.unwrap_or(loss_v);
        state.watch.push_loss(shown, recipe.train.log_every);

        // Monitors of the updated model.
        let logged = done % recipe.train.log_every == 0;
        let after = After {
            kind: &kind,
            model: &model,
            batch,
            stats: &stats,
            ctx: &ctx,
            done,
            total,
            logged,
            recipe,
            watch: &watch,
        };
        for m in &mut monitors {
            m.after_update(&after, &mut readings)?;
        }
        for e in &readings.events {
            run.append("events.jsonl", e)?;
        }
        let stop = watch.after_update(&mut state.watch, done, &readings.checks)?;
        if let Some(g) = group.as_ref().filter(|_| watch.may_stop_after_update()) {
            // Rank 0's monitors decide for every rank (the ranks share the recipe, so all of
            // them make this call or none).
            let flag = if stop.is_some() { 1.0f32 } else { 0.0 };
            let flag = Tensor::<B::InnerBackend, 1>::from_data(
                burn::tensor::TensorData::new(vec![flag], [1]),
                &dev,
            );
            let all = g.ordered_sum(&format!("step {done}: the monitors' verdict"), flag)?;
            if stop.is_none() && crate::optim::to_vec(all).first().is_some_and(|v| *v > 0.0) {
                return Err(crate::TrainError::Distributed(format!(
                    "rank 0's monitors stopped the run after step {done} (see events.jsonl in \
                     rank 0's run directory {})",
                    opts.run_dir.display()
                )));
            }
        }
        if let Some(stop) = stop {
            save(
                &format!("checkpoint-{done}"),
                &model,
                &opt,
                &state,
                &monitors,
                &order,
                false,
            )?;
            return Err(stop.into_error(&run, done)?);
        }
        let mut line = json!({"step": done, "split": "train", "loss": shown, "lr": lr,
            "grad_norm": grad_norm, "loss_z": lz, "grad_norm_z": gz});
        // A line at every `log_every` steps, and whenever a monitor measured something.
        let measured = !readings.metrics.is_empty();
        for (n, v) in &parts_v {
            readings.metric(*n, *v);
        }
        state.watch.accumulate_all(&readings.metrics);
        if logged || measured {
            if let Some(obj) = line.as_object_mut() {
                obj.extend(readings.metrics);
            }
            run.append("metrics.jsonl", &line)?;
        }
        if leader && recipe.eval.every > 0 && done % recipe.eval.every == 0 && done < total {
            let m = kind.evaluate(&model, done, total)?;
            log_eval(&run, done, total, shown, &m, opts.verbose)?;
        }
        if leader
            && recipe.checkpoint.every > 0
            && done % recipe.checkpoint.every == 0
            && done < total
        {
            checkpoint(&model, &opt, &state, &monitors, &order, "")?;
        }
    }

    if let Some(g) = group.take() {
        g.leave()?;
    }
    let complete = state.step >= total;
    if !complete && leader {
        checkpoint(
            &model,
            &opt,
            &state,
            &monitors,
            &order,
            " (stopped early by max_steps)",
        )?;
    }
    let eval = kind.evaluate(&model, state.step, total)?;
    let outcome = Outcome {
        steps: state.step,
        complete,
        train_loss: state.watch.recent_loss(),
        eval: eval.clone(),
        skipped_steps: state.watch.skipped_steps,
        monitor_events: state.watch.monitor_events,
        monitor_means: state.watch.means(),
        monitor_totals: monitors.iter().flat_map(|m| m.totals()).collect(),
    };
    if !complete {
        return kind.finish(&model, &run, &outcome, None);
    }
    let mut line = json!({"step": state.step, "split": "eval"});
    if let Some(obj) = line.as_object_mut() {
        obj.extend(eval.iter().map(|(k, v)| (k.clone(), json!(v))));
    }
    run.append("metrics.jsonl", &line)?;
    let final_dir = save(
        "final",
        &model,
        &opt,
        &state,
        &monitors,
        &order,
        recipe.export.weights,
    )?;
    let summary = kind.finish(&model, &run, &outcome, Some(&final_dir))?;
    run.write_json("summary.json", &summary)?;
    tracing::info!(steps = state.step, "finished");
    Ok(summary)
}

/// Appends a periodic evaluation line and reports it.
fn log_eval(
    run: &RunDir,
    done: usize,
    total: usize,
    train_loss: f64,
    m: &Metrics,
    verbose: bool,
) -> Result<()> {
    let mut line = json!({"step": done, "split": "eval"});
    if let Some(obj) = line.as_object_mut() {
        obj.extend(m.iter().map(|(k, v)| (k.clone(), json!(v))));
    }
    run.append("metrics.jsonl", &line)?;
    let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    if verbose {
        tracing::info!(
            step = done,
            total,
            train_loss,
            "evaluation: {}",
            shown.join(", ")
        );
    } else {
        tracing::debug!(
            step = done,
            total,
            train_loss,
            "evaluation: {}",
            shown.join(", ")
        );
    }
    Ok(())
}

/// The weight scaling a recipe's `model.scaling` / `model.learnable_scale` name (the recipe
/// validates the name: `none`, `per_tensor`, `per_channel`, `svid`).
pub(crate) fn scaling_of(name: &str, learnable: bool) -> bllm_nn::Scaling {
    use bllm_nn::Scaling;
    match name {
        "per_tensor" => Scaling::PerTensor { learnable },
        "per_channel" => Scaling::PerChannel { learnable },
        "svid" => Scaling::Svid,
        _ => Scaling::None,
    }
}

/// The weight estimator of a recipe (`[estimator]`).
pub(crate) fn estimator(recipe: &Recipe) -> Result<bllm_ste::Estimator> {
    toml::Value::Table(recipe.estimator.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            crate::TrainError::Unsupported(format!("recipe {:?}: [estimator]: {e}", recipe.name))
        })
}

/// The `Unsupported` error of a trainer given a recipe of another kind.
pub(crate) fn wrong_kind(recipe: &Recipe, want: &str) -> crate::TrainError {
    crate::TrainError::Unsupported(format!(
        "recipe {:?} is kind = {:?}; this trainer runs kind = {want:?}",
        recipe.name,
        recipe.kind.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_cut_equal_parts_and_refuse_uneven_ones() {
        let v: Vec<usize> = (0..12).collect();
        assert_eq!(items(&v, 0, 3).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(items(&v, 2, 3).unwrap(), vec![8, 9, 10, 11]);
        assert_eq!(items(&v, 0, 1).unwrap(), v);
        for (index, parts) in [(0, 5), (3, 3), (0, 0)] {
            let e = items(&v, index, parts).unwrap_err().to_string();
            assert!(e.contains("does not split"), "{e}");
        }
    }

    #[test]
    fn statistics_must_be_whole_numbers_of_one_length() {
        assert!(stats_slot("moe", &[0.0, 3.0, 16_777_216.0], 3, 0).is_ok());
        let e = stats_slot("moe", &[1.0, 2.0], 3, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 5") && e.contains("gave 2"), "{e}");
        for bad in [0.5, f32::NAN, 16_777_218.0, f32::INFINITY] {
            let e = stats_slot("moe", &[1.0, bad], 2, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("whole number"), "{bad}: {e}");
        }
    }
}
