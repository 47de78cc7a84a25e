//! Synthetic 32×32 images: deterministic from a seed, learnable per class, asymmetric.
//!
//! Each image is a class-coloured background with a red ramp along x and a green ramp along y
//! (so no flip, rotation, transpose or channel swap leaves it unchanged), brightness jitter and
//! per-pixel noise, plus the class's glyph (a 5×5 bit pattern drawn at 2× at a random place) in the
//! class's second colour. Values stay inside 3..=252 before the glyph, so nothing saturates.

use rand::{Rng, RngCore};

pub const SIDE: usize = 32;
pub const PLANE: usize = SIDE * SIDE;
/// Bytes per image: 1024 red, 1024 green, 1024 blue, each plane row-major.
pub const ROW: usize = 3 * PLANE;

/// Hue-spread class colours: `(background, glyph)` as RGB in 0..=255.
fn class_colours(class: usize, n_classes: usize) -> ([f32; 3], [f32; 3]) {
    // Golden-ratio hue spacing keeps neighbours apart whatever the class count.
    let hue = (class as f32 * 0.618_034).fract();
    let level = [0.45, 0.6, 0.75][class % 3];
    let background = hsv(hue, 0.55, level);
    let glyph = hsv(
        (hue + 0.5).fract(),
        0.8,
        if n_classes > 10 { 0.9 } else { 0.95 },
    );
    (background, glyph)
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let sector = (h * 6.0).floor();
    let f = h * 6.0 - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let (r, g, b) = match sector as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// The class's 5×5 glyph: 25 bits from a fixed mix of the class index, with the top-left corner set
/// and the bottom-right clear so that the glyph itself is never symmetric.
fn glyph(class: usize) -> u32 {
    let mut x = (class as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x as u32) & 0x1ff_ffff | 1) & !(1 << 24)
}

/// Draws one image of `class` into `row` (CIFAR layout: red plane, green plane, blue plane).
pub fn render(class: usize, n_classes: usize, rng: &mut impl RngCore, row: &mut [u8]) {
    assert_eq!(row.len(), ROW);
    let (background, ink) = class_colours(class, n_classes);
    let brightness = rng.random_range(-24.0f32..=24.0);
    let mut base = [0f32; 3];
    for c in 0..3 {
        // Leave room for the ramps (0..=62 on red and green) and the noise (±12).
        base[c] = (background[c] * 0.45 + 45.0 + brightness).clamp(15.0, 150.0);
    }
    let mut noise = [0u8; ROW];
    rng.fill_bytes(&mut noise);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let ramps = [2.0 * x as f32, 2.0 * y as f32, 0.0];
            for c in 0..3 {
                let idx = c * PLANE + y * SIDE + x;
                let jitter = f32::from(noise[idx] % 25) - 12.0;
                row[idx] = (base[c] + ramps[c] + jitter).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    let bits = glyph(class);
    let scale = 2;
    let span = 5 * scale;
    let top = rng.random_range(0..=SIDE - span);
    let left = rng.random_range(0..=SIDE - span);
    let shade = rng.random_range(0.8f32..=1.0);
    for gy in 0..5 {
        for gx in 0..5 {
            if bits >> (gy * 5 + gx) & 1 == 0 {
                continue;
            }
            for dy in 0..scale {
                for dx in 0..scale {
                    let (y, x) = (top + gy * scale + dy, left + gx * scale + dx);
                    for c in 0..3 {
                        row[c * PLANE + y * SIDE + x] = (ink[c] * shade).round() as u8;
                    }
                }
            }
        }
    }
}

/// Pixel (y, x) channel c of a CIFAR row.
pub fn pixel(row: &[u8], y: usize, x: usize, c: usize) -> u8 {
    row[c * PLANE + y * SIDE + x]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The image seen through one of the 8 symmetries of the square and one of the 6 channel
    /// orders.
    fn transformed(row: &[u8], symmetry: usize, channels: [usize; 3]) -> Vec<u8> {
        let mut out = vec![0; ROW];
        let n = SIDE - 1;
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (sy, sx) = match symmetry {
                    0 => (y, x),
                    1 => (y, n - x),
                    2 => (n - y, x),
                    3 => (n - y, n - x),
                    4 => (x, y),
                    5 => (x, n - y),
                    6 => (n - x, y),
                    _ => (n - x, n - y),
                };
                for c in 0..3 {
                    out[c * PLANE + y * SIDE + x] = pixel(row, sy, sx, channels[c]);
                }
            }
        }
        out
    }

    #[test]
    fn no_flip_rotation_transpose_or_channel_swap_leaves_an_image_unchanged() {
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for class in 0..100 {
            let mut row = vec![0; ROW];
            render(class, 100, &mut rng, &mut row);
            for symmetry in 0..8 {
                for (order_idx, order) in orders.iter().enumerate() {
                    if symmetry == 0 && order_idx == 0 {
                        continue;
                    }
                    assert_ne!(
                        transformed(&row, symmetry, *order),
                        row,
                        "class {class}: symmetry {symmetry}, channels {order:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn glyphs_are_distinct_per_class() {
        let mut glyphs: Vec<u32> = (0..100).map(glyph).collect();
        glyphs.sort_unstable();
        glyphs.dedup();
        assert_eq!(glyphs.len(), 100);
    }
}
