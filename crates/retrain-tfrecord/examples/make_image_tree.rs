//! Writes a synthetic image-folder tree in the layout `retrain-sort` produces, for benchmarks and
//! interop checks: `OUT/train_dir/<class>/<class>_s_<n>.png`, `OUT/validation_dir/<class>/…`,
//! `OUT/labels.txt`, with CIFAR-10's class names and `retrain-synth`'s 32×32 images.
//!
//! usage: make_image_tree OUT [TRAIN_PER_CLASS [VALIDATION_PER_CLASS [SEED]]]
//! (defaults 5000 1000 0: the size of CIFAR-10)

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use image::ImageEncoder as _;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use retrain_synth::image::{PLANE, ROW, SIDE, render};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        bail!("usage: make_image_tree OUT [TRAIN_PER_CLASS [VALIDATION_PER_CLASS [SEED]]]");
    };
    let number = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i)
            .map_or(Ok(default), |s| s.parse().context("not a number"))
    };
    let train = number(1, 5000)? as usize;
    let validation = number(2, 1000)? as usize;
    let seed = number(3, 0)?;
    let classes = retrain_synth::Dataset::Cifar10.label_names();
    std::fs::create_dir_all(&out)?;
    let mut labels = classes.join("\n");
    labels.push('\n');
    std::fs::write(out.join("labels.txt"), labels)?;
    for (split_idx, (dir, per_class)) in [("train_dir", train), ("validation_dir", validation)]
        .into_iter()
        .enumerate()
    {
        let jobs: Vec<(usize, usize)> = (0..classes.len())
            .flat_map(|c| (0..per_class).map(move |i| (c, i)))
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let root = out.join(dir);
        for class in classes {
            std::fs::create_dir_all(root.join(class))?;
        }
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let jobs = &jobs;
                    let root = &root;
                    scope.spawn(move || -> anyhow::Result<()> {
                        for &(class, i) in jobs.iter().skip(t).step_by(threads) {
                            let stream = (split_idx * 1_000_000 + class * 100_000 + i) as u64;
                            write_png(root, classes, class, i, seed, stream)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("writer thread")?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn write_png(
    root: &Path,
    classes: &[&str],
    class: usize,
    i: usize,
    seed: u64,
    stream: u64,
) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut row = vec![0u8; ROW];
    render(class, classes.len(), &mut rng, &mut row);
    let mut rgb = vec![0u8; ROW];
    for p in 0..PLANE {
        for c in 0..3 {
            rgb[p * 3 + c] = row[c * PLANE + p];
        }
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(
        &rgb,
        SIDE as u32,
        SIDE as u32,
        image::ExtendedColorType::Rgb8,
    )?;
    let name = format!("{}_s_{:06}.png", classes[class], i);
    let path = root.join(classes[class]).join(name);
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))
}
