//! The transfer: requests, retries with backoff, resumption with `Range`/`If-Range`, and the
//! answers that make a part file start again from byte 0.

use futures_util::StreamExt as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, redirect};
use retrain_stage::Reporter;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::part::{Hashes, Part, Sidecar};
use crate::{Config, Error, USER_AGENT, chain, retry_delay};

/// Downloads `cfg.url` into `FILE.part`, verifies it and renames it to `cfg.out`.
pub(crate) async fn download(
    cfg: &Config,
    rep: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<Hashes, Error> {
    let client = client(cfg)?;
    let mut part = Part::open(cfg, cancel).await?;
    if part.len() == 0 {
        info!("downloading");
    }
    let mut progress = Progress {
        rep,
        what: cfg.out.file_name().map_or_else(
            || cfg.url.clone(),
            |name| name.to_string_lossy().into_owned(),
        ),
        shown: false,
    };
    let transferred = transfer(cfg, &client, &mut part, &mut progress, cancel).await;
    progress.end();
    if let Err(e) = transferred {
        if matches!(e, Error::SizeMismatch { .. }) {
            part.discard(&cfg.out).await?;
        }
        return Err(e);
    }
    let hashes = part.finish().await?;
    if let Err(e) = crate::verify(cfg, &hashes) {
        warn!(part = %part.path().display(), "the download fails verification; deleting it");
        part.discard(&cfg.out).await?;
        return Err(e);
    }
    part.commit(&cfg.out).await?;
    info!(sha256 = %hashes.sha256, bytes = hashes.bytes, "downloaded and verified");
    Ok(hashes)
}

/// The HTTP client: bounded redirects, per-read and connect timeouts (no total timeout, which
/// would cut off a slow but healthy transfer), no content decoding.
fn client(cfg: &Config) -> Result<Client, Error> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let mut builder = Client::builder()
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .redirect(redirect::Policy::limited(cfg.max_redirects))
        .read_timeout(cfg.read_timeout)
        .connect_timeout(cfg.connect_timeout);
    if is_loopback(&cfg.url) {
        // A proxy from the environment cannot reach this machine's loopback server.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|source| Error::Client {
        url: cfg.url.clone(),
        source,
    })
}

