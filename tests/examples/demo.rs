//! `cargo xtask demo`: the seed's www.foobar.com setup, in namespaces.
//!
//! client ──► lb (xlb, XDP on eth0/eth1) ──► web1 (primary) / web2 (replica)
//!
//! Sends a few hundred HTTP requests to the VIP (IPv4 and IPv6), prints which
//! web server answered how many; switches to active-passive with `xlb reload`,
//! kills web1 and shows the failover to web2 and the failback when web1
//! returns; prints what xlb counted. HTTPS passes through: the web servers
//! also serve https://www.foobar.com/ with a certificate from a throwaway CA
//! made at run time, xlb checks them over TLS (`check = "https"`) and the
//! client fetches the page through the VIP with that CA pinned. Everything is
//! torn down on every exit path (also Ctrl-C).
//!
//! `demo ha` (`cargo xtask demo ha`): two lbs behind a BGP router instead,
//! one of them killed (see `demo/ha.rs`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xlb_testbed::{
    http_url, is_root,
    tls::{https_fetch, CertKind, TestCa, TLS_NAME},
    xlb::Daemon,
    Topology, VIP_V4, VIP_V6,
};

#[path = "demo/ha.rs"]
mod ha;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const REQUESTS: usize = 200;

/// How www (the IPv4 HTTP service) is set up at a step of the demo.
#[derive(Clone, Copy)]
struct Www<'a> {
    /// "primary" (active-active) or "backup" (active-passive).
    replica_role: &'a str,
    /// "maglev", "round_robin" or "least_conn".
    scheduler: &'a str,
    /// Sources refused (a TOML array's inside).
    deny: &'a str,
}

const ACTIVE_ACTIVE: Www = Www { replica_role: "primary", scheduler: "maglev", deny: "" };

/// The demo's configuration; `ca`: the CA the HTTPS checks trust.
fn config(www: Www, ca: &Path) -> String {
    let ca = ca.display();
    let Www { replica_role, scheduler, deny } = www;
    format!(
        r#"# www.foobar.com: one VIP in front of a primary and a replica web server.
[daemon]
interfaces = ["eth0", "eth1"]   # client side, backend side
xdp_mode = "native"
metrics = ""

[[service]]
name = "www"
vip = "{VIP_V4}:80"
forwarding = "nat"
scheduler = "{scheduler}"     # maglev (consistent hashing), round_robin or least_conn
deny = [{deny}]               # sources refused in the data path

[service.health]
check = "http"                # GET /health every 200 ms; 2 failures: down, 2 successes: up
path = "/health"
interval_ms = 200
timeout_ms = 150
rise = 2
fall = 2

[[service.backend]]
address = "198.18.1.11:80"   # web1, primary
[[service.backend]]
address = "198.18.1.12:80"   # web2, replica
role = "{replica_role}"

[[service]]
name = "www6"
vip = "[{VIP_V6}]:80"
forwarding = "nat"

[service.health]
check = "http"
path = "/health"
interval_ms = 200
timeout_ms = 150
rise = 2
fall = 2

[[service.backend]]
address = "[2001:db8:1::11]:80"
[[service.backend]]
address = "[2001:db8:1::12]:80"
role = "{replica_role}"

# HTTPS passes through: the certificate stays on the web servers.
[[service]]
name = "www-tls"
vip = "{VIP_V4}:443"
forwarding = "nat"

[service.health]
check = "https"               # GET /health over TLS, certificate checked for host
host = "{TLS_NAME}"
ca_file = "{ca}"
path = "/health"
interval_ms = 200
timeout_ms = 150
rise = 2
fall = 2

[[service.backend]]
address = "198.18.1.11:443"
[[service.backend]]
address = "198.18.1.12:443"
"#
    )
}

/// `n` new connections to `url`: how many each backend answered.
fn spread(topo: &Topology, url: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for r in topo.client().get_many(url, n, None, true)? {
        *per.entry(r.body.trim().to_string()).or_default() += 1;
    }
    Ok(per)
}

fn print_spread(per: &BTreeMap<String, usize>, n: usize) {
    for (b, c) in per {
        println!("   {b:<6} served {c:>4}  {}", "#".repeat(c * 40 / n));
    }
}

/// New connections every 20 ms until `backend` answers (10 s at most);
/// prints what happened on the way.
fn until_answered_by(topo: &Topology, d: &Daemon, url: &str, backend: &str, t0: Instant) -> Result<Duration> {
    let mut failed = 0;
    let mut seen_log = d.log_text().lines().count();
    let mut show_log = || {
        let log = d.log_text();
        for l in log.lines().skip(seen_log).filter(|l| l.contains("backend www") || l.contains("new flows now")) {
            println!(
                "   +{:>4} ms  xlb: {}",
                t0.elapsed().as_millis(),
                l.split_once("] ").map(|(_, r)| r).unwrap_or(l)
            );
        }
        seen_log = log.lines().count();
    };
    let step = Duration::from_millis(20);
    let got = topo.client().until_answered(url, backend, t0, step, Duration::from_secs(10), |_| {
        show_log();
        failed += 1;
        check_interrupt().is_ok()
    });
    check_interrupt()?;
    show_log();
    let Some(t) = got else { bail!("{backend} did not answer within 10 s; xlb log:\n{}", d.log_text()) };
    println!(
        "   +{:>4} ms  first answer from {backend} ({failed} attempts failed or went elsewhere before)",
        t.as_millis()
    );
    Ok(t)
}

