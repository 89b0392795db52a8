//! Launching `report -- CMD`: the child is forked and waits on a pipe until
//! the probes are attached to it; then it execs CMD. An exec failure comes
//! back on a second (close-on-exec) pipe as an errno, so the user gets one
//! clear line. The child is ptrace-seized with only PTRACE_O_TRACEEXIT, so
//! it stops once more just before its address space goes away at exit:
//! memtrace then reads its maps to normalize the last stacks, and lets it go.

use std::{
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
    traced: bool,
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
        traced: false,
    })
}

impl Child {
    /// Stop the child once more at its exit, while its memory is intact.
    pub fn trace_exit(&mut self) -> Result<()> {
        // SAFETY: plain ptrace request on our own child.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                self.pid as libc::pid_t,
                0usize,
                libc::PTRACE_O_TRACEEXIT as usize,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("ptrace(PTRACE_SEIZE) of the command");
        }
        self.traced = true;
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
            if r == self.pid as libc::pid_t
                && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status))
            {
                return Some(status);
            }
            if r < 0 {
                return None;
            }
            // A ptrace stop: let it go on.
            self.resume(status);
        }
    }

    /// Resume the child after a ptrace stop described by `status`.
    fn resume(&self, status: libc::c_int) {
        let pid = self.pid as libc::pid_t;
        let event = (status >> 16) & 0xff;
        let sig = libc::WSTOPSIG(status);
        // SAFETY: ptrace requests on our own stopped tracee.
        unsafe {
            if event == libc::PTRACE_EVENT_STOP {
                // Group-stop (SIGSTOP and friends): stay stopped, keep
                // being notified.
                libc::ptrace(libc::PTRACE_LISTEN, pid, 0usize, 0usize);
            } else if event != 0 {
                libc::ptrace(libc::PTRACE_CONT, pid, 0usize, 0usize);
            } else {
                // Signal-delivery stop: deliver the signal.
                libc::ptrace(libc::PTRACE_CONT, pid, 0usize, sig as usize);
            }
        }
    }

    /// Non-blocking check of the child's state.
    pub fn poll(&self) -> ChildState {
        let mut status = 0;
        // SAFETY: waiting for our own child, without blocking.
        let r = unsafe {
            libc::waitpid(
                self.pid as libc::pid_t,
                &mut status,
                libc::WNOHANG | libc::__WALL,
            )
        };
        if r <= 0 {
            return if r < 0 {
                ChildState::Gone(None)
            } else {
                ChildState::Running
            };
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return ChildState::Gone(Some(status));
        }
        if libc::WIFSTOPPED(status) && (status >> 16) & 0xff == libc::PTRACE_EVENT_EXIT {
            return ChildState::ExitStop;
        }
        if libc::WIFSTOPPED(status) {
            self.resume(status);
        }
        ChildState::Running
    }

    /// Let the child finish exiting after an exit stop.
    pub fn continue_exit(&self) {
        // SAFETY: ptrace request on our own stopped tracee.
        unsafe {
            libc::ptrace(libc::PTRACE_CONT, self.pid as libc::pid_t, 0usize, 0usize);
        }
    }

    /// Stop tracing the child (it keeps running).
    pub fn detach(&mut self) {
        if self.traced {
            // PTRACE_DETACH needs a stopped tracee; interrupt it first.
            // SAFETY: ptrace requests on our own tracee.
            unsafe {
                let pid = self.pid as libc::pid_t;
                libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize);
                let mut status = 0;
                libc::waitpid(pid, &mut status, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
            }
            self.traced = false;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChildState {
    Running,
    /// Stopped at exit, memory intact; call `continue_exit`.
    ExitStop,
    /// Exited (with its wait status when known).
    Gone(Option<libc::c_int>),
}
