//! Types shared by the XDP program (`lb-ebpf`) and the daemon (`lb-user`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so that the
//! kernel and user space agree on its bytes. Addresses are kept in network
//! byte order as four `u32` words (IPv4 uses the first word, the rest are 0);
//! ports are kept in network byte order too, exactly as they sit in a packet.
#![no_std]

/// Map names, shared so that the loader and the program cannot drift apart.
pub mod maps {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICES_BY_ID: &str = "SERVICES_BY_ID";
    pub const VIP_PORTS: &str = "VIP_PORTS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RING: &str = "RING";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const REVERSE_NAT: &str = "REVERSE_NAT";
    pub const NAT_SOURCES: &str = "NAT_SOURCES";
    pub const TRACE: &str = "TRACE";
    pub const ICMP_PROG: &str = "ICMP_PROG";
    pub const PING_BUCKET: &str = "PING_BUCKET";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const REPLY_PORTS: &str = "REPLY_PORTS";
    pub const HAIRPIN_PORTS: &str = "HAIRPIN_PORTS";
    pub const BACKEND_CONNS: &str = "BACKEND_CONNS";
    pub const CONNTRACK_TIMEOUTS: &str = "CONNTRACK_TIMEOUTS";
    pub const SCHED_SLOTS: &str = "SCHED_SLOTS";
    pub const RR_CURSORS: &str = "RR_CURSORS";
    pub const NEW_FLOW_WINDOW: &str = "NEW_FLOW_WINDOW";
    pub const SOURCE_RULES: &str = "SOURCE_RULES";
    pub const NEW_FLOW_BUCKETS: &str = "NEW_FLOW_BUCKETS";
    pub const ENCAP_SOURCES: &str = "ENCAP_SOURCES";
    pub const ENCAP_PROG: &str = "ENCAP_PROG";
    pub const ENCAP_HANDOFF: &str = "ENCAP_HANDOFF";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "xlb";
/// The ICMP program, which `xlb` tail-calls through `ICMP_PROG[0]`.
pub const ICMP_PROGRAM_NAME: &str = "xlb_icmp";
/// The encapsulation (ipip, gue), which `xlb` tail-calls through `ENCAP_PROG[0]`.
pub const ENCAP_PROGRAM_NAME: &str = "xlb_encap";
/// The decapsulation program `xlb decap` attaches on backends (ipip and gue).
pub const DECAP_PROGRAM_NAME: &str = "xlb_decap";

/// Most services (VIP, port, protocol) one daemon serves.
pub const MAX_SERVICES: u32 = 256;
/// Most backends over all services (slots in `BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Most interfaces in `HAIRPIN_PORTS` (the daemon lists only interfaces it attached to).
pub const MAX_HAIRPIN_PORTS: u32 = 64;
/// Most addresses one `xlb decap` decapsulates at (`DECAP_ADDRS`).
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Default Maglev table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest Maglev table size accepted.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Default conntrack capacity (flows).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 1_048_576;
/// A ring slot with this value has no backend: traffic is dropped (`no_backend`).
pub const NO_BACKEND: u32 = u32::MAX;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `Service::flags`: only the destination MAC is rewritten (direct server return).
pub const SERVICE_F_DSR: u32 = 1;
/// `Service::flags`: echo requests to the VIP are answered by xlb (`answer_ping`, the default).
pub const SERVICE_F_PING: u32 = 2;
/// `Service::flags`: new flows are picked by smooth weighted round robin over the
/// sequence at `Service::sched_offset` in `SCHED_SLOTS` (walked by a per-CPU cursor).
pub const SERVICE_F_ROUND_ROBIN: u32 = 32;
/// `Service::flags`: new flows go to the candidate with the fewest active connections
/// per weight (`BACKEND_CONNS`), candidates at `Service::sched_offset` in `SCHED_SLOTS`.
pub const SERVICE_F_LEAST_CONN: u32 = 64;
/// Entries of one half of a service's region in `SCHED_SLOTS`: the longest round-robin
/// sequence, or twice the most least-conn candidates (each is a slot and a weight).
pub const SCHED_HALF: u32 = 512;
/// A service's region in `SCHED_SLOTS`: two halves; the daemon writes the one the
/// service does not point at, then replaces the `SERVICES` value whole (flipping
/// `sched_offset`), so a packet never reads a half-written list.
pub const SCHED_REGION: u32 = 2 * SCHED_HALF;
/// Most least-conn candidates of a service.
pub const MAX_LC_CANDIDATES: u32 = SCHED_HALF / 2;
/// Least conn scans every candidate up to this many; above, it compares two
/// random ones (power of two choices).
pub const LC_FULL_SCAN: u32 = 32;
/// `Service::flags`: the service (or `[daemon] deny`) has source rules: a packet without a
/// usable conntrack entry looks its source up in `SOURCE_RULES`. Without it nothing is searched.
pub const SERVICE_F_FIREWALL: u32 = 4;
/// `Service::flags`: the service has an `allow` list: a source no rule matches is denied.
pub const SERVICE_F_ALLOW_LIST: u32 = 8;
/// `Service::flags`: new flows are limited per source (`Service::flow_cost_ns`, `flow_burst`).
pub const SERVICE_F_RATE_LIMIT: u32 = 16;
/// `Service::flags`: packets go to the backend inside an outer IP header
/// (`forwarding = "ipip"`: IPv4 in IPv4, IPv6 in IPv6).
pub const SERVICE_F_IPIP: u32 = 128;
/// `Service::flags`: packets go to the backend inside an outer IP and UDP header
/// (`forwarding = "gue"`: GUE variant 1, the inner IP header right after UDP).
pub const SERVICE_F_GUE: u32 = 256;
/// Either encapsulation.
pub const SERVICE_F_ENCAP: u32 = SERVICE_F_IPIP | SERVICE_F_GUE;
/// GUE's default UDP destination port (Katran's `GUE_DPORT`, and the port
/// routers' GUE variant 1 decapsulation matches when none is configured).
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Outer TTL / hop limit of an encapsulated packet.
pub const ENCAP_TTL: u8 = 64;
/// Bytes an encapsulation adds in front of the inner IP packet: the outer IP
/// header, and for GUE the UDP header.
pub const fn encap_overhead(family: u8, gue: bool) -> u32 {
    (if family == FAMILY_V4 { 20 } else { 40 }) + if gue { 8 } else { 0 }
}
/// `ENCAP_SOURCES` index of the IPv4 and of the IPv6 outer source prefix.
pub const ENCAP_SOURCE_V4: u32 = 0;
pub const ENCAP_SOURCE_V6: u32 = 1;

/// Value of `ENCAP_SOURCES`: the outer source of an encapsulated packet is
/// `addr | (flow hash & host)` word by word (network order), so that one flow
/// keeps one source and the flows of a backend spread over the prefix (the
/// backend's receive-side hashing sees different outer headers). `addr` all
/// zero: not configured; such packets are dropped (`encap_no_source`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapSource {
    pub addr: [u32; 4],
    /// The host part of the prefix (inverse netmask), network order.
    pub host: [u32; 4],
}

