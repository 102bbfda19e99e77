//! Firewall fixtures: `allow` / `deny` (IPv4 and IPv6, longest prefix, deny at equal
//! length), `[daemon] deny`, `closed_ports`, `new_flows_per_source` (burst, refusal,
//! refill), and what a reload does to established flows. Run through the real XDP program
//! with BPF_PROG_TEST_RUN, maps filled by the daemon's own code (see `datapath.rs`).

use std::{net::IpAddr, time::Duration};

use lb_common::counter;
use xlb::{
    balancer::Balancer,
    config::{Cidr, ClosedPorts, Config, RateLimit},
};
use xlb_testbed::{
    packet::{Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config, run, Bed, CLIENT_MAC},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr { addr: ip(a), len: l.parse().unwrap() }
}

/// The fixture services with rules: web4 (198.18.0.10:80) allows 198.18.0.0/24 but denies
/// 198.18.0.128/25 except 198.18.0.200, and has 198.18.0.64/26 in both lists; web6 denies
/// 2001:db8:0:1::/64; `[daemon] deny` holds 198.18.0.66 and 2001:db8::66; dns4 limits new
/// flows to 4/s (a token every 250 ms: the test's packets come well within one) with a burst of 3.
fn config(closed: ClosedPorts) -> Config {
    let mut cfg = fixture_config();
    cfg.daemon.deny = vec![cidr("198.18.0.66/32"), cidr("2001:db8::66/128")];
    cfg.daemon.closed_ports = closed;
    for s in &mut cfg.services {
        match s.name.as_str() {
            "web4" => {
                s.allow = vec![cidr("198.18.0.0/24"), cidr("198.18.0.200/32"), cidr("198.18.0.64/26")];
                s.deny = vec![cidr("198.18.0.128/25"), cidr("198.18.0.64/26")];
            }
            "web6" => s.deny = vec![cidr("2001:db8:0:1::/64")],
            "dns4" => s.new_flows_per_source = Some(RateLimit { rate: 4, burst: 3 }),
            _ => {}
        }
    }
    cfg
}

/// Runs `p` from the client side: the action and the one counter that rose (if exactly one did).
fn send(bal: &Balancer, b: &Bed, mut p: Pkt) -> (u32, Option<u32>) {
    p.eth_dst = b.c0_mac;
    p.eth_src = CLIENT_MAC;
    let before = bal.dp.counters().unwrap();
    let (action, _) = run(bal, &p.build(), b.c0);
    let after = bal.dp.counters().unwrap();
    let rose: Vec<u32> = (0..counter::NUM_COUNTERS).filter(|&i| after[i as usize] != before[i as usize]).collect();
    (action, if rose.len() == 1 { Some(rose[0]) } else { None })
}

