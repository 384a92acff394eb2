//! Schedules of estimator parameters over training progress `p ∈ [0, 1]`.

use std::f64::consts::PI;

/// IR-Net EDE temperature: `t = 10^(log10 t_min + (log10 t_max − log10 t_min)·p)` and the
/// gradient scale `k = max(1/t, 1)`. Returns `(t, k)`.
pub fn ede(t_min: f64, t_max: f64, p: f64) -> (f64, f64) {
    let t = 10f64.powf(t_min.log10() + (t_max.log10() - t_min.log10()) * p);
    (t, (1.0 / t).max(1.0))
}

/// ReSTE power: `o = 1 + (o_end − 1)(1 − cos(π p / 2))`, from 1 (identity) to `o_end`.
pub fn reste_power(o_end: f64, p: f64) -> f64 {
    1.0 + (o_end - 1.0) * (1.0 - (PI * p / 2.0).cos())
}

/// Number of Fourier terms at progress `p`, growing linearly from `n_start` to `n_end`
/// (rounded down, at least 1).
pub fn fourier_terms(n_start: usize, n_end: usize, p: f64) -> usize {
    let n = n_start as f64 + (n_end as f64 - n_start as f64) * p;
    (n.floor() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ede_goes_from_t_min_to_t_max() {
        let (t0, k0) = ede(0.1, 10.0, 0.0);
        assert!((t0 - 0.1).abs() < 1e-12 && (k0 - 10.0).abs() < 1e-9);
        let (t5, k5) = ede(0.1, 10.0, 0.5);
        assert!((t5 - 1.0).abs() < 1e-12 && (k5 - 1.0).abs() < 1e-12);
        let (t1, k1) = ede(0.1, 10.0, 1.0);
        assert!((t1 - 10.0).abs() < 1e-9 && (k1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn reste_power_goes_from_one_to_o_end() {
        assert_eq!(reste_power(3.0, 0.0), 1.0);
        assert!((reste_power(3.0, 0.5) - (1.0 + 2.0 * (1.0 - (PI / 4.0).cos()))).abs() < 1e-12);
        assert!((reste_power(3.0, 1.0) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn fourier_terms_grow() {
        assert_eq!(fourier_terms(1, 10, 0.0), 1);
        assert_eq!(fourier_terms(1, 10, 0.5), 5);
        assert_eq!(fourier_terms(1, 10, 1.0), 10);
    }
}
