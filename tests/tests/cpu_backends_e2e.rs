//! The CPU backends: on the embedded default (`device = "cpu"`) and on each named CPU backend
//! (`flex`, `ndarray`), a run's checkpoint and codes are bit-identical for 1 and 2 threads —
//! at shapes large enough that the backends' parallel paths (gemm's threaded tiles, rayon
//! element-wise and row reductions) are taken — and the two backends train the same model to
//! the same loss within float tolerance.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_e2e::{bllm_ok, repo_root};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The float byte LM recipe at 8 steps: projections `[2048, 64] × [64, 256]` and batch
/// tensors of 2¹⁹ elements, above flex's parallel thresholds.
fn lm(dir: &Path, threads: &str, device: &str, extra: &[&str]) {
    let recipe = s(&repo_root().join("recipes/lm/float.toml"));
    let data = format!(
        "data.path=\"{}\"",
        s(&repo_root().join("datasets/kjv-text"))
    );
    let run = s(dir);
    let dev = format!("device=\"{device}\"");
    let mut args = vec![
        "--threads",
        threads,
        "run",
        &recipe,
        &data,
        &dev,
        "train.steps=8",
        "schedule.warmup_steps=2",
        "data.eval_bytes=4096",
        "eval.every=0",
        "checkpoint.every=0",
        "monitors.every=4",
        "--run-dir",
        &run,
    ];
    args.extend(extra);
    bllm_ok(&args);
}

/// The quickstart retrieval head on 3,000 MiniLM rows, 256 bits, 256 anchors (listwise
/// `[256, 3000]`), random init (ITQ would dominate the test's time).
fn retrieval(dir: &Path, threads: &str, device: &str) {
    let recipe = s(&repo_root().join("recipes/quickstart.toml"));
    let run = s(dir);
    let dev = format!("device=\"{device}\"");
    let data = format!(
        "data.path=\"{}\"",
        s(&repo_root().join("datasets/kjv-minilm/embeddings.npy"))
    );
    bllm_ok(&[
        "--threads",
        threads,
        "run",
        &recipe,
        &dev,
        &data,
        "data.train_rows=3000",
        "model.init=\"random\"",
        "train.steps=6",
        "eval.every=0",
        "eval.methods=[\"lsh\"]",
        "eval.rerank=[100]",
        "checkpoint.every=0",
        "monitors.every=3",
        "export.faiss=false",
        "--run-dir",
        &run,
    ]);
}

fn final_loss(dir: &Path) -> f64 {
    let text = String::from_utf8(read(&dir.join("metrics.jsonl"))).unwrap();
    let last = text
        .lines()
        .rfind(|l| l.contains("\"split\":\"train\""))
        .unwrap()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn lm_checkpoints_do_not_depend_on_the_thread_count_on_any_cpu_backend() {
    let tmp = tempfile::tempdir().unwrap();
    for device in ["cpu", "flex", "ndarray"] {
        let (a, b) = (
            tmp.path().join(format!("{device}-1")),
            tmp.path().join(format!("{device}-2")),
        );
        lm(&a, "1", device, &[]);
        lm(&b, "2", device, &[]);
        for f in ["final/model.safetensors", "final/optimizer.mpk"] {
            assert!(
                read(&a.join(f)) == read(&b.join(f)),
                "{device}: {f} differs between 1 and 2 threads"
            );
        }
    }
    // The two backends compute the same model up to float rounding.
    let (f, n) = (
        final_loss(&tmp.path().join("flex-1")),
        final_loss(&tmp.path().join("ndarray-1")),
    );
    assert!((f - n).abs() < 1e-3 * n.abs(), "flex {f} vs ndarray {n}");
}

#[test]
fn binary_lm_and_retrieval_codes_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("bin-1"), tmp.path().join("bin-2"));
    let bin = [
        "model.projections.q=\"binary\"",
        "model.projections.up=\"binary\"",
        "model.projections.down=\"binary\"",
    ];
    lm(&a, "1", "cpu", &bin);
    lm(&b, "2", "cpu", &bin);
    assert!(read(&a.join("final/model.safetensors")) == read(&b.join("final/model.safetensors")));
    let (a, b) = (tmp.path().join("ret-1"), tmp.path().join("ret-2"));
    retrieval(&a, "1", "cpu");
    retrieval(&b, "2", "cpu");
    assert!(read(&a.join("final/model.mpk")) == read(&b.join("final/model.mpk")));
    let codes = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d.join("export/codes"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    read(&e.path()),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (ca, cb) = (codes(&a), codes(&b));
    assert!(
        ca.iter().any(|(n, _)| n.ends_with(".bcodes")),
        "no codes exported"
    );
    assert!(
        ca == cb,
        "retrieval: exported codes differ between 1 and 2 threads"
    );
}

#[test]
fn bench_train_times_a_case_on_both_backends_beside_pytorch_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let torch = tmp.path().join("torch.json");
    std::fs::write(
        &torch,
        r#"{"torch": "test", "threads": 1, "cases": {"lm-float": {"ms_per_step": 1000.0}}}"#,
    )
    .unwrap();
    let out = tmp.path().join("bench.json");
    let repo = s(&repo_root());
    bllm_ok(&[
        "--threads",
        "1",
        "bench",
        "train",
        "--repo",
        &repo,
        "--cases",
        "lm-float",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--torch",
        &s(&torch),
        "--json",
        &s(&out),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&read(&out)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for (r, b) in rows.iter().zip(["ndarray", "flex"]) {
        assert_eq!(r["case"], "lm-float");
        assert_eq!(r["backend"], b);
        let ms = r["ms_per_step"].as_f64().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{r}");
    }
    assert_eq!(v["torch"]["cases"]["lm-float"]["ms_per_step"], 1000.0);
    // Bad arguments and a malformed PyTorch file are errors naming what was expected.
    let e = bllm_e2e::bllm(&["bench", "train", "--cases", "lm-huge"]).unwrap_err();
    assert!(e.contains("lm-huge") && e.contains("lm-float"), "{e}");
    let e = bllm_e2e::bllm(&["bench", "train", "--backends", "cuda"]).unwrap_err();
    assert!(e.contains("ndarray or flex"), "{e}");
    std::fs::write(&torch, r#"{"cases": {"lm-float": {"ms": 3}}}"#).unwrap();
    let e = bllm_e2e::bllm(&["bench", "train", "--torch", &s(&torch)]).unwrap_err();
    assert!(e.contains("cases.lm-float.ms_per_step"), "{e}");
}
