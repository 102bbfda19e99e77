//! Health checks: one task per checked backend, spread over the interval,
//! each probing the backend's own address ([`probe`]) and sending what it
//! found as a [`Report`] over a channel. One task elsewhere (the daemon's)
//! receives the reports, applies rise/fall [`hysteresis`] and rewrites the
//! tables: checks know nothing of the balancer and never take its lock.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash as _, Hasher as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinSet},
};

pub use self::probe::{probe, Probe, Prober};
use crate::config::HealthConfig;

pub mod hysteresis;
pub mod probe;
pub mod tls;

/// Where a backend's checks report: its service's id and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: u32,
    pub address: SocketAddr,
}

/// One check's result, as sent to whoever applies it.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: Target,
    pub probe: Probe,
}

/// Reports waiting to be applied before checks wait for room.
pub const REPORT_QUEUE: usize = 1024;

/// The running check tasks, in a `JoinSet` that owns them; they send their
/// reports to `reports`.
pub struct Checker {
    tasks: JoinSet<()>,
    running: HashMap<Target, (HealthConfig, AbortHandle)>,
    reports: mpsc::Sender<Report>,
}

impl Checker {
    /// A checker whose checks report to `reports`.
    pub fn new(reports: mpsc::Sender<Report>) -> Self {
        Self { tasks: JoinSet::new(), running: HashMap::new(), reports }
    }

    /// Makes the running checks match `wanted`: starts the checks of targets
    /// that have none, restarts the ones whose settings changed, stops the
    /// others. Must run inside the tokio runtime.
    pub fn sync(&mut self, wanted: HashMap<Target, HealthConfig>) {
        self.running.retain(|t, (hc, task)| {
            let keep = wanted.get(t) == Some(hc);
            if !keep {
                task.abort();
            }
            keep
        });
        // Reap the tasks that ended (aborted ones included).
        while self.tasks.try_join_next().is_some() {}
        for (t, hc) in wanted {
            if !self.running.contains_key(&t) {
                let task = self.tasks.spawn(check_loop(t, hc.clone(), self.reports.clone()));
                self.running.insert(t, (hc, task));
            }
        }
    }

    /// Number of running check tasks.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every check and waits until each has ended.
    pub async fn stop(&mut self) {
        self.running.clear();
        self.tasks.shutdown().await;
    }
}

/// A small xorshift generator: jitter needs no more.
struct Jitter(u64);

impl Jitter {
    fn new(t: &Target) -> Self {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        std::process::id().hash(&mut h);
        Self(h.finish() | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        let ns = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % ns)
    }
}

/// The next check's start: one interval after this one's, give or take 10%,
/// so that checks of many backends do not fall into lockstep.
pub fn next_start(started: Instant, interval: Duration, jitter: Duration) -> Instant {
    started + interval - interval / 10 + jitter
}

/// Probes `target` every `hc.interval_ms` (jittered) and reports each
/// result, until the task is aborted or nobody receives reports any more.
async fn check_loop(target: Target, hc: HealthConfig, reports: mpsc::Sender<Report>) {
    let interval = Duration::from_millis(hc.interval_ms);
    let mut jitter = Jitter::new(&target);
    // The first check comes at a random point of the first interval.
    tokio::time::sleep(jitter.below(interval)).await;
    let mut prober = Prober::new(target.address, hc);
    loop {
        let started = Instant::now();
        let probe = prober.probe().await;
        if reports.send(Report { target, probe }).await.is_err() {
            return;
        }
        let next = next_start(started, interval, jitter.below(interval / 5));
        // A late wake-up never makes two checks follow each other closely.
        let earliest = Instant::now() + interval / 2;
        tokio::time::sleep_until(next.max(earliest).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    #[test]
    fn jittered_starts_stay_within_ten_percent() {
        let t = Target { service: 1, address: "198.18.1.11:80".parse().unwrap() };
        let mut j = Jitter::new(&t);
        let interval = Duration::from_millis(200);
        let now = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = next_start(now, interval, j.below(interval / 5)) - now;
            assert!(d >= Duration::from_millis(180) && d < Duration::from_millis(220), "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 20, "jitter too coarse: {seen:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn checks_report_over_the_channel_and_stop_when_told() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut checker = Checker::new(tx);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let target = Target { service: 7, address };
        let hc = HealthConfig { check: CheckKind::Tcp, interval_ms: 100, timeout_ms: 50, ..Default::default() };
        checker.sync(HashMap::from([(target, hc)]));
        assert_eq!(checker.len(), 1);
        let r = rx.recv().await.expect("a report");
        assert_eq!((r.target, r.probe.ok, r.probe.detail.as_str()), (target, false, "refused"));
        checker.sync(HashMap::new());
        assert!(checker.is_empty());
        checker.stop().await;
        // Every sender is gone once the checks have ended and the checker is dropped.
        drop(checker);
        while rx.recv().await.is_some() {}
    }
}
