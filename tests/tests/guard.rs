//! The conntrack guard (Katran's): above `conntrack_guard_rate` new flows per
//! second on a CPU, new flows are forwarded by Maglev without a conntrack
//! entry. Fixtures through BPF_PROG_TEST_RUN on one CPU.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::counter;
use xlb::{balancer::Balancer, config::Protocol};
use xlb_testbed::{
    packet::{parse_and_verify, Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config as config, run, CLIENT_MAC, WEB1_MAC, WEB2_MAC},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn with_macs(mut p: Pkt, dst: [u8; 6], src: [u8; 6]) -> Pkt {
    p.eth_dst = dst;
    p.eth_src = src;
    p
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Keeps this thread on one CPU: the guard counts per CPU, and a test run
/// runs on the CPU of the thread that asks for it.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpu = libc::sched_getcpu().max(0) as usize;
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pinning to CPU {cpu}");
    }
}

/// With the guard at 3 flows per second: the first 3 SYNs of the window are
/// tracked, the 4th and 5th are forwarded to their Maglev backend without an
/// entry (counted untracked, one activation, the guard shown active); the
/// ACK of an untracked flow goes to the same backend, and the backend's reply
/// is translated back to the VIP without an entry (but not a backend's answer
/// to the lb host itself, which the FIB delivers locally). With the guard off, new
/// flows are tracked again and a reply without an entry is the kernel's.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn guard_stops_tracking_above_its_rate_and_maglev_carries_the_rest() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            pin_to_one_cpu();
            let cfg = config();
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            bal.dp.set_guard_rate(3).unwrap();
            let (cl, vip) = (ip("198.18.0.1"), "198.18.0.30:80".parse::<SocketAddr>().unwrap());
            let mut problems = vec![];
            let c = |bal: &Balancer, i: u32| bal.dp.counters().unwrap()[i as usize];
            let syn = |port: u16| with_macs(Pkt::tcp(cl, vip.ip(), port, 80), b.c0_mac, CLIENT_MAC).build();
            if bal.dp.guard_active().unwrap() {
                problems.push("guard active before any flow".to_string());
            }
            for (i, port) in (44000u16..44005).enumerate() {
                let want = xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, port), vip, Protocol::Tcp).unwrap();
                let before = (bal.dp.conntrack_len().unwrap(), c(&bal, counter::FLOWS_UNTRACKED));
                let (action, out) = run(&bal, &syn(port), b.c0);
                let after = (bal.dp.conntrack_len().unwrap(), c(&bal, counter::FLOWS_UNTRACKED));
                let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
                if action != XDP_REDIRECT || got != Ok(want) {
                    problems.push(format!("SYN {i}: {action} {got:?}, expected redirect to {want}"));
                }
                let tracked = i < 3;
                let want_delta = if tracked { (1, 0) } else { (0, 1) };
                let delta = (after.0 - before.0, after.1 - before.1);
                if delta != want_delta {
                    problems.push(format!(
                        "SYN {i}: (conntrack entries, untracked) +{delta:?}, expected +{want_delta:?} (rate 3)"
                    ));
                }
            }
            if c(&bal, counter::GUARD_ACTIVATIONS) != 1 {
                problems.push(format!("activations {}, expected 1", c(&bal, counter::GUARD_ACTIVATIONS)));
            }
            if !bal.dp.guard_active().unwrap() {
                problems.push("guard not shown active after untracked flows".to_string());
            }
            // The untracked flow's ACK: Maglev again, still no entry.
            let port = 44004;
            let want = xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, port), vip, Protocol::Tcp).unwrap();
            let mut ack = Pkt::tcp(cl, vip.ip(), port, 80);
            ack.tcp_flags = TCP_ACK;
            let before = bal.dp.conntrack_len().unwrap();
            let (action, out) = run(&bal, &with_macs(ack, b.c0_mac, CLIENT_MAC).build(), b.c0);
            let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
            if action != XDP_REDIRECT || got != Ok(want) || bal.dp.conntrack_len().unwrap() != before {
                problems
                    .push(format!("ACK of an untracked flow: {action} {got:?}, expected redirect to {want}, no entry"));
            }
            // Its backend's reply goes back from the VIP.
            let mac = if want.ip() == ip("198.18.1.11") { WEB1_MAC } else { WEB2_MAC };
            let reply = with_macs(Pkt::tcp(want.ip(), cl, want.port(), port), b.b0_mac, mac).build();
            let (action, out) = run(&bal, &reply, b.b0);
            let got = parse_and_verify(&out).map(|p| (SocketAddr::new(p.src, p.sport), p.dport));
            if action != XDP_REDIRECT || got != Ok((vip, port)) {
                problems.push(format!("reply of an untracked flow: {action} {got:?}, expected redirect from {vip}"));
            }
            // The other backend's reply to the same client port is not this flow's.
            let (other, other_mac) =
                if want.ip() == ip("198.18.1.11") { ("198.18.1.12", WEB2_MAC) } else { ("198.18.1.11", WEB1_MAC) };
            let stray = with_macs(Pkt::tcp(ip(other), cl, want.port(), port), b.b0_mac, other_mac).build();
            let (action, _) = run(&bal, &stray, b.b0);
            if action != XDP_PASS {
                problems.push(format!("reply from the backend Maglev did not pick: {action}, expected XDP_PASS"));
            }
            // The lb host's own connection to that backend (a health check from
            // 198.18.1.1, b0's address) whose 5-tuple Maglev would also map to it:
            // its answers are local, not a client's, and stay untouched.
            let lb = ip("198.18.1.1");
            let own = (30000u16..31000)
                .find(|&p| xlb::cli::explain::pick(&cfg, SocketAddr::new(lb, p), vip, Protocol::Tcp).ok() == Some(want))
                .expect("some port of the lb host maps to the backend");
            let answer = with_macs(Pkt::tcp(want.ip(), lb, want.port(), own), b.b0_mac, mac).build();
            let (action, out) = run(&bal, &answer, b.b0);
            if action != XDP_PASS || out != answer {
                problems.push(format!(
                    "backend's answer to the lb host (port {own}): {action}, expected XDP_PASS untouched"
                ));
            }
            // Guard off: tracked again; a reply without an entry is the kernel's.
            bal.dp.set_guard_rate(0).unwrap();
            let (action, _) = run(&bal, &reply, b.b0);
            if action != XDP_PASS {
                problems.push(format!("guard off, reply without an entry: {action}, expected XDP_PASS"));
            }
            let before = bal.dp.conntrack_len().unwrap();
            run(&bal, &syn(44100), b.c0);
            if bal.dp.conntrack_len().unwrap() != before + 1 {
                problems.push("guard off: a SYN made no entry".to_string());
            }
            if bal.dp.guard_active().unwrap() {
                problems.push("guard shown active while off".to_string());
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// How long a new connection opened during the flood may take: long enough
/// for TCP to retransmit a SYN or SYN-ACK once (after its initial 1 s
/// timeout). A 100,000-per-second flood over veths on a 2-CPU machine
/// overflows a kernel queue now and then (a veth's ring or the backlog,
/// before xlb sees the frame or after it sent it); TCP recovers such a loss
/// and the test asks that the connection did.
const NEW_CONNECTION_CAP: Duration = Duration::from_millis(2500);
/// An answer this slow had a retransmission on its way.
const RETRANSMITTED: Duration = Duration::from_millis(900);

/// Without the guard, a full bucket that evicts an open flow's entry (a flood
/// of SYNs can take a handshake in progress) leaves that flow without one:
/// its next packets go to its Maglev backend, and its backend's NAT replies
/// must still go back from the VIP. A table of one bucket (4 slots), NAT
/// service `pair`: before any eviction a reply without an entry is the
/// kernel's; the 5th SYN evicts the 1st flow's entry (counted), then that flow's reply
/// from its Maglev backend is translated, a reply from the other backend is
/// not, and the flow's ACK goes to the same backend without a new entry.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn an_evicted_open_flow_is_carried_by_maglev_and_its_nat_replies_translated() {
    let b = bed();
    let problems =
        b.ns.run_in(|| {
            let mut cfg = config();
            cfg.daemon.conntrack_entries = 4;
            let mut bal = Balancer::load(&cfg).unwrap();
            bal.apply(&cfg).unwrap();
            bal.dp.set_guard_rate(0).unwrap();
            let (cl, vip) = (ip("198.18.0.1"), "198.18.0.30:80".parse::<SocketAddr>().unwrap());
            let mut problems = vec![];
            let pick =
                |port: u16| xlb::cli::explain::pick(&cfg, SocketAddr::new(cl, port), vip, Protocol::Tcp).unwrap();
            let mac_of = |be: SocketAddr| if be.ip() == ip("198.18.1.11") { WEB1_MAC } else { WEB2_MAC };
            let other = |be: SocketAddr| {
                let ip = if be.ip() == ip("198.18.1.11") { ip("198.18.1.12") } else { ip("198.18.1.11") };
                SocketAddr::new(ip, be.port())
            };
            let reply = |be: SocketAddr, port: u16| {
                let mut p = with_macs(Pkt::tcp(be.ip(), cl, be.port(), port), b.b0_mac, mac_of(be));
                p.tcp_flags = TCP_ACK;
                run(&bal, &p.build(), b.b0)
            };
            let first = 45000u16;
            // No eviction yet: a reply without an entry is the kernel's.
            let (action, _) = reply(pick(first), first);
            if bal.dp.counters().unwrap()[counter::CT_EVICTED as usize] != 0 {
                problems.push("evictions counted before the bucket was full".to_string());
            }
            if action != XDP_PASS {
                problems.push(format!("reply without an entry before any eviction: {action}, expected XDP_PASS"));
            }
            for port in first..first + 5 {
                let syn = with_macs(Pkt::tcp(cl, vip.ip(), port, 80), b.c0_mac, CLIENT_MAC).build();
                let (action, out) = run(&bal, &syn, b.c0);
                let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
                if action != XDP_REDIRECT || got != Ok(pick(port)) {
                    problems
                        .push(format!("SYN from port {port}: {action} {got:?}, expected redirect to {}", pick(port)));
                }
            }
            let evictions = bal.dp.counters().unwrap()[counter::CT_EVICTED as usize];
            if evictions != 1 {
                problems.push(format!("evictions counted {evictions}, expected 1 (the 5th SYN's)"));
            }
            let (table, _) = bal.dp.conntrack_table().unwrap();
            let tracked: Vec<u16> =
                (0..table.slots()).filter_map(|i| table.get(i)).map(|s| u16::from_be(s.key.sport)).collect();
            // The 1st flow's entry was the one evicted (all SYN-only, equally idle: the first slot).
            let evicted: Vec<u16> = (first..first + 5).filter(|p| !tracked.contains(p)).collect();
            if evicted != [first] {
                problems
                    .push(format!("entries evicted: ports {evicted:?}, expected [{first}] (table holds {tracked:?})"));
                return problems;
            }
            let be = pick(first);
            let (action, out) = reply(be, first);
            let got = parse_and_verify(&out).map(|p| (SocketAddr::new(p.src, p.sport), p.dport));
            if action != XDP_REDIRECT || got != Ok((vip, first)) {
                problems
                    .push(format!("evicted flow's reply from {be}: {action} {got:?}, expected redirect from {vip}"));
            }
            let (action, _) = reply(other(be), first);
            if action != XDP_PASS {
                problems
                    .push(format!("reply from {} (not the flow's backend): {action}, expected XDP_PASS", other(be)));
            }
            let mut ack = Pkt::tcp(cl, vip.ip(), first, 80);
            ack.tcp_flags = TCP_ACK;
            let before = bal.dp.conntrack_len().unwrap();
            let (action, out) = run(&bal, &with_macs(ack, b.c0_mac, CLIENT_MAC).build(), b.c0);
            let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
            if action != XDP_REDIRECT || got != Ok(be) || bal.dp.conntrack_len().unwrap() != before {
                problems.push(format!("evicted flow's ACK: {action} {got:?}, expected redirect to {be}, no new entry"));
            }
            problems
        })
        .unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What one flood run saw.
#[derive(Debug)]
struct FloodOutcome {
    sent: u64,
    flood_secs: f64,
    /// Requests on the 10 kept-alive connections, and those that failed.
    kept_requests: usize,
    kept_failures: usize,
    /// Kept-alive connections left idle during the flood, and those that failed a request after it.
    idle: usize,
    idle_failures: usize,
    /// New connections opened during the flood, those answered (within
    /// [`NEW_CONNECTION_CAP`]), those of them answered only after a
    /// retransmission (a second or more), and what the others saw.
    new_tried: usize,
    new_ok: usize,
    new_retried: usize,
    new_failures: Vec<String>,
    untracked: u64,
    activations: u64,
    /// Open flows whose entry a new flow took (`conntrack_evictions`).
    evictions: u64,
    status_text: String,
}

/// xlb (NAT, web1 and web2, a 4096-entry conntrack table, the guard at
/// `guard_rate`) under a random-source SYN flood of up to 300,000 SYNs at
/// 100,000 per second (at most 6 s), while 10 kept-alive connections keep
/// making requests and a second client opens new connections; 5 more
/// kept-alive connections stay idle through the flood and make a request after it.
fn flood_run(guard_rate: u32) -> FloodOutcome {
    use std::sync::atomic::{AtomicBool, Ordering};
    use xlb_testbed::{
        config::{web_like, ConfigToml, ServiceToml},
        flood::SynFlood,
        http_url,
        xlb::Daemon,
        KeptAlive, Topology, VIP_V4,
    };
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let mut svc = ServiceToml::new("www", vip).set("protocol", "tcp").set("forwarding", "nat").no_checks();
    for n in 1..=2 {
        svc = svc.backend(web_like(vip.ip(), n, 80));
    }
    let cfg = ConfigToml::new()
        .daemon("xdp_mode", "native")
        .daemon("conntrack_entries", 4096u32)
        .daemon("conntrack_guard_rate", guard_rate)
        .service(svc)
        .to_string();
    let mut d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
    let url = http_url(vip.ip(), 80, "/");
    let client = topo.client();
    assert!(client.answer(&url).is_some(), "no answer from {url} before the flood; log:\n{}", d.log_text());
    let mut kept: Vec<Option<KeptAlive>> = (0..10)
        .map(|i| {
            let mut k = KeptAlive::open(topo.client_ns(), vip).unwrap_or_else(|e| panic!("kept-alive {i}: {e:#}"));
            let (status, _) = k.get("/").unwrap_or_else(|e| panic!("kept-alive {i} before the flood: {e:#}"));
            assert_eq!(status, 200, "kept-alive {i} before the flood");
            Some(k)
        })
        .collect();
    // Idle through the flood: their entries are the LRU's oldest.
    let mut idle: Vec<KeptAlive> = (0..5)
        .map(|i| {
            let mut k = KeptAlive::open(topo.client_ns(), vip).unwrap_or_else(|e| panic!("idle {i}: {e:#}"));
            let (status, _) = k.get("/").unwrap_or_else(|e| panic!("idle {i} before the flood: {e:#}"));
            assert_eq!(status, 200, "idle kept-alive {i} before the flood");
            k
        })
        .collect();
    let flood = SynFlood {
        iface: "eth0".into(),
        src_mac: topo.client_ns().mac("eth0").unwrap(),
        dst_mac: topo.lb_ns().mac("eth0").unwrap(),
        vip: VIP_V4,
        port: 80,
        count: 300_000,
        rate: 100_000,
        max_time: Duration::from_secs(6),
        seed: 0x9e37_79b9_7f4a_7c15 ^ u64::from(guard_rate),
    };
    let done = AtomicBool::new(false);
    let (mut kept_requests, mut kept_failures, mut new_answers) = (0, 0, vec![]);
    let result = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let r = flood.run(topo.client_ns());
            done.store(true, Ordering::SeqCst);
            r
        });
        let opener = s.spawn(|| {
            let mut answers = vec![];
            // At least 50 new connections, and more while the flood lasts (at most 200).
            while answers.len() < 200 && (answers.len() < 50 || !done.load(Ordering::SeqCst)) {
                answers.push(client.timed_answer(&url, NEW_CONNECTION_CAP));
            }
            answers
        });
        // The kept-alive connections: a request each, round after round, while the flood lasts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
            for k in kept.iter_mut() {
                let Some(conn) = k else { continue };
                kept_requests += 1;
                match conn.get("/") {
                    Ok((200, _)) => {}
                    _ => {
                        kept_failures += 1;
                        *k = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        new_answers = opener.join().expect("opener thread");
        flooder.join().expect("flood thread")
    });
    let sent = result.unwrap_or_else(|e| panic!("flood: {e:#}"));
    // One more round after the flood: every connection still answers.
    for k in kept.iter_mut() {
        let Some(conn) = k else { continue };
        kept_requests += 1;
        if !matches!(conn.get("/"), Ok((200, _))) {
            kept_failures += 1;
        }
    }
    let idle_failures = idle.iter_mut().map(|k| !matches!(k.get("/"), Ok((200, _)))).filter(|failed| *failed).count();
    let status = d.status_json();
    let outcome = FloodOutcome {
        sent: sent.sent,
        flood_secs: sent.elapsed.as_secs_f64(),
        kept_requests,
        kept_failures,
        idle: idle.len(),
        idle_failures,
        new_tried: new_answers.len(),
        new_ok: new_answers.iter().filter(|a| a.is_ok()).count(),
        new_retried: new_answers.iter().filter(|a| a.as_ref().is_ok_and(|t| *t >= RETRANSMITTED)).count(),
        new_failures: new_answers.into_iter().filter_map(Result::err).collect(),
        untracked: status["conntrack_guard"]["flows_untracked"].as_u64().unwrap_or(0),
        activations: status["conntrack_guard"]["activations"].as_u64().unwrap_or(0),
        evictions: status["conntrack_evictions"].as_u64().unwrap_or(0),
        status_text: d.status(),
    };
    eprintln!("guard rate {guard_rate}: {outcome:?}");
    let st = d.stop().unwrap();
    assert!(st.success(), "xlb exit status {st}; log:\n{}", d.log_text());
    outcome
}

