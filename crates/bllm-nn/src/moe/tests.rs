use bllm_ste::{Ctx, Estimator};
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::*;

type B = NdArray;
type Ad = Autodiff<NdArray>;

fn input<Bk: Backend>(n: usize, d: usize, seed: u64) -> Tensor<Bk, 2> {
    let mut rng = bllm_codes::rng::SplitMix64::new(seed);
    let v: Vec<f32> = (0..n * d).map(|_| rng.next_gaussian() as f32).collect();
    Tensor::from_data(TensorData::new(v, [n, d]), &Default::default())
}

fn all_routers() -> Vec<MoeConfig> {
    RouterKind::NAMES
        .iter()
        .map(|name| {
            let mut c = MoeConfig::new(8, 16, 4);
            c.router = RouterKind::parse(name).unwrap();
            c.estimator = Estimator::from_name("ede").unwrap();
            c
        })
        .collect()
}

#[test]
fn every_router_routes_every_token_to_top_k_distinct_experts() {
    for mut c in all_routers() {
        if c.router != RouterKind::Gumbel {
            c.top_k = 2;
        }
        let m = c.init::<B>(&Default::default(), 3).unwrap();
        let keys: Vec<u64> = (0..32).collect();
        let out = m.forward(input(32, 8, 1), Some(&keys), &Ctx::at(0.5));
        assert_eq!(out.y.dims(), [32, 8], "{:?}", c.router);
        assert_eq!(out.assignments.len(), 32 * c.top_k);
        for t in out.assignments.chunks(c.top_k) {
            let mut d = t.to_vec();
            d.dedup();
            assert_eq!(d.len(), c.top_k, "{:?}: {t:?}", c.router);
            assert!(t.iter().all(|&e| e < 4));
        }
        assert_eq!(out.dropped, 0);
    }
}

/// With aux losses off, the task loss alone must reach every trainable router.
#[test]
fn every_trainable_router_gets_a_task_gradient_with_aux_losses_off() {
    for mut c in all_routers() {
        c.z_loss = 0.0;
        c.balancing = Balancing::None;
        let m = c.init::<Ad>(&Default::default(), 5).unwrap();
        let x = input::<Ad>(64, 8, 2);
        let target = input::<Ad>(64, 8, 9);
        let out = m.forward(x, None, &Ctx::at(0.3));
        let loss = (out.y * target).sum() + out.aux_loss.sum();
        let grads = loss.backward();
        let weights = m.router_weights();
        if c.router == RouterKind::Hash {
            assert!(weights.is_empty(), "hash routing has no parameters");
            continue;
        }
        assert!(!weights.is_empty());
        for w in weights {
            let g = w.val().grad(&grads).expect("router weight has a gradient");
            let norm: f32 = g.square().sum().sqrt().into_scalar().elem();
            assert!(norm > 1e-6, "{:?}: router gradient norm {norm}", c.router);
        }
    }
}

#[test]
fn capacity_drops_the_overflow_in_token_order_exactly() {
    let mut c = MoeConfig::new(4, 8, 2);
    c.capacity_factor = 1.0;
    let mut m = c.init::<B>(&Default::default(), 1).unwrap();
    // Force every token to expert 0 through the selection bias: a collapsed router.
    m.bias = Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![100.0f32, 0.0], [2]),
        &Default::default(),
    ));
    let x = input::<B>(8, 4, 4);
    let out = m.forward(x.clone(), None, &Ctx::default());
    assert_eq!(out.assignments, vec![0; 8]);
    // capacity = ceil(1.0 · 8 / 2) = 4: tokens 0..4 kept, 4..8 dropped.
    assert_eq!(out.dropped, 4);
    let y = host(out.y);
    assert!(
        y[4 * 4..].iter().all(|&v| v == 0.0),
        "dropped tokens must contribute 0"
    );
    let p =
        burn::tensor::activation::softmax(m.router_float.as_ref().unwrap().forward(x.clone()), 1);
    let gate = host(p);
    let h = host(m.down[0].forward(gelu(m.up[0].forward(x))));
    for t in 0..4 {
        for j in 0..4 {
            let want = h[t * 4 + j] * gate[t * 2];
            assert!(
                (y[t * 4 + j] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "token {t}"
            );
        }
    }
    // No capacity limit: nothing dropped.
    m.config.capacity_factor = 0.0;
    assert_eq!(m.forward(input(8, 4, 4), None, &Ctx::default()).dropped, 0);
}

