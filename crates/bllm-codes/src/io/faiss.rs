//! FAISS `IndexBinaryFlat` files, as written by `faiss.write_index_binary` and read by
//! `faiss.read_index_binary`.
//!
//! Layout (little-endian): fourcc `"IBxF"`, `i32 d` (bits), `i32 code_size` (d / 8),
//! `i64 ntotal`, `u8 is_trained`, `i32 metric_type` (1 = METRIC_L2, FAISS's default for binary
//! indexes), `u64` byte count, then `ntotal × code_size` code bytes. FAISS stores each code as
//! `d / 8` bytes with bit `j` in bit `j % 8` of byte `j / 8`, which is exactly the prefix of our
//! little-endian words — so the contract layout converts without reordering bits, provided
//! `d` is a multiple of 8 (FAISS requires it).

use std::path::Path;

use super::{MAX_DATA_FILE, Reader, read_all, write_atomic};
use crate::{CodesError, PackedCodes, Result};

const FOURCC: &[u8; 4] = b"IBxF";
const METRIC_L2: i32 = 1;

/// Writes codes as a FAISS `IndexBinaryFlat` file, atomically. `bits` must be a multiple of 8.
pub fn write_faiss_binary_flat(path: &Path, codes: &PackedCodes) -> Result<()> {
    let bits = codes.bits();
    if bits % 8 != 0 {
        return Err(CodesError::InvalidArgument(format!(
            "FAISS binary indexes need bits to be a multiple of 8; these codes have {bits}"
        )));
    }
    let d = i32::try_from(bits)
        .map_err(|_| CodesError::InvalidArgument(format!("{bits} bits is too many for FAISS")))?;
    let payload = codes.to_packbits_u8();
    let mut out = Vec::with_capacity(33 + payload.len());
    out.extend_from_slice(FOURCC);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&(d / 8).to_le_bytes());
    out.extend_from_slice(&(codes.rows() as i64).to_le_bytes());
    out.push(1);
    out.extend_from_slice(&METRIC_L2.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    write_atomic(path, &out)
}

/// Reads a FAISS `IndexBinaryFlat` file into codes of `d` bits, validating every field.
pub fn read_faiss_binary_flat(path: &Path) -> Result<PackedCodes> {
    let bytes = read_all(path, MAX_DATA_FILE)?;
    let bad = |reason: String| CodesError::format(path, reason);
    let mut r = Reader::new(&bytes, path);
    let fourcc: [u8; 4] = r.array("the index type")?;
    if &fourcc != FOURCC {
        return Err(bad(format!(
            "index type is {:?}, expected \"IBxF\" (IndexBinaryFlat)",
            String::from_utf8_lossy(&fourcc)
        )));
    }
    let d = r.i32("d")?;
    let code_size = r.i32("code_size")?;
    let ntotal = r.i64("ntotal")?;
    let trained: [u8; 1] = r.array("is_trained")?;
    let metric = r.i32("metric_type")?;
    let n = r.u64("the code byte count")?;
    if d <= 0 || d % 8 != 0 {
        return Err(bad(format!("d is {d}, expected a positive multiple of 8")));
    }
    if code_size != d / 8 {
        return Err(bad(format!(
            "code_size is {code_size}, expected d / 8 = {}",
            d / 8
        )));
    }
    if ntotal < 0 {
        return Err(bad(format!("ntotal is {ntotal}, expected >= 0")));
    }
    if trained[0] > 1 {
        return Err(bad(format!(
            "is_trained is {}, expected 0 or 1",
            trained[0]
        )));
    }
    if metric != METRIC_L2 {
        return Err(bad(format!(
            "metric_type is {metric}, expected {METRIC_L2} (METRIC_L2, FAISS's binary default)"
        )));
    }
    let expected = (ntotal as u64).checked_mul(code_size as u64);
    if expected != Some(n) {
        return Err(bad(format!(
            "code byte count is {n}, expected ntotal × code_size = {ntotal} × {code_size}"
        )));
    }
    let payload = r.take(n as usize, "the codes")?;
    if !r.rest().is_empty() {
        return Err(bad("extra bytes after the codes".into()));
    }
    PackedCodes::from_packbits_u8(d as usize, payload).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bytes_written_by_faiss() {
        // faiss 1.15.1: IndexBinaryFlat(16); add([[1,2],[3,4],[255,0]]); serialize_index_binary.
        let faiss_hex =
            "49427846100000000200000003000000000000000101000000060000000000000001020304ff00";
        let want: Vec<u8> = (0..faiss_hex.len() / 2)
            .map(|i| u8::from_str_radix(&faiss_hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let codes = PackedCodes::from_packbits_u8(16, &[1, 2, 3, 4, 255, 0]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.faiss");
        write_faiss_binary_flat(&p, &codes).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        assert_eq!(read_faiss_binary_flat(&p).unwrap(), codes);
    }

    #[test]
    fn rejects_unsupported_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.faiss");
        assert!(write_faiss_binary_flat(&p, &PackedCodes::zeros(1, 12).unwrap()).is_err());
        write_faiss_binary_flat(&p, &PackedCodes::zeros(2, 16).unwrap()).unwrap();
        let good = std::fs::read(&p).unwrap();
        let check = |edit: &dyn Fn(&mut Vec<u8>), needle: &str| {
            let mut b = good.clone();
            edit(&mut b);
            std::fs::write(&p, &b).unwrap();
            let e = read_faiss_binary_flat(&p).unwrap_err().to_string();
            assert!(e.contains("i.faiss") && e.contains(needle), "{needle}: {e}");
        };
        check(&|b| b[0] = b'X', "IndexBinaryFlat");
        check(&|b| b[4] = 12, "multiple of 8");
        check(&|b| b[8] = 3, "code_size");
        check(&|b| b[19] = 0x80, "ntotal");
        check(&|b| b[20] = 2, "is_trained");
        check(&|b| b[21] = 2, "metric_type");
        check(&|b| b[25] = 5, "byte count");
        check(&|b| b.truncate(b.len() - 1), "truncated");
        check(&|b| b.push(0), "extra bytes");
    }
}
