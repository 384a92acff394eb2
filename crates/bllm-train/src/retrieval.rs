//! The `kind = "retrieval"` trainer: a learned projection head from float embeddings to k-bit
//! codes, evaluated beside the classic baselines and exported to the retrieval engine.
//!
//! ```text
//! <run>/results.json     [{"method", "bits", "k", "rerank", "recall"}, …] (rerank 0 = Hamming only)
//! <run>/results.md       the same as a table
//! <run>/export/encoder/  encoder.safetensors + encoder.json (bllm-hash LinearEncoder)
//! <run>/export/codes/    database codes (.bcodes + manifest.json), faiss.index on request
//! ```
//!
//! Every step encodes all training rows (`data.train_rows` caps them), samples
//! `train.batch_size` anchors, and scores each anchor's code similarities to every training row
//! against its cosine similarities ([`bllm_nn::listwise_loss`] or
//! [`bllm_nn::similarity_loss`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bllm_codes::io::{ManifestInfo, SourceInfo};
use bllm_codes::rng::SplitMix64;
use bllm_codes::{FloatMatrix, PackedCodes};
use bllm_hash::compare::{ResultRow, evaluate_encoder, markdown, truth};
use bllm_hash::{LinearEncoder, Method};
use bllm_nn::{
    HashHead, HashHeadConfig, HeadForward, bit_balance, decorrelation, listwise_loss,
    similarity_loss, with_deterministic_ids,
};
use bllm_recipe::{Recipe, RetrievalTask};
use bllm_ste::{Ctx, Estimator};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::classify::RunOptions;
use crate::monitor::{LoopState, Verdict, Watch};
use crate::optim::{Opt, clip_and_step, save_checkpoint, start_or_resume, step_ctx, to_vec};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::{Result, TrainError};

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
    /// Recall of `method` at `bits`, `k` and `rerank`, if evaluated.
    pub fn recall(&self, method: &str, bits: usize, k: usize, rerank: usize) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.method == method && r.bits == bits && r.k == k && r.rerank == rerank)
            .map(|r| r.recall)
    }
}

/// State saved in `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    step: usize,
    rng_state: u64,
    #[serde(flatten)]
    watch: LoopState,
    last_probe_codes: Vec<u64>,
}

/// Monitor values averaged into [`RetrievalSummary::monitor_means`].
const SUMMARISED: [&str; 5] = [
    "shadow_cosine",
    "flip_ratio",
    "pass_through",
    "quant_error",
    "bit_balance",
];

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

fn tensor<B: burn::tensor::backend::Backend>(m: &FloatMatrix) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(m.as_slice().to_vec(), [m.rows(), m.cols()]),
        &Default::default(),
    )
}

/// The estimator-free encoder of a head: `mean = μ`, `projection = P`, `thresholds = −b`.
fn encoder_of<B: AutodiffBackend>(
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

/// Runs (or resumes) a retrieval recipe into `opts.run_dir`.
pub fn run_retrieval(recipe: &Recipe, opts: &mut RunOptions) -> Result<RetrievalSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_retrieval_on -> RetrievalSummary)
}

