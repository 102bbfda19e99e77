//! Per-packet cost of the XDP program, measured with BPF_PROG_TEST_RUN next
//! to a trivial XDP_PASS program (`xlb_floor`) from the same object, in the
//! same run, by the same harness.
//!
//! Method: `calls` syscalls with repeat = 1 per figure and repetition, so every
//! iteration sees the intended input packet (a kernel `repeat` would rerun the
//! program on an already NAT-rewritten buffer). A repetition's value is the
//! mean of the kernel-reported durations; each figure is the median of the
//! repetitions, which interleave all figures and the floor. The program's own
//! counters prove what was measured: per service, new flows inserted ==
//! new-flow iterations, established hits == established iterations; a figure
//! whose proof fails is reported missing.
//!
//! Prints `FIG`/`MISSING`/`METHOD` lines (xlb_testbed::bench) and a readable
//! table on stderr.
//! `cargo run --release -p xlb-testbed --example xdp_cost -- [--quick] [--reps N]` as root;
//! `XLB_COST_OBJECT=path.o` measures that object instead of the embedded one.

use std::net::{IpAddr, SocketAddr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::ServiceStats;
use xlb::{
    balancer::Balancer,
    config::{BackendConfig, Cidr, Config, RateLimit, Role, Scheduler},
};
use xlb_testbed::{
    bench::{emit, method, missing, summarize, Figures, Opts},
    is_root,
    packet::{Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config, xdp_md, CLIENT_MAC},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// A balanced packet leaves through the backend-side interface.
const XDP_REDIRECT: u32 = 4;
/// Back out of the interface it came in by: redirected on a veth listed in
/// `HAIRPIN_PORTS`, XDP_TX elsewhere (and by objects built before that map).
const BACK_OUT: [u32; 2] = [XDP_TX, XDP_REDIRECT];

/// VIPs of the round_robin and least_conn copies of web4.
const VIP_RR: &str = "198.18.0.50";
const VIP_LC: &str = "198.18.0.51";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Mean ns per call over `packets` (cycled), `calls` calls of repeat = 1,
/// each returning one of `expect`.
fn measure(prog: &Xdp, packets: &[Vec<u8>], ifindex: u32, calls: usize, expect: &[u32]) -> f64 {
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
        assert!(expect.contains(&r.return_value), "XDP action {}, expected one of {expect:?}", r.return_value);
        total += r.duration.as_nanos();
    }
    total as f64 / calls as f64
}

/// What a figure sends.
enum Traffic {
    /// The same packet every call (`packet`); a flow opened before the
    /// measurement by `open` (a TCP SYN: only a SYN makes a TCP conntrack entry).
    Established { open: Vec<u8>, packet: Vec<u8> },
    /// A packet of a flow never seen before on every call (`calls * reps` of them).
    NewFlows(Vec<Vec<u8>>),
    /// Not for a VIP: passed to the kernel.
    NotVip(Vec<u8>),
    /// The reply of an established NAT flow, arriving on the interface its
    /// client's packets came in by (one-arm): back out of it.
    Reply(Vec<u8>),
}

struct Case {
    name: &'static str,
    /// The service whose counters prove the figure (none for not-VIP and replies).
    service: Option<&'static str>,
    traffic: Traffic,
    /// One-arm: the packet comes in by the backend-side interface `b0`
    /// (listed in `HAIRPIN_PORTS`) and leaves by it too. Replies (`Reply`)
    /// come in by `c0` (not listed) instead, their flow's client side.
    one_arm: bool,
}

/// A client address of flow `i` (distinct per `i`), in the test ranges.
fn client_of(i: usize, v6: bool) -> IpAddr {
    if v6 {
        ip(&format!("2001:db8:2::{:x}:{:x}", (i >> 16) & 0xffff, i & 0xffff))
    } else {
        ip(&format!("198.19.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff))
    }
}

fn cases(frame: impl Fn(Pkt) -> Vec<u8>, new_flows: usize) -> Vec<Case> {
    let (cl4, vip4, cl6, vip6) = (ip("198.18.0.1"), ip("198.18.0.10"), ip("2001:db8::1"), ip("2001:db8::10"));
    let tcp_flow = |src, dst| {
        let syn = Pkt::tcp(src, dst, 40000, 80);
        let mut ack = syn.clone();
        ack.tcp_flags = TCP_ACK;
        Established { open: frame(syn), packet: frame(ack) }
    };
    let udp_flow = |src, dst| {
        let p = frame(Pkt::udp(src, dst, 40000, 53));
        Established { open: p.clone(), packet: p }
    };
    let (vip_rr, vip_lc) = (ip(VIP_RR), ip(VIP_LC));
    let fresh = |v6: bool, tcp: bool| -> Vec<Vec<u8>> {
        let (vip, dport) = match (v6, tcp) {
            (false, true) => (vip4, 80),
            (false, false) => (vip4, 53),
            (true, true) => (vip6, 80),
            (true, false) => (vip6, 53),
        };
        (0..new_flows)
            .map(|i| {
                let (src, sport) = (client_of(i, v6), 1024 + (i & 0xff) as u16);
                frame(if tcp { Pkt::tcp(src, vip, sport, dport) } else { Pkt::udp(src, vip, sport, dport) })
            })
            .collect()
    };
    let fresh_to = |vip: IpAddr, dport| -> Vec<Vec<u8>> {
        (0..new_flows).map(|i| frame(Pkt::tcp(client_of(i, false), vip, 1024 + (i & 0xff) as u16, dport))).collect()
    };
    use Traffic::*;
    let case = |name, service, traffic| Case { name, service, traffic, one_arm: false };
    let one_arm = |name, service, traffic| Case { name, service, traffic, one_arm: true };
    let mut reply = Pkt::tcp(ip("198.18.1.11"), cl4, 8080, 40000);
    reply.tcp_flags = TCP_ACK;
    vec![
        case("xdp_ns_established_tcp_v4", Some("web4"), tcp_flow(cl4, vip4)),
        case("xdp_ns_established_tcp_v6", Some("web6"), tcp_flow(cl6, vip6)),
        case("xdp_ns_established_udp_v4", Some("dns4"), udp_flow(cl4, vip4)),
        case("xdp_ns_established_udp_v6", Some("dns6"), udp_flow(cl6, vip6)),
        case("xdp_ns_new_flow_tcp_v4", Some("web4"), NewFlows(fresh(false, true))),
        case("xdp_ns_new_flow_tcp_v6", Some("web6"), NewFlows(fresh(true, true))),
        case("xdp_ns_new_flow_udp_v4", Some("dns4"), NewFlows(fresh(false, false))),
        case("xdp_ns_new_flow_udp_v6", Some("dns6"), NewFlows(fresh(true, false))),
        // The same TCP/IPv4 flows to services scheduled by round robin and least connections.
        case("xdp_ns_established_tcp_v4_rr", Some("web4rr"), tcp_flow(cl4, vip_rr)),
        case("xdp_ns_established_tcp_v4_lc", Some("web4lc"), tcp_flow(cl4, vip_lc)),
        case("xdp_ns_new_flow_tcp_v4_rr", Some("web4rr"), NewFlows(fresh_to(vip_rr, 80))),
        case("xdp_ns_new_flow_tcp_v4_lc", Some("web4lc"), NewFlows(fresh_to(vip_lc, 80))),
        case("xdp_ns_new_flow_tcp_v4_deny_1000", Some("fw4"), NewFlows(fresh_to(ip("198.18.0.60"), 80))),
        case("xdp_ns_new_flow_tcp_v4_rate_limited", Some("rl4"), NewFlows(fresh_to(ip("198.18.0.61"), 80))),
        case("xdp_ns_not_vip", None, NotVip(frame(Pkt::tcp(cl4, ip("198.18.0.2"), 40000, 22)))),
        case("xdp_ns_not_vip_v6", None, NotVip(frame(Pkt::tcp(cl6, ip("2001:db8::2"), 40000, 22)))),
        // One-arm: the established flow above, back out of b0 (redirect through
        // HAIRPIN_PORTS), and its reply from web1 back out of c0 (XDP_TX).
        one_arm("xdp_ns_established_tcp_v4_one_arm", Some("web4"), tcp_flow(cl4, vip4)),
        one_arm("xdp_ns_reply_tcp_v4_one_arm", None, Reply(frame(reply))),
        // Forwarding modes side by side: DSR, ipip and gue (tail call to xlb_encap).
        case("xdp_ns_established_tcp_v4_dsr", Some("dsr4"), tcp_flow(cl4, ip("198.18.0.20"))),
        case("xdp_ns_established_tcp_v4_ipip", Some("ipip4"), tcp_flow(cl4, ip("198.18.0.40"))),
        case("xdp_ns_established_tcp_v4_gue", Some("gue4"), tcp_flow(cl4, ip("198.18.0.41"))),
        case("xdp_ns_established_tcp_v6_gue", Some("gue6"), tcp_flow(cl6, ip("2001:db8::41"))),
    ]
}

/// Counter deltas the measurement must have produced, per service.
#[derive(Default, Clone, Copy)]
struct Expect {
    new_flows: u64,
    established: u64,
}

fn main() -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("run as root (BPF and network namespaces)");
    }
    let opts = Opts::from_args()?;
    let calls: usize = if opts.quick { 20_000 } else { 100_000 };
    let reps = opts.reps;
    let conntrack = conntrack_entries(calls, reps);
    method(
        "xdp_ns",
        &format!(
            "BPF_PROG_TEST_RUN, {calls} calls of repeat=1 per figure and repetition, mean of the kernel-reported \
             durations; {reps} repetitions interleaving every figure with the floor (xlb_floor, XDP_PASS, same object, \
             same harness); NAT services; conntrack and reverse-NAT maps sized {conntrack} so that no inserted flow is \
             evicted (the new-flow cost grows as they fill); proof by the program's per-service counters"
        ),
    );
    method(
        "xdp_ns_one_arm",
        "*_one_arm: packets that leave by the interface they came in on. established_tcp_v4_one_arm: the \
         established TCP/IPv4 packet arriving on the backend-side veth, which the daemon lists in HAIRPIN_PORTS \
         (as for a veth attached in native mode): XDP_REDIRECT through that device map (XDP_TX with objects from \
         before it); reply_tcp_v4_one_arm: that flow's reply from its backend arriving on the client-side veth, \
         with no interface listed (SETTINGS hairpin flag off, as on an lb with real NICs only): XDP_TX without a \
         map search. BPF_PROG_TEST_RUN does not transmit: the cost of sending is in fwd_pps_*_one_arm",
    );
    let b = bed();
    b.ns.run_in(|| run(&b, calls, reps, conntrack))??;
    Ok(())
}

/// Conntrack entries that hold every flow the run inserts (8 new-flow figures
/// on the fixture services, the rate-limited and deny-list ones) at most half
/// full: the new-flow cost grows with the table's fill, so runs with fewer
/// figures (older objects) are compared at the same fill.
fn conntrack_entries(calls: usize, reps: usize) -> u32 {
    // `XLB_COST_CONNTRACK=N`: another table size (a smaller one evicts).
    if let Some(n) = std::env::var("XLB_COST_CONNTRACK").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    u32::try_from((16 * calls * reps + 1024).next_power_of_two()).expect("conntrack size fits u32")
}

/// The fixture services and two with the firewall on, both TCP/IPv4 NAT like web4 (to web2
/// on ports no other service uses): fw4 (198.18.0.60:80) with 1,000 `deny` /32s (198.18.100.0 to 198.18.103.231; no
/// client of the run is among them, so every new flow searches the trie and is admitted), and
/// rl4 (198.18.0.61:80) with `new_flows_per_source` high enough never to refuse.
fn firewall_config(conntrack: u32) -> Config {
    let mut cfg = fixture_config();
    cfg.daemon.conntrack_entries = conntrack;
    let mut fw = cfg.services.iter().find(|s| s.name == "web4").expect("fixture web4").clone();
    fw.name = "fw4".into();
    fw.vip = "198.18.0.60:80".parse().unwrap();
    // Backends of their own: a backend shared by NAT services makes every new flow write a
    // reverse entry too (BACKEND_F_SHARED), which would add to these figures.
    fw.backends[0].address = "198.18.1.12:8080".parse().unwrap();
    fw.deny = (0..1000u32)
        .map(|i| Cidr { addr: IpAddr::from([198, 18, 100 + (i / 250) as u8, (i % 250) as u8]), len: 32 })
        .collect();
    let mut rl = fw.clone();
    rl.name = "rl4".into();
    rl.vip = "198.18.0.61:80".parse().unwrap();
    rl.deny.clear();
    rl.backends[0].address = "198.18.1.12:8084".parse().unwrap();
    rl.new_flows_per_source = Some(RateLimit { rate: 1_000_000_000, burst: 1_000_000 });
    cfg.services.extend([fw, rl]);
    cfg
}

fn run(b: &xlb_testbed::xdpbed::Bed, calls: usize, reps: usize, conntrack: u32) -> anyhow::Result<()> {
    let mut cfg = firewall_config(conntrack);
    // web4 again (one more backend), scheduled by round robin and by least connections.
    let web4 = cfg.services.iter().find(|s| s.name == "web4").expect("fixture service web4").clone();
    for (name, vip, scheduler) in [("web4rr", VIP_RR, Scheduler::RoundRobin), ("web4lc", VIP_LC, Scheduler::LeastConn)]
    {
        let mut s = web4.clone();
        s.name = name.into();
        s.vip = SocketAddr::new(ip(vip), 80);
        s.scheduler = scheduler;
        // Ports of their own: a backend shared by two NAT services costs a reverse entry per new flow.
        let port = if scheduler == Scheduler::RoundRobin { 8081 } else { 8082 };
        s.backends = ["198.18.1.11", "198.18.1.12"]
            .iter()
            .map(|a| BackendConfig { address: SocketAddr::new(ip(a), port), weight: 1, role: Role::Primary })
            .collect();
        cfg.services.push(s);
    }
    let mut bal = match std::env::var_os("XLB_COST_OBJECT") {
        // Another object than the embedded one, read at run time: variants side
        // by side without rebuilding the harness.
        Some(path) => {
            use xlb::dataplane::{Dataplane, ObjectFile, Sizes};
            let obj = ObjectFile::read(std::path::Path::new(&path))?;
            eprintln!("object: {}", std::path::Path::new(&path).display());
            let (stride, regions) = Balancer::<Dataplane>::table_room(&cfg);
            let sizes = Sizes { conntrack_entries: cfg.daemon.conntrack_entries, ring_entries: stride * regions };
            Balancer::new(Dataplane::load_with(sizes, obj.bytes(), None)?, stride, regions)
        }
        None => Balancer::load(&cfg)?,
    };
    if !bal.dp.has_map(lb_common::maps::SOURCE_RULES) {
        eprintln!("the XDP object has no firewall: no fw4/rl4 services (their figures are missing)");
        cfg.services.retain(|s| s.name != "fw4" && s.name != "rl4");
    }
    bal.apply(&cfg)?;
    // As the daemon does: the conntrack guard checks every new flow (a rate
    // never reached here, so every flow is tracked and counted as inserted).
    let guard: u32 = std::env::var("XLB_COST_GUARD_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
    bal.dp.set_guard_rate(guard)?;
    // As the daemon does: next hops from the neighbour table, no FIB per packet.
    bal.refresh_next_hops()?;
    // As the daemon does for a veth attached in native mode (an object built
    // before HAIRPIN_PORTS has none: its one-arm packets leave with XDP_TX).
    if let Err(e) = bal.dp.hairpin_by_redirect("b0") {
        eprintln!("one-arm figures with XDP_TX: {e:#}");
    }
    let frame = |mut p: Pkt| {
        p.eth_dst = b.c0_mac;
        p.eth_src = CLIENT_MAC;
        p.build()
    };
    let cases = cases(frame, calls * reps);
    let service_id = |name: &str| bal.services.iter().find(|s| s.cfg.name == name).map(|s| s.id);
    bal.dp.floor_program()?;
    let info = bal.dp.program().info()?;
    eprintln!(
        "xlb program: {} instructions processed by the verifier, {} bytes translated, {} bytes jitted",
        info.verified_instruction_count().unwrap_or(0),
        info.size_translated().unwrap_or(0),
        info.size_jitted(),
    );
    // Warm up: open the established flows (their conntrack entries), then send their packets.
    for c in cases.iter().filter(|c| !c.one_arm) {
        if let Traffic::Established { open, packet } = &c.traffic {
            measure(bal.dp.program(), std::slice::from_ref(open), b.c0, 1, &[XDP_REDIRECT]);
            measure(bal.dp.program(), std::slice::from_ref(packet), b.c0, 10, &[XDP_REDIRECT]);
        }
    }
    let services: Vec<&str> =
        ["web4", "web6", "dns4", "dns6", "web4rr", "web4lc", "fw4", "rl4", "dsr4", "ipip4", "gue4", "gue6"]
            .into_iter()
            .filter(|s| service_id(s).is_some())
            .collect();
    // `XLB_COST_ONLY=name,name`: only these figures (for a profile of one path).
    let only: Option<Vec<String>> =
        std::env::var("XLB_COST_ONLY").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| c.service.is_none_or(|s| services.contains(&s)))
        .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|n| n == c.name)))
        .collect();
    let stats = |bal: &Balancer| -> anyhow::Result<Vec<ServiceStats>> {
        services.iter().map(|s| bal.dp.service_stats(service_id(s).expect("fixture service"))).collect()
    };
    let before = stats(&bal)?;
    let mut expect = vec![Expect::default(); services.len()];
    let mut figs = Figures::default();
    // The floor sees the packet of the first case (established TCP/IPv4).
    let floor_packet = [first_packet(&cases[0])];
    for rep in 0..reps {
        figs.push("xdp_ns_floor", measure(bal.dp.floor_program()?, &floor_packet, b.c0, calls, &[XDP_PASS]));
        for c in &cases {
            let slot = c.service.and_then(|s| services.iter().position(|&x| x == s));
            let (ifindex, sent): (u32, &[u32]) = if c.one_arm { (b.b0, &BACK_OUT) } else { (b.c0, &[XDP_REDIRECT]) };
            // HAIRPIN_PORTS is searched only for the one-arm case on a listed
            // veth; every other case sees what an lb without veths sees.
            bal.dp.hairpin_lookups(c.one_arm && c.service.is_some())?;
            let prog = bal.dp.program();
            let ns = match &c.traffic {
                Traffic::Established { packet, .. } => {
                    expect[slot.unwrap()].established += calls as u64;
                    measure(prog, std::slice::from_ref(packet), ifindex, calls, sent)
                }
                Traffic::NewFlows(all) => {
                    expect[slot.unwrap()].new_flows += calls as u64;
                    measure(prog, &all[rep * calls..(rep + 1) * calls], ifindex, calls, sent)
                }
                Traffic::NotVip(p) => measure(prog, std::slice::from_ref(p), b.c0, calls, &[XDP_PASS]),
                Traffic::Reply(p) => measure(prog, std::slice::from_ref(p), b.c0, calls, &[XDP_TX]),
            };
            figs.push(c.name, ns);
        }
    }
    let after = stats(&bal)?;
    emit("xdp_ns_floor", figs.samples("xdp_ns_floor"));
    let floor = summarize(figs.samples("xdp_ns_floor")).map(|s| s.median);
    for c in &cases {
        let proof = c.service.map(|s| {
            let i = services.iter().position(|&x| x == s).unwrap();
            let (new, est) = (after[i].new_flows - before[i].new_flows, after[i].established - before[i].established);
            (s, new, est, expect[i])
        });
        match proof {
            Some((s, new, est, e)) if new != e.new_flows || est != e.established => missing(
                c.name,
                &format!("counter proof failed for service {s}: {new} new flows (expected {}), {est} established hits (expected {})", e.new_flows, e.established),
            ),
            _ => emit(c.name, figs.samples(c.name)),
        }
        if let (Some((s, new, est, _)), Some(f), Some(m)) = (proof, floor, summarize(figs.samples(c.name))) {
            eprintln!(
                "{:<28} {:>7.1} ns  {:.2}x floor  (service {s}: {new} new flows, {est} established hits in total)",
                c.name,
                m.median,
                m.median / f
            );
        }
    }
    Ok(())
}

fn first_packet(c: &Case) -> Vec<u8> {
    match &c.traffic {
        Traffic::Established { packet: p, .. } | Traffic::NotVip(p) | Traffic::Reply(p) => p.clone(),
        Traffic::NewFlows(all) => all[0].clone(),
    }
}
