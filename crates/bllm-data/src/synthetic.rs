//! The review's hard case for binary codes, generated from a seed: a Gaussian mixture with
//! clusters of very different sizes and spreads, anisotropic covariance, a fraction of far
//! outliers, an offset mean and a spread of norms.

use bllm_codes::FloatMatrix;
use bllm_codes::rng::SplitMix64;

use crate::{DataError, Result};

/// Parameters of [`hard_case`].
#[derive(Clone, Debug, PartialEq)]
pub struct HardCase {
    /// Rows.
    pub rows: usize,
    /// Dimension.
    pub dim: usize,
    /// Mixture components.
    pub clusters: usize,
    /// Fraction of rows replaced by far outliers.
    pub outlier_fraction: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for HardCase {
    fn default() -> Self {
        Self {
            rows: 10_000,
            dim: 128,
            clusters: 24,
            outlier_fraction: 0.02,
            seed: 0,
        }
    }
}

/// Generates the hard case. Cluster weights are drawn so sizes differ by orders of magnitude
/// (exponentials raised to the 4th power), each cluster has its own spread (0.2–1.2) and a
/// random per-direction scale (log-normal, σ = 0.7) along random orthogonal-ish directions
/// (a random ±1 diagonal mix), outliers are N(0, 16 I), and every row is scaled by a
/// log-normal norm factor (σ = 0.5). The mean is offset by 0.7 in every coordinate.
pub fn hard_case(c: &HardCase) -> Result<FloatMatrix> {
    if c.rows == 0 || c.dim == 0 || c.clusters == 0 || !(0.0..1.0).contains(&c.outlier_fraction) {
        return Err(DataError::InvalidArgument(format!(
            "invalid hard case {c:?}"
        )));
    }
    let mut rng = SplitMix64::new(c.seed ^ 0x4A2D);
    let d = c.dim;
    let centres: Vec<f64> = (0..c.clusters * d)
        .map(|_| rng.next_gaussian() * 1.5 + 0.7)
        .collect();
    let raw: Vec<f64> = (0..c.clusters)
        .map(|_| (-(1.0 - rng.next_f64()).ln()).powi(4))
        .collect();
    let total: f64 = raw.iter().sum();
    let cumulative: Vec<f64> = raw
        .iter()
        .scan(0.0, |s, w| {
            *s += w / total;
            Some(*s)
        })
        .collect();
    let spreads: Vec<f64> = (0..c.clusters).map(|_| 0.2 + rng.next_f64()).collect();
    let scales: Vec<f64> = (0..c.clusters * d)
        .map(|_| (rng.next_gaussian() * 0.7).exp())
        .collect();
    let mixes: Vec<f64> = (0..c.clusters * d)
        .map(|_| if rng.next_u64() & 1 == 1 { 1.0 } else { -1.0 })
        .collect();
    let mut data = Vec::with_capacity(c.rows * d);
    for _ in 0..c.rows {
        let norm = (rng.next_gaussian() * 0.5).exp();
        if rng.next_f64() < c.outlier_fraction {
            data.extend((0..d).map(|_| (rng.next_gaussian() * 4.0 * norm) as f32));
            continue;
        }
        let u = rng.next_f64();
        let k = cumulative
            .iter()
            .position(|&p| u < p)
            .unwrap_or(c.clusters - 1);
        let z: Vec<f64> = (0..d)
            .map(|j| rng.next_gaussian() * spreads[k] * scales[k * d + j])
            .collect();
        // A cheap anisotropic mix: each coordinate blends its own and its neighbour's noise.
        data.extend((0..d).map(|j| {
            let mixed = z[j] + 0.5 * mixes[k * d + j] * z[(j + 1) % d];
            ((centres[k * d + j] + mixed) * norm) as f32
        }));
    }
    Ok(FloatMatrix::new(c.rows, d, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_shaped() {
        let c = HardCase {
            rows: 2000,
            dim: 16,
            seed: 3,
            ..Default::default()
        };
        let a = hard_case(&c).unwrap();
        assert_eq!((a.rows(), a.cols()), (2000, 16));
        assert_eq!(a, hard_case(&c).unwrap());
        assert_ne!(
            a,
            hard_case(&HardCase {
                seed: 4,
                ..c.clone()
            })
            .unwrap()
        );
        // Norms spread over more than an order of magnitude.
        let norms: Vec<f64> = (0..a.rows())
            .map(|r| {
                a.row(r)
                    .iter()
                    .map(|x| f64::from(*x).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        let (lo, hi) = norms
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), n| (l.min(*n), h.max(*n)));
        assert!(hi / lo > 10.0, "{lo} {hi}");
        assert!(
            hard_case(&HardCase {
                outlier_fraction: 1.5,
                ..c
            })
            .is_err()
        );
    }
}
