//! Allocations the C library makes on the program's behalf (strdup,
//! asprintf, realpath, a stream's buffer) are attributed to the program's
//! function that called it, found through glibc's unwind tables: glibc
//! keeps no frame pointer, and the frame-pointer walk alone stopped at the
//! library function.

use std::os::unix::fs::MetadataExt as _;

use memtrace_tests::{
    report::{Report, frame_names, stack_allocs, stack_bytes},
    require_ebpf, serial, trace_cmd, workload,
};

/// The heap stacks in which `func` is a frame: (outstanding bytes, blocks,
/// frame names).
fn stacks_of(r: &Report, func: &str) -> Vec<(u64, u64, Vec<String>)> {
    r.stacks()
        .iter()
        .filter(|s| s["kind"] == "heap")
        .map(|s| (stack_bytes(s), stack_allocs(s), frame_names(s)))
        .filter(|(_, _, names)| names.iter().any(|n| n == func))
        .collect()
}

#[test]
fn library_allocations_reach_their_callers() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let t = trace_cmd(&[], &workload("libc_callers"), &[]);
    for (func, bytes, via) in [
        ("leak_strdup", 27u64, &["strdup"][..]),
        ("leak_strndup", 5, &["strndup"]),
        ("leak_asprintf", 11, &["vasprintf", "asprintf"]),
        ("leak_realpath", 2, &["strdup", "realpath"]),
    ] {
        let found = stacks_of(&t.report, func);
        assert_eq!(found.len(), 1, "{func}: {found:?}\n{}", t.report.describe());
        let (got, _, names) = &found[0];
        let at = names.iter().position(|n| n == func).unwrap_or(0);
        // The frames above the program's function are the library's, in
        // calling order, and then main called it.
        assert_eq!(at, via.len(), "{func}: {names:?}");
        for (n, v) in names.iter().zip(via.iter()) {
            assert!(n.contains(v), "{func}: {names:?}, expected {via:?} first");
        }
        assert_eq!(
            names.get(at + 1).map(String::as_str),
            Some("main"),
            "{func}: {names:?}"
        );
        assert_eq!(*got, bytes, "{func}: {names:?}");
    }

    // A stream's buffer: glibc reaches malloc through two calls by the
    // stream's table of functions (to write or read, and to allocate the
    // buffer), each a call through memory. Its size: BUFSIZ (8192), or the
    // file's st_blksize when smaller.
    for (func, path, entry) in [
        ("leak_stream_written", "/dev/null", "fprintf"),
        ("leak_stream_read", "/dev/zero", "fgets"),
    ] {
        let blksize = std::fs::metadata(path).map(|m| m.blksize()).unwrap_or(0);
        let want = if blksize > 0 && blksize < 8192 {
            blksize
        } else {
            8192
        };
        let found = stacks_of(&t.report, func);
        assert_eq!(found.len(), 1, "{func}: {found:?}\n{}", t.report.describe());
        let (bytes, blocks, names) = &found[0];
        assert_eq!((*bytes, *blocks), (want, 1), "{func}: {names:?}");
        let at = names.iter().position(|n| n == func).unwrap_or(0);
        assert!(
            at >= 4 && names[0].contains("doallocate") && names[at - 1].contains(entry),
            "{func}: {names:?}, expected the stream's doallocate first and {entry} last"
        );
        assert_eq!(names.get(at + 1).map(String::as_str), Some("main"));
    }
    // The streams themselves: one FILE each, from fopen.
    let files = stacks_of(&t.report, "open_stream");
    assert_eq!(files.len(), 2, "{files:?}");
    for (bytes, blocks, names) in &files {
        assert!(*bytes > 0 && *blocks == 1, "{names:?}");
        assert!(names[0].contains("fopen"), "{names:?}");
    }
}
