//! The XDP program. [`process_packet`] tells a packet's whole story, top to bottom:
//!
//! 1. [`parse`]: what the packet is, without side effects: to a port some
//!    service listens on, maybe a NAT reply, the kernel's, or refused.
//! 2. [`classify`]: a VIP packet's service, backend and flow state: its
//!    conntrack entry while that backend is usable, else a Maglev pick (which
//!    tracks the flow).
//! 3. [`send_to_backend`] / [`reply`]: the action: TTL, NAT rewrite, next
//!    hop, MACs; XDP_TX, XDP_REDIRECT (also back out a veth), or the kernel.
//! 4. [`record`]: the [`Decision`] written to the counters and the trace, the
//!    one place that writes them.

use core::{
    intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, atomic_xchg, atomic_xsub, AtomicOrdering},
    mem::{self, offset_of},
};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MMAPABLE},
    helpers::generated::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{
        lpm_trie::Key as LpmKey, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    counter, ct, ct_bucket_of, ct_slots, ct_tag_of, flow_hash, reply_port_bit, trace, Backend, BackendStats, CtBucket,
    CtSlot, FlowKey, FlowState, NatReverse, NatSource, NewFlowWindow, NextHop, Service, ServiceStats, TraceEvent,
    VipAddrKey, VipKey, BACKEND_F_SHARED, BACKEND_F_UP, CT_WAYS, DEFAULT_CONNTRACK_ENTRIES, FAMILY_V4, FAMILY_V6,
    GUARD_WINDOW_TICKS, LC_FULL_SCAN, MAX_BACKENDS, MAX_HAIRPIN_PORTS, MAX_SERVICES, NAT_SOURCE_F_SHARED, NO_BACKEND,
    NUM_SETTINGS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REPLY_PORT_WORDS, SCHED_REGION, SERVICE_F_DSR,
    SERVICE_F_ENCAP, SERVICE_F_GUE, SERVICE_F_LEAST_CONN, SERVICE_F_ROUND_ROBIN, SETTING_CT_CLOCK, SETTING_GUARD,
    SETTING_HAIRPIN, SETTING_TRACE, SETTING_UNTRACKED_SEEN, TRACE_RING_BYTES, VIP_PORT_WORDS,
};
use lb_common::{
    SourceBucketKey, SourceRuleKey, TokenBucket, FIREWALL_F_CLOSED_DROP, MAX_SOURCE_RULES, NEW_FLOW_BUCKETS_ENTRIES,
    RULE_DENY, SCOPE_DAEMON_V4, SCOPE_DAEMON_V6, SERVICE_F_ALLOW_LIST, SERVICE_F_FIREWALL, SERVICE_F_RATE_LIMIT,
    SETTING_FIREWALL, VIP_ADDR_F_CLOSED_DROP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::csum;

/// ICMP for VIP flows and echo requests to VIPs: entered from [`process_packet`]'s
/// `Parse::Icmp` arm only.
#[path = "icmp.rs"]
mod icmp;

/// ipip and gue: a VIP packet inside an outer header, to a backend L3 away.
#[path = "encap.rs"]
mod encap;

/// `xlb_decap`, the backends' side of ipip and gue.
#[path = "decap.rs"]
mod decap;

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
/// Mmapable: the daemon writes tables through shared memory.
#[map]
static RING: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// client -> VIP flows and their backend, in buckets of `CT_WAYS` slots
/// ([`ct_lookup`], [`ct_insert`]); sized by the loader (`CT_SLOTS`). Shared
/// by all CPUs: the reply of a NAT flow may arrive on another CPU than the
/// packet that made the entry. Mmapable: the daemon sweeps it in place.
#[map]
static CONNTRACK: Array<CtBucket> =
    Array::with_max_entries(ct_slots(DEFAULT_CONNTRACK_ENTRIES) / CT_WAYS, BPF_F_MMAPABLE);
/// `CONNTRACK`'s slot count, a power of two, set by the loader (read-only
/// data: the verifier knows its value).
#[no_mangle]
static CT_SLOTS: u32 = ct_slots(DEFAULT_CONNTRACK_ENTRIES);
/// `CT_WAYS`, read from read-only data: a bound LLVM cannot see, so that it
/// keeps the slot loops as loops (unrolled, their live values outgrow the
/// registers and the stack), and the verifier can (a frozen map's value).
#[no_mangle]
static CT_WAYS_RO: u32 = CT_WAYS;

#[inline(always)]
fn ct_ways() -> u32 {
    // SAFETY: a plain read of read-only data.
    unsafe { (&raw const CT_WAYS_RO).read_volatile() }
}
/// backend -> client flows of NAT services whose backend is shared with
/// another NAT service (`BACKEND_F_SHARED`): what to restore as the source.
#[map]
static REVERSE_NAT: LruHashMap<FlowKey, NatReverse> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);
/// NAT backend (address, port, protocol) -> its service's VIP: turns a reply
/// back into its flow's `CONNTRACK` key. Filled by the loader.
#[map]
static NAT_SOURCES: HashMap<VipKey, NatSource> = HashMap::with_max_entries(MAX_BACKENDS, 0);
/// The conntrack guard's window on each CPU: new flows counted over the last second.
#[map]
static NEW_FLOW_WINDOW: PerCpuArray<NewFlowWindow> = PerCpuArray::with_max_entries(1, 0);
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
/// `xlb_icmp` at index 0, put there by the loader: ICMP is handled in a program of its
/// own (a tail call), whose stack does not add to this one's.
#[map]
static ICMP_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Ports backends answer from (bitmap): the reply path's cheap pre-filter.
#[map]
static REPLY_PORTS: Array<u64> = Array::with_max_entries(REPLY_PORT_WORDS, 0);
/// Interfaces (by ifindex, to themselves) where a packet that leaves by the
/// interface it came in on is redirected rather than sent with XDP_TX: the
/// daemon lists the veths it attached to in native mode. A veth's XDP_TX
/// leaves the frames in its peer's queue, unseen until something else wakes
/// that queue, unless the peer runs an XDP program; a redirect wakes it.
#[map]
static HAIRPIN_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_HAIRPIN_PORTS, 0);
/// Active connections of each backend slot: raised when a flow is assigned to
/// it ([`conn_opened`]), lowered once when the flow closes, expires or moves
/// ([`conn_closed`]). Shared by all CPUs (atomic adds); mmapable, so that the
/// daemon corrects it with atomics of its own (expired and evicted entries).
#[map]
static BACKEND_CONNS: Array<u64> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);
/// Idle timeout of each conntrack state (`ct::SYN` .. `ct::UDP`), in ticks;
/// 0: never expires. Written by the daemon from `[daemon] conntrack_timeout_*`.
#[map]
static CONNTRACK_TIMEOUTS: Array<u32> = Array::with_max_entries(ct::NUM_TIMEOUTS, 0);
/// The round_robin sequences and least_conn candidates of the services, `SCHED_REGION`
/// entries each (two halves, see `SCHED_HALF`), written by the daemon.
#[map]
static SCHED_SLOTS: Array<u32> = Array::with_max_entries(MAX_SERVICES * SCHED_REGION, 0);
/// Each CPU's turn in each round_robin service's sequence (least_conn: where its scan
/// starts), by `Service::id`.
#[map]
static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Source rules (`allow`, `deny`, `[daemon] deny`): an LPM trie keyed by scope (service id
/// or the daemon's) and source prefix, see `SourceRuleKey`. Looked up only for packets
/// without a usable conntrack entry, of services with `SERVICE_F_FIREWALL`.
#[map]
static SOURCE_RULES: LpmTrie<SourceRuleKey, u32> = LpmTrie::with_max_entries(MAX_SOURCE_RULES, 0);
/// New-flow token buckets per (service, source /32 or /64), of services with
/// `SERVICE_F_RATE_LIMIT`. Shared by all CPUs (a source's flows land on every CPU): updated
/// without atomics, so two CPUs racing on one source may each spend the same credit once.
#[map]
static NEW_FLOW_BUCKETS: LruHashMap<SourceBucketKey, TokenBucket> =
    LruHashMap::with_max_entries(NEW_FLOW_BUCKETS_ENTRIES, 0);

// ---------------------------------------------------------------- constants

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_LEN: usize = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// IPv4 flags and fragment offset (host order): MF flag and fragment offset.
const IPV4_MF_OR_OFFSET: u16 = 0x3fff;

/// IPv6 next-header numbers (IANA protocol numbers) that xlb recognises.
mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTIONS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// TCP header byte offsets: the data offset (in 32-bit words) is the high
/// nibble of byte 12, the flags are byte 13 (RFC 9293, 3.1).
const TCP_DATA_OFFSET: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// FIN, SYN, RST, PSH, ACK, URG: the control bits (CWR and ECE are ECN's).
const TCP_CONTROL: u8 = 0x3f;
/// Source port first, destination port second, in TCP and UDP alike.
const L4_SPORT: usize = 0;
const L4_DPORT: usize = 2;

/// Headers xlb reads end before this offset (Ethernet, one VLAN tag, IPv4
/// with options or IPv6, TCP or UDP): a larger offset is refused, which
/// also gives the verifier a bound on offsets computed from the packet.
const MAX_HEADER_OFFSET: usize = 0x1ff;

/// `TraceEvent::service` / `backend` when not known.
const NOT_KNOWN: u32 = u32::MAX;

// ---------------------------------------------------------------- outcomes

/// Why a packet is dropped: its `COUNTERS` index (and `TraceEvent::reason`),
/// named by `counter::DROP_NAMES`.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    Truncated = counter::DROP_TRUNCATED,
    Fragment = counter::DROP_FRAGMENT,
    Ipv6Extension = counter::DROP_IPV6_EXT,
    BadHeader = counter::DROP_BAD_HEADER,
    NoBackend = counter::DROP_NO_BACKEND,
    BadSource = counter::DROP_BAD_SOURCE,
    BadFlags = counter::DROP_BAD_FLAGS,
    IcmpTruncated = counter::DROP_ICMP_TRUNCATED,
    IcmpFragment = counter::DROP_ICMP_FRAGMENT,
    IcmpUnknownFlow = counter::DROP_ICMP_UNKNOWN_FLOW,
    PingRateLimited = counter::DROP_PING_RATE_LIMITED,
    Denied = counter::DROP_DENIED,
    RateLimited = counter::DROP_RATE_LIMITED,
    ClosedPort = counter::DROP_CLOSED_PORT,
    /// Counted with the encapsulation events, not a `drop_name` reason.
    EncapTooBig = counter::ENCAP_TOO_BIG,
    EncapNoSource = counter::ENCAP_NO_SOURCE,
}

/// Why a packet is handed to the kernel: its `COUNTERS` index.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Not for a VIP and not a tracked NAT reply: untouched.
    NotVip = counter::PASS_NOT_VIP,
    /// No route or neighbour for the next hop yet: the kernel resolves and forwards.
    NoRoute = counter::PASS_NO_ROUTE,
    /// The TTL or hop limit would expire: the kernel answers ICMP.
    TtlExpired = counter::PASS_TTL,
    /// ICMP to a VIP address that xlb leaves to the kernel.
    Icmp = counter::PASS_ICMP,
}

