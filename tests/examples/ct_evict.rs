//! At what insert rate a conntrack table of N entries starts evicting
//! live flows (issue 12's figure for the README). A measurement, not a test.
//!
//! Method: BPF_PROG_TEST_RUN on one CPU, the fixture services, a table of
//! `N` entries filled with N new flows first; then rounds of: one packet
//! (an ACK) on each of 16 live flows, followed by `gap` new flows (SYNs). A
//! live flow's ACK that finds no entry is counted by the program as a
//! `non_syn` conntrack miss: its entry was evicted. Reported per gap (as a
//! fraction of N): evictions over 3N new flows. An insert rate of R new
//! flows per second then evicts flows idle for longer than gap/R.
//! `cargo run --release -p xlb-testbed --example ct_evict` as root;
//! `XLB_COST_OBJECT=path.o` measures that object instead of the embedded one.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use xlb::{
    balancer::Balancer,
    dataplane::{Dataplane, ObjectFile, Sizes},
};
use xlb_testbed::{
    is_root,
    packet::{Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config, xdp_md, CLIENT_MAC},
};

const N: u32 = 4096;
const LIVE: u16 = 16;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load(cfg: &xlb::config::Config) -> anyhow::Result<Balancer> {
    Ok(match std::env::var_os("XLB_COST_OBJECT") {
        Some(path) => {
            let obj = ObjectFile::read(std::path::Path::new(&path))?;
            let (stride, regions) = Balancer::<Dataplane>::table_room(cfg);
            let sizes = Sizes { conntrack_entries: cfg.daemon.conntrack_entries, ring_entries: stride * regions };
            Balancer::new(Dataplane::load_with(sizes, obj.bytes(), None)?, stride, regions)
        }
        None => Balancer::load(cfg)?,
    })
}

fn main() -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("run as root (BPF and network namespaces)");
    }
    let b = bed();
    b.ns.run_in(|| -> anyhow::Result<()> {
        // One CPU: the LRU's per-CPU free lists are those of one CPU, as for one RX queue.
        // SAFETY: a zeroed cpu_set_t is a valid empty set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let (cl, vip) = (ip("198.18.0.1"), ip("198.18.0.10"));
        let frame = |mut p: Pkt| {
            p.eth_dst = b.c0_mac;
            p.eth_src = CLIENT_MAC;
            p.build()
        };
        let mut out = vec![0u8; 512];
        let mut seq = 0u32;
        let mut fresh = || {
            seq += 1;
            let src = ip(&format!("198.19.{}.{}", (seq >> 8) & 0xff, seq & 0xff));
            frame(Pkt::tcp(src, vip, 1024 + (seq >> 16) as u16, 80))
        };
        println!("N = {N} entries, {LIVE} live flows, at least 3 rounds and 3N new flows per gap");
        for gap_eighths in [4u32, 8, 12, 16, 24, 32, 64, 128] {
            let gap = N * gap_eighths / 8;
            let mut cfg = fixture_config();
            cfg.daemon.conntrack_entries = N;
            let mut bal = load(&cfg)?;
            bal.apply(&cfg)?;
            bal.dp.set_guard_rate(0)?;
            let prog = bal.dp.program();
            let mut run = |pkt: &[u8]| {
                let ctx = xdp_md(pkt.len(), b.c0);
                prog.test_run(TestRunOptions {
                    data_in: Some(pkt),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            };
            let live_syn: Vec<Vec<u8>> = (0..LIVE).map(|i| frame(Pkt::tcp(cl, vip, 50000 + i, 80))).collect();
            let live_ack: Vec<Vec<u8>> = (0..LIVE)
                .map(|i| {
                    let mut p = Pkt::tcp(cl, vip, 50000 + i, 80);
                    p.tcp_flags = TCP_ACK;
                    frame(p)
                })
                .collect();
            for _ in 0..N {
                run(&fresh());
            }
            for s in &live_syn {
                run(s);
            }
            // Control: a flow of one packet (its SYN), asked for again only at the end.
            let mut control = Pkt::tcp(cl, vip, 49999, 80);
            run(&frame(control.clone()));
            let svc = bal.services.iter().find(|s| s.cfg.name == "web4").expect("web4").id;
            let mut inserted = 0;
            let (mut touches, mut lost) = (0, 0);
            let mut misses = bal.dp.service_stats(svc)?.non_syn;
            while inserted < 3 * N.max(gap) {
                for (a, s) in live_ack.iter().zip(&live_syn) {
                    run(a);
                    touches += 1;
                    let now = bal.dp.service_stats(svc)?.non_syn;
                    if now != misses {
                        // Evicted: counted once, and the flow opened again.
                        lost += 1;
                        misses = now;
                        run(s);
                    }
                }
                for _ in 0..gap {
                    run(&fresh());
                }
                inserted += gap;
            }
            control.tcp_flags = TCP_ACK;
            let before = bal.dp.service_stats(svc)?.non_syn;
            run(&frame(control));
            let control_lost = bal.dp.service_stats(svc)?.non_syn != before;
            println!(
                "gap {gap:>5} new flows ({:.3} N) between touches: {lost} of {touches} live-flow packets found no \
                 entry; a one-packet flow after {inserted} new flows: {}",
                gap as f64 / N as f64,
                if control_lost { "evicted" } else { "still there" }
            );
        }
        Ok(())
    })??;
    Ok(())
}
