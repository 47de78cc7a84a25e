//! Reading and parsing an HTTP/1.x request head. Nothing here panics on what a client sends.

use std::fmt::Write as _;
use std::io::{self, Read};

/// The most a request head (request line and headers) may take.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// What reading a request head gave.
#[derive(Debug)]
pub(crate) enum Head {
    /// A complete head, up to and including the empty line that ends it.
    Complete(Vec<u8>),
    /// The client closed the connection before sending anything.
    Closed,
    /// The client closed the connection in the middle of the head.
    Truncated(Vec<u8>),
    /// The head grew past [`MAX_HEAD`] without ending.
    TooLarge,
}

/// Reads until the empty line that ends a request head. Bytes after it (a request body) may be
/// read too and are dropped: every response closes the connection.
pub(crate) fn read_head(reader: &mut impl Read) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(if head.is_empty() {
                Head::Closed
            } else {
                Head::Truncated(head)
            });
        }
        let searched = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head[searched..]) {
            head.truncate(searched + end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends in `bytes` (just past the empty line), accepting bare `\n` line ends.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(2)
        .enumerate()
        .find_map(|(idx, pair)| match pair {
            b"\n\n" => Some(idx + 2),
            b"\n\r" if bytes.get(idx + 2) == Some(&b'\n') => Some(idx + 3),
            _ => None,
        })
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target as sent, query included.
    pub(crate) target: String,
    /// Header fields in order, names as sent.
    pub(crate) headers: Vec<(String, String)>,
}

impl Request {
    /// The value of the first header field called `name` (compared case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The target's path: the target without its query.
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }
}

/// Parses a complete request head; the error says what is wrong with it.
pub(crate) fn parse(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not `METHOD TARGET VERSION`");
    };
    if !is_token(method) {
        return Err("method is not a token");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("request target is not an absolute path");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("version is not HTTP/1.1 or HTTP/1.0");
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err("folded header line");
        }
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        if !is_token(name) {
            return Err("header name is not a token");
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err("control character in a header value");
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    })
}

/// Method and target from a head that did not parse, as far as they can be made out, for the log.
pub(crate) fn guess_request_line(head: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(head);
    let line = text.trim_start().lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").chars().take(64).collect();
    let target = parts.next().unwrap_or("").chars().take(1024).collect();
    (method, target)
}

/// An RFC 9110 token: one or more of `!#$%&'*+-.^_`|~`, digits and letters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Decodes `%XX` escapes; `None` when an escape is malformed.
pub(crate) fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%' {
            let hex = bytes.get(idx + 1..idx + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            idx += 3;
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    Some(out)
}

/// Escapes every byte of `s` but RFC 3986's unreserved characters, for use as a path segment.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Head {
        read_head(&mut &bytes[..]).expect("reading from a slice")
    }

    #[test]
    fn reads_a_head_and_drops_what_follows() {
        let Head::Complete(head) = read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody") else {
            panic!("expected a complete head");
        };
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let Head::Complete(head) = read(b"GET / HTTP/1.1\nHost: x\n\nbody") else {
            panic!("expected a complete head");
        };
        assert_eq!(head, b"GET / HTTP/1.1\nHost: x\n\n");
    }

    #[test]
    fn reports_closed_truncated_and_oversized_heads() {
        assert!(matches!(read(b""), Head::Closed));
        assert!(matches!(read(b"GET / HTTP/1.1\r\n"), Head::Truncated(_)));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(read(&big), Head::TooLarge));
    }

    #[test]
    fn parses_a_request() {
        let req = parse(b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\nrange:  bytes=0-1 \r\n\r\n")
            .expect("a valid request");
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/a?b=c");
        assert_eq!(req.path(), "/a");
        assert_eq!(req.header("Range"), Some("bytes=0-1"));
        assert_eq!(req.header("if-range"), None);
    }

    #[test]
    fn rejects_malformed_requests() {
        for head in [
            &b"\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\x01\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(head).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn percent_coding_round_trips() {
        let name = "cifar 10/α.tar.gz";
        let encoded = percent_encode(name);
        assert_eq!(encoded, "cifar%2010%2F%CE%B1.tar.gz");
        assert_eq!(percent_decode(&encoded).as_deref(), Some(name.as_bytes()));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%+1"), None);
    }
}
