//! Which Burn backend a run trains on, chosen by the recipe's `device`:
//!
//! * `"cpu"` — the embedded default, `Autodiff<Flex>` (the same as `"flex"`): runs anywhere,
//!   bit-identical runs for any thread count. `"ndarray"` (`Autodiff<NdArray>`, matrixmultiply's sgemm, scalar
//!   element-wise loops) and `"flex"` (`Autodiff<Flex>`, burn-flex: gemm's packed kernels,
//!   SIMD element-wise ops) name a CPU backend explicitly; `bllm bench train` compares them.
//! * `"wgpu"` — `Autodiff<Wgpu>` (feature `wgpu`, on by default in `bllm-cli`): any
//!   Vulkan/Metal/DX12 adapter, or Mesa's lavapipe on a CPU — which is how CI runs the generic
//!   trainers on a CubeCL backend, the same `burn-cubecl` code that CUDA runs.
//! * `"cuda"` — `Autodiff<Cuda>` on device 0, with the cargo feature `cuda`. Burn 0.21 loads
//!   the CUDA driver and NVRTC at run time, so the build needs no GPU; before training, a probe
//!   (a two-element sum read back) turns "no driver / no GPU" into a typed error instead of a
//!   panic. Without the feature, `"cuda"` is an error that says how to rebuild.
//!
//! Trainers are generic over `B: AutodiffBackend`; [`dispatch`] instantiates one.

use bllm_recipe::Recipe;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;

use crate::{Result, TrainError};

/// A training job generic over the backend.
pub(crate) trait Job {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B` (its default device).
    fn run<B: AutodiffBackend>(self) -> Result<Self::Output>;
}

/// Runs `job` on the backend of `recipe.device`.
pub(crate) fn dispatch<J: Job>(recipe: &Recipe, job: J) -> Result<J::Output> {
    match recipe.device.as_str() {
        "cpu" | "flex" => job.run::<Autodiff<Flex>>(),
        "ndarray" => job.run::<Autodiff<NdArray>>(),
        "cuda" => cuda(recipe, job),
        "wgpu" => wgpu(recipe, job),
        other => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = {other:?}; expected \"cpu\", \"flex\", \"ndarray\", \"cuda\" or \"wgpu\"",
            recipe.name
        ))),
    }
}

/// Runs `job` on `B` after checking that `B`'s default device computes 1 + 2 (a panic there —
/// no driver, no adapter — becomes an error naming the recipe's `device`).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn probed<B: AutodiffBackend, J: Job>(recipe: &Recipe, job: J, needs: &str) -> Result<J::Output> {
    use burn::tensor::{ElementConversion, Tensor};
    let probe = bllm_kernels::probe::quietly(|| {
        Tensor::<B, 1>::from_floats([1.0, 2.0], &Default::default())
            .sum()
            .into_scalar()
            .elem::<f64>()
    });
    match probe {
        Ok(v) if (v - 3.0).abs() < 1e-6 => job.run::<B>(),
        Ok(v) => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = {:?}: the probe computed 1 + 2 = {v}",
            recipe.name, recipe.device
        ))),
        Err(why) => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = {:?}: no usable device ({why}); {needs}; use device = \"cpu\" \
             on this machine",
            recipe.name, recipe.device
        ))),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu<J: Job>(recipe: &Recipe, job: J) -> Result<J::Output> {
    probed::<Autodiff<burn::backend::Wgpu>, J>(
        recipe,
        job,
        "a wgpu run needs a Vulkan/Metal/DX12 adapter — on a machine without a GPU, Debian's \
         `mesa-vulkan-drivers libvulkan1` (lavapipe) with XDG_RUNTIME_DIR set",
    )
}

#[cfg(not(feature = "wgpu"))]
fn wgpu<J: Job>(recipe: &Recipe, _job: J) -> Result<J::Output> {
    Err(TrainError::Unsupported(format!(
        "recipe {:?}: device = \"wgpu\", but this binary was built without the `wgpu` feature; \
         rebuild with `cargo build --release -p bllm-cli --features wgpu`, or use device = \"cpu\"",
        recipe.name
    )))
}

#[cfg(feature = "cuda")]
fn cuda<J: Job>(recipe: &Recipe, job: J) -> Result<J::Output> {
    probed::<Autodiff<burn::backend::Cuda>, J>(
        recipe,
        job,
        "a CUDA run needs an NVIDIA GPU with its driver (libcuda.so) and NVRTC",
    )
}

#[cfg(not(feature = "cuda"))]
fn cuda<J: Job>(recipe: &Recipe, _job: J) -> Result<J::Output> {
    Err(TrainError::Unsupported(format!(
        "recipe {:?}: device = \"cuda\", but this binary was built without the `cuda` feature; \
         rebuild with `cargo build --release -p bllm-cli --features cuda` (it builds without a \
         GPU or CUDA toolkit; running needs an NVIDIA GPU and its driver), or use device = \"cpu\"",
        recipe.name
    )))
}

/// `dispatch_run!(recipe, opts, f -> Out)`: runs `f::<B>(recipe, opts)` on the recipe's
/// backend.
macro_rules! dispatch_run {
    ($recipe:expr, $opts:expr, $f:ident -> $out:ty) => {{
        struct RunJob<'a>(&'a bllm_recipe::Recipe, &'a mut crate::RunOptions);
        impl crate::backend::Job for RunJob<'_> {
            type Output = $out;
            fn run<B: burn::tensor::backend::AutodiffBackend>(self) -> crate::Result<$out> {
                $f::<B>(self.0, self.1)
            }
        }
        crate::backend::dispatch($recipe, RunJob($recipe, $opts))
    }};
}
pub(crate) use dispatch_run;
