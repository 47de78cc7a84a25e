//! Untrusted input: hostile file and class names, corrupt batches, labels out of range, missing
//! files. Every error names the file; nothing is written outside the output folder.

mod common;

use std::fs;
use std::path::Path;

use common::{Batches, cifar10_batch, cifar10_meta, pattern, read_png, tree};
use retrain_sort::report::Report;
use retrain_sort::{Dataset, Labels, Source};
use retrain_stage::NoProgress;

const CLASSES: [&[u8]; 10] = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
];

/// A CIFAR-10 batches folder: `data_batch_1` holds `rows`, the other batches one plain truck each.
fn write_dataset(dir: &Path, rows: &[(i64, &[u8], &[u8])], classes: &[&[u8]]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("batches.meta"), cifar10_meta(classes)).unwrap();
    fs::write(dir.join("data_batch_1"), cifar10_batch(rows)).unwrap();
    for (k, name) in [
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    .iter()
    .enumerate()
    {
        let image = pattern(100 + k);
        let file = format!("plain_{k}.png");
        fs::write(
            dir.join(name),
            cifar10_batch(&[(9, file.as_bytes(), &image)]),
        )
        .unwrap();
    }
}

fn run(input: &Path, out: &Path) -> Result<retrain_stage::Manifest, retrain_sort::Error> {
    let cfg = common::config(Source::Dir(input.to_owned()), out);
    retrain_sort::run(&cfg, &NoProgress)
}

#[test]
fn hostile_file_names_are_made_safe_and_every_image_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("batches");
    let names: [&[u8]; 13] = [
        b"../../escape.png",
        b"/etc/passwd",
        b"a/b.png",
        b"a_b.png", // what a/b.png becomes: a collision, both kept
        b"back\\slash.png",
        b"nul\0byte.png",
        b".hidden.png",
        b"..",
        b"",
        b"no_extension",
        b"line\nbreak.png",
        b"dots..inside.png",
        b"\xc3\xa9t\xc3\xa9.png", // été.png: kept as it is
    ];
    let images: Vec<Vec<u8>> = (0..names.len()).map(pattern).collect();
    let rows: Vec<(i64, &[u8], &[u8])> = names
        .iter()
        .zip(&images)
        .map(|(name, image)| (3, *name, image.as_slice()))
        .collect();
    write_dataset(&input, &rows, &CLASSES);
    let out = tmp.path().join("out");
    run(&input, &out).unwrap();

    let cats = out.join("train_dir/cat");
    let mut written: Vec<String> = fs::read_dir(&cats)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let mut want = vec![
        "______escape.png",
        "_etc_passwd.png",
        "a_b.png",
        "a_b__data_batch_1_r0003.png",
        "back_slash.png",
        "nul_byte.png",
        "_hidden.png",
        "__.png",
        "unnamed.png",
        "no_extension.png",
        "line_break.png",
        "dots__inside.png",
        "été.png",
    ];
    want.sort();
    assert_eq!(written, want);
    // Nothing escaped the output folder or the class folder.
    let top = |dir: &Path| -> Vec<String> {
        tree(dir)
            .into_iter()
            .filter(|p| !p.trim_end_matches('/').contains('/'))
            .collect()
    };
    assert_eq!(top(tmp.path()), ["batches/", "out/"]);
    assert_eq!(
        top(&out),
        [
            "labels.txt",
            "manifest.json",
            "sort-report.json",
            "train_dir/",
            "validation_dir/"
        ]
    );
    assert!(
        tree(&out.join("train_dir"))
            .iter()
            .all(|p| p.matches('/').count() <= 1)
    );
    // Each image is where its sanitised name says, pixel for pixel.
    let (_, _, png) = read_png(&cats.join("a_b__data_batch_1_r0003.png"));
    assert_eq!(png[0..3], [images[3][0], images[3][1024], images[3][2048]]);
    let (_, _, png) = read_png(&cats.join("a_b.png"));
    assert_eq!(png[0..3], [images[2][0], images[2][1024], images[2][2048]]);

    let report: Report =
        serde_json::from_slice(&fs::read(out.join("sort-report.json")).unwrap()).unwrap();
    let sanitised: Vec<(&str, &str)> = report
        .sanitised
        .iter()
        .map(|s| (s.original.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(sanitised.len(), 11);
    assert_eq!(sanitised[0], ("../../escape.png", "______escape.png"));
    assert_eq!(sanitised[4], ("nul\0byte.png", "nul_byte.png"));
    assert_eq!(report.sanitised[7].image.row, 8);
    assert_eq!(report.sanitised[7].image.batch, "data_batch_1");
    assert_eq!(report.collisions.len(), 1);
    assert_eq!(report.collisions[0].name, "a_b.png");
    assert_eq!(report.splits[0].images, 13 + 4);
}

#[test]
fn hostile_class_names_are_made_safe() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("batches");
    let mut classes = CLASSES;
    classes[0] = b"../up";
    classes[1] = b"";
    classes[2] = b"a/b";
    classes[3] = b"new\nline";
    let image = pattern(1);
    write_dataset(&input, &[(0, b"x.png", &image)], &classes);
    let out = tmp.path().join("out");
    run(&input, &out).unwrap();
    let labels = fs::read_to_string(out.join("labels.txt")).unwrap();
    assert_eq!(
        labels.lines().take(4).collect::<Vec<_>>(),
        ["___up", "unnamed", "a_b", "new_line"]
    );
    assert_eq!(labels.lines().count(), 10);
    assert!(out.join("train_dir/___up/x.png").is_file());
    assert!(out.join("train_dir/unnamed").is_dir());
    let report: Report =
        serde_json::from_slice(&fs::read(out.join("sort-report.json")).unwrap()).unwrap();
    assert_eq!(report.sanitised_classes.len(), 4);
    assert_eq!(report.sanitised_classes[3].original, "new\nline");
}

