//! Learning-rate schedules.

use bllm_recipe::LrSchedule;

/// Learning rate at `step` (0-based) of `total`: linear warmup from `peak / warmup` to `peak`
/// over `warmup_steps`, then constant or cosine decay to `min_lr` at the last step.
pub fn learning_rate(schedule: &LrSchedule, peak: f64, step: usize, total: usize) -> f64 {
    let (warmup, min_lr, cosine) = match *schedule {
        LrSchedule::Constant { warmup_steps } => (warmup_steps, peak, false),
        LrSchedule::Cosine {
            warmup_steps,
            min_lr,
        } => (warmup_steps, min_lr, true),
    };
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    if !cosine {
        return peak;
    }
    let span = (total.saturating_sub(warmup)).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (peak - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule::Cosine {
            warmup_steps: 10,
            min_lr: 0.0,
        };
        assert!((learning_rate(&s, 1.0, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 9, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 60, 110) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&s, 1.0, 109, 110) < 0.001);
        let c = LrSchedule::Constant { warmup_steps: 0 };
        assert_eq!(learning_rate(&c, 0.3, 50, 100), 0.3);
    }
}
