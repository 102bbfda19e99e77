//! xlb's data path: an XDP program that balances VIP traffic over backends
//! with Maglev consistent hashing and a connection-tracking map.
//!
//! `process_packet` reads top to bottom: parse -> conntrack (established:
//! the backend and its service) or service and Maglev pick -> rewrite ->
//! forward -> count. Everything that is not for a
//! VIP (and is not a NAT reply) goes to the kernel untouched.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

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
    // The verifier rejects any reachable panic path: this is never called.
    unsafe { core::hint::unreachable_unchecked() }
}
