//! A look into TFRecord files of `tf.train.Example`s: records per file and per label, the feature
//! keys with their types, and the first few examples.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::PathBuf;

use crate::Error;
use crate::example::{ExampleReader, keys};
use crate::proto::{Example, Kind};

/// Values shown per feature of a sample example.
const MAX_VALUES: usize = 8;
/// Longest text shown as text; longer bytes are summarised.
const MAX_TEXT: usize = 64;

/// What [`inspect`] found.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Records per file, in the order given.
    pub files: Vec<(PathBuf, usize)>,
    /// `image/class/label` → (first `image/class/text` seen, records).
    pub labels: BTreeMap<i64, (Option<String>, usize)>,
    /// Records without a single `image/class/label` value.
    pub unlabelled: usize,
    /// Feature key → types seen, records holding it, fewest and most values.
    pub features: BTreeMap<String, FeatureStats>,
    /// The first examples: file, byte offset, example.
    pub examples: Vec<(PathBuf, u64, Example)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureStats {
    pub types: BTreeSet<&'static str>,
    pub records: usize,
    pub min_values: usize,
    pub max_values: usize,
}

/// Reads every record of `files`, keeping the first `n_examples` examples.
pub fn inspect(files: &[PathBuf], n_examples: usize) -> Result<Inspection, Error> {
    let mut found = Inspection::default();
    for path in files {
        let mut reader = ExampleReader::open(path)?;
        let mut records = 0;
        while let Some(example) = reader.read_example()? {
            records += 1;
            let map = example.feature_map();
            for (key, feature) in map.into_iter().flatten() {
                let stats = found.features.entry(key.clone()).or_default();
                let n = feature.len();
                if stats.records == 0 {
                    stats.min_values = n;
                }
                stats.types.insert(feature.type_name());
                stats.records += 1;
                stats.min_values = stats.min_values.min(n);
                stats.max_values = stats.max_values.max(n);
            }
            match example.int64_list(keys::LABEL) {
                Some(&[label]) => {
                    let text = example
                        .bytes_list(keys::TEXT)
                        .and_then(|v| v.first())
                        .map(|t| String::from_utf8_lossy(t).into_owned());
                    let entry = found.labels.entry(label).or_insert((text, 0));
                    entry.1 += 1;
                }
                _ => found.unlabelled += 1,
            }
            if found.examples.len() < n_examples {
                found
                    .examples
                    .push((path.clone(), reader.record_offset(), example));
            }
        }
        found.files.push((path.clone(), records));
    }
    Ok(found)
}

impl Inspection {
    /// Total records.
    pub fn records(&self) -> usize {
        self.files.iter().map(|f| f.1).sum()
    }

    /// The human-readable summary.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        for (path, records) in &self.files {
            writeln!(out, "{}: {records} records", path.display())?;
        }
        writeln!(
            out,
            "{} records in {} files",
            self.records(),
            self.files.len()
        )?;
        if !self.labels.is_empty() || self.unlabelled > 0 {
            writeln!(out, "\nrecords per label ({}):", keys::LABEL)?;
            for (label, (text, records)) in &self.labels {
                match text {
                    Some(text) => writeln!(out, "  {label:>4} {text}: {records}")?,
                    None => writeln!(out, "  {label:>4}: {records}")?,
                }
            }
            if self.unlabelled > 0 {
                writeln!(out, "  without a label: {}", self.unlabelled)?;
            }
        }
        if !self.features.is_empty() {
            writeln!(out, "\nfeatures (type, records holding it, values):")?;
            let width = self.features.keys().map(String::len).max().unwrap_or(0);
            for (key, stats) in &self.features {
                let types: Vec<&str> = stats.types.iter().copied().collect();
                let values = if stats.min_values == stats.max_values {
                    stats.min_values.to_string()
                } else {
                    format!("{}–{}", stats.min_values, stats.max_values)
                };
                writeln!(
                    out,
                    "  {key:<width$}  {}  {}  {values}",
                    types.join("|"),
                    stats.records
                )?;
            }
        }
        if !self.examples.is_empty() {
            writeln!(out, "\nfirst {} examples:", self.examples.len())?;
            for (path, offset, example) in &self.examples {
                writeln!(out, "  {}, record at byte {offset}:", path.display())?;
                for (key, feature) in example.feature_map().into_iter().flatten() {
                    writeln!(out, "    {key}: {}", show_values(&feature.kind))?;
                }
            }
        }
        Ok(())
    }
}

fn show_values(kind: &Option<Kind>) -> String {
    let items: Vec<String> = match kind {
        None => return "(no value)".into(),
        Some(Kind::Int64List(list)) => list.value.iter().map(i64::to_string).collect(),
        Some(Kind::FloatList(list)) => list.value.iter().map(|v| format!("{v:?}")).collect(),
        Some(Kind::BytesList(list)) => list.value.iter().map(|v| show_bytes(v)).collect(),
    };
    let n = items.len();
    match n {
        0 => "[]".into(),
        1 => items.into_iter().next().expect("one item"),
        _ if n <= MAX_VALUES => format!("[{}]", items.join(", ")),
        _ => format!("[{}, … ({n} values)]", items[..MAX_VALUES].join(", ")),
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.len() <= MAX_TEXT && !text.chars().any(char::is_control) => {
            format!("{text:?}")
        }
        _ => {
            let kind = if bytes.starts_with(b"\xff\xd8\xff") {
                "JPEG, "
            } else if bytes.starts_with(b"\x89PNG") {
                "PNG, "
            } else {
                ""
            };
            format!("<{kind}{} bytes>", bytes.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_show_as_text_or_a_size() {
        assert_eq!(show_bytes(b"RGB"), "\"RGB\"");
        assert_eq!(show_bytes(b"\xff\xd8\xff\xe0rest"), "<JPEG, 8 bytes>");
        assert_eq!(show_bytes(&[0u8; 3]), "<3 bytes>");
        let long = Some(Kind::Int64List(crate::proto::Int64List {
            value: (0..10).collect(),
        }));
        assert_eq!(
            show_values(&long),
            "[0, 1, 2, 3, 4, 5, 6, 7, … (10 values)]"
        );
    }
}
