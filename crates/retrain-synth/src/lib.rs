//! Deterministic CIFAR-format datasets for tests and the offline demo.
//!
//! [`run`] writes `cifar-10-python.tar.gz` (or `cifar-100-python.tar.gz`) that is, in format, the
//! real archive: the same members in the same order, each batch a Python-2 protocol-2 pickle byte
//! for byte as cPickle wrote it (see [`pickle`]), and `batches.meta` identical to the real file when
//! the batch size is the real 10000. Beside it go `members.md5` (the per-member digests, in
//! `md5sum` format, for `retrain-extract --member-digests`) and `manifest.json`; with
//! [`Config::report`], a JSON report of every label, file name and image digest, which
//! `scripts/check_synth.py` compares with what Python's pickle and numpy read.
//!
//! Images are drawn by [`image::render`]: learnable per class, and asymmetric so that orientation
//! bugs downstream show. Some file names repeat within a class on purpose ([`Config::collisions`]):
//! nothing guarantees the real names are unique.

pub mod image;
pub mod names;
pub mod pickle;

use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;

use md5::Md5;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use retrain_stage::{AtomicFile, Digest, Manifest, Reporter};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::image::ROW;
use crate::pickle::Value;

/// Salt mixed into the seed so this stage's random streams differ from other stages'.
const STAGE_SALT: u64 = 0x5359_4e54_4845_5449; // "SYNTHETI"
/// Modification time of every archive member: fixed, so the archive bytes depend on the seed only.
const MTIME: u64 = 1_244_160_000; // 2009-06-05, when CIFAR-10 was packed
/// GNU tar pads its output to a 10240-byte record (blocking factor 20).
const TAR_RECORD: u64 = 10_240;
/// The real `readme.html`: a redirect to the dataset's page.
const README_HTML: &[u8] =
    b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=http://www.cs.toronto.edu/~kriz/cifar.html\">";
/// What CIFAR's own filenames look like: a WordNet-ish word per class, `_s_`, a number.
const CIFAR10_WORDS: [&[&str]; 10] = [
    &[
        "airliner",
        "jetliner",
        "stealth_bomber",
        "fighter_aircraft",
        "monoplane",
    ],
    &[
        "automobile",
        "coupe",
        "sports_car",
        "station_wagon",
        "convertible",
    ],
    &["bird", "passerine", "ostrich", "finch", "sparrow"],
    &[
        "cat",
        "tabby_cat",
        "house_cat",
        "felis_domesticus",
        "alley_cat",
    ],
    &["deer", "fallow_deer", "roe_deer", "muntjac", "red_deer"],
    &["dog", "puppy", "toy_spaniel", "maltese_dog", "mutt"],
    &[
        "frog",
        "toad",
        "bullfrog",
        "tree_frog",
        "leptodactylus_pentadactylus",
    ],
    &["horse", "mustang", "quarter_horse", "arabian", "pony"],
    &["ship", "container_ship", "cargo_ship", "tanker", "lifeboat"],
    &[
        "truck",
        "dump_truck",
        "fire_truck",
        "garbage_truck",
        "tow_truck",
    ],
];

/// Which real archive to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Cifar10,
    Cifar100,
}

