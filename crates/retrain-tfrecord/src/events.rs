//! TensorBoard event files for the training stage.
//!
//! A file is named `events.out.tfevents.<10-digit Unix seconds>.<hostname>` and holds TFRecords of
//! `tensorflow.Event`: first `{wall_time, file_version: "brain.Event:2"}`, then one event per step
//! with scalar summaries `{wall_time, step, summary {value {tag, simple_value}}}`. TensorBoard reads
//! any file with `tfevents` in its name.
//!
//! Event files hold wall times by nature, so unlike every other output of the pipeline they differ
//! from run to run. Tests inject a [`Clock`] and a host name to get fixed bytes.
//!
//! Flushing suits a training loop: events are buffered and reach the file when
//! [`EventWriterOptions::max_queue`] events are pending, when [`EventWriterOptions::flush_every`]
//! has passed since the last flush (checked as events arrive), on [`EventWriter::flush`], and on
//! [`EventWriter::close`] or drop. The first record is flushed at once, so a new file is valid from
//! the start. Event files are appended while TensorBoard may read them, so they are not written
//! through a temporary name; a reader may see the last record cut short, which TensorBoard treats as
//! "not yet written".

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;

use crate::Error;
use crate::proto::{Event, Summary, SummaryValue, Value, What};
use crate::record::frame_into;

/// The version string of the first event, as TensorFlow 1.x and 2.x write it.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Where wall times come from.
pub trait Clock: Send {
    /// Seconds since the Unix epoch.
    fn now(&mut self) -> f64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&mut self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock that starts at `start` and advances by `step` seconds at each reading: for tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock {
    pub next: f64,
    pub step: f64,
}

impl Clock for FixedClock {
    fn now(&mut self) -> f64 {
        let now = self.next;
        self.next += self.step;
        now
    }
}

/// How an [`EventWriter`] names and flushes its file.
pub struct EventWriterOptions {
    pub clock: Box<dyn Clock>,
    /// The host name in the file name; `None`: this machine's.
    pub hostname: Option<String>,
    /// Appended to the file name (TensorFlow's `filename_suffix`), e.g. `.eval`.
    pub suffix: String,
    /// Flush when this many events are pending (TensorFlow's `max_queue`, 10).
    pub max_queue: usize,
    /// Flush when an event arrives this long after the last flush (TensorFlow's `flush_secs`, 120).
    pub flush_every: Duration,
}

impl std::fmt::Debug for EventWriterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriterOptions")
            .field("hostname", &self.hostname)
            .field("suffix", &self.suffix)
            .field("max_queue", &self.max_queue)
            .field("flush_every", &self.flush_every)
            .finish_non_exhaustive()
    }
}

impl Default for EventWriterOptions {
    fn default() -> Self {
        Self {
            clock: Box::new(SystemClock),
            hostname: None,
            suffix: String::new(),
            max_queue: 10,
            flush_every: Duration::from_secs(120),
        }
    }
}

/// Appends events to a new event file in a directory.
pub struct EventWriter {
    file: File,
    path: PathBuf,
    clock: Box<dyn Clock>,
    pending: Vec<u8>,
    n_pending: usize,
    max_queue: usize,
    flush_every: Duration,
    last_flush: Instant,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("path", &self.path)
            .field("n_pending", &self.n_pending)
            .finish_non_exhaustive()
    }
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, with the system clock and host name.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        Self::with_options(dir, EventWriterOptions::default())
    }

    /// Creates a new event file in `dir`. If a file of that name exists (two writers in the same
    /// second), `.1`, `.2`, … is appended rather than overwrite it.
    pub fn with_options(dir: &Path, options: EventWriterOptions) -> Result<Self, Error> {
        let EventWriterOptions {
            mut clock,
            hostname,
            suffix,
            max_queue,
            flush_every,
        } = options;
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        let wall_time = clock.now();
        let host = hostname.unwrap_or_else(self::hostname);
        let base = file_name(wall_time, &host, &suffix);
        let mut n = 0;
        let (file, path) = loop {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(source) => return Err(Error::Write { path, source }),
            }
        };
        let mut writer = Self {
            file,
            path,
            clock,
            pending: Vec::new(),
            n_pending: 0,
            max_queue: max_queue.max(1),
            flush_every,
            last_flush: Instant::now(),
        };
        writer.push(&Event {
            wall_time,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        });
        writer.flush()?;
        Ok(writer)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records scalar `value` under `tag` at `step`, stamped with the clock's time.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<(), Error> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Records several scalars at `step` in one event.
    pub fn add_scalars(&mut self, step: i64, values: &[(&str, f32)]) -> Result<(), Error> {
        let wall_time = self.clock.now();
        let summary = Summary {
            value: values
                .iter()
                .map(|&(tag, value)| SummaryValue {
                    tag: tag.to_owned(),
                    value: Some(Value::SimpleValue(value)),
                    node_name: String::new(),
                })
                .collect(),
        };
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(What::Summary(summary)),
        })
    }

    /// Queues any event; flushes as the options say.
    pub fn write_event(&mut self, event: &Event) -> Result<(), Error> {
        self.push(event);
        if self.n_pending >= self.max_queue || self.last_flush.elapsed() >= self.flush_every {
            self.flush()?;
        }
        Ok(())
    }

    fn push(&mut self, event: &Event) {
        frame_into(&event.encode_to_vec(), &mut self.pending);
        self.n_pending += 1;
    }

    /// Writes the pending events to the file.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(|source| Error::Write {
                    path: self.path.clone(),
                    source,
                })?;
            self.pending.clear();
            self.n_pending = 0;
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Flushes and syncs the file.
    pub fn close(mut self) -> Result<(), Error> {
        self.flush()?;
        self.file.sync_all().map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("{e}");
        }
    }
}

/// `events.out.tfevents.<10-digit seconds>.<host><suffix>`.
pub fn file_name(wall_time: f64, hostname: &str, suffix: &str) -> String {
    format!(
        "events.out.tfevents.{:010}.{hostname}{suffix}",
        wall_time.max(0.0) as u64
    )
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `/etc/hostname`, `$HOSTNAME`), or
/// `localhost`; characters other than letters, digits, `-`, `_` and `.` become `_`.
pub fn hostname() -> String {
    let found = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    found
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_have_ten_digit_seconds() {
        assert_eq!(
            file_name(1_700_000_000.75, "host", ""),
            "events.out.tfevents.1700000000.host"
        );
        assert_eq!(
            file_name(5.0, "h", ".eval"),
            "events.out.tfevents.0000000005.h.eval"
        );
    }

    #[test]
    fn the_host_name_is_file_name_safe() {
        let host = hostname();
        assert!(!host.is_empty() && !host.contains('/'));
    }
}
