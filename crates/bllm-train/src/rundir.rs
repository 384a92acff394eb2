//! Run directories and atomic checkpoint directories.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bllm_recipe::Recipe;

use crate::{Result, TrainError};

/// The file that marks a run directory: the resolved recipe (file + overrides) of its run.
pub const RECIPE_FILE: &str = "recipe.resolved.toml";

/// The list of files bllm wrote into a checkpoint directory (one relative path a line). A
/// directory is deleted (pruned or replaced) only when everything in it is on its list;
/// anything else is moved aside, never deleted.
pub const OWNED_FILE: &str = ".bllm-files";

/// Environment variable for fault-injection tests: `BLLM_CRASH_IN_CHECKPOINT=N` ends the
/// process (exit code 137, as a SIGKILL would) inside the N-th checkpoint write of this
/// process, after its files are written and before the directory is renamed into place.
pub const CRASH_IN_CHECKPOINT_ENV: &str = "BLLM_CRASH_IN_CHECKPOINT";

/// A run directory and its append-only logs.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

fn run_error(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::RunDir {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Reads the trainer state `S` of checkpoint `dir` (taken at `step`) and checks that its
/// step (`step_of`) agrees; writes nothing.
pub(crate) fn read_state<S: serde::de::DeserializeOwned>(
    dir: &Path,
    step: usize,
    step_of: impl Fn(&S) -> usize,
) -> Result<S> {
    let p = dir.join("trainer.json");
    let text = read_text(&p)?;
    let state: S = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: dir.to_owned(),
        message: format!("trainer.json: {e}"),
    })?;
    if step_of(&state) != step {
        return Err(TrainError::Checkpoint {
            path: dir.to_owned(),
            message: format!(
                "trainer.json says step {} but the directory is checkpoint-{step}",
                step_of(&state)
            ),
        });
    }
    Ok(state)
}

