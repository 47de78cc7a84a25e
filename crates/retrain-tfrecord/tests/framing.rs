//! TFRecord framing: round trips, every kind of corruption and truncation is an error naming the
//! file and the record's offset, and a clean end only at a record boundary.

use std::io::Cursor;

use retrain_tfrecord::Error;
use retrain_tfrecord::record::{RecordReader, RecordWriter, masked_crc32c};

const NAME: &str = "data/train-00000-of-00001";

fn records() -> Vec<Vec<u8>> {
    vec![
        b"first".to_vec(),
        Vec::new(),
        (0..=255u8).cycle().take(1000).collect(),
        b"last".to_vec(),
    ]
}

fn written() -> Vec<u8> {
    let mut writer = RecordWriter::new(Vec::new(), NAME);
    for record in records() {
        writer.write_record(&record).unwrap();
    }
    assert_eq!(writer.records(), 4);
    writer.into_inner()
}

/// Byte offsets where each record starts.
fn offsets() -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut at = 0;
    for record in records() {
        offsets.push(at);
        at += 16 + record.len() as u64;
    }
    offsets
}

fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    RecordReader::new(Cursor::new(bytes), NAME).collect()
}

#[test]
fn records_round_trip() {
    assert_eq!(read_all(&written()).unwrap(), records());
    assert_eq!(read_all(&[]).unwrap(), Vec::<Vec<u8>>::new());
}

#[test]
fn the_layout_is_tensorflows() {
    let bytes = written();
    assert_eq!(&bytes[..8], &5u64.to_le_bytes());
    assert_eq!(
        &bytes[8..12],
        &masked_crc32c(&5u64.to_le_bytes()).to_le_bytes()
    );
    assert_eq!(&bytes[12..17], b"first");
    assert_eq!(&bytes[17..21], &masked_crc32c(b"first").to_le_bytes());
}

#[test]
fn a_flipped_bit_anywhere_is_an_error_naming_the_file_and_record() {
    let clean = written();
    let offsets = offsets();
    let record_of = |pos: usize| {
        offsets
            .iter()
            .rposition(|&start| start as usize <= pos)
            .unwrap()
    };
    for pos in 0..clean.len() {
        for bit in [0, 7] {
            let mut bytes = clean.clone();
            bytes[pos] ^= 1 << bit;
            let err = read_all(&bytes).expect_err("corruption must be detected");
            let record = record_of(pos);
            let start = offsets[record];
            let within = pos as u64 - start;
            let data_len = records()[record].len() as u64;
            let message = err.to_string();
            assert!(message.starts_with(NAME), "{message}");
            match err {
                Error::Corrupt { offset, what, .. } => {
                    assert_eq!(offset, start, "{message}");
                    let expected = if within < 12 {
                        "length checksum mismatch"
                    } else {
                        "data checksum mismatch"
                    };
                    assert_eq!(what, expected, "byte {pos}: {message}");
                    assert!(message.contains(&format!("corrupt record at byte {start}")));
                }
                // A flipped bit in a length can make it longer than the file, but its checksum
                // fails first: a truncation report means the length passed its checksum.
                other => panic!("byte {pos} bit {bit}: {other} (within {within}, len {data_len})"),
            }
        }
    }
}

#[test]
fn truncation_at_every_position_is_an_error_unless_at_a_boundary() {
    let clean = written();
    let offsets = offsets();
    for cut in 0..clean.len() {
        let result = read_all(&clean[..cut]);
        if offsets.contains(&(cut as u64)) || cut == 0 {
            let n = offsets.iter().position(|&o| o == cut as u64).unwrap_or(0);
            assert_eq!(result.unwrap(), records()[..n], "cut at {cut}");
            continue;
        }
        let err = result.expect_err("truncation must be detected");
        let message = err.to_string();
        let Error::Truncated {
            path,
            offset,
            what,
            got,
        } = err
        else {
            panic!("cut at {cut}: {message}");
        };
        let record = offsets.iter().rposition(|&o| o < cut as u64).unwrap();
        let start = offsets[record];
        let within = cut as u64 - start;
        let data_len = records()[record].len() as u64;
        assert_eq!(path.to_str(), Some(NAME));
        assert_eq!(offset, start, "{message}");
        assert_eq!(got, within, "{message}");
        let expected = match within {
            w if w < 8 => "inside the length",
            w if w < 12 => "inside the length checksum",
            w if w < 12 + data_len => "inside the data",
            _ => "inside the data checksum",
        };
        assert_eq!(what, expected, "{message}");
        assert!(
            message.starts_with(&format!("{NAME}: truncated record at byte {start}")),
            "{message}"
        );
    }
}

#[test]
fn iteration_stops_after_an_error() {
    let mut bytes = written();
    bytes[30] ^= 1;
    let mut reader = RecordReader::new(Cursor::new(bytes), NAME);
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_err());
    assert!(reader.next().is_none());
}

#[test]
fn files_are_read_and_written_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records");
    let mut writer = RecordWriter::create(&path).unwrap();
    writer.write_record(b"on disk").unwrap();
    writer.flush().unwrap();
    drop(writer);
    let read: Vec<Vec<u8>> = RecordReader::open(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(read, [b"on disk".to_vec()]);
    let missing = dir.path().join("missing");
    let err = RecordReader::open(&missing).unwrap_err();
    assert_eq!(err.to_string(), format!("reading {}", missing.display()));
}
