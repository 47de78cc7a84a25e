//! `retrain-tfrecord`: build sharded TFRecords from class folders of images, or look into
//! TFRecord files.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// TFRecord files of tf.train.Example images, as TensorFlow's build_image_data.py writes them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// No progress bar.
    #[arg(long, short, global = true, display_order = 100)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, display_order = 101, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    Build(BuildArgs),
    Inspect(InspectArgs),
}

/// Convert class folders of PNG/JPEG images into shuffled, sharded TFRecord files.
///
/// Each class named in the labels file (line i, 0-based, is label i + 1; 0 stays "background")
/// must have a non-empty folder in both split directories. Every file there becomes one
/// tf.train.Example with build_image_data.py's nine features: PNGs are re-encoded as JPEG at
/// quality 100, JPEGs are kept as they are, and any other file is skipped, reported by path and
/// counted. Files are shuffled with the seed and written to OUT/train-00000-of-000NN … and
/// OUT/validation-00000-of-000MM …, each under a hidden temporary name until complete; shards of an
/// earlier run with other counts are removed. Then OUT/report.json (counts per split, class and
/// shard; skipped files) and OUT/manifest.json. The same inputs and seed give the same bytes
/// whatever the thread count.
#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Training images: one folder per class.
    #[arg(long, value_name = "DIR")]
    train_dir: PathBuf,
    /// Validation images: one folder per class.
    #[arg(long, value_name = "DIR")]
    validation_dir: PathBuf,
    /// Class names, one per line, in label order.
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Training shards [default: one per 1024 images, at least 1].
    #[arg(long, value_name = "N")]
    train_shards: Option<usize>,
    /// Validation shards [default: one per 1024 images, at least 1].
    #[arg(long, value_name = "N")]
    validation_shards: Option<usize>,
    /// Worker threads; 0 uses every core. The output does not depend on it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Seed of the shuffle (the reference's is 12345).
    #[arg(long, default_value_t = retrain_tfrecord::build::DEFAULT_SEED)]
    seed: u64,
}

/// Print record counts, feature keys and the first examples of TFRecord files.
///
/// Reads every record of each FILE (ours or TensorFlow's: the format is the same), verifying both
/// checksums, and prints to stdout the records per file, the records per image/class/label (with
/// its image/class/text), each feature key with its type, and the first examples in full. A corrupt
/// or truncated file is an error naming the file and the record's byte offset.
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// TFRecord files of tf.train.Example.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// How many examples to print in full.
    #[arg(long, default_value_t = 3, value_name = "N")]
    examples: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    retrain_stage::cli::exit_code(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Build(build) => {
            let cfg = retrain_tfrecord::Config {
                train_dir: build.train_dir,
                validation_dir: build.validation_dir,
                labels: build.labels,
                out: build.out,
                train_shards: build.train_shards,
                validation_shards: build.validation_shards,
                threads: build.threads,
                seed: build.seed,
            };
            let progress = retrain_stage::cli::ProgressBar::new(args.quiet, false);
            let built = retrain_tfrecord::build(&cfg, &progress)
                .with_context(|| format!("building TFRecords in {}", cfg.out.display()))?;
            for (name, split) in &built.report.splits {
                tracing::info!(
                    "{name}: {} records in {} shards, {} files skipped",
                    split.records,
                    split.shards.len(),
                    split.skipped
                );
            }
        }
        Command::Inspect(inspect) => {
            let found = retrain_tfrecord::inspect::inspect(&inspect.files, inspect.examples)
                .context("inspecting TFRecords")?;
            let mut out = std::io::stdout().lock();
            found.write(&mut out).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}
