//! End to end on the bundled sample data: pack → search → recall → export, the same steps as
//! `scripts/quickstart.sh`, checked for determinism and cross-checked against numpy and FAISS.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use bllm_e2e::{bllm, bllm_ok, python_ok, python_with, repo_root};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn every_bundled_dataset_matches_its_manifest() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("datasets")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("MANIFEST.json").is_file() {
            continue;
        }
        bllm_data::check_manifest(&dir).unwrap_or_else(|e| panic!("{e}"));
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
        for (name, meta) in m["files"].as_object().unwrap() {
            if name.ends_with(".npy") {
                let x = bllm_data::load_embeddings(&dir.join(name), None).unwrap();
                assert_eq!(
                    serde_json::json!([x.rows(), x.cols()]),
                    meta["shape"],
                    "{name}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected the bundled datasets, checked {checked} files"
    );
}

/// Runs the quickstart pipeline into `out` at 64 bits.
fn pipeline(out: &Path) {
    let data = repo_root().join("datasets/sample-clustered");
    let (db, q) = (data.join("db.npy"), data.join("queries.npy"));
    bllm_ok(&[
        "codes",
        "pack",
        s(&db),
        "--out",
        s(&out.join("db")),
        "--bits",
        "64",
    ]);
    bllm_ok(&[
        "codes",
        "pack",
        s(&q),
        "--out",
        s(&out.join("q")),
        "--bits",
        "64",
    ]);
    bllm_ok(&[
        "codes",
        "search",
        "--db",
        s(&out.join("db")),
        "--queries",
        s(&out.join("q")),
        "-k",
        "10",
        "--out",
        s(&out.join("n.tsv")),
    ]);
    bllm_ok(&[
        "codes",
        "recall",
        "--db-float",
        s(&db),
        "--queries-float",
        s(&q),
        "--db",
        s(&out.join("db")),
        "--queries",
        s(&out.join("q")),
        "-k",
        "10",
        "--rerank",
        "100",
        "--json",
        s(&out.join("r.json")),
    ]);
    for (format, file) in [
        ("npy", "u64.npy"),
        ("npy-u8", "u8.npy"),
        ("faiss", "db.faiss"),
    ] {
        bllm_ok(&[
            "codes",
            "export",
            s(&out.join("db")),
            "--format",
            format,
            "--out",
            s(&out.join(file)),
        ]);
    }
}

#[test]
fn quickstart_pipeline_is_deterministic_and_sane() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    pipeline(a.path());
    pipeline(b.path());
    for f in [
        "db/codes.bcodes",
        "db/manifest.json",
        "q/codes.bcodes",
        "n.tsv",
        "r.json",
        "u64.npy",
        "u8.npy",
        "db.faiss",
    ] {
        let x = std::fs::read(a.path().join(f)).unwrap();
        let y = std::fs::read(b.path().join(f)).unwrap();
        assert!(x == y, "{f} differs between two identical runs");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path().join("r.json")).unwrap()).unwrap();
    let (recall, reranked) = (
        r["recall_at_k"].as_f64().unwrap(),
        r["recall_after_rerank"].as_f64().unwrap(),
    );
    // Sign codes of uncentred clustered data are a weak baseline, and re-ranking must help.
    assert!(recall > 0.05 && recall < 0.9, "Recall@10 = {recall}");
    assert!(
        reranked > recall,
        "re-ranking did not help: {reranked} <= {recall}"
    );
    assert_eq!(r["queries"], 400);
    assert_eq!(r["db_rows"], 4000);
}

#[test]
fn exports_match_numpy_and_faiss() {
    if !python_with(&["numpy", "faiss"]) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    pipeline(out.path());
    let o = |f: &str| out.path().join(f).to_str().unwrap().to_owned();
    let db = repo_root().join("datasets/sample-clustered/db.npy");
    let stdout = python_ok(
        "scripts/verify_formats.py",
        &[
            s(&db),
            "64",
            &o("db"),
            &o("u64.npy"),
            &o("u8.npy"),
            &o("db.faiss"),
            &o("q"),
            &o("n.tsv"),
            "10",
        ],
    );
    assert!(stdout.contains("same distances"), "{stdout}");
}

#[test]
fn errors_name_the_problem() {
    let out = tempfile::tempdir().unwrap();
    let e = bllm(&["codes", "info", s(&out.path().join("absent"))]).unwrap_err();
    assert!(e.contains("absent"), "{e}");
    let e = bllm(&["codes", "frobnicate"]).unwrap_err();
    assert!(e.contains("frobnicate"), "{e}");
}

