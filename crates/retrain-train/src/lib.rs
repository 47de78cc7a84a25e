//! Fine-tuning Inception-v3 on TFRecord shards: the input pipeline (`data`, `augment`, `loader`),
//! optimisers and learning-rate schedules (`optim`), losses, the bottleneck cache, checkpoints,
//! the training loop (`train`), evaluation (`eval`, `metrics`), prediction (`predict`) and
//! pictures (`plot`).

pub mod augment;
pub mod bottleneck;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod train;
