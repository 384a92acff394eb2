//! The recipe schema and its validation.

use std::path::Path;

use toml::{Table, Value};

use crate::overrides::{Override, apply};
use crate::walk::{Report, Section, describe};
use crate::{Issue, RecipeError, Result};

/// Which trainer runs the recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A small binary MLP on a synthetic classification task (tests, smoke runs, template).
    Classify,
    /// A learned projection head from float embeddings to k-bit retrieval codes.
    Retrieval,
    /// A byte-level decoder-only transformer language model with binarized projections.
    Lm,
    /// Mixture-of-experts layers with float or binary routers (clusters task or byte LM).
    Moe,
    /// Float or binary adapters on a frozen float byte-level LM, adapted to a second corpus.
    Adapter,
    /// The KV-cache probe: a pretrained decoder read back through a quantized cache
    /// (inference only).
    KvProbe,
}

impl Kind {
    const NAMES: [&'static str; 6] = ["classify", "retrieval", "lm", "moe", "adapter", "kv_probe"];

    fn parse(s: &str) -> Option<Self> {
        match s {
            "classify" => Some(Self::Classify),
            "retrieval" => Some(Self::Retrieval),
            "lm" => Some(Self::Lm),
            "moe" => Some(Self::Moe),
            "adapter" => Some(Self::Adapter),
            "kv_probe" => Some(Self::KvProbe),
            _ => None,
        }
    }

    /// The name used in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classify => "classify",
            Self::Retrieval => "retrieval",
            Self::Lm => "lm",
            Self::Moe => "moe",
            Self::Adapter => "adapter",
            Self::KvProbe => "kv_probe",
        }
    }
}

/// The baseline encoders a retrieval recipe may list in `eval.methods` (the names of
/// `bllm_hash::Method`; a test in `bllm-cli` keeps the two lists equal).
pub const BASELINES: [&str; 6] = ["lsh", "lsh_centred", "pca", "itq", "sign", "sign_raw"];

/// The kind-specific sections of a recipe.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// `kind = "classify"`.
    Classify {
        /// `[data]`.
        data: DataSection,
        /// `[model]`.
        model: ModelSection,
    },
    /// `kind = "retrieval"`.
    Retrieval(Box<RetrievalTask>),
    /// `kind = "lm"`.
    Lm(Box<LmTask>),
    /// `kind = "moe"`.
    Moe(Box<MoeTask>),
    /// `kind = "adapter"`.
    Adapter(Box<AdapterTask>),
    /// `kind = "kv_probe"`.
    KvProbe(Box<KvProbeTask>),
}

/// The sections of `kind = "kv_probe"`: `[model]`, `[data]`, `[probe]`, `[cache]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvProbeTask {
    /// `model.pretrained`: a Llama GGUF file, a directory with one, or a Hugging Face
    /// directory.
    pub pretrained: String,
    /// `data.texts`: corpus directories (`valid.txt` is probed, `train.txt` calibrates the
    /// outlier channels) or text files (the first 90 % calibrates, the rest is probed).
    pub texts: Vec<String>,
    /// `data.contexts`: window lengths in tokens.
    pub contexts: Vec<usize>,
    /// `data.tokens`: tokens probed per text (the same tokens at every context).
    pub tokens: usize,
    /// `data.calibration_tokens`: calibration tokens per text.
    pub calibration_tokens: usize,
    /// `probe.rows`: query rows per window for the attention statistics.
    pub rows: usize,
    /// `probe.bucket`: positions per bucket of the error-vs-position table.
    pub bucket: usize,
    /// `cache.name`: a label for tables (default: built from the quantizers).
    pub cache_name: String,
    /// `cache.keys`: a `bllm_models::kv::QuantSpec` table, checked with `cache.values` by
    /// [`ComponentCheck::kv_cache`].
    pub keys: Table,
    /// `cache.values`: same.
    pub values: Table,
    /// `cache.window`: the newest tokens read in full precision.
    pub window: usize,
}

/// `[source]` of `kind = "adapter"`: the corpus and schedule of the float base model.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSection {
    /// The source corpus (same keys as `[data]`).
    pub text: TextSection,
    /// Pretraining steps of the base (batch size and schedule of `[train]`/`[schedule]`).
    pub steps: usize,
    /// Peak learning rate of the pretraining.
    pub lr: f64,
    /// Directory where base models are cached by content (recipe model, source, steps, lr,
    /// seed), so a sweep pretrains each base once.
    pub cache: String,
}

/// `[adapter]` of `kind = "adapter"`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSection {
    /// `lora`, `binary_lora` or `bitdelta`.
    pub kind: String,
    /// LoRA rank (LoRA kinds; for BitDelta, the rank of the float LoRA it is compared with).
    pub rank: usize,
    /// LoRA α (0 = the rank, i.e. scale 1).
    pub alpha: f64,
    /// Block projections that get an adapter (`q k v o up down`).
    pub targets: Vec<String>,
    /// Binary LoRA: learnable scales.
    pub learnable_scale: bool,
    /// BitDelta: steps of α distillation after the full fine-tune.
    pub distill_steps: usize,
}

/// Everything specific to `kind = "adapter"`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterTask {
    /// `[data]`: the target corpus.
    pub data: TextSection,
    /// `[source]`.
    pub source: SourceSection,
    /// `[model]` (the `kind = "lm"` schema; projections must be float). With
    /// `model.pretrained` the base is that checkpoint (no pretraining on `[source]`).
    pub model: LmModelSection,
    /// `[adapter]`.
    pub adapter: AdapterSection,
}

/// `[data]` of `kind = "moe"` with `task = "clusters"`: Gaussian clusters arranged in groups,
/// one natural expert per group.
#[derive(Clone, Debug, PartialEq)]
pub struct ClustersSection {
    /// Training examples.
    pub train_size: usize,
    /// Held-out examples.
    pub eval_size: usize,
    /// Input dimension.
    pub dim: usize,
    /// Classes (clusters); cluster `c` belongs to group `c mod groups`.
    pub classes: usize,
    /// Groups of clusters (group centres far apart, clusters near their group centre).
    pub groups: usize,
    /// Standard deviation of points around their cluster centre.
    pub noise: f64,
    /// Standard deviation of group centres (clusters sit at unit spread around them).
    pub spread: f64,
}

/// The data of `kind = "moe"`.
#[derive(Clone, Debug, PartialEq)]
pub enum MoeData {
    /// `task = "clusters"`.
    Clusters(ClustersSection),
    /// `task = "lm"`: the byte-level corpus of `kind = "lm"`.
    Text(TextSection),
}

/// `[moe.collapse]`: when the load-balance monitor reports a collapse.
#[derive(Clone, Debug, PartialEq)]
pub struct CollapseSection {
    /// Collapse below this normalised load entropy.
    pub min_entropy: f64,
    /// Collapse above this max/mean load.
    pub max_over_mean: f64,
    /// An expert starves under `dead_fraction / E` of the load …
    pub dead_fraction: f64,
    /// … for this many consecutive steps.
    pub dead_window: usize,
    /// Collapse above this dropped fraction.
    pub max_dropped: f64,
    /// Load statistics are computed over the routing of the last this-many steps (one
    /// mini-batch is too noisy: a perfectly random router would "collapse" on its variance).
    pub window: usize,
}

/// `[moe]`: the mixture-of-experts layers.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSection {
    /// Experts E.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Capacity factor (0 = unlimited).
    pub capacity_factor: f64,
    /// Hidden width of each expert.
    pub expert_hidden: usize,
    /// `softmax`, `hash`, `sign_code`, `binary` or `gumbel`.
    pub router: String,
    /// `none`, `aux_loss` or `aux_free`.
    pub balancing: String,
    /// α of the Switch auxiliary loss.
    pub aux_alpha: f64,
    /// Router z-loss coefficient.
    pub z_loss: f64,
    /// γ of the auxiliary-loss-free bias update.
    pub bias_gamma: f64,
    /// Gumbel temperature at the start of training.
    pub gumbel_tau_start: f64,
    /// Gumbel temperature at the end of training.
    pub gumbel_tau_end: f64,
    /// `[moe.collapse]`.
    pub collapse: CollapseSection,
}

