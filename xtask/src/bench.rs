//! `cargo xtask bench`: our stages against the reference recipe's tools, side by side, on the
//! full-size synthetic archive served from 127.0.0.1, and the training stage's throughput.
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
use crate::{cargo, record, workspace_root};

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
    /// Run one group only: `stages` (download, extract), `sort` (decode and sort into PNG
    /// folders, against the reference recipe's Python preparation) or `inception` (Inception-v3
    /// forward and training images/s on the CPU, against PyTorch from target/torch-venv where
    /// installed) or `tfrecord` (image folders to TFRecord shards, against TensorFlow's
    /// build_image_data.py work from target/tf-venv where installed) or `train` (the training
    /// stage: head training on cached bottlenecks, bottleneck extraction and full training steps
    /// at 75, 139 and 299 pixels, `--runs` times each).
    #[arg(long, value_name = "GROUP", value_parser = ["stages", "sort", "inception", "tfrecord", "train"])]
    only: Option<String>,
    /// Batch of the Inception-v3 training-step case at 299×299.
    #[arg(long, default_value_t = 32)]
    inception_train_batch: usize,
    /// Threads for both sides of the `inception` group (ours through RAYON_NUM_THREADS, PyTorch's
    /// `torch.set_num_threads`); the machine's logical CPUs by default.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// With `--only inception`: also write its table, with the machine, commit and time, into
    /// docs/PERFORMANCE.md in place of the last recorded one (between the
    /// `<!-- xtask bench inception: begin -->` and `… end -->` lines).
    #[arg(long)]
    record: bool,
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
    if args.record && args.only.as_deref() != Some("inception") {
        bail!("--record writes the inception group's table: use it with --only inception");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if args.only.as_deref() == Some("inception") {
        return inception(args);
    }
    if args.only.as_deref() == Some("sort") {
        return sort(args);
    }
    if args.only.as_deref() == Some("tfrecord") {
        return tfrecord(args);
    }
    if args.only.as_deref() == Some("train") {
        return train(args);
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
    let server = LoopbackServer::start(&archive, 0)?;
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
    drop(out);
    if args.only.is_none() {
        sort(args)?;
        tfrecord(args)?;
        inception(args)?;
        train(args)?;
    }
    Ok(())
}

/// Decode and sort of the synthetic CIFAR-10 archive (60,000 images at the real size):
/// `retrain-sort` from the extracted folder and straight from the archive, against the reference
/// recipe's preparation (`scripts/reference/cifar_prepare.py`: pickle, numpy and imageio, one image
/// at a time, from the extracted folder). The runs of the three take turns, each after a `sync`
/// (so that none is timed writing back the previous one's files). Each run writes a fresh folder
/// and all are removed at the end: deleting 60,000 files makes ext4 slower to create files for
/// minutes, which would otherwise be measured. Peak memory is the largest resident set of a run,
/// from GNU `/usr/bin/time` where there is one.
fn sort(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let work = args
        .workdir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"))
        .join("sort");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let status = cargo()
        .args(["build", "--quiet", "--release", "--locked"])
        .args(["-p", "retrain-synth", "-p", "retrain-sort"])
        .status()?;
    if !status.success() {
        bail!("building retrain-synth and retrain-sort failed");
    }
    let bin = |name: &str| root.join("target/release").join(name);

    // The archive and its extracted batches, made once per size.
    let synth_dir = work.join(format!("synth-{}", args.images_per_batch));
    let archive = synth_dir.join("cifar-10-python.tar.gz");
    let raw = synth_dir.join("raw");
    let batches = raw.join("cifar-10-batches-py");
    if retrain_stage::Manifest::read(&synth_dir)?.is_none()
        || !batches.join("data_batch_1").exists()
    {
        remove(&synth_dir)?;
        run_checked(
            Command::new(bin("retrain-synth"))
                .args(["--quiet", "--images-per-batch"])
                .arg(args.images_per_batch.to_string())
                .arg("--out")
                .arg(&synth_dir),
        )?;
        std::fs::create_dir_all(&raw)?;
        run_checked(
            Command::new("tar")
                .arg("-xzf")
                .arg(&archive)
                .arg("-C")
                .arg(&raw),
        )?;
    }
    // The virtualenv with imageio and Pillow (scripts/requirements.txt).
    run_checked(
        Command::new("bash")
            .arg("-c")
            .arg("source \"$1/scripts/venv.sh\"")
            .arg("bash")
            .arg(&root),
    )?;
    let python = root.join("target/py-venv/bin/python");
    let reference = root.join("scripts/reference/cifar_prepare.py");

    type Build<'a> = Box<dyn Fn(&Path) -> Command + 'a>;
    let cases: Vec<(&str, bool, Build<'_>)> = vec![
        (
            "retrain-sort --input (all cores)",
            true,
            Box::new(|out: &Path| {
                let mut cmd = Command::new(bin("retrain-sort"));
                cmd.args(["--quiet", "--input"])
                    .arg(&batches)
                    .arg("--out")
                    .arg(out)
                    .env("RUST_LOG", "warn");
                cmd
            }),
        ),
        (
            "retrain-sort --from-archive (+ gunzip, all cores)",
            false,
            Box::new(|out: &Path| {
                let mut cmd = Command::new(bin("retrain-sort"));
                cmd.args(["--quiet", "--from-archive"])
                    .arg(&archive)
                    .arg("--out")
                    .arg(out)
                    .env("RUST_LOG", "error");
                cmd
            }),
        ),
        (
            "python pickle + numpy + imageio (reference)",
            false,
            Box::new(|out: &Path| {
                let mut cmd = Command::new(&python);
                cmd.arg(&reference).arg(&batches).arg(out);
                cmd
            }),
        ),
    ];
    let outputs = work.join("out");
    remove(&outputs)?;
    std::fs::create_dir_all(&outputs)?;
    let mut times = vec![Vec::new(); cases.len()];
    let mut peaks: Vec<Option<u64>> = vec![None; cases.len()];
    for run in 0..args.runs {
        for (idx, (name, _, build)) in cases.iter().enumerate() {
            let out = outputs.join(format!("{idx}-{run}"));
            let rss_file = outputs.join(format!("{idx}-{run}.rss"));
            let mut cmd = with_peak_rss(build(&out), &rss_file);
            // Flush what the previous run wrote, so that its write-back is not timed here.
            run_checked(&mut Command::new("sync"))?;
            let start = Instant::now();
            run_checked(&mut cmd)?;
            let elapsed = start.elapsed();
            times[idx].push(elapsed);
            if let Some(kib) = read_peak_kib(&rss_file)? {
                peaks[idx] = Some(peaks[idx].map_or(kib, |p| p.max(kib)));
            }
            eprintln!("bench: sort / {name}: {:.2} s", elapsed.as_secs_f64());
        }
    }

    let images = 6 * args.images_per_batch;
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "
sort: {images} images ({} per batch) into PNG class folders, {} runs each, median time, \
         largest peak RSS\n",
        args.images_per_batch, args.runs
    )?;
    writeln!(
        out,
        "| work | tool | seconds | images/s | peak MiB | vs ours |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|")?;
    for (idx, (name, is_ours, _)) in cases.iter().enumerate() {
        let seconds = medians[idx].as_secs_f64();
        let peak = peaks[idx].map_or("–".to_owned(), |kib| {
            format!("{:.0}", kib as f64 / 1024.0)
        });
        let ratio = match (is_ours, idx) {
            (true, _) => "1.00×".to_owned(),
            (false, 2) => format!("{:.2}×", seconds / medians[0].as_secs_f64()),
            _ => "–".to_owned(),
        };
        writeln!(
            out,
            "| decode + sort | {name} | {seconds:.2} | {:.0} | {peak} | {ratio} |",
            images as f64 / seconds
        )?;
    }
    writeln!(
        out,
        "\n`vs ours`: the reference's time divided by `retrain-sort --input`'s. The reference saves \
         every image transposed and loses those whose names collide; `--from-archive` also \
         decompresses the archive (the others read the extracted batches)."
    )?;
    out.flush()?;
    drop(out);
    eprintln!(
        "bench: sort: removing the {} output folders (slow where the file system discards \
         freed blocks)",
        cases.len() * args.runs
    );
    remove(&outputs)
}

