//! Data-path fixtures for the schedulers (`Xdp::test_run`): smooth weighted round
//! robin gives exact shares over new flows run on one CPU, least connections sends
//! each new flow to the backend with the fewest active connections per weight, and
//! only a flow's first packet is scheduled (established and untracked packets are not).

use std::{collections::BTreeMap, net::SocketAddr};

use xlb::{
    balancer::Balancer,
    config::{BackendConfig, Config, Role, Scheduler},
};
use xlb_testbed::{
    packet::{parse_and_verify, Pkt, TCP_ACK},
    xdpbed::{bed, fixture_config, run, Bed, CLIENT_MAC},
};

const XDP_REDIRECT: u32 = 4;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The fixture services plus `rr` (198.18.0.40:80) and `lc` (198.18.0.41:80),
/// each over `backends` (address, weight), with the given scheduler.
fn config(backends: &[(&str, u32)]) -> Config {
    let mut cfg = fixture_config();
    let pair = cfg.services.iter().find(|s| s.name == "pair").unwrap().clone();
    for (name, vip, scheduler) in
        [("rr", "198.18.0.40:80", Scheduler::RoundRobin), ("lc", "198.18.0.41:80", Scheduler::LeastConn)]
    {
        let mut s = pair.clone();
        s.name = name.into();
        s.vip = sa(vip);
        s.scheduler = scheduler;
        s.backends =
            backends.iter().map(|&(a, weight)| BackendConfig { address: sa(a), weight, role: Role::Primary }).collect();
        cfg.services.push(s);
    }
    cfg
}

/// Keeps the calling thread on one CPU (round robin's cursor is per CPU).
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get
    // a valid set of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0, "sched_setaffinity");
    }
}

/// Sends a SYN from client port `port` to `vip` and returns the backend it went to.
fn syn(b: &Bed, bal: &Balancer, vip: SocketAddr, port: u16, flags: Option<u8>) -> SocketAddr {
    let mut p = Pkt::tcp("198.18.0.1".parse().unwrap(), vip.ip(), port, vip.port());
    if let Some(f) = flags {
        p.tcp_flags = f;
    }
    p.eth_dst = b.c0_mac;
    p.eth_src = CLIENT_MAC;
    let (action, out) = run(bal, &p.build(), b.c0);
    let got = parse_and_verify(&out).map(|p| SocketAddr::new(p.dst, p.dport));
    match (action, got) {
        (XDP_REDIRECT, Ok(to)) => to,
        (a, g) => panic!("client port {port} -> {vip}: expected a redirect to a backend, got action {a}, {g:?}"),
    }
}

/// Round robin over weights 1/1/2: 400 new flows on one CPU split exactly
/// 100/100/200, and every 4 consecutive flows hold one period (no bursts).
/// Established packets and untracked non-SYN packets do not move the cursor.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn round_robin_exact_weighted_shares_on_one_cpu() {
    let b = bed();
    let (w1, w2, w1b) = ("198.18.1.11:80", "198.18.1.12:80", "198.18.1.11:81");
    b.ns.run_in(|| {
        pin_to_one_cpu();
        let cfg = config(&[(w1, 1), (w2, 1), (w1b, 2)]);
        let mut bal = Balancer::load(&cfg).unwrap();
        bal.apply(&cfg).unwrap();
        let vip = sa("198.18.0.40:80");
        let mut picks = vec![];
        for port in 30000..30400u16 {
            picks.push(syn(&b, &bal, vip, port, None));
            // Each flow's ACK follows its entry; an ACK of an unknown flow is Maglev's.
            let again = syn(&b, &bal, vip, port, Some(TCP_ACK));
            assert_eq!(again, *picks.last().unwrap(), "port {port}: the ACK left its flow's backend");
            syn(&b, &bal, vip, port + 10000, Some(TCP_ACK));
        }
        let mut shares = BTreeMap::new();
        for p in &picks {
            *shares.entry(p.to_string()).or_insert(0) += 1;
        }
        let want = BTreeMap::from([(w1.to_string(), 100), (w2.to_string(), 100), (w1b.to_string(), 200)]);
        assert_eq!(shares, want, "400 new flows over weights 1/1/2 on one CPU");
        for (i, w) in picks.windows(4).enumerate() {
            let heavy = w.iter().filter(|p| **p == sa(w1b)).count();
            assert!(
                heavy == 2 && w.contains(&sa(w1)) && w.contains(&sa(w2)),
                "flows {i}..{}: expected one period (web1, web2, web1:81 twice), got {w:?}",
                i + 4
            );
        }
        // Drained: out of the sequence at once; enabled: back.
        bal.set_drained("rr", w1b, true).unwrap();
        let after: Vec<SocketAddr> = (31000..31010).map(|p| syn(&b, &bal, vip, p, None)).collect();
        assert!(!after.contains(&sa(w1b)), "a drained backend took new flows: {after:?}");
    })
    .unwrap();
}

