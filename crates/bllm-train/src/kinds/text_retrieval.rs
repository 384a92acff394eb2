//! `kind = "retrieval"` with `data.texts` and `[encoder]`: the top layers of a pretrained
//! sentence encoder fine-tuned together with the hash head, so the codes are learned from text.
//!
//! ```text
//! texts ──tokenize──▶ layers 0..s (frozen, run once: token-state cache, f32)
//!                         │
//!                         ▼
//!        layers s..n (trained, encoder.lr) ─▶ pool ─▶ normalize ─▶ − μ ─▶ HashHead ─▶ codes
//! ```
//!
//! * **Teacher**: the frozen encoder itself (its own top layers on the cache), so the target
//!   neighbours are its cosine neighbours, as for the frozen head. The evaluation truth is the
//!   same teacher's neighbours of the queries (the first `data.queries` lines, never trained on).
//! * **Objective**: each step, `train.batch_size` anchors are run through the trained layers
//!   (with gradient) and ranked by [`bllm_nn::listwise_loss`] against a **bank** of
//!   `encoder.bank` database rows, evenly spaced, whose embeddings are recomputed with the
//!   current layers every `encoder.refresh_every` steps (no gradient through the encoder, but
//!   the head sees their codes fresh every step). `encoder.bank = 0` ranks each anchor against
//!   the step's other anchors instead (in-batch lists, gradient through both sides). Re-encoding the whole database per step would
//!   cost a full upper-layer pass per step; the bank costs one every `refresh_every` steps (see
//!   the README for the measurements). The bank is part of the model's state (a parameter
//!   without gradient), so a resumed run continues bit for bit.
//! * **Export**: `export/encoder/` is a sentence-transformers directory (the checkpoint with the
//!   trained layers replaced, tensor names unchanged; config, tokenizer and module files
//!   copied) plus the head (`encoder.*`, `decoder.*`); `export/codes/` are the database lines'
//!   codes, computed in the chunks `bllm encode --text` uses, so `bllm encode --encoder
//!   export/encoder --text DB.txt --batch encoder.batch` writes the same bytes.

use std::path::Path;

use bllm_codes::FloatMatrix;
use bllm_codes::io::SourceInfo;
use bllm_hash::LinearEncoder;
use bllm_hash::compare::{evaluate_encoder, markdown, truth};
use bllm_models::{BertLayer, Pooling, SentenceEncoder, TokenStates, length_chunks};
use bllm_nn::{
    HashHead, HashHeadConfig, HeadForward, bit_balance, decorrelation, listwise_loss,
    similarity_loss,
};
use bllm_recipe::{EncoderSection, Recipe, RetrievalTask};
use bllm_ste::{Ctx, Estimator};
use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

use super::retrieval::{
    RetrievalSummary, baseline_rows, encoder_of, export_codes, fit_decoder, tensor,
};
use crate::data::sample;
use crate::rundir::RunDir;
use crate::sites::Site;
use crate::trainer::{Kind, Loss, Metrics, Outcome, train};
use crate::{Result, RunOptions, TrainError};

/// The trained part: the encoder's top layers, the head, and the bank's embeddings.
#[derive(Module, Debug)]
pub struct TextHash<B: Backend> {
    /// Encoder layers `split..n` (checkpoint layers, trained at `encoder.lr`).
    pub layers: Vec<BertLayer<B>>,
    /// The hash head on the pooled, normalised, centred embeddings.
    pub head: HashHead<B>,
    /// Embeddings `[bank, d]` of the bank rows under the layers of the last refresh (no
    /// gradient; kept in the records so a resume continues exactly).
    pub bank: Param<Tensor<B, 2>>,
}

/// How the pooled embedding is made from the top layers' states.
#[derive(Clone, Copy)]
struct Pool {
    split: usize,
    heads: usize,
    pooling: Pooling,
    normalize: bool,
}