/// Inception-v3 on the CPU, ours against PyTorch side by side: eval forward passes (bottleneck
/// extraction) and full training steps (forward, backward, SGD update) at 299×299 and 139×139,
/// batch 32: `retrain-inception bench --size S --batch B --mode forward|train --steps N` against
/// `scripts/inception_parity.py bench` (torchvision, 2 threads) from the venv that
/// `scripts/torch-venv.sh` makes, where it is installed. Peak memory is each process's largest
/// resident set, from GNU `/usr/bin/time` where there is one.
fn inception(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let status = cargo()
        .args(["build", "--quiet", "--release", "--locked"])
        .args(["-p", "retrain-inception"])
        .status()?;
    if !status.success() {
        bail!("building retrain-inception failed");
    }
    let ours_bin = root.join("target/release/retrain-inception");
    let python = root.join("target/torch-venv/bin/python");
    let torch = python.exists();
    if !torch {
        eprintln!(
            "bench: no {} (run scripts/inception-parity.sh): PyTorch skipped",
            python.display()
        );
    }
    let work = args
        .workdir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"))
        .join("inception");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let rss_file = work.join("rss");
    let train_batch = args.inception_train_batch.to_string();
    let started = record::now();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .to_string();
    // (mode, size, batch, timed steps)
    let cases = [
        ("forward", "299", "32", "2"),
        ("forward", "139", "32", "3"),
        ("train", "299", train_batch.as_str(), "1"),
        ("train", "139", "32", "2"),
    ];
    // images/s and peak KiB of one run.
    let measure = |cmd: Command| -> anyhow::Result<(f64, Option<u64>)> {
        remove(&rss_file)?;
        let text = stdout_of(&mut with_peak_rss(cmd, &rss_file))?;
        let rate = text
            .lines()
            .find_map(|l| l.strip_prefix("images_per_sec="))
            .context("no images_per_sec= line")?
            .trim()
            .parse()?;
        Ok((rate, read_peak_kib(&rss_file)?))
    };
    // Ours and PyTorch alternate, `--runs` rounds per case, so that a drift in the machine's
    // speed over minutes (this VM's PyTorch figures move by a third between hours) reaches both.
    let mut rows = Vec::new();
    for (mode, size, batch, steps) in cases {
        let case = format!("{mode} {size}×{size}, batch {batch}");
        let mut rounds: Vec<Round> = Vec::new();
        for round in 1..=args.runs {
            let mut ours = Command::new(&ours_bin);
            ours.args(["bench", "--size", size, "--batch", batch, "--mode", mode])
                .args(["--steps", steps])
                .env("RUST_LOG", "warn")
                .env("RAYON_NUM_THREADS", &threads);
            let ours = measure(ours)?;
            eprintln!(
                "bench: inception / {case}, round {round}: {:.2} images/s",
                ours.0
            );
            let theirs = if torch {
                let mut cmd = Command::new(&python);
                cmd.arg(root.join("scripts/inception_parity.py"))
                    .args(["bench", size, batch, steps]);
                if mode == "train" {
                    cmd.arg("train");
                }
                cmd.args(["--threads", &threads]);
                let theirs = measure(cmd)?;
                eprintln!(
                    "bench: inception / {case}, round {round}, PyTorch: {:.2} images/s",
                    theirs.0
                );
                Some(theirs)
            } else {
                None
            };
            rounds.push((ours, theirs));
        }
        rows.push((case, summarise(&rounds)));
    }
    let gib = |kib: Option<u64>| {
        kib.map_or("–".to_owned(), |k| {
            format!("{:.1} GiB", k as f64 / 1048576.0)
        })
    };
    let torch_version = if torch {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "import torch; print(torch.__version__)"]);
        format!("PyTorch {}", stdout_of(&mut cmd)?.trim())
    } else {
        "PyTorch not installed".to_owned()
    };
    let mut table = record::wrap(
        &format!(
            "Inception-v3 on the CPU (f32, {threads} threads), images per second: median of {} \
         alternating rounds; the ratio is the median round's, with the rounds' range. \
         `cargo xtask bench --only inception --runs {} --threads {threads} \
         --inception-train-batch {train_batch}` at {}, {}, {torch_version}, on {}.",
            args.runs,
            args.runs,
            record::commit(&root),
            started,
            record::machine(),
        ),
        100,
    );
    table.push_str("\n\n");
    table.push_str(
        "| case | retrain-inception | PyTorch | ours / PyTorch | peak memory, ours | PyTorch |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for (case, row) in rows {
        let (rate, ratio) = match row.theirs {
            Some(t) => (
                format!("{t:.2}"),
                format!(
                    "{:.2}× ({:.2}–{:.2})",
                    row.ratios[row.ratios.len() / 2],
                    row.ratios[0],
                    row.ratios[row.ratios.len() - 1]
                ),
            ),
            None => ("not installed".to_owned(), "–".to_owned()),
        };
        table.push_str(&format!(
            "| {case} | {:.2} | {rate} | {ratio} | {} | {} |\n",
            row.ours,
            gib(row.ours_kib),
            gib(row.theirs_kib)
        ));
    }
    writeln!(std::io::stdout().lock(), "\n{table}")?;
    if args.record {
        record::record(
            &root.join("docs/PERFORMANCE.md"),
            "xtask bench inception",
            &table,
        )?;
    }
    Ok(())
}

