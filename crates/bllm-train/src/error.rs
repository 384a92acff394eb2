//! The one error type of this crate.

use std::path::PathBuf;

/// Errors from running a recipe.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// File system error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint cannot be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A run directory cannot be used for this run (it holds something else, or a run of
    /// another recipe).
    #[error("run directory {}: {message}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The recipe asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A layer could not be built.
    #[error(transparent)]
    Nn(#[from] bllm_nn::NnError),
    /// Embeddings could not be loaded or split.
    #[error(transparent)]
    Data(#[from] bllm_data::DataError),
    /// A baseline encoder could not be fitted, evaluated or saved.
    #[error(transparent)]
    Hash(#[from] bllm_hash::HashError),
    /// Codes could not be packed, searched or written.
    #[error(transparent)]
    Codes(#[from] bllm_codes::CodesError),
    /// A pretrained model, its config or its tokenizer could not be read or written.
    #[error(transparent)]
    Model(#[from] bllm_models::ModelError),
    /// A data-parallel run failed: a rank died or timed out, the ranks disagree, or
    /// burn-collective reported an error.
    #[error("data-parallel run: {0}")]
    Distributed(String),
    /// A monitor with action `stop` fired; the run saved a checkpoint and stopped.
    #[error("stopped at step {step} by monitor {monitor}: {reason}")]
    Stopped {
        /// Step at which it stopped.
        step: usize,
        /// The monitor that fired.
        monitor: String,
        /// Its value and threshold.
        reason: String,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
