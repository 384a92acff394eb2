//! What every trainer shares besides the loop: the recipe's optimizer over any module, record
//! files, gradient-norm visitors and tensor-to-host copies.

use std::path::{Path, PathBuf};

use bllm_nn::{Bop, MixedOptimizer, binary_param_ids};
use bllm_recipe::{OptimizerKind, Recipe};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::record::{
    FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder, Record, Recorder,
};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::adam::FusedAdam;
use crate::rundir::RunDir;
use crate::{Result, TrainError};

/// The optimizer chosen by the recipe.
pub(crate) enum Opt<B: AutodiffBackend, M: AutodiffModule<B>> {
    Adam(OptimizerAdaptor<FusedAdam, M, B>),
    AdamW(OptimizerAdaptor<AdamW, M, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    BopAdam(MixedOptimizer<M, B, OptimizerAdaptor<FusedAdam, M, B>>),
}

pub(crate) fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Writes record `rec` as `path.mpk` in canonical form ([`canonicalize_mpk`]), so the same
/// state always gives the same bytes.
pub(crate) fn save_rec<B: Backend, R: Record<B>>(rec: R, path: &Path) -> Result<()> {
    let err = |message: String| TrainError::Checkpoint {
        path: path.to_owned(),
        message,
    };
    // The same named MessagePack as `NamedMpkFileRecorder` writes (its loader reads it),
    // encoded in memory so it is canonicalised before it is written once.
    let bytes = Recorder::<B>::record(
        &NamedMpkBytesRecorder::<FullPrecisionSettings>::new(),
        rec,
        (),
    )
    .map_err(|e| err(e.to_string()))?;
    let file = path.with_extension("mpk");
    let canonical =
        canonicalize_mpk(&bytes).map_err(|e| err(format!("{}: {e}", file.display())))?;
    std::fs::write(&file, canonical).map_err(|e| TrainError::io(&file, e))
}

/// Re-encodes a MessagePack document with every map's entries sorted by their encoded keys.
///
/// Burn keeps optimizer state in a `HashMap<ParamId, _>`, whose iteration order (and so the
/// order in which `NamedMpkFileRecorder` writes it) changes from process to process: two runs
/// with identical state wrote different `optimizer.mpk` bytes. Map order carries no meaning
/// for Burn's readers (maps and named structs are read by key), so sorting makes the bytes a
/// function of the state alone. Everything else (integers, floats, binary tensor data) is
/// re-encoded unchanged.
pub(crate) fn canonicalize_mpk(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fn sort(v: &mut rmpv::Value) -> std::result::Result<(), String> {
        match v {
            rmpv::Value::Array(a) => a.iter_mut().try_for_each(sort),
            rmpv::Value::Map(m) => {
                let mut keyed = Vec::with_capacity(m.len());
                for (mut k, mut val) in std::mem::take(m) {
                    sort(&mut k)?;
                    sort(&mut val)?;
                    let mut enc = Vec::new();
                    rmpv::encode::write_value(&mut enc, &k).map_err(|e| e.to_string())?;
                    keyed.push((enc, k, val));
                }
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                *m = keyed.into_iter().map(|(_, k, v)| (k, v)).collect();
                Ok(())
            }
            _ => Ok(()),
        }
    }
    let mut reader = bytes;
    let mut value = rmpv::decode::read_value(&mut reader).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err(format!(
            "{} bytes after the MessagePack document",
            reader.len()
        ));
    }
    sort(&mut value)?;
    let mut out = Vec::with_capacity(bytes.len());
    rmpv::encode::write_value(&mut out, &value).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Refuses a record file that is not a regular file (a FIFO would block Burn's reader, a
/// device would be read until memory runs out), naming it.
fn ensure_regular_record(path: &Path) -> Result<()> {
    let file = path.with_extension("mpk");
    match std::fs::metadata(&file) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(TrainError::Checkpoint {
            path: file,
            message: "is not a regular file (a device, FIFO, socket or directory)".into(),
        }),
        Err(e) => Err(TrainError::io(&file, e)),
    }
}

pub(crate) fn load_rec<B: Backend, R: Record<B>>(path: &Path) -> Result<R> {
    ensure_regular_record(path)?;
    Recorder::<B>::load(&recorder(), path.to_owned(), &Default::default()).map_err(|e| {
        TrainError::Checkpoint {
            path: path.with_extension("mpk"),
            message: e.to_string(),
        }
    })
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Opt<B, M> {
    pub(crate) fn new(recipe: &Recipe, model: &M) -> Self {
        let o = &recipe.optimizer;
        // Burn's Adam, updated in one parallel pass per parameter on the CPU backends (the
        // same bits and the same state records: `crate::adam`).
        let adam = || {
            FusedAdam::init::<B, M>(
                o.beta1 as f32,
                o.beta2 as f32,
                o.eps as f32,
                o.weight_decay as f32,
            )
        };
        match o.kind {
            OptimizerKind::Adam => Self::Adam(adam()),
            OptimizerKind::Adamw => Self::AdamW(
                AdamWConfig::new()
                    .with_beta_1(o.beta1 as f32)
                    .with_beta_2(o.beta2 as f32)
                    .with_epsilon(o.eps as f32)
                    .with_weight_decay(o.weight_decay as f32)
                    .init::<B, M>(),
            ),
            OptimizerKind::Sgd => Self::Sgd(
                SgdConfig::new()
                    .with_momentum(Some(
                        MomentumConfig::new()
                            .with_momentum(o.beta1)
                            .with_dampening(0.0),
                    ))
                    .init::<B, M>(),
            ),
            OptimizerKind::BopAdam => Self::BopAdam(MixedOptimizer::new(
                Bop {
                    gamma: o.bop_gamma,
                    tau: o.bop_tau,
                },
                adam(),
                binary_param_ids(model),
            )),
        }
    }

    /// One step at `lr`; the parameters of each `(ids, scale)` group step at `lr · scale`
    /// (a group's gradients are taken out and applied first; Burn's optimizers leave a
    /// parameter without a gradient untouched, and keep their state per parameter). With
    /// `bop_adam` the groups are not applied: the trainer refuses them before training.
    pub(crate) fn step_groups(
        &mut self,
        lr: f64,
        model: M,
        grads: B::Gradients,
        groups: &[(Vec<ParamId>, f64)],
    ) -> M {
        if groups.is_empty() || matches!(self, Self::BopAdam(_)) {
            return self.step(lr, model, grads);
        }
        let mut grads = grads;
        let mut model = model;
        for (ids, scale) in groups {
            let g = GradientsParams::from_params(&mut grads, &model, ids);
            model = match self {
                Self::Adam(o) => o.step(lr * scale, model, g),
                Self::AdamW(o) => o.step(lr * scale, model, g),
                Self::Sgd(o) => o.step(lr * scale, model, g),
                // Not reached (stepped whole above; the trainer refuses groups with Bop).
                Self::BopAdam(_) => model,
            };
        }
        self.step(lr, model, grads)
    }

    pub(crate) fn step(&mut self, lr: f64, model: M, grads: B::Gradients) -> M {
        match self {
            Self::Adam(o) => {
                let g = GradientsParams::from_grads(grads, &model);
                o.step(lr, model, g)
            }
            Self::AdamW(o) => {
                let g = GradientsParams::from_grads(grads, &model);
                o.step(lr, model, g)
            }
            Self::Sgd(o) => {
                let g = GradientsParams::from_grads(grads, &model);
                o.step(lr, model, g)
            }
            Self::BopAdam(o) => o.step(lr, model, grads),
        }
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Adam(o) => save_rec(o.to_record(), &dir.join("optimizer")),
            Self::AdamW(o) => save_rec(o.to_record(), &dir.join("optimizer")),
            Self::Sgd(o) => save_rec(o.to_record(), &dir.join("optimizer")),
            Self::BopAdam(o) => {
                let (bop, float) = o.to_records();
                save_rec(bop, &dir.join("optimizer-bop"))?;
                save_rec(float, &dir.join("optimizer"))
            }
        }
    }

    pub(crate) fn load(self, dir: &Path) -> Result<Self> {
        Ok(match self {
            Self::Adam(o) => Self::Adam(o.load_record(load_rec(&dir.join("optimizer"))?)),
            Self::AdamW(o) => Self::AdamW(o.load_record(load_rec(&dir.join("optimizer"))?)),
            Self::Sgd(o) => Self::Sgd(o.load_record(load_rec(&dir.join("optimizer"))?)),
            Self::BopAdam(o) => Self::BopAdam(o.load_records(
                load_rec(&dir.join("optimizer-bop"))?,
                load_rec(&dir.join("optimizer"))?,
            )),
        })
    }
}

/// The ids of every float parameter of `module`, in visiting order (for [`Kind::lr_groups`]).
///
/// [`Kind::lr_groups`]: crate::Kind::lr_groups
pub(crate) fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.id);
        }
    }
    let mut v = Ids(Vec::new());
    module.visit(&mut v);
    v.0
}

