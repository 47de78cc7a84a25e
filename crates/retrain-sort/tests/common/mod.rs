//! Fixtures: synthetic CIFAR batches written straight into a folder (or a real `.tar.gz`), running
//! the stage, and reading what it wrote.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use retrain_sort::{Config, Dataset, Labels, Source};
use retrain_stage::{Manifest, NoProgress};
use retrain_synth::Synthetic;
use retrain_synth::pickle::{self, Value};

/// Side of an image and bytes per CIFAR row.
pub const SIDE: usize = 32;
pub const ROW: usize = 3 * SIDE * SIDE;

/// A synthetic dataset's batch files, pickled exactly as the real ones, in a temporary folder.
pub struct Batches {
    pub tmp: tempfile::TempDir,
    /// The batches folder (`cifar-10-batches-py`, `cifar-100-python`).
    pub dir: PathBuf,
    pub synth: Synthetic,
}

impl Batches {
    /// Writes every batch and the meta file of a synthetic `dataset`.
    pub fn new(
        dataset: retrain_synth::Dataset,
        images_per_batch: usize,
        seed: u64,
        collisions: usize,
    ) -> Self {
        let synth = Synthetic::new(dataset, images_per_batch, seed, collisions).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(dataset.folder());
        std::fs::create_dir_all(&dir).unwrap();
        for batch in synth.batches() {
            let pixels = synth.pixels(&batch);
            std::fs::write(dir.join(&batch.name), synth.pickle_batch(&batch, &pixels)).unwrap();
        }
        let meta = match dataset {
            retrain_synth::Dataset::Cifar10 => "batches.meta",
            retrain_synth::Dataset::Cifar100 => "meta",
        };
        std::fs::write(dir.join(meta), synth.pickle_meta()).unwrap();
        Self { tmp, dir, synth }
    }

    /// The synthetic CIFAR-10 dataset most tests use: 30 images per batch, two collisions.
    pub fn cifar10() -> Self {
        Self::new(retrain_synth::Dataset::Cifar10, 30, 7, 2)
    }

    /// A fresh output folder beside the batches.
    pub fn out(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A CIFAR-10 batch pickle with the given rows: `(label, file name, pixels)`.
pub fn cifar10_batch(rows: &[(i64, &[u8], &[u8])]) -> Vec<u8> {
    let data: Vec<u8> = rows.iter().flat_map(|r| r.2.iter().copied()).collect();
    let batch = Value::Dict(vec![
        ("batch_label", Value::Str(b"training batch 1 of 5")),
        (
            "labels",
            Value::List(rows.iter().map(|r| Value::Int(r.0)).collect()),
        ),
        (
            "data",
            Value::U8Matrix {
                rows: rows.len(),
                cols: ROW,
                data: &data,
            },
        ),
        (
            "filenames",
            Value::List(rows.iter().map(|r| Value::Str(r.1)).collect()),
        ),
    ]);
    pickle::dumps(&batch, "numpy.core")
}

/// A CIFAR-10 `batches.meta` with the given class names.
pub fn cifar10_meta(names: &[&[u8]]) -> Vec<u8> {
    let meta = Value::Dict(vec![
        ("num_cases_per_batch", Value::Int(10_000)),
        (
            "label_names",
            Value::List(names.iter().map(|n| Value::Str(n)).collect()),
        ),
        ("num_vis", Value::Int(ROW as i64)),
    ]);
    pickle::dumps(&meta, "numpy.core")
}

/// An image whose every byte differs from its neighbours': `row[i] = (i * 7 + seed) % 256`.
pub fn pattern(seed: usize) -> Vec<u8> {
    (0..ROW).map(|i| ((i * 7 + seed) % 256) as u8).collect()
}

pub fn config(source: Source, out: &Path) -> Config {
    Config::new(source, out.to_owned())
}

/// Sorts a folder of batches.
pub fn sort_dir(input: &Path, out: &Path, dataset: Dataset, labels: Labels) -> Manifest {
    let mut cfg = config(Source::Dir(input.to_owned()), out);
    cfg.dataset = dataset;
    cfg.labels = labels;
    retrain_sort::run(&cfg, &NoProgress).unwrap()
}

/// An RGB PNG as `(width, height, pixels)`.
pub fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8();
    (image.width(), image.height(), image.into_raw())
}

/// Every path under `root`, relative, `/`-separated, directories with a trailing `/`.
pub fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, prefix: &str, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(root.join(prefix)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                out.insert(format!("{relative}/"));
                walk(root, &relative, out);
            } else {
                out.insert(relative);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, "", &mut out);
    out
}
