//! The differential fuzzer: seeded frames (valid packets, every header field
//! mutated, truncations at every offset, random bytes; IPv4 and IPv6, VLAN
//! tagged or not, TCP, UDP, ICMP and other protocols) run through the real
//! XDP program with BPF_PROG_TEST_RUN and through the reference [`model`];
//! the action, the bytes that leave and the counter that moved must agree,
//! and every 1000 frames the per-service counters too.
//!
//! Frame `i` of seed `S` is a function of `(S, i)` alone ([`frame`]); the
//! conntrack table both sides keep depends on the frames before it, so a
//! divergence is replayed with `cargo xtask fuzz --seed S --frames i+1`.

pub mod model;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::{counter, TokenBucket, PING_BURST, PING_RATE_PER_CPU};
use xlb::balancer::Balancer;

use self::model::{Expect, Hop, Model, SvcTotals, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use crate::{
    packet::{Pkt, L4},
    xdpbed::{bed, fixture_config, run, WEB1_MAC, WEB2_MAC},
};

/// splitmix64: small, seedable, good enough to pick frames.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.u64() % 1000 < per_mille
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Which side a frame arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// Frame `i` of seed `seed`, and the side it arrives on.
pub fn frame(seed: u64, i: u64) -> (Vec<u8>, Side) {
    let mut r = Rng::new(seed ^ (i.wrapping_add(1)).wrapping_mul(0xd1b5_4a32_d192_ed03));
    r.u64();
    if r.chance(40) {
        return random_frame(&mut r);
    }
    if r.chance(150) {
        return icmp_frame(&mut r);
    }
    let (p, side) = base_packet(&mut r);
    let mut f = build(&p, &mut r);
    if r.chance(80) {
        // A truncation at any offset.
        let at = 14 + r.below(f.len() - 13);
        f.truncate(at.max(14));
        return (f, side);
    }
    let n = match r.below(100) {
        0..=39 => 0,
        40..=74 => 1,
        _ => 2 + r.below(3),
    };
    for _ in 0..n {
        mutate(&mut f, &p, &mut r);
    }
    (f, side)
}

const CLIENTS_V4: [&str; 4] = ["198.18.0.1", "198.18.0.3", "198.19.7.9", "198.18.200.1"];
const CLIENTS_V6: [&str; 3] = ["2001:db8::1", "2001:db8::3", "2001:db8:77::9"];
const MARTIANS_V4: [&str; 7] =
    ["0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.255.0.1", "255.255.255.255", "198.18.0.10"];
const MARTIANS_V6: [&str; 6] = ["::", "::1", "ff02::1", "ff05::2", "::ffff:198.18.0.1", "2001:db8::10"];
/// (address, ports it serves or answers from, side)
const VIPS_V4: [&str; 4] = ["198.18.0.10", "198.18.0.20", "198.18.0.30", "198.18.0.2"];
const VIPS_V6: [&str; 3] = ["2001:db8::10", "2001:db8::20", "2001:db8::2"];
const BACKENDS_V4: [&str; 2] = ["198.18.1.11", "198.18.1.12"];
const BACKENDS_V6: [&str; 2] = ["2001:db8:1::11", "2001:db8:1::12"];
const PORTS: [u16; 7] = [80, 53, 8080, 5353, 443, 22, 0];
const FLAGS: [u8; 16] =
    [0x02, 0x02, 0x02, 0x02, 0x10, 0x10, 0x10, 0x18, 0x18, 0x11, 0x04, 0x14, 0x12, 0x00, 0x03, 0x06];

/// A well-formed packet: client to a VIP (or the lb), or backend to client.
fn base_packet(r: &mut Rng) -> (Pkt, Side) {
    let v6 = r.chance(400);
    let l4 = if r.chance(350) { L4::Udp } else { L4::Tcp };
    // Few flows, so that replies and later packets find the flows SYNs opened.
    let client_port = 40000 + if r.chance(700) { r.below(4) } else { r.below(64) } as u16;
    let client = |r: &mut Rng, v6: bool| {
        let i = if r.chance(700) { 0 } else { r.below(3) + 1 };
        if v6 {
            ip(CLIENTS_V6[i.min(CLIENTS_V6.len() - 1)])
        } else {
            ip(CLIENTS_V4[i])
        }
    };
    let (src, dst, sport, dport, side) = if r.chance(250) {
        let b = if v6 { ip(r.pick(&BACKENDS_V6)) } else { ip(r.pick(&BACKENDS_V4)) };
        let c = client(r, v6);
        let sport = if r.chance(800) { r.pick(&[80, 8080, 5353, 53]) } else { r.pick(&PORTS) };
        (b, c, sport, client_port, if r.chance(850) { Side::Backend } else { Side::Client })
    } else {
        let martian = r.chance(60);
        let src = match (v6, martian) {
            (false, false) => client(r, false),
            (false, true) => ip(r.pick(&MARTIANS_V4)),
            (true, false) => client(r, true),
            (true, true) => ip(r.pick(&MARTIANS_V6)),
        };
        let dst = if v6 { ip(r.pick(&VIPS_V6)) } else { ip(r.pick(&VIPS_V4)) };
        let dport = if r.chance(800) {
            if l4 == L4::Tcp {
                80
            } else {
                53
            }
        } else {
            r.pick(&PORTS)
        };
        (src, dst, client_port, dport, if r.chance(900) { Side::Client } else { Side::Backend })
    };
    let mut p = Pkt::new(src, dst, l4, sport, dport);
    p.eth_dst = r.bytes(6).try_into().unwrap();
    p.eth_src = r.bytes(6).try_into().unwrap();
    p.tcp_flags = if r.chance(50) { r.u64() as u8 } else { r.pick(&FLAGS) };
    p.ttl = match r.below(20) {
        0 => 1,
        1 => 0,
        2 => 2,
        3 => r.u64() as u8,
        _ => 64,
    };
    let n = r.pick(&[0, 0, 1, 5, 17, 64, 200]);
    p.payload = r.bytes(n);
    p.udp_no_csum = r.chance(150);
    if r.chance(150) {
        p.vlan = Some(r.u64() as u16);
    }
    if !v6 && r.chance(100) {
        let n = 4 * (1 + r.below(10));
        p.ipv4_options = r.bytes(n);
    }
    if !v6 && r.chance(40) {
        let any = r.u64() as u16;
        p.ipv4_frag = r.pick(&[0x2000, 0x0010, 0x4000, 0x2010, 0x1fff, any]);
    }
    if v6 && r.chance(40) {
        p.ipv6_ext = Some(r.pick(&[0, 43, 44, 50, 51, 60, 135, 139, 140, 59]));
    }
    (p, side)
}

/// Routers and hosts that send ICMP errors (not VIPs, not backends).
const ROUTERS_V4: [&str; 2] = ["198.18.0.254", "198.18.1.254"];
const ROUTERS_V6: [&str; 2] = ["2001:db8::fe", "2001:db8:1::fe"];

/// An ICMP or ICMPv6 frame: an echo request (to a VIP, the lb, a client), an
/// error quoting the reply of a VIP flow (VIP:port -> client, as a router
/// between client and lb sends it), an error quoting a packet to a NAT
/// backend (client -> backend:port, from the backend or a router on its
/// side), or some other type; quotes cut at every length, quoted
/// fragments and extension headers, then the same truncations, tags,
/// padding and mutations as other frames.
fn icmp_frame(r: &mut Rng) -> (Vec<u8>, Side) {
    use crate::icmp::Icmp;
    let v6 = r.chance(400);
    let pick_ip = |r: &mut Rng, v4: &[&str], v6s: &[&str]| if v6 { ip(r.pick(v6s)) } else { ip(r.pick(v4)) };
    let client = |r: &mut Rng| {
        let i = if r.chance(700) { 0 } else { r.below(3) + 1 };
        if v6 {
            ip(CLIENTS_V6[i.min(CLIENTS_V6.len() - 1)])
        } else {
            ip(CLIENTS_V4[i])
        }
    };
    let client_port = 40000 + if r.chance(750) { r.below(4) } else { r.below(64) } as u16;
    let tcp = r.chance(650);
    let l4 = if tcp { L4::Tcp } else { L4::Udp };
    let (mut p, side) = match r.below(100) {
        0..=29 => {
            // Echo request (or reply, or another type) to a VIP, the lb or a client.
            let dst = match r.below(10) {
                0 => client(r),
                1 => pick_ip(r, &MARTIANS_V4, &MARTIANS_V6),
                _ => pick_ip(r, &VIPS_V4, &VIPS_V6),
            };
            let src = if r.chance(900) { client(r) } else { pick_ip(r, &MARTIANS_V4, &MARTIANS_V6) };
            let n = r.pick(&[0, 8, 56, 200]);
            let data = r.bytes(n);
            let mut p = Icmp::echo(src, dst, r.chance(80), r.u64() as u16, &data);
            if r.chance(80) {
                p.ty = r.u64() as u8;
                p.code = r.u64() as u8;
            }
            (p, if r.chance(850) { Side::Client } else { Side::Backend })
        }
        _ => {
            // An error about a VIP flow: its reply (VIP:port -> client), or a
            // packet to a NAT backend (client -> backend:port).
            let c = client(r);
            let (qsrc, qdst, qsport, qdport, outer_src, side) = if r.chance(550) {
                let vip = pick_ip(r, &VIPS_V4, &VIPS_V6);
                let port = if r.chance(800) {
                    if tcp {
                        80
                    } else {
                        53
                    }
                } else {
                    r.pick(&PORTS)
                };
                let from = if r.chance(800) { pick_ip(r, &ROUTERS_V4, &ROUTERS_V6) } else { c };
                (vip, c, port, client_port, from, if r.chance(850) { Side::Client } else { Side::Backend })
            } else {
                // Mostly a NAT backend and a port it serves on for this protocol.
                let be = if r.chance(750) {
                    ip(if v6 { BACKENDS_V6[0] } else { BACKENDS_V4[0] })
                } else {
                    pick_ip(r, &BACKENDS_V4, &BACKENDS_V6)
                };
                let port = match (r.below(10), tcp) {
                    (0..=7, true) => r.pick(&[8080, 8080, 80]),
                    (0..=7, false) => r.pick(&[5353, 53]),
                    _ => r.pick(&PORTS),
                };
                let from = if r.chance(600) { be } else { pick_ip(r, &ROUTERS_V4, &ROUTERS_V6) };
                (c, be, client_port, port, from, if r.chance(850) { Side::Backend } else { Side::Client })
            };
            let mut q = Pkt::new(qsrc, qdst, l4, qsport, qdport);
            q.tcp_flags = r.pick(&FLAGS);
            q.ttl = r.pick(&[64, 63, 1]);
            let n = r.pick(&[0, 0, 5, 64, 200, 1300]);
            q.payload = r.bytes(n);
            q.udp_no_csum = r.chance(200);
            if !v6 && r.chance(60) {
                let any = r.u64() as u16;
                q.ipv4_frag = r.pick(&[0x2000, 0x0010, 0x4000, 0x2010, 0x1fff, any]);
            }
            if !v6 && r.chance(50) {
                let n = 4 * (1 + r.below(10));
                q.ipv4_options = r.bytes(n);
            }
            if v6 && r.chance(50) {
                q.ipv6_ext = Some(r.pick(&[0, 43, 44, 60, 59, 50]));
            }
            let qf = q.build();
            // The quote: a router's 28 bytes (IPv4 header and 8), as much as fits
            // in 576 / 1280 bytes, a TCP header's worth, or any length.
            let whole = qf.len() - 14;
            let cut = match r.below(10) {
                0..=2 => whole.min(if v6 { 1232 } else { 548 }),
                3 | 4 => {
                    if v6 {
                        48
                    } else {
                        28 + q.ipv4_options.len()
                    }
                }
                5 | 6 => (if v6 { 60 } else { 40 + q.ipv4_options.len() }).min(whole),
                _ => r.below(whole + 1),
            };
            let mut quoted = crate::icmp::ip_packet(&qf, cut);
            if r.chance(60) && quoted.len() > 9 {
                // Another protocol quoted.
                let at = if v6 { 6 } else { 9 };
                let any = r.u64() as u8;
                quoted[at] = r.pick(&[1, 58, 47, 0, any]);
            }
            let (ty, code) = match (v6, r.below(10)) {
                (false, 0..=5) => (3, 4),
                (false, 6) => (3, 3),
                (false, 7) => (11, 0),
                (false, 8) => (12, 0),
                (true, 0..=5) => (2, 0),
                (true, 6) => (1, 4),
                (true, 7) => (3, 0),
                (true, 8) => (4, 0),
                _ => (r.u64() as u8, r.u64() as u8),
            };
            let dst = if r.chance(950) { qsrc } else { pick_ip(r, &VIPS_V4, &VIPS_V6) };
            (Icmp::error(outer_src, dst, ty, code, r.pick(&[1280, 1400, 576, 0]), &quoted), side)
        }
    };
    p.eth_dst = r.bytes(6).try_into().unwrap();
    p.eth_src = r.bytes(6).try_into().unwrap();
    p.ttl = match r.below(20) {
        0 => 1,
        1 => 0,
        2 => r.u64() as u8,
        _ => 64,
    };
    let mut f = p.build();
    let l3 = if r.chance(150) {
        let tpid: u16 = if r.chance(300) { 0x88a8 } else { 0x8100 };
        let mut tag = tpid.to_be_bytes().to_vec();
        tag.extend_from_slice(&(r.u64() as u16).to_be_bytes());
        f.splice(12..12, tag);
        18
    } else {
        14
    };
    if r.chance(150) {
        let pad = if r.chance(500) { 60usize.saturating_sub(f.len()) } else { 1 + r.below(40) };
        let bytes = if r.chance(500) { vec![0; pad] } else { r.bytes(pad) };
        f.extend_from_slice(&bytes);
    }
    if r.chance(80) {
        let at = 14 + r.below(f.len() - 13);
        f.truncate(at.max(14));
        return (f, side);
    }
    let n = match r.below(100) {
        0..=49 => 0,
        50..=79 => 1,
        _ => 2 + r.below(3),
    };
    for _ in 0..n {
        mutate_icmp(&mut f, l3, v6, r);
    }
    (f, side)
}

/// One mutation of an ICMP frame: a field of the outer header, the ICMP
/// header or the quoted headers set to an interesting value, or a byte set,
/// a bit flipped, bytes added anywhere.
fn mutate_icmp(f: &mut Vec<u8>, l3: usize, v6: bool, r: &mut Rng) {
    let l4 = if v6 { l3 + 40 } else { l3 + usize::from(f.get(l3).map_or(5, |b| b & 0xf)) * 4 };
    let q3 = l4 + 8;
    let q4 = if v6 { q3 + 40 } else { q3 + usize::from(f.get(q3).map_or(5, |b| b & 0xf)) * 4 };
    let fields: &[(usize, usize)] = if v6 {
        &[
            (l3, 1),
            (l3 + 4, 2),
            (l3 + 6, 1),
            (l3 + 7, 1),
            (l4, 1),
            (l4 + 1, 1),
            (q3 + 6, 1),
            (q3 + 8, 16),
            (q3 + 24, 16),
            (q4, 2),
            (q4 + 2, 2),
            (q4 + 6, 2),
            (q4 + 16, 2),
        ]
    } else {
        &[
            (l3, 1),
            (l3 + 2, 2),
            (l3 + 6, 2),
            (l3 + 8, 1),
            (l4, 1),
            (l4 + 1, 1),
            (q3, 1),
            (q3 + 2, 2),
            (q3 + 6, 2),
            (q3 + 9, 1),
            (q3 + 12, 4),
            (q3 + 16, 4),
            (q4, 2),
            (q4 + 2, 2),
            (q4 + 6, 2),
            (q4 + 16, 2),
        ]
    };
    let (any8, any16) = (r.u64() as u8, r.u64() as u16);
    match r.below(10) {
        0..=5 => {
            let (at, w) = r.pick(fields);
            if at + w > f.len() {
                return;
            }
            let b = match w {
                1 => {
                    vec![r.pick(&[0, 1, 2, 3, 4, 8, 11, 12, 44, 0x45, 0x46, 0x4f, 0x60, 128, 129, 0xff, any8])]
                }
                2 => r.pick(&[0u16, 1, 8, 53, 80, 0x1fff, 0x2000, 0xffff, any16]).to_be_bytes().to_vec(),
                _ => match r.below(3) {
                    0 if w == 4 => ip_octets(ip(r.pick(&VIPS_V4))),
                    0 => ip_octets(ip(r.pick(&VIPS_V6))),
                    1 if w == 4 => ip_octets(ip(r.pick(&CLIENTS_V4))),
                    1 => ip_octets(ip(r.pick(&CLIENTS_V6))),
                    _ => r.bytes(w),
                },
            };
            f[at..at + w].copy_from_slice(&b);
        }
        6 => {
            let at = r.below(f.len().min(120));
            f[at] = r.u64() as u8;
        }
        7 | 8 => {
            let at = r.below(f.len());
            f[at] ^= 1 << r.below(8);
        }
        _ => {
            let n = 1 + r.below(30);
            let b = r.bytes(n);
            f.extend_from_slice(&b);
        }
    }
}

/// The packet's bytes, then maybe another protocol in the IP header, an
/// 802.1ad tag instead of 802.1Q, Ethernet padding.
fn build(p: &Pkt, r: &mut Rng) -> Vec<u8> {
    let mut f = p.build();
    let l3 = if p.vlan.is_some() { 18 } else { 14 };
    if p.vlan.is_some() && r.chance(300) {
        f[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    }
    if r.chance(60) {
        // ICMP, ICMPv6, or anything.
        let any = r.u64() as u8;
        let proto = r.pick(&[1, 58, 47, 132, 0, any]);
        let at = if p.src.is_ipv4() { l3 + 9 } else { l3 + 6 };
        if p.ipv6_ext.is_none() {
            f[at] = proto;
        }
    }
    if r.chance(150) {
        let pad = if r.chance(500) { 60usize.saturating_sub(f.len()) } else { 1 + r.below(40) };
        let bytes = if r.chance(500) { vec![0; pad] } else { r.bytes(pad) };
        f.extend_from_slice(&bytes);
    }
    f
}

/// One mutation: a header field set to an interesting value, a byte set or
/// a bit flipped anywhere in the headers, or bytes added.
fn mutate(f: &mut Vec<u8>, p: &Pkt, r: &mut Rng) {
    let l3 = if p.vlan.is_some() { 18 } else { 14 };
    let v4 = p.src.is_ipv4();
    let l4 = if v4 { l3 + 20 + p.ipv4_options.len() } else { l3 + 40 + if p.ipv6_ext.is_some() { 8 } else { 0 } };
    let l4_len = f.len().saturating_sub(l4) as u16;
    // (offset, width)
    let fields: &[(usize, usize)] = if v4 {
        &[
            (12, 2),
            (l3, 1),
            (l3 + 2, 2),
            (l3 + 6, 2),
            (l3 + 8, 1),
            (l3 + 9, 1),
            (l3 + 10, 2),
            (l3 + 12, 4),
            (l3 + 16, 4),
            (l4, 2),
            (l4 + 2, 2),
            (l4 + 4, 2),
            (l4 + 6, 2),
            (l4 + 12, 1),
            (l4 + 13, 1),
            (l4 + 16, 2),
        ]
    } else {
        &[
            (12, 2),
            (l3, 1),
            (l3 + 4, 2),
            (l3 + 6, 1),
            (l3 + 7, 1),
            (l3 + 8, 16),
            (l3 + 24, 16),
            (l4, 2),
            (l4 + 2, 2),
            (l4 + 4, 2),
            (l4 + 6, 2),
            (l4 + 12, 1),
            (l4 + 13, 1),
            (l4 + 16, 2),
        ]
    };
    let (any8, any16) = (r.u64() as u8, r.u64() as u16);
    match r.below(10) {
        0..=5 => {
            let (at, w) = r.pick(fields);
            if at + w > f.len() {
                return;
            }
            match w {
                1 => {
                    f[at] =
                        r.pick(&[0, 1, 2, 0x0f, 0x10, 0x12, 0x14, 0x40, 0x44, 0x45, 0x4f, 0x50, 0x60, 0xf0, 0xff, any8])
                }
                2 => {
                    let v: u16 = r.pick(&[
                        0,
                        1,
                        7,
                        8,
                        9,
                        l4_len.wrapping_sub(1),
                        l4_len,
                        l4_len.wrapping_add(1),
                        0x0800,
                        0x86dd,
                        0x8100,
                        0xffff,
                        any16,
                    ]);
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
                _ => {
                    let a = match (w, r.below(3)) {
                        (4, 0) => ip(r.pick(&MARTIANS_V4)),
                        (4, 1) => ip(r.pick(&VIPS_V4)),
                        (16, 0) => ip(r.pick(&MARTIANS_V6)),
                        (16, 1) => ip(r.pick(&VIPS_V6)),
                        _ => {
                            let b = r.bytes(w);
                            f[at..at + w].copy_from_slice(&b);
                            return;
                        }
                    };
                    let b = match a {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    f[at..at + w].copy_from_slice(&b);
                }
            }
        }
        6 => {
            let at = r.below(f.len().min(100));
            f[at] = r.u64() as u8;
        }
        7 | 8 => {
            let at = r.below(f.len());
            f[at] ^= 1 << r.below(8);
        }
        _ => {
            let n = 1 + r.below(30);
            let b = r.bytes(n);
            f.extend_from_slice(&b);
        }
    }
}

/// Random bytes, often with an IP ethertype and a VIP's address where the
/// destination would be.
fn random_frame(r: &mut Rng) -> (Vec<u8>, Side) {
    let n = 14 + r.below(120);
    let mut f = r.bytes(n);
    if r.chance(600) {
        let v6 = r.chance(500);
        f[12..14].copy_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        if v6 && f.len() >= 54 {
            f[14] = 0x60 | (f[14] & 0x0f);
            f[20] = r.pick(&[6, 17, 44, 0]);
            f[38..54].copy_from_slice(&ip_octets(ip(r.pick(&VIPS_V6))));
        } else if !v6 && f.len() >= 34 {
            f[14] = r.pick(&[0x45, 0x46, 0x44, f[14]]);
            f[23] = r.pick(&[6, 17, 1]);
            f[30..34].copy_from_slice(&ip_octets(ip(r.pick(&VIPS_V4))));
        }
    }
    (f, if r.chance(500) { Side::Client } else { Side::Backend })
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How a run went.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub elapsed: Duration,
    /// Divergences, each with the seed, frame number and frame (hex).
    pub divergences: Vec<String>,
    /// Frames per outcome (`drop/bad_flags`, `redirect`, `pass/not_vip`, ...): what the run covered.
    pub outcomes: BTreeMap<String, u64>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut o = format!(
            "{} frames, seed {}, {:.1} s ({:.0} frames/s), {} divergence(s)\n",
            self.frames,
            self.seed,
            self.elapsed.as_secs_f64(),
            self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.divergences.len()
        );
        for (k, v) in &self.outcomes {
            let _ = writeln!(o, "  {k:<24} {v}");
        }
        o
    }
}

/// Stops after this many divergences.
const MAX_DIVERGENCES: usize = 20;
/// Both conntrack tables are cleared this often (and the per-service
/// counters compared), far below the table's capacity so the LRU never evicts.
const CHECKPOINT: u64 = 1000;

fn outcome_name(e: &Expect) -> String {
    let action = match e.action {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        _ => "?",
    };
    match e.counter {
        Some(c) if c < counter::NUM_DROPS => format!("{action}/{}", counter::DROP_NAMES[c as usize]),
        Some(counter::PASS_NOT_VIP) => format!("{action}/not_vip"),
        Some(counter::PASS_TTL) => format!("{action}/ttl"),
        Some(counter::REPLY_NAT) => format!("{action}/nat_reply"),
        Some(counter::PASS_ICMP) => format!("{action}/icmp"),
        Some(counter::ICMP_TO_BACKEND) => format!("{action}/icmp_to_backend"),
        Some(counter::ICMP_TO_CLIENT) => format!("{action}/icmp_to_client"),
        Some(counter::PING_ANSWERED) => format!("{action}/ping_answered"),
        Some(c) => format!("{action}/counter{c}"),
        None => format!("{action}/to_backend"),
    }
}

/// Runs `frames` frames of `seed` through the program and the model, in a
/// namespace of its own (needs root). `progress`: a line every 100,000 frames.
pub fn run_fuzz(frames: u64, seed: u64, progress: bool) -> anyhow::Result<Report> {
    let b = bed();
    let (c0, b0, b0_mac) = (b.c0, b.b0, b.b0_mac);
    b.ns.run_in(move || -> anyhow::Result<Report> {
        let mut cfg = fixture_config();
        cfg.daemon.conntrack_entries = 65536;
        // The model knows nat and dsr; ipip/gue have their own fixtures (tests/tests/encap.rs).
        cfg.services.retain(|s| !s.forwarding.encapsulates());
        // Echo requests to 198.18.0.30 and 2001:db8::20 go to the kernel.
        for s in &mut cfg.services {
            if s.name == "pair" || s.name == "dsr6" {
                s.answer_ping = false;
            }
        }
        let mut bal = Balancer::load(&cfg).context("load the XDP program")?;
        bal.apply(&cfg).context("fill the maps")?;
        let n = bal.refresh_next_hops()?;
        if n != 8 {
            bail!("{n} backends got a next hop, expected 8");
        }
        let mut hops = HashMap::new();
        for (a, m) in [("198.18.1.11", WEB1_MAC), ("198.18.1.12", WEB2_MAC), ("2001:db8:1::11", WEB1_MAC), ("2001:db8:1::12", WEB2_MAC)] {
            hops.insert(ip(a), Hop { ifindex: b0, dmac: m, smac: b0_mac });
        }
        let mut model = Model::new(&cfg, hops);
        let ids: Vec<u32> = cfg
            .services
            .iter()
            .map(|s| bal.services.iter().find(|x| x.cfg.name == s.name).map(|x| x.id).unwrap())
            .collect();
        let stats = |bal: &Balancer| -> anyhow::Result<Vec<SvcTotals>> {
            ids.iter()
                .map(|&id| {
                    let s = bal.dp.service_stats(id)?;
                    Ok(SvcTotals {
                        packets: s.packets,
                        established: s.established,
                        new_flows: s.new_flows,
                        repicked: s.repicked,
                        non_syn: s.non_syn,
                    })
                })
                .collect()
        };
        let base = stats(&bal)?;
        let mut rep = Report { seed, frames: 0, ..Report::default() };
        let started = Instant::now();
        let mut prev = bal.dp.counters()?;
        let mut window_start = 0;
        for i in 0..frames {
            let (frame, side) = frame(seed, i);
            let ingress = if side == Side::Client { c0 } else { b0 };
            // An echo request to a VIP finds its CPU's token bucket empty one
            // time in five: the bucket is set before the frame runs.
            let empty = Rng::new(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)).chance(200);
            model.ping_token = !empty;
            let mut want = model.decide(&frame, ingress);
            let (action, out) = if want.ping {
                let set_at = monotonic_ns();
                let tokens = if empty { 0 } else { PING_BURST };
                bal.dp.set_ping_bucket(TokenBucket { tokens, last_ns: set_at })?;
                let (action, out) = run(&bal, &frame, ingress);
                // The bucket gains a token every 1/PING_RATE_PER_CPU s: an empty
                // one may have one by the time the frame runs on a slow machine.
                if empty && action != want.action && monotonic_ns() - set_at >= 1_000_000_000 / PING_RATE_PER_CPU {
                    model.ping_token = true;
                    want = model.decide(&frame, ingress);
                }
                (action, out)
            } else {
                run(&bal, &frame, ingress)
            };
            let now = bal.dp.counters()?;
            let moved: Vec<(usize, u64)> =
                (0..now.len()).filter(|&k| now[k] != prev[k]).map(|k| (k, now[k] - prev[k])).collect();
            prev = now;
            *rep.outcomes.entry(outcome_name(&want)).or_default() += 1;
            let want_moved: Vec<(usize, u64)> = want.counter.map(|c| (c as usize, 1)).into_iter().collect();
            let bytes_differ = want.action != XDP_DROP && out != want.output;
            if action != want.action || moved != want_moved || bytes_differ {
                let mut d = format!(
                    "seed {seed} frame #{i} ({} side, ingress {ingress}): expected action {} counters {:?}, got action {action} counters {:?}\n  frame    {}",
                    if side == Side::Client { "client" } else { "backend" },
                    want.action,
                    want_moved,
                    moved,
                    hex(&frame)
                );
                if bytes_differ {
                    let _ = write!(d, "\n  expected {}\n  got      {}", hex(&want.output), hex(&out));
                }
                let _ = write!(d, "\n  replay: cargo xtask fuzz --seed {seed} --frames {}", i + 1);
                rep.divergences.push(d);
                if rep.divergences.len() >= MAX_DIVERGENCES {
                    rep.frames = i + 1;
                    break;
                }
            }
            rep.frames = i + 1;
            if (i + 1) % CHECKPOINT == 0 || i + 1 == frames {
                let got: Vec<SvcTotals> = stats(&bal)?
                    .iter()
                    .zip(&base)
                    .map(|(s, b)| SvcTotals {
                        packets: s.packets - b.packets,
                        established: s.established - b.established,
                        new_flows: s.new_flows - b.new_flows,
                        repicked: s.repicked - b.repicked,
                        non_syn: s.non_syn - b.non_syn,
                    })
                    .collect();
                for (k, (g, w)) in got.iter().zip(&model.totals).enumerate() {
                    if g != w {
                        rep.divergences.push(format!(
                            "seed {seed} frames #{window_start}..#{i}: service {} counters {g:?}, expected {w:?}",
                            cfg.services[k].name
                        ));
                    }
                }
                let kernel = bal.dp.clear_conntrack()?;
                if kernel != model.conntrack_len() {
                    rep.divergences.push(format!(
                        "seed {seed} frames #{window_start}..#{i}: {kernel} conntrack entries, the model made {}",
                        model.conntrack_len()
                    ));
                }
                model.clear_conntrack();
                window_start = i + 1;
                if rep.divergences.len() >= MAX_DIVERGENCES {
                    break;
                }
            }
            if progress && (i + 1) % 100_000 == 0 {
                println!("{} frames, {:.1} s, {} divergence(s)", i + 1, started.elapsed().as_secs_f64(), rep.divergences.len());
            }
        }
        rep.elapsed = started.elapsed();
        Ok(rep)
    })?
}
