//! Operations candle 0.11 lacks, each with a backward pass.
//!
//! - [`Pool2d`]: 2-d max and average pooling with any kernel, stride and (average only) zero padding
//!   that counts toward the divisor (`count_include_pad=True`, PyTorch's default), floor mode.
//!   candle's own pools take no padding and refuse a backward pass when kernel ≠ stride, which is
//!   every pool in Inception-v3 (3×3/s1/p1 average, 3×3/s2 max, the aux head's 5×5/s3 average).
//!   On the CPU it is a [`CustomOp1`], parallel over planes, whose backward is a [`CustomOp2`] of
//!   (input, output gradient): per output row, the window's input rows are folded element-wise into
//!   one row and the kernel's column offsets folded along it (the average's backward spreads the
//!   other way), so the inner loops are runs of contiguous values that vectorise; a stride-1
//!   average pool with a same-size output (Inception's in-block pool; its backward is the same
//!   pool) sums many zero-bordered planes at once as shifted copies of a whole buffer. A max pool
//!   on the CPU keeps, per output, where in its window the maximum came from (one byte,
//!   [`MaxPoolKeep`]), and its backward pass adds each output's gradient there. On other
//!   devices it is [`Pool2d::forward_composed`], a composition of differentiable candle ops (pad,
//!   narrow, reshape, add/maximum) that gives the same values and gradients (up to ties between
//!   equal maxima).
//! - [`batch_norm_train`]: training-mode batch normalisation over N×C×H×W on the CPU as one
//!   [`CustomOp3`] (input, γ, β) with a fused backward, statistics accumulated in f64 (candle's
//!   own composes nine ops with transposed copies and f32 sums).
//! - [`conv_batch_norm_relu_train`]: convolution, training-mode batch norm, ReLU and an optional
//!   pool after them as one [`CustomOp3`] (input, kernel, γ β and the statistics), so each
//!   backward (pool, batch norm, convolution) hands its gradient to the next without candle's
//!   zero-and-add.
//! - [`Sgd`]: plain SGD (`w ← w − lr·g`) updating each weight in place on the CPU, one pass over it
//!   and its gradient (`candle_nn::SGD` makes three new tensors per weight and copies the last one
//!   back: seven passes).
//! - [`pad2d`]: per-axis zero padding (`pad_with_zeros` per dimension; differentiable, as candle
//!   implements it with `cat`).
//!
//! Convolutions are in [`crate::conv`].

use candle_core::backend::BackendStorage as _;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::conv::{conv2d_detached, conv2d_grads, filled, ours, zeros};

/// Zero-pads the last two dimensions of an N×C×H×W tensor: `pad_h` rows above and below, `pad_w`
/// columns left and right.
pub fn pad2d(xs: &Tensor, pad_h: usize, pad_w: usize) -> Result<Tensor> {
    xs.pad_with_zeros(2, pad_h, pad_h)?
        .pad_with_zeros(3, pad_w, pad_w)
}

/// Which reduction a [`Pool2d`] applies over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum; the gradient goes to the first maximum in row-major window order (as PyTorch's CPU
    /// kernel). No padding.
    Max,
    /// Mean over the window, zero padding counted in the divisor (`count_include_pad=True`).
    Avg,
}

/// A square 2-d pooling over N×C×H×W tensors, floor mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: usize,
    pub stride: usize,
    /// Zero padding on every side (average pooling only; at most `kernel / 2`).
    pub padding: usize,
}

impl Pool2d {
    /// Inception's in-block average pool: 3×3, stride 1, padding 1, counting the padding.
    pub const AVG_3X3_S1: Self = Self {
        kind: PoolKind::Avg,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    /// Inception's reduction max pool: 3×3, stride 2, no padding.
    pub const MAX_3X3_S2: Self = Self {
        kind: PoolKind::Max,
        kernel: 3,
        stride: 2,
        padding: 0,
    };
    /// The aux head's average pool: 5×5, stride 3, no padding.
    pub const AVG_5X5_S3: Self = Self {
        kind: PoolKind::Avg,
        kernel: 5,
        stride: 3,
        padding: 0,
    };

    /// Output length for an input length `len`, or `None` when the window does not fit.
    pub fn out_len(&self, len: usize) -> Option<usize> {
        (len + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|v| v / self.stride + 1)
    }

    fn check(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize, usize)> {
        if self.kernel == 0 || self.stride == 0 {
            bail!("pool2d: kernel and stride must be positive ({self:?})")
        }
        if self.padding > self.kernel / 2 {
            bail!("pool2d: padding {} exceeds half the kernel", self.padding)
        }
        if self.kind == PoolKind::Max && self.padding != 0 {
            bail!("pool2d: max pooling takes no padding")
        }
        let &[n, c, h, w] = dims else {
            bail!("pool2d: expected an N×C×H×W tensor, got shape {dims:?}")
        };
        if h == 0 || w == 0 {
            bail!("pool2d: the input's planes are empty ({h}×{w})")
        }
        let (Some(oh), Some(ow)) = (self.out_len(h), self.out_len(w)) else {
            bail!(
                "pool2d: a {}×{} window does not fit a {h}×{w} input (padding {})",
                self.kernel,
                self.kernel,
                self.padding
            )
        };
        Ok((n, c, h, w, oh, ow))
    }

    /// Pools `xs`: the CPU kernel on the CPU (a max pool whose input is part of a graph keeps its
    /// argmax for the backward pass: [`MaxPoolKeep`]), [`Self::forward_composed`] elsewhere.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.check(xs.dims())?;
        match xs.device() {
            Device::Cpu if matches!(xs.dtype(), DType::F32 | DType::F64) => {
                if self.keeps_argmax() && xs.track_op() {
                    return xs.contiguous()?.apply_op1(MaxPoolKeep::new(*self));
                }
                xs.contiguous()?.apply_op1(*self)
            }
            _ => self.forward_composed(xs),
        }
    }

    /// The same pooling as a composition of differentiable candle ops, for any device and dtype:
    /// one strided window view per kernel offset, summed (and divided by kernel²) or folded with
    /// `maximum`. Slower than the CPU kernel; on ties between equal maxima every tied input gets the
    /// gradient.
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, _, _, oh, ow) = self.check(xs.dims())?;
        let padded = pad2d(xs, self.padding, self.padding)?;
        let mut acc: Option<Tensor> = None;
        for dy in 0..self.kernel {
            let rows = strided(&padded, 2, dy, self.stride, oh)?;
            for dx in 0..self.kernel {
                let window = strided(&rows, 3, dx, self.stride, ow)?;
                acc = Some(match (acc, self.kind) {
                    (None, _) => window,
                    (Some(a), PoolKind::Avg) => (a + window)?,
                    (Some(a), PoolKind::Max) => a.maximum(&window)?,
                });
            }
        }
        let acc = acc.expect("kernel is positive");
        match self.kind {
            PoolKind::Avg => acc.affine(1.0 / (self.kernel * self.kernel) as f64, 0.0),
            PoolKind::Max => Ok(acc),
        }
    }
}

/// Elements `start, start + stride, …` (`n` of them) along `dim`, by narrow, zero-pad to a multiple
/// of the stride, reshape and narrow: all differentiable.
fn strided(xs: &Tensor, dim: usize, start: usize, stride: usize, n: usize) -> Result<Tensor> {
    let span = (n - 1) * stride + 1;
    let xs = xs.narrow(dim, start, span)?;
    if stride == 1 {
        return Ok(xs);
    }
    let xs = xs.pad_with_zeros(dim, 0, n * stride - span)?;
    let mut dims = xs.dims().to_vec();
    dims[dim] = n;
    dims.insert(dim + 1, stride);
    xs.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + Default
    + 'static
{
    const ZERO: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("pool2d: {what} must be contiguous"),
    }
}

