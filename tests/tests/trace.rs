//! `xlb trace` against a real daemon in the classic topology: curl's flows
//! show up with their service, a conntrack miss then hits, the backend that
//! answered and the NAT replies; a malformed packet to the VIP shows up with
//! its drop reason; and tracing is off again once the trace ends.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::net::IpAddr;

use xlb_testbed::{
    config::{web, ConfigToml, ServiceToml},
    http_url,
    packet::malformed_frames,
    xlb::{xlb, Daemon},
    Topology, CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6,
};

fn config() -> String {
    ConfigToml::new()
        .daemon("xdp_mode", "native")
        .daemon("metrics", "")
        .daemon("conntrack_entries", 4096u32)
        .service(ServiceToml::new("www", (VIP_V4, 80).into()).no_checks().backend(web(1, 80)).backend(web(2, 80)))
        .to_string()
}

/// A TCP packet to the VIP whose header is cut short (IPv4 total length 30:
/// 10 bytes of a 20-byte TCP header), sent from the client's eth0 as a raw
/// frame: the first of the malformed-frame set.
fn send_truncated_tcp(topo: &Topology) {
    let set = malformed_frames(
        topo.lb_ns().mac("eth0").unwrap(),
        topo.client_ns().mac("eth0").unwrap(),
        (CLIENT_V4, CLIENT_V6),
        (VIP_V4, VIP_V6),
        80,
    );
    assert_eq!((set[0].desc, set[0].reason()), ("IPv4 TCP header cut short", "truncated"));
    topo.client_ns().send_frames("eth0", &[&set[0].frame]).expect("send a raw frame from the client");
}

/// Runs `xlb trace` for `seconds` in a thread once started; the caller
/// waits for the daemon's "trace started" log line before sending traffic.
fn trace(socket: &str, seconds: u64) -> std::thread::JoinHandle<std::process::Output> {
    let socket = socket.to_string();
    std::thread::spawn(move || {
        let s = seconds.to_string();
        xlb(None, &["trace", "--socket", &socket, "--sample", "1", "--count", "1000", "--seconds", &s]).unwrap()
    })
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "xlb trace failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn trace_shows_flows_backends_replies_and_drop_reasons() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let d = Daemon::start(topo.lb_ns(), &config(), &["eth0", "eth1"]).unwrap();
    let socket = d.socket.to_str().unwrap().to_string();

    let t = trace(&socket, 4);
    d.expect_log("trace started", 1);
    let url = http_url(IpAddr::from(VIP_V4), 80, "/");
    let answered: Vec<(u16, String)> = (43000..43003u16)
        .map(|port| (port, topo.client().curl_with_local_port(&url, port).unwrap().trim().to_string()))
        .collect();
    send_truncated_tcp(&topo);
    let text = stdout(&t.join().unwrap());
    eprintln!("xlb trace printed:\n{text}");
    d.expect_log("trace stopped", 1);

    let lines: Vec<&str> = text.lines().collect();
    for (port, body) in &answered {
        let backend = match body.as_str() {
            "web1" => "198.18.1.11:80",
            "web2" => "198.18.1.12:80",
            other => panic!("unexpected answer {other:?}"),
        };
        let flow = format!(" tcp {CLIENT_V4}:{port} -> {VIP_V4}:80 service=www ");
        let miss = lines
            .iter()
            .position(|l| l.contains(&flow) && l.contains(&format!("conntrack=miss backend={backend} action=redirect")))
            .unwrap_or_else(|| {
                panic!("no conntrack miss to {backend} for client port {port} ({body} answered):\n{text}")
            });
        assert!(
            lines[miss..]
                .iter()
                .any(|l| l.contains(&flow) && l.contains(&format!("conntrack=hit backend={backend} action=redirect"))),
            "no conntrack hit after the miss for client port {port}:\n{text}"
        );
        let reply =
            format!(" tcp {backend} -> {CLIENT_V4}:{port} service=www nat-reply backend={backend} action=redirect");
        assert!(lines.iter().any(|l| l.contains(&reply)), "no NAT reply line {reply:?}:\n{text}");
    }
    let refused = format!(" tcp {CLIENT_V4} -> {VIP_V4} refused action=drop reason=truncated");
    assert!(lines.iter().any(|l| l.ends_with(&refused)), "no drop line {refused:?}:\n{text}");

    // Off again: traffic now leaves nothing for the next trace to read.
    topo.client().curl_with_local_port(&url, 43010).unwrap();
    let t = trace(&socket, 1);
    let quiet = stdout(&t.join().unwrap());
    assert_eq!(quiet, "", "events from while no trace ran");
    d.expect_log("trace stopped", 2);

    let bad = xlb(None, &["trace", "--socket", &socket, "--sample", "0"]).unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("sample must be between 1"), "sample 0: {err}");
}
