//! C++ operator new / new[] (privileged).

use memtrace_tests::{scenario_test, scenarios};

scenario_test!(cxx_new_and_new_array, scenarios::CXX);
