//! ICMP fixtures (issue 11): errors about VIP flows delivered to the right end, echo
//! requests to VIPs answered, and what is refused, run through the real XDP program
//! with BPF_PROG_TEST_RUN as in `datapath.rs`. Outputs are compared byte for byte with
//! frames built from scratch, and every checksum (outer IPv4 header, ICMP / ICMPv6 with
//! its pseudo-header, quoted IPv4 header, quoted TCP/UDP when whole) is re-verified.

use std::net::IpAddr;

use lb_common::{counter, PING_BURST};
use xlb::balancer::Balancer;
use xlb_testbed::{
    icmp::*,
    packet::{checksum, Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config as config, run, Bed, CLIENT_MAC, WEB1_MAC, WEB2_MAC},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Fixture {
    desc: &'static str,
    ingress: u32,
    input: Vec<u8>,
    action: u32,
    /// `None`: the output must equal the input.
    output: Option<Vec<u8>>,
    /// A counter that must rise by exactly one.
    counter: Option<u32>,
}

fn macs_icmp(mut p: Icmp, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    p.eth_dst = dst;
    p.eth_src = src;
    p.build()
}

fn macs_pkt(mut p: Pkt, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    p.eth_dst = dst;
    p.eth_src = src;
    p.build()
}

/// A reply segment with data, as a backend (or xlb, rewriting it) sends it.
fn reply_seg(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ttl: u8) -> Pkt {
    let mut p = Pkt::tcp(src, dst, sport, dport);
    p.tcp_flags = TCP_ACK;
    p.payload = vec![0x5a; 200];
    p.ttl = ttl;
    p
}

fn fixtures(b: &Bed) -> Vec<Fixture> {
    let (c0, b0) = (b.c0, b.b0);
    let (cl4, vip4, web1, dsr4) = (ip("198.18.0.1"), ip("198.18.0.10"), ip("198.18.1.11"), ip("198.18.0.20"));
    let (cl6, vip6, web1_6, dsr6) = (ip("2001:db8::1"), ip("2001:db8::10"), ip("2001:db8:1::11"), ip("2001:db8::20"));
    let (router_c4, router_b4, router_c6) = (ip("198.18.0.254"), ip("198.18.1.254"), ip("2001:db8::fe"));
    let from_client = |p: Icmp| macs_icmp(p, b.c0_mac, CLIENT_MAC);
    let to_client = |p: Icmp| macs_icmp(p, CLIENT_MAC, b.c0_mac);
    let from_backend = |p: Icmp, m| macs_icmp(p, b.b0_mac, m);
    let to_backend = |p: Icmp, m| macs_icmp(p, m, b.b0_mac);
    let ttl = |mut p: Icmp, t| {
        p.ttl = t;
        p
    };
    let quote = |p: &Pkt, n: usize| ip_packet(&p.build(), n);
    let all = usize::MAX;
    let mut fx = vec![];
    let mut f = |desc, ingress, input: Vec<u8>, action, output: Option<Vec<u8>>, counter| {
        fx.push(Fixture { desc, ingress, input, action, output, counter })
    };

    // ---- frag needed / packet too big about a VIP's reply: to the flow's backend
    let seen = reply_seg(vip4, cl4, 80, 40000, 63);
    let sent = reply_seg(web1, cl4, 8080, 40000, 63);
    f(
        "nat v4 frag needed (router -> VIP, quoting VIP:80 -> client): router -> web1 quoting web1:8080 -> client",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&seen, all))),
        XDP_REDIRECT,
        Some(to_backend(
            ttl(Icmp::error(router_c4, web1, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&sent, all)), 63),
            WEB1_MAC,
        )),
        Some(counter::ICMP_TO_BACKEND),
    );
    f(
        "nat v4 frag needed quoting 28 bytes (no TCP checksum in the quote): same rewrite, ICMP checksum right",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&seen, 28))),
        XDP_REDIRECT,
        Some(to_backend(
            ttl(Icmp::error(router_c4, web1, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&sent, 28)), 63),
            WEB1_MAC,
        )),
        Some(counter::ICMP_TO_BACKEND),
    );
    let seen6 = reply_seg(vip6, cl6, 80, 40000, 63);
    let sent6 = reply_seg(web1_6, cl6, 8080, 40000, 63);
    f(
        "nat v6 packet too big (router -> VIP): router -> web1 quoting web1:8080 -> client, pseudo-header too",
        c0,
        from_client(Icmp::error(router_c6, vip6, ICMP6_PACKET_TOO_BIG, 0, 1280, &quote(&seen6, all))),
        XDP_REDIRECT,
        Some(to_backend(
            ttl(Icmp::error(router_c6, web1_6, ICMP6_PACKET_TOO_BIG, 0, 1280, &quote(&sent6, all)), 63),
            WEB1_MAC,
        )),
        Some(counter::ICMP_TO_BACKEND),
    );
    let dsr = Icmp::error(
        router_c4,
        dsr4,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        1280,
        &quote(&reply_seg(dsr4, cl4, 80, 40000, 64), all),
    );
    f(
        "dsr v4 frag needed: unchanged, to the flow's backend (web2) by MAC",
        c0,
        from_client(dsr.clone()),
        XDP_REDIRECT,
        Some(to_backend(dsr, WEB2_MAC)),
        Some(counter::ICMP_TO_BACKEND),
    );
    let dsr =
        Icmp::error(router_c6, dsr6, ICMP6_PACKET_TOO_BIG, 0, 1280, &quote(&reply_seg(dsr6, cl6, 80, 40000, 64), all));
    f(
        "dsr v6 packet too big: unchanged, to web2 by MAC",
        c0,
        from_client(dsr.clone()),
        XDP_REDIRECT,
        Some(to_backend(dsr, WEB2_MAC)),
        Some(counter::ICMP_TO_BACKEND),
    );

    // ---- errors from the backend side about NAT flows: back to the client, from the VIP
    let mut q = Pkt::udp(cl4, vip4, 40001, 53);
    q.payload = b"a query".to_vec();
    f("nat v4 udp query (tracks the flow)", c0, macs_pkt(q.clone(), b.c0_mac, CLIENT_MAC), XDP_REDIRECT, None, None);
    let mut at_backend = Pkt::udp(cl4, web1, 40001, 5353);
    at_backend.payload = q.payload.clone();
    at_backend.ttl = 63;
    let mut as_client_sent = q.clone();
    as_client_sent.ttl = 63;
    f(
        "nat v4 port unreachable from web1: VIP -> client quoting client -> VIP:53 (no backend address left)",
        b0,
        from_backend(
            Icmp::error(web1, cl4, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, &quote(&at_backend, all)),
            WEB1_MAC,
        ),
        XDP_REDIRECT,
        Some(to_client(ttl(
            Icmp::error(vip4, cl4, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, &quote(&as_client_sent, all)),
            63,
        ))),
        Some(counter::ICMP_TO_CLIENT),
    );
    let mut syn = Pkt::tcp(cl4, vip4, 40002, 80);
    syn.payload = vec![7; 100];
    f("nat v4 tcp (tracks the flow)", c0, macs_pkt(syn.clone(), b.c0_mac, CLIENT_MAC), XDP_REDIRECT, None, None);
    let mut at_backend = Pkt::tcp(cl4, web1, 40002, 8080);
    at_backend.payload = syn.payload.clone();
    at_backend.ttl = 63;
    let mut as_sent = syn.clone();
    as_sent.ttl = 63;
    f(
        "nat v4 frag needed from a router between lb and web1: router kept, quoted client -> VIP:80",
        b0,
        from_backend(
            Icmp::error(router_b4, cl4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&at_backend, all)),
            WEB1_MAC,
        ),
        XDP_REDIRECT,
        Some(to_client(ttl(
            Icmp::error(router_b4, cl4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&as_sent, all)),
            63,
        ))),
        Some(counter::ICMP_TO_CLIENT),
    );
    let q6 = Pkt::udp(cl6, vip6, 40003, 53);
    f("nat v6 udp query (tracks the flow)", c0, macs_pkt(q6.clone(), b.c0_mac, CLIENT_MAC), XDP_REDIRECT, None, None);
    let mut at_backend = Pkt::udp(cl6, web1_6, 40003, 53);
    at_backend.ttl = 63;
    let mut as_sent = q6.clone();
    as_sent.ttl = 63;
    f(
        "nat v6 port unreachable from web1: VIP -> client quoting client -> VIP (outer source in the pseudo-header)",
        b0,
        from_backend(
            Icmp::error(web1_6, cl6, ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH, 0, &quote(&at_backend, all)),
            WEB1_MAC,
        ),
        XDP_REDIRECT,
        Some(to_client(ttl(
            Icmp::error(vip6, cl6, ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH, 0, &quote(&as_sent, all)),
            63,
        ))),
        Some(counter::ICMP_TO_CLIENT),
    );

    // ---- echo requests to VIPs
    f(
        "echo request to a v4 VIP: answered by xlb (XDP_TX), TTL 64",
        c0,
        from_client(Icmp::echo(cl4, vip4, false, 1, b"ping data")),
        XDP_TX,
        Some(to_client(Icmp::echo(vip4, cl4, true, 1, b"ping data"))),
        Some(counter::PING_ANSWERED),
    );
    f(
        "echo request to a v6 VIP: answered by xlb",
        c0,
        from_client(Icmp::echo(cl6, vip6, false, 2, b"ping6")),
        XDP_TX,
        Some(to_client(Icmp::echo(vip6, cl6, true, 2, b"ping6"))),
        Some(counter::PING_ANSWERED),
    );
    f(
        "echo request to the lb's own address: the kernel's",
        c0,
        from_client(Icmp::echo(cl4, ip("198.18.0.2"), false, 3, b"x")),
        XDP_PASS,
        None,
        Some(counter::PASS_NOT_VIP),
    );

    // ---- refused or left to the kernel
    f(
        "error to a VIP quoting 10 bytes: dropped (icmp_truncated)",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&seen, 10))),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_TRUNCATED),
    );
    f(
        "error to a VIP quoting 20 bytes of IP, 4 of TCP (no ports): dropped (icmp_truncated)",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&seen, 24))),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_TRUNCATED),
    );
    let mut frag = seen.clone();
    frag.ipv4_frag = 0x0010; // offset 128 bytes: no ports
    f(
        "error to a VIP quoting a non-first fragment: dropped (icmp_fragment)",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&frag, all))),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_FRAGMENT),
    );
    let mut ext = seen6.clone();
    ext.ipv6_ext = Some(44);
    f(
        "error to a v6 VIP quoting a fragment header: dropped (icmp_fragment)",
        c0,
        from_client(Icmp::error(router_c6, vip6, ICMP6_PACKET_TOO_BIG, 0, 1280, &quote(&ext, all))),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_FRAGMENT),
    );
    f(
        "error to a VIP about VIP:443 (no service): dropped (icmp_unknown_flow)",
        c0,
        from_client(Icmp::error(
            router_c4,
            vip4,
            ICMP_DEST_UNREACH,
            ICMP_FRAG_NEEDED,
            1280,
            &quote(&reply_seg(vip4, cl4, 443, 40000, 63), all),
        )),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_UNKNOWN_FLOW),
    );
    f(
        "host unreachable about a VIP's reply (not frag needed): the kernel's (icmp)",
        c0,
        from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, 0, &quote(&seen, all))),
        XDP_PASS,
        None,
        Some(counter::PASS_ICMP),
    );
    f(
        "port unreachable to a client about an untracked flow to web1: the kernel's, untouched",
        b0,
        from_backend(
            Icmp::error(
                web1,
                cl4,
                ICMP_DEST_UNREACH,
                ICMP_PORT_UNREACH,
                0,
                &quote(&Pkt::udp(cl4, web1, 40999, 5353), all),
            ),
            WEB1_MAC,
        ),
        XDP_PASS,
        None,
        Some(counter::PASS_NOT_VIP),
    );

    // ---- every header within the IP packet's own length, not the frame's (found by the fuzzer's model)
    f(
        "echo request to a VIP whose IPv4 length ends inside the ICMP header (the rest is Ethernet padding): \
         the kernel's (icmp), not answered",
        c0,
        ipv4_len(from_client(Icmp::echo(cl4, vip4, false, 5, b"")), 20 + 4),
        XDP_PASS,
        None,
        Some(counter::PASS_ICMP),
    );
    f(
        "error to a VIP whose IPv4 length ends inside the quoted header (a fragment's, the rest in padding): \
         dropped (icmp_truncated), the padding not read as a header",
        c0,
        ipv4_len(
            from_client(Icmp::error(router_c4, vip4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 1280, &quote(&frag, 20))),
            20 + 8 + 12,
        ),
        XDP_DROP,
        None,
        Some(counter::DROP_ICMP_TRUNCATED),
    );
    fx
}

