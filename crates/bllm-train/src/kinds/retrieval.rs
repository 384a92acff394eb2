//! The `kind = "retrieval"` trainer: a learned projection head from float embeddings to k-bit
//! codes, evaluated beside the classic baselines and exported to the retrieval engine.
//!
//! ```text
//! <run>/results.json     [{"method", "bits", "k", "rerank", "rerank_kind", "bytes_per_row", "recall"}, …]
//!                        (rerank 0 = Hamming only; rerank_kind "float" | "asymmetric" |
//!                        "decoded" | "decoded_pq")
//! <run>/results.md       the same as a table
//! <run>/export/encoder/  encoder.safetensors + encoder.json (bllm-hash LinearEncoder), and
//!                        decoder.safetensors + decoder.json (bllm-hash CodeDecoder)
//! <run>/export/codes/    database codes (.bcodes + manifest.json), faiss.index on request,
//!                        residual.npy (uint8 [rows, eval.pq_bytes]) when pq_bytes > 0
//! ```
//!
//! Every step encodes all training rows (`data.train_rows` caps them), samples
//! `train.batch_size` anchors, and scores each anchor's code similarities to every training row
//! against its cosine similarities ([`bllm_nn::listwise_loss`] or
//! [`bllm_nn::similarity_loss`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bllm_codes::FloatMatrix;
use bllm_codes::io::{ManifestInfo, SourceInfo};
use bllm_hash::compare::{RerankKind, ResultRow, evaluate_encoder, markdown, truth};
use bllm_hash::{CodeDecoder, LinearEncoder, Method};
use bllm_nn::{
    HashHead, HashHeadConfig, HeadForward, bit_balance, decorrelation, listwise_loss,
    similarity_loss,
};
use bllm_recipe::{Recipe, RetrievalTask};
use bllm_ste::{Ctx, Estimator};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::sample;
use crate::optim::to_vec;
use crate::rundir::RunDir;
use crate::sites::Site;
use crate::trainer::{
    After, Kind, Loss, Metrics, Monitor, Outcome, Readings, estimator, train, wrong_kind,
};
use crate::{Result, RunOptions, TrainError};

/// Rows of the training set whose codes the flip-ratio monitor tracks.
const PROBE_ROWS: usize = 2048;

/// What a finished retrieval run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalSummary {
    /// Recipe name.
    pub name: String,
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// Mean training loss over the last logged window.
    pub train_loss: f64,
    /// Method name of the learned head in the results (`learned_<objective>`).
    pub method: String,
    /// Code length of the head.
    pub bits: usize,
    /// Every result row (learned head and baselines); empty when the run stopped early.
    pub results: Vec<ResultRow>,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped.
    pub monitor_events: usize,
    /// Mean of each monitor's logged value over the run.
    pub monitor_means: BTreeMap<String, f64>,
}

impl RetrievalSummary {
    /// The summary of a run that ended with `o`, before any results.
    pub(crate) fn of(recipe: &Recipe, method: &str, bits: usize, o: &Outcome) -> Self {
        Self {
            name: recipe.name.clone(),
            steps: o.steps,
            complete: o.complete,
            train_loss: o.train_loss,
            method: method.to_owned(),
            bits,
            results: Vec::new(),
            skipped_steps: o.skipped_steps,
            monitor_events: o.monitor_events,
            monitor_means: o.monitor_means.clone(),
        }
    }

    /// Recall of `method` at `bits`, `k` and `rerank` (float re-ranking when `rerank > 0`), if
    /// evaluated.
    pub fn recall(&self, method: &str, bits: usize, k: usize, rerank: usize) -> Option<f64> {
        let kind = if rerank == 0 {
            RerankKind::None
        } else {
            RerankKind::Float
        };
        self.recall_of(method, bits, k, rerank, kind)
    }

    /// Recall of `method` at `bits`, `k`, `rerank` and re-ranking kind, if evaluated.
    pub fn recall_of(
        &self,
        method: &str,
        bits: usize,
        k: usize,
        rerank: usize,
        kind: RerankKind,
    ) -> Option<f64> {
        self.results
            .iter()
            .find(|r| {
                r.method == method
                    && r.bits == bits
                    && r.k == k
                    && r.rerank == rerank
                    && r.kind() == kind
            })
            .map(|r| r.recall)
    }
}