/// What is done with a packet that is not dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Sent on: XDP_TX or XDP_REDIRECT.
    Send(u32),
    /// Handed to the kernel (XDP_PASS).
    Pass(Pass),
}

/// How the packet's flow was found: the trace's `kind`. One bit each, so
/// that [`count_service`] adds to its counters without branching.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Not xlb's traffic: counted, not traced.
    None = 0,
    /// A usable conntrack entry: the flow follows its backend.
    Established = 1,
    /// No entry (or a TCP SYN): a Maglev pick that makes an entry.
    New = 2,
    /// An entry whose backend is no longer usable: picked again.
    Repicked = 4,
    /// A reply from a NAT backend.
    Reply = 8,
    /// Malformed and to a VIP address: refused before any lookup; or a new
    /// flow from a source no client can have.
    Refused = 16,
    /// A TCP packet of an unknown flow that is not a SYN: a Maglev pick
    /// without a conntrack entry.
    NonSyn = 32,
    /// ICMP handled by `icmp` (an error about a VIP flow, an echo request to a VIP).
    Icmp = 64,
    /// A new flow the conntrack guard did not track: a Maglev pick without an entry.
    Untracked = 128,
}

/// Everything decided about a packet; [`record`] writes it to the counters
/// and the trace.
struct Decision {
    flow: Flow,
    /// `Service::id`, for the service's and the backend's counters; `NOT_KNOWN`
    /// for replies and packets that are not a service's.
    service: u32,
    /// Backend slot; `NOT_KNOWN` when none was chosen.
    backend: u32,
    /// The XDP action returned.
    action: u32,
    /// The `COUNTERS` slot the packet counts in (a [`Reason`] when dropped, a
    /// [`Pass`] when passed, `REPLY_NAT` for a reply sent); `NOT_KNOWN`: none.
    counter: u32,
}

impl Decision {
    #[inline(always)]
    fn new(flow: Flow, service: u32, backend: u32, outcome: Result<Action, Reason>) -> Self {
        let (action, counter) = match outcome {
            Ok(Action::Send(a)) => (a, if flow == Flow::Reply { counter::REPLY_NAT } else { NOT_KNOWN }),
            Ok(Action::Pass(why)) => (xdp_action::XDP_PASS, why as u32),
            Err(reason) => (xdp_action::XDP_DROP, reason as u32),
        };
        Decision { flow, service, backend, action, counter }
    }

    #[inline(always)]
    fn pass(why: Pass) -> Self {
        Decision::new(Flow::None, NOT_KNOWN, NOT_KNOWN, Ok(Action::Pass(why)))
    }
}

// ---------------------------------------------------------------- packet access
//
// XDP hands the program a frame at an even address (drivers and the generic
// path reserve an even headroom), and every field xlb touches lies at an
// even offset from it: Ethernet is 14 bytes, a VLAN tag 4, the IPv4 header a
// multiple of 4, IPv6 40. So 8- and 16-bit fields are read and written in
// place, but a 32-bit field is only 2-aligned: behind the 14-byte Ethernet
// header or a VLAN tag an IPv4 address starts on a 2-byte boundary. Such
// fields are read and written as two 16-bit halves: a misaligned 32-bit
// access is not Rust, and an unaligned one (`read_unaligned`) costs a load per
// byte on BPF. (LLVM's `allows-misaligned-mem-access` feature would keep the
// words whole, but it also misaligns stack slots, which the verifier refuses.)
//
// Unlikely branches (refusals, no backend, no route, a trace being written)
// call `cold_path`: LLVM then lays the hot paths out in line, which matters
// when a packet finds the program's code out of the instruction cache.

/// The one bounds-checked accessor: the start of the `size_of::<T>()` bytes
/// at `off`, or `None` when the packet is shorter (or `off` is beyond any
/// header xlb reads). Its fields are read and written with `get*` / `put*`.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut u8> {
    if off > MAX_HEADER_OFFSET {
        core::hint::cold_path();
        return None;
    }
    let start = ctx.data();
    if start + off + mem::size_of::<T>() > ctx.data_end() {
        core::hint::cold_path();
        return None;
    }
    Some((start + off) as *mut u8)
}

// Safety of every `get*` / `put*` / `copy*` below: the bytes at `p + off` lie
// in a range `ptr_at` checked (or in a map value or on the stack), and
// `p + off` is even for the 16- and 32-bit ones.

#[inline(always)]
unsafe fn get8(p: *const u8, off: usize) -> u8 {
    // SAFETY: see above.
    unsafe { *p.add(off) }
}

/// A 16-bit field, in packet (network) order.
#[inline(always)]
unsafe fn get16(p: *const u8, off: usize) -> u16 {
    // SAFETY: see above.
    unsafe { p.add(off).cast::<u16>().read() }
}

#[inline(always)]
unsafe fn put8(p: *mut u8, off: usize, v: u8) {
    // SAFETY: see above.
    unsafe { *p.add(off) = v }
}

#[inline(always)]
unsafe fn put16(p: *mut u8, off: usize, v: u16) {
    // SAFETY: see above.
    unsafe { p.add(off).cast::<u16>().write(v) }
}

#[inline(always)]
unsafe fn put32(p: *mut u8, off: usize, v: u32) {
    let [a, b, c, d] = v.to_ne_bytes();
    // SAFETY: see above.
    unsafe {
        put16(p, off, u16::from_ne_bytes([a, b]));
        put16(p, off + 2, u16::from_ne_bytes([c, d]));
    }
}

/// Copies a MAC address in three 16-bit units: in the packet, in a map
/// value and on the stack a MAC is 2-aligned (`NextHop::smac` sits at byte 10).
#[inline(always)]
unsafe fn copy_mac(to: *mut u8, from: *const u8) {
    // SAFETY: see above, for both addresses.
    unsafe {
        put16(to, 0, get16(from, 0));
        put16(to, 2, get16(from, 2));
        put16(to, 4, get16(from, 4));
    }
}

/// Copies `halves` 16-bit units (an address: 2 for IPv4, 8 for IPv6) one by
/// one: loads of 16-bit units cannot be widened (the address is 2-aligned),
/// and building 32-bit words from them would only cost shifts.
#[inline(always)]
unsafe fn copy16(to: *mut u8, from: *const u8, halves: usize) {
    for i in 0..halves {
        // SAFETY: see above, for both addresses.
        unsafe { put16(to, 2 * i, get16(from, 2 * i)) };
    }
}

// ---------------------------------------------------------------- entry

// `#[inline(always)]`: the macro wraps this function in the program's entry;
// left to LLVM, it may become a BPF-to-BPF call.
#[xdp]
#[inline(always)]
pub fn xlb(ctx: XdpContext) -> u32 {
    #[cfg(feature = "upgrade-variant")]
    upgrade_variant_work();
    process_packet(&ctx)
}

/// The `upgrade-variant` build's extra work: one more map lookup whose result
/// is kept opaque to the compiler. Only the instruction count changes.
#[cfg(feature = "upgrade-variant")]
#[inline(always)]
fn upgrade_variant_work() {
    core::hint::black_box(SETTINGS.get(NUM_SETTINGS - 1).copied());
}

/// The benchmark floor: XDP_PASS without reading the packet. Loaded only by
/// the benchmarks, measured by the same harness as `xlb`.
#[xdp]
pub fn xlb_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// ICMP and ICMPv6 (see `icmp`), tail-called from `xlb` once its parse found a sound
/// IP header: read again (the first parse left no state), handled, recorded like
/// every packet.
#[xdp]
pub fn xlb_icmp(ctx: XdpContext) -> u32 {
    let Some(s) = icmp::scratch() else {
        return record(&ctx, &Parse::Kernel(Pass::Icmp), &Decision::pass(Pass::Icmp));
    };
    if !s.at.read(&ctx) {
        return record(&ctx, &Parse::Kernel(Pass::NotVip), &Decision::pass(Pass::NotVip));
    }
    let decision = icmp::handle(&ctx, s);
    record(&ctx, &Parse::Icmp(s.at.key), &decision)
}

/// Parse (what the packet is), classify (its service, backend and flow
/// state), act (rewrite and send, or hand to the kernel, or drop), record
/// (counters and trace, from the one [`Decision`]).
#[inline(always)]
fn process_packet(ctx: &XdpContext) -> u32 {
    let parsed = parse(ctx);
    let decision = match &parsed {
        Parse::Vip(pkt) => match classify(ctx, pkt) {
            Some(target) => send_to_backend(ctx, pkt, &target),
            // A VIP's port but not a service's (address, port, protocol).
            None if port_listed(&REPLY_PORTS, pkt.key.sport) => reply(ctx, pkt),
            None => closed_vip_port(pkt),
        },
        Parse::MaybeReply(pkt) => reply(ctx, pkt),
        // Most packets are not xlb's: recorded here, where the compiler
        // knows all of the decision, rather than after the other arms.
        Parse::Kernel(why) => return record(ctx, &parsed, &Decision::pass(*why)),
        Parse::Refused(why, _) => Decision::new(Flow::Refused, NOT_KNOWN, NOT_KNOWN, Err(*why)),
        Parse::Icmp(_) => {
            core::hint::cold_path();
            // SAFETY: a tail call with this program's own context; it returns only when
            // the slot is empty (an object loaded without `xlb_icmp`).
            unsafe { ICMP_PROG.tail_call(ctx, 0) };
            Decision::pass(Pass::Icmp)
        }
    };
    record(ctx, &parsed, &decision)
}

// ---------------------------------------------------------------- parse

/// What the parser learned about an IPv4/IPv6 TCP/UDP packet.
#[derive(Clone, Copy)]
struct Packet {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// IP total length (host order), for the FIB's MTU check.
    ip_len: u16,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
    /// TCP SYN without ACK, FIN or RST: a connection's first packet, the only
    /// TCP packet that makes a conntrack entry.
    syn: bool,
    /// TCP flags (byte 13); 0 for UDP.
    flags: u8,
    /// UDP over IPv4 without a checksum: it stays zero.
    csum_none: bool,
    key: FlowKey,
}

/// What a packet is, as far as parsing tells.
enum Parse {
    /// IPv4/IPv6 TCP/UDP to a port some service listens on.
    Vip(Packet),
    /// IPv4/IPv6 TCP/UDP from a port some NAT backend answers from (and not
    /// to a service's port): a NAT reply, or the kernel's.
    MaybeReply(Packet),
    /// Not xlb's: to the kernel untouched.
    Kernel(Pass),
    /// Malformed and to a VIP address: dropped. The key has no ports.
    Refused(Reason, FlowKey),
    /// ICMP (IPv4) or ICMPv6 with a sound IP header: see `icmp`.
    Icmp(FlowKey),
}

/// Reads the headers. Looks at maps (which addresses and ports are VIPs'),
/// writes nothing.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Parse {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parse::Kernel(Pass::NotVip);
    };
    let mut l3 = EthHdr::LEN;
    // SAFETY: ptr_at checked that the Ethernet header is in the packet.
    let mut ether_type = u16::from_be(unsafe { get16(eth, offset_of!(EthHdr, ether_type)) });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // One tag: TCI, then the encapsulated type.
        let Some(tag) = ptr_at::<[u16; 2]>(ctx, EthHdr::LEN) else {
            return Parse::Kernel(Pass::NotVip);
        };
        // SAFETY: ptr_at checked that the 4-byte tag is in the packet.
        ether_type = u16::from_be(unsafe { get16(tag, 2) });
        l3 += VLAN_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Parse::Kernel(Pass::NotVip),
    }
}

