//! Direct convolution on the CPU for k×k kernels with stride 1 or 2 (f32, AVX-512): no patch matrix.
//!
//! Output channels go in blocks of 32 (two 16-lane vectors) over tiles of up to 14 output pixels
//! (a run of one output row, or a few whole short rows): for each kernel element `(ic, i, j)` the
//! block's 32 weights are loaded once (packed beforehand, `K × 32` per block) and each pixel's input
//! value `x[ic][oh + i][ow + j]` is broadcast into its two running sums; the 28 sums stay in
//! registers for the whole `K` sum. The input is read in place (a zero-padded copy per image when
//! the convolution pads), so the `K × HoWo` patch matrix of the GEMM path (`conv`), and the GEMM's
//! own packed copy of it, are never written. On Inception's small planes (1×7, 7×1, 3×3 and 5×5
//! kernels at 7×7 and 15×15) this ran at 80 % of a core's measured FMA peak where im2col + GEMM ran
//! at 45–65 %.
//!
//! With stride 2 a tile's pixels read every other input column (a kernel per stride). The input
//! gradient of a stride-1 convolution is the same computation: a convolution of the output
//! gradient, padded by `k − 1 − p`, with the kernel flipped and its two channel axes swapped (with
//! stride 2 it stays on the GEMM path). The kernel gradient is the same kernel with the roles
//! turned (see [`kernel_grad`]).
//!
//! The kernels are chosen at run time: on a CPU without AVX-512 (or with `RETRAIN_DIRECT_CONV=0`),
//! [`takes_forward`], [`takes_input_grad`] and [`takes_kernel_grad`] say no and the GEMM path runs;
//! they also say no where the GEMM path measured faster.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::conv::{Elem, Geometry, filled};

/// f32 lanes in one vector register.
const LANES: usize = 16;

/// Output channels per block: two vectors.
const BLOCK: usize = 2 * LANES;

/// Output pixels per tile: with two vectors each, 28 of the 32 vector registers hold sums.
const PIXELS: usize = 14;

/// Whether this CPU runs the direct kernels: AVX-512F, unless `RETRAIN_DIRECT_CONV=0`.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let wanted = std::env::var("RETRAIN_DIRECT_CONV").map_or(true, |v| v != "0");
        wanted && avx512()
    })
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

/// Whether the kernels can compute this convolution: stride 1 or 2, padding smaller than the
/// kernel, on a CPU with the kernels.
fn fits(g: &Geometry) -> bool {
    (1..=2).contains(&g.stride) && g.dilation == 1 && g.ph < g.kh && g.pw < g.kw && enabled()
}

/// Whether [`forward`] takes this convolution: one the kernels compute, larger than 1×1, whose
/// output channels come in whole vectors of 16 (blocks of 32 with stride 2) and whose output rows
/// have a [`measured_width`], or are 3 wide with stride 2 (Mixed_7a's reductions at 139×139:
/// 10–35 % faster). Where they measured slower than the GEMM path it keeps its work: a 3×3
/// plane's tiles have 9 pixels with stride 1 (and a block's weights are read from memory again for
/// every image), and a 1×1 convolution, a plain GEMM with no patch matrix, measured no faster on
/// most planes. A last block of 16 channels (48 or 80 of them) runs a one-vector kernel.
pub(crate) fn takes_forward(g: &Geometry) -> bool {
    fits(g)
        && (g.kh > 1 || g.kw > 1)
        && g.co
            .is_multiple_of(if g.stride == 1 { LANES } else { BLOCK })
        && (measured_width(g.out_w()) || (g.out_w() == 3 && g.stride == 2))
}

/// Whether [`input_grad`] takes this convolution: as [`takes_forward`], with the input's channels
/// and width in place of the output's (the input gradient's outputs), for stride 1 only (with a
/// stride the gradient is no plain convolution); on planes wider than [`SMALL_PLANE`], only with
/// whole blocks and sums of at most 576 terms (the stem's 288 and 576 measured faster; 80 channels
/// at 33×33 and 864 terms at 35×35 slower than the GEMM path). Inputs 3 wide too (Mixed_7's 3×3
/// and 1×3 at 139×139: 10–25 % faster; its 3×1 about even).
pub(crate) fn takes_input_grad(g: &Geometry) -> bool {
    let small = g.w <= SMALL_PLANE;
    fits(g)
        && g.stride == 1
        && (g.kh > 1 || g.kw > 1)
        && g.c.is_multiple_of(if small { LANES } else { BLOCK })
        && (small || g.co * g.kh * g.kw <= 576)
        && (measured_width(g.w) || g.w == 3)
}

/// Output rows the kernels measured faster on: at least 5 wide, but not 8 to 13 (the 8×8 planes
/// of Mixed_7 at 299×299 ran 20–40 % slower than the GEMM path; 7×7 and 15×15 faster).
fn measured_width(w: usize) -> bool {
    w >= 5 && !(8..=13).contains(&w)
}

/// The forward pass, `n × co × ho × wo`; with `bias`, `max(conv + bias, 0)` per output channel.
pub(crate) fn forward(g: &Geometry, x: &[f32], k: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(
        fits(g),
        "direct convolution: {g:?} is not one the kernels compute"
    );
    let kk = g.c * g.kh * g.kw;
    assert_eq!(k.len(), g.co * kk, "conv2d: kernel of the wrong length");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.co, "conv2d: bias of the wrong length");
    }
    let panels = pack(g.co, kk, k, kk, |e| e);
    run(g, x, &panels, bias)
}

/// The input gradient, `n × c × h × w`: the output gradient padded by `k − 1 − p` per axis,
/// convolved with `W'[ic][co][i][j] = W[co][ic][kh − 1 − i][kw − 1 − j]`.
pub(crate) fn input_grad(g: &Geometry, k: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        fits(g) && g.stride == 1,
        "direct convolution: {g:?} is not one the kernels compute"
    );
    let t = Geometry {
        n: g.n,
        c: g.co,
        h: g.out_h(),
        w: g.out_w(),
        co: g.c,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        ph: g.kh - 1 - g.ph,
        pw: g.kw - 1 - g.pw,
        dilation: 1,
    };
    let (kh, kw) = (g.kh, g.kw);
    assert_eq!(
        k.len(),
        g.co * g.c * kh * kw,
        "conv2d: kernel of the wrong length"
    );
    // Row `ic`, element `(o, i, j)`: each (o, ic) pair's `kh·kw` elements reversed.
    let khkw = kh * kw;
    let panels = pack(g.c, g.co * khkw, k, khkw, |e| {
        let (o, t) = (e / khkw, e % khkw);
        o * g.c * khkw + khkw - 1 - t
    });
    run(&t, dy, &panels, None)
}

