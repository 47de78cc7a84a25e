//! Inception-v3 with torchvision's structure and parameter names.

use std::sync::Mutex;

use candle_core::{D, DType, Device, ModuleT, Result, Tensor, bail};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Init, Linear, VarBuilder};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::block::{Branch, Step, stages_train};
use crate::conv::{conv2d, conv2d_bias_relu};
use crate::ops::{ConvBatchNormRelu, Pool2d, conv_batch_norm_relu_train};

/// Batch-norm epsilon of every `BasicConv2d` (torchvision and the TF original).
pub const BN_EPS: f64 = 1e-3;
/// Width of the bottleneck features (the pooled output of `Mixed_7c`).
pub const FEATURES: usize = 2048;
/// Smallest input height and width the network accepts.
pub const MIN_INPUT: usize = 75;
/// Smallest input height and width for which the aux head can run (it needs `Mixed_6e` ≥ 17×17).
pub const MIN_AUX_INPUT: usize = 299;

/// The shape of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Output classes of `fc` (and `AuxLogits.fc`).
    pub num_classes: usize,
    /// Build the aux head (`AuxLogits.*`); it runs in training mode only, as torchvision's.
    pub aux_logits: bool,
    /// Dropout probability before `fc` in training mode.
    pub dropout: f32,
    /// Batch-norm momentum in PyTorch's convention (`new = (1 − m)·old + m·batch`): 0.1 is
    /// PyTorch's default; the TF recipe's decay 0.9997 is 0.0003.
    pub bn_momentum: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            num_classes: 1000,
            aux_logits: true,
            dropout: 0.5,
            bn_momentum: 0.1,
        }
    }
}

thread_local! {
    static NO_GRAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether training-mode blocks run as one graph node each (see [`fused_block`]).
    static BLOCK_NODES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether training-mode Inception blocks run as one graph node each ([`block_train`]): yes,
/// unless `RETRAIN_BLOCK_NODES=0` (for measuring the difference) or a test turned it off.
fn block_nodes() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    BLOCK_NODES.get()
        && *ENV.get_or_init(|| std::env::var("RETRAIN_BLOCK_NODES").map_or(true, |v| v != "0"))
}

/// A step of a block's branch for [`fused_block`].
#[derive(Clone, Copy)]
enum Part<'a> {
    Conv(&'a BasicConv2d),
    Pool(Pool2d),
}

/// A branch for [`fused_block`]: its parts, and the runs of parts it splits into (if any).
type BranchParts<'a> = (Vec<Part<'a>>, Vec<Vec<Part<'a>>>);

/// An Inception block: a layer, whose branches [`fused_block`] and [`fused_stages`] take.
trait Parts: ModuleT {
    fn parts(&self) -> Vec<BranchParts<'_>>;
}

/// A block in training mode as one graph node ([`block_train`]), the running statistics of its
/// layers updated: its output and each step's (detached). `None` where that does not apply (off
/// the CPU, turned off, a layer without batch-norm parameters): compose the layers there.
fn fused_block<'a>(
    xs: &Tensor,
    branches: &[BranchParts<'a>],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    Ok(fused_stages(xs, &[branches.to_vec()])?.map(|(out, steps, _)| (out, steps)))
}

/// What [`fused_stages`] returns: the last block's output, each step's output and each block's
/// output but the last.
type Fused = (Tensor, Vec<Tensor>, Vec<Tensor>);

