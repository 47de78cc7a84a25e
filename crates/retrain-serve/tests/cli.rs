//! The `retrain-serve` binary: prints its URL, serves the file, stops when told.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, pattern};

/// A running `retrain-serve`, killed when dropped so a failing test leaves no process behind.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Running {
    fn start(args: &[&str], stdin: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_retrain-serve"))
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning retrain-serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("a stdout pipe"));
        let mut url = String::new();
        stdout.read_line(&mut url).expect("reading the URL line");
        let url = url
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("no URL line, got {url:?}"))
            .to_owned();
        Self { child, stdout, url }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_file(dir: &tempfile::TempDir, name: &str, len: usize) -> (String, Vec<u8>) {
    let body = pattern(len);
    let path = dir.path().join(name);
    std::fs::write(&path, &body).expect("writing the file to serve");
    (path.to_str().expect("a UTF-8 path").to_owned(), body)
}

#[test]
fn the_binary_prints_its_url_and_serves_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (path, body) = write_file(&dir, "cifar-10-python.tar.gz", 100_000);
    let mut server = Running::start(&["--file", &path], Stdio::null());
    assert!(
        server.url.starts_with("http://127.0.0.1:")
            && server.url.ends_with("/cifar-10-python.tar.gz"),
        "{}",
        server.url
    );
    let resp = get(&server.url, &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    let resp = get(&server.url, &[("Range", "bytes=99990-")]);
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, body[99_990..]);
    server.child.kill().expect("killing the server");
    server.child.wait().expect("waiting for the server");
    // Exactly one line went to stdout.
    let mut rest = String::new();
    server
        .stdout
        .read_to_string(&mut rest)
        .expect("reading the rest of stdout");
    assert_eq!(rest, "");
}

#[test]
fn the_binary_injects_faults_and_stops_when_stdin_closes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (path, body) = write_file(&dir, "data.bin", 10_000);
    let mut server = Running::start(
        &[
            "--file",
            &path,
            "--fail",
            "2",
            "--status",
            "500",
            "--drop-after",
            "10",
            "--drop-after",
            "20",
            "--stall-after",
            "5",
            "--stall-ms",
            "50",
            "--until-stdin-closes",
        ],
        Stdio::piped(),
    );
    assert_eq!(get(&server.url, &[]).status, 500);
    assert_eq!(get(&server.url, &[]).status, 500);
    assert_eq!(get(&server.url, &[]).body, body[..10]);
    assert_eq!(get(&server.url, &[]).body, body[..20]);
    assert_eq!(get(&server.url, &[]).body, body);
    assert_eq!(get(&server.url, &[]).body, body);
    drop(server.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("polling the server") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_retrain-serve"))
        .args(["--file", "/nonexistent/file.bin"])
        .output()
        .expect("running retrain-serve");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/file.bin"), "{stderr}");
}

#[test]
fn help_explains_the_options() {
    let output = Command::new(env!("CARGO_BIN_EXE_retrain-serve"))
        .arg("--help")
        .output()
        .expect("running retrain-serve --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--file",
        "--port",
        "--fail",
        "--status",
        "--drop-after",
        "--stall-after",
        "--stall-ms",
        "--ignore-range",
        "--until-stdin-closes",
    ] {
        assert!(help.contains(option), "{option} missing from\n{help}");
    }
}