/// Whether [`kernel_grad`] takes this convolution: one the kernels compute, with whole blocks of
/// output channels, output rows of a [`measured_width`] up to [`SMALL_PLANE`] and kernel rows at
/// most 14 wide. On larger planes (the stem's, 35×35 at 299×299) each core's output-gradient panel
/// outgrows the L2 cache and the GEMM path measured faster.
pub(crate) fn takes_kernel_grad(g: &Geometry) -> bool {
    fits(g)
        && (g.kh > 1 || g.kw > 1)
        && g.co.is_multiple_of(BLOCK)
        && g.out_w() <= SMALL_PLANE
        && measured_width(g.out_w())
        && g.kw <= PIXELS
}

/// The widest rows of a small plane (15×15 and 7×7 at 139×139, 17×17 at 299×299): the widest
/// output rows [`takes_kernel_grad`] takes, and the widest input rows [`takes_input_grad`] takes
/// with a part-filled block or a long sum.
const SMALL_PLANE: usize = 17;

/// The kernel gradient, `co × c × kh × kw`: `Σ dy[n][o][oh][ow] · x[n][ic][oh + i − ph][ow + j −
/// pw]` over images and output pixels. The same kernels with the roles turned: the output
/// gradient, packed per block of 32 output channels as `pixels × 32`, takes the weights' place,
/// the pixels the kernel elements', and a tile is up to 14 kernel elements (rows of a channel's
/// kernel, or the same row of several channels' kernels: see [`kernel_tiles`]). Each core sums its run of the batch,
/// in groups of images that fit its L2 cache; the cores' sums are added in order (the same result
/// every run).
pub(crate) fn kernel_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    kernel_grad_in_groups(g, x, dy, GROUP_BYTES)
}

/// [`kernel_grad`] with groups of images of up to `group_bytes` (padded; at least one image).
fn kernel_grad_in_groups(g: &Geometry, x: &[f32], dy: &[f32], group_bytes: usize) -> Vec<f32> {
    assert!(
        fits(g) && g.co.is_multiple_of(BLOCK) && g.kw <= PIXELS,
        "direct convolution: no kernel gradient for {g:?}"
    );
    let (ho, wo) = (g.out_h(), g.out_w());
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let (in_len, plane, src_len) = (g.c * g.h * g.w, ho * wo, g.c * hp * wp);
    let (kk, out_len) = (g.c * g.kh * g.kw, g.co * ho * wo);
    assert_eq!(x.len(), g.n * in_len, "conv2d: input of the wrong length");
    assert_eq!(
        dy.len(),
        g.n * out_len,
        "conv2d: output gradient of the wrong length"
    );
    let tiles = kernel_tiles(g, hp * wp, wp);
    let threads = rayon::current_num_threads().max(1);
    let per_part = g.n.div_ceil(threads).max(1);
    let per_group = (group_bytes / (4 * src_len).max(1)).clamp(1, per_part);
    assert!(
        per_group * src_len <= u32::MAX as usize,
        "conv2d: padded images of {} elements",
        per_group * src_len
    );
    let (padded, s) = (g.ph > 0 || g.pw > 0, g.stride);
    let part = |(xs, dys): (&[f32], &[f32])| {
        let mut dk = vec![0.0; g.co * kk];
        f32::with_scratch(|pad, panels| {
            let groups = xs
                .chunks(per_group * in_len)
                .zip(dys.chunks(per_group * out_len));
            for (first, (xg, dyg)) in groups.enumerate().map(|(i, p)| (i == 0, p)) {
                let m = xg.len() / in_len;
                let (src, stride) = if padded {
                    (pad_images(g, xg, pad), src_len)
                } else {
                    (xg, in_len)
                };
                // Every pixel of the group: where its top-left input is in `src`.
                let offsets: Vec<u32> = (0..m)
                    .flat_map(|i| {
                        (0..ho).flat_map(move |oh| {
                            (0..wo).map(move |ow| (i * stride + (oh * wp + ow) * s) as u32)
                        })
                    })
                    .collect();
                let pixels = m * plane;
                // The group's output gradient as `pixels × 32` panels, one per block.
                let panels = grow(panels, g.co * pixels);
                for (b, panel) in panels.chunks_mut(pixels * BLOCK).enumerate() {
                    for (i, dyi) in dyg.chunks(out_len).enumerate() {
                        for r in 0..BLOCK {
                            let row = &dyi[(b * BLOCK + r) * plane..][..plane];
                            for (q, &v) in row.iter().enumerate() {
                                panel[(i * plane + q) * BLOCK + r] = v;
                            }
                        }
                    }
                }
                for (b, panel) in panels.chunks(pixels * BLOCK).enumerate() {
                    let dkb = &mut dk[b * BLOCK * kk..][..BLOCK * kk];
                    for t in &tiles {
                        // The farthest read: the last pixel plus the tile's last element.
                        let last = offsets.last().map_or(0, |&o| o as usize)
                            + t.x
                            + (t.rows - 1) * t.x_stride
                            + t.cols;
                        assert!(last <= src.len(), "direct convolution: images too short");
                        assert!(t.k + (t.rows - 1) * t.k_stride + t.cols <= kk);
                        let dest = Dest {
                            y: dkb[t.k..].as_mut_ptr(),
                            wo: t.k_stride,
                            plane: kk,
                            rows: BLOCK,
                            bias: std::ptr::null(),
                            add: !first,
                            part: std::ptr::null_mut(),
                            resume: false,
                            finish: true,
                        };
                        // SAFETY: the kernel reads `panel` (`pixels × BLOCK` = `offsets.len() ×
                        // BLOCK`), and `src` at `offset + t.x + r·x_stride + c` for r < t.rows,
                        // c < t.cols (inside, asserted for the largest); it writes (or adds to)
                        // `dkb` at `o·kk + t.k + r·k_stride + c` for o < BLOCK, inside `dkb`
                        // (`BLOCK × kk`; the row bound asserted), which is initialised. The
                        // kernel was picked for this tile's shape and runs only where `fits`
                        // found AVX-512.
                        unsafe {
                            (t.kernel)(
                                panel.as_ptr(),
                                &offsets,
                                src[t.x..].as_ptr(),
                                t.x_stride,
                                &dest,
                            )
                        };
                    }
                }
            }
        });
        dk
    };
    let sums: Vec<Vec<f32>> = x
        .par_chunks(per_part * in_len)
        .zip(dy.par_chunks(per_part * out_len))
        .map(part)
        .collect();
    // The cores' sums added in order.
    let mut total = vec![0.0; g.co * kk];
    total
        .par_chunks_mut(SUM_CHUNK)
        .enumerate()
        .for_each(|(i, out)| {
            for part in &sums {
                for (t, &v) in out.iter_mut().zip(&part[i * SUM_CHUNK..]) {
                    *t += v;
                }
            }
        });
    total
}

