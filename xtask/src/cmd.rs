//! Running commands: every command is printed, shell-style, before it runs.

use std::{
    ffi::OsStr,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Root of the workspace (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A command that runs in the workspace root.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo` through rustup's proxy, so that `+nightly` works.
pub fn cargo() -> Command {
    command("cargo")
}

/// The command as one would type it in a shell: `VAR=value program args`.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn announce(cmd: &Command) {
    println!("$ {}", display(cmd));
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns how it ended.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    announce(cmd);
    cmd.status().with_context(|| spawn_failed(cmd))
}

/// Runs `cmd` for its output (a check). `None` when the program does not exist.
pub fn probe(cmd: &mut Command) -> Result<Option<Output>> {
    announce(cmd);
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| spawn_failed(cmd)),
    }
}

pub fn spawn_failed(cmd: &Command) -> String {
    format!("cannot run `{}`", display(cmd))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "build", "-Z", "build-std=core", "it's here", ""]).env("XLB_BIN", "/a b/xlb");
        assert_eq!(display(&cmd), r"XLB_BIN='/a b/xlb' cargo +nightly build -Z build-std=core 'it'\''s here' ''");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{manifest}");
    }
}
