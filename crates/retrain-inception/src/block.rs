//! An Inception block in training mode as one graph node (CPU, f32 and f64).
//!
//! Composed of one node per layer, a block's backward pass goes through candle's gradient store,
//! which adds every gradient into a zero tensor of its own: the block's input, read by three or
//! four branches, gets a zero tensor and four sums the size of the input, and each layer inside a
//! branch a zero tensor and a sum the size of its input, all of them allocated, written and read
//! again (6 % of a 139×139 training step). PyTorch adds in place. Here the block's layers run
//! eagerly, without a graph, and a single node stands for the block: its backward pass hands each
//! layer's input gradient straight to the layer before it, adds the branches' gradients of the
//! block's input into one tensor, and cuts the output gradient into the branches' channels.
//!
//! The kernels and batch-norm parameters reach the graph through one small node per layer (a
//! *tap*, whose output is a single zero): the block's node reads their sum, so candle runs the
//! block's backward pass first and each tap's afterwards, and a tap hands over the gradients the
//! block's backward pass left for it. No kernel is copied or concatenated.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Storage, Tensor, bail};

use crate::conv::{conv2d_grads_of, filled, ours};
use crate::ops::{
    Argmax, BatchNormTrain, ConvStats, MaxPoolKeep, Pool2d, Pool2dBackward, conv_with_stats,
};

/// One step of a branch.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// `relu(batch_norm(conv2d(x, kernel)))` with batch statistics, scale `gamma`, shift `beta`,
    /// epsilon `eps`; the convolution without bias, with `padding` (rows, columns) and `stride`.
    Conv {
        kernel: &'a Tensor,
        gamma: &'a Tensor,
        beta: &'a Tensor,
        eps: f64,
        padding: (usize, usize),
        stride: usize,
    },
    /// A pooling layer.
    Pool(Pool2d),
}

/// A branch of a block: `steps` in turn from the block's input; with `split`, several runs of
/// steps from their output, side by side in the block's output (Mixed_7b and 7c's 1×3 and 3×1).
#[derive(Debug, Clone, Default)]
pub struct Branch<'a> {
    pub steps: Vec<Step<'a>>,
    pub split: Vec<Vec<Step<'a>>>,
}

/// The batch statistics of one convolution's output, for the running statistics.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Mean and biased variance per channel (detached).
    pub mean: Tensor,
    pub var: Tensor,
    /// The values per channel the statistics are over (N·H·W).
    pub count: usize,
}

/// What [`block_train`] returns.
#[derive(Debug, Clone)]
pub struct BlockTrain {
    /// The block's output: its branches' outputs side by side (channels in branch order).
    pub out: Tensor,
    /// Each convolution's batch statistics, in the order the convolutions come (branch by branch,
    /// a branch's steps before its split).
    pub stats: Vec<Stats>,
    /// Each step's output in the same order (detached, for looking at).
    pub steps: Vec<Tensor>,
    /// Each stage's output but the last (detached; see [`stages_train`]).
    pub stages: Vec<Tensor>,
}

/// A block of `branches` from `xs` in training mode as one graph node. `None` off the CPU or for
/// another dtype than f32 and f64: compose the layers there.
pub fn block_train(xs: &Tensor, branches: &[Branch]) -> Result<Option<BlockTrain>> {
    stages_train(xs, &[branches.to_vec()])
}

