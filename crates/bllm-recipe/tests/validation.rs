//! Validation messages, overrides and sweeps, checked against their exact text.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_recipe::{Recipe, RecipeError, expand_sweep, parse_override};

const GOOD: &str = r#"
name = "t"
kind = "classify"
[train]
steps = 20
batch_size = 8
"#;

fn errors(text: &str, overrides: &[&str]) -> Vec<String> {
    let ovs: Vec<_> = overrides
        .iter()
        .map(|o| parse_override(o).unwrap())
        .collect();
    match Recipe::parse(text, "r.toml", &ovs, &()) {
        Err(RecipeError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
        Err(other) => vec![other.to_string()],
        Ok(_) => Vec::new(),
    }
}

#[test]
fn defaults_fill_a_minimal_recipe() {
    let r = Recipe::parse(GOOD, "r.toml", &[], &()).unwrap();
    assert_eq!(r.train.steps, 20);
    assert!(
        matches!(&r.task, bllm_recipe::Task::Classify { model, .. } if model.hidden == vec![64])
    );
    assert_eq!(r.estimator["kind"].as_str(), Some("clipped"));
    assert_eq!(
        r.monitors.get("non_finite").unwrap().action,
        bllm_recipe::MonitorAction::Stop
    );
    assert!(r.resolved_toml().contains("steps = 20"));
}

#[test]
fn every_problem_is_reported_at_once_with_file_key_expected_found() {
    let text = r#"
name = "t"
kind = "classify"
colour = "blue"
[train]
stpes = 20
batch_size = "many"
[optimizer]
lr = -1.0
kind = "adamm"
[monitors.loss_spike]
action = "panic"
"#;
    let got = errors(text, &["model.hidden=[0]", "train.log_every=0"]);
    let want = [
        "r.toml: colour: expected a known key (checkpoint, data, description, device, estimator, eval, export, kind, model, monitors, name, optimizer, schedule, seed, sweep, train), found an unknown key",
        "override model.hidden=[0]: model.hidden: expected an array of integers >= 1 (hidden widths), found an array of 1 items",
        "r.toml: optimizer.kind: expected one of \"adam\", \"adamw\", \"sgd\", \"bop_adam\", found the string \"adamm\" (did you mean \"adam\"?)",
        "r.toml: optimizer.lr: expected a number in [0, 10], found the float -1",
        "r.toml: train.steps: expected an integer in 1..=100000000, found nothing (the key is required)",
        "r.toml: train.batch_size: expected an integer in 1..=16777216, found the string \"many\"",
        "override train.log_every=0: train.log_every: expected an integer >= 1, found the integer 0",
        "r.toml: train.stpes: expected a known key (accumulate, batch_size, grad_clip, log_every, steps), found an unknown key (did you mean \"train.steps\"?)",
        "r.toml: monitors.loss_spike.action: expected one of \"log\", \"warn\", \"skip_step\", \"stop\", found the string \"panic\"",
    ];
    for w in &want {
        assert!(
            got.contains(&w.to_string()),
            "missing:\n{w}\ngot:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), want.len(), "{}", got.join("\n"));
}

#[test]
fn unknown_override_paths_are_errors_naming_the_override() {
    let got = errors(GOOD, &["train.stepz=5", "trian.steps=5"]);
    assert!(
        got.iter()
            .any(|e| e.starts_with("override train.stepz=5: train.stepz: ")
                && e.contains("did you mean \"train.steps\"")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("override trian.steps=5: trian: ")
                && e.contains("did you mean \"train\"")),
        "{got:?}"
    );
    let got = errors(GOOD, &["name.x=1"]);
    assert!(
        got[0].contains("name is the string \"t\", not a table"),
        "{got:?}"
    );
}

#[test]
fn overrides_are_typed_and_win() {
    let ovs = [
        parse_override("train.steps=7").unwrap(),
        parse_override("optimizer.lr=0.5").unwrap(),
    ];
    let r = Recipe::parse(GOOD, "r.toml", &ovs, &()).unwrap();
    assert_eq!((r.train.steps, r.optimizer.lr), (7, 0.5));
    assert!(r.resolved_toml().contains("steps = 7"));
    let got = errors(GOOD, &["train.steps=\"7\""]);
    assert!(got[0].contains("found the string \"7\""), "{got:?}");
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let e = Recipe::parse("name = \n", "bad.toml", &[], &())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad.toml: invalid TOML:") && e.contains("line 1"),
        "{e}"
    );
    let e = Recipe::load(std::path::Path::new("/nonexistent/r.toml"), &[], &())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/r.toml"), "{e}");
}

#[test]
fn accumulate_must_divide_the_batch() {
    assert_eq!(
        errors(GOOD, &["train.accumulate=3"]),
        [
            "override train.accumulate=3: train.accumulate: expected a divisor of train.batch_size (8): the micro-batches are equal parts, found the integer 3"
        ]
    );
    assert!(errors(GOOD, &["train.accumulate=0"])[0].contains("expected an integer in 1..=65536"));
    let r = Recipe::parse(
        GOOD,
        "r.toml",
        &[parse_override("train.accumulate=4").unwrap()],
        &(),
    )
    .unwrap();
    assert_eq!((r.train.accumulate, r.train.batch_size), (4, 8));
    assert_eq!(
        Recipe::parse(GOOD, "r.toml", &[], &())
            .unwrap()
            .train
            .accumulate,
        1
    );
}

#[test]
fn cross_field_checks() {
    let got = errors(
        "name='t'\nkind='classify'\n[train]\nsteps=10\nbatch_size=5000\n[schedule]\nwarmup_steps=11",
        &[],
    );
    assert!(
        got.iter()
            .any(|e| e.contains("schedule.warmup_steps: expected at most train.steps (10)")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.contains("train.batch_size: expected at most data.train_size (2048)")),
        "{got:?}"
    );
}

#[test]
fn component_checks_join_the_same_report() {
    struct Picky;
    impl bllm_recipe::ComponentCheck for Picky {
        fn estimator(&self, t: &toml::Table) -> Vec<(String, String, String)> {
            if t.get("kind").and_then(|k| k.as_str()) == Some("bogus") {
                vec![(
                    "kind".into(),
                    "a known estimator".into(),
                    "\"bogus\"".into(),
                )]
            } else {
                Vec::new()
            }
        }
    }
    let ovs = [
        parse_override("estimator.kind=bogus").unwrap(),
        parse_override("train.steps=0").unwrap(),
    ];
    let e = Recipe::parse(GOOD, "r.toml", &ovs, &Picky)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("2 problems in the recipe:"), "{e}");
    assert!(
        e.contains("override estimator.kind=bogus: estimator.kind: expected a known estimator"),
        "{e}"
    );
}

#[test]
fn sweeps_expand_to_the_cross_product() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(
        &p,
        format!("{GOOD}\n[sweep]\n\"estimator.kind\" = [\"clipped\", \"ede\"]\nseed = [0, 1]\n"),
    )
    .unwrap();
    let base = Recipe::load(&p, &[], &()).unwrap();
    let runs = expand_sweep(&p, &[parse_override("train.steps=3").unwrap()], &base, &()).unwrap();
    let names: Vec<_> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "estimator.kind=clipped,seed=0",
            "estimator.kind=clipped,seed=1",
            "estimator.kind=ede,seed=0",
            "estimator.kind=ede,seed=1"
        ]
    );
    assert_eq!(runs[3].recipe.seed, 1);
    assert_eq!(runs[3].recipe.estimator["kind"].as_str(), Some("ede"));
    assert!(
        runs.iter()
            .all(|r| r.recipe.train.steps == 3 && r.recipe.sweep.is_empty())
    );
    assert!(!runs[0].recipe.resolved_toml().contains("[sweep]"));
    std::fs::write(&p, format!("{GOOD}\n[sweep]\nseed = 3\n")).unwrap();
    let e = Recipe::load(&p, &[], &()).unwrap_err().to_string();
    assert!(
        e.contains("sweep.seed: expected a non-empty array of values, found the integer 3"),
        "{e}"
    );
}

