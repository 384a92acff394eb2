//! `b`-bit asymmetric integers per group (KIVI, Liu et al., ICML 2024; the int8/int4 caches
//! of practice).
//!
//! Forward: per group, `m = f16↓(min x)` (the f16 at or below the minimum),
//! `Δ = f16↑((max x − m)/(2ᵇ − 1))` (at or above, so the grid covers the maximum),
//! `q = clamp(round((x − m)/Δ), 0, 2ᵇ − 1)`, `x̂ = m + q·Δ`; hence `|x − x̂| ≤ Δ/2` up to f32
//! rounding. Bytes per token row: `⌈c·b/64⌉·8` of codes, plus 2 (Δ) + 2 (m) per group.

use super::{Axis, KvQuantizer, block_of, f16_down, f16_up, group_count, groups, packed_bytes};

/// The integer quantizer.
#[derive(Clone, Debug)]
pub struct Int {
    /// Channels per token.
    pub channels: usize,
    /// What a scale is shared over.
    pub axis: Axis,
    /// Group size (channels or tokens).
    pub group: usize,
    /// Bits per value (2, 4, 8).
    pub bits: u32,
}

impl Int {
    /// The stored `(m, Δ)` of one group's values.
    pub fn params(&self, vals: impl Iterator<Item = f32>) -> (f32, f32) {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in vals {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let levels = ((1u32 << self.bits) - 1) as f32;
        let m = f16_down(lo);
        let mut d = f16_up((hi - m) / levels);
        while m + levels * d < hi {
            d = f16_up(d * (1.0 + 1e-3));
        }
        (m, d)
    }
}

impl KvQuantizer for Int {
    fn roundtrip(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        let levels = ((1u32 << self.bits) - 1) as f32;
        for (start, stride, len) in groups(t, self.channels, self.axis, self.group) {
            let at = |k: usize| start + k * stride;
            let (m, d) = self.params((0..len).map(|k| x[at(k)]));
            for k in 0..len {
                let i = at(k);
                out[i] = if d > 0.0 {
                    m + ((x[i] - m) / d).round().clamp(0.0, levels) * d
                } else {
                    m
                };
            }
        }
        out
    }

    fn block(&self) -> usize {
        block_of(self.axis, self.group)
    }

    fn bytes(&self, t: usize) -> usize {
        let groups = group_count(self.axis, self.group, t, self.channels);
        t * packed_bytes(self.channels, self.bits as usize) + groups * 4
    }
}
