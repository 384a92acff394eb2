//! [`Adapter`]: a trainable weight delta on a frozen float projection — float LoRA, binary
//! LoRA, or BitDelta — with merge / unmerge, export in the code contract layout and byte
//! accounting that counts bits, scales, padding to words and metadata.

use bllm_codes::PackedCodes;
use bllm_ste::ops::{constant, sign_pm1};
use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::binary_linear::to_vec;
use crate::summary::{LayerSummary, METADATA_BYTES, Summarize};
use crate::{NnError, Result, kaiming_uniform};

/// Which adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// LoRA (Hu et al. 2021): `ΔW = (α/r) · A B`, `A` Kaiming, `B = 0` at init.
    #[default]
    Lora,
    /// Both LoRA factors binarized through a `bllm-ste` estimator with per-channel scales:
    /// `ΔW = (α/r) · (q(A) ⊙ s_A)(q(B) ⊙ s_B)`, `s_A` per rank column, `s_B` per output channel.
    /// Learnable scales start at `mean|A|` and 0 (so `ΔW = 0` at init, as LoRA); otherwise
    /// they are `mean|·|` of each column, recomputed and detached (then `B` starts small random,
    /// since a zero `B` would have zero scale and no gradient).
    BinaryLora,
    /// BitDelta (Liu et al. 2024): `ΔW = α · sign(W_ft − W_base)` with one α per matrix
    /// (initialised to `mean|Δ|`); the signs are fixed, only α trains.
    BitDelta,
}

impl AdapterKind {
    /// The names recipes use.
    pub const NAMES: [&'static str; 3] = ["lora", "binary_lora", "bitdelta"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lora" => Some(Self::Lora),
            "binary_lora" => Some(Self::BinaryLora),
            "bitdelta" => Some(Self::BitDelta),
            _ => None,
        }
    }
}

/// Configuration of an [`Adapter`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Which adapter.
    pub kind: AdapterKind,
    /// LoRA rank r.
    pub rank: usize,
    /// LoRA α (the delta is scaled by α / r).
    pub alpha: f64,
    /// Estimator of binary LoRA.
    pub estimator: Estimator,
    /// Binary LoRA: train the scales (otherwise `mean|·|`, detached).
    pub learnable_scale: bool,
}

impl AdapterConfig {
    /// A float LoRA of rank `rank` with α = rank (scale 1).
    pub fn lora(rank: usize) -> Self {
        Self {
            kind: AdapterKind::Lora,
            rank,
            alpha: rank as f64,
            estimator: Estimator::default(),
            learnable_scale: true,
        }
    }

    /// A LoRA-style adapter for a `d_input → d_output` projection, weights from `seed`.
    pub fn init<B: Backend>(
        &self,
        d_input: usize,
        d_output: usize,
        device: &B::Device,
        seed: u64,
    ) -> Result<Adapter<B>> {
        if self.kind == AdapterKind::BitDelta {
            return Err(NnError::Config(
                "a BitDelta adapter is built from a weight delta: use AdapterConfig::bitdelta"
                    .into(),
            ));
        }
        if self.rank == 0 || self.rank > d_input.min(d_output) {
            return Err(NnError::Config(format!(
                "LoRA rank must be in 1..={} for a {d_input} → {d_output} projection (got {})",
                d_input.min(d_output),
                self.rank
            )));
        }
        self.estimator.validate()?;
        if self.kind == AdapterKind::BinaryLora
            && self.estimator.levels() != bllm_ste::estimators::Levels::Sign
        {
            return Err(NnError::Config(format!(
                "binary LoRA needs a ±1 estimator ({} has other levels)",
                self.estimator.name()
            )));
        }
        let r = self.rank;
        let a = kaiming_uniform::<B>(d_input, r, seed, device);
        let binary = self.kind == AdapterKind::BinaryLora;
        let b = if binary && !self.learnable_scale {
            kaiming_uniform::<B>(r, d_output, seed ^ 0xB, device).mul_scalar(1e-3)
        } else if binary {
            kaiming_uniform::<B>(r, d_output, seed ^ 0xB, device)
        } else {
            Tensor::zeros([r, d_output], device)
        };
        let (scale_a, scale_b) = if binary && self.learnable_scale {
            (
                Some(Param::from_tensor(a.clone().abs().mean_dim(0).reshape([r]))),
                Some(Param::from_tensor(Tensor::zeros([d_output], device))),
            )
        } else {
            (None, None)
        };
        Ok(Adapter {
            a: Some(Param::from_tensor(a)),
            b: Some(Param::from_tensor(b)),
            scale_a,
            scale_b,
            sign: None,
            alpha: None,
            config: self.clone(),
        })
    }

