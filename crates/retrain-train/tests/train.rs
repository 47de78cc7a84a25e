//! Training end to end on a small synthetic CIFAR-10 set at 75×75: learning works in both modes,
//! a resumed run equals an uninterrupted one, evaluation counts every example once, predict
//! answers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use retrain_stage::NoProgress;
use retrain_train::{
    eval,
    optim::LrSchedule,
    train::{self, Config, Init, Outcome, Record, Trainable},
};

fn records(run: &Path) -> Vec<Record> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn head_config(data: &Path, run: PathBuf) -> Config {
    let mut cfg = Config::new(data.to_owned(), run, Trainable::Head);
    cfg.init = Init::Seeded;
    cfg.size = 75;
    cfg.batch_size = 50;
    cfg.epochs = 30;
    cfg.lr = LrSchedule {
        initial: 0.01,
        ..LrSchedule::default()
    };
    cfg.cache_dir = data.join("bottlenecks");
    cfg
}

fn evaluate(run: &Path, data: &Path) -> (eval::Config, f64, u64) {
    let cfg = eval::Config {
        run: run.to_owned(),
        tfrecords: data.to_owned(),
        size: None,
        batch_size: 32,
        threads: 2,
        device: "cpu".into(),
        model_sha256: None,
    };
    let (report, tally) = eval::run(&cfg, &NoProgress).unwrap();
    (cfg, report.precision_at_1, tally.examples())
}

