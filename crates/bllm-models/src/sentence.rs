//! [`SentenceEncoder`]: a BERT encoder with the pooling and normalisation of its
//! sentence-transformers directory — what `SentenceTransformer(dir).encode(texts)` computes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bllm_ste::Ctx;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::bert::{Bert, BertLayer, l2_normalize, packed_starts};
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

    /// Embeddings of already tokenized inputs, in their order, `[n, d]` row-major. The batch
    /// runs packed (no padding: [`Bert::forward_layers_packed`]).
    pub fn embed_ids(&self, ids: &[Vec<u32>], device: &B::Device) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (x, lens) = self.packed(ids, device)?;
        let ctx = Ctx::default().for_eval();
        let n = self.bert.config.num_hidden_layers;
        let h = self.bert.forward_layers_packed(0..n, x, &lens, &ctx);
        host(self.pooling.apply_packed(h, &lens, self.normalize))
    }

    /// The embedding block's output for `ids` packed (tokens back to back, `[Σ len, d]`) and
    /// the lengths; checks lengths and ids against the model.
    fn packed(&self, ids: &[Vec<u32>], device: &B::Device) -> Result<(Tensor<B, 2>, Arc<[usize]>)> {
        let vocab = self.bert.config.vocab_size;
        let n: usize = ids.iter().map(Vec::len).sum();
        let mut flat = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        for row in ids {
            if row.is_empty() || row.len() > self.max_len {
                return Err(ModelError::Input(format!(
                    "an input of {} tokens; expected 1..={}",
                    row.len(),
                    self.max_len
                )));
            }
            for (j, &id) in row.iter().enumerate() {
                if id as usize >= vocab {
                    return Err(ModelError::Input(format!(
                        "token id {id} outside the vocabulary of {vocab}"
                    )));
                }
                flat.push(id as i64);
                positions.push(j as i64);
            }
        }
        let lens: Arc<[usize]> = ids.iter().map(Vec::len).collect();
        let x = self.bert.embed_packed(
            Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [n]), device),
            Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device),
        );
        Ok((x, lens))
    }

    /// Token ids of `texts` as the encoder sees them ([`token_ids`](Self::token_ids) for each).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .tokenizer
            .encode_batch(texts, true)?
            .into_iter()
            .map(|v| self.truncate(v))
            .collect())
    }

    /// The token states of every input after layers `0..split`, computed in the chunks
    /// [`encode`](Self::encode) uses at this `batch` ([`length_chunks`]), so that the upper
    /// layers run on them chunk by chunk reproduce `encode`'s bytes. `progress` gets the
    /// number of inputs done.
    pub fn token_states(
        &self,
        ids: &[Vec<u32>],
        split: usize,
        batch: usize,
        device: &B::Device,
        mut progress: impl FnMut(usize),
    ) -> Result<TokenStates> {
        let n_layers = self.bert.config.num_hidden_layers;
        if split > n_layers {
            return Err(ModelError::Input(format!(
                "split after layer {split} of a {n_layers}-layer encoder"
            )));
        }
        let d = self.dim();
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut offsets = Vec::with_capacity(lens.len() + 1);
        offsets.push(0);
        for l in &lens {
            offsets.push(offsets[offsets.len() - 1] + l);
        }
        let mut data = vec![0f32; offsets[lens.len()] * d];
        let ctx = Ctx::default().for_eval();
        let mut done = 0;
        for chunk in length_chunks(&lens, batch) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let (x, chunk_lens) = self.packed(&rows, device)?;
            let x = host(
                self.bert
                    .forward_layers_packed(0..split, x, &chunk_lens, &ctx),
            )?;
            let mut at = 0;
            for &i in &chunk {
                let src = &x[at * d..(at + lens[i]) * d];
                data[offsets[i] * d..offsets[i + 1] * d].copy_from_slice(src);
                at += lens[i];
            }
            done += chunk.len();
            progress(done);
        }
        Ok(TokenStates {
            split,
            dim: d,
            lens,
            offsets,
            data,
        })
    }

    /// Embeddings of `texts`, `[n, d]` row-major, in the input order. Like sentence-transformers,
    /// texts are sorted by length and encoded `batch` at a time (each batch packed, no
    /// padding); `progress` is called with the number of texts done after each batch.
    pub fn encode(
        &self,
        texts: &[&str],
        batch: usize,
        device: &B::Device,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<f32>> {
        let d = self.bert.config.hidden_size;
        let ids = self.tokenize(texts)?;
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out = vec![0f32; texts.len() * d];
        let mut done = 0;
        for chunk in length_chunks(&lens, batch) {
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

    /// Writes `dst` as a sentence-transformers / Hugging Face directory of this encoder with
    /// layers `first..first + layers.len()` replaced by `layers`: `model.safetensors` holds
    /// every tensor of the original checkpoint under its own name (the replaced ones as f32,
    /// the others byte for byte), and the directory's config, tokenizer and module files
    /// (`*.json`, `*.txt`, and the module folders `modules.json` names) are copied. Each file
    /// is written to a temporary name and renamed, so a crash leaves no half-written file.
    pub fn save_with_layers<B2: Backend>(
        &self,
        dst: &Path,
        first: usize,
        layers: &[BertLayer<B2>],
    ) -> Result<()> {
        let src_st = self.dir.join("model.safetensors");
        let bytes = std::fs::read(&src_st).map_err(|e| ModelError::io(&src_st, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ModelError::format(&src_st, e.to_string()))?;
        let pre = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let mut replaced = std::collections::BTreeMap::new();
        for (j, layer) in layers.iter().enumerate() {
            for (name, shape, v) in
                layer.named_tensors(&format!("{pre}encoder.layer.{}", first + j))?
            {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                replaced.insert(name, (shape, bytes));
            }
        }
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        for name in replaced.keys() {
            if !names.contains(name) {
                return Err(ModelError::format(
                    &src_st,
                    format!("no tensor `{name}` to replace"),
                ));
            }
        }
        let mut views = Vec::with_capacity(names.len());
        for name in &names {
            let view = match replaced.get(name) {
                Some((shape, bytes)) => safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                ),
                None => {
                    let t = st
                        .tensor(name)
                        .map_err(|e| ModelError::format(&src_st, e.to_string()))?;
                    safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.data())
                }
            }
            .map_err(|e| ModelError::format(&src_st, format!("tensor `{name}`: {e}")))?;
            views.push((name.clone(), view));
        }
        let data = safetensors::serialize(views, &None)
            .map_err(|e| ModelError::format(dst.join("model.safetensors"), e.to_string()))?;
        std::fs::create_dir_all(dst).map_err(|e| ModelError::io(dst, e))?;
        write_atomic(&dst.join("model.safetensors"), &data)?;
        copy_configs(&self.dir, dst)?;
        let modules = self.dir.join("modules.json");
        if modules.is_file() {
            let entries: Vec<ModuleEntry> = read_json(&modules)?;
            for m in entries.iter().filter(|m| !m.path.is_empty()) {
                let sub = self.dir.join(&m.path);
                if sub.is_dir() {
                    let out = dst.join(&m.path);
                    std::fs::create_dir_all(&out).map_err(|e| ModelError::io(&out, e))?;
                    copy_configs(&sub, &out)?;
                }
            }
        }
        Ok(())
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size
    }
}

impl Pooling {
    /// Pools token states `h` `[b, t, d]` over mask `[b, t]` → `[b, d]`, then L2-normalises
    /// when `normalize` (what the encoder's modules do after the transformer).
    pub fn apply<B: Backend>(
        self,
        h: Tensor<B, 3>,
        mask: Tensor<B, 2>,
        normalize: bool,
    ) -> Tensor<B, 2> {
        let [b, _, d] = h.dims();
        let pooled = match self {
            Self::Mean => Bert::mean_pool(h, mask),
            Self::Cls => h.slice([0..b, 0..1]).reshape([b, d]),
        };
        if normalize {
            l2_normalize(pooled)
        } else {
            pooled
        }
    }

    /// [`apply`](Self::apply) on packed token states `x` `[Σ lens, d]` (sequences of `lens`
    /// tokens back to back) → `[lens.len(), d]`.
    pub fn apply_packed<B: Backend>(
        self,
        x: Tensor<B, 2>,
        lens: &[usize],
        normalize: bool,
    ) -> Tensor<B, 2> {
        let pooled = match self {
            Self::Mean => Bert::mean_pool_packed(x, lens),
            Self::Cls => {
                let starts: Vec<i64> = packed_starts(lens).map(|s| s as i64).collect();
                let b = starts.len();
                let starts =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(starts, [b]), &x.device());
                x.select(0, starts)
            }
        };
        if normalize {
            l2_normalize(pooled)
        } else {
            pooled
        }
    }
}

