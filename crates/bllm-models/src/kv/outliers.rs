//! Dense-and-sparse: the top r % channels of a layer (by calibrated max |x|, KVQuant's
//! outlier channels) kept in f16, every other channel through the base quantizer.
//!
//! Forward: `x̂[:, o] = f16(x[:, o])` for the outlier channels `o`, the inlier channels
//! quantized by the base as a `[t, c − |o|]` matrix (so outliers no longer set the inliers'
//! scales). Bytes: the base's, plus 2 per outlier value per token, plus the channel index
//! list (2 bytes each) once per layer.

use super::{KvQuantizer, f16_round};

/// The `round(fraction · c)` (at least one) channels with the largest calibrated max |x|,
/// ascending; ties go to the lower channel.
pub fn top_channels(calib: &[f32], fraction: f64) -> Vec<usize> {
    let n = ((fraction * calib.len() as f64).round() as usize).clamp(1, calib.len());
    let mut idx: Vec<usize> = (0..calib.len()).collect();
    idx.sort_by(|&a, &b| calib[b].total_cmp(&calib[a]).then(a.cmp(&b)));
    let mut out = idx[..n].to_vec();
    out.sort_unstable();
    out
}

/// A base quantizer with outlier channels in f16.
pub struct Outliers {
    /// Channels per token.
    pub channels: usize,
    /// The outlier channels, ascending.
    pub outliers: Vec<usize>,
    /// The other channels, ascending.
    pub inliers: Vec<usize>,
    /// The quantizer of the inlier channels.
    pub base: Box<dyn KvQuantizer>,
}

impl Outliers {
    /// `base` must have been built for `channels − outliers.len()` channels.
    pub fn new(channels: usize, outliers: Vec<usize>, base: Box<dyn KvQuantizer>) -> Self {
        let inliers = (0..channels)
            .filter(|c| outliers.binary_search(c).is_err())
            .collect();
        Self {
            channels,
            outliers,
            inliers,
            base,
        }
    }

    /// Boxed.
    pub fn boxed(self) -> Box<dyn KvQuantizer> {
        Box::new(self)
    }
}

impl KvQuantizer for Outliers {
    fn roundtrip(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (c, ci) = (self.channels, self.inliers.len());
        let mut inner = Vec::with_capacity(t * ci);
        for r in 0..t {
            inner.extend(self.inliers.iter().map(|&ch| x[r * c + ch]));
        }
        let q = self.base.roundtrip(&inner, t);
        let mut out = vec![0.0; x.len()];
        for r in 0..t {
            for (k, &ch) in self.inliers.iter().enumerate() {
                out[r * c + ch] = q[r * ci + k];
            }
            for &ch in &self.outliers {
                out[r * c + ch] = f16_round(x[r * c + ch]);
            }
        }
        out
    }

    fn block(&self) -> usize {
        self.base.block()
    }

    fn bytes(&self, t: usize) -> usize {
        self.base.bytes(t) + t * self.outliers.len() * 2
    }

    fn static_bytes(&self) -> usize {
        self.base.static_bytes() + self.outliers.len() * 2
    }
}
