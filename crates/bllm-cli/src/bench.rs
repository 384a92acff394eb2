//! `bllm bench kernels`: the binary kernels against float baselines, with honest ratios.
//!
//! Matmuls at transformer shapes (default 4096 × 4096 weights, batch 1, 16, 256): Burn's f32
//! matmul (ndarray on the CPU; Burn's CUDA backend when built with `cuda` and run with
//! `--device cuda`) against the plain-Rust popcount paths of `bllm-kernels` and, with
//! `--device`, the CubeCL kernels on that device. Hamming top-k: `bllm-codes`' CPU search
//! against the device kernel. Every device result is checked against the CPU counterpart in
//! the same run.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bllm_codes::PackedCodes;
use bllm_codes::rng::SplitMix64;
use bllm_kernels::{Epilogue, PackedInput, PackedLinear, cpu};
use burn::backend::NdArray;
use burn::tensor::Tensor;
use clap::{Args, Subcommand};
use serde::Serialize;

/// `bllm bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// XNOR-popcount and binary-weight matmuls vs Burn's f32 matmul; Hamming top-k on a
    /// device vs the CPU. Prints one comparison table (and writes JSON with --json).
    Kernels(KernelBenchArgs),
    /// The pretrained encoder and decoder and their tokenizers (throughput), side by side with
    /// `scripts/bench_models_vs_torch.py --json` given as `--torch`.
    Models(crate::models::ModelsBenchArgs),
    /// Milliseconds per training step of the bundled recipes on each CPU backend, side by side
    /// with `scripts/bench_vs_torch.py --json` given as `--torch`.
    Train(crate::bench_train::TrainBenchArgs),
    /// Evaluation of a trained 1-bit classifier on the packed popcount kernels vs its float
    /// evaluation (Burn here; PyTorch through `scripts/bench_vs_torch.py --packed`).
    Packed(crate::bench_packed::PackedBenchArgs),
}

/// Arguments of `bllm bench kernels`.
#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    /// Input features of the weight matrix.
    #[arg(long, default_value_t = 4096)]
    pub d_in: usize,
    /// Output features of the weight matrix.
    #[arg(long, default_value_t = 4096)]
    pub d_out: usize,
    /// Batch sizes (activation rows).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub batch: Vec<usize>,
    /// Where the CubeCL kernels run besides the CPU paths: cpu (none), wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Database rows of the Hamming top-k benchmark (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub db_rows: usize,
    /// Bits per code of the Hamming benchmark.
    #[arg(long, default_value_t = 256)]
    pub bits: usize,
    /// Query counts of the Hamming benchmark.
    #[arg(long, value_delimiter = ',', default_value = "16,256")]
    pub queries: Vec<usize>,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Seconds spent per measurement (at least 3 repetitions; the median is reported).
    #[arg(long, default_value_t = 1.0)]
    pub min_secs: f64,
    /// Seed of the random data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured row.
#[derive(Debug, Serialize)]
struct Row {
    section: &'static str,
    shape: String,
    implementation: String,
    device: String,
    median_ms: f64,
    /// Speed-up over the f32 baseline of the same device and shape (`None` for the baseline or
    /// where there is none).
    speedup: Option<f64>,
    /// Parity with the CPU counterpart, where checked.
    check: String,
}

/// Runs `bllm bench …`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Kernels(a) => kernels(a),
        BenchCommand::Models(a) => crate::models::bench_models(a),
        BenchCommand::Train(a) => crate::bench_train::bench_train(a),
        BenchCommand::Packed(a) => crate::bench_packed::bench_packed(a),
    }
}

fn randn(n: usize, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n).map(|_| rng.next_gaussian() as f32).collect()
}

/// Median seconds of `f` over at least 3 runs and `min_secs` (after one warm-up run).
fn time(min_secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut t = Vec::new();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < min_secs && t.len() < 200) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    median(t)
}

/// The JSON in `path`, a file given as `--torch`; the errors name the flag and the file.
pub(crate) fn read_torch_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--torch {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("--torch {}: not JSON", path.display()))
}

/// The median of `t` (the upper one of an even count).
pub(crate) fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn ms(d: &[Duration]) -> f64 {
    median(d.iter().map(Duration::as_secs_f64).collect()) * 1e3
}