/// Everything specific to `kind = "moe"`.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeTask {
    /// `[data]` (with `task`).
    pub data: MoeData,
    /// `[model]` of the LM task (the `kind = "lm"` schema).
    pub lm_model: Option<LmModelSection>,
    /// `model.d_model` of the clusters task.
    pub d_model: usize,
    /// `[moe]`.
    pub moe: MoeSection,
}

/// `[data]` of `kind = "lm"`: a byte-level text corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSection {
    /// A directory with `train.txt` and `valid.txt` (a fixed split; its `MANIFEST.json` is
    /// checked), or one text file whose last `valid_fraction` is held out.
    pub path: String,
    /// Held-out fraction when `path` is one file.
    pub valid_fraction: f64,
    /// Train on the first N bytes only (0 = all).
    pub train_bytes: usize,
    /// Evaluate on the first N held-out bytes only (0 = all), in non-overlapping windows.
    pub eval_bytes: usize,
}

/// `[model]` of `kind = "lm"` (names as in `bllm_nn::ByteLmConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LmModelSection {
    /// Residual width.
    pub d_model: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width / d_model.
    pub mlp_ratio: usize,
    /// Context length in bytes.
    pub context: usize,
    /// `[model.projections]`: `(name, float|binary|bitnet)` for q, k, v, o, up, down, embed,
    /// head in that order, then `gate` for a pretrained model (its SwiGLU gate projection).
    pub projections: Vec<(&'static str, String)>,
    /// Weight scaling of binary projections: `none`, `per_tensor`, `per_channel` (XNOR's
    /// `mean|W|` per output channel), `svid` (OneBit's value vectors `g hᵀ`).
    pub scaling: String,
    /// Train the scales.
    pub learnable_scale: bool,
    /// Input quantisation of binary projections: `float`, `sign`, `rsign`, `elastic`.
    pub activations: String,
    /// Norm before quantisation in binary projections (SubLN).
    pub sub_norm: bool,
    /// `softmax` or `binary_mask` (BiBERT).
    pub attention: String,
    /// `model.pretrained` (`kind = "lm"` only): a Llama checkpoint (a GGUF file, a directory
    /// with one, or a Hugging Face directory) trained instead of a byte-level model; its shape
    /// comes from its own files, `context` counts tokens of its tokenizer.
    pub pretrained: Option<String>,
    /// `model.quantize_layers = [start, end]` (pretrained): the half-open range of layers whose
    /// projections take the `[model.projections]` precisions; the others stay float. `None`:
    /// every layer.
    pub quantize_layers: Option<(usize, usize)>,
    /// `model.monitor_layers` (pretrained): how many quantised layers, evenly spread over the
    /// range, the weight monitors watch (every projection of each), bounding their cost.
    pub monitor_layers: usize,
}

impl LmModelSection {
    /// The projection names of `[model.projections]`.
    pub const PROJECTIONS: [&'static str; 8] = ["q", "k", "v", "o", "up", "down", "embed", "head"];

    /// The precision named for projection `name`.
    pub fn projection(&self, name: &str) -> &str {
        self.projections
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("float", |(_, k)| k.as_str())
    }
}

/// Everything specific to `kind = "lm"`.
#[derive(Clone, Debug, PartialEq)]
pub struct LmTask {
    /// `[data]`.
    pub data: TextSection,
    /// `data.eval_texts` (pretrained models): more corpora (directories or files, split as
    /// `data.path` is) whose held-out part (its first `data.eval_bytes`) the finished run
    /// scores, with the teacher — text the run neither trained nor was tuned on.
    pub eval_texts: Vec<String>,
    /// `[model]`.
    pub model: LmModelSection,
    /// `[distill]` (pretrained models only): the frozen float checkpoint as teacher.
    pub distill: Option<DistillSection>,
}

/// `[distill]` of a pretrained `kind = "lm"`: knowledge distillation from the frozen float
/// model the student was quantised from. The loss is
/// `ce · CE + kl · T² · KL(p_teacher,T ‖ p_student,T) + hidden · mean_l MSE(ĥ_s,l, ĥ_t,l)`,
/// `ĥ` each layer's output states L2-normalised per token (OneBit's hidden-state term).
#[derive(Clone, Debug, PartialEq)]
pub struct DistillSection {
    /// Softmax temperature `T` of the logit term.
    pub temperature: f64,
    /// Weight of the logit KL term.
    pub kl: f64,
    /// Weight of the next-token cross-entropy on the data.
    pub ce: f64,
    /// Weight of the per-layer hidden-state term (0 = off).
    pub hidden: f64,
}

/// `[data.synthetic]`: the review's hard case (`bllm_data::synthetic::hard_case`), seeded by
/// the recipe's seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSection {
    /// Rows generated (queries included).
    pub rows: usize,
    /// Dimension.
    pub dim: usize,
    /// Mixture components.
    pub clusters: usize,
    /// Fraction of rows replaced by far outliers.
    pub outlier_fraction: f64,
}

/// `[data]` of `kind = "retrieval"`: a file of float embeddings, or a synthetic set.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingSection {
    /// `.npy` (f32/f16), `.fvecs` or `.safetensors` file of embeddings, one row per vector
    /// (relative paths are relative to the working directory). When set it takes precedence
    /// over `synthetic`, so `data.path=MY.npy` runs any recipe on your embeddings.
    pub path: Option<String>,
    /// A generated hard case, used when `path` is absent.
    pub synthetic: Option<SyntheticSection>,
    /// The first N rows are the queries (ignored when `queries_path` is set).
    pub queries: usize,
    /// A separate file of queries; then every row of `path` is the database.
    pub queries_path: Option<String>,
    /// L2-normalise every row on load (before any centring), so that cosine = inner product.
    pub normalize: bool,
    /// Train on at most this many database rows, evenly spaced (0 = all).
    pub train_rows: usize,
    /// A text file, one text per line (the first `queries` lines are the queries), for
    /// fine-tuning the encoder of `[encoder]`; exclusive with `path`, `synthetic` and
    /// `queries_path` (the frozen encoder itself is the teacher).
    pub texts: Option<String>,
    /// Only this 0-based tab-separated field of each line of `texts` (the bundled
    /// `verses.txt` is `reference TAB text`: 1); `None`: the whole line.
    pub text_field: Option<usize>,
}

/// `[encoder]` of `kind = "retrieval"` with `data.texts`: the sentence encoder fine-tuned
/// under the hash head.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSection {
    /// A sentence-transformers directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, …), e.g. `models/minilm`.
    pub pretrained: String,
    /// How many top layers are trained; the lower ones run once and their token states are
    /// cached.
    pub train_layers: usize,
    /// The encoder layers' learning rate at the start of the schedule (the head trains at
    /// `optimizer.lr`; both follow `[schedule]`).
    pub lr: f64,
    /// Texts per forward pass when caching and exporting; `bllm encode --text --batch` with the
    /// same value reproduces the exported codes byte for byte.
    pub batch: usize,
    /// Database rows (evenly spaced) whose embeddings each anchor is ranked against; 0 ranks
    /// each anchor against the step's other anchors (in-batch lists).
    pub bank: usize,
    /// The bank's embeddings are recomputed with the current encoder every this many steps.
    pub refresh_every: usize,
}

/// `[model]` of `kind = "retrieval"`: the projection head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSection {
    /// Code length.
    pub bits: usize,
    /// Initial projection: `itq`, `pca`, `lsh_centred` or `random`.
    pub init: String,
    /// Start from a saved encoder instead (a directory with `encoder.json` +
    /// `encoder.safetensors`, e.g. a frozen-head run's `export/encoder`): its centring vector,
    /// projection and thresholds. Overrides `init`.
    pub init_from: Option<String>,
    /// Training forward: `surrogate` (the estimator's smooth F, a continuous relaxation whose
    /// derivative is the estimator's G) or `sign` (hard codes, gradient through the estimator).
    pub forward: String,
    /// Learn per-bit thresholds (otherwise they stay at the centred initialisation).
    pub learn_bias: bool,
}

