//! The training loop: `--trainable head` (the retrain.py way: frozen backbone, cached
//! bottlenecks, a new `fc`) and `--trainable all` (the TF recipe: every layer, augmentation, aux
//! logits, label smoothing, weight decay, batch norm in training mode).

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use candle_core::{D, DType, Device, Tensor, Var};
use rand::{SeedableRng as _, seq::SliceRandom as _};
use rand_chacha::ChaCha8Rng;
use retrain_inception::{FEATURES, MIN_AUX_INPUT, MIN_INPUT, Model};
pub use retrain_stage::now_utc;
use retrain_stage::{Manifest, Reporter};
use serde::{Deserialize, Serialize};

use crate::{
    augment::TrainAugment,
    bottleneck::{self, Bottlenecks, Extract},
    checkpoint::{self, Meta},
    data::{Dataset, Split},
    loader::{Loader, LoaderConfig, Order, Transform},
    loss,
    optim::{LrSchedule, Optimizer, OptimizerKind},
    plot,
};

/// Files of a run directory.
pub mod files {
    pub const MODEL: &str = "model.safetensors";
    pub const MODEL_CARD: &str = "model.json";
    pub const LABELS: &str = "labels.txt";
    pub const METRICS: &str = "metrics.jsonl";
    pub const LOSS_PNG: &str = "loss.png";
    pub const CHECKPOINTS: &str = "checkpoints";
    pub const TRAIN_EVENTS: &str = "train";
    pub const CONFIG: &str = "train-config.json";
}

/// The stage name in manifests.
pub const STAGE: &str = "train";

/// Which layers train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Only a new `fc`, on cached bottlenecks (the backbone is frozen).
    Head,
    /// Every layer, batch norm in training mode.
    All,
}

/// Where the starting weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// torchvision `.pth` or timm safetensors; the classifier is re-created for N classes.
    Weights(PathBuf),
    /// A seeded initialisation: "no pretrained weights".
    Seeded,
}

/// Everything a training run is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The TFRecord directory (`train-*` shards; `labels.txt` beside them or `labels`).
    pub tfrecords: PathBuf,
    /// Class names, one per line [default: `<tfrecords>/labels.txt`, else `image/class/text`].
    pub labels: Option<PathBuf>,
    /// The run directory (`runs/<name>`).
    pub run: PathBuf,
    pub init: Init,
    pub trainable: Trainable,
    /// Input size (H = W), at least 75.
    pub size: usize,
    pub batch_size: usize,
    /// Stop after this many epochs …
    pub epochs: u64,
    /// … or after this many steps, if given.
    pub max_steps: Option<u64>,
    pub optimizer: OptimizerKind,
    pub lr: LrSchedule,
    pub label_smoothing: f64,
    pub aux_weight: f64,
    /// slim-style L2 (`wd·Σw²/2` on conv and fc weights); AdamW uses its own decoupled decay.
    pub weight_decay: f64,
    /// Batch-norm moving-average decay (TF convention; PyTorch momentum = 1 − decay).
    pub bn_decay: f64,
    /// Dropout probability before `fc`.
    pub dropout: f32,
    pub seed: u64,
    /// Decoding threads (0: every core).
    pub threads: usize,
    /// Shuffle buffer (examples) of `--trainable all`.
    pub shuffle_buffer: usize,
    /// Log, summarise and record metrics every N steps.
    pub log_every: u64,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Continue from the newest checkpoint in the run directory.
    pub resume: bool,
    /// Bottleneck cache directory.
    pub cache_dir: PathBuf,
    /// Images per forward pass when computing bottlenecks.
    pub extract_batch: usize,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
}

impl Config {
    /// The recipe's defaults for `--trainable`.
    pub fn new(tfrecords: PathBuf, run: PathBuf, trainable: Trainable) -> Self {
        let cache_dir = tfrecords
            .parent()
            .map_or_else(|| PathBuf::from("bottlenecks"), |p| p.join("bottlenecks"));
        Self {
            tfrecords,
            labels: None,
            run,
            init: Init::Seeded,
            trainable,
            size: 299,
            batch_size: match trainable {
                Trainable::Head => 100,
                Trainable::All => 32,
            },
            epochs: 10,
            max_steps: None,
            optimizer: OptimizerKind::rmsprop(),
            lr: LrSchedule::default(),
            label_smoothing: 0.1,
            aux_weight: 0.4,
            weight_decay: 4e-5,
            bn_decay: 0.9997,
            // retrain.py trains a plain softmax layer on the bottlenecks; the TF recipe keeps
            // 80 % before the logits.
            dropout: match trainable {
                Trainable::Head => 0.0,
                Trainable::All => 0.2,
            },
            seed: 0,
            threads: 0,
            shuffle_buffer: 10_000,
            log_every: 10,
            checkpoint_every: 0,
            resume: false,
            cache_dir,
            extract_batch: 32,
            device: "cpu".into(),
        }
    }

    /// The network these settings train: `n_classes` outputs, the aux head or not, the dropout,
    /// and the batch-norm decay as PyTorch's momentum.
    fn network(&self, n_classes: usize, aux_logits: bool) -> retrain_inception::Config {
        retrain_inception::Config {
            num_classes: n_classes,
            aux_logits,
            dropout: self.dropout,
            bn_momentum: 1.0 - self.bn_decay,
        }
    }

