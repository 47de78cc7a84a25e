//! Extracting synthetic CIFAR-10 and CIFAR-100 archives (the real formats, made by retrain-synth):
//! verified members, the manifest, digest mismatches, missing and unexpected members, the size
//! bound, cancellation, and the member reader that never touches the disk.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Hostile, chain, extract, listing, read_tar_gz, synth};
use retrain_extract::{
    CancellationToken, Config, Dataset, Error, MemberDigests, MemberReader, Policy,
};
use retrain_stage::{Freshness, Manifest, NoProgress, digest_file};
use tokio::io::AsyncReadExt as _;

/// Checks an extraction against the archive as the sync `tar` crate reads it, and the manifest.
fn check_extraction(
    archive: &Path,
    digests: Option<&Path>,
    out: &Path,
    manifest: &Manifest,
    dataset: &str,
) {
    let members = read_tar_gz(archive);
    let mut expected_listing = vec!["manifest.json".to_owned()];
    let mut outputs = BTreeMap::new();
    for member in &members {
        let path = member.path.trim_end_matches('/');
        if member.kind == b'5' {
            expected_listing.push(format!("{path}/"));
            continue;
        }
        expected_listing.push(path.to_owned());
        let written = std::fs::read(out.join(path)).unwrap();
        assert!(written == member.data, "{path} differs from the archive");
        outputs.insert(path.to_owned(), digest_file(&out.join(path)).unwrap());
    }
    expected_listing.sort();
    assert_eq!(listing(out), expected_listing);

    assert_eq!(manifest.stage, "extract");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest.params["dataset"], dataset);
    assert_eq!(manifest.params["max-bytes"], (64u64 << 30).to_string());
    assert_eq!(manifest.params.len(), 2);
    assert_eq!(manifest.inputs["archive"], digest_file(archive).unwrap());
    match digests {
        Some(digests) => {
            assert_eq!(
                manifest.inputs["member-digests"],
                digest_file(digests).unwrap()
            );
            assert_eq!(manifest.inputs.len(), 2);
        }
        None => assert_eq!(manifest.inputs.len(), 1),
    }
    assert_eq!(manifest.outputs, outputs);
    assert_eq!(Manifest::read(out).unwrap().as_ref(), Some(manifest));

    // The pipeline runner would skip this stage now.
    let mut inputs = BTreeMap::from([("archive".to_owned(), archive.to_owned())]);
    if let Some(digests) = digests {
        inputs.insert("member-digests".to_owned(), digests.to_owned());
    }
    assert_eq!(
        retrain_stage::freshness(out, "extract", &manifest.params, &inputs).unwrap(),
        Freshness::UpToDate
    );
    // So would `cargo xtask`, which passes only --dataset.
    let runner_params = BTreeMap::from([("dataset".to_owned(), dataset.to_owned())]);
    assert_eq!(
        retrain_stage::freshness(out, "extract", &runner_params, &inputs).unwrap(),
        Freshness::UpToDate
    );
}

#[tokio::test]
async fn cifar10_extracts_every_member_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let out = tmp.path().join("raw");
    // A file already in the output directory is left alone and not claimed by the manifest.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let manifest = extract(
        &synthetic.archive,
        &out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    check_extraction(
        &synthetic.archive,
        Some(&synthetic.digests),
        &out,
        &manifest,
        "cifar10",
    );
    assert_eq!(manifest.outputs.len(), 8);
    for file in Dataset::Cifar10.files() {
        assert!(
            manifest
                .outputs
                .contains_key(&format!("cifar-10-batches-py/{file}"))
        );
    }

    // Running again replaces the files with the same bytes and writes the same manifest.
    let again = extract(
        &synthetic.archive,
        &out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap();
    assert_eq!(again, manifest);
}

