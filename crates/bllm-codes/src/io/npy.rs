//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): float32/float16 embedding matrices
//! in, codes out as `uint64 [rows, words]` or `uint8 [rows, ceil(bits/8)]`.
//!
//! The `uint8` form is byte-identical to `numpy.packbits(bits, axis=1, bitorder="little")`,
//! and viewing the `uint64` form's bytes as `<u1` gives the contract bytes.

use std::path::Path;

use half::f16;

use super::{Reader, read_all, write_atomic};
use crate::{CodesError, FloatMatrix, PackedCodes, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element types this crate reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `<f4`
    F32,
    /// `<f2`
    F16,
    /// `|u1`
    U8,
    /// `<u8`
    U64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::F16 => "<f2",
            Self::U8 => "|u1",
            Self::U64 => "<u8",
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::U8 => 1,
            Self::U64 => 8,
        }
    }

    /// NumPy's name for the type (`float32`, …), used in messages and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::U8 => "uint8",
            Self::U64 => "uint64",
        }
    }

    fn parse(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(Self::F32),
            "<f2" => Some(Self::F16),
            "|u1" | "<u1" | "u1" => Some(Self::U8),
            "<u8" => Some(Self::U64),
            _ => None,
        }
    }
}

/// A 2-D array read from a `.npy` file, in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyMatrix {
    /// Element type.
    pub dtype: Dtype,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Little-endian element bytes, row-major.
    pub bytes: Vec<u8>,
}

impl NpyMatrix {
    /// The elements as `f32` (float32 as is, float16 widened exactly).
    pub fn to_f32(&self, path: &Path) -> Result<Vec<f32>> {
        match self.dtype {
            Dtype::F32 => Ok(self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(self
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            other => Err(CodesError::format(
                path,
                format!("dtype is {}, expected float32 or float16", other.name()),
            )),
        }
    }
}

/// Reads a 2-D `.npy` array of a supported dtype. Fortran-ordered arrays are transposed into
/// row-major order. Everything is checked: magic, version, header syntax, dtype, shape and the
/// exact data length.
pub fn read_npy(path: &Path) -> Result<NpyMatrix> {
    let bytes = read_all(path)?;
    let bad = |reason: String| CodesError::format(path, reason);
    let mut r = Reader::new(&bytes, path);
    let magic: [u8; 6] = r.array("the .npy magic")?;
    if &magic != MAGIC {
        return Err(bad("not a .npy file (magic \\x93NUMPY missing)".into()));
    }
    let [major, minor]: [u8; 2] = r.array("the .npy version")?;
    let header_len = match major {
        1 => u16::from_le_bytes(r.array("the header length")?) as usize,
        2 | 3 => r.u32("the header length")? as usize,
        _ => return Err(bad(format!("unsupported .npy version {major}.{minor}"))),
    };
    let header = r.take(header_len, "the header")?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not valid text".into()))?;
    let h = parse_header(header).map_err(|e| bad(format!("malformed header {header:?}: {e}")))?;
    let dtype = Dtype::parse(&h.descr).ok_or_else(|| {
        bad(format!(
            "dtype {:?} is not supported; expected '<f4' (float32), '<f2' (float16), '|u1' (uint8) or '<u8' (uint64)",
            h.descr
        ))
    })?;
    let (rows, cols) = match h.shape[..] {
        [r, c] => (r, c),
        _ => {
            return Err(bad(format!(
                "shape is {:?}, expected a 2-D array (rows, columns)",
                h.shape
            )));
        }
    };
    let data = r.rest();
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(format!("shape {:?} is too large", h.shape)))?;
    if data.len() != expected {
        return Err(bad(format!(
            "data is {} bytes after a {}-byte header, expected {expected} for shape ({rows}, {cols}) of {}",
            data.len(),
            r.offset() - data.len(),
            dtype.name()
        )));
    }
    let bytes = if h.fortran_order && rows > 1 && cols > 1 {
        let s = dtype.size();
        let mut out = vec![0u8; expected];
        for c in 0..cols {
            for row in 0..rows {
                let src = (c * rows + row) * s;
                let dst = (row * cols + c) * s;
                out[dst..dst + s].copy_from_slice(&data[src..src + s]);
            }
        }
        out
    } else {
        data.to_vec()
    };
    Ok(NpyMatrix {
        dtype,
        rows,
        cols,
        bytes,
    })
}

/// Reads a float32 or float16 `.npy` matrix (one embedding per row) into a [`FloatMatrix`];
/// NaN or infinite values are errors naming the file, row and column.
pub fn read_float_matrix(path: &Path) -> Result<FloatMatrix> {
    Ok(read_float_matrix_typed(path)?.0)
}

/// [`read_float_matrix`], also returning the element type the file stored.
pub fn read_float_matrix_typed(path: &Path) -> Result<(FloatMatrix, Dtype)> {
    let m = read_npy(path)?;
    let data = m.to_f32(path)?;
    let x = FloatMatrix::new(m.rows, m.cols, data).map_err(|e| match e {
        CodesError::NonFinite {
            row, col, value, ..
        } => CodesError::NonFinite {
            what: path.display().to_string(),
            row,
            col,
            value,
        },
        other => other,
    })?;
    Ok((x, m.dtype))
}

/// Reads codes from a `uint64 [rows, words]` or `uint8 [rows, bytes]` `.npy` file. `bits`
/// defaults to every bit of a row (64 × words or 8 × bytes); unused high bits must be zero.
pub fn read_codes_npy(path: &Path, bits: Option<usize>) -> Result<PackedCodes> {
    let m = read_npy(path)?;
    let bad = |reason: String| CodesError::format(path, reason);
    let (unit, dtype) = match m.dtype {
        Dtype::U64 => (64, m.dtype),
        Dtype::U8 => (8, m.dtype),
        other => {
            return Err(bad(format!(
                "dtype is {}, expected uint64 or uint8 codes",
                other.name()
            )));
        }
    };
    let bits = bits.unwrap_or(m.cols * unit);
    if bits == 0 || bits.div_ceil(unit) != m.cols {
        return Err(bad(format!(
            "{bits} bits need {} {} columns, file has {}",
            bits.div_ceil(unit.max(1)),
            dtype.name(),
            m.cols
        )));
    }
    let result = match dtype {
        Dtype::U64 => PackedCodes::from_le_bytes(bits, m.rows, &m.bytes),
        _ => PackedCodes::from_packbits_u8(bits, &m.bytes),
    };
    result.map_err(|e| bad(e.to_string()))
}

/// Serialises a C-order 2-D array with a version 1.0 header padded to a 64-byte boundary.
fn encode(dtype: Dtype, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}",
        dtype.descr()
    );
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes codes as a `uint64 [rows, words]` `.npy` (the contract bytes), atomically.
pub fn write_codes_npy_u64(path: &Path, codes: &PackedCodes) -> Result<()> {
    let bytes = encode(
        Dtype::U64,
        codes.rows(),
        codes.words_per_row(),
        &codes.to_le_bytes(),
    );
    write_atomic(path, &bytes)
}

