//! The `.bcodes` codes file: a 48-byte little-endian header followed by the contract bytes.
//!
//! | offset | type     | field                                             |
//! |-------:|----------|---------------------------------------------------|
//! | 0      | [u8; 8]  | magic `BLLMCODE`                                  |
//! | 8      | u32      | format version (1)                                |
//! | 12     | u32      | header length in bytes (48)                       |
//! | 16     | u64      | bits per row                                      |
//! | 24     | u64      | rows                                              |
//! | 32     | u32      | words per row, `ceil(bits / 64)`                  |
//! | 36     | u32      | flags (0; reserved)                               |
//! | 40     | u64      | XXH3-64 (seed 0) of the payload bytes             |
//! | 48     | u64 × …  | payload: rows × words per row, little-endian u64  |
//!
//! Because the header is 48 bytes, the payload starts 16-byte aligned and can be memory-mapped.

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::{MAX_DATA_FILE, Reader, read_all, write_atomic};
use crate::{CodesError, PackedCodes, Result, words_per_row};

/// Magic bytes at the start of every `.bcodes` file.
pub const BCODES_MAGIC: [u8; 8] = *b"BLLMCODE";
/// Current `.bcodes` format version.
pub const BCODES_VERSION: u32 = 1;
/// Header length of format version 1.
pub const BCODES_HEADER_LEN: usize = 48;

/// XXH3-64 (seed 0) of the codes' contract bytes, the checksum stored in headers and manifests.
pub fn payload_checksum(codes: &PackedCodes) -> u64 {
    xxh3_64(&codes.to_le_bytes())
}

/// Serialises codes to `.bcodes` bytes.
fn encode(codes: &PackedCodes) -> Vec<u8> {
    let payload = codes.to_le_bytes();
    let mut out = Vec::with_capacity(BCODES_HEADER_LEN + payload.len());
    out.extend_from_slice(&BCODES_MAGIC);
    out.extend_from_slice(&BCODES_VERSION.to_le_bytes());
    out.extend_from_slice(&(BCODES_HEADER_LEN as u32).to_le_bytes());
    out.extend_from_slice(&(codes.bits() as u64).to_le_bytes());
    out.extend_from_slice(&(codes.rows() as u64).to_le_bytes());
    out.extend_from_slice(&(codes.words_per_row() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Writes codes to a `.bcodes` file atomically.
pub fn write_bcodes(path: &Path, codes: &PackedCodes) -> Result<()> {
    write_atomic(path, &encode(codes))
}

/// Reads and fully validates a `.bcodes` file: magic, version, header length, bits, words per
/// row, reserved flags, exact payload length, checksum, and zero unused high bits.
pub fn read_bcodes(path: &Path) -> Result<PackedCodes> {
    let bytes = read_all(path, MAX_DATA_FILE)?;
    let bad = |reason: String| CodesError::format(path, reason);
    let mut r = Reader::new(&bytes, path);
    let magic: [u8; 8] = r.array("the magic")?;
    if magic != BCODES_MAGIC {
        return Err(bad(format!(
            "not a .bcodes file: magic is {magic:02x?}, expected \"BLLMCODE\""
        )));
    }
    let version = r.u32("the format version")?;
    if version != BCODES_VERSION {
        return Err(bad(format!(
            "unsupported .bcodes format version {version}; this build reads version {BCODES_VERSION}"
        )));
    }
    let header_len = r.u32("the header length")? as usize;
    if header_len != BCODES_HEADER_LEN {
        return Err(bad(format!(
            "header length is {header_len}, expected {BCODES_HEADER_LEN} for version {BCODES_VERSION}"
        )));
    }
    let bits = r.u64("bits")?;
    let rows = r.u64("rows")?;
    let wpr = r.u32("words per row")? as usize;
    let flags = r.u32("flags")?;
    let checksum = r.u64("the checksum")?;
    if bits == 0 || bits > u64::from(u32::MAX) {
        return Err(bad(format!("bits is {bits}, expected 1..={}", u32::MAX)));
    }
    let bits = bits as usize;
    if wpr != words_per_row(bits) {
        return Err(bad(format!(
            "words per row is {wpr}, but {bits} bits need {}",
            words_per_row(bits)
        )));
    }
    if flags != 0 {
        return Err(bad(format!("reserved flags are {flags:#x}, expected 0")));
    }
    let payload = r.rest();
    let expected = usize::try_from(rows)
        .ok()
        .and_then(|r| r.checked_mul(wpr * 8))
        .ok_or_else(|| bad(format!("{rows} rows × {wpr} words does not fit in memory")))?;
    if payload.len() != expected {
        return Err(bad(format!(
            "payload is {} bytes, expected {expected} ({rows} rows × {wpr} words × 8): the file is {}",
            payload.len(),
            if payload.len() < expected {
                "truncated"
            } else {
                "followed by extra bytes"
            }
        )));
    }
    let actual = xxh3_64(payload);
    if actual != checksum {
        return Err(bad(format!(
            "payload checksum mismatch: header says {checksum:016x}, content hashes to {actual:016x} (corrupt file)"
        )));
    }
    PackedCodes::from_le_bytes(bits, rows as usize, payload).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PackedCodes {
        PackedCodes::from_bools(
            &[
                true, false, true, true, false, false, true, false, true, true,
            ],
            5,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bcodes");
        let c = sample();
        write_bcodes(&p, &c).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 48 + 16);
        assert_eq!(&bytes[..8], b"BLLMCODE");
        assert_eq!(bytes[48], 0b01101);
        assert_eq!(read_bcodes(&p).unwrap(), c);
    }

    /// Writes `sample()` with one edit applied to the bytes, and returns the read error.
    fn corrupt(edit: impl FnOnce(&mut Vec<u8>)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bcodes");
        let mut bytes = encode(&sample());
        edit(&mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_bcodes(&p).unwrap_err().to_string();
        assert!(e.contains("c.bcodes"), "error must name the file: {e}");
        e
    }

    fn patch_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        assert!(corrupt(|b| b.truncate(20)).contains("truncated"));
        assert!(corrupt(|b| b.truncate(60)).contains("truncated"));
        assert!(corrupt(|b| b.push(0)).contains("extra bytes"));
        assert!(corrupt(|b| b[0] = b'X').contains("magic"));
        assert!(corrupt(|b| b[8] = 9).contains("version 9"));
        assert!(corrupt(|b| b[12] = 40).contains("header length"));
        assert!(corrupt(|b| patch_u64(b, 16, 0)).contains("bits is 0"));
        assert!(corrupt(|b| patch_u64(b, 16, 65)).contains("words per row"));
        assert!(corrupt(|b| patch_u64(b, 24, 3)).contains("expected 24"));
        assert!(corrupt(|b| b[36] = 1).contains("flags"));
        assert!(corrupt(|b| b[49] ^= 1).contains("checksum"));
        // A stray bit above `bits` with a matching checksum is still rejected.
        let e = corrupt(|b| {
            b[48] |= 0x80;
            let sum = xxh3_64(&b[48..]);
            patch_u64(b, 40, sum);
        });
        assert!(e.contains("unused high bits"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_bcodes(&dir.path().join("nope.bcodes"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.bcodes"));
    }
}