/// An IP header that carries TCP or UDP, as far as the L4 parser needs it.
struct Ip {
    /// The header, bounds-checked for its fixed part.
    hdr: *const u8,
    family: u8,
    proto: u8,
    ttl: u8,
    /// IP total length (host order).
    len: u16,
    l3: usize,
    l4: usize,
    /// Where the IP packet ends (`l3` + its total length): a frame may carry
    /// Ethernet padding after it.
    end: usize,
}

impl Ip {
    /// The flow's key without ports. Read only once the ports say the packet
    /// may be xlb's: most packets that are not never need it.
    #[inline(always)]
    fn key(&self) -> FlowKey {
        let mut key = FlowKey { proto: self.proto, family: self.family, ..FlowKey::default() };
        let (src, dst, halves) = if self.family == FAMILY_V4 {
            (offset_of!(Ipv4Hdr, src_addr), offset_of!(Ipv4Hdr, dst_addr), 2)
        } else {
            (offset_of!(Ipv6Hdr, src_addr), offset_of!(Ipv6Hdr, dst_addr), 8)
        };
        // SAFETY: ptr_at checked the fixed header, which holds both
        // addresses; the key's address words are 4-aligned.
        unsafe {
            copy16(key.src.as_mut_ptr().cast(), self.hdr.add(src), halves);
            copy16(key.dst.as_mut_ptr().cast(), self.hdr.add(dst), halves);
        }
        key
    }

    /// A packet xlb cannot handle: refused when its destination is a VIP
    /// address, the kernel's otherwise.
    #[inline(always)]
    fn refuse(&self, reason: Reason) -> Parse {
        core::hint::cold_path();
        let key = self.key();
        let addr = VipAddrKey { addr: key.dst, family: key.family, _pad: [0; 3] };
        // SAFETY: only whether the entry exists is used.
        match unsafe { VIP_ADDRS.get(addr) } {
            Some(_) => Parse::Refused(reason, key),
            None => Parse::Kernel(Pass::NotVip),
        }
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Parse {
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Parse::Kernel(Pass::NotVip);
    };
    // SAFETY: ptr_at checked that the 20-byte header is in the packet.
    let (vihl, len, frags, ttl, proto) = unsafe {
        (
            get8(hdr, offset_of!(Ipv4Hdr, vihl)),
            u16::from_be(get16(hdr, offset_of!(Ipv4Hdr, tot_len))),
            u16::from_be(get16(hdr, offset_of!(Ipv4Hdr, frags))),
            get8(hdr, offset_of!(Ipv4Hdr, ttl)),
            get8(hdr, offset_of!(Ipv4Hdr, proto)),
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Parse::Kernel(Pass::NotVip);
    }
    let ihl = ((vihl & 0x0f) as usize) << 2;
    let ip = Ip { hdr, family: FAMILY_V4, proto, ttl, len, l3, l4: l3 + ihl, end: l3 + len as usize };
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return ip.refuse(Reason::BadHeader);
    }
    if frags & IPV4_MF_OR_OFFSET != 0 {
        return ip.refuse(Reason::Fragment);
    }
    if (len as usize) < ihl || ctx.data() + ip.end > ctx.data_end() {
        return ip.refuse(Reason::Truncated);
    }
    if proto == PROTO_ICMP {
        core::hint::cold_path();
        return Parse::Icmp(ip.key());
    }
    parse_l4(ctx, &ip)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Parse {
    let Some(hdr) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Parse::Kernel(Pass::NotVip);
    };
    // SAFETY: ptr_at checked that the 40-byte header is in the packet.
    let (version, payload_len, next, hop_limit) = unsafe {
        (
            get8(hdr, offset_of!(Ipv6Hdr, vcf)) >> 4,
            u16::from_be(get16(hdr, offset_of!(Ipv6Hdr, payload_len))),
            get8(hdr, offset_of!(Ipv6Hdr, next_hdr)),
            get8(hdr, offset_of!(Ipv6Hdr, hop_limit)),
        )
    };
    let l4 = l3 + Ipv6Hdr::LEN;
    let len = payload_len.wrapping_add(Ipv6Hdr::LEN as u16);
    let ip = Ip { hdr, family: FAMILY_V6, proto: next, ttl: hop_limit, len, l3, l4, end: l4 + payload_len as usize };
    if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        // Extension headers (and fragments) are refused for VIPs; ICMPv6 and
        // anything else goes to the kernel.
        use next_header::*;
        return match next {
            FRAGMENT => ip.refuse(Reason::Fragment),
            HOP_BY_HOP | ROUTING | ESP | AUTH | DEST_OPTIONS | MOBILITY | HIP | SHIM6 => {
                ip.refuse(Reason::Ipv6Extension)
            }
            _ => Parse::Kernel(Pass::NotVip),
        };
    }
    if version != 6 {
        return ip.refuse(Reason::BadHeader);
    }
    if ctx.data() + ip.end > ctx.data_end() {
        return ip.refuse(Reason::Truncated);
    }
    if next == PROTO_ICMPV6 {
        core::hint::cold_path();
        return Parse::Icmp(ip.key());
    }
    parse_l4(ctx, &ip)
}

/// The TCP/UDP header, which must lie within the IP packet (its total
/// length, not the frame); its ports, then whether they make the packet xlb's
/// (a service's port, or a port NAT backends answer from); only then the
/// addresses.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, ip: &Ip) -> Parse {
    // Each header is checked against the frame (ptr_at: what the verifier
    // needs) before the IP length: checked first, the IP length would let
    // LLVM drop the frame check as implied, and the verifier cannot follow.
    let (ports, tcp_flags, csum_none) = if ip.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, ip.l4) else {
            return ip.refuse(Reason::Truncated);
        };
        // SAFETY: ptr_at checked that the 20-byte header is in the packet.
        let (ports, doff, flags) =
            unsafe { ([get16(tcp, L4_SPORT), get16(tcp, L4_DPORT)], get8(tcp, TCP_DATA_OFFSET), get8(tcp, TCP_FLAGS)) };
        // Data offset: the header's length in 32-bit words, options included
        // (at least 5: the check against the IP length covers the fixed header).
        let header = ((doff >> 4) as usize) << 2;
        if header < TcpHdr::LEN {
            return ip.refuse(Reason::BadHeader);
        }
        if ip.l4 + header > ip.end {
            return ip.refuse(Reason::Truncated);
        }
        (ports, Some(flags), false)
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, ip.l4) else {
            return ip.refuse(Reason::Truncated);
        };
        if ip.l4 + UdpHdr::LEN > ip.end {
            return ip.refuse(Reason::Truncated);
        }
        // SAFETY: ptr_at checked that the 8-byte header is in the packet.
        let (ports, len, check) = unsafe {
            (
                [get16(udp, L4_SPORT), get16(udp, L4_DPORT)],
                u16::from_be(get16(udp, offset_of!(UdpHdr, len))),
                get16(udp, offset_of!(UdpHdr, check)),
            )
        };
        if let Err(why) = udp_length(ip.l4, ip.end, len) {
            return ip.refuse(why);
        }
        (ports, None, ip.family == FAMILY_V4 && check == 0)
    };
    let [sport, dport] = ports;
    let vip = port_listed(&VIP_PORTS, dport);
    // With `closed_ports = "drop"` on, the daemon sets every `VIP_PORTS` bit: packets to any
    // port then go down the VIP path, where `closed_vip_port` refuses those to a VIP address.
    // So this path, the not-VIP one, costs nothing more while it is off.
    if !vip && !port_listed(&REPLY_PORTS, sport) {
        return Parse::Kernel(Pass::NotVip);
    }
    let (syn, flags) = match tcp_flags {
        Some(f) if vip && !tcp_flags_possible(f) => return ip.refuse(Reason::BadFlags),
        Some(f) => (f & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN, f),
        None => (false, 0),
    };
    let key = FlowKey { sport, dport, ..ip.key() };
    let pkt = Packet { l3: ip.l3, l4: ip.l4, ip_len: ip.len, ttl: ip.ttl, syn, flags, csum_none, key };
    if vip {
        Parse::Vip(pkt)
    } else {
        Parse::MaybeReply(pkt)
    }
}

/// Whether `key`'s destination is a VIP address with `closed_ports = "drop"`: out of line,
/// asked only while some address drops.
#[inline(never)]
fn closed_port_drops(key: &FlowKey) -> bool {
    let addr = VipAddrKey { addr: key.dst, family: key.family, _pad: [0; 3] };
    // SAFETY: the value is read once.
    matches!(unsafe { VIP_ADDRS.get(addr) }, Some(f) if *f & VIP_ADDR_F_CLOSED_DROP != 0)
}

/// Whether a TCP segment's flags (byte 13) can occur at all: some control bit
/// set, and SYN never with FIN or RST. Checked for segments to a service's
/// port, in every state of the flow.
#[inline(always)]
fn tcp_flags_possible(flags: u8) -> bool {
    let syn_with_end = flags & TCP_SYN != 0 && flags & (TCP_FIN | TCP_RST) != 0;
    flags & TCP_CONTROL != 0 && !syn_with_end
}

/// The UDP length field against the IP packet: at least the 8-byte header
/// (else `BadHeader`) and no more than the IP length leaves after the IP
/// header (else `Truncated`). Shorter than that is allowed: the bytes after
/// the datagram are not its own, and the checksum update does not read them.
#[inline(always)]
fn udp_length(l4: usize, end: usize, len: u16) -> Result<(), Reason> {
    if (len as usize) < UdpHdr::LEN {
        return Err(Reason::BadHeader);
    }
    if l4 + len as usize > end {
        return Err(Reason::Truncated);
    }
    Ok(())
}

/// Whether `port` (network order) is set in the port bitmap `ports`: two
/// array reads (inlined by the verifier) instead of a hash lookup.
#[inline(always)]
fn port_listed(ports: &Array<u64>, port: u16) -> bool {
    let (word, bit) = reply_port_bit(u16::from_be(port));
    match ports.get(word) {
        Some(w) => *w & bit != 0,
        None => {
            core::hint::cold_path();
            false
        }
    }
}

// ---------------------------------------------------------------- classify

