//! `retrain-predict`: the top classes of images with a trained run's model.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use retrain_stage::cli::{exit_code, init_logging};
use retrain_train::{eval, predict};

/// Reuses freed tensors' memory ([`retrain_inception::alloc`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Print the most probable classes of each IMAGE (PNG or JPEG, any size).
///
/// Uses RUN/model.safetensors, RUN/model.json (the input size) and RUN/labels.txt, with the
/// evaluation preprocessing (central crop of 87.5 %, bilinear resize, scaled to [-1, 1]).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run directory that retrain-train wrote.
    #[arg(long, value_name = "RUN")]
    model: PathBuf,
    /// Images to classify.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
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
    let device = retrain_inception::device(&args.device)?;
    let trained = eval::load_run(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let predictions = predict::predict(&trained, &args.images, args.top)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &predictions)?;
        writeln!(out)?;
    } else {
        for p in &predictions {
            writeln!(out, "{}", p.image.display())?;
            for g in &p.top {
                writeln!(out, "  {:>7.2}%  {}", g.probability * 100.0, g.class)?;
            }
        }
    }
    Ok(())
}
