//! # bllm-nn — binary layers for Burn
//!
//! Burn's `XConfig → init → X` pattern, one layer per file:
//!
//! * [`BinaryLinear`]: latent float weights binarized by any [`bllm_ste::Estimator`], optional
//!   mean-centring, scaling ([`Scaling`]: none, per tensor or per output channel, detached or
//!   learnable), an optional activation quantizer ([`ActQuant`]: sign with any estimator and an
//!   optional learnable threshold (ReActNet RSign), BitNet per-token int8, BiT elastic), bias.
//! * [`BitLinear`]: BitNet b1.58 (RMS norm, per-token absmax int8 activations, absmean ternary
//!   weights).
//! * [`Bop`]: the Bop optimizer for binary weights, and [`MixedOptimizer`] to run it beside
//!   Adam/AdamW on the float parameters of the same model.
//! * [`HashHead`]: a learned projection from float embeddings to k-bit retrieval codes, with
//!   the [`listwise_loss`] / [`similarity_loss`] objectives and the [`bit_balance`] /
//!   [`decorrelation`] regularisers.
//! * [`ByteLm`]: a decoder-only byte-level transformer whose projections ([`Proj`]) are each
//!   float, 1-bit or BitNet b1.58, with SubLN, BiBERT {0, 1} attention, RSign and elastic
//!   activation options ([`ByteLmConfig`]).
//! * [`Moe`]: a mixture-of-experts MLP with top-k routing, capacity factor, Switch auxiliary
//!   loss / z-loss / auxiliary-loss-free bias, and float or binary routers ([`RouterKind`]).
//! * [`Adapter`]: float LoRA, binary LoRA and BitDelta deltas on frozen projections, with
//!   [`merge`] / [`unmerge`], export of their bits and byte accounting.
//! * [`summary`]: Larq-style memory accounting per layer — parameters per precision and bytes
//!   that count scales, padding to words and metadata.
//!
//! Binary weights export in the code contract layout of `bllm-codes`
//! ([`BinaryLinear::packed_weights`]): one row per output channel, bit `j` = sign of the weight
//! from input `j`.

mod act;
mod adapter;
mod binary_linear;
mod bit_linear;
mod bop;
mod error;
mod hash_head;
mod init;
mod moe;
mod proj;
mod scaling;
pub mod summary;
mod transformer;

pub use act::ActQuant;
pub use adapter::{Adapter, AdapterBits, AdapterConfig, AdapterKind, merge, unmerge};
pub use binary_linear::{BinaryLinear, BinaryLinearConfig, BinaryWeights};
pub use bit_linear::{BitLinear, BitLinearConfig, BitLinearStats};
pub use bop::{Bop, BopState, MixedOptimizer, binary_param_ids};
pub use error::{NnError, Result};
pub use hash_head::{
    HashHead, HashHeadConfig, HeadForward, bit_balance, decorrelation, listwise_loss,
    similarity_loss,
};
pub use init::{kaiming_uniform, with_deterministic_ids};
pub use moe::{Balancing, Moe, MoeConfig, MoeOutput, RouterKind};
pub use proj::{ActBinarization, BinaryOptions, Proj, ProjKind, RmsGain};
pub use scaling::{Scaling, svid_rank1};
pub use summary::{LayerSummary, Summarize, Summary, summary};
pub use transformer::{
    Attention, AttentionKind, Block, ByteEmbedding, ByteLm, ByteLmConfig, LmStats, MoeTrace,
    Projections, QuantRef,
};