/// Reads a small text file bllm wrote (a recipe, `trainer.json`): regular files only, bounded.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = bllm_codes::io::read_regular(path, bllm_codes::io::MAX_TEXT_FILE)
        .map_err(|e| TrainError::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| {
        TrainError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"),
        )
    })
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let e = e.map_err(|e| TrainError::io(dir, e))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Whether `name` is one of bllm's temporary names: `.<name>.tmp-<pid>` (checkpoint
/// directories being written) or `.<name>.tmp-<pid>-<n>` (atomic file writes).
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(".tmp-") else {
        return false;
    };
    !tail.is_empty()
        && tail.split('-').count() <= 2
        && tail
            .split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl RunDir {
    /// Creates (or opens) the run directory.
    pub fn create(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Opens the run directory of `recipe` after the checks of [`RunDir::refuse_existing`],
    /// creating it when needed and removing temporary files an interrupted run left behind.
    pub fn open(path: &Path, recipe: &Recipe, resume: bool) -> Result<Self> {
        Self::refuse_existing(path, recipe, resume)?;
        Self::prepare(path)
    }

    /// The second half of [`RunDir::open`], for trainers that ran
    /// [`RunDir::refuse_existing`] before validating their inputs: creates the directory and
    /// removes temporary files an interrupted run left behind.
    pub fn prepare(path: &Path) -> Result<Self> {
        let run = Self::create(path)?;
        run.remove_stale_temps(&run.path)?;
        Ok(run)
    }

    /// The checks of [`RunDir::open`] alone, for trainers that validate their inputs before
    /// creating anything. `path` may be:
    /// * missing or empty: a new run (with `resume`, a missing directory is an error: nothing
    ///   to resume);
    /// * a bllm run directory (it holds [`RECIPE_FILE`]) whose saved recipe differs from
    ///   `recipe` at most in [`bllm_recipe::RESUME_SAFE_KEYS`]: resumed with `resume`; without
    ///   it only when the run has written nothing yet (no metrics, checkpoint or summary).
    ///
    /// Anything else is refused, so a run never writes into (or deletes from) a directory that
    /// holds something else, and never continues a run of another recipe.
    pub fn refuse_existing(path: &Path, recipe: &Recipe, resume: bool) -> Result<()> {
        let meta = match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if resume {
                    Err(run_error(
                        path,
                        "--resume: the directory does not exist, so there is no run to resume",
                    ))
                } else {
                    Ok(())
                };
            }
            Err(e) => return Err(TrainError::io(path, e)),
            Ok(m) => m,
        };
        if !meta.is_dir() {
            return Err(run_error(path, "exists and is not a directory"));
        }
        let names = entries(path)?;
        if names.is_empty() {
            return Ok(());
        }
        let Some(saved) = saved_recipe(path)? else {
            let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
            return Err(run_error(
                path,
                format!(
                    "is not empty and is not a bllm run directory (it has no {RECIPE_FILE}; it holds {}{}); bllm will not write into it: choose another --run-dir or empty it",
                    shown.join(", "),
                    if names.len() > 5 { ", …" } else { "" }
                ),
            ));
        };
        if let Err(changes) = bllm_recipe::resume_changes(&saved, recipe) {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            let what = if resume {
                "--resume with a recipe that differs from the run's saved recipe"
            } else {
                "already holds a run of a different recipe"
            };
            return Err(run_error(
                path,
                format!(
                    "{what} ({RECIPE_FILE}) in {} key(s) that change training: {}; only these keys may change on resume: {}",
                    list.len(),
                    list.join("; "),
                    bllm_recipe::RESUME_SAFE_KEYS.join(", ")
                ),
            ));
        }
        if !resume && has_progress(path)? {
            return Err(run_error(
                path,
                "this run directory already holds a run; pass --resume to continue it, or choose another --run-dir",
            ));
        }
        Ok(())
    }

    /// Starts a new run: saves the resolved recipe and clears the logs.
    pub fn start(&self, recipe: &Recipe) -> Result<()> {
        self.write_file(RECIPE_FILE, recipe.resolved_toml().as_bytes())?;
        for f in ["metrics.jsonl", "events.jsonl"] {
            match fs::remove_file(self.path.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TrainError::io(self.path.join(f), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts a run again from step 0 on `--resume` when no checkpoint is complete yet (the
    /// run was stopped before its first one): says so on stderr and in `events.jsonl`, and
    /// truncates the logs, so the run continues exactly as an uninterrupted one would.
    pub fn restart(&self, recipe: &Recipe) -> Result<()> {
        let message = "--resume: no complete checkpoint-<step>/ yet; the run starts again from step 0 (its logs are truncated)";
        eprintln!("{}: {message}", self.path.display());
        self.start(recipe)?;
        self.event(0, "restart", message.into())
    }

    /// After a resume: when the new recipe changed [safe keys](bllm_recipe::RESUME_SAFE_KEYS),
    /// saves it as the run's recipe and records the changes (stderr and `events.jsonl`).
    pub fn adopt_recipe(&self, recipe: &Recipe, step: usize) -> Result<()> {
        let Some(saved) = saved_recipe(&self.path)? else {
            return self.write_file(RECIPE_FILE, recipe.resolved_toml().as_bytes());
        };
        let changes = bllm_recipe::resume_changes(&saved, recipe).map_err(|c| {
            run_error(
                &self.path,
                format!("recipe changed in {} key(s) that change training", c.len()),
            )
        })?;
        if changes.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
        let message = format!("resumed with a changed recipe: {}", list.join("; "));
        eprintln!("{}: {message}", self.path.display());
        self.write_file(RECIPE_FILE, recipe.resolved_toml().as_bytes())?;
        self.event(step, "recipe", message)
    }

    fn event(&self, step: usize, event: &str, message: String) -> Result<()> {
        let e = crate::MonitorEvent {
            step,
            event: event.into(),
            message: Some(message),
            ..Default::default()
        };
        self.append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())
    }

    /// The newest complete checkpoint to resume from: `(step, directory)`, if any.
    pub fn resume_point(&self) -> Result<Option<(usize, PathBuf)>> {
        newest_checkpoint(&self.path)
    }

    /// Reads the trainer state `S` of checkpoint `dir` (taken at `step`), checks that its step
    /// (`step_of`) agrees, cuts the logs back to `step` and records the resume.
    pub fn resume_state<S: serde::de::DeserializeOwned>(
        &self,
        dir: &Path,
        step: usize,
        step_of: impl Fn(&S) -> usize,
    ) -> Result<S> {
        let state = read_state(dir, step, step_of)?;
        self.truncate_log("metrics.jsonl", step)?;
        self.truncate_log("events.jsonl", step)?;
        self.event(
            step,
            "resume",
            format!("resumed from {}", self.relative(dir)),
        )?;
        Ok(state)
    }

    /// `p` relative to the run directory (so logs do not depend on where the run lives).
    fn relative(&self, p: &Path) -> String {
        p.strip_prefix(&self.path)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// Writes `name` in the run directory atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path.join(name);
        bllm_codes::io::write_atomic(&p, bytes).map_err(|e| TrainError::Checkpoint {
            path: p,
            message: e.to_string(),
        })
    }

    /// Writes `value` as pretty JSON (with a final newline) to `name`, atomically.
    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(value).unwrap_or_default();
        json.push(b'\n');
        self.write_file(name, &json)
    }

    /// Appends one JSON line to `name` (`metrics.jsonl`, `events.jsonl`).
    pub fn append(&self, name: &str, value: &serde_json::Value) -> Result<()> {
        let p = self.path.join(name);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| TrainError::io(&p, e))?;
        writeln!(f, "{value}").map_err(|e| TrainError::io(&p, e))
    }

    /// Keeps only the lines of `name` whose `"step"` is at most `step` (used on resume so the
    /// logs continue exactly where the checkpoint was taken). A torn last line (a kill during
    /// an append) has no step and is dropped.
    pub fn truncate_log(&self, name: &str, step: usize) -> Result<()> {
        let p = self.path.join(name);
        if !p.exists() {
            return Ok(());
        }
        let bytes =
            bllm_codes::io::read_regular(&p, u64::MAX).map_err(|e| TrainError::io(&p, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        bllm_codes::io::write_atomic(&p, kept.as_bytes()).map_err(|e| TrainError::Checkpoint {
            path: p,
            message: e.to_string(),
        })
    }

    /// Writes a checkpoint atomically: `fill` writes into a temporary directory, whose files
    /// are listed in [`OWNED_FILE`], which is then renamed to `name` (an older directory of
    /// that name is deleted if bllm wrote everything in it, else moved aside). Returns the
    /// final path.
    pub fn write_checkpoint(
        &self,
        name: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let tmp = self
            .path
            .join(format!(".{name}.tmp-{}", std::process::id()));
        let dst = self.path.join(name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        if let Err(e) = fill(&tmp).and_then(|()| write_owned_list(&tmp)) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
        if std::env::var(CRASH_IN_CHECKPOINT_ENV).is_ok_and(|v| v.trim() == n.to_string()) {
            std::process::exit(137);
        }
        if fs::symlink_metadata(&dst).is_ok() {
            self.retire(&dst)?;
        }
        fs::rename(&tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
        Ok(dst)
    }

    /// Removes directory `dir` if bllm wrote everything in it (its [`OWNED_FILE`] lists every
    /// file); otherwise moves it aside to `<name>.kept-<k>` and says so, so nothing bllm did
    /// not write is ever deleted.
    fn retire(&self, dir: &Path) -> Result<()> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match unowned(dir)? {
            // Renamed first (atomic), then deleted: a kill during the deletion leaves a
            // temporary name that the next open removes, never a half-deleted checkpoint.
            None => {
                static TRASH: AtomicUsize = AtomicUsize::new(0);
                let trash = self.path.join(format!(
                    ".{name}.tmp-{}-{}",
                    std::process::id(),
                    TRASH.fetch_add(1, Ordering::Relaxed)
                ));
                fs::rename(dir, &trash).map_err(|e| TrainError::io(dir, e))?;
                fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))
            }
            Some(reason) => {
                let aside = (1..)
                    .map(|k| self.path.join(format!("{name}.kept-{k}")))
                    .find(|p| fs::symlink_metadata(p).is_err())
                    .unwrap_or_else(|| self.path.join(format!("{name}.kept")));
                fs::rename(dir, &aside).map_err(|e| TrainError::io(dir, e))?;
                let message = format!(
                    "{name} was not deleted ({reason}); it was moved to {}",
                    self.relative(&aside)
                );
                eprintln!("{}: {message}", self.path.display());
                Ok(())
            }
        }
    }

    /// Removes bllm's temporary files and directories (see `is_temp_name`) anywhere in `dir`:
    /// what a run killed during a write leaves behind.
    fn remove_stale_temps(&self, dir: &Path) -> Result<()> {
        for name in entries(dir)? {
            let p = dir.join(&name);
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if is_temp_name(&name) {
                let r = if m.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|e| TrainError::io(&p, e))?;
            } else if m.is_dir() {
                self.remove_stale_temps(&p)?;
            }
        }
        Ok(())
    }

    /// Records a periodic (or early-stop) checkpoint written at `path` for `step` in
    /// `events.jsonl`, then keeps only the newest `keep` checkpoints.
    pub fn checkpointed(&self, step: usize, path: &Path, note: &str, keep: usize) -> Result<()> {
        self.event(step, "checkpoint", format!("{}{note}", self.relative(path)))?;
        self.prune(keep)
    }

    /// Deletes all but the newest `keep` `checkpoint-<step>` directories (moving aside any
    /// that holds files bllm did not write).
    pub fn prune(&self, keep: usize) -> Result<()> {
        let mut steps = checkpoints(&self.path)?;
        steps.sort_unstable();
        let n = steps.len();
        for s in steps.into_iter().take(n.saturating_sub(keep)) {
            self.retire(&self.path.join(format!("checkpoint-{s}")))?;
        }
        Ok(())
    }
}

/// The saved recipe of run directory `dir`, `None` when it has no [`RECIPE_FILE`].
pub(crate) fn saved_recipe(dir: &Path) -> Result<Option<Recipe>> {
    let p = dir.join(RECIPE_FILE);
    if fs::symlink_metadata(&p).is_err() {
        return Ok(None);
    }
    let text = read_text(&p)?;
    let file = p.display().to_string();
    Recipe::parse(&text, &file, &[], &()).map(Some).map_err(|e| {
        run_error(
            dir,
            format!("its {RECIPE_FILE} is not a valid recipe, so the run cannot be continued or replaced: {e}"),
        )
    })
}

/// Whether run directory `dir` has written anything beyond its recipe.
fn has_progress(dir: &Path) -> Result<bool> {
    Ok(["metrics.jsonl", "summary.json", "final"]
        .iter()
        .any(|f| fs::symlink_metadata(dir.join(f)).is_ok())
        || !checkpoints(dir)?.is_empty())
}

/// Every file below `dir`, as sorted relative paths with `/` separators.
fn files_below(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for name in entries(dir)? {
            let p = dir.join(&name);
            let m = fs::symlink_metadata(&p).map_err(|e| TrainError::io(&p, e))?;
            if m.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// XXH3-64 of a file's bytes, as `xxh3-64:<16 hex digits>` (read in 1 MiB blocks).
fn file_checksum(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("xxh3-64:{:016x}", h.digest()))
}

/// Writes [`OWNED_FILE`] into `dir`: one line `<checksum>  <relative path>` for every file
/// below it.
fn write_owned_list(dir: &Path) -> Result<()> {
    let mut text = String::new();
    for f in files_below(dir)?.iter().filter(|f| *f != OWNED_FILE) {
        text.push_str(&file_checksum(&dir.join(f))?);
        text.push_str("  ");
        text.push_str(f);
        text.push('\n');
    }
    let p = dir.join(OWNED_FILE);
    fs::write(&p, text).map_err(|e| TrainError::io(&p, e))
}

/// The `(checksum, path)` lines of `dir`'s [`OWNED_FILE`], `None` when it has none.
fn owned_list(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let list = dir.join(OWNED_FILE);
    if !fs::symlink_metadata(&list).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let text = read_text(&list)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((sum, path)) = line.split_once("  ") else {
            return Err(TrainError::Checkpoint {
                path: list.clone(),
                message: format!(
                    "line {}: expected `<checksum>  <path>`, found {line:?}",
                    i + 1
                ),
            });
        };
        out.push((sum.to_owned(), path.to_owned()));
    }
    Ok(Some(out))
}

/// Checks every file of checkpoint `dir` against the checksum written with it, so a corrupt
/// or edited checkpoint is refused instead of resumed from. Checkpoints written before
/// [`OWNED_FILE`] existed have no list and are not checked.
pub(crate) fn verify_checkpoint(dir: &Path) -> Result<()> {
    let Some(list) = owned_list(dir)? else {
        return Ok(());
    };
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_owned(),
        message,
    };
    for (sum, f) in list {
        let p = dir.join(&f);
        if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            return Err(bad(format!(
                "{f} is missing or not a regular file, but {OWNED_FILE} lists it; move this checkpoint away to resume from an older one"
            )));
        }
        let actual = file_checksum(&p)?;
        if actual != sum {
            return Err(bad(format!(
                "{f} does not match the checksum written with it ({sum}, now {actual}): the file is corrupt or was modified; move this checkpoint away to resume from an older one"
            )));
        }
    }
    Ok(())
}

