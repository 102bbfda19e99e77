use core::mem::{self, offset_of};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    counter, flow_hash, reply_port_bit, trace, Backend, BackendStats, FlowKey, FlowState, NatReverse, NatSource,
    NextHop, Service, ServiceStats, TraceEvent, VipAddrKey, VipKey, BACKEND_F_SHARED, BACKEND_F_UP,
    DEFAULT_CONNTRACK_ENTRIES, FAMILY_V4, FAMILY_V6, MAX_BACKENDS, MAX_SERVICES, NAT_SOURCE_F_SHARED, NO_BACKEND,
    NUM_SETTINGS, PROTO_TCP, PROTO_UDP, REPLY_PORT_WORDS, SERVICE_F_DSR, SETTINGS_F_NAT, SETTING_FLAGS, SETTING_TRACE,
    TRACE_RING_BYTES, VIP_PORT_WORDS,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::csum;

// ---------------------------------------------------------------- maps

#[map]
static SERVICES: HashMap<VipKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);
/// `SERVICES` by `Service::id`: an established flow's backend names its
/// service (`Backend::service`), so its packets need no `SERVICES` search.
#[map]
static SERVICES_BY_ID: Array<Service> = Array::with_max_entries(MAX_SERVICES, 0);
/// Ports services listen on (bitmap): the cheap test for "not for a VIP".
#[map]
static VIP_PORTS: Array<u64> = Array::with_max_entries(VIP_PORT_WORDS, 0);
#[map]
static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
/// Maglev tables of all services, one after the other; sized by the loader.
/// Mmapable (BPF_F_MMAPABLE): the daemon writes tables through shared memory.
#[map]
static RING: Array<u32> = Array::with_max_entries(1, 1 << 10);
/// client -> VIP flows and their backend. Shared by all CPUs: the reply of a
/// NAT flow may arrive on another CPU than the packet that made the entry.
#[map]
static CONNTRACK: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);
/// backend -> client flows of NAT services whose backend is shared with
/// another NAT service (`BACKEND_F_SHARED`): what to restore as the source.
#[map]
static REVERSE_NAT: LruHashMap<FlowKey, NatReverse> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);
/// NAT backend (address, port, protocol) -> its service's VIP: turns a reply
/// back into its flow's `CONNTRACK` key. Filled by the loader.
#[map]
static NAT_SOURCES: HashMap<VipKey, NatSource> = HashMap::with_max_entries(MAX_BACKENDS, 0);
#[map]
static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
static SERVICE_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::NUM_COUNTERS, 0);
#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(NUM_SETTINGS, 0);
/// Sampled decisions for `xlb trace`, while `SETTINGS[SETTING_TRACE]` is set.
#[map]
static TRACE: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);
/// Ports backends answer from (bitmap): the reply path's cheap pre-filter.
#[map]
static REPLY_PORTS: Array<u64> = Array::with_max_entries(REPLY_PORT_WORDS, 0);

// ---------------------------------------------------------------- constants

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_LEN: usize = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// IPv4 `frags` field (network order as loaded): MF flag and fragment offset.
const IPV4_MF_OR_OFFSET: u16 = 0x3fff;
const IPV6_NEXT_FRAGMENT: u8 = 44;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

const MAX_HEADER_OFFSET: usize = 0x1ff;

/// What a packet is refused for: an index of `COUNTERS`.
type Reason = u32;

// ---------------------------------------------------------------- accessors

/// The one bounds-checked accessor: a pointer to a `T` at `off`, or `None`
/// when the packet is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // Headers xlb reads end well before byte 512; the mask gives the verifier
    // a bound for offsets the compiler spilled to the stack and reloaded.
    let off = off & MAX_HEADER_OFFSET;
    let start = ctx.data();
    if start + off + mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

