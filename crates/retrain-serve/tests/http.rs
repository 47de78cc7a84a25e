//! Plain HTTP behaviour: whole file, HEAD, ranges, If-Range, errors, the request log, shutdown.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use common::{get, pattern, request, send_raw};
use retrain_serve::{Config, DEFAULT_LAST_MODIFIED, RequestLog, Server};

const NAME: &str = "cifar-10-python.tar.gz";
const LEN: usize = 200_000;

fn server() -> (Server, Vec<u8>) {
    let body = pattern(LEN);
    let server = Server::start(Config::new(NAME, body.clone())).expect("starting the server");
    (server, body)
}

fn path() -> String {
    format!("/{NAME}")
}

#[test]
fn get_serves_the_whole_file_with_its_headers() {
    let (server, body) = server();
    assert_eq!(server.url(), format!("http://{}/{NAME}", server.addr()));
    assert!(server.addr().ip().is_loopback());
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    assert_eq!(resp.content_length(), LEN as u64);
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.header("last-modified"), Some(DEFAULT_LAST_MODIFIED));
    assert_eq!(resp.header("content-encoding"), None);
    let etag = resp.header("etag").expect("an ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 66,
        "{etag}"
    );
    // The tag is a digest of the body: the same for the same bytes.
    let other = Server::start(Config::new("other", body)).expect("starting a second server");
    assert_eq!(get(&other.url(), &[]).header("etag"), Some(etag));
}

#[test]
fn gzip_is_never_used() {
    let (server, body) = server();
    let resp = get(&server.url(), &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.body, body);
}

#[test]
fn head_sends_the_headers_of_get_without_a_body() {
    let (server, _) = server();
    let resp = request(server.addr(), "HEAD", &path(), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), LEN as u64);
    assert!(resp.body.is_empty());
    assert!(resp.header("etag").is_some());
}

#[test]
fn each_range_form_gets_its_bytes() {
    let (server, body) = server();
    let cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-70000", 1000, 70_000),
        ("bytes=150000-", 150_000, LEN - 1),
        ("bytes=-500", LEN - 500, LEN - 1),
        ("bytes=199999-999999999", LEN - 1, LEN - 1),
        ("bytes=-999999", 0, LEN - 1),
    ];
    for (range, start, end) in cases {
        let resp = get(&server.url(), &[("Range", range)]);
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{end}/{LEN}").as_str()),
            "{range}"
        );
        assert_eq!(resp.content_length(), (end - start + 1) as u64, "{range}");
        assert_eq!(resp.body, body[start..=end], "{range}");
    }
}

#[test]
fn unsatisfiable_ranges_get_416() {
    let (server, _) = server();
    for range in ["bytes=200000-", "bytes=300000-300010", "bytes=-0"] {
        let resp = get(&server.url(), &[("Range", range)]);
        assert_eq!(resp.status, 416, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes */{LEN}").as_str())
        );
        assert!(resp.body.is_empty());
    }
}

#[test]
fn unusable_ranges_get_the_whole_file() {
    let (server, body) = server();
    for range in ["bytes=0-1,5-9", "bytes=9-1", "lines=0-1", "bytes=x-"] {
        let resp = get(&server.url(), &[("Range", range)]);
        assert_eq!(resp.status, 200, "{range}");
        assert_eq!(resp.body, body, "{range}");
    }
}

#[test]
fn head_ignores_range() {
    let (server, _) = server();
    let resp = request(server.addr(), "HEAD", &path(), &[("Range", "bytes=0-9")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), LEN as u64);
}

#[test]
fn if_range_that_matches_keeps_the_range() {
    let (server, body) = server();
    let etag = get(&server.url(), &[])
        .header("etag")
        .expect("an ETag")
        .to_owned();
    for validator in [etag.as_str(), DEFAULT_LAST_MODIFIED] {
        let resp = get(
            &server.url(),
            &[("Range", "bytes=100-"), ("If-Range", validator)],
        );
        assert_eq!(resp.status, 206, "{validator}");
        assert_eq!(resp.body, body[100..], "{validator}");
    }
}

