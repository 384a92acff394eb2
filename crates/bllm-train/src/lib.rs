//! # bllm-train — the trainer
//!
//! Runs a validated [`bllm_recipe::Recipe`] (`kind = "classify"`: [`run`]; `kind =
//! "retrieval"`: [`run_retrieval`], which adds `results.json`, `results.md` and `export/`;
//! `kind = "lm"`: [`run_lm`], a byte-level transformer with bits per byte on held-out text;
//! `kind = "moe"`: [`run_moe`], mixture-of-experts layers with load-balance monitors) on Burn's autodiff CPU backend: seeded data and
//! weights, learning-rate schedule, global gradient-norm clipping, Adam/AdamW/SGD or Bop+Adam,
//! stability monitors with actions, and a run directory:
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
//! Checkpoints are written to a temporary directory and renamed, so a crash never leaves a
//! half-written `checkpoint-<step>/`; `resume` continues from the newest complete one and, on
//! the CPU, reproduces an uninterrupted run bit for bit.

mod backend;
pub mod data;
mod error;
mod kinds;
mod monitor;
mod optim;
pub mod rng;
mod rundir;
mod schedule;
pub mod sites;
mod trainer;

pub use error::{Result, TrainError};
pub use kinds::adapter::{AdapterSummary, run_adapter};
pub use kinds::classify::{ClassifyMlp, RunSummary, run};
pub use kinds::lm::{LmSummary, lm_config, run_lm};
pub use kinds::moe::{LayerLoad, LoadWatch, MoeClassifier, MoeSummary, run_moe};
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
    train,
};
