//! The one error type of this crate.

/// Errors from building, exporting or summarising layers.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A layer configuration is invalid.
    #[error("invalid layer configuration: {0}")]
    Config(String),
    /// An estimator parameter is invalid.
    #[error(transparent)]
    Estimator(#[from] bllm_ste::SteError),
    /// Packing weights into codes failed.
    #[error(transparent)]
    Codes(#[from] bllm_codes::CodesError),
    /// The operation does not apply to this layer (for example packing ternary weights as 1-bit).
    #[error("{0}")]
    Unsupported(String),
}

/// `Result` with [`NnError`].
pub type Result<T, E = NnError> = std::result::Result<T, E>;