/// Whether `url` names this machine (127.0.0.0/8, ::1 or localhost).
fn is_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Attempts until the part is complete, a failure is final, or `cfg.retries` failures in a row
/// brought no new bytes.
async fn transfer(
    cfg: &Config,
    client: &Client,
    part: &mut Part,
    progress: &mut Progress<'_>,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let mut failures = 0u32;
    let mut high_water = part.len();
    loop {
        let attempted = attempt(cfg, client, part, progress, cancel).await;
        // Whatever happened, the file holds exactly the hashed bytes from here on.
        part.flush().await?;
        let err = match attempted {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        if part.len() > high_water {
            high_water = part.len();
            failures = 0;
        }
        failures += 1;
        if failures > cfg.retries {
            return Err(Error::RetriesExhausted {
                url: cfg.url.clone(),
                attempts: failures,
                source: Box::new(err),
            });
        }
        let delay = retry_delay(cfg.retry_delay, failures);
        warn!(
            error = %chain(&err),
            have = part.len(),
            failures,
            delay_ms = delay.as_millis() as u64,
            "attempt failed; retrying"
        );
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled(cfg, part)),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One request: resumes from the part's end when it has bytes, and appends the body.
async fn attempt(
    cfg: &Config,
    client: &Client,
    part: &mut Part,
    progress: &mut Progress<'_>,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let offset = part.len();
    let mut request = client.get(&cfg.url);
    if offset > 0 {
        request = request.header(header::RANGE, format!("bytes={offset}-"));
        if let Some(validator) = part.meta().if_range() {
            request = request.header(header::IF_RANGE, validator);
        }
    }
    debug!(offset, if_range = ?part.meta().if_range(), "requesting");
    let response = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(cancelled(cfg, part)),
        response = request.send() => response.map_err(|e| request_error(cfg, e))?,
    };
    let status = response.status().as_u16();
    let headers = response.headers();
    debug!(status, final_url = %response.url(), "response");
    match status {
        200 => {
            let total = content_length(headers);
            if let (Some(expected), Some(total)) = (cfg.expected.size, total)
                && expected != total
            {
                return Err(Error::SizeMismatch {
                    path: cfg.out.clone(),
                    url: cfg.url.clone(),
                    expected,
                    actual: total,
                });
            }
            if offset > 0 {
                info!(
                    offset,
                    "the server sent the whole file, not the range; starting again from byte 0"
                );
            }
            part.restart(sidecar(cfg, headers, total)).await?;
            progress.begin(total.or(cfg.expected.size), 0);
        }
        206 => {
            let known_total = part.meta().total.or(cfg.expected.size);
            let problem = match content_range(headers) {
                Some(ContentRange::Bytes { start, end, total }) => {
                    if start != offset {
                        Some(format!(
                            "asked for bytes {offset}-, got bytes {start}-{end}/{}",
                            total.map_or("*".to_owned(), |t| t.to_string())
                        ))
                    } else if let (Some(known), Some(total)) = (known_total, total)
                        && known != total
                    {
                        Some(format!("the total size changed from {known} to {total}"))
                    } else if end < start || total.is_some_and(|total| end >= total) {
                        Some(format!("an invalid Content-Range bytes {start}-{end}"))
                    } else if let (Some(ours), Some(theirs)) = (
                        part.meta().strong_etag(),
                        header_str(headers, header::ETAG).filter(|tag| tag.starts_with('"')),
                    ) && ours != theirs
                    {
                        Some(format!("the ETag changed from {ours} to {theirs}"))
                    } else {
                        None
                    }
                }
                _ => Some("a 206 answer without a valid Content-Range".to_owned()),
            };
            if let Some(detail) = problem {
                part.restart(blank(cfg)).await?;
                progress.begin(cfg.expected.size, 0);
                return Err(Error::BadRange {
                    url: cfg.url.clone(),
                    detail,
                });
            }
            if offset == 0 {
                let total = match content_range(headers) {
                    Some(ContentRange::Bytes { total, .. }) => total,
                    _ => None,
                };
                part.restart(sidecar(cfg, headers, total)).await?;
            }
            if offset == 0 || !progress.shown {
                progress.begin(part.meta().total.or(cfg.expected.size), offset);
            }
            debug!(offset, "resuming");
        }
        416 if offset > 0 => {
            let total = match content_range(headers) {
                Some(ContentRange::Unsatisfied { total }) => Some(total),
                _ => part.meta().total,
            };
            let complete = total == Some(offset)
                && cfg.expected.size.is_none_or(|size| size == offset)
                && part.meta().total.is_none_or(|known| known == offset);
            if complete {
                info!(bytes = offset, "the part file is already complete");
                return Ok(());
            }
            part.restart(blank(cfg)).await?;
            progress.begin(cfg.expected.size, 0);
            return Err(Error::BadRange {
                url: cfg.url.clone(),
                detail: format!(
                    "the server cannot send bytes {offset}- of a file of {} bytes",
                    total.map_or("unknown".to_owned(), |t| t.to_string())
                ),
            });
        }
        _ => {
            return Err(Error::HttpStatus {
                url: cfg.url.clone(),
                status,
            });
        }
    }

    let total = part.meta().total;
    let mut body = response.bytes_stream();
    loop {
        // Both branches are cancel-safe: `next` loses nothing when the other one wins.
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled(cfg, part)),
            next = body.next() => next,
        };
        let chunk = match next {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(source)) => {
                return Err(Error::Body {
                    url: cfg.url.clone(),
                    offset: part.len(),
                    source,
                });
            }
        };
        let after = part.len() + chunk.len() as u64;
        if let Some(limit) = total.or(cfg.expected.size)
            && after > limit
        {
            return Err(Error::SizeMismatch {
                path: cfg.out.clone(),
                url: cfg.url.clone(),
                expected: limit,
                actual: after,
            });
        }
        part.write(&chunk).await?;
        progress.advance(chunk.len() as u64);
    }
    match total {
        Some(total) if part.len() < total => Err(Error::Truncated {
            url: cfg.url.clone(),
            got: part.len(),
            total,
        }),
        _ => Ok(()),
    }
}

