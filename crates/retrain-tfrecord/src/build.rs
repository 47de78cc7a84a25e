//! The sharded builder: `build_image_data.py` rebuilt.
//!
//! For each split (validation, then train, as the reference), every entry of every class folder
//! named in the labels file is listed in label order and then name order, shuffled with the seed,
//! and cut into shards of consecutive entries; each entry becomes one `tf.train.Example` with the
//! nine features of the reference (see [`crate::example::ImageRecord`]). PNG files are decoded to
//! RGB and re-encoded as JPEG at quality 100; JPEG files are passed through unchanged, after a
//! decode that checks them and gives their size (the reference does the same); anything else is
//! skipped, reported by path and counted.
//!
//! Work is cut into chunks of up to [`CHUNK`] entries that threads take in order; each shard's
//! chunks are written in order by whichever thread completes the next one, so the bytes do not
//! depend on the thread count. Shards are written under a hidden temporary name and renamed when
//! complete; `manifest.json` is removed first and written last.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use retrain_stage::{AtomicFile, Digest, Manifest, Reporter};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::example::ImageRecord;
use crate::jpeg::JpegEncoder;
use crate::record::frame_into;

/// The reference's shuffle seed.
pub const DEFAULT_SEED: u64 = 12345;
/// Images per shard when the shard count is not given (the reference advises about 1024).
pub const IMAGES_PER_SHARD: usize = 1024;
/// The JSON report of counts and skipped files, beside the shards.
pub const REPORT_FILE: &str = "report.json";
/// JPEG quality of re-encoded PNGs, as the reference.
pub const JPEG_QUALITY: u8 = 100;
/// Entries per unit of parallel work.
pub const CHUNK: usize = 64;
/// Salt mixed into the seed so this stage's random stream differs from other stages'.
const STAGE_SALT: u64 = 0x5446_5245_434f_5244; // "TFRECORD"
/// Decoding a larger image is refused (reported as undecodable).
const MAX_DECODE_ALLOC: u64 = 256 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct Config {
    /// `train_dir/<class>/<image>`.
    pub train_dir: PathBuf,
    /// `validation_dir/<class>/<image>`.
    pub validation_dir: PathBuf,
    /// One class name per line; line `i` (0-based) is label `i + 1`.
    pub labels: PathBuf,
    /// Output directory for the shards, the report and `manifest.json`.
    pub out: PathBuf,
    /// Training shards; `None`: one per [`IMAGES_PER_SHARD`] images, at least one.
    pub train_shards: Option<usize>,
    /// Validation shards; `None`: as for training.
    pub validation_shards: Option<usize>,
    /// Worker threads; 0: one per core. The output does not depend on it.
    pub threads: usize,
    /// Shuffle seed.
    pub seed: u64,
}

impl Config {
    pub fn new(train_dir: PathBuf, validation_dir: PathBuf, labels: PathBuf, out: PathBuf) -> Self {
        Self {
            train_dir,
            validation_dir,
            labels,
            out,
            train_shards: None,
            validation_shards: None,
            threads: 0,
            seed: DEFAULT_SEED,
        }
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    /// The shard name prefix: `train` or `validation`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
        }
    }

    fn stream(self) -> u64 {
        match self {
            Self::Validation => 0,
            Self::Train => 1,
        }
    }
}

/// `train-00000-of-00002`.
pub fn shard_name(split: Split, shard: usize, n_shards: usize) -> String {
    format!("{}-{shard:05}-of-{n_shards:05}", split.name())
}

/// The default shard count for `n_images`: one per [`IMAGES_PER_SHARD`], at least one.
pub fn default_shards(n_images: usize) -> usize {
    n_images.div_ceil(IMAGES_PER_SHARD).max(1)
}

