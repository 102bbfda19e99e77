//! HTTP client helpers: `curl` run inside a namespace (normally the client's).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// `curl --connect-timeout` used by every helper, in seconds.
pub const CONNECT_TIMEOUT_SECS: u32 = 2;
/// `curl --max-time` (per transfer) used by every helper, in seconds.
pub const MAX_TIME_SECS: u32 = 5;
/// Time limit of one [`Client::answer`]: short, so that a lost SYN costs a
/// retry rather than a second (failover timing polls with it).
pub const ANSWER_CAP: Duration = Duration::from_millis(300);
/// Most transfers one [`Client::get_many`] call may ask for.
pub const MAX_TRANSFERS: usize = 100_000;

/// Separates curl's `--write-out` records from the bodies (ASCII record separator).
const RS: char = '\u{1e}';

/// `http://ADDR:PORT/PATH`, with brackets around IPv6 addresses. `path` should
/// start with `/`.
pub fn http_url(addr: IpAddr, port: u16, path: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("http://{a}:{port}{path}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}{path}"),
    }
}

/// One HTTP transfer as curl saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status (0 if no response arrived).
    pub status: u16,
    /// Response body.
    pub body: String,
    /// New connections curl opened for this transfer (0 when it reused one).
    pub num_connects: u32,
    /// Client-side source port of the connection used.
    pub local_port: u16,
    /// The address curl connected to.
    pub remote_ip: String,
}

/// Runs curl inside a namespace. Every transfer has a connect timeout of
/// [`CONNECT_TIMEOUT_SECS`] and a time limit of [`MAX_TIME_SECS`]; every curl
/// process is killed if it overruns the sum of its transfers' limits.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    ns: &'a Netns,
}

impl<'a> Client<'a> {
    /// A client running its commands in `ns`.
    pub fn new(ns: &'a Netns) -> Self {
        Client { ns }
    }

