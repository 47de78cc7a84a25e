//! A loopback HTTP/1.1 server for one file, with `Range` support and injected faults: the server
//! behind the download tests and the offline demo.
//!
//! [`Server::start`] binds 127.0.0.1 (never another interface) and serves [`Config::body`] at
//! `/<name>` ([`Server::url`]) to GET and HEAD with `Content-Length`, `Accept-Ranges`, a strong
//! `ETag`, `Last-Modified`, one byte range per request (206, or 416 when unsatisfiable) and
//! `If-Range`. Every response says `Connection: close` and closes its connection; each connection
//! has its own thread. [`Config::faults`] make successive requests of the file misbehave, one fault
//! each: an error status, a connection dropped mid-body, a stall, a range ignored.
//! [`Server::redirect_url`] leads to the file through a chain of redirects and
//! [`Server::loop_url`] nowhere. [`Server::requests`] records what each request asked and got.
//!
//! ```
//! use retrain_serve::{Config, Fault, Server};
//!
//! let mut cfg = Config::new("data.bin", b"hello".to_vec());
//! cfg.faults = vec![Fault::Status(503), Fault::DropAfter(2)];
//! let server = Server::start(cfg)?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! assert!(server.url().ends_with("/data.bin"));
//! // The first GET of the file gets a 503, the second 2 bytes of 5, the rest the file.
//! # Ok::<(), retrain_serve::Error>(())
//! ```

mod range;
mod request;

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::range::Answer;
use crate::request::{Head, Request};

/// `Last-Modified` when [`Config::last_modified`] is `None`: the day CIFAR-10 was packed.
pub const DEFAULT_LAST_MODIFIED: &str = "Fri, 05 Jun 2009 00:00:00 GMT";

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to a client may block before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after responding, to read and discard what the client still sends, so that closing
/// the socket with unread input does not reset the connection before the client read the response.
const LINGER: Duration = Duration::from_secs(1);
/// Body bytes per write.
const CHUNK: usize = 64 * 1024;
/// Path prefix of the redirect chain: `/_redirect/<hops left>/<name>`.
const REDIRECT_PREFIX: &str = "/_redirect/";
/// Path prefix of the redirect loop: `/_loop/<name>`.
const LOOP_PREFIX: &str = "/_loop/";

/// Errors from configuring or starting a [`Server`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no file name, or not valid UTF-8", path.display())]
    FileName { path: PathBuf },
    #[error("file name {name:?} is not one path segment (empty, `.`, `..` or containing `/`)")]
    Name { name: String },
    #[error("{header} value {value:?} contains a control character")]
    HeaderValue { header: &'static str, value: String },
    #[error("fault status {status} is not a final HTTP status (200 to 599)")]
    FaultStatus { status: u16 },
    #[error("binding 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("starting the accept thread")]
    Spawn(#[source] io::Error),
}

/// What to serve, and how to misbehave.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file's bytes.
    pub body: Arc<[u8]>,
    /// The file's name: the one path segment it is served under, `/<name>` (percent-encoded in
    /// URLs as needed), e.g. `cifar-10-python.tar.gz`.
    pub name: String,
    /// Faults for successive GET and HEAD requests of the file, one per request in order; once they
    /// run out, requests are served normally. Redirects and errors take none.
    pub faults: Vec<Fault>,
    /// Ignore every `Range`: answer 200 with the whole file and advertise `Accept-Ranges: none`.
    pub ignore_range: bool,
    /// The `ETag`, quotes included (`"v2"`, or a weak `W/"v2"`, which never matches `If-Range`); a
    /// value without quotes is quoted. `None`: a strong tag, the SHA-256 of the body in hex.
    pub etag: Option<String>,
    /// The `Last-Modified` date, an HTTP-date; `None`: [`DEFAULT_LAST_MODIFIED`].
    pub last_modified: Option<String>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl Config {
    /// Serves `body` as `/<name>` on an ephemeral port, without faults.
    pub fn new(name: impl Into<String>, body: impl Into<Arc<[u8]>>) -> Self {
        Self {
            body: body.into(),
            name: name.into(),
            faults: Vec::new(),
            ignore_range: false,
            etag: None,
            last_modified: None,
            port: 0,
        }
    }

    /// Reads the file at `path` into memory and serves it under its own file name.
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| Error::FileName {
                path: path.to_owned(),
            })?;
        let body = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(name, body))
    }
}

