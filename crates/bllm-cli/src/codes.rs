//! `bllm codes …`: pack embeddings into the contract layout, export, search, evaluate, bench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bllm_codes::io::{self, ManifestInfo, SourceInfo, npy};
use bllm_codes::metrics::{self, RecallReport};
use bllm_codes::{Metric, PackedCodes, bench, hamming};
use clap::{Args, Subcommand, ValueEnum};

/// `bllm codes` subcommands.
#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Sign-binarize each row of a float .npy (float32 or float16) into DIR/codes.bcodes and
    /// DIR/manifest.json.
    Pack(PackArgs),
    /// Export a codes directory to another format.
    Export(ExportArgs),
    /// Exact top-k Hamming search of query codes against database codes, written as TSV.
    Search(SearchArgs),
    /// Recall@k of codes against exact float neighbours (optionally after re-ranking).
    Recall(RecallArgs),
    /// Benchmark packing, Hamming top-k search and scan bandwidth against memcpy.
    Bench(BenchArgs),
    /// Validate a codes directory and print its manifest.
    Info(InfoArgs),
    /// Compare two codes directories bit by bit (for example a CPU and a CUDA run of one
    /// recipe); fails when more than --max-bit-fraction of the bits differ.
    Diff(DiffArgs),
    /// Fit a baseline encoder (lsh, lsh_centred, pca, itq, sign, sign_raw) on float embeddings and save it.
    Fit(FitArgs),
    /// Compare baselines: Recall@k for every method × bits, Hamming only and after re-ranking.
    Compare(CompareArgs),
}

/// Arguments of `bllm codes diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First codes directory (codes.bcodes + manifest.json).
    pub a: PathBuf,
    /// Second codes directory.
    pub b: PathBuf,
    /// Largest fraction of differing bits accepted (0 = must be identical).
    #[arg(long, default_value_t = 0.0)]
    pub max_bit_fraction: f64,
}

/// `bllm codes diff`: rows and bits that differ between two codes directories.
fn diff(a: DiffArgs) -> Result<()> {
    let (ca, _) = io::read_codes_dir(&a.a).with_context(|| format!("reading {}", a.a.display()))?;
    let (cb, _) = io::read_codes_dir(&a.b).with_context(|| format!("reading {}", a.b.display()))?;
    if (ca.rows(), ca.bits()) != (cb.rows(), cb.bits()) {
        bail!(
            "{} holds {} rows × {} bits but {} holds {} rows × {} bits",
            a.a.display(),
            ca.rows(),
            ca.bits(),
            a.b.display(),
            cb.rows(),
            cb.bits()
        );
    }
    let (mut bits, mut rows, mut worst) = (0u64, 0usize, 0u32);
    for r in 0..ca.rows() {
        let d = hamming::distance(ca.row(r), cb.row(r));
        bits += u64::from(d);
        rows += usize::from(d > 0);
        worst = worst.max(d);
    }
    let total = (ca.rows() * ca.bits()).max(1) as f64;
    let frac = bits as f64 / total;
    println!(
        "{} rows × {} bits: {bits} bits differ ({:.4} %), in {rows} rows; worst row differs in {worst} bits",
        ca.rows(),
        ca.bits(),
        100.0 * frac
    );
    if frac > a.max_bit_fraction {
        bail!(
            "{:.4} % of the bits differ, more than --max-bit-fraction {}",
            100.0 * frac,
            a.max_bit_fraction
        );
    }
    Ok(())
}

