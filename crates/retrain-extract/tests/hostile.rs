//! Hostile and damaged archives, built block by block: each is refused with an error naming the
//! member or the archive, and nothing is written anywhere (the output directory's parent holds
//! only the archive afterwards). Where a crafted archive is accepted (a PAX header that would
//! desync a naive reader), what is written is only what a correct PAX reader sees, inside the
//! output directory.

mod common;

use common::{
    Hostile, chain, dir, entry, extract, file, gnu_long_name, gzip, header, link, listing, pax,
    raw_entry, read_tar_gz, synth, tar,
};
use retrain_extract::{Dataset, Error, METADATA_LIMIT};

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    gzip(&tar(entries), 6)
}

async fn refused(entries: &[Vec<u8>]) -> (Error, String) {
    Hostile::new(&archive(entries)).refused(None).await
}

/// The message names the archive and the member, and says why.
fn assert_names(message: &str, member: &str, why: &str) {
    assert!(
        message.contains("archive.tar.gz: ")
            && message.contains(&format!("member {member:?}"))
            && message.contains(why),
        "{message}"
    );
}

#[tokio::test]
async fn parent_components_are_refused() {
    for name in ["../x", "a/../../x", "ok/../x", "./../x"] {
        let (err, message) = refused(&[file("fine.txt", b"ok"), file(name, b"evil")]).await;
        assert!(matches!(err, Error::UnsafeName { .. }), "{message}");
        assert_names(&message, name, "has a `..` component");
    }
}

#[tokio::test]
async fn absolute_paths_are_refused() {
    let hostile = Hostile::new(b"");
    // Aimed inside the work directory, so the check that nothing was written there covers it.
    let target = format!("{}/abs/x", hostile.tmp.path().display());
    let hostile = Hostile::new(&archive(&[file(&target, b"evil")]));
    let (err, message) = hostile.refused(None).await;
    assert!(matches!(err, Error::UnsafeName { .. }), "{message}");
    assert_names(&message, &target, "is an absolute path");
}

#[tokio::test]
async fn backslashes_control_characters_and_non_utf8_names_are_refused() {
    let (_, message) = refused(&[file("..\\x", b"evil")]).await;
    assert_names(&message, "..\\x", "has a backslash in its name");
    let (_, message) = refused(&[file("a\x1b[2Jb", b"evil")]).await;
    assert_names(&message, "a\x1b[2Jb", "has a control character in its name");

    let non_utf8 = raw_entry(&header(b"caf\xe9.txt", b'0', 4), b"evil");
    let (err, message) = refused(&[non_utf8]).await;
    assert!(matches!(err, Error::NotUtf8 { .. }), "{message}");
    assert_names(&message, "caf\u{fffd}.txt", "not valid UTF-8");
}

#[tokio::test]
async fn symlinks_are_refused() {
    // A link to the parent, then a file through it: refused at the link.
    let (err, message) = refused(&[link("link", b'2', ".."), file("link/x", b"evil")]).await;
    assert!(matches!(err, Error::EntryType { .. }), "{message}");
    assert_names(&message, "link", "is a symbolic link to \"..\"");
    let (_, message) = refused(&[dir("d/"), link("d/passwd", b'2', "/etc/passwd")]).await;
    assert_names(
        &message,
        "d/passwd",
        "is a symbolic link to \"/etc/passwd\"",
    );
}

#[tokio::test]
async fn hardlinks_are_refused() {
    let (err, message) = refused(&[link("hl", b'1', "../outside")]).await;
    assert!(matches!(err, Error::EntryType { .. }), "{message}");
    assert_names(
        &message,
        "hl",
        "is a hard link to \"../outside\"; only regular files and directories are extracted",
    );
}

#[tokio::test]
async fn devices_and_fifos_are_refused() {
    for (kind, what) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "fifo"),
        (b'7', "contiguous file"),
        (b'V', "entry of unknown type 'V'"),
    ] {
        let (_, message) = refused(&[file("ok", b"ok"), entry("dev", kind, b"")]).await;
        assert_names(&message, "dev", what);
    }
    // A GNU sparse entry needs a GNU header; tokio_tar refuses this one itself.
    let (err, message) = refused(&[file("ok", b"ok"), entry("sparse", b'S', b"")]).await;
    assert!(matches!(err, Error::Tar { .. }), "{message}");
    assert!(
        message.contains("archive.tar.gz: malformed tar data after member \"ok\""),
        "{message}"
    );
}

