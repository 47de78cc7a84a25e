//! End-to-end tests of the retrain pipeline live in `tests/`.
