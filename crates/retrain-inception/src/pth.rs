//! Writing PyTorch `.pth` files: the zip archive that `torch.save(model.state_dict(), f)` writes
//! (PyTorch ≥ 1.6), readable by `torch.load(f, weights_only=True)` and by candle.
//!
//! The archive holds, under a prefix that is the file's stem (`model` for `model.pth`, as torch
//! names it):
//!
//! - `data.pkl`: a protocol-2 pickle of a `collections.OrderedDict` mapping each name to
//!   `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, where the
//!   storage is a persistent id `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`. The opcodes
//!   and memo are those Python's pickler emits for the same dict, so `data.pkl` equals torch's own
//!   byte for byte (`scripts/check_pth.py` checks that);
//! - `byteorder`: `little`;
//! - `data/<key>`: each tensor's elements, row-major, little-endian; keys are `0`, `1`, … in the
//!   map's order;
//! - `version`: `3\n`.
//!
//! Entries are stored uncompressed, each one's data aligned to 64 bytes by the `FB` padding field
//! torch uses, with sizes and CRCs in the local headers. torch 2.x also writes `.format_version`,
//! `.storage_alignment` and `.data/serialization_id`; they are left out: `.format_version` would
//! tell torch to compute data offsets from miniz's own layout (with data descriptors), and the
//! serialization id would make equal inputs give different files. The archive has no zip64
//! records, so a file is limited to 4 GiB (Inception-v3 is about 100 MiB).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::Error;

/// Data of every entry starts at a multiple of this (torch's `kFieldAlignment`).
const ALIGNMENT: u64 = 64;
/// Python's pickler writes dict items in batches of this many (`pickle._BATCHSIZE`).
const BATCH: usize = 1000;
/// The format version torch writes for `torch.save` archives.
const VERSION: &[u8] = b"3\n";

/// Writes `tensors` as a PyTorch `.pth` file (see the [module docs](self)), atomically.
///
/// Supports f32, f64 and i64 tensors (`FloatStorage`, `DoubleStorage`, `LongStorage`) of any rank,
/// 0-d included, on any device; they are written contiguous, row-major, without gradient.
pub fn write_pth(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), Error> {
    let pickled = tensors
        .iter()
        .map(|(name, t)| {
            let storage = storage_class(t.dtype()).ok_or_else(|| Error::PthDtype {
                path: path.to_owned(),
                name: name.clone(),
                dtype: t.dtype(),
            })?;
            Ok(PickledTensor {
                name,
                storage,
                dims: t.dims(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let pickle = pickle_state_dict(&pickled);

    let prefix = archive_name(path);
    let file = retrain_stage::AtomicFile::create(path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })?;
    let mut zip = ZipWriter::new(file, path);
    zip.entry(&format!("{prefix}/data.pkl"), &pickle)?;
    zip.entry(&format!("{prefix}/byteorder"), b"little")?;
    for (key, (name, t)) in tensors.iter().enumerate() {
        let bytes = le_bytes(t).map_err(|source| Error::PthTensor {
            path: path.to_owned(),
            name: name.clone(),
            source: Box::new(source),
        })?;
        zip.entry(&format!("{prefix}/data/{key}"), &bytes)?;
    }
    zip.entry(&format!("{prefix}/version"), VERSION)?;
    let file = zip.finish()?;
    file.commit().map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })?;
    tracing::debug!(file = %path.display(), n_tensors = tensors.len(), "pth written");
    Ok(())
}

/// The archive's top-level folder: the file name without its extension, as torch does.
fn archive_name(path: &Path) -> &str {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| !stem.is_empty())
        .unwrap_or("archive")
}

/// The legacy storage class torch pickles for a dtype.
fn storage_class(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F32 => Some("FloatStorage"),
        DType::F64 => Some("DoubleStorage"),
        DType::I64 => Some("LongStorage"),
        _ => None,
    }
}

/// A tensor's elements in row-major order, little-endian.
fn le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let flat = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match flat.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => flat
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => candle_core::bail!("no .pth storage for dtype {other:?}"),
    })
}

/// Contiguous strides as torch computes them (a dimension of size 0 counts as 1).
fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut step = 1;
    for (stride, &dim) in strides.iter_mut().zip(dims).rev() {
        *stride = step;
        step *= dim.max(1);
    }
    strides
}

struct PickledTensor<'a> {
    name: &'a str,
    storage: &'static str,
    dims: &'a [usize],
}

