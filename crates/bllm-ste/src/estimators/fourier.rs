use std::f64::consts::PI;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels, positive};
use crate::ops::{inside, sign_pm1};
use crate::{Ctx, Result, SteError, schedule};

/// Frequency-domain approximation (Xu et al. 2021, FDA-BNN): sign is a square wave, whose
/// Fourier series `(4/π) Σ sin((2i+1)ωx)/(2i+1)` converges to it; the surrogate gradient is the
/// derivative of the first `n` terms, with `n` growing over training so the approximation
/// sharpens.
///
/// * forward: `q(x) = sign(x)`, `sign(0) = +1`
/// * backward: `G(x) = (4ω/π) Σ_{i=0}^{n−1} cos((2i+1)ωx)` inside `|x| ≤ 1`, `0` outside, with
///   `n = floor(n_start + (n_end − n_start)·p)`
/// * defaults: `omega = 0.1`, `n_start = 10`, `n_end = 19`, following the reference
///   implementation (BiBench's `fda.py`: ω = 0.1, `n + 1` terms with `n = 9 + ⌊9·epoch/E⌋`, so
///   10 terms at the start growing to 18–19; gradient zeroed outside `|x| ≤ 1`). With ω = 0.1
///   the square wave has period 2π/0.1 ≈ 63, so inside `[−1, 1]` `G` is a smooth bump
///   (`G(0) = 4ωn/π`: 1.27 at 10 terms, 2.42 at 19) that sharpens as terms are added.
/// * not implemented: FDA's optional noise-adaptation module (a small learned MLP residual
///   added to the forward with a weight decaying to 0); it is a separate layer, not an STE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fourier {
    /// Angular frequency ω of the square wave.
    #[serde(default = "omega")]
    pub omega: f64,
    /// Number of terms at progress 0.
    #[serde(default = "n_start")]
    pub n_start: usize,
    /// Number of terms at progress 1.
    #[serde(default = "n_end")]
    pub n_end: usize,
}

fn omega() -> f64 {
    0.1
}

fn n_start() -> usize {
    10
}

fn n_end() -> usize {
    19
}

impl Default for Fourier {
    fn default() -> Self {
        Self {
            omega: omega(),
            n_start: n_start(),
            n_end: n_end(),
        }
    }
}

impl Binarizer for Fourier {
    const NAME: &'static str = "fourier";
    const DESCRIPTION: &'static str = "sign forward, derivative of the first n Fourier terms of the square wave, n growing (FDA, Xu et al. 2021)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        sign_pm1(x)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        let n = schedule::fourier_terms(self.n_start, self.n_end, ctx.progress);
        let mut sum = x.zeros_like();
        for i in 0..n {
            sum = sum + x.clone().mul_scalar((2 * i + 1) as f64 * self.omega).cos();
        }
        sum.mul_scalar(4.0 * self.omega / PI).mul(inside(x, 1.0))
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        // (4/π) Σ sin((2i+1)ωx)/(2i+1) on [−1, 1], constant beyond.
        let n = schedule::fourier_terms(self.n_start, self.n_end, ctx.progress);
        let c = x.clamp(-1.0, 1.0);
        let mut sum = c.zeros_like();
        for i in 0..n {
            let k = (2 * i + 1) as f64;
            sum = sum + c.clone().mul_scalar(k * self.omega).sin().div_scalar(k);
        }
        sum.mul_scalar(4.0 / PI)
    }

    fn params(&self) -> Vec<(&'static str, f64, &'static str)> {
        vec![
            (
                "omega",
                self.omega,
                "angular frequency ω of the square wave",
            ),
            (
                "n_start",
                self.n_start as f64,
                "Fourier terms at progress 0",
            ),
            ("n_end", self.n_end as f64, "Fourier terms at progress 1"),
        ]
    }

    fn validate(&self) -> Result<()> {
        positive(Self::NAME, "omega", self.omega)?;
        if self.n_start == 0 || self.n_end < self.n_start {
            return Err(SteError::InvalidParam {
                estimator: Self::NAME,
                param: "n_end",
                value: self.n_end as f64,
                expected: "1 <= n_start <= n_end",
            });
        }
        Ok(())
    }
}