fn run_retrieval_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
) -> Result<RetrievalSummary> {
    let Some(t) = recipe.retrieval() else {
        return Err(TrainError::Unsupported(format!(
            "recipe {:?} is kind = {:?}; the retrieval trainer runs kind = \"retrieval\"",
            recipe.name,
            recipe.kind.name()
        )));
    };
    let estimator: Estimator = toml::Value::Table(recipe.estimator.clone())
        .try_into()
        .map_err(|e: toml::de::Error| TrainError::Unsupported(format!("estimator: {e}")))?;
    let mode = if t.model.forward == "sign" {
        HeadForward::Sign
    } else {
        HeadForward::Surrogate
    };
    RunDir::refuse_existing(&opts.run_dir, recipe, opts.resume)?;
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
    let run = RunDir::prepare(&opts.run_dir)?;
    let dev = Default::default();

    // Initialise from a baseline (which also fixes the centring vector μ).
    let init_method = Method::from_name(&t.model.init).unwrap_or(Method::Itq);
    let init = bllm_hash::fit(init_method, &data.train, bits, recipe.seed)?;
    let neg_t: Vec<f32> = init.thresholds.iter().map(|v| -v).collect();
    let cfg = HashHeadConfig {
        input_dim: data.train.cols(),
        bits,
        learn_bias: t.model.learn_bias,
    };
    let fresh = || -> Result<HashHead<B>> {
        Ok(with_deterministic_ids(
            cfg.init_from::<B>(&init.projection, &neg_t, &dev)?,
            0x4EAD,
        ))
    };
    let mut head = fresh()?;
    let mut opt = Opt::new(recipe, &head);
    let method_name = format!("learned_{}", t.objective.kind);

    let centred: Vec<f32> = data
        .train
        .as_slice()
        .chunks(data.train.cols())
        .flat_map(|r| r.iter().zip(&init.mean).map(|(a, m)| a - m))
        .collect();
    let xc = tensor::<B>(&FloatMatrix::new(n, data.train.cols(), centred)?);
    let unit = tensor::<B::InnerBackend>(&data.train_unit);
    let probe = n.min(PROBE_ROWS);
    let codes_of = |head: &HashHead<B>| -> Result<(Vec<f32>, PackedCodes)> {
        let z = to_vec(head.valid().logits(xc.clone().inner()));
        let packed = PackedCodes::from_f32_rows(&z[..probe * bits], bits, bits)?;
        Ok((z, packed))
    };

    let mut state = State {
        step: 0,
        rng_state: recipe.seed ^ 0xA1C4,
        watch: LoopState::new(recipe),
        last_probe_codes: codes_of(&head)?.1.as_words().to_vec(),
    };
    let watch = Watch {
        recipe,
        run: &run,
        verbose: opts.verbose,
    };
    (head, opt, state) = start_or_resume(
        recipe,
        &run,
        opts.resume,
        (head, opt, state),
        |s: &State| s.step,
    )?;

    let save = |run: &RunDir,
                name: &str,
                head: &HashHead<B>,
                opt: &Opt<B, HashHead<B>>,
                state: &State|
     -> Result<PathBuf> {
        save_checkpoint(run, name, head, opt, state, |dir| {
            encoder_of(head, &init.mean, &method_name, t.data.normalize)
                .save(&dir.join("encoder"))?;
            Ok(())
        })
    };
    let checkpoint =
        |head: &HashHead<B>, opt: &Opt<B, HashHead<B>>, state: &State, note: &str| -> Result<()> {
            let p = save(
                &run,
                &format!("checkpoint-{}", state.step),
                head,
                opt,
                state,
            )?;
            run.checkpointed(state.step, &p, note, recipe.checkpoint.keep_last)
        };

    let truth_nn = truth(&data.db_unit, &data.queries_unit, &t.eval.k)?;
    let quick_eval = |head: &HashHead<B>| -> Result<f64> {
        let enc = encoder_of(head, &init.mean, &method_name, t.data.normalize);
        let k = if t.eval.k.contains(&10) { 10 } else { kmax };
        let rows = evaluate_encoder(&enc, &data.db_raw, &data.queries_raw, &truth_nn, &[k], &[])?;
        Ok(rows.first().map_or(0.0, |r| r.recall))
    };

    let total = recipe.train.steps;
    let stop_at = opts.max_steps.map_or(total, |m| m.min(total));
    let obj = &t.objective;
    let loss_of = |head: &HashHead<B>,
                   idx: &Tensor<B, 1, Int>,
                   cos: &Tensor<B, 2>,
                   excl: &Tensor<B, 2, Bool>,
                   mode: HeadForward,
                   ctx: &Ctx|
     -> Result<Tensor<B, 1>> {
        let h = HashHead::codes(head.logits(xc.clone()), &estimator, mode, ctx)?;
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
    };

    while state.step < stop_at {
        let step = state.step;
        let ctx = step_ctx(recipe, step, total);
        let mut rng = SplitMix64::new(state.rng_state);
        let idx: Vec<usize> = (0..bs)
            .map(|_| (rng.next_u64() % n as u64) as usize)
            .collect();
        state.rng_state = rng.state();
        let idx_i: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let idx_t = Tensor::<B, 1, Int>::from_data(TensorData::new(idx_i.clone(), [bs]), &dev);
        let anchors = unit.clone().select(
            0,
            Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(idx_i, [bs]), &dev),
        );
        let cos = Tensor::<B, 2>::from_inner(anchors.matmul(unit.clone().transpose()));
        let mut mask = vec![false; bs * n];
        for (a, &i) in idx.iter().enumerate() {
            mask[a * n + i] = true;
        }
        let excl = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [bs, n]), &dev);

        let loss = loss_of(&head, &idx_t, &cos, &excl, mode, &ctx)?;
        let loss_v = f64::from(loss.clone().into_scalar().elem::<f32>());
        let grads = loss.backward();
        let grad_norm = crate::optim::grad_norm(&head, &grads);
        let due = |name: &str| watch.due_before(name, step);
        let mut metrics = serde_json::Map::new();
        let mut after: Vec<(&str, f64, bool)> = Vec::new();
        if due("shadow_cosine") {
            // The gradient the other forward mode would give (sign STE vs smooth surrogate).
            let other = match mode {
                HeadForward::Surrogate => HeadForward::Sign,
                HeadForward::Sign => HeadForward::Surrogate,
            };
            let g_used = head
                .projection
                .val()
                .grad(&grads)
                .unwrap_or_else(|| head.projection.val().inner().zeros_like());
            let gs = loss_of(&head, &idx_t, &cos, &excl, other, &ctx)?.backward();
            let g_other = head
                .projection
                .val()
                .grad(&gs)
                .unwrap_or_else(|| g_used.zeros_like());
            let dot = (g_used.clone() * g_other.clone())
                .sum()
                .into_scalar()
                .elem::<f64>();
            let nu = g_used.square().sum().sqrt().into_scalar().elem::<f64>();
            let no = g_other.square().sum().sqrt().into_scalar().elem::<f64>();
            let c = dot / (nu * no).max(1e-30);
            metrics.insert("shadow_cosine".into(), json!(c));
            after.push(("shadow_cosine", c, false));
        }

        let (lz, gz, verdict) = watch.before_update(&mut state.watch, step, loss_v, grad_norm)?;
        let skip = match verdict {
            Verdict::Stop(stop) => {
                save(&run, &format!("checkpoint-{step}"), &head, &opt, &state)?;
                return Err(stop.into_error(&run, step)?);
            }
            Verdict::Skip => true,
            Verdict::Update => false,
        };
        let lr = learning_rate(&recipe.schedule, recipe.optimizer.lr, step, total);
        if skip {
            watch.skipped(&mut state.watch, step, loss_v)?;
        } else {
            head = clip_and_step(recipe, &mut opt, head, grads, grad_norm, lr);
        }
        state.step += 1;
        if let Some(p) = opts.progress.as_mut() {
            p(state.step, total, loss_v);
        }
        state.watch.push_loss(loss_v, recipe.train.log_every);

        let done = state.step;
        let every = |name: &str| watch.due_after(name, done);
        let code_monitors = ["flip_ratio", "bit_balance", "pass_through", "quant_error"];
        if code_monitors.iter().any(|m| every(m)) {
            let (z, packed) = codes_of(&head)?;
            if every("flip_ratio") {
                let flips: u32 = packed
                    .as_words()
                    .iter()
                    .zip(&state.last_probe_codes)
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                let v = f64::from(flips) / (probe * bits).max(1) as f64;
                metrics.insert("flip_ratio".into(), json!(v));
                after.push(("flip_ratio", v, true));
                state.last_probe_codes = packed.as_words().to_vec();
            }
            if every("bit_balance") {
                let mut ones = vec![0usize; bits];
                for row in z.chunks(bits) {
                    for (o, v) in ones.iter_mut().zip(row) {
                        *o += usize::from(*v >= 0.0);
                    }
                }
                let dev_of = |o: &usize| (*o as f64 / n as f64 - 0.5).abs();
                let mean = ones.iter().map(dev_of).sum::<f64>() / bits as f64;
                let worst = ones.iter().map(dev_of).fold(0.0, f64::max);
                metrics.insert("bit_balance".into(), json!(mean));
                metrics.insert("bit_balance_worst".into(), json!(worst));
                after.push(("bit_balance", worst, true));
            }
            if every("pass_through") || every("quant_error") {
                let zt =
                    Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(z, [n, bits]), &dev);
                let s = bllm_ste::ops::mean_abs(zt.clone()).clamp_min(1e-12);
                let u = zt / s;
                let ctx_now = Ctx::at(state.step as f64 / total as f64);
                if every("pass_through") {
                    let v = estimator.pass_through_fraction(u.clone(), &ctx_now);
                    metrics.insert("pass_through".into(), json!(v));
                    after.push(("pass_through", v, false));
                }
                if every("quant_error") {
                    // How far the training codes are from the hard codes they stand for.
                    let h =
                        HashHead::<B::InnerBackend>::codes(u.clone(), &estimator, mode, &ctx_now)?;
                    let q = bllm_ste::ops::sign_pm1(u);
                    let num = (h - q.clone())
                        .square()
                        .sum()
                        .sqrt()
                        .into_scalar()
                        .elem::<f64>();
                    let den = q.square().sum().sqrt().into_scalar().elem::<f64>();
                    let v = num / den.max(1e-12);
                    metrics.insert("quant_error".into(), json!(v));
                    after.push(("quant_error", v, true));
                }
            }
        }
        if let Some(stop) = watch.after_update(&mut state.watch, state.step, &after)? {
            save(
                &run,
                &format!("checkpoint-{}", state.step),
                &head,
                &opt,
                &state,
            )?;
            return Err(stop.into_error(&run, state.step)?);
        }
        state.watch.accumulate(&metrics, &SUMMARISED);
        if state.step % recipe.train.log_every == 0 || !metrics.is_empty() {
            let mut line = json!({"step": state.step, "split": "train", "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "loss_z": lz, "grad_norm_z": gz});
            if let Some(obj) = line.as_object_mut() {
                obj.extend(metrics);
            }
            run.append("metrics.jsonl", &line)?;
        }
        if recipe.eval.every > 0 && state.step % recipe.eval.every == 0 && state.step < total {
            let r = quick_eval(&head)?;
            run.append(
                "metrics.jsonl",
                &json!({"step": state.step, "split": "eval", "recall": r}),
            )?;
            if opts.verbose {
                eprintln!(
                    "step {}/{total}: train loss {loss_v:.4}, query Hamming recall {r:.4}",
                    state.step
                );
            }
        }
        if recipe.checkpoint.every > 0
            && state.step % recipe.checkpoint.every == 0
            && state.step < total
        {
            checkpoint(&head, &opt, &state, "")?;
        }
    }

    let complete = state.step >= total;
    let mut summary = RetrievalSummary {
        name: recipe.name.clone(),
        steps: state.step,
        complete,
        train_loss: state.watch.recent_loss(),
        method: method_name.clone(),
        bits,
        results: Vec::new(),
        skipped_steps: state.watch.skipped_steps,
        monitor_events: state.watch.monitor_events,
        monitor_means: state.watch.means(),
    };
    if !complete {
        checkpoint(&head, &opt, &state, " (stopped early by max_steps)")?;
        return Ok(summary);
    }
    save(&run, "final", &head, &opt, &state)?;

    // Evaluation: the head, then every baseline at every budget, all on the raw inputs through
    // the same encoder code path as the export.
    let enc = encoder_of(&head, &init.mean, &method_name, t.data.normalize);
    let mut rows = evaluate_encoder(
        &enc,
        &data.db_raw,
        &data.queries_raw,
        &truth_nn,
        &t.eval.k,
        &t.eval.rerank,
    )?;
    let budgets = if t.eval.bits.is_empty() {
        vec![bits]
    } else {
        t.eval.bits.clone()
    };
    for &b in &budgets {
        for m in &t.eval.methods {
            let method = Method::from_name(m)?;
            let mut base = match bllm_hash::fit(method, &data.train, b, recipe.seed) {
                Ok(e) => e,
                Err(bllm_hash::HashError::InvalidArgument(why)) => {
                    if opts.verbose {
                        eprintln!("skipping baseline {m} at {b} bits: {why}");
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            base.normalize = t.data.normalize;
            rows.extend(evaluate_encoder(
                &base,
                &data.db_raw,
                &data.queries_raw,
                &truth_nn,
                &t.eval.k,
                &t.eval.rerank,
            )?);
        }
    }
    let md = markdown(&rows);
    run.write_json("results.json", &rows)?;
    run.write_file("results.md", md.as_bytes())?;
    summary.results = rows;

    // Export: the encoder and the database codes it makes.
    let export = run.path.join("export");
    enc.save(&export.join("encoder"))?;
    let codes = enc.encode(&data.db_raw)?;
    let info = ManifestInfo {
        source: Some(data.source.clone()),
        encoder: Some(format!("{} (export/encoder)", enc.method)),
        recipe: Some(recipe.name.clone()),
        tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
    };
    bllm_codes::io::write_codes_dir(&export.join("codes"), &codes, info)?;
    if recipe.export.faiss {
        bllm_codes::io::write_faiss_binary_flat(&export.join("codes").join("faiss.index"), &codes)?;
    }
    run.append(
        "metrics.jsonl",
        &json!({"step": state.step, "split": "eval", "recall": summary.recall(&method_name, bits, 10, 0)}),
    )?;
    run.write_json("summary.json", &summary)?;
    Ok(summary)
}