/// `DECAP_ADDRS` value: the UDP port (host order) GUE packets to the address
/// use; 0: GUE is not decapsulated at that address (ipip only).
pub type DecapPort = u32;

/// Indices of `DECAP_COUNTERS` (per CPU), the decapsulation program's counters.
pub mod decap {
    /// IP-in-IP (protocol 4 or 41) to a decap address, stripped and passed up.
    pub const IPIP: u32 = 0;
    /// GUE (UDP to the configured port) to a decap address, stripped and passed up.
    pub const GUE: u32 = 1;
    /// Dropped: shorter than the headers claim.
    pub const DROP_TRUNCATED: u32 = 2;
    /// Dropped: outer or inner header inconsistent (version, IHL, length, outer
    /// IPv4 checksum, GUE variant 0 or inner family not what the outer says).
    pub const DROP_BAD_HEADER: u32 = 3;
    /// Dropped: an outer fragment (not reassembled here).
    pub const DROP_FRAGMENT: u32 = 4;
    pub const NUM: u32 = 8;
    /// Name of each counter, as `xlb decap` prints it.
    pub const NAMES: [(u32, &str); 5] = [
        (IPIP, "ipip"),
        (GUE, "gue"),
        (DROP_TRUNCATED, "dropped_truncated"),
        (DROP_BAD_HEADER, "dropped_bad_header"),
        (DROP_FRAGMENT, "dropped_fragment"),
    ];
}

/// `VIP_ADDRS` value: the address is a VIP (always set).
pub const VIP_ADDR_F_KNOWN: u32 = 1;
/// `VIP_ADDRS` value: echo requests to the address are answered (every service
/// on the address has `answer_ping = true`).
pub const VIP_ADDR_F_PING: u32 = 2;
/// `VIP_ADDRS` value: TCP/UDP packets to a port of the address that no service uses are
/// dropped (`closed_ports = "drop"`), counted as `closed_port`.
pub const VIP_ADDR_F_CLOSED_DROP: u32 = 4;
/// Echo replies per second each CPU sends at most (token bucket refill rate).
pub const PING_RATE_PER_CPU: u64 = 1000;
/// Echo replies a CPU may send back to back (token bucket depth).
pub const PING_BURST: u64 = 64;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Value of the per-CPU `PING_BUCKET`: the echo-reply token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}

