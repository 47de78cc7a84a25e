//! TensorBoard event files: name, first record, scalars, flushing.

use std::path::Path;
use std::time::Duration;

use prost::Message as _;
use retrain_tfrecord::events::{EventWriter, EventWriterOptions, FILE_VERSION, FixedClock};
use retrain_tfrecord::proto::{Event, Value, What};
use retrain_tfrecord::record::RecordReader;

fn options(max_queue: usize, flush_every: Duration) -> EventWriterOptions {
    EventWriterOptions {
        clock: Box::new(FixedClock {
            next: 1_234_567_890.5,
            step: 0.5,
        }),
        hostname: Some("testhost".into()),
        suffix: String::new(),
        max_queue,
        flush_every,
    }
}

fn events(path: &Path) -> Vec<Event> {
    RecordReader::open(path)
        .unwrap()
        .map(|r| Event::decode(r.unwrap().as_slice()).unwrap())
        .collect()
}

#[test]
fn a_new_file_is_named_and_starts_with_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let writer = EventWriter::with_options(
        &dir.path().join("train"),
        options(10, Duration::from_secs(120)),
    )
    .unwrap();
    let path = writer.path().to_owned();
    assert_eq!(
        path.file_name().unwrap(),
        "events.out.tfevents.1234567890.testhost"
    );
    // Flushed at once: valid before the first step.
    let first = events(&path);
    assert_eq!(
        first,
        [Event {
            wall_time: 1_234_567_890.5,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        }]
    );
    drop(writer);
    // A second writer in the same second does not overwrite the first file.
    let again = EventWriter::with_options(
        &dir.path().join("train"),
        options(10, Duration::from_secs(120)),
    )
    .unwrap();
    assert_eq!(
        again.path().file_name().unwrap(),
        "events.out.tfevents.1234567890.testhost.1"
    );
}

#[test]
fn scalars_are_queued_and_flushed_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer =
        EventWriter::with_options(dir.path(), options(3, Duration::from_secs(3600))).unwrap();
    let path = writer.path().to_owned();
    writer.add_scalar("loss", 2.0, 1).unwrap();
    writer.add_scalar("loss", 1.5, 2).unwrap();
    assert_eq!(events(&path).len(), 1, "two events are still queued");
    writer.add_scalar("loss", 1.0, 3).unwrap();
    assert_eq!(events(&path).len(), 4, "the third fills the queue");
    writer
        .add_scalars(4, &[("loss", 0.5), ("lr", 0.001)])
        .unwrap();
    writer.flush().unwrap();
    let all = events(&path);
    assert_eq!(all.len(), 5);
    let last = &all[4];
    assert_eq!((last.step, last.wall_time), (4, 1_234_567_892.5));
    let Some(What::Summary(summary)) = &last.what else {
        panic!("{last:?}")
    };
    let values: Vec<(&str, Option<Value>)> = summary
        .value
        .iter()
        .map(|v| (v.tag.as_str(), v.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            ("loss", Some(Value::SimpleValue(0.5))),
            ("lr", Some(Value::SimpleValue(0.001)))
        ]
    );
    writer.add_scalar("loss", 0.25, 5).unwrap();
    drop(writer);
    assert_eq!(events(&path).len(), 6, "dropping flushes");
}

#[test]
fn a_due_flush_happens_when_the_next_event_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::with_options(dir.path(), options(1000, Duration::ZERO)).unwrap();
    writer.add_scalar("loss", 1.0, 1).unwrap();
    assert_eq!(events(writer.path()).len(), 2);
    writer.close().unwrap();
}

#[test]
fn the_default_writer_uses_the_clock_and_host() {
    let dir = tempfile::tempdir().unwrap();
    let writer = EventWriter::create(dir.path()).unwrap();
    let name = writer
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"]);
    assert_eq!(parts[3].len(), 10);
    assert!(parts[3].bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(parts[4], retrain_tfrecord::events::hostname());
}