/// Arguments of `bllm codes compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Embeddings (.npy, .fvecs or .safetensors); the first --queries rows are the queries.
    #[arg(long)]
    pub data: PathBuf,
    /// Number of leading rows used as queries (the rest is the database and training set).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Methods.
    #[arg(long, value_delimiter = ',', default_value = "lsh,lsh_centred,pca,itq")]
    pub methods: Vec<String>,
    /// Bit budgets.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    pub bits: Vec<usize>,
    /// Neighbour counts.
    #[arg(short, long, value_delimiter = ',', default_value = "1,10,100")]
    pub k: Vec<usize>,
    /// Re-rank depths: the Hamming top R re-ranked exactly against the floats, asymmetrically,
    /// and through the decoded codes.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub rerank: Vec<usize>,
    /// Bytes per row of the decoder's product-quantised residual (`decoded_pq` rows; 0: none);
    /// must divide the dimension.
    #[arg(long, default_value_t = 8)]
    pub pq_bytes: usize,
    /// Seed of the random parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write results.json and results.md here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `bllm codes fit`.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Method: lsh, lsh_centred, pca, itq, sign (sign(x − μ)) or sign_raw (sign(x)).
    #[arg(long)]
    pub method: String,
    /// Code length.
    #[arg(long)]
    pub bits: usize,
    /// Training embeddings (.npy, float32 or float16).
    #[arg(long)]
    pub train: PathBuf,
    /// Output encoder directory (encoder.safetensors + encoder.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random parts (hyperplanes, ITQ's initial rotation, the decoder's k-means).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also fit the code decoder on the training rows (decoder.safetensors + decoder.json in
    /// the same directory), for `bllm codes search --rescore decoded`.
    #[arg(long)]
    pub decoder: bool,
    /// Bytes per row of the decoder's product-quantised residual (0: none); must divide the
    /// dimension.
    #[arg(long, default_value_t = 8, requires = "decoder")]
    pub pq_bytes: usize,
}

/// Arguments of `bllm encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Encoder directory (from `bllm codes fit` or a training run's export).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Embeddings to encode (.npy, float32 or float16).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    pub input: Option<PathBuf>,
    /// Text file to encode instead (one text per line): each line is embedded by the sentence
    /// encoder (`--model`, else the encoder directory itself when it holds a transformer), as
    /// `bllm embed` does, then coded by the encoder.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Sentence-transformers / Hugging Face BERT directory that embeds `--text` (e.g.
    /// models/minilm for a head trained on its embeddings). Default: `--encoder` when it holds
    /// `config.json` and `model.safetensors`.
    #[arg(long, requires = "text")]
    pub model: Option<PathBuf>,
    /// With `--text`: embed only this tab-separated field of each line (0-based).
    #[arg(long, value_name = "N", requires = "text")]
    pub tab_field: Option<usize>,
    /// With `--text`: texts per forward pass.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// With `--text`: CPU backend of the sentence encoder (as `bllm embed`).
    #[arg(long, value_enum, default_value_t = crate::models::CpuBackend::Flex)]
    pub backend: crate::models::CpuBackend,
    /// Output codes directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `bllm encode`: codes for new vectors through a saved encoder.
pub fn encode(a: EncodeArgs) -> Result<()> {
    let enc = bllm_hash::LinearEncoder::load(&a.encoder)?;
    let (x, source, input, how) = match (&a.input, &a.text) {
        (Some(p), _) => {
            let (x, s) = read_input(p)?;
            (x, s, p.clone(), String::new())
        }
        (None, Some(t)) => {
            let (x, s, how) = embed_text(&a, t, &enc)?;
            (x, s, t.clone(), how)
        }
        (None, None) => bail!("give --input EMBEDDINGS.npy or --text TEXTS.txt"),
    };
    let codes = enc
        .encode(&x)
        .with_context(|| format!("cannot encode {}", input.display()))?;
    let info = ManifestInfo {
        source: Some(source),
        encoder: Some(format!("{} ({}){how}", enc.method, a.encoder.display())),
        recipe: None,
        tool: Some(crate::tool_version()),
    };
    io::write_codes_dir(&a.out, &codes, info)?;
    println!(
        "encoded {} rows into {} bits with {} → {}",
        codes.rows(),
        codes.bits(),
        enc.method,
        a.out.display()
    );
    // With a residual decoder beside the encoder, the rows' residual bytes go beside the codes.
    if a.encoder.join(bllm_hash::DECODER_JSON).exists() {
        let dec = load_decoder(&a.encoder, &enc)?;
        if dec.residual_bytes() > 0 {
            let res = dec
                .residual_codes(&codes, &x)
                .with_context(|| format!("cannot code the residuals of {}", input.display()))?;
            let path = a.out.join(bllm_hash::RESIDUAL_NPY);
            npy::write_u8_npy(&path, codes.rows(), dec.residual_bytes(), &res)?;
            println!(
                "wrote {} residual bytes per row → {}",
                dec.residual_bytes(),
                path.display()
            );
        }
    }
    Ok(())
}

