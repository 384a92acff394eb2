//! [`BinaryLinear`]: a linear layer with binarized weights and optionally binarized inputs.

use bllm_codes::PackedCodes;
use bllm_ste::estimators::Levels;
use bllm_ste::linear::linear;
use bllm_ste::ops::{constant, mean_abs, round_ste};
use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::summary::{LayerSummary, METADATA_BYTES, Summarize};
use crate::{ActQuant, NnError, Result, Scaling, kaiming_uniform};

/// Configuration of a [`BinaryLinear`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Add a float bias.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Weight binarizer.
    #[serde(default)]
    pub weight: Estimator,
    /// Weight scaling.
    #[serde(default)]
    pub scaling: Scaling,
    /// Subtract the mean of the latent weights before binarizing (BitNet).
    #[serde(default)]
    pub center: bool,
    /// Input activation quantizer.
    #[serde(default)]
    pub input: ActQuant,
}

fn yes() -> bool {
    true
}

impl BinaryLinearConfig {
    /// A `d_input → d_output` layer with a bias, the clipped STE, no scaling, float inputs.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        Self {
            d_input,
            d_output,
            bias: true,
            weight: Estimator::default(),
            scaling: Scaling::None,
            center: false,
            input: ActQuant::None,
        }
    }

    /// With this weight estimator.
    pub fn with_weight(self, weight: Estimator) -> Self {
        Self { weight, ..self }
    }

    /// With this scaling.
    pub fn with_scaling(self, scaling: Scaling) -> Self {
        Self { scaling, ..self }
    }

    /// With this input quantizer.
    pub fn with_input(self, input: ActQuant) -> Self {
        Self { input, ..self }
    }

    /// With or without a bias.
    pub fn with_bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }

    /// With or without mean-centring.
    pub fn with_center(self, center: bool) -> Self {
        Self { center, ..self }
    }

    /// Checks sizes and estimator parameters.
    pub fn validate(&self) -> Result<()> {
        if self.d_input == 0 || self.d_output == 0 {
            return Err(NnError::Config(format!(
                "d_input and d_output must be at least 1 (got {} and {})",
                self.d_input, self.d_output
            )));
        }
        self.weight.validate()?;
        if let ActQuant::Sign { estimator, .. } = &self.input {
            estimator.validate()?;
        }
        Ok(())
    }

    /// Builds the layer with weights from `seed` (Kaiming-uniform latent weights, zero bias,
    /// learnable scales initialised to `mean|W|`, thresholds to 0, elastic α = 1, β = 0).
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<BinaryLinear<B>> {
        self.validate()?;
        let w = kaiming_uniform::<B>(self.d_input, self.d_output, seed, device);
        let scalar = |v: f32| {
            Param::from_tensor(Tensor::<B, 1>::from_data(
                TensorData::new(vec![v], [1]),
                device,
            ))
        };
        let (alpha, input_scale) = self.scales_of(&w, device)?;
        let threshold = match &self.input {
            ActQuant::Sign {
                learnable_threshold: true,
                ..
            } => Some(Param::from_tensor(Tensor::zeros([self.d_input], device))),
            _ => None,
        };
        let (elastic_alpha, elastic_beta) = match &self.input {
            ActQuant::Elastic { .. } => (Some(scalar(1.0)), Some(scalar(0.0))),
            _ => (None, None),
        };
        Ok(BinaryLinear {
            weight: Param::from_tensor(w),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_output], device))),
            alpha,
            input_scale,
            threshold,
            elastic_alpha,
            elastic_beta,
            config: self.clone(),
        })
    }
}

