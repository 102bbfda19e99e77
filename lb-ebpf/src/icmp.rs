//! ICMP for VIP flows (a child of `xdp`): the program `xlb_icmp`, which `xlb` tail-calls
//! for ICMP and ICMPv6 (its `Parse::Icmp` arm), so that the TCP/UDP path carries none of
//! this code and its stack adds nothing to `xlb`'s.
//!
//! - Echo requests to a VIP address whose services all have `answer_ping` are answered
//!   here (XDP_TX), at most `PING_RATE_PER_CPU` a second per CPU (token bucket of depth
//!   `PING_BURST`); beyond that they are dropped (`ping_rate_limited`).
//! - An error whose quoted packet comes from a service (VIP:port -> client: a reply of a
//!   flow, sent by a DSR backend or rewritten by xlb in NAT mode) and that is a
//!   fragmentation needed (ICMPv4 3/4) or packet too big (ICMPv6 2) goes to the flow's
//!   backend: its conntrack entry while usable, else the Maglev pick (nothing tracked).
//!   DSR: only the MACs change. NAT: the outer destination and the quoted source become
//!   the backend's address (and port), with the checksums.
//! - An error whose quoted packet went to a NAT backend (client -> backend:port) of a
//!   tracked flow (any error: port unreachable from a UDP backend, a router's frag
//!   needed between lb and backend) goes back to the client with the quoted destination
//!   rewritten to VIP:port, and the outer source too when it is the backend's address.
//! - Checksums: outer IPv4 header, ICMP (ICMPv6 with its pseudo-header), quoted IPv4
//!   header, and the quoted TCP/UDP checksum when the quote holds it (UDP: always, in
//!   its first 8 bytes; TCP: when 18 bytes of it are quoted; a zero UDP/IPv4 checksum
//!   stays zero), all updated incrementally (RFC 1624) so that a truncated quote stays
//!   consistent.
//! - To a VIP address and not handled: a quote too short for its IP header and ports
//!   (`icmp_truncated`), a quoted non-first fragment or IPv6 extension header
//!   (`icmp_fragment`), a quoted flow of no service or without a usable backend
//!   (`icmp_unknown_flow`) are dropped; any other ICMP (echo with `answer_ping = false`,
//!   errors other than frag-needed about a VIP's reply, other types) is the kernel's
//!   (`PASS_ICMP`). Not to a VIP address and not about a tracked NAT flow: the kernel's,
//!   untouched (`not_vip`).