/// Least connections with weights 1 and 2: each SYN goes to a backend with the
/// smallest active/weight, as the counts in `BACKEND_CONNS` say (ties go to either: the
/// scan starts at each CPU's turn); a backend that was drained while the other took
/// flows then takes every new flow until the counts are even.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn least_conn_picks_the_fewest_active_per_weight() {
    let b = bed();
    let (w1, w2) = ("198.18.1.11:80", "198.18.1.12:80");
    b.ns.run_in(|| {
        // Ties are shared out by each CPU's turn: on one CPU, in turn.
        pin_to_one_cpu();
        let cfg = config(&[(w1, 1), (w2, 2)]);
        let mut bal = Balancer::load(&cfg).unwrap();
        bal.apply(&cfg).unwrap();
        let svc = bal.services.iter().position(|s| s.cfg.name == "lc").unwrap();
        let slots: Vec<u32> = bal.services[svc].backends.iter().map(|b| b.slot).collect();
        let conns = |bal: &Balancer| slots.iter().map(|&s| bal.dp.active_connections(s)).collect::<Vec<_>>();
        let vip = sa("198.18.0.41:80");
        let (addrs, weights) = ([sa(w1), sa(w2)], [1u64, 2]);
        for i in 0..9u16 {
            let a = conns(&bal);
            // The backends whose active/weight is the smallest.
            let least: Vec<SocketAddr> =
                (0..2).filter(|&j| (0..2).all(|k| a[j] * weights[k] <= a[k] * weights[j])).map(|j| addrs[j]).collect();
            let got = syn(&b, &bal, vip, 32000 + i, None);
            assert!(
                least.contains(&got),
                "SYN {i} with active {a:?} (weights 1, 2): expected one of {least:?}, got {got}"
            );
            let after = conns(&bal);
            let j = addrs.iter().position(|x| *x == got).unwrap();
            assert_eq!(after[j], a[j] + 1, "SYN {i}: {got}'s count {:?} -> {:?}", a, after);
        }
        assert_eq!(conns(&bal), [3, 6], "BACKEND_CONNS after 9 SYNs (weights 1, 2)");
        // An ACK of a tracked flow is not a new connection.
        syn(&b, &bal, vip, 32000, Some(TCP_ACK));
        assert_eq!(conns(&bal), [3, 6], "an established packet changed the counts");

        // web2 drained while web1 takes 6 more: web1 at 9, web2 at 6 (weight 2).
        bal.set_drained("lc", w2, true).unwrap();
        for i in 0..6 {
            assert_eq!(syn(&b, &bal, vip, 33000 + i, None), sa(w1), "web2 is drained");
        }
        bal.set_drained("lc", w2, false).unwrap();
        // 9/1 vs 6/2: web2 takes every new flow until 9 * 2 <= its count, i.e. 12 more.
        for i in 0..12 {
            let before = conns(&bal);
            assert_eq!(syn(&b, &bal, vip, 34000 + i, None), sa(w2), "new flow {i} with active {before:?}");
        }
        assert_eq!(conns(&bal), [9, 18]);
        // Ties (9/1 = 18/2, then again every 3 flows) are shared out: both take flows.
        let tied: std::collections::BTreeSet<SocketAddr> =
            (0..6).map(|i| syn(&b, &bal, vip, 35000 + i, None)).collect();
        assert_eq!(tied.len(), 2, "six flows from even counts all went to {tied:?}");
    })
    .unwrap();
}

