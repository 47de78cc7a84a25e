//! Convolution as matrix multiplication on the CPU, forward and both backward passes.
//!
//! Each image's patches are laid out as a `K × HoWo` matrix (`K = C·kh·kw`, one row per input
//! channel and kernel offset, contiguous along the output pixels; im2col), so that one GEMM,
//! `W (Co × K) · cols (K × HoWo)`, writes the image's output straight in NCHW order: no transposed
//! copy. A 1×1 convolution with stride 1 and no padding needs no patches at all: the image itself
//! is the matrix. Padding may differ per axis (Inception's 1×7 and 7×1 convolutions), so no padded
//! copy of the input is made. The backward passes are GEMMs too: the kernel gradient is
//! `Σₙ dy (Co × HoWo) · colsᵀ`, the input gradient `Wᵀ · dy` scattered back over the patches
//! (col2im), for any stride (no dilated copy of the gradient, no wasted multiplications by zero).
//!
//! Images are spread over the cores, each GEMM on one core; a batch smaller than the core count
//! runs one image at a time with the GEMM itself parallel. The GEMM is the `gemm` crate's (as
//! candle's matmul), with its AVX-512 kernels where the CPU has them (chosen at run time).
//!
//! [`conv2d`] and [`conv2d_bias_relu`] are candle ops with these kernels on the CPU (f32, f64) and
//! candle's own `conv2d` elsewhere, so the model code is the same on every device. k×k
//! convolutions with stride 1 or 2 in f32 on a CPU with AVX-512 go to the direct kernels of
//! [`crate::direct`] instead where those measured faster (no patch matrix at all).

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::direct;

/// The element types the kernels take.
pub(crate) trait Elem:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const ONE: Self;

    /// Runs `f` with two scratch vectors that this thread keeps between calls (so patch
    /// matrices are not allocated and zeroed anew for every convolution); fresh ones when the
    /// thread's own are already in use.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R;
}

macro_rules! elem {
    ($t:ty, $scratch:ident) => {
        thread_local! {
            static $scratch: RefCell<(Vec<$t>, Vec<$t>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }

        impl Elem for $t {
            const ONE: Self = 1.0;

            fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R {
                $scratch.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut pair) => {
                        let (a, b) = &mut *pair;
                        f(a, b)
                    }
                    Err(_) => f(&mut Vec::new(), &mut Vec::new()),
                })
            }
        }
    };
}

elem!(f32, SCRATCH_F32);
elem!(f64, SCRATCH_F64);

/// `len` zeros, written by all the cores (a large output allocated and zeroed on the calling
/// thread alone would leave the others idle meanwhile).
pub(crate) fn zeros<T: Copy + Send + Sync + Default>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::default(), len));
    v
}

/// `len` elements written by `fill`, which is handed the vector's storage before anything is in
/// it: an output that is overwritten anyway is not zero-filled first (a pass over memory per
/// tensor, about 2 % of a training step at 139×139).
///
/// # Safety
///
/// `fill` must write every one of the `len` elements.
pub(crate) unsafe fn filled<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is `len`, and the caller promises `fill` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// The first `len` elements of `v`, grown (zero-filled) if it is shorter.
fn grow<T: Elem>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// One 2-D convolution: an `n × c × h × w` input, a `co × c × kh × kw` kernel, a stride, a
/// padding per axis and a dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) co: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) ph: usize,
    pub(crate) pw: usize,
    pub(crate) dilation: usize,
}

impl Geometry {
    fn from_dims(
        x: &[usize],
        k: &[usize],
        (ph, pw): (usize, usize),
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        let (&[n, c, h, w], &[co, ck, kh, kw]) = (x, k) else {
            bail!("conv2d: expected a 4-d input and kernel, got {x:?} and {k:?}")
        };
        if c != ck {
            bail!("conv2d: the input has {c} channels, the kernel {ck}");
        }
        let g = Self {
            n,
            c,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            ph,
            pw,
            dilation,
        };
        if stride == 0
            || dilation == 0
            || h + 2 * ph < dilation * (kh - 1) + 1
            || w + 2 * pw < dilation * (kw - 1) + 1
        {
            bail!("conv2d: a {kh}×{kw} kernel does not fit a {h}×{w} input padded by ({ph}, {pw})");
        }
        Ok(g)
    }

    pub(crate) fn out_h(&self) -> usize {
        (self.h + 2 * self.ph - self.dilation * (self.kh - 1) - 1) / self.stride + 1
    }

    pub(crate) fn out_w(&self) -> usize {
        (self.w + 2 * self.pw - self.dilation * (self.kw - 1) - 1) / self.stride + 1
    }

    /// Rows of the patch matrix: `c·kh·kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per image.
    fn hw_out(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own patch matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.ph == 0 && self.pw == 0
    }
}

