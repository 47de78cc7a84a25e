//! Injected faults: error statuses, dropped connections, stalls, ignored ranges; and clients that
//! go away.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{get, pattern, request};
use retrain_serve::{Config, Fault, Server};

const NAME: &str = "data.bin";
const LEN: usize = 300_000;

fn server(faults: Vec<Fault>) -> (Server, Vec<u8>) {
    let body = pattern(LEN);
    let mut cfg = Config::new(NAME, body.clone());
    cfg.faults = faults;
    (Server::start(cfg).expect("starting the server"), body)
}

#[test]
fn status_faults_come_first_then_the_file() {
    let (server, body) = server(vec![Fault::Status(503), Fault::Status(500)]);
    let first = get(&server.url(), &[]);
    assert_eq!(first.status, 503);
    assert_eq!(first.header("etag"), None);
    assert_eq!(first.header("accept-ranges"), None);
    assert_eq!(first.header("connection"), Some("close"));
    assert_eq!(first.body.len() as u64, first.content_length());
    assert_eq!(get(&server.url(), &[("Range", "bytes=0-9")]).status, 500);
    let third = get(&server.url(), &[]);
    assert_eq!(third.status, 200);
    assert_eq!(third.body, body);
    let faults: Vec<_> = server.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [Some(Fault::Status(503)), Some(Fault::Status(500)), None]
    );
}

#[test]
fn status_faults_outside_200_to_599_are_rejected() {
    for status in [0, 101, 600] {
        let mut cfg = Config::new(NAME, Vec::new());
        cfg.faults = vec![Fault::Status(status)];
        let err = Server::start(cfg).expect_err("an invalid status");
        assert!(
            matches!(err, retrain_serve::Error::FaultStatus { status: s } if s == status),
            "{err}"
        );
    }
}

#[test]
fn drop_after_sends_exactly_n_body_bytes_then_closes() {
    let (server, body) = server(vec![Fault::DropAfter(1000), Fault::DropAfter(70_000)]);
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), LEN as u64);
    assert_eq!(resp.body, body[..1000]);
    // With a range, the headers are those of the 206 and the cut counts from the range's start.
    let resp = get(&server.url(), &[("Range", "bytes=100000-")]);
    assert_eq!(resp.status, 206);
    assert_eq!(resp.content_length(), (LEN - 100_000) as u64);
    assert_eq!(resp.body, body[100_000..170_000]);
    let log = server.requests();
    assert_eq!((log[0].body_bytes, log[0].dropped), (1000, true));
    assert_eq!((log[1].body_bytes, log[1].dropped), (70_000, true));
    // The faults are used up: a resume now gets the rest.
    let resp = get(&server.url(), &[("Range", "bytes=170000-")]);
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, body[170_000..]);
}

#[test]
fn drop_after_past_the_end_sends_everything() {
    let (server, body) = server(vec![Fault::DropAfter(10 * LEN as u64)]);
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.body, body);
    assert!(!server.requests()[0].dropped);
}

#[test]
fn drop_after_zero_sends_only_the_headers() {
    let (server, _) = server(vec![Fault::DropAfter(0)]);
    let resp = get(&server.url(), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), LEN as u64);
    assert!(resp.body.is_empty());
}

#[test]
fn stall_pauses_then_finishes_the_response() {
    let pause = Duration::from_millis(400);
    let (server, body) = server(vec![Fault::Stall { after: 5000, pause }]);
    let started = Instant::now();
    let resp = get(&server.url(), &[]);
    assert!(started.elapsed() >= pause / 2, "{:?}", started.elapsed());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    assert!(!server.requests()[0].dropped);
}

#[test]
fn stall_sends_the_first_bytes_before_pausing() {
    let pause = Duration::from_secs(3);
    let (server, body) = server(vec![Fault::Stall { after: 100, pause }]);
    let mut stream = TcpStream::connect(server.addr()).expect("connecting");
    stream
        .write_all(format!("GET /{NAME} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("writing");
    // Read until the head and the first 100 body bytes are in: they come before the pause ends.
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("reading");
        assert!(n > 0, "closed early");
        bytes.extend_from_slice(&buf[..n]);
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n")
            && bytes.len() >= end + 4 + 100
        {
            assert_eq!(bytes[end + 4..], body[..100]);
            break;
        }
    }
    assert!(started.elapsed() < pause, "{:?}", started.elapsed());
    // Stopping the server ends the pause, and the connection, early.
    drop(server);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.len() < LEN - 100);
}

#[test]
fn ignore_range_fault_answers_one_request_with_the_whole_file() {
    let (server, body) = server(vec![Fault::IgnoreRange]);
    let resp = get(&server.url(), &[("Range", "bytes=10-19")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-range"), None);
    assert_eq!(resp.body, body);
    let resp = get(&server.url(), &[("Range", "bytes=10-19")]);
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, body[10..20]);
}

#[test]
fn none_places_a_fault_later_in_the_sequence() {
    let (server, body) = server(vec![Fault::None, Fault::None, Fault::Status(502)]);
    assert_eq!(get(&server.url(), &[]).body, body);
    assert_eq!(get(&server.url(), &[]).body, body);
    assert_eq!(get(&server.url(), &[]).status, 502);
    assert_eq!(get(&server.url(), &[]).status, 200);
}

#[test]
fn only_requests_of_the_file_take_faults() {
    let (server, _) = server(vec![Fault::Status(503)]);
    assert_eq!(get(&server.redirect_url(1), &[]).status, 302);
    assert_eq!(request(server.addr(), "GET", "/elsewhere", &[]).status, 404);
    assert_eq!(
        request(server.addr(), "POST", &format!("/{NAME}"), &[]).status,
        405
    );
    // HEAD of the file takes one, like GET.
    let resp = request(server.addr(), "HEAD", &format!("/{NAME}"), &[]);
    assert_eq!(resp.status, 503);
    assert!(resp.body.is_empty());
    assert_eq!(get(&server.url(), &[]).status, 200);
}

#[test]
fn a_client_that_goes_away_mid_response_does_not_hurt_the_server() {
    // Bigger than loopback socket buffers, so the server is still writing when the client leaves.
    let len = 64 << 20;
    let body = pattern(len);
    let server = Server::start(Config::new(NAME, body.clone())).expect("starting the server");
    {
        let mut stream = TcpStream::connect(server.addr()).expect("connecting");
        stream
            .write_all(format!("GET /{NAME} HTTP/1.1\r\n\r\n").as_bytes())
            .expect("writing");
        let mut buf = [0u8; 1024];
        stream.read_exact(&mut buf).expect("reading a little");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.requests()[0].dropped {
        assert!(Instant::now() < deadline, "the server never noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.requests()[0].body_bytes < len as u64);
    let resp = get(&server.url(), &[("Range", "bytes=-10")]);
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, body[len - 10..]);
}
