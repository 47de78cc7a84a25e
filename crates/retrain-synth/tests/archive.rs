//! The synthetic archive against the real format: golden `batches.meta`, member order, pickles that
//! serde-pickle decodes as it decodes the real ones, determinism, collisions, learnability.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use md5::Digest as _;

use retrain_stage::NoProgress;
use retrain_synth::image::{PLANE, ROW, SIDE};
use retrain_synth::{Config, Dataset, MEMBER_DIGESTS, Synthetic};
use serde_pickle::{HashableValue, Value};

fn generate(out: &Path, dataset: Dataset, images_per_batch: usize, seed: u64) -> Config {
    let mut cfg = Config::new(out.to_owned());
    cfg.dataset = dataset;
    cfg.images_per_batch = images_per_batch;
    cfg.seed = seed;
    cfg.gzip_level = 1;
    retrain_synth::run(&cfg, &NoProgress).unwrap();
    cfg
}

/// Archive members in order: (path, is_dir, bytes).
fn members(archive: &Path) -> Vec<(String, bool, Vec<u8>)> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let is_dir = entry.header().entry_type().is_dir();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (path, is_dir, bytes)
        })
        .collect()
}

fn key(name: &str) -> HashableValue {
    HashableValue::Bytes(name.as_bytes().to_vec())
}

fn dict(bytes: &[u8]) -> BTreeMap<HashableValue, Value> {
    match serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new()).unwrap() {
        Value::Dict(d) => d,
        other => panic!("not a dict: {other:?}"),
    }
}

fn ints(value: &Value) -> Vec<i64> {
    match value {
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::I64(i) => *i,
                other => panic!("not an int: {other:?}"),
            })
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("not a str: {other:?}"),
            })
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// The pixel bytes of a batch's `data`, through serde-pickle's view of the numpy layout (BUILD
/// replaces the array by its state tuple).
fn pixels(value: &Value, rows: usize) -> Vec<u8> {
    let Value::Tuple(state) = value else {
        panic!("data is not the numpy state tuple: {value:?}")
    };
    assert_eq!(state.len(), 5);
    assert_eq!(state[0], Value::I64(1), "state version");
    assert_eq!(
        state[1],
        Value::Tuple(vec![Value::I64(rows as i64), Value::I64(ROW as i64)])
    );
    assert_eq!(state[3], Value::Bool(false), "C order");
    match &state[4] {
        Value::Bytes(b) => b.clone(),
        other => panic!("raw data is not bytes: {other:?}"),
    }
}

#[test]
fn batches_meta_is_the_real_file_byte_for_byte() {
    let real = include_bytes!("fixtures/batches.meta");
    let synth = Synthetic::new(Dataset::Cifar10, 10_000, 0, 2).unwrap();
    assert_eq!(synth.pickle_meta(), real);
}

#[test]
fn the_archive_has_the_real_members_in_the_real_order_and_digests_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = generate(tmp.path(), Dataset::Cifar10, 20, 3);
    let archive = tmp.path().join("cifar-10-python.tar.gz");
    let found = members(&archive);
    let names: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "cifar-10-batches-py/",
            "cifar-10-batches-py/data_batch_4",
            "cifar-10-batches-py/readme.html",
            "cifar-10-batches-py/test_batch",
            "cifar-10-batches-py/data_batch_3",
            "cifar-10-batches-py/batches.meta",
            "cifar-10-batches-py/data_batch_2",
            "cifar-10-batches-py/data_batch_5",
            "cifar-10-batches-py/data_batch_1",
        ]
    );
    assert!(found[0].1, "the folder is a directory entry");

    let digests = std::fs::read_to_string(tmp.path().join(MEMBER_DIGESTS)).unwrap();
    let lines: Vec<&str> = digests.lines().collect();
    assert_eq!(lines.len(), 8);
    for ((path, _, bytes), line) in found[1..].iter().zip(&lines) {
        let md5 = format!("{:x}", md5::Md5::digest(bytes));
        assert_eq!(*line, format!("{md5}  {path}"));
    }

    let manifest = retrain_stage::Manifest::read(tmp.path()).unwrap().unwrap();
    assert_eq!(manifest.stage, "synth");
    assert_eq!(manifest.params["images-per-batch"], "20");
    assert_eq!(manifest.params["seed"], "3");
    let digest = retrain_stage::digest_file(&archive).unwrap();
    assert_eq!(manifest.outputs["cifar-10-python.tar.gz"], digest);
    assert_eq!(cfg.collisions, 2);
}

#[test]
fn batches_decode_with_serde_pickle_to_what_the_generator_drew() {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path(), Dataset::Cifar10, 40, 5);
    let synth = Synthetic::new(Dataset::Cifar10, 40, 5, 2).unwrap();
    let found = members(&tmp.path().join("cifar-10-python.tar.gz"));
    let mut per_class = [0usize; 10];
    for batch in synth.batches() {
        let path = format!("cifar-10-batches-py/{}", batch.name);
        let bytes = &found.iter().find(|(p, _, _)| *p == path).unwrap().2;
        let d = dict(bytes);
        assert_eq!(
            d.keys().cloned().collect::<Vec<_>>().len(),
            4,
            "{path}: four keys"
        );
        assert_eq!(
            d[&key("batch_label")],
            Value::Bytes(batch.batch_label.clone().into_bytes())
        );
        let labels = ints(&d[&key("labels")]);
        assert_eq!(labels.len(), 40);
        assert!(labels.iter().all(|&l| (0..10).contains(&l)));
        let want: Vec<i64> = synth.labels(&batch).iter().map(|&l| l.into()).collect();
        assert_eq!(labels, want);
        if batch.train {
            for &l in &labels {
                per_class[l as usize] += 1;
            }
        }
        assert_eq!(strings(&d[&key("filenames")]), synth.filenames(&batch));
        assert_eq!(pixels(&d[&key("data")], 40), synth.pixels(&batch));
    }
    assert_eq!(
        per_class, [20; 10],
        "classes are balanced over the training split"
    );

    let meta = dict(
        &found
            .iter()
            .find(|(p, _, _)| p.ends_with("batches.meta"))
            .unwrap()
            .2,
    );
    assert_eq!(meta[&key("num_cases_per_batch")], Value::I64(40));
    assert_eq!(
        strings(&meta[&key("label_names")]),
        retrain_synth::names::CIFAR10
    );
}

