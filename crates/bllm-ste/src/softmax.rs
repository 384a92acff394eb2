//! Softmax, log-softmax and cross-entropy over the last dimension as single autodiff operations
//! on the CPU backends, with explicitly vectorisable f32 row kernels.
//!
//! Why: Burn 0.21's autodiff softmax is composed of ops — `max`, `sub`, `exp`, `sum`, `div`
//! forward and about seven passes backward — so neither burn-flex's SIMD softmax nor any fused
//! kernel runs in training, and every `exp` is the scalar libm `expf` (the causal mask's −10⁹
//! scores all take glibc's slow underflow path). Cross-entropy adds a full log-softmax, a
//! gather, and a scatter into a zeroed `[n, vocabulary]` gradient. Here:
//!
//! * [`softmax`]: forward one pass per row (max, `exp`, sum, scale) keeping `y`; backward
//!   `∂x = y ⊙ (g − ⟨g, y⟩)`, one pass per row.
//! * [`log_softmax`]: forward `x − m − ln Σ eˣ⁻ᵐ` keeping `p = softmax(x)`; backward
//!   `∂x = g − p·Σg`.
//! * [`cross_entropy`]: the mean of `logsumexp(xᵢ) − xᵢ[tᵢ]` over rows, keeping `p`; backward
//!   `∂x = (p − onehot(t))·g/n` (llm.c's fused classifier).
//!
//! `exp` is [`crate::fused::exp_f32`] (relative error below 3·10⁻⁷), with `eᵈ = 0` for
//! `d < −87` (so masked scores at −10⁹ or −∞ get exactly 0, as in the composed op). Sums run in
//! eight fixed lanes by position in the row, and rows are split across threads in fixed blocks,
//! so results do not depend on the thread count or on buffer alignment. Values are within a few
//! ulps of Burn's composed ops and gradients equal theirs within 1e-6 (tested).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either; any other backend,
//! dtype or dimension falls back to Burn's own ops, so CUDA and wgpu are unchanged.

use std::any::Any;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use rayon::prelude::*;

use crate::fused::{CHUNK, PARALLEL_MIN, exp_f32};
use crate::simd::wide;

/// `softmax(x)` along dimension `dim` (`Σ = 1` over it). On the CPU backends, for the last
/// dimension: one fused pass forward and one backward (see the module docs); elsewhere Burn's
/// [`burn::tensor::activation::softmax`].
///
/// Shapes: any; the output has `x`'s shape.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    if dim + 1 != D || x.dtype() != DType::F32 {
        return burn::tensor::activation::softmax(x, dim);
    }
    match dispatch(x, Op::Softmax) {
        Ok(y) => y,
        Err(x) => burn::tensor::activation::softmax(x, dim),
    }
}

/// `log softmax(x)` along dimension `dim`. On the CPU backends, for the last dimension: one
/// fused pass forward and one backward; elsewhere Burn's
/// [`burn::tensor::activation::log_softmax`].
///
/// Shapes: any; the output has `x`'s shape.
pub fn log_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    if dim + 1 != D || x.dtype() != DType::F32 {
        return burn::tensor::activation::log_softmax(x, dim);
    }
    match dispatch(x, Op::LogSoftmax) {
        Ok(y) => y,
        Err(x) => burn::tensor::activation::log_softmax(x, dim),
    }
}

/// Mean cross-entropy in nats of `logits` `[n, classes]` against class indices `targets`
/// `[n]`: `mean(logsumexp(logitsᵢ) − logitsᵢ[targetsᵢ])`, shape `[1]` — what Burn's
/// `CrossEntropyLoss` (no smoothing, no padding) computes. On the CPU backends one fused pass
/// forward and one backward (no log-softmax tensor, no gather/scatter); elsewhere, or with a
/// target outside `0..classes`, Burn's composed ops (which reject such a target).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, classes] = logits.dims();
    let composed = |logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>| {
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets)
    };
    if logits.dtype() != DType::F32 || n == 0 || !host_backend::<B>() {
        return composed(logits, targets);
    }
    let t: Vec<usize> = targets
        .to_data()
        .convert::<i64>()
        .iter::<i64>()
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
        .collect();
    if t.iter().any(|&v| v >= classes) {
        return composed(logits, targets);
    }
    match dispatch(logits, Op::CrossEntropy(t)) {
        Ok(y) => y.reshape([1]),
        Err(x) => composed(x, targets),
    }
}