    /// The settings that decide the numbers (not how long to run, nor where to log): a resumed
    /// run must have the same. Paths are replaced by what they hold (`data`, the training shards'
    /// digest; the weights' file name), so a checkpoint's bytes do not depend on where the run
    /// was made.
    fn identity(&self, data: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serialisable");
        if let Some(map) = v.as_object_mut() {
            map.insert("data".into(), data.into());
            map.insert("init".into(), init_name(&self.init).into());
            for key in [
                "tfrecords",
                "labels",
                "epochs",
                "max_steps",
                "resume",
                "threads",
                "log_every",
                "checkpoint_every",
                "cache_dir",
                "device",
                "extract_batch",
                "run",
            ] {
                map.remove(key);
            }
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    #[error(transparent)]
    Loader(Box<crate::loader::Error>),
    #[error(transparent)]
    Bottleneck(Box<bottleneck::Error>),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error(transparent)]
    Model(#[from] retrain_inception::Error),
    #[error(transparent)]
    Optimizer(#[from] crate::optim::Error),
    #[error(transparent)]
    Plot(#[from] crate::plot::Error),
    #[error(transparent)]
    Stage(#[from] retrain_stage::Error),
    #[error("training step {step}: {source}")]
    Compute {
        step: u64,
        #[source]
        source: candle_core::Error,
    },
    #[error(
        "the loss is {loss} at step {step} (learning rate {lr:e}): training diverged; lower --lr or check the data"
    )]
    NotFinite { step: u64, loss: f32, lr: f64 },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "cannot resume from {}: it was written with other settings ({what}); start a new run or pass the same settings",
        path.display()
    )]
    ResumeMismatch { path: PathBuf, what: String },
}

impl From<crate::loader::Error> for Error {
    fn from(e: crate::loader::Error) -> Self {
        Self::Loader(Box::new(e))
    }
}

impl Error {
    /// Whether the run stopped on request (Ctrl-C) before training began.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Error::Bottleneck(b) if matches!(**b, bottleneck::Error::Interrupted { .. }))
    }
}

impl From<bottleneck::Error> for Error {
    fn from(e: bottleneck::Error) -> Self {
        Self::Bottleneck(Box::new(e))
    }
}

fn compute(step: u64) -> impl FnOnce(candle_core::Error) -> Error {
    move |source| Error::Compute { step, source }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reached its last step; the model is exported.
    Finished { steps: u64, loss: f32 },
    /// Stopped on request (Ctrl-C) after writing a checkpoint.
    Interrupted { steps: u64, checkpoint: PathBuf },
}

/// One logged step: a line of `metrics.jsonl` (no wall times, so the file is reproducible).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: u64,
    pub epoch: u64,
    pub loss: f32,
    pub learning_rate: f64,
    /// Top-1 accuracy of the step's batch.
    pub accuracy: f32,
}

/// What `model.json` says about an exported model: what eval and predict need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub size: usize,
    pub num_classes: usize,
    pub steps: u64,
    pub trainable: Trainable,
    /// `pretrained` (with the file name) or `no pretrained weights`.
    pub init: String,
}

/// Trains as `cfg` says; `cancel` set (by Ctrl-C) stops at the next step with a checkpoint.
pub fn run(
    cfg: &Config,
    cancel: &AtomicBool,
    rep: &dyn Reporter,
) -> Result<(Outcome, Option<Manifest>), Error> {
    validate(cfg)?;
    let device = retrain_inception::device(&cfg.device)?;
    let dataset = Arc::new(Dataset::open(
        &cfg.tfrecords,
        Split::Train,
        cfg.labels.as_deref(),
    )?);
    if dataset.is_empty() {
        return Err(Error::Invalid {
            path: cfg.tfrecords.clone(),
            what: "no training examples (train-* shards)".into(),
        });
    }
    let n_classes = dataset.n_classes();
    let aux = cfg.trainable == Trainable::All && cfg.size >= MIN_AUX_INPUT;
    if cfg.trainable == Trainable::All && !aux {
        tracing::info!(
            "aux logits off: the aux head needs Mixed_6e of at least 17×17, an input of at least {MIN_AUX_INPUT} (this run: {})",
            cfg.size
        );
    }
    let net_cfg = cfg.network(n_classes, aux);
    let model = match &cfg.init {
        Init::Weights(path) => {
            let (model, report) = Model::load(&net_cfg, path, cfg.seed, &device)?;
            tracing::info!(
                weights = %path.display(),
                loaded = report.loaded,
                "pretrained weights; re-initialised for {n_classes} classes: {}",
                report.reinitialised.join(", ")
            );
            let fresh: Vec<&str> = report
                .reinitialised
                .iter()
                .filter(|n| n.ends_with("fc.weight"))
                .map(|n| n.trim_end_matches(".weight"))
                .collect();
            init_classifiers(&model, &fresh, cfg.seed).map_err(compute(0))?;
            model
        }
        Init::Seeded => {
            tracing::info!(
                "no pretrained weights: seeded initialisation (seed {})",
                cfg.seed
            );
            let model = Model::new(&net_cfg, cfg.seed, &device)?;
            calibrate_batch_norm(&model, &net_cfg, &dataset, cfg, &device)?;
            let classifiers: &[&str] = if aux {
                &["fc", "AuxLogits.fc"]
            } else {
                &["fc"]
            };
            init_classifiers(&model, classifiers, cfg.seed).map_err(compute(0))?;
            model
        }
    };
    let run_dir = &cfg.run;
    std::fs::create_dir_all(run_dir.join(files::CHECKPOINTS)).map_err(|source| Error::Write {
        path: run_dir.clone(),
        source,
    })?;
    // A rerun replaces the run's artifacts: the manifest goes first, so a half-finished run is
    // never taken for a finished one.
    Manifest::remove(run_dir)?;

    let source = match cfg.trainable {
        Trainable::Head => {
            let cache = Extract {
                cache_dir: cfg.cache_dir.clone(),
                size: cfg.size,
                batch_size: cfg.extract_batch,
                threads: cfg.threads,
            };
            let bottlenecks =
                bottleneck::compute_or_load(&model, dataset.clone(), &cache, cancel, rep)?;
            Source::Head(HeadData::from(bottlenecks))
        }
        Trainable::All => Source::Images(dataset.clone()),
    };
    let data = dataset.digest()?;
    let outcome = fit(
        cfg,
        &data,
        &model,
        &source,
        &dataset.class_names,
        cancel,
        rep,
    )?;
    let Fitted::Finished {
        steps,
        loss,
        checkpoint: last,
        ..
    } = outcome
    else {
        let Fitted::Interrupted { steps, checkpoint } = outcome else {
            unreachable!()
        };
        return Ok((Outcome::Interrupted { steps, checkpoint }, None));
    };
    let mut manifest = Manifest::new(STAGE, env!("CARGO_PKG_VERSION"));
    for (flag, value) in manifest_params(cfg) {
        manifest.param(&flag, value);
    }
    manifest.input("tfrecords", &cfg.tfrecords)?;
    if let Init::Weights(path) = &cfg.init {
        manifest.input("weights", path)?;
    }
    let last_name = format!(
        "{}/{}",
        files::CHECKPOINTS,
        last.file_name().expect("a file").to_string_lossy()
    );
    for out in [
        files::MODEL,
        files::MODEL_CARD,
        files::LABELS,
        files::METRICS,
        files::LOSS_PNG,
        files::CONFIG,
        last_name.as_str(),
    ] {
        manifest.output(run_dir, out)?;
    }
    manifest.write(run_dir)?;
    Ok((Outcome::Finished { steps, loss }, Some(manifest)))
}

