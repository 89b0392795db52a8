//! Deterministic snapshots and details for the dashboard's tests.

use std::time::Duration;

use crate::dashboard::model::{
    Detail, FrameView, Header, Percentiles, Row, RowKey, Snapshot, StackView,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub fn key(pid: u32) -> RowKey {
    RowKey {
        pid,
        first_ns: u64::from(pid) * 1000,
    }
}

/// A row with only an identity: every figure zero.
pub fn row(pid: u32, comm: &str) -> Row {
    Row {
        key: key(pid),
        pid,
        comm: comm.into(),
        rss_bytes: None,
        outstanding_bytes: 0,
        outstanding_allocations: 0,
        growth_bytes_per_s: 0.0,
        oldest_age: None,
        allocs_per_s: 0.0,
        frees_per_s: 0.0,
        leak_score: 0.0,
        exited: false,
    }
}

#[allow(clippy::too_many_arguments)]
fn full(
    pid: u32,
    comm: &str,
    rss: Option<u64>,
    bytes: u64,
    allocs: u64,
    growth: f64,
    oldest_s: u64,
    rates: (f64, f64),
    score: f64,
) -> Row {
    Row {
        rss_bytes: rss,
        outstanding_bytes: bytes,
        outstanding_allocations: allocs,
        growth_bytes_per_s: growth,
        oldest_age: Some(Duration::from_secs(oldest_s)),
        allocs_per_s: rates.0,
        frees_per_s: rates.1,
        leak_score: score,
        ..row(pid, comm)
    }
}

/// A host with a clear leaker, big static processes, churners, an exited
/// process and a NaN growth, in no particular order.
#[rustfmt::skip]
pub fn snapshot() -> Snapshot {
    let rows = vec![
        full(1337, "postgres", Some(GIB + 100 * MIB), 310 * MIB, 52_000, 0.0, 3 * 3600 + 60, (890.0, 889.0), 90_300.0),
        full(4242, "leaky-server", Some(210 * MIB), 48 * MIB + 200 * KIB, 120_340, 1_310_720.0, 725, (5_120.0, 1_830.0), 1_290_000.0),
        full(2718, "python3", Some(88 * MIB), 12 * MIB + 512 * KIB, 40_100, 20_480.0, 95, (12_400.0, 12_350.0), 15_300.0),
        full(31415, "nginx", Some(24 * MIB), 3 * MIB + 100 * KIB, 2_100, -512.0, 2 * 3600 + 10, (44.0, 46.0), 903.0),
        Row { exited: true, rss_bytes: None, ..full(777, "cron-job", None, MIB, 17, 0.0, 40, (0.0, 0.0), 0.0) },
        full(65001, "chromium-browse", Some(640 * MIB), 96 * MIB, 410_000, 4_096.0, 25 * 60, (98_000.0, 97_900.0), 30_500.0),
        full(1, "systemd", Some(12 * MIB), 256 * KIB, 310, 0.0, 2 * 86_400 + 100, (1.5, 1.5), 72.0),
        full(4_194_303, "rust-analyzer", Some(2 * GIB + 300 * MIB), GIB + 400 * MIB, 2_900_000, 350_000.0, 45 * 60, (250_000.0, 240_000.0), 610_000.0),
        full(900, "redis-server", Some(30 * MIB), 7 * MIB + 900 * KIB, 8_000, f64::NAN, 600, (310.0, 305.0), 2_200.0),
        full(2000, "bash", Some(5 * MIB), 40 * KIB, 120, 0.0, 3, (0.2, 0.1), 0.0),
    ];
    let live = rows.iter().filter(|r| !r.exited);
    Snapshot {
        header: Header {
            watching_for: Duration::from_secs(754),
            since: "14:02:11".into(),
            window: Duration::from_secs(30),
            outstanding_bytes: live.clone().map(|r| r.outstanding_bytes).sum(),
            allocs_per_s: live.clone().map(|r| r.allocs_per_s).sum(),
            processes: live.count(),
            events_per_s: 372_000.0,
            lost_events: 0,
            untracked_frees: 12,
            stack_failures: 0,
            dropped: 0,
            cpu_percent: 3.4,
            scope: "all processes".into(),
        },
        rows,
    }
}

fn fv(function: &str, file: &str, line: u32, module: &str, ip: u64) -> FrameView {
    FrameView {
        function: Some(function.into()),
        file: (!file.is_empty()).then(|| file.into()),
        line: (line > 0).then_some(line),
        module: Some(module.into()),
        ip,
    }
}

fn unresolved(module: &str, ip: u64) -> FrameView {
    FrameView {
        function: None,
        file: None,
        line: None,
        module: Some(module.into()),
        ip,
    }
}

const EXE: &str = "/usr/local/bin/leaky-server";
const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

fn deep_stack() -> Vec<FrameView> {
    let mut frames = vec![
        fv(
            "leaky::Session::buffer_frame",
            "/src/leaky/src/session.rs",
            214,
            EXE,
            0x5555_5555_a1f0,
        ),
        fv(
            "leaky::Session::on_read",
            "/src/leaky/src/session.rs",
            130,
            EXE,
            0x5555_5555_a0c4,
        ),
        fv(
            "leaky::server::serve_connection",
            "/src/leaky/src/server.rs",
            77,
            EXE,
            0x5555_5555_9e10,
        ),
    ];
    for i in 0..15u32 {
        frames.push(fv(
            &format!("tokio::runtime::task::harness::poll_{i}"),
            "/root/.cargo/registry/src/index.crates.io-6f17d22bba15001f/tokio-1.38.0/src/runtime/task/harness.rs",
            151 + i,
            EXE,
            0x5555_5556_0000 + u64::from(i) * 0x40,
        ));
    }
    frames.push(fv(
        "main",
        "/src/leaky/src/main.rs",
        42,
        EXE,
        0x5555_5555_8000,
    ));
    frames.push(fv(
        "__libc_start_call_main",
        "../sysdeps/nptl/libc_start_call_main.h",
        58,
        LIBC,
        0x7f3a_1202_9d90,
    ));
    frames
}

/// The process view of `leaky-server`, fully symbolized.
pub fn detail() -> Detail {
    let history = (0..=75u64)
        .map(|i| {
            let t = i * 10;
            (t as f64 + 4.0, t * 64_000 + (t % 60) * 100_000)
        })
        .collect();
    Detail {
        key: key(4242),
        comm: "leaky-server".into(),
        exe: Some(EXE.into()),
        history,
        stacks: vec![
            StackView {
                kind: "heap",
                outstanding_bytes: 40 * MIB,
                outstanding_allocations: 100_000,
                oldest_age: Some(Duration::from_secs(725)),
                frames: deep_stack(),
            },
            StackView {
                kind: "heap",
                outstanding_bytes: 6 * MIB,
                outstanding_allocations: 20_000,
                oldest_age: Some(Duration::from_secs(300)),
                frames: vec![
                    fv(
                        "leaky::cache::Cache::insert",
                        "/src/leaky/src/cache.rs",
                        58,
                        EXE,
                        0x5555_5555_b100,
                    ),
                    fv(
                        "leaky::server::handle_get",
                        "/src/leaky/src/server.rs",
                        120,
                        EXE,
                        0x5555_5555_9f00,
                    ),
                    fv(
                        "leaky::server::serve_connection",
                        "/src/leaky/src/server.rs",
                        80,
                        EXE,
                        0x5555_5555_9e40,
                    ),
                    fv("main", "/src/leaky/src/main.rs", 42, EXE, 0x5555_5555_8000),
                    fv("__libc_start_call_main", "", 0, LIBC, 0x7f3a_1202_9d90),
                ],
            },
            StackView {
                kind: "mmap",
                outstanding_bytes: 2 * MIB,
                outstanding_allocations: 1,
                oldest_age: Some(Duration::from_secs(660)),
                frames: vec![
                    unresolved("/usr/lib/libstripped.so.1", 0x7f3a_1300_4411),
                    fv(
                        "leaky::arena::Arena::grow",
                        "/src/leaky/src/arena.rs",
                        33,
                        EXE,
                        0x5555_5555_c200,
                    ),
                ],
            },
            StackView {
                kind: "heap",
                outstanding_bytes: 128 * KIB,
                outstanding_allocations: 240,
                oldest_age: Some(Duration::from_millis(30_500)),
                frames: vec![],
            },
        ],
        sizes: Percentiles {
            count: 1_250_000,
            p50: 64,
            p90: 512,
            p99: 4096,
            max: 2 * MIB,
        },
        lifetimes_ms: Percentiles {
            count: 1_100_000,
            p50: 3,
            p90: 120,
            p99: 2_500,
            max: 600_000,
        },
        symbolizing: false,
    }
}

/// The same view while symbols are being resolved: addresses only.
pub fn detail_symbolizing() -> Detail {
    let mut d = detail();
    d.symbolizing = true;
    for (i, st) in d.stacks.iter_mut().enumerate() {
        for f in &mut st.frames {
            // The second stack is already resolved.
            if i != 1 {
                f.function = None;
                f.file = None;
                f.line = None;
            }
        }
    }
    d
}