const RETRIEVAL: &str = r#"
name = "r"
kind = "retrieval"
[data]
path = "x.npy"
[train]
steps = 10
"#;

#[test]
fn retrieval_defaults_and_overrides() {
    let r = Recipe::parse(RETRIEVAL, "r.toml", &[], &()).unwrap();
    let t = r.retrieval().unwrap();
    assert_eq!(t.data.path.as_deref(), Some("x.npy"));
    assert_eq!((t.data.queries, t.data.normalize), (1000, true));
    assert_eq!((t.model.bits, t.model.init.as_str()), (256, "itq"));
    assert_eq!(t.objective.kind, "listwise");
    assert_eq!(t.eval.bits, vec![64, 128, 256]);
    assert_eq!(t.eval.k, vec![1, 10, 100]);
    assert_eq!(t.eval.rerank, vec![100, 1000]);
    assert_eq!(t.eval.methods, vec!["lsh", "lsh_centred", "pca", "itq"]);
    let ovs = [
        parse_override("data.path=other.npy").unwrap(),
        parse_override("model.bits=64").unwrap(),
    ];
    let r = Recipe::parse(RETRIEVAL, "r.toml", &ovs, &()).unwrap();
    let t = r.retrieval().unwrap();
    assert_eq!(
        (t.data.path.as_deref(), t.model.bits),
        (Some("other.npy"), 64)
    );
}

