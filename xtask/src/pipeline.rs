//! The pipeline runner: stages in order, each skipped when its `manifest.json` still matches.
//!
//! Parameters come from each stage's defaults, then `--config pipeline.toml` (a table per stage,
//! keys are the stage's flag names), then `--set stage.flag=value`. Every parameter is passed to
//! the stage explicitly, and the stage records them in its manifest; a stage is up to date when its
//! manifest records the same parameters, the same input digests and unmodified outputs. Settings
//! that cannot change a stage's outputs (threads, device, retries, logging) are passed too but not
//! compared, so changing them never reruns anything.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{Context as _, bail};
use retrain_stage::Freshness;

use crate::{cargo, workspace_root};

/// Options shared by `pipeline` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Work directory holding every stage's artifacts [default: data/ (pipeline), data/demo/ (demo)]
    #[arg(long, value_name = "DIR")]
    pub(crate) workdir: Option<PathBuf>,
    /// First stage to run (earlier stages' artifacts must exist).
    #[arg(long, value_name = "STAGE")]
    pub(crate) from: Option<String>,
    /// Last stage to run.
    #[arg(long, value_name = "STAGE")]
    pub(crate) to: Option<String>,
    /// Run the stages even when their manifests say they are up to date.
    #[arg(long)]
    pub(crate) force: bool,
    /// Stage parameters from a TOML file: a table per stage, e.g. `[synth]` `seed = 3`.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Override one parameter, as STAGE.FLAG=VALUE (e.g. synth.seed=3); repeatable.
    #[arg(long = "set", value_name = "STAGE.FLAG=VALUE")]
    pub(crate) overrides: Vec<String>,
}

/// `cargo xtask pipeline` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PipelineArgs {
    /// Which dataset to fetch.
    #[arg(long, default_value = "cifar10", value_parser = ["cifar10", "cifar100"])]
    pub(crate) dataset: String,
    /// Your own images instead of a download: DIR/train_dir/<class>/*, DIR/validation_dir/<class>/*
    /// and DIR/labels.txt (one class per line), the layout retrain-sort writes. Skips fetch,
    /// extract and sort; the run is named after DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "dataset")]
    pub(crate) images: Option<PathBuf>,
    /// Pretrained weights from this file (a torchvision `.pth` or timm `.safetensors`) instead of
    /// downloading torchvision's Inception-v3 (the `weights` stage).
    #[arg(long, value_name = "FILE")]
    pub(crate) weights: Option<PathBuf>,
    /// No pretrained weights: train from a seeded initialisation (offline; learns far less).
    #[arg(long, conflicts_with = "weights")]
    pub(crate) seeded: bool,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// `cargo xtask demo` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// Pretrained weights (a torchvision `.pth` or timm `.safetensors`) instead of a seeded
    /// backbone; none can be downloaded offline.
    #[arg(long, value_name = "FILE")]
    pub(crate) weights: Option<PathBuf>,
    /// The loopback server drops the connection N times during the download, so the demo shows
    /// the download resuming where it broke.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) drop_connections: u32,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// One stage of a chain, as the runner sees it.
#[derive(Debug, Clone)]
struct Step {
    /// The name `--from`, `--to`, `--config` and `--set` use (`weights` for the weights download).
    name: &'static str,
    /// The stage it runs (`fetch` for `weights`): the stage its manifest names and, as
    /// `retrain-<stage>`, its binary.
    stage: &'static str,
    /// False for stages whose crate has not landed yet: the chain stops before them.
    built: bool,
    /// The directory holding the stage's `manifest.json`.
    dir: PathBuf,
    /// What `--out` names: `dir` itself, or a file in it (fetch).
    out: PathBuf,
    /// The flag that names `out` (`out`; `run` for train and eval).
    out_flag: &'static str,
    /// A subcommand of the stage's binary to run (`retrain-tfrecord build`).
    subcommand: Option<&'static str>,
    /// Input paths by flag name.
    inputs: BTreeMap<String, PathBuf>,
    /// Parameters by flag name: passed to the stage and compared with its manifest.
    params: BTreeMap<String, String>,
    /// Settings by flag name: passed to the stage, not compared (they never change its outputs).
    settings: BTreeMap<String, String>,
    /// Fills in parameters that depend on an earlier stage's outputs, once that stage has run.
    resolve: Option<fn(&mut Step, &Path) -> anyhow::Result<()>>,
    /// A file to serve on 127.0.0.1 while the stage runs; its URL is passed as `--url` (not a
    /// parameter: the port changes every time, the content is pinned by digest).
    serve: Option<PathBuf>,
    /// How many times that server drops the connection mid-body before serving normally.
    drops: u32,
}

