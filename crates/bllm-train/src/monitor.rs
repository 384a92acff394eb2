//! Monitors computed in the loop: rolling z-score spike detectors and the event record.

use serde::{Deserialize, Serialize};

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
