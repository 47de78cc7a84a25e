//! CIFAR-10/100 python batches sorted into class folders of PNG images, and a labels file.
//!
//! [`run`] reads the batches (from the extracted folder, or straight from the `.tar.gz` with
//! nothing extracted) and writes, under [`Config::out`]:
//!
//! ```text
//! train_dir/<class>/<name>.png        every image of data_batch_1..5 (CIFAR-100: train)
//! validation_dir/<class>/<name>.png   every image of test_batch (CIFAR-100: test)
//! labels.txt                          the class names in label order, one per line, each ending in \n
//! sort-report.json                    counts per split and class, collisions, sanitised names
//! manifest.json                       written last
//! ```
//!
//! Unlike the reference recipe, images are the right way up (pixel (y, x) channel c is the CIFAR
//! row's byte `c*1024 + y*32 + x`), no image is lost to a file-name collision (see
//! [`names::collision_name`]), names from the pickle are made safe ([`names`]), and `labels.txt`
//! has its newlines. The output does not depend on the thread count: names are assigned in batch
//! order and every PNG is encoded with the same settings ([`encode`]). A rerun over a tree that a
//! killed run left replaces it whole (see [Output tree](#output-tree)).
//!
//! # Output tree
//!
//! Each class folder is built as `<split>/.<label>.partial/`, then swapped in for the old one, so a
//! reader sees either the old or the new folder, never a mix, and a killed run leaves only hidden
//! entries (removed by the next run). Entries of the split folders that are not expected class
//! folders are removed; nothing else in the output directory is touched. No image is synced to
//! disk one by one: the guarantee is against the process dying, and `manifest.json` (written last,
//! synced) vouches for a finished run.
//!
//! File names are given in batch order (`data_batch_1` row 0 first). From a folder the batches are
//! read in that order; from an archive they come in archive order (`data_batch_4` first in the real
//! one), so a batch that arrives before an earlier one of its split is written under provisional
//! hidden names and renamed when its turn comes. The bytes are the same either way.
//!
//! # Memory
//!
//! At most one file's bytes and one batch's pixels are resident: the reader reads each file into
//! the buffer the previous one was read into (handed back once that one is decoded), and
//! [`retrain_pickle::decode_batch`] reorders the pixels inside the pickle's own copy, which is freed
//! once the batch is written. That is about 61 MB for a 10,000-image batch (310 MB for CIFAR-100's
//! `train`). Reusing the file buffer also keeps freed memory from piling up: with a new buffer per
//! file, whose size varies from batch to batch, glibc kept freed ones resident and CIFAR-10 peaked
//! at 117 MiB instead of 72 MiB. Besides that the stage keeps about 130 bytes per image (its final
//! name, its digest) until its split is complete.

pub mod encode;
pub mod names;
pub mod report;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;

use retrain_pickle::{Batch, Meta};
use retrain_stage::{Digest, Manifest, Reporter};
use sha2::{Digest as _, Sha256};

use crate::names::Namer;
use crate::report::{Collision, Count, ImageRef, Report, Sanitised, SanitisedClass, SplitReport};
use crate::tree::{FileDigest, Tree};

/// The stage's name in its manifest.
pub const STAGE: &str = "sort";
/// The labels file: class names in label order, one per line, each ending in `\n`.
pub const LABELS_FILE: &str = "labels.txt";
/// The JSON [`Report`].
pub const REPORT_FILE: &str = "sort-report.json";

/// Which dataset's batches to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dataset {
    /// `data_batch_1..5`, `test_batch`, `batches.meta` in `cifar-10-batches-py/`.
    Cifar10,
    /// `train`, `test`, `meta` in `cifar-100-python/`.
    Cifar100,
}

impl Dataset {
    /// The batch files in batch order, with the split each one goes to.
    pub fn batches(self) -> &'static [(&'static str, Split)] {
        match self {
            Self::Cifar10 => &[
                ("data_batch_1", Split::Train),
                ("data_batch_2", Split::Train),
                ("data_batch_3", Split::Train),
                ("data_batch_4", Split::Train),
                ("data_batch_5", Split::Train),
                ("test_batch", Split::Validation),
            ],
            Self::Cifar100 => &[("train", Split::Train), ("test", Split::Validation)],
        }
    }

    /// The file holding the class names.
    pub fn meta_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta",
            Self::Cifar100 => "meta",
        }
    }

    /// The folder the archive's members sit in.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-py",
            Self::Cifar100 => "cifar-100-python",
        }
    }

    fn pickle(self) -> retrain_pickle::Dataset {
        match self {
            Self::Cifar10 => retrain_pickle::Dataset::Cifar10,
            Self::Cifar100 => retrain_pickle::Dataset::Cifar100,
        }
    }

    fn extract(self) -> retrain_extract::Dataset {
        match self {
            Self::Cifar10 => retrain_extract::Dataset::Cifar10,
            Self::Cifar100 => retrain_extract::Dataset::Cifar100,
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        })
    }
}

