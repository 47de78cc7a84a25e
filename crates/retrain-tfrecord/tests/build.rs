//! The sharded builder on small trees: features, labels, shard names and counts, determinism across
//! thread counts, the seed, skipped files, class-folder errors, stale shards, atomic shard names
//! and the manifest.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{CLASSES, Tree, jpeg_bytes, listing, pixels, png_bytes, shards};
use retrain_stage::{Freshness, NoProgress, Reporter};
use retrain_tfrecord::build::REPORT_FILE;
use retrain_tfrecord::{Error, ImageRecord, read_images};

fn records_of(dir: &Path, prefix: &str) -> Vec<ImageRecord> {
    let files: Vec<PathBuf> = shards(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    read_images(&files).collect::<Result<_, _>>().unwrap()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join(REPORT_FILE)).unwrap()).unwrap()
}

#[test]
fn every_image_becomes_an_example_with_the_references_features() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 4, 2);
    // A JPEG is passed through as it is.
    let jpeg = jpeg_bytes(&pixels(16, 9, 77));
    tree.write(&tree.train, "dog", "photo.jpg", &jpeg);
    let out = tmp.path().join("tfrecords");
    let built = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap();

    let train = records_of(&out, "train-");
    let validation = records_of(&out, "validation-");
    assert_eq!((train.len(), validation.len()), (13, 6));
    for (split_dir, records) in [(&tree.train, &train), (&tree.validation, &validation)] {
        let mut seen = Vec::new();
        for record in records {
            let class_idx = CLASSES.iter().position(|c| *c == record.text).unwrap();
            assert_eq!(record.label, class_idx as i64 + 1, "labels are 1-based");
            assert_eq!(
                (
                    record.channels,
                    record.colorspace.as_str(),
                    record.format.as_str()
                ),
                (3, "RGB", "JPEG")
            );
            let source = fs::read(split_dir.join(&record.text).join(&record.filename)).unwrap();
            let decoded =
                image::load_from_memory_with_format(&record.encoded, image::ImageFormat::Jpeg)
                    .unwrap()
                    .into_rgb8();
            assert_eq!(
                (i64::from(decoded.height()), i64::from(decoded.width())),
                (record.height, record.width)
            );
            if record.filename.ends_with(".jpg") {
                assert_eq!(record.encoded, source, "JPEG files are passed through");
            } else {
                let original = image::load_from_memory(&source).unwrap().into_rgb8();
                let max_diff = original
                    .as_raw()
                    .iter()
                    .zip(decoded.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(
                    max_diff <= 8,
                    "{}: max difference {max_diff}",
                    record.filename
                );
            }
            seen.push(format!("{}/{}", record.text, record.filename));
        }
        seen.sort();
        let mut expected: Vec<String> = CLASSES
            .iter()
            .flat_map(|c| {
                listing(&split_dir.join(c))
                    .into_iter()
                    .map(move |n| format!("{c}/{n}"))
            })
            .collect();
        expected.sort();
        assert_eq!(seen, expected, "every file exactly once");
    }
    // Shuffled: not in class order.
    let labels: Vec<i64> = train.iter().map(|r| r.label).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_ne!(labels, sorted);
    assert_eq!(built.report.splits["train"].records, 13);
}

#[test]
fn shards_are_named_and_filled_as_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 5, 3);
    let out = tmp.path().join("out");
    let mut cfg = tree.config(&out);
    cfg.train_shards = Some(4);
    cfg.validation_shards = Some(2);
    retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
    assert_eq!(
        listing(&out),
        [
            "manifest.json",
            "report.json",
            "train-00000-of-00004",
            "train-00001-of-00004",
            "train-00002-of-00004",
            "train-00003-of-00004",
            "validation-00000-of-00002",
            "validation-00001-of-00002",
        ]
    );
    let counts = |name: &str| {
        retrain_tfrecord::ExampleReader::open(&out.join(name))
            .unwrap()
            .count()
    };
    // 15 images in 4 shards: boundaries at 15 * s / 4 = 0, 3, 7, 11, 15.
    assert_eq!(
        [
            counts("train-00000-of-00004"),
            counts("train-00001-of-00004"),
            counts("train-00002-of-00004"),
            counts("train-00003-of-00004")
        ],
        [3, 4, 4, 4]
    );
    assert_eq!(
        [
            counts("validation-00000-of-00002"),
            counts("validation-00001-of-00002")
        ],
        [4, 5]
    );
    let report = report(&out);
    assert_eq!(report["splits"]["train"]["shards"][1]["records"], 4);

    // More shards than images: the extra shards exist and hold no record, as the reference's.
    let out = tmp.path().join("many");
    let mut cfg = tree.config(&out);
    cfg.validation_shards = Some(12);
    retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
    let sizes: Vec<u64> = (0..12)
        .map(|s| {
            fs::metadata(out.join(format!("validation-{s:05}-of-00012")))
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes.iter().filter(|&&n| n == 0).count(), 3);

    // Default counts follow the data: one shard per 1024 images, at least one.
    let out = tmp.path().join("default");
    let built = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap();
    assert_eq!(built.manifest.params["train-shards"], "1");
    assert_eq!(built.manifest.params["validation-shards"], "1");
    assert_eq!(
        listing(&out)[2..],
        ["train-00000-of-00001", "validation-00000-of-00001"]
    );
}

