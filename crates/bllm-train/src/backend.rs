//! Which Burn backend a run trains on, chosen by the recipe's `device`:
//!
//! * `"cpu"` — `Autodiff<NdArray>`: the embedded default, runs anywhere, bit-identical runs.
//! * `"cuda"` — `Autodiff<Cuda>` on device 0, with the cargo feature `cuda`. Burn 0.21 loads
//!   the CUDA driver and NVRTC at run time, so the build needs no GPU; before training, a probe
//!   (a two-element sum read back) turns "no driver / no GPU" into a typed error instead of a
//!   panic. Without the feature, `"cuda"` is an error that says how to rebuild.
//!
//! Trainers are generic over `B: AutodiffBackend`; [`dispatch`] instantiates one.

use bllm_recipe::Recipe;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;

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
        "cpu" => job.run::<Autodiff<NdArray>>(),
        "cuda" => cuda(recipe, job),
        other => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = {other:?}; expected \"cpu\" or \"cuda\"",
            recipe.name
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda<J: Job>(recipe: &Recipe, job: J) -> Result<J::Output> {
    use burn::backend::Cuda;
    use burn::tensor::Tensor;
    let probe = bllm_kernels::probe::quietly(|| {
        let dev = burn::backend::cuda::CudaDevice::default();
        Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &dev)
            .sum()
            .into_scalar()
    });
    match probe {
        Ok(v) if (v - 3.0).abs() < 1e-6 => job.run::<Autodiff<Cuda>>(),
        Ok(v) => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = \"cuda\": the CUDA probe computed 1 + 2 = {v}",
            recipe.name
        ))),
        Err(why) => Err(TrainError::Unsupported(format!(
            "recipe {:?}: device = \"cuda\": no usable CUDA device ({why}); a CUDA run needs an \
             NVIDIA GPU with its driver (libcuda.so) and NVRTC; use device = \"cpu\" on this \
             machine",
            recipe.name
        ))),
    }
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
