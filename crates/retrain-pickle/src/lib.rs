//! CIFAR-10 and CIFAR-100 python batches decoded into typed, validated records.
//!
//! A batch file is a pickled dict (see REFERENCE.md): `data`, a numpy `uint8` array of N rows of
//! 3072 bytes (1024 red, 1024 green, 1024 blue, each plane 32×32 row-major), `labels` (CIFAR-10) or
//! `fine_labels` and `coarse_labels` (CIFAR-100), `filenames` and `batch_label`. [`decode_batch`]
//! returns each image's pixels in height-width-channel order, its labels and file name, after
//! checking every shape, length and label range. [`decode_meta`] reads `batches.meta` or `meta`.
//!
//! What is read: pickle protocols 2 to 5 as Python 2 (cPickle, `str` keys) and Python 3 (`str` or
//! `bytes` keys) write them, numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) arrays, in-band
//! protocol-5 buffers. Hostile input cannot crash the process or exhaust memory: before any byte
//! reaches serde-pickle, [`scan::scan`] bounds nesting depth and memo reuse and refuses every opcode
//! and global a CIFAR batch never has. Every error names the file and what is wrong.

pub mod scan;

use std::path::{Path, PathBuf};

use serde_pickle::{DeOptions, HashableValue, Value};

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes per image.
pub const IMAGE_BYTES: usize = SIDE * SIDE * 3;

/// Which dataset's layout to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Cifar10,
    Cifar100,
}

impl Dataset {
    /// Number of (fine) classes.
    pub fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: refused before decoding: {source}", path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: scan::Refusal,
    },
    #[error("{}: not a readable pickle", path.display())]
    Pickle {
        path: PathBuf,
        #[source]
        source: serde_pickle::Error,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

/// One decoded batch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `batch_label`, e.g. `training batch 1 of 5`; empty when the file has none.
    pub batch_label: String,
    /// Class of each image (CIFAR-100: the fine label).
    pub labels: Vec<u8>,
    /// CIFAR-100 superclass of each image; empty for CIFAR-10.
    pub coarse_labels: Vec<u8>,
    pub filenames: Vec<String>,
    /// N images of 32×32×3 bytes, height-width-channel order.
    pixels: Vec<u8>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `idx` as 32×32×3 bytes, row by row, each pixel R, G, B: `image[(y * 32 + x) * 3 + c]`.
    pub fn image(&self, idx: usize) -> &[u8] {
        &self.pixels[idx * IMAGE_BYTES..(idx + 1) * IMAGE_BYTES]
    }

    /// All images, height-width-channel order, one after another.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
}

/// `batches.meta` (CIFAR-10) or `meta` (CIFAR-100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Class names in label order (CIFAR-100: the fine names).
    pub label_names: Vec<String>,
    /// CIFAR-100 superclass names; empty for CIFAR-10.
    pub coarse_label_names: Vec<String>,
}

/// Reads and decodes a batch file.
pub fn read_batch(path: &Path, dataset: Dataset) -> Result<Batch, Error> {
    let bytes = read(path)?;
    decode_batch(&bytes, dataset, path)
}

