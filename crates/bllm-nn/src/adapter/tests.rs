use bllm_ste::Ctx;
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::*;

type B = NdArray;
type Ad = Autodiff<NdArray>;

fn input<Bk: Backend>(n: usize, d: usize, seed: u64) -> Tensor<Bk, 2> {
    let mut rng = bllm_codes::rng::SplitMix64::new(seed);
    let v: Vec<f32> = (0..n * d).map(|_| rng.next_gaussian() as f32).collect();
    Tensor::from_data(TensorData::new(v, [n, d]), &Default::default())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn linear(d_in: usize, d_out: usize, seed: u64) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(kaiming_uniform::<B>(d_in, d_out, seed, &Default::default())),
        bias: Some(Param::from_tensor(
            input::<B>(1, d_out, seed ^ 7).reshape([d_out]),
        )),
    }
}

fn binary(rank: usize, learnable: bool) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::BinaryLora,
        learnable_scale: learnable,
        ..AdapterConfig::lora(rank)
    }
}

#[test]
fn zero_initialised_adapters_leave_outputs_unchanged() {
    let x = input::<B>(5, 16, 1);
    for cfg in [AdapterConfig::lora(4), binary(4, true)] {
        let a = cfg.init::<B>(16, 8, &Default::default(), 3).unwrap();
        assert!(
            host(a.forward(x.clone(), &Ctx::default()))
                .iter()
                .all(|v| *v == 0.0),
            "{:?}",
            cfg.kind
        );
        assert!(
            host(a.delta_weight(&Ctx::default()))
                .iter()
                .all(|v| *v == 0.0)
        );
    }
}

#[test]
fn merge_equals_base_plus_adapter_and_unmerge_restores_the_base() {
    let ctx = Ctx::default();
    let base = linear(16, 8, 2);
    for cfg in [AdapterConfig::lora(4), binary(4, false)] {
        let mut a = cfg.init::<B>(16, 8, &Default::default(), 5).unwrap();
        // Give the LoRA a non-zero B.
        let b = a.b.as_ref().unwrap().val();
        a.b = Some(Param::from_tensor(
            b.clone() + input::<B>(4, 8, 9).mul_scalar(0.1),
        ));
        let x = input::<B>(6, 16, 4);
        let want = host(base.forward(x.clone()) + a.forward(x.clone(), &ctx));
        let merged = merge(&base, &a, &ctx);
        let got = host(merged.forward(x));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{:?}: {g} vs {w}",
                cfg.kind
            );
        }
        let back = host(unmerge(&merged, &a, &ctx).weight.val());
        let orig = host(base.weight.val());
        let delta = host(a.delta_weight(&ctx));
        for ((b, o), d) in back.iter().zip(&orig).zip(&delta) {
            // One rounding of |W| + |ΔW| (2^-24 relative), as documented.
            assert!(
                (b - o).abs() <= (o.abs() + d.abs()) * 2f32.powi(-23),
                "{b} vs {o}"
            );
        }
    }
}

#[test]
fn byte_accounting_matches_a_hand_computation() {
    // 64 → 128, rank 4. Binary LoRA: A = 4 rows × 1 word (64 bits) = 32 B + 48 B metadata;
    // B = 128 rows × 1 word (4 bits padded to 64) = 1024 B + 48 B; scales 4 + 128 + 1 floats.
    let bl = binary(4, true)
        .init::<B>(64, 128, &Default::default(), 1)
        .unwrap();
    assert_eq!(bl.stored_bytes(), (32 + 48) + (1024 + 48) + 4 * 133);
    // Float LoRA: (64·4 + 4·128) · 4 bytes.
    let fl = AdapterConfig::lora(4)
        .init::<B>(64, 128, &Default::default(), 1)
        .unwrap();
    assert_eq!(fl.stored_bytes(), 4 * (256 + 512));
    // BitDelta of a 64 × 128 delta: 128 rows × 1 word + 48 B, and α.
    let bd = AdapterConfig::bitdelta(input::<B>(64, 128, 3));
    assert_eq!(bd.stored_bytes(), 128 * 8 + 48 + 4);
}

