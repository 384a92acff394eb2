//! Run directories and atomic checkpoint directories.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Result, TrainError};

/// A run directory and its append-only logs.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates (or opens) the run directory.
    pub fn create(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Opens the run directory of a new run (`resume = false`: refused when it already holds a
    /// run, so runs never overwrite runs) or of a run to resume.
    pub fn open(path: &Path, resume: bool) -> Result<Self> {
        Self::refuse_existing(path, resume)?;
        Self::create(path)
    }

    /// The check of [`RunDir::open`] alone, for trainers that validate their inputs before
    /// creating anything: a new run (`resume = false`) may not go into a directory that
    /// already holds metrics or checkpoints.
    pub fn refuse_existing(path: &Path, resume: bool) -> Result<()> {
        if !resume && (path.join("metrics.jsonl").exists() || newest_checkpoint(path)?.is_some()) {
            return Err(TrainError::Checkpoint {
                path: path.to_owned(),
                message: "this run directory already holds a run; pass --resume to continue it, or choose another --run-dir".into(),
            });
        }
        Ok(())
    }

    /// Starts a new run: saves the resolved recipe and clears the logs.
    pub fn start(&self, resolved_recipe: &str) -> Result<()> {
        self.write_file("recipe.resolved.toml", resolved_recipe.as_bytes())?;
        for f in ["metrics.jsonl", "events.jsonl"] {
            let _ = fs::remove_file(self.path.join(f));
        }
        Ok(())
    }

    /// The newest complete checkpoint to resume from: `(step, directory)`.
    pub fn resume_point(&self) -> Result<(usize, PathBuf)> {
        newest_checkpoint(&self.path)?.ok_or_else(|| TrainError::Checkpoint {
            path: self.path.clone(),
            message: "--resume: no complete checkpoint-<step>/ in this run directory".into(),
        })
    }

    /// Reads the trainer state `S` of checkpoint `dir` (taken at `step`), checks that its step
    /// (`step_of`) agrees, cuts the logs back to `step` and records the resume.
    pub fn resume_state<S: serde::de::DeserializeOwned>(
        &self,
        dir: &Path,
        step: usize,
        step_of: impl Fn(&S) -> usize,
    ) -> Result<S> {
        let p = dir.join("trainer.json");
        let text = fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
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
        self.truncate_log("metrics.jsonl", step)?;
        self.truncate_log("events.jsonl", step)?;
        let e = crate::MonitorEvent {
            step,
            event: "resume".into(),
            message: Some(format!("resumed from {}", dir.display())),
            ..Default::default()
        };
        self.append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())?;
        Ok(state)
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
    /// logs continue exactly where the checkpoint was taken).
    pub fn truncate_log(&self, name: &str, step: usize) -> Result<()> {
        let p = self.path.join(name);
        let Ok(text) = fs::read_to_string(&p) else {
            return Ok(());
        };
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

    /// Writes a checkpoint atomically: `fill` writes into a temporary directory, which is then
    /// renamed to `name` (replacing an older one of the same name). Returns the final path.
    pub fn write_checkpoint(
        &self,
        name: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let tmp = self
            .path
            .join(format!(".{name}.tmp-{}", std::process::id()));
        let dst = self.path.join(name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        if let Err(e) = fill(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dst.exists() {
            fs::remove_dir_all(&dst).map_err(|e| TrainError::io(&dst, e))?;
        }
        fs::rename(&tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
        Ok(dst)
    }

    /// Records a periodic (or early-stop) checkpoint written at `path` for `step` in
    /// `events.jsonl`, then keeps only the newest `keep` checkpoints.
    pub fn checkpointed(&self, step: usize, path: &Path, note: &str, keep: usize) -> Result<()> {
        let e = crate::MonitorEvent {
            step,
            event: "checkpoint".into(),
            message: Some(format!("{}{note}", path.display())),
            ..Default::default()
        };
        self.append("events.jsonl", &serde_json::to_value(e).unwrap_or_default())?;
        self.prune(keep)
    }

    /// Deletes all but the newest `keep` `checkpoint-<step>` directories, and stale temporary
    /// directories left by an interrupted write.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let mut steps = checkpoints(&self.path)?;
        steps.sort_unstable();
        let n = steps.len();
        for s in steps.into_iter().take(n.saturating_sub(keep)) {
            let p = self.path.join(format!("checkpoint-{s}"));
            fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        }
        Ok(())
    }
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
            if e.path().join("trainer.json").is_file() {
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
    fn timestamps_look_right() {
        let t = timestamp_utc();
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("20"), "{t}");
    }
}
