//! Memory estimates: how many bytes a recipe's run needs, computed from its shapes alone
//! (nothing is allocated), and the limit `bllm validate|run|sweep` compares them with.
//!
//! The estimate counts float32 parameters, their gradients, the optimizer state (Adam/AdamW:
//! two moments, SGD: one momentum, Bop+Adam: one Bop momentum per binary weight and two Adam
//! moments per float parameter), the activations autodiff keeps for the backward pass of one
//! training step (or the evaluation forward, whichever is larger), and the data held in
//! memory. It is a **lower bound** of the right order of magnitude: it leaves out the process
//! itself (code, allocator, thread stacks: tens of MiB), short-lived temporaries of the
//! backward pass and monitors' extra copies, so that it never refuses a recipe that runs.
//! All arithmetic is in `f64` and saturates to `u64::MAX` bytes, so absurd shapes
//! (`model.hidden = [100000000]`, `model.d_model = 1e9`) give a huge estimate, never a panic.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::{LmModelSection, MoeData, MoeSection, OptimizerKind, Recipe, Task, TextSection};

/// Bytes of one float32.
const F32: f64 = 4.0;
/// The vocabulary of the byte-level models.
const VOCAB: f64 = 256.0;
/// Held-out windows the LM evaluation runs per forward pass (`bllm_train::lm::evaluate`).
const EVAL_CHUNK: f64 = 64.0;

/// A recipe's estimated memory, in bytes per part (see the module docs for what each counts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Float32 parameters (binary layers keep float latent weights).
    pub parameters: u64,
    /// Gradients of the trainable parameters.
    pub gradients: u64,
    /// Optimizer state (moments, momenta).
    pub optimizer: u64,
    /// Activations kept for the backward pass of one step (or the evaluation forward).
    pub activations: u64,
    /// Data held in memory (datasets, corpora, embeddings and their copies).
    pub data: u64,
    /// Whether `data` counts everything; `false` when a dataset's size is unknown without
    /// reading it (then `notes` says which).
    pub data_counted: bool,
    /// What the estimate could not count, for the breakdown.
    pub notes: Vec<String>,
}

impl MemoryEstimate {
    /// The sum of every part (saturating).
    pub fn total(&self) -> u64 {
        [
            self.parameters,
            self.gradients,
            self.optimizer,
            self.activations,
            self.data,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }
}

impl fmt::Display for MemoryEstimate {
    /// `parameters 48.0 MiB + gradients 48.0 MiB + optimizer 96.0 MiB + activations 1.2 GiB +
    /// data 35.0 MiB = 1.4 GiB`, then any notes in parentheses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parameters {} + gradients {} + optimizer {} + activations {} + data {} = {}",
            format_bytes(self.parameters),
            format_bytes(self.gradients),
            format_bytes(self.optimizer),
            format_bytes(self.activations),
            format_bytes(self.data),
            format_bytes(self.total())
        )?;
        if !self.notes.is_empty() {
            write!(f, " ({})", self.notes.join("; "))?;
        }
        Ok(())
    }
}

/// `bytes` in binary units with one decimal: `512 B`, `1.5 KiB`, `48.0 MiB`, `1.2 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Parses a memory size: a non-negative number with an optional unit — `B`, binary `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB` or decimal `KB`, `MB`, `GB`, `TB` (case-insensitive) — or
/// `none` (no limit, `Ok(None)`). `8GiB`, `512MiB`, `1.5G`, `1000000` (bytes). The error is
/// the expected syntax, for the caller to prefix with the flag or variable it came from.
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let expected = || {
        format!(
            "expected a size such as 8GiB, 512MiB, 1.5G or 1000000 (bytes), or none; got {text:?}"
        )
    };
    let s = text.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| expected())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(expected()),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(expected());
    }
    Ok(Some(bytes as u64))
}

/// `MemAvailable` of `/proc/meminfo` in bytes; `None` where there is no such file (other
/// operating systems) or it cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

/// `MemAvailable` (kB) of a `/proc/meminfo` text, in bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Where a [`MemoryLimit`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// The machine's available memory (`MemAvailable`), the default.
    Available,
    /// The `--memory-limit` flag, with its text.
    Flag(String),
    /// The `BLLM_MEMORY_LIMIT` environment variable, with its text.
    Env(String),
    /// Neither was set and the available memory is unknown (no `/proc/meminfo`).
    Unknown,
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Available => write!(
                f,
                "available memory; override with --memory-limit or BLLM_MEMORY_LIMIT"
            ),
            Self::Flag(t) => write!(f, "--memory-limit {t}; `none` disables the check"),
            Self::Env(t) => write!(f, "BLLM_MEMORY_LIMIT={t}; `none` disables the check"),
            Self::Unknown => write!(f, "available memory unknown on this system"),
        }
    }
}

/// The memory a run may use: `None` bytes = no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit in bytes (`None`: no check).
    pub bytes: Option<u64>,
    /// Where it came from.
    pub source: LimitSource,
}

impl MemoryLimit {
    /// The limit from the `--memory-limit` flag (wins), else the `BLLM_MEMORY_LIMIT` value,
    /// else the machine's [`available_memory`]. Errors name the flag or the variable and the
    /// expected syntax.
    pub fn resolve(flag: Option<&str>, env: Option<&str>) -> Result<Self, String> {
        Self::from_parts(flag, env, available_memory)
    }

