//! The nine features of `build_image_data.py` as a typed record, and readers that yield decoded
//! examples from TFRecord files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::Error;
use crate::proto::{Example, Feature, Kind};
use crate::record::RecordReader;

/// Feature keys, as `build_image_data.py` writes them.
pub mod keys {
    pub const HEIGHT: &str = "image/height";
    pub const WIDTH: &str = "image/width";
    pub const COLORSPACE: &str = "image/colorspace";
    pub const CHANNELS: &str = "image/channels";
    pub const LABEL: &str = "image/class/label";
    pub const TEXT: &str = "image/class/text";
    pub const FORMAT: &str = "image/format";
    pub const FILENAME: &str = "image/filename";
    pub const ENCODED: &str = "image/encoded";
    /// All nine, in key order (the order they are encoded in).
    pub const ALL: [&str; 9] = [
        CHANNELS, LABEL, TEXT, COLORSPACE, ENCODED, FILENAME, FORMAT, HEIGHT, WIDTH,
    ];
}

/// What is wrong with one feature of an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    #[error("feature {key} is missing")]
    Missing { key: String },
    #[error("feature {key} is {got}, expected {expected}")]
    Type {
        key: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("feature {key} holds {got} values, expected 1")]
    Count { key: String, got: usize },
    #[error("feature {key} is not UTF-8")]
    NotUtf8 { key: String },
    #[error("the example has no features")]
    NoFeatures,
}

/// One image example with the features of `build_image_data.py`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// `image/encoded`: the encoded image (JPEG).
    pub encoded: Vec<u8>,
    /// `image/height`, pixels.
    pub height: i64,
    /// `image/width`, pixels.
    pub width: i64,
    /// `image/channels`: 3.
    pub channels: i64,
    /// `image/colorspace`: `RGB`.
    pub colorspace: String,
    /// `image/format`: `JPEG`.
    pub format: String,
    /// `image/class/label`: 1-based line of the class in the labels file (0 is "background").
    pub label: i64,
    /// `image/class/text`: the class name.
    pub text: String,
    /// `image/filename`: the source file's base name.
    pub filename: String,
}

impl ImageRecord {
    /// A JPEG image record with `channels` 3, colorspace `RGB` and format `JPEG`.
    pub fn jpeg(
        encoded: Vec<u8>,
        height: u32,
        width: u32,
        label: i64,
        text: &str,
        filename: &str,
    ) -> Self {
        Self {
            encoded,
            height: i64::from(height),
            width: i64::from(width),
            channels: 3,
            colorspace: "RGB".into(),
            format: "JPEG".into(),
            label,
            text: text.into(),
            filename: filename.into(),
        }
    }

    /// Reads the nine features; other features are ignored.
    pub fn from_example(example: &Example) -> Result<Self, FeatureError> {
        let map = example.feature_map().ok_or(FeatureError::NoFeatures)?;
        Ok(Self {
            encoded: one_bytes(map, keys::ENCODED)?.to_vec(),
            height: one_int64(map, keys::HEIGHT)?,
            width: one_int64(map, keys::WIDTH)?,
            channels: one_int64(map, keys::CHANNELS)?,
            colorspace: one_text(map, keys::COLORSPACE)?,
            format: one_text(map, keys::FORMAT)?,
            label: one_int64(map, keys::LABEL)?,
            text: one_text(map, keys::TEXT)?,
            filename: one_text(map, keys::FILENAME)?,
        })
    }

    /// The example holding exactly the nine features.
    pub fn to_example(&self) -> Example {
        let mut map = BTreeMap::new();
        let mut put = |key: &str, feature| {
            map.insert(key.to_owned(), feature);
        };
        put(keys::HEIGHT, Feature::int64(self.height));
        put(keys::WIDTH, Feature::int64(self.width));
        put(keys::COLORSPACE, Feature::bytes(self.colorspace.as_bytes()));
        put(keys::CHANNELS, Feature::int64(self.channels));
        put(keys::LABEL, Feature::int64(self.label));
        put(keys::TEXT, Feature::bytes(self.text.as_bytes()));
        put(keys::FORMAT, Feature::bytes(self.format.as_bytes()));
        put(keys::FILENAME, Feature::bytes(self.filename.as_bytes()));
        put(keys::ENCODED, Feature::bytes(self.encoded.clone()));
        Example::from_features(map)
    }