impl Step {
    fn new(name: &'static str, built: bool, dir: PathBuf) -> Self {
        Self {
            name,
            stage: name,
            built,
            out: dir.clone(),
            out_flag: "out",
            dir,
            subcommand: None,
            inputs: BTreeMap::new(),
            params: BTreeMap::new(),
            settings: BTreeMap::new(),
            resolve: None,
            serve: None,
            drops: 0,
        }
    }

    /// The `retrain-*` binary and its package.
    fn binary(&self) -> (String, &'static str) {
        let binary = format!("retrain-{}", self.stage);
        // train and eval are binaries of the retrain-train package.
        let package = match self.stage {
            "synth" => "retrain-synth",
            "fetch" => "retrain-fetch",
            "extract" => "retrain-extract",
            "sort" => "retrain-sort",
            "tfrecord" => "retrain-tfrecord",
            _ => "retrain-train",
        };
        (binary, package)
    }

    fn param(mut self, flag: &str, value: &str) -> Self {
        self.params.insert(flag.to_owned(), value.to_owned());
        self
    }

    fn input(mut self, flag: &str, path: PathBuf) -> Self {
        self.inputs.insert(flag.to_owned(), path);
        self
    }
}

/// What `--config`/`--set` may give a stage besides its default parameters.
#[derive(Debug, Clone, Copy)]
struct Accepts {
    /// Parameters the stage records in its manifest.
    params: &'static [&'static str],
    /// Settings that cannot change its outputs.
    settings: &'static [&'static str],
    /// Optional input files.
    inputs: &'static [&'static str],
}

/// Every flag of each stage's binary that a chain may set (the rest are the paths the runner
/// wires). A test checks each against the binary's `--help`.
fn accepts(stage: &str) -> Accepts {
    match stage {
        "synth" => Accepts {
            params: &[
                "dataset",
                "images-per-batch",
                "seed",
                "collisions",
                "gzip-level",
            ],
            settings: &[],
            inputs: &[],
        },
        "fetch" => Accepts {
            params: &["url", "sha256", "md5", "size"],
            settings: &[
                "retries",
                "retry-delay-ms",
                "read-timeout-secs",
                "connect-timeout-secs",
                "max-redirects",
            ],
            inputs: &[],
        },
        "extract" => Accepts {
            params: &["max-bytes"],
            settings: &[],
            inputs: &["member-digests"],
        },
        "sort" => Accepts {
            params: &[],
            settings: &["threads"],
            inputs: &[],
        },
        "tfrecord" => Accepts {
            params: &["train-shards", "validation-shards", "seed"],
            settings: &["threads"],
            inputs: &[],
        },
        "train" => Accepts {
            params: &[
                "trainable",
                "size",
                "batch-size",
                "epochs",
                "max-steps",
                "optimizer",
                "lr",
                "lr-decay",
                "epochs-per-decay",
                "label-smoothing",
                "aux-weight",
                "weight-decay",
                "bn-decay",
                "dropout",
                "seed",
                "shuffle-buffer",
            ],
            settings: &[
                "threads",
                "log-every",
                "checkpoint-every",
                "cache",
                "extract-batch",
                "device",
            ],
            inputs: &[],
        },
        "eval" => Accepts {
            params: &["size", "batch-size"],
            settings: &["threads", "device"],
            inputs: &[],
        },
        _ => Accepts {
            params: &[],
            settings: &[],
            inputs: &[],
        },
    }
}

/// What happened to a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ran,
    UpToDate,
}

/// What a run did, stage by stage.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) stages: Vec<(String, Outcome)>,
}

/// Whether the sort and tfrecord stages have landed.
const SORT_BUILT: bool = true;
const TFRECORD_BUILT: bool = true;

/// The archive's file name for a dataset.
fn archive_name(dataset: &str) -> &'static str {
    if dataset == "cifar100" {
        "cifar-100-python.tar.gz"
    } else {
        "cifar-10-python.tar.gz"
    }
}