/// Blocks one after another in training mode as one graph node ([`stages_train`]), the running
/// statistics of their layers updated: the last block's output, each step's output and each
/// block's output but the last (detached). `None` where [`fused_block`] is.
fn fused_stages<'a>(xs: &Tensor, stages: &[Vec<BranchParts<'a>>]) -> Result<Option<Fused>> {
    if !block_nodes() {
        return Ok(None);
    }
    let mut layers = Vec::new();
    let mut steps = |parts: &[Part<'a>]| -> Option<Vec<Step<'a>>> {
        parts
            .iter()
            .map(|part| match *part {
                Part::Conv(layer) => {
                    let (gamma, beta) = layer.bn.weight_and_bias()?;
                    layers.push(layer);
                    Some(Step::Conv {
                        kernel: layer.conv.weight(),
                        gamma,
                        beta,
                        eps: layer.bn.eps(),
                        padding: layer.pad,
                        stride: layer.conv.config().stride,
                    })
                }
                Part::Pool(pool) => Some(Step::Pool(pool)),
            })
            .collect()
    };
    let mut specs = Vec::with_capacity(stages.len());
    for branches in stages {
        let mut spec = Vec::with_capacity(branches.len());
        for (parts, split) in branches {
            let Some(main) = steps(parts) else {
                return Ok(None);
            };
            let Some(split) = split.iter().map(|p| steps(p)).collect::<Option<Vec<_>>>() else {
                return Ok(None);
            };
            spec.push(Branch { steps: main, split });
        }
        specs.push(spec);
    }
    let Some(block) = stages_train(xs, &specs)? else {
        return Ok(None);
    };
    for (layer, s) in layers.iter().zip(&block.stats) {
        layer.update_running_stats(&s.mean, &s.var, s.count)?;
    }
    Ok(Some((block.out, block.steps, block.stages)))
}

/// Like `torch.no_grad()`: while the returned guard lives, eval-mode forward passes on this
/// thread read the weights detached, so they build no autograd graph and each intermediate tensor
/// is freed as soon as the next layer has read it (feature extraction, evaluation, prediction).
/// Without it, an eval-mode pass stays differentiable with respect to the weights (candle has no
/// global switch) and keeps every activation until its result is dropped.
#[must_use = "gradients are off only while the guard lives"]
pub fn no_grad() -> NoGrad {
    NoGrad(NO_GRAD.replace(true))
}

/// The guard [`no_grad`] returns; dropping it restores the previous setting.
#[derive(Debug)]
pub struct NoGrad(bool);

impl Drop for NoGrad {
    fn drop(&mut self) {
        NO_GRAD.set(self.0);
    }
}

/// `t`, detached inside [`no_grad`].
fn maybe_detached(t: &Tensor) -> Tensor {
    if NO_GRAD.get() { t.detach() } else { t.clone() }
}

/// conv (no bias) + batch norm (eps 0.001) + ReLU, with per-axis padding.
#[derive(Debug, Clone)]
pub struct BasicConv2d {
    conv: Conv2d,
    bn: BatchNorm,
    /// Zero padding (rows, columns).
    pad: (usize, usize),
}

impl BasicConv2d {
    /// A `kh`×`kw` convolution with `stride` and padding (`ph`, `pw`).
    pub fn new(
        vb: VarBuilder,
        bn_momentum: f64,
        c_in: usize,
        c_out: usize,
        (kh, kw): (usize, usize),
        stride: usize,
        (ph, pw): (usize, usize),
    ) -> Result<Self> {
        let weight =
            vb.pp("conv")
                .get_with_hints((c_out, c_in, kh, kw), "weight", Init::Const(0.0))?;
        // `conv` holds the kernel and stride; the padding, which may differ per axis, is `pad`.
        let cfg = Conv2dConfig {
            padding: 0,
            stride,
            ..Default::default()
        };
        let conv = Conv2d::new(weight, None, cfg);
        let bn_cfg = BatchNormConfig {
            eps: BN_EPS,
            remove_mean: true,
            affine: true,
            momentum: bn_momentum,
        };
        let bn = candle_nn::batch_norm(c_out, bn_cfg, vb.pp("bn"))?;
        Ok(Self {
            conv,
            bn,
            pad: (ph, pw),
        })
    }

    fn square(vb: VarBuilder, m: f64, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        Self::new(vb, m, c_in, c_out, (k, k), 1, (k / 2, k / 2))
    }
}

impl BasicConv2d {
    /// `running = (1 − m)·running + m·batch`, with the unbiased variance (the batch's `count`
    /// values per channel), as PyTorch.
    fn update_running_stats(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let count = count as f64;
        let m = self.bn.momentum();
        let running_mean = candle_core::Var::from_tensor(self.bn.running_mean())?;
        let running_var = candle_core::Var::from_tensor(self.bn.running_var())?;
        let new_mean = ((running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let unbiased = (var * (m * count / (count - 1.0)))?;
        let new_var = ((running_var.as_detached_tensor() * (1.0 - m))? + unbiased)?;
        running_mean.set(&new_mean)?;
        running_var.set(&new_var)
    }

    /// Training mode where the CPU kernels apply: convolution, batch norm, ReLU and `pool` (if
    /// any) as one graph node ([`conv_batch_norm_relu_train`]), the running statistics updated;
    /// `None` elsewhere.
    fn forward_fused(
        &self,
        xs: &Tensor,
        pool: Option<Pool2d>,
    ) -> Result<Option<ConvBatchNormRelu>> {
        let Some((gamma, beta)) = self.bn.weight_and_bias() else {
            return Ok(None);
        };
        let fused = conv_batch_norm_relu_train(
            xs,
            self.conv.weight(),
            (gamma, beta, self.bn.eps()),
            self.pad,
            self.conv.config().stride,
            pool,
        )?;
        if let Some(f) = &fused {
            self.update_running_stats(&f.mean, &f.var, f.count)?;
        }
        Ok(fused)
    }

    /// The layer followed by `pool`: (the layer's output, the pool's). In training mode on the
    /// CPU one graph node, whose layer output is detached (for looking at: the gradient flows
    /// through the pool's).
    pub fn forward_pooled(
        &self,
        xs: &Tensor,
        pool: Pool2d,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        if train && let Some(f) = self.forward_fused(xs, Some(pool))? {
            return Ok((f.activation, f.out));
        }
        let ys = self.forward_t(xs, train)?;
        let pooled = pool.forward(&ys)?;
        Ok((ys, pooled))
    }
}

impl ModuleT for BasicConv2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let stride = self.conv.config().stride;
        if train {
            // One graph node for convolution, batch norm and ReLU where the CPU kernels apply;
            // candle's batch norm elsewhere.
            if let Some(f) = self.forward_fused(xs, None)? {
                return Ok(f.out);
            }
            return conv2d(xs, self.conv.weight(), self.pad, stride)?
                .apply_t(&self.bn, true)?
                .relu();
        }
        // Eval mode: the batch norm folded into the convolution (w·γ/√(var+ε) and one bias), the
        // bias and the ReLU applied in the same pass over the output. The statistics are
        // detached, as in candle's own eval path, so no gradient reaches them.
        let Some((gamma, beta)) = self.bn.weight_and_bias() else {
            return conv2d(xs, self.conv.weight(), self.pad, stride)?
                .apply_t(&self.bn, false)?
                .relu();
        };
        let (gamma, beta) = (maybe_detached(gamma), maybe_detached(beta));
        let c_out = gamma.dim(0)?;
        let scale = (gamma / (self.bn.running_var().detach() + self.bn.eps())?.sqrt()?)?;
        let shift = (beta - (self.bn.running_mean().detach() * &scale)?)?;
        let weight =
            maybe_detached(self.conv.weight()).broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        conv2d_bias_relu(xs, &weight, &shift, self.pad, stride)
    }
}

/// 35×35 block: 1×1, 5×5, double 3×3 and pool branches.
#[derive(Debug, Clone)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            branch1x1: BasicConv2d::square(vb.pp("branch1x1"), m, c_in, 64, 1)?,
            branch5x5_1: BasicConv2d::square(vb.pp("branch5x5_1"), m, c_in, 48, 1)?,
            branch5x5_2: BasicConv2d::square(vb.pp("branch5x5_2"), m, 48, 64, 5)?,
            branch3x3dbl_1: BasicConv2d::square(vb.pp("branch3x3dbl_1"), m, c_in, 64, 1)?,
            branch3x3dbl_2: BasicConv2d::square(vb.pp("branch3x3dbl_2"), m, 64, 96, 3)?,
            branch3x3dbl_3: BasicConv2d::square(vb.pp("branch3x3dbl_3"), m, 96, 96, 3)?,
            branch_pool: BasicConv2d::square(vb.pp("branch_pool"), m, c_in, pool_features, 1)?,
        })
    }
}