/// A misbehaviour for one GET or HEAD of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (e.g. 500, 503) with a short text body and nothing else: no range, no
    /// `ETag`.
    Status(u16),
    /// Send the headers of the normal response (with its full `Content-Length`), then only this many
    /// body bytes, then close the connection. A client sees the stream end early.
    DropAfter(u64),
    /// Send `after` body bytes, wait `pause`, then send the rest. Stopping the server ends the wait
    /// and the connection.
    Stall { after: u64, pause: Duration },
    /// Answer 200 with the whole file even if a range was asked.
    IgnoreRange,
    /// Serve normally: a placeholder that puts a later fault later in the sequence.
    None,
}

/// One request the server saw and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// The method as sent; empty when the request line could not be read.
    pub method: String,
    /// The request target as sent (path and query); empty when it could not be read.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any.
    pub if_range: Option<String>,
    /// The fault this request took from [`Config::faults`], if any.
    pub fault: Option<Fault>,
    /// The status answered.
    pub status: u16,
    /// Body bytes written to the connection (none for HEAD).
    pub body_bytes: u64,
    /// Whether the connection closed before the whole body was sent: a [`Fault::DropAfter`], a
    /// client that went away, or the server stopping during a stall.
    pub dropped: bool,
}

/// A running server. Dropping it closes the listening socket (new connections are refused) after
/// the accept thread has stopped; responses under way still finish, but a [`Fault::Stall`] in its
/// pause ends its connection instead.
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds 127.0.0.1:[`Config::port`] and starts serving on a background thread.
    pub fn start(cfg: Config) -> Result<Self, Error> {
        if cfg.name.is_empty() || cfg.name == "." || cfg.name == ".." || cfg.name.contains('/') {
            return Err(Error::Name { name: cfg.name });
        }
        if let Some(status) = cfg.faults.iter().find_map(|fault| match fault {
            Fault::Status(status) if !(200..=599).contains(status) => Some(*status),
            _ => None,
        }) {
            return Err(Error::FaultStatus { status });
        }
        let etag = match cfg.etag {
            Some(etag) => header_value("ETag", quote_etag(etag))?,
            None => etag_of(&cfg.body),
        };
        let last_modified = header_value(
            "Last-Modified",
            cfg.last_modified
                .unwrap_or_else(|| DEFAULT_LAST_MODIFIED.to_owned()),
        )?;
        let bind = |source| Error::Bind {
            port: cfg.port,
            source,
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, cfg.port)).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let shared = Arc::new(Shared {
            addr,
            name: cfg.name,
            ignore_range: cfg.ignore_range,
            file: RwLock::new(File {
                body: cfg.body,
                etag,
                last_modified,
            }),
            faults: Mutex::new(cfg.faults.into()),
            log: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let accept = thread::Builder::new()
            .name("retrain-serve-accept".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&shared, &listener)
            })
            .map_err(Error::Spawn)?;
        debug!(url = %shared.url(), "serving");
        Ok(Self {
            shared,
            accept: Some(accept),
        })
    }

    /// The address the server listens on, 127.0.0.1 and a port.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The file's URL, `http://127.0.0.1:PORT/<name>`.
    pub fn url(&self) -> String {
        self.shared.url()
    }

    /// A URL that reaches [`Self::url`] after `hops` 302 redirects (absolute `Location`s); with 0
    /// hops, the file's URL itself.
    pub fn redirect_url(&self, hops: usize) -> String {
        self.shared.redirect_url(hops)
    }

    /// A URL that answers 302 with itself as `Location`, forever.
    pub fn loop_url(&self) -> String {
        self.shared.loop_url()
    }

    /// Every request seen so far, in the order they arrived. A request's entry is there before its
    /// response is sent, with the status and body size planned; it changes only when the client
    /// goes away or the server stops mid-response.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.log).clone()
    }

    /// Replaces the file's bytes, as if it changed on the server. The `ETag` becomes the strong tag
    /// derived from the new bytes (an explicit [`Config::etag`] is dropped); `Last-Modified` stays.
    pub fn set_body(&self, body: impl Into<Arc<[u8]>>) {
        let body = body.into();
        let mut file = self
            .shared
            .file
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        file.etag = etag_of(&body);
        file.body = body;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop, which sees the flag and returns, closing the listener.
        let woken = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            match woken {
                Ok(_) => {
                    if accept.join().is_err() {
                        warn!("the accept thread panicked");
                    }
                }
                Err(e) => warn!(error = %e, "could not wake the accept thread; leaving it"),
            }
        }
    }
}

