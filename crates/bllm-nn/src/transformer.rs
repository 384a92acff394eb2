//! [`ByteLm`]: a decoder-only byte-level transformer (pre-norm, causal multi-head attention,
//! MLP) whose projections are each float, 1-bit or BitNet b1.58 as configured.

use bllm_ste::attention::{Mask, attention};
use bllm_ste::estimators::Levels;
use bllm_ste::fused::gelu;
use bllm_ste::softmax::softmax;
use bllm_ste::{Ctx, Estimator};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::proj::{BinaryOptions, Proj, ProjKind, RmsGain};
use crate::summary::{LayerSummary, Summarize};
use crate::{BinaryLinear, BinaryLinearConfig, NnError, Result, kaiming_uniform};

/// How attention weights are formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// `softmax(QKᵀ/√d_h)` under the causal mask.
    #[default]
    Softmax,
    /// BiBERT's Bi-Attention (Qin et al. 2022): a {0, 1} mask `bool(QKᵀ/√d_h)` through the model's
    /// estimator (its ±1 output mapped to {0, 1}) instead of softmax, under the causal mask.
    /// Here the masked values are averaged (divided by the number of causal positions `i + 1`)
    /// so that the output scale does not grow with the position.
    BinaryMask,
}

impl AttentionKind {
    /// The names recipes use.
    pub const NAMES: [&'static str; 2] = ["softmax", "binary_mask"];

    /// Parses a recipe name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "softmax" => Some(Self::Softmax),
            "binary_mask" => Some(Self::BinaryMask),
            _ => None,
        }
    }
}

/// The precision of each projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Projections {
    /// Attention query.
    pub q: ProjKind,
    /// Attention key.
    pub k: ProjKind,
    /// Attention value.
    pub v: ProjKind,
    /// Attention output.
    pub o: ProjKind,
    /// MLP up-projection.
    pub up: ProjKind,
    /// MLP down-projection.
    pub down: ProjKind,
    /// Byte embedding (`float` or `binary`).
    pub embed: ProjKind,
    /// Output head.
    pub head: ProjKind,
}

impl Projections {
    /// Every projection of the blocks (`q k v o up down`) set to `kind`, embedding and head float.
    pub fn blocks(kind: ProjKind) -> Self {
        Self {
            q: kind,
            k: kind,
            v: kind,
            o: kind,
            up: kind,
            down: kind,
            embed: ProjKind::Float,
            head: ProjKind::Float,
        }
    }
}

/// Configuration of a [`ByteLm`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ByteLmConfig {
    /// Vocabulary (256 for bytes).
    pub vocab: usize,
    /// Residual width.
    pub d_model: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads (`d_model` must be a multiple).
    pub heads: usize,
    /// MLP hidden width = `mlp_ratio · d_model`.
    pub mlp_ratio: usize,
    /// Longest context (learned positions).
    pub context: usize,
    /// Precision of each projection.
    pub projections: Projections,
    /// Options shared by the binary projections.
    pub binary: BinaryOptions,
    /// Softmax or BiBERT {0, 1} attention.
    pub attention: AttentionKind,
    /// Replace every block's MLP by this mixture of experts (`d_model` is set from the model;
    /// the hash router keys on byte ids).
    pub moe: Option<crate::MoeConfig>,
}

impl ByteLmConfig {
    /// A float model of the given size.
    pub fn new(d_model: usize, layers: usize, heads: usize, context: usize) -> Self {
        Self {
            vocab: 256,
            d_model,
            layers,
            heads,
            mlp_ratio: 4,
            context,
            projections: Projections::default(),
            binary: BinaryOptions::default(),
            attention: AttentionKind::Softmax,
            moe: None,
        }
    }

