//! `cargo xtask setup`: installs what is missing, one line per step.
//!
//! The toolchain route depends only on Debian packages (see the shared
//! toolchain notes): Debian's Rust at /usr builds the eBPF crate, with
//! bpf-linker built against Debian's LLVM 22.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::ctx::{Ctx, say};

/// Debian packages: the eBPF toolchain (Rust 1.96 with `core` sources and
/// clippy, LLVM 22 for bpf-linker), then the tools the tests and benches use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "g++",
    "bpftrace",
    "heaptrack",
    "tmux",
    "python3",
    // allocator discovery tests: a preloaded jemalloc, tcmalloc, a
    // dlopen()ed mimalloc, musl (libc6-dev, for `cc -static`, comes with g++)
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "musl-tools",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const CORE_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";

pub fn setup(ctx: &Ctx) -> Result<()> {
    debian_packages(ctx)?;
    debian_rust(ctx)?;
    bpf_linker(ctx)?;
    Ok(())
}

fn debian_packages(ctx: &Ctx) -> Result<()> {
    let label = format!("debian packages {}", DEBIAN_PACKAGES.join(" "));
    if ctx.which("dpkg-query").is_none() {
        bail!("{label}: dpkg-query not found (setup supports Debian 12 only)");
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !is_installed(ctx, pkg))
        .collect();
    if missing.is_empty() {
        say!("{label}: present");
        return Ok(());
    }
    say!("{label}: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        ctx.cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args.iter().copied())
            .elevated(false)
    };
    if !ctx.is_root && !ctx.dry_run && ctx.which("sudo").is_none() {
        bail!(
            "installing {}: not root and sudo not found",
            missing.join(" ")
        );
    }
    ctx.run(&apt(&["-q", "update"])).context("apt-get update")?;
    let install = apt(&["-q", "install", "-y"]).args(missing.iter().copied());
    ctx.run(&install)
        .with_context(|| format!("installing {}", missing.join(" ")))
}

/// `dpkg-query` says "install ok installed" (or "hold ok installed").
fn is_installed(ctx: &Ctx, pkg: &str) -> bool {
    let query = ctx.cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]);
    ctx.probe(&query)
        .is_some_and(|status| status.trim_end().ends_with(" ok installed"))
}

/// Checks the Debian toolchain that aya-build uses (`Toolchain::Custom("/usr")`).
fn debian_rust(ctx: &Ctx) -> Result<()> {
    let label = "debian rust toolchain (/usr)";
    let version = ctx.probe(&ctx.cmd(DEBIAN_RUSTC).arg("--version"));
    let Some(version) = version else {
        if ctx.dry_run {
            say!("{label}: {DEBIAN_RUSTC} not working yet (dry run)");
            return Ok(());
        }
        bail!("{label}: `{DEBIAN_RUSTC} --version` failed; is rustc-web installed?");
    };
    if !Path::new(CORE_SRC).is_dir() {
        if ctx.dry_run {
            say!("{label}: {CORE_SRC} missing (dry run)");
            return Ok(());
        }
        bail!("{label}: {CORE_SRC} missing; is rust-web-src installed?");
    }
    say!("{label}: present ({}, core sources)", version.trim());
    Ok(())
}

fn bpf_linker(ctx: &Ctx) -> Result<()> {
    let label = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = bpf_linker_version(ctx);
    match &found {
        Some((path, version)) if same_minor(version, BPF_LINKER_VERSION) => {
            say!("{label}: present ({version} at {})", path.display());
            return Ok(());
        }
        Some((path, version)) => {
            say!(
                "{label}: installing (found {version} at {})",
                path.display()
            );
        }
        None => say!("{label}: installing"),
    }
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        bail!("{label}: {LLVM_BIN}/llvm-config missing; is llvm-22-dev installed?");
    }
    // llvm-sys finds Debian's LLVM 22 through llvm-config on PATH.
    let mut path = std::ffi::OsString::from(LLVM_BIN);
    path.push(":");
    path.push(&ctx.path);
    let install = |locked: bool| {
        let cmd = ctx
            .cmd(ctx.cargo.clone())
            .path(path.clone())
            .arg("install")
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"));
        let cmd = if locked { cmd.arg("--locked") } else { cmd };
        cmd.args(["--no-default-features", "--features", "llvm-22"])
    };
    // The published lock file keeps the build reproducible; without it cargo
    // resolves afresh (MSRV-aware), which the toolchain notes verified.
    if let Err(err) = ctx.run(&install(true)) {
        say!("{label}: `--locked` install failed ({err:#}); retrying without --locked");
        ctx.run(&install(false))?;
    }
    if ctx.dry_run {
        return Ok(());
    }
    match bpf_linker_version(ctx) {
        Some((_, version)) if same_minor(&version, BPF_LINKER_VERSION) => Ok(()),
        Some((path, version)) => bail!(
            "{label}: installed, but {} reports {version} (is another bpf-linker earlier on PATH?)",
            path.display()
        ),
        None => bail!(
            "{label}: installed, but `bpf-linker --version` fails (looked on PATH and in {})",
            ctx.cargo_bin.display()
        ),
    }
}

/// The bpf-linker build.rs will find (PATH with `$CARGO_HOME/bin` first)
/// and the version it reports.
fn bpf_linker_version(ctx: &Ctx) -> Option<(std::path::PathBuf, String)> {
    let path = ctx.which("bpf-linker")?;
    let out = ctx.probe(&ctx.cmd(path.to_string_lossy()).arg("--version"))?;
    // "bpf-linker 0.13.0"
    let version = out.split_whitespace().nth(1)?.to_owned();
    Some((path, version))
}

/// `0.13.x` matches `0.13.0`.
fn same_minor(version: &str, wanted: &str) -> bool {
    version.split('.').take(2).eq(wanted.split('.').take(2))
}
