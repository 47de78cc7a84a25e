//! Image preprocessing: decoding, the TF recipe's training distortions and its evaluation crop.
//!
//! Everything here is a pure function of its inputs (and, for training, of the random generator
//! passed in), computed sequentially in `f32`, so the same image and seed give the same bytes on
//! every machine and thread count.
//!
//! Pixels follow TensorFlow's `convert_image_dtype`: a `u8` value `v` becomes `v as f32 * (1/255)`
//! in `[0, 1]`; the output is scaled to `[-1, 1]` as `(x - 0.5) * 2` (inception's
//! `image_preprocessing`), in CHW order (`out[c * size * size + y * size + x]`).
//!
//! ## Resize convention
//!
//! [`resize_bilinear`] is TF1's `tf.image.resize_bilinear` with its defaults `align_corners=False`,
//! `half_pixel_centers=False` (the "legacy" convention that inception's `image_processing.py`
//! used, not TF2's half-pixel one): with `scale = in_size as f32 / out_size as f32`, output pixel
//! `o` samples the input at `in = o as f32 * scale` (no half-pixel offset), between
//! `lo = floor(in)` and `hi = min(lo + 1, in_size - 1)` with weight `in - lo` on `hi`; rows first
//! interpolated horizontally, then vertically, exactly as TF's kernel. Scaling by 1 copies pixels.

use image::RgbImage;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;

/// `sample_distorted_bounding_box`'s `max_attempts` in the recipe: after this many rejected
/// samples the crop is the whole image.
pub const CROP_ATTEMPTS: usize = 100;
/// Largest brightness change, as a fraction of full scale: `random_brightness(max_delta=32/255)`.
pub const MAX_BRIGHTNESS_DELTA: f32 = 32.0 / 255.0;
/// Saturation factor range: `random_saturation(lower=0.5, upper=1.5)`.
pub const SATURATION_RANGE: (f32, f32) = (0.5, 1.5);
/// Largest hue rotation, in turns: `random_hue(max_delta=0.2)`.
pub const MAX_HUE_DELTA: f32 = 0.2;
/// Contrast factor range: `random_contrast(lower=0.5, upper=1.5)`.
pub const CONTRAST_RANGE: (f32, f32) = (0.5, 1.5);
/// Fraction of each side kept by the evaluation crop: `central_crop(central_fraction=0.875)`.
pub const EVAL_CENTRAL_FRACTION: f64 = 0.875;

/// Decodes a JPEG or PNG image of any size to 8-bit RGB (grey and alpha are converted; alpha is
/// dropped).
pub fn decode(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    Ok(image::load_from_memory(bytes)?.to_rgb8())
}

/// The TF recipe's training distortions (inception `image_processing.py`, `distort_image`):
///
/// 1. a random crop like `tf.image.sample_distorted_bounding_box` with no boxes given
///    (`use_image_if_no_bounding_boxes=True`): up to [`CROP_ATTEMPTS`] times, draw an aspect ratio
///    (width / height) uniformly in `[min_aspect, max_aspect)` and a height uniformly among the
///    integers whose area `round(height * aspect) * height` lies in `[min_area, max_area]` of the
///    image's area (TF's `GenerateRandomCrop`, rounding half to even as `lrintf`); a sample that
///    does not fit is rejected; if all are, the crop is the whole image. The crop's corner is
///    uniform over every position that keeps it inside the image (TF draws it from
///    `Uniform(H - h)`, which never reaches the last row or column; we include them). TF's
///    `min_object_covered=0.1` against the whole-image box would also reject crops under 10 % of
///    the area; `min_area` alone bounds the area here;
/// 2. a bilinear resize of the crop to `size`×`size` ([`resize_bilinear`]'s convention; TF cycles
///    through four resize methods by thread id, we always use bilinear);
/// 3. if `flip`, a left-right flip with probability ½;
/// 4. if `color`, TF's `distort_color`: one of its two orders, each with probability ½,
///    brightness (add `δ ∈ [-32/255, 32/255)`), saturation (×`[0.5, 1.5)` in HSV, clamped to
///    `[0, 1]`), hue (rotate by `[-0.2, 0.2)` turns), contrast (per channel, `(x - mean) * f + mean`
///    with `f ∈ [0.5, 1.5)`): order 0 is brightness, saturation, hue, contrast; order 1 is
///    brightness, contrast, saturation, hue; then clamp to `[0, 1]` (TF clamps once, at the end);
/// 5. scale to `[-1, 1]`.
///
/// Random draws, in order: the crop's attempts (aspect, height, top, left each); the flip (only if
/// `flip`); the order, brightness, saturation, hue and contrast (all five, only if `color`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainAugment {
    /// Smallest crop area, as a fraction of the image's (recipe: 0.05).
    pub min_area: f32,
    /// Largest crop area, as a fraction of the image's (recipe: 1.0).
    pub max_area: f32,
    /// Smallest crop aspect ratio, width / height (recipe: 0.75).
    pub min_aspect: f32,
    /// Largest crop aspect ratio, width / height (recipe: 1.33).
    pub max_aspect: f32,
    /// Random left-right flip.
    pub flip: bool,
    /// Random brightness, saturation, hue and contrast.
    pub color: bool,
}

