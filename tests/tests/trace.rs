//! `xlb trace` against a real daemon in the classic topology: curl's flows
//! show up with their service, a conntrack miss then hits, the backend that
//! answered and the NAT replies; a malformed packet to the VIP shows up with
//! its drop reason; and tracing is off again once the trace ends.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use xlb_testbed::{
    http_url,
    packet::Pkt,
    require_root,
    xlb::{xlb, Daemon},
    Netns, Topology, CLIENT_V4, VIP_V4,
};

fn config(socket: &str) -> String {
    format!(
        "[daemon]\ninterfaces = [\"eth0\", \"eth1\"]\nxdp_mode = \"native\"\nmetrics = \"\"\nconntrack_entries = 4096\n\
         admin_socket = \"{socket}\"\n\n[[service]]\nname = \"www\"\nvip = \"{VIP_V4}:80\"\n[service.health]\ncheck = \"none\"\n\
         [[service.backend]]\naddress = \"198.18.1.11:80\"\n[[service.backend]]\naddress = \"198.18.1.12:80\"\n"
    )
}

fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let s = ns.must(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let v: Vec<u8> = s.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    v.try_into().unwrap()
}

/// A TCP packet to the VIP whose header is cut short (IPv4 total length 30:
/// 10 bytes of a 20-byte TCP header), sent from the client's eth0 as a raw frame.
fn send_truncated_tcp(topo: &Topology) {
    let mut p = Pkt::tcp(CLIENT_V4.into(), VIP_V4.into(), 44444, 80);
    p.eth_dst = mac(topo.lb_ns(), "eth0");
    p.eth_src = mac(topo.client_ns(), "eth0");
    let mut f = p.build();
    f.truncate(14 + 20 + 10);
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
    let py = "import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0', 0))\ns.send(bytes.fromhex(sys.argv[1]))";
    topo.client_ns().run(&["python3", "-c", py, &hex]).expect("send a raw frame from the client");
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

fn wait_for_log(d: &Daemon, text: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches(text).count() < count {
        assert!(Instant::now() < deadline, "no {text:?} (x{count}) in the daemon log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "xlb trace failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn trace_shows_flows_backends_replies_and_drop_reasons() {
    if !require_root("trace topology") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    // Daemon::start puts the admin socket in the daemon's own directory.
    let d = Daemon::start(topo.lb_ns(), &config("/run/xlb/unused.sock"), &["eth0", "eth1"]).unwrap();
    let socket = d.socket.to_str().unwrap().to_string();

    let t = trace(&socket, 4);
    wait_for_log(&d, "trace started", 1);
    let url = http_url(IpAddr::from(VIP_V4), 80, "/");
    let answered: Vec<(u16, String)> = (43000..43003u16)
        .map(|port| (port, topo.client().curl_with_local_port(&url, port).unwrap().trim().to_string()))
        .collect();
    send_truncated_tcp(&topo);
    let text = stdout(&t.join().unwrap());
    wait_for_log(&d, "trace stopped", 1);

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
    wait_for_log(&d, "trace stopped", 2);

    let bad = xlb(None, &["trace", "--socket", &socket, "--sample", "0"]).unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("sample must be between 1"), "sample 0: {err}");
}
