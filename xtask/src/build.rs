//! `cargo xtask build` and `cargo xtask run`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{ctx::Ctx, setup};

/// Setup, then `cargo build --release -p memtrace`; returns the binary.
pub fn build(ctx: &Ctx) -> Result<PathBuf> {
    setup::setup(ctx)?;
    build_only(ctx)
}

/// `cargo build --release -p memtrace` (memtrace/build.rs builds and embeds
/// the eBPF object; it finds bpf-linker on our PATH).
pub fn build_only(ctx: &Ctx) -> Result<PathBuf> {
    ctx.run(&ctx.cargo("build").args(["--release", "-p", "memtrace"]))?;
    let bin = memtrace_bin(ctx);
    if !ctx.dry_run && !bin.is_file() {
        bail!("the build succeeded but left no {}", bin.display());
    }
    Ok(bin)
}

/// `<target dir>/release/memtrace`.
pub fn memtrace_bin(ctx: &Ctx) -> PathBuf {
    ctx.target_dir().join("release").join("memtrace")
}

/// Build, then run memtrace as root with `args`. memtrace replaces this
/// process, so its exit code is ours and Ctrl-C reaches only it (it may
/// still have a report to print).
pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let bin = build(ctx)?;
    let cmd = ctx
        .cmd(bin.to_string_lossy())
        .args(args)
        .in_current_dir()
        .elevated(true);
    ctx.exec(&cmd)
}
