//! `bllm embed`, `bllm lm eval|generate` and `bllm models ls`: pretrained models on the CPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bllm_models::lm::{Sampling, generate, perplexity};
use bllm_models::{Llama, SentenceEncoder};
use burn::tensor::backend::Backend;
use burn_flex::Flex;
use burn_ndarray::NdArray;
use clap::{Args, Subcommand, ValueEnum};

/// The CPU backend a pretrained model runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuBackend {
    /// burn-ndarray (matrixmultiply), the backend training uses.
    Ndarray,
    /// burn-flex (gemm, SIMD, rayon).
    Flex,
}

/// Element type of `bllm embed`'s output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// float16 (what `datasets/*/embeddings.npy` use).
    F16,
    /// float32.
    F32,
}

/// `bllm embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// CPU backend (flex: 2× faster prefill than ndarray, same results within 2e-7; both
    /// pass the parity tests).
    #[arg(long, value_enum, default_value_t = CpuBackend::Flex)]
    pub backend: CpuBackend,
    /// A sentence-transformers or Hugging Face BERT directory (e.g. models/minilm).
    #[arg(long)]
    pub model: PathBuf,
    /// Text file, one text per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Output `.npy` (one row per line of the input, in order), written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Output element type.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Embed only this tab-separated field of each line (0-based), e.g. 1 for
    /// `datasets/kjv-minilm/verses.txt`'s `reference<TAB>text` lines.
    #[arg(long, value_name = "N")]
    pub tab_field: Option<usize>,
}

/// `bllm lm …`.
#[derive(Debug, Subcommand)]
pub enum LmCommand {
    /// Perplexity and bits per byte of a text file.
    Eval(LmEvalArgs),
    /// Continue a prompt (a sanity check of the model and its tokenizer).
    Generate(LmGenerateArgs),
}

/// `bllm lm eval`.
#[derive(Debug, Args)]
pub struct LmEvalArgs {
    /// CPU backend (flex: 2× faster prefill than ndarray, same results within 2e-7; both
    /// pass the parity tests).
    #[arg(long, value_enum, default_value_t = CpuBackend::Flex)]
    pub backend: CpuBackend,
    /// A Llama GGUF file, a directory with one, or a Hugging Face Llama directory.
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text file.
    #[arg(long)]
    pub text: PathBuf,
    /// Window in tokens: the text is cut into consecutive windows scored independently.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Only the first N bytes of the text (cut after the last newline within them).
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<usize>,
    /// Also write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Post-training quantisation of the block projections before scoring, from the float
    /// weights, without training: `xnor` (sign(W) · per-channel mean|W|), `svid` (OneBit's
    /// sign(W) ⊙ g hᵀ, g hᵀ the rank-1 approximation of |W|), `bitnet` (BitNet b1.58's
    /// absmean ternary weights and int8 activations).
    #[arg(long, value_enum)]
    pub ptq: Option<Ptq>,
    /// The projections `--ptq` quantises (checkpoint names, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub ptq_projections: Vec<String>,
    /// The layers `--ptq` quantises, `A..B` (B exclusive; default all).
    #[arg(long, value_name = "A..B")]
    pub ptq_layers: Option<String>,
}

/// A post-training quantiser of `bllm lm eval --ptq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ptq {
    /// sign(W) · mean|W| per output channel.
    Xnor,
    /// sign(W) ⊙ g hᵀ (OneBit's SVID).
    Svid,
    /// Absmean ternary weights, int8 activations (BitNet b1.58).
    Bitnet,
}

/// Applies `--ptq` to `model`.
fn apply_ptq<B: Backend>(model: Llama<B>, a: &LmEvalArgs) -> Result<Llama<B>> {
    use bllm_models::LLAMA_PROJECTIONS;
    use bllm_nn::{BinaryOptions, ProjKind, Scaling};
    let Some(ptq) = a.ptq else {
        return Ok(model);
    };
    for p in &a.ptq_projections {
        if !LLAMA_PROJECTIONS.contains(&p.as_str()) {
            bail!(
                "--ptq-projections: unknown projection {p:?}; expected some of {}",
                LLAMA_PROJECTIONS.join(", ")
            );
        }
    }
    let n = model.layers.len();
    let layers = match &a.ptq_layers {
        None => 0..n,
        Some(r) => {
            let parsed = r.split_once("..").and_then(|(x, y)| {
                Some((
                    x.trim().parse::<usize>().ok()?,
                    y.trim().parse::<usize>().ok()?,
                ))
            });
            match parsed {
                Some((x, y)) if x < y && y <= n => x..y,
                _ => {
                    bail!("--ptq-layers {r:?}: expected A..B with A < B ≤ {n} (the model's layers)")
                }
            }
        }
    };
    let opts = BinaryOptions {
        scaling: match ptq {
            Ptq::Svid => Scaling::Svid,
            _ => Scaling::PerChannel { learnable: true },
        },
        ..BinaryOptions::default()
    };
    let kind = if ptq == Ptq::Bitnet {
        ProjKind::Bitnet
    } else {
        ProjKind::Binary
    };
    let names = a.ptq_projections.clone();
    Ok(model.quantized(
        |i, name| {
            if layers.contains(&i) && names.iter().any(|p| p == name) {
                kind
            } else {
                ProjKind::Float
            }
        },
        &opts,
    )?)
}

