//! [`Scaling`]: the magnitude that multiplies binary weights.

use serde::{Deserialize, Serialize};

/// How binarized weights are scaled (XNOR-Net, Rastegari et al. 2016; Larq's
/// `magnitude_aware_sign`): `W ≈ α · B` with `α = mean|W|`.
///
/// With `learnable = false`, α is recomputed from the latent weights at every forward and
/// detached (no gradient, as in Larq); with `learnable = true`, α is a parameter initialised to
/// `mean|W|` and trained with the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scaling {
    /// No scale: weights are exactly ±1 (or the estimator's own levels).
    #[default]
    None,
    /// One α for the whole matrix.
    PerTensor {
        /// Train α instead of recomputing it.
        #[serde(default)]
        learnable: bool,
    },
    /// One α per output channel (column of the `[d_input, d_output]` weight).
    PerChannel {
        /// Train α instead of recomputing it.
        #[serde(default)]
        learnable: bool,
    },
    /// OneBit's Sign-Value-Independent Decomposition (Xu et al., NeurIPS 2024):
    /// `W ≈ sign(W) ⊙ (g hᵀ)` with two trained value vectors, `g` `[d_input]` and `h`
    /// `[d_output]`, initialised to the rank-1 approximation of `|W|` ([`svid_rank1`]).
    /// Always learnable.
    Svid,
}

impl Scaling {
    /// Number of scale values for a `d_input → d_output` layer.
    pub fn count(&self, d_input: usize, d_output: usize) -> usize {
        match self {
            Self::None => 0,
            Self::PerTensor { .. } => 1,
            Self::PerChannel { .. } => d_output,
            Self::Svid => d_input + d_output,
        }
    }

    /// Whether α is a trained parameter.
    pub fn learnable(&self) -> bool {
        matches!(
            self,
            Self::PerTensor { learnable: true } | Self::PerChannel { learnable: true } | Self::Svid
        )
    }
}

/// The rank-1 approximation `g hᵀ` of the non-negative matrix `a` (`[rows, cols]`,
/// row-major), `g` `[rows]`, `h` `[cols]`, both non-negative with equal norms (`√σ` each):
/// the leading singular pair by power iteration on `aᵀa` in f64, from the all-ones vector, for
/// a fixed 50 iterations (deterministic; the Perron vector of a non-negative matrix is
/// non-negative, so no sign ambiguity). SVID's initialisation (OneBit, Xu et al. 2024, §3.3).
pub fn svid_rank1(a: &[f32], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    debug_assert_eq!(a.len(), rows * cols);
    let mut v = vec![1.0f64 / (cols.max(1) as f64).sqrt(); cols];
    let mut u = vec![0.0f64; rows];
    let mut sigma = 0.0;
    for _ in 0..50 {
        // u = A v
        for (i, ui) in u.iter_mut().enumerate() {
            let row = &a[i * cols..(i + 1) * cols];
            *ui = row.iter().zip(&v).map(|(&x, &y)| f64::from(x) * y).sum();
        }
        let nu = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if nu == 0.0 {
            return (vec![0.0; rows], vec![0.0; cols]);
        }
        u.iter_mut().for_each(|x| *x /= nu);
        // v = Aᵀ u
        v.iter_mut().for_each(|x| *x = 0.0);
        for (i, &ui) in u.iter().enumerate() {
            let row = &a[i * cols..(i + 1) * cols];
            for (vj, &x) in v.iter_mut().zip(row) {
                *vj += f64::from(x) * ui;
            }
        }
        sigma = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= sigma);
    }
    let r = sigma.sqrt();
    (
        u.iter().map(|x| (x * r) as f32).collect(),
        v.iter().map(|x| (x * r) as f32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exactly rank-1 non-negative matrix comes back exactly (to f32 rounding); a general
    /// one is approximated no worse than by its best per-column scale, the rank-1 matrices
    /// `1 · cᵀ` being among SVID's candidates.
    #[test]
    fn svid_rank1_recovers_rank_one_and_beats_per_column_means() {
        let (g0, h0) = ([1.0f32, 2.0, 0.5], [3.0f32, 0.25, 1.0, 2.0]);
        let a: Vec<f32> = g0
            .iter()
            .flat_map(|g| h0.iter().map(move |h| g * h))
            .collect();
        let (g, h) = svid_rank1(&a, 3, 4);
        for i in 0..3 {
            for j in 0..4 {
                assert!((g[i] * h[j] - a[i * 4 + j]).abs() < 1e-5);
            }
        }
        let (rows, cols) = (40, 30);
        let a: Vec<f32> = (0..rows * cols)
            .map(|k| {
                (((k * 7919) % 1013) as f32 / 1013.0 + 0.01) * (1.0 + (k % cols) as f32 / 10.0)
            })
            .collect();
        let (g, h) = svid_rank1(&a, rows, cols);
        let err_svid: f64 = (0..rows * cols)
            .map(|k| f64::from(a[k] - g[k / cols] * h[k % cols]).powi(2))
            .sum();
        let col_mean: Vec<f32> = (0..cols)
            .map(|j| (0..rows).map(|i| a[i * cols + j]).sum::<f32>() / rows as f32)
            .collect();
        let err_col: f64 = (0..rows * cols)
            .map(|k| f64::from(a[k] - col_mean[k % cols]).powi(2))
            .sum();
        assert!(
            err_svid <= err_col * (1.0 + 1e-6),
            "{err_svid} vs {err_col}"
        );
        assert!(g.iter().chain(&h).all(|&x| x >= 0.0));
        assert_eq!(svid_rank1(&[0.0; 6], 2, 3), (vec![0.0; 2], vec![0.0; 3]));
    }
}