/// Global gradient norm over every parameter, and its finiteness.
pub(crate) struct GradNorm<'a, B: AutodiffBackend> {
    pub(crate) grads: &'a B::Gradients,
    pub(crate) sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if let Some(g) = p.val().grad(self.grads) {
            // One parallel pass in f64 on the CPU backends (`square().sum()` elsewhere).
            self.sum += bllm_ste::fused::sum_squares(&g);
        }
    }
}

/// Scales every gradient by `factor` (global-norm clipping).
pub(crate) struct ScaleGrads<'a, B: AutodiffBackend> {
    pub(crate) grads: &'a mut B::Gradients,
    pub(crate) factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let v = p.val();
        if let Some(g) = v.grad(self.grads) {
            v.grad_replace(self.grads, bllm_ste::fused::scaled(g, self.factor));
        }
    }
}

/// Gradients flattened into one vector for summing across micro-batches and ranks:
/// `[every parameter that requires a gradient, reshaped to 1-D, in visiting order | one flag
/// per such parameter (1: it received a gradient) | the caller's control scalars]`. A
/// parameter without a gradient contributes zeros and flag 0.
pub(crate) struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    flags: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let v = p.val();
        if !v.is_require_grad() {
            return;
        }
        let n = v.shape().num_elements();
        match v.grad(self.grads) {
            Some(g) => {
                self.parts.push(g.reshape([n]));
                self.flags.push(1.0);
            }
            None => {
                self.parts.push(Tensor::zeros([n], &v.device()));
                self.flags.push(0.0);
            }
        }
    }
}

