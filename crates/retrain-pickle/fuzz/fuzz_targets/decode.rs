//! Arbitrary bytes as a CIFAR batch or meta file: every input must give Ok or an Error, never a
//! panic, an abort or an allocation blow-up (run with -malloc_limit_mb).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use retrain_pickle::{Dataset, decode_batch, decode_meta};

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz");
    for dataset in [Dataset::Cifar10, Dataset::Cifar100] {
        if let Ok(batch) = decode_batch(data, dataset, origin) {
            assert_eq!(batch.pixels().len(), batch.len() * retrain_pickle::IMAGE_BYTES);
            assert_eq!(batch.filenames.len(), batch.len());
        }
        let _ = decode_meta(data, dataset, origin);
    }
});