#[tokio::test]
async fn a_pax_path_is_the_name_that_is_checked() {
    // The ustar name is innocent; the PAX record renames the member out of the directory.
    let (_, message) = refused(&[
        pax(b'x', &[("path", b"../evil")]),
        file("innocent.txt", b"evil"),
    ])
    .await;
    assert_names(&message, "../evil", "has a `..` component");
}

#[tokio::test]
async fn a_gnu_long_name_is_the_name_that_is_checked() {
    let long = format!("{}/../../evil", "d".repeat(120));
    let (_, message) = refused(&[gnu_long_name(&long), file("short", b"evil")]).await;
    assert_names(&message, &long, "has a `..` component");

    // A long, safe name is fine.
    let long = format!("{}/{}.png", "d".repeat(120), "f".repeat(100));
    let hostile = Hostile::new(&archive(&[gnu_long_name(&long), file("short", b"png")]));
    let manifest = extract(&hostile.archive, &hostile.out, None, None)
        .await
        .unwrap();
    assert_eq!(manifest.outputs.keys().collect::<Vec<_>>(), [&long]);
    assert_eq!(std::fs::read(hostile.out.join(&long)).unwrap(), b"png");
}

/// A tar header for a member smuggled inside another member's data, and its data.
fn smuggled(name: &str) -> Vec<u8> {
    file(name, &[b'S'; 512])
}

#[tokio::test]
async fn a_pax_size_that_hides_an_entry_from_a_naive_reader_yields_one_file() {
    // The ustar size says 0, the PAX size says 1024: a reader ignoring PAX would take the data
    // for a header and extract `../smuggled`. A PAX reader sees one 1024-byte file.
    let inner = smuggled("../smuggled");
    assert_eq!(inner.len(), 1024);
    let hostile = Hostile::new(&archive(&[
        pax(b'x', &[("size", b"1024")]),
        raw_entry(&header(b"a.txt", b'0', 0), &inner),
        file("b.txt", b"after"),
    ]));
    let manifest = extract(&hostile.archive, &hostile.out, None, None)
        .await
        .unwrap();
    assert_eq!(
        listing(hostile.tmp.path()),
        [
            "archive.tar.gz",
            "out/",
            "out/a.txt",
            "out/b.txt",
            "out/manifest.json"
        ]
    );
    assert_eq!(std::fs::read(hostile.out.join("a.txt")).unwrap(), inner);
    assert_eq!(manifest.outputs["a.txt"].bytes, 1024);
}

#[tokio::test]
async fn a_pax_size_that_reveals_an_entry_has_it_checked() {
    // The ustar size says 1024, the PAX size says 0: the entry in those 1024 bytes is what a PAX
    // reader sees next, and it is refused like any other.
    let (_, message) = refused(&[
        pax(b'x', &[("size", b"0")]),
        raw_entry(&header(b"a.txt", b'0', 1024), &smuggled("../smuggled")),
    ])
    .await;
    assert_names(&message, "../smuggled", "has a `..` component");
}

#[tokio::test]
async fn pax_smuggling_in_dataset_mode_never_writes_an_unexpected_member() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let members = read_tar_gz(&synthetic.archive);
    let inner = smuggled("cifar-10-batches-py/evil");

    // Hidden from a naive reader inside readme.html: a PAX reader sees readme.html only.
    let hidden: Vec<Vec<u8>> = members
        .iter()
        .flat_map(|m| {
            if m.path.ends_with("/readme.html") {
                vec![
                    pax(b'x', &[("size", b"1024")]),
                    raw_entry(&header(m.path.as_bytes(), b'0', 0), &inner),
                ]
            } else {
                vec![entry(&m.path, m.kind, &m.data)]
            }
        })
        .collect();
    let hostile = Hostile::new(&archive(&hidden));
    extract(&hostile.archive, &hostile.out, Some(Dataset::Cifar10), None)
        .await
        .unwrap();
    let mut expected: Vec<String> = Dataset::Cifar10
        .files()
        .iter()
        .map(|f| format!("cifar-10-batches-py/{f}"))
        .chain(["cifar-10-batches-py/".into(), "manifest.json".into()])
        .collect();
    expected.sort();
    assert_eq!(listing(&hostile.out), expected);
    assert_eq!(
        std::fs::read(hostile.out.join("cifar-10-batches-py/readme.html")).unwrap(),
        inner
    );
    // With the generator's digests, the changed readme.html is caught.
    let hostile = Hostile::new(&archive(&hidden));
    let err = extract(
        &hostile.archive,
        &hostile.out,
        Some(Dataset::Cifar10),
        Some(&synthetic.digests),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Md5Mismatch { member, .. } if member == "cifar-10-batches-py/readme.html")
    );
    assert_eq!(listing(hostile.tmp.path()), ["archive.tar.gz"]);

    // Revealed to a PAX reader: refused as unexpected.
    let revealed: Vec<Vec<u8>> = members
        .iter()
        .flat_map(|m| {
            if m.path.ends_with("/readme.html") {
                vec![
                    pax(b'x', &[("size", b"0")]),
                    raw_entry(&header(m.path.as_bytes(), b'0', 1024), &inner),
                ]
            } else {
                vec![entry(&m.path, m.kind, &m.data)]
            }
        })
        .collect();
    let (err, message) = Hostile::new(&archive(&revealed))
        .refused(Some(Dataset::Cifar10))
        .await;
    assert!(matches!(err, Error::Unexpected { .. }), "{message}");
    assert_names(
        &message,
        "cifar-10-batches-py/evil",
        "not in the cifar10 archive",
    );
}