impl Parts for InceptionA {
    fn parts(&self) -> Vec<BranchParts<'_>> {
        use Part::{Conv, Pool};
        vec![
            (vec![Conv(&self.branch1x1)], vec![]),
            (
                vec![Conv(&self.branch5x5_1), Conv(&self.branch5x5_2)],
                vec![],
            ),
            (
                vec![
                    Conv(&self.branch3x3dbl_1),
                    Conv(&self.branch3x3dbl_2),
                    Conv(&self.branch3x3dbl_3),
                ],
                vec![],
            ),
            (
                vec![Pool(Pool2d::AVG_3X3_S1), Conv(&self.branch_pool)],
                vec![],
            ),
        ]
    }
}

impl ModuleT for InceptionA {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && let Some((out, _)) = fused_block(xs, &self.parts())? {
            return Ok(out);
        }
        let b1 = xs.apply_t(&self.branch1x1, train)?;
        let b5 = xs
            .apply_t(&self.branch5x5_1, train)?
            .apply_t(&self.branch5x5_2, train)?;
        let b3 = xs
            .apply_t(&self.branch3x3dbl_1, train)?
            .apply_t(&self.branch3x3dbl_2, train)?
            .apply_t(&self.branch3x3dbl_3, train)?;
        let bp = Pool2d::AVG_3X3_S1
            .forward(xs)?
            .apply_t(&self.branch_pool, train)?;
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// 35×35 → 17×17 reduction.
#[derive(Debug, Clone)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize) -> Result<Self> {
        Ok(Self {
            branch3x3: BasicConv2d::new(vb.pp("branch3x3"), m, c_in, 384, (3, 3), 2, (0, 0))?,
            branch3x3dbl_1: BasicConv2d::square(vb.pp("branch3x3dbl_1"), m, c_in, 64, 1)?,
            branch3x3dbl_2: BasicConv2d::square(vb.pp("branch3x3dbl_2"), m, 64, 96, 3)?,
            branch3x3dbl_3: BasicConv2d::new(
                vb.pp("branch3x3dbl_3"),
                m,
                96,
                96,
                (3, 3),
                2,
                (0, 0),
            )?,
        })
    }
}

impl Parts for InceptionB {
    fn parts(&self) -> Vec<BranchParts<'_>> {
        use Part::{Conv, Pool};
        vec![
            (vec![Conv(&self.branch3x3)], vec![]),
            (
                vec![
                    Conv(&self.branch3x3dbl_1),
                    Conv(&self.branch3x3dbl_2),
                    Conv(&self.branch3x3dbl_3),
                ],
                vec![],
            ),
            (vec![Pool(Pool2d::MAX_3X3_S2)], vec![]),
        ]
    }
}

impl ModuleT for InceptionB {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && let Some((out, _)) = fused_block(xs, &self.parts())? {
            return Ok(out);
        }
        let b3 = xs.apply_t(&self.branch3x3, train)?;
        let b3dbl = xs
            .apply_t(&self.branch3x3dbl_1, train)?
            .apply_t(&self.branch3x3dbl_2, train)?
            .apply_t(&self.branch3x3dbl_3, train)?;
        let bp = Pool2d::MAX_3X3_S2.forward(xs)?;
        Tensor::cat(&[b3, b3dbl, bp], 1)
    }
}

/// 17×17 block with factorised 7×7 convolutions (1×7 and 7×1).
#[derive(Debug, Clone)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7_1: BasicConv2d,
    branch7x7_2: BasicConv2d,
    branch7x7_3: BasicConv2d,
    branch7x7dbl_1: BasicConv2d,
    branch7x7dbl_2: BasicConv2d,
    branch7x7dbl_3: BasicConv2d,
    branch7x7dbl_4: BasicConv2d,
    branch7x7dbl_5: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionC {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize, c7: usize) -> Result<Self> {
        let row = |name: &str, i: usize, o: usize| {
            BasicConv2d::new(vb.pp(name), m, i, o, (1, 7), 1, (0, 3))
        };
        let col = |name: &str, i: usize, o: usize| {
            BasicConv2d::new(vb.pp(name), m, i, o, (7, 1), 1, (3, 0))
        };
        Ok(Self {
            branch1x1: BasicConv2d::square(vb.pp("branch1x1"), m, c_in, 192, 1)?,
            branch7x7_1: BasicConv2d::square(vb.pp("branch7x7_1"), m, c_in, c7, 1)?,
            branch7x7_2: row("branch7x7_2", c7, c7)?,
            branch7x7_3: col("branch7x7_3", c7, 192)?,
            branch7x7dbl_1: BasicConv2d::square(vb.pp("branch7x7dbl_1"), m, c_in, c7, 1)?,
            branch7x7dbl_2: col("branch7x7dbl_2", c7, c7)?,
            branch7x7dbl_3: row("branch7x7dbl_3", c7, c7)?,
            branch7x7dbl_4: col("branch7x7dbl_4", c7, c7)?,
            branch7x7dbl_5: row("branch7x7dbl_5", c7, 192)?,
            branch_pool: BasicConv2d::square(vb.pp("branch_pool"), m, c_in, 192, 1)?,
        })
    }
}

