//! An archive's members as a stream of (name, reader), with the safety policy applied and every
//! byte hashed as it passes: the compressed bytes (SHA-256) and each member (md5 and SHA-256).
//!
//! The stack, from the file up: `tokio::fs::File` → [`ArchiveFile`] (hashes and counts the
//! compressed bytes) → `BufReader` → `GzipDecoder` (concatenated gzip members allowed) →
//! [`TarStream`] (tells gzip errors from file errors, bounds the metadata between members) →
//! `tokio_tar::Archive` entries.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::StreamExt as _;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncRead, AsyncReadExt as _, BufReader, ReadBuf};
use tokio_tar::{Archive, Entries, Entry, EntryType};

use crate::digests::{self, MemberDigests};
use crate::{Dataset, Error, names};

/// Default bound on the total size of the file members (`--max-bytes`): 64 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// Most members an archive may have (directories included): the reader keeps every name.
pub const MAX_MEMBERS: u64 = 4_000_000;
/// Most bytes of tar metadata (headers, PAX records, GNU long names, padding) before one member.
pub const METADATA_LIMIT: u64 = 1 << 20;
/// Most bytes after the tar end-of-archive marker (all of them zeros).
pub const TRAILER_LIMIT: u64 = 16 << 20;

/// What an archive may contain.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Exactly this dataset's members, each present once; `None`: any regular files and
    /// directories.
    pub dataset: Option<Dataset>,
    /// Expected md5 of every file member, checked by [`MemberReader::finish`].
    pub member_digests: Option<MemberDigests>,
    /// Bound on the total size of the file members.
    pub max_bytes: u64,
}

impl Policy {
    /// Any regular files and directories, up to [`DEFAULT_MAX_BYTES`].
    pub fn generic() -> Self {
        Self {
            dataset: None,
            member_digests: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Exactly `dataset`'s members.
    pub fn dataset(dataset: Dataset) -> Self {
        Self {
            dataset: Some(dataset),
            ..Self::generic()
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::generic()
    }
}

/// Digests of one file member, computed as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDigest {
    /// Lower-case hex.
    pub md5: String,
    /// Lower-case hex.
    pub sha256: String,
    pub bytes: u64,
}

/// What [`MemberReader::finish`] found: the archive's digest, every member's, and how the members
/// were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// SHA-256 (lower-case hex) of the compressed file.
    pub sha256: String,
    /// Size of the compressed file.
    pub bytes: u64,
    /// File members by normalised path.
    pub members: BTreeMap<String, MemberDigest>,
    /// Directory members, normalised, in archive order.
    pub directories: Vec<String>,
    /// The archive is this dataset's real archive (its SHA-256 is the published one) and its
    /// members matched the published md5s.
    pub reference: Option<Dataset>,
    /// Every file member matched this digest file.
    pub digest_file: Option<PathBuf>,
}

impl ArchiveSummary {
    /// Whether any per-member digests were checked.
    pub fn verified(&self) -> bool {
        self.reference.is_some() || self.digest_file.is_some()
    }

    /// The compressed file's digest, as a manifest records it.
    pub fn digest(&self) -> retrain_stage::Digest {
        retrain_stage::Digest {
            sha256: self.sha256.clone(),
            bytes: self.bytes,
        }
    }