/// How [`fit`] ended.
enum Fitted {
    Finished {
        steps: u64,
        loss: f32,
        checkpoint: PathBuf,
        /// Seconds from the end of the first step of this process to the end of the last.
        steady_secs: f64,
        steady_steps: u64,
    },
    Interrupted {
        steps: u64,
        checkpoint: PathBuf,
    },
}

/// The training loop over `source`, from a checkpoint with `--resume`; then the exports
/// (model, labels, model card, loss curve), all but the manifest.
fn fit(
    cfg: &Config,
    data: &str,
    model: &Model,
    source: &Source,
    class_names: &[String],
    cancel: &AtomicBool,
    rep: &dyn Reporter,
) -> Result<Fitted, Error> {
    let run_dir = &cfg.run;
    let device = model.device().clone();
    let n_classes = class_names.len();
    if !cfg.resume {
        // A fresh run into a used directory: an older run's checkpoints and events would be
        // taken for this one's.
        clear_run(run_dir)?;
    }
    let vars = trainable_vars(model, cfg.trainable);
    let mut optimizer = Optimizer::new(cfg.optimizer, vars.clone()).map_err(compute(0))?;
    let mut state = State::default();
    let mut records = Vec::new();
    if cfg.resume {
        if let Some(path) = checkpoint::latest(&run_dir.join(files::CHECKPOINTS))? {
            let ck = checkpoint::load(&path)?;
            if ck.meta.config != cfg.identity(data) {
                return Err(Error::ResumeMismatch {
                    path,
                    what: diff(&ck.meta.config, &cfg.identity(data)),
                });
            }
            for (name, t) in &ck.model {
                model
                    .set_tensor(name, t)
                    .map_err(|source| Error::Compute { step: 0, source })?;
            }
            optimizer.load_state(&ck.optimizer)?;
            state = State {
                step: ck.meta.step,
                epoch: ck.meta.epoch,
                batch_in_epoch: ck.meta.batch_in_epoch,
            };
            records = read_records(&run_dir.join(files::METRICS), state.step)?;
            tracing::info!(checkpoint = %path.display(), step = state.step, "resuming");
        } else {
            tracing::info!(
                "--resume: no checkpoint in {}, starting afresh",
                run_dir.display()
            );
        }
    }
    write_file(&run_dir.join(files::METRICS), &records_jsonl(&records))?;
    write_file(&run_dir.join(files::CONFIG), &recorded_config(cfg))?;

    let n = source.len();
    let per_epoch = (n / cfg.batch_size) as u64;
    if per_epoch == 0 {
        return Err(Error::Config(format!(
            "batch size {} is larger than the {n} training examples",
            cfg.batch_size
        )));
    }
    let total = cfg.max_steps.unwrap_or(cfg.epochs * per_epoch);
    tracing::info!(
        examples = n,
        classes = n_classes,
        steps = total,
        steps_per_epoch = per_epoch,
        "training {:?} at {}×{}, batch {}, {}",
        cfg.trainable,
        cfg.size,
        cfg.size,
        cfg.batch_size,
        cfg.optimizer.name()
    );

    let mut events = retrain_tfrecord::EventWriter::create(&run_dir.join(files::TRAIN_EVENTS))
        .map_err(|e| Error::Invalid {
            path: run_dir.join(files::TRAIN_EVENTS),
            what: e.to_string(),
        })?;
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join(files::METRICS))
        .map_err(|source| Error::Write {
            path: run_dir.join(files::METRICS),
            source,
        })?;
    let decayed: Vec<Tensor> = vars
        .iter()
        .filter(|(name, _)| loss::decays(name))
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    let head = match source {
        Source::Head(_) => {
            let find = |name: &str| {
                vars.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_tensor().clone())
                    .ok_or_else(|| Error::Config(format!("the model has no {name}")))
            };
            Some((find("fc.weight")?, find("fc.bias")?))
        }
        Source::Images(_) => None,
    };
    let l2_weight = match cfg.optimizer {
        OptimizerKind::Adamw { .. } => 0.0,
        _ => cfg.weight_decay,
    };

    rep.start(total.saturating_sub(state.step), "training");
    let mut last_loss = f32::NAN;
    let mut window = Instant::now();
    let mut window_steps = 0u64;
    let mut steady_start: Option<(Instant, u64)> = None;
    'epochs: while state.step < total {
        let batches = source.epoch(cfg, state.epoch, state.batch_in_epoch as usize);
        let mut batches = batches;
        loop {
            if state.step >= total {
                break 'epochs;
            }
            let Some(batch) = batches.next(cfg, &device)? else {
                break;
            };
            let step = state.step;
            let lr = cfg.lr.at(step, cfg.batch_size, n);
            model
                .net()
                .dropout()
                .reseed(stream(cfg.seed, DROPOUT, step));
            let not_finite = |loss: f32| Error::NotFinite {
                step: step + 1,
                loss,
                lr,
            };
            let (logits, loss_value) = match &batch.input {
                Input::Features(idx) => {
                    // The classifier alone: its gradients in closed form, no autograd graph.
                    let (w, b) = head.as_ref().expect("head training has fc vars");
                    let Source::Head(data) = source else {
                        unreachable!("features come from the head source")
                    };
                    let rows: Vec<&[f32]> = idx
                        .iter()
                        .map(|&i| {
                            &data.features[i as usize * FEATURES..(i as usize + 1) * FEATURES]
                        })
                        .collect();
                    let step_seed = stream(cfg.seed, DROPOUT, step);
                    let n_rows = batch.labels.len();
                    let (logits, loss_value, grads) = if device.is_cpu() {
                        head_gradients_cpu(
                            &rows,
                            &batch.labels,
                            (w, b),
                            cfg.label_smoothing,
                            l2_weight,
                            cfg.dropout,
                            step_seed,
                        )
                    } else {
                        Tensor::from_vec(rows.concat(), (n_rows, FEATURES), &device).and_then(|f| {
                            head_gradients(
                                &f,
                                &batch.labels,
                                (w, b),
                                cfg.label_smoothing,
                                l2_weight,
                                cfg.dropout,
                                step_seed,
                            )
                        })
                    }
                    .map_err(compute(step))?;
                    if !loss_value.is_finite() {
                        return Err(not_finite(loss_value));
                    }
                    optimizer.step_named(&grads, lr).map_err(compute(step))?;
                    (logits, loss_value)
                }
                Input::Images(xs) => {
                    model
                        .net()
                        .dropout()
                        .reseed(stream(cfg.seed, DROPOUT, step));
                    let (logits, aux_logits) = model
                        .net()
                        .forward_with_aux(xs, true)
                        .map_err(compute(step))?;
                    let labels = Tensor::from_slice(&batch.labels, batch.labels.len(), &device)
                        .map_err(compute(step))?;
                    let mut total_loss = loss::cross_entropy(&logits, &labels, cfg.label_smoothing)
                        .map_err(compute(step))?;
                    if let Some(aux_logits) = &aux_logits {
                        let aux_loss =
                            loss::cross_entropy(aux_logits, &labels, cfg.label_smoothing)
                                .map_err(compute(step))?;
                        total_loss = (total_loss
                            + (aux_loss * cfg.aux_weight).map_err(compute(step))?)
                        .map_err(compute(step))?;
                    }
                    if let Some(l2) =
                        loss::l2_penalty(&decayed, l2_weight).map_err(compute(step))?
                    {
                        total_loss = (total_loss + l2).map_err(compute(step))?;
                    }
                    let loss_value = total_loss
                        .to_dtype(DType::F32)
                        .and_then(|l| l.to_scalar::<f32>())
                        .map_err(compute(step))?;
                    if !loss_value.is_finite() {
                        return Err(not_finite(loss_value));
                    }
                    let grads = total_loss.backward().map_err(compute(step))?;
                    optimizer.step(&grads, lr).map_err(compute(step))?;
                    (logits, loss_value)
                }
            };
            state.step += 1;
            state.batch_in_epoch += 1;
            last_loss = loss_value;
            window_steps += 1;
            rep.advance(1);
            if steady_start.is_none() {
                steady_start = Some((Instant::now(), state.step));
            }

            if state.step % cfg.log_every == 0 || state.step == total {
                let accuracy = batch_accuracy(&logits, &batch.labels).map_err(compute(step))?;
                let elapsed = window.elapsed().as_secs_f64();
                let sec_per_batch = elapsed / window_steps as f64;
                rep.println(&format!(
                    "{}: step {}, loss = {:.2} ({:.1} examples/sec; {:.3} sec/batch)",
                    now_utc(),
                    state.step,
                    loss_value,
                    cfg.batch_size as f64 / sec_per_batch,
                    sec_per_batch
                ));
                window = Instant::now();
                window_steps = 0;
                let record = Record {
                    step: state.step,
                    epoch: state.epoch,
                    loss: loss_value,
                    learning_rate: lr,
                    accuracy,
                };
                let mut line = serde_json::to_vec(&record).expect("serialisable");
                line.push(b'\n');
                metrics
                    .write_all(&line)
                    .and_then(|()| metrics.flush())
                    .map_err(|source| Error::Write {
                        path: run_dir.join(files::METRICS),
                        source,
                    })?;
                records.push(record);
                events
                    .add_scalars(
                        state.step as i64,
                        &[
                            ("loss", loss_value),
                            ("learning_rate", lr as f32),
                            ("accuracy", accuracy),
                        ],
                    )
                    .map_err(|e| Error::Invalid {
                        path: events.path().to_owned(),
                        what: e.to_string(),
                    })?;
            }
            let interrupted = cancel.load(Ordering::SeqCst);
            if state.batch_in_epoch >= per_epoch {
                state.epoch += 1;
                state.batch_in_epoch = 0;
            }
            let periodic = cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0;
            if periodic || interrupted {
                let path = save_checkpoint(cfg, data, model, &optimizer, &state)?;
                plot_losses(cfg, &records)?;
                if interrupted {
                    rep.finish();
                    tracing::info!(checkpoint = %path.display(), "interrupted at step {}", state.step);
                    return Ok(Fitted::Interrupted {
                        steps: state.step,
                        checkpoint: path,
                    });
                }
            }
            if state.batch_in_epoch == 0 {
                // The epoch ended: the next one starts with its own order.
                continue 'epochs;
            }
        }
        // The source ran dry before `per_epoch` batches (cannot happen with drop_last).
        state.epoch += 1;
        state.batch_in_epoch = 0;
    }
    rep.finish();
    let export_start = Instant::now();
    events.close().map_err(|e| Error::Invalid {
        path: run_dir.join(files::TRAIN_EVENTS),
        what: e.to_string(),
    })?;
    let last = save_checkpoint(cfg, data, model, &optimizer, &state)?;
    checkpoint::prune(&run_dir.join(files::CHECKPOINTS), 1)?;
    plot_losses(cfg, &records)?;
    model.save(&run_dir.join(files::MODEL))?;
    let labels_txt: String = class_names.iter().map(|c| format!("{c}\n")).collect();
    write_file(&run_dir.join(files::LABELS), labels_txt.as_bytes())?;
    let card = ModelCard {
        size: cfg.size,
        num_classes: n_classes,
        steps: state.step,
        trainable: cfg.trainable,
        init: match &cfg.init {
            Init::Weights(p) => format!(
                "pretrained: {}",
                p.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
            Init::Seeded => "no pretrained weights".into(),
        },
    };
    write_file(
        &run_dir.join(files::MODEL_CARD),
        &serde_json::to_vec_pretty(&card).expect("serialisable"),
    )?;
    let export_secs = export_start.elapsed().as_secs_f64();
    Ok(Fitted::Finished {
        steps: state.step,
        loss: last_loss,
        checkpoint: last,
        steady_secs: steady_start.map_or(0.0, |(t, _)| t.elapsed().as_secs_f64() - export_secs),
        steady_steps: steady_start.map_or(0, |(_, s)| state.step - s),
    })
}

