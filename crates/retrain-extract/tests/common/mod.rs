//! Helpers shared by the test targets: synthetic CIFAR archives, tar archives built block by block
//! (so that hostile headers the `tar` crate refuses to write can be made), and directory listings.

#![allow(dead_code, unreachable_pub)] // each test target uses a subset

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use retrain_extract::{CancellationToken, Config, Dataset, Error};
use retrain_stage::{Manifest, NoProgress};

/// A synthetic archive and its `members.md5`, generated small and fast.
#[derive(Debug)]
pub struct Synthetic {
    pub archive: PathBuf,
    pub digests: PathBuf,
}

pub fn synth(dataset: Dataset, dir: &Path) -> Synthetic {
    synth_seeded(dataset, dir, 7)
}

pub fn synth_seeded(dataset: Dataset, dir: &Path, seed: u64) -> Synthetic {
    let synth_dataset = match dataset {
        Dataset::Cifar10 => retrain_synth::Dataset::Cifar10,
        Dataset::Cifar100 => retrain_synth::Dataset::Cifar100,
    };
    let mut cfg = retrain_synth::Config::new(dir.to_owned());
    cfg.dataset = synth_dataset;
    cfg.images_per_batch = 20;
    cfg.collisions = 0;
    cfg.gzip_level = 1;
    cfg.seed = seed;
    retrain_synth::run(&cfg, &NoProgress).unwrap();
    Synthetic {
        archive: dir.join(synth_dataset.archive_name()),
        digests: dir.join(retrain_synth::MEMBER_DIGESTS),
    }
}

/// One member as the sync `tar` crate reads it.
#[derive(Debug, Clone)]
pub struct TarMember {
    pub path: String,
    pub kind: u8,
    pub data: Vec<u8>,
}

/// Every member of a `.tar.gz`, read with the sync `tar` and `flate2` crates.
pub fn read_tar_gz(archive: &Path) -> Vec<TarMember> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let kind = entry.header().entry_type().as_byte();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            TarMember { path, kind, data }
        })
        .collect()
}

/// A ustar header with raw name bytes (at most 100), entry type and size.
pub fn header(name: &[u8], kind: u8, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_size(size);
    header.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
    header.set_mtime(1_244_160_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    header
}

/// The bytes of a tar entry: `header` then `data` padded to 512-byte blocks. The header's size
/// field is left as it is, so it may disagree with `data` on purpose.
pub fn raw_entry(header: &tar::Header, data: &[u8]) -> Vec<u8> {
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    bytes
}

/// A regular file (`b'0'`), directory (`b'5'`) or other entry with honest size.
pub fn entry(name: &str, kind: u8, data: &[u8]) -> Vec<u8> {
    raw_entry(&header(name.as_bytes(), kind, data.len() as u64), data)
}

pub fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name, b'0', data)
}

pub fn dir(name: &str) -> Vec<u8> {
    entry(name, b'5', b"")
}

/// A hard link (`b'1'`) or symbolic link (`b'2'`) named `name` pointing at `target`.
pub fn link(name: &str, kind: u8, target: &str) -> Vec<u8> {
    let mut header = header(name.as_bytes(), kind, 0);
    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    header.set_cksum();
    raw_entry(&header, b"")
}

/// One PAX record, `"<len> key=value\n"`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while len.to_string().len() + base != len {
        len += 1;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

/// A PAX extended header entry (`b'x'` local, `b'g'` global) carrying `records`.
pub fn pax(kind: u8, records: &[(&str, &[u8])]) -> Vec<u8> {
    let body: Vec<u8> = records
        .iter()
        .flat_map(|(key, value)| pax_record(key, value))
        .collect();
    entry("PaxHeaders/x", kind, &body)
}

/// A GNU long-name entry (`././@LongLink`, type `L`) naming the entry that follows.
pub fn gnu_long_name(name: &str) -> Vec<u8> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    entry("././@LongLink", b'L', &data)
}

/// Entries followed by the two zero blocks that end a tar archive.
pub fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = entries.concat();
    bytes.extend_from_slice(&[0; 1024]);
    bytes
}

pub fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The archive `members` describe (as read from a real one), rebuilt block by block.
pub fn rebuild(members: &[TarMember]) -> Vec<Vec<u8>> {
    members
        .iter()
        .map(|m| entry(&m.path, m.kind, &m.data))
        .collect()
}

/// Every path under `dir`, relative, sorted; directories end in `/` (symbolic links are listed,
/// not followed). Empty when `dir` does not exist.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(root.join(prefix)) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{relative}/"));
                walk(root, &relative, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

/// Runs the stage with no progress and a fresh cancellation token.
pub async fn extract(
    archive: &Path,
    out: &Path,
    dataset: Option<Dataset>,
    digests: Option<&Path>,
) -> Result<Manifest, Error> {
    let mut cfg = Config::new(archive.to_owned(), out.to_owned());
    cfg.dataset = dataset;
    cfg.member_digests = digests.map(Path::to_owned);
    retrain_extract::run(&cfg, &NoProgress, CancellationToken::new()).await
}

/// An error and its sources, as `{:#}` prints them.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// A work directory holding only `archive.tar.gz`; the output goes to `out/` beside it.
#[derive(Debug)]
pub struct Hostile {
    pub tmp: tempfile::TempDir,
    pub archive: PathBuf,
    pub out: PathBuf,
}

impl Hostile {
    pub fn new(tar_gz: &[u8]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("archive.tar.gz");
        std::fs::write(&archive, tar_gz).unwrap();
        let out = tmp.path().join("out");
        Self { tmp, archive, out }
    }

    /// Extracts, expects an error, and checks that nothing at all was written: the work directory
    /// (the output directory's parent) holds only the archive. Returns the error and its message.
    pub async fn refused(&self, dataset: Option<Dataset>) -> (Error, String) {
        let result = extract(&self.archive, &self.out, dataset, None).await;
        let err = match result {
            Ok(manifest) => panic!(
                "extraction succeeded: {:?}\n{:?}",
                manifest.outputs.keys(),
                listing(self.tmp.path())
            ),
            Err(err) => err,
        };
        let message = chain(&err);
        assert_eq!(
            listing(self.tmp.path()),
            ["archive.tar.gz"],
            "something was written for: {message}"
        );
        (err, message)
    }
}

/// A `.tar.gz` of `entries`.
pub fn archive_of(entries: &[Vec<u8>]) -> Vec<u8> {
    gzip(&tar(entries), 6)
}