    /// Checks sizes and the estimator.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        if self.vocab == 0 || self.d_model == 0 || self.layers == 0 || self.context == 0 {
            return bad(format!(
                "vocab, d_model, layers and context must be >= 1 (got {}, {}, {}, {})",
                self.vocab, self.d_model, self.layers, self.context
            ));
        }
        if self.heads == 0 || self.d_model % self.heads != 0 {
            return bad(format!(
                "d_model ({}) must be a multiple of heads ({})",
                self.d_model, self.heads
            ));
        }
        if self.mlp_ratio == 0 {
            return bad("mlp_ratio must be >= 1".into());
        }
        if self.projections.embed == ProjKind::Bitnet {
            return bad("the embedding can be float or binary, not bitnet".into());
        }
        self.binary.estimator.validate()?;
        if let Some(m) = &self.moe {
            m.validate()?;
        }
        Ok(())
    }

    /// Builds the model; every weight comes from `seed` (one derived seed per projection).
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<ByteLm<B>> {
        self.validate()?;
        let d = self.d_model;
        let s = |i: u64| seed.wrapping_mul(0x9E37_79B9).wrapping_add(i);
        let p = &self.projections;
        let o = &self.binary;
        let embed = match p.embed {
            ProjKind::Binary => ByteEmbedding {
                float: None,
                binary: Some(
                    BinaryLinearConfig::new(self.vocab, d)
                        .with_weight(o.estimator.clone())
                        .with_scaling(o.scaling.clone())
                        .with_bias(false)
                        .init(device, s(1))?,
                ),
            },
            _ => ByteEmbedding {
                float: Some(Param::from_tensor(kaiming_uniform::<B>(
                    self.vocab,
                    d,
                    s(1),
                    device,
                ))),
                binary: None,
            },
        };
        let mut blocks = Vec::with_capacity(self.layers);
        for l in 0..self.layers {
            let b = 100 * (l as u64 + 1);
            let proj = |kind, din, dout, i| Proj::new(kind, din, dout, true, o, s(b + i), device);
            let h = self.mlp_ratio * d;
            let moe = match &self.moe {
                Some(m) => Some(
                    crate::MoeConfig {
                        d_model: d,
                        ..m.clone()
                    }
                    .init(device, s(b + 7))?,
                ),
                None => None,
            };
            let mlp = moe.is_none();
            blocks.push(Block {
                norm1: RmsGain::new(d, device),
                attention: Attention {
                    q: proj(p.q, d, d, 1)?,
                    k: proj(p.k, d, d, 2)?,
                    v: proj(p.v, d, d, 3)?,
                    o: proj(p.o, d, d, 4)?,
                    heads: self.heads,
                    kind: self.attention,
                    estimator: o.estimator.clone(),
                },
                norm2: RmsGain::new(d, device),
                up: if mlp {
                    Some(proj(p.up, d, h, 5)?)
                } else {
                    None
                },
                down: if mlp {
                    Some(proj(p.down, h, d, 6)?)
                } else {
                    None
                },
                moe,
            });
        }
        let model = ByteLm {
            embed,
            positions: Param::from_tensor(kaiming_uniform::<B>(self.context, d, s(2), device)),
            blocks,
            norm: RmsGain::new(d, device),
            head: Proj::new(p.head, d, self.vocab, true, o, s(3), device)?,
            config: self.clone(),
        };
        Ok(crate::with_deterministic_ids(model, 0))
    }
}

/// The byte embedding: a float table or a binarized one (`BinaryLinear` rows, one per byte).
#[derive(Module, Debug)]
pub struct ByteEmbedding<B: Backend> {
    /// Float table `[vocab, d_model]`.
    pub float: Option<Param<Tensor<B, 2>>>,
    /// Binary table (`d_input = vocab`, `d_output = d_model`, no bias).
    pub binary: Option<BinaryLinear<B>>,
}

impl<B: Backend> ByteEmbedding<B> {
    /// `[batch, t]` byte ids → `[batch, t, d_model]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, ctx: &Ctx) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let table = match (&self.float, &self.binary) {
            (Some(w), _) => w.val(),
            (None, Some(l)) => l.effective_weight(ctx),
            (None, None) => unreachable!("ByteEmbedding has a float or a binary table"),
        };
        let d = table.dims()[1];
        table.select(0, tokens.reshape([b * t])).reshape([b, t, d])
    }
}