/// Softmax cross-entropy with label smoothing (as [`loss::cross_entropy`]) plus slim's L2 on
/// `w`, for the classifier `x·wᵀ + b` alone, with its gradients in closed form:
/// `dz = (softmax(z) − q)/B`, `dw = dzᵀ·x + l2·w`, `db = Σ dz`. With dropout, `x` is masked
/// (and scaled by 1/(1 − p)) from a ChaCha8 stream seeded with `seed`. Returns the logits, the
/// loss and the gradients by name.
fn head_gradients(
    x: &Tensor,
    labels: &[u32],
    (w, b): (&Tensor, &Tensor),
    smoothing: f64,
    l2: f64,
    dropout: f32,
    seed: u64,
) -> candle_core::Result<(Tensor, f32, BTreeMap<String, Tensor>)> {
    use rand::Rng as _;
    let (n, features) = x.dims2()?;
    let x = if dropout > 0.0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keep = 1.0 / (1.0 - dropout);
        let mask: Vec<f32> = (0..n * features)
            .map(|_| {
                if rng.random::<f32>() < dropout {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        (x * Tensor::from_vec(mask, (n, features), x.device())?.to_dtype(x.dtype())?)?
    } else {
        x.clone()
    };
    let z = x.matmul(&w.t()?)?.broadcast_add(b)?;
    let zv = z.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let k = zv.first().map_or(0, Vec::len);
    let mut dz = Vec::with_capacity(n * k);
    let mut total = 0.0f64;
    for (row, &label) in zv.iter().zip(labels) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        for (c, v) in row.iter().enumerate() {
            let target = smoothing / k as f64
                + if c == label as usize {
                    1.0 - smoothing
                } else {
                    0.0
                };
            total -= target * (v - lse);
            dz.push(((v - lse).exp() - target) / n as f64);
        }
    }
    let mut loss = total / n as f64;
    let dz = Tensor::from_vec(dz, (n, k), x.device())?.to_dtype(w.dtype())?;
    let mut dw = dz.t()?.matmul(&x)?;
    if l2 > 0.0 {
        loss += l2 / 2.0
            * w.to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        dw = (dw + w.affine(l2, 0.0)?)?;
    }
    let db = dz.sum(0)?;
    let grads = BTreeMap::from([("fc.weight".to_owned(), dw), ("fc.bias".to_owned(), db)]);
    Ok((z, loss as f32, grads))
}

/// [`head_gradients`] on the CPU in plain loops on one thread (f32 products, f64 softmax and
/// loss): for a 2048×N classifier and a batch of 100, candle's dispatch and thread hand-offs
/// would cost more than the arithmetic.
fn head_gradients_cpu(
    rows: &[&[f32]],
    labels: &[u32],
    (w, b): (&Tensor, &Tensor),
    smoothing: f64,
    l2: f64,
    dropout: f32,
    seed: u64,
) -> candle_core::Result<(Tensor, f32, BTreeMap<String, Tensor>)> {
    use rand::Rng as _;
    let n = labels.len();
    let (k, features) = w.dims2()?;
    let wv = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bv = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let masked: Vec<Vec<f32>>;
    let x: Vec<&[f32]> = if dropout > 0.0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keep = 1.0 / (1.0 - dropout);
        masked = rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| {
                        if rng.random::<f32>() < dropout {
                            0.0
                        } else {
                            v * keep
                        }
                    })
                    .collect()
            })
            .collect();
        masked.iter().map(Vec::as_slice).collect()
    } else {
        rows.to_vec()
    };
    let mut z = vec![0f32; n * k];
    for (row, zr) in x.iter().zip(z.chunks_exact_mut(k)) {
        for (c, zc) in zr.iter_mut().enumerate() {
            *zc = bv[c] + dot(row, &wv[c * features..(c + 1) * features]);
        }
    }
    let mut dz = vec![0f32; n * k];
    let mut total = 0.0f64;
    for ((zr, dzr), &label) in z.chunks_exact(k).zip(dz.chunks_exact_mut(k)).zip(labels) {
        let max = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + zr.iter()
                .map(|&v| (f64::from(v) - max).exp())
                .sum::<f64>()
                .ln();
        for (c, (&v, d)) in zr.iter().zip(dzr.iter_mut()).enumerate() {
            let target = smoothing / k as f64
                + if c == label as usize {
                    1.0 - smoothing
                } else {
                    0.0
                };
            let log_p = f64::from(v) - lse;
            total -= target * log_p;
            *d = ((log_p.exp() - target) / n as f64) as f32;
        }
    }
    let mut loss = total / n as f64;
    let mut dw = vec![0f32; k * features];
    for (row, dzr) in x.iter().zip(dz.chunks_exact(k)) {
        for (c, &d) in dzr.iter().enumerate() {
            for (acc, &v) in dw[c * features..(c + 1) * features]
                .iter_mut()
                .zip(row.iter())
            {
                *acc += d * v;
            }
        }
    }
    if l2 > 0.0 {
        loss += l2 / 2.0 * wv.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        let l2 = l2 as f32;
        for (acc, &v) in dw.iter_mut().zip(&wv) {
            *acc += l2 * v;
        }
    }
    let mut db = vec![0f32; k];
    for dzr in dz.chunks_exact(k) {
        for (acc, &d) in db.iter_mut().zip(dzr) {
            *acc += d;
        }
    }
    let cpu = Device::Cpu;
    let grads = BTreeMap::from([
        (
            "fc.weight".to_owned(),
            Tensor::from_vec(dw, (k, features), &cpu)?,
        ),
        ("fc.bias".to_owned(), Tensor::from_vec(db, k, &cpu)?),
    ]);
    Ok((Tensor::from_vec(z, (n, k), &cpu)?, loss as f32, grads))
}