/// Mean cross-entropy in nats of `logits` `[n, classes]` against soft targets `target` (same
/// shape, typically rows of a probability distribution):
/// `−mean_i Σ_j targetᵢⱼ · log softmax(logitsᵢ)ⱼ`, shape `[1]`. `target` is a constant: no
/// gradient flows into it. The gradient is `∂logitsᵢ = (softmax(logitsᵢ)·Σ_j targetᵢⱼ −
/// targetᵢ)/n`. On the CPU backends one fused pass forward (`logsumexp·Σt − ⟨t, x⟩` per row)
/// and one backward, keeping only the softmax; elsewhere, or for shapes that differ, Burn's
/// composed `log_softmax`, product, row sum and mean. A masked logit (−10⁹) with target 0
/// contributes 0, as in the composed form.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let composed = |logits: Tensor<B, 2>, target: Tensor<B, 2>| {
        (crate::ops::constant(target) * burn::tensor::activation::log_softmax(logits, 1))
            .sum_dim(1)
            .mean()
            .neg()
    };
    if logits.dtype() != DType::F32
        || logits.dims()[0] == 0
        || logits.dims() != target.dims()
        || !host_backend::<B>()
    {
        return composed(logits, target);
    }
    let t = target
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("converted to f32"));
    match dispatch(logits, Op::SoftCrossEntropy(t)) {
        Ok(y) => y.reshape([1]),
        Err(_) => unreachable!("dispatch handles every backend host_backend accepts"),
    }
}

/// Which fused operation.
#[derive(Clone, Debug)]
enum Op {
    Softmax,
    LogSoftmax,
    /// With the target class of every row.
    CrossEntropy(Vec<usize>),
    /// With the soft targets, row-major in the logits' shape.
    SoftCrossEntropy(Vec<f32>),
}

/// Whether `B` is one of the backends [`dispatch`] handles.
pub(crate) fn host_backend<B: Backend>() -> bool {
    use std::any::TypeId;
    let b = TypeId::of::<B>();
    b == TypeId::of::<Flex>()
        || b == TypeId::of::<NdArray>()
        || b == TypeId::of::<Autodiff<Flex>>()
        || b == TypeId::of::<Autodiff<NdArray>>()
}

/// Moves `t` into type `U` when they are the same type (checked by [`Any`]).
pub(crate) fn same<T: 'static, U: 'static>(t: T) -> std::result::Result<U, T> {
    let b: Box<dyn Any> = Box::new(t);
    match b.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(b) => match b.downcast::<T>() {
            Ok(t) => Err(*t),
            // `b` was built from a `T` two lines up.
            Err(_) => unreachable!("a Box<dyn Any> holding a T downcasts to T"),
        },
    }
}

/// Runs `op` when `B` is a CPU backend this module handles; gives `x` back otherwise. For
/// cross-entropy the result has shape `[1, …]` (reshaped by the caller).
fn dispatch<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    op: Op,
) -> std::result::Result<Tensor<B, D>, Tensor<B, D>> {
    let x = match same::<_, Tensor<Autodiff<Flex>, D>>(x) {
        Ok(t) => return same(tracked::<Flex, D>(t, op)).map_err(|_| unreachable_type()),
        Err(x) => x,
    };
    let x = match same::<_, Tensor<Autodiff<NdArray>, D>>(x) {
        Ok(t) => return same(tracked::<NdArray, D>(t, op)).map_err(|_| unreachable_type()),
        Err(x) => x,
    };
    let x = match same::<_, Tensor<Flex, D>>(x) {
        Ok(t) => return same(plain::<Flex, D>(t, op)).map_err(|_| unreachable_type()),
        Err(x) => x,
    };
    match same::<_, Tensor<NdArray, D>>(x) {
        Ok(t) => same(plain::<NdArray, D>(t, op)).map_err(|_| unreachable_type()),
        Err(x) => Err(x),
    }
}