    /// The serialized example.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        buf
    }

    /// Appends the serialized example to `buf`: the bytes prost gives for [`Self::to_example`]
    /// (a test checks), written directly, without building the map or copying the image.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        enum Value<'a> {
            Bytes(&'a [u8]),
            Int64(i64),
        }
        // Key order, as the BTreeMap encodes them.
        let features = [
            (keys::CHANNELS, Value::Int64(self.channels)),
            (keys::LABEL, Value::Int64(self.label)),
            (keys::TEXT, Value::Bytes(self.text.as_bytes())),
            (keys::COLORSPACE, Value::Bytes(self.colorspace.as_bytes())),
            (keys::ENCODED, Value::Bytes(&self.encoded)),
            (keys::FILENAME, Value::Bytes(self.filename.as_bytes())),
            (keys::FORMAT, Value::Bytes(self.format.as_bytes())),
            (keys::HEIGHT, Value::Int64(self.height)),
            (keys::WIDTH, Value::Int64(self.width)),
        ];
        // Feature { bytes_list (1) | int64_list (3) { value (1): one bytes, or packed varints } }.
        let list_len = |value: &Value<'_>| match value {
            Value::Bytes(b) => field_len(b.len()),
            Value::Int64(v) => field_len(varint_len(*v as u64)),
        };
        let entry_len = |key: &str, value: &Value<'_>| {
            field_len(key.len()) + field_len(field_len(list_len(value)))
        };
        let features_len: usize = features
            .iter()
            .map(|(key, value)| field_len(entry_len(key, value)))
            .sum();
        buf.reserve(field_len(features_len));
        put_tag_len(buf, 1, features_len); // Example.features
        for (key, value) in &features {
            put_tag_len(buf, 1, entry_len(key, value)); // Features.feature map entry
            put_tag_len(buf, 1, key.len()); // entry key
            buf.extend_from_slice(key.as_bytes());
            let list = list_len(value);
            put_tag_len(buf, 2, field_len(list)); // entry value: Feature
            match value {
                Value::Bytes(bytes) => {
                    put_tag_len(buf, 1, list); // Feature.bytes_list
                    put_tag_len(buf, 1, bytes.len()); // BytesList.value
                    buf.extend_from_slice(bytes);
                }
                Value::Int64(v) => {
                    put_tag_len(buf, 3, list); // Feature.int64_list
                    put_tag_len(buf, 1, varint_len(*v as u64)); // Int64List.value, packed
                    put_varint(buf, *v as u64);
                }
            }
        }
    }
}

/// Bytes of a length-delimited field with a one-byte tag and `len` bytes of payload.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A length-delimited field's tag (wire type 2) and length.
fn put_tag_len(buf: &mut Vec<u8>, field: u8, len: usize) {
    buf.push((field << 3) | 2);
    put_varint(buf, len as u64);
}

fn get<'a>(map: &'a BTreeMap<String, Feature>, key: &str) -> Result<&'a Feature, FeatureError> {
    map.get(key)
        .ok_or_else(|| FeatureError::Missing { key: key.into() })
}

fn one_int64(map: &BTreeMap<String, Feature>, key: &str) -> Result<i64, FeatureError> {
    let feature = get(map, key)?;
    match &feature.kind {
        Some(Kind::Int64List(list)) if list.value.len() == 1 => Ok(list.value[0]),
        Some(Kind::Int64List(list)) => Err(FeatureError::Count {
            key: key.into(),
            got: list.value.len(),
        }),
        _ => Err(FeatureError::Type {
            key: key.into(),
            expected: "int64_list",
            got: feature.type_name(),
        }),
    }
}

fn one_bytes<'a>(map: &'a BTreeMap<String, Feature>, key: &str) -> Result<&'a [u8], FeatureError> {
    let feature = get(map, key)?;
    match &feature.kind {
        Some(Kind::BytesList(list)) if list.value.len() == 1 => Ok(&list.value[0]),
        Some(Kind::BytesList(list)) => Err(FeatureError::Count {
            key: key.into(),
            got: list.value.len(),
        }),
        _ => Err(FeatureError::Type {
            key: key.into(),
            expected: "bytes_list",
            got: feature.type_name(),
        }),
    }
}

fn one_text(map: &BTreeMap<String, Feature>, key: &str) -> Result<String, FeatureError> {
    let bytes = one_bytes(map, key)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| FeatureError::NotUtf8 { key: key.into() })
}

/// Yields each record of a TFRecord stream decoded as an [`Example`]; stops after the first error.
#[derive(Debug)]
pub struct ExampleReader<R: Read> {
    records: RecordReader<R>,
    buf: Vec<u8>,
    failed: bool,
}

