//! Training end to end on the smoke recipe: run → checkpoint → resume (bit-identical) →
//! monitors → sweep tables.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn smoke() -> String {
    repo_root()
        .join("recipes/smoke.toml")
        .to_str()
        .unwrap()
        .to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn run_writes_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=60",
        "checkpoint.every=20",
        "checkpoint.keep_last=1",
        "--run-dir",
        s(&run),
    ]);
    for f in [
        "recipe.resolved.toml",
        "metrics.jsonl",
        "events.jsonl",
        "summary.json",
        "final/model.mpk",
        "final/optimizer.mpk",
        "final/trainer.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // keep_last = 1: checkpoint-20 pruned, 40 kept (60 is the final one).
    assert!(!run.join("checkpoint-20").exists() && run.join("checkpoint-40").is_dir());
    // The binary layer's weights are exported in the code contract layout with their scales.
    let out = bllm_e2e::bllm(&["codes", "info", s(&run.join("final/export/binary0"))]);
    assert!(out.is_ok(), "{out:?}");
    let (codes, manifest) =
        bllm_codes::io::read_codes_dir(&run.join("final/export/binary0")).unwrap();
    assert_eq!((codes.rows(), codes.bits()), (64, 32));
    assert!(manifest.encoder.unwrap().contains("clipped"));
    // Tensors are also saved as safetensors, named by module path.
    let st = read(&run.join("final/model.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let w = st.tensor("binary_layers.0.weight").unwrap();
    assert_eq!(w.shape(), [32, 64]);
    assert_eq!(st.tensor("float_layers.0.bias").unwrap().shape(), [4]);
    let resolved = String::from_utf8(read(&run.join("recipe.resolved.toml"))).unwrap();
    assert!(resolved.contains("steps = 60"), "{resolved}");
    let summary: serde_json::Value =
        serde_json::from_slice(&read(&run.join("summary.json"))).unwrap();
    assert_eq!(summary["steps"], 60);
    assert!(
        summary["eval_accuracy"].as_f64().unwrap() > 0.5,
        "{summary}"
    );
    // Metrics carry the monitors.
    let metrics = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in [
        "loss",
        "lr",
        "grad_norm",
        "flip_ratio",
        "pass_through",
        "quant_error",
    ] {
        assert!(first.get(k).is_some(), "{k} missing from {first}");
    }
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let common = [
        "train.steps=80",
        "checkpoint.every=30",
        "model.binary_activations=true",
        "optimizer.kind=bop_adam",
    ];
    let args = |run: &Path, extra: &[&str]| {
        let mut v: Vec<String> = vec!["run".into(), smoke()];
        v.extend(common.iter().map(|x| x.to_string()));
        v.extend(["--run-dir".into(), s(run).to_owned()]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let call = |v: Vec<String>| bllm_ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    call(args(&a, &[]));
    call(args(&b, &["--max-steps", "45"]));
    assert!(!b.join("summary.json").exists() && b.join("checkpoint-45").is_dir());
    // A crash during a later checkpoint write leaves a temp dir and maybe a partial directory;
    // resume must ignore both and use checkpoint-45.
    std::fs::create_dir_all(b.join(".checkpoint-60.tmp-999")).unwrap();
    std::fs::create_dir_all(b.join("checkpoint-60")).unwrap();
    std::fs::write(b.join("checkpoint-60/model.mpk"), b"half").unwrap();
    call(args(&b, &["--resume"]));
    assert_eq!(
        read(&a.join("final/model.mpk")),
        read(&b.join("final/model.mpk")),
        "weights differ"
    );
    assert_eq!(
        read(&a.join("metrics.jsonl")),
        read(&b.join("metrics.jsonl")),
        "metrics differ"
    );
    assert_eq!(read(&a.join("summary.json")), read(&b.join("summary.json")));
    let events = String::from_utf8(read(&b.join("events.jsonl"))).unwrap();
    assert!(events.contains("\"event\":\"resume\""), "{events}");
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "estimator.kind=stochastic",
        "--run-dir",
        s(&a),
    ]);
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "estimator.kind=stochastic",
        "--run-dir",
        s(&b),
    ]);
    assert_eq!(
        read(&a.join("final/model.mpk")),
        read(&b.join("final/model.mpk"))
    );
    // A finished run is never overwritten by accident.
    let e = bllm(&["run", &smoke(), "train.steps=30", "--run-dir", s(&b)]).unwrap_err();
    assert!(e.contains("already holds a run"), "{e}");
    let c = dir.path().join("c");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "estimator.kind=stochastic",
        "seed=1",
        "--run-dir",
        s(&c),
    ]);
    assert_ne!(
        read(&a.join("final/model.mpk")),
        read(&c.join("final/model.mpk"))
    );
}

