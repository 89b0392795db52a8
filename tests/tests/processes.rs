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
