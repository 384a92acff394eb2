//! Loaders and manifests.

use std::path::Path;

use bllm_codes::FloatMatrix;
use bllm_codes::io::{MAX_DATA_FILE, MAX_TEXT_FILE, read_regular};
use half::f16;

use crate::{DataError, Result};

/// Loads float embeddings (one per row) by extension: `.npy` (float32/float16, 2-D),
/// `.fvecs` (per vector: little-endian `i32` dimension, then that many `f32`), or
/// `.safetensors` (the tensor `tensor`, or the file's only 2-D F32/F16 tensor when `None`).
/// NaN and infinities are rejected with their row and column.
pub fn load_embeddings(path: &Path, tensor: Option<&str>) -> Result<FloatMatrix> {
    Ok(load_embeddings_typed(path, tensor)?.0)
}

/// [`load_embeddings`], also naming the element type stored in the file (`float32` or
/// `float16`), for manifests.
pub fn load_embeddings_typed(
    path: &Path,
    tensor: Option<&str>,
) -> Result<(FloatMatrix, &'static str)> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (m, dtype) = match ext {
        "npy" => {
            let (m, dtype) = bllm_codes::io::npy::read_float_matrix_typed(path)?;
            (m, dtype.name())
        }
        "fvecs" => (read_fvecs(path)?, "float32"),
        "safetensors" => read_safetensors(path, tensor)?,
        other => {
            return Err(DataError::file(
                path,
                format!(
                    "unknown embedding format {other:?}; expected .npy, .fvecs or .safetensors"
                ),
            ));
        }
    };
    if m.rows() == 0 || m.cols() == 0 {
        return Err(DataError::file(
            path,
            format!("no embeddings ({} × {})", m.rows(), m.cols()),
        ));
    }
    Ok((m, dtype))
}

fn finite(path: &Path, rows: usize, cols: usize, data: Vec<f32>) -> Result<FloatMatrix> {
    FloatMatrix::new(rows, cols, data).map_err(|e| match e {
        bllm_codes::CodesError::NonFinite {
            row, col, value, ..
        } => DataError::file(
            path,
            format!("non-finite value {value} at row {row}, column {col}"),
        ),
        other => other.into(),
    })
}

/// Reads a regular file of at most `max` bytes whole ([`read_regular`]), naming it in the error.
pub(crate) fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_regular(path, max).map_err(|e| DataError::file(path, e.to_string()))
}

fn read_fvecs(path: &Path) -> Result<FloatMatrix> {
    let bytes = read_file(path, MAX_DATA_FILE)?;
    let mut data = Vec::new();
    let (mut pos, mut dim, mut rows) = (0usize, None, 0usize);
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 4) else {
            return Err(DataError::file(
                path,
                format!("truncated dimension header at byte {pos}"),
            ));
        };
        let d = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if d <= 0 {
            return Err(DataError::file(
                path,
                format!("vector {rows} has dimension {d}, expected > 0"),
            ));
        }
        let d = d as usize;
        if dim.is_none() {
            // Sized by the file, never by the declared dimension.
            data.reserve_exact(bytes.len() / (4 + 4 * d) * d);
        }
        if *dim.get_or_insert(d) != d {
            return Err(DataError::file(
                path,
                format!(
                    "vector {rows} has dimension {d}, the first had {}",
                    dim.unwrap_or(0)
                ),
            ));
        }
        let body = bytes.get(pos + 4..pos + 4 + 4 * d).ok_or_else(|| {
            DataError::file(
                path,
                format!("vector {rows} is truncated ({d} floats expected)"),
            )
        })?;
        data.extend(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        pos += 4 + 4 * d;
        rows += 1;
    }
    finite(path, rows, dim.unwrap_or(0), data)
}

/// Writes a matrix as `.fvecs`, atomically.
pub fn write_fvecs(path: &Path, m: &FloatMatrix) -> Result<()> {
    let mut out = Vec::with_capacity(m.rows() * (4 + 4 * m.cols()));
    for r in 0..m.rows() {
        out.extend_from_slice(&(m.cols() as i32).to_le_bytes());
        out.extend(m.row(r).iter().flat_map(|x| x.to_le_bytes()));
    }
    Ok(bllm_codes::io::write_atomic(path, &out)?)
}

