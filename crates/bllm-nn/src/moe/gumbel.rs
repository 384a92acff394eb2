//! Straight-through Gumbel top-1 (Jang et al. 2017): hard forward, soft backward.
//!
//! Logits `z = W x + b`; in training, Gumbel noise `g = −ln(−ln u)` (seeded from the context) and
//! the temperature `τ = τ₀ (τ₁/τ₀)^progress` give `y = softmax((z + g)/τ)`; the expert is
//! `argmax(z + g + bias)` and its gate is `1 + y_e − sg(y_e)`: exactly 1 forward, the gradient of
//! the soft sample backward. At evaluation (`Ctx::eval`) there is no noise.
//! Routing probabilities for the auxiliary loss are `softmax(z)`.

use bllm_ste::Ctx;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gumbel};

use super::{Moe, Routing, gather_chosen, host, top_k_rows};

pub(crate) fn route<B: Backend>(
    m: &Moe<B>,
    x: Tensor<B, 2>,
    bias: &[f32],
    ctx: &Ctx,
) -> Routing<B> {
    let c = &m.config;
    let e = c.experts;
    let z = match &m.router_float {
        Some(l) => l.forward(x),
        None => unreachable!("a gumbel router has a float projection"),
    };
    let [n, _] = z.dims();
    let device = z.device();
    let noise: Vec<f32> = if ctx.eval {
        vec![0.0; n * e]
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.fork(41).seed);
        let gumbel = Gumbel::new(0.0f64, 1.0).unwrap_or_else(|_| unreachable!("scale 1 is valid"));
        (0..n * e).map(|_| gumbel.sample(&mut rng) as f32).collect()
    };
    let (t0, t1) = c.gumbel_tau;
    let tau = t0 * (t1 / t0).powf(ctx.progress);
    let g = Tensor::<B, 2>::from_data(TensorData::new(noise, [n, e]), &device);
    let perturbed = z.clone() + g;
    let y = softmax(perturbed.clone().div_scalar(tau), 1);
    let mut scores = host(perturbed);
    for row in scores.chunks_mut(e) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    let experts = top_k_rows(&scores, e, 1);
    let ysel = gather_chosen(y, &experts);
    let gates = ysel.clone() - ysel.detach() + 1.0;
    Routing {
        experts,
        gates,
        probs: Some(softmax(z.clone(), 1)),
        logits: Some(z),
    }
}
