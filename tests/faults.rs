//! Faults rehearsed end to end through `cargo xtask`: a corrupted download is refused before
//! anything downstream runs, a corrupt image in a user's class folder is reported by its path
//! (and left out, as the reference's builder does),
//! and a full disk stops the chain with a clear error and the earlier artifacts intact. (A
//! download dropped twice and resumed is in `pipeline.rs`, where its artifacts are compared with a
//! clean run's.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn a_corrupted_download_is_refused_before_anything_downstream_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "small.toml", SMALL_DEMO);
    let work = tmp.path().join("work");
    let workdir = work.to_str().unwrap();
    run_ok(&mut xtask(&[
        "demo",
        "--workdir",
        workdir,
        "--config",
        &config,
        "--to",
        "synth",
    ]));
    // The file on the server changes after its digest was published: one byte flipped.
    let served = work.join("synth/cifar-10-python.tar.gz");
    let mut bytes = std::fs::read(&served).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&served, &bytes).unwrap();

    let stderr = run_err(&mut xtask(&[
        "demo",
        "--workdir",
        workdir,
        "--config",
        &config,
        "--from",
        "fetch",
    ]));
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: fetching"))
        .unwrap_or_else(|| panic!("fetch's error:\n{stderr}"));
    assert!(
        error.contains("downloads/cifar-10-python.tar.gz: sha256 mismatch: expected"),
        "the error names the file and what is wrong: {error}"
    );
    assert!(
        stderr.contains("stage `fetch` failed"),
        "the chain stops at fetch:\n{stderr}"
    );
    assert!(
        files(&work.join("downloads")).is_empty(),
        "nothing unverified is kept, nor given the archive's name: {:?}",
        files(&work.join("downloads"))
    );
    for later in ["raw", "images", "tfrecords", "runs"] {
        assert!(!work.join(later).exists(), "{later} was created:\n{stderr}");
    }
    assert_eq!(
        outcomes(&stderr).last().map(|(s, _)| s.as_str()),
        Some("fetch"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_image_in_a_class_folder_is_reported_by_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let demo_config = write_config(tmp.path(), "small.toml", SMALL_DEMO);
    let photos = user_images(tmp.path(), &demo_config);
    // A PNG cut short, as a failed copy leaves it.
    let class = photos.join("train_dir/cat");
    let whole = std::fs::read_dir(&class)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("a cat picture");
    let broken = class.join("broken.png");
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();

    let config = write_config(tmp.path(), "train.toml", SMALL_TRAIN);
    let work = tmp.path().join("work");
    let out = run_ok(&mut xtask(&[
        "pipeline",
        "--images",
        photos.to_str().unwrap(),
        "--seeded",
        "--workdir",
        work.to_str().unwrap(),
        "--config",
        &config,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("broken.png"))
        .unwrap_or_else(|| panic!("the log names broken.png:\n{stderr}"));
    assert!(
        warning.contains("WARN") && warning.contains("train_dir/cat/broken.png"),
        "{warning}"
    );
    // The conversion's report lists it with the reason, and training saw the 100 good images.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("tfrecords/report.json")).unwrap())
            .unwrap();
    let report = report.to_string();
    assert!(
        report.contains("cat/broken.png") && report.contains("PNG"),
        "{report}"
    );
    assert!(
        stderr.contains("train: 100 records"),
        "the other images were converted and trained on:\n{stderr}"
    );
    assert!(work.join("runs/photos/eval/metrics.json").exists());
}

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot (not root, no mount rights).
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_chain_with_a_clear_error_and_earlier_artifacts_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "small.toml", SMALL_DEMO);
    let work = tmp.path().join("work");
    // Room for every artifact up to the bottlenecks (about 3 MB), not for the trained model
    // (87 MB).
    let _disk = match Tmpfs::mount(&work, "12m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: this machine cannot mount a small tmpfs ({why})");
            return;
        }
    };
    let stderr = run_err(&mut xtask(&[
        "demo",
        "--workdir",
        work.to_str().unwrap(),
        "--config",
        &config,
    ]));
    assert!(
        stderr.contains("No space left on device"),
        "the error says the disk is full:\n{stderr}"
    );
    assert!(
        stderr.contains(&work.join("runs/demo").display().to_string()),
        "the error names the file it was writing:\n{stderr}"
    );
    assert!(stderr.contains("stage `train` failed"), "{stderr}");
    // The earlier stages' artifacts are intact, and nothing half-written is visible.
    for stage in ["synth", "downloads", "raw", "images", "tfrecords"] {
        assert!(work.join(stage).join("manifest.json").exists(), "{stage}");
    }
    assert_manifests_hold(&work);
    let run: Vec<PathBuf> = files(&work.join("runs/demo"))
        .into_iter()
        .filter(|p| !is_temporary(p) && !is_event_file(p))
        .collect();
    assert!(
        !run.iter()
            .any(|p| p.as_os_str() == "model.safetensors" || p.as_os_str() == "manifest.json"),
        "no model, no manifest: {run:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("runs/demo/train-config.json")).unwrap())
            .unwrap();
    assert!(config.is_object());
    for checkpoint in run.iter().filter(|p| p.starts_with("checkpoints")) {
        let bytes = std::fs::read(work.join("runs/demo").join(checkpoint)).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap();
    }
}
