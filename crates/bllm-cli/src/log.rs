//! Logs: `tracing` events of every crate, filtered by `BLLM_LOG` (else `RUST_LOG`, else
//! [`DEFAULT_FILTER`]) in `tracing-subscriber`'s `EnvFilter` syntax, printed on stderr as
//! human-readable lines or, with `--log-format json`, one JSON object per line.
//!
//! A progress bar and the log lines share the terminal: while a bar is shown
//! ([`show_bar`]), each line is printed through `ProgressBar::suspend`, so it appears above
//! the bar instead of being overwritten by it.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The filter when neither `BLLM_LOG` nor `RUST_LOG` is set: bllm's own events at `info`,
/// everything else (Burn, CubeCL, wgpu) at `warn`.
pub const DEFAULT_FILTER: &str = "warn,bllm_train=info,bllm_cli=info";

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `LEVEL span{fields}: message fields` lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `span`).
    Json,
}

/// The bar currently shown, if any.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Shows log lines above `bar` until [`hide_bar`].
pub fn show_bar(bar: &indicatif::ProgressBar) {
    if let Ok(mut b) = BAR.lock() {
        *b = Some(bar.clone());
    }
}

/// Log lines go straight to stderr again.
pub fn hide_bar() {
    if let Ok(mut b) = BAR.lock() {
        *b = None;
    }
}

/// One log line, written to stderr (above the bar, when one is shown) when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(bar) if !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

/// Makes a [`Line`] per event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// The filter from `BLLM_LOG`, else `RUST_LOG`, else [`DEFAULT_FILTER`]; a malformed value is
/// an error naming the variable.
pub fn filter() -> anyhow::Result<EnvFilter> {
    for var in ["BLLM_LOG", "RUST_LOG"] {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => {
                return EnvFilter::builder().parse(&v).map_err(|e| {
                    anyhow::anyhow!(
                        "{var}={v:?}: not a log filter ({e}); expected e.g. `info`, `warn,bllm_train=debug`"
                    )
                });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{var}: not valid UTF-8; expected a log filter such as `info`")
            }
            _ => {}
        }
    }
    Ok(EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber once per process (later calls keep the first; the
/// end-to-end tests run many commands in one process).
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let filter = filter()?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Another subscriber installed first (a test harness, an embedding program): keep it.
    let _ = installed;
    let _ = DONE.set(());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_name_the_variable() {
        assert!(EnvFilter::builder().parse(DEFAULT_FILTER).is_ok());
        let e = EnvFilter::builder().parse("bllm_train=notalevel");
        assert!(e.is_err());
    }
}
