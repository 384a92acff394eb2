use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::{mean_abs, sign_pm1};
use crate::{Ctx, Result};

/// Threshold ternary quantisation (Li et al. 2016, Ternary Weight Networks).
///
/// * forward: `Δ = δ · mean|W|`; `q(W) = α · sign(W) · 1[|W| > Δ]` with
///   `α = mean(|W| over |W| > Δ)` (TWN's optimal scale; 0 if nothing exceeds Δ)
/// * backward: `G = 1` (identity STE)
/// * defaults: `delta = 0.7` (TWN's approximation of the optimal threshold)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TernaryThreshold {
    /// Threshold factor δ: `Δ = δ · mean|W|`.
    #[serde(default = "delta")]
    pub delta: f64,
}

fn delta() -> f64 {
    0.7
}

impl Default for TernaryThreshold {
    fn default() -> Self {
        Self { delta: 0.7 }
    }
}

impl Binarizer for TernaryThreshold {
    const NAME: &'static str = "ternary_threshold";
    const DESCRIPTION: &'static str = "{-α,0,+α}: zero below Δ = delta·mean|W|, α = mean of the rest, identity gradient (TWN, Li et al. 2016)";
    const LEVELS: Levels = Levels::Ternary;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        let a = x.clone().abs();
        let threshold = mean_abs(x.clone()).mul_scalar(self.delta);
        let keep = a.clone().greater(threshold).float();
        let count = keep.clone().sum().unsqueeze::<D>().clamp_min(1.0);
        let alpha = a.mul(keep.clone()).sum().unsqueeze::<D>().div(count);
        sign_pm1(x).mul(keep).mul(alpha)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.ones_like()
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![("delta", self.delta, "threshold factor: Δ = delta·mean|W|")]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "delta", self.delta)
    }
}
