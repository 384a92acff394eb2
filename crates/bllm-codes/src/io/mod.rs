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
    BIT_SEMANTICS, CODES_FILE_NAME, MANIFEST_FILE_NAME, Manifest, ManifestInfo, SOURCE_DTYPES,
    SYNTHETIC_SOURCE_PREFIX, SourceInfo, read_codes_dir, sha256_file, write_codes_dir,
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

/// The largest JSON or TOML file a reader accepts (manifests, encoder descriptions, recipes).
pub const MAX_TEXT_FILE: u64 = 64 << 20;
/// The largest binary data file read whole into memory (`.bcodes`, `.npy`, FAISS, `.fvecs`,
/// `.safetensors`): a bound on what a regular file may make us allocate, far above any real
/// input. Below it, the allocation itself is fallible (an error, never an abort).
pub const MAX_DATA_FILE: u64 = 256 << 30;

fn not_regular() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "is not a regular file (a device, FIFO, socket or directory); bllm reads only regular files",
    )
}

fn too_large(len: u64, max_bytes: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("is {len} bytes, more than the {max_bytes} bytes this reader accepts"),
    )
}

/// Opens `path` for reading only if it is a regular file of at most `max_bytes`, and returns
/// it with its length. `fs::metadata` (which follows symlinks and never opens, so a FIFO cannot
/// block) is checked before opening, and the open file is checked again (`fstat`), so a file
/// swapped in between is caught too.
pub fn open_regular(path: &Path, max_bytes: u64) -> std::io::Result<(fs::File, u64)> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes));
    }
    let file = fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes));
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max_bytes`: devices, FIFOs, sockets and directories
/// are refused without blocking, the buffer is sized by the file's length (allocation failure
/// is an error), and a file that grows while being read is refused rather than read on.
pub fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_regular(path, max_bytes)?;
    let cap = usize::try_from(len).map_err(|_| too_large(len, usize::MAX as u64))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(cap).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {len} bytes to read it"),
        )
    })?;
    file.take(len.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("grew while being read (it was {len} bytes)"),
        ));
    }
    Ok(buf)
}

/// Reads a whole regular file of at most `max_bytes` ([`read_regular`]), naming it in the
/// error.
pub(crate) fn read_all(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    read_regular(path, max_bytes).map_err(|e| CodesError::io(path, e))
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

    /// Runs `f` on a thread and fails the test if it does not return within 10 s (a FIFO
    /// opened for reading blocks forever).
    pub(crate) fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the reader hung (more than 10 s)")
    }

    /// `/dev/zero`, `/dev/urandom`, a FIFO and a directory, each also behind a symlink named
    /// like a data file.
    #[cfg(unix)]
    pub(crate) fn non_regular_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "mkfifo failed");
        let sub = dir.join("subdir");
        fs::create_dir_all(&sub).unwrap();
        let mut out = Vec::new();
        for (i, t) in ["/dev/zero", "/dev/urandom"]
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([fifo, sub])
            .enumerate()
        {
            let link = dir.join(format!("link{i}.data"));
            std::os::unix::fs::symlink(&t, &link).unwrap();
            out.extend([t, link]);
        }
        out
    }

    /// Defects 4 and 5 of issue 15: devices and FIFOs (direct or through a symlink) are refused
    /// at once, by every reader of this crate, naming the file.
    #[cfg(unix)]
    #[test]
    fn non_regular_files_are_refused_by_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        type Reader = fn(&Path) -> std::result::Result<(), String>;
        let readers: [(&str, Reader); 6] = [
            ("read_regular", |p| {
                read_regular(p, u64::MAX)
                    .map(drop)
                    .map_err(|e| format!("{}: {e}", p.display()))
            }),
            ("read_bcodes", |p| {
                read_bcodes(p).map(drop).map_err(|e| e.to_string())
            }),
            ("read_npy", |p| {
                npy::read_npy(p).map(drop).map_err(|e| e.to_string())
            }),
            ("read_faiss_binary_flat", |p| {
                read_faiss_binary_flat(p)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
            ("sha256_file", |p| {
                sha256_file(p).map(drop).map_err(|e| e.to_string())
            }),
            ("read_codes_npy", |p| {
                npy::read_codes_npy(p, None)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        ];
        for path in non_regular_files(dir.path()) {
            for (name, read) in readers {
                let p = path.clone();
                let e = within_10s(move || read(&p)).expect_err(name);
                assert!(
                    e.contains(&path.display().to_string()) && e.contains("not a regular file"),
                    "{name}: {e}"
                );
            }
        }
    }

    #[test]
    fn reads_are_capped_and_sized_by_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("four.bin");
        fs::write(&p, b"abcd").unwrap();
        assert_eq!(read_regular(&p, 4).unwrap(), b"abcd");
        let e = read_regular(&p, 3).unwrap_err().to_string();
        assert!(e.contains("4 bytes") && e.contains("3 bytes"), "{e}");
        let e = read_all(&p, 3).unwrap_err().to_string();
        assert!(e.contains("four.bin"), "{e}");
        let e = read_regular(&dir.path().join("none"), 3).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
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