impl Dataset {
    /// The archive's file name.
    pub fn archive_name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-python.tar.gz",
            Self::Cifar100 => "cifar-100-python.tar.gz",
        }
    }

    /// The folder the archive's members sit in.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-py",
            Self::Cifar100 => "cifar-100-python",
        }
    }

    /// Class names in label order (fine labels for CIFAR-100).
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Self::Cifar10 => &names::CIFAR10,
            Self::Cifar100 => &names::CIFAR100_FINE,
        }
    }

    fn train_batches(self) -> usize {
        match self {
            Self::Cifar10 => 5,
            Self::Cifar100 => 1,
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

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Output directory: the archive, `members.md5` and `manifest.json` go here.
    pub out: PathBuf,
    pub dataset: Dataset,
    /// Images per CIFAR-10 batch (the real size is 10000). CIFAR-100 `train` holds five times as
    /// many, `test` as many.
    pub images_per_batch: usize,
    pub seed: u64,
    /// Pairs of training images of one class given the same file name.
    pub collisions: usize,
    /// Where to write the JSON report of every label, file name and image digest.
    pub report: Option<PathBuf>,
    /// gzip level, 0–9.
    pub gzip_level: u32,
}

impl Config {
    pub fn new(out: PathBuf) -> Self {
        Self {
            out,
            dataset: Dataset::Cifar10,
            images_per_batch: 10_000,
            seed: 0,
            collisions: 2,
            report: None,
            gzip_level: 6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("images per batch must be between 1 and {max}, got {got}")]
    BatchSize { got: usize, max: usize },
    #[error("gzip level must be 0 to 9, got {0}")]
    GzipLevel(u32),
    #[error(
        "cannot make {requested} file-name collisions: the training split has too few images per class (collision {failed} found no free pair)"
    )]
    Collisions { requested: usize, failed: usize },
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
    #[error(transparent)]
    Manifest(#[from] retrain_stage::Error),
}

/// One split's images: labels and file names, by image index within the split.
#[derive(Debug, Clone)]
struct Split {
    /// Index of the split's first image among all images (train first), for the image RNG stream.
    first: usize,
    labels: Vec<u16>,
    filenames: Vec<String>,
}

/// A pickled batch file: which split, which images.
#[derive(Debug, Clone)]
pub struct Batch {
    /// File name inside the archive folder (`data_batch_1`, `test_batch`, `train`, `test`).
    pub name: String,
    pub batch_label: String,
    pub train: bool,
    /// Image range within its split.
    pub images: Range<usize>,
}

/// What goes into an archive member.
#[derive(Debug, Clone)]
pub enum MemberKind {
    Dir,
    Batch(Batch),
    Meta,
    Readme,
    Empty,
}

/// One tar member, in archive order.
#[derive(Debug, Clone)]
pub struct Member {
    /// Path inside the archive (directories end in `/`).
    pub path: String,
    pub kind: MemberKind,
}

/// Two training images sharing a file name on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Collision {
    pub filename: String,
    /// `(batch file name, row)` of each image.
    pub images: [(String, usize); 2],
}

/// A whole synthetic dataset, laid out but not yet drawn: images are rendered on demand.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub dataset: Dataset,
    pub images_per_batch: usize,
    pub seed: u64,
    train: Split,
    test: Split,
    pub collisions: Vec<Collision>,
}

impl Synthetic {
    pub fn new(
        dataset: Dataset,
        images_per_batch: usize,
        seed: u64,
        collisions: usize,
    ) -> Result<Self, Error> {
        // A batch's pixels must fit the 4-byte length of a pickled str.
        let max = (u32::MAX as usize / ROW) / dataset.train_batches().max(5);
        if images_per_batch == 0 || images_per_batch > max {
            return Err(Error::BatchSize {
                got: images_per_batch,
                max,
            });
        }
        let n_train = images_per_batch * 5;
        let mut synth = Self {
            dataset,
            images_per_batch,
            seed,
            train: Self::split(dataset, seed, 0, n_train),
            test: Self::split(dataset, seed, n_train, images_per_batch),
            collisions: Vec::new(),
        };
        synth.collide(collisions)?;
        Ok(synth)
    }