/// Window bounds of output position `o` along one axis: input indices `[lo, hi)`.
fn window(o: usize, stride: usize, padding: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = (o * stride) as isize - padding as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + kernel as isize) as usize).min(len);
    (lo, hi)
}

/// For kernel offset `d` along an axis of `len` inputs and `out_len` outputs: the outputs `o`
/// whose input `o·stride + d − padding` lies inside the axis, and the input of the first of them.
fn taps(
    d: usize,
    (stride, padding): (usize, usize),
    len: usize,
    out_len: usize,
) -> (Range<usize>, usize) {
    let lo = padding.saturating_sub(d).div_ceil(stride).min(out_len);
    // The last output reaching inside: o·stride + d − padding ≤ len − 1.
    let hi = match (len + padding).checked_sub(d + 1) {
        Some(last) => (last / stride + 1).min(out_len),
        None => 0,
    };
    (lo..hi.max(lo), (lo * stride + d).saturating_sub(padding))
}

/// `f(out[o], line[first + (o − lo)·stride])` for the outputs `o` in `outs`.
fn along<T: Copy>(
    out: &mut [T],
    (outs, first): (Range<usize>, usize),
    line: &[T],
    stride: usize,
    f: impl Fn(&mut T, T),
) {
    if !outs.is_empty() {
        zip_stepped((&mut out[outs], 1), (&line[first..], stride), f);
    }
}

/// [`along`] the other way: `f(line[first + (o − lo)·stride], out[o])`.
fn scatter_along<T: Copy>(
    line: &mut [T],
    (outs, first): (Range<usize>, usize),
    out: &[T],
    stride: usize,
    f: impl Fn(&mut T, T),
) {
    if !outs.is_empty() {
        zip_stepped((&mut line[first..], stride), (&out[outs], 1), f);
    }
}

/// `f(dst[i·dst_step], src[i·src_step])` for every `i` both reach: a plain zip of two slices when
/// both steps are 1, so that it vectorises.
fn zip_stepped<T: Copy>(
    (dst, dst_step): (&mut [T], usize),
    (src, src_step): (&[T], usize),
    f: impl Fn(&mut T, T),
) {
    if dst_step == 1 && src_step == 1 {
        for (d, &v) in dst.iter_mut().zip(src) {
            f(d, v);
        }
    } else {
        let src = src.iter().step_by(src_step);
        for (d, &v) in dst.iter_mut().step_by(dst_step).zip(src) {
            f(d, v);
        }
    }
}

fn add<T: Float>(a: &mut T, b: T) {
    *a += b;
}

fn max<T: Float>(a: &mut T, b: T) {
    *a = if b > *a { b } else { *a };
}

/// Plane elements per task of a "same"-size average pool: small planes (Inception's 8×8 and, at
/// 139×139, 7×7 and 3×3) are pooled many at a time, so the work per plane is a share of a few
/// vector passes rather than a loop setup per row.
const SAME_CHUNK: usize = 1 << 14;

/// `dst[i] += src[i]` over two equally long runs.
fn add_run<T: Float>(dst: &mut [T], src: &[T]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += v;
    }
}

/// `dst[i] = Σ src[i + d·step]`, `d` in `−p..=p`, for `i` in `at`.
fn shifted_sums<T: Float>(src: &[T], dst: &mut [T], at: Range<usize>, (step, p): (usize, usize)) {
    dst[at.clone()].copy_from_slice(&src[at.clone()]);
    for d in 1..=p {
        let shift = d * step;
        add_run(&mut dst[at.clone()], &src[at.start - shift..at.end - shift]);
        add_run(&mut dst[at.clone()], &src[at.start + shift..at.end + shift]);
    }
}

impl Pool2d {
    /// A stride-1 average pool whose output is the input's size (odd kernel, padding `kernel/2`):
    /// Inception's in-block 3×3 pool. Its backward pass is the same pool of the output gradient
    /// (the window is symmetric and the divisor always `kernel²`).
    fn same_size_avg(&self) -> bool {
        self.kind == PoolKind::Avg
            && self.stride == 1
            && self.kernel % 2 == 1
            && self.padding == self.kernel / 2
    }

    /// Whether a forward pass can keep where each output's maximum came from, one byte per
    /// output ([`MaxPoolKeep`]): max pooling with windows of at most 256 elements.
    pub(crate) fn keeps_argmax(&self) -> bool {
        self.kind == PoolKind::Max && self.kernel * self.kernel <= 256
    }

