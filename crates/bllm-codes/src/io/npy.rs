//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): float32/float16 embedding matrices
//! in, codes out as `uint64 [rows, words]` or `uint8 [rows, ceil(bits/8)]`.
//!
//! The `uint8` form is byte-identical to `numpy.packbits(bits, axis=1, bitorder="little")`,
//! and viewing the `uint64` form's bytes as `<u1` gives the contract bytes.

use std::path::Path;

use half::f16;

use super::{MAX_DATA_FILE, Reader, read_all, write_atomic};
use crate::{CodesError, FloatMatrix, PackedCodes, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy's default `max_header_size`: longer headers are refused (`numpy.load` refuses them too).
const MAX_HEADER_LEN: usize = 10_000;

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
    let bytes = read_all(path, MAX_DATA_FILE)?;
    let bad = |reason: String| CodesError::format(path, reason);
    let mut r = Reader::new(&bytes, path);
    let magic: [u8; 6] = r.array("the .npy magic")?;
    if &magic != MAGIC {
        return Err(bad("not a .npy file (magic \\x93NUMPY missing)".into()));
    }
    let [major, minor]: [u8; 2] = r.array("the .npy version")?;
    // Exactly the versions numpy writes and reads (`numpy.lib.format`): 1.0, 2.0, 3.0.
    let header_len = match (major, minor) {
        (1, 0) => u16::from_le_bytes(r.array("the header length")?) as usize,
        (2 | 3, 0) => r.u32("the header length")? as usize,
        _ => {
            return Err(bad(format!(
                "unsupported .npy version {major}.{minor}; expected 1.0, 2.0 or 3.0"
            )));
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length is {header_len} bytes, more than numpy's limit of {MAX_HEADER_LEN}"
        )));
    }
    let header = r.take(header_len, "the header")?;
    // Version 3.0 headers are UTF-8; 1.0 and 2.0 are Latin-1, where any byte is a character
    // (the parser works on bytes, and only ASCII can be part of a valid header outside strings).
    if major == 3 && std::str::from_utf8(header).is_err() {
        return Err(bad("a version 3.0 header must be UTF-8".into()));
    }
    let h = parse_header(header, major < 3).map_err(|e| {
        bad(format!(
            "malformed header {:?}: {e}",
            String::from_utf8_lossy(header)
        ))
    })?;
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

/// Writes a row-major `uint8` matrix as `.npy`, atomically.
pub fn write_u8_npy(path: &Path, rows: usize, cols: usize, data: &[u8]) -> Result<()> {
    write_matrix(path, Dtype::U8, rows, cols, data, |b| [b])
}

