//! The run itself: starts memtrace and the workload, samples memtrace's
//! RSS, freezes the workload and collects memtrace's JSON, its stderr and
//! the ground truth.

use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::process::CommandExt as _,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc::Receiver,
    thread,
    time::{Duration, Instant},
};

use super::{
    Config, REFRESH,
    format::{mib, secs},
    processes::{
        Guard, SIGINT, SIGTERM, SIGUSR1, boottime_ns, read_all, send, sleep_until, vm_rss,
        wait_attached, wait_file,
    },
    truth::{Truth, kv, read_truths},
};

/// Everything the run collected, before judging.
pub(super) struct Collected {
    pub(super) attach_wait: Duration,
    pub(super) ran: Duration,
    pub(super) rss: Vec<(f64, u64)>,
    pub(super) mt_status: ExitStatus,
    pub(super) json: String,
    pub(super) stderr: String,
    /// CLOCK_BOOTTIME when memtrace was told to stop.
    pub(super) end_boot_ns: i64,
    pub(super) truths: Vec<Truth>,
    pub(super) parent: HashMap<String, String>,
    pub(super) parent_final: HashMap<String, String>,
    pub(super) workload_stderr: String,
}

pub(super) fn collect(cfg: &Config) -> Result<Collected, String> {
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    // A cap in case we die without stopping it; SIGINT stops it.
    let cap = cfg.duration.as_secs() + 300;
    let mut cmd = Command::new(&cfg.memtrace);
    cmd.arg("--headless")
        .arg(format!("{cap}s"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.memtrace.display()))?;
    let mut mt = Guard {
        child,
        group: false,
    };
    let out_rx = read_all(mt.child.stdout.take().ok_or("no stdout")?);
    let err_rx = read_all(mt.child.stderr.take().ok_or("no stderr")?);
    let stderr_so_far = |rx: &Receiver<String>| rx.recv_timeout(Duration::from_secs(5)).ok();
    let attach_wait = match wait_attached(&mut mt, Duration::from_secs(60)) {
        Ok(d) => d,
        Err(e) => {
            drop(mt);
            return Err(format!(
                "{e}; stderr: {}",
                stderr_so_far(&err_rx).unwrap_or_default().trim()
            ));
        }
    };

    let wl_log = cfg.dir.join("workload.stderr");
    let log = File::create(&wl_log).map_err(|e| format!("{}: {e}", wl_log.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let maxsecs = cfg.duration.as_secs() + 300;
    let child = Command::new(&cfg.workload)
        .arg("parent")
        .arg(&cfg.dir)
        .arg(maxsecs.to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.workload.display()))?;
    let mut wl = Guard { child, group: true };
    let workload_log = || fs::read_to_string(&wl_log).unwrap_or_default();

    let t0 = Instant::now();
    let end = t0 + cfg.duration;
    let mut rss = Vec::new();
    let mut next_progress = cfg.progress_every.map(|p| t0 + p);
    for k in 1u32.. {
        if let Some(b) = vm_rss(mt.pid()) {
            rss.push((t0.elapsed().as_secs_f64(), b));
        }
        if let Ok(Some(st)) = mt.child.try_wait() {
            return Err(format!(
                "memtrace exited during the run ({st}); stderr: {}",
                stderr_so_far(&err_rx).unwrap_or_default().trim()
            ));
        }
        if let Ok(Some(st)) = wl.child.try_wait() {
            return Err(format!(
                "the workload exited during the run ({st}); its stderr: {}",
                workload_log().trim()
            ));
        }
        if let Some(p) = next_progress
            && Instant::now() >= p
        {
            let b = rss.last().map_or(0, |s| s.1);
            eprintln!(
                "{} {} / {}: memtrace RSS {}",
                cfg.prefix,
                secs(t0.elapsed()),
                secs(cfg.duration),
                mib(b)
            );
            next_progress = cfg.progress_every.map(|e| p + e);
        }
        let next = t0 + Duration::from_secs(u64::from(k));
        if next >= end {
            sleep_until(end);
            break;
        }
        sleep_until(next);
    }
    if let Some(b) = vm_rss(mt.pid()) {
        rss.push((t0.elapsed().as_secs_f64(), b));
    }
    let ran = t0.elapsed();

    // Freeze, and wait for every live process's ground truth.
    send(wl.pid(), SIGUSR1);
    let ptext = wait_file(&cfg.dir.join("parent.truth"), Duration::from_secs(10))
        .map_err(|e| format!("freezing the workload: {e}; its stderr: {}", workload_log()))?;
    let parent = kv(&ptext);
    for item in parent
        .get("live")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let seq = item.split(':').next().unwrap_or(item);
        wait_file(
            &cfg.dir.join(format!("t{seq}.truth")),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("freezing the workload: {e}"))?;
    }
    // memtrace drains every 2 ms and snapshots every REFRESH: after this,
    // its last snapshot holds the frozen state.
    thread::sleep(REFRESH + Duration::from_millis(250));

    let end_boot_ns = boottime_ns();
    send(mt.pid(), SIGINT);
    let mt_status = mt
        .wait_timeout(Duration::from_secs(60))
        .ok_or("memtrace did not exit within 60 s of SIGINT")?;
    let json = out_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "memtrace's stdout stayed open")?;
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();

    send(wl.pid(), SIGTERM);
    let wl_status = wl.wait_timeout(Duration::from_secs(30));
    let parent_final = fs::read_to_string(cfg.dir.join("parent.final"))
        .map(|s| kv(&s))
        .unwrap_or_default();
    if wl_status.is_none() {
        return Err("the workload did not exit within 30 s of SIGTERM".into());
    }
    Ok(Collected {
        attach_wait,
        ran,
        rss,
        mt_status,
        json,
        stderr,
        end_boot_ns,
        truths: read_truths(&cfg.dir)?,
        parent,
        parent_final,
        workload_stderr: workload_log(),
    })
}