/// The loaded embeddings: `raw` rows as in the files, `unit` rows L2-normalised.
struct Data {
    db_raw: FloatMatrix,
    queries_raw: FloatMatrix,
    db_unit: FloatMatrix,
    queries_unit: FloatMatrix,
    /// Training rows (what the head sees: normalised when `data.normalize`).
    train: FloatMatrix,
    /// Training rows, normalised (for the cosine teacher).
    train_unit: FloatMatrix,
    /// The data file (or `[data.synthetic]`), for messages.
    name: String,
    source: SourceInfo,
}

/// Embeddings and their stored element type, after checking the manifest beside the file
/// (when there is one).
fn load_matrix(path: &Path) -> Result<(FloatMatrix, &'static str)> {
    if let Some(dir) = path.parent() {
        if dir.join("MANIFEST.json").exists() {
            bllm_data::check_manifest(dir)?;
        }
    }
    Ok(bllm_data::load_embeddings_typed(path, None)?)
}

fn load_data(t: &RetrievalTask, seed: u64) -> Result<Data> {
    let (x, name, source) = match (&t.data.path, &t.data.synthetic) {
        (Some(p), _) => {
            let path = PathBuf::from(p);
            let (x, dtype) = load_matrix(&path)?;
            let source = SourceInfo {
                path: p.clone(),
                sha256: bllm_codes::io::sha256_file(&path)?,
                dtype: dtype.into(),
                rows: x.rows(),
                dim: x.cols(),
            };
            (x, p.clone(), source)
        }
        (None, Some(sy)) => {
            let c = bllm_data::synthetic::HardCase {
                rows: sy.rows,
                dim: sy.dim,
                clusters: sy.clusters,
                outlier_fraction: sy.outlier_fraction,
                seed,
            };
            let x = bllm_data::synthetic::hard_case(&c)?;
            let source = SourceInfo {
                path: format!("synthetic:{c:?}"),
                sha256: String::new(),
                dtype: "float32".into(),
                rows: x.rows(),
                dim: x.cols(),
            };
            (x, "[data.synthetic]".to_owned(), source)
        }
        (None, None) => {
            return Err(TrainError::Unsupported(
                "data: neither path nor [data.synthetic] is set".into(),
            ));
        }
    };
    let split = match &t.data.queries_path {
        Some(q) => bllm_data::Split::separate(x.clone(), load_matrix(Path::new(q))?.0)?,
        None => bllm_data::Split::first_rows(&x, t.data.queries)?,
    };
    let named = |e: bllm_hash::HashError, p: &str| {
        TrainError::Unsupported(format!(
            "{p}: {e} (set data.normalize = false to keep norms)"
        ))
    };
    let db_unit = bllm_hash::normalize_rows(&split.db).map_err(|e| named(e, &name))?;
    let queries_unit = bllm_hash::normalize_rows(&split.queries)
        .map_err(|e| named(e, t.data.queries_path.as_deref().unwrap_or(name.as_str())))?;
    let n = split.db.rows();
    let take = if t.data.train_rows == 0 {
        n
    } else {
        t.data.train_rows.min(n)
    };
    let pick = |m: &FloatMatrix| -> Result<FloatMatrix> {
        if take == n {
            return Ok(m.clone());
        }
        let mut v = Vec::with_capacity(take * m.cols());
        for i in 0..take {
            v.extend_from_slice(m.row(i * n / take));
        }
        Ok(FloatMatrix::new(take, m.cols(), v)?)
    };
    let train_unit = pick(&db_unit)?;
    let train = if t.data.normalize {
        train_unit.clone()
    } else {
        pick(&split.db)?
    };
    // The exported codes are the database rows (the queries are not indexed).
    let mut source = source;
    source.rows = split.db.rows();
    Ok(Data {
        db_raw: split.db,
        queries_raw: split.queries,
        db_unit,
        queries_unit,
        train,
        train_unit,
        name,
        source,
    })
}

pub(crate) fn tensor<B: burn::tensor::backend::Backend>(m: &FloatMatrix) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(m.as_slice().to_vec(), [m.rows(), m.cols()]),
        &Default::default(),
    )
}

