//! [`Proj`]: one projection of a transformer, float `Linear`, [`BinaryLinear`] or [`BitLinear`]
//! as the recipe chooses, with an optional norm before quantisation (BitNet's SubLN).

use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::summary::{LayerSummary, Summarize};
use crate::{
    ActQuant, BinaryLinear, BinaryLinearConfig, BitLinear, BitLinearConfig, Result, Scaling,
    kaiming_uniform,
};

/// The precision of one projection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjKind {
    /// Burn's float `Linear`.
    #[default]
    Float,
    /// [`BinaryLinear`]: 1-bit weights through the model's estimator and scaling.
    Binary,
    /// [`BitLinear`]: BitNet b1.58 ternary weights and int8 activations.
    Bitnet,
}

impl ProjKind {
    /// The names recipes use.
    pub const NAMES: [&'static str; 3] = ["float", "binary", "bitnet"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float" => Some(Self::Float),
            "binary" => Some(Self::Binary),
            "bitnet" => Some(Self::Bitnet),
            _ => None,
        }
    }
}

/// How binary projections quantise their inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActBinarization {
    /// Float inputs (binary weights only, "W1A32").
    #[default]
    Float,
    /// `sign(x)` through the model's estimator (W1A1).
    Sign,
    /// `sign(x − b)` with a learnable per-feature threshold `b` (ReActNet's RSign).
    Rsign,
    /// Elastic binarization `α·q((x − β)/α)` with learnable α, β (BiT).
    Elastic,
}

impl ActBinarization {
    /// The names recipes use.
    pub const NAMES: [&'static str; 4] = ["float", "sign", "rsign", "elastic"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float" => Some(Self::Float),
            "sign" => Some(Self::Sign),
            "rsign" => Some(Self::Rsign),
            "elastic" => Some(Self::Elastic),
            _ => None,
        }
    }
}

/// What every binary projection of a model shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryOptions {
    /// Weight (and sign-activation) estimator.
    pub estimator: Estimator,
    /// Weight scaling.
    pub scaling: Scaling,
    /// Input quantisation.
    pub activations: ActBinarization,
    /// RMS-normalise (learnable gain) the input of every binary projection before it is
    /// quantised (BitNet's SubLN; `bitnet` projections always carry their own norm).
    pub sub_norm: bool,
}

impl Default for BinaryOptions {
    fn default() -> Self {
        Self {
            estimator: Estimator::default(),
            scaling: Scaling::PerChannel { learnable: false },
            activations: ActBinarization::Float,
            sub_norm: false,
        }
    }
}

/// RMS norm with a learnable gain: `x / sqrt(mean(x²) + ε) ⊙ g` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsGain<B: Backend> {
    /// Gain `[d]`, initialised to 1.
    pub gain: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsGain<B> {
    /// A norm over `d` features.
    pub fn new(d: usize, device: &B::Device) -> Self {
        Self {
            gain: Param::from_tensor(Tensor::ones([d], device)),
        }
    }

    /// Normalises the last dimension. Shapes: `[..., d]` → `[..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        bllm_ste::norm::rms_norm(x, self.gain.val(), 1e-6)
    }
}

/// One projection `[..., d_input] → [..., d_output]`: exactly one of `float`, `binary`, `bit`
/// is set; `norm` is the optional SubLN before a binary projection.
#[derive(Module, Debug)]
pub struct Proj<B: Backend> {
    /// Float layer.
    pub float: Option<Linear<B>>,
    /// 1-bit layer.
    pub binary: Option<BinaryLinear<B>>,
    /// BitNet b1.58 layer.
    pub bit: Option<BitLinear<B>>,
    /// Norm before quantisation (binary projections with `sub_norm`).
    pub norm: Option<RmsGain<B>>,
    /// A trainable delta on this (frozen) projection: `y = base(x) + x · ΔW`.
    pub adapter: Option<crate::Adapter<B>>,
}