/// Elements per task when the cores' kernel-gradient sums are added.
const SUM_CHUNK: usize = 1 << 12;

/// A tile of kernel elements for [`kernel_grad`]: `rows × cols` elements whose inputs start `x`
/// into a padded image (rows `x_stride` apart, columns adjacent) and whose gradients start `k`
/// into a kernel's `c × kh × kw` (rows `k_stride` apart).
struct KernelTile {
    x: usize,
    x_stride: usize,
    k: usize,
    k_stride: usize,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

/// The tiles of a kernel: where a channel's kernel has fewer rows than fit 14 elements (1×7, 3×3,
/// 5×5), the same row of the kernels of several input channels (3×3: 12 elements a tile rather
/// than 9, its kernel gradient 6 % faster at 15×15); else the rows of each channel's kernel, as
/// many as fit. One-column kernels (7×1) keep to their own channel: 14 channels' rows a tile ran
/// 40 % slower than 7 rows of one.
fn kernel_tiles(g: &Geometry, image: usize, wp: usize) -> Vec<KernelTile> {
    let per = (PIXELS / g.kw).max(1);
    let mut out = Vec::new();
    let mut add = |x, x_stride, k, k_stride, rows| {
        out.push(KernelTile {
            x,
            x_stride,
            k,
            k_stride,
            rows,
            cols: g.kw,
            kernel: kernel(rows, g.kw, 1),
        })
    };
    if g.kh < per && g.kw > 1 {
        let khkw = g.kh * g.kw;
        for i in 0..g.kh {
            for ic in (0..g.c).step_by(per) {
                let rows = per.min(g.c - ic);
                add(
                    ic * image + i * wp,
                    image,
                    (ic * g.kh + i) * g.kw,
                    khkw,
                    rows,
                );
            }
        }
    } else {
        for ic in 0..g.c {
            for i in (0..g.kh).step_by(per) {
                let rows = per.min(g.kh - i);
                add(ic * image + i * wp, wp, (ic * g.kh + i) * g.kw, g.kw, rows);
            }
        }
    }
    out
}

/// An `m × kk` matrix as blocks of `BLOCK` rows, each `kk × BLOCK` (row fastest), the last block
/// padded with zeros, from `src`: row `i`'s element `e` is `src[start(e) + i·stride]`. Written in
/// the panels' order, a column of a block at a time, from rows that stay in the L1 cache for the
/// next columns (row by row, each write touched another cache line of a panel larger than L1).
fn pack(
    m: usize,
    kk: usize,
    src: &[f32],
    stride: usize,
    start: impl Fn(usize) -> usize + Sync,
) -> Vec<f32> {
    let mut panels = vec![0.0; m.div_ceil(BLOCK) * kk * BLOCK];
    panels
        .par_chunks_mut(kk * BLOCK)
        .enumerate()
        .for_each(|(b, panel)| {
            let rows = BLOCK.min(m - b * BLOCK);
            for (e, column) in panel.chunks_mut(BLOCK).enumerate() {
                let from = &src[start(e) + b * BLOCK * stride..][..(rows - 1) * stride + 1];
                // SAFETY: `pack` runs for the direct kernels only, where `fits` found AVX-512;
                // `from` holds `rows` values `stride` apart, `column` room for `BLOCK ≥ rows`.
                unsafe { gather(from, stride, &mut column[..rows]) };
            }
        });
    panels
}

/// `column[r] = from[r · stride]` for every `r`, 16 values a gather.
///
/// # Safety
///
/// The CPU has AVX-512F; `from` holds `(column.len() − 1) · stride + 1` values or more.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather(from: &[f32], stride: usize, column: &mut [f32]) {
    use std::arch::x86_64::{
        _mm512_mask_i32gather_ps, _mm512_mask_storeu_ps, _mm512_mullo_epi32, _mm512_set1_epi32,
        _mm512_setr_epi32, _mm512_setzero_ps,
    };
    let rows = column.len();
    assert!(rows == 0 || from.len() > (rows - 1) * stride);
    let step = i32::try_from(stride).expect("direct convolution: kernel too large to pack");
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(step));
    for lo in (0..rows).step_by(LANES) {
        let mask = (u32::MAX >> (32 - (rows - lo).min(LANES))) as u16;
        // SAFETY: lane `l < rows − lo` (masked) reads `from[(lo + l) · stride]`, inside `from`
        // (asserted), and writes `column[lo + l]`; masked-off lanes touch nothing.
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(
                _mm512_setzero_ps(),
                mask,
                offsets,
                from.as_ptr().add(lo * stride),
            );
            _mm512_mask_storeu_ps(column.as_mut_ptr().add(lo), mask, v);
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn gather(_: &[f32], _: usize, _: &mut [f32]) {
    unreachable!("direct convolution kernels exist on x86-64 only")
}

/// The convolution of `x` (`n × c × h × w`) with packed kernel `panels`.
fn run(g: &Geometry, x: &[f32], panels: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ho, wo) = (g.out_h(), g.out_w());
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let (in_len, plane) = (g.c * g.h * g.w, ho * wo);
    let out_len = g.co * plane;
    assert_eq!(x.len(), g.n * in_len, "conv2d: input of the wrong length");
    let kk = g.c * g.kh * g.kw;
    assert!(
        g.c * hp * wp <= u32::MAX as usize,
        "conv2d: a padded image of {} elements",
        g.c * hp * wp
    );
    // Where kernel element (ic, i, j) reads, relative to a pixel's top-left input.
    let offsets: Vec<u32> = (0..g.c)
        .flat_map(|ic| {
            (0..g.kh).flat_map(move |i| (0..g.kw).map(move |j| (ic * hp * wp + i * wp + j) as u32))
        })
        .collect();
    let tiles = tiles(ho, wo, g.stride);
    let padded = g.ph > 0 || g.pw > 0;
    let src_len = g.c * hp * wp;
    let blocks = g.co.div_ceil(BLOCK);
    let one = |b: usize, xi: &[f32], yb: &mut [MaybeUninit<f32>], tiles: &[Tile]| {
        let panel = &panels[b * kk * BLOCK..][..kk * BLOCK];
        let bias = bias.map(|v| &v[b * BLOCK..][..yb.len() / plane]);
        block(
            panel,
            &offsets,
            (xi, wp, g.stride),
            tiles,
            (yb, wo, plane),
            bias,
            Chunk::whole(),
        );
    };
    let threads = rayon::current_num_threads().max(1);
    if g.n < threads {
        // Too few images to go round: one at a time, its blocks of channels over the cores.
        // SAFETY: every block of every image is written by `block`, whose tiles cover the plane.
        return unsafe {
            filled(g.n * out_len, |y| {
                let mut pad = Vec::new();
                for (xi, yi) in x.chunks(in_len).zip(y.chunks_mut(out_len)) {
                    let xi = if padded {
                        pad_images(g, xi, &mut pad)
                    } else {
                        xi
                    };
                    yi.par_chunks_mut(BLOCK * plane)
                        .enumerate()
                        .for_each(|(b, yb)| one(b, xi, yb, &tiles));
                }
            })
        };
    }
    // Each core's run of images in groups whose inputs fit half of a core's L2 cache; within a
    // group, one block of channels (its panel read from L2 again and again) over all its images.
    // An image alone in its group (a large plane) goes one band of tiles (an output row) at a
    // time through all the blocks, so that the band's input rows stay in cache meanwhile.
    let per_part = g.n.div_ceil(threads);
    let per_group = (GROUP_BYTES / (4 * src_len).max(1)).clamp(1, per_part);
    let band = if per_group > 1 {
        tiles.len()
    } else {
        tiles.iter().take_while(|t| t.oh == 0).count()
    };
    let part = |(xs, ys): (&[f32], &mut [MaybeUninit<f32>])| {
        f32::with_scratch(|pad, scratch| {
            for (xg, yg) in xs
                .chunks(per_group * in_len)
                .zip(ys.chunks_mut(per_group * out_len))
            {
                let (src, stride) = if padded {
                    (pad_images(g, xg, pad), src_len)
                } else {
                    (xg, in_len)
                };
                for tiles in tiles.chunks(band.max(1)) {
                    let per_image = tiles.len() * PIXELS * BLOCK;
                    let parts = grow(scratch, per_group * per_image);
                    for b in 0..blocks {
                        let panel = &panels[b * kk * BLOCK..][..kk * BLOCK];
                        let bias = bias.map(|v| &v[b * BLOCK..][..BLOCK.min(g.co - b * BLOCK)]);
                        for (k0, k1) in k_chunks(kk) {
                            for ((i, yi), parts) in yg
                                .chunks_mut(out_len)
                                .enumerate()
                                .zip(parts.chunks_mut(per_image))
                            {
                                let yb = &mut yi[b * BLOCK * plane..];
                                let rows = BLOCK.min(g.co - b * BLOCK);
                                let xi = &src[i * stride..][..stride];
                                block(
                                    &panel[k0 * BLOCK..k1 * BLOCK],
                                    &offsets[k0..k1],
                                    (xi, wp, g.stride),
                                    tiles,
                                    (&mut yb[..rows * plane], wo, plane),
                                    bias,
                                    Chunk {
                                        parts,
                                        resume: k0 > 0,
                                        finish: k1 == kk,
                                    },
                                );
                            }
                        }
                    }
                }
            }
        })
    };
    // SAFETY: every block of every image is written by `block`, whose tiles cover the plane.
    unsafe {
        filled(g.n * out_len, |y| {
            x.par_chunks(per_part * in_len)
                .zip(y.par_chunks_mut(per_part * out_len))
                .for_each(part)
        })
    }
}