/// `model`'s gradients in `grads` and `control` as one vector (see [`Flatten`]).
pub(crate) fn flatten_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &B::Gradients,
    control: &[f32],
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut f = Flatten::<B> {
        grads,
        parts: Vec::new(),
        flags: Vec::new(),
    };
    model.visit(&mut f);
    let mut tail = f.flags;
    tail.extend_from_slice(control);
    let n = tail.len();
    f.parts.push(Tensor::from_data(
        burn::tensor::TensorData::new(tail, [n]),
        device,
    ));
    Tensor::cat(f.parts, 0)
}

/// Writes the gradient part of `sum` (a sum of [`flatten_grads`] vectors over `parts`
/// micro-batches) divided by `parts` back into `grads`: a parameter no micro-batch gave a
/// gradient keeps none. Returns the control scalars of `sum` (summed, not divided).
pub(crate) fn scatter_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut B::Gradients,
    sum: Tensor<B::InnerBackend, 1>,
    parts: usize,
    control: usize,
) -> Vec<f32> {
    struct Sizes(Vec<usize>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sizes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p.val();
            if v.is_require_grad() {
                self.0.push(v.shape().num_elements());
            }
        }
    }
    struct Scatter<'a, B: AutodiffBackend> {
        grads: &'a mut B::Gradients,
        flat: Tensor<B::InnerBackend, 1>,
        flags: &'a [f32],
        off: usize,
        i: usize,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p.val();
            if !v.is_require_grad() {
                return;
            }
            let n = v.shape().num_elements();
            if self.flags.get(self.i).is_some_and(|f| *f > 0.0) {
                let g = self.flat.clone().narrow(0, self.off, n).reshape(v.dims());
                v.grad_replace(self.grads, g);
            } else {
                v.grad_remove(self.grads);
            }
            self.off += n;
            self.i += 1;
        }
    }
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    let total: usize = sizes.0.iter().sum();
    let q = sizes.0.len();
    let tail = to_vec(sum.clone().narrow(0, total, q + control));
    let flat = sum.narrow(0, 0, total).div_scalar(parts as f32);
    let mut sc = Scatter::<B> {
        grads,
        flat,
        flags: &tail[..q],
        off: 0,
        i: 0,
    };
    model.visit(&mut sc);
    tail[q..].to_vec()
}

pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Writes `model`'s record as `dir/model.mpk` (full precision).
pub(crate) fn save_model<B: Backend, M: burn::module::Module<B>>(
    model: &M,
    dir: &Path,
) -> Result<()> {
    model
        .clone()
        .save_file(dir.join("model"), &recorder())
        .map_err(|e| TrainError::Checkpoint {
            path: dir.to_owned(),
            message: e.to_string(),
        })
}

/// Writes checkpoint `name` of `run` (a temp directory renamed into place): the model record
/// (`model.mpk`), the optimizer record(s), `trainer.json` from `state`, and what `extra(dir)`
/// adds (a safetensors copy, an encoder). Returns the checkpoint directory.
pub(crate) fn save_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>, S: serde::Serialize>(
    run: &RunDir,
    name: &str,
    model: &M,
    opt: &Opt<B, M>,
    state: &S,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    run.write_checkpoint(name, |dir| {
        save_model(model, dir)?;
        opt.save(dir)?;
        extra(dir)?;
        let json = serde_json::to_vec_pretty(state).unwrap_or_default();
        std::fs::write(dir.join("trainer.json"), json)
            .map_err(|e| TrainError::io(dir.join("trainer.json"), e))
    })
}

/// The model and optimizer of checkpoint `dir`; the optimizer is rebuilt for the loaded
/// model's parameter ids before its state is loaded.
pub(crate) fn load_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    recipe: &Recipe,
    model: M,
    dir: &Path,
) -> Result<(M, Opt<B, M>)> {
    ensure_regular_record(&dir.join("model"))?;
    let model = model
        .load_file(dir.join("model"), &recorder(), &Default::default())
        .map_err(|e| TrainError::Checkpoint {
            path: dir.to_owned(),
            message: e.to_string(),
        })?;
    let opt = Opt::new(recipe, &model).load(dir)?;
    Ok((model, opt))
}

/// The global gradient norm of `model`'s parameters.
pub(crate) fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &B::Gradients,
) -> f64 {
    let mut gn = GradNorm { grads, sum: 0.0 };
    model.visit(&mut gn);
    gn.sum.sqrt()
}

/// Clips the gradients to `train.grad_clip` (global norm, when set and exceeded), then takes
/// one optimizer step at `lr`.
pub(crate) fn clip_and_step<B: AutodiffBackend, M: AutodiffModule<B>>(
    recipe: &Recipe,
    opt: &mut Opt<B, M>,
    model: M,
    mut grads: B::Gradients,
    grad_norm: f64,
    lr: f64,
    groups: &[(Vec<ParamId>, f64)],
) -> M {
    if recipe.train.grad_clip > 0.0 && grad_norm > recipe.train.grad_clip {
        let mut sg = ScaleGrads {
            grads: &mut grads,
            factor: recipe.train.grad_clip / grad_norm,
        };
        model.visit(&mut sg);
    }
    opt.step_groups(lr, model, grads, groups)
}

/// The context of training step `step` of `total`: progress and a per-step seed.
pub(crate) fn step_ctx(recipe: &Recipe, step: usize, total: usize) -> bllm_ste::Ctx {
    bllm_ste::Ctx::at(step as f64 / total as f64).with_seed(
        recipe
            .seed
            .wrapping_mul(0x1_0000_0001)
            .wrapping_add(step as u64),
    )
}

