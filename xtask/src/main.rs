//! `cargo xtask`: set up a machine, build xlb and its Debian package, run its
//! tests, its demo, its benchmarks, and take the README's status-page screenshot.
//!
//! Every command it runs is printed first (`$ ...`). `setup`, `test` and `demo`
//! install what is missing on a Debian 12 machine when run as root.

mod bench;
mod cmd;
mod compile;
mod deb;
mod setup;
mod suite;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{compile::Paths, setup::Needs};

#[derive(Parser, Debug)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "Build, test and demo xlb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Check for and install what building and testing need (Debian packages,
    /// nightly rust-src, bpf-linker, bpffs). Quick when all is there.
    Setup,
    /// Build the XDP object (nightly, bpf-linker).
    BuildEbpf,
    /// Build the XDP object, then the `xlb` binary that embeds it.
    Build,
    /// Build the Debian package target/debian/xlb_VERSION_ARCH.deb: the binary
    /// (XDP object embedded), the systemd unit, man pages, shell completions and
    /// the example /etc/xlb/xlb.toml.
    Deb,
    /// Set up; check formatting and clippy (user space and the XDP program,
    /// warnings are errors); build; then run the whole test suite one test
    /// at a time, including the tests that need root (`--include-ignored`).
    Test {
        /// Passed to the test harness after `--test-threads=1`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then run the demo (arguments are passed through): `cargo xtask demo` the classic
    /// setup, `cargo xtask demo ha` two lbs behind a BGP router, one killed.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then take the README's screenshot of the status page
    /// (headless Chromium, a live daemon in namespaces). Needs root.
    Screenshot {
        /// Where to write the PNG (default: docs/status-page.png in the workspace).
        out: Option<PathBuf>,
    },
    /// Set up, build, then run the differential fuzzer: generated and mutated
    /// frames through the XDP program (BPF_PROG_TEST_RUN) and the reference
    /// model, which must agree on action, output bytes and counters. Needs root.
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// The seed (default: from the clock; printed, so a run can be replayed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Set up, build, then run the benchmarks: a table on stdout and
    /// target/bench/report.{json,md,png}. `--quick` (under 3 minutes),
    /// `--reps N` (at least 5). Needs root.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    add_cargo_bin_to_path();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    let paths = Paths::new();
    match task {
        Task::Setup => setup::ensure(Needs::Everything)?,
        Task::BuildEbpf => {
            setup::ensure(Needs::BpfToolchain)?;
            compile::ebpf(&paths)?;
        }
        Task::Build => {
            setup::ensure(Needs::BpfToolchain)?;
            build(&paths)?;
        }
        Task::Deb => {
            setup::ensure(Needs::Packaging)?;
            let bin = build(&paths)?;
            let deb = deb::build(&paths, &bin)?;
            println!("package: {}", deb.display());
        }
        Task::Test { args } => {
            setup::ensure(Needs::Everything)?;
            suite::lint(&paths)?;
            let bin = build(&paths)?;
            // The service test checks the package built from this very binary.
            let deb = deb::build(&paths, &bin)?;
            println!("package: {}", deb.display());
            suite::run(&paths, &deb, &args)?;
        }
        Task::Demo { args } => {
            setup::ensure(Needs::Everything)?;
            build(&paths)?;
            let mut c = cmd::cargo();
            c.args(["run", "--release", "-p", "xlb-testbed", "--example", "demo", "--"]).args(&args);
            paths.xlb_bin_env(&mut c);
            paths.user_env(&mut c);
            let status = cmd::status(&mut c)?;
            if !status.success() {
                eprintln!("error: the demo failed ({status})");
                let code = status.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0);
                return Ok(ExitCode::from(code.unwrap_or(1)));
            }
        }
        Task::Screenshot { out } => {
            if !cmd::is_root() {
                anyhow::bail!(
                    "cargo xtask screenshot builds network namespaces and attaches XDP programs: run it as root"
                );
            }
            setup::ensure(Needs::Everything)?;
            build(&paths)?;
            // The example runs in the workspace root: make a relative path mean the same there.
            let out = match out {
                None => cmd::workspace_root().join("docs").join("status-page.png"),
                Some(p) if p.is_relative() => std::env::current_dir()?.join(p),
                Some(p) => p,
            };
            let mut c = cmd::cargo();
            c.args(["run", "--release", "-p", "xlb-testbed", "--example", "screenshot", "--"]).arg(&out);
            paths.xlb_bin_env(&mut c);
            paths.user_env(&mut c);
            cmd::run(&mut c)?;
        }
        Task::Fuzz { frames, seed } => {
            if !cmd::is_root() {
                anyhow::bail!("cargo xtask fuzz builds a network namespace and loads XDP programs: run it as root");
            }
            setup::ensure(Needs::Everything)?;
            build(&paths)?;
            let mut c = cmd::cargo();
            c.args(["run", "--release", "-p", "xlb-testbed", "--example", "fuzz", "--"])
                .args(["--frames", &frames.to_string()]);
            if let Some(seed) = seed {
                c.args(["--seed", &seed.to_string()]);
            }
            paths.xlb_bin_env(&mut c);
            paths.user_env(&mut c);
            let status = cmd::status(&mut c)?;
            if !status.success() {
                eprintln!("error: the fuzzer found divergences or could not run ({status})");
                return Ok(ExitCode::FAILURE);
            }
        }
        Task::Bench { args } => {
            let opts = bench::Options::parse(&args)?;
            if !cmd::is_root() {
                anyhow::bail!("cargo xtask bench builds network namespaces and attaches XDP programs: run it as root");
            }
            setup::ensure(Needs::Everything)?;
            build(&paths)?;
            bench::run_bench(&paths, &opts)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build(paths: &Paths) -> Result<PathBuf> {
    compile::ebpf(paths)?;
    let bin = compile::user(paths)?;
    println!("xlb: {}", bin.display());
    Ok(bin)
}

/// bpf-linker is installed by `cargo install` into `$CARGO_HOME/bin`, and rustc
/// finds it on PATH: make sure that directory is there (sudo, CI).
fn add_cargo_bin_to_path() {
    let Some(cargo_bin) = cargo_home().map(|home| home.join("bin")) else { return };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == cargo_bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(cargo_bin.clone()).chain(std::env::split_paths(&path)))
        .with_context(|| format!("{} cannot go on PATH", cargo_bin.display()));
    match joined {
        Ok(joined) => {
            println!("adding {} to PATH", cargo_bin.display());
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var("PATH", joined);
        }
        Err(e) => eprintln!("warning: {e:#}"),
    }
}

fn cargo_home() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")),
    }
}
