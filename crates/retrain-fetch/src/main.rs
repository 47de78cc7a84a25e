//! `retrain-fetch`: download one file, resumably, and verify it before it gets its name.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use retrain_fetch::{Config, Expected, Known, Preset, Sha256Pin};
use tokio_util::sync::CancellationToken;

/// Download a file over HTTP(S), resumably, and verify it before it gets its name.
///
/// Streams to FILE.part (with FILE.part.json remembering the server's validator), retries dropped
/// or failed transfers with exponential backoff and resumes them with Range/If-Range, across runs
/// too. FILE appears only after its size and digests check out; a FILE already there and verified
/// is kept without a download. Writes manifest.json beside FILE last. A digest is required: give
/// --sha256, or --dataset/--weights for a file the pipeline knows.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// URL to download (http or https; redirects are followed). Overrides the --dataset or
    /// --weights URL.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Expected SHA-256, 64 hex digits. Overrides the --dataset or --weights digest.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Expected MD5, 32 hex digits, checked as well.
    #[arg(long, value_name = "HEX")]
    md5: Option<String>,
    /// Expected size in bytes.
    #[arg(long, value_name = "BYTES")]
    size: Option<u64>,
    /// A CIFAR archive: fills in URL, size, SHA-256 and MD5.
    #[arg(long, value_name = "NAME", value_parser = ["cifar10", "cifar100"], conflicts_with = "weights")]
    dataset: Option<String>,
    /// Pretrained weights: fills in URL and size; the SHA-256 must start with the hash in the file
    /// name (e.g. 0cc3c7bd) unless --sha256 pins all of it.
    #[arg(long, value_name = "NAME", value_parser = ["inception_v3"])]
    weights: Option<String>,
    /// Destination file; its directory is created if missing and receives manifest.json.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Retries of a failed transfer, counted since the last attempt that brought new bytes (so a
    /// long download over a flaky link goes on while it makes progress); 0 never retries.
    #[arg(long, default_value_t = 5, value_name = "N")]
    retries: u32,
    /// Wait after the first failure, in milliseconds; doubles per failure in a row, up to 30 s.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    retry_delay_ms: u64,
    /// Longest wait for data on a connection before the attempt fails, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    read_timeout_secs: u64,
    /// Longest wait to establish a connection, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    connect_timeout_secs: u64,
    /// Redirects followed per request.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_redirects: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The exit status after Ctrl-C, as a shell reports a process killed by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let interrupted = matches!(
                err.downcast_ref::<retrain_fetch::Error>(),
                Some(retrain_fetch::Error::Cancelled { .. })
            );
            ExitCode::from(if interrupted { EXIT_INTERRUPTED } else { 1 })
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let progress = retrain_stage::cli::ProgressBar::new(args.quiet, true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(cancel_on_ctrl_c(cancel.clone()));
        retrain_fetch::run(&cfg, &progress, cancel)
            .await
            .with_context(|| format!("fetching {} to {}", cfg.url, cfg.out.display()))
    })?;
    Ok(())
}

/// The first Ctrl-C cancels the download (keeping FILE.part); a second one exits at once.
async fn cancel_on_ctrl_c(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    tracing::warn!("interrupted: stopping; the partial download is kept for a rerun");
    cancel.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(EXIT_INTERRUPTED.into());
    }
}

/// The library configuration: the --dataset/--weights entry, overridden by explicit flags.
fn config(args: &Args) -> anyhow::Result<Config> {
    let (known, preset): (Option<Known>, Option<Preset>) = match (&args.dataset, &args.weights) {
        (Some(name), _) => {
            let known = retrain_fetch::known_dataset(name)
                .with_context(|| format!("unknown dataset {name}"))?;
            (Some(known), Some(Preset::Dataset(known.name)))
        }
        (None, Some(name)) => {
            let known = retrain_fetch::known_weights(name)
                .with_context(|| format!("unknown weights {name}"))?;
            (Some(known), Some(Preset::Weights(known.name)))
        }
        (None, None) => (None, None),
    };
    let Some(url) = args.url.clone().or(known.map(|k| k.url.to_owned())) else {
        bail!("no URL: give --url URL, or --dataset/--weights for a known file");
    };
    let sha256 = match (&args.sha256, known) {
        (Some(hex), _) => Sha256Pin::Full(hex.clone()),
        (None, Some(known)) => known.expected().sha256,
        (None, None) => bail!(
            "no digest for {url}: give --sha256 HEX (or --dataset/--weights); \
             refusing to download a file that cannot be verified"
        ),
    };
    let expected = Expected {
        sha256,
        md5: args
            .md5
            .clone()
            .or(known.and_then(|k| k.md5.map(str::to_owned))),
        size: args.size.or(known.map(|k| k.size)),
    };
    let mut cfg = Config::new(url, args.out.clone(), expected);
    cfg.retries = args.retries;
    cfg.retry_delay = Duration::from_millis(args.retry_delay_ms);
    cfg.read_timeout = Duration::from_secs(args.read_timeout_secs);
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout_secs);
    cfg.max_redirects = args.max_redirects;
    cfg.preset = preset;
    Ok(cfg)
}
