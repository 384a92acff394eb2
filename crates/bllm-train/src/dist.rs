//! Data-parallel training on Burn's collective (`burn-collective`): one process per rank, the
//! ranks joined through burn-collective's orchestrator (websockets), gradients all-reduced
//! before every optimizer step.
//!
//! ```text
//! bllm orchestrator --port 7000                               once, on any machine
//! bllm run R.toml --world 2 --rank 0 --orchestrator ws://HOST:7000 --node ws://THIS:7001
//! bllm run R.toml --world 2 --rank 1 --orchestrator ws://HOST:7000 --node ws://THIS:7002
//! bllm launch --nproc 2 R.toml                                all of it on this machine
//! ```
//!
//! **What is reduced.** Each step every rank flattens its gradients (every parameter that
//! requires one, in the module's visiting order) and a few control scalars (its loss, which
//! parameters received a gradient) into one vector, and the ranks all-reduce that vector once.
//! The sum is formed in rank order, `((x₀ + x₁) + x₂) + …`, on every rank, so it does not depend
//! on which node burn-collective's orchestrator numbered first or on the order in which
//! transfers arrive:
//! - with 2 ranks, burn-collective's own sum is already exact in that sense (`x₀ + x₁ = x₁ + x₀`
//!   in IEEE arithmetic);
//! - with 3 or more, each rank contributes a vector of `world` slots, its own values in slot
//!   `rank` and `-0.0` elsewhere (`x + (-0.0) = x` exactly, for every `x`), so the all-reduce
//!   delivers every rank's vector unchanged and the ordered sum is formed locally. This costs
//!   `world` times the bandwidth of a plain all-reduce; it buys results that are bit-identical
//!   to a single process that accumulates the same micro-batches in the same order
//!   (`train.accumulate = world`), whatever the thread count.
//!
//! `burn::optim::GradientsParams::all_reduce` is not used: it makes one collective call (one
//! network round trip) per parameter tensor, and for 3+ nodes its sums depend on arrival order.
//!
//! **Failure.** Every collective call runs on a helper thread and is awaited for at most the
//! configured timeout; a rank that died or stalls makes the others fail with an error naming
//! the call and the timeout, never hang.

use std::hash::Hasher;
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::{Result, TrainError};

/// One process's place in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistConfig {
    /// This process's rank, `0..world`. Rank 0 writes the run directory and runs the monitors.
    pub rank: usize,
    /// The number of processes (ranks), at least 2.
    pub world: usize,
    /// The orchestrator's address, `ws://HOST:PORT` (`bllm orchestrator --port PORT`).
    pub orchestrator: String,
    /// This process's address as the other ranks reach it, `ws://HOST:PORT`; burn-collective
    /// serves tensors on PORT (on all interfaces).
    pub node: String,
    /// How long one collective call (a step's all-reduce) may take before the run fails.
    pub timeout: Duration,
    /// How long to wait for every rank to join at the start.
    pub join_timeout: Duration,
}

/// `ws://HOST:PORT` → PORT, or an error naming `what`.
fn port_of(what: &str, addr: &str) -> Result<u16> {
    let rest = addr.strip_prefix("ws://").ok_or_else(|| {
        TrainError::Unsupported(format!(
            "{what} {addr:?}: expected ws://HOST:PORT (a websocket address)"
        ))
    })?;
    let port = rest
        .rsplit_once(':')
        .map(|(host, p)| (host, p.trim_end_matches('/')))
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    port.ok_or_else(|| {
        TrainError::Unsupported(format!(
            "{what} {addr:?}: expected ws://HOST:PORT with a port in 1..=65535"
        ))
    })
}

