//! The affine map `y = x·W + b` as one autodiff operation on the CPU backends, its matrix
//! products written straight into fresh buffers.
//!
//! Why: burn-flex 0.21 allocates every matrix product's output as a zeroed byte vector and then
//! copies it to re-align it (`FlexTensor::empty` → `Bytes::from_bytes_vec`), so each product
//! paid a memset and a memcpy of its output besides the product itself: ~10 % of a training
//! step of the 6 × 256 byte LM, ~4 % of SmolLM2's (`perf`, README). Here the output is an f32
//! vector that `gemm` writes once (no zeroing, no copy), and the backward pass does the same
//! for `dx` and `dW`.
//!
//! * **Forward**: `x` `[…, k]` is read as `[n, k]`, `W` `[k, m]` (Burn's `Linear` layout) in
//!   place through its strides (a transposed view such as a tied embedding's costs nothing);
//!   with a bias the output rows start as `b` and `gemm` adds `x·W` to them, else `gemm`
//!   writes `x·W` into uninitialised memory.
//! * **Backward**: `dx = dy·Wᵀ`, `dW = xᵀ·dy` (each only when its input is tracked, the
//!   transposes read through strides), `db = Σ_rows dy` summed row by row in order.
//!
//! Determinism: a large product is cut into a fixed number of output tiles, each one
//! single-threaded `gemm` call whose blocking depends on the tile's shape only, so every element
//! is summed in the same order for any thread count (tested: 1 and 2 threads give the same
//! bits). Which kernel
//! `gemm` picks for small products depends on the operands' strides, so a transposed view and
//! its row-major copy may differ in the last bits (as with Burn's own `matmul`); NdArray's
//! operands are row-major copies. Against Burn's `linear` the values differ by float rounding
//! only (tested within 1e-5 relative, on Flex and NdArray).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either. Any other backend or
//! dtype runs Burn's `linear`, so CUDA and wgpu are unchanged.

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

use crate::host::{View, cast, tensor, values};
use crate::softmax::host_backend;

/// Multiply-adds from which a product is split across threads (burn-flex's threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `x·weight + bias` over the last dimension: `x` `[…, k]`, `weight` `[k, m]`, `bias` `[m]` →
/// `[…, m]` — Burn's `module::linear`. On the CPU backends one fused operation (module docs);
/// elsewhere Burn's op.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let [k, m] = weight.dims();
    let fits = dims[D - 1] == k
        && bias.as_ref().is_none_or(|b| b.dims() == [m])
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
        && host_backend::<B>();
    if !fits {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let n = dims[..D - 1].iter().product::<usize>();
    let y = dispatch(x.reshape([n, k]), weight, bias);
    let mut out = dims;
    out[D - 1] = m;
    y.reshape(out)
}

/// A matrix operand of `gemm`: `rows × cols` elements of `data` at `offset` with strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn of(v: &'a View<2>) -> Self {
        Mat {
            data: v.data(),
            offset: v.offset,
            rows: v.dims[0],
            cols: v.dims[1],
            rs: v.strides[0],
            cs: v.strides[1],
        }
    }

    fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// Output tiles a large product is split into (a fixed number: the same per-element order
/// for any thread count).
const TILES: usize = 8;

/// The fewest rows (columns) of a tile.
const MIN_TILE: usize = 256;

