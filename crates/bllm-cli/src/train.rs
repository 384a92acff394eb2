//! `bllm run` and `bllm sweep`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bllm_hash::compare::RerankKind;
use bllm_recipe::{Kind, MemoryLimit, expand_sweep, parse_override};
use bllm_train::{
    AdapterSummary, KvProbeSummary, LmSummary, MoeSummary, RetrievalSummary, RunOptions,
    RunSummary, timestamp_utc,
};
use clap::Args;

use crate::recipes::{Components, load};

/// Arguments of `bllm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Recipe file.
    pub recipe: PathBuf,
    /// Overrides `KEY=VALUE` (dotted keys, TOML values).
    pub overrides: Vec<String>,
    /// Run directory (default: checkpoints/<name>-<UTC timestamp>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue from the newest complete checkpoint (of --run-dir, or of the newest
    /// checkpoints/<name>-* directory).
    #[arg(long)]
    pub resume: bool,
    /// Stop after N steps, leaving a resumable checkpoint.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Train on this device: cpu (the default CPU backend), flex, ndarray, cuda or wgpu (the same
    /// as the override `device=…`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    #[command(flatten)]
    pub dist: DistArgs,
}

/// Data-parallel flags of `bllm run`: one process per rank, joined through
/// `bllm orchestrator` (burn-collective's orchestrator).
#[derive(Debug, Args, Clone)]
pub struct DistArgs {
    /// Data-parallel: the number of processes (ranks) in the run; start each with its own
    /// --rank. train.batch_size is the batch of all ranks together.
    #[arg(long, value_name = "N", requires_all = ["rank", "orchestrator", "node"])]
    pub world: Option<usize>,
    /// This process's rank, 0..N (rank 0 writes the run directory and runs the monitors).
    #[arg(long, value_name = "R", requires = "world")]
    pub rank: Option<usize>,
    /// The orchestrator (`bllm orchestrator --port PORT`) as ws://HOST:PORT.
    #[arg(long, value_name = "ws://HOST:PORT", requires = "world")]
    pub orchestrator: Option<String>,
    /// This process's address as the other ranks reach it, ws://HOST:PORT (a free port;
    /// tensors are served there).
    #[arg(long, value_name = "ws://HOST:PORT", requires = "world")]
    pub node: Option<String>,
    /// Data-parallel: seconds a step's all-reduce may wait for the other ranks before the run
    /// fails (also `bllm launch`'s).
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub collective_timeout: f64,
    /// Data-parallel: seconds to wait at the start for every rank to join.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub join_timeout: f64,
}

impl DistArgs {
    /// The trainer's data-parallel configuration (`None` without --world).
    pub fn config(&self) -> Result<Option<bllm_train::DistConfig>> {
        let Some(world) = self.world else {
            return Ok(None);
        };
        let secs = |flag: &str, v: f64| -> Result<std::time::Duration> {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                bail!("{flag} {v}: expected a number of seconds in (0, 86400]");
            }
            Ok(std::time::Duration::from_secs_f64(v))
        };
        let cfg = bllm_train::DistConfig {
            rank: self.rank.unwrap_or(0),
            world,
            orchestrator: self.orchestrator.clone().unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
            timeout: secs("--collective-timeout", self.collective_timeout)?,
            join_timeout: secs("--join-timeout", self.join_timeout)?,
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

/// The overrides with `--device D` appended as `device="D"` (so it wins over a `device=`
/// override given before it, like any later override).
pub(crate) fn with_device(overrides: &[String], device: Option<&str>) -> Vec<String> {
    let mut o = overrides.to_vec();
    if let Some(d) = device {
        o.push(format!("device={d:?}"));
    }
    o
}

/// burn-collective's network tasks panic when a peer disconnects (a rank died); the run then
/// fails with its own error. Print those panics as one line, without a backtrace.
fn quiet_network_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if name.starts_with("tokio-rt-worker") || name == "bllm-collective" {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!(" ({}:{})", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!("burn-collective: a network task failed: {msg}{at}");
        } else {
            default(info);
        }
    }));
}

/// The run directory of a run without `--run-dir`: `checkpoints/<name>-<UTC timestamp>`.
pub(crate) fn default_run_dir(name: &str) -> PathBuf {
    PathBuf::from("checkpoints").join(format!("{name}-{}", timestamp_utc()))
}

