//! What counting the conntrack table costs (`conntrack_count::count`, what the
//! daemon's sampler runs): a read of every slot of the mapped table, on a
//! table of the default capacity (1,048,576) filled to several levels.
//!
//! `cargo run --release -p xlb-testbed --example conntrack_count` as root.
//! Loads the XDP program (not attached anywhere) and fills its table from
//! user space; no traffic, no namespace.

use std::time::Duration;

use lb_common::{addr_v4, FlowKey, FlowState, FAMILY_V4, PROTO_TCP};
use xlb::dataplane::{conntrack_count, Dataplane, Sizes};

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
    let (table, limit) = dp.conntrack_table().unwrap();
    println!("conntrack capacity {limit}; median of 5 counts");
    println!("{:>10} {:>10} {:>10} {:>12}", "inserted", "stored", "counted", "count took");
    let mut filled = 0;
    let mut stored = 0u64;
    for level in [0, 10_000, 100_000, 500_000, 1_000_000] {
        let st = FlowState { backend: 0, generation: 1, ..Default::default() };
        stored += (filled..level).filter(|&i| table.insert(&key(i), &st, false)).count() as u64;
        filled = level;
        let mut counted = 0;
        let took = median(
            (0..5)
                .map(|_| {
                    let c = conntrack_count::count(&table, limit);
                    counted = c.entries;
                    c.took
                })
                .collect(),
        );
        // An insert into a full bucket replaces an entry: stored counts those too.
        assert!(counted <= stored && counted <= u64::from(limit), "counted {counted} of {stored} stored");
        println!("{level:>10} {stored:>10} {counted:>10} {:>9.1} ms", took.as_secs_f64() * 1e3);
    }
}
