//! Evaluation of an exported model on the validation shards: precision@1 and recall@5 over
//! exactly the N validation examples (no cycling, no padding), per-class accuracy, the confusion
//! matrix as JSON and as a picture, and TensorBoard events.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use candle_core::{DType, Device};
use retrain_inception::Model;
use retrain_stage::{Manifest, Reporter};

use crate::{
    data::{Dataset, Split},
    loader::{Loader, LoaderConfig, Order, Transform},
    metrics::{Report, Tally},
    plot,
    train::{ModelCard, files},
};

/// The stage name in manifests.
pub const STAGE: &str = "eval";
/// The output folder inside the run directory.
pub const EVAL_DIR: &str = "eval";

#[derive(Debug, Clone)]
pub struct Config {
    /// The run directory with `model.safetensors`, `model.json` and `labels.txt`.
    pub run: PathBuf,
    /// The TFRecord directory (`validation-*` shards).
    pub tfrecords: PathBuf,
    /// Input size [default: the one the model was trained at, from `model.json`].
    pub size: Option<usize>,
    pub batch_size: usize,
    pub threads: usize,
    pub device: String,
    /// The sha256 `model.safetensors` must have (what the training manifest recorded); a
    /// different model is refused.
    pub model_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    #[error(transparent)]
    Loader(Box<crate::loader::Error>),
    #[error(transparent)]
    Model(#[from] retrain_inception::Error),
    #[error(transparent)]
    Plot(#[from] crate::plot::Error),
    #[error(transparent)]
    Stage(#[from] retrain_stage::Error),
    #[error("evaluating: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::loader::Error> for Error {
    fn from(e: crate::loader::Error) -> Self {
        Self::Loader(Box::new(e))
    }
}

/// An exported model with what it needs to run: loaded from a run directory.
#[derive(Debug)]
pub struct Trained {
    pub model: Model,
    pub card: ModelCard,
    pub class_names: Vec<String>,
}

/// Loads `model.safetensors`, `model.json` and `labels.txt` from a run directory.
pub fn load_run(run: &Path, device: &Device) -> Result<Trained, Error> {
    let card_path = run.join(files::MODEL_CARD);
    let card_text = std::fs::read(&card_path).map_err(|e| Error::Invalid {
        path: card_path.clone(),
        what: format!("{e} (is this a finished training run?)"),
    })?;
    let card: ModelCard = serde_json::from_slice(&card_text).map_err(|e| Error::Invalid {
        path: card_path.clone(),
        what: e.to_string(),
    })?;
    let labels_path = run.join(files::LABELS);
    let class_names: Vec<String> = std::fs::read_to_string(&labels_path)
        .map_err(|e| Error::Invalid {
            path: labels_path.clone(),
            what: e.to_string(),
        })?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if class_names.len() != card.num_classes {
        return Err(Error::Invalid {
            path: labels_path,
            what: format!(
                "{} class names, but the model has {} classes",
                class_names.len(),
                card.num_classes
            ),
        });
    }
    let weights = run.join(files::MODEL);
    let tensors = retrain_inception::read_tensors(&weights)?;
    let aux = tensors.keys().any(|k| k.starts_with("AuxLogits."));
    let cfg = retrain_inception::Config {
        num_classes: card.num_classes,
        aux_logits: aux,
        ..retrain_inception::Config::default()
    };
    let (model, _) = Model::load_tensors(&cfg, &weights, tensors, 0, device)?;
    Ok(Trained {
        model,
        card,
        class_names,
    })
}

/// Evaluates; writes `<run>/eval/{metrics.json, confusion.png, events…, manifest.json}`.
pub fn run(cfg: &Config, rep: &dyn Reporter) -> Result<(Report, Tally), Error> {
    let device = retrain_inception::device(&cfg.device)?;
    let model_path = cfg.run.join(files::MODEL);
    let model_digest = retrain_stage::digest_file(&model_path)?;
    if let Some(want) = &cfg.model_sha256
        && *want != model_digest.sha256
    {
        return Err(Error::Invalid {
            path: model_path,
            what: format!("sha256 {}, expected {want}", model_digest.sha256),
        });
    }
    let trained = load_run(&cfg.run, &device)?;
    let size = cfg.size.unwrap_or(trained.card.size);
    let dataset = Arc::new(Dataset::open(
        &cfg.tfrecords,
        Split::Validation,
        Some(&cfg.run.join(files::LABELS)),
    )?);
    if dataset.n_classes() != trained.card.num_classes {
        return Err(Error::Invalid {
            path: cfg.tfrecords.clone(),
            what: format!(
                "{} classes, but the model has {}",
                dataset.n_classes(),
                trained.card.num_classes
            ),
        });
    }
    let out = cfg.run.join(EVAL_DIR);
    std::fs::create_dir_all(&out).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    Manifest::remove(&out)?;
    let loader = Loader::new(
        dataset.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            size,
            seed: 0,
            order: Order::Sequential,
            transform: Transform::Eval,
            threads: cfg.threads,
            drop_last: false,
            prefetch: 2,
        },
        0,
        0,
    );
    let mut tally = Tally::new(trained.card.num_classes);
    rep.start(dataset.len() as u64, "evaluating");
    for batch in loader {
        let batch = batch?;
        let xs = batch.tensor(size, &device)?;
        let _no_grad = retrain_inception::no_grad();
        let logits = trained
            .model
            .net()
            .forward_t(&xs, false)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        tally.add_batch(&logits.flatten_all()?.to_vec1::<f32>()?, &batch.labels);
        rep.advance(batch.labels.len() as u64);
    }
    rep.finish();
    if tally.examples() != dataset.len() as u64 {
        return Err(Error::Invalid {
            path: cfg.tfrecords.clone(),
            what: format!(
                "evaluated {} examples of {}",
                tally.examples(),
                dataset.len()
            ),
        });
    }
    let report = tally.report(&trained.class_names);
    let metrics_path = out.join("metrics.json");
    let mut json = serde_json::to_vec_pretty(&report).expect("serialisable");
    json.push(b'\n');
    retrain_stage::write_atomic(&metrics_path, &json).map_err(|source| Error::Write {
        path: metrics_path.clone(),
        source,
    })?;
    plot::confusion_matrix(
        &out.join("confusion.png"),
        &format!(
            "confusion matrix, {} validation images: precision@1 {:.4}",
            tally.examples(),
            tally.precision_at_1()
        ),
        &trained.class_names,
        tally.confusion(),
    )?;
    let mut events = retrain_tfrecord::EventWriter::create(&out).map_err(|e| Error::Invalid {
        path: out.clone(),
        what: e.to_string(),
    })?;
    let step = trained.card.steps as i64;
    events
        .add_scalars(
            step,
            &[
                ("precision_at_1", tally.precision_at_1() as f32),
                ("recall_at_5", tally.recall_at_5() as f32),
            ],
        )
        .and_then(|()| events.close())
        .map_err(|e| Error::Invalid {
            path: out.clone(),
            what: e.to_string(),
        })?;
    let mut manifest = Manifest::new(STAGE, env!("CARGO_PKG_VERSION"));
    manifest.param("batch-size", cfg.batch_size);
    manifest.param("size", size);
    manifest.param("model-sha256", &model_digest.sha256);
    manifest.input("tfrecords", &cfg.tfrecords)?;
    manifest.output(&out, "metrics.json")?;
    manifest.output(&out, "confusion.png")?;
    manifest.write(&out)?;
    Ok((report, tally))
}

use candle_core::ModuleT as _;