impl Pool {
    /// Embeddings `[rows, d]` of inputs `rows` of `states` through `layers`.
    fn embed<Bk: Backend>(
        self,
        layers: &[BertLayer<Bk>],
        states: &TokenStates,
        rows: &[usize],
        ctx: &Ctx,
    ) -> Tensor<Bk, 2> {
        let dev = Default::default();
        // Packed: the rows' tokens back to back, no padding computed.
        let (mut x, lens) = states.packed::<Bk>(rows, &dev);
        for (j, l) in layers.iter().enumerate() {
            x = l.forward_packed(x, &lens, self.heads, &ctx.fork((self.split + j) as u64));
        }
        self.pooling.apply_packed(x, &lens, self.normalize)
    }

    /// Embeddings of every input of `states`, in input order, computed chunk by chunk in the
    /// order `SentenceEncoder::encode` uses at `batch` (so the bytes are `encode`'s).
    fn embed_all<Bk: Backend>(
        self,
        layers: &[BertLayer<Bk>],
        states: &TokenStates,
        batch: usize,
    ) -> Result<FloatMatrix> {
        let d = states.dim;
        let ctx = Ctx::default().for_eval();
        let mut out = vec![0f32; states.len() * d];
        for chunk in length_chunks(&states.lens, batch) {
            let e = to_vec(self.embed(layers, states, &chunk, &ctx))?;
            for (k, &i) in chunk.iter().enumerate() {
                out[i * d..(i + 1) * d].copy_from_slice(&e[k * d..(k + 1) * d]);
            }
        }
        Ok(FloatMatrix::new(states.len(), d, out)?)
    }
}

fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| TrainError::Unsupported(format!("reading a tensor: {e:?}")))
}

/// A step's batch: the anchors (database rows) and the step.
type Anchors = (Vec<usize>, usize);

struct TextRetrieval<'r, B: AutodiffBackend> {
    recipe: &'r Recipe,
    t: &'r RetrievalTask,
    e: &'r EncoderSection,
    estimator: Estimator,
    mode: HeadForward,
    /// The frozen encoder (lower layers, the teacher's top layers, the export's source).
    encoder: SentenceEncoder<B::InnerBackend>,
    pool: Pool,
    /// Token states after layer `split` of the database lines and of the queries.
    db: TokenStates,
    queries: TokenStates,
    /// The teacher's embeddings (the frozen encoder's output) of the database and queries.
    teacher_db: FloatMatrix,
    teacher_q: FloatMatrix,
    /// Unit teacher rows of the database `[n, d]` and of the bank `[m, d]`.
    teacher_unit: Tensor<B::InnerBackend, 2>,
    bank_unit: Tensor<B::InnerBackend, 2>,
    /// Database rows of the bank, and the rows anchors are drawn from.
    bank_rows: Vec<usize>,
    anchor_rows: Vec<usize>,
    /// `bank_slot[i]`: position of database row `i` in the bank.
    bank_slot: Vec<Option<usize>>,
    init: LinearEncoder,
    cfg: HashHeadConfig,
    method: String,
    truth: bllm_codes::Neighbors<f32>,
    texts_path: String,
    texts_sha: String,
}

