//! Network benchmarks for `cargo xtask bench`, in one namespace topology
//! (client -> lb -> switch -> web1, web2):
//!
//! - `fwd_pps_*`: UDP packets/s forwarded by the lb, xlb (NAT) against
//!   nftables DNAT (numgen over the same backends), from an XDP live-frames
//!   generator (xlb_testbed::bench::fwd); `fwd_pps_xlb_nat_one_arm`: xlb
//!   forwarding to backends behind the interface the packets came in by;
//! - `http_*`: wrk through xlb, through haproxy (mode tcp, roundrobin) and
//!   straight to web1, kept-alive (`rps`, `p99_ms` at full speed, `p99_ms_paced`
//!   at a load below every contender's capacity) and one connection per
//!   request (`cps`);
//! - `lb_cpu_*`: CPU seconds the lb spent per million packets or requests
//!   (xlb_testbed::bench::cpu);
//! - `failover_ms`: active-passive failover time (xlb_testbed::bench::failover);
//! - `failover_ms_lb`: losing one of two lbs behind an ECMP router (in its own
//!   topology, xlb_testbed::ha): from the host's death to the last stalled
//!   kept-alive connection answering again.
//!
//! Contenders alternate within each repetition, so the ratios are taken side
//! by side under the same machine load. Prints `FIG`/`MISSING`/`METHOD` lines.
//! `cargo run --release -p xlb-testbed --example bench_net -- [--quick] [--reps N]` as root.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xlb_testbed::{
    bench::{
        self,
        cpu::{seconds_per_million, softirq_charged_to_task, LbCpu, NapiThreads},
        failover,
        fwd::{run_once, Generator, FRAME_LEN},
        http::{wrk, Haproxy, Load, WrkResult},
        method, Figures, Opts,
    },
    config::{web, ServiceToml},
    http_url, is_root,
    packet::{mac_string, Pkt},
    xlb::Daemon,
    Netns, Nginx, NginxConfig, Topology, CLIENT_V4, VIP_V4,
};

/// Distinct UDP flows (source ports) the generator cycles through.
const FLOWS: u32 = 4096;
const FIRST_PORT: u16 = 10_000;
const FWD_PORT: u16 = 9;

/// xlb for the forwarding and HTTP runs: UDP port 9 and HTTP on the VIP, NAT,
/// over web1 and web2, no health checks.
fn xlb_config() -> String {
    let service = |name, port: u16, protocol| {
        ServiceToml::new(name, (VIP_V4, port).into())
            .set("protocol", protocol)
            .set("forwarding", "nat")
            .no_checks()
            .backend(web(1, port))
            .backend(web(2, port))
    };
    bench::xlb_config().service(service("www", 80, "tcp")).service(service("fwd", FWD_PORT, "udp")).to_string()
}

/// One-arm forwarding: backends reached by the lb's client-side `eth0`, the
/// way the frames came in (198.18.1.96/27 routed there; addresses no host
/// has: static neighbours with the client's MAC, whose `eth0` counts them).
const ONE_ARM_ROUTE: &str = "198.18.1.96/27";
const ONE_ARM_BACKENDS: [&str; 2] = ["198.18.1.111", "198.18.1.112"];

/// xlb for the one-arm forwarding run: UDP port 9 on the VIP, NAT, over the
/// two one-arm backends.
fn xlb_config_one_arm() -> String {
    let svc = ONE_ARM_BACKENDS.iter().fold(
        ServiceToml::new("fwd", (VIP_V4, FWD_PORT).into()).set("protocol", "udp").set("forwarding", "nat").no_checks(),
        |svc, b| svc.backend(SocketAddr::new(b.parse().expect("address literal"), FWD_PORT)),
    );
    bench::xlb_config().service(svc).to_string()
}

/// The lb's route and static neighbours for [`ONE_ARM_BACKENDS`], via `eth0`.
fn one_arm_backends(topo: &Topology) -> Result<()> {
    topo.lb_ns().ip(&["route", "add", ONE_ARM_ROUTE, "dev", "eth0"])?;
    let mac = mac_string(topo.client_ns().mac("eth0")?);
    for b in ONE_ARM_BACKENDS {
        topo.lb_ns().ip(&["neigh", "replace", b, "lladdr", &mac, "dev", "eth0", "nud", "permanent"])?;
    }
    Ok(())
}

const NFT_TABLE: &str = "xlb_bench";