/// The file as currently served.
#[derive(Clone)]
struct File {
    body: Arc<[u8]>,
    etag: String,
    last_modified: String,
}

/// What the accept loop and the connection threads share.
struct Shared {
    addr: SocketAddr,
    name: String,
    ignore_range: bool,
    file: RwLock<File>,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<RequestLog>>,
    stopping: AtomicBool,
}

impl Shared {
    fn url(&self) -> String {
        format!(
            "http://{}/{}",
            self.addr,
            request::percent_encode(&self.name)
        )
    }

    fn redirect_url(&self, hops: usize) -> String {
        if hops == 0 {
            return self.url();
        }
        format!(
            "http://{}{REDIRECT_PREFIX}{hops}/{}",
            self.addr,
            request::percent_encode(&self.name)
        )
    }

    fn loop_url(&self) -> String {
        format!(
            "http://{}{LOOP_PREFIX}{}",
            self.addr,
            request::percent_encode(&self.name)
        )
    }

    /// Decides the answer to a well-formed request.
    fn route(&self, req: &Request) -> Reply {
        let head_only = req.method == "HEAD";
        let mut reply = match self.resource(req.path()) {
            Resource::Unknown => Reply::text(404, "not found\n"),
            _ if !head_only && req.method != "GET" => Reply::method_not_allowed(),
            Resource::File => {
                let fault = lock(&self.faults).pop_front();
                self.file_reply(req, fault, head_only)
            }
            Resource::Redirect { hops } => {
                Reply::redirect(self.redirect_url(hops.saturating_sub(1)))
            }
            Resource::Loop => Reply::redirect(self.loop_url()),
        };
        reply.head_only = head_only;
        reply
    }

    /// What a request path names.
    fn resource(&self, path: &str) -> Resource {
        if request::percent_decode(path)
            .is_some_and(|p| p.strip_prefix(b"/") == Some(self.name.as_bytes()))
        {
            Resource::File
        } else if let Some(rest) = path.strip_prefix(REDIRECT_PREFIX) {
            match rest.split('/').next().and_then(|n| n.parse().ok()) {
                Some(hops) => Resource::Redirect { hops },
                None => Resource::Unknown,
            }
        } else if path.starts_with(LOOP_PREFIX) {
            Resource::Loop
        } else {
            Resource::Unknown
        }
    }

    /// The answer to a GET or HEAD of the file, given the fault it took.
    fn file_reply(&self, req: &Request, fault: Option<Fault>, head_only: bool) -> Reply {
        if let Some(Fault::Status(status)) = fault {
            let mut reply = Reply::text(status, "injected fault\n");
            reply.fault = fault;
            return reply;
        }
        let file = self
            .file
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let total = file.body.len() as u64;
        let ranged = !head_only && !self.ignore_range && fault != Some(Fault::IgnoreRange);
        let answer = match req.header("range") {
            Some(range) if ranged => {
                let current = req.header("if-range").is_none_or(|value| {
                    range::if_range_matches(value, &file.etag, &file.last_modified)
                });
                if current {
                    range::answer(range, total)
                } else {
                    Answer::Whole
                }
            }
            _ => Answer::Whole,
        };
        let accept_ranges = if self.ignore_range { "none" } else { "bytes" };
        let mut headers = vec![
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Accept-Ranges", accept_ranges.to_owned()),
            ("ETag", file.etag),
            ("Last-Modified", file.last_modified),
        ];
        let (status, span) = match answer {
            Answer::Whole => (200, 0..file.body.len()),
            Answer::Part { start, end } => {
                headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
                // `end < total`, the length of a slice in memory: both fit in usize.
                (206, start as usize..end as usize + 1)
            }
            Answer::Unsatisfiable => {
                headers.push(("Content-Range", format!("bytes */{total}")));
                (416, 0..0)
            }
        };
        let (drop_after, stall) = match &fault {
            Some(Fault::DropAfter(n)) => (Some(*n), None),
            Some(Fault::Stall { after, pause }) => (None, Some((*after, *pause))),
            _ => (None, None),
        };
        Reply {
            status,
            headers,
            body: file.body,
            span,
            head_only,
            fault,
            drop_after,
            stall,
        }
    }
}

