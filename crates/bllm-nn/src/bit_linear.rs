//! [`BitLinear`]: BitNet b1.58's linear layer.

use bllm_codes::PackedCodes;
use bllm_ste::linear::linear;
use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::binary_linear::to_vec;
use crate::summary::{LayerSummary, METADATA_BYTES, Summarize};
use crate::{NnError, Result, kaiming_uniform};

/// Configuration of a [`BitLinear`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Add a float bias (BitNet uses none).
    #[serde(default)]
    pub bias: bool,
    /// RMS-normalise the input (with a learnable gain) before quantising it (BitNet's SubLN).
    #[serde(default = "yes")]
    pub norm: bool,
    /// ε of the RMS norm.
    #[serde(default = "eps")]
    pub eps: f64,
}

fn yes() -> bool {
    true
}

fn eps() -> f64 {
    1e-6
}

impl BitLinearConfig {
    /// A `d_input → d_output` BitLinear with the norm and no bias.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        Self {
            d_input,
            d_output,
            bias: false,
            norm: true,
            eps: 1e-6,
        }
    }

    /// Builds the layer with weights from `seed`.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<BitLinear<B>> {
        if self.d_input == 0 || self.d_output == 0 || self.eps.is_nan() || self.eps <= 0.0 {
            return Err(NnError::Config(format!(
                "BitLinear needs d_input, d_output >= 1 and eps > 0 (got {}, {}, {})",
                self.d_input, self.d_output, self.eps
            )));
        }
        Ok(BitLinear {
            weight: Param::from_tensor(kaiming_uniform::<B>(
                self.d_input,
                self.d_output,
                seed,
                device,
            )),
            gain: self
                .norm
                .then(|| Param::from_tensor(Tensor::ones([self.d_input], device))),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_output], device))),
            config: self.clone(),
        })
    }
}

/// What one BitLinear forward saw, for monitors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BitLinearStats {
    /// Fraction of quantised activations at the extreme int8 levels (±127).
    pub act_edge_fraction: f64,
}

/// BitNet b1.58 linear layer (Ma et al. 2024): `y = Q8(RMSNorm(x)) · T(W) + b`, where `Q8` is
/// per-token absmax int8 and `T` is absmean ternary (`{−γ, 0, +γ}`), both with identity STEs.
///
/// Shapes: input `[..., d_input]`, output `[..., d_output]`.
#[derive(Module, Debug)]
pub struct BitLinear<B: Backend> {
    /// Latent float weights `[d_input, d_output]`.
    pub weight: Param<Tensor<B, 2>>,
    /// RMS-norm gain `[d_input]`.
    pub gain: Option<Param<Tensor<B, 1>>>,
    /// Bias `[d_output]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The configuration (not a parameter).
    pub config: BitLinearConfig,
}

impl<B: Backend> BitLinear<B> {
    /// Forward pass.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        self.forward_with_stats(x, ctx).0
    }

    /// Forward pass and the activation statistics.
    pub fn forward_with_stats<const D: usize>(
        &self,
        x: Tensor<B, D>,
        ctx: &Ctx,
    ) -> (Tensor<B, D>, BitLinearStats) {
        let x = match &self.gain {
            Some(g) => {
                let rms = x
                    .clone()
                    .square()
                    .mean_dim(D - 1)
                    .add_scalar(self.config.eps)
                    .sqrt();
                x / rms * g.val().unsqueeze::<D>()
            }
            None => x,
        };
        let (xq, edge) = bllm_ste::quant::absmax_int8(x);
        let y = linear(
            xq,
            self.ternary_weight(ctx),
            self.bias.as_ref().map(|b| b.val()),
        );
        (
            y,
            BitLinearStats {
                act_edge_fraction: edge,
            },
        )
    }

    /// The ternary weights the forward multiplies by, `[d_input, d_output]`.
    pub fn ternary_weight(&self, ctx: &Ctx) -> Tensor<B, 2> {
        Estimator::TernaryAbsmean(Default::default()).apply(self.weight.val(), ctx)
    }

    /// Ternary weights as two bit-planes in the code contract layout (one row per output
    /// channel): `sign` (bit = 1 for +γ) and `nonzero` (bit = 1 where the weight is not 0), plus
    /// the scale γ.
    pub fn packed_ternary(&self) -> Result<(PackedCodes, PackedCodes, f32)> {
        let w = self.ternary_weight(&Ctx::default()).transpose();
        let [d_out, d_in] = w.dims();
        let vals = to_vec(w)?;
        let gamma = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let nonzero: Vec<bool> = vals.iter().map(|v| *v != 0.0).collect();
        let sign: Vec<bool> = vals.iter().map(|v| *v > 0.0).collect();
        let planes = (
            PackedCodes::from_bools(&sign, d_in)?,
            PackedCodes::from_bools(&nonzero, d_in)?,
        );
        debug_assert_eq!(planes.0.rows(), d_out);
        Ok((planes.0, planes.1, gamma))
    }
}

impl<B: Backend> Summarize for BitLinear<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        let c = &self.config;
        let weights = c.d_input * c.d_output;
        let extra = self.gain.as_ref().map_or(0, |_| c.d_input)
            + self.bias.as_ref().map_or(0, |_| c.d_output);
        let words = c.d_input.div_ceil(64);
        out.push(LayerSummary {
            name: name.to_owned(),
            kind: "BitLinear",
            binary_params: 0,
            ternary_params: weights,
            float_params: extra + 1,
            packed_bytes: 2 * (c.d_output * words * 8 + METADATA_BYTES),
            float_bytes: (extra + 1) * 4,
            float32_equivalent_bytes: (weights + extra) * 4,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn ternary_weights_int8_stats_and_two_plane_export() {
        let dev = Default::default();
        let layer = BitLinearConfig::new(70, 3)
            .init::<NdArray>(&dev, 1)
            .unwrap();
        let w = to_vec(layer.ternary_weight(&Ctx::default())).unwrap();
        let gamma = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(w.iter().all(|v| *v == 0.0 || v.abs() == gamma));
        assert!(w.contains(&0.0) && w.iter().any(|v| *v > 0.0) && w.iter().any(|v| *v < 0.0));
        let x = Tensor::<NdArray, 2>::from_floats([[0.5; 70], [-2.0; 70]], &dev);
        let (y, stats) = layer.forward_with_stats(x, &Ctx::default());
        assert_eq!(y.dims(), [2, 3]);
        // Constant rows normalise to ±1 and quantise entirely to ±127.
        assert_eq!(stats.act_edge_fraction, 1.0);
        let (sign, nonzero, g) = layer.packed_ternary().unwrap();
        assert_eq!(g, gamma);
        for o in 0..3 {
            for i in 0..70 {
                let val = w[i * 3 + o];
                assert_eq!(nonzero.bit(o, i), val != 0.0);
                assert_eq!(sign.bit(o, i), val > 0.0);
            }
        }
    }
}
