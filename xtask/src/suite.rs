//! `cargo xtask test`: the whole suite, one test at a time, and a check that
//! it left no network namespace behind.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{announce, cargo, display, probe, spawn_failed, status},
    compile::Paths,
};

/// Lints that gate the test run: rustfmt, clippy of the user-space crates
/// and clippy of the XDP program (nightly, BPF target), each with warnings
/// as errors. Stops at the first that fails.
pub fn lint(paths: &Paths) -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    if !status(&mut fmt)?.success() {
        bail!(
            "the tree is not formatted as rustfmt.toml says (diff above): run `cargo fmt --all` and commit the result"
        );
    }
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--exclude", "lb-ebpf", "--", "-D", "warnings"]);
    paths.user_env(&mut clippy);
    if !status(&mut clippy)?.success() {
        bail!("clippy found problems in the user-space crates (above); fix them, the run needs them clean");
    }
    let mut ebpf = crate::compile::ebpf_cargo("clippy");
    ebpf.args(["--", "-D", "warnings"]);
    if !status(&mut ebpf)?.success() {
        bail!("clippy found problems in lb-ebpf (above); fix them, the run needs them clean");
    }
    Ok(())
}

/// Runs `cargo test --workspace --exclude lb-ebpf --no-fail-fast -- --test-threads=1 --include-ignored [ARGS]`:
/// the tests that need root are `#[ignore]`d for plain `cargo test` and run here.
/// `deb` is the package built from the binary under test (`XLB_DEB` for the service test).
pub fn run(paths: &Paths, deb: &Path, harness_args: &[OsString]) -> Result<()> {
    let started = Instant::now();
    let before = xlb_namespaces()?;
    if before.is_empty() {
        println!("network namespaces named *xlb* before the tests: none");
    } else {
        println!(
            "warning: network namespaces named *xlb* exist before the tests (left by an earlier run, or another run's): {}",
            join(&before)
        );
    }

    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast", "--"])
        .args(["--test-threads=1", "--include-ignored"])
        .args(harness_args);
    paths.xlb_bin_env(&mut cmd);
    paths.user_env(&mut cmd);
    cmd.env("XLB_DEB", deb);
    let (status, totals) = run_and_count(&mut cmd)?;

    let after = xlb_namespaces()?;
    let leftovers = classify(&before, &after, |pid| Path::new(&format!("/proc/{pid}")).exists());
    if !leftovers.preexisting.is_empty() {
        println!("namespaces that were there before the tests and still are: {}", join(&leftovers.preexisting));
    }
    if !leftovers.foreign.is_empty() {
        println!("namespaces of other processes still running (not this run's): {}", join(&leftovers.foreign));
    }
    if !leftovers.left.is_empty() {
        println!("namespaces this run left behind: {}", join(&leftovers.left));
        for name in &leftovers.left {
            println!("    remove with: ip netns delete {name}");
        }
    }

    let elapsed = minutes(started.elapsed());
    let tests_ok = status.success();
    let ns_ok = leftovers.left.is_empty();
    let namespaces = if ns_ok {
        "no xlb namespace left".to_owned()
    } else {
        format!("{} xlb namespace(s) left", leftovers.left.len())
    };
    let verdict = if tests_ok && ns_ok { "PASSED" } else { "FAILED" };
    let failed_list = if totals.failed_names.is_empty() {
        String::new()
    } else {
        format!(" (failed: {})", totals.failed_names.join(", "))
    };
    println!(
        "xtask test {verdict}: {} passed, {} failed, {} ignored in {} test runs{failed_list}; cargo test {}; {namespaces}; {elapsed}",
        totals.passed,
        totals.failed,
        totals.ignored,
        totals.runs,
        if tests_ok { "succeeded".to_owned() } else { format!("failed ({status})") },
    );
    if !tests_ok {
        bail!("tests failed");
    }
    if !ns_ok {
        bail!("the tests left network namespaces behind: {}", join(&leftovers.left));
    }
    Ok(())
}

/// Counts from the harness's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    runs: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
    failed_names: Vec<String>,
}