/// Σ a·b in f32 with eight partial sums (vectorised by the compiler).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Head training on `n` random 2048-d bottlenecks of `n_classes` classes (class-dependent means,
/// so it learns), as `--trainable head` runs it: returns (steady-state seconds, steps timed).
/// For `retrain-train-bench`.
pub fn bench_head(cfg: &Config, n: usize, n_classes: usize) -> Result<(f64, u64), Error> {
    use rand::Rng as _;
    let device = retrain_inception::device(&cfg.device)?;
    let net_cfg = cfg.network(n_classes, false);
    let model = Model::new(&net_cfg, cfg.seed, &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let centres: Vec<f32> = (0..n_classes * FEATURES)
        .map(|_| rng.random::<f32>())
        .collect();
    let mut b = Bottlenecks {
        features: Vec::with_capacity(n * FEATURES),
        labels: Vec::with_capacity(n),
    };
    for i in 0..n {
        let label = i % n_classes;
        b.labels.push(label as u32);
        let centre = &centres[label * FEATURES..(label + 1) * FEATURES];
        b.features
            .extend(centre.iter().map(|c| c + rng.random::<f32>() * 2.0));
    }
    let source = Source::Head(HeadData::from(b));
    let names: Vec<String> = (0..n_classes).map(|c| format!("class{c}")).collect();
    bench_fit(cfg, &model, &source, &names)
}

/// Full training (`--trainable all`) on the shards of `cfg.tfrecords`, for `cfg.max_steps`:
/// returns (steady-state seconds, steps timed), the first step (warm-up) excluded.
pub fn bench_full(cfg: &Config) -> Result<(f64, u64), Error> {
    let device = retrain_inception::device(&cfg.device)?;
    let dataset = Arc::new(Dataset::open(
        &cfg.tfrecords,
        Split::Train,
        cfg.labels.as_deref(),
    )?);
    let net_cfg = cfg.network(dataset.n_classes(), cfg.size >= MIN_AUX_INPUT);
    let model = Model::new(&net_cfg, cfg.seed, &device)?;
    let source = Source::Images(dataset.clone());
    bench_fit(cfg, &model, &source, &dataset.class_names)
}

/// [`fit`] for the benchmarks, in a fresh run directory: (steady-state seconds, steps timed).
fn bench_fit(
    cfg: &Config,
    model: &Model,
    source: &Source,
    class_names: &[String],
) -> Result<(f64, u64), Error> {
    std::fs::create_dir_all(cfg.run.join(files::CHECKPOINTS)).map_err(|source| Error::Write {
        path: cfg.run.clone(),
        source,
    })?;
    match fit(
        cfg,
        "bench",
        model,
        source,
        class_names,
        &AtomicBool::new(false),
        &retrain_stage::NoProgress,
    )? {
        Fitted::Finished {
            steady_secs,
            steady_steps,
            ..
        } => Ok((steady_secs, steady_steps)),
        Fitted::Interrupted { .. } => Err(Error::Config("interrupted".into())),
    }
}

/// `train-config.json`: the settings that decide the result, without paths, devices or thread
/// counts, so the file (a manifest output) is the same wherever and however the run was made.
fn recorded_config(cfg: &Config) -> Vec<u8> {
    let mut v = serde_json::to_value(cfg).expect("serialisable");
    if let Some(map) = v.as_object_mut() {
        for key in [
            "tfrecords",
            "labels",
            "run",
            "resume",
            "threads",
            "cache_dir",
            "device",
            "extract_batch",
        ] {
            map.remove(key);
        }
        map.insert("init".into(), init_name(&cfg.init).into());
    }
    let mut out = serde_json::to_vec_pretty(&v).expect("serialisable");
    out.push(b'\n');
    out
}

/// `seeded`, or the weights' file name.
fn init_name(init: &Init) -> String {
    match init {
        Init::Seeded => "seeded".to_owned(),
        Init::Weights(p) => p
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    }
}

/// Removes the checkpoints and training events of an earlier run in `run_dir`.
fn clear_run(run_dir: &Path) -> Result<(), Error> {
    for (dir, prefix) in [
        (run_dir.join(files::CHECKPOINTS), "step-"),
        (run_dir.join(files::TRAIN_EVENTS), "events.out.tfevents."),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                std::fs::remove_file(entry.path()).map_err(|source| Error::Write {
                    path: entry.path(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Initialises new classifiers (`fc`, `AuxLogits.fc`) as retrain.py does its final layer:
/// weights from a normal distribution with std 0.001 truncated at two standard deviations (TF's
/// `truncated_normal`), biases 0. torchvision's std of 0.1 gives a fresh classifier logits of
/// several units on random directions, which a fine-tuning learning rate takes many steps to
/// undo; near-zero logits start every class at the same probability.
fn init_classifiers(model: &Model, prefixes: &[&str], seed: u64) -> candle_core::Result<()> {
    use rand::Rng as _;
    let tensors = model.tensors();
    for prefix in prefixes {
        let (Some(w), Some(b)) = (
            tensors.get(&format!("{prefix}.weight")),
            tensors.get(&format!("{prefix}.bias")),
        ) else {
            continue;
        };
        let mut rng =
            ChaCha8Rng::seed_from_u64(stream(seed, CLASSIFIER_INIT, counter_hash(prefix)));
        let values: Vec<f32> = (0..w.elem_count())
            .map(|_| {
                loop {
                    // Box–Muller; resample outside ±2σ.
                    let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                    let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    if z.abs() <= 2.0 {
                        break (z * 0.001) as f32;
                    }
                }
            })
            .collect();
        model.set_tensor(
            &format!("{prefix}.weight"),
            &Tensor::from_vec(values, w.dims(), &Device::Cpu)?,
        )?;
        model.set_tensor(
            &format!("{prefix}.bias"),
            &b.zeros_like()?.to_device(&Device::Cpu)?,
        )?;
    }
    if !prefixes.is_empty() {
        tracing::info!(
            "new classifier {} initialised as retrain.py's (truncated normal, std 0.001; bias 0)",
            prefixes.join(", ")
        );
    }
    Ok(())
}

fn counter_hash(name: &str) -> u64 {
    retrain_inception::counter::name_hash(name)
}

/// Sets the batch-norm statistics of a freshly initialised model from data: the statistics of
/// one training-mode pass over the first images (evaluation preprocessing). A seeded model's
/// statistics (mean 0, variance 1) do not match its random weights, and evaluation-mode
/// activations would grow layer by layer until they overflow; with data statistics the frozen
/// backbone of `--trainable head` gives usable features, and evaluation after a short
/// `--trainable all` run starts from sensible statistics.
fn calibrate_batch_norm(
    model: &Model,
    net_cfg: &retrain_inception::Config,
    dataset: &Arc<Dataset>,
    cfg: &Config,
    device: &Device,
) -> Result<(), Error> {
    let images = if cfg.size > 160 { 32 } else { 128 }.min(dataset.len());
    // A twin with momentum 1: its running statistics become the batch's.
    let twin_cfg = retrain_inception::Config {
        bn_momentum: 1.0,
        dropout: 0.0,
        ..net_cfg.clone()
    };
    let twin = Model::new(&twin_cfg, cfg.seed, device)?;
    let mut loader = Loader::new(
        dataset.clone(),
        LoaderConfig {
            batch_size: images,
            size: cfg.size,
            seed: cfg.seed,
            order: Order::Sequential,
            transform: Transform::Eval,
            threads: cfg.threads,
            drop_last: false,
            prefetch: 1,
        },
        0,
        0,
    );
    let Some(batch) = loader.next() else {
        return Ok(());
    };
    let batch = batch?;
    let xs = batch.tensor(cfg.size, device).map_err(compute(0))?;
    drop(
        twin.net()
            .trunk(&xs, true, &mut |_, _| {})
            .map_err(compute(0))?,
    );
    for (name, t) in twin.tensors() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            model.set_tensor(&name, &t).map_err(compute(0))?;
        }
    }
    tracing::info!(
        "batch-norm statistics calibrated on {} training images (no pretrained weights)",
        batch.labels.len()
    );
    Ok(())
}

/// The parameters a manifest records, by command-line flag (without the dashes).
pub fn manifest_params(cfg: &Config) -> Vec<(String, String)> {
    let mut p = vec![
        (
            "trainable".into(),
            format!("{:?}", cfg.trainable).to_lowercase(),
        ),
        ("size".into(), cfg.size.to_string()),
        ("batch-size".into(), cfg.batch_size.to_string()),
        ("epochs".into(), cfg.epochs.to_string()),
        ("optimizer".into(), cfg.optimizer.name().to_owned()),
        ("lr".into(), cfg.lr.initial.to_string()),
        ("lr-decay".into(), cfg.lr.decay_factor.to_string()),
        (
            "epochs-per-decay".into(),
            cfg.lr.epochs_per_decay.to_string(),
        ),
        ("label-smoothing".into(), cfg.label_smoothing.to_string()),
        ("aux-weight".into(), cfg.aux_weight.to_string()),
        ("weight-decay".into(), cfg.weight_decay.to_string()),
        ("bn-decay".into(), cfg.bn_decay.to_string()),
        ("dropout".into(), cfg.dropout.to_string()),
        ("seed".into(), cfg.seed.to_string()),
        ("shuffle-buffer".into(), cfg.shuffle_buffer.to_string()),
    ];
    if let Some(m) = cfg.max_steps {
        p.push(("max-steps".into(), m.to_string()));
    }
    if cfg.init == Init::Seeded {
        p.push(("init".into(), "seeded".into()));
    }
    p
}

fn validate(cfg: &Config) -> Result<(), Error> {
    if cfg.size < MIN_INPUT {
        return Err(Error::Config(format!(
            "--size {} is below Inception-v3's minimum of {MIN_INPUT}",
            cfg.size
        )));
    }
    if cfg.batch_size == 0 || cfg.log_every == 0 {
        return Err(Error::Config(
            "--batch-size and --log-every must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.dropout) || !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(Error::Config(
            "--dropout and --label-smoothing must be in [0, 1)".into(),
        ));
    }
    if !(0.0..=1.0).contains(&cfg.bn_decay) {
        return Err(Error::Config("--bn-decay must be in [0, 1]".into()));
    }
    Ok(())
}

/// The variables an optimiser updates: the classifier only, or every parameter (batch-norm
/// running statistics are never trained).
fn trainable_vars(model: &Model, trainable: Trainable) -> Vec<(String, Var)> {
    let data = model.varmap().data().lock().expect("varmap lock");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| match trainable {
            Trainable::Head => name.starts_with("fc."),
            Trainable::All => !name.ends_with("running_mean") && !name.ends_with("running_var"),
        })
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[derive(Debug, Default, Clone)]
struct State {
    step: u64,
    epoch: u64,
    batch_in_epoch: u64,
}

/// Independent random streams derived from the seed: dropout masks per step, the head's
/// shuffling per epoch. (The loader derives its own from the seed, the epoch and the position.)
const DROPOUT: u64 = 0xd20_9007;
const HEAD_SHUFFLE: u64 = 0x4ead_5ff1;
const CLASSIFIER_INIT: u64 = 0xc1a5_51f1;

fn stream(seed: u64, kind: u64, index: u64) -> u64 {
    // splitmix64 of the mix, so neighbouring indices give unrelated seeds.
    let mut z = seed ^ kind.rotate_left(17) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

enum Input {
    /// Indices of bottleneck rows (in the source's table, on the CPU).
    Features(Vec<u32>),
    Images(Tensor),
}

struct StepBatch {
    input: Input,
    labels: Vec<u32>,
}

/// The in-memory bottlenecks of head training, on the CPU: each batch's rows are gathered there
/// and sent to the device (candle's `index_select` over the whole table is far slower).
struct HeadData {
    features: Vec<f32>,
    labels: Vec<u32>,
}

impl From<Bottlenecks> for HeadData {
    fn from(b: Bottlenecks) -> Self {
        Self {
            features: b.features,
            labels: b.labels,
        }
    }
}

enum Source {
    Head(HeadData),
    Images(Arc<Dataset>),
}

enum Batches<'a> {
    Head {
        data: &'a HeadData,
        order: Vec<u32>,
        next: usize,
    },
    Images(Loader),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Head(data) => data.labels.len(),
            Source::Images(dataset) => dataset.len(),
        }
    }

    fn epoch(&self, cfg: &Config, epoch: u64, start_batch: usize) -> Batches<'_> {
        match self {
            Source::Head(data) => {
                let mut order: Vec<u32> = (0..data.labels.len() as u32).collect();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream(
                    cfg.seed,
                    HEAD_SHUFFLE,
                    epoch,
                )));
                Batches::Head {
                    data,
                    order,
                    next: start_batch,
                }
            }
            Source::Images(dataset) => Batches::Images(Loader::new(
                dataset.clone(),
                LoaderConfig {
                    batch_size: cfg.batch_size,
                    size: cfg.size,
                    seed: cfg.seed,
                    order: Order::ShuffleBuffer {
                        capacity: cfg.shuffle_buffer,
                    },
                    transform: Transform::Train(TrainAugment::default()),
                    threads: cfg.threads,
                    drop_last: true,
                    prefetch: 2,
                },
                epoch,
                start_batch,
            )),
        }
    }
}

