//! # bllm-data — embedding datasets
//!
//! * [`load_embeddings`]: float embeddings from `.npy` (float32/float16), `.fvecs` and
//!   `.safetensors`, as a [`FloatMatrix`], with errors naming the file and what is wrong;
//! * [`check_manifest`]: a bundled dataset's `MANIFEST.json` (source, licence, sha256 per file)
//!   verified against the files on load;
//! * [`Split`]: database / queries / training rows (`queries = N` takes the first N rows);
//! * [`synthetic`]: the review's hard case, seeded;
//! * [`TextCorpus`]: byte-level text (train / held-out bytes) for language modelling, with the
//!   unigram bits-per-byte baseline.

mod error;
mod load;
mod split;
pub mod synthetic;
mod text;

pub use bllm_codes::FloatMatrix;
pub use error::{DataError, Result};
pub use load::{check_manifest, load_embeddings, load_embeddings_typed, write_fvecs};
pub use split::Split;
pub use text::{MAX_CORPUS_FILE, TextCorpus, read_lines};
