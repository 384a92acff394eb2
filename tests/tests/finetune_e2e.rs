//! Encoder fine-tuning end to end (`kind = "retrieval"` with `data.texts` and `[encoder]`), on
//! a 2-layer MiniLM (the real checkpoint cut to its first two layers, so the test takes
//! seconds): determinism, exact resume, the exported sentence-transformers directory, and
//! `bllm encode --text` reproducing the exported codes byte for byte.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `models/minilm`, or `None` (a skip) unless `BLLM_REQUIRE_MODELS=1`.
fn minilm() -> Option<PathBuf> {
    let d = repo_root().join("models/minilm");
    if d.is_dir() {
        return Some(d);
    }
    assert!(
        std::env::var("BLLM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "BLLM_REQUIRE_MODELS=1 but {} is missing (python3 scripts/fetch_models.py)",
        d.display()
    );
    eprintln!("skipping: {} is missing", d.display());
    None
}

/// MiniLM cut to its first `layers` layers, as a sentence-transformers directory in `out`.
fn cut_minilm(src: &Path, out: &Path, layers: usize) {
    std::fs::create_dir_all(out.join("1_Pooling")).unwrap();
    for f in [
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "vocab.txt",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = layers.into();
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let keep = |n: &str| match n.split('.').skip_while(|p| *p != "layer").nth(1) {
        Some(i) => i.parse::<usize>().unwrap() < layers,
        None => true,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .names()
        .into_iter()
        .filter(|n| keep(n))
        .map(|n| (n.clone(), st.tensor(n).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, &None, &out.join("model.safetensors")).unwrap();
}

/// The overrides of the tiny fine-tuning run.
fn overrides(texts: &Path, model: &Path) -> Vec<String> {
    [
        format!("data.texts={:?}", s(texts)),
        "data.queries=40".into(),
        format!("encoder.pretrained={:?}", s(model)),
        "encoder.batch=16".into(),
        "encoder.bank=64".into(),
        "encoder.refresh_every=3".into(),
        "encoder.lr=1e-4".into(),
        "model.bits=64".into(),
        "eval.bits=[64]".into(),
        "eval.k=[10]".into(),
        "eval.pq_bytes=8".into(),
        "train.steps=8".into(),
        "train.batch_size=16".into(),
        "train.log_every=2".into(),
        "checkpoint.every=4".into(),
        "monitors.every=2".into(),
    ]
    .to_vec()
}

fn run(recipe: &Path, ov: &[String], dir: &Path, extra: &[&str]) -> Result<(), String> {
    let mut a: Vec<&str> = vec!["run", s(recipe)];
    a.extend(ov.iter().map(String::as_str));
    a.extend(["--run-dir", s(dir)]);
    a.extend(extra);
    bllm(&a)
}

/// Every file under `dir` except manifests and logs, as (relative path, bytes).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                if !rel.ends_with("manifest.json") {
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fine_tuned_encoder_exports_a_loadable_model_and_reproducible_codes() {
    let Some(m) = minilm() else {
        return;
    };
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("minilm2");
    cut_minilm(&m, &model, 2);
    let lines: Vec<String> = std::fs::read_to_string(root.join("datasets/kjv-minilm/verses.txt"))
        .unwrap()
        .lines()
        .take(160)
        .map(str::to_owned)
        .collect();
    let texts = d.join("verses.txt");
    std::fs::write(&texts, lines.join("\n") + "\n").unwrap();
    let recipe = root.join("recipes/retrieval/finetune-kjv.toml");
    let ov = overrides(&texts, &model);

    let (a, b) = (d.join("a"), d.join("b"));
    run(&recipe, &ov, &a, &[]).unwrap();
    run(&recipe, &ov, &b, &[]).unwrap();
    // Same recipe and seed: the same results, checkpoints and exports, byte for byte.
    let res = std::fs::read_to_string(a.join("results.json")).unwrap();
    assert_eq!(
        res,
        std::fs::read_to_string(b.join("results.json")).unwrap()
    );
    assert_eq!(files(&a.join("export")), files(&b.join("export")));
    assert!(
        res.contains("finetuned_listwise") && res.contains("\"itq\""),
        "{res}"
    );

    // Stopped after 5 steps (past the checkpoint at 4 and a bank refresh at 3, before the one
    // at 6) and resumed: the same bytes as the uninterrupted run.
    let c = d.join("c");
    run(&recipe, &ov, &c, &["--max-steps", "5"]).unwrap();
    run(&recipe, &ov, &c, &["--resume"]).unwrap();
    assert_eq!(files(&a.join("export")), files(&c.join("export")));

    // In-batch lists (`encoder.bank = 0`, no bank): trains the layer, and a stop and resume
    // gives the bytes of the uninterrupted run.
    let mut ov_ib = ov.clone();
    ov_ib.push("encoder.bank=0".into());
    let (g, h) = (d.join("g"), d.join("h"));
    run(&recipe, &ov_ib, &g, &[]).unwrap();
    run(&recipe, &ov_ib, &h, &["--max-steps", "5"]).unwrap();
    run(&recipe, &ov_ib, &h, &["--resume"]).unwrap();
    assert_eq!(files(&g.join("export")), files(&h.join("export")));
    assert_ne!(files(&g.join("export")), files(&a.join("export")));

    // Starting the head from a saved encoder (here the run's own export).
    let mut ov2 = ov.clone();
    ov2.push(format!(
        "model.init_from={:?}",
        s(&a.join("export/encoder"))
    ));
    ov2.push("train.steps=2".into());
    run(&recipe, &ov2, &d.join("e"), &[]).unwrap();
    ov2.push("model.bits=32".into());
    let e = run(&recipe, &ov2, &d.join("f"), &[]).unwrap_err();
    assert!(
        e.contains("model.init_from") && e.contains("64 bits"),
        "{e}"
    );

    // The export: a sentence-transformers directory whose untrained tensors are the
    // checkpoint's bytes and whose trained layer has moved.
    let exp = a.join("export/encoder");
    for f in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "encoder.json",
        "decoder.json",
    ] {
        assert!(exp.join(f).is_file(), "export lacks {f}");
    }
    let orig = std::fs::read(model.join("model.safetensors")).unwrap();
    let orig = safetensors::SafeTensors::deserialize(&orig).unwrap();
    let tuned = std::fs::read(exp.join("model.safetensors")).unwrap();
    let tuned = safetensors::SafeTensors::deserialize(&tuned).unwrap();
    let mut a_names = orig.names();
    let mut b_names = tuned.names();
    a_names.sort();
    b_names.sort();
    assert_eq!(a_names, b_names, "tensor names unchanged");
    let same = |n: &str| orig.tensor(n).unwrap().data() == tuned.tensor(n).unwrap().data();
    assert!(same("encoder.layer.0.attention.self.query.weight"));
    assert!(same("embeddings.word_embeddings.weight"));
    assert!(
        !same("encoder.layer.1.output.dense.weight"),
        "layer 1 trained"
    );

    // `bllm encode --text` on the database lines with the export codes them byte for byte
    // as the run exported them (same --batch as encoder.batch).
    let db = d.join("db.txt");
    std::fs::write(&db, lines[40..].join("\n") + "\n").unwrap();
    let out = d.join("codes");
    bllm_ok(&[
        "encode",
        "--encoder",
        s(&exp),
        "--text",
        s(&db),
        "--tab-field",
        "1",
        "--batch",
        "16",
        "--out",
        s(&out),
    ]);
    let got = files(&out);
    assert!(got.len() >= 2, "codes and residual: {}", got.len());
    assert_eq!(got, files(&a.join("export/codes")));
}

#[test]
fn fine_tuning_recipe_errors_name_the_key() {
    let Some(m) = minilm() else {
        return;
    };
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("minilm2");
    cut_minilm(&m, &model, 2);
    let texts = d.join("t.txt");
    std::fs::write(&texts, "a\tone\nb\ttwo\nc\tthree\n").unwrap();
    let recipe = root.join("recipes/retrieval/finetune-kjv.toml");
    let mut ov = overrides(&texts, &model);
    ov.push("encoder.train_layers=3".into());
    ov.push("data.queries=1".into());
    let e = run(&recipe, &ov, &d.join("r1"), &[]).unwrap_err();
    assert!(
        e.contains("train_layers = 3") && e.contains("2 layers"),
        "{e}"
    );
    // Two queries of three lines leave one database line: too few for 16 anchors.
    let mut ov = overrides(&texts, &model);
    ov.push("data.queries=2".into());
    let e = run(&recipe, &ov, &d.join("r2"), &[]).unwrap_err();
    assert!(e.contains("exceeds") && e.contains("t.txt"), "{e}");
    // Text and embeddings at once.
    let mut ov = overrides(&texts, &model);
    ov.push("data.path=\"x.npy\"".into());
    let e = run(&recipe, &ov, &d.join("r3"), &[]).unwrap_err();
    assert!(e.contains("data.path") && e.contains("data.texts"), "{e}");
    // A line without the tab field.
    std::fs::write(&texts, "a\tone\nno tab here\n").unwrap();
    let e = run(&recipe, &overrides(&texts, &model), &d.join("r4"), &[]).unwrap_err();
    assert!(e.contains("line 2") && e.contains("field 1"), "{e}");
    // A directory that is not a sentence encoder.
    std::fs::write(&texts, "a\tone\nb\ttwo\nc\tthree\n").unwrap();
    let mut ov = overrides(&texts, &model);
    ov.push(format!("encoder.pretrained={:?}", s(d)));
    ov.push("data.queries=1".into());
    let e = run(&recipe, &ov, &d.join("r5"), &[]).unwrap_err();
    assert!(e.contains("config.json"), "{e}");
}
