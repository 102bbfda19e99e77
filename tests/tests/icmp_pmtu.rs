//! Path MTU discovery through a VIP (issue 11): a 100 kB download from a NAT backend
//! to a host behind a link with MTU 1280 completes only because the router's
//! "fragmentation needed" (sent to the VIP) reaches the backend, rewritten by xlb.
//!
//! ```text
//!  far 198.18.2.1 ── (MTU 1280 at the router's end) ── client ns (routes, 198.18.2.254)
//!      ── lb (xlb: VIP 198.18.0.10:80 -> web1:8080, NAT) ── web1 (python http.server, 100 kB file)
//! ```
//!
//! The same download with the ICMP program left out (`XLB_NO_ICMP`, the data path as it
//! was) stalls: the router's error dies in the lb's kernel, which has no VIP. The same for
//! IPv6 (packet too big; VIP [2001:db8::10]:80, far host 2001:db8:2::1).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xlb_testbed::{
    config::{ConfigToml, ServiceToml},
    netns::{Netns, NS_PREFIX},
    xlb::Daemon,
    Topology, VIP_V4, VIP_V6,
};

const SIZE: usize = 100_000;

/// Addresses of one family: VIP, web1, far host (checked), far host (stalled), router's
/// far side, the client (router) on the lb's side, prefix of the far link.
struct Family {
    v6: bool,
    vip: IpAddr,
    web1: &'static str,
    far: &'static str,
    far_stalled: &'static str,
    router: &'static str,
    client: &'static str,
    far_net: &'static str,
    len: &'static str,
}

const V4: Family = Family {
    v6: false,
    vip: IpAddr::V4(VIP_V4),
    web1: "198.18.1.11",
    far: "198.18.2.1",
    far_stalled: "198.18.2.2",
    router: "198.18.2.254",
    client: "198.18.0.1",
    far_net: "198.18.2.0/24",
    len: "24",
};

const V6: Family = Family {
    v6: true,
    vip: IpAddr::V6(VIP_V6),
    web1: "2001:db8:1::11",
    far: "2001:db8:2::1",
    far_stalled: "2001:db8:2::2",
    router: "2001:db8:2::fe",
    client: "2001:db8::1",
    far_net: "2001:db8:2::/64",
    len: "64",
};

fn config(f: &Family) -> String {
    let backend = SocketAddr::new(f.web1.parse().unwrap(), 8080);
    let svc = ServiceToml::new("big", SocketAddr::new(f.vip, 80)).set("forwarding", "nat").no_checks().backend(backend);
    ConfigToml::new().daemon("xdp_mode", "native").service(svc).to_string()
}

/// `curl` from `far`'s address `src`: (exit code, bytes received).
fn download(far: &Netns, f: &Family, src: &str, max_s: u32) -> (i32, usize) {
    let url = xlb_testbed::http_url(f.vip, 80, "/big.bin");
    let max = max_s.to_string();
    let out = far
        .exec_timeout(
            &["curl", "-sS", "--interface", src, "--max-time", &max, "-o", "/dev/null", "-w", "%{size_download}", &url],
            Duration::from_secs(u64::from(max_s) + 10),
        )
        .expect("run curl");
    let size = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.code().unwrap_or(-1), size)
}

fn to_backend(d: &Daemon) -> u64 {
    let j = d.status_json();
    j["icmp"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["event"] == "to_backend"))
        .and_then(|e| e["total"].as_u64())
        .unwrap_or_else(|| panic!("status JSON has no icmp to_backend counter: {j}"))
}

fn pmtu(f: &Family) {
    let topo = Topology::new(1).unwrap();
    let far = Netns::new(format!("{NS_PREFIX}-{}-far", topo.suffix())).unwrap();
    let (client, lb, web1) = (topo.client_ns(), topo.lb_ns(), topo.backend(1).ns());
    let must = |ns: &Netns, args: &[&str]| ns.ip(args).unwrap_or_else(|e| panic!("{}: ip {args:?}: {e:#}", ns.name()));
    let fam = if f.v6 { "-6" } else { "-4" };
    let add_addr = |ns: &Netns, a: &str, dev: &str| {
        let a = format!("{a}/{}", f.len);
        let mut args = vec![fam, "addr", "add", &a, "dev", dev];
        if f.v6 {
            args.push("nodad");
        }
        must(ns, &args);
    };
    must(client, &["link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", far.name()]);
    // The router's end is 1280; the far host's stays 1500, so it offers an MSS for 1500.
    must(client, &["link", "set", "eth1", "mtu", "1280", "up"]);
    add_addr(client, f.router, "eth1");
    client
        .sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
        ])
        .unwrap();
    must(&far, &["link", "set", "eth0", "up"]);
    // The stalled download comes from its own address: once xlb is gone its leftover
    // retransmissions are routed (un-NATed) by the lb and the router's errors reach web1
    // directly, which then knows the path MTU to that address, never to the checked one.
    for a in [f.far, f.far_stalled] {
        add_addr(&far, a, "eth0");
    }
    must(&far, &[fam, "route", "add", "default", "via", f.router]);
    // XDP rewrites what it forwards: no partial checksums from the far host.
    far.run(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    must(lb, &[fam, "route", "add", f.far_net, "via", f.client]);
    web1.sysctl(&[("net.ipv4.tcp_mtu_probing", "0")]).unwrap();

    let dir = std::env::temp_dir().join(format!("xlb-pmtu-{}", topo.suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.bin"), vec![b'x'; SIZE]).unwrap();
    let _server = web1
        .spawn(&["python3", "-m", "http.server", "8080", "--bind", f.web1, "--directory", dir.to_str().unwrap()])
        .unwrap();
    let server = SocketAddr::new(f.web1.parse().unwrap(), 8080);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !web1.tcp_connects(server, Duration::from_millis(200)) {
        assert!(std::time::Instant::now() < deadline, "the backend's HTTP server did not come up on {server}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Without xlb's ICMP handling: the download stalls (bounded by curl's --max-time).
    {
        let d = Daemon::start_with_env(lb, &config(f), &["eth0", "eth1"], &[("XLB_NO_ICMP", "1")]).unwrap();
        let (code, size) = download(&far, f, f.far_stalled, 6);
        eprintln!("XLB_NO_ICMP: curl exit {code}, {size} of {SIZE} bytes in 6 s");
        assert!(
            size < SIZE,
            "without ICMP handling the 100 kB download was expected to stall at the 1280 link; \
             it completed (curl exit {code}, {size} bytes): the test does not prove anything"
        );
        assert_eq!(to_backend(&d), 0, "XLB_NO_ICMP: no ICMP program, yet a to_backend count");
    }
    // With it: the router's error reaches web1 and the download completes.
    let d = Daemon::start(lb, &config(f), &["eth0", "eth1"]).unwrap();
    let (code, size) = download(&far, f, f.far, 20);
    let sent = to_backend(&d);
    eprintln!("with ICMP: curl exit {code}, {size} of {SIZE} bytes; errors sent to the backend: {sent}");
    eprintln!("{}", d.status());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (code, size),
        (0, SIZE),
        "100 kB download over the MTU 1280 link: expected curl exit 0 and {SIZE} bytes; \
         errors sent to the backend: {sent}; xlb status:\n{}",
        d.status()
    );
    assert!(sent >= 1, "the download completed but xlb counted no PMTU error sent to the backend");
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn pmtu_frag_needed_reaches_the_nat_backend() {
    pmtu(&V4);
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn pmtu_packet_too_big_reaches_the_nat_backend_v6() {
    pmtu(&V6);
}