/// Blocks one after another (`stages`, each a block's branches from the previous block's output)
/// in training mode as one graph node: the backward pass hands each block's input gradient
/// straight to the block before it. As separate nodes, candle adds each block's input gradient
/// into a zero tensor of its own (a zero-filled allocation on one thread and a pass over three
/// tensors: about 3 % of a 139×139 training step). `None` where [`block_train`] is.
pub fn stages_train(xs: &Tensor, stages: &[Vec<Branch>]) -> Result<Option<BlockTrain>> {
    let convs = stages.iter().flatten().flat_map(|b| {
        b.steps
            .iter()
            .chain(b.split.iter().flatten())
            .filter_map(|s| match s {
                Step::Conv {
                    kernel,
                    gamma,
                    beta,
                    ..
                } => Some([*kernel, *gamma, *beta]),
                Step::Pool(_) => None,
            })
    });
    if !ours(xs)
        || convs.flatten().any(|t| t.dtype() != xs.dtype())
        || stages.is_empty()
        || stages.iter().any(Vec::is_empty)
    {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    let mut record = Record::default();
    let mut done = Vec::with_capacity(stages.len());
    let mut outs = Vec::with_capacity(stages.len() - 1);
    let mut input = xs.clone();
    for (i, branches) in stages.iter().enumerate() {
        let mut stage = Vec::with_capacity(branches.len());
        for branch in branches {
            let main = record.run(&input, &branch.steps)?;
            let split = branch
                .split
                .iter()
                .map(|steps| record.run(&main.out, steps))
                .collect::<Result<Vec<_>>>()?;
            stage.push(DoneBranch { main, split });
        }
        check_leaves(&stage)?;
        if i + 1 < stages.len() {
            // The next stage's input: this one's branches side by side.
            input = concat(&stage)?;
            outs.push(input.clone());
        }
        done.push(stage);
    }
    let node = BlockNode {
        stages: done,
        stash: record.stash.clone(),
    };
    let taps = record
        .taps
        .iter()
        .try_fold(None::<Tensor>, |sum, tap| match sum {
            None => Ok(Some(tap.clone())),
            Some(sum) => sum.add(tap).map(Some),
        })?;
    let out = match taps {
        Some(taps) => xs.apply_op2(&taps, node)?,
        // No convolution (not one of Inception's blocks): a zero for the second input.
        None => xs.apply_op2(&Tensor::zeros(1, xs.dtype(), xs.device())?, node)?,
    };
    Ok(Some(BlockTrain {
        out,
        stats: record.stats,
        steps: record.outputs,
        stages: outs,
    }))
}

/// A stage's branch outputs, in the order they go side by side: a branch's own, or its split
/// runs' one after the other.
fn leaves(stage: &[DoneBranch]) -> impl Iterator<Item = &Tensor> {
    stage.iter().flat_map(|b| {
        let split = b.split.iter().map(|r| &r.out);
        let main = b.split.is_empty().then_some(&b.main.out);
        main.into_iter().chain(split)
    })
}

/// That a stage's branch outputs have the same images and planes.
fn check_leaves(stage: &[DoneBranch]) -> Result<()> {
    let leaves: Vec<&Tensor> = leaves(stage).collect();
    let (n, _, h, w) = leaves[0].dims4()?;
    for leaf in &leaves {
        let (ln, _, lh, lw) = leaf.dims4()?;
        if (ln, lh, lw) != (n, h, w) {
            bail!(
                "inception block: branch outputs of different sizes, {:?} and {:?}",
                leaves[0].dims(),
                leaf.dims()
            )
        }
    }
    Ok(())
}

/// A stage's output without a graph: its only branch output as it is, or its branch outputs side
/// by side.
fn concat(stage: &[DoneBranch]) -> Result<Tensor> {
    let leaves: Vec<&Tensor> = leaves(stage).collect();
    if let [only] = leaves[..] {
        return Ok(only.clone());
    }
    let device = leaves[0].device();
    match side_by_side_of(&leaves)? {
        (CpuStorage::F32(v), shape) => Tensor::from_vec(v, shape, device),
        (CpuStorage::F64(v), shape) => Tensor::from_vec(v, shape, device),
        (other, _) => bail!("inception block: unsupported dtype {:?}", other.dtype()),
    }
}

/// What the forward pass keeps of a step for the backward pass.
enum Done {
    Conv {
        input: Tensor,
        /// The kernel, detached.
        kernel: Tensor,
        /// The convolution's output.
        conv: Tensor,
        /// γ, β, mean and var, detached.
        params: Tensor,
        bn: BatchNormTrain,
        geometry: ((usize, usize), usize),
        /// Whether the kernel, and γ and β, are part of a graph (else their gradients are not
        /// computed).
        wants: (bool, bool),
        /// This convolution's place in the stash.
        slot: usize,
    },
    Pool {
        input: Tensor,
        pool: Pool2d,
        /// A max pool's argmax (its backward pass then needs no input).
        argmax: Option<Argmax>,
    },
}

/// A run of steps: what each kept, and the last one's output.
struct Run {
    steps: Vec<Done>,
    out: Tensor,
}

struct DoneBranch {
    main: Run,
    split: Vec<Run>,
}

/// The forward pass's taps and statistics, in the order of the convolutions.
#[derive(Default)]
struct Record {
    taps: Vec<Tensor>,
    stats: Vec<Stats>,
    outputs: Vec<Tensor>,
    /// Where the block's backward pass leaves each convolution's gradients for its tap.
    stash: Stash,
}

type Stash = Arc<Mutex<Vec<Option<Grads>>>>;

/// A convolution's kernel gradient and its (γ, β, mean, var) gradient, each where asked for.
type Grads = (Option<Tensor>, Option<Tensor>);

impl Record {
    fn run(&mut self, input: &Tensor, steps: &[Step]) -> Result<Run> {
        let mut x = input.clone();
        let mut done = Vec::with_capacity(steps.len());
        for step in steps {
            let out = match *step {
                Step::Conv {
                    kernel,
                    gamma,
                    beta,
                    eps,
                    padding,
                    stride,
                } => {
                    let kernel = kernel.contiguous()?;
                    // γ and β reach the graph through `params`, in the tap.
                    let ConvStats {
                        conv,
                        mean,
                        var,
                        params,
                        count,
                    } = conv_with_stats(&x, &kernel, (gamma, beta), padding, stride)?;
                    let bn = BatchNormTrain { eps, relu: true };
                    let out = conv.apply_op2_no_bwd(&params.detach(), &bn)?;
                    let slot = self.taps.len();
                    let wants = (kernel.track_op(), params.track_op());
                    lock(&self.stash)?.push(None);
                    let tap = Tap {
                        slot,
                        stash: self.stash.clone(),
                    };
                    self.taps.push(kernel.apply_op2(&params, tap)?);
                    self.stats.push(Stats { mean, var, count });
                    done.push(Done::Conv {
                        input: x,
                        kernel: kernel.detach(),
                        conv,
                        params: params.detach(),
                        bn,
                        geometry: (padding, stride),
                        wants,
                        slot,
                    });
                    out
                }
                Step::Pool(pool) if pool.keeps_argmax() => {
                    let keep = MaxPoolKeep::new(pool);
                    let out = x.contiguous()?.apply_op1_no_bwd(&keep)?;
                    let argmax = keep.argmax();
                    done.push(Done::Pool {
                        input: x,
                        pool,
                        argmax,
                    });
                    out
                }
                Step::Pool(pool) => {
                    let out = x.apply_op1_no_bwd(&pool)?;
                    done.push(Done::Pool {
                        input: x,
                        pool,
                        argmax: None,
                    });
                    out
                }
            };
            self.outputs.push(out.clone());
            x = out;
        }
        Ok(Run {
            steps: done,
            out: x,
        })
    }
}

fn lock(stash: &Stash) -> Result<std::sync::MutexGuard<'_, Vec<Option<Grads>>>> {
    match stash.lock() {
        Ok(guard) => Ok(guard),
        Err(_) => bail!("inception block: a backward pass panicked while holding the gradients"),
    }
}

