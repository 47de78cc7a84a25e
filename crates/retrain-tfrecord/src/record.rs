//! TFRecord framing: `u64 length (little-endian)`, `u32 masked CRC-32C of those 8 bytes`, `data`,
//! `u32 masked CRC-32C of data`. TensorFlow's `TFRecordWriter` and `tf.data.TFRecordDataset`, the
//! Python `tfrecord` package and TensorBoard's event files all use it, uncompressed.
//!
//! [`RecordReader`] checks both checksums and reports a mismatch or a file that ends inside a record
//! as an error naming the file and the byte offset of the record; a file ends cleanly only at a
//! record boundary.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::Error;

/// Added to the rotated CRC, as TensorFlow's `crc32c::Mask` does.
const MASK_DELTA: u32 = 0xa282_ead8;
/// Bytes before a record's data: length and its checksum.
pub const HEADER_LEN: usize = 12;
/// Bytes after a record's data: its checksum.
pub const FOOTER_LEN: usize = 4;

/// TensorFlow's masked CRC-32C (Castagnoli): the CRC rotated right by 15 bits plus a constant, so
/// that a checksum of data that holds checksums stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Appends one framed record holding `data` to `out`.
pub fn frame_into(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.reserve(HEADER_LEN + data.len() + FOOTER_LEN);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// Writes framed records to any [`Write`]. It does not buffer: wrap a file in a `BufWriter` (as
/// [`RecordWriter::create`] does).
#[derive(Debug)]
pub struct RecordWriter<W: Write> {
    inner: W,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    /// `path` names the destination in errors.
    pub fn new(inner: W, path: impl Into<PathBuf>) -> Self {
        Self {
            inner,
            path: path.into(),
            records: 0,
            bytes: 0,
        }
    }

    /// Writes one record.
    pub fn write_record(&mut self, data: &[u8]) -> Result<(), Error> {
        let len = (data.len() as u64).to_le_bytes();
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&len);
        header[8..].copy_from_slice(&masked_crc32c(&len).to_le_bytes());
        let footer = masked_crc32c(data).to_le_bytes();
        (|| {
            self.inner.write_all(&header)?;
            self.inner.write_all(data)?;
            self.inner.write_all(&footer)
        })()
        .map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })?;
        self.records += 1;
        self.bytes += (HEADER_LEN + data.len() + FOOTER_LEN) as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        self.inner.flush().map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// The underlying writer (not flushed).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl RecordWriter<BufWriter<File>> {
    /// Creates (truncates) `path`. For a file that must appear only when complete, write through
    /// [`retrain_stage::AtomicFile`] with [`RecordWriter::new`] instead.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let file = File::create(path).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(BufWriter::new(file), path))
    }
}

/// Reads framed records from any [`Read`], checking both checksums. As an iterator it yields each
/// record's data and stops after the first error.
#[derive(Debug)]
pub struct RecordReader<R: Read> {
    inner: R,
    path: PathBuf,
    /// Offset of the next record.
    offset: u64,
    /// Offset of the record last returned.
    record_offset: u64,
    failed: bool,
}

impl RecordReader<BufReader<File>> {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(BufReader::with_capacity(1 << 16, file), path))
    }
}

impl<R: Read> RecordReader<R> {
    /// `path` names the source in errors; offsets count from where `inner` starts.
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Self {
        Self {
            inner,
            path: path.into(),
            offset: 0,
            record_offset: 0,
            failed: false,
        }
    }

    /// The name given for errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset of the record most recently read.
    pub fn record_offset(&self) -> u64 {
        self.record_offset
    }

    /// Reads the next record into `data` (cleared first). `Ok(false)` at a clean end of input.
    pub fn read_record(&mut self, data: &mut Vec<u8>) -> Result<bool, Error> {
        data.clear();
        let start = self.offset;
        self.record_offset = start;
        let mut header = [0u8; HEADER_LEN];
        let got = self.read_full(&mut header)?;
        if got == 0 {
            return Ok(false);
        }
        if got < 8 {
            return Err(self.truncated(start, "inside the length", got));
        }
        if got < HEADER_LEN {
            return Err(self.truncated(start, "inside the length checksum", got));
        }
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let expected = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc32c(&len_bytes) != expected {
            return Err(self.corrupt(start, "length checksum mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes);
        // A length whose checksum matches is almost surely genuine, but allocate as data arrives.
        data.reserve(len.min(1 << 26) as usize);
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(data)
            .map_err(|source| Error::Read {
                path: self.path.clone(),
                source,
            })? as u64;
        self.offset += got;
        if got < len {
            return Err(self.truncated(start, "inside the data", HEADER_LEN + got as usize));
        }
        let mut footer = [0u8; FOOTER_LEN];
        let got = self.read_full(&mut footer)?;
        if got < FOOTER_LEN {
            return Err(self.truncated(
                start,
                "inside the data checksum",
                HEADER_LEN + len as usize + got,
            ));
        }
        if masked_crc32c(data) != u32::from_le_bytes(footer) {
            return Err(self.corrupt(start, "data checksum mismatch"));
        }
        Ok(true)
    }

    /// Reads until `buf` is full or the input ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    fn truncated(&self, offset: u64, what: &'static str, got: usize) -> Error {
        Error::Truncated {
            path: self.path.clone(),
            offset,
            what,
            got: got as u64,
        }
    }

    fn corrupt(&self, offset: u64, what: &'static str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            offset,
            what,
        }
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Vec<u8>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut data = Vec::new();
        match self.read_record(&mut data) {
            Ok(true) => Some(Ok(data)),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0 → masked = 0xa282ead8; crc32c("123456789") = 0xe3069283 (the check value).
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn frame_into_equals_the_writer() {
        let mut framed = Vec::new();
        frame_into(b"abc", &mut framed);
        let mut writer = RecordWriter::new(Vec::new(), "mem");
        writer.write_record(b"abc").unwrap();
        assert_eq!(framed, writer.into_inner());
        assert_eq!(framed.len(), HEADER_LEN + 3 + FOOTER_LEN);
    }
}