/// `[objective]` of `kind = "retrieval"`.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveSection {
    /// `listwise` (each anchor's softmax over the database, codes vs cosines) or `similarity`
    /// (scaled code inner products regressed on cosine similarities).
    pub kind: String,
    /// Softmax temperature on cosine similarities (listwise).
    pub teacher_temperature: f64,
    /// Softmax temperature on normalised code inner products (listwise).
    pub code_temperature: f64,
    /// Weight of the bit-balance regulariser `Σ_b mean(h_b)²`.
    pub bit_balance: f64,
    /// Weight of the decorrelation regulariser `‖HᵀH/n − I‖²_F / bits²`.
    pub decorrelation: f64,
}

/// `[eval]` of `kind = "retrieval"` (besides `every`).
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalEvalSection {
    /// Baselines evaluated beside the head.
    pub methods: Vec<String>,
    /// Bit budgets of the baselines (`[]`: the head's `model.bits` only).
    pub bits: Vec<usize>,
    /// Recall@k for each k.
    pub k: Vec<usize>,
    /// Re-ranking depths R (Hamming top-R re-ranked with exact cosines, asymmetrically, and
    /// through the decoded codes).
    pub rerank: Vec<usize>,
    /// Bytes per row of the product-quantised decoding residual of the `decoded_pq` rows
    /// (`0`: no such rows); must divide the embedding dimension.
    pub pq_bytes: usize,
}

/// Everything specific to `kind = "retrieval"`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalTask {
    /// `[data]`.
    pub data: EmbeddingSection,
    /// `[model]`.
    pub model: HeadSection,
    /// `[objective]`.
    pub objective: ObjectiveSection,
    /// `[eval]`.
    pub eval: RetrievalEvalSection,
    /// `[encoder]`: fine-tune a sentence encoder under the head (with `data.texts`).
    pub encoder: Option<EncoderSection>,
}

/// `[data]`: the synthetic classification task of `kind = "classify"`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSection {
    /// Training examples (drawn once from the seed).
    pub train_size: usize,
    /// Held-out examples.
    pub eval_size: usize,
    /// Input dimension.
    pub dim: usize,
    /// Number of classes (Gaussian clusters).
    pub classes: usize,
    /// Standard deviation of each cluster around its centre.
    pub noise: f64,
}

/// `[model]`: a binary MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSection {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Weight scaling: `none`, `per_tensor` or `per_channel`.
    pub scaling: String,
    /// Train the scales instead of recomputing them.
    pub learnable_scale: bool,
    /// Binarize hidden activations with the estimator too.
    pub binary_activations: bool,
    /// Keep the first layer in float (common practice).
    pub float_first: bool,
    /// Keep the last layer in float (common practice).
    pub float_last: bool,
}

/// Optimizer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Adam on every parameter.
    Adam,
    /// AdamW on every parameter.
    Adamw,
    /// SGD with momentum on every parameter.
    Sgd,
    /// Bop on binary weights, Adam on the rest.
    BopAdam,
}

/// `[optimizer]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSection {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (AdamW) or L2 penalty.
    pub weight_decay: f64,
    /// Adam β1 / SGD momentum.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Bop γ.
    pub bop_gamma: f64,
    /// Bop τ.
    pub bop_tau: f64,
}

/// `[schedule]`: learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// Constant after a linear warmup.
    Constant {
        /// Warmup steps.
        warmup_steps: usize,
    },
    /// Linear warmup, then cosine decay to `min_lr`.
    Cosine {
        /// Warmup steps.
        warmup_steps: usize,
        /// Final learning rate.
        min_lr: f64,
    },
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step (over all ranks of a data-parallel run).
    pub batch_size: usize,
    /// Split each step's batch into this many equal micro-batches, one forward/backward
    /// each, their gradients summed in order (1 = off): the memory of a smaller batch, the
    /// update of the whole one. A data-parallel run with N ranks sums in the same way, so it
    /// equals a one-process run with `accumulate = N` bit for bit on the CPU.
    pub accumulate: usize,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Log training metrics every N steps.
    pub log_every: usize,
}

/// `[eval]`: held-out evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSection {
    /// Evaluate every N steps (0 = only at the end; the end is always evaluated).
    pub every: usize,
}

/// `[export]`: what a finished run writes to its export directory.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSection {
    /// Classify: each binary layer's weights as a codes directory in the contract layout (one
    /// row per output channel) plus its scales.
    pub weights: bool,
    /// Retrieval: also write the database codes as a FAISS `IndexBinaryFlat` file.
    pub faiss: bool,
}

/// `[checkpoint]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointSection {
    /// Write a checkpoint every N steps (0 = only the final one).
    pub every: usize,
    /// Keep the last N checkpoints.
    pub keep_last: usize,
}

/// What the trainer does when a monitor fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorAction {
    /// Record the value only.
    Log,
    /// Record an event and a warning.
    Warn,
    /// Skip the optimizer step that caused it.
    SkipStep,
    /// Save a checkpoint, record the event, exit non-zero.
    Stop,
}

impl MonitorAction {
    const NAMES: [&'static str; 4] = ["log", "warn", "skip_step", "stop"];

    /// The name used in recipes and events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Log => Self::NAMES[0],
            Self::Warn => Self::NAMES[1],
            Self::SkipStep => Self::NAMES[2],
            Self::Stop => Self::NAMES[3],
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "log" => Some(Self::Log),
            "warn" => Some(Self::Warn),
            "skip_step" => Some(Self::SkipStep),
            "stop" => Some(Self::Stop),
            _ => None,
        }
    }
}

/// One monitor's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorSection {
    /// Compute it at all.
    pub enabled: bool,
    /// Compute it every N steps (defaults to `monitors.every`).
    pub every: usize,
    /// What to do when it fires.
    pub action: MonitorAction,
    /// The firing threshold (meaning depends on the monitor).
    pub threshold: f64,
}

/// `[monitors]`: every stability monitor, each `[monitors.<name>]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorsSection {
    /// Default period in steps.
    pub every: usize,
    /// `(name, settings)` in the order of [`MonitorsSection::NAMES`].
    pub monitors: Vec<(&'static str, MonitorSection)>,
    /// Rolling window of the spike detectors, in logged steps.
    pub spike_window: usize,
    /// Random directions of the finite-difference mismatch monitor.
    pub fd_directions: usize,
}

impl MonitorsSection {
    /// Monitor names with (default action, default threshold, meaning of the threshold).
    pub const NAMES: [(&'static str, &'static str, f64, &'static str); 13] = [
        (
            "shadow_cosine",
            "warn",
            0.2,
            "fires when the cosine between the STE and the smooth-surrogate gradient falls below",
        ),
        (
            "finite_difference",
            "log",
            0.25,
            "classify and lm (retrieval runs do not compute it): fires when the sign agreement of ⟨g_STE, u⟩ with finite differences falls below (0.5 = chance; near-chance agreement is common for STEs, so it only logs by default)",
        ),
        (
            "flip_ratio",
            "log",
            0.1,
            "fires when the fraction of binary weights that flipped since the last check exceeds",
        ),
        (
            "pass_through",
            "warn",
            0.05,
            "fires when the fraction of latent weights inside the pass-through region falls below",
        ),
        ("quant_error", "log", 0.9, "fires when ‖W − αB‖/‖W‖ exceeds"),
        (
            "loss_spike",
            "skip_step",
            6.0,
            "fires when the loss's rolling z-score exceeds",
        ),
        (
            "grad_spike",
            "warn",
            6.0,
            "fires when the gradient norm's rolling z-score exceeds",
        ),
        (
            "bit_balance",
            "warn",
            0.45,
            "retrieval only: fires when some code bit's fraction of ones on the training rows is further than this from 0.5 (a nearly constant, wasted bit)",
        ),
        (
            "attention",
            "log",
            0.05,
            "lm only: fires when some head's mean attention entropy (nats; for {0,1} attention, its density of ones) falls below (attention collapsed onto one position, or a mask of zeros)",
        ),
        (
            "act_clamp",
            "log",
            0.1,
            "lm only: fires when the fraction of BitLinear int8 activations at ±127 exceeds (per-token absmax puts at least one per token there)",
        ),
        (
            "load_balance",
            "warn",
            0.5,
            "moe only: fires when a MoE layer enters collapse (the [moe.collapse] thresholds: normalised load entropy, max/mean load, starving experts, dropped fraction; threshold unused)",
        ),
        (
            "routing_flip",
            "log",
            0.2,
            "moe only: fires when the fraction of probe tokens whose first expert changed since the last check exceeds",
        ),
        (
            "non_finite",
            "stop",
            0.0,
            "fires on any NaN or infinity in the loss or gradients (threshold unused)",
        ),
    ];

    /// The settings of monitor `name`.
    pub fn get(&self, name: &str) -> Option<&MonitorSection> {
        self.monitors
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
    }
}

/// A validated recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Run name (directory prefix).
    pub name: String,
    /// One line for `bllm ls`.
    pub description: String,
    /// Trainer.
    pub kind: Kind,
    /// Seed of everything.
    pub seed: u64,
    /// The backend a run trains on: `cpu` (the default CPU backend), `flex` or `ndarray` (a CPU
    /// backend by name), `cuda` or `wgpu`.
    pub device: String,
    /// The kind-specific sections (`[data]`, `[model]`, …).
    pub task: Task,
    /// `[estimator]`, a `bllm_ste::Estimator` table, checked by [`ComponentCheck`].
    pub estimator: Table,
    /// `[optimizer]`.
    pub optimizer: OptimizerSection,
    /// `[schedule]`.
    pub schedule: LrSchedule,
    /// `[train]`.
    pub train: TrainSection,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointSection,
    /// `[eval]`.
    pub eval: EvalSection,
    /// `[export]`.
    pub export: ExportSection,
    /// `[monitors]`.
    pub monitors: MonitorsSection,
    /// `[sweep]`: dotted path → values (empty when absent).
    pub sweep: Vec<(String, Vec<Value>)>,
    /// The resolved TOML (file + overrides), to save in the run directory.
    pub resolved: Table,
}

