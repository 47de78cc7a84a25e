//! Resumption: dropped connections, stalls, servers that ignore ranges or change the file, part
//! files left by earlier runs, cancellation.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{body, bytes_sent, config, etag, fetch, file_requests, listing, sha256_hex};
use retrain_fetch::Error;
use retrain_serve::{Config as ServeConfig, Fault, Server};
use retrain_stage::{NoProgress, Reporter};
use tokio_util::sync::CancellationToken;

const NAME: &str = "data.bin";

#[tokio::test]
async fn drops_at_three_offsets_resume_where_they_broke() {
    let data = body(3_000_000, 1);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![
        Fault::DropAfter(500_000),
        Fault::DropAfter(700_000),
        Fault::DropAfter(900_000),
    ];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    let manifest = fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(manifest.outputs[NAME].sha256, sha256_hex(&data));
    let log = server.requests();
    let ranges: Vec<_> = log.iter().map(|req| req.range.as_deref()).collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=500000-"),
            Some("bytes=1200000-"),
            Some("bytes=2100000-")
        ]
    );
    let tag = etag(&data);
    let if_ranges: Vec<_> = log.iter().map(|req| req.if_range.as_deref()).collect();
    assert_eq!(if_ranges, [None, Some(&*tag), Some(&*tag), Some(&*tag)]);
    let statuses: Vec<_> = log.iter().map(|req| req.status).collect();
    assert_eq!(statuses, [200, 206, 206, 206]);
    let resent = bytes_sent(&log) - data.len() as u64;
    assert!(resent <= 64 * 1024, "{resent} bytes were sent twice");
    assert_eq!(listing(tmp.path()), [NAME, "manifest.json"]);
}

#[tokio::test]
async fn without_a_strong_etag_if_range_carries_last_modified() {
    let data = body(1_000_000, 16);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.etag = Some("W/\"weak\"".into());
    serve.faults = vec![Fault::DropAfter(400_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=400000-"));
    assert_eq!(
        log[1].if_range.as_deref(),
        Some(retrain_serve::DEFAULT_LAST_MODIFIED)
    );
    assert_eq!(log[1].status, 206);
}

#[tokio::test]
async fn a_server_ignoring_ranges_makes_the_download_start_again() {
    let data = body(2_000_000, 2);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.ignore_range = true;
    serve.faults = vec![Fault::DropAfter(1_000_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000000-"));
    assert_eq!(log[1].status, 200);
    assert_eq!(bytes_sent(&log), 3_000_000);
}

#[tokio::test]
async fn a_stall_longer_than_the_read_timeout_is_retried() {
    let data = body(2_000_000, 3);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::Stall {
        after: 1_000_000,
        pause: Duration::from_secs(20),
    }];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.read_timeout = Duration::from_millis(500);

    let started = Instant::now();
    fetch(&cfg).await.unwrap();
    let took = started.elapsed();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000000-"));
    assert_eq!(log[1].status, 206);
}

#[tokio::test]
async fn a_part_file_from_an_earlier_run_is_resumed() {
    let data = body(3_000_000, 4);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(1_200_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);

    // The first run gives up at once, as a killed run would stop.
    cfg.retries = 0;
    let err = fetch(&cfg).await.unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(listing(tmp.path()), ["data.bin.part", "data.bin.part.json"]);
    assert_eq!(
        std::fs::metadata(tmp.path().join("data.bin.part"))
            .unwrap()
            .len(),
        1_200_000
    );

    cfg.retries = 5;
    fetch(&cfg).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1200000-"));
    assert_eq!(log[1].if_range.as_deref(), Some(&*etag(&data)));
    assert_eq!(log[1].status, 206);
    assert_eq!(bytes_sent(&log), data.len() as u64);
    assert_eq!(listing(tmp.path()), [NAME, "manifest.json"]);
}

#[tokio::test]
async fn a_part_file_without_its_sidecar_is_not_trusted() {
    let data = body(1_000_000, 5);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    std::fs::write(tmp.path().join("data.bin.part"), &data[..400_000]).unwrap();

    fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].range, None);
}

#[tokio::test]
async fn a_corrupt_part_file_fails_verification_and_the_rerun_starts_clean() {
    let data = body(2_000_000, 6);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(800_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retries = 0;
    fetch(&cfg).await.unwrap_err();
    // Someone scribbles over the part file's bytes.
    std::fs::write(tmp.path().join("data.bin.part"), body(800_000, 99)).unwrap();

    let err = fetch(&cfg).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DigestMismatch {
                algorithm: "sha256",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));

    fetch(&cfg).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(server.requests()[2].range, None);
}

/// A reporter that changes the served file once the first bytes have arrived.
struct ChangeBodyOnce<'a> {
    server: &'a Server,
    body: Vec<u8>,
    done: AtomicBool,
}

impl Reporter for ChangeBodyOnce<'_> {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, _n: u64) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.server.set_body(self.body.clone());
        }
    }
    fn finish(&self) {}
}

