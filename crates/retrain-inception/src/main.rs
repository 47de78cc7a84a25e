//! `retrain-inception`: run Inception-v3 on a tensor file, describe it, or re-head a checkpoint.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use retrain_inception::{Config, Model, STAGES};

/// Reuses freed tensors' memory ([`retrain_inception::alloc`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Inception-v3 with torchvision/timm names: forward passes, summaries, checkpoint conversion.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// Weights: a torchvision `.pth` or a `.safetensors` file (torchvision/timm names). Without
    /// it, a fresh model initialised from --seed.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Classes of the classifier; default: the checkpoint's (1000 without weights). Another
    /// count re-creates `fc` and `AuxLogits.fc` from --seed.
    #[arg(long, value_name = "N")]
    num_classes: Option<usize>,
    /// Seed for every tensor the weights do not provide.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    Forward,
    Train,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the model in eval mode on `input` (N×3×H×W f32 in [-1, 1], H, W ≥ 75) from a
    /// safetensors file; write `logits` (and `features`) to another.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// Safetensors file holding the tensor `input`.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Safetensors file to write (`logits`, N×classes; `features`, N×2048).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Also write the 2048-d bottleneck features.
        #[arg(long)]
        features: bool,
    },
    /// Print the layers, their output shapes and parameter counts.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        /// Input height and width for the output shapes.
        #[arg(long, default_value_t = 299)]
        size: usize,
    },
    /// Time the model on random inputs (seeded weights, 1000 classes) and print one line,
    /// `images_per_sec=X`, on stdout, over --steps timed steps after one untimed warm-up.
    /// `forward`: eval-mode forward passes (bottleneck extraction). `train`: full training
    /// steps: forward in training mode (with the aux head where the size allows, weighted 0.4),
    /// cross-entropy, backward, and a plain SGD update (lr 0.01, in place: `ops::Sgd`), as
    /// `scripts/inception_parity.py bench` does with PyTorch.
    Bench {
        /// Input height and width.
        #[arg(long, default_value_t = 299)]
        size: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// What to time.
        #[arg(long, value_enum, default_value_t = BenchMode::Forward)]
        mode: BenchMode,
        /// Timed steps (after one untimed warm-up).
        #[arg(long, default_value_t = 2)]
        steps: usize,
    },
    /// Load weights (re-creating the classifier for --num-classes), or seed a fresh model without
    /// --weights, and write them with torchvision names, loadable by torchvision and timm: as a
    /// PyTorch `.pth` file (what `torch.save(model.state_dict(), f)` writes) when --output ends in
    /// `.pth` or `.pt`, else as safetensors.
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        /// File to write: `.pth`/`.pt` for PyTorch's zip format, anything else for safetensors.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    retrain_inception::alloc::keep_freed_memory();
    // SAFETY: first thing in main: no other thread runs yet.
    unsafe { retrain_inception::quiet_candle_pool() };
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    retrain_stage::cli::exit_code(retrain_inception::on_workers(|| run(args)))
}

fn run(args: Args) -> anyhow::Result<()> {
    let device = retrain_inception::device(&args.device)?;
    match args.command {
        Command::Forward {
            model,
            input,
            output,
            features,
        } => forward(&model, &device, &input, &output, features),
        Command::Summary { model, size } => summary(&model, &device, size),
        Command::Bench {
            size,
            batch,
            mode,
            steps,
        } => bench(&device, size, batch, steps, mode),
        Command::Convert { model, output } => {
            let model = build(&model, &device)?;
            let pth = output.extension().is_some_and(|ext| {
                ext.eq_ignore_ascii_case("pth") || ext.eq_ignore_ascii_case("pt")
            });
            if pth {
                model.save_pth(&output)
            } else {
                model.save(&output)
            }
            .with_context(|| format!("writing {}", output.display()))?;
            tracing::info!(file = %output.display(), "weights written");
            Ok(())
        }
    }
}

fn build(args: &ModelArgs, device: &Device) -> anyhow::Result<Model> {
    let Some(path) = &args.weights else {
        let cfg = Config {
            num_classes: args.num_classes.unwrap_or(1000),
            ..Config::default()
        };
        return Ok(Model::new(&cfg, args.seed, device)?);
    };
    let tensors = retrain_inception::read_tensors(path)?;
    let (file_classes, file_aux) =
        retrain_inception::checkpoint_shape(&tensors).with_context(|| {
            format!(
                "{}: no fc.weight: not an Inception-v3 checkpoint",
                path.display()
            )
        })?;
    let cfg = Config {
        num_classes: args.num_classes.unwrap_or(file_classes),
        aux_logits: file_aux,
        ..Config::default()
    };
    let (model, report) = Model::load_tensors(&cfg, path, tensors, args.seed, device)
        .with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        file = %path.display(),
        loaded = report.loaded,
        reinitialised = report.reinitialised.len(),
        "weights loaded"
    );
    Ok(model)
}