/// The estimator-free encoder of a head: `mean = μ`, `projection = P`, `thresholds = −b`.
pub(crate) fn encoder_of<B: AutodiffBackend>(
    head: &HashHead<B>,
    mean: &[f32],
    method: &str,
    normalize: bool,
) -> LinearEncoder {
    let (projection, bias) = head.to_host();
    LinearEncoder {
        method: method.to_owned(),
        dim: mean.len(),
        bits: bias.len(),
        mean: mean.to_vec(),
        projection,
        thresholds: bias.iter().map(|b| -b).collect(),
        normalize,
    }
}

/// `kind = "retrieval"`.
struct Retrieval<'r, B: AutodiffBackend> {
    recipe: &'r Recipe,
    t: &'r RetrievalTask,
    estimator: Estimator,
    mode: HeadForward,
    data: Data,
    init: LinearEncoder,
    cfg: HashHeadConfig,
    method: String,
    /// Centred training rows `[n, dim]` (what the head sees).
    xc: Tensor<B, 2>,
    /// Normalised training rows (the cosine teacher).
    unit: Tensor<B::InnerBackend, 2>,
    n: usize,
    truth: bllm_codes::Neighbors<f32>,
}

/// A step's anchors: indices `[bs]`, cosines to every training row `[bs, n]`, the mask of
/// each anchor's own row.
type Anchors<B> = (Tensor<B, 1, Int>, Tensor<B, 2>, Tensor<B, 2, Bool>);