impl FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cifar10" => Ok(Self::Cifar10),
            "cifar100" => Ok(Self::Cifar100),
            other => Err(format!(
                "unknown dataset {other:?} (expected cifar10 or cifar100)"
            )),
        }
    }
}

/// Which labels name the class folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Labels {
    /// CIFAR-10's labels; CIFAR-100's 100 fine labels.
    Fine,
    /// CIFAR-100's 20 superclasses.
    Coarse,
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fine => "fine",
            Self::Coarse => "coarse",
        })
    }
}

impl FromStr for Labels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fine" => Ok(Self::Fine),
            "coarse" => Ok(Self::Coarse),
            other => Err(format!(
                "unknown labels {other:?} (expected fine or coarse)"
            )),
        }
    }
}

/// Where the images go: the training or the validation folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    Train = 0,
    Validation = 1,
}

impl Split {
    pub const ALL: [Self; 2] = [Self::Train, Self::Validation];

    /// The folder's name in the output directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Train => "train_dir",
            Self::Validation => "validation_dir",
        }
    }
}

/// Where the batches come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The extracted folder (`cifar-10-batches-py`, `cifar-100-python`); recorded as input `input`.
    Dir(PathBuf),
    /// The `.tar.gz`, read as a stream with nothing extracted; recorded as input `from-archive`.
    Archive(PathBuf),
}

/// What to sort, where.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// Output directory (created if missing).
    pub out: PathBuf,
    pub dataset: Dataset,
    pub labels: Labels,
    /// Threads encoding and writing images; 0: one per core. The output does not depend on it.
    pub threads: usize,
}

impl Config {
    /// CIFAR-10, fine labels, all cores.
    pub fn new(source: Source, out: PathBuf) -> Self {
        Self {
            source,
            out,
            dataset: Dataset::Cifar10,
            labels: Labels::Fine,
            threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("coarse labels exist only in cifar100, not in {0}")]
    CoarseLabels(Dataset),
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Decode(#[from] retrain_pickle::Error),
    #[error(transparent)]
    Archive(#[from] retrain_extract::Error),
    #[error("{}: no {file:?}", input.display())]
    Missing { input: PathBuf, file: String },
    #[error(
        "{}: classes {first} and {second} ({first_name:?}, {second_name:?}) would share the folder {folder:?}",
        path.display()
    )]
    DuplicateClass {
        path: PathBuf,
        first: usize,
        second: usize,
        first_name: String,
        second_name: String,
        folder: String,
    },
    #[error("creating {}", path.display())]
    CreateDir {
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
    #[error("encoding {}", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error("removing {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("renaming {} to {}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: {found} files after writing, expected {expected}",
        path.display()
    )]
    Count {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{}: symbolic links and special files are not allowed in the input", path.display())]
    FileType { path: PathBuf },
    #[error("{}: path is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] retrain_stage::Error),
}

/// Reads the batches, writes the class folders, `labels.txt`, `sort-report.json` and, last,
/// `manifest.json`. On error the previous class folders are left as they were (without a manifest).
#[tracing::instrument(skip_all, fields(out = %cfg.out.display(), dataset = %cfg.dataset, labels = %cfg.labels))]
pub fn run(cfg: &Config, rep: &dyn Reporter) -> Result<Manifest, Error> {
    if cfg.labels == Labels::Coarse && cfg.dataset != Dataset::Cifar100 {
        return Err(Error::CoarseLabels(cfg.dataset));
    }
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    std::fs::create_dir_all(&cfg.out).map_err(|source| Error::CreateDir {
        path: cfg.out.clone(),
        source,
    })?;
    Manifest::remove(&cfg.out)?;
    let n_classes = match (cfg.dataset, cfg.labels) {
        (Dataset::Cifar10, _) => 10,
        (Dataset::Cifar100, Labels::Fine) => 100,
        (Dataset::Cifar100, Labels::Coarse) => 20,
    };
    let tree = Tree::prepare(&cfg.out, n_classes)?;
    let mut sorter = Sorter::new(cfg, threads, &tree, n_classes);
    tracing::debug!(threads, "sorting");
    let result = sorter
        .read(rep)
        .and_then(|input| Ok((input, sorter.finish()?)));
    let (input, sorted) = match result {
        Ok(done) => done,
        Err(e) => {
            tree.abandon();
            return Err(e);
        }
    };

    let labels_path = cfg.out.join(LABELS_FILE);
    let mut labels = String::new();
    for name in &sorted.report.class_names {
        labels.push_str(name);
        labels.push('\n');
    }
    retrain_stage::write_atomic(&labels_path, labels.as_bytes()).map_err(|source| {
        Error::Write {
            path: labels_path.clone(),
            source,
        }
    })?;
    let report_path = cfg.out.join(REPORT_FILE);
    let mut json = serde_json::to_string_pretty(&sorted.report).expect("a report serialises");
    json.push('\n');
    retrain_stage::write_atomic(&report_path, json.as_bytes()).map_err(|source| Error::Write {
        path: report_path.clone(),
        source,
    })?;

    let mut manifest = Manifest::new(STAGE, env!("CARGO_PKG_VERSION"));
    manifest
        .param("dataset", cfg.dataset)
        .param("labels", cfg.labels);
    manifest.inputs.insert(input.0.to_owned(), input.1);
    for (split, digest) in Split::ALL.into_iter().zip(sorted.digests) {
        manifest.output_digest(split.dir_name(), digest);
    }
    manifest.output(&cfg.out, LABELS_FILE)?;
    manifest.output(&cfg.out, REPORT_FILE)?;
    manifest.write(&cfg.out)?;
    let report = &sorted.report;
    tracing::info!(
        out = %cfg.out.display(),
        train = report.splits[0].images,
        validation = report.splits[1].images,
        classes = report.class_names.len(),
        collisions = report.collisions.len(),
        sanitised = report.sanitised.len(),
        "sorted images into class folders"
    );
    Ok(manifest)
}

/// The names of a batch's images, in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Names {
    text: String,
    ends: Vec<u32>,
}