fn read_safetensors(path: &Path, tensor: Option<&str>) -> Result<(FloatMatrix, &'static str)> {
    let bytes = read_file(path, MAX_DATA_FILE)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| DataError::file(path, format!("not a safetensors file: {e}")))?;
    let is_float_2d = |t: &safetensors::tensor::TensorView<'_>| {
        t.shape().len() == 2
            && matches!(t.dtype(), safetensors::Dtype::F32 | safetensors::Dtype::F16)
    };
    let (name, view) = match tensor {
        Some(n) => (
            n.to_owned(),
            st.tensor(n).map_err(|_| {
                DataError::file(
                    path,
                    format!("no tensor named {n:?}; it has {:?}", st.names()),
                )
            })?,
        ),
        None => {
            let mut candidates: Vec<_> = st
                .tensors()
                .into_iter()
                .filter(|(_, t)| is_float_2d(t))
                .collect();
            if candidates.len() != 1 {
                return Err(DataError::file(
                    path,
                    format!(
                        "{} 2-D float tensors; name the one to use (tensors: {:?})",
                        candidates.len(),
                        st.names()
                    ),
                ));
            }
            candidates.remove(0)
        }
    };
    if !is_float_2d(&view) {
        return Err(DataError::file(
            path,
            format!(
                "tensor {name:?} is {:?} {:?}, expected a 2-D F32 or F16 matrix",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    let (rows, cols) = (view.shape()[0], view.shape()[1]);
    let dtype = if view.dtype() == safetensors::Dtype::F16 {
        "float16"
    } else {
        "float32"
    };
    let data: Vec<f32> = match view.dtype() {
        safetensors::Dtype::F16 => view
            .data()
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    Ok((finite(path, rows, cols, data)?, dtype))
}

/// Verifies every file listed in `dir/MANIFEST.json` against its sha256, and that the manifest
/// names a source and a licence. Listed names must be plain file names inside `dir`.
pub fn check_manifest(dir: &Path) -> Result<()> {
    let mpath = dir.join("MANIFEST.json");
    let text = read_file(&mpath, MAX_TEXT_FILE)?;
    let m: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| DataError::file(&mpath, format!("invalid JSON: {e}")))?;
    for key in ["source", "licence"] {
        if m[key].as_str().is_none_or(|s| s.is_empty()) {
            return Err(DataError::file(
                &mpath,
                format!("{key} is missing: every bundled file needs its provenance"),
            ));
        }
    }
    let files = m["files"]
        .as_object()
        .ok_or_else(|| DataError::file(&mpath, "files is missing (name → {sha256})"))?;
    for (name, meta) in files {
        let want = meta["sha256"]
            .as_str()
            .ok_or_else(|| DataError::file(&mpath, format!("files.{name}.sha256 is missing")))?;
        let plain = Path::new(name);
        if plain.components().count() != 1 || plain.file_name().is_none() {
            return Err(DataError::file(
                &mpath,
                format!("files.{name:?} must be a plain file name inside the directory"),
            ));
        }
        let got = bllm_codes::io::sha256_file(&dir.join(name))?;
        if got != want {
            return Err(DataError::file(
                &dir.join(name),
                format!(
                    "sha256 is {got}, the manifest says {want}: the file changed or is corrupt"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample() -> FloatMatrix {
        FloatMatrix::new(3, 2, vec![1.0, -2.0, 0.5, 0.25, -1.0, 3.0]).unwrap()
    }

    #[test]
    fn fvecs_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.fvecs");
        write_fvecs(&p, &sample()).unwrap();
        assert_eq!(load_embeddings(&p, None).unwrap(), sample());
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 2]).unwrap();
        assert!(
            load_embeddings(&p, None)
                .unwrap_err()
                .to_string()
                .contains("vector 2 is truncated")
        );
        let mut ragged = good.clone();
        ragged[12] = 3;
        std::fs::write(&p, &ragged).unwrap();
        assert!(load_embeddings(&p, None).is_err());
        let mut nan = good;
        nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&p, &nan).unwrap();
        let e = load_embeddings(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("x.fvecs") && e.contains("row 0, column 1"),
            "{e}"
        );
        assert!(
            load_embeddings(&dir.path().join("x.csv"), None)
                .unwrap_err()
                .to_string()
                .contains(".fvecs")
        );
    }

    #[test]
    fn safetensors_f32_and_f16() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        let f32s: Vec<u8> = sample()
            .as_slice()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = sample()
            .as_slice()
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let views = vec![
            (
                "a".to_owned(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 2], &f32s)
                    .unwrap(),
            ),
            (
                "b".to_owned(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3, 2], &f16s)
                    .unwrap(),
            ),
        ];
        std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
        assert_eq!(load_embeddings(&p, Some("a")).unwrap(), sample());
        assert_eq!(load_embeddings(&p, Some("b")).unwrap(), sample());
        assert!(
            load_embeddings(&p, None)
                .unwrap_err()
                .to_string()
                .contains("name the one")
        );
        assert!(
            load_embeddings(&p, Some("c"))
                .unwrap_err()
                .to_string()
                .contains("no tensor named")
        );
    }

    /// Runs `f` on a thread; fails if it takes more than 10 s (a FIFO would block forever).
    pub(crate) fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the reader hung (more than 10 s)")
    }

    /// Makes `dir/name` a symlink to `/dev/zero`, `/dev/urandom`, a FIFO or (when `dirs`) a
    /// directory in turn, and checks that `read` fails at once naming `name` and saying why.
    #[cfg(unix)]
    pub(crate) fn refuses_non_regular(
        dir: &Path,
        name: &str,
        dirs: bool,
        read: impl Fn(&Path) -> String + Send + Sync + Clone + 'static,
    ) {
        let fifo = dir.join(format!(".fifo-{name}"));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "mkfifo failed");
        let sub = dir.join(format!(".dir-{name}"));
        std::fs::create_dir_all(&sub).unwrap();
        let p = dir.join(name);
        let targets = [
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            &fifo,
            &sub,
        ];
        for target in &targets[..if dirs { 4 } else { 3 }] {
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(target, &p).unwrap();
            let (read, d) = (read.clone(), dir.to_owned());
            let e = within_10s(move || read(&d));
            assert!(
                e.contains(name) && e.contains("not a regular file"),
                "{name} -> {}: {e}",
                target.display()
            );
        }
        std::fs::remove_file(&p).unwrap();
    }

    /// Defects 4 and 5 of issue 15: every embedding format and MANIFEST.json.
    #[cfg(unix)]
    #[test]
    fn non_regular_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["x.npy", "x.fvecs", "x.safetensors"] {
            refuses_non_regular(dir.path(), name, true, move |d| {
                load_embeddings(&d.join(name), None)
                    .unwrap_err()
                    .to_string()
            });
        }
        refuses_non_regular(dir.path(), "MANIFEST.json", true, |d| {
            check_manifest(d).unwrap_err().to_string()
        });
        // A listed file that is a device.
        let m = serde_json::json!({"source": "t", "licence": "CC0", "files": {"d.bin": {"sha256": "00"}}});
        std::fs::write(dir.path().join("MANIFEST.json"), m.to_string()).unwrap();
        refuses_non_regular(dir.path(), "d.bin", true, |d| {
            check_manifest(d).unwrap_err().to_string()
        });
    }

    #[test]
    fn manifest_names_must_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["../d.bin", "/etc/hostname", "a/b", ""] {
            let m = serde_json::json!({"source": "t", "licence": "CC0", "files": {name: {"sha256": "00"}}});
            std::fs::write(dir.path().join("MANIFEST.json"), m.to_string()).unwrap();
            let e = check_manifest(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("MANIFEST.json") && e.contains("plain file name"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn manifests_catch_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.bin"), b"data").unwrap();
        let sum = bllm_codes::io::sha256_file(&dir.path().join("d.bin")).unwrap();
        let m = serde_json::json!({"source": "test", "licence": "CC0", "files": {"d.bin": {"sha256": sum}}});
        std::fs::write(dir.path().join("MANIFEST.json"), m.to_string()).unwrap();
        check_manifest(dir.path()).unwrap();
        std::fs::write(dir.path().join("d.bin"), b"dat4").unwrap();
        let e = check_manifest(dir.path()).unwrap_err().to_string();
        assert!(e.contains("d.bin") && e.contains("changed"), "{e}");
    }
}