    /// [`MemoryLimit::resolve`] with the available memory given (`available` is only called
    /// when neither the flag nor the variable is set).
    pub fn from_parts(
        flag: Option<&str>,
        env: Option<&str>,
        available: impl FnOnce() -> Option<u64>,
    ) -> Result<Self, String> {
        if let Some(t) = flag {
            let bytes = parse_size(t).map_err(|e| format!("--memory-limit: {e}"))?;
            return Ok(Self {
                bytes,
                source: LimitSource::Flag(t.to_owned()),
            });
        }
        if let Some(t) = env {
            let bytes = parse_size(t).map_err(|e| format!("BLLM_MEMORY_LIMIT: {e}"))?;
            return Ok(Self {
                bytes,
                source: LimitSource::Env(t.to_owned()),
            });
        }
        Ok(match available() {
            Some(b) => Self {
                bytes: Some(b),
                source: LimitSource::Available,
            },
            None => Self {
                bytes: None,
                source: LimitSource::Unknown,
            },
        })
    }

    /// No limit.
    pub fn none() -> Self {
        Self {
            bytes: None,
            source: LimitSource::Flag("none".into()),
        }
    }

    /// Estimates `recipe` and compares it with the limit; `label` names the recipe (or the
    /// sweep run) in the error.
    pub fn check(
        &self,
        label: &str,
        recipe: &Recipe,
    ) -> Result<MemoryEstimate, Box<MemoryExceeded>> {
        let estimate = estimate(recipe);
        match self.bytes {
            Some(limit) if estimate.total() > limit => Err(Box::new(MemoryExceeded {
                label: label.to_owned(),
                estimate,
                limit,
                source: self.source.clone(),
            })),
            _ => Ok(estimate),
        }
    }
}

impl fmt::Display for MemoryLimit {
    /// `22.1 GiB (available memory; …)` or `none (…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes {
            Some(b) => write!(f, "{} ({})", format_bytes(b), self.source),
            None => write!(f, "none ({})", self.source),
        }
    }
}

/// A recipe whose estimate exceeds the memory limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryExceeded {
    /// The recipe (or sweep run) it names.
    pub label: String,
    /// The estimate.
    pub estimate: MemoryEstimate,
    /// The limit in bytes.
    pub limit: u64,
    /// Where the limit came from.
    pub source: LimitSource,
}

impl fmt::Display for MemoryExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recipe {:?}: needs an estimated {} ({}) but the memory limit is {} ({})",
            self.label,
            format_bytes(self.estimate.total()),
            self.estimate,
            format_bytes(self.limit),
            self.source
        )
    }
}

impl std::error::Error for MemoryExceeded {}

/// Floats to bytes, saturating.
fn bytes(floats: f64) -> u64 {
    // `as` saturates (and maps NaN, which these sums cannot produce, to 0).
    (floats * F32) as u64
}

/// Trainable parameter counts split by what the optimizer keeps per parameter.
#[derive(Clone, Copy, Default)]
struct Params {
    /// Float parameters (Adam moments under Bop+Adam).
    float: f64,
    /// Latent weights of binary / ternary layers (one Bop momentum under Bop+Adam).
    binary: f64,
}

impl Params {
    fn total(self) -> f64 {
        self.float + self.binary
    }

    fn add(&mut self, other: Params) {
        self.float += other.float;
        self.binary += other.binary;
    }
}

/// Optimizer state in floats for `p` trainable parameters.
fn optimizer_floats(kind: OptimizerKind, p: Params) -> f64 {
    match kind {
        OptimizerKind::Adam | OptimizerKind::Adamw => 2.0 * p.total(),
        OptimizerKind::Sgd => p.total(),
        OptimizerKind::BopAdam => p.binary + 2.0 * p.float,
    }
}

/// One training phase: all parameters, the trainable ones, activations (floats), data bytes.
struct Phase {
    params: f64,
    trainable: Params,
    activations: f64,
}

impl Phase {
    fn estimate(&self, kind: OptimizerKind, data: &Data) -> MemoryEstimate {
        MemoryEstimate {
            parameters: bytes(self.params),
            gradients: bytes(self.trainable.total()),
            optimizer: bytes(optimizer_floats(kind, self.trainable)),
            activations: bytes(self.activations),
            data: data.bytes as u64,
            data_counted: data.notes.is_empty(),
            notes: data.notes.clone(),
        }
    }
}

/// Data bytes and what was not counted.
#[derive(Default)]
struct Data {
    bytes: f64,
    notes: Vec<String>,
}