#[test]
fn monitors_fire_on_divergence_and_stay_quiet_on_a_healthy_run() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    bllm_ok(&["run", &smoke(), "--run-dir", s(&healthy)]);
    let summary: serde_json::Value =
        serde_json::from_slice(&read(&healthy.join("summary.json"))).unwrap();
    assert_eq!(
        summary["monitor_events"],
        0,
        "healthy run fired monitors: {}",
        String::from_utf8_lossy(&read(&healthy.join("events.jsonl")))
    );
    // A float first layer with an absurd learning rate diverges: the loss and grad-norm spike
    // detectors fire on the way up, then non_finite stops the run at the overflow.
    let bad = dir.path().join("bad");
    let e = bllm(&[
        "run",
        &smoke(),
        "optimizer.lr=10",
        "optimizer.kind=sgd",
        "train.grad_clip=0",
        "schedule.warmup_steps=0",
        "model.float_first=true",
        "monitors.spike_window=5",
        "--run-dir",
        s(&bad),
    ])
    .unwrap_err();
    assert!(
        e.contains("stopped at step") && e.contains("monitor non_finite"),
        "{e}"
    );
    let events = String::from_utf8(read(&bad.join("events.jsonl"))).unwrap();
    for needle in [
        "\"event\":\"stop\"",
        "\"monitor\":\"loss_spike\"",
        "\"monitor\":\"grad_spike\"",
        "\"event\":\"skip_step\"",
    ] {
        assert!(events.contains(needle), "{needle} missing from {events}");
    }
    // The stop saved a checkpoint to inspect.
    assert!(std::fs::read_dir(&bad).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("checkpoint-")
    }));
    // Weights pushed beyond the clip: the pass-through fraction reported drops to 0.
    let clipped = dir.path().join("clipped");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=20",
        "estimator.kind=clipped",
        "estimator.clip=0.001",
        "--run-dir",
        s(&clipped),
    ]);
    let metrics = String::from_utf8(read(&clipped.join("metrics.jsonl"))).unwrap();
    let last: serde_json::Value = serde_json::from_str(
        metrics
            .lines()
            .find(|l| l.contains("pass_through"))
            .unwrap(),
    )
    .unwrap();
    assert!(last["pass_through"].as_f64().unwrap() < 0.05, "{last}");
    let events = String::from_utf8(read(&clipped.join("events.jsonl"))).unwrap();
    assert!(events.contains("\"monitor\":\"pass_through\""), "{events}");
    // With almost no pass-through the STE gradient of the binary weights vanishes and the
    // shadow-cosine monitor reports the mismatch.
    assert!(events.contains("\"monitor\":\"shadow_cosine\""), "{events}");
}

#[test]
fn counter_monitors_fire_on_misconfigured_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A learning rate far too large for binary latent weights: signs flip back and forth.
    let flippy = dir.path().join("flippy");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=40",
        "optimizer.lr=1.0",
        "schedule.kind=constant",
        "monitors.flip_ratio.action=warn",
        "monitors.flip_ratio.threshold=0.2",
        "--run-dir",
        s(&flippy),
    ]);
    let events = String::from_utf8(read(&flippy.join("events.jsonl"))).unwrap();
    assert!(
        events.contains("\"monitor\":\"flip_ratio\",\"step\""),
        "{events}"
    );
    // No scaling on small latent weights: ±1 is far from W, the quantisation error explodes.
    let unscaled = dir.path().join("unscaled");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=20",
        "model.scaling=none",
        "monitors.quant_error.action=warn",
        "--run-dir",
        s(&unscaled),
    ]);
    let events = String::from_utf8(read(&unscaled.join("events.jsonl"))).unwrap();
    assert!(events.contains("\"monitor\":\"quant_error\""), "{events}");
    // Demanding near-perfect finite-difference agreement makes that monitor fire.
    let fd = dir.path().join("fd");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=20",
        "monitors.finite_difference.action=warn",
        "monitors.finite_difference.threshold=0.99",
        "--run-dir",
        s(&fd),
    ]);
    let events = String::from_utf8(read(&fd.join("events.jsonl"))).unwrap();
    assert!(
        events.contains("\"monitor\":\"finite_difference\""),
        "{events}"
    );
}

