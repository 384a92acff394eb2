//! `bllm orchestrator` (burn-collective's orchestrator for data-parallel runs) and
//! `bllm launch` (every rank of a data-parallel run on this machine, like `torchrun`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// Arguments of `bllm orchestrator`.
#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    /// Port to listen on (all interfaces); ranks reach it as ws://HOST:PORT.
    #[arg(long)]
    pub port: u16,
}

/// `bllm orchestrator --port P`: serves until interrupted.
pub fn orchestrator(a: OrchestratorArgs) -> Result<()> {
    if a.port == 0 {
        bail!("--port 0: give the port the ranks will reach (1..=65535)");
    }
    // Fail early, with the port named, when it is taken (burn-collective only logs it).
    drop(
        TcpListener::bind(("0.0.0.0", a.port))
            .with_context(|| format!("--port {}: cannot listen there", a.port))?,
    );
    eprintln!(
        "bllm orchestrator: listening on port {} (ranks: --orchestrator ws://HOST:{}); Ctrl-C stops it",
        a.port, a.port
    );
    bllm_train::serve_orchestrator(a.port)?;
    Ok(())
}

/// Arguments of `bllm launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Processes (ranks) to start on this machine, at least 2.
    #[arg(long, value_name = "N")]
    pub nproc: usize,
    /// Worker threads per rank (default: the machine's cores divided by N, at least 1).
    #[arg(long, value_name = "T")]
    pub threads_per_rank: Option<usize>,
    /// Seconds a step's all-reduce may wait before the ranks fail.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub collective_timeout: f64,
    /// Recipe file.
    pub recipe: PathBuf,
    /// Overrides `KEY=VALUE` (dotted keys, TOML values).
    pub overrides: Vec<String>,
    /// Run directory (default: checkpoints/<name>-<UTC timestamp>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue from the newest complete checkpoint of --run-dir.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N steps, leaving a resumable checkpoint.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Train on this device (as `bllm run --device`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released before use, so another
/// program could take it in between; the rank then fails naming the port).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// `bllm launch --nproc N RECIPE …`: starts an orchestrator (in this process) and N
/// `bllm run … --world N --rank r` processes on 127.0.0.1, waits for all of them and fails
/// when any rank failed.
pub fn launch(a: LaunchArgs) -> Result<()> {
    if a.nproc < 2 {
        bail!(
            "--nproc {}: a data-parallel run needs at least 2 processes (use `bllm run` for one)",
            a.nproc
        );
    }
    let mut overrides = a.overrides.clone();
    if let Some(d) = &a.device {
        overrides.push(format!("device={d:?}"));
    }
    let recipe = crate::recipes::load(&a.recipe, &overrides)?;
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from("checkpoints").join(format!(
            "{}-{}",
            recipe.name,
            bllm_train::timestamp_utc()
        ))
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.threads_per_rank.unwrap_or((cores / a.nproc).max(1));
    if threads == 0 {
        bail!("--threads-per-rank 0: expected at least 1");
    }
    let port = free_port()?;
    std::thread::Builder::new()
        .name("bllm-orchestrator".into())
        .spawn(move || {
            if let Err(e) = bllm_train::serve_orchestrator(port) {
                eprintln!("bllm launch: orchestrator: {e}");
            }
        })
        .context("cannot start the orchestrator thread")?;
    let exe = std::env::current_exe().context("cannot find the bllm executable")?;
    eprintln!(
        "bllm launch: {} ranks × {threads} threads, orchestrator ws://127.0.0.1:{port}, run directory {}",
        a.nproc,
        run_dir.display()
    );
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..a.nproc {
        let node = free_port()?;
        let mut c = Command::new(&exe);
        c.arg("--threads")
            .arg(threads.to_string())
            .arg("run")
            .arg(&a.recipe)
            .args(&a.overrides)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--world", &a.nproc.to_string(), "--rank", &rank.to_string()])
            .arg("--orchestrator")
            .arg(format!("ws://127.0.0.1:{port}"))
            .arg("--node")
            .arg(format!("ws://127.0.0.1:{node}"))
            .arg("--collective-timeout")
            .arg(a.collective_timeout.to_string());
        if a.resume {
            c.arg("--resume");
        }
        if let Some(m) = a.max_steps {
            c.arg("--max-steps").arg(m.to_string());
        }
        if let Some(d) = &a.device {
            c.arg("--device").arg(d);
        }
        let child = c
            .spawn()
            .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    // Wait for every rank; one that fails makes the others fail within the timeout.
    let mut failed = Vec::new();
    let t0 = Instant::now();
    while !children.is_empty() {
        let mut still = Vec::new();
        for (rank, mut child) in children {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        failed.push(format!("rank {rank}: {status}"));
                    }
                }
                Ok(None) => still.push((rank, child)),
                Err(e) => failed.push(format!("rank {rank}: cannot wait for it: {e}")),
            }
        }
        if !failed.is_empty() {
            // As torchrun does: one rank failed, so the run cannot finish; stop the others.
            for (rank, mut child) in still {
                let _ = child.kill();
                let _ = child.wait();
                failed.push(format!("rank {rank}: stopped by bllm launch"));
            }
            break;
        }
        children = still;
        if !children.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if !failed.is_empty() {
        bail!(
            "bllm launch: {} of {} ranks failed after {:.0} s ({}); see their messages above",
            failed.len(),
            a.nproc,
            t0.elapsed().as_secs_f64(),
            failed.join("; ")
        );
    }
    eprintln!(
        "bllm launch: {} ranks finished in {:.1} s → {}",
        a.nproc,
        t0.elapsed().as_secs_f64(),
        run_dir.display()
    );
    Ok(())
}
