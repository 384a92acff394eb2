//! The quickstart retrieval recipe at tiny scale: train → checkpoint → resume (bit-identical)
//! → results.json / results.md → export → `bllm encode` reproduces the exported codes.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn quickstart() -> String {
    s(&repo_root().join("recipes/quickstart.toml"))
}

/// Tiny-scale overrides: the bundled synthetic set (separate query file), 32 bits, 24 steps.
fn tiny() -> Vec<String> {
    let data = repo_root().join("datasets/sample-clustered");
    vec![
        format!("data.path=\"{}\"", s(&data.join("db.npy"))),
        format!("data.queries_path=\"{}\"", s(&data.join("queries.npy"))),
        "data.train_rows=600".into(),
        "model.bits=32".into(),
        "train.steps=24".into(),
        "train.batch_size=32".into(),
        "eval.every=12".into(),
        "eval.bits=[16, 32]".into(),
        "eval.rerank=[100]".into(),
        "checkpoint.every=12".into(),
        "monitors.every=4".into(),
    ]
}

fn run(dir: &Path, extra: &[&str]) -> Result<(), String> {
    let q = quickstart();
    let ov = tiny();
    let run_dir = s(dir);
    let mut args: Vec<&str> = vec!["run", &q];
    args.extend(ov.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--run-dir", &run_dir]);
    bllm(&args)
}

#[derive(serde::Deserialize, Debug)]
struct Row {
    method: String,
    bits: usize,
    k: usize,
    rerank: usize,
    recall: f64,
}

#[test]
fn quickstart_trains_evaluates_exports_and_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run(&a, &[]).unwrap();

    // Results: every method × bits × k × rerank, recall in [0, 1], the head at 32 bits.
    let rows: Vec<Row> = serde_json::from_slice(&read(&a.join("results.json"))).unwrap();
    for m in ["learned_listwise", "lsh", "lsh_centred", "pca", "itq"] {
        for k in [1, 10, 100] {
            assert!(
                rows.iter()
                    .any(|r| r.method == m && r.k == k && r.rerank == 0),
                "{m} k={k} missing: {rows:?}"
            );
        }
    }
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.recall)));
    assert!(
        rows.iter()
            .any(|r| r.method == "itq" && r.bits == 16 && r.rerank == 100)
    );
    assert!(
        rows.iter()
            .filter(|r| r.method == "learned_listwise")
            .all(|r| r.bits == 32)
    );
    let md = String::from_utf8(read(&a.join("results.md"))).unwrap();
    assert!(md.contains("| learned_listwise | 32 |"), "{md}");
    // Monitors were logged, including bit balance and the STE/surrogate gradient mismatch.
    let metrics = String::from_utf8(read(&a.join("metrics.jsonl"))).unwrap();
    for key in [
        "\"bit_balance\"",
        "\"flip_ratio\"",
        "\"shadow_cosine\"",
        "\"recall\"",
    ] {
        assert!(metrics.contains(key), "{key} not in metrics.jsonl");
    }

    // The exported encoder re-encodes the database to exactly the exported codes.
    let enc_dir = a.join("export/encoder");
    let again = tmp.path().join("again");
    let db = repo_root().join("datasets/sample-clustered/db.npy");
    bllm_ok(&[
        "encode",
        "--encoder",
        &s(&enc_dir),
        "--input",
        &s(&db),
        "--out",
        &s(&again),
    ]);
    let exported = a.join("export/codes");
    let bcodes = |d: &Path| -> PathBuf {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "bcodes"))
            .unwrap()
    };
    assert_eq!(read(&bcodes(&exported)), read(&bcodes(&again)));
    assert!(exported.join("faiss.index").exists());
    // … and, through the exported decoder, to exactly the exported residual bytes.
    assert!(enc_dir.join(bllm_hash::DECODER_JSON).is_file());
    assert_eq!(
        read(&exported.join(bllm_hash::RESIDUAL_NPY)),
        read(&again.join(bllm_hash::RESIDUAL_NPY))
    );

    // Same recipe and seed: bit-identical encoder and codes.
    let b = tmp.path().join("b");
    run(&b, &[]).unwrap();
    for f in [
        "export/encoder/encoder.safetensors",
        "export/encoder/decoder.safetensors",
        "export/codes/residual.npy",
        "final/model.mpk",
        "results.json",
    ] {
        assert_eq!(
            read(&a.join(f)),
            read(&b.join(f)),
            "{f} differs between runs"
        );
    }
    assert_eq!(
        read(&bcodes(&exported)),
        read(&bcodes(&b.join("export/codes")))
    );

    // Interrupted at step 12, resumed: the same final encoder as the uninterrupted run.
    let c = tmp.path().join("c");
    run(&c, &["--max-steps", "12"]).unwrap();
    assert!(c.join("checkpoint-12").is_dir() && !c.join("results.json").exists());
    assert!(
        run(&c, &[]).unwrap_err().contains("--resume"),
        "an existing run directory must not be overwritten"
    );
    run(&c, &["--resume"]).unwrap();
    assert_eq!(
        read(&a.join("export/encoder/encoder.safetensors")),
        read(&c.join("export/encoder/encoder.safetensors"))
    );
}

