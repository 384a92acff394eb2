//! `bllm orchestrator` (burn-collective's orchestrator for data-parallel runs) and
//! `bllm launch` (every rank of a data-parallel run on this machine, like `torchrun`).

use std::net::TcpListener;
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

/// Arguments of `bllm launch`: `bllm run`'s, and how many ranks.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Processes (ranks) to start on this machine, at least 2.
    #[arg(long, value_name = "N")]
    pub nproc: usize,
    /// Worker threads per rank (default: the machine's cores divided by N, at least 1).
    #[arg(long, value_name = "T")]
    pub threads_per_rank: Option<usize>,
    /// What to run: the arguments of `bllm run` (launch sets the data-parallel ones).
    #[command(flatten)]
    pub run: crate::train::RunArgs,
}

/// Whether the ranks train on CUDA (`--device`, else the recipe's `device`).
fn device_is_cuda(recipe: &bllm_recipe::Recipe, flag: Option<&str>) -> bool {
    flag.map_or(recipe.device.as_str() == "cuda", |d| d == "cuda")
}

/// The GPU rank `rank` uses: the `rank`-th entry of `CUDA_VISIBLE_DEVICES` when it is set,
/// else GPU `rank`.
fn gpu_of(rank: usize) -> Result<String> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) if !list.trim().is_empty() => {
            let gpus: Vec<&str> = list.split(',').map(str::trim).collect();
            gpus.get(rank).map(|g| (*g).to_owned()).with_context(|| {
                format!(
                    "rank {rank}: CUDA_VISIBLE_DEVICES={list:?} lists {} GPU(s); give one per rank",
                    gpus.len()
                )
            })
        }
        _ => Ok(rank.to_string()),
    }
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
    let r = &a.run;
    if r.dist.world.is_some() {
        bail!("--world: bllm launch sets each rank's --world/--rank/--orchestrator/--node itself");
    }
    if a.nproc < 2 {
        bail!(
            "--nproc {}: a data-parallel run needs at least 2 processes (use `bllm run` for one)",
            a.nproc
        );
    }
    let overrides = crate::train::with_device(&r.overrides, r.device.as_deref());
    let recipe = crate::recipes::load(&r.recipe, &overrides)?;
    let run_dir = r
        .run_dir
        .clone()
        .unwrap_or_else(|| crate::train::default_run_dir(&recipe.name));
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
            .arg(&r.recipe)
            .args(&r.overrides)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--world", &a.nproc.to_string(), "--rank", &rank.to_string()])
            .arg("--orchestrator")
            .arg(format!("ws://127.0.0.1:{port}"))
            .arg("--node")
            .arg(format!("ws://127.0.0.1:{node}"))
            .arg("--collective-timeout")
            .arg(r.dist.collective_timeout.to_string())
            .arg("--join-timeout")
            .arg(r.dist.join_timeout.to_string());
        if r.resume {
            c.arg("--resume");
        }
        if let Some(m) = r.max_steps {
            c.arg("--max-steps").arg(m.to_string());
        }
        if let Some(d) = &r.device {
            c.arg("--device").arg(d);
        }
        if device_is_cuda(&recipe, r.device.as_deref()) {
            // One GPU per rank, as torchrun users do: rank r sees only the r-th visible GPU.
            c.env("CUDA_VISIBLE_DEVICES", gpu_of(rank)?);
        }
        let child = c
            .spawn()
            .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    // Wait for every rank; when one fails, stop the others.
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