// ---------------------------------------------------------------- entry

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    match process_packet(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The benchmark floor: XDP_PASS without reading the packet. Loaded only by
/// the benchmarks, measured by the same harness as `xlb`.
#[xdp]
pub fn xlb_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// What the parser learned about an IPv4/IPv6 TCP/UDP packet.
struct Parsed {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// UDP over IPv4 without a checksum: it stays zero.
    csum_none: bool,
    /// IP total length (host order), for the FIB's MTU check.
    ip_len: u16,
    /// TCP SYN without ACK: a connection's first packet.
    syn: bool,
    key: FlowKey,
}

/// Parse; a destination port no service listens on is not for a VIP. A
/// flow with a usable conntrack entry follows its backend (its service is
/// the backend's: one hash lookup per packet); any other packet looks its
/// VIP up in `SERVICES` for a Maglev pick, or is not for a VIP.
#[inline(always)]
fn process_packet(ctx: &XdpContext) -> Result<u32, Reason> {
    let Some(pkt) = parse(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !port_listed(&VIP_PORTS, pkt.key.dport) {
        return reply_or_pass(ctx, &pkt);
    }
    // A TCP SYN opens a connection: it is picked without looking (as in
    // Katran), which saves a lookup that would miss and lets a reused
    // 5-tuple start afresh.
    let tracked = if pkt.syn { None } else { unsafe { CONNTRACK.get(&pkt.key) } };
    let (svc, idx, be, kind) = match tracked.and_then(tracked_backend) {
        Some((idx, be, svc)) => {
            count_established(svc);
            (svc, idx, be, trace::HIT)
        }
        None => match pick_for_vip(ctx, &pkt, tracked.is_some())? {
            Some(picked) => picked,
            None => return reply_or_pass(ctx, &pkt),
        },
    };
    let result = send_to_backend(ctx, &pkt, svc, idx, be, kind != trace::HIT);
    trace_decision(&pkt.key, kind, svc.id, idx, result);
    result
}

// ---------------------------------------------------------------- parse

/// `Ok(None)`: not IPv4/IPv6 TCP/UDP, or not parseable and not for a VIP
/// address: the kernel's business. `Err`: malformed and meant for a VIP.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Parsed>, Reason> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    let mut l3 = EthHdr::LEN;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // One tag: TCI, then the encapsulated type.
        let Some(inner) = ptr_at::<[u16; 2]>(ctx, EthHdr::LEN) else {
            return Ok(None);
        };
        ether_type = u16::from_be(unsafe { (*inner)[1] });
        l3 += VLAN_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Ok(None),
    }
}

/// A packet xlb cannot handle: refused and counted when its destination is
/// a VIP address, left to the kernel otherwise.
#[inline(always)]
fn refuse(src: [u32; 4], dst: [u32; 4], proto: u8, family: u8, reason: Reason) -> Result<Option<Parsed>, Reason> {
    let key = VipAddrKey { addr: dst, family, _pad: [0; 3] };
    match unsafe { VIP_ADDRS.get(&key) } {
        Some(_) => {
            let key = FlowKey { src, dst, sport: 0, dport: 0, proto, family, _pad: [0; 2] };
            trace_decision(&key, trace::DROP, NOT_KNOWN, NOT_KNOWN, Err(reason));
            Err(reason)
        }
        None => Ok(None),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Result<Option<Parsed>, Reason> {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Ok(None);
    };
    let (vihl, proto, frags, tot_len, src, dst) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            *(ip as *const u8).add(offset_of!(Ipv4Hdr, frags)).cast::<u16>(),
            u16::from_be_bytes((*ip).tot_len),
            *(ip as *const u8).add(offset_of!(Ipv4Hdr, src_addr)).cast::<u32>(),
            *(ip as *const u8).add(offset_of!(Ipv4Hdr, dst_addr)).cast::<u32>(),
        )
    };
    let (saddr, daddr) = ([src, 0, 0, 0], [dst, 0, 0, 0]);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return refuse(saddr, daddr, proto, FAMILY_V4, counter::DROP_BAD_HEADER);
    }
    if u16::from_be(frags) & IPV4_MF_OR_OFFSET != 0 {
        return refuse(saddr, daddr, proto, FAMILY_V4, counter::DROP_FRAGMENT);
    }
    if (tot_len as usize) < ihl || ctx.data() + l3 + tot_len as usize > ctx.data_end() {
        return refuse(saddr, daddr, proto, FAMILY_V4, counter::DROP_TRUNCATED);
    }
    parse_l4(ctx, l3, l3 + ihl, proto, FAMILY_V4, saddr, daddr, tot_len)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Result<Option<Parsed>, Reason> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Ok(None);
    };
    let (vcf0, next, payload_len, src, dst) = unsafe {
        (
            (*ip).vcf[0],
            (*ip).next_hdr,
            u16::from_be_bytes((*ip).payload_len),
            *(ip as *const u8).add(offset_of!(Ipv6Hdr, src_addr)).cast::<[u32; 4]>(),
            *(ip as *const u8).add(offset_of!(Ipv6Hdr, dst_addr)).cast::<[u32; 4]>(),
        )
    };
    if next != PROTO_TCP && next != PROTO_UDP {
        // Extension headers (and fragments) are refused for VIPs; ICMPv6 and
        // anything else goes to the kernel.
        return match next {
            IPV6_NEXT_FRAGMENT => refuse(src, dst, next, FAMILY_V6, counter::DROP_FRAGMENT),
            0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 => refuse(src, dst, next, FAMILY_V6, counter::DROP_IPV6_EXT),
            _ => Ok(None),
        };
    }
    if vcf0 >> 4 != 6 {
        return refuse(src, dst, next, FAMILY_V6, counter::DROP_BAD_HEADER);
    }
    let l4 = l3 + Ipv6Hdr::LEN;
    if ctx.data() + l4 + payload_len as usize > ctx.data_end() {
        return refuse(src, dst, next, FAMILY_V6, counter::DROP_TRUNCATED);
    }
    let ip_len = payload_len.wrapping_add(Ipv6Hdr::LEN as u16);
    parse_l4(ctx, l3, l4, next, FAMILY_V6, src, dst, ip_len)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    proto: u8,
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
    ip_len: u16,
) -> Result<Option<Parsed>, Reason> {
    let mut syn = false;
    let (ports, csum_none) = if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4) else {
            return refuse(src, dst, proto, family, counter::DROP_TRUNCATED);
        };
        // Data offset: the high nibble of byte 12.
        let doff = unsafe { *(tcp as *const u8).add(12) } >> 4;
        if doff < 5 {
            return refuse(src, dst, proto, family, counter::DROP_BAD_HEADER);
        }
        syn = unsafe { *(tcp as *const u8).add(13) } & (TCP_SYN | TCP_ACK) == TCP_SYN;
        (tcp as *const [u16; 2], false)
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, l4) else {
            return refuse(src, dst, proto, family, counter::DROP_TRUNCATED);
        };
        let none = family == FAMILY_V4 && unsafe { (*udp).check } == [0, 0];
        (udp as *const [u16; 2], none)
    };
    let [sport, dport] = unsafe { *ports };
    Ok(Some(Parsed {
        l3,
        l4,
        csum_none,
        ip_len,
        syn,
        key: FlowKey { src, dst, sport, dport, proto, family, _pad: [0; 2] },
    }))
}