/// The folder a dataset's archive holds its batches in.
fn batches_folder(dataset: &str) -> &'static str {
    if dataset == "cifar100" {
        "cifar-100-python"
    } else {
        "cifar-10-batches-py"
    }
}

/// `retrain-tfrecord build` of the class folders in `images` (the layout retrain-sort writes)
/// into `tfrecords/`.
fn tfrecord_step(workdir: &Path, images: &Path) -> Step {
    let mut tfrecord = Step::new("tfrecord", TFRECORD_BUILT, workdir.join("tfrecords"))
        .input("train-dir", images.join("train_dir"))
        .input("validation-dir", images.join("validation_dir"))
        .input("labels", images.join("labels.txt"))
        .param("seed", "12345");
    tfrecord.subcommand = Some("build");
    tfrecord
}

/// The stages after the download, shared by `pipeline` and `demo`.
fn after_download(workdir: &Path, dataset: &str, archive: PathBuf) -> Vec<Step> {
    let images = workdir.join("images");
    let tfrecord = tfrecord_step(workdir, &images);
    vec![
        Step::new("extract", true, workdir.join("raw"))
            .input("archive", archive)
            .param("dataset", dataset),
        Step::new("sort", SORT_BUILT, images)
            .input("input", workdir.join("raw").join(batches_folder(dataset)))
            .param("dataset", dataset)
            .param("labels", "fine"),
        tfrecord,
    ]
}

/// The chain for a user's class folders: tfrecord straight from them (then train and eval).
fn own_images(workdir: &Path, images: &Path) -> anyhow::Result<Vec<Step>> {
    for part in ["train_dir", "validation_dir", "labels.txt"] {
        if !images.join(part).exists() {
            bail!(
                "--images {}: no {part} (expected train_dir/<class>/*, validation_dir/<class>/* and labels.txt)",
                images.display()
            );
        }
    }
    Ok(vec![tfrecord_step(workdir, images)])
}

/// A run name from a folder's name (`my-photos`), `images` when it has none.
fn run_name_of(images: &Path) -> String {
    images
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "images".into())
}

/// torchvision's Inception-v3 weights: the file `retrain-fetch --weights inception_v3` downloads.
const TORCHVISION_WEIGHTS: &str = "inception_v3_google-0cc3c7bd.pth";

/// The `weights` stage: `retrain-fetch --weights inception_v3` into `weights/`.
fn weights_download(workdir: &Path) -> (Step, PathBuf) {
    let dir = workdir.join("weights");
    let file = dir.join(TORCHVISION_WEIGHTS);
    let mut step = Step::new("weights", true, dir).param("weights", "inception_v3");
    step.stage = "fetch";
    step.out = file.clone();
    (step, file)
}

/// Train and eval of run `name`: `train` writes `runs/<name>`, starting from `weights` (or a
/// seeded initialisation without), `eval` writes `runs/<name>/eval`, pinned to the model the
/// training manifest recorded.
fn train_and_eval(
    workdir: &Path,
    name: &str,
    weights: Option<PathBuf>,
    train_params: &[(&str, &str)],
) -> Vec<Step> {
    let run = workdir.join("runs").join(name);
    let mut train =
        Step::new("train", true, run.clone()).input("tfrecords", workdir.join("tfrecords"));
    train = match weights {
        Some(file) => train.input("weights", file),
        None => train.param("init", "seeded"),
    };
    train.out_flag = "run";
    for (flag, value) in train_params {
        train = train.param(flag, value);
    }
    let mut eval = Step::new("eval", true, run.join("eval"))
        .input("tfrecords", workdir.join("tfrecords"))
        .param("batch-size", "50");
    eval.out = run;
    eval.out_flag = "run";
    eval.resolve = Some(|step, _| {
        let manifest = retrain_stage::Manifest::read(&step.out)?
            .with_context(|| format!("no training manifest in {}", step.out.display()))?;
        let digest = manifest
            .outputs
            .get("model.safetensors")
            .with_context(|| format!("{}: no model recorded", step.out.display()))?;
        step.params
            .insert("model-sha256".into(), digest.sha256.clone());
        Ok(())
    });
    vec![train, eval]
}

