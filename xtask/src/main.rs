//! `cargo xtask <command>`: setup, build, run and test memtrace.
//!
//! Every line this tool prints itself starts with `xtask:` and goes to
//! stderr (like cargo's own progress), so `cargo xtask run -- ... > out`
//! captures only memtrace's output.

mod bench;
mod build;
mod ctx;
mod setup;
mod soak;
mod test;

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::ctx::Ctx;

const USAGE: &str = "\
usage: cargo xtask [--dry-run] <command> [-- ARGS]

commands:
  setup           install missing Debian packages and bpf-linker (idempotent)
  build           setup, then `cargo build --release -p memtrace`
  run [-- ARGS]   build, then run target/release/memtrace ARGS as root
  test [-- ARGS]  setup, then fmt, clippy, eBPF clippy, build, unit tests and
                  the privileged integration tests (ARGS go to the last, e.g.
                  a test name filter)
  bench [--rounds N] [--quick]
                  memtrace's overhead against untraced runs, its floor,
                  bpftrace and heaptrack (as root); the table goes to stdout
                  and target/bench/latest.md
  soak [--minutes N]
                  memtrace --headless over a multi-process workload that
                  churns, spawns and leaks at known rates for N minutes
                  (default 10; as root): RSS, counters, lost events and leak
                  rates are checked, files in target/soak/last-run

options:
  -n, --dry-run   print the commands that would change something instead of
                  running them (checks still run)
  -h, --help      this help";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The parsed command line.
struct Args {
    command: Option<String>,
    /// Words after the command and before `--`.
    extra: Vec<String>,
    /// Words after `--`.
    passthrough: Vec<String>,
    dry_run: bool,
    help: bool,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut parsed = Args {
        command: None,
        extra: Vec::new(),
        passthrough: Vec::new(),
        dry_run: false,
        help: false,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--" => {
                parsed.passthrough = it.collect();
                break;
            }
            "-n" | "--dry-run" => parsed.dry_run = true,
            "-h" | "--help" | "help" => parsed.help = true,
            _ if parsed.command.as_deref() == Some("bench") => parsed.passthrough.push(arg),
            _ if parsed.command.as_deref() == Some("soak") => parsed.passthrough.push(arg),
            _ if arg.starts_with('-') => bail!("unknown option `{arg}` (see `cargo xtask --help`)"),
            _ if parsed.command.is_none() => parsed.command = Some(arg),
            _ => parsed.extra.push(arg),
        }
    }
    Ok(parsed)
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let args = parse(args)?;
    if args.help {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = args.command else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    if let Some(word) = args.extra.first() {
        bail!(
            "{command}: unexpected argument `{word}` (arguments for memtrace or the tests go after `--`)"
        );
    }
    let takes_passthrough = matches!(command.as_str(), "run" | "test" | "bench" | "soak");
    if !takes_passthrough && !args.passthrough.is_empty() {
        bail!("{command}: takes no arguments after `--`");
    }
    let ctx = Ctx::new(args.dry_run)?;
    match command.as_str() {
        "setup" => setup::setup(&ctx).map(|()| ExitCode::SUCCESS),
        "build" => build::build(&ctx).map(|_| ExitCode::SUCCESS),
        "run" => build::run(&ctx, &args.passthrough).map(|()| ExitCode::SUCCESS),
        "test" => test::test(&ctx, &args.passthrough).map(|()| ExitCode::SUCCESS),
        "bench" => bench::bench(&ctx, &args.passthrough).map(|()| ExitCode::SUCCESS),
        "soak" => soak::soak(&ctx, &args.passthrough).map(|()| ExitCode::SUCCESS),
        other => bail!("unknown command `{other}` (see `cargo xtask --help`)"),
    }
}
