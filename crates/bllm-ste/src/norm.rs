//! Layer normalisation over the last dimension as one autodiff operation on the CPU backends.
//!
//! Why: under `Autodiff`, Burn 0.21's `LayerNorm` is its backends' default `layer_norm`
//! composed of nine ops (`mean_dim`, `sub`, `mul`, `mean_dim`, `add_scalar`, `sqrt`, `div`,
//! and broadcast `mul`/`add` of γ and β) and about twice as many passes backward. Here (as in
//! llm.c's `layernorm_forward/backward`):
//!
//! * **Forward**, per row: `μ = mean(x)`, `σ² = mean((x − μ)²)` (biased, as Burn's),
//!   `r = 1/√(σ² + ε)`, `x̂ = (x − μ)·r`, `y = x̂·γ + β`; `x̂` and `r` are kept when tracked.
//! * **Backward**, per row: `g = dy ⊙ γ`, `dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))`; and
//!   `dγ = Σ dy ⊙ x̂`, `dβ = Σ dy` over rows, summed per fixed block of rows, then the blocks in
//!   order.
//!
//! Row sums use the eight fixed lanes of [`crate::softmax`] and row blocks are fixed, so the
//! bits do not depend on the thread count or the backend (tested). Values are within 1e-5 of
//! Burn's composed op and gradients within 1e-5 relative (tested).
//!
//! Handled: rank-2 f32 tensors of `Flex`, `NdArray` and `Autodiff` over either, with a β.
//! Anything else runs Burn's `LayerNorm` op.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use rayon::prelude::*;

use crate::softmax::{dot8, host_backend, same, sum8};

/// Rows per parallel block, and per partial sum of `dγ`, `dβ`.
const BLOCK_ROWS: usize = 64;

/// `ln.forward(x)` for token states `x` `[n, d]`: on the CPU backends one fused operation
/// (module docs); elsewhere, or without a β, Burn's `LayerNorm::forward`.
pub fn layer_norm<B: Backend>(ln: &LayerNorm<B>, eps: f64, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let gamma = ln.gamma.val();
    let beta = ln.beta.as_ref().map(|b| b.val());
    let [_, d] = x.dims();
    let fits = gamma.dims() == [d]
        && beta.as_ref().is_some_and(|b| b.dims() == [d])
        && [
            Some(x.dtype()),
            Some(gamma.dtype()),
            beta.as_ref().map(|b| b.dtype()),
        ]
        .iter()
        .all(|t| *t == Some(DType::F32))
        && host_backend::<B>();
    match (fits, beta) {
        (true, Some(beta)) => dispatch(x, gamma, beta, eps as f32),
        _ => ln.forward(x),
    }
}

/// Host values of a tensor.
fn host<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("converted to f32"))
}

/// Forward on host rows `x` `[n, d]`: `(y, x̂, r)`; `x̂` and `r` only when `keep`.
fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: usize,
    eps: f32,
    keep: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = x.len() / d;
    let mut y = vec![0f32; x.len()];
    let mut xhat = if keep {
        vec![0f32; x.len()]
    } else {
        Vec::new()
    };
    let mut rstd = vec![0f32; n];
    let row = |x: &[f32], y: &mut [f32], r: &mut f32| {
        let mu = sum8(x) / d as f32;
        for (y, x) in y.iter_mut().zip(x) {
            *y = *x - mu;
        }
        let var = dot8(y, y) / d as f32;
        *r = 1.0 / (var + eps).sqrt();
        for y in y.iter_mut() {
            *y *= *r;
        }
    };
    y.par_chunks_mut(BLOCK_ROWS * d)
        .zip(x.par_chunks(BLOCK_ROWS * d))
        .zip(rstd.par_chunks_mut(BLOCK_ROWS))
        .for_each(|((y, x), r)| {
            for ((y, x), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(r) {
                row(x, y, r);
            }
        });
    if keep {
        xhat.copy_from_slice(&y);
    }
    y.par_chunks_mut(BLOCK_ROWS * d).for_each(|y| {
        for y in y.chunks_exact_mut(d) {
            for ((y, g), b) in y.iter_mut().zip(gamma).zip(beta) {
                *y = *y * g + b;
            }
        }
    });
    (y, xhat, rstd)
}

/// What the backward pass keeps.
#[derive(Clone, Debug)]
struct State {
    xhat: Arc<Vec<f32>>,
    rstd: Arc<Vec<f32>>,
    gamma: Arc<Vec<f32>>,
    n: usize,
    d: usize,
}

/// Backward on the host: `(dx, dγ, dβ)` from `dy`.
fn backward(dy: &[f32], st: &State) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, d) = (st.n, st.d);
    let mut dx = vec![0f32; n * d];
    let blocks = n.div_ceil(BLOCK_ROWS);
    // Per block: partial dγ and dβ, then dx of its rows.
    let mut partial = vec![0f32; blocks * 2 * d];
    dx.par_chunks_mut(BLOCK_ROWS * d)
        .zip(partial.par_chunks_mut(2 * d))
        .enumerate()
        .for_each(|(bi, (dx, part))| {
            let (pg, pb) = part.split_at_mut(d);
            let mut g = vec![0f32; d];
            for (i, dx) in dx.chunks_exact_mut(d).enumerate() {
                let r = bi * BLOCK_ROWS + i;
                let dy = &dy[r * d..(r + 1) * d];
                let xh = &st.xhat[r * d..(r + 1) * d];
                for j in 0..d {
                    pg[j] += dy[j] * xh[j];
                    pb[j] += dy[j];
                    g[j] = dy[j] * st.gamma[j];
                }
                let mg = sum8(&g) / d as f32;
                let mgx = dot8(&g, xh) / d as f32;
                let rs = st.rstd[r];
                for ((dx, g), xh) in dx.iter_mut().zip(&g).zip(xh) {
                    *dx = rs * (*g - mg - *xh * mgx);
                }
            }
        });
    let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
    for part in partial.chunks_exact(2 * d) {
        for j in 0..d {
            dg[j] += part[j];
            db[j] += part[d + j];
        }
    }
    (dx, dg, db)
}

