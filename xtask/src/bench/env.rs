//! The benchmark's environment: the workloads compiled, the tools found,
//! the bpftrace script written ([`prepare`]), and [`Env`]'s helpers that
//! spawn memtrace and the workloads and watch for other tracers on the host.

use std::{
    cell::Cell as StdCell,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    ATTACH_TIMEOUT, FOREIGN_WAIT, HEADLESS_DELAY_MS, bench_dir,
    proc::{self, Proc, Sink},
    workloads::python3,
};
use crate::ctx::{Ctx, say};

/// Everything the runs need.
pub(super) struct Env {
    memtrace: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) tmp: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) python: PathBuf,
    pub(super) bpftrace: Result<PathBuf, String>,
    pub(super) heaptrack: Result<PathBuf, String>,
    /// bcc memleak's probe set.
    pub(super) bt_script: PathBuf,
    /// malloc and free only (the bench's script before memleak's set).
    pub(super) bt_script_malloc_free: PathBuf,
    pub(super) libc: String,
    /// Runs so far, and those during which another (foreign) tracer had
    /// system-wide probes attached.
    /// When the measured memtrace binary was built.
    pub(super) built: String,
    pub(super) runs: StdCell<usize>,
    pub(super) foreign_runs: StdCell<usize>,
    /// Time spent waiting for foreign tracers to go.
    pub(super) waited: StdCell<Duration>,
    /// Waiting for a foreign tracer to go timed out; do not wait again until
    /// the host is seen quiet.
    impatient: StdCell<bool>,
}