/// `bllm lm generate`.
#[derive(Debug, Args)]
pub struct LmGenerateArgs {
    /// CPU backend (flex: 2× faster prefill than ndarray, same results within 2e-7; both
    /// pass the parity tests).
    #[arg(long, value_enum, default_value_t = CpuBackend::Flex)]
    pub backend: CpuBackend,
    /// A Llama GGUF file, a directory with one, or a Hugging Face Llama directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the ChatML turn format instruct models such as SmolLM2 use
    /// (`<|im_start|>user … <|im_end|> <|im_start|>assistant`).
    #[arg(long)]
    pub chat: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `bllm models …`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the models in a folder (default `models/`), what each is and whether it loads.
    Ls(ModelsLsArgs),
}

/// `bllm models ls`.
#[derive(Debug, Args)]
pub struct ModelsLsArgs {
    /// The folder.
    #[arg(long, default_value = "models")]
    pub dir: PathBuf,
}

fn bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {what}  {{elapsed}} < {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

/// `bllm embed`.
pub fn embed(a: EmbedArgs) -> Result<()> {
    let (m, load_s, secs) = embed_file(a.backend, &a.model, &a.input, a.tab_field, a.batch)?;
    let (n, d) = (m.rows(), m.cols());
    let out = m.as_slice();
    match a.dtype {
        Dtype::F32 => bllm_codes::io::npy::write_f32_npy(&a.out, &m)?,
        Dtype::F16 => {
            let h: Vec<half::f16> = out.iter().map(|&x| half::f16::from_f32(x)).collect();
            bllm_codes::io::npy::write_f16_npy(&a.out, n, d, &h)?
        }
    }
    println!(
        "embedded {n} texts → {} ({n} × {d}, {:?}) in {secs:.1} s ({:.1} texts/s; model loaded in {load_s:.1} s)",
        a.out.display(),
        a.dtype,
        n as f64 / secs
    );
    Ok(())
}

/// Texts of `input` (one per line; with `tab_field`, only that 0-based tab-separated field)
/// embedded by the sentence encoder in `model` on the CPU backend `backend`, `batch` texts per
/// forward pass (what `bllm embed` writes). Also returns the model-load and embedding seconds.
pub(crate) fn embed_file(
    backend: CpuBackend,
    model: &Path,
    input: &Path,
    tab_field: Option<usize>,
    batch: usize,
) -> Result<(bllm_codes::FloatMatrix, f64, f64)> {
    match backend {
        CpuBackend::Ndarray => embed_file_on::<NdArray<f32>>(model, input, tab_field, batch),
        CpuBackend::Flex => embed_file_on::<Flex>(model, input, tab_field, batch),
    }
}

fn embed_file_on<B: Backend>(
    model: &Path,
    input: &Path,
    tab_field: Option<usize>,
    batch: usize,
) -> Result<(bllm_codes::FloatMatrix, f64, f64)> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = Default::default();
    let t0 = Instant::now();
    let enc = SentenceEncoder::<B>::load(model, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let mut texts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = match tab_field {
            None => line,
            Some(k) => line.split('\t').nth(k).with_context(|| {
                format!(
                    "{}:{}: no tab-separated field {k} (--tab-field is 0-based)",
                    input.display(),
                    i + 1
                )
            })?,
        };
        texts.push(t);
    }
    if texts.is_empty() {
        bail!("{}: no lines to embed", input.display());
    }
    let bar = bar(texts.len() as u64, "texts");
    if let Some(b) = &bar {
        crate::log::show_bar(b);
    }
    let t1 = Instant::now();
    let out = enc.encode(&texts, batch, &device, |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    });
    if let Some(b) = &bar {
        crate::log::hide_bar();
        b.finish_and_clear();
    }
    let out = out?;
    let secs = t1.elapsed().as_secs_f64();
    let m = bllm_codes::FloatMatrix::new(texts.len(), enc.dim(), out)?;
    Ok((m, load_s, secs))
}

