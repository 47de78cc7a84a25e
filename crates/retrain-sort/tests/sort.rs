//! A synthetic dataset sorted: every pixel the right way up, class folders, labels file, counts,
//! collisions, manifest; CIFAR-100 fine and coarse; the same bytes whatever the thread count.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Batches, ROW, SIDE, read_png, sort_dir, tree};
use retrain_sort::report::Report;
use retrain_sort::{Dataset, Labels, Source};
use retrain_stage::{NoProgress, digest_path};
use retrain_synth::Synthetic;

/// Where each image of `synth` must be, relative to the output folder, with its CIFAR row.
fn expected(synth: &Synthetic, class_names: &[&str], coarse: bool) -> BTreeMap<String, Vec<u8>> {
    let renamed: BTreeSet<(String, usize)> = synth
        .collisions
        .iter()
        .map(|c| c.images[1].clone())
        .collect();
    let mut out = BTreeMap::new();
    for batch in synth.batches() {
        let pixels = synth.pixels(&batch);
        let labels = if coarse {
            synth.coarse_labels(&batch)
        } else {
            synth.labels(&batch).to_vec()
        };
        let split = if batch.train {
            "train_dir"
        } else {
            "validation_dir"
        };
        for (row, (label, filename)) in labels.iter().zip(synth.filenames(&batch)).enumerate() {
            let name = if renamed.contains(&(batch.name.clone(), row)) {
                let stem = filename.strip_suffix(".png").unwrap();
                format!("{stem}__{}_r{row:04}.png", batch.name)
            } else {
                filename.clone()
            };
            let path = format!("{split}/{}/{name}", class_names[usize::from(*label)]);
            let previous = out.insert(path.clone(), pixels[row * ROW..(row + 1) * ROW].to_vec());
            assert!(previous.is_none(), "{path} expected twice");
        }
    }
    out
}