/// The order in which [`SentenceEncoder::encode`] runs inputs of token lengths `lens`: sorted
/// by decreasing length (stable, so ties keep their input order), `batch` at a time. Each
/// chunk runs packed; the order fixes which inputs share a batch, hence the bytes.
pub fn length_chunks(lens: &[usize], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// Token states of a set of inputs after the encoder's first `split` layers
/// ([`SentenceEncoder::token_states`]), unpadded, f32: what fine-tuning the upper layers reads
/// instead of running the frozen lower ones again.
#[derive(Clone, Debug)]
pub struct TokenStates {
    /// Layers applied.
    pub split: usize,
    /// Width of a state.
    pub dim: usize,
    /// Tokens of each input.
    pub lens: Vec<usize>,
    offsets: Vec<usize>,
    data: Vec<f32>,
}

impl TokenStates {
    /// Inputs held.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether no input is held.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Bytes of states held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The states of inputs `rows` packed (back to back, `[Σ len, d]`) and their lengths, for
    /// [`Bert::forward_layers_packed`] / [`BertLayer::forward_packed`].
    pub fn packed<B: Backend>(
        &self,
        rows: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Arc<[usize]>) {
        let d = self.dim;
        let lens: Arc<[usize]> = rows.iter().map(|&i| self.lens[i]).collect();
        let n: usize = lens.iter().sum();
        let mut x = Vec::with_capacity(n * d);
        for &i in rows {
            x.extend_from_slice(&self.data[self.offsets[i] * d..self.offsets[i + 1] * d]);
        }
        (Tensor::from_data(TensorData::new(x, [n, d]), device), lens)
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("reading embeddings: {e:?}")))
}

/// `data` written to `path` through a temporary file and a rename (`bllm_codes::io`'s writer).
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    bllm_codes::io::write_atomic(path, data)
        .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))
}

/// Copies the `*.json` and `*.txt` files of `src` (configs, tokenizer, vocabulary) into `dst`.
fn copy_configs(src: &Path, dst: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| ModelError::io(src, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "txt"))
        })
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap_or_default();
        let data = std::fs::read(&f).map_err(|e| ModelError::io(&f, e))?;
        write_atomic(&dst.join(name), &data)?;
    }
    Ok(())
}
