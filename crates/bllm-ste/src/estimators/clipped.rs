use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::{inside, sign_pm1};
use crate::{Ctx, Result};

/// Clipped STE (Hubara et al. 2016, BNN; Larq's `ste_sign`).
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = 1[|x| ≤ c]`
/// * defaults: `clip = 1`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clipped {
    /// Pass-through half-width `c`.
    #[serde(default = "one")]
    pub clip: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Clipped {
    fn default() -> Self {
        Self { clip: 1.0 }
    }
}

impl Binarizer for Clipped {
    const NAME: &'static str = "clipped";
    const DESCRIPTION: &'static str =
        "sign forward, gradient 1 inside |x| <= clip (Hubara et al. 2016; larq ste_sign)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        inside(x, self.clip)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.clamp(-self.clip, self.clip)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![("clip", self.clip, "pass-through half-width c")]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "clip", self.clip)
    }
}
