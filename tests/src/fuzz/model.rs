//! The reference model of the XDP program's decision, in plain Rust: what a
//! frame is (parse), which service and backend it belongs to (classify),
//! what is done with it (action), the bytes that leave (NAT and DSR
//! rewrites, RFC 1624 checksum updates written out from the RFC, not from
//! the program) and the `COUNTERS` slot it raises. It keeps its own copy of
//! the conntrack table, made by the same rules as the program's.
//!
//! It reads packets by byte offsets only and shares nothing with `lb-ebpf`;
//! it shares with the daemon only what is the contract between the two: the
//! flow hash (`lb_common::flow_hash`), the Maglev tables (`plan`) and the
//! counter indices.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    counter, flow_hash, FlowKey, FAMILY_V4, FAMILY_V6, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use xlb::{
    config::{Config, Forwarding},
    plan,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Where a backend's frames go: egress interface and MACs (resolved next hops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

struct Svc {
    dsr: bool,
    /// Maglev table: indices into `backends`.
    table: Vec<u32>,
    backends: Vec<SocketAddr>,
}

/// What the model expects of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub action: u32,
    /// The frame that leaves (for XDP_DROP: not compared).
    pub output: Vec<u8>,
    /// The `COUNTERS` slot that rises by one, if any.
    pub counter: Option<u32>,
    /// The service (index into the config) whose stats count the packet.
    pub service: Option<usize>,
    /// How the service counts it.
    pub flow: Flow,
    /// An echo request answered or refused by the per-CPU rate limit: the
    /// outcome depends on [`Model::ping_token`].
    pub ping: bool,
}

/// How a service's counters see a packet (as `ServiceStats` counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    None,
    Established,
    New,
    Repicked,
    NonSyn,
    Refused,
}

/// Per-service totals the model expects in `SERVICE_STATS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcTotals {
    pub packets: u64,
    pub established: u64,
    pub new_flows: u64,
    pub repicked: u64,
    pub non_syn: u64,
}

#[derive(Clone, Copy)]
struct Tracked {
    service: usize,
    backend: usize,
    reply_hop: Hop,
    /// A FIN or RST passed (either way): a SYN of the same 5-tuple starts a new flow.
    ending: bool,
}

/// TCP FIN or RST.
const FIN_OR_RST: u8 = 0x05;

/// The model: the configuration as the maps hold it, the next hops, and the
/// conntrack table as the program would have made it.
pub struct Model {
    services: Vec<Svc>,
    /// (address, port, proto) of a service -> its index.
    by_vip: HashMap<(IpAddr, u16, u8), usize>,
    vip_addrs: HashSet<IpAddr>,
    /// VIP addresses whose services all have `answer_ping`.
    ping_addrs: HashSet<IpAddr>,
    vip_ports: HashSet<u16>,
    reply_ports: HashSet<u16>,
    /// NAT backend (address, port, proto) -> (service, backend index).
    nat_sources: HashMap<(IpAddr, u16, u8), (usize, usize)>,
    hops: HashMap<IpAddr, Hop>,
    conntrack: HashMap<Key, Tracked>,
    pub totals: Vec<SvcTotals>,
    /// Whether the CPU's echo-reply token bucket has a token for the next
    /// echo request (the fuzzer sets the bucket to match before the frame).
    pub ping_token: bool,
}

/// A flow as the model keys it: (src, dst, sport, dport, proto).
type Key = (IpAddr, IpAddr, u16, u16, u8);

