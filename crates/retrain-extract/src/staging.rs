//! Files written under hidden temporary names and renamed into place only when the whole archive
//! has been verified; on failure (or when dropped uncommitted) the partial files and the
//! directories this run created are removed, and earlier files are left as they were.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncWriteExt as _, BufWriter};

use crate::Error;

/// The output directory of one run.
#[derive(Debug)]
pub(crate) struct Staging {
    out: PathBuf,
    /// Directories this run created, in order; removed (when empty) on failure.
    created: Vec<PathBuf>,
    /// Relative directories known to exist as real directories under `out`.
    known: BTreeSet<String>,
    /// Partial files and where they go.
    staged: Vec<(PathBuf, PathBuf)>,
}

/// A file being written under its partial name.
#[derive(Debug)]
pub(crate) struct StagedFile {
    writer: BufWriter<File>,
    partial: PathBuf,
}

impl Staging {
    /// Makes sure `out` is a directory, creating it (and missing parents) if need be.
    pub(crate) async fn new(out: &Path) -> Result<Self, Error> {
        let mut staging = Self {
            out: out.to_owned(),
            created: Vec::new(),
            known: BTreeSet::new(),
            staged: Vec::new(),
        };
        let mut missing = Vec::new();
        let mut path = out;
        loop {
            match fs::metadata(path).await {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(Error::NotADirectory {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(path.to_owned());
                    match path.parent() {
                        Some(parent) if !parent.as_os_str().is_empty() => path = parent,
                        _ => break,
                    }
                }
                Err(source) => {
                    return Err(Error::CreateDir {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        for path in missing.into_iter().rev() {
            match fs::create_dir(&path).await {
                Ok(()) => staging.created.push(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(Error::CreateDir { path, source }),
            }
        }
        Ok(staging)
    }

    /// Makes sure `out/relative` is a directory, creating what is missing; an existing component
    /// that is not a directory (a file, a symbolic link) is an error, so nothing is ever written
    /// through a link.
    pub(crate) async fn dir(&mut self, relative: &str) -> Result<(), Error> {
        if self.known.contains(relative) {
            return Ok(());
        }
        let mut path = self.out.clone();
        let mut prefix = String::new();
        for part in relative.split('/') {
            path.push(part);
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.known.contains(&prefix) {
                continue;
            }
            match fs::symlink_metadata(&path).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(Error::NotADirectory { path }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path)
                        .await
                        .map_err(|source| Error::CreateDir {
                            path: path.clone(),
                            source,
                        })?;
                    self.created.push(path.clone());
                }
                Err(source) => return Err(Error::CreateDir { path, source }),
            }
            self.known.insert(prefix.clone());
        }
        Ok(())
    }

    /// Creates the partial file for `out/relative` (its parent directories too).
    pub(crate) async fn create(&mut self, relative: &str) -> Result<StagedFile, Error> {
        if let Some((parent, _)) = relative.rsplit_once('/') {
            self.dir(parent).await?;
        }
        let dest = self.out.join(relative);
        if let Ok(meta) = fs::symlink_metadata(&dest).await
            && meta.is_dir()
        {
            return Err(Error::Occupied { path: dest });
        }
        let partial = retrain_stage::partial_path(&dest);
        let write_err = |source| Error::Write {
            path: partial.clone(),
            source,
        };
        // A partial file left by a crashed run; never opened through, as it could be a link.
        match fs::remove_file(&partial).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(write_err(source)),
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await
            .map_err(write_err)?;
        self.staged.push((partial.clone(), dest));
        Ok(StagedFile {
            writer: BufWriter::with_capacity(1 << 20, file),
            partial,
        })
    }

    /// Renames every partial file into place and syncs the directories that changed.
    pub(crate) async fn commit(mut self) -> Result<usize, Error> {
        let mut parents = BTreeSet::new();
        for (partial, dest) in &self.staged {
            fs::rename(partial, dest)
                .await
                .map_err(|source| Error::Write {
                    path: dest.clone(),
                    source,
                })?;
            if let Some(parent) = dest.parent() {
                parents.insert(parent.to_owned());
            }
        }
        let n_files = self.staged.len();
        self.staged.clear();
        self.created.clear();
        for parent in parents {
            // Durable renames where the platform lets a directory be opened and synced.
            if let Ok(dir) = File::open(&parent).await {
                let _ = dir.sync_all().await;
            }
        }
        Ok(n_files)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (partial, _) in &self.staged {
            let _ = std::fs::remove_file(partial);
        }
        for dir in self.created.iter().rev() {
            // Only succeeds on an empty directory: whatever else is there stays.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl StagedFile {
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|source| Error::Write {
                path: self.partial.clone(),
                source,
            })
    }

    /// Flushes and syncs the file; it stays under its partial name until the commit.
    pub(crate) async fn finish(mut self) -> Result<(), Error> {
        let write_err = |source| Error::Write {
            path: self.partial.clone(),
            source,
        };
        self.writer.flush().await.map_err(write_err)?;
        self.writer.get_ref().sync_all().await.map_err(write_err)
    }
}
