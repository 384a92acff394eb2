use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels};
use crate::Ctx;
use crate::ops::sign_pm1;

/// ApproxSign (Liu et al. 2018, Bi-Real Net; Larq's `approx_sign`): the derivative of the
/// piecewise quadratic `F(x) = 2x ± x²` that approximates sign on `[−1, 1]`.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = max(0, 2 − 2|x|)` (that is `2 − 2|x|` for `|x| ≤ 1`, else 0)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproxSign {}

impl Binarizer for ApproxSign {
    const NAME: &'static str = "approx_sign";
    const DESCRIPTION: &'static str =
        "sign forward, triangular gradient 2 - 2|x| on |x| <= 1 (Bi-Real Net, Liu et al. 2018)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.abs().mul_scalar(-2.0).add_scalar(2.0).clamp_min(0.0)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        // 2x − x|x| on [−1, 1], ±1 beyond.
        let c = x.clamp(-1.0, 1.0);
        c.clone().mul_scalar(2.0) - c.clone() * c.abs()
    }
}