impl Default for TrainAugment {
    /// The recipe's values, flip and colour distortion on.
    fn default() -> Self {
        Self {
            min_area: 0.05,
            max_area: 1.0,
            min_aspect: 0.75,
            max_aspect: 1.33,
            flip: true,
            color: true,
        }
    }
}

/// A rectangle of pixels: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: usize,
    y: usize,
    width: usize,
    height: usize,
}

impl TrainAugment {
    /// Distorts `img` into `out`: CHW `f32` in `[-1, 1]`, `3 * size * size` values. An empty image
    /// gives zeros (mid grey).
    ///
    /// # Panics
    ///
    /// If `out.len() != 3 * size * size` (a caller's mistake, not bad data).
    pub fn apply(&self, img: &RgbImage, size: usize, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        check_out(out, size);
        let (width, height) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 {
            out.fill(0.0);
            return;
        }
        let crop = self.sample_crop(width, height, rng);
        let mut px = vec![0.0f32; size * size * 3];
        resize_bilinear(img, crop, size, &mut px);
        if self.flip && rng.random::<f32>() < 0.5 {
            flip_left_right(&mut px, size);
        }
        if self.color {
            let order_one = rng.random::<f32>() >= 0.5;
            let brightness = (rng.random::<f32>() * 2.0 - 1.0) * MAX_BRIGHTNESS_DELTA;
            let saturation = SATURATION_RANGE.0
                + rng.random::<f32>() * (SATURATION_RANGE.1 - SATURATION_RANGE.0);
            let hue = (rng.random::<f32>() * 2.0 - 1.0) * MAX_HUE_DELTA;
            let contrast =
                CONTRAST_RANGE.0 + rng.random::<f32>() * (CONTRAST_RANGE.1 - CONTRAST_RANGE.0);
            adjust_brightness(&mut px, brightness);
            if order_one {
                adjust_contrast(&mut px, contrast);
                adjust_saturation(&mut px, saturation);
                adjust_hue(&mut px, hue);
            } else {
                adjust_saturation(&mut px, saturation);
                adjust_hue(&mut px, hue);
                adjust_contrast(&mut px, contrast);
            }
            for v in &mut px {
                *v = v.clamp(0.0, 1.0);
            }
        }
        write_chw(&px, size, out);
    }

    /// TF's `sample_distorted_bounding_box` without boxes; see the type's documentation.
    fn sample_crop(&self, width: usize, height: usize, rng: &mut ChaCha8Rng) -> Rect {
        let whole = Rect {
            x: 0,
            y: 0,
            width,
            height,
        };
        let sane = |v: f32| v.is_finite() && v >= 0.0;
        let usable = sane(self.min_area)
            && sane(self.max_area)
            && self.min_aspect.is_finite()
            && self.max_aspect.is_finite();
        if !usable {
            return whole;
        }
        for _ in 0..CROP_ATTEMPTS {
            let aspect =
                self.min_aspect + rng.random::<f32>() * (self.max_aspect - self.min_aspect);
            if let Some(rect) = self.random_crop(width, height, aspect, rng) {
                return rect;
            }
        }
        whole
    }