#[test]
fn if_range_that_does_not_match_gets_the_whole_file() {
    let (server, body) = server();
    let etag = get(&server.url(), &[])
        .header("etag")
        .expect("an ETag")
        .to_owned();
    let weak = format!("W/{etag}");
    for validator in [
        "\"something-else\"",
        weak.as_str(),
        "Sat, 06 Jun 2009 00:00:00 GMT",
    ] {
        let resp = get(
            &server.url(),
            &[("Range", "bytes=100-"), ("If-Range", validator)],
        );
        assert_eq!(resp.status, 200, "{validator}");
        assert_eq!(resp.header("content-range"), None);
        assert_eq!(resp.body, body, "{validator}");
    }
}

#[test]
fn a_changed_file_gets_a_new_etag_and_if_range_restarts() {
    let (server, _) = server();
    let old_etag = get(&server.url(), &[])
        .header("etag")
        .expect("an ETag")
        .to_owned();
    let new_body = pattern(1000).into_iter().rev().collect::<Vec<_>>();
    server.set_body(new_body.clone());
    let resp = get(
        &server.url(),
        &[("Range", "bytes=100-"), ("If-Range", &old_etag)],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, new_body);
    let new_etag = resp.header("etag").expect("an ETag");
    assert_ne!(new_etag, old_etag);
    let resp = get(
        &server.url(),
        &[("Range", "bytes=100-"), ("If-Range", new_etag)],
    );
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, new_body[100..]);
}

#[test]
fn explicit_validators_are_served() {
    let mut cfg = Config::new("f", b"0123456789".to_vec());
    cfg.etag = Some("v2".into());
    cfg.last_modified = Some("Mon, 01 Jan 2024 00:00:00 GMT".into());
    let server = Server::start(cfg).expect("starting the server");
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.header("etag"), Some("\"v2\""));
    assert_eq!(
        resp.header("last-modified"),
        Some("Mon, 01 Jan 2024 00:00:00 GMT")
    );
    let resp = get(
        &server.url(),
        &[("Range", "bytes=-3"), ("If-Range", "\"v2\"")],
    );
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, b"789");
}

#[test]
fn ignore_range_config_always_sends_the_whole_file() {
    let body = pattern(5000);
    let mut cfg = Config::new(NAME, body.clone());
    cfg.ignore_range = true;
    let server = Server::start(cfg).expect("starting the server");
    let resp = get(&server.url(), &[("Range", "bytes=10-20")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("accept-ranges"), Some("none"));
    assert_eq!(resp.body, body);
}

#[test]
fn an_empty_file_is_served_and_no_range_of_it_is_satisfiable() {
    let server = Server::start(Config::new("empty", Vec::new())).expect("starting the server");
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), 0);
    let resp = get(&server.url(), &[("Range", "bytes=0-")]);
    assert_eq!(resp.status, 416);
    assert_eq!(resp.header("content-range"), Some("bytes */0"));
}

#[test]
fn names_are_percent_encoded_in_urls() {
    let server =
        Server::start(Config::new("a b+c.bin", b"xyz".to_vec())).expect("starting the server");
    assert!(server.url().ends_with("/a%20b%2Bc.bin"), "{}", server.url());
    assert_eq!(get(&server.url(), &[]).body, b"xyz");
    // A query does not change what is served.
    assert_eq!(get(&format!("{}?x=1", server.url()), &[]).body, b"xyz");
}

#[test]
fn bad_names_are_rejected() {
    for name in ["", ".", "..", "a/b"] {
        let err = Server::start(Config::new(name, Vec::new())).expect_err(name);
        assert!(matches!(err, retrain_serve::Error::Name { .. }), "{err}");
    }
}

