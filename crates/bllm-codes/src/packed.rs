//! [`PackedCodes`]: binary codes in the frozen contract layout.

use half::f16;
use rayon::prelude::*;

use crate::{CodesError, Result};

/// Name of the contract layout, written in every manifest: row-major rows of little-endian
/// `u64` words, bit `j` of a row in bit `j % 64` (LSB first) of word `j / 64`.
pub const LAYOUT_NAME: &str = "row-major-u64le-lsb0";

/// Number of `u64` words per row for `bits` bits: `ceil(bits / 64)`.
pub fn words_per_row(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Mask of the valid bits of the last word of a row (all ones when `bits % 64 == 0`).
pub(crate) fn last_word_mask(bits: usize) -> u64 {
    match bits % 64 {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

/// Below this many input values packing stays on the calling thread.
const PAR_THRESHOLD: usize = 1 << 16;

/// Binary codes in the contract layout.
///
/// * `rows` vectors of `bits` bits each, row-major;
/// * each row is `words_per_row = ceil(bits / 64)` little-endian `u64` words;
/// * bit `j` of a row is bit `j % 64` (LSB = 0) of word `j / 64`;
/// * the unused high bits of the last word of every row are zero;
/// * bit = 1 means the source value was `>= 0` (`sign(0) = +1`, also for `-0.0`).
///
/// Every constructor enforces these invariants, so a `PackedCodes` value is always valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedCodes {
    bits: usize,
    rows: usize,
    words_per_row: usize,
    words: Vec<u64>,
}

impl PackedCodes {
    /// All-zero codes of `rows` × `bits`.
    pub fn zeros(rows: usize, bits: usize) -> Result<Self> {
        check_bits(bits)?;
        let wpr = words_per_row(bits);
        let len = rows.checked_mul(wpr).ok_or_else(|| {
            CodesError::InvalidArgument(format!("{rows} rows × {bits} bits overflows"))
        })?;
        Ok(Self {
            bits,
            rows,
            words_per_row: wpr,
            words: vec![0; len],
        })
    }

    /// Wraps contract-layout words, checking the length and that unused high bits are zero.
    pub fn from_words(bits: usize, rows: usize, words: Vec<u64>) -> Result<Self> {
        check_bits(bits)?;
        let wpr = words_per_row(bits);
        if Some(words.len()) != rows.checked_mul(wpr) {
            return Err(CodesError::Mismatch(format!(
                "{} words given, expected {rows} rows × {wpr} words for {bits} bits",
                words.len()
            )));
        }
        let codes = Self {
            bits,
            rows,
            words_per_row: wpr,
            words,
        };
        if let Some(row) = codes.first_row_with_stray_bits() {
            return Err(CodesError::InvalidArgument(format!(
                "row {row} has bits set above bit {} (unused high bits must be zero)",
                bits - 1
            )));
        }
        Ok(codes)
    }

    /// Reads contract bytes (rows × words_per_row little-endian `u64`s).
    pub fn from_le_bytes(bits: usize, rows: usize, bytes: &[u8]) -> Result<Self> {
        if bytes.len() % 8 != 0 {
            return Err(CodesError::Mismatch(format!(
                "{} bytes is not a whole number of u64 words",
                bytes.len()
            )));
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Self::from_words(bits, rows, words)
    }

    /// Sign-binarizes the first `bits` columns of each row of a row-major `f32` matrix with
    /// `dim` columns: bit = 1 where the value is `>= 0`. NaN and ±inf are rejected.
    pub fn from_f32_rows(data: &[f32], dim: usize, bits: usize) -> Result<Self> {
        Self::from_rows_with(data, dim, bits, |x| x)
    }

    /// Like [`from_f32_rows`](Self::from_f32_rows) for `f16` input.
    pub fn from_f16_rows(data: &[f16], dim: usize, bits: usize) -> Result<Self> {
        Self::from_rows_with(data, dim, bits, f16::to_f32)
    }

    fn from_rows_with<T: Copy + Sync>(
        data: &[T],
        dim: usize,
        bits: usize,
        to_f32: impl Fn(T) -> f32 + Sync,
    ) -> Result<Self> {
        check_bits(bits)?;
        if dim == 0 || data.len() % dim != 0 {
            return Err(CodesError::Mismatch(format!(
                "{} values do not form rows of {dim} columns",
                data.len()
            )));
        }
        if bits > dim {
            return Err(CodesError::InvalidArgument(format!(
                "bits ({bits}) exceeds the number of columns ({dim})"
            )));
        }
        let rows = data.len() / dim;
        let mut codes = Self::zeros(rows, bits)?;
        let wpr = codes.words_per_row;
        let pack_row = |(r, (out, src)): (usize, (&mut [u64], &[T]))| -> Result<()> {
            for (w, (word, chunk)) in out.iter_mut().zip(src[..bits].chunks(64)).enumerate() {
                let mut acc = 0u64;
                let mut bad = false;
                for (b, &v) in chunk.iter().enumerate() {
                    let x = to_f32(v);
                    bad |= !x.is_finite();
                    acc |= u64::from(x >= 0.0) << b;
                }
                if bad {
                    let (col, value) = chunk
                        .iter()
                        .enumerate()
                        .map(|(b, &v)| (w * 64 + b, to_f32(v)))
                        .find(|(_, x)| !x.is_finite())
                        .unwrap_or((w * 64, f32::NAN));
                    return Err(CodesError::NonFinite {
                        what: "input rows".into(),
                        row: r,
                        col,
                        value,
                    });
                }
                *word = acc;
            }
            Ok(())
        };
        let pairs = codes.words.chunks_mut(wpr).zip(data.chunks(dim));
        if data.len() >= PAR_THRESHOLD {
            let pairs: Vec<_> = pairs.enumerate().collect();
            // Report the first bad row deterministically, whatever the thread schedule.
            let errs: Vec<CodesError> = pairs
                .into_par_iter()
                .filter_map(|p| pack_row(p).err())
                .collect();
            if let Some(e) = errs.into_iter().next() {
                return Err(e);
            }
        } else {
            pairs.enumerate().try_for_each(pack_row)?;
        }
        Ok(codes)
    }

    /// Packs row-major booleans (`rows × bits`); `true` becomes bit 1.
    pub fn from_bools(data: &[bool], bits: usize) -> Result<Self> {
        check_bits(bits)?;
        if data.len() % bits != 0 {
            return Err(CodesError::Mismatch(format!(
                "{} booleans do not form rows of {bits} bits",
                data.len()
            )));
        }
        let mut codes = Self::zeros(data.len() / bits, bits)?;
        let wpr = codes.words_per_row;
        for (out, src) in codes.words.chunks_mut(wpr).zip(data.chunks(bits)) {
            for (j, &b) in src.iter().enumerate() {
                out[j / 64] |= u64::from(b) << (j % 64);
            }
        }
        Ok(codes)
    }

    /// Unpacks to row-major booleans (`rows × bits`).
    pub fn to_bools(&self) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.rows * self.bits);
        for r in 0..self.rows {
            let row = self.row(r);
            out.extend((0..self.bits).map(|j| row[j / 64] >> (j % 64) & 1 == 1));
        }
        out
    }

    /// Unpacks to ±1 values (`rows × bits`), the binarized vectors the codes stand for.
    pub fn to_signs(&self) -> Vec<f32> {
        self.to_bools()
            .into_iter()
            .map(|b| if b { 1.0 } else { -1.0 })
            .collect()
    }

    /// Number of bits per row.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Number of rows (vectors).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of `u64` words per row, `ceil(bits / 64)`.
    pub fn words_per_row(&self) -> usize {
        self.words_per_row
    }

    /// Number of payload bytes (`rows × words_per_row × 8`).
    pub fn byte_len(&self) -> usize {
        self.words.len() * 8
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The words of row `r`. Panics if `r >= rows`, like slice indexing.
    pub fn row(&self, r: usize) -> &[u64] {
        &self.words[r * self.words_per_row..(r + 1) * self.words_per_row]
    }

    /// Bit `j` of row `r`. Panics if out of range, like slice indexing.
    pub fn bit(&self, r: usize, j: usize) -> bool {
        assert!(j < self.bits, "bit {j} out of range for {} bits", self.bits);
        self.row(r)[j / 64] >> (j % 64) & 1 == 1
    }

    /// All words, row-major.
    pub fn as_words(&self) -> &[u64] {
        &self.words
    }

    /// Consumes the codes and returns the words, row-major.
    pub fn into_words(self) -> Vec<u64> {
        self.words
    }

    /// The contract bytes: every word little-endian, row-major.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Bytes per row in the byte-packed view, `ceil(bits / 8)`.
    pub fn bytes_per_row(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// The byte-packed view: `rows × ceil(bits / 8)` bytes, identical to
    /// `numpy.packbits(bits, axis=1, bitorder="little")` (and to FAISS binary codes when `bits`
    /// is a multiple of 8). It is the prefix of each row's little-endian word bytes.
    pub fn to_packbits_u8(&self) -> Vec<u8> {
        let bpr = self.bytes_per_row();
        let mut out = Vec::with_capacity(self.rows * bpr);
        for r in 0..self.rows {
            let bytes: Vec<u8> = self.row(r).iter().flat_map(|w| w.to_le_bytes()).collect();
            out.extend_from_slice(&bytes[..bpr]);
        }
        out
    }

    /// Inverse of [`to_packbits_u8`](Self::to_packbits_u8); rejects bits set past `bits`.
    pub fn from_packbits_u8(bits: usize, bytes: &[u8]) -> Result<Self> {
        check_bits(bits)?;
        let bpr = bits.div_ceil(8);
        if bytes.len() % bpr != 0 {
            return Err(CodesError::Mismatch(format!(
                "{} bytes do not form rows of {bpr} bytes ({bits} bits)",
                bytes.len()
            )));
        }
        let wpr = words_per_row(bits);
        let mut words = Vec::with_capacity(bytes.len() / bpr * wpr);
        for row in bytes.chunks(bpr) {
            let mut padded = vec![0u8; wpr * 8];
            padded[..bpr].copy_from_slice(row);
            words.extend(
                padded
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
            );
        }
        Self::from_words(bits, bytes.len() / bpr, words)
    }

    /// A copy of rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<Self> {
        if start > end || end > self.rows {
            return Err(CodesError::InvalidArgument(format!(
                "row range {start}..{end} is outside 0..{}",
                self.rows
            )));
        }
        let w = self.words_per_row;
        Ok(Self {
            bits: self.bits,
            rows: end - start,
            words_per_row: w,
            words: self.words[start * w..end * w].to_vec(),
        })
    }

    fn first_row_with_stray_bits(&self) -> Option<usize> {
        let mask = last_word_mask(self.bits);
        if mask == u64::MAX {
            return None;
        }
        (0..self.rows).find(|&r| self.words[(r + 1) * self.words_per_row - 1] & !mask != 0)
    }
}

fn check_bits(bits: usize) -> Result<()> {
    if bits == 0 {
        return Err(CodesError::InvalidArgument(
            "bits must be at least 1".into(),
        ));
    }
    if bits > u32::MAX as usize {
        return Err(CodesError::InvalidArgument(format!(
            "bits ({bits}) is too large"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sign_zero_is_plus_one_including_negative_zero() {
        let c = PackedCodes::from_f32_rows(&[0.0, -0.0, -1e-30, 1e-30], 4, 4).unwrap();
        assert_eq!(c.row(0), &[0b1011]);
    }

    #[test]
    fn bit_j_lives_in_word_j_div_64_at_position_j_mod_64() {
        let mut v = vec![-1.0f32; 130];
        v[0] = 1.0;
        v[63] = 1.0;
        v[64] = 1.0;
        v[129] = 1.0;
        let c = PackedCodes::from_f32_rows(&v, 130, 130).unwrap();
        assert_eq!(c.words_per_row(), 3);
        assert_eq!(c.row(0), &[1 | 1 << 63, 1, 1 << 1]);
        // Little-endian bytes: bit 0 is the LSB of byte 0.
        let bytes = c.to_le_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[7], 0x80);
        assert_eq!(bytes[8], 1);
        assert_eq!(bytes[16], 2);
    }

    #[test]
    fn bits_selects_leading_columns() {
        let c = PackedCodes::from_f32_rows(&[1.0, -1.0, 1.0, -1.0, 1.0, -1.0], 3, 2).unwrap();
        assert_eq!(c.rows(), 2);
        assert_eq!(c.as_words(), &[0b01, 0b10]);
    }

    #[test]
    fn rejects_non_finite_with_position() {
        let err = PackedCodes::from_f32_rows(&[1.0, 2.0, 3.0, f32::NAN], 2, 2).unwrap_err();
        assert!(
            matches!(err, CodesError::NonFinite { row: 1, col: 1, .. }),
            "{err}"
        );
        let big: Vec<f32> = (0..200_000)
            .map(|i| {
                if i == 70_001 || i == 90_000 {
                    f32::INFINITY
                } else {
                    1.0
                }
            })
            .collect();
        let err = PackedCodes::from_f32_rows(&big, 100, 100).unwrap_err();
        assert!(
            matches!(
                err,
                CodesError::NonFinite {
                    row: 700,
                    col: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(PackedCodes::from_f32_rows(&[1.0; 5], 2, 2).is_err());
        assert!(PackedCodes::from_f32_rows(&[1.0; 4], 2, 3).is_err());
        assert!(PackedCodes::from_f32_rows(&[1.0; 4], 2, 0).is_err());
        assert!(PackedCodes::from_words(3, 1, vec![0b1000]).is_err());
        assert!(PackedCodes::from_words(64, 2, vec![0]).is_err());
        assert!(PackedCodes::from_packbits_u8(9, &[0, 2]).is_err());
        assert!(PackedCodes::from_le_bytes(8, 1, &[0; 7]).is_err());
        assert!(PackedCodes::zeros(3, 8).unwrap().slice_rows(2, 4).is_err());
    }

    #[test]
    fn f16_packs_like_f32() {
        let vals = [0.5f32, -0.25, 0.0, -0.0, 3.0, -7.0];
        let h: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
        assert_eq!(
            PackedCodes::from_f16_rows(&h, 3, 3).unwrap(),
            PackedCodes::from_f32_rows(&vals, 3, 3).unwrap()
        );
        let nan = [f16::NAN];
        assert!(PackedCodes::from_f16_rows(&nan, 1, 1).is_err());
    }

    proptest! {
        #[test]
        fn bools_round_trip(bits in 1usize..=1024, rows in 0usize..5, seed in any::<u64>()) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let data: Vec<bool> = (0..rows * bits).map(|_| rng.next_u64() & 1 == 1).collect();
            let c = PackedCodes::from_bools(&data, bits).unwrap();
            prop_assert_eq!(c.words_per_row(), bits.div_ceil(64));
            prop_assert_eq!(c.to_bools(), data.clone());
            // Bytes, words and the numpy packbits view all round-trip.
            prop_assert_eq!(&PackedCodes::from_le_bytes(bits, rows, &c.to_le_bytes()).unwrap(), &c);
            prop_assert_eq!(&PackedCodes::from_words(bits, rows, c.as_words().to_vec()).unwrap(), &c);
            prop_assert_eq!(&PackedCodes::from_packbits_u8(bits, &c.to_packbits_u8()).unwrap(), &c);
            // Signs pack back to the same codes.
            prop_assert_eq!(&PackedCodes::from_f32_rows(&c.to_signs(), bits, bits).unwrap(), &c);
            for r in 0..rows {
                for j in 0..bits {
                    prop_assert_eq!(c.bit(r, j), data[r * bits + j]);
                }
            }
        }

        #[test]
        fn f32_packing_is_sign_with_zero_positive(bits in 1usize..=300, extra in 0usize..70, seed in any::<u64>()) {
            let dim = bits + extra;
            let mut rng = crate::rng::SplitMix64::new(seed);
            let data: Vec<f32> = (0..3 * dim)
                .map(|_| match rng.next_u64() % 4 { 0 => 0.0, 1 => -0.0, _ => rng.next_gaussian() as f32 })
                .collect();
            let c = PackedCodes::from_f32_rows(&data, dim, bits).unwrap();
            for r in 0..3 {
                for j in 0..bits {
                    prop_assert_eq!(c.bit(r, j), data[r * dim + j] >= 0.0);
                }
                prop_assert_eq!(c.row(r)[c.words_per_row() - 1] & !last_word_mask(bits), 0);
            }
        }
    }
}
