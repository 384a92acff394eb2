use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels};
use crate::Ctx;
use crate::ops::sign_pm1;

/// Plain straight-through estimator (Bengio et al. 2013; BitNet's choice).
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = 1`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {}

impl Binarizer for Identity {
    const NAME: &'static str = "identity";
    const DESCRIPTION: &'static str =
        "sign forward, gradient passed through unchanged (Bengio et al. 2013)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.ones_like()
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x
    }

    fn unit_grad(&self) -> bool {
        true
    }
}
