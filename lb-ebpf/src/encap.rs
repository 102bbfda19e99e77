//! Forwarding across L3: `forwarding = "ipip"` and `"gue"` (Katran's layout).
//!
//! The packet as it came (its IP header on) goes inside a new outer IP header
//! (IPv4 in IPv4, IPv6 in IPv6), for GUE also a UDP header (GUE variant 1: the
//! inner IP header right after UDP, no GUE header; the first nibble of the
//! payload, 4 or 6, says what it carries, which is also what Linux's plain `fou`
//! with `ipproto 4`/`41` expects). The backend strips it (`xlb decap`, or the
//! kernel's ipip / ip6tnl / fou devices) and answers the client directly, as
//! with DSR: the inner packet is not changed, not even its TTL.
//!
//! - outer source: `ENCAP_SOURCES` prefix | (flow hash & host bits), so that
//!   one flow keeps one source and a backend's flows spread over its receive
//!   queues; IPv6 also puts 20 hash bits in the flow label;
//! - outer destination: the backend's address;
//! - TTL / hop limit 64; IPv4: DF set, ID 0 (RFC 6864: atomic datagrams), the
//!   inner TOS byte copied; IPv6: the inner traffic class copied;
//! - GUE: UDP source port 0xc000 | 14 hash bits (RFC 6335's dynamic range),
//!   destination port `SETTINGS[SETTING_GUE_PORT]`; UDP checksum 0 over IPv4
//!   (RFC 768), computed over IPv6 (RFC 8200 forbids 0 unless the receiver
//!   opted in, which Linux's fou does not by default): the sum over the inner
//!   packet is known from its headers alone, because its own TCP/UDP checksum
//!   makes its segment sum to the complement of its pseudo-header (Linux's
//!   "local checksum offload" reasoning): the addresses cancel.
//! - The next hop is the backend's as the daemon resolved it; until then the
//!   kernel forwards the encapsulated packet (and resolves the neighbour).
//! - A packet that would exceed the egress MTU with its outer headers is
//!   dropped and counted (`ENCAP_TOO_BIG`); backends advertise a lower MSS.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_check_mtu,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    encap_overhead, flow_hash, Backend, EncapSource, ENCAP_SOURCE_V4, ENCAP_SOURCE_V6, ENCAP_TTL, FAMILY_V4, PROTO_UDP,
    SETTING_GUE_PORT,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use super::{
    copy16, get16, next_hop, ptr_at, put16, put32, put8, record, send, udp_check, Action, Decision, Flow, Packet,
    Parse, Pass, Reason, BACKENDS, ETH_P_IP, ETH_P_IPV6, SETTINGS,
};
use crate::csum;

/// Outer source prefixes: `ENCAP_SOURCE_V4` and `ENCAP_SOURCE_V6`.
#[map]
static ENCAP_SOURCES: Array<EncapSource> = Array::with_max_entries(2, 0);

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// IPv4 flags and fragment offset word: DF only.
const IPV4_DF: u16 = 0x4000;
/// GUE source ports: RFC 6335's dynamic range, the low 14 bits from the flow hash.
const GUE_SPORT_BASE: u16 = 0xc000;
const GUE_SPORT_HASH: u16 = 0x3fff;
/// Every IPv6 link carries 1280 bytes (RFC 8200, 5), and so do the IPv4 links
/// an lb forwards over: a packet no bigger after encapsulation is not checked
/// against the egress MTU (the check is a helper call).
const MIN_LINK_MTU: usize = 1280;
/// Offsets in the encapsulated frame: Ethernet, then the outer IP header.
const OUTER_L3: usize = EthHdr::LEN;
const OUTER_UDP_V4: usize = OUTER_L3 + 20;
const OUTER_UDP_V6: usize = OUTER_L3 + 40;
const UDP_LEN: usize = 8;

/// The value a 16-bit word has in memory when its bytes are `v` in network order.
#[inline(always)]
fn be16(v: u16) -> u64 {
    v.to_be() as u64
}

