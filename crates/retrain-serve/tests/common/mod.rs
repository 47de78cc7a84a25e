//! A tiny HTTP/1.1 client for the tests: write a request, read until the server closes the
//! connection, split status, headers and body. The body is everything after the head, whatever
//! `Content-Length` says, so short responses show.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response as read off the wire.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, compared case-insensitively.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// `Content-Length` as a number.
    pub(crate) fn content_length(&self) -> u64 {
        self.header("content-length")
            .expect("a Content-Length header")
            .parse()
            .expect("a numeric Content-Length")
    }
}

/// Writes `raw` to `addr` and reads the response until end of stream.
pub(crate) fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connecting to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("setting a read timeout");
    stream.write_all(raw).expect("writing the request");
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("reading the response");
    parse(&bytes)
}

/// Sends `METHOD path` with `headers` (and `Host`) to `addr`.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes())
}

/// GETs an `http://127.0.0.1:PORT/path` URL.
pub(crate) fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    let (addr, path) = split_url(url);
    request(addr, "GET", &path, headers)
}

/// Splits an `http://IP:PORT/path` URL into address and path.
pub(crate) fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = authority.parse().expect("an IP:PORT authority");
    let path = if path.is_empty() { "/" } else { path };
    (addr, path.to_owned())
}

/// Parses a complete response.
pub(crate) fn parse(bytes: &[u8]) -> Response {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..end]).expect("a UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line");
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// Bytes that differ from one position to the next, over more than one write chunk.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|idx| (idx * 7 + idx / 251) as u8).collect()
}
