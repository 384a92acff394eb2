//! Selecting the CUDA backend: every training kind gives a clear error, never a panic, and
//! writes nothing, when the build has no `cuda` feature (the normal test build) or the machine
//! has no usable GPU. On a GPU machine with a `cuda` build the runs proceed instead
//! (`scripts/gpu-check.sh` runs the quickstart there).

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
                    e.contains("--features cuda") || e.contains("no usable CUDA device"),
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
