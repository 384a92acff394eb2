use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels};
use crate::Ctx;
use crate::ops::sign_pm1;

/// OneBit's estimator (Xu et al. 2024, OneBit): the tanh derivative with a small floor so the
/// gradient never vanishes.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = 1.001 − tanh²(x)`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TanhOnebit {}

impl Binarizer for TanhOnebit {
    const NAME: &'static str = "tanh_onebit";
    const DESCRIPTION: &'static str =
        "sign forward, 1.001 - tanh²(x) gradient (OneBit, Xu et al. 2024)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        crate::fused::sech2_scaled(x, 1.0, 1.0).add_scalar(0.001)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        crate::fused::tanh(x.clone()) + x.mul_scalar(0.001)
    }
}
