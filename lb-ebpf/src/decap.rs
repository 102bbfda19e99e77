//! `xlb_decap`: the backends' side of `forwarding = "ipip"` and `"gue"`,
//! attached by `xlb decap` where the kernel has no ipip / ip6tnl / fou.
//!
//! A packet to one of its addresses (`DECAP_ADDRS`) that is IP in IP (IPv4
//! protocol or IPv6 next header 4 or 41) or UDP to the address's GUE port (GUE
//! variant 1: the inner IP header right after UDP) loses its outer headers
//! and goes up to the kernel (XDP_PASS) as the inner packet, in the same
//! Ethernet frame. Such a packet with a broken outer header (truncated, bad
//! version or IHL, bad IPv4 header checksum, a fragment, an inner packet that
//! is not what the outer header says) is dropped and counted: never passed on
//! half-stripped. Anything else (other addresses, other protocols and ports,
//! VLAN-tagged frames) goes up untouched and uncounted. The outer UDP checksum
//! is not verified (zero over IPv4 as sent); the kernel still checks the inner
//! packet's own.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{decap, DecapPort, VipAddrKey, FAMILY_V4, FAMILY_V6, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use super::{copy16, get16, get8, ptr_at, put16, ETH_P_IP, ETH_P_IPV6, IPV4_MF_OR_OFFSET};

/// The addresses packets are decapsulated at, with their GUE port.
#[map]
static DECAP_ADDRS: HashMap<VipAddrKey, DecapPort> = HashMap::with_max_entries(lb_common::MAX_DECAP_ADDRS, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap::NUM, 0);

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const L3: usize = EthHdr::LEN;

/// Strips ipip / gue headers of packets to the configured addresses.
#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = match try_decap(&ctx) {
        Ok(None) => return xdp_action::XDP_PASS,
        Ok(Some(c)) => (xdp_action::XDP_PASS, c),
        Err(c) => (xdp_action::XDP_DROP, c),
    };
    if let Some(c) = DECAP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
    action
}

/// `Ok(None)`: not ours, untouched. `Ok(Some(c))`: stripped, counted in `c`.
/// `Err(c)`: ours but broken, dropped and counted in `c`.
#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<Option<u32>, u32> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    // SAFETY: ptr_at checked the Ethernet header.
    let ether_type = u16::from_be(unsafe { get16(eth, offset_of!(EthHdr, ether_type)) });
    let outer = match ether_type {
        ETH_P_IP => outer_v4(ctx)?,
        ETH_P_IPV6 => outer_v6(ctx)?,
        _ => None,
    };
    let Some(o) = outer else {
        return Ok(None);
    };
    // The inner packet: its fixed header within the outer packet, and the
    // family the outer header announced (GUE: the version nibble tells).
    let first = ptr_at::<u8>(ctx, o.inner).ok_or(decap::DROP_TRUNCATED)?;
    // SAFETY: ptr_at checked the byte.
    let version = unsafe { get8(first, 0) } >> 4;
    let inner_family = match version {
        4 => FAMILY_V4,
        6 => FAMILY_V6,
        _ => return Err(decap::DROP_BAD_HEADER),
    };
    if o.inner_family != 0 && o.inner_family != inner_family {
        return Err(decap::DROP_BAD_HEADER);
    }
    let fixed = if inner_family == FAMILY_V4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if o.inner + fixed > o.end {
        return Err(decap::DROP_TRUNCATED);
    }
    if ctx.data() + o.end > ctx.data_end() {
        return Err(decap::DROP_TRUNCATED);
    }
    strip(ctx, o.inner, inner_family).ok_or(decap::DROP_TRUNCATED)?;
    Ok(Some(o.counter))
}

/// An encapsulated packet to one of our addresses.
struct Outer {
    /// Offset of the inner IP header.
    inner: usize,
    /// Where the outer packet ends (by its length field).
    end: usize,
    /// The inner family the outer header announces; 0: GUE (the inner header tells).
    inner_family: u8,
    /// `decap::IPIP` or `decap::GUE`.
    counter: u32,
}

/// The GUE port of `addr` if it is one of ours.
#[inline(always)]
fn ours(addr: [u32; 4], family: u8) -> Option<DecapPort> {
    let key = VipAddrKey { addr, family, _pad: [0; 3] };
    // SAFETY: the value is copied out at once.
    unsafe { DECAP_ADDRS.get(key) }.copied()
}

#[inline(always)]
fn outer_v4(ctx: &XdpContext) -> Result<Option<Outer>, u32> {
    let Some(h) = ptr_at::<Ipv4Hdr>(ctx, L3) else {
        return Ok(None);
    };
    let mut dst = [0u32; 4];
    // SAFETY: ptr_at checked the 20-byte header.
    let (vihl, len, frags, proto) = unsafe {
        copy16(dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv4Hdr, dst_addr)), 2);
        (
            get8(h, offset_of!(Ipv4Hdr, vihl)),
            u16::from_be(get16(h, offset_of!(Ipv4Hdr, tot_len))) as usize,
            u16::from_be(get16(h, offset_of!(Ipv4Hdr, frags))),
            get8(h, offset_of!(Ipv4Hdr, proto)),
        )
    };
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 && proto != PROTO_UDP {
        return Ok(None);
    }
    let Some(gue_port) = ours(dst, FAMILY_V4) else {
        return Ok(None);
    };
    let ihl = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(decap::DROP_BAD_HEADER);
    }
    let end = L3 + len;
    if len < ihl || ctx.data() + end > ctx.data_end() {
        return Err(decap::DROP_TRUNCATED);
    }
    if !v4_header_sum_ok(ctx, ihl) {
        return Err(decap::DROP_BAD_HEADER);
    }
    if frags & IPV4_MF_OR_OFFSET != 0 {
        return Err(decap::DROP_FRAGMENT);
    }
    transport(ctx, L3 + ihl, end, proto, gue_port)
}