impl Totals {
    fn read_line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.runs += 1;
            // "ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            let counts = rest.split_once(". ").map_or(rest, |(_, counts)| counts);
            for part in counts.split("; ") {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
            self.failed_names.push(name.to_owned());
        }
    }
}

/// Runs `cmd`, passing its stdout through while counting test results.
fn run_and_count(cmd: &mut Command) -> Result<(std::process::ExitStatus, Totals)> {
    announce(cmd);
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| spawn_failed(cmd))?;
    let mut totals = Totals::default();
    let mut reader = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    let mut out = std::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).context("reading cargo test's output")?;
        if n == 0 {
            break;
        }
        out.write_all(&line)?;
        out.flush()?;
        totals.read_line(&String::from_utf8_lossy(&line));
    }
    let status = child.wait().with_context(|| format!("waiting for `{}`", display(cmd)))?;
    Ok((status, totals))
}

/// Names of the network namespaces whose name contains "xlb".
fn xlb_namespaces() -> Result<BTreeSet<String>> {
    let out = probe(Command::new("ip").args(["netns", "list"]))?
        .context("`ip` not found: install iproute2 (cargo xtask setup does)")?;
    if !out.status.success() {
        bail!("`ip netns list` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_netns_list(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip netns list` prints `name` or `name (id: N)` per line.
fn parse_netns_list(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.contains("xlb"))
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Leftovers {
    /// There before the run, and still there.
    preexisting: Vec<String>,
    /// New, named `xlb-<pid>-...` after a process that still runs: another
    /// run's (this run's test processes have all exited by now).
    foreign: Vec<String>,
    /// New and not accounted for: this run left them.
    left: Vec<String>,
}

fn classify(before: &BTreeSet<String>, after: &BTreeSet<String>, alive: impl Fn(u32) -> bool) -> Leftovers {
    let mut out = Leftovers::default();
    for name in after {
        if before.contains(name) {
            out.preexisting.push(name.clone());
        } else if owner_pid(name).is_some_and(|pid| pid != std::process::id() && alive(pid)) {
            out.foreign.push(name.clone());
        } else {
            out.left.push(name.clone());
        }
    }
    out
}

/// The `<pid>` of a testbed namespace name `xlb-<pid>-<n>-<role>`.
fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.splitn(4, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("xlb"), Some(pid), Some(n)) if n.parse::<u32>().is_ok() => pid.parse().ok(),
        _ => None,
    }
}

fn join<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_over_test_runs() {
        let mut t = Totals::default();
        for line in [
            "running 3 tests\n",
            "test a ... ok\n",
            "test r ... ignored, needs root (network namespaces): cargo xtask test runs it\n",
            "test b::c ... FAILED\n",
            "test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
            "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s\n",
        ] {
            t.read_line(line);
        }
        assert_eq!(t, Totals { runs: 2, passed: 7, failed: 1, ignored: 1, failed_names: vec!["b::c".to_owned()] });
    }

    #[test]
    fn netns_list_keeps_xlb_names() {
        let names = parse_netns_list("xlb-12-0-client (id: 3)\nother\nxlb-12-0-lb\n");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["xlb-12-0-client", "xlb-12-0-lb"]);
    }

    #[test]
    fn leftovers_are_new_and_ownerless() {
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let before = set(&["xlb-1-0-old"]);
        let after = set(&["xlb-1-0-old", "xlb-2-0-lb", "xlb-3-1-web1", "my-xlb"]);
        let alive = |pid: u32| pid == 3;
        let l = classify(&before, &after, alive);
        assert_eq!(l.preexisting, ["xlb-1-0-old"]);
        assert_eq!(l.foreign, ["xlb-3-1-web1"]);
        assert_eq!(l.left, ["my-xlb", "xlb-2-0-lb"]);
    }

    #[test]
    fn owner_pid_of_testbed_names() {
        assert_eq!(owner_pid("xlb-4242-0-client"), Some(4242));
        assert_eq!(owner_pid("xlb-4242-7-web-2"), Some(4242));
        assert_eq!(owner_pid("xlb-bench"), None);
        assert_eq!(owner_pid("foo-1-2-x"), None);
    }
}
