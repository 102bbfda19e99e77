//! ipip / gue through the real XDP programs with BPF_PROG_TEST_RUN, with maps
//! filled by the daemon's own code (as in datapath.rs): the encapsulated
//! frame compared byte for byte against one built from the RFCs' layouts
//! (tests/src/encap.rs) and decoded again with every checksum verified; the
//! MTU limit; and `xlb_decap`: stripped exactly, others untouched, broken
//! outer headers dropped and counted, never passed half-stripped.

use std::net::IpAddr;

use lb_common::{addr_v4, addr_v6, counter, decap, flow_hash, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP};
use xlb::{balancer::Balancer, dataplane::decap::Decap};
use xlb_testbed::{
    encap::{decode, encapsulate, inner_packet, Outer},
    packet::{checksum, Pkt},
    xdpbed::{bed, fixture_config as config, run, run_program, Bed, CLIENT_MAC, WEB1_MAC, WEB2_MAC},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The kernel's flow hash of a TCP flow, computed by lb-common (as `xlb explain` does).
fn hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> u32 {
    let (s, d, family) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (addr_v4(s.octets()), addr_v4(d.octets()), FAMILY_V4),
        (IpAddr::V6(s), IpAddr::V6(d)) => (addr_v6(s.octets()), addr_v6(d.octets()), FAMILY_V6),
        _ => panic!("families differ"),
    };
    flow_hash(&FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    })
}

/// The outer source the fixture config's prefixes give a flow with hash `h`:
/// 198.18.5.0/24 and 2001:db8:5::/64, host bits from the hash's bytes as the
/// data path keeps it in memory (little-endian words, repeated per word).
fn outer_source(v4: bool, h: u32) -> IpAddr {
    let hb = h.to_ne_bytes();
    if v4 {
        IpAddr::from([198, 18, 5, hb[3]])
    } else {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 5]);
        o[8..12].copy_from_slice(&hb);
        o[12..16].copy_from_slice(&hb);
        IpAddr::from(o)
    }
}

struct Case {
    desc: &'static str,
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
    mac: [u8; 6],
    gue: bool,
}

fn cases() -> Vec<Case> {
    let c = |desc, client, vip, backend, mac, gue| Case {
        desc,
        client: ip(client),
        vip: ip(vip),
        backend: ip(backend),
        mac,
        gue,
    };
    vec![
        c("ipip v4", "198.18.0.1", "198.18.0.40", "198.18.1.11", WEB1_MAC, false),
        c("gue v4", "198.18.0.1", "198.18.0.41", "198.18.1.12", WEB2_MAC, true),
        c("ipip v6", "2001:db8::1", "2001:db8::40", "2001:db8:1::11", WEB1_MAC, false),
        c("gue v6", "2001:db8::1", "2001:db8::41", "2001:db8:1::12", WEB2_MAC, true),
    ]
}