use core::mem::offset_of;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_ns, macros::map, maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{
    counter, flow_hash, Backend, FlowKey, TokenBucket, VipAddrKey, VipKey, BACKEND_F_UP, FAMILY_V4, FAMILY_V6,
    NO_BACKEND, PING_BURST, PING_RATE_PER_CPU, PROTO_TCP, PROTO_UDP, SERVICE_F_DSR, SERVICE_F_ENCAP, VIP_ADDR_F_PING,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use super::{
    copy16, get16, get8, nat_reply, next_hop, port_listed, ptr_at, put16, put32, put8, send, tracked_backend,
    udp_check, Action, Decision, Flow, NextHop, Pass, Reason, BACKENDS, L4_DPORT, L4_SPORT, NOT_KNOWN, RING, SERVICES,
    VIP_ADDRS, VIP_PORTS,
};
use crate::csum;

/// Echo-reply token bucket, one per CPU.
#[map]
static PING_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;
/// Code of ICMP_DEST_UNREACH: fragmentation needed and DF set.
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_PARAM_PROB: u8 = 4;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// ICMP header: type, code, checksum, then 4 bytes (unused / MTU / echo id and sequence).
const ICMP_HDR_LEN: usize = 8;
const ICMP_CHECK: usize = 2;
/// TCP checksum offset; a UDP header's is 6.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
/// TTL / hop limit of an echo reply.
const REPLY_TTL: u8 = 64;
const NS_PER_TOKEN: u64 = 1_000_000_000 / PING_RATE_PER_CPU;
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// An ICMP or ICMPv6 packet with a sound outer IP header (checked by `parse_v4` /
/// `parse_v6`): plain values, so that nothing refers to the packet across the call.
pub(super) struct IcmpAt {
    l3: usize,
    /// The ICMP header.
    l4: usize,
    /// Where the IP packet ends.
    end: usize,
    ttl: u8,
    family: u8,
    proto: u8,
    /// Outer addresses and protocol; no ports.
    pub(super) key: FlowKey,
}

impl IcmpAt {
    /// Reads again what `parse` found (`Parse::Icmp`), in `xlb_icmp`: Ethernet, one
    /// VLAN tag, the IPv4 (with its IHL) or IPv6 header of an ICMP packet.
    #[inline(always)]
    pub(super) fn read(&mut self, ctx: &XdpContext) -> bool {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return false;
        };
        let mut l3 = EthHdr::LEN;
        // SAFETY: ptr_at checked the Ethernet header.
        let mut ether_type = u16::from_be(unsafe { get16(eth, offset_of!(EthHdr, ether_type)) });
        if ether_type == super::ETH_P_8021Q || ether_type == super::ETH_P_8021AD {
            let Some(tag) = ptr_at::<[u16; 2]>(ctx, EthHdr::LEN) else {
                return false;
            };
            // SAFETY: ptr_at checked the tag.
            ether_type = u16::from_be(unsafe { get16(tag, 2) });
            l3 += super::VLAN_LEN;
        }
        self.l3 = l3;
        self.key = FlowKey::default();
        if ether_type == super::ETH_P_IP {
            let Some(h) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
                return false;
            };
            // SAFETY: ptr_at checked the header; the key's words are 4-aligned.
            let (vihl, len) = unsafe {
                copy16(self.key.src.as_mut_ptr().cast(), h.add(offset_of!(Ipv4Hdr, src_addr)), 2);
                copy16(self.key.dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv4Hdr, dst_addr)), 2);
                self.ttl = get8(h, offset_of!(Ipv4Hdr, ttl));
                self.proto = get8(h, offset_of!(Ipv4Hdr, proto));
                (get8(h, offset_of!(Ipv4Hdr, vihl)), u16::from_be(get16(h, offset_of!(Ipv4Hdr, tot_len))))
            };
            self.family = FAMILY_V4;
            self.l4 = l3 + (((vihl & 0x0f) as usize) << 2);
            self.end = l3 + len as usize;
        } else if ether_type == super::ETH_P_IPV6 {
            let Some(h) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
                return false;
            };
            // SAFETY: ptr_at checked the header; the key's words are 4-aligned.
            let len = unsafe {
                copy16(self.key.src.as_mut_ptr().cast(), h.add(offset_of!(Ipv6Hdr, src_addr)), 8);
                copy16(self.key.dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv6Hdr, dst_addr)), 8);
                self.ttl = get8(h, offset_of!(Ipv6Hdr, hop_limit));
                self.proto = get8(h, offset_of!(Ipv6Hdr, next_hdr));
                u16::from_be(get16(h, offset_of!(Ipv6Hdr, payload_len)))
            };
            self.family = FAMILY_V6;
            self.l4 = l3 + Ipv6Hdr::LEN;
            self.end = self.l4 + len as usize;
        } else {
            return false;
        }
        self.key.proto = self.proto;
        self.key.family = self.family;
        true
    }
}

/// Per-CPU working memory of `xlb_icmp`: the outer packet and the quoted one live here,
/// not on the stack, which the program's frame, its call and the trace's share.
pub(super) struct Scratch {
    pub(super) at: IcmpAt,
    q: Quoted,
}

#[map]
static ICMP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's `Scratch`.
#[inline(always)]
pub(super) fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU slot: only this CPU uses it while the program runs.
    ICMP_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// ICMP or ICMPv6 with a sound outer IP header (checked by `parse_v4` / `parse_v6`).