/// `data.pkl` for an `OrderedDict` of tensors whose storages are keyed `0`, `1`, … in order.
fn pickle_state_dict(tensors: &[PickledTensor<'_>]) -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[op::PROTO, 2]);
    let ordered_dict = p.global("collections", "OrderedDict");
    p.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
    p.memoize();
    for (batch_idx, batch) in tensors.chunks(BATCH).enumerate() {
        if batch.len() > 1 {
            p.out.push(op::MARK);
        }
        for (idx, tensor) in batch.iter().enumerate() {
            p.unicode(tensor.name);
            let key = batch_idx * BATCH + idx;
            p.tensor(tensor, &key.to_string(), ordered_dict);
        }
        p.out.push(if batch.len() > 1 {
            op::SETITEMS
        } else {
            op::SETITEM
        });
    }
    p.out.push(op::STOP);
    p.out
}

/// Pickle opcodes (Python's `pickle` module names).
mod op {
    pub(super) const PROTO: u8 = 0x80;
    pub(super) const STOP: u8 = b'.';
    pub(super) const GLOBAL: u8 = b'c';
    pub(super) const MARK: u8 = b'(';
    pub(super) const TUPLE: u8 = b't';
    pub(super) const EMPTY_TUPLE: u8 = b')';
    pub(super) const TUPLE1: u8 = 0x85;
    pub(super) const REDUCE: u8 = b'R';
    pub(super) const SETITEM: u8 = b's';
    pub(super) const SETITEMS: u8 = b'u';
    pub(super) const BINPERSID: u8 = b'Q';
    pub(super) const BININT: u8 = b'J';
    pub(super) const BININT1: u8 = b'K';
    pub(super) const BININT2: u8 = b'M';
    pub(super) const LONG1: u8 = 0x8a;
    pub(super) const NEWFALSE: u8 = 0x89;
    pub(super) const BINUNICODE: u8 = b'X';
    pub(super) const BINPUT: u8 = b'q';
    pub(super) const LONG_BINPUT: u8 = b'r';
    pub(super) const BINGET: u8 = b'h';
    pub(super) const LONG_BINGET: u8 = b'j';
}

/// Emits opcodes with the memo Python's pickler keeps: every global, string and non-empty tuple
/// is memoized when first written, and objects Python would see again (the same function, class
/// or interned string) are fetched from the memo.
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    n_memo: u32,
    /// Memo indices of objects written once and fetched afterwards.
    seen: BTreeMap<&'static str, u32>,
}

impl Pickler {
    fn memoize(&mut self) -> u32 {
        let idx = self.n_memo;
        match u8::try_from(idx) {
            Ok(small) => self.out.extend_from_slice(&[op::BINPUT, small]),
            Err(_) => {
                self.out.push(op::LONG_BINPUT);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        }
        self.n_memo += 1;
        idx
    }

    fn get(&mut self, idx: u32) {
        match u8::try_from(idx) {
            Ok(small) => self.out.extend_from_slice(&[op::BINGET, small]),
            Err(_) => {
                self.out.push(op::LONG_BINGET);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> u32 {
        self.out.push(op::GLOBAL);
        for part in [module, name] {
            self.out.extend_from_slice(part.as_bytes());
            self.out.push(b'\n');
        }
        self.memoize()
    }

    fn unicode(&mut self, s: &str) -> u32 {
        self.out.push(op::BINUNICODE);
        let len = u32::try_from(s.len()).expect("a tensor name under 4 GiB");
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self.memoize()
    }

    /// A global or string that Python pickles as one shared object: written the first time,
    /// fetched from the memo afterwards.
    fn shared(&mut self, id: &'static str, write: impl FnOnce(&mut Self) -> u32) {
        if let Some(&idx) = self.seen.get(id) {
            self.get(idx);
        } else {
            let idx = write(self);
            self.seen.insert(id, idx);
        }
    }

    fn int(&mut self, value: usize) {
        if let Ok(small) = u8::try_from(value) {
            self.out.extend_from_slice(&[op::BININT1, small]);
        } else if let Ok(short) = u16::try_from(value) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&short.to_le_bytes());
        } else if let Ok(int) = i32::try_from(value) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&int.to_le_bytes());
        } else {
            // Two's complement, little-endian, in the fewest bytes that keep the sign bit clear.
            let value = value as u64;
            let n_bytes = (64 - value.leading_zeros()) / 8 + 1;
            self.out.extend_from_slice(&[op::LONG1, n_bytes as u8]);
            let bytes = u128::from(value).to_le_bytes();
            self.out.extend_from_slice(&bytes[..n_bytes as usize]);
        }
    }

    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            self.out.push(op::EMPTY_TUPLE);
            return;
        }
        let small = values.len() <= 3;
        if !small {
            self.out.push(op::MARK);
        }
        for &v in values {
            self.int(v);
        }
        self.out.push(if small {
            op::TUPLE1 + (values.len() - 1) as u8
        } else {
            op::TUPLE
        });
        self.memoize();
    }

    /// `_rebuild_tensor_v2(persistent_load(('storage', class, key, 'cpu', numel)), 0, size,
    /// stride, False, OrderedDict())`, as torch's `Tensor.__reduce_ex__` gives it.
    fn tensor(&mut self, tensor: &PickledTensor<'_>, key: &str, ordered_dict: u32) {
        self.shared("_rebuild_tensor_v2", |p| {
            p.global("torch._utils", "_rebuild_tensor_v2")
        });
        self.out.push(op::MARK);
        // The persistent id.
        self.out.push(op::MARK);
        self.shared("'storage'", |p| p.unicode("storage"));
        let storage = tensor.storage;
        self.shared(storage, |p| p.global("torch", storage));
        self.unicode(key);
        self.shared("'cpu'", |p| p.unicode("cpu"));
        self.int(tensor.dims.iter().product());
        self.out.push(op::TUPLE);
        self.memoize();
        self.out.push(op::BINPERSID);
        // Storage offset, size, stride, requires_grad, backward hooks.
        self.int(0);
        self.int_tuple(tensor.dims);
        self.int_tuple(&contiguous_strides(tensor.dims));
        self.out.push(op::NEWFALSE);
        self.get(ordered_dict);
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
        self.memoize();
        self.out.push(op::TUPLE);
        self.memoize();
        self.out.push(op::REDUCE);
        self.memoize();
    }
}

