//! Launching `report -- CMD`: the child is forked and waits on a pipe until
//! the probes are attached to it; then it execs CMD. An exec failure comes
//! back on a second (close-on-exec) pipe as an errno, so the user gets one
//! clear line. The child's threads are ptrace-seized (never stopped except
//! at the events below): at the leader's exit, before its address space
//! goes away, memtrace reads its maps to normalize the last stacks; at an
//! exec, before the new image runs, memtrace re-attaches its probes when a
//! thread other than the leader exec'd. The processes it forks are held at
//! their first instruction: followed (`--children`: attached to, then
//! traced like the command) or let go at once (counted).

use std::{
    collections::HashSet,
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
};

use anyhow::{Context as _, Result, anyhow, bail};

pub struct Child {
    pub pid: u32,
    go: Option<OwnedFd>,
    exec_err: OwnedFd,
    /// The thread held at an exit, exec, loader or new-process stop.
    stopped: Option<libc::pid_t>,
    /// The processes followed: the command and the children taken by
    /// [`Child::follow`].
    procs: HashSet<u32>,
}

fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that will exec `argv` once released.
pub fn spawn_suspended(argv: &[OsString]) -> Result<Child> {
    let Some(prog) = argv.first() else {
        bail!("no command given");
    };
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("command argument contains a NUL byte"))?;
    let mut cptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    cptrs.push(std::ptr::null());

    let (go_r, go_w) = pipe(libc::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) = pipe(libc::O_CLOEXEC).context("pipe")?;

    // SAFETY: fork in a process whose other threads (if any) hold no lock
    // the child needs: between fork and exec the child only calls
    // async-signal-safe functions (read, write, execvp, _exit) on memory
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        let go = go_r.as_raw_fd();
        let err = err_w.as_raw_fd();
        let mut b = 0u8;
        // SAFETY: async-signal-safe calls on valid fds and buffers only.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(err_r.as_raw_fd());
            if libc::read(go, (&raw mut b).cast(), 1) != 1 {
                // memtrace gave up before releasing us.
                libc::_exit(127);
            }
            libc::execvp(cptrs[0], cptrs.as_ptr());
            let e = *libc::__errno_location();
            libc::write(err, (&raw const e).cast(), size_of::<libc::c_int>());
            libc::_exit(127);
        }
    }
    drop(go_r);
    drop(err_w);
    let _ = prog;
    Ok(Child {
        pid: pid as u32,
        go: Some(go_w),
        exec_err: err_r,
        stopped: None,
        procs: HashSet::from([pid as u32]),
    })
}