#[test]
fn the_bytes_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    // Several chunks per shard, so threads interleave within a shard.
    let tree = Tree::new(&tmp.path().join("images"), 60, 25);
    let run = |threads: usize| {
        let out = tmp.path().join(format!("threads-{threads}"));
        let mut cfg = tree.config(&out);
        cfg.threads = threads;
        cfg.train_shards = Some(2);
        let built = retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
        let bytes: BTreeMap<String, Vec<u8>> = listing(&out)
            .into_iter()
            .map(|n| {
                let b = fs::read(out.join(&n)).unwrap();
                (n, b)
            })
            .collect();
        (built.manifest, bytes)
    };
    let (one_manifest, one) = run(1);
    let (four_manifest, four) = run(4);
    assert_eq!(one_manifest, four_manifest);
    assert_eq!(one, four);
    assert!(!one_manifest.params.contains_key("threads"));
}

#[test]
fn the_seed_changes_the_order_only() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 6, 2);
    let order = |seed: u64| {
        let out = tmp.path().join(format!("seed-{seed}"));
        let mut cfg = tree.config(&out);
        cfg.seed = seed;
        let built = retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
        assert_eq!(built.manifest.params["seed"], seed.to_string());
        records_of(&out, "train-")
            .into_iter()
            .map(|r| r.filename)
            .collect::<Vec<_>>()
    };
    let (a, b, again) = (order(1), order(2), order(1));
    assert_eq!(a, again);
    assert_ne!(a, b);
    let (mut a_sorted, mut b_sorted) = (a.clone(), b.clone());
    a_sorted.sort();
    b_sorted.sort();
    assert_eq!(a_sorted, b_sorted);
    // The reference's seed is the default.
    let cfg = tree.config(Path::new("x"));
    assert_eq!(cfg.seed, 12345);
}

#[test]
fn files_that_are_not_images_are_reported_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 3, 2);
    tree.write(
        &tree.train,
        "dog",
        "broken.png",
        b"\x89PNG\r\n\x1a\nnot really",
    );
    tree.write(&tree.train, "frog", "notes.txt", b"hello");
    fs::create_dir_all(tree.train.join("cat/subfolder")).unwrap();
    tree.write(
        &tree.train,
        "cat/subfolder",
        "deep.png",
        &png_bytes(&pixels(4, 4, 1)),
    );
    // Hidden files (a sorter's temporary files) are not entries.
    tree.write(&tree.train, "cat", ".cat_s_9999.png.partial", b"partial");
    let out = tmp.path().join("out");
    let built = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap();

    let train = &built.report.splits["train"];
    assert_eq!((train.files, train.records, train.skipped), (12, 9, 3));
    let skipped: Vec<(&str, &str)> = train
        .skipped_files
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 3);
    assert_eq!(
        skipped[0],
        ("cat/subfolder", "a directory, not an image file")
    );
    assert_eq!(skipped[1].0, "dog/broken.png");
    assert!(
        skipped[1].1.starts_with("not a decodable PNG: "),
        "{}",
        skipped[1].1
    );
    assert_eq!(
        skipped[2],
        ("frog/notes.txt", "neither a PNG nor a JPEG file")
    );
    let dog = &train.classes[1];
    assert_eq!(
        (dog.label, dog.name.as_str(), dog.files, dog.records),
        (2, "dog", 4, 3)
    );
    assert_eq!(records_of(&out, "train-").len(), 9);
    // The report on disk says the same and is in the manifest.
    assert_eq!(report(&out)["splits"]["train"]["skipped"], 3);
    assert!(built.manifest.outputs.contains_key(REPORT_FILE));
}

#[test]
fn a_missing_or_empty_class_folder_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 2, 1);
    let out = tmp.path().join("out");
    fs::remove_dir_all(tree.validation.join("frog")).unwrap();
    let err = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::ClassFolder { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: class folder is missing",
            tree.validation.join("frog").display()
        )
    );
    assert!(
        !out.exists(),
        "nothing is written before the inputs are checked"
    );

    fs::create_dir_all(tree.validation.join("frog")).unwrap();
    tree.write(&tree.validation, "frog", ".hidden", b"");
    let err = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: class folder has no files",
            tree.validation.join("frog").display()
        )
    );

    fs::write(tree.labels.clone(), "cat\ndog\n\nfrog\n").unwrap();
    let err = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: line 3 is blank", tree.labels.display())
    );
}

