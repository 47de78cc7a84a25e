//! `retrain-extract`: extract a `.tar.gz` safely, verified, into a directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use retrain_extract::{CancellationToken, Config, DEFAULT_MAX_BYTES, Dataset, GENERIC};

/// Extract a .tar.gz archive safely and verified.
///
/// Streams FILE (gzip, then tar) without holding it in memory, hashing it as it goes. Only regular
/// files and directories are extracted, only under DIR: absolute names, `..`, links, devices and
/// fifos are refused, naming the member. With --dataset, exactly that archive's members must be
/// present. Files are written under hidden `.NAME.partial` names and renamed into place only after
/// the whole archive is read, the gzip CRC checked and every member md5 matched (the published
/// ones for the real CIFAR archives, --member-digests otherwise); then DIR/manifest.json is
/// written. On any error or Ctrl-C nothing of this run is left in DIR.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The .tar.gz archive to extract.
    #[arg(long, value_name = "FILE")]
    archive: PathBuf,
    /// Output directory (created if missing); members land at their paths inside it.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// cifar10 or cifar100: extract exactly that archive's members, all of which must be present;
    /// generic: any regular files and directories.
    #[arg(long, default_value = GENERIC, value_parser = [GENERIC, "cifar10", "cifar100"])]
    dataset: String,
    /// md5sum-format file (`<md5>  <member path>` per line, as retrain-synth's members.md5) that
    /// must list every file member's md5.
    #[arg(long, value_name = "FILE")]
    member_digests: Option<PathBuf>,
    /// Refuse the archive when its file members add up to more than N bytes (decompression
    /// bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES, value_name = "N")]
    max_bytes: u64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    let cancel = CancellationToken::new();
    cancel_on_interrupt(cancel.clone());
    let result = run(args, cancel).await;
    let cancelled = matches!(
        result.as_ref().err().and_then(|err| err.downcast_ref()),
        Some(retrain_extract::Error::Cancelled { .. })
    );
    let code = retrain_stage::cli::exit_code(result);
    // 128 + SIGINT, as a shell reports an interrupted command.
    if cancelled { ExitCode::from(130) } else { code }
}

/// Cancels `cancel` on Ctrl-C. On Unix the handler is installed before this returns, so an
/// interrupt never kills the process with partial files left behind.
fn cancel_on_interrupt(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::interrupt()) {
            Ok(mut interrupt) => {
                tokio::spawn(async move {
                    if interrupt.recv().await.is_some() {
                        cancel.cancel();
                    }
                });
            }
            Err(err) => tracing::warn!("cannot handle Ctrl-C: {err}"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
}

async fn run(args: Args, cancel: CancellationToken) -> anyhow::Result<()> {
    let dataset = match args.dataset.as_str() {
        GENERIC => None,
        name => Some(name.parse::<Dataset>().map_err(anyhow::Error::msg)?),
    };
    let cfg = Config {
        archive: args.archive,
        out: args.out,
        dataset,
        member_digests: args.member_digests,
        max_bytes: args.max_bytes,
    };
    let progress = retrain_stage::cli::ProgressBar::new(args.quiet, true);
    retrain_extract::run(&cfg, &progress, cancel)
        .await
        .with_context(|| format!("extracting into {}", cfg.out.display()))?;
    Ok(())
}
