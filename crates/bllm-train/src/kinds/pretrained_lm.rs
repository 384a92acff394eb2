//! `kind = "lm"` with `model.pretrained`: quantisation-aware training of a pretrained Llama
//! (SmolLM2) whose block projections become 1-bit or BitNet b1.58, initialised from the float
//! weights (XNOR's `sign(W)·mean|W|` or OneBit's SVID `sign(W) ⊙ g hᵀ`), trained on the
//! model's own tokens of a bundled corpus, with optional distillation from the frozen float
//! checkpoint (`[distill]`).
//!
//! What trains: the quantised projections only (latent weights, scales / value vectors, SubLN
//! gains); embeddings, norms, the head and float projections are frozen
//! (`Llama::freeze_float`), so the optimizer state covers the binary parts alone.
//!
//! Batches are `train.batch_size` windows of `model.context + 1` token ids at seeded random
//! offsets of the training text's tokens. The loss is next-token cross-entropy, or with
//! `[distill]` `ce · CE + kl · T² · KL(p_t,T ‖ p_s,T) + hidden · mean_l ‖ĥ_s,l − ĥ_t,l‖²/d`
//! (`ĥ` each layer's output L2-normalised per token). The teacher runs on the inner (no
//! autodiff) backend each step: caching its logits would take `vocab × 4` bytes per token
//! (192 KiB for SmolLM2's 49,152), far more than recomputing them costs.
//!
//! Evaluation is `bllm_models::perplexity` on the held-out text (consecutive windows of
//! `model.context` tokens) — the same numbers `bllm lm eval` (and its `--ptq` rows) prints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bllm_models::lm::perplexity;
use bllm_models::{Llama, TextTokenizer};
use bllm_nn::{ProjKind, QuantRef};
use bllm_recipe::{DistillSection, LmTask, Recipe};
use bllm_ste::Ctx;
use bllm_ste::softmax::{log_softmax, softmax};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lm::{
    LmSummary, WindowBatch, binary_options, export_layers, lm_loss, load_corpus, precision_label,
};
use crate::data::sample;
use crate::rundir::RunDir;
use crate::sites::Site;
use crate::trainer::{Kind, Loss, Metrics, Outcome, estimator, scalar, train};
use crate::{Result, RunOptions, TrainError};

/// What a pretrained LM run adds to [`LmSummary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainedReport {
    /// `model.pretrained`.
    pub model: String,
    /// Held-out perplexity per token of the student.
    pub eval_token_perplexity: f64,
    /// The frozen float model on the same held-out tokens: perplexity per token.
    pub teacher_perplexity: f64,
    /// … and bits per byte.
    pub teacher_bpb: f64,
    /// Tokens of the held-out text scored.
    pub eval_tokens: usize,
    /// Tokens of the training text (windows are drawn from them).
    pub train_tokens: usize,
    /// Tokens seen by training: steps × batch × context.
    pub tokens_trained: usize,
    /// Block projections quantised, 1-bit and ternary.
    pub binary_projections: usize,
    /// … ternary (BitNet b1.58).
    pub ternary_projections: usize,
    /// Whether the loss had a teacher term (`distill.kl` or `distill.hidden` > 0).
    pub distilled: bool,
    /// The `data.eval_texts` corpora: student and teacher on each held-out text.
    pub also: Vec<HeldOut>,
    /// Wall seconds of this process from loading to the end (a resumed run counts only its
    /// own part).
    pub wall_seconds: f64,
}

/// A student and its teacher on one more held-out text (`data.eval_texts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// The corpus.
    pub path: String,
    /// Bytes scored.
    pub bytes: usize,
    /// Student: bits per byte.
    pub bpb: f64,
    /// Student: perplexity per token.
    pub perplexity: f64,
    /// Teacher: bits per byte.
    pub teacher_bpb: f64,
    /// Teacher: perplexity per token.
    pub teacher_perplexity: f64,
}

fn task(recipe: &Recipe) -> Result<&LmTask> {
    recipe
        .lm()
        .ok_or_else(|| crate::trainer::wrong_kind(recipe, "lm"))
}

/// The precision of projection `name` (checkpoint name: `q_proj`, …, `down_proj`) of layer
/// `layer` under the recipe's `[model.projections]` and `model.quantize_layers`.
pub fn projection_kind(t: &LmTask, layer: usize, name: &str) -> ProjKind {
    let in_range = t
        .model
        .quantize_layers
        .is_none_or(|(a, b)| (a..b).contains(&layer));
    if !in_range {
        return ProjKind::Float;
    }
    let short = match name {
        "q_proj" => "q",
        "k_proj" => "k",
        "v_proj" => "v",
        "o_proj" => "o",
        "gate_proj" => "gate",
        "up_proj" => "up",
        _ => "down",
    };
    ProjKind::parse(t.model.projection(short)).unwrap_or_default()
}