impl<B: AutodiffBackend> TextRetrieval<'_, B> {
    fn encoder_of(&self, head: &HashHead<B>) -> LinearEncoder {
        encoder_of(head, &self.init.mean, &self.method, self.t.data.normalize)
    }

    /// Centred (and, with `data.normalize`, re-normalised) head inputs.
    fn centre<Bk: Backend>(&self, x: Tensor<Bk, 2>) -> Tensor<Bk, 2> {
        let x = if self.t.data.normalize {
            bllm_models::l2_normalize(x)
        } else {
            x
        };
        let d = self.init.mean.len();
        let mu = Tensor::<Bk, 1>::from_data(
            TensorData::new(self.init.mean.clone(), [d]),
            &Default::default(),
        );
        x - mu.unsqueeze::<2>()
    }

    /// The fine-tuned embeddings of the database and the queries (inner model).
    fn embeddings(&self, model: &TextHash<B>) -> Result<(FloatMatrix, FloatMatrix)> {
        let layers: Vec<_> = model.layers.iter().map(AutodiffModule::valid).collect();
        Ok((
            self.pool.embed_all(&layers, &self.db, self.e.batch)?,
            self.pool.embed_all(&layers, &self.queries, self.e.batch)?,
        ))
    }

    fn loss_in(
        &self,
        model: &TextHash<B>,
        rows: &[usize],
        mode: HeadForward,
        ctx: &Ctx,
    ) -> Result<Tensor<B, 1>> {
        let obj = &self.t.objective;
        let bs = rows.len();
        let m = self.bank_rows.len();
        let ea = self.pool.embed(&model.layers, &self.db, rows, ctx);
        let dev = Default::default();
        let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        let anchors = self
            .teacher_unit
            .clone()
            .select(0, Tensor::from_data(TensorData::new(idx, [bs]), &dev));
        let bits = self.cfg.bits;
        let (h, ha, hb, cos, mask) = if m == 0 {
            // In-batch lists: each anchor against the step's other anchors, with gradient
            // through both sides.
            let z = model.head.logits(self.centre(ea));
            let h = HashHead::codes(z, &self.estimator, mode, ctx)?;
            let cos = anchors.clone().matmul(anchors.transpose());
            let mask = (0..bs * bs).map(|k| k / bs == k % bs).collect::<Vec<_>>();
            (h.clone(), h.clone(), h, cos, (mask, bs))
        } else {
            let x = Tensor::cat(vec![ea, model.bank.val().detach()], 0);
            let z = model.head.logits(self.centre(x));
            let h = HashHead::codes(z, &self.estimator, mode, ctx)?;
            let ha = h.clone().slice([0..bs, 0..bits]);
            let hb = h.clone().slice([bs..bs + m, 0..bits]);
            let cos = anchors.matmul(self.bank_unit.clone().transpose());
            let mut mask = vec![false; bs * m];
            for (a, &i) in rows.iter().enumerate() {
                if let Some(s) = self.bank_slot[i] {
                    mask[a * m + s] = true;
                }
            }
            (h, ha, hb, cos, (mask, m))
        };
        let cos = Tensor::<B, 2>::from_inner(cos);
        let excl = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask.0, [bs, mask.1]), &dev);
        let mut loss = if obj.kind == "similarity" {
            similarity_loss(ha, hb, cos, excl)
        } else {
            listwise_loss(
                ha,
                hb,
                cos,
                excl,
                obj.teacher_temperature,
                obj.code_temperature,
            )
        };
        if obj.bit_balance > 0.0 {
            loss = loss + bit_balance(h.clone()).mul_scalar(obj.bit_balance);
        }
        if obj.decorrelation > 0.0 {
            loss = loss + decorrelation(h).mul_scalar(obj.decorrelation);
        }
        Ok(loss)
    }
}

