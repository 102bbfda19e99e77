//! Monitoring, for real: the daemon's `/metrics`, `/status.json` and status
//! page (rendered by headless Chromium), `xlb status` rates and `xlb top`, in
//! the client -> lb -> web1, web2 topology.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`);
//! the browser test also needs Debian's `chromium` (`cargo xtask setup`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use xlb_testbed::{
    http_url,
    netns::run_with_timeout,
    packet::Pkt,
    require_root,
    xlb::{xlb, Daemon, TempDir},
    Netns, Topology, CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6,
};

/// Where the daemon serves metrics, inside the lb namespace.
const METRICS: &str = "127.0.0.1:9477";

/// Services www4 and www6 (port 80, NAT, no health checks) over `backends`
/// given as (number, role).
fn config(socket: &str, backends: &[(usize, &str)]) -> String {
    let mut s = format!(
        "[daemon]\ninterfaces = [\"eth0\", \"eth1\"]\nmetrics = \"{METRICS}\"\nconntrack_entries = 65536\nadmin_socket = \"{socket}\"\n"
    );
    for (name, vip, v6) in [("www4", VIP_V4.to_string(), false), ("www6", format!("[{VIP_V6}]"), true)] {
        s += &format!("\n[[service]]\nname = \"{name}\"\nvip = \"{vip}:80\"\n[service.health]\ncheck = \"none\"\n");
        for (n, role) in backends {
            let addr = if v6 { format!("[2001:db8:1::{}]:80", 10 + n) } else { format!("198.18.1.{}:80", 10 + n) };
            s += &format!("[[service.backend]]\naddress = \"{addr}\"\nrole = \"{role}\"\n");
        }
    }
    s
}

/// GET `path` from the daemon's metrics address, from inside `ns`: (status, body).
fn get(ns: &Netns, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{METRICS}{path}");
    let mut argv = vec!["curl", "-q", "-s", "--max-time", "5", "-w", "\n%{http_code}"];
    argv.extend_from_slice(extra);
    argv.push(&url);
    let out = ns.exec(&argv).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl {url}: {text:?}"));
    (
        code.parse().unwrap_or_else(|_| panic!("curl {url}: {text:?} {}", String::from_utf8_lossy(&out.stderr))),
        body.to_string(),
    )
}