impl<B: AutodiffBackend> Retrieval<'_, B> {
    fn encoder(&self, head: &HashHead<B>) -> LinearEncoder {
        encoder_of(head, &self.init.mean, &self.method, self.t.data.normalize)
    }

    fn loss_in(
        &self,
        head: &HashHead<B>,
        (idx, cos, excl): &Anchors<B>,
        mode: HeadForward,
        ctx: &Ctx,
    ) -> Result<Tensor<B, 1>> {
        let obj = &self.t.objective;
        let h = HashHead::codes(head.logits(self.xc.clone()), &self.estimator, mode, ctx)?;
        let ha = h.clone().select(0, idx.clone());
        let mut loss = if obj.kind == "similarity" {
            similarity_loss(ha, h.clone(), cos.clone(), excl.clone())
        } else {
            listwise_loss(
                ha,
                h.clone(),
                cos.clone(),
                excl.clone(),
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

    /// Projections `z` `[n, bits]` of the first `rows` training rows.
    fn logits(&self, head: &HashHead<B>, rows: usize) -> Tensor<B::InnerBackend, 2> {
        let x = self.xc.clone().inner();
        let x = if rows < self.n {
            x.slice([0..rows, 0..self.data.train.cols()])
        } else {
            x
        };
        head.valid().logits(x)
    }
}

impl<B: AutodiffBackend> Kind<B> for Retrieval<'_, B> {
    type Model = HashHead<B>;
    type Batch = Anchors<B>;
    type Stats = ();
    type Summary = RetrievalSummary;

    fn name(&self) -> &'static str {
        "retrieval"
    }

    fn model(&self, dev: &B::Device) -> Result<HashHead<B>> {
        let neg_t: Vec<f32> = self.init.thresholds.iter().map(|v| -v).collect();
        // Parameter ids are fixed by the loop (`train`).
        Ok(self
            .cfg
            .clone()
            .init_from::<B>(&self.init.projection, &neg_t, dev)?)
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> Result<Anchors<B>> {
        let (n, bs) = (self.n, self.recipe.train.batch_size);
        let idx = sample(order, n, bs);
        let dev = Default::default();
        let idx_i: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let unit = self.unit.clone();
        let anchors = unit.clone().select(
            0,
            Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(idx_i.clone(), [bs]),
                &dev,
            ),
        );
        let cos =
            Tensor::<B, 2>::from_inner(bllm_ste::linear::linear(anchors, unit.transpose(), None));
        let mut mask = vec![false; bs * n];
        for (a, &i) in idx.iter().enumerate() {
            mask[a * n + i] = true;
        }
        Ok((
            Tensor::from_data(TensorData::new(idx_i, [bs]), &dev),
            cos,
            Tensor::from_data(TensorData::new(mask, [bs, n]), &dev),
        ))
    }

    /// A part of the anchors (every rank codes the whole database; the listwise loss is a mean
    /// over anchors, the bit-balance and decorrelation terms are the same on every part).
    fn shard(
        &self,
        (idx, cos, excl): &Anchors<B>,
        index: usize,
        parts: usize,
    ) -> Result<Anchors<B>> {
        Ok((
            crate::trainer::rows(idx, index, parts)?,
            crate::trainer::rows(cos, index, parts)?,
            crate::trainer::rows(excl, index, parts)?,
        ))
    }

    fn loss(&self, head: &HashHead<B>, batch: &Anchors<B>, ctx: &Ctx) -> Result<Loss<B, ()>> {
        Ok(Loss::new(self.loss_in(head, batch, self.mode, ctx)?))
    }

    /// The head's shadow is the other forward mode (sign STE vs smooth surrogate).
    fn shadow_loss(
        &self,
        head: &HashHead<B>,
        batch: &Anchors<B>,
        ctx: &Ctx,
    ) -> Result<Tensor<B, 1>> {
        let other = match self.mode {
            HeadForward::Surrogate => HeadForward::Sign,
            HeadForward::Sign => HeadForward::Surrogate,
        };
        self.loss_in(head, batch, other, ctx)
    }

    fn sites<'a>(&'a self, head: &'a HashHead<B>) -> Vec<Site<'a, B>> {
        let probe = self.n.min(PROBE_ROWS);
        vec![Site::Codes {
            name: "codes".into(),
            param: head.projection.val(),
            // Scaled projections `u = z / mean|z|` of the probe rows, as the head binarizes them.
            values: Box::new(move || {
                let z = self.logits(head, probe);
                let s = bllm_ste::ops::mean_abs(z.clone()).clamp_min(1e-12);
                Ok(z / s)
            }),
            cache: Default::default(),
            estimator: self.estimator.clone(),
            mode: self.mode,
        }]
    }

    fn monitors(&self, _head: &HashHead<B>) -> Result<Vec<Box<dyn Monitor<B, Self>>>> {
        Ok(vec![Box::new(BitBalance)])
    }

    fn evaluate(&self, head: &HashHead<B>, _step: usize, _total: usize) -> Result<Metrics> {
        let enc = self.encoder(head);
        let kmax = self.t.eval.k.iter().copied().max().unwrap_or(10);
        let k = if self.t.eval.k.contains(&10) {
            10
        } else {
            kmax
        };
        let rows = evaluate_encoder(
            &enc,
            None,
            &self.data.db_raw,
            &self.data.queries_raw,
            &self.truth,
            &[k],
            &[],
        )?;
        Ok(Metrics::from([(
            "recall".to_owned(),
            rows.first().map_or(0.0, |r| r.recall),
        )]))
    }

    fn checkpoint_files(&self, head: &HashHead<B>, dir: &Path) -> Result<()> {
        self.encoder(head).save(&dir.join("encoder"))?;
        Ok(())
    }

    fn finish(
        &self,
        head: &HashHead<B>,
        run: &RunDir,
        o: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<RetrievalSummary> {
        let mut summary = RetrievalSummary::of(self.recipe, &self.method, self.cfg.bits, o);
        if final_dir.is_none() {
            return Ok(summary);
        }
        let (t, data) = (self.t, &self.data);
        // The head, then every baseline at every budget, all on the raw inputs through the
        // same encoder code path as the export.
        let enc = self.encoder(head);
        let seed = self.recipe.seed;
        let dec = fit_decoder(t, &enc, &data.train, seed)?;
        let mut rows = evaluate_encoder(
            &enc,
            dec.as_ref(),
            &data.db_raw,
            &data.queries_raw,
            &self.truth,
            &t.eval.k,
            &t.eval.rerank,
        )?;
        rows.extend(baseline_rows(
            t,
            self.cfg.bits,
            seed,
            &data.train,
            (&data.db_raw, &data.queries_raw),
            &self.truth,
        )?);
        run.write_json("results.json", &rows)?;
        run.write_file("results.md", markdown(&rows).as_bytes())?;
        summary.results = rows;

        // Export: the encoder and the database codes it makes.
        let export = run.path.join("export");
        enc.save(&export.join("encoder"))?;
        export_codes(
            self.recipe,
            &export,
            &enc,
            dec.as_ref(),
            &data.db_raw,
            data.source.clone(),
            format!("{} (export/encoder)", enc.method),
        )?;
        Ok(summary)
    }
}

/// The code decoder of `enc` fitted on `train` when `eval.rerank` asks for re-ranking.
pub(crate) fn fit_decoder(
    t: &RetrievalTask,
    enc: &LinearEncoder,
    train: &FloatMatrix,
    seed: u64,
) -> Result<Option<CodeDecoder>> {
    if t.eval.rerank.is_empty() {
        return Ok(None);
    }
    Ok(Some(CodeDecoder::fit(enc, train, t.eval.pq_bytes, seed)?))
}

/// Rows of every baseline of `eval.methods` at every budget of `eval.bits` (`bits` when
/// empty), fitted on `train` and evaluated on `(db, queries)` through the export's encoder path
/// (with their decoders when `eval.rerank` asks for re-ranking). A baseline that cannot be
/// fitted at a budget (PCA beyond the dimension) is skipped with a log line.
pub(crate) fn baseline_rows(
    t: &RetrievalTask,
    bits: usize,
    seed: u64,
    train: &FloatMatrix,
    (db, queries): (&FloatMatrix, &FloatMatrix),
    truth: &bllm_codes::Neighbors<f32>,
) -> Result<Vec<ResultRow>> {
    let budgets = if t.eval.bits.is_empty() {
        vec![bits]
    } else {
        t.eval.bits.clone()
    };
    let mut rows = Vec::new();
    for &b in &budgets {
        for m in &t.eval.methods {
            let method = Method::from_name(m)?;
            let mut base = match bllm_hash::fit(method, train, b, seed) {
                Ok(e) => e,
                Err(bllm_hash::HashError::InvalidArgument(why)) => {
                    tracing::info!(baseline = %m, bits = b, "skipping baseline: {why}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            base.normalize = t.data.normalize;
            let dec = fit_decoder(t, &base, train, seed)?;
            rows.extend(evaluate_encoder(
                &base,
                dec.as_ref(),
                db,
                queries,
                truth,
                &t.eval.k,
                &t.eval.rerank,
            )?);
        }
    }
    Ok(rows)
}

/// Writes `export/codes/` — the codes `enc` gives `db` with their manifest, a FAISS index
/// when `export.faiss`, and with a decoder its residual bytes — and the decoder beside the
/// encoder in `export/encoder/`.
pub(crate) fn export_codes(
    recipe: &Recipe,
    export: &Path,
    enc: &LinearEncoder,
    dec: Option<&CodeDecoder>,
    db: &FloatMatrix,
    source: SourceInfo,
    encoder: String,
) -> Result<()> {
    let codes = enc.encode(db)?;
    let info = ManifestInfo {
        source: Some(source),
        encoder: Some(encoder),
        recipe: Some(recipe.name.clone()),
        tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
    };
    let dir = export.join("codes");
    bllm_codes::io::write_codes_dir(&dir, &codes, info)?;
    if recipe.export.faiss {
        bllm_codes::io::write_faiss_binary_flat(&dir.join("faiss.index"), &codes)?;
    }
    if let Some(dec) = dec {
        dec.save(&export.join("encoder"))?;
        if dec.residual_bytes() > 0 {
            let res = dec.residual_codes(&codes, db)?;
            bllm_codes::io::npy::write_u8_npy(
                &dir.join(bllm_hash::RESIDUAL_NPY),
                codes.rows(),
                dec.residual_bytes(),
                &res,
            )?;
        }
    }
    Ok(())
}

/// `bit_balance`: per code bit, `|P(bit = 1) − 0.5|` over all training rows; logs the mean
/// and the worst bit, checks the worst.
struct BitBalance;

impl<B: AutodiffBackend> Monitor<B, Retrieval<'_, B>> for BitBalance {
    fn name(&self) -> &'static str {
        "bit_balance"
    }

    fn after_update(
        &mut self,
        cx: &After<'_, B, Retrieval<'_, B>>,
        out: &mut Readings,
    ) -> Result<()> {
        if !cx.due("bit_balance") {
            return Ok(());
        }
        let (n, bits) = (cx.kind.n, cx.kind.cfg.bits);
        let z = to_vec(cx.kind.logits(cx.model, n));
        let mut ones = vec![0usize; bits];
        for row in z.chunks(bits) {
            for (o, v) in ones.iter_mut().zip(row) {
                *o += usize::from(*v >= 0.0);
            }
        }
        let dev_of = |o: &usize| (*o as f64 / n as f64 - 0.5).abs();
        let mean = ones.iter().map(dev_of).sum::<f64>() / bits as f64;
        let worst = ones.iter().map(dev_of).fold(0.0, f64::max);
        out.metric("bit_balance", mean);
        out.metric("bit_balance_worst", worst);
        out.checks.push(("bit_balance", worst, true));
        Ok(())
    }
}

/// The head's starting point: the saved encoder of `model.init_from`, or the baseline
/// `model.init` fitted on `train` (which also fixes the centring vector μ).
pub(crate) fn initial_encoder(
    t: &RetrievalTask,
    train: &FloatMatrix,
    seed: u64,
) -> Result<LinearEncoder> {
    let bits = t.model.bits;
    let Some(dir) = &t.model.init_from else {
        let method = Method::from_name(&t.model.init).unwrap_or(Method::Itq);
        return Ok(bllm_hash::fit(method, train, bits, seed)?);
    };
    let e = LinearEncoder::load(Path::new(dir))
        .map_err(|err| TrainError::Unsupported(format!("model.init_from = {dir:?}: {err}")))?;
    if e.bits != bits || e.dim != train.cols() {
        return Err(TrainError::Unsupported(format!(
            "model.init_from = {dir:?}: the encoder maps {} dimensions to {} bits; the run needs \
             {} → {bits} (model.bits)",
            e.dim,
            e.bits,
            train.cols()
        )));
    }
    if e.normalize != t.data.normalize {
        return Err(TrainError::Unsupported(format!(
            "model.init_from = {dir:?}: the encoder {} its inputs but data.normalize = {}",
            if e.normalize {
                "normalises"
            } else {
                "does not normalise"
            },
            t.data.normalize
        )));
    }
    Ok(e)
}

/// Runs (or resumes) a retrieval recipe into `opts.run_dir`.
pub fn run_retrieval(recipe: &Recipe, opts: &mut RunOptions) -> Result<RetrievalSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_retrieval_on -> RetrievalSummary)
}

