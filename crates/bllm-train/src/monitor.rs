//! Monitors computed in the loop: rolling z-score spike detectors, the event record, and
//! [`Watch`] — the monitor bookkeeping every trainer shares (which monitor is due, firing and
//! its action, skipped steps, running means), so each trainer only computes the values.

use std::collections::BTreeMap;

use bllm_recipe::{MonitorAction, MonitorSection, Recipe};
use serde::{Deserialize, Serialize};

use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::optim::to_vec;
use crate::rundir::RunDir;
use crate::{Result, TrainError};

/// Rolling z-score outlier detector (as in llm.c): keeps the last `window` values and reports
/// how many standard deviations a new value lies above their mean (the standard deviation is
/// floored at 10 % of the mean's magnitude). Its state is saved in
/// checkpoints, so resumed runs see the same history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpikeDetector {
    window: usize,
    values: Vec<f64>,
}

impl SpikeDetector {
    /// A detector over the last `window` values.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            values: Vec::new(),
        }
    }

    /// The z-score of `x` against the history (0 until the window is full), then records `x`.
    pub fn update(&mut self, x: f64) -> f64 {
        let z = if self.values.len() >= self.window {
            let n = self.values.len() as f64;
            let mean = self.values.iter().sum::<f64>() / n;
            let var = self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            // Floor the spread at 10 % of the mean's size: near-zero losses fluctuate by large
            // relative amounts that are not spikes.
            let sd = var.sqrt().max(0.1 * mean.abs()).max(1e-12);
            (x - mean) / sd
        } else {
            0.0
        };
        if x.is_finite() {
            self.values.push(x);
            if self.values.len() > self.window {
                self.values.remove(0);
            }
        }
        z
    }
}

/// One line of `events.jsonl`; unset fields are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// Step.
    pub step: usize,
    /// `monitor`, `skip_step`, `checkpoint`, `stop`, `resume`, `info`.
    pub event: String,
    /// Monitor name when a monitor fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// The action taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Measured value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Threshold crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Monitor state every trainer saves in `trainer.json` (flattened into its own state, so the
/// file keeps one flat object).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LoopState {
    pub(crate) loss_spikes: SpikeDetector,
    pub(crate) grad_spikes: SpikeDetector,
    pub(crate) skipped_steps: usize,
    pub(crate) monitor_events: usize,
    pub(crate) recent_losses: Vec<f64>,
    pub(crate) monitor_sums: BTreeMap<String, (f64, usize)>,
}

impl LoopState {
    /// Empty state for `recipe`'s spike window.
    pub(crate) fn new(recipe: &Recipe) -> Self {
        Self {
            loss_spikes: SpikeDetector::new(recipe.monitors.spike_window),
            grad_spikes: SpikeDetector::new(recipe.monitors.spike_window),
            skipped_steps: 0,
            monitor_events: 0,
            recent_losses: Vec::new(),
            monitor_sums: BTreeMap::new(),
        }
    }

    /// Keeps the last `window` training losses.
    pub(crate) fn push_loss(&mut self, loss: f64, window: usize) {
        self.recent_losses.push(loss);
        if self.recent_losses.len() > window {
            self.recent_losses.remove(0);
        }
    }

    /// Mean of the kept training losses.
    pub(crate) fn recent_loss(&self) -> f64 {
        self.recent_losses.iter().sum::<f64>() / self.recent_losses.len().max(1) as f64
    }

    /// Adds every numeric value of `metrics` whose key has no `/` (per-layer values are
    /// logged, not averaged) to the running sums.
    pub(crate) fn accumulate_all(&mut self, metrics: &serde_json::Map<String, serde_json::Value>) {
        for (k, v) in metrics {
            if let (false, Some(v)) = (k.contains('/'), v.as_f64()) {
                let e = self.monitor_sums.entry(k.clone()).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
    }

    /// Mean of every accumulated monitor value.
    pub(crate) fn means(&self) -> BTreeMap<String, f64> {
        self.monitor_sums
            .iter()
            .map(|(k, (s, n))| (k.clone(), s / (*n).max(1) as f64))
            .collect()
    }
}

/// A monitor that fired with action `stop`: the trainer saves a checkpoint, then returns
/// [`Stop::into_error`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stop {
    name: String,
    value: f64,
    threshold: f64,
}

impl Stop {
    /// Records the stop event and builds the error.
    pub(crate) fn into_error(self, run: &RunDir, step: usize) -> Result<TrainError> {
        let e = MonitorEvent {
            step,
            event: "stop".into(),
            monitor: Some(self.name.clone()),
            value: Some(self.value),
            threshold: Some(self.threshold),
            ..Default::default()
        };
        run.append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())?;
        tracing::error!(step, monitor = %self.name, value = self.value, threshold = self.threshold, "run stopped by a monitor");
        Ok(TrainError::Stopped {
            step,
            monitor: self.name,
            reason: format!("value {} crossed threshold {}", self.value, self.threshold),
        })
    }
}