/// `Backend::flags`: the backend may carry traffic (configured, healthy).
/// Established flows follow a backend only while this is set.
pub const BACKEND_F_UP: u32 = 1;
/// `Backend::flags`: the backend's address, port and protocol serve more than
/// one NAT service, so a reply cannot tell its VIP: new flows also write a
/// `REVERSE_NAT` entry. Set by the loader, not by the planner.
pub const BACKEND_F_SHARED: u32 = 2;
/// `NatSource::flags`: see `BACKEND_F_SHARED`; replies look in `REVERSE_NAT` first.
pub const NAT_SOURCE_F_SHARED: u32 = 1;
/// `SETTINGS[SETTING_FLAGS]`: some service uses NAT. The program no longer reads it: a
/// packet goes down the reply path only from a port in `REPLY_PORTS`, which is empty
/// while no service uses NAT.
pub const SETTINGS_F_NAT: u32 = 1;
pub const SETTING_FLAGS: u32 = 0;
/// `SETTINGS[SETTING_TRACE]`: 0, tracing off; N, one decision in N (on
/// average) is written to the `TRACE` ring buffer as a `TraceEvent`.
pub const SETTING_TRACE: u32 = 1;
/// `SETTINGS[SETTING_HAIRPIN]`: non-zero once some interface is listed in
/// `HAIRPIN_PORTS`. While it is 0 a packet that leaves by the interface it
/// came in on goes with XDP_TX without looking in that map.
pub const SETTING_HAIRPIN: u32 = 2;
/// `SETTINGS[SETTING_GUARD]`: the conntrack guard's threshold, new flows per second per CPU
/// (`[daemon] conntrack_guard_rate`); 0, the guard is off. Above it a CPU's new flows are
/// forwarded by Maglev without a conntrack entry (Katran's guard against SYN floods).
pub const SETTING_GUARD: u32 = 3;
/// `SETTINGS[SETTING_FIREWALL]`: `FIREWALL_F_*` bits.
pub const SETTING_FIREWALL: u32 = 4;
/// `SETTINGS[SETTING_GUE_PORT]`: the UDP destination port (network order, low
/// 16 bits) of GUE packets to backends.
pub const SETTING_GUE_PORT: u32 = 5;
/// `SETTINGS[SETTING_UNTRACKED_SEEN]`: the conntrack clock when a flow last went
/// on without an entry (0: never): the guard stopped tracking new flows, or a
/// full bucket evicted an open flow's entry. For an established timeout after
/// it, a NAT reply without an entry is translated when Maglev sends its flow
/// to the replying backend (a flow without an entry is Maglev's).
pub const SETTING_UNTRACKED_SEEN: u32 = 6;
/// `SETTINGS[SETTING_CT_CLOCK]`: the conntrack clock, in `ct` ticks of
/// `CLOCK_MONOTONIC` (the clock of `bpf_ktime_get_ns`), written by the daemon
/// every `ct::CLOCK_PERIOD_MS`: the data path reads the time of a packet from
/// an array (inlined) instead of calling a helper. 0 (no daemon yet): nothing expires.
pub const SETTING_CT_CLOCK: u32 = 7;
pub const NUM_SETTINGS: u32 = 8;
/// The conntrack guard counts new flows per CPU over windows of this length:
/// one second, in conntrack clock ticks (`ct::TICK_SHIFT`).
pub const GUARD_WINDOW_TICKS: u32 = ct::ticks_of_ms(1000);
/// Default `conntrack_guard_rate`: Katran's `MAX_CONN_RATE`, new flows per second per CPU.
pub const DEFAULT_GUARD_RATE: u32 = 125_000;

/// Value of the per-CPU `NEW_FLOW_WINDOW`: the conntrack guard's window on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewFlowWindow {
    /// The conntrack clock (CLOCK_MONOTONIC >> `ct::TICK_SHIFT`) when the window began.
    pub start_tick: u32,
    pub _pad: u32,
    /// New flows this CPU asked to track in the window (tracked or not).
    pub flows: u64,
}

/// `SETTINGS[SETTING_FIREWALL]`: `closed_ports = "drop"`: a TCP/UDP packet to a listed port
/// (the daemon then lists every port in `VIP_PORTS`) but to no service looks its destination
/// up in `VIP_ADDRS`. While clear, such packets pass without a lookup (as before).
pub const FIREWALL_F_CLOSED_DROP: u32 = 1;

/// Most entries of `SOURCE_RULES` (every service's `allow` and `deny` plus `[daemon] deny`).
pub const MAX_SOURCE_RULES: u32 = 65536;
/// Sources whose new-flow token buckets are kept (`NEW_FLOW_BUCKETS`, an LRU).
pub const NEW_FLOW_BUCKETS_ENTRIES: u32 = 65536;
/// `SourceRuleKey::scope` of `[daemon] deny` rules (IPv4 and IPv6): no service has these ids.
pub const SCOPE_DAEMON_V4: u32 = 0xffff_ff04;
pub const SCOPE_DAEMON_V6: u32 = 0xffff_ff06;
/// `SOURCE_RULES` values.
pub const RULE_ALLOW: u32 = 1;
pub const RULE_DENY: u32 = 2;

