//! Every shipped recipe validates with the real component checks, and a broken one reports
//! every problem.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bllm_e2e::{bllm, repo_root};

#[test]
fn every_shipped_recipe_validates_and_names_its_command() {
    let recipes = bllm_cli::recipes::shipped(&repo_root().join("recipes")).unwrap();
    assert!(recipes.len() >= 2, "{recipes:?}");
    for p in recipes {
        let r =
            bllm_cli::recipes::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert!(
            !r.description.is_empty(),
            "{} has no description",
            p.display()
        );
        let first = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let rel = p.strip_prefix(repo_root()).unwrap().display().to_string();
        assert!(
            first.starts_with("# bllm ") && first.contains(&rel),
            "{rel}: first line must be the command that runs it, found {first:?}"
        );
    }
}

#[test]
fn estimator_errors_join_the_report() {
    let smoke = repo_root().join("recipes/smoke.toml");
    let smoke = smoke.to_str().unwrap();
    let e = bllm(&[
        "validate",
        smoke,
        "estimator.kind=sign_of_the_times",
        "train.steps=-1",
    ])
    .unwrap_err();
    assert!(e.contains("2 problems"), "{e}");
    assert!(
        e.contains(
            "override estimator.kind=sign_of_the_times: estimator: expected an estimator table"
        ),
        "{e}"
    );
    let e = bllm(&[
        "validate",
        smoke,
        "estimator.kind=swish_sign",
        "estimator.beta=-2",
    ])
    .unwrap_err();
    assert!(
        e.contains("estimator.beta: expected a finite number > 0, found -2"),
        "{e}"
    );
    let e = bllm(&["validate", smoke, "estimator.clipp=2"]).unwrap_err();
    assert!(e.contains("unknown field `clipp`"), "{e}");
    bllm(&[
        "validate",
        smoke,
        "estimator.kind=ede",
        "estimator.t_max=20",
    ])
    .unwrap();
}
