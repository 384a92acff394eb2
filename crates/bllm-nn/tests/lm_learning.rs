//! A tiny [`ByteLm`] learns a short text: the float model overfits it to near-zero loss, and
//! the binarized model (every block projection 1-bit, clipped STE) ends far below the unigram
//! baseline. Adam on the text as one window, seconds on the CPU.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_nn::{ByteLm, ByteLmConfig, ProjKind, Projections};
use bllm_ste::Ctx;
use burn::backend::{Autodiff, NdArray};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

type Ad = Autodiff<NdArray>;

const TEXT: &[u8] =
    b"In the beginning God created the heaven and the earth. And the earth was without form.";
/// One window over the whole text: every prefix is unique, so the loss can reach zero.
const CONTEXT: usize = TEXT.len() - 1;

/// Every window of the text: inputs `[n, CONTEXT]`, targets `[n · CONTEXT]`.
fn batch() -> (Tensor<Ad, 2, Int>, Tensor<Ad, 1, Int>) {
    let n = TEXT.len() - CONTEXT;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for s in 0..n {
        x.extend(TEXT[s..s + CONTEXT].iter().map(|&b| i64::from(b)));
        y.extend(TEXT[s + 1..s + 1 + CONTEXT].iter().map(|&b| i64::from(b)));
    }
    let dev = Default::default();
    (
        Tensor::from_data(TensorData::new(x, [n, CONTEXT]), &dev),
        Tensor::from_data(TensorData::new(y, [n * CONTEXT]), &dev),
    )
}

fn loss(m: &ByteLm<Ad>, x: Tensor<Ad, 2, Int>, y: Tensor<Ad, 1, Int>, ctx: &Ctx) -> Tensor<Ad, 1> {
    let logits = m.forward(x, ctx);
    let [n, t, v] = logits.dims();
    CrossEntropyLossConfig::new()
        .init(&Default::default())
        .forward(logits.reshape([n * t, v]), y)
}

/// Trains `cfg` for `steps` full-batch Adam steps; returns the final loss (nats per byte).
fn train(cfg: &ByteLmConfig, steps: usize, lr: f64) -> f64 {
    let mut m: ByteLm<Ad> = cfg.init(&Default::default(), 0).unwrap();
    let mut opt = AdamConfig::new().init::<Ad, ByteLm<Ad>>();
    let (x, y) = batch();
    for step in 0..steps {
        let ctx = Ctx::at(step as f64 / steps as f64);
        let l = loss(&m, x.clone(), y.clone(), &ctx);
        let g = GradientsParams::from_grads(l.backward(), &m);
        m = opt.step(lr, m, g);
    }
    let v: f32 = loss(&m, x, y, &Ctx::at(1.0)).into_scalar().elem();
    f64::from(v)
}

/// Entropy (nats) of the text's own byte distribution: what a unigram model achieves.
fn unigram_nats() -> f64 {
    let mut c = [0usize; 256];
    for &b in &TEXT[1..] {
        c[b as usize] += 1;
    }
    let n = (TEXT.len() - 1) as f64;
    c.iter()
        .filter(|&&k| k > 0)
        .map(|&k| -(k as f64 / n) * (k as f64 / n).ln())
        .sum()
}

#[test]
fn float_lm_overfits_a_short_text() {
    let cfg = ByteLmConfig::new(32, 1, 2, CONTEXT);
    let l = train(&cfg, 200, 0.01);
    assert!(l < 0.05, "float loss {l} (unigram {})", unigram_nats());
}

#[test]
fn binarized_lm_beats_the_unigram_baseline_clearly() {
    let mut cfg = ByteLmConfig::new(32, 1, 2, CONTEXT);
    cfg.projections = Projections::blocks(ProjKind::Binary);
    let l = train(&cfg, 150, 0.01);
    let u = unigram_nats();
    assert!(l < 0.5 * u, "binary loss {l} vs unigram {u}");
}
