//! The end-to-end suite: real `bllm` commands on bundled data, cross-checked against numpy and
//! FAISS. One test binary with a module per area (one link of the Burn stack instead of one per
//! file); run one area with `cargo test --release -p bllm-e2e --test e2e <module>::`.

#[path = "support/tiny_llama.rs"]
mod support;

mod adapter_e2e;
mod codes_e2e;
mod cpu_backends_e2e;
mod device_e2e;
mod finetune_e2e;
mod fuzz;
mod fuzz_checkpoints;
mod kernels_e2e;
mod kv_probe_e2e;
mod lm_e2e;
mod memory_e2e;
mod models_e2e;
mod moe_e2e;
mod packed_e2e;
mod pretrained_adapter_e2e;
mod pretrained_lm_e2e;
mod recipes_e2e;
mod retrieval_e2e;
mod train_e2e;
