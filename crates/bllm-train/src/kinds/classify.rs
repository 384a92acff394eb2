//! `kind = "classify"`: a binary MLP on a synthetic Gaussian-cluster task. Small and fast: the
//! trainer's test bed and the template for the other kinds.

use std::path::Path;

use bllm_nn::{BinaryLinear, BinaryLinearConfig, QuantRef, kaiming_uniform};
use bllm_recipe::{DataSection, ModelSection, Recipe, Task};
use bllm_ste::{Ctx, Estimator};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{Clusters, normal, sample};
use crate::rundir::RunDir;
use crate::sites::Site;
use crate::trainer::{Inner, Kind, Loss, Metrics, Outcome, estimator, scalar, train, wrong_kind};
use crate::{Result, RunOptions, TrainError};

/// The classify model: a stack of layers, each a float `Linear` or a `BinaryLinear`.
#[derive(Module, Debug)]
pub struct ClassifyMlp<B: Backend> {
    /// Float layers (first and/or last, when the recipe keeps them in float).
    pub float_layers: Vec<Linear<B>>,
    /// Binary layers.
    pub binary_layers: Vec<BinaryLinear<B>>,
    /// Layer order: `(is_float, index into its vector)`.
    pub plan: Vec<(bool, usize)>,
    /// Binarize hidden activations with `act`.
    pub binary_activations: bool,
    /// Estimator for hidden activations.
    pub act: Estimator,
}

impl<B: Backend> ClassifyMlp<B> {
    /// Builds the model of `recipe` with weights from its seed.
    pub fn new(recipe: &Recipe, estimator: &Estimator, device: &B::Device) -> Result<Self> {
        let (data_s, msec) = sections(recipe)?;
        let mut dims = vec![data_s.dim];
        dims.extend(&msec.hidden);
        dims.push(data_s.classes);
        let n = dims.len() - 1;
        let scaling = crate::trainer::scaling_of(&msec.scaling, msec.learnable_scale);
        let (mut float_layers, mut binary_layers, mut plan) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let seed = recipe.seed.wrapping_mul(1000).wrapping_add(i as u64);
            let float = (i == 0 && msec.float_first) || (i == n - 1 && msec.float_last);
            if float {
                plan.push((true, float_layers.len()));
                float_layers.push(Linear {
                    weight: Param::from_tensor(kaiming_uniform::<B>(
                        dims[i],
                        dims[i + 1],
                        seed,
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::zeros([dims[i + 1]], device))),
                });
            } else {
                plan.push((false, binary_layers.len()));
                let cfg = BinaryLinearConfig::new(dims[i], dims[i + 1])
                    .with_weight(estimator.clone())
                    .with_scaling(scaling.clone());
                binary_layers.push(cfg.init::<B>(device, seed)?);
            }
        }
        let model = Self {
            float_layers,
            binary_layers,
            plan,
            binary_activations: msec.binary_activations,
            act: estimator.clone(),
        };
        Ok(bllm_nn::with_deterministic_ids(model, 0))
    }

    /// Logits `[batch, classes]` for inputs `[batch, dim]`.
    pub fn forward(&self, x: Tensor<B, 2>, ctx: &Ctx) -> Tensor<B, 2> {
        let mut h = x;
        let last = self.plan.len().saturating_sub(1);
        for (i, &(float, j)) in self.plan.iter().enumerate() {
            let layer_ctx = ctx.fork(i as u64);
            h = if float {
                self.float_layers[j].forward(h)
            } else {
                self.binary_layers[j].forward(h, &layer_ctx)
            };
            if i < last {
                h = if self.binary_activations {
                    self.act.apply(h, &layer_ctx.fork(99))
                } else {
                    burn::tensor::activation::relu(h)
                };
            }
        }
        h
    }
}

impl<B: Backend> bllm_nn::Summarize for ClassifyMlp<B> {
    fn summarize(&self, name: &str, out: &mut Vec<bllm_nn::LayerSummary>) {
        for (i, &(float, j)) in self.plan.iter().enumerate() {
            let n = format!("{name}layer{i}");
            if float {
                self.float_layers[j].summarize(&n, out)
            } else {
                self.binary_layers[j].summarize(&n, out)
            }
        }
    }
}

/// What a finished run reports (also written as `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Recipe name.
    pub name: String,
    /// Steps completed.
    pub steps: usize,
    /// Whether the run reached `train.steps`.
    pub complete: bool,
    /// Mean training loss over the last logged window.
    pub train_loss: f64,
    /// Held-out loss.
    pub eval_loss: f64,
    /// Held-out accuracy.
    pub eval_accuracy: f64,
    /// Optimizer steps skipped by monitors.
    pub skipped_steps: usize,
    /// Monitor firings that warned, skipped or stopped (`log`-only firings are in
    /// `events.jsonl` but not counted here).
    pub monitor_events: usize,
    /// Mean of each monitor's logged value over the run (`shadow_cosine`, `fd_sign_agreement`,
    /// `fd_spearman`, `flip_ratio`, `pass_through`, `quant_error`).
    pub monitor_means: std::collections::BTreeMap<String, f64>,
    /// Model storage: packed bytes / float32-equivalent bytes.
    pub model_bytes: usize,
    /// float32-equivalent bytes of the same model.
    pub model_float32_bytes: usize,
}

