//! Parity of the CubeCL kernels with their CPU counterparts, on wgpu.
//!
//! Without a GPU these run on Mesa's lavapipe (Debian `mesa-vulkan-drivers libvulkan1`, with
//! `XDG_RUNTIME_DIR` set), which `.ci/run` installs. When no adapter can be opened the tests
//! print why and pass, unless `BLLM_REQUIRE_KERNEL_DEVICE=1` (set by CI), where they fail.
//! `scripts/gpu-check.sh` runs the same checks on CUDA (`BLLM_KERNEL_DEVICE=cuda`).

use bllm_codes::PackedCodes;
use bllm_codes::rng::SplitMix64;
use bllm_kernels::cpu::{self, Epilogue, PackedInput, PackedLinear};
use bllm_kernels::device::{self, AnyGpu, DeviceKind};
use bllm_kernels::{KernelError, cube};

fn gpu() -> Option<AnyGpu> {
    let kind: DeviceKind = std::env::var("BLLM_KERNEL_DEVICE")
        .unwrap_or_else(|_| "wgpu".into())
        .parse()
        .expect("BLLM_KERNEL_DEVICE must be wgpu or cuda");
    match device::open(kind) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("BLLM_REQUIRE_KERNEL_DEVICE").as_deref() != Ok("1") => {
            eprintln!("SKIPPED (set BLLM_REQUIRE_KERNEL_DEVICE=1 to make this an error): {e}");
            None
        }
        Err(e) => {
            panic!("BLLM_REQUIRE_KERNEL_DEVICE=1 but the kernel device cannot be opened: {e}")
        }
    }
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// Random codes with few distinct rows, so that Hamming ties are everywhere.
fn codes_with_ties(rows: usize, bits: usize, distinct: usize, seed: u64) -> PackedCodes {
    let base = randn(distinct * bits, seed);
    let mut r = SplitMix64::new(seed + 99);
    let x: Vec<f32> = (0..rows)
        .flat_map(|_| {
            let i = (r.next_u64() % distinct as u64) as usize;
            base[i * bits..(i + 1) * bits].to_vec()
        })
        .collect();
    cpu::pack_signs(&x, bits, bits).expect("pack")
}

#[test]
fn pack_matches_the_contract_packer_including_zero_and_negative_zero() {
    let Some(g) = gpu() else { return };
    for &(rows, dim, bits) in &[
        (1, 1, 1),
        (3, 31, 31),
        (5, 64, 64),
        (7, 65, 65),
        (4, 200, 130),
        (300, 96, 96),
    ] {
        let mut x = randn(rows * dim, (rows * dim) as u64);
        x[0] = 0.0;
        if x.len() > 1 {
            x[1] = -0.0;
        }
        let want = cpu::pack_signs(&x, dim, bits).expect("cpu pack");
        let got = g.pack_signs(&x, dim, bits).expect("gpu pack");
        assert_eq!(got, want, "rows {rows} dim {dim} bits {bits}");
    }
    assert!(g.pack_signs(&[1.0, f32::NAN], 2, 2).is_err());
    assert!(g.pack_signs(&[1.0, 2.0, 3.0], 2, 2).is_err());
}

#[test]
fn repack_on_the_device_equals_the_cpu_repack_and_round_trips() {
    let Some(g) = gpu() else { return };
    for &(rows, bits) in &[(1, 1), (2, 63), (17, 64), (33, 65), (100, 256), (1000, 100)] {
        let codes = cpu::pack_signs(&randn(rows * bits, bits as u64), bits, bits).expect("pack");
        let on_device = g.upload_codes(&codes).expect("upload");
        let layout = match &g {
            #[allow(unreachable_patterns)]
            AnyGpu::Wgpu(w) => w.read_gpu_layout(&on_device).expect("read"),
            #[allow(unreachable_patterns)]
            _ => cpu::to_gpu_layout(&codes),
        };
        assert_eq!(
            layout,
            cpu::to_gpu_layout(&codes),
            "device re-pack, rows {rows} bits {bits}"
        );
        assert_eq!(
            g.download_codes(&on_device).expect("download"),
            codes,
            "round trip"
        );
    }
}

