//! Opening a kernel device by name, with a clear error instead of a panic when there is none.
//!
//! CubeCL panics when a runtime finds no adapter (wgpu) or cannot load the driver (CUDA:
//! `libcuda.so` is loaded at run time, so a binary built with `cuda` starts anywhere). [`open`]
//! catches that, runs a one-word probe kernel, and reports what to do.

use bllm_codes::PackedCodes;
use bllm_codes::hamming::Neighbors;

use crate::cube::{Gpu, GpuCodes, GpuLinear};
use crate::{KernelError, PackedLinear, Result};

/// The kernel devices this build knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// wgpu's default adapter (a GPU, or lavapipe on a CPU).
    Wgpu,
    /// CUDA device 0.
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(KernelError::Unsupported(format!(
                "unknown kernel device {other:?}; expected \"wgpu\" or \"cuda\""
            ))),
        }
    }
}

/// A device of one of the compiled-in runtimes.
pub enum AnyGpu {
    /// The wgpu runtime.
    #[cfg(feature = "wgpu")]
    Wgpu(Gpu<cubecl::wgpu::WgpuRuntime>),
    /// The CUDA runtime.
    #[cfg(feature = "cuda")]
    Cuda(Gpu<cubecl::cuda::CudaRuntime>),
}

/// Whether this build has the runtime of `kind`.
pub fn compiled(kind: DeviceKind) -> bool {
    match kind {
        DeviceKind::Wgpu => cfg!(feature = "wgpu"),
        DeviceKind::Cuda => cfg!(feature = "cuda"),
    }
}

/// Opens `kind` and checks it with a probe kernel (packs two values and reads them back).
pub fn open(kind: DeviceKind) -> Result<AnyGpu> {
    if !compiled(kind) {
        let feature = match kind {
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        };
        return Err(KernelError::DeviceUnavailable(format!(
            "this binary was built without the `{feature}` feature; rebuild with \
             `cargo build --release -p bllm-cli --features {feature}`"
        )));
    }
    let opened = crate::probe::quietly(|| {
        let gpu = match kind {
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => AnyGpu::Wgpu(Gpu::new(&Default::default())),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => AnyGpu::Cuda(Gpu::new(&Default::default())),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by compiled()"),
        };
        let probe = gpu.pack_signs(&[1.0, -1.0], 2, 2)?;
        if probe.row(0) != [0b01] {
            return Err(KernelError::Device(format!(
                "probe kernel returned {:?}, expected [1]",
                probe.row(0)
            )));
        }
        Ok(gpu)
    });
    match (kind, opened) {
        (_, Ok(r)) => r,
        (DeviceKind::Cuda, Err(msg)) => Err(KernelError::DeviceUnavailable(format!(
            "no usable CUDA device ({msg}); a CUDA run needs an NVIDIA GPU with its driver \
             (libcuda.so) and NVRTC; use device = \"cpu\" on this machine"
        ))),
        (DeviceKind::Wgpu, Err(msg)) => Err(KernelError::DeviceUnavailable(format!(
            "no wgpu adapter ({msg}); install a Vulkan driver — on a machine without a GPU, \
             Debian's `mesa-vulkan-drivers libvulkan1` (lavapipe) — and set XDG_RUNTIME_DIR"
        ))),
    }
}

macro_rules! each {
    ($self:ident, $g:ident => $e:expr) => {
        match $self {
            #[cfg(feature = "wgpu")]
            AnyGpu::Wgpu($g) => $e,
            #[cfg(feature = "cuda")]
            AnyGpu::Cuda($g) => $e,
        }
    };
}

impl AnyGpu {
    /// The runtime's name and adapter.
    pub fn name(&self) -> String {
        each!(self, g => g.name())
    }

    /// See [`Gpu::sync`].
    pub fn sync(&self) -> Result<()> {
        each!(self, g => g.sync())
    }

    /// See [`Gpu::pack_signs`].
    pub fn pack_signs(&self, x: &[f32], dim: usize, bits: usize) -> Result<PackedCodes> {
        each!(self, g => g.pack_signs(x, dim, bits))
    }

    /// See [`Gpu::upload_codes`].
    pub fn upload_codes(&self, codes: &PackedCodes) -> Result<GpuCodes> {
        each!(self, g => g.upload_codes(codes))
    }

    /// See [`Gpu::download_codes`].
    pub fn download_codes(&self, codes: &GpuCodes) -> Result<PackedCodes> {
        each!(self, g => g.download_codes(codes))
    }

    /// See [`Gpu::hamming_topk`].
    pub fn hamming_topk(
        &self,
        db: &GpuCodes,
        queries: &PackedCodes,
        k: usize,
    ) -> Result<Neighbors<u32>> {
        each!(self, g => g.hamming_topk(db, queries, k))
    }

    /// See [`Gpu::upload_linear`].
    pub fn upload_linear(&self, layer: &PackedLinear) -> Result<GpuLinear> {
        each!(self, g => g.upload_linear(layer))
    }

    /// See [`Gpu::linear_forward`].
    pub fn linear_forward(&self, layer: &GpuLinear, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        each!(self, g => g.linear_forward(layer, x, batch))
    }

    /// See [`Gpu::xnor_matmul`].
    pub fn xnor_matmul(&self, layer: &GpuLinear, a: &PackedCodes) -> Result<Vec<f32>> {
        each!(self, g => g.xnor_matmul(layer, a))
    }

    /// See [`Gpu::time_linear`].
    pub fn time_linear(
        &self,
        layer: &GpuLinear,
        x: &[f32],
        batch: usize,
        min_secs: f64,
    ) -> Result<Vec<std::time::Duration>> {
        each!(self, g => g.time_linear(layer, x, batch, min_secs))
    }
}
