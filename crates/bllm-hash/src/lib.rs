//! # bllm-hash — classic binary hashing baselines
//!
//! Every method here is a [`LinearEncoder`]: `code = sign((x − μ) · P − t)` with `sign(0) = +1`,
//! packed in the contract layout of `bllm-codes`. That is also the export format of learned
//! heads, so baselines and trained encoders are saved, loaded and applied the same way.
//!
//! * [`random_hyperplanes`] — LSH (Charikar 2002): `P` a seeded Gaussian matrix, raw or centred;
//! * [`pca_sign`] — the top-k principal directions (k ≤ d);
//! * [`itq`] — PCA then Iterative Quantization (Gong & Lazebnik 2011): a rotation `R`
//!   alternating `B = sign(V R)` and the orthogonal Procrustes solution, minimising the
//!   quantisation loss `‖B − V R‖²`;
//! * [`plain_sign`] — `sign(x − μ)` (`sign`) or `sign(x)` (`sign_raw`, sentence-transformers'
//!   binary quantisation), bits = dimension.
//!
//! [`CodeDecoder`] maps codes back to vectors (least squares, plus an optional product-quantised
//! residual of a few bytes per row), so Hamming candidates can be re-scored against the float
//! query without keeping the float database.

pub mod compare;
mod decoder;
mod encoder;
mod error;
mod fit;

pub use compare::ResultRow;
pub use decoder::{
    CodeDecoder, DECODER_JSON, DECODER_TENSORS, PQ_CENTROIDS, RESIDUAL_NPY, ResidualQuantizer,
};
pub use encoder::{
    ENCODER_JSON, ENCODER_METHODS, ENCODER_TENSORS, LinearEncoder, l2_norm, normalize_rows,
};
pub use error::{HashError, Result};
pub use fit::{ItqReport, Method, fit, itq, pca, pca_sign, plain_sign, random_hyperplanes};
