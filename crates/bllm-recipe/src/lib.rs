//! # bllm-recipe — recipes as data
//!
//! A recipe is a TOML file that chooses, by name, among implemented components and sets their
//! numbers; it never contains code or paths to code. This crate (no Burn, builds in seconds):
//!
//! * parses a recipe and applies `key=value` overrides (dotted paths, TOML-typed values);
//! * validates it against the schema and reports **every** problem at once, each naming the
//!   file (or the override), the dotted key, what was expected and what was found — unknown
//!   keys included, with a "did you mean" for typos;
//! * expands `[sweep]` tables (dotted path → list of values) into the cross product of runs;
//! * estimates a run's memory from its shapes ([`estimate`]) and checks it against a
//!   [`MemoryLimit`] before anything is allocated.
//!
//! Sections whose schema belongs to another crate (the `estimator` table is a
//! `bllm_ste::Estimator`) are kept as raw tables and checked through [`ComponentCheck`], so the
//! same report holds their errors too.

mod diff;
mod error;
mod memory;
mod overrides;
mod recipe;
mod sweep;
mod walk;

pub use diff::{KeyChange, RESUME_SAFE_KEYS, changed_keys, resume_changes};
pub use error::{Issue, RecipeError, Result};
pub use memory::{
    LimitSource, MemoryEstimate, MemoryExceeded, MemoryLimit, available_memory, estimate,
    format_bytes, parse_size,
};
pub use overrides::{Override, parse_override};
pub use recipe::{
    AdapterSection, AdapterTask, BASELINES, CheckpointSection, ClustersSection, CollapseSection,
    ComponentCheck, DataSection, DistillSection, EmbeddingSection, EncoderSection, EvalSection,
    ExportSection, HeadSection, Kind, KvProbeTask, LmModelSection, LmTask, LrSchedule,
    ModelSection, MoeData, MoeSection, MoeTask, MonitorAction, MonitorSection, MonitorsSection,
    ObjectiveSection, OptimizerKind, OptimizerSection, Recipe, RetrievalEvalSection, RetrievalTask,
    SourceSection, SyntheticSection, Task, TextSection, TrainSection,
};
pub use sweep::{SweepRun, expand_sweep};
