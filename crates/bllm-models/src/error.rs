//! The one error type of this crate.

use std::path::PathBuf;

/// Errors from reading a pretrained model, its config or its tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not in the format it should be (a corrupt safetensors header, a GGUF that
    /// does not parse, JSON that does not parse).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A config value is missing or invalid.
    #[error("{path}: key `{key}`: {msg}")]
    Config {
        /// The config file (config.json, the GGUF's metadata, …).
        path: PathBuf,
        /// The key.
        key: String,
        /// What was expected.
        msg: String,
    },
    /// The checkpoint lacks a tensor the architecture needs.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the config implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors the architecture does not use.
    #[error("{path}: {} tensor(s) the architecture does not use: {}", names.len(), names.join(", "))]
    ExtraTensors {
        /// The checkpoint.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
    /// A tensor's element type cannot be read.
    #[error("{path}: tensor `{name}`: {msg}")]
    Dtype {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
        /// What the type is and what is supported.
        msg: String,
    },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// tokenizer.json or the GGUF the vocabulary comes from.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An input to a model is invalid (too long, empty, out of the vocabulary).
    #[error("{0}")]
    Input(String),
    /// A KV-cache configuration is invalid (the key is relative to the cache table).
    #[error("cache `{key}`: {msg}")]
    InvalidCache {
        /// The key, e.g. `keys.group`.
        key: String,
        /// What was expected and found.
        msg: String,
    },
    /// Building a layer failed.
    #[error(transparent)]
    Nn(#[from] bllm_nn::NnError),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// A [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`ModelError::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A [`ModelError::Config`] for `path` and `key`.
    pub fn config(path: impl Into<PathBuf>, key: &str, msg: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}