/// Reads `path`, keeping only the first `max_bytes` bytes cut after their last newline.
fn read_text(path: &Path, max_bytes: Option<usize>) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = match max_bytes {
        Some(m) if m < bytes.len() => {
            let cut = bytes[..m]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(m, |p| p + 1);
            bytes[..cut].to_vec()
        }
        _ => bytes,
    };
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// `bllm lm …`.
pub fn lm(c: LmCommand) -> Result<()> {
    let backend = match &c {
        LmCommand::Eval(a) => a.backend,
        LmCommand::Generate(a) => a.backend,
    };
    match backend {
        CpuBackend::Ndarray => lm_on::<NdArray<f32>>(c),
        CpuBackend::Flex => lm_on::<Flex>(c),
    }
}

fn lm_on<B: Backend>(c: LmCommand) -> Result<()> {
    let device = Default::default();
    match c {
        LmCommand::Eval(a) => {
            let t0 = Instant::now();
            let mut m = Llama::<B>::load(&a.model, &device)?;
            m.model = apply_ptq(m.model, &a)?;
            if let Some(p) = a.ptq {
                eprintln!(
                    "post-training quantisation: {p:?} on {} in layers {}",
                    a.ptq_projections.join(","),
                    a.ptq_layers.as_deref().unwrap_or("all")
                );
            }
            let load_s = t0.elapsed().as_secs_f64();
            let text = read_text(&a.text, a.max_bytes)?;
            let t1 = Instant::now();
            let bar = bar(0, "windows");
            if let Some(b) = &bar {
                crate::log::show_bar(b);
            }
            let p = perplexity(&m.model, &m.tokenizer, &text, a.context, &device, |k, n| {
                if let Some(b) = &bar {
                    b.set_length(n as u64);
                    b.set_position(k as u64);
                }
            });
            if let Some(b) = &bar {
                crate::log::hide_bar();
                b.finish_and_clear();
            }
            let p = p?;
            let secs = t1.elapsed().as_secs_f64();
            println!(
                "{}: {} bytes, {} tokens ({} predicted, windows of {}): mean NLL {:.4} nats, perplexity {:.3}, {:.4} bits/byte  [{:.1} s, {:.0} tokens/s; load {load_s:.1} s]",
                a.text.display(),
                p.bytes,
                p.tokens,
                p.predicted,
                p.window,
                p.mean_nll,
                p.perplexity,
                p.bits_per_byte,
                secs,
                p.tokens as f64 / secs
            );
            if let Some(j) = &a.json {
                // The score with what was scored: model, text, the PTQ setting and the model's
                // bytes (`bllm_nn::summary`: packed weights, metadata, scales).
                let sum = bllm_nn::summary(&m.model);
                let mut v = serde_json::to_value(&p)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("model".into(), a.model.display().to_string().into());
                    o.insert("text".into(), a.text.display().to_string().into());
                    o.insert(
                        "ptq".into(),
                        a.ptq.map(|q| format!("{q:?}").to_lowercase()).into(),
                    );
                    if a.ptq.is_some() {
                        o.insert("ptq_projections".into(), a.ptq_projections.clone().into());
                        o.insert("ptq_layers".into(), a.ptq_layers.clone().into());
                    }
                    o.insert("model_bytes".into(), sum.total_bytes().into());
                    o.insert(
                        "model_float32_bytes".into(),
                        sum.float32_equivalent_bytes().into(),
                    );
                }
                bllm_codes::io::write_atomic(j, serde_json::to_string_pretty(&v)?.as_bytes())
                    .with_context(|| format!("writing {}", j.display()))?;
            }
        }
        LmCommand::Generate(a) => {
            let m = Llama::<B>::load(&a.model, &device)?;
            let prompt = if a.chat {
                format!(
                    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                    a.prompt
                )
            } else {
                a.prompt.clone()
            };
            let ids = m.tokenizer.encode(&prompt, false)?;
            let eos = if a.chat {
                m.tokenizer.token_to_id("<|im_end|>").or(m.tokenizer.eos)
            } else {
                m.tokenizer.eos
            };
            let t0 = Instant::now();
            let s = Sampling {
                temperature: a.temperature,
                seed: a.seed,
                max_tokens: a.max_tokens,
            };
            let out = generate(&m.model, &ids, eos, s, &device, |_| {})?;
            let secs = t0.elapsed().as_secs_f64();
            let text = m.tokenizer.decode(&out, true)?;
            println!("{}{}", if a.chat { "" } else { &a.prompt }, text);
            eprintln!(
                "[{} prompt tokens, {} new in {secs:.1} s, {:.1} tokens/s]",
                ids.len(),
                out.len(),
                out.len() as f64 / secs
            );
        }
    }
    Ok(())
}

