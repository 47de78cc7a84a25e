//! Fine-tuning Inception-v3 on TFRecord shards: the input pipeline (`data`, `augment`, `loader`),
//! optimisers and learning-rate schedules (`optim`), pictures (`plot`), and training, evaluation and
//! prediction.

pub mod augment;
pub mod data;
pub mod loader;
pub mod optim;
pub mod plot;