/// `kind = "lm"` on a pretrained Llama.
struct PretrainedLm<'r, B: AutodiffBackend> {
    recipe: &'r Recipe,
    task: &'r LmTask,
    path: PathBuf,
    tokenizer: TextTokenizer,
    train_ids: Vec<u32>,
    valid_text: String,
    /// `data.eval_texts`: (path, held-out text).
    also: Vec<(String, String)>,
    /// The frozen float model, kept when `[distill]` has a teacher term (`kl` or `hidden`).
    teacher: Option<Llama<B::InnerBackend>>,
    distill: Option<DistillSection>,
    /// Each block projection's precision, in `Llama::projections` order (from the recipe).
    kinds: Vec<ProjKind>,
    /// The indices into `kinds` of the monitors' sites ([`watched_of`]).
    watched: Vec<usize>,
    unigram_bpb: f64,
    started: Instant,
}

impl<B: AutodiffBackend> PretrainedLm<'_, B> {
    fn context(&self) -> usize {
        self.task.model.context
    }

    /// The student: the checkpoint with its projections quantised from the float weights and
    /// every float part frozen.
    fn student(&self, device: &B::Device) -> Result<Llama<B>> {
        let m = Llama::<B>::load(&self.path, device)?.model;
        let opts = binary_options(&self.task.model, estimator(self.recipe)?);
        Ok(m.quantized(|i, n| projection_kind(self.task, i, n), &opts)?
            .freeze_float())
    }

    fn loss_of(
        &self,
        model: &Llama<B>,
        x: &Tensor<B, 2, Int>,
        y: &Tensor<B, 1, Int>,
        ctx: &Ctx,
    ) -> Loss<B, ()> {
        let (Some(d), Some(teacher)) = (&self.distill, &self.teacher) else {
            // No teacher term (no [distill], or only its `ce`): next-token QAT.
            let ce = lm_loss(model.forward(x.clone(), None, ctx), y.clone());
            let w = self.distill.as_ref().map_or(1.0, |d| d.ce);
            return Loss::new(if w == 1.0 { ce } else { ce.mul_scalar(w) });
        };
        let eval = Ctx::default().for_eval();
        let xi = x.clone().inner();
        let (t_hidden, t_states) = if d.hidden > 0.0 {
            teacher.forward_states(xi, &eval)
        } else {
            (teacher.forward_hidden(xi, None, &eval), Vec::new())
        };
        let t_logits = teacher.logits(t_hidden, &eval);
        let (s_hidden, s_states) = if d.hidden > 0.0 {
            model.forward_states(x.clone(), ctx)
        } else {
            (model.forward_hidden(x.clone(), None, ctx), Vec::new())
        };
        let logits = model.logits(s_hidden, ctx);
        let [n, t, v] = logits.dims();
        let mut parts = Vec::new();
        let mut total: Option<Tensor<B, 1>> = None;
        let mut add = |name: &'static str, w: f64, term: Tensor<B, 1>| {
            parts.push((name, term.clone()));
            if w > 0.0 {
                let term = term.mul_scalar(w);
                total = Some(match total.take() {
                    Some(s) => s + term,
                    None => term,
                });
            }
        };
        if d.ce > 0.0 {
            add("ce", d.ce, lm_loss(logits.clone(), y.clone()));
        }
        if d.kl > 0.0 {
            let temp = d.temperature;
            let flat = logits.reshape([n * t, v]);
            let tl = t_logits.reshape([n * t, v]).div_scalar(temp);
            let tp = softmax(tl.clone(), 1);
            let tlogp = log_softmax(tl, 1);
            // KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s); the teacher terms are constants.
            let t_ent = (tp.clone() * tlogp).sum_dim(1).mean();
            let p = Tensor::<B, 2>::from_inner(tp);
            let cross = (p * log_softmax(flat.div_scalar(temp), 1))
                .sum_dim(1)
                .mean()
                .neg();
            let kl = cross + Tensor::<B, 1>::from_inner(t_ent);
            add("kl", d.kl * temp * temp, kl);
        }
        if d.hidden > 0.0 {
            let layers = s_states.len();
            let mut sum: Option<Tensor<B, 1>> = None;
            for (s, t) in s_states.into_iter().zip(t_states) {
                let t = Tensor::<B, 2>::from_inner(unit(t));
                // ‖ĥ_s − ĥ_t‖² per token (≤ 4), averaged over tokens.
                let e = (unit(s) - t).square().sum_dim(1).mean();
                sum = Some(match sum {
                    Some(a) => a + e,
                    None => e,
                });
            }
            if let Some(sum) = sum {
                add("hidden", d.hidden, sum.div_scalar(layers as f64));
            }
        }
        let total = total.expect("validation: some distill weight > 0");
        Loss {
            total,
            reported: None,
            parts,
            stats: (),
        }
    }
}

