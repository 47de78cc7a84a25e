//! Failures: which are retried and how, which are final, and what each leaves behind (never
//! `FILE`).

mod common;

use std::time::{Duration, Instant};

use common::{body, config, fetch, file_requests, listing, md5_hex, sha256_hex};
use retrain_fetch::Error;
use retrain_serve::{Config as ServeConfig, Fault, Server};

const NAME: &str = "data.bin";

#[tokio::test]
async fn server_errors_are_retried_with_doubling_delays() {
    let data = body(500_000, 20);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::Status(503), Fault::Status(429), Fault::Status(500)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retry_delay = Duration::from_millis(50);

    let started = Instant::now();
    fetch(&cfg).await.unwrap();
    let took = started.elapsed();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = server.requests();
    let statuses: Vec<_> = log.iter().map(|req| req.status).collect();
    assert_eq!(statuses, [503, 429, 500, 200]);
    assert!(log.iter().all(|req| req.range.is_none()));
    // 50 + 100 + 200 ms of backoff.
    assert!(took >= Duration::from_millis(350), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn one_503_then_success() {
    let data = body(300_000, 21);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::Status(503)];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    fetch(&config(server.url(), &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let statuses: Vec<_> = server.requests().iter().map(|req| req.status).collect();
    assert_eq!(statuses, [503, 200]);
}

#[tokio::test]
async fn a_404_is_final_and_leaves_nothing() {
    let data = body(1000, 22);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let url = format!("http://{}/missing.bin", server.addr());

    let err = fetch(&config(url.clone(), &out, &data)).await.unwrap_err();

    assert!(
        matches!(&err, Error::HttpStatus { status: 404, url: u } if *u == url),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("404") && message.contains(&url),
        "{message}"
    );
    assert_eq!(server.requests().len(), 1, "no retries");
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn a_redirect_chain_is_followed() {
    let data = body(200_000, 23);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    fetch(&config(server.redirect_url(3), &out, &data))
        .await
        .unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let statuses: Vec<_> = server.requests().iter().map(|req| req.status).collect();
    assert_eq!(statuses, [302, 302, 302, 200]);
}

#[tokio::test]
async fn too_many_redirects_is_final() {
    let data = body(1000, 24);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    let url = server.loop_url();
    let err = fetch(&config(url.clone(), &out, &data)).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooManyRedirects { max: 10, url: u, .. } if *u == url),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(
        server.requests().len(),
        11,
        "one attempt: the request and 10 redirects"
    );

    let mut cfg = config(server.redirect_url(3), &out, &data);
    cfg.max_redirects = 2;
    let err = fetch(&cfg).await.unwrap_err();
    assert!(
        matches!(err, Error::TooManyRedirects { max: 2, .. }),
        "{err:?}"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn a_wrong_sha256_names_both_digests_and_leaves_nothing() {
    let data = body(400_000, 25);
    let other = body(400_000, 26);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    let err = fetch(&config(server.url(), &out, &other))
        .await
        .unwrap_err();

    let (expected, actual) = (sha256_hex(&other), sha256_hex(&data));
    match &err {
        Error::DigestMismatch {
            path,
            algorithm,
            expected: e,
            actual: a,
        } => {
            assert_eq!(path, &out);
            assert_eq!(*algorithm, "sha256");
            assert_eq!((e, a), (&expected, &actual));
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&expected) && message.contains(&actual) && message.contains(NAME),
        "{message}"
    );
    assert_eq!(server.requests().len(), 1, "a wrong digest is not retried");
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn a_wrong_md5_is_an_error_too() {
    let data = body(400_000, 27);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    let wrong = md5_hex(b"something else");
    cfg.expected.md5 = Some(wrong.clone());

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(&err, Error::DigestMismatch { algorithm: "md5", expected, actual, .. }
            if *expected == wrong && *actual == md5_hex(&data)),
        "{err:?}"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));

    cfg.expected.md5 = Some(md5_hex(&data).to_uppercase());
    fetch(&cfg).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[tokio::test]
async fn a_size_the_server_contradicts_is_final() {
    let data = body(100_000, 28);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.expected.size = Some(99_999);

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 99_999,
                actual: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn a_body_cut_short_on_every_attempt_exhausts_the_retries() {
    let data = body(500_000, 29);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(0); 20];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retries = 3;

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(&err, Error::RetriesExhausted { attempts: 4, source, .. }
            if matches!(**source, Error::Body { offset: 0, .. } | Error::Truncated { got: 0, .. })),
        "{err:?}"
    );
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(message.contains(&server.url()), "{message}");
    assert_eq!(server.requests().len(), 4);
    assert!(!out.exists());
}

#[tokio::test]
async fn restarting_without_getting_further_counts_as_no_progress() {
    // Every answer is the whole file (ranges ignored), cut off at the same byte: the first
    // attempt gains bytes, the three retries after it never get past them.
    let data = body(500_000, 30);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.ignore_range = true;
    serve.faults = vec![Fault::DropAfter(100_000); 20];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retries = 3;

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 4);
    assert!(!out.exists());
}

#[tokio::test]
async fn progress_resets_the_failure_count() {
    // Six drops in a row, each after new bytes: more failures than --retries 2, yet every one
    // makes progress, so the download completes.
    let data = body(700_000, 31);
    let mut serve = ServeConfig::new(NAME, data.clone());
    serve.faults = vec![Fault::DropAfter(100_000); 6];
    let server = Server::start(serve).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let mut cfg = config(server.url(), &out, &data);
    cfg.retries = 2;

    fetch(&cfg).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(file_requests(&server.requests(), NAME).len(), 7);
}

#[tokio::test]
async fn an_unreachable_server_exhausts_the_retries() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);
    let url = format!("http://127.0.0.1:{port}/{NAME}");
    let mut cfg = config(url.clone(), &out, b"x");
    cfg.retries = 2;

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(&err, Error::RetriesExhausted { attempts: 3, source, .. }
            if matches!(**source, Error::Request { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(listing(tmp.path()).is_empty());
}

#[tokio::test]
async fn invalid_options_fail_before_any_request() {
    let data = body(1000, 32);
    let server = Server::start(ServeConfig::new(NAME, data.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(NAME);

    let mut cfg = config(server.url(), &out, &data);
    cfg.expected.md5 = Some("not-hex".into());
    let err = fetch(&cfg).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --md5 \"not-hex\": expected 32 hex digits"
    );

    let mut cfg = config(server.url(), &out, &data);
    cfg.expected.sha256 = retrain_fetch::Sha256Pin::Full("abc".into());
    assert!(matches!(
        fetch(&cfg).await.unwrap_err(),
        Error::InvalidOption {
            option: "sha256",
            ..
        }
    ));

    let cfg = config("file:///etc/passwd", &out, &data);
    assert!(matches!(
        fetch(&cfg).await.unwrap_err(),
        Error::InvalidOption { option: "url", .. }
    ));

    assert!(server.requests().is_empty());
    assert!(listing(tmp.path()).is_empty());
}
