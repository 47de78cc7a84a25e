//! The part file `FILE.part`, its hashers, and its sidecar `FILE.part.json`: what a resumed
//! download needs to know about the bytes it already has.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{Config, Error};

/// Bytes hashed per read when re-hashing a file.
const READ_CHUNK: usize = 1 << 20;
/// Bytes buffered before a write to the part file.
const WRITE_BUFFER: usize = 1 << 20;

/// `FILE.part`.
pub(crate) fn part_path(out: &Path) -> PathBuf {
    with_suffix(out, ".part")
}

/// `FILE.part.json`.
pub(crate) fn sidecar_path(out: &Path) -> PathBuf {
    with_suffix(out, ".part.json")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Size and digests of a complete file, in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hashes {
    pub(crate) sha256: String,
    pub(crate) md5: Option<String>,
    pub(crate) bytes: u64,
}

/// Running digests of the bytes so far.
#[derive(Clone)]
pub(crate) struct Hashers {
    sha256: Sha256,
    md5: Option<Md5>,
    bytes: u64,
}

impl Hashers {
    fn new(md5: bool) -> Self {
        Self {
            sha256: Sha256::new(),
            md5: md5.then(Md5::new),
            bytes: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
        self.bytes += bytes.len() as u64;
    }

    fn hashes(&self) -> Hashes {
        Hashes {
            sha256: hex::encode(self.sha256.clone().finalize()),
            md5: self.md5.clone().map(|md5| hex::encode(md5.finalize())),
            bytes: self.bytes,
        }
    }
}

/// Hashes the file at `path` on a blocking thread; `None` if `cancel` fired first.
async fn hash_into(
    path: &Path,
    mut hashers: Hashers,
    cancel: &CancellationToken,
) -> Result<Option<Hashers>, Error> {
    let owned = path.to_owned();
    let cancel = cancel.clone();
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<Option<Hashers>> {
        let mut file = File::open(&owned)?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(Some(hashers)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hashers.update(&buf[..n]);
        }
    })
    .await
    .map_err(|join| Error::io("hashing", path)(io::Error::other(join)))?;
    hashed.map_err(Error::io("reading", path))
}

/// Size and digests (MD5 when `md5`) of the file at `path`; `None` if `cancel` fired first.
pub(crate) async fn hash_file(
    path: &Path,
    md5: bool,
    cancel: &CancellationToken,
) -> Result<Option<Hashes>, Error> {
    Ok(hash_into(path, Hashers::new(md5), cancel)
        .await?
        .map(|hashers| hashers.hashes()))
}

/// What a later attempt or run needs to resume safely: the URL, the validators of the version
/// whose bytes the part holds, and its total size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub(crate) url: String,
    pub(crate) etag: Option<String>,
    pub(crate) last_modified: Option<String>,
    pub(crate) total: Option<u64>,
}

impl Sidecar {
    /// The `If-Range` value: the strong `ETag`, else `Last-Modified`.
    pub(crate) fn if_range(&self) -> Option<&str> {
        self.strong_etag().or(self.last_modified.as_deref())
    }

    /// The `ETag` when it is strong (`"…"`, not `W/"…"`): only a strong tag may go in `If-Range`.
    pub(crate) fn strong_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|tag| tag.starts_with('"'))
    }
}

/// `FILE.part`, open for appending, with the digests of what it holds.
pub(crate) struct Part {
    path: PathBuf,
    sidecar: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    hashers: Hashers,
    meta: Sidecar,
}

impl Part {
    /// Picks up the `FILE.part` an earlier run left when its sidecar vouches for it (same URL, a
    /// total size that fits), re-hashing its bytes; otherwise removes what is there and starts
    /// empty, creating nothing yet.
    pub(crate) async fn open(cfg: &Config, cancel: &CancellationToken) -> Result<Self, Error> {
        let md5 = cfg.expected.md5.is_some();
        let mut part = Self {
            path: part_path(&cfg.out),
            sidecar: sidecar_path(&cfg.out),
            file: None,
            hashers: Hashers::new(md5),
            meta: Sidecar {
                url: cfg.url.clone(),
                ..Sidecar::default()
            },
        };
        let Some(meta) = part.resumable(cfg).await? else {
            remove_leftovers(&cfg.out).await?;
            return Ok(part);
        };
        let hashers = hash_into(&part.path, Hashers::new(md5), cancel)
            .await?
            .ok_or_else(|| Error::Cancelled {
                url: cfg.url.clone(),
                part: part.path.clone(),
            })?;
        if meta.total.is_some_and(|total| hashers.bytes > total) {
            debug!(part = %part.path.display(), "the part file grew past its total; starting over");
            remove_leftovers(&cfg.out).await?;
            return Ok(part);
        }
        info!(
            part = %part.path.display(),
            bytes = hashers.bytes,
            total = ?meta.total,
            "resuming the download an earlier run left"
        );
        part.hashers = hashers;
        part.meta = meta;
        part.open_file(false).await?;
        Ok(part)
    }