/// Where a VIP packet goes.
struct Target {
    svc: &'static Service,
    flow: Flow,
    /// Slot and backend; else why the packet is dropped: the service has no
    /// usable backend for it, or a new flow's source is impossible.
    backend: Result<(u32, &'static Backend), Reason>,
}

/// The service, backend and flow state of a packet to a service port: a
/// flow with a usable conntrack entry (backend usable, entry not expired)
/// follows its backend (whose service is the flow's: one hash lookup per
/// packet), and its TCP state moves on ([`follow`]); any other packet looks
/// its VIP up in `SERVICES` for a Maglev pick. Only a TCP SYN or a UDP
/// datagram makes (or a re-pick replaces) a conntrack entry: other TCP
/// packets of an unknown (or expired) flow are picked statelessly, so that a
/// flow whose entry was lost (or that moved here from another lb) stays on
/// its Maglev backend. `None`: no service at this (address, port, protocol).
#[inline(always)]
fn classify(ctx: &XdpContext, pkt: &Packet) -> Option<Target> {
    let now = now_ticks();
    // A TCP SYN opens a connection: it is picked without looking (as in
    // Katran), which saves a lookup that would miss; its insert finds an
    // entry of the same 5-tuple if there is one ([`track`]).
    let found = if pkt.syn { None } else { ct_lookup(&pkt.key) };
    let mut stale = None;
    if let Some(st) = found {
        match usable(st, pkt.key.proto, now) {
            Ok((idx, be, svc)) => {
                follow(st, pkt, svc, now);
                return Some(Target { svc, flow: Flow::Established, backend: Ok((idx, be)) });
            }
            Err(expired) => stale = Some((st, expired)),
        }
    }
    let vip = VipKey { addr: pkt.key.dst, port: pkt.key.dport, proto: pkt.key.proto, family: pkt.key.family };
    // SAFETY: services are replaced whole by the daemon; a packet reads one.
    let svc = unsafe { SERVICES.get(vip) }?;
    if bad_source(&pkt.key) {
        core::hint::cold_path();
        return Some(Target { svc, flow: Flow::Refused, backend: Err(Reason::BadSource) });
    }
    let tcp_non_syn = pkt.key.proto == PROTO_TCP && !pkt.syn;
    // The firewall before the entry is retired or the guard counts the flow:
    // a refused packet changes nothing. The rate limit counts first packets
    // (no entry, or an expired one), whether the guard tracks them or not.
    if svc.flags & (SERVICE_F_FIREWALL | SERVICE_F_RATE_LIMIT) != 0 {
        let first = !tcp_non_syn && stale.is_none_or(|(_, expired)| expired);
        if let Err(why) = admit(svc, &pkt.key, first) {
            return Some(Target { svc, flow: Flow::Refused, backend: Err(why) });
        }
    }
    let (flow, track) = match stale {
        Some((st, expired)) => {
            core::hint::cold_path();
            // The entry is not followed: its count falls (once), and the
            // packet that marks it replaced makes the new entry.
            let won = retire(st);
            match (expired, tcp_non_syn) {
                (true, true) => (Flow::NonSyn, Track::No),
                (true, false) => (Flow::New, if won { Track::Replace } else { Track::No }),
                (false, _) => (Flow::Repicked, if won { Track::Replace } else { Track::No }),
            }
        }
        None if tcp_non_syn => (Flow::NonSyn, Track::No),
        // The guard decides before any scheduler: a flow it does not track is
        // Maglev's (`pick` with `track == false`), so its later packets, which
        // find no entry, go statelessly to the same backend.
        None if guard_admits() => (Flow::New, Track::Insert),
        None => (Flow::Untracked, Track::No),
    };
    let backend = match pick(pkt, svc, track != Track::No) {
        Some((idx, be)) => match track {
            Track::No => Ok((idx, be)),
            _ => return Some(tracked_pick(ctx, pkt, svc, flow, idx, be, track, now)),
        },
        None => Err(Reason::NoBackend),
    };
    Some(Target { svc, flow, backend })
}

/// Whether (and how) a pick makes a conntrack entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Track {
    No,
    /// No entry was found: insert unless one exists (another CPU's, or a
    /// retransmitted SYN's).
    Insert,
    /// This packet retired the entry: it replaces it.
    Replace,
}

/// Makes the entry of a picked flow and counts it on its backend. A SYN or
/// datagram that finds an entry of its 5-tuple (another CPU made it, or a
/// retransmitted SYN) follows that entry while it is usable and open: a flow
/// is counted once however many of its first packets arrive.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tracked_pick(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &'static Service,
    flow: Flow,
    idx: u32,
    be: &'static Backend,
    track: Track,
    now: u32,
) -> Target {
    let nat = svc.flags & SERVICE_F_DSR == 0;
    let reply_hop = if nat { reply_hop(ctx) } else { NextHop::default() };
    let state = FlowState { backend: idx, generation: be.generation, reply_hop, state: 0, seen: now, _pad: 0 };
    // A full bucket gives up its least valuable entry ([`ct_insert`]); the
    // insert fails when the entry exists, or (rarely) when another CPU is
    // writing the slot: the flow is then forwarded without an entry.
    match ct_insert(&pkt.key, &state, track == Track::Replace) {
        Ok(()) => conn_opened(idx),
        Err(Some(st)) => {
            core::hint::cold_path();
            match existing_entry(st, &pkt.key, &state) {
                Ok((i, b, s)) => return Target { svc: s, flow: Flow::Established, backend: Ok((i, b)) },
                // This packet retired it: its entry replaces it.
                Err(true) => {
                    if ct_insert(&pkt.key, &state, true).is_ok() {
                        conn_opened(idx);
                    }
                }
                Err(false) => {}
            }
        }
        Err(None) => core::hint::cold_path(),
    }
    if nat && be.flags & BACKEND_F_SHARED != 0 {
        insert_reverse(pkt, be, idx, reply_hop);
    }
    Target { svc, flow, backend: Ok((idx, be)) }
}

/// A first packet (SYN, datagram) whose insert found an entry of its 5-tuple:
/// the entry's backend while it is usable and open (a retransmitted SYN,
/// another CPU's first packet of the flow); else (a reused 5-tuple, an entry
/// not to follow) `Err(true)` for the packet that retires it, which then
/// replaces it (`Err(false)` for the others). Out of line (a BPF-to-BPF
/// call): rare, and its locals stay off the packet path's stack.
#[inline(never)]
fn existing_entry(
    st: *mut FlowState,
    key: &FlowKey,
    state: &FlowState,
) -> Result<(u32, &'static Backend, &'static Service), bool> {
    // SAFETY: a live map value; `state` only through atomics.
    let open = unsafe { state_bits(st) } & (ct::ENDING | ct::REPLACED) == 0;
    match usable(st, key.proto, state.seen) {
        Ok(found) if open => Ok(found),
        _ => Err(retire(st)),
    }
}

// ---------------------------------------------------------------- conntrack table

/// A flow key as five u64 words, for [`same_key`].
type Key64 = [u64; 5];

/// `k` as [`Key64`]: read once per search, held in registers.
#[inline(always)]
fn key64(k: &FlowKey) -> Key64 {
    let p = (k as *const FlowKey).cast::<u32>();
    // SAFETY: a whole FlowKey: ten 4-aligned u32 words, paired as a u64 is
    // laid out (little-endian).
    let w = |i: usize| unsafe { p.add(2 * i).read() as u64 | (p.add(2 * i + 1).read() as u64) << 32 };
    [w(0), w(1), w(2), w(3), w(4)]
}

/// Whether the key of a `CONNTRACK` slot is `k`: the five words compared
/// without a branch each (branches multiply the verifier's paths).
#[inline(always)]
fn same_key(slot: *const FlowKey, k: &Key64) -> bool {
    // A slot's key starts it, and slots are 8-aligned (`CtSlot` holds u64s).
    let a = slot.cast::<u64>();
    let mut diff = 0u64;
    let mut i = 0;
    while i < 5 {
        // SAFETY: a whole FlowKey of a live slot.
        diff |= unsafe { a.add(i).read() } ^ k[i];
        i += 1;
    }
    diff == 0
}

/// The first slot of `k`'s bucket, the bucket's slots and tags, and `k`'s tag.
#[inline(always)]
fn ct_base(k: &FlowKey) -> Option<(u32, *mut CtSlot, *mut u32, u32)> {
    let h = flow_hash(k);
    // SAFETY: a plain read of read-only data.
    let base = ct_bucket_of(h, unsafe { (&raw const CT_SLOTS).read_volatile() });
    let b = CONNTRACK.get_ptr_mut(base / CT_WAYS)?;
    // SAFETY: the fields of a live bucket.
    let (slots, tags) = unsafe { ((&raw mut (*b).slots).cast::<CtSlot>(), (&raw mut (*b).tags).cast::<u32>()) };
    Some((base, slots, tags, ct_tag_of(h)))
}

/// The state of slot `i` (a slot number, as `xlb_ct_find` answers).
#[inline(always)]
fn ct_state(i: u32) -> Option<*mut FlowState> {
    let b = CONNTRACK.get_ptr_mut(i / CT_WAYS)?;
    // Read after the null check (a volatile load is not hoisted above it):
    // else LLVM adds the slot's offset to a pointer the verifier still
    // holds possibly null.
    let way = i % CT_WAYS;
    // SAFETY: a local; then slot `way` of a live bucket.
    unsafe {
        let way = (&raw const way).read_volatile() & (CT_WAYS - 1);
        Some(&raw mut (*(&raw mut (*b).slots).cast::<CtSlot>().add(way as usize)).state)
    }
}

/// `xlb_ct_find`'s and `xlb_ct_insert`'s answer: no entry, or a writer holds the slot.
const CT_NONE: u32 = u32::MAX;
/// `xlb_ct_insert`'s answer: written.
const CT_WRITTEN: u32 = u32::MAX - 1;

/// The conntrack entry of flow `k`: the state of the slot of its bucket that
/// holds its key, unless a writer holds that slot.
#[inline(always)]
fn ct_lookup(k: &FlowKey) -> Option<*mut FlowState> {
    match xlb_ct_find(k) {
        CT_NONE => None,
        i => ct_state(i),
    }
}

/// The slot of `k`'s entry, or `CT_NONE`. A global function: the verifier
/// checks it once, not once per path that reaches it (the program is near
/// its limit of a million instructions checked).
#[no_mangle]
#[inline(never)]
pub extern "C" fn xlb_ct_find(k: *const FlowKey) -> u32 {
    // SAFETY: the caller's key, or null (a global function's pointer may be null to the verifier).
    let Some(k) = (unsafe { k.as_ref() }) else { return CT_NONE };
    let Some((base, bucket, tags, tag)) = ct_base(k) else { return CT_NONE };
    let k64 = key64(k);
    let mut i = 0;
    let ways = ct_ways();
    while i < ways && i < CT_WAYS {
        // SAFETY: a slot of a live bucket, and its tag.
        let s = unsafe { bucket.add(i as usize) };
        // SAFETY: as above.
        if unsafe { tags.add(i as usize).read_volatile() } == tag && same_key(unsafe { &raw const (*s).key }, &k64) {
            // SAFETY: as above.
            return if unsafe { state_bits(&raw mut (*s).state) } & ct::BUSY == 0 { base + i } else { CT_NONE };
        }
        i += 1;
    }
    CT_NONE
}

/// Writes the entry of flow `k` into its bucket: into the slot holding `k`
/// when `replace` (a retired entry), else into the slot least worth keeping
/// ([`ct::victim_rank`]). `Err(Some(state))`: `k` has an entry and `replace`
/// is false; `Err(None)`: another writer holds the slot.
///
/// The slot is claimed by swapping its state for `ct::BUSY` (compare-exchange)
/// and published by swapping `state.state` in last. An evicted entry that
/// still counted on its backend is uncounted here, by the claim that took it
/// (exactly once: a late packet of that flow finds `BUSY` in `close`).
#[inline(always)]
fn ct_insert(k: &FlowKey, state: &FlowState, replace: bool) -> Result<(), Option<*mut FlowState>> {
    match xlb_ct_insert(k, state, replace as u32) {
        CT_WRITTEN => Ok(()),
        CT_NONE => Err(None),
        i => Err(ct_state(i)),
    }
}