    /// Total size of the file members.
    pub fn member_bytes(&self) -> u64 {
        self.members.values().map(|m| m.bytes).sum()
    }
}

/// Reads a `.tar.gz` member by member without touching the disk.
///
/// ```no_run
/// # async fn demo() -> Result<(), retrain_extract::Error> {
/// use retrain_extract::{Dataset, MemberReader, Policy};
/// use tokio::io::AsyncReadExt as _;
///
/// let mut reader = MemberReader::open("cifar-10-python.tar.gz", Policy::dataset(Dataset::Cifar10)).await?;
/// while let Some(mut member) = reader.next_member().await? {
///     if member.path().ends_with("/data_batch_1") {
///         let mut bytes = Vec::new();
///         member.read_to_end(&mut bytes).await.map_err(std::io::Error::other).ok();
///     } // members not read are still read, hashed and checked
/// }
/// let summary = reader.finish().await?; // gzip trailer, missing members, md5s
/// # Ok(()) }
/// ```
///
/// Each entry is checked as its header arrives: only regular files and directories, names that
/// stay inside the output directory, the dataset's exact members, each once, within
/// [`Policy::max_bytes`]. A member's bytes are hashed as they are read; members the caller skips
/// are read and hashed by the next [`MemberReader::next_member`]. Nothing is verified against
/// digests until [`MemberReader::finish`], because which digests apply depends on the archive's
/// SHA-256. After an error the reader refuses further use ([`Error::Aborted`]).
pub struct MemberReader {
    archive_path: PathBuf,
    policy: Policy,
    /// The dataset's members (normalised path → is a directory).
    expected: BTreeMap<String, bool>,
    archive: Archive<TarStream>,
    entries: Option<Entries<TarStream>>,
    shared: Arc<Shared>,
    archive_bytes: u64,
    current: Option<Current>,
    phase: Phase,
    state: State,
    /// Finished file members.
    files: BTreeMap<String, MemberDigest>,
    directories: Vec<String>,
    file_paths: BTreeSet<String>,
    explicit_dirs: BTreeSet<String>,
    implied_dirs: BTreeSet<String>,
    n_members: u64,
    total_bytes: u64,
    /// The last member admitted, for errors about what follows it.
    last: Option<String>,
}

impl fmt::Debug for MemberReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberReader")
            .field("archive", &self.archive_path)
            .field("policy", &self.policy)
            .field("members", &self.n_members)
            .field("current", &self.current.as_ref().map(|c| &c.path))
            .finish_non_exhaustive()
    }
}

/// The member being read.
struct Current {
    path: String,
    dir: bool,
    size: u64,
    read: u64,
    done: bool,
    entry: Entry<Archive<TarStream>>,
    md5: Md5,
    sha256: Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Ended,
    Failed,
}

/// Where in the tar stream the reader is, for telling what a failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between members: headers, PAX records, long names.
    Metadata,
    /// A member's data.
    Data,
    /// After the end-of-archive marker.
    Trailer,
}

