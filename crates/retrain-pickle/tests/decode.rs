//! Decoding what Python 2 (through retrain-synth's cPickle-exact writer), Python 3 with numpy 1 and
//! numpy 2 (fixtures made by scripts/make_pickle_fixtures.py) and the real `batches.meta` hold, and
//! refusing what is wrong with a message naming the file.

use std::path::Path;

use retrain_pickle::{Dataset, IMAGE_BYTES, decode_batch, decode_meta, read_batch};
use retrain_synth::Synthetic;
use retrain_synth::pickle::{Value, dumps};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Pixel (y, x) channel c of a CIFAR row (three planes).
fn plane_pixel(row: &[u8], y: usize, x: usize, c: usize) -> u8 {
    row[c * 1024 + y * 32 + x]
}

#[test]
fn python3_pickles_of_every_protocol_and_numpy_version_decode_alike() {
    let mut seen = 0;
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("py3-") {
            continue;
        }
        let cifar100 = name.contains("cifar100");
        let dataset = if cifar100 {
            Dataset::Cifar100
        } else {
            Dataset::Cifar10
        };
        let batch = read_batch(&path, dataset).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch.len(), 2, "{name}");
        assert_eq!(batch.batch_label, "training batch 1 of 5", "{name}");
        assert_eq!(
            batch.filenames,
            ["a_s_000001.png", "b_s_000002.png"],
            "{name}"
        );
        if cifar100 {
            assert_eq!(batch.labels, [3, 99], "{name}");
            assert_eq!(batch.coarse_labels, [1, 19], "{name}");
        } else {
            assert_eq!(batch.labels, [3, 9], "{name}");
            assert!(batch.coarse_labels.is_empty());
        }
        for image_idx in 0..2 {
            let row: Vec<u8> = (0..3072)
                .map(|j| ((image_idx * 31 + j * 7) % 256) as u8)
                .collect();
            let image = batch.image(image_idx);
            for (y, x, c) in [(0, 0, 0), (0, 31, 1), (31, 0, 2), (17, 5, 1), (31, 31, 0)] {
                assert_eq!(
                    image[(y * 32 + x) * 3 + c],
                    plane_pixel(&row, y, x, c),
                    "{name}: image {image_idx} ({y}, {x}, {c})"
                );
            }
        }
        seen += 1;
    }
    assert_eq!(
        seen, 32,
        "2 numpy versions × 4 protocols × 2 key types × 2 layouts"
    );
}

#[test]
fn python2_cifar_batches_decode_to_the_generators_pixels_the_right_way_up() {
    for (dataset, synth_dataset) in [
        (Dataset::Cifar10, retrain_synth::Dataset::Cifar10),
        (Dataset::Cifar100, retrain_synth::Dataset::Cifar100),
    ] {
        let synth = Synthetic::new(synth_dataset, 20, 3, 0).unwrap();
        for spec in synth.batches() {
            let pixels = synth.pixels(&spec);
            let bytes = synth.pickle_batch(&spec, &pixels);
            let batch = decode_batch(&bytes, dataset, Path::new(&spec.name)).unwrap();
            assert_eq!(batch.batch_label, spec.batch_label);
            let labels: Vec<u8> = synth.labels(&spec).iter().map(|&l| l as u8).collect();
            assert_eq!(batch.labels, labels);
            assert_eq!(batch.filenames, synth.filenames(&spec));
            if dataset == Dataset::Cifar100 {
                let coarse: Vec<u8> = synth
                    .coarse_labels(&spec)
                    .iter()
                    .map(|&l| l as u8)
                    .collect();
                assert_eq!(batch.coarse_labels, coarse);
            }
            for (idx, row) in pixels.chunks(3072).enumerate() {
                let image = batch.image(idx);
                for y in 0..32 {
                    for x in 0..32 {
                        for c in 0..3 {
                            assert_eq!(image[(y * 32 + x) * 3 + c], plane_pixel(row, y, x, c));
                        }
                    }
                }
            }
            assert_eq!(batch.pixels().len(), spec.images.len() * IMAGE_BYTES);
        }
    }
}

#[test]
fn the_real_batches_meta_decodes_to_the_ten_class_names() {
    let bytes = include_bytes!("../../retrain-synth/tests/fixtures/batches.meta");
    let meta = decode_meta(bytes, Dataset::Cifar10, Path::new("batches.meta")).unwrap();
    assert_eq!(
        meta.label_names,
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck"
        ]
    );
    let synth = Synthetic::new(retrain_synth::Dataset::Cifar100, 1, 0, 0).unwrap();
    let meta = decode_meta(&synth.pickle_meta(), Dataset::Cifar100, Path::new("meta")).unwrap();
    assert_eq!(meta.label_names.len(), 100);
    assert_eq!(meta.coarse_label_names[19], "vehicles_2");
}