/// Estimates the memory of one run of `recipe` (a sweep's runs are estimated one by one).
pub fn estimate(recipe: &Recipe) -> MemoryEstimate {
    let opt = recipe.optimizer.kind;
    // Activations are kept for one micro-batch at a time (`train.accumulate`).
    let batch = (recipe.train.batch_size / recipe.train.accumulate.max(1)) as f64;
    match &recipe.task {
        Task::Classify { data, model } => {
            let dims: Vec<f64> = std::iter::once(data.dim)
                .chain(model.hidden.iter().copied())
                .chain(std::iter::once(data.classes))
                .map(|d| d as f64)
                .collect();
            let n = dims.len() - 1;
            let mut p = Params::default();
            let (mut train, mut eval) = (batch * dims[0], 0f64);
            let eval_rows = data.eval_size as f64;
            for i in 0..n {
                let (din, dout) = (dims[i], dims[i + 1]);
                let float = (i == 0 && model.float_first) || (i == n - 1 && model.float_last);
                if float {
                    p.float += din * dout + dout;
                } else {
                    // Latent weights, bias, a per-channel scale; the forward materialises the
                    // binarized weights and the estimator's straight-through term.
                    p.binary += din * dout;
                    p.float += 2.0 * dout;
                    train += 2.0 * din * dout;
                }
                // The layer's output and its activation (ReLU or estimator).
                train += 2.0 * batch * dout;
                eval = eval.max(eval_rows * (din + dout) + if float { 0.0 } else { din * dout });
            }
            // Cross-entropy's log-softmax.
            train += batch * dims[n];
            let rows = (data.train_size + data.eval_size) as f64;
            let d = Data {
                // Features and i64 labels, plus the held-out tensors.
                bytes: (rows * dims[0] + eval_rows * dims[0]) * F32 + (rows + eval_rows) * 8.0,
                notes: Vec::new(),
            };
            Phase {
                params: p.total(),
                trainable: p,
                activations: train.max(eval),
            }
            .estimate(opt, &d)
        }
        Task::Retrieval(t) => retrieval(recipe, t),
        Task::Lm(t) if t.model.pretrained.is_some() => pretrained_llama(
            t.model.pretrained.as_deref().unwrap_or_default(),
            "the student and (with [distill]) the teacher are loaded as f32 — a 4-bit GGUF \
             takes about 7× that each — plus Adam state for the quantised projections",
        ),
        Task::Lm(t) => {
            let m = Lm::of(&t.model, None);
            let data = text_data(&[("data", &t.data)]);
            let p = m.params();
            Phase {
                params: p.total(),
                trainable: p,
                activations: m.activations(batch, &data.1),
            }
            .estimate(opt, &data.0)
        }
        Task::Moe(t) => match (&t.data, &t.lm_model) {
            (MoeData::Text(text), Some(model)) => {
                let m = Lm::of(model, Some(&t.moe));
                let data = text_data(&[("data", text)]);
                let p = m.params();
                Phase {
                    params: p.total(),
                    trainable: p,
                    activations: m.activations(batch, &data.1),
                }
                .estimate(opt, &data.0)
            }
            (MoeData::Clusters(c), _) => {
                let (dim, d, classes) = (c.dim as f64, t.d_model as f64, c.classes as f64);
                let mut p = Params {
                    float: dim * d + d + d * classes + classes,
                    binary: 0.0,
                };
                p.add(moe_params(&t.moe, d));
                let layer = |tokens: f64| {
                    // Embedding + ReLU, the mixture, the residual, the head and its softmax.
                    tokens * (2.0 * d)
                        + moe_activations(&t.moe, d, tokens)
                        + tokens * d
                        + 2.0 * tokens * classes
                };
                let train = batch * dim + layer(batch);
                let eval_rows = c.eval_size as f64;
                let rows = (c.train_size + c.eval_size) as f64;
                let data = Data {
                    bytes: rows * dim * F32 + rows * 8.0,
                    notes: Vec::new(),
                };
                Phase {
                    params: p.total(),
                    trainable: p,
                    activations: train.max(eval_rows * dim + layer(eval_rows) / 2.0),
                }
                .estimate(opt, &data)
            }
            // Validation guarantees a `[model]` for the LM task; estimate what is known.
            (MoeData::Text(_), None) => MemoryEstimate {
                data_counted: false,
                notes: vec!["model: not counted".into()],
                ..MemoryEstimate::default()
            },
        },
        Task::KvProbe(t) => {
            // Inference only: no gradients or optimizer state. The model's shape lives in its
            // own files, so the weights file's size is the (lower-bound) parameter count.
            let weights = weights_bytes(&t.pretrained);
            MemoryEstimate {
                parameters: weights,
                data_counted: false,
                notes: vec![
                    format!(
                        "parameters: the weights file ({}); loaded as f32, a 4-bit GGUF takes about 7× that",
                        format_bytes(weights)
                    ),
                    "attention: about 8 score matrices of heads × context² × 4 B per layer, not counted"
                        .into(),
                ],
                ..MemoryEstimate::default()
            }
        }
        Task::Adapter(t) if t.model.pretrained.is_some() => pretrained_llama(
            t.model.pretrained.as_deref().unwrap_or_default(),
            "the frozen base is loaded as f32 (a 4-bit GGUF takes about 7× that), plus the \
             adapters and their Adam state (BitDelta: a fine-tuned copy of the targeted matrices \
             with its Adam state, then the 1-bit deltas)",
        ),
        Task::Adapter(t) => {
            let m = Lm::of(&t.model, None);
            let (data, valid) = text_data(&[("data", &t.data), ("source", &t.source.text)]);
            let base = m.params();
            // Phase 1: the base pretrained on the source (all parameters trainable).
            let pretrain = Phase {
                params: base.total(),
                trainable: base,
                activations: m.activations(batch, &valid),
            };
            // Phase 2: adapters (or BitDelta's fine-tune of the targeted matrices) on the
            // frozen base.
            let a = &t.adapter;
            let targeted: Vec<(f64, f64)> = m
                .block_projections()
                .into_iter()
                .filter(|(name, _, _)| a.targets.iter().any(|t| t == name))
                .map(|(_, din, dout)| (din, dout))
                .collect();
            let layers = m.layers;
            let tokens = batch * m.context;
            let rank = a.rank as f64;
            let (extra_params, trainable, extra_act) = if a.kind == "bitdelta" {
                // The fine-tuned copy and the deltas of every targeted matrix.
                let w: f64 = targeted.iter().map(|(i, o)| i * o).sum::<f64>() * layers;
                let p = Params {
                    float: w,
                    binary: 0.0,
                };
                (2.0 * w, p, 0.0)
            } else {
                let binary = a.kind == "binary_lora";
                let factors: f64 =
                    targeted.iter().map(|(i, o)| rank * (i + o)).sum::<f64>() * layers;
                let scales: f64 = targeted.iter().map(|(_, o)| *o).sum::<f64>() * layers;
                // Per targeted projection: x·A, its product with B (binary: both factors'
                // binarized copies).
                let act: f64 = targeted
                    .iter()
                    .map(|(i, o)| {
                        tokens * (rank + o) + if binary { 2.0 * rank * (i + o) } else { 0.0 }
                    })
                    .sum::<f64>()
                    * layers;
                let p = if binary {
                    Params {
                        float: scales,
                        binary: factors,
                    }
                } else {
                    Params {
                        float: factors,
                        binary: 0.0,
                    }
                };
                (p.total(), p, act)
            };
            let adapt = Phase {
                params: base.total() + extra_params,
                trainable,
                activations: m.activations(batch, &valid) + extra_act,
            };
            let e1 = pretrain.estimate(opt, &data);
            let e2 = adapt.estimate(opt, &data);
            if e2.total() > e1.total() { e2 } else { e1 }
        }
    }
}