#[tokio::test]
async fn a_file_changed_between_attempts_is_downloaded_again_from_zero() {
    let old = body(2_000_000, 7);
    let new = body(1_500_000, 8);
    let mut serve = ServeConfig::new(NAME, old.clone());
    serve.faults = vec![Fault::DropAfter(1_000_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let cfg = config(server.url(), &out, &new);
    let rep = ChangeBodyOnce {
        server: &server,
        body: new.clone(),
        done: AtomicBool::new(false),
    };

    retrain_fetch::run(&cfg, &rep, CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), new);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000000-"));
    assert_eq!(log[1].if_range.as_deref(), Some(&*etag(&old)));
    assert_eq!(log[1].status, 200, "If-Range did not match: the whole file");
    assert_eq!(log[1].body_bytes, new.len() as u64);
}

#[tokio::test]
async fn a_file_changed_between_runs_is_downloaded_again_from_zero() {
    let old = body(2_000_000, 9);
    let new = body(1_000_000, 10);
    let mut serve = ServeConfig::new(NAME, old.clone());
    serve.faults = vec![Fault::DropAfter(1_500_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &old);
    cfg.retries = 0;
    fetch(&cfg).await.unwrap_err();

    server.set_body(new.clone());
    let cfg = config(server.url(), &out, &new);
    fetch(&cfg).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), new);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].if_range.as_deref(), Some(&*etag(&old)));
    assert_eq!(log[1].status, 200);
}

#[tokio::test]
async fn a_416_for_a_part_that_no_longer_fits_restarts_from_zero() {
    // A server restarted with other bytes under the same (wrong) ETag: the If-Range matches, the
    // range does not.
    let old = body(2_000_000, 11);
    let new = body(1_000_000, 12);
    let mut serve = ServeConfig::new(NAME, old.clone());
    serve.etag = Some("v1".into());
    serve.faults = vec![Fault::DropAfter(1_500_000)];
    let server = Server::start(serve).unwrap();
    let port = server.addr().port();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &old);
    cfg.retries = 0;
    fetch(&cfg).await.unwrap_err();
    drop(server);

    let mut serve = ServeConfig::new(NAME, new.clone());
    serve.etag = Some("v1".into());
    serve.port = port;
    let server = Server::start(serve).unwrap();
    let cfg = config(server.url(), &out, &new);
    fetch(&cfg).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), new);
    let log = server.requests();
    let statuses: Vec<_> = log.iter().map(|req| req.status).collect();
    assert_eq!(statuses, [416, 200]);
    assert_eq!(log[0].range.as_deref(), Some("bytes=1500000-"));
    assert_eq!(log[1].range, None);
}

#[tokio::test]
async fn a_416_for_a_complete_part_verifies_it() {
    let data = body(1_000_000, 13);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(300_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retries = 0;
    fetch(&cfg).await.unwrap_err();
    // The earlier run got every byte but died before renaming.
    std::fs::write(tmp.path().join("data.bin.part"), &data).unwrap();

    fetch(&cfg).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000000-"));
    assert_eq!(log[1].status, 416);
    assert_eq!(listing(tmp.path()), [NAME, "manifest.json"]);
}

/// A reporter that cancels once `at` bytes have arrived.
struct CancelAt {
    cancel: CancellationToken,
    seen: AtomicU64,
    at: u64,
}

impl Reporter for CancelAt {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, n: u64) {
        if self.seen.fetch_add(n, Ordering::SeqCst) + n >= self.at {
            self.cancel.cancel();
        }
    }
    fn finish(&self) {}
}

#[tokio::test]
async fn cancelling_keeps_the_part_file_and_a_rerun_resumes_it() {
    let data = body(2_000_000, 14);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::Stall {
        after: 700_000,
        pause: Duration::from_secs(20),
    }];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let cfg = config(server.url(), &out, &data);
    let cancel = CancellationToken::new();
    let rep = CancelAt {
        cancel: cancel.clone(),
        seen: AtomicU64::new(0),
        at: 700_000,
    };

    let started = Instant::now();
    let err = retrain_fetch::run(&cfg, &rep, cancel).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(err.to_string().contains("data.bin.part"), "{err}");
    assert_eq!(listing(tmp.path()), ["data.bin.part", "data.bin.part.json"]);
    assert_eq!(
        std::fs::metadata(tmp.path().join("data.bin.part"))
            .unwrap()
            .len(),
        700_000
    );

    retrain_fetch::run(&cfg, &NoProgress, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = file_requests(&server.requests(), NAME);
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=700000-"));
}

#[tokio::test]
async fn resumed_requests_follow_the_redirects_again() {
    let data = body(1_500_000, 15);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(600_000)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    let url = server.redirect_url(3);
    let manifest = fetch(&config(url.clone(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(manifest.params["url"], url);
    let log = server.requests();
    assert_eq!(log.len(), 8, "two attempts of three redirects and the file");
    let file = file_requests(&log, NAME);
    assert_eq!(file.len(), 2);
    assert_eq!(file[1].range.as_deref(), Some("bytes=600000-"));
    assert_eq!(file[1].if_range.as_deref(), Some(&*etag(&data)));
    assert_eq!(file[1].status, 206);
}
