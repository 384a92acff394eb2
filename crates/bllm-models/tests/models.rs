//! The loaders and models against their references, as one test binary with a module per area
//! (one link instead of six); `cargo test --release -p bllm-models --test models smollm2::` runs
//! one area.

mod common;

mod minilm;
mod minilm_tokens;
mod readers;
mod smollm2;
mod tiny;