impl BinaryLinearConfig {
    /// The learnable scales for latent weights `w` `[d_input, d_output]`: α = `mean|W|` (per
    /// tensor or per output channel, when learnable), or SVID's value vectors from the rank-1
    /// approximation of `|W|`.
    #[allow(clippy::type_complexity)]
    fn scales_of<B: Backend>(
        &self,
        w: &Tensor<B, 2>,
        device: &B::Device,
    ) -> Result<(Option<Param<Tensor<B, 1>>>, Option<Param<Tensor<B, 1>>>)> {
        // Scales start from the weights' values, not their graph: a weight that is itself a
        // tracked parameter (a pretrained layer on an autodiff backend) must not make the new
        // scale a non-leaf.
        let w = &w.clone().detach().set_require_grad(false);
        Ok(match &self.scaling {
            Scaling::PerTensor { learnable: true } => (
                Some(Param::from_tensor(mean_abs(w.clone()).reshape([1]))),
                None,
            ),
            Scaling::PerChannel { learnable: true } => (
                Some(Param::from_tensor(
                    w.clone().abs().mean_dim(0).reshape([self.d_output]),
                )),
                None,
            ),
            Scaling::Svid => {
                let centred = if self.center {
                    w.clone() - w.clone().mean().unsqueeze::<2>()
                } else {
                    w.clone()
                };
                let a = to_vec(centred.abs())?;
                let (g, h) = crate::svid_rank1(&a, self.d_input, self.d_output);
                let vec1 = |v: Vec<f32>| {
                    let n = v.len();
                    Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device))
                };
                (Some(vec1(h)), Some(vec1(g)))
            }
            _ => (None, None),
        })
    }

    /// The layer with latent weights taken from a float layer: `weight` `[d_input, d_output]`
    /// (Burn's `Linear` layout) and its bias, the scales initialised from them — XNOR's
    /// `mean|W|` per channel (`PerChannel { learnable: true }`; recomputed every forward when
    /// not learnable) or OneBit's SVID (`Svid`). Post-training binarization is this layer
    /// evaluated without training.
    pub fn from_float<B: Backend>(
        &self,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Result<BinaryLinear<B>> {
        self.validate()?;
        let [d_in, d_out] = weight.dims();
        if (d_in, d_out) != (self.d_input, self.d_output) {
            return Err(NnError::Config(format!(
                "float weight is {d_in} × {d_out}, the binary layer expects {} × {}",
                self.d_input, self.d_output
            )));
        }
        if bias.is_some() != self.bias {
            return Err(NnError::Config(format!(
                "the float layer {} a bias, the binary config {}",
                if bias.is_some() { "has" } else { "has no" },
                if self.bias { "expects one" } else { "has none" }
            )));
        }
        let device = weight.device();
        let mut layer = self.init::<B>(&device, 0)?;
        let (alpha, input_scale) = self.scales_of(&weight, &device)?;
        layer.weight = Param::from_tensor(weight);
        layer.bias = bias.map(Param::from_tensor);
        layer.alpha = alpha;
        layer.input_scale = input_scale;
        Ok(layer)
    }
}

/// A linear layer `y = q_in(x) · (α ⊙ q_w(W)) + b` with latent float weights `W`
/// (`[d_input, d_output]`, like Burn's `Linear`).
///
/// Shapes: input `[..., d_input]`, output `[..., d_output]`.
#[derive(Module, Debug)]
pub struct BinaryLinear<B: Backend> {
    /// Latent float weights `[d_input, d_output]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Bias `[d_output]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Learnable weight scale, `[1]` or `[d_output]` (SVID's output value vector `h`).
    pub alpha: Option<Param<Tensor<B, 1>>>,
    /// SVID's input value vector `g` `[d_input]` (only with [`Scaling::Svid`]).
    pub input_scale: Option<Param<Tensor<B, 1>>>,
    /// Learnable input threshold (RSign), `[d_input]`.
    pub threshold: Option<Param<Tensor<B, 1>>>,
    /// Elastic input scale α, `[1]`.
    pub elastic_alpha: Option<Param<Tensor<B, 1>>>,
    /// Elastic input offset β, `[1]`.
    pub elastic_beta: Option<Param<Tensor<B, 1>>>,
    /// The configuration (not a parameter).
    pub config: BinaryLinearConfig,
}

