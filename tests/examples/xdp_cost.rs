//! Per-packet cost of the XDP program, measured with BPF_PROG_TEST_RUN next
//! to a trivial XDP_PASS program (`xlb_floor`) from the same object, in the
//! same run, by the same harness.
//!
//! Method: `CALLS` syscalls with repeat = 1 per figure, so every iteration
//! sees the intended input packet (a kernel `repeat` would rerun the program
//! on an already NAT-rewritten buffer). The figure is the mean of the
//! kernel-reported durations; each figure is the median of `REPS`
//! repetitions, interleaved with the floor. The program's own counters prove
//! what was measured (established hits, new flows inserted).
//!
//! `cargo run --release -p xlb-testbed --example xdp_cost [calls]` as root.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use xlb::balancer::Balancer;
use xlb_testbed::{
    is_root,
    packet::{Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config, xdp_md, CLIENT_MAC},
};

const REPS: usize = 5;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Mean ns per call over `packets` (cycled), `calls` calls of repeat = 1.
fn measure(prog: &Xdp, packets: &[Vec<u8>], ifindex: u32, calls: usize, expect: u32) -> f64 {
    let mut out = vec![0u8; 512];
    let ctxs: Vec<[u8; 24]> = packets.iter().map(|p| xdp_md(p.len(), ifindex)).collect();
    let mut total = 0u128;
    for i in 0..calls {
        let k = i % packets.len();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&packets[k]),
                data_out: Some(&mut out),
                ctx_in: Some(&ctxs[k]),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.return_value, expect, "unexpected XDP action");
        total += r.duration.as_nanos();
    }
    total as f64 / calls as f64
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("run as root (BPF and network namespaces)");
    }
    let calls: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let b = bed();
    let lines = b.ns.run_in(|| -> anyhow::Result<Vec<String>> {
        let mut cfg = fixture_config();
        cfg.daemon.conntrack_entries = 4 * 1024 * 1024;
        let mut bal = Balancer::load(&cfg)?;
        bal.apply(&cfg)?;
        // As the daemon does: next hops from the neighbour table, no FIB per packet.
        bal.refresh_next_hops()?;
        let mac = |p: Pkt| {
            let mut p = p;
            p.eth_dst = b.c0_mac;
            p.eth_src = CLIENT_MAC;
            p.build()
        };
        let ack = |mut p: Pkt| {
            p.tcp_flags = TCP_ACK;
            p
        };
        let (cl4, vip4, cl6, vip6) = (ip("198.18.0.1"), ip("198.18.0.10"), ip("2001:db8::1"), ip("2001:db8::10"));
        let est_v4 = vec![mac(ack(Pkt::tcp(cl4, vip4, 40000, 80)))];
        let est_v6 = vec![mac(ack(Pkt::tcp(cl6, vip6, 40000, 80)))];
        let est_udp = vec![mac(Pkt::udp(cl4, vip4, 40000, 53))];
        let not_vip = vec![mac(Pkt::tcp(cl4, ip("198.18.0.2"), 40000, 22))];
        // New flows: a distinct client address/port per call, never seen before.
        let new_v4: Vec<Vec<u8>> = (0..calls * REPS)
            .map(|i| {
                let a = ip(&format!("198.19.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff));
                mac(Pkt::tcp(a, vip4, 1024 + (i & 0xff) as u16, 80))
            })
            .collect();
        let web4 = bal.services.iter().find(|s| s.cfg.name == "web4").unwrap().id;
        bal.dp.floor_program()?;
        // Warm up: create the conntrack entries of the established flows.
        for p in [&est_v4, &est_v6, &est_udp] {
            measure(bal.dp.program(), p, b.c0, 10, 4);
        }
        let mut floor = vec![];
        let mut figs: Vec<(&str, Vec<f64>)> = vec![
            ("xdp_ns_established_tcp_v4", vec![]),
            ("xdp_ns_established_tcp_v6", vec![]),
            ("xdp_ns_established_udp_v4", vec![]),
            ("xdp_ns_new_flow_tcp_v4", vec![]),
            ("xdp_ns_not_vip", vec![]),
        ];
        let st0 = bal.dp.service_stats(web4)?;
        for rep in 0..REPS {
            floor.push(measure(bal.dp.floor_program()?, &est_v4, b.c0, calls, 2));
            let prog = bal.dp.program();
            figs[0].1.push(measure(prog, &est_v4, b.c0, calls, 4));
            figs[1].1.push(measure(prog, &est_v6, b.c0, calls, 4));
            figs[2].1.push(measure(prog, &est_udp, b.c0, calls, 4));
            figs[3].1.push(measure(prog, &new_v4[rep * calls..(rep + 1) * calls], b.c0, calls, 4));
            figs[4].1.push(measure(prog, &not_vip, b.c0, calls, 2));
        }
        let st1 = bal.dp.service_stats(web4)?;
        let new_flows = st1.new_flows - st0.new_flows;
        let established = st1.established - st0.established;
        let (f, fmin, fmax) = median(floor);
        let mut lines = vec![
            format!("calls per figure per repetition: {calls}; repetitions: {REPS}; median (min..max) ns per packet"),
            format!("{:<28} {:>7.1} ns  ({fmin:.1}..{fmax:.1})  1.00x", "xdp_ns_floor", f),
        ];
        for (name, v) in figs {
            let (m, lo, hi) = median(v);
            lines.push(format!("{name:<28} {m:>7.1} ns  ({lo:.1}..{hi:.1})  {:.2}x floor", m / f));
        }
        lines.push(format!(
            "proof from the program's counters (service web4): {new_flows} new flows inserted (expected {}), {established} established hits (expected {})",
            calls * REPS,
            calls * REPS
        ));
        Ok(lines)
    })??;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
