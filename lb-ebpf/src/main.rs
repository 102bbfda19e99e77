//! xlb's data path: an XDP program that balances VIP traffic over backends
//! with Maglev consistent hashing and a connection-tracking map.
//!
//! `xdp::process_packet` reads top to bottom: parse -> classify (conntrack,
//! else the service and a Maglev pick) -> act (rewrite, forward) -> record
//! (counters, trace). Everything that is not for a VIP (and is not a NAT
//! reply) goes to the kernel untouched.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic add/sub on a map value (`BACKEND_CONNS`): the BPF target has no `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics), allow(internal_features))]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

mod bench_gen;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects a program with a reachable panic path, so
    // a loaded program never gets here.
    unsafe { core::hint::unreachable_unchecked() }
}