/// The blocks' graph node: (input, sum of the taps) → the last block's output.
struct BlockNode {
    stages: Vec<Vec<DoneBranch>>,
    stash: Stash,
}

impl BlockNode {
    /// The gradient of a stage's input for `grad`, its output's gradient (`None` where `input` is
    /// false): the output gradient cut into the branches' channels, each branch's input gradient
    /// added up.
    fn back_stage(
        &self,
        stage: &[DoneBranch],
        grad: &Tensor,
        input: bool,
    ) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let whole = leaves(stage).count() == 1;
        let mut start = 0;
        let mut part = |of: &Tensor| -> Result<Tensor> {
            if whole {
                return Ok(grad.clone());
            }
            let c = of.dim(1)?;
            let g = channels(&grad, start, c)?;
            start += c;
            Ok(g)
        };
        let mut dx = Sum::default();
        for branch in stage {
            let g = match branch.split.is_empty() {
                true => part(&branch.main.out)?,
                false => {
                    let mut sum = Sum::default();
                    for run in &branch.split {
                        let g = part(&run.out)?;
                        if let Some(d) = self.back(run, g, true)? {
                            sum.add(d)?;
                        }
                    }
                    match sum.total()? {
                        Some(sum) => sum,
                        None => bail!("inception block: a split branch without a gradient"),
                    }
                }
            };
            if let Some(d) = self.back(&branch.main, g, input)? {
                dx.add(d)?;
            }
        }
        dx.total()
    }

    /// The gradient of a run's input for `g`, its output's gradient (`None` where `input` is
    /// false: the run's first step then computes no input gradient); each convolution's
    /// gradients left in the stash.
    fn back(&self, run: &Run, mut g: Tensor, input: bool) -> Result<Option<Tensor>> {
        for (i, step) in run.steps.iter().enumerate().rev() {
            let need = i > 0 || input;
            match step {
                Done::Conv {
                    input,
                    kernel,
                    conv,
                    params,
                    bn,
                    geometry,
                    wants,
                    slot,
                } => {
                    let (dconv, dparams) = bn.grads(conv, params, &g)?;
                    let (dx, dk) =
                        conv2d_grads_of(input, kernel, &dconv, *geometry, (need, wants.0))?;
                    lock(&self.stash)?[*slot] = Some((dk, wants.1.then_some(dparams)));
                    match dx {
                        Some(dx) => g = dx,
                        None => return Ok(None),
                    }
                }
                Done::Pool {
                    input,
                    pool,
                    argmax,
                } => {
                    if !need {
                        return Ok(None);
                    }
                    g = match argmax {
                        Some(argmax) => MaxPoolKeep::grad(*pool, argmax.clone(), &g)?,
                        None => input.apply_op2_no_bwd(&g.contiguous()?, &Pool2dBackward(*pool))?,
                    };
                }
            }
        }
        Ok(Some(g))
    }
}