fn run_retrieval_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
) -> Result<RetrievalSummary> {
    let t = recipe
        .retrieval()
        .ok_or_else(|| wrong_kind(recipe, "retrieval"))?;
    let estimator = estimator(recipe)?;
    let mode = if t.model.forward == "sign" {
        HeadForward::Sign
    } else {
        HeadForward::Surrogate
    };
    opts.refuse_existing(recipe)?;
    if let Some(e) = &t.encoder {
        return super::text_retrieval::run_text_on::<B>(recipe, opts, t, e, estimator, mode);
    }
    let data = load_data(t, recipe.seed)?;
    let bits = t.model.bits;
    let n = data.train.rows();
    let bs = recipe.train.batch_size;
    if bs > n {
        return Err(TrainError::Unsupported(format!(
            "train.batch_size = {bs} anchors exceeds the {n} training rows of {}",
            data.name
        )));
    }
    let kmax = t.eval.k.iter().copied().max().unwrap_or(10);
    if kmax > data.db_raw.rows() {
        return Err(TrainError::Unsupported(format!(
            "eval.k = {kmax} exceeds the {} database rows of {}",
            data.db_raw.rows(),
            data.name
        )));
    }
    let dim = data.train.cols();
    let pq = t.eval.pq_bytes;
    if pq > 0 && (pq > dim || dim % pq != 0) {
        return Err(TrainError::Unsupported(format!(
            "eval.pq_bytes = {pq} must divide the embedding dimension {dim} of {} (each residual \
             byte codes dim / pq_bytes dimensions); 0 turns the decoded_pq rows off",
            data.name
        )));
    }
    // Initialise from a baseline (which also fixes the centring vector μ).
    let init = initial_encoder(t, &data.train, recipe.seed)?;
    let cfg = HashHeadConfig {
        input_dim: data.train.cols(),
        bits,
        learn_bias: t.model.learn_bias,
    };
    let centred: Vec<f32> = data
        .train
        .as_slice()
        .chunks(data.train.cols())
        .flat_map(|r| r.iter().zip(&init.mean).map(|(a, m)| a - m))
        .collect();
    let xc = tensor::<B>(&FloatMatrix::new(n, data.train.cols(), centred)?);
    let unit = tensor::<B::InnerBackend>(&data.train_unit);
    let truth = truth(&data.db_unit, &data.queries_unit, &t.eval.k)?;
    let kind = Retrieval {
        recipe,
        t,
        estimator,
        mode,
        init,
        cfg,
        method: format!("learned_{}", t.objective.kind),
        xc,
        unit,
        n,
        truth,
        data,
    };
    train::<B, _>(recipe, opts, kind)
}