/// Starts a run (saving the resolved recipe) or, with `resume`, loads the model, optimizer and
/// trainer state of the newest complete checkpoint (`step_of` reads the state's step). A resume
/// with no complete checkpoint yet starts again from step 0 ([`RunDir::restart`]).
pub(crate) fn start_or_resume<
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    S: serde::de::DeserializeOwned,
>(
    recipe: &Recipe,
    run: &RunDir,
    resume: bool,
    fresh: (M, Opt<B, M>, S),
    step_of: impl Fn(&S) -> usize,
) -> Result<(M, Opt<B, M>, S)> {
    if !resume {
        run.start(recipe)?;
        return Ok(fresh);
    }
    let Some((step, dir)) = run.resume_point()? else {
        run.restart(recipe)?;
        return Ok(fresh);
    };
    crate::rundir::verify_checkpoint(&dir)?;
    let (model, opt) = load_checkpoint(recipe, fresh.0, &dir)?;
    let state = run.resume_state(&dir, step, step_of)?;
    run.adopt_recipe(recipe, step)?;
    Ok((model, opt, state))
}

/// [`start_or_resume`] for a data-parallel rank other than 0: with `resume`, loads the newest
/// complete checkpoint of rank 0's run directory `dir` without writing anything there (no
/// checkpoint yet: starts from `fresh`, as rank 0 does).
pub(crate) fn resume_read_only<
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    S: serde::de::DeserializeOwned,
>(
    recipe: &Recipe,
    dir: &Path,
    resume: bool,
    fresh: (M, Opt<B, M>, S),
    step_of: impl Fn(&S) -> usize,
) -> Result<(M, Opt<B, M>, S)> {
    if !resume {
        return Ok(fresh);
    }
    RunDir::refuse_existing(dir, recipe, true)?;
    let Some((step, ck)) = crate::rundir::newest_checkpoint(dir)? else {
        return Ok(fresh);
    };
    crate::rundir::verify_checkpoint(&ck)?;
    let (model, opt) = load_checkpoint(recipe, fresh.0, &ck)?;
    let state = crate::rundir::read_state(&ck, step, step_of)?;
    Ok((model, opt, state))
}

/// A hash of every float parameter's shape and values, in visiting order (ranks check they
/// start from the same model).
pub(crate) fn param_hash<B: Backend, M: Module<B>>(module: &M) -> u64 {
    struct H(xxhash_rust::xxh3::Xxh3);
    impl<B: Backend> ModuleVisitor<B> for H {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p.val();
            for d in v.dims() {
                self.0.update(&(d as u64).to_le_bytes());
            }
            let bytes: Vec<u8> = to_vec(v).iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0.update(&bytes);
        }
    }
    let mut h = H(xxhash_rust::xxh3::Xxh3::new());
    module.visit(&mut h);
    h.0.digest()
}

/// Collects every float parameter with its dotted path (`binary_layers.0.weight`).
struct Named {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Named {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let t = p.val();
        self.out
            .push((self.path.join("."), t.dims().to_vec(), to_vec(t)));
    }
}