/// A raw output pointer shared by tiles that write disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each tile writes only its own rows or columns of the output (see `product`), so no
// element is written by two threads, and the buffer outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `lhs·rhs` `[m, n]`, plus `bias` `[n]` on every row when given. Each tile writes its own
/// rows of the bias before its gemm call adds the product to them, so the bias costs no
/// single-threaded pass over the output.
///
/// Below [`PARALLEL_WORK`] multiply-adds one single-threaded `gemm` call; above it the output
/// is cut into up to [`TILES`] blocks of at least [`MIN_TILE`] rows (or columns, when it is
/// wider than tall), each one single-threaded `gemm` call scheduled on the rayon pool. gemm's
/// own threading splits every block of its reduction across threads and joins after each,
/// which left one core idle for 10–15 % of a training step; whole tiles have no joins inside.
/// An output too small for two tiles (a weight gradient: small output, long reduction) uses
/// gemm's threading, which packs each operand once. Tiles depend on the shape only, and so
/// does gemm's blocking (its threads split output blocks, never the reduction), so the bits do
/// not depend on the thread count.
fn product(bias: Option<&[f32]>, lhs: Mat, rhs: Mat) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && lhs.in_bounds() && rhs.in_bounds(),
        "linear kernel: operand shapes"
    );
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "linear kernel: bias length"
    );
    let accumulate = bias.is_some();
    if m * n == 0 || k == 0 {
        return match bias {
            Some(b) => b.iter().copied().cycle().take(m * n).collect(),
            None => vec![0.0; m * n],
        };
    }
    let mut dst = Vec::<f32>::with_capacity(m * n);
    let out = Out(dst.as_mut_ptr());
    // One gemm call for output rows r0..r1 and columns c0..c1.
    let call = |(r0, r1): (usize, usize), (c0, c1): (usize, usize), par: gemm::Parallelism| {
        // SAFETY: `in_bounds` bounds every element gemm reads from either operand (the tile's
        // operands are sub-blocks of them); dst has capacity for m × n row-major elements and
        // the tile writes only rows r0..r1 × columns c0..c1 of it: first the bias there (when
        // `accumulate`), which gemm then reads and adds to. Without `accumulate` gemm is
        // called with read_dst = false, which stores `lhs·rhs` without reading dst
        // (gemm-common sets alpha to zero and its kernels only store when alpha is zero), so
        // the uninitialised memory is written before it is ever read.
        unsafe {
            if let Some(b) = bias {
                for r in r0..r1 {
                    let row = out.at(r * n + c0);
                    std::ptr::copy_nonoverlapping(b.as_ptr().add(c0), row, c1 - c0);
                }
            }
            gemm::gemm(
                r1 - r0,
                c1 - c0,
                k,
                out.at(r0 * n + c0),
                1,
                n as isize,
                accumulate,
                lhs.data.as_ptr().add(lhs.offset + r0 * lhs.rs),
                lhs.cs as isize,
                lhs.rs as isize,
                rhs.data.as_ptr().add(rhs.offset + c0 * rhs.cs),
                rhs.cs as isize,
                rhs.rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    };
    // Tiles of at least MIN_TILE rows (columns), edges on multiples of 16 (gemm's register
    // blocks): each tile packs the whole other operand again, so narrower tiles would cost
    // more in packing than they save in joins.
    let split = |len: usize| len.div_ceil(TILES).max(MIN_TILE).next_multiple_of(16);
    let wide = m.max(n);
    if m * n * k < PARALLEL_WORK {
        call((0, m), (0, n), gemm::Parallelism::None);
    } else if wide < 2 * MIN_TILE {
        // A small output with a long reduction (a weight gradient over many rows): gemm's own
        // threading, which shares one packed copy of each operand.
        call((0, m), (0, n), gemm::Parallelism::Rayon(0));
    } else if m >= n {
        let step = split(m);
        (0..m.div_ceil(step)).into_par_iter().for_each(|t| {
            call(
                (t * step, ((t + 1) * step).min(m)),
                (0, n),
                gemm::Parallelism::None,
            )
        });
    } else {
        let step = split(n);
        (0..n.div_ceil(step)).into_par_iter().for_each(|t| {
            call(
                (0, m),
                (t * step, ((t + 1) * step).min(n)),
                gemm::Parallelism::None,
            )
        });
    }
    // SAFETY: every one of the m·n elements was written by exactly one tile above.
    unsafe { dst.set_len(m * n) };
    dst
}

/// Forward on the host: `x·W (+ b)` `[n, m]`.
fn forward(x: &View<2>, w: &View<2>, bias: Option<&[f32]>) -> Vec<f32> {
    product(bias, Mat::of(x), Mat::of(w))
}

/// Column sums of `dy` `[n, m]`, row by row in order.
fn column_sums(dy: &View<2>) -> Vec<f32> {
    let [n, m] = dy.dims;
    let mut db = vec![0f32; m];
    for i in 0..n {
        match dy.row(i) {
            Some(r) => {
                for (s, v) in db.iter_mut().zip(r) {
                    *s += v;
                }
            }
            None => {
                for (j, s) in db.iter_mut().enumerate() {
                    *s += dy.at(i, j);
                }
            }
        }
    }
    db
}

/// Runs the fused op; `B` is one of the four backends (checked by the caller).
fn dispatch<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(tracked::<Flex>(cast(x), cast(w), b.map(cast)))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(tracked::<NdArray>(cast(x), cast(w), b.map(cast)))
    } else {
        // Flex or NdArray without autodiff.
        let device = x.device();
        let (n, m) = (x.dims()[0], w.dims()[1]);
        let b = b.map(values);
        let y = forward(&View::of(x), &View::of(w), b.as_deref());
        tensor::<B, 2>(y, [n, m], &device)
    }
}

