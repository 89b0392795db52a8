//! Who the traced process is: its name, executable, cgroup and root,
//! read while it lives.

use crate::procmaps;

/// Name and executable of the traced process, read while it lives.
#[derive(Default)]
pub(super) struct Ident {
    pub(super) comm: Option<String>,
    pub(super) exe: Option<String>,
    /// Its cgroup (v2 path), which names a container or service.
    cgroup: Option<String>,
    /// Its root directory, when not memtrace's (chroot, container).
    root: Option<String>,
}

impl Ident {
    pub(super) fn refresh(&mut self, pid: u32) {
        if let Some(c) = procmaps::comm(pid) {
            self.comm = Some(c);
        }
        if let Some(e) = procmaps::exe(pid) {
            self.exe = Some(e);
        }
        if let Some(c) = procmaps::cgroup(pid) {
            self.cgroup = Some(c);
        }
        if !procmaps::same_root(pid)
            && let Ok(r) = std::fs::read_link(format!("/proc/{pid}/root"))
        {
            self.root = Some(r.to_string_lossy().into_owned());
        }
    }

    /// Report notes naming where the process ran.
    pub(super) fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(c) = &self.cgroup {
            v.push(format!("cgroup: {c}"));
        }
        if let Some(r) = &self.root {
            v.push(format!(
                "root directory: {r} (chroot or container); PIDs are the host's"
            ));
        }
        v
    }
}
