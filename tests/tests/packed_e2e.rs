//! End to end: `bllm bench packed` trains a small 1-bit classifier, evaluates it on the popcount
//! kernels and through Burn's float forward, and exports the float matrices the PyTorch script
//! reads. The export is checked independently here: a plain-Rust float evaluation of the
//! exported layers must predict what the packed kernels predicted.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_codes::io::npy::read_float_matrix;
use bllm_e2e::{bllm, bllm_ok, repo_root};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Predictions of the exported model by plain float loops (`h = h·W + b`, then the plan's
/// activation).
fn float_predictions(dir: &Path) -> Vec<usize> {
    let plan = json(&dir.join("plan.json"));
    let x = read_float_matrix(&dir.join("x.npy")).unwrap();
    let (rows, mut width) = (x.rows(), x.cols());
    let mut h = x.as_slice().to_vec();
    for l in plan["layers"].as_array().unwrap() {
        let w = read_float_matrix(&dir.join(l["weight"].as_str().unwrap())).unwrap();
        let b = read_float_matrix(&dir.join(l["bias"].as_str().unwrap())).unwrap();
        assert_eq!(w.rows(), width, "{l}");
        let out = w.cols();
        let mut next = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let mut acc = b.as_slice()[o] as f64;
                for k in 0..width {
                    acc += h[r * width + k] as f64 * w.as_slice()[k * out + o] as f64;
                }
                next[r * out + o] = match l["activation"].as_str().unwrap() {
                    "sign" => {
                        if acc >= 0.0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                    "relu" => acc.max(0.0) as f32,
                    _ => acc as f32,
                };
            }
        }
        h = next;
        width = out;
    }
    h.chunks(width)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

fn check(recipe: &str, sets: &[&str], kernels: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (run, export, out) = (
        tmp.path().join("run"),
        tmp.path().join("export"),
        tmp.path().join("packed.json"),
    );
    let recipe = s(&repo_root().join(recipe));
    let (run_s, export_s, out_s) = (s(&run), s(&export), s(&out));
    let mut args = vec![
        "--threads",
        "2",
        "bench",
        "packed",
        "--recipe",
        &recipe,
        "--run-dir",
        &run_s,
        "--repeats",
        "1",
        "--export",
        &export_s,
        "--json",
        &out_s,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    bllm_ok(&args);
    let v = json(&out);
    let layers: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), kernels.len(), "{v}");
    for (l, k) in layers.iter().zip(kernels) {
        assert!(l.contains(k), "layer {l:?} should run on {k:?}");
    }
    // The packed kernels compute the float model's logits up to rounding.
    assert!(v["max_rel_logit_diff"].as_f64().unwrap() < 1e-4, "{v}");
    assert!(v["agreement"].as_f64().unwrap() >= 0.98, "{v}");
    assert!(v["packed_weight_bytes"].as_u64() < v["float_weight_bytes"].as_u64());
    // The export, evaluated independently, predicts what the packed path predicted.
    let pred = float_predictions(&export);
    let bllm_pred = read_float_matrix(&export.join("bllm_pred.npy")).unwrap();
    let same = pred
        .iter()
        .zip(bllm_pred.as_slice())
        .filter(|(a, b)| **a as f32 == **b)
        .count();
    assert!(
        same as f64 >= 0.98 * pred.len() as f64,
        "{same} of {} predictions agree",
        pred.len()
    );
    let labels = read_float_matrix(&export.join("labels.npy")).unwrap();
    let correct = bllm_pred
        .as_slice()
        .iter()
        .zip(labels.as_slice())
        .filter(|(a, b)| a == b)
        .count();
    let acc = correct as f64 / labels.rows() as f64;
    assert!(
        (acc - v["packed_accuracy"].as_f64().unwrap()).abs() < 1e-12,
        "{v}"
    );
    // A finished run is evaluated again without training it again: the same numbers.
    let out2 = tmp.path().join("again.json");
    bllm_ok(&[
        "bench",
        "packed",
        "--run-dir",
        &run_s,
        "--repeats",
        "1",
        "--json",
        &s(&out2),
    ]);
    let w = json(&out2);
    assert_eq!(v["packed_accuracy"], w["packed_accuracy"]);
    assert_eq!(v["float_accuracy"], w["float_accuracy"]);
}

#[test]
fn sign_activations_run_on_xnor_popcount_and_match_the_float_model() {
    check(
        "recipes/bench/packed-mlp.toml",
        &[
            "data.dim=48",
            "data.classes=5",
            "data.train_size=256",
            "data.eval_size=67",
            "model.hidden=[96, 70]",
            "train.steps=6",
            "train.batch_size=32",
            "monitors.every=6",
        ],
        &["float 48→96", "XNOR-popcount", "XNOR-popcount"],
    );
}

#[test]
fn relu_activations_run_on_the_binary_by_float_kernel() {
    // The smoke recipe: 1-bit hidden layer on float inputs, ReLU, float last layer.
    check(
        "recipes/smoke.toml",
        &[
            "train.steps=5",
            "schedule.warmup_steps=1",
            "monitors.every=5",
        ],
        &["binary × float", "float"],
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let lm = s(&repo_root().join("recipes/lm/float.toml"));
    let e = bllm(&["bench", "packed", "--recipe", &lm]).unwrap_err();
    assert!(e.contains("classify"), "{e}");
    let e = bllm(&["bench", "packed", "--repeats", "0"]).unwrap_err();
    assert!(e.contains("--repeats"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let torch = tmp.path().join("t.json");
    std::fs::write(&torch, r#"{"cases": {}}"#).unwrap();
    let e = bllm(&["bench", "packed", "--torch", &s(&torch)]).unwrap_err();
    assert!(e.contains("packed.ms_per_eval"), "{e}");
}
