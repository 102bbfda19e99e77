//! `cargo xtask bench`: builds xlb and the benchmark binaries (xlb-testbed's
//! examples `xdp_cost`, `bench_maglev`, `bench_net`), runs them, and turns
//! the `FIG`/`MISSING`/`METHOD` lines they print into `target/bench/`
//! `report.json` (flat: name -> median, plus `NAME_min`/`NAME_max`),
//! `report.md` (every figure with min and max, targets and ratios, methods)
//! and `report.png` (the side-by-side figures as bars).

mod chart;

use std::{
    ffi::OsString,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{announce, cargo, run, spawn_failed},
    compile::Paths,
};

/// The benchmark programs, in the order they run.
const PROGRAMS: &[&str] = &["xdp_cost", "bench_maglev", "bench_net"];

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub quick: bool,
    pub reps: Option<usize>,
}

impl Options {
    pub fn parse(args: &[OsString]) -> Result<Options> {
        let mut o = Options::default();
        let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--reps" => {
                    let n = it.next().context("--reps needs a number")?;
                    let n: usize = n.parse().with_context(|| format!("--reps {n}: not a number"))?;
                    if n < 5 {
                        bail!("--reps {n}: every figure is the median of at least 5 repetitions");
                    }
                    o.reps = Some(n);
                }
                other => bail!("unknown argument {other:?}; cargo xtask bench [--quick] [--reps N]"),
            }
        }
        Ok(o)
    }

    fn program_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.quick {
            v.push("--quick".to_owned());
        }
        if let Some(n) = self.reps {
            v.extend(["--reps".to_owned(), n.to_string()]);
        }
        v
    }
}

/// One figure: median, min, max over `reps` repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub reps: usize,
}

/// Everything the programs reported.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Results {
    pub figures: Vec<Figure>,
    pub missing: Vec<(String, String)>,
    pub methods: Vec<(String, String)>,
}

impl Results {
    /// Reads one output line; other lines are ignored.
    pub fn read_line(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("FIG") => {
                let w: Vec<&str> = words.collect();
                if let [name, median, min, max, reps] = w.as_slice() {
                    if let (Ok(median), Ok(min), Ok(max), Ok(reps)) =
                        (median.parse(), min.parse(), max.parse(), reps.parse())
                    {
                        self.figures.push(Figure { name: (*name).to_owned(), median, min, max, reps });
                    }
                }
            }
            Some(kind @ ("MISSING" | "METHOD")) => {
                let Some(name) = words.next() else { return };
                let text = words.collect::<Vec<_>>().join(" ");
                let list = if kind == "MISSING" { &mut self.missing } else { &mut self.methods };
                list.push((name.to_owned(), text));
            }
            _ => {}
        }
    }

    pub fn get(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    fn median(&self, name: &str) -> Option<f64> {
        self.get(name).map(|f| f.median)
    }
}

pub fn run_bench(paths: &Paths, opts: &Options) -> Result<()> {
    let started = Instant::now();
    build_programs(paths)?;
    let built = started.elapsed();
    let mut results = Results::default();
    let mut failed = Vec::new();
    for program in PROGRAMS {
        let ok = run_program(paths, program, &opts.program_args(), &mut results)?;
        if !ok {
            failed.push(*program);
        }
    }
    let total = started.elapsed();
    let dir = paths.target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let header = Header { quick: opts.quick, build: built, measure: total - built, kernel: kernel(), cpus: cpus() };
    write(&dir.join("report.json"), &json(&results))?;
    write(&dir.join("report.md"), &markdown(&results, &header))?;
    chart::write_png(&dir.join("report.png"), &results)?;
    print_table(&results);
    println!(
        "bench: {} figures, {} missing; build {}, measurements {}; reports in {}",
        results.figures.len(),
        results.missing.len(),
        secs(built),
        secs(total - built),
        dir.display()
    );
    if !failed.is_empty() {
        bail!("benchmark program(s) failed: {} (their figures are missing from the report)", failed.join(", "));
    }
    Ok(())
}

/// `cargo build --release -p xlb-testbed --example ...`.
fn build_programs(paths: &Paths) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--release", "-p", "xlb-testbed"]);
    for p in PROGRAMS {
        c.args(["--example", p]);
    }
    paths.user_env(&mut c);
    run(&mut c)
}

