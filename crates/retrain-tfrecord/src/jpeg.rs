//! A small baseline JPEG encoder for RGB images, written for speed on many small images (CIFAR's
//! 32×32) at quality 100, where general encoders spend most of their time in per-image setup and in
//! writing Huffman codes one field at a time.
//!
//! Output: JFIF, baseline sequential DCT, 8-bit, three components Y Cb Cr without chroma
//! subsampling (4:4:4), the quantization tables of the JPEG standard (Annex K) scaled by libjpeg's
//! quality formula, the standard Huffman tables (Annex K.3), one scan. The colour transform, the
//! forward DCT (Loeffler–Ligtenberg–Moschytz in integer arithmetic, as libjpeg's `islow`) and the
//! quantization are integer-only, so the bytes are the same on every machine.

use std::sync::OnceLock;

/// Why an image cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JpegError {
    #[error("a JPEG is 1 to 65535 pixels on a side, got {width}×{height}")]
    Size { width: u32, height: u32 },
    #[error("{width}×{height} RGB needs {expected} bytes, got {got}")]
    Buffer {
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    #[error("quality must be 1 to 100, got {0}")]
    Quality(u8),
}

/// Natural (row-major) index of the `i`-th coefficient in zigzag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Annex K.1, luminance, natural order.
const LUMA_QUANT: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];

/// Annex K.1, chrominance, natural order.
const CHROMA_QUANT: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// Annex K.3 tables: code counts per length 1–16, then symbols.
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// Huffman codes by symbol: (code, length); length 0 for a symbol the table lacks.
struct HuffmanCodes {
    codes: [(u16, u8); 256],
    /// For AC tables: the whole code of a coefficient `v` after no zeros (the common case at high
    /// quality), code and magnitude bits packed as `bits << 5 | length`, at `v + RUN0_OFFSET`.
    run0: Vec<u32>,
}

/// Index offset of [`HuffmanCodes::run0`]: AC coefficients of 8-bit samples lie in −1023..=1023.
const RUN0_OFFSET: i32 = 1023;

