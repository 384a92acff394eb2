//! The one error type of this crate.

/// Errors from the kernels and their CPU counterparts.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Input shapes or lengths that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument outside what a kernel supports (for example `k` too large for one cube).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No device of the requested kind could be opened, with the reason and what to do.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// The device runtime failed while running or reading back a kernel.
    #[error("device error: {0}")]
    Device(String),
    /// An error from the code contract (packing, search arguments).
    #[error(transparent)]
    Codes(#[from] bllm_codes::CodesError),
}

/// Result with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