    /// The max pool of `x` and, per output, the row-major index into its window of the first
    /// largest input (the input that [`PoolKind::Max`]'s gradient goes to).
    fn cpu_forward_argmax<T: Float>(
        &self,
        x: &[T],
        dims: &[usize],
    ) -> Result<(Vec<T>, Vec<u8>, Shape)> {
        let (n, c, h, w, oh, ow) = self.check(dims)?;
        assert!(self.keeps_argmax());
        let mut out = zeros(n * c * oh * ow);
        let mut at = zeros(n * c * oh * ow);
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .zip(at.par_chunks_mut(oh * ow))
                .zip(x.par_chunks(h * w))
                .for_each_init(
                    || (Vec::new(), Vec::new(), Vec::new()),
                    |(best, rows, cols), ((out, at), x)| {
                        self.argmax_plane(x, (out, at), (h, w, ow), (best, rows, cols))
                    },
                );
        }
        Ok((out, at, Shape::from((n, c, oh, ow))))
    }

    /// One plane of [`Self::cpu_forward_argmax`], an output row at a time: the window's rows
    /// folded into one (per column, the largest value and the first row holding it: element-wise,
    /// so it vectorises), then along it each output's window columns, a tie going to the earlier
    /// row and then the earlier column (row-major order).
    fn argmax_plane<T: Float>(
        &self,
        x: &[T],
        (out, at): (&mut [T], &mut [u8]),
        (h, w, ow): (usize, usize, usize),
        (best, rows, cols): (&mut Vec<T>, &mut Vec<u32>, &mut Vec<u32>),
    ) {
        let (k, s) = (self.kernel, self.stride);
        cols.resize(2 * ow, 0);
        for (oy, (orow, arow)) in out.chunks_mut(ow).zip(at.chunks_mut(ow)).enumerate() {
            let y0 = oy * s;
            // No padding: every window lies inside the plane (`check`).
            assert!(y0 + k <= h);
            best.clear();
            best.extend_from_slice(&x[y0 * w..][..w]);
            rows.clear();
            rows.resize(w, 0);
            for i in 1..k {
                let line = &x[(y0 + i) * w..][..w];
                for ((b, r), &v) in best.iter_mut().zip(rows.iter_mut()).zip(line) {
                    let larger = v > *b;
                    *b = if larger { v } else { *b };
                    *r = if larger { i as u32 } else { *r };
                }
            }
            match (k, s) {
                (3, 2) => window_columns::<T, 3, 2>((best, rows), (orow, arow), cols),
                _ => window_columns_any((k, s), (best, rows), (orow, arow), cols),
            }
        }
    }

    /// The input gradient of a max pool from where each output's maximum came from (`at`, as
    /// [`Self::cpu_forward_argmax`] gives it) and the output gradient `g`: each plane zeroed and
    /// each output's gradient added to its input, planes in tasks of [`PLANES_CHUNK`] elements.
    fn argmax_backward<T: Float>(&self, at: &[u8], g: &[T], dims: &[usize]) -> Result<Vec<T>> {
        let (n, c, h, w, oh, ow) = self.check(dims)?;
        if g.len() != n * c * oh * ow || at.len() != g.len() {
            bail!(
                "max pool backward: {} gradients and {} window indices for {} outputs",
                g.len(),
                at.len(),
                n * c * oh * ow
            )
        }
        let (k, s) = (self.kernel, self.stride);
        // Window index → offset from the window's top-left input.
        let offsets: Vec<usize> = (0..k * k).map(|e| e / k * w + e % k).collect();
        let planes = (PLANES_CHUNK / (h * w)).max(1);
        let fill = |gx: &mut [MaybeUninit<T>]| {
            if oh * ow == 0 {
                gx.fill(MaybeUninit::new(T::ZERO));
                return;
            }
            gx.par_chunks_mut(planes * h * w)
                .zip(
                    at.par_chunks(planes * oh * ow)
                        .zip(g.par_chunks(planes * oh * ow)),
                )
                .for_each(|(gx, (at, g))| {
                    gx.fill(MaybeUninit::new(T::ZERO));
                    // SAFETY: every element was just written.
                    let gx = unsafe { gx.assume_init_mut() };
                    let outputs = at.chunks(oh * ow).zip(g.chunks(oh * ow));
                    for (gx, (at, g)) in gx.chunks_mut(h * w).zip(outputs) {
                        for (oy, (at, g)) in at.chunks(ow).zip(g.chunks(ow)).enumerate() {
                            let row = oy * s * w;
                            for (ox, (&a, &g)) in at.iter().zip(g).enumerate() {
                                gx[row + ox * s + offsets[usize::from(a)]] += g;
                            }
                        }
                    }
                });
        };
        // SAFETY: the tasks' chunks cover `gx`, and each zero-fills its chunk (or the whole of it
        // when there are no outputs).
        Ok(unsafe { filled(n * c * h * w, fill) })
    }

    /// [`Self::same_size_avg`] pools of `h × w` planes, many planes per task. The planes are
    /// copied into a zero-bordered layout: rows `w + p` apart (`p` zeros after each), planes
    /// `h + p` rows apart (`p` zero rows after each), `p` zero rows and `p` zeros before the first.
    /// There every window lies whole inside the buffer and its outside is zeros, so the window's
    /// rows and then its columns are summed as shifted copies of the whole buffer, with no edge
    /// cases; the planes are then copied out, scaled by `1/kernel²`, writing every element of `out`
    /// (as long as `x`).
    fn same_size_avg_planes<T: Float>(
        &self,
        x: &[T],
        out: &mut [MaybeUninit<T>],
        (h, w): (usize, usize),
    ) {
        let p = self.padding;
        let (row, plane) = (w + p, (h + p) * (w + p));
        let lead = p * row + p;
        let per_task = (SAME_CHUNK / (h * w)).max(1) * h * w;
        let scale = T::from_f64(1.0 / (self.kernel * self.kernel) as f64);
        out.par_chunks_mut(per_task)
            .zip(x.par_chunks(per_task))
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(padded, sums), (out, x)| {
                    let planes = x.len() / (h * w);
                    let len = lead + planes * plane + lead;
                    padded.clear();
                    padded.resize(len, T::ZERO);
                    // Every position the column sums read is written first.
                    sums.resize(len, T::ZERO);
                    let at = |b: usize, y: usize| lead + b * plane + y * row;
                    for (i, line) in x.chunks(w).enumerate() {
                        let start = at(i / h, i % h);
                        padded[start..start + w].copy_from_slice(line);
                    }
                    // Rows (±p·row) over every position the column sums read, then columns (±p)
                    // over the planes' span, back into `padded`.
                    shifted_sums(padded, sums, p * row..len - p * row, (row, p));
                    shifted_sums(sums, padded, lead..len - lead, (1, p));
                    for (i, line) in out.chunks_mut(w).enumerate() {
                        let start = at(i / h, i % h);
                        for (o, &v) in line.iter_mut().zip(&padded[start..start + w]) {
                            o.write(v * scale);
                        }
                    }
                },
            );
    }

    /// One plane, an output row at a time: the window's input rows folded into one row (summed or
    /// maxed, element-wise, so it vectorises), then each kernel column's offset folded along it.
    fn fwd_plane<T: Float>(
        &self,
        x: &[T],
        out: &mut [T],
        (h, w, ow): (usize, usize, usize),
        rows: &mut Vec<T>,
    ) {
        match self.kind {
            PoolKind::Avg => {
                let scale = T::from_f64(1.0 / (self.kernel * self.kernel) as f64);
                self.fold_rows(x, out, (h, w, ow), rows, add, |orow, rows| {
                    orow.fill(T::ZERO);
                    for d in 0..self.kernel {
                        along(
                            orow,
                            taps(d, (self.stride, self.padding), w, ow),
                            rows,
                            self.stride,
                            add,
                        );
                    }
                    for o in orow {
                        *o = *o * scale;
                    }
                })
            }
            // No padding: offset 0 reaches every output and starts its maximum.
            PoolKind::Max => self.fold_rows(x, out, (h, w, ow), rows, max, |orow, rows| {
                for d in 0..self.kernel {
                    let taps = taps(d, (self.stride, 0), w, ow);
                    match d {
                        0 => along(orow, taps, rows, self.stride, |o, v| *o = v),
                        _ => along(orow, taps, rows, self.stride, max),
                    }
                }
            }),
        }
    }

    /// For each output row: `fold` over the window's input rows into `rows`, then `finish(output
    /// row, rows)`.
    fn fold_rows<T: Float>(
        &self,
        x: &[T],
        out: &mut [T],
        (h, w, ow): (usize, usize, usize),
        rows: &mut Vec<T>,
        fold: impl Fn(&mut T, T),
        finish: impl Fn(&mut [T], &[T]),
    ) {
        for (oy, orow) in out.chunks_mut(ow).enumerate() {
            let (y0, y1) = window(oy, self.stride, self.padding, self.kernel, h);
            rows.clear();
            rows.extend_from_slice(&x[y0 * w..][..w]);
            for y in y0 + 1..y1 {
                for (r, &v) in rows.iter_mut().zip(&x[y * w..][..w]) {
                    fold(r, v);
                }
            }
            finish(orow, rows);
        }
    }

    /// One plane's input gradient, an output row at a time. Average: the row's gradients spread
    /// along a row (each kernel column's offset), scaled, and added to each input row of the
    /// window. Max: the window's first largest input in row-major order (PyTorch's choice on
    /// ties) receives the gradient.
    fn bwd_plane<T: Float>(
        &self,
        x: &[T],
        g: &[T],
        gx: &mut [T],
        (h, w, ow): (usize, usize, usize),
        rows: &mut Vec<T>,
    ) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        for (oy, grow) in g.chunks(ow).enumerate() {
            let (y0, y1) = window(oy, s, p, k, h);
            match self.kind {
                PoolKind::Avg => {
                    let scale = T::from_f64(1.0 / (k * k) as f64);
                    rows.clear();
                    rows.resize(w, T::ZERO);
                    for d in 0..k {
                        scatter_along(rows, taps(d, (s, p), w, ow), grow, s, add);
                    }
                    for r in rows.iter_mut() {
                        *r = *r * scale;
                    }
                    for y in y0..y1 {
                        for (gx, &r) in gx[y * w..][..w].iter_mut().zip(rows.iter()) {
                            *gx += r;
                        }
                    }
                }
                PoolKind::Max => {
                    for (ox, &go) in grow.iter().enumerate() {
                        let (x0, x1) = window(ox, s, 0, k, w);
                        let mut best = x[y0 * w + x0];
                        let mut at = y0 * w + x0;
                        for y in y0..y1 {
                            let row = y * w + x0;
                            for (i, &v) in x[row..y * w + x1].iter().enumerate() {
                                if v > best {
                                    best = v;
                                    at = row + i;
                                }
                            }
                        }
                        gx[at] += go;
                    }
                }
            }
        }
    }

    fn cpu_forward<T: Float>(&self, x: &[T], dims: &[usize]) -> Result<(Vec<T>, Shape)> {
        let (n, c, h, w, oh, ow) = self.check(dims)?;
        if self.same_size_avg() {
            // SAFETY: as long as `x` (same size), and written whole: see `same_size_avg_planes`.
            let out = unsafe { filled(x.len(), |out| self.same_size_avg_planes(x, out, (h, w))) };
            return Ok((out, Shape::from((n, c, oh, ow))));
        }
        let mut out = zeros(n * c * oh * ow);
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each_init(Vec::new, |rows, (o, x)| {
                    self.fwd_plane(x, o, (h, w, ow), rows)
                });
        }
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    fn cpu_backward<T: Float>(&self, x: &[T], dims: &[usize], g: &[T]) -> Result<Vec<T>> {
        let (n, c, h, w, oh, ow) = self.check(dims)?;
        if g.len() != n * c * oh * ow {
            bail!(
                "pool2d backward: gradient has {} elements, expected {}",
                g.len(),
                n * c * oh * ow
            )
        }
        if self.same_size_avg() {
            // SAFETY: as long as `g` (same size, checked above), and written whole: see
            // `same_size_avg_planes`.
            return Ok(unsafe { filled(g.len(), |gx| self.same_size_avg_planes(g, gx, (h, w))) });
        }
        let mut gx = zeros(n * c * h * w);
        if oh * ow > 0 {
            gx.par_chunks_mut(h * w)
                .zip(x.par_chunks(h * w).zip(g.par_chunks(oh * ow)))
                .for_each_init(Vec::new, |rows, (gx, (x, g))| {
                    self.bwd_plane(x, g, gx, (h, w, ow), rows)
                });
        }
        Ok(gx)
    }
}

