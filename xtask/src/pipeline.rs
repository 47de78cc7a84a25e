//! The pipeline runner: stages in order, each skipped when its `manifest.json` still matches.
//!
//! Parameters come from each stage's defaults, then `--config pipeline.toml` (a table per stage,
//! keys are the stage's flag names), then `--set stage.flag=value`. Every parameter is passed to
//! the stage explicitly, and the stage records them in its manifest; a stage is up to date when its
//! manifest records the same parameters, the same input digests and unmodified outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use retrain_stage::Freshness;

use crate::{cargo, workspace_root};

/// Options shared by `pipeline` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Work directory holding every stage's artifacts [default: data/ (pipeline), data/demo/ (demo)]
    #[arg(long, value_name = "DIR")]
    pub(crate) workdir: Option<PathBuf>,
    /// First stage to run (earlier stages' artifacts must exist).
    #[arg(long, value_name = "STAGE")]
    pub(crate) from: Option<String>,
    /// Last stage to run.
    #[arg(long, value_name = "STAGE")]
    pub(crate) to: Option<String>,
    /// Run the stages even when their manifests say they are up to date.
    #[arg(long)]
    pub(crate) force: bool,
    /// Stage parameters from a TOML file: a table per stage, e.g. `[synth]` `seed = 3`.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Override one parameter, as STAGE.FLAG=VALUE (e.g. synth.seed=3); repeatable.
    #[arg(long = "set", value_name = "STAGE.FLAG=VALUE")]
    pub(crate) overrides: Vec<String>,
}

/// `cargo xtask pipeline` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PipelineArgs {
    /// Which dataset to fetch.
    #[arg(long, default_value = "cifar10", value_parser = ["cifar10", "cifar100"])]
    pub(crate) dataset: String,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// One stage of a chain, as the runner sees it.
#[derive(Debug, Clone)]
struct Step {
    /// Stage name (`synth`, `fetch`, …) and, as `retrain-<name>`, its package and binary.
    name: &'static str,
    /// False for stages whose crate has not landed yet: the chain stops before them.
    built: bool,
    /// Output directory, inside the work directory.
    out: PathBuf,
    /// Input paths by flag name.
    inputs: BTreeMap<String, PathBuf>,
    /// Effective parameters by flag name.
    params: BTreeMap<String, String>,
}

/// What happened to a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ran,
    UpToDate,
}

/// What a run did, stage by stage.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) stages: Vec<(String, Outcome)>,
}

/// Stages of the real chain, in order, and whether each has landed.
const REAL_CHAIN: [(&str, bool); 6] = [
    ("fetch", false),
    ("extract", false),
    ("sort", false),
    ("tfrecord", false),
    ("train", false),
    ("eval", false),
];

pub(crate) fn pipeline(args: &PipelineArgs) -> anyhow::Result<Report> {
    let workdir = args
        .run
        .workdir
        .clone()
        .unwrap_or_else(|| workspace_root().join("data"));
    let steps: Vec<Step> = REAL_CHAIN
        .iter()
        .map(|&(name, built)| Step {
            name,
            built,
            out: workdir.join(name),
            inputs: BTreeMap::new(),
            params: BTreeMap::from([("dataset".to_owned(), args.dataset.clone())]),
        })
        .collect();
    run_chain(&workdir, steps, &args.run)
}

pub(crate) fn demo(args: &RunArgs) -> anyhow::Result<Report> {
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| workspace_root().join("data").join("demo"));
    let synth = Step {
        name: "synth",
        built: true,
        out: workdir.join("synth"),
        inputs: BTreeMap::new(),
        params: params(&[
            ("dataset", "cifar10"),
            ("images-per-batch", "1000"),
            ("seed", "0"),
            ("collisions", "2"),
            ("gzip-level", "6"),
        ]),
    };
    let mut steps = vec![synth];
    steps.extend(REAL_CHAIN.iter().map(|&(name, built)| Step {
        name,
        built,
        out: workdir.join(name),
        inputs: BTreeMap::new(),
        params: BTreeMap::new(),
    }));
    let report = run_chain(&workdir, steps, args)?;
    let synth_out = workdir.join("synth");
    if report.stages.iter().any(|(name, _)| name == "synth") {
        eprintln!(
            "demo: synthetic CIFAR-10 archive: {}",
            synth_out.join("cifar-10-python.tar.gz").display()
        );
    }
    Ok(report)
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Applies `--config` and `--set` to the steps' default parameters. Unknown stages or flags are
/// errors, so a typo never silently runs with defaults.
fn apply_overrides(steps: &mut [Step], args: &RunArgs) -> anyhow::Result<()> {
    let mut assignments: Vec<(String, String, String, String)> = Vec::new();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (stage, values) in table {
            let toml::Value::Table(values) = values else {
                bail!(
                    "{}: `{stage}` must be a table of that stage's parameters",
                    path.display()
                );
            };
            for (flag, value) in values {
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!(
                        "{}: {stage}.{flag} = {other}: expected a string, number or boolean",
                        path.display()
                    ),
                };
                assignments.push((stage.clone(), flag, value, path.display().to_string()));
            }
        }
    }
    for set in &args.overrides {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected STAGE.FLAG=VALUE"))?;
        let (stage, flag) = key
            .split_once('.')
            .with_context(|| format!("--set {set}: expected STAGE.FLAG=VALUE"))?;
        assignments.push((stage.into(), flag.into(), value.into(), "--set".into()));
    }
    for (stage, flag, value, origin) in assignments {
        let Some(step) = steps.iter_mut().find(|s| s.name == stage) else {
            bail!("{origin}: no stage `{stage}` in this chain");
        };
        if !step.built {
            bail!("{origin}: stage `{stage}` is not built yet, so it takes no parameters");
        }
        let Some(slot) = step.params.get_mut(&flag) else {
            let known: Vec<&String> = step.params.keys().collect();
            bail!("{origin}: stage `{stage}` has no parameter `{flag}` (it has {known:?})");
        };
        *slot = value;
    }
    Ok(())
}

