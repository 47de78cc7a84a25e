//! Streaming, allowlisted, verified `.tar.gz` extraction.
//!
//! [`run`] extracts an archive into a directory: the file is read once, as a stream (file →
//! gzip → tar), never held in memory, its compressed bytes hashed (SHA-256) as they pass. For a
//! known [`Dataset`] only that archive's exact members are written, each present once; otherwise
//! any regular files and directories, up to [`Config::max_bytes`]. Names that would leave the
//! output directory, links, devices and fifos are refused, naming the member. Every file is
//! written under a hidden temporary name (`.<name>.partial`) and hashed; only once the whole
//! archive has been read, the gzip stream drained to its end (so its CRC and length are checked)
//! and every member md5 matched are the files renamed into place and `manifest.json` written. On
//! any error the partial files are removed and earlier files are left untouched.
//!
//! Member md5s are checked against the published table when the archive's SHA-256 is the real
//! CIFAR archive's, against a `md5sum`-format [`MemberDigests`] file when one is given (both when
//! both apply); with neither, a warning says the members are unverified.
//!
//! [`MemberReader`] is the same reader without the disk: members as (name, `AsyncRead`) with the
//! same policy, for stages that decode straight from the download; [`read_members_blocking`] wraps
//! it for sync callers. [`run`] is built on it.

mod dataset;
mod digests;
mod names;
mod reader;
mod staging;

use std::io;
use std::path::{Path, PathBuf};

use retrain_stage::{Manifest, Reporter};

pub use crate::dataset::Dataset;
pub use crate::digests::MemberDigests;
pub use crate::reader::{
    ArchiveSummary, DEFAULT_MAX_BYTES, MAX_MEMBERS, METADATA_LIMIT, Member, MemberDigest,
    MemberReader, Policy, TRAILER_LIMIT, read_members_blocking,
};
pub use tokio_util::sync::CancellationToken;

use crate::staging::Staging;

/// The stage's name in its manifest.
pub const STAGE: &str = "extract";
/// The `dataset` parameter recorded when no dataset is given.
pub const GENERIC: &str = "generic";

/// What to extract, where, under which rules.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `.tar.gz` file.
    pub archive: PathBuf,
    /// Output directory (created if missing); members land at their paths inside it.
    pub out: PathBuf,
    /// Extract exactly this dataset's members; `None`: any regular files and directories.
    pub dataset: Option<Dataset>,
    /// An `md5sum`-format file with the md5 of every file member.
    pub member_digests: Option<PathBuf>,
    /// Bound on the total size of the file members.
    pub max_bytes: u64,
}

impl Config {
    /// Generic extraction of `archive` into `out`, up to [`DEFAULT_MAX_BYTES`].
    pub fn new(archive: PathBuf, out: PathBuf) -> Self {
        Self {
            archive,
            out,
            dataset: None,
            member_digests: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: reading the file failed", archive.display())]
    Read {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: corrupt or truncated gzip stream", archive.display())]
    Gzip {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: malformed tar data {at}", archive.display())]
    Tar {
        archive: PathBuf,
        /// Where: `in member "…"`, `after member "…"`, `before the first member`.
        at: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: member {member:?} is truncated ({got} of {expected} bytes)",
        archive.display()
    )]
    Truncated {
        archive: PathBuf,
        member: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "{}: member {member:?} has a name that is not valid UTF-8",
        archive.display()
    )]
    NotUtf8 { archive: PathBuf, member: String },
    #[error("{}: member {member:?} {reason}", archive.display())]
    UnsafeName {
        archive: PathBuf,
        member: String,
        reason: &'static str,
    },
    #[error(
        "{}: member {member:?} is a {kind}; only regular files and directories are extracted",
        archive.display()
    )]
    EntryType {
        archive: PathBuf,
        member: String,
        kind: String,
    },
    #[error(
        "{}: member {member:?} is a directory with {size} bytes of data",
        archive.display()
    )]
    DirectoryData {
        archive: PathBuf,
        member: String,
        size: u64,
    },
    #[error(
        "{}: global PAX header {member:?} sets {key:?}, which would apply to every member",
        archive.display()
    )]
    GlobalPax {
        archive: PathBuf,
        member: String,
        key: String,
    },
    #[error(
        "{}: unexpected member {member:?}: not in the {dataset} archive",
        archive.display()
    )]
    Unexpected {
        archive: PathBuf,
        member: String,
        dataset: Dataset,
    },
    #[error("{}: member {member:?} should be a {expected}", archive.display())]
    WrongKind {
        archive: PathBuf,
        member: String,
        expected: &'static str,
    },
    #[error(
        "{}: member {member:?} of the {dataset} archive is missing",
        archive.display()
    )]
    Missing {
        archive: PathBuf,
        member: String,
        dataset: Dataset,
    },
    #[error("{}: member {member:?} appears more than once", archive.display())]
    Duplicate { archive: PathBuf, member: String },
    #[error(
        "{}: member {member:?} clashes with {other:?}: a path cannot be both a file and a directory",
        archive.display()
    )]
    Clash {
        archive: PathBuf,
        member: String,
        other: String,
    },
    #[error(
        "{}: member {member:?} brings the extracted size to {total} bytes, over the limit of {limit} (--max-bytes)",
        archive.display()
    )]
    TooLarge {
        archive: PathBuf,
        member: String,
        total: u64,
        limit: u64,
    },
    #[error("{}: more than {limit} members", archive.display())]
    TooManyMembers { archive: PathBuf, limit: u64 },
    #[error(
        "{}: over {limit} bytes of tar metadata {}",
        archive.display(),
        position(after.as_deref())
    )]
    Metadata {
        archive: PathBuf,
        after: Option<String>,
        limit: u64,
    },
    #[error("{}: {what} after the tar end-of-archive marker", archive.display())]
    TrailingData { archive: PathBuf, what: String },
    #[error(
        "{}: member {member:?} has md5 {actual}, expected {expected} (from {table})",
        archive.display()
    )]
    Md5Mismatch {
        archive: PathBuf,
        member: String,
        actual: String,
        expected: String,
        /// Where the expected digest came from.
        table: String,
    },
    #[error(
        "{}: member {member:?} has no digest in {}",
        archive.display(),
        digests.display()
    )]
    Unlisted {
        archive: PathBuf,
        member: String,
        digests: PathBuf,
    },
    #[error(
        "{}: member {member:?} is listed in {} but not in the archive",
        archive.display(),
        digests.display()
    )]
    NotInArchive {
        archive: PathBuf,
        member: String,
        digests: PathBuf,
    },
    #[error("reading {}", path.display())]
    DigestsRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: line {line}: {reason}", path.display())]
    DigestsParse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: exists and is not a directory (symbolic links are not followed)",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    #[error("{}: a directory is in the way of a file member", path.display())]
    Occupied { path: PathBuf },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: extraction cancelled", archive.display())]
    Cancelled { archive: PathBuf },
    #[error(
        "{}: the member reader was used after an earlier error",
        archive.display()
    )]
    Aborted { archive: PathBuf },
    #[error("{}: handling member {member:?}", archive.display())]
    Callback {
        archive: PathBuf,
        member: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{}: read_members_blocking cannot run inside an async runtime; use MemberReader",
        archive.display()
    )]
    InsideRuntime { archive: PathBuf },
    #[error("starting an async runtime")]
    Runtime {
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] retrain_stage::Error),
}

