//! The JPEG encoder: decodable by an independent decoder (the `image` crate's, zune-jpeg), close
//! to the source at quality 100, any size, deterministic.

use image::RgbImage;
use retrain_tfrecord::jpeg::{JpegEncoder, JpegError};

fn noisy(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    RgbImage::from_fn(width, height, |x, y| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (state >> 26) as u8; // 0..63
        image::Rgb([
            ((x * 255) / width.max(1)) as u8 ^ noise,
            ((y * 255) / height.max(1)) as u8,
            if (x / 4 + y / 4) % 2 == 0 { 250 } else { 5 },
        ])
    })
}

fn round_trip(img: &RgbImage, quality: u8) -> (Vec<u8>, RgbImage) {
    let mut jpeg = Vec::new();
    JpegEncoder::new(quality)
        .unwrap()
        .encode_rgb(img.as_raw(), img.width(), img.height(), &mut jpeg)
        .unwrap();
    let decoded = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .unwrap()
        .into_rgb8();
    (jpeg, decoded)
}

fn errors(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let diffs: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    (*diffs.iter().max().unwrap(), mean)
}

#[test]
fn quality_100_is_near_lossless_at_any_size() {
    for (w, h) in [(1, 1), (8, 8), (32, 32), (7, 5), (33, 17), (64, 9), (3, 70)] {
        let img = noisy(w, h, w * 100 + h);
        let (jpeg, decoded) = round_trip(&img, 100);
        assert_eq!(&jpeg[..2], b"\xff\xd8");
        assert_eq!(&jpeg[jpeg.len() - 2..], b"\xff\xd9");
        let (max, mean) = errors(&img, &decoded);
        assert!(max <= 6 && mean < 1.5, "{w}×{h}: max {max}, mean {mean}");
    }
}

#[test]
fn extreme_images_encode() {
    // Saturated colours and hard edges give the largest coefficients (category 10 AC, 11 DC).
    let img = RgbImage::from_fn(32, 32, |x, y| {
        if (x + y) % 2 == 0 {
            image::Rgb([255, 0, 255])
        } else {
            image::Rgb([0, 255, 0])
        }
    });
    let (_, decoded) = round_trip(&img, 100);
    let (max, _) = errors(&img, &decoded);
    assert!(max <= 8, "max {max}");
    for value in [0u8, 255] {
        let flat = RgbImage::from_pixel(16, 16, image::Rgb([value; 3]));
        let (_, decoded) = round_trip(&flat, 100);
        assert!(errors(&flat, &decoded).0 <= 1);
    }
}

#[test]
fn lower_qualities_are_smaller_and_still_decode() {
    let img = noisy(48, 40, 3);
    let (q100, _) = round_trip(&img, 100);
    let (q75, decoded) = round_trip(&img, 75);
    assert!(q75.len() < q100.len());
    let (_, mean) = errors(&img, &decoded);
    assert!(mean < 12.0, "mean {mean}");
}

#[test]
fn the_bytes_are_deterministic() {
    let img = noisy(32, 32, 9);
    assert_eq!(round_trip(&img, 100).0, round_trip(&img, 100).0);
    // Appends to what the buffer holds.
    let mut buf = b"prefix".to_vec();
    JpegEncoder::new(100)
        .unwrap()
        .encode_rgb(img.as_raw(), 32, 32, &mut buf)
        .unwrap();
    assert_eq!(&buf[6..], round_trip(&img, 100).0.as_slice());
}

#[test]
fn bad_sizes_are_errors() {
    let encoder = JpegEncoder::new(100).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        encoder.encode_rgb(&[], 0, 1, &mut out),
        Err(JpegError::Size {
            width: 0,
            height: 1
        })
    );
    assert_eq!(
        encoder.encode_rgb(&[0; 5], 1, 2, &mut out),
        Err(JpegError::Buffer {
            width: 1,
            height: 2,
            expected: 6,
            got: 5
        })
    );
    assert!(encoder.encode_rgb(&[0; 3], 70_000, 1, &mut out).is_err());
}