    /// Balanced labels in a seeded order, and CIFAR-style file names.
    fn split(dataset: Dataset, seed: u64, first: usize, n_images: usize) -> Split {
        let n_classes = dataset.label_names().len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ STAGE_SALT);
        rng.set_stream(u64::MAX - first as u64);
        let mut labels: Vec<u16> = (0..n_images).map(|i| (i % n_classes) as u16).collect();
        labels.shuffle(&mut rng);
        let filenames = labels
            .iter()
            .enumerate()
            .map(|(idx, &label)| {
                let word = match dataset {
                    Dataset::Cifar10 => {
                        let words = CIFAR10_WORDS[usize::from(label)];
                        words[rng.random_range(0..words.len())]
                    }
                    Dataset::Cifar100 => names::CIFAR100_FINE[usize::from(label)],
                };
                format!("{word}_s_{:06}.png", first + idx + 1)
            })
            .collect();
        Split {
            first,
            labels,
            filenames,
        }
    }

    /// Gives pairs of same-class training images one file name: collision `j` uses class
    /// `j mod classes`; even ones pair the class's first and last free images (usually in different
    /// batches), odd ones two neighbours (usually in one batch).
    fn collide(&mut self, requested: usize) -> Result<(), Error> {
        let n_classes = self.dataset.label_names().len();
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
        for (idx, &label) in self.train.labels.iter().enumerate() {
            by_class[usize::from(label)].push(idx);
        }
        for j in 0..requested {
            let free = &mut by_class[j % n_classes];
            if free.len() < 2 {
                return Err(Error::Collisions {
                    requested,
                    failed: j,
                });
            }
            let first = free.remove(0);
            let second = if j % 2 == 0 {
                free.pop().expect("two were free")
            } else {
                free.remove(0)
            };
            let filename = self.train.filenames[first].clone();
            self.train.filenames[second] = filename.clone();
            self.collisions.push(Collision {
                filename,
                images: [self.locate(first), self.locate(second)],
            });
        }
        Ok(())
    }

    /// The batch file and row of training image `idx`.
    fn locate(&self, idx: usize) -> (String, usize) {
        let batch = self
            .batches()
            .into_iter()
            .find(|b| b.train && b.images.contains(&idx))
            .expect("every training image is in a batch");
        (batch.name, idx - batch.images.start)
    }

    /// The pickled batches, in name order.
    pub fn batches(&self) -> Vec<Batch> {
        let n = self.images_per_batch;
        match self.dataset {
            Dataset::Cifar10 => (1..=5)
                .map(|k| Batch {
                    name: format!("data_batch_{k}"),
                    batch_label: format!("training batch {k} of 5"),
                    train: true,
                    images: (k - 1) * n..k * n,
                })
                .chain([Batch {
                    name: "test_batch".into(),
                    batch_label: "testing batch 1 of 1".into(),
                    train: false,
                    images: 0..n,
                }])
                .collect(),
            Dataset::Cifar100 => vec![
                Batch {
                    name: "train".into(),
                    batch_label: "training batch 1 of 1".into(),
                    train: true,
                    images: 0..5 * n,
                },
                Batch {
                    name: "test".into(),
                    batch_label: "testing batch 1 of 1".into(),
                    train: false,
                    images: 0..n,
                },
            ],
        }
    }

    /// The archive's members in the real archive's order.
    pub fn members(&self) -> Vec<Member> {
        let folder = self.dataset.folder();
        let batch = |name: &str| {
            let batch = self
                .batches()
                .into_iter()
                .find(|b| b.name == name)
                .expect("a known batch");
            (name.to_owned(), MemberKind::Batch(batch))
        };
        let order: Vec<(String, MemberKind)> = match self.dataset {
            Dataset::Cifar10 => vec![
                batch("data_batch_4"),
                ("readme.html".into(), MemberKind::Readme),
                batch("test_batch"),
                batch("data_batch_3"),
                ("batches.meta".into(), MemberKind::Meta),
                batch("data_batch_2"),
                batch("data_batch_5"),
                batch("data_batch_1"),
            ],
            Dataset::Cifar100 => vec![
                ("file.txt~".into(), MemberKind::Empty),
                batch("train"),
                batch("test"),
                ("meta".into(), MemberKind::Meta),
            ],
        };
        std::iter::once(Member {
            path: format!("{folder}/"),
            kind: MemberKind::Dir,
        })
        .chain(order.into_iter().map(|(name, kind)| Member {
            path: format!("{folder}/{name}"),
            kind,
        }))
        .collect()
    }

    fn split_of(&self, batch: &Batch) -> &Split {
        if batch.train { &self.train } else { &self.test }
    }

    /// Fine (CIFAR-10: the only) labels of a batch's images.
    pub fn labels(&self, batch: &Batch) -> &[u16] {
        &self.split_of(batch).labels[batch.images.clone()]
    }

    /// CIFAR-100 coarse labels of a batch's images.
    pub fn coarse_labels(&self, batch: &Batch) -> Vec<u16> {
        self.labels(batch)
            .iter()
            .map(|&fine| names::cifar100_coarse(usize::from(fine)) as u16)
            .collect()
    }

    pub fn filenames(&self, batch: &Batch) -> &[String] {
        &self.split_of(batch).filenames[batch.images.clone()]
    }

    /// The batch's pixels, one 3072-byte CIFAR row per image, drawn on all cores; the bytes do not
    /// depend on the thread count (each image has its own random stream).
    pub fn pixels(&self, batch: &Batch) -> Vec<u8> {
        let split = self.split_of(batch);
        let n_classes = self.dataset.label_names().len();
        let mut data = vec![0u8; batch.images.len() * ROW];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rows_per_thread = batch.images.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (chunk_idx, chunk) in data.chunks_mut(rows_per_thread * ROW).enumerate() {
                let start = batch.images.start + chunk_idx * rows_per_thread;
                scope.spawn(move || {
                    for (offset, row) in chunk.chunks_mut(ROW).enumerate() {
                        let idx = start + offset;
                        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ STAGE_SALT);
                        rng.set_stream((split.first + idx) as u64);
                        let label = usize::from(split.labels[idx]);
                        image::render(label, n_classes, &mut rng, row);
                    }
                });
            }
        });
        data
    }

    /// A batch pickled as cPickle wrote the real one, given its pixels.
    pub fn pickle_batch(&self, batch: &Batch, pixels: &[u8]) -> Vec<u8> {
        let ints = |labels: &[u16]| labels.iter().map(|&l| Value::Int(l.into())).collect();
        let filenames = Value::List(
            self.filenames(batch)
                .iter()
                .map(|f| Value::Str(f.as_bytes()))
                .collect(),
        );
        let data = Value::U8Matrix {
            rows: batch.images.len(),
            cols: ROW,
            data: pixels,
        };
        let label = Value::Str(batch.batch_label.as_bytes());
        let coarse;
        // Keys in the real files' order (Python 2's hash-table order, as Python 3 readers list them).
        let items = match self.dataset {
            Dataset::Cifar10 => vec![
                ("batch_label", label),
                ("labels", Value::List(ints(self.labels(batch)))),
                ("data", data),
                ("filenames", filenames),
            ],
            Dataset::Cifar100 => {
                coarse = self.coarse_labels(batch);
                vec![
                    ("filenames", filenames),
                    ("batch_label", label),
                    ("fine_labels", Value::List(ints(self.labels(batch)))),
                    ("coarse_labels", Value::List(ints(&coarse))),
                    ("data", data),
                ]
            }
        };
        pickle::dumps(&Value::Dict(items), "numpy.core")
    }

    /// `batches.meta` (CIFAR-10) or `meta` (CIFAR-100), pickled.
    pub fn pickle_meta(&self) -> Vec<u8> {
        let names = |names: &[&'static str]| {
            Value::List(names.iter().map(|n| Value::Str(n.as_bytes())).collect())
        };
        let items = match self.dataset {
            Dataset::Cifar10 => vec![
                (
                    "num_cases_per_batch",
                    Value::Int(self.images_per_batch as i64),
                ),
                ("label_names", names(&names::CIFAR10)),
                ("num_vis", Value::Int(ROW as i64)),
            ],
            Dataset::Cifar100 => vec![
                ("fine_label_names", names(&names::CIFAR100_FINE)),
                ("coarse_label_names", names(&names::CIFAR100_COARSE)),
            ],
        };
        pickle::dumps(&Value::Dict(items), "numpy.core")
    }
}

