//! Weights in (safetensors, .pth) and out (safetensors with torchvision names).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, small};
use retrain_inception::{Error, Model, counter, read_tensors};

#[test]
fn save_then_load_round_trips_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = Model::new(&small(10, true), 1, &Device::Cpu).unwrap();
    model.save(&path).unwrap();
    let file = read_tensors(&path).unwrap();
    assert_eq!(
        file["Mixed_5b.branch1x1.bn.num_batches_tracked"].dtype(),
        DType::I64
    );
    let (loaded, report) = Model::load(&small(10, true), &path, 99, &Device::Cpu).unwrap();
    assert!(report.reinitialised.is_empty());
    assert_eq!(report.loaded, model.tensors().len());
    assert_eq!(report.ignored.len(), 96); // one num_batches_tracked per batch norm (aux: 2)
    for (name, t) in model.tensors() {
        assert_eq!(max_abs_diff(&t, &loaded.tensors()[&name]), 0.0, "{name}");
    }
}

#[test]
fn another_class_count_reinitialises_only_the_classifiers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let source = Model::new(&small(1000, true), 1, &Device::Cpu).unwrap();
    source.save(&path).unwrap();
    let (model, report) = Model::load(&small(10, true), &path, 7, &Device::Cpu).unwrap();
    assert_eq!(
        report.reinitialised,
        [
            "AuxLogits.fc.bias",
            "AuxLogits.fc.weight",
            "fc.bias",
            "fc.weight"
        ]
    );
    // Re-created from our seed, exactly as a fresh 10-class model from the same seed.
    let fresh = Model::new(&small(10, true), 7, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&model.tensors()["fc.weight"], &fresh.tensors()["fc.weight"]),
        0.0
    );
    let name = "Mixed_6e.branch7x7_2.conv.weight";
    assert_eq!(
        max_abs_diff(&model.tensors()[name], &source.tensors()[name]),
        0.0
    );
    // A model without the aux head ignores the file's.
    let (_, report) = Model::load(&small(1000, false), &path, 7, &Device::Cpu).unwrap();
    assert!(report.ignored.iter().any(|n| n == "AuxLogits.fc.weight"));
}

fn write(path: &std::path::Path, tensors: Vec<(String, Tensor)>) {
    let map: std::collections::BTreeMap<_, _> = tensors.into_iter().collect();
    let bytes = safetensors::serialize(map.iter(), None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    let cfg = small(10, false);
    let mut tensors: Vec<(String, Tensor)> = Model::new(&cfg, 0, &Device::Cpu)
        .unwrap()
        .tensors()
        .into_iter()
        .collect();
    let idx = tensors
        .iter()
        .position(|(n, _)| n == "Mixed_6b.branch7x7_2.conv.weight")
        .unwrap();
    tensors[idx].1 = Tensor::zeros((128, 128, 7, 1), DType::F32, &Device::Cpu).unwrap();
    write(&path, tensors.clone());
    let err = Model::load(&cfg, &path, 0, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(msg.contains("Mixed_6b.branch7x7_2.conv.weight"), "{msg}");
    assert!(
        msg.contains("[128, 128, 7, 1]") && msg.contains("[128, 128, 1, 7]"),
        "{msg}"
    );
    assert!(msg.contains("broken.safetensors"), "{msg}");

    tensors.remove(idx);
    write(&path, tensors.clone());
    let msg = Model::load(&cfg, &path, 0, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("Mixed_6b.branch7x7_2.conv.weight is missing"),
        "{msg}"
    );

    tensors.push((
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    write(&path, tensors);
    assert!(Model::load(&cfg, &path, 0, &Device::Cpu).is_err());

    std::fs::write(&path, b"not weights").unwrap();
    let msg = format!(
        "{:#}",
        anyhow::Error::from(Model::load(&cfg, &path, 0, &Device::Cpu).unwrap_err())
    );
    assert!(msg.contains("broken.safetensors"), "{msg}");
    let missing = dir.path().join("nope.pth");
    assert!(
        Model::load(&cfg, &missing, 0, &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("nope.pth")
    );
}

#[test]
fn reads_a_pytorch_zip_checkpoint() {
    // Written by torch.save in scripts/inception_parity.py: three parity tensors and a counter.
    let tensors = read_tensors(&common::fixture("small.pth")).unwrap();
    assert_eq!(tensors.len(), 4);
    assert_eq!(
        tensors["Conv2d_1a_3x3.bn.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        7
    );
    let cfg = small(10, true);
    let want: std::collections::BTreeMap<_, _> = counter::parity_weights(&cfg, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    for name in [
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.running_var",
        "fc.bias",
    ] {
        assert_eq!(tensors[name].dims(), want[name].dims(), "{name}");
        assert_eq!(max_abs_diff(&tensors[name], &want[name]), 0.0, "{name}");
    }
    // Loading it as a whole model names the first missing tensor.
    let err = Model::load(&cfg, &common::fixture("small.pth"), 0, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.pth") && err.contains("is missing"),
        "{err}"
    );
}