/// The model's tensors as safetensors (f32, named by module path), for inspection with any
/// safetensors reader; resume uses the exact Burn records beside it.
pub fn write_safetensors<B: burn::tensor::backend::Backend, M: Module<B>>(
    model: &M,
    path: &Path,
) -> Result<()> {
    let mut named = Named {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut named);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .out
        .into_iter()
        .map(|(n, shape, v)| (n, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Checkpoint {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let data = safetensors::serialize(views, &None).map_err(|e| TrainError::Checkpoint {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, data).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;

    type Ad = Autodiff<NdArray>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 1>>,
    }

    fn two() -> Two<Ad> {
        let dev = Default::default();
        let p = |v: [f32; 3]| Param::from_tensor(Tensor::<Ad, 1>::from_floats(v, &dev));
        bllm_nn::with_deterministic_ids(
            Two {
                a: p([1.0, -2.0, 0.5]),
                b: p([0.3, 0.1, -1.0]),
            },
            0,
        )
    }

    /// One Adam step at lr 0.1 on `Σ a² + Σ b³` with the groups given; the new `a` and `b`.
    fn stepped(groups: impl Fn(&Two<Ad>) -> Vec<(Vec<ParamId>, f64)>) -> (Vec<f32>, Vec<f32>) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/smoke.toml");
        let mut recipe = Recipe::load(Path::new(root), &[], &()).expect("smoke recipe");
        recipe.optimizer.kind = OptimizerKind::Adam;
        recipe.optimizer.weight_decay = 0.0;
        let m = two();
        let mut opt = Opt::<Ad, Two<Ad>>::new(&recipe, &m);
        let loss = m.a.val().square().sum() + m.b.val().powi_scalar(3).sum();
        let grads = loss.backward();
        let g = groups(&m);
        let m = opt.step_groups(0.1, m, grads, &g);
        (to_vec(m.a.val().inner()), to_vec(m.b.val().inner()))
    }

    #[test]
    fn groups_step_at_their_own_scale_and_leave_the_rest_as_one_step() {
        let (a0, b0) = (vec![1.0f32, -2.0, 0.5], vec![0.3f32, 0.1, -1.0]);
        let (a, b) = stepped(|_| Vec::new());
        // A group at scale 1 is the plain step, bit for bit.
        assert_eq!(
            stepped(|m| vec![(vec![m.a.id], 1.0)]),
            (a.clone(), b.clone())
        );
        // Scale 0 freezes the group; the rest steps as before.
        let (af, bf) = stepped(|m| vec![(vec![m.a.id], 0.0)]);
        assert_eq!((af, &bf), (a0.clone(), &b));
        // Adam's first step moves each weight by ≈ lr; at scale 0.25 by a quarter of that.
        let (aq, bq) = stepped(|m| vec![(vec![m.a.id], 0.25)]);
        assert_eq!(bq, b);
        for i in 0..3 {
            let (full, quarter) = (a[i] - a0[i], aq[i] - a0[i]);
            assert!(
                (quarter - 0.25 * full).abs() < 1e-6,
                "{i}: {quarter} vs {full}"
            );
            assert!((full.abs() - 0.1).abs() < 1e-4, "{i}: {full}");
        }
        assert_ne!(b, b0);
    }

    #[test]
    fn flattened_gradients_sum_back_to_the_mean_and_keep_missing_ones_missing() {
        let dev = Default::default();
        let m = two();
        // Part 1 touches only `a`, part 2 both: `b` has a gradient in one part only.
        let g1 = m.a.val().square().sum().backward();
        let g2 = (m.a.val().sum() + m.b.val().mul_scalar(3.0).sum()).backward();
        let f1 = flatten_grads(&m, &g1, &[1.5, 7.0], &dev);
        let f2 = flatten_grads(&m, &g2, &[2.5, 9.0], &dev);
        // Layout: a (3), b (3), flags (2), control (2).
        assert_eq!(
            to_vec(f1.clone()),
            [2.0, -4.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.5, 7.0]
        );
        let mut grads = g2;
        let control = scatter_grads(&m, &mut grads, f1.clone() + f2, 2, 2);
        assert_eq!(control, [4.0, 16.0]);
        assert_eq!(
            to_vec(m.a.val().grad(&grads).unwrap()),
            [1.5, -1.5, 1.0] // ((2a) + 1) / 2
        );
        assert_eq!(to_vec(m.b.val().grad(&grads).unwrap()), [1.5, 1.5, 1.5]);
        // A parameter no part gave a gradient keeps none.
        let mut only_a = m.a.val().square().sum().backward();
        scatter_grads(&m, &mut only_a, f1.clone() + f1, 2, 2);
        assert!(m.b.val().grad(&only_a).is_none());
        assert_eq!(to_vec(m.a.val().grad(&only_a).unwrap()), [2.0, -4.0, 1.0]);
    }

    #[test]
    fn rows_cut_equal_parts_and_refuse_uneven_ones() {
        let t =
            Tensor::<NdArray, 1>::from_floats([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &Default::default());
        assert_eq!(to_vec(crate::rows(&t, 1, 3).unwrap()), [2.0, 3.0]);
        assert_eq!(to_vec(crate::rows(&t, 0, 1).unwrap()).len(), 6);
        for (i, p) in [(0, 4), (3, 3), (0, 0)] {
            let e = crate::rows(&t, i, p).unwrap_err().to_string();
            assert!(e.contains("does not split"), "{e}");
        }
    }
}
