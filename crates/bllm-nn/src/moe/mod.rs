//! [`Moe`]: a mixture-of-experts MLP layer with top-k routing, a capacity factor (dropped
//! token slots contribute nothing, so the caller's residual passes them through), load
//! balancing (Switch auxiliary loss or DeepSeek-V3 auxiliary-loss-free bias) and float or binary
//! routers ([`RouterKind`], one file each under `moe/`).

mod binary;
mod gumbel;
mod hash;
mod sign_code;
mod softmax;

use bllm_ste::fused::gelu;
use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::summary::{LayerSummary, Summarize};
use crate::{BinaryLinear, NnError, Result, kaiming_uniform};

/// Which router picks the experts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// Float linear router, softmax, top-k (Switch / GShard); see `moe/softmax.rs`.
    #[default]
    Softmax,
    /// Fixed hash of a per-token key, no parameters (Roller et al. 2021); see `moe/hash.rs`.
    Hash,
    /// `log2 E` sign bits of a projection name the expert; see `moe/sign_code.rs`.
    SignCode,
    /// The softmax router with `BinaryLinear` weights; see `moe/binary.rs`.
    Binary,
    /// Straight-through Gumbel top-1 (hard forward, soft backward); see `moe/gumbel.rs`.
    Gumbel,
}

impl RouterKind {
    /// The names recipes use.
    pub const NAMES: [&'static str; 5] = ["softmax", "hash", "sign_code", "binary", "gumbel"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "softmax" => Some(Self::Softmax),
            "hash" => Some(Self::Hash),
            "sign_code" => Some(Self::SignCode),
            "binary" => Some(Self::Binary),
            "gumbel" => Some(Self::Gumbel),
            _ => None,
        }
    }
}

/// How the load is balanced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    /// Nothing.
    #[default]
    None,
    /// Switch auxiliary loss `α · E · Σ f_i · P_i` (Fedus et al. 2021).
    AuxLoss,
    /// DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias used for selection only,
    /// after each step `b_i += γ · sign(mean load − load_i)`, kept zero-mean.
    AuxFree,
}

impl Balancing {
    /// The names recipes use.
    pub const NAMES: [&'static str; 3] = ["none", "aux_loss", "aux_free"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "aux_loss" => Some(Self::AuxLoss),
            "aux_free" => Some(Self::AuxFree),
            _ => None,
        }
    }
}

/// Configuration of a [`Moe`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Input and output width.
    pub d_model: usize,
    /// Hidden width of each expert MLP.
    pub hidden: usize,
    /// Number of experts E.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Capacity factor: each expert takes at most `ceil(cf · slots / E)` token slots, in token
    /// order; 0 = unlimited.
    pub capacity_factor: f64,
    /// The router.
    pub router: RouterKind,
    /// Load balancing.
    pub balancing: Balancing,
    /// α of the Switch auxiliary loss.
    pub aux_alpha: f64,
    /// Coefficient of the router z-loss `mean (logsumexp z)²` (routers with logits).
    pub z_loss: f64,
    /// γ of the auxiliary-loss-free bias update.
    pub bias_gamma: f64,
    /// Estimator of the sign-code and binary routers.
    pub estimator: Estimator,
    /// Gumbel temperature at the start and at the end of training (geometric schedule).
    pub gumbel_tau: (f64, f64),
}

impl MoeConfig {
    /// `experts` experts of width `hidden`, top-1 softmax routing, no capacity limit, no
    /// balancing, the default coefficients.
    pub fn new(d_model: usize, hidden: usize, experts: usize) -> Self {
        Self {
            d_model,
            hidden,
            experts,
            top_k: 1,
            capacity_factor: 0.0,
            router: RouterKind::Softmax,
            balancing: Balancing::None,
            aux_alpha: 1e-2,
            z_loss: 1e-3,
            bias_gamma: 1e-3,
            estimator: Estimator::default(),
            gumbel_tau: (1.0, 0.1),
        }
    }