#[inline(never)]
pub(super) fn handle(ctx: &XdpContext, s: &mut Scratch) -> Decision {
    let ip = &s.at;
    // The ICMP header must lie within the IP packet (its length, not the frame's:
    // a frame may carry Ethernet padding after it).
    let Some(h) = ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, ip.l4).filter(|_| ip.l4 + ICMP_HDR_LEN <= ip.end) else {
        return decided(NOT_KNOWN, not_handled(ip), NOT_KNOWN);
    };
    // SAFETY: ptr_at checked the 8-byte ICMP header.
    let (ty, code) = unsafe { (get8(h, 0), get8(h, 1)) };
    let v4 = ip.family == FAMILY_V4;
    if (v4 && ty == ICMP_ECHO) || (!v4 && ty == ICMP6_ECHO_REQUEST) {
        return ping(ctx, ip, h);
    }
    let error = if v4 {
        ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETER_PROB
    } else {
        (ICMP6_DEST_UNREACH..=ICMP6_PARAM_PROB).contains(&ty)
    };
    if !error {
        return decided(NOT_KNOWN, not_handled(ip), NOT_KNOWN);
    }
    let too_big = if v4 { ty == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED } else { ty == ICMP6_PACKET_TOO_BIG };
    error_about_flow(ctx, &s.at, &mut s.q, too_big)
}

/// The decision for an ICMP packet: counted in `sent` when sent on.
#[inline(always)]
fn decided(backend: u32, outcome: Result<Action, Reason>, sent: u32) -> Decision {
    let (action, counter) = match outcome {
        Ok(Action::Send(a)) => (a, sent),
        Ok(Action::Pass(why)) => (xdp_action::XDP_PASS, why as u32),
        Err(reason) => (xdp_action::XDP_DROP, reason as u32),
    };
    // ICMP that is not xlb's (the host's own pings, errors about its connections) is
    // counted, not traced.
    let flow = if counter == Pass::NotVip as u32 { Flow::None } else { Flow::Icmp };
    Decision { flow, service: NOT_KNOWN, backend, action, counter }
}

/// Whether the outer destination is a VIP address, and its `VIP_ADDRS` flags.
#[inline(always)]
fn vip_addr(ip: &IcmpAt) -> Option<u32> {
    let key = ip.key;
    let addr = VipAddrKey { addr: key.dst, family: key.family, _pad: [0; 3] };
    // SAFETY: a plain value read once.
    unsafe { VIP_ADDRS.get(addr) }.copied()
}

/// ICMP xlb does not handle: the kernel's (counted as ICMP to a VIP address, or not a VIP's).
#[inline(always)]
fn not_handled(ip: &IcmpAt) -> Result<Action, Reason> {
    Ok(Action::Pass(if vip_addr(ip).is_some() { Pass::Icmp } else { Pass::NotVip }))
}

/// Refused when to a VIP address; else the kernel's.
#[inline(always)]
fn refuse(ip: &IcmpAt, reason: Reason) -> Result<Action, Reason> {
    if vip_addr(ip).is_some() {
        Err(reason)
    } else {
        Ok(Action::Pass(Pass::NotVip))
    }
}

// ---------------------------------------------------------------- echo

/// An echo request to a VIP address: answered in place (addresses and MACs swapped,
/// type to reply, TTL 64) while the address answers pings and the CPU has a token.
#[inline(always)]
fn ping(ctx: &XdpContext, ip: &IcmpAt, h: *mut u8) -> Decision {
    let Some(flags) = vip_addr(ip) else {
        return decided(NOT_KNOWN, Ok(Action::Pass(Pass::NotVip)), NOT_KNOWN);
    };
    if flags & VIP_ADDR_F_PING == 0 {
        return decided(NOT_KNOWN, Ok(Action::Pass(Pass::Icmp)), NOT_KNOWN);
    }
    if !take_token() {
        return decided(NOT_KNOWN, Err(Reason::PingRateLimited), NOT_KNOWN);
    }
    decided(NOT_KNOWN, echo_reply(ctx, ip, h), counter::PING_ANSWERED)
}

/// One token from this CPU's bucket, refilled at `PING_RATE_PER_CPU` up to `PING_BURST`.
#[inline(always)]
fn take_token() -> bool {
    let Some(b) = PING_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot: only this CPU touches it while the program runs.
    unsafe {
        let elapsed = now.wrapping_sub((*b).last_ns);
        if elapsed >= NS_PER_TOKEN {
            let add = elapsed / NS_PER_TOKEN;
            let tokens = (*b).tokens + add;
            if tokens >= PING_BURST {
                (*b).tokens = PING_BURST;
                (*b).last_ns = now;
            } else {
                (*b).tokens = tokens;
                (*b).last_ns += add * NS_PER_TOKEN;
            }
        }
        if (*b).tokens == 0 {
            return false;
        }
        (*b).tokens -= 1;
    }
    true
}