/// `/metrics` as `name{labels}` -> value.
fn metrics(ns: &Netns) -> BTreeMap<String, f64> {
    let (code, body) = get(ns, "/metrics", &[]);
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn m(map: &BTreeMap<String, f64>, key: &str) -> f64 {
    *map.get(key).unwrap_or_else(|| panic!("no {key} in /metrics: {map:#?}"))
}

fn backend_key(metric: &str, service: &str, n: usize) -> String {
    format!("{metric}{{service=\"{service}\",backend=\"198.18.1.{}:80\"}}", 10 + n)
}

/// Polls `f` every 100 ms until it returns Some, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if t0.elapsed() > Duration::from_secs(secs) => {
                panic!("{what}: not within {secs} s; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let text = ns.run(&["cat", &format!("/sys/class/net/{iface}/address")]).unwrap();
    let b: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    b.try_into().unwrap_or_else(|_| panic!("bad MAC {text:?}"))
}

/// Sends raw Ethernet frames out of `iface` in `ns` (AF_PACKET).
fn send_frames(ns: &Netns, iface: &str, frames: &[Vec<u8>]) {
    let iface = std::ffi::CString::new(iface).unwrap();
    ns.run_in(|| {
        // SAFETY: plain socket calls with valid pointers and lengths; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            addr.sll_halen = 6;
            for f in frames {
                let sent = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(sent, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    })
    .unwrap();
}

/// Malformed frames to the VIPs, by the drop reason each must be counted under.
fn malformed(dst: [u8; 6], src: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let (c4, v4, c6, v6) =
        (IpAddr::from(CLIENT_V4), IpAddr::from(VIP_V4), IpAddr::from(CLIENT_V6), IpAddr::from(VIP_V6));
    let frame = |mut p: Pkt| {
        p.eth_dst = dst;
        p.eth_src = src;
        p
    };
    let base = frame(Pkt::tcp(c4, v4, 40000, 80)).build();
    let mut out = Vec::new();
    for i in 0..7u16 {
        // IPv4 total length beyond the end of the frame.
        let mut f = frame(Pkt::tcp(c4, v4, 41000 + i, 80)).build();
        f[16..18].copy_from_slice(&400u16.to_be_bytes());
        out.push(("truncated", f));
    }
    for i in 0..5u16 {
        let mut p = frame(Pkt::tcp(c4, v4, 42000 + i, 80));
        p.ipv4_frag = 0x2000; // more fragments
        out.push(("fragment", p.build()));
    }
    for _ in 0..3 {
        let mut f = base.clone();
        f[14] = 0x44; // IHL 4 < 5
        out.push(("bad_header", f));
    }
    for i in 0..4u16 {
        let mut p = frame(Pkt::tcp(c6, v6, 43000 + i, 80));
        p.ipv6_ext = Some(0); // hop-by-hop options
        out.push(("ipv6_extension", p.build()));
    }
    out
}

/// 100 new connections raise the new-flow counters by exactly 100, packets
/// and bytes by plausible amounts; malformed frames to the VIPs are counted
/// under their reasons and reach no backend; conntrack use matches the flows.
#[test]
fn counters_are_exact_and_drops_are_counted_by_reason() {
    if !require_root("monitoring counters") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let socket = "/tmp/xlb-test-monitoring.sock";
    let d = Daemon::start(topo.lb_ns(), &config(socket, &[(1, "primary"), (2, "primary")]), &["eth0", "eth1"]).unwrap();
    let lb = topo.lb_ns();

    let before = metrics(lb);
    let url = http_url(VIP_V4.into(), 80, "/");
    let replies = topo.client().get_many(&url, 100, None, true).unwrap();
    assert_eq!(replies.len(), 100);
    let after = metrics(lb);
    let delta = |k: &str| m(&after, k) - m(&before, k);

    let mut answered = BTreeMap::new();
    for r in &replies {
        *answered.entry(r.body.trim().to_string()).or_insert(0.0) += 1.0;
    }
    let mut flows_sum = 0.0;
    for n in [1, 2] {
        let flows = delta(&backend_key("xlb_backend_new_flows_total", "www4", n));
        let name = format!("web{n}");
        assert_eq!(
            flows,
            answered.get(&name).copied().unwrap_or(0.0),
            "{name}: new flows vs connections it answered {answered:?}"
        );
        let packets = delta(&backend_key("xlb_backend_packets_total", "www4", n));
        // Each connection sends SYN, ACK, the request, ACKs, FIN/ACK: 4 to 12 packets.
        assert!(packets >= 4.0 * flows && packets <= 12.0 * flows, "{name}: {packets} packets for {flows} flows");
        let bytes = delta(&backend_key("xlb_backend_bytes_total", "www4", n));
        assert!(bytes >= 54.0 * packets && bytes <= 1600.0 * packets, "{name}: {bytes} bytes for {packets} packets");
        assert_eq!(m(&after, &backend_key("xlb_backend_up", "www4", n)), 1.0);
        flows_sum += flows;
    }
    assert_eq!(flows_sum, 100.0, "backend new flows summed");
    assert_eq!(delta("xlb_service_new_flows_total{service=\"www4\"}"), 100.0);
    assert_eq!(delta("xlb_service_new_flows_total{service=\"www6\"}"), 0.0);
    assert!(delta("xlb_service_established_packets_total{service=\"www4\"}") >= 300.0, "established-flow lookups");

    // Conntrack: one entry per distinct client flow made so far.
    let ports: BTreeSet<u16> = replies.iter().map(|r| r.local_port).collect();
    eventually(10, "conntrack count", || {
        let now = metrics(lb);
        let entries = m(&now, "xlb_conntrack_entries");
        assert_eq!(m(&now, "xlb_conntrack_entries_limit"), 65536.0);
        if entries == ports.len() as f64 {
            Ok(())
        } else {
            Err(format!("{entries} entries, {} flows", ports.len()))
        }
    });

    // Malformed frames straight onto the wire from the client.
    let frames = malformed(mac(lb, "eth0"), mac(topo.client_ns(), "eth0"));
    let before = metrics(lb);
    send_frames(topo.client_ns(), "eth0", &frames.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>());
    let expected: BTreeMap<&str, f64> = frames.iter().fold(BTreeMap::new(), |mut acc, (r, _)| {
        *acc.entry(*r).or_insert(0.0) += 1.0;
        acc
    });
    eventually(5, "drop counters", || {
        let now = metrics(lb);
        let got: BTreeMap<&str, f64> = ["truncated", "fragment", "ipv6_extension", "bad_header", "no_backend"]
            .into_iter()
            .map(|r| {
                let k = format!("xlb_dropped_packets_total{{reason=\"{r}\"}}");
                (r, m(&now, &k) - m(&before, &k))
            })
            .filter(|(_, d)| *d != 0.0)
            .collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!("drops {got:?}, expected {expected:?}"))
        }
    });
    let now = metrics(lb);
    for n in [1, 2] {
        let k = backend_key("xlb_backend_packets_total", "www4", n);
        assert_eq!(m(&now, &k), m(&before, &k), "a malformed frame reached web{n}");
    }
    for svc in ["www4", "www6"] {
        let k = format!("xlb_service_packets_total{{service=\"{svc}\"}}");
        assert_eq!(m(&now, &k), m(&before, &k), "a malformed frame was counted as {svc} traffic");
    }
    // The same figures in xlb status.
    let out = d.ctl(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = status.lines().find(|l| l.trim_start().starts_with("fragment")).unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        line.split_whitespace().nth(1),
        Some(&*format!("{}", m(&now, "xlb_dropped_packets_total{reason=\"fragment\"}"))),
        "{status}"
    );
}

/// The HTTP side: content types, HEAD, 404, 405; `/status.json` shows rates
/// while traffic flows; `xlb status` shows them too; `xlb top` redraws and
/// exits 0 on Ctrl-C (SIGINT).
#[test]
fn http_answers_rates_status_and_top() {
    if !require_root("monitoring http") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let socket = "/tmp/xlb-test-monitoring-top.sock";
    let mut d =
        Daemon::start(topo.lb_ns(), &config(socket, &[(1, "primary"), (2, "backup")]), &["eth0", "eth1"]).unwrap();
    let lb = topo.lb_ns();

    let (code, head) = get(lb, "/metrics", &["-I"]);
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(!head.contains("# HELP"), "HEAD answered with a body: {head}");
    assert_eq!(get(lb, "/nope", &[]).0, 404);
    assert_eq!(get(lb, "/metrics", &["-X", "POST"]).0, 405);
    let (code, page) = get(lb, "/", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("<script>") && !page.contains("198.18.1.11"), "the page itself carries no data");

    // Rates while traffic flows: 300 connections from a background curl.
    let url = http_url(VIP_V4.into(), 80, "/");
    let load = std::thread::scope(|s| {
        let traffic = s.spawn(|| topo.client().get_many(&url, 300, None, true).map(|r| r.len()));
        let rate = eventually(20, "a packet rate on web1 in /status.json", || {
            let (code, body) = get(lb, "/status.json", &[]);
            if code != 200 {
                return Err(format!("HTTP {code}"));
            }
            let j: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let b = &j["services"][0]["backends"][0];
            assert_eq!(b["address"], "198.18.1.11:80", "{body}");
            assert_eq!(b["role"], "primary");
            assert_eq!(j["services"][0]["backends"][1]["role"], "backup");
            match b["packets_per_second"].as_f64() {
                Some(r) if r > 0.0 => Ok(r),
                other => Err(format!("packets_per_second {other:?}")),
            }
        });
        (rate, traffic.join().unwrap().unwrap())
    });
    assert!(load.0 > 0.0);
    assert_eq!(load.1, 300);

    let out = d.ctl(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("rates: per second, over the last"), "{status}");
    let web1 = status.lines().find(|l| l.contains("198.18.1.11:80")).unwrap_or_else(|| panic!("{status}"));
    let cols: Vec<&str> = web1.split_whitespace().rev().collect();
    // Totals last (BYTES PACKETS NEW FLOWS), then BYTES/S PKTS/S NEW/S.
    assert_eq!(cols[2], "300", "web1 took every new flow (web2 is a backup): {web1}");
    for rate in &cols[3..6] {
        assert!(rate.trim_end_matches(['k', 'M', 'G']).parse::<f64>().is_ok(), "rate column {rate:?}: {web1}");
    }

    // xlb top: two redraws, then SIGINT.
    let dir = TempDir::new("top").unwrap();
    let out_path = dir.path().join("top.out");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let bin = xlb_testbed::xlb::xlb_bin();
    let sock = d.socket.to_string_lossy().to_string();
    let mut cmd = lb.command(&[bin.to_str().unwrap(), "top", "--socket", &sock, "--interval", "0.2"]);
    cmd.stdout(out_file).stderr(std::process::Stdio::null());
    let mut top = xlb_testbed::BgProcess::spawn(cmd).unwrap();
    let frames = || std::fs::read_to_string(&out_path).unwrap_or_default().matches("xlb top - ").count();
    eventually(10, "two xlb top screens", || if frames() >= 2 { Ok(()) } else { Err(format!("{} screens", frames())) });
    top.signal(libc::SIGINT).unwrap();
    let st = eventually(5, "xlb top to exit", || top.try_wait().unwrap().ok_or_else(|| "running".to_string()));
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(st.code(), Some(0), "xlb top exit status; output:\n{text}");
    assert!(text.contains("198.18.1.12:80") && text.contains("backup"), "{text}");
    assert!(
        text.ends_with("\x1b[?25h\x1b[?1049l"),
        "the terminal was not restored: {:?}",
        &text[text.len().saturating_sub(40)..]
    );

    // An address the daemon cannot bind: a clear error, nothing left attached.
    assert!(d.stop().unwrap().success(), "{}", d.log_text());
    let bad = config(socket, &[(1, "primary")]).replace(METRICS, "198.18.5.5:9477");
    let path = dir.path().join("bad-metrics.toml");
    std::fs::write(&path, bad).unwrap();
    let out = xlb(Some(lb), &["run", "-c", path.to_str().unwrap()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains("daemon.metrics address 198.18.5.5:9477"), "stderr:\n{err}");
    assert!(!lb.must(&["ip", "link", "show", "eth0"]).contains(" xdp"), "XDP left attached after the refused start");
}

/// The status page in a real browser: headless Chromium loads `/`, the
/// page's script fetches `/status.json` and builds one row per backend with
/// its address, role and state. Also saves a screenshot (to
/// `$XLB_STATUS_SCREENSHOT` when set, for the README).
#[test]
fn status_page_renders_live_backends_in_a_browser() {
    if !require_root("monitoring status page") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let mut web = topo.start_nginx_all().unwrap();
    let socket = "/tmp/xlb-test-monitoring-page.sock";
    // Fast HTTP checks; web2 is stopped and web1 drained in www6, so the page
    // shows every state from the live daemon.
    let cfg = config(socket, &[(1, "primary"), (2, "primary"), (3, "backup")]).replace(
        "check = \"none\"",
        "check = \"http\"\npath = \"/health\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2",
    );
    let d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
    web[1].stop().unwrap();
    for svc in ["www4/198.18.1.12:80", "www6/[2001:db8:1::12]:80"] {
        let what = format!("backend {svc} is DOWN");
        d.wait_log(Duration::from_secs(10), &what, |l| l.contains(&what)).unwrap();
    }
    let out = d.ctl(&["drain", "www6", "[2001:db8:1::11]:80"]).unwrap();
    assert!(out.status.success(), "xlb drain: {}", String::from_utf8_lossy(&out.stderr));
    topo.client().get_many(&http_url(VIP_V4.into(), 80, "/"), 40, None, true).unwrap();

    let dir = TempDir::new("chromium").unwrap();
    let url = format!("http://{METRICS}/");
    let browse =
        |n: usize, extra: &[&str]| chromium(topo.lb_ns(), &dir.path().join(format!("profile-{n}")), &url, extra);
    let dom = browse(1, &["--dump-dom"]);
    let expect = [
        ("198.18.1.11:80", "primary", "up"),
        ("198.18.1.12:80", "primary", "down"),
        ("198.18.1.13:80", "backup", "up"),
        ("[2001:db8:1::11]:80", "primary", "drained"),
        ("[2001:db8:1::12]:80", "primary", "down"),
        ("[2001:db8:1::13]:80", "backup", "up"),
    ];
    for (addr, role, state) in expect {
        let row = backend_row(&dom, addr).unwrap_or_else(|| panic!("no row for {addr} in the rendered page:\n{dom}"));
        assert!(row.contains(&format!("<td class=\"l role\">{role}</td>")), "{addr}: role {role} missing: {row}");
        assert!(row.contains(&format!("<td class=\"l st\">{state}</td>")), "{addr}: state {state} missing: {row}");
    }
    let down = backend_row(&dom, "198.18.1.12:80").unwrap();
    assert!(down.contains("refused"), "the down backend's last check result is shown: {down}");
    for reason in ["truncated", "fragment", "ipv6_extension", "bad_header", "no_backend"] {
        assert!(dom.contains(&format!("data-reason=\"{reason}\"")), "drop reason {reason} missing:\n{dom}");
    }
    assert!(dom.contains("eth0 (") && dom.contains("conntrack: "), "header line missing:\n{dom}");

    // The screenshot shows live rates: traffic and a few malformed frames meanwhile.
    let frames = malformed(mac(topo.lb_ns(), "eth0"), mac(topo.client_ns(), "eth0"));
    send_frames(topo.client_ns(), "eth0", &frames.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
    let shot = dir.path().join("status-page.png");
    let url = http_url(VIP_V4.into(), 80, "/");
    std::thread::scope(|s| {
        let traffic = s.spawn(|| topo.client().get_many(&url, 4000, None, true).map(|r| r.len()));
        std::thread::sleep(Duration::from_millis(1200));
        browse(2, &[&format!("--screenshot={}", shot.display()), "--hide-scrollbars"]);
        assert_eq!(traffic.join().unwrap().unwrap(), 4000);
    });
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a real screenshot ({} bytes)", png.len());
    if let Some(dest) = std::env::var_os("XLB_STATUS_SCREENSHOT") {
        std::fs::write(&dest, &png).unwrap();
    }
}

/// Headless Chromium in `ns` loads `url` with a fresh profile in `profile`
/// (bounded: 90 s); returns its standard output (`--dump-dom`: the DOM).
fn chromium(ns: &Netns, profile: &Path, url: &str, extra: &[&str]) -> String {
    let Some(bin) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists())
    else {
        panic!("chromium is not installed; run `cargo xtask setup` (installs Debian's chromium)");
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
    let out = run_with_timeout(&mut ns.command(&argv), None, Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The `<tr ...>...</tr>` of the backend row for `addr` in the rendered DOM.
fn backend_row<'a>(dom: &'a str, addr: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-backend=\"{addr}\""))?;
    let start = dom[..start].rfind("<tr")?;
    let end = start + dom[start..].find("</tr>")?;
    Some(&dom[start..end])
}

/// The page's script renders down and drained backends (which the daemon on
/// this branch cannot produce without health checks) from `/status.json` as
/// `xlb::status::json` writes it, served by a plain file server.
#[test]
fn status_page_renders_down_and_drained_backends() {
    if !require_root("monitoring status page states") {
        return;
    }
    use xlb::{
        config::Role,
        metrics::{BackendSample, ServiceSample, Snapshot, State},
        status::{json, View},
    };
    let backend = |addr: &str, role, state| BackendSample {
        address: addr.parse().unwrap(),
        role,
        weight: 1,
        state,
        since: std::time::SystemTime::now() - Duration::from_secs(125),
        last_check: if state == State::Down { "status 503".into() } else { "ok".into() },
        last_check_duration: Some(Duration::from_millis(3)),
        transitions: if state == State::Down { 1 } else { 0 },
        generation: 1,
        stats: Default::default(),
    };
    let snap = Snapshot {
        at: Instant::now(),
        services: vec![ServiceSample {
            name: "www".into(),
            vip: "198.18.0.10:80".parse().unwrap(),
            protocol: "tcp",
            forwarding: "nat",
            on_backup: true,
            stats: Default::default(),
            backends: vec![
                backend("198.18.1.11:80", Role::Primary, State::Down),
                backend("198.18.1.12:80", Role::Primary, State::Drained),
                backend("198.18.1.13:80", Role::Backup, State::Up),
            ],
        }],
        counters: vec![0; 16],
        rebuilds: 1,
        slots_written: 65537,
        attached: vec![("eth0".into(), "native")],
    };
    let dir = TempDir::new("page-states").unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), xlb::http::STATUS_PAGE).unwrap();
    let body = serde_json::to_string(&json(&View { snap: &snap, rates: None, conntrack: None })).unwrap();
    std::fs::write(site.join("status.json"), body).unwrap();

    let ns = Netns::new(format!("{}-{}-page", xlb_testbed::netns::NS_PREFIX, xlb_testbed::run_suffix())).unwrap();
    let addr = "127.0.0.1:9478";
    let mut server = ns.command(&[
        "python3",
        "-m",
        "http.server",
        "9478",
        "--bind",
        "127.0.0.1",
        "--directory",
        site.to_str().unwrap(),
    ]);
    server.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _server = xlb_testbed::BgProcess::spawn(server).unwrap();
    eventually(10, "the file server", || {
        if ns.tcp_connects(addr.parse().unwrap(), Duration::from_millis(200)) {
            Ok(())
        } else {
            Err("no".into())
        }
    });
    let dom = chromium(&ns, &dir.path().join("profile"), &format!("http://{addr}/"), &["--dump-dom"]);
    for (a, role, state) in [
        ("198.18.1.11:80", "primary", "down"),
        ("198.18.1.12:80", "primary", "drained"),
        ("198.18.1.13:80", "backup", "up"),
    ] {
        let row = backend_row(&dom, a).unwrap_or_else(|| panic!("no row for {a}:\n{dom}"));
        assert!(row.starts_with(&format!("<tr class=\"backend {state}")), "{a}: row class: {row}");
        assert!(
            row.contains(&format!("<td class=\"l role\">{role}</td>"))
                && row.contains(&format!("<td class=\"l st\">{state}</td>")),
            "{a}: {row}"
        );
    }
    assert!(backend_row(&dom, "198.18.1.11:80").unwrap().contains("status 503"));
    assert!(
        backend_row(&dom, "198.18.1.13:80").unwrap().contains("backend up active"),
        "the backup takes new flows (on_backup)"
    );
    assert!(dom.contains("2/3 backends up") && dom.contains("new flows to the backups"), "caption:\n{dom}");
}