/// The estimate of a run that trains on a pretrained Llama at `path`: its shape lives in the
/// checkpoint's own files, which validation does not parse, so the weights file's size is a
/// lower bound of the parameters; `loaded` says what the run holds besides.
fn pretrained_llama(path: &str, loaded: &str) -> MemoryEstimate {
    let weights = weights_bytes(path);
    MemoryEstimate {
        parameters: weights,
        data_counted: false,
        notes: vec![
            format!(
                "parameters: the weights file ({}), a lower bound: {loaded}",
                format_bytes(weights)
            ),
            "activations: logits of batch × context × vocab × 4 B (a few copies), not counted"
                .into(),
        ],
        ..MemoryEstimate::default()
    }
}

/// Bytes of a pretrained model's weights: the file, or the `.gguf` / `.safetensors` files of a
/// directory (0 when unreadable: validation does not require the model to exist).
fn weights_bytes(path: &str) -> u64 {
    let path = std::path::Path::new(path);
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".gguf") || n.ends_with(".safetensors")
                })
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// The shapes of a byte-level transformer (`bllm_nn::ByteLm`), with MoE blocks when `moe`.
struct Lm<'a> {
    d: f64,
    layers: f64,
    heads: f64,
    ratio: f64,
    context: f64,
    model: &'a LmModelSection,
    moe: Option<&'a MoeSection>,
}

impl<'a> Lm<'a> {
    fn of(model: &'a LmModelSection, moe: Option<&'a MoeSection>) -> Self {
        Self {
            d: model.d_model as f64,
            layers: model.layers as f64,
            heads: model.heads as f64,
            ratio: model.mlp_ratio as f64,
            context: model.context as f64,
            model,
            moe,
        }
    }

    /// `(name, d_input, d_output)` of one block's projections (no MLP with MoE).
    fn block_projections(&self) -> Vec<(&'static str, f64, f64)> {
        let (d, h) = (self.d, self.ratio * self.d);
        let mut v = vec![("q", d, d), ("k", d, d), ("v", d, d), ("o", d, d)];
        if self.moe.is_none() {
            v.push(("up", d, h));
            v.push(("down", h, d));
        }
        v
    }

    fn quantised(&self, name: &str) -> bool {
        self.model.projection(name) != "float"
    }

    fn params(&self) -> Params {
        let d = self.d;
        let mut p = Params::default();
        let mut proj = |quantised: bool, din: f64, dout: f64, times: f64| {
            if quantised {
                p.binary += din * dout * times;
                p.float += 2.0 * dout * times;
            } else {
                p.float += (din * dout + dout) * times;
            }
        };
        proj(self.quantised("embed"), VOCAB, d, 1.0);
        for (name, din, dout) in self.block_projections() {
            proj(self.quantised(name), din, dout, self.layers);
        }
        proj(self.quantised("head"), d, VOCAB, 1.0);
        // Positions, two norms per block, the final norm.
        p.float += self.context * d + 2.0 * d * self.layers + d;
        if let Some(m) = self.moe {
            let e = moe_params(m, d);
            p.float += e.float * self.layers;
            p.binary += e.binary * self.layers;
        }
        p
    }

    /// Floats kept for the backward pass of a `batch`-window step, or live during the
    /// held-out forward (chunks of 64 windows), whichever is larger. `valid` is the held-out
    /// byte count when known.
    fn activations(&self, batch: f64, valid: &Option<f64>) -> f64 {
        let eval_windows = valid.map_or(EVAL_CHUNK, |v| {
            ((v - 1.0) / self.context).floor().clamp(1.0, EVAL_CHUNK)
        });
        let train = self.forward(batch, true);
        let eval = self.forward(eval_windows, false);
        train.max(eval)
    }

    fn forward(&self, windows: f64, train: bool) -> f64 {
        let (d, t) = (self.d, self.context);
        let n = windows * t;
        let scores = windows * self.heads * t * t;
        if !train {
            // Live at once: the residual stream, one attention's scores and weights, the MLP
            // hidden activation, the logits and their softmax.
            let hidden = match self.moe {
                Some(m) => n * m.top_k as f64 * m.expert_hidden as f64,
                None => n * self.ratio * d,
            };
            return 4.0 * n * d + 2.0 * scores + 2.0 * hidden + 2.0 * n * VOCAB;
        }
        // Embedding + positions; i64 tokens and targets (two floats each).
        let mut acc = 2.0 * n * d + 4.0 * n;
        let mut quant_extra = 0.0;
        for (name, din, dout) in self.block_projections() {
            if self.quantised(name) {
                // Binarized weights + the straight-through term, and the quantised input.
                quant_extra += 2.0 * din * dout
                    + if self.model.activations != "float"
                        || self.model.projection(name) == "bitnet"
                    {
                        n * din
                    } else {
                        0.0
                    };
            }
        }
        // Attention: norm (2), q/k/v (3), their contiguous copies for the matmuls (2), the
        // mixed values and their reshape (2), o, the residual; scores, scaled/masked scores
        // and softmax weights.
        let attention = 11.0 * n * d + 3.0 * scores;
        let mlp = match self.moe {
            Some(m) => 2.0 * n * d + moe_activations(m, d, n) + n * d,
            // Norm (2), up, GELU (2), down, residual.
            None => 4.0 * n * d + 3.0 * n * self.ratio * d,
        };
        acc += self.layers * (attention + mlp + quant_extra);
        for name in ["embed", "head"] {
            if self.quantised(name) {
                acc += 2.0 * VOCAB * d;
            }
        }
        // Final norm, logits, log-softmax.
        acc + 2.0 * n * d + 2.0 * n * VOCAB
    }
}

