//! Errors and validation issues.

use std::fmt;
use std::path::PathBuf;

/// One validation problem: where, what was expected, what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The recipe file, or `override KEY=VALUE` when an override caused it.
    pub source: String,
    /// Dotted key path (`train.steps`, `estimator.beta`); empty for the whole file.
    pub key: String,
    /// What the schema expects.
    pub expected: String,
    /// What the recipe holds.
    pub found: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}: expected {}, found {}",
                self.source, self.expected, self.found
            )
        } else {
            write!(
                f,
                "{}: {}: expected {}, found {}",
                self.source, self.key, self.expected, self.found
            )
        }
    }
}

/// Errors from loading a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The recipe file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        /// The recipe file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An override is malformed (`KEY=VALUE` expected).
    #[error("override {0:?}: expected KEY=VALUE with a dotted KEY, e.g. train.steps=200")]
    BadOverride(String),
    /// The recipe does not match the schema; every problem found is listed.
    #[error("{}", format_issues(.0))]
    Invalid(Vec<Issue>),
}

fn format_issues(issues: &[Issue]) -> String {
    let mut s = format!(
        "{} problem{} in the recipe:",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        s.push_str("\n  - ");
        s.push_str(&i.to_string());
    }
    s
}

/// Reads a recipe file as text: a regular file (devices and FIFOs are refused without
/// blocking) of at most [`bllm_codes::io::MAX_TEXT_FILE`] bytes, in UTF-8.
pub(crate) fn read_recipe_text(path: &std::path::Path) -> Result<String> {
    let io = |source| RecipeError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = bllm_codes::io::read_regular(path, bllm_codes::io::MAX_TEXT_FILE).map_err(io)?;
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is not UTF-8 text: {e}"),
        ))
    })
}

/// `Result` with [`RecipeError`].
pub type Result<T, E = RecipeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Recipe, expand_sweep};

    /// Defects 4 and 5 of issue 15 for recipes: a recipe path that is a device, a FIFO or a
    /// directory (also behind a symlink) is refused at once by `Recipe::load` and
    /// `expand_sweep`, naming the file; so is one over the text cap or not UTF-8.
    #[cfg(unix)]
    #[test]
    fn recipe_files_must_be_regular_bounded_text() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
        );
        let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/smoke.toml");
        let base = Recipe::load(&good, &[], &()).unwrap();
        for (i, target) in [
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            &fifo,
            dir.path(),
        ]
        .into_iter()
        .enumerate()
        {
            let link = dir.path().join(format!("link{i}.toml"));
            std::os::unix::fs::symlink(target, &link).unwrap();
            for p in [target.to_path_buf(), link] {
                let (tx, rx) = std::sync::mpsc::channel();
                let (q, b) = (p.clone(), base.clone());
                std::thread::spawn(move || {
                    let load = Recipe::load(&q, &[], &()).map(drop);
                    let sweep = expand_sweep(&q, &[], &b, &()).map(drop);
                    let _ = tx.send((load, sweep));
                });
                let (load, sweep) = rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("reading the recipe hung");
                for e in [load.unwrap_err(), sweep.unwrap_err()] {
                    let e = e.to_string();
                    assert!(
                        e.contains(&p.display().to_string()) && e.contains("not a regular file"),
                        "{e}"
                    );
                }
            }
        }
        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"name = \"caf\xe9\"\n").unwrap();
        let e = Recipe::load(&latin1, &[], &()).unwrap_err().to_string();
        assert!(e.contains("latin1.toml") && e.contains("UTF-8"), "{e}");
        let big = dir.path().join("big.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(bllm_codes::io::MAX_TEXT_FILE + 1).unwrap();
        let e = Recipe::load(&big, &[], &()).unwrap_err().to_string();
        assert!(e.contains("big.toml") && e.contains("more than"), "{e}");
    }
}