/// The flood was sent (50,000 SYNs at least), and the connections came
/// through it: no kept-alive request failed (of 20 at least), no idle
/// connection failed after it, and 99 % of new connections were answered.
#[track_caller]
fn assert_connections_survived(o: &FloodOutcome) {
    assert!(o.sent >= 50_000, "the flood sent only {} SYNs in {:.1} s", o.sent, o.flood_secs);
    assert_eq!(o.kept_failures, 0, "kept-alive requests failed under the flood: {o:#?}");
    assert_eq!(o.idle_failures, 0, "connections idle through the flood failed after it: {o:#?}");
    assert!(o.kept_requests >= 20, "too few kept-alive requests to tell: {o:#?}");
    assert!(
        o.new_ok * 100 >= o.new_tried * 99,
        "new connections answered {} of {} ({} after a retransmission); the others: {:?}\n{o:#?}",
        o.new_ok,
        o.new_tried,
        o.new_retried,
        o.new_failures
    );
}

/// Issue 12: a random-source SYN flood at the VIP with the guard on (500 new
/// flows per second per CPU, a 4096-entry table): the 10 kept-alive
/// connections never fail, nor do the 5 left idle through the flood, at least
/// 99 % of new connections are answered (within [`NEW_CONNECTION_CAP`]), and
/// the guard's counters show it stopped tracking the flood.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn syn_flood_with_the_guard_spares_established_and_new_connections() {
    let o = flood_run(500);
    assert_connections_survived(&o);
    assert!(o.untracked >= o.sent / 2, "flows untracked {} of {} SYNs sent: {o:#?}", o.untracked, o.sent);
    assert!(o.activations >= 1, "no guard activation counted: {o:#?}");
    assert!(o.status_text.contains("conntrack guard: "), "xlb status shows no guard line:\n{}", o.status_text);
}

/// The same flood without the guard (the README's figures): nothing is left
/// untracked, and the connections fare as with the guard. A full bucket gives
/// up the flood's SYN-only entries before the established ones; a new
/// connection whose own SYN-only entry is evicted goes on as Maglev's, its
/// NAT replies translated without an entry.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn syn_flood_without_the_guard_tracks_every_flow() {
    let o = flood_run(0);
    assert_eq!((o.untracked, o.activations), (0, 0), "guard off, yet flows untracked: {o:#?}");
    // 4096 slots and a flood of 50,000 SYNs or more: the flood's entries evict one another.
    assert!(o.evictions >= o.sent / 2, "open flows evicted {} of {} SYNs sent: {o:#?}", o.evictions, o.sent);
    assert_connections_survived(&o);
    eprintln!(
        "guard off: kept-alive {} of {} requests failed, idle connections {} of {} failed after the flood, new \
         connections {} of {} answered ({} after a retransmission; the others: {:?}), open flows evicted {}",
        o.kept_failures,
        o.kept_requests,
        o.idle_failures,
        o.idle,
        o.new_ok,
        o.new_tried,
        o.new_retried,
        o.new_failures,
        o.evictions
    );
}
