//! What the download tests share: seeded bodies, digests, a fast configuration, a directory
//! listing.

// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use md5::Md5;
use retrain_fetch::{Config, Error, Expected};
use retrain_serve::RequestLog;
use retrain_stage::{Manifest, NoProgress};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

/// `len` pseudo-random bytes from `seed` (xorshift64*), the same every run.
pub fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The strong ETag `retrain-serve` gives `bytes`.
pub fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", sha256_hex(bytes))
}

/// A download of `url` to `out` pinned to `expected`'s SHA-256, with short delays and timeouts.
pub fn config(url: impl Into<String>, out: &Path, expected: &[u8]) -> Config {
    let mut cfg = Config::new(url, out, Expected::sha256(sha256_hex(expected)));
    cfg.retry_delay = Duration::from_millis(10);
    cfg.read_timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

/// Runs the download without progress or cancellation.
pub async fn fetch(cfg: &Config) -> Result<Manifest, Error> {
    retrain_fetch::run(cfg, &NoProgress, CancellationToken::new()).await
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The requests for the file itself (not the redirects), in order.
pub fn file_requests(log: &[RequestLog], name: &str) -> Vec<RequestLog> {
    log.iter()
        .filter(|req| req.path == format!("/{name}"))
        .cloned()
        .collect()
}

/// Body bytes the server sent for the file, over all requests.
pub fn bytes_sent(log: &[RequestLog]) -> u64 {
    log.iter().map(|req| req.body_bytes).sum()
}