fn nft_dnat_rules() -> String {
    format!(
        "table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP_V4} udp dport {FWD_PORT} dnat to numgen inc mod 2 map {{ 0 : 198.18.1.11, 1 : 198.18.1.12 }}
    }}
}}
"
    )
}

/// nftables DNAT in the lb namespace while it lives.
struct NftDnat<'a>(&'a Netns);

impl<'a> NftDnat<'a> {
    fn add(ns: &'a Netns) -> Result<Self> {
        let out = ns.exec_stdin(&["nft", "-f", "-"], nft_dnat_rules().as_bytes(), Duration::from_secs(10))?;
        if !out.status.success() {
            bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(NftDnat(ns))
    }
}

impl Drop for NftDnat<'_> {
    fn drop(&mut self) {
        let _ = self.0.exec_timeout(&["nft", "delete", "table", "ip", NFT_TABLE], Duration::from_secs(10));
    }
}

/// Static neighbour entries on the lb for the backends: neither contender
/// waits for ARP during a run.
fn pin_backend_neighbours(topo: &Topology) -> Result<()> {
    for b in topo.backends() {
        let mac = mac_string(b.ns().mac("eth0")?);
        topo.lb_ns().ip(&[
            "neigh",
            "replace",
            &b.ipv4().to_string(),
            "lladdr",
            &mac,
            "dev",
            "eth1",
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// Every veth end of the topology, by namespace.
fn interfaces(topo: &Topology) -> Vec<(&Netns, Vec<String>)> {
    let ports = std::iter::once("p-lb".to_owned()).chain(topo.backends().iter().map(|b| format!("p-{}", b.name())));
    let mut v = vec![
        (topo.lb_ns(), vec!["eth0".to_owned(), "eth1".to_owned()]),
        (topo.client_ns(), vec!["eth0".to_owned()]),
        (topo.switch_ns(), ports.collect()),
    ];
    v.extend(topo.backends().iter().map(|b| (b.ns(), vec!["eth0".to_owned()])));
    v
}

/// Threaded NAPI on every interface, the lb first: the lb's receive work then
/// runs in its own kernel threads (returned, to be measured), and the work of
/// the hosts it sends to runs in theirs (not counted as the lb's).
fn threaded_on(topo: &Topology) -> Result<NapiThreads> {
    let mut lb = None;
    for (ns, ifaces) in interfaces(topo) {
        let t = NapiThreads::enable(ns, &ifaces.iter().map(String::as_str).collect::<Vec<_>>())?;
        lb.get_or_insert(t);
    }
    lb.context("no interface")
}

/// Back to the kernel's default: NAPI polled in softirq (threads go away).
fn threaded_off(topo: &Topology) -> Result<()> {
    for (ns, ifaces) in interfaces(topo) {
        for i in ifaces {
            set_threaded(ns, &i, false)?;
        }
    }
    Ok(())
}

fn set_threaded(ns: &Netns, iface: &str, on: bool) -> Result<()> {
    ns.run(&["sh", "-c", &format!("echo {} > /sys/class/net/{iface}/threaded", u8::from(on))]).map(|_| ())
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("run as root (network namespaces, XDP)");
    }
    let opts = Opts::from_args()?;
    let topo = Topology::builder().backends(2).build()?;
    pin_backend_neighbours(&topo)?;
    let mut figs = Figures::default();
    // Forwarding first: it wants no threaded NAPI (see bench::fwd).
    if opts.runs("fwd") {
        let r = fwd(&topo, &opts, &mut figs);
        section(&mut figs, &FWD_FIGURES, r);
    }
    let mut web = start_web(&topo)?;
    if opts.runs("http") {
        let r = http(&topo, &opts, &mut figs);
        section(&mut figs, &HTTP_FIGURES, r);
    }
    if opts.runs("failover") {
        let r = failover_bench(&topo, &mut web, &opts, &mut figs);
        section(&mut figs, &["failover_ms"], r);
    }
    if opts.runs("failover_lb") {
        let r = failover_lb_bench(&opts, &mut figs);
        section(&mut figs, &["failover_ms_lb"], r);
    }
    figs.emit_all();
    Ok(())
}

const FWD_FIGURES: [&str; 4] =
    ["fwd_pps_xlb_nat", "fwd_pps_xlb_nat_one_arm", "fwd_pps_nftables_dnat", "lb_cpu_fwd_xlb_nat"];
const HTTP_FIGURES: [&str; 12] = [
    "http_rps_xlb_nat",
    "http_rps_haproxy",
    "http_rps_direct",
    "http_p99_ms_xlb_nat",
    "http_p99_ms_haproxy",
    "http_p99_ms_direct",
    "http_p99_ms_paced_xlb_nat",
    "http_p99_ms_paced_haproxy",
    "http_p99_ms_paced_direct",
    "http_cps_xlb_nat",
    "http_cps_haproxy",
    "http_cps_direct",
];

/// A section that stopped with an error: its figures without any sample are
/// reported missing with that error; the others keep what was measured.
fn section(figs: &mut Figures, names: &[&str], r: Result<()>) {
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        for name in names {
            if figs.samples(name).is_empty() {
                figs.fail(name, format!("{e:#}"));
            }
        }
    }
}

fn fwd(topo: &Topology, opts: &Opts, figs: &mut Figures) -> Result<()> {
    let frames: u32 = if opts.quick { 1_000_000 } else { 3_000_000 };
    method(
        "fwd_pps",
        &format!(
            "XDP live-frames generator (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, batch 64) in the client \
             namespace: {frames} UDP/IPv4 64-byte frames per run over {FLOWS} flows (source ports), XDP_TX out of the \
             client's eth0; counted and dropped by an XDP sink on the switch port facing the lb (frames to \
             198.18.1.0/24 only); pps = frames at the sink / wall time of the generator run. No threaded NAPI on this \
             path, so generator, lb and sink run in lock-step on the generator's CPU (nothing lost to queue overflow): \
             the figure includes the generator's and the sink's cost, see fwd_pps_generator_only (generator -> sink on \
             the lb's eth0, no forwarding) for the ceiling. A warm-up run fills conntrack first. nftables: prerouting \
             dnat to numgen inc mod 2 over web1, web2. fwd_pps_xlb_nat_one_arm: the same frames, xlb NAT to two \
             backends routed back out of the lb's eth0 ({ONE_ARM_ROUTE}, static neighbours with the client's MAC), \
             counted and dropped by the same sink on the client's eth0: every frame leaves the lb by the veth it came \
             in by (XDP_REDIRECT through HAIRPIN_PORTS; XDP_TX with objects from before it)"
        ),
    );
    let charged = softirq_charged_to_task();
    method(
        "lb_cpu_fwd",
        &format!(
            "CPU time of the generator's thread (CLOCK_THREAD_CPUTIME_ID) per forwarded frame minus the same per frame \
             in the generator-only run of the same repetition: the lb's receive path (XDP or GRO/forwarding/nftables) \
             and its hand-off to the next veth. Valid because the kernel charges softirq work to the task it runs on \
             (CONFIG_IRQ_TIME_ACCOUNTING off: {})",
            match charged {
                Some(true) => "checked",
                Some(false) => "NO, it is on here: figure not reported",
                None => "unknown, kernel config not readable: figure not reported",
            }
        ),
    );
    let mut g = Generator::load()?;
    g.set_flows(FLOWS, FIRST_PORT)?;
    let mut pkt = Pkt::udp(CLIENT_V4.into(), VIP_V4.into(), FIRST_PORT, FWD_PORT);
    pkt.udp_no_csum = true;
    pkt.payload = vec![0; FRAME_LEN - 14 - 20 - 8];
    pkt.eth_src = topo.client_ns().mac("eth0")?;
    pkt.eth_dst = topo.lb_ns().mac("eth0")?;
    g.set_frame(&pkt.build())?;
    g.attach_sink(topo.switch_ns(), "p-lb")?;
    one_arm_backends(topo)?;
    // The one-arm run's frames come back to the client's eth0.
    g.attach_sink(topo.client_ns(), "eth0")?;
    let client = topo.client_ns();
    for _ in 0..opts.reps {
        let base = {
            let link = g.attach_sink(topo.lb_ns(), "eth0")?;
            let r = run_once(&g, client, "eth0", frames);
            g.detach_sink(link)?;
            r?
        };
        figs.push("fwd_pps_generator_only", base.other as f64 / base.took.as_secs_f64());
        let base_cpu = base.cpu_ns_per_frame(base.other).context("the generator-only run reached no sink")?;
        let mut one = |name: &str| -> Result<()> {
            run_once(&g, client, "eth0", FLOWS * 8)?; // warm-up: every flow known
            let r = run_once(&g, client, "eth0", frames)?;
            if r.to_backends == 0 || r.other > 0 {
                figs.fail(
                    &format!("fwd_pps_{name}"),
                    format!("{} frames reached the backends, {} elsewhere", r.to_backends, r.other),
                );
                return Ok(());
            }
            figs.push(&format!("fwd_pps_{name}"), r.pps());
            if let (Some(true), Some(ns)) = (charged, r.cpu_ns_per_frame(r.to_backends)) {
                // ns per frame -> CPU seconds per million frames
                figs.push(&format!("lb_cpu_fwd_{name}"), (ns - base_cpu) / 1000.0);
            }
            Ok(())
        };
        {
            let _d = Daemon::start(topo.lb_ns(), &xlb_config(), &["eth0", "eth1"])?;
            one("xlb_nat")?;
        }
        {
            let _d = Daemon::start(topo.lb_ns(), &xlb_config_one_arm(), &["eth0", "eth1"])?;
            one("xlb_nat_one_arm")?;
        }
        {
            let _nft = NftDnat::add(topo.lb_ns())?;
            one("nftables_dnat")?;
        }
    }
    Ok(())
}

fn start_web(topo: &Topology) -> Result<Vec<Nginx>> {
    topo.backends()
        .iter()
        .map(|b| Nginx::spawn_with(b.ns(), NginxConfig { access_log: false, ..NginxConfig::new(b.name()) }))
        .collect()
}

#[derive(Clone, Copy)]
enum Contender {
    Direct,
    Xlb,
    Haproxy,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Xlb => "xlb_nat",
            Contender::Haproxy => "haproxy",
        }
    }
}