/// Causal multi-head self-attention with four projections.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub q: Proj<B>,
    /// Key projection.
    pub k: Proj<B>,
    /// Value projection.
    pub v: Proj<B>,
    /// Output projection.
    pub o: Proj<B>,
    /// Heads.
    pub heads: usize,
    /// Softmax or {0, 1} mask.
    pub kind: AttentionKind,
    /// Estimator of the {0, 1} mask.
    pub estimator: Estimator,
}

/// What a forward pass saw, for monitors (filled only when asked for).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmStats {
    /// Per layer, per head: mean attention entropy `−Σ p log p` in nats (softmax) or the
    /// density of ones among the causal positions ({0, 1} attention).
    pub attention: Vec<Vec<f64>>,
    /// Activation clamp fraction of each BitLinear projection, in forward order.
    pub act_clamp: Vec<f64>,
}

/// `[t, t]` mask, `true` where key `j` is after query `i` (not allowed).
fn future_mask<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    let data: Vec<bool> = (0..t * t).map(|n| n % t > n / t).collect();
    Tensor::from_data(TensorData::new(data, [t, t]), device)
}

impl<B: Backend> Attention<B> {
    /// Shapes: `[batch, t, d]` → `[batch, t, d]`. Position `i` only reads positions `≤ i`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &Ctx,
        mut stats: Option<&mut LmStats>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let mut clamp = Vec::new();
        let mut split = |p: &Proj<B>, i: u64| {
            let c = stats.is_some().then_some(&mut clamp);
            p.forward(x.clone(), &ctx.fork(i), c)
                .reshape([b, t, h, dh])
                .swap_dims(1, 2)
        };
        let q = split(&self.q, 1);
        let k = split(&self.k, 2);
        let v = split(&self.v, 3);
        if self.kind == AttentionKind::Softmax {
            let scale = 1.0 / (dh as f64).sqrt();
            if let Some(s) = stats.as_deref_mut() {
                // The weights for the monitor only: the output below does not depend on them.
                let scores = q
                    .clone()
                    .matmul(k.clone().swap_dims(2, 3))
                    .mul_scalar(scale);
                let future = future_mask::<B>(t, &scores.device())
                    .unsqueeze::<4>()
                    .expand([b, h, t, t]);
                let weights = softmax(scores.mask_fill(future, -1e9), 3).detach();
                s.attention.push(self.head_stats(weights));
                s.act_clamp.extend(clamp.iter().copied());
            }
            let out = attention(q, k, v, Mask::Causal { offset: 0 }, scale)
                .swap_dims(1, 2)
                .reshape([b, t, d]);
            return self.project_out(out, ctx, stats);
        }
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt());
        let device = scores.device();
        let future = future_mask::<B>(t, &device)
            .unsqueeze::<4>()
            .expand([b, h, t, t]);
        // {0, 1} attention: the estimator's mask averaged over the causal positions.
        let q = self.estimator.apply(scores, &ctx.fork(5));
        let ones = match self.estimator.levels() {
            Levels::ZeroOne => q,
            _ => q.add_scalar(1.0).div_scalar(2.0),
        };
        let counts: Vec<f32> = (0..t).map(|i| 1.0 / (i + 1) as f32).collect();
        let inv =
            Tensor::<B, 1>::from_data(TensorData::new(counts, [t]), &device).reshape([1, 1, t, 1]);
        let weights = ones.mask_fill(future, 0.0) * inv;
        if let Some(s) = stats.as_deref_mut() {
            s.attention.push(self.head_stats(weights.clone()));
            s.act_clamp.extend(clamp.iter().copied());
        }
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        self.project_out(out, ctx, stats)
    }

    /// The output projection of the heads `[batch, t, d]`, its clamp statistics to `stats`.
    fn project_out(
        &self,
        out: Tensor<B, 3>,
        ctx: &Ctx,
        stats: Option<&mut LmStats>,
    ) -> Tensor<B, 3> {
        let mut clamp_o = Vec::new();
        let y = self
            .o
            .forward(out, &ctx.fork(4), stats.is_some().then_some(&mut clamp_o));
        if let Some(s) = stats {
            s.act_clamp.extend(clamp_o);
        }
        y
    }

    /// Per-head entropy (softmax) or density of ones over the causal positions (mask).
    fn head_stats(&self, w: Tensor<B, 4>) -> Vec<f64> {
        let [_, h, t, _] = w.dims();
        let per_head: Tensor<B, 1> = match self.kind {
            AttentionKind::Softmax => {
                let ent = w.clone().neg() * w.clamp_min(1e-12).log();
                ent.sum_dim(3).mean_dim(2).mean_dim(0).reshape([h])
            }
            AttentionKind::BinaryMask => {
                // Weights are (mask / (i + 1)); a full causal row sums to 1.
                w.sum_dim(3).mean_dim(2).mean_dim(0).reshape([h])
            }
        };
        let _ = t;
        per_head
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default()
    }
}

