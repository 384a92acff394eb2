//! Byte-level text corpora for language modelling: a training and a held-out byte stream.

use std::path::Path;

use crate::load::read_file;
use crate::{DataError, Result, check_manifest};

/// The largest text corpus file read (train, held-out or a single file): corpora are held in
/// memory whole, and anything larger is refused before reading.
pub const MAX_CORPUS_FILE: u64 = 4 << 30;

/// A byte-level corpus: training bytes and held-out bytes (vocabulary 256, no tokenizer).
#[derive(Clone, Debug, PartialEq)]
pub struct TextCorpus {
    /// Training bytes.
    pub train: Vec<u8>,
    /// Held-out bytes.
    pub valid: Vec<u8>,
}

impl TextCorpus {
    /// Loads a corpus. `path` is either a directory holding `train.txt` and `valid.txt` (the
    /// fixed split of a bundled set; its `MANIFEST.json`, when present, is checked), or one text
    /// file whose last `valid_fraction` is held out (cut at a line start when there is one
    /// near).
    pub fn load(path: &Path, valid_fraction: f64) -> Result<Self> {
        let read = |p: &Path| read_file(p, MAX_CORPUS_FILE);
        // Present as a directory entry at all (a dangling or device symlink included, which
        // the readers then refuse by name).
        let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let corpus = if path.is_dir() {
            if present(&path.join("MANIFEST.json")) {
                check_manifest(path)?;
            }
            let (t, v) = (path.join("train.txt"), path.join("valid.txt"));
            for p in [&t, &v] {
                if !present(p) {
                    return Err(DataError::file(
                        p,
                        "missing: a corpus directory holds train.txt and valid.txt",
                    ));
                }
            }
            Self {
                train: read(&t)?,
                valid: read(&v)?,
            }
        } else {
            if !(valid_fraction > 0.0 && valid_fraction < 1.0) {
                return Err(DataError::InvalidArgument(format!(
                    "valid_fraction must be in (0, 1) to split one file, got {valid_fraction}"
                )));
            }
            let all = read(path)?;
            let mut cut = ((all.len() as f64) * (1.0 - valid_fraction)) as usize;
            // Prefer to start the held-out part at a line (within 1 KiB after the cut).
            if let Some(nl) = all[cut..all.len().min(cut + 1024)]
                .iter()
                .position(|&b| b == b'\n')
            {
                cut += nl + 1;
            }
            let valid = all[cut..].to_vec();
            let mut train = all;
            train.truncate(cut);
            Self { train, valid }
        };
        for (name, part) in [("training", &corpus.train), ("held-out", &corpus.valid)] {
            if part.len() < 2 {
                return Err(DataError::file(
                    path,
                    format!(
                        "the {name} part has {} bytes; at least 2 are needed",
                        part.len()
                    ),
                ));
            }
        }
        Ok(corpus)
    }

