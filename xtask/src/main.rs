//! `cargo xtask`: the project's runner. It runs the stage binaries (through `cargo run`), never
//! links them, so it builds in seconds and each stage stays usable on its own.

mod bench;
mod ci;
mod pipeline;
mod record;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tasks for the retrain workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the pipeline on a real dataset (weights, fetch → extract → sort → tfrecord → train →
    /// eval),
    /// skipping every stage whose manifest.json matches its inputs and parameters.
    Pipeline(pipeline::PipelineArgs),
    /// Run the pipeline offline on the embedded synthetic dataset.
    Demo(pipeline::DemoArgs),
    /// Run exactly what CI runs: formatting, clippy, the tests, the interop scripts, and the demo
    /// twice (the second run must skip every stage).
    Ci(ci::CiArgs),
    /// Measure the stages against the reference recipe's tools, side by side, on the full-size
    /// synthetic archive over loopback; prints a Markdown table for docs/PERFORMANCE.md.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.task {
        Task::Pipeline(args) => pipeline::pipeline(&args).map(|_| ()),
        Task::Demo(args) => pipeline::demo(&args).map(|_| ()),
        Task::Ci(args) => ci::ci(&args),
        Task::Bench(args) => bench::bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `xtask/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// The `cargo` that runs us, so toolchain overrides carry through.
fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}