/// Newest `checkpoints/<name>-*` directory.
fn newest_run(name: &str) -> Result<PathBuf> {
    let root = Path::new("checkpoints");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("--resume without --run-dir: cannot list {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .with_context(|| format!("--resume: no checkpoints/{name}-* run directory to resume"))
}

fn print_summary(s: &RunSummary, dir: &Path) {
    println!(
        "{}: {} steps{}, eval accuracy {:.4}, eval loss {:.4}, train loss {:.4}, {} monitor events, {} skipped steps; model {} B ({:.1}x smaller than float32) → {}",
        s.name,
        s.steps,
        if s.complete {
            ""
        } else {
            " (stopped early, resumable)"
        },
        s.eval_accuracy,
        s.eval_loss,
        s.train_loss,
        s.monitor_events,
        s.skipped_steps,
        s.model_bytes,
        s.model_float32_bytes as f64 / s.model_bytes.max(1) as f64,
        dir.display()
    );
}

/// `bllm run`: refuses a recipe whose estimated memory exceeds `limit` before the trainer
/// allocates anything or writes the run directory.
pub fn run(a: RunArgs, limit: &MemoryLimit) -> Result<()> {
    let recipe = load(&a.recipe, &with_device(&a.overrides, a.device.as_deref()))?;
    if !recipe.sweep.is_empty() {
        bail!(
            "{} has a [sweep] table: run it with `bllm sweep {}`",
            a.recipe.display(),
            a.recipe.display()
        );
    }
    limit.check(&recipe.name, &recipe)?;
    let run_dir = match (&a.run_dir, a.resume) {
        (Some(d), _) => d.clone(),
        (None, true) => newest_run(&recipe.name)?,
        (None, false) => default_run_dir(&recipe.name),
    };
    let dist = a.dist.config()?;
    if dist.is_some() {
        if matches!(recipe.kind, Kind::KvProbe) {
            bail!(
                "--world: kind = \"kv_probe\" trains nothing (it scores a pretrained model \
                 under a quantised KV cache), so there are no gradients to share across ranks; \
                 run it in one process"
            );
        }
        if a.run_dir.is_none() {
            bail!(
                "--world: give every rank the same --run-dir (rank 0 writes it; the others resume from it)"
            );
        }
        quiet_network_panics();
    }
    let mut opts = RunOptions {
        dist,
        run_dir: run_dir.clone(),
        resume: a.resume,
        max_steps: a.max_steps,
        verbose: true,
        progress: None,
    };
    // A progress bar on a terminal; periodic log lines otherwise.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(recipe.train.steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps  loss {msg}  {elapsed} < {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    if let Some(bar) = bar.clone() {
        // Log lines (evaluations, monitor warnings) print above the bar.
        crate::log::show_bar(&bar);
        opts.progress = Some(Box::new(move |done, total, loss| {
            bar.set_length(total.max(done) as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("{loss:.4}"));
        }));
    }
    // Runs one trainer, clears the bar, prints its summary line.
    let mut go = |train: &dyn Fn(&mut RunOptions) -> bllm_train::Result<()>| -> Result<()> {
        let result = train(&mut opts);
        if let Some(bar) = &bar {
            crate::log::hide_bar();
            bar.finish_and_clear();
        }
        result.with_context(|| format!("run {} failed", run_dir.display()))
    };
    let dir = run_dir.as_path();
    match recipe.kind {
        Kind::Classify => go(&|o| bllm_train::run(&recipe, o).map(|s| print_summary(&s, dir)))?,
        Kind::Retrieval => {
            go(&|o| bllm_train::run_retrieval(&recipe, o).map(|s| print_retrieval(&s, dir)))?
        }
        Kind::Lm => go(&|o| bllm_train::run_lm(&recipe, o).map(|s| print_lm(&s, dir)))?,
        Kind::Moe => go(&|o| bllm_train::run_moe(&recipe, o).map(|s| print_moe(&s, dir)))?,
        Kind::Adapter => {
            go(&|o| bllm_train::run_adapter(&recipe, o).map(|s| print_adapter(&s, dir)))?
        }
        Kind::KvProbe => go(&|o| {
            bllm_train::run_kv_probe(&recipe, o).map(|s| {
                print!("{}", bllm_train::kv_probe_markdown(&s));
                println!("→ {}", dir.display());
            })
        })?,
    }
    Ok(())
}