/// Along a folded row (`best`, with the row each value came from in `rows`), a kernel column at
/// a time: each output's largest so far and its row, taking a candidate that is larger, or equal
/// from an earlier row (an equal one from the same row is a later column); then the outputs'
/// window indices (`row · K + column`). `K` and `S` known, so that the loops vectorise.
fn window_columns<T: Float, const K: usize, const S: usize>(
    (best, rows): (&[T], &[u32]),
    (out, at): (&mut [T], &mut [u8]),
    cols: &mut [u32],
) {
    window_columns_any((K, S), (best, rows), (out, at), cols)
}

/// [`window_columns`] for any kernel and stride.
#[inline(always)]
fn window_columns_any<T: Float>(
    (k, s): (usize, usize),
    (best, rows): (&[T], &[u32]),
    (out, at): (&mut [T], &mut [u8]),
    cols: &mut [u32],
) {
    let ow = out.len();
    let (cur_row, cur_col) = cols[..2 * ow].split_at_mut(ow);
    let last = (ow - 1) * s + k;
    let (best, rows) = (&best[..last], &rows[..last]);
    for ox in 0..ow {
        out[ox] = best[ox * s];
        cur_row[ox] = rows[ox * s];
        cur_col[ox] = 0;
    }
    for j in 1..k {
        for ox in 0..ow {
            let (v, r) = (best[ox * s + j], rows[ox * s + j]);
            let take = v > out[ox] || (v == out[ox] && r < cur_row[ox]);
            out[ox] = if take { v } else { out[ox] };
            cur_row[ox] = if take { r } else { cur_row[ox] };
            cur_col[ox] = if take { j as u32 } else { cur_col[ox] };
        }
    }
    for ((a, &r), &c) in at.iter_mut().zip(&*cur_row).zip(&*cur_col) {
        // Below 256: `keeps_argmax`.
        *a = (r as usize * k + c as usize) as u8;
    }
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "inception-max-pool2d",
            PoolKind::Avg => "inception-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(data) => {
                let (out, shape) =
                    self.cpu_forward(contiguous(data, layout, "input")?, layout.dims())?;
                Ok((CpuStorage::F32(out), shape))
            }
            CpuStorage::F64(data) => {
                let (out, shape) =
                    self.cpu_forward(contiguous(data, layout, "input")?, layout.dims())?;
                Ok((CpuStorage::F64(out), shape))
            }
            other => bail!("pool2d: unsupported dtype {:?}", other.dtype()),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &Pool2dBackward(*self))?;
        Ok(Some(grad))
    }
}

/// The gradient of a [`Pool2d`] with respect to its input, from the input and the output gradient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool2dBackward(pub(crate) Pool2d);

impl CustomOp2 for Pool2dBackward {
    fn name(&self) -> &'static str {
        "inception-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let gx = self.0.cpu_backward(
                    contiguous(x, l1, "input")?,
                    l1.dims(),
                    contiguous(g, l2, "gradient")?,
                )?;
                Ok((CpuStorage::F32(gx), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let gx = self.0.cpu_backward(
                    contiguous(x, l1, "input")?,
                    l1.dims(),
                    contiguous(g, l2, "gradient")?,
                )?;
                Ok((CpuStorage::F64(gx), shape))
            }
            _ => bail!(
                "pool2d backward: unsupported dtypes {:?}, {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        }
    }
}

/// A max pool that keeps, for its backward pass, where each output's maximum came from (one byte
/// per output, [`Pool2d::cpu_forward_argmax`]): the backward pass then adds each output's gradient
/// to its input without searching the windows again (which had taken three times the forward
/// pass: a data-dependent branch per window element).
#[derive(Debug)]
pub(crate) struct MaxPoolKeep {
    pool: Pool2d,
    argmax: OnceLock<Argmax>,
}

/// Where a max pool's outputs came from, and the shape of its input.
#[derive(Debug, Clone)]
pub(crate) struct Argmax {
    at: Arc<Vec<u8>>,
    dims: [usize; 4],
}

impl MaxPoolKeep {
    pub(crate) fn new(pool: Pool2d) -> Self {
        assert!(pool.keeps_argmax(), "{pool:?} keeps no argmax");
        Self {
            pool,
            argmax: OnceLock::new(),
        }
    }

    /// What the forward pass kept (`None` before it ran).
    pub(crate) fn argmax(&self) -> Option<Argmax> {
        self.argmax.get().cloned()
    }

    /// The input gradient for the output gradient `grad` of a forward pass that kept `argmax`.
    pub(crate) fn grad(pool: Pool2d, argmax: Argmax, grad: &Tensor) -> Result<Tensor> {
        grad.contiguous()?
            .apply_op1_no_bwd(&MaxPoolBackward { pool, argmax })
    }
}

