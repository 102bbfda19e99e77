//! A small HTTP/1.1 server for `daemon.metrics`: GET and HEAD of
//! `/metrics` (Prometheus), `/status.json` and `/` (the status page); 404 for
//! other paths, 405 for other methods, one request per connection
//! (`Connection: close`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use tokio_util::sync::CancellationToken;

use super::{prometheus, rates::History};
use crate::balancer::Balancer;

/// The status page: static; its script fetches `/status.json`.
pub const STATUS_PAGE: &str = include_str!("status_page.html");
/// Longest request head accepted.
const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (out of descriptors, ...), so the loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An answer: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Sent as `Allow` (405 answers).
    pub allow: Option<&'static str>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type, body: body.into(), allow: None }
    }

    fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// Status line, headers and (unless `head_only`) the body.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out += &format!("Allow: {allow}\r\n");
        }
        out += "\r\n";
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// The request line of a request head: method and path (query removed).
pub fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    StatusPage,
    Metrics,
    StatusJson,
}

/// The page `method path` asks for, or the error answer (404, 405).
pub fn resolve(method: &str, path: &str) -> Result<Page, Response> {
    let page = match path {
        "/" | "/index.html" => Page::StatusPage,
        "/metrics" => Page::Metrics,
        "/status.json" => Page::StatusJson,
        _ => return Err(Response::text(404, &format!("no page {path}; try /, /metrics or /status.json"))),
    };
    if method != "GET" && method != "HEAD" {
        let mut r = Response::text(405, &format!("{method} is not allowed; use GET or HEAD"));
        r.allow = Some("GET, HEAD");
        return Err(r);
    }
    Ok(page)
}

/// Renders `page` from the balancer's counters and the sampler's history.
fn render(page: Page, bal: &Mutex<Balancer>, history: &Mutex<History>) -> Response {
    let answer = match page {
        Page::StatusPage => return Response::new(200, "text/html; charset=utf-8", STATUS_PAGE),
        Page::Metrics => super::metrics_text(bal, history).map(|t| Response::new(200, prometheus::CONTENT_TYPE, t)),
        Page::StatusJson => super::status_json(bal, history).map(|t| Response::new(200, "application/json", t)),
    };
    answer.unwrap_or_else(|e| Response::text(500, &format!("{e:#}")))
}

/// Reads the request head (up to the blank line), bounded in size and time.
async fn read_head(stream: &mut TcpStream) -> Result<String, Response> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|_| Response::text(400, "read error"))?;
            if n == 0 {
                return Err(Response::text(400, "connection closed before the request was complete"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(());
            }
            if buf.len() > MAX_HEAD {
                return Err(Response::text(431, "request head too large"));
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Err(r)) => Err(r),
        Err(_) => Err(Response::text(400, "request head not received in time")),
    }
}

async fn handle(mut stream: TcpStream, bal: Arc<Mutex<Balancer>>, history: Arc<Mutex<History>>) -> std::io::Result<()> {
    let (response, head_only) = match read_head(&mut stream).await {
        Ok(head) => match parse_request_line(&head) {
            Some((method, path)) => match resolve(method, path) {
                Ok(page) => (render(page, &bal, &history), method == "HEAD"),
                Err(r) => (r, method == "HEAD"),
            },
            None => (Response::text(400, "malformed request line"), false),
        },
        Err(r) => (r, false),
    };
    stream.write_all(&response.to_bytes(head_only)).await?;
    stream.shutdown().await
}

/// Serves until `cancel` is cancelled, then ends the connections in
/// progress (they live in this task's `JoinSet`) and returns.
pub async fn serve(
    listener: std::net::TcpListener,
    bal: Arc<Mutex<Balancer>>,
    history: Arc<Mutex<History>>,
    cancel: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("metrics endpoint not served: {e}");
            return;
        }
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            // Bounded: at MAX_CONNECTIONS, wait for one to end before accepting.
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle(stream, bal.clone(), history.clone()));
                }
                Err(e) => {
                    log::debug!("metrics accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request_line("HEAD /status.json?x=1 HTTP/1.0\r\n\r\n"), Some(("HEAD", "/status.json")));
        assert_eq!(parse_request_line("GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line("GET http://a/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line("GET / SPDY/3\r\n\r\n"), None);
        assert_eq!(parse_request_line(""), None);
    }

    #[test]
    fn routes_and_errors() {
        assert_eq!(resolve("GET", "/"), Ok(Page::StatusPage));
        assert_eq!(resolve("HEAD", "/metrics"), Ok(Page::Metrics));
        assert_eq!(resolve("GET", "/status.json"), Ok(Page::StatusJson));
        assert_eq!(resolve("GET", "/nope").unwrap_err().status, 404);
        let post = resolve("POST", "/metrics").unwrap_err();
        assert_eq!((post.status, post.allow), (405, Some("GET, HEAD")));
    }

    #[test]
    fn head_answers_have_the_length_but_no_body() {
        let r = Response::new(200, "text/plain", "hello");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n") && full.ends_with("\r\n\r\nhello"), "{full:?}");
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"), "{head:?}");
        assert!(full.contains("Connection: close\r\n"));
    }

    #[test]
    fn the_page_has_no_external_assets_and_no_data() {
        for needle in ["src=\"http", "href=\"http", "@import", "//cdn", "198.18."] {
            assert!(!STATUS_PAGE.contains(needle), "status page contains {needle:?}");
        }
        assert!(STATUS_PAGE.contains("fetch(\"/status.json\""));
    }
}
