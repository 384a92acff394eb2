use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::sign_pm1;
use crate::{Ctx, Result, SteError, schedule};

/// Error Decay Estimator (Qin et al. 2020, IR-Net): the derivative of `k·tanh(t·x)` with a
/// temperature that rises over training, from a wide identity-like gradient to a sharp one.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = k·t·(1 − tanh²(t·x))`, with
///   `t = 10^(log10 t_min + (log10 t_max − log10 t_min)·p)` and `k = max(1/t, 1)`
/// * defaults: `t_min = 0.1`, `t_max = 10`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ede {
    /// Temperature at progress 0.
    #[serde(default = "t_min")]
    pub t_min: f64,
    /// Temperature at progress 1.
    #[serde(default = "t_max")]
    pub t_max: f64,
}

fn t_min() -> f64 {
    0.1
}

fn t_max() -> f64 {
    10.0
}

impl Default for Ede {
    fn default() -> Self {
        Self {
            t_min: 0.1,
            t_max: 10.0,
        }
    }
}

impl Binarizer for Ede {
    const NAME: &'static str = "ede";
    const DESCRIPTION: &'static str = "sign forward, k·t·(1 - tanh²(t·x)) gradient, t rising t_min → t_max (IR-Net, Qin et al. 2020)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        let (t, k) = schedule::ede(self.t_min, self.t_max, ctx.progress);
        crate::fused::sech2_scaled(x, t, k * t)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        let (t, k) = schedule::ede(self.t_min, self.t_max, ctx.progress);
        crate::fused::tanh_scaled(x, t, k)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![
            ("t_min", self.t_min, "temperature at progress 0"),
            ("t_max", self.t_max, "temperature at progress 1"),
        ]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "t_min", self.t_min)?;
        positive(Self::NAME, "t_max", self.t_max)?;
        if self.t_max < self.t_min {
            return Err(SteError::InvalidParam {
                estimator: Self::NAME,
                param: "t_max",
                value: self.t_max,
                expected: "a number >= t_min",
            });
        }
        Ok(())
    }
}
