//! Plain-Rust CPU counterparts of the kernels: the parity reference for the CubeCL kernels and
//! the fast CPU inference path of binary layers.
//!
//! * pack and Hamming top-k are `bllm-codes`' own ([`PackedCodes::from_f32_rows`],
//!   [`bllm_codes::hamming::search`]); they are re-exported here so every kernel has its CPU
//!   counterpart in one place.
//! * [`xnor_matmul`]: binary activations × binary weights by XOR + popcount on `u64` words.
//! * [`binary_float_matmul`]: float activations × binary weights (sign flips, no multiplies).
//! * [`to_gpu_layout`] / [`from_gpu_layout`]: the explicit re-pack between the contract and the
//!   word-interleaved layout the GPU kernels read.
//!
//! Every function here is deterministic: threads split the outputs, never a sum.

use bllm_codes::PackedCodes;
use rayon::prelude::*;

use crate::{KernelError, Result};

pub use bllm_codes::hamming::search as hamming_topk;

/// Packs the signs of a row-major `rows × dim` matrix into the contract layout, keeping the
/// first `bits` columns (bit = 1 where the value is `>= 0`). This is `bllm-codes`' packer.
pub fn pack_signs(x: &[f32], dim: usize, bits: usize) -> Result<PackedCodes> {
    Ok(PackedCodes::from_f32_rows(x, dim, bits)?)
}

/// Number of 32-bit GPU words of a row of `bits` bits: two per contract `u64` word.
pub fn gpu_words(bits: usize) -> usize {
    2 * bits.div_ceil(64)
}

/// The word-interleaved GPU layout of a code matrix: 32-bit words, word-major
/// (`gpu[w * rows + r]` is 32-bit word `w` of row `r`).
///
/// Contract word `i` (little-endian `u64`) of a row is GPU words `2i` (bits 0–31) and `2i + 1`
/// (bits 32–63); that is exactly how the contract's bytes read as little-endian `u32`s. In this
/// layout the threads of a GPU kernel that handle consecutive rows read consecutive addresses
/// (coalesced loads), and 32-bit words need no 64-bit integer support (WGSL has none).
pub fn to_gpu_layout(codes: &PackedCodes) -> Vec<u32> {
    let rows = codes.rows();
    let w32 = 2 * codes.words_per_row();
    let mut out = vec![0u32; rows * w32];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(rows).enumerate().for_each(|(w, dst)| {
        let (word, high) = (w / 2, w % 2 == 1);
        for (r, d) in dst.iter_mut().enumerate() {
            let v = codes.row(r)[word];
            *d = if high { (v >> 32) as u32 } else { v as u32 };
        }
    });
    out
}

/// The inverse of [`to_gpu_layout`]: back to the contract layout, bit for bit. Errors when the
/// length does not match `rows × gpu_words(bits)` or a padding bit above `bits` is set.
pub fn from_gpu_layout(gpu: &[u32], rows: usize, bits: usize) -> Result<PackedCodes> {
    let w32 = gpu_words(bits);
    if Some(gpu.len()) != rows.checked_mul(w32) {
        return Err(KernelError::Shape(format!(
            "{} GPU words given, expected {rows} rows × {w32} words for {bits} bits",
            gpu.len()
        )));
    }
    let w64 = w32 / 2;
    let mut words = vec![0u64; rows * w64];
    words
        .par_chunks_mut(w64.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (i, v) in row.iter_mut().enumerate() {
                let lo = gpu[(2 * i) * rows + r] as u64;
                let hi = gpu[(2 * i + 1) * rows + r] as u64;
                *v = lo | (hi << 32);
            }
        });
    Ok(PackedCodes::from_words(bits, rows, words)?)
}

/// Per-output scale and bias of a binary layer's epilogue `y = dot · scale[o] + bias[o]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    /// Empty (no scale), one value (per tensor) or one per output channel.
    pub scales: Vec<f32>,
    /// Empty (no bias) or one per output channel.
    pub bias: Vec<f32>,
}

impl Epilogue {
    /// No scale, no bias.
    pub fn none() -> Self {
        Self {
            scales: Vec::new(),
            bias: Vec::new(),
        }
    }