/// `xlb_encap` at index 0, put there by the loader: the encapsulation runs in a
/// program of its own (a tail call), whose stack does not add to `xlb`'s.
#[map]
static ENCAP_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What `xlb` decided about the packet, for `xlb_encap` (one per CPU: a CPU
/// runs one packet at a time, from `xlb` into the tail call).
#[derive(Clone, Copy)]
pub(super) struct Handoff {
    pkt: Packet,
    flow: Flow,
    gue: bool,
    service: u32,
    backend: u32,
}

#[map]
static ENCAP_HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// From `xlb`'s `send_to_backend`: hands the packet to `xlb_encap`. Returns
/// only when that cannot be done (no `xlb_encap` in `ENCAP_PROG`): dropped.
#[inline(always)]
pub(super) fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: Flow,
    service: u32,
    backend: u32,
    gue: bool,
) -> Decision {
    if let Some(h) = ENCAP_HANDOFF.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot: only this CPU uses it, from here into the tail call.
        unsafe { *h = Handoff { pkt: *pkt, flow, gue, service, backend } };
        // SAFETY: a tail call with this program's own context; it returns only when
        // the slot is empty.
        unsafe { ENCAP_PROG.tail_call(ctx, 0) };
    }
    core::hint::cold_path();
    Decision::new(flow, service, backend, Err(Reason::EncapNoSource))
}

/// The encapsulation, tail-called from `xlb` for ipip and gue services: encap,
/// send, record (counters and trace) as `xlb` would have.
#[xdp]
pub fn xlb_encap(ctx: XdpContext) -> u32 {
    let Some(h) = ENCAP_HANDOFF.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let h = *h;
    let outcome = match BACKENDS.get(h.backend) {
        Some(be) => encap(&ctx, &h.pkt, be, h.gue),
        None => Err(Reason::NoBackend),
    };
    let decision = Decision::new(h.flow, h.service, h.backend, outcome);
    record(&ctx, &Parse::Vip(h.pkt), &decision)
}