impl Parts for InceptionC {
    fn parts(&self) -> Vec<BranchParts<'_>> {
        use Part::{Conv, Pool};
        vec![
            (vec![Conv(&self.branch1x1)], vec![]),
            (
                vec![
                    Conv(&self.branch7x7_1),
                    Conv(&self.branch7x7_2),
                    Conv(&self.branch7x7_3),
                ],
                vec![],
            ),
            (
                vec![
                    Conv(&self.branch7x7dbl_1),
                    Conv(&self.branch7x7dbl_2),
                    Conv(&self.branch7x7dbl_3),
                    Conv(&self.branch7x7dbl_4),
                    Conv(&self.branch7x7dbl_5),
                ],
                vec![],
            ),
            (
                vec![Pool(Pool2d::AVG_3X3_S1), Conv(&self.branch_pool)],
                vec![],
            ),
        ]
    }
}

impl ModuleT for InceptionC {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && let Some((out, _)) = fused_block(xs, &self.parts())? {
            return Ok(out);
        }
        let b1 = xs.apply_t(&self.branch1x1, train)?;
        let b7 = xs
            .apply_t(&self.branch7x7_1, train)?
            .apply_t(&self.branch7x7_2, train)?
            .apply_t(&self.branch7x7_3, train)?;
        let b7dbl = xs
            .apply_t(&self.branch7x7dbl_1, train)?
            .apply_t(&self.branch7x7dbl_2, train)?
            .apply_t(&self.branch7x7dbl_3, train)?
            .apply_t(&self.branch7x7dbl_4, train)?
            .apply_t(&self.branch7x7dbl_5, train)?;
        let bp = Pool2d::AVG_3X3_S1
            .forward(xs)?
            .apply_t(&self.branch_pool, train)?;
        Tensor::cat(&[b1, b7, b7dbl, bp], 1)
    }
}

/// 17×17 → 8×8 reduction.
#[derive(Debug, Clone)]
pub struct InceptionD {
    branch3x3_1: BasicConv2d,
    branch3x3_2: BasicConv2d,
    branch7x7x3_1: BasicConv2d,
    branch7x7x3_2: BasicConv2d,
    branch7x7x3_3: BasicConv2d,
    branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize) -> Result<Self> {
        Ok(Self {
            branch3x3_1: BasicConv2d::square(vb.pp("branch3x3_1"), m, c_in, 192, 1)?,
            branch3x3_2: BasicConv2d::new(vb.pp("branch3x3_2"), m, 192, 320, (3, 3), 2, (0, 0))?,
            branch7x7x3_1: BasicConv2d::square(vb.pp("branch7x7x3_1"), m, c_in, 192, 1)?,
            branch7x7x3_2: BasicConv2d::new(
                vb.pp("branch7x7x3_2"),
                m,
                192,
                192,
                (1, 7),
                1,
                (0, 3),
            )?,
            branch7x7x3_3: BasicConv2d::new(
                vb.pp("branch7x7x3_3"),
                m,
                192,
                192,
                (7, 1),
                1,
                (3, 0),
            )?,
            branch7x7x3_4: BasicConv2d::new(
                vb.pp("branch7x7x3_4"),
                m,
                192,
                192,
                (3, 3),
                2,
                (0, 0),
            )?,
        })
    }
}

impl Parts for InceptionD {
    fn parts(&self) -> Vec<BranchParts<'_>> {
        use Part::{Conv, Pool};
        vec![
            (
                vec![Conv(&self.branch3x3_1), Conv(&self.branch3x3_2)],
                vec![],
            ),
            (
                vec![
                    Conv(&self.branch7x7x3_1),
                    Conv(&self.branch7x7x3_2),
                    Conv(&self.branch7x7x3_3),
                    Conv(&self.branch7x7x3_4),
                ],
                vec![],
            ),
            (vec![Pool(Pool2d::MAX_3X3_S2)], vec![]),
        ]
    }
}

impl ModuleT for InceptionD {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && let Some((out, _)) = fused_block(xs, &self.parts())? {
            return Ok(out);
        }
        let b3 = xs
            .apply_t(&self.branch3x3_1, train)?
            .apply_t(&self.branch3x3_2, train)?;
        let b7 = xs
            .apply_t(&self.branch7x7x3_1, train)?
            .apply_t(&self.branch7x7x3_2, train)?
            .apply_t(&self.branch7x7x3_3, train)?
            .apply_t(&self.branch7x7x3_4, train)?;
        let bp = Pool2d::MAX_3X3_S2.forward(xs)?;
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// 8×8 block with split 1×3 / 3×1 branches.
#[derive(Debug, Clone)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionE {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize) -> Result<Self> {
        let row = |name: &str, i: usize, o: usize| {
            BasicConv2d::new(vb.pp(name), m, i, o, (1, 3), 1, (0, 1))
        };
        let col = |name: &str, i: usize, o: usize| {
            BasicConv2d::new(vb.pp(name), m, i, o, (3, 1), 1, (1, 0))
        };
        Ok(Self {
            branch1x1: BasicConv2d::square(vb.pp("branch1x1"), m, c_in, 320, 1)?,
            branch3x3_1: BasicConv2d::square(vb.pp("branch3x3_1"), m, c_in, 384, 1)?,
            branch3x3_2a: row("branch3x3_2a", 384, 384)?,
            branch3x3_2b: col("branch3x3_2b", 384, 384)?,
            branch3x3dbl_1: BasicConv2d::square(vb.pp("branch3x3dbl_1"), m, c_in, 448, 1)?,
            branch3x3dbl_2: BasicConv2d::square(vb.pp("branch3x3dbl_2"), m, 448, 384, 3)?,
            branch3x3dbl_3a: row("branch3x3dbl_3a", 384, 384)?,
            branch3x3dbl_3b: col("branch3x3dbl_3b", 384, 384)?,
            branch_pool: BasicConv2d::square(vb.pp("branch_pool"), m, c_in, 192, 1)?,
        })
    }
}

