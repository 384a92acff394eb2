//! The `bllm` command line. The binary (`src/main.rs`) is a thin wrapper around [`run_from`],
//! which end-to-end tests call in-process with the same arguments a user would type.

mod alloc;
mod bench;
mod bench_packed;
mod bench_train;
mod codes;
mod dist;
pub mod log;
mod models;
mod plot;
pub mod recipes;
mod report;
mod ste;
mod train;

use clap::{Parser, Subcommand};

/// BinaryLLM: train, evaluate and export the binary parts of language models and retrieval
/// systems.
#[derive(Debug, Parser)]
#[command(name = "bllm", version, about, propagate_version = true)]
pub struct Cli {
    /// Worker threads for parallel work (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Memory limit for `validate`, `run` and `sweep`: a recipe whose estimated memory exceeds
    /// it is refused before anything is allocated (e.g. 8GiB, 512MiB, bytes; `none` disables
    /// the check; default: BLLM_MEMORY_LIMIT, else the machine's available memory).
    #[arg(long, global = true, value_name = "SIZE", value_parser = memory_size)]
    pub memory_limit: Option<String>,
    /// Log lines on stderr: `text` (human-readable) or `json` (one object per line). Filter
    /// with BLLM_LOG or RUST_LOG (e.g. `debug`, `warn,bllm_train=debug`).
    #[arg(long, global = true, value_enum, default_value_t = log::LogFormat::Text)]
    pub log_format: log::LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Binary codes: pack, export, search, evaluate recall, benchmark.
    #[command(subcommand)]
    Codes(codes::CodesCommand),
    /// Train a recipe (with KEY=VALUE overrides) into a run directory.
    Run(train::RunArgs),
    /// Run every combination of a recipe's [sweep] table and tabulate the results.
    Sweep(train::SweepArgs),
    /// Data-parallel: start every rank of a run on this machine (an orchestrator and N
    /// `bllm run … --world N --rank r` processes on 127.0.0.1).
    Launch(dist::LaunchArgs),
    /// Data-parallel: serve burn-collective's orchestrator, which joins the ranks of runs
    /// started with `bllm run … --world N --rank r --orchestrator ws://HOST:PORT`.
    Orchestrator(dist::OrchestratorArgs),
    /// Plot a run's or a sweep's curves (PNG) and regenerate a sweep's tables.
    Report(report::ReportArgs),
    /// Check a recipe (with KEY=VALUE overrides) and print it resolved, or every problem.
    Validate(recipes::ValidateArgs),
    /// List the shipped recipes with their descriptions.
    Ls(recipes::LsArgs),
    /// Encode embeddings into codes with a saved encoder.
    Encode(codes::EncodeArgs),
    /// Straight-through estimators: list them, tabulate and plot forward and gradient.
    #[command(subcommand)]
    Ste(ste::SteCommand),
    /// Embed a text file (one text per line) with a pretrained sentence encoder into `.npy`.
    Embed(models::EmbedArgs),
    /// Pretrained language models: perplexity of a text, generation.
    #[command(subcommand)]
    Lm(models::LmCommand),
    /// Pretrained models on disk (fetch them with `python3 scripts/fetch_models.py`).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Benchmarks: `bllm bench kernels` (binary matmuls and Hamming top-k vs float baselines).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses `args` (the first item is the program name) and runs the command.
///
/// `--help` and `--version` come back as a [`clap::Error`] inside the error, like usage errors;
/// the binary prints them.
pub fn run_from<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    alloc::keep_freed_memory();
    log::init(cli.log_format)?;
    match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
            pool.install(|| dispatch(cli.command, cli.memory_limit.as_deref()))
        }
        None => dispatch(cli.command, cli.memory_limit.as_deref()),
    }
}

/// Checks the syntax of `--memory-limit` while parsing (a usage error otherwise).
fn memory_size(s: &str) -> Result<String, String> {
    bllm_recipe::parse_size(s).map(|_| s.to_owned())
}

/// The memory limit: `--memory-limit` (`flag`), else `BLLM_MEMORY_LIMIT`, else the machine's
/// available memory (none where unknown).
pub(crate) fn memory_limit(flag: Option<&str>) -> anyhow::Result<bllm_recipe::MemoryLimit> {
    let env = match std::env::var_os("BLLM_MEMORY_LIMIT") {
        None => None,
        Some(v) => Some(v.into_string().map_err(|v| {
            anyhow::anyhow!("BLLM_MEMORY_LIMIT: expected a size such as 8GiB, 512MiB or none; got the non-UTF-8 {v:?}")
        })?),
    };
    bllm_recipe::MemoryLimit::resolve(flag, env.as_deref()).map_err(anyhow::Error::msg)
}

fn dispatch(command: Command, memory: Option<&str>) -> anyhow::Result<()> {
    match command {
        Command::Codes(c) => codes::run(c),
        Command::Embed(a) => models::embed(a),
        Command::Lm(c) => models::lm(c),
        Command::Models(c) => models::models(c),
        Command::Ste(c) => ste::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Encode(a) => codes::encode(a),
        Command::Validate(a) => recipes::validate(a, &memory_limit(memory)?),
        Command::Run(a) => train::run(a, &memory_limit(memory)?),
        Command::Report(a) => report::report(a),
        Command::Sweep(a) => train::sweep(a, &memory_limit(memory)?),
        Command::Ls(a) => recipes::ls(a),
        Command::Launch(a) => dist::launch(a),
        Command::Orchestrator(a) => dist::orchestrator(a),
    }
}

/// Program name and version, recorded in manifests.
pub(crate) fn tool_version() -> String {
    format!("bllm {}", env!("CARGO_PKG_VERSION"))
}