pub(crate) fn pipeline(args: &PipelineArgs) -> anyhow::Result<Report> {
    let workdir = args
        .run
        .workdir
        .clone()
        .unwrap_or_else(|| workspace_root().join("data"));
    let (mut steps, run_name) = match &args.images {
        Some(images) => (own_images(&workdir, images)?, run_name_of(images)),
        None => {
            let downloads = workdir.join("downloads");
            let archive = downloads.join(archive_name(&args.dataset));
            let mut fetch = Step::new("fetch", true, downloads).param("dataset", &args.dataset);
            fetch.out = archive.clone();
            let mut steps = vec![fetch];
            steps.extend(after_download(&workdir, &args.dataset, archive));
            (steps, args.dataset.clone())
        }
    };
    // torchvision's ImageNet weights by default; a local file, or none (seeded) on request.
    let weights = match (&args.weights, args.seeded) {
        (Some(file), _) => Some(
            std::path::absolute(file).with_context(|| format!("--weights {}", file.display()))?,
        ),
        (None, true) => None,
        (None, false) => {
            let (step, file) = weights_download(&workdir);
            steps.insert(0, step);
            Some(file)
        }
    };
    steps.extend(train_and_eval(
        &workdir,
        &run_name,
        weights,
        &[
            ("trainable", "head"),
            ("size", "299"),
            ("epochs", "10"),
            ("seed", "0"),
        ],
    ));
    run_chain(&workdir, steps, &args.run)
}

pub(crate) fn demo(demo: &DemoArgs) -> anyhow::Result<Report> {
    let args = &demo.run;
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| workspace_root().join("data").join("demo"));
    let synth_dir = workdir.join("synth");
    let synth = Step::new("synth", true, synth_dir.clone())
        .param("dataset", "cifar10")
        .param("images-per-batch", "1000")
        .param("seed", "0")
        .param("collisions", "2")
        .param("gzip-level", "6");
    let downloads = workdir.join("downloads");
    let archive = downloads.join(archive_name("cifar10"));
    let mut fetch = Step::new("fetch", true, downloads);
    fetch.out = archive.clone();
    fetch.serve = Some(synth_dir.join(archive_name("cifar10")));
    fetch.drops = demo.drop_connections;
    // The download is pinned to the digest the generator recorded.
    fetch.resolve = Some(|step, workdir| {
        let synth_dir = workdir.join("synth");
        let manifest = retrain_stage::Manifest::read(&synth_dir)?
            .with_context(|| format!("no manifest in {}", synth_dir.display()))?;
        let digest = manifest
            .outputs
            .get(archive_name("cifar10"))
            .with_context(|| format!("{}: no archive recorded", synth_dir.display()))?;
        step.params.insert("sha256".into(), digest.sha256.clone());
        step.params.insert("size".into(), digest.bytes.to_string());
        Ok(())
    });
    let mut steps = vec![synth, fetch];
    let mut rest = after_download(&workdir, "cifar10", archive.clone());
    rest[0] = rest[0]
        .clone()
        .input("member-digests", synth_dir.join("members.md5"));
    steps.extend(rest);
    // Head-only at 75×75 from a seeded backbone (no weights offline): a few minutes on 2 cores.
    let weights = match &demo.weights {
        Some(file) => Some(
            std::path::absolute(file).with_context(|| format!("--weights {}", file.display()))?,
        ),
        None => None,
    };
    steps.extend(train_and_eval(
        &workdir,
        "demo",
        weights,
        &[
            ("trainable", "head"),
            ("size", "75"),
            ("epochs", "20"),
            ("batch-size", "100"),
            ("lr", "0.01"),
            ("seed", "0"),
        ],
    ));
    let report = run_chain(&workdir, steps, args)?;
    eprintln!("demo: artifacts in {}:", workdir.display());
    for (path, what) in [
        (
            synth_dir.join(archive_name("cifar10")),
            "synthetic CIFAR-10 archive",
        ),
        (archive, "downloaded over loopback and verified"),
        (workdir.join("raw/cifar-10-batches-py"), "extracted batches"),
        (
            workdir.join("images"),
            "class folders of PNGs and labels.txt",
        ),
        (workdir.join("tfrecords"), "TFRecord shards"),
        (workdir.join("bottlenecks"), "cached bottlenecks"),
        (
            workdir.join("runs/demo/model.safetensors"),
            "the trained model",
        ),
        (workdir.join("runs/demo/metrics.jsonl"), "training metrics"),
        (workdir.join("runs/demo/loss.png"), "loss curve"),
        (
            workdir.join("runs/demo/train"),
            "TensorBoard events (training)",
        ),
        (
            workdir.join("runs/demo/eval/metrics.json"),
            "precision@1, recall@5, per class",
        ),
        (
            workdir.join("runs/demo/eval/confusion.png"),
            "confusion matrix",
        ),
    ] {
        if path.exists() {
            eprintln!("  {:<45} {}", path.display().to_string(), what);
        }
    }
    let runs = workdir.join("runs");
    if runs.join("demo/model.safetensors").exists() {
        eprintln!("  tensorboard --logdir {}", runs.display());
        let example = first_image(&workdir.join("images/validation_dir"));
        eprintln!(
            "  try: cargo run --release -p retrain-train --bin retrain-predict -- --model {} {}",
            runs.join("demo").display(),
            example.map_or_else(|| "IMAGE.png".into(), |p| p.display().to_string())
        );
    }
    Ok(report)
}

