//! The `retrain-sort` binary: help, a run's manifest (pinned: the bytes must not drift), and
//! failures.

mod common;

use std::process::Command;

use common::Batches;

fn sort() -> Command {
    Command::new(env!("CARGO_BIN_EXE_retrain-sort"))
}

#[test]
fn help_explains_every_option() {
    let out = sort().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn a_run_has_a_pinned_manifest() {
    let batches = Batches::new(retrain_synth::Dataset::Cifar10, 10, 42, 2);
    let out = batches.out("images");
    let result = sort()
        .args(["--quiet", "--threads", "3", "--input"])
        .arg(&batches.dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(result.stdout.is_empty(), "stdout is for data");
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    insta::assert_snapshot!(manifest);
}

#[test]
fn an_archive_run_and_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = retrain_synth::Config::new(tmp.path().join("synth"));
    cfg.dataset = retrain_synth::Dataset::Cifar100;
    cfg.images_per_batch = 10;
    cfg.collisions = 0;
    cfg.gzip_level = 1;
    retrain_synth::run(&cfg, &retrain_stage::NoProgress).unwrap();
    let out = tmp.path().join("images");
    let result = sort()
        .args([
            "-q",
            "--dataset",
            "cifar100",
            "--labels",
            "coarse",
            "--from-archive",
        ])
        .arg(tmp.path().join("synth/cifar-100-python.tar.gz"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let labels = std::fs::read_to_string(out.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().count(), 20);
    let manifest = retrain_stage::Manifest::read(&out).unwrap().unwrap();
    assert_eq!(manifest.params["labels"], "coarse");
    assert!(manifest.inputs.contains_key("from-archive"));
}

#[test]
fn a_failing_run_exits_non_zero_with_the_message() {
    let batches = Batches::cifar10();
    let path = batches.dir.join("data_batch_2");
    std::fs::write(&path, b"garbage").unwrap();
    let out = batches.out("images");
    let result = sort()
        .args(["-q", "--input"])
        .arg(&batches.dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8(result.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "error: sorting cifar10 (fine labels) into {}: {}",
            out.display(),
            path.display()
        )),
        "{stderr}"
    );
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn bad_options_are_refused() {
    let cases: [&[&str]; 5] = [
        &["--out", "x"],
        &["--out", "x", "--input", "a", "--from-archive", "b"],
        &["--out", "x", "--input", "a", "--dataset", "mnist"],
        &["--out", "x", "--input", "a", "--labels", "medium"],
        &["--out", "x", "--input", "a", "--threads", "0"],
    ];
    for args in cases {
        let result = sort().args(args).output().unwrap();
        assert_eq!(result.status.code(), Some(2), "{args:?}");
        assert!(!std::path::Path::new("x").exists());
    }
    let tmp = tempfile::tempdir().unwrap();
    let result = sort()
        .args([
            "-q",
            "--dataset",
            "cifar10",
            "--labels",
            "coarse",
            "--input",
        ])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8(result.stderr).unwrap();
    assert!(
        stderr.contains("coarse labels exist only in cifar100, not in cifar10"),
        "{stderr}"
    );
}