/// Validation of component tables whose schema lives in another crate. `check` returns the
/// problems as `(dotted key, expected, found)`.
pub trait ComponentCheck {
    /// Checks the `[estimator]` table.
    fn estimator(&self, table: &Table) -> Vec<(String, String, String)>;
    /// Checks a KV cache's `keys` and `values` quantizer tables together (what only keys may
    /// have is a rule across the two); keys are relative to `cache`, e.g. `values.kind`.
    fn kv_cache(&self, keys: &Table, values: &Table) -> Vec<(String, String, String)> {
        let _ = (keys, values);
        Vec::new()
    }
}

/// Accepts any component table (for tools that only need the recipe's own schema).
impl ComponentCheck for () {
    fn estimator(&self, _: &Table) -> Vec<(String, String, String)> {
        Vec::new()
    }
}

impl Recipe {
    /// Reads, overrides and validates a recipe file; on failure returns every problem found.
    pub fn load(path: &Path, overrides: &[Override], check: &dyn ComponentCheck) -> Result<Self> {
        let text = crate::error::read_recipe_text(path)?;
        Self::parse(&text, &path.display().to_string(), overrides, check)
    }

    /// Parses recipe text (`file` names it in messages), applies overrides, validates.
    pub fn parse(
        text: &str,
        file: &str,
        overrides: &[Override],
        check: &dyn ComponentCheck,
    ) -> Result<Self> {
        let mut table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| RecipeError::Syntax {
                path: file.to_owned(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
        let mut issues = Vec::new();
        for o in overrides {
            if let Err(msg) = apply(&mut table, &o.key, o.value.clone()) {
                issues.push(Issue {
                    source: format!("override {}", o.text),
                    key: o.key.clone(),
                    expected: "a path into tables".into(),
                    found: msg,
                });
            }
        }
        let marks: Vec<(String, String)> = overrides
            .iter()
            .map(|o| (o.key.clone(), o.text.clone()))
            .collect();
        let mut r = Report {
            file,
            overrides: &marks,
            issues,
        };
        let recipe = Self::from_table(table, &mut r, check);
        if r.issues.is_empty() {
            Ok(recipe)
        } else {
            Err(RecipeError::Invalid(r.issues))
        }
    }

    fn from_table(table: Table, r: &mut Report<'_>, check: &dyn ComponentCheck) -> Self {
        let mut root = Section::root(&table);
        let name = root.string("name", None, r);
        if !name.is_empty()
            && !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            r.push(
                "name",
                "letters, digits, '-', '_' or '.' (it names the run directory)",
                format!("the string {name:?}"),
            );
        }
        let description = root.string("description", Some(""), r);
        let kind = root
            .choice("kind", &Kind::NAMES, None, r)
            .and_then(|k| Kind::parse(&k))
            .unwrap_or(Kind::Classify);
        let seed = root.int("seed", Some(0), 0, i64::MAX, r) as u64;
        let device = root
            .choice(
                "device",
                &["cpu", "flex", "ndarray", "cuda", "wgpu"],
                Some("cpu"),
                r,
            )
            .unwrap_or_else(|| "cpu".into());

        let mut task = match kind {
            Kind::Classify => classify_sections(&mut root, r),
            Kind::Retrieval => retrieval_sections(&mut root, r),
            Kind::Lm => lm_sections(&mut root, r),
            Kind::Moe => moe_sections(&mut root, r),
            Kind::Adapter => adapter_sections(&mut root, r),
            Kind::KvProbe => kv_probe_sections(&mut root, r, check),
        };
        let estimator = component_table(&mut root, "estimator", "clipped", r);
        push_component("estimator", check.estimator(&estimator), r);

        let mut o = root.table("optimizer", r);
        let opt_kind = match o
            .choice(
                "kind",
                &["adam", "adamw", "sgd", "bop_adam"],
                Some("adam"),
                r,
            )
            .as_deref()
        {
            Some("adamw") => OptimizerKind::Adamw,
            Some("sgd") => OptimizerKind::Sgd,
            Some("bop_adam") => OptimizerKind::BopAdam,
            _ => OptimizerKind::Adam,
        };
        let optimizer = OptimizerSection {
            kind: opt_kind,
            lr: o.float("lr", Some(1e-3), 0.0, 10.0, r),
            weight_decay: o.float("weight_decay", Some(0.0), 0.0, 1.0, r),
            beta1: o.float("beta1", Some(0.9), 0.0, 0.999_999, r),
            beta2: o.float("beta2", Some(0.999), 0.0, 0.999_999_9, r),
            eps: o.float("eps", Some(1e-8), 1e-12, 1.0, r),
            bop_gamma: o.float("bop_gamma", Some(1e-4), 1e-12, 1.0, r),
            bop_tau: o.float("bop_tau", Some(1e-8), 0.0, 1.0, r),
        };
        o.finish(r);

        let mut s = root.table("schedule", r);
        let warmup_steps = s.int("warmup_steps", Some(0), 0, i64::MAX, r) as usize;
        let schedule = match s
            .choice("kind", &["constant", "cosine"], Some("cosine"), r)
            .as_deref()
        {
            Some("constant") => LrSchedule::Constant { warmup_steps },
            _ => LrSchedule::Cosine {
                warmup_steps,
                min_lr: s.float("min_lr", Some(0.0), 0.0, 10.0, r),
            },
        };
        s.finish(r);

        let mut t = root.table("train", r);
        let before = r.issues.len();
        let train = TrainSection {
            // A probe does not train: it needs no step count.
            steps: t.int(
                "steps",
                (kind == Kind::KvProbe).then_some(1),
                1,
                100_000_000,
                r,
            ) as usize,
            batch_size: t.int("batch_size", Some(64), 1, 1 << 24, r) as usize,
            accumulate: t.int("accumulate", Some(1), 1, 1 << 16, r) as usize,
            grad_clip: t.float("grad_clip", Some(0.0), 0.0, f64::INFINITY, r),
            log_every: t.int("log_every", Some(10), 1, i64::MAX, r) as usize,
        };
        t.finish(r);
        // Cross-field checks only compare values that were themselves valid.
        let train_ok = r.issues.len() == before;
        if train_ok && warmup_steps > train.steps {
            r.push(
                "schedule.warmup_steps",
                format!("at most train.steps ({})", train.steps),
                format!("the integer {warmup_steps}"),
            );
        }
        if train_ok && train.batch_size % train.accumulate != 0 {
            r.push(
                "train.accumulate",
                format!(
                    "a divisor of train.batch_size ({}): the micro-batches are equal parts",
                    train.batch_size
                ),
                format!("the integer {}", train.accumulate),
            );
        }
        if let Task::Classify { data, .. } = &task {
            if train_ok && train.batch_size > data.train_size {
                r.push(
                    "train.batch_size",
                    format!("at most data.train_size ({})", data.train_size),
                    format!("the integer {}", train.batch_size),
                );
            }
        }
        if kind == Kind::Retrieval && opt_kind == OptimizerKind::BopAdam {
            r.push(
                "optimizer.kind",
                "adam, adamw or sgd (a projection head has no binary weights for Bop)",
                "the string \"bop_adam\"",
            );
        }

        let mut ev = root.table("eval", r);
        let eval = EvalSection {
            every: ev.int("every", Some(0), 0, i64::MAX, r) as usize,
        };
        if let Task::Retrieval(t) = &mut task {
            t.eval = retrieval_eval(&mut ev, r);
        }
        ev.finish(r);
        let mut ex = root.table("export", r);
        let export = match kind {
            Kind::Classify | Kind::Lm | Kind::Moe | Kind::Adapter | Kind::KvProbe => {
                ExportSection {
                    weights: ex.boolean("weights", kind == Kind::Classify, r),
                    faiss: false,
                }
            }
            Kind::Retrieval => ExportSection {
                weights: false,
                faiss: ex.boolean("faiss", false, r),
            },
        };
        ex.finish(r);

        let mut c = root.table("checkpoint", r);
        let checkpoint = CheckpointSection {
            every: c.int("every", Some(0), 0, i64::MAX, r) as usize,
            keep_last: c.int("keep_last", Some(2), 1, 1000, r) as usize,
        };
        c.finish(r);

        let mut ms = root.table("monitors", r);
        let every = ms.int("every", Some(10), 1, i64::MAX, r) as usize;
        let spike_window = ms.int("spike_window", Some(50), 5, 100_000, r) as usize;
        let fd_directions = ms.int("fd_directions", Some(16), 1, 1024, r) as usize;
        let mut monitors = Vec::new();
        for (mname, action, threshold, _) in MonitorsSection::NAMES {
            let mut one = ms.table(mname, r);
            let action = one
                .choice("action", &MonitorAction::NAMES, Some(action), r)
                .and_then(|a| MonitorAction::parse(&a))
                .unwrap_or(MonitorAction::Log);
            let settings = MonitorSection {
                enabled: one.boolean("enabled", true, r),
                every: one.int("every", Some(every as i64), 1, i64::MAX, r) as usize,
                action,
                threshold: one.float("threshold", Some(threshold), 0.0, f64::INFINITY, r),
            };
            one.finish(r);
            monitors.push((mname, settings));
        }
        ms.finish(r);
        let monitors = MonitorsSection {
            every,
            monitors,
            spike_window,
            fd_directions,
        };

        let mut sweep = Vec::new();
        if let Some(v) = root.raw("sweep") {
            match v {
                Value::Table(t) => {
                    for (k, v) in t {
                        match v {
                            Value::Array(a) if !a.is_empty() => sweep.push((k.clone(), a.clone())),
                            other => r.push(
                                &format!("sweep.{k}"),
                                "a non-empty array of values",
                                crate::walk::describe(other),
                            ),
                        }
                    }
                }
                other => r.push(
                    "sweep",
                    "a table of dotted key = [values]",
                    crate::walk::describe(other),
                ),
            }
        }
        root.finish(r);

        Recipe {
            name,
            description,
            kind,
            seed,
            device,
            task,
            estimator,
            optimizer,
            schedule,
            train,
            checkpoint,
            eval,
            export,
            monitors,
            sweep,
            resolved: table.clone(),
        }
    }

    /// The retrieval sections, when `kind = "retrieval"`.
    pub fn retrieval(&self) -> Option<&RetrievalTask> {
        match &self.task {
            Task::Retrieval(t) => Some(t),
            _ => None,
        }
    }

    /// The adapter sections, when `kind = "adapter"`.
    pub fn adapter(&self) -> Option<&AdapterTask> {
        match &self.task {
            Task::Adapter(t) => Some(t),
            _ => None,
        }
    }

    /// The MoE sections, when `kind = "moe"`.
    pub fn moe(&self) -> Option<&MoeTask> {
        match &self.task {
            Task::Moe(t) => Some(t),
            _ => None,
        }
    }

    /// The KV-probe sections, when `kind = "kv_probe"`.
    pub fn kv_probe(&self) -> Option<&KvProbeTask> {
        match &self.task {
            Task::KvProbe(t) => Some(t),
            _ => None,
        }
    }

    /// The LM sections, when `kind = "lm"`.
    pub fn lm(&self) -> Option<&LmTask> {
        match &self.task {
            Task::Lm(t) => Some(t),
            _ => None,
        }
    }

    /// The resolved recipe as TOML text (what `recipe.resolved.toml` holds).
    pub fn resolved_toml(&self) -> String {
        toml::to_string_pretty(&self.resolved).unwrap_or_default()
    }
}

/// `[data]` and `[model]` of `kind = "classify"`.
fn classify_sections(root: &mut Section<'_>, r: &mut Report<'_>) -> Task {
    let mut d = root.table("data", r);
    let data = DataSection {
        train_size: d.int("train_size", Some(2048), 1, 10_000_000, r) as usize,
        eval_size: d.int("eval_size", Some(512), 1, 10_000_000, r) as usize,
        dim: d.int("dim", Some(32), 1, 1 << 20, r) as usize,
        classes: d.int("classes", Some(4), 2, 1 << 16, r) as usize,
        noise: d.float("noise", Some(0.5), 0.0, f64::INFINITY, r),
    };
    d.finish(r);

    let mut m = root.table("model", r);
    let hidden = match m.raw("hidden") {
        None => vec![64],
        Some(Value::Array(a)) if a.iter().all(|v| matches!(v, Value::Integer(i) if *i >= 1)) => a
            .iter()
            .filter_map(Value::as_integer)
            .map(|i| i as usize)
            .collect(),
        Some(v) => {
            r.push(
                &m.key("hidden"),
                "an array of integers >= 1 (hidden widths)",
                crate::walk::describe(v),
            );
            vec![64]
        }
    };
    let model = ModelSection {
        hidden,
        scaling: m
            .choice(
                "scaling",
                &["none", "per_tensor", "per_channel", "svid"],
                Some("per_channel"),
                r,
            )
            .unwrap_or_default(),
        learnable_scale: m.boolean("learnable_scale", false, r),
        binary_activations: m.boolean("binary_activations", false, r),
        float_first: m.boolean("float_first", false, r),
        float_last: m.boolean("float_last", true, r),
    };
    m.finish(r);
    Task::Classify { data, model }
}

/// A non-empty array of strings.
fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v {
        Some(Value::Array(a)) if !a.is_empty() => {
            a.iter().map(|x| x.as_str().map(String::from)).collect()
        }
        _ => None,
    }
}