impl CustomOp2 for BlockNode {
    fn name(&self) -> &'static str {
        "inception-block-train"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Some(last) = self.stages.last() else {
            bail!("inception block: no stages")
        };
        let leaves: Vec<&Tensor> = leaves(last).collect();
        side_by_side_of(&leaves)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        taps: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut grad = grad.clone();
        let mut dx = None;
        for (i, stage) in self.stages.iter().enumerate().rev() {
            dx = self.back_stage(stage, &grad, i > 0 || xs.track_op())?;
            if i > 0 {
                match &dx {
                    Some(d) => grad = d.clone(),
                    None => bail!("inception block: a block without an input gradient"),
                }
            }
        }
        Ok((dx, Some(taps.zeros_like()?)))
    }
}

/// A running sum of equally shaped tensors (the branches' gradients of the block's input), added
/// in order: the first as it is, the second into a new vector, each later one into that vector
/// in place. At most three such tensors live at a time, as when candle adds them up.
#[derive(Default)]
enum Sum {
    #[default]
    Empty,
    First(Tensor),
    /// The sum so far, and the terms' shape and device (the terms themselves are not kept).
    F32(Vec<f32>, Shape, Device),
    F64(Vec<f64>, Shape, Device),
}

impl Sum {
    fn add(&mut self, term: Tensor) -> Result<()> {
        let term = term.contiguous()?;
        *self = match std::mem::take(self) {
            Sum::Empty => Sum::First(term),
            Sum::First(first) => {
                let first = first.contiguous()?;
                same_shape(first.shape(), &term)?;
                let (a, b) = (cpu_slice(&first)?, cpu_slice(&term)?);
                match (&*a.0, &*b.0) {
                    (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(y))) => {
                        let sum = pairwise(&x[a.1.clone()], &y[b.1.clone()]);
                        Sum::F32(sum, first.shape().clone(), first.device().clone())
                    }
                    (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(y))) => {
                        let sum = pairwise(&x[a.1.clone()], &y[b.1.clone()]);
                        Sum::F64(sum, first.shape().clone(), first.device().clone())
                    }
                    _ => bail!("inception block: branch gradients of an unsupported dtype"),
                }
            }
            Sum::F32(mut sum, shape, device) => {
                same_shape(&shape, &term)?;
                let b = cpu_slice(&term)?;
                let Storage::Cpu(CpuStorage::F32(y)) = &*b.0 else {
                    bail!("inception block: branch gradients of different dtypes")
                };
                add_into(&mut sum, &y[b.1.clone()]);
                Sum::F32(sum, shape, device)
            }
            Sum::F64(mut sum, shape, device) => {
                same_shape(&shape, &term)?;
                let b = cpu_slice(&term)?;
                let Storage::Cpu(CpuStorage::F64(y)) = &*b.0 else {
                    bail!("inception block: branch gradients of different dtypes")
                };
                add_into(&mut sum, &y[b.1.clone()]);
                Sum::F64(sum, shape, device)
            }
        };
        Ok(())
    }

    /// The sum; `None` for no terms.
    fn total(self) -> Result<Option<Tensor>> {
        Ok(match self {
            Sum::Empty => None,
            Sum::First(t) => Some(t),
            Sum::F32(v, shape, device) => Some(Tensor::from_vec(v, shape, &device)?),
            Sum::F64(v, shape, device) => Some(Tensor::from_vec(v, shape, &device)?),
        })
    }
}