/// A pre-norm block: `x + Attn(norm(x))`, then `x + Down(GELU(Up(norm(x))))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: RmsGain<B>,
    /// Self-attention.
    pub attention: Attention<B>,
    /// Norm before the MLP.
    pub norm2: RmsGain<B>,
    /// MLP up-projection (absent when the block has a mixture of experts).
    pub up: Option<Proj<B>>,
    /// MLP down-projection (absent when the block has a mixture of experts).
    pub down: Option<Proj<B>>,
    /// Mixture of experts in place of the MLP.
    pub moe: Option<crate::Moe<B>>,
}

/// What the mixtures of experts of one forward pass did.
pub struct MoeTrace<B: Backend> {
    /// Sum of every MoE layer's auxiliary loss, `[1]`.
    pub aux_loss: Tensor<B, 1>,
    /// Per MoE layer: slot assignments, first choices, dropped slots.
    pub layers: Vec<(Vec<usize>, Vec<usize>, usize)>,
}

impl<B: Backend> Block<B> {
    /// Shapes: `[batch, t, d]` → `[batch, t, d]`. `keys` are the byte ids (hash routing);
    /// an MoE layer appends what it did to `trace`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &Ctx,
        mut stats: Option<&mut LmStats>,
        keys: Option<&[u64]>,
        trace: Option<&mut MoeTrace<B>>,
    ) -> Tensor<B, 3> {
        let a = self
            .attention
            .forward(self.norm1.forward(x.clone()), ctx, stats.as_deref_mut());
        let x = x + a;
        let h = self.norm2.forward(x.clone());
        if let Some(moe) = &self.moe {
            let [b, t, d] = h.dims();
            let out = moe.forward(h.reshape([b * t, d]), keys, &ctx.fork(8));
            if let Some(tr) = trace {
                tr.aux_loss = tr.aux_loss.clone() + out.aux_loss;
                tr.layers
                    .push((out.assignments, out.first_choice, out.dropped));
            }
            return x + out.y.reshape([b, t, d]);
        }
        let (Some(up), Some(down)) = (&self.up, &self.down) else {
            return x;
        };
        let mut clamp = Vec::new();
        let want = stats.is_some();
        let hid = up.forward(h, &ctx.fork(6), want.then_some(&mut clamp));
        let m = down.forward(gelu(hid), &ctx.fork(7), want.then_some(&mut clamp));
        if let Some(s) = stats {
            s.act_clamp.extend(clamp);
        }
        x + m
    }
}

/// A decoder-only byte-level language model.
///
/// Shapes: tokens `[batch, t]` (`t ≤ context`, byte ids) → logits `[batch, t, vocab]`.
#[derive(Module, Debug)]
pub struct ByteLm<B: Backend> {
    /// Byte embedding.
    pub embed: ByteEmbedding<B>,
    /// Learned positions `[context, d_model]`.
    pub positions: Param<Tensor<B, 2>>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm.
    pub norm: RmsGain<B>,
    /// Output head.
    pub head: Proj<B>,
    /// The configuration (not a parameter).
    pub config: ByteLmConfig,
}