/// One case's rounds, summarised: median rates, the rounds' ratios (sorted) and peak memories.
struct Summary {
    ours: f64,
    theirs: Option<f64>,
    ratios: Vec<f64>,
    ours_kib: Option<u64>,
    theirs_kib: Option<u64>,
}

/// One run's images/s and peak KiB.
type Run = (f64, Option<u64>);

/// One round: our run, and PyTorch's where it is installed.
type Round = (Run, Option<Run>);

fn summarise(rounds: &[Round]) -> Summary {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let theirs: Vec<Run> = rounds.iter().filter_map(|r| r.1).collect();
    let mut ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|((ours, _), theirs)| theirs.map(|(t, _)| ours / t))
        .collect();
    ratios.sort_by(f64::total_cmp);
    Summary {
        ours: median(rounds.iter().map(|r| r.0.0).collect()),
        theirs: (!theirs.is_empty()).then(|| median(theirs.iter().map(|t| t.0).collect())),
        ratios,
        ours_kib: rounds.iter().filter_map(|r| r.0.1).max(),
        theirs_kib: theirs.iter().filter_map(|t| t.1).max(),
    }
}

/// `cmd` run under GNU `/usr/bin/time`, which writes its peak resident set (KiB) to `rss_file`;
/// `cmd` itself where there is no GNU time.
fn with_peak_rss(cmd: Command, rss_file: &Path) -> Command {
    let gnu_time = Path::new("/usr/bin/time");
    if !gnu_time.exists() {
        return cmd;
    }
    let mut timed = Command::new(gnu_time);
    timed.args(["-f", "%M", "-o"]).arg(rss_file);
    timed.arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    timed
}

