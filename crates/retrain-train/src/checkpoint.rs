//! Training checkpoints: one safetensors file per checkpoint holding the model's variables
//! (`model.<torchvision name>`, batch-norm statistics included), the optimiser's state
//! (`optim.<name>`), and, in the header's metadata, the step, the position in the epoch and the
//! seed every random stream is derived from. Written atomically.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Metadata key holding [`Meta`] as JSON (one key, so the header bytes are deterministic).
const META_KEY: &str = "retrain";
const MODEL_PREFIX: &str = "model.";
const OPTIM_PREFIX: &str = "optim.";
/// Format tag written into every checkpoint.
pub const FORMAT: &str = "retrain-checkpoint/1";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading checkpoint {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing checkpoint {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a retrain checkpoint: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Tensor {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

/// Where training stood when the checkpoint was written. Every random stream (shuffling,
/// augmentation, dropout) is derived from `seed` and the position, so this is the RNG state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    /// Optimiser steps taken.
    pub step: u64,
    /// The epoch the next batch comes from.
    pub epoch: u64,
    /// The index of the next batch within that epoch.
    pub batch_in_epoch: u64,
    pub seed: u64,
    /// The training configuration, as JSON, for checking that a resume continues the same run.
    pub config: serde_json::Value,
}

/// A checkpoint's contents.
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: Meta,
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
}

/// `step-00000100.safetensors`.
pub fn file_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// Writes a checkpoint atomically (a reader never sees half a file).
pub fn save(
    path: &Path,
    meta: &Meta,
    model: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
) -> Result<(), Error> {
    let tensor_err = |source| Error::Tensor {
        path: path.to_owned(),
        source,
    };
    let mut all: BTreeMap<String, Tensor> = BTreeMap::new();
    for (prefix, map) in [(MODEL_PREFIX, model), (OPTIM_PREFIX, optimizer)] {
        for (name, t) in map {
            all.insert(
                format!("{prefix}{name}"),
                t.to_device(&Device::Cpu).map_err(tensor_err)?,
            );
        }
    }
    #[allow(clippy::disallowed_types)] // safetensors' API; one key, so the order cannot vary
    let info = std::collections::HashMap::from([(
        META_KEY.to_owned(),
        serde_json::to_string(meta).expect("metadata serialises"),
    )]);
    let bytes = safetensors::serialize(all.iter(), Some(info)).map_err(|e| Error::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    retrain_stage::write_atomic(path, &bytes).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let format_err = |reason: String| Error::Format {
        path: path.to_owned(),
        reason,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format_err(e.to_string()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| format_err(format!("no `{META_KEY}` metadata")))?;
    let meta: Meta = serde_json::from_str(meta_json).map_err(|e| format_err(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(format_err(format!(
            "format {:?}, expected {FORMAT:?}",
            meta.format
        )));
    }
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|source| {
            Error::Tensor {
                path: path.to_owned(),
                source,
            }
        })?;
    let mut model = BTreeMap::new();
    let mut optimizer = BTreeMap::new();
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix(MODEL_PREFIX) {
            model.insert(n.to_owned(), t);
        } else if let Some(n) = name.strip_prefix(OPTIM_PREFIX) {
            optimizer.insert(n.to_owned(), t);
        } else {
            return Err(format_err(format!("unexpected tensor {name}")));
        }
    }
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
    })
}

/// The checkpoint with the highest step in `dir` (`None` when there is none). Hidden
/// `.*.partial` files of an interrupted write are ignored.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, entry.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Removes all but the newest `keep` checkpoints in `dir`.
pub fn prune(dir: &Path, keep: usize) -> Result<(), Error> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for path in &steps[..excess] {
        std::fs::remove_file(path).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let meta = Meta {
            format: FORMAT.into(),
            step: 7,
            epoch: 1,
            batch_in_epoch: 2,
            seed: 3,
            config: serde_json::json!({"lr": 0.001}),
        };
        let model = BTreeMap::from([(
            "fc.bias".to_owned(),
            Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        )]);
        let optim = BTreeMap::from([(
            "rmsprop.ms.fc.bias".to_owned(),
            Tensor::new(&[0.5f32, 0.25], &dev).unwrap(),
        )]);
        for step in [7, 12, 9] {
            let path = dir.path().join(file_name(step));
            save(
                &path,
                &Meta {
                    step,
                    ..meta.clone()
                },
                &model,
                &optim,
            )
            .unwrap();
        }
        let a = std::fs::read(dir.path().join(file_name(7))).unwrap();
        save(&dir.path().join("again"), &meta, &model, &optim).unwrap();
        assert_eq!(
            a,
            std::fs::read(dir.path().join("again")).unwrap(),
            "deterministic bytes"
        );
        let newest = latest(dir.path()).unwrap().unwrap();
        assert!(newest.ends_with(file_name(12)));
        let ck = load(&newest).unwrap();
        assert_eq!(ck.meta.step, 12);
        assert_eq!(ck.model["fc.bias"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        assert_eq!(
            ck.optimizer["rmsprop.ms.fc.bias"].to_vec1::<f32>().unwrap(),
            [0.5, 0.25]
        );
        prune(dir.path(), 1).unwrap();
        assert!(!dir.path().join(file_name(7)).exists());
        assert!(dir.path().join(file_name(12)).exists());
        std::fs::write(dir.path().join("bad.safetensors"), b"nope").unwrap();
        let err = load(&dir.path().join("bad.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
    }
}
