//! The optimisers against updates worked out by hand, state round trips, and the learning-rate
//! schedule's step boundaries.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use retrain_train::optim::{Error, LrSchedule, Optimizer, OptimizerKind};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const W0: [f64; 2] = [1.0, -2.0];
const G1: [f64; 2] = [0.5, 0.25];
const G2: [f64; 2] = [-1.0, 0.5];
const LR: f64 = 0.1;

fn var(values: &[f64], dtype: DType) -> Result<Var> {
    let tensor = Tensor::new(values, &Device::Cpu)?.to_dtype(dtype)?;
    Ok(Var::from_tensor(&tensor)?)
}

fn grads_for(var: &Var, grad: &[f64]) -> Result<GradStore> {
    let mut grads = GradStore::default();
    let grad = Tensor::new(grad, &Device::Cpu)?.to_dtype(var.dtype())?;
    grads.insert(var.as_tensor(), grad);
    Ok(grads)
}

fn values(tensor: &Tensor) -> Result<Vec<f64>> {
    Ok(tensor.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

#[track_caller]
fn assert_close(got: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{got:?} vs {expected:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() <= tol, "got {got:?}, expected {expected:?}");
    }
}

fn optimizer(kind: OptimizerKind, var: &Var) -> Result<Optimizer> {
    Ok(Optimizer::new(kind, vec![("w".to_owned(), var.clone())])?)
}

#[test]
fn rmsprop_one_update_matches_the_tf_formula() -> Result<()> {
    let w = var(&W0, DType::F64)?;
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    // ms = 0.9·1 + 0.1·g²        = [0.9 + 0.1·0.25, 0.9 + 0.1·0.0625] = [0.925, 0.90625]
    // mom = 0 + 0.1·g/sqrt(ms+1) = [0.05/sqrt(1.925), 0.025/sqrt(1.90625)]
    //                            = [0.05/1.387443693, 0.025/1.380670127]
    //                            = [0.036037498508, 0.018107149209]
    // w = w − mom                = [0.963962501492, −2.018107149209]
    let state = opt.state()?;
    assert_close(&values(&state["rmsprop.ms.w"])?, &[0.925, 0.90625], 1e-15);
    assert_close(
        &values(&state["rmsprop.mom.w"])?,
        &[0.036_037_498_507_822_36, 0.018_107_149_208_503_707],
        1e-15,
    );
    assert_close(
        &values(w.as_tensor())?,
        &[0.963_962_501_492_177_7, -2.018_107_149_208_504],
        1e-15,
    );
    assert_eq!(opt.steps(), 1);
    Ok(())
}

#[test]
fn rmsprop_momentum_carries_into_the_second_update() -> Result<()> {
    let w = var(&W0, DType::F64)?;
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    opt.step(&grads_for(&w, &G2)?, LR)?;
    // ms  = 0.9·[0.925, 0.90625] + 0.1·[1, 0.25]            = [0.9325, 0.840625]
    // mom = 0.9·[0.036037498508, 0.018107149209]
    //       + 0.1·[−1/sqrt(1.9325), 0.5/sqrt(1.840625)]
    //     = [0.032433748657 − 0.071935000124, 0.016296434288 + 0.036854230360]
    //     = [−0.039501251470, 0.053150664647]
    // w   = [0.963962501492 + 0.039501251470, −2.018107149209 − 0.053150664647]
    //     = [1.003463752962, −2.071257813856]
    let state = opt.state()?;
    assert_close(&values(&state["rmsprop.ms.w"])?, &[0.9325, 0.840625], 1e-15);
    assert_close(
        &values(&state["rmsprop.mom.w"])?,
        &[-0.039_501_251_469_520_52, 0.053_150_664_647_490_714],
        1e-15,
    );
    assert_close(
        &values(w.as_tensor())?,
        &[1.003_463_752_961_698, -2.071_257_813_855_994_7],
        1e-15,
    );
    assert_eq!(opt.steps(), 2);
    Ok(())
}

#[test]
fn updates_stay_in_the_var_dtype() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    assert_eq!(w.dtype(), DType::F32);
    let state = opt.state()?;
    assert_eq!(state["rmsprop.ms.w"].dtype(), DType::F32);
    assert_eq!(state["rmsprop.mom.w"].dtype(), DType::F32);
    assert_close(&values(w.as_tensor())?, &[0.963_962_5, -2.018_107_1], 1e-6);
    Ok(())
}

