//! [`LinearEncoder`]: `sign((x − μ)·P − t)`, and its on-disk form.

use std::path::Path;

use bllm_codes::{FloatMatrix, PackedCodes};
use serde::{Deserialize, Serialize};

use crate::{HashError, Result};

/// File name of the encoder's tensors (safetensors: `mean` [d], `projection` [d, bits],
/// `thresholds` [bits], all f32).
pub const ENCODER_TENSORS: &str = "encoder.safetensors";
/// File name of the encoder's description (JSON).
pub const ENCODER_JSON: &str = "encoder.json";
/// Every [`LinearEncoder::method`] there is: the baselines (the names of
/// [`Method::ALL`](crate::Method::ALL)) and the retrieval trainer's learned heads,
/// `learned_<objective.kind>`, and the heads trained under a fine-tuned sentence encoder,
/// `finetuned_<objective.kind>`. [`LinearEncoder::save`] and [`LinearEncoder::load`] refuse any
/// other, so a writer cannot produce what the reader refuses.
pub const ENCODER_METHODS: [&str; 10] = [
    "lsh",
    "lsh_centred",
    "pca",
    "itq",
    "sign",
    "sign_raw",
    "learned_listwise",
    "learned_similarity",
    "finetuned_listwise",
    "finetuned_similarity",
];

/// A linear binary encoder: `bit_j(x) = [((x̂ − μ) · P)_j − t_j ≥ 0]`, where `x̂ = x / ‖x‖`
/// when [`normalize`](Self::normalize) is set and `x` otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearEncoder {
    /// Method that produced it (`lsh`, `pca`, `itq`, a learned head's name, …).
    pub method: String,
    /// Input dimension `d`.
    pub dim: usize,
    /// Code length.
    pub bits: usize,
    /// Centring vector μ (`d`).
    pub mean: Vec<f32>,
    /// Projection `P`, row-major `[d, bits]`.
    pub projection: Vec<f32>,
    /// Thresholds `t` (`bits`).
    pub thresholds: Vec<f32>,
    /// L2-normalise each input row before centring (as the trainer did).
    pub normalize: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncoderJson {
    format: String,
    method: String,
    dim: usize,
    bits: usize,
    formula: String,
    tensors: String,
    #[serde(default)]
    normalize: bool,
}

impl LinearEncoder {
    /// Checks the method name ([`ENCODER_METHODS`]) and the shapes.
    pub fn validate(&self) -> Result<()> {
        if !ENCODER_METHODS.contains(&self.method.as_str()) {
            return Err(HashError::InvalidArgument(format!(
                "encoder method {:?} is not one of {ENCODER_METHODS:?}",
                self.method
            )));
        }
        let ok = self.dim > 0
            && self.bits > 0
            && self.mean.len() == self.dim
            && self.projection.len() == self.dim * self.bits
            && self.thresholds.len() == self.bits;
        if ok {
            Ok(())
        } else {
            Err(HashError::InvalidArgument(format!(
                "encoder shapes disagree: dim {}, bits {}, mean {}, projection {}, thresholds {}",
                self.dim,
                self.bits,
                self.mean.len(),
                self.projection.len(),
                self.thresholds.len()
            )))
        }
    }

    /// The projections `(x − μ)·P − t` of every row, row-major `[rows, bits]`.
    pub fn project(&self, x: &FloatMatrix) -> Result<Vec<f32>> {
        if x.cols() != self.dim {
            return Err(HashError::InvalidArgument(format!(
                "input has {} columns, the encoder expects {}",
                x.cols(),
                self.dim
            )));
        }
        let (n, d, k) = (x.rows(), self.dim, self.bits);
        let mut centred = Vec::with_capacity(n * d);
        for (i, r) in x.as_slice().chunks(d).enumerate() {
            let scale = if self.normalize {
                let norm = l2_norm(r);
                if !(norm > 0.0 && norm.is_finite()) {
                    return Err(HashError::InvalidArgument(format!(
                        "row {i} has norm {norm}; this encoder L2-normalises its inputs"
                    )));
                }
                1.0 / norm
            } else {
                1.0
            };
            centred.extend(r.iter().zip(&self.mean).map(|(a, m)| a * scale - m));
        }
        let mut out = vec![0f32; n * k];
        if n > 0 {
            // SAFETY: A is n×d (row stride d), B is d×k (row stride k), C is n×k (row stride k);
            // all three buffers have exactly those sizes.
            unsafe {
                matrixmultiply_sgemm(n, d, k, &centred, &self.projection, &mut out);
            }
        }
        for row in out.chunks_mut(k) {
            for (v, t) in row.iter_mut().zip(&self.thresholds) {
                *v -= t;
            }
        }
        Ok(out)
    }

    /// Codes of every row of `x`.
    pub fn encode(&self, x: &FloatMatrix) -> Result<PackedCodes> {
        let p = self.project(x)?;
        Ok(PackedCodes::from_f32_rows(&p, self.bits, self.bits)?)
    }

