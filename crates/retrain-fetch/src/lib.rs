//! Resumable, checksummed HTTP(S) download of one file: the first stage of the pipeline.
//!
//! [`run`] streams the body at [`Config::url`] to `FILE.part` beside [`Config::out`], hashing it
//! (SHA-256, and MD5 when asked) as the bytes arrive, so the file is never held in memory. A
//! dropped or failed transfer (a connection error, a body that breaks off, a read timeout, HTTP
//! 5xx, 408 or 429) is retried with exponential backoff and resumed with `Range: bytes=<len>-`
//! and `If-Range` carrying the server's strong `ETag` (or `Last-Modified`). The validator, the URL
//! and the total size live in a sidecar, `FILE.part.json`, so a later run resumes what a killed
//! one left. A `200` answer to a range request, or a `206` that does not start where the part
//! ends, starts again from byte 0: bytes are never spliced from two versions of a file.
//!
//! The size and the digests are checked against [`Expected`] before `FILE.part` is synced and
//! renamed to `FILE`: `FILE` never exists unless verified. A `FILE` already present with the
//! right digests is not downloaded again; one with the wrong digests is reported and replaced.
//! Last, `manifest.json` goes beside `FILE`.
//!
//! [`known_dataset`] and [`known_weights`] hold the URL, size and digests of the files the
//! pipeline needs.

mod download;
mod part;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use retrain_stage::{Digest, Manifest, Reporter};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::part::Hashes;

/// The stage's name, as in its manifest.
pub const STAGE: &str = "fetch";
/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("retrain-fetch/", env!("CARGO_PKG_VERSION"));
/// The longest wait between two attempts, however many failed.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The SHA-256 a download must have: all of it, or (for files published under a hash prefix,
/// such as torchvision's `inception_v3_google-0cc3c7bd.pth`) its first hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sha256Pin {
    /// 64 hex digits.
    Full(String),
    /// 1 to 64 hex digits the digest must start with.
    Prefix(String),
}

impl Sha256Pin {
    /// The hex digits as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Full(hex) | Self::Prefix(hex) => hex,
        }
    }

    /// Whether a SHA-256 in hex satisfies the pin (case-insensitively).
    pub fn matches(&self, actual: &str) -> bool {
        match self {
            Self::Full(hex) => actual.eq_ignore_ascii_case(hex),
            Self::Prefix(hex) => actual
                .get(..hex.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(hex)),
        }
    }

    /// How an error message shows the pin: a prefix ends with `…`.
    fn shown(&self) -> String {
        match self {
            Self::Full(hex) => hex.to_ascii_lowercase(),
            Self::Prefix(hex) => format!("{}…", hex.to_ascii_lowercase()),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let (hex, ok) = match self {
            Self::Full(hex) => (hex, hex.len() == 64),
            Self::Prefix(hex) => (hex, (1..=64).contains(&hex.len())),
        };
        if ok && is_hex(hex) {
            return Ok(());
        }
        Err(Error::InvalidOption {
            option: "sha256",
            value: hex.clone(),
            reason: match self {
                Self::Full(_) => "expected 64 hex digits",
                Self::Prefix(_) => "expected 1 to 64 hex digits",
            },
        })
    }
}

/// What the downloaded file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub sha256: Sha256Pin,
    /// 32 hex digits, checked too when given.
    pub md5: Option<String>,
    /// The size in bytes, checked against the server's `Content-Length`/`Content-Range` and the
    /// finished file when given.
    pub size: Option<u64>,
}

impl Expected {
    /// A full SHA-256 pin, nothing else.
    pub fn sha256(hex: impl Into<String>) -> Self {
        Self {
            sha256: Sha256Pin::Full(hex.into()),
            md5: None,
            size: None,
        }
    }
}

/// What to download, where to, and how hard to try.
#[derive(Debug, Clone)]
pub struct Config {
    /// An `http` or `https` URL; redirects are followed.
    pub url: String,
    /// The destination file. `FILE.part` and `FILE.part.json` are written beside it while the
    /// download runs, `manifest.json` when it is done.
    pub out: PathBuf,
    pub expected: Expected,
    /// Retries of failed attempts, counted since the last attempt that brought new bytes: once
    /// `retries` retries in a row got no further, the next failure is final. 0 never retries.
    pub retries: u32,
    /// The wait after the first failure; it doubles with each further failure in a row, up to
    /// [`MAX_RETRY_DELAY`].
    pub retry_delay: Duration,
    /// How long one read (response head or body) may wait for data. There is no total timeout.
    pub read_timeout: Duration,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// Redirects followed per request.
    pub max_redirects: usize,
    /// The table entry the expectations came from, if any; the manifest records it beside the
    /// values used (`dataset` or `weights` → its name), as the pipeline runner passes it.
    pub preset: Option<Preset>,
}

