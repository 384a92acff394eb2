use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels};
use crate::Ctx;
use crate::ops::mean_abs;

/// Absmean ternary quantisation (Ma et al. 2024, BitNet b1.58).
///
/// * forward: `γ = mean|W| + ε`, `q(W) = clamp(round(W / γ), −1, 1) · γ` (round half to even;
///   values in `{−γ, 0, +γ}`), `ε = 1e-5`
/// * backward: `G = 1` (identity STE, as in BitNet)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TernaryAbsmean {}

/// ε added to the absmean scale so an all-zero tensor quantises to zeros, not NaN.
pub const ABSMEAN_EPS: f64 = 1e-5;

impl Binarizer for TernaryAbsmean {
    const NAME: &'static str = "ternary_absmean";
    const DESCRIPTION: &'static str = "{-γ,0,+γ} with γ = mean|W|: clamp(round(W/γ), -1, 1)·γ, identity gradient (BitNet b1.58, Ma et al. 2024)";
    const LEVELS: Levels = Levels::Ternary;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        let gamma = mean_abs(x.clone()).add_scalar(ABSMEAN_EPS);
        x.div(gamma.clone()).round().clamp(-1.0, 1.0).mul(gamma)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.ones_like()
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x
    }
}