fn open_device(name: &str) -> Result<Option<bllm_kernels::device::AnyGpu>> {
    match name {
        "cpu" => Ok(None),
        other => {
            let kind: bllm_kernels::device::DeviceKind = other
                .parse()
                .context("--device: expected cpu, wgpu or cuda")?;
            Ok(Some(bllm_kernels::device::open(kind).with_context(
                || format!("--device {other}: cannot open the kernel device"),
            )?))
        }
    }
}

/// Largest |a − b| over `b`'s magnitude scale (for the parity column).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn kernels(a: KernelBenchArgs) -> Result<()> {
    if a.d_in == 0 || a.d_out == 0 || a.batch.contains(&0) {
        bail!("--d-in, --d-out and every --batch must be at least 1");
    }
    let gpu = open_device(&a.device)?;
    let dev_name = gpu.as_ref().map(|g| g.name());
    let mut rng = SplitMix64::new(a.seed);
    let (d_in, d_out) = (a.d_in, a.d_out);
    let threads = rayon::current_num_threads();
    println!(
        "bllm bench kernels: weights {d_in} × {d_out}, CPU threads {threads}{}",
        dev_name
            .as_ref()
            .map(|n| format!(", device {} ({n})", a.device))
            .unwrap_or_default()
    );

    // Weights: float for the baseline, their signs for the binary paths.
    let wf = randn(d_in * d_out, &mut rng);
    let dev = Default::default();
    let w_t = Tensor::<NdArray, 2>::from_data(
        burn::tensor::TensorData::new(wf.clone(), [d_in, d_out]),
        &dev,
    );
    // Output channel o is column o of the [d_in, d_out] matrix.
    let mut rows = vec![0f32; d_in * d_out];
    for i in 0..d_in {
        for o in 0..d_out {
            rows[o * d_in + i] = wf[i * d_out + o];
        }
    }
    let w_codes = PackedCodes::from_f32_rows(&rows, d_in, d_in)?;
    let epi = Epilogue {
        scales: (0..d_out).map(|o| 0.5 + (o % 7) as f32 * 0.1).collect(),
        bias: vec![0.0; d_out],
    };
    let float_layer = PackedLinear {
        weights: w_codes.clone(),
        epilogue: epi.clone(),
        input: PackedInput::Float,
    };
    let sign_layer = PackedLinear {
        input: PackedInput::Sign {
            threshold: Vec::new(),
            scale: 1.0,
        },
        ..float_layer.clone()
    };
    let f32_bytes = d_in * d_out * 4;
    let packed_bytes = w_codes.byte_len() + d_out * 4;

    let mut out = Vec::new();
    let dev_label = a.device.clone();
    let (gpu_float, gpu_sign) = match &gpu {
        Some(g) => (
            Some(g.upload_linear(&float_layer)?),
            Some(g.upload_linear(&sign_layer)?),
        ),
        None => (None, None),
    };
    for &batch in &a.batch {
        let shape = format!("{batch} × {d_in} → {d_out}");
        let x = randn(batch * d_in, &mut rng);
        let x_t = Tensor::<NdArray, 2>::from_data(
            burn::tensor::TensorData::new(x.clone(), [batch, d_in]),
            &dev,
        );
        let burn_s = time(a.min_secs, || {
            black_box(x_t.clone().matmul(w_t.clone()));
        });
        let mut c = vec![0f32; batch * d_out];
        let sgemm_s = time(a.min_secs, || {
            // SAFETY: the row/column strides describe the three row-major buffers exactly
            // (x: batch × d_in, w: d_in × d_out, c: batch × d_out).
            unsafe {
                matrixmultiply::sgemm(
                    batch,
                    d_in,
                    d_out,
                    1.0,
                    x.as_ptr(),
                    d_in as isize,
                    1,
                    wf.as_ptr(),
                    d_out as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    d_out as isize,
                    1,
                )
            };
            black_box(&c);
        });
        // The stronger of the two float baselines is the reference of the speed-ups.
        let f32_s = burn_s.min(sgemm_s);
        for (name, t) in [
            ("f32 matmul (Burn ndarray)", burn_s),
            ("f32 sgemm (matrixmultiply)", sgemm_s),
        ] {
            out.push(Row {
                section: "matmul",
                shape: shape.clone(),
                implementation: name.into(),
                device: "cpu".into(),
                median_ms: t * 1e3,
                speedup: Some(f32_s / t),
                check: String::new(),
            });
        }
        let bf_s = time(a.min_secs, || {
            black_box(float_layer.forward(&x, batch).ok());
        });
        out.push(Row {
            section: "matmul",
            shape: shape.clone(),
            implementation: "binary W × f32 x (sign flips)".into(),
            device: "cpu".into(),
            median_ms: bf_s * 1e3,
            speedup: Some(f32_s / bf_s),
            check: String::new(),
        });
        let xnor_s = time(a.min_secs, || {
            black_box(sign_layer.forward(&x, batch).ok());
        });
        out.push(Row {
            section: "matmul",
            shape: shape.clone(),
            implementation: "XNOR-popcount, incl. packing x".into(),
            device: "cpu".into(),
            median_ms: xnor_s * 1e3,
            speedup: Some(f32_s / xnor_s),
            check: String::new(),
        });
        let packed_x = sign_layer.pack_input(&x, batch)?;
        let epi_sign = sign_layer.sign_epilogue();
        let xk_s = time(a.min_secs, || {
            black_box(cpu::xnor_matmul(&packed_x, &w_codes, &epi_sign).ok());
        });
        out.push(Row {
            section: "matmul",
            shape: shape.clone(),
            implementation: "XNOR-popcount, x pre-packed".into(),
            device: "cpu".into(),
            median_ms: xk_s * 1e3,
            speedup: Some(f32_s / xk_s),
            check: String::new(),
        });
        if let (Some(g), Some(gf), Some(gs)) = (&gpu, &gpu_float, &gpu_sign) {
            let dev_f32 = device_f32_matmul(&a.device, &x, batch, &wf, d_in, d_out, a.min_secs)?;
            let want_f = float_layer.forward(&x, batch)?;
            let got_f = g.linear_forward(gf, &x, batch)?;
            let t_bf = ms(&g.time_linear(gf, &x, batch, a.min_secs)?);
            let want_s = sign_layer.forward(&x, batch)?;
            let got_s = g.linear_forward(gs, &x, batch)?;
            let t_x = ms(&g.time_linear(gs, &x, batch, a.min_secs)?);
            if let Some(t) = dev_f32 {
                out.push(Row {
                    section: "matmul",
                    shape: shape.clone(),
                    implementation: "f32 matmul (Burn CUDA)".into(),
                    device: dev_label.clone(),
                    median_ms: t,
                    speedup: None,
                    check: String::new(),
                });
            }
            out.push(Row {
                section: "matmul",
                shape: shape.clone(),
                implementation: "binary W × f32 x (CubeCL)".into(),
                device: dev_label.clone(),
                median_ms: t_bf,
                speedup: dev_f32.map(|t| t / t_bf),
                check: format!("max rel Δ {:.1e}", max_rel_diff(&got_f, &want_f)),
            });
            out.push(Row {
                section: "matmul",
                shape: shape.clone(),
                implementation: "XNOR-popcount (CubeCL), x pre-packed".into(),
                device: dev_label.clone(),
                median_ms: t_x,
                speedup: dev_f32.map(|t| t / t_x),
                check: format!("max rel Δ {:.1e}", max_rel_diff(&got_s, &want_s)),
            });
        }
    }

    if a.db_rows > 0 {
        let db_f = randn(a.db_rows * a.bits, &mut rng);
        let db = PackedCodes::from_f32_rows(&db_f, a.bits, a.bits)?;
        drop(db_f);
        let gdb = match &gpu {
            Some(g) => Some(g.upload_codes(&db)?),
            None => None,
        };
        for &nq in &a.queries {
            let qf = randn(nq * a.bits, &mut rng);
            let q = PackedCodes::from_f32_rows(&qf, a.bits, a.bits)?;
            let shape = format!("{nq} q × {} db × {} bits, k {}", a.db_rows, a.bits, a.k);
            let mut want = None;
            let cpu_s = time(a.min_secs, || {
                want = bllm_codes::hamming::search(&db, &q, a.k).ok();
            });
            out.push(Row {
                section: "hamming top-k",
                shape: shape.clone(),
                implementation: "bllm-codes CPU search".into(),
                device: "cpu".into(),
                median_ms: cpu_s * 1e3,
                speedup: None,
                check: String::new(),
            });
            if let (Some(g), Some(gdb)) = (&gpu, &gdb) {
                let got = g.hamming_topk(gdb, &q, a.k)?;
                let same = want.as_ref() == Some(&got);
                let dev_s = time(a.min_secs, || {
                    black_box(g.hamming_topk(gdb, &q, a.k).ok());
                });
                out.push(Row {
                    section: "hamming top-k",
                    shape: shape.clone(),
                    implementation: "CubeCL top-k, incl. query upload + readback".into(),
                    device: dev_label.clone(),
                    median_ms: dev_s * 1e3,
                    speedup: Some(cpu_s / dev_s),
                    check: if same {
                        "identical to CPU".into()
                    } else {
                        "DIFFERS from CPU".into()
                    },
                });
                if !same {
                    print_table(&out);
                    bail!("device Hamming top-k differs from the CPU search ({shape})");
                }
            }
        }
    }

    print_table(&out);
    println!(
        "\nweights: f32 {:.1} MiB vs packed signs + scales {:.2} MiB ({:.1}× smaller)",
        f32_bytes as f64 / 1048576.0,
        packed_bytes as f64 / 1048576.0,
        f32_bytes as f64 / packed_bytes as f64
    );
    println!(
        "speed-up = the faster f32 baseline on the same device / this row's time (matmul), or \
         CPU search time / device time (top-k).\nThe review's expectation: binary kernels give \
         about 3–5× over strong float GPU baselines end to end, not the 48×–64× of \
         operation-count arguments. CPU rows compare against the faster of Burn's ndarray matmul \
         and matrixmultiply's sgemm on this machine's {threads} threads — not a GPU baseline; \
         at batch 1 the f32 weights ({:.0} MiB) stream from memory while the packed ones fit \
         in cache, which is most of the batch-1 ratio.",
        f32_bytes as f64 / 1048576.0
    );
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&out)?;
        bllm_codes::io::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Burn's f32 matmul on the device, median ms over synced runs (as `Gpu::time_linear`); `None` where this
