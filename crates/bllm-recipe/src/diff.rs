//! Comparing two resolved recipes key by key: what `--resume` may change and what it may not.
//!
//! A run directory saves the recipe it was started with (`recipe.resolved.toml`). Resuming with
//! a different recipe would silently train a different model from the saved weights, so a
//! resume compares the new resolved recipe with the saved one and refuses any difference
//! outside [`RESUME_SAFE_KEYS`].

use std::fmt;

use toml::{Table, Value};

use crate::Recipe;

/// Keys that may differ between a run's saved recipe and the recipe that resumes it: they
/// change when the run ends, how often it logs, evaluates and checkpoints, and its labels, but
/// not what one training step computes.
///
/// `train.steps` extends (or shortens) a run. The learning-rate schedule and the estimators'
/// schedules are functions of progress `step / train.steps`, so the steps after the resume
/// follow the new length; the steps before it are kept as they were.
pub const RESUME_SAFE_KEYS: &[&str] = &[
    "name",
    "description",
    "train.steps",
    "train.log_every",
    "eval.every",
    "checkpoint.every",
    "checkpoint.keep_last",
];

/// One key whose value differs between two recipes (`None`: absent, so its default applies).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyChange {
    /// Dotted key, e.g. `model.hidden`.
    pub key: String,
    /// The value in the saved (old) recipe.
    pub saved: Option<Value>,
    /// The value in the new recipe.
    pub new: Option<Value>,
}

impl KeyChange {
    /// Whether `--resume` may change this key ([`RESUME_SAFE_KEYS`]).
    pub fn is_safe(&self) -> bool {
        RESUME_SAFE_KEYS.contains(&self.key.as_str())
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent: the default)".into(),
        Some(v) => v.to_string(),
    }
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: saved {}, now {}",
            self.key,
            show(&self.saved),
            show(&self.new)
        )
    }
}

/// Every leaf key whose value differs between `saved` and `new`, in dotted-key order. Arrays
/// are compared whole; a table on one side and a value on the other is one change.
pub fn changed_keys(saved: &Table, new: &Table) -> Vec<KeyChange> {
    let mut out = Vec::new();
    walk("", Some(saved), Some(new), &mut out);
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn walk(prefix: &str, a: Option<&Table>, b: Option<&Table>, out: &mut Vec<KeyChange>) {
    let empty = Table::new();
    let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(Value::Table(x)), Some(Value::Table(y))) => walk(&key, Some(x), Some(y), out),
            (Some(Value::Table(x)), None) => walk(&key, Some(x), None, out),
            (None, Some(Value::Table(y))) => walk(&key, None, Some(y), out),
            (x, y) if x == y => {}
            (x, y) => out.push(KeyChange {
                key,
                saved: x.cloned(),
                new: y.cloned(),
            }),
        }
    }
}

/// What resuming a run saved with `saved` under the recipe `new` would change. `Ok` holds the
/// changes to safe keys (possibly none); `Err` the changes `--resume` must refuse.
///
/// Keys are compared as written (file + overrides). A key that is written on one side only but
/// resolves to the same value (an explicit default) is not a change: the two recipes are also
/// compared after validation, with the safe keys neutralised.
pub fn resume_changes(
    saved: &Recipe,
    new: &Recipe,
) -> std::result::Result<Vec<KeyChange>, Vec<KeyChange>> {
    let all = changed_keys(&saved.resolved, &new.resolved);
    let (safe, unsafe_): (Vec<KeyChange>, Vec<KeyChange>) =
        all.into_iter().partition(KeyChange::is_safe);
    if unsafe_.is_empty() || neutral(saved) == neutral(new) {
        Ok(safe)
    } else {
        Err(unsafe_)
    }
}

/// `r` with every safe key set to a fixed value and the raw table dropped, so two recipes
/// compare equal exactly when one training step computes the same thing under both.
fn neutral(r: &Recipe) -> Recipe {
    let mut r = r.clone();
    r.name.clear();
    r.description.clear();
    r.train.steps = 0;
    r.train.log_every = 0;
    r.eval.every = 0;
    r.checkpoint.every = 0;
    r.checkpoint.keep_last = 0;
    r.resolved = Table::new();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Override, parse_override};

    const BASE: &str = r#"
name = "t"
kind = "classify"
[estimator]
kind = "clipped"
[model]
hidden = [64]
[train]
steps = 20
"#;

    fn recipe(overrides: &[&str]) -> Recipe {
        let o: Vec<Override> = overrides
            .iter()
            .map(|s| parse_override(s).unwrap())
            .collect();
        Recipe::parse(BASE, "t.toml", &o, &()).unwrap()
    }

    #[test]
    fn leaf_differences_are_listed_with_both_values() {
        let c = changed_keys(
            &recipe(&[]).resolved,
            &recipe(&["model.hidden=[128]", "seed=3"]).resolved,
        );
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["model.hidden", "seed"]);
        assert_eq!(c[0].to_string(), "model.hidden: saved [64], now [128]");
        assert_eq!(c[1].to_string(), "seed: saved (absent: the default), now 3");
    }

    #[test]
    fn safe_keys_pass_and_everything_else_is_refused() {
        let saved = recipe(&[]);
        let ok = resume_changes(&saved, &recipe(&["train.steps=40", "eval.every=5"])).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(resume_changes(&saved, &recipe(&[])).unwrap().is_empty());
        let bad =
            resume_changes(&saved, &recipe(&["model.hidden=[128]", "train.steps=40"])).unwrap_err();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].key, "model.hidden");
        let bad = resume_changes(&saved, &recipe(&["estimator.kind=\"ede\""])).unwrap_err();
        assert_eq!(bad[0].key, "estimator.kind");
    }

    #[test]
    fn an_explicit_default_is_not_a_change() {
        // seed defaults to 0: writing it out resolves to the same recipe.
        assert!(
            resume_changes(&recipe(&[]), &recipe(&["seed=0"]))
                .unwrap()
                .is_empty()
        );
        assert!(resume_changes(&recipe(&[]), &recipe(&["seed=1"])).is_err());
    }
}