/// Binary weights exported in the code contract layout with their scales.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryWeights {
    /// One row per output channel, bit `j` = 1 where the binarized weight from input `j` is
    /// positive (≥ 0 before binarizing, after centring).
    pub codes: PackedCodes,
    /// Scales: none, one, or one per output channel (SVID: `h`).
    pub scales: Vec<f32>,
    /// SVID's input value vector `g` (one per input feature; empty otherwise): the weight
    /// from input `j` to output `i` is `g_j · h_i · (2·bit − 1)`.
    pub input_scales: Vec<f32>,
}

impl<B: Backend> BinaryLinear<B> {
    /// Forward pass at training progress `ctx`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        let x = self.quantize_input(x, ctx);
        linear(
            x,
            self.effective_weight(ctx),
            self.bias.as_ref().map(|b| b.val()),
        )
    }

    /// Latent weights after optional centring (what the estimator binarizes).
    fn centered(&self) -> Tensor<B, 2> {
        let w = self.weight.val();
        if self.config.center {
            let mean = w.clone().mean().unsqueeze::<2>();
            w - mean
        } else {
            w
        }
    }

    /// Weight scale broadcastable to `[d_input, d_output]`, if any.
    fn scale(&self, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        if let Some(alpha) = &self.alpha {
            let h = alpha.val().unsqueeze::<2>();
            return Some(match &self.input_scale {
                // SVID: g hᵀ, [d_input, 1] × [1, d_output] broadcast.
                Some(g) => g.val().unsqueeze_dim::<2>(1) * h,
                None => h,
            });
        }
        match self.config.scaling {
            Scaling::None | Scaling::Svid => None,
            Scaling::PerTensor { .. } => Some(constant(mean_abs(w))),
            Scaling::PerChannel { .. } => Some(constant(w.abs().mean_dim(0))),
        }
    }

    /// The weights the forward pass multiplies by: `α ⊙ q_w(W)`, `[d_input, d_output]`.
    pub fn effective_weight(&self, ctx: &Ctx) -> Tensor<B, 2> {
        let w = self.centered();
        let q = self.config.weight.apply(w.clone(), &ctx.fork(1));
        // SVID's g hᵀ as one fused op (the same bits as `q * scale`, no outer-product matrix).
        if let (Some(h), Some(g)) = (&self.alpha, &self.input_scale) {
            return bllm_ste::scale::scale_outer(q, g.val(), h.val());
        }
        match self.scale(w) {
            Some(s) => q * s,
            None => q,
        }
    }

    /// Applies the input quantizer.
    pub fn quantize_input<const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        match &self.config.input {
            ActQuant::None => x,
            ActQuant::Sign { estimator, .. } => {
                let x = match &self.threshold {
                    Some(b) => x - b.val().unsqueeze::<D>(),
                    None => x,
                };
                estimator.apply(x, &ctx.fork(2))
            }
            ActQuant::Int8Absmax => bllm_ste::quant::absmax_int8(x).0,
            ActQuant::Elastic { signed } => {
                let (Some(a), Some(b)) = (&self.elastic_alpha, &self.elastic_beta) else {
                    return x;
                };
                let alpha = a.val().unsqueeze::<D>();
                let u = (x - b.val().unsqueeze::<D>()) / alpha.clone();
                let q = if *signed {
                    Estimator::default().apply(u, ctx)
                } else {
                    round_ste(u.clamp(0.0, 1.0))
                };
                q * alpha
            }
        }
    }

    /// Binary weights in the contract layout (one row per output channel) with their scales.
    /// Ternary estimators have three levels and cannot be packed as one bit: that is an error.
    /// A stochastic estimator exports `sign(W)`, its deterministic (expected-sign) form.
    pub fn binary_weights(&self) -> Result<BinaryWeights> {
        if self.config.weight.levels() == Levels::Ternary {
            return Err(NnError::Unsupported(format!(
                "{} weights are ternary; export them with two bit-planes, not as 1-bit codes",
                self.config.weight.name()
            )));
        }
        let w = self.centered();
        let [d_in, d_out] = w.dims();
        let rows = to_vec(w.clone().transpose())?;
        let codes = PackedCodes::from_f32_rows(&rows, d_in, d_in)?;
        debug_assert_eq!(codes.rows(), d_out);
        let (scales, input_scales) = match (&self.alpha, &self.input_scale) {
            (Some(h), Some(g)) => (to_vec(h.val())?, to_vec(g.val())?),
            _ => match self.scale(w) {
                Some(s) => (to_vec(s)?, Vec::new()),
                None => (Vec::new(), Vec::new()),
            },
        };
        Ok(BinaryWeights {
            codes,
            scales,
            input_scales,
        })
    }

    /// This layer frozen for inference on the popcount kernels
    /// ([`bllm_kernels::PackedLinear`]: the multi-threaded CPU path, or a GPU through
    /// `bllm_kernels::cube`): weight signs in the contract layout, the scales (learned or
    /// computed from the latent weights), the bias, and the input treatment at evaluation
    /// (`Ctx::for_eval`). Float inputs use the binary × float kernel; `sign` inputs (with or
    /// without a learned threshold) and signed elastic inputs (`α · sign(x − β)`, α > 0) use
    /// XNOR-popcount. Ternary or {0, 1} weights, {0, 1} or int8 activations are refused.
    pub fn to_packed(&self) -> Result<bllm_kernels::PackedLinear> {
        use bllm_kernels::{Epilogue, PackedInput, PackedLinear};
        if self.config.weight.levels() != Levels::Sign {
            return Err(NnError::Unsupported(format!(
                "{} weights are not ±1; only sign binarizers run on the popcount kernels",
                self.config.weight.name()
            )));
        }
        let bw = self.binary_weights()?;
        if !bw.input_scales.is_empty() {
            return Err(NnError::Unsupported(
                "SVID's input value vector has no popcount kernel yet (scale the input by g, \
                 then run the per-channel kernel)"
                    .into(),
            ));
        }
        let bias = match &self.bias {
            Some(b) => to_vec(b.val())?,
            None => Vec::new(),
        };
        let input = match &self.config.input {
            ActQuant::None => PackedInput::Float,
            ActQuant::Sign { estimator, .. } if estimator.levels() == Levels::Sign => {
                PackedInput::Sign {
                    threshold: match &self.threshold {
                        Some(t) => to_vec(t.val())?,
                        None => Vec::new(),
                    },
                    scale: 1.0,
                }
            }
            ActQuant::Elastic { signed: true } => {
                let (Some(a), Some(b)) = (&self.elastic_alpha, &self.elastic_beta) else {
                    return Err(NnError::Unsupported(
                        "elastic input without its α and β parameters".into(),
                    ));
                };
                let (alpha, beta) = (to_vec(a.val())?[0], to_vec(b.val())?[0]);
                if alpha.is_nan() || alpha <= 0.0 {
                    return Err(NnError::Unsupported(format!(
                        "elastic α = {alpha}: sign((x − β)/α) = sign(x − β) needs α > 0"
                    )));
                }
                PackedInput::Sign {
                    threshold: vec![beta; self.config.d_input],
                    scale: alpha,
                }
            }
            other => {
                return Err(NnError::Unsupported(format!(
                    "input quantizer {other:?} has no popcount kernel (sign activations only)"
                )));
            }
        };
        Ok(PackedLinear {
            weights: bw.codes,
            epilogue: Epilogue {
                scales: bw.scales,
                bias,
            },
            input,
        })
    }

    /// The binary weights alone, in the code contract layout.
    pub fn packed_weights(&self) -> Result<PackedCodes> {
        Ok(self.binary_weights()?.codes)
    }
}

pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| NnError::Unsupported(format!("cannot read tensor data: {e:?}")))
}

impl<B: Backend> Summarize for BinaryLinear<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        let c = &self.config;
        let weights = c.d_input * c.d_output;
        let words = c.d_input.div_ceil(64);
        let ternary = c.weight.levels() == Levels::Ternary;
        let planes = if ternary { 2 } else { 1 };
        let scales = c.scaling.count(c.d_input, c.d_output) + usize::from(ternary);
        let extra = self.bias.as_ref().map_or(0, |_| c.d_output)
            + self.threshold.as_ref().map_or(0, |_| c.d_input)
            + if self.elastic_alpha.is_some() { 2 } else { 0 };
        out.push(LayerSummary {
            name: name.to_owned(),
            kind: "BinaryLinear",
            binary_params: if ternary { 0 } else { weights },
            ternary_params: if ternary { weights } else { 0 },
            float_params: extra + scales,
            packed_bytes: planes * (c.d_output * words * 8 + METADATA_BYTES),
            float_bytes: (extra + scales) * 4,
            float32_equivalent_bytes: (weights + extra) * 4,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type Ad = Autodiff<NdArray>;
    type Nd = NdArray;

    fn dev() -> burn::backend::ndarray::NdArrayDevice {
        Default::default()
    }

    fn v<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        to_vec(t).unwrap()
    }

    /// The popcount inference path computes what the Burn forward computes at evaluation, for
    /// every scaling mode and every input treatment it supports (float sums may differ in
    /// order: tolerance 1e-5 of the magnitude).
    #[test]
    fn packed_inference_matches_the_burn_forward() {
        let ctx = Ctx::default().for_eval();
        let inputs = [
            ActQuant::None,
            ActQuant::Sign {
                estimator: Estimator::default(),
                learnable_threshold: false,
            },
            ActQuant::Sign {
                estimator: Estimator::default(),
                learnable_threshold: true,
            },
            ActQuant::Elastic { signed: true },
        ];
        let scalings = [
            Scaling::None,
            Scaling::PerTensor { learnable: false },
            Scaling::PerChannel { learnable: false },
            Scaling::PerChannel { learnable: true },
        ];
        let mut seed = 0;
        for input in &inputs {
            for scaling in &scalings {
                for (bias, center) in [(true, false), (false, true)] {
                    seed += 1;
                    let (k, out, batch) = (70, 9, 3);
                    let mut layer = BinaryLinearConfig::new(k, out)
                        .with_scaling(scaling.clone())
                        .with_input(input.clone())
                        .with_bias(bias)
                        .with_center(center)
                        .init::<Nd>(&dev(), seed)
                        .unwrap();
                    // Non-trivial learned parts: threshold, elastic α/β, bias.
                    if layer.threshold.is_some() {
                        layer.threshold = Some(Param::from_tensor(Tensor::<Nd, 1>::random(
                            [k],
                            burn::tensor::Distribution::Uniform(-0.3, 0.3),
                            &dev(),
                        )));
                    }
                    if layer.elastic_alpha.is_some() {
                        layer.elastic_alpha =
                            Some(Param::from_tensor(Tensor::from_floats([0.7], &dev())));
                        layer.elastic_beta =
                            Some(Param::from_tensor(Tensor::from_floats([0.1], &dev())));
                    }
                    if layer.bias.is_some() {
                        layer.bias = Some(Param::from_tensor(Tensor::random(
                            [out],
                            burn::tensor::Distribution::Uniform(-1.0, 1.0),
                            &dev(),
                        )));
                    }
                    let x = Tensor::<Nd, 2>::random(
                        [batch, k],
                        burn::tensor::Distribution::Uniform(-1.0, 1.0),
                        &dev(),
                    );
                    let want = v(layer.forward(x.clone(), &ctx));
                    let packed = layer.to_packed().unwrap();
                    let got = packed.forward(&v(x.clone()), batch).unwrap();
                    let xs = v(x);
                    let w = v(layer.effective_weight(&ctx));
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        let (bi, o) = (j / out, j % out);
                        let mag: f32 = (0..k)
                            .map(|i| (xs[bi * k + i] * w[i * out + o]).abs())
                            .sum::<f32>()
                            + (0..k).map(|i| w[i * out + o].abs()).sum::<f32>();
                        assert!(
                            (a - b).abs() <= 1e-5 * mag + 1e-6,
                            "{input:?} {scaling:?} bias {bias} center {center} [{j}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_inference_refuses_what_has_no_popcount_kernel() {
        for cfg in [
            BinaryLinearConfig::new(8, 2).with_input(ActQuant::Int8Absmax),
            BinaryLinearConfig::new(8, 2).with_input(ActQuant::Elastic { signed: false }),
            BinaryLinearConfig::new(8, 2)
                .with_weight(Estimator::from_name("ternary_absmean").unwrap()),
        ] {
            let layer = cfg.init::<Nd>(&dev(), 1).unwrap();
            assert!(layer.to_packed().is_err(), "{:?}", layer.config);
        }
    }

    #[test]
    fn forward_shapes_and_sign_weights() {
        let layer = BinaryLinearConfig::new(5, 3).init::<Nd>(&dev(), 1).unwrap();
        let x = Tensor::<Nd, 3>::ones([2, 4, 5], &dev());
        assert_eq!(layer.forward(x, &Ctx::default()).dims(), [2, 4, 3]);
        let w = v(layer.effective_weight(&Ctx::default()));
        assert!(w.iter().all(|x| *x == 1.0 || *x == -1.0));
    }

    #[test]
    fn every_scaling_mode_matches_its_formula() {
        let ctx = Ctx::default();
        for scaling in [
            Scaling::None,
            Scaling::PerTensor { learnable: false },
            Scaling::PerTensor { learnable: true },
            Scaling::PerChannel { learnable: false },
            Scaling::PerChannel { learnable: true },
            Scaling::Svid,
        ] {
            let layer = BinaryLinearConfig::new(6, 4)
                .with_scaling(scaling.clone())
                .init::<Nd>(&dev(), 2)
                .unwrap();
            let w = v(layer.weight.val()); // [6, 4] row-major
            let eff = v(layer.effective_weight(&ctx));
            let abs: Vec<f32> = w.iter().map(|x| x.abs()).collect();
            let (g, h) = crate::svid_rank1(&abs, 6, 4);
            for i in 0..6 {
                for j in 0..4 {
                    let latent = w[i * 4 + j];
                    let alpha = match scaling {
                        Scaling::None => 1.0,
                        Scaling::PerTensor { .. } => w.iter().map(|x| x.abs()).sum::<f32>() / 24.0,
                        Scaling::PerChannel { .. } => {
                            (0..6).map(|r| w[r * 4 + j].abs()).sum::<f32>() / 6.0
                        }
                        Scaling::Svid => g[i] * h[j],
                    };
                    let want = if latent >= 0.0 { alpha } else { -alpha };
                    assert!(
                        (eff[i * 4 + j] - want).abs() < 1e-6,
                        "{scaling:?} ({i},{j})"
                    );
                }
            }
        }
    }

    #[test]
    fn learnable_scale_and_threshold_receive_gradients_detached_scale_does_not_leak() {
        let cfg = BinaryLinearConfig::new(4, 3)
            .with_scaling(Scaling::PerChannel { learnable: true })
            .with_input(ActQuant::Sign {
                estimator: Estimator::default(),
                learnable_threshold: true,
            });
        let layer = cfg.init::<Ad>(&dev(), 3).unwrap();
        let x =
            Tensor::<Ad, 2>::from_floats([[0.3, -0.2, 0.5, -0.9], [0.1, 0.4, -0.6, 0.2]], &dev());
        let grads = layer.forward(x, &Ctx::default()).sum().backward();
        let ga = v(layer.alpha.as_ref().unwrap().val().grad(&grads).unwrap());
        let gt = v(layer
            .threshold
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .unwrap());
        assert!(ga.iter().any(|g| *g != 0.0) && gt.iter().any(|g| *g != 0.0));
        // Latent weights get the STE gradient (clipped: all |w| < 1 here).
        let gw = v(layer.weight.val().grad(&grads).unwrap());
        assert!(gw.iter().any(|g| *g != 0.0));
    }

    #[test]
    fn packed_weights_round_trip_through_bllm_codes() {
        for scaling in [
            Scaling::None,
            Scaling::PerChannel { learnable: false },
            Scaling::PerTensor { learnable: true },
        ] {
            let layer = BinaryLinearConfig::new(70, 5)
                .with_scaling(scaling.clone())
                .with_center(true)
                .init::<Nd>(&dev(), 4)
                .unwrap();
            let bw = layer.binary_weights().unwrap();
            assert_eq!(
                (bw.codes.rows(), bw.codes.bits(), bw.codes.words_per_row()),
                (5, 70, 2)
            );
            let eff = v(layer.effective_weight(&Ctx::default())); // [70, 5]
            let signs = bw.codes.to_signs(); // [5, 70]
            for o in 0..5 {
                let s = match bw.scales.len() {
                    0 => 1.0,
                    1 => bw.scales[0],
                    _ => bw.scales[o],
                };
                for i in 0..70 {
                    assert_eq!(
                        signs[o * 70 + i] * s,
                        eff[i * 5 + o],
                        "{scaling:?} out {o} in {i}"
                    );
                }
            }
        }
        let ternary = BinaryLinearConfig::new(8, 2)
            .with_weight(Estimator::from_name("ternary_absmean").unwrap())
            .init::<Nd>(&dev(), 5)
            .unwrap();
        assert!(matches!(
            ternary.packed_weights(),
            Err(NnError::Unsupported(_))
        ));
    }

    /// Binarizing a float layer: XNOR (per-channel mean|W|) and SVID (sign(W) ⊙ g hᵀ) keep the
    /// float bias, SVID approximates W no worse than XNOR, both value vectors get gradients,
    /// the summary counts d_in + d_out scales, and the popcount path refuses SVID clearly.
    #[test]
    fn from_float_xnor_and_svid() {
        let (d_in, d_out) = (48, 20);
        let w = crate::kaiming_uniform::<Ad>(d_in, d_out, 5, &dev());
        // Uneven magnitudes per input row, as trained weights have.
        let rows: Vec<f32> = (0..d_in).map(|i| 0.2 + (i % 7) as f32).collect();
        let w = w * Tensor::<Ad, 1>::from_data(TensorData::new(rows, [d_in]), &dev())
            .unsqueeze_dim::<2>(1);
        let b = Tensor::<Ad, 1>::from_data(TensorData::new(vec![0.5f32; d_out], [d_out]), &dev());
        let base = BinaryLinearConfig::new(d_in, d_out);
        let err = |l: &BinaryLinear<Ad>| {
            let e = l.effective_weight(&Ctx::default().for_eval()) - w.clone();
            v(e.square().sum())[0]
        };
        let xnor = base
            .clone()
            .with_scaling(Scaling::PerChannel { learnable: true })
            .from_float(w.clone(), Some(b.clone()))
            .unwrap();
        let svid = base
            .clone()
            .with_scaling(Scaling::Svid)
            .from_float(w.clone(), Some(b.clone()))
            .unwrap();
        let (ex, es) = (err(&xnor), err(&svid));
        assert!(es < ex, "SVID error {es} vs XNOR {ex}");
        assert_eq!(v(svid.bias.as_ref().unwrap().val()), vec![0.5; d_out]);
        assert_eq!(v(xnor.weight.val()), v(w.clone()));
        let x = Tensor::<Ad, 2>::ones([3, d_in], &dev());
        let grads = svid.forward(x, &Ctx::default()).sum().backward();
        let gg = svid.input_scale.as_ref().unwrap().grad(&grads).unwrap();
        let gh = svid.alpha.as_ref().unwrap().grad(&grads).unwrap();
        assert_eq!((gg.dims(), gh.dims()), ([d_in], [d_out]));
        assert!(v(gg.abs().sum())[0] > 0.0 && v(gh.abs().sum())[0] > 0.0);
        let mut out = Vec::new();
        svid.summarize("p", &mut out);
        assert_eq!(out[0].float_params, d_out + d_in + d_out);
        let bw = svid.binary_weights().unwrap();
        assert_eq!((bw.scales.len(), bw.input_scales.len()), (d_out, d_in));
        let e = svid.to_packed().unwrap_err().to_string();
        assert!(e.contains("SVID"), "{e}");
        let e = base
            .with_bias(false)
            .from_float(w, Some(b))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias"), "{e}");
    }

    #[test]
    fn centring_subtracts_the_mean() {
        let layer = BinaryLinearConfig::new(3, 1)
            .with_center(true)
            .init::<Nd>(&dev(), 6)
            .unwrap();
        let layer = BinaryLinear {
            weight: Param::from_tensor(Tensor::from_floats([[1.0], [2.0], [3.5]], &dev())),
            ..layer
        };
        // mean 2.1667: only 3.5 stays positive.
        assert_eq!(
            v(layer.effective_weight(&Ctx::default())),
            vec![-1.0, -1.0, 1.0]
        );
    }

    #[test]
    fn elastic_alpha_gets_the_lsq_gradient() {
        let cfg = BinaryLinearConfig::new(1, 1)
            .with_bias(false)
            .with_input(ActQuant::Elastic { signed: false });
        let mut layer = cfg.init::<Ad>(&dev(), 7).unwrap();
        layer.weight = Param::from_tensor(Tensor::from_floats([[0.5]], &dev()));
        // α = 1, β = 0; weight binarizes to +1, so y = α·round(clip(x/α, 0, 1)).
        let xs = [0.3f32, 0.7, 1.5, -0.4];
        let x = Tensor::<Ad, 2>::from_floats([[xs[0]], [xs[1]], [xs[2]], [xs[3]]], &dev());
        let grads = layer.forward(x, &Ctx::default()).sum().backward();
        let ga = v(layer
            .elastic_alpha
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .unwrap())[0];
        // LSQ: Σ q(u) − u·1[0 ≤ u ≤ 1] = (0 − 0.3) + (1 − 0.7) + 1 + 0 = 1.0
        assert!((ga - 1.0).abs() < 1e-6, "{ga}");
    }

    #[test]
    fn int8_inputs_are_quantised_per_token() {
        let cfg = BinaryLinearConfig::new(3, 1)
            .with_bias(false)
            .with_input(ActQuant::Int8Absmax);
        let layer = cfg.init::<Nd>(&dev(), 8).unwrap();
        let x = Tensor::<Nd, 2>::from_floats([[1.0, 0.5, -0.25], [100.0, 1.0, 0.0]], &dev());
        let q = v(layer.quantize_input(x, &Ctx::default()));
        let want = [1.0, 64.0 / 127.0, -32.0 / 127.0, 100.0, 100.0 / 127.0, 0.0];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{q:?}");
        }
    }

    #[test]
    fn config_serde_and_validation() {
        let cfg: BinaryLinearConfig = serde_json::from_str(
            r#"{"d_input": 4, "d_output": 2, "weight": {"kind": "ede"}, "scaling": {"kind": "per_channel"}, "input": {"kind": "sign", "learnable_threshold": true}}"#,
        )
        .unwrap();
        assert_eq!(cfg.scaling, Scaling::PerChannel { learnable: false });
        assert!(
            serde_json::from_str::<BinaryLinearConfig>(
                r#"{"d_input": 4, "d_output": 2, "scalling": {}}"#
            )
            .is_err()
        );
        assert!(BinaryLinearConfig::new(0, 2).init::<Nd>(&dev(), 0).is_err());
    }
}
