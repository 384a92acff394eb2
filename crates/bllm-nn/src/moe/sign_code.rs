//! The sign-code router: `m = log2 E` sign bits of a projection name the expert.
//!
//! `z = W x + b` (`[tokens, m]`), `q = est(z)` through any `bllm-ste` estimator (±1 forward,
//! the estimator's G backward; {0, 1} estimators are mapped to ±1). Expert `e` has the code
//! `c_e ∈ {±1}^m` of its index's bits (bit j set → +1). Score `s_e = ⟨q, c_e⟩ / m ∈ [−1, 1]`;
//! the top-k experts of `s + bias` are chosen (top-1 = the expert whose code is `q`), and
//! each slot's gate is `(1 + s_e) / 2`: exactly 1 for the matching code in the forward pass,
//! while the backward pass carries `c_e / 2m · G(z)` to the projection — so the router learns
//! from the task loss. Routing probabilities for the auxiliary loss are `softmax(m · s)`.

use bllm_ste::Ctx;
use bllm_ste::estimators::Levels;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Moe, Routing, gather_chosen, host, top_k_rows};

/// The `[m, E]` matrix of expert codes.
pub(crate) fn codes<B: Backend>(e: usize, device: &B::Device) -> Tensor<B, 2> {
    let m = e.trailing_zeros() as usize;
    let data: Vec<f32> = (0..m)
        .flat_map(|j| (0..e).map(move |ex| if ex >> j & 1 == 1 { 1.0 } else { -1.0 }))
        .collect();
    Tensor::from_data(TensorData::new(data, [m, e]), device)
}

pub(crate) fn route<B: Backend>(
    m: &Moe<B>,
    x: Tensor<B, 2>,
    bias: &[f32],
    ctx: &Ctx,
) -> Routing<B> {
    let c = &m.config;
    let e = c.experts;
    let bits = e.trailing_zeros() as usize;
    let z = match &m.router_float {
        Some(l) => l.forward(x),
        None => unreachable!("a sign_code router has a float projection"),
    };
    let q = c.estimator.apply(z, &ctx.fork(37));
    let q = match c.estimator.levels() {
        Levels::ZeroOne => q.mul_scalar(2.0).sub_scalar(1.0),
        _ => q,
    };
    let device = q.device();
    let s = q.matmul(codes::<B>(e, &device)).div_scalar(bits as f64);
    let mut scores = host(s.clone());
    for row in scores.chunks_mut(e) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    let experts = top_k_rows(&scores, e, c.top_k);
    let gates = gather_chosen(s.clone(), &experts)
        .add_scalar(1.0)
        .div_scalar(2.0);
    Routing {
        experts,
        gates,
        probs: Some(softmax(s.mul_scalar(bits as f64), 1)),
        logits: None,
    }
}
