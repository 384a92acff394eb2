//! A Llama decoder (RMSNorm, rotary positions with the config's θ, grouped-query attention,
//! SwiGLU, optionally tied head) as Hugging Face's `LlamaForCausalLM`, with a KV cache for
//! generation. Every projection is a [`Proj`] so it can later be float, 1-bit, BitNet or carry
//! an adapter.
//!
//! Loads a Hugging Face directory (`config.json` + `model.safetensors`, names
//! `model.layers.3.self_attn.q_proj.weight` …) or a GGUF file (`blk.3.attn_q.weight` …, config
//! from its `llama.*` metadata, tensors dequantised to f32). GGUF stores the query and key rows
//! permuted for llama.cpp's interleaved rotary layout; they are permuted back on load (as
//! `transformers` does), so both sources run the same rotate-half rotary code. Module field
//! names follow Hugging Face's; errors name the tensor as the file spells it.

use std::path::{Path, PathBuf};

use bllm_nn::Proj;
use bllm_ste::Ctx;
use bllm_ste::attention::{Mask, attention};
use bllm_ste::softmax::softmax;
use bllm_ste::swiglu::swiglu;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::common::{matrix, proj, proj_from, read_json, transpose, vector};
use crate::{Checkpoint, ModelError, Result, TextTokenizer};

/// The fields of a Llama `config.json` (or GGUF `llama.*` metadata) the architecture reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention; divides `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Width of one head (default `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Rotary base θ.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// The output head is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_theta() -> f64 {
    10_000.0
}

fn default_act() -> String {
    "silu".to_string()
}

impl LlamaConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v: serde_json::Value = read_json(path)?;
        if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(ModelError::config(
                path,
                "rope_scaling",
                format!("{s} is not supported (plain rotary positions only)"),
            ));
        }
        let c: Self =
            serde_json::from_value(v).map_err(|e| ModelError::format(path, e.to_string()))?;
        c.validate(path)?;
        Ok(c)
    }

    /// Reads the `llama.*` metadata of a GGUF.
    pub fn from_gguf(g: &rlx_gguf::GgufFile, path: &Path, tied: bool) -> Result<Self> {
        let arch = g
            .metadata
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if arch != "llama" {
            return Err(ModelError::config(
                path,
                "general.architecture",
                format!("`{arch}` is not supported (only `llama`)"),
            ));
        }
        let int = |k: &str| -> Result<usize> {
            g.metadata
                .get(k)
                .and_then(|v| v.as_first_u32())
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::config(path, k, "missing or not an integer"))
        };
        let float = |k: &str| -> Option<f64> {
            g.metadata.get(k).and_then(|v| match v {
                rlx_gguf::MetaValue::F32(x) => Some(*x as f64),
                rlx_gguf::MetaValue::F64(x) => Some(*x),
                _ => None,
            })
        };
        let heads = int("llama.attention.head_count")?;
        let vocab = match int("llama.vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| {
                    ModelError::config(path, "llama.vocab_size", "missing (and no tokenizer)")
                })?,
        };
        let d = int("llama.embedding_length")?;
        let c = Self {
            vocab_size: vocab,
            hidden_size: d,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("llama.attention.head_count_kv").unwrap_or(heads),
            head_dim: int("llama.rope.dimension_count").ok(),
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon").ok_or_else(|| {
                ModelError::config(path, "llama.attention.layer_norm_rms_epsilon", "missing")
            })?,
            rope_theta: float("llama.rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: int("llama.context_length")?,
            tie_word_embeddings: tied,
            hidden_act: "silu".into(),
        };
        c.validate(path)?;
        Ok(c)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks what the architecture supports; errors name the key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |k: &str, m: String| Err(ModelError::config(path, k, m));
        if self.hidden_act != "silu" {
            return bad(
                "hidden_act",
                format!("`{}` is not supported (only `silu`)", self.hidden_act),
            );
        }
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(k, "must be positive".into());
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if self.head_dim() % 2 != 0 || self.head_dim() == 0 {
            return bad(
                "head_dim",
                format!("{} must be even and positive", self.head_dim()),
            );
        }
        let bad_float = |x: f64| x.is_nan() || x <= 0.0;
        if bad_float(self.rms_norm_eps) || bad_float(self.rope_theta) {
            return bad(
                "rms_norm_eps",
                "rms_norm_eps and rope_theta must be positive".into(),
            );
        }
        Ok(())
    }
}

