//! Builds the eBPF programs in `../ebpf` for `bpfel-unknown-none` with
//! aya-build, which runs `rustup run nightly cargo build -Z build-std=core
//! --release` and copies each bin into `OUT_DIR` (here
//! `$OUT_DIR/swarmnet-counters`). Needs the nightly toolchain with `rust-src`
//! and `bpf-linker`: `scripts/setup.sh` installs both.
//!
//! Its lines show up as `warning: swarmnet-dataplane@...: Compiling ...`:
//! that is aya-build relaying cargo's output, not a warning.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("..").join("ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("eBPF crate path {} is not UTF-8", ebpf_dir.display()))?;

    // aya-build emits `cargo:rerun-if-changed={root_dir}`, which covers
    // ebpf/common too since it lives inside ebpf/.
    aya_build::build_ebpf(
        [Package {
            name: "swarmnet-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (needs `bash scripts/setup.sh`)")
}
