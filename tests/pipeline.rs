//! The chain end to end through `cargo xtask`, on a small synthetic dataset: two clean runs give
//! byte-identical artifacts (one of them with its download dropped twice), a run killed at random
//! points in every stage and then rerun gives the clean run's artifacts with no half-written file
//! ever visible, and changing one parameter reruns that stage and the ones after it only.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The demo chain's stages, in order.
const STAGES: [&str; 7] = [
    "synth", "fetch", "extract", "sort", "tfrecord", "train", "eval",
];

/// splitmix64: the kill points' random numbers.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// After a crash, every file a reader would look at is whole: equal to the clean run's file of
/// that name; for the append-only files, a prefix of it ending at a line (metrics.jsonl) or whole
/// records only (event files); a checkpoint the clean run pruned later still parses.
fn assert_nothing_half_written(dir: &Path, clean: &Path, when: &str) {
    for relative in files(dir).into_iter().filter(|p| !is_temporary(p)) {
        let path = dir.join(&relative);
        let bytes = std::fs::read(&path).unwrap();
        if is_event_file(&relative) {
            let mut reader = retrain_tfrecord::record::RecordReader::open(&path).unwrap();
            let mut record = Vec::new();
            while reader
                .read_record(&mut record)
                .unwrap_or_else(|e| panic!("{when}: {}: {e}", path.display()))
            {}
            continue;
        }
        let clean_path = clean.join(&relative);
        if relative.file_name().is_some_and(|n| n == "metrics.jsonl") {
            let whole = std::fs::read(&clean_path).unwrap();
            assert!(
                whole.starts_with(&bytes) && (bytes.is_empty() || bytes.ends_with(b"\n")),
                "{when}: {} is not whole lines of the clean run's",
                path.display()
            );
        } else if clean_path.exists() {
            assert!(
                comparable(dir, &relative) == comparable(clean, &relative),
                "{when}: {} differs from the clean run's (half-written?)",
                path.display()
            );
        } else if relative.starts_with("runs/demo/checkpoints") {
            safetensors::SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("{when}: {}: {e}", path.display()));
        } else {
            panic!("{when}: {} is not in the clean run", path.display());
        }
    }
    assert_manifests_hold(dir);
}

#[test]
fn the_chain_is_reproducible_across_clean_runs_drops_and_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "small.toml", SMALL_DEMO);
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let demo = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "demo",
            "--workdir",
            dir.to_str().unwrap(),
            "--config",
            &config,
        ];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&run_ok(&mut xtask(&args)).stderr).into_owned()
    };

    // Two clean runs, the second with its download broken off twice.
    let log = demo(&a, &[]);
    assert!(outcomes(&log).iter().all(|(_, o)| *o == "ran"), "{log}");
    assert_eq!(outcomes(&log).len(), STAGES.len(), "{log}");
    let log = demo(&b, &["--drop-connections", "2"]);
    let breaks: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let at = l.split("the transfer broke off at byte ").nth(1)?;
            at.split(':').next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        breaks.len(),
        2,
        "two dropped connections, each logged:\n{log}"
    );
    assert!(
        breaks[0] > 0 && breaks[1] > breaks[0],
        "each retry resumed: {breaks:?}"
    );
    assert_same_artifacts(&a, &b);

    // A third run, killed once in each stage at a random moment (`--to` that stage, so a late
    // kill finds the chain finished rather than in a later stage), then finished.
    let seed = std::env::var("RETRAIN_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill points from RETRAIN_E2E_SEED={seed}");
    let mut state = seed;
    let mut interrupted = 0;
    for stage in STAGES {
        // Roughly how long each stage takes here.
        let span_ms = match stage {
            "train" => 5_000,
            "eval" => 2_000,
            "fetch" => 1_200,
            _ => 200,
        };
        // Up to three tries to catch the stage while it runs; a retry reruns the finished stage
        // alone.
        for attempt in 0..3 {
            let delay = Duration::from_millis(next(&mut state) % span_ms);
            let mut args = vec![
                "demo",
                "--workdir",
                c.to_str().unwrap(),
                "--config",
                &config,
                "--drop-connections",
                "1",
                "--to",
                stage,
            ];
            if attempt > 0 {
                args.extend(["--from", stage, "--force"]);
            }
            let mut chain = Chain::spawn(&args);
            let running = if attempt > 0 {
                "--force, running"
            } else {
                "running"
            };
            assert!(
                chain.wait_for(&format!("pipeline: {stage}: {running}")),
                "{stage} did not start:\n{}",
                chain.log.join("\n")
            );
            let killed = chain.kill_after(delay);
            let when = format!(
                "{} {delay:?} into {stage} (RETRAIN_E2E_SEED={seed})",
                if killed {
                    "killed"
                } else {
                    "finished before a kill"
                }
            );
            eprintln!("{when}");
            assert_nothing_half_written(&c, &a, &when);
            if killed {
                interrupted += 1;
                break;
            }
        }
    }
    eprintln!("{interrupted} of {} stages interrupted", STAGES.len());
    demo(&c, &[]);
    assert_same_artifacts(&a, &c);

    // Rerun: nothing to do. One parameter changed: that stage and the later ones rerun.
    let log = demo(&a, &[]);
    assert!(outcomes(&log).iter().all(|(_, o)| *o == "skipped"), "{log}");
    let log = demo(&a, &["--set", "train.threads=1"]);
    assert!(
        outcomes(&log).iter().all(|(_, o)| *o == "skipped"),
        "a setting never reruns a stage:\n{log}"
    );
    let log = demo(&a, &["--set", "train.epochs=3"]);
    let ran: Vec<(String, &str)> = outcomes(&log);
    let expected: Vec<(String, &str)> = STAGES
        .iter()
        .map(|s| {
            let o = if ["train", "eval"].contains(s) {
                "ran"
            } else {
                "skipped"
            };
            ((*s).to_owned(), o)
        })
        .collect();
    assert_eq!(ran, expected, "{log}");
}