/// Writes codes as a `uint8 [rows, ceil(bits/8)]` `.npy`, byte-identical to
/// `numpy.packbits(bits, axis=1, bitorder="little")`, atomically.
pub fn write_codes_npy_u8(path: &Path, codes: &PackedCodes) -> Result<()> {
    let bytes = encode(
        Dtype::U8,
        codes.rows(),
        codes.bytes_per_row(),
        &codes.to_packbits_u8(),
    );
    write_atomic(path, &bytes)
}

/// Writes a row-major matrix of `N`-byte little-endian elements as `.npy`, atomically.
fn write_matrix<T: Copy, const N: usize>(
    path: &Path,
    dtype: Dtype,
    rows: usize,
    cols: usize,
    data: &[T],
    to_le: impl Fn(T) -> [u8; N],
) -> Result<()> {
    if Some(data.len()) != rows.checked_mul(cols) {
        return Err(CodesError::Mismatch(format!(
            "{} values for a {rows} × {cols} matrix",
            data.len()
        )));
    }
    let bytes: Vec<u8> = data.iter().flat_map(|&x| to_le(x)).collect();
    write_atomic(path, &encode(dtype, rows, cols, &bytes))
}

/// Writes a row-major `uint64` matrix as `.npy`, atomically.
pub fn write_u64_npy(path: &Path, rows: usize, cols: usize, data: &[u64]) -> Result<()> {
    write_matrix(path, Dtype::U64, rows, cols, data, u64::to_le_bytes)
}

/// Writes a float32 matrix as `.npy`, atomically.
pub fn write_f32_npy(path: &Path, m: &FloatMatrix) -> Result<()> {
    write_matrix(
        path,
        Dtype::F32,
        m.rows(),
        m.cols(),
        m.as_slice(),
        f32::to_le_bytes,
    )
}

