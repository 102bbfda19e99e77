//! CPU time spent by the lb namespace.
//!
//! Method: the lb's interfaces run threaded NAPI (`/sys/class/net/IF/threaded`),
//! so everything the kernel does for packets *received* by the lb — XDP
//! (xlb), GRO, IP forwarding, nftables, the TCP receive path up to the socket,
//! and pushing the result into the next veth's queue — runs in one kernel
//! thread per interface, `napi/IF-ID`, whose on-CPU time is in
//! `/proc/PID/schedstat` (ns). User-space contenders (haproxy, the xlb daemon)
//! add their process CPU from `/proc/PID/stat` (utime + stime, all threads;
//! that includes the send path they run in syscalls). Not included: TCP timers
//! and other softirq work that the kernel runs outside these threads.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{bench::poll, Netns};

/// `pid -> comm` of every `napi/...` kernel thread.
fn napi_threads() -> BTreeMap<u32, String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, comm(pid)?)))
        .filter(|(_, c)| c.starts_with("napi/"))
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// The threaded-NAPI kernel threads of some interfaces of one namespace.
#[derive(Debug, Clone)]
pub struct NapiThreads {
    threads: Vec<(u32, String)>,
}

impl NapiThreads {
    /// Turns threaded NAPI on for `ifaces` in `ns` (each needs NAPI already:
    /// GRO on or an XDP program) and returns the kernel threads that
    /// appeared for them. Call it for one namespace at a time: the threads are
    /// told apart from other namespaces' only by appearing now.
    pub fn enable(ns: &Netns, ifaces: &[&str]) -> Result<NapiThreads> {
        let before = napi_threads();
        for i in ifaces {
            ns.run(&["sh", "-c", &format!("echo 1 > /sys/class/net/{i}/threaded")])
                .with_context(|| format!("threaded NAPI on {i} in {}", ns.name()))?;
        }
        let ours = |all: &BTreeMap<u32, String>| -> Vec<(u32, String)> {
            all.iter()
                .filter(|(pid, c)| {
                    !before.contains_key(pid) && ifaces.iter().any(|i| c.starts_with(&format!("napi/{i}-")))
                })
                .map(|(p, c)| (*p, c.clone()))
                .collect()
        };
        let found = poll(Duration::from_secs(2), Duration::from_millis(20), || {
            let now = ours(&napi_threads());
            (now.len() >= ifaces.len()).then_some(now)
        });
        match found {
            Some(threads) => Ok(NapiThreads { threads }),
            None => bail!("no new napi kernel thread for {ifaces:?} in {} after turning threaded NAPI on", ns.name()),
        }
    }

    pub fn describe(&self) -> String {
        self.threads.iter().map(|(p, c)| format!("{c} (pid {p})")).collect::<Vec<_>>().join(", ")
    }

    /// Total on-CPU time of the threads so far; an error when one is gone
    /// (its NAPI instance was recreated, and the count would be wrong).
    pub fn cpu_ns(&self) -> Result<u64> {
        let mut total = 0;
        for (pid, name) in &self.threads {
            if comm(*pid).as_deref() != Some(name) {
                bail!("napi thread {name} (pid {pid}) is gone");
            }
            let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
            total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).context("bad schedstat")?;
        }
        Ok(total)
    }
}

/// CPU time of the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether the running kernel charges softirq work to the task it
/// interrupts (built without CONFIG_IRQ_TIME_ACCOUNTING), from
/// /boot/config-RELEASE or /proc/config.gz. `None` when neither is readable.
pub fn softirq_charged_to_task() -> Option<bool> {
    let config = kernel_config()?;
    Some(!config.lines().any(|l| l.trim() == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

fn kernel_config() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    if let Ok(c) = std::fs::read_to_string(format!("/boot/config-{}", release.trim())) {
        return Some(c);
    }
    let out = std::process::Command::new("zcat").arg("/proc/config.gz").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// User + system CPU time of process `pid` (all its threads), in ns.
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks * 1_000_000_000 / clock_ticks()).context("bad /proc/PID/stat")
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15; the command name may contain spaces).
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// What the lb spends: its NAPI threads plus optional user-space processes.
pub struct LbCpu<'a> {
    pub napi: &'a NapiThreads,
    pub pids: Vec<u32>,
}

impl LbCpu<'_> {
    pub fn now_ns(&self) -> Result<u64> {
        let mut t = self.napi.cpu_ns()?;
        for p in &self.pids {
            t += process_cpu_ns(*p)?;
        }
        Ok(t)
    }
}

/// CPU seconds per million units (packets or requests).
pub fn seconds_per_million(cpu_ns: u64, units: u64) -> Option<f64> {
    (units > 0).then(|| cpu_ns as f64 / 1e9 / (units as f64 / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(280));
    }

    #[test]
    fn per_million() {
        assert_eq!(seconds_per_million(2_000_000_000, 4_000_000), Some(0.5));
        assert_eq!(seconds_per_million(1, 0), None);
    }
}