impl Model {
    /// `hops`: the next hop of every backend address (all resolved).
    pub fn new(cfg: &Config, hops: HashMap<IpAddr, Hop>) -> Self {
        let mut m = Model {
            services: vec![],
            by_vip: HashMap::new(),
            vip_addrs: HashSet::new(),
            vip_ports: HashSet::new(),
            reply_ports: HashSet::new(),
            nat_sources: HashMap::new(),
            hops,
            conntrack: HashMap::new(),
            totals: vec![SvcTotals::default(); cfg.services.len()],
            ping_addrs: HashSet::new(),
            ping_token: true,
        };
        for (i, s) in cfg.services.iter().enumerate() {
            let proto = s.protocol.number();
            let dsr = s.forwarding == Forwarding::Dsr;
            m.by_vip.insert((s.vip.ip(), s.vip.port(), proto), i);
            m.vip_addrs.insert(s.vip.ip());
            if cfg.services.iter().filter(|o| o.vip.ip() == s.vip.ip()).all(|o| o.answer_ping) {
                m.ping_addrs.insert(s.vip.ip());
            }
            m.vip_ports.insert(s.vip.port());
            if !dsr {
                for (j, b) in s.backends.iter().enumerate() {
                    m.reply_ports.insert(b.address.port());
                    let prev = m.nat_sources.insert((b.address.ip(), b.address.port(), proto), (i, j));
                    assert!(prev.is_none(), "the fuzzer's config must not share a NAT backend between services");
                }
            }
            let table = plan::service_table(s, &plan::serving_when_all_up(s));
            assert!(table.iter().all(|&b| b != NO_BACKEND), "the fuzzer's services all have backends");
            m.services.push(Svc { dsr, table, backends: s.backends.iter().map(|b| b.address).collect() });
        }
        m
    }

    /// Forgets every tracked flow (the fuzzer clears the kernel's table too).
    pub fn clear_conntrack(&mut self) {
        self.conntrack.clear();
    }

    pub fn conntrack_len(&self) -> usize {
        self.conntrack.len()
    }

    /// The decision for `frame` arriving on `ingress`; updates the conntrack
    /// table and the per-service totals as the program would.
    pub fn decide(&mut self, frame: &[u8], ingress: u32) -> Expect {
        let e = self.decide_inner(frame, ingress);
        if let Some(s) = e.service {
            let t = &mut self.totals[s];
            t.packets += 1;
            match e.flow {
                Flow::Established => t.established += 1,
                Flow::New => t.new_flows += 1,
                Flow::Repicked => {
                    t.repicked += 1;
                    t.new_flows += 1;
                }
                Flow::NonSyn => t.non_syn += 1,
                Flow::None | Flow::Refused => {}
            }
        }
        e
    }

    fn decide_inner(&mut self, f: &[u8], ingress: u32) -> Expect {
        let pkt = match parse(f, self) {
            Parsed::Kernel => return pass(f, counter::PASS_NOT_VIP),
            Parsed::Refused(reason) => return drop(f, reason, None),
            Parsed::Icmp(o) => return self.icmp(f, &o, ingress),
            Parsed::Packet(p) => p,
        };
        if pkt.to_vip_port {
            if let Some(e) = self.for_service(f, &pkt, ingress) {
                return e;
            }
            // A VIP's port but not a service's: maybe a reply.
            if !self.reply_ports.contains(&pkt.sport) {
                return pass(f, counter::PASS_NOT_VIP);
            }
        }
        self.reply(f, &pkt, ingress)
    }

    /// A packet to a service port: `None` when no service has its (address, port, proto).
    fn for_service(&mut self, f: &[u8], p: &Pkt, ingress: u32) -> Option<Expect> {
        let key: Key = (p.src, p.dst, p.sport, p.dport, p.proto);
        // A SYN follows an entry of its 5-tuple that saw no FIN or RST (a
        // retransmission); after one, it starts a new flow.
        let tracked = self.conntrack.get_mut(&key).filter(|t| !(p.syn && t.ending));
        let (si, bi, flow) = match tracked {
            // Every backend stays up: an entry is always usable.
            Some(t) => {
                t.ending |= p.flags & FIN_OR_RST != 0;
                (t.service, t.backend, Flow::Established)
            }
            None => {
                let si = *self.by_vip.get(&(p.dst, p.dport, p.proto))?;
                if martian(p.src) || self.vip_addrs.contains(&p.src) {
                    return Some(drop(f, counter::DROP_BAD_SOURCE, None));
                }
                let svc = &self.services[si];
                let slot = flow_hash(&p.flow_key()) % svc.table.len() as u32;
                let bi = svc.table[slot as usize] as usize;
                let non_syn = p.proto == PROTO_TCP && !p.syn;
                if !non_syn {
                    let reply_hop = if svc.dsr {
                        Hop { ifindex: 0, dmac: [0; 6], smac: [0; 6] }
                    } else {
                        Hop { ifindex: ingress, dmac: mac(f, 6), smac: mac(f, 0) }
                    };
                    self.conntrack.insert(key, Tracked { service: si, backend: bi, reply_hop, ending: false });
                }
                (si, bi, if non_syn { Flow::NonSyn } else { Flow::New })
            }
        };
        let svc = &self.services[si];
        let be = svc.backends[bi];
        let hop = self.hops[&be.ip()];
        let mut out = f.to_vec();
        if !svc.dsr {
            if p.ttl <= 1 {
                return Some(Expect { service: Some(si), flow, ..pass(f, counter::PASS_TTL) });
            }
            rewrite(&mut out, p, true, be.ip(), be.port());
        }
        let action = send(&mut out, &hop, ingress);
        Some(Expect { action, output: out, counter: None, service: Some(si), flow, ping: false })
    }