impl Batches<'_> {
    fn next(&mut self, cfg: &Config, device: &Device) -> Result<Option<StepBatch>, Error> {
        match self {
            Batches::Head { data, order, next } => {
                let start = *next * cfg.batch_size;
                let end = start + cfg.batch_size;
                if end > order.len() {
                    return Ok(None);
                }
                *next += 1;
                let idx = order[start..end].to_vec();
                let labels = idx.iter().map(|&i| data.labels[i as usize]).collect();
                Ok(Some(StepBatch {
                    input: Input::Features(idx),
                    labels,
                }))
            }
            Batches::Images(loader) => {
                let Some(batch) = loader.next() else {
                    return Ok(None);
                };
                let batch = batch?;
                let xs = batch.tensor(cfg.size, device).map_err(compute(0))?;
                Ok(Some(StepBatch {
                    input: Input::Images(xs),
                    labels: batch.labels,
                }))
            }
        }
    }
}

fn batch_accuracy(logits: &Tensor, labels: &[u32]) -> candle_core::Result<f32> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let hits = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(hits as f32 / labels.len().max(1) as f32)
}

fn save_checkpoint(
    cfg: &Config,
    data: &str,
    model: &Model,
    optimizer: &Optimizer,
    state: &State,
) -> Result<PathBuf, Error> {
    let path = cfg
        .run
        .join(files::CHECKPOINTS)
        .join(checkpoint::file_name(state.step));
    let meta = Meta {
        format: checkpoint::FORMAT.into(),
        step: state.step,
        epoch: state.epoch,
        batch_in_epoch: state.batch_in_epoch,
        seed: cfg.seed,
        config: cfg.identity(data),
    };
    let opt_state = optimizer.state().map_err(compute(state.step))?;
    checkpoint::save(&path, &meta, &model.tensors(), &opt_state)?;
    tracing::debug!(checkpoint = %path.display(), "checkpoint written");
    Ok(path)
}