/// The peak KiB that [`with_peak_rss`] recorded, if it did.
fn read_peak_kib(rss_file: &Path) -> anyhow::Result<Option<u64>> {
    match std::fs::read_to_string(rss_file) {
        Ok(text) => {
            Ok(Some(text.trim().parse().with_context(|| {
                format!("{}: {text:?}", rss_file.display())
            })?))
        }
        Err(_) => Ok(None),
    }
}

/// `build_image_data.py`'s work on a CIFAR-10-sized tree of 32×32 PNGs (`make_image_tree`, the
/// layout `retrain-sort` writes: 5 × N/10 training and N/10 validation images per class for
/// `--images-per-batch N`): `retrain-tfrecord build` (default shard counts, all cores) against
/// `scripts/reference/build_image_data_equiv.py` (TensorFlow, its defaults: 2 threads, 2 + 2
/// shards) from target/tf-venv where TensorFlow is installed there. Each run writes a fresh folder;
/// peak memory is the largest resident set of a run, from GNU `/usr/bin/time` where there is one.
fn tfrecord(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let work = args
        .workdir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"))
        .join("tfrecord");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let status = cargo()
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            "retrain-tfrecord",
        ])
        .args(["--bins", "--example", "make_image_tree"])
        .status()?;
    if !status.success() {
        bail!("building retrain-tfrecord failed");
    }
    let release = root.join("target/release");
    let tree = work.join(format!("images-{}", args.images_per_batch));
    if !tree.join("labels.txt").exists() {
        remove(&tree)?;
        run_checked(
            Command::new(release.join("examples/make_image_tree"))
                .arg(&tree)
                .arg((args.images_per_batch / 2).to_string())
                .arg((args.images_per_batch / 10).to_string()),
        )?;
    }
    let tf_python = root.join("target/tf-venv/bin/python");
    let has_tf = tf_python.exists()
        && Command::new(&tf_python)
            .args(["-c", "import tensorflow"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let mut cases: Vec<(&str, Command)> = Vec::new();
    let mut ours = Command::new(release.join("retrain-tfrecord"));
    ours.args(["build", "--quiet"])
        .arg("--train-dir")
        .arg(tree.join("train_dir"))
        .arg("--validation-dir")
        .arg(tree.join("validation_dir"))
        .arg("--labels")
        .arg(tree.join("labels.txt"))
        .arg("--out")
        .env("RUST_LOG", "warn");
    cases.push(("retrain-tfrecord build (all cores)", ours));
    if has_tf {
        let mut reference = Command::new(&tf_python);
        reference
            .arg(root.join("scripts/reference/build_image_data_equiv.py"))
            .arg("--train_directory")
            .arg(tree.join("train_dir"))
            .arg("--validation_directory")
            .arg(tree.join("validation_dir"))
            .arg("--labels_file")
            .arg(tree.join("labels.txt"))
            .arg("--output_directory")
            .env("TF_CPP_MIN_LOG_LEVEL", "2");
        cases.push((
            "build_image_data.py work, TensorFlow (reference)",
            reference,
        ));
    } else {
        eprintln!(
            "bench: tfrecord: no TensorFlow in target/tf-venv, so no reference run \
             (python3 -m venv target/tf-venv && target/tf-venv/bin/pip install tensorflow-cpu)"
        );
    }
    let outputs = work.join("out");
    let mut times = vec![Vec::new(); cases.len()];
    let mut peaks: Vec<Option<u64>> = vec![None; cases.len()];
    for _ in 0..args.runs {
        for (idx, (name, base)) in cases.iter().enumerate() {
            remove(&outputs)?;
            // Start each run with nothing waiting to be written: the reference leaves its shards
            // in the page cache, and our shard syncs would otherwise write them out too.
            run_checked(&mut Command::new("sync"))?;
            let rss_file = work.join("rss");
            remove(&rss_file)?;
            let mut run = Command::new(base.get_program());
            run.args(base.get_args()).arg(&outputs);
            for (key, value) in base.get_envs() {
                if let Some(value) = value {
                    run.env(key, value);
                }
            }
            let mut cmd = with_peak_rss(run, &rss_file);
            cmd.stdout(std::process::Stdio::null());
            // Flush what the previous run wrote, so that its write-back is not timed here.
            run_checked(&mut Command::new("sync"))?;
            let start = Instant::now();
            run_checked(&mut cmd)?;
            let elapsed = start.elapsed();
            times[idx].push(elapsed);
            if let Some(kib) = read_peak_kib(&rss_file)? {
                peaks[idx] = Some(peaks[idx].map_or(kib, |p| p.max(kib)));
            }
            eprintln!("bench: tfrecord / {name}: {:.2} s", elapsed.as_secs_f64());
        }
    }
    remove(&outputs)?;

    let images = 6 * args.images_per_batch;
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\ntfrecord: {images} PNGs (32×32) to TFRecord shards, {} runs each, median time, largest \
         peak RSS\n",
        args.runs
    )?;
    writeln!(
        out,
        "| work | tool | seconds | images/s | peak MiB | vs ours |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|")?;
    for (idx, (name, _)) in cases.iter().enumerate() {
        let seconds = medians[idx].as_secs_f64();
        let peak = peaks[idx].map_or("–".to_owned(), |kib| {
            format!("{:.0}", kib as f64 / 1024.0)
        });
        writeln!(
            out,
            "| tfrecord | {name} | {seconds:.2} | {:.0} | {peak} | {:.2}× |",
            images as f64 / seconds,
            seconds / medians[0].as_secs_f64()
        )?;
    }
    writeln!(
        out,
        "\n`vs ours`: the tool's time divided by ours. Ours re-encodes PNGs as 4:4:4 JPEG, digests \
         inputs and outputs for the manifest and syncs every shard; TensorFlow's encode_jpeg \
         subsamples chroma (4:2:0) and syncs nothing."
    )?;
    Ok(())
}