    /// Not a service's packet: the reply of a tracked NAT flow, or the kernel's.
    fn reply(&mut self, f: &[u8], p: &Pkt, ingress: u32) -> Expect {
        let Some(&(si, bi)) = self.nat_sources.get(&(p.src, p.sport, p.proto)) else {
            return pass(f, counter::PASS_NOT_VIP);
        };
        let s = &self.services[si];
        let _ = s;
        let vip = self.vip_of(si);
        let flow: Key = (p.dst, vip.ip(), p.dport, vip.port(), p.proto);
        let Some(t) = self.conntrack.get_mut(&flow).filter(|t| t.service == si && t.backend == bi) else {
            return pass(f, counter::PASS_NOT_VIP);
        };
        // The backend's FIN or RST is seen before the TTL check.
        t.ending |= p.flags & FIN_OR_RST != 0;
        let t = *t;
        if p.ttl <= 1 {
            return pass(f, counter::PASS_TTL);
        }
        let mut out = f.to_vec();
        rewrite(&mut out, p, false, vip.ip(), vip.port());
        let action = send(&mut out, &t.reply_hop, ingress);
        Expect { action, output: out, counter: Some(counter::REPLY_NAT), service: None, flow: Flow::None, ping: false }
    }

    /// ICMP or ICMPv6 (the README's ICMP section): echo requests to a VIP
    /// answered, frag-needed / packet-too-big about a VIP's reply sent to the
    /// flow's backend, errors about a tracked NAT flow sent back to its client.
    fn icmp(&self, f: &[u8], o: &Outer, ingress: u32) -> Expect {
        let v4 = o.family == FAMILY_V4;
        let to_vip = self.vip_addrs.contains(&o.dst);
        let not_handled = || pass(f, if to_vip { counter::PASS_ICMP } else { counter::PASS_NOT_VIP });
        let refuse = |reason: u32| if to_vip { drop(f, reason, None) } else { pass(f, counter::PASS_NOT_VIP) };
        // Every header within the IP packet's own length (not the frame's).
        if o.l4 + 8 > f.len() || o.l4 + 8 > o.end {
            return not_handled();
        }
        let (ty, code) = (f[o.l4], f[o.l4 + 1]);
        if (v4 && ty == 8) || (!v4 && ty == 128) {
            if !to_vip {
                return pass(f, counter::PASS_NOT_VIP);
            }
            if !self.ping_addrs.contains(&o.dst) {
                return pass(f, counter::PASS_ICMP);
            }
            if !self.ping_token {
                return Expect { ping: true, ..drop(f, counter::DROP_PING_RATE_LIMITED, None) };
            }
            return Expect { ping: true, ..echo_reply(f, o) };
        }
        let error = if v4 { matches!(ty, 3 | 11 | 12) } else { (1..=4).contains(&ty) };
        if !error {
            return not_handled();
        }
        let too_big = if v4 { ty == 3 && code == 4 } else { ty == 2 };
        // The quoted packet: its IP header (read within the frame), then its
        // ports (within the outer IP packet).
        let q3 = o.l4 + 8;
        let (proto, qsrc, qdst, q4) = if v4 {
            if q3 + 20 > f.len() || q3 + 20 > o.end {
                return refuse(counter::DROP_ICMP_TRUNCATED);
            }
            let (vihl, frags, proto) = (f[q3], be16(f, q3 + 6), f[q3 + 9]);
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return refuse(counter::DROP_ICMP_TRUNCATED);
            }
            if proto != PROTO_TCP && proto != PROTO_UDP {
                return not_handled();
            }
            if frags & 0x1fff != 0 {
                return refuse(counter::DROP_ICMP_FRAGMENT);
            }
            (proto, addr(f, q3 + 12, FAMILY_V4), addr(f, q3 + 16, FAMILY_V4), q3 + ihl)
        } else {
            if q3 + 40 > f.len() || q3 + 40 > o.end {
                return refuse(counter::DROP_ICMP_TRUNCATED);
            }
            let next = f[q3 + 6];
            if next != PROTO_TCP && next != PROTO_UDP {
                return match next {
                    0 | 43 | 44 | 60 => refuse(counter::DROP_ICMP_FRAGMENT),
                    _ => not_handled(),
                };
            }
            (next, addr(f, q3 + 8, FAMILY_V6), addr(f, q3 + 24, FAMILY_V6), q3 + 40)
        };
        if q4 + 8 > f.len() || q4 + 8 > o.end {
            return refuse(counter::DROP_ICMP_TRUNCATED);
        }
        let (qsport, qdport) = (be16(f, q4), be16(f, q4 + 2));
        // An error goes to the source of the packet it quotes.
        if o.dst != qsrc {
            return not_handled();
        }
        let q = Quote { l3: q3, l4: q4, proto };
        // The reply of a VIP flow (VIP:port -> client).
        if let Some(&si) = self.vip_ports.contains(&qsport).then(|| self.by_vip.get(&(qsrc, qsport, proto))).flatten() {
            if !too_big {
                return not_handled();
            }
            let key: Key = (qdst, qsrc, qdport, qsport, proto);
            let svc = &self.services[si];
            let bi = match self.conntrack.get(&key) {
                Some(t) => t.backend,
                None => {
                    let k = Pkt::key_of(o.family, qdst, qsrc, qdport, qsport, proto);
                    svc.table[(flow_hash(&k) % svc.table.len() as u32) as usize] as usize
                }
            };
            let be = svc.backends[bi];
            let mut out = f.to_vec();
            if !svc.dsr {
                if o.ttl <= 1 {
                    return pass(f, counter::PASS_TTL);
                }
                icmp_nat(&mut out, o, &q, false, be.ip(), be.port(), Some(false));
            }
            let action = send(&mut out, &self.hops[&be.ip()], ingress);
            return Expect {
                action,
                output: out,
                counter: Some(counter::ICMP_TO_BACKEND),
                service: None,
                flow: Flow::None,
                ping: false,
            };
        }
        // To a NAT backend (client -> backend:port) of a tracked flow.
        let Some(&(si, bi)) = self.nat_sources.get(&(qdst, qdport, proto)) else {
            return refuse(counter::DROP_ICMP_UNKNOWN_FLOW);
        };
        let vip = self.vip_of(si);
        let flow: Key = (qsrc, vip.ip(), qsport, vip.port(), proto);
        let Some(t) = self.conntrack.get(&flow).filter(|t| t.service == si && t.backend == bi) else {
            return refuse(counter::DROP_ICMP_UNKNOWN_FLOW);
        };
        if o.ttl <= 1 {
            return pass(f, counter::PASS_TTL);
        }
        // The outer source too when the backend itself sent the error.
        let outer = (o.src == qdst).then_some(true);
        let mut out = f.to_vec();
        icmp_nat(&mut out, o, &q, true, vip.ip(), vip.port(), outer);
        let action = send(&mut out, &t.reply_hop, ingress);
        Expect {
            action,
            output: out,
            counter: Some(counter::ICMP_TO_CLIENT),
            service: None,
            flow: Flow::None,
            ping: false,
        }
    }

    fn vip_of(&self, si: usize) -> SocketAddr {
        let (&(a, port, _), _) = self.by_vip.iter().find(|(_, &i)| i == si).expect("every service has a VIP");
        SocketAddr::new(a, port)
    }
}

