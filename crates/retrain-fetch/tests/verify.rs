//! Verification: files already present, prefix pins, the manifest.

mod common;

use std::collections::BTreeMap;

use common::{body, config, fetch, listing, md5_hex, sha256_hex};
use retrain_fetch::{Error, Sha256Pin};
use retrain_serve::{Config as ServeConfig, Server};
use retrain_stage::{Digest, Manifest};

const NAME: &str = "data.bin";

#[tokio::test]
async fn a_verified_file_is_not_downloaded_again() {
    let data = body(600_000, 40);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    std::fs::write(&out, &data).unwrap();
    // Leftovers of an older, interrupted run go.
    std::fs::write(tmp.path().join("data.bin.part"), b"stale").unwrap();
    let mut cfg = config(server.url(), &out, &data);
    cfg.expected.md5 = Some(md5_hex(&data));
    cfg.expected.size = Some(data.len() as u64);

    let manifest = fetch(&cfg).await.unwrap();

    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(manifest.outputs[NAME].sha256, sha256_hex(&data));
    assert_eq!(listing(tmp.path()), [NAME, "manifest.json"]);
}

#[tokio::test]
async fn a_file_with_the_wrong_digest_is_replaced() {
    let data = body(600_000, 41);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut stale = data.clone();
    stale[12_345] ^= 1;
    std::fs::write(&out, &stale).unwrap();

    fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0].range, None);
}

#[tokio::test]
async fn a_wrong_file_is_gone_even_when_the_download_fails() {
    let data = body(1000, 42);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    std::fs::write(&out, b"not it").unwrap();
    let url = format!("http://{}/missing.bin", server.addr());

    fetch(&config(url, &out, &data)).await.unwrap_err();

    assert!(
        !out.exists(),
        "an unverified file never stays under its name"
    );
}

#[tokio::test]
async fn a_prefix_pin_accepts_a_matching_digest_and_rejects_another() {
    let data = body(300_000, 43);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let digest = sha256_hex(&data);

    let mut cfg = config(server.url(), &out, &data);
    let wrong = if digest.starts_with("00000000") {
        "11111111"
    } else {
        "00000000"
    };
    cfg.expected.sha256 = Sha256Pin::Prefix(wrong.into());
    let err = fetch(&cfg).await.unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { algorithm: "sha256", expected, actual, .. }
            if *expected == format!("{wrong}…") && *actual == digest),
        "{err:?}"
    );
    assert!(listing(tmp.path()).is_empty());

    cfg.expected.sha256 = Sha256Pin::Prefix(digest[..8].to_owned());
    let manifest = fetch(&cfg).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(manifest.params["sha256"], digest[..8]);
    assert_eq!(manifest.outputs[NAME].sha256, digest);
}

#[tokio::test]
async fn the_manifest_records_the_flags_and_the_file() {
    let data = body(250_000, 44);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("downloads");
    let out = dir.join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.expected.md5 = Some(md5_hex(&data));
    cfg.expected.size = Some(data.len() as u64);

    let manifest = fetch(&cfg).await.unwrap();

    assert_eq!(Manifest::read(&dir).unwrap().as_ref(), Some(&manifest));
    assert_eq!(manifest.stage, "fetch");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    let params: BTreeMap<String, String> = [
        ("url", server.url()),
        ("sha256", sha256_hex(&data)),
        ("md5", md5_hex(&data)),
        ("size", data.len().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(manifest.params, params);
    assert!(manifest.inputs.is_empty());
    assert_eq!(
        manifest.outputs,
        BTreeMap::from([(
            NAME.to_owned(),
            Digest {
                sha256: sha256_hex(&data),
                bytes: data.len() as u64
            }
        )])
    );
    // What the pipeline runner checks: the recorded output is the file on disk.
    assert_eq!(
        retrain_stage::digest_path(&out).unwrap(),
        manifest.outputs[NAME]
    );
}

#[tokio::test]
async fn the_old_manifest_goes_before_anything_else() {
    let data = body(1000, 45);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    fetch(&config(server.url(), &out, &data)).await.unwrap();
    assert!(tmp.path().join("manifest.json").exists());

    let url = format!("http://{}/missing.bin", server.addr());
    fetch(&config(url, &out, &body(1000, 46)))
        .await
        .unwrap_err();
    assert!(!tmp.path().join("manifest.json").exists());
}