/// RMSNorm `x / sqrt(mean(x²) + ε) ⊙ w` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Gain `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// ε.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Shapes: `[..., d]` → `[..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        bllm_ste::norm::rms_norm(x, self.weight.val(), self.eps)
    }
}

/// Rotary tables for positions `start..start + t`: `(cos, sin)`, each `[t, head_dim]` with the
/// Hugging Face layout (the `head_dim / 2` frequencies repeated twice). Computed in f64.
pub fn rope_tables(theta: f64, head_dim: usize, start: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    for p in start..start + t {
        for rep in 0..2 {
            let _ = rep;
            for i in 0..half {
                let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    (cos, sin)
}

/// `x·cos + rotate_half(x)·sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]` over the last dimension.
/// Shapes: `x` `[b, h, t, dh]`, `cos`/`sin` `[1, 1, t, dh]`.
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    bllm_ste::rope::rope(x, cos, sin)
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// `self_attn.q_proj` `d → heads·dh`.
    pub q_proj: Proj<B>,
    /// `self_attn.k_proj` `d → kv_heads·dh`.
    pub k_proj: Proj<B>,
    /// `self_attn.v_proj` `d → kv_heads·dh`.
    pub v_proj: Proj<B>,
    /// `self_attn.o_proj` `heads·dh → d`.
    pub o_proj: Proj<B>,
}

/// The SwiGLU MLP `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// `mlp.gate_proj`.
    pub gate_proj: Proj<B>,
    /// `mlp.up_proj`.
    pub up_proj: Proj<B>,
    /// `mlp.down_proj`.
    pub down_proj: Proj<B>,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm<B>,
    /// `self_attn`.
    pub self_attn: LlamaAttention<B>,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm<B>,
    /// `mlp`.
    pub mlp: LlamaMlp<B>,
}

/// The block projections of a Llama layer, by their checkpoint names, in
/// [`Llama::projections`]' order.
pub const LLAMA_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The keys and values of every layer for the positions seen so far.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values `[batch, kv_heads, len, dh]` (before the heads are repeated).
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Positions cached.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            len: 0,
        }
    }
}

/// The Llama decoder with its head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `model.embed_tokens.weight` `[vocab, d]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// `model.layers`.
    pub layers: Vec<LlamaLayer<B>>,
    /// `model.norm`.
    pub norm: RmsNorm<B>,
    /// `lm_head` `d → vocab`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Proj<B>>,
    /// The config it was built from.
    #[module(skip)]
    pub config: LlamaConfig,
}

/// A loaded decoder: the model, its tokenizer and where they came from.
#[derive(Debug)]
pub struct LoadedLlama<B: Backend> {
    /// The model.
    pub model: Llama<B>,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// The weights file.
    pub weights: PathBuf,
}

/// Undoes llama.cpp's rotary permutation of query/key rows (`convert_hf_to_gguf.py`'s
/// `permute`): GGUF row `h·dh + 2j + s` is Hugging Face row `h·dh + s·dh/2 + j`. `w` is
/// row-major `[heads·dh, d_in]`.
pub fn unpermute_rope_rows(w: &[f32], heads: usize, dh: usize, d_in: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    let half = dh / 2;
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let src = (h * dh + 2 * j + s) * d_in;
                let dst = (h * dh + s * half + j) * d_in;
                out[dst..dst + d_in].copy_from_slice(&w[src..src + d_in]);
            }
        }
    }
    out
}