    /// Saves `encoder.safetensors` and `encoder.json` into `dir` (created), atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| HashError::File {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        write_f32_safetensors(
            &dir.join(ENCODER_TENSORS),
            &[
                ("mean", &[self.dim], &self.mean),
                ("projection", &[self.dim, self.bits], &self.projection),
                ("thresholds", &[self.bits], &self.thresholds),
            ],
        )?;
        let json = EncoderJson {
            format: "bllm-linear-encoder".into(),
            method: self.method.clone(),
            dim: self.dim,
            bits: self.bits,
            formula: "x <- x / ||x|| if normalize; bit_j = ((x - mean) @ projection - thresholds)_j >= 0; packed LSB-first in little-endian u64 words".into(),
            tensors: ENCODER_TENSORS.into(),
            normalize: self.normalize,
        };
        let mut text = serde_json::to_vec_pretty(&json)
            .map_err(|e| HashError::InvalidArgument(e.to_string()))?;
        text.push(b'\n');
        bllm_codes::io::write_atomic(&dir.join(ENCODER_JSON), &text)?;
        Ok(())
    }

    /// Loads an encoder saved by [`save`](Self::save), checking names, dtypes and shapes.
    pub fn load(dir: &Path) -> Result<Self> {
        let jpath = dir.join(ENCODER_JSON);
        let bad = |p: &Path, reason: String| HashError::File {
            path: p.to_owned(),
            reason,
        };
        let read =
            |p: &Path, max| bllm_codes::io::read_regular(p, max).map_err(|e| bad(p, e.to_string()));
        let text = read(&jpath, bllm_codes::io::MAX_TEXT_FILE)?;
        let j: EncoderJson = serde_json::from_slice(&text)
            .map_err(|e| bad(&jpath, format!("invalid encoder description: {e}")))?;
        if j.format != "bllm-linear-encoder" {
            return Err(bad(
                &jpath,
                format!("format is {:?}, expected \"bllm-linear-encoder\"", j.format),
            ));
        }
        let name = Path::new(&j.tensors);
        if name.components().count() != 1 || name.file_name().is_none() {
            return Err(bad(
                &jpath,
                format!(
                    "tensors {:?} must be a plain file name inside the encoder directory",
                    j.tensors
                ),
            ));
        }
        if !ENCODER_METHODS.contains(&j.method.as_str()) {
            return Err(bad(
                &jpath,
                format!(
                    "method is {:?}, expected one of {ENCODER_METHODS:?}",
                    j.method
                ),
            ));
        }
        for (key, v) in [("dim", j.dim), ("bits", j.bits)] {
            if v == 0 {
                return Err(bad(&jpath, format!("{key} is 0, expected at least 1")));
            }
        }
        let tpath = dir.join(name);
        let raw = read(&tpath, bllm_codes::io::MAX_DATA_FILE)?;
        let st =
            safetensors::SafeTensors::deserialize(&raw).map_err(|e| bad(&tpath, e.to_string()))?;
        let get = |name: &str, shape: &[usize]| f32_tensor(&st, &tpath, name, shape);
        let enc = Self {
            method: j.method,
            dim: j.dim,
            bits: j.bits,
            mean: get("mean", &[j.dim])?,
            projection: get("projection", &[j.dim, j.bits])?,
            thresholds: get("thresholds", &[j.bits])?,
            normalize: j.normalize,
        };
        if let Some(v) = enc
            .mean
            .iter()
            .chain(&enc.projection)
            .chain(&enc.thresholds)
            .find(|v| !v.is_finite())
        {
            return Err(bad(&tpath, format!("non-finite value {v} in the encoder")));
        }
        enc.validate()?;
        Ok(enc)
    }
}

/// The Euclidean norm of `r`, accumulated in f64 and rounded to f32 (the normalisation every
/// part of the project uses, so trainer and encoder agree bit for bit).
pub fn l2_norm(r: &[f32]) -> f32 {
    r.iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .sum::<f64>()
        .sqrt() as f32
}

/// Every row of `x` divided by its [`l2_norm`] (`x · (1 / ‖x‖)` element-wise, as
/// [`LinearEncoder::project`] does); a zero or non-finite norm is an error naming the row.
pub fn normalize_rows(x: &FloatMatrix) -> Result<FloatMatrix> {
    let d = x.cols();
    let mut out = Vec::with_capacity(x.rows() * d);
    for (i, r) in x.as_slice().chunks(d.max(1)).enumerate() {
        let norm = l2_norm(r);
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(HashError::InvalidArgument(format!(
                "row {i} has norm {norm} and cannot be L2-normalised"
            )));
        }
        let scale = 1.0 / norm;
        out.extend(r.iter().map(|a| a * scale));
    }
    Ok(FloatMatrix::new(x.rows(), d, out)?)
}