impl Names {
    pub(crate) fn push(&mut self, name: &str) {
        self.text.push_str(name);
        self.ends.push(self.text.len() as u32);
    }

    pub(crate) fn get(&self, idx: usize) -> &str {
        let start = if idx == 0 {
            0
        } else {
            self.ends[idx - 1] as usize
        };
        &self.text[start..self.ends[idx] as usize]
    }
}

/// Where a batch is.
#[derive(Debug)]
enum BatchState {
    Unseen,
    /// Written under provisional names (`.b<batch>r<row>`) because an earlier batch of its split
    /// has not been read yet; named when that one arrives.
    Pending {
        wanted: Names,
        classes: Vec<u8>,
        digests: Vec<FileDigest>,
    },
    /// Written under its final names.
    Named {
        digests: Vec<FileDigest>,
    },
    /// Its split is summed up ([`Sorter::sum_up`]).
    Summed,
}

/// The provisional name of an image written before its name can be known.
fn provisional_name(batch_idx: usize, row: usize) -> String {
    format!(".b{batch_idx}r{row}")
}

/// A file-name collision, by label and origin.
#[derive(Debug)]
struct RawCollision {
    split: Split,
    class: usize,
    name: String,
    kept: names::Origin,
    image: names::Origin,
    written: String,
}

/// One split's naming: its batches in batch order, the next one to name, and the names so far.
#[derive(Debug)]
struct SplitState {
    batches: Vec<usize>,
    next: usize,
    namer: Namer,
    /// Once every batch is named and the class names are known: what the split holds. The names
    /// and file digests are dropped then, to keep memory for the batches still to decode.
    done: Option<SplitDone>,
}

/// A named split, summed up.
#[derive(Debug)]
struct SplitDone {
    /// Of the class folders.
    digest: Digest,
    /// Images per class, in label order.
    class_counts: Vec<u64>,
    /// Images per batch, in batch order.
    batches: Vec<Count>,
}

/// What [`Sorter::finish`] hands back.
struct Sorted {
    report: Report,
    /// `train_dir`, `validation_dir`.
    digests: [Digest; 2],
}

struct Sorter<'a> {
    cfg: &'a Config,
    threads: usize,
    tree: &'a Tree,
    /// By batch index.
    batches: Vec<BatchState>,
    /// By split. Names are given in batch order: a batch that arrives before an earlier one of its
    /// split (archive order) is written under provisional names and renamed when its turn comes.
    splits: [SplitState; 2],
    /// The meta file's class names, and where they came from.
    meta: Option<(Meta, PathBuf)>,
    /// The class folder names, once the meta file has been read.
    class_names: Option<ClassNames>,
    collisions: Vec<RawCollision>,
    sanitised: Vec<Sanitised>,
}

