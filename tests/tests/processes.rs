//! Threads, fork, exec and short-lived processes (privileged).

use memtrace_tests::{scenario_test, scenarios};

scenario_test!(threads_leak_concurrently, scenarios::THREADS);

scenario_test!(threads_leader_exits_first, scenarios::THREADS_LEADER_EXIT);

scenario_test!(fork_child_is_not_counted, scenarios::FORK);

scenario_test!(exec_reports_only_the_final_image, scenarios::EXEC);

scenario_test!(exec_from_a_thread, scenarios::EXEC_FROM_THREAD);

scenario_test!(exec_of_a_system_binary, scenarios::EXEC_TRUE);

scenario_test!(quick_exit_by_return, scenarios::QUICK);

scenario_test!(quick_exit_by_underscore_exit, scenarios::QUICK_EXIT);

scenario_test!(signals_are_all_delivered, scenarios::SIGNALS);

/// How the command ended is in the report: its exit status, or the signal
/// that killed it (a process dying mid-trace still gets its report, and
/// memtrace itself succeeds).
#[test]
fn the_commands_end_is_reported() {
    use memtrace_tests::{require_ebpf, serial, trace_cmd};
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let sh = std::path::Path::new("/bin/sh");
    for (script, code, signal) in [
        ("exit 0", Some(0), None),
        ("exit 7", Some(7), None),
        ("kill -SEGV $$", None, Some("SIGSEGV")),
        ("kill -KILL $$", None, Some("SIGKILL")),
    ] {
        let t = trace_cmd(&[], sh, &["-c".into(), script.into()]);
        let r = &t.report;
        assert!(r.exited(), "{script}");
        assert_eq!(r.json["exit_code"].as_i64(), code, "{script}");
        assert_eq!(r.json["exit_signal"].as_str(), signal, "{script}");
    }
}
