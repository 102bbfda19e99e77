//! `cargo xtask demo ha`: no single point of failure. Two lbs (xlb + BIRD)
//! announce the VIP by BGP to a router that spreads flows over them by
//! ECMP; one lb host dies; the VIP keeps answering, every connection keeps
//! its backend; the host returns.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xlb_testbed::{
    ha::{drive, last_stall, lb_addr, open_connections, HaTopology, HA_VIP},
    http_url,
    xlb::Daemon,
    Client,
};

use super::check_interrupt;

/// The router's next hops for the VIP, as `lb1, lb2`.
fn paths(topo: &HaTopology) -> String {
    let hops = topo.router_next_hops().unwrap_or_default();
    let names: Vec<String> =
        hops.iter().map(|h| (1..=2).find(|&i| lb_addr(i) == *h).map_or(h.to_string(), |i| format!("lb{i}"))).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub fn run() -> Result<()> {
    println!("== building two lbs behind a BGP router in network namespaces");
    let mut topo = HaTopology::build(2, 3).context("building the HA topology")?;
    println!(
        "   client 198.18.0.1 -> router 198.18.0.2 (BIRD, ECMP) -> lb1 198.18.2.2, lb2 198.18.2.3 (xlb + BIRD) \
         -> web1..3 198.18.2.11-13 (DSR, VIP {HA_VIP} on lo)"
    );
    check_interrupt()?;
    println!("== starting xlb on both lbs (the same service, backends listed in another order)");
    let mut d1 = Daemon::start(&topo.lb(1).ns, &topo.xlb_config(1, &[1, 2, 3]), &["eth0"])?;
    let d2 = Daemon::start(&topo.lb(2).ns, &topo.xlb_config(2, &[3, 1, 2]), &["eth0"])?;
    let took = topo.wait_next_hops(&[1, 2], Duration::from_secs(20))?;
    println!("   +{:>5} ms  the router routes {HA_VIP} via {}", took.as_millis(), paths(&topo));
    for (i, d) in [(1, &d1), (2, &d2)] {
        for l in d.log_text().lines().filter(|l| l.contains("announcing VIP")) {
            println!("   lb{i} xlb: {}", l.split_once("] ").map(|(_, r)| r).unwrap_or(l));
        }
    }

    check_interrupt()?;
    println!("== 50 kept-alive connections to http://{HA_VIP}/");
    let mut conns = open_connections(&topo, 50)?;
    let mut per = std::collections::BTreeMap::new();
    for (_, b) in &conns {
        *per.entry(b.clone()).or_insert(0) += 1;
    }
    println!("   backends: {per:?}");
    let flows = |d: &Daemon| {
        let s = d.status_json();
        xlb_testbed::xlb::json_service(&s, "www")["new_flows"].as_u64().unwrap_or(0)
    };
    println!("   new flows seen by lb1: {}, by lb2: {} (the router spreads them)", flows(&d1), flows(&d2));

    check_interrupt()?;
    println!("== lb1's host dies (BIRD killed, link down, xlb killed); every connection keeps sending");
    let url = http_url(HA_VIP.into(), 80, "/");
    let (logs, (killed, events)) = drive(&mut conns, Duration::from_millis(20), Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        let mut events = vec![(Duration::ZERO, "lb1 dies".to_owned())];
        let _ = topo.kill_lb_host(1);
        let _ = d1.stop_with(libc::SIGKILL);
        let mut last = paths(&topo);
        let client = Client::new(&topo.client);
        let mut answered_new = false;
        while killed.elapsed() < Duration::from_secs(3) {
            let now = paths(&topo);
            if now != last {
                events.push((killed.elapsed(), format!("router: {HA_VIP} via {now} (BFD dropped lb1's BGP session)")));
                last = now;
            }
            if !answered_new {
                if let Some(b) = client.answer(&url) {
                    events.push((killed.elapsed(), format!("a new connection is answered by {}", b.trim())));
                    answered_new = true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (killed, events)
    });
    let mut events = events;
    let stall = last_stall(&logs, killed);
    let stalled = logs
        .iter()
        .filter(|l| l.longest_pause_after(killed).is_some_and(|(g, _)| g > xlb_testbed::ha::STALLED))
        .count();
    if let Some(s) = stall {
        events.push((s, format!("the last of {stalled} stalled connections answers again")));
    }
    events.sort_by_key(|e| e.0);
    for (t, what) in &events {
        println!("   +{:>5} ms  {what}", t.as_millis());
    }
    let (mut moved, mut failed) = (0, 0);
    for l in &logs {
        let (m, f) = l.moved_and_failed();
        moved += m;
        failed += f;
    }
    println!(
        "   {} requests, {failed} failed, {moved} answered by another backend than before",
        logs.iter().map(|l| l.answers.len()).sum::<usize>()
    );
    let Some(stall) = stall else { bail!("some connections never answered again") };
    println!(
        "   failover_ms_lb: {} ms (the last stalled connection answering again); longest pause {} ms",
        stall.as_millis(),
        xlb_testbed::ha::longest_pause(&logs, killed).as_millis()
    );

    check_interrupt()?;
    println!("== lb1 returns (link up, BIRD and xlb started)");
    let t0 = Instant::now();
    topo.revive_lb_host(1)?;
    d1.spawn(&[])?;
    topo.wait_next_hops(&[1, 2], Duration::from_secs(20))?;
    println!("   +{:>5} ms  the router routes {HA_VIP} via {}", t0.elapsed().as_millis(), paths(&topo));
    let (logs, ()) = drive(&mut conns, Duration::from_millis(20), Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_secs(1));
    });
    let (mut moved, mut failed) = (0, 0);
    for l in &logs {
        let (m, f) = l.moved_and_failed();
        moved += m;
        failed += f;
    }
    println!("   the 50 connections: {failed} requests failed, {moved} answered by another backend");

    println!("== tearing down");
    drop(d1);
    drop(d2);
    drop(topo);
    println!("   done: namespaces removed, XDP detached");
    Ok(())
}