#[test]
fn baseline_encoders_fit_save_and_encode_identically() {
    let out = tempfile::tempdir().unwrap();
    let db = repo_root().join("datasets/sample-clustered/db.npy");
    let x = bllm_codes::io::npy::read_float_matrix(&db).unwrap();
    for method in ["lsh", "lsh_centred", "pca", "itq"] {
        let enc_dir = out.path().join(format!("enc-{method}"));
        let codes_dir = out.path().join(format!("codes-{method}"));
        bllm_ok(&[
            "codes",
            "fit",
            "--method",
            method,
            "--bits",
            "64",
            "--train",
            s(&db),
            "--out",
            s(&enc_dir),
            "--seed",
            "3",
        ]);
        bllm_ok(&[
            "encode",
            "--encoder",
            s(&enc_dir),
            "--input",
            s(&db),
            "--out",
            s(&codes_dir),
        ]);
        // The saved encoder reproduces, bit for bit, what the freshly fitted one computes.
        let fresh =
            bllm_hash::fit(bllm_hash::Method::from_name(method).unwrap(), &x, 64, 3).unwrap();
        let (codes, manifest) = bllm_codes::io::read_codes_dir(&codes_dir).unwrap();
        assert_eq!(codes, fresh.encode(&x).unwrap(), "{method}");
        assert!(manifest.encoder.unwrap().starts_with(method));
    }
    let e = bllm(&[
        "codes",
        "fit",
        "--method",
        "umap",
        "--bits",
        "8",
        "--train",
        s(&db),
        "--out",
        s(out.path()),
    ])
    .unwrap_err();
    assert!(e.contains("umap") && e.contains("itq"), "{e}");
    let e = bllm(&[
        "codes",
        "fit",
        "--method",
        "pca",
        "--bits",
        "999",
        "--train",
        s(&db),
        "--out",
        s(out.path()),
    ])
    .unwrap_err();
    assert!(e.contains("999"), "{e}");
}