/// The parts of a sum over `kk` kernel elements: runs of about [`K_CHUNK`], so that their part of
/// a block's packed kernel stays in the L1 cache while every tile of a group of images adds it.
fn k_chunks(kk: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = kk.div_ceil(K_CHUNK).max(1);
    (0..n).map(move |i| (kk * i / n, kk * (i + 1) / n))
}

/// Kernel elements per part of a sum in [`run`]: a block's 256 × 32 weights, 32 KiB, in a 48 KiB
/// L1 cache. Measured against whole sums (batch 32, both cores, best of 12 interleaved): the
/// forward on 15×15 planes 7–11 % faster (48→64 5×5: 264 → 287 GFLOP/s), on 7×7 planes and the
/// input gradient no different.
const K_CHUNK: usize = 256;

/// Bytes of input images (padded) a core works through per block of output channels: half of its
/// L2 cache, the other half left to the block's packed kernel.
const GROUP_BYTES: usize = 1 << 20;

/// Images `x` (each `c × h × w`) zero-padded (each `c × hp × wp`) into the start of `pad`: every
/// element of the part returned is written.
fn pad_images<'a>(g: &Geometry, x: &[f32], pad: &'a mut Vec<f32>) -> &'a [f32] {
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let out = grow(pad, x.len() / (g.h * g.w) * hp * wp);
    if g.w <= LANES && wp <= 2 * LANES {
        // SAFETY: the direct kernels (whose inputs these are) run only where `fits` found
        // AVX-512; the widths are checked above.
        unsafe { pad_short_rows(g, x, out) };
    } else {
        pad_rows(g, x, out);
    }
    out
}

/// [`pad_images`] a row at a time, into `out` (as long as the padded images).
fn pad_rows(g: &Geometry, x: &[f32], out: &mut [f32]) {
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    for (src, dst) in x.chunks(g.h * g.w).zip(out.chunks_mut(hp * wp)) {
        let (top, rest) = dst.split_at_mut(g.ph * wp);
        let (rows, bottom) = rest.split_at_mut(g.h * wp);
        top.fill(0.0);
        bottom.fill(0.0);
        for (row, out) in src.chunks(g.w).zip(rows.chunks_mut(wp)) {
            out[..g.pw].fill(0.0);
            out[g.pw..g.pw + g.w].copy_from_slice(row);
            out[g.pw + g.w..].fill(0.0);
        }
    }
}

