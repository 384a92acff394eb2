//! The one error type of this crate.

use std::path::PathBuf;

/// Errors from fitting, applying, saving and loading encoders.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// An argument is out of range (bits, rows).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file is missing, unreadable or malformed.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Packing or reading codes failed.
    #[error(transparent)]
    Codes(#[from] bllm_codes::CodesError),
}

/// `Result` with [`HashError`].
pub type Result<T, E = HashError> = std::result::Result<T, E>;