#[test]
fn switch_aux_loss_matches_a_hand_computation() {
    let mut c = MoeConfig::new(4, 8, 4);
    c.balancing = Balancing::AuxLoss;
    c.z_loss = 0.0;
    let mut m = c.init::<B>(&Default::default(), 1).unwrap();
    // Zero router: p uniform (1/E) for every token.
    let l = m.router_float.as_mut().unwrap();
    l.weight = Param::from_tensor(l.weight.val().zeros_like());
    let x = input::<B>(16, 4, 4);
    // All ties → every token to expert 0 (lowest index): f = (1, 0, 0, 0); α·E·Σ f·P = α·4·(1/4).
    let aux: f32 = m
        .forward(x.clone(), None, &Ctx::default())
        .aux_loss
        .into_scalar()
        .elem();
    assert!((f64::from(aux) - 1e-2).abs() < 1e-7, "{aux}");
    // The router z-loss alone: mean (logsumexp z)² = (ln E)² for zero logits.
    m.config.balancing = Balancing::None;
    m.config.z_loss = 1e-3;
    let aux: f32 = m
        .forward(x.clone(), None, &Ctx::default())
        .aux_loss
        .into_scalar()
        .elem();
    assert!(
        (f64::from(aux) - 1e-3 * 4f64.ln().powi(2)).abs() < 1e-8,
        "{aux}"
    );
    // A hash router has no probabilities: no auxiliary loss.
    m.config.router = RouterKind::Hash;
    m.hash_planes = Some(hash::planes::<B>(&m.config, 1, &Default::default()));
    let keys: Vec<u64> = (0..16).collect();
    let aux: f32 = m
        .forward(x, Some(&keys), &Ctx::default())
        .aux_loss
        .into_scalar()
        .elem();
    assert_eq!(aux, 0.0);
}

#[test]
fn aux_free_bias_moves_toward_underloaded_experts_and_stays_zero_mean() {
    let mut c = MoeConfig::new(4, 8, 4);
    c.balancing = Balancing::AuxFree;
    let mut m = c.init::<B>(&Default::default(), 1).unwrap();
    let id = m.bias.id;
    m.update_bias(&[0, 0, 0, 1, 1, 2, 0, 0]);
    let b = host(m.bias.val());
    // loads 5, 2, 1, 0 vs mean 2: expert 0 down, 1 unchanged, 2 and 3 up; then zero-mean.
    let raw = [-1e-3f64, 0.0, 1e-3, 1e-3];
    let mean = raw.iter().sum::<f64>() / 4.0;
    for (got, want) in b.iter().zip(raw) {
        assert!((f64::from(*got) - (want - mean)).abs() < 1e-9, "{b:?}");
    }
    assert_eq!(m.bias.id, id, "the bias keeps its parameter id");
    // Other balancing modes leave it alone.
    m.config.balancing = Balancing::AuxLoss;
    m.update_bias(&[0, 0, 0, 0]);
    assert_eq!(host(m.bias.val()), b);
}

#[test]
fn sign_code_top1_expert_is_the_code_of_the_projection_signs() {
    let mut c = MoeConfig::new(8, 8, 8);
    c.router = RouterKind::SignCode;
    let m = c.init::<B>(&Default::default(), 2).unwrap();
    let x = input::<B>(20, 8, 6);
    let z = host(m.router_float.as_ref().unwrap().forward(x.clone()));
    let out = m.forward(x, None, &Ctx::default());
    for (t, &e) in out.first_choice.iter().enumerate() {
        let want = (0..3).fold(0usize, |acc, j| {
            acc | (usize::from(z[t * 3 + j] >= 0.0) << j)
        });
        assert_eq!(e, want, "token {t}");
    }
}

#[test]
fn invalid_configs_are_errors() {
    let dev = Default::default();
    let mut c = MoeConfig::new(8, 8, 6);
    c.router = RouterKind::SignCode;
    assert!(c.init::<B>(&dev, 0).is_err());
    let mut c = MoeConfig::new(8, 8, 4);
    c.router = RouterKind::Gumbel;
    c.top_k = 2;
    assert!(c.init::<B>(&dev, 0).is_err());
    let mut c = MoeConfig::new(8, 8, 4);
    c.top_k = 5;
    assert!(c.init::<B>(&dev, 0).is_err());
}
