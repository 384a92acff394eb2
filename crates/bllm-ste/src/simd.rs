//! Runs the element-wise host kernels with the CPU's 256-bit vector instructions when it has
//! them.
//!
//! Why: the workspace builds for baseline x86-64 (SSE2), where the compiler vectorised the
//! fused kernels' loops four lanes wide at best, and not at all where a loop saturates a float
//! to an integer (`exp`) or selects by comparison (`tanh`, `max`): measured on the 2-core dev
//! machine, `tanh` with its derivative took 2.0 ns an element scalar and 1.0 ns under AVX2, the
//! softmax's `exp` pass 5.3 ns and 3.1 ns. [`wide`] runs a closure inside a function compiled
//! with `avx2` enabled (checked at run time, once), so the kernel code inlined into it is
//! vectorised eight lanes wide; PyTorch's CPU kernels dispatch the same way.
//!
//! Determinism: the same bits with and without. Rust never contracts `a·b + c` into a fused
//! multiply-add (no fast-math), so enabling the feature changes the instruction width, not the
//! IEEE operations or their order; the reductions are written with explicit lanes
//! ([`crate::softmax`]'s `sum8`, `dot8`, `max8`), which the vectoriser may not reorder. Tests
//! run each kernel with [`wide`] switched off and on and compare bits.
//!
//! Hand-written rather than a crate (`multiversion`, `pulp`): one `target_feature` function and
//! a run-time check, used around closures that the kernels already have.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0 = not yet checked, 1 = baseline, 2 = AVX2.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// Runs `f`, compiled with AVX2 enabled when this CPU has it (see the module docs); the result
/// is the same bits either way.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == 2 {
            // SAFETY: `level` returns 2 only after `is_x86_feature_detected!("avx2")`.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// The vector level in use (1 baseline, 2 AVX2), detected on first use; `BLLM_SIMD=baseline`
/// keeps the baseline build (for comparisons).
fn level() -> u8 {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let baseline = std::env::var("BLLM_SIMD").is_ok_and(|v| v == "baseline");
            #[cfg(target_arch = "x86_64")]
            let l = if !baseline && std::arch::is_x86_feature_detected!("avx2") {
                2
            } else {
                1
            };
            #[cfg(not(target_arch = "x86_64"))]
            let l = {
                let _ = baseline;
                1
            };
            LEVEL.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    }
}

/// `f()` in a function compiled with AVX2: what `f` inlines is vectorised for it.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` with [`wide`] forced to the baseline build (`false`) or to detection (`true`), for
/// tests that compare the two; calls are serialised, and detection is back on afterwards.
/// Kernels of other tests running meanwhile see the switch too; both give the same bits, so
/// that changes only their speed.
#[cfg(test)]
pub(crate) fn with_wide<R>(on: bool, f: impl FnOnce() -> R) -> R {
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    LEVEL.store(if on { 0 } else { 1 }, Ordering::Relaxed);
    let r = f();
    LEVEL.store(0, Ordering::Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::{Int, Tensor, TensorData};
    use burn_flex::Flex;

    type Ad = Autodiff<Flex>;

    fn tensor<const D: usize>(shape: [usize; D], seed: u64, spread: f64) -> Tensor<Ad, D> {
        let n = shape.iter().product();
        let mut r = bllm_codes::rng::SplitMix64::new(seed);
        let v: Vec<f32> = (0..n)
            .map(|_| ((r.next_f64() - 0.5) * spread) as f32)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn bits<const D: usize>(t: Tensor<Ad, D>) -> Vec<u32> {
        t.into_data()
            .into_vec::<f32>()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Values and input gradients of every kernel `wide` runs, as bits. Sizes above the
    /// parallel threshold and below it, odd row lengths.
    fn kernels() -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut both = |y: Tensor<Ad, 2>, x: &Tensor<Ad, 2>| {
            let w = tensor(y.dims(), 99, 2.0);
            let g = x.grad(&(y.clone() * w).sum().backward());
            out.push(bits(y));
            out.push(
                g.map(|g| bits(Tensor::<Ad, 2>::from_inner(g)))
                    .unwrap_or_default(),
            );
        };
        for &(n, d) in &[(3usize, 37usize), (300, 515)] {
            let x = tensor([n, d], n as u64, 12.0).require_grad();
            both(crate::fused::gelu(x.clone()), &x);
            both(crate::fused::tanh_scaled(x.clone(), 0.7, 1.3), &x);
            both(crate::softmax::softmax(x.clone(), 1), &x);
            both(crate::softmax::log_softmax(x.clone(), 1), &x);
            let w = tensor([d], 5, 2.0);
            both(crate::norm::rms_norm(x.clone(), w, 1e-6), &x);
            let ln = burn::nn::LayerNormConfig::new(d).init::<Ad>(&Default::default());
            both(crate::norm::layer_norm(&ln, 1e-5, x.clone()), &x);
            let t: Vec<i64> = (0..n as i64).map(|i| i * 7 % d as i64).collect();
            let t = Tensor::<Ad, 1, Int>::from_data(TensorData::new(t, [n]), &Default::default());
            let ce = crate::softmax::cross_entropy(x.clone(), t);
            both(ce.reshape([1, 1]), &x);
            let target = crate::softmax::softmax(tensor([n, d], 8, 4.0), 1);
            let sce = crate::softmax::soft_cross_entropy(x.clone(), target);
            both(sce.reshape([1, 1]), &x);
        }
        let q = tensor([2, 4, 33, 16], 1, 2.0).require_grad();
        let k = tensor([2, 2, 33, 16], 2, 2.0).require_grad();
        let v = tensor([2, 2, 33, 16], 3, 2.0).require_grad();
        let mask = crate::attention::Mask::Causal { offset: 0 };
        let y = crate::attention::attention(q.clone(), k.clone(), v.clone(), mask, 0.25);
        let g = (y.clone() * tensor([2, 4, 33, 16], 4, 2.0))
            .sum()
            .backward();
        out.push(bits(y));
        for p in [q, k, v] {
            let gp = p.grad(&g).map(|g| bits(Tensor::<Ad, 4>::from_inner(g)));
            out.push(gp.unwrap_or_default());
        }
        out
    }

    #[test]
    fn baseline_and_wide_kernels_give_the_same_bits() {
        let (a, b) = (with_wide(false, kernels), with_wide(true, kernels));
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(!a.is_empty(), "result {i} is empty");
            assert!(
                a == b,
                "result {i} differs between the baseline and the AVX2 build"
            );
        }
    }

    #[test]
    fn exp_and_tanh_give_the_same_bits_in_both_builds() {
        let x: Vec<f32> = (0..4099)
            .map(|i| ((i * 7919) % 2000) as f32 / 97.0 - 10.0)
            .chain([-200.0, -87.5, 88.5, 300.0, 0.0, -0.0, 1e-5])
            .collect();
        let run = || {
            wide(|| {
                x.iter()
                    .map(|&v| {
                        let e = crate::fused::exp_f32(v);
                        let t = crate::fused::tanh_f32(v);
                        (e.to_bits(), t.to_bits())
                    })
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (with_wide(false, run), with_wide(true, run));
        assert_eq!(a, b);
    }
}
