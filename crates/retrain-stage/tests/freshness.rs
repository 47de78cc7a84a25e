use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use retrain_stage::{AtomicFile, Freshness, Manifest, digest_path, freshness, partial_path};

fn params(seed: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("seed".to_owned(), seed.to_owned())])
}

#[test]
fn a_stage_is_stale_until_its_manifest_matches_then_stale_again_on_any_change() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.bin");
    fs::write(&input, b"input bytes").unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let inputs = BTreeMap::from([("input".to_owned(), input.clone())]);

    let check = |p: &BTreeMap<String, String>| freshness(&out, "demo", p, &inputs).unwrap();
    assert_eq!(
        check(&params("0")),
        Freshness::Stale("no manifest yet".into())
    );

    fs::write(out.join("result.txt"), b"result").unwrap();
    let mut manifest = Manifest::new("demo", "0.1.0");
    manifest.param("seed", 0);
    manifest.input("input", &input).unwrap();
    manifest.output(&out, "result.txt").unwrap();
    manifest.write(&out).unwrap();
    assert_eq!(Manifest::read(&out).unwrap().as_ref(), Some(&manifest));

    assert_eq!(check(&params("0")), Freshness::UpToDate);
    assert_eq!(
        check(&params("1")),
        Freshness::Stale("parameter --seed changed (0 → 1)".into())
    );
    assert_eq!(
        check(&params("0.0")),
        Freshness::UpToDate,
        "numbers compare as numbers (a stage records `1e-2` as `0.01`)"
    );
    assert_eq!(
        check(&BTreeMap::from([("size".to_owned(), "3".to_owned())])),
        Freshness::Stale("parameter --size is not in the manifest".into())
    );
    assert_eq!(
        check(&BTreeMap::new()),
        Freshness::UpToDate,
        "a manifest may record parameters the runner did not pass"
    );
    assert_eq!(
        freshness(&out, "other", &params("0"), &inputs).unwrap(),
        Freshness::Stale("manifest is from stage \"demo\"".into())
    );

    fs::write(out.join("result.txt"), b"tampered").unwrap();
    assert_eq!(
        check(&params("0")),
        Freshness::Stale("output result.txt was modified".into())
    );
    fs::write(out.join("result.txt"), b"result").unwrap();
    assert_eq!(check(&params("0")), Freshness::UpToDate);

    fs::write(&input, b"other input").unwrap();
    assert!(
        matches!(check(&params("0")), Freshness::Stale(r) if r.contains("--input") && r.ends_with("changed"))
    );
    fs::remove_file(out.join("result.txt")).unwrap();
    fs::write(&input, b"input bytes").unwrap();
    assert_eq!(
        check(&params("0")),
        Freshness::Stale("output result.txt is missing".into())
    );
}

#[test]
fn a_corrupt_manifest_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("manifest.json"), b"{not json").unwrap();
    let err = Manifest::read(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("manifest.json") && err.contains("not a valid manifest"),
        "{err}"
    );
}

#[test]
fn an_uncommitted_file_never_appears_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dest: PathBuf = tmp.path().join("train-00000-of-00001");
    {
        let mut file = AtomicFile::create(&dest).unwrap();
        file.write_all(b"half").unwrap();
        assert!(partial_path(&dest).exists());
        assert!(!dest.exists());
    }
    assert!(!dest.exists());
    assert!(!partial_path(&dest).exists());

    let mut file = AtomicFile::create(&dest).unwrap();
    file.write_all(b"whole").unwrap();
    file.commit().unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"whole");
    assert!(!partial_path(&dest).exists());
}

#[test]
fn a_directory_digest_covers_names_and_contents_but_not_hidden_files_or_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir(dir.join("cat")).unwrap();
    fs::write(dir.join("cat/a.png"), b"a").unwrap();
    fs::write(dir.join("labels.txt"), b"cat\n").unwrap();
    let before = digest_path(dir).unwrap();
    assert_eq!(before.bytes, 5);

    fs::write(dir.join(".labels.txt.partial"), b"junk").unwrap();
    fs::write(dir.join("manifest.json"), b"{}").unwrap();
    assert_eq!(digest_path(dir).unwrap(), before);

    fs::rename(dir.join("cat/a.png"), dir.join("cat/b.png")).unwrap();
    assert_ne!(digest_path(dir).unwrap(), before);
}