/// `[data]` and `[model]` of `kind = "lm"`.
fn lm_sections(root: &mut Section<'_>, r: &mut Report<'_>) -> Task {
    let mut d = root.table("data", r);
    let data = text_data(&mut d, r);
    let eval_texts = match d.raw("eval_texts") {
        None => Vec::new(),
        v @ Some(_) => strings(v).unwrap_or_else(|| {
            r.push(
                "data.eval_texts",
                "a non-empty array of corpus directories or text files",
                describe(v.unwrap_or(&Value::Boolean(false))),
            );
            Vec::new()
        }),
    };
    d.finish(r);
    let mut m = root.table("model", r);
    let pretrained = pretrained_model(&mut m, r);
    let mut model = lm_model_with(&mut m, pretrained.is_some(), r);
    if pretrained.is_some() {
        for name in ["embed", "head"] {
            let k = model.projection(name);
            if k != "float" {
                r.push(
                    &format!("model.projections.{name}"),
                    "float (a pretrained model quantises its block projections only)",
                    format!("the string {k:?}"),
                );
            }
        }
    }
    model.quantize_layers = match m.raw("quantize_layers") {
        None => None,
        Some(v) => {
            let pair = v.as_array().and_then(|a| match a.as_slice() {
                [Value::Integer(a), Value::Integer(b)] if 0 <= *a && a < b => {
                    Some((*a as usize, *b as usize))
                }
                _ => None,
            });
            if pair.is_none() || pretrained.is_none() {
                r.push(
                    &m.key("quantize_layers"),
                    if pretrained.is_none() {
                        "absent without model.pretrained (a byte-level model quantises every block)"
                    } else {
                        "[start, end]: the half-open layer range, 0 <= start < end"
                    },
                    describe(v),
                );
            }
            pair
        }
    };
    if m.raw("monitor_layers").is_some() && pretrained.is_none() {
        r.push(
            &m.key("monitor_layers"),
            "absent without model.pretrained",
            "a value",
        );
    }
    model.monitor_layers = m.int("monitor_layers", Some(4), 0, 1 << 16, r) as usize;
    model.pretrained = pretrained;
    m.finish(r);
    let distill = match root.raw("distill") {
        None => None,
        Some(_) => {
            let mut d = root.table("distill", r);
            let s = DistillSection {
                temperature: d.float("temperature", Some(1.0), 1e-3, 1e3, r),
                kl: d.float("kl", Some(1.0), 0.0, 1e6, r),
                ce: d.float("ce", Some(0.0), 0.0, 1e6, r),
                hidden: d.float("hidden", Some(0.0), 0.0, 1e6, r),
            };
            d.finish(r);
            if model.pretrained.is_none() {
                r.push(
                    "distill",
                    "absent without model.pretrained (the teacher is the float checkpoint)",
                    "a table",
                );
            } else if s.kl + s.ce + s.hidden == 0.0 {
                r.push(
                    "distill.kl",
                    "some weight > 0 among distill.kl, distill.ce, distill.hidden",
                    "all three 0",
                );
            }
            Some(s)
        }
    };
    if !eval_texts.is_empty() && model.pretrained.is_none() {
        r.push(
            "data.eval_texts",
            "absent without model.pretrained",
            "an array",
        );
    }
    Task::Lm(Box::new(LmTask {
        data,
        eval_texts,
        model,
        distill,
    }))
}

