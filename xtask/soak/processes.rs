//! The processes of a run: signals and the boot clock through glibc, a
//! guard that kills and reaps a child, and what is read of a process
//! (its output, its VmRSS, its bpf links) or waited for.

use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, ExitStatus},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

pub(super) const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
pub(super) const SIGUSR1: i32 = 10;
pub(super) const SIGTERM: i32 = 15;
const CLOCK_BOOTTIME: i32 = 7;

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

// std links glibc; these two calls are all that is needed of it.
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

pub(super) fn send(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        kill(pid, sig);
    }
}

/// CLOCK_BOOTTIME in ns (the clock of the workload's timestamps).
pub(super) fn boottime_ns() -> i64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        clock_gettime(CLOCK_BOOTTIME, &mut ts);
    }
    ts.sec * 1_000_000_000 + ts.nsec
}

/// A child killed (SIGKILL; its whole process group for `group`) and reaped
/// on drop if still running.
pub(super) struct Guard {
    pub(super) child: Child,
    pub(super) group: bool,
}

impl Guard {
    pub(super) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(super) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling for a deadline, not for synchronisation.
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.running() {
            let pid = self.pid();
            send(if self.group { -pid } else { pid }, SIGKILL);
            let _ = self.child.wait();
        }
    }
}

pub(super) fn read_all(mut r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

pub(super) fn vm_rss(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The link types of the bpf links `pid` holds open.
fn bpf_links(pid: i32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut types = Vec::new();
    for e in dir.flatten() {
        let is_link = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().contains("bpf_link"))
            .unwrap_or(false);
        if !is_link {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(t) = info.lines().find_map(|l| l.strip_prefix("link_type:")) {
            types.push(t.trim().to_owned());
        }
    }
    types
}

/// Waits until memtrace has attached: it holds uprobe links and the two
/// exec/exit tracepoint links (attached last). Should memtrace ever attach
/// differently, a set of links unchanged for a second also counts.
pub(super) fn wait_attached(mt: &mut Guard, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last: (usize, Instant) = (0, start);
    loop {
        if !mt.running() {
            return Err("memtrace exited before it attached".into());
        }
        let links = bpf_links(mt.pid());
        let uprobes = links.iter().filter(|t| t.contains("uprobe")).count();
        let tps = links.iter().filter(|t| t.contains("tracepoint")).count();
        if uprobes >= 1 && tps >= 2 {
            return Ok(start.elapsed());
        }
        if links.len() != last.0 {
            last = (links.len(), Instant::now());
        } else if !links.is_empty() && last.1.elapsed() >= Duration::from_secs(1) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "memtrace did not attach within {timeout:?} (links: {links:?})"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn wait_file(path: &Path, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub(super) fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}
