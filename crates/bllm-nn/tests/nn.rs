//! Learning tests as one test binary with a module per area (`cargo test --release -p bllm-nn
//! --test nn lm_learning::` runs one).

mod learning;
mod lm_learning;