/// Parameters of one MoE layer (`bllm_nn::Moe`): router, bias, E expert MLPs.
fn moe_params(m: &MoeSection, d: f64) -> Params {
    let (e, h) = (m.experts as f64, m.expert_hidden as f64);
    let router = match m.router.as_str() {
        "hash" => Params::default(),
        "sign_code" => Params {
            float: d * e.log2() + e.log2(),
            binary: 0.0,
        },
        "binary" => Params {
            float: 2.0 * e,
            binary: d * e,
        },
        _ => Params {
            float: d * e + e,
            binary: 0.0,
        },
    };
    let mut p = Params {
        float: e + e * (d * h + h + h * d + d),
        binary: 0.0,
    };
    p.add(router);
    p
}

/// Floats one MoE layer keeps for backward on `tokens` tokens: router logits and gates, per
/// routed slot (capped by the capacity factor) its gathered input, hidden, GELU, output and
/// gated output, and the combined output.
fn moe_activations(m: &MoeSection, d: f64, tokens: f64) -> f64 {
    let (e, k, h) = (m.experts as f64, m.top_k as f64, m.expert_hidden as f64);
    let mut slots = tokens * k;
    if m.capacity_factor > 0.0 {
        slots = slots.min((m.capacity_factor * tokens * k / e).ceil() * e);
    }
    3.0 * tokens * e + slots * (3.0 * d + 3.0 * h) + 2.0 * tokens * d
}

/// The bytes of text corpora (`(section, text)`): file sizes on disk where the path exists
/// (a directory's `train.txt` + `valid.txt`), else the recipe's byte limits when both are set,
/// else not counted. Also the held-out byte count of the first corpus, when known.
fn text_data(texts: &[(&str, &TextSection)]) -> (Data, Option<f64>) {
    let mut data = Data::default();
    let mut valid = None;
    for (i, (section, t)) in texts.iter().enumerate() {
        let p = Path::new(&t.path);
        let sizes = if p.is_dir() {
            match (
                file_len(&p.join("train.txt")),
                file_len(&p.join("valid.txt")),
            ) {
                (Some(a), Some(b)) => Some((a + b, b)),
                _ => None,
            }
        } else {
            file_len(p).map(|n| (n, (n as f64 * t.valid_fraction) as u64))
        };
        let (total, held_out) = match sizes {
            Some((total, held_out)) => (Some(total as f64), Some(held_out as f64)),
            None if t.train_bytes > 0 && t.eval_bytes > 0 => (
                Some((t.train_bytes + t.eval_bytes) as f64),
                Some(t.eval_bytes as f64),
            ),
            None => (None, (t.eval_bytes > 0).then_some(t.eval_bytes as f64)),
        };
        match total {
            Some(b) => data.bytes += b,
            None => data.notes.push(format!(
                "{section}: not counted ({} not found and {section}.train_bytes/eval_bytes unset)",
                t.path
            )),
        }
        if i == 0 {
            valid = match (held_out, t.eval_bytes) {
                (Some(v), e) if e > 0 => Some(v.min(e as f64)),
                (v, _) => v,
            };
        }
    }
    (data, valid)
}

/// The size of a regular file (never opens it).
fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
}

/// `(rows, columns, bytes per element)` of an embeddings file from its header alone (`.npy`,
/// `.fvecs`, `.safetensors`), reading at most 64 KiB of a regular file; `None` when unknown.
fn embedding_shape(path: &Path) -> Option<(f64, f64, f64)> {
    let len = file_len(path)?;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let text = |from: usize| {
        head.get(from..)
            .map(|h| String::from_utf8_lossy(h).into_owned())
    };
    match ext.as_str() {
        "fvecs" => {
            let dim = i32::from_le_bytes(head.get(..4)?.try_into().ok()?);
            (dim > 0).then(|| {
                let dim = f64::from(dim);
                (len as f64 / (4.0 + 4.0 * dim), dim, 4.0)
            })
        }
        "npy" => {
            if head.get(..6)? != b"\x93NUMPY" {
                return None;
            }
            let start = if *head.get(6)? == 1 { 10 } else { 12 };
            let header = text(start)?;
            let elem = if header.contains("f2") { 2.0 } else { 4.0 };
            let shape = header.split("shape").nth(1)?;
            let inner = shape.split('(').nth(1)?.split(')').next()?;
            let dims: Vec<f64> = inner
                .split(',')
                .filter_map(|s| s.trim().parse::<f64>().ok())
                .collect();
            let rows = *dims.first()?;
            Some((rows, dims[1..].iter().product::<f64>().max(1.0), elem))
        }
        "safetensors" => {
            let header = text(8)?;
            let elem = if header.contains("\"F16\"") { 2.0 } else { 4.0 };
            let shape = header.split("\"shape\"").nth(1)?;
            let inner = shape.split('[').nth(1)?.split(']').next()?;
            let dims: Vec<f64> = inner
                .split(',')
                .filter_map(|s| s.trim().parse::<f64>().ok())
                .collect();
            let rows = *dims.first()?;
            Some((rows, dims[1..].iter().product::<f64>().max(1.0), elem))
        }
        _ => None,
    }
}