/// What runs in the lb for one contender; stopped on drop.
enum Running<'a> {
    Direct,
    Xlb(Box<Daemon>),
    Haproxy { haproxy: Haproxy, _vip: VipOnLo<'a> },
}

impl Running<'_> {
    fn pids(&self) -> Vec<u32> {
        match self {
            Running::Direct => vec![],
            Running::Xlb(d) => vec![d.pid()],
            Running::Haproxy { haproxy, .. } => vec![haproxy.pid()],
        }
    }
}

/// The VIP on the lb's `lo` (haproxy must own the address it listens on).
struct VipOnLo<'a>(&'a Netns);

impl<'a> VipOnLo<'a> {
    fn add(ns: &'a Netns) -> Result<Self> {
        ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
        Ok(VipOnLo(ns))
    }
}

impl Drop for VipOnLo<'_> {
    fn drop(&mut self) {
        let _ = self.0.ip(&["addr", "del", &format!("{VIP_V4}/32"), "dev", "lo"]);
    }
}

fn start(topo: &Topology, c: Contender) -> Result<Running<'_>> {
    Ok(match c {
        Contender::Direct => Running::Direct,
        Contender::Xlb => Running::Xlb(Box::new(Daemon::start(topo.lb_ns(), &xlb_config(), &["eth0", "eth1"])?)),
        Contender::Haproxy => {
            let vip = VipOnLo::add(topo.lb_ns())?;
            let backends: Vec<SocketAddr> =
                topo.backends().iter().map(|b| SocketAddr::new(b.ipv4().into(), 80)).collect();
            let h = Haproxy::start(topo.lb_ns(), SocketAddr::new(VIP_V4.into(), 80), &backends)?;
            Running::Haproxy { haproxy: h, _vip: vip }
        }
    })
}

