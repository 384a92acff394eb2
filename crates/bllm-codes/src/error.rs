//! The one error type of this crate.

use std::path::PathBuf;

/// Errors from packing, searching, evaluating and reading or writing code files.
#[derive(Debug, thiserror::Error)]
pub enum CodesError {
    /// An argument is outside what the operation accepts (for example `bits = 0` or `k = 0`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two inputs that must agree do not (bits, rows, dimensions).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// An input value is NaN or infinite where a finite number is required.
    #[error("{what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// What was being read (a file path or a description).
        what: String,
        /// Row of the offending value.
        row: usize,
        /// Column of the offending value.
        col: usize,
        /// The value itself (NaN or ±inf).
        value: f32,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but its content is not what the format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        reason: String,
    },
}

/// `Result` with [`CodesError`].
pub type Result<T, E = CodesError> = std::result::Result<T, E>;

impl CodesError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
