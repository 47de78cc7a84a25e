//! The input pipeline on a tiny TFRecord directory built in the test: the index, epoch orders,
//! the threaded loader and its errors.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use retrain_tfrecord::jpeg::JpegEncoder;
use retrain_tfrecord::{ImageRecord, RecordWriter};
use retrain_train::augment::TrainAugment;
use retrain_train::data::{Dataset, Split};
use retrain_train::loader::{Batch, Loader, LoaderConfig, Order, Transform, epoch_order};

const CLASSES: [&str; 3] = ["cat", "dog", "ship"];

/// One example: 1-based label, and a `width`×`height` JPEG whose colours depend on `seed`.
fn example(label: i64, text: &str, seed: u32, filename: &str) -> ImageRecord {
    let (width, height) = (12 + seed % 5, 10 + seed % 3);
    let mut rgb = Vec::new();
    for y in 0..height {
        for x in 0..width {
            rgb.extend_from_slice(&[
                (x * 20 + seed * 13) as u8,
                (y * 25 + seed * 7) as u8,
                ((x + y) * 9 + seed * 31) as u8,
            ]);
        }
    }
    let mut jpeg = Vec::new();
    JpegEncoder::new(95)
        .unwrap()
        .encode_rgb(&rgb, width, height, &mut jpeg)
        .unwrap();
    ImageRecord::jpeg(jpeg, height, width, label, text, filename)
}

fn write_shard(path: &Path, records: &[ImageRecord]) {
    let mut writer = RecordWriter::create(path).unwrap();
    for record in records {
        writer.write_record(&record.encode_to_vec()).unwrap();
    }
    writer.flush().unwrap();
}

/// Two train shards (7 + 6 records), one validation shard (4), `labels.txt`, and files a reader
/// must ignore. Returns the 1-based labels of the train records in index order.
fn build(dir: &Path) -> Vec<i64> {
    let mut labels = Vec::new();
    let mut n = 0u32;
    let mut shard = |count: u32, name: &str, labels: &mut Vec<i64>| {
        let records: Vec<ImageRecord> = (0..count)
            .map(|_| {
                n += 1;
                let label = i64::from(n % 3) + 1;
                labels.push(label);
                example(
                    label,
                    CLASSES[(label - 1) as usize],
                    n,
                    &format!("img{n}.png"),
                )
            })
            .collect();
        write_shard(&dir.join(name), &records);
    };
    shard(7, "train-00000-of-00002", &mut labels);
    shard(6, "train-00001-of-00002", &mut labels);
    let mut ignored = Vec::new();
    shard(4, "validation-00000-of-00001", &mut ignored);
    fs::write(dir.join("labels.txt"), CLASSES.join("\n") + "\n").unwrap();
    // Things that are not shards.
    fs::write(dir.join(".train-00002-of-00002.partial"), b"junk").unwrap();
    fs::write(dir.join("train-notes.txt"), b"junk").unwrap();
    fs::write(dir.join("report.json"), b"{}").unwrap();
    fs::create_dir(dir.join("train-00009-of-00010")).unwrap();
    labels
}

fn fixture() -> (tempfile::TempDir, Vec<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let labels = build(dir.path());
    (dir, labels)
}

fn config(threads: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        size: 9,
        seed: 42,
        order: Order::ShuffleBuffer { capacity: 5 },
        transform: Transform::Train(TrainAugment::default()),
        threads,
        drop_last: false,
        prefetch: 2,
    }
}

