//! Rotary position embedding `x·cos + rotate_half(x)·sin` as one autodiff operation on the CPU
//! backends.
//!
//! Why: composed from Burn 0.21 ops, RoPE is two slices, a negation, a concatenation and two
//! broadcast multiplications and an add, each a pass over the heads; burn-flex walks the
//! broadcast tables and the strided head views one element at a time. On SmolLM2 fine-tuning
//! that was ~6 % of a step (`perf`, README). Here one pass reads the head view in place and
//! writes the result; backward is one pass too.
//!
//! * **Forward**, per element of a head row `x = [x₁, x₂]` (halves of `dh`):
//!   `y₁ = x₁·cos₁ − x₂·sin₁`, `y₂ = x₂·cos₂ + x₁·sin₂` — the composed form's products and sum
//!   in the same order, so the same bits (tested).
//! * **Backward**: `dx₁ = dy₁·cos₁ + dy₂·sin₂`, `dx₂ = dy₂·cos₂ − dy₁·sin₁` (the tables get no
//!   gradient).
//! * **Layout**: `x` is a head-major `[b, h, t, dh]` tensor, read in place through its strides
//!   on Flex (a projection's output split into heads); the output is a head-major view of
//!   token-major memory, as [`crate::attention::attention`]'s.
//!
//! Element-wise, so the bits do not depend on the thread count (tested).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either; elsewhere
//! [`rope_reference`].

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use rayon::prelude::*;

use crate::host::{View, cast, tensor, values, zeros};
use crate::softmax::host_backend;

/// `x·cos + rotate_half(x)·sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]` over the last dimension.
///
/// Shapes: `x` `[b, h, t, dh]` (`dh` even), `cos` and `sin` `[1, 1, t, dh]` (no gradient flows
/// into them) → `[b, h, t, dh]`. On the CPU backends one fused operation (module docs);
/// elsewhere [`rope_reference`].
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, t, dh] = x.dims();
    let fits = dh % 2 == 0
        && cos.dims() == [1, 1, t, dh]
        && sin.dims() == [1, 1, t, dh]
        && [x.dtype(), cos.dtype(), sin.dtype()]
            .iter()
            .all(|d| *d == DType::F32)
        && host_backend::<B>();
    if !fits {
        return rope_reference(x, cos, sin);
    }
    let tables = Tables {
        cos: Arc::new(values(cos)),
        sin: Arc::new(values(sin)),
    };
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(tracked::<Flex>(cast(x), tables))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(tracked::<NdArray>(cast(x), tables))
    } else {
        let device = x.device();
        let dims = x.dims();
        head_major::<B>(rotate(&View::of(x), &tables, false), dims, &device)
    }
}

/// The composed Burn ops [`rope`] computes, for any backend.
pub fn rope_reference<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, dh] = x.dims();
    let half = dh / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..dh]);
    let rot = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rot * sin
}

/// The tables `[t, dh]` on the host.
#[derive(Clone, Debug)]
struct Tables {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

/// Token-major `[b, t, h, dh]` rotation of the head-major view `x` `[b, h, t, dh]`: forward,
/// or with `inverse` the backward map (the transpose: `sin` negated).
fn rotate(x: &View<4>, tab: &Tables, inverse: bool) -> Vec<f32> {
    let [b, h, t, dh] = x.dims;
    let half = dh / 2;
    let [sb, sh, st, sd] = x.strides;
    let data = x.data();
    let mut out = zeros(b * t * h * dh);
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(h * dh).enumerate().for_each(|(bt, o)| {
        let (bi, ti) = (bt / t, bt % t);
        let c = &tab.cos[ti * dh..(ti + 1) * dh];
        let s = &tab.sin[ti * dh..(ti + 1) * dh];
        let mut xr = vec![0f32; dh];
        for (hh, y) in o.chunks_exact_mut(dh).enumerate() {
            let base = x.offset + bi * sb + hh * sh + ti * st;
            if sd == 1 {
                xr.copy_from_slice(&data[base..base + dh]);
            } else {
                for (j, v) in xr.iter_mut().enumerate() {
                    *v = data[base + j * sd];
                }
            }
            let (x1, x2) = xr.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            if inverse {
                // dx₁ = dy₁·cos₁ + dy₂·sin₂, dx₂ = dy₂·cos₂ − dy₁·sin₁.
                for j in 0..half {
                    y1[j] = x1[j] * c[j] + x2[j] * s[half + j];
                    y2[j] = x2[j] * c[half + j] - x1[j] * s[j];
                }
            } else {
                // y₁ = x₁·cos₁ + (−x₂)·sin₁, y₂ = x₂·cos₂ + x₁·sin₂ (the composed order).
                for j in 0..half {
                    y1[j] = x1[j] * c[j] + (-x2[j]) * s[j];
                    y2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
                }
            }
        }
    });
    out
}

/// A head-major `[b, h, t, dh]` tensor over token-major data `[b, t, h, dh]`.
fn head_major<B: Backend>(
    x: Vec<f32>,
    [b, h, t, dh]: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    tensor::<B, 4>(x, [b, t, h, dh], device).swap_dims(1, 2)
}

#[derive(Debug)]
struct Fused;

impl<B: Backend> Backward<B, 1> for Fused {
    type State = Tables;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy =
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let device = dy.device();
            let dims = dy.dims();
            let dx = rotate(&View::of(dy), &ops.state, true);
            grads.register::<B>(
                node.id,
                head_major::<B>(dx, dims, &device).into_primitive().tensor(),
            );
        }
    }
}