fn http(topo: &Topology, opts: &Opts, figs: &mut Figures) -> Result<()> {
    let (secs, cpu_secs) = if opts.quick { (1, 1) } else { (4, 2) };
    let load =
        |close, secs| Load { threads: 2, connections: 64, duration: Duration::from_secs(secs), close, think_ms: 0 };
    method(
        "http",
        &format!(
            "wrk -t2 -c64 -d{secs}s --latency from the client namespace; rps and p99 with kept-alive connections, cps \
             with 'Connection: close' on every request; direct = http://198.18.1.11/ (web1, routed by the lb's kernel); \
             xlb and haproxy = http://{VIP_V4}/ over web1 and web2 (nginx, 1 worker, no access log); haproxy 'mode tcp', \
             'balance roundrobin', default threads, VIP on the lb's lo; kernel default NAPI (softirq); contenders \
             alternate within each repetition; a run with more than 1% errors is discarded. lb CPU: the same loads for \
             {cpu_secs} s with threaded NAPI (see lb_cpu_http)"
        ),
    );
    method(
        "http_p99_ms",
        &format!(
            "99th percentile of wrk's request latency in the kept-alive rps runs. Those runs are closed loops at full \
             speed: on 2 cores shared by wrk's 2 threads, nginx and the lb, the cheaper the lb, the closer wrk and the \
             nginx workers come to using all CPU; then they rarely sleep, the scheduler time-slices them, and a \
             request waits for the slices of the tasks ahead of it, so this p99 mostly measures CPU saturation of \
             the load generator and the servers, not the forwarding path. http_p99_ms_paced_*: the same wrk with a \
             think time of {THINK_MS} ms per connection after every answer (wrk Lua delay(); not counted as \
             latency), which caps the offered load at about 64 / {THINK_MS} ms = {} k requests/s, well below every \
             contender's capacity: the latency of the path at equal load",
            64 / THINK_MS
        ),
    );
    method(
        "lb_cpu_http",
        "HTTP: CPU seconds per million requests spent in the lb namespace: on-CPU time \
         (/proc/PID/schedstat) of the lb's threaded-NAPI kernel threads (napi/eth0-ID, napi/eth1-ID), which run everything the kernel does \
         for packets the lb receives (XDP for xlb; GRO, forwarding, nftables, TCP receive for the others) and \
         their hand-off to the next veth; plus process CPU (/proc/PID/stat utime+stime) of haproxy or of the xlb \
         daemon. Every other interface of the topology runs threaded NAPI too, so receivers' work is not counted. \
         Not counted: TCP timers and softirq work outside those threads. Threaded NAPI changes how work is \
         scheduled (it costs haproxy more than xlb on this 2-core machine), so these CPU figures come from separate \
         wrk runs of the same load with threaded NAPI on, right after the throughput runs (kernel default NAPI) of \
         the same contender and repetition",
    );
    let direct = http_url(topo.backend(1).ipv4().into(), 80, "/");
    let vip = http_url(VIP_V4.into(), 80, "/");
    wrk(topo.client_ns(), &direct, load(false, 1))?; // warm-up
    for _ in 0..opts.reps {
        for c in [Contender::Direct, Contender::Xlb, Contender::Haproxy] {
            let running = start(topo, c)?;
            let url = if matches!(c, Contender::Direct) { &direct } else { &vip };
            for close in [false, true] {
                throughput(topo, url, c, load(close, secs), figs);
            }
            paced_latency(topo, url, c, Load { think_ms: THINK_MS, ..load(false, secs) }, figs);
            let napi = threaded_on(topo)?;
            let cpu = LbCpu { napi: &napi, pids: running.pids() };
            for close in [false, true] {
                lb_cpu(topo, url, c, load(close, cpu_secs), &cpu, figs)?;
            }
            threaded_off(topo)?;
        }
    }
    Ok(())
}