/// `None` when every entry below `dir` is a regular file on its [`OWNED_FILE`] list (or a
/// directory holding such files); otherwise why not.
fn unowned(dir: &Path) -> Result<Option<String>> {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(Some("it is not a directory".into()));
    }
    let list = dir.join(OWNED_FILE);
    if !fs::symlink_metadata(&list).is_ok_and(|m| m.is_file()) {
        let files = files_below(dir)?;
        return Ok((!files.is_empty()).then(|| {
            format!(
                "it has no {OWNED_FILE} list of the files bllm wrote, and holds {}",
                files.len()
            )
        }));
    }
    let Some(listed) = owned_list(dir)? else {
        return Ok(Some(format!("its {OWNED_FILE} cannot be read")));
    };
    let owned: std::collections::BTreeSet<&str> = listed.iter().map(|(_, p)| p.as_str()).collect();
    let mut foreign: Vec<String> = Vec::new();
    for f in files_below(dir)? {
        if f == OWNED_FILE {
            continue;
        }
        let regular = fs::symlink_metadata(dir.join(&f)).is_ok_and(|m| m.is_file());
        if !regular || !owned.contains(f.as_str()) {
            foreign.push(f);
        }
    }
    Ok((!foreign.is_empty()).then(|| {
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        format!(
            "it holds files bllm did not write: {}{}",
            shown.join(", "),
            if foreign.len() > 5 { ", …" } else { "" }
        )
    }))
}

