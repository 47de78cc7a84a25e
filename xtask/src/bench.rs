//! `cargo xtask bench`: our stages against the reference recipe's tools, side by side, on the
//! full-size synthetic archive served from 127.0.0.1.
//!
//! Download: `retrain-fetch` (streamed, hashed, verified) against Python's
//! `urllib.request.urlretrieve` (what the recipe used) and `curl`. Extraction: `retrain-extract`
//! (allowlisted, every member md5-checked, gzip trailer verified) against Python's
//! `tarfile.extractall` (the recipe) and GNU `tar xzf`. Each command runs `--runs` times; the table
//! gives the median wall time, throughput in archive MB/s, and the reference's time over ours.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::pipeline::LoopbackServer;
use crate::{cargo, workspace_root};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Images per batch of the synthetic archive (10000 is the real size: a 160 MB archive).
    #[arg(long, default_value_t = 10_000)]
    images_per_batch: usize,
    /// Runs per command; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scratch directory.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
}

struct Case {
    group: &'static str,
    name: &'static str,
    ours: bool,
    command: Command,
    /// Removed before each run.
    output: PathBuf,
}

pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let root = workspace_root();
    let work = args
        .workdir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let status = cargo()
        .args(["build", "--quiet", "--release", "--locked"])
        .args([
            "-p",
            "retrain-synth",
            "-p",
            "retrain-serve",
            "-p",
            "retrain-fetch",
        ])
        .args(["-p", "retrain-extract"])
        .status()?;
    if !status.success() {
        bail!("building the stage binaries failed");
    }
    let bin = |name: &str| root.join("target/release").join(name);

    let synth_dir = work.join("synth");
    let archive = synth_dir.join("cifar-10-python.tar.gz");
    let digests = synth_dir.join("members.md5");
    run_checked(
        Command::new(bin("retrain-synth"))
            .args(["--quiet", "--images-per-batch"])
            .arg(args.images_per_batch.to_string())
            .arg("--out")
            .arg(&synth_dir),
    )?;
    let manifest = retrain_stage::Manifest::read(&synth_dir)?
        .with_context(|| format!("no manifest in {}", synth_dir.display()))?;
    let digest = manifest.outputs["cifar-10-python.tar.gz"].clone();
    let server = LoopbackServer::start(&archive)?;
    let url = server.url.clone();

    let mut cases = Vec::new();
    let fetched = work.join("fetched.tar.gz");
    let mut ours = Command::new(bin("retrain-fetch"));
    ours.args(["--quiet", "--url", &url, "--sha256", &digest.sha256])
        .args(["--size", &digest.bytes.to_string()])
        .arg("--out")
        .arg(&fetched);
    cases.push(Case {
        group: "download",
        name: "retrain-fetch (sha256 verified)",
        ours: true,
        command: ours,
        output: fetched.clone(),
    });
    let mut urllib = Command::new("python3");
    urllib
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
        ])
        .arg(&url)
        .arg(&fetched);
    cases.push(Case {
        group: "download",
        name: "python urllib.urlretrieve (reference)",
        ours: false,
        command: urllib,
        output: fetched.clone(),
    });
    if which("curl") {
        let mut curl = Command::new("curl");
        curl.args(["-sSf", "-o"]).arg(&fetched).arg(&url);
        cases.push(Case {
            group: "download",
            name: "curl",
            ours: false,
            command: curl,
            output: fetched.clone(),
        });
    }

    let extracted = work.join("extracted");
    let mut ours = Command::new(bin("retrain-extract"));
    ours.args(["--quiet", "--dataset", "cifar10", "--archive"])
        .arg(&archive)
        .arg("--member-digests")
        .arg(&digests)
        .arg("--out")
        .arg(&extracted);
    cases.push(Case {
        group: "extract",
        name: "retrain-extract (allowlist, md5s, gzip CRC)",
        ours: true,
        command: ours,
        output: extracted.clone(),
    });
    let mut tarfile = Command::new("python3");
    tarfile
        .args([
            "-c",
            "import os, sys, tarfile; os.makedirs(sys.argv[2], exist_ok=True); tarfile.open(sys.argv[1], 'r:gz').extractall(sys.argv[2], filter='data')",
        ])
        .arg(&archive)
        .arg(&extracted);
    cases.push(Case {
        group: "extract",
        name: "python tarfile.extractall (reference)",
        ours: false,
        command: tarfile,
        output: extracted.clone(),
    });
    let mut gnu = Command::new("sh");
    gnu.args(["-c", "mkdir -p \"$2\" && tar -xzf \"$1\" -C \"$2\"", "sh"])
        .arg(&archive)
        .arg(&extracted);
    cases.push(Case {
        group: "extract",
        name: "GNU tar -xzf",
        ours: false,
        command: gnu,
        output: extracted.clone(),
    });

    let megabytes = digest.bytes as f64 / 1e6;
    let mut rows = Vec::new();
    for case in &mut cases {
        let mut times = Vec::new();
        for _ in 0..args.runs {
            remove(&case.output)?;
            let start = Instant::now();
            run_checked(&mut case.command)?;
            times.push(start.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        eprintln!(
            "bench: {} / {}: {:.2} s",
            case.group,
            case.name,
            median.as_secs_f64()
        );
        rows.push((case.group, case.name, case.ours, median));
    }
    remove(&fetched)?;
    remove(&extracted)?;
    drop(server);

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "archive: {} ({:.1} MB, {} images per batch), {} runs each, median\n",
        archive.display(),
        megabytes,
        args.images_per_batch,
        args.runs
    )?;
    writeln!(out, "| work | tool | seconds | MB/s | vs ours |")?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    for &(group, name, is_ours, median) in &rows {
        let ours_time: Duration = rows
            .iter()
            .find(|r| r.0 == group && r.2)
            .map(|r| r.3)
            .expect("every group has our tool");
        let ratio = if is_ours {
            "1.00×".to_owned()
        } else {
            format!("{:.2}×", median.as_secs_f64() / ours_time.as_secs_f64())
        };
        writeln!(
            out,
            "| {group} | {name} | {:.2} | {:.0} | {ratio} |",
            median.as_secs_f64(),
            megabytes / median.as_secs_f64()
        )?;
    }
    writeln!(
        out,
        "\n`vs ours`: the tool's time divided by ours (above 1: ours is faster)."
    )?;
    Ok(())
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
