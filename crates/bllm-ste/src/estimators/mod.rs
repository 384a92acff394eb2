//! One file per estimator. Each type implements [`Binarizer`]: its forward value `q(x)` and its
//! surrogate gradient factor `G(x)`, both computed on detached input.
//!
//! To add an estimator: write one file here implementing [`Binarizer`], add one arm to
//! [`crate::Estimator`] (and to its `ALL` list); the shared test suite in `estimator.rs` then
//! checks its forward at 0, that autodiff returns exactly `G` on a grid, its schedule and its
//! serde round trip.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::{Ctx, Result};

mod approx_sign;
mod clipped;
mod ede;
mod fourier;
mod heaviside;
mod identity;
mod reste;
mod stochastic;
mod swish_sign;
mod tanh_onebit;
mod ternary_absmean;
mod ternary_threshold;

pub use approx_sign::ApproxSign;
pub use clipped::Clipped;
pub use ede::Ede;
pub use fourier::Fourier;
pub use heaviside::Heaviside;
pub use identity::Identity;
pub use reste::Reste;
pub use stochastic::Stochastic;
pub use swish_sign::SwishSign;
pub use tanh_onebit::TanhOnebit;
pub use ternary_absmean::TernaryAbsmean;
pub use ternary_threshold::TernaryThreshold;

/// The values a binarizer outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Levels {
    /// `{−1, +1}` (sign with sign(0) = +1).
    Sign,
    /// `{0, 1}`.
    ZeroOne,
    /// `{−α, 0, +α}` with a scale α computed from the tensor.
    Ternary,
}

/// A binarizer: forward `q(x)` and surrogate gradient `G(x)`.
pub trait Binarizer {
    /// Snake-case name, as in recipes.
    const NAME: &'static str;
    /// One-line description with the source paper.
    const DESCRIPTION: &'static str;
    /// Output values.
    const LEVELS: Levels;

    /// Forward value `q(x)` (no gradient).
    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D>;

    /// Surrogate gradient factor `G(x)` at progress `ctx.progress` (no gradient).
    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D>;

    /// Smooth surrogate `F(x)` with `F' = G` and `F(0)` at the middle of the output levels,
    /// built from differentiable ops (autodiff gives its derivative). Used by the shadow
    /// gradient-mismatch monitor.
    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D>;

    /// Whether `G(x) = 1` everywhere, so the gradient passes through unchanged:
    /// [`crate::Estimator::apply`] then builds no `G` tensor and multiplies by nothing.
    fn unit_grad(&self) -> bool {
        false
    }

    /// Parameter names, values and meaning, for `bllm ste list`.
    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        Vec::new()
    }

    /// Checks parameter ranges.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Checks `value > 0` and finite.
pub(crate) fn positive(est: &'static str, param: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(crate::SteError::InvalidParam {
            estimator: est,
            param,
            value,
            expected: "a finite number > 0",
        })
    }
}