impl MemberReader {
    /// Opens `path` for reading; nothing is read until [`MemberReader::next_member`].
    #[tracing::instrument(skip_all, fields(archive = %path.as_ref().display()))]
    pub async fn open(path: impl AsRef<Path>, policy: Policy) -> Result<Self, Error> {
        let path = path.as_ref();
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).await.map_err(open_err)?;
        let archive_bytes = file.metadata().await.map_err(open_err)?.len();
        let shared = Arc::new(Shared {
            compressed: AtomicU64::new(0),
            sha256: Mutex::new(Sha256::new()),
            position: AtomicU64::new(0),
            limit: AtomicU64::new(METADATA_LIMIT),
        });
        let compressed = BufReader::with_capacity(
            1 << 16,
            ArchiveFile {
                file,
                shared: Arc::clone(&shared),
            },
        );
        let mut gzip = GzipDecoder::new(compressed);
        // A gzip file may be several gzip members back to back; each one's CRC is checked.
        gzip.multiple_members(true);
        let mut archive = Archive::new(TarStream {
            gzip,
            shared: Arc::clone(&shared),
        });
        let entries = archive.entries().map_err(|source| Error::Tar {
            archive: path.to_owned(),
            at: crate::position(None),
            source,
        })?;
        let expected = policy
            .dataset
            .map(|dataset| dataset.members().into_iter().collect())
            .unwrap_or_default();
        tracing::debug!(bytes = archive_bytes, "opened archive");
        Ok(Self {
            archive_path: path.to_owned(),
            policy,
            expected,
            archive,
            entries: Some(entries),
            shared,
            archive_bytes,
            current: None,
            phase: Phase::Metadata,
            state: State::Reading,
            files: BTreeMap::new(),
            directories: Vec::new(),
            file_paths: BTreeSet::new(),
            explicit_dirs: BTreeSet::new(),
            implied_dirs: BTreeSet::new(),
            n_members: 0,
            total_bytes: 0,
            last: None,
        })
    }

    /// The archive's path.
    pub fn archive(&self) -> &Path {
        &self.archive_path
    }

    /// Size of the compressed file when it was opened.
    pub fn archive_bytes(&self) -> u64 {
        self.archive_bytes
    }

    /// Compressed bytes read so far.
    pub fn compressed_bytes_read(&self) -> u64 {
        self.shared.compressed.load(Ordering::Relaxed)
    }

    /// The next member, directories included (with no bytes), after reading and hashing whatever
    /// the caller left of the previous one; `None` after the last. An entry the policy refuses is
    /// an error naming it.
    pub async fn next_member(&mut self) -> Result<Option<Member<'_>>, Error> {
        match self.state {
            State::Failed => {
                return Err(Error::Aborted {
                    archive: self.archive_path.clone(),
                });
            }
            State::Ended => return Ok(None),
            State::Reading => {}
        }
        match self.advance().await {
            Ok(true) => {
                let Some(current) = &self.current else {
                    return Ok(None);
                };
                let (path, size, dir) = (current.path.clone(), current.size, current.dir);
                Ok(Some(Member {
                    reader: self,
                    path,
                    size,
                    dir,
                }))
            }
            Ok(false) => {
                self.state = State::Ended;
                Ok(None)
            }
            Err(err) => {
                self.fail();
                Err(err)
            }
        }
    }

    /// Reads the members the caller has not, drains the gzip stream to its end (checking every
    /// gzip member's CRC and length and that only zeros follow the tar end-of-archive marker),
    /// checks that every expected member was present, and verifies member md5s: against the
    /// published table when the archive is a real one, and against [`Policy::member_digests`] when
    /// given. With neither, logs a warning that the members are unverified.
    #[tracing::instrument(skip_all, fields(archive = %self.archive_path.display()))]
    pub async fn finish(mut self) -> Result<ArchiveSummary, Error> {
        while self.next_member().await?.is_some() {}
        self.current = None;
        self.entries = None;
        self.phase = Phase::Trailer;
        let position = self.shared.position.load(Ordering::SeqCst);
        self.shared
            .limit
            .store(position.saturating_add(TRAILER_LIMIT), Ordering::SeqCst);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match self.archive.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return Err(self.classify(e)),
            };
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(Error::TrailingData {
                    archive: self.archive_path.clone(),
                    what: "non-zero bytes".into(),
                });
            }
        }
        let sha256 = {
            let mut hasher = self
                .shared
                .sha256
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            hex::encode(std::mem::take(&mut *hasher).finalize())
        };
        let bytes = self.compressed_bytes_read();

        if let Some(dataset) = self.policy.dataset {
            for (member, dir) in dataset.members() {
                let present = if dir {
                    self.explicit_dirs.contains(&member)
                } else {
                    self.files.contains_key(&member)
                };
                if !present {
                    return Err(Error::Missing {
                        archive: self.archive_path.clone(),
                        member,
                        dataset,
                    });
                }
            }
        }
        let checked = digests::verify(
            &self.archive_path,
            &sha256,
            &self.files,
            self.policy.member_digests.as_ref(),
        )?;
        match (checked.reference, &self.policy.member_digests) {
            (Some(dataset), _) => tracing::info!(
                %dataset,
                "the archive is the real {dataset} archive; members match its published md5s"
            ),
            (None, Some(digests)) => tracing::info!(
                digests = %digests.source().display(),
                "every member matches its md5"
            ),
            (None, None) => tracing::warn!(
                archive = %self.archive_path.display(),
                sha256 = %sha256,
                "members are unverified: the archive is not a known real archive and no member \
                 digest file was given"
            ),
        }
        Ok(ArchiveSummary {
            sha256,
            bytes,
            members: std::mem::take(&mut self.files),
            directories: std::mem::take(&mut self.directories),
            reference: checked.reference,
            digest_file: self
                .policy
                .member_digests
                .as_ref()
                .map(|d| d.source().to_owned()),
        })
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.current = None;
        self.entries = None;
    }

    fn classify(&self, err: io::Error) -> Error {
        classify(&self.archive_path, self.phase, self.last.as_deref(), err)
    }

    /// Finishes the current member and moves to the next one the policy admits. `false` at the
    /// end of the archive.
    async fn advance(&mut self) -> Result<bool, Error> {
        if self.current.is_some() {
            let mut scratch = vec![0u8; 1 << 16];
            while self.read_current(&mut scratch).await? > 0 {}
            self.current = None;
        }
        loop {
            let Some(entries) = self.entries.as_mut() else {
                return Ok(false);
            };
            self.phase = Phase::Metadata;
            let position = self.shared.position.load(Ordering::SeqCst);
            self.shared
                .limit
                .store(position.saturating_add(METADATA_LIMIT), Ordering::SeqCst);
            let next = entries.next().await;
            self.shared.limit.store(u64::MAX, Ordering::SeqCst);
            let entry = match next {
                None => {
                    self.entries = None;
                    return Ok(false);
                }
                Some(Err(e)) => return Err(self.classify(e)),
                Some(Ok(entry)) => entry,
            };
            if let Some(current) = self.admit(entry).await? {
                self.phase = Phase::Data;
                self.current = Some(current);
                return Ok(true);
            }
        }
    }

    /// Applies the policy to an entry: `Some` for a member to yield, `None` for an entry to pass
    /// over (a harmless global PAX header, the output directory itself).
    async fn admit(
        &mut self,
        mut entry: Entry<Archive<TarStream>>,
    ) -> Result<Option<Current>, Error> {
        // The name after PAX `path` and GNU long-name records, as tokio_tar applies them.
        let raw = entry
            .path_bytes()
            .map_err(|e| self.classify(e))?
            .into_owned();
        let lossy = String::from_utf8_lossy(&raw).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            self.check_global_header(&mut entry, &lossy).await?;
            return Ok(None);
        }
        let dir = match entry_type {
            EntryType::Regular => false,
            EntryType::Directory => true,
            other => {
                let target = entry
                    .link_name_bytes()
                    .ok()
                    .flatten()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
                return Err(Error::EntryType {
                    archive: self.archive_path.clone(),
                    member: lossy,
                    kind: describe(other, target),
                });
            }
        };
        let Ok(name) = String::from_utf8(raw) else {
            return Err(Error::NotUtf8 {
                archive: self.archive_path.clone(),
                member: lossy,
            });
        };
        // PAX-format sparse files look like regular files whose data is a sparse map.
        let sparse = match entry.pax_extensions().await {
            Ok(Some(extensions)) => {
                let mut sparse = false;
                for extension in extensions {
                    match extension {
                        Ok(extension) => {
                            sparse |= extension.key_bytes().starts_with(b"GNU.sparse.")
                        }
                        Err(e) => return Err(self.classify(e)),
                    }
                }
                sparse
            }
            Ok(None) => false,
            Err(e) => return Err(self.classify(e)),
        };
        if sparse {
            return Err(Error::EntryType {
                archive: self.archive_path.clone(),
                member: name,
                kind: "GNU sparse file (PAX format)".into(),
            });
        }
        let size = entry.header().entry_size().map_err(|e| self.classify(e))?;
        if dir && size != 0 {
            return Err(Error::DirectoryData {
                archive: self.archive_path.clone(),
                member: name,
                size,
            });
        }
        let path = match names::normalize(&name) {
            Ok(Some(path)) => path,
            Ok(None) if dir => {
                tracing::debug!(member = ?name, "passing over the entry for the output directory itself");
                return Ok(None);
            }
            Ok(None) => {
                return Err(Error::UnsafeName {
                    archive: self.archive_path.clone(),
                    member: name,
                    reason: "names the output directory itself, not a file",
                });
            }
            Err(reason) => {
                return Err(Error::UnsafeName {
                    archive: self.archive_path.clone(),
                    member: name,
                    reason,
                });
            }
        };
        if let Some(dataset) = self.policy.dataset {
            match self.expected.get(&path) {
                None => {
                    return Err(Error::Unexpected {
                        archive: self.archive_path.clone(),
                        member: path,
                        dataset,
                    });
                }
                Some(&expected_dir) if expected_dir != dir => {
                    return Err(Error::WrongKind {
                        archive: self.archive_path.clone(),
                        member: path,
                        expected: if expected_dir {
                            "directory"
                        } else {
                            "regular file"
                        },
                    });
                }
                Some(_) => {}
            }
        }
        self.n_members += 1;
        if self.n_members > MAX_MEMBERS {
            return Err(Error::TooManyMembers {
                archive: self.archive_path.clone(),
                limit: MAX_MEMBERS,
            });
        }
        if !dir {
            let total = self.total_bytes.saturating_add(size);
            if total > self.policy.max_bytes {
                return Err(Error::TooLarge {
                    archive: self.archive_path.clone(),
                    member: path,
                    total,
                    limit: self.policy.max_bytes,
                });
            }
            self.total_bytes = total;
        }
        self.place(&path, dir)?;
        if dir {
            self.directories.push(path.clone());
        }
        self.last = Some(path.clone());
        tracing::trace!(member = %path, size, dir, "member");
        Ok(Some(Current {
            path,
            dir,
            size,
            read: 0,
            done: false,
            entry,
            md5: Md5::new(),
            sha256: Sha256::new(),
        }))
    }

    /// Records a member's path: each path once, and never both a file and a directory.
    fn place(&mut self, path: &str, dir: bool) -> Result<(), Error> {
        let clash = |other: String| Error::Clash {
            archive: self.archive_path.clone(),
            member: path.to_owned(),
            other,
        };
        let duplicate = || Error::Duplicate {
            archive: self.archive_path.clone(),
            member: path.to_owned(),
        };
        if self.file_paths.contains(path) {
            return Err(if dir {
                clash(path.to_owned())
            } else {
                duplicate()
            });
        }
        if self.explicit_dirs.contains(path) {
            return Err(if dir {
                duplicate()
            } else {
                clash(format!("{path}/"))
            });
        }
        if !dir && self.implied_dirs.contains(path) {
            return Err(clash(format!("{path}/")));
        }
        if let Some(file) = names::ancestors(path).find(|a| self.file_paths.contains(*a)) {
            return Err(clash(file.to_owned()));
        }
        for ancestor in names::ancestors(path) {
            if !self.implied_dirs.contains(ancestor) {
                self.implied_dirs.insert(ancestor.to_owned());
            }
        }
        if dir {
            self.explicit_dirs.insert(path.to_owned());
        } else {
            self.file_paths.insert(path.to_owned());
        }
        Ok(())
    }

    /// A global PAX header applies to every member that follows. tokio_tar does not apply one, so
    /// a header that would rename or resize members (as other readers apply it) is refused; other
    /// records (git's `comment`, times) are passed over.
    async fn check_global_header(
        &self,
        entry: &mut Entry<Archive<TarStream>>,
        member: &str,
    ) -> Result<(), Error> {
        let size = entry.header().entry_size().map_err(|e| self.classify(e))?;
        if size > METADATA_LIMIT {
            return Err(Error::Metadata {
                archive: self.archive_path.clone(),
                after: self.last.clone(),
                limit: METADATA_LIMIT,
            });
        }
        let extensions = match entry.pax_extensions().await {
            Ok(Some(extensions)) => extensions,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.classify(e)),
        };
        for extension in extensions {
            let extension = extension.map_err(|e| self.classify(e))?;
            let key = extension.key_bytes();
            if matches!(key, b"path" | b"linkpath" | b"size") || key.starts_with(b"GNU.sparse.") {
                return Err(Error::GlobalPax {
                    archive: self.archive_path.clone(),
                    member: member.to_owned(),
                    key: String::from_utf8_lossy(key).into_owned(),
                });
            }
        }
        tracing::debug!(member, "passing over a global PAX header");
        Ok(())
    }

    async fn read_current(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        std::future::poll_fn(|cx| {
            let mut read_buf = ReadBuf::new(&mut *buf);
            self.poll_current(cx, &mut read_buf)
                .map_ok(|()| read_buf.filled().len())
        })
        .await
    }

    /// Reads from the current member, hashing what passes; at its end, checks its length and
    /// records its digests.
    fn poll_current(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), Error>> {
        if self.state == State::Failed {
            return Poll::Ready(Err(Error::Aborted {
                archive: self.archive_path.clone(),
            }));
        }
        let Some(current) = self.current.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if current.done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if let Err(e) = ready!(Pin::new(&mut current.entry).poll_read(cx, buf)) {
            let err = classify(&self.archive_path, Phase::Data, self.last.as_deref(), e);
            self.fail();
            return Poll::Ready(Err(err));
        }
        let bytes = &buf.filled()[before..];
        if !bytes.is_empty() {
            current.md5.update(bytes);
            current.sha256.update(bytes);
            current.read += bytes.len() as u64;
            return Poll::Ready(Ok(()));
        }
        if current.read != current.size {
            let err = Error::Truncated {
                archive: self.archive_path.clone(),
                member: current.path.clone(),
                got: current.read,
                expected: current.size,
            };
            self.fail();
            return Poll::Ready(Err(err));
        }
        current.done = true;
        if !current.dir {
            let digest = MemberDigest {
                md5: hex::encode(std::mem::take(&mut current.md5).finalize()),
                sha256: hex::encode(std::mem::take(&mut current.sha256).finalize()),
                bytes: current.read,
            };
            self.files.insert(current.path.clone(), digest);
        }
        Poll::Ready(Ok(()))
    }
}