/// One line for an adapter run: target and source bits per byte, bytes against float LoRA.
fn print_adapter(s: &AdapterSummary, dir: &Path) {
    println!(
        "{}: {} (rank {}): target {:.4} → {:.4} bits/byte, source {:.4} → {:.4} (forgetting {:+.4}); adapters {} B vs float LoRA {} B ({:.2}x) → {}",
        s.name,
        s.adapter,
        s.rank,
        s.target_bpb_base,
        s.target_bpb,
        s.source_bpb_base,
        s.source_bpb,
        s.forgetting,
        s.adapter_bytes,
        s.float_lora_bytes,
        s.compression_vs_float_lora,
        dir.display()
    );
    if let Some(p) = &s.pretrained {
        let ft = p
            .finetune_target_perplexity
            .map(|f| format!(" (float fine-tune {f:.3})"))
            .unwrap_or_default();
        println!(
            "  {}: target perplexity {:.3} → {:.3}{ft} over {} tokens, source {:.3} → {:.3} over {} tokens; {} tokens trained in {:.0} s",
            p.model,
            p.target_perplexity_base,
            p.target_perplexity,
            p.target_eval_tokens,
            p.source_perplexity_base,
            p.source_perplexity,
            p.source_eval_tokens,
            p.tokens_trained,
            p.wall_seconds
        );
    }
}

/// One line for an MoE run: the task metric and the load balance.
fn print_moe(s: &MoeSummary, dir: &Path) {
    if !s.complete {
        println!(
            "{}: {} steps (stopped early, resumable) → {}",
            s.name,
            s.steps,
            dir.display()
        );
        return;
    }
    println!(
        "{}: {} router, {} balancing, {} steps: held-out {} {:.4}; load entropy {:.3}, max/mean {:.2}, dropped {:.3}, routing flips {:.3}, {} dead experts, {} collapse events → {}",
        s.name,
        s.router,
        s.balancing,
        s.steps,
        s.metric_name,
        s.metric,
        s.load_entropy,
        s.max_over_mean,
        s.dropped_fraction,
        s.flip_rate,
        s.dead_experts,
        s.collapse_events,
        dir.display()
    );
}

/// One line for an LM run: held-out bits per byte against the unigram baseline.
fn print_lm(s: &LmSummary, dir: &Path) {
    if !s.complete {
        println!(
            "{}: {} steps (stopped early, resumable) → {}",
            s.name,
            s.steps,
            dir.display()
        );
        return;
    }
    if let Some(p) = &s.pretrained {
        println!(
            "{}: {} steps ({} tokens, {:.0} s), held-out {:.4} bits/byte, perplexity {:.3} per token (float teacher {:.4} bits/byte, {:.3}){}, train loss {:.4}, {} monitor events, {} skipped steps; {} 1-bit + {} ternary projections, model {} B ({:.1}x smaller than float32) → {}",
            s.name,
            s.steps,
            p.tokens_trained,
            p.wall_seconds,
            s.eval_bpb,
            p.eval_token_perplexity,
            p.teacher_bpb,
            p.teacher_perplexity,
            if s.diverged { " DIVERGED" } else { "" },
            s.train_loss,
            s.monitor_events,
            s.skipped_steps,
            p.binary_projections,
            p.ternary_projections,
            s.model_bytes,
            s.model_float32_bytes as f64 / s.model_bytes.max(1) as f64,
            dir.display()
        );
        for h in &p.also {
            println!(
                "  also held out: {} ({} bytes): {:.4} bits/byte, perplexity {:.3} (float teacher {:.4}, {:.3})",
                h.path, h.bytes, h.bpb, h.perplexity, h.teacher_bpb, h.teacher_perplexity
            );
        }
        return;
    }
    println!(
        "{}: {} steps, held-out {:.4} bits/byte (perplexity {:.3}; unigram baseline {:.4}){}, train loss {:.4} nats/byte, {} monitor events, {} skipped steps; model {} B ({:.1}x smaller than float32) → {}",
        s.name,
        s.steps,
        s.eval_bpb,
        s.eval_perplexity,
        s.unigram_bpb,
        if s.diverged { " DIVERGED" } else { "" },
        s.train_loss,
        s.monitor_events,
        s.skipped_steps,
        s.model_bytes,
        s.model_float32_bytes as f64 / s.model_bytes.max(1) as f64,
        dir.display()
    );
}

