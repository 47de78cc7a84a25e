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

/// Every stored entry of a zip written front to back: (name, offset of its data, its data).
fn zip_entries(bytes: &[u8]) -> Vec<(String, usize, Vec<u8>)> {
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let mut entries = Vec::new();
    let mut pos = 0;
    while bytes[pos..].starts_with(b"PK\x03\x04") {
        assert_eq!(u16_at(pos + 8), 0, "stored, not compressed");
        let (size, name_len, extra_len) = (u32_at(pos + 22), u16_at(pos + 26), u16_at(pos + 28));
        let name = String::from_utf8(bytes[pos + 30..pos + 30 + name_len].to_vec()).unwrap();
        let start = pos + 30 + name_len + extra_len;
        entries.push((name, start, bytes[start..start + size].to_vec()));
        pos = start + size;
    }
    entries
}

#[test]
fn write_pth_round_trips_through_candles_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small-map.pth");
    let cpu = &Device::Cpu;
    let tensors: std::collections::BTreeMap<String, Tensor> = [
        (
            "conv.weight",
            Tensor::new(&[[1.5f32, -2.25, 3e-8], [f32::MAX, -0.0, 7.0]], cpu).unwrap(),
        ),
        (
            // Transposed: written contiguous, in its logical order.
            "fc.weight",
            Tensor::arange(0f32, 24.0, cpu)
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap()
                .transpose(0, 2)
                .unwrap(),
        ),
        (
            "bn.running_var",
            Tensor::new(&[0.1f64, 1e-300, -5.5], cpu).unwrap(),
        ),
        ("bn.num_batches_tracked", Tensor::new(7i64, cpu).unwrap()),
        ("ids", Tensor::new(&[i64::MIN, -1, 1 << 40], cpu).unwrap()),
        ("scale", Tensor::new(0.5f32, cpu).unwrap()),
    ]
    .into_iter()
    .map(|(name, t)| (name.to_owned(), t))
    .collect();
    retrain_inception::write_pth(&path, &tensors).unwrap();

    let read = read_tensors(&path).unwrap();
    assert_eq!(
        read.keys().collect::<Vec<_>>(),
        tensors.keys().collect::<Vec<_>>()
    );
    for (name, want) in &tensors {
        let got = &read[name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(got.dtype(), want.dtype(), "{name}");
        let bits = |t: &Tensor| -> Vec<u64> {
            let flat = t.flatten_all().unwrap();
            match t.dtype() {
                DType::F32 => flat
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| u64::from(v.to_bits()))
                    .collect(),
                DType::F64 => flat
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                _ => flat
                    .to_vec1::<i64>()
                    .unwrap()
                    .iter()
                    .map(|&v| v as u64)
                    .collect(),
            }
        };
        assert_eq!(bits(got), bits(want), "{name}");
    }

    // The archive torch writes: its prefix is the file's stem, each entry's data is 64-byte
    // aligned, storages are keyed 0, 1, … in name order; no temporary file is left.
    let entries = zip_entries(&std::fs::read(&path).unwrap());
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "small-map/data.pkl",
            "small-map/byteorder",
            "small-map/data/0",
            "small-map/data/1",
            "small-map/data/2",
            "small-map/data/3",
            "small-map/data/4",
            "small-map/data/5",
            "small-map/version",
        ]
    );
    assert!(entries.iter().all(|(_, start, _)| start % 64 == 0));
    assert_eq!(entries[1].2, b"little");
    assert_eq!(entries[8].2, b"3\n");
    // data/1 is bn.running_var (sorted names): three f64, little-endian.
    let running_var: Vec<u8> = [0.1f64, 1e-300, -5.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(entries[3].2, running_var);
    let listing: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, ["small-map.pth"]);

    // Writing again gives the same bytes.
    let before = std::fs::read(&path).unwrap();
    retrain_inception::write_pth(&path, &tensors).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn write_pth_refuses_other_dtypes_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bytes.pth");
    let tensors = [(
        "mask".to_owned(),
        Tensor::new(&[1u32, 2], &Device::Cpu).unwrap(),
    )]
    .into_iter()
    .collect();
    let err = retrain_inception::write_pth(&path, &tensors).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PthDtype { .. }), "{msg}");
    assert!(msg.contains("bytes.pth") && msg.contains("mask"), "{msg}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn save_pth_then_load_round_trips_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("model.pth");
    let safetensors = dir.path().join("model.safetensors");
    let model = Model::new(&small(10, true), 1, &Device::Cpu).unwrap();
    model.save_pth(&pth).unwrap();
    model.save(&safetensors).unwrap();
    // The same tensors as `save`, under the same names and dtypes.
    let (from_pth, from_st) = (
        read_tensors(&pth).unwrap(),
        read_tensors(&safetensors).unwrap(),
    );
    assert_eq!(
        from_pth.keys().collect::<Vec<_>>(),
        from_st.keys().collect::<Vec<_>>()
    );
    for (name, t) in &from_st {
        assert_eq!(from_pth[name].dtype(), t.dtype(), "{name}");
    }
    let (loaded, report) = Model::load(&small(10, true), &pth, 99, &Device::Cpu).unwrap();
    assert!(report.reinitialised.is_empty());
    assert_eq!(report.loaded, model.tensors().len());
    assert_eq!(report.ignored.len(), 96);
    for (name, t) in model.tensors() {
        assert_eq!(max_abs_diff(&t, &loaded.tensors()[&name]), 0.0, "{name}");
    }
}

#[test]
fn convert_writes_a_pth_for_a_pth_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seeded.pth");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retrain-inception"))
        .env("RUST_LOG", "warn")
        .args(["convert", "--num-classes", "10", "--output"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"PK\x03\x04"));
    // Without --weights: the fresh model from seed 0.
    let (loaded, report) = Model::load(&small(10, true), &path, 5, &Device::Cpu).unwrap();
    assert!(report.reinitialised.is_empty());
    let fresh = Model::new(&small(10, true), 0, &Device::Cpu).unwrap();
    for (name, t) in fresh.tensors() {
        assert_eq!(max_abs_diff(&t, &loaded.tensors()[&name]), 0.0, "{name}");
    }
}