/// One member of an archive being read: its normalised path, size, and bytes as [`AsyncRead`].
///
/// Read errors through [`AsyncRead`] carry the [`Error`] as their inner error
/// (`io::Error::other`); [`Member::read_chunk`] returns it directly.
pub struct Member<'a> {
    reader: &'a mut MemberReader,
    path: String,
    size: u64,
    dir: bool,
}

impl fmt::Debug for Member<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Member<'_> {
    /// Normalised path relative to the output directory: `/`-separated, no `.` components, no
    /// trailing slash.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Size in bytes (0 for a directory).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_dir(&self) -> bool {
        self.dir
    }

    /// Reads up to `buf.len()` bytes; 0 at the member's end, once its length has been checked.
    pub async fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.reader.read_current(buf).await
    }

    /// Reads the rest of the member into memory.
    pub async fn read_all(&mut self) -> Result<Vec<u8>, Error> {
        let capacity = usize::try_from(self.size.min(64 << 20)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(capacity);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.read_chunk(&mut buf).await?;
            if n == 0 {
                return Ok(bytes);
            }
            bytes.extend_from_slice(&buf[..n]);
        }
    }

    /// Compressed bytes of the archive read so far.
    pub fn compressed_bytes_read(&self) -> u64 {
        self.reader.compressed_bytes_read()
    }
}