#[inline(always)]
fn echo_reply(ctx: &XdpContext, ip: &IcmpAt, h: *mut u8) -> Result<Action, Reason> {
    let key = ip.key;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Truncated)?;
    let v4 = ip.family == FAMILY_V4;
    let (request, reply) = if v4 { (ICMP_ECHO, ICMP_ECHO_REPLY) } else { (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) };
    let mut icmp_d = csum::Delta::default();
    // SAFETY: ptr_at checked the Ethernet, IP (in `parse_*`, again here) and ICMP headers.
    unsafe {
        let code = get8(h, 1);
        icmp_d.u16(u16::from_ne_bytes([request, code]), u16::from_ne_bytes([reply, code]));
        put8(h, 0, reply);
        put16(h, ICMP_CHECK, icmp_d.apply(get16(h, ICMP_CHECK)));
        if v4 {
            let o = ptr_at::<Ipv4Hdr>(ctx, ip.l3).ok_or(Reason::Truncated)?;
            // Swapping the addresses leaves the header's sum (and ICMP has no pseudo-header).
            copy16(o.add(offset_of!(Ipv4Hdr, src_addr)), key.dst.as_ptr().cast(), 2);
            copy16(o.add(offset_of!(Ipv4Hdr, dst_addr)), key.src.as_ptr().cast(), 2);
            let mut d = csum::Delta::default();
            d.u16(u16::from_ne_bytes([ip.ttl, ip.proto]), u16::from_ne_bytes([REPLY_TTL, ip.proto]));
            put8(o, offset_of!(Ipv4Hdr, ttl), REPLY_TTL);
            let c = offset_of!(Ipv4Hdr, check);
            put16(o, c, d.apply(get16(o, c)));
        } else {
            let o = ptr_at::<Ipv6Hdr>(ctx, ip.l3).ok_or(Reason::Truncated)?;
            // The pseudo-header's sum does not change when the addresses swap.
            copy16(o.add(offset_of!(Ipv6Hdr, src_addr)), key.dst.as_ptr().cast(), 8);
            copy16(o.add(offset_of!(Ipv6Hdr, dst_addr)), key.src.as_ptr().cast(), 8);
            put8(o, offset_of!(Ipv6Hdr, hop_limit), REPLY_TTL);
        }
        let mut mac = [0u16; 3];
        super::copy_mac(mac.as_mut_ptr().cast(), eth.add(offset_of!(EthHdr, dst_addr)));
        super::copy_mac(eth.add(offset_of!(EthHdr, dst_addr)), eth.add(offset_of!(EthHdr, src_addr)));
        super::copy_mac(eth.add(offset_of!(EthHdr, src_addr)), mac.as_ptr().cast());
    }
    Ok(Action::Send(xdp_action::XDP_TX))
}

// ---------------------------------------------------------------- errors

/// The packet an ICMP error quotes: its IP header and TCP/UDP ports.
struct Quoted {
    l3: usize,
    l4: usize,
    key: FlowKey,
}

