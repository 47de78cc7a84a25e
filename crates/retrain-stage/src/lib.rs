//! What every retrain stage shares: the `manifest.json` a stage writes last, content digests of files
//! and directories, writes that never leave a half-written file where a reader looks, and the
//! [`Reporter`] through which long work shows progress. With the `cli` feature, [`cli`] holds what
//! the stage binaries share: logging setup and a terminal progress bar.
//!
//! A stage records its effective parameters (command-line flag name → value), the digests of its
//! inputs (by flag name) and the digests of its outputs (by path relative to the output directory).
//! The pipeline runner skips a stage when [`freshness`] says its manifest still matches.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[cfg(feature = "cli")]
pub mod cli;

/// Progress of long work. Libraries call it; binaries draw a bar; tests pass [`NoProgress`].
pub trait Reporter: Send + Sync {
    /// Work of `total` units begins (bytes, images, records: the stage says which).
    fn start(&self, total: u64, what: &str);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The work is complete.
    fn finish(&self);
    /// A line for the person watching (a training log line), shown above the bar. Libraries
    /// emit such lines through the reporter so that binaries can interleave them with the bar;
    /// the default drops them.
    fn println(&self, line: &str) {
        let _ = line;
    }
}

/// A [`Reporter`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Reporter for NoProgress {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

/// The file name every stage writes last in its output directory.
pub const FILE_NAME: &str = "manifest.json";

/// Errors from reading, writing or digesting stage artifacts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a valid manifest", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: neither a regular file nor a directory", path.display())]
    FileType { path: PathBuf },
    #[error("{}: path is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
}

/// Size and SHA-256 of a file, or of a directory's listing (see [`digest_path`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub sha256: String,
    pub bytes: u64,
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256 {} ({} bytes)", self.sha256, self.bytes)
    }
}

/// The record a stage writes last: what ran, with what, on what, producing what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Stage name, as in `retrain-<stage>`.
    pub stage: String,
    /// Version of the crate that wrote the manifest.
    pub version: String,
    /// Effective parameters: command-line flag name (without `--`) → value.
    pub params: BTreeMap<String, String>,
    /// Input digests by the flag that named the input.
    pub inputs: BTreeMap<String, Digest>,
    /// Output digests by path relative to the output directory, `/`-separated.
    pub outputs: BTreeMap<String, Digest>,
}

impl Manifest {
    pub fn new(stage: &str, version: &str) -> Self {
        Self {
            stage: stage.to_owned(),
            version: version.to_owned(),
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// Records one effective parameter.
    pub fn param(&mut self, flag: &str, value: impl fmt::Display) -> &mut Self {
        self.params.insert(flag.to_owned(), value.to_string());
        self
    }

    /// Digests `path` (a file or a directory) and records it as the input named by `flag`.
    pub fn input(&mut self, flag: &str, path: &Path) -> Result<&mut Self, Error> {
        self.inputs.insert(flag.to_owned(), digest_path(path)?);
        Ok(self)
    }

    /// Digests `out_dir/relative` and records it as an output.
    pub fn output(&mut self, out_dir: &Path, relative: &str) -> Result<&mut Self, Error> {
        self.outputs
            .insert(relative.to_owned(), digest_path(&out_dir.join(relative))?);
        Ok(self)
    }

    /// Records an output whose digest the stage computed while writing it.
    pub fn output_digest(&mut self, relative: &str, digest: Digest) -> &mut Self {
        self.outputs.insert(relative.to_owned(), digest);
        self
    }

    /// Reads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Parse { path, source })
    }

    /// Removes `dir/manifest.json` if present. A stage calls this before it touches its outputs, so
    /// that no manifest ever vouches for outputs that a later, unfinished run has replaced.
    pub fn remove(dir: &Path) -> Result<(), Error> {
        let path = dir.join(FILE_NAME);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write { path, source }),
        }
    }

    /// Writes `dir/manifest.json` atomically. Call it after every output is in place.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join(FILE_NAME);
        let mut text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        text.push('\n');
        write_atomic(&path, text.as_bytes()).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// Whether a stage's previous run can stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    UpToDate,
    /// The stage must run; the reason says why, for the log.
    Stale(String),
}

