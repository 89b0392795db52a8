//! Discovering the allocators a process really uses, from its memory map.
//!
//! Every executable file mapping is a candidate: glibc at any path, musl's
//! `ld-musl-*.so.1`, a static executable (malloc in its `.symtab`),
//! jemalloc (plain or `je_` names), tcmalloc (`tc_` names, its own
//! operator new/delete), mimalloc (`mi_` names), a container's own libc.
//! Each distinct file (device + inode) is parsed once and attached once.
//!
//! Files are opened through `/proc/PID/map_files/<range>`, which names the
//! exact mapped inode (even a deleted one), or else by the mapped path
//! resolved with `openat2(RESOLVE_IN_ROOT)` inside `/proc/PID/root`, so a
//! symlink inside a container never leads outside its root; the opened
//! file must be the mapped inode. Probes are attached through
//! `/proc/self/fd/N` of that open file: the kernel resolves it to the same
//! inode.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs::File,
    io,
    num::NonZeroU32,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use memtrace_common::func;

use super::{CXX, Links, Loaded, Planned, ProbeSpec, Scope, elf::ElfSyms, spec};

/// The malloc family, under every name an allocator exports it.
pub const MALLOC_FAMILY: &[ProbeSpec] = &[
    spec(
        &["malloc", "je_malloc", "tc_malloc", "mi_malloc"],
        func::MALLOC,
        true,
    ),
    spec(
        &["calloc", "je_calloc", "tc_calloc", "mi_calloc"],
        func::CALLOC,
        true,
    ),
    spec(
        &["realloc", "je_realloc", "tc_realloc", "mi_realloc"],
        func::REALLOC,
        true,
    ),
    spec(
        &["free", "je_free", "tc_free", "mi_free"],
        func::FREE,
        false,
    ),
    spec(
        &[
            "posix_memalign",
            "je_posix_memalign",
            "tc_posix_memalign",
            "mi_posix_memalign",
        ],
        func::POSIX_MEMALIGN,
        true,
    ),
    spec(
        &["aligned_alloc", "je_aligned_alloc"],
        func::ALIGNED_ALLOC,
        true,
    ),
    spec(
        &["memalign", "je_memalign", "tc_memalign", "mi_memalign"],
        func::MEMALIGN,
        true,
    ),
    spec(
        &["valloc", "je_valloc", "tc_valloc", "mi_valloc"],
        func::VALLOC,
        true,
    ),
    spec(
        &["pvalloc", "tc_pvalloc", "mi_pvalloc"],
        func::PVALLOC,
        true,
    ),
    spec(&["mmap64", "mmap"], func::MMAP, true),
    spec(&["munmap"], func::MUNMAP, false),
    spec(&["mremap"], func::MREMAP, true),
];

/// operator new and delete of an object that is itself an allocator
/// (jemalloc, tcmalloc, mimalloc): they are its own code, not calls to
/// malloc, so they are probed as allocation and release functions (an
/// alias of malloc or free is probed once). A delete that is a bare jump
/// (to `free@plt`) is left to the function it jumps to.
pub const OWN_NEW_DELETE: &[ProbeSpec] = &[
    spec(&["_Znwm", "tc_new"], func::MALLOC, true),
    spec(&["_Znam", "tc_newarray"], func::MALLOC, true),
    spec(&["_ZnwmRKSt9nothrow_t"], func::MALLOC, true),
    spec(&["_ZnamRKSt9nothrow_t"], func::MALLOC, true),
    spec(&["_ZnwmSt11align_val_t"], func::MALLOC, true),
    spec(&["_ZnamSt11align_val_t"], func::MALLOC, true),
    spec(&["_ZnwmSt11align_val_tRKSt9nothrow_t"], func::MALLOC, true),
    spec(&["_ZnamSt11align_val_tRKSt9nothrow_t"], func::MALLOC, true),
    spec(&["_ZdlPv", "tc_delete"], func::FREE, false),
    spec(&["_ZdaPv", "tc_deletearray"], func::FREE, false),
    spec(&["_ZdlPvm"], func::FREE, false),
    spec(&["_ZdaPvm"], func::FREE, false),
    spec(&["_ZdlPvRKSt9nothrow_t"], func::FREE, false),
    spec(&["_ZdaPvRKSt9nothrow_t"], func::FREE, false),
    spec(&["_ZdlPvSt11align_val_t"], func::FREE, false),
    spec(&["_ZdaPvSt11align_val_t"], func::FREE, false),
    spec(&["_ZdlPvmSt11align_val_t"], func::FREE, false),
    spec(&["_ZdaPvmSt11align_val_t"], func::FREE, false),
    spec(&["_ZdlPvSt11align_val_tRKSt9nothrow_t"], func::FREE, false),
    spec(&["_ZdaPvSt11align_val_tRKSt9nothrow_t"], func::FREE, false),
];