// ---------------------------------------------------------------- service path

/// The backend of a tracked flow and its service, while that backend is
/// usable: up, and still the one the entry was made for (same generation).
/// Such a backend belongs to the service of the flow's VIP: backends never
/// change service, a removed one is cleared and a reused slot gets a new
/// generation.
#[inline(always)]
fn tracked_backend(st: &FlowState) -> Option<(u32, &'static Backend, &'static Service)> {
    let be = BACKENDS.get(st.backend)?;
    if be.flags & BACKEND_F_UP == 0 || be.generation != st.generation {
        return None;
    }
    Some((st.backend, be, SERVICES_BY_ID.get(be.service)?))
}

/// A packet of an established flow, for its service's counters.
#[inline(always)]
fn count_established(svc: &Service) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(svc.id) {
        unsafe {
            (*s).packets += 1;
            (*s).established += 1;
        }
    }
}

/// Counts the packet for its backend, rewrites it (NAT) and sends it on.
#[inline(always)]
fn send_to_backend(
    ctx: &XdpContext,
    pkt: &Parsed,
    svc: &Service,
    idx: u32,
    be: &Backend,
    new_flow: bool,
) -> Result<u32, Reason> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(s) = BACKEND_STATS.get_ptr_mut(idx) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
    if svc.flags & SERVICE_F_DSR != 0 {
        // Direct server return: the backend holds the VIP; only the MAC changes.
        return forward(ctx, pkt, &be.next_hop, &be.addr, &pkt.key.src, false);
    }
    rewrite_dst(ctx, pkt, &be.addr, be.port)?;
    forward(ctx, pkt, &be.next_hop, &be.addr, &pkt.key.src, true)
}

/// The service of the packet's VIP and a Maglev pick in it, with how it was
/// found (`trace::MISS` or `REPICK`); `None`: not for a VIP.
#[inline(always)]
fn pick_for_vip(
    ctx: &XdpContext,
    pkt: &Parsed,
    stale: bool,
) -> Result<Option<(&'static Service, u32, &'static Backend, u8)>, Reason> {
    let vip = VipKey { addr: pkt.key.dst, port: pkt.key.dport, proto: pkt.key.proto, family: pkt.key.family };
    let Some(svc) = (unsafe { SERVICES.get(&vip) }) else {
        return Ok(None);
    };
    match pick(ctx, pkt, svc, stale) {
        Ok((idx, be)) => Ok(Some((svc, idx, be, if stale { trace::REPICK } else { trace::MISS }))),
        Err(reason) => {
            trace_decision(&pkt.key, trace::DROP, svc.id, NOT_KNOWN, Err(reason));
            Err(reason)
        }
    }
}