/// Every PNG in `out` is exactly one expected image, pixel for pixel: PNG pixel (y, x) channel c
/// is the CIFAR row's byte `c*1024 + y*32 + x`.
fn check_images(out: &Path, expected: &BTreeMap<String, Vec<u8>>) {
    let written: BTreeSet<String> = tree(out)
        .into_iter()
        .filter(|p| p.ends_with(".png"))
        .collect();
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(written, wanted);
    for (path, row) in expected {
        let (width, height, pixels) = read_png(&out.join(path));
        assert_eq!((width, height), (32, 32), "{path}");
        for y in 0..SIDE {
            for x in 0..SIDE {
                for c in 0..3 {
                    assert_eq!(
                        pixels[(y * SIDE + x) * 3 + c],
                        row[c * 1024 + y * SIDE + x],
                        "{path}: pixel (y={y}, x={x}) channel {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn cifar10_is_sorted_pixel_exact_with_every_image_kept() {
    let batches = Batches::cifar10();
    let out = batches.out("images");
    let manifest = sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    let names = retrain_synth::Dataset::Cifar10.label_names();

    let expected = expected(&batches.synth, names, false);
    assert_eq!(expected.len(), 6 * 30);
    check_images(&out, &expected);
    let dirs: BTreeSet<String> = tree(&out)
        .into_iter()
        .filter(|p| p.ends_with('/'))
        .collect();
    let mut want_dirs = BTreeSet::from(["train_dir/".to_owned(), "validation_dir/".to_owned()]);
    for split in ["train_dir", "validation_dir"] {
        for name in names {
            want_dirs.insert(format!("{split}/{name}/"));
        }
    }
    assert_eq!(dirs, want_dirs, "class folders, and nothing hidden left");

    let labels = std::fs::read_to_string(out.join("labels.txt")).unwrap();
    assert_eq!(
        labels,
        names.iter().map(|n| format!("{n}\n")).collect::<String>()
    );
    assert_eq!(labels.lines().count(), 10);

    let report: Report =
        serde_json::from_slice(&std::fs::read(out.join("sort-report.json")).unwrap()).unwrap();
    assert_eq!(report.splits[0].dir, "train_dir");
    assert_eq!(report.splits[0].images, 150);
    assert_eq!(report.splits[1].images, 30);
    assert_eq!(report.splits[0].batches.len(), 5);
    assert_eq!(report.splits[0].batches[2].name, "data_batch_3");
    assert_eq!(report.splits[0].batches[2].images, 30);
    for (split_idx, split) in report.splits.iter().enumerate() {
        assert_eq!(
            split.classes.iter().map(|c| c.images).sum::<u64>(),
            split.images
        );
        for (label, class) in split.classes.iter().enumerate() {
            assert_eq!(class.name, names[label]);
            let prefix = format!("{}/{}/", split.dir, names[label]);
            let on_disk = expected.keys().filter(|p| p.starts_with(&prefix)).count();
            assert_eq!(
                class.images, on_disk as u64,
                "split {split_idx} class {label}"
            );
        }
    }
    assert_eq!(report.collisions.len(), 2);
    let mut image_order: Vec<_> = report.collisions.iter().map(|c| &c.image).collect();
    image_order.sort_by_key(|image| (image.batch.clone(), image.row));
    assert!(
        image_order
            .iter()
            .copied()
            .eq(report.collisions.iter().map(|c| &c.image)),
        "collisions are listed in batch order"
    );
    for synth in &batches.synth.collisions {
        let collision = report
            .collisions
            .iter()
            .find(|c| c.name == synth.filename)
            .unwrap();
        assert_eq!(collision.name, synth.filename);
        assert_eq!(
            (collision.kept.batch.clone(), collision.kept.row),
            synth.images[0]
        );
        assert_eq!(
            (collision.image.batch.clone(), collision.image.row),
            synth.images[1]
        );
        let path = out.join("train_dir").join(&collision.class);
        assert!(path.join(&collision.name).is_file());
        assert!(path.join(&collision.written).is_file());
        assert!(
            collision
                .written
                .contains(&format!("__{}_r", synth.images[1].0))
        );
    }
    assert!(report.sanitised.is_empty() && report.sanitised_classes.is_empty());

    assert_eq!(manifest.stage, "sort");
    let params: Vec<(&str, &str)> = manifest
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(params, [("dataset", "cifar10"), ("labels", "fine")]);
    assert_eq!(manifest.inputs.len(), 1);
    assert_eq!(manifest.inputs["input"], digest_path(&batches.dir).unwrap());
    let outputs: Vec<&str> = manifest.outputs.keys().map(String::as_str).collect();
    assert_eq!(
        outputs,
        [
            "labels.txt",
            "sort-report.json",
            "train_dir",
            "validation_dir"
        ]
    );
    for (relative, digest) in &manifest.outputs {
        assert_eq!(
            *digest,
            digest_path(&out.join(relative)).unwrap(),
            "{relative}"
        );
    }
    assert_eq!(
        retrain_stage::Manifest::read(&out).unwrap().as_ref(),
        Some(&manifest)
    );
}

#[test]
fn images_are_not_transposed() {
    // A pinned pixel of a pinned image: the synthetic images have a red ramp along x and a green
    // ramp along y, so the transposed image (the reference recipe's) differs.
    let batches = Batches::cifar10();
    let out = batches.out("images");
    sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    let synth = &batches.synth;
    let batch = &synth.batches()[0];
    let pixels = synth.pixels(batch);
    let row = &pixels[..ROW];
    let class = retrain_synth::Dataset::Cifar10.label_names()[usize::from(synth.labels(batch)[0])];
    let path = out
        .join("train_dir")
        .join(class)
        .join(&synth.filenames(batch)[0]);
    let (_, _, png) = read_png(&path);
    let (y, x) = (3, 29);
    for c in 0..3 {
        assert_eq!(png[(y * SIDE + x) * 3 + c], row[c * 1024 + y * SIDE + x]);
    }
    let transposed: Vec<u8> = (0..SIDE * SIDE * 3)
        .map(|i| {
            let (pixel, c) = (i / 3, i % 3);
            let (y, x) = (pixel / SIDE, pixel % SIDE);
            row[c * 1024 + x * SIDE + y]
        })
        .collect();
    assert_ne!(png, transposed);
    // Red grows along x (left to right), green along y (top to bottom), on average.
    let mean = |c: usize, pick: &dyn Fn(usize) -> (usize, usize)| -> f64 {
        (0..SIDE)
            .map(|k| {
                let (y, x) = pick(k);
                f64::from(png[(y * SIDE + x) * 3 + c])
            })
            .sum::<f64>()
            / SIDE as f64
    };
    assert!(
        mean(0, &|k| (k, 30)) > mean(0, &|k| (k, 1)) + 20.0,
        "red ramp along x"
    );
    assert!(
        mean(1, &|k| (30, k)) > mean(1, &|k| (1, k)) + 20.0,
        "green ramp along y"
    );
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let batches = Batches::new(retrain_synth::Dataset::Cifar100, 40, 3, 3);
    let fine_names = retrain_synth::Dataset::Cifar100.label_names();
    let coarse_names = retrain_synth::names::CIFAR100_COARSE;

    let fine = batches.out("fine");
    let manifest = sort_dir(&batches.dir, &fine, Dataset::Cifar100, Labels::Fine);
    assert_eq!(manifest.params["labels"], "fine");
    assert_eq!(manifest.params["dataset"], "cifar100");
    let expected_fine = expected(&batches.synth, fine_names, false);
    assert_eq!(expected_fine.len(), 200 + 40);
    check_images(&fine, &expected_fine);
    let labels = std::fs::read_to_string(fine.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().collect::<Vec<_>>(), fine_names);
    assert!(labels.ends_with(
        "tractor\ntrain\ntrout\ntulip\nturtle\nwardrobe\nwhale\nwillow_tree\nwolf\nwoman\nworm\n"
    ));

    let coarse = batches.out("coarse");
    sort_dir(&batches.dir, &coarse, Dataset::Cifar100, Labels::Coarse);
    let expected_coarse = expected(&batches.synth, &coarse_names, true);
    check_images(&coarse, &expected_coarse);
    let labels = std::fs::read_to_string(coarse.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().collect::<Vec<_>>(), coarse_names);
    let report: Report =
        serde_json::from_slice(&std::fs::read(coarse.join("sort-report.json")).unwrap()).unwrap();
    assert_eq!(report.labels, "coarse");
    assert_eq!(report.splits[0].classes.len(), 20);
    assert_eq!(report.splits[0].batches[0].name, "train");
    assert_eq!(report.splits[1].batches[0].name, "test");
    assert_eq!(report.collisions.len(), 3);
}

#[test]
fn coarse_labels_need_cifar100() {
    let batches = Batches::cifar10();
    let mut cfg = common::config(Source::Dir(batches.dir.clone()), &batches.out("images"));
    cfg.labels = Labels::Coarse;
    let err = retrain_sort::run(&cfg, &NoProgress).unwrap_err();
    assert_eq!(
        err.to_string(),
        "coarse labels exist only in cifar100, not in cifar10"
    );
}

#[test]
fn the_thread_count_does_not_change_the_bytes() {
    let batches = Batches::new(retrain_synth::Dataset::Cifar10, 200, 11, 4);
    let mut manifests = Vec::new();
    for threads in [1, 4] {
        let out = batches.out(&format!("threads-{threads}"));
        let mut cfg = common::config(Source::Dir(batches.dir.clone()), &out);
        cfg.threads = threads;
        let manifest = retrain_sort::run(&cfg, &NoProgress).unwrap();
        for split in ["train_dir", "validation_dir"] {
            assert_eq!(
                manifest.outputs[split],
                digest_path(&out.join(split)).unwrap()
            );
        }
        manifests.push(manifest);
    }
    assert_eq!(manifests[0], manifests[1]);
    assert!(!manifests[0].params.contains_key("threads"));
}
