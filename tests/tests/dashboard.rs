//! The dashboard as a person uses it: `memtrace` in a real terminal (tmux),
//! a workload that leaks steadily, its PID near the top of the table within
//! 6 s; `q` exits within 1 s, the terminal is restored, and no memtrace BPF
//! program is left loaded.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace_tests::{bin, require_ebpf, serial, workload};

const SESSION: &str = "memtrace-e2e";

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screen() -> String {
    tmux(&["capture-pane", "-p", "-t", SESSION])
}

/// Poll `cond` on the screen every 100 ms for up to `limit`.
fn wait_screen(limit: Duration, cond: impl Fn(&str) -> bool) -> Option<(String, Duration)> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let s = screen();
        if cond(&s) {
            return Some((s, t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Names of the BPF programs loaded in the kernel right now.
fn loaded_bpf_programs() -> Vec<(u32, String)> {
    #[repr(C)]
    #[derive(Default)]
    struct GetId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_prog_info: `name` (16 bytes) sits at offset 64.
    let mut names = Vec::new();
    let mut id = 0u32;
    loop {
        let mut a = GetId {
            start_id: id,
            ..GetId::default()
        };
        // SAFETY: bpf(2) with a valid, sized attribute struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                &mut a,
                size_of::<GetId>(),
            )
        };
        if r != 0 {
            return names;
        }
        id = a.next_id;
        let mut b = GetId {
            start_id: id,
            ..GetId::default()
        };
        // SAFETY: as above.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_FD_BY_ID,
                &mut b,
                size_of::<GetId>(),
            )
        };
        if fd < 0 {
            continue;
        }
        let mut info = [0u8; 256];
        let mut c = InfoAttr {
            fd: fd as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: as above; `info` outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &mut c,
                size_of::<InfoAttr>(),
            )
        };
        // SAFETY: closing the fd we were given.
        unsafe { libc::close(fd as i32) };
        if r == 0 {
            let raw = &info[64..80];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            names.push((id, String::from_utf8_lossy(&raw[..end]).into_owned()));
        }
    }
}

/// The dashboard's process (started by the tmux shell).
fn dashboard_pid() -> Option<u32> {
    let me = bin();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (exe == me && cmdline.windows(7).any(|w| w == b"--delay")).then_some(pid)
    })
}

/// IDs of loaded programs named like memtrace's.
fn memtrace_programs() -> Vec<(u32, String)> {
    loaded_bpf_programs()
        .into_iter()
        .filter(|(_, n)| {
            [
                "alloc_enter",
                "malloc_enter",
                "free_enter",
                "alloc_ret",
                "alloc_session",
                "sched_exec",
                "sched_exit",
            ]
            .iter()
            .any(|p| n.starts_with(p))
        })
        .collect()
}

#[test]
fn steady_leaker_tops_the_dashboard_and_q_restores_everything() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is needed (cargo xtask setup installs it)"
    );
    // Other memtrace instances may run on this machine: only programs that
    // appear during the test are ours.
    let before = memtrace_programs();
    let mut leaker = Command::new(workload("dripper"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the leaker");
    let pid = leaker.id().to_string();

    let _ = tmux(&["kill-session", "-t", SESSION]);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        SESSION,
        "-x",
        "120",
        "-y",
        "40",
        "bash --norc --noprofile",
    ]);
    tmux(&["send-keys", "-t", SESSION, "PS1='PROMPT> '; clear", "Enter"]);
    let cmd = format!("{} --delay 500ms", bin().display());
    tmux(&["send-keys", "-t", SESSION, &cmd, "Enter"]);

    // The leaker's row among the first rows of the table, within 6 s.
    // Table rows start with the PID, after the selection marker (▶) when
    // the row is the selected one.
    let near_top = |s: &str| {
        s.lines()
            .map(|l| l.trim_start_matches(|c: char| c == '▶' || c.is_whitespace()))
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
            })
            .take(3)
            .any(|l| l.split_whitespace().next() == Some(pid.as_str()))
    };
    let found = wait_screen(Duration::from_secs(6), near_top);
    let shown = screen();
    let ours = |v: Vec<(u32, String)>| -> Vec<(u32, String)> {
        v.into_iter().filter(|p| !before.contains(p)).collect()
    };
    let programs_while_running = ours(memtrace_programs());

    let dashboard = dashboard_pid();
    let quit_at = Instant::now();
    tmux(&["send-keys", "-t", SESSION, "q"]);
    let quit_took = dashboard.map(|p| {
        while std::path::Path::new(&format!("/proc/{p}")).exists()
            && quit_at.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        quit_at.elapsed()
    });
    // Back at the shell: the dashboard's alternate screen is gone.
    let back = wait_screen(Duration::from_secs(5), |s| {
        s.contains("PROMPT>") && !s.contains(&pid)
    });
    // The terminal is out of raw mode: stty reports canonical mode with echo.
    tmux(&[
        "send-keys",
        "-t",
        SESSION,
        "clear; stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo",
        "Enter",
    ]);
    let modes = wait_screen(Duration::from_secs(5), |s| s.contains("icanon echo"));
    let left = ours(memtrace_programs());

    let _ = tmux(&["kill-session", "-t", SESSION]);
    drop(leaker.stdin.take());
    let _ = leaker.wait();

    assert!(
        found.is_some(),
        "PID {pid} not near the top within 6 s:\n{shown}"
    );
    assert!(
        !programs_while_running.is_empty(),
        "no memtrace programs loaded while it ran"
    );
    let quit_took = quit_took.expect("the dashboard's process was not found");
    assert!(quit_took < Duration::from_secs(1), "q took {quit_took:?}");
    assert!(
        back.is_some(),
        "the screen was not restored after q:\n{}",
        screen()
    );
    assert!(modes.is_some(), "terminal left in raw mode");
    assert!(left.is_empty(), "BPF programs left loaded: {left:?}");
}
