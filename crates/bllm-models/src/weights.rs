//! [`Checkpoint`]: the tensors of a safetensors or GGUF file, read one at a time as f32, each
//! checked against the shape the architecture expects, with the names the file uses.
//!
//! Why not `burn-store`: its `load_from` fills an already-initialised module, so a 135 M
//! parameter model would first be built with random weights (a full extra copy and seconds of
//! initialisation) and then overwritten; its names follow the Burn module tree, whose
//! projections ([`bllm_nn::Proj`]: float, 1-bit or BitNet) are not laid out like the checkpoint's.
//! Here the model is built *from* the checkpoint: each tensor is read (from a memory map, so the
//! file is not copied onto the heap), converted to f32, shape-checked and moved into its layer,
//! and the next one is read — at most one tensor is held twice at any time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorInfo};

use crate::{ModelError, Result};

enum Source {
    Safetensors {
        map: memmap2::Mmap,
        data_start: usize,
        infos: BTreeMap<String, TensorInfo>,
    },
    Gguf(Box<rlx_gguf::GgufFile>),
}

/// One checkpoint file: its tensors by name, and which of them the model has taken.
pub struct Checkpoint {
    path: PathBuf,
    source: Source,
    taken: BTreeSet<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.names().len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a `.safetensors` or `.gguf` file (by its extension).
    pub fn open(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Self::open_safetensors(path),
            Some("gguf") => Self::open_gguf(path),
            _ => Err(ModelError::format(
                path,
                "expected a .safetensors or .gguf checkpoint",
            )),
        }
    }

    /// Opens a safetensors file through a memory map; the header is validated (offsets inside
    /// the file, no overlaps) before any tensor is read.
    pub fn open_safetensors(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: a read-only map of a file we hold open; only immutable slices are taken. A
        // file truncated by another process while mapped is the usual caveat of every
        // mmap-based loader (safetensors' own, candle's).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            ModelError::format(path, format!("not a valid safetensors file: {e:?}"))
        })?;
        let infos = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            source: Source::Safetensors {
                map,
                data_start: 8 + n,
                infos,
            },
            taken: BTreeSet::new(),
        })
    }

    /// Opens a GGUF file (v1–v3) through a memory map.
    pub fn open_gguf(path: &Path) -> Result<Self> {
        let g = rlx_gguf::GgufFile::from_path_mmap(path)
            .map_err(|e| ModelError::format(path, format!("not a valid GGUF file: {e:#}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            source: Source::Gguf(Box::new(g)),
            taken: BTreeSet::new(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF file, when this is one (its metadata holds the config and the tokenizer).
    pub fn gguf(&self) -> Option<&rlx_gguf::GgufFile> {
        match &self.source {
            Source::Gguf(g) => Some(g),
            Source::Safetensors { .. } => None,
        }
    }

    /// Every tensor name in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = match &self.source {
            Source::Safetensors { infos, .. } => infos.keys().cloned().collect(),
            Source::Gguf(g) => g.keys().map(str::to_string).collect(),
        };
        v.sort();
        v
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors { infos, .. } => infos.contains_key(name),
            Source::Gguf(g) => g.get(name).is_some(),
        }
    }

    /// The shape of `name` in row-major order (outermost first, as PyTorch and safetensors
    /// write it; GGUF's innermost-first dimensions are reversed).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.source {
            Source::Safetensors { infos, .. } => infos.get(name).map(|i| i.shape.clone()),
            Source::Gguf(g) => g.get(name).map(|t| t.shape.iter().rev().copied().collect()),
        }
    }

    /// Reads `name` as row-major f32 after checking its shape is `expected`; the tensor counts
    /// as used. Safetensors F32, F16 and BF16 are read; GGUF tensors are dequantised (F32, F16,
    /// BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K–Q6_K, Q8_K).
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let Some(found) = self.shape(name) else {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            });
        };
        // GGUF drops trailing 1-dimensions of vectors; compare without them.
        let squeeze = |s: &[usize]| -> Vec<usize> {
            let mut v: Vec<usize> = s.to_vec();
            while v.len() > 1 && v[0] == 1 {
                v.remove(0);
            }
            v
        };
        if squeeze(&found) != squeeze(expected) {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let data = self.read(name)?;
        self.taken.insert(name.to_string());
        Ok(data)
    }

    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let bad = |msg: String| ModelError::Dtype {
            path: self.path.clone(),
            name: name.to_string(),
            msg,
        };
        match &self.source {
            Source::Safetensors {
                map,
                data_start,
                infos,
            } => {
                let info = &infos[name];
                let (a, b) = info.data_offsets;
                let bytes = &map[data_start + a..data_start + b];
                let n: usize = info.shape.iter().product();
                let width = match info.dtype {
                    Dtype::F32 => 4,
                    Dtype::F16 | Dtype::BF16 => 2,
                    d => {
                        return Err(bad(format!("dtype {d:?}; supported: F32, F16, BF16")));
                    }
                };
                if bytes.len() != n * width {
                    return Err(bad(format!(
                        "{} bytes for {n} elements of {:?}",
                        bytes.len(),
                        info.dtype
                    )));
                }
                Ok(match info.dtype {
                    Dtype::F32 => bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    Dtype::F16 => bytes
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    _ => bytes
                        .chunks_exact(2)
                        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                })
            }
            Source::Gguf(g) => g
                .dequant_f32(name)
                .map(|(v, _)| v)
                .map_err(|e| bad(format!("{e:#}"))),
        }
    }

    /// Ends loading: every tensor the model did not take is an error
    /// ([`ModelError::ExtraTensors`]) unless `ignorable` accepts its name (tensors a checkpoint
    /// carries for heads this model does not have, such as BERT's pooler); those are returned.
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut ignored = Vec::new();
        let mut extra = Vec::new();
        for n in self.names() {
            if self.taken.contains(&n) {
                continue;
            }
            if ignorable(&n) {
                ignored.push(n);
            } else {
                extra.push(n);
            }
        }
        if !extra.is_empty() {
            return Err(ModelError::ExtraTensors {
                path: self.path,
                names: extra,
            });
        }
        Ok(ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
                )
            })
            .collect();
        let p = dir.join("m.safetensors");
        safetensors::serialize_to_file(views, &None, &p).expect("write");
        p
    }

    #[test]
    fn take_checks_names_shapes_and_leftovers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            dir.path(),
            &[
                ("a.weight", vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
                ("b.bias", vec![2], vec![7., 8.]),
                ("pooler.dense.bias", vec![1], vec![0.]),
            ],
        );
        let mut c = Checkpoint::open(&p).expect("open");
        assert_eq!(c.shape("a.weight"), Some(vec![2, 3]));
        let e = c.take("a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(
            e.contains("`a.weight`") && e.contains("[2, 3]") && e.contains("[3, 2]"),
            "{e}"
        );
        let e = c.take("c.weight", &[1]).unwrap_err().to_string();
        assert!(e.contains("missing tensor `c.weight`"), "{e}");
        assert_eq!(
            c.take("a.weight", &[2, 3]).expect("a"),
            vec![1., 2., 3., 4., 5., 6.]
        );
        let e = Checkpoint::open(&p)
            .expect("open")
            .finish(|_| false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 tensor(s)") && e.contains("b.bias"), "{e}");
        let ignored = c
            .finish(|n| n.starts_with("pooler.") || n == "b.bias")
            .expect("finish");
        assert_eq!(
            ignored,
            vec!["b.bias".to_string(), "pooler.dense.bias".to_string()]
        );
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        for (name, bytes) in [
            ("short.safetensors", vec![1u8, 2, 3]),
            ("huge.safetensors", u64::MAX.to_le_bytes().to_vec()),
            ("json.safetensors", {
                let mut b = 4u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{{{{");
                b
            }),
            ("bad.gguf", b"GGUF\x03\x00\x00\x00garbage".to_vec()),
            ("empty.gguf", vec![]),
            ("model.bin", vec![0; 16]),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            let e = Checkpoint::open(&p).unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
