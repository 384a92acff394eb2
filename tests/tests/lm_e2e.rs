//! `kind = "lm"` end to end: the tiny STE ablation sweep (a summary row per estimator), a tiny
//! run → checkpoint → resume (bit-identical) → export, and bad inputs.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn data_override() -> String {
    format!(
        "data.path=\"{}\"",
        s(&repo_root().join("datasets/kjv-text"))
    )
}

const ESTIMATORS: [&str; 8] = [
    "identity",
    "clipped",
    "approx_sign",
    "swish_sign",
    "ede",
    "reste",
    "fourier",
    "stochastic",
];

#[test]
fn tiny_ste_sweep_has_a_row_per_estimator_and_report_regenerates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let recipe = s(&repo_root().join("recipes/ablation/ste-tiny.toml"));
    bllm_ok(&["sweep", &recipe, &data_override(), "--run-dir", &s(&dir)]);
    let md = String::from_utf8(read(&dir.join("summary.md"))).unwrap();
    let csv = String::from_utf8(read(&dir.join("summary.csv"))).unwrap();
    assert!(md.contains("held-out bits/byte"), "{md}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + ESTIMATORS.len(), "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (est, line) in ESTIMATORS.iter().zip(&lines[1..]) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], format!("estimator.kind={est}"), "{line}");
        assert_eq!(f[col("runs")], "3", "{line}");
        let bpb: f64 = f[col("eval_bpb_mean")].parse().unwrap();
        let unigram: f64 = f[col("unigram_bpb")].parse().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0 && bpb < 8.0, "{line}");
        assert!((4.0..5.0).contains(&unigram), "{line}");
        for m in [
            "shadow_cosine_mean",
            "fd_sign_agreement_mean",
            "flip_ratio_mean",
            "pass_through_mean",
        ] {
            let v: f64 = f[col(m)]
                .parse()
                .unwrap_or_else(|_| panic!("{m} empty: {line}"));
            assert!(v.is_finite(), "{m}: {line}");
        }
    }
    // Every run has its summary, curves and a final checkpoint.
    let run = dir.join("estimator.kind=ede,seed=1");
    let summary: serde_json::Value =
        serde_json::from_slice(&read(&run.join("summary.json"))).unwrap();
    assert_eq!(summary["estimator"], "ede");
    assert!(run.join("final/model.mpk").is_file());
    // bllm report regenerates the tables byte for byte and plots the curves.
    std::fs::remove_file(dir.join("summary.md")).unwrap();
    bllm_ok(&["report", &s(&dir)]);
    assert_eq!(
        String::from_utf8(read(&dir.join("summary.md"))).unwrap(),
        md
    );
    assert_eq!(
        String::from_utf8(read(&dir.join("summary.csv"))).unwrap(),
        csv
    );
    for p in [
        "bpb.png",
        "loss.png",
        "attention_min.png",
        "shadow_cosine.png",
    ] {
        assert!(dir.join("plots").join(p).is_file(), "{p}");
    }
}

fn tiny_binary_all(dir: &Path, extra: &[&str]) -> Result<(), String> {
    let recipe = s(&repo_root().join("recipes/lm/binary-all.toml"));
    let d = data_override();
    let run_dir = s(dir);
    let mut args = vec![
        "run",
        recipe.as_str(),
        d.as_str(),
        "data.train_bytes=20000",
        "data.eval_bytes=1024",
        "model.d_model=16",
        "model.layers=1",
        "model.heads=2",
        "model.context=16",
        "train.steps=12",
        "schedule.warmup_steps=0",
        "train.batch_size=8",
        "eval.every=6",
        "checkpoint.every=6",
        "monitors.every=3",
        "monitors.finite_difference.every=6",
        "export.weights=true",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--run-dir", &run_dir]);
    bllm(&args)
}

#[test]
fn binary_lm_trains_resumes_bit_identically_and_exports_its_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_binary_all(&a, &[]).unwrap();
    tiny_binary_all(&b, &["--max-steps", "6"]).unwrap();
    assert!(!b.join("summary.json").exists());
    tiny_binary_all(&b, &["--resume"]).unwrap();
    for f in ["final/model.mpk", "final/model.safetensors", "summary.json"] {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{f} differs after resume"
        );
    }
    let sa: serde_json::Value = serde_json::from_slice(&read(&a.join("summary.json"))).unwrap();
    assert_eq!(sa["steps"], 12);
    assert!(sa["model_bytes"].as_u64().unwrap() < sa["model_float32_bytes"].as_u64().unwrap());
    // Metrics: held-out bits per byte and the per-layer monitors.
    let metrics = String::from_utf8(read(&a.join("metrics.jsonl"))).unwrap();
    for key in [
        "\"bpb\"",
        "shadow_cosine/block0.q",
        "fd_sign_agreement/head",
        "attention/l0h1",
        "flip_ratio",
    ] {
        assert!(metrics.contains(key), "{key} not logged");
    }
    // Export: every 1-bit layer in the code contract layout, one row per output channel.
    let export = a.join("final/export");
    for (layer, rows, bits) in [("embed", 16, 256), ("block0.up", 64, 16), ("head", 256, 16)] {
        let m: serde_json::Value =
            serde_json::from_slice(&read(&export.join(layer).join("manifest.json"))).unwrap();
        assert_eq!(
            (m["rows"].as_u64(), m["bits"].as_u64()),
            (Some(rows), Some(bits)),
            "{layer}"
        );
        bllm_ok(&["codes", "info", &s(&export.join(layer))]);
        assert!(export.join(layer).join("scales.json").is_file());
    }
}

