//! Quantised sites and the generic monitors that watch them.
//!
//! A [`Site`] is one place where a model turns floats into levels: a layer's latent weights
//! (binary or ternary, [`Site::Weights`]) or a head's output codes ([`Site::Codes`]). A kind
//! lists its sites ([`crate::Kind::sites`]); the monitors here then work for it without a line
//! of kind code:
//!
//! * [`GradientMismatch`] (before the update): `shadow_cosine` — per site, the cosine (and
//!   norm ratio) between the STE gradient of the site's parameter and its gradient under
//!   [`crate::Kind::shadow_loss`]; `finite_difference` — sign agreement and Spearman
//!   correlation of central differences through the real binarized forward with `⟨g, u⟩` for
//!   seeded ±1 directions ([`crate::monitor::fd_agreement`]; weight sites, kinds that
//!   implement [`crate::Kind::perturbed_loss`]).
//! * [`QuantChecks`] (after the update): `flip_ratio` — fraction of levels changed since the
//!   last check (signs, or ternary levels); `pass_through` — fraction of values where the
//!   estimator's surrogate gradient is non-zero; `quant_error` — `‖W − Q(W)‖ / ‖W‖` for
//!   weights, `‖h − sign(u)‖ / ‖sign(u)‖` for codes.

use bllm_nn::{HashHead, HeadForward, QuantRef};
use bllm_ste::{Ctx, Estimator};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde_json::Value;

use crate::optim::to_vec;
use crate::trainer::{After, Before, Kind, Monitor, Readings};
use crate::{Result, TrainError};

/// Computes the values a [`Site::Codes`] binarizes.
pub type CodeValues<'a, B> =
    Box<dyn Fn() -> Result<Tensor<<B as AutodiffBackend>::InnerBackend, 2>> + 'a>;

/// One quantised place of a model.
pub enum Site<'a, B: AutodiffBackend> {
    /// A layer's latent weights, quantised by its estimator.
    Weights {
        /// Name in logs (`block0.q`, `binary0`).
        name: String,
        /// The layer.
        layer: QuantRef<'a, B>,
    },
    /// Output codes of a head: values `u` (scaled projections) binarized by `estimator`.
    Codes {
        /// Name in logs.
        name: String,
        /// The parameter whose gradient the shadow cosine compares (the projection).
        param: Tensor<B, 2>,
        /// The values before binarization, on a fixed probe set.
        values: CodeValues<'a, B>,
        /// `values()` once computed (start it empty: `Default::default()`), so the monitors
        /// of one step share one evaluation.
        cache: std::cell::OnceCell<Tensor<B::InnerBackend, 2>>,
        /// The estimator.
        estimator: Estimator,
        /// The training forward (surrogate or sign).
        mode: HeadForward,
    },
}

impl<B: AutodiffBackend> Site<'_, B> {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Self::Weights { name, .. } | Self::Codes { name, .. } => name,
        }
    }

    /// The parameter the gradient monitors read.
    fn param(&self) -> Tensor<B, 2> {
        match self {
            Self::Weights { layer, .. } => layer.latent().val(),
            Self::Codes { param, .. } => param.clone(),
        }
    }

    /// The values a [`Site::Codes`] binarizes, computed on first use.
    fn code_values(
        values: &CodeValues<'_, B>,
        cache: &std::cell::OnceCell<Tensor<B::InnerBackend, 2>>,
    ) -> Result<Tensor<B::InnerBackend, 2>> {
        if let Some(v) = cache.get() {
            return Ok(v.clone());
        }
        let v = values()?;
        Ok(cache.get_or_init(|| v).clone())
    }

    /// The current levels, one per value: sign (±1) or ternary level (−1, 0, 1).
    fn levels(&self) -> Result<Vec<i8>> {
        let sign = |w: f32| if w >= 0.0 { 1 } else { -1 };
        Ok(match self {
            Self::Weights { layer, .. } if layer.ternary() => {
                let e = layer.effective_weight(&Ctx::default()).inner();
                to_vec(e)
                    .into_iter()
                    .map(|w| if w == 0.0 { 0 } else { sign(w) })
                    .collect()
            }
            Self::Weights { layer, .. } => to_vec(layer.latent().val().inner())
                .into_iter()
                .map(sign)
                .collect(),
            Self::Codes { values, cache, .. } => to_vec(Self::code_values(values, cache)?)
                .into_iter()
                .map(sign)
                .collect(),
        })
    }

    /// Fraction of values where the estimator passes gradient at `ctx`.
    fn pass_through(&self, ctx: &Ctx) -> Result<f64> {
        Ok(match self {
            Self::Weights { layer, .. } => layer
                .estimator()
                .pass_through_fraction(layer.latent().val().inner(), ctx),
            Self::Codes {
                values,
                cache,
                estimator,
                ..
            } => estimator.pass_through_fraction(Self::code_values(values, cache)?, ctx),
        })
    }

    /// Relative quantisation error at `ctx`.
    fn quant_error(&self, ctx: &Ctx) -> Result<f64> {
        let rel = |num: Tensor<B::InnerBackend, 2>, den: Tensor<B::InnerBackend, 2>| {
            let n: f32 = num.square().sum().sqrt().into_scalar().elem();
            let d: f32 = den.square().sum().sqrt().into_scalar().elem();
            f64::from(n) / f64::from(d).max(1e-12)
        };
        Ok(match self {
            Self::Weights { layer, .. } => {
                let w = layer.latent().val().inner();
                let e = layer.effective_weight(ctx).inner();
                rel(w.clone() - e, w)
            }
            Self::Codes {
                values,
                cache,
                estimator,
                mode,
                ..
            } => {
                let u = Self::code_values(values, cache)?;
                let h = HashHead::<B::InnerBackend>::codes(u.clone(), estimator, *mode, ctx)?;
                let q = bllm_ste::ops::sign_pm1(u);
                rel(h - q.clone(), q)
            }
        })
    }
}