    /// The namespace the client runs in.
    pub fn ns(&self) -> &'a Netns {
        self.ns
    }

    /// GET `url` once; the body, or an error naming the URL, the HTTP status or
    /// curl's error (connection refused, timeout, ...). Non-2xx is an error.
    pub fn curl(&self, url: &str) -> Result<String> {
        let reply = self.get_one(url, None)?;
        Ok(reply.body)
    }

    /// GET `url` once from source port `local_port` (`curl --local-port`), so
    /// repeated calls are the same flow (same 5-tuple). The client closes
    /// first; repeating a call at once needs a namespace that keeps no TIME_WAIT
    /// sockets (`net.ipv4.tcp_max_tw_buckets=0`, as the topology's client has),
    /// otherwise the bind fails with "Address already in use".
    pub fn curl_with_local_port(&self, url: &str, local_port: u16) -> Result<String> {
        let reply = self.get_one(url, Some(local_port))?;
        if reply.local_port != local_port {
            bail!("curl {url}: used local port {} instead of {local_port}", reply.local_port);
        }
        Ok(reply.body)
    }

    /// One GET of `url` on a new connection, capped at [`ANSWER_CAP`]: the
    /// body, or `None` on any failure (refused, timeout, HTTP error).
    pub fn answer(&self, url: &str) -> Option<String> {
        let cap = format!("{}", ANSWER_CAP.as_secs_f64());
        let out = self
            .ns
            .exec_timeout(&["curl", "-s", "-f", "--max-time", &cap, url], ANSWER_CAP + Duration::from_secs(2))
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One GET of `url` on a new connection, capped at `cap`: the time curl
    /// took from its start to the end of the answer (its `time_total`, which
    /// leaves out the process's own start), or what went wrong (curl's exit
    /// code and message, its time).
    pub fn timed_answer(&self, url: &str, cap: Duration) -> Result<Duration, String> {
        let max = format!("{}", cap.as_secs_f64());
        let argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}", "--max-time", &max, url];
        let out = self.ns.exec_timeout(&argv, cap + Duration::from_secs(2)).map_err(|e| format!("{e:#}"))?;
        let total = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap_or(f64::NAN);
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} after {total:.3} s: {}", out.status, why.trim()));
        }
        Duration::try_from_secs_f64(total).map_err(|e| format!("curl's time_total {total}: {e}"))
    }

    /// A new connection to `url` every `step` until one is answered with
    /// `body` (compared without surrounding whitespace): the time from `since`
    /// to that answer, or `None` after `limit` or once `each` (which sees
    /// every attempt's answer, e.g. for progress output) returns false.
    pub fn until_answered(
        &self,
        url: &str,
        body: &str,
        since: Instant,
        step: Duration,
        limit: Duration,
        mut each: impl FnMut(Option<&str>) -> bool,
    ) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.answer(url);
            if got.as_deref().is_some_and(|b| b.trim() == body.trim()) {
                return Some(since.elapsed());
            }
            if !each(got.as_deref()) || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(step);
        }
    }

    /// GETs `url` `n` times over ONE keep-alive connection (one curl process) and
    /// returns the bodies in order. Fails if any transfer fails or is not 2xx, or
    /// if curl needed more than one connection.
    pub fn curl_many_keepalive(&self, url: &str, n: usize) -> Result<Vec<String>> {
        let replies = self.get_many(url, n, None, false)?;
        let connects: u32 = replies.iter().map(|r| r.num_connects).sum();
        if connects != 1 {
            bail!("curl {url} x{n}: expected one keep-alive connection, curl opened {connects}");
        }
        Ok(replies.into_iter().map(|r| r.body).collect())
    }

    /// GETs `url` `n` times in one curl process and returns every transfer's
    /// details, failing if curl reports an error or any status is not 2xx.
    /// Connections are reused unless `close_each` (sends `Connection: close`).
    /// `local_port` pins the source port (only sensible with `n == 1` or
    /// with reuse).
    pub fn get_many(&self, url: &str, n: usize, local_port: Option<u16>, close_each: bool) -> Result<Vec<HttpReply>> {
        let replies = self.transfers(url, n, local_port, close_each)?;
        for r in &replies {
            if !(200..300).contains(&r.status) {
                bail!("curl {url}: HTTP status {} (body {:?})", r.status, r.body);
            }
        }
        Ok(replies)
    }

    fn get_one(&self, url: &str, local_port: Option<u16>) -> Result<HttpReply> {
        let mut replies = self.get_many(url, 1, local_port, false)?;
        Ok(replies.remove(0))
    }

    /// Runs one curl process for `n` transfers of `url`; errors if curl fails.
    fn transfers(&self, url: &str, n: usize, local_port: Option<u16>, close_each: bool) -> Result<Vec<HttpReply>> {
        if n == 0 || n > MAX_TRANSFERS {
            bail!("transfer count {n} not in 1..={MAX_TRANSFERS}");
        }
        if url.contains(['"', '\\', '\n']) {
            bail!("unsupported characters in URL {url:?}");
        }
        let connect_timeout = CONNECT_TIMEOUT_SECS.to_string();
        let max_time = MAX_TIME_SECS.to_string();
        let write_out = format!("{RS}%{{http_code}} %{{num_connects}} %{{local_port}} %{{remote_ip}}{RS}");
        let port_s = local_port.map(|p| p.to_string());
        let mut argv = vec![
            "curl",
            "-q",
            "--silent",
            "--show-error",
            "--globoff",
            "--noproxy",
            "*",
            "--connect-timeout",
            &connect_timeout,
            "--max-time",
            &max_time,
            "--write-out",
            &write_out,
        ];
        if let Some(p) = &port_s {
            argv.extend(["--local-port", p]);
        }
        if close_each {
            argv.extend(["--header", "Connection: close"]);
        }
        // URLs come from a config on stdin so that n is not limited by argv size.
        argv.extend(["--config", "-"]);
        let config = format!("url = \"{url}\"\n").repeat(n);
        // A bound for the whole process: every transfer may use its full budget.
        let timeout = Duration::from_secs(u64::from(MAX_TIME_SECS + 1)).saturating_mul(n.min(20) as u32)
            + Duration::from_millis(20).saturating_mul(n as u32);
        let out = self
            .ns
            .exec_stdin(&argv, config.as_bytes(), timeout)
            .with_context(|| format!("curl {url} in {}", self.ns.name()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let replies = parse_write_out(&stdout).with_context(|| format!("parsing curl output for {url}: {stdout:?}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "curl {url} in {} failed ({}): {} [{} of {n} transfers answered]",
                self.ns.name(),
                out.status,
                stderr.trim(),
                replies.iter().filter(|r| r.status != 0).count()
            );
        }
        if replies.len() != n {
            bail!("curl {url}: expected {n} transfers, curl reported {}", replies.len());
        }
        Ok(replies)
    }
}

/// Splits `body RS meta RS body RS meta RS ...` into replies.
fn parse_write_out(out: &str) -> Result<Vec<HttpReply>> {
    let parts: Vec<&str> = out.split(RS).collect();
    // Trailing element after the last RS is empty (or an unterminated remnant).
    let mut replies = Vec::new();
    for pair in parts.chunks_exact(2) {
        let (body, meta) = (pair[0], pair[1]);
        let mut f = meta.split(' ');
        let mut next = |what: &str| f.next().with_context(|| format!("missing {what} in {meta:?}"));
        let status = next("http_code")?.parse().context("http_code")?;
        let num_connects = next("num_connects")?.parse().context("num_connects")?;
        let local_port = next("local_port")?.parse().unwrap_or(0);
        let remote_ip = next("remote_ip").map(str::to_owned).unwrap_or_default();
        replies.push(HttpReply { status, body: body.to_owned(), num_connects, local_port, remote_ip });
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_write_out_records() {
        let out = "web1\n\u{1e}200 1 40000 198.18.1.11\u{1e}web1\n\u{1e}200 0 40000 198.18.1.11\u{1e}";
        let r = parse_write_out(out).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].body, "web1\n");
        assert_eq!((r[0].status, r[0].num_connects, r[0].local_port), (200, 1, 40000));
        assert_eq!(r[1].num_connects, 0);
        assert_eq!(r[1].remote_ip, "198.18.1.11");
    }

    #[test]
    fn failed_transfer_has_status_zero() {
        let r = parse_write_out("\u{1e}000 1 0 \u{1e}").unwrap();
        assert_eq!(r[0].status, 0);
    }

    #[test]
    fn brackets_ipv6() {
        assert_eq!(http_url("2001:db8:1::12".parse().unwrap(), 80, "/"), "http://[2001:db8:1::12]:80/");
        assert_eq!(http_url("198.18.1.11".parse().unwrap(), 80, "/x"), "http://198.18.1.11:80/x");
    }
}

