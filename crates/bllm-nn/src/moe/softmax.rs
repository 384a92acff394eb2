//! The float softmax top-k router (Shazeer et al. 2017; Switch, Fedus et al. 2021).
//!
//! Logits `z = W x + b` (`[tokens, E]`), probabilities `p = softmax(z)`; the top-k experts of
//! `z + bias` (the auxiliary-loss-free bias, zero otherwise) are chosen, and each chosen slot's
//! gate is its probability `p_e`, not renormalised — with top-1 a renormalised gate would be
//! exactly 1 and the router would receive no gradient from the task loss.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

use super::{Moe, Routing, gather_chosen, host, top_k_rows};

/// Softmax routing of logits `z` with the selection `bias`.
pub(crate) fn from_logits<B: Backend>(z: Tensor<B, 2>, bias: &[f32], k: usize) -> Routing<B> {
    let e = bias.len();
    let p = softmax(z.clone(), 1);
    let mut scores = host(z.clone());
    for row in scores.chunks_mut(e) {
        for (s, b) in row.iter_mut().zip(bias) {
            *s += b;
        }
    }
    let experts = top_k_rows(&scores, e, k);
    let gates = gather_chosen(p.clone(), &experts);
    Routing {
        experts,
        gates,
        probs: Some(p),
        logits: Some(z),
    }
}

pub(crate) fn route<B: Backend>(m: &Moe<B>, x: Tensor<B, 2>, bias: &[f32]) -> Routing<B> {
    let z = match &m.router_float {
        Some(l) => l.forward(x),
        None => unreachable!("a softmax router has a float projection"),
    };
    from_logits(z, bias, m.config.top_k)
}
