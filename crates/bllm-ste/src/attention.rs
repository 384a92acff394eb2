//! Scaled dot-product attention `softmax(s·QKᵀ + mask)·V` as one autodiff operation on the CPU
//! backends: one matrix-product kernel per head, no score tensor built from Burn ops, no copy of
//! the head-split views.
//!
//! Why: composed from Burn 0.21 ops, attention on the CPU is `matmul` (which copies its strided
//! head views), a scale pass, a broadcast add of the key mask (burn-flex walks broadcast operands
//! one element at a time), the softmax, a second `matmul`, and a copy to swap the heads back;
//! backward adds as many passes again. On MiniLM fine-tuning that overhead was ~15 % of a step
//! next to the matrix products themselves (`bllm bench train`, README). This is what
//! PyTorch's and llm.c's CPU attention kernels do instead.
//!
//! * **Forward**, per (batch, head): gather `Q`, `K`, `V` of that head into contiguous
//!   scratch, `S = s·QKᵀ` (one `gemm` call), the mask, each row's softmax (the kernel of
//!   [`crate::softmax`]), `O = PV`. `P` is kept for the backward pass when the op is tracked.
//! * **Backward**, per (batch, key/value head): for each query head of the group,
//!   `dP = dO·Vᵀ`, `dS = s·P ⊙ (dP − ⟨dP, P⟩)` per row, `dQ = dS·K`, `dK += dSᵀQ`,
//!   `dV += PᵀdO` (the heads of a group are summed in order, so grouped-query attention needs
//!   no expanded copies of K and V).
//! * **Layouts**: inputs and output are head-major `[batch, heads, tokens, head_dim]` tensors.
//!   On Flex the inputs are read in place through their strides (the usual
//!   `reshape([b, t, h, dh]).swap_dims(1, 2)` view costs nothing), and the output is returned as
//!   a head-major view of token-major memory, so the caller's `swap_dims(1, 2).reshape([b·t, d])`
//!   costs nothing either.
//!
//! Determinism: every head is computed by one task with `gemm`'s single-threaded kernel on
//! contiguous copies of its operands (so the layout of the inputs does not matter), tasks write
//! disjoint outputs, and rows are reduced with the fixed-lane sums of [`crate::softmax`]: the
//! same bits for any thread count, on Flex and NdArray alike (tested). Against the composed ops
//! the values differ by float rounding only (tested: outputs within 1e-5, gradients within
//! 1e-5 relative).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either. Any other backend or
//! dtype runs the composed Burn ops ([`attention_reference`]), so CUDA and wgpu are unchanged.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use rayon::prelude::*;

use crate::host::{View, cast, zeros};
use crate::softmax::{dot8, host_backend, softmax_row};

/// Which scores a query may not see.
#[derive(Clone, Debug)]
pub enum Mask<B: Backend> {
    /// Every query sees every key.
    None,
    /// Query `i` sees keys `j ≤ offset + i` (a causal decoder; `offset` = tokens already in a
    /// key/value cache). The other scores are −∞, so their weights are exactly 0.
    Causal {
        /// Keys before the first query.
        offset: usize,
    },
    /// An additive bias `[batch, keys]` on every query's scores (e.g. 0 for tokens and −10³⁰
    /// for padding, [`bias`](Self::KeyBias)). It gets no gradient.
    KeyBias(Tensor<B, 2>),
    /// Sequences packed along the token axis, no padding: `t = s = Σ lengths`, and the queries of
    /// sequence `i` (the `lengths[i]` tokens after the first `Σ_{j<i} lengths[j]`) see only
    /// the keys of sequence `i` (block-diagonal attention). An unpadded encoder batch is one
    /// batch element of this; with `b > 1` every element is split the same way. The fused
    /// kernel computes each sequence's block alone, so no padding token or masked score is
    /// computed at all. Every length must be positive.
    Segments(Arc<[usize]>),
}