#[test]
fn compare_writes_results_rows_for_every_method_bits_k_and_rerank() {
    let out = tempfile::tempdir().unwrap();
    let data = repo_root().join("datasets/sample-clustered/db.npy");
    bllm_ok(&[
        "codes",
        "compare",
        "--data",
        s(&data),
        "--queries",
        "50",
        "--methods",
        "lsh,itq",
        "--bits",
        "16,32",
        "-k",
        "1,10",
        "--rerank",
        "100",
        "--out",
        s(out.path()),
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    // 2 methods × 2 bit budgets × 2 k × (Hamming + float, asymmetric, decoded and decoded + PQ
    // residual at 1 re-rank depth).
    assert_eq!(rows.len(), 40);
    for r in &rows {
        let recall = r["recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall), "{r}");
        for key in [
            "method",
            "bits",
            "k",
            "rerank",
            "rerank_kind",
            "bytes_per_row",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        // Float re-ranking keeps the float32 rows; the codes alone cost ⌈bits/64⌉·8 bytes; the
        // decoded rows hold the f32 norm of the decoded row, the PQ residual adds --pq-bytes
        // (default 8).
        let dim = 128;
        let want = match r["rerank_kind"].as_str().unwrap() {
            "float" => 8 + dim * 4,
            "none" | "asymmetric" => 8,
            "decoded" => 8 + 4,
            "decoded_pq" => 8 + 8 + 4,
            other => panic!("rerank_kind {other}"),
        };
        assert_eq!(r["bytes_per_row"].as_u64().unwrap(), want as u64, "{r}");
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        md.contains("| itq | 32 |")
            && md.contains("R@10 rerank 100")
            && md.contains("R@10 asym 100")
            && md.contains("R@10 dec+pq 100"),
        "{md}"
    );
    let e = bllm(&["codes", "compare", "--data", s(&data), "--queries", "5000"]).unwrap_err();
    assert!(e.contains("queries = 5000"), "{e}");
    let e = bllm(&[
        "codes",
        "compare",
        "--data",
        s(&data),
        "--queries",
        "50",
        "--pq-bytes",
        "7",
    ])
    .unwrap_err();
    assert!(e.contains("pq_bytes = 7") && e.contains("128"), "{e}");
}

#[test]
fn search_rescores_asymmetrically_from_the_codes_alone() {
    let out = tempfile::tempdir().unwrap();
    let data = repo_root().join("datasets/sample-clustered");
    let (db, q) = (data.join("db.npy"), data.join("queries.npy"));
    let (enc, dbc, qc) = (
        out.path().join("enc"),
        out.path().join("db"),
        out.path().join("q"),
    );
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "itq",
        "--bits",
        "32",
        "--train",
        s(&db),
        "--out",
        s(&enc),
    ]);
    for (input, dir) in [(&db, &dbc), (&q, &qc)] {
        bllm_ok(&[
            "encode",
            "--encoder",
            s(&enc),
            "--input",
            s(input),
            "--out",
            s(dir),
        ]);
    }
    let tsv = out.path().join("hits.tsv");
    let args = |k: &str, r: &str| {
        vec![
            "codes".to_string(),
            "search".into(),
            "--db".into(),
            s(&dbc).into(),
            "--queries".into(),
            s(&qc).into(),
            "-k".into(),
            k.into(),
            "--out".into(),
            s(&tsv).into(),
            "--rerank".into(),
            r.into(),
            "--rerank-query".into(),
            s(&q).into(),
            "--encoder".into(),
            s(&enc).into(),
        ]
    };
    let run = |a: Vec<String>| bllm(&a.iter().map(String::as_str).collect::<Vec<_>>());
    run(args("10", "100")).unwrap();
    let text = std::fs::read_to_string(&tsv).unwrap();
    assert!(
        text.starts_with("query_index\trank\tdb_index\tscore\n"),
        "{text:.80}"
    );
    // Recompute every score densely: z = encoder projection of the query, s = ±1 code bits.
    let encoder = bllm_hash::LinearEncoder::load(&enc).unwrap();
    let qf = bllm_data::load_embeddings(&q, None).unwrap();
    let z = encoder.project(&qf).unwrap();
    let (codes, _) = bllm_codes::io::read_codes_dir(&dbc).unwrap();
    let signs = codes.to_signs();
    let mut last: Option<(usize, f64)> = None;
    let mut lines = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (qi, id, score): (usize, usize, f64) = (
            f[0].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        let want: f64 = z[qi * 32..(qi + 1) * 32]
            .iter()
            .zip(&signs[id * 32..(id + 1) * 32])
            .map(|(a, b)| (a * b) as f64)
            .sum();
        assert!(
            (score - want).abs() < 1e-3 * (1.0 + want.abs()),
            "{line}: {want}"
        );
        if let Some((lq, ls)) = last
            && lq == qi
        {
            assert!(score <= ls, "scores not descending at {line}");
        }
        last = Some((qi, score));
        lines += 1;
    }
    assert_eq!(lines, qf.rows() * 10);
    // Bad input: a smaller depth than k, an encoder of another length, a missing encoder.
    let e = run(args("10", "5")).unwrap_err();
    assert!(e.contains("--rerank 5"), "{e}");
    let enc16 = out.path().join("enc16");
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "lsh",
        "--bits",
        "16",
        "--train",
        s(&db),
        "--out",
        s(&enc16),
    ]);
    let mut a = args("10", "100");
    let last = a.len() - 1;
    a[last] = s(&enc16).into();
    let e = run(a).unwrap_err();
    assert!(e.contains("16-bit") && e.contains("32-bit"), "{e}");
    let mut a = args("10", "100");
    a.truncate(a.len() - 2);
    assert!(run(a).is_err());
}