fn name(c: Option<u32>) -> String {
    match c {
        Some(i) => counter::drop_name(i).map_or(format!("counter {i}"), str::to_owned),
        None => "no single counter".into(),
    }
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn firewall_allow_deny_longest_prefix_daemon_deny_and_closed_ports() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config(ClosedPorts::Drop);
            let mut bal = Balancer::load(&cfg).expect("load the XDP program");
            bal.apply(&cfg).expect("fill the maps");
            let (vip4, vip6) = (ip("198.18.0.10"), ip("2001:db8::10"));
            let denied = Some(counter::DROP_DENIED);
            let closed = Some(counter::DROP_CLOSED_PORT);
            let cases: Vec<(&str, Pkt, u32, Option<u32>)> = vec![
                ("v4 in allow /24", Pkt::tcp(ip("198.18.0.1"), vip4, 42000, 80), XDP_REDIRECT, None),
                ("v4 in deny /25 inside allow /24", Pkt::tcp(ip("198.18.0.130"), vip4, 42001, 80), XDP_DROP, denied),
                (
                    "v4 allow /32 inside deny /25: longest wins",
                    Pkt::tcp(ip("198.18.0.200"), vip4, 42002, 80),
                    XDP_REDIRECT,
                    None,
                ),
                ("v4 /26 in both lists: deny wins", Pkt::tcp(ip("198.18.0.70"), vip4, 42003, 80), XDP_DROP, denied),
                ("v4 outside the allow list", Pkt::tcp(ip("198.18.5.1"), vip4, 42004, 80), XDP_DROP, denied),
                (
                    "v4 [daemon] deny beats the service's allow",
                    Pkt::tcp(ip("198.18.0.66"), vip4, 42005, 80),
                    XDP_DROP,
                    denied,
                ),
                (
                    "v4 [daemon] deny on a service without lists",
                    Pkt::tcp(ip("198.18.0.66"), ip("198.18.0.20"), 42006, 80),
                    XDP_DROP,
                    denied,
                ),
                (
                    "v4 another service without lists admits",
                    Pkt::tcp(ip("198.18.5.1"), ip("198.18.0.20"), 42007, 80),
                    XDP_REDIRECT,
                    None,
                ),
                ("v6 admitted (no allow list)", Pkt::tcp(ip("2001:db8::1"), vip6, 42000, 80), XDP_REDIRECT, None),
                ("v6 in deny /64", Pkt::tcp(ip("2001:db8:0:1::5"), vip6, 42001, 80), XDP_DROP, denied),
                ("v6 [daemon] deny", Pkt::tcp(ip("2001:db8::66"), vip6, 42002, 80), XDP_DROP, denied),
                ("v4 tcp to a closed port of a VIP", Pkt::tcp(ip("198.18.0.1"), vip4, 42010, 22), XDP_DROP, closed),
                ("v4 udp to a tcp service's port", Pkt::udp(ip("198.18.0.1"), vip4, 42011, 80), XDP_DROP, closed),
                ("v6 tcp to a closed port of a VIP", Pkt::tcp(ip("2001:db8::1"), vip6, 42012, 8443), XDP_DROP, closed),
                (
                    "v4 tcp to port 22 of a host that is no VIP",
                    Pkt::tcp(ip("198.18.0.1"), ip("198.18.0.99"), 42013, 22),
                    XDP_PASS,
                    Some(counter::PASS_NOT_VIP),
                ),
            ];
            let mut problems = vec![];
            for (desc, p, action, count) in cases {
                let (got, rose) = send(&bal, &b, p);
                // An admitted packet counts nowhere in COUNTERS (it is the service's).
                if got != action || rose != count {
                    problems.push(format!(
                        "{desc}: action {got} ({}), expected {action} ({})",
                        name(rose),
                        name(count)
                    ));
                }
            }
            let web4 = bal.services.iter().find(|s| s.cfg.name == "web4").unwrap().id;
            let st = bal.dp.service_stats(web4).unwrap();
            // .130, .70, 198.18.5.1 (the service's own rules; the daemon's count globally only).
            if st.denied != 3 {
                problems.push(format!("web4 counted {} denied, expected 3", st.denied));
            }

            // closed_ports = "pass": the same packets go to the kernel.
            let cfg = config(ClosedPorts::Pass);
            bal.apply(&cfg).expect("reload");
            let (got, rose) = send(&bal, &b, Pkt::tcp(ip("198.18.0.1"), vip4, 42020, 22));
            if got != XDP_PASS || rose != Some(counter::PASS_NOT_VIP) {
                problems.push(format!("closed_ports = pass: action {got} ({}), expected PASS (not_vip)", name(rose)));
            }
            problems
        })
        .expect("run in namespace");
    assert!(problems.is_empty(), "{} case(s) failed:\n{}", problems.len(), problems.join("\n"));
}