impl<B: Backend> Mask<B> {
    /// Whether the mask fits a call of batch `b`, `t` queries and `s` keys: a `KeyBias` of
    /// `[b, s]`, `Segments` of positive lengths summing to `t` (= `s`); always for the others.
    fn fits(&self, b: usize, t: usize, s: usize) -> bool {
        match self {
            Mask::KeyBias(m) => m.dims() == [b, s],
            Mask::Segments(lens) => {
                t == s && lens.iter().all(|&l| l > 0) && lens.iter().sum::<usize>() == t
            }
            Mask::None | Mask::Causal { .. } => true,
        }
    }
}

/// `softmax(scale·QKᵀ + mask)·V` per head.
///
/// Shapes: `q` `[b, heads, t, dh]`, `k` and `v` `[b, kv_heads, s, dh]` with `heads` a multiple
/// of `kv_heads` (query head `h` reads key/value head `h / (heads / kv_heads)`) → `[b, heads, t,
/// dh]`. On the CPU backends one fused operation (module docs); elsewhere
/// [`attention_reference`].
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Mask<B>,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, h, t, dh] = q.dims();
    let [bk, hk, s, dk] = k.dims();
    let fits = b == bk
        && k.dims() == v.dims()
        && dk == dh
        && hk > 0
        && h % hk == 0
        && t > 0
        && s > 0
        && dh > 0
        && mask.fits(b, t, s);
    let f32s = [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|d| *d == DType::F32);
    if !fits || !f32s || !host_backend::<B>() {
        return attention_reference(q, k, v, mask, scale);
    }
    match dispatch(q, k, v, mask, scale) {
        Ok(o) => o,
        Err((q, k, v, mask)) => attention_reference(q, k, v, mask, scale),
    }
}

/// The composed Burn ops [`attention`] computes, for any backend: `matmul`, scale, mask,
/// [`crate::softmax::softmax`], `matmul`, with key/value heads repeated for grouped queries.
pub fn attention_reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Mask<B>,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, h, t, _] = q.dims();
    let [_, hk, s, dh] = k.dims();
    let expand = |x: Tensor<B, 4>| {
        let rep = h / hk.max(1);
        if rep <= 1 {
            return x;
        }
        x.reshape([b, hk, 1, s, dh])
            .expand([b, hk, rep, s, dh])
            .reshape([b, h, s, dh])
    };
    let scores = q.matmul(expand(k).swap_dims(2, 3)).mul_scalar(scale);
    // The scores a query may not see, `[t, s]`, for the causal and the segment masks.
    let hidden: Option<Vec<bool>> = match &mask {
        Mask::Causal { offset } => Some((0..t * s).map(|n| n % s > offset + n / s).collect()),
        Mask::Segments(lens) => {
            assert!(
                mask.fits(b, t, s),
                "attention: Mask::Segments {lens:?} must be positive lengths summing to t = s \
                 (t = {t}, s = {s})"
            );
            let seg: Vec<usize> = lens
                .iter()
                .enumerate()
                .flat_map(|(i, &l)| std::iter::repeat_n(i, l))
                .collect();
            Some((0..t * s).map(|n| seg[n / s] != seg[n % s]).collect())
        }
        Mask::None | Mask::KeyBias(_) => None,
    };
    let scores = match (mask, hidden) {
        (Mask::KeyBias(bias), _) => scores + bias.reshape([b, 1, 1, s]),
        (_, Some(hidden)) => {
            let hidden = Tensor::<B, 2, burn::tensor::Bool>::from_data(
                TensorData::new(hidden, [t, s]),
                &scores.device(),
            )
            .reshape([1, 1, t, s])
            .expand([b, h, t, s]);
            scores.mask_fill(hidden, f32::NEG_INFINITY)
        }
        _ => scores,
    };
    crate::softmax::softmax(scores, 3).matmul(expand(v))
}

/// The mask on the host.
#[derive(Clone, Debug)]
enum HostMask {
    None,
    Causal(usize),
    /// `[b, s]` row-major.
    Bias(Arc<Vec<f32>>),
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    hk: usize,
    t: usize,
    s: usize,
    dh: usize,
    scale: f32,
}

impl Dims {
    /// Query heads per key/value head.
    fn rep(&self) -> usize {
        self.h / self.hk
    }
}

