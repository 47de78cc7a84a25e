//! `retrain-train`: fine-tune Inception-v3 on TFRecord shards.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, atomic::AtomicBool};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use retrain_stage::cli::{ProgressBar, exit_code, init_logging};
use retrain_train::{
    optim::{LrSchedule, OptimizerKind},
    train::{self, Init, Outcome, Trainable},
};

/// Reuses freed tensors' memory ([`retrain_inception::alloc`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fine-tune Inception-v3 on the TFRecord shards of build_image_data.py (or retrain-tfrecord).
///
/// `--trainable head` (the retrain.py way, the default): the backbone is frozen; each training
/// image's 2048-d bottleneck is computed once with evaluation preprocessing and cached (keyed by
/// the shards, the weights and the input size; an interrupted extraction resumes), then a new
/// `fc` trains on the cache in seconds. `--trainable all` (the TF recipe): every layer trains,
/// with random crops, flips and colour distortion, aux logits (inputs of 299 and up), label
/// smoothing, L2 weight decay and batch norm in training mode.
///
/// Every 10 steps it logs `<time>: step N, loss = X (Y examples/sec; Z sec/batch)`. RUN gets
/// TensorBoard events (train/), metrics.jsonl, loss.png, checkpoints/ (every
/// --checkpoint-every steps and at the end), and, when done, model.safetensors (torchvision/timm
/// names, fc for N classes), labels.txt, model.json and manifest.json. Ctrl-C writes a checkpoint
/// and exits with status 130; --resume continues from the newest checkpoint with the same
/// losses as an uninterrupted run.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory of train-*/validation-* TFRecord shards.
    #[arg(long, value_name = "DIR")]
    tfrecords: PathBuf,
    /// Run directory (for example runs/cifar10).
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Class names, one per line [default: TFRECORDS/labels.txt, else image/class/text].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Pretrained weights: torchvision .pth or timm safetensors; fc and AuxLogits.fc are
    /// re-created for the dataset's classes.
    #[arg(long, value_name = "FILE", required_unless_present = "init")]
    weights: Option<PathBuf>,
    /// `seeded`: start from a seeded initialisation (no pretrained weights).
    #[arg(long, value_enum, conflicts_with = "weights")]
    init: Option<InitArg>,
    /// Which layers train.
    #[arg(long, value_enum, default_value_t = TrainableArg::Head)]
    trainable: TrainableArg,
    /// Input size in pixels (H = W, at least 75; 299 is Inception's own).
    #[arg(long, default_value_t = 299)]
    size: usize,
    /// Examples per step [default: 100 for head, 32 for all].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Epochs to train.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Stop after this many steps instead.
    #[arg(long)]
    max_steps: Option<u64>,
    /// rmsprop (TF-style, the recipe), sgd (momentum 0.9) or adamw.
    #[arg(long, default_value = "rmsprop")]
    optimizer: String,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.001)]
    lr: f64,
    /// Learning-rate factor applied every --epochs-per-decay epochs (staircase).
    #[arg(long, default_value_t = 0.16)]
    lr_decay: f64,
    #[arg(long, default_value_t = 30.0)]
    epochs_per_decay: f64,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Weight of the aux-logits loss.
    #[arg(long, default_value_t = 0.4)]
    aux_weight: f64,
    /// Weight decay: slim's L2 (wd·Σw²/2) on conv and fc weights with rmsprop and sgd; with adamw,
    /// its decoupled decay (w −= lr·wd·w) on every parameter, as torch.optim.AdamW.
    #[arg(long, default_value_t = 4e-5)]
    weight_decay: f64,
    /// Batch-norm moving-average decay (TF convention).
    #[arg(long, default_value_t = 0.9997)]
    bn_decay: f64,
    /// Dropout probability before fc [default: 0 for head (retrain.py), 0.2 for all (the TF
    /// recipe keeps 80 %)].
    #[arg(long)]
    dropout: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decoding threads; 0 uses every core. Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Shuffle buffer in examples (--trainable all).
    #[arg(long, default_value_t = 10_000)]
    shuffle_buffer: usize,
    /// Log, summarise and record metrics every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Write a checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Continue from the newest checkpoint in RUN.
    #[arg(long)]
    resume: bool,
    /// Bottleneck cache directory [default: TFRECORDS/../bottlenecks].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Images per forward pass when computing bottlenecks (divides 1024).
    #[arg(long, default_value_t = 32)]
    extract_batch: usize,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InitArg {
    Seeded,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TrainableArg {
    Head,
    All,
}

fn main() -> ExitCode {
    retrain_inception::alloc::keep_freed_memory();
    // SAFETY: first thing in main: no other thread runs yet.
    unsafe { retrain_inception::quiet_candle_pool() };
    let args = Args::parse();
    init_logging(args.verbose);
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    // The first Ctrl-C asks for a checkpoint at the end of the current step (or batch of
    // bottlenecks); a second one ends the process at once.
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step; Ctrl-C again to stop at once");
    }) {
        tracing::warn!("cannot catch Ctrl-C: {e}");
    }
    match retrain_inception::on_workers(|| run(&args, &cancel)) {
        Ok(Outcome::Interrupted { .. }) => ExitCode::from(130),
        Ok(Outcome::Finished { .. }) => ExitCode::SUCCESS,
        Err(e) if is_interrupted(&e) => {
            eprintln!("stopped: {e:#}");
            ExitCode::from(130)
        }
        Err(e) => exit_code(Err(e)),
    }
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<train::Error>()
            .is_some_and(train::Error::is_interrupted)
    })
}

