//! # bllm-kernels — binary kernels for codes and binary layers
//!
//! Four kernels, each written once in [CubeCL](https://github.com/tracel-ai/cubecl) (so the
//! same source runs on CUDA and on wgpu — Vulkan, Metal, or a CPU through Mesa's lavapipe) and
//! each with a plain-Rust CPU counterpart in [`cpu`] that is both the parity reference and the
//! fast CPU path:
//!
//! | kernel | CubeCL (`cube::kernels`) | CPU ([`cpu`]) |
//! |---|---|---|
//! | pack: float signs → contract codes | `pack_signs` | [`cpu::pack_signs`] (`bllm-codes`) |
//! | Hamming top-k, ties to the lower index | `hamming_topk_partial` + `topk_merge` | [`cpu::hamming_topk`] (`bllm-codes`) |
//! | XNOR-popcount matmul (binary × binary) | `xnor_matmul` | [`cpu::xnor_matmul`] |
//! | binary weights × float activations | `binary_float_matmul` | [`cpu::binary_float_matmul`] |
//! | re-pack contract ↔ GPU layout | `to_gpu_layout`, `from_gpu_layout` | [`cpu::to_gpu_layout`], [`cpu::from_gpu_layout`] |
//!
//! ## Layouts
//! The **contract** (what files, the retrieval engine and every host API exchange) is
//! `bllm-codes`' frozen layout: row-major, `ceil(bits/64)` little-endian `u64` words per row,
//! LSB-first, zero padding. The **GPU layout** is an explicit re-pack of it: 32-bit words
//! (WGSL has no 64-bit integers), word-major (`gpu[w · rows + r]`), so that the threads of a
//! kernel that handle consecutive rows or output channels load consecutive addresses. The
//! re-pack is a bijection, tested bit for bit in both directions, on the CPU and on the device.
//!
//! ## Determinism and tolerances
//! Pack, re-pack and Hamming top-k are integer kernels: device and CPU results are
//! bit-identical, and the top-k order (distance, then lower index) does not depend on how the
//! device splits the scan. The XNOR matmul's ±1 dot product is an exact integer; its epilogue
//! `dot · scale + bias` may be fused into one FMA by a GPU compiler (CUDA does), so the parity
//! tests allow 2 ulp of `|dot · scale| + |bias|`. The binary × float kernel sums in the same
//! 8-lane order as the CPU code; the tests allow the same epilogue rounding plus
//! `1e-6 · scale · Σ|x|` for compilers that reorder float sums.

pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod device;
mod error;
pub mod probe;

pub use cpu::{Epilogue, PackedInput, PackedLinear};
pub use error::{KernelError, Result};