fn cancelled(cfg: &Config, part: &Part) -> Error {
    Error::Cancelled {
        url: cfg.url.clone(),
        part: part.path().to_owned(),
    }
}

/// Sorts a failed request: too many redirects and unbuildable requests are final, the rest
/// (connection refused or reset, timeouts) worth another attempt.
fn request_error(cfg: &Config, source: reqwest::Error) -> Error {
    let url = cfg.url.clone();
    if source.is_redirect() {
        Error::TooManyRedirects {
            url,
            max: cfg.max_redirects,
            source,
        }
    } else if source.is_builder() {
        Error::Client { url, source }
    } else {
        Error::Request { url, source }
    }
}

/// The sidecar for the version of the file a response carries.
fn sidecar(cfg: &Config, headers: &HeaderMap, total: Option<u64>) -> Sidecar {
    Sidecar {
        url: cfg.url.clone(),
        etag: header_str(headers, header::ETAG).map(str::to_owned),
        last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
        total,
    }
}

/// A sidecar that knows no version: the next request asks for the whole file.
fn blank(cfg: &Config) -> Sidecar {
    Sidecar {
        url: cfg.url.clone(),
        ..Sidecar::default()
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|value| value.trim().parse().ok())
}

/// A parsed `Content-Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentRange {
    /// `bytes START-END/TOTAL` (TOTAL may be `*`).
    Bytes {
        start: u64,
        end: u64,
        total: Option<u64>,
    },
    /// `bytes */TOTAL`, with a 416.
    Unsatisfied { total: u64 },
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    parse_content_range(header_str(headers, header::CONTENT_RANGE)?)
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let value = value.trim();
    let (unit, rest) = value.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, total) = rest.trim().split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    if span.trim() == "*" {
        return total.map(|total| ContentRange::Unsatisfied { total });
    }
    let (start, end) = span.trim().split_once('-')?;
    Some(ContentRange::Bytes {
        start: start.trim().parse().ok()?,
        end: end.trim().parse().ok()?,
        total,
    })
}

/// Progress in bytes, started again when the part starts again.
struct Progress<'a> {
    rep: &'a dyn Reporter,
    what: String,
    shown: bool,
}

impl Progress<'_> {
    /// A bar for `total` bytes (0 when unknown), `done` of them already there.
    fn begin(&mut self, total: Option<u64>, done: u64) {
        self.end();
        self.rep.start(total.unwrap_or(0), &self.what);
        if done > 0 {
            self.rep.advance(done);
        }
        self.shown = true;
    }

    fn advance(&self, n: u64) {
        self.rep.advance(n);
    }

    fn end(&mut self) {
        if self.shown {
            self.rep.finish();
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn loopback_urls_bypass_proxies() {
        for url in [
            "http://127.0.0.1:8080/a",
            "http://localhost/a",
            "http://[::1]:80/a",
            "http://127.9.9.9/a",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://www.cs.toronto.edu/a",
            "http://10.0.0.1/a",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange::Bytes {
                start: 100,
                end: 199,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some(ContentRange::Bytes {
                start: 0,
                end: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */1000"),
            Some(ContentRange::Unsatisfied { total: 1000 })
        );
        assert_eq!(parse_content_range("bytes */*"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes 9/10"), None);
        assert_eq!(parse_content_range("bytes -1-9/10"), None);
        assert_eq!(parse_content_range(""), None);
    }
}