#[tokio::test]
async fn global_pax_headers_that_rename_members_are_refused() {
    let (err, message) = refused(&[pax(b'g', &[("path", b"x")]), file("a", b"a")]).await;
    assert!(matches!(err, Error::GlobalPax { .. }), "{message}");
    assert!(
        message.ends_with(
            "archive.tar.gz: global PAX header \"PaxHeaders/x\" sets \"path\", which would apply to every member"
        ),
        "{message}"
    );
    // git archive's global header (a comment) is harmless.
    let hostile = Hostile::new(&archive(&[
        pax(b'g', &[("comment", b"0123abcd")]),
        file("a", b"a"),
    ]));
    let manifest = extract(&hostile.archive, &hostile.out, None, None)
        .await
        .unwrap();
    assert_eq!(manifest.outputs.keys().collect::<Vec<_>>(), ["a"]);
}

#[tokio::test]
async fn pax_sparse_files_are_refused() {
    let (_, message) = refused(&[
        pax(
            b'x',
            &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
        ),
        file("sparse", b"0\n"),
    ])
    .await;
    assert_names(&message, "sparse", "GNU sparse file (PAX format)");
}

#[tokio::test]
async fn oversized_metadata_is_refused() {
    let comment = vec![b'c'; METADATA_LIMIT as usize + 1];
    let (err, message) = refused(&[
        file("first", b"1"),
        pax(b'x', &[("comment", &comment)]),
        file("second", b"2"),
    ])
    .await;
    assert!(matches!(err, Error::Metadata { .. }), "{message}");
    assert!(
        message
            .ends_with("archive.tar.gz: over 1048576 bytes of tar metadata after member \"first\""),
        "{message}"
    );
}

#[tokio::test]
async fn duplicates_and_file_directory_clashes_are_refused() {
    let (err, message) = refused(&[file("a", b"1"), file("./a", b"2")]).await;
    assert!(matches!(err, Error::Duplicate { .. }), "{message}");
    assert_names(&message, "a", "appears more than once");

    let (_, message) = refused(&[file("a", b"1"), file("a/b", b"2")]).await;
    assert_names(&message, "a/b", "clashes with \"a\"");
    let (_, message) = refused(&[file("a/b", b"1"), file("a", b"2")]).await;
    assert_names(&message, "a", "clashes with \"a/\"");
    let (_, message) = refused(&[dir("a/"), file("a", b"2")]).await;
    assert_names(&message, "a", "clashes with \"a/\"");
}

#[tokio::test]
async fn reserved_names_are_refused() {
    let (_, message) = refused(&[file("d/.x.partial", b"1")]).await;
    assert_names(&message, "d/.x.partial", "of the form .NAME.partial");
    let (_, message) = refused(&[file("manifest.json", b"{}")]).await;
    assert_names(&message, "manifest.json", "which the stage writes itself");
    let (_, message) = refused(&[file("./", b"1")]).await;
    assert_names(&message, "./", "names the output directory itself");
}