/// Runs one program, echoing its output, collecting its result lines.
/// Returns whether it exited 0.
fn run_program(paths: &Paths, program: &str, args: &[String], results: &mut Results) -> Result<bool> {
    let bin = paths.target.join("release").join("examples").join(program);
    let mut c = Command::new(&bin);
    c.args(args).current_dir(&paths.root).stdout(Stdio::piped());
    paths.xlb_bin_env(&mut c);
    println!("== bench: {program}");
    announce(&c);
    let mut child = c.spawn().with_context(|| spawn_failed(&c))?;
    let reader = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    for line in reader.lines() {
        let line = line.context("reading the benchmark's output")?;
        println!("{line}");
        results.read_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        eprintln!("warning: {program} failed ({status})");
    }
    Ok(status.success())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

/// The flat JSON object: name -> median, NAME_min, NAME_max.
pub fn json(r: &Results) -> String {
    let mut entries = Vec::new();
    for f in r.figures.iter().filter(|f| f.median.is_finite() && f.min.is_finite() && f.max.is_finite()) {
        entries.push(format!("  \"{}\": {}", f.name, f.median));
        entries.push(format!("  \"{}_min\": {}", f.name, f.min));
        entries.push(format!("  \"{}_max\": {}", f.name, f.max));
    }
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

/// What a figure is measured in.
pub fn unit(name: &str) -> &'static str {
    const UNITS: &[(&str, &str)] = &[
        ("xdp_ns_", "ns/packet"),
        ("fwd_pps_", "packets/s"),
        ("http_rps_", "requests/s"),
        ("http_cps_", "connections/s"),
        ("http_p99_ms_", "ms"),
        ("lb_cpu_fwd_", "CPU s per M packets"),
        ("lb_cpu_http_rps_", "CPU s per M requests"),
        ("lb_cpu_http_cps_", "CPU s per M connections"),
        ("maglev_build_ms_", "ms"),
        ("failover_ms", "ms"),
    ];
    UNITS.iter().find(|(p, _)| name.starts_with(p)).map_or("ratio", |(_, u)| u)
}

/// A goal from the issue, checked on the medians of this run.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(clippy::enum_variant_names)] // the names read as the goals they state
pub enum Goal {
    /// figure <= k x reference
    AtMostTimes(&'static str, f64),
    /// figure >= k x reference
    AtLeastTimes(&'static str, f64),
    /// figure <= value
    AtMost(f64),
}

/// (figure name, or prefix ending in `*`; goal).
pub const TARGETS: &[(&str, Goal)] = &[
    ("xdp_ns_established_*", Goal::AtMostTimes("xdp_ns_floor", 2.4)),
    ("xdp_ns_new_flow_*", Goal::AtMostTimes("xdp_ns_floor", 4.8)),
    ("xdp_ns_not_vip*", Goal::AtMostTimes("xdp_ns_floor", 1.6)),
    ("fwd_pps_xlb_nat", Goal::AtLeastTimes("fwd_pps_nftables_dnat", 3.0)),
    ("http_rps_xlb_nat", Goal::AtLeastTimes("http_rps_haproxy", 1.2)),
    ("http_rps_xlb_nat", Goal::AtLeastTimes("http_rps_direct", 0.9)),
    ("lb_cpu_http_rps_xlb_nat", Goal::AtMostTimes("lb_cpu_http_rps_haproxy", 1.0)),
    ("maglev_build_ms_65537_n1000", Goal::AtMost(1.8)),
    ("maglev_max_over_mean_65537_n1000", Goal::AtMost(1.01)),
    ("maglev_disruption_ratio_n100", Goal::AtMost(1.5)),
    ("failover_ms", Goal::AtMost(1000.0)),
];

/// Ratios shown for information (no target): (figure, reference).
const SIDE_BY_SIDE: &[(&str, &str)] = &[
    ("fwd_pps_xlb_nat", "fwd_pps_generator_only"),
    ("fwd_pps_xlb_nat_one_arm", "fwd_pps_xlb_nat"),
    ("fwd_pps_nftables_dnat", "fwd_pps_generator_only"),
    ("lb_cpu_fwd_xlb_nat", "lb_cpu_fwd_nftables_dnat"),
    ("http_cps_xlb_nat", "http_cps_haproxy"),
    ("http_cps_xlb_nat", "http_cps_direct"),
    ("http_rps_haproxy", "http_rps_direct"),
    ("lb_cpu_http_cps_xlb_nat", "lb_cpu_http_cps_haproxy"),
    ("http_p99_ms_xlb_nat", "http_p99_ms_haproxy"),
];

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// One checked target: the text of the goal, the ratio or value compared,
/// and whether it is met (`None` when a figure is missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub figure: String,
    pub value: Option<f64>,
    pub goal: String,
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

pub fn checks(r: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    for (pattern, goal) in TARGETS {
        let names: Vec<String> = if pattern.ends_with('*') {
            r.figures.iter().filter(|f| matches(pattern, &f.name)).map(|f| f.name.clone()).collect()
        } else {
            vec![(*pattern).to_owned()]
        };
        for name in names {
            out.push(check(r, &name, *goal));
        }
    }
    out
}

fn check(r: &Results, name: &str, goal: Goal) -> Check {
    let value = r.median(name);
    let (goal_text, ratio, met) = match goal {
        Goal::AtMostTimes(reference, k) => {
            let ratio = value.zip(r.median(reference)).map(|(v, base)| v / base);
            (format!("<= {k} x {reference}"), ratio, ratio.map(|x| x <= k))
        }
        Goal::AtLeastTimes(reference, k) => {
            let ratio = value.zip(r.median(reference)).map(|(v, base)| v / base);
            (format!(">= {k} x {reference}"), ratio, ratio.map(|x| x >= k))
        }
        Goal::AtMost(limit) => (format!("<= {limit}"), None, value.map(|v| v <= limit)),
    };
    Check { figure: name.to_owned(), value, goal: goal_text, ratio, met }
}

pub struct Header {
    pub quick: bool,
    pub build: Duration,
    pub measure: Duration,
    pub kernel: String,
    pub cpus: usize,
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), num)
}

pub fn markdown(r: &Results, h: &Header) -> String {
    let mut s = String::new();
    let kind = if h.quick { "quick (--quick)" } else { "full" };
    let _ = writeln!(s, "# xlb benchmark report\n");
    let _ = writeln!(
        s,
        "Run: {kind}; kernel {}; {} CPUs (shared with other work: expect noise, compare ratios within this run); \
         build {}, measurements {}. Every figure is the median of its repetitions (min and max shown).\n",
        h.kernel,
        h.cpus,
        secs(h.build),
        secs(h.measure)
    );
    let _ = writeln!(s, "## Targets (medians of this run)\n");
    let _ = writeln!(s, "| figure | median | target | ratio | met |\n| --- | ---: | --- | ---: | --- |");
    for c in checks(r) {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "missing",
        };
        let _ = writeln!(s, "| {} | {} | {} | {} | {met} |", c.figure, opt(c.value), c.goal, opt(c.ratio));
    }
    let _ = writeln!(
        s,
        "\nFor comparison (issue 4): Katran on this machine takes 180 ns established, 368 ns new flow, 110 ns non-VIP \
         against a 61 ns floor (2.95x, 6.03x, 1.80x).\n"
    );
    let _ = writeln!(s, "## Side by side (no target)\n");
    let _ = writeln!(s, "| figure | / reference | ratio |\n| --- | --- | ---: |");
    for (a, b) in SIDE_BY_SIDE {
        let ratio = r.median(a).zip(r.median(b)).map(|(x, y)| x / y);
        let _ = writeln!(s, "| {a} | {b} | {} |", opt(ratio));
    }
    let _ = writeln!(s, "\n## All figures\n");
    let _ = writeln!(s, "| figure | median | min | max | reps | unit |\n| --- | ---: | ---: | ---: | ---: | --- |");
    for f in &r.figures {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            num(f.median),
            num(f.min),
            num(f.max),
            f.reps,
            unit(&f.name)
        );
    }
    if !r.missing.is_empty() {
        let _ = writeln!(s, "\n## Missing figures\n");
        for (name, why) in &r.missing {
            let _ = writeln!(s, "- `{name}`: {why}");
        }
    }
    let _ = writeln!(s, "\n## Methods\n");
    for (what, how) in &r.methods {
        let _ = writeln!(s, "- **{what}**: {how}");
    }
    s
}