/// A matrix view: `rows × cols` elements of `data`, element `(i, j)` at `i·rs + j·cs`, so a
/// transposed matrix is the same data with its strides swapped (no copy).
#[derive(Debug, Clone, Copy)]
struct View {
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View {
    /// Row-major with row stride `ld`.
    fn rows(rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    /// Column-major with column stride `ld` (the transpose of a row-major `cols × rows`).
    fn cols(rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            rows,
            cols,
            rs: 1,
            cs: ld,
        }
    }

    /// One past the largest index the view touches (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }

    /// No two elements share an index.
    fn disjoint(&self) -> bool {
        match (self.rows > 1, self.cols > 1) {
            (false, false) => true,
            (false, true) => self.cs > 0,
            (true, false) => self.rs > 0,
            (true, true) => {
                (self.cs > 0 && self.rs >= self.cols * self.cs)
                    || (self.rs > 0 && self.cs >= self.rows * self.rs)
            }
        }
    }
}

/// `c = a · b`, plus `c` itself when `accumulate`, on `threads` cores.
fn gemm<T: Elem>(
    a: (&[T], View),
    b: (&[T], View),
    (c, cv): (&mut [T], View),
    accumulate: bool,
    threads: usize,
) {
    // SAFETY: `c` is initialised, so it may be read (accumulate) as well as written.
    unsafe { gemm_raw(a, b, (c.as_mut_ptr(), c.len(), cv), accumulate, threads) }
}

/// `c = a · b` into storage not yet written (the product overwrites every element of `c` that
/// `cv` names, without reading it), on `threads` cores.
fn gemm_into<T: Elem>(
    a: (&[T], View),
    b: (&[T], View),
    (c, cv): (&mut [MaybeUninit<T>], View),
    threads: usize,
) {
    // SAFETY: `c` is a mutable slice of `c.len()` elements; with `accumulate` false nothing reads
    // it, so it need not be initialised.
    unsafe { gemm_raw(a, b, (c.as_mut_ptr().cast(), c.len(), cv), false, threads) }
}

/// The one call into the `gemm` crate.
///
/// # Safety
///
/// `c` points to `c_len` elements that this call may write, and read too when `accumulate`
/// (they are then initialised); no one else reads or writes them meanwhile.
unsafe fn gemm_raw<T: Elem>(
    (a, av): (&[T], View),
    (b, bv): (&[T], View),
    (c, c_len, cv): (*mut T, usize, View),
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    assert!(
        bv.rows == k && cv.rows == m && cv.cols == n,
        "gemm: shapes {m}×{k} · {}×{n} → {}×{}",
        bv.rows,
        cv.rows,
        cv.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(cv.extent() <= c_len, "gemm: destination too short");
    assert!(cv.disjoint(), "gemm: destination elements overlap");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside the `c_len` elements (the extent check above).
                    unsafe { c.add(i * cv.rs + j * cv.cs).write(T::default()) };
                }
            }
        }
        return;
    }
    assert!(av.extent() <= a.len(), "gemm: lhs too short");
    assert!(bv.extent() <= b.len(), "gemm: rhs too short");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element the kernel reads (a: m × k, b: k × n) and
    // writes (c: m × n) inside its storage through the views' strides, and no two written
    // elements share an index; the caller vouches for `c` (exclusive, initialised if read). The
    // kernel reads `c` only when `accumulate` (`read_dst`). `T` is f32 or f64, which `gemm`
    // supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr(),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr(),
            bv.cs as isize,
            bv.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The output columns `[lo, hi)` of one kernel offset whose input column `ow·s + off` falls
/// inside `[0, w)`.
fn valid_range(off: isize, stride: usize, w: usize, wo: usize) -> (usize, usize) {
    let s = stride as isize;
    // ow·s + off ≥ 0  ⇔  ow ≥ ⌈−off / s⌉;  ow·s + off < w  ⇔  ow < ⌈(w − off) / s⌉.
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if (w as isize) <= off {
        0
    } else {
        (w as isize - off + s - 1) / s
    };
    let lo = (lo as usize).min(wo);
    (lo, (hi as usize).clamp(lo, wo))
}

/// The patch matrix of one image (`c × h × w`): `cols[(ci·kh + i)·kw + j][oh·wo + ow] =
/// x[ci][oh·s + i·d − ph][ow·s + j·d − pw]`, zero outside the image; row `r` of the matrix starts
/// at `cols[r·ld]` (`ld ≥ ho·wo`: several images' matrices side by side). Only the output rows
/// `oh` (their columns `oh.start·wo..oh.end·wo` of the matrix, written from `cols[0]` on).
fn im2col<T: Elem>(g: &Geometry, x: &[T], cols: &mut [T], ld: usize, oh: Range<usize>) {
    im2col_rows(g, x, cols, ld, oh, 0..g.k());
}

/// [`im2col`] for the patch matrix's rows `rows` only, row `rows.start` at `cols[0]`.
fn im2col_rows<T: Elem>(
    g: &Geometry,
    x: &[T],
    cols: &mut [T],
    ld: usize,
    oh: Range<usize>,
    rows: Range<usize>,
) {
    let wo = g.out_w();
    let plane = g.h * g.w;
    for r in rows.clone() {
        let at = (r - rows.start) * ld;
        let row = &mut cols[at..at + oh.len() * wo];
        let ci = r / (g.kh * g.kw);
        let (i, j) = ((r / g.kw) % g.kh, r % g.kw);
        let src = &x[ci * plane..(ci + 1) * plane];
        let off = (j * g.dilation) as isize - g.pw as isize;
        let (lo, hi) = valid_range(off, g.stride, g.w, wo);
        if g.stride == 1 && wo == g.w {
            shifted_rows(
                g,
                src,
                row,
                oh.clone(),
                (i * g.dilation) as isize - g.ph as isize,
                off,
                (lo, hi),
            );
            continue;
        }
        for (oh, out) in oh.clone().zip(row.chunks_mut(wo)) {
            let ih = (oh * g.stride + i * g.dilation) as isize - g.ph as isize;
            if ih < 0 || ih >= g.h as isize {
                out.fill(T::default());
                continue;
            }
            let line = &src[ih as usize * g.w..(ih as usize + 1) * g.w];
            out[..lo].fill(T::default());
            out[hi..].fill(T::default());
            if lo == hi {
                // The kernel column falls outside the image for every output column.
            } else if g.stride == 1 {
                let start = (lo as isize + off) as usize;
                out[lo..hi].copy_from_slice(&line[start..start + hi - lo]);
            } else {
                for (ow, v) in out[lo..hi].iter_mut().enumerate() {
                    *v = line[((lo + ow) as isize * g.stride as isize + off) as usize];
                }
            }
        }
    }
}

/// One row of the patch matrix of a stride-1 convolution whose output rows are as wide as the
/// input's ("same" padding across, Inception's 1×1, 1×n and n×n): output row `oh` is input row
/// `oh + di` shifted by `dj`, so the valid rows are one copy of the plane, after which the columns
/// outside `[lo, hi)` (which the copy filled from the neighbouring rows) are zeroed.
fn shifted_rows<T: Elem>(
    g: &Geometry,
    src: &[T],
    row: &mut [T],
    oh: Range<usize>,
    di: isize,
    dj: isize,
    (lo, hi): (usize, usize),
) {
    let w = g.w;
    let (first, end) = valid_rows(g, &oh, di);
    row[..first * w].fill(T::default());
    row[end * w..].fill(T::default());
    if first < end {
        let start = (oh.start + first) as isize + di;
        // The source span, clipped to the plane (only the outermost, invalid columns fall outside).
        let (a, b) = (
            start * w as isize + dj,
            (start + (end - first) as isize) * w as isize + dj,
        );
        let (ca, cb) = (a.max(0), b.min(src.len() as isize));
        let dst = &mut row[first * w..end * w];
        if ca < cb {
            dst[(ca - a) as usize..(cb - a) as usize]
                .copy_from_slice(&src[ca as usize..cb as usize]);
        }
        for line in dst.chunks_mut(w) {
            line[..lo].fill(T::default());
            line[hi..].fill(T::default());
        }
    }
}