impl CustomOp1 for MaxPoolKeep {
    fn name(&self) -> &'static str {
        "inception-max-pool2d-keep"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, at, shape) = match storage {
            CpuStorage::F32(data) => {
                let (out, at, shape) = self
                    .pool
                    .cpu_forward_argmax(contiguous(data, layout, "input")?, layout.dims())?;
                (CpuStorage::F32(out), at, shape)
            }
            CpuStorage::F64(data) => {
                let (out, at, shape) = self
                    .pool
                    .cpu_forward_argmax(contiguous(data, layout, "input")?, layout.dims())?;
                (CpuStorage::F64(out), at, shape)
            }
            other => bail!("pool2d: unsupported dtype {:?}", other.dtype()),
        };
        // Four dimensions: `cpu_forward_argmax` checked them.
        let Ok(dims) = <[usize; 4]>::try_from(layout.dims()) else {
            bail!(
                "pool2d: expected an N×C×H×W tensor, got shape {:?}",
                layout.dims()
            )
        };
        let argmax = Argmax {
            at: Arc::new(at),
            dims,
        };
        if self.argmax.set(argmax).is_err() {
            bail!("max pool: one op ran its forward pass twice")
        }
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(argmax) = self.argmax() else {
            bail!("max pool: a backward pass before the forward pass")
        };
        Ok(Some(Self::grad(self.pool, argmax, grad_res)?))
    }
}

/// The input gradient of a [`MaxPoolKeep`] from its output gradient (the op's one input).
struct MaxPoolBackward {
    pool: Pool2d,
    argmax: Argmax,
}

impl CustomOp1 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "inception-max-pool2d-keep-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (at, dims) = (&self.argmax.at[..], &self.argmax.dims[..]);
        let gx = match storage {
            CpuStorage::F32(g) => CpuStorage::F32(self.pool.argmax_backward(
                at,
                contiguous(g, layout, "gradient")?,
                dims,
            )?),
            CpuStorage::F64(g) => CpuStorage::F64(self.pool.argmax_backward(
                at,
                contiguous(g, layout, "gradient")?,
                dims,
            )?),
            other => bail!("max pool backward: unsupported dtype {:?}", other.dtype()),
        };
        Ok((gx, Shape::from(dims)))
    }
}

/// Training-mode batch norm of an N×C×H×W tensor with batch statistics, followed by a ReLU when
/// `relu`: returns the output and the batch mean and biased variance per channel (C each, for the
/// running statistics, detached). The statistics are computed once (in f64) and serve the
/// forward and backward passes; the ReLU is applied in the same pass as the normalisation and its
/// gradient mask recomputed in the backward pass, so neither keeps a tensor of its own. `None`
/// where the fused CPU kernel does not apply (another device or dtype): use candle's batch norm
/// there.
pub fn batch_norm_train(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if !matches!(xs.device(), Device::Cpu)
        || !matches!(xs.dtype(), DType::F32 | DType::F64)
        || xs.rank() != 4
        || gamma.dtype() != xs.dtype()
    {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    let stats = xs.apply_op1_no_bwd(&BatchNormStats)?;
    let (mean, var) = (stats.get(0)?, stats.get(1)?);
    // γ, β, mean, var in one tensor: the gradient reaches γ and β through the concatenation; the
    // statistics are detached (their effect on the input gradient is in the backward formula).
    let params = Tensor::cat(&[gamma, beta, &mean, &var], 0)?;
    let ys = xs.apply_op2(&params, BatchNormTrain { eps, relu })?;
    Ok(Some((ys, mean, var)))
}

/// What [`conv_batch_norm_relu_train`] returns.
#[derive(Debug, Clone)]
pub struct ConvBatchNormRelu {
    /// The node's output: the activation, or its pooling when a pool was asked for.
    pub out: Tensor,
    /// The activation `relu(batch_norm(conv2d(xs, kernel)))` before the pool (`out` itself
    /// without one; detached, for looking at, with one).
    pub activation: Tensor,
    /// The batch mean and biased batch variance per output channel (detached).
    pub mean: Tensor,
    pub var: Tensor,
    /// The values per channel the statistics are over (N·H·W of the convolution's output).
    pub count: usize,
}

/// `relu(batch_norm(conv2d(xs, kernel)))` in training mode (batch statistics; scale γ, shift β,
/// epsilon `eps`), then `pool` if given, as one graph node, on the CPU for f32 and f64; `None`
/// elsewhere (compose [`crate::conv::conv2d`], candle's batch norm and [`Pool2d::forward`]
/// there). The same values and gradients as [`crate::conv::conv2d`] followed by
/// [`batch_norm_train`] (and the pool), but the node keeps the convolution's output (and the
/// activation the pool reads) for its backward pass itself, so candle never allocates a zero tensor
/// for their gradients and adds the gradient into it: each backward hands its input gradient
/// straight to the next (3–6 % of a training step at 139×139 and 299×299 without the pools; the
/// stem's two max pools follow convolutions whose outputs are the largest tensors of the model).
pub fn conv_batch_norm_relu_train(
    xs: &Tensor,
    kernel: &Tensor,
    (gamma, beta, eps): (&Tensor, &Tensor, f64),
    padding: (usize, usize),
    stride: usize,
    pool: Option<Pool2d>,
) -> Result<Option<ConvBatchNormRelu>> {
    if !ours(xs)
        || [kernel, gamma, beta]
            .iter()
            .any(|t| t.dtype() != xs.dtype())
    {
        return Ok(None);
    }
    let (xs, kernel) = (xs.contiguous()?, kernel.contiguous()?);
    let ConvStats {
        conv,
        mean,
        var,
        params,
        count,
    } = conv_with_stats(&xs, &kernel, (gamma, beta), padding, stride)?;
    let bn = BatchNormTrain { eps, relu: true };
    let pooled = match pool {
        Some(pool) => {
            pool.check(conv.dims())?;
            Some((conv.apply_op2_no_bwd(&params.detach(), &bn)?, pool))
        }
        None => None,
    };
    let op = ConvBatchNormTrain {
        conv,
        padding,
        stride,
        bn,
        pooled: pooled.clone(),
        argmax: OnceLock::new(),
    };
    let out = xs.apply_op3(&kernel, &params, op)?;
    let activation = match pooled {
        Some((activation, _)) => activation,
        None => out.clone(),
    };
    Ok(Some(ConvBatchNormRelu {
        out,
        activation,
        mean,
        var,
        count,
    }))
}

/// A training-mode layer's convolution and its output's batch statistics.
pub(crate) struct ConvStats {
    /// The convolution's output (detached).
    pub(crate) conv: Tensor,
    /// Its mean and biased variance per channel (detached).
    pub(crate) mean: Tensor,
    pub(crate) var: Tensor,
    /// γ, β, mean and var in one tensor: the gradient reaches γ and β through the concatenation.
    pub(crate) params: Tensor,
    /// The values per channel the statistics are over (N·H·W).
    pub(crate) count: usize,
}

/// The convolution of `xs` (contiguous) with `kernel` (contiguous), without a graph, and its
/// batch statistics, with γ and β.
pub(crate) fn conv_with_stats(
    xs: &Tensor,
    kernel: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    padding: (usize, usize),
    stride: usize,
) -> Result<ConvStats> {
    let conv = conv2d_detached(xs, kernel, padding, stride)?;
    let (n, _, h, w) = conv.dims4()?;
    let stats = conv.apply_op1_no_bwd(&BatchNormStats)?;
    let (mean, var) = (stats.get(0)?, stats.get(1)?);
    let params = Tensor::cat(&[gamma, beta, &mean, &var], 0)?;
    Ok(ConvStats {
        conv,
        mean,
        var,
        params,
        count: n * h * w,
    })
}

/// The node of [`conv_batch_norm_relu_train`]: (input, kernel, γ β mean var) → output, keeping
/// the convolution's output computed before it, and with a pool, the activation it pools.
struct ConvBatchNormTrain {
    conv: Tensor,
    padding: (usize, usize),
    stride: usize,
    bn: BatchNormTrain,
    pooled: Option<(Tensor, Pool2d)>,
    /// A max pool's argmax, kept by the forward pass.
    argmax: OnceLock<Argmax>,
}

impl CustomOp3 for ConvBatchNormTrain {
    fn name(&self) -> &'static str {
        "inception-conv2d-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        params: &CpuStorage,
        params_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if let Some((activation, pool)) = &self.pooled {
            let (storage, layout) = activation.storage_and_layout();
            let candle_core::Storage::Cpu(activation) = &*storage else {
                bail!("conv2d + batch norm + pool: the activation is not on the CPU")
            };
            if pool.keeps_argmax() {
                let keep = MaxPoolKeep::new(*pool);
                let out = keep.cpu_fwd(activation, layout)?;
                if let Some(argmax) = keep.argmax() {
                    // Set once: the forward pass runs once.
                    let _ = self.argmax.set(argmax);
                }
                return Ok(out);
            }
            return pool.cpu_fwd(activation, layout);
        }
        let (storage, layout) = self.conv.storage_and_layout();
        let candle_core::Storage::Cpu(conv) = &*storage else {
            bail!("conv2d + batch norm: the convolution's output is not on the CPU")
        };
        self.bn.cpu_fwd(conv, layout, params, params_layout)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        kernel: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = match (&self.pooled, self.argmax.get()) {
            (Some((_, pool)), Some(argmax)) => MaxPoolKeep::grad(*pool, argmax.clone(), grad)?,
            (Some((activation, pool)), None) => {
                activation.apply_op2_no_bwd(&grad.contiguous()?, &Pool2dBackward(*pool))?
            }
            (None, _) => grad.clone(),
        };
        let (dconv, dparams) = self.bn.grads(&self.conv, params, &grad)?;
        let (dx, dk) = conv2d_grads(xs, kernel, &dconv, self.padding, self.stride)?;
        Ok((dx, Some(dk), Some(dparams)))
    }
}