#[test]
fn search_rescores_through_the_decoder_and_its_residual() {
    let out = tempfile::tempdir().unwrap();
    let data = repo_root().join("datasets/sample-clustered");
    let (db, q) = (data.join("db.npy"), data.join("queries.npy"));
    let (enc, dbc, qc) = (
        out.path().join("enc"),
        out.path().join("db"),
        out.path().join("q"),
    );
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "itq",
        "--bits",
        "32",
        "--train",
        s(&db),
        "--out",
        s(&enc),
        "--decoder",
        "--pq-bytes",
        "8",
    ]);
    assert!(enc.join(bllm_hash::DECODER_JSON).is_file());
    for (input, dir) in [(&db, &dbc), (&q, &qc)] {
        bllm_ok(&[
            "encode",
            "--encoder",
            s(&enc),
            "--input",
            s(input),
            "--out",
            s(dir),
        ]);
        assert!(dir.join(bllm_hash::RESIDUAL_NPY).is_file());
    }
    let tsv = out.path().join("hits.tsv");
    let search = |extra: &[&str]| {
        let mut a = vec![
            "codes",
            "search",
            "--db",
            s(&dbc),
            "--queries",
            s(&qc),
            "-k",
            "10",
            "--out",
            s(&tsv),
            "--rerank",
            "100",
            "--rerank-query",
            s(&q),
            "--encoder",
            s(&enc),
            "--rescore",
            "decoded",
        ];
        a.extend_from_slice(extra);
        bllm(&a)
    };
    search(&[]).unwrap();
    let text = std::fs::read_to_string(&tsv).unwrap();
    // Recompute every score densely: the decoded code plus its residual centroids.
    let dec = bllm_hash::CodeDecoder::load(&enc).unwrap();
    let qf = bllm_data::load_embeddings(&q, None).unwrap();
    let dbf = bllm_data::load_embeddings(&db, None).unwrap();
    let (codes, _) = bllm_codes::io::read_codes_dir(&dbc).unwrap();
    let (_, _, res) = bllm_codes::io::npy::read_u8_npy(&dbc.join(bllm_hash::RESIDUAL_NPY)).unwrap();
    let xh = dec.decode(&codes).unwrap();
    let r = dec.residual.as_ref().unwrap();
    let sub = dec.dim / r.subspaces;
    let decoded = |id: usize| -> Vec<f32> {
        let mut v = xh.row(id).to_vec();
        for j in 0..r.subspaces {
            let c = res[id * r.subspaces + j] as usize;
            for t in 0..sub {
                v[j * sub + t] += r.codebooks[(j * r.centroids + c) * sub + t];
            }
        }
        v
    };
    let mut found = vec![Vec::new(); qf.rows()];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (qi, id, score): (usize, usize, f64) = (
            f[0].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        let v = decoded(id);
        let dot: f64 = qf
            .row(qi)
            .iter()
            .zip(&v)
            .map(|(a, b)| f64::from(a * b))
            .sum();
        let n: f64 = v.iter().map(|b| f64::from(b * b)).sum::<f64>().sqrt();
        let qn: f64 = qf
            .row(qi)
            .iter()
            .map(|a| f64::from(a * a))
            .sum::<f64>()
            .sqrt();
        let want = dot / (n * qn);
        assert!((score - want).abs() < 1e-4, "{line}: {want}");
        found[qi].push(id as u32);
    }
    assert!(found.iter().all(|f| f.len() == 10));
    // It ranks better than the Hamming order of the codes alone, against exact cosine truth.
    let truth = bllm_codes::float::search(&dbf, &qf, 10, bllm_codes::Metric::Cosine).unwrap();
    let (qcodes, _) = bllm_codes::io::read_codes_dir(&qc).unwrap();
    let ham = bllm_codes::hamming::search(&codes, &qcodes, 10).unwrap();
    let recall = |ids: &dyn Fn(usize) -> Vec<u32>| {
        (0..qf.rows())
            .map(|i| {
                ids(i)
                    .iter()
                    .filter(|x| truth.ids_of(i).contains(x))
                    .count()
            })
            .sum::<usize>() as f64
            / (10 * qf.rows()) as f64
    };
    let (r_dec, r_ham) = (
        recall(&|i| found[i].clone()),
        recall(&|i| ham.ids_of(i).to_vec()),
    );
    assert!(r_dec > r_ham, "decoded {r_dec} vs Hamming {r_ham}");
    // A residual file of the wrong shape is refused, naming it; a missing one is scored without.
    let rp = dbc.join(bllm_hash::RESIDUAL_NPY);
    bllm_codes::io::npy::write_u8_npy(&rp, 3, 8, &[0; 24]).unwrap();
    let e = search(&[]).unwrap_err();
    assert!(e.contains("residual.npy") && e.contains("3 × 8"), "{e}");
    std::fs::remove_file(&rp).unwrap();
    search(&[]).unwrap();
    // An encoder directory without a decoder is a clear error.
    let plain = out.path().join("plain");
    bllm_ok(&[
        "codes",
        "fit",
        "--method",
        "itq",
        "--bits",
        "32",
        "--train",
        s(&db),
        "--out",
        s(&plain),
    ]);
    let e = bllm(&[
        "codes",
        "search",
        "--db",
        s(&dbc),
        "--queries",
        s(&qc),
        "-k",
        "10",
        "--out",
        s(&tsv),
        "--rerank",
        "100",
        "--rerank-query",
        s(&q),
        "--encoder",
        s(&plain),
        "--rescore",
        "decoded",
    ])
    .unwrap_err();
    assert!(e.contains("decoder") && e.contains("plain"), "{e}");
}