/// [`ct_insert`]'s work: `CT_WRITTEN`, `CT_NONE` (a writer holds the slot),
/// or the slot of `k`'s entry (it exists and `replace` is 0). A global
/// function, as [`xlb_ct_find`].
#[no_mangle]
#[inline(never)]
pub extern "C" fn xlb_ct_insert(k: *const FlowKey, state: *const FlowState, replace: u32) -> u32 {
    // SAFETY: the caller's key and state, or null (see `xlb_ct_find`).
    let (Some(k), Some(state)) = (unsafe { k.as_ref() }, unsafe { state.as_ref() }) else { return CT_NONE };
    let Some((base, bucket, tags, tag)) = ct_base(k) else { return CT_NONE };
    let k64 = key64(k);
    // The victim as an index, not a pointer: fewer states for the verifier.
    let (mut victim, mut best) = (u32::MAX, 0u64);
    let mut i = 0;
    let ways = ct_ways();
    while i < ways && i < CT_WAYS {
        // SAFETY: the tag of a slot of a live bucket.
        let t = unsafe { tags.add(i as usize).read_volatile() };
        if t == 0 {
            // An empty slot (its tag is cleared last): the victim. The others
            // are read only if their tag may be `k`'s.
            if best != u64::MAX {
                (victim, best) = (i, u64::MAX);
            }
            i += 1;
            continue;
        }
        if t != tag && best == u64::MAX {
            i += 1;
            continue;
        }
        // SAFETY: a slot of a live bucket.
        let s = unsafe { bucket.add(i as usize) };
        // SAFETY: a live array element; its state word read atomically, the
        // rest plain words a writer may be changing (a rank is a guess).
        let (st, bits) = unsafe { (&raw mut (*s).state, state_bits(&raw mut (*s).state)) };
        // SAFETY: as above.
        if t == tag && same_key(unsafe { &raw const (*s).key }, &k64) {
            if replace == 0 && bits & ct::BUSY == 0 {
                return base + i;
            }
            victim = i;
            break;
        }
        if best != u64::MAX {
            // SAFETY: as above.
            let rank = unsafe { ct::victim_rank((*s).key.family, (*s).key.proto, bits, (*st).seen, state.seen) };
            if rank > best {
                (victim, best) = (i, rank);
            }
        }
        i += 1;
    }
    if victim >= CT_WAYS {
        return CT_NONE;
    }
    // SAFETY: a slot of a live bucket.
    let s = unsafe { bucket.add(victim as usize) };
    // SAFETY: a live array element; `state` only through atomics while claimed.
    unsafe {
        let word = &raw mut (*s).state.state;
        let old = word.read_volatile();
        if old & ct::BUSY != 0
            || !atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(word, old, ct::BUSY).1
        {
            return CT_NONE;
        }
        if (*s).key.family != 0 && old & ct::CLOSED == 0 {
            // An evicted flow that still counted.
            let (slot, generation) = ((*s).state.backend, (*s).state.generation);
            if matches!(BACKENDS.get(slot), Some(be) if be.generation == generation) {
                conn_closed(slot);
            }
            // A flow still open (a SYN flood's eviction can take a handshake
            // in progress) goes on without an entry, as Maglev's: its NAT
            // replies must still be translated.
            let t = timeout((*s).key.proto, old);
            if old & ct::REPLACED == 0 && !ct::expired(state.seen, (*s).state.seen, t) {
                untracked_from(state.seen);
                if let Some(c) = COUNTERS.get_ptr_mut(counter::CT_EVICTED) {
                    *c += 1;
                }
            }
        }
        // Field by field: no copy of the whole slot on the (small) stack.
        let (dst, src) = ((&raw mut (*s).key).cast::<u32>(), (k as *const FlowKey).cast::<u32>());
        let mut w = 0;
        while w < mem::size_of::<FlowKey>() / 4 {
            dst.add(w).write_volatile(src.add(w).read());
            w += 1;
        }
        let d = &raw mut (*s).state;
        (*d).backend = state.backend;
        (*d).generation = state.generation;
        (*d).reply_hop = state.reply_hop;
        (*d).seen = state.seen;
        (*d)._pad = 0;
        atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(word, state.state);
        tags.add(victim as usize).write_volatile(tag);
    }
    CT_WRITTEN
}

/// The conntrack clock (`SETTINGS[SETTING_CT_CLOCK]`, ticks of `CLOCK_MONOTONIC`
/// written by the daemon): an inlined array read, where `bpf_ktime_get_ns`
/// is a helper call that cost about 30 ns per established packet on the
/// benchmark machine.
#[inline(always)]
fn now_ticks() -> u32 {
    match SETTINGS.get(SETTING_CT_CLOCK) {
        Some(t) => *t,
        None => 0,
    }
}

/// An entry's state bits (an aligned u64: read whole; every writer of
/// `state` uses atomics, the daemon only deletes entries).
///
/// # Safety
/// `st` points at a live `CONNTRACK` value.
#[inline(always)]
unsafe fn state_bits(st: *mut FlowState) -> u64 {
    // SAFETY: see above.
    unsafe { (&raw const (*st).state).read_volatile() }
}

/// Adds `bits` to an entry's state (an atomic fetch-or); returns the bits before.
#[inline(always)]
fn mark(st: *mut FlowState, bits: u64) -> u64 {
    // SAFETY: `st` is a live CONNTRACK value (from a lookup this packet made);
    // `state` is an 8-aligned u64.
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).state, bits) }
}

/// Closes an entry: the packet whose fetch-or adds `ct::CLOSED` lowers its
/// backend's count, exactly once over all CPUs (the bits are only added).
/// Returns the bits before.
#[inline(always)]
fn close(st: *mut FlowState, extra: u64) -> u64 {
    let old = mark(st, ct::CLOSED | extra);
    if old & ct::BUSY != 0 {
        // The slot was taken for another flow after this packet found it:
        // whoever took it uncounted this flow.
        return old | ct::CLOSED | ct::REPLACED;
    }
    if old & ct::CLOSED != 0 {
        return old;
    }
    // SAFETY: as in `mark`; plain fields written only when the entry was made.
    let (slot, generation) = unsafe { ((*st).backend, (*st).generation) };
    // Only while the slot still holds the backend the entry counted on: a
    // reused slot starts from 0.
    if matches!(BACKENDS.get(slot), Some(be) if be.generation == generation) {
        conn_closed(slot);
    }
    old
}

/// An entry that is not followed any more (expired, or its backend is not
/// usable): closed, and marked replaced. Whether this packet marked it (and
/// so makes the entry that replaces it).
#[inline(always)]
fn retire(st: *mut FlowState) -> bool {
    close(st, ct::REPLACED) & ct::REPLACED == 0
}