/// Runs the fused op; `B` is one of the four backends (checked by the caller).
fn dispatch<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, 2> {
    use std::any::TypeId;
    fn cast<T: 'static, U: 'static>(t: T) -> U {
        same::<T, U>(t)
            .unwrap_or_else(|_| unreachable!("a tensor cast to the backend it was matched as"))
    }
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(tracked::<Flex>(cast(x), cast(gamma), cast(beta), eps))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(tracked::<NdArray>(cast(x), cast(gamma), cast(beta), eps))
    } else {
        // Flex or NdArray without autodiff.
        let [n, d] = x.dims();
        let device = x.device();
        let (y, _, _) = forward(&host(x), &host(gamma), &host(beta), d, eps, false);
        Tensor::from_data(TensorData::new(y, [n, d]), &device)
    }
}

#[derive(Debug)]
struct Fused;

impl<B: Backend> Backward<B, 3> for Fused {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy =
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = dy.device();
        let (dx, dg, db) = backward(&host(dy), &st);
        let [px, pg, pb] = ops.parents;
        if let Some(node) = px {
            let t = Tensor::<B, 2>::from_data(TensorData::new(dx, [st.n, st.d]), &device);
            grads.register::<B>(node.id, t.into_primitive().tensor());
        }
        for (parent, v) in [(pg, dg), (pb, db)] {
            if let Some(node) = parent {
                let t = Tensor::<B, 1>::from_data(TensorData::new(v, [st.d]), &device);
                grads.register::<B>(node.id, t.into_primitive().tensor());
            }
        }
    }
}

fn tracked<B: Backend>(
    x: Tensor<Autodiff<B>, 2>,
    gamma: Tensor<Autodiff<B>, 1>,
    beta: Tensor<Autodiff<B>, 1>,
    eps: f32,
) -> Tensor<Autodiff<B>, 2> {
    let [n, d] = x.dims();
    let device = x.device();
    let (x, gamma, beta) = (
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
    );
    let kind = Fused
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    let keep = matches!(kind, OpsKind::Tracked(_));
    let xv = host(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
        x.primitive,
    )));
    let gv = host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
        gamma.primitive,
    )));
    let bv = host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
        beta.primitive,
    )));
    let (y, xhat, rstd) = forward(&xv, &gv, &bv, d, eps, keep);
    let out = Tensor::<B, 2>::from_data(TensorData::new(y, [n, d]), &device)
        .into_primitive()
        .tensor();
    let out = match kind {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                xhat: Arc::new(xhat),
                rstd: Arc::new(rstd),
                gamma: Arc::new(gv),
                n,
                d,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::backend::AutodiffBackend;

    fn values(n: usize, seed: u64, scale: f64) -> Vec<f32> {
        let mut r = bllm_codes::rng::SplitMix64::new(seed);
        (0..n)
            .map(|_| ((r.next_f64() - 0.3) * scale) as f32)
            .collect()
    }

    /// Output and gradients (x, γ, β) of `Σ w ⊙ ln(x)`, fused or Burn's.
    fn run<B: AutodiffBackend>(n: usize, d: usize, fused: bool) -> [Vec<f32>; 4] {
        let dev = Default::default();
        let mut ln = LayerNormConfig::new(d).with_epsilon(1e-12).init::<B>(&dev);
        ln.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(values(d, 5, 2.0), [d]),
            &dev,
        ));
        ln.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(values(d, 6, 1.0), [d]),
            &dev,
        )));
        let x = Tensor::<B, 2>::from_data(TensorData::new(values(n * d, 1, 6.0), [n, d]), &dev)
            .require_grad();
        let y = if fused {
            layer_norm(&ln, 1e-12, x.clone())
        } else {
            ln.forward(x.clone())
        };
        let w = Tensor::<B, 2>::from_data(TensorData::new(values(n * d, 2, 2.0), [n, d]), &dev);
        let g = (y.clone() * w).sum().backward();
        let gamma = ln.gamma.val().grad(&g).unwrap();
        let beta = ln.beta.as_ref().unwrap().val().grad(&g).unwrap();
        [host(y), host(x.grad(&g).unwrap()), host(gamma), host(beta)]
    }

    #[test]
    fn matches_burns_layer_norm_in_values_and_gradients() {
        for (n, d) in [(3, 8), (130, 384), (7, 13)] {
            let a = run::<Autodiff<Flex>>(n, d, true);
            let r = run::<Autodiff<Flex>>(n, d, false);
            for (i, what) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
                let m = r[i].iter().fold(1f32, |m, x| m.max(x.abs()));
                for (j, (x, y)) in a[i].iter().zip(&r[i]).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * m,
                        "[{n}, {d}] {what}[{j}]: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn same_bits_for_backends_and_thread_counts() {
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run::<Autodiff<Flex>>(200, 64, true))
        };
        let one = on(1);
        assert_eq!(one, on(2));
        assert_eq!(one, run::<Autodiff<NdArray>>(200, 64, true));
    }
}