    /// One attempt: TF's `GenerateRandomCrop`.
    fn random_crop(
        &self,
        width: usize,
        height: usize,
        aspect: f32,
        rng: &mut ChaCha8Rng,
    ) -> Option<Rect> {
        if !(aspect > 0.0 && aspect.is_finite()) {
            return None;
        }
        let (w_img, h_img) = (width as i64, height as i64);
        let image_area = width as f32 * height as f32;
        let min_area = self.min_area * image_area;
        let max_area = self.max_area * image_area;
        // `as i64` saturates (and maps NaN to 0), so no value here can overflow below.
        let round = |v: f32| v.round_ties_even() as i64;
        let mut h = round((min_area / aspect).sqrt());
        let mut max_h = round((max_area / aspect).sqrt());
        if round(max_h as f32 * aspect) > w_img {
            // The largest height whose rounded width still fits.
            const EPS: f64 = 0.000_000_1;
            max_h = ((w_img as f64 + 0.5 - EPS) / f64::from(aspect)) as i64;
        }
        max_h = max_h.min(h_img);
        h = h.min(max_h);
        if h < max_h {
            h += below(rng, (max_h - h + 1) as u64) as i64;
        }
        let mut w = round(h as f32 * aspect);
        let mut area = (w as f32) * (h as f32);
        if area < min_area {
            h += 1;
            w = round(h as f32 * aspect);
            area = (w as f32) * (h as f32);
        }
        if area > max_area {
            h -= 1;
            w = round(h as f32 * aspect);
            area = (w as f32) * (h as f32);
        }
        if area < min_area || area > max_area || w > w_img || h > h_img || w <= 0 || h <= 0 {
            return None;
        }
        let y = below(rng, (h_img - h + 1) as u64) as usize;
        let x = below(rng, (w_img - w + 1) as u64) as usize;
        Some(Rect {
            x,
            y,
            width: w as usize,
            height: h as usize,
        })
    }
}

/// A uniform integer in `0..bound` (`bound >= 1`).
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    if bound <= 1 {
        0
    } else {
        rng.random_range(0..bound)
    }
}

/// The recipe's evaluation preprocessing: TF's `central_crop(0.875)` (the crop starts at
/// `trunc((side - side * 0.875) / 2)` and is symmetric, as TF computes it), a bilinear resize to
/// `size`×`size` ([`resize_bilinear`]'s convention, TF1 `resize_bilinear` with
/// `align_corners=False`), scaled to `[-1, 1]`, CHW into `out`. An empty image gives zeros.
///
/// # Panics
///
/// If `out.len() != 3 * size * size` (a caller's mistake, not bad data).
pub fn eval_transform(img: &RgbImage, size: usize, out: &mut [f32]) {
    check_out(out, size);
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        out.fill(0.0);
        return;
    }
    let start = |side: usize| {
        let side_f = side as f64;
        ((side_f - side_f * EVAL_CENTRAL_FRACTION) / 2.0) as usize
    };
    let (x, y) = (start(width), start(height));
    let crop = Rect {
        x,
        y,
        width: width - 2 * x,
        height: height - 2 * y,
    };
    let mut px = vec![0.0f32; size * size * 3];
    resize_bilinear(img, crop, size, &mut px);
    write_chw(&px, size, out);
}

fn check_out(out: &[f32], size: usize) {
    assert_eq!(
        out.len(),
        3 * size * size,
        "output buffer for a {size}×{size} image must hold 3×{size}×{size} values"
    );
}

/// `u8` → `[0, 1]` as TF's `convert_image_dtype`: `v as f32 * (1 / 255)`.
fn unit_table() -> [f32; 256] {
    let scale = 1.0f32 / 255.0;
    std::array::from_fn(|v| v as f32 * scale)
}

/// Sampling positions along one axis: for each output pixel, `(lo, hi, weight of hi)`.
fn axis_samples(start: usize, in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let pos = o as f32 * scale;
            let lo = (pos.floor() as usize).min(in_size - 1);
            let hi = (lo + 1).min(in_size - 1);
            (start + lo, start + hi, pos - lo as f32)
        })
        .collect()
}