#[inline(always)]
fn error_about_flow(ctx: &XdpContext, ip: &IcmpAt, q: &mut Quoted, too_big: bool) -> Decision {
    match quoted(ctx, ip, q) {
        Ok(true) => {}
        Ok(false) => return decided(NOT_KNOWN, not_handled(ip), NOT_KNOWN),
        Err(reason) => return decided(NOT_KNOWN, refuse(ip, reason), NOT_KNOWN),
    }
    let q = &*q;
    let outer = &ip.key;
    // `k` is the quoted packet's flow turned around. An error goes to the source of
    // the packet it quotes.
    let k = &q.key;
    if outer.dst != k.dst {
        return decided(NOT_KNOWN, not_handled(ip), NOT_KNOWN);
    }
    // The reply of a VIP flow (VIP:port -> client): `k` is the flow, client -> VIP:port.
    if port_listed(&VIP_PORTS, k.dport) {
        let vip = VipKey { addr: k.dst, port: k.dport, proto: k.proto, family: k.family };
        // SAFETY: services are replaced whole by the daemon; read once.
        if let Some(svc) = unsafe { SERVICES.get(vip) } {
            // ipip / gue: the backend is L3 away and would need the error
            // encapsulated: left to the kernel (backends advertise a lower MSS).
            if !too_big || svc.flags & SERVICE_F_ENCAP != 0 {
                return decided(NOT_KNOWN, not_handled(ip), NOT_KNOWN);
            }
            let Some((idx, be)) = flow_backend(k, svc.ring_offset, svc.table_size) else {
                return decided(NOT_KNOWN, refuse(ip, Reason::IcmpUnknownFlow), NOT_KNOWN);
            };
            let out = if svc.flags & SERVICE_F_DSR != 0 {
                to_host(ctx, &be.next_hop)
            } else {
                let rw = Rewrite {
                    outer_dst: true,
                    outer_new: &be.addr,
                    inner_port_off: L4_SPORT,
                    inner_old: &k.dst,
                    inner_new: &be.addr,
                    old_port: k.dport,
                    new_port: be.port,
                };
                rewrite_and_send(ctx, ip, outer, q, &rw, &be.next_hop)
            };
            return decided(idx, out, counter::ICMP_TO_BACKEND);
        }
    }
    // To a NAT backend (client -> backend:port): `k` is the backend's reply,
    // backend:port -> client, which `nat_reply` knows when the flow is tracked.
    let Some((vip, vip_port, hop, backend)) = nat_reply(k, 0) else {
        return decided(NOT_KNOWN, refuse(ip, Reason::IcmpUnknownFlow), NOT_KNOWN);
    };
    let rw = Rewrite {
        outer_dst: false,
        outer_new: &vip,
        inner_port_off: L4_DPORT,
        inner_old: &k.src,
        inner_new: &vip,
        old_port: k.sport,
        new_port: vip_port,
    };
    decided(backend, rewrite_and_send(ctx, ip, outer, q, &rw, &hop), counter::ICMP_TO_CLIENT)
}

/// The quoted IP header and ports, its key turned around (source <-> destination) so
/// that it reads as the flow's key or its reply's. `Ok(false)`: not TCP/UDP.
#[inline(always)]
fn quoted(ctx: &XdpContext, ip: &IcmpAt, q: &mut Quoted) -> Result<bool, Reason> {
    let l3 = ip.l4 + ICMP_HDR_LEN;
    q.key = FlowKey { family: ip.family, ..FlowKey::default() };
    let key = &mut q.key;
    let l4 = if ip.family == FAMILY_V4 {
        let h = ptr_at::<Ipv4Hdr>(ctx, l3).filter(|_| l3 + Ipv4Hdr::LEN <= ip.end).ok_or(Reason::IcmpTruncated)?;
        // SAFETY: ptr_at checked the 20-byte header.
        let (vihl, frags, proto) = unsafe {
            (
                get8(h, offset_of!(Ipv4Hdr, vihl)),
                u16::from_be(get16(h, offset_of!(Ipv4Hdr, frags))),
                get8(h, offset_of!(Ipv4Hdr, proto)),
            )
        };
        let ihl = ((vihl & 0x0f) as usize) << 2;
        if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
            return Err(Reason::IcmpTruncated);
        }
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Ok(false);
        }
        // A first fragment (offset 0) still has its ports.
        if frags & IPV4_FRAG_OFFSET != 0 {
            return Err(Reason::IcmpFragment);
        }
        key.proto = proto;
        // SAFETY: ptr_at checked the header; the key's words are 4-aligned.
        unsafe {
            copy16(key.dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv4Hdr, src_addr)), 2);
            copy16(key.src.as_mut_ptr().cast(), h.add(offset_of!(Ipv4Hdr, dst_addr)), 2);
        }
        l3 + ihl
    } else {
        let h = ptr_at::<Ipv6Hdr>(ctx, l3).filter(|_| l3 + Ipv6Hdr::LEN <= ip.end).ok_or(Reason::IcmpTruncated)?;
        // SAFETY: ptr_at checked the 40-byte header.
        let next = unsafe { get8(h, offset_of!(Ipv6Hdr, next_hdr)) };
        if next != PROTO_TCP && next != PROTO_UDP {
            use super::next_header::*;
            return match next {
                HOP_BY_HOP | ROUTING | FRAGMENT | DEST_OPTIONS => Err(Reason::IcmpFragment),
                _ => Ok(false),
            };
        }
        key.proto = next;
        // SAFETY: ptr_at checked the header; the key's words are 4-aligned.
        unsafe {
            copy16(key.dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv6Hdr, src_addr)), 8);
            copy16(key.src.as_mut_ptr().cast(), h.add(offset_of!(Ipv6Hdr, dst_addr)), 8);
        }
        l3 + Ipv6Hdr::LEN
    };
    let ports = ptr_at::<[u16; 4]>(ctx, l4).ok_or(Reason::IcmpTruncated)?;
    if l4 + 8 > ip.end {
        return Err(Reason::IcmpTruncated);
    }
    // SAFETY: ptr_at checked the 8 bytes.
    unsafe {
        key.dport = get16(ports, L4_SPORT);
        key.sport = get16(ports, L4_DPORT);
    }
    q.l3 = l3;
    q.l4 = l4;
    Ok(true)
}

