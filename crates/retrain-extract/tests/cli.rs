//! The `retrain-extract` binary: help, a verified run's manifest (pinned), a refused archive, and
//! Ctrl-C.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Hostile, archive_of, listing, synth};
use retrain_extract::Dataset;

fn extract_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_retrain-extract"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_explains_every_option() {
    let out = extract_bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--archive <FILE>",
        "--out <DIR>",
        "--dataset <DATASET>",
        "--member-digests <FILE>",
        "--max-bytes <N>",
        "--quiet",
        "--verbose",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    insta::assert_snapshot!(help);
}

#[test]
fn a_verified_cifar10_run_has_a_pinned_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let out_dir = tmp.path().join("raw");
    let out = extract_bin()
        .args(["--quiet", "--dataset", "cifar10", "--archive"])
        .arg(&synthetic.archive)
        .arg("--member-digests")
        .arg(&synthetic.digests)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "stdout is for data");
    let manifest = std::fs::read_to_string(out_dir.join("manifest.json")).unwrap();
    insta::assert_snapshot!(manifest);
}

#[test]
fn a_refused_archive_fails_with_one_message_naming_the_member() {
    let hostile = Hostile::new(&archive_of(&[
        common::file("ok.txt", b"ok"),
        common::file("../x", b"evil"),
    ]));
    let out = extract_bin()
        .args(["--quiet", "--archive"])
        .arg(&hostile.archive)
        .arg("--out")
        .arg(&hostile.out)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr(&out);
    let expected = format!(
        "error: extracting into {}: {}: member \"../x\" has a `..` component\n",
        hostile.out.display(),
        hostile.archive.display()
    );
    assert!(stderr.ends_with(&expected), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert_eq!(listing(hostile.tmp.path()), ["archive.tar.gz"]);
}

#[test]
fn an_unverified_run_warns() {
    let hostile = Hostile::new(&archive_of(&[common::file("a/b.png", b"png")]));
    let out = extract_bin()
        .args(["--quiet", "--dataset", "generic", "--archive"])
        .arg(&hostile.archive)
        .arg("--out")
        .arg(&hostile.out)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("members are unverified"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(hostile.out.join("a/b.png")).unwrap(), b"png");
    let manifest = retrain_stage::Manifest::read(&hostile.out)
        .unwrap()
        .unwrap();
    assert_eq!(manifest.params["dataset"], "generic");
}

#[test]
fn bad_options_are_refused_by_the_parser() {
    let out = extract_bin()
        .args(["--archive", "a.tar.gz", "--out", "o", "--dataset", "mnist"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'mnist'"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new("o").exists());
}

/// Interrupting a run removes what it wrote and exits 130.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_cleanly() {
    use std::time::{Duration, Instant};

    use std::io::Write as _;

    // 512 MiB of zeros, compressed as it is generated.
    let hostile = Hostile::new(b"");
    let size = 512u64 << 20;
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&hostile.archive).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(common::header(b"big.bin", b'0', size).as_bytes())
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        gz.write_all(&chunk).unwrap();
    }
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap();
    let child = extract_bin()
        .args(["--quiet", "--archive"])
        .arg(&hostile.archive)
        .arg("--out")
        .arg(&hostile.out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the big file is being written, then interrupt.
    let partial = hostile.out.join(".big.bin.partial");
    let start = Instant::now();
    while !partial.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no partial file");
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("extraction cancelled"), "{stderr}");
    assert_eq!(listing(hostile.tmp.path()), ["archive.tar.gz"]);
}