#[tokio::test]
async fn cifar100_extracts_every_member_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar100, &tmp.path().join("synth"));
    let out = tmp.path().join("raw");
    let manifest = extract(
        &synthetic.archive,
        &out,
        Some(Dataset::Cifar100),
        Some(&synthetic.digests),
    )
    .await
    .unwrap();
    check_extraction(
        &synthetic.archive,
        Some(&synthetic.digests),
        &out,
        &manifest,
        "cifar100",
    );
    assert_eq!(
        manifest.outputs.keys().collect::<Vec<_>>(),
        [
            "cifar-100-python/file.txt~",
            "cifar-100-python/meta",
            "cifar-100-python/test",
            "cifar-100-python/train"
        ]
    );
    assert_eq!(manifest.outputs["cifar-100-python/file.txt~"].bytes, 0);
}

#[tokio::test]
async fn generic_mode_extracts_any_files_unverified() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let out = tmp.path().join("raw");
    let manifest = extract(&synthetic.archive, &out, None, None).await.unwrap();
    check_extraction(&synthetic.archive, None, &out, &manifest, "generic");
}

/// Replaces the md5 of `member` in a digest file with a wrong one.
fn corrupt_digest(digests: &Path, member: &str) {
    let text = std::fs::read_to_string(digests).unwrap();
    let edited: String = text
        .lines()
        .map(|line| {
            if line.ends_with(member) {
                format!("00000000000000000000000000000000  {member}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(edited, text);
    std::fs::write(digests, edited).unwrap();
}

#[tokio::test]
async fn a_member_md5_mismatch_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    corrupt_digest(&synthetic.digests, "cifar-10-batches-py/data_batch_2");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("raw");
    let err = extract(
        &synthetic.archive,
        &out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap_err();
    let message = chain(&err);
    assert!(
        matches!(&err, Error::Md5Mismatch { member, expected, .. }
            if member == "cifar-10-batches-py/data_batch_2" && expected == &"0".repeat(32)),
        "{message}"
    );
    assert!(
        message.contains("cifar-10-python.tar.gz") && message.contains("members.md5"),
        "{message}"
    );
    // Nothing in the output directory (it was created by this run, so it is gone too) or beside it.
    assert_eq!(listing(&work), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_run_leaves_the_previous_extraction_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let out = tmp.path().join("raw");
    let manifest = extract(
        &synthetic.archive,
        &out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap();
    let before = listing(&out);
    let manifest_bytes = std::fs::read(out.join("manifest.json")).unwrap();

    // A different archive (another seed) whose digests do not match the file given.
    let other = common::synth_seeded(Dataset::Cifar10, &tmp.path().join("other"), 8);
    let err = extract(
        &other.archive,
        &out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Md5Mismatch { .. }), "{}", chain(&err));

    assert_eq!(listing(&out), before);
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        manifest_bytes
    );
    for (path, digest) in &manifest.outputs {
        assert_eq!(&digest_file(&out.join(path)).unwrap(), digest, "{path}");
    }
}

#[tokio::test]
async fn a_missing_member_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let members: Vec<_> = read_tar_gz(&synthetic.archive)
        .into_iter()
        .filter(|m| m.path != "cifar-10-batches-py/data_batch_3")
        .collect();
    let hostile = Hostile::new(&common::gzip(&common::tar(&common::rebuild(&members)), 1));
    let (err, message) = hostile.refused(Some(Dataset::Cifar10)).await;
    assert!(matches!(err, Error::Missing { .. }), "{message}");
    assert!(
        message.ends_with(
            "archive.tar.gz: member \"cifar-10-batches-py/data_batch_3\" of the cifar10 archive is missing"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn an_unexpected_member_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let mut entries = common::rebuild(&read_tar_gz(&synthetic.archive));
    entries.insert(3, common::file("cifar-10-batches-py/extra.py", b"print(1)"));
    let hostile = Hostile::new(&common::gzip(&common::tar(&entries), 1));
    let (err, message) = hostile.refused(Some(Dataset::Cifar10)).await;
    assert!(matches!(err, Error::Unexpected { .. }), "{message}");
    assert!(
        message.ends_with(
            "archive.tar.gz: unexpected member \"cifar-10-batches-py/extra.py\": not in the cifar10 archive"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn the_wrong_dataset_is_refused_at_its_first_member() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar100, tmp.path());
    let bytes = std::fs::read(&synthetic.archive).unwrap();
    let hostile = Hostile::new(&bytes);
    let (err, message) = hostile.refused(Some(Dataset::Cifar10)).await;
    assert!(
        matches!(&err, Error::Unexpected { member, .. } if member == "cifar-100-python"),
        "{message}"
    );
}

#[tokio::test]
async fn a_member_of_the_wrong_kind_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let mut members = read_tar_gz(&synthetic.archive);
    let batch = members
        .iter_mut()
        .find(|m| m.path.ends_with("/test_batch"))
        .unwrap();
    batch.kind = b'5';
    batch.data.clear();
    let hostile = Hostile::new(&common::gzip(&common::tar(&common::rebuild(&members)), 1));
    let (err, message) = hostile.refused(Some(Dataset::Cifar10)).await;
    assert!(
        message.ends_with("member \"cifar-10-batches-py/test_batch\" should be a regular file"),
        "{message}"
    );
    assert!(matches!(err, Error::WrongKind { .. }));
}

#[tokio::test]
async fn max_bytes_bounds_the_extracted_size() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let total: u64 = read_tar_gz(&synthetic.archive)
        .iter()
        .map(|m| m.data.len() as u64)
        .sum();
    let run = |max_bytes: u64, out: &str| {
        let mut cfg = Config::new(synthetic.archive.clone(), tmp.path().join(out));
        cfg.dataset = Some(Dataset::Cifar10);
        cfg.max_bytes = max_bytes;
        async move { retrain_extract::run(&cfg, &NoProgress, CancellationToken::new()).await }
    };
    let manifest = run(total, "exact").await.unwrap();
    assert_eq!(manifest.params["max-bytes"], total.to_string());

    let err = run(total - 1, "under").await.unwrap_err();
    let message = chain(&err);
    assert!(
        matches!(&err, Error::TooLarge { total: t, limit, .. } if *t == total && *limit == total - 1),
        "{message}"
    );
    assert!(
        message.contains("cifar-10-python.tar.gz: member \"cifar-10-batches-py/")
            && message.contains(&format!("over the limit of {} (--max-bytes)", total - 1)),
        "{message}"
    );
    assert!(!tmp.path().join("under").exists());
}

#[tokio::test]
async fn a_cancelled_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, &tmp.path().join("synth"));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut cfg = Config::new(synthetic.archive.clone(), tmp.path().join("work/raw"));
    cfg.dataset = Some(Dataset::Cifar10);
    let err = retrain_extract::run(&cfg, &NoProgress, cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{}", chain(&err));
    assert!(!tmp.path().join("work").exists());
}

#[tokio::test]
async fn the_member_reader_streams_and_hashes_without_touching_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let before = listing(tmp.path());
    let digests = MemberDigests::read(&synthetic.digests).unwrap();
    let policy = Policy {
        member_digests: Some(digests.clone()),
        ..Policy::dataset(Dataset::Cifar10)
    };
    let expected: BTreeMap<String, Vec<u8>> = read_tar_gz(&synthetic.archive)
        .into_iter()
        .map(|m| (m.path.trim_end_matches('/').to_owned(), m.data))
        .collect();

    let mut reader = MemberReader::open(&synthetic.archive, policy)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(mut member) = reader.next_member().await.unwrap() {
        seen.push(member.path().to_owned());
        assert_eq!(member.size(), expected[member.path()].len() as u64);
        if member.is_dir() {
            continue;
        }
        match member.path().rsplit('/').next().unwrap() {
            // Read through AsyncRead, the way a decoder would.
            "data_batch_1" | "batches.meta" => {
                let mut bytes = Vec::new();
                member.read_to_end(&mut bytes).await.unwrap();
                assert!(bytes == expected[member.path()]);
            }
            // Read half, leave the rest to the reader.
            "test_batch" => {
                let mut half = vec![0; member.size() as usize / 2];
                member.read_exact(&mut half).await.unwrap();
                assert!(half[..] == expected[member.path()][..half.len()]);
            }
            _ => {} // skipped entirely
        }
    }
    let summary = reader.finish().await.unwrap();
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[0], "cifar-10-batches-py");
    assert_eq!(summary.directories, ["cifar-10-batches-py"]);
    assert_eq!(summary.digest(), digest_file(&synthetic.archive).unwrap());
    assert_eq!(
        summary.digest_file.as_deref(),
        Some(synthetic.digests.as_path())
    );
    assert_eq!(summary.reference, None);
    assert!(summary.verified());
    // Every member was hashed, read by the caller or not.
    assert_eq!(summary.members.len(), 8);
    for (path, md5) in digests.iter() {
        assert_eq!(summary.members[path].md5, md5, "{path}");
        assert_eq!(summary.members[path].bytes, expected[path].len() as u64);
    }
    assert_eq!(listing(tmp.path()), before);
}

#[tokio::test]
async fn the_member_reader_checks_digests_at_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    corrupt_digest(&synthetic.digests, "cifar-10-batches-py/readme.html");
    let policy = Policy {
        member_digests: Some(MemberDigests::read(&synthetic.digests).unwrap()),
        ..Policy::dataset(Dataset::Cifar10)
    };
    let mut reader = MemberReader::open(&synthetic.archive, policy)
        .await
        .unwrap();
    // finish() reads every member itself.
    assert!(reader.next_member().await.unwrap().is_some());
    let err = reader.finish().await.unwrap_err();
    assert!(
        matches!(&err, Error::Md5Mismatch { member, .. } if member == "cifar-10-batches-py/readme.html"),
        "{}",
        chain(&err)
    );
}

