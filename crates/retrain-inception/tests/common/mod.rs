//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use retrain_inception::{Config, Model, counter};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A model holding the reproducible parity weights (`scripts/inception_parity.py`).
pub fn parity_model(cfg: &Config) -> Model {
    parity_model_dtype(cfg, candle_core::DType::F32)
}

pub fn parity_model_dtype(cfg: &Config, dtype: candle_core::DType) -> Model {
    let model = Model::with_dtype(cfg, 0, &Device::Cpu, dtype).unwrap();
    for (name, t) in counter::parity_weights(cfg, &Device::Cpu).unwrap() {
        model.set_tensor(&name, &t).unwrap();
    }
    model
}

/// The parity input `input.<size>` (uniform in [-1, 1)).
pub fn parity_input(n: usize, size: usize) -> Tensor {
    counter::uniform_tensor(
        &format!("input.{size}"),
        &[n, 3, size, size],
        -1.0,
        1.0,
        &Device::Cpu,
    )
    .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(candle_core::DType::F64).unwrap();
    let b = b.to_dtype(candle_core::DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(candle_core::DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn small(n_classes: usize, aux: bool) -> Config {
    Config {
        num_classes: n_classes,
        aux_logits: aux,
        ..Config::default()
    }
}
