//! One million malloc/free pairs, ten leaks (privileged).

use memtrace_tests::{Traced, scenario_test, scenarios};

scenario_test!(million_pairs_ten_leaks, scenarios::MILLION, |t: &Traced| {
    // The totals count every call seen (at least the workload's own).
    let allocs = t.report.summary("allocations");
    let frees = t.report.summary("frees");
    let bytes = t.report.summary("allocated_bytes");
    assert!(
        allocs >= 1_000_010,
        "summary.allocations = {allocs}, expected >= 1000010"
    );
    assert!(
        frees >= 1_000_000,
        "summary.frees = {frees}, expected >= 1000000"
    );
    // sum over i of 16 + i % 512, plus 10 x 777
    let churn: u64 = (0..1_000_000u64).map(|i| 16 + i % 512).sum();
    assert!(
        bytes >= churn + 7770,
        "summary.allocated_bytes = {bytes}, expected >= {}",
        churn + 7770
    );
});
