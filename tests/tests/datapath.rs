//! Data-path fixtures in the style of Katran's: a table of
//! {description, input packet, expected action, expected output bytes} run
//! through the real XDP program with BPF_PROG_TEST_RUN, with maps filled by
//! the daemon's own code. Outputs are compared byte for byte against packets
//! built independently (full checksums), and re-verified from scratch.
//!
//! Runs inside a namespace with two veths and static neighbours, so the
//! program's FIB lookups succeed exactly as on a real lb host.

use std::net::{IpAddr, SocketAddr};

use lb_common::counter;
use xlb::{balancer::Balancer, config::Protocol};
use xlb_testbed::{
    packet::{checksum, malformed_frames, parse_and_verify, Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    xdpbed::{bed, fixture_config as config, run, Bed, CLIENT_MAC, WEB1_MAC, WEB2_MAC},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Fixture {
    desc: String,
    ingress: u32,
    input: Vec<u8>,
    action: u32,
    /// `None`: the output must equal the input.
    output: Option<Vec<u8>>,
    /// A counter that must rise by exactly one.
    counter: Option<u32>,
}

fn with_macs(mut p: Pkt, dst: [u8; 6], src: [u8; 6]) -> Pkt {
    p.eth_dst = dst;
    p.eth_src = src;
    p
}

fn fixtures(b: &Bed) -> Vec<Fixture> {
    let (c0, b0) = (b.c0, b.b0);
    let from_client = |p: Pkt| with_macs(p, b.c0_mac, CLIENT_MAC);
    let to_backend = |p: Pkt, m| with_macs(p, m, b.b0_mac);
    let from_backend = |p: Pkt, m| with_macs(p, b.b0_mac, m);
    let to_client = |p: Pkt| with_macs(p, CLIENT_MAC, b.c0_mac);
    let ttl = |mut p: Pkt, t| {
        p.ttl = t;
        p
    };
    let (cl4, vip4, web1, web2) = (ip("198.18.0.1"), ip("198.18.0.10"), ip("198.18.1.11"), ip("198.18.1.12"));
    let (cl6, vip6, web1_6, web2_6) =
        (ip("2001:db8::1"), ip("2001:db8::10"), ip("2001:db8:1::11"), ip("2001:db8:1::12"));
    let mut fx = vec![];
    let mut f = |desc: &str, ingress, input: Pkt, action, output: Option<Pkt>, counter| {
        fx.push(Fixture {
            desc: desc.into(),
            ingress,
            input: input.build(),
            action,
            output: output.map(|p| p.build()),
            counter,
        })
    };

    // ---- NAT, both directions, IPv4 and IPv6, TCP and UDP
    f(
        "nat v4 tcp: client -> VIP becomes client -> web1:8080, TTL-1, MACs of the next hop",
        c0,
        from_client(Pkt::tcp(cl4, vip4, 40000, 80)),
        XDP_REDIRECT,
        Some(to_backend(ttl(Pkt::tcp(cl4, web1, 40000, 8080), 63), WEB1_MAC)),
        None,
    );
    f(
        "nat v4 tcp reply: web1:8080 -> client becomes VIP:80 -> client",
        b0,
        from_backend(Pkt::tcp(web1, cl4, 8080, 40000), WEB1_MAC),
        XDP_REDIRECT,
        Some(to_client(ttl(Pkt::tcp(vip4, cl4, 80, 40000), 63))),
        Some(counter::REPLY_NAT),
    );
    let mut udp = Pkt::udp(cl4, vip4, 40001, 53);
    udp.payload = b"a query".to_vec();
    let mut udp_out = Pkt::udp(cl4, web1, 40001, 5353);
    udp_out.payload = udp.payload.clone();
    f(
        "nat v4 udp: port translated 53 -> 5353, checksum updated",
        c0,
        from_client(udp.clone()),
        XDP_REDIRECT,
        Some(to_backend(ttl(udp_out.clone(), 63), WEB1_MAC)),
        None,
    );
    let (mut z, mut z_out) = (udp.clone(), udp_out.clone());
    z.sport = 40002;
    z.udp_no_csum = true;
    z_out.sport = 40002;
    z_out.udp_no_csum = true;
    f(
        "nat v4 udp without checksum: the checksum stays zero",
        c0,
        from_client(z),
        XDP_REDIRECT,
        Some(to_backend(ttl(z_out, 63), WEB1_MAC)),
        None,
    );
    let mut opt = Pkt::tcp(cl4, vip4, 40003, 80);
    opt.ipv4_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let mut opt_out = Pkt::tcp(cl4, web1, 40003, 8080);
    opt_out.ipv4_options = opt.ipv4_options.clone();
    f(
        "nat v4 tcp with IPv4 options: IHL honoured, options kept",
        c0,
        from_client(opt),
        XDP_REDIRECT,
        Some(to_backend(ttl(opt_out, 63), WEB1_MAC)),
        None,
    );
    f(
        "nat v6 tcp: client -> VIP becomes client -> web1:8080, hop limit-1",
        c0,
        from_client(Pkt::tcp(cl6, vip6, 40000, 80)),
        XDP_REDIRECT,
        Some(to_backend(ttl(Pkt::tcp(cl6, web1_6, 40000, 8080), 63), WEB1_MAC)),
        None,
    );
    f(
        "nat v6 tcp reply: web1 -> client becomes VIP -> client",
        b0,
        from_backend(Pkt::tcp(web1_6, cl6, 8080, 40000), WEB1_MAC),
        XDP_REDIRECT,
        Some(to_client(ttl(Pkt::tcp(vip6, cl6, 80, 40000), 63))),
        Some(counter::REPLY_NAT),
    );
    f(
        "nat v6 udp",
        c0,
        from_client(Pkt::udp(cl6, vip6, 40000, 53)),
        XDP_REDIRECT,
        Some(to_backend(ttl(Pkt::udp(cl6, web1_6, 40000, 53), 63), WEB1_MAC)),
        None,
    );
    f(
        "nat v6 udp reply",
        b0,
        from_backend(Pkt::udp(web1_6, cl6, 53, 40000), WEB1_MAC),
        XDP_REDIRECT,
        Some(to_client(ttl(Pkt::udp(vip6, cl6, 53, 40000), 63))),
        Some(counter::REPLY_NAT),
    );

    let (mut tagged, mut tagged_out) = (Pkt::tcp(cl4, vip4, 40020, 80), Pkt::tcp(cl4, web1, 40020, 8080));
    tagged.vlan = Some(100);
    tagged_out.vlan = Some(100);
    f(
        "nat v4 tcp with one 802.1Q tag: balanced, tag kept",
        c0,
        from_client(tagged),
        XDP_REDIRECT,
        Some(to_backend(ttl(tagged_out, 63), WEB1_MAC)),
        None,
    );

    // ---- DSR: only the destination (and source) MAC change
    f(
        "dsr v4: IP packet untouched, sent to web2's MAC",
        c0,
        from_client(Pkt::tcp(cl4, ip("198.18.0.20"), 40000, 80)),
        XDP_REDIRECT,
        Some(to_backend(Pkt::tcp(cl4, ip("198.18.0.20"), 40000, 80), WEB2_MAC)),
        None,
    );
    f(
        "dsr v6: IP packet untouched, sent to web2's MAC",
        c0,
        from_client(Pkt::tcp(cl6, ip("2001:db8::20"), 40000, 80)),
        XDP_REDIRECT,
        Some(to_backend(Pkt::tcp(cl6, ip("2001:db8::20"), 40000, 80), WEB2_MAC)),
        None,
    );
    let _ = (web2, web2_6);

    // ---- not for a VIP: untouched, counted (xlb_kernel_passed_packets_total{reason="not_vip"})
    let not_vip = Some(counter::PASS_NOT_VIP);
    f(
        "not a VIP (the lb's own address)",
        c0,
        from_client(Pkt::tcp(cl4, ip("198.18.0.2"), 40000, 22)),
        XDP_PASS,
        None,
        not_vip,
    );
    f("VIP address, port without a service", c0, from_client(Pkt::tcp(cl4, vip4, 40000, 443)), XDP_PASS, None, not_vip);
    f(
        "VIP address and port, other protocol (udp/80)",
        c0,
        from_client(Pkt::udp(cl4, vip4, 40000, 80)),
        XDP_PASS,
        None,
        not_vip,
    );
    f("not a VIP, v6", c0, from_client(Pkt::tcp(cl6, ip("2001:db8::2"), 40000, 22)), XDP_PASS, None, not_vip);
    f(
        "reply-looking packet with no NAT entry",
        b0,
        from_backend(Pkt::tcp(web1, cl4, 8080, 49999), WEB1_MAC),
        XDP_PASS,
        None,
        not_vip,
    );
    let mut frag_other = Pkt::udp(cl4, ip("198.18.0.2"), 40000, 53);
    frag_other.ipv4_frag = 0x2000;
    f("fragment to a non-VIP address goes to the kernel", c0, from_client(frag_other), XDP_PASS, None, not_vip);
    // TTL 1: the kernel gets the packet as it came, so that its ICMP time
    // exceeded quotes what the sender sent (not the backend's address).
    f(
        "TTL 1 to a NAT VIP: the kernel gets it unchanged",
        c0,
        from_client(ttl(Pkt::tcp(cl4, vip4, 40010, 80), 1)),
        XDP_PASS,
        None,
        Some(counter::PASS_TTL),
    );
    f(
        "hop limit 1 to a NAT VIP (v6): the kernel gets it unchanged",
        c0,
        from_client(ttl(Pkt::tcp(cl6, vip6, 40010, 80), 1)),
        XDP_PASS,
        None,
        Some(counter::PASS_TTL),
    );
    f(
        "TTL 1 on a NAT reply: the kernel gets it unchanged",
        b0,
        from_backend(ttl(Pkt::tcp(web1, cl4, 8080, 40000), 1), WEB1_MAC),
        XDP_PASS,
        None,
        Some(counter::PASS_TTL),
    );

    // ---- refused: dropped and counted (the testbed's malformed-frame set)
    let (cl4a, cl6a) = ("198.18.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
    let (vip4a, vip6a) = ("198.18.0.10".parse().unwrap(), "2001:db8::10".parse().unwrap());
    fx.extend(malformed_frames(b.c0_mac, CLIENT_MAC, (cl4a, cl6a), (vip4a, vip6a), 80).into_iter().map(|m| Fixture {
        desc: m.desc.into(),
        ingress: c0,
        input: m.frame,
        action: XDP_DROP,
        output: None,
        counter: Some(m.counter),
    }));
    fx.extend(raw_refusals(b, cl4, vip4));
    fx.extend(ip_length_fixtures(b, cl4, vip4, web1));
    fx.extend(udp_length_fixtures(b, cl4, vip4));
    fx.extend(bad_source_fixtures(b));
    fx.extend(bad_flags_fixtures(b, cl4, vip4, cl6, vip6));
    fx
}

/// The UDP length field against the IP packet: below 8 is a bad header,
/// beyond what the IP length leaves is truncated (the frame has the bytes).
fn udp_length_fixtures(b: &Bed, cl4: IpAddr, vip4: IpAddr) -> Vec<Fixture> {
    let mut fx = vec![];
    let udp = |sport, len: u16| {
        let mut p = Pkt::udp(cl4, vip4, sport, 53);
        p.payload = b"a query".to_vec();
        let mut f = with_macs(p, b.c0_mac, CLIENT_MAC).build();
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&len.to_be_bytes());
        f
    };
    for (desc, input, counter) in [
        ("UDP length 7 (< 8), to a VIP", udp(40050, 7), counter::DROP_BAD_HEADER),
        ("UDP length 0, to a VIP", udp(40051, 0), counter::DROP_BAD_HEADER),
        ("UDP length one beyond the IPv4 total length, to a VIP", udp(40052, 8 + 7 + 1), counter::DROP_TRUNCATED),
        ("UDP length 0xffff, to a VIP", udp(40053, 0xffff), counter::DROP_TRUNCATED),
    ] {
        fx.push(Fixture {
            desc: desc.into(),
            ingress: b.c0,
            input,
            action: XDP_DROP,
            output: None,
            counter: Some(counter),
        });
    }
    let mut v6 = with_macs(Pkt::udp(ip("2001:db8::1"), ip("2001:db8::10"), 40054, 53), b.c0_mac, CLIENT_MAC).build();
    v6[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&200u16.to_be_bytes());
    fx.push(Fixture {
        desc: "UDP length beyond the IPv6 payload length, to a VIP".into(),
        ingress: b.c0,
        input: v6,
        action: XDP_DROP,
        output: None,
        counter: Some(counter::DROP_TRUNCATED),
    });
    fx
}

/// New flows from sources no client can have: dropped as `bad_source`
/// when to a service; the same sources to an address that is no VIP are
/// the kernel's. The frames never leave BPF_PROG_TEST_RUN.
fn bad_source_fixtures(b: &Bed) -> Vec<Fixture> {
    let mut fx = vec![];
    let mut sport = 40100u16;
    let v4 =
        ["198.18.0.10", "198.18.0.30", "255.255.255.255", "224.0.0.1", "239.1.2.3", "127.0.0.1", "0.0.0.0", "0.1.2.3"];
    let v6 = ["2001:db8::10", "::1", "::", "ff02::1", "ff0e::5", "::ffff:198.18.0.1"];
    let sources = v4.iter().map(|s| (ip(s), ip("198.18.0.10"))).chain(v6.iter().map(|s| (ip(s), ip("2001:db8::10"))));
    for src in sources {
        sport += 1;
        fx.push(Fixture {
            desc: format!("source {} (SYN to {}:80): bad_source", src.0, src.1),
            ingress: b.c0,
            input: with_macs(Pkt::tcp(src.0, src.1, sport, 80), b.c0_mac, CLIENT_MAC).build(),
            action: XDP_DROP,
            output: None,
            counter: Some(counter::DROP_BAD_SOURCE),
        });
    }
    let mut ack = Pkt::tcp(ip("127.0.0.1"), ip("198.18.0.10"), 40199, 80);
    ack.tcp_flags = TCP_ACK;
    let mut udp = Pkt::udp(ip("224.0.0.5"), ip("198.18.0.10"), 40198, 53);
    udp.payload = b"q".to_vec();
    for (desc, p, action, counter) in [
        ("loopback source, ACK of an unknown flow to a VIP: bad_source", ack, XDP_DROP, counter::DROP_BAD_SOURCE),
        ("multicast source, UDP to a VIP: bad_source", udp, XDP_DROP, counter::DROP_BAD_SOURCE),
        (
            "loopback source to the lb's own address: the kernel's",
            Pkt::tcp(ip("127.0.0.1"), ip("198.18.0.2"), 40197, 80),
            XDP_PASS,
            counter::PASS_NOT_VIP,
        ),
        (
            "VIP address as source, to a port without a service: the kernel's",
            Pkt::tcp(ip("198.18.0.10"), ip("198.18.0.10"), 40196, 443),
            XDP_PASS,
            counter::PASS_NOT_VIP,
        ),
    ] {
        let input = with_macs(p, b.c0_mac, CLIENT_MAC).build();
        fx.push(Fixture { desc: desc.into(), ingress: b.c0, input, action, output: None, counter: Some(counter) });
    }
    fx
}

/// TCP flag sets that never occur, to a VIP: dropped as `bad_flags` (new
/// flow or not); to an address that is no VIP: the kernel's.
fn bad_flags_fixtures(b: &Bed, cl4: IpAddr, vip4: IpAddr, cl6: IpAddr, vip6: IpAddr) -> Vec<Fixture> {
    let mut fx = vec![];
    let tcp = |src, dst, sport, flags| {
        let mut p = Pkt::tcp(src, dst, sport, 80);
        p.tcp_flags = flags;
        with_macs(p, b.c0_mac, CLIENT_MAC).build()
    };
    for (desc, input) in [
        ("TCP without flags, to a VIP", tcp(cl4, vip4, 40300, 0)),
        ("TCP with only ECE and CWR, to a VIP", tcp(cl4, vip4, 40301, 0xc0)),
        ("TCP SYN+FIN, to a VIP", tcp(cl4, vip4, 40302, TCP_SYN | TCP_FIN)),
        ("TCP SYN+RST, to a VIP", tcp(cl4, vip4, 40303, TCP_SYN | TCP_RST)),
        ("TCP SYN+FIN+ACK+PSH+URG+RST (christmas tree), to a VIP", tcp(cl4, vip4, 40304, 0x3f)),
        ("TCP SYN+FIN, to a VIP (v6)", tcp(cl6, vip6, 40305, TCP_SYN | TCP_FIN)),
        ("TCP without flags, to a DSR VIP", tcp(cl4, ip("198.18.0.20"), 40306, 0)),
        (
            "TCP SYN+RST from the web1:8080 flow's client port (an established flow)",
            tcp(cl4, vip4, 40000, TCP_SYN | TCP_RST),
        ),
    ] {
        fx.push(Fixture {
            desc: desc.into(),
            ingress: b.c0,
            input,
            action: XDP_DROP,
            output: None,
            counter: Some(counter::DROP_BAD_FLAGS),
        });
    }
    fx.push(Fixture {
        desc: "TCP SYN+FIN to the lb's own address: the kernel's".into(),
        ingress: b.c0,
        input: tcp(cl4, ip("198.18.0.2"), 40310, TCP_SYN | TCP_FIN),
        action: XDP_PASS,
        output: None,
        counter: Some(counter::PASS_NOT_VIP),
    });
    fx
}

/// Sets an IPv4 frame's total length (untagged frame) and its header checksum.
fn set_ipv4_total_len(frame: &mut [u8], len: u16) {
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The IP length, not the frame's, bounds the TCP/UDP header: a frame may
/// carry Ethernet padding after the IP packet (a 54-byte TCP ACK is padded to
/// the 60-byte minimum), and a packet whose IP length ends inside its L4
/// header is truncated even when the frame has the bytes.
fn ip_length_fixtures(b: &Bed, cl4: IpAddr, vip4: IpAddr, web1: IpAddr) -> Vec<Fixture> {
    let frame = |mut p: Pkt, dst: [u8; 6], src: [u8; 6]| {
        p.eth_dst = dst;
        p.eth_src = src;
        p.build()
    };
    let pad = |mut f: Vec<u8>| {
        f.resize(60, 0xee);
        f
    };
    let to_web1 = |mut p: Pkt| {
        p.ttl = 63;
        frame(p, WEB1_MAC, b.b0_mac)
    };
    let mut fx = vec![];
    let mut ack = Pkt::tcp(cl4, vip4, 40040, 80);
    ack.tcp_flags = TCP_ACK;
    let mut ack_out = Pkt::tcp(cl4, web1, 40040, 8080);
    ack_out.tcp_flags = TCP_ACK;
    // An ACK of an unknown flow: picked by Maglev without a conntrack entry
    // (see `non_syn_first_packets_follow_maglev_without_an_entry`).
    fx.push(Fixture {
        desc: "nat v4 tcp ACK padded to 60 bytes: balanced, padding kept, checksums right".into(),
        ingress: b.c0,
        input: pad(frame(ack, b.c0_mac, CLIENT_MAC)),
        action: XDP_REDIRECT,
        output: Some(pad(to_web1(ack_out))),
        counter: None,
    });
    let mut udp = Pkt::udp(cl4, vip4, 40041, 53);
    udp.payload = b"q".to_vec();
    let mut udp_out = Pkt::udp(cl4, web1, 40041, 5353);
    udp_out.payload = udp.payload.clone();
    fx.push(Fixture {
        desc: "nat v4 udp padded to 60 bytes: balanced, padding kept, checksums right".into(),
        ingress: b.c0,
        input: pad(frame(udp, b.c0_mac, CLIENT_MAC)),
        action: XDP_REDIRECT,
        output: Some(pad(to_web1(udp_out))),
        counter: None,
    });

    let tcp = frame(Pkt::tcp(cl4, vip4, 40042, 80), b.c0_mac, CLIENT_MAC);
    let mut short_tcp = tcp.clone();
    set_ipv4_total_len(&mut short_tcp, 20 + 10);
    let mut short_udp = frame(Pkt::udp(cl4, vip4, 40043, 53), b.c0_mac, CLIENT_MAC);
    set_ipv4_total_len(&mut short_udp, 20 + 4);
    let mut long_doff = tcp;
    long_doff[14 + 20 + 12] = 15 << 4; // a 60-byte TCP header in a 40-byte IP packet
    let v6 = |p: Pkt| frame(p, b.c0_mac, CLIENT_MAC);
    let mut short_v6 = v6(Pkt::tcp(ip("2001:db8::1"), ip("2001:db8::10"), 40044, 80));
    short_v6[18..20].copy_from_slice(&10u16.to_be_bytes());
    for (desc, input) in [
        ("IPv4 total length ends inside the TCP header (the frame has it all), to a VIP", short_tcp),
        ("IPv4 total length ends inside the UDP header (the frame has it all), to a VIP", short_udp),
        ("TCP data offset beyond the IPv4 total length, to a VIP", long_doff),
        ("IPv6 payload length ends inside the TCP header (the frame has it all), to a VIP", short_v6),
    ] {
        fx.push(Fixture {
            desc: desc.into(),
            ingress: b.c0,
            input,
            action: XDP_DROP,
            output: None,
            counter: Some(counter::DROP_TRUNCATED),
        });
    }
    fx
}

/// Frames that are not xlb's business: the kernel gets them, counted as not for a VIP.
fn raw_refusals(b: &Bed, cl4: IpAddr, vip4: IpAddr) -> Vec<Fixture> {
    let base = with_macs(Pkt::tcp(cl4, vip4, 40000, 80), b.c0_mac, CLIENT_MAC).build();
    let mut fx = vec![];
    let mut short_other = with_macs(Pkt::tcp(cl4, ip("198.18.0.2"), 40000, 22), b.c0_mac, CLIENT_MAC).build();
    short_other.truncate(14 + 20 + 10);
    short_other[16..18].copy_from_slice(&30u16.to_be_bytes());
    fx.push(Fixture {
        desc: "tcp header cut short, not to a VIP: the kernel's business".into(),
        ingress: b.c0,
        input: short_other,
        action: XDP_PASS,
        output: None,
        counter: Some(counter::PASS_NOT_VIP),
    });
    let mut arp = base;
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    fx.push(Fixture {
        desc: "ARP (not IP)".into(),
        ingress: b.c0,
        input: arp,
        action: XDP_PASS,
        output: None,
        counter: Some(counter::PASS_NOT_VIP),
    });
    fx
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn xdp_fixtures() {
    let b = bed();
    let failures =
        b.ns.run_in(|| {
            let cfg = config();
            let mut failures = vec![];
            // Twice: next hops from the FIB (a fresh daemon), then from the
            // neighbour table the daemon resolved into BACKENDS.
            for resolved in [false, true] {
                let mut bal = Balancer::load(&cfg).expect("load the XDP program");
                bal.apply(&cfg).expect("fill the maps");
                if resolved {
                    let n = bal.refresh_next_hops().expect("resolve next hops");
                    if n != 12 {
                        failures.push(format!("{n} backends got a next hop, expected 12"));
                    }
                }
                for fx in fixtures(&b) {
                    let desc = format!("{}{}", if resolved { "[neigh] " } else { "[fib] " }, fx.desc);
                    let before = bal.dp.counters().unwrap();
                    let (action, out) = run(&bal, &fx.input, fx.ingress);
                    let after = bal.dp.counters().unwrap();
                    let want = fx.output.as_ref().unwrap_or(&fx.input);
                    if action != fx.action {
                        failures.push(format!("{desc}: action {action}, expected {}", fx.action));
                        continue;
                    }
                    if fx.action != XDP_DROP && out != *want {
                        failures.push(format!("{desc}:\n  got      {}\n  expected {}", hex(&out), hex(want)));
                        continue;
                    }
                    if fx.output.is_some() {
                        if let Err(e) = parse_and_verify(&out) {
                            failures.push(format!("{desc}: output does not verify: {e}"));
                        }
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
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// `xlb explain` and the kernel agree on the backend of new flows, and a
/// conntrack entry whose backend went down is not followed.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn kernel_agrees_with_explain_and_repicks_dead_backends() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config();
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            let (cl, vip) = (ip("198.18.0.1"), sa("198.18.0.30:80"));
            let mut problems = vec![];
            let mut seen = std::collections::BTreeMap::new();
            for port in 41000..41064u16 {
                let pkt = with_macs(Pkt::tcp(cl, vip.ip(), port, 80), b.c0_mac, CLIENT_MAC).build();
                let (action, out) = run(&bal, &pkt, b.c0);
                let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
                let want = xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, port), vip, Protocol::Tcp).unwrap();
                if action != XDP_REDIRECT || got.as_ref() != Ok(&want) {
                    problems.push(format!("port {port}: kernel {action} {got:?}, explain {want}"));
                }
                *seen.entry(want).or_insert(0) += 1;
            }
            if seen.len() != 2 {
                problems.push(format!("64 flows did not use both backends: {seen:?}"));
            }
            // A flow on web1 moves when web1 goes down, and stays moved.
            let port = (41000..41064u16)
                .find(|&p| {
                    xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, p), vip, Protocol::Tcp).unwrap()
                        == sa("198.18.1.11:80")
                })
                .unwrap();
            let mut ack = Pkt::tcp(cl, vip.ip(), port, 80);
            ack.tcp_flags = TCP_ACK;
            let ack = with_macs(ack, b.c0_mac, CLIENT_MAC).build();
            let dst = |bal: &Balancer| parse_and_verify(&run(bal, &ack, b.c0).1).unwrap().dst;
            if dst(&bal) != ip("198.18.1.11") {
                problems.push("established flow left web1 while it was up".into());
            }
            let svc = bal.services.iter().position(|s| s.cfg.name == "pair").unwrap();
            bal.services[svc].backends[0].healthy = false;
            bal.sync_service(svc).unwrap();
            if dst(&bal) != ip("198.18.1.12") {
                problems.push("flow still sent to web1 after web1 went down".into());
            }
            bal.services[svc].backends[0].healthy = true;
            bal.sync_service(svc).unwrap();
            if dst(&bal) != ip("198.18.1.12") {
                problems.push("flow moved back to web1 on recovery (its new entry must hold)".into());
            }
            let st = bal.dp.service_stats(bal.services[svc].id).unwrap();
            if st.repicked != 1 {
                problems.push(format!("repicked counter {} (expected 1)", st.repicked));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A backend (address, port, protocol) behind two NAT services: its replies
/// cannot name their VIP by the backend alone, so its flows keep reverse
/// entries. Flows made while it served one service keep being answered
/// from that VIP after a reload shares it, and after a reload unshares it.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn shared_nat_backend_answers_from_each_flows_vip() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let one = config();
            let mut two = one.clone();
            let mut pair2 = two.services.iter().find(|s| s.name == "pair").unwrap().clone();
            pair2.name = "pair2".into();
            pair2.vip = sa("198.18.0.31:80");
            pair2.backends.retain(|be| be.address == sa("198.18.1.11:80"));
            two.services.push(pair2);

            let mut bal = Balancer::load(&two).unwrap();
            bal.apply(&one).unwrap();
            let (cl, web1) = (ip("198.18.0.1"), sa("198.18.1.11:80"));
            let (vip30, vip31) = (sa("198.18.0.30:80"), sa("198.18.0.31:80"));
            let on_web1: Vec<u16> = (42000..42100u16)
                .filter(|&p| {
                    xlb::cli::explain::pick(&one, SocketAddr::new(cl, p), vip30, Protocol::Tcp).unwrap() == web1
                })
                .take(2)
                .collect();
            let mut problems = vec![];
            let mut open = |bal: &Balancer, port: u16, vip: SocketAddr| {
                let pkt = with_macs(Pkt::tcp(cl, vip.ip(), port, 80), b.c0_mac, CLIENT_MAC).build();
                let (action, out) = run(bal, &pkt, b.c0);
                let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
                if action != XDP_REDIRECT || got != Ok(web1) {
                    problems.push(format!("client port {port} -> {vip}: action {action}, {got:?}, expected {web1}"));
                }
            };
            let reply = |bal: &Balancer, port: u16| {
                let pkt = with_macs(Pkt::tcp(web1.ip(), cl, 80, port), b.b0_mac, WEB1_MAC).build();
                let (action, out) = run(bal, &pkt, b.b0);
                let from = parse_and_verify(&out).map(|p| SocketAddr::new(p.src, p.sport));
                (action, from)
            };
            // Unique, then shared by a reload, then unique again.
            open(&bal, on_web1[0], vip30);
            bal.apply(&two).unwrap();
            open(&bal, on_web1[1], vip30);
            open(&bal, 42200, vip31);
            let mut expect = |bal: &Balancer, when: &str, port: u16, vip: SocketAddr| {
                let got = reply(bal, port);
                if got != (XDP_REDIRECT, Ok(vip)) {
                    problems.push(format!("{when}: reply to client port {port}: {got:?}, expected from {vip}"));
                }
            };
            expect(&bal, "shared", on_web1[0], vip30);
            expect(&bal, "shared", on_web1[1], vip30);
            expect(&bal, "shared", 42200, vip31);
            bal.apply(&one).unwrap();
            expect(&bal, "unshared again", on_web1[0], vip30);
            expect(&bal, "unshared again", on_web1[1], vip30);
            let stray = reply(&bal, 42200);
            if stray.0 != XDP_PASS {
                problems.push(format!("reply of a removed service's flow: {stray:?}, expected XDP_PASS"));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A TCP packet of an unknown flow that is not a SYN (its entry lost, or its
/// path moved to this lb) goes to its Maglev backend without making an entry:
/// counted per service as `non_syn`, and the backend's replies are not
/// translated until a SYN (or a tracked flow) made one. A SYN makes the entry.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn non_syn_first_packets_follow_maglev_without_an_entry() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config();
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            let (cl, vip) = (ip("198.18.0.1"), sa("198.18.0.30:80"));
            let svc = bal.services.iter().find(|s| s.cfg.name == "pair").unwrap().id;
            let mut problems = vec![];
            for (port, flags) in [(43000u16, TCP_ACK), (43001, TCP_ACK | TCP_FIN), (43002, TCP_RST), (43003, TCP_SYN | TCP_ACK)]
            {
                let want = xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, port), vip, Protocol::Tcp).unwrap();
                let mut p = Pkt::tcp(cl, vip.ip(), port, 80);
                p.tcp_flags = flags;
                let before = (bal.dp.conntrack_len().unwrap(), bal.dp.service_stats(svc).unwrap());
                let (action, out) = run(&bal, &with_macs(p, b.c0_mac, CLIENT_MAC).build(), b.c0);
                let after = (bal.dp.conntrack_len().unwrap(), bal.dp.service_stats(svc).unwrap());
                let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
                if action != XDP_REDIRECT || got != Ok(want) {
                    problems.push(format!("flags {flags:#04x}: {action} {got:?}, expected redirect to {want}"));
                }
                if after.0 != before.0 {
                    problems.push(format!("flags {flags:#04x}: conntrack {} -> {} entries, expected none made", before.0, after.0));
                }
                let (n, e) = (after.1.non_syn - before.1.non_syn, after.1.new_flows - before.1.new_flows);
                if (n, e) != (1, 0) {
                    problems.push(format!("flags {flags:#04x}: non_syn +{n}, new_flows +{e}; expected +1, +0"));
                }
                let reply = with_macs(Pkt::tcp(want.ip(), cl, 80, port), b.b0_mac, WEB1_MAC).build();
                let (action, _) = run(&bal, &reply, b.b0);
                if action != XDP_PASS {
                    problems.push(format!("flags {flags:#04x}: reply of an untracked flow: {action}, expected XDP_PASS"));
                }
            }
            // A SYN makes the entry; the ACK that follows is established.
            let port = 43010;
            let syn = with_macs(Pkt::tcp(cl, vip.ip(), port, 80), b.c0_mac, CLIENT_MAC).build();
            let before = (bal.dp.conntrack_len().unwrap(), bal.dp.service_stats(svc).unwrap());
            run(&bal, &syn, b.c0);
            let mut ack = Pkt::tcp(cl, vip.ip(), port, 80);
            ack.tcp_flags = TCP_ACK;
            run(&bal, &with_macs(ack, b.c0_mac, CLIENT_MAC).build(), b.c0);
            let after = (bal.dp.conntrack_len().unwrap(), bal.dp.service_stats(svc).unwrap());
            let got = (after.0 - before.0, after.1.new_flows - before.1.new_flows, after.1.established - before.1.established);
            if got != (1, 1, 1) || after.1.non_syn != before.1.non_syn {
                problems.push(format!("SYN then ACK: (entries, new flows, established) +{got:?}, non_syn {} -> {}; expected +(1, 1, 1), non_syn unchanged", before.1.non_syn, after.1.non_syn));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Active connections per backend of service `name`, in config order.
fn active(bal: &Balancer, name: &str) -> Vec<u64> {
    let s = bal.services.iter().find(|s| s.cfg.name == name).unwrap();
    s.backends.iter().map(|b| bal.dp.active_connections(b.slot)).collect()
}

/// A TCP segment with `flags`, client -> VIP (`from_client`) or backend -> client.
fn seg(b: &Bed, src: SocketAddr, dst: SocketAddr, flags: u8, from_client: bool) -> Vec<u8> {
    let mut p = Pkt::tcp(src.ip(), dst.ip(), src.port(), dst.port());
    p.tcp_flags = flags;
    if from_client {
        with_macs(p, b.c0_mac, CLIENT_MAC).build()
    } else {
        with_macs(p, b.b0_mac, WEB1_MAC).build()
    }
}

/// Backend counts: a flow counts on its backend from its SYN (once, however
/// often the SYN comes) until it closes: FIN from both sides (NAT: the
/// backend's through the reply path), or a RST from either side; in DSR the
/// client's FIN. Duplicate FINs and RSTs do not count twice; a reused 5-tuple
/// counts again; a flow moved to another backend moves its count; an
/// expired entry is not followed (its count falls) and its next datagram is a
/// new flow.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn conntrack_counts_rise_and_fall_exactly_once() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config();
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            let mut problems = vec![];
            let vip = sa("198.18.0.30:80");
            let cl = |port: u16| SocketAddr::new(ip("198.18.0.1"), port);
            let backend_of = |port: u16| xlb::cli::explain::pick(&cfg, cl(port), vip, Protocol::Tcp).unwrap();
            let total = |bal: &Balancer| active(bal, "pair").iter().sum::<u64>();
            let step = |bal: &Balancer, what: &str, pkt: Vec<u8>, ingress: u32, want_total: u64| {
                let (action, _) = run(bal, &pkt, ingress);
                let got = total(bal);
                (action != XDP_REDIRECT || got != want_total)
                    .then(|| format!("{what}: action {action}, {got} active; expected redirect, {want_total}"))
            };
            let (c0, b0) = (b.c0, b.b0);
            // NAT: SYN (twice), ACK, client FIN (twice), backend FIN (twice), last ACK; then the 5-tuple again.
            let p = 44000;
            let web = backend_of(p);
            problems.extend(step(&bal, "SYN", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "retransmitted SYN", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "ACK", seg(&b, cl(p), vip, TCP_ACK, true), c0, 1));
            problems.extend(step(&bal, "client FIN", seg(&b, cl(p), vip, TCP_FIN | TCP_ACK, true), c0, 1));
            problems.extend(step(&bal, "client FIN again", seg(&b, cl(p), vip, TCP_FIN | TCP_ACK, true), c0, 1));
            problems.extend(step(&bal, "backend FIN", seg(&b, web, cl(p), TCP_FIN | TCP_ACK, false), b0, 0));
            problems.extend(step(&bal, "backend FIN again", seg(&b, web, cl(p), TCP_FIN | TCP_ACK, false), b0, 0));
            problems.extend(step(&bal, "last ACK", seg(&b, cl(p), vip, TCP_ACK, true), c0, 0));
            problems.extend(step(&bal, "SYN reusing the 5-tuple", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "its RST", seg(&b, cl(p), vip, TCP_RST, true), c0, 0));
            // Backend FIN first, then the client's.
            let p = 44001;
            let web = backend_of(p);
            problems.extend(step(&bal, "SYN 2", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "backend FIN 2", seg(&b, web, cl(p), TCP_FIN | TCP_ACK, false), b0, 1));
            problems.extend(step(&bal, "client FIN 2", seg(&b, cl(p), vip, TCP_FIN | TCP_ACK, true), c0, 0));
            // RST from the client, twice; RST from the backend.
            let p = 44002;
            problems.extend(step(&bal, "SYN 3", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "client RST", seg(&b, cl(p), vip, TCP_RST, true), c0, 0));
            problems.extend(step(&bal, "client RST again", seg(&b, cl(p), vip, TCP_RST | TCP_ACK, true), c0, 0));
            let p = 44003;
            let web = backend_of(p);
            problems.extend(step(&bal, "SYN 4", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "backend RST", seg(&b, web, cl(p), TCP_RST, false), b0, 0));
            // DSR: the client's FIN closes (xlb sees nothing of the backend's half).
            let dsr = sa("198.18.0.20:80");
            let dsr_active = |bal: &Balancer| active(bal, "dsr4")[0];
            for (what, flags, want) in
                [("DSR SYN", TCP_SYN, 1), ("DSR FIN", TCP_FIN | TCP_ACK, 0), ("DSR FIN again", TCP_FIN | TCP_ACK, 0)]
            {
                run(&bal, &seg(&b, cl(44010), dsr, flags, true), c0);
                if dsr_active(&bal) != want {
                    problems.push(format!("{what}: {} active, expected {want}", dsr_active(&bal)));
                }
            }
            // Many flows, then a backend goes down: its flows move (and their counts) at their next packet.
            let ports: Vec<u16> = (44100..44140).collect();
            for &p in &ports {
                run(&bal, &seg(&b, cl(p), vip, TCP_SYN, true), c0);
            }
            let on = |web: &str| ports.iter().filter(|&&p| backend_of(p) == sa(web)).count() as u64;
            let (n1, n2) = (on("198.18.1.11:80"), on("198.18.1.12:80"));
            if active(&bal, "pair") != vec![n1, n2] {
                problems.push(format!("40 SYNs: active {:?}, expected [{n1}, {n2}]", active(&bal, "pair")));
            }
            let svc = bal.services.iter().position(|s| s.cfg.name == "pair").unwrap();
            bal.services[svc].backends[0].healthy = false;
            bal.sync_service(svc).unwrap();
            for &p in &ports {
                run(&bal, &seg(&b, cl(p), vip, TCP_ACK, true), c0);
            }
            if active(&bal, "pair") != vec![0, 40] {
                problems.push(format!("web1 down, 40 ACKs: active {:?}, expected [0, 40]", active(&bal, "pair")));
            }
            for &p in &ports {
                run(&bal, &seg(&b, cl(p), vip, TCP_RST, true), c0);
            }
            if active(&bal, "pair") != vec![0, 0] {
                problems.push(format!("40 RSTs: active {:?}, expected [0, 0]", active(&bal, "pair")));
            }
            bal.services[svc].backends[0].healthy = true;
            bal.sync_service(svc).unwrap();

            // A change of state restarts the idle clock: a flow older than the closing
            // timeout (200 ticks, about 210 ms) is not expired by the FIN that starts closing it.
            bal.dp.set_conntrack_timeouts([1 << 20, 1 << 20, 200, 1 << 20]).unwrap();
            let p = 44150;
            let web = backend_of(p);
            problems.extend(step(&bal, "old flow: SYN", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            problems.extend(step(&bal, "old flow: ACK", seg(&b, cl(p), vip, TCP_ACK, true), c0, 1));
            std::thread::sleep(std::time::Duration::from_millis(400));
            bal.dp.tick_conntrack_clock().unwrap();
            problems.extend(step(&bal, "old flow: backend FIN", seg(&b, web, cl(p), TCP_FIN | TCP_ACK, false), b0, 1));
            let id = bal.services[svc].id;
            let before = bal.dp.service_stats(id).unwrap();
            problems.extend(step(&bal, "old flow: client ACK", seg(&b, cl(p), vip, TCP_ACK, true), c0, 1));
            let after = bal.dp.service_stats(id).unwrap();
            if after.established - before.established != 1 {
                problems.push("old flow: the ACK after the backend's FIN did not follow its entry".into());
            }
            problems.extend(step(&bal, "old flow: client FIN", seg(&b, cl(p), vip, TCP_FIN | TCP_ACK, true), c0, 0));

            // Expiry: timeouts of one tick (about 1 ms).
            bal.dp.set_conntrack_timeouts([1; 4]).unwrap();
            let p = 44200;
            problems.extend(step(&bal, "SYN then expiry", seg(&b, cl(p), vip, TCP_SYN, true), c0, 1));
            std::thread::sleep(std::time::Duration::from_millis(10));
            bal.dp.tick_conntrack_clock().unwrap();
            // A non-SYN segment of an expired flow: not followed, stateless.
            let id = bal.services[svc].id;
            let before = bal.dp.service_stats(id).unwrap();
            problems.extend(step(&bal, "ACK of an expired flow", seg(&b, cl(p), vip, TCP_ACK, true), c0, 0));
            let after = bal.dp.service_stats(id).unwrap();
            if (after.established - before.established, after.non_syn - before.non_syn) != (0, 1) {
                problems.push(format!(
                    "ACK of an expired flow: established +{}, non_syn +{}; expected +0, +1",
                    after.established - before.established,
                    after.non_syn - before.non_syn
                ));
            }
            // UDP: the next datagram after expiry is a new flow, counted once.
            let dns = sa("198.18.0.10:53");
            let dgram = with_macs(Pkt::udp(ip("198.18.0.1"), dns.ip(), 44300, 53), b.c0_mac, CLIENT_MAC).build();
            let dns_id = bal.services.iter().find(|s| s.cfg.name == "dns4").unwrap().id;
            let udp_active = |bal: &Balancer| active(bal, "dns4")[0];
            run(&bal, &dgram, c0);
            std::thread::sleep(std::time::Duration::from_millis(10));
            bal.dp.tick_conntrack_clock().unwrap();
            let before = bal.dp.service_stats(dns_id).unwrap();
            run(&bal, &dgram, c0);
            let after = bal.dp.service_stats(dns_id).unwrap();
            let d = (
                after.new_flows - before.new_flows,
                after.repicked - before.repicked,
                after.established - before.established,
            );
            if d != (1, 0, 0) || udp_active(&bal) != 1 {
                problems.push(format!(
                    "datagram after expiry: (new, repicked, established) +{d:?}, {} active; expected +(1, 0, 0), 1",
                    udp_active(&bal)
                ));
            }
            let before = bal.dp.service_stats(dns_id).unwrap();
            run(&bal, &dgram, c0);
            let after = bal.dp.service_stats(dns_id).unwrap();
            if after.established - before.established != 1 || udp_active(&bal) != 1 {
                problems.push(format!(
                    "datagram right after: established +{}, {} active; expected +1, 1",
                    after.established - before.established,
                    udp_active(&bal)
                ));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The daemon's sweeper, against the kernel's map: it deletes entries idle
/// past their timeout and lowers the counts of those still open, leaves
/// fresh ones, and corrects a count that drifted (as an LRU eviction leaves
/// it) once two quiet cycles agree.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn sweeper_expires_entries_and_corrects_counts() {
    use xlb::dataplane::sweep::Sweeper;
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let cfg = config();
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            let mut problems = vec![];
            let vip = sa("198.18.0.30:80");
            let cl = |port: u16| SocketAddr::new(ip("198.18.0.1"), port);
            let total = |bal: &Balancer| active(bal, "pair").iter().sum::<u64>();
            // 30 open flows, 10 closed ones.
            for p in 45000..45040u16 {
                run(&bal, &seg(&b, cl(p), vip, TCP_SYN, true), b.c0);
                if p >= 45030 {
                    run(&bal, &seg(&b, cl(p), vip, TCP_RST, true), b.c0);
                }
            }
            let entries = bal.dp.conntrack_len().unwrap();
            if (total(&bal), entries) != (30, 40) {
                problems.push(format!("before: {} active, {entries} entries; expected 30, 40", total(&bal)));
            }
            let (table, _) = bal.dp.conntrack_table().unwrap();
            let conns = bal.dp.conns().expect("BACKEND_CONNS mapped");
            // Long timeouts (ticks): nothing expires; an evicted-like drift of +3 on web2 is corrected.
            let mut sw = Sweeper::new(table, conns.clone(), [1 << 30; 4]);
            let web2 = bal.services.iter().find(|s| s.cfg.name == "pair").unwrap().backends[1].slot;
            conns.add(web2, 3);
            let slots = bal.backend_slots();
            for pass in 0..3 {
                let done = sw.pass(&slots, 1 << 20).unwrap();
                if !done {
                    problems.push(format!("pass {pass} did not finish a cycle over 40 entries"));
                }
            }
            if (total(&bal), bal.dp.conntrack_len().unwrap(), sw.stats.corrected) != (30, 40, -3) {
                problems.push(format!(
                    "drift: {} active, {} entries, corrected {}; expected 30, 40, -3",
                    total(&bal),
                    bal.dp.conntrack_len().unwrap(),
                    sw.stats.corrected
                ));
            }
            // Tiny timeouts: every entry expires; the 30 open ones lower the counts.
            let (table, _) = bal.dp.conntrack_table().unwrap();
            let mut sw = Sweeper::new(table, conns, [1; 4]);
            std::thread::sleep(std::time::Duration::from_millis(10));
            sw.pass(&slots, 1 << 20).unwrap();
            let left = bal.dp.conntrack_len().unwrap();
            if (total(&bal), left, sw.stats.expired, sw.stats.expired_counted) != (0, 0, 40, 30) {
                problems.push(format!(
                    "expiry: {} active, {left} entries left, {} expired ({} counted); expected 0, 0, 40 (30)",
                    total(&bal),
                    sw.stats.expired,
                    sw.stats.expired_counted
                ));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
