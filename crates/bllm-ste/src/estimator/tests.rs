//! The shared estimator suite: every test here runs over every estimator in
//! [`Estimator::all`], so a new estimator is covered as soon as it has an enum arm.

use std::f64::consts::PI;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};

use super::*;

type Ad = Autodiff<NdArray>;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 tensor")
}

/// The autodiff gradient of `sum(upstream ⊙ est.apply(x))` at every point of `xs`.
fn autodiff_grad(est: &Estimator, xs: &[f32], upstream: &[f32], ctx: &Ctx) -> Vec<f32> {
    let x =
        Tensor::<Ad, 1>::from_data(TensorData::new(xs.to_vec(), [xs.len()]), &dev()).require_grad();
    let w = Tensor::<Ad, 1>::from_data(TensorData::new(upstream.to_vec(), [xs.len()]), &dev());
    let y = est.apply(x.clone(), ctx);
    let grads = (y * w).sum().backward();
    to_vec(x.grad(&grads).expect("x has a gradient"))
}

/// The documented `G(x)` of each estimator, written independently in f64 from the docs.
fn reference_g(est: &Estimator, x: f64, p: f64) -> f64 {
    let ind = |c: f64| if x.abs() <= c { 1.0 } else { 0.0 };
    match est {
        Estimator::Identity(_) | Estimator::TernaryAbsmean(_) | Estimator::TernaryThreshold(_) => {
            1.0
        }
        Estimator::Clipped(c) => ind(c.clip),
        Estimator::Heaviside(h) => ind(h.clip),
        Estimator::Stochastic(_) => ind(1.0),
        Estimator::ApproxSign(_) => (2.0 - 2.0 * x.abs()).max(0.0),
        Estimator::SwishSign(s) => {
            let b = s.beta;
            b * (2.0 - b * x * (b * x / 2.0).tanh()) / (1.0 + (b * x).cosh())
        }
        Estimator::Ede(e) => {
            let t = 10f64.powf(e.t_min.log10() + (e.t_max.log10() - e.t_min.log10()) * p);
            let k = (1.0 / t).max(1.0);
            k * t * (1.0 - (t * x).tanh().powi(2))
        }
        Estimator::Reste(r) => {
            let o = 1.0 + (r.o_end - 1.0) * (1.0 - (PI * p / 2.0).cos());
            let a = x.abs();
            if a > r.t {
                0.0
            } else if a <= r.m {
                r.m.powf(1.0 / o) / r.m
            } else {
                a.powf((1.0 - o) / o) / o
            }
        }
        Estimator::Fourier(f) => {
            let n = ((f.n_start as f64 + (f.n_end as f64 - f.n_start as f64) * p).floor() as usize)
                .max(1);
            let s: f64 = (0..n)
                .map(|i| ((2 * i + 1) as f64 * f.omega * x).cos())
                .sum();
            4.0 * f.omega / PI * s * ind(1.0)
        }
        Estimator::TanhOnebit(_) => 1.001 - x.tanh().powi(2),
    }
}

/// Grid on [−2.5, 2.5] that avoids the discontinuities of every G (|x| ∈ {0.1, 1, 1.5}) by
/// at least 1e-3.
fn grid() -> Vec<f32> {
    (0..=500)
        .map(|i| -2.5 + i as f64 * 0.01 + 0.0037)
        .filter(|x: &f64| {
            [0.1f64, 1.0, 1.5]
                .iter()
                .all(|d| (x.abs() - d).abs() > 1e-3)
        })
        .map(|x| x as f32)
        .collect()
}