impl DistConfig {
    /// Checks the ranks and addresses; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.world < 2 {
            return Err(TrainError::Unsupported(format!(
                "--world {}: a data-parallel run needs at least 2 ranks (leave --world out to \
                 train in one process)",
                self.world
            )));
        }
        if self.rank >= self.world {
            return Err(TrainError::Unsupported(format!(
                "--rank {}: expected a rank in 0..{} (--world {})",
                self.rank, self.world, self.world
            )));
        }
        port_of("--orchestrator", &self.orchestrator)?;
        port_of("--node", &self.node)?;
        if self.timeout.is_zero() || self.join_timeout.is_zero() {
            return Err(TrainError::Unsupported(
                "distributed timeouts must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Whether this process is rank 0 (writes the run directory, runs the monitors).
    pub fn leader(&self) -> bool {
        self.rank == 0
    }
}

fn collective(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Distributed(format!("{what}: burn-collective failed: {e:?}"))
}

/// Runs `f` on a helper thread and waits at most `timeout` for it.
fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> std::result::Result<T, burn_collective::CollectiveError> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bllm-collective".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TrainError::Distributed(format!("{what}: cannot start a thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(collective(what, e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TrainError::Distributed(format!(
            "{what}: no answer from the other ranks within {} s: a rank died, stalled or was \
             never started (see the other ranks' output)",
            timeout.as_secs_f64()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(TrainError::Distributed(format!(
            "{what}: the collective call ended without a result (a peer closed its connection: \
             a rank died)"
        ))),
    }
}

/// A joined data-parallel group, on backend `B` (the autodiff backend's inner one).
pub(crate) struct Group<B: Backend> {
    cfg: DistConfig,
    device: B::Device,
}

impl<B: Backend> Group<B> {
    /// Registers this rank with burn-collective (one device per process, `world` nodes) and
    /// waits for every rank; `cfg` was validated by the trainer.
    pub(crate) fn join(cfg: &DistConfig, device: &B::Device) -> Result<Self> {
        let orchestrator = cfg
            .orchestrator
            .parse()
            .map_err(|e| TrainError::Unsupported(format!("--orchestrator: {e}")))?;
        let node = cfg
            .node
            .parse()
            .map_err(|e| TrainError::Unsupported(format!("--node: {e}")))?;
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(cfg.world as u32)
            .with_global_address(orchestrator)
            .with_node_address(node)
            .with_data_service_port(port_of("--node", &cfg.node)?);
        let peer = PeerId(cfg.rank as u32);
        let dev = device.clone();
        tracing::info!(
            rank = cfg.rank,
            world = cfg.world,
            orchestrator = %cfg.orchestrator,
            node = %cfg.node,
            "joining the data-parallel group"
        );
        bounded(
            &format!(
                "rank {} joining {} ranks through the orchestrator at {}",
                cfg.rank, cfg.world, cfg.orchestrator
            ),
            cfg.join_timeout,
            move || burn_collective::register::<B>(peer, dev, config),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
        })
    }

    /// This process's rank.
    pub(crate) fn rank(&self) -> usize {
        self.cfg.rank
    }

    /// The number of ranks.
    pub(crate) fn world(&self) -> usize {
        self.cfg.world
    }

    fn all_reduce_sum(&self, what: &str, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let peer = PeerId(self.cfg.rank as u32);
        let n = t.dims()[0];
        // burn-collective's ring cuts a tensor into one slice per node: pad short ones.
        let t = if n < self.cfg.world {
            let pad = Tensor::<B, 1>::full([self.cfg.world - n], -0.0, &self.device);
            Tensor::cat(vec![t, pad], 0)
        } else {
            t
        };
        let prim = t.into_primitive().tensor();
        let out = bounded(what, self.cfg.timeout, move || {
            burn_collective::all_reduce::<B>(peer, prim, ReduceOperation::Sum)
        })?;
        let out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out));
        if out.dims()[0] < n {
            return Err(TrainError::Distributed(format!(
                "{what}: burn-collective returned {} values for {n}",
                out.dims()[0]
            )));
        }
        Ok(out.narrow(0, 0, n))
    }

    /// Every rank's `local` (all of equal length), in rank order: one all-reduce of `world`
    /// slots, this rank's values in its own slot and `-0.0` in the others.
    pub(crate) fn gather(&self, what: &str, local: Tensor<B, 1>) -> Result<Vec<Tensor<B, 1>>> {
        let n = local.dims()[0];
        let (w, r) = (self.cfg.world, self.cfg.rank);
        let pad = |len: usize| Tensor::<B, 1>::full([len], -0.0, &self.device);
        let mut parts = Vec::with_capacity(3);
        if r > 0 {
            parts.push(pad(r * n));
        }
        parts.push(local);
        if r + 1 < w {
            parts.push(pad((w - 1 - r) * n));
        }
        let all = self.all_reduce_sum(what, Tensor::cat(parts, 0))?;
        Ok((0..w).map(|k| all.clone().narrow(0, k * n, n)).collect())
    }

    /// `((x₀ + x₁) + x₂) + …` over the ranks' `local`, the same bits on every rank (see the
    /// module docs).
    pub(crate) fn ordered_sum(&self, what: &str, local: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        if self.cfg.world == 2 {
            return self.all_reduce_sum(what, local);
        }
        let mut it = self.gather(what, local)?.into_iter();
        let first = it
            .next()
            .ok_or_else(|| TrainError::Distributed(format!("{what}: no ranks")))?;
        Ok(it.fold(first, |acc, x| acc + x))
    }

    /// Checks that every rank holds the same `value` (a recipe hash, a start step, a
    /// parameter checksum); the error names `what` and each rank's value.
    pub(crate) fn agree(&self, what: &str, value: u64) -> Result<()> {
        // Four 16-bit pieces: exact in f32.
        let pieces: Vec<f32> = (0..4)
            .map(|i| ((value >> (16 * i)) & 0xffff) as f32)
            .collect();
        let local = Tensor::<B, 1>::from_data(TensorData::new(pieces, [4]), &self.device);
        let all = self.gather(&format!("checking {what} across ranks"), local)?;
        let values: Vec<u64> = all
            .into_iter()
            .map(|t| {
                crate::optim::to_vec(t)
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, v)| acc | ((*v as u64) << (16 * i)))
            })
            .collect();
        if values.iter().any(|v| *v != values[0]) {
            let shown: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(k, v)| format!("rank {k}: {v:#018x}"))
                .collect();
            return Err(TrainError::Distributed(format!(
                "the ranks disagree on {what} ({}); start every rank with the same recipe, \
                 overrides, model files and run directory",
                shown.join(", ")
            )));
        }
        Ok(())
    }

    /// Leaves the group (unregisters from burn-collective), bounded by the timeout.
    pub(crate) fn leave(self) -> Result<()> {
        let peer = PeerId(self.cfg.rank as u32);
        bounded(
            &format!("rank {} leaving the group", self.cfg.rank),
            self.cfg.timeout,
            move || burn_collective::finish_collective::<B>(peer),
        )
    }
}