#[tokio::test]
async fn a_directory_with_data_is_refused() {
    let (err, message) = refused(&[raw_entry(&header(b"d/", b'5', 512), &[0; 512])]).await;
    assert!(matches!(err, Error::DirectoryData { .. }), "{message}");
    assert_names(&message, "d/", "is a directory with 512 bytes of data");
}

#[tokio::test]
async fn a_member_cut_short_is_refused() {
    // A valid gzip of a tar whose last member stops 100 bytes into its 1000.
    let mut bytes = file("ok", b"ok");
    bytes.extend_from_slice(header(b"short", b'0', 1000).as_bytes());
    bytes.extend_from_slice(&[b'x'; 100]);
    let (err, message) = Hostile::new(&gzip(&bytes, 6)).refused(None).await;
    assert!(matches!(err, Error::Tar { .. }), "{message}");
    assert!(
        message.contains("archive.tar.gz: malformed tar data in member \"short\": unexpected EOF"),
        "{message}"
    );
}

/// A generic archive of one 4 KiB file, stored (gzip level 0), so a flipped bit in its data
/// changes the content without upsetting the deflate stream: only the CRC can tell.
fn stored_archive() -> Vec<u8> {
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    gzip(&tar(&[file("data.bin", &data)]), 0)
}

#[tokio::test]
async fn a_flipped_bit_in_stored_data_is_caught_by_the_gzip_crc() {
    let mut bytes = stored_archive();
    // gzip header (10) + stored block header (5) + tar header (512), then 100 bytes in.
    bytes[10 + 5 + 512 + 100] ^= 0x10;
    let (err, message) = Hostile::new(&bytes).refused(None).await;
    assert!(matches!(err, Error::Gzip { .. }), "{message}");
    assert!(
        message.contains("archive.tar.gz: corrupt or truncated gzip stream"),
        "{message}"
    );
}

