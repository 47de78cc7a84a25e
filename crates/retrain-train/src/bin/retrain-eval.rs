//! `retrain-eval`: precision@1 and recall@5 of a trained run on the validation shards.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use retrain_stage::cli::{ProgressBar, exit_code, init_logging};
use retrain_train::eval;

/// Reuses freed tensors' memory ([`retrain_inception::alloc`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Evaluate a trained run on the validation-* TFRecord shards.
///
/// Runs the exported model (RUN/model.safetensors) in eval mode over exactly the N validation
/// examples, once each (central crop of 87.5 %, bilinear resize to the training size), and prints
/// TF's line `precision @ 1 = … recall @ 5 = … [N examples]` on stdout. Writes RUN/eval/:
/// metrics.json (the two rates, per-class accuracy, the confusion matrix), confusion.png,
/// TensorBoard events and manifest.json.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run directory that retrain-train wrote.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Directory of validation-* TFRecord shards.
    #[arg(long, value_name = "DIR")]
    tfrecords: PathBuf,
    /// Input size [default: the training size, from RUN/model.json].
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Decoding threads; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Refuse RUN/model.safetensors unless it has this sha256 (as the training manifest records).
    #[arg(long, value_name = "HEX")]
    model_sha256: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    retrain_inception::alloc::keep_freed_memory();
    // SAFETY: first thing in main: no other thread runs yet.
    unsafe { retrain_inception::quiet_candle_pool() };
    let args = Args::parse();
    init_logging(args.verbose);
    exit_code(retrain_inception::on_workers(|| run(&args)))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = eval::Config {
        run: args.run.clone(),
        tfrecords: args.tfrecords.clone(),
        size: args.size,
        batch_size: args.batch_size,
        threads: args.threads,
        device: args.device.clone(),
        model_sha256: args.model_sha256.clone(),
    };
    let progress = ProgressBar::new(args.quiet, false);
    let (_, tally) =
        eval::run(&cfg, &progress).with_context(|| format!("evaluating {}", args.run.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", tally.line())?;
    tracing::info!(
        "metrics and confusion matrix in {}",
        args.run.join(eval::EVAL_DIR).display()
    );
    Ok(())
}
