//! Every quantizer against its stated bound, on Gaussian data and on outlier-heavy data
//! (a few channels 50× larger, as K caches have); bytes counted by hand.

use super::*;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

const T: usize = 96;
const C: usize = 192;
const DH: usize = 64;

fn gaussian(seed: u64, t: usize, c: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..t * c)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// Gaussian with channels 5, 70 and 150 scaled by 50 and a per-channel offset.
fn outlier_heavy(seed: u64) -> Vec<f32> {
    let mut x = gaussian(seed, T, C);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    let offsets: Vec<f32> = (0..C).map(|_| rng.random_range(-2.0..2.0)).collect();
    for r in 0..T {
        for ch in 0..C {
            x[r * C + ch] += offsets[ch];
        }
        for ch in [5, 70, 150] {
            x[r * C + ch] *= 50.0;
        }
    }
    x
}

fn datasets() -> Vec<(&'static str, Vec<f32>)> {
    vec![
        ("gaussian", gaussian(7, T, C)),
        ("outliers", outlier_heavy(8)),
    ]
}

fn spec(kind: QuantKind, f: impl FnOnce(&mut QuantSpec)) -> QuantSpec {
    let mut s = QuantSpec::new(kind);
    f(&mut s);
    s
}

fn calib(x: &[f32]) -> Vec<f32> {
    let mut m = vec![0.0f32; C];
    for row in x.chunks(C) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a = a.max(v.abs());
        }
    }
    m
}