/// Writes a row-major float16 matrix as `.npy`, atomically.
pub fn write_f16_npy(path: &Path, rows: usize, cols: usize, data: &[f16]) -> Result<()> {
    write_matrix(path, Dtype::F16, rows, cols, data, f16::to_le_bytes)
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a `.npy` header: exactly the keys `descr`,
/// `fortran_order` and `shape`.
fn parse_header(s: &str) -> std::result::Result<Header, String> {
    let mut p = Parser {
        s: s.trim_end().as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the dict".into());
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at character {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at character {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.expect(q)?;
        Ok(out)
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at character {}", self.i))
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(out);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            let n = std::str::from_utf8(&self.s[start..self.i])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("expected a dimension at character {start}"))?;
            out.push(n);
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_byte_aligned_and_parses_back() {
        let b = encode(Dtype::U8, 3, 5, &[0; 15]);
        assert_eq!((b.len() - 15) % 64, 0);
        assert_eq!(b[b.len() - 16], b'\n');
        let h = parse_header(std::str::from_utf8(&b[10..b.len() - 15]).unwrap()).unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("|u1", false, vec![3, 5])
        );
    }

    #[test]
    fn header_variants() {
        let h =
            parse_header("{\"descr\": \"<f2\", \"shape\": (7,), \"fortran_order\": True}").unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("<f2", true, vec![7])
        );
        assert_eq!(
            parse_header("{'descr':'<f4','fortran_order':False,'shape':()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        for bad in [
            "",
            "{'descr': '<f4'}",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (x,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
        ] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }

    fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn float_matrices_round_trip_and_fortran_order_is_transposed() {
        let dir = tempfile::tempdir().unwrap();
        let m = FloatMatrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.0]).unwrap();
        let p = dir.path().join("m.npy");
        write_f32_npy(&p, &m).unwrap();
        assert_eq!(read_float_matrix(&p).unwrap(), m);
        let h: Vec<f16> = m.as_slice().iter().map(|&x| f16::from_f32(x)).collect();
        write_f16_npy(&p, 2, 3, &h).unwrap();
        assert_eq!(read_float_matrix(&p).unwrap(), m);
        // Fortran order: column-major data of the same matrix.
        let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        for x in [1.0f32, 4.0, 2.0, 5.0, 3.0, -6.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        let p = write_raw(dir.path(), "f.npy", &b);
        assert_eq!(read_float_matrix(&p).unwrap(), m);
    }

    #[test]
    fn codes_round_trip_in_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let c = PackedCodes::from_bools(
            &[
                true, false, true, false, false, true, true, true, true, false, false, true, true,
                false, true, true, true, true, false, true,
            ],
            10,
        )
        .unwrap();
        let p = dir.path().join("c64.npy");
        write_codes_npy_u64(&p, &c).unwrap();
        assert_eq!(read_codes_npy(&p, Some(10)).unwrap(), c);
        assert!(read_codes_npy(&p, Some(65)).is_err());
        let p = dir.path().join("c8.npy");
        write_codes_npy_u8(&p, &c).unwrap();
        assert_eq!(read_codes_npy(&p, Some(10)).unwrap(), c);
        // With bits defaulting to 16, the codes widen but keep their bits.
        assert_eq!(read_codes_npy(&p, None).unwrap().bits(), 16);
        assert!(read_codes_npy(&p, Some(8)).is_err());
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let m = FloatMatrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let good = dir.path().join("good.npy");
        write_f32_npy(&good, &m).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let check = |name: &str, b: &[u8], needle: &str| {
            let p = write_raw(dir.path(), name, b);
            let e = read_float_matrix(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
        };
        check("trunc.npy", &bytes[..bytes.len() - 1], "expected 16");
        check("long.npy", &[&bytes[..], &[0]].concat(), "expected 16");
        check("short.npy", &bytes[..8], "truncated");
        check("magic.npy", &[b"\x93NUMPX", &bytes[6..]].concat(), "magic");
        let mut v = bytes.clone();
        v[6] = 4;
        check("version.npy", &v, "version 4");
        let swap = |from: &str, to: &str| {
            let s = String::from_utf8_lossy(&bytes[10..bytes.len() - 16]).replace(from, to);
            let mut b = bytes[..8].to_vec();
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            b.extend_from_slice(&bytes[bytes.len() - 16..]);
            b
        };
        check("dtype.npy", &swap("<f4", ">f4"), "not supported");
        check("i8.npy", &swap("<f4", "<i8"), "not supported");
        check("shape.npy", &swap("(2, 2)", "(4,)"), "2-D");
        check("syntax.npy", &swap("False", "Nope"), "malformed header");
        let mut nan = bytes.clone();
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        check("nan.npy", &nan, "row 1, column 1");
        let c = PackedCodes::zeros(2, 16).unwrap();
        let p = dir.path().join("codes.npy");
        write_codes_npy_u8(&p, &c).unwrap();
        let e = read_float_matrix(&p).unwrap_err().to_string();
        assert!(e.contains("uint8"), "{e}");
        let e = read_codes_npy(&good, None).unwrap_err().to_string();
        assert!(e.contains("float32"), "{e}");
    }
}
