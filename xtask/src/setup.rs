//! `cargo xtask setup`: check each piece a build or a test run needs and
//! install only what is missing. Quick when everything is there.

use std::{fmt::Write as _, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, command, display, is_root, probe, run};

/// Debian packages the integration tests use (openssl: the TLS tests and the demo make a throwaway CA; bird2: the two-lb test).
pub const TEST_PACKAGES: &[&str] =
    &["nginx-light", "curl", "openssl", "ethtool", "iproute2", "procps", "nftables", "chromium", "bird2"];
/// Debian packages `cargo xtask deb` uses (dpkg-shlibdeps; gzip for the man pages).
pub const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev", "gzip"];
/// Debian packages the service test uses: `systemd-analyze verify` (which runs
/// `man` for the unit's Documentation=) and `setpriv` (the unit's capabilities).
pub const SERVICE_TEST_PACKAGES: &[&str] = &["systemd", "man-db", "util-linux"];
/// Debian packages `cargo xtask bench` uses (load generator and contenders).
pub const BENCH_PACKAGES: &[&str] = &["haproxy", "wrk", "nftables"];
/// Debian packages bpf-linker is built against (and loads `libLLVM` from).
pub const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const LLVM_MAJOR: &str = "22";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// `bpf-linker --version` must start with this.
const BPF_LINKER_SERIES: &str = "bpf-linker 0.13.";
const BPFFS: &str = "/sys/fs/bpf";

/// What a subcommand needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Building the XDP object: nightly + rust-src, bpf-linker and its LLVM.
    BpfToolchain,
    /// Also building the Debian package.
    Packaging,
    /// Also running the tests, the demo and the benchmarks: their packages and bpffs.
    Everything,
}

/// One thing to do to fix what is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fix {
    AptInstall(Vec<String>),
    InstallNightly,
    AddRustSrc,
    InstallBpfLinker,
    MountBpffs,
}

impl Fix {
    fn commands(&self) -> Vec<Command> {
        match self {
            Fix::AptInstall(packages) => {
                let mut update = command("apt-get");
                update.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
                let mut install = command("apt-get");
                install.args(["install", "-y"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive");
                vec![update, install]
            }
            Fix::InstallNightly => {
                let mut c = command("rustup");
                c.args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]);
                vec![c]
            }
            Fix::AddRustSrc => {
                let mut c = command("rustup");
                c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
                vec![c]
            }
            Fix::InstallBpfLinker => {
                // --force: also replaces a bpf-linker of another version, or one
                // of the right version that no longer runs (its libLLVM is gone).
                let mut c = cmd::cargo();
                c.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
                    .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
                    .env("LLVM_PREFIX", LLVM_PREFIX);
                vec![c]
            }
            Fix::MountBpffs => {
                let mut c = command("mount");
                c.args(["-t", "bpf", "bpf", BPFFS]);
                vec![c]
            }
        }
    }

    fn needs_root(&self) -> bool {
        matches!(self, Fix::AptInstall(_) | Fix::MountBpffs)
    }
}

/// Makes sure everything `needs` asks for is there, installing what is missing
/// (as root), or stops with the commands to run (not root).
pub fn ensure(needs: Needs) -> Result<()> {
    let what = match needs {
        Needs::BpfToolchain => "the BPF toolchain",
        Needs::Packaging => "the BPF toolchain and the packaging tools",
        Needs::Everything => "the BPF toolchain and the test dependencies",
    };
    println!("== setup: checking {what}");
    let fixes = missing(needs)?;
    if fixes.is_empty() {
        println!("== setup: everything is in place");
        warn_on_llvm_mismatch();
        return Ok(());
    }
    if !is_root() {
        let mut text = String::from("some pieces are missing, and setup installs them only when run as root; run:\n");
        for fix in &fixes {
            for c in fix.commands() {
                let sudo = if fix.needs_root() { "sudo " } else { "" };
                let _ = writeln!(text, "    {sudo}{}", display(&c));
            }
        }
        text.push_str("then run this command again");
        bail!(text);
    }
    for fix in &fixes {
        for mut c in fix.commands() {
            run(&mut c)?;
        }
    }
    println!("== setup: checking again");
    let left = missing(needs)?;
    if !left.is_empty() {
        bail!("still missing after installing: {left:?}; see the output above");
    }
    println!("== setup: done");
    warn_on_llvm_mismatch();
    Ok(())
}

/// Checks every piece; returns what to do, in the order to do it.
fn missing(needs: Needs) -> Result<Vec<Fix>> {
    let mut fixes = Vec::new();

    let mut wanted: Vec<&str> = LLVM_PACKAGES.to_vec();
    if needs != Needs::BpfToolchain {
        wanted.extend(PACKAGING_PACKAGES);
    }
    if needs == Needs::Everything {
        wanted.extend(TEST_PACKAGES);
        wanted.extend(SERVICE_TEST_PACKAGES);
        wanted.extend(BENCH_PACKAGES);
    }
    let packages: Vec<String> = wanted.into_iter().filter(|p| !package_installed(p)).map(str::to_owned).collect();
    if !packages.is_empty() {
        println!("   missing Debian packages: {}", packages.join(" "));
        fixes.push(Fix::AptInstall(packages));
    }

    match nightly()? {
        Nightly::Missing => {
            println!("   missing: the nightly Rust toolchain");
            fixes.push(Fix::InstallNightly);
        }
        Nightly::WithoutRustSrc => {
            println!("   missing: rust-src for the nightly toolchain");
            fixes.push(Fix::AddRustSrc);
        }
        Nightly::Ready => {}
    }

    if let Err(why) = bpf_linker() {
        println!("   missing: bpf-linker {BPF_LINKER_VERSION} ({why})");
        fixes.push(Fix::InstallBpfLinker);
    }

    if needs == Needs::Everything && !bpffs_mounted()? {
        println!("   missing: bpffs at {BPFFS}");
        fixes.push(Fix::MountBpffs);
    }
    Ok(fixes)
}