    /// Checks the lengths against `out` output channels.
    pub fn check(&self, out: usize) -> Result<()> {
        if !matches!(self.scales.len(), 0 | 1) && self.scales.len() != out {
            return Err(KernelError::Shape(format!(
                "{} scales given for {out} output channels (expected 0, 1 or {out})",
                self.scales.len()
            )));
        }
        if !self.bias.is_empty() && self.bias.len() != out {
            return Err(KernelError::Shape(format!(
                "{} bias values given for {out} output channels (expected 0 or {out})",
                self.bias.len()
            )));
        }
        Ok(())
    }

    /// Scale of output `o` (1 when there is none).
    #[inline]
    pub fn scale(&self, o: usize) -> f32 {
        match self.scales.len() {
            0 => 1.0,
            1 => self.scales[0],
            _ => self.scales[o],
        }
    }

    /// Bias of output `o` (0 when there is none).
    #[inline]
    pub fn bias(&self, o: usize) -> f32 {
        self.bias.get(o).copied().unwrap_or(0.0)
    }

    /// Per-channel scales and biases expanded to `out` values each (what the GPU reads).
    pub fn expanded(&self, out: usize) -> (Vec<f32>, Vec<f32>) {
        (
            (0..out).map(|o| self.scale(o)).collect(),
            (0..out).map(|o| self.bias(o)).collect(),
        )
    }

    #[inline]
    fn apply(&self, o: usize, dot: f32) -> f32 {
        dot * self.scale(o) + self.bias(o)
    }
}

/// XNOR-popcount matmul: `y[b, o] = (K − 2·popcount(a_b ⊕ w_o)) · scale[o] + bias[o]`, where
/// `a` holds the signs of the activations (`batch` rows of `K` bits), `w` the weight signs (one
/// row per output channel, `K` bits) and `K − 2·hamming` is the ±1 dot product. Output
/// row-major `batch × out`.
///
/// The dot product is an exact integer; the epilogue is one multiply and one add in `f32`.
pub fn xnor_matmul(a: &PackedCodes, w: &PackedCodes, epi: &Epilogue) -> Result<Vec<f32>> {
    if a.bits() != w.bits() {
        return Err(KernelError::Shape(format!(
            "activations have {} bits per row but weights have {}",
            a.bits(),
            w.bits()
        )));
    }
    let out = w.rows();
    epi.check(out)?;
    let mut y = vec![0f32; a.rows() * out];
    if out == 0 {
        return Ok(y);
    }
    let k = a.bits() as i64;
    let popcnt = has_popcnt();
    #[cfg(target_arch = "x86_64")]
    let avx2 = popcnt && std::arch::is_x86_feature_detected!("avx2");
    // Each task owns `XNOR_ROWS` batch rows of the output and walks the weights in blocks of
    // `XNOR_WEIGHT_BLOCK` rows (kept in cache while its batch rows go past), each in register
    // tiles of 2 batch rows × 4 weight rows: 6 words loaded per 8 popcounts.
    y.par_chunks_mut(XNOR_ROWS * out)
        .enumerate()
        .for_each(|(task, dst)| {
            let b0 = task * XNOR_ROWS;
            let nb = dst.len() / out;
            let mut counts = vec![0u32; nb * out];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: `avx2` is true only when the CPU was detected to have AVX2 and
                // POPCNT.
                unsafe { xnor_counts_avx2(a, w, b0, nb, &mut counts) };
            } else if popcnt {
                // SAFETY: `popcnt` is true only when the CPU was detected to have the
                // instruction.
                unsafe { xnor_counts_popcnt(a, w, b0, nb, &mut counts) };
            } else {
                xnor_counts(a, w, b0, nb, &mut counts);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = popcnt;
                xnor_counts(a, w, b0, nb, &mut counts);
            }
            for (i, (v, h)) in dst.iter_mut().zip(&counts).enumerate() {
                *v = epi.apply(i % out, (k - 2 * *h as i64) as f32);
            }
        });
    Ok(y)
}

/// Batch rows per task of [`xnor_matmul`].
const XNOR_ROWS: usize = 16;