/// The output rows `oh.start + t`, `t` in `[first, end)`, whose input row `oh.start + t + di` (stride
/// 1) is inside the image.
fn valid_rows(g: &Geometry, oh: &Range<usize>, di: isize) -> (usize, usize) {
    let first = (-(oh.start as isize) - di).clamp(0, oh.len() as isize) as usize;
    let end =
        (g.h as isize - oh.start as isize - di).clamp(first as isize, oh.len() as isize) as usize;
    (first, end)
}

/// The adjoint of [`im2col`]: adds each patch entry back onto the input pixel it came from.
fn col2im<T: Elem>(g: &Geometry, cols: &[T], ld: usize, oh: Range<usize>, dx: &mut [T]) {
    let wo = g.out_w();
    let plane = g.h * g.w;
    for r in 0..g.k() {
        let row = &cols[r * ld..r * ld + oh.len() * wo];
        let ci = r / (g.kh * g.kw);
        let (i, j) = ((r / g.kw) % g.kh, r % g.kw);
        let dst = &mut dx[ci * plane..(ci + 1) * plane];
        let off = (j * g.dilation) as isize - g.pw as isize;
        let (lo, hi) = valid_range(off, g.stride, g.w, wo);
        if g.stride == 1 && wo == g.w && (lo, hi) == (0, wo) {
            // Every column valid and unshifted (1×1, n×1, the middle column of 3×3 and 1×n):
            // the valid output rows add onto consecutive input rows at once.
            let (first, end) = valid_rows(g, &oh, (i * g.dilation) as isize - g.ph as isize);
            if first < end {
                let start = (oh.start + first + i * g.dilation - g.ph) * g.w;
                let span = &mut dst[start..start + (end - first) * wo];
                for (d, &v) in span.iter_mut().zip(&row[first * wo..end * wo]) {
                    *d += v;
                }
            }
            continue;
        }
        for (oh, grad) in oh.clone().zip(row.chunks(wo)) {
            let ih = (oh * g.stride + i * g.dilation) as isize - g.ph as isize;
            if ih < 0 || ih >= g.h as isize {
                continue;
            }
            let line = &mut dst[ih as usize * g.w..(ih as usize + 1) * g.w];
            if lo == hi {
                // The kernel column falls outside the image for every output column.
            } else if g.stride == 1 {
                let start = (lo as isize + off) as usize;
                for (d, &v) in line[start..start + hi - lo].iter_mut().zip(&grad[lo..hi]) {
                    *d += v;
                }
            } else {
                for (ow, &v) in grad[lo..hi].iter().enumerate() {
                    line[((lo + ow) as isize * g.stride as isize + off) as usize] += v;
                }
            }
        }
    }
}

/// Output columns a GEMM should have to run near the kernel's speed: an image whose output plane
/// is smaller (Inception's late 17×17, 8×8 blocks; 7×7 and 3×3 at 139×139) shares its GEMM with
/// the next images of its core's share of the batch, so the kernel matrix is packed once per
/// group instead of once per image and the microkernel's rows are full.
const WIDE: usize = 256;

/// Patch-matrix elements per GEMM for an image with a large output plane (1 MiB of f32, half a
/// core's L2 cache here): its output rows are done in blocks this size, so that the patches are
/// still in the cache when the GEMM packs them (and when col2im reads them back).
const BLOCK: usize = 1 << 18;

/// Patch-matrix elements of a whole batch (16 MiB of f32) up to which the kernel gradient of a
/// batch whose cores each do their share in one GEMM (Inception's 3×3 planes at 139×139: 144
/// columns per core) is one product over the whole batch instead, its output rows split over the
/// cores: [`kernel_grad_whole`].
const WHOLE: usize = 1 << 22;

/// How a batch is spread: contiguous runs of `per_part` images, one run per core, each done in
/// groups of up to `per_group` images, one GEMM per group on `gemm_threads` cores; an image alone
/// in its group, `rows` output rows per GEMM; with `whole`, the kernel gradient as one product
/// over the batch, its output rows split into one run per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    per_part: usize,
    per_group: usize,
    gemm_threads: usize,
    rows: usize,
    whole: bool,
}

impl Plan {
    /// Images over the cores when there are at least as many as cores; else one run, one image
    /// at a time, with the GEMMs parallel.
    fn new(g: &Geometry, threads: usize) -> Self {
        let threads = threads.max(1);
        let parts = threads.min(g.n).max(1);
        let per_part = g.n.div_ceil(parts).max(1);
        let gemm_threads = if parts < threads { threads } else { 1 };
        let want = WIDE.div_ceil(g.hw_out().max(1)).clamp(1, per_part);
        // Groups of equal size (within one image) rather than full ones and a small remainder.
        let per_group = per_part.div_ceil(per_part.div_ceil(want));
        // Rows per block: as many as fit BLOCK, but at least WIDE columns' worth.
        let (ho, wo) = (g.out_h().max(1), g.out_w().max(1));
        let rows = (BLOCK / (g.k() * wo).max(1)).max(WIDE.div_ceil(wo)).min(ho);
        let whole = parts == threads
            && threads > 1
            && per_group == per_part
            && g.k() * g.n * g.hw_out() <= WHOLE;
        Self {
            per_part,
            per_group,
            gemm_threads,
            rows,
            whole,
        }
    }
}

/// The patch matrices of a group's images (`xg`, one after the other) side by side, as one
/// `K × m·HoWo` matrix in `cols`.
fn group_patches<'a, T: Elem>(g: &Geometry, xg: &[T], cols: &'a mut Vec<T>) -> &'a mut [T] {
    let (hw, in_len) = (g.hw_out(), g.c * g.h * g.w);
    let wide = xg.len() / in_len * hw;
    let cols = grow(cols, g.k() * wide);
    for (i, xi) in xg.chunks(in_len).enumerate() {
        im2col(g, xi, &mut cols[i * hw..], wide, 0..g.out_h());
    }
    cols
}

/// `m` images' `rows × plane` matrices (`src`, one after the other) side by side as one
/// `rows × m·plane` matrix in `dst`.
fn gather<T: Elem>(rows: usize, plane: usize, src: &[T], dst: &mut [T]) {
    gather_rows(rows, plane, src, 0..rows, dst);
}

/// [`gather`] for the rows `take` only, row `take.start` at `dst[0]`.
fn gather_rows<T: Elem>(rows: usize, plane: usize, src: &[T], take: Range<usize>, dst: &mut [T]) {
    let wide = src.len() / rows;
    for (i, image) in src.chunks(rows * plane).enumerate() {
        for r in take.clone() {
            dst[(r - take.start) * wide + i * plane..][..plane]
                .copy_from_slice(&image[r * plane..][..plane]);
        }
    }
}

