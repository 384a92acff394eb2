//! # bllm-codes — the binary-code contract
//!
//! Everything BinaryLLM trains ends up as packed binary codes consumed by a retrieval engine.
//! This crate defines that contract and the tools around it, without depending on Burn so that
//! it builds and tests in seconds:
//!
//! * [`PackedCodes`]: the frozen layout — row-major, one row per vector, `ceil(bits / 64)`
//!   little-endian `u64` words per row, bit `j` of a row is bit `j % 64` (LSB = 0) of word
//!   `j / 64`, unused high bits of the last word are zero, and bit = 1 means the value was
//!   `>= 0` (so `sign(0) = +1`).
//! * [`hamming`]: Hamming distance and exact, multi-threaded, deterministic top-k search
//!   (ties broken by the lower database index).
//! * [`float`]: exact float top-k by cosine or inner product (the ground truth).
//! * [`metrics`]: Recall@k, Overlap@k and recall after exact re-ranking.
//! * [`io`]: the `.bcodes` codes file and its `manifest.json`, `.npy` (codes and float
//!   matrices) and FAISS `IndexBinaryFlat` files; every reader validates, every writer is atomic.
//! * [`bench`]: the throughput benchmark behind `bllm codes bench`.
//!
//! ```
//! use bllm_codes::PackedCodes;
//! // Two rows of four values; bits = 3 keeps the first three values of each row.
//! let codes = PackedCodes::from_f32_rows(&[0.5, -1.0, 0.0, 9.0, -0.1, 2.0, -3.0, 1.0], 4, 3)?;
//! assert_eq!(codes.row(0), &[0b101]); // 0.5 >= 0, -1.0 < 0, 0.0 >= 0 (sign(0) = +1)
//! assert_eq!(codes.row(1), &[0b010]);
//! assert_eq!(bllm_codes::hamming::distance(codes.row(0), codes.row(1)), 3);
//! # Ok::<(), bllm_codes::CodesError>(())
//! ```

pub mod bench;
mod error;
pub mod float;
pub mod hamming;
pub mod io;
pub mod metrics;
mod packed;
pub mod rng;

pub use error::{CodesError, Result};
pub use float::{FloatMatrix, Metric};
pub use hamming::Neighbors;
pub use packed::{LAYOUT_NAME, PackedCodes, words_per_row};
