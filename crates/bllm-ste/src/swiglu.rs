//! The gated activation `silu(gate) ⊙ up` of Llama's MLP (SwiGLU) as one autodiff operation
//! on the CPU backends.
//!
//! Why: composed from Burn 0.21 ops it is a sigmoid, two multiplications, and backward the
//! sigmoid's and the products' nodes, each a pass over the `[tokens, ffn]` activations (the
//! widest in the model); here forward is one pass and backward one pass writing both
//! gradients.
//!
//! * **Forward**: `σ = 1/(1 + e^{−g})` (with [`crate::fused::exp_f32`]), `y = (g·σ)·u`.
//! * **Backward**: `du = dy·(g·σ)`, `dg = (dy·u)·σ·(1 + g·(1 − σ))` — the exact derivative of
//!   `silu`, recomputed from the kept `g` and `u` (read in place on Flex).
//!
//! Element-wise, so the bits do not depend on the thread count or the backend (tested); values
//! within 1e-6 relative of Burn's `silu(g)·u` and gradients within 1e-5 (tested).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either; elsewhere
//! [`swiglu_reference`].

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

use crate::fused::exp_f32;
use crate::host::{View, cast, tensor};
use crate::softmax::host_backend;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(gate) ⊙ up`, `silu(g) = g·σ(g)`: `gate` and `up` of one shape `[n, f]` → `[n, f]`.
/// On the CPU backends one fused operation (module docs); elsewhere [`swiglu_reference`].
pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    let fits = gate.dims() == up.dims()
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && host_backend::<B>();
    if !fits {
        return swiglu_reference(gate, up);
    }
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(tracked::<Flex>(cast(gate), cast(up)))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(tracked::<NdArray>(cast(gate), cast(up)))
    } else {
        let (dims, device) = (gate.dims(), gate.device());
        let y = forward(&View::of(gate), &View::of(up));
        tensor::<B, 2>(y, dims, &device)
    }
}

/// The composed Burn ops [`swiglu`] computes, for any backend.
pub fn swiglu_reference<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    burn::tensor::activation::silu(gate) * up
}

/// `σ(g)`.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-g))
}

/// The elements of a view, borrowed when contiguous.
fn elements(v: &View<2>) -> std::borrow::Cow<'_, [f32]> {
    match v.contiguous() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.to_vec()),
    }
}

fn forward(gate: &View<2>, up: &View<2>) -> Vec<f32> {
    let (g, u) = (elements(gate), elements(up));
    let mut y = vec![0f32; g.len()];
    y.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| {
            for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                *y = (*g * sigmoid(*g)) * *u;
            }
        });
    y
}

/// What the backward pass keeps.
#[derive(Clone, Debug)]
struct State {
    gate: View<2>,
    up: View<2>,
}

/// `(dg, du)`.
fn backward(dy: &View<2>, st: &State) -> (Vec<f32>, Vec<f32>) {
    let (g, u, d) = (elements(&st.gate), elements(&st.up), elements(dy));
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(u.par_chunks(CHUNK))
                .zip(d.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), d))| {
            for ((((dg, du), g), u), d) in dg.iter_mut().zip(du).zip(g).zip(u).zip(d) {
                let s = sigmoid(*g);
                *du = *d * (*g * s);
                *dg = (*d * *u) * (s * (1.0 + *g * (1.0 - s)));
            }
        });
    (dg, du)
}

#[derive(Debug)]
struct Fused;

impl<B: Backend> Backward<B, 2> for Fused {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy =
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (dims, device) = (dy.dims(), dy.device());
        let (dg, du) = backward(&View::of(dy), &st);
        let [pg, pu] = ops.parents;
        for (parent, v) in [(pg, dg), (pu, du)] {
            if let Some(node) = parent {
                grads.register::<B>(
                    node.id,
                    tensor::<B, 2>(v, dims, &device).into_primitive().tensor(),
                );
            }
        }
    }
}

fn tracked<B: Backend>(
    gate: Tensor<Autodiff<B>, 2>,
    up: Tensor<Autodiff<B>, 2>,
) -> Tensor<Autodiff<B>, 2> {
    let (dims, device) = (gate.dims(), gate.device());
    let (g, u) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let inner = |t: B::FloatTensorPrimitive| {
        View::of(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t)))
    };
    let state = State {
        gate: inner(g.primitive),
        up: inner(u.primitive),
    };
    let y = forward(&state.gate, &state.up);
    let out = tensor::<B, 2>(y, dims, &device).into_primitive().tensor();
    let out = match Fused
        .prepare::<NoCheckpointing>([g.node, u.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::backend::AutodiffBackend;

    fn vals(n: usize, seed: u64, scale: f64) -> Vec<f32> {
        crate::host::seeded(n, seed, scale)
    }

    /// Output and gradients (gate, up) of `Σ c ⊙ y`; `gate` a transposed view when `strided`.
    fn run<B: AutodiffBackend>([n, f]: [usize; 2], strided: bool, fused: bool) -> [Vec<f32>; 3] {
        let dev = Default::default();
        let g = if strided {
            tensor::<B, 2>(vals(n * f, 1, 24.0), [f, n], &dev).require_grad()
        } else {
            tensor::<B, 2>(vals(n * f, 1, 24.0), [n, f], &dev).require_grad()
        };
        let gg = if strided {
            g.clone().transpose()
        } else {
            g.clone()
        };
        let u = tensor::<B, 2>(vals(n * f, 2, 4.0), [n, f], &dev).require_grad();
        let y = if fused {
            swiglu(gg, u.clone())
        } else {
            swiglu_reference(gg, u.clone())
        };
        let c = tensor::<B, 2>(vals(n * f, 3, 4.0), [n, f], &dev);
        let gr = (y.clone() * c).sum().backward();
        [
            crate::host::values(y),
            crate::host::values(g.grad(&gr).unwrap()),
            crate::host::values(u.grad(&gr).unwrap()),
        ]
    }

    const CASES: [([usize; 2], bool); 3] = [([3, 7], false), ([64, 1536], false), ([33, 20], true)];

    #[test]
    fn matches_the_composed_ops() {
        for (dims, strided) in CASES {
            let a = run::<Autodiff<Flex>>(dims, strided, true);
            let r = run::<Autodiff<Flex>>(dims, strided, false);
            for (i, tol) in [(0, 1e-6f32), (1, 1e-5), (2, 1e-6)] {
                for (x, y) in a[i].iter().zip(&r[i]) {
                    assert!(
                        (x - y).abs() <= tol * y.abs().max(1.0),
                        "{dims:?} output {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn same_bits_for_backends_threads_and_inference() {
        for (dims, strided) in CASES {
            let a = run::<Autodiff<Flex>>(dims, strided, true);
            assert_eq!(a, run::<Autodiff<NdArray>>(dims, strided, true), "{dims:?}");
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run::<Autodiff<Flex>>(dims, strided, true));
            assert_eq!(a, one, "{dims:?}: 1 thread");
            let [n, f] = dims;
            let dev = Default::default();
            let g = tensor::<Flex, 2>(vals(n * f, 1, 24.0), [n, f], &dev);
            let u = tensor::<Flex, 2>(vals(n * f, 2, 4.0), [n, f], &dev);
            if !strided {
                assert_eq!(
                    crate::host::values(swiglu(g, u)),
                    a[0],
                    "{dims:?}: inference"
                );
            }
        }
    }
}