/// [`pad_images`] for rows of at most 16 values, padded to at most 32: each padded row written
/// whole from one masked load, two lane permutations and two masked stores (a call to `memcpy`
/// and two to `memset` per row of 7 or 15 values cost three times the copy itself).
///
/// # Safety
///
/// The CPU has AVX-512F; `g.w ≤ 16` and `g.w + 2·g.pw ≤ 32`; `out` holds the padded images of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pad_short_rows(g: &Geometry, x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::{
        _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_maskz_permutexvar_ps,
        _mm512_set1_epi32, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_sub_epi32,
    };
    let (w, pw, wp) = (g.w, g.pw, g.w + 2 * g.pw);
    let hp = g.h + 2 * g.ph;
    assert!(w <= LANES && wp <= 2 * LANES && w > 0);
    assert_eq!(out.len(), x.len() / (g.h * w) * hp * wp);
    // Lane l of the padded row's first (second) vector is input lane l − pw (l + 16 − pw), where
    // that is one of the row's values; else zero.
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let pw_lanes = i32::try_from(pw).expect("padding narrower than a vector");
    let shift = |by: i32| _mm512_sub_epi32(lanes, _mm512_set1_epi32(by));
    let (first, second) = (shift(pw_lanes), shift(pw_lanes - LANES as i32));
    let inside = |from: usize| -> u16 {
        (0..LANES)
            .filter(|&l| (pw..pw + w).contains(&(from + l)))
            .fold(0, |m, l| m | 1 << l)
    };
    let (in_first, in_second) = (inside(0), inside(LANES));
    let load = (u32::MAX >> (32 - w)) as u16;
    let store_first = (u32::MAX >> (32 - wp.min(LANES))) as u16;
    let store_second = u32::MAX.checked_shr((32 + LANES - wp) as u32).unwrap_or(0) as u16;
    let zero = _mm512_setzero_ps();
    for (plane, dst) in x.chunks_exact(g.h * w).zip(out.chunks_exact_mut(hp * wp)) {
        for (r, row) in dst.chunks_exact_mut(wp).enumerate() {
            let (a, b) = if (g.ph..g.ph + g.h).contains(&r) {
                let src = &plane[(r - g.ph) * w..][..w];
                // SAFETY: the load reads `w` lanes of `src` (masked), which has `w` values.
                let v = unsafe { _mm512_maskz_loadu_ps(load, src.as_ptr()) };
                (
                    _mm512_maskz_permutexvar_ps(in_first, first, v),
                    _mm512_maskz_permutexvar_ps(in_second, second, v),
                )
            } else {
                (zero, zero)
            };
            // SAFETY: the stores write the row's `wp` values (masked): up to 16, then the rest.
            unsafe {
                _mm512_mask_storeu_ps(row.as_mut_ptr(), store_first, a);
                if wp > LANES {
                    _mm512_mask_storeu_ps(row.as_mut_ptr().add(LANES), store_second, b);
                }
            }
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pad_short_rows(_: &Geometry, _: &[f32], _: &mut [f32]) {
    unreachable!("direct convolution kernels exist on x86-64 only")
}

/// The first `len` elements of `v`, grown if it is shorter but never shrunk: the thread's scratch
/// keeps its size for the GEMM path's patch matrices, which would otherwise be zero-filled afresh
/// after every direct convolution.
fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// One block of output channels of one image: `yb` holds its `rows × plane` outputs (`rows ≤
/// BLOCK`, row stride `wo` within a plane), `panel` its packed weights, `x` the (padded) image with
/// row stride `wp`.
fn block(
    panel: &[f32],
    offsets: &[u32],
    (x, wp, s): (&[f32], usize, usize),
    tiles: &[Tile],
    (yb, wo, plane): (&mut [MaybeUninit<f32>], usize, usize),
    bias: Option<&[f32]>,
    chunk: Chunk<'_>,
) {
    let rows = yb.len() / plane;
    let whole = !chunk.resume && chunk.finish;
    assert!(whole || chunk.parts.len() >= tiles.len() * PIXELS * BLOCK);
    assert!(rows <= BLOCK && yb.len() == rows * plane);
    assert_eq!(panel.len(), offsets.len() * BLOCK);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), rows);
    }
    for (i, t) in tiles.iter().enumerate() {
        // The farthest read: the last offset plus the tile's last pixel's top-left input.
        let first = (t.oh * wp + t.ow) * s;
        let last = offsets.last().map_or(0, |&o| o as usize)
            + first
            + ((t.rows - 1) * wp + t.cols - 1) * s;
        assert!(last < x.len(), "direct convolution: image too short");
        assert!((t.oh + t.rows - 1) * wo + t.ow + t.cols <= plane);
        let dest = Dest {
            y: yb[t.oh * wo + t.ow..].as_mut_ptr().cast(),
            wo,
            plane,
            rows,
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            add: false,
            part: if whole {
                std::ptr::null_mut()
            } else {
                chunk.parts[i * PIXELS * BLOCK..].as_mut_ptr()
            },
            resume: chunk.resume,
            finish: chunk.finish,
        };
        // SAFETY: the kernel reads `panel` (`offsets.len() × BLOCK`, asserted), and `x` at
        // `first + offset + (r·wp + c)·s` for r < t.rows, c < t.cols, inside `x` (asserted for
        // the largest); it writes `yb` at `o·plane + r·wo + c` from the tile's first pixel for
        // o < rows, inside `yb` (the plane bound asserted); `bias` has `rows` values when not
        // null; a part sum reads or writes its tile's `PIXELS × BLOCK` values of `parts` (long
        // enough for every tile, asserted). The kernel was picked for this tile's shape and runs
        // only where `fits` found AVX-512.
        let kernel = if rows <= LANES { t.half } else { t.kernel };
        unsafe { kernel(panel.as_ptr(), offsets, x[first..].as_ptr(), wp * s, &dest) };
    }
}

/// Which part of a sum over `K` a call to [`block`] adds: with `resume`, the sums so far are in
/// `parts` (each tile's `PIXELS × BLOCK`); without `finish`, they are left there.
struct Chunk<'a> {
    parts: &'a mut [f32],
    resume: bool,
    finish: bool,
}

impl Chunk<'_> {
    /// The whole sum in one call.
    fn whole() -> Self {
        Chunk {
            parts: &mut [],
            resume: false,
            finish: true,
        }
    }
}

/// Where a tile's sums go: output channel `o`, row `r`, column `c` of the tile at
/// `y + o·plane + r·wo + c`, for `o < rows`; with `bias` (else null), `max(sum + bias[o], 0)`;
/// with `add`, added to what is there (else written over storage that may be uninitialised).
/// A sum over part of `K` goes through `part` (`rows × cols × BLOCK` values, pixel by pixel):
/// with `resume` the sums start from there (else from zero); without `finish` they end there, and
/// `y` is not touched.
struct Dest {
    y: *mut f32,
    wo: usize,
    plane: usize,
    rows: usize,
    bias: *const f32,
    add: bool,
    part: *mut f32,
    resume: bool,
    finish: bool,
}

