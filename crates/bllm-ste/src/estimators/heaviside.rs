use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::{heaviside, inside};
use crate::{Ctx, Result};

/// Heaviside step with a clipped STE (Larq's `ste_heaviside`): `{0, 1}` outputs, for masks and
/// {0,1} attention (BiBERT).
///
/// * forward: `q(x) = 1` if `x ≥ 0` else `0`
/// * backward: `G(x) = 1[|x| ≤ c]`
/// * defaults: `clip = 1`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heaviside {
    /// Pass-through half-width `c`.
    #[serde(default = "one")]
    pub clip: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Heaviside {
    fn default() -> Self {
        Self { clip: 1.0 }
    }
}

impl Binarizer for Heaviside {
    const NAME: &'static str = "heaviside";
    const DESCRIPTION: &'static str =
        "{0,1} step forward, gradient 1 inside |x| <= clip (larq ste_heaviside)";
    const LEVELS: Levels = Levels::ZeroOne;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        heaviside(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        inside(x, self.clip)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.clamp(-self.clip, self.clip).add_scalar(0.5)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![("clip", self.clip, "pass-through half-width c")]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "clip", self.clip)
    }
}
