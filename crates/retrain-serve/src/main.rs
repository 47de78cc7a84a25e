//! `retrain-serve`: serve one file over HTTP on 127.0.0.1, with injected faults.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use retrain_serve::{Config, Fault, Server};

/// Serve one file over HTTP/1.1 on 127.0.0.1 only, for download tests and the offline demo.
///
/// Prints the file's URL (http://127.0.0.1:PORT/NAME) as one line on stdout once listening, then
/// serves GET and HEAD, with byte ranges, If-Range, a strong ETag (the file's SHA-256) and a fixed
/// Last-Modified, until killed. Every response closes its connection.
///
/// Faults apply to successive requests of the file, one each, in this order: the --fail statuses,
/// then each --drop-after, then the stall; later requests are served normally.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The file to serve (read into memory); it is served under its own file name.
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    port: u16,
    /// Answer the first N requests of the file with --status and nothing else.
    #[arg(long, default_value_t = 0, value_name = "N")]
    fail: usize,
    /// The status of the --fail answers.
    #[arg(long, default_value_t = 503, requires = "fail", value_name = "CODE")]
    status: u16,
    /// Send the full headers but only N body bytes, then close the connection. Repeat for several
    /// requests in a row.
    #[arg(long, value_name = "N")]
    drop_after: Vec<u64>,
    /// Pause one response after N body bytes (needs --stall-ms).
    #[arg(long, requires = "stall_ms", value_name = "N")]
    stall_after: Option<u64>,
    /// How long that pause lasts, in milliseconds (needs --stall-after).
    #[arg(long, requires = "stall_after", value_name = "MS")]
    stall_ms: Option<u64>,
    /// Ignore Range headers: always answer 200 with the whole file, advertising
    /// Accept-Ranges: none.
    #[arg(long)]
    ignore_range: bool,
    /// Stop when stdin reaches end of file, so the server dies with the parent that holds the
    /// pipe.
    #[arg(long)]
    until_stdin_closes: bool,
    /// More log output on stderr (-v debug: one line per request; -vv trace); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    retrain_stage::cli::init_logging(args.verbose);
    retrain_stage::cli::exit_code(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = Config::from_path(&args.file).context("loading the file to serve")?;
    cfg.port = args.port;
    cfg.ignore_range = args.ignore_range;
    cfg.faults = std::iter::repeat_n(Fault::Status(args.status), args.fail)
        .chain(args.drop_after.iter().map(|&n| Fault::DropAfter(n)))
        .collect();
    if let (Some(after), Some(ms)) = (args.stall_after, args.stall_ms) {
        cfg.faults.push(Fault::Stall {
            after,
            pause: Duration::from_millis(ms),
        });
    }
    let bytes = cfg.body.len();
    let server = Server::start(cfg).context("starting the server")?;
    tracing::info!(file = %args.file.display(), bytes, url = %server.url(), "serving");
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", server.url())
        .and_then(|()| stdout.flush())
        .context("writing the URL to stdout")?;
    drop(stdout);
    if args.until_stdin_closes {
        io::copy(&mut io::stdin().lock(), &mut io::sink()).context("reading stdin")?;
        tracing::info!("stdin closed; stopping");
        drop(server);
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}