impl AsyncRead for Member<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .reader
            .poll_current(cx, buf)
            .map_err(io::Error::other)
    }
}

/// Reads every file member of `archive` into memory in turn and hands it to `on_file` with its
/// normalised path, then [`MemberReader::finish`]es; for callers without an async runtime (it runs
/// a current-thread one, and refuses to run inside another). A member is held in memory whole, so
/// keep [`Policy::max_bytes`] to what memory allows.
pub fn read_members_blocking<F>(
    archive: &Path,
    policy: Policy,
    mut on_file: F,
) -> Result<ArchiveSummary, Error>
where
    F: FnMut(&str, Vec<u8>) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InsideRuntime {
            archive: archive.to_owned(),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|source| Error::Runtime { source })?;
    runtime.block_on(async {
        let mut reader = MemberReader::open(archive, policy).await?;
        while let Some(mut member) = reader.next_member().await? {
            if member.is_dir() {
                continue;
            }
            let bytes = member.read_all().await?;
            let path = member.path().to_owned();
            on_file(&path, bytes).map_err(|source| Error::Callback {
                archive: archive.to_owned(),
                member: path,
                source,
            })?;
        }
        reader.finish().await
    })
}

/// What an archive entry is, for refusing it.
fn describe(entry_type: EntryType, target: Option<String>) -> String {
    let target = target.unwrap_or_default();
    match entry_type {
        EntryType::Symlink => format!("symbolic link to {target:?}"),
        EntryType::Link => format!("hard link to {target:?}"),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::GNUSparse => "GNU sparse file".into(),
        EntryType::XHeader
        | EntryType::XGlobalHeader
        | EntryType::SolarisXHeader
        | EntryType::GNULongName
        | EntryType::GNULongLink => format!(
            "stray extension header (type {:?})",
            char::from(entry_type.as_byte())
        ),
        other => format!("entry of unknown type {:?}", char::from(other.as_byte())),
    }
}

