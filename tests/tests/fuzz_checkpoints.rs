//! Seeded mutation fuzzing of run directories and their checkpoints: `trainer.json`,
//! `model.mpk`, `optimizer.mpk`, `optimizer-bop.mpk`, `.bllm-files`, `recipe.resolved.toml`,
//! missing, extra and non-regular files. Each case resumes the mutated run through the real
//! CLI (in-process) and asserts: no panic, no hang, and either a clean error that names the run
//! directory or the file, or a finished run byte-identical to the uninterrupted reference
//! (where the mutation cannot change what is loaded).
//!
//! `BLLM_FUZZ_CASES=N` runs N cases (default 400, a few seconds on 2 cores).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use bllm_codes::rng::SplitMix64;
use bllm_e2e::{bllm, bllm_ok, repo_root};

const ARGS: [&str; 5] = [
    "train.steps=20",
    "checkpoint.every=10",
    "optimizer.kind=bop_adam",
    "model.binary_activations=true",
    "checkpoint.keep_last=5",
];

fn run_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "run".to_owned(),
        repo_root().join("recipes/smoke.toml").display().to_string(),
    ];
    v.extend(ARGS.iter().map(|s| s.to_string()));
    v.extend(["--run-dir".to_owned(), dir.display().to_string()]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Rewrites `.bllm-files` of checkpoint `ck` with the current checksums, so a mutation gets
/// past the integrity check and reaches the parser behind it.
fn rechecksum(ck: &Path) {
    let list = std::fs::read_to_string(ck.join(".bllm-files")).unwrap_or_default();
    let mut out = String::new();
    for line in list.lines() {
        let Some((_, f)) = line.split_once("  ") else {
            continue;
        };
        let Ok(bytes) = std::fs::read(ck.join(f)) else {
            continue;
        };
        out.push_str(&format!(
            "xxh3-64:{:016x}  {f}\n",
            xxhash_rust::xxh3::xxh3_64(&bytes)
        ));
    }
    std::fs::write(ck.join(".bllm-files"), out).unwrap();
}

/// What a case did to the run directory, and what the outcome may be.
struct Case {
    what: String,
    /// The run may succeed only with the reference result (the mutation cannot change what is
    /// loaded); otherwise an error naming the run directory is required.
    may_succeed: bool,
    /// The mutation changed meaning past every integrity check (a re-checksummed field edit):
    /// success with a different result is allowed, an error must still name the file.
    any_result: bool,
}

fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> &'a T {
    &v[(rng.next_u64() % v.len() as u64) as usize]
}