fn forward(
    args: &ModelArgs,
    device: &Device,
    input: &Path,
    output: &Path,
    with_features: bool,
) -> anyhow::Result<()> {
    let model = build(args, device)?;
    let mut tensors = candle_core::safetensors::load(input, &Device::Cpu)
        .with_context(|| format!("reading {}", input.display()))?;
    let xs = tensors
        .remove("input")
        .with_context(|| format!("{}: no tensor named `input`", input.display()))?;
    let xs = xs.to_dtype(DType::F32)?.to_device(device)?;
    let _no_grad = retrain_inception::no_grad();
    let features = model
        .net()
        .features(&xs)
        .with_context(|| format!("{}: running the model", input.display()))?;
    let logits = model.net().head(&features, false)?;
    let mut out: BTreeMap<&str, Tensor> = BTreeMap::new();
    out.insert("logits", logits.to_device(&Device::Cpu)?);
    if with_features {
        out.insert("features", features.to_device(&Device::Cpu)?);
    }
    let bytes = safetensors::serialize(out.iter(), None)?;
    retrain_stage::write_atomic(output, &bytes)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn summary(args: &ModelArgs, device: &Device, size: usize) -> anyhow::Result<()> {
    if size < retrain_inception::MIN_INPUT {
        bail!("--size must be at least {}", retrain_inception::MIN_INPUT);
    }
    let model = build(args, device)?;
    let xs = Tensor::zeros((1, 3, size, size), DType::F32, device)?;
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let (features, _) = model.net().trunk(&xs, false, &mut |name, t| {
        shapes.push((name.to_owned(), t.dims().to_vec()));
    })?;
    let logits = model.net().head(&features, false)?;
    shapes.push(("fc".to_owned(), logits.dims().to_vec()));
    let mut out = std::io::stdout().lock();
    let cfg = model.net().config();
    writeln!(
        out,
        "Inception-v3, {} classes, aux logits {}, input 1×3×{size}×{size}",
        cfg.num_classes,
        if cfg.aux_logits { "on" } else { "off" }
    )?;
    writeln!(out, "{:<16} {:<20} {:>12}", "layer", "output", "parameters")?;
    for (name, dims) in &shapes {
        debug_assert!(STAGES.contains(&name.as_str()));
        let params = model.n_params(&format!("{name}."));
        writeln!(out, "{name:<16} {:<20} {params:>12}", format!("{dims:?}"))?;
    }
    if cfg.aux_logits {
        let params = model.n_params("AuxLogits.");
        writeln!(
            out,
            "{:<16} {:<20} {params:>12}",
            "AuxLogits",
            format!("[1, {}] (training)", cfg.num_classes)
        )?;
    }
    writeln!(out, "total parameters: {}", model.n_params(""))?;
    Ok(())
}

fn bench(
    device: &Device,
    size: usize,
    batch: usize,
    steps: usize,
    mode: BenchMode,
) -> anyhow::Result<()> {
    if steps == 0 || batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    if size < retrain_inception::MIN_INPUT {
        bail!("--size must be at least {}", retrain_inception::MIN_INPUT);
    }
    let train = mode == BenchMode::Train;
    let cfg = Config {
        num_classes: 1000,
        aux_logits: size >= retrain_inception::MIN_AUX_INPUT,
        ..Config::default()
    };
    let model = Model::new(&cfg, 0, device)?;
    let xs = retrain_inception::counter::uniform_tensor(
        "bench.input",
        &[batch, 3, size, size],
        -1.0,
        1.0,
        device,
    )?;
    let targets = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 1000).collect::<Vec<u32>>(),
        batch,
        device,
    )?;
    let mut sgd = <retrain_inception::ops::Sgd as candle_nn::Optimizer>::new(
        model.varmap().all_vars(),
        0.01,
    )?;
    let mut step = || -> anyhow::Result<()> {
        if train {
            let (logits, aux) = model.net().forward_with_aux(&xs, true)?;
            let mut loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            if let Some(aux) = aux {
                loss = (loss + (candle_nn::loss::cross_entropy(&aux, &targets)? * 0.4)?)?;
            }
            candle_nn::Optimizer::backward_step(&mut sgd, &loss)?;
        } else {
            let _no_grad = retrain_inception::no_grad();
            let logits = model.net().forward_with_aux(&xs, false)?.0;
            logits.to_device(&Device::Cpu)?;
        }
        Ok(())
    };
    step()?;
    let start = std::time::Instant::now();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let at = std::time::Instant::now();
        step()?;
        times.push(at.elapsed().as_secs_f64());
    }
    let seconds = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    // On a shared machine the fastest step is the steadiest figure for comparing two builds.
    tracing::info!(
        fastest = times[0],
        median = times[times.len() / 2],
        "{mode:?} at {size}×{size}, batch {batch}: {steps} steps in {seconds:.2} s"
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "images_per_sec={:.3}",
        (batch * steps) as f64 / seconds
    )?;
    Ok(())
}
