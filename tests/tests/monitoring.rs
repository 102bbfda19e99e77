//! Monitoring, for real: the daemon's `/metrics`, `/status.json` and status
//! page (rendered by headless Chromium), `xlb status` rates and `xlb top`, in
//! the client -> lb -> web1, web2 topology.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`);
//! the browser test also needs Debian's `chromium` (`cargo xtask setup`).

use lb_common::counter;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use xlb_testbed::{
    config::{web_like, BackendToml, ConfigToml, ServiceToml},
    http_url,
    packet::malformed_frames,
    status_page::{backend_row, chromium, StatusScene, METRICS},
    xlb::{json_backend, json_drops, xlb, Daemon, TempDir},
    Netns, Topology, CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6,
};

/// Services www4 and www6 (port 80, NAT, no health checks) over `backends`
/// given as (number, role).
fn config(backends: &[(usize, &str)]) -> ConfigToml {
    let mut cfg = ConfigToml::new().daemon("metrics", METRICS).daemon("conntrack_entries", 65536u32);
    for (name, vip) in [("www4", SocketAddr::new(VIP_V4.into(), 80)), ("www6", SocketAddr::new(VIP_V6.into(), 80))] {
        let mut svc = ServiceToml::new(name, vip).no_checks();
        for &(n, role) in backends {
            svc = svc.backend(BackendToml::new(web_like(vip.ip(), n, 80)).role(role));
        }
        cfg = cfg.service(svc);
    }
    cfg
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

/// 100 new connections raise the new-flow counters by exactly 100, packets
/// and bytes by plausible amounts; malformed frames to the VIPs are counted
/// under their reasons and reach no backend; conntrack use matches the flows.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn counters_are_exact_and_drops_are_counted_by_reason() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let d =
        Daemon::start(topo.lb_ns(), &config(&[(1, "primary"), (2, "primary")]).to_string(), &["eth0", "eth1"]).unwrap();
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
    let frames = malformed_frames(
        lb.mac("eth0").unwrap(),
        topo.client_ns().mac("eth0").unwrap(),
        (CLIENT_V4, CLIENT_V6),
        (VIP_V4, VIP_V6),
        80,
    );
    let before = metrics(lb);
    topo.client_ns().send_frames("eth0", &frames.iter().map(|m| &m.frame).collect::<Vec<_>>()).unwrap();
    let expected: BTreeMap<&str, f64> = frames.iter().fold(BTreeMap::new(), |mut acc, m| {
        *acc.entry(m.reason()).or_insert(0.0) += 1.0;
        acc
    });
    eventually(5, "drop counters", || {
        let now = metrics(lb);
        let got: BTreeMap<&str, f64> = counter::DROP_NAMES
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
    // The same figures in the daemon's status.
    let status = d.status_json();
    for reason in counter::DROP_NAMES {
        let k = format!("xlb_dropped_packets_total{{reason=\"{reason}\"}}");
        assert_eq!(json_drops(&status, reason) as f64, m(&now, &k), "{reason} drops in the status and on /metrics");
    }
}

/// The HTTP side: content types, HEAD, 404, 405; `/status.json` shows rates
/// while traffic flows; `xlb status` shows them too; `xlb top` redraws and
/// exits 0 on Ctrl-C (SIGINT).
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn http_answers_rates_status_and_top() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let mut d =
        Daemon::start(topo.lb_ns(), &config(&[(1, "primary"), (2, "backup")]).to_string(), &["eth0", "eth1"]).unwrap();
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

    let status = d.status_json();
    let web1 = json_backend(&status, "www4", "198.18.1.11:80");
    assert_eq!(web1["new_flows"], 300, "web1 took every new flow (web2 is a backup): {web1}");
    assert!(status["rate_window_seconds"].as_f64().is_some_and(|w| w > 0.0), "no rate window:\n{status:#}");
    for rate in ["bytes_per_second", "packets_per_second", "new_flows_per_second"] {
        assert!(web1[rate].as_f64().is_some(), "web1's {rate} is not a number: {web1}");
    }
    let out = d.ctl(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "xlb status: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("198.18.1.11:80") && text.contains("198.18.1.12:80"), "xlb status:\n{text}");

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
    let bad = config(&[(1, "primary")]).daemon("metrics", "198.18.5.5:9477").to_string();
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
/// its address, role and state, from a live daemon showing every state
/// (`cargo xtask screenshot` photographs the same scene for the README).
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn status_page_renders_live_backends_in_a_browser() {
    let scene = StatusScene::start().unwrap();
    scene.send_malformed().unwrap();
    let dir = TempDir::new("chromium").unwrap();
    let dom = chromium(scene.topo.lb_ns(), &dir.path().join("profile"), &scene.url(), &["--dump-dom"]).unwrap();
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
        assert!(row.starts_with(&format!("<tr class=\"backend {state}")), "{addr}: row class: {row}");
        assert!(row.contains(&format!("<td class=\"l role\">{role}</td>")), "{addr}: role {role} missing: {row}");
        assert!(row.contains(&format!("<td class=\"l st\">{state}</td>")), "{addr}: state {state} missing: {row}");
    }
    // Who takes new flows: www4's up primary; in www6 (its primaries drained
    // or down) the backup.
    for active in ["198.18.1.11:80", "[2001:db8:1::13]:80"] {
        let row = backend_row(&dom, active).unwrap();
        assert!(row.contains("class=\"backend up active\""), "{active} takes new flows: {row}");
    }
    assert!(
        dom.matches("2/3 backends up").count() == 2
            && dom.contains("new flows to the primaries")
            && dom.contains("new flows to the backups"),
        "service captions:\n{dom}"
    );
    let down = backend_row(&dom, "198.18.1.12:80").unwrap();
    assert!(down.contains("refused"), "the down backend's last check result is shown: {down}");
    for reason in counter::DROP_NAMES {
        assert!(dom.contains(&format!("data-reason=\"{reason}\"")), "drop reason {reason} missing:\n{dom}");
    }
    assert!(dom.contains("eth0 (") && dom.contains("conntrack: "), "header line missing:\n{dom}");
}

/// `xlb_backend_active_connections`: connections held open count on their
/// backends; closing half of them (FIN from the client, then nginx's FIN
/// through the reply path) lowers the gauge by exactly that many; the rest,
/// left idle past `conntrack_timeout_established`, are expired by the
/// daemon's sweeper: the gauge and the conntrack table go back to 0.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn active_connections_fall_on_close_and_expire_when_idle() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let cfg = config(&[(1, "primary"), (2, "primary")])
        .daemon("conntrack_timeout_syn", "2s")
        .daemon("conntrack_timeout_established", "4s")
        .daemon("conntrack_timeout_closing", "1s");
    let _d = Daemon::start(topo.lb_ns(), &cfg.to_string(), &["eth0", "eth1"]).unwrap();
    let lb = topo.lb_ns();
    let active = |map: &BTreeMap<String, f64>| {
        [1, 2].iter().map(|&n| m(map, &backend_key("xlb_backend_active_connections", "www4", n))).sum::<f64>()
    };
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let mut held: Vec<xlb_testbed::KeptAlive> = (0..10)
        .map(|i| {
            let mut c = xlb_testbed::KeptAlive::open(topo.client().ns(), vip)
                .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e:#}"));
            let (code, _) = c.get("/").unwrap_or_else(|e| panic!("GET on connection {i}: {e:#}"));
            assert_eq!(code, 200, "connection {i}: status {code}");
            c
        })
        .collect();
    let got = active(&metrics(lb));
    assert_eq!(got, 10.0, "10 connections open: xlb_backend_active_connections sums to {got}");
    held.truncate(5);
    eventually(5, "5 connections closed: active connections 5", || {
        let got = active(&metrics(lb));
        if got == 5.0 {
            Ok(())
        } else {
            Err(format!("{got} active"))
        }
    });
    // The 5 left idle: expired after 4 s (swept once a second).
    eventually(15, "idle connections expired: active connections 0", || {
        let got = active(&metrics(lb));
        if got == 0.0 {
            Ok(())
        } else {
            Err(format!("{got} active"))
        }
    });
    eventually(20, "conntrack emptied by the sweeper", || {
        let n = metrics(lb).get("xlb_conntrack_entries").copied();
        if n == Some(0.0) {
            Ok(())
        } else {
            Err(format!("xlb_conntrack_entries {n:?}"))
        }
    });
    drop(held);
}
