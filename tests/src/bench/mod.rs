//! Benchmark building blocks for `cargo xtask bench` (not tests: they measure
//! and report). The example binaries `xdp_cost`, `bench_maglev` and
//! `bench_net` use them and print one machine-readable line per result:
//!
//! ```text
//! FIG <name> <median> <min> <max> <repetitions>
//! MISSING <name> <reason...>
//! METHOD <name-or-group> <text...>
//! ```
//!
//! xtask collects these lines into `target/bench/report.{json,md,png}`.

pub mod cpu;
pub mod failover;
pub mod fwd;
pub mod http;

use std::time::{Duration, Instant};

use crate::config::ConfigToml;

/// Median, min and max of a set of repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub reps: usize,
}

/// Summary of `samples` (the median of an even count is the mean of the two
/// middle values). `None` for no samples.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Summary { median, min: v[0], max: v[n - 1], reps: n })
}

/// Prints the `FIG` line of `name` (or `MISSING` when there is no sample).
pub fn emit(name: &str, samples: &[f64]) {
    match summarize(samples) {
        Some(s) => println!("FIG {name} {} {} {} {}", s.median, s.min, s.max, s.reps),
        None => missing(name, "no successful repetition"),
    }
}

/// Prints that `name` could not be measured, and why.
pub fn missing(name: &str, reason: &str) {
    println!("MISSING {name} {}", one_line(reason));
}

/// Prints how `what` was measured.
pub fn method(what: &str, text: &str) {
    println!("METHOD {what} {}", one_line(text));
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Named series of samples, emitted in insertion order.
#[derive(Debug, Default)]
pub struct Figures {
    series: Vec<(String, Vec<f64>, Option<String>)>,
}

impl Figures {
    pub fn push(&mut self, name: &str, value: f64) {
        self.entry(name).1.push(value);
    }

    /// Records why a repetition of `name` failed (reported only when no
    /// repetition succeeded).
    pub fn fail(&mut self, name: &str, reason: impl Into<String>) {
        self.entry(name).2 = Some(reason.into());
    }

    fn entry(&mut self, name: &str) -> &mut (String, Vec<f64>, Option<String>) {
        if let Some(i) = self.series.iter().position(|(n, ..)| n == name) {
            return &mut self.series[i];
        }
        self.series.push((name.to_owned(), Vec::new(), None));
        self.series.last_mut().unwrap()
    }

    pub fn samples(&self, name: &str) -> &[f64] {
        self.series.iter().find(|(n, ..)| n == name).map_or(&[], |(_, v, _)| v)
    }

    /// Prints every series: `FIG`, or `MISSING` with the last failure.
    pub fn emit_all(&self) {
        for (name, samples, why) in &self.series {
            match (samples.is_empty(), why) {
                (true, Some(why)) => missing(name, why),
                _ => emit(name, samples),
            }
        }
    }
}

/// The benchmarks' xlb configuration without services: XDP in native mode
/// on the lb's `eth0` (client side) and `eth1`, no metrics endpoint.
pub fn xlb_config() -> ConfigToml {
    ConfigToml::new().daemon("xdp_mode", "native").daemon("metrics", "")
}

/// Polls `f` every `step` until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// Command-line options shared by the bench examples: `--quick`, `--reps N`,
/// `--only SECTION` (a program's section, e.g. `fwd`, `http`, `failover`).
#[derive(Clone, Debug)]
pub struct Opts {
    pub quick: bool,
    pub reps: usize,
    pub only: Option<String>,
}

impl Opts {
    /// Parses the process arguments; at least 5 repetitions.
    pub fn from_args() -> anyhow::Result<Opts> {
        let mut opts = Opts { quick: false, reps: 5, only: None };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--reps" => {
                    let n = args.next().ok_or_else(|| anyhow::anyhow!("--reps needs a number"))?;
                    opts.reps = n.parse().map_err(|_| anyhow::anyhow!("--reps {n}: not a number"))?;
                }
                "--only" => opts.only = Some(args.next().ok_or_else(|| anyhow::anyhow!("--only needs a section"))?),
                other => anyhow::bail!("unknown argument {other:?} (expected --quick, --reps N, --only SECTION)"),
            }
        }
        if opts.reps < 5 {
            anyhow::bail!("--reps {}: every figure is the median of at least 5 repetitions", opts.reps);
        }
        Ok(opts)
    }

    /// Whether section `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.reps), (3.0, 1.0, 5.0, 3));
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn figures_keep_order_and_failures() {
        let mut f = Figures::default();
        f.push("b", 2.0);
        f.fail("a", "timed out");
        f.push("b", 4.0);
        assert_eq!(f.samples("b"), [2.0, 4.0]);
        assert!(f.samples("a").is_empty());
        assert_eq!(f.series.iter().map(|(n, ..)| n.as_str()).collect::<Vec<_>>(), ["b", "a"]);
    }
}
