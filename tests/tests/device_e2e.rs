//! Selecting the CUDA backend: every training kind gives a clear error, never a panic, and
//! writes nothing, when the build has no `cuda` feature (the normal test build) or the machine
//! has no usable GPU. On a GPU machine with a `cuda` build the runs proceed instead
//! (`scripts/gpu-check.sh` runs the quickstart there).
//!
//! `device = "wgpu"` runs the same generic trainers on Burn's wgpu backend — a CubeCL backend
//! like CUDA — which CI has on Mesa's lavapipe: every kind trains there and agrees with the CPU
//! run to rounding.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_e2e::{bllm, repo_root};

#[test]
fn device_cuda_is_a_clear_error_for_every_kind_without_a_gpu_build() {
    let dir = tempfile::tempdir().unwrap();
    for (i, recipe) in [
        "recipes/smoke.toml",
        "recipes/quickstart.toml",
        "recipes/lm/float.toml",
        "recipes/moe/clusters.toml",
        "recipes/adapters/lora.toml",
    ]
    .iter()
    .enumerate()
    {
        let run_dir = dir.path().join(format!("run{i}"));
        let path = repo_root().join(recipe);
        let r = bllm(&[
            "run",
            path.to_str().unwrap(),
            "--device",
            "cuda",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ]);
        match r {
            Err(e) => {
                assert!(e.contains("device = \"cuda\""), "{recipe}: {e}");
                assert!(
                    e.contains("--features cuda") || e.contains("no usable device"),
                    "{recipe}: {e}"
                );
                let written = std::fs::read_dir(&run_dir).map(|d| d.count()).unwrap_or(0);
                assert_eq!(
                    written, 0,
                    "{recipe}: a failed device selection wrote files"
                );
            }
            Ok(()) => eprintln!("{recipe}: ran on CUDA (this build has a GPU)"),
        }
    }
}

#[test]
fn device_override_and_flag_are_validated_and_sweeps_refuse_cuda_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let smoke = repo_root().join("recipes/smoke.toml");
    let e = bllm(&["run", smoke.to_str().unwrap(), "--device", "tpu"]).unwrap_err();
    assert!(e.contains("device") && e.contains("cuda"), "{e}");
    let e = bllm(&["run", smoke.to_str().unwrap(), "device=\"tpu\""]).unwrap_err();
    assert!(e.contains("device") && e.contains("cuda"), "{e}");
    let sweep = repo_root().join("recipes/ablation/ste-tiny.toml");
    let out = dir.path().join("sweep");
    if let Err(e) = bllm(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--device",
        "cuda",
        "--run-dir",
        out.to_str().unwrap(),
    ]) {
        assert!(e.contains("device = \"cuda\""), "{e}");
    }
}

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

fn close(a: &serde_json::Value, b: &serde_json::Value, key: &str, rel: f64) {
    let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
    assert!(
        (x - y).abs() <= rel * y.abs().max(1e-9),
        "{key}: wgpu {x} vs cpu {y} (allowed relative {rel})"
    );
}

/// Every kind, a few steps on wgpu and on the CPU: the CubeCL backend sums in another order,
/// so results agree to rounding (measured: LM loss 1e-7 relative; codes and MoE statistics
/// identical), not bit for bit.
#[test]
fn every_kind_trains_on_the_wgpu_backend_and_agrees_with_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let root = repo_root();
    let at = |key: &str, rel: &str| format!("{key}={:?}", root.join(rel).to_str().unwrap());
    let runs: [(&str, &str, Vec<String>); 5] = [
        ("smoke", "recipes/smoke.toml", vec!["train.steps=30".into()]),
        (
            "ret",
            "recipes/quickstart.toml",
            vec![
                "train.steps=3".into(),
                at("data.path", "datasets/kjv-minilm/embeddings.npy"),
                // The baselines and re-ranking rows are backend-independent: skip them.
                r#"eval.methods=["lsh"]"#.into(),
                "eval.rerank=[]".into(),
                "export.faiss=false".into(),
            ],
        ),
        (
            "lm",
            "recipes/lm/binary-all.toml",
            vec![
                "train.steps=4".into(),
                "schedule.warmup_steps=0".into(),
                "data.eval_bytes=4096".into(),
                at("data.path", "datasets/kjv-text"),
            ],
        ),
        (
            "moe",
            "recipes/moe/clusters.toml",
            vec!["train.steps=20".into()],
        ),
        (
            "ad",
            "recipes/adapters/binary-lora.toml",
            vec![
                "train.steps=3".into(),
                "schedule.warmup_steps=0".into(),
                "source.steps=3".into(),
                "data.eval_bytes=4096".into(),
                at("data.path", "datasets/sotu-text"),
                at("source.path", "datasets/kjv-text"),
                format!("source.cache={:?}", cache.to_str().unwrap()),
            ],
        ),
    ];
    for (name, recipe, overrides) in &runs {
        for device in ["wgpu", "cpu"] {
            let path = repo_root().join(recipe);
            let out = d.join(format!("{name}-{device}"));
            let mut args = vec!["run", path.to_str().unwrap()];
            args.extend(overrides.iter().map(String::as_str));
            args.extend(["--device", device, "--run-dir", out.to_str().unwrap()]);
            if let Err(e) = bllm(&args) {
                if device == "wgpu"
                    && std::env::var("BLLM_REQUIRE_KERNEL_DEVICE").as_deref() != Ok("1")
                {
                    eprintln!(
                        "SKIPPED (set BLLM_REQUIRE_KERNEL_DEVICE=1 to make this an error): {e}"
                    );
                    return;
                }
                panic!("{name} on {device}: {e}");
            }
        }
        let (g, c) = (
            summary(&d.join(format!("{name}-wgpu"))),
            summary(&d.join(format!("{name}-cpu"))),
        );
        match *name {
            "smoke" => {
                close(&g, &c, "train_loss", 1e-4);
                close(&g, &c, "eval_accuracy", 0.02);
            }
            "ret" => {
                close(&g, &c, "train_loss", 1e-4);
                let (a, b) = (
                    d.join("ret-wgpu/export/codes"),
                    d.join("ret-cpu/export/codes"),
                );
                bllm(&[
                    "codes",
                    "diff",
                    a.to_str().unwrap(),
                    b.to_str().unwrap(),
                    "--max-bit-fraction",
                    "0.01",
                ])
                .unwrap();
            }
            "lm" => {
                close(&g, &c, "train_loss", 1e-4);
                close(&g, &c, "eval_bpb", 1e-4);
            }
            "moe" => {
                close(&g, &c, "eval_loss", 1e-3);
                close(&g, &c, "load_entropy", 1e-2);
            }
            _ => {
                close(&g, &c, "target_bpb", 1e-4);
                close(&g, &c, "source_bpb", 1e-4);
            }
        }
    }
}