/// Independent partial sums, so that a sum over a plane vectorises (in a fixed order: the same
/// result every run).
const LANES: usize = 16;

/// The `K` sums `Σᵢ f(a[i], b[i])[k]` over two equally long slices, in one pass: `LANES` partial
/// sums each in `T` (the tail of the slices in the first lanes), added pairwise in f64 (a chain
/// of 16 dependent additions per sum had cost more than a 7×7 plane's terms).
fn lane_sums<T: Float, const K: usize>(a: &[T], b: &[T], f: impl Fn(T, T) -> [T; K]) -> [f64; K] {
    if a.len() < LANES {
        // Fewer terms than lanes (3×3 planes): added in f64 straight away.
        let mut sums = [0.0; K];
        for (&a, &b) in a.iter().zip(b) {
            for (sum, term) in sums.iter_mut().zip(f(a, b)) {
                *sum += term.to_f64();
            }
        }
        return sums;
    }
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b[..a.len()].as_chunks::<LANES>();
    let mut acc = [[T::ZERO; LANES]; K];
    for (a, b) in a_chunks.iter().zip(b_chunks) {
        let terms: [[T; K]; LANES] = std::array::from_fn(|i| f(a[i], b[i]));
        for (k, acc) in acc.iter_mut().enumerate() {
            for (acc, terms) in acc.iter_mut().zip(&terms) {
                *acc += terms[k];
            }
        }
    }
    for (i, (&a, &b)) in a_rest.iter().zip(b_rest).enumerate() {
        for (acc, term) in acc.iter_mut().zip(f(a, b)) {
            acc[i] += term;
        }
    }
    acc.map(|lanes| {
        let mut v = lanes.map(T::to_f64);
        let mut n = LANES;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                v[i] += v[i + n];
            }
        }
        v[0]
    })
}

/// `sums(plane, a, b)` for each `hw`-long plane of two equally long N×C×H×W slices, in memory
/// order: each core reads a contiguous run of planes, which the hardware prefetches (a channel's
/// planes one after another are `C·H·W` apart, and the reads of a small plane wait on memory).
fn plane_sums<T: Float, const K: usize>(
    a: &[T],
    b: &[T],
    hw: usize,
    sums: impl Fn(usize, &[T], &[T]) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let mut out = vec![[0.0; K]; a.len().checked_div(hw).unwrap_or(0)];
    plane_runs(&mut out, 1, (a, b), hw, |plane, out, a, b| {
        out[0] = sums(plane, a, b)
    });
    out
}

/// `f(plane, out, a, b)` for each `hw`-long plane of `out` and the same planes of `a` and `b` (as
/// long as `out`).
fn per_plane<T: Sync, U: Send>(
    out: &mut [U],
    inputs: (&[T], &[T]),
    hw: usize,
    f: impl Fn(usize, &mut [U], &[T], &[T]) + Sync,
) {
    plane_runs(out, hw, inputs, hw, f);
}

/// `f(plane, out, a, b)` for each `hw`-long plane of `a` and `b` and its `per` elements of `out`,
/// in tasks of whole planes: [`PLANES_CHUNK`] input elements, or one plane.
fn plane_runs<T: Sync, U: Send>(
    out: &mut [U],
    per: usize,
    (a, b): (&[T], &[T]),
    hw: usize,
    f: impl Fn(usize, &mut [U], &[T], &[T]) + Sync,
) {
    if hw == 0 || per == 0 {
        return;
    }
    let planes = (PLANES_CHUNK / hw).max(1);
    out.par_chunks_mut(planes * per)
        .zip(a.par_chunks(planes * hw).zip(b.par_chunks(planes * hw)))
        .enumerate()
        .for_each(|(task, (out, (a, b)))| {
            let run = out.chunks_mut(per).zip(a.chunks(hw).zip(b.chunks(hw)));
            for (i, (out, (a, b))) in run.enumerate() {
                f(task * planes + i, out, a, b);
            }
        });
}

/// Input elements per task of [`plane_runs`]: whole planes, many of the small ones (a task per
/// 7×7 plane cost more than the plane's sums).
const PLANES_CHUNK: usize = 1 << 13;

/// Per channel, the sums of its planes (`planes` in N×C order, as [`plane_sums`] returns them),
/// added in image order.
fn channel_totals<const K: usize>(
    planes: &[[f64; K]],
    c: usize,
) -> impl Iterator<Item = [f64; K]> + '_ {
    (0..c).map(move |ch| {
        let mut total = [0.0; K];
        for plane in planes.iter().skip(ch).step_by(c) {
            for (t, v) in total.iter_mut().zip(plane) {
                *t += v;
            }
        }
        total
    })
}

/// Per-channel (mean, biased variance) of a contiguous N×C×H×W slice, reading it from memory
/// once: each plane's mean and sum of squared deviations from it, in one pass over the plane
/// (deviations from a pivot; partial sums in `T`, added in f64), then a channel's planes combined
/// in image order with Chan et al.'s pairwise update (no cancellation, unlike `Σx² − n·mean²`
/// over the whole channel); the channels in parallel.
fn channel_stats<T: Float>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    let size = hw as f64;
    let planes = plane_sums(x, x, hw, |_, p, _| {
        // One pass: the sums of the deviations from the plane's first value and of their
        // squares. The lanes' partial sums stay small where the values are far from zero (sums
        // of the values themselves lose the mean's low bits to rounding, and with them the
        // variance), and the pivot is one of the plane's values, within a few σ of its mean, so
        // that taking n·(mean − pivot)² off the squares cancels little.
        let pivot = p[0];
        let [deviations, squares] = lane_sums(p, p, |v, _| {
            let d = v - pivot;
            [d, d * d]
        });
        let offset = deviations / size;
        [
            pivot.to_f64() + offset,
            (squares - size * offset * offset).max(0.0),
        ]
    });
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
            for &[plane_mean, plane_m2] in planes.iter().skip(ch).step_by(c) {
                let total = count + size;
                let delta = plane_mean - mean;
                mean += delta * size / total;
                m2 += plane_m2 + delta * delta * count * size / total;
                count = total;
            }
            (mean, m2 / (n as f64 * size))
        })
        .collect()
}

