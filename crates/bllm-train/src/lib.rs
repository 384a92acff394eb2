//! # bllm-train — the trainer
//!
//! One loop ([`train`]) runs every kind of run: a [`Kind`] says what is trained (model,
//! batches from its seeded stream, loss, quantised [`Site`]s, evaluation, export, summary) and
//! the loop does the rest — run directory rules, resume, checkpoints and pruning, the step
//! (forward → loss → backward → monitors → verdict → clip → optimizer step), the learning-rate
//! schedule, the generic and the kind's [`Monitor`]s with the recipe's actions, spike and
//! non-finite detection, `metrics.jsonl` / `events.jsonl`, `tracing` events, periodic
//! evaluation, `final/` and `summary.json`. The shipped kinds: `classify` ([`run`]),
//! `retrieval` ([`run_retrieval`]), `lm` ([`run_lm`]), `moe` ([`run_moe`]) and `adapter`
//! ([`run_adapter`], a sequence of phases). Each runs on Burn's autodiff CPU backend or, per
//! the recipe's `device`, on wgpu or CUDA.
//!
//! ```text
//! <run>/recipe.resolved.toml   the recipe after overrides
//! <run>/metrics.jsonl          {"step", "split", "name": value, …} per logged step
//! <run>/events.jsonl           monitor firings, skipped steps, checkpoints, stop reasons
//! <run>/checkpoint-<step>/     model.mpk, model.safetensors, optimizer.mpk, trainer.json
//! <run>/final/                 the final checkpoint
//! <run>/summary.json           final metrics
//! ```
//!
//! Data-parallel runs ([`DistConfig`] in [`RunOptions::dist`]) split every step's batch across
//! processes joined through Burn's `burn-collective` (one all-reduce of the flattened
//! gradients per step, summed in rank order): N ranks write the same bytes as one process with
//! `train.accumulate = N`. Rank 0 writes the run directory; `serve_orchestrator` is the
//! meeting point (`bllm orchestrator`).
//!
//! Checkpoints are written to a temporary directory and renamed, so a crash never leaves a
//! half-written `checkpoint-<step>/`; `resume` continues from the newest complete one and, on
//! the CPU, reproduces an uninterrupted run bit for bit.

mod adam;
mod backend;
pub mod data;
mod dist;
mod error;
mod kinds;
mod monitor;
mod optim;
pub mod rng;
mod rundir;
mod schedule;
pub mod sites;
mod trainer;

pub use dist::{DistConfig, serve_orchestrator};
pub use error::{Result, TrainError};
pub use kinds::adapter::{AdapterSummary, PretrainedAdapterReport, run_adapter};
pub use kinds::classify::{ClassifyMlp, RunSummary, TrainedClassifier, load_trained, run};
pub use kinds::kv_probe::{
    KvProbeSummary, MARKDOWN_HEADER as KV_PROBE_HEADER, bytes_at as kv_probe_bytes_at,
    markdown as kv_probe_markdown, markdown_rows as kv_probe_rows, run_kv_probe,
};
pub use kinds::lm::{LmSummary, lm_config, run_lm};
pub use kinds::moe::{LayerLoad, LoadWatch, MoeClassifier, MoeSummary, run_moe};
pub use kinds::pretrained_lm::{PretrainedReport, projection_kind};
pub use kinds::retrieval::{RetrievalSummary, run_retrieval};
pub use monitor::{MonitorEvent, SpikeDetector};
pub use optim::write_safetensors;
pub use rundir::{
    CRASH_IN_CHECKPOINT_ENV, OWNED_FILE, RECIPE_FILE, RunDir, newest_checkpoint, timestamp_utc,
};
pub use schedule::learning_rate;
pub use sites::Site;
pub use trainer::{
    After, Before, Inner, Kind, Loss, Metrics, Monitor, Outcome, ProgressFn, Readings, RunOptions,
    restore_state, rows, train,
};