/// Bilinear resize of the `crop` of `img` to `size`×`size`, into `out` as HWC `f32` in `[0, 1]`.
///
/// TF1 `tf.image.resize_bilinear(align_corners=False)` (legacy, no half-pixel centres): output
/// pixel `o` samples the crop at `o * (crop_side / size)`; see the module documentation.
fn resize_bilinear(img: &RgbImage, crop: Rect, size: usize, out: &mut [f32]) {
    let unit = unit_table();
    let raw = img.as_raw();
    let stride = img.width() as usize * 3;
    let xs = axis_samples(crop.x, crop.width, size);
    let ys = axis_samples(crop.y, crop.height, size);
    for (oy, &(y_lo, y_hi, y_w)) in ys.iter().enumerate() {
        let top_row = &raw[y_lo * stride..(y_lo + 1) * stride];
        let bottom_row = &raw[y_hi * stride..(y_hi + 1) * stride];
        let out_row = &mut out[oy * size * 3..(oy + 1) * size * 3];
        for (ox, &(x_lo, x_hi, x_w)) in xs.iter().enumerate() {
            for c in 0..3 {
                let tl = unit[usize::from(top_row[x_lo * 3 + c])];
                let tr = unit[usize::from(top_row[x_hi * 3 + c])];
                let bl = unit[usize::from(bottom_row[x_lo * 3 + c])];
                let br = unit[usize::from(bottom_row[x_hi * 3 + c])];
                let top = tl + (tr - tl) * x_w;
                let bottom = bl + (br - bl) * x_w;
                out_row[ox * 3 + c] = top + (bottom - top) * y_w;
            }
        }
    }
}