/// Class folder names in label order, and those that had to be sanitised.
#[derive(Debug, Clone)]
struct ClassNames {
    names: Vec<String>,
    sanitised: Vec<SanitisedClass>,
}

impl<'a> Sorter<'a> {
    fn new(cfg: &'a Config, threads: usize, tree: &'a Tree, n_classes: usize) -> Self {
        let batches = cfg.dataset.batches();
        let split_state = |split: Split| SplitState {
            batches: (0..batches.len())
                .filter(|&idx| batches[idx].1 == split)
                .collect(),
            next: 0,
            namer: Namer::new(n_classes),
            done: None,
        };
        Self {
            cfg,
            threads,
            tree,
            batches: batches.iter().map(|_| BatchState::Unseen).collect(),
            splits: Split::ALL.map(split_state),
            meta: None,
            class_names: None,
            collisions: Vec::new(),
            sanitised: Vec::new(),
        }
    }

    /// Reads the input on a thread of its own and decodes and writes each batch as it comes, so
    /// that reading (and, from an archive, decompressing) the next batch overlaps writing this one.
    /// The reader hands over one file at a time and waits until it is decoded and its buffer handed
    /// back, so no more than one batch's bytes and one batch's pixels are resident at once. Returns
    /// the input's flag and digest.
    fn read(&mut self, rep: &dyn Reporter) -> Result<(&'static str, Digest), Error> {
        let (tx, rx) = mpsc::sync_channel::<Input>(0);
        let (ack_tx, ack_rx) = mpsc::sync_channel::<Vec<u8>>(0);
        let dataset = self.cfg.dataset;
        let source = self.cfg.source.clone();
        let (produced, consumed) = std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                let handover = Handover { tx, ack: ack_rx };
                match &source {
                    Source::Dir(dir) => read_dir(dir, dataset, &handover).map(|()| None),
                    Source::Archive(archive) => read_archive(archive, dataset, &handover),
                }
            });
            let consumed = self.consume(rx, ack_tx, rep);
            let produced = producer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (produced, consumed)
        });
        // A decoding or writing error comes first: the reader stops because of it.
        let known = consumed?;
        let archive_digest = produced?;
        let (source, folder) = match &self.cfg.source {
            Source::Dir(dir) => (dir, None),
            Source::Archive(archive) => (archive, Some(dataset.folder())),
        };
        let missing = |name: &str| Error::Missing {
            input: source.clone(),
            file: folder.map_or(name.to_owned(), |folder| format!("{folder}/{name}")),
        };
        if self.meta.is_none() {
            return Err(missing(dataset.meta_file()));
        }
        if let Some(idx) = self
            .batches
            .iter()
            .position(|b| matches!(b, BatchState::Unseen))
        {
            return Err(missing(dataset.batches()[idx].0));
        }
        match (&self.cfg.source, archive_digest) {
            (Source::Dir(dir), _) => Ok(("input", dir_digest(dir, &known)?)),
            (Source::Archive(_), Some(digest)) => Ok(("from-archive", digest)),
            (Source::Archive(_), None) => {
                unreachable!("the reader stops early only when decoding fails")
            }
        }
    }

    /// Decodes what the reader hands over (hashing it meanwhile, on another core, when asked),
    /// hands the file's buffer back once decoded (the reader then reads the next file into it), and
    /// writes the batch. Returns the digests of the files hashed, by name.
    fn consume(
        &mut self,
        rx: mpsc::Receiver<Input>,
        ack: mpsc::SyncSender<Vec<u8>>,
        rep: &dyn Reporter,
    ) -> Result<BTreeMap<String, Digest>, Error> {
        let pickle = self.cfg.dataset.pickle();
        let mut known = BTreeMap::new();
        for input in rx {
            let (decoded, digest) = std::thread::scope(|scope| {
                let hashing = input
                    .digest_as
                    .map(|_| scope.spawn(|| sha256(&input.bytes)));
                let decoded = match input.batch_idx {
                    None => retrain_pickle::decode_meta(&input.bytes, pickle, &input.origin)
                        .map(Decoded::Meta),
                    Some(_) => retrain_pickle::decode_batch(&input.bytes, pickle, &input.origin)
                        .map(Decoded::Batch),
                };
                let digest = hashing.map(|h| h.join().expect("hashing does not panic"));
                (decoded, digest)
            });
            let decoded = decoded?;
            if let (Some(name), Some(digest)) = (input.digest_as, digest) {
                known.insert(name.to_owned(), digest);
            }
            let _ = ack.send(input.bytes);
            match (decoded, input.batch_idx) {
                (Decoded::Meta(meta), _) => self.meta = Some((meta, input.origin)),
                (Decoded::Batch(batch), Some(batch_idx)) => self.add(batch_idx, &batch, rep)?,
                (Decoded::Batch(_), None) => unreachable!("a batch has an index"),
            }
        }
        Ok(known)
    }

    /// Writes one decoded batch into the temporary class folders: under its final names when every
    /// earlier batch of its split has been named, else under provisional ones.
    fn add(&mut self, batch_idx: usize, batch: &Batch, rep: &dyn Reporter) -> Result<(), Error> {
        let (batch_name, split) = self.cfg.dataset.batches()[batch_idx];
        let classes = match self.cfg.labels {
            Labels::Fine => &batch.labels,
            Labels::Coarse => &batch.coarse_labels,
        };
        let mut wanted = Names::default();
        for (row, original) in batch.filenames.iter().enumerate() {
            let name = names::sanitise_file_name(original);
            if name != *original {
                self.sanitised.push(Sanitised {
                    split: split.dir_name().to_owned(),
                    image: ImageRef {
                        batch: batch_name.to_owned(),
                        row,
                    },
                    original: original.clone(),
                    name: name.clone(),
                });
            }
            wanted.push(&name);
        }
        let state = &self.splits[split as usize];
        let in_turn = state.batches[state.next] == batch_idx;
        let mut names = Names::default();
        if in_turn {
            for (row, &class) in classes.iter().enumerate() {
                let name = self.assign(split, batch_idx, row, class, wanted.get(row));
                names.push(&name);
            }
        } else {
            tracing::debug!(
                batch = batch_name,
                "an earlier batch is still to come: provisional names"
            );
            for row in 0..batch.len() {
                names.push(&provisional_name(batch_idx, row));
            }
        }
        rep.start(batch.len() as u64, &format!("sorting {batch_name}"));
        let digests = self
            .tree
            .write_batch(split, batch, classes, &names, self.threads, rep)?;
        rep.finish();
        tracing::debug!(batch = batch_name, images = batch.len(), "wrote batch");
        if in_turn {
            self.batches[batch_idx] = BatchState::Named { digests };
            self.splits[split as usize].next += 1;
            self.catch_up(split)?;
            if self.meta.is_some() {
                self.sum_up(split)?;
            }
        } else {
            self.batches[batch_idx] = BatchState::Pending {
                wanted,
                classes: classes.clone(),
                digests,
            };
        }
        Ok(())
    }

    /// The final name of an image, recording a collision.
    fn assign(
        &mut self,
        split: Split,
        batch_idx: usize,
        row: usize,
        class: u8,
        wanted: &str,
    ) -> String {
        let batch_name = self.cfg.dataset.batches()[batch_idx].0;
        let class = usize::from(class);
        let origin = (batch_idx as u32, row as u32);
        let assigned = self.splits[split as usize]
            .namer
            .assign(class, wanted, batch_name, origin);
        if let Some(kept) = assigned.holder {
            tracing::debug!(
                split = split.dir_name(),
                class,
                name = %wanted,
                batch = batch_name,
                row,
                written = %assigned.name,
                "file-name collision"
            );
            self.collisions.push(RawCollision {
                split,
                class,
                name: wanted.to_owned(),
                kept,
                image: origin,
                written: assigned.name.clone(),
            });
        }
        assigned.name
    }

    /// Names the batches of `split` that were written under provisional names and whose turn has
    /// come, renaming their files.
    fn catch_up(&mut self, split: Split) -> Result<(), Error> {
        loop {
            let state = &self.splits[split as usize];
            let Some(&batch_idx) = state.batches.get(state.next) else {
                return Ok(());
            };
            let BatchState::Pending { .. } = self.batches[batch_idx] else {
                return Ok(());
            };
            let BatchState::Pending {
                wanted,
                classes,
                digests,
            } = std::mem::replace(&mut self.batches[batch_idx], BatchState::Unseen)
            else {
                unreachable!("checked above");
            };
            let mut moves = Vec::with_capacity(classes.len());
            for (row, &class) in classes.iter().enumerate() {
                let name = self.assign(split, batch_idx, row, class, wanted.get(row));
                moves.push((usize::from(class), provisional_name(batch_idx, row), name));
            }
            tracing::debug!(
                batch = self.cfg.dataset.batches()[batch_idx].0,
                files = moves.len(),
                "renaming to final names"
            );
            self.tree.rename_within(split, &moves, self.threads)?;
            self.batches[batch_idx] = BatchState::Named { digests };
            self.splits[split as usize].next += 1;
        }
    }

    /// The class folder names from the meta file: sanitised, and unique (two classes whose names
    /// sanitise alike are an error naming the meta file).
    fn class_names(&mut self) -> Result<&ClassNames, Error> {
        if self.class_names.is_none() {
            let (meta, meta_path) = self.meta.as_ref().expect("the meta file was read");
            let raw_names = match self.cfg.labels {
                Labels::Fine => &meta.label_names,
                Labels::Coarse => &meta.coarse_label_names,
            };
            let mut names = Vec::with_capacity(raw_names.len());
            let mut sanitised = Vec::new();
            let mut folders = BTreeMap::new();
            for (label, original) in raw_names.iter().enumerate() {
                let name = names::sanitise_class_name(original);
                if let Some(&first) = folders.get(&name) {
                    return Err(Error::DuplicateClass {
                        path: meta_path.clone(),
                        first,
                        second: label,
                        first_name: raw_names[first].clone(),
                        second_name: original.clone(),
                        folder: name,
                    });
                }
                folders.insert(name.clone(), label);
                if name != *original {
                    tracing::warn!(label, original = %original.escape_debug(), folder = %name, "class name sanitised");
                    sanitised.push(SanitisedClass {
                        label,
                        original: original.clone(),
                        name: name.clone(),
                    });
                }
                names.push(name);
            }
            self.class_names = Some(ClassNames { names, sanitised });
        }
        Ok(self.class_names.as_ref().expect("just set"))
    }

    /// Sums up `split` once all its batches are named: digest of its class folders (as
    /// [`retrain_stage::digest_path`] will find them once in place), counts; then drops its names
    /// and file digests.
    fn sum_up(&mut self, split: Split) -> Result<(), Error> {
        let state = &self.splits[split as usize];
        if state.done.is_some() || state.next < state.batches.len() {
            return Ok(());
        }
        let class_names = self.class_names()?.names.clone();
        let state = &self.splits[split as usize];
        // The digest's listing is sorted by `<class>/<name>`: class by class in the byte order of
        // `<class>/` (no class name holds a `/`), each class's names in byte order, as the namer
        // holds them. No listing is built.
        let mut class_order: Vec<usize> = (0..class_names.len()).collect();
        class_order.sort_by_cached_key(|&class| format!("{}/", class_names[class]));
        let mut listing = Listing::default();
        for class in class_order {
            for (name, (batch_idx, row)) in state.namer.names(class) {
                let BatchState::Named { digests } = &self.batches[batch_idx as usize] else {
                    unreachable!("every batch of the split is named");
                };
                let digest = &digests[row as usize];
                listing.add(
                    &class_names[class],
                    name,
                    &digest.sha256,
                    digest.bytes.into(),
                );
            }
        }
        let class_counts: Vec<u64> = (0..class_names.len())
            .map(|class| state.namer.len(class) as u64)
            .collect();
        let dataset = self.cfg.dataset;
        let mut batches = Vec::new();
        for &batch_idx in &state.batches {
            let BatchState::Named { digests } = &self.batches[batch_idx] else {
                unreachable!("every batch of the split is named");
            };
            batches.push(Count {
                name: dataset.batches()[batch_idx].0.to_owned(),
                images: digests.len() as u64,
            });
        }
        let images: u64 = batches.iter().map(|b| b.images).sum();
        let counted: u64 = class_counts.iter().sum();
        if counted != images {
            return Err(Error::Count {
                path: self.cfg.out.join(split.dir_name()),
                found: counted,
                expected: images,
            });
        }
        let done = SplitDone {
            digest: listing.finish(),
            class_counts,
            batches,
        };
        tracing::debug!(split = split.dir_name(), images, "split complete");
        let state = &mut self.splits[split as usize];
        state.namer = Namer::new(0);
        state.done = Some(done);
        for &batch_idx in &state.batches {
            self.batches[batch_idx] = BatchState::Summed; // its digests are in the split's digest
        }
        Ok(())
    }

    /// Puts the class folders in place, checks the counts on disk, and reports.
    fn finish(mut self) -> Result<Sorted, Error> {
        let dataset = self.cfg.dataset;
        for split in Split::ALL {
            self.sum_up(split)?;
        }
        let ClassNames {
            names: class_names,
            sanitised: sanitised_classes,
        } = self.class_names()?.clone();
        let batch_ref = |(batch_idx, row): names::Origin| ImageRef {
            batch: dataset.batches()[batch_idx as usize].0.to_owned(),
            row: row as usize,
        };
        let collisions: Vec<Collision> = self
            .collisions
            .into_iter()
            .map(|c| Collision {
                split: c.split.dir_name().to_owned(),
                class: class_names[c.class].clone(),
                name: c.name,
                kept: batch_ref(c.kept),
                image: batch_ref(c.image),
                written: c.written,
            })
            .collect();
        if let Some(first) = collisions.first() {
            tracing::info!(
                collisions = collisions.len(),
                example = %format!("{}/{}/{} ({} row {})", first.split, first.class, first.written, first.image.batch, first.image.row),
                "kept images whose file names collide under suffixed names (listed in {REPORT_FILE})"
            );
        }
        if let Some(first) = self.sanitised.first() {
            tracing::warn!(
                names = self.sanitised.len(),
                example = %format!("{:?} → {:?}", first.original, first.name),
                "sanitised unsafe file names from the pickles (listed in {REPORT_FILE})"
            );
        }

        self.tree.publish(&class_names)?;

        let mut splits = Vec::new();
        let mut digests = Vec::new();
        for (split, state) in Split::ALL.into_iter().zip(self.splits) {
            let done = state.done.expect("every split was summed up");
            let on_disk = self.tree.count_files(split, &class_names)?;
            for ((class_name, &expected), &found) in
                class_names.iter().zip(&done.class_counts).zip(&on_disk)
            {
                if found != expected {
                    return Err(Error::Count {
                        path: self.cfg.out.join(split.dir_name()).join(class_name),
                        found,
                        expected,
                    });
                }
            }
            let images = done.class_counts.iter().sum();
            tracing::info!(split = split.dir_name(), images, "counted");
            splits.push(SplitReport {
                dir: split.dir_name().to_owned(),
                images,
                batches: done.batches,
                classes: class_names
                    .iter()
                    .zip(&done.class_counts)
                    .map(|(name, &images)| Count {
                        name: name.clone(),
                        images,
                    })
                    .collect(),
            });
            digests.push(done.digest);
        }
        let report = Report {
            dataset: dataset.to_string(),
            labels: self.cfg.labels.to_string(),
            class_names,
            splits,
            collisions,
            sanitised: self.sanitised,
            sanitised_classes,
        };
        let digests: [Digest; 2] = digests.try_into().expect("two splits");
        Ok(Sorted { report, digests })
    }
}