/// A CIFAR-10 batch with the given parts, pickled as cPickle would.
fn batch_bytes(rows: usize, data_len: usize, labels: &[i64], filenames: &[&str]) -> Vec<u8> {
    let data = vec![7u8; data_len];
    let item = Value::Dict(vec![
        ("batch_label", Value::Str(b"x")),
        (
            "labels",
            Value::List(labels.iter().map(|&l| Value::Int(l)).collect()),
        ),
        (
            "data",
            Value::U8Matrix {
                rows,
                cols: 3072,
                data: &data,
            },
        ),
        (
            "filenames",
            Value::List(filenames.iter().map(|f| Value::Str(f.as_bytes())).collect()),
        ),
    ]);
    // U8Matrix asserts rows × cols == len, so build mismatches by hand below.
    dumps(&item, "numpy.core")
}

fn error(bytes: &[u8]) -> String {
    decode_batch(bytes, Dataset::Cifar10, Path::new("raw/data_batch_9"))
        .unwrap_err()
        .to_string()
}

#[test]
fn wrong_contents_are_errors_naming_the_file_and_the_problem() {
    let good = batch_bytes(2, 6144, &[1, 2], &["a.png", "b.png"]);
    assert!(decode_batch(&good, Dataset::Cifar10, Path::new("x")).is_ok());

    assert_eq!(
        error(&batch_bytes(2, 6144, &[1, 10], &["a.png", "b.png"])),
        "raw/data_batch_9: `labels[1]` is 10, outside 0..10"
    );
    assert_eq!(
        error(&batch_bytes(2, 6144, &[1], &["a.png", "b.png"])),
        "raw/data_batch_9: `labels` has 1 entries but `data` has 2 images"
    );
    assert_eq!(
        error(&batch_bytes(2, 6144, &[1, 2], &["a.png"])),
        "raw/data_batch_9: `filenames` has 1 entries but `data` has 2 images"
    );
    // The shape says 2 rows, the raw bytes hold 1 (patched in the BUILD state).
    let mut short = batch_bytes(2, 6144, &[1, 2], &["a.png", "b.png"]);
    let at = short
        .windows(5)
        .position(|w| w == [b'T', 0, 0x18, 0, 0])
        .unwrap();
    short[at + 2] = 0x0c;
    short.drain(at + 5..at + 5 + 3072);
    assert_eq!(
        error(&short),
        "raw/data_batch_9: `data` holds 3072 bytes, expected 2 × 3072 = 6144"
    );
    // Cifar-100 fields are required when asked for.
    let err = decode_batch(&good, Dataset::Cifar100, Path::new("train")).unwrap_err();
    assert_eq!(err.to_string(), "train: no `fine_labels` entry");
    // Truncation and garbage are refused by the scan, with the offset.
    let err = error(&good[..good.len() / 2]);
    assert!(
        err.starts_with("raw/data_batch_9: refused before decoding: offset"),
        "{err}"
    );
    assert!(error(b"not a pickle").contains("no PROTO opcode"));
}

#[test]
fn python2_fixtures_decode() {
    let path = Path::new(FIXTURES).join("py2-cifar10-data_batch.pkl");
    let batch = read_batch(&path, Dataset::Cifar10).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.batch_label, "training batch 1 of 5");
    let path = Path::new(FIXTURES).join("py2-cifar100-train.pkl");
    let batch = read_batch(&path, Dataset::Cifar100).unwrap();
    assert_eq!(batch.len(), 10);
    assert_eq!(batch.coarse_labels.len(), 10);
    let meta = retrain_pickle::read_meta(
        &Path::new(FIXTURES).join("py2-cifar100-meta.pkl"),
        Dataset::Cifar100,
    )
    .unwrap();
    assert_eq!(meta.coarse_label_names.len(), 20);
    let meta = retrain_pickle::read_meta(
        &Path::new(FIXTURES).join("py2-cifar10-batches.meta"),
        Dataset::Cifar10,
    )
    .unwrap();
    assert_eq!(meta.label_names[0], "airplane");
    // A CIFAR-10 meta is not a CIFAR-100 one.
    let err = retrain_pickle::read_meta(
        &Path::new(FIXTURES).join("py2-cifar10-batches.meta"),
        Dataset::Cifar100,
    )
    .unwrap_err();
    assert!(
        err.to_string().ends_with("no `fine_label_names` entry"),
        "{err}"
    );
}

#[test]
fn hostile_pickles_are_errors_not_crashes() {
    // 100,000 nested lists: serde-pickle alone would overflow the stack and abort.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    let err = decode_batch(&deep, Dataset::Cifar10, Path::new("deep.pkl")).unwrap_err();
    assert!(
        err.to_string().contains("nesting deeper than 32 levels"),
        "{err}"
    );

    // A 4 MB string memoised and referenced 10,000 times: 40 GB if copied.
    let mut wide = b"\x80\x02]q\x01(B\x00\x00\x40\x00".to_vec();
    wide.extend(std::iter::repeat_n(b'x', 4 << 20));
    wide.extend(b"q\x02");
    wide.extend(std::iter::repeat_n(*b"h\x02", 10_000).flatten());
    wide.extend(b"e.");
    let err = decode_batch(&wide, Dataset::Cifar10, Path::new("wide.pkl")).unwrap_err();
    assert!(err.to_string().contains("would copy more than"), "{err}");

    // Code execution is not on offer either.
    let err = decode_batch(
        b"\x80\x02cos\nsystem\nU\x02lsR.",
        Dataset::Cifar10,
        Path::new("x"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("global os.system"), "{err}");
}
