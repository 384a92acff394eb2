//! File formats: the `.bcodes` codes file with its `manifest.json`, `.npy` arrays and FAISS
//! `IndexBinaryFlat` files.
//!
//! Every reader validates what it reads and fails with [`CodesError::Format`](crate::CodesError)
//! naming the file and what is wrong; every writer is atomic (temp file in the same directory,
//! fsync, rename), so a crash never leaves a half-written file under the final name.

mod bcodes;
mod faiss;
mod manifest;
pub mod npy;

pub use bcodes::{
    BCODES_HEADER_LEN, BCODES_MAGIC, BCODES_VERSION, payload_checksum, read_bcodes, write_bcodes,
};
pub use faiss::{read_faiss_binary_flat, write_faiss_binary_flat};
pub use manifest::{
    CODES_FILE_NAME, MANIFEST_FILE_NAME, Manifest, ManifestInfo, SourceInfo, read_codes_dir,
    sha256_file, write_codes_dir,
};

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CodesError, Result};

/// Writes `bytes` to `path` atomically: a temporary file beside it is written, flushed to disk
/// and renamed over `path`. On failure the temporary file is removed and `path` is untouched.
///
/// If `path` exists and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO), the bytes
/// are written to it directly: renaming over a device would replace it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| CodesError::io(path, e));
    }
    let name = path
        .file_name()
        .ok_or_else(|| CodesError::io(path, std::io::Error::other("not a file path")))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CodesError::io(path, e));
    }
    Ok(())
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| CodesError::io(path, e))
}

/// Little-endian cursor over a byte slice that reports truncation against a file path.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], path: &'a Path) -> Self {
        Self {
            bytes,
            pos: 0,
            path,
        }
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(CodesError::format(
                self.path,
                format!(
                    "truncated: needed {n} bytes for {what} at offset {}, file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        s
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A missing directory is an error that names the target and leaves nothing behind.
        let bad = dir.path().join("missing").join("b.bin");
        let e = write_atomic(&bad, b"x").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_written_in_place_not_replaced() {
        let null = Path::new("/dev/null");
        write_atomic(null, b"discarded").unwrap();
        assert!(
            !fs::metadata(null).unwrap().is_file(),
            "/dev/null must stay a device"
        );
    }
}