    /// Checks sizes and router constraints.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        if self.d_model == 0 || self.hidden == 0 || self.experts < 2 {
            return bad(format!(
                "MoE needs d_model, hidden >= 1 and at least 2 experts (got {}, {}, {})",
                self.d_model, self.hidden, self.experts
            ));
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return bad(format!(
                "top_k must be in 1..={} (got {})",
                self.experts, self.top_k
            ));
        }
        if self.router == RouterKind::SignCode && !self.experts.is_power_of_two() {
            return bad(format!(
                "the sign_code router needs a power-of-two number of experts (got {})",
                self.experts
            ));
        }
        if self.router == RouterKind::Gumbel && self.top_k != 1 {
            return bad(format!(
                "the gumbel router is top-1 (got top_k = {})",
                self.top_k
            ));
        }
        if !(self.capacity_factor >= 0.0 && self.capacity_factor.is_finite()) {
            return bad(format!(
                "capacity_factor must be >= 0 (got {})",
                self.capacity_factor
            ));
        }
        if !(self.gumbel_tau.0 > 0.0 && self.gumbel_tau.1 > 0.0) {
            return bad(format!(
                "gumbel temperatures must be > 0 (got {:?})",
                self.gumbel_tau
            ));
        }
        self.estimator.validate()?;
        Ok(())
    }

    /// Builds the layer with weights from `seed`.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<Moe<B>> {
        self.validate()?;
        let s = |i: u64| seed.wrapping_mul(0x2545_F491).wrapping_add(i);
        let linear = |din, dout, i| Linear {
            weight: Param::from_tensor(kaiming_uniform::<B>(din, dout, s(i), device)),
            bias: Some(Param::from_tensor(Tensor::zeros([dout], device))),
        };
        let e = self.experts;
        let (float, binary) = match self.router {
            RouterKind::Hash => (None, None),
            RouterKind::Softmax | RouterKind::Gumbel => (Some(linear(self.d_model, e, 1)), None),
            RouterKind::SignCode => (
                Some(linear(self.d_model, e.trailing_zeros() as usize, 1)),
                None,
            ),
            RouterKind::Binary => (None, Some(binary::init(self, device, s(1))?)),
        };
        Ok(Moe {
            router_float: float,
            router_binary: binary,
            hash_planes: (self.router == RouterKind::Hash)
                .then(|| hash::planes::<B>(self, s(2), device)),
            bias: Param::from_tensor(Tensor::zeros([e], device)),
            up: (0..e)
                .map(|i| linear(self.d_model, self.hidden, 10 + i as u64))
                .collect(),
            down: (0..e)
                .map(|i| linear(self.hidden, self.d_model, 1000 + i as u64))
                .collect(),
            config: self.clone(),
        })
    }
}

/// A mixture-of-experts MLP. Shapes: `[tokens, d_model]` → `[tokens, d_model]`.
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    /// Float router projection (softmax, gumbel: `d → E`; sign_code: `d → log2 E`).
    pub router_float: Option<Linear<B>>,
    /// Binary router projection (`binary`).
    pub router_binary: Option<BinaryLinear<B>>,
    /// Fixed hashing hyperplanes of the `hash` router when tokens carry no key (not trained).
    pub hash_planes: Option<Param<Tensor<B, 2>>>,
    /// Selection bias of auxiliary-loss-free balancing `[E]` (not trained by the optimizer).
    pub bias: Param<Tensor<B, 1>>,
    /// Expert up-projections.
    pub up: Vec<Linear<B>>,
    /// Expert down-projections.
    pub down: Vec<Linear<B>>,
    /// The configuration (not a parameter).
    pub config: MoeConfig,
}

/// What a router decided for a batch of tokens.
pub(crate) struct Routing<B: Backend> {
    /// Chosen experts, `[tokens][top_k]`, best first.
    pub(crate) experts: Vec<Vec<usize>>,
    /// Gate weight of each chosen slot, `[tokens, top_k]`, differentiable.
    pub(crate) gates: Tensor<B, 2>,
    /// Routing probabilities `[tokens, E]` for the auxiliary loss (`None`: no parameters).
    pub(crate) probs: Option<Tensor<B, 2>>,
    /// Router logits `[tokens, E]` for the z-loss (`None`: the router has no logits).
    pub(crate) logits: Option<Tensor<B, 2>>,
}

