//! [`ActQuant`]: how a layer quantizes its input activations.

use bllm_ste::Estimator;
use serde::{Deserialize, Serialize};

/// Input activation quantizer of a [`crate::BinaryLinear`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActQuant {
    /// Float activations (binary-weight-only layer).
    #[default]
    None,
    /// `sign(x − b)` through any estimator. With `learnable_threshold`, `b` is a trained
    /// per-input-feature threshold initialised to 0 (ReActNet RSign, Liu et al. 2020);
    /// otherwise `b = 0`.
    Sign {
        /// The estimator applied to `x − b`.
        #[serde(default)]
        estimator: Estimator,
        /// Learn a per-feature threshold `b`.
        #[serde(default)]
        learnable_threshold: bool,
    },
    /// Per-token absmax int8 (BitNet): `round(x · 127 / max|x|)` with an identity STE.
    Int8Absmax,
    /// Elastic binarization (Liu et al. 2022, BiT): `α · q((x − β)/α)` with learnable scalar
    /// scale α (init 1) and offset β (init 0); `q` is `round(clip(u, 0, 1))` ({0, α} outputs) or,
    /// with `signed`, the clipped-STE sign (±α). Autodiff through the clip and the
    /// straight-through rounding gives α the LSQ-style gradient `q(u) − u·1[u inside]`.
    Elastic {
        /// ±α outputs instead of {0, α}.
        #[serde(default)]
        signed: bool,
    },
}