/// The forward pass, `n × co × ho × wo`; with `bias`, `max(conv + bias, 0)` per output channel.
pub(crate) fn forward<T: Elem>(
    g: &Geometry,
    plan: Plan,
    x: &[T],
    k: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let (hw, kk) = (g.hw_out(), g.k());
    let (in_len, out_len) = (g.c * g.h * g.w, g.co * hw);
    assert_eq!(x.len(), g.n * in_len, "conv2d: input of the wrong length");
    let bias_relu = |v: T, b: T| {
        let t = v + b;
        if t > T::default() { t } else { T::default() }
    };
    let per_group =
        |xg: &[T], yg: &mut [MaybeUninit<T>], m, cols: &mut Vec<T>, wide_out: &mut Vec<T>| {
            if m == 1 {
                // One image: its output is the GEMMs' destination.
                if g.pointwise() {
                    gemm_into(
                        (k, View::rows(g.co, kk, kk)),
                        (xg, View::rows(kk, hw, hw)),
                        (yg, View::rows(g.co, hw, hw)),
                        plan.gemm_threads,
                    );
                }
                for oh in blocks(g, plan) {
                    let width = oh.len() * g.out_w();
                    let cols = grow(cols, kk * width);
                    im2col(g, xg, cols, width, oh.clone());
                    gemm_into(
                        (k, View::rows(g.co, kk, kk)),
                        (cols, View::rows(kk, width, width)),
                        (&mut yg[oh.start * g.out_w()..], View::rows(g.co, width, hw)),
                        plan.gemm_threads,
                    );
                }
                if let Some(bias) = bias {
                    // SAFETY: the GEMMs wrote all of `yg`: the pointwise one `co × hw`, the others
                    // `co` rows of every block of output rows, and the blocks cover them all.
                    let yg = unsafe { yg.assume_init_mut() };
                    for (plane, &b) in yg.chunks_mut(hw).zip(bias) {
                        for v in plane {
                            *v = bias_relu(*v, b);
                        }
                    }
                }
                return;
            }
            // Several: one GEMM writes `co × m·hw`, each image's planes copied out.
            let wide = m * hw;
            let cols = group_patches(g, xg, cols);
            let out = grow(wide_out, g.co * wide);
            gemm(
                (k, View::rows(g.co, kk, kk)),
                (cols, View::rows(kk, wide, wide)),
                (out, View::rows(g.co, wide, wide)),
                false,
                plan.gemm_threads,
            );
            for (i, yi) in yg.chunks_mut(out_len).enumerate() {
                for (c, plane) in yi.chunks_mut(hw).enumerate() {
                    let src = &out[c * wide + i * hw..][..hw];
                    match bias {
                        Some(bias) => {
                            for (v, &s) in plane.iter_mut().zip(src) {
                                v.write(bias_relu(s, bias[c]));
                            }
                        }
                        None => {
                            plane.write_copy_of_slice(src);
                        }
                    }
                }
            }
        };
    // SAFETY: every group writes all of its images' outputs (above), and the groups cover the
    // batch.
    unsafe {
        filled(g.n * out_len, |y| {
            over_groups(plan, (x, in_len), (y, out_len), per_group)
        })
    }
}

/// Runs `per_group(inputs, outputs, m, scratch, scratch)` over a batch as `plan` spreads it: the
/// cores' runs of images in parallel, each in groups of up to `plan.per_group` (`m` in this one),
/// with the thread's two scratch buffers; `in_len` and `out_len` are one image's lengths.
fn over_groups<T: Elem, U: Send>(
    plan: Plan,
    (input, in_len): (&[T], usize),
    (output, out_len): (&mut [U], usize),
    per_group: impl Fn(&[T], &mut [U], usize, &mut Vec<T>, &mut Vec<T>) + Sync,
) {
    input
        .par_chunks(plan.per_part * in_len)
        .zip(output.par_chunks_mut(plan.per_part * out_len))
        .for_each(|(ins, outs)| {
            T::with_scratch(|a, b| {
                let groups = ins
                    .chunks(plan.per_group * in_len)
                    .zip(outs.chunks_mut(plan.per_group * out_len));
                for (ig, og) in groups {
                    per_group(ig, og, ig.len() / in_len, a, b);
                }
            })
        });
}

/// The output row blocks of one image alone in its group: none for a pointwise convolution (its
/// image is its patch matrix), else `plan.rows` rows at a time.
fn blocks(g: &Geometry, plan: Plan) -> impl Iterator<Item = Range<usize>> {
    let ho = if g.pointwise() { 0 } else { g.out_h() };
    let step = plan.rows.max(1);
    (0..ho)
        .step_by(step)
        .map(move |start| start..(start + step).min(ho))
}

/// The input gradient: `Wᵀ · dy` per group of images, scattered back over the patches.
pub(crate) fn input_grad<T: Elem>(g: &Geometry, plan: Plan, k: &[T], dy: &[T]) -> Vec<T> {
    let (hw, kk) = (g.hw_out(), g.k());
    let (in_len, out_len) = (g.c * g.h * g.w, g.co * hw);
    assert_eq!(
        dy.len(),
        g.n * out_len,
        "conv2d: output gradient of the wrong length"
    );
    // Wᵀ (K × Co) copied once: read in place from the kernel (column stride K), the gemm crate
    // packed it again for every group of images.
    let wt = transposed(k, g.co, kk);
    let (k, kt) = (&wt[..], View::rows(kk, g.co, g.co));
    if g.pointwise() {
        // Each input element gets exactly one product (no patches overlap): the GEMMs' results
        // are copied or written in place, over storage not zero-filled first.
        let per_group =
            |dyg: &[T], dxg: &mut [MaybeUninit<T>], m, gathered: &mut Vec<T>, cols: &mut Vec<T>| {
                if m == 1 {
                    gemm_into(
                        (k, kt),
                        (dyg, View::rows(g.co, hw, hw)),
                        (dxg, View::rows(kk, hw, hw)),
                        plan.gemm_threads,
                    );
                    return;
                }
                let wide = m * hw;
                let cols = group_input_cols(g, plan, (k, kt), dyg, gathered, cols);
                for (i, dxi) in dxg.chunks_mut(in_len).enumerate() {
                    for (r, plane) in dxi.chunks_mut(hw).enumerate() {
                        plane.write_copy_of_slice(&cols[r * wide + i * hw..][..hw]);
                    }
                }
            };
        // SAFETY: a pointwise image's gradient is `kk × hw` (`in_len`), all of it written by its
        // GEMM or copied from its group's, and the groups cover the batch.
        return unsafe {
            filled(g.n * in_len, |dx| {
                over_groups(plan, (dy, out_len), (dx, in_len), per_group)
            })
        };
    }
    // The patches overlap (or skip pixels, with a stride): col2im adds onto zeros.
    let mut dx = zeros(g.n * in_len);
    over_groups(
        plan,
        (dy, out_len),
        (&mut dx, in_len),
        |dyg, dxg, m, gathered, cols| {
            if m == 1 {
                for oh in blocks(g, plan) {
                    let width = oh.len() * g.out_w();
                    let cols = grow(cols, kk * width);
                    gemm(
                        (k, kt),
                        (&dyg[oh.start * g.out_w()..], View::rows(g.co, width, hw)),
                        (cols, View::rows(kk, width, width)),
                        false,
                        plan.gemm_threads,
                    );
                    col2im(g, cols, width, oh, dxg);
                }
                return;
            }
            let wide = m * hw;
            let cols = group_input_cols(g, plan, (k, kt), dyg, gathered, cols);
            for (i, dxi) in dxg.chunks_mut(in_len).enumerate() {
                col2im(g, &cols[i * hw..], wide, 0..g.out_h(), dxi);
            }
        },
    );
    dx
}

