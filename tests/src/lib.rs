//! Test harness of memtrace's integration tests.
//!
//! * [`workload`] compiles a C/C++ workload from `tests/workloads/` (once
//!   per content hash, into `<target>/<profile>/memtrace-workloads/`).
//! * [`memtrace_bin`] finds the binary under test: `$MEMTRACE_BIN`, else
//!   `<workspace>/target/release/memtrace`, else `target/debug/memtrace`
//!   (then the same under `$CARGO_TARGET_DIR`).
//! * [`require_ebpf`] gates the privileged tests: outside CI it prints
//!   `skipped: <reason>` and returns false when eBPF cannot be used (not
//!   root / no CAP_BPF+CAP_PERFMON, or no memtrace binary); with `CI` set it
//!   panics instead, so a CI run can never silently skip them.
//! * [`run_scenario`] traces a workload with
//!   `memtrace report --format json -o <tmp> -- <workload> [args]` and
//!   checks the report against the scenario's exact ground truth
//!   ([`scenarios`]).
//! * `MEMTRACE_TESTS_SKIP_EBPF=1` skips every test that runs memtrace
//!   (outside CI), e.g. while the binary is still a stub.
//! * [`serial`] serializes the tests that run memtrace (they attach
//!   uprobes); `cargo xtask` may also run them with `--test-threads=1`.

pub mod check;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod valgrind;

