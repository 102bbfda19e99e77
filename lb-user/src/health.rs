//! Health checks: one tokio task per checked backend, spread over the
//! interval, each probing the backend's own address and reporting to the
//! balancer, which applies rise/fall hysteresis and rewrites the tables when
//! a backend changes state (see [`Balancer::record_check`]).
//!
//! Probes never touch the data path: they are ordinary sockets from the lb
//! host, and the only shared step is a short lock on the balancer to record
//! the result.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash as _, Hasher as _},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use crate::{
    balancer::Balancer,
    config::{CheckKind, HealthConfig},
};

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    /// "ok", or why not: "refused", "timeout", "status 503", ...
    pub detail: String,
    pub duration: Duration,
}

/// Probes `addr` once, as `hc` says; never takes longer than `timeout_ms`.
pub async fn probe(addr: SocketAddr, hc: &HealthConfig) -> Probe {
    let start = Instant::now();
    let limit = Duration::from_millis(hc.timeout_ms);
    let result = match hc.check {
        CheckKind::None => Ok(()),
        CheckKind::Tcp => tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| "timeout".to_string())
            .and_then(|r| r.map(drop).map_err(|e| io_reason(&e))),
        CheckKind::Http => {
            tokio::time::timeout(limit, http_get(addr, hc)).await.map_err(|_| "timeout".to_string()).and_then(|r| r)
        }
    };
    let (ok, detail) = match result {
        Ok(()) => (true, "ok".to_string()),
        Err(why) => (false, why),
    };
    Probe { ok, detail, duration: start.elapsed() }
}

/// A short name for a socket error, as operators know them.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        TimedOut => "timeout".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        UnexpectedEof => "closed before answering".into(),
        _ => e.to_string(),
    }
}

/// `GET path` and compare the status code with `expect_status`.
async fn http_get(addr: SocketAddr, hc: &HealthConfig) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| io_reason(&e))?;
    let host = hc.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        hc.path
    );
    s.write_all(req.as_bytes()).await.map_err(|e| io_reason(&e))?;
    // The status line is all we need; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') {
        let n = s.read(&mut chunk).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() { "closed before answering".into() } else { "bad response".into() });
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 4096 {
            return Err("bad response".into());
        }
    }
    let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\n').unwrap_or(0)]).to_string();
    let code = parse_status_line(&line).ok_or_else(|| "bad response".to_string())?;
    if code == hc.expect_status {
        Ok(())
    } else {
        Err(format!("status {code}"))
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// Where a backend's checks report: its service's id and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: u32,
    pub address: SocketAddr,
}

/// The running check tasks, kept in step with the balancer's backends.
#[derive(Default)]
pub struct Checker {
    tasks: HashMap<Target, (HealthConfig, JoinHandle<()>)>,
}

impl Checker {
    /// Starts the checks of backends that have none, restarts the ones whose
    /// check settings changed, stops the ones of removed backends.
    pub fn sync(&mut self, bal: &Arc<Mutex<Balancer>>) {
        let wanted: HashMap<Target, HealthConfig> = {
            let b = bal.lock().unwrap();
            b.services
                .iter()
                .filter(|s| s.cfg.health.check != CheckKind::None)
                .flat_map(|s| {
                    s.backends
                        .iter()
                        .map(|be| (Target { service: s.id, address: be.cfg.address }, s.cfg.health.clone()))
                })
                .collect()
        };
        self.tasks.retain(|t, (hc, task)| {
            let keep = wanted.get(t) == Some(hc);
            if !keep {
                task.abort();
            }
            keep
        });
        for (t, hc) in wanted {
            self.tasks.entry(t).or_insert_with(|| {
                let task = tokio::spawn(check_loop(bal.clone(), t, hc.clone()));
                (hc, task)
            });
        }
    }

    /// Number of running check tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop();
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

async fn check_loop(bal: Arc<Mutex<Balancer>>, target: Target, hc: HealthConfig) {
    let interval = Duration::from_millis(hc.interval_ms);
    let mut jitter = Jitter::new(&target);
    // The first check comes at a random point of the first interval.
    tokio::time::sleep(jitter.below(interval)).await;
    loop {
        let started = Instant::now();
        let result = probe(target.address, &hc).await;
        let bal = bal.clone();
        // Recording may rewrite a table: a few ms of map writes.
        let gone = tokio::task::block_in_place(move || {
            let mut b = bal.lock().unwrap();
            match b.record_check(target.service, target.address, &result) {
                Ok(found) => !found,
                Err(e) => {
                    log::error!("applying a health check result for {}: {e:#}", target.address);
                    false
                }
            }
        });
        if gone {
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

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status_line("HTTP/2 204"), Some(204));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(""), None);
    }

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

    fn hc(check: CheckKind) -> HealthConfig {
        HealthConfig { check, timeout_ms: 300, path: "/health".into(), ..Default::default() }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn probes_name_the_reason() {
        // A port nobody listens on: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let p = probe(addr, &hc(CheckKind::Tcp)).await;
        assert_eq!((p.ok, p.detail.as_str()), (false, "refused"));

        // An HTTP server answering 503, then 200.
        for (answer, ok, detail) in
            [("HTTP/1.1 503 Busy\r\n\r\n", false, "status 503"), ("HTTP/1.1 200 OK\r\n\r\n", true, "ok")]
        {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                s.write_all(answer.as_bytes()).await.unwrap();
                String::from_utf8_lossy(&req[..n]).to_string()
            });
            let p = probe(addr, &hc(CheckKind::Http)).await;
            assert_eq!((p.ok, p.detail.as_str()), (ok, detail));
            let req = server.await.unwrap();
            assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req:?}");
            assert!(req.contains(&format!("Host: {addr}\r\n")), "{req:?}");
        }

        // A server that accepts and never answers: timeout, bounded by timeout_ms.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let p = probe(addr, &hc(CheckKind::Http)).await;
        assert_eq!((p.ok, p.detail.as_str()), (false, "timeout"));
        assert!(
            p.duration >= Duration::from_millis(300) && p.duration < Duration::from_millis(1000),
            "{:?}",
            p.duration
        );
    }
}