/// The dynamic loader's debugger hook (glibc's ld.so, musl's libc).
const LOADER_HOOK: &str = "_dl_debug_state";

/// A mapped file: device and inode as the process's map shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// One executable file mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub start: u64,
    pub end: u64,
    pub id: FileId,
    /// The path as the process sees it (inside its own root).
    pub path: String,
}

/// Parse a maps line into an executable file mapping.
fn parse_line(line: &str) -> Option<Mapped> {
    let mut it = line.split_ascii_whitespace();
    let range = it.next()?;
    let perms = it.next()?;
    let _offset = it.next()?;
    let dev = it.next()?;
    let ino: u64 = it.next()?.parse().ok()?;
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)
        .map(str::trim)?;
    if !perms.contains('x') || ino == 0 || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let dev = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let (s, e) = range.split_once('-')?;
    Some(Mapped {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        id: FileId { dev, ino },
        path: path.strip_suffix(" (deleted)").unwrap_or(path).to_string(),
    })
}

/// The distinct executable files mapped by `pid` (first mapping of each).
pub fn mapped_files(pid: u32) -> io::Result<Vec<Mapped>> {
    let text = crate::procmaps::read_maps(pid)?;
    Ok(parse_maps(&text))
}

fn parse_maps(text: &str) -> Vec<Mapped> {
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(parse_line)
        .filter(|m| seen.insert(m.id))
        .collect()
}

/// Open the file behind mapping `m` of `pid` without leaving its root.
pub fn open_mapped(pid: u32, m: &Mapped) -> io::Result<File> {
    let via_map_files = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = match File::open(&via_map_files) {
        Ok(f) => f,
        Err(_) => open_in_root(pid, &m.path)?,
    };
    let meta = file.metadata()?;
    if meta.ino() != m.id.ino || meta.dev() != m.id.dev {
        return Err(io::Error::other(format!(
            "{} is no longer the mapped file",
            m.path
        )));
    }
    Ok(file)
}

/// `openat2(/proc/PID/root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn open_in_root(pid: u32, path: &str) -> io::Result<File> {
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let root = File::open(format!("/proc/{pid}/root"))?;
    let cpath = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid dirfd, NUL-terminated path and an open_how of the size
    // passed; the kernel only reads them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            cpath.as_ptr(),
            &raw const how,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// A read-only private mapping of a whole file (libraries can be large:
