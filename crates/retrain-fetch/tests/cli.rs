//! The `retrain-fetch` binary: help, a download from a loopback server, the table entries and
//! their overrides, errors, Ctrl-C.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{body, listing, md5_hex, sha256_hex};
use retrain_serve::{Config as ServeConfig, Fault, Server};
use retrain_stage::Manifest;

const NAME: &str = "data.bin";

fn fetch_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_retrain-fetch"));
    // Loopback only: no proxy from the environment may intercept it.
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG").arg("--quiet");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_explains_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_retrain-fetch"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn a_download_writes_the_file_and_the_manifest() {
    let data = body(800_000, 50);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(300_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("downloads").join(NAME);

    let out = fetch_bin()
        .args(["--url", &server.url(), "--sha256", &sha256_hex(&data)])
        .args(["--size", &data.len().to_string(), "--retry-delay-ms", "10"])
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&out_path).unwrap(), data);
    let manifest = Manifest::read(&tmp.path().join("downloads"))
        .unwrap()
        .unwrap();
    assert_eq!(manifest.stage, "fetch");
    assert_eq!(manifest.params["url"], server.url());
    assert_eq!(manifest.params["sha256"], sha256_hex(&data));
    assert_eq!(manifest.params["size"], data.len().to_string());
    assert!(!manifest.params.contains_key("md5"));
    assert_eq!(manifest.outputs[NAME].sha256, sha256_hex(&data));
    assert_eq!(
        listing(&tmp.path().join("downloads")),
        [NAME, "manifest.json"]
    );
    assert_eq!(server.requests()[1].range.as_deref(), Some("bytes=300000-"));
    assert!(out.stdout.is_empty(), "stdout is for data");
}

#[test]
fn without_a_digest_nothing_is_downloaded() {
    let data = body(1000, 51);
    let server = Server::start(ServeConfig::new(NAME, data)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join(NAME);

    let out = fetch_bin()
        .args(["--url", &server.url(), "--out"])
        .arg(&out_path)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("error: no digest for") && text.contains("--sha256"),
        "{text}"
    );
    assert!(server.requests().is_empty());
    assert!(listing(tmp.path()).is_empty());
}

#[test]
fn dataset_entries_apply_unless_overridden() {
    let data = body(300_000, 52);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join(NAME);

    // Only the URL overridden: the table's size (and digests) still hold, and the server's
    // Content-Length contradicts the size.
    let out = fetch_bin()
        .args(["--dataset", "cifar10", "--url", &server.url(), "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("has 300000 bytes, expected 170498071") && text.contains(&server.url()),
        "{text}"
    );
    assert!(!out_path.exists());

    // Everything overridden: the download is this file.
    let out = fetch_bin()
        .args(["--dataset", "cifar10", "--url", &server.url()])
        .args(["--sha256", &sha256_hex(&data), "--md5", &md5_hex(&data)])
        .args(["--size", &data.len().to_string(), "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = Manifest::read(tmp.path()).unwrap().unwrap();
    assert_eq!(manifest.params["dataset"], "cifar10");
    assert_eq!(manifest.params["url"], server.url());
    assert_eq!(manifest.params["sha256"], sha256_hex(&data));
    assert_eq!(manifest.params["md5"], md5_hex(&data));
    assert_eq!(manifest.params["size"], "300000");
}

#[test]
fn the_pipeline_runner_sees_its_parameters_in_the_manifest() {
    // `cargo xtask pipeline` runs `retrain-fetch --out DIR/ARCHIVE --dataset=cifar10` and then
    // requires its parameters in the manifest; `demo` passes --sha256=, --size= and --url.
    let data = body(200_000, 56);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_bin()
        .arg("--out")
        .arg(tmp.path().join(NAME))
        .arg("--dataset=cifar10")
        .arg(format!("--md5={}", md5_hex(&data)))
        .arg(format!("--sha256={}", sha256_hex(&data)))
        .arg(format!("--size={}", data.len()))
        .args(["--url", &server.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let params = [
        ("dataset", "cifar10".to_owned()),
        ("sha256", sha256_hex(&data)),
        ("size", data.len().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let fresh =
        retrain_stage::freshness(tmp.path(), "fetch", &params, &Default::default()).unwrap();
    assert_eq!(fresh, retrain_stage::Freshness::UpToDate);
}

#[test]
fn weights_need_their_hash_prefix() {
    let data = body(300_000, 53);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join(NAME);
    let size = data.len().to_string();

    let out = fetch_bin()
        .args(["--weights", "inception_v3", "--url", &server.url()])
        .args(["--size", &size, "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("sha256 mismatch: expected 0cc3c7bd…") && text.contains(&sha256_hex(&data)),
        "{text}"
    );
    assert!(listing(tmp.path()).is_empty());

    // A full --sha256 replaces the prefix.
    let out = fetch_bin()
        .args(["--weights", "inception_v3", "--url", &server.url()])
        .args(["--size", &size, "--sha256", &sha256_hex(&data), "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = Manifest::read(tmp.path()).unwrap().unwrap();
    assert_eq!(manifest.params["sha256"], sha256_hex(&data));
}

#[test]
fn a_missing_file_is_an_error_naming_the_status_and_the_url() {
    let server = Server::start(ServeConfig::new(NAME, body(10, 54))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://{}/missing.bin", server.addr());

    let out = fetch_bin()
        .args(["--url", &url, "--sha256", &"0".repeat(64), "--out"])
        .arg(tmp.path().join(NAME))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert_eq!(
        text.lines()
            .filter(|line| line.starts_with("error:"))
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains(&format!("{url}: HTTP status 404")), "{text}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_keeps_the_part_file_and_a_rerun_resumes_it() {
    let data = body(1_000_000, 55);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::Stall {
        after: 400_000,
        pause: Duration::from_secs(60),
    }];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join(NAME);
    let args = |cmd: &mut Command| {
        cmd.args([
            "--url",
            &server.url(),
            "--sha256",
            &sha256_hex(&data),
            "--out",
        ])
        .arg(&out_path);
    };

    let mut first = fetch_bin();
    args(&mut first);
    let mut child = first.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.requests().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the first 400,000 bytes arrive before the interrupt.
    std::thread::sleep(Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert!(!out_path.exists());
    assert_eq!(
        std::fs::metadata(tmp.path().join("data.bin.part"))
            .unwrap()
            .len(),
        400_000
    );

    let mut second = fetch_bin();
    args(&mut second);
    let out = second.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&out_path).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=400000-"));
}

#[test]
fn out_must_be_a_file_name() {
    let out = fetch_bin()
        .args(["--url", "http://127.0.0.1:9/x", "--sha256", &"0".repeat(64)])
        .args(["--out", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid --out"), "{}", stderr(&out));
}