#[test]
fn gradients_from_backward_reach_the_var() -> Result<()> {
    // loss = Σ w·c has gradient c.
    let w = var(&W0, DType::F32)?;
    let c = Tensor::new(&[0.5f32, 0.25], &Device::Cpu)?;
    let loss = (w.as_tensor() * &c)?.sum_all()?;
    let grads = loss.backward()?;
    let mut opt = optimizer(OptimizerKind::Sgd { momentum: 0.9 }, &w)?;
    opt.step(&grads, LR)?;
    assert_close(&values(w.as_tensor())?, &[0.95, -2.025], 1e-6);
    Ok(())
}

#[test]
fn sgd_momentum_matches_torch() -> Result<()> {
    let w = var(&W0, DType::F64)?;
    let mut opt = optimizer(OptimizerKind::Sgd { momentum: 0.9 }, &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    // First step: buf = g = [0.5, 0.25]; w = [1 − 0.05, −2 − 0.025] = [0.95, −2.025].
    assert_close(&values(&opt.state()?["sgd.buf.w"])?, &G1, 0.0);
    assert_close(&values(w.as_tensor())?, &[0.95, -2.025], 1e-15);
    opt.step(&grads_for(&w, &G2)?, LR)?;
    // buf = 0.9·[0.5, 0.25] + [−1, 0.5] = [−0.55, 0.725]; w = [0.95 + 0.055, −2.025 − 0.0725].
    assert_close(&values(&opt.state()?["sgd.buf.w"])?, &[-0.55, 0.725], 1e-15);
    assert_close(&values(w.as_tensor())?, &[1.005, -2.0975], 1e-15);
    Ok(())
}

#[test]
fn adamw_matches_torch_algorithm() -> Result<()> {
    let kind = OptimizerKind::parse("adamw")?;
    assert_eq!(
        kind,
        OptimizerKind::Adamw {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01
        }
    );
    let w = var(&W0, DType::F64)?;
    let mut opt = optimizer(kind, &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    // torch.optim.AdamW, t = 1:
    //   w ← w·(1 − lr·wd)          = [0.999, −1.998]
    //   m = 0.1·g                   = [0.05, 0.025];  v = 0.001·g² = [0.00025, 0.0000625]
    //   m̂ = m/0.1 = [0.5, 0.25];   v̂ = v/0.001 = [0.25, 0.0625]; sqrt(v̂) = [0.5, 0.25]
    //   w ← w − 0.1·m̂/(sqrt(v̂) + 1e-8) = [0.999 − 0.099999998, −1.998 − 0.099999996]
    assert_close(
        &values(w.as_tensor())?,
        &[0.899_000_002, -2.097_999_996],
        1e-14,
    );
    let state = opt.state()?;
    assert_close(&values(&state["adamw.m.w"])?, &[0.05, 0.025], 1e-16);
    assert_close(
        &values(&state["adamw.v.w"])?,
        &[0.000_25, 0.000_062_5],
        1e-18,
    );
    opt.step(&grads_for(&w, &G2)?, LR)?;
    // t = 2: w ← w·0.999 = [0.898101001998, −2.095901996004]
    //   m = 0.9·m + 0.1·g = [−0.055, 0.0725]; v = 0.999·v + 0.001·g² = [0.00124975, 0.0003124375]
    //   m̂ = m/(1 − 0.81) = [−0.289473684211, 0.381578947368]
    //   v̂ = v/(1 − 0.998001) = [0.625187593797, 0.156296898449]
    //   w ← w − 0.1·m̂/(sqrt(v̂) + 1e-8)
    //     = [0.898101001998 + 0.036610352704, −2.095901996004 − 0.096518200141]
    assert_close(
        &values(w.as_tensor())?,
        &[0.934_711_354_238_565_3, -2.192_420_196_144_804_7],
        1e-14,
    );
    assert_eq!(values(&opt.state()?["adamw.step.w"].reshape(1)?)?, [2.0]);
    Ok(())
}

#[test]
fn vars_without_gradients_are_left_alone() -> Result<()> {
    for kind in [
        OptimizerKind::rmsprop(),
        OptimizerKind::parse("sgd")?,
        OptimizerKind::parse("adamw")?,
    ] {
        let a = var(&W0, DType::F32)?;
        let b = var(&[3.0, 4.0], DType::F32)?;
        let mut opt = Optimizer::new(
            kind,
            vec![("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())],
        )?;
        let before = opt.state()?;
        opt.step(&grads_for(&a, &G1)?, LR)?;
        assert_eq!(values(b.as_tensor())?, [3.0, 4.0], "{kind:?}");
        assert_ne!(values(a.as_tensor())?, W0, "{kind:?}");
        let after = opt.state()?;
        for (name, tensor) in &before {
            if name.ends_with(".b") {
                assert_eq!(
                    tensor
                        .flatten_all()?
                        .to_dtype(DType::F64)?
                        .to_vec1::<f64>()?,
                    after[name]
                        .flatten_all()?
                        .to_dtype(DType::F64)?
                        .to_vec1::<f64>()?,
                    "{name}"
                );
            }
        }
        assert_eq!(opt.steps(), 1);
    }
    Ok(())
}

#[test]
fn state_round_trip_continues_identically() -> Result<()> {
    for kind in [
        OptimizerKind::rmsprop(),
        OptimizerKind::parse("sgd")?,
        OptimizerKind::parse("adamw")?,
    ] {
        let w = var(&W0, DType::F32)?;
        let mut opt = optimizer(kind, &w)?;
        opt.step(&grads_for(&w, &G1)?, LR)?;
        opt.step(&grads_for(&w, &G2)?, LR)?;
        let state = opt.state()?;
        assert_eq!(state["optimizer.steps"].to_scalar::<i64>()?, 2);

        // A fresh optimiser over a copy of the var, restored from the state.
        let copy = Var::from_tensor(&w.as_tensor().copy()?)?;
        let mut resumed = optimizer(kind, &copy)?;
        resumed.load_state(&state)?;
        assert_eq!(resumed.steps(), 2);
        assert_eq!(resumed.kind(), &kind);

        for g in [G2, G1, [0.125, -0.75]] {
            opt.step(&grads_for(&w, &g)?, LR)?;
            resumed.step(&grads_for(&copy, &g)?, LR)?;
            assert_eq!(
                values(w.as_tensor())?,
                values(copy.as_tensor())?,
                "{kind:?}"
            );
        }
        let (a, b) = (opt.state()?, resumed.state()?);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, tensor) in &a {
            let flat = |t: &Tensor| -> Result<Vec<f64>> {
                Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
            };
            assert_eq!(flat(tensor)?, flat(&b[name])?, "{name}");
        }
    }
    Ok(())
}

#[test]
fn state_names_follow_the_kind() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    let names =
        |kind| -> Result<Vec<String>> { Ok(optimizer(kind, &w)?.state()?.into_keys().collect()) };
    assert_eq!(
        names(OptimizerKind::rmsprop())?,
        ["optimizer.steps", "rmsprop.mom.w", "rmsprop.ms.w"]
    );
    assert_eq!(
        names(OptimizerKind::parse("sgd")?)?,
        ["optimizer.steps", "sgd.buf.w"]
    );
    assert_eq!(
        names(OptimizerKind::parse("adamw")?)?,
        ["adamw.m.w", "adamw.step.w", "adamw.v.w", "optimizer.steps"]
    );
    // RMSProp's accumulator starts at one.
    let state = optimizer(OptimizerKind::rmsprop(), &w)?.state()?;
    assert_eq!(values(&state["rmsprop.ms.w"])?, [1.0, 1.0]);
    assert_eq!(values(&state["rmsprop.mom.w"])?, [0.0, 0.0]);
    Ok(())
}

#[test]
fn load_state_rejects_a_wrong_shape_naming_the_tensor() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    let mut state = opt.state()?;
    state.insert(
        "rmsprop.mom.w".to_owned(),
        Tensor::zeros((3,), DType::F32, &Device::Cpu)?,
    );
    let err = opt.load_state(&state).unwrap_err();
    assert!(
        matches!(&err, Error::StateShape { name, got, expected }
            if name == "rmsprop.mom.w" && got == &[3] && expected == &[2]),
        "{err:?}"
    );
    assert!(err.to_string().contains("rmsprop.mom.w"), "{err}");
    Ok(())
}

#[test]
fn load_state_rejects_other_kinds_and_missing_tensors() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    let sgd_state = optimizer(OptimizerKind::parse("sgd")?, &w)?.state()?;
    let mut rmsprop = optimizer(OptimizerKind::rmsprop(), &w)?;
    let err = rmsprop.load_state(&sgd_state).unwrap_err();
    assert!(err.to_string().contains("rmsprop.ms.w"), "{err}");

    // Extra tensors of the optimiser's namespaces are rejected, model weights are not.
    let mut state = rmsprop.state()?;
    state.insert(
        "fc.weight".to_owned(),
        Tensor::zeros(4, DType::F32, &Device::Cpu)?,
    );
    rmsprop.load_state(&state)?;
    state.insert(
        "rmsprop.ms.gone".to_owned(),
        Tensor::zeros(2, DType::F32, &Device::Cpu)?,
    );
    let err = rmsprop.load_state(&state).unwrap_err();
    assert!(err.to_string().contains("rmsprop.ms.gone"), "{err}");

    let mut state = rmsprop.state()?;
    state.remove("optimizer.steps");
    let err = rmsprop.load_state(&state).unwrap_err();
    assert!(err.to_string().contains("optimizer.steps"), "{err}");

    let mut state = rmsprop.state()?;
    state.insert(
        "optimizer.steps".to_owned(),
        Tensor::new(-1i64, &Device::Cpu)?,
    );
    let err = rmsprop.load_state(&state).unwrap_err();
    assert!(err.to_string().contains("optimizer.steps"), "{err}");
    Ok(())
}