/// only the pages the ELF parser touches are read).
struct FileMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl FileMap {
    fn new(file: &File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        // SAFETY: a fresh private read-only mapping of an open file; no
        // Rust object aliases it. A file truncated meanwhile faults (SIGBUS)
        // only if read past its end, which the ELF parser's bounds checks
        // against the length at open make unlikely; library files are
        // replaced by rename, not truncated in place.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// What one file holds for memtrace.
enum Verdict {
    /// Allocator entry points (malloc family, maybe its own new/delete).
    Allocator(Vec<Planned>),
    /// A C++ runtime whose operator new calls malloc.
    CxxRuntime(Vec<Planned>),
    /// Nothing to probe.
    Nothing,
}

struct Examined {
    verdict: Verdict,
    /// File offset of the loader hook, if the file has one.
    loader_hook: Option<u64>,
}

/// Parse `data` (the file `label`) and decide what to probe in it.
fn examine(data: &[u8], label: &str) -> Result<Examined> {
    let mut names = super::symbol_names(MALLOC_FAMILY.iter().chain(OWN_NEW_DELETE).chain(CXX));
    names.push(LOADER_HOOK);
    let elf = ElfSyms::parse(data, &names, label)?;
    let loader_hook = elf.get(LOADER_HOOK).map(|s| s.file_offset);
    let has_any = |names: &[&str]| names.iter().any(|n| elf.get(n).is_some());
    let verdict = if has_any(MALLOC_FAMILY[0].symbols) {
        if !has_any(MALLOC_FAMILY[3].symbols) {
            anyhow::bail!("{label} has malloc but no free: not traced");
        }
        let (mut planned, _) = super::plan_syms(&elf, MALLOC_FAMILY.iter().chain(OWN_NEW_DELETE));
        // A delete that only jumps elsewhere (free@plt) is seen there.
        planned.retain(|p| {
            !(p.symbol.starts_with("_Zd")
                && elf
                    .get(p.symbol)
                    .is_some_and(|s| matches!(elf.code(s, 1), [0xe9 | 0xeb])))
        });
        Verdict::Allocator(planned)
    } else if has_any(CXX[0].symbols) {
        Verdict::CxxRuntime(super::plan_syms(&elf, CXX).0)
    } else if !elf.has_dynsym && !elf.has_symtab {
        anyhow::bail!(
            "{label} is statically linked without a symbol table: its allocator cannot be traced"
        );
    } else {
        Verdict::Nothing
    };
    Ok(Examined {
        verdict,
        loader_hook,
    })
}

/// What is known and attached, across scans.
#[derive(Default)]
pub struct Discovery {
    /// Files examined (by identity): their verdict, or None if they could
    /// not be read.
    examined: HashMap<FileId, Option<Examined>>,
    attached: HashSet<FileId>,
    loader_attached: HashSet<FileId>,
    /// One line per object that could not be traced.
    pub notes: Vec<String>,
    /// Objects attached, as `path (what)`, in order.
    pub found: Vec<String>,
}

impl Discovery {
    /// Forget what was attached (after the links were detached).
    pub fn forget_links(&mut self) {
        self.attached.clear();
        self.loader_attached.clear();
    }

    /// Record that the file at `path` was attached by other means.
    pub fn mark_attached(&mut self, path: &std::path::Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.attached.insert(FileId {
                dev: m.dev(),
                ino: m.ino(),
            });
        }
    }

    /// Whether any allocator is attached.
    pub fn has_allocator(&self) -> bool {
        self.attached.iter().any(|id| {
            matches!(
                self.examined.get(id),
                Some(Some(Examined {
                    verdict: Verdict::Allocator(_),
                    ..
                }))
            )
        })
    }

    /// Scan `pid`'s maps and attach, for `scope`, every allocator object
    /// not attached yet; with `loader`, also stop `pid` at its dynamic
    /// loader's hook. Objects that fail are named once in `notes`. Returns
    /// how many objects were newly attached.
    pub fn scan(
        &mut self,
        loaded: &mut Loaded,
        pid: u32,
        scope: Scope,
        loader: Option<NonZeroU32>,
        links: &mut Links,
    ) -> io::Result<usize> {
        let mut n = 0;
        for m in mapped_files(pid)? {
            let done = |d: &Self| match d.examined.get(&m.id) {
                Some(None) => true,
                Some(Some(ex)) => {
                    let loader_due = loader.is_some()
                        && ex.loader_hook.is_some()
                        && !d.loader_attached.contains(&m.id);
                    d.attached.contains(&m.id) && !loader_due
                }
                None => false,
            };
            if done(self) {
                continue;
            }
            let Some(file) = self.open_examine(pid, &m) else {
                continue;
            };
            let Some(Some(ex)) = self.examined.get(&m.id) else {
                continue;
            };
            let hook = ex.loader_hook;
            let plan = match &ex.verdict {
                Verdict::Allocator(p) => Some((p.clone(), "allocator")),
                Verdict::CxxRuntime(p) => Some((p.clone(), "C++ runtime")),
                Verdict::Nothing => None,
            };
            let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            if let (Some(pid1), Some(off)) = (loader, hook)
                && !self.loader_attached.contains(&m.id)
            {
                match super::attach_loader(loaded, &fd_path, off, pid1, links) {
                    Ok(()) => {
                        self.loader_attached.insert(m.id);
                    }
                    Err(e) => {
                        self.loader_attached.insert(m.id);
                        self.note(format!("{}: {e:#}", m.path));
                    }
                }
            }
            if !self.attached.insert(m.id) {
                continue;
            }
            let Some((planned, what)) = plan else {
                continue;
            };
            if planned.is_empty() {
                continue;
            }
            let shown = fd_path.to_string_lossy().into_owned();
            let attached = super::attach(loaded, &fd_path, &planned, scope, links);
            for n in std::mem::take(&mut loaded.notes) {
                self.note(n.replace(&shown, &m.path));
            }
            match attached {
                Ok(()) => {
                    n += 1;
                    let entry = format!("{} ({what})", m.path);
                    if !self.found.contains(&entry) {
                        self.found.push(entry);
                    }
                }
                Err(e) => self.note(format!("{e:#}").replace(&shown, &m.path)),
            }
        }
        Ok(n)
    }

    /// Open and (once per file) examine mapping `m`; None if unreadable.
    fn open_examine(&mut self, pid: u32, m: &Mapped) -> Option<File> {
        let file = match open_mapped(pid, m) {
            Ok(f) => f,
            Err(e) => {
                // A process that exited or unmapped it meanwhile says nothing.
                if crate::procmaps::alive(pid) {
                    self.note(format!("cannot open {} of PID {pid}: {e}", m.path));
                    self.examined.insert(m.id, None);
                }
                return None;
            }
        };
        if !self.examined.contains_key(&m.id) {
            let ex = FileMap::new(&file)
                .with_context(|| format!("reading {}", m.path))
                .and_then(|map| examine(map.bytes(), &m.path));
            match ex {
                Ok(ex) => {
                    self.examined.insert(m.id, Some(ex));
                }
                Err(e) => {
                    self.note(format!("{e:#}"));
                    self.examined.insert(m.id, None);
                }
            }
        }
        Some(file)
    }

    /// A note for the user, once.
    pub fn note(&mut self, line: String) {
        if !self.notes.contains(&line) {
            self.notes.push(line);
        }
    }
}

/// The identities of `pid`'s executable file mappings: compare two of
/// these to notice new objects (dlopen) cheaply.
pub fn signature(pid: u32) -> io::Result<HashSet<FileId>> {
    Ok(mapped_files(pid)?.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_with_identity() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/leaky
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/leaky
7f1000026000-7f100017b000 r-xp 00026000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1000226000-7f100027b000 r-xp 00026000 00:2a 456 /copy/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 fe:01 789 /tmp/with space/lib.so (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let m = parse_maps(text);
        let v: Vec<(&str, u64, u64)> = m.iter().map(|m| (&*m.path, m.id.dev, m.id.ino)).collect();
        assert_eq!(
            v,
            [
                ("/usr/bin/leaky", libc::makedev(0xfe, 1), 123),
                (
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    libc::makedev(0xfe, 1),
                    456
                ),
                ("/copy/libc.so.6", libc::makedev(0, 0x2a), 456),
                ("/tmp/with space/lib.so", libc::makedev(0xfe, 1), 789),
            ]
        );
        assert_eq!(m[0].start, 0x55d0c0a01000);
    }

    #[test]
    fn host_libc_is_an_allocator() {
        let libc = crate::probes::host_libc().unwrap();
        let ex = examine(&std::fs::read(&libc).unwrap(), "libc").unwrap();
        let Verdict::Allocator(p) = ex.verdict else {
            panic!("libc is not an allocator");
        };
        assert!(p.iter().any(|p| p.symbol == "malloc"));
        assert!(p.iter().any(|p| p.symbol == "free"));
    }

    #[test]
    fn own_maps_are_readable_and_safe() {
        let me = std::process::id();
        let files = mapped_files(me).unwrap();
        assert!(!files.is_empty());
        for m in &files {
            let f = open_in_root(me, &m.path).unwrap();
            assert_eq!(f.metadata().unwrap().ino(), m.id.ino);
        }
    }
}