    /// A BitDelta adapter for the delta `w_ft − w_base` (`[d_input, d_output]`): fixed signs
    /// and α = `mean|Δ|`.
    pub fn bitdelta<B: Backend>(delta: Tensor<B, 2>) -> Adapter<B> {
        let alpha = delta.clone().abs().mean().reshape([1]);
        let sign = constant(sign_pm1(delta));
        let mut sign = Param::from_tensor(sign);
        sign = sign.set_require_grad(false);
        Adapter {
            a: None,
            b: None,
            scale_a: None,
            scale_b: None,
            sign: Some(sign),
            alpha: Some(Param::from_tensor(alpha)),
            config: Self {
                kind: AdapterKind::BitDelta,
                rank: 0,
                alpha: 1.0,
                estimator: Estimator::default(),
                learnable_scale: true,
            },
        }
    }
}

/// A weight delta `ΔW` (`[d_input, d_output]`) added to a frozen projection:
/// `y = base(x) + x · ΔW`.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// LoRA `A`, `[d_input, r]` (latent weights for binary LoRA).
    pub a: Option<Param<Tensor<B, 2>>>,
    /// LoRA `B`, `[r, d_output]`.
    pub b: Option<Param<Tensor<B, 2>>>,
    /// Binary LoRA: learnable scale of each rank column of `A`, `[r]`.
    pub scale_a: Option<Param<Tensor<B, 1>>>,
    /// Binary LoRA: learnable scale of each output channel of `B`, `[d_output]`.
    pub scale_b: Option<Param<Tensor<B, 1>>>,
    /// BitDelta: fixed signs `[d_input, d_output]` (not trained).
    pub sign: Option<Param<Tensor<B, 2>>>,
    /// BitDelta: the scale α, `[1]`.
    pub alpha: Option<Param<Tensor<B, 1>>>,
    /// The configuration (not a parameter).
    pub config: AdapterConfig,
}

