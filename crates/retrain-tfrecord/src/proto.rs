//! TensorFlow's protocol buffers, derived by hand with `prost` (no `protoc` at build time), with the
//! field numbers of `tensorflow/core/example/{example,feature}.proto` and
//! `tensorflow/core/{util/event,framework/summary}.proto`. All are proto3: scalars at their default
//! value are not written, repeated numbers are packed.
//!
//! Encoding is deterministic: [`Features::feature`] is a `BTreeMap`, which prost writes in key order
//! (what TensorFlow's C++ and Python write with `deterministic=True`). Decoding skips unknown fields,
//! so events and examples from newer writers still read.

use std::collections::BTreeMap;

/// `tensorflow.Example`: one record of a TFRecord dataset.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Example {
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

/// `tensorflow.Features`: feature name → value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Features {
    #[prost(btree_map = "string, message", tag = "1")]
    pub feature: BTreeMap<String, Feature>,
}

/// `tensorflow.Feature`: one of three list types.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Feature {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub kind: Option<Kind>,
}

/// The `kind` oneof of `tensorflow.Feature`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    BytesList(BytesList),
    #[prost(message, tag = "2")]
    FloatList(FloatList),
    #[prost(message, tag = "3")]
    Int64List(Int64List),
}

/// `tensorflow.BytesList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesList {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

/// `tensorflow.FloatList` (packed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatList {
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

/// `tensorflow.Int64List` (packed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64List {
    #[prost(int64, repeated, tag = "1")]
    pub value: Vec<i64>,
}

impl Feature {
    /// A `bytes_list` of one value.
    pub fn bytes(value: impl Into<Vec<u8>>) -> Self {
        Self {
            kind: Some(Kind::BytesList(BytesList {
                value: vec![value.into()],
            })),
        }
    }

    /// An `int64_list` of one value.
    pub fn int64(value: i64) -> Self {
        Self {
            kind: Some(Kind::Int64List(Int64List { value: vec![value] })),
        }
    }

    /// A `float_list`.
    pub fn floats(value: Vec<f32>) -> Self {
        Self {
            kind: Some(Kind::FloatList(FloatList { value })),
        }
    }

    /// The list type's name as in the `.proto`: `bytes_list`, `float_list`, `int64_list`, or
    /// `none` when the oneof is unset.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Some(Kind::BytesList(_)) => "bytes_list",
            Some(Kind::FloatList(_)) => "float_list",
            Some(Kind::Int64List(_)) => "int64_list",
            None => "none",
        }
    }

    /// Number of values in the list.
    pub fn len(&self) -> usize {
        match &self.kind {
            Some(Kind::BytesList(l)) => l.value.len(),
            Some(Kind::FloatList(l)) => l.value.len(),
            Some(Kind::Int64List(l)) => l.value.len(),
            None => 0,
        }
    }

    /// Whether the list holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Example {
    /// An example with these features.
    pub fn from_features(feature: BTreeMap<String, Feature>) -> Self {
        Self {
            features: Some(Features { feature }),
        }
    }

    /// The feature map (empty when `features` is unset).
    pub fn feature_map(&self) -> Option<&BTreeMap<String, Feature>> {
        self.features.as_ref().map(|f| &f.feature)
    }

    /// The feature named `key`.
    pub fn feature(&self, key: &str) -> Option<&Feature> {
        self.feature_map()?.get(key)
    }

    /// The values of a `bytes_list` feature; `None` if absent or of another type.
    pub fn bytes_list(&self, key: &str) -> Option<&[Vec<u8>]> {
        match &self.feature(key)?.kind {
            Some(Kind::BytesList(l)) => Some(&l.value),
            _ => None,
        }
    }

    /// The values of an `int64_list` feature; `None` if absent or of another type.
    pub fn int64_list(&self, key: &str) -> Option<&[i64]> {
        match &self.feature(key)?.kind {
            Some(Kind::Int64List(l)) => Some(&l.value),
            _ => None,
        }
    }

    /// The values of a `float_list` feature; `None` if absent or of another type.
    pub fn float_list(&self, key: &str) -> Option<&[f32]> {
        match &self.feature(key)?.kind {
            Some(Kind::FloatList(l)) => Some(&l.value),
            _ => None,
        }
    }
}

/// `tensorflow.Event`: one record of a TensorBoard event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 4, 5, 9")]
    pub what: Option<What>,
}

/// The `what` oneof of `tensorflow.Event` (the fields this project writes or may meet; others are
/// skipped on reading).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// `"brain.Event:2"` in the first record of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// A serialized `GraphDef`, kept as bytes.
    #[prost(bytes, tag = "4")]
    GraphDef(Vec<u8>),
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A serialized `MetaGraphDef`, kept as bytes.
    #[prost(bytes, tag = "9")]
    MetaGraphDef(Vec<u8>),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a tagged value (only `simple_value` among its oneof is modelled;
/// images, histograms, audio and tensors are skipped on reading).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Value", tags = "2")]
    pub value: Option<Value>,
    #[prost(string, tag = "7")]
    pub node_name: String,
}

/// The `value` oneof of `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn features_encode_in_key_order() {
        let mut map = BTreeMap::new();
        map.insert("b".to_owned(), Feature::int64(2));
        map.insert("a".to_owned(), Feature::int64(1));
        let bytes = Example::from_features(map).encode_to_vec();
        let a = bytes.iter().position(|&b| b == b'a').unwrap();
        let b = bytes.iter().position(|&b| b == b'b').unwrap();
        assert!(a < b);
    }

    #[test]
    fn int64_lists_are_packed() {
        let bytes = Int64List {
            value: vec![1, 2, 3],
        }
        .encode_to_vec();
        // field 1, wire type 2 (length-delimited), 3 bytes, 1 2 3
        assert_eq!(bytes, [0x0a, 3, 1, 2, 3]);
    }

    #[test]
    fn a_file_version_event_has_the_expected_bytes() {
        let event = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        };
        let bytes = event.encode_to_vec();
        assert_eq!(bytes[0], 0x09); // field 1, fixed64
        assert_eq!(&bytes[1..9], &1.5f64.to_le_bytes());
        assert_eq!(bytes[9], 0x1a); // field 3, length-delimited
        assert_eq!(&bytes[11..], b"brain.Event:2");
    }
}
