//! The pretrained-model commands end to end: `bllm embed` against the bundled sentence-
//! transformers embeddings (and numpy reading its output), `bllm lm eval|generate`, `bllm models
//! ls`, and the errors for bad model folders, files and arguments.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use bllm_e2e::{bllm, bllm_ok, python_with, repo_root};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `models/<name>`, or `None` (a skip) unless `BLLM_REQUIRE_MODELS=1`.
fn model(name: &str) -> Option<PathBuf> {
    let d = repo_root().join("models").join(name);
    if d.is_dir() {
        return Some(d);
    }
    assert!(
        std::env::var("BLLM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "BLLM_REQUIRE_MODELS=1 but {} is missing (python3 scripts/fetch_models.py)",
        d.display()
    );
    eprintln!(
        "skipping: {} is missing (python3 scripts/fetch_models.py)",
        d.display()
    );
    None
}

/// `bllm [--threads T] embed --model M --input IN --out OUT EXTRA…`.
fn embed(
    threads: Option<&str>,
    m: &Path,
    input: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<(), String> {
    let mut args: Vec<&str> = match threads {
        Some(t) => vec!["--threads", t],
        None => Vec::new(),
    };
    args.extend([
        "embed",
        "--model",
        s(m),
        "--input",
        s(input),
        "--out",
        s(out),
    ]);
    args.extend(extra);
    bllm(&args)
}

#[test]
fn embed_writes_what_sentence_transformers_wrote() {
    let Some(m) = model("minilm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let verses =
        std::fs::read_to_string(repo_root().join("datasets/kjv-minilm/verses.txt")).unwrap();
    let input = dir.path().join("verses.txt");
    std::fs::write(
        &input,
        verses.lines().take(40).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    for dtype in ["f16", "f32"] {
        let out = dir.path().join(format!("x-{dtype}.npy"));
        embed(
            None,
            &m,
            &input,
            &out,
            &["--tab-field", "1", "--dtype", dtype, "--batch", "7"],
        )
        .unwrap();
        let got = bllm_codes::io::npy::read_npy(&out).unwrap();
        assert_eq!((got.rows, got.cols), (40, 384));
        if python_with(&["numpy"]) {
            let code = format!(
                "import numpy as np\n\
                 a = np.load({:?}).astype(np.float32); r = np.load({:?})[:40].astype(np.float32)\n\
                 c = (a * r).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(r, axis=1)\n\
                 assert c.min() >= 0.9995, c.min()",
                s(&out),
                s(&repo_root().join("datasets/kjv-minilm/embeddings.npy"))
            );
            let o = std::process::Command::new("python3")
                .args(["-c", &code])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "numpy check: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    // The same output for any batch size and thread count, byte for byte.
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    embed(None, &m, &input, &a, &["--tab-field", "1", "--batch", "40"]).unwrap();
    embed(
        Some("1"),
        &m,
        &input,
        &b,
        &["--tab-field", "1", "--batch", "40"],
    )
    .unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Errors name what is wrong.
    let e = embed(None, &m, &input, &a, &["--tab-field", "5"]).unwrap_err();
    assert!(e.contains("verses.txt:1") && e.contains("field 5"), "{e}");
    let e = embed(None, dir.path(), &input, &a, &[]).unwrap_err();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn lm_eval_and_generate_run_the_gguf() {
    let Some(m) = model("smollm2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ppl.json");
    let sotu = repo_root().join("datasets/sotu-text/valid.txt");
    // `bllm lm eval` on the first 2,000 bytes of held-out SOTU at context 128, with `extra`.
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "lm",
            "eval",
            "--model",
            s(&m),
            "--text",
            s(&sotu),
            "--context",
            "128",
            "--max-bytes",
            "2000",
            "--json",
            s(&json),
        ];
        args.extend_from_slice(extra);
        bllm_ok(&args);
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&json).unwrap()).unwrap()
    };
    let p = eval(&[]);
    let ppl = p["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 200.0, "{p}");
    assert!(p["bytes"].as_u64().unwrap() <= 2000);
    assert!(p["ptq"].is_null(), "{p}");
    let float_bytes = p["model_bytes"].as_u64().unwrap();
    assert_eq!(float_bytes, p["model_float32_bytes"].as_u64().unwrap());
    // Post-training 1-bit (SVID) MLPs of layers 0..2: worse perplexity, fewer bytes, both
    // recorded with the setting.
    let q = eval(&[
        "--ptq",
        "svid",
        "--ptq-projections",
        "gate_proj,up_proj,down_proj",
        "--ptq-layers",
        "0..2",
    ]);
    assert_eq!(q["ptq"], "svid", "{q}");
    assert_eq!(q["ptq_layers"], "0..2", "{q}");
    assert!(q["perplexity"].as_f64().unwrap() > ppl, "{q}");
    assert!(q["model_bytes"].as_u64().unwrap() < float_bytes, "{q}");
    bllm_ok(&[
        "lm",
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "4",
    ]);
    let e = bllm(&[
        "lm",
        "eval",
        "--model",
        s(&m),
        "--text",
        s(&json),
        "--context",
        "1",
    ])
    .unwrap_err();
    assert!(e.contains("context 1"), "{e}");
    let e = bllm(&[
        "lm",
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "x",
        "--max-tokens",
        "9000",
    ])
    .unwrap_err();
    assert!(e.contains("exceed the model's context of 8192"), "{e}");
    bllm_ok(&["models", "ls", "--dir", s(&repo_root().join("models"))]);
}

#[test]
fn broken_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "hello world\n").unwrap();
    // A GGUF that is not one.
    let g = dir.path().join("bad.gguf");
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00not really").unwrap();
    let e = bllm(&["lm", "eval", "--model", s(&g), "--text", s(&text)]).unwrap_err();
    assert!(e.contains("bad.gguf") && e.contains("GGUF"), "{e}");
    // A folder with neither layout.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = bllm(&["lm", "eval", "--model", s(&empty), "--text", s(&text)]).unwrap_err();
    assert!(e.contains("one .gguf file"), "{e}");
    // A BERT config with an unsupported activation names the key.
    let bert = dir.path().join("bert");
    std::fs::create_dir(&bert).unwrap();
    std::fs::write(
        bert.join("config.json"),
        r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "hidden_act": "relu", "max_position_embeddings": 16,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#,
    )
    .unwrap();
    let e = embed(None, &bert, &text, &dir.path().join("x.npy"), &[]).unwrap_err();
    assert!(e.contains("hidden_act") && e.contains("relu"), "{e}");
    assert!(!dir.path().join("x.npy").exists());
}

/// `bllm encode --text` embeds each line with the sentence encoder and codes it: the same codes
/// (and residual bytes) as `bllm embed` followed by `bllm encode --input`; a missing sentence
/// encoder, a width mismatch and two inputs are clear errors.
#[test]
fn encode_text_gives_the_codes_of_its_embeddings() {
    let Some(m) = model("minilm") else {
        return;
    };
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lines: Vec<String> = std::fs::read_to_string(root.join("datasets/kjv-minilm/verses.txt"))
        .unwrap()
        .lines()
        .take(48)
        .map(str::to_owned)
        .collect();
    let text = d.join("verses.txt");
    std::fs::write(&text, lines.join("\n") + "\n").unwrap();
    let enc = d.join("enc");
    let train = root.join("datasets/kjv-minilm/embeddings.npy");
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "itq",
        "--bits",
        "64",
        "--train",
        s(&train),
        "--out",
        s(&enc),
        "--decoder",
        "--pq-bytes",
        "8",
    ]);
    let emb = d.join("emb.npy");
    embed(
        None,
        &m,
        &text,
        &emb,
        &["--tab-field", "1", "--batch", "16"],
    )
    .unwrap();
    let (via_npy, via_text) = (d.join("c1"), d.join("c2"));
    bllm_ok(&[
        "encode",
        "--encoder",
        s(&enc),
        "--input",
        s(&emb),
        "--out",
        s(&via_npy),
    ]);
    // `bllm encode --encoder ENC --text TEXT EXTRA… --out d/OUT`.
    let encode_text = |enc: &Path, extra: &[&str], out: &str| -> Result<(), String> {
        let out = d.join(out);
        let mut a = vec!["encode", "--encoder", s(enc), "--text", s(&text)];
        a.extend(extra);
        a.extend(["--out", s(&out)]);
        bllm(&a)
    };
    encode_text(
        &enc,
        &["--tab-field", "1", "--model", s(&m), "--batch", "16"],
        "c2",
    )
    .unwrap();
    let mut compared = 0;
    for f in std::fs::read_dir(&via_npy).unwrap() {
        let name = f.unwrap().file_name();
        if name == "manifest.json" {
            continue;
        }
        let a = std::fs::read(via_npy.join(&name)).unwrap();
        let b = std::fs::read(via_text.join(&name)).unwrap();
        assert!(a == b, "{name:?} differs between --input and --text");
        compared += 1;
    }
    assert!(
        compared >= 2,
        "codes and residual compared ({compared} files)"
    );
    let manifest = std::fs::read_to_string(via_text.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("embeddings of the text (tab field 1)"),
        "{manifest}"
    );

    // No transformer beside the head and no --model.
    let e = encode_text(&enc, &[], "c3").unwrap_err();
    assert!(
        e.contains("holds no transformer") && e.contains("--model"),
        "{e}"
    );
    // A head fitted on 128-d vectors cannot code 384-d MiniLM embeddings.
    let small = d.join("small");
    let db = root.join("datasets/sample-clustered/db.npy");
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "lsh",
        "--bits",
        "32",
        "--train",
        s(&db),
        "--out",
        s(&small),
    ]);
    let e = encode_text(&small, &["--model", s(&m)], "c4").unwrap_err();
    assert!(
        e.contains("384-dimensional") && e.contains("expects 128"),
        "{e}"
    );
    // A line without the requested field names the file and line.
    let e = encode_text(&enc, &["--tab-field", "5", "--model", s(&m)], "c5").unwrap_err();
    assert!(e.contains("verses.txt:1") && e.contains("field 5"), "{e}");
    // --input and --text together.
    assert!(
        bllm(&[
            "encode",
            "--encoder",
            s(&enc),
            "--input",
            s(&emb),
            "--text",
            s(&text),
            "--out",
            s(&d.join("c6")),
        ])
        .is_err()
    );
    assert!(!d.join("c3").exists() && !d.join("c4").exists() && !d.join("c5").exists());
}