#[test]
fn a_failed_load_changes_nothing() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    opt.step(&grads_for(&w, &G1)?, LR)?;
    let before: BTreeMap<String, Vec<f64>> = opt
        .state()?
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)))
        .collect::<Result<_>>()?;
    let mut bad = BTreeMap::new();
    bad.insert(
        "optimizer.steps".to_owned(),
        Tensor::new(7i64, &Device::Cpu)?,
    );
    assert!(opt.load_state(&bad).is_err());
    assert_eq!(opt.steps(), 1);
    for (name, tensor) in opt.state()? {
        assert_eq!(
            tensor
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?,
            before[&name]
        );
    }
    Ok(())
}

#[test]
fn bad_settings_are_errors() -> Result<()> {
    let w = var(&W0, DType::F32)?;
    assert!(matches!(
        OptimizerKind::parse("adam"),
        Err(Error::UnknownOptimizer { .. })
    ));
    assert_eq!(OptimizerKind::parse("RMSProp")?, OptimizerKind::rmsprop());
    assert_eq!(
        OptimizerKind::parse("sgd")?,
        OptimizerKind::Sgd { momentum: 0.9 }
    );
    assert!(optimizer(OptimizerKind::Sgd { momentum: -1.0 }, &w).is_err());
    assert!(
        optimizer(
            OptimizerKind::Rmsprop {
                decay: 1.5,
                momentum: 0.9,
                eps: 1.0
            },
            &w
        )
        .is_err()
    );
    let dup = Optimizer::new(
        OptimizerKind::rmsprop(),
        vec![("w".to_owned(), w.clone()), ("w".to_owned(), w.clone())],
    );
    assert!(dup.is_err());
    let mut opt = optimizer(OptimizerKind::rmsprop(), &w)?;
    assert!(opt.step(&grads_for(&w, &G1)?, f64::NAN).is_err());
    assert!(opt.step(&grads_for(&w, &G1)?, -0.1).is_err());
    assert_eq!(values(w.as_tensor())?, W0);
    Ok(())
}