/// Compares the manifest in `out_dir` with the parameters and inputs a run would use now, and checks
/// that every recorded output is still there with its recorded digest. Every parameter in `params`
/// must be recorded with the same value; the manifest may record more (values the stage derived
/// from them, such as the digests a `--dataset` name stands for).
pub fn freshness(
    out_dir: &Path,
    stage: &str,
    params: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, PathBuf>,
) -> Result<Freshness, Error> {
    let Some(manifest) = Manifest::read(out_dir)? else {
        return Ok(Freshness::Stale("no manifest yet".into()));
    };
    if manifest.stage != stage {
        return Ok(Freshness::Stale(format!(
            "manifest is from stage {:?}",
            manifest.stage
        )));
    }
    for (flag, value) in params {
        match manifest.params.get(flag) {
            Some(recorded) if same_value(recorded, value) => {}
            Some(recorded) => {
                return Ok(Freshness::Stale(format!(
                    "parameter --{flag} changed ({recorded} → {value})"
                )));
            }
            None => {
                return Ok(Freshness::Stale(format!(
                    "parameter --{flag} is not in the manifest"
                )));
            }
        }
    }
    if manifest.inputs.len() != inputs.len()
        || manifest.inputs.keys().any(|k| !inputs.contains_key(k))
    {
        return Ok(Freshness::Stale("the set of inputs changed".into()));
    }
    for (flag, path) in inputs {
        if !path.exists() {
            return Ok(Freshness::Stale(format!(
                "input --{flag} {} is missing",
                path.display()
            )));
        }
        if digest_path(path)? != manifest.inputs[flag] {
            return Ok(Freshness::Stale(format!(
                "input --{flag} {} changed",
                path.display()
            )));
        }
    }
    for (relative, recorded) in &manifest.outputs {
        let path = out_dir.join(relative);
        if !path.exists() {
            return Ok(Freshness::Stale(format!("output {relative} is missing")));
        }
        if digest_path(&path)? != *recorded {
            return Ok(Freshness::Stale(format!("output {relative} was modified")));
        }
    }
    Ok(Freshness::UpToDate)
}

/// Whether a recorded parameter equals the one asked for: the same text, or the same number
/// (`1e-2` and `0.01`, `10` and `10.0`), since stages record numbers as they parsed them.
fn same_value(recorded: &str, asked: &str) -> bool {
    recorded == asked
        || matches!(
            (recorded.parse::<f64>(), asked.parse::<f64>()),
            (Ok(a), Ok(b)) if a == b
        )
}

/// SHA-256 and size of a file.
pub fn digest_file(path: &Path) -> Result<Digest, Error> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Digest {
        sha256: hex::encode(hasher.finalize()),
        bytes,
    })
}

/// Digest of a file, or of a directory tree: the SHA-256 of its listing, one line
/// `<relative path>\0<file sha256>\n` per regular file in byte order of the path, and the total size.
/// Hidden entries (temporary files start with `.`) and `manifest.json` are left out; symlinks and
/// other special files are an error.
pub fn digest_path(path: &Path) -> Result<Digest, Error> {
    let meta = fs::symlink_metadata(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_file() {
        return digest_file(path);
    }
    if !meta.is_dir() {
        return Err(Error::FileType {
            path: path.to_owned(),
        });
    }
    let mut files = Vec::new();
    list_files(path, "", &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    let mut bytes = 0;
    for relative in files {
        let digest = digest_file(&path.join(&relative))?;
        hasher.update(relative.as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.sha256.as_bytes());
        hasher.update(b"\n");
        bytes += digest.bytes;
    }
    Ok(Digest {
        sha256: hex::encode(hasher.finalize()),
        bytes,
    })
}

fn list_files(root: &Path, prefix: &str, files: &mut Vec<String>) -> Result<(), Error> {
    let dir = root.join(prefix);
    let read_err = |source| Error::Read {
        path: dir.clone(),
        source,
    };
    for entry in fs::read_dir(&dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::NotUtf8 { path: entry.path() });
        };
        if name.starts_with('.') || (prefix.is_empty() && name == FILE_NAME) {
            continue;
        }
        let relative = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type().map_err(read_err)?;
        if file_type.is_dir() {
            list_files(root, &relative, files)?;
        } else if file_type.is_file() {
            files.push(relative);
        } else {
            return Err(Error::FileType { path: entry.path() });
        }
    }
    Ok(())
}

/// The temporary name a file is written under before it is renamed to `path`: hidden, in the same
/// directory (so the rename is atomic), and never matching a reader's glob such as `train-*`.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Writes `bytes` to `path` through a temporary file, synced and renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// `2026-11-29 10:45:12.123456`, UTC (the recipe prints `datetime.now()`).
pub fn now_utc() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A buffered file that appears at its final path only on [`AtomicFile::commit`]; dropped
/// uncommitted, it removes its temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    partial: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let partial = partial_path(dest);
        let file = File::create(&partial)?;
        Ok(Self {
            partial,
            dest: dest.to_owned(),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("committed once");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.partial, &self.dest)?;
        if let Some(dir) = self.dest.parent() {
            // Make the rename durable where the platform allows opening a directory.
            if let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn partial_names_are_hidden_siblings() {
        assert_eq!(
            partial_path(Path::new("out/train-00000-of-00002")),
            Path::new("out/.train-00000-of-00002.partial")
        );
    }
}