/// Reads a 2-D `uint8` `.npy` matrix as `(rows, cols, row-major bytes)`.
pub fn read_u8_npy(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let m = read_npy(path)?;
    if m.dtype != Dtype::U8 {
        return Err(CodesError::format(
            path,
            format!("dtype is {}, expected uint8", m.dtype.name()),
        ));
    }
    Ok((m.rows, m.cols, m.bytes))
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
/// `fortran_order` and `shape`, with the Python literal syntax numpy's `ast.literal_eval`
/// accepts in a header that numpy itself could have written: whitespace (space, tab, form feed,
/// newlines) and `#` comments between tokens, `'` or `"` strings with an optional `u`/`r`
/// prefix (a backslash escape is refused, not interpreted), decimal integers with `_`
/// separators and one optional sign, a trailing comma. `py2_long` (versions 1.0 and 2.0) also
/// accepts Python 2's `L` suffix on integers, as numpy's `_filter_header` does.
fn parse_header(s: &[u8], py2_long: bool) -> std::result::Result<Header, String> {
    let mut p = Parser { s, i: 0, py2_long };
    p.ws();
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
    py2_long: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips whitespace and comments (Python's tokenizer: space, tab, form feed; newlines
    /// inside brackets; `#` to the end of the line).
    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\x0c' | b'\n' | b'\r' => self.i += 1,
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n' && c != b'\r') {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
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
        if matches!(self.peek(), Some(b'u' | b'U' | b'r' | b'R'))
            && matches!(self.s.get(self.i + 1), Some(b'\'' | b'"'))
        {
            self.i += 1;
        }
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at character {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            match c {
                c if c == q => break,
                b'\\' => return Err(format!("escape sequence at character {}", self.i)),
                b'\n' | b'\r' => return Err(format!("unterminated string at character {start}")),
                _ => self.i += 1,
            }
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.expect(q)?;
        Ok(out)
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word)
                && !self
                    .s
                    .get(self.i + word.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at character {}", self.i))
    }

    /// A Python integer literal with an optional sign: `0+` or `[1-9]` digits, `_` allowed
    /// between digits. Negative values are refused (they are not dimensions).
    fn dimension(&mut self) -> std::result::Result<usize, String> {
        let at = self.i;
        let negative = match self.peek() {
            Some(b'-') => true,
            Some(b'+') => false,
            _ => {
                return self.unsigned(at);
            }
        };
        self.i += 1;
        self.ws();
        let n = self.unsigned(at)?;
        if negative && n != 0 {
            return Err(format!("negative dimension at character {at}"));
        }
        Ok(n)
    }

    fn unsigned(&mut self, at: usize) -> std::result::Result<usize, String> {
        let bad = || format!("expected a dimension at character {at}");
        let mut digits = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                digits.push(c as char);
                self.i += 1;
            } else if c == b'_'
                && !digits.is_empty()
                && self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit)
            {
                self.i += 1;
            } else {
                break;
            }
        }
        // Python 3 has no leading zeros on decimal integers, except in zero itself.
        if digits.is_empty() || (digits.starts_with('0') && digits.bytes().any(|d| d != b'0')) {
            return Err(bad());
        }
        if self.py2_long {
            // numpy's `_filter_header` drops a name token `L` right after a number token.
            let mut j = self.i;
            while matches!(self.s.get(j), Some(b' ' | b'\t' | b'\x0c')) {
                j += 1;
            }
            let after = self.s.get(j + 1);
            if self.s.get(j) == Some(&b'L')
                && !after.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                self.i = j + 1;
            }
        }
        // An identifier character right after the number is a syntax error in Python.
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(bad());
        }
        digits.parse().map_err(|_| bad())
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            // Reached at the start or after a comma: `()` and `(n,)` are tuples.
            if self.eat(b')') {
                return Ok(out);
            }
            out.push(self.dimension()?);
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                if out.len() == 1 {
                    return Err("shape (n) is an integer, expected a tuple (n,)".into());
                }
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
        let h = parse_header(&b[10..b.len() - 15], false).unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("|u1", false, vec![3, 5])
        );
    }

    fn parse(s: &str) -> std::result::Result<Header, String> {
        parse_header(s.as_bytes(), true)
    }

    #[test]
    fn header_variants() {
        let h = parse("{\"descr\": \"<f2\", \"shape\": (7,), \"fortran_order\": True}").unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("<f2", true, vec![7])
        );
        assert_eq!(
            parse("{'descr':'<f4','fortran_order':False,'shape':()}")
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
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// What Python's `ast.literal_eval` (numpy's header parser) accepts and refuses, each
    /// checked against numpy 2.4 by the fuzz suite (`tests/tests/fuzz.rs`).
    #[test]
    fn header_syntax_follows_python_literals() {
        let shape = |t: &str| {
            parse(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {t}}}"
            ))
            .map(|h| h.shape)
        };
        assert_eq!(shape("(2, 3)"), Ok(vec![2, 3]));
        assert_eq!(shape("(+2,3,)"), Ok(vec![2, 3]));
        assert_eq!(shape("(- 0, 1_0)"), Ok(vec![0, 10]));
        assert_eq!(shape("(2L, 3 L)"), Ok(vec![2, 3]));
        assert_eq!(shape("(00, 3)"), Ok(vec![0, 3]));
        assert_eq!(shape("(2, # rows\n 3)"), Ok(vec![2, 3]));
        for bad in [
            "(02, 3)",
            "(-2, 3)",
            "(2_, 3)",
            "(1__0, 3)",
            "(2l, 3)",
            "(2x, 3)",
            "(2)",
            "(2.0, 3)",
            "(+-2, 3)",
            "[2, 3]",
        ] {
            assert!(shape(bad).is_err(), "{bad}");
        }
        // Python 3 headers (version 3.0) have no `L` suffix.
        let v3 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3)}";
        assert!(parse_header(v3.as_bytes(), false).is_err());
        let h =
            parse("{u'descr': r'<f4', 'fortran_order': False, 'shape': (1, 1), } # pad\n").unwrap();
        assert_eq!(h.descr, "<f4");
        for bad in [
            "{b'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}",
            "{'descr': '<\\x66', 'fortran_order': False, 'shape': (1, 1)}",
            "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (1, 1)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}\x0b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// Defect 9 of issue 15: numpy reads exactly versions 1.0, 2.0 and 3.0.
    #[test]
    fn only_numpy_versions_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let m = FloatMatrix::new(1, 2, vec![1.0, 2.0]).unwrap();
        let good = dir.path().join("v.npy");
        write_f32_npy(&good, &m).unwrap();
        let v1 = std::fs::read(&good).unwrap();
        // The same array with a 4-byte header length (versions 2.0 and 3.0).
        let mut v2 = v1[..6].to_vec();
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&(u32::from(u16::from_le_bytes([v1[8], v1[9]]))).to_le_bytes());
        v2.extend_from_slice(&v1[10..]);
        for (major, minor, base, ok) in [
            (1, 0, &v1, true),
            (2, 0, &v2, true),
            (3, 0, &v2, true),
            (1, 1, &v1, false),
            (2, 1, &v2, false),
            (3, 7, &v2, false),
            (0, 0, &v1, false),
            (4, 0, &v2, false),
        ] {
            let mut b = base.clone();
            b[6] = major;
            b[7] = minor;
            let p = write_raw(dir.path(), "v.npy", &b);
            match read_float_matrix(&p) {
                Ok(got) => assert!(ok && got == m, "{major}.{minor} loaded"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok, "{major}.{minor}: {e}");
                    assert!(
                        e.contains("v.npy")
                            && e.contains(&format!("unsupported .npy version {major}.{minor}")),
                        "{e}"
                    );
                }
            }
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