/// `f` (untagged IPv4) with the IP total length set to `tot` and its header checksum made right again.
fn ipv4_len(mut f: Vec<u8>, tot: u16) -> Vec<u8> {
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn icmp_fixtures() {
    let b = bed();
    let failures =
        b.ns.run_in(|| {
            let cfg = config();
            let mut failures = vec![];
            for resolved in [false, true] {
                let mut bal = Balancer::load(&cfg).expect("load the XDP program");
                bal.apply(&cfg).expect("fill the maps");
                if resolved {
                    bal.refresh_next_hops().expect("resolve next hops");
                }
                for mut fx in fixtures(&b) {
                    if !resolved && fx.counter == Some(counter::ICMP_TO_BACKEND) {
                        // Before the daemon resolved the backends' next hops the ICMP
                        // program does not ask the FIB: the kernel gets it, untouched.
                        (fx.action, fx.output, fx.counter) = (XDP_PASS, None, Some(counter::PASS_NO_ROUTE));
                    }
                    let desc = format!("{}{}", if resolved { "[neigh] " } else { "[fib] " }, fx.desc);
                    let before = bal.dp.counters().unwrap();
                    let (action, out) = run(&bal, &fx.input, fx.ingress);
                    let after = bal.dp.counters().unwrap();
                    if action != fx.action {
                        failures.push(format!("{desc}: action {action}, expected {}", fx.action));
                        continue;
                    }
                    if let Some(want) = &fx.output {
                        if out != *want {
                            failures.push(format!("{desc}:\n  got      {}\n  expected {}", hex(&out), hex(want)));
                            continue;
                        }
                        let icmp = u16::from_be_bytes([out[12], out[13]]) == 0x0800 && out[23] == 1
                            || u16::from_be_bytes([out[12], out[13]]) == 0x86dd && out[20] == 58;
                        if icmp {
                            match verify_icmp(&out) {
                                Ok(c)
                                    if c.ty != 0
                                        && c.ty != 129
                                        && !c.inner_l4_verified
                                        && fx.desc.contains("28 bytes") => {}
                                Ok(c) if c.ty != 0 && c.ty != 129 && !c.inner_l4_verified => {
                                    failures.push(format!("{desc}: the quoted TCP/UDP checksum was not verified"))
                                }
                                Ok(_) => {}
                                Err(e) => failures.push(format!("{desc}: output does not verify: {e}")),
                            }
                        }
                    } else if fx.action == XDP_PASS && out != fx.input {
                        failures.push(format!("{desc}: changed a packet it passed:\n  got {}", hex(&out)));
                    }
                    for i in 0..counter::NUM_COUNTERS as usize {
                        let delta = after[i] - before[i];
                        let expect = u64::from(fx.counter == Some(i as u32));
                        if delta != expect {
                            failures.push(format!("{desc}: counter {i} rose by {delta}, expected {expect}"));
                        }
                    }
                }
            }
            failures
        })
        .expect("run in namespace");
    assert!(failures.is_empty(), "{} ICMP fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// Echo replies are rate-limited per CPU (token bucket, `PING_BURST` deep), and a VIP
/// address with a service that has `answer_ping = false` leaves echo requests to the kernel.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn ping_is_rate_limited_and_can_be_turned_off() {
    let b = bed();
    let (answered, limited, off_action, off_counter) =
        b.ns.run_in(|| {
            let mut cfg = config();
            // web4 and dns4 share 198.18.0.10: one false turns it off for the address.
            cfg.services[1].answer_ping = false;
            let mut bal = Balancer::load(&cfg).expect("load the XDP program");
            bal.apply(&cfg).expect("fill the maps");
            let mut echo = Icmp::echo(ip("198.18.0.1"), ip("198.18.0.30"), false, 1, b"flood");
            echo.eth_dst = b.c0_mac;
            echo.eth_src = CLIENT_MAC;
            let frame = echo.build();
            let before = bal.dp.counters().unwrap();
            // 400 back to back: far faster than the refill (1000/s per CPU).
            for _ in 0..400 {
                run(&bal, &frame, b.c0);
            }
            let after = bal.dp.counters().unwrap();
            let d = |i: u32| after[i as usize] - before[i as usize];
            let mut off = Icmp::echo(ip("198.18.0.1"), ip("198.18.0.10"), false, 1, b"off");
            off.eth_dst = b.c0_mac;
            off.eth_src = CLIENT_MAC;
            let (action, _) = run(&bal, &off.build(), b.c0);
            let after_off = bal.dp.counters().unwrap();
            (
                d(counter::PING_ANSWERED),
                d(counter::DROP_PING_RATE_LIMITED),
                action,
                after_off[counter::PASS_ICMP as usize] - after[counter::PASS_ICMP as usize],
            )
        })
        .expect("run in namespace");
    // The run may move between the 2 CPUs: each has its own bucket.
    assert!(
        (PING_BURST..400).contains(&answered) && answered + limited == 400,
        "400 echo requests in a burst: expected at least {PING_BURST} answered and the rest (some) rate-limited; \
         got {answered} answered, {limited} rate-limited"
    );
    assert_eq!(
        (off_action, off_counter),
        (XDP_PASS, 1),
        "echo to a VIP address with answer_ping = false on one of its services: expected XDP_PASS counted as icmp"
    );
}