/// The cases of [`train`]: a label and the arguments of `retrain-train-bench`, the first being
/// the subcommand. Sizes are chosen so that each run takes well under a minute on 2 cores and
/// under 5 GiB; extraction batches divide the cache's 1024-image chunks.
const TRAIN_CASES: [(&str, &str); 7] = [
    (
        "head: new fc on 50,000 cached 2048-d bottlenecks, batch 100, 10 epochs",
        "head",
    ),
    (
        "extract bottlenecks 75×75, batch 32, 512 images",
        "extract --size 75 --batch-size 32 --images 512",
    ),
    (
        "extract bottlenecks 139×139, batch 32, 256 images",
        "extract --size 139 --batch-size 32 --images 256",
    ),
    (
        "extract bottlenecks 299×299, batch 16, 48 images",
        "extract --size 299 --batch-size 16 --images 48",
    ),
    (
        "full training 75×75, batch 32, 3 steps",
        "full --size 75 --batch-size 32 --steps 3",
    ),
    (
        "full training 139×139, batch 32, 3 steps",
        "full --size 139 --batch-size 32 --steps 3",
    ),
    (
        "full training 299×299 (aux head), batch 8, 2 steps",
        "full --size 299 --batch-size 8 --steps 2",
    ),
];

/// Images in CIFAR-10's training set, for the estimates.
const CIFAR10_TRAIN: f64 = 50_000.0;