impl<B: Backend> Adapter<B> {
    /// The factors the forward multiplies by: `(A', B')` with the α/r scale folded into `B'`
    /// (LoRA and binary LoRA), or `None` (BitDelta).
    fn factors(&self, ctx: &Ctx) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        let (a, b) = (self.a.as_ref()?.val(), self.b.as_ref()?.val());
        let c = &self.config;
        let s = c.alpha / c.rank as f64;
        if c.kind == AdapterKind::Lora {
            return Some((a, b.mul_scalar(s)));
        }
        let qa = c.estimator.apply(a.clone(), &ctx.fork(61));
        let qb = c.estimator.apply(b.clone(), &ctx.fork(62));
        let (sa, sb) = match (&self.scale_a, &self.scale_b) {
            (Some(sa), Some(sb)) => (sa.val().unsqueeze::<2>(), sb.val().unsqueeze::<2>()),
            _ => (constant(a.abs().mean_dim(0)), constant(b.abs().mean_dim(0))),
        };
        Some((qa * sa, (qb * sb).mul_scalar(s)))
    }

    /// `x · ΔW` for inputs `[..., d_input]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        if let Some((a, b)) = self.factors(ctx) {
            let h = bllm_ste::linear::linear(x, a, None);
            return bllm_ste::linear::linear(h, b, None);
        }
        bllm_ste::linear::linear(x, self.delta_weight(ctx), None)
    }

    /// The weight delta `ΔW`, `[d_input, d_output]`.
    pub fn delta_weight(&self, ctx: &Ctx) -> Tensor<B, 2> {
        if let Some((a, b)) = self.factors(ctx) {
            return a.matmul(b);
        }
        match (&self.sign, &self.alpha) {
            (Some(s), Some(al)) => s.val() * al.val().unsqueeze::<2>(),
            _ => unreachable!("an adapter has LoRA factors or BitDelta signs"),
        }
    }

    /// The adapter's bits in the code contract layout with their scales: binary LoRA
    /// `A` (one row per rank column, `d_input` bits) and `B` (one row per output channel, `r`
    /// bits); BitDelta's signs (one row per output channel). Float LoRA has no bits: error.
    pub fn export(&self) -> Result<AdapterBits> {
        let c = &self.config;
        let rows_of = |t: Tensor<B, 2>| -> Result<PackedCodes> {
            let [d_in, d_out] = t.dims();
            let _ = d_out;
            let v = to_vec(t.transpose())?;
            Ok(PackedCodes::from_f32_rows(&v, d_in, d_in)?)
        };
        match c.kind {
            AdapterKind::Lora => Err(NnError::Unsupported(
                "a float LoRA has no bits to export".into(),
            )),
            AdapterKind::BinaryLora => {
                let (a, b) = (
                    self.a.as_ref().map(|p| p.val()),
                    self.b.as_ref().map(|p| p.val()),
                );
                let (Some(a), Some(b)) = (a, b) else {
                    unreachable!("binary LoRA has factors")
                };
                let (sa, sb) = match (&self.scale_a, &self.scale_b) {
                    (Some(sa), Some(sb)) => (to_vec(sa.val())?, to_vec(sb.val())?),
                    _ => (
                        to_vec(a.clone().abs().mean_dim(0))?,
                        to_vec(b.clone().abs().mean_dim(0))?,
                    ),
                };
                Ok(AdapterBits {
                    planes: vec![("a".into(), rows_of(a)?), ("b".into(), rows_of(b)?)],
                    scales: vec![("a".into(), sa), ("b".into(), sb)],
                    factor: (c.alpha / c.rank as f64) as f32,
                })
            }
            AdapterKind::BitDelta => {
                let (Some(s), Some(al)) = (&self.sign, &self.alpha) else {
                    unreachable!("BitDelta has signs and α")
                };
                Ok(AdapterBits {
                    planes: vec![("sign".into(), rows_of(s.val())?)],
                    scales: vec![("alpha".into(), to_vec(al.val())?)],
                    factor: 1.0,
                })
            }
        }
    }

    /// Bytes this adapter takes stored: packed bits (rows padded to u64 words, 48 B metadata
    /// per packed tensor) plus float32 scales — or, for float LoRA, its float32 factors.
    pub fn stored_bytes(&self) -> usize {
        let mut v = Vec::new();
        self.summarize("", &mut v);
        v.iter().map(LayerSummary::total_bytes).sum()
    }
}

/// An adapter's exported bits.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterBits {
    /// Named bit-planes in the code contract layout.
    pub planes: Vec<(String, PackedCodes)>,
    /// Named float scales.
    pub scales: Vec<(String, Vec<f32>)>,
    /// The constant factor applied to the product (α / r for LoRA; 1 for BitDelta).
    pub factor: f32,
}

impl<B: Backend> Summarize for Adapter<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        let packed = |rows: usize, bits: usize| rows * bits.div_ceil(64) * 8 + METADATA_BYTES;
        let c = &self.config;
        let row = match c.kind {
            AdapterKind::Lora => {
                let n: usize = [&self.a, &self.b]
                    .iter()
                    .filter_map(|p| p.as_ref())
                    .map(|p| p.val().dims().iter().product::<usize>())
                    .sum();
                LayerSummary {
                    name: name.to_owned(),
                    kind: "LoRA",
                    binary_params: 0,
                    ternary_params: 0,
                    float_params: n,
                    packed_bytes: 0,
                    float_bytes: 4 * n,
                    float32_equivalent_bytes: 4 * n,
                }
            }
            AdapterKind::BinaryLora => {
                let (Some(a), Some(b)) = (&self.a, &self.b) else {
                    return;
                };
                let [d_in, r] = a.dims();
                let [_, d_out] = b.dims();
                let bits = d_in * r + r * d_out;
                // Scales: one per rank column of A, one per output channel of B, and α/r.
                let scales = r + d_out + 1;
                LayerSummary {
                    name: name.to_owned(),
                    kind: "BinaryLoRA",
                    binary_params: bits,
                    ternary_params: 0,
                    float_params: scales,
                    packed_bytes: packed(r, d_in) + packed(d_out, r),
                    float_bytes: 4 * scales,
                    float32_equivalent_bytes: 4 * (bits + scales),
                }
            }
            AdapterKind::BitDelta => {
                let Some(s) = &self.sign else { return };
                let [d_in, d_out] = s.dims();
                LayerSummary {
                    name: name.to_owned(),
                    kind: "BitDelta",
                    binary_params: d_in * d_out,
                    ternary_params: 0,
                    float_params: 1,
                    packed_bytes: packed(d_out, d_in),
                    float_bytes: 4,
                    float32_equivalent_bytes: 4 * (d_in * d_out + 1),
                }
            }
        };
        out.push(row);
    }
}