/// Notes a problem unless the packet got `action` and raised exactly `count`.
fn check(problems: &mut Vec<String>, what: &str, (got, rose): (u32, Option<u32>), action: u32, count: Option<u32>) {
    if got != action || rose != count {
        problems.push(format!("{what}: action {got} ({}), expected {action} ({})", name(rose), name(count)));
    }
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn firewall_rate_limit_burst_refusal_refill_and_established_flows() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config(ClosedPorts::Pass);
            let mut bal = Balancer::load(&cfg).expect("load the XDP program");
            bal.apply(&cfg).expect("fill the maps");
            let (cl, vip) = (ip("198.18.0.7"), ip("198.18.0.10"));
            let mut problems = vec![];
            // Burst of 3 new flows (UDP, new source ports), then refused.
            for port in 43000..43003u16 {
                check(
                    &mut problems,
                    &format!("new flow {port} within the burst"),
                    send(&bal, &b, Pkt::udp(cl, vip, port, 53)),
                    XDP_REDIRECT,
                    None,
                );
            }
            let limited = Some(counter::DROP_RATE_LIMITED);
            check(
                &mut problems,
                "4th new flow at once",
                send(&bal, &b, Pkt::udp(cl, vip, 43003, 53)),
                XDP_DROP,
                limited,
            );
            // Another source has its own bucket.
            check(
                &mut problems,
                "another source",
                send(&bal, &b, Pkt::udp(ip("198.18.0.8"), vip, 43003, 53)),
                XDP_REDIRECT,
                None,
            );
            // An established flow is not charged: its datagrams keep going.
            for _ in 0..5 {
                check(
                    &mut problems,
                    "established flow",
                    send(&bal, &b, Pkt::udp(cl, vip, 43000, 53)),
                    XDP_REDIRECT,
                    None,
                );
            }
            // Refill: 4/s, so after 800 ms the bucket is full again (3), not more.
            std::thread::sleep(Duration::from_millis(800));
            for port in 43010..43013u16 {
                check(
                    &mut problems,
                    &format!("new flow {port} after the refill"),
                    send(&bal, &b, Pkt::udp(cl, vip, port, 53)),
                    XDP_REDIRECT,
                    None,
                );
            }
            check(
                &mut problems,
                "4th new flow after the refill",
                send(&bal, &b, Pkt::udp(cl, vip, 43013, 53)),
                XDP_DROP,
                limited,
            );
            let dns4 = bal.services.iter().find(|s| s.cfg.name == "dns4").unwrap().id;
            let st = bal.dp.service_stats(dns4).unwrap();
            if st.rate_limited != 2 {
                problems.push(format!("dns4 counted {} rate_limited, expected 2", st.rate_limited));
            }

            // A reload that denies a source keeps its established flows and refuses its new ones.
            let src = ip("198.18.0.9");
            check(
                &mut problems,
                "SYN before the deny",
                send(&bal, &b, Pkt::tcp(src, vip, 44000, 80)),
                XDP_REDIRECT,
                None,
            );
            let mut ack = Pkt::tcp(src, vip, 44000, 80);
            ack.tcp_flags = TCP_ACK;
            let mut cfg = config(ClosedPorts::Pass);
            cfg.services.iter_mut().find(|s| s.name == "web4").unwrap().deny.push(cidr("198.18.0.9/32"));
            bal.apply(&cfg).expect("reload with a deny");
            check(&mut problems, "established flow after the deny", send(&bal, &b, ack), XDP_REDIRECT, None);
            check(
                &mut problems,
                "new flow after the deny",
                send(&bal, &b, Pkt::tcp(src, vip, 44001, 80)),
                XDP_DROP,
                Some(counter::DROP_DENIED),
            );
            // And a reload that drops the deny admits it again.
            bal.apply(&config(ClosedPorts::Pass)).expect("reload without it");
            check(
                &mut problems,
                "new flow after the deny is gone",
                send(&bal, &b, Pkt::tcp(src, vip, 44002, 80)),
                XDP_REDIRECT,
                None,
            );
            problems
        })
        .expect("run in namespace");
    assert!(problems.is_empty(), "{} case(s) failed:\n{}", problems.len(), problems.join("\n"));
}