/// `--text` embedded by the sentence encoder of `bllm encode` (`--model`, else the encoder
/// directory), checked against the encoder's input width.
fn embed_text(
    a: &EncodeArgs,
    text: &Path,
    enc: &bllm_hash::LinearEncoder,
) -> Result<(bllm_codes::FloatMatrix, SourceInfo, String)> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None if a.encoder.join("config.json").is_file()
            && a.encoder.join("model.safetensors").is_file() =>
        {
            a.encoder.clone()
        }
        None => bail!(
            "--text needs a sentence encoder: {} holds no transformer (config.json + \
             model.safetensors); pass --model DIR (e.g. models/minilm, the model whose \
             embeddings the encoder was trained on)",
            a.encoder.display()
        ),
    };
    let (x, load_s, secs) =
        crate::models::embed_file(a.backend, &model, text, a.tab_field, a.batch)?;
    if x.cols() != enc.dim {
        bail!(
            "the sentence encoder {} gives {}-dimensional embeddings, but the encoder in {} \
             expects {} (was it trained on another model's embeddings?)",
            model.display(),
            x.cols(),
            a.encoder.display(),
            enc.dim
        );
    }
    println!(
        "embedded {} texts with {} in {secs:.1} s (model loaded in {load_s:.1} s)",
        x.rows(),
        model.display()
    );
    let source = SourceInfo {
        path: text.display().to_string(),
        sha256: io::sha256_file(text)?,
        dtype: "float32".into(),
        rows: x.rows(),
        dim: x.cols(),
    };
    let how = format!(
        " on {} embeddings of the text{}",
        model.display(),
        a.tab_field
            .map(|k| format!(" (tab field {k})"))
            .unwrap_or_default()
    );
    Ok((x, source, how))
}

/// The decoder saved beside `enc` in `dir`, checked against it.
fn load_decoder(dir: &Path, enc: &bllm_hash::LinearEncoder) -> Result<bllm_hash::CodeDecoder> {
    let dec = bllm_hash::CodeDecoder::load(dir)
        .with_context(|| format!("cannot load the decoder in {}", dir.display()))?;
    if (dec.dim, dec.bits, dec.normalize) != (enc.dim, enc.bits, enc.normalize) {
        bail!(
            "the decoder in {} is for {} → {} bits (normalize {}), but the encoder there is {} → {} bits (normalize {})",
            dir.display(),
            dec.dim,
            dec.bits,
            dec.normalize,
            enc.dim,
            enc.bits,
            enc.normalize
        );
    }
    Ok(dec)
}

/// Arguments of `bllm codes pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// Input .npy matrix, one embedding per row (float32 or float16).
    pub input: PathBuf,
    /// Output codes directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Code length: binarize the first N columns (default: all columns).
    #[arg(long, value_name = "N")]
    pub bits: Option<usize>,
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// NumPy uint64 [rows, ceil(bits/64)]: the contract words.
    Npy,
    /// NumPy uint8 [rows, ceil(bits/8)]: identical to numpy.packbits(bits, axis=1, bitorder="little").
    NpyU8,
    /// FAISS IndexBinaryFlat (faiss.read_index_binary); bits must be a multiple of 8.
    Faiss,
}