#[test]
fn the_blocking_reader_hands_over_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar100, tmp.path());
    let expected: BTreeMap<String, Vec<u8>> = read_tar_gz(&synthetic.archive)
        .into_iter()
        .filter(|m| m.kind != b'5')
        .map(|m| (m.path, m.data))
        .collect();
    let mut got = BTreeMap::new();
    let summary = retrain_extract::read_members_blocking(
        &synthetic.archive,
        Policy::dataset(Dataset::Cifar100),
        |path, bytes| {
            got.insert(path.to_owned(), bytes);
            Ok(())
        },
    )
    .unwrap();
    assert!(got == expected);
    assert_eq!(summary.members.len(), 4);
    assert!(!summary.verified());

    // The callback's error stops the reading and names the member.
    let err = retrain_extract::read_members_blocking(
        &synthetic.archive,
        Policy::dataset(Dataset::Cifar100),
        |path, _| {
            if path.ends_with("/train") {
                Err("cannot decode".into())
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!(
        chain(&err),
        format!(
            "{}: handling member \"cifar-100-python/train\": cannot decode",
            synthetic.archive.display()
        )
    );
}

#[tokio::test]
async fn the_blocking_reader_refuses_to_run_inside_a_runtime() {
    let err =
        retrain_extract::read_members_blocking(Path::new("a.tar.gz"), Policy::generic(), |_, _| {
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, Error::InsideRuntime { .. }), "{err}");
}

#[tokio::test]
async fn a_missing_archive_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("nope.tar.gz");
    let err = extract(&archive, &tmp.path().join("out"), None, None)
        .await
        .unwrap_err();
    assert!(
        chain(&err).starts_with(&format!("opening {}: ", archive.display())),
        "{}",
        chain(&err)
    );
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}
