//! [`Scaling`]: the magnitude that multiplies binary weights.

use serde::{Deserialize, Serialize};

/// How binarized weights are scaled (XNOR-Net, Rastegari et al. 2016; Larq's
/// `magnitude_aware_sign`): `W ≈ α · B` with `α = mean|W|`.
///
/// With `learnable = false`, α is recomputed from the latent weights at every forward and
/// detached (no gradient, as in Larq); with `learnable = true`, α is a parameter initialised to
/// `mean|W|` and trained with the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scaling {
    /// No scale: weights are exactly ±1 (or the estimator's own levels).
    #[default]
    None,
    /// One α for the whole matrix.
    PerTensor {
        /// Train α instead of recomputing it.
        #[serde(default)]
        learnable: bool,
    },
    /// One α per output channel (column of the `[d_input, d_output]` weight).
    PerChannel {
        /// Train α instead of recomputing it.
        #[serde(default)]
        learnable: bool,
    },
}

impl Scaling {
    /// Number of scale values for a layer with `d_output` channels.
    pub fn count(&self, d_output: usize) -> usize {
        match self {
            Self::None => 0,
            Self::PerTensor { .. } => 1,
            Self::PerChannel { .. } => d_output,
        }
    }

    /// Whether α is a trained parameter.
    pub fn learnable(&self) -> bool {
        matches!(
            self,
            Self::PerTensor { learnable: true } | Self::PerChannel { learnable: true }
        )
    }
}