/// The cast back to `Tensor<B, D>` cannot fail: it is the type that was just matched.
fn unreachable_type() -> ! {
    unreachable!("a tensor cast back to the backend it was matched as")
}

/// Host rows of `x` and its shape.
fn host<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Vec<f32>, burn::tensor::Shape) {
    let shape = x.shape();
    let data = x.into_data();
    let v = data
        .into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("dtype checked to be f32 by the caller"));
    (v, shape)
}

/// Forward results: the output values, and what the backward pass keeps.
struct Forward {
    out: Vec<f32>,
    out_shape: burn::tensor::Shape,
    /// `y` (softmax; empty unless asked for) or `p` (log-softmax, cross-entropy).
    kept: Vec<f32>,
}

/// The forward kernel of `op` on host rows `x` (consumed) of shape `shape`; softmax copies its
/// output for the backward pass only when `keep` is set.
fn forward(mut x: Vec<f32>, shape: burn::tensor::Shape, op: &Op, keep: bool) -> Forward {
    let dims = shape.to_vec();
    let n = *dims.last().unwrap_or(&1);
    match op {
        Op::Softmax => {
            rows_mut(&mut x, n, |r| {
                softmax_row(r);
            });
            Forward {
                kept: if keep { x.clone() } else { Vec::new() },
                out: x,
                out_shape: shape,
            }
        }
        Op::LogSoftmax => {
            let mut p = x.clone();
            rows_mut2(&mut x, &mut p, n, |lp, p| {
                let lse = softmax_row(p);
                for v in lp.iter_mut() {
                    *v -= lse;
                }
            });
            Forward {
                out: x,
                out_shape: shape,
                kept: p,
            }
        }
        Op::CrossEntropy(_) | Op::SoftCrossEntropy(_) => {
            let n = n.max(1);
            // `x` becomes p; each row's loss reads what it needs of the row first.
            let loss = match op {
                Op::CrossEntropy(t) => each_row(&mut x, n, |i, r| {
                    let target = r[t[i]];
                    (softmax_row(r) - target) as f64
                }),
                Op::SoftCrossEntropy(t) => each_row(&mut x, n, |i, r| {
                    let t = &t[i * n..(i + 1) * n];
                    let (st, tx) = (sum8(t), dot8(t, r));
                    f64::from(softmax_row(r)) * f64::from(st) - f64::from(tx)
                }),
                Op::Softmax | Op::LogSoftmax => unreachable!("matched above"),
            };
            // Rows summed in order, in f64: the same bits for any thread count.
            let mean = (loss.iter().sum::<f64>() / loss.len() as f64) as f32;
            Forward {
                out: vec![mean],
                out_shape: burn::tensor::Shape::from(vec![1usize; dims.len()]),
                kept: x,
            }
        }
    }
}

/// Rows per parallel item for rows of `n` elements (about [`CHUNK`] elements an item, as the
/// element-wise kernels of [`crate::fused`]).
fn block_rows(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

/// `f(i, row)` on every row of `n` elements of `x`, its results in row order: on the calling
/// thread for small inputs, else rows in fixed blocks across the rayon pool; under
/// [`wide`] either way.
fn each_row<R: Send>(x: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) -> R + Sync) -> Vec<R> {
    let n = n.max(1);
    let f = |(i, r): (usize, &mut [f32])| wide(|| f(i, r));
    if x.len() < PARALLEL_MIN {
        x.chunks_mut(n).enumerate().map(f).collect()
    } else {
        x.par_chunks_mut(n)
            .enumerate()
            .with_min_len(block_rows(n))
            .map(f)
            .collect()
    }
}

/// `f` on every row of `n` elements of `x`, in fixed blocks across the rayon pool.
fn rows_mut(x: &mut [f32], n: usize, f: impl Fn(&mut [f32]) + Sync) {
    let n = n.max(1);
    if x.len() < PARALLEL_MIN {
        wide(|| x.chunks_mut(n).for_each(f));
    } else {
        x.par_chunks_mut(n * block_rows(n))
            .for_each(|b| wide(|| b.chunks_mut(n).for_each(&f)));
    }
}

