//! Layer normalisation and RMS normalisation over the last dimension, each as one autodiff
//! operation on the CPU backends.
//!
//! Why: under `Autodiff`, Burn 0.21's `LayerNorm` is its backends' default `layer_norm`
//! composed of nine ops (`mean_dim`, `sub`, `mul`, `mean_dim`, `add_scalar`, `sqrt`, `div`,
//! and broadcast `mul`/`add` of γ and β) and about twice as many passes backward; an RMS norm
//! composed of Burn ops is six (`square`, `mean_dim`, `add_scalar`, `sqrt`, `recip`, two
//! broadcast `mul`s). Here (as in llm.c's `layernorm_forward/backward`):
//!
//! * **LayerNorm forward**, per row: `μ = mean(x)`, `σ² = mean((x − μ)²)` (biased, as Burn's),
//!   `r = 1/√(σ² + ε)`, `x̂ = (x − μ)·r`, `y = x̂·γ + β`; `x̂` and `r` are kept when tracked.
//! * **LayerNorm backward**, per row: `g = dy ⊙ γ`, `dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))`;
//!   and `dγ = Σ dy ⊙ x̂`, `dβ = Σ dy` over rows, summed per fixed block of rows, then the
//!   blocks in order.
//! * **RMS norm forward** ([`rms_norm`]), per row: `r = 1/√(mean(x²) + ε)`, `y = (x·r)·w`;
//!   `r` is kept (and `x`, in place on Flex) when tracked.
//! * **RMS norm backward**, per row: `x̂ = x·r`, `g = dy ⊙ w`, `dx = r·(g − x̂·mean(g ⊙ x̂))`;
//!   `dw = Σ dy ⊙ x̂` over rows, per fixed block of rows, then the blocks in order.
//!
//! Row sums use the eight fixed lanes of [`crate::softmax`] and row blocks are fixed, so the
//! bits do not depend on the thread count or the backend (tested). Values are within 1e-5 of
//! Burn's composed ops and gradients within 1e-5 relative (tested).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either (LayerNorm: rank 2,
//! with a β). Anything else runs Burn's ops.

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

