//! # bllm-models — pretrained models in Burn
//!
//! Real checkpoints, loaded from the files their authors publish:
//!
//! * [`Bert`] / [`SentenceEncoder`]: a BERT encoder (all-MiniLM-L6-v2 and any BERT-family
//!   sentence-transformers or Hugging Face directory: `config.json` + `model.safetensors` +
//!   `tokenizer.json`) with mean pooling and L2 normalisation as sentence-transformers does.
//! * [`Llama`]: a Llama decoder (SmolLM2 and any Llama-family Hugging Face directory or GGUF
//!   file) with grouped-query attention, rotary positions, SwiGLU, a tied or separate head and a
//!   [`KvCache`] for generation.
//! * [`kv`]: key/value cache quantizers (sign, int, QJL, outlier channels, f16) and the
//!   KV-cache probe that measures what each does to a decoder.
//! * [`Checkpoint`]: safetensors (F32/F16/BF16) and GGUF (dequantised to f32 through
//!   `rlx-gguf`) tensors by name, each checked against the shape the config implies.
//! * [`TextTokenizer`]: Hugging Face `tokenizers` from `tokenizer.json`, or the byte-level BPE
//!   rebuilt from a GGUF's vocabulary and merges with the model's own pre-tokenizer.
//!
//! Every projection is a [`bllm_nn::Proj`], so the same models can have any projection made
//! 1-bit, ternary, or given an adapter. Configs come from the checkpoint's own files; tensor
//! names are the checkpoint's.

mod bert;
mod common;
mod error;
pub mod kv;
mod llama;
pub mod lm;
mod sentence;
mod tokenizer;
mod weights;

pub use bert::{Bert, BertConfig, BertEmbeddings, BertLayer, NamedTensor, key_bias, l2_normalize};
pub use common::transpose;
pub use error::{ModelError, Result};
pub use llama::{
    AttentionHook, AttentionInputs, KvCache, LLAMA_PROJECTIONS, Llama, LlamaAttention, LlamaConfig,
    LlamaLayer, LlamaMlp, LoadedLlama, RmsNorm, apply_rope, masked_softmax, rope_tables,
    unpermute_rope_rows,
};
pub use sentence::{Pooling, SentenceEncoder, TokenStates, length_chunks};
pub use tokenizer::{GGUF_PRE_TOKENIZERS, TextTokenizer};
pub use weights::Checkpoint;