impl<B: AutodiffBackend> Kind<B> for TextRetrieval<'_, B> {
    type Model = TextHash<B>;
    type Batch = Anchors;
    type Stats = usize;
    type Summary = RetrievalSummary;

    fn name(&self) -> &'static str {
        "retrieval"
    }

    fn model(&self, dev: &B::Device) -> Result<TextHash<B>> {
        let neg_t: Vec<f32> = self.init.thresholds.iter().map(|v| -v).collect();
        let head = self
            .cfg
            .clone()
            .init_from::<B>(&self.init.projection, &neg_t, dev)?;
        // Loaded again on the training backend: parameters converted from the inner backend
        // would not require gradients.
        let mut layers = bllm_models::Bert::<B>::load(Path::new(&self.e.pretrained), dev)?.layers;
        let layers = layers.split_off(self.pool.split);
        // Before any update the layers are the teacher's: the bank starts as its embeddings.
        let d = self.teacher_db.cols();
        let mut bank = Vec::with_capacity(self.bank_rows.len() * d);
        for &i in &self.bank_rows {
            bank.extend_from_slice(self.teacher_db.row(i));
        }
        let bank = Tensor::<B, 2>::from_data(TensorData::new(bank, [self.bank_rows.len(), d]), dev);
        Ok(TextHash {
            layers,
            head,
            bank: Param::from_tensor(bank).set_require_grad(false),
        })
    }

    fn batch(&self, order: &mut ChaCha8Rng, step: usize) -> Result<Anchors> {
        let bs = self.recipe.train.batch_size;
        let idx = sample(order, self.anchor_rows.len(), bs);
        Ok((idx.iter().map(|&i| self.anchor_rows[i]).collect(), step))
    }

    /// Anchors `index·n/parts ..` of the step, each ranked against the bank as in the whole
    /// batch. Without a bank (`encoder.bank = 0`) the lists are the step's other anchors, so a
    /// part would rank against fewer, different negatives than the whole batch: refused.
    fn shard(&self, batch: &Anchors, index: usize, parts: usize) -> Result<Anchors> {
        if self.bank_rows.is_empty() {
            return Err(TrainError::Unsupported(format!(
                "recipe {:?}: encoder.bank = 0 ranks each anchor against the step's other \
                 anchors, which a split batch (train.accumulate > 1 or --world > 1) would \
                 change; set encoder.bank > 0 (a bank of database rows) to split the batch",
                self.recipe.name
            )));
        }
        Ok((crate::trainer::items(&batch.0, index, parts)?, batch.1))
    }

    fn loss(&self, model: &TextHash<B>, batch: &Anchors, ctx: &Ctx) -> Result<Loss<B, usize>> {
        let mut l = Loss::new(self.loss_in(model, &batch.0, self.mode, ctx)?);
        l.stats = batch.1;
        Ok(l)
    }

    fn shadow_loss(&self, model: &TextHash<B>, batch: &Anchors, ctx: &Ctx) -> Result<Tensor<B, 1>> {
        let other = match self.mode {
            HeadForward::Surrogate => HeadForward::Sign,
            HeadForward::Sign => HeadForward::Surrogate,
        };
        self.loss_in(model, &batch.0, other, ctx)
    }

    /// Every `encoder.refresh_every` steps: the bank's embeddings under the current layers.
    fn after_update(&self, model: &mut TextHash<B>, step: &usize) {
        if self.bank_rows.is_empty() || (step + 1) % self.e.refresh_every != 0 {
            return;
        }
        let layers: Vec<_> = model.layers.iter().map(AutodiffModule::valid).collect();
        let ctx = Ctx::default().for_eval();
        let m = self.bank_rows.len();
        let lens: Vec<usize> = self.bank_rows.iter().map(|&i| self.db.lens[i]).collect();
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(m);
        for chunk in length_chunks(&lens, self.e.batch) {
            let rows: Vec<usize> = chunk.iter().map(|&s| self.bank_rows[s]).collect();
            parts.push(self.pool.embed(&layers, &self.db, &rows, &ctx));
            order.extend(chunk);
        }
        // Back to bank order: row `order[k]` of the concatenation is bank slot `order[k]`.
        let mut inv = vec![0i64; m];
        for (k, &s) in order.iter().enumerate() {
            inv[s] = k as i64;
        }
        let dev = Default::default();
        let all =
            Tensor::cat(parts, 0).select(0, Tensor::from_data(TensorData::new(inv, [m]), &dev));
        let id = model.bank.id;
        model.bank = Param::initialized(id, Tensor::from_inner(all)).set_require_grad(false);
    }

    fn sites<'a>(&'a self, model: &'a TextHash<B>) -> Vec<Site<'a, B>> {
        vec![Site::Codes {
            name: "codes".into(),
            param: model.head.projection.val(),
            // Scaled projections of the bank rows (without a bank: of the teacher's embeddings
            // of the first 2,048 database rows), as the head binarizes them.
            values: Box::new(move || {
                let x = if self.bank_rows.is_empty() {
                    let rows = self.teacher_db.rows().min(2048);
                    let d = self.teacher_db.cols();
                    Tensor::from_data(
                        TensorData::new(self.teacher_db.as_slice()[..rows * d].to_vec(), [rows, d]),
                        &Default::default(),
                    )
                } else {
                    model.bank.val().inner()
                };
                let z = model.head.valid().logits(self.centre(x));
                let s = bllm_ste::ops::mean_abs(z.clone()).clamp_min(1e-12);
                Ok(z / s)
            }),
            cache: Default::default(),
            estimator: self.estimator.clone(),
            mode: self.mode,
        }]
    }

    fn lr_groups(&self, model: &TextHash<B>) -> Vec<(Vec<burn::module::ParamId>, f64)> {
        let lr = self.recipe.optimizer.lr;
        let scale = if lr > 0.0 { self.e.lr / lr } else { 0.0 };
        let mut ids = Vec::new();
        for l in &model.layers {
            ids.extend(crate::optim::param_ids(l));
        }
        vec![(ids, scale)]
    }

    fn evaluate(&self, model: &TextHash<B>, _step: usize, _total: usize) -> Result<Metrics> {
        let enc = self.encoder_of(&model.head);
        let (db, q) = self.embeddings(model)?;
        let k = if self.t.eval.k.contains(&10) {
            10
        } else {
            self.t.eval.k.iter().copied().max().unwrap_or(10)
        };
        let rows = evaluate_encoder(&enc, None, &db, &q, &self.truth, &[k], &[])?;
        Ok(Metrics::from([(
            "recall".to_owned(),
            rows.first().map_or(0.0, |r| r.recall),
        )]))
    }

    fn finish(
        &self,
        model: &TextHash<B>,
        run: &RunDir,
        o: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<RetrievalSummary> {
        let mut summary = RetrievalSummary::of(self.recipe, &self.method, self.cfg.bits, o);
        if final_dir.is_none() {
            return Ok(summary);
        }
        let (t, seed) = (self.t, self.recipe.seed);
        let enc = self.encoder_of(&model.head);
        let (db, q) = self.embeddings(model)?;
        // The fine-tuned encoder and head: codes, float rerank and decoders all on the
        // fine-tuned embeddings (what a user of the export has).
        let dec = fit_decoder(t, &enc, &db, seed)?;
        let mut rows = evaluate_encoder(
            &enc,
            dec.as_ref(),
            &db,
            &q,
            &self.truth,
            &t.eval.k,
            &t.eval.rerank,
        )?;
        // The baselines on the frozen encoder's embeddings, as a frozen-embedding user has them.
        rows.extend(baseline_rows(
            t,
            self.cfg.bits,
            seed,
            &self.teacher_db,
            (&self.teacher_db, &self.teacher_q),
            &self.truth,
        )?);
        run.write_json("results.json", &rows)?;
        run.write_file("results.md", markdown(&rows).as_bytes())?;
        summary.results = rows;

        // Export: the fine-tuned sentence encoder with the head beside it, and the codes.
        let export = run.path.join("export");
        let out = export.join("encoder");
        let layers: Vec<_> = model.layers.iter().map(AutodiffModule::valid).collect();
        self.encoder
            .save_with_layers(&out, self.pool.split, &layers)?;
        enc.save(&out)?;
        let source = SourceInfo {
            path: self.texts_path.clone(),
            sha256: self.texts_sha.clone(),
            dtype: "text".into(),
            rows: db.rows(),
            dim: db.cols(),
        };
        export_codes(
            self.recipe,
            &export,
            &enc,
            dec.as_ref(),
            &db,
            source,
            format!(
                "{} on a fine-tuned {} (export/encoder; database = lines {}.. of the texts)",
                enc.method, self.e.pretrained, t.data.queries
            ),
        )?;
        Ok(summary)
    }
}