/// One independent block of a call: batch element `b`'s queries `q0..q0 + t` against its keys
/// `k0..k0 + s`. A padded or causal call has one unit per batch element; `Mask::Segments` one
/// per sequence and batch element.
#[derive(Clone, Copy, Debug)]
struct Unit {
    b: usize,
    q0: usize,
    t: usize,
    k0: usize,
    s: usize,
}

/// The units of a call, in token order (batch-major).
fn units(d: &Dims, segments: Option<&[usize]>) -> Vec<Unit> {
    let one = [d.t];
    let lens = segments.unwrap_or(&one);
    let mut out = Vec::with_capacity(d.b * lens.len());
    for b in 0..d.b {
        let mut start = 0;
        for &n in lens {
            let s = if segments.is_some() { n } else { d.s };
            out.push(Unit {
                b,
                q0: start,
                t: n,
                k0: start,
                s,
            });
            start += n;
        }
    }
    out
}

/// `buf` cut into consecutive disjoint pieces of the given sizes (which must fit).
fn pieces(mut buf: &mut [f32], sizes: impl Iterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for n in sizes {
        let (a, rest) = std::mem::take(&mut buf).split_at_mut(n);
        out.push(a);
        buf = rest;
    }
    out
}

/// Attention's operands are read through [`View`]s of rank 4.
impl View<4> {
    /// Rows `r0..r0 + n` of head `(b, h)` into `dst` `[n, dh]`, contiguous.
    fn gather(&self, (b, h): (usize, usize), (r0, n): (usize, usize), dh: usize, dst: &mut [f32]) {
        let data = self.data();
        let [sb, sh, st, sd] = self.strides;
        let base = self.offset + b * sb + h * sh + r0 * st;
        for (i, row) in dst[..n * dh].chunks_exact_mut(dh).enumerate() {
            let r = base + i * st;
            if sd == 1 {
                row.copy_from_slice(&data[r..r + dh]);
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = data[r + j * sd];
                }
            }
        }
    }
}

/// `dst[m, n] (+)= beta · lhs[m, k] · rhs[k, n]`, all row-major except where a transposed
/// operand is read through its strides; `gemm`'s single-threaded kernel.
#[allow(clippy::too_many_arguments)]
fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (l_rs, l_cs): (usize, usize),
    rhs: &[f32],
    (r_rs, r_cs): (usize, usize),
    beta: f32,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(
        dst.len() >= m * n
            && lhs.len() > last(m, k, l_rs, l_cs)
            && rhs.len() > last(k, n, r_rs, r_cs),
        "attention kernel: operand sizes"
    );
    // SAFETY: the assertion above bounds every element gemm reads or writes: dst is m × n
    // row-major, lhs is m × k and rhs k × n at the given strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            l_cs as isize,
            l_rs as isize,
            rhs.as_ptr(),
            r_cs as isize,
            r_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Masks and normalises the scores `p` `[u.t, u.s]` of unit `u` in place.
fn mask_softmax(p: &mut [f32], u: &Unit, d: &Dims, mask: &HostMask) {
    for (i, row) in p.chunks_exact_mut(u.s).enumerate() {
        match mask {
            HostMask::None => {}
            HostMask::Causal(offset) => {
                let first = (offset + i + 1).min(u.s);
                row[first..].fill(f32::NEG_INFINITY);
            }
            HostMask::Bias(bias) => {
                let base = u.b * d.s + u.k0;
                for (x, m) in row.iter_mut().zip(&bias[base..base + u.s]) {
                    *x += m;
                }
            }
        }
        softmax_row(row);
    }
}

/// Offsets of each unit's block in a buffer of per-unit blocks of `size(u)` elements.
fn offsets(units: &[Unit], size: impl Fn(&Unit) -> usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(units.len() + 1);
    let mut at = 0;
    out.push(0);
    for u in units {
        at += size(u);
        out.push(at);
    }
    out
}

