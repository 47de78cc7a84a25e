//! The bottleneck cache of `--trainable head`: the 2048-d pooled output of `Mixed_7c` for every
//! image, computed once with evaluation preprocessing and kept on disk.
//!
//! The cache lives in `<cache dir>/<key>/`, where the key digests the TFRecord shards (names and
//! bytes), the backbone's weights (every tensor but the classifiers) and the input size. Images
//! are taken in record order in chunks of [`CHUNK`]; each chunk is written atomically as
//! `chunk-NNNNN.safetensors` (`features`, N×2048 f32; `labels`, N u32), so an interrupted
//! extraction resumes at the first missing chunk. `complete.json` marks a finished cache.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use candle_core::{DType, Device, Tensor};
use retrain_inception::{FEATURES, Model};
use retrain_stage::Reporter;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    data::{Dataset, Split},
    loader::{Loader, LoaderConfig, Order, Transform},
};

/// Images per cache file.
pub const CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bottleneck cache {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bottleneck cache {}: {source}", path.display())]
    Tensor {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("bottleneck cache {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    #[error(transparent)]
    Loader(Box<crate::loader::Error>),
    #[error("computing bottlenecks: {0}")]
    Model(#[source] candle_core::Error),
    #[error("the extraction batch size {0} must divide {CHUNK}")]
    Batch(usize),
    #[error("interrupted after {done} of {total} bottlenecks (the finished chunks are kept)")]
    Interrupted { done: usize, total: usize },
}

impl From<crate::loader::Error> for Error {
    fn from(e: crate::loader::Error) -> Self {
        Self::Loader(Box::new(e))
    }
}

/// Features and labels of every image of a split, in record order.
#[derive(Debug, Clone)]
pub struct Bottlenecks {
    /// N×2048, row-major.
    pub features: Vec<f32>,
    /// 0-based labels.
    pub labels: Vec<u32>,
}

impl Bottlenecks {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Complete {
    images: usize,
    size: usize,
    split: String,
    data: String,
    backbone: String,
}

/// sha256 (hex) of the backbone: every tensor's name, shape and f32 bytes, except the classifiers
/// (`fc.*`) and the aux head (`AuxLogits.*`), which the features never pass through.
pub fn backbone_digest(model: &Model) -> Result<String, candle_core::Error> {
    let mut h = Sha256::new();
    for (name, t) in model.tensors() {
        if name.starts_with("fc.") || name.starts_with("AuxLogits.") {
            continue;
        }
        h.update(name.as_bytes());
        h.update([0]);
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The cache key of a split's bottlenecks.
pub fn cache_key(data_digest: &str, backbone_digest: &str, size: usize, split: Split) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "retrain-bottlenecks/1\0{data_digest}\0{backbone_digest}\0{size}\0{split:?}"
    ));
    hex::encode(&h.finalize()[..16])
}

/// How to compute bottlenecks.
#[derive(Debug, Clone)]
pub struct Extract {
    pub cache_dir: PathBuf,
    pub size: usize,
    /// Images per forward pass; must divide [`CHUNK`].
    pub batch_size: usize,
    /// Decoding threads.
    pub threads: usize,
}

/// The bottlenecks of `dataset`, from the cache where present, computing (and caching) the rest.
/// `cancel` set (by Ctrl-C) stops after the current batch with [`Error::Interrupted`]; the
/// chunks written so far are kept, and the next call resumes after them.
pub fn compute_or_load(
    model: &Model,
    dataset: Arc<Dataset>,
    cfg: &Extract,
    cancel: &std::sync::atomic::AtomicBool,
    rep: &dyn Reporter,
) -> Result<Bottlenecks, Error> {
    if cfg.batch_size == 0 || !CHUNK.is_multiple_of(cfg.batch_size) {
        return Err(Error::Batch(cfg.batch_size));
    }
    let data = dataset.digest()?;
    let backbone = backbone_digest(model).map_err(Error::Model)?;
    let key = cache_key(&data, &backbone, cfg.size, dataset.split);
    let dir = cfg.cache_dir.join(&key);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let n = dataset.len();
    let n_chunks = n.div_ceil(CHUNK);
    let mut out = Bottlenecks {
        features: Vec::with_capacity(n * FEATURES),
        labels: Vec::with_capacity(n),
    };
    let mut first_missing = n_chunks;
    for c in 0..n_chunks {
        let path = dir.join(chunk_name(c));
        if !path.exists() {
            first_missing = c;
            break;
        }
        let expected = CHUNK.min(n - c * CHUNK);
        read_chunk(&path, expected, &mut out)?;
    }
    if first_missing < n_chunks {
        tracing::info!(
            cache = %dir.display(),
            images = n,
            cached = first_missing * CHUNK,
            "computing bottlenecks at {0}×{0}",
            cfg.size
        );
        rep.start((n - first_missing * CHUNK) as u64, "bottlenecks");
        let loader = Loader::new(
            dataset.clone(),
            LoaderConfig {
                batch_size: cfg.batch_size,
                size: cfg.size,
                seed: 0,
                order: Order::Sequential,
                transform: Transform::Eval,
                threads: cfg.threads,
                drop_last: false,
                prefetch: 2,
            },
            0,
            first_missing * CHUNK / cfg.batch_size,
        );
        let mut chunk = Bottlenecks {
            features: Vec::with_capacity(CHUNK * FEATURES),
            labels: Vec::with_capacity(CHUNK),
        };
        let mut c = first_missing;
        for batch in loader {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                rep.finish();
                return Err(Error::Interrupted {
                    done: c * CHUNK,
                    total: n,
                });
            }
            let batch = batch?;
            let xs = batch
                .tensor(cfg.size, model.device())
                .map_err(Error::Model)?;
            let _no_grad = retrain_inception::no_grad();
            let f = model
                .net()
                .features(&xs)
                .and_then(|f| f.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>())
                .map_err(Error::Model)?;
            chunk.features.extend_from_slice(&f);
            chunk.labels.extend_from_slice(&batch.labels);
            rep.advance(batch.labels.len() as u64);
            if chunk.len() == CHUNK.min(n - c * CHUNK) {
                write_chunk(&dir.join(chunk_name(c)), &chunk)?;
                out.features.append(&mut chunk.features);
                out.labels.append(&mut chunk.labels);
                c += 1;
            }
        }
        rep.finish();
        if !chunk.is_empty() || c != n_chunks {
            return Err(Error::Corrupt {
                path: dir.clone(),
                reason: format!("extraction ended at chunk {c} of {n_chunks}"),
            });
        }
    }
    let complete = Complete {
        images: n,
        size: cfg.size,
        split: format!("{:?}", dataset.split),
        data,
        backbone,
    };
    let marker = dir.join("complete.json");
    let json = serde_json::to_vec_pretty(&complete).expect("serialisable");
    if std::fs::read(&marker).ok().as_deref() != Some(json.as_slice()) {
        retrain_stage::write_atomic(&marker, &json).map_err(io(&marker))?;
    }
    Ok(out)
}

fn chunk_name(c: usize) -> String {
    format!("chunk-{c:05}.safetensors")
}

fn write_chunk(path: &Path, chunk: &Bottlenecks) -> Result<(), Error> {
    let err = |source| Error::Tensor {
        path: path.to_owned(),
        source,
    };
    let features =
        Tensor::from_slice(&chunk.features, (chunk.len(), FEATURES), &Device::Cpu).map_err(err)?;
    let labels = Tensor::from_slice(&chunk.labels, chunk.len(), &Device::Cpu).map_err(err)?;
    let bytes = safetensors::serialize([("features", &features), ("labels", &labels)], None)
        .map_err(|e| Error::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    retrain_stage::write_atomic(path, &bytes).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_chunk(path: &Path, expected: usize, out: &mut Bottlenecks) -> Result<(), Error> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| Error::Tensor {
            path: path.to_owned(),
            source,
        })?;
    let (Some(f), Some(l)) = (tensors.get("features"), tensors.get("labels")) else {
        return Err(corrupt("missing `features` or `labels`".into()));
    };
    if f.dims() != [expected, FEATURES] || l.dims() != [expected] {
        return Err(corrupt(format!(
            "shapes {:?} and {:?}, expected [{expected}, {FEATURES}] and [{expected}]",
            f.dims(),
            l.dims()
        )));
    }
    let err = |source| Error::Tensor {
        path: path.to_owned(),
        source,
    };
    out.features.extend(
        f.flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(err)?,
    );
    out.labels.extend(l.to_vec1::<u32>().map_err(err)?);
    Ok(())
}
