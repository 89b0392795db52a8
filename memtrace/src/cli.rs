//! Command-line interface.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::report::Format;

/// System-wide memory-allocation tracer: live leak dashboard of every
/// process, and leak reports of one.
///
/// With no subcommand, shows the live dashboard of every process on the
/// host that allocates through the host's C library, ranked by leak
/// evidence. Needs root (or CAP_BPF and CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(name = "memtrace", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub dashboard: DashboardArgs,

    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace one process and write a leak report of what it still holds.
    ///
    /// Either attach to a running process (--pid), or run a command traced
    /// from its first allocation: `memtrace report -- CMD ARGS...`.
    Report(ReportArgs),
    /// Show where the probes go in a C library (the offsets chosen so that
    /// the kernel emulates the probed instruction instead of single-stepping
    /// it). Needs no privileges.
    Probes {
        /// The library to inspect (default: the host's libc.so.6).
        #[arg(long)]
        lib: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Attach to this running process (its probes fire for it alone).
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, conflicts_with = "command")]
    pub pid: Option<u32>,

    /// With --pid: stop collecting after this long (e.g. 30s, 500ms, 2m).
    /// Collection also stops at SIGINT/SIGTERM/SIGHUP or when the process
    /// exits.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the report to FILE (atomically, mode 0600) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// With a command: also trace the processes it creates (fork, vfork,
    /// posix_spawn; their children too, up to 1024), each from its first
    /// instruction, and report each after the command. Without it they run
    /// untraced and the report counts them.
    #[arg(long, conflicts_with = "pid")]
    pub children: bool,

    /// The command to run traced, after `--`.
    #[arg(last = true, value_name = "CMD", num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Trace only this process (repeatable); default: every process.
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_pid, global = false)]
    pub pids: Vec<u32>,

    /// Refresh interval of the dashboard (e.g. 1s, 500ms).
    #[arg(short = 'd', long = "delay", value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub delay: Duration,

    /// Format of the reports written by the dashboard's `d` key.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub dump_format: Format,

    /// Run the dashboard's data path without a terminal for DURATION, then
    /// print a JSON summary (benchmarks, soak tests).
    #[arg(long, hide = true, value_name = "DURATION", value_parser = parse_duration)]
    pub headless: Option<Duration>,
}

/// Knobs for benchmarks and debugging.
#[derive(Debug, Args, Clone)]
pub struct Tuning {
    /// Probe programs return at once (the overhead floor of `cargo xtask
    /// bench`): nothing is traced.
    #[arg(long, hide = true, global = true)]
    pub floor: bool,

    /// Switch the probe programs between the floor and tracing every
    /// 100 ms, logging each switch to FILE (`cargo xtask bench`; `report`
    /// only, whose numbers are then meaningless).
    #[arg(
        long,
        hide = true,
        global = true,
        value_name = "FILE",
        conflicts_with = "floor"
    )]
    pub floor_phases: Option<PathBuf>,

    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, hide = true, global = true, default_value_t = 32 << 20)]
    pub ring_bytes: u32,

    /// Bound on outstanding allocations tracked, over all processes (about
    /// 60 bytes of memtrace's memory each, ~100 for mappings). Past it, new
    /// allocations are counted as dropped, never silently lost.
    #[arg(long, global = true, value_name = "N", default_value_t = 4_000_000)]
    pub max_allocations: usize,

    /// Sample allocations instead of tracing each: every allocation of s
    /// bytes is traced with probability 1 - exp(-s/N) (N like 512KiB), and
    /// reported values become unbiased estimates. Much cheaper for small
    /// allocations.
    #[arg(long, global = true, value_name = "N", value_parser = parse_size)]
    pub sample_bytes: Option<u64>,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 512KiB, 1MiB, 65536)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use KiB, MiB or GiB)"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err(format!("'{s}' must be positive")),
        None => Err(format!("'{s}' is too large")),
    }
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a process id"))?;
    if v <= 0 {
        return Err(format!("'{s}' is not a process id (must be positive)"));
    }
    // Linux PIDs are at most 2^22.
    if v > 4_194_304 {
        return Err(format!("'{s}' is larger than any Linux process id"));
    }
    Ok(v as u32)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("'{s}' must be a positive duration"));
    }
    if secs > 365.0 * 86400.0 {
        return Err(format!("'{s}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "0s", "-1s", "abc", "10x", "", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("65536"), Ok(65536));
        for bad in ["0", "-1", "x", "1TiB", "99999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("1"), Ok(1));
        for bad in ["0", "-5", "x", "99999999999", "4194305"] {
            assert!(parse_pid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_keeps_its_flags() {
        let c = Cli::try_parse_from([
            "memtrace", "report", "--format", "json", "--", "./prog", "--flag", "-x",
        ])
        .unwrap();
        let Some(Command::Report(r)) = c.command else {
            panic!()
        };
        assert_eq!(r.command, ["./prog", "--flag", "-x"]);
        assert_eq!(r.format, Format::Json);
    }

    #[test]
    fn pid_and_command_conflict() {
        assert!(Cli::try_parse_from(["memtrace", "report", "--pid", "1", "--", "ls"]).is_err());
    }
}