/// Forward on the host: the output token-major `[b, t, h, dh]`, and `P` (per unit and head,
/// `[u.t, u.s]` blocks) when `keep`.
fn forward(
    q: &View<4>,
    k: &View<4>,
    v: &View<4>,
    mask: &HostMask,
    d: &Dims,
    units: &[Unit],
    keep: bool,
) -> (Vec<f32>, Vec<f32>) {
    let dh = d.dh;
    let mut heads = zeros(d.b * d.h * d.t * dh);
    let p_len: usize = units.iter().map(|u| d.h * u.t * u.s).sum();
    let mut kept = if keep { zeros(p_len) } else { Vec::new() };
    // Tasks in (unit, head) order.
    let task_unit = |i: usize| &units[i / d.h];
    let head = |i: usize, o: &mut [f32], p: &mut [f32]| {
        let (u, h) = (task_unit(i), i % d.h);
        let g = h / d.rep();
        let (t, s) = (u.t, u.s);
        let mut qh = vec![0f32; t * dh];
        let mut kh = vec![0f32; s * dh];
        let mut vh = vec![0f32; s * dh];
        q.gather((u.b, h), (u.q0, t), dh, &mut qh);
        k.gather((u.b, g), (u.k0, s), dh, &mut kh);
        v.gather((u.b, g), (u.k0, s), dh, &mut vh);
        // S = scale · Q Kᵀ: Kᵀ read through K's strides (row = dim, column = key).
        mm((t, s, dh), p, false, &qh, (dh, 1), &kh, (1, dh), d.scale);
        mask_softmax(p, u, d, mask);
        mm((t, dh, s), o, false, p, (s, 1), &vh, (dh, 1), 1.0);
    };
    let task = |i: usize, o: &mut [f32], p: &mut [f32]| crate::simd::wide(|| head(i, o, p));
    let n_tasks = units.len() * d.h;
    let o_parts = pieces(&mut heads, (0..n_tasks).map(|i| task_unit(i).t * dh));
    if keep {
        let p_parts = pieces(
            &mut kept,
            (0..n_tasks).map(|i| task_unit(i).t * task_unit(i).s),
        );
        o_parts
            .into_par_iter()
            .zip(p_parts)
            .enumerate()
            .for_each(|(i, (o, p))| task(i, o, p));
    } else {
        o_parts.into_par_iter().enumerate().for_each(|(i, o)| {
            let u = task_unit(i);
            task(i, o, &mut vec![0f32; u.t * u.s])
        });
    }
    let rows = |u: &Unit| (u.q0, u.t);
    (token_major(&heads, d.h, dh, units, d.t, rows), kept)
}

/// Per-unit blocks `[h, n, dh]` (unit-major; `rows(u)` = the unit's first row and row count
/// on a token axis of `len` per batch element) → token-major `[b, len, h, dh]`, rows of `dh`
/// moved whole.
fn token_major(
    x: &[f32],
    h: usize,
    dh: usize,
    units: &[Unit],
    len: usize,
    rows: impl Fn(&Unit) -> (usize, usize) + Sync,
) -> Vec<f32> {
    let b = units.last().map_or(0, |u| u.b + 1);
    let mut out = zeros(b * len * h * dh);
    let src = offsets(units, |u| h * rows(u).1 * dh);
    // Units are in token order and cover the axis, so each owns a contiguous output block.
    let dst = pieces(&mut out, units.iter().map(|u| rows(u).1 * h * dh));
    dst.into_par_iter().enumerate().for_each(|(ui, block)| {
        let n = rows(&units[ui]).1;
        let x = &x[src[ui]..src[ui + 1]];
        block
            .par_chunks_mut(h * dh)
            .enumerate()
            .for_each(|(i, row)| {
                for (hh, dst) in row.chunks_exact_mut(dh).enumerate() {
                    let at = (hh * n + i) * dh;
                    dst.copy_from_slice(&x[at..at + dh]);
                }
            });
    });
    out
}

