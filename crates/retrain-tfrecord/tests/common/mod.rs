//! Small image-folder trees for the builder's tests, written with the `image` crate.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder as _, RgbImage};

pub const CLASSES: [&str; 3] = ["cat", "dog", "frog"];

/// A deterministic, asymmetric test image.
pub fn pixels(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = x * 7 + y * 13 + seed * 31;
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            ((v * 5) % 200 + 20) as u8,
        ])
    })
}

pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

pub fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A tree as `retrain-sort` writes it.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub train: PathBuf,
    pub validation: PathBuf,
    pub labels: PathBuf,
}

impl Tree {
    /// `train` and `validation` PNGs per class, 8×6 to 33×17 pixels.
    pub fn new(root: &Path, train: usize, validation: usize) -> Self {
        let tree = Self {
            root: root.to_owned(),
            train: root.join("train_dir"),
            validation: root.join("validation_dir"),
            labels: root.join("labels.txt"),
        };
        fs::create_dir_all(root).unwrap();
        fs::write(&tree.labels, format!("{}\n", CLASSES.join("\n"))).unwrap();
        for (dir, n) in [(&tree.train, train), (&tree.validation, validation)] {
            for (c, class) in CLASSES.iter().enumerate() {
                fs::create_dir_all(dir.join(class)).unwrap();
                for i in 0..n {
                    let seed = (c * 1000 + i) as u32;
                    let img = pixels(8 + (seed % 26), 6 + (seed % 12), seed);
                    tree.write(
                        dir,
                        class,
                        &format!("{class}_s_{i:04}.png"),
                        &png_bytes(&img),
                    );
                }
            }
        }
        tree
    }

    pub fn write(&self, split_dir: &Path, class: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let path = split_dir.join(class).join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }

    pub fn config(&self, out: &Path) -> retrain_tfrecord::Config {
        retrain_tfrecord::Config::new(
            self.train.clone(),
            self.validation.clone(),
            self.labels.clone(),
            out.to_owned(),
        )
    }
}

/// Names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The shard files of `dir` (`train-*` then `validation-*`), sorted.
pub fn shards(dir: &Path) -> Vec<PathBuf> {
    listing(dir)
        .into_iter()
        .filter(|n| n.starts_with("train-") || n.starts_with("validation-"))
        .map(|n| dir.join(n))
        .collect()
}