/// Compiles the workloads, finds the tools, writes the bpftrace script.
pub(super) fn prepare(ctx: &Ctx, memtrace: PathBuf) -> Result<Env> {
    let dir = bench_dir(ctx);
    let (bin, tmp, logs) = (dir.join("bin"), dir.join("tmp"), dir.join("logs"));
    for d in [&bin, &tmp, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Logs of the previous run go.
    for entry in fs::read_dir(&logs)?.flatten() {
        let _ = fs::remove_file(entry.path());
    }
    // memtrace gets rebuilt while we run: measure one build throughout.
    let copy = bin.join("memtrace");
    let _ = fs::remove_file(&copy);
    fs::copy(&memtrace, &copy)
        .with_context(|| format!("copying {} to {}", memtrace.display(), copy.display()))?;
    let built = fs::metadata(&memtrace)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let built = ctx
        .probe(
            &ctx.cmd("date")
                .args(["-u", "-d", &format!("@{built}"), "+%Y-%m-%d %H:%M UTC"]),
        )
        .map_or_else(|| "?".into(), |s| s.trim().to_owned());
    say!(
        "bench: measuring a copy of {} (built {built})",
        memtrace.display()
    );
    let memtrace = copy;
    let src = ctx.root.join("xtask/bench");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for name in ["tight", "laps", "mixed", "hold", "stacks"] {
        let cmd = ctx
            .cmd(cc.clone())
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"])
            .arg("-o")
            .arg(bin.join(name))
            .arg(src.join(format!("{name}.c")));
        ctx.run(&cmd)?;
    }
    let python = python3(ctx);
    if !python.is_file() {
        bail!("bench: python3 not found (install Debian's python3)");
    }
    let tool = |name: &str| -> Result<PathBuf, String> {
        let path = ctx
            .which(name)
            .ok_or_else(|| format!("{name} not installed"))?;
        ctx.probe(&ctx.cmd(path.to_string_lossy()).arg("--version"))
            .ok_or_else(|| format!("`{name} --version` fails"))?;
        Ok(path)
    };
    // The libc memtrace probes, as `memtrace probes` names it.
    let libc = ctx
        .probe(&ctx.cmd(memtrace.to_string_lossy()).arg("probes"))
        .and_then(|out| {
            out.lines()
                .next()
                .map(str::trim)
                .filter(|l| l.starts_with('/') && Path::new(l).exists())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "/lib/x86_64-linux-gnu/libc.so.6".to_owned());
    let bt_script = tmp.join("memleak.bt");
    fs::write(&bt_script, bpftrace_script(&libc))?;
    let bt_script_malloc_free = tmp.join("memleak-malloc-free.bt");
    fs::write(&bt_script_malloc_free, bpftrace_malloc_free_script(&libc))?;
    Ok(Env {
        memtrace,
        bin,
        tmp,
        logs,
        python,
        bpftrace: tool("bpftrace"),
        heaptrack: tool("heaptrack"),
        bt_script,
        bt_script_malloc_free,
        libc,
        built,
        runs: StdCell::new(0),
        foreign_runs: StdCell::new(0),
        waited: StdCell::new(Duration::ZERO),
        impatient: StdCell::new(false),
    })
}

/// bcc's memleak in bpftrace, with memleak's probe set: malloc, calloc,
/// realloc, posix_memalign, memalign, aligned_alloc, valloc, pvalloc and
/// mmap save the size by thread at entry; at their return, address → size
/// and the user stack; realloc's entry, free and munmap delete the old
/// address. `$1` is the workload's pid (bcc's `memleak -p`); bpftrace 0.17
/// plants the probes in every process anyway (measured: `-p` does not scope
/// uprobes), so this is a system-wide tracer. At exit bpftrace prints what
/// is outstanding, with stacks.
fn bpftrace_script(libc: &str) -> String {
    let at = |kind: &str, fs: &[&str]| {
        fs.iter()
            .map(|f| format!("{kind}:{libc}:{f}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let returns = [
        "malloc",
        "calloc",
        "realloc",
        "memalign",
        "aligned_alloc",
        "valloc",
        "pvalloc",
        "mmap",
    ];
    format!(
        "// memleak-like: written by cargo xtask bench\n\
         {} /pid == $1/ {{ @size[tid] = arg0; }}\n\
         {} /pid == $1/ {{ @size[tid] = arg0 * arg1; }}\n\
         {} /pid == $1/ {{ @size[tid] = arg1; }}\n\
         {} /pid == $1/ {{\n\
         \x20 delete(@sizes[arg0]);\n\
         \x20 delete(@stacks[arg0]);\n\
         \x20 @size[tid] = arg1;\n\
         }}\n\
         {} /pid == $1/ {{ @memptr[tid] = arg0; @size[tid] = arg2; }}\n\
         {} /pid == $1 && @size[tid]/ {{\n\
         \x20 @sizes[retval] = @size[tid];\n\
         \x20 @stacks[retval] = ustack;\n\
         \x20 delete(@size[tid]);\n\
         }}\n\
         {} /pid == $1 && @size[tid]/ {{\n\
         \x20 $p = *uptr((uint64 *)@memptr[tid]);\n\
         \x20 @sizes[$p] = @size[tid];\n\
         \x20 @stacks[$p] = ustack;\n\
         \x20 delete(@size[tid]);\n\
         \x20 delete(@memptr[tid]);\n\
         }}\n\
         {} /pid == $1/ {{ delete(@sizes[arg0]); delete(@stacks[arg0]); }}\n",
        at("uprobe", &["malloc", "valloc", "pvalloc"]),
        at("uprobe", &["calloc"]),
        at("uprobe", &["memalign", "aligned_alloc", "mmap"]),
        at("uprobe", &["realloc"]),
        at("uprobe", &["posix_memalign"]),
        at("uretprobe", &returns),
        at("uretprobe", &["posix_memalign"]),
        at("uprobe", &["free", "munmap"]),
    )
}

/// The script the bench ran before it had memleak's probe set: malloc and
/// free only (the entry, return and free probes above, for those two). On
/// workloads that call calloc or realloc it does less than memtrace and
/// memleak do; kept as a column for comparison with earlier tables.
fn bpftrace_malloc_free_script(libc: &str) -> String {
    format!(
        "// memleak-like, malloc and free only: written by cargo xtask bench\n\
         uprobe:{libc}:malloc /pid == $1/ {{ @size[tid] = arg0; }}\n\
         uretprobe:{libc}:malloc /pid == $1 && @size[tid]/ {{\n\
         \x20 @sizes[retval] = @size[tid];\n\
         \x20 @stacks[retval] = ustack;\n\
         \x20 delete(@size[tid]);\n\
         }}\n\
         uprobe:{libc}:free /pid == $1/ {{ delete(@sizes[arg0]); delete(@stacks[arg0]); }}\n"
    )
}

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

impl Env {
    pub(super) fn log(&self, name: &str) -> Result<Sink> {
        Sink::log(&self.logs.join(format!("{name}.log")))
    }

    pub(super) fn memtrace(&self) -> Command {
        Command::new(&self.memtrace)
    }

    /// Starts `memtrace --headless` (system-wide) and returns once its
    /// probes are planted in `w`, a workload waiting at its gate.
    pub(super) fn start_headless(&self, w: &Proc, log: &str) -> Result<Proc> {
        let before = proc::libc_text_anon_kib(w.pid).unwrap_or(0);
        let mut c = self.memtrace();
        c.args([
            "--headless",
            "3600s",
            "--delay",
            &format!("{HEADLESS_DELAY_MS}ms"),
        ]);
        let mut m = Proc::spawn(
            "memtrace --headless",
            &mut c,
            false,
            Sink::Lines,
            self.log(log)?,
        )?;
        proc::wait_planted(w, &mut m, before, ATTACH_TIMEOUT)?;
        Ok(m)
    }

    /// Starts `memtrace report --pid` on `w`, a workload waiting at its
    /// gate, writing its JSON report to `json`; returns once it says it
    /// attached.
    pub(super) fn start_report_pid(&self, w: &Proc, json: &Path, log: &str) -> Result<Proc> {
        let mut cmd = self.memtrace();
        cmd.args(["report", "--pid", &w.pid.to_string()])
            .args(["--format", "json", "-o"])
            .arg(json);
        let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Null, self.log(log)?)?;
        if m.wait_stderr(&|l| l.contains("attached to PID"), ATTACH_TIMEOUT)
            .is_some()
        {
            return Ok(m);
        }
        if let Some(exit) = m.try_wait()? {
            bail!("{}", m.failure(&exit));
        }
        bail!("memtrace did not attach within {ATTACH_TIMEOUT:?}")
    }

    /// Spawns a workload; with `gate`, returns once it waits at the gate.
    pub(super) fn workload(&self, argv: &[String], log: &str, gate: bool) -> Result<Proc> {
        let mut cmd = command(argv);
        cmd.current_dir(&self.tmp);
        let mut w = Proc::spawn("workload", &mut cmd, gate, Sink::Lines, self.log(log)?)?;
        if gate
            && w.wait_stdout(&|l| l == "ready", Duration::from_secs(60))
                .is_none()
        {
            if let Some(exit) = w.try_wait()? {
                bail!("{}", w.failure(&exit));
            }
            bail!("the workload did not reach its gate");
        }
        Ok(w)
    }

    /// Called before every run: when another tracer has system-wide probes
    /// attached (they slow every process), waits up to [`FOREIGN_WAIT`] for
    /// it to go. Returns whether it is still there (the run is then marked).
    pub(super) fn quiet_host(&self) -> bool {
        self.runs.set(self.runs.get() + 1);
        if !proc::foreign_tracer() {
            self.impatient.set(false);
            return false;
        }
        if !self.impatient.get() {
            say!(
                "bench: another tracer has system-wide probes attached (every process pays for them); waiting up to {} s for it to go",
                FOREIGN_WAIT.as_secs()
            );
            let start = Instant::now();
            let gone = loop {
                thread::sleep(Duration::from_millis(500));
                if !proc::foreign_tracer() {
                    break true;
                }
                if start.elapsed() >= FOREIGN_WAIT {
                    break false;
                }
            };
            self.waited.set(self.waited.get() + start.elapsed());
            if gone {
                say!("bench: the other tracer is gone");
                return false;
            }
            say!(
                "bench: it is still there; measuring anyway (such runs are counted in the report)"
            );
            self.impatient.set(true);
        }
        self.foreign_runs.set(self.foreign_runs.get() + 1);
        true
    }

    /// After a run: a foreign tracer that attached during the run marks it
    /// too. `before` is what [`Env::quiet_host`] said.
    pub(super) fn foreign_after(&self, before: bool) -> bool {
        if before {
            return true;
        }
        let now = proc::foreign_tracer();
        if now {
            self.foreign_runs.set(self.foreign_runs.get() + 1);
        }
        now
    }
}
