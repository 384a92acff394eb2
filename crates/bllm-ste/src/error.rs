//! The one error type of this crate.

/// Errors from configuring estimators and quantizers.
#[derive(Debug, thiserror::Error)]
pub enum SteError {
    /// A parameter is outside its valid range.
    #[error("{estimator}.{param} = {value}: expected {expected}")]
    InvalidParam {
        /// Estimator or quantizer name.
        estimator: &'static str,
        /// Parameter name.
        param: &'static str,
        /// The value found.
        value: f64,
        /// What is required.
        expected: &'static str,
    },
    /// An estimator name that does not exist.
    #[error("unknown estimator {0:?}; run `bllm ste list` for the names")]
    UnknownEstimator(String),
}

/// `Result` with [`SteError`].
pub type Result<T, E = SteError> = std::result::Result<T, E>;
