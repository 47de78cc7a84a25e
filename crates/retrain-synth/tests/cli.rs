//! The `retrain-synth` binary: help, a small run's manifest (pinned: the bytes must not drift), and
//! errors.

use std::process::Command;

fn synth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_retrain-synth"))
}

#[test]
fn help_explains_every_option() {
    let out = synth().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn a_small_archive_has_a_pinned_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = synth()
        .args([
            "--quiet",
            "--images-per-batch",
            "10",
            "--seed",
            "42",
            "--out",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(tmp.path().join("manifest.json")).unwrap();
    insta::assert_snapshot!(manifest);
}

#[test]
fn bad_options_fail_with_a_message_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = synth()
        .args(["--quiet", "--images-per-batch", "0", "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: generating a synthetic cifar10 archive in")
            && stderr.contains("images per batch must be between 1 and 279620, got 0"),
        "{stderr}"
    );
    assert!(!tmp.path().join("out").exists());
}