/// The generic monitors, in the order they run.
pub(crate) fn generic_monitors<B: AutodiffBackend, K: Kind<B>>(
    kind: &K,
    model: &K::Model,
) -> Vec<Box<dyn Monitor<B, K>>> {
    vec![
        Box::new(GradientMismatch),
        Box::new(QuantChecks::new(kind, model)),
    ]
}

/// `shadow_cosine` and `finite_difference` on every site, before the update.
pub struct GradientMismatch;

impl<B: AutodiffBackend, K: Kind<B>> Monitor<B, K> for GradientMismatch {
    fn name(&self) -> &'static str {
        "gradient_mismatch"
    }

    fn before_update(&mut self, cx: &Before<'_, B, K>, out: &mut Readings) -> Result<()> {
        let (shadow, fd) = (cx.due("shadow_cosine"), cx.due("finite_difference"));
        if !shadow && !fd {
            return Ok(());
        }
        let sites = cx.kind.sites(cx.model);
        if sites.is_empty() {
            return Ok(());
        }
        let g_ste: Vec<Tensor<B::InnerBackend, 2>> = sites
            .iter()
            .map(|s| {
                let p = s.param();
                p.grad(cx.grads).unwrap_or_else(|| p.inner().zeros_like())
            })
            .collect();
        if shadow {
            let gs = cx.kind.shadow_loss(cx.model, cx.batch, cx.ctx)?.backward();
            let mut cosines = Vec::new();
            for (s, g) in sites.iter().zip(&g_ste) {
                let h = s.param().grad(&gs).unwrap_or_else(|| g.zeros_like());
                let dot: f32 = (g.clone() * h.clone()).sum().into_scalar().elem();
                let ng: f32 = g.clone().square().sum().sqrt().into_scalar().elem();
                let nh: f32 = h.square().sum().sqrt().into_scalar().elem();
                let cos = f64::from(dot) / (f64::from(ng) * f64::from(nh)).max(1e-30);
                out.metric(format!("shadow_cosine/{}", s.name()), cos);
                out.metric(
                    format!("shadow_norm_ratio/{}", s.name()),
                    f64::from(ng) / f64::from(nh).max(1e-30),
                );
                cosines.push(cos);
            }
            let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
            out.check("shadow_cosine", mean, false);
        }
        let latents: Vec<Tensor<B::InnerBackend, 2>> = sites
            .iter()
            .filter_map(|s| match s {
                Site::Weights { layer, .. } => Some(layer.latent().val().inner()),
                Site::Codes { .. } => None,
            })
            .collect();
        if fd && latents.len() == sites.len() {
            let base = burn::module::AutodiffModule::valid(cx.model);
            let seed = cx.recipe.seed;
            let mut unsupported = false;
            let (agree, rho, per) = crate::monitor::fd_agreement(
                &latents,
                &g_ste,
                cx.recipe.monitors.fd_directions,
                crate::rng::stream(seed, crate::rng::FINITE_DIFFERENCE, cx.step as u64),
                |li, w| {
                    cx.kind
                        .perturbed_loss(&base, cx.batch, cx.ctx, li, w)
                        .unwrap_or_else(|| {
                            unsupported = true;
                            0.0
                        })
                },
            );
            if !unsupported {
                for (s, a) in sites.iter().zip(per) {
                    out.metric(format!("fd_sign_agreement/{}", s.name()), a);
                }
                out.metric("fd_sign_agreement", agree);
                out.metric("fd_spearman", rho);
                out.checks.push(("finite_difference", agree, false));
            }
        }
        Ok(())
    }
}

