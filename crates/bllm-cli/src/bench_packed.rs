//! `bllm bench packed`: evaluation of a trained 1-bit classifier through the packed popcount
//! kernels (`BinaryLinear::to_packed`, `bllm_kernels::PackedLinear`) against the float
//! evaluation of the same model — Burn's forward here, PyTorch's with
//! `scripts/bench_vs_torch.py --packed DIR` on the weights `--export DIR` writes.
//!
//! The model is a finished `kind = "classify"` run (trained from `--recipe` first when
//! `--run-dir` has no `final/`). Float layers run as Burn matmuls on the CPU backend; binary
//! layers run on the popcount kernels: XNOR-popcount where the layer's input is ±1 (the
//! recipe's `binary_activations`: the packing takes the signs, so the sign activation costs
//! nothing extra), the binary × float kernel otherwise. Both paths are timed end to end, from
//! the evaluation inputs to the logits, and their predictions are compared.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bllm_codes::FloatMatrix;
use bllm_codes::io::npy::write_f32_npy;
use bllm_kernels::{PackedInput, PackedLinear};
use bllm_ste::Ctx;
use bllm_ste::estimators::Levels;
use bllm_train::{ClassifyMlp, RunOptions};
use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use clap::Args;
use serde::Serialize;

/// Arguments of `bllm bench packed`.
#[derive(Debug, Args)]
pub struct PackedBenchArgs {
    /// A finished classify run to evaluate. Without it (or when it has no `final/`), `--recipe`
    /// is trained first (into this directory, or a scratch one).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// The classify recipe trained when there is no finished run.
    #[arg(long, default_value = "recipes/bench/packed-mlp.toml")]
    pub recipe: PathBuf,
    /// Overrides of `--recipe` (`key=value`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Evaluations per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Write the model as float matrices for PyTorch here: `plan.json`, `x.npy` (inputs),
    /// `labels.npy`, `bllm_pred.npy` (the packed path's predictions), and per layer
    /// `layer<i>_weight.npy` (`[d_in, d_out]`: α ⊙ sign(W) for a binary layer) and
    /// `layer<i>_bias.npy`.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// PyTorch's result: `scripts/bench_vs_torch.py --packed DIR --json FILE`.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One stage of the packed evaluation.
enum Stage {
    /// A float layer (Burn matmul on the CPU backend).
    Float(Box<burn::nn::Linear<Flex>>),
    /// A binary layer on the popcount kernels.
    Packed(PackedLinear),
}

/// What happens between two layers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Act {
    /// `sign(h)`, `sign(0) = +1`.
    Sign,
    /// `max(h, 0)`.
    Relu,
    /// Nothing (after the last layer).
    None,
}

/// The measured result.
#[derive(Debug, Serialize)]
struct Report {
    rows: usize,
    layers: Vec<String>,
    float_ms: f64,
    packed_ms: f64,
    float_accuracy: f64,
    packed_accuracy: f64,
    /// Fraction of rows where the two paths predict the same class.
    agreement: f64,
    /// Largest |logit difference| over the largest |logit|.
    max_rel_logit_diff: f64,
    float_weight_bytes: usize,
    packed_weight_bytes: usize,
    torch: Option<serde_json::Value>,
}