/// The results table and a one-line verdict: the head against the best baseline at its bits.
fn print_retrieval(s: &RetrievalSummary, dir: &Path) {
    if !s.complete {
        println!(
            "{}: {} steps (stopped early, resumable) → {}",
            s.name,
            s.steps,
            dir.display()
        );
        return;
    }
    print!("{}", bllm_hash::compare::markdown(&s.results));
    let head = s.recall(&s.method, s.bits, 10, 0);
    let best = s
        .results
        .iter()
        .filter(|r| r.method != s.method && r.bits == s.bits && r.k == 10 && r.rerank == 0)
        .max_by(|a, b| a.recall.total_cmp(&b.recall));
    match (head, best) {
        (Some(h), Some(b)) => println!(
            "{} at {} bits: Hamming Recall@10 {h:.4} vs best baseline {} {:.4} ({:+.4})",
            s.method,
            s.bits,
            b.method,
            b.recall,
            h - b.recall
        ),
        (Some(h), None) => println!("{} at {} bits: Hamming Recall@10 {h:.4}", s.method, s.bits),
        _ => {}
    }
    println!(
        "{} steps, train loss {:.4}, {} monitor events; results → {}/results.md; encoder → {}/export/encoder; codes → {}/export/codes",
        s.steps,
        s.train_loss,
        s.monitor_events,
        dir.display(),
        dir.display(),
        dir.display()
    );
}

/// Arguments of `bllm sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Recipe file with a [sweep] table.
    pub recipe: PathBuf,
    /// Overrides `KEY=VALUE` applied to every run.
    pub overrides: Vec<String>,
    /// Sweep directory (default: checkpoints/<name>-sweep-<UTC timestamp>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Train every run on this device: cpu or cuda (the same as the override `device=…`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// `bllm sweep`: every combination into its own run directory, then `summary.csv` and
