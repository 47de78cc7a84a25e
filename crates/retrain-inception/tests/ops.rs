//! The pools and per-axis padding: values against a naive reference, gradients against finite
//! differences in f64, and the CPU kernel against the composed (any-device) version.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use retrain_inception::ops::{Pool2d, PoolKind, pad2d};

const POOLS: [Pool2d; 3] = [Pool2d::AVG_3X3_S1, Pool2d::MAX_3X3_S2, Pool2d::AVG_5X5_S3];

fn input(dims: &[usize], salt: u64) -> Tensor {
    let n: usize = dims.iter().product();
    // Distinct values (no ties for max pooling), deterministic.
    let values: Vec<f64> = (0..n)
        .map(|i| {
            let k = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ salt);
            ((k >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

/// Naive pooling on one N×C×H×W tensor, for reference.
fn naive(pool: &Pool2d, xs: &Tensor) -> Vec<f64> {
    let (n, c, h, w) = xs.dims4().unwrap();
    let x = xs.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (oh, ow) = (pool.out_len(h).unwrap(), pool.out_len(w).unwrap());
    let mut out = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut vals = Vec::new();
                for ky in 0..pool.kernel {
                    for kx in 0..pool.kernel {
                        let y = (oy * pool.stride + ky) as isize - pool.padding as isize;
                        let xx = (ox * pool.stride + kx) as isize - pool.padding as isize;
                        let inside = y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w;
                        let v = if inside {
                            x[plane * h * w + y as usize * w + xx as usize]
                        } else {
                            0.0
                        };
                        if inside || pool.kind == PoolKind::Avg {
                            vals.push(v);
                        }
                    }
                }
                out.push(match pool.kind {
                    PoolKind::Avg => vals.iter().sum::<f64>() / (pool.kernel * pool.kernel) as f64,
                    PoolKind::Max => vals.into_iter().fold(f64::MIN, f64::max),
                });
            }
        }
    }
    out
}

#[test]
fn pools_match_a_naive_reference_and_torch_shapes() {
    let xs = input(&[2, 3, 11, 9], 1);
    for pool in POOLS {
        let got = pool.forward(&xs).unwrap();
        let (oh, ow) = (pool.out_len(11).unwrap(), pool.out_len(9).unwrap());
        assert_eq!(got.dims(), [2, 3, oh, ow], "{pool:?}");
        let got = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let want = naive(&pool, &xs);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{pool:?}: {g} vs {w}");
        }
        let composed = pool.forward_composed(&xs).unwrap();
        let composed = composed.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (g, w) in composed.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{pool:?} composed: {g} vs {w}");
        }
    }
    // Floor mode: 35 → 17 and 17 → 8 (Inception's reductions); 17 → 5 (the aux head).
    assert_eq!(Pool2d::MAX_3X3_S2.out_len(35), Some(17));
    assert_eq!(Pool2d::MAX_3X3_S2.out_len(17), Some(8));
    assert_eq!(Pool2d::AVG_5X5_S3.out_len(17), Some(5));
    assert_eq!(Pool2d::AVG_3X3_S1.out_len(1), Some(1));
}

