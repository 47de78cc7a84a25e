//! `cargo xtask ci`: what CI runs, in order, stopping at the first failure.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::pipeline::{self, DemoArgs, Outcome, RunArgs};
use crate::{cargo, workspace_root};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CiArgs {
    /// Skip the Python interop checks (they make a virtualenv and install from PyPI).
    #[arg(long)]
    pub(crate) no_interop: bool,
}

pub(crate) fn ci(args: &CiArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    step("format", cargo().args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "tests",
        cargo().args(["test", "--workspace", "--locked", "--no-fail-fast"]),
    )?;
    if args.no_interop {
        eprintln!("ci: interop checks skipped (--no-interop)");
    } else {
        step(
            "interop: Python pickle + numpy read the synthetic archives",
            Command::new("bash")
                .arg(root.join("scripts/check-synth.sh"))
                .current_dir(&root),
        )?;
        step(
            "interop: Python pickle + numpy + Pillow check every sorted PNG",
            Command::new("bash")
                .arg(root.join("scripts/check-sort.sh"))
                .current_dir(&root),
        )?;
        step(
            "interop: protobuf, tfrecord and TensorBoard read our TFRecords and events",
            Command::new("bash")
                .arg(root.join("scripts/check-tfrecord.sh"))
                .current_dir(&root),
        )?;
    }

    eprintln!("ci: demo, twice: the second run must skip every stage");
    let workdir = root.join("target/ci-demo");
    if workdir.exists() {
        std::fs::remove_dir_all(&workdir)
            .with_context(|| format!("removing {}", workdir.display()))?;
    }
    let demo_args = DemoArgs {
        weights: None,
        drop_connections: 0,
        run: RunArgs {
            workdir: Some(workdir),
            from: None,
            to: None,
            force: false,
            config: None,
            overrides: Vec::new(),
        },
    };
    let first = pipeline::demo(&demo_args)?;
    if first.stages.is_empty() || first.stages.iter().any(|(_, o)| *o != Outcome::Ran) {
        bail!(
            "the first demo run should run every stage: {:?}",
            first.stages
        );
    }
    let second = pipeline::demo(&demo_args)?;
    if second.stages.len() != first.stages.len()
        || second.stages.iter().any(|(_, o)| *o != Outcome::UpToDate)
    {
        bail!(
            "the second demo run should skip every stage: {:?}",
            second.stages
        );
    }
    if !args.no_interop {
        step(
            "interop: TensorBoard and Pillow read the demo run's events, metrics and pictures",
            Command::new("bash")
                .arg(root.join("scripts/check-run.sh"))
                .arg(root.join("target/ci-demo/runs/demo"))
                .current_dir(&root),
        )?;
    }
    eprintln!("ci: all checks passed");
    Ok(())
}

fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("ci: {what}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("ci: {what} failed ({status})");
    }
    Ok(())
}
