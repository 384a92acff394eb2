//! The rank-one scaled matrix `q ⊙ g hᵀ` (OneBit's weight `sign(W) ⊙ g hᵀ` with SVID's value
//! vectors) as one autodiff operation on the CPU backends.
//!
//! Why: composed from Burn 0.21 ops it is a broadcast outer product (burn-flex walks broadcast
//! operands one element at a time), a multiplication, and backward two multiplications and
//! two broadcast reductions, each a pass over a full weight matrix: on SmolLM2 with every
//! projection 1-bit that was ~4 % of a training step (`perf`, README).
//!
//! * **Forward**: `y_ij = q_ij · (g_i · h_j)` (the composed form's order: the outer product
//!   first), so the same bits (tested).
//! * **Backward**: `dq_ij = dy_ij · (g_i · h_j)`, `dg_i = Σ_j (dy_ij · q_ij) · h_j` (eight fixed
//!   lanes per row), `dh_j = Σ_i (dy_ij · q_ij) · g_i` (rows in order, columns in parallel
//!   blocks): the same bits for any thread count (tested), gradients within 1e-5 relative of
//!   the composed ops (tested).
//!
//! Handled: f32 tensors of `Flex`, `NdArray` and `Autodiff` over either; elsewhere
//! [`scale_outer_reference`].

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
use crate::softmax::{dot8, host_backend};

/// Rows per parallel task.
const BLOCK_ROWS: usize = 16;
/// Columns per parallel task of `dh`.
const BLOCK_COLS: usize = 256;

/// `q ⊙ g hᵀ`: `q` `[k, m]`, `g` `[k]`, `h` `[m]` → `[k, m]`. On the CPU backends one fused
/// operation (module docs); elsewhere [`scale_outer_reference`].
pub fn scale_outer<B: Backend>(q: Tensor<B, 2>, g: Tensor<B, 1>, h: Tensor<B, 1>) -> Tensor<B, 2> {
    let [k, m] = q.dims();
    let fits = g.dims() == [k]
        && h.dims() == [m]
        && [q.dtype(), g.dtype(), h.dtype()]
            .iter()
            .all(|d| *d == DType::F32)
        && host_backend::<B>();
    if !fits {
        return scale_outer_reference(q, g, h);
    }
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(tracked::<Flex>(cast(q), cast(g), cast(h)))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(tracked::<NdArray>(cast(q), cast(g), cast(h)))
    } else {
        let device = q.device();
        let y = forward(&View::of(q), &values(g), &values(h));
        tensor::<B, 2>(y, [k, m], &device)
    }
}

/// The composed Burn ops [`scale_outer`] computes, for any backend.
pub fn scale_outer_reference<B: Backend>(
    q: Tensor<B, 2>,
    g: Tensor<B, 1>,
    h: Tensor<B, 1>,
) -> Tensor<B, 2> {
    q * (g.unsqueeze_dim::<2>(1) * h.unsqueeze::<2>())
}

/// `y_ij = q_ij · (g_i · h_j)` on the host.
fn forward(q: &View<2>, g: &[f32], h: &[f32]) -> Vec<f32> {
    let [k, m] = q.dims;
    let mut y = zeros(k * m);
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(BLOCK_ROWS * m)
        .enumerate()
        .for_each(|(bi, y)| {
            let mut buf = vec![0f32; m];
            for (i, y) in y.chunks_exact_mut(m).enumerate() {
                let r = bi * BLOCK_ROWS + i;
                let qr = q.row_or(r, &mut buf);
                let gi = g[r];
                for ((y, q), h) in y.iter_mut().zip(qr).zip(h) {
                    *y = *q * (gi * *h);
                }
            }
        });
    y
}

/// What the backward pass keeps.
#[derive(Clone, Debug)]
struct State {
    q: View<2>,
    g: Arc<Vec<f32>>,
    h: Arc<Vec<f32>>,
}

