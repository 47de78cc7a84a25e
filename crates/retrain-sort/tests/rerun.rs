//! Reruns: over a tree a killed or damaged run left, over a finished one, over another dataset's;
//! a failing run leaves the previous class folders as they were.

mod common;

use std::fs;
use std::path::Path;

use common::{Batches, sort_dir, tree};
use retrain_sort::{Dataset, Labels, Source};
use retrain_stage::{NoProgress, digest_path};

fn outputs(out: &Path) -> Vec<(String, retrain_stage::Digest)> {
    [
        "train_dir",
        "validation_dir",
        "labels.txt",
        "sort-report.json",
    ]
    .iter()
    .map(|name| (name.to_string(), digest_path(&out.join(name)).unwrap()))
    .collect()
}

#[test]
fn a_rerun_repairs_a_damaged_tree() {
    let batches = Batches::cifar10();
    let clean = batches.out("clean");
    let clean_manifest = sort_dir(&batches.dir, &clean, Dataset::Cifar10, Labels::Fine);

    let damaged = batches.out("damaged");
    sort_dir(&batches.dir, &damaged, Dataset::Cifar10, Labels::Fine);
    let cats = damaged.join("train_dir/cat");
    let mut pngs: Vec<_> = fs::read_dir(&cats)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pngs.sort();
    fs::remove_file(&pngs[0]).unwrap();
    fs::remove_file(&pngs[1]).unwrap();
    fs::write(&pngs[2], b"\x89PNG\r\n").unwrap(); // truncated
    fs::write(cats.join("stray.png"), b"not ours").unwrap();
    fs::write(cats.join(".x.partial"), b"stale").unwrap();
    fs::create_dir(damaged.join("train_dir/stray_class")).unwrap();
    fs::write(damaged.join("train_dir/stray_class/a.png"), b"x").unwrap();
    fs::write(damaged.join("train_dir/stray.txt"), b"x").unwrap();
    fs::create_dir(damaged.join("validation_dir/.3.partial")).unwrap();
    fs::write(damaged.join("validation_dir/.3.partial/half.png"), b"x").unwrap();
    fs::write(damaged.join(".labels.txt.partial"), b"airplane").unwrap();
    fs::write(damaged.join("labels.txt"), b"airplanenautomobilen").unwrap();
    fs::remove_file(damaged.join("manifest.json")).unwrap();

    let manifest = sort_dir(&batches.dir, &damaged, Dataset::Cifar10, Labels::Fine);
    assert_eq!(manifest, clean_manifest);
    assert_eq!(outputs(&damaged), outputs(&clean));
    assert_eq!(
        tree(&damaged),
        tree(&clean),
        "nothing stray or hidden is left"
    );
}

#[test]
fn a_rerun_over_a_finished_tree_gives_the_same_manifest() {
    let batches = Batches::cifar10();
    let out = batches.out("images");
    let first = sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    let before = tree(&out);
    let second = sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    assert_eq!(first, second);
    assert_eq!(tree(&out), before);
}

#[test]
fn another_dataset_replaces_the_class_folders() {
    let cifar10 = Batches::cifar10();
    let cifar100 = Batches::new(retrain_synth::Dataset::Cifar100, 20, 5, 0);
    let out = cifar10.out("images");
    sort_dir(&cifar10.dir, &out, Dataset::Cifar10, Labels::Fine);
    sort_dir(&cifar100.dir, &out, Dataset::Cifar100, Labels::Coarse);
    let clean = cifar100.out("clean");
    sort_dir(&cifar100.dir, &clean, Dataset::Cifar100, Labels::Coarse);
    assert_eq!(tree(&out), tree(&clean));
    assert_eq!(outputs(&out), outputs(&clean));
}

#[test]
fn a_failing_run_leaves_the_previous_folders_and_no_manifest() {
    let batches = Batches::cifar10();
    let out = batches.out("images");
    sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    let before = outputs(&out);
    let bytes = fs::read(batches.dir.join("data_batch_4")).unwrap();
    fs::write(batches.dir.join("data_batch_4"), &bytes[..bytes.len() / 2]).unwrap();

    let cfg = common::config(Source::Dir(batches.dir.clone()), &out);
    let err = retrain_sort::run(&cfg, &NoProgress).unwrap_err();
    assert!(
        format!("{err:#}").contains("data_batch_4"),
        "the error names the file: {err:#}"
    );
    assert!(!out.join("manifest.json").exists());
    assert_eq!(
        outputs(&out),
        before,
        "the previous class folders are untouched"
    );
    let hidden: Vec<String> = tree(&out)
        .into_iter()
        .filter(|p| p.split('/').any(|part| part.starts_with('.')))
        .collect();
    assert!(
        hidden.is_empty(),
        "temporary folders are removed: {hidden:?}"
    );
}

#[test]
fn a_symlinked_split_folder_is_replaced_and_its_target_untouched() {
    let batches = Batches::cifar10();
    let out = batches.out("images");
    let elsewhere = batches.out("elsewhere");
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("keep.txt"), b"keep").unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("train_dir")).unwrap();
    sort_dir(&batches.dir, &out, Dataset::Cifar10, Labels::Fine);
    assert!(
        fs::symlink_metadata(out.join("train_dir"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(tree(&elsewhere), ["keep.txt".to_owned()].into());
}