/// `[data]` and `[model]` of a classify recipe.
fn sections(recipe: &Recipe) -> Result<(&DataSection, &ModelSection)> {
    match &recipe.task {
        Task::Classify { data, model } => Ok((data, model)),
        _ => Err(wrong_kind(recipe, "classify")),
    }
}

/// Synthetic Gaussian clusters (from the [`crate::rng::DATA`] stream): `classes` centres
/// `N(0, I)` in `dim` dimensions, points at `noise` spread; (training, held-out) sets.
pub(crate) fn make_data(recipe: &Recipe, d: &DataSection) -> (Clusters, Clusters) {
    let mut rng = crate::rng::stream(recipe.seed, crate::rng::DATA, 0);
    let centres: Vec<f64> = (0..d.classes * d.dim).map(|_| normal(&mut rng)).collect();
    let train = Clusters::draw(&mut rng, &centres, d.dim, d.noise, d.train_size);
    let eval = Clusters::draw(&mut rng, &centres, d.dim, d.noise, d.eval_size);
    (train, eval)
}

/// `kind = "classify"`.
struct Classify<'r> {
    recipe: &'r Recipe,
    estimator: Estimator,
    train: Clusters,
    eval: Clusters,
}

impl<B: AutodiffBackend> Kind<B> for Classify<'_> {
    type Model = ClassifyMlp<B>;
    type Batch = (Tensor<B, 2>, Tensor<B, 1, Int>);
    type Stats = ();
    type Summary = RunSummary;

    fn name(&self) -> &'static str {
        "classify"
    }

    fn model(&self, device: &B::Device) -> Result<Self::Model> {
        ClassifyMlp::new(self.recipe, &self.estimator, device)
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> Result<Self::Batch> {
        let idx = sample(order, self.train.y.len(), self.recipe.train.batch_size);
        Ok(self.train.batch::<B>(&idx, &Default::default()))
    }

    fn shard(&self, (x, y): &Self::Batch, index: usize, parts: usize) -> Result<Self::Batch> {
        Ok((
            crate::trainer::rows(x, index, parts)?,
            crate::trainer::rows(y, index, parts)?,
        ))
    }

    fn loss(&self, model: &Self::Model, (x, y): &Self::Batch, ctx: &Ctx) -> Result<Loss<B, ()>> {
        let logits = model.forward(x.clone(), ctx);
        Ok(Loss::new(bllm_ste::softmax::cross_entropy(
            logits,
            y.clone(),
        )))
    }

    fn sites<'a>(&'a self, model: &'a Self::Model) -> Vec<Site<'a, B>> {
        model
            .binary_layers
            .iter()
            .enumerate()
            .map(|(i, l)| Site::Weights {
                name: format!("binary{i}"),
                layer: QuantRef::Table(l),
            })
            .collect()
    }

    fn perturbed_loss(
        &self,
        model: &Inner<B, Self>,
        (x, y): &Self::Batch,
        ctx: &Ctx,
        site: usize,
        w: Tensor<B::InnerBackend, 2>,
    ) -> Option<f64> {
        let mut m = model.clone();
        m.binary_layers.get_mut(site)?.weight = Param::from_tensor(w);
        let logits = m.forward(x.clone().inner(), ctx);
        let loss = bllm_ste::softmax::cross_entropy(logits, y.clone().inner());
        Some(scalar(loss))
    }

    fn evaluate(&self, model: &Self::Model, step: usize, total: usize) -> Result<Metrics> {
        let m = model.valid();
        let ctx = Ctx::at(step as f64 / total as f64)
            .with_seed(self.recipe.seed ^ 0xE7A1)
            .for_eval();
        let idx: Vec<usize> = (0..self.eval.y.len()).collect();
        let (x, y) = self
            .eval
            .batch::<B::InnerBackend>(&idx, &Default::default());
        let logits = m.forward(x, &ctx);
        let loss = bllm_ste::softmax::cross_entropy(logits.clone(), y.clone());
        let pred = logits.argmax(1).squeeze_dim::<1>(1);
        let correct: f32 = pred.equal(y).float().sum().into_scalar().elem();
        Ok(Metrics::from([
            ("loss".to_owned(), scalar(loss)),
            (
                "accuracy".to_owned(),
                f64::from(correct) / idx.len().max(1) as f64,
            ),
        ]))
    }

    fn export(&self, model: &Self::Model, dir: &Path) -> Result<()> {
        export_weights(model, self.recipe, dir)
    }

    fn finish(
        &self,
        model: &Self::Model,
        _run: &RunDir,
        o: &Outcome,
        _final_dir: Option<&Path>,
    ) -> Result<RunSummary> {
        let sum = bllm_nn::summary(model);
        let get = |k: &str| o.eval.get(k).copied().unwrap_or(f64::NAN);
        Ok(RunSummary {
            name: self.recipe.name.clone(),
            steps: o.steps,
            complete: o.complete,
            train_loss: o.train_loss,
            eval_loss: get("loss"),
            eval_accuracy: get("accuracy"),
            skipped_steps: o.skipped_steps,
            monitor_events: o.monitor_events,
            monitor_means: o.monitor_means.clone(),
            model_bytes: sum.total_bytes(),
            model_float32_bytes: sum.float32_equivalent_bytes(),
        })
    }
}