/// `kind = "retrieval"`: a `HashHead` (projection `dim × bits` and bias) trained on every
/// training row per step with a listwise (or similarity) objective of `batch` anchors against
/// all training rows.
fn retrieval(recipe: &Recipe, t: &crate::RetrievalTask) -> MemoryEstimate {
    if let (Some(texts), Some(e)) = (&t.data.texts, &t.encoder) {
        return text_retrieval(recipe, t, texts, e);
    }
    let mut notes = Vec::new();
    let mut file_bytes = 0.0;
    // (database rows, query rows, dim)
    let shape = match (&t.data.path, &t.data.synthetic) {
        (Some(p), _) => match embedding_shape(Path::new(p)) {
            Some((rows, dim, elem)) => {
                file_bytes = rows * dim * elem;
                match &t.data.queries_path {
                    Some(q) => {
                        let qrows = embedding_shape(Path::new(q)).map_or(0.0, |s| s.0);
                        Some((rows, qrows, dim))
                    }
                    None => {
                        let q = (t.data.queries as f64).min(rows);
                        Some((rows - q, q, dim))
                    }
                }
            }
            None => {
                notes.push(format!("data: not counted (shape of {p} unknown)"));
                None
            }
        },
        (None, Some(s)) => {
            let rows = s.rows as f64;
            let q = (t.data.queries as f64).min(rows);
            Some((rows - q, q, s.dim as f64))
        }
        (None, None) => None,
    };
    let bits = t.model.bits as f64;
    let batch = recipe.train.batch_size as f64;
    let (db, q, dim) = shape.unwrap_or((0.0, 0.0, 0.0));
    let train = if t.data.train_rows == 0 {
        db
    } else {
        (t.data.train_rows as f64).min(db)
    };
    let all = (db + q) * dim;
    // Loading: the matrix, its split into database and queries, their unit-norm copies and
    // the training rows (twice); training: the split, the unit copies, the training rows
    // (twice) and their centred and unit tensors.
    let data_floats = (3.0 * all + 2.0 * train * dim).max(2.0 * all + 4.0 * train * dim);
    let data = Data {
        bytes: data_floats * F32 + file_bytes,
        notes,
    };
    let p = Params {
        float: dim * bits + bits,
        binary: 0.0,
    };
    // One step: logits and codes (with the estimator's terms) for every training row; per
    // anchor × training row: cosines, code similarities, masked and (log-)softmaxed copies,
    // their product (and a bool mask, a quarter float, twice).
    let step = 3.0 * train * bits + batch * bits + batch * train * 6.5;
    // The baseline fit (ITQ/PCA in f64): centred rows, covariance, projected rows and codes.
    let fit = 2.0 * (train * dim + 2.0 * dim * dim + 2.0 * train * bits);
    Phase {
        params: p.total(),
        trainable: p,
        activations: step.max(fit),
    }
    .estimate(recipe.optimizer.kind, &data)
}

/// `kind = "retrieval"` with `data.texts` + `[encoder]`: the cached token states of every line
/// (tokens estimated as 1 per 4 bytes + `[CLS]`/`[SEP]`), the teacher's and the student's
/// embeddings, the bank, the trained layers and the head, and one step's activations (anchors
/// through the trained layers, the codes, the anchors × bank matrices). Widths come from the
/// model's `config.json`; a file that cannot be read is left out with a note.
fn text_retrieval(
    recipe: &Recipe,
    t: &crate::RetrievalTask,
    texts: &str,
    e: &crate::EncoderSection,
) -> MemoryEstimate {
    let mut notes = Vec::new();
    let (bytes, lines) = match std::fs::read(texts) {
        Ok(b) => (
            b.len() as f64,
            b.iter().filter(|&&c| c == b'\n').count().max(1) as f64,
        ),
        Err(err) => {
            notes.push(format!("data: not counted ({texts}: {err})"));
            (0.0, 0.0)
        }
    };
    let cfg = Path::new(&e.pretrained).join("config.json");
    let (d, f, heads) = match std::fs::read_to_string(&cfg).ok().map(|s| {
        (
            json_number(&s, "hidden_size"),
            json_number(&s, "intermediate_size"),
            json_number(&s, "num_attention_heads"),
        )
    }) {
        Some(v) => v,
        None => {
            notes.push(format!(
                "encoder: not counted ({} unreadable)",
                cfg.display()
            ));
            (0.0, 0.0, 0.0)
        }
    };
    let tokens = bytes / 4.0 + 2.0 * lines;
    let per_line = if lines > 0.0 { tokens / lines } else { 0.0 };
    let bits = t.model.bits as f64;
    let layers = e.train_layers as f64;
    let bank = (e.bank as f64).min(lines);
    let anchors = recipe.train.batch_size as f64;
    let data = Data {
        bytes: tokens * d * F32 + (4.0 * lines + bank) * d * F32 + bytes + tokens * 4.0,
        notes,
    };
    let p = Params {
        float: layers * (4.0 * d * d + 2.0 * d * f + 9.0 * d + f) + d * bits + bits,
        binary: 0.0,
    };
    let t_a = anchors * per_line;
    let step = layers * (t_a * (8.0 * d + 2.0 * f) + anchors * heads * per_line * per_line * 2.0)
        + 3.0 * (anchors + bank) * bits
        + anchors * bank * 6.5;
    Phase {
        params: p.total(),
        trainable: p,
        activations: step,
    }
    .estimate(recipe.optimizer.kind, &data)
}

