//! Builds memtrace-ebpf for bpfel-unknown-none with Debian's Rust (the
//! toolchain at /usr, which ships `core` sources) and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let toolchain = std::env::var("MEMTRACE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "/usr".into());
    println!("cargo:rerun-if-env-changed=MEMTRACE_EBPF_TOOLCHAIN");
    // Debian's rustc is a stable channel: -Z build-std needs this.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let meta = cargo_metadata()?;
    let ebpf_dir = meta.join("memtrace-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "memtrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs (run `cargo xtask setup` to install the toolchain)")
}

fn cargo_metadata() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let dir = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root above {manifest}"))?;
    Ok(dir.to_path_buf())
}