/// Backward on the host: `(dq, dk, dv)` token-major, from the output's gradient `go`.
fn backward(go: &View<4>, st: &State) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = &st.dims;
    let units = &st.units[..];
    let (dh, rep) = (d.dh, d.rep());
    let mut dq = zeros(d.b * d.h * d.t * dh);
    let mut dk = zeros(d.b * d.hk * d.s * dh);
    let mut dv = zeros(d.b * d.hk * d.s * dh);
    // Tasks in (unit, key/value head) order.
    let task_unit = |i: usize| &units[i / d.hk];
    let n_tasks = units.len() * d.hk;
    let dq_parts = pieces(&mut dq, (0..n_tasks).map(|i| rep * task_unit(i).t * dh));
    let dk_parts = pieces(&mut dk, (0..n_tasks).map(|i| task_unit(i).s * dh));
    let dv_parts = pieces(&mut dv, (0..n_tasks).map(|i| task_unit(i).s * dh));
    let p_at = offsets(units, |u| d.h * u.t * u.s);
    dq_parts
        .into_par_iter()
        .zip(dk_parts)
        .zip(dv_parts)
        .enumerate()
        .for_each(|(i, ((dqg, dkg), dvg))| {
            let (ui, g) = (i / d.hk, i % d.hk);
            let p = &st.p[p_at[ui]..p_at[ui + 1]];
            crate::simd::wide(|| backward_group(go, st, (&units[ui], g, p), dqg, dkg, dvg))
        });
    (
        token_major(&dq, d.h, dh, units, d.t, |u| (u.q0, u.t)),
        token_major(&dk, d.hk, dh, units, d.s, |u| (u.k0, u.s)),
        token_major(&dv, d.hk, dh, units, d.s, |u| (u.k0, u.s)),
    )
}

/// The gradients of one unit's key/value group `g` (its `rep` query heads; `p` the unit's
/// weights, `[h, t, s]`), into `dq`, `dk`, `dv`'s blocks of that group.
fn backward_group(
    go: &View<4>,
    st: &State,
    (u, g, p_unit): (&Unit, usize, &[f32]),
    dqg: &mut [f32],
    dkg: &mut [f32],
    dvg: &mut [f32],
) {
    let d = &st.dims;
    let (t, s, dh, rep) = (u.t, u.s, d.dh, d.rep());
    let mut kh = vec![0f32; s * dh];
    let mut vh = vec![0f32; s * dh];
    let mut qh = vec![0f32; t * dh];
    let mut goh = vec![0f32; t * dh];
    let mut ds = vec![0f32; t * s];
    st.k.gather((u.b, g), (u.k0, s), dh, &mut kh);
    st.v.gather((u.b, g), (u.k0, s), dh, &mut vh);
    for r in 0..rep {
        let h = g * rep + r;
        let p = &p_unit[h * t * s..][..t * s];
        st.q.gather((u.b, h), (u.q0, t), dh, &mut qh);
        go.gather((u.b, h), (u.q0, t), dh, &mut goh);
        // dP = dO Vᵀ, then dS = scale · P ⊙ (dP − ⟨dP, P⟩) row by row.
        mm((t, s, dh), &mut ds, false, &goh, (dh, 1), &vh, (1, dh), 1.0);
        for (g_row, p_row) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
            let dot = dot8(g_row, p_row);
            for (x, y) in g_row.iter_mut().zip(p_row) {
                *x = d.scale * (*y * (*x - dot));
            }
        }
        let dqh = &mut dqg[r * t * dh..(r + 1) * t * dh];
        mm((t, dh, s), dqh, false, &ds, (s, 1), &kh, (dh, 1), 1.0);
        // dK += dSᵀ Q, dV += Pᵀ dO (dSᵀ and Pᵀ read through their strides).
        mm((s, dh, t), dkg, r > 0, &ds, (1, s), &qh, (dh, 1), 1.0);
        mm((s, dh, t), dvg, r > 0, p, (1, s), &goh, (dh, 1), 1.0);
    }
}

/// A head-major `[b, h, n, dh]` tensor over token-major data `[b, n, h, dh]`.
fn head_major<B: Backend>(
    x: Vec<f32>,
    [b, h, n, dh]: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::<B, 4>::from_data(TensorData::new(x, [b, n, h, dh]), device).swap_dims(1, 2)
}

/// The mask's values on the host.
fn host_mask<B: Backend>(mask: Mask<B>) -> HostMask {
    match mask {
        Mask::None => HostMask::None,
        Mask::Causal { offset } => HostMask::Causal(offset),
        Mask::KeyBias(bias) => HostMask::Bias(Arc::new(
            bias.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_else(|_| unreachable!("converted to f32")),
        )),
        // The segments are the units themselves ([`units`]); within one every key is seen.
        Mask::Segments(_) => HostMask::None,
    }
}