/// What the generator reports about one batch, for independent readers to compare.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// Path inside the archive.
    pub member: String,
    pub batch_label: String,
    pub labels: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coarse_labels: Option<Vec<u16>>,
    pub filenames: Vec<String>,
    /// SHA-256 of the whole `data` array (rows × 3072 bytes).
    pub data_sha256: String,
    /// MD5 of each image's 3072 bytes.
    pub row_md5: Vec<String>,
    /// `[row, y, x, channel, value]`: pixels read back in height-width-channel order.
    pub samples: Vec<[usize; 5]>,
}

/// One archive member as written.
#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    pub path: String,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// Everything the generator wrote, for `scripts/check_synth.py` and tests.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub seed: u64,
    pub images_per_batch: usize,
    pub archive: String,
    pub label_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coarse_label_names: Option<Vec<String>>,
    pub members: Vec<MemberReport>,
    pub batches: Vec<BatchReport>,
    pub collisions: Vec<Collision>,
}

/// Name of the per-member digest file written beside the archive.
pub const MEMBER_DIGESTS: &str = "members.md5";

/// Generates the archive, `members.md5`, the optional report and `manifest.json`.
#[tracing::instrument(skip_all, fields(out = %cfg.out.display(), dataset = %cfg.dataset))]
pub fn run(cfg: &Config, rep: &dyn Reporter) -> Result<Manifest, Error> {
    if cfg.gzip_level > 9 {
        return Err(Error::GzipLevel(cfg.gzip_level));
    }
    let synth = Synthetic::new(cfg.dataset, cfg.images_per_batch, cfg.seed, cfg.collisions)?;
    std::fs::create_dir_all(&cfg.out).map_err(|source| Error::CreateDir {
        path: cfg.out.clone(),
        source,
    })?;
    Manifest::remove(&cfg.out)?;
    let archive_path = cfg.out.join(cfg.dataset.archive_name());
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Write { path, source }
    };
    let total_images = synth.batches().iter().map(|b| b.images.len() as u64).sum();
    rep.start(total_images, "generating images");
    let (archive_digest, members, batch_reports) = write_archive(
        &synth,
        &archive_path,
        cfg.gzip_level,
        cfg.report.is_some(),
        rep,
    )
    .map_err(write_err(&archive_path))?;
    rep.finish();
    tracing::info!(
        archive = %archive_path.display(),
        bytes = archive_digest.bytes,
        sha256 = %archive_digest.sha256,
        "wrote archive"
    );

    let digests_path = cfg.out.join(MEMBER_DIGESTS);
    let mut listing = String::new();
    for member in &members {
        if let Some(md5) = &member.md5 {
            listing.push_str(&format!("{md5}  {}\n", member.path));
        }
    }
    retrain_stage::write_atomic(&digests_path, listing.as_bytes())
        .map_err(write_err(&digests_path))?;

    if let Some(report_path) = &cfg.report {
        let report = Report {
            dataset: cfg.dataset.to_string(),
            seed: cfg.seed,
            images_per_batch: cfg.images_per_batch,
            archive: cfg.dataset.archive_name().to_owned(),
            label_names: cfg
                .dataset
                .label_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            coarse_label_names: (cfg.dataset == Dataset::Cifar100).then(|| {
                names::CIFAR100_COARSE
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            members,
            batches: batch_reports,
            collisions: synth.collisions.clone(),
        };
        let json = serde_json::to_vec(&report).expect("a report serialises");
        retrain_stage::write_atomic(report_path, &json).map_err(write_err(report_path))?;
    }

    let mut manifest = Manifest::new("synth", env!("CARGO_PKG_VERSION"));
    manifest
        .param("dataset", cfg.dataset)
        .param("images-per-batch", cfg.images_per_batch)
        .param("seed", cfg.seed)
        .param("collisions", cfg.collisions)
        .param("gzip-level", cfg.gzip_level);
    manifest.output_digest(cfg.dataset.archive_name(), archive_digest);
    manifest.output(&cfg.out, MEMBER_DIGESTS)?;
    manifest.write(&cfg.out)?;
    Ok(manifest)
}

type Archived = (Digest, Vec<MemberReport>, Vec<BatchReport>);

/// Streams the members through tar and gzip into an atomic file, hashing the compressed bytes.
/// Members are produced on another thread one ahead of the writer, so drawing and compressing
/// overlap.
fn write_archive(
    synth: &Synthetic,
    path: &Path,
    level: u32,
    with_report: bool,
    rep: &dyn Reporter,
) -> io::Result<Archived> {
    let file = Hashing::new(AtomicFile::create(path)?);
    let gz = flate2::GzBuilder::new().write(file, flate2::Compression::new(level));
    let mut tar = tar::Builder::new(Counting {
        inner: gz,
        bytes: 0,
    });
    let mut members = Vec::new();
    let mut batch_reports = Vec::new();

    std::thread::scope(|scope| -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel::<(Member, Vec<u8>, Option<BatchReport>)>(1);
        scope.spawn(move || {
            for member in synth.members() {
                let (bytes, report) = match &member.kind {
                    MemberKind::Dir | MemberKind::Empty => (Vec::new(), None),
                    MemberKind::Readme => (README_HTML.to_vec(), None),
                    MemberKind::Meta => (synth.pickle_meta(), None),
                    MemberKind::Batch(batch) => {
                        let pixels = synth.pixels(batch);
                        let report =
                            with_report.then(|| batch_report(synth, batch, &member, &pixels));
                        (synth.pickle_batch(batch, &pixels), report)
                    }
                };
                if tx.send((member, bytes, report)).is_err() {
                    return; // the writer failed and said why
                }
            }
        });
        for (member, bytes, report) in rx {
            let mut header = tar::Header::new_gnu();
            header.set_path(&member.path)?;
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            if let MemberKind::Dir = member.kind {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(bytes.len() as u64);
            }
            header.set_cksum();
            tar.append(&header, bytes.as_slice())?;
            if let MemberKind::Batch(batch) = &member.kind {
                rep.advance(batch.images.len() as u64);
            }
            let md5 =
                (!matches!(member.kind, MemberKind::Dir)).then(|| hex::encode(Md5::digest(&bytes)));
            members.push(MemberReport {
                path: member.path,
                bytes: bytes.len() as u64,
                md5,
            });
            batch_reports.extend(report);
        }
        Ok(())
    })?;

    tar.finish()?;
    let mut counting = tar.into_inner()?;
    let padding = (TAR_RECORD - counting.bytes % TAR_RECORD) % TAR_RECORD;
    counting.write_all(&vec![0; padding as usize])?;
    let hashing = counting.inner.finish()?;
    let (file, digest) = hashing.finish();
    file.commit()?;
    Ok((digest, members, batch_reports))
}