/// What the data path must send for `input` (a frame from the client) of `case`.
fn expected(b: &Bed, case: &Case, input: &[u8], sport: u16) -> Vec<u8> {
    let v4 = case.client.is_ipv4();
    let h = hash(case.client, case.vip, sport, 80);
    let o = Outer {
        eth_dst: case.mac,
        eth_src: b.b0_mac,
        src: outer_source(v4, h),
        dst: case.backend,
        udp: case.gue.then_some((0xc000 | (h as u16 & 0x3fff), 6080)),
        tos: 0,
        flow_label: if v4 { 0 } else { h & 0xfffff },
        ttl: 64,
        frag: if v4 { 0x4000 } else { 0 },
    };
    encapsulate(&o, inner_packet(input))
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn encap_fixtures() {
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
                let tag = if resolved { "[neigh]" } else { "[fib]" };
                for case in cases() {
                    for (what, payload, sport) in [("SYN", 0usize, 40000u16), ("1380-byte payload", 1380, 40001)] {
                        let mut p = Pkt::tcp(case.client, case.vip, sport, 80);
                        p.eth_dst = b.c0_mac;
                        p.eth_src = CLIENT_MAC;
                        p.payload = vec![0xab; payload];
                        let input = p.build();
                        let mut want = expected(&b, &case, &input, sport);
                        // Before the daemon resolved the backend's next hop the
                        // kernel gets the encapsulated packet (its MACs as they came).
                        let (want_action, want_counter) = if resolved {
                            (XDP_REDIRECT, None)
                        } else {
                            want[..12].copy_from_slice(&input[..12]);
                            (XDP_PASS, Some(counter::PASS_NO_ROUTE as usize))
                        };
                        let desc = format!("{tag} {} {what}", case.desc);
                        let before = bal.dp.counters().unwrap();
                        let (action, out) = run(&bal, &input, b.c0);
                        let after = bal.dp.counters().unwrap();
                        if action != want_action {
                            failures.push(format!("{desc}: action {action}, expected {want_action}"));
                            continue;
                        }
                        if out != want {
                            failures.push(format!("{desc}:\n  got      {}\n  expected {}", hex(&out), hex(&want)));
                            continue;
                        }
                        match decode(&out) {
                            Ok(d) if d.inner_frame[14..] == input[14..] => {}
                            Ok(_) => failures.push(format!("{desc}: the inner packet changed")),
                            Err(e) => failures.push(format!("{desc}: output does not verify: {e}")),
                        }
                        let rose: Vec<usize> = (0..before.len()).filter(|&i| after[i] != before[i]).collect();
                        let expect: Vec<usize> = want_counter.into_iter().collect();
                        if rose != expect {
                            failures.push(format!("{desc}: counters {rose:?} rose, expected {expect:?}"));
                        }
                    }
                }
            }
            failures
        })
        .expect("run in namespace");
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// A packet that would exceed b0's MTU (1500) with its outer header is
/// dropped and counted; one that just fits is sent.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn encap_respects_the_egress_mtu() {
    let b = bed();
    let failures =
        b.ns.run_in(|| {
            let cfg = config();
            let mut bal = Balancer::load(&cfg).expect("load the XDP program");
            bal.apply(&cfg).expect("fill the maps");
            bal.refresh_next_hops().expect("resolve next hops");
            let mut failures = vec![];
            for case in cases() {
                let overhead =
                    lb_common::encap_overhead(if case.client.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }, case.gue)
                        as usize;
                let ip_hdr = if case.client.is_ipv4() { 20 } else { 40 };
                // Inner IP packet of `len` bytes: IP header, 20 bytes of TCP, payload.
                for (len, fits) in [(1500 - overhead, true), (1501 - overhead, false)] {
                    let mut p = Pkt::tcp(case.client, case.vip, 41000, 80);
                    p.eth_dst = b.c0_mac;
                    p.eth_src = CLIENT_MAC;
                    p.payload = vec![0x5a; len - ip_hdr - 20];
                    let input = p.build();
                    let before = bal.dp.counters().unwrap();
                    let (action, out) = run(&bal, &input, b.c0);
                    let after = bal.dp.counters().unwrap();
                    let too_big = after[counter::ENCAP_TOO_BIG as usize] - before[counter::ENCAP_TOO_BIG as usize];
                    let desc = format!("{} inner {len} bytes + {overhead}", case.desc);
                    match (fits, action, too_big) {
                        (true, XDP_REDIRECT, 0) if out.len() == input.len() + overhead => {}
                        (false, XDP_DROP, 1) => {}
                        _ => failures.push(format!(
                            "{desc}: action {action}, encap_too_big +{too_big}, {} bytes out; expected {}",
                            out.len(),
                            if fits { "XDP_REDIRECT, +0" } else { "XDP_DROP, +1" }
                        )),
                    }
                }
            }
            failures
        })
        .expect("run in namespace");
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

fn run_decap(d: &Decap, input: &[u8]) -> (u32, Vec<u8>) {
    run_program(d.program(), input, 1)
}

/// {description, input, action, output (`None`: unchanged), counter that rises by one}.
type DecapFixture = (String, Vec<u8>, u32, Option<Vec<u8>>, Option<u32>);

