//! Helpers for BinaryLLM's end-to-end tests: running `bllm` commands in-process (through the
//! same argument parser as the binary), locating bundled data, and the Python interpreter used
//! for cross-checks against numpy and FAISS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `bllm ARGS…` in-process; returns the error message on failure.
pub fn bllm(args: &[&str]) -> Result<(), String> {
    let argv = std::iter::once("bllm").chain(args.iter().copied());
    bllm_cli::run_from(argv).map_err(|e| format!("{e:#}"))
}

/// Runs `bllm ARGS…` in-process and panics with the error chain if it fails.
pub fn bllm_ok(args: &[&str]) {
    if let Err(e) = bllm(args) {
        panic!("bllm {args:?} failed: {e}");
    }
}

/// Whether `python3` can import all of `modules`. When `BLLM_REQUIRE_PYTHON=1` (CI sets it) a
/// missing module fails the test instead of skipping it.
pub fn python_with(modules: &[&str]) -> bool {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = Command::new("python3")
        .args(["-c", &code])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("BLLM_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "BLLM_REQUIRE_PYTHON=1 but python3 cannot import {modules:?} (pip install numpy faiss-cpu)"
        );
        eprintln!("skipping: python3 cannot import {modules:?}");
    }
    ok
}

/// Runs `python3 SCRIPT ARGS…` from the repository root and panics with its output on failure;
/// returns stdout.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo_root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