/// A component table of `sec` (`[estimator]`, `cache.keys`, …), or `{ kind = default_kind }`
/// when absent.
fn component_table(
    sec: &mut Section<'_>,
    key: &str,
    default_kind: &str,
    r: &mut Report<'_>,
) -> Table {
    sec.raw_table(key, r).unwrap_or_else(|| {
        let mut t = Table::new();
        t.insert("kind".into(), Value::String(default_kind.into()));
        t
    })
}

/// Records a [`ComponentCheck`]'s problems, their keys relative to `prefix`.
fn push_component(prefix: &str, problems: Vec<(String, String, String)>, r: &mut Report<'_>) {
    for (key, expected, found) in problems {
        let key = if key.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        r.push(&key, expected, found);
    }
}

/// `[model]`, `[data]`, `[probe]` and `[cache]` of `kind = "kv_probe"`.
fn kv_probe_sections(
    root: &mut Section<'_>,
    r: &mut Report<'_>,
    check: &dyn ComponentCheck,
) -> Task {
    let mut m = root.table("model", r);
    let pretrained = m.string("pretrained", None, r);
    m.finish(r);
    let mut d = root.table("data", r);
    let texts = match d.raw("texts") {
        v @ Some(_) => strings(v).unwrap_or_else(|| {
            r.push(
                "data.texts",
                "a non-empty array of corpus directories or text files",
                crate::walk::describe(v.unwrap_or(&Value::Boolean(false))),
            );
            Vec::new()
        }),
        None => {
            r.push(
                "data.texts",
                "a non-empty array of corpus directories or text files",
                "nothing",
            );
            Vec::new()
        }
    };
    let contexts = match d.raw("contexts") {
        None => vec![256, 1024, 2048],
        Some(Value::Array(a))
            if !a.is_empty()
                && a.iter()
                    .all(|x| x.as_integer().is_some_and(|n| (2..=1 << 20).contains(&n))) =>
        {
            a.iter()
                .filter_map(|x| x.as_integer().map(|n| n as usize))
                .collect()
        }
        Some(v) => {
            r.push(
                "data.contexts",
                "a non-empty array of window lengths from 2 to 1048576 tokens",
                crate::walk::describe(v),
            );
            Vec::new()
        }
    };
    let tokens = d.int("tokens", Some(2048), 2, 1 << 30, r) as usize;
    let calibration_tokens = d.int("calibration_tokens", Some(512), 2, 1 << 30, r) as usize;
    if let Some(&c) = contexts.iter().max() {
        if tokens < c {
            r.push(
                "data.tokens",
                format!("at least the longest context ({c})"),
                format!("the integer {tokens}"),
            );
        }
    }
    d.finish(r);
    let mut p = root.table("probe", r);
    let rows = p.int("rows", Some(256), 1, 1 << 20, r) as usize;
    let bucket = p.int("bucket", Some(128), 1, 1 << 20, r) as usize;
    p.finish(r);
    let mut c = root.table("cache", r);
    let cache_name = c.string("name", Some(""), r);
    let window = c.int("window", Some(0), 0, 1 << 30, r) as usize;
    let keys = component_table(&mut c, "keys", "float", r);
    let values = component_table(&mut c, "values", "float", r);
    c.finish(r);
    push_component("cache", check.kv_cache(&keys, &values), r);
    Task::KvProbe(Box::new(KvProbeTask {
        pretrained,
        texts,
        contexts,
        tokens,
        calibration_tokens,
        rows,
        bucket,
        cache_name,
        keys,
        values,
        window,
    }))
}

/// The text keys of `[data]` (`kind = "lm"`, `kind = "moe"` with `task = "lm"`).
fn text_data(d: &mut Section<'_>, r: &mut Report<'_>) -> TextSection {
    TextSection {
        path: d.string("path", None, r),
        valid_fraction: d.float("valid_fraction", Some(0.1), 1e-6, 0.999_999, r),
        train_bytes: d.int("train_bytes", Some(0), 0, i64::MAX, r) as usize,
        eval_bytes: d.int("eval_bytes", Some(0), 0, i64::MAX, r) as usize,
    }
}

/// `[data]`, `[source]`, `[model]` and `[adapter]` of `kind = "adapter"`.
fn adapter_sections(root: &mut Section<'_>, r: &mut Report<'_>) -> Task {
    let mut d = root.table("data", r);
    let data = text_data(&mut d, r);
    d.finish(r);
    // A pretrained base (`model.pretrained`) is the checkpoint itself: `[source]` then names
    // only the text the forgetting is measured on.
    let pretrained_base = root
        .raw("model")
        .and_then(|m| m.get("pretrained"))
        .is_some();
    let mut s = root.table("source", r);
    if pretrained_base {
        for key in ["steps", "lr", "cache"] {
            if let Some(v) = s.raw(key) {
                r.push(
                    &s.key(key),
                    "absent with model.pretrained (the base is the checkpoint; [source] names \
                     the text the forgetting is measured on)",
                    describe(v),
                );
            }
        }
    }
    let source = SourceSection {
        text: text_data(&mut s, r),
        steps: s.int("steps", Some(360), 1, 100_000_000, r) as usize,
        lr: s.float("lr", Some(6e-3), 0.0, 10.0, r),
        cache: s.string("cache", Some("checkpoints/adapter-bases"), r),
    };
    s.finish(r);
    let mut m = root.table("model", r);
    let pretrained = pretrained_model(&mut m, r);
    let mut model = lm_model_with(&mut m, pretrained.is_some(), r);
    model.pretrained = pretrained;
    m.finish(r);
    for (name, kind) in &model.projections {
        if kind != "float" {
            r.push(
                &format!("model.projections.{name}"),
                "float (adapters sit on a frozen float model)",
                format!("the string {kind:?}"),
            );
        }
    }
    let mut a = root.table("adapter", r);
    // A pretrained Llama also has its SwiGLU gate.
    let names: &[&str] = if model.pretrained.is_some() {
        &["q", "k", "v", "o", "gate", "up", "down"]
    } else {
        &["q", "k", "v", "o", "up", "down"]
    };
    let targets = match a.raw("targets") {
        None => names.iter().map(|n| (*n).to_owned()).collect(),
        Some(Value::Array(v))
            if !v.is_empty()
                && v.iter()
                    .all(|t| t.as_str().is_some_and(|t| names.contains(&t))) =>
        {
            v.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        }
        Some(v) => {
            r.push(
                &a.key("targets"),
                format!(
                    "a non-empty array of projection names ({})",
                    names.join(", ")
                ),
                crate::walk::describe(v),
            );
            Vec::new()
        }
    };
    let adapter = AdapterSection {
        kind: a
            .choice(
                "kind",
                &["lora", "binary_lora", "bitdelta"],
                Some("lora"),
                r,
            )
            .unwrap_or_default(),
        rank: a.int("rank", Some(8), 1, 1 << 16, r) as usize,
        alpha: a.float("alpha", Some(0.0), 0.0, 1e6, r),
        targets,
        learnable_scale: a.boolean("learnable_scale", true, r),
        distill_steps: a.int("distill_steps", Some(100), 0, 100_000_000, r) as usize,
    };
    a.finish(r);
    Task::Adapter(Box::new(AdapterTask {
        data,
        source,
        model,
        adapter,
    }))
}