fn same_shape(shape: &Shape, b: &Tensor) -> Result<()> {
    if shape != b.shape() {
        bail!(
            "inception block: branch gradients of shapes {:?} and {:?}",
            shape.dims(),
            b.dims()
        )
    }
    Ok(())
}

/// Channels `start..start + c` of a contiguous N×C×H×W CPU tensor, as a new tensor: the images'
/// runs copied in parallel (candle's copy of the narrowed view runs on one thread).
fn channels(t: &Tensor, start: usize, c: usize) -> Result<Tensor> {
    let (n, total, h, w) = t.dims4()?;
    if start + c > total {
        bail!(
            "inception block: channels {start}..{} of {total}",
            start + c
        )
    }
    fn copy<T: Copy + Send + Sync>(
        src: &[T],
        n: usize,
        (start, c, total): (usize, usize, usize),
        hw: usize,
    ) -> Vec<T> {
        let fill = |out: &mut [MaybeUninit<T>]| {
            out.par_chunks_mut((c * hw).max(1))
                .enumerate()
                .for_each(|(i, out)| {
                    out.write_copy_of_slice(&src[(i * total + start) * hw..][..c * hw]);
                })
        };
        // SAFETY: `n` chunks of `c·hw` elements, each written whole from its image's run.
        unsafe { filled(n * c * hw, fill) }
    }
    let (storage, range) = cpu_slice(t)?;
    let shape = (n, c, h, w);
    let hw = h * w;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            Tensor::from_vec(copy(&v[range], n, (start, c, total), hw), shape, t.device())
        }
        Storage::Cpu(CpuStorage::F64(v)) => {
            Tensor::from_vec(copy(&v[range], n, (start, c, total), hw), shape, t.device())
        }
        _ => t.narrow(1, start, c)?.contiguous(),
    }
}

/// A contiguous CPU tensor's storage and the range of it the tensor holds.
fn cpu_slice(
    t: &Tensor,
) -> Result<(
    impl std::ops::Deref<Target = Storage> + '_,
    std::ops::Range<usize>,
)> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("inception block: a branch gradient is not contiguous")
    };
    if !matches!(&*storage, Storage::Cpu(_)) {
        bail!("inception block: a branch gradient is not on the CPU")
    }
    Ok((storage, start..end))
}

/// Elements per task of the sums.
const RUN: usize = 1 << 14;

