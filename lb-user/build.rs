//! Embeds the XDP object built by `cargo xtask build-ebpf`, and names the
//! build for `xlb --version`.
//!
//! The object is looked up at `XLB_EBPF_OBJ` or at the path where
//! `cargo xtask build-ebpf` leaves it. When it is missing an empty stub is
//! embedded instead, so `cargo check`/`clippy`/`test` of the user-space crates
//! work without the BPF toolchain; `xlb run` then refuses to start and says how
//! to build the object.
//!
//! The version is the package's, followed by the git commit when the source
//! is a git checkout (`XLB_GIT_COMMIT` overrides it, e.g. for a build from a
//! tarball): `0.1.0 (git 3950d7a)`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    embed_object();
    name_version();
}

fn embed_object() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("xlb.bpf.o");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpfel-unknown-none/release/lb-ebpf");
    println!("cargo:rerun-if-env-changed=XLB_EBPF_OBJ");
    let src = env::var_os("XLB_EBPF_OBJ").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=XDP object not found at {}; embedding an empty stub (run `cargo xtask build-ebpf`)",
                src.display()
            );
            fs::write(&out, []).unwrap()
        }
    }
}

/// Sets `XLB_VERSION` for the crate: `CARGO_PKG_VERSION`, plus `(git COMMIT)`
/// when known.
fn name_version() {
    println!("cargo:rerun-if-env-changed=XLB_GIT_COMMIT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let commit = match env::var("XLB_GIT_COMMIT") {
        Ok(c) => Some(c).filter(|c| !c.is_empty()),
        Err(_) => git_commit(&manifest),
    };
    let version = env::var("CARGO_PKG_VERSION").unwrap();
    let full = match commit {
        Some(c) => format!("{version} (git {c})"),
        None => version,
    };
    println!("cargo:rustc-env=XLB_VERSION={full}");
}

/// The short commit of the checkout holding `dir`; `None` outside git or
/// without git. Asks cargo to run again when HEAD moves (a commit, a
/// checkout: both append to HEAD's reflog, also in a worktree).
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
            if Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    git(&["rev-parse", "--short=10", "HEAD"])
}
