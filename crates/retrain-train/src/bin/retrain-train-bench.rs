//! `retrain-train-bench`: throughput of the training stage's parts, for `cargo xtask bench`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use retrain_stage::cli::{exit_code, init_logging};
use retrain_tfrecord::{ImageRecord, RecordWriter, jpeg::JpegEncoder};
use retrain_train::{
    bottleneck::{self, Extract},
    data::{Dataset, Split},
    optim::LrSchedule,
    train::{self, Trainable},
};

/// Reuses freed tensors' memory ([`retrain_inception::alloc`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the training stage: head training on cached bottlenecks, bottleneck extraction, and
/// full training steps. Each prints one `key=value` line on stdout. Inputs are generated: random
/// class-dependent 32×32 JPEGs in TFRecord shards (as CIFAR through build_image_data.py), or
/// random 2048-d bottlenecks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Scratch directory [default: a new temporary directory].
    #[arg(long, global = true, value_name = "DIR")]
    work: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a new fc on N cached bottlenecks, as --trainable head does.
    Head {
        #[arg(long, default_value_t = 50_000)]
        examples: usize,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        #[arg(long, default_value_t = 10)]
        epochs: u64,
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Dropout before fc [default: the head default].
        #[arg(long)]
        dropout: Option<f32>,
    },
    /// Compute bottlenecks (decode, eval preprocessing, forward to the 2048-d pool) of N images.
    Extract {
        #[arg(long, default_value_t = 299)]
        size: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 128)]
        images: usize,
    },
    /// Full training steps (augmentation, forward, backward, RMSProp) on generated shards.
    Full {
        #[arg(long, default_value_t = 299)]
        size: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Steps; the first is a warm-up and not timed.
        #[arg(long, default_value_t = 3)]
        steps: u64,
    },
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
    let tmp = tempfile_dir(args.work.as_deref())?;
    let work = tmp.path();
    let line = match &args.command {
        Command::Head {
            examples,
            classes,
            epochs,
            batch_size,
            dropout,
        } => {
            let mut cfg =
                train::Config::new(work.join("shards"), work.join("run"), Trainable::Head);
            cfg.batch_size = *batch_size;
            cfg.epochs = *epochs;
            cfg.log_every = 1_000_000;
            if let Some(p) = dropout {
                cfg.dropout = *p;
            }
            cfg.lr = LrSchedule {
                initial: 0.01,
                ..LrSchedule::default()
            };
            let (secs, steps) = train::bench_head(&cfg, *examples, *classes)?;
            let epochs_timed = (steps * *batch_size as u64) as f64 / *examples as f64;
            format!(
                "head examples={examples} batch={batch_size} steps={steps} seconds={secs:.3} seconds_per_10_epochs={:.3} steps_per_sec={:.1}",
                secs / epochs_timed * 10.0,
                steps as f64 / secs
            )
        }
        Command::Extract {
            size,
            batch_size,
            images,
        } => {
            let shards = work.join("shards");
            write_shards(&shards, *images, 10)?;
            let dataset = Arc::new(Dataset::open(&shards, Split::Train, None)?);
            let model = retrain_inception::Model::new(
                &retrain_inception::Config {
                    num_classes: 10,
                    aux_logits: false,
                    ..retrain_inception::Config::default()
                },
                0,
                &candle_core::Device::Cpu,
            )?;
            // Warm-up on one batch outside the timed run.
            let xs = candle_core::Tensor::zeros(
                (1, 3, *size, *size),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?;
            model.net().features(&xs)?;
            let cfg = Extract {
                cache_dir: work.join("cache"),
                size: *size,
                batch_size: *batch_size,
                threads: 0,
            };
            let start = Instant::now();
            bottleneck::compute_or_load(
                &model,
                dataset,
                &cfg,
                &std::sync::atomic::AtomicBool::new(false),
                &retrain_stage::NoProgress,
            )?;
            let secs = start.elapsed().as_secs_f64();
            format!(
                "extract size={size} batch={batch_size} images={images} seconds={secs:.3} images_per_sec={:.2}",
                *images as f64 / secs
            )
        }
        Command::Full {
            size,
            batch_size,
            steps,
        } => {
            let shards = work.join("shards");
            write_shards(&shards, (batch_size * 4).max(64), 10)?;
            let mut cfg = train::Config::new(shards, work.join("run"), Trainable::All);
            cfg.size = *size;
            cfg.batch_size = *batch_size;
            cfg.max_steps = Some(*steps);
            cfg.log_every = 1_000_000;
            let (secs, timed) = train::bench_full(&cfg)?;
            format!(
                "full size={size} batch={batch_size} steps_timed={timed} seconds={secs:.3} images_per_sec={:.3}",
                (timed * *batch_size as u64) as f64 / secs
            )
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    Ok(())
}

/// Keeps a scratch directory alive (removed on drop unless the user named it).
enum Scratch {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Scratch {
    fn path(&self) -> &Path {
        match self {
            Scratch::Temp(t) => t.path(),
            Scratch::Given(p) => p,
        }
    }
}

fn tempfile_dir(given: Option<&Path>) -> anyhow::Result<Scratch> {
    Ok(match given {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            Scratch::Given(p.to_owned())
        }
        None => Scratch::Temp(tempfile::tempdir().context("creating a scratch directory")?),
    })
}

/// `n` class-dependent 32×32 JPEGs in one train shard, with labels.txt.
fn write_shards(dir: &Path, n: usize, classes: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let encoder = JpegEncoder::new(100)?;
    let mut writer = RecordWriter::create(&dir.join("train-00000-of-00001"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in 0..n {
        let label = i % classes;
        let mut rgb = Vec::with_capacity(32 * 32 * 3);
        for y in 0..32 {
            for x in 0..32 {
                let base = [(label * 25) as u8, (x * 8) as u8, (y * 8) as u8];
                for c in base {
                    rgb.push(c.wrapping_add(rng.random_range(0..32)));
                }
            }
        }
        let mut jpeg = Vec::new();
        encoder.encode_rgb(&rgb, 32, 32, &mut jpeg)?;
        let name = format!("class{label}");
        let record = ImageRecord::jpeg(jpeg, 32, 32, label as i64 + 1, &name, &format!("{i}.png"));
        writer.write_record(&record.encode_to_vec())?;
    }
    writer.flush()?;
    let labels: String = (0..classes).map(|c| format!("class{c}\n")).collect();
    std::fs::write(dir.join("labels.txt"), labels)?;
    Ok(())
}