fn collect(dataset: &Arc<Dataset>, cfg: LoaderConfig, epoch: u64, start: usize) -> Vec<Batch> {
    Loader::new(Arc::clone(dataset), cfg, epoch, start)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn open_indexes_records_labels_and_class_names() {
    let (dir, labels) = fixture();
    let train = Dataset::open(dir.path(), Split::Train, None).unwrap();
    assert_eq!(train.len(), 13);
    assert!(!train.is_empty());
    assert_eq!(train.n_classes(), 3);
    assert_eq!(train.class_names, CLASSES);
    assert_eq!(
        train.files.iter().map(|p| name(p)).collect::<Vec<_>>(),
        ["train-00000-of-00002", "train-00001-of-00002"]
    );
    let got: Vec<i64> = train
        .records
        .iter()
        .map(|r| i64::from(r.label) + 1)
        .collect();
    assert_eq!(got, labels);
    assert_eq!(train.records[6].file, 0);
    assert_eq!(train.records[7].file, 1);
    assert_eq!(train.records[7].offset, 0);
    // Reading by index seeks to the record.
    for idx in [0, 6, 7, 12] {
        let record = train.read(idx).unwrap();
        assert_eq!(record.filename, format!("img{}.png", idx + 1));
        assert_eq!(record.label, labels[idx]);
        assert_eq!(record.text, CLASSES[(labels[idx] - 1) as usize]);
    }
    let err = train.read(13).unwrap_err().to_string();
    assert!(err.contains("13"), "{err}");

    let validation = Dataset::open(dir.path(), Split::Validation, None).unwrap();
    assert_eq!(validation.len(), 4);
    assert_eq!(validation.split, Split::Validation);

    // Without labels.txt the names come from image/class/text; an explicit file wins.
    fs::remove_file(dir.path().join("labels.txt")).unwrap();
    let from_text = Dataset::open(dir.path(), Split::Train, None).unwrap();
    assert_eq!(from_text.class_names, CLASSES);
    assert_eq!(from_text.records, train.records);
    let other = tempfile::tempdir().unwrap();
    let labels_file = other.path().join("names.txt");
    fs::write(&labels_file, "cat\ndog\nship\nplane\n").unwrap();
    let listed = Dataset::open(dir.path(), Split::Train, Some(&labels_file)).unwrap();
    assert_eq!(listed.n_classes(), 4);
    // A labels file that disagrees with the records' class names is an error naming both.
    fs::write(&labels_file, "cat\nship\ndog\n").unwrap();
    let err = Dataset::open(dir.path(), Split::Train, Some(&labels_file))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-00000-of-00002") && err.contains("names.txt"),
        "{err}"
    );
}

#[test]
fn label_zero_and_out_of_range_labels_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000-of-00001");
    write_shard(
        &path,
        &[
            example(1, "cat", 1, "a.png"),
            example(0, "background", 2, "b.png"),
        ],
    );
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-00000-of-00001") && err.contains("record 1") && err.contains("label 0"),
        "{err}"
    );
    assert!(err.contains("background"), "{err}");

    write_shard(&path, &[example(4, "plane", 1, "a.png")]);
    fs::write(dir.path().join("labels.txt"), "cat\ndog\nship\n").unwrap();
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 4") && err.contains("1..=3"), "{err}");
}

#[test]
fn a_missing_class_without_labels_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(
        &dir.path().join("train-00000-of-00001"),
        &[
            example(1, "cat", 1, "a.png"),
            example(3, "ship", 2, "b.png"),
        ],
    );
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 2") && err.contains("labels file"),
        "{err}"
    );
}

#[test]
fn no_shards_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("train-notes.txt"), b"x").unwrap();
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no train shards"), "{err}");
}

#[test]
fn corrupt_and_truncated_shards_are_errors_naming_the_file() {
    let (dir, _) = fixture();
    let shard = dir.path().join("train-00001-of-00002");
    let good = fs::read(&shard).unwrap();

    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    fs::write(&shard, &bad).unwrap();
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-00001-of-00002"), "{err}");

    fs::write(&shard, &good[..good.len() - 3]).unwrap();
    let err = Dataset::open(dir.path(), Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-00001-of-00002") && err.contains("truncated"),
        "{err}"
    );

    // Corruption after indexing shows up when the record is read, at its real offset.
    fs::write(&shard, &good).unwrap();
    let dataset = Dataset::open(dir.path(), Split::Train, None).unwrap();
    let last = dataset.records[12];
    let mut bad = good.clone();
    bad[last.offset as usize + 20] ^= 1;
    fs::write(&shard, &bad).unwrap();
    let err = dataset.read(12).unwrap_err().to_string();
    assert!(
        err.contains("train-00001-of-00002") && err.contains(&format!("byte {}", last.offset)),
        "{err}"
    );
}