/// Weight rows per cache block of [`xnor_matmul`] (64 rows of 4,096 bits: 32 KiB).
const XNOR_WEIGHT_BLOCK: usize = 64;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn xnor_counts_avx2(a: &PackedCodes, w: &PackedCodes, b0: usize, nb: usize, out: &mut [u32]) {
    xnor_counts(a, w, b0, nb, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn xnor_counts_popcnt(a: &PackedCodes, w: &PackedCodes, b0: usize, nb: usize, out: &mut [u32]) {
    xnor_counts(a, w, b0, nb, out)
}

/// `out[i·o_n + o] = popcount(a_{b0+i} ⊕ w_o)` for `i < nb` and every weight row `o`: exact
/// integers, in any blocking.
#[inline(always)]
fn xnor_counts(a: &PackedCodes, w: &PackedCodes, b0: usize, nb: usize, out: &mut [u32]) {
    let o_n = w.rows();
    for ob in (0..o_n).step_by(XNOR_WEIGHT_BLOCK) {
        let oe = (ob + XNOR_WEIGHT_BLOCK).min(o_n);
        // Pairs of batch rows (a last odd row alone), each against the block's weight rows in
        // fours (the last few one by one).
        for i in (0..nb).step_by(2) {
            let pair = i + 2 <= nb;
            let mut o = ob;
            while pair && o + 4 <= oe {
                let ar = [a.row(b0 + i), a.row(b0 + i + 1)];
                let wr = [w.row(o), w.row(o + 1), w.row(o + 2), w.row(o + 3)];
                for (r, row) in tile2x4(ar, wr).iter().enumerate() {
                    out[(i + r) * o_n + o..(i + r) * o_n + o + 4].copy_from_slice(row);
                }
                o += 4;
            }
            for r in i..(i + 2).min(nb) {
                for c in o..oe {
                    out[r * o_n + c] = bllm_codes::hamming::distance(a.row(b0 + r), w.row(c));
                }
            }
        }
    }
}

/// The 2 × 4 popcounts of `a[r] ⊕ w[c]`: four words at a time in four independent lanes per
/// pair (eight 4-lane accumulators), which the compiler keeps in vector registers and, with
/// AVX2, counts with byte shuffles.
#[inline(always)]
fn tile2x4(a: [&[u64]; 2], w: [&[u64]; 4]) -> [[u32; 4]; 2] {
    let n = a[0].len();
    let (a0, a1) = (&a[0][..n], &a[1][..n]);
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut acc = [[[0u64; 4]; 4]; 2];
    let body = n / 4 * 4;
    for k in (0..body).step_by(4) {
        let av = [&a0[k..k + 4], &a1[k..k + 4]];
        let wv = [&w0[k..k + 4], &w1[k..k + 4], &w2[k..k + 4], &w3[k..k + 4]];
        for r in 0..2 {
            for c in 0..4 {
                for l in 0..4 {
                    acc[r][c][l] += (av[r][l] ^ wv[c][l]).count_ones() as u64;
                }
            }
        }
    }
    let mut out = [[0u32; 4]; 2];
    let ar = [a0, a1];
    let wr = [w0, w1, w2, w3];
    for r in 0..2 {
        for c in 0..4 {
            let tail: u32 = (body..n).map(|k| (ar[r][k] ^ wr[c][k]).count_ones()).sum();
            out[r][c] = acc[r][c].iter().sum::<u64>() as u32 + tail;
        }
    }
    out
}

/// Float activations × binary weights: `y[b, o] = (Σ_k ±x[b, k]) · scale[o] + bias[o]` with `+`
/// where weight bit `k` of output `o` is set. No multiplies: each term is `x` with its sign bit
/// flipped or not.
///
/// The sum runs over 8 lanes (`k mod 8`), each in increasing `k`, combined as
/// `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))` — the GPU kernel sums in exactly this order, so the
/// two agree up to the epilogue (which a GPU compiler may fuse into one FMA). Work is split
/// into blocks of [`OUT_BLOCK`] output channels whose sign masks stay in cache while every
/// batch row streams past them.
pub fn binary_float_matmul(
    x: &[f32],
    batch: usize,
    w: &PackedCodes,
    epi: &Epilogue,
) -> Result<Vec<f32>> {
    let k = w.bits();
    if Some(x.len()) != batch.checked_mul(k) {
        return Err(KernelError::Shape(format!(
            "{} activations given, expected batch {batch} × {k} features",
            x.len()
        )));
    }
    let out = w.rows();
    epi.check(out)?;
    if out == 0 || batch == 0 {
        return Ok(vec![0f32; batch * out]);
    }
    // Transposed result, one row of `batch` values per output channel.
    let mut yt = vec![0f32; out * batch];
    let table = mask_table();
    yt.par_chunks_mut(OUT_BLOCK * batch)
        .enumerate()
        .for_each(|(blk, dst)| {
            let o0 = blk * OUT_BLOCK;
            let n = dst.len() / batch;
            // Sign masks: 0 where the weight bit is set (keep x), the f32 sign bit otherwise;
            // one table lookup per weight byte.
            let mut masks = vec![0u32; n * k];
            for (j, m) in masks.chunks_mut(k.max(1)).enumerate() {
                let bytes = w.row(o0 + j).iter().flat_map(|v| v.to_le_bytes());
                for (chunk, byte) in m.chunks_mut(8).zip(bytes) {
                    chunk.copy_from_slice(&table[byte as usize][..chunk.len()]);
                }
            }
            for b in 0..batch {
                let xb = &x[b * k..(b + 1) * k];
                for j in 0..n {
                    let dot = masked_sum(xb, &masks[j * k..(j + 1) * k]);
                    dst[j * batch + b] = epi.apply(o0 + j, dot);
                }
            }
        });
    let mut y = vec![0f32; batch * out];
    y.par_chunks_mut(out).enumerate().for_each(|(b, row)| {
        for (o, v) in row.iter_mut().enumerate() {
            *v = yt[o * batch + b];
        }
    });
    Ok(y)
}

/// The 8 sign masks of every byte value (bit `l` set → mask `l` is 0, else the sign bit).
fn mask_table() -> Box<[[u32; 8]; 256]> {
    let mut t = Box::new([[0u32; 8]; 256]);
    for (byte, m) in t.iter_mut().enumerate() {
        for (l, v) in m.iter_mut().enumerate() {
            *v = (((byte >> l) as u32 & 1) ^ 1) << 31;
        }
    }
    t
}

/// Output channels per task of [`binary_float_matmul`] (their masks: 32 × 4 B per input).
pub const OUT_BLOCK: usize = 32;

/// `Σ_k x[k] with sign bits xor-ed by masks[k]`, over 8 lanes (see [`binary_float_matmul`]).
#[inline]
fn masked_sum(x: &[f32], masks: &[u32]) -> f32 {
    let mut lanes = [0f32; 8];
    let full = x.len() / 8 * 8;
    for (xs, ms) in x[..full].chunks_exact(8).zip(masks[..full].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += f32::from_bits(xs[l].to_bits() ^ ms[l]);
        }
    }
    for c in full..x.len() {
        lanes[c % 8] += f32::from_bits(x[c].to_bits() ^ masks[c]);
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

fn has_popcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How a [`PackedLinear`] treats its inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum PackedInput {
    /// Float activations (binary weights only): [`binary_float_matmul`].
    Float,
    /// Binary activations `scale · sign(x − threshold)` (`sign(0) = +1`): packed, then
    /// [`xnor_matmul`].
    Sign {
        /// Empty, or one threshold per input feature (RSign / elastic β broadcast).
        threshold: Vec<f32>,
        /// Magnitude of the binary activations (1, or the elastic α).
        scale: f32,
    },
}

/// A binary linear layer frozen for inference: weight signs in the contract layout (one row per
/// output channel), its epilogue, and its input treatment. `bllm_nn::BinaryLinear::to_packed`
/// builds one from a trained layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLinear {
    /// Weight signs, `d_output` rows of `d_input` bits.
    pub weights: PackedCodes,
    /// Scales and bias.
    pub epilogue: Epilogue,
    /// Input treatment.
    pub input: PackedInput,
}

impl PackedLinear {
    /// Input features.
    pub fn d_input(&self) -> usize {
        self.weights.bits()
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.weights.rows()
    }

    /// Forward pass of `batch` rows of `d_input` floats → `batch × d_output`, row-major.
    pub fn forward(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        match &self.input {
            PackedInput::Float => binary_float_matmul(x, batch, &self.weights, &self.epilogue),
            PackedInput::Sign { .. } => {
                let a = self.pack_input(x, batch)?;
                let epi = self.sign_epilogue();
                xnor_matmul(&a, &self.weights, &epi)
            }
        }
    }

    /// The packed signs of `x − threshold` (for [`PackedInput::Sign`]; plain signs otherwise).
    pub fn pack_input(&self, x: &[f32], batch: usize) -> Result<PackedCodes> {
        let k = self.d_input();
        if Some(x.len()) != batch.checked_mul(k) {
            return Err(KernelError::Shape(format!(
                "{} activations given, expected batch {batch} × {k} features",
                x.len()
            )));
        }
        match &self.input {
            PackedInput::Sign { threshold, .. } if !threshold.is_empty() => {
                if threshold.len() != k {
                    return Err(KernelError::Shape(format!(
                        "{} thresholds for {k} input features",
                        threshold.len()
                    )));
                }
                let shifted: Vec<f32> = x
                    .chunks(k.max(1))
                    .flat_map(|row| row.iter().zip(threshold).map(|(v, t)| v - t))
                    .collect();
                pack_signs(&shifted, k, k)
            }
            _ => pack_signs(x, k, k),
        }
    }

    /// The epilogue of the XNOR path: the activation magnitude folded into the scales.
    pub fn sign_epilogue(&self) -> Epilogue {
        let s = match &self.input {
            PackedInput::Sign { scale, .. } => *scale,
            PackedInput::Float => 1.0,
        };
        if s == 1.0 {
            return self.epilogue.clone();
        }
        let scales = if self.epilogue.scales.is_empty() {
            vec![s]
        } else {
            self.epilogue.scales.iter().map(|v| v * s).collect()
        };
        Epilogue {
            scales,
            bias: self.epilogue.bias.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bllm_codes::rng::SplitMix64;
    use proptest::prelude::*;

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// The ±1 matrix of packed codes, row-major `rows × bits`.
    fn signs(c: &PackedCodes) -> Vec<f32> {
        c.to_signs()
    }

    #[test]
    fn xnor_matmul_equals_the_float_dot_of_signs() {
        // Shapes on both sides of the 2 × 4 register tiles, the 64-row weight blocks, the
        // 16-row tasks and the 4-word lanes.
        for &(batch, out, k) in &[
            (1, 1, 1),
            (3, 5, 63),
            (4, 70, 64),
            (2, 9, 130),
            (5, 3, 200),
            (37, 133, 300),
            (16, 64, 256),
            (19, 67, 449),
        ] {
            let a = pack_signs(&randn(batch * k, 1), k, k).unwrap();
            let w = pack_signs(&randn(out * k, 2), k, k).unwrap();
            let epi = Epilogue {
                scales: randn(out, 3),
                bias: randn(out, 4),
            };
            let y = xnor_matmul(&a, &w, &epi).unwrap();
            let (sa, sw) = (signs(&a), signs(&w));
            for b in 0..batch {
                for o in 0..out {
                    let dot: f32 = (0..k).map(|j| sa[b * k + j] * sw[o * k + j]).sum();
                    let want = dot * epi.scales[o] + epi.bias[o];
                    assert_eq!(y[b * out + o], want, "b {b} o {o} k {k}");
                }
            }
        }
    }

    #[test]
    fn binary_float_matmul_matches_a_sequential_sum_closely_and_its_lane_order_exactly() {
        for &(batch, out, k) in &[(1, 1, 1), (2, 7, 64), (3, 4, 77), (1, 65, 256)] {
            let x = randn(batch * k, 5);
            let w = pack_signs(&randn(out * k, 6), k, k).unwrap();
            let epi = Epilogue {
                scales: vec![0.5],
                bias: Vec::new(),
            };
            let y = binary_float_matmul(&x, batch, &w, &epi).unwrap();
            let sw = signs(&w);
            for b in 0..batch {
                for o in 0..out {
                    // Same lane order by hand: exact.
                    let mut lanes = [0f32; 8];
                    for j in 0..k {
                        lanes[j % 8] += x[b * k + j] * sw[o * k + j];
                    }
                    let lane_sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
                    assert_eq!(y[b * out + o], lane_sum * 0.5);
                    // A plain sequential sum: equal up to rounding.
                    let seq: f32 = (0..k).map(|j| x[b * k + j] * sw[o * k + j]).sum();
                    let mag: f32 = (0..k).map(|j| x[b * k + j].abs()).sum();
                    assert!((y[b * out + o] - seq * 0.5).abs() <= 1e-6 * mag + 1e-7);
                }
            }
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let a = pack_signs(&randn(10, 1), 10, 10).unwrap();
        let w = pack_signs(&randn(24, 1), 12, 12).unwrap();
        assert!(matches!(
            xnor_matmul(&a, &w, &Epilogue::none()),
            Err(KernelError::Shape(_))
        ));
        let w2 = pack_signs(&randn(30, 1), 10, 10).unwrap();
        let bad = Epilogue {
            scales: vec![1.0; 2],
            bias: Vec::new(),
        };
        let e = xnor_matmul(&a, &w2, &bad).unwrap_err().to_string();
        assert!(e.contains("2 scales given for 3 output channels"), "{e}");
        assert!(binary_float_matmul(&[0.0; 9], 1, &w2, &Epilogue::none()).is_err());
        assert!(from_gpu_layout(&[0; 3], 1, 64).is_err());
    }

    #[test]
    fn packed_linear_sign_input_folds_threshold_and_scale() {
        let (k, out) = (40, 6);
        let w = pack_signs(&randn(out * k, 7), k, k).unwrap();
        let threshold = randn(k, 8);
        let layer = PackedLinear {
            weights: w.clone(),
            epilogue: Epilogue {
                scales: randn(out, 9),
                bias: randn(out, 10),
            },
            input: PackedInput::Sign {
                threshold: threshold.clone(),
                scale: 0.25,
            },
        };
        let x = randn(2 * k, 11);
        let y = layer.forward(&x, 2).unwrap();
        let sw = signs(&w);
        for b in 0..2 {
            for o in 0..out {
                let dot: f32 = (0..k)
                    .map(|j| {
                        let s = if x[b * k + j] - threshold[j] >= 0.0 {
                            1.0
                        } else {
                            -1.0
                        };
                        s * sw[o * k + j]
                    })
                    .sum();
                let want = dot * (layer.epilogue.scales[o] * 0.25) + layer.epilogue.bias[o];
                assert_eq!(y[b * out + o], want);
            }
        }
    }

    proptest! {
        #[test]
        fn gpu_layout_round_trips_bit_for_bit(rows in 0usize..20, bits in 1usize..200, seed in 0u64..1000) {
            let x = randn(rows * bits, seed);
            let codes = pack_signs(&x, bits, bits).unwrap();
            let gpu = to_gpu_layout(&codes);
            prop_assert_eq!(gpu.len(), rows * gpu_words(bits));
            // Word w of row r in the GPU layout is the contract's little-endian u32 number w.
            for r in 0..rows {
                let bytes: Vec<u8> = codes.row(r).iter().flat_map(|v| v.to_le_bytes()).collect();
                for w in 0..gpu_words(bits) {
                    let le = u32::from_le_bytes([bytes[4 * w], bytes[4 * w + 1], bytes[4 * w + 2], bytes[4 * w + 3]]);
                    prop_assert_eq!(gpu[w * rows + r], le);
                }
            }
            let back = from_gpu_layout(&gpu, rows, bits).unwrap();
            prop_assert_eq!(back, codes);
        }

        #[test]
        fn xnor_dot_is_k_minus_twice_the_hamming_distance(k in 1usize..300, seed in 0u64..1000) {
            let a = pack_signs(&randn(k, seed), k, k).unwrap();
            let w = pack_signs(&randn(k, seed + 1), k, k).unwrap();
            let y = xnor_matmul(&a, &w, &Epilogue::none()).unwrap();
            let h = bllm_codes::hamming::distance(a.row(0), w.row(0)) as f32;
            prop_assert_eq!(y[0], k as f32 - 2.0 * h);
        }
    }

    #[test]
    fn stray_padding_bits_are_refused_on_the_way_back() {
        let codes = pack_signs(&randn(3 * 10, 3), 10, 10).unwrap();
        let mut gpu = to_gpu_layout(&codes);
        gpu[0] |= 1 << 20; // bit 20 of row 0: above bits = 10
        assert!(from_gpu_layout(&gpu, 3, 10).is_err());
    }
}
