//! Parity with torchvision: the references in `tests/fixtures/parity.safetensors` were written by
//! `scripts/inception_parity.py generate` from the same reproducible weights and inputs.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, ModuleT, Tensor};
use common::{max_abs, max_abs_diff, parity_input, parity_model, parity_model_dtype, small};
use retrain_inception::{Config, counter};

fn references() -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(common::fixture("parity.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn eval_logits_match_torchvision_at_299() {
    let refs = references();
    let model = parity_model(&Config::default());
    let logits = model.forward_t(&parity_input(1, 299), false).unwrap();
    let delta = max_abs_diff(&logits, &refs["eval299.logits"]);
    eprintln!("299×299, 1000 classes: max |Δ logits| = {delta:e}");
    assert!(delta <= 1e-4, "max |Δ logits| = {delta}");
}

#[test]
fn eval_logits_and_features_match_torchvision_at_75() {
    let refs = references();
    let model = parity_model(&small(10, true));
    let xs = parity_input(2, 75);
    let logits = model.forward_t(&xs, false).unwrap();
    let delta = max_abs_diff(&logits, &refs["eval75.logits"]);
    eprintln!("75×75, 10 classes: max |Δ logits| = {delta:e}");
    assert!(delta <= 1e-4, "max |Δ logits| = {delta}");
    let features = model.net().features(&xs).unwrap();
    assert_eq!(features.dims(), [2, 2048]);
    let delta = max_abs_diff(&features, &refs["eval75.features"]);
    assert!(delta <= 1e-4, "max |Δ features| = {delta}");
}

/// One training step (batch statistics, no dropout, no aux head) at 107×107, batch 2: the loss
/// is Σ logits · w for fixed w; returns the relative gradient error (max |Δ| / max |ref|) of each
/// checked parameter against PyTorch's f64 gradients.
fn training_step(dtype: DType) -> Vec<(String, f32)> {
    let refs = references();
    let cfg = Config {
        dropout: 0.0,
        ..small(10, false)
    };
    let model = parity_model_dtype(&cfg, dtype);
    let xs = parity_input(2, 107).to_dtype(dtype).unwrap();
    let loss_w = counter::uniform_tensor("loss.weight", &[2, 10], -1.0, 1.0, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let logits = model.forward_t(&xs, true).unwrap();
    let delta = max_abs_diff(&logits, &refs["train107.logits"]);
    assert!(delta <= 1e-3, "train-mode max |Δ logits| = {delta}");
    let loss = (&logits * &loss_w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let tensors = model.tensors();
    // Training mode updated the batch-norm statistics as PyTorch does (momentum 0.1).
    for stat in ["running_mean", "running_var"] {
        let got = &tensors[&format!("Conv2d_1a_3x3.bn.{stat}")];
        let want = &refs[&format!("train107.{stat}.Conv2d_1a_3x3")];
        let delta = max_abs_diff(got, want);
        assert!(delta <= 1e-4, "{stat}: max |Δ| = {delta}");
    }
    [
        "Conv2d_1a_3x3.conv.weight",
        "Mixed_6b.branch7x7_2.conv.weight",
        "fc.weight",
    ]
    .into_iter()
    .map(|name| {
        let grad = grads.get(&tensors[name]).unwrap();
        let want = &refs[&format!("grad.{name}")];
        let rel = max_abs_diff(grad, want) / max_abs(want);
        eprintln!("{dtype:?} grad {name}: max |Δ| / max |ref| = {rel:e}");
        (name.to_owned(), rel)
    })
    .collect()
}

#[test]
fn training_step_gradients_match_torchvision_in_f64() {
    for (name, rel) in training_step(DType::F64) {
        assert!(rel <= 1e-6, "{name}: relative gradient error {rel}");
    }
}

/// In f32 the check is ill-conditioned (see the f64 test's references): PyTorch's own f32
/// gradients are up to 0.5 % off its f64 ones and ours up to about 5 % (candle reduces batch
/// statistics and convolution gradients with plain f32 sums). This guards against gross errors
/// only; exactness is checked in f64.
#[test]
fn training_step_gradients_in_f32_stay_near_pytorch() {
    let refs = references();
    for (name, rel) in training_step(DType::F32) {
        let torch = max_abs(&refs[&format!("grad_f32_error.{name}")]);
        eprintln!("{name}: ours {rel:e}, PyTorch f32 {torch:e}");
        assert!(rel <= 0.1, "{name}: relative gradient error {rel}");
    }
}