/// A Maglev pick for a flow without a usable conntrack entry (`stale`: it
/// had one, for a backend no longer usable), which makes or replaces the entry.
#[inline(always)]
fn pick(ctx: &XdpContext, pkt: &Parsed, svc: &Service, stale: bool) -> Result<(u32, &'static Backend), Reason> {
    let stats = SERVICE_STATS.get_ptr_mut(svc.id);
    if let Some(s) = stats {
        unsafe {
            (*s).packets += 1;
            if stale {
                (*s).repicked += 1;
            }
        }
    }
    // Maglev: ring[service][hash(flow) % M].
    if svc.table_size == 0 {
        return Err(counter::DROP_NO_BACKEND);
    }
    let slot = svc.ring_offset + flow_hash(&pkt.key) % svc.table_size;
    let idx = match RING.get(slot) {
        Some(i) if *i != NO_BACKEND => *i,
        _ => return Err(counter::DROP_NO_BACKEND),
    };
    let be = match BACKENDS.get(idx) {
        Some(b) if b.flags & BACKEND_F_UP != 0 => b,
        _ => return Err(counter::DROP_NO_BACKEND),
    };
    let nat = svc.flags & SERVICE_F_DSR == 0;
    let reply_hop = if nat { reply_hop(ctx) } else { NextHop::default() };
    let state = FlowState { backend: idx, generation: be.generation, reply_hop };
    // A full LRU evicts; an insert can only fail under memory pressure, and
    // then the flow is simply picked again (same answer) at its next packet.
    let _ = CONNTRACK.insert(&pkt.key, &state, 0);
    if nat && be.flags & BACKEND_F_SHARED != 0 {
        insert_reverse(pkt, be, idx, reply_hop);
    }
    if let Some(s) = stats {
        unsafe { (*s).new_flows += 1 };
    }
    Ok((idx, be))
}

/// Back where this packet came from: for the replies of a NAT flow.
#[inline(always)]
fn reply_hop(ctx: &XdpContext) -> NextHop {
    let mut hop = NextHop { ifindex: ctx.ingress_ifindex() as u32, ..NextHop::default() };
    if let Some(eth) = ptr_at::<EthHdr>(ctx, 0) {
        unsafe {
            hop.dmac = (*eth).src_addr;
            hop.smac = (*eth).dst_addr;
        }
    }
    hop
}

