//! Allocations the C library makes on the program's behalf (strdup,
//! asprintf, realpath) are attributed to the program's function that called
//! it, found through glibc's unwind tables: glibc keeps no frame pointer,
//! and the frame-pointer walk alone stopped at the library function.

use memtrace_tests::{require_ebpf, serial, trace_cmd, workload};

#[test]
fn library_allocations_reach_their_callers() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let t = trace_cmd(&[], &workload("libc_callers"), &[]);
    let stacks = t.report.json["stacks"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or_default();
    for (func, bytes, via) in [
        ("leak_strdup", 27u64, &["strdup"][..]),
        ("leak_strndup", 5, &["strndup"]),
        ("leak_asprintf", 11, &["vasprintf", "asprintf"]),
        ("leak_realpath", 2, &["strdup", "realpath"]),
    ] {
        let mut found = Vec::new();
        for s in stacks.iter().filter(|s| s["kind"] == "heap") {
            let names: Vec<&str> = s["frames"]
                .as_array()
                .map(|v| v.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("?"))
                .collect();
            let Some(at) = names.iter().position(|n| *n == func) else {
                continue;
            };
            found.push((s["outstanding_bytes"].as_u64(), names[..at].join(" < ")));
            // The frames above the program's function are the library's,
            // in calling order, and then main called it.
            assert_eq!(at, via.len(), "{func}: {names:?}");
            for (n, v) in names.iter().zip(via.iter()) {
                assert!(n.contains(v), "{func}: {names:?}, expected {via:?} first");
            }
            assert_eq!(
                names.get(at + 1).copied(),
                Some("main"),
                "{func}: {names:?}"
            );
        }
        assert_eq!(found.len(), 1, "{func}: {found:?}\n{}", t.report.describe());
        assert_eq!(found[0].0, Some(bytes), "{func}: {found:?}");
    }
}