/// What the pre-update monitors decided for this step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Apply the update.
    Update,
    /// Skip the optimizer step.
    Skip,
    /// Stop the run.
    Stop(Stop),
}

/// The recipe's monitors for one run: what is due and what firing does.
pub(crate) struct Watch<'a> {
    pub(crate) recipe: &'a Recipe,
    pub(crate) run: &'a RunDir,
}

impl Watch<'_> {
    /// The settings of monitor `name`, if enabled.
    pub(crate) fn get(&self, name: &str) -> Option<&MonitorSection> {
        self.recipe.monitors.get(name).filter(|m| m.enabled)
    }

    /// Whether `name` runs on the batch of (0-based) `step`, before its update.
    pub(crate) fn due_before(&self, name: &str, step: usize) -> bool {
        self.get(name).is_some_and(|m| (step + 1) % m.every == 0)
    }

    /// Whether `name` runs after `done` steps.
    pub(crate) fn due_after(&self, name: &str, done: usize) -> bool {
        self.get(name).is_some_and(|m| done % m.every == 0)
    }

    /// Records a firing in `events.jsonl` (and on stderr unless the action is `log`); counts
    /// every action but `log` in `state.monitor_events`.
    fn fire(
        &self,
        state: &mut LoopState,
        step: usize,
        name: &str,
        action: MonitorAction,
        value: f64,
        threshold: f64,
    ) -> Result<()> {
        if action != MonitorAction::Log {
            state.monitor_events += 1;
        }
        let act = action.name();
        let e = MonitorEvent {
            step,
            event: "monitor".into(),
            monitor: Some(name.into()),
            action: Some(act.into()),
            value: Some(value),
            threshold: Some(threshold),
            ..Default::default()
        };
        self.run
            .append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())?;
        if action == MonitorAction::Log {
            tracing::debug!(
                step,
                monitor = name,
                value,
                threshold,
                action = act,
                "monitor fired"
            );
        } else {
            tracing::warn!(
                step,
                monitor = name,
                value,
                threshold,
                action = act,
                "monitor fired"
            );
        }
        Ok(())
    }

    /// The checks on a step's loss and gradient norm before its update (`non_finite`,
    /// `loss_spike`, `grad_spike`, in that order): records each firing and returns the
    /// z-scores of the loss and the gradient norm and what to do. A `stop` ends the checks.
    pub(crate) fn before_update(
        &self,
        state: &mut LoopState,
        step: usize,
        loss: f64,
        grad_norm: f64,
    ) -> Result<(f64, f64, Verdict)> {
        let mut fired: Vec<(&str, MonitorAction, f64, f64)> = Vec::new();
        if let Some(m) = self.get("non_finite") {
            if !loss.is_finite() || !grad_norm.is_finite() {
                let v = if loss.is_finite() { grad_norm } else { loss };
                fired.push(("non_finite", m.action, v, m.threshold));
            }
        }
        let lz = state.loss_spikes.update(loss);
        if let Some(m) = self.get("loss_spike") {
            if lz > m.threshold {
                fired.push(("loss_spike", m.action, lz, m.threshold));
            }
        }
        let gz = state.grad_spikes.update(grad_norm);
        if let Some(m) = self.get("grad_spike") {
            if gz > m.threshold {
                fired.push(("grad_spike", m.action, gz, m.threshold));
            }
        }
        let mut verdict = Verdict::Update;
        for (name, action, value, threshold) in fired {
            self.fire(state, step, name, action, value, threshold)?;
            match action {
                MonitorAction::SkipStep => verdict = Verdict::Skip,
                MonitorAction::Stop => {
                    let stop = Stop {
                        name: name.into(),
                        value,
                        threshold,
                    };
                    return Ok((lz, gz, Verdict::Stop(stop)));
                }
                _ => {}
            }
        }
        Ok((lz, gz, verdict))
    }

    /// Records a skipped optimizer step.
    pub(crate) fn skipped(&self, state: &mut LoopState, step: usize, loss: f64) -> Result<()> {
        state.skipped_steps += 1;
        tracing::warn!(step, loss, "optimizer step skipped");
        let e = MonitorEvent {
            step,
            event: "skip_step".into(),
            value: Some(loss),
            ..Default::default()
        };
        self.run
            .append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())
    }

    /// Whether a monitor checked after the update can stop the run: an enabled monitor with
    /// action `stop` other than the three decided before the update on the step's loss and
    /// gradient norm. (A data-parallel run exchanges rank 0's verdict only then.)
    pub(crate) fn may_stop_after_update(&self) -> bool {
        self.recipe.monitors.monitors.iter().any(|(name, m)| {
            m.enabled
                && m.action == MonitorAction::Stop
                && !["non_finite", "loss_spike", "grad_spike"].contains(name)
        })
    }

    /// Monitors measured after `done` steps, as `(name, value, fires_above)`: records each that
    /// crossed its threshold and returns the first `stop`. (`skip_step` cannot undo an update
    /// and acts as `warn`.)
    pub(crate) fn after_update(
        &self,
        state: &mut LoopState,
        done: usize,
        values: &[(&str, f64, bool)],
    ) -> Result<Option<Stop>> {
        for &(name, value, above) in values {
            let Some(m) = self.get(name) else { continue };
            let crossed = (above && value > m.threshold) || (!above && value < m.threshold);
            if crossed {
                self.fire(state, done, name, m.action, value, m.threshold)?;
                if m.action == MonitorAction::Stop {
                    return Ok(Some(Stop {
                        name: name.into(),
                        value,
                        threshold: m.threshold,
                    }));
                }
            }
        }
        Ok(None)
    }
}