/// `f` on every pair of rows of `n` elements of `a` and `b`.
fn rows_mut2(a: &mut [f32], b: &mut [f32], n: usize, f: impl Fn(&mut [f32], &mut [f32]) + Sync) {
    let n = n.max(1);
    if a.len() < PARALLEL_MIN {
        wide(|| {
            a.chunks_mut(n)
                .zip(b.chunks_mut(n))
                .for_each(|(a, b)| f(a, b))
        });
    } else {
        let s = n * block_rows(n);
        a.par_chunks_mut(s)
            .zip(b.par_chunks_mut(s))
            .for_each(|(a, b)| {
                wide(|| {
                    a.chunks_mut(n)
                        .zip(b.chunks_mut(n))
                        .for_each(|(a, b)| f(a, b))
                })
            });
    }
}

/// `f` on every row of `a` (mutable) with the matching row of `b`.
fn rows_with(a: &mut [f32], b: &[f32], n: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    let n = n.max(1);
    if a.len() < PARALLEL_MIN {
        wide(|| a.chunks_mut(n).zip(b.chunks(n)).for_each(|(a, b)| f(a, b)));
    } else {
        let s = n * block_rows(n);
        a.par_chunks_mut(s).zip(b.par_chunks(s)).for_each(|(a, b)| {
            wide(|| a.chunks_mut(n).zip(b.chunks(n)).for_each(|(a, b)| f(a, b)))
        });
    }
}