impl Parts for InceptionE {
    fn parts(&self) -> Vec<BranchParts<'_>> {
        use Part::{Conv, Pool};
        vec![
            (vec![Conv(&self.branch1x1)], vec![]),
            (
                vec![Conv(&self.branch3x3_1)],
                vec![
                    vec![Conv(&self.branch3x3_2a)],
                    vec![Conv(&self.branch3x3_2b)],
                ],
            ),
            (
                vec![Conv(&self.branch3x3dbl_1), Conv(&self.branch3x3dbl_2)],
                vec![
                    vec![Conv(&self.branch3x3dbl_3a)],
                    vec![Conv(&self.branch3x3dbl_3b)],
                ],
            ),
            (
                vec![Pool(Pool2d::AVG_3X3_S1), Conv(&self.branch_pool)],
                vec![],
            ),
        ]
    }
}

impl ModuleT for InceptionE {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && let Some((out, _)) = fused_block(xs, &self.parts())? {
            return Ok(out);
        }
        let b1 = xs.apply_t(&self.branch1x1, train)?;
        let b3 = xs.apply_t(&self.branch3x3_1, train)?;
        let b3 = Tensor::cat(
            &[
                b3.apply_t(&self.branch3x3_2a, train)?,
                b3.apply_t(&self.branch3x3_2b, train)?,
            ],
            1,
        )?;
        let b3dbl = xs
            .apply_t(&self.branch3x3dbl_1, train)?
            .apply_t(&self.branch3x3dbl_2, train)?;
        let b3dbl = Tensor::cat(
            &[
                b3dbl.apply_t(&self.branch3x3dbl_3a, train)?,
                b3dbl.apply_t(&self.branch3x3dbl_3b, train)?,
            ],
            1,
        )?;
        let bp = Pool2d::AVG_3X3_S1
            .forward(xs)?
            .apply_t(&self.branch_pool, train)?;
        Tensor::cat(&[b1, b3, b3dbl, bp], 1)
    }
}

/// The auxiliary classifier on `Mixed_6e`.
#[derive(Debug, Clone)]
pub struct InceptionAux {
    conv0: BasicConv2d,
    conv1: BasicConv2d,
    fc: Linear,
}

impl InceptionAux {
    pub fn new(vb: VarBuilder, m: f64, c_in: usize, num_classes: usize) -> Result<Self> {
        Ok(Self {
            conv0: BasicConv2d::square(vb.pp("conv0"), m, c_in, 128, 1)?,
            conv1: BasicConv2d::new(vb.pp("conv1"), m, 128, 768, (5, 5), 1, (0, 0))?,
            fc: linear(vb.pp("fc"), 768, num_classes)?,
        })
    }
}

impl ModuleT for InceptionAux {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if h < 17 || w < 17 {
            bail!(
                "the aux head needs Mixed_6e at least 17×17 (input at least \
                 {MIN_AUX_INPUT}×{MIN_AUX_INPUT}), got {h}×{w}: build the model without aux logits \
                 or use larger inputs"
            )
        }
        Pool2d::AVG_5X5_S3
            .forward(xs)?
            .apply_t(&self.conv0, train)?
            .apply_t(&self.conv1, train)?
            .mean_keepdim(D::Minus1)?
            .mean_keepdim(D::Minus2)?
            .flatten_from(1)?
            .apply(&self.fc)
    }
}

