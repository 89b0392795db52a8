//! memtrace: an eBPF memory-allocation tracer.
//!
//! The data path, one module per step: `probes` (load and attach the eBPF
//! programs) → `collect` (drain the ring buffer) → `decode` → `tracker`
//! (pure state machine) → `stacks` / `procmaps` (frames, normalized while
//! the process lives) → `symbolize` → `report`.

mod cli;
mod collect;
mod dashboard;
mod decode;
mod ebpf_log;
mod fastmap;
mod launch;
mod output;
mod phases;
mod probes;
mod procmaps;
mod report;
mod ringbuf;
mod sampled;
mod stacks;
mod symbolize;
mod system;
mod trace_one;
mod tracker;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;

use crate::cli::{Cli, Command};

/// memtrace's own allocator is not the C library's: with system-wide
/// probes on libc's malloc, every allocation memtrace made would trap into
/// the kernel (and be filtered out there) — a cost of microseconds each.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memtrace: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error chain on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        // Some errors repeat their source in their own message.
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Report(args)) => trace_one::run(args, &cli.tuning),
        Some(Command::Probes { lib }) => show_probes(lib),
        None => dashboard::run(cli.dashboard, &cli.tuning),
    }
}

fn show_probes(lib: Option<std::path::PathBuf>) -> Result<()> {
    let libc = match lib {
        Some(l) => l,
        None => probes::host_libc()?,
    };
    let mut libs = vec![(libc, probes::LIBC)];
    if let Some(cxx) = probes::find_in_lib_dirs("libstdc++.so.6") {
        libs.push((cxx, probes::CXX));
    }
    for (lib, specs) in libs {
        let (planned, missing) = probes::plan(&lib, specs)?;
        println!("{}", lib.display());
        for p in planned {
            println!(
                "  {:<16} +{:<3} file offset {:#x}  {}{}",
                p.symbol,
                p.choice.offset,
                p.file_offset,
                if p.choice.emulated {
                    "emulated"
                } else {
                    "single-stepped"
                },
                if p.ret { ", with return probe" } else { "" }
            );
        }
        for m in missing {
            println!("  {m:<16} (not in this library)");
        }
    }
    Ok(())
}
