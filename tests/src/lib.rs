//! Test beds for xlb: network-namespace topologies for the integration tests,
//! `cargo xtask demo` and the benchmarks.
//!
//! Everything runs in namespaces this crate creates (names `xlb-<pid>-<n>-<role>`)
//! and removes again on every exit path (RAII guards; also on panic). Addresses
//! come only from 198.18.0.0/15 and 2001:db8::/32; nothing is added to the root
//! namespace. Needs root, `ip` (iproute2), `ethtool`, `sysctl`, `curl` and
//! `/usr/sbin/nginx`.
//!
//! A test that needs root (namespaces, XDP, bpffs) says so with `#[ignore]`:
//! plain `cargo test` lists it as ignored, and `cargo xtask test` runs it
//! (`--include-ignored`), so a test that could not run never counts as passed.
//!
//! ```no_run
//! use xlb_testbed::Topology;
//!
//! #[test]
//! #[ignore = "needs root (network namespaces): cargo xtask test runs it"]
//! fn web1_answers() {
//!     let topo = Topology::new(2).unwrap();
//!     let _web = topo.start_nginx_all().unwrap();
//!     let body = topo.client().curl("http://198.18.1.11/").unwrap();
//!     assert_eq!(body, "web1\n");
//! } // namespaces, veths, nginx: all gone here
//! ```
//!
//! Helpers the tests share (one of each): [`config::ConfigToml`] writes
//! xlb.toml; [`xlb::Daemon`] runs `xlb run` (`status_json`, `wait_log`,
//! `wait_log_count`); [`Netns::mac`] and [`Netns::send_frames`] read a MAC and
//! put raw frames on the wire; [`packet::malformed_frames`] is the set of
//! frames xlb must drop, each with its reason.

pub mod bench;
pub mod client;
pub mod config;
pub mod encap;
pub mod flood;
pub mod fuzz;
pub mod ha;
pub mod icmp;
pub mod netns;
pub mod nginx;
pub mod packet;
pub mod status_page;
pub mod tls;
pub mod topology;
pub mod xdpbed;
pub mod xlb;

use std::net::IpAddr;

pub use client::{http_url, Client, HttpReply, KeptAlive};
pub use netns::{cleanup_stale_namespaces, is_root, list_namespaces, run_suffix, BgProcess, Netns};
pub use nginx::{Nginx, NginxConfig};
pub use topology::{
    backend_v4, backend_v6, Backend, Topology, TopologyBuilder, CLIENT_V4, CLIENT_V6, LB_BACKEND_V4, LB_BACKEND_V6,
    LB_CLIENT_V4, LB_CLIENT_V6, LB_INTERFACES, VIP_V4, VIP_V6,
};

/// Whether `addr` lies in the ranges tests may use: 198.18.0.0/15 or 2001:db8::/32.
pub fn is_test_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 198 && (o[1] & 0xfe) == 18
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_address_ranges() {
        for ok in ["198.18.0.1", "198.19.255.255", "2001:db8::10", "2001:db8:1::11"] {
            assert!(is_test_address(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["198.20.0.1", "198.17.0.1", "10.0.0.1", "2001:db9::1", "::1"] {
            assert!(!is_test_address(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn backend_addresses() {
        assert_eq!(backend_v4(1).to_string(), "198.18.1.11");
        assert_eq!(backend_v4(2).to_string(), "198.18.1.12");
        assert_eq!(backend_v6(2).to_string(), "2001:db8:1::12");
    }
}