/// A tile kernel: (packed panel, offsets, the tile's first input pixel, input row stride, where).
type Kernel = unsafe fn(*const f32, &[u32], *const f32, usize, &Dest);

/// `rows × cols` output pixels from `(oh, ow)`, and the kernel for that shape.
struct Tile {
    oh: usize,
    ow: usize,
    rows: usize,
    cols: usize,
    kernel: Kernel,
    /// The kernel for a block of at most 16 channels (the last, part-filled one).
    half: Kernel,
}

/// The tiles of an `ho × wo` output plane: runs of 7 to 14 pixels of each row when rows are at
/// least 14 wide, else as many whole rows as fit 14 pixels.
fn tiles(ho: usize, wo: usize, stride: usize) -> Vec<Tile> {
    let mut out = Vec::new();
    let mut add = |oh, ow, rows, cols| {
        out.push(Tile {
            oh,
            ow,
            rows,
            cols,
            kernel: kernel(rows, cols, stride),
            half: half_kernel(rows, cols, stride),
        })
    };
    if wo >= PIXELS {
        let parts = wo.div_ceil(PIXELS);
        for oh in 0..ho {
            for p in 0..parts {
                let (a, b) = (wo * p / parts, wo * (p + 1) / parts);
                add(oh, a, 1, b - a);
            }
        }
    } else if let Some(per) = PIXELS.checked_div(wo) {
        let mut oh = 0;
        while oh < ho {
            let rows = per.min(ho - oh);
            add(oh, 0, rows, wo);
            oh += rows;
        }
    }
    out
}

/// The sums of one tile, `R × C` pixels by `V` vectors of output channels (`V ≤ 2`: the first
/// `16·V` of the block), over all `offsets`; the tile's pixels' inputs are `S` apart along a row
/// (the stride) and `wp` apart between rows.
///
/// # Safety
///
/// The CPU has AVX-512F. `a` points to `offsets.len() × BLOCK` values; `x + off + r·wp + c·S`
/// is readable for every offset, `r < R`, `c < C`; `dest` names writable outputs (see [`Dest`]),
/// and, with `resume` or without `finish`, `R·C·BLOCK` values at `dest.part` to read or write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const C: usize, const S: usize, const V: usize>(
    a: *const f32,
    offsets: &[u32],
    x: *const f32,
    wp: usize,
    dest: &Dest,
) {
    use std::arch::x86_64::_mm512_storeu_ps;
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps};
    // SAFETY: the caller vouches for every pointer read and written here (see above).
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); V]; C]; R];
        if dest.resume {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (c, acc) in acc.iter_mut().enumerate() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_loadu_ps(dest.part.add((r * C + c) * BLOCK + v * LANES));
                    }
                }
            }
        }
        let mut a = a;
        for &off in offsets {
            let w: [_; V] = std::array::from_fn(|v| _mm512_loadu_ps(a.add(v * LANES)));
            a = a.add(BLOCK);
            let p = x.add(off as usize);
            for (r, acc) in acc.iter_mut().enumerate() {
                let pr = p.add(r * wp);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*pr.add(c * S));
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_fmadd_ps(w, b, *acc);
                    }
                }
            }
        }
        if !dest.finish {
            for (r, acc) in acc.iter().enumerate() {
                for (c, acc) in acc.iter().enumerate() {
                    for (v, &acc) in acc.iter().enumerate() {
                        _mm512_storeu_ps(dest.part.add((r * C + c) * BLOCK + v * LANES), acc);
                    }
                }
            }
            return;
        }
        store(&acc, dest);
    }
}

/// A finished tile's sums (`R × C` pixels by `V` vectors of 16 channels) into `dest`: per vector,
/// the bias and ReLU applied to all its channels at once, the pixels-by-channels block turned
/// into channels by pixels in registers ([`transpose`]), and each channel's run of a row's `C`
/// pixels written by one masked store (or added to what is there). Written a value at a time
/// (448 scalar stores a tile, through a copy on the stack), the same sums made the stem's
/// convolutions, whose large outputs are not in the cache, 5–10 % slower (the first one 27 %);
/// the bits written are the same.
///
/// # Safety
///
/// The CPU has AVX-512F; `dest` names writable outputs (see [`Dest`]) for `R × C` pixels.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const C: usize, const V: usize>(
    acc: &[[[std::arch::x86_64::__m512; V]; C]; R],
    dest: &Dest,
) {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_mask_storeu_ps, _mm512_maskz_compress_ps, _mm512_maskz_loadu_ps,
        _mm512_max_ps, _mm512_setzero_ps,
    };
    let lanes = |n: usize| (u32::MAX >> (32 - n)) as u16;
    let row = lanes(C);
    let zero = _mm512_setzero_ps();
    for v in 0..V {
        let first = v * LANES;
        if first >= dest.rows {
            break;
        }
        let channels = (dest.rows - first).min(LANES);
        let mut pixels = [zero; LANES];
        for (r, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                pixels[r * C + c] = acc[v];
            }
        }
        // SAFETY (all below): the caller vouches for `dest`: `bias`, when not null, has
        // `dest.rows` values (the load takes this vector's `channels` of them); channel `o <
        // dest.rows`'s pixel `(r, c)` is at `y + o·plane + r·wo + c`, and each store (or load)
        // covers `c < C` of one row.
        unsafe {
            if !dest.bias.is_null() {
                let bias = _mm512_maskz_loadu_ps(lanes(channels), dest.bias.add(first));
                for p in &mut pixels[..R * C] {
                    *p = _mm512_max_ps(_mm512_add_ps(*p, bias), zero);
                }
            }
            let by_channel = transpose(pixels);
            for (o, &values) in by_channel[..channels].iter().enumerate() {
                let y = dest.y.add((first + o) * dest.plane);
                for r in 0..R {
                    let values = if r == 0 {
                        values
                    } else {
                        _mm512_maskz_compress_ps(row << (r * C), values)
                    };
                    let y = y.add(r * dest.wo);
                    let values = if dest.add {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(row, y), values)
                    } else {
                        values
                    };
                    _mm512_mask_storeu_ps(y, row, values);
                }
            }
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 rows: `out[j][i] = rows[i][j]`, in four rounds of
/// 16 lane shuffles (pairs within 128-bit lanes, then quads, then 128-bit lanes twice).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(rows: [std::arch::x86_64::__m512; LANES]) -> [std::arch::x86_64::__m512; LANES] {
    use std::arch::x86_64::{
        _mm512_shuffle_f32x4, _mm512_shuffle_ps, _mm512_unpackhi_ps, _mm512_unpacklo_ps,
    };
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, low and high pairs of each 128-bit lane.
    let mut t = rows;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4g+k], lane L: rows 4g..4g+4 of column 4L + k.
    let mut u = t;
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_shuffle_ps::<0x44>(a, c);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(b, d);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
    }
    // Column 4L + k: lane L of u[k], u[4+k], u[8+k], u[12+k], in that order.
    let mut out = u;
    for k in 0..4 {
        let p0 = _mm512_shuffle_f32x4::<0x44>(u[k], u[4 + k]);
        let p1 = _mm512_shuffle_f32x4::<0xEE>(u[k], u[4 + k]);
        let q0 = _mm512_shuffle_f32x4::<0x44>(u[8 + k], u[12 + k]);
        let q1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + k], u[12 + k]);
        out[k] = _mm512_shuffle_f32x4::<0x88>(p0, q0);
        out[4 + k] = _mm512_shuffle_f32x4::<0xDD>(p0, q0);
        out[8 + k] = _mm512_shuffle_f32x4::<0x88>(p1, q1);
        out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(p1, q1);
    }
    out
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const R: usize, const C: usize, const S: usize, const V: usize>(
    _: *const f32,
    _: &[u32],
    _: *const f32,
    _: usize,
    _: &Dest,
) {
    unreachable!("direct convolution kernels exist on x86-64 only")
}