/// Reads and decodes `batches.meta` or `meta`.
pub fn read_meta(path: &Path, dataset: Dataset) -> Result<Meta, Error> {
    let bytes = read(path)?;
    decode_meta(&bytes, dataset, path)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Scans, then decodes a pickle into serde-pickle's value tree.
fn load(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Value)>, Error> {
    scan::scan(bytes, scan::Limits::default()).map_err(|source| Error::Refused {
        path: origin.to_owned(),
        source,
    })?;
    // `keep_restore_state` keeps the arguments of protocol 5's `_frombuffer(buffer, dtype, shape,
    // order)`; for older protocols BUILD replaces the array by its state either way.
    let value = serde_pickle::value_from_slice(bytes, DeOptions::new().keep_restore_state())
        .map_err(|source| Error::Pickle {
            path: origin.to_owned(),
            source,
        })?;
    let invalid = |what: String| Error::Invalid {
        path: origin.to_owned(),
        what,
    };
    let Value::Dict(dict) = value else {
        return Err(invalid(format!(
            "the top object is {}, not a dict",
            kind(&value)
        )));
    };
    dict.into_iter()
        .map(|(key, value)| match key {
            HashableValue::Bytes(b) => String::from_utf8(b)
                .map(|k| (k, value))
                .map_err(|_| invalid("a key is not UTF-8".into())),
            HashableValue::String(s) => Ok((s, value)),
            other => Err(invalid(format!("a key is {other:?}, not a string"))),
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

/// Field access with errors that name the file and the key.
struct Fields<'a> {
    items: Vec<(String, Value)>,
    origin: &'a Path,
}

impl Fields<'_> {
    fn invalid(&self, what: String) -> Error {
        Error::Invalid {
            path: self.origin.to_owned(),
            what,
        }
    }

    fn take(&mut self, key: &str) -> Result<Value, Error> {
        match self.items.iter().position(|(k, _)| k == key) {
            Some(idx) => Ok(self.items.swap_remove(idx).1),
            None => Err(self.invalid(format!("no `{key}` entry"))),
        }
    }

    fn text(&self, key: &str, value: Value) -> Result<String, Error> {
        match value {
            Value::String(s) => Ok(s),
            Value::Bytes(b) => {
                String::from_utf8(b).map_err(|_| self.invalid(format!("`{key}` is not UTF-8")))
            }
            other => Err(self.invalid(format!("`{key}` is {}, not a str", kind(&other)))),
        }
    }

    fn texts(&mut self, key: &str) -> Result<Vec<String>, Error> {
        let Value::List(items) = self.take(key)? else {
            return Err(self.invalid(format!("`{key}` is not a list")));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(idx, item)| self.text(&format!("{key}[{idx}]"), item))
            .collect()
    }

    fn labels(&mut self, key: &str, classes: usize) -> Result<Vec<u8>, Error> {
        let Value::List(items) = self.take(key)? else {
            return Err(self.invalid(format!("`{key}` is not a list")));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(idx, item)| match item {
                Value::I64(label) if (0..classes as i64).contains(&label) => Ok(label as u8),
                Value::I64(label) => {
                    Err(self.invalid(format!("`{key}[{idx}]` is {label}, outside 0..{classes}")))
                }
                other => {
                    Err(self.invalid(format!("`{key}[{idx}]` is {}, not an int", kind(&other))))
                }
            })
            .collect()
    }

    /// The `data` array's raw bytes, after checking its layout, and its row count.
    fn array(&mut self) -> Result<(Vec<u8>, usize), Error> {
        let value = self.take("data")?;
        let Value::Tuple(mut parts) = value else {
            return Err(self.invalid(format!("`data` is {}, not a numpy array", kind(&value))));
        };
        let (raw, shape, fortran) = match parts.len() {
            // Protocols 2-4: BUILD state (version, shape, dtype, is_fortran, raw bytes).
            5 => {
                if parts[0] != Value::I64(1) {
                    return Err(self.invalid("`data`: unknown numpy array state version".into()));
                }
                let raw = parts.pop();
                let fortran = parts.pop();
                parts.pop(); // dtype: its name was checked by the scan; BUILD lost it
                (raw, parts.pop(), fortran == Some(Value::Bool(true)))
            }
            // Protocol 5 in band: _frombuffer(buffer, dtype, shape, order).
            4 => {
                let order = parts.pop();
                let shape = parts.pop();
                parts.pop();
                let fortran = match order {
                    Some(Value::String(o)) => o == "F",
                    Some(Value::Bytes(o)) => o == b"F",
                    _ => return Err(self.invalid("`data`: no array order".into())),
                };
                (parts.pop(), shape, fortran)
            }
            n => {
                return Err(
                    self.invalid(format!("`data` is a {n}-tuple, not a numpy array's state"))
                );
            }
        };
        if fortran {
            return Err(self.invalid("`data` is in Fortran order".into()));
        }
        let rows = match shape {
            Some(Value::Tuple(dims)) => match dims.as_slice() {
                [Value::I64(rows), Value::I64(cols)] if *rows >= 0 && *cols == 3072 => {
                    *rows as usize
                }
                _ => {
                    return Err(
                        self.invalid(format!("`data` has shape {dims:?}, expected (N, 3072)"))
                    );
                }
            },
            _ => return Err(self.invalid("`data` has no shape".into())),
        };
        let Some(Value::Bytes(raw)) = raw else {
            return Err(self.invalid("`data` holds no raw bytes".into()));
        };
        if raw.len() != rows * IMAGE_BYTES {
            return Err(self.invalid(format!(
                "`data` holds {} bytes, expected {rows} × 3072 = {}",
                raw.len(),
                rows * IMAGE_BYTES
            )));
        }
        Ok((raw, rows))
    }
}

/// Decodes one batch file's bytes; `origin` names it in errors.
///
/// serde-pickle copies the pixels out of `bytes`; they are reordered in that copy, which becomes
/// the [`Batch`]'s, so while this runs `bytes` and one batch of pixels are resident (about 61 MB
/// for a 10,000-image batch), and afterwards only the pixels. A caller decoding many batches can
/// read each file into the buffer the previous one was read into.
pub fn decode_batch(bytes: &[u8], dataset: Dataset, origin: &Path) -> Result<Batch, Error> {
    let mut fields = Fields {
        items: load(bytes, origin)?,
        origin,
    };
    let (mut pixels, rows) = fields.array()?;
    let (labels, coarse_labels) = match dataset {
        Dataset::Cifar10 => (fields.labels("labels", 10)?, Vec::new()),
        Dataset::Cifar100 => (
            fields.labels("fine_labels", 100)?,
            fields.labels("coarse_labels", 20)?,
        ),
    };
    let filenames = fields.texts("filenames")?;
    let batch_label = match fields.take("batch_label") {
        Ok(value) => fields.text("batch_label", value)?,
        Err(_) => String::new(),
    };
    for (key, len) in [("labels", labels.len()), ("filenames", filenames.len())]
        .into_iter()
        .chain((dataset == Dataset::Cifar100).then_some(("coarse_labels", coarse_labels.len())))
    {
        if len != rows {
            return Err(fields.invalid(format!(
                "`{key}` has {len} entries but `data` has {rows} images"
            )));
        }
    }
    planes_to_hwc(&mut pixels);
    Ok(Batch {
        batch_label,
        labels,
        coarse_labels,
        filenames,
        pixels,
    })
}

/// Decodes `batches.meta` or `meta`; `origin` names it in errors.
pub fn decode_meta(bytes: &[u8], dataset: Dataset, origin: &Path) -> Result<Meta, Error> {
    let mut fields = Fields {
        items: load(bytes, origin)?,
        origin,
    };
    let (label_names, coarse_label_names) = match dataset {
        Dataset::Cifar10 => (fields.texts("label_names")?, Vec::new()),
        Dataset::Cifar100 => (
            fields.texts("fine_label_names")?,
            fields.texts("coarse_label_names")?,
        ),
    };
    for (key, names, want) in [
        ("label names", &label_names, dataset.classes()),
        (
            "coarse label names",
            &coarse_label_names,
            if dataset == Dataset::Cifar100 { 20 } else { 0 },
        ),
    ] {
        if names.len() != want {
            return Err(fields.invalid(format!("{} {key}, expected {want}", names.len())));
        }
    }
    Ok(Meta {
        label_names,
        coarse_label_names,
    })
}

/// CIFAR rows (three 32×32 planes each) to height-width-channel pixels, in place, one image at a
/// time through a buffer on the stack (no second copy of the batch).
fn planes_to_hwc(pixels: &mut [u8]) {
    let mut row = [0u8; IMAGE_BYTES];
    for image in pixels.chunks_exact_mut(IMAGE_BYTES) {
        row.copy_from_slice(image);
        let (red, rest) = row.split_at(SIDE * SIDE);
        let (green, blue) = rest.split_at(SIDE * SIDE);
        for (pixel, ((&r, &g), &b)) in image
            .chunks_exact_mut(3)
            .zip(red.iter().zip(green).zip(blue))
        {
            pixel.copy_from_slice(&[r, g, b]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_become_pixels_in_place() {
        let mut pixels: Vec<u8> = (0..2 * IMAGE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let planes = pixels.clone();
        planes_to_hwc(&mut pixels);
        for (idx, (image, row)) in pixels
            .chunks_exact(IMAGE_BYTES)
            .zip(planes.chunks_exact(IMAGE_BYTES))
            .enumerate()
        {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    for c in 0..3 {
                        assert_eq!(
                            image[(y * SIDE + x) * 3 + c],
                            row[c * SIDE * SIDE + y * SIDE + x],
                            "image {idx} ({y}, {x}) channel {c}"
                        );
                    }
                }
            }
        }
    }
}