#[test]
fn autodiff_gradient_equals_documented_g_on_a_grid() {
    let xs = grid();
    let ones = vec![1.0; xs.len()];
    for est in Estimator::all() {
        for p in [0.0, 0.5, 1.0] {
            let ctx = Ctx::at(p).with_seed(3);
            let got = autodiff_grad(&est, &xs, &ones, &ctx);
            // Exactness of the injection: autodiff returns the op's own G bit for bit.
            let own = to_vec(est.grad(
                Tensor::<NdArray, 1>::from_floats(xs.as_slice(), &dev()),
                &ctx,
            ));
            assert_eq!(got, own, "{} p={p}: autodiff differs from G", est.name());
            // Correctness of G: matches the documented formula (f32 vs f64 arithmetic).
            for (&x, &g) in xs.iter().zip(&got) {
                let want = reference_g(&est, f64::from(x), p);
                let tol = 2e-5 + 2e-4 * want.abs();
                assert!(
                    (f64::from(g) - want).abs() <= tol,
                    "{} p={p} x={x}: G = {g}, documented {want}",
                    est.name()
                );
            }
        }
    }
}

#[test]
fn gradient_scales_with_upstream() {
    let xs = [-0.7f32, -0.2, 0.05, 0.3, 0.9];
    let up = [2.0f32, -1.0, 0.5, 3.0, -4.0];
    for est in Estimator::all() {
        let ctx = Ctx::at(0.3);
        let got = autodiff_grad(&est, &xs, &up, &ctx);
        let unit = autodiff_grad(&est, &xs, &[1.0; 5], &ctx);
        for i in 0..5 {
            assert_eq!(got[i], unit[i] * up[i], "{} at {}", est.name(), xs[i]);
        }
    }
}