fn package_installed(package: &str) -> bool {
    let out = probe(Command::new("dpkg").args(["-s", package]));
    matches!(out, Ok(Some(out)) if out.status.success() && dpkg_says_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// `dpkg -s` also answers for removed packages whose config files remain.
fn dpkg_says_installed(status: &str) -> bool {
    status.lines().any(|l| l.trim_end() == "Status: install ok installed")
}

#[derive(Debug, PartialEq, Eq)]
enum Nightly {
    Missing,
    WithoutRustSrc,
    Ready,
}

fn nightly() -> Result<Nightly> {
    let list = probe(Command::new("rustup").args(["toolchain", "list"]))?.context(
        "rustup not found: xlb builds its XDP program with rustup's nightly toolchain; install rustup first",
    )?;
    if !list.status.success() || !has_nightly(&String::from_utf8_lossy(&list.stdout)) {
        return Ok(Nightly::Missing);
    }
    let components =
        probe(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?
            .context("rustup vanished")?;
    if components.status.success() && has_rust_src(&String::from_utf8_lossy(&components.stdout)) {
        Ok(Nightly::Ready)
    } else {
        Ok(Nightly::WithoutRustSrc)
    }
}

/// Whether `rustup toolchain list` shows the undated `nightly` channel.
fn has_nightly(list: &str) -> bool {
    list.lines().filter_map(|l| l.split_whitespace().next()).any(|name| {
        name == "nightly"
            || name.strip_prefix("nightly-").is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn has_rust_src(components: &str) -> bool {
    components
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|c| c == "rust-src" || c.starts_with("rust-src-"))
}

fn bpf_linker() -> Result<(), String> {
    match probe(Command::new("bpf-linker").arg("--version")) {
        Ok(Some(out)) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if bpf_linker_version_ok(&version) {
                Ok(())
            } else {
                Err(format!("found \"{version}\""))
            }
        }
        Ok(Some(out)) => Err(format!("it does not run: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Ok(None) => Err("not on PATH".to_owned()),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn bpf_linker_version_ok(version: &str) -> bool {
    version.starts_with(BPF_LINKER_SERIES)
}

fn bpffs_mounted() -> Result<bool> {
    println!("$ grep ' {BPFFS} bpf ' /proc/mounts");
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(has_bpffs(&mounts))
}

fn has_bpffs(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

/// bpf-linker reads the bitcode rustc writes: nightly's LLVM must not be newer
/// than the one bpf-linker was built with. Only a warning: it may still work.
fn warn_on_llvm_mismatch() {
    let Ok(Some(out)) = probe(Command::new("rustc").args(["+nightly", "--version", "--verbose"])) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.lines().find_map(|l| l.strip_prefix("LLVM version: ")) else {
        return;
    };
    if version.split('.').next() != Some(LLVM_MAJOR) {
        println!(
            "warning: nightly rustc uses LLVM {version} but bpf-linker is built with LLVM {LLVM_MAJOR}; \
             if linking the XDP object fails, use a nightly built with LLVM {LLVM_MAJOR}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_is_the_undated_channel() {
        assert!(has_nightly("stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n"));
        assert!(has_nightly("nightly\n"));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly(""));
    }

    #[test]
    fn rust_src_is_found() {
        assert!(has_rust_src("cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n"));
        assert!(!has_rust_src("cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"));
    }

    #[test]
    fn bpf_linker_series() {
        assert!(bpf_linker_version_ok("bpf-linker 0.13.0"));
        assert!(bpf_linker_version_ok("bpf-linker 0.13.2"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.9.15"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.130.0"));
    }

    #[test]
    fn bpffs_in_proc_mounts() {
        assert!(has_bpffs("sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n"));
        assert!(!has_bpffs("sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n"));
    }

    #[test]
    fn dpkg_status() {
        assert!(dpkg_says_installed("Package: curl\nStatus: install ok installed\nPriority: optional\n"));
        assert!(!dpkg_says_installed("Package: curl\nStatus: deinstall ok config-files\n"));
    }

    #[test]
    fn fixes_that_need_root_are_the_system_ones() {
        assert!(Fix::AptInstall(vec!["curl".into()]).needs_root());
        assert!(Fix::MountBpffs.needs_root());
        assert!(!Fix::InstallBpfLinker.needs_root());
        assert!(!Fix::AddRustSrc.needs_root());
        let install = display(&Fix::InstallBpfLinker.commands()[0]);
        assert_eq!(
            install,
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked --force --no-default-features --features llvm-22"
        );
    }
}