/// One more active connection on backend `slot` (a flow assigned to it).
#[inline(always)]
pub fn conn_opened(slot: u32) {
    if let Some(p) = BACKEND_CONNS.get_ptr_mut(slot) {
        // SAFETY: a u64 in the array's data, 8-aligned; all writers use atomics.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// One active connection fewer on backend `slot`: called exactly once per
/// counted flow (see [`close`]).
#[inline(always)]
pub fn conn_closed(slot: u32) {
    if let Some(p) = BACKEND_CONNS.get_ptr_mut(slot) {
        // SAFETY: as in `conn_opened`.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// The idle timeout (ticks) of an entry of protocol `proto` in state `bits`; 0: none.
#[inline(always)]
fn timeout(proto: u8, bits: u64) -> u32 {
    match CONNTRACK_TIMEOUTS.get(ct::timeout_index(proto, bits)) {
        Some(t) => *t,
        None => 0,
    }
}

/// A tracked flow's backend and service, while the entry may be followed:
/// its backend usable ([`tracked_backend`]) and the entry not expired.
/// `Err(expired)` otherwise.
#[inline(always)]
fn usable(st: *mut FlowState, proto: u8, now: u32) -> Result<(u32, &'static Backend, &'static Service), bool> {
    // SAFETY: a live map value; `state` read atomically, `seen` is a plain
    // word any packet of the flow may refresh (a torn read is impossible
    // for an aligned u32).
    let (bits, seen) = unsafe { (state_bits(st), (*st).seen) };
    if ct::expired(now, seen, timeout(proto, bits)) {
        core::hint::cold_path();
        return Err(true);
    }
    // SAFETY: as above.
    tracked_backend(unsafe { &*st }).ok_or(false)
}

/// A packet of a followed flow moves its entry on: refreshes its last-seen
/// time (at most every 1/8 of the state's timeout, so that busy flows do not
/// write the shared entry on every packet; and on every change of state, so
/// that a shorter timeout counts from the change) and its TCP state: the
/// client's ACK establishes a SYN-only flow; its FIN closes a DSR flow (xlb
/// sees no more of it) and half-closes a NAT flow (closed once the backend's
/// FIN passes too, [`reply_end`]); a RST closes.
#[inline(always)]
fn follow(st: *mut FlowState, pkt: &Packet, svc: &Service, now: u32) {
    // SAFETY: a live map value (see `usable`).
    let (bits, seen) = unsafe { (state_bits(st), (*st).seen) };
    let f = pkt.flags;
    if f & (TCP_FIN | TCP_RST) != 0 {
        core::hint::cold_path();
        if f & TCP_RST != 0 {
            close(st, ct::RST);
        } else if svc.flags & SERVICE_F_DSR != 0 || mark(st, ct::FIN_CLIENT) & ct::FIN_BACKEND != 0 {
            close(st, ct::FIN_CLIENT);
        }
    } else if f & TCP_ACK != 0 && bits & ct::ESTABLISHED == 0 && pkt.key.proto == PROTO_TCP {
        core::hint::cold_path();
        mark(st, ct::ESTABLISHED);
    } else if now.wrapping_sub(seen) <= timeout(pkt.key.proto, bits) >> 3 {
        return;
    }
    // SAFETY: as above: an aligned u32 store.
    unsafe { (*st).seen = now };
}

/// A NAT reply's FIN or RST: the backend's half of the close. Refreshes the
/// entry's last-seen time: its (closing) timeout counts from here.
#[inline(always)]
fn reply_end(st: *mut FlowState, flags: u8, now: u32) {
    if flags & TCP_RST != 0 {
        close(st, ct::RST);
    } else if mark(st, ct::FIN_BACKEND) & ct::FIN_CLIENT != 0 {
        close(st, ct::FIN_BACKEND);
    }
    // SAFETY: `st` is a live map value; an aligned u32 store.
    unsafe { (*st).seen = now };
}

/// Katran's conntrack guard: whether this CPU may still make a conntrack
/// entry for a new flow. Each CPU counts its new flows over one-second
/// windows; past `SETTINGS[SETTING_GUARD]` of them (0: no limit) the rest of
/// the window's new flows are forwarded by Maglev, which is stateless, without
/// an entry, so that a flood of spoofed SYNs cannot evict the established
/// flows' entries from the LRU. A window's first refusal is counted as an
/// activation here (the only counter written outside [`record`]: it belongs
/// to the window, not to a packet).
#[inline(always)]
fn guard_admits() -> bool {
    let rate = match SETTINGS.get(SETTING_GUARD) {
        Some(r) if *r != 0 => *r as u64,
        _ => return true,
    };
    let Some(w) = NEW_FLOW_WINDOW.get_ptr_mut(0) else {
        core::hint::cold_path();
        return true;
    };
    // The conntrack clock (an array read) rather than a helper call; without a
    // daemon to advance it (0), the kernel's clock in the same ticks.
    let now = match now_ticks() {
        // SAFETY: a helper call without arguments.
        0 => (unsafe { bpf_ktime_get_ns() } >> ct::TICK_SHIFT) as u32,
        t => t,
    };
    // SAFETY: `w` is this CPU's slot, which only this CPU writes while the program runs.
    unsafe {
        if now.wrapping_sub((*w).start_tick) >= GUARD_WINDOW_TICKS {
            (*w).start_tick = now;
            (*w).flows = 0;
        }
        (*w).flows += 1;
        if (*w).flows <= rate {
            return true;
        }
        core::hint::cold_path();
        if (*w).flows == rate + 1 {
            if let Some(c) = COUNTERS.get_ptr_mut(counter::GUARD_ACTIVATIONS) {
                *c += 1;
            }
            untracked_from(now_ticks());
        }
    }
    false
}

/// From `now` on (for an established timeout) some open flows have no entry:
/// their NAT replies are recognised by their Maglev pick ([`untracked_reply`]).
#[inline(always)]
fn untracked_from(now: u32) {
    if let Some(t) = SETTINGS.get_ptr_mut(SETTING_UNTRACKED_SEEN) {
        // SAFETY: an aligned u32 store into a live array element.
        unsafe { *t = now.max(1) };
    }
}

/// Whether a new flow's source is one no client can have: unspecified,
/// loopback, multicast, limited broadcast (IPv4: 0.0.0.0/8, 127.0.0.0/8,
/// 224.0.0.0/4, 255.255.255.255; IPv6: ::, ::1, ff00::/8, ::ffff:0:0/96),
/// or a VIP address. Asked only for packets without a usable conntrack
/// entry: an established flow never had such a source. Out of line (a
/// BPF-to-BPF call): only new flows ask, and the packet path stays short.
#[inline(never)]
fn bad_source(k: &FlowKey) -> bool {
    let w = k.src;
    let first = w[0].to_ne_bytes()[0];
    let martian = if k.family == FAMILY_V4 {
        first == 0 || first == 127 || first & 0xf0 == 0xe0 || w[0] == u32::MAX
    } else {
        let zero_64 = w[0] == 0 && w[1] == 0;
        let v4_mapped = zero_64 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        let unspecified_or_loopback = zero_64 && w[2] == 0 && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]));
        first == 0xff || v4_mapped || unspecified_or_loopback
    };
    if martian {
        return true;
    }
    let addr = VipAddrKey { addr: k.src, family: k.family, _pad: [0; 3] };
    // SAFETY: only whether the entry exists is used.
    unsafe { VIP_ADDRS.get(addr) }.is_some()
}

/// The firewall, for a packet without a usable conntrack entry (established flows never get
/// here, so a reload that denies a source leaves its established flows alone): the source's
/// `[daemon] deny` and the service's longest matching rule (`SOURCE_RULES`; deny wins at
/// equal length because the loader stores one rule per prefix), then, for a flow's first
/// packet (`new`), its source's token bucket. Out of line: services without rules never call it.
#[inline(never)]
fn admit(svc: &Service, k: &FlowKey, new: bool) -> Result<(), Reason> {
    let flags = svc.flags;
    if flags & SERVICE_F_FIREWALL != 0 {
        let daemon = if k.family == FAMILY_V4 { SCOPE_DAEMON_V4 } else { SCOPE_DAEMON_V6 };
        let key = LpmKey::new(32 + 128, SourceRuleKey { scope: daemon.to_be(), addr: k.src });
        if SOURCE_RULES.get(&key).is_some() {
            // Daemon-wide rules are all denies.
            return Err(Reason::Denied);
        }
        let key = LpmKey::new(32 + 128, SourceRuleKey { scope: svc.id.to_be(), addr: k.src });
        let denied = match SOURCE_RULES.get(&key) {
            Some(rule) => *rule == RULE_DENY,
            None => flags & SERVICE_F_ALLOW_LIST != 0,
        };
        if denied {
            count_refusal(svc.id, Reason::Denied);
            return Err(Reason::Denied);
        }
    }
    if new && flags & SERVICE_F_RATE_LIMIT != 0 && !take_token(svc, k) {
        count_refusal(svc.id, Reason::RateLimited);
        return Err(Reason::RateLimited);
    }
    Ok(())
}

/// The service's own count of a refusal (`ServiceStats::denied`, `rate_limited`).
#[inline(always)]
fn count_refusal(service: u32, why: Reason) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        unsafe {
            if why == Reason::Denied {
                (*s).denied += 1;
            } else {
                (*s).rate_limited += 1;
            }
        }
    }
}

/// Spends one new flow's credit from the source's bucket (IPv4 /32, IPv6 /64). Credit is kept
/// in nanoseconds: it grows with time up to `flow_burst` flows' worth, each flow costs
/// `flow_cost_ns` (1e9 / rate): no division or multiplication by the rate on the packet path.
/// An unknown source starts with a full bucket.
#[inline(always)]
fn take_token(svc: &Service, k: &FlowKey) -> bool {
    let cost = svc.flow_cost_ns as u64;
    let full = cost * svc.flow_burst as u64;
    let v6 = k.family == FAMILY_V6;
    let key = SourceBucketKey { service: svc.id, addr: [k.src[0], if v6 { k.src[1] } else { 0 }, 0, 0] };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(b) = NEW_FLOW_BUCKETS.get_ptr_mut(key) else {
        if full < cost {
            return false;
        }
        let _ = NEW_FLOW_BUCKETS.insert(key, TokenBucket { tokens: full - cost, last_ns: now }, 0);
        return true;
    };
    // SAFETY: an LRU value: another CPU may write it meanwhile (see `NEW_FLOW_BUCKETS`).
    unsafe {
        let last = (*b).last_ns;
        let elapsed = now.saturating_sub(last);
        let credit = ((*b).tokens + elapsed.min(full)).min(full);
        (*b).last_ns = now;
        if credit < cost {
            (*b).tokens = credit;
            return false;
        }
        (*b).tokens = credit - cost;
    }
    true
}

/// The backend of a tracked flow and its service, while that backend is
/// usable: up, and still the one the entry was made for (same generation).
/// Such a backend belongs to the service of the flow's VIP: backends never
/// change service, a removed one is cleared and a reused slot gets a new
/// generation.
#[inline(always)]
fn tracked_backend(st: &FlowState) -> Option<(u32, &'static Backend, &'static Service)> {
    let Some(be) = BACKENDS.get(st.backend) else {
        core::hint::cold_path();
        return None;
    };
    if be.flags & BACKEND_F_UP == 0 || be.generation != st.generation {
        core::hint::cold_path();
        return None;
    }
    let Some(svc) = SERVICES_BY_ID.get(be.service) else {
        core::hint::cold_path();
        return None;
    };
    Some((st.backend, be, svc))
}

/// A Maglev pick, `ring[service][hash(flow) % M]`, for a flow without a
/// usable conntrack entry; makes or replaces the entry when `track`. `None`:
/// no usable backend in that slot. A pick with `track == false` (a non-SYN
/// of an unknown flow, a flow the guard does not track) must stay Maglev's
/// whatever the service's scheduler: nothing remembers it.
#[inline(always)]
fn pick(pkt: &Packet, svc: &Service, track: bool) -> Option<(u32, &'static Backend)> {
    if svc.table_size == 0 {
        return None;
    }
    // The scheduler decides a tracked flow's first packet; untracked packets (a TCP
    // packet of an unknown flow that is not a SYN) keep the stateless Maglev pick.
    let idx = if track && svc.flags & (SERVICE_F_ROUND_ROBIN | SERVICE_F_LEAST_CONN) != 0 {
        schedule(svc)?
    } else {
        let slot = svc.ring_offset + flow_hash(&pkt.key) % svc.table_size;
        *RING.get(slot)?
    };
    if idx == NO_BACKEND {
        return None;
    }
    let be = BACKENDS.get(idx)?;
    if be.flags & BACKEND_F_UP == 0 {
        return None;
    }
    Some((idx, be))
}

/// The backend slot a round_robin or least_conn service gives a new flow: the next
/// in this CPU's walk of its sequence, or the candidate with the fewest active
/// connections per weight. One function, so that a caller may bypass it (Maglev).
#[inline(always)]
fn schedule(svc: &Service) -> Option<u32> {
    let len = svc.sched_len;
    if len == 0 {
        core::hint::cold_path();
        return None;
    }
    // Per CPU: no shared line bouncing between cores on every new flow; each CPU
    // walks the smooth sequence on its own (see the README for the tolerance).
    let cur = RR_CURSORS.get_ptr_mut(svc.id)?;
    // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
    let turn = unsafe { *cur } % len;
    // SAFETY: as above.
    unsafe { *cur = turn + 1 };
    if svc.flags & SERVICE_F_ROUND_ROBIN != 0 {
        return SCHED_SLOTS.get(svc.sched_offset + turn).copied();
    }
    least_conn(svc.sched_offset, len, turn)
}

/// Weighted least connections (IPVS wlc): the candidate with the smallest
/// `active / weight`, compared as `active_a * w_b < active_b * w_a`. The scan starts
/// at candidate `start` (this CPU's turn, which moves on every pick), so ties are
/// shared out in turn rather than all given to the first candidate (as nginx does;
/// IPVS gives them to the first). Up to `LC_FULL_SCAN` candidates are all compared;
/// above, two random ones (power of two choices). Out of line: only new flows of such
/// services ask.
#[inline(never)]
fn least_conn(offset: u32, len: u32, start: u32) -> Option<u32> {
    let candidate = |i: u32| -> Option<(u32, u64, u64)> {
        let at = offset + 2 * i;
        let slot = *SCHED_SLOTS.get(at)?;
        let weight = *SCHED_SLOTS.get(at + 1)? as u64;
        Some((slot, active(slot), weight))
    };
    if len > LC_FULL_SCAN {
        // SAFETY: a helper call without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        let a = candidate((r & 0xffff) % len)?;
        let b = candidate((r >> 16) % len)?;
        return Some(if b.1 * a.2 < a.1 * b.2 { b.0 } else { a.0 });
    }
    let (mut best, mut best_active, mut best_weight) = candidate(start)?;
    for k in 1..LC_FULL_SCAN {
        if k >= len {
            break;
        }
        let i = if start + k >= len { start + k - len } else { start + k };
        let Some((slot, active, weight)) = candidate(i) else { break };
        if active * best_weight < best_active * weight {
            (best, best_active, best_weight) = (slot, active, weight);
        }
    }
    Some(best)
}