/// A file the reader hands over to be decoded.
#[derive(Debug)]
struct Input {
    /// `None`: the meta file.
    batch_idx: Option<usize>,
    /// Names the file in errors.
    origin: PathBuf,
    bytes: Vec<u8>,
    /// Hash the bytes (while decoding them), under this name in the input folder.
    digest_as: Option<&'static str>,
}

/// A decoded file.
#[derive(Debug)]
enum Decoded {
    Meta(Meta),
    Batch(Batch),
}

/// The reader's end of the handover: send a file, wait until it is decoded, get its buffer back.
struct Handover {
    tx: mpsc::SyncSender<Input>,
    ack: mpsc::Receiver<Vec<u8>>,
}

impl Handover {
    /// The file's buffer back, to read the next file into; `None` when the decoding side has
    /// stopped (it failed, and says why).
    fn send(&self, input: Input) -> Option<Vec<u8>> {
        self.tx.send(input).ok()?;
        self.ack.recv().ok()
    }
}

/// Reads the meta file and the batches from a folder, in batch order, each into the buffer the
/// previous one was read into, until the decoding side stops.
fn read_dir(dir: &Path, dataset: Dataset, handover: &Handover) -> Result<(), Error> {
    let files = std::iter::once((dataset.meta_file(), None)).chain(
        dataset
            .batches()
            .iter()
            .enumerate()
            .map(|(batch_idx, (name, _))| (*name, Some(batch_idx))),
    );
    let mut buffer = Vec::new();
    for (name, batch_idx) in files {
        let origin = dir.join(name);
        read_into(&origin, &mut buffer).map_err(|source| Error::Read {
            path: origin.clone(),
            source,
        })?;
        let input = Input {
            batch_idx,
            origin,
            bytes: std::mem::take(&mut buffer),
            digest_as: Some(name),
        };
        match handover.send(input) {
            Some(back) => buffer = back,
            None => break,
        }
    }
    Ok(())
}