/// The segment lengths of a `Mask::Segments`.
fn segments_of<B: Backend>(mask: &Mask<B>) -> Option<Arc<[usize]>> {
    match mask {
        Mask::Segments(lens) => Some(lens.clone()),
        _ => None,
    }
}

type Args<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Mask<B>);

/// Converts every tensor of a call to backend `U` (the same type as `B`, checked by the caller).
fn cast_args<B: Backend, U: Backend>((q, k, v, mask): Args<B>) -> Args<U> {
    let mask = match mask {
        Mask::None => Mask::None,
        Mask::Causal { offset } => Mask::Causal { offset },
        Mask::KeyBias(m) => Mask::KeyBias(cast(m)),
        Mask::Segments(lens) => Mask::Segments(lens),
    };
    (cast(q), cast(k), cast(v), mask)
}

/// Runs the fused op when `B` is a CPU backend handled here; gives the arguments back otherwise.
fn dispatch<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Mask<B>,
    scale: f64,
) -> std::result::Result<Tensor<B, 4>, Args<B>> {
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    let args = (q, k, v, mask);
    if id == TypeId::of::<Autodiff<Flex>>() {
        Ok(cast(tracked::<Flex>(cast_args(args), scale)))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        Ok(cast(tracked::<NdArray>(cast_args(args), scale)))
    } else if id == TypeId::of::<Flex>() {
        Ok(cast(plain::<Flex>(cast_args(args), scale)))
    } else if id == TypeId::of::<NdArray>() {
        Ok(cast(plain::<NdArray>(cast_args(args), scale)))
    } else {
        Err(args)
    }
}

fn dims_of<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, scale: f64) -> Dims {
    let [b, h, t, dh] = q.dims();
    let [_, hk, s, _] = k.dims();
    Dims {
        b,
        h,
        hk,
        t,
        s,
        dh,
        scale: scale as f32,
    }
}

/// The fused op without autodiff.
fn plain<B: Backend>((q, k, v, mask): Args<B>, scale: f64) -> Tensor<B, 4> {
    let d = dims_of(&q, &k, scale);
    let device = q.device();
    let units = units(&d, segments_of(&mask).as_deref());
    let (o, _) = forward(
        &View::of(q),
        &View::of(k),
        &View::of(v),
        &host_mask(mask),
        &d,
        &units,
        false,
    );
    head_major::<B>(o, [d.b, d.h, d.t, d.dh], &device)
}

/// What the backward pass keeps.
#[derive(Clone, Debug)]
struct State {
    q: View<4>,
    k: View<4>,
    v: View<4>,
    /// The attention weights, `[h, u.t, u.s]` per unit.
    p: Arc<Vec<f32>>,
    dims: Dims,
    units: Arc<[Unit]>,
}

#[derive(Debug)]
struct Fused;

impl<B: Backend> Backward<B, 3> for Fused {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let d = st.dims;
        let go =
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = go.device();
        let (dq, dk, dv) = backward(&View::of(go), &st);
        let [pq, pk, pv] = ops.parents;
        for (parent, g, h, n) in [(pq, dq, d.h, d.t), (pk, dk, d.hk, d.s), (pv, dv, d.hk, d.s)] {
            if let Some(node) = parent {
                let g = head_major::<B>(g, [d.b, h, n, d.dh], &device);
                grads.register::<B>(node.id, g.into_primitive().tensor());
            }
        }
    }
}