/// `flip_ratio`, `pass_through` and `quant_error` on every site (the mean is checked; with more
/// than one site each site's value is logged too, as `flip_ratio/<site>`), after the update. Its
/// state (the levels at the last flip check, two bits per value) is saved in checkpoints.
pub struct QuantChecks {
    last: Vec<Vec<u64>>,
}

/// Levels packed two bits per value (`level + 1`), 32 values per word.
fn pack_levels(levels: &[i8]) -> Vec<u64> {
    let mut out = vec![0u64; levels.len().div_ceil(32)];
    for (i, &l) in levels.iter().enumerate() {
        out[i / 32] |= ((l + 1) as u64 & 3) << (2 * (i % 32));
    }
    out
}

/// Values whose 2-bit level differs between `a` and `b`.
fn changed(a: &[u64], b: &[u64]) -> usize {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x ^ y;
            // One bit per 2-bit field that differs.
            ((d | (d >> 1)) & 0x5555_5555_5555_5555).count_ones() as usize
        })
        .sum()
}

impl QuantChecks {
    /// Starts from the model's current levels (sites that fail to report levels start empty).
    pub fn new<B: AutodiffBackend, K: Kind<B>>(kind: &K, model: &K::Model) -> Self {
        Self {
            last: kind
                .sites(model)
                .iter()
                .map(|s| s.levels().map(|l| pack_levels(&l)).unwrap_or_default())
                .collect(),
        }
    }
}

impl<B: AutodiffBackend, K: Kind<B>> Monitor<B, K> for QuantChecks {
    fn name(&self) -> &'static str {
        "quant"
    }

    fn after_update(&mut self, cx: &After<'_, B, K>, out: &mut Readings) -> Result<()> {
        let due = |n: &str| cx.due(n);
        if !(due("flip_ratio") || due("pass_through") || due("quant_error")) {
            return Ok(());
        }
        let sites = cx.kind.sites(cx.model);
        if sites.is_empty() {
            return Ok(());
        }
        let now = Ctx::at(cx.done as f64 / cx.total as f64);
        let n = sites.len() as f64;
        if due("flip_ratio") {
            let (mut flips, mut count) = (0usize, 0usize);
            let mut packed = Vec::with_capacity(sites.len());
            for (i, s) in sites.iter().enumerate() {
                let l = s.levels()?;
                let p = pack_levels(&l);
                if let Some(prev) = self.last.get(i) {
                    let f = changed(&p, prev);
                    flips += f;
                    if sites.len() > 1 {
                        out.metric(
                            format!("flip_ratio/{}", s.name()),
                            f as f64 / l.len().max(1) as f64,
                        );
                    }
                }
                count += l.len();
                packed.push(p);
            }
            self.last = packed;
            out.check("flip_ratio", flips as f64 / count.max(1) as f64, true);
        }
        if due("pass_through") {
            let mut sum = 0.0;
            for s in &sites {
                let v = s.pass_through(&now)?;
                if sites.len() > 1 {
                    out.metric(format!("pass_through/{}", s.name()), v);
                }
                sum += v;
            }
            out.check("pass_through", sum / n, false);
        }
        if due("quant_error") {
            let mut sum = 0.0;
            for s in &sites {
                let v = s.quant_error(&now)?;
                if sites.len() > 1 {
                    out.metric(format!("quant_error/{}", s.name()), v);
                }
                sum += v;
            }
            out.check("quant_error", sum / n, true);
        }
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.last).unwrap_or(Value::Null)
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        let last: Vec<Vec<u64>> = crate::trainer::restore_state("quant", state)?;
        if last.len() != self.last.len() {
            return Err(TrainError::Unsupported(format!(
                "trainer.json: monitors.quant: levels of {} sites, the model has {}",
                last.len(),
                self.last.len()
            )));
        }
        self.last = last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_levels_count_changes_of_sign_and_of_ternary_level() {
        let a: Vec<i8> = (0..70).map(|i| [1, -1, 0][i % 3]).collect();
        let mut b = a.clone();
        assert_eq!(changed(&pack_levels(&a), &pack_levels(&b)), 0);
        b[0] = -1; // 1 → −1
        b[2] = 1; // 0 → 1
        b[69] = -1; // 1 → −1 in the last word
        assert_eq!(changed(&pack_levels(&a), &pack_levels(&b)), 3);
    }
}
