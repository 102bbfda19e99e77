//! One health probe of one backend: a TCP connect, an HTTP GET, a TLS
//! handshake or an HTTP GET over TLS from the lb host, bounded by the check's
//! timeout. Probes never touch the data path.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::tls::TlsClient;
use crate::config::{CheckKind, HealthConfig};

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
    Prober::new(addr, hc.clone()).probe().await
}

/// Probes one backend again and again: what a check task keeps between
/// probes (for TLS checks, the trusted CAs, read once).
pub struct Prober {
    addr: SocketAddr,
    hc: HealthConfig,
    /// `tls` and `https` checks: the client, or why it could not be made
    /// (then every probe fails with that reason, and it is tried again).
    tls: Option<Result<TlsClient, String>>,
}

impl Prober {
    pub fn new(addr: SocketAddr, hc: HealthConfig) -> Self {
        let tls = hc.check.uses_tls().then(|| TlsClient::new(&hc, addr));
        Self { addr, hc, tls }
    }

    /// Probes once; never takes longer than `timeout_ms`.
    pub async fn probe(&mut self) -> Probe {
        let start = Instant::now();
        if let Some(Err(_)) = &self.tls {
            self.tls = Some(TlsClient::new(&self.hc, self.addr));
        }
        let limit = Duration::from_millis(self.hc.timeout_ms);
        let result = match tokio::time::timeout(limit, self.run()).await {
            Ok(r) => r,
            Err(_) => Err("timeout".to_string()),
        };
        let (ok, detail) = match result {
            Ok(()) => (true, "ok".to_string()),
            Err(why) => (false, why),
        };
        Probe { ok, detail, duration: start.elapsed() }
    }

    async fn run(&self) -> Result<(), String> {
        let (addr, hc) = (self.addr, &self.hc);
        if hc.check == CheckKind::None {
            return Ok(());
        }
        let tls = match &self.tls {
            Some(Err(why)) => return Err(format!("tls: {why}")),
            Some(Ok(client)) => Some(client),
            None => None,
        };
        let tcp = TcpStream::connect(addr).await.map_err(|e| io_reason(&e))?;
        match (hc.check, tls) {
            (CheckKind::Http, _) => http_get(tcp, addr, hc).await,
            (CheckKind::Tls, Some(tls)) => {
                let mut s = tls.handshake(tcp).await?;
                // Say goodbye properly; the handshake was the check.
                let _ = s.shutdown().await;
                Ok(())
            }
            (CheckKind::Https, Some(tls)) => http_get(tls.handshake(tcp).await?, addr, hc).await,
            _ => Ok(()),
        }
    }
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

/// `GET path` over `s` (TCP or TLS) and compare the status code with `expect_status`.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    hc: &HealthConfig,
) -> Result<(), String> {
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

    /// A CA certificate (a trust anchor only: no key is kept).
    const UNIT_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjTCCATOgAwIBAgIUW3KrUib4A0wP9GvqIc+emvl3maQwCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQeGxiIHVuaXQgdGVzdCBDQTAgFw0yNjEyMDIxOTI4NDFaGA8y\nMTI2MTEwODE5Mjg0MVowGzEZMBcGA1UEAwwQeGxiIHVuaXQgdGVzdCBDQTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABEVG770b9mIOHBpujxVzeyqj4D6EOEb+gJC6\nEMvKWxxjWNBFAsc3bxwacOOutW4MvHlDS/slhIQRHBZfFaT7pYCjUzBRMB0GA1Ud\nDgQWBBS4A8IDtKloXb34VOeiG4pRuzXXgTAfBgNVHSMEGDAWgBS4A8IDtKloXb34\nVOeiG4pRuzXXgTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIH+I\nmF0mAFWFBDyo3jPLbLw++ZpS8QlOhQH8kHHWHFxvAiEAiJt2+zxIBNpL2mmceur0\n5Kat3v+zzEbeaIicGEf4c+I=\n-----END CERTIFICATE-----\n";

    #[tokio::test(flavor = "current_thread")]
    async fn tls_probes_name_the_reason() {
        let dir = std::env::temp_dir().join(format!("xlb-probe-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, UNIT_CA).unwrap();

        // A plain HTTP server where a TLS one is expected: the handshake fails, and says so.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hello = vec![0u8; 2048];
            let _ = s.read(&mut hello).await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await.unwrap();
        });
        let mut check = hc(CheckKind::Tls);
        check.host = Some("www.foobar.com".into());
        check.ca_file = Some(ca.clone());
        let p = probe(addr, &check).await;
        let want = "tls: not a TLS answer (does the port serve plain HTTP?)";
        assert_eq!((p.ok, p.detail.as_str()), (false, want), "expected a failed check with a tls reason, got {p:?}");
        server.await.unwrap();

        // A CA file that went away after the config was checked: every probe fails, naming the file.
        check.ca_file = Some(dir.join("gone.pem"));
        check.check = CheckKind::Https;
        let p = probe(addr, &check).await;
        assert!(!p.ok && p.detail.starts_with("tls: cannot read ") && p.detail.contains("gone.pem"), "got {p:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