pub use check::*;
pub use report::*;
pub use run::*;
pub use scenarios::{Expect, Image, Scenario};

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// `tests/` (this crate's directory).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    crate_dir()
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/workloads/`.
pub fn workloads_src_dir() -> PathBuf {
    crate_dir().join("workloads")
}

/// True when running in CI (`CI` set to anything but "", "0" or "false").
pub fn is_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// The memtrace binary under test, if one exists. Panics when
/// `MEMTRACE_BIN` is set but does not name a file.
pub fn memtrace_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEMTRACE_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "MEMTRACE_BIN={} is not a file", p.display());
        return Some(p);
    }
    let mut candidates = vec![
        workspace_root().join("target/release/memtrace"),
        workspace_root().join("target/debug/memtrace"),
    ];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        let t = PathBuf::from(t);
        candidates.push(t.join("release/memtrace"));
        candidates.push(t.join("debug/memtrace"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Set to skip every test that runs memtrace (e.g. while the binary is a
/// stub); ignored, i.e. a failure, in CI.
pub const SKIP_ENV: &str = "MEMTRACE_TESTS_SKIP_EBPF";

fn skip_requested() -> bool {
    std::env::var_os(SKIP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

fn skip_or_fail(reason: &str) -> bool {
    if is_ci() {
        panic!("CI is set but this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Why eBPF tracing cannot work in this process, if it cannot.
pub fn ebpf_unavailable_reason() -> Option<String> {
    if skip_requested() {
        return Some(format!("{SKIP_ENV} is set"));
    }
    if memtrace_bin().is_none() {
        return Some(
            "no memtrace binary (build target/release/memtrace or set MEMTRACE_BIN)".into(),
        );
    }
    if !has_bpf_privileges() {
        return Some("eBPF needs root (or CAP_BPF + CAP_PERFMON); run the tests as root".into());
    }
    None
}

/// Gate of the privileged tests: true when memtrace can trace here. When it
/// cannot: prints `skipped: <reason>` and returns false, or panics in CI.
pub fn require_ebpf() -> bool {
    match ebpf_unavailable_reason() {
        None => true,
        Some(reason) => skip_or_fail(&reason),
    }
}

/// Gate of the tests that only need the binary (CLI errors): the binary,
/// or None after printing `skipped: ...` (panics in CI).
pub fn require_memtrace() -> Option<PathBuf> {
    if skip_requested() {
        skip_or_fail(&format!("{SKIP_ENV} is set"));
        return None;
    }
    match memtrace_bin() {
        Some(p) => Some(p),
        None => {
            skip_or_fail("no memtrace binary (build target/release/memtrace or set MEMTRACE_BIN)");
            None
        }
    }
}

/// The memtrace binary; panics if there is none (call a gate first).
pub fn bin() -> PathBuf {
    memtrace_bin().expect("no memtrace binary (gate the test with require_ebpf/require_memtrace)")
}

/// Effective capability set of this process.
fn cap_eff() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON.
pub fn has_bpf_privileges() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = cap_eff();
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Lock held by every test that runs memtrace: one tracer at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The workloads assume 4 KiB pages (the ground truth is in bytes).
pub fn check_page_size() {
    // SAFETY: sysconf has no preconditions.
    let pg = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert_eq!(pg, 4096, "the mmap ground truth assumes 4096-byte pages");
}

// ------------------------------------------------------------ workloads

/// Flags of every workload (C and C++).
pub const WORKLOAD_CFLAGS: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-inline",
    "-fno-optimize-sibling-calls",
    "-pthread",
    "-Wall",
];

/// Flags of the Rust workloads: cargo's release build, which keeps no
/// frame pointers.
pub const WORKLOAD_RUSTFLAGS: &[&str] = &[
    "--edition",
    "2021",
    "-O",
    "-g",
    "-C",
    "force-frame-pointers=no",
];

fn build_root() -> PathBuf {
    if let Some(d) = std::env::var_os("MEMTRACE_WORKLOADS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // <target>/<profile>/deps/<test binary> -> <target>/<profile>/memtrace-workloads
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .map(|profile| profile.join("memtrace-workloads"))
        .unwrap_or_else(|| std::env::temp_dir().join("memtrace-workloads"))
}

/// Source file of workload `name` (`.c`, `.cpp` or `.rs`).
pub fn workload_source(name: &str) -> PathBuf {
    let dir = workloads_src_dir();
    for ext in ["c", "cpp", "rs"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return p;
        }
    }
    panic!("no workload source tests/workloads/{name}.c, .cpp or .rs");
}

/// Compile workload `name` (cached by content hash of its source,
/// common.h, compiler and flags) and return the binary's absolute,
/// canonical path. The binary is named `name`, so its comm is `name`.
pub fn workload(name: &str) -> PathBuf {
    workload_with(name, None, &[])
}

/// [`workload`] built with another compiler (e.g. `musl-gcc`) and/or extra
/// flags (e.g. `-static`), cached apart. Panics if the compiler is missing.
pub fn workload_with(name: &str, compiler: Option<&str>, extra: &[&str]) -> PathBuf {
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());

    let src = workload_source(name);
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (var, default, flags): (&str, &str, Vec<&str>) = match ext {
        "rs" => ("RUSTC", "rustc", WORKLOAD_RUSTFLAGS.to_vec()),
        "cpp" => ("CXX", "c++", [&["-std=gnu++17"], WORKLOAD_CFLAGS].concat()),
        _ => ("CC", "cc", [&["-std=gnu11"], WORKLOAD_CFLAGS].concat()),
    };
    let compiler: OsString = match compiler {
        Some(c) => c.into(),
        None => std::env::var_os(var)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| default.into()),
    };

    let mut h = DefaultHasher::new();
    compiler.hash(&mut h);
    flags.hash(&mut h);
    extra.hash(&mut h);
    std::fs::read(&src)
        .expect("read workload source")
        .hash(&mut h);
    std::fs::read(workloads_src_dir().join("common.h"))
        .expect("read common.h")
        .hash(&mut h);
    let dir = build_root().join(format!("{:016x}", h.finish()));
    let out = dir.join(name);
    if out.is_file() {
        return out.canonicalize().expect("canonicalize workload");
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = Command::new(&compiler)
        .args(&flags)
        .args(extra)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run compiler {compiler:?}: {e}"));
    if !res.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "compiling {} failed ({}):\n{}",
            src.display(),
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
    }
    std::fs::rename(&tmp, &out).expect("rename compiled workload");
    out.canonicalize().expect("canonicalize workload")
}

/// Resolve a scenario argument: `@name` is the path of workload `name`.
pub fn resolve_arg(a: &str) -> OsString {
    match a.strip_prefix('@') {
        Some(w) => workload(w).into_os_string(),
        None => a.into(),
    }
}

/// The canonical path of the image a scenario ends in.
pub fn final_image_path(s: &Scenario) -> PathBuf {
    match s.image {
        Image::Workload => workload(s.workload),
        Image::OtherWorkload(w) => workload(w),
        Image::Path(p) => std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p)),
    }
}

/// The comm the kernel gives `path`: its file name, truncated to 15 bytes.
pub fn comm_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= 15).then_some(c)
        })
        .collect()
}

// -------------------------------------------------------------- tempdir

/// A fresh directory (mode 0755), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: OnceLock<Mutex<u64>> = OnceLock::new();
        let n = {
            let mut s = SEQ
                .get_or_init(|| Mutex::new(0))
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *s += 1;
            *s
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "memtrace-test-{tag}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `scenario_test!(name, scenarios::X)`: a privileged test tracing scenario
/// X and asserting its exact ground truth. An optional closure gets the
/// [`Traced`] result for further assertions.
#[macro_export]
macro_rules! scenario_test {
    ($name:ident, $scenario:expr) => {
        $crate::scenario_test!($name, $scenario, |_t: &$crate::Traced| {});
    };
    ($name:ident, $scenario:expr, $extra:expr) => {
        #[test]
        fn $name() {
            if !$crate::require_ebpf() {
                return;
            }
            let _serial = $crate::serial();
            let traced = $crate::run_scenario(&$scenario);
            let extra: &dyn Fn(&$crate::Traced) = &$extra;
            extra(&traced);
        }
    };
}
