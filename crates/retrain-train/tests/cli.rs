//! The binaries: help, the recipe's log line, eval's line, predict's JSON, Ctrl-C.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> Command {
    let path = match name {
        "retrain-train" => env!("CARGO_BIN_EXE_retrain-train"),
        "retrain-eval" => env!("CARGO_BIN_EXE_retrain-eval"),
        "retrain-predict" => env!("CARGO_BIN_EXE_retrain-predict"),
        _ => env!("CARGO_BIN_EXE_retrain-train-bench"),
    };
    let mut cmd = Command::new(path);
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[test]
fn every_binary_has_help() {
    for name in [
        "retrain-train",
        "retrain-eval",
        "retrain-predict",
        "retrain-train-bench",
    ] {
        let (stdout, _) = run_ok(bin(name).arg("--help"));
        assert!(stdout.contains("Usage:"), "{name}: {stdout}");
    }
}

fn data(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("tfrecords");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_tfrecords(&data, 20);
    data
}

#[test]
fn train_logs_like_the_recipe_then_eval_and_predict_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("runs/cli");
    let (_, stderr) = run_ok(
        bin("retrain-train")
            .args([
                "--init",
                "seeded",
                "--size",
                "75",
                "--epochs",
                "2",
                "--batch-size",
                "10",
            ])
            .args(["--log-every", "5", "--quiet", "--tfrecords"])
            .arg(&data)
            .arg("--run")
            .arg(&run),
    );
    // `2026-11-29 10:45:12.123456: step 10, loss = 2.31 (1234.5 examples/sec; 0.008 sec/batch)`
    let line = stderr
        .lines()
        .find(|l| l.contains(": step 10, loss = "))
        .unwrap_or_else(|| panic!("no step-10 line in {stderr}"));
    let (time, rest) = line.split_once(": step").unwrap();
    assert_eq!(time.len(), "2026-11-29 10:45:12.123456".len(), "{line}");
    assert!(
        rest.contains(" examples/sec; ") && rest.ends_with(" sec/batch)"),
        "{line}"
    );
    assert_eq!(
        stderr.matches(", loss = ").count(),
        4,
        "steps 5, 10, 15, 20: {stderr}"
    );

    let (stdout, _) = run_ok(
        bin("retrain-eval")
            .args(["--quiet", "--run"])
            .arg(&run)
            .arg("--tfrecords")
            .arg(&data),
    );
    let line = stdout.trim();
    assert!(
        line.starts_with("precision @ 1 = ") && line.ends_with(" [20 examples]"),
        "{line}"
    );
    assert!(line.contains(" recall @ 5 = "), "{line}");

    // A different model sha256 is refused.
    let out = bin("retrain-eval")
        .args(["--quiet", "--model-sha256", "00", "--run"])
        .arg(&run)
        .arg("--tfrecords")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 00"));

    let png = dir.path().join("x.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]))
        .save(&png)
        .unwrap();
    let (stdout, _) = run_ok(
        bin("retrain-predict")
            .arg("--model")
            .arg(&run)
            .arg(&png)
            .arg("--json"),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json[0]["top"].as_array().unwrap().len(), 5);
    let (stdout, _) = run_ok(bin("retrain-predict").arg("--model").arg(&run).arg(&png));
    assert_eq!(stdout.lines().count(), 6, "{stdout}");

    // An image that is not one is an error naming it.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let out = bin("retrain-predict")
        .arg("--model")
        .arg(&run)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.png"));
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("runs/stop");
    let mut child = bin("retrain-train")
        .args([
            "--init",
            "seeded",
            "--trainable",
            "all",
            "--size",
            "75",
            "--batch-size",
            "4",
        ])
        .args([
            "--max-steps",
            "1000",
            "--log-every",
            "1",
            "--quiet",
            "--tfrecords",
        ])
        .arg(&data)
        .arg("--run")
        .arg(&run)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first step's line, then interrupt.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "retrain-train ended before its first step");
        if line.contains(": step 1, loss = ") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    let checkpoints: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(checkpoints.len(), 1, "{rest}");
    assert!(rest.contains("--resume"), "{rest}");
    assert!(!run.join("model.safetensors").exists());
}
