//! `retrain-sort`: CIFAR python batches into class folders of PNG images and a labels file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use retrain_sort::{Config, Dataset, Labels, Source};

/// Sort CIFAR-10/100 python batches into class folders of PNG images, with a labels file.
///
/// Writes OUT/train_dir/<class>/<name>.png (the training batches), OUT/validation_dir/<class>/<name>.png
/// (the test batch), OUT/labels.txt (class names in label order, one per line: the labels file
/// build_image_data.py reads), OUT/sort-report.json (images per split and class, file-name
/// collisions, sanitised names) and, last, OUT/manifest.json. Images are the right way up and
/// pixel-exact. When two images of a class share a file name both are kept: the first in batch
/// order keeps it, a later one becomes <name>__<batch>_r<row>.png. Unsafe names from the pickles
/// (path separators, control characters, leading dots, empty) are made safe. The same input gives
/// the same bytes whatever the thread count; a rerun replaces whatever a killed run left.
#[derive(Debug, Parser)]
#[command(version)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "from_archive"])))]
struct Args {
    /// The extracted batches folder (cifar-10-batches-py, or cifar-100-python with --dataset
    /// cifar100).
    #[arg(long, value_name = "DIR")]
    input: Option<PathBuf>,
    /// Read the batches straight from the .tar.gz archive instead, nothing extracted to disk (only
    /// the dataset's exact members are accepted; the gzip CRC is checked).
    #[arg(long, value_name = "FILE")]
    from_archive: Option<PathBuf>,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Which batches to expect: cifar10 (data_batch_1..5, test_batch, batches.meta) or cifar100
    /// (train, test, meta).
    #[arg(long, default_value = "cifar10", value_parser = ["cifar10", "cifar100"])]
    dataset: String,
    /// Which labels name the class folders: fine (CIFAR-10's 10, CIFAR-100's 100 classes) or
    /// coarse (CIFAR-100's 20 superclasses).
    #[arg(long, default_value = "fine", value_parser = ["fine", "coarse"])]
    labels: String,
    /// Threads encoding and writing images [default: one per core]. The output does not depend on
    /// it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
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
    let labels: Labels = args.labels.parse().map_err(anyhow::Error::msg)?;
    let source = match (args.input, args.from_archive) {
        (Some(dir), None) => Source::Dir(dir),
        (None, Some(archive)) => Source::Archive(archive),
        _ => unreachable!("clap requires exactly one source"),
    };
    let cfg = Config {
        source,
        out: args.out,
        dataset,
        labels,
        threads: args.threads.map_or(0, |n| n as usize),
    };
    let progress = retrain_stage::cli::ProgressBar::new(args.quiet, false);
    retrain_sort::run(&cfg, &progress).with_context(|| {
        format!(
            "sorting {dataset} ({labels} labels) into {}",
            cfg.out.display()
        )
    })?;
    Ok(())
}