/// The output of a [`Moe`] forward.
pub struct MoeOutput<B: Backend> {
    /// `[tokens, d_model]`; dropped slots contribute zero.
    pub y: Tensor<B, 2>,
    /// Auxiliary loss to add to the task loss (Switch term and z-loss), `[1]`.
    pub aux_loss: Tensor<B, 1>,
    /// Each routed slot's expert in token order (slot `t·k + r` = token t's r-th choice),
    /// dropped slots included: the input of the load statistics.
    pub assignments: Vec<usize>,
    /// Each token's first choice (for the routing flip rate).
    pub first_choice: Vec<usize>,
    /// Slots dropped by the capacity limit.
    pub dropped: usize,
}

/// Top-`k` indices of each row of `scores` (`[n, e]`, row-major), best first; ties go to the
/// lower index.
pub(crate) fn top_k_rows(scores: &[f32], e: usize, k: usize) -> Vec<Vec<usize>> {
    scores
        .chunks(e)
        .map(|row| {
            let mut idx: Vec<usize> = (0..e).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.truncate(k);
            idx
        })
        .collect()
}

pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Gathers `values[t, experts[t][r]]` into `[tokens, k]`.
pub(crate) fn gather_chosen<B: Backend>(
    values: Tensor<B, 2>,
    experts: &[Vec<usize>],
) -> Tensor<B, 2> {
    let n = experts.len();
    let k = experts.first().map_or(1, Vec::len);
    let idx: Vec<i64> = experts.iter().flatten().map(|&e| e as i64).collect();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, k]), &values.device());
    values.gather(1, idx)
}

impl<B: Backend> Moe<B> {
    /// Routes and runs the experts. `keys` (one per token) feed the `hash` router (byte ids
    /// for a language model, example ids for classification); other routers ignore them, and
    /// without keys the hash router hashes the input with fixed random hyperplanes.
    pub fn forward(&self, x: Tensor<B, 2>, keys: Option<&[u64]>, ctx: &Ctx) -> MoeOutput<B> {
        let [n, d] = x.dims();
        let c = &self.config;
        let (e, k) = (c.experts, c.top_k);
        let bias = host(self.bias.val());
        let routing = match c.router {
            RouterKind::Softmax => softmax::route(self, x.clone(), &bias),
            RouterKind::Binary => binary::route(self, x.clone(), &bias, ctx),
            RouterKind::SignCode => sign_code::route(self, x.clone(), &bias, ctx),
            RouterKind::Gumbel => gumbel::route(self, x.clone(), &bias, ctx),
            RouterKind::Hash => hash::route(self, x.clone(), keys),
        };
        // Capacity: slots in token order, each expert keeps its first `cap`.
        let cap = if c.capacity_factor > 0.0 {
            (c.capacity_factor * (n * k) as f64 / e as f64).ceil() as usize
        } else {
            usize::MAX
        };
        let mut load = vec![0usize; e];
        let mut kept: Vec<Vec<(usize, usize)>> = vec![Vec::new(); e]; // (token, slot)
        let mut dropped = 0;
        let mut assignments = Vec::with_capacity(n * k);
        for (t, choice) in routing.experts.iter().enumerate() {
            for (r, &ex) in choice.iter().enumerate() {
                assignments.push(ex);
                if load[ex] < cap {
                    load[ex] += 1;
                    kept[ex].push((t, t * k + r));
                } else {
                    dropped += 1;
                }
            }
        }
        let device = x.device();
        let gates = routing.gates.clone().reshape([n * k]);
        let mut y = Tensor::<B, 2>::zeros([n, d], &device);
        for (ex, slots) in kept.iter().enumerate() {
            if slots.is_empty() {
                continue;
            }
            let m = slots.len();
            let tok: Vec<i64> = slots.iter().map(|&(t, _)| t as i64).collect();
            let slot: Vec<i64> = slots.iter().map(|&(_, s)| s as i64).collect();
            let tok = Tensor::<B, 1, Int>::from_data(TensorData::new(tok, [m]), &device);
            let slot = Tensor::<B, 1, Int>::from_data(TensorData::new(slot, [m]), &device);
            let h =
                self.down[ex].forward(gelu(self.up[ex].forward(x.clone().select(0, tok.clone()))));
            let g = gates.clone().select(0, slot).reshape([m, 1]);
            y = y.select_assign(0, tok, h * g, burn::tensor::IndexingUpdateOp::Add);
        }
        let mut aux = Tensor::<B, 1>::zeros([1], &device);
        if let (Balancing::AuxLoss, Some(p)) = (c.balancing, &routing.probs) {
            let slots = assignments.len().max(1) as f32;
            let mut f = vec![0f32; e];
            for &ex in &assignments {
                f[ex] += 1.0 / slots;
            }
            let f = Tensor::<B, 1>::from_data(TensorData::new(f, [e]), &device);
            let p_mean = p.clone().mean_dim(0).reshape([e]);
            aux = aux + (f * p_mean).sum().mul_scalar(c.aux_alpha * e as f64);
        }
        if let (true, Some(z)) = (c.z_loss > 0.0, &routing.logits) {
            let m = z.clone().detach().max_dim(1);
            let lse = (z.clone() - m.clone()).exp().sum_dim(1).log() + m;
            aux = aux + lse.square().mean().mul_scalar(c.z_loss);
        }
        let first_choice = routing.experts.iter().map(|c| c[0]).collect();
        MoeOutput {
            y,
            aux_loss: aux,
            assignments,
            first_choice,
            dropped,
        }
    }