impl ExampleReader<BufReader<File>> {
    /// Opens a TFRecord file (ours or TensorFlow's: the format is the same).
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(Self::new(RecordReader::open(path)?))
    }
}

impl<R: Read> ExampleReader<R> {
    pub fn new(records: RecordReader<R>) -> Self {
        Self {
            records,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// The file's name, as given.
    pub fn path(&self) -> &Path {
        self.records.path()
    }

    /// Byte offset of the record most recently read.
    pub fn record_offset(&self) -> u64 {
        self.records.record_offset()
    }

    /// The next example; `Ok(None)` at the end.
    pub fn read_example(&mut self) -> Result<Option<Example>, Error> {
        if !self.records.read_record(&mut self.buf)? {
            return Ok(None);
        }
        Example::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|source| Error::Decode {
                path: self.records.path().to_owned(),
                offset: self.records.record_offset(),
                source,
            })
    }

    /// The next example's nine image features; `Ok(None)` at the end.
    pub fn read_image(&mut self) -> Result<Option<ImageRecord>, Error> {
        let Some(example) = self.read_example()? else {
            return Ok(None);
        };
        ImageRecord::from_example(&example)
            .map(Some)
            .map_err(|source| Error::Feature {
                path: self.records.path().to_owned(),
                offset: self.records.record_offset(),
                source,
            })
    }

    /// An iterator over the nine image features of each example.
    pub fn images(self) -> Images<R> {
        Images { reader: self }
    }
}

impl<R: Read> Iterator for ExampleReader<R> {
    type Item = Result<Example, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.read_example().transpose();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// Iterator over [`ImageRecord`]s; see [`ExampleReader::images`].
#[derive(Debug)]
pub struct Images<R: Read> {
    reader: ExampleReader<R>,
}

impl<R: Read> Iterator for Images<R> {
    type Item = Result<ImageRecord, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.failed {
            return None;
        }
        let item = self.reader.read_image().transpose();
        if matches!(item, Some(Err(_))) {
            self.reader.failed = true;
        }
        item
    }
}

/// Every image record of `files`, in order: the files one after the other.
pub fn read_images(files: &[PathBuf]) -> impl Iterator<Item = Result<ImageRecord, Error>> + '_ {
    files.iter().flat_map(|path| {
        let opened: Box<dyn Iterator<Item = Result<ImageRecord, Error>>> =
            match ExampleReader::open(path) {
                Ok(reader) => Box::new(reader.images()),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
        opened
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_listed_in_encoding_order() {
        let mut sorted = keys::ALL;
        sorted.sort_unstable();
        assert_eq!(sorted, keys::ALL);
    }

    #[test]
    fn the_direct_encoding_is_prosts() {
        let records = [
            ImageRecord::jpeg(vec![1, 2, 3], 32, 24, 4, "cat", "cat_s_1.png"),
            ImageRecord::jpeg(vec![7; 300], 0, 65535, -1, "", ""),
            ImageRecord {
                encoded: vec![0xff; 20_000],
                height: i64::MAX,
                width: i64::MIN,
                channels: 0,
                colorspace: "x".repeat(200),
                format: String::new(),
                label: 1 << 40,
                text: "ü".into(),
                filename: "a b".into(),
            },
        ];
        for record in records {
            assert_eq!(record.encode_to_vec(), record.to_example().encode_to_vec());
        }
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn an_image_record_round_trips() {
        let record = ImageRecord::jpeg(vec![1, 2, 3], 32, 24, 4, "cat", "cat_s_1.png");
        let decoded = Example::decode(record.encode_to_vec().as_slice()).unwrap();
        assert_eq!(ImageRecord::from_example(&decoded).unwrap(), record);
    }

    #[test]
    fn wrong_features_are_named() {
        let mut example = ImageRecord::jpeg(vec![], 1, 1, 1, "a", "b").to_example();
        fn map(e: &mut Example) -> &mut BTreeMap<String, Feature> {
            &mut e.features.as_mut().unwrap().feature
        }
        map(&mut example).insert(keys::LABEL.into(), Feature::bytes("x"));
        map(&mut example).remove(keys::TEXT);
        assert_eq!(
            ImageRecord::from_example(&example).unwrap_err().to_string(),
            "feature image/class/label is bytes_list, expected int64_list"
        );
        map(&mut example).insert(keys::LABEL.into(), Feature::int64(1));
        assert_eq!(
            ImageRecord::from_example(&example).unwrap_err().to_string(),
            "feature image/class/text is missing"
        );
    }
}