/// What a request path names.
enum Resource {
    /// The file, `/<name>`.
    File,
    /// A redirect with `hops` redirects left to the file, `/_redirect/<hops>/<name>`.
    Redirect {
        hops: usize,
    },
    /// The redirect loop, `/_loop/<name>`.
    Loop,
    Unknown,
}

/// A response, decided before any byte of it is written.
struct Reply {
    status: u16,
    /// Headers besides `Content-Length`, `Connection` and `Server`.
    headers: Vec<(&'static str, String)>,
    body: Arc<[u8]>,
    /// The part of `body` that is the response body.
    span: std::ops::Range<usize>,
    /// HEAD: the headers of the GET response, no body.
    head_only: bool,
    fault: Option<Fault>,
    drop_after: Option<u64>,
    stall: Option<(u64, Duration)>,
}

impl Reply {
    fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".to_owned())],
            body: Arc::from(text.as_bytes()),
            span: 0..text.len(),
            head_only: false,
            fault: None,
            drop_after: None,
            stall: None,
        }
    }

    fn method_not_allowed() -> Self {
        let mut reply = Self::text(405, "only GET and HEAD are served\n");
        reply.headers.push(("Allow", "GET, HEAD".to_owned()));
        reply
    }

    fn redirect(location: String) -> Self {
        let mut reply = Self::text(302, "redirecting\n");
        reply.headers.push(("Location", location));
        reply
    }

    /// The status line and headers, with the empty line that ends them.
    fn head(&self) -> String {
        // Writing to a String cannot fail.
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\nServer: retrain-serve\r\n\r\n",
            self.span.len()
        );
        head
    }

    /// How many body bytes the reply means to send.
    fn planned_body_bytes(&self) -> u64 {
        if self.head_only {
            return 0;
        }
        let len = self.span.len() as u64;
        self.drop_after.map_or(len, |n| n.min(len))
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("retrain-serve-conn".into())
                    .spawn(move || serve_connection(&shared, stream));
                if let Err(e) = spawned {
                    warn!(error = %e, "no thread for a connection; closing it");
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!(error = %e, "accepting a connection");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    debug!(addr = %shared.addr, "stopped");
}

/// Reads one request, answers it, closes the connection.
fn serve_connection(shared: &Shared, mut stream: TcpStream) {
    // Best effort: without them the connection still works, only slower or less bounded.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (mut entry, reply) = match request::read_head(&mut stream) {
        Ok(Head::Complete(head)) => match request::parse(&head) {
            Ok(req) => {
                let reply = shared.route(&req);
                let entry = RequestLog {
                    range: req.header("range").map(str::to_owned),
                    if_range: req.header("if-range").map(str::to_owned),
                    method: req.method,
                    path: req.target,
                    fault: None,
                    status: 0,
                    body_bytes: 0,
                    dropped: false,
                };
                (entry, reply)
            }
            Err(reason) => bad_request(&head, 400, &format!("bad request: {reason}\n")),
        },
        Ok(Head::Truncated(head)) => bad_request(&head, 400, "bad request: truncated head\n"),
        Ok(Head::TooLarge) => bad_request(&[], 431, "request head over 16 KiB\n"),
        Ok(Head::Closed) => return,
        Err(e) => {
            debug!(error = %e, "reading a request head");
            return;
        }
    };
    entry.fault.clone_from(&reply.fault);
    entry.status = reply.status;
    entry.body_bytes = reply.planned_body_bytes();
    entry.dropped = entry.body_bytes < reply.span.len() as u64 && !reply.head_only;
    let idx = {
        let mut log = lock(&shared.log);
        log.push(entry.clone());
        log.len() - 1
    };
    let (sent, result) = send(&mut stream, &reply, &shared.stopping);
    if let Err(e) = &result {
        debug!(error = %e, "writing a response");
        let mut log = lock(&shared.log);
        if let Some(logged) = log.get_mut(idx) {
            logged.body_bytes = sent;
            logged.dropped = true;
        }
        entry.body_bytes = sent;
        entry.dropped = true;
    }
    debug!(
        method = %entry.method,
        path = %entry.path,
        range = ?entry.range,
        if_range = ?entry.if_range,
        fault = ?entry.fault,
        status = entry.status,
        body_bytes = entry.body_bytes,
        dropped = entry.dropped,
        "request"
    );
    if result.is_ok() {
        linger(&mut stream);
    }
}