#[test]
fn bitnet_lm_logs_activation_clamping_and_exports_two_planes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let recipe = s(&repo_root().join("recipes/lm/bitnet158.toml"));
    bllm_ok(&[
        "run",
        &recipe,
        &data_override(),
        "data.train_bytes=20000",
        "data.eval_bytes=1024",
        "model.d_model=16",
        "model.layers=1",
        "model.heads=2",
        "model.context=16",
        "train.steps=6",
        "schedule.warmup_steps=0",
        "train.batch_size=8",
        "monitors.every=3",
        "export.weights=true",
        "--run-dir",
        &s(&dir),
    ]);
    let metrics = String::from_utf8(read(&dir.join("metrics.jsonl"))).unwrap();
    assert!(metrics.contains("act_clamp"));
    let planes = dir.join("final/export/block0.q");
    assert!(planes.join("sign/manifest.json").is_file());
    assert!(planes.join("nonzero/manifest.json").is_file());
}

#[test]
fn lm_input_errors_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = s(&repo_root().join("recipes/lm/float.toml"));
    let missing = tmp.path().join("nope.txt");
    let e = bllm(&[
        "run",
        &recipe,
        &format!("data.path=\"{}\"", s(&missing)),
        "--run-dir",
        &s(&tmp.path().join("r1")),
    ])
    .unwrap_err();
    assert!(e.contains("nope.txt"), "{e}");
    let e = bllm(&[
        "run",
        &recipe,
        &data_override(),
        "data.eval_bytes=10",
        "--run-dir",
        &s(&tmp.path().join("r2")),
    ])
    .unwrap_err();
    assert!(
        e.contains("data.eval_bytes") && e.contains("model.context"),
        "{e}"
    );
    let e = bllm(&[
        "run",
        &recipe,
        "model.heads=5",
        "model.projections.q=ternary",
        "model.attention=sparse",
        "--run-dir",
        &s(&tmp.path().join("r3")),
    ])
    .unwrap_err();
    for key in ["model.heads", "model.projections.q", "model.attention"] {
        assert!(e.contains(key), "{key} not reported: {e}");
    }
}

#[test]
fn literature_options_train_end_to_end() {
    // SubLN, BiBERT {0,1} attention, RSign thresholds, elastic activations: each runs through a
    // recipe, learns (train loss falls) and logs what its monitors see.
    let tmp = tempfile::tempdir().unwrap();
    for (i, opts) in [
        &["model.sub_norm=true", "model.activations=rsign"][..],
        &["model.attention=binary_mask", "model.activations=elastic"][..],
    ]
    .iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("r{i}"));
        let mut extra = opts.to_vec();
        extra.extend_from_slice(&["train.steps=24", "checkpoint.every=0", "eval.every=0"]);
        let recipe = s(&repo_root().join("recipes/ablation/ste.toml"));
        let d = data_override();
        let run_dir = s(&dir);
        let mut args = vec![
            "run",
            recipe.as_str(),
            d.as_str(),
            "data.train_bytes=20000",
            "data.eval_bytes=1024",
            "model.d_model=16",
            "model.layers=1",
            "model.heads=2",
            "model.context=16",
            "schedule.warmup_steps=0",
            "train.batch_size=8",
            "monitors.every=4",
            "monitors.finite_difference.every=12",
        ];
        args.extend_from_slice(&extra);
        args.extend_from_slice(&["--run-dir", &run_dir]);
        // ste.toml has a [sweep] table: run the base recipe through a copy without it.
        let text = std::fs::read_to_string(repo_root().join("recipes/ablation/ste.toml")).unwrap();
        let base = text.split("\n[sweep]").next().unwrap().to_owned();
        let copy = tmp.path().join(format!("ste-{i}.toml"));
        std::fs::write(&copy, base).unwrap();
        let c = s(&copy);
        args[1] = c.as_str();
        bllm_ok(&args);
        let metrics = String::from_utf8(read(&dir.join("metrics.jsonl"))).unwrap();
        let losses: Vec<f64> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["split"] == "train")
            .filter_map(|v| v["loss"].as_f64())
            .collect();
        assert!(
            losses.last().unwrap() < &losses[0],
            "{opts:?}: loss did not fall: {losses:?}"
        );
        assert!(metrics.contains("attention/l0h1"), "{opts:?}");
    }
}
