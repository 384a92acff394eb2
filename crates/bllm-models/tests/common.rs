//! Shared by the tests that need the pretrained models in `models/`.

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `models/<name>` when it was fetched (`python3 scripts/fetch_models.py`); otherwise `None`
/// after saying why — or a panic when `BLLM_REQUIRE_MODELS=1` (CI sets it).
pub fn model(name: &str) -> Option<PathBuf> {
    let dir = root().join("models").join(name);
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!(
        "{} is missing: run `python3 scripts/fetch_models.py {name}` to fetch it",
        dir.display()
    );
    if std::env::var("BLLM_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("BLLM_REQUIRE_MODELS=1 and {msg}");
    }
    eprintln!("skipped: {msg}");
    None
}
