//! The float cache (the reference) and the f16 cache (the memory baseline).

use super::{KvQuantizer, f16_round};

/// The cache as computed, f32: `x̂ = x`, 4 bytes per value.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Channels per token.
    pub channels: usize,
}

impl KvQuantizer for Identity {
    fn roundtrip(&self, x: &[f32], _t: usize) -> Vec<f32> {
        x.to_vec()
    }
    fn bytes(&self, t: usize) -> usize {
        4 * self.channels * t
    }
}

/// IEEE half precision: `x̂ = f16(x)` (round to nearest even), 2 bytes per value;
/// `|x − x̂| ≤ 2⁻¹¹·|x|` in f16's normal range.
#[derive(Clone, Debug)]
pub struct F16 {
    /// Channels per token.
    pub channels: usize,
}

impl KvQuantizer for F16 {
    fn roundtrip(&self, x: &[f32], _t: usize) -> Vec<f32> {
        x.iter().map(|&v| f16_round(v)).collect()
    }
    fn bytes(&self, t: usize) -> usize {
        2 * self.channels * t
    }
}