/// The first image (in name order) of the first class folder under `dir`.
fn first_image(dir: &Path) -> Option<PathBuf> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    classes.sort();
    let mut images: Vec<PathBuf> = std::fs::read_dir(classes.first()?)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    images.sort();
    images.into_iter().next()
}

/// Applies `--config` and `--set` to the steps' default parameters. Unknown stages or flags are
/// errors, so a typo never silently runs with defaults.
fn apply_overrides(steps: &mut [Step], args: &RunArgs) -> anyhow::Result<()> {
    let mut assignments: Vec<(String, String, String, String)> = Vec::new();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (stage, values) in table {
            let toml::Value::Table(values) = values else {
                bail!(
                    "{}: `{stage}` must be a table of that stage's parameters",
                    path.display()
                );
            };
            for (flag, value) in values {
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!(
                        "{}: {stage}.{flag} = {other}: expected a string, number or boolean",
                        path.display()
                    ),
                };
                assignments.push((stage.clone(), flag, value, path.display().to_string()));
            }
        }
    }
    for set in &args.overrides {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected STAGE.FLAG=VALUE"))?;
        let (stage, flag) = key
            .split_once('.')
            .with_context(|| format!("--set {set}: expected STAGE.FLAG=VALUE"))?;
        assignments.push((stage.into(), flag.into(), value.into(), "--set".into()));
    }
    for (stage, flag, value, origin) in assignments {
        let Some(step) = steps.iter_mut().find(|s| s.name == stage) else {
            bail!("{origin}: no stage `{stage}` in this chain");
        };
        if !step.built {
            bail!("{origin}: stage `{stage}` is not built yet, so it takes no parameters");
        }
        let accepts = accepts(step.stage);
        if let Some(slot) = step.params.get_mut(&flag) {
            *slot = value;
        } else if accepts.params.contains(&flag.as_str()) {
            step.params.insert(flag, value);
        } else if accepts.settings.contains(&flag.as_str()) {
            step.settings.insert(flag, value);
        } else if accepts.inputs.contains(&flag.as_str()) {
            let path = std::path::absolute(&value)
                .with_context(|| format!("{origin}: {stage}.{flag} = {value}"))?;
            step.inputs.insert(flag, path);
        } else {
            let mut known: Vec<&str> = step.params.keys().map(String::as_str).collect();
            for flag in [accepts.params, accepts.settings, accepts.inputs].concat() {
                if !known.contains(&flag) {
                    known.push(flag);
                }
            }
            bail!("{origin}: stage `{stage}` has no parameter `{flag}` (it has {known:?})");
        }
    }
    Ok(())
}

fn position(steps: &[Step], name: &str, flag: &str) -> anyhow::Result<usize> {
    steps.iter().position(|s| s.name == name).with_context(|| {
        let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
        format!(
            "--{flag} {name}: no such stage (stages: {})",
            names.join(", ")
        )
    })
}