#[test]
fn sweep_tabulates_a_2x2() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("s.toml");
    let text = std::fs::read_to_string(smoke())
        .unwrap()
        .replace("# bllm run recipes/smoke.toml", "# bllm sweep s.toml");
    std::fs::write(
        &recipe,
        format!("{text}\n[sweep]\n\"estimator.kind\" = [\"clipped\", \"ede\"]\nseed = [0, 1]\n"),
    )
    .unwrap();
    let out = dir.path().join("sweep");
    bllm_ok(&["sweep", s(&recipe), "train.steps=20", "--run-dir", s(&out)]);
    let csv = String::from_utf8(read(&out.join("summary.csv"))).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with("estimator.kind=clipped,2,0,")
            && lines[2].starts_with("estimator.kind=ede,2,0,"),
        "{csv}"
    );
    assert!(out.join("estimator.kind=ede,seed=1/summary.json").is_file());
    assert!(
        lines[0].contains("shadow_cosine_mean") && lines[0].contains("fd_sign_agreement_mean"),
        "{csv}"
    );
    let md = String::from_utf8(read(&out.join("summary.md"))).unwrap();
    assert!(md.contains("| estimator.kind=clipped | 2 | 0 |"), "{md}");
    // report regenerates the same tables and draws one line per run.
    std::fs::remove_file(out.join("summary.csv")).unwrap();
    bllm_ok(&["report", s(&out)]);
    assert_eq!(
        String::from_utf8(read(&out.join("summary.csv"))).unwrap(),
        csv
    );
    for plot in [
        "loss",
        "accuracy",
        "shadow_cosine",
        "fd_sign_agreement",
        "flip_ratio",
        "quant_error",
    ] {
        let png = read(&out.join("plots").join(format!("{plot}.png")));
        assert_eq!(&png[..4], b"\x89PNG", "{plot}");
    }
    let e = bllm(&["report", s(dir.path())]).unwrap_err();
    assert!(e.contains("neither a run directory"), "{e}");
}

/// Every file below `dir` as (relative path, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, read(&p)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_run_refuses_a_directory_it_did_not_write_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    std::fs::create_dir_all(r.join("final")).unwrap();
    std::fs::write(r.join("final/important.txt"), "keep").unwrap();
    std::fs::write(r.join("summary.json"), "mine").unwrap();
    let sm = smoke();
    for extra in [&[][..], &["--resume"][..]] {
        let mut args = vec!["run", sm.as_str(), "train.steps=20", "--run-dir", s(&r)];
        args.extend_from_slice(extra);
        let e = bllm(&args).unwrap_err();
        assert!(
            e.contains("not a bllm run directory") && e.contains("summary.json"),
            "{e}"
        );
    }
    assert_eq!(read(&r.join("final/important.txt")), b"keep");
    assert_eq!(read(&r.join("summary.json")), b"mine");
    // A file where the directory should be, and --resume of a directory that does not exist.
    let f = dir.path().join("file");
    std::fs::write(&f, "x").unwrap();
    let e = bllm(&["run", &smoke(), "--run-dir", s(&f)]).unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
    let e = bllm(&[
        "run",
        &smoke(),
        "--resume",
        "--run-dir",
        s(&dir.path().join("nope")),
    ])
    .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    // An empty directory is a fine place for a new run.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    bllm_ok(&["run", &smoke(), "train.steps=20", "--run-dir", s(&empty)]);
}

#[test]
fn files_a_user_put_into_final_are_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=20",
        "checkpoint.every=10",
        "--run-dir",
        s(&r),
    ]);
    std::fs::write(r.join("final/notes.txt"), "mine").unwrap();
    // Resuming a finished run rewrites final/: the user's file survives, moved aside with it.
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "--resume",
        "--run-dir",
        s(&r),
    ]);
    assert_eq!(read(&r.join("final.kept-1/notes.txt")), b"mine");
    assert!(r.join("final/model.mpk").is_file() && !r.join("final/notes.txt").exists());
}