#[test]
fn retrieval_errors_are_all_reported() {
    let text = RETRIEVAL.replace("path = \"x.npy\"", "queries = 0");
    let e = errors(
        &text,
        &[
            "model.forward=\"soft\"",
            "eval.k=[]",
            "data.synthetic.rows=1",
            "optimizer.kind=\"bop_adam\"",
            "export.weights=true",
        ],
    );
    for key in [
        "data.queries",
        "model.forward",
        "eval.k",
        "data.synthetic.rows",
        "optimizer.kind",
        "export.weights",
    ] {
        assert!(e.iter().any(|m| m.contains(key)), "{key} missing in {e:#?}");
    }
    // Without a path or a synthetic table the data is missing.
    let e = errors(&RETRIEVAL.replace("path = \"x.npy\"", ""), &[]);
    assert!(e.iter().any(|m| m.contains("data.path")), "{e:#?}");
}

#[test]
fn text_fine_tuning_sections_are_validated_together() {
    let text = RETRIEVAL.replace(
        "path = \"x.npy\"",
        "texts = \"t.txt\"\ntext_field = 1\n[encoder]\npretrained = \"models/minilm\"",
    );
    let r = Recipe::parse(&text, "r.toml", &[], &()).unwrap();
    let t = r.retrieval().unwrap();
    let e = t.encoder.as_ref().unwrap();
    assert_eq!(
        (t.data.texts.as_deref(), t.data.text_field),
        (Some("t.txt"), Some(1))
    );
    assert_eq!(
        (e.train_layers, e.lr, e.batch, e.bank, e.refresh_every),
        (1, 2e-5, 128, 2048, 50)
    );
    // Texts and embeddings at once; an [encoder] without texts; texts without an [encoder];
    // a text field without texts; a zero refresh interval.
    let e = errors(&text, &["data.path=\"x.npy\"", "encoder.refresh_every=0"]);
    assert!(
        e.iter()
            .any(|m| m.contains("data.path") && m.contains("data.texts")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.contains("encoder.refresh_every")),
        "{e:#?}"
    );
    let e = errors(&format!("{RETRIEVAL}[encoder]\npretrained = \"m\"\n"), &[]);
    assert!(e.iter().any(|m| m.contains("data.texts")), "{e:#?}");
    let e = errors(
        &RETRIEVAL.replace("path = \"x.npy\"", "texts = \"t.txt\""),
        &[],
    );
    assert!(e.iter().any(|m| m.contains("encoder")), "{e:#?}");
    let e = errors(RETRIEVAL, &["data.text_field=1"]);
    assert!(e.iter().any(|m| m.contains("data.text_field")), "{e:#?}");
}
