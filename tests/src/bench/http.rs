//! HTTP load with wrk from the client namespace, and haproxy as a contender.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{bench::poll, netns::BgProcess, xlb::TempDir, Netns};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
}

/// wrk's settings.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// `Connection: close` on every request: one TCP connection per request.
    pub close: bool,
    /// Think time: each connection waits this many milliseconds after an
    /// answer before it sends its next request (0: none, wrk's closed loop at
    /// full speed). Caps the offered load at about `connections / think`.
    pub think_ms: u32,
}

/// Runs wrk against `url` from `ns`.
pub fn wrk(ns: &Netns, url: &str, load: Load) -> Result<WrkResult> {
    let (t, c, d) = (
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.duration.as_secs().max(1)),
    );
    let mut argv = vec!["wrk", &t, &c, &d, "--latency", "--timeout", "2s"];
    if load.close {
        argv.extend(["-H", "Connection: close"]);
    }
    let think = match load.think_ms {
        0 => None,
        ms => Some(think_file(ms)?),
    };
    if let Some((_, path)) = &think {
        argv.extend(["-s", path]);
    }
    argv.push(url);
    let out = ns.exec_timeout(&argv, load.duration + Duration::from_secs(15))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// wrk's Lua hook for a think time: `delay()` is called after every answer and
/// returns the milliseconds to wait before the connection's next request (wrk
/// starts the latency clock when the request is written, so the wait is not
/// counted as latency).
fn think_script(ms: u32) -> String {
    format!("function delay()\n  return {ms}\nend\n")
}

/// Writes [`think_script`] into a new temporary directory (kept while wrk
/// runs); returns it and the script's path.
fn think_file(ms: u32) -> Result<(TempDir, String)> {
    let dir = TempDir::new("wrk")?;
    let path = dir.path().join("think.lua");
    std::fs::write(&path, think_script(ms)).with_context(|| format!("writing {}", path.display()))?;
    let path = path.to_str().context("temporary path is not UTF-8")?.to_owned();
    Ok((dir, path))
}

/// Reads `N requests in`, `Requests/sec:`, the 99% latency line and errors.
pub fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult { requests: 0, rps: f64::NAN, p99_ms: f64::NAN, errors: 0 };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", ..] => r.requests = n.parse().ok()?,
            ["Requests/sec:", v] => r.rps = v.parse().ok()?,
            ["99%", v] => r.p99_ms = latency_ms(v)?,
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (r.requests > 0 && r.rps.is_finite() && r.p99_ms.is_finite()).then_some(r)
}

/// wrk prints latencies as `850.00us`, `1.23ms`, `2.00s`, `1.5m`.
fn latency_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Debian's haproxy in `mode tcp`, `balance roundrobin`, in a namespace.
pub struct Haproxy {
    process: BgProcess,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts haproxy in `ns` listening on `bind`, spreading connections over
    /// `backends`; returns once it accepts connections.
    pub fn start(ns: &Netns, bind: SocketAddr, backends: &[SocketAddr]) -> Result<Haproxy> {
        let dir = TempDir::new("haproxy")?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(bind, backends))?;
        let process = ns.spawn(&["haproxy", "-db", "-f", cfg.to_str().context("path")?])?;
        let mut h = Haproxy { process, _dir: dir };
        let up = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            ns.tcp_connects(bind, Duration::from_millis(200)).then_some(())
        });
        if let Some(st) = h.process.try_wait()? {
            bail!("haproxy exited at once ({st})");
        }
        up.context("haproxy does not accept connections within 5 s")?;
        Ok(h)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stop(mut self) {
        self.process.stop();
    }
}

fn haproxy_config(bind: SocketAddr, backends: &[SocketAddr]) -> String {
    let servers: String = backends.iter().enumerate().map(|(i, b)| format!("    server web{} {b}\n", i + 1)).collect();
    format!(
        "# generated by xlb-testbed (benchmark contender)
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend www
    bind {bind}
    default_backend webs
backend webs
    balance roundrobin
{servers}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://198.18.0.10/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   710.91us  300.00us   9.87ms   91.00%
    Req/Sec    45.10k     2.00k   50.00k    70.00%
  Latency Distribution
     50%  650.00us
     75%  800.00us
     90%    1.00ms
     99%    2.31ms
  180400 requests in 2.00s, 28.04MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  90200.00
Transfer/sec:     14.02MB
";

    #[test]
    fn reads_wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 180400);
        assert_eq!(r.rps, 90200.0);
        assert!((r.p99_ms - 2.31).abs() < 1e-9);
        assert_eq!(r.errors, 4);
        assert!(parse_wrk("nothing here").is_none());
    }

    #[test]
    fn think_script_returns_the_delay() {
        assert_eq!(think_script(2), "function delay()\n  return 2\nend\n");
    }

    #[test]
    fn latency_units() {
        assert_eq!(latency_ms("850.00us"), Some(0.85));
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
        assert_eq!(latency_ms("12"), None);
    }

    #[test]
    fn haproxy_config_lists_every_backend() {
        let cfg = haproxy_config(
            "198.18.0.10:80".parse().unwrap(),
            &["198.18.1.11:80".parse().unwrap(), "198.18.1.12:80".parse().unwrap()],
        );
        assert!(cfg.contains("bind 198.18.0.10:80"), "{cfg}");
        assert!(cfg.contains("server web2 198.18.1.12:80"), "{cfg}");
        assert!(cfg.contains("balance roundrobin") && cfg.contains("mode tcp"), "{cfg}");
    }
}