impl<B: AutodiffBackend> Kind<B> for PretrainedLm<'_, B> {
    type Model = Llama<B>;
    type Batch = WindowBatch<B>;
    type Stats = ();
    type Summary = LmSummary;

    fn name(&self) -> &'static str {
        "lm"
    }

    fn model(&self, device: &B::Device) -> Result<Llama<B>> {
        self.student(device)
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> Result<Self::Batch> {
        Ok(token_windows(
            &self.train_ids,
            self.context(),
            self.recipe.train.batch_size,
            order,
        ))
    }

    fn shard(&self, (x, y): &Self::Batch, index: usize, parts: usize) -> Result<Self::Batch> {
        Ok((
            crate::trainer::rows(x, index, parts)?,
            crate::trainer::rows(y, index, parts)?,
        ))
    }

    fn loss(&self, model: &Llama<B>, (x, y): &Self::Batch, ctx: &Ctx) -> Result<Loss<B, ()>> {
        Ok(self.loss_of(model, x, y, ctx))
    }

    fn sites<'a>(&'a self, model: &'a Llama<B>) -> Vec<Site<'a, B>> {
        let mut projs: Vec<_> = model.projections().into_iter().map(Some).collect();
        self.watched
            .iter()
            .filter_map(|&i| projs[i].take())
            .map(|(name, p)| Site::Weights {
                name,
                layer: QuantRef::Proj(p),
            })
            .collect()
    }

    fn perturbed_loss(
        &self,
        model: &Llama<B::InnerBackend>,
        (x, y): &Self::Batch,
        ctx: &Ctx,
        site: usize,
        w: Tensor<B::InnerBackend, 2>,
    ) -> Option<f64> {
        let index = *self.watched.get(site)?;
        let mut m = model.clone();
        m.projections_mut()[index].set_latent(w);
        let logits = m.forward(x.clone().inner(), None, ctx);
        Some(scalar(lm_loss(logits, y.clone().inner())))
    }

    fn evaluate(&self, model: &Llama<B>, _step: usize, _total: usize) -> Result<Metrics> {
        let p = perplexity(
            &model.valid(),
            &self.tokenizer,
            &self.valid_text,
            self.context(),
            &Default::default(),
            |_, _| {},
        )?;
        Ok(Metrics::from([
            ("loss".to_owned(), p.mean_nll),
            ("bpb".to_owned(), p.bits_per_byte),
            ("perplexity".to_owned(), p.perplexity),
            ("tokens".to_owned(), p.predicted as f64),
        ]))
    }

    fn checkpoint_files(&self, _model: &Llama<B>, _dir: &Path) -> Result<()> {
        // `model.mpk` holds every parameter; a second safetensors copy of a 135 M-parameter
        // model would double each checkpoint (the export writes the 1-bit layers).
        Ok(())
    }

    fn export(&self, model: &Llama<B>, dir: &Path) -> Result<()> {
        let layers = model
            .projections()
            .into_iter()
            .filter(|(_, p)| p.kind() != ProjKind::Float)
            .map(|(n, p)| (n, QuantRef::Proj(p)))
            .collect();
        export_layers(layers, self.recipe, "Llama", dir)
    }

    fn on_start(&self, run: &RunDir) -> Result<()> {
        let d = &self.task.data;
        run.write_json(
            "data.json",
            &json!({"path": d.path, "model": self.task.model.pretrained, "train_tokens": self.train_ids.len(), "eval_bytes": self.valid_text.len()}),
        )
    }

    fn finish(
        &self,
        model: &Llama<B>,
        run: &RunDir,
        o: &Outcome,
        final_dir: Option<&Path>,
    ) -> Result<LmSummary> {
        let get = |k: &str| o.eval.get(k).copied().unwrap_or(f64::NAN);
        let sum = bllm_nn::summary(model);
        if final_dir.is_some() {
            run.write_file("summary.txt", sum.to_string().as_bytes())?;
        }
        let device = Default::default();
        let loaded;
        let teacher = match &self.teacher {
            Some(t) => t,
            None => {
                loaded = Llama::<B::InnerBackend>::load(&self.path, &device)?.model;
                &loaded
            }
        };
        let ppl = |m: &Llama<B::InnerBackend>, text: &str| {
            perplexity(m, &self.tokenizer, text, self.context(), &device, |_, _| {})
        };
        let t_main = ppl(teacher, &self.valid_text)?;
        let student = model.valid();
        let mut also = Vec::with_capacity(self.also.len());
        for (path, text) in &self.also {
            let (s, t) = (ppl(&student, text)?, ppl(teacher, text)?);
            also.push(HeldOut {
                path: path.clone(),
                bytes: text.len(),
                bpb: s.bits_per_byte,
                perplexity: s.perplexity,
                teacher_bpb: t.bits_per_byte,
                teacher_perplexity: t.perplexity,
            });
        }
        let teacher = t_main;
        let kinds = &self.kinds;
        let eval_bpb = get("bpb");
        let unigram_bpb = self.unigram_bpb;
        Ok(LmSummary {
            name: self.recipe.name.clone(),
            steps: o.steps,
            complete: o.complete,
            estimator: precision_label(kinds, &estimator(self.recipe)?),
            train_loss: o.train_loss,
            eval_loss: get("loss"),
            eval_bpb,
            eval_perplexity: get("loss").exp(),
            unigram_bpb,
            diverged: !eval_bpb.is_finite() || eval_bpb >= unigram_bpb,
            skipped_steps: o.skipped_steps,
            monitor_events: o.monitor_events,
            monitor_means: o.monitor_means.clone(),
            model_bytes: sum.total_bytes(),
            model_float32_bytes: sum.float32_equivalent_bytes(),
            pretrained: Some(PretrainedReport {
                model: self.path.display().to_string(),
                eval_token_perplexity: get("perplexity"),
                teacher_perplexity: teacher.perplexity,
                teacher_bpb: teacher.bits_per_byte,
                eval_tokens: teacher.predicted,
                train_tokens: self.train_ids.len(),
                tokens_trained: o.steps * self.recipe.train.batch_size * self.context(),
                binary_projections: kinds.iter().filter(|k| **k == ProjKind::Binary).count(),
                ternary_projections: kinds.iter().filter(|k| **k == ProjKind::Bitnet).count(),
                distilled: self.teacher.is_some(),
                also,
                wall_seconds: self.started.elapsed().as_secs_f64(),
            }),
        })
    }
}