/// The IPv4 header (`ihl` bytes at `L3`, within the packet) sums to 0xffff.
#[inline(always)]
fn v4_header_sum_ok(ctx: &XdpContext, ihl: usize) -> bool {
    let mut sum = 0u64;
    // At most 60 bytes: 30 words.
    for i in 0..30 {
        if 2 * i >= ihl {
            break;
        }
        let Some(w) = ptr_at::<u16>(ctx, L3 + 2 * i) else {
            return false;
        };
        // SAFETY: ptr_at checked the word.
        sum += unsafe { get16(w, 0) } as u64;
    }
    crate::csum::finish(sum) == 0
}

#[inline(always)]
fn outer_v6(ctx: &XdpContext) -> Result<Option<Outer>, u32> {
    let Some(h) = ptr_at::<Ipv6Hdr>(ctx, L3) else {
        return Ok(None);
    };
    let mut dst = [0u32; 4];
    // SAFETY: ptr_at checked the 40-byte header; `dst` is 4-aligned.
    let (version, payload_len, next) = unsafe {
        copy16(dst.as_mut_ptr().cast(), h.add(offset_of!(Ipv6Hdr, dst_addr)), 8);
        (
            get8(h, offset_of!(Ipv6Hdr, vcf)) >> 4,
            u16::from_be(get16(h, offset_of!(Ipv6Hdr, payload_len))) as usize,
            get8(h, offset_of!(Ipv6Hdr, next_hdr)),
        )
    };
    if next != IPPROTO_IPIP && next != IPPROTO_IPV6 && next != PROTO_UDP {
        return Ok(None);
    }
    let Some(gue_port) = ours(dst, FAMILY_V6) else {
        return Ok(None);
    };
    if version != 6 {
        return Err(decap::DROP_BAD_HEADER);
    }
    let l4 = L3 + Ipv6Hdr::LEN;
    let end = l4 + payload_len;
    if ctx.data() + end > ctx.data_end() {
        return Err(decap::DROP_TRUNCATED);
    }
    transport(ctx, l4, end, next, gue_port)
}

/// After the outer IP header (at `l4`): the inner packet for ipip, or for
/// UDP to the GUE port after the UDP header. Other UDP is not ours.
#[inline(always)]
fn transport(ctx: &XdpContext, l4: usize, end: usize, proto: u8, gue_port: DecapPort) -> Result<Option<Outer>, u32> {
    if proto == IPPROTO_IPIP || proto == IPPROTO_IPV6 {
        let inner_family = if proto == IPPROTO_IPIP { FAMILY_V4 } else { FAMILY_V6 };
        return Ok(Some(Outer { inner: l4, end, inner_family, counter: decap::IPIP }));
    }
    let Some(udp) = ptr_at::<UdpHdr>(ctx, l4) else {
        // Too short for UDP: not a GUE packet we could tell; the kernel's.
        return Ok(None);
    };
    // SAFETY: ptr_at checked the 8-byte header.
    let (dport, len) = unsafe {
        (u16::from_be(get16(udp, offset_of!(UdpHdr, dst))), u16::from_be(get16(udp, offset_of!(UdpHdr, len))) as usize)
    };
    if gue_port == 0 || dport as u32 != gue_port {
        return Ok(None);
    }
    if len < UdpHdr::LEN {
        return Err(decap::DROP_BAD_HEADER);
    }
    if l4 + len > end {
        return Err(decap::DROP_TRUNCATED);
    }
    Ok(Some(Outer { inner: l4 + UdpHdr::LEN, end: l4 + len, inner_family: 0, counter: decap::GUE }))
}

/// Moves the start of the frame to `inner - 14` and writes the Ethernet header
/// there (same MACs, the inner family's type). Nothing is written before the
/// head has moved: a failure leaves the packet as it came.
#[inline(always)]
fn strip(ctx: &XdpContext, inner: usize, family: u8) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let mut macs = [0u16; 6];
    // SAFETY: ptr_at checked the Ethernet header.
    unsafe { copy16(macs.as_mut_ptr().cast(), eth, 6) };
    let by = (inner - EthHdr::LEN) as i32;
    // SAFETY: a helper call with this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), by) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ether_type = if family == FAMILY_V4 { ETH_P_IP } else { ETH_P_IPV6 };
    // SAFETY: ptr_at checked the new Ethernet header.
    unsafe {
        copy16(eth, macs.as_ptr().cast(), 6);
        put16(eth, offset_of!(EthHdr, ether_type), ether_type.to_be());
    }
    Some(())
}