/// Where a checkpoint keeps each tensor.
struct Names {
    gguf: bool,
}

impl Names {
    fn embed(&self) -> String {
        if self.gguf {
            "token_embd.weight"
        } else {
            "model.embed_tokens.weight"
        }
        .into()
    }
    fn norm(&self) -> String {
        if self.gguf {
            "output_norm.weight"
        } else {
            "model.norm.weight"
        }
        .into()
    }
    fn head(&self) -> String {
        if self.gguf {
            "output.weight"
        } else {
            "lm_head.weight"
        }
        .into()
    }
    fn layer(&self, i: usize, hf: &str) -> String {
        if !self.gguf {
            return format!("model.layers.{i}.{hf}.weight");
        }
        let g = match hf {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            _ => "ffn_down",
        };
        format!("blk.{i}.{g}.weight")
    }
}

impl<B: Backend> Llama<B> {
    /// Loads a decoder and its tokenizer from a GGUF file, a directory holding exactly one
    /// `.gguf`, or a Hugging Face directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`).
    pub fn load(path: &Path, device: &B::Device) -> Result<LoadedLlama<B>> {
        let gguf_file = if path.is_file() {
            Some(path.to_path_buf())
        } else if path.join("config.json").is_file() {
            None
        } else {
            let rd = std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect();
            found.sort();
            match found.len() {
                1 => Some(found.remove(0)),
                0 => {
                    return Err(ModelError::format(
                        path,
                        "expected config.json + model.safetensors + tokenizer.json, or one .gguf file",
                    ));
                }
                _ => {
                    return Err(ModelError::format(
                        path,
                        format!("{} .gguf files; pass the one to load", found.len()),
                    ));
                }
            }
        };
        match gguf_file {
            Some(f) => {
                let mut ck = Checkpoint::open(&f)?;
                let g = ck
                    .gguf()
                    .ok_or_else(|| ModelError::format(&f, "not a .gguf file"))?;
                let tied = !ck.contains("output.weight");
                let config = LlamaConfig::from_gguf(g, &f, tied)?;
                let tokenizer = TextTokenizer::from_gguf(g, &f)?;
                let model = Self::from_checkpoint(config, &mut ck, device)?;
                ck.finish(|n| n == "rope_freqs.weight")?;
                Ok(LoadedLlama {
                    model,
                    tokenizer,
                    weights: f,
                })
            }
            None => {
                let config = LlamaConfig::from_file(&path.join("config.json"))?;
                let weights = path.join("model.safetensors");
                let mut ck = Checkpoint::open(&weights)?;
                let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"))?;
                let model = Self::from_checkpoint(config, &mut ck, device)?;
                ck.finish(|n| n.ends_with("rotary_emb.inv_freq"))?;
                Ok(LoadedLlama {
                    model,
                    tokenizer,
                    weights,
                })
            }
        }
    }