fn dims_nchw(layout: &Layout) -> Result<(usize, usize, usize)> {
    let &[n, c, h, w] = layout.dims() else {
        bail!(
            "batch norm: expected an N×C×H×W tensor, got {:?}",
            layout.dims()
        )
    };
    if n * h * w < 2 {
        bail!(
            "batch norm in training mode needs more than one value per channel, got {n}×{c}×{h}×{w}"
        )
    }
    Ok((n, c, h * w))
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchNormStats;

impl CustomOp1 for BatchNormStats {
    fn name(&self) -> &'static str {
        "inception-batch-norm-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims_nchw(layout)?;
        fn pack<T: Float>(stats: &[(f64, f64)]) -> Vec<T> {
            let means = stats.iter().map(|s| T::from_f64(s.0));
            means
                .chain(stats.iter().map(|s| T::from_f64(s.1)))
                .collect()
        }
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(pack(&channel_stats(
                contiguous(x, layout, "input")?,
                n,
                c,
                hw,
            ))),
            CpuStorage::F64(x) => CpuStorage::F64(pack(&channel_stats(
                contiguous(x, layout, "input")?,
                n,
                c,
                hw,
            ))),
            other => bail!("batch norm: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((2, c))))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchNormTrain {
    pub(crate) eps: f64,
    pub(crate) relu: bool,
}

/// Per channel: (scale, shift) of `y = x·scale + shift`, and 1/σ.
fn affine<T: Float>(params: &[T], c: usize, eps: f64) -> Vec<(f64, f64, f64)> {
    (0..c)
        .map(|ch| {
            let (g, b) = (params[ch].to_f64(), params[c + ch].to_f64());
            let (mean, var) = (params[2 * c + ch].to_f64(), params[3 * c + ch].to_f64());
            let inv_std = 1.0 / (var + eps).sqrt();
            (g * inv_std, b - mean * g * inv_std, inv_std)
        })
        .collect()
}

impl BatchNormTrain {
    /// The gradients of the input and of (γ, β, mean, var) for the output gradient `grad`.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        params: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let packed =
            x.apply_op3_no_bwd(params, &grad.contiguous()?, &BatchNormTrainBackward(*self))?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        // In storage of its own (`force_contiguous`; `copy` would clone the whole vector): a view
        // would keep the packed vector, dx included, alive as long as the parameters' gradient,
        // which a training node keeps until candle hands it to the layer's tap, after the
        // backward pass through all its blocks.
        let dparams = packed
            .narrow(0, numel, params.elem_count())?
            .force_contiguous()?;
        Ok((dx, dparams))
    }

    fn forward<T: Float>(&self, x: &[T], params: &[T], dims: (usize, usize, usize)) -> Vec<T> {
        let (_, c, hw) = dims;
        let affine = affine(params, c, self.eps);
        let affine: Vec<(T, T)> = affine
            .iter()
            .map(|&(scale, shift, _)| (T::from_f64(scale), T::from_f64(shift)))
            .collect();
        let fill = |y: &mut [MaybeUninit<T>]| {
            per_plane(y, (x, x), hw, |plane, y, x, _| {
                let (scale, shift) = affine[plane % c];
                for (y, &x) in y.iter_mut().zip(x) {
                    let v = x * scale + shift;
                    y.write(if self.relu && v <= T::ZERO {
                        T::ZERO
                    } else {
                        v
                    });
                }
            })
        };
        // SAFETY: the planes of `y` pair with those of `x`, as long, and every element is written.
        unsafe { filled(x.len(), fill) }
    }

    /// dx, then d(γ, β, mean, var) (zero for the detached statistics), packed in one vector.
    fn backward<T: Float>(
        &self,
        x: &[T],
        params: &[T],
        dy: &[T],
        dims: (usize, usize, usize),
    ) -> Vec<T> {
        let (n, c, hw) = dims;
        assert_eq!(
            dy.len(),
            x.len(),
            "batch norm backward: gradient and input differ in length"
        );
        let count = (n * hw) as f64;
        let affine = affine(params, c, self.eps);
        // Per channel, in `T`: the mean, and the gradient that reaches the normalisation (dy where
        // the ReLU passed it).
        let consts: Vec<(T, T, T)> = (0..c)
            .map(|ch| {
                let (scale, shift, _) = affine[ch];
                (params[2 * c + ch], T::from_f64(scale), T::from_f64(shift))
            })
            .collect();
        let relu = self.relu;
        let passed = |(scale, shift): (T, T), x: T, dy: T| {
            if relu && x * scale + shift <= T::ZERO {
                T::ZERO
            } else {
                dy
            }
        };
        // Per channel: Σ dz and Σ dz·x̂ = Σ dz·(x − mean) / σ, from each plane's sums.
        let planes = plane_sums(x, dy, hw, |plane, x, dy| {
            let (m, scale, shift) = consts[plane % c];
            lane_sums(x, dy, |x, dy| {
                let dz = passed((scale, shift), x, dy);
                [dz, dz * (x - m)]
            })
        });
        let sums: Vec<(f64, f64)> = channel_totals(&planes, c)
            .zip(&affine)
            .map(|([sum_dz, sum_dz_xc], &(_, _, inv_std))| (sum_dz, sum_dz_xc * inv_std))
            .collect();
        // dx = k·(dz − mean(dz) − x̂·mean(dz·x̂)) = a·dz − b − (x − m)·d per channel, with
        // a = k = γ/σ, b = k·mean(dz), d = k·σ⁻¹·mean(dz·x̂): worked out once per channel rather
        // than for each of its planes.
        let coefficients: Vec<(T, T, T)> = (0..c)
            .map(|ch| {
                let inv_std = affine[ch].2;
                let (sum_dz, sum_dz_xhat) = sums[ch];
                let k = params[ch].to_f64() * inv_std;
                (
                    T::from_f64(k),
                    T::from_f64(k * sum_dz / count),
                    T::from_f64(k * inv_std * sum_dz_xhat / count),
                )
            })
            .collect();
        let fill = |out: &mut [MaybeUninit<T>]| {
            let (dx, dparams) = out.split_at_mut(x.len());
            per_plane(dx, (x, dy), hw, |plane, dx, x, dy| {
                let ch = plane % c;
                let (a, b, d) = coefficients[ch];
                let (m, scale, shift) = consts[ch];
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    dx.write(a * passed((scale, shift), x, dy) - b - (x - m) * d);
                }
            });
            let (dgamma, rest) = dparams.split_at_mut(c);
            let (dbeta, dstats) = rest.split_at_mut(c);
            for (ch, (dgamma, dbeta)) in dgamma.iter_mut().zip(dbeta).enumerate() {
                let (sum_dz, sum_dz_xhat) = sums[ch];
                dgamma.write(T::from_f64(sum_dz_xhat));
                dbeta.write(T::from_f64(sum_dz));
            }
            dstats.fill(MaybeUninit::new(T::ZERO));
        };
        // SAFETY: `dx` is written plane by plane (as long as `x` and `dy`, asserted, whose planes
        // it pairs with), then dγ and dβ channel by channel, and the statistics' gradients are
        // zero-filled.
        unsafe { filled(x.len() + 4 * c, fill) }
    }
}