/// The reverse entry of a flow to a shared backend, whose replies cannot
/// tell their VIP from the backend's address alone.
#[inline(always)]
fn insert_reverse(pkt: &Parsed, be: &Backend, idx: u32, next_hop: NextHop) {
    let k = &pkt.key;
    let reply = FlowKey {
        src: be.addr,
        dst: k.src,
        sport: be.port,
        dport: k.sport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let nat = NatReverse { vip: k.dst, vip_port: k.dport, _pad: 0, backend: idx, next_hop };
    let _ = REVERSE_NAT.insert(&reply, &nat, 0);
}

// ---------------------------------------------------------------- reply path

#[inline(always)]
fn reply_or_pass(ctx: &XdpContext, pkt: &Parsed) -> Result<u32, Reason> {
    let nat = match SETTINGS.get(SETTING_FLAGS) {
        Some(f) => *f & SETTINGS_F_NAT != 0,
        None => false,
    };
    // Whether some backend answers from this source port.
    if nat && port_listed(&REPLY_PORTS, pkt.key.sport) {
        if let Some((vip, vip_port, hop, backend)) = nat_reply(pkt) {
            let result = rewrite_src(ctx, pkt, &vip, vip_port).and_then(|()| {
                count(counter::REPLY_NAT);
                forward(ctx, pkt, &hop, &pkt.key.dst, &vip, true)
            });
            trace_decision(&pkt.key, trace::REPLY, NOT_KNOWN, backend, result);
            return result;
        }
    }
    Ok(xdp_action::XDP_PASS)
}

/// The VIP address, port and next hop of a reply from a NAT backend, if its
/// flow is tracked: the backend's service names the VIP, and the flow's
/// `CONNTRACK` entry (client -> VIP) must name this backend. Backends shared
/// by several NAT services look in `REVERSE_NAT` first.
#[inline(always)]
fn nat_reply(pkt: &Parsed) -> Option<([u32; 4], u16, NextHop, u32)> {
    let k = &pkt.key;
    let from = VipKey { addr: k.src, port: k.sport, proto: k.proto, family: k.family };
    let src = unsafe { NAT_SOURCES.get(&from) }?;
    if src.flags & NAT_SOURCE_F_SHARED != 0 {
        if let Some(rev) = unsafe { REVERSE_NAT.get(k) } {
            return Some((rev.vip, rev.vip_port, rev.next_hop, rev.backend));
        }
    }
    let flow = FlowKey {
        src: k.dst,
        dst: src.vip,
        sport: k.dport,
        dport: src.vip_port,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let st = unsafe { CONNTRACK.get(&flow) }?;
    if st.backend != src.backend {
        return None;
    }
    Some((src.vip, src.vip_port, st.reply_hop, src.backend))
}

/// Whether `port` (network order) is set in the port bitmap `ports`: two
/// array reads (inlined by the verifier) instead of a hash lookup.
#[inline(always)]
fn port_listed(ports: &Array<u64>, port: u16) -> bool {
    let (word, bit) = reply_port_bit(u16::from_be(port));
    match ports.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

// ---------------------------------------------------------------- trace

/// `TraceEvent::service` / `backend` when not known.
const NOT_KNOWN: u32 = u32::MAX;

/// Writes a sampled decision to `TRACE` while `xlb trace` runs. Off, it
/// costs one array read (inlined by the verifier) and a branch, on VIP
/// packets and NAT replies only.
#[inline(always)]
fn trace_decision(key: &FlowKey, kind: u8, service: u32, backend: u32, result: Result<u32, Reason>) {
    let rate = match SETTINGS.get(SETTING_TRACE) {
        Some(r) if *r != 0 => *r,
        _ => return,
    };
    if rate > 1 && unsafe { bpf_get_prandom_u32() } % rate != 0 {
        return;
    }
    let (action, reason) = match result {
        Ok(a) => (a, NOT_KNOWN),
        Err(r) => (xdp_action::XDP_DROP, r),
    };
    let ev = TraceEvent {
        ns: unsafe { bpf_ktime_get_ns() },
        src: key.src,
        dst: key.dst,
        sport: key.sport,
        dport: key.dport,
        proto: key.proto,
        family: key.family,
        kind,
        _pad: 0,
        service,
        backend,
        action,
        reason,
    };
    // A full ring drops the event: the trace is a sample, never a brake.
    let _ = TRACE.output::<TraceEvent>(&ev, 0);
}

// ---------------------------------------------------------------- rewrite

/// NAT, client -> backend: destination address and port become the backend's.
#[inline(always)]
fn rewrite_dst(ctx: &XdpContext, pkt: &Parsed, addr: &[u32; 4], port: u16) -> Result<(), Reason> {
    rewrite(ctx, pkt, true, &pkt.key.dst, pkt.key.dport, addr, port)
}

/// NAT, backend -> client: source address and port become the VIP's.
#[inline(always)]
fn rewrite_src(ctx: &XdpContext, pkt: &Parsed, addr: &[u32; 4], port: u16) -> Result<(), Reason> {
    rewrite(ctx, pkt, false, &pkt.key.src, pkt.key.sport, addr, port)
}

/// Replaces the destination (`dst`) or source address and port, and updates
/// the L3 and L4 checksums incrementally. Every pointer derives from one
/// bounds-checked header pointer, with constant offsets.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Parsed,
    dst: bool,
    old_addr: &[u32; 4],
    old_port: u16,
    new_addr: &[u32; 4],
    new_port: u16,
) -> Result<(), Reason> {
    let (l4, check_off) = if pkt.key.proto == PROTO_TCP {
        let t = ptr_at::<TcpHdr>(ctx, pkt.l4).ok_or(counter::DROP_TRUNCATED)?;
        (t as *mut u8, offset_of!(TcpHdr, check))
    } else {
        let u = ptr_at::<UdpHdr>(ctx, pkt.l4).ok_or(counter::DROP_TRUNCATED)?;
        (u as *mut u8, offset_of!(UdpHdr, check))
    };
    // Source port first, destination port second, in TCP and UDP alike.
    let ports = l4 as *mut [u16; 2];
    let check = unsafe { l4.add(check_off) } as *mut u16;
    let udp = pkt.key.proto == PROTO_UDP;
    if pkt.key.family == FAMILY_V4 {
        let h = ptr_at::<Ipv4Hdr>(ctx, pkt.l3).ok_or(counter::DROP_TRUNCATED)?;
        let off = if dst { offset_of!(Ipv4Hdr, dst_addr) } else { offset_of!(Ipv4Hdr, src_addr) };
        unsafe {
            let a = (h as *mut u8).add(off) as *mut u32;
            let ipc = (h as *mut u8).add(offset_of!(Ipv4Hdr, check)) as *mut u16;
            *a = new_addr[0];
            *ipc = csum::replace4_2(*ipc, old_addr[0], new_addr[0], 0, 0);
            (*ports)[dst as usize] = new_port;
            if !pkt.csum_none {
                let c = csum::replace4_2(*check, old_addr[0], new_addr[0], old_port, new_port);
                *check = if c == 0 && udp { 0xffff } else { c };
            }
        }
    } else {
        let h = ptr_at::<Ipv6Hdr>(ctx, pkt.l3).ok_or(counter::DROP_TRUNCATED)?;
        let off = if dst { offset_of!(Ipv6Hdr, dst_addr) } else { offset_of!(Ipv6Hdr, src_addr) };
        unsafe {
            let a = (h as *mut u8).add(off) as *mut [u32; 4];
            *a = *new_addr;
            (*ports)[dst as usize] = new_port;
            let c = csum::replace16_2(*check, old_addr, new_addr, old_port, new_port);
            *check = if c == 0 && udp { 0xffff } else { c };
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- forward

/// Sends the packet towards `dst` (the backend, or the client for a reply):
/// the next hop the daemon resolved (or the one the flow came from), else a
/// FIB lookup; then MACs, TTL, and XDP_TX or XDP_REDIRECT. Without a route or
/// neighbour entry the kernel gets the packet (it resolves and forwards).
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    pkt: &Parsed,
    hop: &NextHop,
    dst: &[u32; 4],
    src: &[u32; 4],
    routed: bool,
) -> Result<u32, Reason> {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = if hop.ifindex != 0 {
        *hop
    } else {
        match fib_next_hop(ctx, pkt, dst, src, ingress) {
            Some(h) => h,
            None => {
                count(counter::PASS_NO_ROUTE);
                return Ok(xdp_action::XDP_PASS);
            }
        }
    };
    if routed && !decrement_ttl(ctx, pkt.l3, pkt.key.family)? {
        count(counter::PASS_TTL);
        return Ok(xdp_action::XDP_PASS);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(counter::DROP_TRUNCATED)?;
    unsafe {
        (*eth).dst_addr = hop.dmac;
        (*eth).src_addr = hop.smac;
    }
    if hop.ifindex == ingress {
        return Ok(xdp_action::XDP_TX);
    }
    Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
}

/// The kernel's answer for `dst`: egress interface and MACs, if it has them all.
#[inline(always)]
fn fib_next_hop(ctx: &XdpContext, pkt: &Parsed, dst: &[u32; 4], src: &[u32; 4], ingress: u32) -> Option<NextHop> {
    let mut p: FibParams = unsafe { mem::zeroed() };
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    if pkt.key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let ret = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, mem::size_of::<FibParams>() as i32, 0) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(NextHop { ifindex: p.ifindex, dmac: p.dmac, smac: p.smac })
}

/// Decrements the IPv4 TTL (with its checksum) or the IPv6 hop limit.
/// `false` when it would expire: the kernel then answers with ICMP.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, l3: usize, family: u8) -> Result<bool, Reason> {
    if family == FAMILY_V4 {
        // TTL and protocol share one 16-bit word of the header checksum.
        let hdr = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(counter::DROP_TRUNCATED)?;
        unsafe {
            let ttl = (*hdr).ttl;
            if ttl <= 1 {
                return Ok(false);
            }
            let proto = (*hdr).proto;
            (*hdr).ttl = ttl - 1;
            let old = u16::from_ne_bytes([ttl, proto]);
            let new = u16::from_ne_bytes([ttl - 1, proto]);
            (*hdr).check = csum::replace2(u16::from_ne_bytes((*hdr).check), old, new).to_ne_bytes();
        }
    } else {
        let hdr = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(counter::DROP_TRUNCATED)?;
        unsafe {
            let hops = (*hdr).hop_limit;
            if hops <= 1 {
                return Ok(false);
            }
            (*hdr).hop_limit = hops - 1;
        }
    }
    Ok(true)
}