#[tokio::test]
async fn a_flipped_bit_in_compressed_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let clean = std::fs::read(&synthetic.archive).unwrap();
    for at in [clean.len() / 3, clean.len() / 2, clean.len() * 3 / 4] {
        let mut bytes = clean.clone();
        bytes[at] ^= 0x04;
        let (err, message) = Hostile::new(&bytes).refused(Some(Dataset::Cifar10)).await;
        assert!(message.contains("archive.tar.gz: "), "{message}");
        assert!(
            matches!(
                err,
                Error::Gzip { .. } | Error::Tar { .. } | Error::Truncated { .. }
            ),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_truncated_gzip_stream_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let clean = std::fs::read(&synthetic.archive).unwrap();
    // Cut in the middle of the data, and cut only the last 4 bytes of the trailer (every tar
    // member is intact then: only draining the stream notices).
    for keep in [clean.len() / 2, clean.len() - 4] {
        let (err, message) = Hostile::new(&clean[..keep])
            .refused(Some(Dataset::Cifar10))
            .await;
        assert!(matches!(err, Error::Gzip { .. }), "{message}");
        assert!(
            message.contains("archive.tar.gz: corrupt or truncated gzip stream"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_crc_trailer_with_intact_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = synth(Dataset::Cifar10, tmp.path());
    let mut bytes = std::fs::read(&synthetic.archive).unwrap();
    let crc_at = bytes.len() - 8;
    bytes[crc_at] ^= 0xff;
    let (err, message) = Hostile::new(&bytes).refused(Some(Dataset::Cifar10)).await;
    assert!(matches!(err, Error::Gzip { .. }), "{message}");
    assert!(
        message.contains("archive.tar.gz: corrupt or truncated gzip stream"),
        "{message}"
    );
    // So is a wrong length (ISIZE), the last 4 bytes.
    let mut bytes = std::fs::read(&synthetic.archive).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let (err, _) = Hostile::new(&bytes).refused(Some(Dataset::Cifar10)).await;
    assert!(matches!(err, Error::Gzip { .. }));
}

#[tokio::test]
async fn concatenated_gzip_members_are_read_whole() {
    let data_a = vec![b'a'; 3000];
    let data_b = vec![b'b'; 5000];
    let tar_bytes = tar(&[file("a", &data_a), file("b", &data_b)]);
    let (first, second) = tar_bytes.split_at(1536); // inside b's data
    let mut bytes = gzip(first, 6);
    bytes.extend_from_slice(&gzip(second, 6));
    let hostile = Hostile::new(&bytes);
    let manifest = extract(&hostile.archive, &hostile.out, None, None)
        .await
        .unwrap();
    assert_eq!(manifest.outputs.len(), 2);
    assert_eq!(std::fs::read(hostile.out.join("a")).unwrap(), data_a);
    assert_eq!(std::fs::read(hostile.out.join("b")).unwrap(), data_b);

    // A bad CRC in the first member is caught too.
    let mut bytes = gzip(first, 6);
    let crc_at = bytes.len() - 8;
    bytes[crc_at] ^= 0xff;
    bytes.extend_from_slice(&gzip(second, 6));
    let (err, _) = Hostile::new(&bytes).refused(None).await;
    assert!(matches!(err, Error::Gzip { .. }));
}

#[tokio::test]
async fn bytes_after_the_gzip_stream_are_refused() {
    let mut bytes = archive(&[file("a", b"a")]);
    bytes.extend_from_slice(b"trailing garbage");
    let (err, message) = Hostile::new(&bytes).refused(None).await;
    assert!(matches!(err, Error::Gzip { .. }), "{message}");
}

#[tokio::test]
async fn entries_after_the_end_of_archive_marker_are_refused() {
    // `tar --ignore-zeros` would extract `../hidden`; we refuse the archive.
    let mut tar_bytes = tar(&[file("a", b"a")]);
    tar_bytes.extend_from_slice(&smuggled("../hidden"));
    let (err, message) = Hostile::new(&gzip(&tar_bytes, 6)).refused(None).await;
    assert!(matches!(err, Error::TrailingData { .. }), "{message}");
    assert!(
        message.ends_with("archive.tar.gz: non-zero bytes after the tar end-of-archive marker"),
        "{message}"
    );
}

#[tokio::test]
async fn a_decompression_bomb_stops_at_max_bytes() {
    let zeros = vec![0u8; 8 << 20];
    let bytes = archive(&[file("small", b"1"), file("bomb", &zeros)]);
    assert!(bytes.len() < 64 << 10);
    let hostile = Hostile::new(&bytes);
    let mut cfg = retrain_extract::Config::new(hostile.archive.clone(), hostile.out.clone());
    cfg.max_bytes = 1 << 20;
    let err = retrain_extract::run(
        &cfg,
        &retrain_stage::NoProgress,
        retrain_extract::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let message = chain(&err);
    assert!(matches!(err, Error::TooLarge { .. }), "{message}");
    assert_names(
        &message,
        "bomb",
        "brings the extracted size to 8388609 bytes, over the limit of 1048576 (--max-bytes)",
    );
    assert_eq!(listing(hostile.tmp.path()), ["archive.tar.gz"]);
}

#[tokio::test]
async fn an_existing_symlink_in_the_output_directory_is_never_followed() {
    let hostile = Hostile::new(&archive(&[file("sub/x", b"evil")]));
    let elsewhere = hostile.tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&hostile.out).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&elsewhere, hostile.out.join("sub")).unwrap();
    #[cfg(not(unix))]
    std::fs::write(hostile.out.join("sub"), b"not a directory").unwrap();
    let err = extract(&hostile.archive, &hostile.out, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotADirectory { .. }),
        "{}",
        chain(&err)
    );
    assert_eq!(listing(&elsewhere), Vec::<String>::new());
    assert_eq!(listing(&hostile.out), ["sub"]);
}

#[tokio::test]
async fn the_member_reader_applies_the_same_rules() {
    let hostile = Hostile::new(&archive(&[file("ok", b"ok"), link("l", b'2', "/etc")]));
    let mut reader =
        retrain_extract::MemberReader::open(&hostile.archive, retrain_extract::Policy::generic())
            .await
            .unwrap();
    let member = reader.next_member().await.unwrap().unwrap();
    assert_eq!(member.path(), "ok");
    let err = reader.next_member().await.unwrap_err();
    assert!(matches!(err, Error::EntryType { .. }), "{err}");
    // After an error the reader refuses to go on.
    let err = reader.next_member().await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
    let err = reader.finish().await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
}

#[tokio::test]
async fn files_that_are_not_gzip_are_refused() {
    let (err, message) = Hostile::new(b"").refused(None).await;
    assert!(matches!(err, Error::Gzip { .. }), "{message}");
    let (err, message) = Hostile::new(&tar(&[file("a", b"a")])).refused(None).await;
    assert!(matches!(err, Error::Gzip { .. }), "{message}");
    assert!(
        message.contains("archive.tar.gz: corrupt or truncated gzip stream"),
        "{message}"
    );
}