fn pass(f: &[u8], counter: u32) -> Expect {
    Expect {
        action: XDP_PASS,
        output: f.to_vec(),
        counter: Some(counter),
        service: None,
        flow: Flow::None,
        ping: false,
    }
}

fn drop(f: &[u8], counter: u32, service: Option<usize>) -> Expect {
    Expect { action: XDP_DROP, output: f.to_vec(), counter: Some(counter), service, flow: Flow::None, ping: false }
}

fn mac(f: &[u8], at: usize) -> [u8; 6] {
    f[at..at + 6].try_into().unwrap()
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Sources no client can have (the VIPs are checked by the caller).
pub fn martian(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] == 127 || (224..=239).contains(&o[0]) || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_unspecified() || a.is_loopback() || s[0] >> 8 == 0xff || (s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff)
        }
    }
}

/// What the parse step found.
enum Parsed {
    /// Not xlb's: to the kernel untouched.
    Kernel,
    /// Malformed (or impossible) and to a VIP address: dropped with this counter.
    Refused(u32),
    /// ICMP or ICMPv6 with a sound IP header.
    Icmp(Outer),
    Packet(Pkt),
}

/// The IP header of an ICMP or ICMPv6 packet.
struct Outer {
    family: u8,
    l3: usize,
    /// The ICMP header.
    l4: usize,
    /// Where the IP packet ends.
    end: usize,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
}

