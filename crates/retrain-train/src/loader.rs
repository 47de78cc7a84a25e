//! Batches of transformed images, made on worker threads ahead of the training loop, in a fixed
//! order, the same bytes whatever the thread count.
//!
//! An epoch's record order ([`epoch_order`]) is computed from the index alone. Worker threads take
//! the epoch's positions one at a time, in order, read, decode and transform the image, and send it
//! back; the [`Loader`] assembles batches in position order. Workers never run more than
//! `prefetch` batches ahead of the batch last handed out, so memory stays bounded. Every random
//! draw comes from a generator made by [`stream_rng`] from `(seed, stream, epoch, position)`, so
//! nothing depends on which thread did the work or when.

use std::collections::BTreeMap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::augment::{TrainAugment, decode, eval_transform};
use crate::data::{self, Dataset};

/// [`stream_rng`]'s stream for the epoch order: `"ORDER"` in ASCII.
pub const ORDER_STREAM: u64 = 0x004f_5244_4552;
/// [`stream_rng`]'s stream for training augmentation: `"AUGMENT"` in ASCII.
pub const AUGMENT_STREAM: u64 = 0x0041_5547_4d45_4e54;

/// The generator for one purpose (`stream`), epoch and position under `seed`: a ChaCha8 generator
/// whose 256-bit key is `seed`, `stream`, `epoch` and `position`, each as 8 little-endian bytes,
/// in that order. Distinct tuples give distinct keys, so every image of every epoch gets its own
/// independent stream.
pub fn stream_rng(seed: u64, stream: u64, epoch: u64, position: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, stream, epoch, position]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The order records are visited in during an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Record index order, `0..n`, every epoch.
    Sequential,
    /// TF-style streaming shuffle: the shards in a random order, their records streamed in file
    /// order through a buffer of `capacity` (at least 1), each output drawn uniformly from it.
    ShuffleBuffer { capacity: usize },
}

/// What is done to each decoded image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// The recipe's training distortions.
    Train(TrainAugment),
    /// The recipe's evaluation crop and resize.
    Eval,
}

/// How to make batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (at least 1).
    pub batch_size: usize,
    /// Output side, pixels (at least 1).
    pub size: usize,
    pub seed: u64,
    pub order: Order,
    pub transform: Transform,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Drop the last batch if it is short.
    pub drop_last: bool,
    /// Batches made ahead of the one last handed out; 0 means 1.
    pub prefetch: usize,
}

/// One batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `N × 3 × S × S`, CHW per image, in `[-1, 1]`; `N = indices.len()`.
    pub images: Vec<f32>,
    /// 0-based labels.
    pub labels: Vec<u32>,
    /// Record indices into the dataset.
    pub indices: Vec<usize>,
}

