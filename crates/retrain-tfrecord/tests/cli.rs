//! The `retrain-tfrecord` binary: help, build, inspect, and failures.

mod common;

use std::process::Command;

use common::Tree;

fn tfrecord() -> Command {
    Command::new(env!("CARGO_BIN_EXE_retrain-tfrecord"))
}

fn help(args: &[&str]) -> String {
    let out = tfrecord().args(args).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_explains_every_option() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("help_build", help(&["build", "--help"]));
    insta::assert_snapshot!("help_inspect", help(&["inspect", "--help"]));
}

#[test]
fn build_then_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 3, 2);
    let out = tmp.path().join("tfrecords");
    let status = tfrecord()
        .args(["build", "-q", "--train-shards", "2", "--threads", "2"])
        .arg("--train-dir")
        .arg(&tree.train)
        .arg("--validation-dir")
        .arg(&tree.validation)
        .arg("--labels")
        .arg(&tree.labels)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    insta::assert_snapshot!("manifest", manifest);

    let inspect = tfrecord()
        .current_dir(&out)
        .args([
            "inspect",
            "--examples",
            "2",
            "train-00000-of-00002",
            "train-00001-of-00002",
            "validation-00000-of-00001",
        ])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    insta::assert_snapshot!("inspect", String::from_utf8(inspect.stdout).unwrap());
}

#[test]
fn failures_exit_non_zero_with_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::new(&tmp.path().join("images"), 2, 1);
    std::fs::remove_dir_all(tree.train.join("dog")).unwrap();
    let out = tfrecord()
        .args(["build", "-q"])
        .arg("--train-dir")
        .arg(&tree.train)
        .arg("--validation-dir")
        .arg(&tree.validation)
        .arg("--labels")
        .arg(&tree.labels)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: building TFRecords in ")
            && stderr.contains(&format!(
                "{}: class folder is missing",
                tree.train.join("dog").display()
            )),
        "{stderr}"
    );

    let corrupt = tmp.path().join("corrupt");
    std::fs::write(&corrupt, [1, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]).unwrap();
    let out = tfrecord().arg("inspect").arg(&corrupt).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "error: inspecting TFRecords: {}: corrupt record at byte 0: length checksum mismatch",
            corrupt.display()
        )),
        "{stderr}"
    );
}
