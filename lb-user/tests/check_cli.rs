//! `xlb check` and `xlb explain`, run as the real binary on configuration files:
//! exit codes, the report's header and line format, several problems at once,
//! `xlb run` refusing a file the same way. What each field accepts is tested
//! next to its validator (lb-user/src/config/).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

/// A configuration file in the temp dir, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xlb-check-{}-{n}-{name}.toml", std::process::id()));
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        TempConfig(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/example.toml")
}

fn xlb(args: &[&str]) -> Output {
    Command::new(XLB).args(args).env("RUST_LOG", "off").output().unwrap_or_else(|e| panic!("cannot run {XLB}: {e}"))
}

fn check(path: &Path) -> Output {
    xlb(&["check", "-c", path.to_str().expect("temp paths are UTF-8")])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!("exit status {}\n--- stdout:\n{}--- stderr:\n{}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Runs `xlb check` on `config` and expects exit code 1 with stderr naming the
/// file and, for each `(field, message)`, a line holding both.
#[track_caller]
fn assert_refused(name: &str, config: &str, expected: &[(&str, &str)]) {
    let file = TempConfig::new(name, config);
    let out = check(file.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: expected `xlb check` to exit with 1; {}", describe(&out));
    let file_name = file.path().display().to_string();
    assert!(
        stderr.contains(&format!("invalid configuration {file_name} ({} problem", expected.len())),
        "{name}: expected stderr to say `invalid configuration {file_name} ({} problem...)`; {}",
        expected.len(),
        describe(&out)
    );
    for (field, message) in expected {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{file_name}: ")) && l.contains(field) && l.contains(message)),
            "{name}: expected a line `{file_name}: ...{field}...: ...{message}...` on stderr; {}",
            describe(&out)
        );
    }
}

/// A valid configuration the broken ones are made from.
const BASE: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "www"
vip = "198.18.0.10:80"

[[service.backend]]
address = "198.18.1.11:80"

[[service.backend]]
address = "198.18.1.12:80"
"#;

/// `BASE` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn valid_config_prints_the_plan() {
    let out = check(&example());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "expected `xlb check` of the example to succeed; {}", describe(&out));
    for want in [
        "service www",
        "service dns6",
        "198.18.0.10:80",
        "198.18.1.11:80",
        "198.18.1.12:80",
        "[2001:db8:1::11]:53",
        "[2001:db8:1::12]:53",
        "configuration OK: 2 services, 4 backends",
    ] {
        assert!(stdout.contains(want), "expected the plan to mention {want:?}; {}", describe(&out));
    }
    // Two equal primaries share the table about half and half.
    let shares: Vec<f64> = stdout
        .lines()
        .filter(|l| l.contains("backend 198.18.1.1"))
        .filter_map(|l| l.split_whitespace().find(|w| w.ends_with('%'))?.trim_end_matches('%').parse().ok())
        .collect();
    assert!(
        shares.len() == 2 && shares.iter().all(|s| (s - 50.0).abs() < 1.0),
        "expected two backends of www with about 50% of the slots each, got {shares:?}; {}",
        describe(&out)
    );
}

#[test]
fn firewall_problems_are_reported_together_with_their_fields() {
    let config = edit(
        "vip = \"198.18.0.10:80\"",
        "vip = \"198.18.0.10:80\"\nallow = [\"198.18.0.1/24\", \"198.18.4.0/24\"]\ndeny = [\"2001:db8::/32\", \"198.18.4.0/24\"]\nnew_flows_per_source = { rate = 0, burst = 10 }",
    )
    .replacen("[daemon]", "[daemon]\nclosed_ports = \"reject\"", 1);
    assert_refused(
        "firewall",
        &config,
        &[
            ("daemon.closed_ports (line 3)", "unknown value \"reject\"; expected one of: pass, drop"),
            (
                "service[0] (www).allow[0] (line 9)",
                "\"198.18.0.1/24\" has host bits set; did you mean \"198.18.0.0/24\"?",
            ),
            (
                "service[0] (www).allow[1] (line 9)",
                "198.18.4.0/24 is dead: service[0] (www).deny[1] names the same prefix",
            ),
            ("service[0] (www).deny[0] (line 10)", "2001:db8::/32 is IPv6 but the VIP 198.18.0.10 is IPv4"),
            ("service[0] (www).new_flows_per_source.rate (line 11)", "0 is out of range"),
        ],
    );
}