/// `bllm models ls`.
pub fn models(c: ModelsCommand) -> Result<()> {
    let ModelsCommand::Ls(a) = c;
    let rd = std::fs::read_dir(&a.dir).with_context(|| {
        format!(
            "reading {} (fetch the models with `python3 scripts/fetch_models.py`)",
            a.dir.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    for d in dirs {
        let size: u64 = std::fs::read_dir(&d)
            .map(|r| {
                r.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let what = describe(&d);
        println!(
            "{:<12} {:>8.1} MB  {what}",
            d.file_name().unwrap_or_default().to_string_lossy(),
            size as f64 / 1e6
        );
    }
    Ok(())
}

fn describe(d: &Path) -> String {
    let cfg = d.join("config.json");
    if cfg.is_file() {
        if let Ok(c) = bllm_models::BertConfig::from_file(&cfg) {
            return format!(
                "BERT encoder: {} layers × {}, {} heads, vocab {}",
                c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size
            );
        }
        return match bllm_models::LlamaConfig::from_file(&cfg) {
            Ok(c) => format!(
                "Llama decoder: {} layers × {}, {}/{} heads, vocab {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size
            ),
            Err(e) => format!("unreadable: {e}"),
        };
    }
    let gguf = std::fs::read_dir(d).ok().and_then(|r| {
        r.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    });
    match gguf {
        Some(g) => match bllm_models::Checkpoint::open_gguf(&g) {
            Ok(ck) => match ck
                .gguf()
                .map(|f| bllm_models::LlamaConfig::from_gguf(f, &g, !ck.contains("output.weight")))
            {
                Some(Ok(c)) => format!(
                    "Llama decoder (GGUF {}): {} layers × {}, {}/{} heads, vocab {}",
                    g.file_name().unwrap_or_default().to_string_lossy(),
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.vocab_size
                ),
                Some(Err(e)) => format!("unreadable: {e}"),
                None => "unreadable".into(),
            },
            Err(e) => format!("unreadable: {e}"),
        },
        None => "no config.json and no .gguf".into(),
    }
}

/// `bllm bench models`.
#[derive(Debug, Args)]
pub struct ModelsBenchArgs {
    /// CPU backend (flex: 2× faster prefill than ndarray, same results within 2e-7; both
    /// pass the parity tests).
    #[arg(long, value_enum, default_value_t = CpuBackend::Flex)]
    pub backend: CpuBackend,
    /// The folder with `minilm/` and `smollm2/`.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Texts for the encoder (`reference<TAB>text` lines; the text is embedded).
    #[arg(long, default_value = "datasets/kjv-minilm/verses.txt")]
    pub verses: PathBuf,
    /// Text for the decoder's tokenizer and prefill.
    #[arg(long, default_value = "datasets/kjv-text/valid.txt")]
    pub text: PathBuf,
    /// Verses to embed (the first N).
    #[arg(long, default_value_t = 10_000)]
    pub verses_count: usize,
    /// Prefill context (batch 1).
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Prefill repeats after one warm-up (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Results of `scripts/bench_models_vs_torch.py --json` to print side by side.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Write the numbers as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `bllm bench models`: the encoder's and decoder's throughput and their tokenizers', with the
/// same workloads as `scripts/bench_models_vs_torch.py`.
pub fn bench_models(a: ModelsBenchArgs) -> Result<()> {
    match a.backend {
        CpuBackend::Ndarray => bench_models_on::<NdArray<f32>>(a),
        CpuBackend::Flex => bench_models_on::<Flex>(a),
    }
}

fn bench_models_on<B: Backend>(a: ModelsBenchArgs) -> Result<()> {
    let device = Default::default();
    let mut out = serde_json::Map::new();
    let verses = std::fs::read_to_string(&a.verses)
        .with_context(|| format!("reading {}", a.verses.display()))?;
    let texts: Vec<&str> = verses
        .lines()
        .map(|l| l.split_once('\t').map_or(l, |(_, t)| t))
        .take(a.verses_count)
        .collect();
    let enc = SentenceEncoder::<B>::load(&a.models.join("minilm"), &device)?;
    // Tokenizer alone: one text at a time, one thread.
    let t = Instant::now();
    let mut n = 0;
    for s in &texts {
        n += enc.token_ids(s)?.len();
    }
    let dt = t.elapsed().as_secs_f64();
    out.insert(
        "minilm_tokenize".into(),
        serde_json::json!({"texts": texts.len(), "seconds": dt, "texts_per_s": texts.len() as f64 / dt, "tokens_per_s": n as f64 / dt}),
    );
    enc.encode(&texts[..256.min(texts.len())], 128, &device, |_| {})?;
    let t = Instant::now();
    enc.encode(&texts, 128, &device, |_| {})?;
    let dt = t.elapsed().as_secs_f64();
    out.insert(
        "minilm_encode".into(),
        serde_json::json!({"texts": texts.len(), "seconds": dt, "texts_per_s": texts.len() as f64 / dt, "tokens_per_s": n as f64 / dt}),
    );
    drop(enc);
    let m = Llama::<B>::load(&a.models.join("smollm2"), &device)?;
    let whole = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let t = Instant::now();
    let mut n = 0;
    for l in whole.split('\n') {
        n += m.tokenizer.encode(l, false)?.len();
    }
    let dt_lines = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ids = m.tokenizer.encode(&whole, false)?;
    let dt_whole = t.elapsed().as_secs_f64();
    out.insert(
        "smollm2_tokenize".into(),
        serde_json::json!({"bytes": whole.len(), "lines_mb_per_s": whole.len() as f64 / dt_lines / 1e6, "lines_tokens_per_s": n as f64 / dt_lines, "whole_mb_per_s": whole.len() as f64 / dt_whole / 1e6}),
    );
    if ids.len() < a.context {
        bail!(
            "{} has {} tokens, fewer than --context {}",
            a.text.display(),
            ids.len(),
            a.context
        );
    }
    let x: Vec<i64> = ids[..a.context].iter().map(|&i| i as i64).collect();
    let ctx = bllm_ste::Ctx::default().for_eval();
    let run = || {
        let t = Instant::now();
        let input = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(x.clone(), [1, a.context]),
            &device,
        );
        let l = m.model.forward(input, None, &ctx);
        let _ = l.into_data();
        t.elapsed().as_secs_f64()
    };
    run();
    let times: Vec<f64> = (0..a.repeats.max(1)).map(|_| run()).collect();
    let med = crate::bench::median(times.clone());
    out.insert(
        "smollm2_prefill".into(),
        serde_json::json!({"context": a.context, "batch": 1, "seconds": times, "median_s": med, "tokens_per_s": a.context as f64 / med}),
    );
    let torch: Option<serde_json::Value> = match &a.torch {
        Some(p) => Some(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let rows = [
        (
            "minilm encode (bs 128)",
            "minilm_encode",
            "texts_per_s",
            "texts/s",
        ),
        (
            "smollm2 prefill (bs 1)",
            "smollm2_prefill",
            "tokens_per_s",
            "tokens/s",
        ),
        (
            "minilm tokenizer",
            "minilm_tokenize",
            "texts_per_s",
            "texts/s",
        ),
        (
            "smollm2 tokenizer, lines",
            "smollm2_tokenize",
            "lines_mb_per_s",
            "MB/s",
        ),
        (
            "smollm2 tokenizer, whole file",
            "smollm2_tokenize",
            "whole_mb_per_s",
            "MB/s",
        ),
    ];
    println!(
        "{:<30} {:>12} {:>12} {:>9}  unit",
        "workload", "bllm", "reference", "ratio"
    );
    for (label, key, field, unit) in rows {
        let ours = out[key][field].as_f64().unwrap_or(f64::NAN);
        let theirs = torch
            .as_ref()
            .and_then(|t| t["results"][key][field].as_f64())
            .unwrap_or(f64::NAN);
        println!(
            "{label:<30} {ours:>12.1} {theirs:>12.1} {:>8.2}×  {unit}",
            ours / theirs
        );
    }
    if let Some(j) = &a.json {
        let tmp = j.with_extension("json.tmp-bench");
        std::fs::write(&tmp, serde_json::to_string_pretty(&out)?)?;
        std::fs::rename(&tmp, j)?;
    }
    Ok(())
}