impl AdapterBits {
    /// Rebuilds the adapter these bits came from (`kind` binary LoRA or BitDelta): its forward
    /// equals the exported adapter's.
    pub fn to_adapter<B: Backend>(
        &self,
        kind: AdapterKind,
        device: &B::Device,
    ) -> Result<Adapter<B>> {
        let plane = |name: &str| -> Result<Tensor<B, 2>> {
            let p = self
                .planes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)
                .ok_or_else(|| NnError::Config(format!("adapter bits lack plane {name}")))?;
            let (rows, bits) = (p.rows(), p.bits());
            let v: Vec<f32> = (0..rows)
                .flat_map(|r| (0..bits).map(move |j| if p.bit(r, j) { 1.0 } else { -1.0 }))
                .collect();
            // Rows are output vectors: transpose back to [d_input, d_output].
            Ok(
                Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(v, [rows, bits]), device)
                    .transpose(),
            )
        };
        let scale = |name: &str| -> Result<Tensor<B, 1>> {
            let v = self
                .scales
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| NnError::Config(format!("adapter bits lack scale {name}")))?;
            let n = v.len();
            Ok(Tensor::from_data(
                burn::tensor::TensorData::new(v, [n]),
                device,
            ))
        };
        match kind {
            AdapterKind::BinaryLora => {
                let a = plane("a")?;
                let r = a.dims()[1];
                Ok(Adapter {
                    a: Some(Param::from_tensor(a)),
                    b: Some(Param::from_tensor(plane("b")?)),
                    scale_a: Some(Param::from_tensor(scale("a")?)),
                    scale_b: Some(Param::from_tensor(scale("b")?)),
                    sign: None,
                    alpha: None,
                    config: AdapterConfig {
                        kind,
                        rank: r,
                        alpha: f64::from(self.factor) * r as f64,
                        estimator: Estimator::default(),
                        learnable_scale: true,
                    },
                })
            }
            AdapterKind::BitDelta => {
                let mut a = AdapterConfig::bitdelta(plane("sign")?);
                a.alpha = Some(Param::from_tensor(scale("alpha")?));
                Ok(a)
            }
            AdapterKind::Lora => Err(NnError::Unsupported(
                "a float LoRA has no bits to rebuild from".into(),
            )),
        }
    }
}

/// `base` with `adapter` merged: `W + ΔW` (bias unchanged).
pub fn merge<B: Backend>(base: &Linear<B>, adapter: &Adapter<B>, ctx: &Ctx) -> Linear<B> {
    let w = base.weight.val() + adapter.delta_weight(ctx);
    Linear {
        weight: Param::from_tensor(w),
        bias: base.bias.as_ref().map(|b| Param::from_tensor(b.val())),
    }
}

/// `merged` with `adapter` taken out again: `W' − ΔW`. Floating-point addition is not
/// invertible, so `unmerge(merge(W))` equals `W` to within one rounding of `|W| + |ΔW|` per
/// element (≤ 2⁻²⁴ relative), not bit for bit; keep the base weights to restore them exactly.
pub fn unmerge<B: Backend>(merged: &Linear<B>, adapter: &Adapter<B>, ctx: &Ctx) -> Linear<B> {
    let w = merged.weight.val() - adapter.delta_weight(ctx);
    Linear {
        weight: Param::from_tensor(w),
        bias: merged.bias.as_ref().map(|b| Param::from_tensor(b.val())),
    }
}

#[cfg(test)]
mod tests;