/// Mirrors each row of an HWC `size`×`size` image.
fn flip_left_right(px: &mut [f32], size: usize) {
    for row in px.chunks_exact_mut(size * 3) {
        for x in 0..size / 2 {
            let (a, b) = (x * 3, (size - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// HWC `[0, 1]` → CHW `[-1, 1]`: `(x - 0.5) * 2`.
fn write_chw(px: &[f32], size: usize, out: &mut [f32]) {
    let plane = size * size;
    for (i, rgb) in px.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (rgb[c] - 0.5) * 2.0;
        }
    }
}

/// `tf.image.adjust_brightness`: adds `delta` to every value (no clamp).
fn adjust_brightness(px: &mut [f32], delta: f32) {
    for v in px {
        *v += delta;
    }
}

/// `tf.image.adjust_contrast`: per channel, `(x - mean) * factor + mean`, the mean over all pixels.
fn adjust_contrast(px: &mut [f32], factor: f32) {
    let n = px.len() / 3;
    if n == 0 {
        return;
    }
    let mut sums = [0.0f64; 3];
    for rgb in px.chunks_exact(3) {
        for c in 0..3 {
            sums[c] += f64::from(rgb[c]);
        }
    }
    let means = sums.map(|s| (s / n as f64) as f32);
    for rgb in px.chunks_exact_mut(3) {
        for c in 0..3 {
            rgb[c] = (rgb[c] - means[c]) * factor + means[c];
        }
    }
}

/// Hue in sixths of a turn, `[0, 6)`, and the chroma `max - min`; `None` for a grey pixel. The
/// formulas of TF's CPU `rgb_to_hsv` (adjust_saturation_op.cc), valid for any real values.
fn hue_sixths(r: f32, g: f32, b: f32) -> Option<(f32, f32)> {
    let v_max = r.max(g).max(b);
    let range = v_max - r.min(g).min(b);
    if range <= 0.0 || range.is_nan() {
        return None;
    }
    let mut h = if r == v_max {
        (g - b) / range
    } else if g == v_max {
        (b - r) / range + 2.0
    } else {
        (r - g) / range + 4.0
    };
    if h < 0.0 {
        h += 6.0;
    }
    if h >= 6.0 {
        h -= 6.0;
    }
    Some((h, range))
}

/// RGB of hue `h` (sixths, `[0, 6)`), chroma `c` and minimum `m`: TF's CPU `hsv_to_rgb` with
/// `c = s * v` and `m = v - c`.
fn from_hue_sixths(h: f32, c: f32, m: f32) -> [f32; 3] {
    let sector = (h.floor() as i64).rem_euclid(6);
    let x = c * (1.0 - ((h.rem_euclid(2.0)) - 1.0).abs());
    let [r, g, b] = match sector {
        0 => [c, x, 0.0],
        1 => [x, c, 0.0],
        2 => [0.0, c, x],
        3 => [0.0, x, c],
        4 => [x, 0.0, c],
        _ => [c, 0.0, x],
    };
    [r + m, g + m, b + m]
}

/// `tf.image.adjust_saturation` (CPU kernel): to HSV with `s = (max - min) / max` (0 when
/// `max <= 0`), `s = clamp(s * factor, 0, 1)`, back to RGB with the same hue and value.
fn adjust_saturation(px: &mut [f32], factor: f32) {
    for rgb in px.chunks_exact_mut(3) {
        let (r, g, b) = (rgb[0], rgb[1], rgb[2]);
        let v = r.max(g).max(b);
        let (h, range) = hue_sixths(r, g, b).unwrap_or((0.0, 0.0));
        let s = if v > 0.0 { range / v } else { 0.0 };
        let s = (s * factor).clamp(0.0, 1.0);
        let c = s * v;
        rgb.copy_from_slice(&from_hue_sixths(h, c, v - c));
    }
}

/// `tf.image.adjust_hue` (CPU kernel): rotates the hue by `delta` turns, keeping each pixel's
/// minimum and maximum (TF's `rgb_to_hv_range` / `hv_range_to_rgb`); grey pixels are unchanged.
fn adjust_hue(px: &mut [f32], delta: f32) {
    for rgb in px.chunks_exact_mut(3) {
        let (r, g, b) = (rgb[0], rgb[1], rgb[2]);
        let Some((h, range)) = hue_sixths(r, g, b) else {
            continue;
        };
        let mut h = h + delta * 6.0;
        while h < 0.0 {
            h += 6.0;
        }
        while h >= 6.0 {
            h -= 6.0;
        }
        let v_min = r.min(g).min(b);
        rgb.copy_from_slice(&from_hue_sixths(h, range, v_min));
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    /// A `width`×`height` image whose pixels encode their position.
    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 5 + 3) as u8, ((x * y) % 251) as u8])
        })
    }

    fn scaled(v: u8) -> f32 {
        (f32::from(v) * (1.0 / 255.0) - 0.5) * 2.0
    }

    fn at(out: &[f32], size: usize, c: usize, x: usize, y: usize) -> f32 {
        out[c * size * size + y * size + x]
    }

    const PLAIN: TrainAugment = TrainAugment {
        min_area: 1.0,
        max_area: 1.0,
        min_aspect: 1.0,
        max_aspect: 1.0,
        flip: false,
        color: false,
    };

    #[test]
    fn decode_reads_png_and_rejects_garbage() {
        let img = pattern(5, 3);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode(&png).unwrap(), img);
        assert!(decode(b"not an image").is_err());
        assert!(decode(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn whole_crop_at_the_same_size_copies_pixels() {
        let img = pattern(16, 16);
        let mut out = vec![0.0; 3 * 16 * 16];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        PLAIN.apply(&img, 16, &mut rng, &mut out);
        for y in 0..16 {
            for x in 0..16 {
                let p = img.get_pixel(x as u32, y as u32);
                for c in 0..3 {
                    assert_eq!(at(&out, 16, c, x, y), scaled(p[c]), "c {c} x {x} y {y}");
                }
            }
        }
    }

    #[test]
    fn resize_follows_tf1_legacy_sampling() {
        // 2 pixels → 4: samples at 0, 0.5, 1, 1.5 (clamped to the last pixel).
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([[0, 200][x as usize]; 3]));
        let rect = Rect {
            x: 0,
            y: 0,
            width: 2,
            height: 1,
        };
        let mut out = vec![0.0; 4 * 4 * 3];
        resize_bilinear(&img, rect, 4, &mut out);
        let v = 200.0 * (1.0f32 / 255.0);
        let row: Vec<f32> = out[..12].chunks(3).map(|p| p[0]).collect();
        assert_eq!(row, [0.0, v / 2.0, v, v]);
        // 4 → 2 picks pixels 0 and 2 exactly.
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 10 + y) as u8; 3]));
        let rect = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 4,
        };
        let mut out = vec![0.0; 2 * 2 * 3];
        resize_bilinear(&img, rect, 2, &mut out);
        let got: Vec<f32> = out.chunks(3).map(|p| p[0] * 255.0).collect();
        for (g, want) in got.iter().zip([0.0, 20.0, 2.0, 22.0]) {
            assert!((g - want).abs() < 1e-4, "{got:?}");
        }
    }

    #[test]
    fn flip_mirrors_rows_and_happens_about_half_the_time() {
        let img = pattern(8, 8);
        let flip = TrainAugment {
            flip: true,
            ..PLAIN
        };
        let mut plain = vec![0.0; 3 * 64];
        PLAIN.apply(&img, 8, &mut ChaCha8Rng::seed_from_u64(0), &mut plain);
        let mut flipped = 0;
        for seed in 0..40 {
            let mut out = vec![0.0; 3 * 64];
            flip.apply(&img, 8, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            if out == plain {
                continue;
            }
            flipped += 1;
            for c in 0..3 {
                for y in 0..8 {
                    for x in 0..8 {
                        assert_eq!(at(&out, 8, c, x, y), at(&plain, 8, c, 7 - x, y));
                    }
                }
            }
        }
        assert!((8..=32).contains(&flipped), "{flipped} of 40 flipped");
    }

    #[test]
    fn eval_crops_the_centre_87_5_percent() {
        // 32 × 32: the crop starts at trunc((32 - 28) / 2) = 2 and is 28 wide; at size 28 it is
        // copied exactly.
        let img = pattern(32, 32);
        let mut out = vec![0.0; 3 * 28 * 28];
        eval_transform(&img, 28, &mut out);
        for y in 0..28 {
            for x in 0..28 {
                let p = img.get_pixel(x as u32 + 2, y as u32 + 2);
                for c in 0..3 {
                    assert_eq!(at(&out, 28, c, x, y), scaled(p[c]));
                }
            }
        }
        // 10 × 7: trunc(0.625) = 0 across, trunc(0.4375) = 0 down: the whole image.
        let img = pattern(10, 7);
        let mut out = vec![0.0; 3 * 5 * 5];
        eval_transform(&img, 5, &mut out);
        assert_eq!(at(&out, 5, 1, 0, 0), scaled(img.get_pixel(0, 0)[1]));
    }

    #[test]
    fn a_seed_fixes_the_output_and_values_stay_in_range() {
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
        });
        let aug = TrainAugment::default();
        let run = |seed| {
            let mut out = vec![0.0; 3 * 24 * 24];
            aug.apply(&img, 24, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            out
        };
        for seed in 0..50 {
            let out = run(seed);
            assert_eq!(out, run(seed));
            assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)), "seed {seed}");
        }
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn crops_respect_area_aspect_and_bounds() {
        let aug = TrainAugment::default();
        let (w, h) = (100, 80);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut smallest = 1.0f32;
        for _ in 0..500 {
            let r = aug.sample_crop(w, h, &mut rng);
            assert!(r.x + r.width <= w && r.y + r.height <= h, "{r:?}");
            let area = (r.width * r.height) as f32 / (w * h) as f32;
            assert!((0.05..=1.0).contains(&area), "{r:?}");
            smallest = smallest.min(area);
            let aspect = r.width as f32 / r.height as f32;
            if (r.width, r.height) != (w, h) {
                // Rounding the width moves the aspect by at most half a pixel's worth.
                let slack = 0.5 / r.height as f32;
                assert!(aspect >= 0.75 - slack && aspect <= 1.33 + slack, "{r:?}");
            }
        }
        assert!(smallest < 0.2, "{smallest}");
        // Impossible settings fall back to the whole image.
        let odd = TrainAugment {
            min_area: 2.0,
            max_area: 3.0,
            ..aug
        };
        let whole = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        assert_eq!(odd.sample_crop(w, h, &mut rng), whole);
        let nan = TrainAugment {
            min_aspect: f32::NAN,
            ..aug
        };
        assert_eq!(nan.sample_crop(w, h, &mut rng), whole);
    }

    #[test]
    fn neutral_colour_adjustments_keep_pixels() {
        let mut px: Vec<f32> = (0..300).map(|i| ((i * 37) % 256) as f32 / 255.0).collect();
        let before = px.clone();
        adjust_saturation(&mut px, 1.0);
        adjust_hue(&mut px, 0.0);
        adjust_contrast(&mut px, 1.0);
        for (a, b) in px.iter().zip(&before) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // A full turn of hue is the identity too; a third of a turn cycles the channels.
        let mut red = vec![0.9, 0.2, 0.1];
        adjust_hue(&mut red, 1.0 / 3.0);
        for (a, b) in red.iter().zip([0.1, 0.9, 0.2]) {
            assert!((a - b).abs() < 1e-5, "{red:?}");
        }
        // Saturation 0 gives grey at the pixel's value.
        let mut px = vec![0.9, 0.2, 0.1];
        adjust_saturation(&mut px, 0.0);
        assert_eq!(px, [0.9, 0.9, 0.9]);
    }

    #[test]
    fn empty_images_give_grey() {
        let img = RgbImage::new(0, 0);
        let mut out = vec![1.0; 3 * 4];
        TrainAugment::default().apply(&img, 2, &mut ChaCha8Rng::seed_from_u64(0), &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        eval_transform(&img, 2, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
