//! The user stack walk: deep recursion over many pages, and the cut at 64
//! frames (privileged).

use memtrace_tests::{Traced, scenario_test, scenarios};

/// The functions of the stack of `leaf`, innermost first, and the report's
/// count of cut stacks.
fn stack_of(t: &Traced, leaf: &str) -> (Vec<String>, u64) {
    let stacks = t.report.json["stacks"].as_array().expect("stacks");
    let s = stacks
        .iter()
        .find(|s| s["frames"][0]["function"].as_str() == Some(leaf))
        .unwrap_or_else(|| panic!("no stack of {leaf}:\n{}", t.report.describe()));
    let funcs = s["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect();
    let cut = t.report.json["summary"]["stack_failures"]
        .as_u64()
        .unwrap_or(u64::MAX);
    (funcs, cut)
}

fn count(funcs: &[String], name: &str) -> usize {
    funcs.iter().filter(|f| f.as_str() == name).count()
}

scenario_test!(deep_stack_is_whole, scenarios::DEEP, |t: &Traced| {
    let (funcs, cut) = stack_of(t, "leak_deep");
    // leak_deep, 31 calls of recurse (levels 30..0), main.
    assert_eq!(count(&funcs, "recurse"), 31, "{funcs:?}");
    assert!(funcs.iter().any(|f| f == "main"), "{funcs:?}");
    assert_eq!(cut, 0, "no stack should be cut");
});

scenario_test!(
    deeper_stack_is_cut_at_64,
    scenarios::DEEPER,
    |t: &Traced| {
        let (funcs, cut) = stack_of(t, "leak_deep");
        assert_eq!(funcs.len(), 64, "{funcs:?}");
        assert_eq!(count(&funcs, "recurse"), 63, "{funcs:?}");
        assert_eq!(cut, 1, "the one cut stack is counted");
    }
);