/// A finished classify run read back for evaluation: its saved recipe, the model of its
/// `final/` checkpoint, and the evaluation set its metrics were computed on (regenerated from
/// the recipe's seed).
pub struct TrainedClassifier<B: Backend> {
    /// The run's resolved recipe.
    pub recipe: Recipe,
    /// The trained model.
    pub model: ClassifyMlp<B>,
    /// The evaluation set.
    pub eval: Clusters,
}

/// Loads the finished classify run in `run_dir` (its `recipe.resolved.toml` and
/// `final/model.mpk`) on `device`.
pub fn load_trained<B: Backend>(
    run_dir: &Path,
    device: &B::Device,
) -> Result<TrainedClassifier<B>> {
    let recipe = crate::rundir::saved_recipe(run_dir)?.ok_or_else(|| TrainError::Checkpoint {
        path: run_dir.to_owned(),
        message: format!(
            "no {} here: not a run directory",
            crate::rundir::RECIPE_FILE
        ),
    })?;
    if !matches!(recipe.kind, bllm_recipe::Kind::Classify) {
        return Err(wrong_kind(&recipe, "classify"));
    }
    let (data, _) = sections(&recipe)?;
    let (_, eval) = make_data(&recipe, data);
    let model = ClassifyMlp::<B>::new(&recipe, &estimator(&recipe)?, device)?;
    let path = run_dir.join("final").join("model");
    if !path.with_extension("mpk").is_file() {
        return Err(TrainError::Checkpoint {
            path: path.with_extension("mpk"),
            message: "missing: the run has not finished (no final/ checkpoint)".into(),
        });
    }
    let model = model
        .load_file(path.clone(), &crate::optim::recorder(), device)
        .map_err(|e| TrainError::Checkpoint {
            path: path.with_extension("mpk"),
            message: e.to_string(),
        })?;
    Ok(TrainedClassifier {
        recipe,
        model,
        eval,
    })
}

/// Runs (or resumes) a classify recipe into `opts.run_dir`.
pub fn run(recipe: &Recipe, opts: &mut RunOptions) -> Result<RunSummary> {
    crate::backend::dispatch_run!(recipe, opts, run_on -> RunSummary)
}

fn run_on<B: AutodiffBackend>(recipe: &Recipe, opts: &mut RunOptions) -> Result<RunSummary> {
    let (data, _) = sections(recipe)?;
    opts.refuse_existing(recipe)?;
    let (train_set, eval) = make_data(recipe, data);
    let kind = Classify {
        recipe,
        estimator: estimator(recipe)?,
        train: train_set,
        eval,
    };
    train::<B, _>(recipe, opts, kind)
}

/// Writes each binary layer's weights as a codes directory (`binary<i>/codes.bcodes` +
/// `manifest.json`, one row per output channel) and its scales (`binary<i>/scales.json`).
fn export_weights<B: Backend>(model: &ClassifyMlp<B>, recipe: &Recipe, dir: &Path) -> Result<()> {
    for (i, layer) in model.binary_layers.iter().enumerate() {
        let out = dir.join(format!("binary{i}"));
        let w = match layer.binary_weights() {
            Ok(w) => w,
            Err(bllm_nn::NnError::Unsupported(_)) => continue, // ternary: no 1-bit export
            Err(e) => return Err(e.into()),
        };
        let info = bllm_codes::io::ManifestInfo {
            source: None,
            encoder: Some(format!(
                "BinaryLinear weights, layer binary{i}, estimator {}",
                layer.config.weight.name()
            )),
            recipe: Some(format!("{} (seed {})", recipe.name, recipe.seed)),
            tool: Some(format!("bllm-train {}", env!("CARGO_PKG_VERSION"))),
        };
        bllm_codes::io::write_codes_dir(&out, &w.codes, info).map_err(|e| {
            TrainError::Checkpoint {
                path: out.clone(),
                message: e.to_string(),
            }
        })?;
        let scales = serde_json::to_vec_pretty(
            &json!({ "scales": w.scales, "rows": "output channels", "bits": "input features" }),
        )
        .unwrap_or_default();
        bllm_codes::io::write_atomic(&out.join("scales.json"), &scales).map_err(|e| {
            TrainError::Checkpoint {
                path: out.clone(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}