/// The backend of flow `k` (client -> VIP): its conntrack entry while usable, else the
/// Maglev pick, which is not tracked (an error does not open a flow).
#[inline(always)]
fn flow_backend(k: &FlowKey, ring_offset: u32, table_size: u32) -> Option<(u32, &'static Backend)> {
    if let Some(st) = super::ct_lookup(k) {
        // SAFETY: a live map value, read once, as in `classify`.
        if let Some((idx, be, _)) = tracked_backend(unsafe { &*st }) {
            return Some((idx, be));
        }
    }
    if table_size == 0 {
        return None;
    }
    let idx = *RING.get(ring_offset + flow_hash(k) % table_size)?;
    if idx == NO_BACKEND {
        return None;
    }
    let be = BACKENDS.get(idx)?;
    if be.flags & BACKEND_F_UP == 0 {
        return None;
    }
    Some((idx, be))
}

/// DSR: the packet unchanged, to the backend's MAC (it holds the VIP). Without a
/// resolved next hop (the daemon resolves backends' within seconds of start) the
/// kernel gets it, untouched (`no_route`): the FIB is not asked, to keep this path's
/// stack within what the program's frame leaves.
#[inline(always)]
fn to_host(ctx: &XdpContext, hop: &NextHop) -> Result<Action, Reason> {
    match next_hop(hop) {
        Some(hop) => send(ctx, hop),
        None => Ok(Action::Pass(Pass::NoRoute)),
    }
}

/// NAT of an ICMP error: the quoted address and port (`inner_old` -> `inner_new`, port at
/// `inner_port_off`), and the outer destination (`outer_dst`) or, when it is the
/// quoted destination, the outer source, become `outer_new`.
struct Rewrite<'a> {
    outer_dst: bool,
    outer_new: &'a [u32; 4],
    inner_port_off: usize,
    inner_old: &'a [u32; 4],
    inner_new: &'a [u32; 4],
    old_port: u16,
    new_port: u16,
}

/// Rewrites as `rw` says, decrements the TTL, and sends to `hop`. Without a next hop
/// (see `to_host`), or with a TTL that would expire: the kernel's, as it came.
#[inline(always)]
fn rewrite_and_send(
    ctx: &XdpContext,
    ip: &IcmpAt,
    outer: &FlowKey,
    q: &Quoted,
    rw: &Rewrite,
    hop: &NextHop,
) -> Result<Action, Reason> {
    if ip.ttl <= 1 {
        return Ok(Action::Pass(Pass::TtlExpired));
    }
    // The outer address that changes: the destination, or the source when the error
    // comes from the backend itself (so the client never sees a backend's address); a
    // router's address stays.
    let change = if rw.outer_dst {
        Some((&outer.dst, false))
    } else if outer.src == *rw.inner_old {
        Some((&outer.src, true))
    } else {
        None
    };
    let Some(hop) = next_hop(hop) else {
        return Ok(Action::Pass(Pass::NoRoute));
    };
    rewrite(ctx, ip, q, rw, change)?;
    send(ctx, hop)
}