/// The scratch directory a rank other than 0 writes its run into (its logs, its final
/// checkpoint), removed when dropped: only rank 0 writes the run directory.
pub(crate) struct Scratch(std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(rank: usize) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("bllm-rank{rank}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        Ok(Self(p))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's side of a run outside the training loop (the adapter kind's phases) when
/// `dist` is given: the joined group, checked to agree on the recipe, and on ranks other than 0
/// the scratch directory they write into instead of the run directory.
pub(crate) fn join_for_phases<B: Backend>(
    recipe: &bllm_recipe::Recipe,
    dist: Option<&DistConfig>,
) -> Result<(Option<Group<B>>, Option<Scratch>)> {
    let Some(d) = dist else {
        return Ok((None, None));
    };
    d.validate()?;
    let scratch = if d.leader() {
        None
    } else {
        Some(Scratch::new(d.rank)?)
    };
    let group = Group::join(d, &Default::default())?;
    group.agree("the recipe", hash_bytes(recipe.resolved_toml().as_bytes()))?;
    Ok((Some(group), scratch))
}

/// A 64-bit hash (xxh3) of `bytes`, for [`Group::agree`].
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.write(bytes);
    h.finish()
}

/// Serves burn-collective's orchestrator on `port` (all interfaces) until the process is
/// interrupted: `bllm orchestrator --port PORT`.
pub fn serve_orchestrator(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TrainError::Distributed(format!("orchestrator: cannot start tokio: {e}")))?;
    rt.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rank: usize, world: usize, orch: &str, node: &str) -> DistConfig {
        DistConfig {
            rank,
            world,
            orchestrator: orch.into(),
            node: node.into(),
            timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn addresses_and_ranks_are_checked() {
        let ok = cfg(1, 2, "ws://127.0.0.1:7000", "ws://127.0.0.1:7001");
        assert!(ok.validate().is_ok());
        for (c, needle) in [
            (cfg(0, 1, "ws://a:1", "ws://a:2"), "--world 1"),
            (cfg(2, 2, "ws://a:1", "ws://a:2"), "--rank 2"),
            (cfg(0, 2, "http://a:1", "ws://a:2"), "--orchestrator"),
            (cfg(0, 2, "ws://a:1", "ws://a"), "--node"),
            (cfg(0, 2, "ws://a:1", "ws://a:0"), "--node"),
            (cfg(0, 2, "ws://a:1", "ws://:99"), "--node"),
            (cfg(0, 2, "ws://a:1", "ws://a:70000"), "--node"),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert_eq!(port_of("x", "ws://host.example:7001/").unwrap(), 7001);
    }

    #[test]
    fn a_call_that_never_answers_times_out_with_a_named_error() {
        let t0 = std::time::Instant::now();
        let e = bounded("the test call", Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(e.contains("the test call") && e.contains("0.2 s"), "{e}");
        let e = bounded::<()>("dropped", Duration::from_secs(2), || panic!("peer gone"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a rank died"), "{e}");
    }
}