/// Runs a text fine-tuning recipe (`data.texts` + `[encoder]`) on backend `B`.
pub(crate) fn run_text_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
    t: &RetrievalTask,
    e: &EncoderSection,
    estimator: Estimator,
    mode: HeadForward,
) -> Result<RetrievalSummary> {
    let texts_path = t.data.texts.clone().unwrap_or_default();
    let path = Path::new(&texts_path);
    if let Some(dir) = path.parent() {
        if dir.join("MANIFEST.json").exists() {
            bllm_data::check_manifest(dir)?;
        }
    }
    let texts = bllm_data::read_lines(path, t.data.text_field)?;
    let nq = t.data.queries;
    if nq >= texts.len() {
        return Err(TrainError::Unsupported(format!(
            "data.queries = {nq} leaves no database lines: {texts_path} has {} lines",
            texts.len()
        )));
    }
    let dev = Default::default();
    let t0 = std::time::Instant::now();
    let encoder = SentenceEncoder::<B::InnerBackend>::load(Path::new(&e.pretrained), &dev)
        .map_err(|err| TrainError::Unsupported(format!("encoder.pretrained: {err}")))?;
    let n_layers = encoder.bert.config.num_hidden_layers;
    if e.train_layers > n_layers {
        return Err(TrainError::Unsupported(format!(
            "encoder.train_layers = {} exceeds the {n_layers} layers of {}",
            e.train_layers, e.pretrained
        )));
    }
    let split = n_layers - e.train_layers;
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = encoder.tokenize(&strs)?;
    let (q_ids, db_ids) = ids.split_at(nq);
    let queries = encoder.token_states(q_ids, split, e.batch, &dev, |_| {})?;
    let db = encoder.token_states(db_ids, split, e.batch, &dev, |_| {})?;
    let pool = Pool {
        split,
        heads: encoder.bert.config.num_attention_heads,
        pooling: encoder.pooling,
        normalize: encoder.normalize,
    };
    let frozen = &encoder.bert.layers[split..];
    let teacher_db = pool.embed_all(frozen, &db, e.batch)?;
    let teacher_q = pool.embed_all(frozen, &queries, e.batch)?;
    tracing::info!(
        texts = texts.len(),
        cached_layers = split,
        cache_mb = (db.bytes() + queries.bytes()) / (1 << 20),
        secs = t0.elapsed().as_secs_f64(),
        "token states cached, teacher embedded"
    );
    let n = db.len();
    let bs = recipe.train.batch_size;
    let kmax = t.eval.k.iter().copied().max().unwrap_or(10);
    if kmax > n {
        return Err(TrainError::Unsupported(format!(
            "eval.k = {kmax} exceeds the {n} database lines of {texts_path}"
        )));
    }
    let spaced = |take: usize| -> Vec<usize> {
        let take = if take == 0 { n } else { take.min(n) };
        (0..take).map(|i| i * n / take).collect()
    };
    let anchor_rows = spaced(t.data.train_rows);
    if bs > anchor_rows.len() {
        return Err(TrainError::Unsupported(format!(
            "train.batch_size = {bs} anchors exceeds the {} training lines of {texts_path}",
            anchor_rows.len()
        )));
    }
    // No bank (`encoder.bank = 0`): in-batch lists.
    let bank_rows = if e.bank == 0 {
        Vec::new()
    } else {
        spaced(e.bank)
    };
    let mut bank_slot = vec![None; n];
    for (s, &i) in bank_rows.iter().enumerate() {
        bank_slot[i] = Some(s);
    }
    let unit = |m: &FloatMatrix| {
        bllm_hash::normalize_rows(m).map_err(|err| {
            TrainError::Unsupported(format!("{texts_path}: a text embeds to zero: {err}"))
        })
    };
    let db_unit = unit(&teacher_db)?;
    let q_unit = unit(&teacher_q)?;
    let mut bank_v = Vec::with_capacity(bank_rows.len() * db_unit.cols());
    for &i in &bank_rows {
        bank_v.extend_from_slice(db_unit.row(i));
    }
    let bank_unit = FloatMatrix::new(bank_rows.len(), db_unit.cols(), bank_v)?;
    let train_x = if t.data.normalize {
        db_unit.clone()
    } else {
        teacher_db.clone()
    };
    let init = super::retrieval::initial_encoder(t, &train_x, recipe.seed)?;
    let cfg = HashHeadConfig {
        input_dim: teacher_db.cols(),
        bits: t.model.bits,
        learn_bias: t.model.learn_bias,
    };
    let truth = truth(&db_unit, &q_unit, &t.eval.k)?;
    let kind = TextRetrieval::<B> {
        recipe,
        t,
        e,
        estimator,
        mode,
        pool,
        db,
        queries,
        teacher_unit: tensor(&db_unit),
        bank_unit: tensor(&bank_unit),
        teacher_db,
        teacher_q,
        bank_rows,
        anchor_rows,
        bank_slot,
        init,
        cfg,
        method: format!("finetuned_{}", t.objective.kind),
        truth,
        texts_sha: bllm_codes::io::sha256_file(path)?,
        texts_path,
        encoder,
    };
    train::<B, _>(recipe, opts, kind)
}
