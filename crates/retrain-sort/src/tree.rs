//! The output tree: class folders built under hidden temporary names, filled on all cores, and
//! renamed into place once complete.
//!
//! For each split and label a hidden folder `<split>/.<label>.partial/` is made at the start; images
//! are written into it as their batches are decoded (under provisional hidden names when their final
//! names cannot be known yet, renamed inside the folder later). When every batch has been read, each
//! old class folder (and anything else that is not an expected class folder) is removed, and each
//! temporary folder is renamed to its class name. A reader never sees a half-written file or a
//! half-filled folder under a class name; a killed run leaves only hidden `.*.partial` entries,
//! which the next run removes first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use retrain_pickle::Batch;
use retrain_stage::Reporter;
use sha2::{Digest as _, Sha256};

use crate::encode::encode_png;
use crate::{Error, LABELS_FILE, Names, REPORT_FILE, Split};

/// Images a worker takes at a time.
const CHUNK: usize = 64;

/// Size and SHA-256 of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub(crate) sha256: [u8; 32],
    /// A PNG of a 32×32 image is a few KiB.
    pub(crate) bytes: u32,
}

/// The output directory being written.
#[derive(Debug)]
pub(crate) struct Tree {
    /// `[split][label]`: the temporary folder of each class.
    staging: [Vec<PathBuf>; 2],
    split_dirs: [PathBuf; 2],
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

/// Removes a file, a symlink or a whole folder (symlinks are never followed).
fn remove_entry(path: &Path, file_type: fs::FileType) -> Result<(), Error> {
    let result = if file_type.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Remove {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes `dir` a real folder: a file or symlink in its place is removed first.
fn ensure_dir(dir: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(meta) => {
            tracing::warn!(path = %dir.display(), "replacing a non-folder with a folder");
            remove_entry(dir, meta.file_type())?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_owned(),
                source,
            });
        }
    }
    fs::create_dir(dir).map_err(|source| Error::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// The entries of `dir`: name (`None` when not UTF-8), path, type.
fn entries(dir: &Path) -> Result<Vec<(Option<String>, PathBuf, fs::FileType)>, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file_type = entry.file_type().map_err(|source| Error::Read {
            path: entry.path(),
            source,
        })?;
        out.push((
            entry.file_name().into_string().ok(),
            entry.path(),
            file_type,
        ));
    }
    Ok(out)
}

/// The images of a batch in chunks per class folder, handed out so that two threads rarely
/// create files in the same folder at once (creating a file locks its folder).
#[derive(Debug)]
struct WorkQueue {
    /// Per class: its rows, in order.
    rows: Vec<Vec<usize>>,
    /// Per class: how many of its rows have been handed out.
    taken: Vec<usize>,
    /// Per class: whether a thread is writing into its folder.
    busy: Vec<bool>,
}

impl WorkQueue {
    fn new(classes: &[u8], n_classes: usize) -> Self {
        let mut rows = vec![Vec::new(); n_classes];
        for (row, &class) in classes.iter().enumerate() {
            rows[usize::from(class)].push(row);
        }
        Self {
            rows,
            taken: vec![0; n_classes],
            busy: vec![false; n_classes],
        }
    }

    /// The next chunk of rows, from `class` if it has some and no other thread holds it, else
    /// from the next such class after it, else from any class with rows left; `class` is set to
    /// the class chosen and marked busy. `None` when every row has been handed out.
    fn take(&mut self, class: &mut usize) -> Option<Vec<usize>> {
        let n_classes = self.rows.len();
        let left = |c: usize| self.taken[c] < self.rows[c].len();
        let order = (0..n_classes).map(|k| (*class + k) % n_classes);
        let chosen = order
            .clone()
            .find(|&c| left(c) && !self.busy[c])
            .or_else(|| order.clone().find(|&c| left(c)))?;
        let start = self.taken[chosen];
        let end = (start + CHUNK).min(self.rows[chosen].len());
        self.taken[chosen] = end;
        self.busy[chosen] = true;
        *class = chosen;
        Some(self.rows[chosen][start..end].to_vec())
    }

    fn release(&mut self, class: usize) {
        self.busy[class] = false;
    }
}

