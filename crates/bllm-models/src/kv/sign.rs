//! One bit per value with an f16 scale per group.
//!
//! Forward: per group `G` (see [`Axis`]), `s = mean_G |x|` and `x̂ = s·sign(x)` — the `s`
//! minimising `‖x − s·sign(x)‖²` (XNOR-Net's scale, Rastegari et al. 2016), so
//! `‖x − x̂‖² = ‖x‖² − |G|·s²`. With `zero_point`, `m = mean_G x`, `s = mean_G |x − m|` and
//! `x̂ = m + s·sign(x − m)` (the two-level code that handles a channel's offset, as KIVI's
//! min/max does for 2 bits). `sign(0) = +1`; `s` and `m` are stored as f16 and used as stored.
//! Bytes per token row: `⌈c/64⌉·8` of sign bits, plus 2 (scale) and 2 (zero point) per group.

use super::{Axis, KvQuantizer, block_of, f16_round, group_count, groups, packed_bytes};

/// The sign quantizer.
#[derive(Clone, Debug)]
pub struct Sign {
    /// Channels per token.
    pub channels: usize,
    /// Token axis: a scale per `group` channels of a token; channel axis: per channel and
    /// block of `group` tokens.
    pub axis: Axis,
    /// Group size (channels or tokens).
    pub group: usize,
    /// Also a zero point per group.
    pub zero_point: bool,
}

impl KvQuantizer for Sign {
    fn roundtrip(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for (start, stride, len) in groups(t, self.channels, self.axis, self.group) {
            let at = |k: usize| start + k * stride;
            let m = if self.zero_point {
                f16_round((0..len).map(|k| x[at(k)] as f64).sum::<f64>() as f32 / len as f32)
            } else {
                0.0
            };
            let s = f16_round(
                ((0..len).map(|k| (x[at(k)] - m).abs() as f64).sum::<f64>() / len as f64) as f32,
            );
            for k in 0..len {
                let i = at(k);
                out[i] = if x[i] - m >= 0.0 { m + s } else { m - s };
            }
        }
        out
    }

    fn block(&self) -> usize {
        block_of(self.axis, self.group)
    }

    fn bytes(&self, t: usize) -> usize {
        let per_group = if self.zero_point { 4 } else { 2 };
        let groups = group_count(self.axis, self.group, t, self.channels);
        t * packed_bytes(self.channels, 1) + groups * per_group
    }
}
