//! The `bllm` binary as a user runs it: every `codes` command, its output files, its exit
//! status and its error messages.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bllm_codes::io::{self, npy};
use bllm_codes::{FloatMatrix, PackedCodes};

fn bllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bllm"))
        .args(args)
        .output()
        .expect("run bllm")
}

fn ok(args: &[&str]) -> String {
    let out = bllm(args);
    assert!(
        out.status.success(),
        "bllm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns stderr.
fn err(args: &[&str]) -> String {
    let out = bllm(args);
    assert!(
        !out.status.success(),
        "bllm {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

struct Fixture {
    dir: tempfile::TempDir,
    db: FloatMatrix,
    queries: FloatMatrix,
}

impl Fixture {
    /// 300 database rows and 12 queries of 40 dims; the queries are noisy database rows.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = bllm_codes::rng::SplitMix64::new(5);
        let db: Vec<f32> = (0..300 * 40).map(|_| rng.next_gaussian() as f32).collect();
        let q: Vec<f32> = (0..12 * 40)
            .map(|i| db[(i / 40) * 25 * 40 + i % 40] + 0.3 * rng.next_gaussian() as f32)
            .collect();
        let db = FloatMatrix::new(300, 40, db).unwrap();
        let queries = FloatMatrix::new(12, 40, q).unwrap();
        npy::write_f32_npy(&dir.path().join("db.npy"), &db).unwrap();
        npy::write_f32_npy(&dir.path().join("q.npy"), &queries).unwrap();
        Fixture { dir, db, queries }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pack(&self, input: &str, out: &str, bits: usize) {
        ok(&[
            "codes",
            "pack",
            s(&self.path(input)),
            "--out",
            s(&self.path(out)),
            "--bits",
            &bits.to_string(),
        ]);
    }
}

#[test]
fn pack_writes_codes_and_manifest() {
    let f = Fixture::new();
    let stdout = ok(&[
        "codes",
        "pack",
        s(&f.path("db.npy")),
        "--out",
        s(&f.path("c")),
    ]);
    assert!(stdout.contains("300 rows × 40 bits"), "{stdout}");
    let (codes, m) = io::read_codes_dir(&f.path("c")).unwrap();
    assert_eq!(
        codes,
        PackedCodes::from_f32_rows(f.db.as_slice(), 40, 40).unwrap()
    );
    let src = m.source.unwrap();
    assert_eq!(
        (src.rows, src.dim, src.dtype.as_str()),
        (300, 40, "float32")
    );
    assert_eq!(src.sha256, io::sha256_file(&f.path("db.npy")).unwrap());
    assert!(m.tool.starts_with("bllm "));
    f.pack("db.npy", "c17", 17);
    assert_eq!(io::read_codes_dir(&f.path("c17")).unwrap().0.bits(), 17);
    let info = ok(&["codes", "info", s(&f.path("c17"))]);
    assert!(info.contains("checksum verified"), "{info}");
}

#[test]
fn pack_reports_bad_input() {
    let f = Fixture::new();
    let e = err(&[
        "codes",
        "pack",
        s(&f.path("missing.npy")),
        "--out",
        s(&f.path("c")),
    ]);
    assert!(e.contains("missing.npy"), "{e}");
    let e = err(&[
        "codes",
        "pack",
        s(&f.path("db.npy")),
        "--out",
        s(&f.path("c")),
        "--bits",
        "41",
    ]);
    assert!(e.contains("--bits 41") && e.contains("1..=40"), "{e}");
    let mut nan = f.db.as_slice().to_vec();
    nan[3 * 40 + 7] = f32::NAN;
    npy::write_f32_npy(
        &f.path("nan.npy"),
        &FloatMatrix::new(300, 40, vec![0.0; 300 * 40]).unwrap(),
    )
    .unwrap();
    // Patch the NaN in directly (FloatMatrix refuses to hold one).
    let mut bytes = std::fs::read(f.path("nan.npy")).unwrap();
    let off = bytes.len() - 300 * 40 * 4 + (3 * 40 + 7) * 4;
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(f.path("nan.npy"), bytes).unwrap();
    let e = err(&[
        "codes",
        "pack",
        s(&f.path("nan.npy")),
        "--out",
        s(&f.path("c")),
    ]);
    assert!(
        e.contains("nan.npy") && e.contains("row 3, column 7"),
        "{e}"
    );
    std::fs::write(f.path("junk.npy"), b"not numpy").unwrap();
    let e = err(&[
        "codes",
        "pack",
        s(&f.path("junk.npy")),
        "--out",
        s(&f.path("c")),
    ]);
    assert!(
        e.contains("junk.npy") && e.contains("not a .npy file"),
        "{e}"
    );
    assert!(!f.path("c").exists(), "failed packs must not leave output");
}

#[test]
fn export_in_every_format() {
    let f = Fixture::new();
    f.pack("db.npy", "c", 40);
    let codes = io::read_codes_dir(&f.path("c")).unwrap().0;
    for (format, file) in [
        ("npy", "u64.npy"),
        ("npy-u8", "u8.npy"),
        ("faiss", "i.faiss"),
    ] {
        ok(&[
            "codes",
            "export",
            s(&f.path("c")),
            "--format",
            format,
            "--out",
            s(&f.path(file)),
        ]);
    }
    assert_eq!(
        npy::read_codes_npy(&f.path("u64.npy"), Some(40)).unwrap(),
        codes
    );
    assert_eq!(
        npy::read_codes_npy(&f.path("u8.npy"), Some(40)).unwrap(),
        codes
    );
    assert_eq!(
        io::read_faiss_binary_flat(&f.path("i.faiss")).unwrap(),
        codes
    );
    f.pack("db.npy", "c13", 13);
    let e = err(&[
        "codes",
        "export",
        s(&f.path("c13")),
        "--format",
        "faiss",
        "--out",
        s(&f.path("x")),
    ]);
    assert!(e.contains("multiple of 8") && e.contains("13"), "{e}");
    let e = err(&[
        "codes",
        "export",
        s(&f.path("c")),
        "--format",
        "parquet",
        "--out",
        s(&f.path("x")),
    ]);
    assert!(e.contains("parquet"), "{e}");
    let e = err(&[
        "codes",
        "export",
        s(&f.path("nowhere")),
        "--format",
        "npy",
        "--out",
        s(&f.path("x")),
    ]);
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn search_writes_sorted_tsv() {
    let f = Fixture::new();
    f.pack("db.npy", "db", 40);
    f.pack("q.npy", "q", 40);
    ok(&[
        "codes",
        "search",
        "--db",
        s(&f.path("db")),
        "--queries",
        s(&f.path("q")),
        "-k",
        "5",
        "--out",
        s(&f.path("n.tsv")),
    ]);
    let tsv = std::fs::read_to_string(f.path("n.tsv")).unwrap();
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("query_index\trank\tdb_index\tdistance"));
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split('\t').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 12 * 5);
    let db = io::read_codes_dir(&f.path("db")).unwrap().0;
    let q = io::read_codes_dir(&f.path("q")).unwrap().0;
    for r in &rows {
        let (qi, rank, id, d) = (r[0] as usize, r[1], r[2] as usize, r[3] as u32);
        assert_eq!(d, bllm_codes::hamming::distance(q.row(qi), db.row(id)));
        if rank == 0 {
            // Each query is a noisy copy of database row 25·qi, its nearest neighbour.
            assert_eq!(id, qi * 25, "query {qi}");
        }
    }
    let e = err(&[
        "codes",
        "search",
        "--db",
        s(&f.path("db")),
        "--queries",
        s(&f.path("q")),
        "-k",
        "301",
        "--out",
        s(&f.path("n.tsv")),
    ]);
    assert!(e.contains("k (301) exceeds"), "{e}");
    f.pack("q.npy", "q32", 32);
    let e = err(&[
        "codes",
        "search",
        "--db",
        s(&f.path("db")),
        "--queries",
        s(&f.path("q32")),
        "-k",
        "5",
        "--out",
        s(&f.path("n.tsv")),
    ]);
    assert!(e.contains("40 bits") && e.contains("32"), "{e}");
}

#[test]
fn recall_prints_and_writes_json() {
    let f = Fixture::new();
    f.pack("db.npy", "db", 40);
    f.pack("q.npy", "q", 40);
    let stdout = ok(&[
        "codes",
        "recall",
        "--db-float",
        s(&f.path("db.npy")),
        "--queries-float",
        s(&f.path("q.npy")),
        "--db",
        s(&f.path("db")),
        "--queries",
        s(&f.path("q")),
        "-k",
        "10",
        "--rerank",
        "300",
        "--json",
        s(&f.path("r.json")),
    ]);
    assert!(stdout.contains("Recall@10:"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.path("r.json")).unwrap()).unwrap();
    // Re-ranking every database row is exact search.
    assert_eq!(r["recall_after_rerank"], 1.0);
    let recall = r["recall_at_k"].as_f64().unwrap();
    assert!(recall > 0.0 && recall < 1.0, "{recall}");
    assert_eq!(r["bits"], 40);
    // The same numbers as the library computes.
    let db = io::read_codes_dir(&f.path("db")).unwrap().0;
    let q = io::read_codes_dir(&f.path("q")).unwrap().0;
    let lib = bllm_codes::metrics::evaluate(
        &f.db,
        &f.queries,
        &db,
        &q,
        10,
        Some(300),
        bllm_codes::Metric::Cosine,
    )
    .unwrap();
    assert_eq!(recall, lib.recall_at_k);
    // Mismatched float and code rows are caught.
    let e = err(&[
        "codes",
        "recall",
        "--db-float",
        s(&f.path("q.npy")),
        "--queries-float",
        s(&f.path("q.npy")),
        "--db",
        s(&f.path("db")),
        "--queries",
        s(&f.path("q")),
        "-k",
        "10",
    ]);
    assert!(
        e.contains("12 float database rows but 300 database codes"),
        "{e}"
    );
}

#[test]
fn bench_runs_small_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let stdout = ok(&[
        "--threads",
        "1",
        "codes",
        "bench",
        "--db-rows",
        "5000",
        "--queries",
        "20",
        "--pack-rows",
        "100",
        "--memcpy-mib",
        "1",
        "--repeats",
        "1",
        "--json",
        s(&json),
    ]);
    assert!(stdout.contains("scan / memcpy"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["threads"], 1);
    assert!(r["search_queries_per_s"].as_f64().unwrap() > 0.0);
    let e = err(&["codes", "bench", "--kernel", "quantum"]);
    assert!(e.contains("quantum"), "{e}");
}

#[test]
fn usage_errors_and_help() {
    assert!(ok(&["--help"]).contains("codes"));
    assert!(ok(&["codes", "pack", "--help"]).contains("--bits"));
    assert!(ok(&["--version"]).starts_with("bllm "));
    let out = bllm(&["codes", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let e = err(&["--threads", "0", "codes", "info", "x"]);
    assert!(e.contains("--threads"), "{e}");
}

#[test]
fn ste_list_names_every_estimator() {
    let out = ok(&["ste", "list"]);
    for est in bllm_ste::Estimator::all() {
        assert!(
            out.contains(est.name()),
            "{} missing from:\n{out}",
            est.name()
        );
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&["ste", "list", "--json"])).unwrap();
    assert_eq!(
        json.as_array().unwrap().len(),
        bllm_ste::Estimator::all().len()
    );
}

#[test]
fn ste_table_gives_autodiff_gradients_and_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("g.png");
    let csv = ok(&[
        "ste",
        "table",
        "--x=-1.5:1.5:0.5",
        "--estimators",
        "clipped,approx_sign,ede",
        "--progress",
        "1",
        "--png",
        s(&png),
    ]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("estimator,x,forward,grad"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3 * 7);
    let get = |name: &str, x: &str| {
        let r = rows.iter().find(|r| r[0] == name && r[1] == x).unwrap();
        (r[2].parse::<f32>().unwrap(), r[3].parse::<f32>().unwrap())
    };
    assert_eq!(get("clipped", "0"), (1.0, 1.0));
    assert_eq!(get("clipped", "-1.5"), (-1.0, 0.0));
    assert_eq!(get("approx_sign", "0.5"), (1.0, 1.0));
    // EDE at p = 1: t = 10, k = 1, G(0) = 10.
    assert!((get("ede", "0").1 - 10.0).abs() < 1e-4);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let e = err(&[
        "ste",
        "table",
        "--x=0:1:0.1",
        "--estimators",
        "clipped,bogus",
    ]);
    assert!(e.contains("bogus") && e.contains("bllm ste list"), "{e}");
    let e = err(&["ste", "table", "--x=1:0:0.1"]);
    assert!(e.contains("STOP >= START"), "{e}");
    let e = err(&["ste", "table", "--x=0:1:0.1", "--progress", "2"]);
    assert!(e.contains("--progress"), "{e}");
}

/// Every file below `dir` (relative path → bytes), except `events.jsonl`, which records the
/// interruptions themselves.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if rel != "events.jsonl" {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn killed_at_20_points_and_resumed_the_run_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/smoke.toml");
    let run_args = |run: &Path| -> Vec<String> {
        [
            "run",
            recipe,
            "train.steps=4000",
            "checkpoint.every=40",
            "checkpoint.keep_last=3",
            "optimizer.kind=bop_adam",
            "--run-dir",
            s(run),
        ]
        .map(String::from)
        .to_vec()
    };
    let full = dir.path().join("full");
    let t0 = std::time::Instant::now();
    ok(&run_args(&full)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let full_ms = t0.elapsed().as_millis().max(50) as u64;
    // Kill a second run at 20 points: 14 SIGKILLs at seeded random times (the first ones
    // early, before the first checkpoint), and 6 crashes injected inside checkpoint writes
    // (files written, directory not yet renamed). After each interruption the next attempt
    // passes --resume, which also covers a run killed before its first checkpoint.
    let killed = dir.path().join("killed");
    let mut rng = bllm_codes::rng::SplitMix64::new(2024);
    let mut attempts = Vec::new();
    for i in 0..14u64 {
        let span = if i < 3 { 30 } else { full_ms / 12 };
        attempts.push((Some(rng.next_u64() % span), None));
    }
    for n in [1, 2, 3, 1, 5, 8] {
        attempts.push((None, Some(n)));
    }
    let mut interrupted = 0;
    for (delay, crash) in attempts {
        let mut a = run_args(&killed);
        if killed.exists() {
            a.push("--resume".into());
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bllm"));
        cmd.args(&a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(n) = crash {
            cmd.env("BLLM_CRASH_IN_CHECKPOINT", n.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        match delay {
            Some(ms) => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let _ = child.kill();
                let status = child.wait().unwrap();
                interrupted += usize::from(!status.success());
            }
            None => {
                let status = child.wait().unwrap();
                interrupted += usize::from(status.code() == Some(137));
            }
        }
        if killed.join("summary.json").exists() {
            break;
        }
    }
    assert!(
        interrupted >= 10,
        "only {interrupted} attempts were interrupted"
    );
    let mut a = run_args(&killed);
    // (If an attempt already finished the run, resuming it again must change nothing.)
    if killed.exists() {
        a.push("--resume".into());
    }
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (want, got) = (tree(&full), tree(&killed));
    let names =
        |t: &std::collections::BTreeMap<String, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&want),
        names(&got),
        "the run directories hold different files"
    );
    for (name, bytes) in &want {
        assert!(
            got[name] == *bytes,
            "{name} differs after {interrupted} interruptions"
        );
    }
}

/// The smoke recipe, from the workspace root.
fn smoke_recipe() -> String {
    format!("{}/../../recipes/smoke.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn logs_are_filtered_by_bllm_log_and_parse_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    // Unscaled 1-bit weights make quant_error fire; with action = warn it is a WARN event.
    let out = Command::new(env!("CARGO_BIN_EXE_bllm"))
        .env("BLLM_LOG", "debug")
        .env_remove("RUST_LOG")
        .args([
            "--log-format",
            "json",
            "run",
            &smoke_recipe(),
            "train.steps=20",
            "eval.every=10",
            "model.scaling=none",
            "monitors.quant_error.action=warn",
            "--run-dir",
            s(&run),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let fired = events
        .iter()
        .find(|e| {
            e["fields"]["message"] == "monitor fired" && e["fields"]["monitor"] == "quant_error"
        })
        .unwrap_or_else(|| panic!("no quant_error event in {stderr}"));
    assert_eq!(fired["level"], "WARN");
    assert_eq!(fired["span"]["recipe"], "smoke");
    assert_eq!(fired["span"]["kind"], "classify");
    // debug: evaluations of a run without a terminal are there too, with their step.
    assert!(
        events.iter().any(|e| e["fields"]["step"] == 10
            && e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("evaluation"))),
        "{stderr}"
    );
    // BLLM_LOG=warn keeps the warning and drops the info lines; the files of record are
    // unchanged by logging.
    let quiet = dir.path().join("q");
    let out = Command::new(env!("CARGO_BIN_EXE_bllm"))
        .env("BLLM_LOG", "warn")
        .args([
            "run",
            &smoke_recipe(),
            "train.steps=20",
            "eval.every=10",
            "model.scaling=none",
            "monitors.quant_error.action=warn",
            "--run-dir",
            s(&quiet),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(
        text.contains("WARN") && text.contains("quant_error"),
        "{text}"
    );
    assert!(!text.contains("INFO"), "{text}");
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
        std::fs::read(quiet.join("metrics.jsonl")).unwrap()
    );
}

#[test]
fn a_malformed_log_filter_names_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_bllm"))
        .env("BLLM_LOG", "bllm_train=loud")
        .args(["ste", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("BLLM_LOG") && e.contains("not a log filter"),
        "{e}"
    );
    let bad = err(&["--log-format", "xml", "ste", "list"]);
    assert!(bad.contains("xml"), "{bad}");
}