impl Child {
    /// Seize the child's threads and the threads and processes it creates
    /// (each new process stops at once: see [`ChildState::NewProcess`]).
    pub fn trace(&mut self) -> Result<()> {
        let opts = libc::PTRACE_O_TRACEEXIT
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK;
        // SAFETY: plain ptrace request on our own child.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                self.pid as libc::pid_t,
                0usize,
                opts as usize,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("ptrace(PTRACE_SEIZE) of the command");
        }
        Ok(())
    }

    /// Let the child exec; wait for the outcome of the exec.
    pub fn release(&mut self, prog: &str) -> Result<()> {
        let go = self
            .go
            .take()
            .ok_or_else(|| anyhow!("command already released"))?;
        let one = 1u8;
        // SAFETY: writing one byte from a valid buffer to our pipe.
        if unsafe { libc::write(go.as_raw_fd(), (&raw const one).cast(), 1) } != 1 {
            return Err(io::Error::last_os_error()).context("releasing the command");
        }
        drop(go);
        let mut errno: libc::c_int = 0;
        // SAFETY: reading into a valid c_int; EOF (0) means exec succeeded.
        let n = loop {
            let n = unsafe {
                libc::read(
                    self.exec_err.as_raw_fd(),
                    (&raw mut errno).cast(),
                    size_of::<libc::c_int>(),
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n > 0 {
            let _ = self.wait_blocking();
            let e = io::Error::from_raw_os_error(errno);
            bail!("cannot run {prog}: {e}");
        }
        Ok(())
    }

    fn wait_blocking(&self) -> Option<libc::c_int> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::__WALL) };
            if r < 0 {
                return None;
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Some(status);
            }
            // A ptrace stop: let it go on.
            self.resume(r, status);
        }
    }

    /// Resume thread `tid` after a ptrace stop described by `status`.
    fn resume(&self, tid: libc::pid_t, status: libc::c_int) {
        let event = (status >> 16) & 0xff;
        let sig = libc::WSTOPSIG(status);
        // SAFETY: ptrace requests on our own stopped tracee.
        unsafe {
            if event == libc::PTRACE_EVENT_STOP && sig != libc::SIGTRAP {
                // Group-stop (SIGSTOP and friends): stay stopped, keep
                // being notified.
                libc::ptrace(libc::PTRACE_LISTEN, tid, 0usize, 0usize);
            } else if event != 0 {
                // One of our events, or a new thread's first stop.
                libc::ptrace(libc::PTRACE_CONT, tid, 0usize, 0usize);
            } else {
                // Signal-delivery stop: deliver the signal.
                libc::ptrace(libc::PTRACE_CONT, tid, 0usize, sig as usize);
            }
        }
    }

    /// Non-blocking check of the child's threads. Stops memtrace does not
    /// act on are resumed at once.
    pub fn poll(&mut self) -> ChildState {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child's threads, without blocking.
            let tid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if tid == 0 {
                return ChildState::Running;
            }
            if tid < 0 {
                return ChildState::Gone(None);
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                if tid as u32 == self.pid {
                    return ChildState::Gone(Some(status));
                }
                if self.procs.remove(&(tid as u32)) {
                    return ChildState::ChildGone {
                        pid: tid as u32,
                        status,
                    };
                }
                continue;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            match (status >> 16) & 0xff {
                libc::PTRACE_EVENT_EXIT if self.procs.contains(&(tid as u32)) => {
                    self.stopped = Some(tid);
                    return ChildState::ExitStop { pid: tid as u32 };
                }
                // The first stop of a thread or process created by a
                // traced one (before it ran an instruction).
                libc::PTRACE_EVENT_STOP
                    if libc::WSTOPSIG(status) == libc::SIGTRAP
                        && !self.procs.contains(&(tid as u32)) =>
                {
                    match crate::procmaps::tgid_ppid(tid as u32) {
                        Some((tgid, parent)) if tgid == tid as u32 => {
                            self.stopped = Some(tid);
                            return ChildState::NewProcess { pid: tgid, parent };
                        }
                        // A new thread.
                        _ => self.resume(tid, status),
                    }
                }
                libc::PTRACE_EVENT_EXEC => {
                    let mut former: libc::c_ulong = 0;
                    // SAFETY: reads the event message of our stopped tracee
                    // into a valid c_ulong.
                    unsafe {
                        libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0usize, &raw mut former);
                    }
                    self.stopped = Some(tid);
                    return ChildState::ExecStop {
                        pid: tid as u32,
                        former_tid: former as u32,
                    };
                }
                0 if libc::WSTOPSIG(status) == libc::SIGCHLD && from_kernel(tid) => {
                    self.stopped = Some(tid);
                    let pid = crate::procmaps::tgid_ppid(tid as u32).map_or(self.pid, |(t, _)| t);
                    return ChildState::LoaderStop { pid };
                }
                _ => self.resume(tid, status),
            }
        }
    }

    /// Follow the new process held at its first stop: its exits, execs and
    /// loader stops are reported like the command's. Resume it with
    /// [`Child::resume_stopped`] once its probes are attached.
    pub fn follow(&mut self, pid: u32) {
        self.procs.insert(pid);
    }

    /// Let the new process held at its first stop go on untraced.
    pub fn detach_stopped(&mut self) {
        if let Some(tid) = self.stopped.take() {
            // SAFETY: ptrace request on our own stopped tracee.
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, 0usize);
            }
        }
    }

    /// Resume the thread held at a stop.
    pub fn resume_stopped(&mut self) {
        if let Some(tid) = self.stopped.take() {
            // SAFETY: ptrace request on our own stopped tracee.
            unsafe {
                libc::ptrace(libc::PTRACE_CONT, tid, 0usize, 0usize);
            }
        }
    }
}

/// Whether the signal thread `tid` is stopped with was sent by the kernel
/// (memtrace's `loader_stop` eBPF program), not by a process.
fn from_kernel(tid: libc::pid_t) -> bool {
    const SI_KERNEL: libc::c_int = 0x80;
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: reads the pending signal's siginfo of our stopped tracee into
    // a valid siginfo_t.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, tid, 0usize, &raw mut info) };
    r == 0 && info.si_code == SI_KERNEL
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChildState {
    Running,
    /// The leader of `pid` (the command or a followed child) is stopped at
    /// exit, memory intact; call `resume_stopped`.
    ExitStop {
        pid: u32,
    },
    /// A thread of `pid` completed an exec and is stopped before the new
    /// image runs; `former_tid` is its thread id before the exec. Call
    /// `resume_stopped`.
    ExecStop {
        pid: u32,
        former_tid: u32,
    },
    /// A thread of `pid` is stopped in the dynamic loader's hook (new
    /// objects were mapped: start-up or dlopen), before their code runs.
    /// The signal is memtrace's own and is not delivered. Call
    /// `resume_stopped`.
    LoaderStop {
        pid: u32,
    },
    /// A traced process created process `pid` (child of `parent`), held
    /// before its first instruction: call `follow` and `resume_stopped`, or
    /// `detach_stopped`.
    NewProcess {
        pid: u32,
        parent: u32,
    },
    /// A followed child process is gone (with its wait status).
    ChildGone {
        pid: u32,
        status: libc::c_int,
    },
    /// Exited (with its wait status when known).
    Gone(Option<libc::c_int>),
}