impl<B: Backend> Proj<B> {
    /// Builds a `d_input → d_output` projection of `kind` with weights from `seed`.
    pub fn new(
        kind: ProjKind,
        d_input: usize,
        d_output: usize,
        bias: bool,
        opts: &BinaryOptions,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let mut p = Self {
            float: None,
            binary: None,
            bit: None,
            norm: None,
            adapter: None,
        };
        match kind {
            ProjKind::Float => {
                p.float = Some(Linear {
                    weight: Param::from_tensor(kaiming_uniform::<B>(
                        d_input, d_output, seed, device,
                    )),
                    bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_output], device))),
                })
            }
            ProjKind::Binary => {
                let cfg = binary_config(opts, d_input, d_output, bias);
                p.binary = Some(cfg.init(device, seed)?);
                if opts.sub_norm {
                    p.norm = Some(RmsGain::new(d_input, device));
                }
            }
            ProjKind::Bitnet => {
                let mut cfg = BitLinearConfig::new(d_input, d_output);
                cfg.bias = bias;
                p.bit = Some(cfg.init(device, seed)?);
            }
        }
        Ok(p)
    }

    /// This float projection made 1-bit (`binary`, latent weights = the float weights, scales
    /// initialised from them: XNOR's per-channel `mean|W|` or OneBit's SVID, as
    /// `opts.scaling` says) or ternary (`bitnet`, latent weights = the float weights), keeping
    /// the float bias. Evaluated as it is, this is post-training binarization; trained, it is
    /// QAT from the float model. A projection that is not float (or carries an adapter) is an
    /// error.
    pub fn quantized(self, kind: ProjKind, opts: &BinaryOptions) -> Result<Self> {
        let (Some(f), None, None, None) = (self.float, &self.binary, &self.bit, &self.adapter)
        else {
            return Err(crate::NnError::Unsupported(
                "only a float projection without an adapter can be quantised".into(),
            ));
        };
        let [d_in, d_out] = f.weight.dims();
        let bias = f.bias.map(|b| b.val());
        let weight = f.weight.val();
        let device = weight.device();
        let mut p = Self {
            float: None,
            binary: None,
            bit: None,
            norm: None,
            adapter: None,
        };
        match kind {
            ProjKind::Float => {
                p.float = Some(Linear {
                    weight: Param::from_tensor(weight),
                    bias: bias.map(Param::from_tensor),
                })
            }
            ProjKind::Binary => {
                let cfg = binary_config(opts, d_in, d_out, bias.is_some());
                p.binary = Some(cfg.from_float(weight, bias)?);
                if opts.sub_norm {
                    p.norm = Some(RmsGain::new(d_in, &device));
                }
            }
            ProjKind::Bitnet => {
                let mut cfg = BitLinearConfig::new(d_in, d_out);
                cfg.bias = bias.is_some();
                let mut l = cfg.init(&device, 0)?;
                l.weight = Param::from_tensor(weight);
                l.bias = bias.map(Param::from_tensor);
                p.bit = Some(l);
            }
        }
        Ok(p)
    }

    /// The precision of this projection.
    pub fn kind(&self) -> ProjKind {
        if self.binary.is_some() {
            ProjKind::Binary
        } else if self.bit.is_some() {
            ProjKind::Bitnet
        } else {
            ProjKind::Float
        }
    }

    /// Forward pass; a `bitnet` projection appends its activation clamp fraction to `clamp`.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        ctx: &Ctx,
        clamp: Option<&mut Vec<f64>>,
    ) -> Tensor<B, D> {
        match &self.adapter {
            Some(a) => self.forward_base(x.clone(), ctx, clamp) + a.forward(x, &ctx.fork(9)),
            None => self.forward_base(x, ctx, clamp),
        }
    }

    /// The projection without its adapter.
    fn forward_base<const D: usize>(
        &self,
        x: Tensor<B, D>,
        ctx: &Ctx,
        clamp: Option<&mut Vec<f64>>,
    ) -> Tensor<B, D> {
        if let Some(l) = &self.binary {
            let x = match &self.norm {
                Some(n) => n.forward(x),
                None => x,
            };
            return l.forward(x, ctx);
        }
        if let Some(l) = &self.bit {
            return match clamp {
                Some(c) => {
                    let (y, s) = l.forward_with_stats(x, ctx);
                    c.push(s.act_edge_fraction);
                    y
                }
                None => l.forward(x, ctx),
            };
        }
        match &self.float {
            Some(l) => {
                bllm_ste::linear::linear(x, l.weight.val(), l.bias.as_ref().map(|b| b.val()))
            }
            None => x,
        }
    }

    /// The latent weights that are quantised (`None` for a float projection).
    pub fn latent(&self) -> Option<&Param<Tensor<B, 2>>> {
        self.binary
            .as_ref()
            .map(|l| &l.weight)
            .or(self.bit.as_ref().map(|l| &l.weight))
    }

    /// Replaces the latent weights (for finite-difference probes).
    pub fn set_latent(&mut self, w: Tensor<B, 2>) {
        if let Some(l) = self.binary.as_mut() {
            l.weight = Param::from_tensor(w);
        } else if let Some(l) = self.bit.as_mut() {
            l.weight = Param::from_tensor(w);
        }
    }

    /// The weights the forward multiplies by (quantised and scaled), `[d_input, d_output]`.
    pub fn effective_weight(&self, ctx: &Ctx) -> Option<Tensor<B, 2>> {
        if let Some(l) = &self.binary {
            return Some(l.effective_weight(ctx));
        }
        self.bit.as_ref().map(|l| l.ternary_weight(ctx))
    }

    /// The weight estimator (`bitnet`: absmean ternary with the identity STE).
    pub fn estimator(&self) -> Option<Estimator> {
        if let Some(l) = &self.binary {
            return Some(l.config.weight.clone());
        }
        self.bit
            .as_ref()
            .map(|_| Estimator::TernaryAbsmean(Default::default()))
    }
}

impl<B: Backend> Summarize for Proj<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        if let Some(l) = &self.float {
            l.summarize(name, out);
        }
        if let Some(l) = &self.binary {
            l.summarize(name, out);
        }
        if let Some(l) = &self.bit {
            l.summarize(name, out);
        }
        if let Some(a) = &self.adapter {
            a.summarize(&format!("{name}.adapter"), out);
        }
        if let Some(n) = &self.norm {
            let d = n.gain.dims()[0];
            out.push(LayerSummary {
                name: format!("{name}.sub_norm"),
                kind: "RmsNorm",
                binary_params: 0,
                ternary_params: 0,
                float_params: d,
                packed_bytes: 0,
                float_bytes: 4 * d,
                float32_equivalent_bytes: 4 * d,
            });
        }
    }
}

/// The [`BinaryLinearConfig`] of a `binary` projection under `opts`.
fn binary_config(
    opts: &BinaryOptions,
    d_input: usize,
    d_output: usize,
    bias: bool,
) -> BinaryLinearConfig {
    let input = match opts.activations {
        ActBinarization::Float => ActQuant::None,
        ActBinarization::Sign => ActQuant::Sign {
            estimator: opts.estimator.clone(),
            learnable_threshold: false,
        },
        ActBinarization::Rsign => ActQuant::Sign {
            estimator: opts.estimator.clone(),
            learnable_threshold: true,
        },
        ActBinarization::Elastic => ActQuant::Elastic { signed: true },
    };
    BinaryLinearConfig::new(d_input, d_output)
        .with_weight(opts.estimator.clone())
        .with_scaling(opts.scaling.clone())
        .with_input(input)
        .with_bias(bias)
}