/// Encapsulates `pkt` for backend `be` and sends it on (see the module's story).
#[inline(always)]
fn encap(ctx: &XdpContext, pkt: &Packet, be: &Backend, gue: bool) -> Result<Action, Reason> {
    let v4 = pkt.key.family == FAMILY_V4;
    let Some(prefix) = ENCAP_SOURCES.get(if v4 { ENCAP_SOURCE_V4 } else { ENCAP_SOURCE_V6 }) else {
        core::hint::cold_path();
        return Err(Reason::EncapNoSource);
    };
    if prefix.addr[0] == 0 {
        core::hint::cold_path();
        return Err(Reason::EncapNoSource);
    }
    let hash = flow_hash(&pkt.key);
    let src = [
        prefix.addr[0] | (hash & prefix.host[0]),
        prefix.addr[1] | (hash & prefix.host[1]),
        prefix.addr[2] | (hash & prefix.host[2]),
        prefix.addr[3] | (hash & prefix.host[3]),
    ];
    let family = pkt.key.family;
    let overhead = encap_overhead(family, gue) as usize;
    let inner_len = pkt.ip_len as usize;
    let outer_len = (inner_len + overhead) as u16;

    // What the outer header copies from the inner one, read before it moves:
    // its first two 16-bit words (version, TOS / traffic class, flow label).
    let inner = ptr_at::<[u16; 2]>(ctx, pkt.l3).ok_or(Reason::Truncated)?;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Truncated)?;
    let mut macs = [0u16; 6];
    // SAFETY: ptr_at checked both headers.
    let (w0, w1) = unsafe {
        copy16(macs.as_mut_ptr().cast(), eth, 6);
        (get16(inner, 0), get16(inner, 2))
    };

    // Room for the outer headers in front of the inner IP header; a VLAN tag
    // (between Ethernet and IP) is given up: the outer frame is untagged.
    let delta = overhead as i32 - (pkt.l3 - EthHdr::LEN) as i32;
    // SAFETY: a helper call with this program's context.
    if unsafe { aya_ebpf::helpers::generated::bpf_xdp_adjust_head(ctx.as_ptr().cast(), -delta) } != 0 {
        core::hint::cold_path();
        return Err(Reason::EncapTooBig);
    }

    let gue_port = if gue {
        match SETTINGS.get(SETTING_GUE_PORT) {
            Some(p) => *p as u16,
            None => 0,
        }
    } else {
        0
    };
    let sport = (GUE_SPORT_BASE | (hash as u16 & GUE_SPORT_HASH)).to_be();
    let udp_len = (inner_len + UDP_LEN) as u16;
    if v4 {
        let h = ptr_at::<[u8; OUTER_UDP_V4 + UDP_LEN]>(ctx, 0).ok_or(Reason::Truncated)?;
        let proto = if gue { PROTO_UDP } else { IPPROTO_IPIP };
        let tos = w0.to_ne_bytes()[1];
        let ver_tos = u16::from_ne_bytes([0x45, tos]);
        let ttl_proto = u16::from_ne_bytes([ENCAP_TTL, proto]);
        let sum =
            ver_tos as u64 + be16(outer_len) + be16(IPV4_DF) + ttl_proto as u64 + src[0] as u64 + be.addr[0] as u64;
        let ip = OUTER_L3;
        // SAFETY: ptr_at checked the Ethernet, outer IPv4 and UDP headers.
        unsafe {
            copy16(h, macs.as_ptr().cast(), 6);
            put16(h, offset_of!(EthHdr, ether_type), ETH_P_IP.to_be());
            put16(h, ip, ver_tos);
            put16(h, ip + offset_of!(Ipv4Hdr, tot_len), outer_len.to_be());
            put16(h, ip + offset_of!(Ipv4Hdr, id), 0);
            put16(h, ip + offset_of!(Ipv4Hdr, frags), IPV4_DF.to_be());
            put16(h, ip + offset_of!(Ipv4Hdr, ttl), ttl_proto);
            put16(h, ip + offset_of!(Ipv4Hdr, check), csum::finish(sum));
            put32(h, ip + offset_of!(Ipv4Hdr, src_addr), src[0]);
            put32(h, ip + offset_of!(Ipv4Hdr, dst_addr), be.addr[0]);
            if gue {
                let u = OUTER_UDP_V4;
                put16(h, u, sport);
                put16(h, u + 2, gue_port);
                put16(h, u + 4, udp_len.to_be());
                // Zero: no checksum (RFC 768), as tunnels over IPv4 send.
                put16(h, u + 6, 0);
            }
        }
    } else {
        let h = ptr_at::<[u8; OUTER_UDP_V6 + UDP_LEN]>(ctx, 0).ok_or(Reason::Truncated)?;
        let next = if gue { PROTO_UDP } else { IPPROTO_IPV6 };
        // Version and traffic class from the inner header, 20 flow-label bits from the hash.
        let v0 = (u16::from_be(w0) & 0xfff0) | ((hash >> 16) as u16 & 0x000f);
        let payload_len = if gue { udp_len } else { inner_len as u16 };
        let ip = OUTER_L3;
        // SAFETY: ptr_at checked the Ethernet, outer IPv6 and UDP headers; the
        // address arrays are 4-aligned.
        unsafe {
            copy16(h, macs.as_ptr().cast(), 6);
            put16(h, offset_of!(EthHdr, ether_type), ETH_P_IPV6.to_be());
            put16(h, ip, v0.to_be());
            put16(h, ip + 2, (hash as u16).to_be());
            put16(h, ip + 4, payload_len.to_be());
            put8(h, ip + 6, next);
            put8(h, ip + 7, ENCAP_TTL);
            copy16(h.add(ip + 8), src.as_ptr().cast(), 8);
            copy16(h.add(ip + 24), be.addr.as_ptr().cast(), 8);
        }
        if gue {
            // The inner packet's sum: its first two words and its next-header /
            // hop-limit word, less its pseudo-header's next-header word (the
            // addresses and the length cancel against the pseudo-header).
            let inner_sum = w0 as u64
                + w1 as u64
                + u16::from_ne_bytes([pkt.key.proto, pkt.ttl]) as u64
                + (!u16::from_ne_bytes([0, pkt.key.proto])) as u64;
            let mut sum = inner_sum + 2 * be16(udp_len) + be16(PROTO_UDP as u16) + sport as u64 + gue_port as u64;
            for (s, d) in src.iter().zip(be.addr.iter()) {
                sum += *s as u64 + *d as u64;
            }
            let u = OUTER_UDP_V6;
            // SAFETY: as above.
            unsafe {
                put16(h, u, sport);
                put16(h, u + 2, gue_port);
                put16(h, u + 4, udp_len.to_be());
                put16(h, u + 6, udp_check(csum::finish(sum), true));
            }
        }
    }

    // Until the daemon has resolved the backend's next hop (seconds after it
    // starts) the kernel forwards the encapsulated packet and resolves the
    // neighbour: the FIB is not asked here, whose frame would not fit.
    let Some(hop) = next_hop(&be.next_hop) else {
        core::hint::cold_path();
        return Ok(Action::Pass(Pass::NoRoute));
    };
    if inner_len + overhead > MIN_LINK_MTU && !fits_mtu(ctx, hop.ifindex) {
        core::hint::cold_path();
        return Err(Reason::EncapTooBig);
    }
    send(ctx, hop)
}

/// Whether the frame (as it is now) fits the MTU of `ifindex`.
#[inline(never)]
fn fits_mtu(ctx: &XdpContext, ifindex: u32) -> bool {
    let mut mtu = 0u32;
    // SAFETY: a helper call with this program's context and a writable u32.
    unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu, 0, 0) == 0 }
}
