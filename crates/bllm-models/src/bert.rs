//! A BERT encoder (post-LN, GELU, learned absolute positions, token types), as Hugging Face's
//! `BertModel`, with its projections as [`Proj`] so each can later be float, 1-bit, BitNet or
//! carry an adapter. Config from the checkpoint's `config.json`; tensor names those of the
//! checkpoint (`embeddings.word_embeddings.weight`, `encoder.layer.3.attention.self.query.weight`,
//! …; a `bert.` prefix, as `BertFor*` checkpoints write it, is accepted).
//!
//! For all-MiniLM-L6-v2 and other sentence-transformers models, [`Bert::mean_pool`] and
//! [`l2_normalize`] reproduce its `Pooling(mean)` and `Normalize` modules.
//!
//! Two batch layouts: **padded** (`[batch, t]` ids and a key mask; [`Bert::forward`]), as
//! `transformers` runs it, and **packed** (the sequences' tokens back to back with their
//! lengths, no padding; [`Bert::embed_packed`], [`Bert::forward_layers_packed`],
//! [`Bert::mean_pool_packed`]). Packed is what the sentence encoder and fine-tuning use: every
//! projection, norm and GELU runs on real tokens only and attention is block-diagonal
//! ([`Mask::Segments`]). A batch of 64 random KJV verses is 45 % real tokens when padded to its
//! longest, so padding was more than half of a fine-tuning step's work. A token's state is the
//! same in both layouts up to float rounding (tested).

use std::path::Path;
use std::sync::Arc;

use bllm_nn::Proj;
use bllm_ste::Ctx;
use bllm_ste::attention::{Mask, attention};
use bllm_ste::fused::gelu;
use bllm_ste::norm::layer_norm as fused_layer_norm;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
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

/// A checkpoint tensor as `(name, shape, row-major f32 values)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

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
    /// ε of both LayerNorms (`layer_norm_eps`; Burn keeps its own copy private).
    #[module(skip)]
    pub layer_norm_eps: f64,
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

/// Additive key mask `[b, 1, 1, t]` of a `[b, t]` mask: 0 for tokens, −1e30 for padding
/// (exp → exactly 0).
pub fn key_bias<B: Backend>(mask: Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, t] = mask.dims();
    (mask.neg().add_scalar(1.0) * -1e30).reshape([b, 1, 1, t])
}

