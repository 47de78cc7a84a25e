//! TFRecord files for the retrain pipeline: the stage between the sorted image folders and training.
//!
//! - [`record`]: TFRecord framing (length, masked CRC-32C, data, masked CRC-32C), a writer and a
//!   checking reader over any `Write`/`Read`.
//! - [`proto`]: `tf.train.Example` and TensorBoard's `Event` and `Summary`, derived with prost with
//!   TensorFlow's field numbers; deterministic encoding.
//! - [`example`]: the nine image features of `build_image_data.py` as [`ImageRecord`], and readers
//!   that yield decoded examples (from our files or TensorFlow's).
//! - [`mod@build`]: the sharded builder, `build_image_data.py` rebuilt: class folders of PNG or JPEG
//!   files → shuffled, sharded TFRecords of JPEG examples, in parallel, the same bytes for a seed
//!   whatever the thread count.
//! - [`events`]: TensorBoard event files for the training stage.
//! - [`inspect`]: counts per label, feature keys and sample examples of TFRecord files.
//! - [`jpeg`]: the fast baseline JPEG encoder behind the builder.

pub mod build;
pub mod events;
pub mod example;
pub mod inspect;
pub mod jpeg;
pub mod proto;
pub mod record;

use std::io;
use std::path::PathBuf;

pub use build::{Config, build, run};
pub use events::EventWriter;
pub use example::{ExampleReader, FeatureError, ImageRecord, read_images};
pub use proto::{Event, Example};
pub use record::{RecordReader, RecordWriter};

/// Errors of this crate; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: corrupt record at byte {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error(
        "{}: truncated record at byte {offset}: the file ends {what} ({got} bytes of the record present)",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        got: u64,
    },
    #[error("{}: record at byte {offset} is not a tf.train.Example", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{}: record at byte {offset}", path.display())]
    Feature {
        path: PathBuf,
        offset: u64,
        #[source]
        source: FeatureError,
    },
    #[error("{}: {problem}", path.display())]
    Labels { path: PathBuf, problem: String },
    #[error("{}: class folder {problem}", path.display())]
    ClassFolder {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{}: neither a regular file nor a directory", path.display())]
    FileType { path: PathBuf },
    #[error("{}: file name is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("--{flag} must be at least 1, got {got}")]
    Shards { flag: &'static str, got: usize },
    #[error("the output directory {} is inside the input {}", out.display(), input.display())]
    OutputInsideInput { out: PathBuf, input: PathBuf },
    #[error(transparent)]
    Stage(#[from] retrain_stage::Error),
}