/// `[data]`, `[model]` and `[moe]` of `kind = "moe"`.
fn moe_sections(root: &mut Section<'_>, r: &mut Report<'_>) -> Task {
    let mut d = root.table("data", r);
    let task = d
        .choice("task", &["clusters", "lm"], Some("clusters"), r)
        .unwrap_or_default();
    let lm = task == "lm";
    let data = if lm {
        MoeData::Text(text_data(&mut d, r))
    } else {
        MoeData::Clusters(ClustersSection {
            train_size: d.int("train_size", Some(4096), 1, 10_000_000, r) as usize,
            eval_size: d.int("eval_size", Some(1024), 1, 10_000_000, r) as usize,
            dim: d.int("dim", Some(32), 1, 1 << 20, r) as usize,
            classes: d.int("classes", Some(32), 2, 1 << 16, r) as usize,
            groups: d.int("groups", Some(8), 1, 1 << 16, r) as usize,
            noise: d.float("noise", Some(1.0), 0.0, f64::INFINITY, r),
            spread: d.float("spread", Some(3.0), 0.0, f64::INFINITY, r),
        })
    };
    d.finish(r);
    let mut m = root.table("model", r);
    let (lm_model, d_model) = if lm {
        let model = lm_model(&mut m, r);
        let dm = model.d_model;
        (Some(model), dm)
    } else {
        (None, m.int("d_model", Some(64), 1, 1 << 16, r) as usize)
    };
    m.finish(r);
    let mut s = root.table("moe", r);
    let before = r.issues.len();
    let experts = s.int("experts", Some(8), 2, 1 << 12, r) as usize;
    let top_k = s.int("top_k", Some(1), 1, 1 << 12, r) as usize;
    let router = s
        .choice(
            "router",
            &["softmax", "hash", "sign_code", "binary", "gumbel"],
            Some("softmax"),
            r,
        )
        .unwrap_or_default();
    if r.issues.len() == before {
        if top_k > experts {
            r.push(
                &s.key("top_k"),
                format!("at most moe.experts ({experts})"),
                format!("the integer {top_k}"),
            );
        }
        if router == "sign_code" && !experts.is_power_of_two() {
            r.push(
                &s.key("experts"),
                "a power of two (the sign_code router names experts with log2 E bits)",
                format!("the integer {experts}"),
            );
        }
        if router == "gumbel" && top_k != 1 {
            r.push(
                &s.key("top_k"),
                "1 (the gumbel router is top-1)",
                format!("the integer {top_k}"),
            );
        }
    }
    let mut c = s.table("collapse", r);
    let collapse = CollapseSection {
        min_entropy: c.float("min_entropy", Some(0.5), 0.0, 1.0, r),
        max_over_mean: c.float("max_over_mean", Some(2.0), 1.0, f64::INFINITY, r),
        dead_fraction: c.float("dead_fraction", Some(0.1), 0.0, 1.0, r),
        dead_window: c.int("dead_window", Some(500), 1, i64::MAX, r) as usize,
        max_dropped: c.float("max_dropped", Some(0.05), 0.0, 1.0, r),
        window: c.int("window", Some(20), 1, 100_000, r) as usize,
    };
    c.finish(r);
    let moe = MoeSection {
        experts,
        top_k,
        capacity_factor: s.float("capacity_factor", Some(1.25), 0.0, 1e6, r),
        expert_hidden: s.int("expert_hidden", Some(128), 1, 1 << 20, r) as usize,
        router,
        balancing: s
            .choice(
                "balancing",
                &["none", "aux_loss", "aux_free"],
                Some("none"),
                r,
            )
            .unwrap_or_default(),
        aux_alpha: s.float("aux_alpha", Some(1e-2), 0.0, 1e6, r),
        z_loss: s.float("z_loss", Some(1e-3), 0.0, 1e6, r),
        bias_gamma: s.float("bias_gamma", Some(1e-3), 0.0, 1e6, r),
        gumbel_tau_start: s.float("gumbel_tau_start", Some(1.0), 1e-6, 1e6, r),
        gumbel_tau_end: s.float("gumbel_tau_end", Some(0.1), 1e-6, 1e6, r),
        collapse,
    };
    s.finish(r);
    Task::Moe(Box::new(MoeTask {
        data,
        lm_model,
        d_model,
        moe,
    }))
}

/// `model.pretrained` (a checkpoint directory), if given; with it the shape keys must be
/// absent (the shape comes from the checkpoint's own files).
fn pretrained_model(m: &mut Section<'_>, r: &mut Report<'_>) -> Option<String> {
    let pretrained = m
        .raw("pretrained")
        .is_some()
        .then(|| m.string("pretrained", None, r));
    if pretrained.is_some() {
        for key in ["d_model", "layers", "heads", "mlp_ratio", "attention"] {
            if let Some(v) = m.raw(key) {
                r.push(
                    &m.key(key),
                    "absent with model.pretrained (the shape comes from the checkpoint's own files)",
                    describe(v),
                );
            }
        }
    }
    pretrained
}

/// The keys of `[model]` of `kind = "lm"` (also `kind = "moe"` with `task = "lm"`).
fn lm_model(m: &mut Section<'_>, r: &mut Report<'_>) -> LmModelSection {
    lm_model_with(m, false, r)
}

/// [`lm_model`]; a `pretrained` model also has `projections.gate` (its SwiGLU gate, default:
/// the precision of `up`).
fn lm_model_with(m: &mut Section<'_>, pretrained: bool, r: &mut Report<'_>) -> LmModelSection {
    let before = r.issues.len();
    let d_model = m.int("d_model", Some(64), 1, 1 << 16, r) as usize;
    let heads = m.int("heads", Some(4), 1, 1 << 10, r) as usize;
    if r.issues.len() == before && d_model % heads != 0 {
        r.push(
            &m.key("heads"),
            format!("a divisor of model.d_model ({d_model})"),
            format!("the integer {heads}"),
        );
    }
    let mut p = m.table("projections", r);
    let mut projections = Vec::new();
    for name in LmModelSection::PROJECTIONS {
        let allowed: &[&str] = if name == "embed" {
            &["float", "binary"]
        } else {
            &["float", "binary", "bitnet"]
        };
        let k = p
            .choice(name, allowed, Some("float"), r)
            .unwrap_or_default();
        projections.push((name, k));
    }
    if pretrained {
        let up = projections
            .iter()
            .find(|(n, _)| *n == "up")
            .map_or_else(|| "float".to_owned(), |(_, k)| k.clone());
        let k = p
            .choice("gate", &["float", "binary", "bitnet"], Some(&up), r)
            .unwrap_or_default();
        projections.push(("gate", k));
    }
    p.finish(r);
    LmModelSection {
        d_model,
        layers: m.int("layers", Some(2), 1, 1024, r) as usize,
        heads,
        mlp_ratio: m.int("mlp_ratio", Some(4), 1, 64, r) as usize,
        context: m.int("context", Some(64), 2, 1 << 16, r) as usize,
        projections,
        scaling: m
            .choice(
                "scaling",
                &["none", "per_tensor", "per_channel", "svid"],
                Some("per_channel"),
                r,
            )
            .unwrap_or_default(),
        learnable_scale: m.boolean("learnable_scale", false, r),
        activations: m
            .choice(
                "activations",
                &["float", "sign", "rsign", "elastic"],
                Some("float"),
                r,
            )
            .unwrap_or_default(),
        sub_norm: m.boolean("sub_norm", false, r),
        attention: m
            .choice("attention", &["softmax", "binary_mask"], Some("softmax"), r)
            .unwrap_or_default(),
        pretrained: None,
        quantize_layers: None,
        monitor_layers: 0,
    }
}