/// The training stage on the CPU, through `retrain-train-bench` (inputs it generates: random
/// 2048-d bottlenecks, or class-dependent 32×32 JPEGs in a TFRecord shard; seeded weights):
/// `head` trains a new `fc` on 50,000 cached bottlenecks for 10 epochs as `--trainable head` does
/// (goal: under 5 s); `extract` computes bottlenecks (decode, evaluation crop, forward to the
/// pool) at 75, 139 and 299 pixels; `full` takes training steps as `--trainable all` does
/// (augmentation, forward with the aux head at 299, backward, RMSProp), the first step untimed.
/// Each case runs `--runs` times in a fresh scratch folder (so no bottleneck cache is reused);
/// the table gives the median of the binary's own timing (setup, shard writing and warm-up
/// excluded) and the largest peak RSS, from GNU `/usr/bin/time` where there is one.
fn train(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let work = args
        .workdir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"))
        .join("train");
    let status = cargo()
        .args(["build", "--quiet", "--release", "--locked"])
        .args(["-p", "retrain-train", "--bin", "retrain-train-bench"])
        .status()?;
    if !status.success() {
        bail!("building retrain-train-bench failed");
    }
    let bin = root.join("target/release/retrain-train-bench");
    let scratch = work.join("scratch");
    let rss_file = work.join("rss");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    struct Row {
        label: &'static str,
        kind: String,
        seconds: f64,
        /// Images (head: examples) per second.
        rate: f64,
        /// Head only: the measured seconds per 10 epochs.
        ten_epochs: Option<f64>,
        peak_kib: Option<u64>,
    }
    let mut rows = Vec::new();
    for (label, case_args) in TRAIN_CASES {
        let subcommand = case_args.split_whitespace().next().unwrap_or_default();
        let mut runs: Vec<(f64, f64, Option<f64>)> = Vec::new();
        let mut peak: Option<u64> = None;
        let mut kind = String::new();
        for _ in 0..args.runs {
            remove(&scratch)?;
            remove(&rss_file)?;
            let mut run = Command::new(&bin);
            run.args(case_args.split_whitespace())
                .arg("--work")
                .arg(&scratch)
                .env("RUST_LOG", "warn");
            let mut cmd = with_peak_rss(run, &rss_file);
            let text = stdout_of(&mut cmd)?;
            let (line_kind, values) = parse_bench_line(&text, subcommand)
                .with_context(|| format!("{cmd:?} printed no `{subcommand} …` line"))?;
            kind = line_kind;
            let get = |key: &str| -> anyhow::Result<f64> {
                values
                    .iter()
                    .find(|(k, _)| k == key)
                    .with_context(|| format!("{cmd:?}: no {key}= in its line"))?
                    .1
                    .parse::<f64>()
                    .with_context(|| format!("{cmd:?}: {key}= is not a number"))
            };
            let seconds = get("seconds")?;
            let (rate, ten_epochs) = match kind.as_str() {
                "head" => (
                    get("steps")? * get("batch")? / seconds,
                    Some(get("seconds_per_10_epochs")?),
                ),
                _ => (get("images_per_sec")?, None),
            };
            if let Some(kib) = read_peak_kib(&rss_file)? {
                peak = Some(peak.map_or(kib, |p| p.max(kib)));
            }
            eprintln!("bench: train / {label}: {seconds:.2} s, {rate:.2} images/s");
            runs.push((seconds, rate, ten_epochs));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (seconds, rate, ten_epochs) = runs[runs.len() / 2];
        rows.push(Row {
            label,
            kind,
            seconds,
            rate,
            ten_epochs,
            peak_kib: peak,
        });
    }
    remove(&scratch)?;
    remove(&rss_file)?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\ntrain: the training stage on the CPU (f32, seeded weights, generated inputs), {} runs \
         each, median time, largest peak RSS\n",
        args.runs
    )?;
    writeln!(
        out,
        "| case | seconds | images/s | CIFAR-10 (50,000 training images) | peak MiB |"
    )?;
    writeln!(out, "|---|---:|---:|---|---:|")?;
    for row in &rows {
        let estimate = match (row.kind.as_str(), row.ten_epochs) {
            ("head", Some(ten)) => format!("10 epochs: {ten:.2} s (goal < 5 s)"),
            ("extract", _) => format!(
                "bottleneck cache: {}",
                duration_words(CIFAR10_TRAIN / row.rate)
            ),
            _ => format!("one epoch: {}", duration_words(CIFAR10_TRAIN / row.rate)),
        };
        let peak = row.peak_kib.map_or("–".to_owned(), |kib| {
            format!("{:.0}", kib as f64 / 1024.0)
        });
        let rate = if row.kind == "head" {
            format!("{:.0}", row.rate)
        } else {
            format!("{:.2}", row.rate)
        };
        writeln!(
            out,
            "| {} | {:.2} | {rate} | {estimate} | {peak} |",
            row.label, row.seconds
        )?;
    }
    writeln!(
        out,
        "\n`seconds`: the timed part of one run (head: every step but the first; extract: the \
         whole extraction after a warm-up forward; full: every step but the first). `images/s` \
         for head counts bottleneck rows. The CIFAR-10 column extrapolates the rate (head: \
         measured). Peak RSS covers the whole process, generating its inputs included."
    )?;
    Ok(())
}