#[test]
fn firewall_config_is_shown_in_the_plan() {
    let config = edit(
        "vip = \"198.18.0.10:80\"",
        "vip = \"198.18.0.10:80\"\nallow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.9.0/24\"]\nnew_flows_per_source = { rate = 100, burst = 200 }",
    )
    .replacen("[daemon]", "[daemon]\nclosed_ports = \"drop\"\ndeny = [\"203.0.113.0/24\"]", 1);
    let file = TempConfig::new("firewall-ok", &config);
    let out = check(file.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "expected the firewall config to be valid; {}", describe(&out));
    for want in [
        "closed_ports:      drop",
        "deny (every VIP):  203.0.113.0/24",
        "allow: 198.18.0.0/16 (everyone else is denied)",
        "deny: 198.18.9.0/24",
        "new flows per source: 100/s, burst 200",
    ] {
        assert!(stdout.contains(want), "expected the plan to show {want:?}; {}", describe(&out));
    }
}

#[test]
fn base_config_is_valid() {
    let file = TempConfig::new("base", BASE);
    let out = check(file.path());
    assert!(out.status.success(), "expected BASE to be valid; {}", describe(&out));
}

#[test]
fn missing_file_is_an_error() {
    let out = xlb(&["check", "-c", "/nonexistent/xlb.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: invalid configuration /nonexistent/xlb.toml (1 problem)\n/nonexistent/xlb.toml: cannot read the configuration file: "
        ),
        "expected the header and a line naming the file; {}",
        describe(&out)
    );
}

#[test]
fn toml_syntax_error_is_reported_with_its_line() {
    let config = edit("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:80");
    assert_refused("syntax", &config, &[("line 7, column", "invalid basic string")]);
}

#[test]
fn header_then_one_line_per_problem() {
    let config = edit("address = \"198.18.1.12:80\"", "address = \"198.18.1.12:0\"");
    let file = TempConfig::new("one", &config);
    let out = check(file.path());
    let name = file.path().display().to_string();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "expected nothing on stdout for a refused config; {}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: invalid configuration {name} (1 problem)\n{name}: service[0] (www).backend[1].address (line 13): port 0 in \"198.18.1.12:0\"; expected a port from 1 to 65535\n"
        ),
        "expected the singular header and the one problem; {}",
        describe(&out)
    );
}

#[test]
fn three_problems_are_all_reported() {
    let config = edit("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:0\"\ntable_size = 100")
        .replace("address = \"198.18.1.12:80\"", "address = \"198.18.1.12:80\"\nrole = \"master\"");
    assert_refused(
        "three",
        &config,
        &[
            ("service[0] (www).vip (line 7)", "port 0"),
            ("service[0] (www).table_size (line 8)", "100 is not prime"),
            (
                "service[0] (www).backend[1].role (line 15)",
                "unknown value \"master\"; expected one of: primary, backup",
            ),
        ],
    );
}

#[test]
fn problems_of_every_kind_are_reported_together_in_file_order() {
    // An unknown key, a value of the wrong TOML type and a bad value: none stops the others.
    let config = edit("[daemon]", "[daemon]\nverbose = true")
        .replacen("name = \"www\"", "name = \"www\"\npreempt = \"no\"", 1)
        .replacen("address = \"198.18.1.12:80\"", "address = \"198.18.1.12:80\"\nweight = 20000", 1);
    let expected = [
        ("daemon.verbose (line 3, column 1)", "unknown key `verbose`; expected one of: interfaces,"),
        ("service[0] (www).preempt (line 8, column 11)", "the string \"no\" is not a boolean; expected true or false"),
        ("service[0] (www).backend[1].weight (line 16)", "20000 is out of range"),
    ];
    assert_refused("every-kind", &config, &expected);
    let file = TempConfig::new("every-kind-order", &config);
    let stderr = text(&check(file.path()).stderr);
    let order: Vec<usize> =
        expected.iter().filter_map(|(field, _)| stderr.lines().position(|l| l.contains(field))).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "expected the problems in file order; stderr:\n{stderr}");
}