/// Data of the `SOURCE_RULES` LPM trie key (after its `prefix_len`): one trie for every
/// service's rules and the daemon's, told apart by `scope` (a `Service::id`, or
/// `SCOPE_DAEMON_V4`/`V6`), as Cilium keys its policy tries by identity then prefix.
/// `scope` is big-endian so that it is the key's first 32 bits; a rule's `prefix_len` is
/// 32 + its prefix length, so a lookup (with 32 + 128) never matches another scope. A
/// service has one family (its VIP's), so its scope needs no family; the daemon's two scopes
/// keep IPv4 and IPv6 rules apart. One trie rather than one per service: maps cannot be made
/// per service at run time without map-in-map, and a service without rules never searches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRuleKey {
    /// Big-endian (`u32::to_be`) service id or daemon scope.
    pub scope: u32,
    /// Network order, IPv4 in the first word.
    pub addr: [u32; 4],
}

/// Key of `NEW_FLOW_BUCKETS`: a service and a source (IPv4 /32, IPv6 /64: the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceBucketKey {
    pub service: u32,
    pub addr: [u32; 4],
}

/// `REPLY_PORTS`: a bitmap of the 65536 ports, in 64-bit words; bit `p` is set
/// while some NAT backend listens on port `p` (host order). A packet that is not
/// for a VIP can only be a NAT reply if its source port is set: all others
/// pass without the reverse-NAT lookup.
pub const REPLY_PORT_WORDS: u32 = 65536 / 64;

/// `VIP_PORTS`: a bitmap of the 65536 ports, in 64-bit words; bit `p` is set
/// while some service listens on port `p` (host order). A packet whose
/// destination port is not set is not for a VIP: no map is searched for it.
pub const VIP_PORT_WORDS: u32 = 65536 / 64;

/// Word index and bit mask of `port` (host order) in `REPLY_PORTS` and `VIP_PORTS`.
#[inline(always)]
pub const fn reply_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1u64 << (port & 63))
}

/// Key of `SERVICES` (what a packet is addressed to) and of `NAT_SOURCES`
/// (what a NAT backend answers from): an address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Key of `VIP_ADDRS`: a VIP address with any port, used to decide whether a
/// packet that cannot be parsed fully (fragment, extension header, truncated)
/// was meant for xlb and must be dropped and counted, or belongs to the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into `SERVICE_STATS`.
    pub id: u32,
    /// First slot of this service's Maglev table in `RING`.
    pub ring_offset: u32,
    /// Maglev table size M (prime).
    pub table_size: u32,
    pub flags: u32,
    /// round_robin / least_conn: where the service's current list starts in `SCHED_SLOTS`.
    pub sched_offset: u32,
    /// Entries in that list: the sequence's length (round robin), the candidates (least conn);
    /// 0: none takes new flows.
    pub sched_len: u32,
    /// `SERVICE_F_RATE_LIMIT`: nanoseconds of credit a new flow costs (1e9 / rate per second).
    pub flow_cost_ns: u32,
    /// `SERVICE_F_RATE_LIMIT`: new flows a source may open back to back.
    pub flow_burst: u32,
}

/// Where to send a frame without asking the FIB: egress interface and MACs.
/// `ifindex == 0`: unknown, the program falls back to `bpf_fib_lookup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// Value of `BACKENDS`, indexed by backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    /// `Service::id` of the service this backend belongs to: the data path
    /// finds an established flow's service through it (`SERVICES_BY_ID`).
    pub service: u32,
    /// Changes every time the slot is given to a backend, so a conntrack
    /// entry made for an earlier occupant of the slot is never followed.
    pub generation: u32,
    pub flags: u32,
    /// Resolved by the daemon from the kernel's route and neighbour tables.
    pub next_hop: NextHop,
}

/// Key of `CONNTRACK` (client -> VIP direction) and `REVERSE_NAT`
/// (backend -> client direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend: u32,
    pub generation: u32,
    /// NAT: back where the client's first packet came from (its ingress
    /// interface, its source MAC as destination and its destination MAC as
    /// source), for the replies. Zero for DSR.
    pub reply_hop: NextHop,
    /// `ct::*` bits, only ever added (atomic fetch-or), so that the one
    /// packet that adds `ct::CLOSED` is the one that lowers the backend's
    /// active count. A u64: BPF has no 32-bit fetch-or before cpu v3.
    pub state: u64,
    /// When a packet of the flow was last seen, in ticks
    /// (`bpf_ktime_get_ns() >> ct::TICK_SHIFT`), refreshed at most every
    /// 1/8 of the state's timeout.
    pub seen: u32,
    pub _pad: u32,
}

/// One slot of `CONNTRACK`: the conntrack table is an array (mmapable, so
/// the daemon sweeps it in place) of `CT_WAYS`-slot buckets, not a kernel
/// hash map: a kernel hash insert cost about 300 ns on the benchmark machine
/// (its locks and free lists), a slot write about 20.
///
/// A slot is empty while its key's `family` is 0. A writer first claims the
/// slot by swapping its `state` for `ct::BUSY` (an atomic compare-exchange);
/// packets treat a busy slot as no entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSlot {
    pub key: FlowKey,
    pub state: FlowState,
}