/// The input gradient's product for a group of images (`dyg`, one after the other): their output
/// gradients gathered side by side into `gathered`, times `Wᵀ` (`wt`, `K × Co`), as one
/// `K × m·HoWo` matrix in `cols`.
fn group_input_cols<'a, T: Elem>(
    g: &Geometry,
    plan: Plan,
    wt: (&[T], View),
    dyg: &[T],
    gathered: &mut Vec<T>,
    cols: &'a mut Vec<T>,
) -> &'a [T] {
    let hw = g.hw_out();
    let wide = dyg.len() / g.co;
    let d = grow(gathered, g.co * wide);
    gather(g.co, hw, dyg, d);
    let cols = grow(cols, g.k() * wide);
    gemm(
        wt,
        (d, View::rows(g.co, wide, wide)),
        (cols, View::rows(g.k(), wide, wide)),
        false,
        plan.gemm_threads,
    );
    cols
}

/// Rows per block of a transposing copy: each block writes `ROWS` output rows while reading its
/// input row by row.
const ROWS: usize = 16;

/// The `cols × rows` transpose of a row-major `rows × cols` matrix, `ROWS` output rows per task.
fn transposed<T: Elem>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); rows * cols];
    t.par_chunks_mut(ROWS * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let j0 = block * ROWS;
            let width = out.len() / rows;
            for (i, row) in a.chunks(cols).enumerate() {
                for (dj, &v) in row[j0..j0 + width].iter().enumerate() {
                    out[dj * rows + i] = v;
                }
            }
        });
    t
}

/// Whether [`kernel_grad`] keeps each core's sum column-major (`K × Co` in memory): when its
/// GEMMs sum over at least `WIDE` columns. The gemm crate computes a product with a row-major
/// destination as its transpose, and then packs the patch matrix; with a column-major one it packs
/// only the small `dy`. Row-major stays for the smallest planes, whose groups are narrower (3×3 at
/// 139×139: 144 columns), where that measured faster.
fn kernel_sums_column_major(g: &Geometry, plan: Plan) -> bool {
    plan.per_group * g.hw_out() >= WIDE
}

/// The kernel gradient: `Σ dy (Co × m·HoWo) · colsᵀ` over groups of images, each core summing
/// its run of the batch; the cores' sums are then added in order (the same result every run).
pub(crate) fn kernel_grad<T: Elem>(g: &Geometry, plan: Plan, x: &[T], dy: &[T]) -> Vec<T> {
    if plan.whole {
        return kernel_grad_whole(g, x, dy, g.n.div_ceil(plan.per_part));
    }
    let (hw, kk) = (g.hw_out(), g.k());
    let (in_len, out_len) = (g.c * g.h * g.w, g.co * hw);
    // Each core's `Co × K` sum, in the layout `kernel_sums_column_major` picks.
    let acc_view = if kernel_sums_column_major(g, plan) {
        View::cols(g.co, kk, g.co)
    } else {
        View::rows(g.co, kk, kk)
    };
    let sums: Vec<Vec<T>> = x
        .par_chunks(plan.per_part * in_len)
        .zip(dy.par_chunks(plan.per_part * out_len))
        .map(|(xs, dys)| {
            let mut acc = vec![T::default(); g.co * kk];
            T::with_scratch(|cols, gathered| {
                let groups = xs
                    .chunks(plan.per_group * in_len)
                    .zip(dys.chunks(plan.per_group * out_len));
                let mut accumulate = false;
                for (xg, dyg) in groups {
                    let m = xg.len() / in_len;
                    if m == 1 {
                        // colsᵀ: HoWo × K, read from the K × HoWo matrix with row stride 1.
                        if g.pointwise() {
                            gemm(
                                (dyg, View::rows(g.co, hw, hw)),
                                (xg, View::cols(hw, kk, hw)),
                                (&mut acc, acc_view),
                                accumulate,
                                plan.gemm_threads,
                            );
                            accumulate = true;
                        }
                        for oh in blocks(g, plan) {
                            let width = oh.len() * g.out_w();
                            let cols = grow(cols, kk * width);
                            im2col(g, xg, cols, width, oh.clone());
                            gemm(
                                (&dyg[oh.start * g.out_w()..], View::rows(g.co, width, hw)),
                                (cols, View::cols(width, kk, width)),
                                (&mut acc, acc_view),
                                accumulate,
                                plan.gemm_threads,
                            );
                            accumulate = true;
                        }
                        continue;
                    }
                    let wide = m * hw;
                    let cols = group_patches(g, xg, cols);
                    let d = grow(gathered, g.co * wide);
                    gather(g.co, hw, dyg, d);
                    gemm(
                        (d, View::rows(g.co, wide, wide)),
                        (cols, View::cols(wide, kk, wide)),
                        (&mut acc, acc_view),
                        accumulate,
                        plan.gemm_threads,
                    );
                    accumulate = true;
                }
            });
            acc
        })
        .collect();
    // The cores' sums added in order (the same result every run) into the row-major gradient,
    // `ROWS` of its rows per task, each part read through its view.
    let mut total = vec![T::default(); g.co * kk];
    total
        .par_chunks_mut(ROWS * kk)
        .enumerate()
        .for_each(|(block, rows)| {
            let o = block * ROWS;
            for part in &sums {
                for j in 0..kk {
                    for (t, row) in rows.chunks_mut(kk).enumerate() {
                        row[j] += part[(o + t) * acc_view.rs + j * acc_view.cs];
                    }
                }
            }
        });
    total
}

