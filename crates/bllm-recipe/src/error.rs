//! Errors and validation issues.

use std::fmt;
use std::path::PathBuf;

/// One validation problem: where, what was expected, what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The recipe file, or `override KEY=VALUE` when an override caused it.
    pub source: String,
    /// Dotted key path (`train.steps`, `estimator.beta`); empty for the whole file.
    pub key: String,
    /// What the schema expects.
    pub expected: String,
    /// What the recipe holds.
    pub found: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}: expected {}, found {}",
                self.source, self.expected, self.found
            )
        } else {
            write!(
                f,
                "{}: {}: expected {}, found {}",
                self.source, self.key, self.expected, self.found
            )
        }
    }
}

/// Errors from loading a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The recipe file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        /// The recipe file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An override is malformed (`KEY=VALUE` expected).
    #[error("override {0:?}: expected KEY=VALUE with a dotted KEY, e.g. train.steps=200")]
    BadOverride(String),
    /// The recipe does not match the schema; every problem found is listed.
    #[error("{}", format_issues(.0))]
    Invalid(Vec<Issue>),
}

fn format_issues(issues: &[Issue]) -> String {
    let mut s = format!(
        "{} problem{} in the recipe:",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        s.push_str("\n  - ");
        s.push_str(&i.to_string());
    }
    s
}

/// `Result` with [`RecipeError`].
pub type Result<T, E = RecipeError> = std::result::Result<T, E>;