#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    ip: &IcmpAt,
    q: &Quoted,
    rw: &Rewrite,
    change: Option<(&[u32; 4], bool)>,
) -> Result<(), Reason> {
    let h = ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, ip.l4).ok_or(Reason::Truncated)?;
    let l4 = ptr_at::<[u16; 4]>(ctx, q.l4).ok_or(Reason::Truncated)?;
    let tcp = q.key.proto == PROTO_TCP;
    // The quoted L4 checksum, when quoted: UDP's lies in the 8 bytes, TCP's after them.
    let l4_check =
        if tcp { ptr_at::<[u16; 9]>(ctx, q.l4).filter(|_| q.l4 + TCP_CHECK + 2 <= ip.end) } else { Some(l4) };
    let check_off = if tcp { TCP_CHECK } else { UDP_CHECK };
    let mut icmp_d = csum::Delta::default();
    let mut l4_d = csum::Delta::default();
    l4_d.u16(rw.old_port, rw.new_port);
    icmp_d.u16(rw.old_port, rw.new_port);
    let inner_dst = rw.inner_port_off == L4_DPORT;
    // SAFETY: ptr_at checked every header written; offsets are constants within them.
    unsafe {
        put16(l4, rw.inner_port_off, rw.new_port);
        if ip.family == FAMILY_V4 {
            let o = ptr_at::<Ipv4Hdr>(ctx, ip.l3).ok_or(Reason::Truncated)?;
            let i = ptr_at::<Ipv4Hdr>(ctx, q.l3).ok_or(Reason::Truncated)?;
            let mut i_d = csum::Delta::default();
            i_d.u32(rw.inner_old[0], rw.inner_new[0]);
            l4_d.u32(rw.inner_old[0], rw.inner_new[0]);
            icmp_d.u32(rw.inner_old[0], rw.inner_new[0]);
            let a = if inner_dst { offset_of!(Ipv4Hdr, dst_addr) } else { offset_of!(Ipv4Hdr, src_addr) };
            put32(i, a, rw.inner_new[0]);
            let c = offset_of!(Ipv4Hdr, check);
            let (old, new) = (get16(i, c), i_d.apply(get16(i, c)));
            put16(i, c, new);
            icmp_d.u16(old, new);
            // Outer IPv4: address and TTL; ICMPv4 has no pseudo-header.
            let mut o_d = csum::Delta::default();
            if let Some((old, src)) = change {
                o_d.u32(old[0], rw.outer_new[0]);
                let a = if src { offset_of!(Ipv4Hdr, src_addr) } else { offset_of!(Ipv4Hdr, dst_addr) };
                put32(o, a, rw.outer_new[0]);
            }
            let t = ip.ttl;
            o_d.u16(u16::from_ne_bytes([t, ip.proto]), u16::from_ne_bytes([t - 1, ip.proto]));
            put8(o, offset_of!(Ipv4Hdr, ttl), t - 1);
            put16(o, c, o_d.apply(get16(o, c)));
        } else {
            let o = ptr_at::<Ipv6Hdr>(ctx, ip.l3).ok_or(Reason::Truncated)?;
            let i = ptr_at::<Ipv6Hdr>(ctx, q.l3).ok_or(Reason::Truncated)?;
            l4_d.addr6(rw.inner_old, rw.inner_new);
            icmp_d.addr6(rw.inner_old, rw.inner_new);
            let a = if inner_dst { offset_of!(Ipv6Hdr, dst_addr) } else { offset_of!(Ipv6Hdr, src_addr) };
            copy16(i.add(a), rw.inner_new.as_ptr().cast(), 8);
            // The outer address is in ICMPv6's pseudo-header.
            if let Some((old, src)) = change {
                icmp_d.addr6(old, rw.outer_new);
                let a = if src { offset_of!(Ipv6Hdr, src_addr) } else { offset_of!(Ipv6Hdr, dst_addr) };
                copy16(o.add(a), rw.outer_new.as_ptr().cast(), 8);
            }
            put8(o, offset_of!(Ipv6Hdr, hop_limit), ip.ttl - 1);
        }
        if let Some(l) = l4_check {
            let old = get16(l.cast_const(), check_off);
            // A zero UDP checksum over IPv4 means none: it stays zero.
            if tcp || old != 0 || ip.family != FAMILY_V4 {
                let new = udp_check(l4_d.apply(old), !tcp);
                put16(l, check_off, new);
                icmp_d.u16(old, new);
            }
        }
        put16(h, ICMP_CHECK, icmp_d.apply(get16(h, ICMP_CHECK)));
    }
    Ok(())
}