#[test]
fn the_pipeline_downloads_pretrained_weights_and_trains_from_them() {
    let tmp = tempfile::tempdir().unwrap();
    let demo_config = write_config(tmp.path(), "small.toml", SMALL_DEMO);
    let photos = user_images(tmp.path(), &demo_config);
    // Weights in torchvision's file format (seeded, not ImageNet-trained: none can be
    // downloaded here), served on 127.0.0.1 in place of download.pytorch.org.
    let served = tmp.path().join("served/inception_v3_google-0cc3c7bd.pth");
    std::fs::create_dir_all(served.parent().unwrap()).unwrap();
    run_ok(
        cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "--locked",
                "-p",
                "retrain-inception",
            ])
            .args(["--", "convert", "--output"])
            .arg(&served),
    );
    let bytes = std::fs::read(&served).unwrap();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let mut serve = retrain_serve::Config::from_path(&served).unwrap();
    serve.faults = vec![retrain_serve::Fault::DropAfter(bytes.len() as u64 / 3)];
    let server = retrain_serve::Server::start(serve).unwrap();

    let config = write_config(tmp.path(), "train.toml", SMALL_TRAIN);
    let work = tmp.path().join("work");
    let url = format!("weights.url={}", server.url());
    let sha = format!("weights.sha256={sha256}");
    let size = format!("weights.size={}", bytes.len());
    let pipeline = [
        "pipeline",
        "--images",
        photos.to_str().unwrap(),
        "--workdir",
        work.to_str().unwrap(),
        "--config",
        &config,
        "--set",
        &url,
        "--set",
        &sha,
        "--set",
        &size,
    ];
    let out = run_ok(&mut xtask(&pipeline));
    let log = String::from_utf8_lossy(&out.stderr);
    let ran: Vec<String> = outcomes(&log).into_iter().map(|(s, _)| s).collect();
    assert_eq!(ran, ["weights", "tfrecord", "train", "eval"], "{log}");
    assert_eq!(
        std::fs::read(work.join("weights/inception_v3_google-0cc3c7bd.pth")).unwrap(),
        bytes
    );
    assert!(
        log.contains("pretrained weights") && log.contains("re-initialised for 10 classes"),
        "training started from the downloaded weights:\n{log}"
    );
    let manifest = retrain_stage::Manifest::read(&work.join("runs/photos"))
        .unwrap()
        .unwrap();
    assert_eq!(manifest.inputs["weights"].sha256, sha256);
    assert!(
        !manifest.params.contains_key("init"),
        "{:?}",
        manifest.params
    );
    assert!(work.join("runs/photos/eval/metrics.json").exists());

    let out = run_ok(&mut xtask(&pipeline));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(outcomes(&log).iter().all(|(_, o)| *o == "skipped"), "{log}");
}
