//! What counting the conntrack map costs: batched lookups
//! (`BPF_MAP_LOOKUP_BATCH`, what the daemon's sampler uses) next to a
//! key-by-key walk (`BPF_MAP_GET_NEXT_KEY`, `Dataplane::conntrack_len`), on a
//! map of the default capacity (1,048,576) filled to several levels.
//!
//! `cargo run --release -p xlb-testbed --example conntrack_count` as root.
//! Loads the XDP program (not attached anywhere) and fills its map from user
//! space; no traffic, no namespace.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use lb_common::{addr_v4, FlowKey, FlowState, FAMILY_V4, PROTO_TCP};
use xlb::{
    dataplane::conntrack_count::{self, BatchAttr, BPF_MAP_UPDATE_BATCH},
    dataplane::{Dataplane, Sizes},
};

const CAPACITY: u32 = 1_048_576;
fn key(i: u32) -> FlowKey {
    FlowKey {
        src: addr_v4([198, 18, (i >> 16) as u8, (i >> 8) as u8]),
        dst: addr_v4([198, 18, 0, 10]),
        sport: (i as u16).to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// Inserts flows `from..to` with batched updates.
fn fill(fd: &OwnedFd, from: u32, to: u32) {
    for start in (from..to).step_by(8192) {
        let keys: Vec<FlowKey> = (start..to.min(start + 8192)).map(key).collect();
        let values = vec![FlowState { backend: 0, generation: 1, ..Default::default() }; keys.len()];
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: keys and values hold `count` elements of the map's types.
        unsafe { conntrack_count::batch(BPF_MAP_UPDATE_BATCH, &mut attr) }.expect("BPF_MAP_UPDATE_BATCH");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !xlb_testbed::is_root() {
        eprintln!("conntrack_count: needs root (loads the XDP program)");
        std::process::exit(1);
    }
    let dp =
        Dataplane::load(Sizes { conntrack_entries: CAPACITY, ring_entries: 65537 }).expect("loading the XDP object");
    let (fd, limit) = dp.conntrack_fd().unwrap();
    println!("conntrack capacity {limit}; median of 5 counts (batch), 1 walk (key by key)");
    println!("{:>10} {:>10} {:>14} {:>14}", "filled", "counted", "batched", "key by key");
    let mut filled = 0;
    for level in [0, 10_000, 100_000, 500_000, 1_000_000] {
        fill(&fd, filled, level);
        filled = level;
        let mut counted = 0;
        let batched = median(
            (0..5)
                .map(|_| {
                    let c = conntrack_count::count(&fd, limit).unwrap();
                    counted = c.entries;
                    c.took
                })
                .collect(),
        );
        let t0 = Instant::now();
        let walked = dp.conntrack_len().unwrap() as u64;
        let walk = t0.elapsed();
        assert_eq!(walked, counted, "the two counts differ");
        println!(
            "{level:>10} {counted:>10} {:>11.1} ms {:>11.1} ms",
            batched.as_secs_f64() * 1e3,
            walk.as_secs_f64() * 1e3
        );
    }
}