fn tracked<B: Backend>(x: Tensor<Autodiff<B>, 4>, tables: Tables) -> Tensor<Autodiff<B>, 4> {
    let device = x.device();
    let dims = x.dims();
    let x = x.into_primitive().tensor();
    let y = rotate(
        &View::of(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
            x.primitive,
        ))),
        &tables,
        false,
    );
    let out = head_major::<B>(y, dims, &device).into_primitive().tensor();
    let out = match Fused
        .prepare::<NoCheckpointing>([x.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(tables, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::backend::AutodiffBackend;

    /// Seeded values in `[-2, 2)`.
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::host::seeded(n, seed, 4.0)
    }

    /// Output and `∂(Σ c ⊙ y)/∂x` for a head-major view `[b, h, t, dh]`.
    fn run<B: AutodiffBackend>([b, h, t, dh]: [usize; 4], fused: bool) -> [Vec<f32>; 2] {
        let dev = Default::default();
        let x = tensor::<B, 4>(vals(b * t * h * dh, 1), [b, t, h, dh], &dev).require_grad();
        let heads = x.clone().swap_dims(1, 2);
        let table = |seed| tensor::<B, 4>(vals(t * dh, seed), [1, 1, t, dh], &dev);
        let (cos, sin) = (table(2), table(3));
        let y = if fused {
            rope(heads, cos, sin)
        } else {
            rope_reference(heads, cos, sin)
        };
        let c = tensor::<B, 4>(vals(b * h * t * dh, 4), [b, h, t, dh], &dev);
        let g = (y.clone() * c).sum().backward();
        [values(y), values(x.grad(&g).unwrap())]
    }

    const CASES: [[usize; 4]; 3] = [[2, 3, 5, 8], [1, 9, 7, 64], [3, 1, 1, 2]];

    #[test]
    fn forward_bits_and_gradients_match_the_composed_ops() {
        for dims in CASES {
            let [y, dx] = run::<Autodiff<Flex>>(dims, true);
            let [y_ref, dx_ref] = run::<Autodiff<Flex>>(dims, false);
            assert_eq!(y, y_ref, "{dims:?}: forward bits");
            for (a, r) in dx.iter().zip(&dx_ref) {
                assert!(
                    (a - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "{dims:?}: {a} vs {r}"
                );
            }
        }
    }

    #[test]
    fn ndarray_threads_and_inference_give_the_same_bits() {
        for dims in CASES {
            let a = run::<Autodiff<Flex>>(dims, true);
            assert_eq!(a, run::<Autodiff<NdArray>>(dims, true), "{dims:?}");
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run::<Autodiff<Flex>>(dims, true));
            assert_eq!(a, one, "{dims:?}: 1 thread");
            let [b, h, t, dh] = dims;
            let dev = Default::default();
            let x = tensor::<Flex, 4>(vals(b * t * h * dh, 1), [b, t, h, dh], &dev);
            let table = |seed| tensor::<Flex, 4>(vals(t * dh, seed), [1, 1, t, dh], &dev);
            let y = rope(x.swap_dims(1, 2), table(2), table(3));
            assert_eq!(values(y), a[0], "{dims:?}: inference");
        }
    }
}