/// A [`Known`] file named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `--dataset NAME`.
    Dataset(&'static str),
    /// `--weights NAME`.
    Weights(&'static str),
}

impl Config {
    /// A download with the default retry policy and timeouts.
    pub fn new(url: impl Into<String>, out: impl Into<PathBuf>, expected: Expected) -> Self {
        Self {
            url: url.into(),
            out: out.into(),
            expected,
            retries: 5,
            retry_delay: Duration::from_millis(500),
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_redirects: 10,
            preset: None,
        }
    }

    /// The downloaded file's name, which the manifest records.
    fn file_name(&self) -> Result<&str, Error> {
        let name = self.out.file_name().and_then(|name| name.to_str());
        match name {
            Some(name) if name != retrain_stage::FILE_NAME => Ok(name),
            _ => Err(Error::InvalidOption {
                option: "out",
                value: self.out.display().to_string(),
                reason: "expected a file path whose name is valid UTF-8 and not manifest.json",
            }),
        }
    }

    /// The directory holding `out`, its part file and the manifest.
    fn dir(&self) -> &Path {
        match self.out.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |option, value: String, reason| Error::InvalidOption {
            option,
            value,
            reason,
        };
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => return Err(invalid("url", self.url.clone(), "expected an http(s) URL")),
            Err(_) => return Err(invalid("url", self.url.clone(), "not a valid URL")),
        }
        self.expected.sha256.validate()?;
        if let Some(md5) = &self.expected.md5
            && !(md5.len() == 32 && is_hex(md5))
        {
            return Err(invalid("md5", md5.clone(), "expected 32 hex digits"));
        }
        if self.read_timeout.is_zero() {
            return Err(invalid("read-timeout-secs", "0".into(), "must be positive"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid(
                "connect-timeout-secs",
                "0".into(),
                "must be positive",
            ));
        }
        self.file_name()?;
        Ok(())
    }
}

/// A file the pipeline knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The name `--dataset`/`--weights` takes.
    pub name: &'static str,
    pub url: &'static str,
    /// The file's name at its origin.
    pub file_name: &'static str,
    pub size: u64,
    /// The SHA-256 in hex, all of it or (when `sha256_is_prefix`) its first digits.
    pub sha256: &'static str,
    pub sha256_is_prefix: bool,
    pub md5: Option<&'static str>,
}

impl Known {
    /// The file's size and digests as an [`Expected`].
    pub fn expected(&self) -> Expected {
        let hex = self.sha256.to_owned();
        Expected {
            sha256: if self.sha256_is_prefix {
                Sha256Pin::Prefix(hex)
            } else {
                Sha256Pin::Full(hex)
            },
            md5: self.md5.map(str::to_owned),
            size: Some(self.size),
        }
    }
}

/// The CIFAR archives (REFERENCE.md; the host redirects, so redirects are followed).
pub const DATASETS: [Known; 2] = [
    Known {
        name: "cifar10",
        url: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        file_name: "cifar-10-python.tar.gz",
        size: 170_498_071,
        sha256: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        sha256_is_prefix: false,
        md5: Some("c58f30108f718f92721af3b95e74349a"),
    },
    Known {
        name: "cifar100",
        url: "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        file_name: "cifar-100-python.tar.gz",
        size: 169_001_437,
        sha256: "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        sha256_is_prefix: false,
        md5: Some("eb9058c3a382ffc7106e4002c42a8d85"),
    },
];

/// Pretrained weights. torchvision publishes only the first 8 hex digits of the SHA-256, in the
/// file name.
pub const WEIGHTS: [Known; 1] = [Known {
    name: "inception_v3",
    url: "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    file_name: "inception_v3_google-0cc3c7bd.pth",
    size: 108_949_747,
    sha256: "0cc3c7bd",
    sha256_is_prefix: true,
    md5: None,
}];

/// The dataset archive called `name` (`cifar10`, `cifar100`).
pub fn known_dataset(name: &str) -> Option<Known> {
    DATASETS.iter().find(|known| known.name == name).copied()
}

/// The pretrained weights called `name` (`inception_v3`).
pub fn known_weights(name: &str) -> Option<Known> {
    WEIGHTS.iter().find(|known| known.name == name).copied()
}