    /// The sidecar, when a part file is there that it describes and that may be resumed.
    async fn resumable(&self, cfg: &Config) -> Result<Option<Sidecar>, Error> {
        let len = match tokio::fs::metadata(&self.path).await {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => {
                return Err(Error::Io {
                    action: "replacing",
                    path: self.path.clone(),
                    source: io::Error::other("not a regular file"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    action: "inspecting",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let text = match tokio::fs::read(&self.sidecar).await {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                info!(part = %self.path.display(), "a part file without its sidecar; starting over");
                return Ok(None);
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path: self.sidecar.clone(),
                    source,
                });
            }
        };
        let why_not = match serde_json::from_slice::<Sidecar>(&text) {
            Err(_) => "its sidecar is unreadable",
            Ok(meta) if meta.url != cfg.url => "it is from another URL",
            Ok(Sidecar {
                total: Some(total), ..
            }) if cfg.expected.size.is_some_and(|size| size != total) => {
                "its total size differs from the expected size"
            }
            Ok(Sidecar {
                total: Some(total), ..
            }) if len > total => "it is longer than its total size",
            Ok(_) if len == 0 => "it is empty",
            Ok(meta) => return Ok(Some(meta)),
        };
        info!(part = %self.path.display(), "not resuming the part file: {why_not}; starting over");
        Ok(None)
    }

    async fn open_file(&mut self, truncate: bool) -> Result<(), Error> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(Error::io("opening", &self.path))?;
        if truncate {
            file.set_len(0)
                .await
                .map_err(Error::io("truncating", &self.path))?;
        }
        self.file = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        Ok(())
    }

    /// Bytes the part holds.
    pub(crate) fn len(&self) -> u64 {
        self.hashers.bytes
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn meta(&self) -> &Sidecar {
        &self.meta
    }

    /// Empties the part and its digests, and records `meta` (the version the next bytes belong
    /// to) in the sidecar.
    pub(crate) async fn restart(&mut self, meta: Sidecar) -> Result<(), Error> {
        match &mut self.file {
            Some(file) => {
                file.flush()
                    .await
                    .map_err(Error::io("writing", &self.path))?;
                file.get_ref()
                    .set_len(0)
                    .await
                    .map_err(Error::io("truncating", &self.path))?;
            }
            None => self.open_file(true).await?,
        }
        self.hashers = Hashers::new(self.hashers.md5.is_some());
        self.meta = meta;
        let text = serde_json::to_vec_pretty(&self.meta).map_err(|e| Error::Io {
            action: "encoding",
            path: self.sidecar.clone(),
            source: io::Error::other(e),
        })?;
        let path = self.sidecar.clone();
        tokio::task::spawn_blocking(move || retrain_stage::write_atomic(&path, &text))
            .await
            .map_err(io::Error::other)
            .and_then(|written| written)
            .map_err(Error::io("writing", &self.sidecar))
    }

    /// Appends `bytes` and hashes them.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.file.is_none() {
            self.open_file(self.len() == 0).await?;
        }
        if let Some(file) = &mut self.file {
            file.write_all(bytes)
                .await
                .map_err(Error::io("writing", &self.path))?;
        }
        self.hashers.update(bytes);
        Ok(())
    }

    /// Writes out what is buffered, so the file holds exactly the hashed bytes.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        if let Some(file) = &mut self.file {
            file.flush()
                .await
                .map_err(Error::io("writing", &self.path))?;
        }
        Ok(())
    }

    /// Flushes and syncs the part; its size and digests.
    pub(crate) async fn finish(&mut self) -> Result<Hashes, Error> {
        if self.file.is_none() {
            // An empty body: the part must exist to be renamed.
            self.open_file(true).await?;
        }
        self.flush().await?;
        if let Some(file) = &self.file {
            file.get_ref()
                .sync_all()
                .await
                .map_err(Error::io("syncing", &self.path))?;
        }
        Ok(self.hashers.hashes())
    }

    /// Removes the part and its sidecar.
    pub(crate) async fn discard(mut self, out: &Path) -> Result<(), Error> {
        self.file = None;
        remove_leftovers(out).await
    }

    /// Renames the finished part to `out`, makes the rename durable, removes the sidecar.
    pub(crate) async fn commit(mut self, out: &Path) -> Result<(), Error> {
        self.file = None;
        tokio::fs::rename(&self.path, out)
            .await
            .map_err(Error::io("renaming the download to", out))?;
        if let Some(dir) = out.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Best effort, where the platform lets a directory be opened and synced.
            if let Ok(dir) = tokio::fs::File::open(dir).await {
                let _ = dir.sync_all().await;
            }
        }
        remove_file(&self.sidecar).await
    }
}

/// Removes `FILE.part` and `FILE.part.json` where present.
pub(crate) async fn remove_leftovers(out: &Path) -> Result<(), Error> {
    remove_file(&part_path(out)).await?;
    remove_file(&sidecar_path(out)).await
}

async fn remove_file(path: &Path) -> Result<(), Error> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_sit_beside_the_file() {
        assert_eq!(
            part_path(Path::new("d/a.tar.gz")),
            Path::new("d/a.tar.gz.part")
        );
        assert_eq!(
            sidecar_path(Path::new("a.tar.gz")),
            Path::new("a.tar.gz.part.json")
        );
    }

    #[test]
    fn only_strong_tags_go_in_if_range() {
        let mut meta = Sidecar {
            etag: Some("W/\"v1\"".into()),
            last_modified: Some("Fri, 05 Jun 2009 00:00:00 GMT".into()),
            ..Sidecar::default()
        };
        assert_eq!(meta.if_range(), meta.last_modified.as_deref());
        meta.etag = Some("\"v1\"".into());
        assert_eq!(meta.if_range(), Some("\"v1\""));
        meta.etag = None;
        meta.last_modified = None;
        assert_eq!(meta.if_range(), None);
    }

    #[test]
    fn digests_continue_across_updates() {
        let mut hashers = Hashers::new(true);
        hashers.update(b"hello ");
        hashers.update(b"world");
        let hashes = hashers.hashes();
        assert_eq!(hashes.bytes, 11);
        assert_eq!(
            hashes.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(
            hashes.md5.as_deref(),
            Some("5eb63bbbe01eeed093cb22bb8f5acdc3")
        );
    }
}