fn position(steps: &[Step], name: &str, flag: &str) -> anyhow::Result<usize> {
    steps.iter().position(|s| s.name == name).with_context(|| {
        let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
        format!(
            "--{flag} {name}: no such stage (stages: {})",
            names.join(", ")
        )
    })
}

fn run_chain(workdir: &Path, mut steps: Vec<Step>, args: &RunArgs) -> anyhow::Result<Report> {
    apply_overrides(&mut steps, args)?;
    let first = match &args.from {
        Some(name) => position(&steps, name, "from")?,
        None => 0,
    };
    let last = match &args.to {
        Some(name) => position(&steps, name, "to")?,
        None => steps.len() - 1,
    };
    if first > last {
        bail!("--from comes after --to");
    }
    std::fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let mut report = Report { stages: Vec::new() };
    for step in &steps[first..=last] {
        if !step.built {
            let pending: Vec<&str> = steps[first..=last]
                .iter()
                .filter(|s| !s.built)
                .map(|s| s.name)
                .collect();
            if report.stages.is_empty() {
                bail!(
                    "stage `{}` has not been built yet (pending: {}); `cargo xtask demo` runs the stages that exist",
                    step.name,
                    pending.join(", ")
                );
            }
            eprintln!(
                "pipeline: stopping before `{}`: not built yet (pending: {})",
                step.name,
                pending.join(", ")
            );
            break;
        }
        let outcome = run_step(step, args.force)?;
        report.stages.push((step.name.to_owned(), outcome));
    }
    Ok(report)
}

fn run_step(step: &Step, force: bool) -> anyhow::Result<Outcome> {
    let freshness = retrain_stage::freshness(&step.out, step.name, &step.params, &step.inputs)
        .with_context(|| format!("checking whether stage `{}` is up to date", step.name))?;
    match (&freshness, force) {
        (Freshness::UpToDate, false) => {
            eprintln!(
                "pipeline: {}: up to date ({} matches), skipped",
                step.name,
                step.out.join(retrain_stage::FILE_NAME).display()
            );
            return Ok(Outcome::UpToDate);
        }
        (Freshness::UpToDate, true) => eprintln!("pipeline: {}: --force, running", step.name),
        (Freshness::Stale(reason), _) => {
            eprintln!("pipeline: {}: running ({reason})", step.name);
        }
    }
    let package = format!("retrain-{}", step.name);
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        &package,
        "--",
    ]);
    cmd.arg("--out").arg(&step.out);
    for (flag, path) in &step.inputs {
        cmd.arg(format!("--{flag}")).arg(path);
    }
    for (flag, value) in &step.params {
        cmd.arg(format!("--{flag}={value}"));
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {package}"))?;
    if !status.success() {
        bail!("stage `{}` failed ({status})", step.name);
    }
    // The stage must have written a manifest that matches what we asked for.
    match retrain_stage::freshness(&step.out, step.name, &step.params, &step.inputs)? {
        Freshness::UpToDate => Ok(Outcome::Ran),
        Freshness::Stale(reason) => bail!(
            "stage `{}` finished but its manifest does not match the run: {reason}",
            step.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![Step {
            name: "synth",
            built: true,
            out: PathBuf::from("out"),
            inputs: BTreeMap::new(),
            params: params(&[("seed", "0"), ("images-per-batch", "10")]),
        }]
    }

    fn args(overrides: &[&str], config: Option<PathBuf>) -> RunArgs {
        RunArgs {
            workdir: None,
            from: None,
            to: None,
            force: false,
            config,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flags_override_the_config_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("xtask-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("pipeline.toml");
        std::fs::write(&config, "[synth]\nseed = 3\nimages-per-batch = 20\n").unwrap();
        let mut steps = steps();
        apply_overrides(&mut steps, &args(&["synth.seed=4"], Some(config))).unwrap();
        assert_eq!(steps[0].params["seed"], "4");
        assert_eq!(steps[0].params["images-per-batch"], "20");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_stages_and_parameters_are_errors() {
        let err = apply_overrides(&mut steps(), &args(&["synth.sed=4"], None)).unwrap_err();
        assert!(err.to_string().contains("has no parameter `sed`"), "{err}");
        let err = apply_overrides(&mut steps(), &args(&["train.seed=4"], None)).unwrap_err();
        assert!(err.to_string().contains("no stage `train`"), "{err}");
        let err = apply_overrides(&mut steps(), &args(&["seed"], None)).unwrap_err();
        assert!(
            err.to_string().contains("expected STAGE.FLAG=VALUE"),
            "{err}"
        );
    }
}