/// `batch` windows of `context + 1` token ids of `ids` at offsets drawn from `order`: the
/// inputs `[batch, context]` and the next-token targets `[batch · context]`.
pub(crate) fn token_windows<B: Backend>(
    ids: &[u32],
    context: usize,
    batch: usize,
    order: &mut ChaCha8Rng,
) -> WindowBatch<B> {
    let starts = sample(order, ids.len() - context, batch);
    token_windows_at(ids, context, &starts)
}

/// The windows of `context + 1` token ids of `ids` at `starts` ([`token_windows`]).
pub(crate) fn token_windows_at<B: Backend>(
    ids: &[u32],
    context: usize,
    starts: &[usize],
) -> WindowBatch<B> {
    let c = context;
    let (mut x, mut y) = (
        Vec::with_capacity(starts.len() * c),
        Vec::with_capacity(starts.len() * c),
    );
    for &s in starts {
        let w = &ids[s..s + c + 1];
        x.extend(w[..c].iter().map(|&i| i64::from(i)));
        y.extend(w[1..].iter().map(|&i| i64::from(i)));
    }
    let device = Default::default();
    (
        Tensor::from_data(TensorData::new(x, [starts.len(), c]), &device),
        Tensor::from_data(TensorData::new(y, [starts.len() * c]), &device),
    )
}

/// `bytes` (the `part` of corpus `path`) as UTF-8 text; a byte cut (`train_bytes` /
/// `eval_bytes`) that split the last character drops it.
pub(crate) fn corpus_text(bytes: &[u8], part: &str, path: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).or_else(|e| {
        let valid = e.utf8_error().valid_up_to();
        if bytes.len() - valid < 4 {
            Ok(String::from_utf8_lossy(&bytes[..valid]).into_owned())
        } else {
            Err(TrainError::Unsupported(format!(
                "data: {path}: the {part} text is not UTF-8 (byte {valid})"
            )))
        }
    })
}