use crate::host::{View, cast, values as host, zeros};
use crate::simd::wide;
use crate::softmax::{dot8, host_backend, sum8};

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
    let mut y = zeros(x.len());
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
            wide(|| {
                for ((y, x), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(r) {
                    row(x, y, r);
                }
            })
        });
    let xhat = if keep {
        y.par_iter().copied().collect()
    } else {
        Vec::new()
    };
    y.par_chunks_mut(BLOCK_ROWS * d).for_each(|y| {
        wide(|| {
            for y in y.chunks_exact_mut(d) {
                for ((y, g), b) in y.iter_mut().zip(gamma).zip(beta) {
                    *y = *y * g + b;
                }
            }
        })
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
    let mut dx = zeros(n * d);
    let blocks = n.div_ceil(BLOCK_ROWS);
    // Per block: partial dγ and dβ, then dx of its rows.
    let mut partial = vec![0f32; blocks * 2 * d];
    dx.par_chunks_mut(BLOCK_ROWS * d)
        .zip(partial.par_chunks_mut(2 * d))
        .enumerate()
        .for_each(|(bi, (dx, part))| {
            let (pg, pb) = part.split_at_mut(d);
            let mut g = vec![0f32; d];
            wide(|| {
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

/// `x·w / √(mean(x²) + ε)` over the last dimension (an RMS norm with gain `w`, as Llama's):
/// `x` `[…, d]`, `w` `[d]` → `[…, d]`. On the CPU backends one fused operation (module docs);
/// elsewhere [`rms_norm_reference`].
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dims = x.dims();
    let d = dims[D - 1];
    let fits = weight.dims() == [d]
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && host_backend::<B>();
    if !fits {
        return rms_norm_reference(x, weight, eps);
    }
    let n = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([n, d]);
    use crate::host::cast;
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    let y: Tensor<B, 2> = if id == TypeId::of::<Autodiff<Flex>>() {
        cast(rms_tracked::<Flex>(cast(x), cast(weight), eps as f32))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(rms_tracked::<NdArray>(cast(x), cast(weight), eps as f32))
    } else {
        let device = x.device();
        let (y, _) = rms_forward(&View::of(x), &host(weight), eps as f32);
        crate::host::tensor::<B, 2>(y, [n, d], &device)
    };
    y.reshape(dims)
}

/// The composed Burn ops [`rms_norm`] computes, for any backend.
pub fn rms_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let inv = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv * weight.unsqueeze::<D>()
}

/// RMS norm forward on the host: `(y, r)` for rows `x` `[n, d]`.
fn rms_forward(x: &View<2>, w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let [n, d] = x.dims;
    let mut y = zeros(n * d);
    let mut rstd = vec![0f32; n];
    if n * d == 0 {
        return (y, rstd);
    }
    y.par_chunks_mut(BLOCK_ROWS * d)
        .zip(rstd.par_chunks_mut(BLOCK_ROWS))
        .enumerate()
        .for_each(|(bi, (y, r))| {
            let mut buf = vec![0f32; d];
            wide(|| {
                for (i, (y, r)) in y.chunks_exact_mut(d).zip(r).enumerate() {
                    let xr = x.row_or(bi * BLOCK_ROWS + i, &mut buf);
                    *r = 1.0 / (dot8(xr, xr) / d as f32 + eps).sqrt();
                    for ((y, x), w) in y.iter_mut().zip(xr).zip(w) {
                        *y = (*x * *r) * w;
                    }
                }
            })
        });
    (y, rstd)
}

/// What the RMS norm's backward pass keeps.
#[derive(Clone, Debug)]
struct RmsState {
    x: View<2>,
    rstd: Arc<Vec<f32>>,
    w: Arc<Vec<f32>>,
}

/// RMS norm backward on the host: `(dx, dw)` from `dy` `[n, d]`.
fn rms_backward(dy: &View<2>, st: &RmsState) -> (Vec<f32>, Vec<f32>) {
    let [n, d] = st.x.dims;
    let mut dx = zeros(n * d);
    let blocks = n.div_ceil(BLOCK_ROWS);
    let mut partial = vec![0f32; blocks * d];
    if n * d == 0 {
        return (dx, vec![0f32; d]);
    }
    dx.par_chunks_mut(BLOCK_ROWS * d)
        .zip(partial.par_chunks_mut(d))
        .enumerate()
        .for_each(|(bi, (dx, pw))| {
            let (mut xb, mut gb) = (vec![0f32; d], vec![0f32; d]);
            let (mut xh, mut g) = (vec![0f32; d], vec![0f32; d]);
            wide(|| {
                for (i, dx) in dx.chunks_exact_mut(d).enumerate() {
                    let r = bi * BLOCK_ROWS + i;
                    let rs = st.rstd[r];
                    let xr = st.x.row_or(r, &mut xb);
                    let dyr = dy.row_or(r, &mut gb);
                    for j in 0..d {
                        xh[j] = xr[j] * rs;
                        pw[j] += dyr[j] * xh[j];
                        g[j] = dyr[j] * st.w[j];
                    }
                    let mgx = dot8(&g, &xh) / d as f32;
                    for ((dx, g), xh) in dx.iter_mut().zip(&g).zip(&xh) {
                        *dx = rs * (*g - *xh * mgx);
                    }
                }
            });
        });
    let mut dw = vec![0f32; d];
    for part in partial.chunks_exact(d) {
        for (s, p) in dw.iter_mut().zip(part) {
            *s += p;
        }
    }
    (dx, dw)
}

#[derive(Debug)]
struct RmsFused;

impl<B: Backend> Backward<B, 2> for RmsFused {
    type State = RmsState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy =
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = dy.device();
        let [n, d] = st.x.dims;
        let (dx, dw) = rms_backward(&View::of(dy), &st);
        let [px, pw] = ops.parents;
        if let Some(node) = px {
            let t = crate::host::tensor::<B, 2>(dx, [n, d], &device);
            grads.register::<B>(node.id, t.into_primitive().tensor());
        }
        if let Some(node) = pw {
            let t = crate::host::tensor::<B, 1>(dw, [d], &device);
            grads.register::<B>(node.id, t.into_primitive().tensor());
        }
    }
}

fn rms_tracked<B: Backend>(
    x: Tensor<Autodiff<B>, 2>,
    w: Tensor<Autodiff<B>, 1>,
    eps: f32,
) -> Tensor<Autodiff<B>, 2> {
    let [n, d] = x.dims();
    let device = x.device();
    let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let xv = View::of(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
        x.primitive,
    )));
    let wv = host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
        w.primitive,
    )));
    let (y, rstd) = rms_forward(&xv, &wv, eps);
    let out = crate::host::tensor::<B, 2>(y, [n, d], &device)
        .into_primitive()
        .tensor();
    let out = match RmsFused
        .prepare::<NoCheckpointing>([x.node, w.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            RmsState {
                x: xv,
                rstd: Arc::new(rstd),
                w: Arc::new(wv),
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
    /// Output and gradients (x, w) of `Σ c ⊙ rms_norm(x)` over a `[b, t, d]` input.
    fn run_rms<B: AutodiffBackend>([b, t, d]: [usize; 3], fused: bool) -> [Vec<f32>; 3] {
        let dev = Default::default();
        let x =
            Tensor::<B, 3>::from_data(TensorData::new(values(b * t * d, 1, 6.0), [b, t, d]), &dev)
                .require_grad();
        let w =
            Tensor::<B, 1>::from_data(TensorData::new(values(d, 5, 2.0), [d]), &dev).require_grad();
        let y = if fused {
            rms_norm(x.clone(), w.clone(), 1e-5)
        } else {
            rms_norm_reference(x.clone(), w.clone(), 1e-5)
        };
        let c =
            Tensor::<B, 3>::from_data(TensorData::new(values(b * t * d, 2, 2.0), [b, t, d]), &dev);
        let g = (y.clone() * c).sum().backward();
        [
            host(y),
            host(x.grad(&g).unwrap()),
            host(w.grad(&g).unwrap()),
        ]
    }

    #[test]
    fn rms_norm_matches_the_composed_ops_in_values_and_gradients() {
        for dims in [[1, 3, 8], [2, 70, 576], [3, 5, 13]] {
            let a = run_rms::<Autodiff<Flex>>(dims, true);
            let r = run_rms::<Autodiff<Flex>>(dims, false);
            for (i, what) in ["y", "dx", "dw"].iter().enumerate() {
                let m = r[i].iter().fold(1f32, |m, x| m.max(x.abs()));
                for (j, (x, y)) in a[i].iter().zip(&r[i]).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * m,
                        "{dims:?} {what}[{j}]: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn rms_norm_same_bits_for_backends_threads_and_inference() {
        let dims = [2, 100, 64];
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_rms::<Autodiff<Flex>>(dims, true))
        };
        let one = on(1);
        assert_eq!(one, on(2));
        assert_eq!(one, run_rms::<Autodiff<NdArray>>(dims, true));
        let dev = Default::default();
        let [b, t, d] = dims;
        let x = Tensor::<Flex, 3>::from_data(
            TensorData::new(values(b * t * d, 1, 6.0), [b, t, d]),
            &dev,
        );
        let w = Tensor::<Flex, 1>::from_data(TensorData::new(values(d, 5, 2.0), [d]), &dev);
        // A strided input (the transposed view of transposed memory) gives the same bits.
        let x2 = x.clone().reshape([b * t, d]);
        let xt =
            Tensor::<Flex, 2>::from_data(TensorData::new(host(x2.transpose()), [d, b * t]), &dev)
                .transpose();
        assert_eq!(host(rms_norm(x, w.clone(), 1e-5)), one[0]);
        assert_eq!(host(rms_norm(xt, w, 1e-5)), one[0]);
    }
}