fn kind(load: &Load) -> &'static str {
    if load.close {
        "cps"
    } else {
        "rps"
    }
}

/// Requests (or connections) per second, and p99 for kept-alive connections.
fn throughput(topo: &Topology, url: &str, c: Contender, load: Load, figs: &mut Figures) {
    let name = format!("http_{}_{}", kind(&load), c.name());
    if let Some(r) = measured(topo, url, load, &name, figs) {
        figs.push(&name, r.rps);
        if !load.close {
            figs.push(&format!("http_p99_ms_{}", c.name()), r.p99_ms);
        }
    }
}

/// Think time per connection for `http_p99_ms_paced_*` (see the METHOD text).
const THINK_MS: u32 = 4;

/// p99 latency at a paced load (`load.think_ms`), below every contender's capacity.
fn paced_latency(topo: &Topology, url: &str, c: Contender, load: Load, figs: &mut Figures) {
    let name = format!("http_p99_ms_paced_{}", c.name());
    if let Some(r) = measured(topo, url, load, &name, figs) {
        figs.push(&name, r.p99_ms);
    }
}

/// One wrk run for figure `name`: its result, or `None` with the failure
/// recorded (wrk failed, or more than 1% errors).
fn measured(topo: &Topology, url: &str, load: Load, name: &str, figs: &mut Figures) -> Option<WrkResult> {
    match wrk(topo.client_ns(), url, load) {
        Ok(r) if r.errors * 100 <= r.requests => Some(r),
        Ok(r) => {
            figs.fail(name, format!("{} errors in {} requests", r.errors, r.requests));
            None
        }
        Err(e) => {
            figs.fail(name, format!("{e:#}"));
            None
        }
    }
}