#[test]
fn float_is_exact_and_f16_within_half_an_ulp() {
    for (name, x) in datasets() {
        let q = build(&QuantSpec::new(QuantKind::Float), C, DH, None, 0).unwrap();
        assert_eq!(q.roundtrip(&x, T), x, "{name}");
        let q = build(&QuantSpec::new(QuantKind::F16), C, DH, None, 0).unwrap();
        for (a, b) in x.iter().zip(q.roundtrip(&x, T)) {
            assert!(
                (a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7,
                "{name}: {a} {b}"
            );
        }
    }
}

#[test]
fn int_is_within_half_a_step_of_its_stored_grid() {
    for (name, x) in datasets() {
        for bits in [2, 4, 8] {
            for (axis, group) in [
                (Axis::Token, 0),
                (Axis::Token, 32),
                (Axis::Channel, 32),
                (Axis::Channel, 40),
            ] {
                let s = spec(QuantKind::Int, |s| {
                    s.bits = bits;
                    s.axis = axis;
                    s.group = group;
                });
                let q = build(&s, C, DH, None, 0).unwrap();
                let y = q.roundtrip(&x, T);
                let g = if group == 0 { DH } else { group };
                let int = int::Int {
                    channels: C,
                    axis,
                    group: g,
                    bits,
                };
                for (start, stride, len) in groups(T, C, axis, g) {
                    let (m, d) = int.params((0..len).map(|k| x[start + k * stride]));
                    let mut levels = std::collections::BTreeSet::new();
                    for k in 0..len {
                        let i = start + k * stride;
                        let err = (x[i] - y[i]).abs();
                        assert!(
                            err <= d / 2.0 * (1.0 + 1e-4) + 1e-6,
                            "{name} int{bits} {axis:?}{group}: {err} > {}",
                            d / 2.0
                        );
                        levels.insert(((y[i] - m) / d).round() as i64);
                    }
                    assert!(levels.len() <= 1 << bits);
                    assert!(levels.iter().all(|&l| (0..1 << bits).contains(&l)));
                }
            }
        }
    }
}

#[test]
fn sign_keeps_signs_and_uses_the_optimal_scale() {
    for (name, x) in datasets() {
        for zero_point in [false, true] {
            for (axis, group) in [(Axis::Token, 0), (Axis::Token, 32), (Axis::Channel, 32)] {
                let s = spec(QuantKind::Sign, |s| {
                    s.axis = axis;
                    s.group = group;
                    s.zero_point = zero_point;
                });
                let y = build(&s, C, DH, None, 0).unwrap().roundtrip(&x, T);
                let g = if group == 0 { DH } else { group };
                for (start, stride, len) in groups(T, C, axis, g) {
                    let idx: Vec<usize> = (0..len).map(|k| start + k * stride).collect();
                    let m = if zero_point {
                        f16_round(
                            (idx.iter().map(|&i| x[i] as f64).sum::<f64>() / len as f64) as f32,
                        )
                    } else {
                        0.0
                    };
                    let s_opt =
                        idx.iter().map(|&i| (x[i] - m).abs() as f64).sum::<f64>() / len as f64;
                    let s = f16_round(s_opt as f32);
                    let (mut err, mut centred) = (0.0, 0.0);
                    for &i in &idx {
                        let want = if x[i] - m >= 0.0 { m + s } else { m - s };
                        assert_eq!(y[i], want, "{name}");
                        err += ((x[i] - y[i]) as f64).powi(2);
                        centred += ((x[i] - m) as f64).powi(2);
                    }
                    // ‖x − x̂‖² = ‖x − m‖² − n·s_opt² + n·(s − s_opt)².
                    let n = len as f64;
                    let expect = centred - n * s_opt * s_opt + n * (s as f64 - s_opt).powi(2);
                    assert!(
                        (err - expect).abs() <= 1e-3 * centred.max(1.0),
                        "{name}: {err} vs {expect}"
                    );
                    assert!(err <= centred * (1.0 + 1e-6));
                }
            }
        }
    }
}

#[test]
fn qjl_estimates_inner_products_without_bias() {
    let (d, heads) = (DH, 1);
    let keys = gaussian(3, 32, d);
    let queries = gaussian(4, 32, d);
    // One large sketch: every inner product within 5 standard deviations (√(π/2m)·‖q‖‖k‖).
    let m = 4096;
    let q = qjl::Qjl::new(d * heads, d, m, 11);
    let k_hat = q.roundtrip(&keys, 32);
    let sd = (std::f64::consts::PI / (2.0 * m as f64)).sqrt();
    for r in 0..32 {
        let (k, kh, qq) = (
            &keys[r * d..(r + 1) * d],
            &k_hat[r * d..(r + 1) * d],
            &queries[r * d..(r + 1) * d],
        );
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let bound = 5.0 * sd * dot(qq, qq).sqrt() * dot(k, k).sqrt();
        assert!((dot(qq, kh) - dot(qq, k)).abs() <= bound, "row {r}");
    }
    // Small sketches averaged over seeds: the mean estimate converges to the truth.
    let (k, qq) = (&keys[..d], &queries[..d]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
    let seeds = 400;
    let mean = (0..seeds)
        .map(|s| dot(qq, &qjl::Qjl::new(d, d, 64, s).roundtrip(k, 1)))
        .sum::<f64>()
        / seeds as f64;
    let sd = (std::f64::consts::PI / (2.0 * 64.0)).sqrt() * dot(qq, qq).sqrt() * dot(k, k).sqrt();
    assert!(
        (mean - dot(qq, k)).abs() <= 5.0 * sd / (seeds as f64).sqrt(),
        "{mean} vs {}",
        dot(qq, k)
    );
}

#[test]
fn outlier_channels_are_the_largest_kept_in_f16_and_spare_the_inliers() {
    let x = outlier_heavy(9);
    let cal = calib(&x);
    assert_eq!(
        outliers::top_channels(&cal, 3.0 / C as f64),
        vec![5, 70, 150]
    );
    let base = spec(QuantKind::Int, |s| s.bits = 2);
    let with = spec(QuantKind::Int, |s| {
        s.bits = 2;
        s.outliers = 3.0 / C as f64;
    });
    let y0 = build(&base, C, DH, None, 0).unwrap().roundtrip(&x, T);
    let y1 = build(&with, C, DH, Some(&cal), 0).unwrap().roundtrip(&x, T);
    let (mut e0, mut e1) = (0.0, 0.0);
    for r in 0..T {
        for ch in 0..C {
            let i = r * C + ch;
            if [5, 70, 150].contains(&ch) {
                assert_eq!(y1[i], f16_round(x[i]));
            } else {
                e0 += ((x[i] - y0[i]) as f64).powi(2);
                e1 += ((x[i] - y1[i]) as f64).powi(2);
            }
        }
    }
    assert!(
        e1 < 0.2 * e0,
        "inlier error {e1} with outliers kept vs {e0} without"
    );
    assert!(
        build(&with, C, DH, None, 0).is_err(),
        "outliers need a calibration"
    );
}

#[test]
fn bytes_by_hand() {
    let b = |s: QuantSpec, c: usize, dh: usize, t: usize| {
        let cal = vec![1.0; c];
        build(&s, c, dh, Some(&cal), 0).unwrap().bytes(t)
    };
    assert_eq!(
        b(QuantSpec::new(QuantKind::Float), 192, 64, 10),
        4 * 192 * 10
    );
    assert_eq!(b(QuantSpec::new(QuantKind::F16), 192, 64, 10), 2 * 192 * 10);
    // 192 sign bits = 3 words = 24 B + 3 heads × f16 scale = 30 B per token.
    assert_eq!(b(QuantSpec::new(QuantKind::Sign), 192, 64, 10), 300);
    // Per channel, blocks of 32 tokens, zero point: 24 B per token + 192 × 4 B per block.
    let s = spec(QuantKind::Sign, |s| {
        s.axis = Axis::Channel;
        s.group = 32;
        s.zero_point = true;
    });
    assert_eq!(b(s, 192, 64, 64), 64 * 24 + 2 * 192 * 4);
    // int4 per head: 768 bits = 12 words = 96 B + 3 × (Δ, m) = 108 B per token.
    assert_eq!(b(QuantSpec::new(QuantKind::Int), 192, 64, 10), 1080);
    // int2, 100 channels: 200 bits pad to 4 words = 32 B + 2 groups × 4 B.
    let s = spec(QuantKind::Int, |s| s.bits = 2);
    assert_eq!(b(s, 100, 50, 1), 40);
    // QJL 128 bits per head: 3 × (16 + 2) B per token; 8 B of seed per layer.
    let s = spec(QuantKind::Qjl, |s| s.sketch = 128);
    assert_eq!(b(s.clone(), 192, 64, 10), 540);
    assert_eq!(build(&s, 192, 64, None, 0).unwrap().static_bytes(), 8);
    // int4 per head with 2 % outliers: round(3.84) = 4 channels; 188 × 4 bits = 12 words = 96 B,
    // ⌈188/64⌉ = 3 groups × 4 B, 4 × 2 B of outliers = 116 B per token; 4 × 2 B of indices.
    let s = spec(QuantKind::Int, |s| s.outliers = 0.02);
    assert_eq!(b(s.clone(), 192, 64, 1), 116);
    let cal = vec![1.0; 192];
    assert_eq!(build(&s, 192, 64, Some(&cal), 0).unwrap().static_bytes(), 8);
    // Window and incomplete block: 100 tokens, window 10, blocks of 32: 90 quantized (2 full
    // blocks end at 64, the third block [64, 96) is complete too) → min(90, 96) = 90.
    let s = spec(QuantKind::Sign, |s| {
        s.axis = Axis::Channel;
        s.group = 32;
    });
    let q = build(&s, 192, 64, None, 0).unwrap();
    assert_eq!(quantized_prefix(100, 10, 32), 90);
    assert_eq!(
        layer_bytes(q.as_ref(), 100, 10, 192),
        90 * 24 + 3 * 192 * 2 + 10 * 2 * 192
    );
}

#[test]
fn the_quantized_prefix_is_what_the_last_query_reads_quantized() {
    for t in 1..70 {
        for w in [0, 1, 5, 33] {
            for block in [1, 4, 32] {
                let n = (0..t).filter(|&j| !reads_float(t - 1, j, w, block)).count();
                assert_eq!(
                    n,
                    quantized_prefix(t, w, block),
                    "t {t} w {w} block {block}"
                );
                // What is quantized is a prefix.
                assert!((0..n).all(|j| !reads_float(t - 1, j, w, block)));
            }
        }
    }
}

#[test]
fn invalid_specs_name_the_key() {
    let key = |s: QuantSpec| s.validate().unwrap_err().0;
    assert_eq!(key(spec(QuantKind::Int, |s| s.bits = 3)), "bits");
    assert_eq!(
        key(spec(QuantKind::Sign, |s| s.axis = Axis::Channel)),
        "group"
    );
    assert_eq!(
        key(spec(QuantKind::Float, |s| s.outliers = 0.1)),
        "outliers"
    );
    assert_eq!(
        key(spec(QuantKind::Int, |s| s.zero_point = true)),
        "zero_point"
    );
    assert_eq!(key(spec(QuantKind::Sign, |s| s.outliers = 0.9)), "outliers");
    let mut c = CacheSpec::float();
    c.values = spec(QuantKind::Qjl, |_| {});
    assert_eq!(c.validate().unwrap_err().0, "values.kind");
    let mut c = CacheSpec::float();
    c.values.pre_rope = true;
    assert_eq!(c.validate().unwrap_err().0, "values.pre_rope");
    let t: std::result::Result<QuantSpec, _> = toml::from_str("kind = \"sign\"\ngroupp = 3");
    assert!(t.is_err());
}

#[test]
fn f16_rounding_directions() {
    for v in [0.0f32, 1e-3, -1e-3, 0.1, -0.1, 3.3, -7.77, 1000.1] {
        assert!(f16_down(v) <= v && f16_up(v) >= v, "{v}");
        assert!(
            (f16_up(v) - f16_down(v)).abs() <= v.abs() * 2f32.powi(-9) + 1e-7,
            "{v}"
        );
    }
}