fn mutate(rng: &mut SplitMix64, run: &Path) -> Case {
    let ck = run.join("checkpoint-10");
    let files = [
        "trainer.json",
        "model.mpk",
        "optimizer.mpk",
        "optimizer-bop.mpk",
        "model.safetensors",
        ".bllm-files",
    ];
    let f = *pick(rng, &files);
    let p = ck.join(f);
    let bytes = std::fs::read(&p).unwrap();
    // Damage to the list itself can only remove files from verification (then the files,
    // intact, load to the reference result) or fail the check.
    let list = f == ".bllm-files";
    let case = |what: String, may_succeed: bool, any_result: bool| Case {
        what,
        may_succeed: may_succeed || list,
        any_result,
    };
    match rng.next_u64() % 9 {
        0 => {
            let at = (rng.next_u64() % bytes.len().max(1) as u64) as usize;
            std::fs::write(&p, &bytes[..at]).unwrap();
            case(format!("truncate {f} at {at}"), false, false)
        }
        1 => {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let i = (rng.next_u64() % b.len().max(1) as u64) as usize;
                b[i] ^= 1 << (rng.next_u64() % 8);
            }
            std::fs::write(&p, &b).unwrap();
            case(format!("flip bits in {f}"), false, false)
        }
        2 => {
            std::fs::remove_file(&p).unwrap();
            // Without its list the checkpoint is not verified (as one written before lists
            // existed) but is still loaded whole: the reference result.
            case(format!("delete {f}"), false, false)
        }
        3 => {
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(pick(rng, &["/dev/zero", "/dev/urandom"]), &p).unwrap();
            case(format!("{f} → device"), false, false)
        }
        4 => {
            std::fs::remove_file(&p).unwrap();
            let st = std::process::Command::new("mkfifo")
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success());
            case(format!("{f} → FIFO"), false, false)
        }
        5 => {
            // Field edits of trainer.json, re-checksummed so the parser sees them.
            let tp = ck.join("trainer.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&tp).unwrap()).unwrap();
            let obj = v.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            let k = pick(rng, &keys).clone();
            let values = [
                serde_json::json!(0),
                serde_json::json!(-1),
                serde_json::json!(u64::MAX),
                serde_json::json!(1e308),
                serde_json::json!("text"),
                serde_json::json!(null),
                serde_json::json!([1, 2]),
                serde_json::json!({}),
            ];
            let edit = rng.next_u64() % 3;
            let what = match edit {
                0 => {
                    obj.remove(&k);
                    format!("trainer.json: remove {k}")
                }
                1 => {
                    obj.insert("surprise".into(), serde_json::json!(1));
                    "trainer.json: add an unknown key".to_owned()
                }
                _ => {
                    let val = pick(rng, &values).clone();
                    let what = format!("trainer.json: {k} = {val}");
                    obj.insert(k, val);
                    what
                }
            };
            std::fs::write(&tp, serde_json::to_vec(&v).unwrap()).unwrap();
            rechecksum(&ck);
            case(what, false, true)
        }
        6 => {
            // Records mutated past the checksum: Burn's reader must fail cleanly.
            let rec = *pick(rng, &["model.mpk", "optimizer.mpk", "optimizer-bop.mpk"]);
            let rp = ck.join(rec);
            let mut b = std::fs::read(&rp).unwrap();
            let at = (rng.next_u64() % b.len().max(1) as u64) as usize;
            if rng.next_u64() % 2 == 0 {
                b.truncate(at);
            } else {
                b[at] ^= 0xff;
            }
            std::fs::write(&rp, &b).unwrap();
            rechecksum(&ck);
            case(
                format!("{rec} mutated at {at}, re-checksummed"),
                false,
                true,
            )
        }
        7 => {
            // A file the user put into the checkpoint: resume works (it is not listed), and
            // the later pruning moves the directory aside instead of deleting it.
            std::fs::write(ck.join("notes.txt"), "mine").unwrap();
            case("extra file in checkpoint-10".into(), true, false)
        }
        _ => {
            let rp = run.join("recipe.resolved.toml");
            let text = std::fs::read_to_string(&rp).unwrap();
            let edits = [
                ("steps = 20", "steps = \"many\""),
                ("[train]", "[train\n"),
                ("seed", "sneed"),
                ("hidden = [64]", "hidden = [128]"),
                ("steps = 20", "steps = 0"),
            ];
            let (from, to) = *pick(rng, &edits);
            if text.contains(from) {
                std::fs::write(&rp, text.replacen(from, to, 1)).unwrap();
            } else {
                std::fs::write(&rp, format!("{text}\n[[[")).unwrap();
            }
            case(
                format!("recipe.resolved.toml: {from:?} → {to:?}"),
                false,
                false,
            )
        }
    }
}

/// Runs the resume in a thread: `Err(message)`, `Ok(())`, or a panic / hang (test failure).
fn resume(run: &Path) -> Result<(), String> {
    let args = run_args(run, &["--resume"]);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = std::panic::catch_unwind(|| bllm(&argv));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("bllm panicked"),
        Err(_) => panic!("bllm did not finish within 60 s (hang)"),
    }
}

#[test]
fn mutated_checkpoints_give_a_clean_error_or_the_reference_result() {
    let cases: usize = std::env::var("BLLM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    bllm_ok(
        &run_args(&reference, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let want = std::fs::read(reference.join("final/model.mpk")).unwrap();
    let stopped = root.path().join("stopped");
    bllm_ok(
        &run_args(&stopped, &["--max-steps", "10"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let mut rng = SplitMix64::new(0xF022);
    let (mut errors, mut same, mut other) = (0, 0, 0);
    for i in 0..cases {
        let run: PathBuf = root.path().join(format!("case-{i}"));
        copy_dir(&stopped, &run);
        let case = mutate(&mut rng, &run);
        match resume(&run) {
            Err(e) => {
                let names = e.contains(&run.display().to_string())
                    || e.contains("checkpoint-10")
                    || e.contains("recipe.resolved.toml");
                assert!(names, "case {i} ({}): error names no file: {e}", case.what);
                errors += 1;
            }
            Ok(()) => {
                let got = std::fs::read(run.join("final/model.mpk")).unwrap();
                if got == want {
                    assert!(
                        case.may_succeed || case.any_result,
                        "case {i} ({}): resumed although the checkpoint was damaged",
                        case.what
                    );
                    same += 1;
                } else {
                    assert!(
                        case.any_result,
                        "case {i} ({}): resumed to a different model",
                        case.what
                    );
                    other += 1;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&run);
    }
    eprintln!(
        "checkpoint fuzz: {cases} cases: {errors} clean errors, {same} resumed to the reference, {other} resumed from a re-checksummed edit"
    );
}