/// An IPv4/IPv6 TCP/UDP packet to a service port, or from a NAT backend's port.
struct Pkt {
    family: u8,
    l3: usize,
    l4: usize,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    ttl: u8,
    syn: bool,
    /// TCP flags; 0 for UDP.
    flags: u8,
    /// UDP over IPv4 with checksum 0.
    csum_none: bool,
    to_vip_port: bool,
}

impl Pkt {
    fn flow_key(&self) -> FlowKey {
        Pkt::key_of(self.family, self.src, self.dst, self.sport, self.dport, self.proto)
    }

    fn key_of(family: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
        let words = |a: IpAddr| match a {
            IpAddr::V4(a) => lb_common::addr_v4(a.octets()),
            IpAddr::V6(a) => lb_common::addr_v6(a.octets()),
        };
        FlowKey {
            src: words(src),
            dst: words(dst),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

fn addr(f: &[u8], at: usize, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap())
    }
}

/// The parse step, by the rules the README's refusal table states.
fn parse(f: &[u8], m: &Model) -> Parsed {
    let len = f.len();
    if len < 14 {
        return Parsed::Kernel;
    }
    let mut l3 = 14;
    let mut et = be16(f, 12);
    if et == 0x8100 || et == 0x88a8 {
        if len < 18 {
            return Parsed::Kernel;
        }
        et = be16(f, 16);
        l3 = 18;
    }
    // A refusal counts only when the packet is to a VIP address.
    let refuse = |reason: u32, dst: IpAddr| {
        if m.vip_addrs.contains(&dst) {
            Parsed::Refused(reason)
        } else {
            Parsed::Kernel
        }
    };
    let (family, proto, ttl, l4, end, dst_at, src_at) = match et {
        0x0800 => {
            if len < l3 + 20 {
                return Parsed::Kernel;
            }
            let (vihl, tot, frags, ttl, proto) = (f[l3], be16(f, l3 + 2), be16(f, l3 + 6), f[l3 + 8], f[l3 + 9]);
            if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
                return Parsed::Kernel;
            }
            let dst = addr(f, l3 + 16, FAMILY_V4);
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return refuse(counter::DROP_BAD_HEADER, dst);
            }
            if frags & 0x3fff != 0 {
                return refuse(counter::DROP_FRAGMENT, dst);
            }
            if usize::from(tot) < ihl || l3 + usize::from(tot) > len {
                return refuse(counter::DROP_TRUNCATED, dst);
            }
            if proto == PROTO_ICMP {
                let (l4, end, src) = (l3 + ihl, l3 + usize::from(tot), addr(f, l3 + 12, FAMILY_V4));
                return Parsed::Icmp(Outer { family: FAMILY_V4, l3, l4, end, src, dst, ttl });
            }
            (FAMILY_V4, proto, ttl, l3 + ihl, l3 + usize::from(tot), l3 + 16, l3 + 12)
        }
        0x86dd => {
            if len < l3 + 40 {
                return Parsed::Kernel;
            }
            let (version, plen, next, hop) = (f[l3] >> 4, be16(f, l3 + 4), f[l3 + 6], f[l3 + 7]);
            let dst = addr(f, l3 + 24, FAMILY_V6);
            if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
                return match next {
                    44 => refuse(counter::DROP_FRAGMENT, dst),
                    0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 => refuse(counter::DROP_IPV6_EXT, dst),
                    _ => Parsed::Kernel,
                };
            }
            if version != 6 {
                return refuse(counter::DROP_BAD_HEADER, dst);
            }
            let end = l3 + 40 + usize::from(plen);
            if end > len {
                return refuse(counter::DROP_TRUNCATED, dst);
            }
            if next == PROTO_ICMPV6 {
                let src = addr(f, l3 + 8, FAMILY_V6);
                return Parsed::Icmp(Outer { family: FAMILY_V6, l3, l4: l3 + 40, end, src, dst, ttl: hop });
            }
            (FAMILY_V6, next, hop, l3 + 40, end, l3 + 24, l3 + 8)
        }
        _ => return Parsed::Kernel,
    };
    let dst = addr(f, dst_at, family);
    let (flags, csum_none) = if proto == PROTO_TCP {
        if l4 + 20 > len {
            return refuse(counter::DROP_TRUNCATED, dst);
        }
        let header = usize::from(f[l4 + 12] >> 4) * 4;
        if header < 20 {
            return refuse(counter::DROP_BAD_HEADER, dst);
        }
        if l4 + header > end {
            return refuse(counter::DROP_TRUNCATED, dst);
        }
        (Some(f[l4 + 13]), false)
    } else {
        if l4 + 8 > len || l4 + 8 > end {
            return refuse(counter::DROP_TRUNCATED, dst);
        }
        let ulen = usize::from(be16(f, l4 + 4));
        if ulen < 8 {
            return refuse(counter::DROP_BAD_HEADER, dst);
        }
        if l4 + ulen > end {
            return refuse(counter::DROP_TRUNCATED, dst);
        }
        (None, family == FAMILY_V4 && be16(f, l4 + 6) == 0)
    };
    let (sport, dport) = (be16(f, l4), be16(f, l4 + 2));
    let to_vip_port = m.vip_ports.contains(&dport);
    if !to_vip_port && !m.reply_ports.contains(&sport) {
        return Parsed::Kernel;
    }
    let syn = match flags {
        Some(fl) if to_vip_port && !tcp_flags_possible(fl) => return refuse(counter::DROP_BAD_FLAGS, dst),
        // SYN, and none of ACK, FIN, RST.
        Some(fl) => fl & 0x17 == 0x02,
        None => false,
    };
    Parsed::Packet(Pkt {
        family,
        l3,
        l4,
        src: addr(f, src_at, family),
        dst,
        sport,
        dport,
        proto,
        ttl,
        syn,
        flags: flags.unwrap_or(0),
        csum_none,
        to_vip_port,
    })
}

