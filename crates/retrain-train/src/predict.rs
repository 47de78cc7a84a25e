//! Prediction: the top classes of images (PNG or JPEG, any size) with a trained run's model.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, ModuleT as _, Tensor};
use serde::Serialize;

use crate::{augment, eval::Trained, metrics::top_k};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PNG or JPEG image we can decode: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("predicting: {0}")]
    Compute(#[from] candle_core::Error),
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guess {
    /// 0-based class index.
    pub label: usize,
    pub class: String,
    pub probability: f32,
}

/// The predictions for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub top: Vec<Guess>,
}

/// The `k` most probable classes of each image, preprocessed as evaluation does (central crop
/// of 87.5 %, bilinear resize to the model's input size, scaled to [-1, 1]).
pub fn predict(trained: &Trained, images: &[PathBuf], k: usize) -> Result<Vec<Prediction>, Error> {
    let size = trained.card.size;
    let device = trained.model.device();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(16) {
        let mut pixels = vec![0f32; chunk.len() * 3 * size * size];
        for (path, dst) in chunk.iter().zip(pixels.chunks_mut(3 * size * size)) {
            let img = load(path)?;
            augment::eval_transform(&img, size, dst);
        }
        let xs = Tensor::from_vec(pixels, (chunk.len(), 3, size, size), device)?;
        let _no_grad = retrain_inception::no_grad();
        let probs = candle_nn::ops::softmax(
            &trained
                .model
                .net()
                .forward_t(&xs, false)?
                .to_dtype(DType::F32)?,
            D::Minus1,
        )?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
        for (path, row) in chunk.iter().zip(probs) {
            let top = top_k(&row, k.min(row.len()))
                .into_iter()
                .map(|label| Guess {
                    label,
                    class: trained.class_names[label].clone(),
                    probability: row[label],
                })
                .collect();
            out.push(Prediction {
                image: path.clone(),
                top,
            });
        }
    }
    Ok(out)
}

fn load(path: &Path) -> Result<image::RgbImage, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    augment::decode(&bytes).map_err(|source| Error::Decode {
        path: path.to_owned(),
        source,
    })
}