/// `xlb_decap` at 198.18.1.11 and 2001:db8:1::11, GUE on 6080.
#[test]
#[ignore = "needs root (XDP): cargo xtask test runs it"]
fn decap_fixtures() {
    let object = xlb::dataplane::object().expect("xlb built with its XDP object");
    let addrs = [ip("198.18.1.11"), ip("2001:db8:1::11")];
    let d = Decap::load(object, &addrs, 6080).expect("load xlb_decap");
    let mac_lb = [0x02, 0, 0, 0, 0, 0xb0];
    let inner4 = {
        let mut p = Pkt::tcp(ip("198.18.0.1"), ip("198.18.0.40"), 40000, 80);
        p.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        p.build()
    };
    let inner6 = Pkt::tcp(ip("2001:db8::1"), ip("2001:db8::40"), 40000, 80).build();
    let outer = |src: &str, dst: &str, udp: Option<(u16, u16)>| Outer {
        eth_dst: WEB1_MAC,
        eth_src: mac_lb,
        src: ip(src),
        dst: ip(dst),
        udp,
        tos: 0,
        flow_label: 0x12345,
        ttl: 64,
        frag: 0x4000,
    };
    // The inner packet in the outer frame's Ethernet header.
    let stripped = |inner: &[u8]| {
        let mut f = WEB1_MAC.to_vec();
        f.extend_from_slice(&mac_lb);
        f.extend_from_slice(&inner[12..]);
        f
    };
    let gue = Some((0xc123, 6080));
    let ipip4 = encapsulate(&outer("198.18.5.7", "198.18.1.11", None), inner_packet(&inner4));
    let gue4 = encapsulate(&outer("198.18.5.7", "198.18.1.11", gue), inner_packet(&inner4));
    let ipip6 = encapsulate(&outer("2001:db8:5::7", "2001:db8:1::11", None), inner_packet(&inner6));
    let gue6 = encapsulate(&outer("2001:db8:5::7", "2001:db8:1::11", gue), inner_packet(&inner6));
    let mut fx: Vec<DecapFixture> = vec![
        ("ipip v4 stripped".into(), ipip4.clone(), XDP_PASS, Some(stripped(&inner4)), Some(decap::IPIP)),
        ("gue v4 stripped".into(), gue4.clone(), XDP_PASS, Some(stripped(&inner4)), Some(decap::GUE)),
        ("ipip v6 stripped".into(), ipip6.clone(), XDP_PASS, Some(stripped(&inner6)), Some(decap::IPIP)),
        ("gue v6 stripped".into(), gue6.clone(), XDP_PASS, Some(stripped(&inner6)), Some(decap::GUE)),
    ];
    let mut f = |desc: &str, input: Vec<u8>, action, counter| fx.push((desc.into(), input, action, None, counter));
    // Left alone: other addresses, ports, protocols.
    f(
        "ipip v4 to another address: untouched",
        encapsulate(&outer("198.18.5.7", "198.18.1.12", None), inner_packet(&inner4)),
        XDP_PASS,
        None,
    );
    f(
        "ipip v6 to another address: untouched",
        encapsulate(&outer("2001:db8:5::7", "2001:db8:1::12", None), inner_packet(&inner6)),
        XDP_PASS,
        None,
    );
    f(
        "UDP to another port: untouched",
        encapsulate(&outer("198.18.5.7", "198.18.1.11", Some((1, 6081))), inner_packet(&inner4)),
        XDP_PASS,
        None,
    );
    f(
        "plain TCP to the address: untouched",
        Pkt::tcp(ip("198.18.0.1"), ip("198.18.1.11"), 40000, 80).build(),
        XDP_PASS,
        None,
    );
    // Broken, to our address: dropped and counted.
    let mut bad_sum = ipip4.clone();
    bad_sum[24] ^= 0x01; // outer IPv4 header checksum
    f("ipip v4 with a bad outer header checksum", bad_sum, XDP_DROP, Some(decap::DROP_BAD_HEADER));
    let cut = ipip4[..ipip4.len() - 4].to_vec();
    f("ipip v4 shorter than its outer total length", cut, XDP_DROP, Some(decap::DROP_TRUNCATED));
    let cut6 = gue6[..gue6.len() - 4].to_vec();
    f("gue v6 shorter than its outer payload length", cut6, XDP_DROP, Some(decap::DROP_TRUNCATED));
    let mut frag = outer("198.18.5.7", "198.18.1.11", None);
    frag.frag = 0x2000; // MF
    f("ipip v4 outer fragment", encapsulate(&frag, inner_packet(&inner4)), XDP_DROP, Some(decap::DROP_FRAGMENT));
    // Outer protocol 4 (IPv4 inside) carrying IPv6.
    let mut mislabelled = encapsulate(&outer("198.18.5.7", "198.18.1.11", None), inner_packet(&inner6));
    mislabelled[23] = 4;
    mislabelled[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&mislabelled[14..34]]);
    mislabelled[24..26].copy_from_slice(&c.to_be_bytes());
    f("ipip v4 protocol 4 carrying IPv6", mislabelled, XDP_DROP, Some(decap::DROP_BAD_HEADER));
    let mut variant0 = gue4.clone();
    variant0[42] = 0x00; // GUE variant 0 header (not sent by xlb)
    f("gue v4 variant 0", variant0, XDP_DROP, Some(decap::DROP_BAD_HEADER));
    let mut short_inner = encapsulate(&outer("198.18.5.7", "198.18.1.11", None), &inner_packet(&inner4)[..12]);
    short_inner.truncate(short_inner.len());
    f("ipip v4 whose inner header is cut short", short_inner, XDP_DROP, Some(decap::DROP_TRUNCATED));

    let mut failures = vec![];
    for (desc, input, action, output, counter) in fx {
        let before = d.counters().unwrap();
        let (got, out) = run_decap(&d, &input);
        let after = d.counters().unwrap();
        if got != action {
            failures.push(format!("{desc}: action {got}, expected {action}"));
            continue;
        }
        let want = output.as_ref().unwrap_or(&input);
        if action == XDP_PASS && out != *want {
            failures.push(format!("{desc}:\n  got      {}\n  expected {}", hex(&out), hex(want)));
            continue;
        }
        for (i, ((name, a), (_, b))) in after.iter().zip(&before).enumerate() {
            let expect = u64::from(counter == Some(decap::NAMES[i].0));
            if a - b != expect {
                failures.push(format!("{desc}: counter {name} rose by {}, expected {expect}", a - b));
            }
        }
    }
    assert!(failures.is_empty(), "{} decap fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}
