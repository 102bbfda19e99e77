//! Building the XDP object and the `xlb` binary that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{cargo, run, workspace_root};

pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Where cargo puts what it builds.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let root = workspace_root();
        // Every cargo command here runs in the root, so cargo resolves a
        // relative CARGO_TARGET_DIR against it too.
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        Paths { root, target }
    }

    /// Sets `XLB_BIN`, which the integration tests and the demo run as the daemon.
    pub fn xlb_bin_env(&self, cmd: &mut Command) {
        cmd.env("XLB_BIN", self.xlb_bin());
    }

    pub fn ebpf_object(&self) -> PathBuf {
        self.target.join(BPF_TARGET).join("release").join("lb-ebpf")
    }

    pub fn xlb_bin(&self) -> PathBuf {
        self.target.join("release").join("xlb")
    }

    /// Sets what lb-user's build script needs to find the object. It looks in
    /// the default target directory by itself; tell it only when that moved,
    /// so plain `cargo build` and `cargo xtask build` share one build.
    pub fn user_env(&self, cmd: &mut Command) {
        if self.target != self.root.join("target") {
            cmd.env("XLB_EBPF_OBJ", self.ebpf_object());
        }
    }
}

/// `cargo +nightly SUBCOMMAND -p lb-ebpf --target bpfel-unknown-none ...`
/// (`build`, `clippy`), as the XDP object is built.
pub fn ebpf_cargo(subcommand: &str) -> Command {
    let mut cmd = cargo();
    cmd.args(["+nightly", subcommand, "-p", "lb-ebpf", "--target", BPF_TARGET, "-Z", "build-std=core", "--release"])
        // `cargo xtask` runs under the stable toolchain; do not pass that on.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// `cargo +nightly build -p lb-ebpf ...`: the XDP object.
pub fn ebpf(paths: &Paths) -> Result<PathBuf> {
    run(&mut ebpf_cargo("build"))?;
    let object = paths.ebpf_object();
    check_bpf_elf(&object)?;
    println!("XDP object: {}", object.display());
    Ok(object)
}

/// `cargo build --release -p lb-user`: the `xlb` binary, with the object built
/// before embedded in it.
pub fn user(paths: &Paths) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "lb-user"]);
    paths.user_env(&mut cmd);
    run(&mut cmd)?;
    let bin = paths.xlb_bin();
    if !bin.is_file() {
        bail!("cargo built lb-user but {} is not there", bin.display());
    }
    Ok(bin)
}

/// The object is a little-endian ELF file for the BPF machine.
fn check_bpf_elf(object: &Path) -> Result<()> {
    const EM_BPF: u16 = 247;
    let bytes = std::fs::read(object)
        .with_context(|| format!("the BPF build succeeded but {} cannot be read", object.display()))?;
    let elf = bytes.len() >= 20 && bytes.starts_with(b"\x7fELF") && bytes[5] == 1;
    if !elf || u16::from_le_bytes([bytes[18], bytes[19]]) != EM_BPF {
        bail!("{} is not a little-endian BPF ELF object", object.display());
    }
    Ok(())
}