#[test]
fn digest_covers_names_and_contents() {
    let (dir, _) = fixture();
    let dataset = Dataset::open(dir.path(), Split::Train, None).unwrap();
    let digest = dataset.digest().unwrap();
    assert_eq!(digest.len(), 64);
    assert_eq!(digest, dataset.digest().unwrap());
    let validation = Dataset::open(dir.path(), Split::Validation, None).unwrap();
    assert_ne!(digest, validation.digest().unwrap());
    let shard = &dataset.files[1];
    let mut bytes = fs::read(shard).unwrap();
    bytes[100] ^= 1;
    fs::write(shard, bytes).unwrap();
    assert_ne!(digest, dataset.digest().unwrap());
}

#[test]
fn epoch_orders_are_seeded_permutations() {
    let (dir, _) = fixture();
    let dataset = Dataset::open(dir.path(), Split::Train, None).unwrap();
    let n = dataset.len();
    assert_eq!(
        epoch_order(&dataset, &Order::Sequential, 1, 5),
        (0..n).collect::<Vec<_>>()
    );
    let order = Order::ShuffleBuffer { capacity: 5 };
    let first = epoch_order(&dataset, &order, 1, 0);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(first, epoch_order(&dataset, &order, 1, 0));
    assert_ne!(first, epoch_order(&dataset, &order, 1, 1));
    assert_ne!(first, epoch_order(&dataset, &order, 2, 0));
    assert_ne!(first, (0..n).collect::<Vec<_>>());

    // A buffer of one only shuffles the shards: each shard's records stay in file order.
    let shards_only: Vec<Vec<usize>> = (0..20)
        .map(|epoch| epoch_order(&dataset, &Order::ShuffleBuffer { capacity: 1 }, 1, epoch))
        .collect();
    let in_order: Vec<usize> = (0..n).collect();
    let swapped: Vec<usize> = (7..13).chain(0..7).collect();
    assert!(shards_only.iter().all(|o| *o == in_order || *o == swapped));
    assert!(shards_only.contains(&in_order) && shards_only.contains(&swapped));

    // A buffer as large as the data is a full shuffle: any record can come first.
    let firsts: std::collections::BTreeSet<usize> = (0..200)
        .map(|epoch| epoch_order(&dataset, &Order::ShuffleBuffer { capacity: 100 }, 3, epoch)[0])
        .collect();
    assert_eq!(firsts.len(), n);
}

#[test]
fn loader_output_does_not_depend_on_the_thread_count() {
    let (dir, _) = fixture();
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Train, None).unwrap());
    let one = collect(&dataset, config(1), 0, 0);
    let three = collect(&dataset, config(3), 0, 0);
    assert_eq!(one.len(), 4);
    assert_eq!(one, three);
    let small_prefetch = collect(
        &dataset,
        LoaderConfig {
            prefetch: 0,
            ..config(2)
        },
        0,
        0,
    );
    assert_eq!(one, small_prefetch);
    // Another epoch reorders and re-augments.
    assert_ne!(one, collect(&dataset, config(2), 1, 0));
    // Indices follow the epoch order; labels follow the indices.
    let order = epoch_order(&dataset, &config(1).order, 42, 0);
    let indices: Vec<usize> = one.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, order);
    for batch in &one {
        for (&idx, &label) in batch.indices.iter().zip(&batch.labels) {
            assert_eq!(label, dataset.records[idx].label);
        }
        assert_eq!(batch.images.len(), batch.len() * 3 * 9 * 9);
        assert!(batch.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn starting_at_batch_k_equals_skipping_k() {
    let (dir, _) = fixture();
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Train, None).unwrap());
    let all = collect(&dataset, config(2), 3, 0);
    for start in 0..=all.len() + 1 {
        let resumed = collect(&dataset, config(2), 3, start);
        assert_eq!(resumed, all[start.min(all.len())..], "start {start}");
    }
}