/// Some of FIN, SYN, RST, PSH, ACK, URG set, and SYN never with FIN or RST.
pub fn tcp_flags_possible(flags: u8) -> bool {
    flags & 0x3f != 0 && !(flags & 0x02 != 0 && flags & 0x05 != 0)
}

/// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), over 16-bit words (big-endian).
struct Csum(u64);

impl Csum {
    fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    fn bytes(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks(2).zip(new.chunks(2)) {
            self.word(u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([n[0], n[1]]));
        }
    }

    fn apply(&self, check: u16) -> u16 {
        let mut s = u64::from(!check) + self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// NAT: the destination (`to_backend`) or the source becomes `addr`:`port`,
/// the TTL or hop limit drops by one, checksums are updated incrementally.
fn rewrite(f: &mut [u8], p: &Pkt, to_backend: bool, addr: IpAddr, port: u16) {
    let (l3, l4) = (p.l3, p.l4);
    let (addr_at, port_at) = match (p.family, to_backend) {
        (FAMILY_V4, true) => (l3 + 16, l4 + 2),
        (FAMILY_V4, false) => (l3 + 12, l4),
        (_, true) => (l3 + 24, l4 + 2),
        (_, false) => (l3 + 8, l4),
    };
    let check_at = if p.proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    let new = ip_bytes(addr);
    let old = f[addr_at..addr_at + new.len()].to_vec();
    let mut l4c = Csum(0);
    l4c.word(be16(f, port_at), port);
    l4c.bytes(&old, &new);
    f[addr_at..addr_at + new.len()].copy_from_slice(&new);
    f[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    if p.family == FAMILY_V4 {
        let mut ipc = Csum(0);
        ipc.bytes(&old, &new);
        ipc.word(u16::from_be_bytes([p.ttl, p.proto]), u16::from_be_bytes([p.ttl - 1, p.proto]));
        f[l3 + 8] = p.ttl - 1;
        let c = ipc.apply(be16(f, l3 + 10));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        debug_assert_eq!(p.family, FAMILY_V6);
        f[l3 + 7] = p.ttl - 1;
    }
    if !p.csum_none {
        let mut c = l4c.apply(be16(f, check_at));
        if p.proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        f[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// The packet an ICMP error quotes: its IP header, its TCP/UDP header.
struct Quote {
    l3: usize,
    l4: usize,
    proto: u8,
}

/// An echo reply made of the request in place: type, addresses and MACs
/// swapped, TTL / hop limit 64, checksums updated; sent back (XDP_TX).
fn echo_reply(f: &[u8], o: &Outer) -> Expect {
    let mut out = f.to_vec();
    let (l3, l4) = (o.l3, o.l4);
    let reply = if o.family == FAMILY_V4 { 0 } else { 129 };
    let mut c = Csum(0);
    c.word(be16(f, l4), u16::from_be_bytes([reply, f[l4 + 1]]));
    out[l4] = reply;
    let ck = c.apply(be16(f, l4 + 2));
    out[l4 + 2..l4 + 4].copy_from_slice(&ck.to_be_bytes());
    let (s, d, n) = if o.family == FAMILY_V4 { (l3 + 12, l3 + 16, 4) } else { (l3 + 8, l3 + 24, 16) };
    out[s..s + n].copy_from_slice(&f[d..d + n]);
    out[d..d + n].copy_from_slice(&f[s..s + n]);
    if o.family == FAMILY_V4 {
        let mut c = Csum(0);
        c.word(u16::from_be_bytes([o.ttl, PROTO_ICMP]), u16::from_be_bytes([64, PROTO_ICMP]));
        out[l3 + 8] = 64;
        let ck = c.apply(be16(f, l3 + 10));
        out[l3 + 10..l3 + 12].copy_from_slice(&ck.to_be_bytes());
    } else {
        out[l3 + 7] = 64;
    }
    out[0..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&f[0..6]);
    Expect {
        action: XDP_TX,
        output: out,
        counter: Some(counter::PING_ANSWERED),
        service: None,
        flow: Flow::None,
        ping: true,
    }
}

/// NAT of an ICMP error: the quoted source (`inner_dst == false`) or
/// destination address and port become `addr`:`port`; the outer destination
/// (`outer == Some(false)`) or source (`Some(true)`) becomes `addr`; the TTL or
/// hop limit drops by one. Every checksum that covers a changed word is
/// updated: the outer IPv4 header's, the quoted IPv4 header's, the quoted
/// TCP/UDP checksum when the quote holds it (a zero UDP/IPv4 one stays zero),
/// and the ICMP checksum over all of these (ICMPv6: with its pseudo-header).
fn icmp_nat(f: &mut [u8], o: &Outer, q: &Quote, inner_dst: bool, addr: IpAddr, port: u16, outer: Option<bool>) {
    let v4 = o.family == FAMILY_V4;
    let new = ip_bytes(addr);
    let n = new.len();
    let mut icmp = Csum(0);
    let mut l4c = Csum(0);
    let port_at = q.l4 + if inner_dst { 2 } else { 0 };
    let old_port = be16(f, port_at);
    l4c.word(old_port, port);
    icmp.word(old_port, port);
    f[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    let addr_at = q.l3
        + match (v4, inner_dst) {
            (true, false) => 12,
            (true, true) => 16,
            (false, false) => 8,
            (false, true) => 24,
        };
    let old = f[addr_at..addr_at + n].to_vec();
    l4c.bytes(&old, &new);
    icmp.bytes(&old, &new);
    f[addr_at..addr_at + n].copy_from_slice(&new);
    let outer_at = outer.map(|src| {
        o.l3 + match (v4, src) {
            (true, true) => 12,
            (true, false) => 16,
            (false, true) => 8,
            (false, false) => 24,
        }
    });
    if v4 {
        let mut ic = Csum(0);
        ic.bytes(&old, &new);
        let (old_c, new_c) = (be16(f, q.l3 + 10), ic.apply(be16(f, q.l3 + 10)));
        f[q.l3 + 10..q.l3 + 12].copy_from_slice(&new_c.to_be_bytes());
        icmp.word(old_c, new_c);
        let mut oc = Csum(0);
        if let Some(at) = outer_at {
            let old = f[at..at + n].to_vec();
            oc.bytes(&old, &new);
            f[at..at + n].copy_from_slice(&new);
        }
        oc.word(u16::from_be_bytes([o.ttl, PROTO_ICMP]), u16::from_be_bytes([o.ttl - 1, PROTO_ICMP]));
        f[o.l3 + 8] = o.ttl - 1;
        let c = oc.apply(be16(f, o.l3 + 10));
        f[o.l3 + 10..o.l3 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        if let Some(at) = outer_at {
            // In ICMPv6's pseudo-header.
            let old = f[at..at + n].to_vec();
            icmp.bytes(&old, &new);
            f[at..at + n].copy_from_slice(&new);
        }
        f[o.l3 + 7] = o.ttl - 1;
    }
    let tcp = q.proto == PROTO_TCP;
    let check_at = q.l4 + if tcp { 16 } else { 6 };
    let quoted = !tcp || (q.l4 + 18 <= f.len() && q.l4 + 18 <= o.end);
    if quoted {
        let old = be16(f, check_at);
        if tcp || old != 0 || !v4 {
            let mut c = l4c.apply(old);
            if !tcp && c == 0 {
                c = 0xffff;
            }
            f[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
            icmp.word(old, c);
        }
    }
    let c = icmp.apply(be16(f, o.l4 + 2));
    f[o.l4 + 2..o.l4 + 4].copy_from_slice(&c.to_be_bytes());
}

/// The next hop's MACs; XDP_TX out of the ingress interface, else XDP_REDIRECT.
fn send(f: &mut [u8], hop: &Hop, ingress: u32) -> u32 {
    f[0..6].copy_from_slice(&hop.dmac);
    f[6..12].copy_from_slice(&hop.smac);
    if hop.ifindex == ingress {
        XDP_TX
    } else {
        XDP_REDIRECT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn martians() {
        for a in ["0.0.0.0", "0.9.9.9", "127.0.0.1", "224.0.0.1", "239.255.255.255", "255.255.255.255", "::", "::1"] {
            assert!(martian(a.parse().unwrap()), "{a}");
        }
        for a in ["ff02::1", "ff0e::1", "::ffff:198.18.0.1"] {
            assert!(martian(a.parse().unwrap()), "{a}");
        }
        for a in ["198.18.0.1", "240.0.0.1", "255.255.255.254", "2001:db8::1", "::2", "::fffe:0:1", "fe80::1"] {
            assert!(!martian(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn flags() {
        for ok in [0x02, 0x10, 0x12, 0x11, 0x04, 0x14, 0x18, 0x01, 0x20, 0xc2] {
            assert!(tcp_flags_possible(ok), "{ok:#04x}");
        }
        for bad in [0x00, 0xc0, 0x03, 0x06, 0x07, 0x13, 0x3f, 0xff] {
            assert!(!tcp_flags_possible(bad), "{bad:#04x}");
        }
    }

    #[test]
    fn incremental_checksum_matches_a_full_one() {
        // A header whose checksum is right stays right after a word changes.
        let mut h = [0x45u8, 0, 0, 40, 0x12, 0x34, 0, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 10];
        let c = crate::packet::checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut d = Csum(0);
        d.bytes(&h[16..20], &[198, 18, 1, 11]);
        h[16..20].copy_from_slice(&[198, 18, 1, 11]);
        let c = d.apply(be16(&h, 10));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(crate::packet::checksum(&[&h]), 0);
    }
}