pub(crate) fn position(after: Option<&str>) -> String {
    match after {
        Some(member) => format!("after member {member:?}"),
        None => "before the first member".to_owned(),
    }
}

/// Extracts `cfg.archive` into `cfg.out` (see the crate documentation) and writes
/// `manifest.json` last. Progress is reported in compressed bytes read. Cancelling `cancel` stops
/// the extraction at the next chunk with [`Error::Cancelled`], the partial files removed.
///
/// The previous `manifest.json` is removed just before the files are renamed into place, so a
/// failed run leaves the previous extraction and its manifest as they were.
#[tracing::instrument(skip_all, fields(archive = %cfg.archive.display(), out = %cfg.out.display()))]
pub async fn run(
    cfg: &Config,
    rep: &dyn Reporter,
    cancel: CancellationToken,
) -> Result<Manifest, Error> {
    let result = extract(cfg, rep, &cancel).await;
    rep.finish();
    result
}

async fn extract(
    cfg: &Config,
    rep: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<Manifest, Error> {
    let cancelled = || Error::Cancelled {
        archive: cfg.archive.clone(),
    };
    let member_digests = cfg
        .member_digests
        .as_deref()
        .map(MemberDigests::read)
        .transpose()?;
    let policy = Policy {
        dataset: cfg.dataset,
        member_digests,
        max_bytes: cfg.max_bytes,
    };
    let mut reader = MemberReader::open(&cfg.archive, policy).await?;
    let mut staging = Staging::new(&cfg.out).await?;
    rep.start(reader.archive_bytes(), "extracting (compressed bytes read)");
    let mut reported = 0;
    let mut buf = vec![0u8; 1 << 20];
    while let Some(mut member) = reader.next_member().await? {
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        if member.is_dir() {
            staging.dir(member.path()).await?;
            continue;
        }
        let mut file = staging.create(member.path()).await?;
        loop {
            let n = member.read_chunk(&mut buf).await?;
            if n == 0 {
                break;
            }
            file.write(&buf[..n]).await?;
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let now = member.compressed_bytes_read();
            rep.advance(now.saturating_sub(reported));
            reported = now;
        }
        file.finish().await?;
    }
    let summary = reader.finish().await?;
    rep.advance(summary.bytes.saturating_sub(reported));
    if cancel.is_cancelled() {
        return Err(cancelled());
    }

    Manifest::remove(&cfg.out)?;
    let n_files = staging.commit().await?;
    let mut manifest = Manifest::new(STAGE, env!("CARGO_PKG_VERSION"));
    manifest
        .param(
            "dataset",
            cfg.dataset
                .map_or_else(|| GENERIC.to_owned(), |d| d.to_string()),
        )
        .param("max-bytes", cfg.max_bytes);
    manifest
        .inputs
        .insert("archive".to_owned(), summary.digest());
    if let Some(path) = &cfg.member_digests {
        manifest.input("member-digests", path)?;
    }
    for (path, digest) in &summary.members {
        manifest.output_digest(
            path,
            retrain_stage::Digest {
                sha256: digest.sha256.clone(),
                bytes: digest.bytes,
            },
        );
    }
    manifest.write(&cfg.out)?;
    tracing::info!(
        files = n_files,
        bytes = summary.member_bytes(),
        archive_sha256 = %summary.sha256,
        verified = summary.verified(),
        "extracted {} into {}",
        display_name(&cfg.archive),
        cfg.out.display()
    );
    Ok(manifest)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
