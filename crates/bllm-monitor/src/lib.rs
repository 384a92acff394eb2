//! # bllm-monitor — stability statistics that need no tensors
//!
//! Router load balance for mixture-of-experts layers, ready for the MoE trainer: per-expert load
//! fractions, normalised entropy, coefficient of variation, max/mean load, dropped tokens under
//! a capacity factor, router z-loss, routing flip rate on a probe set, and a [`CollapseTracker`]
//! that turns them into `collapse` verdicts with the default thresholds of the MoE issue.
//! [`spearman`] is the rank correlation the gradient monitors and the KV-cache probe report.
//! (The per-step monitors that need tensors — gradient mismatch, flips, pass-through — live in
//! the trainer, next to the model.)

mod rank;
mod router;

pub use rank::spearman;
pub use router::{
    CollapseThresholds, CollapseTracker, LoadStats, load_stats, routing_flip_rate, z_loss,
};
