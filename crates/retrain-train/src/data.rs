//! The TFRecord dataset index: the shards of one split, where each record starts and its label.
//!
//! [`Dataset::open`] reads every record of `<split>-*-of-*` once (checking both checksums of each)
//! and keeps only its byte offset and label, so an epoch's order can be planned without touching
//! the images, and [`Dataset::read`] fetches one record by seeking straight to it, from any number
//! of threads at once.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use retrain_tfrecord::{ExampleReader, ImageRecord, RecordReader};
use sha2::{Digest as _, Sha256};

/// The labels file looked for beside the shards when none is given.
pub const LABELS_FILE: &str = "labels.txt";

/// The largest label accepted without a labels file (a bound on the memory a bad label can take).
pub const MAX_CLASSES_UNLISTED: usize = 1 << 20;

/// Buffer for reading one record (records are usually a few kB to a few hundred kB).
const READ_BUFFER: usize = 1 << 16;

/// Which shards: `train-*-of-*` or `validation-*-of-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    /// `train` or `validation`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }

    /// The shard name prefix, `train-` or `validation-`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train-",
            Split::Validation => "validation-",
        }
    }

    /// Whether a file name has the form `<split>-*-of-*` (both `*` non-empty).
    fn matches(self, name: &str) -> bool {
        name.strip_prefix(self.prefix())
            .and_then(|rest| rest.split_once("-of-"))
            .is_some_and(|(shard, total)| !shard.is_empty() && !total.is_empty())
    }
}

/// Where one record is and what it is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Index into [`Dataset::files`].
    pub file: u32,
    /// Byte offset of the record in its file.
    pub offset: u64,
    /// Class index, 0-based (`image/class/label - 1`).
    pub label: u32,
}

/// Errors of the dataset index; each names the file (and the record) concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("listing {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no {split} shards (files named {split}-*-of-*)", dir.display())]
    NoShards { dir: PathBuf, split: &'static str },
    #[error("{}: more shards than an index can hold", dir.display())]
    TooManyShards { dir: PathBuf },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Framing, checksum, truncation or `tf.train.Example` errors; they name the shard and offset.
    #[error(transparent)]
    Record(#[from] retrain_tfrecord::Error),
    #[error(
        "{}: record {record} (byte {offset}): {}",
        path.display(),
        label_problem(*label, *n_classes)
    )]
    Label {
        path: PathBuf,
        /// 0-based record number in the shard.
        record: u64,
        offset: u64,
        label: i64,
        /// The number of classes in the labels file; `None` without one.
        n_classes: Option<usize>,
    },
    /// A record's class name disagrees with the labels file or an earlier record (boxed: it is
    /// the largest variant).
    #[error("{0}")]
    ClassText(Box<ClassTextMismatch>),
    #[error(
        "{}: no {split} record has label {label} (of 1..={n_classes}), so its class name is unknown; give a labels file",
        dir.display()
    )]
    MissingClass {
        dir: PathBuf,
        split: &'static str,
        label: usize,
        n_classes: usize,
    },
    #[error("{}: no record at byte {offset} (was the shard changed after it was indexed?)", path.display())]
    Missing { path: PathBuf, offset: u64 },
    #[error(
        "{}: the record at byte {offset} has label {got}, the index says {expected} (was the shard changed after it was indexed?)",
        path.display()
    )]
    Changed {
        path: PathBuf,
        offset: u64,
        got: i64,
        expected: i64,
    },
    #[error("record index {idx} is out of range: the dataset has {len} records")]
    Index { idx: usize, len: usize },
}

/// A record whose `image/class/text` is not its class's name; see [`Error::ClassText`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassTextMismatch {
    /// The shard.
    pub path: PathBuf,
    /// 0-based record number in the shard.
    pub record: u64,
    /// Byte offset of the record.
    pub offset: u64,
    /// `image/class/label`, 1-based.
    pub label: i64,
    /// `image/class/text`.
    pub text: String,
    /// The class's name.
    pub expected: String,
    /// Where the name comes from: the labels file, or `None` for an earlier record.
    pub labels_file: Option<PathBuf>,
}

impl fmt::Display for ClassTextMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: record {} (byte {}): label {} is {:?} but class {} is {:?} ",
            self.path.display(),
            self.record,
            self.offset,
            self.label,
            self.text,
            self.label,
            self.expected
        )?;
        match &self.labels_file {
            Some(path) => write!(f, "in {}", path.display()),
            None => write!(f, "in an earlier record"),
        }
    }
}