/// A `CONNTRACK` element: the tags of its slots' flows (`ct_tag_of` their
/// `flow_hash`; 0: the slot is empty), then the slots. A lookup reads the
/// line of tags, and a slot only when its tag matches; an insert into a
/// bucket with an empty slot reads no slot at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtBucket {
    pub tags: [u32; CT_WAYS as usize],
    pub slots: [CtSlot; CT_WAYS as usize],
}

/// Slots per `CONNTRACK` bucket: a flow's entry is in one of the 4 slots of
/// the bucket its hash picks; a new flow in a full bucket replaces the entry
/// least worth keeping ([`ct::victim_rank`]).
pub const CT_WAYS: u32 = 4;

/// `CONNTRACK`'s slots for a configured `conntrack_entries`: a power of two,
/// at least one bucket.
pub const fn ct_slots(entries: u32) -> u32 {
    let n = if entries < CT_WAYS { CT_WAYS } else { entries };
    match n.checked_next_power_of_two() {
        Some(p) => p,
        None => 1 << 31,
    }
}

/// The first slot of `k`'s bucket in a table of `slots` slots (a power of two).
#[inline(always)]
pub const fn ct_bucket(k: &FlowKey, slots: u32) -> u32 {
    ct_bucket_of(flow_hash(k), slots)
}

/// [`ct_bucket`] of a flow whose `flow_hash` is `h`.
#[inline(always)]
pub const fn ct_bucket_of(h: u32, slots: u32) -> u32 {
    // Another hash than the Maglev pick's: the bucket must not follow the backend.
    // (Maglev takes the hash modulo a prime: rotated, the low bits differ.)
    h.rotate_left(16) & (slots - 1) & !(CT_WAYS - 1)
}

/// The tag of a flow whose `flow_hash` is `h` in `CT_TAGS` (never 0: 0 is an empty slot).
#[inline(always)]
pub const fn ct_tag_of(h: u32) -> u32 {
    h | 1
}

/// Connection tracking: `FlowState::state` bits, timeouts and time.
pub mod ct {
    /// TCP: a packet with ACK (and no SYN) came from the client after its SYN.
    pub const ESTABLISHED: u64 = 1;
    /// TCP: the client sent a FIN.
    pub const FIN_CLIENT: u64 = 2;
    /// TCP (NAT): the backend sent a FIN (seen on the reply path).
    pub const FIN_BACKEND: u64 = 4;
    /// TCP: a RST from either side.
    pub const RST: u64 = 8;
    /// The flow no longer counts in `BACKEND_CONNS`: set exactly once, by
    /// whoever lowered the count (FIN from both sides, or the client's FIN in
    /// DSR, a RST, an expired or re-picked entry).
    pub const CLOSED: u64 = 16;
    /// The entry is being replaced by a new one (re-pick, reused 5-tuple):
    /// the packet that set it makes the new entry; the others do not.
    pub const REPLACED: u64 = 32;
    /// Bits after which the flow is closing (its timeout is `CLOSING`).
    pub const ENDING: u64 = FIN_CLIENT | FIN_BACKEND | RST | CLOSED;
    /// The slot is being written (a new entry, or the daemon removing an
    /// expired one): not an entry to follow. Its writer swapped the previous
    /// state out for it, so a packet that closes the previous flow late (it
    /// found the slot just before) sees it and lowers no count.
    pub const BUSY: u64 = 1 << 63;

    /// How much a full bucket's slot is worth replacing (higher: sooner):
    /// an empty slot, then a closed or replaced entry, then a TCP entry that
    /// never saw the client's ACK (a SYN flood's), then the longest idle; a
    /// busy slot never (0). Without branches: the XDP program runs it on every
    /// slot of a bucket, and each branch multiplies the verifier's paths.
    #[inline(always)]
    pub const fn victim_rank(family: u8, proto: u8, state: u64, seen: u32, now: u32) -> u64 {
        let busy = state >> 63;
        let empty = (family as u64).wrapping_sub(1) >> 63;
        let closed = (state & (CLOSED | REPLACED)).wrapping_neg() >> 63;
        let tcp = ((proto ^ super::PROTO_TCP) as u64).wrapping_sub(1) >> 63;
        let syn_only = tcp & ((state & ESTABLISHED) ^ ESTABLISHED);
        let idle = now.wrapping_sub(seen) as u64 + 1;
        ((idle + (syn_only << 33)) | (closed << 62) | (empty << 63)) & busy.wrapping_sub(1)
    }

    /// `CONNTRACK_TIMEOUTS` indices: the idle timeout (in ticks) of each state.
    pub const SYN: u32 = 0;
    pub const EST: u32 = 1;
    pub const CLOSING: u32 = 2;
    pub const UDP: u32 = 3;
    pub const NUM_TIMEOUTS: u32 = 4;

