//! `--from-archive`: the batches decoded straight from the `.tar.gz` give the same bytes as the
//! extracted folder, whatever order the members come in; archive errors name the archive and member.

mod common;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use common::{Batches, cifar10_batch, pattern};
use retrain_sort::{Dataset, Labels, Source};
use retrain_stage::{Manifest, NoProgress};

/// A synthetic archive (real member order: `data_batch_4` first, `data_batch_1` last).
fn synth_archive(dir: &Path, dataset: retrain_synth::Dataset, collisions: usize) -> PathBuf {
    let mut cfg = retrain_synth::Config::new(dir.to_owned());
    cfg.dataset = dataset;
    cfg.images_per_batch = 40;
    cfg.seed = 9;
    cfg.collisions = collisions;
    cfg.gzip_level = 1;
    retrain_synth::run(&cfg, &NoProgress).unwrap();
    dir.join(dataset.archive_name())
}

/// Extracts with the `tar` crate, as `tar xzf` would.
fn extract(archive: &Path, into: &Path) {
    let file = fs::File::open(archive).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(into)
        .unwrap();
}

fn sort(source: Source, out: &Path, dataset: Dataset, labels: Labels) -> Manifest {
    let mut cfg = common::config(source, out);
    cfg.dataset = dataset;
    cfg.labels = labels;
    retrain_sort::run(&cfg, &NoProgress).unwrap()
}

fn assert_same_outputs(a: &Manifest, b: &Manifest) {
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.params, b.params);
}

#[test]
fn the_archive_gives_the_same_bytes_as_the_extracted_folder() {
    let tmp = tempfile::tempdir().unwrap();
    // Many collisions, so that batches arriving before data_batch_1 must be renamed afterwards.
    let archive = synth_archive(
        &tmp.path().join("synth"),
        retrain_synth::Dataset::Cifar10,
        8,
    );
    extract(&archive, &tmp.path().join("raw"));
    let raw = tmp.path().join("raw/cifar-10-batches-py");

    let from_dir = sort(
        Source::Dir(raw.clone()),
        &tmp.path().join("from-dir"),
        Dataset::Cifar10,
        Labels::Fine,
    );
    let out = tmp.path().join("from-archive");
    let from_archive = sort(
        Source::Archive(archive.clone()),
        &out,
        Dataset::Cifar10,
        Labels::Fine,
    );
    assert_same_outputs(&from_dir, &from_archive);
    assert_eq!(
        common::tree(&tmp.path().join("from-dir")),
        common::tree(&out)
    );
    let inputs: Vec<&str> = from_archive.inputs.keys().map(String::as_str).collect();
    assert_eq!(inputs, ["from-archive"]);
    assert_eq!(
        from_archive.inputs["from-archive"],
        retrain_stage::digest_file(&archive).unwrap()
    );
    for (relative, digest) in &from_archive.outputs {
        assert_eq!(
            *digest,
            retrain_stage::digest_path(&out.join(relative)).unwrap()
        );
    }
    let report = fs::read_to_string(out.join("sort-report.json")).unwrap();
    assert_eq!(report.matches("\"written\"").count(), 8);
}

#[test]
fn a_cifar100_archive_gives_the_same_bytes_as_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = synth_archive(
        &tmp.path().join("synth"),
        retrain_synth::Dataset::Cifar100,
        3,
    );
    extract(&archive, &tmp.path().join("raw"));
    for labels in [Labels::Fine, Labels::Coarse] {
        let from_dir = sort(
            Source::Dir(tmp.path().join("raw/cifar-100-python")),
            &tmp.path().join(format!("dir-{labels}")),
            Dataset::Cifar100,
            labels,
        );
        let from_archive = sort(
            Source::Archive(archive.clone()),
            &tmp.path().join(format!("archive-{labels}")),
            Dataset::Cifar100,
            labels,
        );
        assert_same_outputs(&from_dir, &from_archive);
    }
}

/// A CIFAR-10 archive of `dir`'s files in the real member order, `replace` swapping one member's
/// bytes.
fn build_archive(dir: &Path, path: &Path, replace: Option<(&str, Vec<u8>)>, skip: Option<&str>) {
    let file = fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_cksum();
    tar.append_data(&mut header, "cifar-10-batches-py/", std::io::empty())
        .unwrap();
    for name in [
        "data_batch_4",
        "readme.html",
        "test_batch",
        "data_batch_3",
        "batches.meta",
        "data_batch_2",
        "data_batch_5",
        "data_batch_1",
    ] {
        if skip == Some(name) {
            continue;
        }
        let bytes = match &replace {
            Some((replaced, bytes)) if *replaced == name => bytes.clone(),
            _ if name == "readme.html" => b"<html></html>".to_vec(),
            _ => fs::read(dir.join(name)).unwrap(),
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-py/{name}"),
            bytes.as_slice(),
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

fn sort_archive(archive: &Path, out: &Path) -> Result<Manifest, retrain_sort::Error> {
    let cfg = common::config(Source::Archive(archive.to_owned()), out);
    retrain_sort::run(&cfg, &NoProgress)
}

#[test]
fn a_bad_member_is_an_error_naming_the_archive_and_the_member() {
    let batches = Batches::cifar10();
    let archive = batches.out("bad.tar.gz");
    let image = pattern(0);
    build_archive(
        &batches.dir,
        &archive,
        Some(("data_batch_2", cifar10_batch(&[(12, b"x.png", &image)]))),
        None,
    );
    let err = sort_archive(&archive, &batches.out("out")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} member cifar-10-batches-py/data_batch_2: `labels[0]` is 12, outside 0..10",
            archive.display()
        )
    );
    assert!(!batches.out("out").join("manifest.json").exists());
}

#[test]
fn a_missing_member_or_a_corrupt_archive_is_an_error_naming_it() {
    let batches = Batches::cifar10();
    let archive = batches.out("short.tar.gz");
    build_archive(&batches.dir, &archive, None, Some("data_batch_5"));
    let err = sort_archive(&archive, &batches.out("out")).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(&archive.display().to_string()) && message.contains("data_batch_5"),
        "{message}"
    );

    let whole = batches.out("whole.tar.gz");
    build_archive(&batches.dir, &whole, None, None);
    sort_archive(&whole, &batches.out("whole")).unwrap();
    let mut bytes = Vec::new();
    fs::File::open(&whole)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes[middle + 1] ^= 0xff;
    let corrupt = batches.out("corrupt.tar.gz");
    fs::write(&corrupt, &bytes).unwrap();
    let err = sort_archive(&corrupt, &batches.out("corrupt")).unwrap_err();
    assert!(
        err.to_string().contains(&corrupt.display().to_string()),
        "{err}"
    );
}