/// One HTTP/1.1 connection kept open across requests, opened from a
/// namespace (the socket stays in that namespace whichever thread uses it).
#[derive(Debug)]
pub struct KeptAlive {
    stream: std::net::TcpStream,
    addr: std::net::SocketAddr,
}

impl KeptAlive {
    /// Connects from `ns` to `addr` (timeouts: 2 s connect, 5 s per read).
    pub fn open(ns: &Netns, addr: std::net::SocketAddr) -> Result<Self> {
        let stream = ns.run_in(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
        stream.set_read_timeout(Some(Duration::from_secs(MAX_TIME_SECS as u64)))?;
        stream.set_write_timeout(Some(Duration::from_secs(MAX_TIME_SECS as u64)))?;
        Ok(Self { stream, addr })
    }

    /// The client-side port of the connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// `GET path` on this connection; returns (status, body).
    pub fn get(&mut self, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xlb-testbed\r\n\r\n", self.addr);
        self.stream.write_all(req.as_bytes()).context("sending on the kept-alive connection")?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .with_context(|| format!("bad status line in {head:?}"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok()).flatten()
                    })
                    .with_context(|| format!("no Content-Length in {head:?}"))?;
                let body_start = end + 4;
                while buf.len() < body_start + len {
                    let n = self.stream.read(&mut chunk).context("reading the body")?;
                    if n == 0 {
                        bail!("connection closed in the body");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string();
                return Ok((status, body));
            }
            let n = self.stream.read(&mut chunk).context("reading the answer")?;
            if n == 0 {
                bail!("connection closed before an answer");
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                bail!("answer too large");
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