    /// How often the daemon advances `SETTINGS[SETTING_CT_CLOCK]`.
    pub const CLOCK_PERIOD_MS: u64 = 100;
    /// A tick is 2^20 ns (1.048576 ms): `seen` wraps after 52 days, far
    /// beyond any timeout (the daemon sweeps expired entries long before).
    pub const TICK_SHIFT: u32 = 20;
    /// Default idle timeouts, in seconds (Cilium's and IPVS's orders of magnitude).
    pub const DEFAULT_SYN_S: u64 = 60;
    pub const DEFAULT_EST_S: u64 = 6 * 3600;
    pub const DEFAULT_CLOSING_S: u64 = 10;
    pub const DEFAULT_UDP_S: u64 = 60;

    /// Ticks in `ms` milliseconds (rounded up, saturating).
    pub const fn ticks_of_ms(ms: u64) -> u32 {
        let t = (ms * 1_000_000).div_ceil(1 << TICK_SHIFT);
        if t > u32::MAX as u64 {
            u32::MAX
        } else {
            t as u32
        }
    }

    /// The timeout index of an entry of protocol `proto` in `state`.
    #[inline(always)]
    pub const fn timeout_index(proto: u8, state: u64) -> u32 {
        if proto != super::PROTO_TCP {
            UDP
        } else if state & ENDING != 0 {
            CLOSING
        } else if state & ESTABLISHED != 0 {
            EST
        } else {
            SYN
        }
    }

    /// Whether an entry last seen at `seen` is expired at `now` (ticks) under
    /// `timeout` (0: none, it never expires).
    #[inline(always)]
    pub const fn expired(now: u32, seen: u32, timeout: u32) -> bool {
        timeout != 0 && now.wrapping_sub(seen) > timeout
    }
}

/// Value of `NAT_SOURCES`, keyed by a NAT backend's address, port and
/// protocol: the one service it serves, so that a reply finds its flow in
/// `CONNTRACK` (client -> VIP) without a per-flow reverse entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSource {
    pub vip: [u32; 4],
    /// Network byte order.
    pub vip_port: u16,
    pub _pad: u16,
    /// The backend's slot: a reply is translated only for flows tracked to it.
    pub backend: u32,
    pub flags: u32,
}

/// Value of `REVERSE_NAT`: what to put back as the source of a reply. Only
/// flows to a `BACKEND_F_SHARED` backend have one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub vip: [u32; 4],
    /// Network byte order.
    pub vip_port: u16,
    pub _pad: u16,
    pub backend: u32,
    /// Back where the client's first packet came from: its ingress interface,
    /// with its source MAC as destination and its destination MAC as source.
    pub next_hop: NextHop,
}

/// Value of `BACKEND_STATS` (per CPU), indexed by backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Value of `SERVICE_STATS` (per CPU), indexed by `Service::id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    /// Packets that found a usable conntrack entry.
    pub established: u64,
    /// Flows picked by Maglev (new, or re-picked because their backend went away).
    pub new_flows: u64,
    /// Conntrack entries found pointing at a backend that is no longer usable.
    pub repicked: u64,
    /// TCP packets of an unknown flow that are not a SYN (a conntrack entry lost,
    /// or a flow whose path moved to this lb): picked by Maglev without making an
    /// entry. `xlb_service_conntrack_misses_total{kind="non_syn"}`.
    pub non_syn: u64,
    /// Packets refused by the service's source rules (or `[daemon] deny`'s: not counted here).
    pub denied: u64,
    /// New flows refused by `new_flows_per_source`.
    pub rate_limited: u64,
}

/// Bytes of the `TRACE` ring buffer (a power of two, whole pages).
pub const TRACE_RING_BYTES: u32 = 256 * 1024;

/// `TraceEvent::kind`: what the data path decided for a sampled packet.
pub mod trace {
    /// A VIP flow with a usable conntrack entry: it follows its backend.
    pub const HIT: u8 = 1;
    /// A VIP flow without an entry (or a TCP SYN): a Maglev pick.
    pub const MISS: u8 = 2;
    /// A VIP flow whose entry named a backend no longer usable: picked again.
    pub const REPICK: u8 = 3;
    /// A reply from a NAT backend, rewritten back to the VIP.
    pub const REPLY: u8 = 4;
    /// A packet to a VIP refused before a backend was chosen.
    pub const DROP: u8 = 5;
    /// A TCP packet of an unknown flow that is not a SYN: a Maglev pick that
    /// makes no conntrack entry.
    pub const NON_SYN: u8 = 6;
    /// ICMP handled by xlb: an error sent on to a flow's end, or an echo request answered.
    pub const ICMP: u8 = 7;
    /// A new flow the conntrack guard did not track (this CPU is above
    /// `conntrack_guard_rate`): a Maglev pick without a conntrack entry.
    pub const UNTRACKED: u8 = 8;
}

/// One sampled data-path decision, as written to `TRACE`. Addresses and
/// ports as in the packet (network order); `service` and `backend` are
/// `u32::MAX` when not known (a malformed packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (monotonic).
    pub ns: u64,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// One of `trace::*`.
    pub kind: u8,
    pub _pad: u8,
    /// `Service::id`.
    pub service: u32,
    /// Backend slot.
    pub backend: u32,
    /// The XDP action returned.
    pub action: u32,
    /// The drop reason (a `counter` index); `u32::MAX` when not dropped.
    pub reason: u32,
}