    /// Builds the decoder from `ck` (Hugging Face or GGUF names, by which the file holds).
    pub fn from_checkpoint(
        config: LlamaConfig,
        ck: &mut Checkpoint,
        device: &B::Device,
    ) -> Result<Self> {
        let names = Names {
            gguf: ck.gguf().is_some(),
        };
        let d = config.hidden_size;
        let dh = config.head_dim();
        let (h, kv) = (config.num_attention_heads, config.num_key_value_heads);
        let ff = config.intermediate_size;
        let eps = config.rms_norm_eps;
        let norm = |ck: &mut Checkpoint, name: String| -> Result<RmsNorm<B>> {
            Ok(RmsNorm {
                weight: Param::from_tensor(vector(ck.take(&name, &[d])?, device)),
                eps,
            })
        };
        let embed = ck.take(&names.embed(), &[config.vocab_size, d])?;
        let embed_tokens = Param::from_tensor(matrix(embed, config.vocab_size, d, device));
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let lin = |ck: &mut Checkpoint, hf: &str, d_in: usize, d_out: usize| {
                proj::<B>(ck, &names.layer(i, hf), None, d_in, d_out, device)
            };
            // Query and key rows come back from llama.cpp's rotary order in GGUF files.
            let qk = |ck: &mut Checkpoint, hf: &str, heads: usize| -> Result<Proj<B>> {
                if !names.gguf {
                    return proj::<B>(ck, &names.layer(i, hf), None, d, heads * dh, device);
                }
                let w = ck.take(&names.layer(i, hf), &[heads * dh, d])?;
                let w = unpermute_rope_rows(&w, heads, dh, d);
                Ok(proj_from(
                    transpose(&w, heads * dh, d),
                    d,
                    heads * dh,
                    None,
                    device,
                ))
            };
            let q_proj = qk(ck, "self_attn.q_proj", h)?;
            let k_proj = qk(ck, "self_attn.k_proj", kv)?;
            layers.push(LlamaLayer {
                input_layernorm: norm(ck, names.layer(i, "input_layernorm"))?,
                self_attn: LlamaAttention {
                    q_proj,
                    k_proj,
                    v_proj: lin(ck, "self_attn.v_proj", d, kv * dh)?,
                    o_proj: lin(ck, "self_attn.o_proj", h * dh, d)?,
                },
                post_attention_layernorm: norm(ck, names.layer(i, "post_attention_layernorm"))?,
                mlp: LlamaMlp {
                    gate_proj: lin(ck, "mlp.gate_proj", d, ff)?,
                    up_proj: lin(ck, "mlp.up_proj", d, ff)?,
                    down_proj: lin(ck, "mlp.down_proj", ff, d)?,
                },
            });
        }
        let final_norm = norm(ck, names.norm())?;
        let lm_head = if config.tie_word_embeddings && !ck.contains(&names.head()) {
            None
        } else {
            Some(proj::<B>(
                ck,
                &names.head(),
                None,
                d,
                config.vocab_size,
                device,
            )?)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            config,
        })
    }

    /// The model with some block projections quantised from their float weights
    /// ([`Proj::quantized`]): `choose(layer, name)` gives the precision of projection `name`
    /// (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`, the
    /// checkpoint's own names) of layer `layer`; `opts` the estimator, scaling (XNOR's
    /// per-channel `mean|W|` or OneBit's SVID) and activations of the binary ones. Embeddings,
    /// norms and the head stay float. Evaluated without training, this is post-training
    /// binarization (PTQ).
    pub fn quantized(
        self,
        choose: impl Fn(usize, &str) -> bllm_nn::ProjKind,
        opts: &bllm_nn::BinaryOptions,
    ) -> Result<Self> {
        self.map_projections(|i, name, p| Ok(p.quantized(choose(i, name), opts)?))
    }

    /// The model with each block projection replaced by `f(layer, name, projection)` (`name`
    /// as in [`LLAMA_PROJECTIONS`]), in layer order; the first error stops it.
    fn map_projections<E>(
        mut self,
        mut f: impl FnMut(usize, &str, Proj<B>) -> std::result::Result<Proj<B>, E>,
    ) -> std::result::Result<Self, E> {
        let layers = std::mem::take(&mut self.layers);
        for (i, l) in layers.into_iter().enumerate() {
            let LlamaAttention {
                q_proj,
                k_proj,
                v_proj,
                o_proj,
            } = l.self_attn;
            let LlamaMlp {
                gate_proj,
                up_proj,
                down_proj,
            } = l.mlp;
            self.layers.push(LlamaLayer {
                input_layernorm: l.input_layernorm,
                self_attn: LlamaAttention {
                    q_proj: f(i, "q_proj", q_proj)?,
                    k_proj: f(i, "k_proj", k_proj)?,
                    v_proj: f(i, "v_proj", v_proj)?,
                    o_proj: f(i, "o_proj", o_proj)?,
                },
                post_attention_layernorm: l.post_attention_layernorm,
                mlp: LlamaMlp {
                    gate_proj: f(i, "gate_proj", gate_proj)?,
                    up_proj: f(i, "up_proj", up_proj)?,
                    down_proj: f(i, "down_proj", down_proj)?,
                },
            });
        }
        Ok(self)
    }

    /// Every block projection with its checkpoint name (`layers.{i}.self_attn.q_proj`, …,
    /// `layers.{i}.mlp.down_proj`), in layer order, attention before MLP.
    pub fn projections(&self) -> Vec<(String, &Proj<B>)> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let (a, m) = (&l.self_attn, &l.mlp);
            let projs = [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ];
            for (j, (name, p)) in LLAMA_PROJECTIONS.iter().zip(projs).enumerate() {
                let group = if j < 4 { "self_attn" } else { "mlp" };
                out.push((format!("layers.{i}.{group}.{name}"), p));
            }
        }
        out
    }

    /// [`Llama::projections`], mutable (same order, without names).
    pub fn projections_mut(&mut self) -> Vec<&mut Proj<B>> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for l in self.layers.iter_mut() {
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            out.extend([
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ]);
        }
        out
    }

    /// The model with every float parameter frozen (`require_grad = false`): embeddings,
    /// norms, the head and float projections. What stays trainable are the quantised
    /// projections (latent weights, scales, value vectors, SubLN gains) — quantisation-aware
    /// training of the 1-bit parts of a pretrained model.
    pub fn freeze_float(self) -> Self {
        let frozen = |p: Proj<B>| -> Proj<B> { if p.float.is_some() { p.no_grad() } else { p } };
        let Ok(mut m) =
            self.map_projections(|_, _, p| Ok::<_, std::convert::Infallible>(frozen(p)));
        m.embed_tokens = m.embed_tokens.set_require_grad(false);
        m.norm = m.norm.no_grad();
        m.lm_head = m.lm_head.map(frozen);
        for l in &mut m.layers {
            l.input_layernorm = l.input_layernorm.clone().no_grad();
            l.post_attention_layernorm = l.post_attention_layernorm.clone().no_grad();
        }
        m
    }

    /// Logits `[batch, t, vocab]` for `ids` `[batch, t]` placed after the `cache.len` positions
    /// already in `cache` (which it extends), or from position 0 without a cache.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
        ctx: &Ctx,
    ) -> Tensor<B, 3> {
        let h = self.forward_hidden(ids, cache, ctx);
        self.logits(h, ctx)
    }

    /// The head: `[batch, t, d]` → `[batch, t, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>, ctx: &Ctx) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(p) => p.forward(hidden, &ctx.fork(1 << 20), None),
            None => {
                // The tied head reads the embedding transposed in place.
                bllm_ste::linear::linear(hidden, self.embed_tokens.val().transpose(), None)
            }
        }
    }

    /// The final-normed hidden states `[batch, t, d]`.
    pub fn forward_hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
        ctx: &Ctx,
    ) -> Tensor<B, 3> {
        self.forward_inner(ids, cache, None, None, ctx)
    }

    /// The final-normed hidden states `[batch, t, d]` from position 0 and every layer's output
    /// (the residual stream after the layer, `[batch·t, d]`, one per layer) — what a
    /// hidden-state distillation loss compares. The same bytes as [`Llama::forward_hidden`].
    pub fn forward_states(
        &self,
        ids: Tensor<B, 2, Int>,
        ctx: &Ctx,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 2>>) {
        let mut states = Vec::with_capacity(self.layers.len());
        let h = self.forward_inner(ids, None, None, Some(&mut states), ctx);
        (h, states)
    }

    /// The final-normed hidden states `[batch, t, d]` from position 0 (no cache), each
    /// layer's attention computed by `hook` instead of [`Llama::attention`] — how the KV-cache
    /// probe reads back quantized keys and values.
    pub fn forward_hooked(
        &self,
        ids: Tensor<B, 2, Int>,
        hook: &mut dyn AttentionHook<B>,
        ctx: &Ctx,
    ) -> Tensor<B, 3> {
        self.forward_inner(ids, None, Some(hook), None, ctx)
    }

    /// Repeats each key/value head for its group of query heads:
    /// `[b, kv_heads, n, dh]` → `[b, heads, n, dh]`.
    pub fn expand_kv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = &self.config;
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let rep = nh / nkv;
        if rep == 1 {
            return x;
        }
        let [b, _, n, dh] = x.dims();
        x.reshape([b, nkv, 1, n, dh])
            .expand([b, nkv, rep, n, dh])
            .reshape([b, nh, n, dh])
    }

    /// Scaled scores `q·kᵀ/√dh`: `q` `[b, heads, t, dh]`, `k` `[b, kv_heads, n, dh]` →
    /// `[b, heads, t, n]`.
    pub fn attention_scores(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
        let scale = 1.0 / (self.config.head_dim() as f64).sqrt();
        q.matmul(self.expand_kv(k).swap_dims(2, 3))
            .mul_scalar(scale)
    }

    /// The attention every layer computes: `softmax(masked scores)·v`, `[b, heads, t, dh]`.
    pub fn attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        future: Tensor<B, 4, Bool>,
    ) -> Tensor<B, 4> {
        let w = masked_softmax(self.attention_scores(q, k), future);
        w.matmul(self.expand_kv(v))
    }

    fn forward_inner(
        &self,
        ids: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
        mut hook: Option<&mut dyn AttentionHook<B>>,
        mut states: Option<&mut Vec<Tensor<B, 2>>>,
        ctx: &Ctx,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, t] = ids.dims();
        let device = ids.device();
        let d = c.hidden_size;
        let dh = c.head_dim();
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let start = cache.as_ref().map_or(0, |k| k.len);
        let total = start + t;
        let (cos, sin) = rope_tables(c.rope_theta, dh, start, t);
        let cos = Tensor::<B, 2>::from_data(TensorData::new(cos, [t, dh]), &device)
            .reshape([1, 1, t, dh]);
        let sin = Tensor::<B, 2>::from_data(TensorData::new(sin, [t, dh]), &device)
            .reshape([1, 1, t, dh]);
        // Query i (absolute start + i) sees keys j ≤ start + i. Only a hook reads the mask as a
        // tensor; the fused attention below applies it as `Mask::Causal { offset: start }`.
        let future = hook.is_some().then(|| {
            let future: Vec<bool> = (0..t * total)
                .map(|n| n % total > start + n / total)
                .collect();
            Tensor::<B, 2, Bool>::from_data(TensorData::new(future, [t, total]), &device)
                .reshape([1, 1, t, total])
                .expand([b, nh, t, total])
        });
        // Token states stay `[b·t, d]` so each projection is one 2-D matrix product.
        let mut x = self.embed_tokens.val().select(0, ids.reshape([b * t]));
        for (i, l) in self.layers.iter().enumerate() {
            let ctx = ctx.fork(i as u64);
            let a = &l.self_attn;
            let y = l.input_layernorm.forward(x.clone());
            let q = a
                .q_proj
                .forward(y.clone(), &ctx.fork(0), None)
                .reshape([b, t, nh, dh])
                .swap_dims(1, 2);
            let k_pre = a
                .k_proj
                .forward(y.clone(), &ctx.fork(1), None)
                .reshape([b, t, nkv, dh])
                .swap_dims(1, 2);
            let v = a
                .v_proj
                .forward(y, &ctx.fork(2), None)
                .reshape([b, t, nkv, dh])
                .swap_dims(1, 2);
            let q = apply_rope(q, cos.clone(), sin.clone());
            let k = apply_rope(k_pre.clone(), cos.clone(), sin.clone());
            let heads = match (hook.as_deref_mut(), &future) {
                (Some(hook), Some(future)) => hook.attend(
                    self,
                    AttentionInputs {
                        layer: i,
                        q,
                        k_pre,
                        k,
                        v,
                        future: future.clone(),
                        cos: cos.clone(),
                        sin: sin.clone(),
                    },
                ),
                _ => {
                    let (k, v) = match cache.as_deref_mut() {
                        Some(cache) => {
                            let (k, v) = match cache.layers[i].take() {
                                Some((pk, pv)) => {
                                    (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2))
                                }
                                None => (k, v),
                            };
                            cache.layers[i] = Some((k.clone(), v.clone()));
                            (k, v)
                        }
                        None => (k, v),
                    };
                    let scale = 1.0 / (dh as f64).sqrt();
                    attention(q, k, v, Mask::Causal { offset: start }, scale)
                }
            };
            let att = heads.swap_dims(1, 2).reshape([b * t, nh * dh]);
            x = x + a.o_proj.forward(att, &ctx.fork(3), None);
            let y = l.post_attention_layernorm.forward(x.clone());
            let m = &l.mlp;
            let g = m.gate_proj.forward(y.clone(), &ctx.fork(4), None);
            let u = m.up_proj.forward(y, &ctx.fork(5), None);
            x = x + m.down_proj.forward(swiglu(g, u), &ctx.fork(6), None);
            if let Some(states) = states.as_deref_mut() {
                states.push(x.clone());
            }
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        self.norm.forward(x).reshape([b, t, d])
    }
}