impl<B: Backend> BertLayer<B> {
    /// One post-LN layer on token states `x` `[b·t, d]` with additive key bias `bias`
    /// `[b, 1, 1, t]` ([`key_bias`]) and `n_heads` attention heads → `[b·t, d]`. `ctx` is the
    /// layer's context (its projections fork it 0–5).
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        bias: Tensor<B, 4>,
        n_heads: usize,
        ctx: &Ctx,
    ) -> Tensor<B, 2> {
        let [b, _, _, t] = bias.dims();
        let mask = Mask::KeyBias(bias.reshape([b, t]));
        self.forward_with(x, (b, t), mask, n_heads, ctx)
    }

    /// [`forward`](Self::forward) on packed token states: `x` `[n, d]` holds sequences of
    /// `lens` tokens back to back (`Σ lens = n`, each positive), and each token attends to its
    /// own sequence only → `[n, d]`.
    pub fn forward_packed(
        &self,
        x: Tensor<B, 2>,
        lens: &Arc<[usize]>,
        n_heads: usize,
        ctx: &Ctx,
    ) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        self.forward_with(x, (1, n), Mask::Segments(lens.clone()), n_heads, ctx)
    }

    /// The layer on `x` `[b·t, d]` split into `b` rows of `t` tokens, attention masked by `mask`.
    fn forward_with(
        &self,
        x: Tensor<B, 2>,
        (b, t): (usize, usize),
        mask: Mask<B>,
        n_heads: usize,
        ctx: &Ctx,
    ) -> Tensor<B, 2> {
        let [_, d] = x.dims();
        let h = n_heads;
        let dh = d / h;
        let scale = 1.0 / (dh as f64).sqrt();
        let heads = |p: &Proj<B>, x: Tensor<B, 2>, k: u64| {
            p.forward(x, &ctx.fork(k), None)
                .reshape([b, t, h, dh])
                .swap_dims(1, 2)
        };
        let q = heads(&self.query, x.clone(), 0);
        let k = heads(&self.key, x.clone(), 1);
        let v = heads(&self.value, x.clone(), 2);
        let att = attention(q, k, v, mask, scale)
            .swap_dims(1, 2)
            .reshape([b * t, d]);
        let att = self.attention_output.forward(att, &ctx.fork(3), None);
        let eps = self.layer_norm_eps;
        let x = fused_layer_norm(&self.attention_norm, eps, att + x);
        let m = gelu(self.intermediate.forward(x.clone(), &ctx.fork(4), None));
        let m = self.output.forward(m, &ctx.fork(5), None);
        fused_layer_norm(&self.output_norm, eps, m + x)
    }

    /// The layer's weights under the checkpoint's names (`{prefix}.attention.self.query.weight`,
    /// …, with `prefix` e.g. `encoder.layer.5`) and PyTorch layouts (`[d_out, d_in]`), as
    /// `(name, shape, values)`. Only float projections can be written this way.
    pub fn named_tensors(&self, prefix: &str) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::with_capacity(16);
        let host = |t: Tensor<B, 1>| -> Vec<f32> {
            t.into_data().convert::<f32>().to_vec().unwrap_or_default()
        };
        for (name, p) in [
            ("attention.self.query", &self.query),
            ("attention.self.key", &self.key),
            ("attention.self.value", &self.value),
            ("attention.output.dense", &self.attention_output),
            ("intermediate.dense", &self.intermediate),
            ("output.dense", &self.output),
        ] {
            let lin = p.float.as_ref().filter(|_| p.adapter.is_none()).ok_or_else(|| {
                ModelError::Input(format!(
                    "{prefix}.{name}: only a float projection can be saved as a checkpoint tensor"
                ))
            })?;
            let [d_in, d_out] = lin.weight.val().dims();
            let w = host(lin.weight.val().reshape([d_in * d_out]));
            out.push((
                format!("{prefix}.{name}.weight"),
                vec![d_out, d_in],
                crate::common::transpose(&w, d_in, d_out),
            ));
            let b = lin
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; d_out], |b| host(b.val()));
            out.push((format!("{prefix}.{name}.bias"), vec![d_out], b));
        }
        for (name, ln) in [
            ("attention.output.LayerNorm", &self.attention_norm),
            ("output.LayerNorm", &self.output_norm),
        ] {
            let g = host(ln.gamma.val());
            let d = g.len();
            out.push((format!("{prefix}.{name}.weight"), vec![d], g));
            let b = ln
                .beta
                .as_ref()
                .map_or_else(|| vec![0.0; d], |b| host(b.val()));
            out.push((format!("{prefix}.{name}.bias"), vec![d], b));
        }
        Ok(out)
    }
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
                layer_norm_eps: eps,
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
        let x = self.embed(ids);
        let n = self.layers.len();
        self.forward_layers(0..n, x, mask, ctx)
            .reshape([b, t, self.config.hidden_size])
    }

    /// The embedding block's output, token states flattened: `ids` `[batch, t]` →
    /// `[batch·t, d]` (the input of layer 0).
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
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
        e.layer_norm
            .forward(words + pos + types)
            .reshape([b * t, d])
    }

    /// Layers `range` (e.g. `0..n` for all, `4..6` for the top two) applied to token states
    /// `x` `[batch·t, d]` with key mask `mask` `[batch, t]` → `[batch·t, d]`. Running
    /// `0..k` then `k..n` gives exactly [`forward`](Self::forward)'s states, so the frozen lower
    /// layers' output can be computed once and cached.
    pub fn forward_layers(
        &self,
        range: std::ops::Range<usize>,
        mut x: Tensor<B, 2>,
        mask: Tensor<B, 2>,
        ctx: &Ctx,
    ) -> Tensor<B, 2> {
        let bias = key_bias(mask);
        let h = self.config.num_attention_heads;
        for i in range {
            x = self.layers[i].forward(x, bias.clone(), h, &ctx.fork(i as u64));
        }
        x
    }

    /// The embedding block's output for packed sequences: `ids` `[n]` the sequences' token ids
    /// back to back and `positions` `[n]` each token's position in its sequence → `[n, d]`.
    pub fn embed_packed(
        &self,
        ids: Tensor<B, 1, Int>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let e = &self.embeddings;
        let words = e.word_embeddings.val().select(0, ids);
        let pos = e.position_embeddings.val().select(0, positions);
        let types = e.token_type_embeddings.val().slice(0..1);
        e.layer_norm.forward(words + pos + types)
    }

    /// [`forward_layers`](Self::forward_layers) on packed token states `x` `[n, d]`
    /// (sequences of `lens` tokens back to back) → `[n, d]`.
    pub fn forward_layers_packed(
        &self,
        range: std::ops::Range<usize>,
        mut x: Tensor<B, 2>,
        lens: &Arc<[usize]>,
        ctx: &Ctx,
    ) -> Tensor<B, 2> {
        let h = self.config.num_attention_heads;
        for i in range {
            x = self.layers[i].forward_packed(x, lens, h, &ctx.fork(i as u64));
        }
        x
    }

    /// Mean of each packed sequence's states: `x` `[n, d]` (sequences of `lens` tokens back to
    /// back) → `[lens.len(), d]`, as one product with the 0/1 sequence-membership matrix
    /// divided by the lengths.
    pub fn mean_pool_packed(x: Tensor<B, 2>, lens: &[usize]) -> Tensor<B, 2> {
        let n: usize = lens.iter().sum();
        let b = lens.len();
        let mut member = vec![0f32; b * n];
        for (r, (start, &l)) in packed_starts(lens).zip(lens).enumerate() {
            member[r * n + start..r * n + start + l].fill(1.0);
        }
        let device = x.device();
        let member = Tensor::<B, 2>::from_data(TensorData::new(member, [b, n]), &device);
        let counts: Vec<f32> = lens.iter().map(|&l| (l as f32).max(1e-9)).collect();
        let counts = Tensor::<B, 2>::from_data(TensorData::new(counts, [b, 1]), &device);
        member.matmul(x) / counts
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

/// The first token of each of the packed sequences of `lens` tokens (`0, len₀, len₀ + len₁, …`).
pub(crate) fn packed_starts(lens: &[usize]) -> impl Iterator<Item = usize> + '_ {
    lens.iter().scan(0, |at, &l| {
        let start = *at;
        *at += l;
        Some(start)
    })
}