/// A zip archive of stored (uncompressed) entries written front to back, each entry's data
/// aligned to [`ALIGNMENT`] by torch's `FB` extra field.
struct ZipWriter<'a, W: Write> {
    out: W,
    path: &'a Path,
    offset: u64,
    entries: Vec<CentralEntry>,
}

struct CentralEntry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// Signatures and the fixed fields of the headers.
const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const LOCAL_HEADER_LEN: u64 = 30;
/// Version 2.0 (made by and needed to extract).
const ZIP_VERSION: u16 = 20;
/// General purpose flags: names are UTF-8.
const FLAG_UTF8: u16 = 0x0800;
/// Extra field id torch pads with (`FB`), followed by its length and that many `Z`s.
const PADDING_ID: [u8; 2] = *b"FB";

impl<'a, W: Write> ZipWriter<'a, W> {
    fn new(out: W, path: &'a Path) -> Self {
        Self {
            out,
            path,
            offset: 0,
            entries: Vec::new(),
        }
    }

    fn too_large(&self) -> Error {
        Error::PthTooLarge {
            path: self.path.to_owned(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(|source| Error::Write {
            path: self.path.to_owned(),
            source,
        })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, data: &[u8]) -> Result<(), Error> {
        let offset = u32::try_from(self.offset)
            .ok()
            .filter(|&o| o != u32::MAX)
            .ok_or_else(|| self.too_large())?;
        let size = u32::try_from(data.len())
            .ok()
            .filter(|&s| s != u32::MAX)
            .ok_or_else(|| self.too_large())?;
        let name_len = u16::try_from(name.len()).map_err(|_| self.too_large())?;
        let data_start = self.offset + LOCAL_HEADER_LEN + u64::from(name_len) + 4;
        let padding = (ALIGNMENT - data_start % ALIGNMENT) % ALIGNMENT;
        let crc = crc32(data);

        let mut header = Vec::with_capacity(LOCAL_HEADER_LEN as usize + name.len() + 68);
        header.extend_from_slice(&LOCAL_HEADER.to_le_bytes());
        header.extend_from_slice(&ZIP_VERSION.to_le_bytes());
        header.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // stored
        header.extend_from_slice(&[0; 4]); // DOS time and date: none, as torch
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes()); // compressed
        header.extend_from_slice(&size.to_le_bytes()); // uncompressed
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&(4 + padding as u16).to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        header.extend_from_slice(&PADDING_ID);
        header.extend_from_slice(&(padding as u16).to_le_bytes());
        header.resize(header.len() + padding as usize, b'Z');
        self.write(&header)?;
        debug_assert_eq!(self.offset % ALIGNMENT, 0);
        self.write(data)?;
        self.entries.push(CentralEntry {
            name: name.to_owned(),
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// Writes the central directory and its end record; returns the writer.
    fn finish(mut self) -> Result<W, Error> {
        let start = u32::try_from(self.offset).map_err(|_| self.too_large())?;
        let n_entries = u16::try_from(self.entries.len()).map_err(|_| self.too_large())?;
        let mut directory = Vec::new();
        for entry in &self.entries {
            directory.extend_from_slice(&CENTRAL_HEADER.to_le_bytes());
            directory.extend_from_slice(&ZIP_VERSION.to_le_bytes()); // made by
            directory.extend_from_slice(&ZIP_VERSION.to_le_bytes()); // needed
            directory.extend_from_slice(&FLAG_UTF8.to_le_bytes());
            directory.extend_from_slice(&0u16.to_le_bytes()); // stored
            directory.extend_from_slice(&[0; 4]); // time and date
            directory.extend_from_slice(&entry.crc.to_le_bytes());
            directory.extend_from_slice(&entry.size.to_le_bytes());
            directory.extend_from_slice(&entry.size.to_le_bytes());
            directory.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
            // Extra field, comment, disk, internal and external attributes.
            directory.extend_from_slice(&[0; 12]);
            directory.extend_from_slice(&entry.offset.to_le_bytes());
            directory.extend_from_slice(entry.name.as_bytes());
        }
        let size = u32::try_from(directory.len()).map_err(|_| self.too_large())?;
        directory.extend_from_slice(&END_OF_CENTRAL_DIRECTORY.to_le_bytes());
        directory.extend_from_slice(&[0; 4]); // this disk, the directory's disk
        directory.extend_from_slice(&n_entries.to_le_bytes()); // on this disk
        directory.extend_from_slice(&n_entries.to_le_bytes()); // in all
        directory.extend_from_slice(&size.to_le_bytes());
        directory.extend_from_slice(&start.to_le_bytes());
        directory.extend_from_slice(&0u16.to_le_bytes()); // comment
        self.write(&directory)?;
        Ok(self.out)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zip uses it).
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn strides_are_torch_contiguous() {
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[2, 0, 3]), [3, 3, 1]);
    }

    #[test]
    fn ints_use_the_smallest_opcode() {
        let mut p = Pickler::default();
        for v in [6, 300, 70_000, 1 << 31, 1 << 40] {
            p.int(v);
        }
        assert_eq!(
            p.out,
            [
                &[op::BININT1, 6][..],
                &[op::BININT2, 0x2c, 0x01],
                &[op::BININT, 0x70, 0x11, 0x01, 0x00],
                &[op::LONG1, 5, 0, 0, 0, 0x80, 0],
                &[op::LONG1, 6, 0, 0, 0, 0, 0, 1],
            ]
            .concat()
        );
    }

    #[test]
    fn pickle_equals_python_for_a_small_dict() {
        // `data.pkl` of torch.save(OrderedDict(a.weight=f32 2×3, b=f64 [2], n=i64 scalar)) by
        // PyTorch 2.9.1.
        let want: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x08\x00\x00\x00\
            a.weightq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04\
            ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08\
            QK\x00K\x02K\x03\x86q\x09K\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\x0d\
            X\x01\x00\x00\x00bq\x0eh\x03((h\x04ctorch\nDoubleStorage\nq\x0fX\x01\x00\x00\x001q\x10\
            h\x07K\x02tq\x11QK\x00K\x02\x85q\x12K\x01\x85q\x13\x89h\x00)Rq\x14tq\x15Rq\x16\
            X\x01\x00\x00\x00nq\x17h\x03((h\x04ctorch\nLongStorage\nq\x18X\x01\x00\x00\x002q\x19\
            h\x07K\x01tq\x1aQK\x00))\x89h\x00)Rq\x1btq\x1cRq\x1du.";
        let tensors = [
            ("a.weight", "FloatStorage", &[2usize, 3][..]),
            ("b", "DoubleStorage", &[2][..]),
            ("n", "LongStorage", &[][..]),
        ];
        let tensors: Vec<PickledTensor<'_>> = tensors
            .iter()
            .map(|&(name, storage, dims)| PickledTensor {
                name,
                storage,
                dims,
            })
            .collect();
        let got = pickle_state_dict(&tensors);
        assert_eq!(got, want);
    }
}
