//! Helpers for the end-to-end tests: running `cargo xtask`, small configurations, and comparing
//! work directories file by file.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The cargo that runs the tests, in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// `cargo xtask ARGS…`.
pub(crate) fn xtask(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--locked", "-p", "xtask", "--"])
        .args(args);
    cmd
}

/// Runs `cmd`, returning its output; panics with its stderr when it fails.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cargo starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, returning its stderr; panics when it succeeds.
pub(crate) fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cargo starts");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} should fail:\n{stderr}");
    stderr
}

/// A demo chain small enough for a test: 100 training and 20 validation images, 2 epochs of
/// head training at 75×75.
pub(crate) const SMALL_DEMO: &str = "\
[synth]
images-per-batch = 20
[train]
epochs = 2
batch-size = 10
[eval]
batch-size = 10
";

/// The training part of [`SMALL_DEMO`], for chains without a synth stage.
pub(crate) const SMALL_TRAIN: &str = "\
[train]
size = 75
epochs = 2
batch-size = 10
[eval]
batch-size = 10
";

/// Writes `text` as `dir/name` and returns its path as a string.
pub(crate) fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Which stages a chain's log says ran and which were skipped, in order.
pub(crate) fn outcomes(stderr: &str) -> Vec<(String, &'static str)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("pipeline: ")?;
            let (stage, what) = rest.split_once(": ")?;
            let outcome = if what.starts_with("running") || what.starts_with("--force") {
                "ran"
            } else if what.starts_with("up to date") {
                "skipped"
            } else {
                return None;
            };
            Some((stage.to_owned(), outcome))
        })
        .collect()
}

/// Whether a path is a temporary file (hidden, or a download's `.part`/`.part.json`), which no
/// reader looks at.
pub(crate) fn is_temporary(relative: &Path) -> bool {
    relative.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.starts_with('.') || name.ends_with(".part") || name.ends_with(".part.json")
    })
}

/// TensorBoard event files: appended while training, and named and stamped with wall times.
pub(crate) fn is_event_file(relative: &Path) -> bool {
    relative
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
}

/// Every regular file under `dir`, relative to it, sorted.
pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(base, &path, out);
            } else if kind.is_file() {
                out.push(path.strip_prefix(base).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The bytes a reader compares for `relative`: the file itself, except a manifest of the fetch
/// stages, whose `url` names the loopback server's port (a new one every run; the content is
/// pinned by its digest).
pub(crate) fn comparable(dir: &Path, relative: &Path) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(relative)).unwrap();
    if relative.file_name().is_some_and(|n| n == "manifest.json") {
        let mut manifest: retrain_stage::Manifest = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(relative).display()));
        if manifest.stage == "fetch" && manifest.params.contains_key("url") {
            manifest.params.insert("url".into(), "(loopback)".into());
        }
        return serde_json::to_vec_pretty(&manifest).unwrap();
    }
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The artifacts of a work directory by relative path (SHA-256 of [`comparable`] bytes),
/// temporary and event files left out.
pub(crate) fn artifacts(dir: &Path) -> BTreeMap<PathBuf, String> {
    files(dir)
        .into_iter()
        .filter(|p| !is_temporary(p) && !is_event_file(p))
        .map(|p| {
            let digest = sha256(&comparable(dir, &p));
            (p, digest)
        })
        .collect()
}

/// Panics, listing the differences, unless two work directories hold the same artifacts.
pub(crate) fn assert_same_artifacts(a: &Path, b: &Path) {
    let (left, right) = (artifacts(a), artifacts(b));
    let mut differences = Vec::new();
    for (path, digest) in &left {
        match right.get(path) {
            None => differences.push(format!("only in {}: {}", a.display(), path.display())),
            Some(other) if other != digest => {
                differences.push(format!("differs: {}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in right.keys().filter(|p| !left.contains_key(*p)) {
        differences.push(format!("only in {}: {}", b.display(), path.display()));
    }
    assert!(
        differences.is_empty(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        differences.join("\n")
    );
    assert!(
        left.len() > 50,
        "too few artifacts compared: {}",
        left.len()
    );
}

/// Every stage manifest under `dir` still describes its outputs (each recorded digest matches).
pub(crate) fn assert_manifests_hold(dir: &Path) {
    for relative in files(dir)
        .into_iter()
        .filter(|p| !is_temporary(p) && p.file_name().is_some_and(|n| n == "manifest.json"))
    {
        let stage_dir = dir.join(&relative).parent().unwrap().to_owned();
        let manifest = retrain_stage::Manifest::read(&stage_dir).unwrap().unwrap();
        for (output, recorded) in &manifest.outputs {
            let path = stage_dir.join(output);
            let digest = retrain_stage::digest_path(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                &digest,
                recorded,
                "{} does not match its manifest",
                path.display()
            );
        }
    }
}

/// A `cargo xtask …` in its own process group, so a test can kill it with every process it
/// started (the stage binaries, the loopback server) at once, as a crash or power cut would.
#[derive(Debug)]
pub(crate) struct Chain {
    pub(crate) pid: u32,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub(crate) log: Vec<String>,
}

impl Chain {
    pub(crate) fn spawn(args: &[&str]) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut child = xtask(args)
            .process_group(0)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("cargo starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            pid: child.id(),
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads the log until a line starts with `prefix`; false when the chain ended first.
    pub(crate) fn wait_for(&mut self, prefix: &str) -> bool {
        while let Ok(line) = self.lines.recv() {
            let found = line.starts_with(prefix);
            self.log.push(line);
            if found {
                return true;
            }
        }
        false
    }

    /// Kills the whole process group with SIGKILL after `delay`, then reaps it. True when the
    /// chain was still running (the kill interrupted it).
    pub(crate) fn kill_after(mut self, delay: Duration) -> bool {
        std::thread::sleep(delay);
        let running = matches!(self.child.try_wait(), Ok(None));
        // The shell's own kill (no procps needed); a negative pid names the process group.
        let _ = Command::new("sh")
            .args(["-c", "kill -s KILL -- -\"$0\"", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let status = self.child.wait().expect("the chain is reaped");
        if running {
            use std::os::unix::process::ExitStatusExt as _;
            // It may have finished between the check and the kill; otherwise the kill took.
            assert!(
                status.signal() == Some(9) || status.success(),
                "the chain was not killed: {status}"
            );
        }
        running
    }
}

/// Sorted class folders of the small synthetic dataset, as a user would bring them:
/// `<dir>/photos/{train_dir,validation_dir,labels.txt}`.
pub(crate) fn user_images(dir: &Path, config: &str) -> PathBuf {
    let work = dir.join("sorted");
    run_ok(&mut xtask(&[
        "demo",
        "--workdir",
        work.to_str().unwrap(),
        "--config",
        config,
        "--to",
        "sort",
    ]));
    let photos = dir.join("photos");
    let status = Command::new("cp")
        .arg("-r")
        .arg(work.join("images"))
        .arg(&photos)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(photos.join("manifest.json")).unwrap();
    photos
}