/// Indices of `COUNTERS` (per CPU): drop reasons in `0..NUM_DROPS` (room up to 16),
/// then passes and events from 16.
pub mod counter {
    /// Shorter than its headers claim, or shorter than a header.
    pub const DROP_TRUNCATED: u32 = 0;
    /// IPv4 fragment (or IPv6 fragment header) to a VIP address.
    pub const DROP_FRAGMENT: u32 = 1;
    /// IPv6 extension header (other than fragment) to a VIP address.
    pub const DROP_IPV6_EXT: u32 = 2;
    /// Inconsistent header: IPv4 IHL < 5, bad version, TCP data offset < 5, UDP length < 8.
    pub const DROP_BAD_HEADER: u32 = 3;
    /// The service has no usable backend.
    pub const DROP_NO_BACKEND: u32 = 4;
    /// A new flow to a service from a source no client can have: a VIP address,
    /// limited broadcast, multicast, loopback, unspecified (0.0.0.0/8, ::), and for
    /// IPv6 also `::ffff:0:0/96` (IPv4-mapped).
    pub const DROP_BAD_SOURCE: u32 = 5;
    /// TCP to a VIP address with an impossible flag set: none at all, SYN+FIN, SYN+RST.
    pub const DROP_BAD_FLAGS: u32 = 6;
    // ICMP (lb-ebpf/src/icmp.rs).
    /// ICMP error to a VIP address whose quoted packet is too short for its IP header and ports.
    pub const DROP_ICMP_TRUNCATED: u32 = 7;
    /// ICMP error to a VIP address quoting a non-first fragment (no ports) or an IPv6
    /// packet with extension headers.
    pub const DROP_ICMP_FRAGMENT: u32 = 8;
    /// ICMP error to a VIP address about a flow xlb does not know (no service at the
    /// quoted address, port and protocol, or no usable backend).
    pub const DROP_ICMP_UNKNOWN_FLOW: u32 = 9;
    /// Echo request to a VIP beyond the per-CPU rate (`PING_RATE_PER_CPU`).
    pub const DROP_PING_RATE_LIMITED: u32 = 10;
    // Firewall.
    /// A new flow (no usable conntrack entry) from a source `deny` (or `[daemon] deny`) names,
    /// or that a service's `allow` list does not name.
    pub const DROP_DENIED: u32 = 11;
    /// A new flow beyond its source's `new_flows_per_source` rate.
    pub const DROP_RATE_LIMITED: u32 = 12;
    /// TCP/UDP to a port of a VIP address that no service uses, with `closed_ports = "drop"`.
    pub const DROP_CLOSED_PORT: u32 = 13;
    /// Number of drop reasons (indices below this are drops).
    pub const NUM_DROPS: u32 = 14;

    /// VIP packet handed to the kernel: no route or neighbour for the backend yet.
    pub const PASS_NO_ROUTE: u32 = 16;
    /// VIP packet handed to the kernel: TTL/hop limit would expire (kernel answers ICMP).
    pub const PASS_TTL: u32 = 17;
    /// Reply from a backend rewritten back to the VIP (NAT).
    pub const REPLY_NAT: u32 = 18;
    /// Packets handed to the kernel untouched because they are not for a VIP: not IP, not
    /// TCP/UDP, not to a service, not a tracked NAT reply, or malformed and not to a VIP address.
    pub const PASS_NOT_VIP: u32 = 19;
    /// Fragmentation needed / packet too big about a VIP flow, sent to its backend.
    pub const ICMP_TO_BACKEND: u32 = 20;
    /// ICMP error from the backend side about a NAT flow, rewritten to the VIP, to the client.
    pub const ICMP_TO_CLIENT: u32 = 21;
    /// Echo request to a VIP answered by xlb.
    pub const PING_ANSWERED: u32 = 22;
    /// ICMP to a VIP address handed to the kernel: echo with `answer_ping = false`,
    /// an error other than frag-needed/packet-too-big about a VIP flow, other types.
    pub const PASS_ICMP: u32 = 23;
    /// New flows forwarded by Maglev without a conntrack entry: the guard found their CPU
    /// above `conntrack_guard_rate`. `xlb_flows_untracked_total`.
    pub const FLOWS_UNTRACKED: u32 = 24;
    /// Windows (one second, one CPU) in which the guard stopped tracking new flows.
    /// `xlb_conntrack_guard_activations_total`.
    pub const GUARD_ACTIVATIONS: u32 = 25;
    /// Open flows whose conntrack entry a new flow took (their bucket was
    /// full, and theirs was the entry least worth keeping): they go on
    /// without an entry, as Maglev's. `xlb_conntrack_evictions_total`.
    pub const CT_EVICTED: u32 = 26;
    /// An ipip/gue packet dropped: with its outer header it would exceed the
    /// egress interface's MTU (`xlb_encap_dropped_packets_total{reason="too_big"}`).
    pub const ENCAP_TOO_BIG: u32 = 28;
    /// An ipip/gue packet dropped: no outer source prefix for its family
    /// (`xlb_encap_dropped_packets_total{reason="no_source"}`).
    pub const ENCAP_NO_SOURCE: u32 = 29;
    /// Encapsulation drops, as `reason` labels.
    pub const ENCAP_DROPS: [(u32, &str); 2] = [(ENCAP_TOO_BIG, "too_big"), (ENCAP_NO_SOURCE, "no_source")];

