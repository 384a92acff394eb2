//! A BERT encoder (post-LN, GELU, learned absolute positions, token types), as Hugging Face's
//! `BertModel`, with its projections as [`Proj`] so each can later be float, 1-bit, BitNet or
//! carry an adapter. Config from the checkpoint's `config.json`; tensor names those of the
//! checkpoint (`embeddings.word_embeddings.weight`, `encoder.layer.3.attention.self.query.weight`,
//! …; a `bert.` prefix, as `BertFor*` checkpoints write it, is accepted).
//!
//! For all-MiniLM-L6-v2 and other sentence-transformers models, [`Bert::mean_pool`] and
//! [`l2_normalize`] reproduce its `Pooling(mean)` and `Normalize` modules.

use std::path::Path;

use bllm_nn::Proj;
use bllm_ste::Ctx;
use bllm_ste::fused::gelu;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::common::{matrix, proj, read_json, vector};
use crate::{Checkpoint, ModelError, Result};

/// The fields of a BERT `config.json` the architecture reads (others are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP activation; `gelu` (exact, erf) is supported.
    pub hidden_act: String,
    /// Longest input (learned positions).
    pub max_position_embeddings: usize,
    /// Token types.
    pub type_vocab_size: usize,
    /// Layer-norm ε.
    pub layer_norm_eps: f64,
    /// `absolute` is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks what the architecture supports; errors name the key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |k: &str, m: String| Err(ModelError::config(path, k, m));
        if self.hidden_act != "gelu" {
            return bad(
                "hidden_act",
                format!("`{}` is not supported (only `gelu`)", self.hidden_act),
            );
        }
        if self.position_embedding_type != "absolute" {
            return bad(
                "position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    self.position_embedding_type
                ),
            );
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(k, "must be positive".into());
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad("layer_norm_eps", "must be positive".into());
        }
        Ok(())
    }
}

/// Token, position and token-type embeddings, summed and layer-normed.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `embeddings.word_embeddings.weight` `[vocab, d]`.
    pub word_embeddings: Param<Tensor<B, 2>>,
    /// `embeddings.position_embeddings.weight` `[max_positions, d]`.
    pub position_embeddings: Param<Tensor<B, 2>>,
    /// `embeddings.token_type_embeddings.weight` `[types, d]`.
    pub token_type_embeddings: Param<Tensor<B, 2>>,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
}

/// One post-LN encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// `attention.self.query`.
    pub query: Proj<B>,
    /// `attention.self.key`.
    pub key: Proj<B>,
    /// `attention.self.value`.
    pub value: Proj<B>,
    /// `attention.output.dense`.
    pub attention_output: Proj<B>,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm<B>,
    /// `intermediate.dense`.
    pub intermediate: Proj<B>,
    /// `output.dense`.
    pub output: Proj<B>,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
}

/// The BERT encoder.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Layers.
    pub layers: Vec<BertLayer<B>>,
    /// The config it was built from.
    #[module(skip)]
    pub config: BertConfig,
}

