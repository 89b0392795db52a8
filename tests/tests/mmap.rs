//! Anonymous mmap regions (privileged).

use memtrace_tests::{scenario_test, scenarios};

scenario_test!(mmap_whole_regions, scenarios::MMAP_BASIC);

scenario_test!(mmap_partial_munmap, scenarios::MMAP_PARTIAL);

scenario_test!(mmap_mremap, scenarios::MMAP_MREMAP);

scenario_test!(mmap_fixed_overlay, scenarios::MMAP_FIXED);
