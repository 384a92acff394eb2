//! [`TextTokenizer`]: Hugging Face `tokenizers` behind one small API, from a `tokenizer.json` or
//! rebuilt from the vocabulary and merges inside a GGUF.
//!
//! GGUF files name their pre-tokenizer (`tokenizer.ggml.pre`); each supported name maps to the
//! pipeline of the model's own `tokenizer.json`. An unknown name is an error, never a silent
//! fallback: `transformers` falls back to plain GPT-2 splitting for `smollm`, which tokenizes
//! runs of spaces before digits differently from SmolLM2's real tokenizer (it splits every digit
//! into its own token first).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::{ModelError, Result};

/// A tokenizer and where it came from.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// Id of the beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// Id of the end-of-sequence token, if the model has one.
    pub eos: Option<u32>,
}

/// Pre-tokenizer names of GGUF files this crate rebuilds, with what each is.
pub const GGUF_PRE_TOKENIZERS: [(&str, &str); 2] = [
    ("gpt2", "GPT-2 byte-level regex split"),
    (
        "smollm",
        "SmolLM/SmolLM2: every digit its own piece, then the GPT-2 byte-level split",
    ),
];

impl TextTokenizer {
    /// Reads a `tokenizer.json`. Its padding and truncation settings are switched off: callers
    /// pad batches themselves and choose the longest input.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos: None,
            eos: None,
        })
    }

    /// Rebuilds the byte-level BPE tokenizer stored in a GGUF's metadata
    /// (`tokenizer.ggml.{model,pre,tokens,merges,token_type,bos_token_id,eos_token_id}`).
    /// Control tokens (type 3) and user-defined tokens (type 4) become special added tokens, so
    /// `<|im_start|>` in a text is one token.
    pub fn from_gguf(g: &rlx_gguf::GgufFile, path: &Path) -> Result<Self> {
        let key_err = |k: &str, m: &str| ModelError::config(path, k, m);
        let get = |k: &str| g.metadata.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| key_err("tokenizer.ggml.model", "missing (expected `gpt2`)"))?;
        if model != "gpt2" {
            return Err(key_err(
                "tokenizer.ggml.model",
                &format!("`{model}` is not supported (only the byte-level BPE `gpt2`)"),
            ));
        }
        let pre = get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("gpt2");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            other => {
                let known: Vec<&str> = GGUF_PRE_TOKENIZERS.iter().map(|p| p.0).collect();
                return Err(key_err(
                    "tokenizer.ggml.pre",
                    &format!("pre-tokenizer `{other}` is not supported (supported: {known:?})"),
                ));
            }
        };
        let strings = |k: &str| -> Result<Vec<String>> {
            let arr = get(k)
                .and_then(|v| v.as_array())
                .ok_or_else(|| key_err(k, "missing or not an array"))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| key_err(k, "expected an array of strings"))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges_raw = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a
                .iter()
                .map(|v| match v {
                    rlx_gguf::MetaValue::I32(x) => *x as i64,
                    rlx_gguf::MetaValue::U32(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(key_err(
                "tokenizer.ggml.token_type",
                &format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(key_err(
                    "tokenizer.ggml.tokens",
                    &format!("token {t:?} appears twice"),
                ));
            }
        }
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(key_err(
                    "tokenizer.ggml.merges",
                    &format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                ));
            };
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let id = |k: &str| get(k).and_then(|v| v.as_u32());
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
        })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (BERT's `[CLS]` …
    /// `[SEP]`; nothing for byte-level BPE).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })
    }

    /// [`TextTokenizer::encode`] of many texts (in parallel inside `tokenizers`; the result does
    /// not depend on the thread count).
    pub fn encode_batch(&self, texts: &[&str], special: bool) -> Result<Vec<Vec<u32>>> {
        self.inner
            .encode_batch_fast(texts.to_vec(), special)
            .map(|v| v.iter().map(|e| e.get_ids().to_vec()).collect())
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