/// Writes the daemon's configuration file and reloads it; prints xlb's answer.
fn reload(d: &Daemon, text: String) -> Result<()> {
    d.write_config(&text)?;
    let out = d.ctl(&["reload"])?;
    if !out.status.success() {
        bail!("xlb reload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("   {}", String::from_utf8_lossy(&out.stdout));
    Ok(())
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
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("ha") => return ha::run(),
        Some(other) => bail!("unknown demo {other:?}; expected none (the classic setup) or \"ha\""),
    }

    println!("== building the www.foobar.com setup in network namespaces");
    let topo = Topology::new(2).context("building the topology")?;
    let mut ca = TestCa::new("demo").context("making a throwaway CA with openssl")?;
    let cert = ca.issue(TLS_NAME, CertKind::Good).context("issuing the certificate for www.foobar.com")?;
    let mut web = topo
        .backends()
        .iter()
        .map(|b| b.start_nginx_tls(&cert))
        .collect::<Result<Vec<_>>>()
        .context("starting nginx (HTTP on 80, HTTPS on 443) on web1 and web2")?;
    println!("   client 198.18.0.1 -> lb (VIP {VIP_V4}, {VIP_V6}) -> web1 198.18.1.11, web2 198.18.1.12");
    println!(
        "   web1 and web2 serve https://{TLS_NAME}/ with a certificate from a throwaway CA ({})",
        ca.cert().display()
    );
    check_interrupt()?;

    println!("== starting xlb in the lb namespace");
    let d = Daemon::start(topo.lb_ns(), &config(ACTIVE_ACTIVE, &ca.cert()), &["eth0", "eth1"])?;
    for l in d.log_text().lines().filter(|l| l.contains("attached") || l.contains("service")) {
        println!("   {}", l.split_once("] ").map(|(_, r)| r).unwrap_or(l));
    }

    for vip in [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)] {
        check_interrupt()?;
        let url = http_url(vip, 80, "/");
        println!("== active-active: {REQUESTS} requests to {url}, a new connection each");
        print_spread(&spread(&topo, &url, REQUESTS)?, REQUESTS);
        check_interrupt()?;
        println!("== 50 requests on one kept-alive connection to {url}");
        let bodies = topo.client().curl_many_keepalive(&url, 50)?;
        println!("   all 50 answered by {} (a connection stays on its backend)", bodies[0].trim());
    }

    check_interrupt()?;
    let vip = IpAddr::from(VIP_V4);
    println!("== HTTPS passthrough: curl --cacert CA --resolve {TLS_NAME}:443:{vip} https://{TLS_NAME}/, 20 times");
    d.wait_checked(Duration::from_secs(5))?;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        check_interrupt()?;
        *per.entry(https_fetch(topo.client_ns(), TLS_NAME, vip, &ca.cert())?).or_default() += 1;
    }
    print_spread(&per, 20);
    println!("   the certificate was verified by curl against the pinned CA: xlb only forwarded the packets");

    check_interrupt()?;
    let url = http_url(VIP_V4.into(), 80, "/");
    println!("== the algorithm: round robin instead of Maglev on www (xlb reload)");
    reload(&d, config(Www { scheduler: "round_robin", ..ACTIVE_ACTIVE }, &ca.cert()))?;
    print_spread(&spread(&topo, &url, 20)?, 20);
    println!("   each CPU takes the backends in turn; Maglev instead lets several xlb instances agree");

    check_interrupt()?;
    println!("== the firewall: the client's address denied on www (xlb reload)");
    reload(&d, config(Www { deny: "\"198.18.0.0/24\"", ..ACTIVE_ACTIVE }, &ca.cert()))?;
    match topo.client().curl(&url) {
        Ok(body) => bail!("a denied client was answered by {}", body.trim()),
        Err(_) => println!("   curl {url}: no answer (its SYNs are dropped in XDP)"),
    }
    let status = d.status_json();
    println!(
        "   xlb status: www refused {} packets as denied",
        status["services"][0]["denied"].as_u64().unwrap_or_default()
    );
    reload(&d, config(ACTIVE_ACTIVE, &ca.cert()))?;
    println!("   deny list emptied: {}", topo.client().curl(&url)?.trim());

    check_interrupt()?;
    println!("== active-passive: web2 becomes the backup (xlb reload)");
    reload(&d, config(Www { replica_role: "backup", ..ACTIVE_ACTIVE }, &ca.cert()))?;
    print_spread(&spread(&topo, &url, 20)?, 20);

    println!("== web1 dies (nginx stopped); new connections every 20 ms");
    web[0].stop()?;
    let t0 = Instant::now();
    println!("   +   0 ms  web1 stopped");
    let failover = until_answered_by(&topo, &d, &url, "web2", t0)?;
    print_spread(&spread(&topo, &url, 20)?, 20);

    println!("== web1 returns");
    web[0].start()?;
    let t0 = Instant::now();
    println!("   +   0 ms  web1 started");
    let failback = until_answered_by(&topo, &d, &url, "web1", t0)?;
    print_spread(&spread(&topo, &url, 20)?, 20);
    println!(
        "   failover {} ms, failback {} ms (checks every 200 ms, fall 2, rise 2)",
        failover.as_millis(),
        failback.as_millis()
    );

    // The daemon samples its counters (rates, conntrack use) once a second;
    // the whole demo can be shorter than that.
    std::thread::sleep(Duration::from_millis(2200));
    println!("== what xlb counted (xlb status)");
    let out = d.ctl(&["status"])?;
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