// ---------------------------------------------------------------- topology (real nginx, curl)

mod topo {
    use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

    use xlb_testbed::{
        config::{web, BackendToml, ConfigToml, ServiceToml},
        http_url,
        xlb::Daemon,
        KeptAlive, Nginx, Topology, VIP_V4,
    };

    fn vip_url() -> String {
        http_url(VIP_V4.into(), 80, "/")
    }

    /// xlb serving www (VIP_V4:80) with `scheduler` over (web number, role), fast
    /// HTTP checks, once every backend has been checked. Bind as `let (topo, web, d)`.
    fn start(scheduler: &str, backends: &[(usize, &str)]) -> (Topology, Vec<Nginx>, Daemon) {
        let mut svc = ServiceToml::new("www", (VIP_V4, 80).into())
            .set("scheduler", scheduler)
            .health("check", "http")
            .health("path", "/health")
            .health("interval_ms", 200u64)
            .health("timeout_ms", 150u64)
            .health("rise", 2u64)
            .health("fall", 2u64);
        for &(n, role) in backends {
            svc = svc.backend(BackendToml::new(web(n, 80)).role(role));
        }
        let cfg = ConfigToml::new().daemon("conntrack_entries", 65536u32).service(svc).to_string();
        let topo = Topology::new(backends.len()).unwrap();
        let web = topo.start_nginx_all().unwrap();
        let d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
        d.expect_log(&format!("health checks started for {} backends", backends.len()), 1);
        d.wait_checked(Duration::from_secs(5)).unwrap();
        (topo, web, d)
    }

