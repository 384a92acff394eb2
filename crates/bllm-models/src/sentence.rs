//! [`SentenceEncoder`]: a BERT encoder with the pooling and normalisation of its
//! sentence-transformers directory — what `SentenceTransformer(dir).encode(texts)` computes.

use std::path::{Path, PathBuf};

use bllm_ste::Ctx;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::bert::{Bert, l2_normalize};
use crate::common::read_json;
use crate::{ModelError, Result, TextTokenizer};

/// How token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// A sentence encoder: tokenizer, BERT, pooling, optional L2 normalisation.
#[derive(Debug)]
pub struct SentenceEncoder<B: Backend> {
    /// The encoder.
    pub bert: Bert<B>,
    /// Its tokenizer (`tokenizer.json`).
    pub tokenizer: TextTokenizer,
    /// Pooling.
    pub pooling: Pooling,
    /// L2-normalise the pooled vectors (a `Normalize` module in `modules.json`).
    pub normalize: bool,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included; longer texts are truncated
    /// (`sentence_bert_config.json`'s `max_seq_length`, else `max_position_embeddings`).
    pub max_len: usize,
    /// The directory.
    pub dir: PathBuf,
}

impl<B: Backend> SentenceEncoder<B> {
    /// Loads a sentence-transformers directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, and when present `modules.json`, the pooling config and
    /// `sentence_bert_config.json`). A plain Hugging Face BERT directory loads with mean
    /// pooling and no normalisation.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let bert = Bert::load(dir, device)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let mut pooling = Pooling::Mean;
        let mut normalize = false;
        let modules = dir.join("modules.json");
        if modules.is_file() {
            let entries: Vec<ModuleEntry> = read_json(&modules)?;
            for m in &entries {
                match m.kind.rsplit('.').next().unwrap_or("") {
                    "Transformer" => {}
                    "Normalize" => normalize = true,
                    "Pooling" => {
                        let p = dir.join(&m.path).join("config.json");
                        let f: PoolingFile = read_json(&p)?;
                        pooling = match (
                            f.pooling_mode_mean_tokens,
                            f.pooling_mode_cls_token,
                            f.pooling_mode_max_tokens || f.pooling_mode_mean_sqrt_len_tokens,
                        ) {
                            (true, false, false) => Pooling::Mean,
                            (false, true, false) => Pooling::Cls,
                            _ => {
                                return Err(ModelError::config(
                                    &p,
                                    "pooling_mode_*",
                                    "exactly one of mean or cls pooling is supported",
                                ));
                            }
                        };
                    }
                    other => {
                        return Err(ModelError::config(
                            &modules,
                            "type",
                            format!(
                                "module `{other}` is not supported (Transformer, Pooling, Normalize)"
                            ),
                        ));
                    }
                }
            }
        }
        let mut max_len = bert.config.max_position_embeddings;
        let sb = dir.join("sentence_bert_config.json");
        if sb.is_file() {
            let v: serde_json::Value = read_json(&sb)?;
            if let Some(m) = v.get("max_seq_length") {
                max_len = m
                    .as_u64()
                    .map(|m| m as usize)
                    .filter(|&m| m >= 2 && m <= bert.config.max_position_embeddings)
                    .ok_or_else(|| {
                        ModelError::config(
                            &sb,
                            "max_seq_length",
                            format!(
                                "expected an integer in 2..={}",
                                bert.config.max_position_embeddings
                            ),
                        )
                    })?;
            }
        }
        Ok(Self {
            bert,
            tokenizer,
            pooling,
            normalize,
            max_len,
            dir: dir.to_path_buf(),
        })
    }

    /// Token ids of `text` as the encoder sees them: `[CLS] … [SEP]`, truncated to `max_len`
    /// keeping the final `[SEP]` (as `transformers` truncates one sequence).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text, true)?;
        Ok(self.truncate(ids))
    }

    fn truncate(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if ids.len() > self.max_len {
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_len - 1);
            ids.push(last);
        }
        ids
    }

    /// Embeddings of already tokenized inputs, in their order, `[n, d]` row-major. Each batch
    /// is padded to its longest member; padding does not change a row.
    pub fn embed_ids(&self, ids: &[Vec<u32>], device: &B::Device) -> Result<Vec<f32>> {
        let b = ids.len();
        let d = self.bert.config.hidden_size;
        if b == 0 {
            return Ok(Vec::new());
        }
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if t == 0 || t > self.max_len {
            return Err(ModelError::Input(format!(
                "inputs of {t} tokens; expected 1..={}",
                self.max_len
            )));
        }
        let vocab = self.bert.config.vocab_size;
        let mut flat = vec![0i64; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, row) in ids.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                if id as usize >= vocab {
                    return Err(ModelError::Input(format!(
                        "token id {id} outside the vocabulary of {vocab}"
                    )));
                }
                flat[r * t + j] = id as i64;
                mask[r * t + j] = 1.0;
            }
        }
        let ids_t = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), device);
        let mask_t = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, t]), device);
        let ctx = Ctx::default().for_eval();
        let h = self.bert.forward(ids_t, mask_t.clone(), &ctx);
        let pooled = match self.pooling {
            Pooling::Mean => Bert::mean_pool(h, mask_t),
            Pooling::Cls => h.slice([0..b, 0..1]).reshape([b, d]),
        };
        let out = if self.normalize {
            l2_normalize(pooled)
        } else {
            pooled
        };
        out.into_data()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading embeddings: {e:?}")))
    }

    /// Embeddings of `texts`, `[n, d]` row-major, in the input order. Like sentence-transformers,
    /// texts are sorted by length and encoded `batch` at a time (so padding stays short);
    /// `progress` is called with the number of texts done after each batch.
    pub fn encode(
        &self,
        texts: &[&str],
        batch: usize,
        device: &B::Device,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<f32>> {
        let d = self.bert.config.hidden_size;
        let ids: Vec<Vec<u32>> = self
            .tokenizer
            .encode_batch(texts, true)?
            .into_iter()
            .map(|v| self.truncate(v))
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![0f32; texts.len() * d];
        let mut done = 0;
        for chunk in order.chunks(batch.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let e = self.embed_ids(&rows, device)?;
            for (k, &i) in chunk.iter().enumerate() {
                out[i * d..(i + 1) * d].copy_from_slice(&e[k * d..(k + 1) * d]);
            }
            done += chunk.len();
            progress(done);
        }
        Ok(out)
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size
    }
}