/// Rows divided by their L2 norm (`max(‖x‖, 1e-12)`, as `torch.nn.functional.normalize`).
/// Shapes: `[batch, d]` → `[batch, d]`.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_ndarray::NdArray;
    use rand::{Rng, SeedableRng};
    use safetensors::{Dtype, tensor::TensorView};

    /// A random 3-layer BERT (vocab 40, d 16, 2 heads, MLP 32) written as a checkpoint.
    fn tiny(dir: &Path) -> Bert<NdArray> {
        let c = BertConfig {
            vocab_size: 40,
            hidden_size: 16,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            intermediate_size: 32,
            hidden_act: "gelu".into(),
            max_position_embeddings: 12,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut t: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![40, 16]),
            ("embeddings.position_embeddings.weight".into(), vec![12, 16]),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![2, 16],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![16]),
            ("embeddings.LayerNorm.bias".into(), vec![16]),
        ];
        for i in 0..3 {
            let p = format!("encoder.layer.{i}");
            for (n, o, k) in [
                ("attention.self.query", 16, 16),
                ("attention.self.key", 16, 16),
                ("attention.self.value", 16, 16),
                ("attention.output.dense", 16, 16),
                ("intermediate.dense", 32, 16),
                ("output.dense", 16, 32),
            ] {
                t.push((format!("{p}.{n}.weight"), vec![o, k]));
                t.push((format!("{p}.{n}.bias"), vec![o]));
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                t.push((format!("{p}.{n}.weight"), vec![16]));
                t.push((format!("{p}.{n}.bias"), vec![16]));
            }
        }
        let bytes: Vec<Vec<u8>> = t
            .iter()
            .map(|(_, s)| {
                (0..s.iter().product::<usize>())
                    .flat_map(|_| rng.random_range(-0.5f32..0.5).to_le_bytes())
                    .collect()
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = t
            .iter()
            .zip(&bytes)
            .map(|((n, s), b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let p = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, &None, &p).unwrap();
        let mut ck = Checkpoint::open(&p).unwrap();
        Bert::from_checkpoint(c, &mut ck, &Default::default()).unwrap()
    }

    #[test]
    fn lower_then_upper_layers_are_exactly_the_full_forward() {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny(dir.path());
        let dev = Default::default();
        let ids = Tensor::<NdArray, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 9, 2, 0, 0, 3, 7, 7, 7, 8, 2], [2, 6]),
            &dev,
        );
        let mask = Tensor::<NdArray, 2>::from_data(
            TensorData::new(
                vec![1f32, 1., 1., 1., 0., 0., 1., 1., 1., 1., 1., 1.],
                [2, 6],
            ),
            &dev,
        );
        let ctx = Ctx::default().for_eval();
        let full = m.forward(ids.clone(), mask.clone(), &ctx).into_data();
        for k in 0..=3 {
            let low = m.forward_layers(0..k, m.embed(ids.clone()), mask.clone(), &ctx);
            let top = m
                .forward_layers(k..3, low, mask.clone(), &ctx)
                .reshape([2, 6, 16]);
            assert_eq!(top.into_data(), full, "split at layer {k}");
        }
    }

    #[test]
    fn packed_batches_give_the_padded_states_and_pooling() {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny(dir.path());
        let dev = Default::default();
        let (rows, t) = ([vec![1i64, 5, 9, 2], vec![3, 7, 7, 7, 8, 2]], 6);
        let mut padded = vec![0i64; 2 * t];
        let mut mask = vec![0f32; 2 * t];
        for (r, row) in rows.iter().enumerate() {
            padded[r * t..r * t + row.len()].copy_from_slice(row);
            mask[r * t..r * t + row.len()].fill(1.0);
        }
        let ids = Tensor::<NdArray, 2, Int>::from_data(TensorData::new(padded, [2, t]), &dev);
        let mask = Tensor::<NdArray, 2>::from_data(TensorData::new(mask, [2, t]), &dev);
        let ctx = Ctx::default().for_eval();
        let full = m.forward(ids, mask.clone(), &ctx);
        let want_pooled = Bert::mean_pool(full.clone(), mask.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want_cls = crate::Pooling::Cls
            .apply(full.clone(), mask, true)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let full = full.into_data().to_vec::<f32>().unwrap();

        let flat: Vec<i64> = rows.concat();
        let pos: Vec<i64> = rows.iter().flat_map(|r| 0..r.len() as i64).collect();
        let n = flat.len();
        let lens: Arc<[usize]> = rows.iter().map(Vec::len).collect();
        let x = m.embed_packed(
            Tensor::from_data(TensorData::new(flat, [n]), &dev),
            Tensor::from_data(TensorData::new(pos, [n]), &dev),
        );
        let out = m.forward_layers_packed(0..3, x, &lens, &ctx);
        let pooled = Bert::mean_pool_packed(out.clone(), &lens)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let cls = crate::Pooling::Cls
            .apply_packed(out.clone(), &lens, true)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let out = out.into_data().to_vec::<f32>().unwrap();
        let d = 16;
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5, "{what}: {x} vs {y}");
            }
        };
        let mut at = 0;
        for (r, row) in rows.iter().enumerate() {
            let l = row.len();
            close(
                &out[at * d..(at + l) * d],
                &full[r * t * d..(r * t + l) * d],
                "states",
            );
            at += l;
        }
        close(&pooled, &want_pooled, "mean pooling");
        close(&cls, &want_cls, "[CLS] pooling, normalised");
    }
}
