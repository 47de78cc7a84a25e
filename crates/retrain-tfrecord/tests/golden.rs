//! Our encoders against bytes written by Python's protobuf (scripts/make_tfrecord_fixtures.py),
//! and our readers on files written by Python's `tfrecord` package and by TensorBoard.

use std::path::{Path, PathBuf};

use prost::Message as _;
use retrain_tfrecord::events::{EventWriter, EventWriterOptions, FixedClock};
use retrain_tfrecord::proto::{Event, Summary, SummaryValue, Value, What};
use retrain_tfrecord::record::RecordReader;
use retrain_tfrecord::{Example, ExampleReader, ImageRecord};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The values of scripts/make_tfrecord_fixtures.py's GOLDEN_IMAGE.
fn golden_image() -> ImageRecord {
    ImageRecord::jpeg(
        b"\xff\xd8\xff\xe0golden-jpeg-bytes\xff\xd9".to_vec(),
        32,
        24,
        4,
        "cat",
        "tabby_cat_s_000123.png",
    )
}

fn golden_events() -> (Event, Event) {
    let first = Event {
        wall_time: 1_700_000_000.25,
        step: 0,
        what: Some(What::FileVersion("brain.Event:2".into())),
    };
    let value = |tag: &str, v: f32| SummaryValue {
        tag: tag.into(),
        value: Some(Value::SimpleValue(v)),
        node_name: String::new(),
    };
    let scalars = Event {
        wall_time: 1_700_000_001.5,
        step: 10,
        what: Some(What::Summary(Summary {
            value: vec![value("loss", 0.25), value("accuracy", 0.875)],
        })),
    };
    (first, scalars)
}

#[test]
fn our_example_bytes_are_pythons() {
    let golden = std::fs::read(fixture("example.pb")).unwrap();
    let ours = golden_image();
    assert_eq!(ours.encode_to_vec(), golden);
    assert_eq!(ours.to_example().encode_to_vec(), golden);
    let decoded = Example::decode(golden.as_slice()).unwrap();
    assert_eq!(ImageRecord::from_example(&decoded).unwrap(), ours);
}

#[test]
fn our_event_bytes_are_pythons() {
    let (first, scalars) = golden_events();
    assert_eq!(
        first.encode_to_vec(),
        std::fs::read(fixture("event-file-version.pb")).unwrap()
    );
    assert_eq!(
        scalars.encode_to_vec(),
        std::fs::read(fixture("event-scalars.pb")).unwrap()
    );
}

#[test]
fn the_event_writer_writes_the_golden_events() {
    let dir = tempfile::tempdir().unwrap();
    let options = EventWriterOptions {
        clock: Box::new(FixedClock {
            next: 1_700_000_000.25,
            step: 1.25,
        }),
        hostname: Some("golden".into()),
        ..EventWriterOptions::default()
    };
    let mut writer = EventWriter::with_options(dir.path(), options).unwrap();
    writer
        .add_scalars(10, &[("loss", 0.25), ("accuracy", 0.875)])
        .unwrap();
    let path = writer.path().to_owned();
    writer.close().unwrap();
    assert_eq!(
        path.file_name().unwrap(),
        "events.out.tfevents.1700000000.golden"
    );
    let records: Vec<Vec<u8>> = RecordReader::open(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (first, scalars) = golden_events();
    assert_eq!(records, [first.encode_to_vec(), scalars.encode_to_vec()]);
}

#[test]
fn a_tfrecord_written_by_python_reads() {
    let examples: Vec<Example> = ExampleReader::open(&fixture("python.tfrecord"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(examples.len(), 3);
    let [first, second, third] = &examples[..] else {
        unreachable!()
    };
    assert_eq!(first.bytes_list("name").unwrap(), [b"first".to_vec()]);
    assert_eq!(first.int64_list("label").unwrap(), [1]);
    assert_eq!(first.float_list("score").unwrap(), [0.5]);
    assert_eq!(
        second.bytes_list("name").unwrap(),
        [b"second".to_vec(), b"two".to_vec()]
    );
    assert_eq!(second.int64_list("label").unwrap(), [-2, 300]);
    assert_eq!(second.float_list("score").unwrap(), [1.5, -0.25, 3.0]);
    assert_eq!(third.int64_list("image/class/label").unwrap(), [3]);
    assert_eq!(
        third.bytes_list("image/class/text").unwrap(),
        [b"frog".to_vec()]
    );
    // Not an image example: the typed accessor names the file, the record and the feature.
    let err = ExampleReader::open(&fixture("python.tfrecord"))
        .unwrap()
        .images()
        .next()
        .unwrap()
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(
        chain.ends_with("python.tfrecord: record at byte 0: feature image/encoded is missing"),
        "{chain}"
    );
}

#[test]
fn an_event_file_written_by_tensorboard_reads() {
    let events: Vec<Event> = RecordReader::open(&fixture("tensorboard.tfevents"))
        .unwrap()
        .map(|r| Event::decode(r.unwrap().as_slice()).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    let scalars: Vec<(i64, String, f32)> = events[1..]
        .iter()
        .map(|e| {
            let Some(What::Summary(summary)) = &e.what else {
                panic!("{e:?}")
            };
            let v = &summary.value[0];
            let Some(Value::SimpleValue(x)) = v.value else {
                panic!("{v:?}")
            };
            (e.step, v.tag.clone(), x)
        })
        .collect();
    assert_eq!(
        scalars,
        [(1, "loss".to_owned(), 2.5), (2, "loss".to_owned(), 1.25)]
    );
}

#[test]
fn a_tfrecord_written_by_tensorflow_reads() {
    let images: Vec<ImageRecord> = ExampleReader::open(&fixture("tensorflow.tfrecord"))
        .unwrap()
        .images()
        .collect::<Result<_, _>>()
        .unwrap();
    let summary: Vec<(i64, &str, &str, i64, i64)> = images
        .iter()
        .map(|r| {
            (
                r.label,
                r.text.as_str(),
                r.filename.as_str(),
                r.height,
                r.width,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "cat", "cat_s_000001.png", 6, 8),
            (2, "dog", "dog_s_000002.png", 9, 5)
        ]
    );
    for record in &images {
        assert_eq!(
            (
                record.channels,
                record.colorspace.as_str(),
                record.format.as_str()
            ),
            (3, "RGB", "JPEG")
        );
        let decoded =
            image::load_from_memory_with_format(&record.encoded, image::ImageFormat::Jpeg)
                .unwrap()
                .into_rgb8();
        assert_eq!(
            (i64::from(decoded.width()), i64::from(decoded.height())),
            (record.width, record.height)
        );
        // The gradient TensorFlow encoded: blue 200 everywhere, red 30 per column.
        let pixel = decoded.get_pixel(1, 0);
        assert!(
            pixel[0].abs_diff(30) <= 12 && pixel[2].abs_diff(200) <= 12,
            "{pixel:?}"
        );
    }
}