/// Tasks per core when a matrix's rows are filled in parallel.
const TASKS: usize = 4;

/// The whole batch's patch matrices side by side, `K × n·HoWo`, its rows filled in parallel.
fn batch_patches<T: Elem>(g: &Geometry, x: &[T], cols: &mut Vec<T>) {
    let (hw, kk, in_len) = (g.hw_out(), g.k(), g.c * g.h * g.w);
    let wide = g.n * hw;
    let per_task = kk.div_ceil(TASKS * rayon::current_num_threads()).max(1);
    grow(cols, kk * wide)
        .par_chunks_mut(per_task * wide)
        .enumerate()
        .for_each(|(t, block)| {
            let rows = t * per_task..(t * per_task + block.len() / wide);
            for (i, xi) in x.chunks(in_len).enumerate() {
                im2col_rows(
                    g,
                    xi,
                    &mut block[i * hw..],
                    wide,
                    0..g.out_h(),
                    rows.clone(),
                );
            }
        });
}

/// The whole batch's `co × HoWo` output planes side by side, `co × n·HoWo` ([`gather`] of the
/// whole batch), its rows filled in parallel.
fn batch_planes<T: Elem>(g: &Geometry, y: &[T], dst: &mut Vec<T>) {
    let wide = g.n * g.hw_out();
    let per_task = g.co.div_ceil(TASKS * rayon::current_num_threads()).max(1);
    grow(dst, g.co * wide)
        .par_chunks_mut(per_task * wide)
        .enumerate()
        .for_each(|(t, block)| {
            let rows = t * per_task..t * per_task + block.len() / wide;
            gather_rows(g.co, g.hw_out(), y, rows, block);
        });
}

/// The kernel gradient of a batch with small output planes: one `Co × n·HoWo` by `n·HoWo × K`
/// product over the whole batch, its output rows split over the cores (no per-core sums to add).
fn kernel_grad_whole<T: Elem>(g: &Geometry, x: &[T], dy: &[T], parts: usize) -> Vec<T> {
    let (kk, wide) = (g.k(), g.n * g.hw_out());
    let mut dk = vec![T::default(); g.co * kk];
    let per_core = g.co.div_ceil(parts.max(1)).max(1);
    // The calling thread's scratch holds the two matrices (kept between calls).
    T::with_scratch(|cols, d| {
        batch_patches(g, x, cols);
        batch_planes(g, dy, d);
        let (cols, d) = (&cols[..kk * wide], &d[..g.co * wide]);
        dk.par_chunks_mut(per_core * kk)
            .zip(d.par_chunks(per_core * wide))
            .for_each(|(out, dyr)| {
                let rows = out.len() / kk;
                gemm(
                    (dyr, View::rows(rows, wide, wide)),
                    (cols, View::cols(wide, kk, wide)),
                    (out, View::rows(rows, kk, kk)),
                    false,
                    1,
                );
            });
    });
    dk
}

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("conv2d: operands must be contiguous"),
    }
}

/// Whether the CPU kernels take these operands.
pub(crate) fn ours(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && matches!(xs.dtype(), DType::F32 | DType::F64)
}