/// Steps of the complete `checkpoint-<step>` directories in `dir`.
fn checkpoints(dir: &Path) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e.map_err(|e| TrainError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse().ok())
        {
            // Complete: renamed into place after its file list was written (or, written
            // before lists existed, it has its trainer state). A listed checkpoint that fails
            // verification is corrupt, an error on resume, never silently skipped.
            let p = e.path();
            if p.join(OWNED_FILE).is_file() || p.join("trainer.json").is_file() {
                out.push(step);
            }
        }
    }
    Ok(out)
}

/// The newest complete checkpoint in a run directory, if any.
pub fn newest_checkpoint(dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    Ok(checkpoints(dir)?
        .into_iter()
        .max()
        .map(|s| (s, dir.join(format!("checkpoint-{s}")))))
}

/// UTC time as `YYYYmmdd-HHMMSS`, for run directory names.
pub fn timestamp_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_atomic_pruned_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        for s in [10, 20, 30] {
            run.write_checkpoint(&format!("checkpoint-{s}"), |p| {
                fs::write(p.join("trainer.json"), "{}").map_err(|e| TrainError::io(p, e))
            })
            .unwrap();
        }
        // A failed write leaves nothing behind.
        let e = run.write_checkpoint("checkpoint-40", |_| {
            Err(TrainError::Unsupported("boom".into()))
        });
        assert!(e.is_err() && !dir.path().join("checkpoint-40").exists());
        // An incomplete directory (no trainer.json) is not a checkpoint.
        fs::create_dir_all(dir.path().join("checkpoint-50")).unwrap();
        assert_eq!(newest_checkpoint(dir.path()).unwrap().unwrap().0, 30);
        run.prune(2).unwrap();
        assert!(
            !dir.path().join("checkpoint-10").exists() && dir.path().join("checkpoint-20").exists()
        );
    }

    #[test]
    fn only_bllm_temp_names_are_temp_names() {
        for t in [
            ".checkpoint-20.tmp-4242",
            ".final.tmp-1",
            ".summary.json.tmp-77-3",
        ] {
            assert!(is_temp_name(t), "{t}");
        }
        for n in [
            "checkpoint-20",
            "x.tmp-1",
            ".notes.tmp-",
            ".a.tmp-1-2-3",
            ".a.tmp-12x",
            ".bllm-files",
        ] {
            assert!(!is_temp_name(n), "{n}");
        }
    }

    #[test]
    fn directories_with_foreign_files_are_moved_aside_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let write = |name: &str| {
            run.write_checkpoint(name, |p| {
                fs::create_dir_all(p.join("export")).map_err(|e| TrainError::io(p, e))?;
                fs::write(p.join("export/bits"), "b").map_err(|e| TrainError::io(p, e))?;
                fs::write(p.join("trainer.json"), "{}").map_err(|e| TrainError::io(p, e))
            })
            .unwrap()
        };
        let first = write("checkpoint-1");
        assert_eq!(
            fs::read_to_string(first.join(OWNED_FILE)).unwrap(),
            format!(
                "{}  export/bits\n{}  trainer.json\n",
                file_checksum(&first.join("export/bits")).unwrap(),
                file_checksum(&first.join("trainer.json")).unwrap()
            )
        );
        verify_checkpoint(&first).unwrap();
        fs::write(first.join("trainer.json"), "{ }").unwrap();
        let e = verify_checkpoint(&first).unwrap_err().to_string();
        assert!(
            e.contains("trainer.json does not match the checksum"),
            "{e}"
        );
        fs::write(first.join("trainer.json"), "{}").unwrap();
        write("checkpoint-2");
        fs::write(first.join("export/mine.txt"), "user").unwrap();
        run.prune(1).unwrap();
        // checkpoint-1 held a file bllm did not write: kept under another name, whole.
        assert_eq!(
            fs::read_to_string(dir.path().join("checkpoint-1.kept-1/export/mine.txt")).unwrap(),
            "user"
        );
        assert!(!first.exists());
        // Replacing an owned directory deletes it; an unowned one is moved aside.
        write("final");
        write("final");
        assert!(!dir.path().join("final.kept-1").exists());
        fs::write(dir.path().join("final/extra"), "x").unwrap();
        write("final");
        assert!(dir.path().join("final.kept-1/extra").is_file());
        assert!(!dir.path().join("final/extra").exists());
        // A file where the directory goes is moved aside too.
        fs::write(dir.path().join("checkpoint-7"), "a file").unwrap();
        write("checkpoint-7");
        assert!(dir.path().join("checkpoint-7.kept-1").is_file());
        assert!(dir.path().join("checkpoint-7").is_dir());
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        fs::create_dir_all(dir.path().join(".checkpoint-9.tmp-1/x")).unwrap();
        fs::create_dir_all(dir.path().join("export/codes")).unwrap();
        fs::write(dir.path().join("export/codes/.manifest.json.tmp-5-0"), "").unwrap();
        fs::write(dir.path().join("export/codes/keep.txt"), "").unwrap();
        run.remove_stale_temps(dir.path()).unwrap();
        assert!(!dir.path().join(".checkpoint-9.tmp-1").exists());
        assert!(
            !dir.path()
                .join("export/codes/.manifest.json.tmp-5-0")
                .exists()
        );
        assert!(dir.path().join("export/codes/keep.txt").exists());
    }

    #[test]
    fn timestamps_look_right() {
        let t = timestamp_utc();
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("20"), "{t}");
    }
}
