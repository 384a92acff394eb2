//! [`Estimator`]: every binarizer, selected by name from recipes.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::estimators::{self as e, Binarizer, Levels};
use crate::{Ctx, Result, SteError, ops};

/// A binarizer and its straight-through estimator, as written in recipes:
/// `{ kind = "swish_sign", beta = 5.0 }`. Unknown keys are rejected; omitted parameters take
/// the defaults documented on each type in [`crate::estimators`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    /// See [`e::Identity`].
    Identity(e::Identity),
    /// See [`e::Clipped`].
    Clipped(e::Clipped),
    /// See [`e::ApproxSign`].
    ApproxSign(e::ApproxSign),
    /// See [`e::SwishSign`].
    SwishSign(e::SwishSign),
    /// See [`e::Ede`].
    Ede(e::Ede),
    /// See [`e::Reste`].
    Reste(e::Reste),
    /// See [`e::Fourier`].
    Fourier(e::Fourier),
    /// See [`e::TanhOnebit`].
    TanhOnebit(e::TanhOnebit),
    /// See [`e::Stochastic`].
    Stochastic(e::Stochastic),
    /// See [`e::Heaviside`].
    Heaviside(e::Heaviside),
    /// See [`e::TernaryAbsmean`].
    TernaryAbsmean(e::TernaryAbsmean),
    /// See [`e::TernaryThreshold`].
    TernaryThreshold(e::TernaryThreshold),
}

/// Calls `$body` with `$b` bound to the estimator inside any variant.
macro_rules! dispatch {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            Estimator::Identity($b) => $body,
            Estimator::Clipped($b) => $body,
            Estimator::ApproxSign($b) => $body,
            Estimator::SwishSign($b) => $body,
            Estimator::Ede($b) => $body,
            Estimator::Reste($b) => $body,
            Estimator::Fourier($b) => $body,
            Estimator::TanhOnebit($b) => $body,
            Estimator::Stochastic($b) => $body,
            Estimator::Heaviside($b) => $body,
            Estimator::TernaryAbsmean($b) => $body,
            Estimator::TernaryThreshold($b) => $body,
        }
    };
}

/// Associated constants of the binarizer inside a variant.
fn consts<T: Binarizer>(_: &T) -> (&'static str, &'static str, Levels) {
    (T::NAME, T::DESCRIPTION, T::LEVELS)
}

/// One parameter of an estimator, for listings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamInfo {
    /// Name as in recipes.
    pub name: &'static str,
    /// Value (the default, for [`Estimator::all`]).
    pub value: f64,
    /// Meaning.
    pub description: &'static str,
}

/// What `bllm ste list` prints about an estimator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EstimatorInfo {
    /// Name as in recipes.
    pub name: &'static str,
    /// One line with the source paper.
    pub description: &'static str,
    /// Output values.
    pub levels: Levels,
    /// Parameters with their values.
    pub params: Vec<ParamInfo>,
}

impl Estimator {
    /// Every estimator with its default parameters, in documentation order.
    pub fn all() -> Vec<Estimator> {
        vec![
            Self::Identity(Default::default()),
            Self::Clipped(Default::default()),
            Self::ApproxSign(Default::default()),
            Self::SwishSign(Default::default()),
            Self::Ede(Default::default()),
            Self::Reste(Default::default()),
            Self::Fourier(Default::default()),
            Self::TanhOnebit(Default::default()),
            Self::Stochastic(Default::default()),
            Self::Heaviside(Default::default()),
            Self::TernaryAbsmean(Default::default()),
            Self::TernaryThreshold(Default::default()),
        ]
    }

    /// The estimator called `name`, with default parameters.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::all()
            .into_iter()
            .find(|e| e.name() == name)
            .ok_or_else(|| SteError::UnknownEstimator(name.to_owned()))
    }

    /// Snake-case name, as in recipes.
    pub fn name(&self) -> &'static str {
        dispatch!(self, b => consts(b).0)
    }

    /// One-line description with the source paper.
    pub fn description(&self) -> &'static str {
        dispatch!(self, b => consts(b).1)
    }

    /// The values the forward produces.
    pub fn levels(&self) -> Levels {
        dispatch!(self, b => consts(b).2)
    }

    /// Name, description, levels and parameters.
    pub fn info(&self) -> EstimatorInfo {
        let params = dispatch!(self, b => b.params());
        EstimatorInfo {
            name: self.name(),
            description: self.description(),
            levels: self.levels(),
            params: params
                .into_iter()
                .map(|(name, value, description)| ParamInfo {
                    name,
                    value,
                    description,
                })
                .collect(),
        }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        dispatch!(self, b => b.validate())
    }

    /// Forward value `q(x)` only (no gradient path).
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        dispatch!(self, b => b.forward(x, ctx))
    }

    /// Surrogate gradient factor `G(x)` at `ctx.progress` (no gradient path).
    pub fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        dispatch!(self, b => b.grad(x, ctx))
    }

    /// Smooth surrogate `F(x)` (`F' = G`), differentiable through autodiff.
    pub fn surrogate<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        ctx: &Ctx,
    ) -> Tensor<B, D> {
        dispatch!(self, b => b.surrogate(x, ctx))
    }

    /// The binarizer as an autodiff op: forward exactly `q(x)`, gradient exactly
    /// `upstream · G(x)`. In a shadow context ([`Ctx::shadow`]) it computes `F(x)` or `x`
    /// instead, for the gradient-mismatch monitor.
    pub fn apply<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        match ctx.shadow {
            crate::Shadow::Off => {}
            crate::Shadow::Surrogate => return self.surrogate(x, ctx),
            crate::Shadow::Identity => return x,
        }
        let xd = ops::constant(x.clone());
        let q = self.forward(xd.clone(), ctx);
        if !B::ad_enabled(&x.device()) {
            return q;
        }
        if dispatch!(self, b => b.unit_grad()) {
            return ops::pass_through(x, q);
        }
        let g = self.grad(xd, ctx);
        ops::inject(x, q, g)
    }

    /// Fraction of `x` where `G(x) ≠ 0` (the pass-through region), for monitors.
    pub fn pass_through_fraction<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        ctx: &Ctx,
    ) -> f64 {
        let g = self.grad(ops::constant(x), ctx);
        let n = g.shape().num_elements().max(1) as f64;
        let nonzero = g.not_equal_elem(0.0).float().sum().into_scalar();
        f64::from(burn::tensor::ElementConversion::elem::<f32>(nonzero)) / n
    }
}

impl Default for Estimator {
    /// The clipped STE, the most common default (Larq's `ste_sign`).
    fn default() -> Self {
        Self::Clipped(Default::default())
    }
}

#[cfg(test)]
mod tests;