fn print_table(r: &Results) {
    println!("\n{:<36} {:>12} {:>12} {:>12}  unit", "figure", "median", "min", "max");
    for f in &r.figures {
        println!("{:<36} {:>12} {:>12} {:>12}  {}", f.name, num(f.median), num(f.min), num(f.max), unit(&f.name));
    }
    for (name, why) in &r.missing {
        println!("{name:<36} {:>12}  ({why})", "missing");
    }
    println!("\n{:<36} {:>12}  {:<40} {:>8}  met", "target", "median", "goal", "ratio");
    for c in checks(r) {
        let met = c.met.map_or("missing", |m| if m { "yes" } else { "NO" });
        println!("{:<36} {:>12}  {:<40} {:>8}  {met}", c.figure, opt(c.value), c.goal, opt(c.ratio));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut r = Results::default();
        for l in [
            "FIG xdp_ns_floor 50 48 55 5",
            "FIG xdp_ns_established_tcp_v4 100 90 120 5",
            "FIG xdp_ns_new_flow_tcp_v4 300 280 310 5",
            "some other line",
            "FIG fwd_pps_xlb_nat 3000000 2900000 3100000 5",
            "FIG fwd_pps_nftables_dnat 600000 590000 610000 5",
            "MISSING failover_ms no answer from the backup within 5 s",
            "METHOD xdp_ns BPF_PROG_TEST_RUN, repeat=1",
            "FIG broken 1 2",
        ] {
            r.read_line(l);
        }
        r
    }

    #[test]
    fn reads_result_lines() {
        let r = results();
        assert_eq!(r.figures.len(), 5);
        assert_eq!(r.get("xdp_ns_floor").unwrap().max, 55.0);
        assert_eq!(r.missing, [("failover_ms".to_owned(), "no answer from the backup within 5 s".to_owned())]);
        assert_eq!(r.methods[0].0, "xdp_ns");
    }

    #[test]
    fn json_is_flat_with_min_and_max() {
        let j = json(&results());
        assert!(j.starts_with("{\n") && j.ends_with("}\n"), "{j}");
        assert!(j.contains("\"xdp_ns_floor\": 50,\n"), "{j}");
        assert!(j.contains("\"xdp_ns_floor_min\": 48"), "{j}");
        assert!(!j.contains("failover_ms"), "{j}");
        assert_eq!(j.matches(':').count(), 15);
    }

    #[test]
    fn targets_take_ratios_from_the_same_run() {
        let c = checks(&results());
        let est = c.iter().find(|c| c.figure == "xdp_ns_established_tcp_v4").unwrap();
        assert_eq!((est.ratio, est.met), (Some(2.0), Some(true)));
        let new = c.iter().find(|c| c.figure == "xdp_ns_new_flow_tcp_v4").unwrap();
        assert_eq!((new.ratio, new.met), (Some(6.0), Some(false)));
        let fwd = c.iter().find(|c| c.figure == "fwd_pps_xlb_nat").unwrap();
        assert_eq!(fwd.met, Some(true));
        let failover = c.iter().find(|c| c.figure == "failover_ms").unwrap();
        assert_eq!(failover.met, None);
    }

    #[test]
    fn options() {
        let o = Options::parse(&["--quick".into(), "--reps".into(), "7".into()]).unwrap();
        assert_eq!(o.program_args(), ["--quick", "--reps", "7"]);
        assert!(Options::parse(&["--reps".into(), "3".into()]).is_err());
        assert!(Options::parse(&["--fast".into()]).is_err());
    }

    #[test]
    fn units() {
        assert_eq!(unit("xdp_ns_floor"), "ns/packet");
        assert_eq!(unit("lb_cpu_http_cps_haproxy"), "CPU s per M connections");
        assert_eq!(unit("maglev_disruption_ratio_n100"), "ratio");
    }
}