/// `softmax` over the last dimension of `scores` with the `future` positions at −∞.
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    future: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3)
}

/// One layer's attention inputs, handed to an [`AttentionHook`].
#[derive(Clone, Debug)]
pub struct AttentionInputs<B: Backend> {
    /// The layer.
    pub layer: usize,
    /// Queries after RoPE `[b, heads, t, dh]`.
    pub q: Tensor<B, 4>,
    /// Keys before RoPE `[b, kv_heads, t, dh]`.
    pub k_pre: Tensor<B, 4>,
    /// Keys after RoPE (what a cache holds) `[b, kv_heads, t, dh]`.
    pub k: Tensor<B, 4>,
    /// Values `[b, kv_heads, t, dh]`.
    pub v: Tensor<B, 4>,
    /// True where key j is after query i `[b, heads, t, t]`.
    pub future: Tensor<B, 4, Bool>,
    /// The rotary cosines `[1, 1, t, dh]` (to rotate keys quantized before RoPE).
    pub cos: Tensor<B, 4>,
    /// The rotary sines `[1, 1, t, dh]`.
    pub sin: Tensor<B, 4>,
}

/// Computes a layer's attention in place of [`Llama::attention`] (see
/// [`Llama::forward_hooked`]).
pub trait AttentionHook<B: Backend> {
    /// The per-head attention output `[b, heads, t, dh]`.
    fn attend(&mut self, model: &Llama<B>, inputs: AttentionInputs<B>) -> Tensor<B, 4>;
}

impl<B: Backend> bllm_nn::Summarize for Llama<B> {
    fn summarize(&self, name: &str, out: &mut Vec<bllm_nn::LayerSummary>) {
        let float = bllm_nn::LayerSummary::float;
        let prefix = |n: &str| {
            if name.is_empty() {
                n.to_owned()
            } else {
                format!("{name}.{n}")
            }
        };
        let [v, d] = self.embed_tokens.dims();
        out.push(float(prefix("embed_tokens"), "Embedding", v * d));
        for i in 0..self.layers.len() {
            // input_layernorm + post_attention_layernorm.
            out.push(float(
                prefix(&format!("layers.{i}.norms")),
                "RMSNorm",
                2 * d,
            ));
        }
        for (n, p) in self.projections() {
            p.summarize(&prefix(&n), out);
        }
        out.push(float(prefix("norm"), "RMSNorm", d));
        if let Some(h) = &self.lm_head {
            h.summarize(&prefix("lm_head"), out);
        }
    }
}
