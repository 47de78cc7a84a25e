//! Structure, names, modes and input checks.

mod common;

use candle_core::{DType, Device, ModuleT, Tensor};
use common::{max_abs_diff, small};
use retrain_inception::{Config, Model, device};

#[test]
fn names_and_shapes_equal_torchvision_state_dict() {
    let fixture = std::fs::read_to_string(common::fixture("inception_v3_keys.txt")).unwrap();
    let mut want: Vec<String> = fixture.lines().map(str::to_owned).collect();
    want.sort();
    let model = Model::new(&Config::default(), 0, &Device::Cpu).unwrap();
    let mut got: Vec<String> = model
        .state_dict()
        .unwrap()
        .iter()
        .map(|(name, t)| format!("{name}\t{:?}", t.dims()))
        .collect();
    got.sort();
    assert_eq!(got.len(), 580);
    assert_eq!(got, want);
    // torchvision: 27,161,264 parameters with the aux head (BN statistics excluded).
    assert_eq!(model.n_params(""), 27_161_264);
}

#[test]
fn forward_shapes_modes_and_features() {
    let model = Model::new(&small(10, false), 1, &Device::Cpu).unwrap();
    let xs = Tensor::rand(-1f32, 1f32, (2, 3, 75, 75), &Device::Cpu).unwrap();
    let logits = model.forward_t(&xs, false).unwrap();
    assert_eq!(logits.dims(), [2, 10]);
    let features = model.net().features(&xs).unwrap();
    assert_eq!(features.dims(), [2, 2048]);
    // The head on the features gives the logits.
    let again = model.net().head(&features, false).unwrap();
    assert!(max_abs_diff(&again, &logits) < 1e-6);
    // Training mode reaches every batch norm: the running statistics move.
    let before = model.tensors()["Mixed_7c.branch_pool.bn.running_mean"]
        .copy()
        .unwrap();
    let first = model.tensors()["Conv2d_1a_3x3.bn.running_var"]
        .copy()
        .unwrap();
    let (train_logits, aux) = model.net().forward_with_aux(&xs, true).unwrap();
    assert!(aux.is_none());
    assert_eq!(train_logits.dims(), [2, 10]);
    let after = &model.tensors()["Mixed_7c.branch_pool.bn.running_mean"];
    assert!(max_abs_diff(&before, after) > 0.0);
    assert!(max_abs_diff(&first, &model.tensors()["Conv2d_1a_3x3.bn.running_var"]) > 0.0);
}

#[test]
fn no_grad_gives_the_same_features_without_a_graph() {
    let model = Model::new(&small(10, false), 1, &Device::Cpu).unwrap();
    let xs = Tensor::rand(-1f32, 1f32, (2, 3, 75, 75), &Device::Cpu).unwrap();
    let tracked = model.net().features(&xs).unwrap();
    assert!(
        tracked.track_op(),
        "an eval pass stays differentiable by default"
    );
    let plain = {
        let _no_grad = retrain_inception::no_grad();
        model.net().features(&xs).unwrap()
    };
    assert!(!plain.track_op(), "no graph inside no_grad");
    assert_eq!(max_abs_diff(&tracked, &plain), 0.0);
    // The guard restores the setting when dropped.
    assert!(model.net().features(&xs).unwrap().track_op());
}

#[test]
fn dropout_is_seeded_and_active_only_in_training() {
    let run = |seed| {
        let model = Model::new(&small(4, false), seed, &Device::Cpu).unwrap();
        let f = Tensor::ones((2, 2048), DType::F32, &Device::Cpu).unwrap();
        (
            model.net().head(&f, true).unwrap(),
            model.net().head(&f, false).unwrap(),
        )
    };
    let (a_train, a_eval) = run(3);
    let (b_train, _) = run(3);
    assert_eq!(max_abs_diff(&a_train, &b_train), 0.0);
    assert!(max_abs_diff(&a_train, &a_eval) > 0.0);
}

#[test]
fn initialisation_is_deterministic_and_torchvision_like() {
    let cfg = small(10, true);
    let a = Model::new(&cfg, 5, &Device::Cpu).unwrap().tensors();
    let b = Model::new(&cfg, 5, &Device::Cpu).unwrap().tensors();
    let c = Model::new(&cfg, 6, &Device::Cpu).unwrap().tensors();
    for name in ["Conv2d_1a_3x3.conv.weight", "fc.weight", "fc.bias"] {
        assert_eq!(max_abs_diff(&a[name], &b[name]), 0.0, "{name}");
        assert!(max_abs_diff(&a[name], &c[name]) > 0.0, "{name}");
    }
    let std = |name: &str| {
        let t = a[name].flatten_all().unwrap();
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!((std("Mixed_7c.branch3x3_1.conv.weight") - 0.1).abs() < 0.002);
    assert!((std("AuxLogits.fc.weight") - 0.001).abs() < 0.0001);
    let gamma = a["Mixed_5b.branch1x1.bn.weight"].to_vec1::<f32>().unwrap();
    assert!(gamma.iter().all(|&g| g == 1.0));
}

#[test]
fn aux_logits_need_299_and_run_only_in_training() {
    let model = Model::new(&small(3, true), 0, &Device::Cpu).unwrap();
    let xs = Tensor::zeros((2, 3, 75, 75), DType::F32, &Device::Cpu).unwrap();
    // Eval mode never runs the aux head.
    assert_eq!(model.forward_t(&xs, false).unwrap().dims(), [2, 3]);
    let err = model
        .net()
        .forward_with_aux(&xs, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("aux head") && err.contains("299"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = Model::new(&small(3, false), 0, &Device::Cpu).unwrap();
    for dims in [
        vec![1, 3, 74, 75],
        vec![1, 4, 75, 75],
        vec![3, 75, 75],
        vec![0, 3, 75, 75],
    ] {
        let xs = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let err = model.forward_t(&xs, false).unwrap_err().to_string();
        assert!(err.contains("N×3×H×W"), "{dims:?}: {err}");
    }
    let ints = Tensor::zeros((1, 3, 75, 75), DType::U8, &Device::Cpu).unwrap();
    assert!(model.forward_t(&ints, false).is_err());
    assert!(Model::new(&small(0, false), 0, &Device::Cpu).is_err());
}

#[test]
fn devices_parse_and_cuda_without_the_feature_is_an_error() {
    assert!(matches!(device("cpu"), Ok(Device::Cpu)));
    assert!(device("gpu").is_err());
    assert!(device("cuda:x").is_err());
    if !cfg!(feature = "cuda") {
        let err = device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(device("cuda").is_err());
    }
}