#[test]
fn other_paths_get_404_and_other_methods_405() {
    let (server, _) = server();
    for path in [
        "/",
        "/other",
        "/cifar-10-python.tar.gz.partial",
        "/_redirect/x",
    ] {
        assert_eq!(
            request(server.addr(), "GET", path, &[]).status,
            404,
            "{path}"
        );
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let resp = request(server.addr(), method, &path(), &[]);
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    }
    // HEAD of an error has the headers only.
    let resp = request(server.addr(), "HEAD", "/other", &[]);
    assert_eq!(resp.status, 404);
    assert!(resp.content_length() > 0);
    assert!(resp.body.is_empty());
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let (server, body) = server();
    let bad: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET /x HTTP/1.1 junk\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
        b"GET /cifar-10-python.tar.gz HTTP/1.1\r\nHost: x\r\n",
    ];
    for raw in bad {
        if raw.ends_with(b"\r\n\r\n") {
            let resp = send_raw(server.addr(), raw);
            assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(raw));
        } else {
            // A head cut short by the client closing its side.
            let mut stream = TcpStream::connect(server.addr()).expect("connecting");
            stream.write_all(raw).expect("writing");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("half-closing");
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).expect("reading");
            assert_eq!(common::parse(&bytes).status, 400);
        }
    }
    let mut huge = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(40_000, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(send_raw(server.addr(), &huge).status, 431);
    assert_eq!(get(&server.url(), &[]).body, body);
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 400, 400, 400, 400, 400, 431, 200]);
}

#[test]
fn connections_that_send_nothing_are_not_logged() {
    let (server, _) = server();
    drop(TcpStream::connect(server.addr()).expect("connecting"));
    assert_eq!(get(&server.url(), &[]).status, 200);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn the_log_records_each_request_in_order() {
    let (server, _) = server();
    get(
        &server.url(),
        &[("Range", "bytes=10-19"), ("If-Range", "\"x\"")],
    );
    get(&server.url(), &[("Range", "bytes=-5")]);
    request(server.addr(), "HEAD", &path(), &[]);
    get(&format!("http://{}/nope", server.addr()), &[]);
    let expected = [
        RequestLog {
            method: "GET".into(),
            path: path(),
            range: Some("bytes=10-19".into()),
            if_range: Some("\"x\"".into()),
            fault: None,
            status: 200,
            body_bytes: LEN as u64,
            dropped: false,
        },
        RequestLog {
            method: "GET".into(),
            path: path(),
            range: Some("bytes=-5".into()),
            if_range: None,
            fault: None,
            status: 206,
            body_bytes: 5,
            dropped: false,
        },
        RequestLog {
            method: "HEAD".into(),
            path: path(),
            range: None,
            if_range: None,
            fault: None,
            status: 200,
            body_bytes: 0,
            dropped: false,
        },
        RequestLog {
            method: "GET".into(),
            path: "/nope".into(),
            range: None,
            if_range: None,
            fault: None,
            status: 404,
            body_bytes: "not found\n".len() as u64,
            dropped: false,
        },
    ];
    assert_eq!(server.requests(), expected);
}

#[test]
fn many_clients_at_once_are_served() {
    let (server, body) = server();
    let url = server.url();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|idx| {
                let url = &url;
                scope.spawn(move || {
                    let start = idx * 1000;
                    let range = format!("bytes={start}-");
                    get(url, &[("Range", &range)]).body.len() == LEN - start
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().expect("a client thread"));
        }
    });
    assert_eq!(get(&server.url(), &[]).body, body);
}

#[test]
fn dropping_the_server_stops_it() {
    let (server, _) = server();
    let addr = server.addr();
    assert_eq!(get(&server.url(), &[]).status, 200);
    drop(server);
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(_) => {}
        Ok(mut stream) => {
            // Accepted by a backlog that no one serves any more: it must close, not answer.
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("setting a timeout");
            let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let mut buf = [0u8; 16];
            assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
        }
    }
}