impl HuffmanCodes {
    /// Canonical codes from a table's counts per length and its symbols (JPEG Annex C).
    fn new(bits: &[u8; 16], values: &[u8]) -> Self {
        let mut codes = [(0u16, 0u8); 256];
        let mut code = 0u16;
        let mut k = 0;
        for (len_idx, &count) in bits.iter().enumerate() {
            for _ in 0..count {
                codes[values[k] as usize] = (code, len_idx as u8 + 1);
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
        let mut table = Self {
            codes,
            run0: Vec::new(),
        };
        table.run0 = (-RUN0_OFFSET..=RUN0_OFFSET)
            .map(|v| {
                let (bits, len) = table.encode(0, v);
                (bits << 5) | len
            })
            .collect();
        table
    }
}

struct Tables {
    dc_luma: HuffmanCodes,
    dc_chroma: HuffmanCodes,
    ac_luma: HuffmanCodes,
    ac_chroma: HuffmanCodes,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| Tables {
        dc_luma: HuffmanCodes::new(&DC_LUMA_BITS, &DC_VALUES),
        dc_chroma: HuffmanCodes::new(&DC_CHROMA_BITS, &DC_VALUES),
        ac_luma: HuffmanCodes::new(&AC_LUMA_BITS, &AC_LUMA_VALUES),
        ac_chroma: HuffmanCodes::new(&AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    })
}

/// libjpeg's quality scaling of a base table (`jpeg_quality_scaling` + `jpeg_add_quant_table` with
/// baseline limits): quality 100 gives all ones.
fn scale_table(base: &[u16; 64], quality: u8) -> [u16; 64] {
    let quality = u32::from(quality.clamp(1, 100));
    let scale = if quality < 50 {
        5000 / quality
    } else {
        200 - 2 * quality
    };
    base.map(|q| ((u32::from(q) * scale + 50) / 100).clamp(1, 255) as u16)
}

/// Natural index (`v * 8 + u`) of zigzag position `i`, mapped to the transposed layout the DCT
/// leaves its output in (`u * 8 + v`).
const ZIGZAG_T: [usize; 64] = {
    let mut t = [0; 64];
    let mut i = 0;
    while i < 64 {
        let n = ZIGZAG[i];
        t[i] = (n % 8) * 8 + n / 8;
        i += 1;
    }
    t
};

/// An 8×8 block, `[row][column]`.
type Block = [[i32; 8]; 8];

/// Encodes RGB images as baseline JPEG; holds the quality-dependent tables and header.
#[derive(Debug, Clone)]
pub struct JpegEncoder {
    quality: u8,
    /// Quantizer times 8 (the DCT's output scale) per coefficient in the DCT's transposed layout,
    /// for luma and chroma.
    divisors: [[i32; 64]; 2],
    /// Every quantizer is 1 (quality 100): quantizing is a rounding shift by 3.
    unit_quant: bool,
    /// SOI, APP0 (JFIF), DQT.
    prefix: Vec<u8>,
    /// DHT, SOS: after the frame header, which holds the size.
    suffix: Vec<u8>,
}

impl JpegEncoder {
    /// An encoder at `quality` 1–100 (libjpeg's scale).
    pub fn new(quality: u8) -> Result<Self, JpegError> {
        if !(1..=100).contains(&quality) {
            return Err(JpegError::Quality(quality));
        }
        let luma = scale_table(&LUMA_QUANT, quality);
        let chroma = scale_table(&CHROMA_QUANT, quality);
        let transposed = |table: &[u16; 64]| {
            let mut t = [0i32; 64];
            for (n, &q) in table.iter().enumerate() {
                t[(n % 8) * 8 + n / 8] = i32::from(q) * 8;
            }
            t
        };
        let divisors = [transposed(&luma), transposed(&chroma)];
        let unit_quant = divisors.iter().flatten().all(|&d| d == 8);

        let mut prefix = vec![0xff, 0xd8]; // SOI
        // APP0 JFIF 1.01, no units, 1:1 aspect, no thumbnail.
        prefix.extend_from_slice(&[0xff, 0xe0, 0, 16]);
        prefix.extend_from_slice(b"JFIF\0");
        prefix.extend_from_slice(&[1, 1, 0, 0, 1, 0, 1, 0, 0]);
        // DQT: two 8-bit tables in zigzag order.
        prefix.extend_from_slice(&[0xff, 0xdb, 0, 132]);
        for (id, table) in [&luma, &chroma].into_iter().enumerate() {
            prefix.push(id as u8);
            prefix.extend(ZIGZAG.iter().map(|&n| table[n] as u8));
        }

        let mut suffix = Vec::new();
        let dht = [
            (0x00, &DC_LUMA_BITS, &DC_VALUES[..]),
            (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES[..]),
            (0x01, &DC_CHROMA_BITS, &DC_VALUES[..]),
            (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES[..]),
        ];
        for (class_id, bits, values) in dht {
            let len = 2 + 1 + 16 + values.len();
            suffix.extend_from_slice(&[0xff, 0xc4, (len >> 8) as u8, len as u8, class_id]);
            suffix.extend_from_slice(bits);
            suffix.extend_from_slice(values);
        }
        // SOS: three components (Y: tables 0/0, Cb and Cr: 1/1), spectral 0–63, no approximation.
        suffix.extend_from_slice(&[0xff, 0xda, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
        Ok(Self {
            quality,
            divisors,
            unit_quant,
            prefix,
            suffix,
        })
    }

    pub fn quality(&self) -> u8 {
        self.quality
    }

    /// Appends the JPEG of a `width`×`height` image, `rgb` row-major R G B bytes, to `out`.
    pub fn encode_rgb(
        &self,
        rgb: &[u8],
        width: u32,
        height: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegError> {
        if width == 0 || height == 0 || width > 65535 || height > 65535 {
            return Err(JpegError::Size { width, height });
        }
        let (w, h) = (width as usize, height as usize);
        let expected = w * h * 3;
        if rgb.len() != expected {
            return Err(JpegError::Buffer {
                width,
                height,
                expected,
                got: rgb.len(),
            });
        }
        out.reserve(self.prefix.len() + 19 + self.suffix.len() + w * h * 4 + 1024);
        out.extend_from_slice(&self.prefix);
        // SOF0: 8-bit precision, size, three components sampled 1×1, quant tables 0, 1, 1.
        out.extend_from_slice(&[0xff, 0xc0, 0, 17, 8]);
        out.extend_from_slice(&(height as u16).to_be_bytes());
        out.extend_from_slice(&(width as u16).to_be_bytes());
        out.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
        out.extend_from_slice(&self.suffix);

        self.encode_scan(rgb, w, h, out);
        out.extend_from_slice(&[0xff, 0xd9]); // EOI
        Ok(())
    }

    /// The entropy-coded scan, compiled twice: for any x86-64 and for CPUs with AVX2 and BMI2
    /// (one-instruction variable shifts, wider vectors), picked at run time. Integer arithmetic
    /// only, so both give the same bytes.
    fn encode_scan(&self, rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("lzcnt")
        {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { self.encode_scan_v3(rgb, w, h, out) };
            return;
        }
        self.encode_scan_portable(rgb, w, h, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt")]
    fn encode_scan_v3(&self, rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
        self.encode_scan_inline(rgb, w, h, out);
    }

    fn encode_scan_portable(&self, rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
        self.encode_scan_inline(rgb, w, h, out);
    }

    #[inline(always)]
    fn encode_scan_inline(&self, rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
        let (plane_w, planes) = to_planes(rgb, w, h);
        let tables = tables();
        let mut bits = Bits {
            acc: 0,
            n_bits: 0,
            pos: out.len(),
        };
        let mut prev_dc = [0i32; 3];
        let mut block: Block = [[0; 8]; 8];
        let mut coefs = [0i32; 64];
        for block_y in (0..h).step_by(8) {
            for block_x in (0..plane_w).step_by(8) {
                bits.reserve_blocks(out, 3);
                for (component, plane) in planes.iter().enumerate() {
                    for (dy, row) in block.iter_mut().enumerate() {
                        let start = (block_y + dy) * plane_w + block_x;
                        for (v, &p) in row.iter_mut().zip(&plane[start..start + 8]) {
                            *v = i32::from(p);
                        }
                    }
                    forward_dct(&mut block);
                    let table = usize::from(component > 0);
                    self.quantize(&block, table, &mut coefs);
                    let (dc, ac) = if table == 0 {
                        (&tables.dc_luma, &tables.ac_luma)
                    } else {
                        (&tables.dc_chroma, &tables.ac_chroma)
                    };
                    encode_block(out, &mut bits, &coefs, &mut prev_dc[component], dc, ac);
                }
            }
        }
        bits.finish(out);
    }

    #[inline(always)]
    /// Divides DCT outputs by the quantizers, rounding half away from zero (as libjpeg), and puts
    /// them in zigzag order.
    fn quantize(&self, block: &Block, table: usize, coefs: &mut [i32; 64]) {
        let flat = block.as_flattened();
        let mut quantized = [0i32; 64];
        if self.unit_quant {
            for (q, &v) in quantized.iter_mut().zip(flat) {
                let sign = v >> 31;
                let magnitude = ((v ^ sign) - sign + 4) >> 3;
                *q = (magnitude ^ sign) - sign;
            }
        } else {
            for ((q, &v), &d) in quantized.iter_mut().zip(flat).zip(&self.divisors[table]) {
                let sign = v >> 31;
                let magnitude = ((v ^ sign) - sign + d / 2) / d;
                *q = (magnitude ^ sign) - sign;
            }
        }
        for (coef, &n) in coefs.iter_mut().zip(ZIGZAG_T.iter()) {
            *coef = quantized[n];
        }
    }
}

/// The image as Y, Cb and Cr planes level-shifted to −128..127, padded to whole 8×8 blocks by
/// repeating the last column and row (as libjpeg pads); returns the padded width.
#[inline(always)]
fn to_planes(rgb: &[u8], w: usize, h: usize) -> (usize, [Vec<i16>; 3]) {
    const ONE_HALF: i32 = 1 << 15;
    let plane_w = w.div_ceil(8) * 8;
    let plane_h = h.div_ceil(8) * 8;
    let mut planes = [
        vec![0i16; plane_w * plane_h],
        vec![0i16; plane_w * plane_h],
        vec![0i16; plane_w * plane_h],
    ];
    let [luma, blue, red] = &mut planes;
    for y in 0..plane_h {
        let source = &rgb[y.min(h - 1) * w * 3..][..w * 3];
        let row = y * plane_w..(y + 1) * plane_w;
        let (luma, blue, red) = (
            &mut luma[row.clone()],
            &mut blue[row.clone()],
            &mut red[row],
        );
        for (x, px) in source.chunks_exact(3).enumerate() {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            // JFIF's YCbCr (ITU-R BT.601, full range) in 16-bit fixed point, as libjpeg.
            luma[x] = (((19595 * r + 38470 * g + 7471 * b + ONE_HALF) >> 16) - 128) as i16;
            blue[x] = ((-11059 * r - 21709 * g + 32768 * b + ONE_HALF - 1) >> 16) as i16;
            red[x] = ((32768 * r - 27439 * g - 5329 * b + ONE_HALF - 1) >> 16) as i16;
        }
        for plane in [luma, blue, red] {
            let last = plane[w - 1];
            plane[w..].fill(last);
        }
    }
    (plane_w, planes)
}

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
// Cosine constants of the LLM DCT in CONST_BITS fixed point: round(x * 2^13).
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

#[inline(always)]
fn descale(x: i32, n: i32) -> i32 {
    (x + (1 << (n - 1))) >> n
}

/// The 8-point DCT of Loeffler, Ligtenberg and Moschytz (1989) down each column of `b` (the
/// eight columns side by side, so the compiler can vectorise). The first pass keeps `PASS1_BITS`
/// extra bits; the second removes them.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the same column of eight rows: indexing reads best
fn dct_columns(b: &mut Block, first_pass: bool) {
    let (out_shift, even_shift) = if first_pass {
        (CONST_BITS - PASS1_BITS, 0)
    } else {
        (CONST_BITS + PASS1_BITS, PASS1_BITS)
    };
    for x in 0..8 {
        let tmp0 = b[0][x] + b[7][x];
        let tmp7 = b[0][x] - b[7][x];
        let tmp1 = b[1][x] + b[6][x];
        let tmp6 = b[1][x] - b[6][x];
        let tmp2 = b[2][x] + b[5][x];
        let tmp5 = b[2][x] - b[5][x];
        let tmp3 = b[3][x] + b[4][x];
        let tmp4 = b[3][x] - b[4][x];

        // Even part.
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        if first_pass {
            b[0][x] = (tmp10 + tmp11) << PASS1_BITS;
            b[4][x] = (tmp10 - tmp11) << PASS1_BITS;
        } else {
            b[0][x] = descale(tmp10 + tmp11, even_shift);
            b[4][x] = descale(tmp10 - tmp11, even_shift);
        }
        let z1 = (tmp12 + tmp13) * FIX_0_541196100;
        b[2][x] = descale(z1 + tmp13 * FIX_0_765366865, out_shift);
        b[6][x] = descale(z1 - tmp12 * FIX_1_847759065, out_shift);

        // Odd part.
        let z1 = tmp4 + tmp7;
        let z2 = tmp5 + tmp6;
        let z3 = tmp4 + tmp6;
        let z4 = tmp5 + tmp7;
        let z5 = (z3 + z4) * FIX_1_175875602;
        let tmp4 = tmp4 * FIX_0_298631336;
        let tmp5 = tmp5 * FIX_2_053119869;
        let tmp6 = tmp6 * FIX_3_072711026;
        let tmp7 = tmp7 * FIX_1_501321110;
        let z1 = -z1 * FIX_0_899976223;
        let z2 = -z2 * FIX_2_562915447;
        let z3 = -z3 * FIX_1_961570560 + z5;
        let z4 = -z4 * FIX_0_390180644 + z5;
        b[7][x] = descale(tmp4 + z1 + z3, out_shift);
        b[5][x] = descale(tmp5 + z2 + z4, out_shift);
        b[3][x] = descale(tmp6 + z2 + z3, out_shift);
        b[1][x] = descale(tmp7 + z1 + z4, out_shift);
    }
}

#[inline(always)]
fn transpose(b: &mut Block) {
    let copy = *b;
    for (y, row) in b.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = copy[x][y];
        }
    }
}

/// 2-D forward DCT of a level-shifted block: down the columns, then (transposed) down the rows.
/// The result is 8 times the orthonormal DCT-II of the JPEG standard, transposed: `b[u][v]` holds
/// horizontal frequency `u`, vertical frequency `v`.
#[inline(always)]
fn forward_dct(b: &mut Block) {
    dct_columns(b, true);
    transpose(b);
    dct_columns(b, false);
}

/// Number of bits of `|v|` (JPEG's magnitude category).
#[inline(always)]
fn category(v: i32) -> u32 {
    32 - v.unsigned_abs().leading_zeros()
}

/// The `size` low bits JPEG sends after a category: `v` if positive, `v - 1` if negative.
#[inline(always)]
fn magnitude_bits(v: i32, size: u32) -> u32 {
    let v = v + (v >> 31);
    (v as u32) & ((1u32 << size) - 1)
}

#[inline(always)]
fn encode_block(
    out: &mut [u8],
    state: &mut Bits,
    coefs: &[i32; 64],
    prev_dc: &mut i32,
    dc: &HuffmanCodes,
    ac: &HuffmanCodes,
) {
    // A local copy stays in registers.
    let mut bits = *state;
    let diff = coefs[0] - *prev_dc;
    *prev_dc = coefs[0];
    bits.put(dc.encode(0, diff));
    // Visit only the non-zero AC coefficients. Each code is at most 27 bits, so two fit in the
    // accumulator between flushes.
    let mut nonzero = 0u64;
    for (k, &v) in coefs.iter().enumerate().skip(1) {
        nonzero |= u64::from(v != 0) << k;
    }
    let mut last = 0u32;
    let mut unflushed = 1;
    while nonzero != 0 {
        let k = nonzero.trailing_zeros();
        nonzero &= nonzero - 1;
        let mut run = k - last - 1;
        last = k;
        if run > 15 {
            bits.flush(out);
            while run > 15 {
                bits.put(ac.zrl());
                bits.flush(out);
                run -= 16;
            }
            unflushed = 0;
        }
        let v = coefs[k as usize];
        let packed = if run == 0 {
            ac.run0.get((v + RUN0_OFFSET) as usize).copied()
        } else {
            None
        };
        bits.put(match packed {
            Some(packed) => (packed >> 5, packed & 31),
            None => ac.encode(run, v),
        });
        unflushed += 1;
        if unflushed == 2 {
            bits.flush(out);
            unflushed = 0;
        }
    }
    if last != 63 {
        bits.put(ac.eob());
    }
    bits.flush(out);
    *state = bits;
}

impl HuffmanCodes {
    /// The code for `run` zeros then `v` (`run` 0 for a DC difference), followed by `v`'s
    /// magnitude bits: (bits, length).
    #[inline(always)]
    fn encode(&self, run: u32, v: i32) -> (u32, u32) {
        let size = category(v);
        let (code, len) = self.codes[((run << 4) | size) as usize];
        (
            (u32::from(code) << size) | magnitude_bits(v, size),
            u32::from(len) + size,
        )
    }

    /// Sixteen zeros.
    fn zrl(&self) -> (u32, u32) {
        let (code, len) = self.codes[0xf0];
        (u32::from(code), u32::from(len))
    }

    /// End of block.
    fn eob(&self) -> (u32, u32) {
        let (code, len) = self.codes[0x00];
        (u32::from(code), u32::from(len))
    }
}

/// Writes the top `n_bytes` of `word` at `pos` with a zero after each 0xFF; returns the new end.
/// (A free function, so the caller's bit state stays in registers.)
#[cold]
fn put_stuffed(out: &mut [u8], mut pos: usize, word: u64, n_bytes: u32) -> usize {
    for &byte in &word.to_be_bytes()[..n_bytes as usize] {
        out[pos] = byte;
        pos += 1;
        if byte == 0xff {
            out[pos] = 0;
            pos += 1;
        }
    }
    pos
}

/// Most bytes one block's entropy-coded data can take: a DC code and 63 AC codes of at most 27
/// bits each, every byte possibly stuffed.
const MAX_BLOCK_BYTES: usize = 2 * (27 * 64 / 8 + 1);

/// The state of the entropy-coded output: bits, most significant first, with a zero byte stuffed
/// after each 0xFF. Codes gather at the bottom of a 64-bit word; a flush stores the whole bytes
/// with one unaligned 8-byte write and no data-dependent branch (but a rare one for 0xFF bytes).
/// The output buffer is kept longer than `pos` (slack) and truncated at the end.
#[derive(Debug, Clone, Copy)]
struct Bits {
    /// The low `n_bits` bits are pending; higher bits are stale.
    acc: u64,
    n_bits: u32,
    /// Where the next byte goes.
    pos: usize,
}

impl Bits {
    /// Makes room in `out` for `blocks` more blocks.
    fn reserve_blocks(&self, out: &mut Vec<u8>, blocks: usize) {
        let needed = self.pos + blocks * MAX_BLOCK_BYTES + 8;
        if out.len() < needed {
            out.resize(needed.max(out.len() * 2), 0);
        }
    }

    /// Appends a code; at most 57 bits may be pending afterwards (flush in between).
    #[inline(always)]
    fn put(&mut self, (value, len): (u32, u32)) {
        self.acc = (self.acc << len) | u64::from(value);
        self.n_bits += len;
    }

    /// Writes the pending whole bytes.
    #[inline(always)]
    fn flush(&mut self, out: &mut [u8]) {
        if self.n_bits == 0 {
            return;
        }
        let word = self.acc << (64 - self.n_bits);
        let n_bytes = self.n_bits / 8;
        let emitted = 8 * n_bytes;
        // A 0xFF byte among those emitted is a zero byte in the complement (others set to ones).
        let inverted = !word | (u64::MAX >> emitted);
        let has_ff =
            inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080 != 0
                && emitted > 0;
        if has_ff {
            self.pos = put_stuffed(out, self.pos, word, n_bytes);
        } else {
            out[self.pos..self.pos + 8].copy_from_slice(&word.to_be_bytes());
            self.pos += n_bytes as usize;
        }
        self.n_bits -= emitted;
    }

    /// Pads the last byte with one bits and drops the slack.
    fn finish(mut self, out: &mut Vec<u8>) {
        self.reserve_blocks(out, 0);
        let pad = (8 - self.n_bits % 8) % 8;
        self.put(((1 << pad) - 1, pad));
        self.flush(out);
        out.truncate(self.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_dct(block: &[i32; 64]) -> [f64; 64] {
        let mut out = [0.0; 64];
        for v in 0..8 {
            for u in 0..8 {
                let cu = if u == 0 { 1.0 / 2f64.sqrt() } else { 1.0 };
                let cv = if v == 0 { 1.0 / 2f64.sqrt() } else { 1.0 };
                let mut sum = 0.0;
                for y in 0..8 {
                    for x in 0..8 {
                        sum += f64::from(block[y * 8 + x])
                            * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0).cos()
                            * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0).cos();
                    }
                }
                out[v * 8 + u] = 0.25 * cu * cv * sum;
            }
        }
        out
    }

    #[test]
    fn the_integer_dct_is_8_times_the_standard_one() {
        let mut state = 12345u32;
        for _ in 0..50 {
            let mut block = [0i32; 64];
            for v in &mut block {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = (state >> 24) as i32 - 128;
            }
            let expected = reference_dct(&block);
            let mut rows: Block = [[0; 8]; 8];
            for (n, &v) in block.iter().enumerate() {
                rows[n / 8][n % 8] = v;
            }
            forward_dct(&mut rows);
            // The output is transposed: rows[u][v].
            let got: Vec<i32> = (0..64).map(|n| rows[n % 8][n / 8]).collect();
            for (got, want) in got.iter().zip(expected.iter()) {
                assert!(
                    (f64::from(*got) / 8.0 - want).abs() < 0.5,
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn huffman_tables_are_complete() {
        assert_eq!(
            AC_LUMA_BITS.iter().map(|&b| usize::from(b)).sum::<usize>(),
            162
        );
        assert_eq!(
            AC_CHROMA_BITS
                .iter()
                .map(|&b| usize::from(b))
                .sum::<usize>(),
            162
        );
        let t = tables();
        for size in 1..=10u32 {
            for run in 0..16u32 {
                assert!(t.ac_luma.codes[((run << 4) | size) as usize].1 > 0);
                assert!(t.ac_chroma.codes[((run << 4) | size) as usize].1 > 0);
            }
        }
        for size in 0..=11 {
            assert!(t.dc_luma.codes[size].1 > 0 && t.dc_chroma.codes[size].1 > 0);
        }
    }

    #[test]
    fn quality_100_quantizes_by_one() {
        let e = JpegEncoder::new(100).unwrap();
        assert!(e.unit_quant);
        assert!(!JpegEncoder::new(99).unwrap().unit_quant);
        assert_eq!(scale_table(&LUMA_QUANT, 50), LUMA_QUANT);
        assert!(JpegEncoder::new(0).is_err() && JpegEncoder::new(101).is_err());
    }

    #[test]
    fn every_code_path_gives_the_same_bytes() {
        let encoder = JpegEncoder::new(100).unwrap();
        let mut state = 7u32;
        for (w, h) in [(32usize, 32usize), (9, 17), (1, 1)] {
            let rgb: Vec<u8> = (0..w * h * 3)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let mut portable = Vec::new();
            encoder.encode_scan_portable(&rgb, w, h, &mut portable);
            let mut dispatched = Vec::new();
            encoder.encode_scan(&rgb, w, h, &mut dispatched);
            assert_eq!(portable, dispatched);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("lzcnt")
            {
                let mut v3 = Vec::new();
                // SAFETY: the features were detected.
                unsafe { encoder.encode_scan_v3(&rgb, w, h, &mut v3) };
                assert_eq!(portable, v3);
            }
        }
    }

    #[test]
    fn magnitudes_follow_the_standard() {
        assert_eq!(category(0), 0);
        assert_eq!(category(-1), 1);
        assert_eq!(category(1023), 10);
        assert_eq!(category(-2040), 11);
        assert_eq!(magnitude_bits(-1, 1), 0);
        assert_eq!(magnitude_bits(-3, 2), 0);
        assert_eq!(magnitude_bits(3, 2), 3);
    }
}