/// The `KIND key=value …` line of `retrain-train-bench` in `stdout`: the kind and the pairs.
fn parse_bench_line(stdout: &str, kind: &str) -> Option<(String, Vec<(String, String)>)> {
    stdout.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != kind {
            return None;
        }
        let values = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some((kind.to_owned(), values))
    })
}

/// `42 s`, `17 min`, `3.4 h`.
fn duration_words(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 7200.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
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

/// Runs `cmd` and returns its stdout; a failure is an error with the command and its stderr.
fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_takes_medians_and_keeps_every_rounds_ratio() {
        let rounds = [
            ((20.0, Some(100)), Some((10.0, Some(300)))),
            ((18.0, Some(120)), Some((24.0, Some(200)))),
            ((22.0, Some(110)), Some((20.0, Some(250)))),
        ];
        let s = summarise(&rounds);
        assert_eq!((s.ours, s.theirs), (20.0, Some(20.0)));
        assert_eq!(s.ratios, [0.75, 1.1, 2.0]);
        assert_eq!((s.ours_kib, s.theirs_kib), (Some(120), Some(300)));
        let alone = summarise(&[((5.0, None), None)]);
        assert_eq!(
            (alone.ours, alone.theirs, alone.ratios.len()),
            (5.0, None, 0)
        );
    }
}
