//! Hash routing (Roller et al. 2021, Hash Layers): a fixed, parameter-free assignment.
//!
//! With per-token keys (byte ids in a language model, example ids in classification) the
//! first expert is `SplitMix64(key ⊕ seed) mod E`, the r-th `(first + r) mod E`. Without keys the
//! input is hashed by the signs of `⌈log2 E⌉` fixed random hyperplanes (modulo E). Every gate
//! is 1; the router has nothing to train and receives no gradient by construction.

use bllm_codes::rng::SplitMix64;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Moe, MoeConfig, Routing, host};

/// Seed of the key hash (fixed, so a model routes the same way everywhere).
const SEED: u64 = 0x4A5B_1E7D_9C3F_2861;

pub(crate) fn planes<B: Backend>(
    c: &MoeConfig,
    seed: u64,
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    let m = (usize::BITS - (c.experts - 1).leading_zeros()) as usize;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let data: Vec<f32> = (0..c.d_model * m)
        .map(|_| {
            rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng) as f32
        })
        .collect();
    Param::from_tensor(Tensor::from_data(
        TensorData::new(data, [c.d_model, m]),
        device,
    ))
}

pub(crate) fn route<B: Backend>(m: &Moe<B>, x: Tensor<B, 2>, keys: Option<&[u64]>) -> Routing<B> {
    let c = &m.config;
    let (e, k) = (c.experts, c.top_k);
    let [n, _] = x.dims();
    let first: Vec<usize> = match (keys, &m.hash_planes) {
        (Some(keys), _) => keys
            .iter()
            .map(|&key| (SplitMix64::new(key ^ SEED).next_u64() % e as u64) as usize)
            .collect(),
        (None, Some(p)) => {
            let proj = host(x.clone().matmul(p.val()));
            let bits = p.dims()[1];
            proj.chunks(bits)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold(0usize, |acc, (j, &v)| acc | (usize::from(v >= 0.0) << j))
                        % e
                })
                .collect()
        }
        (None, None) => vec![0; n],
    };
    let experts: Vec<Vec<usize>> = first
        .iter()
        .map(|&f| (0..k).map(|r| (f + r) % e).collect())
        .collect();
    Routing {
        experts,
        gates: Tensor::ones([n, k], &x.device()),
        probs: None,
        logits: None,
    }
}