fn run(args: &Args, cancel: &AtomicBool) -> anyhow::Result<Outcome> {
    let trainable = match args.trainable {
        TrainableArg::Head => Trainable::Head,
        TrainableArg::All => Trainable::All,
    };
    let mut cfg = train::Config::new(args.tfrecords.clone(), args.run.clone(), trainable);
    cfg.labels = args.labels.clone();
    cfg.init = match &args.weights {
        Some(w) => Init::Weights(w.clone()),
        None => Init::Seeded,
    };
    cfg.size = args.size;
    if let Some(b) = args.batch_size {
        cfg.batch_size = b;
    }
    cfg.epochs = args.epochs;
    cfg.max_steps = args.max_steps;
    cfg.optimizer = match OptimizerKind::parse(&args.optimizer)? {
        // AdamW decays every parameter by lr·wd per step (torch's convention), with the same
        // --weight-decay the others apply as slim's L2 on conv and fc weights.
        OptimizerKind::Adamw {
            beta1, beta2, eps, ..
        } => OptimizerKind::Adamw {
            beta1,
            beta2,
            eps,
            weight_decay: args.weight_decay,
        },
        other => other,
    };
    cfg.lr = LrSchedule {
        initial: args.lr,
        decay_factor: args.lr_decay,
        epochs_per_decay: args.epochs_per_decay,
    };
    cfg.label_smoothing = args.label_smoothing;
    cfg.aux_weight = args.aux_weight;
    cfg.weight_decay = args.weight_decay;
    cfg.bn_decay = args.bn_decay;
    if let Some(p) = args.dropout {
        cfg.dropout = p;
    }
    cfg.seed = args.seed;
    cfg.threads = args.threads;
    cfg.shuffle_buffer = args.shuffle_buffer;
    cfg.log_every = args.log_every;
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.resume = args.resume;
    if let Some(c) = &args.cache {
        cfg.cache_dir = c.clone();
    }
    cfg.extract_batch = args.extract_batch;
    cfg.device = args.device.clone();
    let progress = ProgressBar::new(args.quiet, false);
    let (outcome, _) = train::run(&cfg, cancel, &progress)
        .with_context(|| format!("training into {}", args.run.display()))?;
    match &outcome {
        Outcome::Finished { steps, loss } => tracing::info!(
            "finished after {steps} steps (last loss {loss:.4}): {}",
            args.run.join(train::files::MODEL).display()
        ),
        Outcome::Interrupted { steps, checkpoint } => tracing::info!(
            "stopped after {steps} steps; checkpoint {}; continue with --resume",
            checkpoint.display()
        ),
    }
    Ok(outcome)
}