/// CPU seconds the lb spends per million requests under `load`.
fn lb_cpu(topo: &Topology, url: &str, c: Contender, load: Load, cpu: &LbCpu, figs: &mut Figures) -> Result<()> {
    let name = format!("lb_cpu_http_{}_{}", kind(&load), c.name());
    let c0 = cpu.now_ns()?;
    let r = measured(topo, url, load, &name, figs);
    let c1 = cpu.now_ns()?;
    if let Some(s) = r.and_then(|r| seconds_per_million(c1 - c0, r.requests)) {
        figs.push(&name, s);
    }
    Ok(())
}

fn failover_bench(topo: &Topology, web: &mut [Nginx], opts: &Opts, figs: &mut Figures) -> Result<()> {
    method(
        "failover_ms",
        &format!(
            "xlb, http checks interval_ms=200 timeout_ms=150 fall=2 rise=2, web1 primary, web2 role=backup, every backend \
             checked once before the first repetition; stop web1's \
             nginx, then a new curl request (0.3 s cap) every 10 ms until web2 answers; gives up after {} s (no further \
             repetitions then); web1 restarted and answering again before the next repetition",
            failover::GIVE_UP.as_secs()
        ),
    );
    let d = Daemon::start(topo.lb_ns(), &failover::config(), &["eth0", "eth1"])?;
    // Steady state first: a backend's first check decides at once (no `fall`),
    // which would make the first repetition look faster than a failover is.
    d.wait_checked(Duration::from_secs(5)).context("after starting xlb")?;
    let client = topo.client_ns();
    let url = http_url(VIP_V4.into(), 80, "/");
    let [web1, ..] = web else { bail!("no backend") };
    for _ in 0..opts.reps {
        if !failover::wait_for(client, &url, "web1\n", Duration::from_secs(5)) {
            figs.fail("failover_ms", "the VIP does not answer from web1 (the primary) within 5 s");
            break;
        }
        let r = failover::measure(client, web1, "web2\n");
        web1.start().context("restarting web1")?;
        match r {
            Ok(ms) => figs.push("failover_ms", ms),
            Err(e) => {
                figs.fail("failover_ms", format!("{e:#}"));
                break;
            }
        }
    }
    drop(d);
    Ok(())
}

/// Kept-alive connections held through each lb failover.
const LB_FAILOVER_CONNECTIONS: usize = 20;

fn failover_lb_bench(opts: &Opts, figs: &mut Figures) -> Result<()> {
    use xlb_testbed::ha::{drive, last_stall, open_connections, HaTopology, BFD_INTERVAL_MS, BFD_MULTIPLIER};
    method(
        "failover_ms_lb",
        &format!(
            "two lbs (xlb one-arm DSR + BIRD, BGP with BFD {BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER}, no graceful \
             restart) behind a router (BIRD, merge paths, fib_multipath_hash_policy=1), 3 nginx backends; \
             {LB_FAILOVER_CONNECTIONS} kept-alive connections each sending a request every 20 ms; lb1's host dies \
             (its BIRD SIGKILLed, its link set down, its xlb SIGKILLed); the figure is the time from the death to \
             the answer that ends the last stalled connection's pause (a pause: over 100 ms without an answer; TCP \
             retransmission included); lb1 is brought back and \
             both paths are routed again before the next repetition"
        ),
    );
    let mut topo = HaTopology::build(2, 3)?;
    let mut d1 = Daemon::start(&topo.lb(1).ns, &topo.xlb_config(1, &[1, 2, 3]), &["eth0"])?;
    let _d2 = Daemon::start(&topo.lb(2).ns, &topo.xlb_config(2, &[3, 1, 2]), &["eth0"])?;
    for _ in 0..opts.reps {
        topo.wait_next_hops(&[1, 2], Duration::from_secs(20)).context("both lbs routed")?;
        let mut conns = open_connections(&topo, LB_FAILOVER_CONNECTIONS)?;
        let (logs, killed) = drive(&mut conns, Duration::from_millis(20), Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(300));
            let killed = std::time::Instant::now();
            let _ = topo.kill_lb_host(1);
            let _ = d1.stop_with(libc::SIGKILL);
            let _ = topo.wait_next_hops(&[2], Duration::from_secs(5));
            std::thread::sleep(Duration::from_secs(3));
            killed
        });
        match last_stall(&logs, killed) {
            Some(t) => figs.push("failover_ms_lb", t.as_secs_f64() * 1000.0),
            None => {
                figs.fail("failover_ms_lb", "a kept-alive connection never answered again after lb1 died");
                break;
            }
        }
        drop(conns);
        topo.revive_lb_host(1)?;
        d1.spawn(&[])?;
    }
    Ok(())
}