/// The records of one split of a TFRecord directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The directory holding the shards.
    pub dir: PathBuf,
    pub split: Split,
    /// The shards, sorted by file name.
    pub files: Vec<PathBuf>,
    /// Every record, shard by shard, in file order.
    pub records: Vec<RecordRef>,
    /// Class names by 0-based label.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Indexes the `<split>-*-of-*` shards of `dir` (sorted by name; hidden files, directories and
    /// other names are ignored), reading every record once for its offset and label, and the class
    /// names from `labels_file` if given, else from `dir/labels.txt` if present, else from the
    /// records' `image/class/text` (then the classes are `1..=` the largest label seen, each of
    /// which must occur).
    ///
    /// Labels must be `1..=n_classes`, 1-based as `build_image_data.py` writes them; with a labels
    /// file, a record's `image/class/text`, if not empty, must be its class's name. Checksum
    /// errors and truncated shards are errors naming the shard and the record's byte offset.
    #[tracing::instrument(skip_all, fields(dir = %dir.display(), split = split.name()))]
    pub fn open(dir: &Path, split: Split, labels_file: Option<&Path>) -> Result<Self, Error> {
        let files = list_shards(dir, split)?;
        if u32::try_from(files.len()).is_err() {
            return Err(Error::TooManyShards {
                dir: dir.to_owned(),
            });
        }
        let default_labels = dir.join(LABELS_FILE);
        let labels_file = match labels_file {
            Some(p) => Some(p.to_owned()),
            None => default_labels.is_file().then_some(default_labels),
        };
        let known_names = match &labels_file {
            Some(path) => Some(retrain_tfrecord::build::read_labels(path)?),
            None => None,
        };

        let mut records = Vec::new();
        // Class names seen in the records, by 0-based label (only without a labels file).
        let mut seen_names: Vec<Option<String>> = Vec::new();
        for (file_idx, path) in files.iter().enumerate() {
            let mut reader = ExampleReader::open(path)?;
            let mut record = 0u64;
            while let Some(image) = reader.read_image()? {
                let offset = reader.record_offset();
                let label = image.label;
                let n_classes = known_names.as_ref().map(Vec::len);
                let max_label = n_classes.unwrap_or(MAX_CLASSES_UNLISTED);
                if !usize::try_from(label).is_ok_and(|l| (1..=max_label).contains(&l)) {
                    return Err(Error::Label {
                        path: path.clone(),
                        record,
                        offset,
                        label,
                        n_classes,
                    });
                }
                let class_idx = (label - 1) as usize;
                let expected = match &known_names {
                    Some(names) => Some(names[class_idx].as_str()),
                    None => {
                        if seen_names.len() <= class_idx {
                            seen_names.resize(class_idx + 1, None);
                        }
                        seen_names[class_idx].get_or_insert_with(|| image.text.clone());
                        seen_names[class_idx].as_deref()
                    }
                };
                if let Some(expected) = expected
                    && !image.text.is_empty()
                    && image.text != expected
                {
                    return Err(Error::ClassText(Box::new(ClassTextMismatch {
                        path: path.clone(),
                        record,
                        offset,
                        label,
                        text: image.text,
                        expected: expected.to_owned(),
                        labels_file: labels_file.clone(),
                    })));
                }
                records.push(RecordRef {
                    file: file_idx as u32,
                    offset,
                    label: class_idx as u32,
                });
                record += 1;
            }
            tracing::debug!(shard = %path.display(), records = record, "indexed");
        }

        let class_names = match known_names {
            Some(names) => names,
            None => {
                let n_classes = seen_names.len();
                seen_names
                    .into_iter()
                    .enumerate()
                    .map(|(class_idx, name)| {
                        name.ok_or(Error::MissingClass {
                            dir: dir.to_owned(),
                            split: split.name(),
                            label: class_idx + 1,
                            n_classes,
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        tracing::info!(
            "{} {}: {} records in {} shards, {} classes",
            dir.display(),
            split.name(),
            records.len(),
            files.len(),
            class_names.len()
        );
        Ok(Self {
            dir: dir.to_owned(),
            split,
            files,
            records,
            class_names,
        })
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The number of classes (labels are `0..n_classes`).
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Reads record `idx`: opens its shard, seeks to the record and reads it, checking both
    /// checksums and that its label is the indexed one. Takes `&self` and shares no file handle,
    /// so any number of threads may call it at once.
    pub fn read(&self, idx: usize) -> Result<ImageRecord, Error> {
        let rec = *self.records.get(idx).ok_or(Error::Index {
            idx,
            len: self.records.len(),
        })?;
        let path = &self.files[rec.file as usize];
        let read_err = |source| Error::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        file.seek(SeekFrom::Start(rec.offset)).map_err(read_err)?;
        let records = RecordReader::new(BufReader::with_capacity(READ_BUFFER, file), path);
        let image = ExampleReader::new(records)
            .read_image()
            .map_err(|e| rebase(e, rec.offset))?
            .ok_or_else(|| Error::Missing {
                path: path.clone(),
                offset: rec.offset,
            })?;
        let expected = i64::from(rec.label) + 1;
        if image.label != expected {
            return Err(Error::Changed {
                path: path.clone(),
                offset: rec.offset,
                got: image.label,
                expected,
            });
        }
        Ok(image)
    }

    /// The bottleneck cache key: SHA-256 (lower-case hex) over, for each shard in order, its file
    /// name's length (u64 little-endian), the name's UTF-8 bytes, the content's length (u64
    /// little-endian) and the content.
    pub fn digest(&self) -> Result<String, Error> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        for path in &self.files {
            let read_err = |source| Error::Read {
                path: path.clone(),
                source,
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            let mut file = File::open(path).map_err(read_err)?;
            let len = file.metadata().map_err(read_err)?.len();
            hasher.update(len.to_le_bytes());
            let mut hashed = 0u64;
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                hasher.update(&buf[..n]);
                hashed += n as u64;
            }
            if hashed != len {
                return Err(read_err(io::Error::other(format!(
                    "the file changed size while being read ({len} bytes, then {hashed})"
                ))));
            }
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

fn label_problem(label: i64, n_classes: Option<usize>) -> String {
    let range = match n_classes {
        Some(n) => format!("1..={n}, the classes of the labels file"),
        None => format!("1..={MAX_CLASSES_UNLISTED}, the most accepted without a labels file"),
    };
    if label == 0 {
        format!(
            "label 0 is \"background\", which build_image_data.py never writes (class labels are 1-based: {range})"
        )
    } else {
        format!("label {label} is outside {range}")
    }
}

/// The `<split>-*-of-*` regular files of `dir`, sorted by name.
fn list_shards(dir: &Path, split: Split) -> Result<Vec<PathBuf>, Error> {
    let list_err = |source| Error::List {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !split.matches(name) {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links: a link to a shard is a shard.
        let is_file = fs::metadata(&path).map_err(list_err)?.is_file();
        if is_file {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::NoShards {
            dir: dir.to_owned(),
            split: split.name(),
        });
    }
    Ok(files)
}

/// Offsets in errors from a reader started at `base` count from `base`; make them absolute.
fn rebase(err: retrain_tfrecord::Error, base: u64) -> Error {
    use retrain_tfrecord::Error as E;
    Error::Record(match err {
        E::Corrupt { path, offset, what } => E::Corrupt {
            path,
            offset: offset + base,
            what,
        },
        E::Truncated {
            path,
            offset,
            what,
            got,
        } => E::Truncated {
            path,
            offset: offset + base,
            what,
            got,
        },
        E::Decode {
            path,
            offset,
            source,
        } => E::Decode {
            path,
            offset: offset + base,
            source,
        },
        E::Feature {
            path,
            offset,
            source,
        } => E::Feature {
            path,
            offset: offset + base,
            source,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_match_the_glob() {
        assert!(Split::Train.matches("train-00000-of-00002"));
        assert!(Split::Validation.matches("validation-00001-of-00002"));
        assert!(Split::Train.matches("train-a-of-b"));
        assert!(!Split::Train.matches("validation-00000-of-00002"));
        assert!(!Split::Train.matches("train-00000"));
        assert!(!Split::Train.matches("train--of-2"));
        assert!(!Split::Train.matches("train-1-of-"));
        assert!(!Split::Validation.matches("train-00000-of-00001"));
        assert!(!Split::Train.matches("xtrain-0-of-1"));
    }
}
