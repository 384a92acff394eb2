//! Memory estimates: recipes that cannot fit are refused by `validate`, `run` and `sweep` with
//! the estimate and the limit, before anything is allocated or written (issue 15, defect 3).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_e2e::{bllm, bllm_ok, repo_root};

fn recipe(rel: &str) -> String {
    repo_root().join(rel).to_str().unwrap().to_owned()
}

/// The reproduction: `model.hidden=[100000000]` needs ~260 GiB.
const HUGE: &str = "model.hidden=[100000000]";
/// Petabytes: larger than any machine's available memory, so the default limit refuses it.
const ABSURD: &str = "model.hidden=[1000000000000]";

fn assert_refused(e: &str, name: &str, limit: &str) {
    assert!(
        e.contains(&format!("recipe \"{name}\": needs an estimated ")),
        "{e}"
    );
    assert!(
        e.contains("parameters ") && e.contains("activations ") && e.contains("optimizer "),
        "{e}"
    );
    assert!(
        e.contains(&format!("but the memory limit is {limit}")),
        "{e}"
    );
}

#[test]
fn validate_refuses_what_cannot_fit() {
    let smoke = recipe("recipes/smoke.toml");
    let e = bllm(&["validate", &smoke, HUGE, "--memory-limit", "32GiB"]).unwrap_err();
    assert_refused(&e, "smoke", "32.0 GiB");
    assert!(e.contains("--memory-limit 32GiB"), "{e}");
    // The default limit is the available memory.
    let e = bllm(&["validate", &smoke, ABSURD]).unwrap_err();
    assert_refused(&e, "smoke", "");
    assert!(
        e.contains("(available memory; override with --memory-limit or BLLM_MEMORY_LIMIT)"),
        "{e}"
    );
    // `none` disables the check; a large enough limit passes.
    bllm_ok(&["validate", &smoke, HUGE, "--memory-limit", "none"]);
    bllm_ok(&["--memory-limit", "1TiB", "validate", &smoke, HUGE]);
}

#[test]
fn run_and_sweep_refuse_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("run");
    let d_s = d.to_str().unwrap();
    let smoke = recipe("recipes/smoke.toml");
    let e = bllm(&[
        "run",
        &smoke,
        HUGE,
        "--run-dir",
        d_s,
        "--memory-limit",
        "8GiB",
    ])
    .unwrap_err();
    assert_refused(&e, "smoke", "8.0 GiB");
    assert!(!d.exists(), "the run directory was created");
    let e = bllm(&["run", &smoke, ABSURD, "--run-dir", d_s]).unwrap_err();
    assert_refused(&e, "smoke", "");
    assert!(!d.exists(), "the run directory was created");

    let sweep = recipe("recipes/retrieval/hard-synthetic.toml");
    let e = bllm(&["sweep", &sweep, "--run-dir", d_s, "--memory-limit", "1MiB"]).unwrap_err();
    assert_refused(
        &e,
        "hard-synthetic/data.synthetic.outlier_fraction=0.0",
        "1.0 MiB",
    );
    assert!(!d.exists(), "the sweep directory was created");
}

#[test]
fn shipped_recipes_fit_by_default_and_not_in_one_mebibyte() {
    let recipes = bllm_cli::recipes::shipped(&repo_root().join("recipes")).unwrap();
    assert!(recipes.len() >= 10, "{recipes:?}");
    for p in &recipes {
        let p = p.to_str().unwrap();
        if let Err(e) = bllm(&["validate", p]) {
            panic!("{p}: {e}");
        }
    }
    let lm = recipe("recipes/lm/float.toml");
    let e = bllm(&["validate", &lm, "--memory-limit", "1MiB"]).unwrap_err();
    assert_refused(&e, "lm-float", "1.0 MiB");
}

#[test]
fn a_malformed_limit_is_a_usage_error_naming_the_flag() {
    let smoke = recipe("recipes/smoke.toml");
    let e = bllm(&["validate", &smoke, "--memory-limit", "lots"]).unwrap_err();
    assert!(e.contains("--memory-limit"), "{e}");
    assert!(e.contains("expected a size such as 8GiB"), "{e}");
}