/// What the backward pass keeps: the operands (in place on Flex).
#[derive(Clone, Debug)]
struct State {
    x: View<2>,
    w: View<2>,
}

/// The node; `N` = 2 parents (`x`, `W`) or 3 (with `b`).
#[derive(Debug)]
struct Fused<const N: usize>;

impl<B: Backend, const N: usize> Backward<B, N> for Fused<N> {
    type State = State;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy =
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = dy.device();
        let dy = View::of(dy);
        let [n, k] = st.x.dims;
        let m = st.w.dims[1];
        let mut parents = ops.parents.into_iter();
        if let Some(Some(node)) = parents.next() {
            let dx = product(None, Mat::of(&dy), Mat::of(&st.w).t());
            grads.register::<B>(
                node.id,
                tensor::<B, 2>(dx, [n, k], &device)
                    .into_primitive()
                    .tensor(),
            );
        }
        if let Some(Some(node)) = parents.next() {
            let dw = product(None, Mat::of(&st.x).t(), Mat::of(&dy));
            grads.register::<B>(
                node.id,
                tensor::<B, 2>(dw, [k, m], &device)
                    .into_primitive()
                    .tensor(),
            );
        }
        if let Some(Some(node)) = parents.next() {
            let db = column_sums(&dy);
            grads.register::<B>(
                node.id,
                tensor::<B, 1>(db, [m], &device).into_primitive().tensor(),
            );
        }
    }
}