/// Arguments of `bllm codes export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Codes directory written by `bllm codes pack` (or a training run's export).
    pub dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `bllm codes search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Database codes directory.
    #[arg(long)]
    pub db: PathBuf,
    /// Query codes directory.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(short, long)]
    pub k: usize,
    /// Output TSV: query_index, rank, db_index, distance (with a header line); after
    /// asymmetric re-scoring the last column is `score` (higher is nearer).
    #[arg(long)]
    pub out: PathBuf,
    /// Re-score the Hamming top R (R >= k) against the database codes and keep the best k (see
    /// `--rescore`). Needs `--rerank-query` and `--encoder`; the float database is not needed.
    #[arg(long, value_name = "R", requires_all = ["rerank_query", "encoder"])]
    pub rerank: Option<usize>,
    /// How `--rerank` scores a candidate: `asymmetric`, the float query projected by
    /// `--encoder` against the ±1 code; `decoded`, the float query's cosine with the code
    /// decoded by the decoder saved in `--encoder` (`bllm codes fit --decoder`, or a training
    /// run's export), plus the row's residual from `<db>/residual.npy` when the decoder has a
    /// residual quantizer.
    #[arg(long, value_enum, default_value = "asymmetric", requires = "rerank")]
    pub rescore: RescoreArg,
    /// Float query embeddings (.npy, float32 or float16), row i ↔ query code i, for `--rerank`.
    #[arg(long, value_name = "Q.npy", requires = "rerank")]
    pub rerank_query: Option<PathBuf>,
    /// The encoder directory that coded the database (`bllm codes fit` or a training run's
    /// `export/encoder`), for `--rerank`.
    #[arg(long, value_name = "DIR", requires = "rerank")]
    pub encoder: Option<PathBuf>,
}

/// How `bllm codes search --rerank` re-scores the Hamming candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RescoreArg {
    /// The float query's projection against the ±1 database codes.
    Asymmetric,
    /// The float query's cosine with the decoded database codes (+ PQ residual).
    Decoded,
}

/// Arguments of `bllm codes recall`.
#[derive(Debug, Args)]
pub struct RecallArgs {
    /// Float database embeddings (.npy, float32 or float16), row i ↔ database code i.
    #[arg(long)]
    pub db_float: PathBuf,
    /// Float query embeddings (.npy), row i ↔ query code i.
    #[arg(long)]
    pub queries_float: PathBuf,
    /// Database codes directory.
    #[arg(long)]
    pub db: PathBuf,
    /// Query codes directory.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(short, long)]
    pub k: usize,
    /// Also report Recall@k after exactly re-ranking the Hamming top R (R >= k).
    #[arg(long, value_name = "R")]
    pub rerank: Option<usize>,
    /// Similarity of the float ground truth.
    #[arg(long, value_enum, default_value = "cosine")]
    pub metric: MetricArg,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Float similarity for the ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricArg {
    /// Cosine similarity.
    Cosine,
    /// Inner product.
    Ip,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Self {
        match m {
            MetricArg::Cosine => Metric::Cosine,
            MetricArg::Ip => Metric::InnerProduct,
        }
    }
}

/// Arguments of `bllm codes bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Database rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub db_rows: usize,
    /// Bits per code.
    #[arg(long, default_value_t = 256)]
    pub bits: usize,
    /// Queries.
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Rows of the f32 matrix in the packing benchmark.
    #[arg(long, default_value_t = 200_000)]
    pub pack_rows: usize,
    /// MiB per buffer of the memcpy measurement.
    #[arg(long, default_value_t = 256)]
    pub memcpy_mib: usize,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the random data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Hamming scan kernel: portable, popcnt or avx512 (default: the fastest available).
    #[arg(long)]
    pub kernel: Option<hamming::Kernel>,
    /// Write the database, queries and results as .npy here (for scripts/bench_vs_faiss.py).
    #[arg(long, value_name = "DIR")]
    pub save_data: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Arguments of `bllm codes info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Codes directory.
    pub dir: PathBuf,
}

/// Runs one `bllm codes` subcommand.
pub fn run(cmd: CodesCommand) -> Result<()> {
    match cmd {
        CodesCommand::Pack(a) => pack(a),
        CodesCommand::Export(a) => export(a),
        CodesCommand::Search(a) => search(a),
        CodesCommand::Recall(a) => recall(a),
        CodesCommand::Bench(a) => bench_cmd(a),
        CodesCommand::Info(a) => info(a),
        CodesCommand::Diff(a) => diff(a),
        CodesCommand::Fit(a) => fit(a),
        CodesCommand::Compare(a) => compare(a),
    }
}

fn read_dir_codes(dir: &Path) -> Result<PackedCodes> {
    let (codes, _) = io::read_codes_dir(dir)
        .with_context(|| format!("cannot read codes directory {}", dir.display()))?;
    Ok(codes)
}

/// Reads float embeddings from `.npy` and describes them for a manifest.
fn read_input(path: &Path) -> Result<(bllm_codes::FloatMatrix, SourceInfo)> {
    let (x, dtype) =
        npy::read_float_matrix_typed(path).context("cannot read the input embeddings")?;
    let source = SourceInfo {
        path: path.display().to_string(),
        sha256: io::sha256_file(path)?,
        dtype: dtype.name().into(),
        rows: x.rows(),
        dim: x.cols(),
    };
    Ok((x, source))
}

fn pack(a: PackArgs) -> Result<()> {
    let (x, source) = read_input(&a.input)?;
    let bits = a.bits.unwrap_or(x.cols());
    if bits == 0 || bits > x.cols() {
        bail!(
            "--bits {bits} is out of range: {} has {} columns, so bits must be in 1..={}",
            a.input.display(),
            x.cols(),
            x.cols()
        );
    }
    let codes = PackedCodes::from_f32_rows(x.as_slice(), x.cols(), bits)?;
    let (dtype, cols) = (source.dtype.clone(), x.cols());
    let info = ManifestInfo {
        source: Some(source),
        encoder: Some(format!("sign(x[:{bits}])")),
        recipe: None,
        tool: Some(crate::tool_version()),
    };
    io::write_codes_dir(&a.out, &codes, info)?;
    println!(
        "packed {} rows × {bits} bits from {} ({}, {} columns) into {} ({} payload bytes, {} words per row)",
        codes.rows(),
        a.input.display(),
        dtype,
        cols,
        a.out.join(io::CODES_FILE_NAME).display(),
        codes.byte_len(),
        codes.words_per_row()
    );
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let codes = read_dir_codes(&a.dir)?;
    match a.format {
        ExportFormat::Npy => npy::write_codes_npy_u64(&a.out, &codes)?,
        ExportFormat::NpyU8 => npy::write_codes_npy_u8(&a.out, &codes)?,
        ExportFormat::Faiss => io::write_faiss_binary_flat(&a.out, &codes)
            .with_context(|| format!("cannot export {} as FAISS", a.dir.display()))?,
    }
    println!(
        "exported {} rows × {} bits as {:?} to {}",
        codes.rows(),
        codes.bits(),
        a.format,
        a.out.display()
    );
    Ok(())
}

/// The TSV of `bllm codes search`: a header naming the last column `what`, then
/// query_index, rank, db_index and that value for every hit.
fn hits_tsv<D: Copy + std::fmt::Display>(hits: &bllm_codes::Neighbors<D>, what: &str) -> String {
    let mut out = String::with_capacity(hits.ids.len() * 16 + 64);
    let _ = writeln!(out, "query_index\trank\tdb_index\t{what}");
    for qi in 0..hits.queries() {
        for (rank, (id, d)) in hits.ids_of(qi).iter().zip(hits.dists_of(qi)).enumerate() {
            let _ = writeln!(out, "{qi}\t{rank}\t{id}\t{d}");
        }
    }
    out
}

fn search(a: SearchArgs) -> Result<()> {
    let db = read_dir_codes(&a.db)?;
    let q = read_dir_codes(&a.queries)?;
    let out = match (a.rerank, &a.rerank_query, &a.encoder) {
        (Some(r), Some(qpath), Some(encdir)) => {
            if r < a.k {
                bail!("--rerank {r} must be at least -k {}", a.k);
            }
            let enc = bllm_hash::LinearEncoder::load(encdir)
                .with_context(|| format!("cannot load the encoder {}", encdir.display()))?;
            if enc.bits != db.bits() {
                bail!(
                    "the encoder {} makes {}-bit codes but the database {} holds {}-bit codes",
                    encdir.display(),
                    enc.bits,
                    a.db.display(),
                    db.bits()
                );
            }
            let qf = npy::read_float_matrix(qpath)
                .with_context(|| format!("cannot read the float queries {}", qpath.display()))?;
            if qf.rows() != q.rows() {
                bail!(
                    "{} has {} rows but the query codes {} have {}",
                    qpath.display(),
                    qf.rows(),
                    a.queries.display(),
                    q.rows()
                );
            }
            let hits = hamming::search(&db, &q, r.min(db.rows())).context("search failed")?;
            let re = match a.rescore {
                RescoreArg::Asymmetric => {
                    let z = enc
                        .project(&qf)
                        .with_context(|| format!("cannot project {}", qpath.display()))?;
                    bllm_codes::metrics::asymmetric_rerank(&hits, &db, &z, a.k)
                        .context("asymmetric re-scoring failed")?
                }
                RescoreArg::Decoded => {
                    let dec = load_decoder(encdir, &enc)?;
                    let rpath = a.db.join(bllm_hash::RESIDUAL_NPY);
                    let residual = if dec.residual_bytes() == 0 {
                        None
                    } else if rpath.exists() {
                        let (rows, cols, bytes) = npy::read_u8_npy(&rpath)?;
                        if (rows, cols) != (db.rows(), dec.residual_bytes()) {
                            bail!(
                                "{} is {rows} × {cols}, expected {} rows (the database codes) × {} residual bytes (the decoder's subspaces)",
                                rpath.display(),
                                db.rows(),
                                dec.residual_bytes()
                            );
                        }
                        Some(bytes)
                    } else {
                        eprintln!(
                            "note: {} is missing; scoring the decoded codes without their residual",
                            rpath.display()
                        );
                        None
                    };
                    dec.index(&db, residual.as_deref())
                        .and_then(|index| index.rerank(&hits, &qf, a.k))
                        .context("decoded re-scoring failed")?
                }
            };
            hits_tsv(&re, "score")
        }
        _ => hits_tsv(
            &hamming::search(&db, &q, a.k).context("search failed")?,
            "distance",
        ),
    };
    io::write_atomic(&a.out, out.as_bytes())?;
    println!(
        "searched {} queries against {} codes ({} bits), top {} each → {}",
        q.rows(),
        db.rows(),
        db.bits(),
        a.k,
        a.out.display()
    );
    Ok(())
}

fn recall(a: RecallArgs) -> Result<()> {
    let dbf = npy::read_float_matrix(&a.db_float).context("cannot read the float database")?;
    let qf = npy::read_float_matrix(&a.queries_float).context("cannot read the float queries")?;
    let db = read_dir_codes(&a.db)?;
    let q = read_dir_codes(&a.queries)?;
    let report = metrics::evaluate(&dbf, &qf, &db, &q, a.k, a.rerank, a.metric.into())
        .context("evaluation failed")?;
    print_recall(&report);
    if let Some(path) = &a.json {
        let mut json = serde_json::to_vec_pretty(&report)?;
        json.push(b'\n');
        io::write_atomic(path, &json)?;
    }
    Ok(())
}

fn print_recall(r: &RecallReport) {
    println!(
        "{} queries, {} database rows, {} bits, ground truth: exact {:?}",
        r.queries, r.db_rows, r.bits, r.metric
    );
    println!("Recall@{}: {:.4}", r.k, r.recall_at_k);
    if let (Some(depth), Some(v)) = (r.rerank, r.recall_after_rerank) {
        println!(
            "Recall@{} after re-ranking the Hamming top {depth}: {v:.4}",
            r.k
        );
    }
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let cfg = bench::BenchConfig {
        db_rows: a.db_rows,
        bits: a.bits,
        queries: a.queries,
        k: a.k,
        pack_rows: a.pack_rows,
        memcpy_bytes: a.memcpy_mib << 20,
        repeats: a.repeats,
        seed: a.seed,
        kernel: a.kernel,
    };
    let r = bench::run(&cfg, a.save_data.as_deref())?;
    let db_mb = (a.db_rows * a.bits.div_ceil(64) * 8) as f64 / 1e6;
    println!(
        "bllm codes bench — {} threads, {:?} kernel, best of {} runs",
        r.threads, r.kernel, a.repeats
    );
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| pack f32 → codes ({} rows × {} dims) | {:.3} M rows/s ({:.2} GB/s of input) |",
        a.pack_rows,
        a.bits,
        r.pack_rows_per_s / 1e6,
        r.pack_input_gb_per_s
    );
    println!(
        "| exact Hamming top-{} ({} × {} bits = {db_mb:.1} MB database, {} queries) | {:.1} queries/s ({:.3} s) |",
        a.k, a.db_rows, a.bits, a.queries, r.search_queries_per_s, r.search_seconds
    );
    println!(
        "| distance computations | {:.2} G/s |",
        r.distances_per_s / 1e9
    );
    println!(
        "| scan bandwidth (queries × database bytes / time) | {:.2} GB/s |",
        r.scan_gb_per_s
    );
    println!(
        "| single query, unbatched (1 thread) | {:.2} ms ({:.2} GB/s streaming scan) |",
        r.single_query_seconds * 1e3,
        r.single_query_scan_gb_per_s
    );
    println!(
        "| memcpy bandwidth ({} MiB buffers) | {:.2} GB/s |",
        a.memcpy_mib, r.memcpy_gb_per_s
    );
    println!(
        "| batched scan / memcpy (target ≥ 0.60) | {:.2} |",
        r.scan_over_memcpy
    );
    if let Some(path) = &a.json {
        let mut json = serde_json::to_vec_pretty(&r)?;
        json.push(b'\n');
        io::write_atomic(path, &json)?;
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let (codes, manifest) = io::read_codes_dir(&a.dir)
        .with_context(|| format!("cannot read codes directory {}", a.dir.display()))?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    println!(
        "ok: {} rows × {} bits, {} payload bytes, checksum verified",
        codes.rows(),
        codes.bits(),
        codes.byte_len()
    );
    Ok(())
}

fn fit(a: FitArgs) -> Result<()> {
    let method = bllm_hash::Method::from_name(&a.method)?;
    let x = npy::read_float_matrix(&a.train).context("cannot read the training embeddings")?;
    let enc = bllm_hash::fit(method, &x, a.bits, a.seed)
        .with_context(|| format!("cannot fit {} with {} bits", a.method, a.bits))?;
    enc.save(&a.out)?;
    println!(
        "fitted {} ({} → {} bits) on {} rows → {}",
        enc.method,
        enc.dim,
        enc.bits,
        x.rows(),
        a.out.display()
    );
    if a.decoder {
        let dec = bllm_hash::CodeDecoder::fit(&enc, &x, a.pq_bytes, a.seed)
            .context("cannot fit the decoder")?;
        dec.save(&a.out)?;
        println!(
            "fitted its decoder (least squares{}) → {}",
            match a.pq_bytes {
                0 => String::new(),
                m => format!(", {m}-byte PQ residual"),
            },
            a.out.join(bllm_hash::DECODER_JSON).display()
        );
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    use bllm_hash::compare::{evaluate_encoder, markdown, truth};
    let x = bllm_data::load_embeddings(&a.data, None)?;
    let split = bllm_data::Split::first_rows(&x, a.queries)?;
    let methods = a
        .methods
        .iter()
        .map(|m| bllm_hash::Method::from_name(m.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let t = truth(&split.db, &split.queries, &a.k)?;
    let mut rows = Vec::new();
    for &bits in &a.bits {
        for &m in &methods {
            let enc = match bllm_hash::fit(m, &split.train, bits, a.seed) {
                Ok(e) => e,
                Err(bllm_hash::HashError::InvalidArgument(why)) => {
                    eprintln!("skipping {} at {bits} bits: {why}", m.name());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let dec = if a.rerank.is_empty() {
                None
            } else {
                Some(
                    bllm_hash::CodeDecoder::fit(&enc, &split.train, a.pq_bytes, a.seed)
                        .with_context(|| format!("cannot fit the decoder of {}", m.name()))?,
                )
            };
            rows.extend(evaluate_encoder(
                &enc,
                dec.as_ref(),
                &split.db,
                &split.queries,
                &t,
                &a.k,
                &a.rerank,
            )?);
        }
    }
    let md = markdown(&rows);
    print!("{md}");
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut json = serde_json::to_vec_pretty(&rows)?;
        json.push(b'\n');
        io::write_atomic(&dir.join("results.json"), &json)?;
        io::write_atomic(&dir.join("results.md"), md.as_bytes())?;
    }
    Ok(())
}
