//! Shared helpers: a synthetic CIFAR-10 dataset as TFRecord shards.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use retrain_synth::{Dataset, Synthetic};
use retrain_tfrecord::{ImageRecord, RecordWriter, jpeg::JpegEncoder};

/// Writes retrain-synth's CIFAR-10 images (`images_per_batch` × 5 for training, × 1 for
/// validation) as `train-00000-of-00001`, `validation-00000-of-00001` and `labels.txt` in `dir`,
/// as build_image_data.py would (JPEG quality 100, 1-based labels).
pub fn synthetic_tfrecords(dir: &Path, images_per_batch: usize) {
    let synth = Synthetic::new(Dataset::Cifar10, images_per_batch, 0, 0).unwrap();
    let names = Dataset::Cifar10.label_names();
    let encoder = JpegEncoder::new(100).unwrap();
    let mut train = RecordWriter::create(&dir.join("train-00000-of-00001")).unwrap();
    let mut validation = RecordWriter::create(&dir.join("validation-00000-of-00001")).unwrap();
    for batch in synth.batches() {
        let pixels = synth.pixels(&batch);
        let labels = synth.labels(&batch);
        let files = synth.filenames(&batch);
        for (i, row) in pixels.chunks(3072).enumerate() {
            let mut rgb = Vec::with_capacity(3072);
            for p in 0..1024 {
                rgb.extend_from_slice(&[row[p], row[1024 + p], row[2048 + p]]);
            }
            let mut jpeg = Vec::new();
            encoder.encode_rgb(&rgb, 32, 32, &mut jpeg).unwrap();
            let label = usize::from(labels[i]);
            let record = ImageRecord::jpeg(jpeg, 32, 32, label as i64 + 1, names[label], &files[i]);
            let writer = if batch.train {
                &mut train
            } else {
                &mut validation
            };
            writer.write_record(&record.encode_to_vec()).unwrap();
        }
    }
    train.flush().unwrap();
    validation.flush().unwrap();
    std::fs::write(dir.join("labels.txt"), names.join("\n") + "\n").unwrap();
}