/// Sum of `v` in eight lanes by position (`v[i]` goes to lane `i mod 8`), lanes added as a
/// balanced tree: the same bits wherever `v` lives in memory.
#[inline(always)]
pub(crate) fn sum8(v: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let mut c = v.chunks_exact(8);
    for k in &mut c {
        for j in 0..8 {
            l[j] += k[j];
        }
    }
    for (j, x) in c.remainder().iter().enumerate() {
        l[j] += x;
    }
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// `⟨a, b⟩` in eight lanes by position, as [`sum8`].
#[inline(always)]
pub(crate) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            l[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        l[j] += x * y;
    }
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// Largest element of `v` (−∞ for an empty row; NaN elements are skipped, as `f32::max` does).
#[inline(always)]
fn max8(v: &[f32]) -> f32 {
    let mut l = [f32::NEG_INFINITY; 8];
    let mut c = v.chunks_exact(8);
    for k in &mut c {
        for j in 0..8 {
            l[j] = if k[j] > l[j] { k[j] } else { l[j] };
        }
    }
    for (j, x) in c.remainder().iter().enumerate() {
        l[j] = l[j].max(*x);
    }
    l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `e^d` for `d = x − max ≤ 0`, exactly 0 below −87 (masked scores).
#[inline(always)]
fn exp_shifted(d: f32) -> f32 {
    let e = exp_f32(d);
    if d < -87.0 { 0.0 } else { e }
}

/// Replaces row `r` by its softmax and returns its log-sum-exp `max + ln Σ e^{x − max}`.
/// A row whose maximum is not finite (all −∞, or +∞/NaN present) falls back to the plain
/// formula, which yields NaN as the composed op does.
#[inline(always)]
pub(crate) fn softmax_row(r: &mut [f32]) -> f32 {
    let m = max8(r);
    if !m.is_finite() {
        let m = if m == f32::NEG_INFINITY { m } else { f32::NAN };
        for v in r.iter_mut() {
            *v = f32::NAN;
        }
        return m + f32::NAN;
    }
    for v in r.iter_mut() {
        *v = exp_shifted(*v - m);
    }
    let s = sum8(r);
    let inv = 1.0 / s;
    for v in r.iter_mut() {
        *v *= inv;
    }
    m + s.ln()
}

/// The backward kernel of `op`: `g` (the upstream gradient, consumed) becomes `∂x`; `kept` is
/// what the forward pass kept (consumed: cross-entropy's gradient is written over `p`).
fn backward(mut g: Vec<f32>, kept: Vec<f32>, n: usize, op: &Op) -> Vec<f32> {
    let kept = match op {
        Op::CrossEntropy(t) => return ce_backward(g[0], kept, t, n),
        Op::SoftCrossEntropy(t) => return soft_ce_backward(g[0], kept, t, n),
        _ => kept,
    };
    match op {
        Op::Softmax => rows_with(&mut g, &kept, n, |g, y| {
            let d = dot8(g, y);
            for (g, y) in g.iter_mut().zip(y) {
                *g = *y * (*g - d);
            }
        }),
        Op::LogSoftmax => rows_with(&mut g, &kept, n, |g, p| {
            let s = sum8(g);
            for (g, p) in g.iter_mut().zip(p) {
                *g -= *p * s;
            }
        }),
        Op::CrossEntropy(_) | Op::SoftCrossEntropy(_) => {}
    }
    g
}

/// Cross-entropy's backward: `(p − onehot(t))·g/rows`, written over `p`.
fn ce_backward(g: f32, mut out: Vec<f32>, t: &[usize], n: usize) -> Vec<f32> {
    let k = g / t.len() as f32;
    each_row(&mut out, n, |i, r| {
        r[t[i]] -= 1.0;
        for v in r.iter_mut() {
            *v *= k;
        }
    });
    out
}

/// Soft cross-entropy's backward: `(p·Σt − t)·g/rows` row by row, written over `p`.
fn soft_ce_backward(g: f32, mut out: Vec<f32>, t: &[f32], n: usize) -> Vec<f32> {
    let n = n.max(1);
    let k = g / (out.len() / n).max(1) as f32;
    each_row(&mut out, n, |i, p| {
        let t = &t[i * n..(i + 1) * n];
        let st = sum8(t);
        for (p, t) in p.iter_mut().zip(t) {
            *p = (*p * st - *t) * k;
        }
    });
    out
}

/// `op` on `x`'s host data, back as a tensor of backend `B`: the output, what the backward
/// pass keeps (see [`forward`]) and `x`'s shape.
fn on_host<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    op: &Op,
    keep: bool,
) -> (Tensor<B, D>, Vec<f32>, burn::tensor::Shape) {
    let device = x.device();
    let (v, shape) = host(x);
    let f = forward(v, shape.clone(), op, keep);
    let out = Tensor::from_data(TensorData::new(f.out, f.out_shape), &device);
    (out, f.kept, shape)
}

/// `op` without autodiff on backend `B`.
fn plain<B: Backend, const D: usize>(x: Tensor<B, D>, op: Op) -> Tensor<B, D> {
    on_host(x, &op, false).0
}

/// What the backward pass of a fused op keeps.
#[derive(Clone, Debug)]
struct Kept {
    op: Op,
    /// `y` or `p`, row-major.
    values: std::sync::Arc<Vec<f32>>,
    /// Elements per row.
    n: usize,
    /// The input's shape.
    shape: burn::tensor::Shape,
}

/// The autodiff node of a fused op on a rank-`D` input.
#[derive(Debug)]
struct Fused<const D: usize>;

impl<B: Backend, const D: usize> Backward<B, 1> for Fused<D> {
    type State = Kept;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let k = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let g = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(grad));
            let device = g.device();
            let g = g
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_else(|_| unreachable!("converted to f32"));
            // The state is consumed here, so its buffer is normally free to reuse.
            let kept = std::sync::Arc::try_unwrap(k.values).unwrap_or_else(|a| (*a).clone());
            let dx = backward(g, kept, k.n, &k.op);
            Tensor::<B, D>::from_data(TensorData::new(dx, k.shape.clone()), &device)
                .into_primitive()
                .tensor()
        });
    }
}