/// ∂(Σ w·f(x))/∂x by backprop and by central differences.
fn check_gradient(f: &dyn Fn(&Tensor) -> Tensor, dims: &[usize], what: &str) {
    let x0 = input(dims, 7);
    let x = Var::from_tensor(&x0).unwrap();
    let y = f(x.as_tensor());
    let w = input(y.dims(), 3);
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let analytic = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    let eval = |values: &[f64]| -> f64 {
        let t = Tensor::from_slice(values, dims, &Device::Cpu).unwrap();
        (f(&t) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut worst = 0f64;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let numeric = (eval(&plus) - eval(&minus)) / (2.0 * eps);
        worst = worst.max((numeric - analytic[i]).abs());
    }
    assert!(worst < 1e-7, "{what}: max |analytic − numeric| = {worst}");
}

#[test]
fn max_pool_ties_send_the_gradient_to_the_first_largest_input() {
    // Row-major first among equal maxima, as PyTorch: every window of an all-equal input hands
    // its gradient to its top-left input; a later larger value takes it instead.
    let mut values = vec![1.0f64; 2 * 7 * 9];
    values[7 * 9 + 2 * 9 + 4] = 2.0; // second plane, row 2, column 4
    let xs = Var::from_vec(values, (1, 2, 7, 9), &Device::Cpu).unwrap();
    let out = Pool2d::MAX_3X3_S2.forward(xs.as_tensor()).unwrap();
    assert_eq!(out.dims(), &[1, 2, 3, 4]);
    let grads = out.sum_all().unwrap().backward().unwrap();
    let got: Vec<f64> = grads
        .get(xs.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut want = vec![0.0; 2 * 7 * 9];
    for plane in 0..2 {
        for oy in 0..3 {
            for ox in 0..4 {
                want[plane * 63 + 2 * oy * 9 + 2 * ox] += 1.0;
            }
        }
    }
    // The 2.0 lies in the windows at (1, 1), (1, 2), (0, 1), (0, 2) of the second plane.
    for (oy, ox) in [(0, 1), (0, 2), (1, 1), (1, 2)] {
        want[63 + 2 * oy * 9 + 2 * ox] -= 1.0;
        want[63 + 2 * 9 + 4] += 1.0;
    }
    assert_eq!(got, want);
}

#[test]
fn pool_gradients_match_finite_differences() {
    for pool in POOLS {
        check_gradient(
            &|x| pool.forward(x).unwrap(),
            &[1, 2, 8, 7],
            &format!("{pool:?}"),
        );
        check_gradient(
            &|x| pool.forward_composed(x).unwrap(),
            &[1, 2, 8, 7],
            &format!("{pool:?} composed"),
        );
    }
}

#[test]
fn per_axis_padded_convolutions_have_exact_gradients() {
    // A 1×7 convolution with padding (0, 3) and a 3×1 one with padding (1, 0), as in blocks C and E.
    for (kh, kw, ph, pw) in [(1, 7, 0, 3), (7, 1, 3, 0), (3, 1, 1, 0)] {
        let kernel = input(&[3, 2, kh, kw], 11);
        let f = |x: &Tensor| {
            pad2d(x, ph, pw)
                .unwrap()
                .conv2d(&kernel, 0, 1, 1, 1)
                .unwrap()
        };
        let y = f(&input(&[1, 2, 6, 8], 5));
        assert_eq!(y.dims(), [1, 3, 6, 8], "same-size output for {kh}×{kw}");
        check_gradient(&f, &[1, 2, 6, 8], &format!("{kh}×{kw} conv input"));
        // And with respect to the kernel.
        let xs = input(&[1, 2, 6, 8], 5);
        check_gradient(
            &|k: &Tensor| pad2d(&xs, ph, pw).unwrap().conv2d(k, 0, 1, 1, 1).unwrap(),
            &[3, 2, kh, kw],
            &format!("{kh}×{kw} conv kernel"),
        );
    }
}

/// Every kernel, stride and padding the pools accept (not only Inception's three), on planes wider,
/// taller and smaller than the window: the row-folding kernels reach every window's edge.
#[test]
fn every_kernel_stride_and_padding_matches_the_naive_pool_and_finite_differences() {
    let mut pools = Vec::new();
    for kernel in 1..=5 {
        for stride in 1..=3 {
            for padding in 0..=kernel / 2 {
                pools.push(Pool2d {
                    kind: PoolKind::Avg,
                    kernel,
                    stride,
                    padding,
                });
            }
            pools.push(Pool2d {
                kind: PoolKind::Max,
                kernel,
                stride,
                padding: 0,
            });
        }
    }
    for pool in pools {
        for dims in [
            [2, 3, 7, 10],
            [1, 2, 5, 5],
            [1, 1, 12, 6],
            [1, 1, 1, 1],
            [1, 2, 2, 1],
            [1, 1, 1, 3],
            // More planes than one task of the same-size average pool takes.
            [1, 400, 7, 6],
        ] {
            let xs = input(&dims, 5);
            let Ok(got) = pool.forward(&xs) else {
                // The window does not fit: refused, as the naive pool cannot run either.
                assert!(pool.out_len(dims[2]).is_none() || pool.out_len(dims[3]).is_none());
                continue;
            };
            let got = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let want = naive(&pool, &xs);
            assert_eq!(got.len(), want.len(), "{pool:?} {dims:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "{pool:?} {dims:?}: {g} vs {w}");
            }
            if dims[2] * dims[3] <= 3 {
                // Planes smaller than most windows: the backward pass's edges too.
                check_gradient(
                    &|x| pool.forward(x).unwrap(),
                    &dims,
                    &format!("{pool:?} {dims:?}"),
                );
            }
        }
        check_gradient(
            &|x| pool.forward(x).unwrap(),
            &[1, 2, 7, 6],
            &format!("{pool:?}"),
        );
    }
}

#[test]
fn pools_refuse_bad_shapes() {
    let tiny = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let err = Pool2d::MAX_3X3_S2.forward(&tiny).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    let flat = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(Pool2d::AVG_3X3_S1.forward(&flat).is_err());
    // An empty plane, where a window of padding alone would fit (kernel 2, padding 1).
    let empty = Tensor::zeros((1, 1, 0, 3), DType::F32, &Device::Cpu).unwrap();
    let pad_only = Pool2d {
        kind: PoolKind::Avg,
        kernel: 2,
        stride: 1,
        padding: 1,
    };
    let err = pad_only.forward(&empty).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn f32_kernel_matches_f64() {
    let xs = input(&[2, 4, 17, 17], 9);
    for pool in POOLS {
        let a = pool.forward(&xs.to_dtype(DType::F32).unwrap()).unwrap();
        let b = pool.forward(&xs).unwrap().to_dtype(DType::F32).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}

#[test]
fn fused_batch_norm_matches_candle_and_finite_differences() {
    use retrain_inception::ops::batch_norm_train;
    let gamma = input(&[3], 21).affine(0.5, 1.0).unwrap();
    let beta = input(&[3], 22);
    let xs = input(&[2, 3, 4, 5], 23);
    let (ys, mean, var) = batch_norm_train(&xs, &gamma, &beta, 1e-3, false)
        .unwrap()
        .unwrap();
    // candle's composition of the same formula.
    let x_t = xs.transpose(0, 1).unwrap().flatten_from(1).unwrap();
    let want_mean = x_t.mean_keepdim(1).unwrap();
    let centred = x_t.broadcast_sub(&want_mean).unwrap();
    let want_var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
    let want = centred
        .broadcast_div(&(want_var.clone() + 1e-3).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&gamma.reshape((3, 1)).unwrap())
        .unwrap()
        .broadcast_add(&beta.reshape((3, 1)).unwrap())
        .unwrap()
        .reshape((3, 2, 4, 5))
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let close = |a: &Tensor, b: &Tensor| {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        d.to_scalar::<f64>().unwrap() < 1e-12
    };
    assert!(close(&ys, &want));
    assert!(close(&mean, &want_mean.flatten_all().unwrap()));
    assert!(close(&var, &want_var.flatten_all().unwrap()));
    // With the ReLU fused: the values are relu(batch norm), the gradients through both.
    let (fused, _, _) = batch_norm_train(&xs, &gamma, &beta, 1e-3, true)
        .unwrap()
        .unwrap();
    assert!(close(&fused, &want.relu().unwrap()));
    for relu in [false, true] {
        let bn = |x: &Tensor, g: &Tensor, b: &Tensor| {
            batch_norm_train(x, g, b, 1e-3, relu).unwrap().unwrap().0
        };
        let what = |of: &str| format!("batch norm (relu: {relu}), {of}");
        check_gradient(&|x| bn(x, &gamma, &beta), &[2, 3, 4, 5], &what("input"));
        check_gradient(&|g| bn(&xs, g, &beta), &[3], &what("gamma"));
        check_gradient(&|b| bn(&xs, &gamma, b), &[3], &what("beta"));
    }
    // One value per channel is an error, not a NaN.
    let single = Tensor::zeros((1, 3, 1, 1), DType::F64, &Device::Cpu).unwrap();
    assert!(batch_norm_train(&single, &gamma, &beta, 1e-3, false).is_err());
}

#[test]
fn convolution_gradients_match_finite_differences() {
    use retrain_inception::conv::conv2d;
    let cases = [
        (3, 3, (1, 1), 1),
        (1, 1, (0, 0), 1),
        (5, 5, (2, 2), 1),
        (3, 3, (0, 0), 1),
        (1, 7, (0, 3), 1),
        (7, 1, (3, 0), 1),
        (3, 3, (0, 0), 2),
        (3, 3, (1, 1), 2),
        (1, 1, (0, 0), 2),
        (3, 1, (1, 0), 2),
    ];
    for (kh, kw, (ph, pw), s) in cases {
        let kernel = input(&[3, 2, kh, kw], 31);
        // One image (GEMMs parallel), three (images spread over the threads) and nine small ones
        // (several images per GEMM; conv.rs tests every way of grouping them).
        for (n, h, w) in [(1, 7, 9), (3, 8, 8), (9, 3, 4)] {
            let xs = input(&[n, 2, h, w], 32);
            let got = conv2d(&xs, &kernel, (ph, pw), s).unwrap();
            let want = pad2d(&xs, ph, pw)
                .unwrap()
                .conv2d(&kernel, 0, s, 1, 1)
                .unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-12);
            let what = format!("{kh}×{kw} p({ph},{pw}) s{s} on {n}×{h}×{w}");
            check_gradient(
                &|x| conv2d(x, &kernel, (ph, pw), s).unwrap(),
                &[n, 2, h, w],
                &what,
            );
            check_gradient(
                &|k| conv2d(&xs, k, (ph, pw), s).unwrap(),
                &[3, 2, kh, kw],
                &what,
            );
        }
    }
}

#[test]
fn the_fused_convolution_bias_and_relu_matches_its_parts_values_and_gradients() {
    use retrain_inception::conv::{conv2d, conv2d_bias_relu};
    let kernel = input(&[3, 2, 3, 1], 41);
    let bias = input(&[3], 42);
    for n in [1, 3] {
        let xs = input(&[n, 2, 7, 6], 43);
        let got = conv2d_bias_relu(&xs, &kernel, &bias, (1, 0), 2).unwrap();
        let want = conv2d(&xs, &kernel, (1, 0), 2)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-12);
        let what = format!("fused, batch {n}");
        check_gradient(
            &|x| conv2d_bias_relu(x, &kernel, &bias, (1, 0), 2).unwrap(),
            &[n, 2, 7, 6],
            &what,
        );
        check_gradient(
            &|k| conv2d_bias_relu(&xs, k, &bias, (1, 0), 2).unwrap(),
            &[3, 2, 3, 1],
            &what,
        );
        check_gradient(
            &|b| conv2d_bias_relu(&xs, &kernel, b, (1, 0), 2).unwrap(),
            &[3],
            &what,
        );
    }
}

#[test]
fn convolution_batch_norm_and_relu_as_one_node_match_their_composition() {
    use retrain_inception::conv::conv2d;
    use retrain_inception::ops::{batch_norm_train, conv_batch_norm_relu_train};
    let gamma = input(&[3], 51).affine(0.5, 1.0).unwrap();
    let beta = input(&[3], 52);
    for (kh, kw, pad, stride, n, pool) in [
        (1, 7, (0, 3), 1, 3, None),
        (3, 3, (0, 0), 2, 1, None),
        (1, 1, (0, 0), 1, 2, None),
        // The stem's layers followed by their max pool, in the same node.
        (3, 3, (1, 1), 1, 2, Some(Pool2d::MAX_3X3_S2)),
        (3, 3, (0, 0), 1, 1, Some(Pool2d::MAX_3X3_S2)),
    ] {
        let kernel = input(&[3, 2, kh, kw], 53);
        let xs = input(&[n, 2, 7, 8], 54);
        let fused = |x: &Tensor, k: &Tensor, g: &Tensor, b: &Tensor| {
            conv_batch_norm_relu_train(x, k, (g, b, 1e-3), pad, stride, pool)
                .unwrap()
                .unwrap()
        };
        let got = fused(&xs, &kernel, &gamma, &beta);
        let conv = conv2d(&xs, &kernel, pad, stride).unwrap();
        let (want_act, want_mean, want_var) = batch_norm_train(&conv, &gamma, &beta, 1e-3, true)
            .unwrap()
            .unwrap();
        let want = match pool {
            Some(pool) => pool.forward(&want_act).unwrap(),
            None => want_act.clone(),
        };
        let (_, _, h, w) = conv.dims4().unwrap();
        assert_eq!(got.count, n * h * w);
        let what =
            format!("conv + batch norm + relu + {pool:?}, {kh}×{kw} s{stride} on {n} images");
        for (g, w) in [
            (&got.out, &want),
            (&got.activation, &want_act),
            (&got.mean, &want_mean),
            (&got.var, &want_var),
        ] {
            assert_eq!(g.dims(), w.dims(), "{what}");
            assert!(max_abs_diff(g, w) < 1e-12, "{what}");
        }
        let dims = [n, 2, 7, 8];
        check_gradient(&|x| fused(x, &kernel, &gamma, &beta).out, &dims, &what);
        check_gradient(
            &|k| fused(&xs, k, &gamma, &beta).out,
            &[3, 2, kh, kw],
            &what,
        );
        check_gradient(&|g| fused(&xs, &kernel, g, &beta).out, &[3], &what);
        check_gradient(&|b| fused(&xs, &kernel, &gamma, b).out, &[3], &what);
    }
}

#[test]
fn batch_statistics_stay_accurate_far_from_zero() {
    // Planes of fewer values than a vector's lanes (3×3), of several vectors and a tail, and of
    // many.
    for dims in [[4, 2, 9, 7], [6, 2, 3, 3], [2, 2, 17, 19]] {
        statistics_far_from_zero(dims);
    }
}

fn statistics_far_from_zero(dims: [usize; 4]) {
    use retrain_inception::ops::batch_norm_train;
    // f32 values near 1000 spread by about 0.01, the planes' means differing: `Σx² − n·mean²`
    // would lose the variance entirely.
    let offsets = input(&[dims[0], 2, 1, 1], 62).affine(0.05, 1000.0).unwrap();
    let x64 = input(&dims, 61)
        .affine(0.01, 0.0)
        .unwrap()
        .broadcast_add(&offsets)
        .unwrap();
    let xs = x64.to_dtype(DType::F32).unwrap();
    let (gamma, beta) = (
        Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    let (_, mean, var) = batch_norm_train(&xs, &gamma, &beta, 1e-3, false)
        .unwrap()
        .unwrap();
    // Two passes in f64 over the same f32 values.
    let per_channel = xs
        .to_dtype(DType::F64)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .flatten_from(1)
        .unwrap();
    let want_mean = per_channel.mean_keepdim(1).unwrap();
    let want_var = per_channel
        .broadcast_sub(&want_mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(1)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let got_mean = mean.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let got_var = var.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let want_mean = want_mean.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for ch in 0..2 {
        assert!((got_mean[ch] - want_mean[ch]).abs() < 1e-4, "mean {ch}");
        let rel = (got_var[ch] - want_var[ch]).abs() / want_var[ch];
        assert!(
            rel < 1e-3,
            "{dims:?}, channel {ch}: variance {} against {}",
            got_var[ch],
            want_var[ch]
        );
    }
}

/// `ops::Sgd` takes the same steps as `candle_nn::SGD`, to the bit, for f32 and f64 weights,
/// in place; a weight without a gradient stays as it is.
#[test]
fn in_place_sgd_matches_candle_nns() {
    use candle_nn::Optimizer;
    for dtype in [DType::F32, DType::F64] {
        let start = input(&[3, 70_001], 7).to_dtype(dtype).unwrap();
        let untouched = input(&[5], 8).to_dtype(dtype).unwrap();
        let (ours, theirs) = (
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
        );
        let idle = Var::from_tensor(&untouched).unwrap();
        let mut ours_opt =
            retrain_inception::ops::Sgd::new(vec![ours.clone(), idle.clone()], 0.05).unwrap();
        let mut theirs_opt = candle_nn::SGD::new(vec![theirs.clone()], 0.05).unwrap();
        for _ in 0..3 {
            let loss = |w: &Var| (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            ours_opt.backward_step(&loss(&ours)).unwrap();
            theirs_opt.backward_step(&loss(&theirs)).unwrap();
        }
        let bits = |t: &Tensor| {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        assert_eq!(
            bits(ours.as_tensor()),
            bits(theirs.as_tensor()),
            "{dtype:?}"
        );
        assert_ne!(
            bits(ours.as_tensor()),
            bits(&start),
            "{dtype:?}: no step taken"
        );
        assert_eq!(bits(idle.as_tensor()), bits(&untouched));
    }
}
