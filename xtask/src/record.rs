//! What a benchmark's table says about where it ran (the machine, the commit, the time), and
//! `--record`: the table written into docs/PERFORMANCE.md between a group's markers.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// One line naming this machine: CPU model, logical CPUs, the widest x86 vector extension,
/// memory, OS and architecture.
pub(crate) fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    describe_machine(&read("/proc/cpuinfo"), &read("/proc/meminfo"), cpus)
}

/// [`machine`] from the text of `/proc/cpuinfo` and `/proc/meminfo` (either may be empty: the
/// parts they would give are left out).
fn describe_machine(cpuinfo: &str, meminfo: &str, cpus: usize) -> String {
    let field = |text: &str, name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let mut parts =
        vec![field(cpuinfo, "model name").unwrap_or_else(|| "CPU model unknown".into())];
    parts.push(format!(
        "{cpus} logical CPU{}",
        if cpus == 1 { "" } else { "s" }
    ));
    if let Some(flags) = field(cpuinfo, "flags") {
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        if has("avx512f") {
            parts.push("AVX-512".into());
        } else if has("avx2") {
            parts.push("AVX2".into());
        }
    }
    let kib = field(meminfo, "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = kib {
        parts.push(format!("{:.0} GiB memory", kib as f64 / 1_048_576.0));
    }
    parts.push(format!(
        "{} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    ));
    parts.join(", ")
}

/// The commit checked out in `root`, `abc1234`, with ` plus uncommitted changes` where files
/// outside `docs/` differ from it (the documentation a `--record` rewrites does not count);
/// `an unknown commit` where git cannot tell.
pub(crate) fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "an unknown commit".into();
    };
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)docs",
    ]);
    match changed {
        Some(list) if list.is_empty() => head,
        _ => format!("{head} plus uncommitted changes"),
    }
}

/// `2026-12-01 02:30 UTC`.
pub(crate) fn now() -> String {
    format!("{} UTC", &retrain_stage::now_utc()[..16])
}

/// `text` broken between words into lines of at most `width` characters (a longer word on a line
/// of its own), as the documentation's paragraphs are.
pub(crate) fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out
}

/// Writes `body` into the file `doc` between the lines `<!-- begin -->` and `<!-- end -->` for
/// `marker` (see [`splice`]), through a temporary file renamed into place.
pub(crate) fn record(doc: &Path, marker: &str, body: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let text =
        splice(&text, marker, body).with_context(|| format!("recording into {}", doc.display()))?;
    retrain_stage::write_atomic(doc, text.as_bytes())
        .with_context(|| format!("writing {}", doc.display()))?;
    eprintln!("bench: recorded in {}", doc.display());
    Ok(())
}

/// `text` with what lies between the lines `<!-- MARKER: begin -->` and `<!-- MARKER: end -->`
/// replaced by `body`. Each line must be there exactly once, the begin line first.
fn splice(text: &str, marker: &str, body: &str) -> anyhow::Result<String> {
    let begin = format!("<!-- {marker}: begin -->\n");
    let end = format!("<!-- {marker}: end -->");
    let find_once = |line: &str| -> anyhow::Result<usize> {
        let mut found = text.match_indices(line).map(|(at, _)| at);
        match (found.next(), found.next()) {
            (Some(at), None) => Ok(at),
            (None, _) => bail!("no line `{}`", line.trim_end()),
            (Some(_), Some(_)) => bail!("the line `{}` is there twice", line.trim_end()),
        }
    };
    let (from, to) = (find_once(&begin)? + begin.len(), find_once(&end)?);
    if to < from {
        bail!("`{}` comes before `{}`", end, begin.trim_end());
    }
    let body = body.trim_end_matches('\n');
    Ok(format!("{}{body}\n{}", &text[..from], &text[to..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_named_by_its_cpu_memory_and_vector_width() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n\
                       flags\t\t: fpu sse2 avx2 avx512f avx512bw\nprocessor\t: 1\n\
                       model name\t: Intel(R) Xeon(R) Platinum 8488C\n";
        let meminfo = "MemTotal:       24609320 kB\nMemFree:         1000 kB\n";
        let line = describe_machine(cpuinfo, meminfo, 2);
        assert!(
            line.starts_with(
                "Intel(R) Xeon(R) Platinum 8488C, 2 logical CPUs, AVX-512, 23 GiB memory, "
            ),
            "{line}"
        );
        let avx2 = describe_machine("flags : sse2 avx2 avx512_bf16\n", "", 1);
        assert!(
            avx2.starts_with("CPU model unknown, 1 logical CPU, AVX2, "),
            "{avx2}"
        );
        let bare = describe_machine("", "", 4);
        assert!(
            bare.starts_with("CPU model unknown, 4 logical CPUs, "),
            "{bare}"
        );
        assert!(!bare.contains("GiB") && !bare.contains("AVX"), "{bare}");
    }

    #[test]
    fn paragraphs_are_wrapped_between_words() {
        assert_eq!(wrap("ab cd  ef\ngh", 5), "ab cd\nef gh");
        assert_eq!(wrap("a longword b", 4), "a\nlongword\nb");
        assert_eq!(wrap("×× ××", 5), "×× ××", "width in characters, not bytes");
        assert_eq!(wrap("", 5), "");
    }

    #[test]
    fn a_record_replaces_only_what_lies_between_its_markers() {
        let doc = "# Performance\n\n<!-- m: begin -->\nold table\n<!-- m: end -->\n\nhistory\n";
        let new = splice(doc, "m", "new\ntable\n").unwrap();
        assert_eq!(
            new,
            "# Performance\n\n<!-- m: begin -->\nnew\ntable\n<!-- m: end -->\n\nhistory\n"
        );
        // Recording again gives the same file.
        assert_eq!(splice(&new, "m", "new\ntable").unwrap(), new);
    }

    #[test]
    fn a_record_without_its_markers_once_each_in_order_is_an_error() {
        let cases = [
            ("no markers\n", "no line `<!-- m: begin -->`"),
            ("<!-- m: begin -->\nx\n", "no line `<!-- m: end -->`"),
            (
                "<!-- m: begin -->\n<!-- m: end -->\n<!-- m: begin -->\n",
                "there twice",
            ),
            ("<!-- m: end -->\n<!-- m: begin -->\n", "comes before"),
        ];
        for (doc, error) in cases {
            let err = splice(doc, "m", "body").unwrap_err().to_string();
            assert!(err.contains(error), "{doc:?}: {err}");
        }
    }
}