/// Counts and skipped files, written to [`REPORT_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// By split name.
    pub splits: BTreeMap<String, SplitReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitReport {
    /// Entries found in the class folders.
    pub files: usize,
    /// Examples written.
    pub records: usize,
    /// Entries skipped (`files - records`).
    pub skipped: usize,
    /// In label order.
    pub classes: Vec<ClassReport>,
    pub shards: Vec<ShardReport>,
    /// Sorted by path.
    pub skipped_files: Vec<SkippedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassReport {
    pub label: i64,
    pub name: String,
    pub files: usize,
    pub records: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardReport {
    pub name: String,
    pub records: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    /// Relative to the split's directory, `/`-separated.
    pub path: String,
    pub reason: String,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Manifest,
    pub report: Report,
}

/// Builds the shards and returns the manifest (see [`build`]).
pub fn run(cfg: &Config, rep: &dyn Reporter) -> Result<Manifest, Error> {
    build(cfg, rep).map(|built| built.manifest)
}

/// Builds the shards, the report and the manifest.
#[tracing::instrument(skip_all, fields(out = %cfg.out.display()))]
pub fn build(cfg: &Config, rep: &dyn Reporter) -> Result<Built, Error> {
    for (flag, shards) in [
        ("train-shards", cfg.train_shards),
        ("validation-shards", cfg.validation_shards),
    ] {
        if shards == Some(0) {
            return Err(Error::Shards { flag, got: 0 });
        }
    }
    let classes = read_labels(&cfg.labels)?;
    let mut splits = [
        list_split(Split::Validation, &cfg.validation_dir, &classes)?,
        list_split(Split::Train, &cfg.train_dir, &classes)?,
    ];
    tracing::debug!("inputs listed");
    fs::create_dir_all(&cfg.out).map_err(|source| Error::Write {
        path: cfg.out.clone(),
        source,
    })?;
    for split in &splits {
        check_not_inside(&cfg.out, &split.root)?;
    }
    Manifest::remove(&cfg.out)?;

    for split in &mut splits {
        let requested = match split.split {
            Split::Train => cfg.train_shards,
            Split::Validation => cfg.validation_shards,
        };
        split.n_shards = requested.unwrap_or_else(|| default_shards(split.entries.len()));
        shuffle(&mut split.order, cfg.seed, split.split);
        tracing::info!(
            "{}: {} files in {} classes → {} shards",
            split.split.name(),
            split.entries.len(),
            classes.len(),
            split.n_shards
        );
    }
    let shard_names: Vec<String> = splits
        .iter()
        .flat_map(|s| (0..s.n_shards).map(|i| shard_name(s.split, i, s.n_shards)))
        .collect();
    remove_stale(&cfg.out, &shard_names)?;

    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.threads
    };
    let encoder = JpegEncoder::new(JPEG_QUALITY).expect("a valid quality");
    let outcome = process(&splits, &classes, &cfg.out, threads, &encoder, rep)?;
    tracing::debug!("shards written");

    let report = make_report(&splits, &classes, &outcome);
    let mut report_json = serde_json::to_string_pretty(&report).expect("a report serialises");
    report_json.push('\n');
    let report_path = cfg.out.join(REPORT_FILE);
    retrain_stage::write_atomic(&report_path, report_json.as_bytes()).map_err(|source| {
        Error::Write {
            path: report_path.clone(),
            source,
        }
    })?;

    let mut manifest = Manifest::new("tfrecord", env!("CARGO_PKG_VERSION"));
    for split in &splits {
        let flag = match split.split {
            Split::Train => "train-shards",
            Split::Validation => "validation-shards",
        };
        manifest.param(flag, split.n_shards);
    }
    manifest.param("seed", cfg.seed);
    for (split, digests) in splits.iter().zip(&outcome.file_digests) {
        let flag = match split.split {
            Split::Train => "train-dir",
            Split::Validation => "validation-dir",
        };
        manifest
            .inputs
            .insert(flag.to_owned(), split.tree_digest(digests)?);
    }
    manifest.input("labels", &cfg.labels)?;
    for (name, digest) in &outcome.shard_digests {
        manifest.output_digest(name, digest.clone());
    }
    manifest.output_digest(
        REPORT_FILE,
        Digest {
            sha256: hex::encode(Sha256::digest(report_json.as_bytes())),
            bytes: report_json.len() as u64,
        },
    );
    manifest.write(&cfg.out)?;
    for (name, split) in &report.splits {
        if split.skipped > 0 {
            tracing::warn!(
                "{name}: {} of {} files skipped (listed in {REPORT_FILE})",
                split.skipped,
                split.files
            );
        }
    }
    Ok(Built { manifest, report })
}

/// Class names in label order, from a labels file: one name per line, surrounding whitespace
/// removed (as the reference's `strip()`); blank lines at the end are ignored, blank lines before a
/// name, repeated names and names that are not plain folder names are errors.
pub fn read_labels(path: &Path) -> Result<Vec<String>, Error> {
    let bytes = fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let problem = |problem: String| Error::Labels {
        path: path.to_owned(),
        problem,
    };
    let text = String::from_utf8(bytes).map_err(|_| problem("not UTF-8".into()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let n = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    if n == 0 {
        return Err(problem("no class names".into()));
    }
    let mut seen = BTreeMap::new();
    for (i, name) in lines[..n].iter().enumerate() {
        let line = i + 1;
        if name.is_empty() {
            return Err(problem(format!("line {line} is blank")));
        }
        if name.starts_with('.') || name.contains(['/', '\\', '\0']) {
            return Err(problem(format!(
                "line {line}: {name:?} is not a plain folder name"
            )));
        }
        if let Some(first) = seen.insert(*name, line) {
            return Err(problem(format!(
                "line {line}: {name:?} repeats line {first}"
            )));
        }
    }
    Ok(lines[..n].iter().map(|s| (*s).to_owned()).collect())
}

/// One entry of a class folder.
#[derive(Debug)]
struct Entry {
    class_idx: usize,
    /// `class/name`.
    relative: String,
    /// Index in [`SplitListing::files`]; `None` for a directory.
    file_idx: Option<usize>,
}

impl Entry {
    fn file_name(&self) -> &str {
        self.relative
            .split_once('/')
            .map_or(&self.relative, |(_, n)| n)
    }
}

#[derive(Debug)]
struct SplitListing {
    split: Split,
    root: PathBuf,
    /// Every non-hidden regular file under `root`, relative, in byte order (as
    /// [`retrain_stage::digest_path`] lists them).
    files: Vec<String>,
    /// Digests of the files that are not entries, computed while listing.
    other_digests: Vec<Option<Digest>>,
    /// Class-folder entries in label order, then name order.
    entries: Vec<Entry>,
    /// Entry indices in shard order (shuffled).
    order: Vec<usize>,
    n_shards: usize,
}

impl SplitListing {
    /// The directory digest [`retrain_stage::digest_path`] would compute, from digests taken while
    /// the files were read for conversion.
    fn tree_digest(&self, entry_digests: &BTreeMap<usize, Digest>) -> Result<Digest, Error> {
        let mut hasher = Sha256::new();
        let mut bytes = 0;
        for (idx, relative) in self.files.iter().enumerate() {
            let digest = entry_digests
                .get(&idx)
                .or(self.other_digests[idx].as_ref())
                .ok_or_else(|| Error::Read {
                    path: self.root.join(relative),
                    source: io::Error::other("the file was not read"),
                })?;
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
}

fn list_split(split: Split, root: &Path, classes: &[String]) -> Result<SplitListing, Error> {
    let meta = fs::metadata(root).map_err(|source| Error::Read {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Read {
            path: root.to_owned(),
            source: io::Error::other("not a directory"),
        });
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    walk(root, "", &mut files, &mut dirs)?;
    files.sort();
    dirs.sort();

    let class_idx: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut by_class: Vec<Vec<Entry>> = classes.iter().map(|_| Vec::new()).collect();
    let mut is_entry = vec![false; files.len()];
    let mut class_dirs = vec![false; classes.len()];
    for dir in &dirs {
        match dir.split_once('/') {
            None => {
                if let Some(&c) = class_idx.get(dir.as_str()) {
                    class_dirs[c] = true;
                }
            }
            Some((class, rest)) if !rest.contains('/') => {
                if let Some(&c) = class_idx.get(class) {
                    by_class[c].push(Entry {
                        class_idx: c,
                        relative: dir.clone(),
                        file_idx: None,
                    });
                }
            }
            Some(_) => {}
        }
    }
    for (idx, relative) in files.iter().enumerate() {
        if let Some((class, rest)) = relative.split_once('/')
            && !rest.contains('/')
            && let Some(&c) = class_idx.get(class)
        {
            is_entry[idx] = true;
            by_class[c].push(Entry {
                class_idx: c,
                relative: relative.clone(),
                file_idx: Some(idx),
            });
        }
    }
    for (c, class) in classes.iter().enumerate() {
        let path = root.join(class);
        if !class_dirs[c] {
            let problem = if path.exists() {
                "is not a directory"
            } else {
                "is missing"
            };
            return Err(Error::ClassFolder { path, problem });
        }
        if by_class[c].is_empty() {
            return Err(Error::ClassFolder {
                path,
                problem: "has no files",
            });
        }
    }
    let unlisted: Vec<&str> = dirs
        .iter()
        .filter(|d| !d.contains('/') && !class_idx.contains_key(d.as_str()))
        .map(String::as_str)
        .collect();
    if !unlisted.is_empty() {
        tracing::warn!(
            "{}: folders not in the labels file are ignored: {}",
            root.display(),
            unlisted.join(", ")
        );
    }
    let mut other_digests = Vec::with_capacity(files.len());
    for (idx, relative) in files.iter().enumerate() {
        other_digests.push(if is_entry[idx] {
            None
        } else {
            Some(retrain_stage::digest_file(&root.join(relative))?)
        });
    }
    let entries: Vec<Entry> = by_class
        .into_iter()
        .flat_map(|mut v| {
            v.sort_by(|a, b| a.relative.cmp(&b.relative));
            v
        })
        .collect();
    let order = (0..entries.len()).collect();
    Ok(SplitListing {
        split,
        root: root.to_owned(),
        files,
        other_digests,
        entries,
        order,
        n_shards: 0,
    })
}

/// Lists what [`retrain_stage::digest_path`] digests: regular files, skipping hidden entries and a
/// top-level `manifest.json`; a symlink or special file is an error, as there.
fn walk(
    root: &Path,
    prefix: &str,
    files: &mut Vec<String>,
    dirs: &mut Vec<String>,
) -> Result<(), Error> {
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
            walk(root, &relative, files, dirs)?;
            dirs.push(relative);
        } else if file_type.is_file() {
            files.push(relative);
        } else {
            return Err(Error::FileType { path: entry.path() });
        }
    }
    Ok(())
}

/// The output must not be an input folder or inside one: the shards would change its digest.
fn check_not_inside(out: &Path, input: &Path) -> Result<(), Error> {
    let canonical = |p: &Path| {
        p.canonicalize().map_err(|source| Error::Read {
            path: p.to_owned(),
            source,
        })
    };
    if canonical(out)?.starts_with(canonical(input)?) {
        return Err(Error::OutputInsideInput {
            out: out.to_owned(),
            input: input.to_owned(),
        });
    }
    Ok(())
}

/// Fisher–Yates with a ChaCha8 stream per split, so the order depends only on the seed and the
/// listing (not on the `rand` version's shuffle).
fn shuffle(order: &mut [usize], seed: u64, split: Split) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ STAGE_SALT);
    rng.set_stream(split.stream());
    for i in (1..order.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
}

/// A uniform integer in `0..bound` (Lemire's multiply-and-reject).
fn below(rng: &mut impl RngCore, bound: u64) -> u64 {
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(bound);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// Removes shards of an earlier run that this run does not write (other shard counts), and
/// temporary files a crashed run left, so that a reader globbing `train-*` never sees them.
fn remove_stale(out: &Path, keep: &[String]) -> Result<(), Error> {
    let read_err = |source| Error::Read {
        path: out.to_owned(),
        source,
    };
    for entry in fs::read_dir(out).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let visible = name.starts_with("train-") || name.starts_with("validation-");
        let partial = name.ends_with(".partial")
            && (name.starts_with(".train-") || name.starts_with(".validation-"));
        if !(visible || partial) || keep.iter().any(|k| k == name) {
            continue;
        }
        if !entry.file_type().map_err(read_err)?.is_file() {
            tracing::warn!(
                "{}: not a regular file, left in place",
                entry.path().display()
            );
            continue;
        }
        tracing::info!("removing stale {}", entry.path().display());
        fs::remove_file(entry.path()).map_err(|source| Error::Write {
            path: entry.path(),
            source,
        })?;
    }
    Ok(())
}

/// A run of consecutive entries of one shard.
#[derive(Debug)]
struct Unit {
    split_idx: usize,
    shard_slot: usize,
    chunk: usize,
    /// Positions in the split's shuffled order.
    start: usize,
    end: usize,
}

/// A shard file being written chunk by chunk, in order.
struct ShardSlot {
    name: String,
    path: PathBuf,
    n_chunks: usize,
    state: Mutex<ShardState>,
}

#[derive(Default)]
struct ShardState {
    next_chunk: usize,
    pending: BTreeMap<usize, Vec<u8>>,
    file: Option<(AtomicFile, Sha256, u64)>,
}

/// A complete shard on its way to the committer thread, which syncs and renames it.
struct Finished {
    slot: usize,
    file: AtomicFile,
    digest: Digest,
}

impl ShardSlot {
    /// Takes chunk `chunk`'s framed records and writes every chunk that is now next in order.
    /// After the last, the file goes to `commits`: syncing it there keeps workers converting while
    /// the disk catches up.
    fn deliver(
        &self,
        slot: usize,
        chunk: usize,
        bytes: Vec<u8>,
        commits: &mpsc::Sender<Finished>,
    ) -> Result<(), Error> {
        let write_err = |source| Error::Write {
            path: self.path.clone(),
            source,
        };
        let mut state = self.state.lock().expect("shard lock");
        state.pending.insert(chunk, bytes);
        loop {
            let next = state.next_chunk;
            let Some(bytes) = state.pending.remove(&next) else {
                break;
            };
            if state.file.is_none() {
                let file = AtomicFile::create(&self.path).map_err(write_err)?;
                state.file = Some((file, Sha256::new(), 0));
            }
            let (file, hasher, len) = state.file.as_mut().expect("opened");
            file.write_all(&bytes).map_err(write_err)?;
            hasher.update(&bytes);
            *len += bytes.len() as u64;
            state.next_chunk += 1;
        }
        if state.next_chunk == self.n_chunks
            && let Some((file, hasher, len)) = state.file.take()
        {
            let digest = Digest {
                sha256: hex::encode(hasher.finalize()),
                bytes: len,
            };
            // The receiver lives until every worker has finished.
            let _ = commits.send(Finished { slot, file, digest });
        }
        Ok(())
    }
}

/// What the workers found, merged.
#[derive(Debug, Default)]
struct Outcome {
    /// Per split (listing order): file index → digest.
    file_digests: Vec<BTreeMap<usize, Digest>>,
    /// Per split: entry index → why it was skipped.
    skipped: Vec<BTreeMap<usize, String>>,
    /// Per split: shard → records.
    shard_records: Vec<Vec<usize>>,
    /// Shard name → digest.
    shard_digests: BTreeMap<String, Digest>,
}

/// One worker's findings.
#[derive(Debug, Default)]
struct Found {
    digests: Vec<(usize, usize, Digest)>,
    skipped: Vec<(usize, usize, String)>,
    /// (split, shard, records) per chunk.
    records: Vec<(usize, usize, usize)>,
}

/// Buffers a worker reuses from image to image.
#[derive(Default)]
struct Scratch {
    file: Vec<u8>,
    jpeg: Vec<u8>,
    example: Vec<u8>,
}

fn process(
    splits: &[SplitListing],
    classes: &[String],
    out: &Path,
    threads: usize,
    encoder: &JpegEncoder,
    rep: &dyn Reporter,
) -> Result<Outcome, Error> {
    let mut units = Vec::new();
    let mut slots = Vec::new();
    let mut slot_of = Vec::new(); // (split_idx, shard) per slot
    for (split_idx, split) in splits.iter().enumerate() {
        let n = split.order.len();
        for shard in 0..split.n_shards {
            let (start, end) = (shard * n / split.n_shards, (shard + 1) * n / split.n_shards);
            let n_chunks = (end - start).div_ceil(CHUNK).max(1);
            let name = shard_name(split.split, shard, split.n_shards);
            for chunk in 0..n_chunks {
                units.push(Unit {
                    split_idx,
                    shard_slot: slots.len(),
                    chunk,
                    start: (start + chunk * CHUNK).min(end),
                    end: (start + (chunk + 1) * CHUNK).min(end),
                });
            }
            slots.push(ShardSlot {
                path: out.join(&name),
                name,
                n_chunks,
                state: Mutex::new(ShardState::default()),
            });
            slot_of.push((split_idx, shard));
        }
    }
    let total: usize = splits.iter().map(|s| s.order.len()).sum();
    rep.start(total as u64, "images");
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let threads = threads.clamp(1, units.len().max(1));
    tracing::debug!(threads, units = units.len(), "converting");

    let (commits, finished) = mpsc::channel::<Finished>();
    let (results, committed) = std::thread::scope(|scope| {
        let committer = scope.spawn(|| -> Result<Vec<(usize, Digest)>, Error> {
            let mut done = Vec::new();
            for Finished { slot, file, digest } in finished {
                let path = file.path().to_owned();
                if let Err(source) = file.commit() {
                    abort.store(true, Ordering::Relaxed);
                    return Err(Error::Write { path, source });
                }
                done.push((slot, digest));
            }
            Ok(done)
        });
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let commits = commits.clone();
                scope.spawn(|| {
                    let commits = commits;
                    let result = worker(
                        splits, classes, &units, &slots, &slot_of, &next, &abort, encoder, rep,
                        &commits,
                    );
                    if result.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        drop(commits);
        let results: Vec<Result<Found, Error>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        let committed = committer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (results, committed)
    });
    rep.finish();

    let mut outcome = Outcome {
        file_digests: splits.iter().map(|_| BTreeMap::new()).collect(),
        skipped: splits.iter().map(|_| BTreeMap::new()).collect(),
        shard_records: splits.iter().map(|s| vec![0; s.n_shards]).collect(),
        shard_digests: BTreeMap::new(),
    };
    for result in results {
        let found = result?;
        for (split_idx, file_idx, digest) in found.digests {
            outcome.file_digests[split_idx].insert(file_idx, digest);
        }
        for (split_idx, entry_idx, reason) in found.skipped {
            outcome.skipped[split_idx].insert(entry_idx, reason);
        }
        for (split_idx, shard, records) in found.records {
            outcome.shard_records[split_idx][shard] += records;
        }
    }
    let committed = committed?;
    if committed.len() != slots.len() {
        return Err(Error::Write {
            path: out.to_owned(),
            source: io::Error::other("not every shard was completed"),
        });
    }
    for (slot, digest) in committed {
        outcome
            .shard_digests
            .insert(slots[slot].name.clone(), digest);
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn worker(
    splits: &[SplitListing],
    classes: &[String],
    units: &[Unit],
    slots: &[ShardSlot],
    slot_of: &[(usize, usize)],
    next: &AtomicUsize,
    abort: &AtomicBool,
    encoder: &JpegEncoder,
    rep: &dyn Reporter,
    commits: &mpsc::Sender<Finished>,
) -> Result<Found, Error> {
    let mut found = Found::default();
    let mut scratch = Scratch::default();
    loop {
        if abort.load(Ordering::Relaxed) {
            return Ok(found);
        }
        let unit_idx = next.fetch_add(1, Ordering::Relaxed);
        let Some(unit) = units.get(unit_idx) else {
            return Ok(found);
        };
        let split = &splits[unit.split_idx];
        let mut bytes = Vec::with_capacity((unit.end - unit.start) * 4096);
        let mut records = 0;
        for &entry_idx in &split.order[unit.start..unit.end] {
            let entry = &split.entries[entry_idx];
            let path = split.root.join(&entry.relative);
            let Some(file_idx) = entry.file_idx else {
                found.skipped.push((
                    unit.split_idx,
                    entry_idx,
                    "a directory, not an image file".into(),
                ));
                continue;
            };
            let (digest, converted) = convert(&path, encoder, &mut scratch)?;
            found.digests.push((unit.split_idx, file_idx, digest));
            match converted {
                Ok((height, width)) => {
                    let record = ImageRecord::jpeg(
                        std::mem::take(&mut scratch.jpeg),
                        height,
                        width,
                        entry.class_idx as i64 + 1,
                        &classes[entry.class_idx],
                        entry.file_name(),
                    );
                    scratch.example.clear();
                    record.encode(&mut scratch.example);
                    frame_into(&scratch.example, &mut bytes);
                    scratch.jpeg = record.encoded;
                    records += 1;
                }
                Err(reason) => {
                    tracing::warn!("{}: skipped: {reason}", path.display());
                    found.skipped.push((unit.split_idx, entry_idx, reason));
                }
            }
        }
        let (_, shard) = slot_of[unit.shard_slot];
        found.records.push((unit.split_idx, shard, records));
        slots[unit.shard_slot].deliver(unit.shard_slot, unit.chunk, bytes, commits)?;
        rep.advance((unit.end - unit.start) as u64);
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SOI: &[u8] = b"\xff\xd8\xff";

/// A converted image's size (height, width), or why the file is skipped.
type Converted = Result<(u32, u32), String>;

/// Reads one file, digests it, and leaves its JPEG in `scratch.jpeg`: re-encoded from a PNG, or
/// the file itself if it is a JPEG. The inner result is the size, or why the file is skipped.
fn convert(
    path: &Path,
    encoder: &JpegEncoder,
    scratch: &mut Scratch,
) -> Result<(Digest, Converted), Error> {
    let len = read_file(path, &mut scratch.file).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let data = &scratch.file[..len];
    let digest = Digest {
        sha256: hex::encode(Sha256::digest(data)),
        bytes: len as u64,
    };
    scratch.jpeg.clear();
    let result = if data.starts_with(PNG_SIGNATURE) {
        decode(data, image::ImageFormat::Png)
            .map_err(|e| format!("not a decodable PNG: {e}"))
            .and_then(|img| {
                let rgb = img.into_rgb8();
                let (width, height) = rgb.dimensions();
                encoder
                    .encode_rgb(rgb.as_raw(), width, height, &mut scratch.jpeg)
                    .map_err(|e| format!("cannot encode as JPEG: {e}"))?;
                Ok((height, width))
            })
    } else if data.starts_with(JPEG_SOI) {
        decode(data, image::ImageFormat::Jpeg)
            .map_err(|e| format!("not a decodable JPEG: {e}"))
            .map(|img| {
                scratch.jpeg.extend_from_slice(data);
                (img.height(), img.width())
            })
    } else {
        Err("neither a PNG nor a JPEG file".to_owned())
    };
    Ok((digest, result))
}

/// Reads a whole file into the start of `buf` and returns its length. Plain reads into a buffer
/// kept allocated and initialised from file to file: for a small file, open, read, read, close
/// (`read_to_end` also asks for the size and position).
fn read_file(path: &Path, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut file = File::open(path)?;
    let mut len = 0;
    loop {
        if buf.len() - len < 4096 {
            buf.resize((buf.len() * 2).max(64 << 10), 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn decode(data: &[u8], format: image::ImageFormat) -> image::ImageResult<image::DynamicImage> {
    let mut reader = image::ImageReader::with_format(Cursor::new(data), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader.decode()
}

fn make_report(splits: &[SplitListing], classes: &[String], outcome: &Outcome) -> Report {
    let mut report = Report {
        splits: BTreeMap::new(),
    };
    for (split_idx, split) in splits.iter().enumerate() {
        let skipped = &outcome.skipped[split_idx];
        let mut class_reports: Vec<ClassReport> = classes
            .iter()
            .enumerate()
            .map(|(i, name)| ClassReport {
                label: i as i64 + 1,
                name: name.clone(),
                files: 0,
                records: 0,
            })
            .collect();
        for (entry_idx, entry) in split.entries.iter().enumerate() {
            let class = &mut class_reports[entry.class_idx];
            class.files += 1;
            if !skipped.contains_key(&entry_idx) {
                class.records += 1;
            }
        }
        for class in &class_reports {
            if class.records == 0 {
                tracing::warn!(
                    "{}: class {} has no decodable image",
                    split.split.name(),
                    class.name
                );
            }
        }
        let mut skipped_files: Vec<SkippedFile> = skipped
            .iter()
            .map(|(&entry_idx, reason)| SkippedFile {
                path: split.entries[entry_idx].relative.clone(),
                reason: reason.clone(),
            })
            .collect();
        skipped_files.sort_by(|a, b| a.path.cmp(&b.path));
        let shards = outcome.shard_records[split_idx]
            .iter()
            .enumerate()
            .map(|(shard, &records)| ShardReport {
                name: shard_name(split.split, shard, split.n_shards),
                records,
            })
            .collect();
        report.splits.insert(
            split.split.name().to_owned(),
            SplitReport {
                files: split.entries.len(),
                records: split.entries.len() - skipped.len(),
                skipped: skipped.len(),
                classes: class_reports,
                shards,
                skipped_files,
            },
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_the_reference() {
        assert_eq!(shard_name(Split::Train, 0, 2), "train-00000-of-00002");
        assert_eq!(
            shard_name(Split::Validation, 12, 128),
            "validation-00012-of-00128"
        );
    }

    #[test]
    fn default_shards_follow_the_data() {
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(1024), 1);
        assert_eq!(default_shards(1025), 2);
        assert_eq!(default_shards(50_000), 49);
        assert_eq!(default_shards(10_000), 10);
    }

    #[test]
    fn the_shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..100).collect();
        let mut b = a.clone();
        let mut c = a.clone();
        shuffle(&mut a, 1, Split::Train);
        shuffle(&mut b, 1, Split::Train);
        shuffle(&mut c, 2, Split::Train);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // Pinned: the order must not drift with dependency upgrades.
        let mut pinned: Vec<usize> = (0..8).collect();
        shuffle(&mut pinned, DEFAULT_SEED, Split::Train);
        assert_eq!(pinned, [1, 7, 5, 0, 6, 2, 4, 3]);
    }

    #[test]
    fn below_is_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for bound in [1u64, 2, 3, 7, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(below(&mut rng, bound) < bound);
            }
        }
    }

    #[test]
    fn labels_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.txt");
        let check = |text: &str| {
            fs::write(&path, text).unwrap();
            read_labels(&path).map_err(|e| e.to_string())
        };
        assert_eq!(check("cat\n dog \n\n\n").unwrap(), ["cat", "dog"]);
        assert_eq!(check("cat\r\ndog").unwrap(), ["cat", "dog"]);
        assert!(check("").unwrap_err().ends_with("no class names"));
        assert!(
            check("cat\n\ndog\n")
                .unwrap_err()
                .ends_with("line 2 is blank")
        );
        assert!(
            check("cat\ndog\ncat\n")
                .unwrap_err()
                .ends_with("line 3: \"cat\" repeats line 1")
        );
        assert!(
            check("a/b\n")
                .unwrap_err()
                .contains("not a plain folder name")
        );
        assert!(
            check("..\n")
                .unwrap_err()
                .contains("not a plain folder name")
        );
    }
}
