//! `kind = "moe"` end to end: every router trains on the clusters task to well above chance,
//! a run resumes bit-identically, the LM variant runs, the router sweep's tables, bad inputs.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&dir.join("summary.json"))).unwrap()
}

fn clusters(dir: &Path, extra: &[&str]) -> Result<(), String> {
    let recipe = s(&repo_root().join("recipes/moe/clusters.toml"));
    let run_dir = s(dir);
    let mut args = vec![
        "run",
        recipe.as_str(),
        "train.steps=300",
        "checkpoint.every=150",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--run-dir", &run_dir]);
    bllm(&args)
}

#[test]
fn every_router_learns_the_clusters_task_well_above_chance() {
    let tmp = tempfile::tempdir().unwrap();
    for router in ["softmax", "binary", "sign_code", "gumbel", "hash"] {
        for balancing in ["none", "aux_loss", "aux_free"] {
            let dir = tmp.path().join(format!("{router}-{balancing}"));
            clusters(
                &dir,
                &[
                    &format!("moe.router={router}"),
                    &format!("moe.balancing={balancing}"),
                ],
            )
            .unwrap();
            let sm = summary(&dir);
            let acc = sm["metric"].as_f64().unwrap();
            // 32 classes: chance is 1/32.
            assert!(acc > 0.6, "{router}/{balancing}: accuracy {acc}");
            assert_eq!(sm["metric_name"], "accuracy");
            let e = sm["load_entropy"].as_f64().unwrap();
            assert!(
                (0.0..=1.0).contains(&e),
                "{router}/{balancing}: entropy {e}"
            );
            if router == "hash" {
                assert_eq!(sm["collapse_events"], 0, "hash routing must not collapse");
            }
        }
    }
}

#[test]
fn moe_run_resumes_bit_identically_and_logs_load_balance() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ov = ["moe.router=sign_code", "moe.balancing=aux_free"];
    clusters(&a, &ov).unwrap();
    let mut stop = ov.to_vec();
    stop.extend_from_slice(&["--max-steps", "150"]);
    clusters(&b, &stop).unwrap();
    let mut resume = ov.to_vec();
    resume.push("--resume");
    clusters(&b, &resume).unwrap();
    for f in ["final/model.mpk", "summary.json", "metrics.jsonl"] {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{f} differs after resume"
        );
    }
    let metrics = String::from_utf8(read(&a.join("metrics.jsonl"))).unwrap();
    for key in [
        "load_entropy/l0",
        "max_over_mean",
        "dropped",
        "routing_flip",
        "\"accuracy\"",
    ] {
        assert!(metrics.contains(key), "{key} not logged");
    }
}

#[test]
fn a_collapsing_router_records_collapse_events() {
    // No balancing, no capacity slack, a long starvation window cut short: the softmax router
    // collapses on this task (measured), and the event names its reasons.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    clusters(
        &dir,
        &["moe.collapse.dead_window=100", "moe.capacity_factor=1.0"],
    )
    .unwrap();
    let events = String::from_utf8(read(&dir.join("events.jsonl"))).unwrap();
    assert!(
        events.contains("\"collapse\""),
        "no collapse event: {events}"
    );
    assert!(summary(&dir)["collapse_events"].as_u64().unwrap() >= 1);
}

#[test]
fn moe_lm_trains_and_the_router_sweep_writes_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = s(&repo_root().join("recipes/moe/lm.toml"));
    let dir = tmp.path().join("lm");
    let data = format!(
        "data.path=\"{}\"",
        s(&repo_root().join("datasets/kjv-text"))
    );
    bllm_ok(&[
        "run",
        &recipe,
        &data,
        "data.train_bytes=20000",
        "data.eval_bytes=1024",
        "model.d_model=16",
        "model.layers=1",
        "model.heads=2",
        "model.context=16",
        "moe.experts=4",
        "moe.expert_hidden=16",
        "moe.router=hash",
        "train.steps=10",
        "schedule.warmup_steps=0",
        "train.batch_size=8",
        "eval.every=0",
        "checkpoint.every=0",
        "--run-dir",
        &s(&dir),
    ]);
    let sm = summary(&dir);
    assert_eq!(sm["metric_name"], "bpb");
    assert!(sm["metric"].as_f64().unwrap().is_finite());
    // The router ablation at toy scale: one row per (router, balancing).
    let sweep = s(&repo_root().join("recipes/ablation/routers.toml"));
    let sd = tmp.path().join("sweep");
    bllm_ok(&[
        "sweep",
        &sweep,
        "train.steps=30",
        "schedule.warmup_steps=0",
        "eval.every=0",
        "--run-dir",
        &s(&sd),
    ]);
    let csv = String::from_utf8(read(&sd.join("summary.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 1 + 15, "{csv}");
    assert!(csv.lines().next().unwrap().contains("collapsed_runs"));
    let md = String::from_utf8(read(&sd.join("summary.md"))).unwrap();
    std::fs::remove_file(sd.join("summary.md")).unwrap();
    bllm_ok(&["report", &s(&sd)]);
    assert_eq!(String::from_utf8(read(&sd.join("summary.md"))).unwrap(), md);
}

#[test]
fn moe_input_errors_are_reported_together() {
    let recipe = s(&repo_root().join("recipes/moe/clusters.toml"));
    let e = bllm(&[
        "validate",
        &recipe,
        "moe.router=sign_code",
        "moe.experts=6",
        "moe.top_k=9",
        "moe.balancing=magic",
    ])
    .unwrap_err();
    for key in ["moe.experts", "moe.top_k", "moe.balancing"] {
        assert!(e.contains(key), "{key} not reported: {e}");
    }
}