/// The fused op on `Autodiff<B>`: one node with three parents.
fn tracked<B: Backend>((q, k, v, mask): Args<Autodiff<B>>, scale: f64) -> Tensor<Autodiff<B>, 4> {
    let d = dims_of(&q, &k, scale);
    let device = q.device();
    let [q, k, v] = [q, k, v].map(|x| x.into_primitive().tensor());
    let kind = Fused
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let qv = View::of(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
        q.primitive,
    )));
    let kv = View::of(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
        k.primitive,
    )));
    let vv = View::of(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
        v.primitive,
    )));
    let units: Arc<[Unit]> = units(&d, segments_of(&mask).as_deref()).into();
    let mask = host_mask(mask);
    let keep = matches!(kind, OpsKind::Tracked(_));
    let (o, p) = forward(&qv, &kv, &vv, &mask, &d, &units, keep);
    let out = head_major::<B>(o, [d.b, d.h, d.t, d.dh], &device)
        .into_primitive()
        .tensor();
    let out = match kind {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                q: qv,
                k: kv,
                v: vv,
                p: Arc::new(p),
                dims: d,
                units,
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

    type Ad = Autodiff<Flex>;
    type AdNd = Autodiff<NdArray>;

    /// Seeded values in `[-2, 2)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::host::seeded(n, seed, 4.0)
    }

    /// A head-major view `[b, h, n, dh]` of token-major data, as a projection's output is split
    /// into heads.
    fn heads<B: Backend>([b, h, n, dh]: [usize; 4], seed: u64) -> Tensor<B, 4> {
        let x = TensorData::new(values(b * n * h * dh, seed), [b, n, h, dh]);
        Tensor::<B, 4>::from_data(x, &Default::default()).swap_dims(1, 2)
    }

    /// Key padding bias `[b, s]`: the last `b_index` keys of batch `b_index` are padding.
    fn padding<B: Backend>(b: usize, s: usize) -> Tensor<B, 2> {
        let v: Vec<f32> = (0..b * s)
            .map(|n| if n % s >= s - n / s { -1e30 } else { 0.0 })
            .collect();
        Tensor::from_data(TensorData::new(v, [b, s]), &Default::default())
    }

    /// The cases: (name, [b, h, hk, t, s, dh], mask).
    fn cases<B: Backend>() -> Vec<(&'static str, [usize; 6], Mask<B>)> {
        vec![
            ("none", [2, 4, 4, 5, 7, 8], Mask::None),
            ("causal", [2, 3, 3, 9, 9, 16], Mask::Causal { offset: 0 }),
            (
                "causal offset, grouped",
                [2, 6, 2, 3, 7, 8],
                Mask::Causal { offset: 4 },
            ),
            (
                "key bias",
                [3, 4, 4, 6, 6, 8],
                Mask::KeyBias(padding::<B>(3, 6)),
            ),
            (
                "grouped, key bias",
                [2, 4, 1, 5, 5, 4],
                Mask::KeyBias(padding::<B>(2, 5)),
            ),
            (
                "segments",
                [1, 4, 4, 12, 12, 8],
                Mask::Segments(vec![5, 1, 6].into()),
            ),
            (
                "grouped segments, batch 2",
                [2, 6, 3, 7, 7, 4],
                Mask::Segments(vec![3, 4].into()),
            ),
        ]
    }

    use crate::host::values as host;

    /// Output and the gradients of `Σ w ⊙ out` for q, k, v, through `f`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        dims: [usize; 6],
        mask: Mask<B>,
        fused: bool,
    ) -> [Vec<f32>; 4] {
        let [b, h, hk, t, s, dh] = dims;
        let q = heads::<B>([b, h, t, dh], 1).require_grad();
        let k = heads::<B>([b, hk, s, dh], 2).require_grad();
        let v = heads::<B>([b, hk, s, dh], 3).require_grad();
        let scale = 1.0 / (dh as f64).sqrt();
        let f = if fused {
            attention
        } else {
            attention_reference
        };
        let o = f(q.clone(), k.clone(), v.clone(), mask, scale);
        let w = Tensor::<B, 4>::from_data(
            TensorData::new(values(b * h * t * dh, 4), [b, h, t, dh]),
            &Default::default(),
        );
        let g = (o.clone() * w).sum().backward();
        [
            host(o),
            host(q.grad(&g).unwrap()),
            host(k.grad(&g).unwrap()),
            host(v.grad(&g).unwrap()),
        ]
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0f32, |m, x| m.max(x.abs()))
    }

    #[test]
    fn matches_the_composed_ops_in_values_and_gradients() {
        for (name, dims, mask) in cases::<Ad>() {
            let fused = run::<Ad>(dims, mask.clone(), true);
            let reference = run::<Ad>(dims, mask, false);
            for (i, what) in ["output", "dq", "dk", "dv"].iter().enumerate() {
                let (a, r) = (&fused[i], &reference[i]);
                assert_eq!(a.len(), r.len(), "{name}: {what} size");
                let tol = 1e-5 * max_abs(r).max(1.0);
                for (j, (x, y)) in a.iter().zip(r).enumerate() {
                    assert!((x - y).abs() <= tol, "{name}: {what}[{j}] {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn flex_and_ndarray_give_the_same_bits_and_inference_matches_training() {
        for ((name, dims, mask), (_, _, mask_nd)) in cases::<Ad>().into_iter().zip(cases::<AdNd>())
        {
            let a = run::<Ad>(dims, mask, true);
            let b = run::<AdNd>(dims, mask_nd, true);
            assert_eq!(a, b, "{name}");
            // Without autodiff, on contiguous head-major inputs: the same output bits.
            let [bb, h, hk, t, s, dh] = dims;
            let contiguous = |x: Tensor<Flex, 4>| {
                let shape = x.shape();
                Tensor::<Flex, 4>::from_data(TensorData::new(host(x), shape), &Default::default())
            };
            let mask = cases::<Flex>().into_iter().find(|c| c.0 == name).unwrap().2;
            let o = attention(
                contiguous(heads::<Flex>([bb, h, t, dh], 1)),
                contiguous(heads::<Flex>([bb, hk, s, dh], 2)),
                contiguous(heads::<Flex>([bb, hk, s, dh], 3)),
                mask,
                1.0 / (dh as f64).sqrt(),
            );
            assert_eq!(host(o), a[0], "{name}: inference");
        }
    }

    #[test]
    fn one_and_two_threads_give_the_same_bits() {
        let on = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| {
                    cases::<Ad>()
                        .into_iter()
                        .map(|(_, dims, mask)| run::<Ad>(dims, mask, true))
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(on(1), on(2));
    }

    #[test]
    fn each_segment_gets_the_bits_of_its_sequence_run_alone() {
        let (h, dh, lens) = (2, 8, [3usize, 5, 1, 2]);
        let n: usize = lens.iter().sum();
        let [q, k, v] = [1, 2, 3].map(|seed| heads::<Flex>([1, h, n, dh], seed));
        let segments = Mask::Segments(lens.to_vec().into());
        // Token-major `[1, n, h, dh]`: each sequence's rows are contiguous.
        let packed =
            host(attention(q.clone(), k.clone(), v.clone(), segments, 0.3).swap_dims(1, 2));
        let mut start = 0;
        for &l in &lens {
            let part = |x: &Tensor<Flex, 4>| x.clone().slice([0..1, 0..h, start..start + l, 0..dh]);
            let alone = attention(part(&q), part(&k), part(&v), Mask::None, 0.3);
            let alone = host(alone.swap_dims(1, 2));
            assert_eq!(
                &packed[start * h * dh..(start + l) * h * dh],
                &alone[..],
                "at {start}"
            );
            start += l;
        }
    }

    #[test]
    #[should_panic(expected = "Mask::Segments")]
    fn segments_that_do_not_cover_the_tokens_are_refused() {
        let q = heads::<Flex>([1, 2, 6, 4], 1);
        let _ = attention(
            q.clone(),
            q.clone(),
            q,
            Mask::Segments(vec![2, 3].into()),
            0.5,
        );
    }

    #[test]
    fn masked_weights_are_exactly_zero() {
        // Causal: the first query sees only the first key, so its output is v's first row.
        let [b, h, t, dh] = [1, 2, 4, 8];
        let v = heads::<Flex>([b, h, t, dh], 3);
        let o = attention(
            heads::<Flex>([b, h, t, dh], 1),
            heads::<Flex>([b, h, t, dh], 2),
            v.clone(),
            Mask::Causal { offset: 0 },
            0.5,
        );
        let first = |x: Tensor<Flex, 4>| host(x.slice([0..1, 0..h, 0..1, 0..dh]));
        assert_eq!(first(o), first(v));
    }
}