impl CustomOp2 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "inception-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_nchw(l1)?;
        if l2.dims() != [4 * dims.1] {
            bail!(
                "batch norm: expected γ, β, mean and var of {} elements",
                dims.1
            )
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => CpuStorage::F32(self.forward(
                contiguous(x, l1, "input")?,
                contiguous(p, l2, "parameters")?,
                dims,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(p)) => CpuStorage::F64(self.forward(
                contiguous(x, l1, "input")?,
                contiguous(p, l2, "parameters")?,
                dims,
            )),
            _ => bail!("batch norm: mismatched or unsupported dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dparams) = self.grads(x, params, grad)?;
        Ok((Some(dx), Some(dparams)))
    }
}

#[derive(Debug, Clone, Copy)]
struct BatchNormTrainBackward(BatchNormTrain);

impl CustomOp3 for BatchNormTrainBackward {
    fn name(&self) -> &'static str {
        "inception-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_nchw(l1)?;
        let len = l1.shape().elem_count() + 4 * dims.1;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(dy)) => {
                CpuStorage::F32(self.0.backward(
                    contiguous(x, l1, "input")?,
                    contiguous(p, l2, "parameters")?,
                    contiguous(dy, l3, "gradient")?,
                    dims,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(dy)) => {
                CpuStorage::F64(self.0.backward(
                    contiguous(x, l1, "input")?,
                    contiguous(p, l2, "parameters")?,
                    contiguous(dy, l3, "gradient")?,
                    dims,
                ))
            }
            _ => bail!("batch norm backward: mismatched or unsupported dtypes"),
        };
        Ok((out, Shape::from(len)))
    }
}

/// Plain stochastic gradient descent, `w ← w − lr·g` for every var with a gradient: the update of
/// `candle_nn::SGD` (the same values: `lr·g` rounded, then the difference), computed in place on
/// the CPU for contiguous f32/f64 weights, by `candle_nn::SGD`'s tensor ops elsewhere.
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<candle_core::Var>,
    lr: f64,
}

impl candle_nn::Optimizer for Sgd {
    type Config = f64;

    fn new(vars: Vec<candle_core::Var>, lr: f64) -> Result<Self> {
        let vars = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        Ok(Self { vars, lr })
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        for var in &self.vars {
            let Some(grad) = grads.get(var) else {
                continue;
            };
            let w = var.as_tensor();
            let in_place = w.device().is_cpu()
                && w.is_contiguous()
                && grad.dtype() == w.dtype()
                && grad.shape() == w.shape()
                && matches!(w.dtype(), DType::F32 | DType::F64);
            if in_place {
                w.inplace_op2(&grad.contiguous()?, &SgdUpdate { lr: self.lr })?;
            } else {
                var.set(&w.sub(&(grad * self.lr)?)?)?;
            }
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr
    }
}

/// Elements per task of the in-place update.
const SGD_CHUNK: usize = 1 << 16;

/// `w ← w − lr·g` in place: the [`Sgd`] step of one weight.
struct SgdUpdate {
    lr: f64,
}

impl SgdUpdate {
    fn run<T: Copy + Send + Sync + std::ops::Sub<Output = T> + std::ops::Mul<Output = T>>(
        w: &mut [T],
        g: &[T],
        lr: T,
    ) {
        w.par_chunks_mut(SGD_CHUNK)
            .zip(g.par_chunks(SGD_CHUNK))
            .for_each(|(w, g)| {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w = *w - g * lr;
                }
            });
    }
}

impl candle_core::InplaceOp2 for SgdUpdate {
    fn name(&self) -> &'static str {
        "inception-sgd-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("sgd update: a weight or gradient is not contiguous");
        };
        if b - a != d - c {
            bail!("sgd update: {} weights, {} gradients", b - a, d - c);
        }
        match (s1, s2) {
            (CpuStorage::F32(w), CpuStorage::F32(g)) => {
                Self::run(&mut w[a..b], &g[c..d], self.lr as f32)
            }
            (CpuStorage::F64(w), CpuStorage::F64(g)) => Self::run(&mut w[a..b], &g[c..d], self.lr),
            _ => bail!("sgd update: mismatched or unsupported dtypes"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with many ties: a few levels, pseudo-randomly placed.
    fn levels<T: Float>(len: usize, salt: u64) -> Vec<T> {
        (0..len as u64)
            .map(|i| {
                let h = (i ^ salt)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17);
                T::from_f64((h % 5) as f64 - 2.0)
            })
            .collect()
    }

    fn kept_argmax_matches_the_search<T: Float + std::fmt::Debug>() {
        // (n, c, h, w, kernel, stride): Inception's 3×3/s2, overlapping and disjoint windows,
        // planes the windows do not fill to the edge, a kernel as large as the plane.
        let cases = [
            (2, 3, 7, 9, 3, 2),
            (1, 2, 8, 8, 2, 2),
            (2, 2, 6, 5, 3, 1),
            (1, 3, 15, 15, 3, 2),
            (3, 2, 11, 7, 5, 3),
            (1, 1, 4, 4, 4, 1),
        ];
        for (salt, (n, c, h, w, kernel, stride)) in cases.into_iter().enumerate() {
            let pool = Pool2d {
                kind: PoolKind::Max,
                kernel,
                stride,
                padding: 0,
            };
            let dims = [n, c, h, w];
            let x = levels::<T>(n * c * h * w, salt as u64);
            let (want, _) = pool.cpu_forward(&x, &dims).unwrap();
            let (got, at, _) = pool.cpu_forward_argmax(&x, &dims).unwrap();
            assert_eq!(got, want, "{pool:?} on {dims:?}: output");
            let g = levels::<T>(want.len(), 99 + salt as u64);
            let searched = pool.cpu_backward(&x, &dims, &g).unwrap();
            let kept = pool.argmax_backward(&at, &g, &dims).unwrap();
            assert_eq!(kept, searched, "{pool:?} on {dims:?}: input gradient");
            // Each output's index names an input holding its value.
            let (oh, ow) = (pool.out_len(h).unwrap(), pool.out_len(w).unwrap());
            for (o, (&a, &v)) in at.iter().zip(&got).enumerate() {
                let (plane, oy, ox) = (o / (oh * ow), o % (oh * ow) / ow, o % ow);
                let (i, j) = (usize::from(a) / kernel, usize::from(a) % kernel);
                assert_eq!(
                    x[plane * h * w + (oy * stride + i) * w + ox * stride + j],
                    v
                );
            }
        }
    }

    #[test]
    fn a_kept_argmax_gives_the_gradient_the_window_search_gives() {
        kept_argmax_matches_the_search::<f32>();
        kept_argmax_matches_the_search::<f64>();
    }

    #[test]
    fn a_gradient_that_does_not_fit_the_kept_argmax_is_an_error() {
        let pool = Pool2d::MAX_3X3_S2;
        let dims = [1, 2, 7, 7];
        let x = levels::<f32>(2 * 49, 1);
        let (out, at, _) = pool.cpu_forward_argmax(&x, &dims).unwrap();
        let err = pool
            .argmax_backward(&at, &out[1..], &dims)
            .unwrap_err()
            .to_string();
        assert!(err.contains("17 gradients and 18 window indices"), "{err}");
    }
}
