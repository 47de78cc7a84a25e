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
//! candle's own `conv2d` elsewhere, so the model code is the same on every device.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

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
}

impl Elem for f32 {
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ONE: Self = 1.0;
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

/// `c = a · b`, plus `c` itself when `accumulate`, on `threads` cores: the one call into the
/// `gemm` crate.
fn gemm<T: Elem>(
    (a, av): (&[T], View),
    (b, bv): (&[T], View),
    (c, cv): (&mut [T], View),
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
    assert!(cv.extent() <= c.len(), "gemm: destination too short");
    assert!(cv.disjoint(), "gemm: destination elements overlap");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * cv.rs + j * cv.cs] = T::default();
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
    // writes (c: m × n) inside its slice through the views' strides, no two written elements
    // share an index, and `c` is borrowed mutably, so no one else reads or writes it meanwhile.
    // `T` is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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
/// x[ci][oh·s + i·d − ph][ow·s + j·d − pw]`, zero outside the image.
fn im2col<T: Elem>(g: &Geometry, x: &[T], cols: &mut [T]) {
    let (ho, wo) = (g.out_h(), g.out_w());
    let plane = g.h * g.w;
    for (r, row) in cols.chunks_mut(ho * wo).enumerate() {
        let ci = r / (g.kh * g.kw);
        let (i, j) = ((r / g.kw) % g.kh, r % g.kw);
        let src = &x[ci * plane..(ci + 1) * plane];
        let off = (j * g.dilation) as isize - g.pw as isize;
        let (lo, hi) = valid_range(off, g.stride, g.w, wo);
        for (oh, out) in row.chunks_mut(wo).enumerate() {
            let ih = (oh * g.stride + i * g.dilation) as isize - g.ph as isize;
            if ih < 0 || ih >= g.h as isize {
                out.fill(T::default());
                continue;
            }
            let line = &src[ih as usize * g.w..(ih as usize + 1) * g.w];
            out[..lo].fill(T::default());
            out[hi..].fill(T::default());
            if g.stride == 1 {
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

/// The adjoint of [`im2col`]: adds each patch entry back onto the input pixel it came from.
fn col2im<T: Elem>(g: &Geometry, cols: &[T], dx: &mut [T]) {
    let (ho, wo) = (g.out_h(), g.out_w());
    let plane = g.h * g.w;
    for (r, row) in cols.chunks(ho * wo).enumerate() {
        let ci = r / (g.kh * g.kw);
        let (i, j) = ((r / g.kw) % g.kh, r % g.kw);
        let dst = &mut dx[ci * plane..(ci + 1) * plane];
        let off = (j * g.dilation) as isize - g.pw as isize;
        let (lo, hi) = valid_range(off, g.stride, g.w, wo);
        for (oh, grad) in row.chunks(wo).enumerate() {
            let ih = (oh * g.stride + i * g.dilation) as isize - g.ph as isize;
            if ih < 0 || ih >= g.h as isize {
                continue;
            }
            let line = &mut dst[ih as usize * g.w..(ih as usize + 1) * g.w];
            for (ow, &v) in grad[lo..hi].iter().enumerate() {
                line[((lo + ow) as isize * g.stride as isize + off) as usize] += v;
            }
        }
    }
}

/// Runs `per_image(input, output, scratch, gemm threads)` over a batch: images
/// spread over the cores (each GEMM on one core) when there are at least as many as cores, else
/// one at a time with parallel GEMMs.
fn over_images<T: Elem, F>(
    n: usize,
    input: &[T],
    in_len: usize,
    out: &mut [T],
    out_len: usize,
    per_image: F,
) where
    F: Fn(&[T], &mut [T], &mut Vec<T>, usize) + Send + Sync,
{
    let threads = rayon::current_num_threads();
    if n >= threads && threads > 1 {
        input
            .par_chunks(in_len)
            .zip(out.par_chunks_mut(out_len))
            .for_each_init(Vec::new, |scratch, (x, y)| per_image(x, y, scratch, 1));
    } else {
        let mut scratch = Vec::new();
        for (x, y) in input.chunks(in_len).zip(out.chunks_mut(out_len)) {
            per_image(x, y, &mut scratch, threads);
        }
    }
}

/// The forward pass, `n × co × ho × wo`; with `bias`, `max(conv + bias, 0)` per output channel.
pub(crate) fn forward<T: Elem>(g: &Geometry, x: &[T], k: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (hw, kk) = (g.hw_out(), g.k());
    let mut y = vec![T::default(); g.n * g.co * hw];
    over_images(
        g.n,
        x,
        g.c * g.h * g.w,
        &mut y,
        g.co * hw,
        |xi, yi, cols, threads| {
            let b: &[T] = if g.pointwise() {
                xi
            } else {
                cols.resize(kk * hw, T::default());
                im2col(g, xi, cols);
                cols
            };
            gemm(
                (k, View::rows(g.co, kk, kk)),
                (b, View::rows(kk, hw, hw)),
                (yi, View::rows(g.co, hw, hw)),
                false,
                threads,
            );
            if let Some(bias) = bias {
                for (plane, &b) in yi.chunks_mut(hw).zip(bias) {
                    for v in plane {
                        let t = *v + b;
                        *v = if t > T::default() { t } else { T::default() };
                    }
                }
            }
        },
    );
    y
}

/// The input gradient: `Wᵀ · dy` per image, scattered back over the patches.
pub(crate) fn input_grad<T: Elem>(g: &Geometry, k: &[T], dy: &[T]) -> Vec<T> {
    let (hw, kk) = (g.hw_out(), g.k());
    let mut dx = vec![T::default(); g.n * g.c * g.h * g.w];
    over_images(
        g.n,
        dy,
        g.co * hw,
        &mut dx,
        g.c * g.h * g.w,
        |dyi, dxi, cols, threads| {
            // Wᵀ: K × Co, read from the Co × K kernel with row stride 1 and column stride K.
            if g.pointwise() {
                input_cols(g, k, dyi, dxi, threads);
            } else {
                cols.resize(kk * hw, T::default());
                input_cols(g, k, dyi, cols, threads);
                col2im(g, cols, dxi);
            }
        },
    );
    dx
}

/// `out (K × HoWo) = Wᵀ · dy` for one image, computed as `outᵀ = dyᵀ · W` so that the GEMM writes
/// and reads column-major views of the row-major data (no copies).
fn input_cols<T: Elem>(g: &Geometry, k: &[T], dy: &[T], out: &mut [T], threads: usize) {
    let (hw, kk) = (g.hw_out(), g.k());
    gemm(
        (dy, View::cols(hw, g.co, hw)),
        (k, View::rows(g.co, kk, kk)),
        (out, View::cols(hw, kk, hw)),
        false,
        threads,
    );
}

/// The kernel gradient: `Σₙ dy (Co × HoWo) · colsᵀ`, each thread summing its images, then the
/// threads' sums added.
pub(crate) fn kernel_grad<T: Elem>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    let (hw, kk) = (g.hw_out(), g.k());
    let size = g.co * kk;
    let per_image = |xi: &[T], dyi: &[T], acc: &mut Vec<T>, cols: &mut Vec<T>, threads: usize| {
        let b: &[T] = if g.pointwise() {
            xi
        } else {
            cols.resize(kk * hw, T::default());
            im2col(g, xi, cols);
            cols
        };
        // colsᵀ: HoWo × K, read from the K × HoWo matrix with row stride 1, column stride HoWo.
        gemm(
            (dyi, View::rows(g.co, hw, hw)),
            (b, View::cols(hw, kk, hw)),
            (acc, View::rows(g.co, kk, kk)),
            true,
            threads,
        );
    };
    let threads = rayon::current_num_threads();
    let in_len = g.c * g.h * g.w;
    if g.n >= threads && threads > 1 {
        x.par_chunks(in_len)
            .zip(dy.par_chunks(g.co * hw))
            .fold(
                || (vec![T::default(); size], Vec::new()),
                |(mut acc, mut cols), (xi, dyi)| {
                    per_image(xi, dyi, &mut acc, &mut cols, 1);
                    (acc, cols)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(
                || vec![T::default(); size],
                |mut a, b| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                    a
                },
            )
    } else {
        let (mut acc, mut cols) = (vec![T::default(); size], Vec::new());
        for (xi, dyi) in x.chunks(in_len).zip(dy.chunks(g.co * hw)) {
            per_image(xi, dyi, &mut acc, &mut cols, threads);
        }
        acc
    }
}

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("conv2d: operands must be contiguous"),
    }
}

/// Whether the CPU kernels take these operands.
fn ours(xs: &Tensor) -> bool {
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
        let out = match (s1, s2, bias) {
            (CpuStorage::F32(x), CpuStorage::F32(k), None) => {
                CpuStorage::F32(forward(&g, slice(x, l1)?, slice(k, l2)?, None))
            }
            (CpuStorage::F64(x), CpuStorage::F64(k), None) => {
                CpuStorage::F64(forward(&g, slice(x, l1)?, slice(k, l2)?, None))
            }
            (CpuStorage::F32(x), CpuStorage::F32(k), Some((CpuStorage::F32(b), l3))) => {
                CpuStorage::F32(forward(
                    &g,
                    slice(x, l1)?,
                    slice(k, l2)?,
                    Some(slice(b, l3)?),
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(k), Some((CpuStorage::F64(b), l3))) => {
                CpuStorage::F64(forward(
                    &g,
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
        let g = self.geometry(x.dims(), k.dims())?;
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(k.apply_op2_no_bwd(&dy, &Grad::Input(g))?)
        } else {
            None
        };
        let dk = x.apply_op2_no_bwd(&dy, &Grad::Kernel(g))?;
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
            Self::Input(g) => input_grad(g, a, dy),
            Self::Kernel(g) => kernel_grad(g, a, dy),
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
            (CpuStorage::F32(a), CpuStorage::F32(dy)) => {
                CpuStorage::F32(self.run(slice(a, l1)?, slice(dy, l2)?))
            }
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