#[test]
fn kinds_serialise_with_a_kind_tag() -> Result<()> {
    let json = serde_json::to_string(&OptimizerKind::rmsprop())?;
    assert_eq!(
        json,
        r#"{"kind":"rmsprop","decay":0.9,"momentum":0.9,"eps":1.0}"#
    );
    let back: OptimizerKind = serde_json::from_str(&json)?;
    assert_eq!(back, OptimizerKind::rmsprop());
    let sgd: OptimizerKind = serde_json::from_str(r#"{"kind":"sgd","momentum":0.5}"#)?;
    assert_eq!(sgd, OptimizerKind::Sgd { momentum: 0.5 });
    Ok(())
}

#[test]
fn schedule_drops_by_the_factor_every_30_epochs() {
    let schedule = LrSchedule::default();
    assert_eq!(
        schedule,
        LrSchedule {
            initial: 0.001,
            decay_factor: 0.16,
            epochs_per_decay: 30.0
        }
    );
    // CIFAR-10, batch 32: 50 000 / 32 = 1562.5 steps an epoch; 30 epochs = 46 875 steps.
    let (batch, examples) = (32, 50_000);
    assert_eq!(schedule.decay_steps(batch, examples), Some(46_875));
    assert_eq!(schedule.at(0, batch, examples), 0.001);
    assert_eq!(schedule.at(46_874, batch, examples), 0.001);
    // Exactly at epoch 30 (46 875·32/50 000 = 30.0) the rate drops by 0.16.
    assert_eq!(schedule.at(46_875, batch, examples), 0.001 * 0.16);
    assert_eq!(schedule.at(93_749, batch, examples), 0.001 * 0.16);
    assert!((schedule.at(93_750, batch, examples) - 0.001 * 0.16 * 0.16).abs() < 1e-18);

    // Where 30 epochs is not a whole number of steps, TF truncates decay_steps:
    // 1000 / 3 · 30 = 10 000 exactly, but 1000 / 3 · 1 = 333.3 → 333.
    let per_epoch = LrSchedule {
        epochs_per_decay: 1.0,
        ..schedule
    };
    assert_eq!(per_epoch.decay_steps(3, 1000), Some(333));
    assert_eq!(per_epoch.at(332, 3, 1000), 0.001);
    assert_eq!(per_epoch.at(333, 3, 1000), 0.001 * 0.16);

    // Degenerate sizes never decay (and never panic).
    assert_eq!(schedule.at(1_000_000, 0, 50_000), 0.001);
    assert_eq!(schedule.at(1_000_000, 32, 0), 0.001);
    let never = LrSchedule {
        epochs_per_decay: 0.0,
        ..schedule
    };
    assert_eq!(never.at(1_000_000, 32, 50_000), 0.001);
}

/// f32 vars on the CPU are updated in place, in parallel pieces; f64 vars by tensor ops. Three
/// updates of each kind agree to f32 rounding, on a var of several pieces (32,768 values each)
/// and a ragged last one. The state handed out is a copy: later updates do not change it.
#[test]
fn the_in_place_f32_path_agrees_with_the_tensor_path() -> Result<()> {
    let n = 3 * 32_768 + 5;
    let wave = |i: usize, k: f64| ((i as f64 * k).sin() * 2.0 * 1e6).round() / 1e6;
    let w0: Vec<f64> = (0..n).map(|i| wave(i, 0.37)).collect();
    let gs: Vec<Vec<f64>> = [0.11, 0.53, 0.97]
        .iter()
        .map(|&k| (0..n).map(|i| wave(i, k) / 4.0).collect())
        .collect();
    for kind in [
        OptimizerKind::rmsprop(),
        OptimizerKind::parse("sgd")?,
        OptimizerKind::parse("adamw")?,
    ] {
        let in_place = var(&w0, DType::F32)?;
        let exact = var(&w0, DType::F64)?;
        let mut o_in_place = optimizer(kind, &in_place)?;
        let mut o_exact = optimizer(kind, &exact)?;
        let mut first_state = None;
        for g in &gs {
            o_in_place.step(&grads_for(&in_place, g)?, 0.1)?;
            o_exact.step(&grads_for(&exact, g)?, 0.1)?;
            first_state.get_or_insert(o_in_place.state()?);
        }
        let got = values(in_place.as_tensor())?;
        let want = values(exact.as_tensor())?;
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= 1e-5, "{kind:?} at {i}: {g} against {e}");
        }
        // The state after the first update still holds that update's values.
        let first_state = first_state.expect("three updates");
        let w1 = var(&w0, DType::F32)?;
        let mut one = optimizer(kind, &w1)?;
        one.step(&grads_for(&w1, &gs[0])?, 0.1)?;
        for (name, tensor) in one.state()? {
            assert_eq!(
                values(&tensor.flatten_all()?)?,
                values(&first_state[&name].flatten_all()?)?,
                "{kind:?}: {name}"
            );
        }
    }
    Ok(())
}
