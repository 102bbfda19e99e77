//! `cargo xtask deb`: the Debian package, assembled in a staging tree and
//! built with `dpkg-deb` (no extra tool to install: dpkg-deb is part of
//! every Debian system, dpkg-shlibdeps of dpkg-dev, which `setup` installs).
//!
//! The package holds the `xlb` binary (the XDP object embedded), the systemd
//! unit, the man pages and shell completions generated from the binary's
//! clap definitions, and `/etc/xlb/xlb.toml` (a conffile: an upgrade keeps
//! the operator's edits). The maintainer scripts only tell systemd about the
//! unit; they never enable or start it (the example config names `eth0`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{command, probe, run},
    compile::Paths,
};

pub const PACKAGE: &str = "xlb";
const MAINTAINER: &str = "xlb developers <xlb-devel@example.org>";
/// What the binary runs besides libc: `ip` (next hops, see lb-user's dataplane::neigh).
const EXTRA_DEPENDS: &str = "iproute2";
const DESCRIPTION: &str = "\
XDP layer-4 load balancer
 xlb spreads the TCP and UDP connections to a virtual address over backend
 servers from an XDP program in the kernel: Maglev hashing, connection
 tracking, NAT or direct server return, health checks, drains, a status page
 and Prometheus metrics.
 .
 The daemon runs as the systemd service xlb.service with /etc/xlb/xlb.toml;
 the package installs it disabled: edit the file, then
 `systemctl enable --now xlb`.";

/// Where each file goes, relative to the package root, and its mode.
pub struct Layout;

impl Layout {
    pub const BIN: &'static str = "usr/bin/xlb";
    /// Debian 12 still ships units under /lib (merged /usr or not).
    pub const UNIT: &'static str = "lib/systemd/system/xlb.service";
    pub const CONFIG: &'static str = "etc/xlb/xlb.toml";
    pub const MAN1: &'static str = "usr/share/man/man1";
    pub const BASH: &'static str = "usr/share/bash-completion/completions/xlb";
    pub const ZSH: &'static str = "usr/share/zsh/vendor-completions/_xlb";
    pub const FISH: &'static str = "usr/share/fish/vendor_completions.d/xlb.fish";
    pub const DOC: &'static str = "usr/share/doc/xlb";
}

const POSTINST: &str = r#"#!/bin/sh
# Installed by xlb's package: tell systemd about the unit; restart a running
# daemon after an upgrade (the data path keeps forwarding meanwhile). A fresh
# install is left disabled: edit /etc/xlb/xlb.toml, then `systemctl enable --now xlb`.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ]; then
        systemctl --system try-restart xlb.service >/dev/null || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# Installed by xlb's package. On removal (not on upgrade): stop and disable the
# service, then remove the data path, which `systemctl stop` leaves attached.
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --system disable --now xlb.service >/dev/null 2>&1 || true
    fi
    /usr/bin/xlb stop >/dev/null 2>&1 || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# Installed by xlb's package: tell systemd the unit is gone.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
"#;

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xlb

