use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::{inside, sign_pm1};
use crate::{Ctx, Result, SteError, schedule};

/// Rectified STE (Wu et al. 2023, ReSTE): the derivative of the power function
/// `sign(x)·|x|^(1/o)`, with the power `o` rising over training so the estimator moves from
/// identity (stable) towards sign (consistent). The blow-up near 0 is capped.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = (1/o)·|x|^((1−o)/o)` for `m < |x| ≤ t`; the constant `m^(1/o) / m` for
///   `|x| ≤ m` (the secant slope of the power function on `[0, m]`); `0` for `|x| > t`;
///   `o = 1 + (o_end − 1)(1 − cos(π p / 2))`
/// * defaults: `t = 1.5`, `o_end = 3`, `m = 0.1`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reste {
    /// Clip threshold `t`: no gradient beyond.
    #[serde(default = "t")]
    pub t: f64,
    /// Final power `o_end` (the power starts at 1).
    #[serde(default = "o_end")]
    pub o_end: f64,
    /// Width `m` of the constant-gradient region around 0.
    #[serde(default = "m")]
    pub m: f64,
}

fn t() -> f64 {
    1.5
}

fn o_end() -> f64 {
    3.0
}

fn m() -> f64 {
    0.1
}

impl Default for Reste {
    fn default() -> Self {
        Self {
            t: 1.5,
            o_end: 3.0,
            m: 0.1,
        }
    }
}

impl Binarizer for Reste {
    const NAME: &'static str = "reste";
    const DESCRIPTION: &'static str =
        "sign forward, gradient of |x|^(1/o) with o rising 1 → o_end (ReSTE, Wu et al. 2023)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        let o = schedule::reste_power(self.o_end, ctx.progress);
        let a = x.abs();
        let near = a.clone().lower_equal_elem(self.m);
        // Clamp below so the power is finite everywhere; the masked region is replaced anyway.
        let power = a
            .clone()
            .clamp_min(self.m)
            .powf_scalar((1.0 - o) / o)
            .div_scalar(o);
        let constant = self.m.powf(1.0 / o) / self.m;
        power.mask_fill(near, constant).mul(inside(a, self.t))
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        // x·m^(1/o)/m inside |x| ≤ m, sign(x)|x|^(1/o) up to t, constant beyond.
        let o = schedule::reste_power(self.o_end, ctx.progress);
        let c = x.clone().clamp(-self.t, self.t);
        let a = c.clone().abs().clamp_min(self.m);
        let outer = crate::ops::sign_pm1(crate::ops::constant(c.clone())) * a.powf_scalar(1.0 / o);
        let linear = c.clone().mul_scalar(self.m.powf(1.0 / o) / self.m);
        let near = crate::ops::constant(c.abs()).lower_equal_elem(self.m);
        outer.mask_where(near, linear)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![
            ("t", self.t, "clip threshold: no gradient beyond |x| > t"),
            ("o_end", self.o_end, "final power o (starts at 1)"),
            ("m", self.m, "constant-gradient region |x| <= m"),
        ]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "t", self.t)?;
        positive(Self::NAME, "m", self.m)?;
        if !(self.o_end.is_finite() && self.o_end >= 1.0) {
            return Err(SteError::InvalidParam {
                estimator: Self::NAME,
                param: "o_end",
                value: self.o_end,
                expected: "a finite number >= 1",
            });
        }
        Ok(())
    }
}