/// The fused op on `Autodiff<B>`: one node with the tracked operands as parents.
fn tracked<B: Backend>(
    x: Tensor<Autodiff<B>, 2>,
    w: Tensor<Autodiff<B>, 2>,
    b: Option<Tensor<Autodiff<B>, 1>>,
) -> Tensor<Autodiff<B>, 2> {
    let device = x.device();
    let (n, m) = (x.dims()[0], w.dims()[1]);
    let x = x.into_primitive().tensor();
    let w = w.into_primitive().tensor();
    let b = b.map(|b| b.into_primitive().tensor());
    let inner2 =
        |t: B::FloatTensorPrimitive| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t));
    let state = State {
        x: View::of(inner2(x.primitive)),
        w: View::of(inner2(w.primitive)),
    };
    let bias = b.as_ref().map(|b| {
        values(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            b.primitive.clone(),
        )))
    });
    let y = forward(&state.x, &state.w, bias.as_deref());
    let out = tensor::<B, 2>(y, [n, m], &device).into_primitive().tensor();
    let out = match b {
        Some(b) => match Fused::<3>
            .prepare::<NoCheckpointing>([x.node, w.node, b.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => match Fused::<2>
            .prepare::<NoCheckpointing>([x.node, w.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::backend::AutodiffBackend;

    type Ad = Autodiff<Flex>;
    type AdNd = Autodiff<NdArray>;

    /// Seeded values in `[-2, 2)`.
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::host::seeded(n, seed, 4.0)
    }

    /// The cases: (name, [b, t, k, m], bias, weight given transposed).
    const CASES: [(&str, [usize; 4], bool, bool); 7] = [
        ("small", [2, 3, 5, 4], true, false),
        ("no bias", [1, 7, 6, 3], false, false),
        ("transposed weight", [2, 5, 8, 9], false, true),
        ("threaded size", [2, 160, 200, 240], true, false),
        ("threaded, transposed", [1, 256, 192, 224], true, true),
        ("row tiles", [2, 320, 128, 192], true, false),
        ("column tiles, transposed", [1, 64, 256, 1024], false, true),
    ];

    /// Output and the gradients of `Σ c ⊙ y` for x, W, b.
    fn run<B: AutodiffBackend>(
        [b, t, k, m]: [usize; 4],
        bias: bool,
        transposed: bool,
        fused: bool,
    ) -> Vec<Vec<f32>> {
        let dev = Default::default();
        let x = tensor::<B, 3>(vals(b * t * k, 1), [b, t, k], &dev).require_grad();
        let w = if transposed {
            tensor::<B, 2>(vals(k * m, 2), [m, k], &dev).require_grad()
        } else {
            tensor::<B, 2>(vals(k * m, 2), [k, m], &dev).require_grad()
        };
        let wt = if transposed {
            w.clone().transpose()
        } else {
            w.clone()
        };
        let bb = bias.then(|| tensor::<B, 1>(vals(m, 3), [m], &dev).require_grad());
        let y = if fused {
            linear(x.clone(), wt, bb.clone())
        } else {
            burn::tensor::module::linear(x.clone(), wt, bb.clone())
        };
        let c = tensor::<B, 3>(vals(b * t * m, 4), [b, t, m], &dev);
        let g = (y.clone() * c).sum().backward();
        let mut out = vec![
            values(y),
            values(x.grad(&g).unwrap()),
            values(w.grad(&g).unwrap()),
        ];
        if let Some(bb) = bb {
            out.push(values(bb.grad(&g).unwrap()));
        }
        out
    }

    /// Every output of `a` within 1e-5 (relative to the largest) of `r`'s.
    fn close(a: &[Vec<f32>], r: &[Vec<f32>], name: &str) {
        assert_eq!(a.len(), r.len(), "{name}");
        for (i, (a, r)) in a.iter().zip(r).enumerate() {
            let scale = r.iter().fold(1f32, |s, v| s.max(v.abs()));
            for (j, (x, y)) in a.iter().zip(r).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{name}: output {i} [{j}] {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn matches_burns_linear_in_values_and_gradients() {
        for (name, dims, bias, tr) in CASES {
            let fused = run::<Ad>(dims, bias, tr, true);
            close(&fused, &run::<Ad>(dims, bias, tr, false), name);
            close(&run::<AdNd>(dims, bias, tr, true), &fused, name);
        }
    }

    #[test]
    fn thread_counts_give_the_same_bits() {
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    CASES
                        .iter()
                        .map(|(_, d, b, t)| run::<Ad>(*d, *b, *t, true))
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(on(1), on(2));
    }

    #[test]
    fn inference_gives_the_training_bits() {
        let dev = Default::default();
        for (name, [b, t, k, m], bias, _) in CASES {
            let x = tensor::<Flex, 3>(vals(b * t * k, 1), [b, t, k], &dev);
            let w = tensor::<Flex, 2>(vals(k * m, 2), [k, m], &dev);
            let bb = bias.then(|| tensor::<Flex, 1>(vals(m, 3), [m], &dev));
            let y = values(linear(x, w, bb));
            assert_eq!(y, run::<Ad>([b, t, k, m], bias, false, true)[0], "{name}");
        }
    }

    #[test]
    fn empty_and_zero_width_inputs() {
        let dev = Default::default();
        let x = tensor::<Ad, 2>(vec![], [0, 3], &dev).require_grad();
        let w = tensor::<Ad, 2>(vals(6, 1), [3, 2], &dev).require_grad();
        let y = linear(x, w.clone(), None);
        assert_eq!(y.dims(), [0, 2]);
        let g = y.sum().backward();
        assert_eq!(values(w.grad(&g).unwrap()), vec![0.0; 6]);
        let x = tensor::<Flex, 2>(vec![], [2, 0], &dev);
        let w = tensor::<Flex, 2>(vec![], [0, 3], &dev);
        let b = tensor::<Flex, 1>(vec![1.0, 2.0, 3.0], [3], &dev);
        assert_eq!(
            values(linear(x, w, Some(b))),
            vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
        );
    }
}