/// A convolution with dilation 1, `padding` per axis (height, width) and `stride`, as candle's
/// `conv2d` but with the kernels above on the CPU (both gradients included). Elsewhere: candle's
/// `conv2d` (after padding unequal axes explicitly).
pub fn conv2d(
    xs: &Tensor,
    kernel: &Tensor,
    padding: (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    if !ours(xs) || xs.dtype() != kernel.dtype() {
        return candle_conv(xs, kernel, padding, stride);
    }
    let op = Conv { padding, stride };
    xs.contiguous()?.apply_op2(&kernel.contiguous()?, op)
}

/// `max(conv2d(xs, kernel) + bias, 0)` with `bias` per output channel: a convolution whose batch
/// norm is folded into its kernel and bias, with the ReLU, in one pass over the output.
pub fn conv2d_bias_relu(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    if !ours(xs) || xs.dtype() != kernel.dtype() || xs.dtype() != bias.dtype() {
        let c_out = bias.dim(0)?;
        return candle_conv(xs, kernel, padding, stride)?
            .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?
            .relu();
    }
    let op = ConvBiasRelu(Conv { padding, stride });
    xs.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
}

/// The convolution of [`conv2d`] on the CPU kernels, as a tensor with no graph node (for an op
/// that keeps it and gives its gradients itself, with [`conv2d_grads`]).
pub(crate) fn conv2d_detached(
    xs: &Tensor,
    kernel: &Tensor,
    padding: (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2_no_bwd(&kernel.contiguous()?, &Conv { padding, stride })
}

/// The input gradient (when `xs` is part of a graph) and the kernel gradient of
/// [`conv2d_detached`] for the output gradient `dy`.
pub(crate) fn conv2d_grads(
    xs: &Tensor,
    kernel: &Tensor,
    dy: &Tensor,
    padding: (usize, usize),
    stride: usize,
) -> Result<(Option<Tensor>, Tensor)> {
    Conv { padding, stride }.grads(xs, kernel, dy)
}

/// [`conv2d_grads`] with the input gradient and the kernel gradient each computed where `want`
/// says (input, kernel), whether or not `xs` is part of a graph.
pub(crate) fn conv2d_grads_of(
    xs: &Tensor,
    kernel: &Tensor,
    dy: &Tensor,
    (padding, stride): ((usize, usize), usize),
    want: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    Conv { padding, stride }.grads_of(xs, kernel, dy, want)
}

fn candle_conv(
    xs: &Tensor,
    kernel: &Tensor,
    (ph, pw): (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    if ph == pw {
        return xs.conv2d(kernel, ph, stride, 1, 1);
    }
    xs.pad_with_zeros(2, ph, ph)?
        .pad_with_zeros(3, pw, pw)?
        .conv2d(kernel, 0, stride, 1, 1)
}

#[derive(Debug, Clone, Copy)]
struct Conv {
    padding: (usize, usize),
    stride: usize,
}

impl Conv {
    fn geometry(&self, x: &[usize], k: &[usize]) -> Result<Geometry> {
        Geometry::from_dims(x, k, self.padding, self.stride, 1)
    }

    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1.dims(), l2.dims())?;
        let shape = Shape::from((g.n, g.co, g.out_h(), g.out_w()));
        let plan = Plan::new(&g, rayon::current_num_threads());
        let out = match (s1, s2, bias) {
            (CpuStorage::F32(x), CpuStorage::F32(k), None | Some((CpuStorage::F32(_), _)))
                if direct::takes_forward(&g) =>
            {
                let bias = match bias {
                    Some((CpuStorage::F32(b), l3)) => Some(slice(b, l3)?),
                    _ => None,
                };
                CpuStorage::F32(direct::forward(&g, slice(x, l1)?, slice(k, l2)?, bias))
            }
            (CpuStorage::F32(x), CpuStorage::F32(k), None) => {
                CpuStorage::F32(forward(&g, plan, slice(x, l1)?, slice(k, l2)?, None))
            }
            (CpuStorage::F64(x), CpuStorage::F64(k), None) => {
                CpuStorage::F64(forward(&g, plan, slice(x, l1)?, slice(k, l2)?, None))
            }
            (CpuStorage::F32(x), CpuStorage::F32(k), Some((CpuStorage::F32(b), l3))) => {
                CpuStorage::F32(forward(
                    &g,
                    plan,
                    slice(x, l1)?,
                    slice(k, l2)?,
                    Some(slice(b, l3)?),
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(k), Some((CpuStorage::F64(b), l3))) => {
                CpuStorage::F64(forward(
                    &g,
                    plan,
                    slice(x, l1)?,
                    slice(k, l2)?,
                    Some(slice(b, l3)?),
                ))
            }
            _ => bail!("conv2d: mismatched or unsupported dtypes"),
        };
        Ok((out, shape))
    }

    /// Input and kernel gradients for the output gradient `dy`.
    fn grads(&self, x: &Tensor, k: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let (dx, dk) = self.grads_of(x, k, dy, (x.track_op(), true))?;
        let Some(dk) = dk else {
            bail!("conv2d: the kernel gradient was asked for and not computed")
        };
        Ok((dx, dk))
    }

    /// The input gradient and the kernel gradient, each where `want` says.
    fn grads_of(
        &self,
        x: &Tensor,
        k: &Tensor,
        dy: &Tensor,
        want: (bool, bool),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.dims(), k.dims())?;
        let dy = dy.contiguous()?;
        let dx = match want.0 {
            true => Some(k.apply_op2_no_bwd(&dy, &Grad::Input(g))?),
            false => None,
        };
        let dk = match want.1 {
            true => Some(x.apply_op2_no_bwd(&dy, &Grad::Kernel(g))?),
            false => None,
        };
        Ok((dx, dk))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "inception-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dk) = self.grads(x, k, dy)?;
        Ok((dx, Some(dk)))
    }
}

#[derive(Debug, Clone, Copy)]
struct ConvBiasRelu(Conv);

impl CustomOp3 for ConvBiasRelu {
    fn name(&self) -> &'static str {
        "inception-conv2d-bias-relu"
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
        if l3.dims() != [l2.dims()[0]] {
            bail!(
                "conv2d: a bias of shape {:?} for {:?}",
                l3.dims(),
                l2.dims()
            );
        }
        self.0.run((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Through the ReLU: the gradient passes where the output is positive.
        let dz = (dy * res.gt(0.0)?.to_dtype(dy.dtype())?)?;
        let (dx, dk) = self.0.grads(x, k, &dz)?;
        let db = dz.sum((0, 2, 3))?;
        Ok((dx, Some(dk), Some(db)))
    }
}

/// A gradient of a convolution of the given geometry: `Input` takes (kernel, dy) and gives dx,
/// `Kernel` takes (x, dy) and gives dkernel.
#[derive(Debug, Clone, Copy)]
enum Grad {
    Input(Geometry),
    Kernel(Geometry),
}

impl Grad {
    fn run<T: Elem>(&self, a: &[T], dy: &[T]) -> Vec<T> {
        match self {
            Self::Input(g) => input_grad(g, Plan::new(g, rayon::current_num_threads()), a, dy),
            Self::Kernel(g) => kernel_grad(g, Plan::new(g, rayon::current_num_threads()), a, dy),
        }
    }
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        match self {
            Self::Input(_) => "inception-conv2d-input-grad",
            Self::Kernel(_) => "inception-conv2d-kernel-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(dy)) => match self {
                // `a` is the kernel for the input gradient, the input for the kernel gradient.
                Self::Input(g) if direct::takes_input_grad(g) => {
                    CpuStorage::F32(direct::input_grad(g, slice(a, l1)?, slice(dy, l2)?))
                }
                Self::Kernel(g) if direct::takes_kernel_grad(g) => {
                    CpuStorage::F32(direct::kernel_grad(g, slice(a, l1)?, slice(dy, l2)?))
                }
                _ => CpuStorage::F32(self.run(slice(a, l1)?, slice(dy, l2)?)),
            },
            (CpuStorage::F64(a), CpuStorage::F64(dy)) => {
                CpuStorage::F64(self.run(slice(a, l1)?, slice(dy, l2)?))
            }
            _ => bail!("conv2d backward: mismatched or unsupported dtypes"),
        };
        let shape = match self {
            Self::Input(g) => Shape::from((g.n, g.c, g.h, g.w)),
            Self::Kernel(g) => Shape::from((g.co, g.c, g.kh, g.kw)),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_know_their_extent_and_whether_they_overlap() {
        assert_eq!(View::rows(3, 4, 5).extent(), 14);
        assert_eq!(View::cols(3, 4, 3).extent(), 12);
        assert_eq!(View::rows(0, 4, 4).extent(), 0);
        assert!(View::rows(3, 4, 4).disjoint() && View::cols(3, 4, 3).disjoint());
        assert!(!View::rows(3, 4, 2).disjoint(), "rows overlap");
        assert!(
            View::rows(1, 4, 0).disjoint(),
            "one row needs no row stride"
        );
    }

    #[test]
    fn plans_spread_images_over_the_cores_and_share_gemms_between_small_outputs() {
        // A 3×3 convolution of `c` channels, unpadded, on n images of h×h.
        let g = |n, c, h: usize| Geometry {
            n,
            c,
            h: h + 2,
            w: h + 2,
            co: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            ph: 0,
            pw: 0,
            dilation: 1,
        };
        let plan = |per_part, per_group, gemm_threads, rows| Plan {
            per_part,
            per_group,
            gemm_threads,
            rows,
            whole: false,
        };
        // 64×64 outputs: a GEMM per image, half the batch per core, whole images while the
        // patches fit BLOCK (9·64·64 elements)...
        assert_eq!(Plan::new(&g(32, 1, 64), 2), plan(16, 1, 1, 64));
        // ... else as many rows as fit (2¹⁸ / (288·64) = 14), or WIDE columns' worth (4 rows).
        assert_eq!(Plan::new(&g(32, 32, 64), 2), plan(16, 1, 1, 14));
        assert_eq!(Plan::new(&g(32, 512, 64), 2), plan(16, 1, 1, 4));
        // 3×3: a core's 16 images in one GEMM; the kernel gradient over the whole batch.
        let whole = Plan {
            whole: true,
            ..plan(16, 16, 1, 3)
        };
        assert_eq!(Plan::new(&g(32, 1, 3), 2), whole);
        // Unless its patches are too many.
        assert_eq!(Plan::new(&g(32, 2048, 3), 2), plan(16, 16, 1, 3));
        // 7×7: about WIDE columns, 16 images as 6 + 6 + 4.
        assert_eq!(Plan::new(&g(32, 1, 7), 2), plan(16, 6, 1, 7));
        // Fewer images than cores: one at a time, the GEMM itself parallel.
        assert_eq!(Plan::new(&g(1, 1, 3), 2), plan(1, 1, 2, 3));
        assert_eq!(Plan::new(&g(5, 1, 3), 1), plan(5, 5, 1, 3));
    }

    /// Pseudo-random values in [-1, 1).
    fn values(n: usize, salt: u64) -> Vec<f64> {
        (0..n as u64)
            .map(|i| {
                let z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
                let z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_grouping_of_images_and_rows_gives_the_same_convolution_and_gradients() {
        // Strided, padded per axis, pointwise, on 6×7 images; a 1×7 convolution padded by 3 on
        // 3×2 ones (its patches reach past both sides of a row).
        let geometries = [
            (3, 3, 1, 1, 1, 6, 7),
            (1, 1, 1, 0, 0, 6, 7),
            (3, 1, 2, 1, 0, 6, 7),
            (1, 7, 1, 0, 3, 6, 7),
            (1, 7, 1, 0, 3, 3, 2),
            (3, 3, 1, 1, 1, 3, 2),
        ];
        for (kh, kw, stride, ph, pw, h, w) in geometries {
            let g =
                Geometry::from_dims(&[7, 3, h, w], &[4, 3, kh, kw], (ph, pw), stride, 1).unwrap();
            let x = values(7 * 3 * h * w, 1);
            let k = values(4 * 3 * kh * kw, 2);
            let bias = values(4, 3);
            let dy = values(7 * 4 * g.hw_out(), 4);
            // The reference: one image per GEMM, one run.
            let one = Plan {
                per_part: 7,
                per_group: 1,
                gemm_threads: 1,
                rows: g.out_h(),
                whole: false,
            };
            let want = (
                forward(&g, one, &x, &k, Some(&bias)),
                input_grad(&g, one, &k, &dy),
                kernel_grad(&g, one, &x, &dy),
            );
            // Against the definition: every (output pixel, kernel offset) pair that reads an
            // input pixel adds w·x to the output, and sends dy·w back to the input and dy·x to the
            // kernel.
            let (ho, wo) = (g.out_h(), g.out_w());
            let (mut dx, mut dk) = (vec![0.0; x.len()], vec![0.0; k.len()]);
            for (i, (&got, &d)) in want.0.iter().zip(&dy).enumerate() {
                let (b, co, oh, ow) = (i / (4 * ho * wo), i / (ho * wo) % 4, i / wo % ho, i % wo);
                let mut sum = bias[co];
                for ci in 0..3 {
                    for a in 0..kh {
                        for e in 0..kw {
                            let ih = (oh * stride + a) as isize - ph as isize;
                            let iw = (ow * stride + e) as isize - pw as isize;
                            if (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw) {
                                let xi = ((b * 3 + ci) * h + ih as usize) * w + iw as usize;
                                let ki = ((co * 3 + ci) * kh + a) * kw + e;
                                sum += k[ki] * x[xi];
                                dx[xi] += d * k[ki];
                                dk[ki] += d * x[xi];
                            }
                        }
                    }
                }
                assert!((got - sum.max(0.0)).abs() < 1e-12, "{kh}×{kw} at {i}");
            }
            let near = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12);
            assert!(near(&want.1, &dx), "{kh}×{kw}: input gradient");
            assert!(near(&want.2, &dk), "{kh}×{kw}: kernel gradient");
            let plans = [1, 3, 4, 7].into_iter().flat_map(|per_part| {
                (1..=per_part).flat_map(move |per_group| {
                    [1, 2].into_iter().flat_map(move |gemm_threads| {
                        // Images alone in their group: in blocks of 1, 2, … rows; the kernel
                        // gradient over the whole batch or not.
                        (1..=ho).flat_map(move |rows| {
                            [false, true].map(|whole| Plan {
                                per_part,
                                per_group,
                                gemm_threads,
                                rows,
                                whole,
                            })
                        })
                    })
                })
            });
            // The kernel gradient's per-core sums are column- or row-major by the width of a
            // group's GEMM: the plans below take both.
            let layouts: std::collections::BTreeSet<bool> = plans
                .clone()
                .map(|plan| kernel_sums_column_major(&g, plan))
                .collect();
            if (h, w, stride) == (6, 7, 1) {
                assert_eq!(layouts.len(), 2, "{kh}×{kw}: one layout only");
            }
            for plan in plans {
                {
                    {
                        let got = (
                            forward(&g, plan, &x, &k, Some(&bias)),
                            input_grad(&g, plan, &k, &dy),
                            kernel_grad(&g, plan, &x, &dy),
                        );
                        let close = |a: &[f64], b: &[f64]| {
                            a.len() == b.len()
                                && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12)
                        };
                        assert!(
                            close(&got.0, &want.0)
                                && close(&got.1, &want.1)
                                && close(&got.2, &want.2),
                            "{kh}×{kw} s{stride} under {plan:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_valid_output_range_keeps_input_columns_inside_the_image() {
        for stride in 1..4 {
            for w in 1..9 {
                for off in -4isize..5 {
                    for wo in 0..8 {
                        let (lo, hi) = valid_range(off, stride, w, wo);
                        for ow in 0..wo {
                            let iw = ow as isize * stride as isize + off;
                            let inside = iw >= 0 && iw < w as isize;
                            assert_eq!(inside, (lo..hi).contains(&ow), "{stride} {w} {off} {ow}");
                        }
                    }
                }
            }
        }
    }
}
