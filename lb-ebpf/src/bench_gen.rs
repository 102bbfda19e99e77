//! Benchmark helpers that live in the xlb object but are never attached by the
//! daemon: a traffic generator for BPF_PROG_TEST_RUN in XDP live-frames mode
//! and a counting sink. `cargo xtask bench` loads them (xlb-testbed's
//! `bench::fwd`); the daemon only creates their three small maps.
//!
//! The generator's frame (Ethernet + 20-byte IPv4 + UDP with checksum 0,
//! [`FRAME_LEN`] bytes) is built by user space and kept in a map: the program
//! writes it over every frame (in live-frames mode the kernel reuses pages
//! whose bytes the lb already rewrote: NAT addresses, MACs, TTL), gives it the
//! next source port of a range, so the frames form `flows` distinct 5-tuples,
//! and sends it back out of the interface it was "received" on (XDP_TX).
#![cfg(target_arch = "bpf")]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Ethernet (14) + IPv4 without options (20): where the UDP header starts.
const UDP_OFF: usize = 34;
/// A generated frame is at least Ethernet + IPv4 + UDP.
const MIN_FRAME: usize = UDP_OFF + 8;
/// Length of the generator's frames (the template in [`BENCH_GEN_FRAME`]).
const FRAME_LEN: usize = 64;

/// The frame every generated packet starts from.
#[map]
static BENCH_GEN_FRAME: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);

/// Generator settings written by user space: [`GEN_FLOWS`], [`GEN_FIRST_PORT`].
#[map]
static BENCH_GEN_CONF: Array<u32> = Array::with_max_entries(2, 0);
const GEN_FLOWS: u32 = 0;
const GEN_FIRST_PORT: u32 = 1;

/// Frames generated on each CPU (also picks the next source port).
#[map]
static BENCH_GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Sink counters: [`SINK_TO_BACKEND`], [`SINK_OTHER`].
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
/// IPv4 UDP to 198.18.1.0/24 (the backends' subnet): forwarded by the lb.
const SINK_TO_BACKEND: u32 = 0;
/// IPv4 UDP to anything else (not rewritten: the lb did not balance it).
const SINK_OTHER: u32 = 1;

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;
const BACKEND_NET: [u8; 3] = [198, 18, 1];

#[xdp]
pub fn xlb_bench_gen(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + FRAME_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(template) = BENCH_GEN_FRAME.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked above; byte arrays have no alignment needs.
    unsafe { *(data as *mut [u8; FRAME_LEN]) = *template };
    let flows = BENCH_GEN_CONF.get(GEN_FLOWS).copied().unwrap_or(1).max(1);
    let first = BENCH_GEN_CONF.get(GEN_FIRST_PORT).copied().unwrap_or(1024);
    let Some(seq) = BENCH_GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let port = (first + n % flows) as u16;
    // SAFETY: bounds checked above (FRAME_LEN covers the UDP source port).
    unsafe { *((data + UDP_OFF) as *mut [u8; 2]) = port.to_be_bytes() };
    xdp_action::XDP_TX
}

#[xdp]
pub fn xlb_bench_sink(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + MIN_FRAME > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above; byte arrays have no alignment needs.
    let (ethertype, proto, dst) = unsafe {
        (*((data + 12) as *const [u8; 2]), *((data + 14 + 9) as *const u8), *((data + 14 + 16) as *const [u8; 3]))
    };
    // ARP, ND and TCP go on (the lb resolves its neighbours through here).
    if ethertype != ETH_P_IPV4 || proto != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let slot = if dst == BACKEND_NET { SINK_TO_BACKEND } else { SINK_OTHER };
    if let Some(c) = BENCH_SINK.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}