/// Replaces what `buffer` holds by the file's bytes, growing it only when the file is larger than
/// any before.
fn read_into(path: &Path, buffer: &mut Vec<u8>) -> io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    buffer.clear();
    buffer.try_reserve_exact(len).map_err(io::Error::other)?;
    file.read_to_end(buffer)?;
    Ok(())
}

/// Reads the meta file and the batches straight from the archive, in archive order, each into the
/// buffer the previous one was read into, with `retrain-extract`'s policy for the dataset (exactly
/// its members; gzip CRC checked; member md5s checked when the archive is the real one). Returns
/// the archive's digest, or `None` when the decoding side stopped.
fn read_archive(
    archive: &Path,
    dataset: Dataset,
    handover: &Handover,
) -> Result<Option<Digest>, Error> {
    let policy = retrain_extract::Policy::dataset(dataset.extract());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|source| Error::Read {
            path: archive.to_owned(),
            source,
        })?;
    runtime.block_on(async {
        let mut reader = retrain_extract::MemberReader::open(archive, policy).await?;
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Some(mut member) = reader.next_member().await? {
            let Some(file) = member
                .path()
                .strip_prefix(dataset.folder())
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                continue; // read, hashed and checked by the next `next_member`
            };
            let batch_idx = if file == dataset.meta_file() {
                None
            } else if let Some(batch_idx) = dataset.batches().iter().position(|(b, _)| *b == file) {
                Some(batch_idx)
            } else {
                continue;
            };
            let origin = PathBuf::from(format!("{} member {}", archive.display(), member.path()));
            buffer.clear();
            // The size comes from the tar header: reserve at most 256 MiB up front (CIFAR-100's
            // `train` is about 155 MB); a larger member grows the buffer within `Policy::max_bytes`.
            buffer.reserve_exact(usize::try_from(member.size().min(256 << 20)).unwrap_or(0));
            loop {
                let n = member.read_chunk(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let input = Input {
                batch_idx,
                origin,
                bytes: std::mem::take(&mut buffer),
                digest_as: None,
            };
            match handover.send(input) {
                Some(back) => buffer = back,
                None => return Ok(None),
            }
        }
        Ok(Some(reader.finish().await?.digest()))
    })
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest {
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    }
}