#[test]
fn resume_refuses_a_changed_recipe_and_accepts_the_safe_keys() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=20",
        "checkpoint.every=10",
        "--run-dir",
        s(&r),
    ]);
    let saved = read(&r.join("recipe.resolved.toml"));
    let e = bllm(&[
        "run",
        &smoke(),
        "train.steps=20",
        "model.hidden=[128]",
        "optimizer.lr=0.5",
        "--resume",
        "--run-dir",
        s(&r),
    ])
    .unwrap_err();
    assert!(
        e.contains("model.hidden: saved [64], now [128]")
            && e.contains("optimizer.lr: saved")
            && e.contains("train.steps"),
        "{e}"
    );
    assert_eq!(
        read(&r.join("recipe.resolved.toml")),
        saved,
        "recipe changed"
    );
    // A new run of another recipe into the directory is refused the same way.
    let e = bllm(&["run", &smoke(), "model.hidden=[128]", "--run-dir", s(&r)]).unwrap_err();
    assert!(
        e.contains("different recipe") && e.contains("model.hidden"),
        "{e}"
    );
    // Extending the run is safe: it continues to 40 steps and records the new recipe.
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=40",
        "eval.every=10",
        "--resume",
        "--run-dir",
        s(&r),
    ]);
    let resolved = String::from_utf8(read(&r.join("recipe.resolved.toml"))).unwrap();
    assert!(resolved.contains("steps = 40"), "{resolved}");
    let summary: serde_json::Value =
        serde_json::from_slice(&read(&r.join("summary.json"))).unwrap();
    assert_eq!(summary["steps"], 40);
    let events = String::from_utf8(read(&r.join("events.jsonl"))).unwrap();
    assert!(
        events.contains("\"event\":\"recipe\"") && events.contains("train.steps: saved 20, now 40"),
        "{events}"
    );
}

#[test]
fn resume_before_the_first_checkpoint_starts_again_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    bllm_ok(&["run", &smoke(), "train.steps=30", "--run-dir", s(&a)]);
    // What a run killed before its first checkpoint leaves: its recipe and some log lines.
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "--max-steps",
        "25",
        "checkpoint.every=100",
        "--run-dir",
        s(&b),
    ]);
    assert!(b.join("metrics.jsonl").is_file());
    for entry in std::fs::read_dir(&b).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    let e = bllm(&["run", &smoke(), "train.steps=30", "--run-dir", s(&b)]).unwrap_err();
    assert!(e.contains("--resume"), "{e}");
    bllm_ok(&[
        "run",
        &smoke(),
        "train.steps=30",
        "--resume",
        "--run-dir",
        s(&b),
    ]);
    for f in [
        "final/model.mpk",
        "final/optimizer.mpk",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert_eq!(read(&a.join(f)), read(&b.join(f)), "{f} differs");
    }
    let events = String::from_utf8(read(&b.join("events.jsonl"))).unwrap();
    assert!(events.contains("\"event\":\"restart\""), "{events}");
}

#[test]
fn identical_runs_write_identical_directories_also_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for opt in ["adam", "bop_adam"] {
        for p in [&a, &b, &c] {
            let _ = std::fs::remove_dir_all(p);
        }
        let kind = format!("optimizer.kind={opt}");
        let base = [
            "run",
            &smoke(),
            "train.steps=40",
            "checkpoint.every=10",
            kind.as_str(),
        ];
        let with = |p: &Path, extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(&["--run-dir", s(p)]);
            v.extend_from_slice(extra);
            bllm_ok(&v.iter().map(|x| &**x).collect::<Vec<_>>());
        };
        with(&a, &[]);
        with(&b, &[]);
        assert!(tree(&a) == tree(&b), "{opt}: two identical runs differ");
        // Stopped at 25 and resumed: same model and optimizer records, byte for byte.
        with(&c, &["--max-steps", "25"]);
        with(&c, &["--resume"]);
        for f in [
            "final/model.mpk",
            "final/optimizer.mpk",
            "checkpoint-30/optimizer.mpk",
        ] {
            assert_eq!(
                read(&a.join(f)),
                read(&c.join(f)),
                "{opt}: {f} differs after resume"
            );
        }
    }
}

#[test]
fn a_corrupt_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    let args = [
        "run",
        &smoke(),
        "train.steps=20",
        "checkpoint.every=10",
        "--run-dir",
        s(&r),
    ];
    bllm_ok(&[&args[..], &["--max-steps", "10"]].concat());
    let opt = r.join("checkpoint-10/optimizer.mpk");
    let mut bytes = read(&opt);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&opt, &bytes).unwrap();
    let e = bllm(&[&args[..], &["--resume"]].concat()).unwrap_err();
    assert!(
        e.contains("checkpoint-10") && e.contains("optimizer.mpk does not match the checksum"),
        "{e}"
    );
    std::fs::remove_file(&opt).unwrap();
    let e = bllm(&[&args[..], &["--resume"]].concat()).unwrap_err();
    assert!(e.contains("optimizer.mpk is missing"), "{e}");
}
