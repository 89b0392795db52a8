//! `/proc/PID/maps` snapshots, and address normalization against them:
//! a virtual address becomes (file, file offset), which stays valid after
//! the process has exited.

use std::{path::Path, sync::Arc};

/// A file-backed executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: Arc<str>,
}

/// A normalized address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileAddr {
    pub path: Arc<str>,
    pub file_offset: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    maps: Vec<Mapping>,
}

impl Snapshot {
    /// Read the maps of `pid`. A leader that exited before its other
    /// threads has an empty map: read it through a live thread then.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let text = read_maps(pid)?;
        let mut snap = Self::parse(&text);
        if !same_root(pid) {
            // Paths in the map are inside the process's own root (chroot,
            // container): name each file as memtrace sees it, so it can
            // still be symbolized after the process is gone.
            for m in &mut snap.maps {
                m.path = host_path(pid, m);
            }
        }
        Ok(snap)
    }

    /// Parse the text of a maps file; lines that are not executable file
    /// mappings are skipped.
    pub fn parse(text: &str) -> Self {
        let mut maps: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        maps.sort_by_key(|m| m.start);
        Self { maps }
    }

    /// The executable file mappings, by address.
    pub fn mappings(&self) -> &[Mapping] {
        &self.maps
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    pub fn lookup(&self, addr: u64) -> Option<FileAddr> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then(|| FileAddr {
            path: m.path.clone(),
            file_offset: addr - m.start + m.offset,
        })
    }

    /// Paths of the mappings, by address.
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.maps.iter().map(|m| &*m.path)
    }
}

/// Whether `pid` has the same root directory as memtrace.
pub fn same_root(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id("/"), id(&format!("/proc/{pid}/root/"))) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The path under which memtrace reaches the file of mapping `m` of a
/// process with another root: where the mapped file lies in memtrace's own
/// tree (`map_files` names the exact file), else the path through
/// `/proc/PID/root` (valid while the process lives).
fn host_path(pid: u32, m: &Mapping) -> Arc<str> {
    use std::os::unix::fs::MetadataExt as _;
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match std::fs::read_link(&link) {
        // The same file, not one that merely has the same name here.
        Ok(p) if p.is_absolute() && id(&p).is_some() && id(&p) == id(Path::new(&link)) => {
            Arc::from(p.to_string_lossy().as_ref())
        }
        _ => Arc::from(format!("/proc/{pid}/root{}", m.path).as_str()),
    }
}

/// The text of `pid`'s maps, through a live thread when the leader's is
/// empty.
pub fn read_maps(pid: u32) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    if !text.is_empty() {
        return Ok(text);
    }
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("maps"))
            && !text.is_empty()
        {
            return Ok(text);
        }
    }
    Ok(text)
}

/// Whether `pid` is a kernel thread (PF_KTHREAD in its stat flags).
pub fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command: state is field 3, flags
            // field 9.
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.split_ascii_whitespace();
    let range = it.next()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?;
    // The path may contain spaces: take the rest of the line after the
    // inode column.
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)
        .map(str::trim)?;
    if !perms.contains('x') || inode == "0" || !path.starts_with('/') {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        offset,
        path: Arc::from(path),
    })
}

/// The executable behind `/proc/PID/exe` (through a live thread when the
/// leader has exited), if readable.
pub fn exe(pid: u32) -> Option<String> {
    let link = |p: &Path| std::fs::read_link(p.join("exe")).ok();
    link(Path::new(&format!("/proc/{pid}")))
        .or_else(|| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .ok()?
                .flatten()
                .find_map(|t| link(&t.path()))
        })
        .map(|p| p.to_string_lossy().into_owned())
}

/// The cgroup v2 path of `pid` (`0::/path` in `/proc/PID/cgroup`), or the
/// first v1 line's path.
pub fn cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().next())?;
    line.splitn(3, ':').nth(2).map(str::to_string)
}

/// The command name (`/proc/PID/comm`), if readable.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Whether process `pid` exists (a zombie too). No allocation, one
/// syscall: the dashboard asks this of every process each refresh.
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Read a small /proc file of `pid` (e.g. "statm") into `buf` without
/// allocating; returns the bytes read.
pub fn read_small<'a>(pid: u32, file: &str, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    use std::io::{Read as _, Write as _};
    let mut path = [0u8; 64];
    let mut w = &mut path[..];
    write!(w, "/proc/{pid}/{file}").ok()?;
    let len = 64 - w.len();
    let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path[..len]);
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(buf).ok()?;
    Some(&buf[..n])
}

/// The process (thread group) and parent process of thread `tid`, from
/// `/proc/TID/status`.
pub fn tgid_ppid(tid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("Tgid:")?, field("PPid:")?))
}

/// Whether any thread of `pid` is still running (not a zombie): the leader
/// may have exited while other threads go on.
pub fn has_live_threads(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                // The state follows the parenthesised command name.
                let after = &s[s.rfind(')')? + 1..];
                after.split_whitespace().next().map(str::to_string)
            })
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/leaky
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/leaky
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 
7f1000026000-7f100017b000 r-xp 00026000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 fe:01 789 /tmp/with space/lib.so (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn parses_executable_file_mappings_only() {
        let s = Snapshot::parse(MAPS);
        let paths: Vec<_> = s.paths().collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/leaky",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/with space/lib.so"
            ]
        );
    }

    #[test]
    fn lookup_gives_file_offsets() {
        let s = Snapshot::parse(MAPS);
        let a = s.lookup(0x55d0c0a01234).unwrap();
        assert_eq!((&*a.path, a.file_offset), ("/usr/bin/leaky", 0x1234));
        let b = s.lookup(0x7f1000026010).unwrap();
        assert_eq!(b.file_offset, 0x26010);
        assert_eq!(s.lookup(0x7f0000000010), None);
        assert_eq!(s.lookup(0x55d0c0a02000), None);
        assert_eq!(s.lookup(0), None);
        assert_eq!(
            &*s.lookup(0x7f2000000001).unwrap().path,
            "/tmp/with space/lib.so"
        );
    }
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn alive_and_small_reads() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(!alive(4_194_304 + 1));
        let mut buf = [0u8; 128];
        let statm = read_small(me, "statm", &mut buf).expect("own statm");
        assert!(statm.split(|&b| b == b' ').count() >= 2);
        assert!(read_small(me, "no-such-file", &mut buf).is_none());
    }
}