/// Active connections of backend slot `idx` (0 when out of range).
#[inline(always)]
fn active(idx: u32) -> u64 {
    match BACKEND_CONNS.get_ptr(idx) {
        // SAFETY: an aligned u64 in the map; changed by other CPUs only atomically.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Back where this packet came from: for the replies of a NAT flow.
#[inline(always)]
fn reply_hop(ctx: &XdpContext) -> NextHop {
    let mut hop = NextHop { ifindex: ctx.ingress_ifindex() as u32, ..NextHop::default() };
    if let Some(eth) = ptr_at::<EthHdr>(ctx, 0) {
        // SAFETY: ptr_at checked that the Ethernet header is in the packet.
        unsafe {
            copy_mac(hop.dmac.as_mut_ptr(), eth.add(offset_of!(EthHdr, src_addr)));
            copy_mac(hop.smac.as_mut_ptr(), eth.add(offset_of!(EthHdr, dst_addr)));
        }
    }
    hop
}

/// The reverse entry of a flow to a shared backend, whose replies cannot
/// tell their VIP from the backend's address alone.
#[inline(always)]
fn insert_reverse(pkt: &Packet, be: &Backend, idx: u32, next_hop: NextHop) {
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
    let _ = REVERSE_NAT.insert(reply, nat, 0);
}

// ---------------------------------------------------------------- act

/// A VIP packet to its backend: NAT rewrites the destination, DSR only the
/// MACs (the backend holds the VIP).
#[inline(always)]
fn send_to_backend(ctx: &XdpContext, pkt: &Packet, t: &Target) -> Decision {
    let (idx, be) = match t.backend {
        Ok(b) => b,
        Err(why) => {
            core::hint::cold_path();
            // A refused source is not the service's traffic (as for every
            // refusal); a service without a backend counts the packet.
            let service = if why == Reason::NoBackend { t.svc.id } else { NOT_KNOWN };
            return Decision::new(t.flow, service, NOT_KNOWN, Err(why));
        }
    };
    let action = if t.svc.flags & SERVICE_F_DSR != 0 {
        if t.svc.flags & SERVICE_F_ENCAP != 0 {
            return encap::to_backend(ctx, pkt, t.flow, t.svc.id, idx, t.svc.flags & SERVICE_F_GUE != 0);
        }
        match next_hop(&be.next_hop) {
            Some(hop) => send(ctx, hop),
            None => {
                core::hint::cold_path();
                match fib_next_hop(ctx, fib_len(pkt.key.family, pkt.ip_len), &be.addr, &pkt.key.src) {
                    Some(hop) => send(ctx, &hop),
                    None => Ok(Action::Pass(Pass::NoRoute)),
                }
            }
        }
    } else {
        let to =
            Nat { port_off: L4_DPORT, old_addr: &pkt.key.dst, old_port: pkt.key.dport, addr: &be.addr, port: be.port };
        nat(ctx, pkt, &to, &be.next_hop, &be.addr, &pkt.key.src, true)
    };
    Decision::new(t.flow, t.svc.id, idx, action)
}

/// A packet to a listed port but not to a service (another address, port or protocol):
/// refused when its destination is a VIP address with `closed_ports = "drop"` (then every port
/// is listed, see `parse_l4`).
#[inline(always)]
fn closed_vip_port(pkt: &Packet) -> Decision {
    if !matches!(SETTINGS.get(SETTING_FIREWALL), Some(f) if *f & FIREWALL_F_CLOSED_DROP != 0) {
        return Decision::pass(Pass::NotVip);
    }
    core::hint::cold_path();
    if closed_port_drops(&pkt.key) {
        return Decision::new(Flow::Refused, NOT_KNOWN, NOT_KNOWN, Err(Reason::ClosedPort));
    }
    Decision::pass(Pass::NotVip)
}

/// A packet that is not a service's: the reply of a tracked NAT flow goes
/// back to its client from the VIP; anything else is the kernel's.
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet) -> Decision {
    // Only packets from a port some NAT backend answers from get here
    // (`REPLY_PORTS`, empty while no service uses NAT).
    let Some((vip, vip_port, hop, backend)) = nat_reply(&pkt.key, pkt.flags) else {
        return Decision::pass(Pass::NotVip);
    };
    let from = Nat { port_off: L4_SPORT, old_addr: &pkt.key.src, old_port: pkt.key.sport, addr: &vip, port: vip_port };
    // A reply without a conntrack entry (`untracked_reply`, no next hop of its
    // own) is translated only when the FIB forwards it: a backend's answer
    // to the lb host itself (a health check) stays the kernel's, untouched.
    let tracked = hop.ifindex != 0;
    match nat(ctx, pkt, &from, &hop, &pkt.key.dst, &vip, tracked) {
        Ok(Action::Pass(_)) if !tracked => Decision::pass(Pass::NotVip),
        action => Decision::new(Flow::Reply, NOT_KNOWN, backend, action),
    }
}

/// The VIP address, port, next hop and backend slot of a reply from a NAT
/// backend, if its flow is tracked: the backend's service names the VIP, and
/// the flow's `CONNTRACK` entry (client -> VIP) must name this backend.
/// Backends shared by several NAT services look in `REVERSE_NAT` first.
/// The reply refreshes the entry's last-seen time and carries the backend's
/// FIN or RST to its TCP state; an expired entry is not followed.
#[inline(always)]
fn nat_reply(k: &FlowKey, flags: u8) -> Option<([u32; 4], u16, NextHop, u32)> {
    let from = VipKey { addr: k.src, port: k.sport, proto: k.proto, family: k.family };
    // SAFETY: NAT sources are replaced whole by the daemon; a packet reads one.
    let src = unsafe { NAT_SOURCES.get(from) }?;
    let shared = src.flags & NAT_SOURCE_F_SHARED != 0;
    let mut rev_hit: Option<&NatReverse> = None;
    if shared {
        // SAFETY: as for CONNTRACK in `classify`: read once.
        if let Some(rev) = unsafe { REVERSE_NAT.get(k) } {
            // Its flow's entry is needed only for a FIN or RST (below).
            if flags & (TCP_FIN | TCP_RST) == 0 {
                return Some((rev.vip, rev.vip_port, rev.next_hop, rev.backend));
            }
            rev_hit = Some(rev);
        }
    }
    let (vip, vip_port) = match rev_hit {
        Some(rev) => (rev.vip, rev.vip_port),
        None => (src.vip, src.vip_port),
    };
    let flow = FlowKey {
        src: k.dst,
        dst: vip,
        sport: k.dport,
        dport: vip_port,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let found = ct_lookup(&flow);
    if let Some(rev) = rev_hit {
        core::hint::cold_path();
        if let Some(st) = found {
            // SAFETY: a live map value; plain fields written only when it was made.
            if unsafe { (*st).backend } == rev.backend {
                reply_end(st, flags, now_ticks());
            }
        }
        return Some((rev.vip, rev.vip_port, rev.next_hop, rev.backend));
    }
    let Some(st) = found else {
        core::hint::cold_path();
        if untracked_reply(&flow, src) {
            return Some((src.vip, src.vip_port, NextHop::default(), src.backend));
        }
        return None;
    };
    // SAFETY: as above.
    let (backend, hop, bits, seen) = unsafe { ((*st).backend, (*st).reply_hop, state_bits(st), (*st).seen) };
    if backend != src.backend {
        return None;
    }
    let now = now_ticks();
    let t = timeout(k.proto, bits);
    if ct::expired(now, seen, t) {
        core::hint::cold_path();
        return None;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        core::hint::cold_path();
        reply_end(st, flags, now);
    } else if now.wrapping_sub(seen) > t >> 3 {
        // SAFETY: as above: an aligned u32 store.
        unsafe { (*st).seen = now };
    }
    Some((src.vip, src.vip_port, hop, src.backend))
}

/// The reply of a NAT flow without a conntrack entry, after the guard stopped
/// tracking or a full bucket evicted an open flow's entry: those flows have
/// none, and their replies must still go back from the VIP. Such a reply is
/// translated when Maglev sends its flow (`flow`, client -> VIP) to the
/// backend it comes from, as it did the flow's packets; its next hop is the
/// FIB's. Out of line, and answering only yes or
/// no: only replies without an entry come here, and the packet path's stack
/// (near the verifier's 512 bytes with `bad_source`'s) must not grow.
#[inline(never)]
fn untracked_reply(flow: &FlowKey, src: &NatSource) -> bool {
    // Only while flows without an entry may still be open: a reply
    // without an entry is otherwise a backend's own traffic (routed through
    // xlb to a client that reached the backend's address), left untouched.
    let seen = match SETTINGS.get(SETTING_UNTRACKED_SEEN) {
        Some(t) if *t != 0 => *t,
        _ => return false,
    };
    let established = match CONNTRACK_TIMEOUTS.get(ct::EST) {
        Some(t) => *t,
        None => 0,
    };
    let now = now_ticks();
    if now != 0 && ct::expired(now, seen, established) {
        return false;
    }
    maglev_backend(flow, src.backend).is_some()
}

/// `Some` when the Maglev table sends `flow` to backend slot `backend`.
#[inline(always)]
fn maglev_backend(flow: &FlowKey, backend: u32) -> Option<()> {
    // The backend's service is the NAT source's (one service per NAT source):
    // array lookups keep this frame small (the packet path's is near the
    // verifier's 512 bytes).
    let svc = SERVICES_BY_ID.get(BACKENDS.get(backend)?.service)?;
    if svc.table_size == 0 {
        return None;
    }
    let slot = svc.ring_offset + flow_hash(flow) % svc.table_size;
    (*RING.get(slot)? == backend).then_some(())
}

/// A NAT rewrite: the destination (`port_off == L4_DPORT`: to a backend) or
/// the source (a reply to the client) address and port become `addr`:`port`.
struct Nat<'a> {
    port_off: usize,
    old_addr: &'a [u32; 4],
    old_port: u16,
    addr: &'a [u32; 4],
    port: u16,
}

/// NAT, then on towards `dst`. A packet whose TTL would expire goes to the
/// kernel before anything is rewritten, so that its ICMP time exceeded
/// quotes the packet as it came. Without a next hop (no route or neighbour
/// yet) the kernel gets the rewritten packet (it resolves and forwards, and
/// decrements the TTL itself); else the TTL is decremented with the rewrite.
/// `rewrite_unrouted == false`: without a next hop the packet goes to the
/// kernel untouched instead (a reply whose flow xlb does not track).
#[inline(always)]
fn nat(
    ctx: &XdpContext,
    pkt: &Packet,
    rw: &Nat,
    hop: &NextHop,
    dst: &[u32; 4],
    src: &[u32; 4],
    rewrite_unrouted: bool,
) -> Result<Action, Reason> {
    if pkt.ttl <= 1 {
        return Ok(Action::Pass(Pass::TtlExpired));
    }
    if let Some(hop) = next_hop(hop) {
        rewrite(ctx, pkt, rw, true)?;
        return send(ctx, hop);
    }
    // Not resolved yet: the kernel's FIB, else the kernel itself.
    core::hint::cold_path();
    match fib_next_hop(ctx, fib_len(pkt.key.family, pkt.ip_len), dst, src) {
        Some(hop) => {
            rewrite(ctx, pkt, rw, true)?;
            send(ctx, &hop)
        }
        None => {
            if !rewrite_unrouted {
                return Ok(Action::Pass(Pass::NotVip));
            }
            rewrite(ctx, pkt, rw, false)?;
            Ok(Action::Pass(Pass::NoRoute))
        }
    }
}

/// Replaces an address and port as `rw` says, decrements the TTL (or hop
/// limit) when `ttl`, and updates the L3 and L4 checksums incrementally
/// (the IPv4 header's once for both changes). Every pointer derives from one
/// bounds-checked header pointer, with constant offsets.
#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, rw: &Nat, ttl: bool) -> Result<(), Reason> {
    let (l4, check_off) = if pkt.key.proto == PROTO_TCP {
        (ptr_at::<TcpHdr>(ctx, pkt.l4).ok_or(Reason::Truncated)?, offset_of!(TcpHdr, check))
    } else {
        (ptr_at::<UdpHdr>(ctx, pkt.l4).ok_or(Reason::Truncated)?, offset_of!(UdpHdr, check))
    };
    let udp = pkt.key.proto == PROTO_UDP;
    let dst = rw.port_off == L4_DPORT;
    let mut l4_delta = csum::Delta::default();
    l4_delta.u16(rw.old_port, rw.port);
    if pkt.key.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3).ok_or(Reason::Truncated)?;
        let addr_off = if dst { offset_of!(Ipv4Hdr, dst_addr) } else { offset_of!(Ipv4Hdr, src_addr) };
        let ip_check = offset_of!(Ipv4Hdr, check);
        let mut ip_delta = csum::Delta::default();
        ip_delta.u32(rw.old_addr[0], rw.addr[0]);
        l4_delta.u32(rw.old_addr[0], rw.addr[0]);
        // SAFETY: ptr_at checked both headers; every offset lies within them.
        unsafe {
            put32(ip, addr_off, rw.addr[0]);
            if ttl {
                // TTL and protocol share one 16-bit word of the header checksum.
                let t = pkt.ttl;
                ip_delta.u16(u16::from_ne_bytes([t, pkt.key.proto]), u16::from_ne_bytes([t - 1, pkt.key.proto]));
                put8(ip, offset_of!(Ipv4Hdr, ttl), t - 1);
            }
            put16(ip, ip_check, ip_delta.apply(get16(ip, ip_check)));
            put16(l4, rw.port_off, rw.port);
            if !pkt.csum_none {
                let c = l4_delta.apply(get16(l4, check_off));
                put16(l4, check_off, udp_check(c, udp));
            }
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3).ok_or(Reason::Truncated)?;
        let addr_off = if dst { offset_of!(Ipv6Hdr, dst_addr) } else { offset_of!(Ipv6Hdr, src_addr) };
        l4_delta.addr6(rw.old_addr, rw.addr);
        // SAFETY: ptr_at checked both headers; every offset lies within them.
        unsafe {
            copy16(ip.add(addr_off), rw.addr.as_ptr().cast(), 8);
            if ttl {
                put8(ip, offset_of!(Ipv6Hdr, hop_limit), pkt.ttl - 1);
            }
            put16(l4, rw.port_off, rw.port);
            let c = l4_delta.apply(get16(l4, check_off));
            put16(l4, check_off, udp_check(c, udp));
        }
    }
    Ok(())
}