fn run_chain(workdir: &Path, mut steps: Vec<Step>, args: &RunArgs) -> anyhow::Result<Report> {
    apply_overrides(&mut steps, args)?;
    let first = match &args.from {
        Some(name) => position(&steps, name, "from")?,
        None => 0,
    };
    let last = match &args.to {
        Some(name) => position(&steps, name, "to")?,
        None => steps.len() - 1,
    };
    if first > last {
        bail!("--from comes after --to");
    }
    std::fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let pending: Vec<&str> = steps[first..=last]
        .iter()
        .filter(|s| !s.built)
        .map(|s| s.name)
        .collect();
    let mut report = Report { stages: Vec::new() };
    for step in &mut steps[first..=last] {
        if !step.built {
            if report.stages.is_empty() {
                bail!(
                    "stage `{}` has not been built yet (pending: {}); `cargo xtask demo` runs the stages that exist",
                    step.name,
                    pending.join(", ")
                );
            }
            eprintln!(
                "pipeline: stopping before `{}`: not built yet (pending: {})",
                step.name,
                pending.join(", ")
            );
            break;
        }
        if let Some(resolve) = step.resolve {
            resolve(step, workdir).with_context(|| format!("preparing stage `{}`", step.name))?;
        }
        let outcome = run_step(step, args.force)?;
        report.stages.push((step.name.to_owned(), outcome));
    }
    Ok(report)
}

fn run_step(step: &Step, force: bool) -> anyhow::Result<Outcome> {
    let freshness = retrain_stage::freshness(&step.dir, step.stage, &step.params, &step.inputs)
        .with_context(|| format!("checking whether stage `{}` is up to date", step.name))?;
    match (&freshness, force) {
        (Freshness::UpToDate, false) => {
            eprintln!(
                "pipeline: {}: up to date ({} matches), skipped",
                step.name,
                step.dir.join(retrain_stage::FILE_NAME).display()
            );
            return Ok(Outcome::UpToDate);
        }
        (Freshness::UpToDate, true) => eprintln!("pipeline: {}: --force, running", step.name),
        (Freshness::Stale(reason), _) => {
            eprintln!("pipeline: {}: running ({reason})", step.name);
        }
    }
    let (binary, package) = step.binary();
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        package,
        "--bin",
        &binary,
        "--",
    ]);
    cmd.args(step.subcommand);
    cmd.arg(format!("--{}", step.out_flag)).arg(&step.out);
    for (flag, path) in &step.inputs {
        cmd.arg(format!("--{flag}")).arg(path);
    }
    for (flag, value) in step.params.iter().chain(&step.settings) {
        cmd.arg(format!("--{flag}={value}"));
    }
    // Held until the stage has finished; dropping it stops the server.
    let _server = match &step.serve {
        Some(file) => {
            let server = LoopbackServer::start(file, step.drops)?;
            eprintln!(
                "pipeline: {}: serving {} at {}",
                step.name,
                file.display(),
                server.url
            );
            cmd.arg("--url").arg(&server.url);
            Some(server)
        }
        None => None,
    };
    let status = cmd
        .status()
        .with_context(|| format!("starting {package}"))?;
    if !status.success() {
        bail!("stage `{}` failed ({status})", step.name);
    }
    // The stage must have written a manifest that matches what we asked for.
    match retrain_stage::freshness(&step.dir, step.stage, &step.params, &step.inputs)? {
        Freshness::UpToDate => Ok(Outcome::Ran),
        Freshness::Stale(reason) => bail!(
            "stage `{}` finished but its manifest does not match the run: {reason}",
            step.name
        ),
    }
}

/// A `retrain-serve` process serving one file on 127.0.0.1; stopped when dropped (its stdin closes,
/// and it is killed if it lingers).
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    child: Child,
    pub(crate) url: String,
}