/// `op` on `Autodiff<B>`: the host kernel forward, registered as one node whose backward is
/// the host backward kernel.
fn tracked<B: Backend, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    op: Op,
) -> Tensor<Autodiff<B>, D> {
    let xt = x.into_primitive().tensor();
    let kind = Fused::<D>
        .prepare::<NoCheckpointing>([xt.node.clone()])
        .compute_bound()
        .stateful();
    let keep = matches!(kind, OpsKind::Tracked(_));
    let inner = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(xt.primitive));
    let (out, kept, shape) = on_host(inner, &op, keep);
    let out = out.into_primitive().tensor();
    let out = match kind {
        OpsKind::Tracked(prep) => {
            let n = *shape.as_slice().last().unwrap_or(&1);
            let kept = Kept {
                op,
                values: std::sync::Arc::new(kept),
                n,
                shape,
            };
            prep.finish(kept, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ad = Autodiff<Flex>;
    type AdNd = Autodiff<NdArray>;

    fn input<B: Backend>(shape: [usize; 3], seed: u64, masked: f32) -> Tensor<B, 3> {
        let n = shape.iter().product::<usize>();
        let mut r = bllm_codes::rng::SplitMix64::new(seed);
        let mut v: Vec<f32> = (0..n)
            .map(|_| ((r.next_f64() - 0.5) * 12.0) as f32)
            .collect();
        // A causal mask on the last two dimensions.
        let (t, c) = (shape[1], shape[2]);
        for (i, x) in v.iter_mut().enumerate() {
            let (row, col) = ((i / c) % t, i % c);
            if col > row {
                *x = masked;
            }
        }
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Value and input gradient of `sum(f(x) ⊙ w)` for a fixed random `w`.
    fn value_and_grad<B: burn::tensor::backend::AutodiffBackend>(
        x: Tensor<B, 3>,
        f: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = x.require_grad();
        let y = f(x.clone());
        // Weights from a local generator (Burn's RNG is global, shared by concurrent tests).
        let mut r = bllm_codes::rng::SplitMix64::new(11);
        let w: Vec<f32> = (0..y.shape().num_elements())
            .map(|_| (r.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let w = Tensor::<B, 3>::from_data(TensorData::new(w, y.shape()), &y.device());
        let grads = (y.clone() * w).sum().backward();
        let g = x.grad(&grads).map(vec).unwrap_or_default();
        (vec(y), g)
    }

    #[test]
    fn softmax_and_log_softmax_match_burns_values_and_gradients_on_every_cpu_backend() {
        for &masked in &[-1e9f32, f32::NEG_INFINITY] {
            for &shape in &[[2, 5, 5], [3, 17, 17], [1, 64, 64], [2, 3, 300]] {
                type Sm<B> = fn(Tensor<B, 3>) -> Tensor<B, 3>;
                let cases: [(Sm<Ad>, Sm<Ad>, &str); 2] = [
                    (
                        |x| softmax(x, 2),
                        |x| burn::tensor::activation::softmax(x, 2),
                        "softmax",
                    ),
                    (
                        |x| log_softmax(x, 2),
                        |x| burn::tensor::activation::log_softmax(x, 2),
                        "log_softmax",
                    ),
                ];
                for (fused, reference, name) in cases {
                    let (y, g) = value_and_grad(input::<Ad>(shape, 1, masked), fused);
                    let (yr, gr) = value_and_grad(input::<Ad>(shape, 1, masked), reference);
                    // log-softmax of a masked entry is −∞ or about −1e9 either way.
                    let finite: Vec<(f32, f32)> = y
                        .iter()
                        .zip(&yr)
                        .filter(|(a, _)| a.abs() < 1e6)
                        .map(|(a, b)| (*a, *b))
                        .collect();
                    let dy = finite
                        .iter()
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        dy < 2e-6,
                        "{name} {shape:?} mask {masked}: value off by {dy}"
                    );
                    let scale = gr.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let dg = max_diff(&g, &gr);

                    assert!(
                        dg < 1e-6 * scale,
                        "{name} {shape:?}: gradient off by {dg} (max |g| {scale})"
                    );
                    if name == "softmax" {
                        // Masked positions are exactly 0, as in the composed op.
                        let t = shape[1];
                        for (i, v) in y.iter().enumerate() {
                            if i % shape[2] > (i / shape[2]) % t {
                                assert_eq!(*v, 0.0);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ndarray_and_flex_and_inference_give_the_same_bits() {
        let shape = [4, 33, 33];
        let f = vec(softmax(input::<Flex>(shape, 3, -1e9), 2));
        let n = vec(softmax(input::<NdArray>(shape, 3, -1e9), 2));
        let (a, _) = value_and_grad(input::<AdNd>(shape, 3, -1e9), |x| softmax(x, 2));
        assert_eq!(f, n);
        assert_eq!(f, a);
        let lf = vec(log_softmax(input::<Flex>(shape, 3, -1e9), 2));
        let (la, _) = value_and_grad(input::<Ad>(shape, 3, -1e9), |x| log_softmax(x, 2));
        assert_eq!(lf, la);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Large enough for the parallel path (≥ PARALLEL_MIN elements), odd row length.
        let shape = [8, 101, 131];
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap_or_else(|e| panic!("thread pool: {e}"));
            pool.install(|| {
                let (y, g) = value_and_grad(input::<Ad>(shape, 5, -1e9), |x| softmax(x, 2));
                let (ly, lg) = value_and_grad(input::<Ad>(shape, 5, -1e9), |x| log_softmax(x, 2));
                let l = input::<Ad>([1, 808, 131], 6, 0.0)
                    .reshape([808, 131])
                    .require_grad();
                let t = Tensor::<Ad, 1, Int>::from_data(
                    TensorData::new((0..808).map(|i| (i * 7 % 131) as i64).collect(), [808]),
                    &Default::default(),
                );
                let ce = cross_entropy(l.clone(), t);
                let cg = l.grad(&ce.clone().backward()).map(vec).unwrap_or_default();
                (y, g, ly, lg, vec(ce), cg)
            })
        };
        let (a, b) = (run(1), run(2));
        assert!(a.0 == b.0, "softmax values differ");
        assert!(a.1 == b.1, "softmax gradients differ");
        assert!(a.2 == b.2, "log-softmax values differ");
        assert!(a.3 == b.3, "log-softmax gradients differ");
        assert!(a.4 == b.4, "cross-entropy differs");
        assert!(a.5 == b.5, "cross-entropy gradients differ");
    }

    #[test]
    fn cross_entropy_matches_burns_loss_and_gradient() {
        for &(n, v) in &[(1usize, 3usize), (7, 256), (300, 257), (64, 1000)] {
            let mut r = bllm_codes::rng::SplitMix64::new(n as u64);
            let x: Vec<f32> = (0..n * v)
                .map(|_| ((r.next_f64() - 0.5) * 20.0) as f32)
                .collect();
            let t: Vec<i64> = (0..n).map(|_| (r.next_u64() % v as u64) as i64).collect();
            let run = |fused: bool| {
                let d = Default::default();
                let l = Tensor::<Ad, 2>::from_data(TensorData::new(x.clone(), [n, v]), &d)
                    .require_grad();
                let tt = Tensor::<Ad, 1, Int>::from_data(TensorData::new(t.clone(), [n]), &d);
                let loss = if fused {
                    cross_entropy(l.clone(), tt)
                } else {
                    burn::nn::loss::CrossEntropyLossConfig::new()
                        .init(&d)
                        .forward(l.clone(), tt)
                };
                let g = l.grad(&loss.clone().mul_scalar(3.0).backward()).map(vec);
                (vec(loss), g.unwrap_or_default())
            };
            let ((a, ga), (b, gb)) = (run(true), run(false));
            assert_eq!(a.len(), 1);
            assert!(
                (a[0] - b[0]).abs() <= 2e-6 * b[0].abs().max(1.0),
                "{n}×{v}: {a:?} vs {b:?}"
            );
            assert!(
                max_diff(&ga, &gb) < 1e-6,
                "{n}×{v}: gradient off by {}",
                max_diff(&ga, &gb)
            );
        }
    }

    /// Logits (a diagonal masked at −10⁹) and soft targets (softmax rows, zero on the mask).
    fn soft_case(n: usize, v: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut r = bllm_codes::rng::SplitMix64::new(seed);
        let mut x: Vec<f32> = (0..n * v)
            .map(|_| ((r.next_f64() - 0.5) * 20.0) as f32)
            .collect();
        let mut t = vec![0f32; n * v];
        for i in 0..n {
            x[i * v + i % v] = -1e9;
            let row = &mut t[i * v..(i + 1) * v];
            for (j, t) in row.iter_mut().enumerate() {
                if j != i % v {
                    *t = (r.next_f64() * 4.0).exp() as f32;
                }
            }
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|t| *t /= s);
        }
        (x, t)
    }

    /// Soft cross-entropy and its logits' gradient (loss scaled by 3) on `B`, fused or composed.
    fn soft_run<B: burn::tensor::backend::AutodiffBackend>(
        x: &[f32],
        t: &[f32],
        [n, v]: [usize; 2],
        fused: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = Default::default();
        let l = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [n, v]), &d).require_grad();
        let tt = Tensor::<B, 2>::from_data(TensorData::new(t.to_vec(), [n, v]), &d).require_grad();
        let loss = if fused {
            soft_cross_entropy(l.clone(), tt.clone())
        } else {
            (crate::ops::constant(tt.clone()) * burn::tensor::activation::log_softmax(l.clone(), 1))
                .sum_dim(1)
                .mean()
                .neg()
        };
        let grads = loss.clone().mul_scalar(3.0).backward();
        assert!(
            tt.grad(&grads).is_none(),
            "no gradient flows into the targets"
        );
        (vec(loss), l.grad(&grads).map(vec).unwrap_or_default())
    }

    #[test]
    fn soft_cross_entropy_matches_the_composed_loss_and_gradient() {
        for &(n, v) in &[(1usize, 3usize), (7, 256), (300, 257), (64, 1000)] {
            let (x, t) = soft_case(n, v, n as u64 + 17);
            for (name, (a, ga), (b, gb)) in [
                (
                    "flex",
                    soft_run::<Ad>(&x, &t, [n, v], true),
                    soft_run::<Ad>(&x, &t, [n, v], false),
                ),
                (
                    "ndarray",
                    soft_run::<AdNd>(&x, &t, [n, v], true),
                    soft_run::<AdNd>(&x, &t, [n, v], false),
                ),
            ] {
                assert_eq!(a.len(), 1);
                assert!(
                    (a[0] - b[0]).abs() <= 2e-6 * b[0].abs().max(1.0),
                    "{name} {n}×{v}: {a:?} vs {b:?}"
                );
                assert!(
                    max_diff(&ga, &gb) < 1e-6,
                    "{name} {n}×{v}: gradient off by {}",
                    max_diff(&ga, &gb)
                );
            }
        }
        // Shapes that differ are Burn's business (it rejects them); equal shapes never fall back.
        let (x, t) = soft_case(4, 9, 3);
        let l = Tensor::<Flex, 2>::from_data(TensorData::new(x, [4, 9]), &Default::default());
        let tt = Tensor::<Flex, 2>::from_data(TensorData::new(t, [4, 9]), &Default::default());
        let plain = vec(soft_cross_entropy(l.clone(), tt.clone()));
        let composed = vec((tt * burn::tensor::activation::log_softmax(l, 1))
            .sum_dim(1)
            .mean()
            .neg());
        assert!((plain[0] - composed[0]).abs() <= 2e-6 * composed[0].abs().max(1.0));
    }

    #[test]
    fn soft_cross_entropy_does_not_depend_on_the_thread_count() {
        let (x, t) = soft_case(300, 1001, 5);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap_or_else(|e| panic!("thread pool: {e}"))
                .install(|| soft_run::<Ad>(&x, &t, [300, 1001], true))
        };
        let (a, b) = (run(1), run(2));
        assert!(a.0 == b.0, "soft cross-entropy differs");
        assert!(a.1 == b.1, "soft cross-entropy gradients differ");
    }

    #[test]
    fn other_dimensions_and_backends_fall_back_to_burn() {
        let x = input::<Flex>([2, 4, 6], 9, 0.0);
        let a = vec(softmax(x.clone(), 1));
        let b = vec(burn::tensor::activation::softmax(x, 1));
        assert_eq!(a, b);
    }
}