fn plot_losses(cfg: &Config, records: &[Record]) -> Result<(), Error> {
    let points: Vec<(u64, f32)> = records.iter().map(|r| (r.step, r.loss)).collect();
    let accuracy: Vec<(u64, f32)> = records.iter().map(|r| (r.step, r.accuracy)).collect();
    plot::loss_curve(
        &cfg.run.join(files::LOSS_PNG),
        &format!(
            "training loss ({:?}, {}x{})",
            cfg.trainable, cfg.size, cfg.size
        )
        .to_lowercase(),
        &[("loss", &points), ("batch accuracy", &accuracy)],
        800,
        480,
    )?;
    Ok(())
}

fn records_jsonl(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend(serde_json::to_vec(r).expect("serialisable"));
        out.push(b'\n');
    }
    out
}

/// The records of `metrics.jsonl` up to `step` (a resumed run rewrites the rest).
fn read_records(path: &Path, step: u64) -> Result<Vec<Record>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Write {
                path: path.to_owned(),
                source,
            });
        }
    };
    // Lines are appended as training goes; a crash can leave the last one half-written. Only
    // lines that end in a newline were written whole.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut out = Vec::new();
    for (i, line) in whole.lines().enumerate() {
        let record: Record = serde_json::from_str(line).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            what: format!("line {}: {e}", i + 1),
        })?;
        if record.step <= step {
            out.push(record);
        }
    }
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    retrain_stage::write_atomic(path, bytes).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