impl LoopbackServer {
    /// Serves `file`; the first `drops` answers break off mid-body (each after an equal share of
    /// what is left), the rest are whole.
    pub(crate) fn start(file: &Path, drops: u32) -> anyhow::Result<Self> {
        let size = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let share = size / (u64::from(drops) + 1);
        let mut child = cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "--locked",
                "-p",
                "retrain-serve",
                "--",
            ])
            .arg("--file")
            .arg(file)
            .arg("--until-stdin-closes")
            .args((0..drops).flat_map(|_| ["--drop-after".to_owned(), share.to_string()]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting retrain-serve")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut url = String::new();
        BufReader::new(stdout)
            .read_line(&mut url)
            .context("reading retrain-serve's URL")?;
        let url = url.trim().to_owned();
        if !url.starts_with("http://127.0.0.1:") {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("retrain-serve did not start ({status})");
        }
        Ok(Self { child, url })
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![
            Step::new("synth", true, PathBuf::from("out"))
                .param("seed", "0")
                .param("images-per-batch", "10"),
        ]
    }

    fn args(overrides: &[&str], config: Option<PathBuf>) -> RunArgs {
        RunArgs {
            workdir: None,
            from: None,
            to: None,
            force: false,
            config,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flags_override_the_config_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("xtask-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("pipeline.toml");
        std::fs::write(&config, "[synth]\nseed = 3\nimages-per-batch = 20\n").unwrap();
        let mut steps = steps();
        apply_overrides(&mut steps, &args(&["synth.seed=4"], Some(config))).unwrap();
        assert_eq!(steps[0].params["seed"], "4");
        assert_eq!(steps[0].params["images-per-batch"], "20");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn settings_are_passed_but_not_compared_and_optional_flags_join_the_parameters() {
        let mut steps = vec![Step::new("train", true, PathBuf::from("run")).param("size", "75")];
        let overrides = [
            "train.threads=1",
            "train.max-steps=5",
            "train.size=139",
            "train.lr=1e-2",
        ];
        apply_overrides(&mut steps, &args(&overrides, None)).unwrap();
        let step = &steps[0];
        assert_eq!(step.settings["threads"], "1");
        assert!(!step.params.contains_key("threads"));
        assert_eq!(step.params["max-steps"], "5");
        assert_eq!(step.params["size"], "139");
        assert_eq!(step.params["lr"], "1e-2");
        let err = apply_overrides(&mut steps, &args(&["train.tfrecords=x"], None)).unwrap_err();
        assert!(
            err.to_string().contains("has no parameter `tfrecords`"),
            "{err}"
        );
    }

    #[test]
    fn the_weights_stage_is_a_fetch_and_takes_a_url() {
        let (mut step, file) = weights_download(Path::new("work"));
        assert_eq!((step.name, step.stage), ("weights", "fetch"));
        assert_eq!(step.binary(), ("retrain-fetch".to_owned(), "retrain-fetch"));
        assert_eq!(file, Path::new("work/weights").join(TORCHVISION_WEIGHTS));
        let mut steps = vec![step.clone()];
        apply_overrides(
            &mut steps,
            &args(&["weights.url=http://127.0.0.1:1/w.pth"], None),
        )
        .unwrap();
        step = steps.remove(0);
        assert_eq!(step.params["url"], "http://127.0.0.1:1/w.pth");
        assert_eq!(step.params["weights"], "inception_v3");
    }

    /// Every flag a chain may set exists in the stage's binary (builds them in release).
    #[test]
    fn every_accepted_flag_is_a_flag_of_its_stage() {
        for (stage, subcommand) in [
            ("synth", None),
            ("fetch", None),
            ("extract", None),
            ("sort", None),
            ("tfrecord", Some("build")),
            ("train", None),
            ("eval", None),
        ] {
            let (binary, package) = Step::new(stage, true, PathBuf::new()).binary();
            let out = cargo()
                .args(["run", "--quiet", "--release", "--locked", "-p", package])
                .args(["--bin", &binary, "--"])
                .args(subcommand)
                .arg("--help")
                .output()
                .unwrap();
            assert!(out.status.success(), "{binary} --help failed");
            let help = String::from_utf8(out.stdout).unwrap();
            let accepts = accepts(stage);
            for flag in [accepts.params, accepts.settings, accepts.inputs].concat() {
                assert!(
                    help.contains(&format!("--{flag} <")),
                    "{binary} has no --{flag}:\n{help}"
                );
            }
        }
    }

    #[test]
    fn unknown_stages_and_parameters_are_errors() {
        let err = apply_overrides(&mut steps(), &args(&["synth.sed=4"], None)).unwrap_err();
        assert!(err.to_string().contains("has no parameter `sed`"), "{err}");
        let err = apply_overrides(&mut steps(), &args(&["train.seed=4"], None)).unwrap_err();
        assert!(err.to_string().contains("no stage `train`"), "{err}");
        let err = apply_overrides(&mut steps(), &args(&["seed"], None)).unwrap_err();
        assert!(
            err.to_string().contains("expected STAGE.FLAG=VALUE"),
            "{err}"
        );
    }
}