#[test]
fn cifar100_has_fine_and_coarse_labels_that_agree() {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path(), Dataset::Cifar100, 30, 1);
    let found = members(&tmp.path().join("cifar-100-python.tar.gz"));
    let names: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "cifar-100-python/",
            "cifar-100-python/file.txt~",
            "cifar-100-python/train",
            "cifar-100-python/test",
            "cifar-100-python/meta",
        ]
    );
    assert!(found[1].2.is_empty());
    let train = dict(&found[2].2);
    let fine = ints(&train[&key("fine_labels")]);
    let coarse = ints(&train[&key("coarse_labels")]);
    assert_eq!(fine.len(), 150);
    for (f, c) in fine.iter().zip(&coarse) {
        assert_eq!(
            retrain_synth::names::cifar100_coarse(*f as usize) as i64,
            *c
        );
    }
    assert_eq!(pixels(&train[&key("data")], 150).len(), 150 * ROW);
    let meta = dict(&found[4].2);
    assert_eq!(strings(&meta[&key("fine_label_names")]).len(), 100);
    assert_eq!(strings(&meta[&key("coarse_label_names")]).len(), 20);
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let digest = |dir: &str, seed| {
        generate(&tmp.path().join(dir), Dataset::Cifar10, 30, seed);
        retrain_stage::digest_path(&tmp.path().join(dir)).unwrap()
    };
    let first = digest("a", 9);
    assert_eq!(digest("b", 9), first);
    assert_ne!(digest("c", 10), first);
}

#[test]
fn colliding_names_stay_within_a_class_and_are_reported() {
    let synth = Synthetic::new(Dataset::Cifar10, 100, 4, 3).unwrap();
    assert_eq!(synth.collisions.len(), 3);
    let batches = synth.batches();
    let label_of = |(name, row): &(String, usize)| {
        let batch = batches.iter().find(|b| &b.name == name).unwrap();
        assert_eq!(
            synth.filenames(batch)[*row],
            synth
                .collisions
                .iter()
                .find(|c| c.images.iter().any(|i| i.0 == *name && i.1 == *row))
                .unwrap()
                .filename
        );
        synth.labels(batch)[*row]
    };
    for collision in &synth.collisions {
        let [a, b] = &collision.images;
        assert_ne!(a, b);
        assert_eq!(label_of(a), label_of(b), "{collision:?}");
    }
    assert_ne!(
        synth.collisions[0].images[0].0, synth.collisions[0].images[1].0,
        "the first collision spans two batches"
    );
    // Every other name is unique.
    let mut names: Vec<&String> = batches
        .iter()
        .filter(|b| b.train)
        .flat_map(|b| synth.filenames(b))
        .collect();
    names.sort();
    let total = names.len();
    names.dedup();
    assert_eq!(total - names.len(), 3);
}

#[test]
fn bad_options_are_clear_errors() {
    let err = Synthetic::new(Dataset::Cifar10, 0, 0, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "images per batch must be between 1 and 279620, got 0"
    );
    let err = Synthetic::new(Dataset::Cifar10, 1, 0, 30).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot make 30 file-name collisions"),
        "{err}"
    );
}

#[test]
fn a_nearest_centroid_classifier_beats_chance_by_far() {
    let synth = Synthetic::new(Dataset::Cifar10, 500, 11, 0).unwrap();
    // Features: the mean colour of each 8×8 cell (48 numbers).
    let features = |row: &[u8]| -> Vec<f32> {
        let mut f = vec![0f32; 48];
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    f[c * 16 + (y / 8) * 4 + x / 8] += f32::from(row[c * PLANE + y * SIDE + x]);
                }
            }
        }
        f
    };
    let mut centroids = vec![vec![0f32; 48]; 10];
    let mut counts = [0f32; 10];
    let batches = synth.batches();
    for batch in batches.iter().filter(|b| b.train) {
        let pixels = synth.pixels(batch);
        for (row, &label) in pixels.chunks(ROW).zip(synth.labels(batch)) {
            for (acc, v) in centroids[usize::from(label)].iter_mut().zip(features(row)) {
                *acc += v;
            }
            counts[usize::from(label)] += 1.0;
        }
    }
    for (centroid, n) in centroids.iter_mut().zip(counts) {
        centroid.iter_mut().for_each(|v| *v /= n);
    }
    let test = batches.iter().find(|b| !b.train).unwrap();
    let pixels = synth.pixels(test);
    let mut correct = 0;
    for (row, &label) in pixels.chunks(ROW).zip(synth.labels(test)) {
        let f = features(row);
        let distance = |c: &Vec<f32>| {
            c.iter()
                .zip(&f)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        };
        let best = (0..10)
            .min_by(|&a, &b| distance(&centroids[a]).total_cmp(&distance(&centroids[b])))
            .unwrap();
        correct += usize::from(best == usize::from(label));
    }
    let accuracy = correct as f32 / 500.0;
    eprintln!("nearest-centroid accuracy {accuracy}");
    assert!(accuracy > 0.5, "accuracy {accuracy} (chance is 0.1)");
}
