//! The one error type of this crate.

use std::path::PathBuf;

/// Errors from loading and checking datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file is missing, unreadable, malformed or does not match its manifest.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        reason: String,
    },
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading `.npy` or building a matrix failed.
    #[error(transparent)]
    Codes(#[from] bllm_codes::CodesError),
}

impl DataError {
    pub(crate) fn file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::File {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