/// `[data]`, `[model]` and `[objective]` of `kind = "retrieval"` (`[eval]` is read later).
fn retrieval_sections(root: &mut Section<'_>, r: &mut Report<'_>) -> Task {
    let mut d = root.table("data", r);
    let path = d.raw("path").is_some().then(|| d.string("path", None, r));
    let synthetic = match d.raw("synthetic") {
        None => None,
        Some(_) => {
            let mut sy = d.table("synthetic", r);
            let s = SyntheticSection {
                rows: sy.int("rows", Some(10_000), 2, 100_000_000, r) as usize,
                dim: sy.int("dim", Some(128), 1, 1 << 20, r) as usize,
                clusters: sy.int("clusters", Some(24), 1, 1 << 20, r) as usize,
                outlier_fraction: sy.float("outlier_fraction", Some(0.02), 0.0, 0.999, r),
            };
            sy.finish(r);
            Some(s)
        }
    };
    let texts = d.raw("texts").is_some().then(|| d.string("texts", None, r));
    let text_field = d
        .raw("text_field")
        .is_some()
        .then(|| d.int("text_field", None, 0, 1 << 20, r) as usize);
    if path.is_none() && synthetic.is_none() && texts.is_none() {
        r.push(
            "data.path",
            "a file of embeddings (or a [data.synthetic] table, or data.texts with [encoder])",
            "nothing (the key is required)",
        );
    }
    let queries_path = d
        .raw("queries_path")
        .is_some()
        .then(|| d.string("queries_path", None, r));
    if texts.is_some() {
        for (key, set) in [
            ("path", path.is_some()),
            ("synthetic", synthetic.is_some()),
            ("queries_path", queries_path.is_some()),
        ] {
            if set {
                r.push(
                    &format!("data.{key}"),
                    "absent when data.texts is set (the frozen encoder is the teacher and the \
                     first data.queries lines are the queries)",
                    "a value",
                );
            }
        }
    } else if text_field.is_some() {
        r.push("data.text_field", "absent without data.texts", "a value");
    }
    let data = EmbeddingSection {
        path,
        synthetic,
        queries: d.int("queries", Some(1000), 1, i64::MAX, r) as usize,
        queries_path,
        normalize: d.boolean("normalize", true, r),
        train_rows: d.int("train_rows", Some(0), 0, i64::MAX, r) as usize,
        texts,
        text_field,
    };
    d.finish(r);

    let mut m = root.table("model", r);
    let model = HeadSection {
        bits: m.int("bits", Some(256), 1, 1 << 16, r) as usize,
        init_from: m
            .raw("init_from")
            .is_some()
            .then(|| m.string("init_from", None, r)),
        init: m
            .choice(
                "init",
                &["itq", "pca", "lsh_centred", "random"],
                Some("itq"),
                r,
            )
            .unwrap_or_default(),
        forward: m
            .choice("forward", &["surrogate", "sign"], Some("surrogate"), r)
            .unwrap_or_default(),
        learn_bias: m.boolean("learn_bias", true, r),
    };
    m.finish(r);

    let mut o = root.table("objective", r);
    let objective = ObjectiveSection {
        kind: o
            .choice("kind", &["listwise", "similarity"], Some("listwise"), r)
            .unwrap_or_default(),
        teacher_temperature: o.float("teacher_temperature", Some(0.02), 1e-6, 100.0, r),
        code_temperature: o.float("code_temperature", Some(0.02), 1e-6, 100.0, r),
        bit_balance: o.float("bit_balance", Some(0.0), 0.0, 1e6, r),
        decorrelation: o.float("decorrelation", Some(0.0), 0.0, 1e6, r),
    };
    o.finish(r);
    let encoder = match root.raw("encoder") {
        None => {
            if data.texts.is_some() {
                r.push(
                    "encoder",
                    "an [encoder] table (pretrained = \"models/minilm\", …) to fine-tune on data.texts",
                    "nothing",
                );
            }
            None
        }
        Some(_) => {
            let mut e = root.table("encoder", r);
            let s = EncoderSection {
                pretrained: e.string("pretrained", None, r),
                train_layers: e.int("train_layers", Some(1), 1, 1024, r) as usize,
                lr: e.float("lr", Some(2e-5), 0.0, 10.0, r),
                batch: e.int("batch", Some(128), 1, 1 << 20, r) as usize,
                bank: e.int("bank", Some(2048), 0, i64::MAX, r) as usize,
                refresh_every: e.int("refresh_every", Some(50), 1, i64::MAX, r) as usize,
            };
            e.finish(r);
            if data.texts.is_none() {
                r.push(
                    "data.texts",
                    "a text file (one text per line) for the [encoder] to fine-tune on",
                    "nothing",
                );
            }
            Some(s)
        }
    };
    Task::Retrieval(Box::new(RetrievalTask {
        data,
        model,
        objective,
        encoder,
        eval: RetrievalEvalSection {
            methods: Vec::new(),
            bits: Vec::new(),
            k: Vec::new(),
            rerank: Vec::new(),
            pq_bytes: 0,
        },
    }))
}

/// The retrieval keys of `[eval]`.
fn retrieval_eval(ev: &mut Section<'_>, r: &mut Report<'_>) -> RetrievalEvalSection {
    let methods = match ev.raw("methods") {
        None => ["lsh", "lsh_centred", "pca", "itq"]
            .map(String::from)
            .to_vec(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) if BASELINES.contains(&s) => out.push(s.to_owned()),
                    _ => r.push(
                        &format!("{}[{i}]", ev.key("methods")),
                        format!("one of {}", BASELINES.join(", ")),
                        crate::walk::describe(v),
                    ),
                }
            }
            out
        }
        Some(v) => {
            r.push(
                &ev.key("methods"),
                format!("an array of baseline names ({})", BASELINES.join(", ")),
                crate::walk::describe(v),
            );
            Vec::new()
        }
    };
    RetrievalEvalSection {
        methods,
        bits: int_list(ev, "bits", &[64, 128, 256], true, r),
        k: int_list(ev, "k", &[1, 10, 100], false, r),
        rerank: int_list(ev, "rerank", &[100, 1000], true, r),
        pq_bytes: ev.int("pq_bytes", Some(8), 0, 256, r) as usize,
    }
}

/// An array of positive integers (`allow_empty`: `[]` is valid).
fn int_list(
    s: &mut Section<'_>,
    key: &str,
    default: &[usize],
    allow_empty: bool,
    r: &mut Report<'_>,
) -> Vec<usize> {
    match s.raw(key) {
        None => default.to_vec(),
        Some(Value::Array(a))
            if (allow_empty || !a.is_empty())
                && a.iter().all(|v| matches!(v, Value::Integer(i) if *i >= 1)) =>
        {
            a.iter()
                .filter_map(Value::as_integer)
                .map(|i| i as usize)
                .collect()
        }
        Some(v) => {
            r.push(
                &s.key(key),
                if allow_empty {
                    "an array of integers >= 1"
                } else {
                    "a non-empty array of integers >= 1"
                },
                crate::walk::describe(v),
            );
            default.to_vec()
        }
    }
}