/// `a + b` element by element (equally long), parallel over runs.
fn pairwise<T: Copy + Send + Sync + std::ops::Add<Output = T>>(a: &[T], b: &[T]) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(RUN)
            .zip(a.par_chunks(RUN).zip(b.par_chunks(RUN)))
            .for_each(|(out, (a, b))| {
                for (o, (a, b)) in out.iter_mut().zip(a.iter().zip(b)) {
                    o.write(*a + *b);
                }
            })
    };
    // SAFETY: `a`'s runs pair with `out`'s (as long), and every element of each is written.
    unsafe { filled(a.len(), fill) }
}

/// `sum += term` element by element (equally long), parallel over runs.
fn add_into<T: Copy + Send + Sync + std::ops::AddAssign>(sum: &mut [T], term: &[T]) {
    sum.par_chunks_mut(RUN)
        .zip(term.par_chunks(RUN))
        .for_each(|(s, t)| {
            for (s, t) in s.iter_mut().zip(t) {
                *s += *t;
            }
        });
}

/// Equally sized images' tensors (`leaves`, N×Cᵢ×H×W, contiguous on the CPU) side by side along
/// the channels.
fn side_by_side_of(leaves: &[&Tensor]) -> Result<(CpuStorage, Shape)> {
    let (n, _, h, w) = leaves[0].dims4()?;
    let channels: usize = leaves.iter().map(|l| l.dim(1)).sum::<Result<usize>>()?;
    let guards: Vec<_> = leaves.iter().map(|l| l.storage_and_layout()).collect();
    let mut f32s = Vec::new();
    let mut f64s = Vec::new();
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(storage) = &**storage else {
            bail!("inception block: a branch's output is not on the CPU")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("inception block: a branch's output is not contiguous")
        };
        match storage {
            CpuStorage::F32(v) => f32s.push(&v[start..end]),
            CpuStorage::F64(v) => f64s.push(&v[start..end]),
            other => bail!("inception block: unsupported dtype {:?}", other.dtype()),
        }
    }
    let shape = Shape::from((n, channels, h, w));
    Ok(match (f32s.len(), f64s.len()) {
        (k, 0) if k == guards.len() => (CpuStorage::F32(side_by_side(&f32s, n)), shape),
        (0, k) if k == guards.len() => (CpuStorage::F64(side_by_side(&f64s, n)), shape),
        _ => bail!("inception block: branch outputs of different dtypes"),
    })
}

/// Images `n` of each part (`c_i` channels each, one after the other) side by side: image by
/// image, each part's channels in turn; the images in parallel (one thread copying them all took
/// 0.7 % of a 139×139 training step).
fn side_by_side<T: Copy + Send + Sync>(parts: &[&[T]], n: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let per_image = total.checked_div(n).unwrap_or(0);
    let fill = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(per_image.max(1))
            .enumerate()
            .for_each(|(i, out)| {
                let mut at = 0;
                for part in parts {
                    let per = part.len() / n;
                    out[at..at + per].write_copy_of_slice(&part[i * per..][..per]);
                    at += per;
                }
            })
    };
    // SAFETY: each image's chunk (`per_image` elements, the parts' shares of one image) is
    // written whole by its parts' runs, and the chunks cover `total` (`n` images).
    unsafe { filled(total, fill) }
}

/// A convolution's tap: (kernel, γ β mean var) → a single zero, whose backward pass hands over
/// the gradients the block's backward pass left in `stash[slot]`.
struct Tap {
    slot: usize,
    stash: Stash,
}

impl CustomOp2 for Tap {
    fn name(&self) -> &'static str {
        "inception-block-tap"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let zero = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(vec![0.0]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![0.0]),
            other => bail!("inception block: unsupported dtype {:?}", other.dtype()),
        };
        Ok((zero, Shape::from(1)))
    }

    fn bwd(
        &self,
        _kernel: &Tensor,
        _params: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match lock(&self.stash)?.get_mut(self.slot).and_then(Option::take) {
            Some(grads) => Ok(grads),
            None => bail!("inception block: a layer's gradients were asked for before the block's"),
        }
    }
}