fn argmax_rows(v: &[f32], cols: usize) -> Vec<usize> {
    v.chunks(cols.max(1))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv { (i, x) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

fn host(t: Tensor<Flex, 2>) -> Result<Vec<f32>> {
    t.into_data()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

/// The finished run to evaluate: `--run-dir` if it has `final/`, else `--recipe` trained.
fn finished_run(a: &PackedBenchArgs, scratch: &Path) -> Result<PathBuf> {
    let dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| scratch.join("packed-mlp"));
    if dir.join("final").join("model.mpk").is_file() {
        return Ok(dir);
    }
    let recipe = crate::recipes::load(&a.recipe, &a.overrides)
        .with_context(|| format!("--recipe {}", a.recipe.display()))?;
    if !matches!(recipe.kind, bllm_recipe::Kind::Classify) {
        bail!(
            "--recipe {}: kind = {:?}; bench packed evaluates a classify model",
            a.recipe.display(),
            recipe.kind.name()
        );
    }
    eprintln!("training {} into {} …", a.recipe.display(), dir.display());
    let mut opts = RunOptions {
        dist: None,
        run_dir: dir.clone(),
        resume: false,
        max_steps: None,
        verbose: false,
        progress: None,
    };
    bllm_train::run(&recipe, &mut opts)
        .with_context(|| format!("training {}", a.recipe.display()))?;
    Ok(dir)
}

/// The packed stages of `model` and the activation after each.
fn stages(model: &ClassifyMlp<Flex>) -> Result<Vec<(Stage, Act)>> {
    let last = model.plan.len().saturating_sub(1);
    if model.binary_activations && model.act.levels() != Levels::Sign {
        bail!(
            "the model's hidden activations use the {} estimator, which is not ±1; the popcount \
             kernels need sign activations",
            model.act.name()
        );
    }
    let mut out = Vec::new();
    let mut input_is_sign = false;
    for (i, &(float, j)) in model.plan.iter().enumerate() {
        let stage = if float {
            Stage::Float(Box::new(model.float_layers[j].clone()))
        } else {
            let mut p = model.binary_layers[j]
                .to_packed()
                .with_context(|| format!("binary layer {j} (layer {i}) to the packed kernels"))?;
            if input_is_sign && p.input == PackedInput::Float {
                // Its input is sign(h): packing h's signs is the activation.
                p.input = PackedInput::Sign {
                    threshold: Vec::new(),
                    scale: 1.0,
                };
            }
            Stage::Packed(p)
        };
        let act = match (i == last, model.binary_activations) {
            (true, _) => Act::None,
            (false, true) => Act::Sign,
            (false, false) => Act::Relu,
        };
        input_is_sign = act == Act::Sign;
        out.push((stage, act));
    }
    Ok(out)
}

/// The packed evaluation of `x` (`rows × dim`): logits, row-major. Each stage's seconds are
/// added to `times` (one slot per stage).
fn packed_eval(
    st: &[(Stage, Act)],
    x: &[f32],
    rows: usize,
    dim: usize,
    times: &mut [f64],
) -> Result<Vec<f32>> {
    let dev = Default::default();
    let mut h = x.to_vec();
    let mut width = dim;
    for (i, (stage, act)) in st.iter().enumerate() {
        let clock = Instant::now();
        let sign_next = st
            .get(i + 1)
            .is_some_and(|(s, _)| matches!(s, Stage::Packed(p) if p.input != PackedInput::Float));
        h = match stage {
            Stage::Float(l) => {
                let t = Tensor::<Flex, 2>::from_data(TensorData::new(h, [rows, width]), &dev);
                width = l.weight.dims()[1];
                host(l.forward(t))?
            }
            Stage::Packed(p) => {
                width = p.d_output();
                p.forward(&h, rows)?
            }
        };
        match act {
            // The next layer packs the signs itself.
            Act::Sign if sign_next => {}
            Act::Sign => h
                .iter_mut()
                .for_each(|v| *v = if *v >= 0.0 { 1.0 } else { -1.0 }),
            Act::Relu => h.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::None => {}
        }
        if let Some(t) = times.get_mut(i) {
            *t += clock.elapsed().as_secs_f64();
        }
    }
    Ok(h)
}

/// Median milliseconds of `repeats` runs of `f` (the caller has run it once as a warm-up).
fn median_ms(mut f: impl FnMut() -> Result<()>, repeats: usize) -> Result<f64> {
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(crate::bench::median(t) * 1e3)
}

/// Writes the model as float matrices and the data for the PyTorch script.
fn export(
    dir: &Path,
    model: &ClassifyMlp<Flex>,
    st: &[(Stage, Act)],
    x: &[f32],
    labels: &[i64],
    pred: &[usize],
    dim: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--export {}", dir.display()))?;
    let ctx = Ctx::default().for_eval();
    let npy = |name: &str, rows: usize, cols: usize, v: Vec<f32>| -> Result<()> {
        let m = FloatMatrix::new(rows, cols, v)?;
        write_f32_npy(&dir.join(name), &m).with_context(|| format!("--export {}", dir.display()))
    };
    let rows = labels.len();
    npy("x.npy", rows, dim, x.to_vec())?;
    npy(
        "labels.npy",
        rows,
        1,
        labels.iter().map(|&v| v as f32).collect(),
    )?;
    npy(
        "bllm_pred.npy",
        rows,
        1,
        pred.iter().map(|&v| v as f32).collect(),
    )?;
    let mut plan = Vec::new();
    for (i, ((float, j), (_, act))) in model.plan.iter().zip(st).enumerate() {
        let (w, b) = if *float {
            let l = &model.float_layers[*j];
            (l.weight.val(), l.bias.as_ref().map(|b| b.val()))
        } else {
            let l = &model.binary_layers[*j];
            (l.effective_weight(&ctx), l.bias.as_ref().map(|b| b.val()))
        };
        let [d_in, d_out] = w.dims();
        npy(&format!("layer{i}_weight.npy"), d_in, d_out, host(w)?)?;
        let b = match b {
            Some(b) => host(b.unsqueeze::<2>())?,
            None => vec![0.0; d_out],
        };
        npy(&format!("layer{i}_bias.npy"), 1, d_out, b)?;
        plan.push(serde_json::json!({
            "kind": if *float { "float" } else { "binary" },
            "weight": format!("layer{i}_weight.npy"),
            "bias": format!("layer{i}_bias.npy"),
            "activation": act,
        }));
    }
    let v = serde_json::json!({ "rows": rows, "dim": dim, "layers": plan });
    bllm_codes::io::write_atomic(
        &dir.join("plan.json"),
        serde_json::to_string_pretty(&v)?.as_bytes(),
    )
    .with_context(|| format!("--export {}", dir.display()))?;
    Ok(())
}

/// PyTorch's numbers from `scripts/bench_vs_torch.py --packed DIR --json FILE`.
fn torch_result(path: &Path) -> Result<(serde_json::Value, f64)> {
    let v = crate::bench::read_torch_json(path)?;
    let ms = v
        .pointer("/packed/ms_per_eval")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| {
            format!(
                "--torch {}: expected packed.ms_per_eval (written by bench_vs_torch.py --packed)",
                path.display()
            )
        })?;
    Ok((v, ms))
}

/// `bllm bench packed`.
pub fn bench_packed(a: PackedBenchArgs) -> Result<()> {
    if a.repeats < 1 {
        bail!("--repeats must be at least 1");
    }
    let torch = a.torch.as_deref().map(torch_result).transpose()?;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = finished_run(&a, scratch.path())?;
    let dev = Default::default();
    let t = bllm_train::load_trained::<Flex>(&dir, &dev)
        .with_context(|| format!("loading the run {}", dir.display()))?;
    let (model, eval) = (t.model, t.eval);
    let (rows, dim) = (eval.y.len(), eval.dim);
    if rows == 0 {
        bail!(
            "run {}: the evaluation set is empty (data.eval_size = 0)",
            dir.display()
        );
    }
    let ctx = Ctx::default().for_eval();
    let x_t = Tensor::<Flex, 2>::from_data(TensorData::new(eval.x.clone(), [rows, dim]), &dev);
    let st = stages(&model)?;
    // The first evaluation of each path is also its warm-up.
    let float_logits = host(model.forward(x_t.clone(), &ctx))?;
    let mut stage_secs = vec![0f64; st.len()];
    let packed_logits = packed_eval(&st, &eval.x, rows, dim, &mut stage_secs)?;
    stage_secs.iter_mut().for_each(|t| *t = 0.0);
    let classes = float_logits.len() / rows;
    let float_ms = median_ms(
        || {
            host(model.forward(x_t.clone(), &ctx))?;
            Ok(())
        },
        a.repeats,
    )?;
    let packed_ms = median_ms(
        || {
            packed_eval(&st, &eval.x, rows, dim, &mut stage_secs)?;
            Ok(())
        },
        a.repeats,
    )?;

    let (fp, pp) = (
        argmax_rows(&float_logits, classes),
        argmax_rows(&packed_logits, classes),
    );
    let acc = |p: &[usize]| {
        p.iter()
            .zip(&eval.y)
            .filter(|(a, b)| **a as i64 == **b)
            .count() as f64
            / rows as f64
    };
    let (float_accuracy, packed_accuracy) = (acc(&fp), acc(&pp));
    let agreement = fp.iter().zip(&pp).filter(|(a, b)| a == b).count() as f64 / rows as f64;
    let scale = float_logits
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-30);
    let max_diff = float_logits
        .iter()
        .zip(&packed_logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let max_rel_logit_diff = (max_diff / scale) as f64;
    let (mut float_bytes, mut packed_bytes) = (0usize, 0usize);
    // Mean milliseconds per stage over the measured evaluations.
    let stage_ms: Vec<f64> = stage_secs
        .iter()
        .map(|t| t * 1e3 / a.repeats as f64)
        .collect();
    let mut layers = Vec::new();
    for ((stage, act), ms) in st.iter().zip(&stage_ms) {
        match stage {
            Stage::Float(l) => {
                let [i, o] = l.weight.dims();
                float_bytes += (i * o + o) * 4;
                packed_bytes += (i * o + o) * 4;
                layers.push(format!("float {i}→{o} ({act:?}): {ms:.1} ms"));
            }
            Stage::Packed(p) => {
                let (i, o) = (p.d_input(), p.d_output());
                float_bytes += (i * o + o) * 4;
                packed_bytes +=
                    p.weights.byte_len() + 4 * (p.epilogue.scales.len() + p.epilogue.bias.len());
                let kernel = match p.input {
                    PackedInput::Float => "binary × float",
                    PackedInput::Sign { .. } => "XNOR-popcount",
                };
                layers.push(format!("binary {i}→{o}, {kernel} ({act:?}): {ms:.1} ms"));
            }
        }
    }
    if let Some(d) = &a.export {
        export(d, &model, &st, &eval.x, &eval.y, &pp, dim)?;
        eprintln!(
            "wrote {} (run: scripts/bench_vs_torch.py --packed {})",
            d.display(),
            d.display()
        );
    }
    let threads = rayon::current_num_threads();
    println!(
        "evaluation of {rows} rows of the trained model in {} ({threads} threads, median of {})\n",
        dir.display(),
        a.repeats
    );
    println!("packed path, mean per layer:\n  {}\n", layers.join("\n  "));
    println!("| path | ms per evaluation | accuracy | float time / this |");
    println!("|---|---:|---:|---:|");
    println!(
        "| float, Burn `flex` | {float_ms:.1} | {:.4} | 1.00× |",
        float_accuracy
    );
    println!(
        "| packed popcount kernels | {packed_ms:.1} | {:.4} | {:.2}× |",
        packed_accuracy,
        float_ms / packed_ms
    );
    if let Some((v, ms)) = &torch {
        let tacc = v
            .pointer("/packed/accuracy")
            .and_then(serde_json::Value::as_f64)
            .map_or("—".to_owned(), |x| format!("{x:.4}"));
        println!("| float, PyTorch | {ms:.1} | {tacc} | — |");
        println!(
            "\npacked vs PyTorch's float evaluation: {:.2}× faster",
            ms / packed_ms
        );
    }
    println!(
        "\npredictions equal on {:.2} % of rows; max |Δ logit| / max |logit| = {:.2e}; weights \
         {:.2} MiB float vs {:.2} MiB packed",
        agreement * 100.0,
        max_rel_logit_diff,
        float_bytes as f64 / 1048576.0,
        packed_bytes as f64 / 1048576.0
    );
    let report = Report {
        rows,
        layers,
        float_ms,
        packed_ms,
        float_accuracy,
        packed_accuracy,
        agreement,
        max_rel_logit_diff,
        float_weight_bytes: float_bytes,
        packed_weight_bytes: packed_bytes,
        torch: torch.map(|(v, _)| v),
    };
    if let Some(p) = &a.json {
        bllm_codes::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}
