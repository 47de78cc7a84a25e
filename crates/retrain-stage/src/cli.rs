//! What the stage binaries share: logging to stderr, a progress bar on a terminal, and how a
//! failure ends the process.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::Reporter;

/// Installs a `tracing` subscriber on stderr. `RUST_LOG` wins over `verbose` (`-v` info→debug,
/// `-vv` trace); the default shows warnings and info.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Ends a binary: success, or the error and its causes printed once on stderr
/// (`error: generating …: writing …: No space left on device`) and a failure exit code.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A [`Reporter`] drawing an `indicatif` bar on stderr when it is a terminal; hidden otherwise or
/// when `quiet`.
#[derive(Debug)]
pub struct ProgressBar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    enabled: bool,
    bytes: bool,
}

impl ProgressBar {
    /// `bytes`: the units are bytes (shown with a rate and sizes).
    pub fn new(quiet: bool, bytes: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            enabled: !quiet && std::io::stderr().is_terminal(),
            bytes,
        }
    }
}

impl Reporter for ProgressBar {
    fn start(&self, total: u64, what: &str) {
        if !self.enabled {
            return;
        }
        let template = if self.bytes {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}"
        };
        let bar = indicatif::ProgressBar::new(total).with_message(what.to_owned());
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.inc(n);
        }
    }

    fn println(&self, line: &str) {
        match &*self.bar.lock().expect("progress lock") {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
