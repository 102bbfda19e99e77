//! No single point of failure, for real: two lbs running xlb and BIRD
//! announce the VIP by BGP to a router that spreads flows over them by
//! ECMP; one lb host dies (xlb and BIRD killed, its link down); every
//! kept-alive connection goes on with the same backend through the other
//! lb, new connections are answered; the host comes back and takes flows
//! again, which still keep their backends.
//!
//! Needs root, bird2 and a release build (`cargo xtask test ha`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use xlb_testbed::{
    ha::{drive, last_stall, longest_pause, open_connections, HaTopology, HA_CLIENT, HA_VIP, STALLED},
    xlb::Daemon,
    KeptAlive,
};

/// How long the router may take to drop a dead lb (BFD: 5 × 50 ms) and to
/// take a returning one (BGP session up, BIRD and xlb started).
const WITHDRAW_LIMIT: Duration = Duration::from_millis(1500);
const RETURN_LIMIT: Duration = Duration::from_secs(20);
/// The longest a kept-alive connection may stall when its lb dies: BFD's
/// detection plus TCP's retransmission of the stalled request.
const STALL_LIMIT: Duration = Duration::from_secs(3);

/// `xlb_vip_announced` of the VIP on lb `i`'s /metrics.
fn announced_metric(topo: &HaTopology, i: usize) -> Option<f64> {
    let text = topo.lb(i).ns.run(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"]).unwrap();
    let series = format!("xlb_vip_announced{{vip=\"{HA_VIP}\",protocol=\"xlb_198_18_9_10\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

/// The service's (new flows, packets) on a daemon.
fn flows_and_packets(d: &Daemon) -> (u64, u64) {
    let s = d.status_json();
    let svc = xlb_testbed::xlb::json_service(&s, "www");
    (svc["new_flows"].as_u64().unwrap_or(0), svc["packets"].as_u64().unwrap_or(0))
}

fn announce_json(d: &Daemon) -> serde_json::Value {
    d.status_json()["announce"][0].clone()
}

#[test]
#[ignore = "needs root (network namespaces, XDP) and bird2: cargo xtask test runs it"]
fn two_lbs_share_the_vip_and_survive_losing_one() {
    let mut topo = HaTopology::build(2, 3).unwrap_or_else(|e| panic!("building the HA topology: {e:#}"));
    // The same service, the backends listed in another order on each lb.
    let configs = [topo.xlb_config(1, &[1, 2, 3]), topo.xlb_config(2, &[3, 1, 2])];
    let mut d1 = Daemon::start(&topo.lb(1).ns, &configs[0], &["eth0"]).unwrap();
    let d2 = Daemon::start(&topo.lb(2).ns, &configs[1], &["eth0"]).unwrap();
    for d in [&d1, &d2] {
        d.wait_log(Duration::from_secs(10), "announcement", |l| l.contains("announcing VIP 198.18.9.10")).unwrap();
    }
    let took = topo.wait_next_hops(&[1, 2], RETURN_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("both lbs announce the VIP; the router has both paths after {} ms more", took.as_millis());
    for (i, d) in [(1, &d1), (2, &d2)] {
        let a = announce_json(d);
        assert_eq!(
            (&a["vip"], &a["announced"], &a["error"]),
            (&"198.18.9.10".into(), &true.into(), &().into()),
            "lb{i}: {a}"
        );
        assert_eq!(announced_metric(&topo, i), Some(1.0), "lb{i}'s xlb_vip_announced");
        assert!(d.status().contains("vip 198.18.9.10 (BIRD protocol xlb_198_18_9_10): announced"), "lb{i}");
    }

    // No backend takes new flows on lb2 (all drained): it withdraws the VIP,
    // lb1 keeps it; enabled again, lb2 announces it again.
    let web = |n: usize| format!("198.18.2.{}:80", 10 + n);
    for n in 1..=3 {
        assert!(d2.ctl(&["drain", "www", &web(n)]).unwrap().status.success(), "draining {}", web(n));
    }
    topo.wait_next_hops(&[1], WITHDRAW_LIMIT).unwrap_or_else(|e| panic!("lb2 has no backend: {e:#}"));
    let a = announce_json(&d2);
    assert_eq!((&a["wanted"], &a["announced"]), (&false.into(), &false.into()), "lb2 with every backend drained: {a}");
    assert_eq!(announced_metric(&topo, 2), Some(0.0), "lb2's xlb_vip_announced with every backend drained");
    for n in 1..=3 {
        assert!(d2.ctl(&["enable", "www", &web(n)]).unwrap().status.success(), "enabling {}", web(n));
    }
    topo.wait_next_hops(&[1, 2], RETURN_LIMIT).unwrap_or_else(|e| panic!("lb2's backends enabled again: {e:#}"));

    // 50 kept-alive connections, spread over both lbs by the router; each
    // on the backend Maglev gives it, whichever lb took it.
    let before = [flows_and_packets(&d1), flows_and_packets(&d2)];
    let mut conns = open_connections(&topo, 50).unwrap_or_else(|e| panic!("opening 50 connections: {e:#}"));
    let after = [flows_and_packets(&d1), flows_and_packets(&d2)];
    let cfg = xlb::config::parse(&configs[0], "lb1.toml").unwrap();
    let vip = topo.vip();
    for (k, backend) in &conns {
        let client = SocketAddr::new(HA_CLIENT.into(), k.local_port());
        let want = xlb::cli::explain::pick(&cfg, client, vip, xlb::config::Protocol::Tcp).unwrap();
        let want_name = format!("web{}", want.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap() - 10);
        assert_eq!(*backend, want_name, "connection from {client} answered by {backend}, Maglev says {want}");
    }
    let spread: BTreeMap<&str, usize> = conns.iter().fold(BTreeMap::new(), |mut m, (_, b)| {
        *m.entry(b.as_str()).or_insert(0) += 1;
        m
    });
    eprintln!("50 connections over the backends: {spread:?}");
    for i in 0..2 {
        let new = after[i].0 - before[i].0;
        assert!(new > 0, "lb{} took none of the 50 new connections (the router should spread them): {after:?}", i + 1);
        eprintln!("lb{} took {new} of the 50 connections", i + 1);
    }

    // lb1's host dies: BIRD killed, link down, xlb killed.
    let mut new_conn_failures = 0;
    let mut new_conns = 0;
    let (logs, (killed_at, withdrawn)) = drive(&mut conns, Duration::from_millis(20), Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let killed_at = Instant::now();
        topo.kill_lb_host(1).unwrap();
        d1.stop_with(libc::SIGKILL).unwrap();
        let withdrawn = topo.wait_next_hops(&[2], WITHDRAW_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
        // New connections while and after the router moves: answered.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            new_conns += 1;
            let ok = KeptAlive::open(&topo.client, vip).and_then(|mut k| k.get("/")).is_ok_and(|(s, _)| s == 200);
            if !ok {
                new_conn_failures += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (killed_at, withdrawn)
    });
    eprintln!("lb1 gone: the router dropped its path after {} ms", withdrawn.as_millis());
    let stall = last_stall(&logs, killed_at).unwrap_or_else(|| {
        let dead: Vec<_> = logs.iter().filter(|l| l.first_answer_after(killed_at).is_none()).collect();
        panic!("{} connections never answered again after lb1 died: {dead:?}", dead.len())
    });
    let (mut moved, mut failed) = (0, 0);
    for l in &logs {
        let (m, f) = l.moved_and_failed();
        moved += m;
        failed += f;
    }
    let stalled = logs.iter().filter(|l| l.longest_pause_after(killed_at).is_some_and(|(g, _)| g > STALLED)).count();
    eprintln!(
        "failover_ms_lb: {} ms (lb1 killed -> last stalled connection answered); {stalled} connections stalled, the \
         longest pause {} ms; {failed} requests failed, {moved} answered by another backend; {new_conn_failures} of \
         {new_conns} new connections failed",
        stall.as_millis(),
        longest_pause(&logs, killed_at).as_millis()
    );
    assert!(stalled > 0, "no connection stalled when lb1 died: did the router send none through lb1?");
    assert_eq!((failed, moved), (0, 0), "every connection keeps working on its backend: {logs:?}");
    assert!(stall <= STALL_LIMIT, "the last stalled connection answered {stall:?} after lb1 died");
    assert_eq!(new_conn_failures, 0, "new connections during the failover are answered (SYNs are retransmitted)");

    // lb1 is back: BIRD and xlb started again; the router takes it back and
    // some flows move to it by ECMP; they keep their backends.
    topo.revive_lb_host(1).unwrap();
    d1.spawn(&[]).unwrap();
    let back = topo.wait_next_hops(&[1, 2], RETURN_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("lb1 back: the router has both paths again after {} ms", back.as_millis());
    let lb1_before = flows_and_packets(&d1);
    let (logs, ()) = drive(&mut conns, Duration::from_millis(20), Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_secs(2));
    });
    let back_at = logs.iter().filter_map(|l| l.answers.first()).map(|a| a.0).min().unwrap();
    eprintln!("after lb1's return: the longest pause of a connection {} ms", longest_pause(&logs, back_at).as_millis());
    for l in &logs {
        assert_eq!(l.moved_and_failed(), (0, 0), "after lb1 came back, a connection moved or failed: {l:?}");
        // A flow moved to lb1 may lose a packet while lb1 resolves its
        // neighbours again (TCP retransmits it): a pause, never a break.
        assert!(l.answers.len() >= 10, "a connection stalled for good after lb1 came back: {l:?}");
    }
    let lb1_after = flows_and_packets(&d1);
    assert!(
        lb1_after.1 > lb1_before.1,
        "lb1 carries some established flows again (ECMP moved them back): packets {lb1_before:?} -> {lb1_after:?}"
    );

    // An xlb that stops (SIGTERM) withdraws the VIP; the other keeps it.
    d1.stop().unwrap();
    topo.wait_next_hops(&[2], WITHDRAW_LIMIT).unwrap_or_else(|e| panic!("lb1's xlb stopped: {e:#}"));
    d1.expect_log("withdrew VIP 198.18.9.10: the daemon stops", 1);
}