/// build has no Burn backend for the device (wgpu).
#[allow(unused_variables)]
fn device_f32_matmul(
    device: &str,
    x: &[f32],
    batch: usize,
    w: &[f32],
    d_in: usize,
    d_out: usize,
    min_secs: f64,
) -> Result<Option<f64>> {
    #[cfg(feature = "cuda")]
    if device == "cuda" {
        use burn::backend::Cuda;
        use burn::tensor::backend::Backend;
        let dev = burn::backend::cuda::CudaDevice::default();
        let xt = Tensor::<Cuda, 2>::from_data(
            burn::tensor::TensorData::new(x.to_vec(), [batch, d_in]),
            &dev,
        );
        let wt = Tensor::<Cuda, 2>::from_data(
            burn::tensor::TensorData::new(w.to_vec(), [d_in, d_out]),
            &dev,
        );
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 4 || (start.elapsed().as_secs_f64() < min_secs && times.len() < 201) {
            let s = Instant::now();
            black_box(xt.clone().matmul(wt.clone()));
            <Cuda as Backend>::sync(&dev).map_err(|e| anyhow::anyhow!("CUDA sync: {e:?}"))?;
            times.push(s.elapsed());
        }
        times.remove(0);
        return Ok(Some(ms(&times)));
    }
    Ok(None)
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<14} {:<34} {:<44} {:<6} {:>11} {:>9}  check",
        "section", "shape", "implementation", "device", "median ms", "speed-up"
    );
    for r in rows {
        println!(
            "{:<14} {:<34} {:<44} {:<6} {:>11.3} {:>9}  {}",
            r.section,
            r.shape,
            r.implementation,
            r.device,
            r.median_ms,
            r.speedup
                .map(|s| format!("{s:.2}×"))
                .unwrap_or_else(|| "—".into()),
            r.check
        );
    }
}