impl<B: Backend> ByteLm<B> {
    /// Logits for `tokens`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, ctx: &Ctx) -> Tensor<B, 3> {
        self.forward_with(tokens, ctx, None)
    }

    /// Logits, filling `stats` when given.
    pub fn forward_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        ctx: &Ctx,
        stats: Option<&mut LmStats>,
    ) -> Tensor<B, 3> {
        self.forward_full(tokens, ctx, stats, None)
    }

    /// Logits, filling `stats` and the MoE `trace` when given.
    pub fn forward_full(
        &self,
        tokens: Tensor<B, 2, Int>,
        ctx: &Ctx,
        mut stats: Option<&mut LmStats>,
        mut trace: Option<&mut MoeTrace<B>>,
    ) -> Tensor<B, 3> {
        let [_, t] = tokens.dims();
        let keys: Option<Vec<u64>> = self
            .blocks
            .iter()
            .any(|b| {
                b.moe
                    .as_ref()
                    .is_some_and(|m| m.config.router == crate::RouterKind::Hash)
            })
            .then(|| {
                tokens
                    .clone()
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v as u64)
                    .collect()
            });
        let d = self.config.d_model;
        let pos = self.positions.val().slice([0..t, 0..d]).unsqueeze::<3>();
        let mut x = self.embed.forward(tokens, &ctx.fork(1)) + pos;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(
                x,
                &ctx.fork(100 + l as u64),
                stats.as_deref_mut(),
                keys.as_deref(),
                trace.as_deref_mut(),
            );
        }
        let mut clamp = Vec::new();
        let y = self.head.forward(
            self.norm.forward(x),
            &ctx.fork(3),
            stats.is_some().then_some(&mut clamp),
        );
        if let Some(s) = stats {
            s.act_clamp.extend(clamp);
        }
        y
    }

    /// Every quantised projection with its name (`block0.q`, …, `embed`, `head`), in forward
    /// order. The binary embedding is listed through its `BinaryLinear` table.
    pub fn quantised(&self) -> Vec<(String, QuantRef<'_, B>)> {
        let mut out = Vec::new();
        if let Some(l) = &self.embed.binary {
            out.push(("embed".to_owned(), QuantRef::Table(l)));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, p) in b.projs() {
                if p.latent().is_some() {
                    out.push((format!("block{i}.{n}"), QuantRef::Proj(p)));
                }
            }
        }
        if self.head.latent().is_some() {
            out.push(("head".to_owned(), QuantRef::Proj(&self.head)));
        }
        out
    }

    /// Replaces the latent weights of the `i`-th entry of [`ByteLm::quantised`].
    pub fn set_quantised(&mut self, i: usize, w: Tensor<B, 2>) {
        let mut n = 0;
        if let Some(l) = self.embed.binary.as_mut() {
            if i == 0 {
                l.weight = Param::from_tensor(w);
                return;
            }
            n = 1;
        }
        for b in self.blocks.iter_mut() {
            for p in b.projs_mut() {
                if p.latent().is_some() {
                    if n == i {
                        p.set_latent(w);
                        return;
                    }
                    n += 1;
                }
            }
        }
        if n == i {
            self.head.set_latent(w);
        }
    }
}

impl<B: Backend> ByteLm<B> {
    /// Calls `f(name, projection)` for every block projection whose short name (`q`, `k`, `v`,
    /// `o`, `up`, `down`) is in `targets`; `name` is the full name (`block0.q`).
    pub fn for_each_proj_mut(
        &mut self,
        targets: &[String],
        mut f: impl FnMut(&str, &mut Proj<B>) -> Result<()>,
    ) -> Result<()> {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let names: Vec<&'static str> = b.projs().iter().map(|(n, _)| *n).collect();
            for (n, p) in names.into_iter().zip(b.projs_mut()) {
                if targets.iter().any(|t| t == n) {
                    f(&format!("block{i}.{n}"), p)?;
                }
            }
        }
        Ok(())
    }
}

