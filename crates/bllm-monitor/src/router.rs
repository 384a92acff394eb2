//! Router load-balance statistics.

use serde::{Deserialize, Serialize};

/// Load statistics of one routing decision over a batch of tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Fraction of routed token slots sent to each expert, `f_i` (sums to 1).
    pub fractions: Vec<f64>,
    /// Normalised entropy `−Σ f_i ln f_i / ln E` (1 = perfectly balanced, 0 = one expert).
    pub normalized_entropy: f64,
    /// Coefficient of variation of the loads (std / mean).
    pub cv: f64,
    /// Largest load over the mean load (1 = balanced, E = everything on one expert).
    pub max_over_mean: f64,
    /// Fraction of token slots dropped because their expert was over capacity
    /// (`capacity = ceil(capacity_factor · slots / E)`; tokens are kept in arrival order).
    pub dropped_fraction: f64,
}

/// Statistics of `assignments` (one expert index per routed token slot, in token order) over
/// `experts` experts with the given capacity factor (`None` = unlimited).
///
/// Panics if an assignment is `>= experts` (a router bug, not bad input).
pub fn load_stats(
    assignments: &[usize],
    experts: usize,
    capacity_factor: Option<f64>,
) -> LoadStats {
    assert!(experts >= 1, "at least one expert");
    let mut counts = vec![0usize; experts];
    for &e in assignments {
        assert!(
            e < experts,
            "expert index {e} out of range for {experts} experts"
        );
        counts[e] += 1;
    }
    let n = assignments.len().max(1) as f64;
    let fractions: Vec<f64> = counts.iter().map(|&c| c as f64 / n).collect();
    let entropy: f64 = fractions
        .iter()
        .filter(|&&f| f > 0.0)
        .map(|f| -f * f.ln())
        .sum();
    let normalized_entropy = if experts > 1 {
        entropy / (experts as f64).ln()
    } else {
        1.0
    };
    let mean = 1.0 / experts as f64;
    let var = fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / experts as f64;
    let max = fractions.iter().copied().fold(0.0, f64::max);
    let dropped = match capacity_factor {
        Some(cf) => {
            let cap = (cf * assignments.len() as f64 / experts as f64).ceil() as usize;
            counts.iter().map(|&c| c.saturating_sub(cap)).sum::<usize>() as f64 / n
        }
        None => 0.0,
    };
    LoadStats {
        fractions,
        normalized_entropy,
        cv: var.sqrt() / mean,
        max_over_mean: max / mean,
        dropped_fraction: dropped,
    }
}

/// Router z-loss: mean over tokens of `(logsumexp z)²` for logits `[tokens, experts]`
/// (row-major) (Zoph et al. 2022, ST-MoE).
pub fn z_loss(logits: &[f32], experts: usize) -> f64 {
    let rows: Vec<f64> = logits
        .chunks(experts.max(1))
        .map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + r.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
            lse * lse
        })
        .collect();
    rows.iter().sum::<f64>() / rows.len().max(1) as f64
}

/// Fraction of probe tokens whose expert changed between two routings of the same probe set.
pub fn routing_flip_rate(before: &[usize], after: &[usize]) -> f64 {
    let n = before.len().min(after.len());
    before.iter().zip(after).filter(|(a, b)| a != b).count() as f64 / n.max(1) as f64
}

/// Collapse thresholds (defaults from the MoE issue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapseThresholds {
    /// Collapse below this normalised entropy (0.5).
    pub min_entropy: f64,
    /// Collapse above this max/mean load (2.0).
    pub max_over_mean: f64,
    /// An expert is starving below `dead_fraction / E` (0.1).
    pub dead_fraction: f64,
    /// … for this many consecutive checks (500).
    pub dead_window: usize,
    /// Collapse above this dropped fraction (0.05).
    pub max_dropped: f64,
}