/// The kernel for `rows × cols` tiles with stride 1 or 2: every shape [`tiles`] makes (`rows ·
/// cols ≤ 14`); with [`half_kernel`], the one for a block of at most 16 channels (stride 1; the
/// full kernel with stride 2, whose part-filled blocks none of Inception's convolutions have).
macro_rules! kernels {
    ($(($r:literal, $c:literal)),* $(,)?) => {
        fn kernel(rows: usize, cols: usize, stride: usize) -> Kernel {
            match (rows, cols, stride) {
                $(($r, $c, 1) => tile::<$r, $c, 1, 2>,)*
                $(($r, $c, 2) => tile::<$r, $c, 2, 2>,)*
                _ => unreachable!("no {rows}×{cols} tile kernel with stride {stride}"),
            }
        }

        fn half_kernel(rows: usize, cols: usize, stride: usize) -> Kernel {
            match (rows, cols, stride) {
                $(($r, $c, 1) => tile::<$r, $c, 1, 1>,)*
                _ => kernel(rows, cols, stride),
            }
        }
    };
}

kernels!(
    (1, 1),
    (2, 1),
    (3, 1),
    (4, 1),
    (5, 1),
    (6, 1),
    (7, 1),
    (8, 1),
    (9, 1),
    (10, 1),
    (11, 1),
    (12, 1),
    (13, 1),
    (14, 1),
    (1, 2),
    (2, 2),
    (3, 2),
    (4, 2),
    (5, 2),
    (6, 2),
    (7, 2),
    (1, 3),
    (2, 3),
    (3, 3),
    (4, 3),
    (1, 4),
    (2, 4),
    (3, 4),
    (1, 5),
    (2, 5),
    (1, 6),
    (2, 6),
    (1, 7),
    (2, 7),
    (1, 8),
    (1, 9),
    (1, 10),
    (1, 11),
    (1, 12),
    (1, 13),
    (1, 14),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_block_of_sums_is_transposed_in_registers() {
        if unavailable() {
            return;
        }
        use std::arch::x86_64::{__m512, _mm512_loadu_ps, _mm512_storeu_ps};
        let m: Vec<f32> = (0..LANES * LANES).map(|i| i as f32).collect();
        // SAFETY: AVX-512F is there (checked above); each load and store covers one row of 16.
        let t = unsafe {
            let rows: [__m512; LANES] =
                std::array::from_fn(|i| _mm512_loadu_ps(m[i * LANES..].as_ptr()));
            let mut t = vec![0.0f32; LANES * LANES];
            for (j, col) in transpose(rows).iter().enumerate() {
                _mm512_storeu_ps(t[j * LANES..].as_mut_ptr(), *col);
            }
            t
        };
        for i in 0..LANES {
            for j in 0..LANES {
                assert_eq!(t[j * LANES + i], m[i * LANES + j], "({i}, {j})");
            }
        }
    }

    #[test]
    fn tiles_cover_every_output_pixel_once_with_a_kernel_for_their_shape() {
        for ho in 0..20 {
            for wo in 0..40 {
                let mut seen = vec![0u8; ho * wo];
                for t in tiles(ho, wo, 1 + (ho + wo) % 2) {
                    assert!(t.rows * t.cols <= PIXELS && t.rows >= 1 && t.cols >= 1);
                    for r in 0..t.rows {
                        for c in 0..t.cols {
                            seen[(t.oh + r) * wo + t.ow + c] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{ho}×{wo}: {seen:?}");
            }
        }
    }

    #[test]
    fn short_rows_are_padded_as_row_by_row() {
        if unavailable() {
            return;
        }
        for (h, w, ph, pw) in [
            (7, 7, 0, 3),
            (7, 7, 3, 0),
            (7, 7, 1, 1),
            (15, 15, 2, 2),
            (15, 15, 1, 1),
            (3, 16, 1, 8),
            (2, 1, 1, 0),
            (4, 9, 2, 3),
            (5, 16, 0, 0),
        ] {
            let g = Geometry {
                n: 3,
                c: 2,
                h,
                w,
                co: 16,
                kh: 2 * ph + 1,
                kw: 2 * pw + 1,
                stride: 1,
                ph,
                pw,
                dilation: 1,
            };
            let x = values(g.n * g.c * h * w, 5);
            let mut want = vec![f32::NAN; g.n * g.c * (h + 2 * ph) * (w + 2 * pw)];
            pad_rows(&g, &x, &mut want);
            // Scratch left dirty by a larger earlier use, as the thread's scratch is.
            let mut pad = vec![f32::NAN; want.len() + 40];
            let got = pad_images(&g, &x, &mut pad);
            assert_eq!(got, &want[..], "{h}×{w} padded by {ph}, {pw}");
        }
    }

    /// Values in [-1, 1) from a counter (no RNG needed).
    fn values(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// The convolution (with `bias`, the biased ReLU), its input and kernel gradients for `dy`, by
    /// their definitions in f64.
    fn reference(
        g: &Geometry,
        x: &[f32],
        k: &[f32],
        bias: Option<&[f32]>,
        dy: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (ho, wo) = (g.out_h(), g.out_w());
        let mut y = vec![0.0; g.n * g.co * ho * wo];
        let mut dx = vec![0.0; x.len()];
        let mut dk = vec![0.0; k.len()];
        for (i, out) in y.iter_mut().enumerate() {
            let (b, o, oh, ow) = (
                i / (g.co * ho * wo),
                i / (ho * wo) % g.co,
                i / wo % ho,
                i % wo,
            );
            let mut sum = bias.map_or(0.0, |v| f64::from(v[o]));
            for ic in 0..g.c {
                for a in 0..g.kh {
                    for e in 0..g.kw {
                        let ih = (oh * g.stride + a) as isize - g.ph as isize;
                        let iw = (ow * g.stride + e) as isize - g.pw as isize;
                        if (0..g.h as isize).contains(&ih) && (0..g.w as isize).contains(&iw) {
                            let xi = ((b * g.c + ic) * g.h + ih as usize) * g.w + iw as usize;
                            let ki = ((o * g.c + ic) * g.kh + a) * g.kw + e;
                            sum += f64::from(k[ki]) * f64::from(x[xi]);
                            dx[xi] += f64::from(dy[i]) * f64::from(k[ki]);
                            dk[ki] += f64::from(dy[i]) * f64::from(x[xi]);
                        }
                    }
                }
            }
            *out = if bias.is_some() { sum.max(0.0) } else { sum };
        }
        (y, dx, dk)
    }

    /// Whether this CPU lacks the kernels (said on stderr: the tests have nothing to check).
    fn unavailable() -> bool {
        if !enabled() {
            eprintln!("no AVX-512 here: the direct kernels are not used on this CPU");
        }
        !enabled()
    }

    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );

    #[test]
    fn the_direct_kernels_compute_the_convolution_and_its_gradients() {
        if unavailable() {
            return;
        }
        // (n, c, h, w, co, kh, kw, ph, pw, stride): padding per axis, rows wider than a tile
        // (split into runs) and narrower (several rows per tile), part-filled blocks, a batch
        // smaller than the core count (blocks spread over the cores) and larger, stride 2.
        let cases = [
            (3, 5, 9, 30, 40, 3, 3, 1, 1, 1),
            (1, 7, 7, 7, 33, 1, 7, 0, 3, 1),
            (5, 6, 7, 7, 64, 7, 1, 3, 0, 1),
            (2, 3, 11, 6, 32, 5, 5, 2, 2, 1),
            (4, 2, 6, 17, 20, 3, 2, 0, 1, 1),
            (3, 4, 3, 3, 96, 3, 3, 1, 1, 1),
            (9, 3, 5, 13, 16, 2, 3, 1, 2, 1),
            (6, 3, 8, 9, 32, 1, 3, 0, 1, 1),
            (7, 2, 9, 6, 64, 3, 1, 1, 0, 1),
            (5, 4, 9, 8, 32, 3, 3, 0, 0, 1),
            (3, 64, 7, 7, 32, 1, 1, 0, 0, 1),
            (3, 5, 15, 31, 32, 3, 3, 0, 0, 2),
            (4, 6, 15, 15, 64, 3, 3, 1, 1, 2),
            (1, 3, 9, 13, 40, 2, 3, 0, 1, 2),
            (2, 5, 7, 7, 64, 3, 3, 0, 0, 2),
        ];
        for case in cases {
            check(case);
        }
    }

    #[test]
    fn sums_over_several_parts_of_the_kernel_add_up_to_the_whole() {
        if unavailable() {
            return;
        }
        // Sums of more than `K_CHUNK` terms, forward (c·kh·kw) and input gradient (co·kh·kw):
        // two and three parts, uneven rows, a part-filled block, stride 2. A 2-thread pool, so
        // that the images go round the cores in groups (the path that splits the sums) on any
        // machine.
        let cases = [
            (4, 40, 7, 7, 48, 3, 3, 1, 1, 1),
            (3, 30, 6, 16, 32, 5, 5, 2, 2, 1),
            (2, 36, 11, 11, 32, 3, 3, 0, 0, 2),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for case in cases {
            let (c, kh, kw, co) = (case.1, case.5, case.6, case.4);
            assert!(c * kh * kw > K_CHUNK && co * kh * kw > K_CHUNK);
            pool.install(|| check(case));
        }
    }

    /// The kernels against [`reference`] for `(n, c, h, w, co, kh, kw, ph, pw, stride)`.
    fn check((n, c, h, w, co, kh, kw, ph, pw, stride): Case) {
        {
            let g = Geometry {
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
                dilation: 1,
            };
            assert!(fits(&g));
            let x = values(n * c * h * w, 1);
            let k = values(co * c * kh * kw, 2);
            let bias = values(co, 3);
            let dy = values(n * co * g.out_h() * g.out_w(), 4);
            let (want, want_dx, want_dk) = reference(&g, &x, &k, None, &dy);
            let (want_relu, ..) = reference(&g, &x, &k, Some(&bias), &dy);
            // f32 rounding grows with the number of terms in a sum (up to 64 here: 1e-5).
            let terms = (c * kh * kw).max(co * kh * kw);
            let tolerance = 1e-5 * (terms as f64 / 64.0).max(1.0);
            let close = |got: &[f32], want: &[f64], what: &str| {
                assert_eq!(got.len(), want.len(), "{g:?}: {what}");
                for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() <= tolerance * (1.0 + b.abs()),
                        "{g:?}: {what} at {i}: {a} vs {b}"
                    );
                }
            };
            close(&forward(&g, &x, &k, None), &want, "output");
            close(
                &forward(&g, &x, &k, Some(&bias)),
                &want_relu,
                "biased ReLU output",
            );
            if stride == 1 {
                close(&input_grad(&g, &k, &dy), &want_dx, "input gradient");
            }
            let kernel_grad = |group_bytes| kernel_grad_in_groups(&g, &x, &dy, group_bytes);
            let has_kernel_grad = co.is_multiple_of(BLOCK) && kw <= PIXELS;
            if has_kernel_grad {
                close(&kernel_grad(GROUP_BYTES), &want_dk, "kernel gradient");
                assert_eq!(kernel_grad(GROUP_BYTES), kernel_grad(GROUP_BYTES));
            }
            // The same bits every run.
            assert_eq!(forward(&g, &x, &k, None), forward(&g, &x, &k, None));
            if has_kernel_grad {
                // One image per group: each core's sum added up over several passes.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                let dk = pool.install(|| kernel_grad(1));
                close(&dk, &want_dk, "kernel gradient, one image per group");
            }
        }
    }
}