fn batch_report(synth: &Synthetic, batch: &Batch, member: &Member, pixels: &[u8]) -> BatchReport {
    let n_rows = batch.images.len();
    let samples = (0..n_rows.min(64))
        .map(|k| {
            let row = k * n_rows / n_rows.min(64);
            let (y, x, c) = ((k * 7 + 3) % 32, (k * 13 + 5) % 32, k % 3);
            let value = image::pixel(&pixels[row * ROW..(row + 1) * ROW], y, x, c);
            [row, y, x, c, usize::from(value)]
        })
        .collect();
    BatchReport {
        member: member.path.clone(),
        batch_label: batch.batch_label.clone(),
        labels: synth.labels(batch).to_vec(),
        coarse_labels: (synth.dataset == Dataset::Cifar100).then(|| synth.coarse_labels(batch)),
        filenames: synth.filenames(batch).to_vec(),
        data_sha256: hex::encode(Sha256::digest(pixels)),
        row_md5: pixels
            .chunks(ROW)
            .map(|row| hex::encode(Md5::digest(row)))
            .collect(),
        samples,
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes (SHA-256) and counts the bytes written through it.
struct Hashing<W> {
    inner: W,
    sha256: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            sha256: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, Digest) {
        let digest = Digest {
            sha256: hex::encode(self.sha256.finalize()),
            bytes: self.bytes,
        };
        (self.inner, digest)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