/// The log entry and reply for a request that could not be read.
fn bad_request(head: &[u8], status: u16, text: &str) -> (RequestLog, Reply) {
    let (method, path) = request::guess_request_line(head);
    let entry = RequestLog {
        method,
        path,
        range: None,
        if_range: None,
        fault: None,
        status: 0,
        body_bytes: 0,
        dropped: false,
    };
    (entry, Reply::text(status, text))
}

/// Writes `reply`, applying its fault. Returns the body bytes written (counting those handed to
/// the socket, as far as they are known) and whether all went out.
fn send(stream: &mut TcpStream, reply: &Reply, stopping: &AtomicBool) -> (u64, io::Result<()>) {
    let body = if reply.head_only {
        &[][..]
    } else {
        &reply.body[reply.span.clone()]
    };
    // Both are at most `body.len()`, so they fit in usize.
    let limit = reply
        .drop_after
        .map_or(body.len(), |n| n.min(body.len() as u64) as usize);
    let stall = reply
        .stall
        .map(|(after, pause)| (after.min(limit as u64) as usize, pause));
    let mut sent = 0u64;
    let mut out = BufWriter::with_capacity(CHUNK, stream);
    let result = (|| {
        out.write_all(reply.head().as_bytes())?;
        let (before, after) = body[..limit].split_at(stall.map_or(0, |(at, _)| at));
        for chunk in before.chunks(CHUNK) {
            out.write_all(chunk)?;
            sent += chunk.len() as u64;
        }
        if let Some((_, pause)) = stall {
            out.flush()?;
            if !wait(pause, stopping) {
                return Err(io::Error::other("the server stopped during a stall"));
            }
        }
        for chunk in after.chunks(CHUNK) {
            out.write_all(chunk)?;
            sent += chunk.len() as u64;
        }
        out.flush()
    })();
    (sent, result)
}

/// Sleeps for `pause` unless the server stops first; false if it did.
fn wait(pause: Duration, stopping: &AtomicBool) -> bool {
    let deadline = Instant::now() + pause;
    loop {
        if stopping.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Ends the response, then reads and drops what the client still sends until it closes (for at
/// most [`LINGER`]): closing a socket with unread input would reset the connection, and a reset
/// can destroy response bytes the client has not read yet.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The reason phrase for a status code (clients ignore it; it is for people reading traces).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected Status",
    }
}

/// The default `ETag`: the body's SHA-256 in hex, quoted (a strong tag).
fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(body)))
}

/// Quotes an entity tag given without quotes.
fn quote_etag(etag: String) -> String {
    if etag.starts_with('"') || etag.starts_with("W/\"") {
        etag
    } else {
        format!("\"{etag}\"")
    }
}

/// Checks that `value` can go in a header unchanged.
fn header_value(header: &'static str, value: String) -> Result<String, Error> {
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::HeaderValue { header, value });
    }
    Ok(value)
}

/// Locks a mutex, carrying on after a panic elsewhere: the data (a log, a queue) stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
