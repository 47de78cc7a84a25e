//! The binary: forward on a tensor file, summary, and clear errors.

use std::process::Command;

use candle_core::{Device, Tensor};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_retrain-inception"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[test]
fn forward_writes_logits_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.safetensors");
    let output = dir.path().join("y.safetensors");
    let xs = Tensor::zeros((1, 3, 75, 80), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("input", xs)].into_iter().collect(), &input).unwrap();
    let out = bin()
        .args(["forward", "--num-classes", "7", "--features", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
    assert_eq!(y["logits"].dims(), [1, 7]);
    assert_eq!(y["features"].dims(), [1, 2048]);
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("small.safetensors");
    let xs = Tensor::zeros((1, 3, 40, 40), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("input", xs)].into_iter().collect(), &input).unwrap();
    let run = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let input = input.to_str().unwrap();
    let out = dir.path().join("y.safetensors");
    let out = out.to_str().unwrap();
    let err = run(&[
        "forward",
        "--num-classes",
        "2",
        "--input",
        input,
        "--output",
        out,
    ]);
    assert!(
        err.contains("small.safetensors") && err.contains("H, W ≥ 75"),
        "{err}"
    );
    let err = run(&[
        "forward",
        "--weights",
        "/nonexistent.pth",
        "--input",
        input,
        "--output",
        out,
    ]);
    assert!(err.contains("/nonexistent.pth"), "{err}");
    if !cfg!(feature = "cuda") {
        let err = run(&["summary", "--device", "cuda:0"]);
        assert!(err.contains("--features cuda"), "{err}");
    }
}

#[test]
fn summary_lists_layers_shapes_and_parameters() {
    let out = bin()
        .args(["summary", "--size", "75", "--num-classes", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Mixed_6b         [1, 768, 3, 3]"), "{text}");
    assert!(text.contains("fc               [1, 10]"), "{text}");
    // 27,161,264 − (1000 − 10) · (2048 + 1) − (1000 − 10) · (768 + 1).
    assert!(text.contains("total parameters: 24371444"), "{text}");
}