fn layer_norm<B: Backend>(
    ck: &mut Checkpoint,
    prefix: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> Result<LayerNorm<B>> {
    let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    ln.gamma = Param::from_tensor(vector(ck.take(&format!("{prefix}.weight"), &[d])?, device));
    ln.beta = Some(Param::from_tensor(vector(
        ck.take(&format!("{prefix}.bias"), &[d])?,
        device,
    )));
    Ok(ln)
}

impl<B: Backend> Bert<B> {
    /// Loads a BERT checkpoint: `dir/config.json` and `dir/model.safetensors`. Every tensor is
    /// checked against the config; a missing, mis-shaped or unused tensor is an error naming it
    /// (the pooler, which sentence embeddings do not use, is skipped).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let mut ck = Checkpoint::open(&dir.join("model.safetensors"))?;
        Self::from_checkpoint(config, &mut ck, device).and_then(|m| {
            let ignored = ck.finish(|n| {
                let n = n.strip_prefix("bert.").unwrap_or(n);
                n.starts_with("pooler.") || n == "embeddings.position_ids"
            })?;
            if !ignored.is_empty() {
                tracing::debug!(?ignored, "tensors not used by the encoder");
            }
            Ok(m)
        })
    }

    /// Builds the encoder from `ck`'s tensors (which it marks as taken).
    pub fn from_checkpoint(
        config: BertConfig,
        ck: &mut Checkpoint,
        device: &B::Device,
    ) -> Result<Self> {
        let pre = if ck.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let table = |ck: &mut Checkpoint, name: &str, rows: usize| -> Result<Param<Tensor<B, 2>>> {
            let v = ck.take(&format!("{pre}embeddings.{name}.weight"), &[rows, d])?;
            Ok(Param::from_tensor(matrix(v, rows, d, device)))
        };
        let embeddings = BertEmbeddings {
            word_embeddings: table(ck, "word_embeddings", config.vocab_size)?,
            position_embeddings: table(ck, "position_embeddings", config.max_position_embeddings)?,
            token_type_embeddings: table(ck, "token_type_embeddings", config.type_vocab_size)?,
            layer_norm: layer_norm(ck, &format!("{pre}embeddings.LayerNorm"), d, eps, device)?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("{pre}encoder.layer.{i}");
            let mut lin = |name: &str, d_in: usize, d_out: usize| -> Result<Proj<B>> {
                proj(
                    ck,
                    &format!("{p}.{name}.weight"),
                    Some(&format!("{p}.{name}.bias")),
                    d_in,
                    d_out,
                    device,
                )
            };
            let query = lin("attention.self.query", d, d)?;
            let key = lin("attention.self.key", d, d)?;
            let value = lin("attention.self.value", d, d)?;
            let attention_output = lin("attention.output.dense", d, d)?;
            let intermediate = lin("intermediate.dense", d, config.intermediate_size)?;
            let output = lin("output.dense", config.intermediate_size, d)?;
            layers.push(BertLayer {
                query,
                key,
                value,
                attention_output,
                attention_norm: layer_norm(
                    ck,
                    &format!("{p}.attention.output.LayerNorm"),
                    d,
                    eps,
                    device,
                )?,
                intermediate,
                output,
                output_norm: layer_norm(ck, &format!("{p}.output.LayerNorm"), d, eps, device)?,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            config,
        })
    }

    /// Hidden states of the last layer. Shapes: `ids` and `mask` `[batch, t]` (mask 1 for real
    /// tokens, 0 for padding; token types all 0) → `[batch, t, d]`. `t` must not exceed
    /// `max_position_embeddings`. Padded keys get no attention weight (exactly 0), so a row's
    /// output does not depend on how much padding its batch has.
    pub fn forward(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2>, ctx: &Ctx) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let c = &self.config;
        let d = c.hidden_size;
        let h = c.num_attention_heads;
        let dh = d / h;
        let e = &self.embeddings;
        let words = e
            .word_embeddings
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d]);
        let pos = e.position_embeddings.val().slice(0..t).unsqueeze::<3>();
        let types = e.token_type_embeddings.val().slice(0..1).unsqueeze::<3>();
        // Token states stay `[b·t, d]` between layers so each projection is one 2-D matrix
        // product (a `[b, t, d]` input would be multiplied batch by batch, re-packing the
        // weight for every sequence).
        let mut x = e
            .layer_norm
            .forward(words + pos + types)
            .reshape([b * t, d]);
        // Additive key mask `[b, 1, 1, t]`: 0 for tokens, −1e30 for padding (exp → exactly 0).
        let bias = (mask.neg().add_scalar(1.0) * -1e30).reshape([b, 1, 1, t]);
        let scale = 1.0 / (dh as f64).sqrt();
        for (i, l) in self.layers.iter().enumerate() {
            let ctx = ctx.fork(i as u64);
            let heads = |p: &Proj<B>, x: Tensor<B, 2>, k: u64| {
                p.forward(x, &ctx.fork(k), None)
                    .reshape([b, t, h, dh])
                    .swap_dims(1, 2)
            };
            let q = heads(&l.query, x.clone(), 0);
            let k = heads(&l.key, x.clone(), 1);
            let v = heads(&l.value, x.clone(), 2);
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
            let att = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b * t, d]);
            let att = l.attention_output.forward(att, &ctx.fork(3), None);
            x = l.attention_norm.forward(att + x);
            let m = gelu(l.intermediate.forward(x.clone(), &ctx.fork(4), None));
            let m = l.output.forward(m, &ctx.fork(5), None);
            x = l.output_norm.forward(m + x);
        }
        x.reshape([b, t, d])
    }

    /// Mean of the hidden states over the real tokens (sentence-transformers' mean pooling:
    /// `Σ mask·h / max(Σ mask, 1e-9)`). Shapes: `[batch, t, d]`, `[batch, t]` → `[batch, d]`.
    pub fn mean_pool(hidden: Tensor<B, 3>, mask: Tensor<B, 2>) -> Tensor<B, 2> {
        let [b, t, d] = hidden.dims();
        let m = mask.reshape([b, t, 1]);
        let sum = (hidden * m.clone()).sum_dim(1).reshape([b, d]);
        let count = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
        sum / count
    }
}

/// Rows divided by their L2 norm (`max(‖x‖, 1e-12)`, as `torch.nn.functional.normalize`).
/// Shapes: `[batch, d]` → `[batch, d]`.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / n
}