#[test]
fn head_training_on_a_seeded_backbone_beats_chance_and_evaluates_every_example() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tfrecords");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_tfrecords(&data, 100);
    let run = dir.path().join("runs/head");
    let cfg = head_config(&data, run.clone());
    let (outcome, manifest) = train::run(&cfg, &AtomicBool::new(false), &NoProgress).unwrap();
    let Outcome::Finished { steps, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(steps, 30 * (500 / 50));
    assert!(manifest.is_some());
    for file in [
        "model.safetensors",
        "labels.txt",
        "loss.png",
        "model.json",
        "manifest.json",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    let recs = records(&run);
    assert_eq!(recs.len() as u64, steps / 10);
    let first = recs.first().unwrap().loss;
    let last = recs.last().unwrap().loss;
    assert!(last < first, "loss {first} → {last}");

    let (_, precision, examples) = evaluate(&run, &data);
    assert_eq!(examples, 100, "every validation example exactly once");
    eprintln!("head-only precision@1 = {precision}");
    assert!(precision > 0.3, "precision@1 {precision} (chance 0.1)");
    let metrics = std::fs::read_to_string(run.join("eval/metrics.json")).unwrap();
    assert!(metrics.contains("\"examples\": 100"), "{metrics}");
    assert!(run.join("eval/confusion.png").exists());

    // A second run reuses the bottleneck cache and gives the same model, byte for byte.
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let run2 = dir.path().join("runs/head2");
    train::run(
        &head_config(&data, run2.clone()),
        &AtomicBool::new(false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        model,
        std::fs::read(run2.join("model.safetensors")).unwrap()
    );
    assert_eq!(records(&run), records(&run2));

    // Full training (every layer, augmentation, batch statistics) from the head-trained model,
    // as the recipe fine-tunes a pretrained one: it keeps the classifier (same class count).
    let full_run = dir.path().join("runs/full");
    let mut full = Config::new(data.clone(), full_run.clone(), Trainable::All);
    full.init = Init::Weights(run.join("model.safetensors"));
    full.size = 75;
    full.batch_size = 16;
    full.max_steps = Some(30);
    full.optimizer = retrain_train::optim::OptimizerKind::parse("adamw").unwrap();
    full.lr = LrSchedule {
        initial: 1e-4,
        ..LrSchedule::default()
    };
    // Running statistics that follow the new batches within the test's 30 steps.
    full.bn_decay = 0.9;
    full.log_every = 5;
    full.shuffle_buffer = 200;
    let start = std::time::Instant::now();
    train::run(&full, &AtomicBool::new(false), &NoProgress).unwrap();
    eprintln!(
        "full training: 30 steps in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    assert_ne!(
        before,
        std::fs::read(full_run.join("model.safetensors")).unwrap()
    );
    let (_, full_precision, examples) = evaluate(&full_run, &data);
    eprintln!("full training precision@1 = {full_precision} (head-only {precision})");
    assert_eq!(examples, 100);
    // Measured 0.30 (deterministic on the CPU): 3× chance, but below the head-only model it
    // started from (0.46): with a random backbone, training-mode batch statistics of augmented
    // images differ from the evaluation-mode features the classifier was fitted to.
    assert!(
        full_precision >= 0.2,
        "precision@1 {full_precision} (chance 0.1)"
    );

    // Predict answers for an image of any size.
    let device = candle_core::Device::Cpu;
    let trained = eval::load_run(&run, &device).unwrap();
    let png = dir.path().join("x.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 128]))
        .save(&png)
        .unwrap();
    let preds = retrain_train::predict::predict(&trained, &[png], 5).unwrap();
    assert_eq!(preds[0].top.len(), 5);
    let total: f32 = preds[0].top.iter().map(|g| g.probability).sum();
    assert!(total <= 1.0 + 1e-5 && total > 0.0);
}

#[test]
fn a_resumed_run_gives_the_same_losses_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tfrecords");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_tfrecords(&data, 20);
    let mut cfg = Config::new(data.clone(), dir.path().join("runs/full"), Trainable::All);
    cfg.init = Init::Seeded;
    cfg.size = 75;
    cfg.batch_size = 8;
    cfg.max_steps = Some(6);
    cfg.log_every = 1;
    cfg.shuffle_buffer = 40;
    cfg.threads = 2;
    cfg.dropout = 0.5;
    let (outcome, _) = train::run(&cfg, &AtomicBool::new(false), &NoProgress).unwrap();
    assert!(
        matches!(outcome, Outcome::Finished { steps: 6, .. }),
        "{outcome:?}"
    );
    let full = records(&cfg.run);
    assert_eq!(full.len(), 6);

    // The same run, stopped after 3 steps (Ctrl-C is the same path: a checkpoint, then stop)…
    let mut part = cfg.clone();
    part.run = dir.path().join("runs/resumed");
    part.max_steps = Some(3);
    train::run(&part, &AtomicBool::new(false), &NoProgress).unwrap();
    // …then resumed to 6 steps, with another thread count.
    part.max_steps = Some(6);
    part.resume = true;
    part.threads = 1;
    let (outcome, _) = train::run(&part, &AtomicBool::new(false), &NoProgress).unwrap();
    assert!(
        matches!(outcome, Outcome::Finished { steps: 6, .. }),
        "{outcome:?}"
    );
    assert_eq!(full, records(&part.run));
    assert_eq!(
        std::fs::read(cfg.run.join("model.safetensors")).unwrap(),
        std::fs::read(part.run.join("model.safetensors")).unwrap()
    );

    // Ctrl-C: the flag set before a step stops after it with a checkpoint.
    let mut stop = cfg.clone();
    stop.run = dir.path().join("runs/stopped");
    let (outcome, _) = train::run(&stop, &AtomicBool::new(true), &NoProgress).unwrap();
    let Outcome::Interrupted { steps, checkpoint } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(steps, 1);
    assert!(checkpoint.exists());
    assert!(!stop.run.join("model.safetensors").exists());
    assert!(!stop.run.join("manifest.json").exists());

    // Resuming with other settings is refused, naming what differs.
    let mut other = part.clone();
    other.lr.initial = 0.5;
    let err = train::run(&other, &AtomicBool::new(false), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("lr"), "{err}");
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tfrecords");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_tfrecords(&data, 10);
    let mut cfg = head_config(&data, dir.path().join("runs/nan"));
    cfg.batch_size = 10;
    cfg.optimizer = retrain_train::optim::OptimizerKind::parse("sgd").unwrap();
    cfg.lr = LrSchedule {
        initial: 1e30,
        ..LrSchedule::default()
    };
    let err = train::run(&cfg, &AtomicBool::new(false), &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, train::Error::NotFinite { .. }), "{msg}");
    assert!(
        msg.contains("training diverged") && msg.contains("lower --lr"),
        "{msg}"
    );
    assert!(!cfg.run.join("model.safetensors").exists());
}
