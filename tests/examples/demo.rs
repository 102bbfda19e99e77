//! `cargo xtask demo`: the seed's www.foobar.com setup, in namespaces.
//!
//! client ──► lb (xlb, XDP on eth0/eth1) ──► web1 (primary) / web2 (replica)
//!
//! Sends a few hundred HTTP requests to the VIP (IPv4 and IPv6), prints which
//! web server answered how many, and what xlb counted. Everything is torn down
//! on every exit path (also Ctrl-C).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};
use xlb_testbed::{
    http_url, is_root,
    xlb::{xlb, Daemon},
    Topology, VIP_V4, VIP_V6,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const REQUESTS: usize = 200;

fn config() -> String {
    format!(
        r#"# www.foobar.com: one VIP in front of a primary and a replica web server.
[daemon]
interfaces = ["eth0", "eth1"]   # client side, backend side
xdp_mode = "native"
metrics = ""
admin_socket = "/run/xlb/demo-{pid}.sock"

[[service]]
name = "www"
vip = "{VIP_V4}:80"
forwarding = "nat"

[service.health]
check = "none"

[[service.backend]]
address = "198.18.1.11:80"   # web1, primary
[[service.backend]]
address = "198.18.1.12:80"   # web2, replica (active-active: both take new flows)

[[service]]
name = "www6"
vip = "[{VIP_V6}]:80"
forwarding = "nat"

[service.health]
check = "none"

[[service.backend]]
address = "[2001:db8:1::11]:80"
[[service.backend]]
address = "[2001:db8:1::12]:80"
"#,
        pid = std::process::id()
    )
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and attaches XDP: run it as root");
    }
    // Ctrl-C: stop sending, then tear everything down through the guards' Drop.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    println!("== building the www.foobar.com setup in network namespaces");
    let topo = Topology::new(2).context("building the topology")?;
    let _web = topo.start_nginx_all().context("starting nginx on web1 and web2")?;
    println!("   client 198.18.0.1 -> lb (VIP {VIP_V4}, {VIP_V6}) -> web1 198.18.1.11, web2 198.18.1.12");
    check_interrupt()?;

    println!("== starting xlb in the lb namespace");
    let d = Daemon::start(topo.lb_ns(), &config(), &["eth0", "eth1"])?;
    for l in d.log_text().lines().filter(|l| l.contains("attached") || l.contains("service")) {
        println!("   {}", l.split_once("] ").map(|(_, r)| r).unwrap_or(l));
    }

    for vip in [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)] {
        check_interrupt()?;
        let url = http_url(vip, 80, "/");
        println!("== {REQUESTS} requests to {url}, a new connection each");
        let replies = topo.client().get_many(&url, REQUESTS, None, true)?;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for r in &replies {
            *per.entry(r.body.trim().to_string()).or_default() += 1;
        }
        for (b, n) in &per {
            println!("   {b:<6} served {n:>4}  {}", "#".repeat(n * 40 / REQUESTS));
        }
        check_interrupt()?;
        println!("== 50 requests on one kept-alive connection to {url}");
        let bodies = topo.client().curl_many_keepalive(&url, 50)?;
        println!("   all 50 answered by {} (a connection stays on its backend)", bodies[0].trim());
    }

    println!("== what xlb counted (xlb status)");
    let socket = format!("/run/xlb/demo-{}.sock", std::process::id());
    let out = xlb(Some(topo.lb_ns()), &["status", "--socket", &socket])?;
    if !out.status.success() {
        bail!("xlb status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {l}");
    }
    println!("== tearing down");
    drop(d);
    drop(topo);
    println!("   done: namespaces removed, XDP detached");
    Ok(())
}