    /// Every drop reason: its `COUNTERS` index and its `reason` label.
    pub fn drops() -> impl Iterator<Item = (u32, &'static str)> {
        DROP_NAMES.iter().enumerate().map(|(i, n)| (i as u32, *n))
    }

    /// The `reason` label of drop counter `i`, if it is one.
    pub fn drop_name(i: u32) -> Option<&'static str> {
        DROP_NAMES.get(i as usize).copied()
    }
    /// ICMP events xlb acts on (not drops, not passes), as `event` labels.
    pub const ICMP_EVENTS: [(u32, &str); 3] =
        [(ICMP_TO_BACKEND, "to_backend"), (ICMP_TO_CLIENT, "to_client"), (PING_ANSWERED, "ping_answered")];
    pub const NUM_COUNTERS: u32 = 32;

    /// Prometheus `reason` label of each drop counter.
    pub const DROP_NAMES: [&str; NUM_DROPS as usize] = [
        "truncated",
        "fragment",
        "ipv6_extension",
        "bad_header",
        "no_backend",
        "bad_source",
        "bad_flags",
        "icmp_truncated",
        "icmp_fragment",
        "icmp_unknown_flow",
        "ping_rate_limited",
        "denied",
        "rate_limited",
        "closed_port",
    ];
}

/// Address words of an IPv4 address given as its four octets (network order).
#[inline(always)]
pub const fn addr_v4(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Address words of an IPv6 address given as its sixteen octets (network order).
#[inline(always)]
pub const fn addr_v6(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
const fn mix(h: u64, w: u32) -> u64 {
    (h ^ w as u64).wrapping_mul(HASH_MUL).rotate_left(29)
}

/// The flow hash: picks the Maglev slot of a new flow, `flow_hash(k) % M`.
///
/// Used by the XDP program and by `xlb explain`, so both always agree. It
/// covers the whole 5-tuple in packet byte order; it is not symmetric (the
/// reply direction never needs a Maglev pick).
#[inline(always)]
pub const fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = HASH_SEED;
    h = mix(h, k.src[0]);
    h = mix(h, k.src[1]);
    h = mix(h, k.src[2]);
    h = mix(h, k.src[3]);
    h = mix(h, k.dst[0]);
    h = mix(h, k.dst[1]);
    h = mix(h, k.dst[2]);
    h = mix(h, k.dst[3]);
    h = mix(h, ((k.sport as u32) << 16) | k.dport as u32);
    h = mix(h, k.proto as u32);
    // murmur3's 64-bit finaliser: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for CtSlot {}
    unsafe impl aya::Pod for CtBucket {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for NatSource {}
    unsafe impl aya::Pod for TraceEvent {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for NewFlowWindow {}
    unsafe impl aya::Pod for SourceRuleKey {}
    unsafe impl aya::Pod for SourceBucketKey {}
    unsafe impl aya::Pod for EncapSource {}
}

// No implicit padding anywhere: the size is the sum of the fields.
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipAddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<Service>() == 32);
const _: () = assert!(core::mem::size_of::<SourceRuleKey>() == 20);
const _: () = assert!(core::mem::size_of::<SourceBucketKey>() == 20);
const _: () = assert!(core::mem::size_of::<NextHop>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 48);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowState>() == 40);
const _: () = assert!(core::mem::size_of::<NatSource>() == 28);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 64);
const _: () = assert!(core::mem::size_of::<NatReverse>() == 40);
const _: () = assert!(core::mem::size_of::<BackendStats>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 56);
const _: () = assert!(core::mem::size_of::<NewFlowWindow>() == 16);
const _: () = assert!(core::mem::size_of::<EncapSource>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: addr_v4([198, 18, 0, 1]),
            dst: addr_v4([198, 18, 0, 10]),
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flow_hash_is_deterministic_and_spreads() {
        assert_eq!(flow_hash(&key(40000)), flow_hash(&key(40000)));
        // 4096 consecutive source ports over 7 buckets: each bucket within 15% of the mean.
        let mut buckets = [0u32; 7];
        for p in 0..4096u16 {
            buckets[(flow_hash(&key(30000 + p)) % 7) as usize] += 1;
        }
        let mean = 4096.0 / 7.0;
        for b in buckets {
            assert!((b as f64 - mean).abs() < mean * 0.15, "bucket {b} vs mean {mean}");
        }
    }
}