impl Batch {
    /// The images as an `(N, 3, size, size)` tensor on `device`.
    pub fn tensor(
        &self,
        size: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.images, (self.indices.len(), 3, size, size), device)
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a record; names the shard and the record's offset.
    #[error(transparent)]
    Data(#[from] data::Error),
    #[error("{}: record at byte {offset} ({filename:?}): the image does not decode", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        filename: String,
        /// Boxed: an `ImageError` is large and would make every `Result` carrying this large.
        #[source]
        source: Box<image::ImageError>,
    },
    #[error("loader configuration: {problem}")]
    Config { problem: &'static str },
    #[error("starting a loader thread")]
    Spawn(#[source] io::Error),
    #[error("a loader thread failed at epoch position {position}: {message}")]
    Worker { position: usize, message: String },
    #[error("the loader threads stopped before delivering epoch position {position}")]
    Disconnected { position: usize },
}

/// The record order of one epoch: `Sequential` is `0..n`; `ShuffleBuffer` is TF's
/// `shuffle(buffer_size)` over shards read in a shuffled order: the shards are permuted
/// (Fisher–Yates), their records stream in file order into a buffer of `capacity` (at least 1);
/// each output is a uniformly chosen buffer element, whose slot the next streamed record takes
/// (once the stream is exhausted, the last element moves into the slot: swap-remove). All draws
/// come from `stream_rng(seed, ORDER_STREAM, epoch, 0)`. No image is read.
pub fn epoch_order(dataset: &Dataset, order: &Order, seed: u64, epoch: u64) -> Vec<usize> {
    let n = dataset.len();
    let capacity = match *order {
        Order::Sequential => return (0..n).collect(),
        Order::ShuffleBuffer { capacity } => capacity.max(1),
    };
    let mut rng = stream_rng(seed, ORDER_STREAM, epoch, 0);
    let n_files = dataset
        .records
        .iter()
        .map(|r| r.file as usize + 1)
        .max()
        .unwrap_or(0)
        .max(dataset.files.len());
    let mut by_file: Vec<Vec<usize>> = vec![Vec::new(); n_files];
    for (idx, rec) in dataset.records.iter().enumerate() {
        by_file[rec.file as usize].push(idx);
    }
    let mut files: Vec<usize> = (0..n_files).collect();
    for i in (1..files.len()).rev() {
        let j = below(&mut rng, i + 1);
        files.swap(i, j);
    }
    let mut stream = files
        .into_iter()
        .flat_map(|f| std::mem::take(&mut by_file[f]));
    let mut buffer: Vec<usize> = stream.by_ref().take(capacity).collect();
    let mut out = Vec::with_capacity(n);
    while !buffer.is_empty() {
        let j = below(&mut rng, buffer.len());
        match stream.next() {
            Some(next) => out.push(std::mem::replace(&mut buffer[j], next)),
            None => out.push(buffer.swap_remove(j)),
        }
    }
    out
}

/// A uniform integer in `0..bound` (`bound >= 1`).
fn below(rng: &mut ChaCha8Rng, bound: usize) -> usize {
    if bound <= 1 {
        0
    } else {
        rng.random_range(0..bound as u64) as usize
    }
}

/// What workers share.
#[derive(Debug)]
struct Shared {
    dataset: Arc<Dataset>,
    /// The epoch's record order.
    order: Vec<usize>,
    size: usize,
    seed: u64,
    epoch: u64,
    transform: Transform,
    /// One past the last position handed out this epoch.
    end: usize,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    /// The next position to take.
    next: usize,
    /// Positions at or past this wait (the prefetch window).
    limit: usize,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next position to work on, waiting for the window to open; `None` when done or stopped.
    fn take(&self) -> Option<usize> {
        let mut state = self.state();
        loop {
            if state.stop || state.next >= self.end {
                return None;
            }
            if state.next < state.limit {
                state.next += 1;
                return Some(state.next - 1);
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Reads, decodes and transforms the image at epoch position `position`.
    fn load(&self, position: usize) -> Result<Vec<f32>, Error> {
        let idx = self.order[position];
        let record = self.dataset.read(idx)?;
        let img = decode(&record.encoded).map_err(|source| {
            let rec = self.dataset.records[idx];
            Error::Decode {
                path: self.dataset.files[rec.file as usize].clone(),
                offset: rec.offset,
                filename: record.filename.clone(),
                source: Box::new(source),
            }
        })?;
        let mut out = vec![0.0f32; 3 * self.size * self.size];
        match &self.transform {
            Transform::Train(augment) => {
                let mut rng = stream_rng(self.seed, AUGMENT_STREAM, self.epoch, position as u64);
                augment.apply(&img, self.size, &mut rng, &mut out);
            }
            Transform::Eval => eval_transform(&img, self.size, &mut out),
        }
        Ok(out)
    }
}

type Item = (usize, Result<Vec<f32>, Error>);

fn worker(shared: &Shared, tx: &Sender<Item>) {
    while let Some(position) = shared.take() {
        let result =
            catch_unwind(AssertUnwindSafe(|| shared.load(position))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panicked".to_owned());
                Err(Error::Worker { position, message })
            });
        if tx.send((position, result)).is_err() {
            return;
        }
    }
}

/// The batches of one epoch, from batch `start_batch` on, made on `threads` worker threads with
/// up to `prefetch` batches ready ahead, yielded in order. Image `p` of the epoch (position `p` in
/// [`epoch_order`]) is transformed with `stream_rng(seed, AUGMENT_STREAM, epoch, p)`, so the bytes
/// do not depend on the thread count or on where the epoch was resumed. The last short batch is
/// dropped iff `drop_last`. After an error the iterator ends. Dropping the loader stops its
/// workers (each finishes at most the image it is on).
#[derive(Debug)]
pub struct Loader {
    shared: Arc<Shared>,
    rx: Option<Receiver<Item>>,
    workers: Vec<JoinHandle<()>>,
    batch_size: usize,
    prefetch: usize,
    /// The next batch to yield.
    next_batch: usize,
    n_batches: usize,
    /// Images received ahead of their batch, by position.
    pending: BTreeMap<usize, Result<Vec<f32>, Error>>,
    /// An error to report before anything else (bad configuration, a thread that did not start).
    failed: Option<Error>,
    done: bool,
}

impl Loader {
    /// Plans the epoch and starts the workers.
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig, epoch: u64, start_batch: usize) -> Self {
        let n = dataset.len();
        let n_batches = Self::batches_per_epoch(n, cfg.batch_size, cfg.drop_last);
        let end = n.min(n_batches.saturating_mul(cfg.batch_size));
        let order = epoch_order(&dataset, &cfg.order, cfg.seed, epoch);
        let prefetch = cfg.prefetch.max(1);
        let start = start_batch.min(n_batches);
        let failed = if cfg.batch_size == 0 {
            Some(Error::Config {
                problem: "the batch size must be at least 1",
            })
        } else if cfg.size == 0 {
            Some(Error::Config {
                problem: "the image size must be at least 1",
            })
        } else {
            None
        };
        let first = start.saturating_mul(cfg.batch_size).min(end);
        let shared = Arc::new(Shared {
            dataset,
            order,
            size: cfg.size,
            seed: cfg.seed,
            epoch,
            transform: cfg.transform,
            end,
            state: Mutex::new(State {
                next: first,
                limit: window_end(start, prefetch, cfg.batch_size, end),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let mut loader = Self {
            shared: Arc::clone(&shared),
            rx: None,
            workers: Vec::new(),
            batch_size: cfg.batch_size,
            prefetch,
            next_batch: start,
            n_batches,
            pending: BTreeMap::new(),
            failed,
            done: false,
        };
        if loader.failed.is_some() || first >= end {
            return loader;
        }
        let (tx, rx) = mpsc::channel();
        loader.rx = Some(rx);
        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(end - first)
        .max(1);
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("retrain-loader-{i}"))
                .spawn(move || worker(&shared, &tx));
            match spawned {
                Ok(handle) => loader.workers.push(handle),
                Err(e) => {
                    loader.failed = Some(Error::Spawn(e));
                    break;
                }
            }
        }
        loader
    }

    /// Batches in an epoch of `n` records: `n / batch_size` if `drop_last`, else rounded up; 0 if
    /// `batch_size` is 0.
    pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
        if batch_size == 0 {
            0
        } else if drop_last {
            n / batch_size
        } else {
            n.div_ceil(batch_size)
        }
    }

    /// Stops and joins the workers; the iterator ends.
    fn finish(&mut self) {
        self.done = true;
        self.shared.state().stop = true;
        self.shared.wake.notify_all();
        self.rx = None;
        self.pending.clear();
        for handle in self.workers.drain(..) {
            // A worker's panics are caught per image; a join error has nothing left to report.
            let _ = handle.join();
        }
    }

    fn next_batch(&mut self) -> Result<Option<Batch>, Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.next_batch >= self.n_batches {
            return Ok(None);
        }
        let lo = self.next_batch * self.batch_size;
        let hi = (lo + self.batch_size).min(self.shared.end);
        let Some(rx) = &self.rx else {
            return Ok(None);
        };
        while self.pending.range(lo..hi).count() < hi - lo {
            let (position, result) = rx.recv().map_err(|_| {
                let position = (lo..hi)
                    .find(|p| !self.pending.contains_key(p))
                    .unwrap_or(lo);
                Error::Disconnected { position }
            })?;
            self.pending.insert(position, result);
        }
        let plane = 3 * self.shared.size * self.shared.size;
        let mut batch = Batch {
            images: Vec::with_capacity((hi - lo) * plane),
            labels: Vec::with_capacity(hi - lo),
            indices: Vec::with_capacity(hi - lo),
        };
        for position in lo..hi {
            let image = self
                .pending
                .remove(&position)
                .ok_or(Error::Disconnected { position })??;
            let idx = self.shared.order[position];
            batch.images.extend_from_slice(&image);
            batch.labels.push(self.shared.dataset.records[idx].label);
            batch.indices.push(idx);
        }
        self.next_batch += 1;
        self.shared.state().limit = window_end(
            self.next_batch,
            self.prefetch,
            self.batch_size,
            self.shared.end,
        );
        self.shared.wake.notify_all();
        Ok(Some(batch))
    }
}

/// One past the last position workers may take while batch `next_batch` is the next to yield.
fn window_end(next_batch: usize, prefetch: usize, batch_size: usize, end: usize) -> usize {
    next_batch
        .saturating_add(prefetch)
        .saturating_mul(batch_size)
        .min(end)
}

impl Iterator for Loader {
    type Item = Result<Batch, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_batch() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.finish();
                None
            }
            Err(e) => {
                self.finish();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            let left = self.n_batches.saturating_sub(self.next_batch);
            (0, Some(left + usize::from(self.failed.is_some())))
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_every_coordinate() {
        let first = |rng: ChaCha8Rng| {
            let mut rng = rng;
            rng.random::<u64>()
        };
        let base = first(stream_rng(1, AUGMENT_STREAM, 2, 3));
        assert_eq!(base, first(stream_rng(1, AUGMENT_STREAM, 2, 3)));
        for other in [
            stream_rng(0, AUGMENT_STREAM, 2, 3),
            stream_rng(1, ORDER_STREAM, 2, 3),
            stream_rng(1, AUGMENT_STREAM, 3, 3),
            stream_rng(1, AUGMENT_STREAM, 2, 4),
            stream_rng(1, AUGMENT_STREAM, 3, 2),
        ] {
            assert_ne!(base, first(other));
        }
    }

    #[test]
    fn a_loader_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Loader>();
        send::<Error>();
    }

    #[test]
    fn batches_per_epoch_rounds_as_asked() {
        assert_eq!(Loader::batches_per_epoch(10, 3, false), 4);
        assert_eq!(Loader::batches_per_epoch(10, 3, true), 3);
        assert_eq!(Loader::batches_per_epoch(9, 3, false), 3);
        assert_eq!(Loader::batches_per_epoch(0, 3, false), 0);
        assert_eq!(Loader::batches_per_epoch(10, 0, false), 0);
    }
}