impl<B: Backend> Block<B> {
    /// The projections with their names (`up`/`down` only without a mixture of experts).
    pub fn projs(&self) -> Vec<(&'static str, &Proj<B>)> {
        let mut v = vec![
            ("q", &self.attention.q),
            ("k", &self.attention.k),
            ("v", &self.attention.v),
            ("o", &self.attention.o),
        ];
        if let Some(p) = &self.up {
            v.push(("up", p));
        }
        if let Some(p) = &self.down {
            v.push(("down", p));
        }
        v
    }

    fn projs_mut(&mut self) -> Vec<&mut Proj<B>> {
        let mut v = vec![
            &mut self.attention.q,
            &mut self.attention.k,
            &mut self.attention.v,
            &mut self.attention.o,
        ];
        if let Some(p) = self.up.as_mut() {
            v.push(p);
        }
        if let Some(p) = self.down.as_mut() {
            v.push(p);
        }
        v
    }
}

/// A quantised layer of a [`ByteLm`]: a projection or the binary embedding table.
#[derive(Clone, Copy, Debug)]
pub enum QuantRef<'a, B: Backend> {
    /// A binary or BitNet projection.
    Proj(&'a Proj<B>),
    /// The binary embedding table.
    Table(&'a BinaryLinear<B>),
}

impl<B: Backend> QuantRef<'_, B> {
    /// Latent weights `[d_input, d_output]`.
    pub fn latent(&self) -> &Param<Tensor<B, 2>> {
        match self {
            Self::Proj(p) => p
                .latent()
                .expect("quantised projections have latent weights"),
            Self::Table(l) => &l.weight,
        }
    }

    /// Quantised and scaled weights.
    pub fn effective_weight(&self, ctx: &Ctx) -> Tensor<B, 2> {
        match self {
            Self::Proj(p) => p
                .effective_weight(ctx)
                .expect("quantised projections have effective weights"),
            Self::Table(l) => l.effective_weight(ctx),
        }
    }

    /// The weight estimator.
    pub fn estimator(&self) -> Estimator {
        match self {
            Self::Proj(p) => p.estimator().unwrap_or_default(),
            Self::Table(l) => l.config.weight.clone(),
        }
    }

    /// Whether this is a BitNet (ternary) layer.
    pub fn ternary(&self) -> bool {
        matches!(self.estimator().levels(), Levels::Ternary)
    }
}

impl<B: Backend> Summarize for ByteLm<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        let c = &self.config;
        let d = c.d_model;
        if let Some(w) = &self.embed.float {
            let n = w.dims()[0] * w.dims()[1];
            out.push(LayerSummary {
                name: format!("{name}embed"),
                kind: "Embedding",
                binary_params: 0,
                ternary_params: 0,
                float_params: n,
                packed_bytes: 0,
                float_bytes: 4 * n,
                float32_equivalent_bytes: 4 * n,
            });
        }
        if let Some(l) = &self.embed.binary {
            l.summarize(&format!("{name}embed"), out);
        }
        let pos = c.context * d;
        out.push(LayerSummary {
            name: format!("{name}positions"),
            kind: "Embedding",
            binary_params: 0,
            ternary_params: 0,
            float_params: pos,
            packed_bytes: 0,
            float_bytes: 4 * pos,
            float32_equivalent_bytes: 4 * pos,
        });
        let norms = (2 * c.layers + 1) * d;
        out.push(LayerSummary {
            name: format!("{name}norms"),
            kind: "RmsNorm",
            binary_params: 0,
            ternary_params: 0,
            float_params: norms,
            packed_bytes: 0,
            float_bytes: 4 * norms,
            float32_equivalent_bytes: 4 * norms,
        });
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, p) in b.projs() {
                p.summarize(&format!("{name}block{i}.{n}"), out);
            }
            if let Some(m) = &b.moe {
                m.summarize(&format!("{name}block{i}.moe"), out);
            }
        }
        self.head.summarize(&format!("{name}head"), out);
    }
}

#[cfg(test)]
mod tests;