/// Turns an I/O error from the tar reader into what it means: the file could not be read, the
/// gzip stream is corrupt, the metadata or trailer is too long, or the tar data is malformed.
fn classify(archive: &Path, phase: Phase, last: Option<&str>, err: io::Error) -> Error {
    let archive = archive.to_owned();
    let at = match (phase, last) {
        (Phase::Data, Some(member)) => format!("in member {member:?}"),
        (Phase::Trailer, _) => "after the end-of-archive marker".to_owned(),
        (_, last) => crate::position(last),
    };
    let ours = err
        .get_ref()
        .is_some_and(|e| e.is::<FileFault>() || e.is::<GzipFault>() || e.is::<LimitFault>());
    if !ours {
        return Error::Tar {
            archive,
            at,
            source: err,
        };
    }
    let kind = err.kind();
    let Some(inner) = err.into_inner() else {
        return Error::Tar {
            archive,
            at,
            source: io::Error::from(kind),
        };
    };
    let inner = match inner.downcast::<FileFault>() {
        Ok(fault) => {
            return Error::Read {
                archive,
                source: fault.0,
            };
        }
        Err(inner) => inner,
    };
    let inner = match inner.downcast::<GzipFault>() {
        Ok(fault) => {
            return Error::Gzip {
                archive,
                source: fault.0,
            };
        }
        Err(inner) => inner,
    };
    match (inner.downcast::<LimitFault>(), phase) {
        (Ok(_), Phase::Trailer) => Error::TrailingData {
            archive,
            what: format!("over {TRAILER_LIMIT} bytes"),
        },
        (Ok(_), _) => Error::Metadata {
            archive,
            after: last.map(str::to_owned),
            limit: METADATA_LIMIT,
        },
        (Err(inner), _) => Error::Tar {
            archive,
            at,
            source: io::Error::new(kind, inner),
        },
    }
}

