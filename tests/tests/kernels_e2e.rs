//! End to end: `bllm bench kernels` (CPU paths, and the CubeCL kernels on wgpu where an adapter
//! exists — lavapipe in CI) and `bllm codes diff`, the two commands `scripts/gpu-check.sh`
//! relies on.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_codes::FloatMatrix;
use bllm_e2e::{bllm, bllm_ok};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn rows(json: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

fn bench(dir: &Path, device: &str) -> Result<Vec<serde_json::Value>, String> {
    let json = dir.join(format!("bench-{device}.json"));
    bllm(&[
        "bench",
        "kernels",
        "--d-in",
        "130",
        "--d-out",
        "70",
        "--batch",
        "1,5",
        "--db-rows",
        "900",
        "--bits",
        "96",
        "--queries",
        "1,7",
        "-k",
        "10",
        "--min-secs",
        "0",
        "--device",
        device,
        "--json",
        s(&json),
    ])?;
    Ok(rows(&json))
}

#[test]
fn kernel_bench_on_the_cpu_reports_every_path_against_the_float_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let r = bench(dir.path(), "cpu").unwrap();
    // Per batch: Burn f32, sgemm, binary × f32, XNOR incl. packing, XNOR pre-packed; then one
    // Hamming row per query count.
    assert_eq!(r.len(), 2 * 5 + 2, "{r:#?}");
    for row in &r {
        assert!(row["median_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(row["device"], "cpu");
    }
    let fastest_f32 = r
        .iter()
        .filter(|x| x["implementation"].as_str().unwrap().starts_with("f32"))
        .filter(|x| x["speedup"].as_f64() == Some(1.0))
        .count();
    assert_eq!(
        fastest_f32, 2,
        "one f32 baseline per batch is the reference"
    );
    let e = bench(dir.path(), "tpu").unwrap_err();
    assert!(e.contains("--device"), "{e}");
}

#[test]
fn kernel_bench_on_wgpu_checks_the_device_against_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let r = match bench(dir.path(), "wgpu") {
        Ok(r) => r,
        Err(e) if std::env::var("BLLM_REQUIRE_KERNEL_DEVICE").as_deref() != Ok("1") => {
            eprintln!("SKIPPED (set BLLM_REQUIRE_KERNEL_DEVICE=1 to make this an error): {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let device: Vec<_> = r.iter().filter(|x| x["device"] == "wgpu").collect();
    // Per batch: binary × f32 and XNOR on the device; one top-k row per query count.
    assert_eq!(device.len(), 2 * 2 + 2, "{r:#?}");
    for row in device {
        let check = row["check"].as_str().unwrap();
        if row["section"] == "hamming top-k" {
            assert_eq!(check, "identical to CPU");
        } else {
            let d: f64 = check.trim_start_matches("max rel Δ ").parse().unwrap();
            assert!(d < 1e-5, "{row}");
        }
    }
}

fn write_npy(path: &Path, data: Vec<f32>, cols: usize) {
    let m = FloatMatrix::new(data.len() / cols, cols, data).unwrap();
    bllm_codes::io::npy::write_f32_npy(path, &m).unwrap();
}

#[test]
fn codes_diff_counts_differing_bits_and_enforces_the_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x: Vec<f32> = (0..40 * 64)
        .map(|i| ((i * 7919 % 13) as f32) - 6.5)
        .collect();
    let mut y = x.clone();
    y[3] = -y[3]; // one sign, one bit
    write_npy(&d.join("x.npy"), x.clone(), 64);
    write_npy(&d.join("y.npy"), y, 64);
    write_npy(&d.join("z.npy"), x[..32 * 64].to_vec(), 64);
    for n in ["x", "y", "z"] {
        bllm_ok(&[
            "codes",
            "pack",
            s(&d.join(format!("{n}.npy"))),
            "--out",
            s(&d.join(n)),
        ]);
    }
    bllm_ok(&["codes", "diff", s(&d.join("x")), s(&d.join("x"))]);
    let e = bllm(&["codes", "diff", s(&d.join("x")), s(&d.join("y"))]).unwrap_err();
    assert!(e.contains("0.0391 % of the bits differ"), "{e}");
    bllm_ok(&[
        "codes",
        "diff",
        s(&d.join("x")),
        s(&d.join("y")),
        "--max-bit-fraction",
        "0.001",
    ]);
    let e = bllm(&["codes", "diff", s(&d.join("x")), s(&d.join("z"))]).unwrap_err();
    assert!(
        e.contains("40 rows × 64 bits") && e.contains("32 rows × 64 bits"),
        "{e}"
    );
}