/// The finite-difference gradient check shared by the trainers. For each layer `i` (latent
/// weights `latents[i]`, STE gradient `grads[i]`) and `k` seeded random ±1 directions `u`, it
/// compares the central difference `[L(w + εu) − L(w − εu)] / 2ε` — `loss_at(i, w')` evaluates
/// the real binarized forward with layer `i`'s latent weights replaced by `w'` — with
/// `⟨g_STE, u⟩`. `ε` is the 5th percentile of `|w|`, so a perturbation flips about 2.5 % of
/// the signs. `rng` draws the directions. Returns (sign agreement, Spearman rank correlation) over all layers and
/// directions, and the sign agreement of each layer.
pub(crate) fn fd_agreement<B: burn::tensor::backend::Backend>(
    latents: &[Tensor<B, 2>],
    grads: &[Tensor<B, 2>],
    k: usize,
    mut rng: ChaCha8Rng,
    mut loss_at: impl FnMut(usize, Tensor<B, 2>) -> f64,
) -> (f64, f64, Vec<f64>) {
    let (mut fd, mut lin) = (Vec::new(), Vec::new());
    let mut per_layer = Vec::new();
    for (li, (w, g)) in latents.iter().zip(grads).enumerate() {
        let mut mags = to_vec(w.clone().abs());
        mags.sort_by(f32::total_cmp);
        let eps = f64::from(mags[mags.len() / 20].max(1e-6));
        let mut agree = 0usize;
        for _ in 0..k {
            let dims = w.dims();
            let u: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                .collect();
            let u = Tensor::<B, 2>::from_data(TensorData::new(u, dims), &Default::default());
            let plus = loss_at(li, w.clone() + u.clone().mul_scalar(eps));
            let minus = loss_at(li, w.clone() - u.clone().mul_scalar(eps));
            let f = (plus - minus) / (2.0 * eps);
            let d: f32 = (g.clone() * u).sum().into_scalar().elem();
            let d = f64::from(d);
            if f.signum() == d.signum() && f != 0.0 {
                agree += 1;
            }
            fd.push(f);
            lin.push(d);
        }
        per_layer.push(agree as f64 / k.max(1) as f64);
    }
    let agree = fd
        .iter()
        .zip(&lin)
        .filter(|(a, b)| a.signum() == b.signum() && **a != 0.0)
        .count() as f64
        / fd.len().max(1) as f64;
    (agree, spearman(&fd, &lin), per_layer)
}

pub(crate) use bllm_monitor::spearman;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spike_detector_fires_on_outliers_only() {
        let mut d = SpikeDetector::new(5);
        for i in 0..5 {
            assert_eq!(d.update(1.0 + 0.01 * f64::from(i)), 0.0);
        }
        assert!(d.update(1.03).abs() < 3.0);
        assert!(d.update(10.0) > 6.0);
    }
}