/// Row-major `C = A · B` via matrixmultiply.
///
/// # Safety
/// `a` must hold `m·k`, `b` `k·n` and `c` `m·n` values.
unsafe fn matrixmultiply_sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: guaranteed by the caller; strides describe row-major matrices of those shapes.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Writes named f32 tensors (`(name, shape, values)`, little-endian) as one safetensors file,
/// atomically. Shared by the encoder and the decoder.
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
                .map(|v| ((*name).to_owned(), v))
                .map_err(|e| HashError::InvalidArgument(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, &None)
        .map_err(|e| HashError::InvalidArgument(e.to_string()))?;
    bllm_codes::io::write_atomic(path, &data)?;
    Ok(())
}

/// The f32 tensor `name` of `st` (read from `path`, named in errors), which must have `shape`.
pub(crate) fn f32_tensor(
    st: &safetensors::SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let bad = |reason: String| HashError::File {
        path: path.to_owned(),
        reason,
    };
    let t = st
        .tensor(name)
        .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
        return Err(bad(format!(
            "tensor {name:?} is {:?} {:?}, expected F32 {shape:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    fn saved() -> (tempfile::TempDir, LinearEncoder) {
        let dir = tempfile::tempdir().unwrap();
        let enc = LinearEncoder {
            method: "lsh".into(),
            dim: 2,
            bits: 3,
            mean: vec![0.0; 2],
            projection: vec![1.0, 0.0, -1.0, 0.5, 1.0, 0.25],
            thresholds: vec![0.0; 3],
            normalize: false,
        };
        enc.save(dir.path()).unwrap();
        (dir, enc)
    }

    fn edit_json(dir: &Path, key: &str, value: serde_json::Value) -> String {
        let p = dir.join(ENCODER_JSON);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        LinearEncoder::load(dir).unwrap_err().to_string()
    }

    #[test]
    fn every_baseline_method_is_a_known_encoder_method() {
        for (_, name) in Method::ALL {
            assert!(ENCODER_METHODS.contains(&name), "{name}");
        }
        let (_, mut enc) = saved();
        enc.method = "umap".into();
        let dir = tempfile::tempdir().unwrap();
        let e = enc.save(dir.path()).unwrap_err().to_string();
        assert!(e.contains("\"umap\""), "{e}");
    }

    /// Defect 8 of issue 15: `tensors` is a plain file name in the directory, `method` a known
    /// name, `dim` and `bits` at least 1; each refused naming encoder.json and the key.
    #[test]
    fn encoder_json_fields_are_checked() {
        let (dir, enc) = saved();
        assert_eq!(LinearEncoder::load(dir.path()).unwrap(), enc);
        // Another encoder's tensors, by absolute or relative path, are refused.
        let (other, _) = saved();
        let abs = other.path().join(ENCODER_TENSORS).display().to_string();
        for t in [
            abs.as_str(),
            "../x/encoder.safetensors",
            "/dev/zero",
            "a/b",
            "",
            "..",
        ] {
            let (dir, _) = saved();
            let e = edit_json(dir.path(), "tensors", t.into());
            assert!(
                e.contains("encoder.json") && e.contains("plain file name"),
                "{t}: {e}"
            );
        }
        for m in ["", "bogus", "LSH", "learned_"] {
            let (dir, _) = saved();
            let e = edit_json(dir.path(), "method", m.into());
            assert!(
                e.contains("encoder.json") && e.contains("method is"),
                "{m}: {e}"
            );
        }
        for key in ["dim", "bits"] {
            let (dir, _) = saved();
            let e = edit_json(dir.path(), key, 0.into());
            assert!(
                e.contains("encoder.json") && e.contains(&format!("{key} is 0")),
                "{e}"
            );
        }
        // A renamed tensors file inside the directory is fine.
        let (dir, enc) = saved();
        std::fs::rename(dir.path().join(ENCODER_TENSORS), dir.path().join("t.st")).unwrap();
        let p = dir.path().join(ENCODER_JSON);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["tensors"] = "t.st".into();
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(LinearEncoder::load(dir.path()).unwrap(), enc);
    }

    /// Defects 4 and 5 of issue 15 for encoders: encoder.json or encoder.safetensors that is a
    /// device, FIFO or directory is refused at once, by name.
    #[cfg(unix)]
    #[test]
    fn non_regular_encoder_files_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let fifo = scratch.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
        );
        for target in [
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            &fifo,
            scratch.path(),
        ] {
            for name in [ENCODER_JSON, ENCODER_TENSORS] {
                let (dir, _) = saved();
                let p = dir.path().join(name);
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(target, &p).unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                let d = dir.path().to_owned();
                std::thread::spawn(move || {
                    let _ = tx.send(LinearEncoder::load(&d).map(drop).map_err(|e| e.to_string()));
                });
                let e = rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("LinearEncoder::load hung")
                    .unwrap_err();
                assert!(e.contains(name) && e.contains("not a regular file"), "{e}");
            }
        }
    }
}