#[test]
fn stale_shards_of_an_earlier_run_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 3, 2);
    let out = tmp.path().join("out");
    let mut cfg = tree.config(&out);
    cfg.train_shards = Some(3);
    cfg.validation_shards = Some(2);
    retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
    fs::write(
        out.join(".train-00000-of-00009.partial"),
        b"left by a crash",
    )
    .unwrap();
    fs::write(out.join("notes.txt"), b"mine").unwrap();
    cfg.train_shards = Some(2);
    cfg.validation_shards = None;
    let built = retrain_tfrecord::build(&cfg, &NoProgress).unwrap();
    assert_eq!(
        listing(&out),
        [
            "manifest.json",
            "notes.txt",
            "report.json",
            "train-00000-of-00002",
            "train-00001-of-00002",
            "validation-00000-of-00001",
        ]
    );
    let outputs: Vec<&str> = built.manifest.outputs.keys().map(String::as_str).collect();
    assert_eq!(
        outputs,
        [
            "report.json",
            "train-00000-of-00002",
            "train-00001-of-00002",
            "validation-00000-of-00001"
        ]
    );
}

/// Lists the output directory whenever progress is reported, from the worker threads.
struct Watcher {
    dir: PathBuf,
    seen: Mutex<Vec<String>>,
}

impl Reporter for Watcher {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, _n: u64) {
        self.look();
    }
    fn finish(&self) {
        self.look();
    }
}

impl Watcher {
    fn look(&self) {
        let mut seen = self.seen.lock().unwrap();
        for name in listing(&self.dir) {
            if (name.starts_with("train-") || name.starts_with("validation-"))
                && !seen.contains(&name)
            {
                // Whatever a reader globs is complete: every record reads.
                let path = self.dir.join(&name);
                retrain_tfrecord::RecordReader::open(&path)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                seen.push(name);
            }
        }
    }
}

#[test]
fn readers_never_see_a_partial_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 150, 30);
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let watcher = Watcher {
        dir: out.clone(),
        seen: Mutex::new(Vec::new()),
    };
    let mut cfg = tree.config(&out);
    cfg.train_shards = Some(5);
    cfg.threads = 2;
    retrain_tfrecord::build(&cfg, &watcher).unwrap();
    let seen = watcher.seen.into_inner().unwrap();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.iter().all(|n| !n.ends_with(".partial")));
    assert!(listing(&out).iter().all(|n| !n.starts_with('.')));
}

#[test]
fn the_manifest_records_params_inputs_and_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 3, 2);
    // Files outside the class folders still count in the input digest, as retrain-stage digests.
    fs::write(tree.train.join("README"), b"not a class").unwrap();
    fs::create_dir_all(tree.train.join("unlisted")).unwrap();
    fs::write(tree.train.join("unlisted/x.png"), b"x").unwrap();
    tree.write(&tree.train, "cat", "broken.png", b"garbage");
    let out = tmp.path().join("out");
    let built = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap();
    let manifest = retrain_stage::Manifest::read(&out).unwrap().unwrap();
    assert_eq!(manifest, built.manifest);
    assert_eq!(manifest.stage, "tfrecord");
    let params: Vec<(&str, &str)> = manifest
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("seed", "12345"),
            ("train-shards", "1"),
            ("validation-shards", "1")
        ]
    );
    for (flag, path) in [
        ("train-dir", &tree.train),
        ("validation-dir", &tree.validation),
        ("labels", &tree.labels),
    ] {
        assert_eq!(
            manifest.inputs[flag],
            retrain_stage::digest_path(path).unwrap(),
            "{flag}"
        );
    }
    for (name, digest) in &manifest.outputs {
        assert_eq!(
            *digest,
            retrain_stage::digest_file(&out.join(name)).unwrap()
        );
    }
    let params: BTreeMap<String, String> = manifest.params.clone();
    let inputs: BTreeMap<String, PathBuf> = [
        ("train-dir", &tree.train),
        ("validation-dir", &tree.validation),
        ("labels", &tree.labels),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect();
    assert_eq!(
        retrain_stage::freshness(&out, "tfrecord", &params, &inputs).unwrap(),
        Freshness::UpToDate
    );
}

#[test]
fn the_output_cannot_be_inside_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 2, 1);
    let out = tree.train.join("records");
    let err = retrain_tfrecord::build(&tree.config(&out), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::OutputInsideInput { .. }), "{err}");
}

#[test]
fn zero_shards_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 2, 1);
    let mut cfg = tree.config(&tmp.path().join("out"));
    cfg.validation_shards = Some(0);
    let err = retrain_tfrecord::build(&cfg, &NoProgress).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--validation-shards must be at least 1, got 0"
    );
}