#[test]
fn sequential_batches_cover_every_record_once() {
    let (dir, _) = fixture();
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Train, None).unwrap());
    let cfg = LoaderConfig {
        order: Order::Sequential,
        transform: Transform::Eval,
        ..config(2)
    };
    let batches = collect(&dataset, cfg, 0, 0);
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        [4, 4, 4, 1]
    );
    assert_eq!(batches.len(), Loader::batches_per_epoch(13, 4, false));
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..13).collect::<Vec<_>>());

    let dropped = collect(
        &dataset,
        LoaderConfig {
            drop_last: true,
            ..cfg
        },
        0,
        0,
    );
    assert_eq!(dropped.len(), 3);
    assert_eq!(dropped[..], batches[..3]);
}

#[test]
fn eval_batches_have_the_right_shape_and_range() {
    let (dir, _) = fixture();
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Validation, None).unwrap());
    let cfg = LoaderConfig {
        batch_size: 3,
        size: 16,
        order: Order::Sequential,
        transform: Transform::Eval,
        ..config(2)
    };
    let batches = collect(&dataset, cfg, 0, 0);
    assert_eq!(batches.len(), 2);
    let tensor = batches[0].tensor(16, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), [3, 3, 16, 16]);
    let tensor = batches[1].tensor(16, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), [1, 3, 16, 16]);
    let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(values.iter().any(|&v| v < 0.0) && values.iter().any(|&v| v > 0.0));
    // The wrong size is an error, not a panic.
    assert!(batches[0].tensor(15, &candle_core::Device::Cpu).is_err());
    // Eval batches do not depend on the seed or epoch.
    let other = collect(&dataset, LoaderConfig { seed: 7, ..cfg }, 4, 0);
    assert_eq!(batches, other);
}

#[test]
fn an_undecodable_image_names_shard_offset_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken = example(2, "dog", 2, "broken.png");
    broken.encoded.truncate(40);
    write_shard(
        &dir.path().join("train-00000-of-00001"),
        &[example(1, "cat", 1, "fine.png"), broken],
    );
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Train, None).unwrap());
    let offset = dataset.records[1].offset;
    let cfg = LoaderConfig {
        batch_size: 1,
        order: Order::Sequential,
        ..config(2)
    };
    let mut loader = Loader::new(dataset, cfg, 0, 0);
    assert!(loader.next().unwrap().is_ok());
    let err = loader.next().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("train-00000-of-00001")
            && err.contains(&format!("byte {offset}"))
            && err.contains("broken.png"),
        "{err}"
    );
    assert!(loader.next().is_none());
}

#[test]
fn bad_configuration_is_an_error_and_dropping_stops_the_workers() {
    let (dir, _) = fixture();
    let dataset = Arc::new(Dataset::open(dir.path(), Split::Train, None).unwrap());
    let mut loader = Loader::new(
        Arc::clone(&dataset),
        LoaderConfig {
            batch_size: 0,
            ..config(1)
        },
        0,
        0,
    );
    assert!(loader.next().unwrap().is_err());
    assert!(loader.next().is_none());

    // Dropped after one batch of many: returns without draining the epoch.
    let cfg = LoaderConfig {
        batch_size: 1,
        prefetch: 1,
        ..config(3)
    };
    let mut loader = Loader::new(dataset, cfg, 0, 0);
    assert!(loader.next().unwrap().is_ok());
    drop(loader);
}