    /// `n` fresh connections (one curl, `Connection: close` each): how many each backend answered.
    fn spread(topo: &Topology, d: &Daemon, n: usize) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(100);
            let replies = topo
                .client()
                .get_many(&vip_url(), k, None, true)
                .unwrap_or_else(|e| panic!("{e:#}\nxlb log:\n{}", d.log_text()));
            for r in replies {
                *m.entry(r.body.trim().to_string()).or_insert(0) += 1;
            }
            left -= k;
        }
        m
    }

    fn names(m: &BTreeMap<String, usize>) -> Vec<String> {
        m.keys().cloned().collect()
    }

    fn keep_alive(topo: &Topology, n: usize) -> Vec<(KeptAlive, String)> {
        (0..n)
            .map(|_| {
                let mut k = KeptAlive::open(topo.client_ns(), SocketAddr::new(VIP_V4.into(), 80)).unwrap();
                let (status, body) = k.get("/").unwrap();
                assert_eq!(status, 200, "a kept-alive connection's first answer");
                (k, body.trim().to_string())
            })
            .collect()
    }

    fn still_served(conns: &mut [(KeptAlive, String)], when: &str) {
        for (k, was) in conns.iter_mut() {
            let (status, body) =
                k.get("/").unwrap_or_else(|e| panic!("{when}: kept-alive connection to {was} broke: {e:#}"));
            assert_eq!((status, body.trim()), (200, was.as_str()), "{when}: a kept-alive connection moved");
        }
    }

    fn ctl(d: &Daemon, args: &[&str]) {
        let out = d.ctl(args).unwrap();
        assert!(out.status.success(), "xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Round robin over two equal backends: 200 new connections from one client split
    /// 100/100 within the per-CPU tolerance. Each CPU walks the sequence on its own, so
    /// each leaves at most one connection of imbalance: |web1 - 100| <= ceil(CPUs / 2).
    #[test]
    #[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
    fn round_robin_splits_new_connections_evenly() {
        let (topo, _web, d) = start("round_robin", &[(1, "primary"), (2, "primary")]);
        let m = spread(&topo, &d, 200);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tolerance = cpus.div_ceil(2);
        let web1 = m.get("web1").copied().unwrap_or(0);
        assert_eq!(web1 + m.get("web2").copied().unwrap_or(0), 200, "every connection answered by web1 or web2: {m:?}");
        assert!(
            web1.abs_diff(100) <= tolerance,
            "200 new connections: expected 100 +- {tolerance} ({cpus} CPUs) on each backend, got {m:?}"
        );
        let status = d.status_json();
        assert_eq!(status["services"][0]["scheduler"], "round_robin", "status JSON: {status:#}");
    }

    /// Least connections: 20 kept-alive connections held on web1 (web2 drained while
    /// they open), then web2 enabled: the next 20 new connections all go to web2.
    #[test]
    #[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
    fn least_conn_sends_new_connections_to_the_idle_backend() {
        let (topo, _web, d) = start("least_conn", &[(1, "primary"), (2, "primary")]);
        ctl(&d, &["drain", "www", "198.18.1.12:80"]);
        let mut held = keep_alive(&topo, 20);
        assert!(held.iter().all(|(_, b)| b == "web1"), "web2 drained: all on web1");
        ctl(&d, &["enable", "www", "198.18.1.12:80"]);
        let new = keep_alive(&topo, 20);
        let on: Vec<&str> = new.iter().map(|(_, b)| b.as_str()).collect();
        assert!(
            on.iter().all(|b| *b == "web2"),
            "20 new connections with 20 held on web1: expected all on web2, got {on:?}"
        );
        still_served(&mut held, "after web2 took the new ones");
    }

    /// Failover, failback and drain behave the same under every scheduler: the
    /// primaries share new flows, a drained one takes none, a dead one's share goes
    /// to the other, the backup takes over when no primary is up and hands back,
    /// and kept-alive connections stay on their backend while it is up.
    #[test]
    #[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
    fn failover_and_drain_under_each_scheduler() {
        for scheduler in ["maglev", "round_robin", "least_conn"] {
            let (topo, mut web, d) = start(scheduler, &[(1, "primary"), (2, "primary"), (3, "backup")]);
            let s = |what: &str| format!("{scheduler}: {what}");
            assert_eq!(names(&spread(&topo, &d, 40)), ["web1", "web2"], "{}", s("the primaries share new flows"));
            let mut on1: Vec<_> = keep_alive(&topo, 6).into_iter().filter(|(_, b)| b == "web1").collect();
            assert!(!on1.is_empty(), "{}", s("no kept-alive connection landed on web1"));

            ctl(&d, &["drain", "www", "198.18.1.11:80"]);
            assert_eq!(names(&spread(&topo, &d, 20)), ["web2"], "{}", s("drained web1 takes no new flows"));
            still_served(&mut on1, &s("web1 drained"));
            ctl(&d, &["enable", "www", "198.18.1.11:80"]);

            web[1].stop().unwrap();
            d.expect_log("backend www/198.18.1.12:80 is DOWN", 1);
            assert_eq!(names(&spread(&topo, &d, 20)), ["web1"], "{}", s("web2 down: its share goes to web1"));
            still_served(&mut on1, &s("web2 down"));
            // Closed while web1 is up, so that both halves of each close pass: under
            // least_conn a connection a client keeps open counts on its backend until
            // it closes or expires, and would keep new flows off web1 after failback.
            drop(on1);

            web[0].stop().unwrap();
            d.expect_log("service www: new flows now go to the backup backends", 1);
            assert_eq!(names(&spread(&topo, &d, 20)), ["web3"], "{}", s("no primary up: the backup"));

            web[0].start().unwrap();
            web[1].start().unwrap();
            d.expect_log("backend www/198.18.1.11:80 is UP", 1);
            d.expect_log("backend www/198.18.1.12:80 is UP", 1);
            let back = spread(&topo, &d, 60);
            assert_eq!(names(&back), ["web1", "web2"], "{}", s(&format!("failback to the primaries: {back:?}")));
        }
    }
}