impl Default for CollapseThresholds {
    fn default() -> Self {
        Self {
            min_entropy: 0.5,
            max_over_mean: 2.0,
            dead_fraction: 0.1,
            dead_window: 500,
            max_dropped: 0.05,
        }
    }
}

/// Tracks load statistics over checks and reports why a router has collapsed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapseTracker {
    thresholds: CollapseThresholds,
    starving_for: Vec<usize>,
}

impl CollapseTracker {
    /// A tracker for `experts` experts.
    pub fn new(experts: usize, thresholds: CollapseThresholds) -> Self {
        Self {
            thresholds,
            starving_for: vec![0; experts],
        }
    }

    /// Experts that have been starving for the whole window.
    pub fn dead_experts(&self) -> Vec<usize> {
        self.starving_for
            .iter()
            .enumerate()
            .filter(|(_, n)| **n >= self.thresholds.dead_window)
            .map(|(i, _)| i)
            .collect()
    }

    /// Records one check; returns the reasons for a collapse (empty when healthy).
    pub fn update(&mut self, stats: &LoadStats) -> Vec<String> {
        let t = &self.thresholds;
        let e = self.starving_for.len() as f64;
        for (n, f) in self.starving_for.iter_mut().zip(&stats.fractions) {
            *n = if *f < t.dead_fraction / e { *n + 1 } else { 0 };
        }
        let mut why = Vec::new();
        if stats.normalized_entropy < t.min_entropy {
            why.push(format!(
                "normalised entropy {:.3} < {}",
                stats.normalized_entropy, t.min_entropy
            ));
        }
        if stats.max_over_mean > t.max_over_mean {
            why.push(format!(
                "max/mean load {:.2} > {}",
                stats.max_over_mean, t.max_over_mean
            ));
        }
        if stats.dropped_fraction > t.max_dropped {
            why.push(format!(
                "dropped fraction {:.3} > {}",
                stats.dropped_fraction, t.max_dropped
            ));
        }
        let dead = self.dead_experts();
        if !dead.is_empty() {
            why.push(format!(
                "experts {dead:?} under {}/E of the load for {} checks",
                t.dead_fraction, t.dead_window
            ));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_router_is_healthy() {
        let a: Vec<usize> = (0..800).map(|i| i % 8).collect();
        let s = load_stats(&a, 8, Some(1.25));
        assert!((s.normalized_entropy - 1.0).abs() < 1e-12);
        assert!(
            s.cv.abs() < 1e-12
                && (s.max_over_mean - 1.0).abs() < 1e-12
                && s.dropped_fraction == 0.0
        );
        let mut t = CollapseTracker::new(8, CollapseThresholds::default());
        for _ in 0..600 {
            assert!(t.update(&s).is_empty());
        }
    }

    #[test]
    fn router_forced_onto_one_expert_collapses_on_every_criterion() {
        let a = vec![3usize; 800];
        let s = load_stats(&a, 8, Some(1.25));
        assert_eq!(s.normalized_entropy, 0.0);
        assert!((s.max_over_mean - 8.0).abs() < 1e-12);
        // capacity = ceil(1.25 · 800 / 8) = 125 kept, 675 dropped.
        assert!((s.dropped_fraction - 675.0 / 800.0).abs() < 1e-12);
        let mut t = CollapseTracker::new(
            8,
            CollapseThresholds {
                dead_window: 3,
                ..Default::default()
            },
        );
        assert_eq!(t.update(&s).len(), 3);
        t.update(&s);
        let why = t.update(&s);
        assert_eq!(why.len(), 4, "{why:?}");
        assert_eq!(t.dead_experts(), vec![0, 1, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn z_loss_and_flip_rate() {
        // logsumexp of [0, 0] = ln 2.
        assert!((z_loss(&[0.0, 0.0, 0.0, 0.0], 2) - 2f64.ln().powi(2)).abs() < 1e-12);
        assert_eq!(routing_flip_rate(&[0, 1, 2, 3], &[0, 1, 3, 2]), 0.5);
    }
}