/// The number after `"key":` in a JSON text (0 when absent): enough for a config's widths
/// without a JSON parser in this crate.
fn json_number(text: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\"");
    text.find(&pat)
        .map(|i| &text[i + pat.len()..])
        .and_then(|r| r.trim_start().strip_prefix(':'))
        .map(|r| {
            r.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn json_number_reads_a_config_width() {
        let c = r#"{"hidden_size": 384, "layer_norm_eps":1e-12,"intermediate_size" :1536}"#;
        assert_eq!(json_number(c, "hidden_size"), 384.0);
        assert_eq!(json_number(c, "intermediate_size"), 1536.0);
        assert_eq!(json_number(c, "num_attention_heads"), 0.0);
    }
    use crate::{Override, parse_override};

    fn recipe(text: &str, overrides: &[&str]) -> Recipe {
        let ovs: Vec<Override> = overrides
            .iter()
            .map(|o| parse_override(o).unwrap())
            .collect();
        Recipe::parse(text, "test.toml", &ovs, &()).unwrap()
    }

    const CLASSIFY: &str = r#"
name = "c"
kind = "classify"
[data]
train_size = 100
eval_size = 10
dim = 8
classes = 2
[model]
hidden = [16]
float_first = false
float_last = true
[optimizer]
kind = "adam"
[train]
steps = 1
batch_size = 4
"#;

    const LM: &str = r#"
name = "l"
kind = "lm"
[data]
path = "/nonexistent/corpus"
[model]
d_model = 64
layers = 2
heads = 4
context = 64
[train]
steps = 1
batch_size = 8
"#;

    const RETRIEVAL: &str = r#"
name = "r"
kind = "retrieval"
[data]
queries = 100
[data.synthetic]
rows = 1000
dim = 32
[model]
bits = 64
[train]
steps = 1
batch_size = 16
"#;

    const MOE: &str = r#"
name = "m"
kind = "moe"
[data]
task = "clusters"
train_size = 256
eval_size = 64
dim = 16
[model]
d_model = 32
[moe]
experts = 4
[train]
steps = 1
batch_size = 32
"#;

    const MOE_LM: &str = r#"
name = "ml"
kind = "moe"
[data]
task = "lm"
path = "/nonexistent"
train_bytes = 1000
eval_bytes = 500
[model]
d_model = 32
heads = 2
context = 16
[moe]
experts = 4
[train]
steps = 1
batch_size = 4
"#;

    const ADAPTER: &str = r#"
name = "a"
kind = "adapter"
[data]
path = "/nonexistent/target"
[source]
path = "/nonexistent/source"
steps = 1
[model]
d_model = 32
heads = 2
context = 16
[adapter]
kind = "lora"
rank = 4
[train]
steps = 1
batch_size = 4
"#;

    /// Classify by hand: dims 8 → 16 (binary) → 2 (float), Adam, batch 4.
    #[test]
    fn classify_by_hand() {
        let e = estimate(&recipe(CLASSIFY, &[]));
        // Binary layer: 8·16 latent + 16 bias + 16 scale; float layer: 16·2 + 2.
        let params = 8 * 16 + 2 * 16 + 16 * 2 + 2;
        assert_eq!(e.parameters, 4 * params);
        assert_eq!(e.gradients, 4 * params);
        assert_eq!(e.optimizer, 8 * params);
        // Train: input 4·8, binary weight path 2·8·16, two outputs per layer (4·16, 4·2),
        // log-softmax 4·2; eval: 10·(16 + 2) < train.
        let train = 4 * 8 + 2 * 8 * 16 + 2 * 4 * 16 + 2 * 4 * 2 + 4 * 2;
        assert_eq!(e.activations, 4 * train);
        // 110 rows × 8 features + 10 eval copies, and i64 labels.
        assert_eq!(e.data, (110 * 8 + 10 * 8) * 4 + (110 + 10) * 8);
        assert!(e.data_counted);
        assert_eq!(
            e.total(),
            e.parameters + e.gradients + e.optimizer + e.activations + e.data
        );
        let sgd = estimate(&recipe(CLASSIFY, &["optimizer.kind=\"sgd\""]));
        assert_eq!(sgd.optimizer, 4 * params);
        let bop = estimate(&recipe(CLASSIFY, &["optimizer.kind=\"bop_adam\""]));
        assert_eq!(bop.optimizer, 4 * (8 * 16 + 2 * (2 * 16 + 16 * 2 + 2)));
    }

    /// Every kind gives a non-zero estimate of every part it has.
    #[test]
    fn every_kind_is_estimated() {
        let adapter_kinds = ["lora", "binary_lora", "bitdelta"];
        let mut seen = Vec::new();
        for (text, ovs) in [
            (CLASSIFY, vec![]),
            (RETRIEVAL, vec![]),
            (LM, vec![]),
            (MOE, vec![]),
            (MOE_LM, vec![]),
            (ADAPTER, vec![]),
        ]
        .into_iter()
        .chain(
            adapter_kinds
                .iter()
                .map(|k| (ADAPTER, vec![format!("adapter.kind=\"{k}\"")])),
        ) {
            let ovs: Vec<&str> = ovs.iter().map(String::as_str).collect();
            let r = recipe(text, &ovs);
            let e = estimate(&r);
            assert!(
                e.parameters > 0 && e.gradients > 0 && e.optimizer > 0,
                "{e}"
            );
            assert!(e.activations > 0, "{}: {e}", r.name);
            assert!(e.total() > e.parameters);
            seen.push(r.kind);
        }
        for k in [
            Kind::Classify,
            Kind::Retrieval,
            Kind::Lm,
            Kind::Moe,
            Kind::Adapter,
        ] {
            assert!(seen.contains(&k), "{k:?}");
        }
        // Missing corpora are reported, not counted; synthetic and byte-limited data counted.
        let lm = estimate(&recipe(LM, &[]));
        assert!(
            !lm.data_counted && lm.to_string().contains("not counted"),
            "{lm}"
        );
        let moe_lm = estimate(&recipe(MOE_LM, &[]));
        assert!(moe_lm.data_counted && moe_lm.data == 1500, "{moe_lm}");
        assert!(estimate(&recipe(RETRIEVAL, &[])).data >= 1000 * 32 * 4);
    }

    /// Larger shapes never give a smaller estimate.
    #[test]
    fn grows_with_the_shapes() {
        let cases: [(&str, &[&str]); 6] = [
            (
                CLASSIFY,
                &["model.hidden=[32]", "train.batch_size=8", "data.dim=16"],
            ),
            (
                LM,
                &["model.d_model=128", "model.context=128", "model.layers=3"],
            ),
            (RETRIEVAL, &["data.synthetic.rows=4000", "model.bits=128"]),
            (MOE, &["moe.experts=8", "moe.expert_hidden=256"]),
            (MOE_LM, &["model.layers=4", "train.batch_size=8"]),
            (ADAPTER, &["model.d_model=64", "model.layers=4"]),
        ];
        for (text, bigger) in cases {
            let small = estimate(&recipe(text, &[]));
            let mut prev = small.total();
            for i in 1..=bigger.len() {
                let e = estimate(&recipe(text, &bigger[..i]));
                assert!(
                    e.total() > prev,
                    "{:?}: {} <= {prev}",
                    &bigger[..i],
                    e.total()
                );
                prev = e.total();
            }
        }
    }

    /// Absurd shapes saturate: a huge estimate, no overflow, no panic.
    #[test]
    fn absurd_shapes_saturate() {
        let e = estimate(&recipe(CLASSIFY, &["model.hidden=[100000000]"]));
        // 8 → 1e8 → 2: 1.2e9 parameters, 4.5 GiB of them.
        assert!(e.total() > 16 << 30, "{e}");
        let huge = i64::MAX.to_string();
        let e = estimate(&recipe(
            CLASSIFY,
            &[
                &format!("model.hidden=[{huge}, {huge}, {huge}]"),
                "data.train_size=10000000",
                "train.batch_size=10000000",
            ],
        ));
        assert_eq!(e.total(), u64::MAX);
        assert!(e.to_string().contains("EiB"), "{e}");
        let e = estimate(&recipe(
            LM,
            &[
                "model.d_model=65536",
                "model.layers=1024",
                "model.context=65536",
                "model.mlp_ratio=64",
            ],
        ));
        assert!(e.total() > 1 << 50, "{e}");
        let e = estimate(&recipe(
            RETRIEVAL,
            &[
                "data.synthetic.rows=100000000",
                "data.synthetic.dim=1048576",
            ],
        ));
        assert!(e.total() > 1 << 50, "{e}");
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("8GiB"), Ok(Some(8 << 30)));
        assert_eq!(parse_size("512MiB"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("1.5G"), Ok(Some(3 << 29)));
        assert_eq!(parse_size("1000000"), Ok(Some(1_000_000)));
        assert_eq!(parse_size("2 kb"), Ok(Some(2000)));
        assert_eq!(parse_size("none"), Ok(None));
        for bad in ["", "abc", "8 parsecs", "-1", "1e400", "99999999999TiB"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("expected a size such as 8GiB"), "{bad}: {e}");
        }
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(48 << 20), "48.0 MiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(
            parse_meminfo("MemTotal: 100 kB\nMemAvailable:   2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_meminfo("MemTotal: 100 kB\n"), None);
    }

    #[test]
    fn the_flag_wins_over_the_variable_over_available_memory() {
        let avail = || Some(1000);
        let l = MemoryLimit::from_parts(Some("1MiB"), Some("none"), avail).unwrap();
        assert_eq!(l.bytes, Some(1 << 20));
        assert!(l.to_string().contains("--memory-limit 1MiB"), "{l}");
        let l = MemoryLimit::from_parts(None, Some("none"), avail).unwrap();
        assert_eq!(l.bytes, None);
        let l = MemoryLimit::from_parts(None, None, avail).unwrap();
        assert_eq!((l.bytes, l.source), (Some(1000), LimitSource::Available));
        let l = MemoryLimit::from_parts(None, None, || None).unwrap();
        assert_eq!(l.bytes, None);
        let e = MemoryLimit::from_parts(Some("lots"), None, avail).unwrap_err();
        assert!(e.starts_with("--memory-limit: expected a size"), "{e}");
        let e = MemoryLimit::from_parts(None, Some("lots"), avail).unwrap_err();
        assert!(e.starts_with("BLLM_MEMORY_LIMIT: expected a size"), "{e}");
    }

    #[test]
    fn check_refuses_with_the_estimate_and_the_limit() {
        let r = recipe(CLASSIFY, &["model.hidden=[100000000]"]);
        let limit = MemoryLimit::from_parts(None, None, || Some(16 << 30)).unwrap();
        let e = limit.check("c", &r).unwrap_err().to_string();
        assert!(e.starts_with("recipe \"c\": needs an estimated "), "{e}");
        assert!(
            e.contains("parameters ") && e.contains("but the memory limit is 16.0 GiB"),
            "{e}"
        );
        assert!(
            e.contains("override with --memory-limit or BLLM_MEMORY_LIMIT"),
            "{e}"
        );
        assert!(limit.check("c", &recipe(CLASSIFY, &[])).is_ok());
        assert!(MemoryLimit::none().check("c", &r).is_ok());
    }

    #[test]
    fn embedding_headers_give_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let npy = dir.path().join("x.npy");
        let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (10, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        b.extend([0u8; 60]);
        std::fs::write(&npy, &b).unwrap();
        assert_eq!(embedding_shape(&npy), Some((10.0, 3.0, 2.0)));
        let fv = dir.path().join("x.fvecs");
        let mut b = Vec::new();
        for _ in 0..5 {
            b.extend(2i32.to_le_bytes());
            b.extend([0u8; 8]);
        }
        std::fs::write(&fv, &b).unwrap();
        assert_eq!(embedding_shape(&fv), Some((5.0, 2.0, 4.0)));
        assert_eq!(embedding_shape(dir.path()), None);
        assert_eq!(embedding_shape(&dir.path().join("missing.npy")), None);
    }
}
