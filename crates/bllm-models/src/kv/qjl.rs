//! QJL (Zandieh, Daliri, Han, AAAI 2025): a 1-bit Johnson–Lindenstrauss sketch of each key,
//! scored against the *unquantized* query.
//!
//! Per head, `S` is an `m × d` matrix of N(0, 1) entries (regenerated from the seed, never
//! stored). A key `k` is stored as `sign(S·k)` (m bits) and `‖k‖` (f16). The score estimate
//! `⟨q, k⟩ ≈ √(π/2)/m · ‖k‖ · ⟨S·q, sign(S·k)⟩` is unbiased (`E[sign(sᵀk)·s] = √(2/π)·k/‖k‖`
//! for Gaussian `s`) with a relative error shrinking as `1/√m`. The probe uses the equivalent
//! reconstructed key `k̂ = √(π/2)/m · ‖k‖ · Sᵀ·sign(S·k)`, since `⟨q, k̂⟩` is exactly the
//! estimate. Bytes per token row: per head `⌈m/64⌉·8` of bits + 2 for the norm; 8 per layer
//! for the seed.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::{KvQuantizer, f16_round, packed_bytes};

/// The QJL key sketch.
#[derive(Clone, Debug)]
pub struct Qjl {
    /// Channels per token (`heads · head_dim`).
    pub channels: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Sketch bits per head (`m`).
    pub sketch: usize,
    /// `S`, row-major `[m, head_dim]`, shared by the layer's heads.
    pub matrix: Vec<f32>,
}

impl Qjl {
    /// A sketch of `sketch` bits per head, `S` drawn from ChaCha8 seeded by `seed`.
    pub fn new(channels: usize, head_dim: usize, sketch: usize, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let matrix = (0..sketch * head_dim)
            .map(|_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                v
            })
            .collect();
        Self {
            channels,
            head_dim,
            sketch,
            matrix,
        }
    }
}

impl KvQuantizer for Qjl {
    fn roundtrip(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (d, m) = (self.head_dim, self.sketch);
        let c = self.channels;
        let coef = (std::f64::consts::PI / 2.0).sqrt() / m as f64;
        let mut out = vec![0.0f32; x.len()];
        let mut bits = vec![0.0f32; m];
        for r in 0..t {
            for h in 0..c / d {
                let k = &x[r * c + h * d..r * c + (h + 1) * d];
                let norm =
                    f16_round(k.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32);
                for (i, b) in bits.iter_mut().enumerate() {
                    let row = &self.matrix[i * d..(i + 1) * d];
                    let dot: f32 = row.iter().zip(k).map(|(a, b)| a * b).sum();
                    *b = if dot >= 0.0 { 1.0 } else { -1.0 };
                }
                let o = &mut out[r * c + h * d..r * c + (h + 1) * d];
                let scale = (coef * norm as f64) as f32;
                for (i, &b) in bits.iter().enumerate() {
                    let row = &self.matrix[i * d..(i + 1) * d];
                    for (oj, &sj) in o.iter_mut().zip(row) {
                        *oj += b * sj;
                    }
                }
                for oj in o.iter_mut() {
                    *oj *= scale;
                }
            }
        }
        out
    }

    fn bytes(&self, t: usize) -> usize {
        let heads = self.channels / self.head_dim;
        t * heads * (packed_bytes(self.sketch, 1) + 2)
    }

    fn static_bytes(&self) -> usize {
        8
    }
}
