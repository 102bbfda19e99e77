//! What a packaged `xlb` offers an operator, run as the real binary:
//! `--version`, completion scripts for bash, zsh and fish that know every
//! command, man pages, and `/etc/xlb/xlb.toml` as the default `--config`.

use std::{
    path::Path,
    process::{Command, Output},
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

fn xlb(args: &[&str]) -> Output {
    Command::new(XLB).args(args).env("RUST_LOG", "off").output().unwrap_or_else(|e| panic!("cannot run {XLB}: {e}"))
}

#[track_caller]
fn stdout_of(args: &[&str]) -> String {
    let out = xlb(args);
    assert!(out.status.success(), "xlb {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The commands `xlb --help` lists (without `help`).
fn commands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let list = help.split_once("Commands:\n").unwrap_or_else(|| panic!("no command list in xlb --help:\n{help}")).1;
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&n| n != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn service_version_names_the_release_and_the_commit() {
    let v = stdout_of(&["--version"]);
    let want = format!("xlb {}", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "xlb --version: {v:?}, expected it to start with {want:?}");
    let rest = v.trim_end().strip_prefix(&want).unwrap();
    // Built from git here: " (git <hex>)"; from a tarball nothing follows.
    let in_git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git").exists();
    if in_git {
        let hash = rest.strip_prefix(" (git ").and_then(|r| r.strip_suffix(')'));
        let hash = hash.unwrap_or_else(|| panic!("xlb --version: {v:?}, expected \"{want} (git COMMIT)\""));
        assert!(hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit()), "commit {hash:?} in {v:?}");
    }
    assert_eq!(stdout_of(&["-V"]), v, "-V and --version agree");
}

#[test]
fn service_completions_know_every_command_in_bash_zsh_and_fish() {
    let commands = commands();
    for want in ["run", "check", "status", "reload", "explain", "completions", "manpages"] {
        assert!(commands.iter().any(|c| c == want), "xlb --help lists no {want}: {commands:?}");
    }
    let shells = [
        ("bash", "complete -F _xlb", "--config"),
        ("zsh", "#compdef xlb", "--config"),
        ("fish", "complete -c xlb", "-l config"),
    ];
    for (shell, marker, config) in shells {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains(marker), "{shell} completion has no {marker:?}:\n{script}");
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion does not offer `{c}`");
        }
        assert!(script.contains(config), "{shell} completion does not offer --config ({config:?})");
    }
    let bad = xlb(&["completions", "tcsh"]);
    assert!(!bad.status.success(), "an unknown shell is refused");
}

#[test]
fn service_manpages_are_one_per_command() {
    let dir = std::env::temp_dir().join(format!("xlb-manpages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    stdout_of(&["manpages", dir.to_str().unwrap()]);
    let mut pages: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    pages.sort();
    let top = std::fs::read_to_string(dir.join("xlb.1")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let mut want: Vec<String> = commands().iter().map(|c| format!("xlb-{c}.1")).collect();
    want.push("xlb.1".to_owned());
    want.sort();
    assert_eq!(pages, want, "one page per command and xlb.1");
    assert!(top.contains("/etc/xlb/xlb.toml") && top.contains("SIGHUP"), "xlb.1 has FILES and SIGNALS:\n{top}");
}

#[test]
fn service_commands_read_etc_xlb_by_default() {
    for args in [&["check"][..], &["run"], &["explain", "198.18.0.1:40000", "198.18.0.10:80"]] {
        let help = stdout_of(&[args[0], "--help"]);
        assert!(help.contains("[default: /etc/xlb/xlb.toml]"), "xlb {} --help:\n{help}", args[0]);
        if Path::new("/etc/xlb/xlb.toml").exists() {
            continue; // an installed config: the command would use it, which is right but not this test's business
        }
        let out = xlb(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "xlb {args:?} without /etc/xlb/xlb.toml: {err}");
        assert!(err.contains("/etc/xlb/xlb.toml"), "xlb {args:?} names the default file it read:\n{err}");
    }
}

/// Under systemd (JOURNAL_STREAM names stderr) every line of an error is
/// marked `<3>` for journald; with JOURNAL_STREAM naming another stream, or
/// none, the text is plain.
#[test]
fn service_errors_are_marked_for_the_journal_only_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt as _;
    /// What JOURNAL_STREAM names.
    enum Journal {
        Stderr,
        Elsewhere,
        Unset,
    }
    let run_with = |journal: Journal| -> String {
        let path = std::env::temp_dir().join(format!("xlb-journal-{}.err", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let named = match journal {
            Journal::Stderr => Some(file.metadata().unwrap()),
            Journal::Elsewhere => Some(std::fs::metadata(env!("CARGO_MANIFEST_DIR")).unwrap()),
            Journal::Unset => None,
        };
        let mut cmd = Command::new(XLB);
        cmd.args(["check", "-c", "/nonexistent/xlb.toml"]).stderr(file).env_remove("JOURNAL_STREAM");
        if let Some(m) = named {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        let status = cmd.status().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(status.code(), Some(1), "xlb check of a missing file: {text}");
        text
    };
    let journal = run_with(Journal::Stderr);
    assert!(journal.lines().count() >= 2, "a header and a problem line:\n{journal}");
    assert!(journal.lines().all(|l| l.starts_with("<3>")), "every line marked as an error:\n{journal}");
    assert!(journal.starts_with("<3>error: invalid configuration /nonexistent/xlb.toml"), "{journal}");

    let elsewhere = run_with(Journal::Elsewhere);
    assert!(elsewhere.starts_with("error: invalid configuration") && !elsewhere.contains("<3>"), "{elsewhere}");
    assert_eq!(run_with(Journal::Unset), elsewhere, "without JOURNAL_STREAM the same plain text");
}