#[test]
fn exported_bits_rebuild_an_adapter_with_identical_outputs() {
    let ctx = Ctx::default();
    let x = input::<B>(7, 16, 8);
    for learnable in [true, false] {
        let mut a = binary(4, learnable)
            .init::<B>(16, 8, &Default::default(), 6)
            .unwrap();
        if let Some(sb) = a.scale_b.as_ref() {
            a.scale_b = Some(Param::from_tensor(sb.val().add_scalar(0.3)));
        }
        let bits = a.export().unwrap();
        assert_eq!(bits.planes[0].1.rows(), 4);
        assert_eq!(bits.planes[0].1.bits(), 16);
        assert_eq!(bits.planes[1].1.rows(), 8);
        assert_eq!(bits.planes[1].1.bits(), 4);
        let back = bits
            .to_adapter::<B>(AdapterKind::BinaryLora, &Default::default())
            .unwrap();
        assert_eq!(
            host(a.forward(x.clone(), &ctx)),
            host(back.forward(x.clone(), &ctx))
        );
    }
    let bd = AdapterConfig::bitdelta(input::<B>(16, 8, 3));
    let back = bd
        .export()
        .unwrap()
        .to_adapter::<B>(AdapterKind::BitDelta, &Default::default())
        .unwrap();
    assert_eq!(
        host(bd.forward(x.clone(), &ctx)),
        host(back.forward(x, &ctx))
    );
    assert!(
        AdapterConfig::lora(2)
            .init::<B>(16, 8, &Default::default(), 1)
            .unwrap()
            .export()
            .is_err()
    );
}

#[test]
fn bitdelta_alpha_distillation_reduces_the_error_it_starts_from() {
    // W_ft = W_base + Δ with a structured Δ; BitDelta starts at α = mean|Δ| and trains α alone
    // to match the fine-tuned outputs (MSE).
    let dev = Default::default();
    let base = kaiming_uniform::<Ad>(32, 16, 1, &dev);
    // A heavy-tailed delta (small noise plus a few large entries), where mean|Δ| is far from
    // the output-matching scale.
    let spikes = input::<Ad>(32, 16, 3)
        .abs()
        .greater_elem(2.0)
        .float()
        .mul_scalar(0.5);
    let delta = input::<Ad>(32, 16, 2).mul_scalar(0.01) + spikes;
    let ft = base.clone() + delta.clone();
    let mut a = AdapterConfig::bitdelta(delta);
    let x = input::<Ad>(64, 32, 4);
    let target = x.clone().matmul(ft);
    let err = |a: &Adapter<Ad>| -> Tensor<Ad, 1> {
        let y = x.clone().matmul(base.clone()) + a.forward(x.clone(), &Ctx::default());
        (y - target.clone()).square().mean()
    };
    let start: f32 = err(&a).into_scalar().elem();
    let mut opt = AdamConfig::new().init::<Ad, Adapter<Ad>>();
    for _ in 0..100 {
        let g = GradientsParams::from_grads(err(&a).backward(), &a);
        a = opt.step(1e-2, a, g);
    }
    let end: f32 = err(&a).into_scalar().elem();
    assert!(
        end < start,
        "distillation did not reduce the error: {start} → {end}"
    );
    // It reaches the least-squares optimum α* = ⟨XS, XΔ⟩ / ⟨XS, XS⟩.
    let xs = x.clone().matmul(a.sign.as_ref().unwrap().val());
    let xd = target.clone() - x.clone().matmul(base.clone());
    let num: f32 = (xs.clone() * xd).sum().into_scalar().elem();
    let den: f32 = xs.square().sum().into_scalar().elem();
    let alpha: f32 = a.alpha.as_ref().unwrap().val().into_scalar().elem();
    assert!(
        (alpha - num / den).abs() < 1e-3 * (num / den).abs(),
        "α {alpha} vs α* {}",
        num / den
    );
    // The signs never move.
    let s = a.sign.as_ref().unwrap().val().inner();
    assert!(s.abs().equal_elem(1.0).all().into_scalar());
}

#[test]
fn invalid_adapters_are_errors() {
    assert!(
        AdapterConfig::lora(0)
            .init::<B>(16, 8, &Default::default(), 1)
            .is_err()
    );
    assert!(
        AdapterConfig::lora(9)
            .init::<B>(16, 8, &Default::default(), 1)
            .is_err()
    );
    let mut c = binary(2, true);
    c.estimator = bllm_ste::Estimator::from_name("heaviside").unwrap();
    assert!(c.init::<B>(16, 8, &Default::default(), 1).is_err());
}