#[test]
fn retrieval_inputs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let q = quickstart();
    // A missing data file names the file.
    let missing = tmp.path().join("nope.npy");
    let p = format!("data.path=\"{}\"", s(&missing));
    let rd = s(&tmp.path().join("r1"));
    let e = bllm(&["run", &q, &p, "--run-dir", &rd]).unwrap_err();
    assert!(e.contains("nope.npy"), "{e}");
    // More anchors than training rows.
    let data = repo_root().join("datasets/sample-clustered");
    let p = format!("data.path=\"{}\"", s(&data.join("db.npy")));
    let rd = s(&tmp.path().join("r2"));
    let e = bllm(&[
        "run",
        &q,
        &p,
        "data.queries=100",
        "data.train_rows=50",
        "train.batch_size=64",
        "--run-dir",
        &rd,
    ])
    .unwrap_err();
    assert!(e.contains("batch_size") && e.contains("50"), "{e}");
    // A residual that does not split the dimension evenly (128) is refused by key.
    let rd = s(&tmp.path().join("r3"));
    let e = bllm(&["run", &q, &p, "eval.pq_bytes=7", "--run-dir", &rd]).unwrap_err();
    assert!(e.contains("eval.pq_bytes = 7") && e.contains("128"), "{e}");
    // Recipe errors are all reported at once.
    let e = bllm(&[
        "validate",
        &q,
        "model.init=\"magic\"",
        "optimizer.kind=\"bop_adam\"",
        "eval.methods=[\"itq\", \"nope\"]",
        "objective.kind=\"triplet\"",
        "eval.pq_bytes=-1",
    ])
    .unwrap_err();
    for key in [
        "model.init",
        "optimizer.kind",
        "eval.methods[1]",
        "objective.kind",
        "eval.pq_bytes",
    ] {
        assert!(e.contains(key), "{key} not reported: {e}");
    }
}

#[test]
fn retrieval_sweep_tables_and_report_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    // The quickstart with a [sweep] table: 2 objectives × 2 seeds.
    let recipe = tmp.path().join("sweep.toml");
    let text = std::fs::read_to_string(quickstart()).unwrap()
        + "\n[sweep]\n\"objective.kind\" = [\"listwise\", \"similarity\"]\nseed = [0, 1]\n";
    std::fs::write(&recipe, text).unwrap();
    let q = s(&recipe);
    let mut ov = tiny();
    ov.retain(|o| !o.starts_with("checkpoint.") && !o.starts_with("eval.every"));
    ov.push("train.steps=6".into());
    let d = s(&dir);
    let mut args: Vec<&str> = vec!["sweep", &q];
    args.extend(ov.iter().map(String::as_str));
    args.extend_from_slice(&["--run-dir", &d]);
    bllm_ok(&args);
    let md = String::from_utf8(read(&dir.join("summary.md"))).unwrap();
    // Seeds average together: one group per objective, two runs each.
    for g in ["objective.kind=listwise", "objective.kind=similarity"] {
        assert!(md.contains(&format!("| {g} | 2 | 0 |")), "{g} in {md}");
    }
    assert!(md.contains("| learned_similarity | 32 | 10 | 0 |"), "{md}");
    let csv = read(&dir.join("summary.csv"));
    bllm_ok(&["report", &d]);
    assert_eq!(read(&dir.join("summary.md")), md.as_bytes());
    assert_eq!(read(&dir.join("summary.csv")), csv);
}
