use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::sign_pm1;
use crate::{Ctx, Result};

/// SwishSign (Darabi et al. 2018, BNN+; Larq's `swish_sign`): the derivative of
/// `F(x) = 2σ(βx)(1 + βx(1 − σ(βx))) − 1`.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))`; `G(0) = β`, negative lobes for
///   `|x| > ≈2.4/β`, → 0 far out
/// * defaults: `beta = 5`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwishSign {
    /// Sharpness β.
    #[serde(default = "five")]
    pub beta: f64,
}

fn five() -> f64 {
    5.0
}

impl Default for SwishSign {
    fn default() -> Self {
        Self { beta: 5.0 }
    }
}

impl Binarizer for SwishSign {
    const NAME: &'static str = "swish_sign";
    const DESCRIPTION: &'static str =
        "sign forward, SignSwish gradient with sharpness beta (BNN+, Darabi et al. 2018)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        let bx = x.mul_scalar(self.beta);
        // cosh overflows to +inf far from 0, where G → 0: the quotient is then exactly ±0.
        let num = bx
            .clone()
            .mul(bx.clone().div_scalar(2.0).tanh())
            .neg()
            .add_scalar(2.0);
        num.mul_scalar(self.beta).div(bx.cosh().add_scalar(1.0))
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        // 2σ(βx)(1 + βx(1 − σ(βx))) − 1
        let bx = x.mul_scalar(self.beta);
        let s = burn::tensor::activation::sigmoid(bx.clone());
        let inner = bx * s.clone().neg().add_scalar(1.0);
        (s.mul_scalar(2.0) * inner.add_scalar(1.0)).sub_scalar(1.0)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![("beta", self.beta, "sharpness β")]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "beta", self.beta)
    }
}