#[test]
fn forward_values_including_zero_and_ties() {
    let xs = [-3.0f32, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 3.0];
    for est in Estimator::all() {
        let x = Tensor::<Ad, 1>::from_floats(xs, &dev()).require_grad();
        let y = to_vec(est.apply(x, &Ctx::at(0.5).with_seed(1)));
        match est.levels() {
            Levels::Sign => {
                assert!(
                    y.iter().all(|v| *v == 1.0 || *v == -1.0),
                    "{}: {y:?}",
                    est.name()
                );
                // sign(0) = +1 for both zeros; stochastic is deterministic only at |x| >= 1.
                if !matches!(est, Estimator::Stochastic(_)) {
                    let want = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
                    assert_eq!(y, want, "{}", est.name());
                } else {
                    assert_eq!((y[0], y[1], y[7], y[8]), (-1.0, -1.0, 1.0, 1.0));
                }
            }
            Levels::ZeroOne => assert_eq!(y, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            Levels::Ternary => {
                // Zeros stay zero; signs are kept; magnitudes are one shared scale.
                assert_eq!((y[3], y[4]), (0.0, 0.0), "{}: {y:?}", est.name());
                let scale = y.iter().map(|v| v.abs()).fold(0.0, f32::max);
                assert!(scale > 0.0);
                for (v, x) in y.iter().zip(xs) {
                    assert!(
                        *v == 0.0 || (v.abs() == scale && v.signum() == x.signum()),
                        "{}: {y:?}",
                        est.name()
                    );
                }
                assert_eq!((y[0], y[8]), (-scale, scale));
            }
        }
    }
}

#[test]
fn ternary_absmean_matches_bitnet_formula() {
    let w = [0.9f32, -0.05, 0.3, -1.4, 0.0, 0.2];
    let gamma = w.iter().map(|x| f64::from(x.abs())).sum::<f64>() / 6.0 + 1e-5;
    let want: Vec<f32> = w
        .iter()
        .map(|&x| {
            let r = (f64::from(x) / gamma).round_ties_even().clamp(-1.0, 1.0);
            (r * gamma) as f32
        })
        .collect();
    let got = to_vec(Estimator::TernaryAbsmean(Default::default()).forward(
        Tensor::<NdArray, 1>::from_floats(w, &dev()),
        &Ctx::default(),
    ));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn ternary_threshold_uses_twn_scale() {
    let w = [1.0f32, -2.0, 0.1, -0.2, 3.0, 0.0];
    // mean|W| = 1.05, Δ = 0.735: keep 1, -2, 3; α = 2.
    let got = to_vec(Estimator::TernaryThreshold(Default::default()).forward(
        Tensor::<NdArray, 1>::from_floats(w, &dev()),
        &Ctx::default(),
    ));
    assert_eq!(got, vec![2.0, -2.0, 0.0, 0.0, 2.0, 0.0]);
}

#[test]
fn stochastic_is_seeded_and_unbiased() {
    let est = Estimator::Stochastic(Default::default());
    let x = Tensor::<NdArray, 1>::from_floats([0.5f32; 4000].as_slice(), &dev());
    let a = to_vec(est.forward(x.clone(), &Ctx::at(0.0).with_seed(7)));
    let b = to_vec(est.forward(x.clone(), &Ctx::at(0.0).with_seed(7)));
    let c = to_vec(est.forward(x, &Ctx::at(0.0).with_seed(8)));
    assert_eq!(a, b, "same seed, same noise");
    assert_ne!(a, c, "different seed, different noise");
    // P(+1) = (0.5 + 1)/2 = 0.75; 4000 draws: standard error ≈ 0.007.
    let frac = a.iter().filter(|v| **v == 1.0).count() as f64 / 4000.0;
    assert!((frac - 0.75).abs() < 0.03, "{frac}");
}

#[test]
fn serde_names_defaults_and_unknown_keys() {
    for est in Estimator::all() {
        let json = serde_json::to_string(&est).unwrap();
        let back: Estimator = serde_json::from_str(&json).unwrap();
        assert_eq!(back, est, "{json}");
        let bare: Estimator =
            serde_json::from_str(&format!("{{\"kind\": \"{}\"}}", est.name())).unwrap();
        assert_eq!(bare, est, "omitted parameters must take the defaults");
        assert_eq!(Estimator::from_name(est.name()).unwrap(), est);
        est.validate().unwrap();
        let info = est.info();
        assert_eq!(info.name, est.name());
        assert!(!info.description.is_empty());
    }
    assert!(serde_json::from_str::<Estimator>(r#"{"kind": "clipped", "clipp": 2.0}"#).is_err());
    assert!(serde_json::from_str::<Estimator>(r#"{"kind": "sign_of_the_times"}"#).is_err());
    assert!(Estimator::from_name("nope").is_err());
    let bad: Estimator = serde_json::from_str(r#"{"kind": "swish_sign", "beta": -1.0}"#).unwrap();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("swish_sign.beta = -1")
    );
    let bad: Estimator =
        serde_json::from_str(r#"{"kind": "ede", "t_min": 5.0, "t_max": 1.0}"#).unwrap();
    assert!(bad.validate().is_err());
    let bad: Estimator = serde_json::from_str(r#"{"kind": "fourier", "n_start": 0}"#).unwrap();
    assert!(bad.validate().is_err());
}

#[test]
fn schedules_change_g_over_progress() {
    let at = |est: &Estimator, x: f32, p: f64| {
        to_vec(est.grad(Tensor::<NdArray, 1>::from_floats([x], &dev()), &Ctx::at(p)))[0]
    };
    let ede = Estimator::from_name("ede").unwrap();
    // t = 0.1, k = 10 → G(0) = 1; t = 1 → G(0) = 1; t = 10, k = 1 → G(0) = 10.
    assert!((at(&ede, 0.0, 0.0) - 1.0).abs() < 1e-6);
    assert!((at(&ede, 0.0, 0.5) - 1.0).abs() < 1e-6);
    assert!((at(&ede, 0.0, 1.0) - 10.0).abs() < 1e-4);
    let reste = Estimator::from_name("reste").unwrap();
    // o = 1 at p = 0: identity inside |x| <= 1.5.
    assert_eq!(at(&reste, 0.7, 0.0), 1.0);
    assert_eq!(at(&reste, 1.6, 0.0), 0.0);
    // o = 3 at p = 1: (1/3)·0.7^(-2/3); near zero the constant 0.1^(1/3)/0.1.
    assert!((f64::from(at(&reste, 0.7, 1.0)) - 0.7f64.powf(-2.0 / 3.0) / 3.0).abs() < 1e-5);
    assert!((f64::from(at(&reste, 0.05, 1.0)) - 0.1f64.powf(1.0 / 3.0) / 0.1).abs() < 1e-4);
    let fourier = Estimator::from_name("fourier").unwrap();
    // G(0) = 4ωn/π: n = 10 at p = 0, 14 at p = 0.5, 19 at p = 1 (ω = 0.1).
    let g0 = |n: f64| 0.4 * n / PI;
    assert!((f64::from(at(&fourier, 0.0, 0.0)) - g0(10.0)).abs() < 1e-5);
    assert!((f64::from(at(&fourier, 0.0, 0.5)) - g0(14.0)).abs() < 1e-5);
    assert!((f64::from(at(&fourier, 0.0, 1.0)) - g0(19.0)).abs() < 1e-5);
}

#[test]
fn works_without_autodiff_and_on_higher_rank_tensors() {
    let x = Tensor::<NdArray, 3>::from_floats([[[-1.0f32, 0.0], [2.0, -0.5]]], &dev());
    for est in Estimator::all() {
        let y = est.apply(x.clone(), &Ctx::default());
        assert_eq!(y.dims(), [1, 2, 2]);
    }
}

#[test]
fn pass_through_fraction_counts_nonzero_g() {
    let x = Tensor::<NdArray, 1>::from_floats([-2.0f32, -0.5, 0.0, 0.5, 2.0], &dev());
    let clipped = Estimator::from_name("clipped").unwrap();
    assert!((clipped.pass_through_fraction(x.clone(), &Ctx::default()) - 0.6).abs() < 1e-12);
    let identity = Estimator::from_name("identity").unwrap();
    assert_eq!(identity.pass_through_fraction(x, &Ctx::default()), 1.0);
}

#[test]
fn gradient_flows_through_intermediate_tensors() {
    // x is a leaf; 2·x is not (is_require_grad() is false for it), yet it must carry G.
    for est in Estimator::all() {
        let x = Tensor::<Ad, 1>::from_floats([0.2f32, -0.3], &dev()).require_grad();
        let grads = est
            .apply(x.clone().mul_scalar(2.0), &Ctx::at(0.5))
            .sum()
            .backward();
        let g = to_vec(x.grad(&grads).expect("gradient reaches the leaf"));
        let want = to_vec(est.grad(
            Tensor::<NdArray, 1>::from_floats([0.4f32, -0.6], &dev()),
            &Ctx::at(0.5),
        ));
        assert_eq!(g, vec![2.0 * want[0], 2.0 * want[1]], "{}", est.name());
    }
}

#[test]
fn surrogate_derivative_is_g() {
    // Autodiff through F must give G (up to the floating point of F's own derivative ops).
    let xs = grid();
    for est in Estimator::all() {
        for p in [0.0, 0.5, 1.0] {
            let ctx = Ctx::at(p);
            let x = Tensor::<Ad, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &dev())
                .require_grad();
            let grads = est.surrogate(x.clone(), &ctx).sum().backward();
            let got = to_vec(x.grad(&grads).expect("surrogate is differentiable"));
            let want = to_vec(est.grad(
                Tensor::<NdArray, 1>::from_floats(xs.as_slice(), &dev()),
                &ctx,
            ));
            for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                    "{} p={p} x={x}: F' = {g}, G = {w}",
                    est.name()
                );
            }
        }
    }
}

#[test]
fn shadow_contexts_switch_the_forward() {
    let x = Tensor::<NdArray, 1>::from_floats([0.3f32, -2.0], &dev());
    let est = Estimator::from_name("clipped").unwrap();
    let ctx = Ctx::default();
    assert_eq!(to_vec(est.apply(x.clone(), &ctx)), vec![1.0, -1.0]);
    assert_eq!(
        to_vec(est.apply(x.clone(), &ctx.with_shadow(crate::Shadow::Surrogate))),
        vec![0.3, -1.0]
    );
    assert_eq!(
        to_vec(est.apply(x, &ctx.with_shadow(crate::Shadow::Identity))),
        vec![0.3, -2.0]
    );
}