    /// Auxiliary-loss-free balancing: after a step whose slots went to `assignments`,
    /// `b_i += γ · sign(mean load − load_i)`, then b is made zero-mean. No-op for other
    /// balancing modes. The parameter keeps its id, so checkpoints stay reproducible.
    pub fn update_bias(&mut self, assignments: &[usize]) {
        let c = &self.config;
        if c.balancing != Balancing::AuxFree || assignments.is_empty() {
            return;
        }
        let e = c.experts;
        let mut load = vec![0f64; e];
        for &a in assignments {
            load[a] += 1.0;
        }
        let mean = assignments.len() as f64 / e as f64;
        let mut b: Vec<f64> = host(self.bias.val())
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        for (bi, l) in b.iter_mut().zip(&load) {
            let s = mean - l;
            *bi += c.bias_gamma
                * if s > 0.0 {
                    1.0
                } else if s < 0.0 {
                    -1.0
                } else {
                    0.0
                };
        }
        let m = b.iter().sum::<f64>() / e as f64;
        let b: Vec<f32> = b.iter().map(|v| (v - m) as f32).collect();
        let device = self.bias.val().device();
        let t = Tensor::<B, 1>::from_data(TensorData::new(b, [e]), &device);
        self.bias = Param::initialized(self.bias.id, t);
    }

    /// The router's trained parameters as latent weight tensors (for gradient-norm checks).
    pub fn router_weights(&self) -> Vec<&Param<Tensor<B, 2>>> {
        let mut v = Vec::new();
        if let Some(l) = &self.router_float {
            v.push(&l.weight);
        }
        if let Some(l) = &self.router_binary {
            v.push(&l.weight);
        }
        v
    }
}

impl<B: Backend> Summarize for Moe<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        if let Some(l) = &self.router_float {
            l.summarize(&format!("{name}.router"), out);
        }
        if let Some(l) = &self.router_binary {
            l.summarize(&format!("{name}.router"), out);
        }
        for (i, (u, d)) in self.up.iter().zip(&self.down).enumerate() {
            u.summarize(&format!("{name}.expert{i}.up"), out);
            d.summarize(&format!("{name}.expert{i}.down"), out);
        }
    }
}

#[cfg(test)]
mod tests;