/// `summary.md` with mean ± std across seeds per combination of the other swept keys. Every
/// run's estimated memory is checked against `limit` before the first one starts.
pub fn sweep(a: SweepArgs, limit: &MemoryLimit) -> Result<()> {
    let overrides = with_device(&a.overrides, a.device.as_deref());
    let base = load(&a.recipe, &overrides)?;
    let ovs = overrides
        .iter()
        .map(|o| parse_override(o))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = expand_sweep(&a.recipe, &ovs, &base, &Components)?;
    for r in &runs {
        limit.check(&format!("{}/{}", base.name, r.name), &r.recipe)?;
    }
    let dir = a.run_dir.unwrap_or_else(|| {
        PathBuf::from("checkpoints").join(format!("{}-sweep-{}", base.name, timestamp_utc()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The run order, so that `bllm report` lists groups as the sweep did.
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    bllm_codes::io::write_atomic(
        &dir.join("runs.json"),
        &serde_json::to_vec_pretty(&names).unwrap_or_default(),
    )?;
    let (csv, md) = match base.kind {
        Kind::Classify => tables(&run_each(&runs, &dir, bllm_train::run)?),
        Kind::Retrieval => retrieval_tables(&run_each(&runs, &dir, bllm_train::run_retrieval)?),
        Kind::Lm => lm_tables(&run_each(&runs, &dir, bllm_train::run_lm)?),
        Kind::Moe => moe_tables(&run_each(&runs, &dir, bllm_train::run_moe)?),
        Kind::Adapter => adapter_tables(&run_each(&runs, &dir, bllm_train::run_adapter)?),
        Kind::KvProbe => kv_probe_tables(&run_each(&runs, &dir, bllm_train::run_kv_probe)?),
    };
    write_tables(&dir, &csv, &md)?;
    eprintln!("sweep of {} runs → {}", runs.len(), dir.display());
    Ok(())
}

/// Writes a sweep's `summary.csv` and `summary.md` into `dir` and prints the table.
pub(crate) fn write_tables(dir: &Path, csv: &str, md: &str) -> Result<()> {
    bllm_codes::io::write_atomic(&dir.join("summary.csv"), csv.as_bytes())?;
    bllm_codes::io::write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}

/// Runs every sweep run with `train` into `dir/<run name>`: `(group, summary)` rows, the
/// summary `None` for a run a monitor stopped; any other failure ends the sweep.
fn run_each<S>(
    runs: &[bllm_recipe::SweepRun],
    dir: &Path,
    train: fn(&bllm_recipe::Recipe, &mut RunOptions) -> bllm_train::Result<S>,
) -> Result<Vec<(String, Option<S>)>> {
    let mut rows = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, runs.len(), r.name);
        let mut opts = RunOptions {
            dist: None,
            run_dir: dir.join(&r.name),
            resume: false,
            max_steps: None,
            verbose: false,
            progress: None,
        };
        let s = match train(&r.recipe, &mut opts) {
            Ok(s) => Some(s),
            Err(bllm_train::TrainError::Stopped { .. }) => None,
            Err(e) => return Err(e).with_context(|| format!("sweep run {} failed", r.name)),
        };
        rows.push((group_of(&r.name), s));
    }
    Ok(rows)
}

/// The table group of a run: its name (`key=value,…`, as sweeps name run directories) without
/// the seed, so seeds of the same configuration average together. `bllm sweep` and
/// `bllm report` both group with this, so a report regenerates the sweep's tables exactly.
pub(crate) fn group_of(run_name: &str) -> String {
    run_name
        .split(',')
        .filter(|p| !p.starts_with("seed="))
        .collect::<Vec<_>>()
        .join(",")
}

/// The groups of `rows` in first-seen order.
fn group_order<S>(rows: &[(String, S)]) -> Vec<&str> {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in rows {
        if !groups.contains(&g.as_str()) {
            groups.push(g);
        }
    }
    groups
}

/// The runs of group `g` that finished, the group's run count, and how many were stopped.
fn group_runs<'a, S>(rows: &'a [(String, Option<S>)], g: &str) -> (Vec<&'a S>, usize, usize) {
    let rs: Vec<&S> = rows
        .iter()
        .filter(|(k, _)| k == g)
        .filter_map(|(_, s)| s.as_ref())
        .collect();
    let n = rows.iter().filter(|(k, _)| k == g).count();
    let stopped = n - rs.len();
    (rs, n, stopped)
}

/// Appends the header cells of the monitor columns (`<key>_mean,<key>_std` / label) and ends
/// the csv header line.
fn monitor_header(mon: &[(&str, &str)], csv: &mut String, md: &mut String) {
    for (k, label) in mon {
        csv.push_str(&format!(",{k}_mean,{k}_std"));
        md.push_str(&format!(" {label} |"));
    }
    csv.push('\n');
}

/// Appends one `mean, std` pair (csv) and one `mean ± std` cell (md) per monitor of `mon`,
/// over the runs' monitor means (empty cells where no run logged it).
fn monitor_columns<'a>(
    mon: &[(&str, &str)],
    means: impl Iterator<Item = &'a std::collections::BTreeMap<String, f64>> + Clone,
    csv: &mut String,
    md: &mut String,
) {
    for (k, _) in mon {
        let vals: Vec<f64> = means.clone().filter_map(|m| m.get(*k).copied()).collect();
        if vals.is_empty() {
            csv.push_str(",,");
            md.push_str(" – |");
        } else {
            let (m, sd) = mean_std(&vals);
            csv.push_str(&format!(",{m:.6},{sd:.6}"));
            md.push_str(&format!(" {m:.3} ± {sd:.3} |"));
        }
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// summary.csv and summary.md from `(group, summary)` rows (`None`: stopped by a monitor),
/// grouped in first-seen order.
pub(crate) fn tables(rows: &[(String, Option<RunSummary>)]) -> (String, String) {
    const MON: [(&str, &str); 5] = [
        ("shadow_cosine", "shadow cos"),
        ("fd_sign_agreement", "FD sign agree"),
        ("flip_ratio", "flip ratio"),
        ("pass_through", "pass-through"),
        ("quant_error", "quant error"),
    ];
    let groups = group_order(rows);
    let mut csv = String::from(
        "group,runs,stopped,eval_accuracy_mean,eval_accuracy_std,eval_loss_mean,eval_loss_std,monitor_events_mean,skipped_steps_mean",
    );
    let mut md = String::from(
        "| group | runs | stopped | eval accuracy | eval loss | monitor events | skipped steps |",
    );
    monitor_header(&MON, &mut csv, &mut md);
    md.push_str("\n|---|---:|---:|---:|---:|---:|---:|");
    md.push_str(&"---:|".repeat(MON.len()));
    md.push('\n');
    for g in groups {
        let (rs, n, stopped) = group_runs(rows, g);
        let col =
            |f: fn(&RunSummary) -> f64| mean_std(&rs.iter().map(|s| f(s)).collect::<Vec<_>>());
        let (am, asd) = col(|s| s.eval_accuracy);
        let (lm, lsd) = col(|s| s.eval_loss);
        let (em, _) = col(|s| s.monitor_events as f64);
        let (sm, _) = col(|s| s.skipped_steps as f64);
        let name = if g.is_empty() { "(all)" } else { g };
        csv.push_str(&format!(
            "{name},{n},{stopped},{am:.6},{asd:.6},{lm:.6},{lsd:.6},{em:.3},{sm:.3}"
        ));
        md.push_str(&format!("| {name} | {n} | {stopped} | {am:.4} ± {asd:.4} | {lm:.4} ± {lsd:.4} | {em:.1} | {sm:.1} |"));
        monitor_columns(&MON, rs.iter().map(|s| &s.monitor_means), &mut csv, &mut md);
        csv.push('\n');
        md.push('\n');
    }
    (csv, md)
}

/// summary.csv and summary.md of a retrieval sweep: recall mean ± std over the runs of each
/// group (seeds), for every (method, bits, k, rerank) the runs evaluated.
pub(crate) fn retrieval_tables(rows: &[(String, Option<RetrievalSummary>)]) -> (String, String) {
    let groups = group_order(rows);
    let mut csv = String::from(
        "group,runs,stopped,method,bits,k,rerank,rerank_kind,bytes_per_row,recall_mean,recall_std\n",
    );
    let mut md = String::from(
        "| group | runs | stopped | method | bits | k | rerank | kind | bytes/row | recall |\n|---|---:|---:|---|---:|---:|---:|---|---:|---:|\n",
    );
    for g in groups {
        let runs: Vec<&RetrievalSummary> = rows
            .iter()
            .filter(|(k, _)| k == g)
            .filter_map(|(_, s)| s.as_ref())
            .collect();
        let n = rows.iter().filter(|(k, _)| k == g).count();
        let stopped = n - runs.len();
        let mut keys: Vec<(String, usize, usize, usize, RerankKind, usize)> = Vec::new();
        for s in &runs {
            for r in &s.results {
                let key = (
                    r.method.clone(),
                    r.bits,
                    r.k,
                    r.rerank,
                    r.kind(),
                    r.bytes_per_row,
                );
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        let name = if g.is_empty() { "(all)" } else { g };
        if keys.is_empty() {
            csv.push_str(&format!("{name},{n},{stopped},,,,,,,,\n"));
            md.push_str(&format!("| {name} | {n} | {stopped} | – | | | | | | |\n"));
        }
        for (method, bits, k, rerank, kind, bytes) in keys {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|s| s.recall_of(&method, bits, k, rerank, kind))
                .collect();
            let (m, sd) = mean_std(&vals);
            let kind = kind.name();
            csv.push_str(&format!(
                "{name},{n},{stopped},{method},{bits},{k},{rerank},{kind},{bytes},{m:.6},{sd:.6}\n"
            ));
            md.push_str(&format!(
                "| {name} | {n} | {stopped} | {method} | {bits} | {k} | {rerank} | {kind} | {bytes} | {m:.4} ± {sd:.4} |\n"
            ));
        }
    }
    (csv, md)
}

/// summary.csv and summary.md of an LM sweep: per group (seeds averaged), held-out bits per
/// byte mean ± std, runs stopped by a monitor or diverged (no better than unigram, or
/// non-finite), and the monitors' run means.
pub(crate) fn lm_tables(rows: &[(String, Option<LmSummary>)]) -> (String, String) {
    const MON: [(&str, &str); 7] = [
        ("shadow_cosine", "shadow cos"),
        ("fd_sign_agreement", "FD sign agree"),
        ("flip_ratio", "flip ratio"),
        ("pass_through", "pass-through"),
        ("quant_error", "quant error"),
        ("attention_min", "min head attention"),
        ("act_clamp", "act clamp"),
    ];
    let groups = group_order(rows);
    let mut csv = String::from(
        "group,runs,stopped,diverged,eval_bpb_mean,eval_bpb_std,unigram_bpb,model_bytes,monitor_events_mean,skipped_steps_mean",
    );
    let mut md = String::from(
        "| group | runs | stopped | diverged | held-out bits/byte | unigram | model bytes | monitor events | skipped steps |",
    );
    monitor_header(&MON, &mut csv, &mut md);
    // Pretrained runs add the float teacher, the tokens trained and the wall time.
    let pretrained = rows
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s.pretrained.is_some()));
    if pretrained {
        csv.pop(); // monitor_header ended the line
        csv.push_str(",teacher_bpb,tokens_trained,wall_seconds_mean\n");
        md.push_str(" teacher bits/byte | tokens trained | wall s |");
    }
    md.push_str("\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    md.push_str(&"---:|".repeat(MON.len() + if pretrained { 3 } else { 0 }));
    md.push('\n');
    for g in groups {
        let (rs, n, stopped) = group_runs(rows, g);
        let diverged = rs.iter().filter(|s| s.diverged).count();
        let col = |f: fn(&LmSummary) -> f64| mean_std(&rs.iter().map(|s| f(s)).collect::<Vec<_>>());
        let (bm, bsd) = col(|s| s.eval_bpb);
        let (um, _) = col(|s| s.unigram_bpb);
        let (mb, _) = col(|s| s.model_bytes as f64);
        let (em, _) = col(|s| s.monitor_events as f64);
        let (sm, _) = col(|s| s.skipped_steps as f64);
        let name = if g.is_empty() { "(all)" } else { g };
        csv.push_str(&format!(
            "{name},{n},{stopped},{diverged},{bm:.6},{bsd:.6},{um:.6},{mb:.0},{em:.3},{sm:.3}"
        ));
        md.push_str(&format!(
            "| {name} | {n} | {stopped} | {diverged} | {bm:.4} ± {bsd:.4} | {um:.4} | {mb:.0} | {em:.1} | {sm:.1} |"
        ));
        monitor_columns(&MON, rs.iter().map(|s| &s.monitor_means), &mut csv, &mut md);
        if pretrained {
            let p = |f: fn(&bllm_train::PretrainedReport) -> f64| {
                mean_std(
                    &rs.iter()
                        .filter_map(|s| s.pretrained.as_ref().map(f))
                        .collect::<Vec<_>>(),
                )
                .0
            };
            let (tb, tt, ws) = (
                p(|p| p.teacher_bpb),
                p(|p| p.tokens_trained as f64),
                p(|p| p.wall_seconds),
            );
            csv.push_str(&format!(",{tb:.6},{tt:.0},{ws:.1}"));
            md.push_str(&format!(" {tb:.4} | {tt:.0} | {ws:.0} |"));
        }
        csv.push('\n');
        md.push('\n');
    }
    (csv, md)
}

/// summary.csv and summary.md of an MoE sweep: per group (seeds averaged), the task metric,
/// load balance (normalised entropy, max/mean, dead experts, dropped fraction), routing flip
/// rate, and the runs that had a collapse event or were stopped.
pub(crate) fn moe_tables(rows: &[(String, Option<MoeSummary>)]) -> (String, String) {
    let groups = group_order(rows);
    let metric = rows
        .iter()
        .find_map(|(_, s)| s.as_ref().map(|s| s.metric_name.clone()))
        .unwrap_or_else(|| "metric".into());
    let mut csv = format!(
        "group,runs,stopped,collapsed_runs,collapse_events_mean,{metric}_mean,{metric}_std,load_entropy_mean,load_entropy_std,max_over_mean_mean,dead_experts_mean,dropped_mean,flip_rate_mean\n"
    );
    let mut md = format!(
        "| group | runs | stopped | runs with collapse | collapse events | held-out {metric} | load entropy | max/mean load | dead experts | dropped | routing flips |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for g in groups {
        let (rs, n, stopped) = group_runs(rows, g);
        let collapsed = rs.iter().filter(|s| s.collapse_events > 0).count();
        let col =
            |f: fn(&MoeSummary) -> f64| mean_std(&rs.iter().map(|s| f(s)).collect::<Vec<_>>());
        let (mm, msd) = col(|s| s.metric);
        let (em, esd) = col(|s| s.load_entropy);
        let (om, _) = col(|s| s.max_over_mean);
        let (dm, _) = col(|s| s.dead_experts as f64);
        let (pm, _) = col(|s| s.dropped_fraction);
        let (fm, _) = col(|s| s.flip_rate);
        let (cm, _) = col(|s| s.collapse_events as f64);
        let name = if g.is_empty() { "(all)" } else { g };
        csv.push_str(&format!(
            "{name},{n},{stopped},{collapsed},{cm:.3},{mm:.6},{msd:.6},{em:.6},{esd:.6},{om:.6},{dm:.3},{pm:.6},{fm:.6}\n"
        ));
        md.push_str(&format!(
            "| {name} | {n} | {stopped} | {collapsed} | {cm:.1} | {mm:.4} ± {msd:.4} | {em:.3} ± {esd:.3} | {om:.2} | {dm:.1} | {pm:.3} | {fm:.3} |\n"
        ));
    }
    (csv, md)
}

/// summary.csv and summary.md of an adapter sweep: per group (seeds averaged), target-domain
/// bits per byte (base → adapted), source-domain forgetting, adapter bytes and the
/// compression against float LoRA of the same rank.
pub(crate) fn adapter_tables(rows: &[(String, Option<AdapterSummary>)]) -> (String, String) {
    let groups = group_order(rows);
    let mut csv = String::from(
        "group,runs,stopped,target_bpb_base,target_bpb_mean,target_bpb_std,forgetting_mean,forgetting_std,adapter_bytes,float_lora_bytes,compression_vs_float_lora\n",
    );
    let mut md = String::from(
        "| group | runs | stopped | target bits/byte: base → adapted | source forgetting | adapter bytes | float LoRA bytes | compression |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for g in groups {
        let (rs, n, stopped) = group_runs(rows, g);
        let col =
            |f: fn(&AdapterSummary) -> f64| mean_std(&rs.iter().map(|s| f(s)).collect::<Vec<_>>());
        let (b0, _) = col(|s| s.target_bpb_base);
        let (tm, tsd) = col(|s| s.target_bpb);
        let (fm, fsd) = col(|s| s.forgetting);
        let (ab, _) = col(|s| s.adapter_bytes as f64);
        let (fb, _) = col(|s| s.float_lora_bytes as f64);
        let (cr, _) = col(|s| s.compression_vs_float_lora);
        let name = if g.is_empty() { "(all)" } else { g };
        csv.push_str(&format!(
            "{name},{n},{stopped},{b0:.6},{tm:.6},{tsd:.6},{fm:.6},{fsd:.6},{ab:.0},{fb:.0},{cr:.4}\n"
        ));
        md.push_str(&format!(
            "| {name} | {n} | {stopped} | {b0:.4} → {tm:.4} ± {tsd:.4} | {fm:+.4} ± {fsd:.4} | {ab:.0} | {fb:.0} | {cr:.2}x |\n"
        ));
    }
    (csv, md)
}

/// A KV-probe sweep's table: one row per (run, text, context) — bytes per token against the
/// f16 cache, perplexity change, top-1 agreement, next-token and attention KL (all heads, the
/// peaked and the flat third), the entropy–KL rank correlation.
pub(crate) fn kv_probe_tables(rows: &[(String, Option<KvProbeSummary>)]) -> (String, String) {
    let mut csv = String::from(
        "run,cache,text,context,bytes_per_token,f16_bytes_per_token,saving,perplexity_float,perplexity,perplexity_change,top1_agreement,logit_kl,attention_kl,attention_kl_peaked,attention_kl_flat,entropy_kl_spearman,key_error,value_error\n",
    );
    let mut md = String::from(bllm_train::KV_PROBE_HEADER);
    for (run, s) in rows {
        let Some(s) = s else { continue };
        md.push_str(&bllm_train::kv_probe_rows(s));
        for r in &s.results {
            let (b, saving) = bllm_train::kv_probe_bytes_at(s, r.context);
            csv.push_str(&format!(
                "{run},{},{},{},{b:.2},{},{saving:.4},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.6e},{:.4},{:.6},{:.6}\n",
                s.cache.replace(',', ";"),
                r.text,
                r.context,
                s.f16_bytes_per_token,
                r.perplexity_float,
                r.perplexity,
                r.perplexity_change,
                r.top1_agreement,
                r.logit_kl,
                r.attention_kl,
                r.attention_kl_peaked,
                r.attention_kl_flat,
                r.entropy_kl_spearman,
                r.key_error,
                r.value_error
            ));
        }
    }
    (csv, md)
}