fn lock(queue: &Mutex<WorkQueue>) -> std::sync::MutexGuard<'_, WorkQueue> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tree {
    /// Prepares `out` for a run with `n_classes` classes: removes what a killed run left (hidden
    /// entries in the split folders, partial top-level files) and makes the temporary class folders.
    /// Existing class folders stay untouched until [`Tree::publish`].
    pub(crate) fn prepare(out: &Path, n_classes: usize) -> Result<Self, Error> {
        fs::create_dir_all(out).map_err(|source| Error::CreateDir {
            path: out.to_owned(),
            source,
        })?;
        for name in [LABELS_FILE, REPORT_FILE, retrain_stage::FILE_NAME] {
            let partial = retrain_stage::partial_path(&out.join(name));
            if let Ok(meta) = fs::symlink_metadata(&partial) {
                tracing::debug!(path = %partial.display(), "removing a leftover partial file");
                remove_entry(&partial, meta.file_type())?;
            }
        }
        let split_dirs = Split::ALL.map(|split| out.join(split.dir_name()));
        let mut staging: [Vec<PathBuf>; 2] = [Vec::new(), Vec::new()];
        for (dir, staging) in split_dirs.iter().zip(&mut staging) {
            ensure_dir(dir)?;
            for (name, path, file_type) in entries(dir)? {
                if name.as_deref().is_none_or(|n| n.starts_with('.')) {
                    tracing::debug!(path = %path.display(), "removing a leftover temporary entry");
                    remove_entry(&path, file_type)?;
                }
            }
            for label in 0..n_classes {
                let path = dir.join(format!(".{label}.partial"));
                fs::create_dir(&path).map_err(|source| Error::CreateDir {
                    path: path.clone(),
                    source,
                })?;
                staging.push(path);
            }
        }
        Ok(Self {
            staging,
            split_dirs,
        })
    }

    /// Encodes and writes the images of `batch` on `threads` threads: row `r` goes to the temporary
    /// folder of class `classes[r]` as `names[r]`. Returns each file's digest, by row.
    pub(crate) fn write_batch(
        &self,
        split: Split,
        batch: &Batch,
        classes: &[u8],
        names: &Names,
        threads: usize,
        rep: &dyn Reporter,
    ) -> Result<Vec<FileDigest>, Error> {
        let n_images = batch.len();
        debug_assert_eq!(classes.len(), n_images);
        let dirs = &self.staging[split as usize];
        let queue = Mutex::new(WorkQueue::new(classes, dirs.len()));
        let failed = AtomicBool::new(false);
        let worker = |first_class: usize| -> Result<Vec<(usize, FileDigest)>, Error> {
            let mut png = Vec::with_capacity(8 << 10);
            let mut done = Vec::with_capacity(n_images / threads.max(1) + CHUNK);
            let mut class = first_class;
            while !failed.load(Ordering::Relaxed) {
                let Some(rows) = lock(&queue).take(&mut class) else {
                    break;
                };
                let result: Result<(), Error> = rows.iter().try_for_each(|&row| {
                    let path = dirs[class].join(names.get(row));
                    encode_png(batch.image(row), &mut png).map_err(|source| Error::Png {
                        path: path.clone(),
                        source,
                    })?;
                    fs::write(&path, &png).map_err(io_err(&path))?;
                    let digest = FileDigest {
                        sha256: Sha256::digest(&png).into(),
                        bytes: png.len() as u32,
                    };
                    done.push((row, digest));
                    Ok(())
                });
                lock(&queue).release(class);
                result?;
                rep.advance(rows.len() as u64);
            }
            Ok(done)
        };
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|idx| {
                    let worker = &worker;
                    let failed = &failed;
                    let first_class = idx * dirs.len() / threads.max(1);
                    scope.spawn(move || {
                        let result = worker(first_class);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut digests = vec![None; n_images];
        for result in results {
            for (row, digest) in result? {
                digests[row] = Some(digest);
            }
        }
        Ok(digests
            .into_iter()
            .map(|d| d.expect("every row was written"))
            .collect())
    }

    /// Renames files inside the temporary class folders of `split`: each `(class, from, to)`, on
    /// `threads` threads. No `to` may exist (provisional names are hidden, final ones never are).
    pub(crate) fn rename_within(
        &self,
        split: Split,
        moves: &[(usize, String, String)],
        threads: usize,
    ) -> Result<(), Error> {
        let dirs = &self.staging[split as usize];
        let chunk = moves.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = moves
                .chunks(chunk)
                .map(|moves| {
                    scope.spawn(move || {
                        for (class, from, to) in moves {
                            let (from, to) = (dirs[*class].join(from), dirs[*class].join(to));
                            fs::rename(&from, &to).map_err(|source| Error::Rename {
                                from,
                                to,
                                source,
                            })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        })
    }

    /// Puts the class folders in place: in each split folder, removes every entry that is not a
    /// temporary folder of ours (old class folders, stray files, folders of classes that no longer
    /// exist), then renames each temporary folder to its class name.
    pub(crate) fn publish(&self, class_names: &[String]) -> Result<(), Error> {
        for (dir, staging) in self.split_dirs.iter().zip(&self.staging) {
            for (name, path, file_type) in entries(dir)? {
                if name.as_deref().is_some_and(|n| n.starts_with('.')) {
                    continue; // our temporary folders: everything else hidden went at the start
                }
                tracing::debug!(path = %path.display(), "removing the previous entry");
                remove_entry(&path, file_type)?;
            }
            for (from, name) in staging.iter().zip(class_names) {
                let to = dir.join(name);
                fs::rename(from, &to).map_err(|source| Error::Rename {
                    from: from.clone(),
                    to,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The number of regular, non-hidden files in each class folder of `split`, after
    /// [`Tree::publish`].
    pub(crate) fn count_files(
        &self,
        split: Split,
        class_names: &[String],
    ) -> Result<Vec<u64>, Error> {
        let dir = &self.split_dirs[split as usize];
        class_names
            .iter()
            .map(|name| {
                let mut n_files = 0;
                for (name, _, file_type) in entries(&dir.join(name))? {
                    if file_type.is_file() && name.is_some_and(|n| !n.starts_with('.')) {
                        n_files += 1;
                    }
                }
                Ok(n_files)
            })
            .collect()
    }

    /// Removes the temporary folders after a failure (best effort: the next run removes them too).
    pub(crate) fn abandon(&self) {
        for path in self.staging.iter().flatten() {
            if let Err(e) = fs::remove_dir_all(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary folder");
            }
        }
    }
}