fn linear(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Linear> {
    let weight = vb.get_with_hints((c_out, c_in), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Dropout whose masks come from a seeded ChaCha8 stream (candle's CPU RNG cannot be seeded).
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        Self {
            p,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Reseeds the mask stream.
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().expect("dropout rng lock") = ChaCha8Rng::seed_from_u64(seed);
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        if !(0.0..1.0).contains(&self.p) {
            bail!("dropout probability {} is not in [0, 1)", self.p)
        }
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng lock");
            (0..xs.elem_count())
                .map(|_| {
                    if rng.random::<f32>() < self.p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), &Device::Cpu)?
            .to_dtype(xs.dtype())?
            .to_device(xs.device())?;
        xs * mask
    }
}

/// The whole network. Build it on a [`candle_nn::VarMap`]-backed [`VarBuilder`] (see
/// [`crate::Model`]) so that training reaches the batch-norm statistics and weights can be saved.
#[derive(Debug)]
#[allow(non_snake_case)] // fields are torchvision's attribute names
pub struct InceptionV3 {
    cfg: Config,
    Conv2d_1a_3x3: BasicConv2d,
    Conv2d_2a_3x3: BasicConv2d,
    Conv2d_2b_3x3: BasicConv2d,
    Conv2d_3b_1x1: BasicConv2d,
    Conv2d_4a_3x3: BasicConv2d,
    Mixed_5b: InceptionA,
    Mixed_5c: InceptionA,
    Mixed_5d: InceptionA,
    Mixed_6a: InceptionB,
    Mixed_6b: InceptionC,
    Mixed_6c: InceptionC,
    Mixed_6d: InceptionC,
    Mixed_6e: InceptionC,
    AuxLogits: Option<InceptionAux>,
    Mixed_7a: InceptionD,
    Mixed_7b: InceptionE,
    Mixed_7c: InceptionE,
    dropout: Dropout,
    fc: Linear,
}

/// The top-level stages in forward order, as `summary` lists them.
pub const STAGES: [&str; 20] = [
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "avgpool",
    "fc",
];

impl InceptionV3 {
    /// Builds the network; every tensor starts at zero (batch-norm scale and variance at one):
    /// [`crate::Model`] fills them from a seeded RNG.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if cfg.num_classes == 0 {
            bail!("num_classes must be at least 1")
        }
        let m = cfg.bn_momentum;
        let conv = |name: &str, i, o, k, s, p| BasicConv2d::new(vb.pp(name), m, i, o, k, s, p);
        Ok(Self {
            cfg: cfg.clone(),
            Conv2d_1a_3x3: conv("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0))?,
            Conv2d_2a_3x3: conv("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?,
            Conv2d_2b_3x3: conv("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
            Conv2d_3b_1x1: conv("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0))?,
            Conv2d_4a_3x3: conv("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))?,
            Mixed_5b: InceptionA::new(vb.pp("Mixed_5b"), m, 192, 32)?,
            Mixed_5c: InceptionA::new(vb.pp("Mixed_5c"), m, 256, 64)?,
            Mixed_5d: InceptionA::new(vb.pp("Mixed_5d"), m, 288, 64)?,
            Mixed_6a: InceptionB::new(vb.pp("Mixed_6a"), m, 288)?,
            Mixed_6b: InceptionC::new(vb.pp("Mixed_6b"), m, 768, 128)?,
            Mixed_6c: InceptionC::new(vb.pp("Mixed_6c"), m, 768, 160)?,
            Mixed_6d: InceptionC::new(vb.pp("Mixed_6d"), m, 768, 160)?,
            Mixed_6e: InceptionC::new(vb.pp("Mixed_6e"), m, 768, 192)?,
            AuxLogits: if cfg.aux_logits {
                Some(InceptionAux::new(
                    vb.pp("AuxLogits"),
                    m,
                    768,
                    cfg.num_classes,
                )?)
            } else {
                None
            },
            Mixed_7a: InceptionD::new(vb.pp("Mixed_7a"), m, 768)?,
            Mixed_7b: InceptionE::new(vb.pp("Mixed_7b"), m, 1280)?,
            Mixed_7c: InceptionE::new(vb.pp("Mixed_7c"), m, 2048)?,
            dropout: Dropout::new(cfg.dropout, 0),
            fc: linear(vb.pp("fc"), FEATURES, cfg.num_classes)?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The dropout layer before `fc` (to reseed its mask stream).
    pub fn dropout(&self) -> &Dropout {
        &self.dropout
    }

    /// Checks that `xs` is N×3×H×W with H, W ≥ 75 and a float dtype.
    pub fn check_input(xs: &Tensor) -> Result<()> {
        let dims = xs.dims();
        let ok = matches!(dims, &[n, 3, h, w] if n > 0 && h >= MIN_INPUT && w >= MIN_INPUT);
        if !ok {
            bail!(
                "Inception-v3 input must be N×3×H×W with N ≥ 1 and H, W ≥ {MIN_INPUT}, got shape {dims:?}"
            )
        }
        if !xs.dtype().is_float() {
            bail!(
                "Inception-v3 input must be floating point, got {:?}",
                xs.dtype()
            )
        }
        Ok(())
    }

    /// Runs the trunk up to `Mixed_7c`'s pooled output (N×2048), calling `visit` after each stage
    /// with its name and output; returns the features and the aux logits (training mode with an aux
    /// head only).
    pub fn trunk(
        &self,
        xs: &Tensor,
        train: bool,
        visit: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<(Tensor, Option<Tensor>)> {
        Self::check_input(xs)?;
        if train && let Some(done) = self.trunk_fused(xs, visit)? {
            return Ok(done);
        }
        let mut xs = xs.clone();
        let step = |visit: &mut dyn FnMut(&str, &Tensor),
                    name: &str,
                    f: &dyn Fn(&Tensor) -> Result<Tensor>,
                    xs: &mut Tensor| {
            *xs = f(xs)?;
            visit(name, xs);
            Result::Ok(())
        };
        step(
            visit,
            "Conv2d_1a_3x3",
            &|x| x.apply_t(&self.Conv2d_1a_3x3, train),
            &mut xs,
        )?;
        step(
            visit,
            "Conv2d_2a_3x3",
            &|x| x.apply_t(&self.Conv2d_2a_3x3, train),
            &mut xs,
        )?;
        // Each max pool of the stem and the layer before it: one graph node in training.
        let pooled_step = |visit: &mut dyn FnMut(&str, &Tensor),
                           (name, layer): (&str, &BasicConv2d),
                           pool_name: &str,
                           xs: &mut Tensor| {
            let (ys, pooled) = layer.forward_pooled(xs, Pool2d::MAX_3X3_S2, train)?;
            visit(name, &ys);
            visit(pool_name, &pooled);
            *xs = pooled;
            Result::Ok(())
        };
        pooled_step(
            visit,
            ("Conv2d_2b_3x3", &self.Conv2d_2b_3x3),
            "maxpool1",
            &mut xs,
        )?;
        step(
            visit,
            "Conv2d_3b_1x1",
            &|x| x.apply_t(&self.Conv2d_3b_1x1, train),
            &mut xs,
        )?;
        pooled_step(
            visit,
            ("Conv2d_4a_3x3", &self.Conv2d_4a_3x3),
            "maxpool2",
            &mut xs,
        )?;
        let mut aux = None;
        for (i, (name, block)) in self.blocks().into_iter().enumerate() {
            step(visit, name, &|x| block.forward_t(x, train), &mut xs)?;
            if i + 1 == AUX_INPUT
                && train
                && let Some(head) = &self.AuxLogits
            {
                aux = Some(xs.apply_t(head, train)?);
            }
        }
        step(visit, "avgpool", &global_pool, &mut xs)?;
        Ok((xs, aux))
    }

    /// The eleven Inception blocks in order, with their names.
    fn blocks(&self) -> [(&'static str, &dyn Parts); 11] {
        [
            ("Mixed_5b", &self.Mixed_5b),
            ("Mixed_5c", &self.Mixed_5c),
            ("Mixed_5d", &self.Mixed_5d),
            ("Mixed_6a", &self.Mixed_6a),
            ("Mixed_6b", &self.Mixed_6b),
            ("Mixed_6c", &self.Mixed_6c),
            ("Mixed_6d", &self.Mixed_6d),
            ("Mixed_6e", &self.Mixed_6e),
            ("Mixed_7a", &self.Mixed_7a),
            ("Mixed_7b", &self.Mixed_7b),
            ("Mixed_7c", &self.Mixed_7c),
        ]
    }

    /// [`Self::trunk`] in training mode with the stem and the blocks as one graph node (two with
    /// an aux head, which reads `Mixed_6e`'s output): see [`stages_train`]. `None` where that does
    /// not apply ([`fused_block`]).
    fn trunk_fused(
        &self,
        xs: &Tensor,
        visit: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        let stem = [
            ("Conv2d_1a_3x3", Part::Conv(&self.Conv2d_1a_3x3)),
            ("Conv2d_2a_3x3", Part::Conv(&self.Conv2d_2a_3x3)),
            ("Conv2d_2b_3x3", Part::Conv(&self.Conv2d_2b_3x3)),
            ("maxpool1", Part::Pool(Pool2d::MAX_3X3_S2)),
            ("Conv2d_3b_1x1", Part::Conv(&self.Conv2d_3b_1x1)),
            ("Conv2d_4a_3x3", Part::Conv(&self.Conv2d_4a_3x3)),
            ("maxpool2", Part::Pool(Pool2d::MAX_3X3_S2)),
        ];
        let blocks = self.blocks();
        // With an aux head, a first node ends at Mixed_6e (whose output the head reads).
        let first = match self.AuxLogits {
            Some(_) => AUX_INPUT,
            None => blocks.len(),
        };
        let mut stages = vec![vec![(stem.iter().map(|s| s.1).collect(), vec![])]];
        stages.extend(blocks[..first].iter().map(|(_, b)| b.parts()));
        let Some((mut xs, steps, outs)) = fused_stages(xs, &stages)? else {
            return Ok(None);
        };
        // The stem's steps but its last (its output, the first stage's), then each stage's output.
        for ((name, _), step) in stem.iter().zip(&steps).take(stem.len() - 1) {
            visit(name, step);
        }
        let names = std::iter::once("maxpool2").chain(blocks[..first].iter().map(|b| b.0));
        for (name, out) in names.zip(outs.iter().chain([&xs])) {
            visit(name, out);
        }
        let aux = match &self.AuxLogits {
            Some(aux) => Some(xs.apply_t(aux, true)?),
            None => None,
        };
        if first < blocks.len() {
            let stages: Vec<_> = blocks[first..].iter().map(|(_, b)| b.parts()).collect();
            let Some((out, _, outs)) = fused_stages(&xs, &stages)? else {
                bail!(
                    "inception trunk: the blocks after Mixed_6e did not fuse where those before did"
                )
            };
            let names = blocks[first..].iter().map(|b| b.0);
            for (name, out) in names.zip(outs.iter().chain([&out])) {
                visit(name, out);
            }
            xs = out;
        }
        xs = global_pool(&xs)?;
        visit("avgpool", &xs);
        Ok(Some((xs, aux)))
    }

    /// Bottleneck features: the 2048-d pooled output of `Mixed_7c`, N×2048, in eval mode.
    pub fn features(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.trunk(xs, false, &mut |_, _| {})?.0)
    }

    /// The classifier on top of the features: dropout (training mode only), then `fc`.
    pub fn head(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        features.apply_t(&self.dropout, train)?.apply(&self.fc)
    }

    /// Logits and, in training mode with an aux head, the aux logits.
    pub fn forward_with_aux(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (features, aux) = self.trunk(xs, train, &mut |_, _| {})?;
        Ok((self.head(&features, train)?, aux))
    }
}

impl ModuleT for InceptionV3 {
    /// The logits (N×classes); the aux logits are dropped (see [`InceptionV3::forward_with_aux`]).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_with_aux(xs, train)?.0)
    }
}

/// How many of [`InceptionV3::blocks`] run before the aux head reads the last one's output
/// (`Mixed_6e`).
const AUX_INPUT: usize = 8;

/// The mean of each N×C×H×W plane, N×C: `Mixed_7c`'s average pool.
fn global_pool(xs: &Tensor) -> Result<Tensor> {
    xs.mean_keepdim(D::Minus1)?
        .mean_keepdim(D::Minus2)?
        .flatten_from(1)
}

/// The dtype the model computes in.
pub const DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// Values in [-1, 1) from a counter (no RNG needed).
    fn values(n: usize, salt: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919 + salt * 104_729) % 2003) as f64 / 1001.5 - 1.0)
            .collect()
    }

    /// Every variable of `varmap` set to values from a counter (variances positive).
    fn fill(varmap: &VarMap) {
        let data = varmap.data().lock().unwrap();
        for (i, (name, var)) in data.iter().enumerate() {
            let v = values(var.elem_count(), i);
            let v: Vec<f64> = match name.ends_with("running_var") {
                true => v.iter().map(|x| 1.0 + x.abs()).collect(),
                false => v,
            };
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    /// (output, input gradient, each variable's (name, gradient, value)).
    type Pass = (Tensor, Tensor, Vec<(String, Option<Tensor>, Tensor)>);

    /// The output, input gradient, every variable's gradient and every variable's value after one
    /// training-mode pass of `block` over `x` (running statistics updated), with the block as one
    /// graph node or composed of its layers.
    fn pass(block: &dyn ModuleT, varmap: &VarMap, x: &Tensor, fused: bool) -> Pass {
        BLOCK_NODES.set(fused);
        fill(varmap);
        let x = candle_core::Var::from_tensor(x).unwrap();
        let out = block.forward_t(&x, true).unwrap();
        BLOCK_NODES.set(true);
        let weights = Tensor::from_vec(values(out.elem_count(), 99), out.shape(), &Device::Cpu);
        let loss = (&out * weights.unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let vars = data
            .iter()
            .map(|(name, var)| {
                let grad = grads.get(var.as_tensor()).cloned();
                (name.clone(), grad, var.as_tensor().copy().unwrap())
            })
            .collect();
        (out, grads.get(x.as_tensor()).unwrap().clone(), vars)
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        let (diff, scale) = (
            diff.to_scalar::<f64>().unwrap(),
            scale.to_scalar::<f64>().unwrap(),
        );
        assert!(
            diff <= 1e-10 * (1.0 + scale),
            "{what}: |Δ| = {diff} of {scale}"
        );
    }

    #[test]
    fn a_block_as_one_node_gives_the_composed_layers_values_gradients_and_statistics() {
        type Build = fn(VarBuilder) -> Result<Box<dyn ModuleT>>;
        // Each kind of block, with an input of (channels, size).
        let blocks: [(&str, Build, (usize, usize)); 5] = [
            (
                "A",
                |vb| Ok(Box::new(InceptionA::new(vb, 0.1, 8, 4)?)),
                (8, 5),
            ),
            ("B", |vb| Ok(Box::new(InceptionB::new(vb, 0.1, 8)?)), (8, 7)),
            (
                "C",
                |vb| Ok(Box::new(InceptionC::new(vb, 0.1, 8, 16)?)),
                (8, 4),
            ),
            ("D", |vb| Ok(Box::new(InceptionD::new(vb, 0.1, 8)?)), (8, 7)),
            ("E", |vb| Ok(Box::new(InceptionE::new(vb, 0.1, 8)?)), (8, 3)),
        ];
        for (kind, build, (c, size)) in blocks {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
            let block = build(vb).unwrap();
            let x = Tensor::from_vec(
                values(2 * c * size * size, 7),
                (2, c, size, size),
                &Device::Cpu,
            )
            .unwrap();
            let (out, dx, vars) = pass(&*block, &varmap, &x, true);
            let (want_out, want_dx, want_vars) = pass(&*block, &varmap, &x, false);
            close(&out, &want_out, &format!("{kind}: output"));
            close(&dx, &want_dx, &format!("{kind}: input gradient"));
            let mut with_grads = 0;
            for ((name, grad, value), (_, want_grad, want_value)) in vars.iter().zip(&want_vars) {
                close(value, want_value, &format!("{kind}: {name} after the pass"));
                match (grad, want_grad) {
                    (Some(g), Some(w)) => {
                        close(g, w, &format!("{kind}: gradient of {name}"));
                        with_grads += 1;
                    }
                    (None, None) => {}
                    _ => panic!("{kind}: {name} has a gradient one way only"),
                }
            }
            // Every kernel, γ and β: three per convolution.
            assert_eq!(with_grads, 3 * vars.len() / 5, "{kind}");
        }
    }

    #[test]
    fn the_trunk_as_one_node_gives_the_composed_layers_values_gradients_and_statistics() {
        // The whole network at its smallest input: the stem and all eleven blocks in one node
        // against each layer composed (every block's node turned off too).
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let cfg = Config {
            num_classes: 5,
            aux_logits: false,
            dropout: 0.0,
            ..Config::default()
        };
        let net = InceptionV3::new(&cfg, vb).unwrap();
        let size = MIN_INPUT;
        let x = Tensor::from_vec(
            values(2 * 3 * size * size, 7),
            (2, 3, size, size),
            &Device::Cpu,
        )
        .unwrap();
        let (out, dx, vars) = pass(&net, &varmap, &x, true);
        let (want_out, want_dx, want_vars) = pass(&net, &varmap, &x, false);
        close(&out, &want_out, "logits");
        close(&dx, &want_dx, "input gradient");
        for ((name, grad, value), (_, want_grad, want_value)) in vars.iter().zip(&want_vars) {
            close(value, want_value, &format!("{name} after the pass"));
            match (grad, want_grad) {
                (Some(g), Some(w)) => close(g, w, &format!("gradient of {name}")),
                (None, None) => {}
                _ => panic!("{name} has a gradient one way only"),
            }
        }
    }
}