/// A directory digest as [`retrain_stage::digest_path`] defines it, fed one file at a time in the
/// listing's order: `<relative path>\0<file sha256>\n` per file, and the total size.
#[derive(Debug, Default)]
struct Listing {
    hasher: Sha256,
    bytes: u64,
}

impl Listing {
    /// Adds `dir/name` (`dir` empty: `name`) with its SHA-256 and size.
    fn add(&mut self, dir: &str, name: &str, sha256: &[u8; 32], bytes: u64) {
        let mut hex_buf = [0u8; 64];
        hex::encode_to_slice(sha256, &mut hex_buf).expect("64 hex digits");
        if !dir.is_empty() {
            self.hasher.update(dir.as_bytes());
            self.hasher.update(b"/");
        }
        self.hasher.update(name.as_bytes());
        self.hasher.update(b"\0");
        self.hasher.update(hex_buf);
        self.hasher.update(b"\n");
        self.bytes += bytes;
    }

    fn finish(self) -> Digest {
        Digest {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        }
    }
}

/// [`retrain_stage::digest_path`] of the folder `root`, using `known` digests (by relative path) for
/// files already read, so the manifest records what was decoded.
fn dir_digest(root: &Path, known: &BTreeMap<String, Digest>) -> Result<Digest, Error> {
    let mut files = BTreeSet::new();
    list_files(root, "", &mut files)?;
    let mut listing = Listing::default();
    for relative in files {
        let digest = match known.get(&relative) {
            Some(digest) => digest.clone(),
            None => retrain_stage::digest_file(&root.join(&relative))?,
        };
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&digest.sha256, &mut sha256).expect("a hex sha256");
        listing.add("", &relative, &sha256, digest.bytes);
    }
    Ok(listing.finish())
}

/// The regular files under `root/prefix`, skipping hidden entries and the top-level manifest, as
/// [`retrain_stage::digest_path`] lists them.
fn list_files(root: &Path, prefix: &str, files: &mut BTreeSet<String>) -> Result<(), Error> {
    let dir = root.join(prefix);
    let read_err = |source| Error::Read {
        path: dir.clone(),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::NotUtf8 { path: entry.path() });
        };
        if name.starts_with('.') || (prefix.is_empty() && name == retrain_stage::FILE_NAME) {
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
            files.insert(relative);
        } else {
            return Err(Error::FileType { path: entry.path() });
        }
    }
    Ok(())
}
