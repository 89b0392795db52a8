//! `cargo xtask test`: setup, then the test layers, cheapest first, stopping
//! at the first failure, with a summary line per layer at the end.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    build,
    ctx::{Cmd, Ctx, say},
    setup,
};

/// Debian's clippy (package rust-web-clippy), for linting the eBPF crate for
/// its real target.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

enum Outcome {
    Passed(Duration),
    Failed(Duration),
    NotRun,
}

struct Layer {
    name: &'static str,
    outcome: Outcome,
}

pub fn test(ctx: &Ctx, extra: &[String]) -> Result<()> {
    setup::setup(ctx)?;
    let memtrace_bin = build::memtrace_bin(ctx);
    let (ebpf_lint, ebpf_note) = ebpf_clippy(ctx);
    let plan: Vec<(&'static str, Cmd)> = vec![
        ("fmt", ctx.cargo("fmt").args(["--all", "--", "--check"])),
        (
            "clippy",
            ctx.cargo("clippy")
                .args(["--all-targets", "--", "-D", "warnings"]),
        ),
        ("ebpf-clippy", ebpf_lint),
        (
            "build",
            ctx.cargo("build").args(["--release", "-p", "memtrace"]),
        ),
        (
            "unit-tests",
            ctx.cargo("test").args([
                "--release",
                "--workspace",
                "--exclude",
                "memtrace-ebpf",
                "--exclude",
                "memtrace-tests",
            ]),
        ),
        (
            "integration-tests",
            privileged_tests(ctx, &memtrace_bin, extra),
        ),
    ];
    let total = plan.len();
    let mut layers: Vec<Layer> = plan
        .iter()
        .map(|(name, _)| Layer {
            name,
            outcome: Outcome::NotRun,
        })
        .collect();
    let mut failure = None;
    for (i, (name, cmd)) in plan.iter().enumerate() {
        say!("test: [{}/{total}] {name}", i + 1);
        if *name == "ebpf-clippy"
            && let Some(note) = &ebpf_note
        {
            say!("test: {name}: {note}");
        }
        let start = Instant::now();
        let result = ctx.run(cmd);
        let elapsed = start.elapsed();
        match result {
            Ok(()) => layers[i].outcome = Outcome::Passed(elapsed),
            Err(err) => {
                layers[i].outcome = Outcome::Failed(elapsed);
                failure = Some((i, err));
                break;
            }
        }
        if *name == "build" && !ctx.dry_run && !memtrace_bin.is_file() {
            let msg = format!("the build left no {}", memtrace_bin.display());
            layers[i].outcome = Outcome::Failed(elapsed);
            failure = Some((i, anyhow::anyhow!(msg)));
            break;
        }
    }
    summary(&layers, ebpf_note.as_deref(), ctx.dry_run);
    if let Some((i, err)) = failure {
        bail!(
            "test: layer {}/{total} ({}) failed: {err:#}",
            i + 1,
            layers[i].name
        );
    }
    if !ctx.dry_run {
        say!("test: all {total} layers passed");
    }
    Ok(())
}

fn summary(layers: &[Layer], ebpf_note: Option<&str>, dry_run: bool) {
    say!("test: summary:");
    for layer in layers {
        let status = match &layer.outcome {
            Outcome::Passed(_) if dry_run => "not run (dry run)".to_owned(),
            Outcome::Passed(t) => format!("ok ({:.1}s)", t.as_secs_f64()),
            Outcome::Failed(t) => format!("FAILED ({:.1}s)", t.as_secs_f64()),
            Outcome::NotRun => "not run".to_owned(),
        };
        let note = match (layer.name, ebpf_note, &layer.outcome) {
            ("ebpf-clippy", Some(_), Outcome::Passed(_) | Outcome::Failed(_)) => {
                " [host target only]"
            }
            _ => "",
        };
        say!("test:   {:<18} {status}{note}", layer.name);
    }
}

/// Lints memtrace-ebpf. With Debian's clippy, for its real target
/// (`bpfel-unknown-none`, building `core` from rust-web-src); otherwise for
/// the host target, which still lints everything not behind a target cfg.
/// Returns the command and, for the fallback, why.
fn ebpf_clippy(ctx: &Ctx) -> (Cmd, Option<String>) {
    let rustup = ctx.which("rustup");
    if rustup.is_some() && Path::new(DEBIAN_CARGO_CLIPPY).is_file() {
        // rustup accepts a directory as toolchain: Debian's cargo and rustc.
        let mut cmd = ctx
            .cmd("rustup")
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["run", "/usr", "cargo", "clippy"]);
        if ctx.ci {
            cmd = cmd.arg("--locked");
        }
        let cmd = cmd.args([
            "-p",
            "memtrace-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
        return (cmd, None);
    }
    let why = if rustup.is_none() {
        "rustup not found".to_owned()
    } else {
        format!("{DEBIAN_CARGO_CLIPPY} missing (package rust-web-clippy)")
    };
    let cmd = ctx.cargo("clippy").env("RUSTC_BOOTSTRAP", "1").args([
        "-p",
        "memtrace-ebpf",
        "--",
        "-C",
        "panic=abort",
        "-Zpanic_abort_tests",
        "-D",
        "warnings",
    ]);
    (
        cmd,
        Some(format!(
            "{why}: linting for the host target instead of bpfel-unknown-none"
        )),
    )
}

/// The privileged integration tests, run as root. When we are not root,
/// cargo still builds as us and runs each test binary through `sudo -E`
/// (a runner), so no root-owned files land in the target directory.
fn privileged_tests(ctx: &Ctx, memtrace_bin: &Path, extra: &[String]) -> Cmd {
    // --no-fail-fast: one failing test binary must not hide the others.
    let mut cmd = ctx.cargo("test").env("MEMTRACE_BIN", memtrace_bin).args([
        "--release",
        "--no-fail-fast",
        "-p",
        "memtrace-tests",
    ]);
    if !ctx.is_root {
        cmd = cmd.args(["--config", r#"target.'cfg(all())'.runner=["sudo","-E"]"#]);
    }
    cmd.args(["--", "--test-threads=1"]).args(extra)
}
