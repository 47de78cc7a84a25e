//! Answers `retrain-serve` never gives: `206`s that do not fit the part file. A scripted server
//! answers each connection with the next canned response.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{body, config, fetch, listing};
use retrain_fetch::Error;

/// Serves `responses` on 127.0.0.1, one per connection, in order; returns the URL and a handle
/// yielding each request head.
fn scripted(responses: Vec<Vec<u8>>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/data.bin", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut heads = Vec::new();
        for response in responses {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            heads.push(String::from_utf8_lossy(&head).into_owned());
            // The client may hang up first (a response it rejects); that is fine.
            let _ = stream.write_all(&response);
            let _ = stream.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
        heads
    });
    (url, handle)
}

/// The request heads, once the server is done. Awaited, not joined in place: the client's
/// connection tasks run on this runtime and must get to close their sockets.
async fn joined(server: JoinHandle<Vec<String>>) -> Vec<String> {
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap()
}

fn response(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 {status}\r\nConnection: close\r\nETag: \"v1\"\r\n");
    for header in headers {
        bytes.push_str(header);
        bytes.push_str("\r\n");
    }
    bytes.push_str("\r\n");
    let mut bytes = bytes.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A `200` announcing the whole file but cut off after `n` bytes.
fn cut_off(data: &[u8], n: usize) -> Vec<u8> {
    response(
        "200 OK",
        &[format!("Content-Length: {}", data.len())],
        &data[..n],
    )
}

fn partial(data: &[u8], start: usize, claimed_total: usize) -> Vec<u8> {
    let end = data.len() - 1;
    response(
        "206 Partial Content",
        &[
            format!("Content-Length: {}", data.len() - start),
            format!("Content-Range: bytes {start}-{end}/{claimed_total}"),
        ],
        &data[start..],
    )
}

#[tokio::test]
async fn a_206_that_does_not_fit_is_never_spliced() {
    let data = body(200_000, 60);
    let (url, server) = scripted(vec![
        cut_off(&data, 50_000),
        // Starts at 40,000, not at the 50,000 asked for.
        partial(&data, 40_000, data.len()),
        cut_off(&data, 50_000),
        // Starts right, but the file now has another size.
        partial(&data, 50_000, data.len() + 1),
        cut_off(&data, 50_000),
        // Fits.
        partial(&data, 50_000, data.len()),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data.bin");

    fetch(&config(url, &out, &data)).await.unwrap();

    assert_eq!(std::fs::read(&out).unwrap(), data);
    let heads = joined(server).await;
    let ranges: Vec<Option<&str>> = heads
        .iter()
        .map(|head| {
            head.lines().find_map(|line| {
                line.strip_prefix("range: ")
                    .or(line.strip_prefix("Range: "))
            })
        })
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=50000-"),
            None,
            Some("bytes=50000-"),
            None,
            Some("bytes=50000-")
        ]
    );
    let if_range = heads[5]
        .lines()
        .any(|line| line.eq_ignore_ascii_case("if-range: \"v1\""));
    assert!(if_range, "{}", heads[5]);
    assert_eq!(listing(tmp.path()), ["data.bin", "manifest.json"]);
}

#[tokio::test]
async fn a_206_to_a_request_that_asked_for_everything_must_start_at_zero() {
    let data = body(10_000, 61);
    let (url, server) = scripted(vec![partial(&data, 100, data.len())]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data.bin");
    let mut cfg = config(url, &out, &data);
    cfg.retries = 0;

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(&err, Error::RetriesExhausted { source, .. }
            if matches!(**source, Error::BadRange { .. })),
        "{err:?}"
    );
    joined(server).await;
    assert!(!out.exists());
}

#[tokio::test]
async fn a_body_without_a_length_may_not_outgrow_the_expected_size() {
    let data = body(10_000, 62);
    // No Content-Length: the body ends when the connection closes.
    let (url, server) = scripted(vec![response("200 OK", &[], &data)]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data.bin");
    let mut cfg = config(url, &out, &data);
    cfg.expected.size = Some(9_000);

    let err = fetch(&cfg).await.unwrap_err();

    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 9_000,
                ..
            }
        ),
        "{err:?}"
    );
    joined(server).await;
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn a_body_without_a_length_is_verified_by_its_digest() {
    let data = body(10_000, 63);
    let (url, server) = scripted(vec![response("200 OK", &[], &data)]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data.bin");

    let manifest = fetch(&config(url, &out, &data)).await.unwrap();

    assert_eq!(manifest.outputs["data.bin"].bytes, 10_000);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    joined(server).await;
}
