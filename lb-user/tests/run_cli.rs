//! `xlb run` with a broken configuration: the same header and problems as
//! `xlb check`, exit 1, before anything needs root (no program is loaded).

use std::{
    path::PathBuf,
    process::{Command, Output},
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

const BROKEN: &str = r#"
[daemon]
interfaces = ["eth0"]
conntrack_entries = 0

[[service]]
name = "www"
vip = "198.18.0.10:80"
table_size = 100

[[service.backend]]
address = "198.18.1.11:80"
weight = 1000000
"#;

fn xlb(args: &[&str]) -> Output {
    Command::new(XLB).args(args).env("RUST_LOG", "off").output().unwrap_or_else(|e| panic!("cannot run {XLB}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_refuses_a_broken_config_like_check() {
    let path: PathBuf = std::env::temp_dir().join(format!("xlb-run-cli-{}.toml", std::process::id()));
    std::fs::write(&path, BROKEN).unwrap();
    let file = path.to_str().unwrap();
    let run = xlb(&["run", "-c", file]);
    let check = xlb(&["check", "-c", file]);
    let _ = std::fs::remove_file(&path);
    let (run_err, check_err) = (text(&run.stderr), text(&check.stderr));
    assert_eq!(
        run.status.code(),
        Some(1),
        "xlb run on a broken config: expected exit 1, got {}\n{run_err}",
        run.status
    );
    assert!(
        run_err.starts_with(&format!("error: invalid configuration {file} (3 problems)\n")),
        "expected the header naming the file and the count of problems, got:\n{run_err}"
    );
    for field in ["daemon.conntrack_entries", "table_size", "weight"] {
        assert!(run_err.lines().any(|l| l.contains(field)), "expected a problem about {field}, got:\n{run_err}");
    }
    assert_eq!(run_err, check_err, "xlb run and xlb check print different problems");
    assert!(run.stdout.is_empty(), "nothing on stdout, got:\n{}", text(&run.stdout));
}