#[test]
fn classes_that_would_share_a_folder_are_an_error_naming_the_meta_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("batches");
    let mut classes = CLASSES;
    classes[4] = b"c/d";
    classes[7] = b"c_d";
    let image = pattern(1);
    write_dataset(&input, &[(0, b"x.png", &image)], &classes);
    let err = run(&input, &tmp.path().join("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: classes 4 and 7 (\"c/d\", \"c_d\") would share the folder \"c_d\"",
            input.join("batches.meta").display()
        )
    );
}

#[test]
fn a_corrupt_batch_is_an_error_naming_it() {
    let batches = Batches::cifar10();
    let path = batches.dir.join("data_batch_3");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 100);
    fs::write(&path, &bytes).unwrap();
    let err = run(&batches.dir, &batches.out("out")).unwrap_err();
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
    assert!(matches!(err, retrain_sort::Error::Decode(_)));

    fs::write(&path, b"not a pickle at all").unwrap();
    let err = run(&batches.dir, &batches.out("out")).unwrap_err();
    assert!(err.to_string().contains("data_batch_3"), "{err}");
}

#[test]
fn a_label_out_of_range_is_an_error_naming_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("batches");
    let image = pattern(1);
    write_dataset(&input, &[(10, b"x.png", &image)], &CLASSES);
    let err = run(&input, &tmp.path().join("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: `labels[0]` is 10, outside 0..10",
            input.join("data_batch_1").display()
        )
    );
    write_dataset(&input, &[(-1, b"x.png", &image)], &CLASSES);
    let err = run(&input, &tmp.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("outside 0..10"), "{err}");
}

#[test]
fn a_missing_batch_or_meta_file_is_an_error_naming_it() {
    let batches = Batches::cifar10();
    fs::remove_file(batches.dir.join("test_batch")).unwrap();
    let err = run(&batches.dir, &batches.out("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("reading {}", batches.dir.join("test_batch").display())
    );
    fs::remove_file(batches.dir.join("batches.meta")).unwrap();
    let err = run(&batches.dir, &batches.out("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("reading {}", batches.dir.join("batches.meta").display())
    );
}

#[test]
fn cifar100_batches_read_as_cifar10_are_an_error() {
    let batches = Batches::new(retrain_synth::Dataset::Cifar100, 10, 1, 0);
    let mut cfg = common::config(Source::Dir(batches.dir.clone()), &batches.out("out"));
    cfg.dataset = Dataset::Cifar10;
    cfg.labels = Labels::Fine;
    let err = retrain_sort::run(&cfg, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("batches.meta"), "{err}");
}