#[test]
fn run_refuses_a_bad_file_with_the_same_report_as_check() {
    // The daemon loads its file through the same path as `xlb check` (and a
    // reload): it stops before touching anything, with the same lines. (An
    // interface that does not exist, should it ever get further.)
    let config = edit("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10\"\nprotocol = \"sctp\"").replacen(
        "\"eth0\"",
        "\"xlb-no-such0\"",
        1,
    );
    let file = TempConfig::new("run", &config);
    let checked = check(file.path());
    let ran = xlb(&["run", "-c", file.path().to_str().expect("temp paths are UTF-8")]);
    assert_eq!(ran.status.code(), Some(1), "expected `xlb run` to refuse the file; {}", describe(&ran));
    assert!(
        text(&checked.stderr).contains("(2 problems)"),
        "expected `xlb check` to find two problems; {}",
        describe(&checked)
    );
    assert_eq!(
        text(&ran.stderr),
        text(&checked.stderr),
        "expected `xlb run` to print what `xlb check` prints; run: {}\ncheck: {}",
        describe(&ran),
        describe(&checked)
    );
}

fn explain(args: &[&str]) -> Output {
    let config = example();
    let mut all = vec!["explain", "-c", config.to_str().expect("UTF-8 path")];
    all.extend_from_slice(args);
    xlb(&all)
}

/// The address on the `backend: ADDRESS` line.
#[track_caller]
fn backend_of(out: &Output) -> String {
    assert!(out.status.success(), "expected `xlb explain` to succeed; {}", describe(out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("backend: ")).collect();
    assert_eq!(lines.len(), 1, "expected exactly one `backend: ADDRESS` line; {}", describe(out));
    lines[0].to_owned()
}

#[test]
fn explain_names_a_configured_backend() {
    let out = explain(&["198.18.0.1:40000", "198.18.0.10:80", "tcp"]);
    let backend = backend_of(&out);
    assert!(
        ["198.18.1.11:80", "198.18.1.12:80"].contains(&backend.as_str()),
        "expected one of www's backends, got {backend:?}; {}",
        describe(&out)
    );
    let again = backend_of(&explain(&["198.18.0.1:40000", "198.18.0.10:80", "tcp"]));
    assert_eq!(backend, again, "the same flow must get the same backend twice");

    // IPv6, UDP, active-passive: the primary takes every new flow.
    let out = explain(&["[2001:db8::1]:5353", "[2001:db8::53]:53", "udp"]);
    assert_eq!(backend_of(&out), "[2001:db8:1::11]:53", "expected the IPv6 primary; {}", describe(&out));
}

#[test]
fn explain_spreads_over_both_backends() {
    let mut seen = BTreeSet::new();
    for port in 40000..40200 {
        seen.insert(backend_of(&explain(&[&format!("198.18.0.1:{port}"), "198.18.0.10:80"])));
    }
    let want: BTreeSet<String> = ["198.18.1.11:80", "198.18.1.12:80"].map(String::from).into();
    assert_eq!(seen, want, "expected 200 client ports to reach both backends of www");
}

#[test]
fn explain_unknown_vip_is_a_clear_error() {
    let out = explain(&["198.18.0.1:40000", "198.18.0.99:80", "tcp"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit code 1 for an unknown VIP; {}", describe(&out));
    assert!(
        stderr.contains("no service has VIP 198.18.0.99:80 tcp") && stderr.contains("198.18.0.10:80 tcp (www)"),
        "expected the error to name the VIP and list the configured ones; {}",
        describe(&out)
    );
    let out = explain(&["[2001:db8::1]:40000", "198.18.0.10:80", "tcp"]);
    assert_eq!(out.status.code(), Some(1), "expected exit code 1 for mixed address families; {}", describe(&out));
    assert!(text(&out.stderr).contains("different address families"), "{}", describe(&out));
}