    /// Bits per byte of the held-out bytes under the training bytes' unigram distribution
    /// (add-one smoothing over 256 symbols): the baseline any LM has to beat.
    pub fn unigram_bits_per_byte(&self) -> f64 {
        let mut counts = [1.0f64; 256];
        for &b in &self.train {
            counts[b as usize] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        let bits: f64 = self
            .valid
            .iter()
            .map(|&b| -(counts[b as usize] / total).log2())
            .sum();
        bits / self.valid.len() as f64
    }
}

/// The texts of `path`, one per line (a final newline ends the last line; `\r\n` endings are
/// accepted). With `field`, only that 0-based tab-separated field of each line (the bundled
/// `verses.txt` is `reference TAB text`, so field 1). Errors name the file and line: a file
/// that is not UTF-8, a line without the field, an empty file.
pub fn read_lines(path: &Path, field: Option<usize>) -> Result<Vec<String>> {
    let bytes = read_file(path, MAX_CORPUS_FILE)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        DataError::file(
            path,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = match field {
            None => line,
            Some(k) => line.split('\t').nth(k).ok_or_else(|| {
                DataError::file(
                    path,
                    format!(
                        "line {}: no tab-separated field {k} (fields are 0-based)",
                        i + 1
                    ),
                )
            })?,
        };
        out.push(t.to_owned());
    }
    if out.is_empty() {
        return Err(DataError::file(
            path,
            "no lines: expected one text per line",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_lines_takes_a_field_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "a\tone\r\nb\ttwo\n").unwrap();
        assert_eq!(super::read_lines(&p, None).unwrap(), ["a\tone", "b\ttwo"]);
        assert_eq!(super::read_lines(&p, Some(1)).unwrap(), ["one", "two"]);
        let e = super::read_lines(&p, Some(2)).unwrap_err().to_string();
        assert!(
            e.contains("t.txt") && e.contains("line 1") && e.contains("field 2"),
            "{e}"
        );
        std::fs::write(&p, "").unwrap();
        assert!(
            super::read_lines(&p, None)
                .unwrap_err()
                .to_string()
                .contains("no lines")
        );
        std::fs::write(&p, [0xffu8, 0xfe]).unwrap();
        assert!(
            super::read_lines(&p, None)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }

    #[test]
    fn one_file_is_split_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let c = TextCorpus::load(&p, 0.1).unwrap();
        assert_eq!(c.train.len() + c.valid.len(), text.len());
        assert!(c.valid.starts_with(b"line "));
        assert!(c.train.ends_with(b"\n"));
        assert!((c.valid.len() as f64 / text.len() as f64 - 0.1).abs() < 0.02);
        assert!(TextCorpus::load(&p, 0.0).is_err());
        assert!(TextCorpus::load(&dir.path().join("none.txt"), 0.1).is_err());
    }

    #[test]
    fn directory_needs_both_files_and_a_matching_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.txt"), b"abcabc").unwrap();
        let e = TextCorpus::load(dir.path(), 0.1).unwrap_err().to_string();
        assert!(e.contains("valid.txt"), "{e}");
        std::fs::write(dir.path().join("valid.txt"), b"cab").unwrap();
        let c = TextCorpus::load(dir.path(), 0.1).unwrap();
        assert_eq!(c.valid, b"cab");
        std::fs::write(
            dir.path().join("MANIFEST.json"),
            r#"{"source": "test", "licence": "CC0", "files": {"train.txt": {"sha256": "00"}}}"#,
        )
        .unwrap();
        let e = TextCorpus::load(dir.path(), 0.1).unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");
    }

    /// Defects 4 and 5 of issue 15 for corpora: a single file, `train.txt`, `valid.txt` or
    /// `MANIFEST.json` that is a device, FIFO or directory is refused at once, by name.
    #[cfg(unix)]
    #[test]
    fn non_regular_corpus_files_are_refused() {
        use crate::load::tests::refuses_non_regular;
        let dir = tempfile::tempdir().unwrap();
        // (A directory there is a corpus directory, not an error.)
        refuses_non_regular(dir.path(), "one.txt", false, |d| {
            TextCorpus::load(&d.join("one.txt"), 0.1)
                .unwrap_err()
                .to_string()
        });
        std::fs::write(dir.path().join("train.txt"), b"abcabc").unwrap();
        std::fs::write(dir.path().join("valid.txt"), b"cab").unwrap();
        for name in ["train.txt", "valid.txt", "MANIFEST.json"] {
            let keep = std::fs::read(dir.path().join(name)).ok();
            refuses_non_regular(dir.path(), name, true, |d| {
                TextCorpus::load(d, 0.1).unwrap_err().to_string()
            });
            if let Some(k) = keep {
                std::fs::write(dir.path().join(name), k).unwrap();
            }
        }
        assert!(TextCorpus::load(dir.path(), 0.1).is_ok());
    }

    #[test]
    fn unigram_baseline_matches_a_hand_computation() {
        let c = TextCorpus {
            train: b"aab".to_vec(),
            valid: b"ab".to_vec(),
        };
        // counts with add-one: a = 3, b = 2, others 1; total 256 + 3 = 259.
        let want = (-(3.0f64 / 259.0).log2() - (2.0f64 / 259.0).log2()) / 2.0;
        assert!((c.unigram_bits_per_byte() - want).abs() < 1e-12);
    }

    #[test]
    fn bundled_kjv_text_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/kjv-text");
        let c = TextCorpus::load(&dir, 0.1).unwrap();
        assert!(c.train.len() > 1_000_000 && c.valid.len() > 100_000);
        let u = c.unigram_bits_per_byte();
        assert!((4.0..5.0).contains(&u), "{u}");
    }
}