/// A UDP checksum that comes out as zero is sent as 0xffff (zero means "no
/// checksum").
#[inline(always)]
fn udp_check(c: u16, udp: bool) -> u16 {
    if udp && c == 0 {
        core::hint::cold_path();
        return 0xffff;
    }
    c
}

/// The next hop the daemon resolved (or the one the flow came from), if any.
#[inline(always)]
fn next_hop(hop: &NextHop) -> Option<&NextHop> {
    (hop.ifindex != 0).then_some(hop)
}

/// MACs of the next hop, and out of the interface the packet came in by
/// (XDP_TX, or XDP_REDIRECT on a `HAIRPIN_PORTS` veth), or XDP_REDIRECT to another.
#[inline(always)]
fn send(ctx: &XdpContext, hop: &NextHop) -> Result<Action, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Truncated)?;
    // SAFETY: ptr_at checked that the Ethernet header is in the packet; a
    // `NextHop`'s MACs are 2-aligned.
    unsafe {
        copy_mac(eth.add(offset_of!(EthHdr, dst_addr)), hop.dmac.as_ptr());
        copy_mac(eth.add(offset_of!(EthHdr, src_addr)), hop.smac.as_ptr());
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        // Back out the way it came: XDP_TX, unless `HAIRPIN_PORTS` lists the
        // interface (a veth): then redirected (XDP_TX is the helper's action
        // when it is not listed). Without any listed interface (real NICs
        // only) the map is not searched.
        if !matches!(SETTINGS.get(SETTING_HAIRPIN), Some(v) if *v != 0) {
            return Ok(Action::Send(xdp_action::XDP_TX));
        }
        return Ok(Action::Send(match HAIRPIN_PORTS.redirect(hop.ifindex, u64::from(xdp_action::XDP_TX)) {
            Ok(a) | Err(a) => a,
        }));
    }
    // SAFETY: a helper call with plain values.
    Ok(Action::Send(unsafe { bpf_redirect(hop.ifindex, 0) } as u32))
}

/// `fib_next_hop`'s family and IP total length, in one argument.
#[inline(always)]
fn fib_len(family: u8, tot_len: u16) -> u32 {
    (family as u32) << 16 | tot_len as u32
}

/// The kernel's answer for `dst`: egress interface and MACs, if it has them
/// all. Out of line (a BPF-to-BPF call, with its own stack frame): it is
/// only asked until the daemon has resolved a backend's next hop.
#[inline(never)]
fn fib_next_hop(ctx: &XdpContext, family_len: u32, dst: &[u32; 4], src: &[u32; 4]) -> Option<NextHop> {
    // One argument for two (BPF calls take five at most, the result's pointer included).
    let (family, tot_len) = ((family_len >> 16) as u8, family_len as u16);
    core::hint::cold_path();
    // SAFETY: bpf_fib_lookup's parameters are plain integers: all zeros is valid.
    let mut p: FibParams = unsafe { mem::zeroed() };
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = tot_len;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, mem::size_of::<FibParams>() as i32, 0) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(NextHop { ifindex: p.ifindex, dmac: p.dmac, smac: p.smac })
}

// ---------------------------------------------------------------- record

/// Writes the decision to the counters and, while `xlb trace` runs, to the
/// trace: the only place that writes either. Returns the XDP action.
#[inline(always)]
fn record(ctx: &XdpContext, parsed: &Parse, d: &Decision) -> u32 {
    if d.counter != NOT_KNOWN {
        if let Some(c) = COUNTERS.get_ptr_mut(d.counter) {
            // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
            unsafe { *c += 1 };
        }
    }
    if d.service != NOT_KNOWN {
        count_service(ctx, d);
    }
    if d.flow == Flow::Untracked && d.backend != NOT_KNOWN {
        core::hint::cold_path();
        if let Some(c) = COUNTERS.get_ptr_mut(counter::FLOWS_UNTRACKED) {
            // SAFETY: a per-CPU slot, as above.
            unsafe { *c += 1 };
        }
    }
    if d.flow != Flow::None {
        let key = match parsed {
            Parse::Vip(p) | Parse::MaybeReply(p) => &p.key,
            Parse::Refused(_, k) | Parse::Icmp(k) => k,
            Parse::Kernel(_) => return d.action,
        };
        trace_decision(key, d);
    }
    d.action
}

/// The service's and its backend's counters, for a packet to a service.
#[inline(always)]
fn count_service(ctx: &XdpContext, d: &Decision) {
    let f = d.flow as u64;
    let established = f & Flow::Established as u64;
    let repicked = (f & Flow::Repicked as u64) >> 2;
    // A Maglev pick: new (bit 1) or re-picked (bit 2).
    let picked = ((f >> 1) | (f >> 2) | (f >> 7)) & 1;
    let Some(s) = SERVICE_STATS.get_ptr_mut(d.service) else {
        core::hint::cold_path();
        return;
    };
    // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
    unsafe {
        (*s).packets += 1;
        (*s).established += established;
        (*s).repicked += repicked;
    }
    if d.flow == Flow::NonSyn {
        core::hint::cold_path();
        // SAFETY: as above.
        unsafe { (*s).non_syn += 1 };
    }
    if d.backend == NOT_KNOWN {
        // No usable backend: nothing was picked.
        core::hint::cold_path();
        return;
    }
    // SAFETY: as above.
    unsafe { (*s).new_flows += picked };
    if let Some(b) = BACKEND_STATS.get_ptr_mut(d.backend) {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += len;
            (*b).new_flows += picked;
        }
    }
}

/// Writes a sampled decision to `TRACE` while `xlb trace` runs. Off, it
/// costs one array read (inlined by the verifier) and a branch, on VIP
/// packets and NAT replies only.
#[inline(always)]
fn trace_decision(key: &FlowKey, d: &Decision) {
    let rate = match SETTINGS.get(SETTING_TRACE) {
        Some(r) if *r != 0 => *r,
        _ => return,
    };
    core::hint::cold_path();
    // SAFETY: a helper call without arguments.
    if rate > 1 && unsafe { bpf_get_prandom_u32() } % rate != 0 {
        return;
    }
    write_trace(key, d);
}

/// The trace event of a sampled decision: out of line (a BPF-to-BPF call),
/// so that the packet path carries neither its code nor its stack.
#[inline(never)]
fn write_trace(key: &FlowKey, d: &Decision) {
    let kind = match d.flow {
        Flow::Icmp if d.action != xdp_action::XDP_DROP => trace::ICMP,
        _ if d.backend == NOT_KNOWN => trace::DROP,
        Flow::Established => trace::HIT,
        Flow::New => trace::MISS,
        Flow::Repicked => trace::REPICK,
        Flow::Reply => trace::REPLY,
        Flow::NonSyn => trace::NON_SYN,
        Flow::Untracked => trace::UNTRACKED,
        Flow::Refused | Flow::None | Flow::Icmp => trace::DROP,
    };
    let reason = if d.action == xdp_action::XDP_DROP { d.counter } else { NOT_KNOWN };
    // Written in place in the ring (no event on the stack: this frame and the
    // packet path's must fit the verifier's 512 bytes together). A full ring
    // drops the event: the trace is a sample, never a brake.
    let Some(mut entry) = TRACE.reserve::<TraceEvent>(0) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable `TraceEvent` in the ring;
    // every field is written before it is submitted.
    unsafe {
        (*ev).ns = bpf_ktime_get_ns();
        (*ev).src = key.src;
        (*ev).dst = key.dst;
        (*ev).sport = key.sport;
        (*ev).dport = key.dport;
        (*ev).proto = key.proto;
        (*ev).family = key.family;
        (*ev).kind = kind;
        (*ev)._pad = 0;
        (*ev).service = d.service;
        (*ev).backend = d.backend;
        (*ev).action = d.action;
        (*ev).reason = reason;
    }
    entry.submit(0);
}