/// Everything that can go wrong with a download.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid --{option} {value:?}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{url}: building the HTTP client")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: too many redirects (more than {max})")]
    TooManyRedirects {
        url: String,
        max: usize,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the transfer broke off at byte {offset}")]
    Body {
        url: String,
        offset: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the body ended at byte {got} of {total}")]
    Truncated { url: String, got: u64, total: u64 },
    /// A `206` or `416` that does not fit the part file; the part starts again from byte 0.
    #[error("{url}: {detail}; starting again from byte 0")]
    BadRange { url: String, detail: String },
    /// `attempts` failed in a row: the first of them may have brought new bytes, the retries
    /// after it did not.
    #[error("{url}: giving up after {attempts} failed attempt(s) in a row that got no further")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        #[source]
        source: Box<Error>,
    },
    #[error("{}: {url} has {actual} bytes, expected {expected}", path.display())]
    SizeMismatch {
        path: PathBuf,
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("{}: {algorithm} mismatch: expected {expected}, got {actual}", path.display())]
    DigestMismatch {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("download of {url} cancelled; {} is kept and a rerun resumes it", part.display())]
    Cancelled { url: String, part: PathBuf },
    #[error(transparent)]
    Manifest(#[from] retrain_stage::Error),
}

impl Error {
    /// Whether another attempt may succeed: network trouble and server errors, not answers that
    /// will not change (404, a wrong digest) nor local trouble (a full disk).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Request { .. }
            | Self::Body { .. }
            | Self::Truncated { .. }
            | Self::BadRange { .. } => true,
            Self::HttpStatus { status, .. } => is_transient_status(*status),
            _ => false,
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Statuses worth another attempt.
fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An error and its sources, `: `-separated, for log lines.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

/// The wait before the attempt after `failures` failures in a row: `base`, doubling, at most
/// [`MAX_RETRY_DELAY`].
pub fn retry_delay(base: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_RETRY_DELAY)
}

/// Downloads `cfg.url` to `cfg.out`, verified, and writes `manifest.json` beside it.
///
/// Progress goes to `rep` in bytes. When `cancel` fires, the bytes so far stay in `FILE.part`
/// (with its sidecar) and [`Error::Cancelled`] is returned; a later run resumes them.
#[tracing::instrument(skip_all, fields(url = %cfg.url, file = %cfg.out.display()))]
pub async fn run(
    cfg: &Config,
    rep: &dyn Reporter,
    cancel: CancellationToken,
) -> Result<Manifest, Error> {
    cfg.validate()?;
    let file_name = cfg.file_name()?;
    let dir = cfg.dir();
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(Error::io("creating", dir))?;
    Manifest::remove(dir)?;

    let hashes = match check_existing(cfg, &cancel).await? {
        Some(hashes) => {
            info!(sha256 = %hashes.sha256, bytes = hashes.bytes, "already present and verified");
            part::remove_leftovers(&cfg.out).await?;
            hashes
        }
        None => download::download(cfg, rep, &cancel).await?,
    };

    let mut manifest = Manifest::new(STAGE, env!("CARGO_PKG_VERSION"));
    match cfg.preset {
        Some(Preset::Dataset(name)) => manifest.param("dataset", name),
        Some(Preset::Weights(name)) => manifest.param("weights", name),
        None => &mut manifest,
    };
    manifest
        .param("url", &cfg.url)
        .param("sha256", cfg.expected.sha256.as_str());
    if let Some(md5) = &cfg.expected.md5 {
        manifest.param("md5", md5);
    }
    if let Some(size) = cfg.expected.size {
        manifest.param("size", size);
    }
    manifest.output_digest(
        file_name,
        Digest {
            sha256: hashes.sha256,
            bytes: hashes.bytes,
        },
    );
    manifest.write(dir)?;
    Ok(manifest)
}

/// The digests of `cfg.out` when it is already there and verified. One that fails verification
/// is reported and removed.
async fn check_existing(cfg: &Config, cancel: &CancellationToken) -> Result<Option<Hashes>, Error> {
    let meta = match tokio::fs::metadata(&cfg.out).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                action: "inspecting",
                path: cfg.out.clone(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(Error::Io {
            action: "replacing",
            path: cfg.out.clone(),
            source: io::Error::other("not a regular file"),
        });
    }
    if let Some(size) = cfg.expected.size
        && meta.len() != size
    {
        warn!(
            bytes = meta.len(),
            expected = size,
            "the file present has the wrong size; downloading it again"
        );
        tokio::fs::remove_file(&cfg.out)
            .await
            .map_err(Error::io("removing", &cfg.out))?;
        return Ok(None);
    }
    let hashes = part::hash_file(&cfg.out, cfg.expected.md5.is_some(), cancel)
        .await?
        .ok_or_else(|| Error::Cancelled {
            url: cfg.url.clone(),
            part: part::part_path(&cfg.out),
        })?;
    match verify(cfg, &hashes) {
        Ok(()) => Ok(Some(hashes)),
        Err(problem) => {
            warn!(
                problem = %problem,
                sha256 = %hashes.sha256,
                bytes = hashes.bytes,
                "the file present fails verification; downloading it again"
            );
            tokio::fs::remove_file(&cfg.out)
                .await
                .map_err(Error::io("removing", &cfg.out))?;
            Ok(None)
        }
    }
}

/// Checks size and digests of a complete file against `cfg.expected`.
fn verify(cfg: &Config, hashes: &Hashes) -> Result<(), Error> {
    if let Some(size) = cfg.expected.size
        && hashes.bytes != size
    {
        return Err(Error::SizeMismatch {
            path: cfg.out.clone(),
            url: cfg.url.clone(),
            expected: size,
            actual: hashes.bytes,
        });
    }
    if !cfg.expected.sha256.matches(&hashes.sha256) {
        return Err(Error::DigestMismatch {
            path: cfg.out.clone(),
            algorithm: "sha256",
            expected: cfg.expected.sha256.shown(),
            actual: hashes.sha256.clone(),
        });
    }
    if let (Some(expected), Some(actual)) = (&cfg.expected.md5, &hashes.md5)
        && !actual.eq_ignore_ascii_case(expected)
    {
        return Err(Error::DigestMismatch {
            path: cfg.out.clone(),
            algorithm: "md5",
            expected: expected.to_ascii_lowercase(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_pins_match_the_start_only() {
        let pin = Sha256Pin::Prefix("0CC3c7bd".into());
        assert!(pin.matches("0cc3c7bdabcdef"));
        assert!(!pin.matches("0cc3c7be"));
        assert!(!pin.matches("0cc3"));
        assert!(Sha256Pin::Full("ab".into()).validate().is_err());
        assert!(Sha256Pin::Prefix("xyz".into()).validate().is_err());
        assert!(Sha256Pin::Prefix(String::new()).validate().is_err());
        assert!(Sha256Pin::Full("a".repeat(64)).validate().is_ok());
    }

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        assert_eq!(retry_delay(base, 1), base);
        assert_eq!(retry_delay(base, 2), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 4), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 7), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, 40), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn the_tables_hold_the_reference_files() {
        let cifar10 = known_dataset("cifar10").unwrap();
        assert_eq!(cifar10.size, 170_498_071);
        assert_eq!(
            cifar10.expected().md5.as_deref(),
            Some(cifar10.md5.unwrap())
        );
        assert!(cifar10.url.ends_with(cifar10.file_name));
        assert_eq!(known_dataset("cifar100").unwrap().size, 169_001_437);
        let inception = known_weights("inception_v3").unwrap();
        assert_eq!(
            inception.expected().sha256,
            Sha256Pin::Prefix("0cc3c7bd".into())
        );
        assert!(inception.url.ends_with(inception.file_name));
        assert!(known_dataset("mnist").is_none());
        for known in DATASETS.iter().chain(&WEIGHTS) {
            assert!(known.expected().sha256.validate().is_ok(), "{}", known.name);
        }
    }

    #[test]
    fn the_download_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = Config::new(
            "http://127.0.0.1:1/x",
            "x",
            Expected::sha256("0".repeat(64)),
        );
        let future = run(&cfg, &retrain_stage::NoProgress, CancellationToken::new());
        assert_send(&future);
    }

    #[test]
    fn configs_are_checked() {
        let ok = Config::new(
            "http://127.0.0.1:1/x",
            "d/x.bin",
            Expected::sha256("0".repeat(64)),
        );
        assert!(ok.validate().is_ok());
        assert_eq!(ok.dir(), Path::new("d"));
        assert_eq!(
            Config::new("x.bin", "x.bin", ok.expected.clone()).dir(),
            Path::new(".")
        );
        let mut bad = ok.clone();
        bad.url = "ftp://example.com/x".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.expected.md5 = Some("nothex".into());
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.out = PathBuf::from("d/manifest.json");
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.out = PathBuf::from("/");
        assert!(bad.validate().is_err());
    }
}