fn diff(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    format!(
                        "{k}: checkpoint {}, now {}",
                        a.get(k).unwrap_or(&serde_json::Value::Null),
                        b.get(k).unwrap_or(&serde_json::Value::Null)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => "unreadable settings".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_head_gradients_equal_autograd() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut r = |n: usize| -> Vec<f64> {
            use rand::Rng as _;
            (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
        };
        let x = Tensor::from_vec(r(4 * 6), (4, 6), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(r(3 * 6), (3, 6), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::from_vec(r(3), 3, &dev).unwrap()).unwrap();
        let labels = [0u32, 2, 1, 2];
        let (z, loss, grads) = head_gradients(
            &x,
            &labels,
            (w.as_tensor(), b.as_tensor()),
            0.1,
            0.01,
            0.0,
            0,
        )
        .unwrap();
        // The same loss through candle's autograd.
        let logits = x
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let ys = Tensor::new(&labels, &dev).unwrap();
        let l = (loss::cross_entropy(&logits, &ys, 0.1).unwrap()
            + loss::l2_penalty(&[w.as_tensor().clone()], 0.01)
                .unwrap()
                .unwrap())
        .unwrap();
        assert!((l.to_scalar::<f64>().unwrap() as f32 - loss).abs() < 1e-6);
        let g = l.backward().unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(diff(&z, &logits) < 1e-12);
        assert!(diff(&grads["fc.weight"], g.get(w.as_tensor()).unwrap()) < 1e-9);
        assert!(diff(&grads["fc.bias"], g.get(b.as_tensor()).unwrap()) < 1e-9);

        // The CPU loops in f32 give the same within f32 rounding.
        let table: Vec<Vec<f32>> = x.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        let rows: Vec<&[f32]> = table.iter().map(Vec::as_slice).collect();
        let (w32, b32) = (
            w.as_tensor().to_dtype(DType::F32).unwrap(),
            b.as_tensor().to_dtype(DType::F32).unwrap(),
        );
        let (z2, loss2, grads2) =
            head_gradients_cpu(&rows, &labels, (&w32, &b32), 0.1, 0.01, 0.0, 0).unwrap();
        assert!((loss2 - loss).abs() < 1e-5);
        let d32 = |a: &Tensor, b: &Tensor| diff(&a.to_dtype(DType::F64).unwrap(), b);
        assert!(d32(&z2, &z) < 1e-5);
        assert!(d32(&grads2["fc.weight"], &grads["fc.weight"]) < 1e-5);
        assert!(d32(&grads2["fc.bias"], &grads["fc.bias"]) < 1e-5);
    }

    #[test]
    fn streams_differ() {
        assert_ne!(stream(0, DROPOUT, 1), stream(0, DROPOUT, 2));
        assert_ne!(stream(0, DROPOUT, 1), stream(0, HEAD_SHUFFLE, 1));
        assert_eq!(stream(5, DROPOUT, 9), stream(5, DROPOUT, 9));
    }
}
