//! The `bllm` binary run as a user runs it, as one test binary with a module per area
//! (`cargo test --release -p bllm-cli --test bin distributed::` runs one).

mod cli;
mod distributed;
