//! Learning test, one per estimator: a `BinaryLinear` classifier with binary weights learns a
//! linearly separable task (labels from a hidden ±1 weight vector, so an exact binary solution
//! exists) to ≥ 95 % held-out accuracy on the CPU in well under a second each
//! (Adam, learning rate 0.05 decayed linearly to 0, 300 full-batch steps of 512 points).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_codes::rng::SplitMix64;
use bllm_nn::{BinaryLinear, BinaryLinearConfig, Scaling};
use bllm_ste::{Ctx, Estimator};
use burn::backend::{Autodiff, NdArray};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

type Ad = Autodiff<NdArray>;

const DIM: usize = 16;
const STEPS: usize = 300;

/// `n` Gaussian points and labels `x · w* >= 0` for a fixed ±1 vector `w*`.
fn data<B: Backend>(n: usize, seed: u64, dev: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let mut truth = SplitMix64::new(99);
    let w: Vec<f64> = (0..DIM)
        .map(|_| if truth.next_u64() & 1 == 1 { 1.0 } else { -1.0 })
        .collect();
    let mut rng = SplitMix64::new(seed);
    let x: Vec<f32> = (0..n * DIM).map(|_| rng.next_gaussian() as f32).collect();
    let y: Vec<i64> = x
        .chunks(DIM)
        .map(|r| {
            i64::from(
                r.iter()
                    .zip(&w)
                    .map(|(a, b)| f64::from(*a) * b)
                    .sum::<f64>()
                    >= 0.0,
            )
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [n, DIM]), dev),
        Tensor::from_data(TensorData::new(y, [n]), dev),
    )
}

fn accuracy<B: Backend>(
    layer: &BinaryLinear<B>,
    x: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
    ctx: &Ctx,
) -> f64 {
    let n = y.dims()[0] as f64;
    let pred = layer.forward(x, ctx).argmax(1).squeeze_dim::<1>(1);
    let correct: f32 = pred.equal(y).float().sum().into_scalar().elem();
    f64::from(correct) / n
}

/// Trains one estimator; returns held-out accuracy.
fn train(est: &Estimator) -> f64 {
    let dev = Default::default();
    let (x, y) = data::<Ad>(512, 1, &dev);
    let cfg = BinaryLinearConfig::new(DIM, 2)
        .with_weight(est.clone())
        .with_scaling(Scaling::PerChannel { learnable: false });
    let mut layer = cfg.init::<Ad>(&dev, 7).unwrap();
    let mut opt = AdamConfig::new().init::<Ad, BinaryLinear<Ad>>();
    let loss_fn = CrossEntropyLossConfig::new().init(&dev);
    for step in 0..STEPS {
        let ctx = Ctx::at(step as f64 / STEPS as f64).with_seed(step as u64);
        let loss = loss_fn.forward(layer.forward(x.clone(), &ctx), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        // Linear decay to 0: late steps stop flipping signs back and forth.
        layer = opt.step(0.05 * (1.0 - step as f64 / STEPS as f64), layer, grads);
    }
    let (xt, yt) = data::<Ad>(512, 2, &dev);
    accuracy(&layer, xt, yt, &Ctx::at(1.0).with_seed(12345))
}

#[test]
fn every_estimator_learns_a_separable_task() {
    let mut failures = Vec::new();
    for est in Estimator::all() {
        let acc = train(&est);
        println!("{:<18} held-out accuracy {acc:.3}", est.name());
        if acc < 0.95 {
            failures.push(format!("{} {acc:.3}", est.name()));
        }
    }
    assert!(failures.is_empty(), "below 95 %: {failures:?}");
}

#[test]
fn training_is_bit_identical_under_the_same_seed() {
    let est = Estimator::from_name("swish_sign").unwrap();
    let run = || {
        let dev = Default::default();
        let (x, y) = data::<Ad>(128, 1, &dev);
        let mut layer = BinaryLinearConfig::new(DIM, 2)
            .init::<Ad>(&dev, 3)
            .unwrap()
            .clone();
        layer.config.weight = est.clone();
        let mut opt = AdamConfig::new().init::<Ad, BinaryLinear<Ad>>();
        let loss_fn = CrossEntropyLossConfig::new().init(&dev);
        for step in 0..20 {
            let loss = loss_fn.forward(
                layer.forward(x.clone(), &Ctx::at(step as f64 / 20.0)),
                y.clone(),
            );
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = opt.step(0.05, layer, grads);
        }
        layer.weight.val().into_data().to_vec::<f32>().unwrap()
    };
    let (a, b) = (run(), run());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}