#[test]
fn hamming_topk_is_identical_to_the_cpu_search_ties_included() {
    let Some(g) = gpu() else { return };
    let cases = [
        // (db rows, queries, bits, distinct rows, k)
        (1, 1, 8, 1, 1),
        (7, 3, 31, 2, 7),
        (100, 5, 64, 10, 10),
        (1000, 9, 65, 40, 16),
        (5000, 4, 256, 5000, 10),
        (3000, 2, 3, 8, 100),
        (600, 3, 128, 50, cube::MAX_K),
    ];
    for (i, &(n, nq, bits, distinct, k)) in cases.iter().enumerate() {
        let db = codes_with_ties(n, bits, distinct, i as u64);
        let queries = codes_with_ties(nq, bits, distinct.max(2), 1000 + i as u64);
        let want = bllm_codes::hamming::search(&db, &queries, k).expect("cpu search");
        let on_device = g.upload_codes(&db).expect("upload");
        let got = g.hamming_topk(&on_device, &queries, k).expect("gpu search");
        assert_eq!(got, want, "case {i}: n {n} bits {bits} k {k}");
    }
}

#[test]
fn hamming_topk_refuses_what_it_cannot_do() {
    let Some(g) = gpu() else { return };
    let db = codes_with_ties(600, 64, 600, 1);
    let dev = g.upload_codes(&db).expect("upload");
    let q = codes_with_ties(1, 64, 1, 2);
    let e = g
        .hamming_topk(&dev, &q, cube::MAX_K + 1)
        .map(|_| ())
        .expect_err("k too large");
    assert!(matches!(e, KernelError::Unsupported(_)), "{e}");
    assert!(g.hamming_topk(&dev, &q, 0).is_err());
    let q2 = codes_with_ties(1, 32, 1, 2);
    assert!(g.hamming_topk(&dev, &q2, 1).is_err());
}

/// `|a − b| ≤ 2 ulp(|dot·s| + |bias|) + extra`: the epilogue may be one FMA on the device.
fn close(a: f32, b: f32, mag: f32, extra: f32) -> bool {
    (a - b).abs() <= 2.0 * f32::EPSILON * mag + extra
}

#[test]
fn xnor_and_binary_float_matmuls_match_the_cpu_within_the_documented_tolerance() {
    let Some(g) = gpu() else { return };
    for &(batch, k, out) in &[
        (1, 1, 1),
        (3, 63, 5),
        (16, 64, 70),
        (5, 130, 33),
        (4, 512, 256),
    ] {
        let w = cpu::pack_signs(&randn(out * k, 11 + k as u64), k, k).expect("pack");
        let epi = Epilogue {
            scales: randn(out, 12).iter().map(|v| v.abs() + 0.1).collect(),
            bias: randn(out, 13),
        };
        let x = randn(batch * k, 14 + batch as u64);
        for input in [
            PackedInput::Float,
            PackedInput::Sign {
                threshold: Vec::new(),
                scale: 1.0,
            },
            PackedInput::Sign {
                threshold: randn(k, 15),
                scale: 0.5,
            },
        ] {
            let layer = PackedLinear {
                weights: w.clone(),
                epilogue: epi.clone(),
                input: input.clone(),
            };
            let want = layer.forward(&x, batch).expect("cpu forward");
            let dev = g.upload_linear(&layer).expect("upload");
            let got = g.linear_forward(&dev, &x, batch).expect("gpu forward");
            assert_eq!(got.len(), want.len());
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                let (bi, o) = (j / out, j % out);
                let s = layer.sign_epilogue().scale(o);
                let (mag, extra) = match input {
                    PackedInput::Float => {
                        let sum_abs: f32 = x[bi * k..(bi + 1) * k].iter().map(|v| v.abs()).sum();
                        (sum_abs * s + epi.bias[o].abs(), 1e-6 * s * sum_abs)
                    }
                    PackedInput::Sign { .. } => (k as f32 * s + epi.bias[o].abs(), 0.0),
                };
                assert!(
                    close(*a, *b, mag, extra),
                    "{input:?} batch {batch} k {k} out {out} [{j}]: {a} vs {b}"
                );
            }
        }
    }
}
