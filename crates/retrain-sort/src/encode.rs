//! PNG encoding with fixed settings, so the same pixels always give the same bytes.

use retrain_pickle::{IMAGE_BYTES, SIDE};

/// The deflate mode every PNG is written with: stored blocks, no compression. A 32×32 image is
/// 3,172 bytes stored, about 2,700 with `fdeflate`'s fast mode and 2,250 at zlib level 6, but
/// every one of those sizes takes one 4 KiB block on disk, while storing is 3× faster than
/// `fdeflate` and 40× faster than zlib, and the fastest to decode for the next stage. The bytes
/// depend only on the pixels (and on the `png` version pinned by `Cargo.lock`).
pub const DEFLATE: png::DeflateCompression = png::DeflateCompression::NoCompression;
/// The row filter every PNG is written with (none: filtering helps only compression).
pub const FILTER: png::Filter = png::Filter::NoFilter;

/// Encodes one 32×32 RGB image (`image[(y * 32 + x) * 3 + c]`, as [`retrain_pickle::Batch::image`]
/// gives it) as an 8-bit RGB PNG into `out`, replacing what `out` held. Nothing but the `IHDR`,
/// `IDAT` and `IEND` chunks is written: no time, no text, no gamma.
pub fn encode_png(image: &[u8], out: &mut Vec<u8>) -> Result<(), png::EncodingError> {
    assert_eq!(image.len(), IMAGE_BYTES, "a CIFAR image is 32×32×3 bytes");
    out.clear();
    let mut encoder = png::Encoder::new(&mut *out, SIDE as u32, SIDE as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_deflate_compression(DEFLATE);
    encoder.set_filter(FILTER);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(image)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_pixels_give_the_same_bytes_and_decode_back() {
        let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i * 31 % 256) as u8).collect();
        let (mut a, mut b) = (Vec::new(), vec![1, 2, 3]);
        encode_png(&image, &mut a).unwrap();
        encode_png(&image, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(&a));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (32, 32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(pixels, image);
    }
}