Files: *
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// Builds the package from the `xlb` binary `bin`; its path
/// (`target/debian/xlb_VERSION_ARCH.deb`).
pub fn build(paths: &Paths, bin: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = dpkg_architecture()?;
    let out_dir = paths.target.join("debian");
    let stage = out_dir.join(format!("{PACKAGE}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing the old staging tree {}", stage.display()))?;
    }
    let packaging = paths.root.join("packaging");

    install(&stage, Layout::BIN, &fs::read(bin).with_context(|| format!("reading {}", bin.display()))?, 0o755)?;
    install(&stage, Layout::UNIT, &read(&packaging.join("xlb.service"))?, 0o644)?;
    install(&stage, Layout::CONFIG, &read(&packaging.join("xlb.toml"))?, 0o644)?;
    install(&stage, &format!("{}/copyright", Layout::DOC), COPYRIGHT.as_bytes(), 0o644)?;
    for (shell, dest) in [("bash", Layout::BASH), ("zsh", Layout::ZSH), ("fish", Layout::FISH)] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        if script.is_empty() {
            bail!("`{} completions {shell}` printed nothing", bin.display());
        }
        install(&stage, dest, &script, 0o644)?;
    }
    let man = stage.join(Layout::MAN1);
    run(Command::new(bin).arg("manpages").arg(&man))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    for page in &pages {
        fs::set_permissions(page, fs::Permissions::from_mode(0o644))?;
        // -n: no name or time stamp in the header (reproducible), as Debian policy asks.
        run(command("gzip").args(["-9", "-n", "-f"]).arg(page))?;
    }

    let depends = shlib_depends(&stage, bin)?;
    let installed_kib = tree_size(&stage)?.div_ceil(1024);
    let debian = stage.join("DEBIAN");
    install(&stage, "DEBIAN/control", control(version, &arch, &depends, installed_kib).as_bytes(), 0o644)?;
    install(&stage, "DEBIAN/conffiles", format!("/{}\n", Layout::CONFIG).as_bytes(), 0o644)?;
    install(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    fs::set_permissions(&debian, fs::Permissions::from_mode(0o755))?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(command("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

/// The control file.
pub fn control(version: &str, arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nDepends: {depends}\nSection: net\nPriority: optional\n\
         Description: {DESCRIPTION}\n"
    )
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `bytes` to `root/rel` with `mode`, creating the directories (0755).
fn install(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel);
    let mut dir = path.parent().context("a file in the package has no directory")?.to_path_buf();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    while dir.starts_with(root) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        if !dir.pop() {
            break;
        }
    }
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Total size of the regular files under `dir`, in bytes.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { tree_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// `dpkg --print-architecture`, e.g. `amd64`.
fn dpkg_architecture() -> Result<String> {
    let out = output(command("dpkg").arg("--print-architecture"))?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}

/// The shared libraries' packages `bin` needs, from dpkg-shlibdeps (which
/// wants a `debian/control` where it runs), plus [`EXTRA_DEPENDS`].
fn shlib_depends(stage: &Path, bin: &Path) -> Result<String> {
    let work = stage.parent().context("the staging tree has a parent")?.join("shlibdeps");
    fs::create_dir_all(work.join("debian"))?;
    fs::write(work.join("debian/control"), format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"))?;
    let mut c = command("dpkg-shlibdeps");
    c.current_dir(&work).args(["-O", "-e"]).arg(bin);
    let out = probe(&mut c)?.context("dpkg-shlibdeps not found: install dpkg-dev (cargo xtask setup does)")?;
    if !out.status.success() {
        bail!("dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    let _ = fs::remove_dir_all(&work);
    Ok(format!("{}, {EXTRA_DEPENDS}", libs.trim()))
}

/// Runs `cmd` for its stdout; an error unless it exits 0.
fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = probe(cmd)?.with_context(|| format!("{:?} not found", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd.get_program(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_has_the_fields_dpkg_needs() {
        let c = control("0.1.0", "amd64", "libc6 (>= 2.34), iproute2", 5000);
        for field in ["Package: xlb\n", "Version: 0.1.0\n", "Architecture: amd64\n", "Installed-Size: 5000\n"] {
            assert!(c.contains(field), "no {field:?} in\n{c}");
        }
        assert!(c.contains("Depends: libc6 (>= 2.34), iproute2\n"), "{c}");
        // Continuation lines of Description start with a space; an empty one is " .".
        let desc: Vec<&str> = c.lines().skip_while(|l| !l.starts_with("Description: ")).skip(1).collect();
        assert!(!desc.is_empty(), "a long description:\n{c}");
        assert!(desc.iter().all(|l| l.starts_with(' ') && !l.trim().is_empty()), "continuation lines: {desc:?}");
        assert!(c.ends_with('\n'), "the control file ends with a newline");
    }
}