/// Each row of `h` `[n, d]` divided by its L2 norm.
fn unit<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = h.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    h / norm
}

/// The indices (into `Llama::projections`, 7 per layer) of the projections the weight monitors
/// watch: every quantised projection of `layers` layers spread evenly over the layers that have
/// any (`kinds` = each projection's precision).
pub(crate) fn watched_of(kinds: &[ProjKind], layers: usize) -> Vec<usize> {
    let quantised_layers: Vec<usize> = (0..kinds.len() / 7)
        .filter(|&l| {
            kinds[7 * l..7 * l + 7]
                .iter()
                .any(|k| *k != ProjKind::Float)
        })
        .collect();
    let n = layers.min(quantised_layers.len());
    (0..n)
        .map(|k| {
            let pos = if n == 1 {
                0
            } else {
                k * (quantised_layers.len() - 1) / (n - 1)
            };
            quantised_layers[pos]
        })
        .flat_map(|l| 7 * l..7 * l + 7)
        .filter(|&i| kinds[i] != ProjKind::Float)
        .collect()
}

/// Runs (or resumes) a pretrained `kind = "lm"` recipe (`model.pretrained` set).
pub(crate) fn run_pretrained_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
) -> Result<LmSummary> {
    let started = Instant::now();
    let t = task(recipe)?;
    let path = PathBuf::from(t.model.pretrained.as_deref().unwrap_or_default());
    opts.refuse_existing(recipe)?;
    let corpus = load_corpus(&t.data, 1)?;
    let device = Default::default();
    // The teacher (and the tokenizer, and the config checks) from the checkpoint's own files.
    let loaded = Llama::<B::InnerBackend>::load(&path, &device)?;
    let n_layers = loaded.model.layers.len();
    if let Some((a, b)) = t.model.quantize_layers {
        if b > n_layers {
            return Err(TrainError::Unsupported(format!(
                "recipe {:?}: model.quantize_layers = [{a}, {b}]: {} has {n_layers} layers",
                recipe.name,
                path.display()
            )));
        }
    }
    let kinds: Vec<ProjKind> = (0..n_layers)
        .flat_map(|l| bllm_models::LLAMA_PROJECTIONS.map(|n| projection_kind(t, l, n)))
        .collect();
    if kinds.iter().all(|k| *k == ProjKind::Float) {
        return Err(TrainError::Unsupported(format!(
            "recipe {:?}: [model.projections] quantises no projection of {} (only the quantised \
             projections train; `bllm lm eval` scores the float model)",
            recipe.name,
            path.display()
        )));
    }
    let max = loaded.model.config.max_position_embeddings;
    if t.model.context > max {
        return Err(TrainError::Unsupported(format!(
            "recipe {:?}: model.context = {}: {} has max_position_embeddings {max}",
            recipe.name,
            t.model.context,
            path.display()
        )));
    }
    let text = corpus_text;
    let train_text = text(&corpus.train, "training", &t.data.path)?;
    let valid_text = text(&corpus.valid, "held-out", &t.data.path)?;
    let mut also = Vec::with_capacity(t.eval_texts.len());
    for p in &t.eval_texts {
        let d = bllm_recipe::TextSection {
            path: p.clone(),
            ..t.data.clone()
        };
        let c = load_corpus(&d, 1)?;
        also.push((p.clone(), text(&c.valid, "held-out", p)?));
    }
    let train_ids = loaded.tokenizer.encode(&train_text, false)?;
    let c = t.model.context;
    let valid_tokens = loaded.tokenizer.encode(&valid_text, false)?.len();
    for (part, n) in [
        ("training (data.train_bytes)", train_ids.len()),
        ("held-out (data.eval_bytes)", valid_tokens),
    ] {
        if n < c + 1 {
            return Err(TrainError::Unsupported(format!(
                "data.path {}: the {part} text has {n} tokens, fewer than model.context + 1 ({})",
                t.data.path,
                c + 1
            )));
        }
    }
    let kind = PretrainedLm::<B> {
        recipe,
        task: t,
        path,
        tokenizer: loaded.tokenizer,
        train_ids,
        valid_text,
        also,
        teacher: t
            .distill
            .as_ref()
            .filter(|d| d.kl > 0.0 || d.hidden > 0.0)
            .map(|_| loaded.model),
        distill: t.distill.clone(),
        watched: watched_of(&kinds, t.model.monitor_layers),
        kinds,
        unigram_bpb: corpus.unigram_bits_per_byte(),
        started,
    };
    train::<B, _>(recipe, opts, kind)
}
