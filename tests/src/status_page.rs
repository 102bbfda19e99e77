//! The daemon's status page in a real browser (headless Chromium): the scene
//! the status-page test checks and `cargo xtask screenshot` photographs for
//! the README (docs/status-page.png).

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    config::{web_like, BackendToml, ConfigToml, ServiceToml},
    http_url,
    netns::run_with_timeout,
    packet::malformed_frames,
    xlb::Daemon,
    Netns, Nginx, Topology, CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6,
};

/// Where the scene's daemon serves metrics and the page, inside the lb namespace.
pub const METRICS: &str = "127.0.0.1:9477";

/// Every backend state on one page, from a live daemon: services www4 and
/// www6 over web1, web2 (primaries) and web3 (backup), HTTP checks every
/// 200 ms; web2 is stopped (down in both), web1 is drained in www6, and 40
/// requests went to www4.
pub struct StatusScene {
    // Dropped in this order: the daemon, nginx, then the namespaces.
    pub daemon: Daemon,
    pub web: Vec<Nginx>,
    pub topo: Topology,
}

impl StatusScene {
    pub fn start() -> Result<Self> {
        let topo = Topology::new(3)?;
        let mut web = topo.start_nginx_all()?;
        let mut cfg = ConfigToml::new().daemon("metrics", METRICS);
        for (name, vip) in [("www4", SocketAddr::new(VIP_V4.into(), 80)), ("www6", SocketAddr::new(VIP_V6.into(), 80))]
        {
            cfg = cfg.service(
                ServiceToml::new(name, vip)
                    .quick_http_checks()
                    .backend(BackendToml::new(web_like(vip.ip(), 1, 80)).role("primary"))
                    .backend(BackendToml::new(web_like(vip.ip(), 2, 80)).role("primary"))
                    .backend(BackendToml::new(web_like(vip.ip(), 3, 80)).role("backup")),
            );
        }
        let daemon = Daemon::start(topo.lb_ns(), &cfg.to_string(), topo.lb_interfaces())?;
        web[1].stop()?;
        for svc in ["www4/198.18.1.12:80", "www6/[2001:db8:1::12]:80"] {
            let line = format!("backend {svc} is DOWN");
            daemon.wait_log_count(Duration::from_secs(10), &line, 1)?;
        }
        let out = daemon.ctl(&["drain", "www6", "[2001:db8:1::11]:80"])?;
        if !out.status.success() {
            bail!("xlb drain: {}", String::from_utf8_lossy(&out.stderr));
        }
        topo.client().get_many(&http_url(VIP_V4.into(), 80, "/"), 40, None, true)?;
        Ok(StatusScene { daemon, web, topo })
    }

    /// The page's URL, valid inside the lb namespace.
    pub fn url(&self) -> String {
        format!("http://{METRICS}/")
    }

    /// Sends the malformed-frame set to both VIPs from the client, so the
    /// page's drop counters move.
    pub fn send_malformed(&self) -> Result<()> {
        let frames = malformed_frames(
            self.topo.lb_ns().mac(self.topo.lb_client_interface())?,
            self.topo.client_ns().mac("eth0")?,
            (CLIENT_V4, CLIENT_V6),
            (VIP_V4, VIP_V6),
            80,
        );
        let frames: Vec<Vec<u8>> = frames.into_iter().map(|m| m.frame).collect();
        self.topo.client_ns().send_frames("eth0", &frames)
    }

    /// Saves a screenshot of the page to `png` while 4000 requests flow (so
    /// the rates show), with a fresh browser profile under `profile`.
    pub fn screenshot(&self, profile: &Path, png: &Path) -> Result<()> {
        self.send_malformed()?;
        let url = http_url(VIP_V4.into(), 80, "/");
        let shot = std::thread::scope(|s| -> Result<()> {
            let traffic = s.spawn(|| self.topo.client().get_many(&url, 4000, None, true).map(|r| r.len()));
            // The daemon's rates cover the last second or more.
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1200) && !traffic.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let arg = format!("--screenshot={}", png.display());
            let shot = chromium(self.topo.lb_ns(), profile, &self.url(), &[&arg, "--hide-scrollbars"]);
            let sent = traffic.join().map_err(|_| anyhow::anyhow!("the traffic thread panicked"))??;
            if sent != 4000 {
                bail!("{sent} of 4000 requests answered");
            }
            shot.map(drop)
        });
        shot?;
        let bytes = std::fs::read(png).with_context(|| format!("no screenshot at {}", png.display()))?;
        if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 10_000 {
            bail!("{} is not a real screenshot ({} bytes)", png.display(), bytes.len());
        }
        Ok(())
    }
}

/// Headless Chromium in `ns` loads `url` with a fresh profile in `profile`
/// (bounded: 90 s); returns its standard output (with `--dump-dom`: the DOM
/// after the page's scripts ran).
pub fn chromium(ns: &Netns, profile: &Path, url: &str, extra: &[&str]) -> Result<String> {
    let Some(bin) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists())
    else {
        bail!("chromium is not installed; run `cargo xtask setup` (installs Debian's chromium)");
    };
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let mut argv = vec![
        bin,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        &profile_arg,
        "--virtual-time-budget=5000",
        "--window-size=1500,820",
    ];
    argv.extend_from_slice(extra);
    argv.push(url);
    let out = run_with_timeout(&mut ns.command(&argv), None, Duration::from_secs(90))?;
    if !out.status.success() {
        bail!("chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `<tr ...>...</tr>` of the backend row for `addr` in a rendered DOM.
pub fn backend_row<'a>(dom: &'a str, addr: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-backend=\"{addr}\""))?;
    let start = dom[..start].rfind("<tr")?;
    let end = start + dom[start..].find("</tr>")?;
    Some(&dom[start..end])
}
