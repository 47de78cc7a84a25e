//! `retrain-synth`: write a synthetic dataset in the exact format of the real CIFAR archive.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use retrain_synth::{Config, Dataset};

/// Write a synthetic dataset that is, byte for byte in format, the real CIFAR python archive.
///
/// Writes OUT/cifar-10-python.tar.gz (or cifar-100-python.tar.gz) with the real members in the
/// real order, each batch a Python-2 protocol-2 pickle as cPickle wrote it, then OUT/members.md5
/// (per-member digests for `retrain-extract --member-digests`) and OUT/manifest.json. Images are
/// deterministic from the seed, learnable per class and asymmetric, so orientation bugs show.
/// The same options give the same bytes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Which archive to imitate: cifar10 (5 training batches, a test batch, batches.meta) or
    /// cifar100 (train, test, meta; fine and coarse labels).
    #[arg(long, default_value = "cifar10", value_parser = ["cifar10", "cifar100"])]
    dataset: String,
    /// Images per batch file; 10000 is the real size. CIFAR-100's train file holds five times as
    /// many, its test file as many.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    images_per_batch: usize,
    /// Seed for labels, file names and pixels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pairs of training images of one class given the same file name, as a test for sorters
    /// (real CIFAR names are not guaranteed unique).
    #[arg(long, default_value_t = 2, value_name = "N")]
    collisions: usize,
    /// Also write a JSON report of every label, file name and image digest to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// gzip compression level, 0 (store) to 9 (smallest).
    #[arg(long, default_value_t = 6, value_name = "0-9")]
    gzip_level: u32,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    retrain_stage::cli::exit_code(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let dataset: Dataset = args.dataset.parse().map_err(anyhow::Error::msg)?;
    let cfg = Config {
        out: args.out,
        dataset,
        images_per_batch: args.images_per_batch,
        seed: args.seed,
        collisions: args.collisions,
        report: args.report,
        gzip_level: args.gzip_level,
    };
    let progress = retrain_stage::cli::ProgressBar::new(args.quiet, false);
    retrain_synth::run(&cfg, &progress).with_context(|| {
        format!(
            "generating a synthetic {dataset} archive in {}",
            cfg.out.display()
        )
    })?;
    Ok(())
}