/// `(dq, dg, dh)` on the host; each only when `want`.
fn backward(dy: &View<2>, st: &State, want: [bool; 3]) -> [Option<Vec<f32>>; 3] {
    let [k, m] = st.q.dims;
    let (g, h) = (&st.g[..], &st.h[..]);
    let dq = want[0].then(|| {
        let mut dq = zeros(k * m);
        if !dq.is_empty() {
            dq.par_chunks_mut(BLOCK_ROWS * m)
                .enumerate()
                .for_each(|(bi, o)| {
                    let mut buf = vec![0f32; m];
                    for (i, o) in o.chunks_exact_mut(m).enumerate() {
                        let r = bi * BLOCK_ROWS + i;
                        let dyr = dy.row_or(r, &mut buf);
                        for ((o, d), h) in o.iter_mut().zip(dyr).zip(h) {
                            *o = *d * (g[r] * *h);
                        }
                    }
                });
        }
        dq
    });
    // dy ⊙ q, row by row, reduced against h (dg) and down the columns against g (dh).
    let dg = want[1].then(|| {
        let mut dg = vec![0f32; k];
        dg.par_iter_mut().enumerate().for_each(|(r, s)| {
            let (mut bd, mut bq) = (vec![0f32; m], vec![0f32; m]);
            let dyr = dy.row_or(r, &mut bd);
            let qr = st.q.row_or(r, &mut bq);
            let t: Vec<f32> = dyr.iter().zip(qr).map(|(d, q)| d * q).collect();
            *s = dot8(&t, h);
        });
        dg
    });
    let dh = want[2].then(|| {
        let mut dh = vec![0f32; m];
        dh.par_chunks_mut(BLOCK_COLS)
            .enumerate()
            .for_each(|(bj, cols)| {
                let j0 = bj * BLOCK_COLS;
                let w = cols.len();
                let (mut bd, mut bq) = (vec![0f32; m], vec![0f32; m]);
                for (r, gr) in g.iter().enumerate() {
                    let dyr = dy.row_or(r, &mut bd);
                    let qr = st.q.row_or(r, &mut bq);
                    for ((s, d), q) in cols.iter_mut().zip(&dyr[j0..j0 + w]).zip(&qr[j0..j0 + w]) {
                        *s += (*d * *q) * *gr;
                    }
                }
            });
        dh
    });
    [dq, dg, dh]
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
        let [k, m] = st.q.dims;
        let want = [0, 1, 2].map(|i| ops.parents[i].is_some());
        let [dq, dg, dh] = backward(&View::of(dy), &st, want);
        let [pq, pg, ph] = ops.parents;
        if let (Some(node), Some(v)) = (pq, dq) {
            grads.register::<B>(
                node.id,
                tensor::<B, 2>(v, [k, m], &device).into_primitive().tensor(),
            );
        }
        if let (Some(node), Some(v)) = (pg, dg) {
            grads.register::<B>(
                node.id,
                tensor::<B, 1>(v, [k], &device).into_primitive().tensor(),
            );
        }
        if let (Some(node), Some(v)) = (ph, dh) {
            grads.register::<B>(
                node.id,
                tensor::<B, 1>(v, [m], &device).into_primitive().tensor(),
            );
        }
    }
}

fn tracked<B: Backend>(
    q: Tensor<Autodiff<B>, 2>,
    g: Tensor<Autodiff<B>, 1>,
    h: Tensor<Autodiff<B>, 1>,
) -> Tensor<Autodiff<B>, 2> {
    let [k, m] = q.dims();
    let device = q.device();
    let (q, g, h) = (
        q.into_primitive().tensor(),
        g.into_primitive().tensor(),
        h.into_primitive().tensor(),
    );
    let qv = View::of(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
        q.primitive,
    )));
    let gv = values(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
        g.primitive,
    )));
    let hv = values(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
        h.primitive,
    )));
    let y = forward(&qv, &gv, &hv);
    let out = tensor::<B, 2>(y, [k, m], &device).into_primitive().tensor();
    let out = match Fused
        .prepare::<NoCheckpointing>([q.node, g.node, h.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                q: qv,
                g: Arc::new(gv),
                h: Arc::new(hv),
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
    use burn::tensor::backend::AutodiffBackend;

    /// Seeded values in `[-2, 2)`.
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::host::seeded(n, seed, 4.0)
    }

    /// Output and the gradients (q, g, h) of `Σ c ⊙ y`; `q` given transposed when `strided`.
    fn run<B: AutodiffBackend>([k, m]: [usize; 2], strided: bool, fused: bool) -> [Vec<f32>; 4] {
        let dev = Default::default();
        let q = if strided {
            tensor::<B, 2>(vals(k * m, 1), [m, k], &dev).require_grad()
        } else {
            tensor::<B, 2>(vals(k * m, 1), [k, m], &dev).require_grad()
        };
        let qq = if strided {
            q.clone().transpose()
        } else {
            q.clone()
        };
        let g = tensor::<B, 1>(vals(k, 2), [k], &dev).require_grad();
        let h = tensor::<B, 1>(vals(m, 3), [m], &dev).require_grad();
        let y = if fused {
            scale_outer(qq, g.clone(), h.clone())
        } else {
            scale_outer_reference(qq, g.clone(), h.clone())
        };
        let c = tensor::<B, 2>(vals(k * m, 4), [k, m], &dev);
        let gr = (y.clone() * c).sum().backward();
        [
            values(y),
            values(q.grad(&gr).unwrap()),
            values(g.grad(&gr).unwrap()),
            values(h.grad(&gr).unwrap()),
        ]
    }

    const CASES: [([usize; 2], bool); 4] = [
        ([3, 5], false),
        ([40, 300], false),
        ([17, 600], true),
        ([1, 1], false),
    ];

    #[test]
    fn forward_bits_and_gradients_match_the_composed_ops() {
        for (dims, strided) in CASES {
            let a = run::<Autodiff<Flex>>(dims, strided, true);
            let r = run::<Autodiff<Flex>>(dims, strided, false);
            assert_eq!(a[0], r[0], "{dims:?}: forward bits");
            for i in 1..4 {
                let s = r[i].iter().fold(1f32, |s, v| s.max(v.abs()));
                for (x, y) in a[i].iter().zip(&r[i]) {
                    assert!((x - y).abs() <= 1e-5 * s, "{dims:?} grad {i}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn same_bits_for_backends_and_thread_counts() {
        for (dims, strided) in CASES {
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run::<Autodiff<Flex>>(dims, strided, true));
            assert_eq!(one, run::<Autodiff<Flex>>(dims, strided, true), "{dims:?}");
            assert_eq!(
                one,
                run::<Autodiff<NdArray>>(dims, strided, true),
                "{dims:?}"
            );
        }
    }
}