/// State shared by the layers of the stream and the reader.
#[derive(Debug)]
struct Shared {
    /// Compressed bytes read.
    compressed: AtomicU64,
    /// SHA-256 of the compressed bytes read.
    sha256: Mutex<Sha256>,
    /// Decompressed (tar) bytes read.
    position: AtomicU64,
    /// The tar position past which reading is an error ([`LimitFault`]).
    limit: AtomicU64,
}

/// The compressed file: hashes and counts what passes; marks its errors as the file's.
#[derive(Debug)]
struct ArchiveFile {
    file: File,
    shared: Arc<Shared>,
}

impl AsyncRead for ArchiveFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Err(e) = ready!(Pin::new(&mut this.file).poll_read(cx, buf)) {
            return Poll::Ready(Err(io::Error::new(e.kind(), FileFault(e))));
        }
        let bytes = &buf.filled()[before..];
        this.shared
            .sha256
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(bytes);
        this.shared
            .compressed
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// The decompressed tar stream: marks gzip errors as such, counts bytes, and enforces the limit
/// the reader sets (metadata between members, the trailer).
#[derive(Debug)]
struct TarStream {
    gzip: GzipDecoder<BufReader<ArchiveFile>>,
    shared: Arc<Shared>,
}

impl AsyncRead for TarStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Err(e) = ready!(Pin::new(&mut this.gzip).poll_read(cx, buf)) {
            let from_file = e.get_ref().is_some_and(|inner| inner.is::<FileFault>());
            return Poll::Ready(Err(if from_file {
                e
            } else {
                io::Error::new(e.kind(), GzipFault(e))
            }));
        }
        let n = (buf.filled().len() - before) as u64;
        let position = this.shared.position.fetch_add(n, Ordering::SeqCst) + n;
        if position > this.shared.limit.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other(LimitFault)));
        }
        Poll::Ready(Ok(()))
    }
}

/// An error reading the compressed file.
#[derive(Debug)]
struct FileFault(io::Error);

/// An error from the gzip decoder: corrupt data, a bad CRC or length, a truncated stream.
#[derive(Debug)]
struct GzipFault(io::Error);

/// The tar stream went past the reader's limit.
#[derive(Debug)]
struct LimitFault;

impl fmt::Display for FileFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for GzipFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for LimitFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the tar stream went past its limit")
    }
}

impl std::error::Error for FileFault {}
impl std::error::Error for GzipFault {}
impl std::error::Error for LimitFault {}
