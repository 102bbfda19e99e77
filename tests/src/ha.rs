//! No single point of failure: two load balancers behind a router that
//! spreads the VIP's flows over them by ECMP, each announcing the VIP by BGP
//! through its own BIRD while its xlb says so (`[daemon.announce]`).
//!
//! ```text
//!  client ns              router ns (BIRD, AS 65000)          switch ns        lbN ns (xlb + BIRD, AS 65001)
//!  eth0 198.18.0.1 ────── eth0 198.18.0.2
//!                         eth1 198.18.2.1 ──── p-router ─┐
//!                                                        br0 ─ p-lbN ──── eth0 198.18.2.(1+N)
//!                                                            ─ p-webN ─── webN eth0 198.18.2.(10+N)
//!                                                                              lo 198.18.9.10 (the VIP, DSR)
//! ```
//!
//! The router learns 198.18.9.10/32 from each lb that announces it and
//! installs one multipath route (`merge paths on`), hashed on the 5-tuple
//! (`fib_multipath_hash_policy = 1`). BFD on every BGP session (50 ms × 5)
//! drops a gone lb within 250 ms. The lbs are one-arm and forward by L2 DSR:
//! the backends hold the VIP on `lo` and answer through the router. Only
//! 198.18.0.0/15 addresses, all inside the namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    config::{BackendToml, ConfigToml, ServiceToml},
    netns::{run_suffix, BgProcess, Netns},
    nginx::Nginx,
    topology::{new_ns, tune_veths, veth},
    xlb::TempDir,
};

/// The VIP both lbs announce.
pub const HA_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 10);
/// The client's address.
pub const HA_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The router's address on the client's link (the client's gateway).
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The router's address on the fabric (the lbs' and backends' gateway, their BGP neighbour).
pub const ROUTER_FABRIC: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The router's AS and the lbs' AS.
pub const ROUTER_AS: u32 = 65000;
pub const LB_AS: u32 = 65001;
/// BFD: transmit/receive interval and multiplier (detection in 250 ms).
pub const BFD_INTERVAL_MS: u32 = 50;
pub const BFD_MULTIPLIER: u32 = 5;
/// Most lbs and backends.
pub const MAX_LBS: usize = 4;
pub const MAX_HA_BACKENDS: usize = 8;

/// Address of lb number `i` (1-based) on the fabric: 198.18.2.(1+i).
pub fn lb_addr(i: usize) -> Ipv4Addr {
    assert!((1..=MAX_LBS).contains(&i), "lb number {i} out of range");
    Ipv4Addr::new(198, 18, 2, 1 + i as u8)
}

/// Address of backend number `n` (1-based) on the fabric: 198.18.2.(10+n).
pub fn ha_backend(n: usize) -> Ipv4Addr {
    assert!((1..=MAX_HA_BACKENDS).contains(&n), "backend number {n} out of range");
    Ipv4Addr::new(198, 18, 2, 10 + n as u8)
}

/// The BIRD protocol name xlb's default pattern gives the VIP.
pub fn vip_protocol() -> String {
    format!("xlb_{}", HA_VIP.to_string().replace('.', "_"))
}

/// BIRD running in a namespace with its own config and control socket;
/// killed (SIGTERM, then SIGKILL) on drop.
pub struct Bird {
    proc: BgProcess,
    socket: PathBuf,
    ns: String,
}

impl Bird {
    /// Writes `conf` into `dir` and starts `bird -f` in `ns`; returns once its
    /// control socket answers (10 s at most).
    pub fn start(ns: &Netns, dir: &Path, tag: &str, conf: &str) -> Result<Self> {
        let conf_path = dir.join(format!("{tag}.conf"));
        let socket = dir.join(format!("{tag}.ctl"));
        let log = dir.join(format!("{tag}.log"));
        std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
        let _ = std::fs::remove_file(&socket);
        let mut cmd = ns.command(&["bird", "-f", "-c", path_str(&conf_path), "-s", path_str(&socket)]);
        let logf = std::fs::File::create(&log)?;
        cmd.stdin(std::process::Stdio::null()).stdout(logf.try_clone()?).stderr(logf);
        let mut bird = Bird { proc: BgProcess::spawn(cmd)?, socket, ns: ns.name().to_owned() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = bird.proc.try_wait()? {
                bail!(
                    "bird in {} exited at once ({st}): {}",
                    ns.name(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::os::unix::net::UnixStream::connect(&bird.socket).is_ok() {
                return Ok(bird);
            }
            if Instant::now() > deadline {
                bail!("bird in {} did not open {} within 10 s", ns.name(), bird.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The control socket (for `[daemon.announce] socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `birdc -s SOCKET ARGS...`: its output (fails unless it exits 0).
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["birdc", "-s", path_str(&self.socket)];
        argv.extend_from_slice(args);
        let out = crate::netns::run_with_timeout(
            std::process::Command::new(argv[0]).args(&argv[1..]),
            None,
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!("birdc {args:?} in {}: {}", self.ns, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL at once, as when its host dies.
    pub fn kill(&mut self) -> Result<()> {
        self.proc.signal(libc::SIGKILL)?;
        self.proc.stop();
        Ok(())
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

/// The router's BIRD: one BGP session (with BFD) per lb, and the kernel
/// protocol merging equal routes into one multipath route.
fn router_conf(lbs: usize) -> String {
    let mut c = format!(
        "router id {ROUTER_FABRIC};\n\
         protocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"eth1\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n"
    );
    for i in 1..=lbs {
        c += &format!(
            "protocol bgp lb{i} {{\n  local {ROUTER_FABRIC} as {ROUTER_AS};\n  neighbor {} as {LB_AS};\n{}  ipv4 {{ import all; export none; }};\n}}\n",
            lb_addr(i),
            bgp_timers()
        );
    }
    c
}

/// Session settings both sides share: BFD, no graceful restart (a gone
/// peer's routes go at once), short timers so a returning lb is back within
/// seconds.
fn bgp_timers() -> &'static str {
    "  bfd on;\n  graceful restart off;\n  hold time 3;\n  keepalive time 1;\n  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 2;\n"
}

/// An lb's BIRD: the VIP's static protocol, disabled until xlb enables it,
/// exported to the router.
pub fn lb_bird_conf(i: usize) -> String {
    format!(
        "router id {me};\n\
         protocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"eth0\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n\
         protocol static {proto} {{ disabled yes; ipv4; route {HA_VIP}/32 blackhole; }}\n\
         protocol bgp uplink {{\n  local {me} as {LB_AS};\n  neighbor {ROUTER_FABRIC} as {ROUTER_AS};\n{}  ipv4 {{ import none; export where source = RTS_STATIC; }};\n}}\n",
        bgp_timers(),
        me = lb_addr(i),
        proto = vip_protocol(),
    )
}

/// One lb host: its namespace (interface `eth0`) and its BIRD while it runs.
pub struct LbHost {
    pub n: usize,
    pub ns: Netns,
    pub bird: Option<Bird>,
}

/// One backend host: namespace, nginx answering `"webN\n"`.
pub struct HaBackend {
    pub n: usize,
    pub name: String,
    pub ns: Netns,
    pub nginx: Option<Nginx>,
}

/// The running HA topology; dropping it stops every BIRD and nginx and
/// removes every namespace. Drop the xlb daemons first.
pub struct HaTopology {
    pub client: Netns,
    pub router: Netns,
    pub switch: Netns,
    pub lbs: Vec<LbHost>,
    pub backends: Vec<HaBackend>,
    pub router_bird: Option<Bird>,
    dir: TempDir,
}

impl HaTopology {
    /// Builds `lbs` lbs and `backends` backends (with nginx and the VIP on
    /// `lo`), the router running BIRD, every lb's BIRD running (the VIP not
    /// announced until an xlb enables it).
    pub fn build(lbs: usize, backends: usize) -> Result<Self> {
        if !(1..=MAX_LBS).contains(&lbs) || !(1..=MAX_HA_BACKENDS).contains(&backends) {
            bail!("{lbs} lbs and {backends} backends: at most {MAX_LBS} and {MAX_HA_BACKENDS}");
        }
        let suffix = run_suffix();
        let dir = TempDir::new("ha")?;
        let client = new_ns(&suffix, "client")?;
        let router = new_ns(&suffix, "router")?;
        let switch = new_ns(&suffix, "sw")?;
        client.sysctl(&[("net.ipv4.tcp_max_tw_buckets", "0")])?;
        router.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ])?;
        switch.sysctl(&[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")])?;
        switch.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        veth(&client, "eth0", &router, "eth0")?;
        veth(&router, "eth1", &switch, "p-router")?;
        let mut ports = vec!["p-router".to_owned()];
        let mut lb_hosts = Vec::new();
        for i in 1..=lbs {
            let ns = new_ns(&suffix, &format!("lb{i}"))?;
            veth(&ns, "eth0", &switch, &format!("p-lb{i}"))?;
            ports.push(format!("p-lb{i}"));
            lb_hosts.push(LbHost { n: i, ns, bird: None });
        }
        let mut webs = Vec::new();
        for n in 1..=backends {
            let name = format!("web{n}");
            let ns = new_ns(&suffix, &name)?;
            veth(&ns, "eth0", &switch, &format!("p-{name}"))?;
            ports.push(format!("p-{name}"));
            webs.push(HaBackend { n, name, ns, nginx: None });
        }
        switch.ip(&["link", "set", "br0", "up"])?;
        for p in &ports {
            switch.ip(&["link", "set", p, "master", "br0"])?;
            switch.ip(&["link", "set", p, "up"])?;
        }
        // A real NIC drops frames for other MACs before XDP sees them; a veth
        // does not. When a dead lb's port goes down the bridge forgets its MAC
        // and floods the frames the router still sends it, and the other lb's
        // XDP program would forward them: no unknown unicast to the lbs' ports.
        for i in 1..=lbs {
            switch.run(&["bridge", "link", "set", "dev", &format!("p-lb{i}"), "flood", "off"])?;
        }
        let port_refs: Vec<&str> = ports.iter().map(String::as_str).collect();
        tune_veths(&switch, &port_refs, false)?;
        client.ip(&["link", "set", "eth0", "up"])?;
        router.ip(&["link", "set", "eth0", "up"])?;
        router.ip(&["link", "set", "eth1", "up"])?;
        tune_veths(&client, &["eth0"], true)?;
        tune_veths(&router, &["eth0", "eth1"], true)?;
        client.ip(&["addr", "add", &format!("{HA_CLIENT}/24"), "dev", "eth0"])?;
        client.ip(&["route", "add", "default", "via", &ROUTER_CLIENT_SIDE.to_string()])?;
        router.ip(&["addr", "add", &format!("{ROUTER_CLIENT_SIDE}/24"), "dev", "eth0"])?;
        router.ip(&["addr", "add", &format!("{ROUTER_FABRIC}/24"), "dev", "eth1"])?;
        for lb in &lb_hosts {
            lb.ns.ip(&["link", "set", "eth0", "up"])?;
            tune_veths(&lb.ns, &["eth0"], false)?;
            lb.ns.ip(&["addr", "add", &format!("{}/24", lb_addr(lb.n)), "dev", "eth0"])?;
            lb.ns.ip(&["route", "add", "default", "via", &ROUTER_FABRIC.to_string()])?;
        }
        for w in &webs {
            w.ns.sysctl(&[
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.default.arp_ignore", "1"),
                ("net.ipv4.conf.default.arp_announce", "2"),
            ])?;
            w.ns.ip(&["link", "set", "eth0", "up"])?;
            tune_veths(&w.ns, &["eth0"], true)?;
            w.ns.ip(&["addr", "add", &format!("{}/24", ha_backend(w.n)), "dev", "eth0"])?;
            w.ns.ip(&["addr", "add", &format!("{HA_VIP}/32"), "dev", "lo"])?;
            w.ns.ip(&["route", "add", "default", "via", &ROUTER_FABRIC.to_string()])?;
        }
        let mut topo = HaTopology { client, router, switch, lbs: lb_hosts, backends: webs, router_bird: None, dir };
        for w in &mut topo.backends {
            w.nginx = Some(Nginx::spawn(&w.ns, &w.name)?);
        }
        topo.router_bird = Some(Bird::start(&topo.router, topo.dir.path(), "router", &router_conf(lbs))?);
        for i in 1..=lbs {
            topo.start_lb_bird(i)?;
        }
        Ok(topo)
    }

    /// lb number `i` (1-based).
    #[track_caller]
    pub fn lb(&self, i: usize) -> &LbHost {
        &self.lbs[i - 1]
    }

    /// The BIRD control socket of lb `i` (the same path across its restarts).
    pub fn lb_bird_socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("lb{i}.ctl"))
    }

    /// Starts lb `i`'s BIRD (again).
    pub fn start_lb_bird(&mut self, i: usize) -> Result<()> {
        let bird = Bird::start(&self.lbs[i - 1].ns, self.dir.path(), &format!("lb{i}"), &lb_bird_conf(i))?;
        self.lbs[i - 1].bird = Some(bird);
        Ok(())
    }

    /// The lb host `i` dies, as when it loses power: its link goes down
    /// first, then its BIRD is killed (so no BGP notification or TCP FIN gets
    /// out; xlb, if still running, is the caller's to kill). The router
    /// notices by BFD alone: its own link stays up.
    pub fn kill_lb_host(&mut self, i: usize) -> Result<()> {
        self.lbs[i - 1].ns.ip(&["link", "set", "eth0", "down"])?;
        if let Some(mut b) = self.lbs[i - 1].bird.take() {
            b.kill()?;
        }
        Ok(())
    }

    /// lb host `i` is back: link up, BIRD started (xlb is the caller's to start).
    pub fn revive_lb_host(&mut self, i: usize) -> Result<()> {
        self.lbs[i - 1].ns.ip(&["link", "set", "eth0", "up"])?;
        // The default route went with the link.
        let _ = self.lbs[i - 1].ns.ip(&["route", "replace", "default", "via", &ROUTER_FABRIC.to_string()]);
        self.start_lb_bird(i)
    }

    /// The next hops of the router's kernel route to the VIP (empty when it
    /// has none).
    pub fn router_next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self.router.run(&["ip", "-4", "route", "show", &format!("{HA_VIP}/32")])?;
        Ok(out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// Waits until the router's route to the VIP goes via exactly the lbs
    /// `lbs`; how long that took.
    pub fn wait_next_hops(&self, lbs: &[usize], limit: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let mut want: Vec<Ipv4Addr> = lbs.iter().map(|&i| lb_addr(i)).collect();
        want.sort();
        loop {
            let mut got = self.router_next_hops()?;
            got.sort();
            if got == want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                let protocols = self.router_bird.as_ref().map(|b| b.birdc(&["show", "protocols"]));
                bail!("the router's route to {HA_VIP} goes via {got:?}, not {want:?}, after {limit:?}; BIRD: {protocols:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The VIP's address and port 80.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(HA_VIP.into(), 80)
    }

    /// The xlb.toml of lb `i`: one-arm DSR on `eth0`, the VIP announced
    /// through its BIRD, HTTP checks every 200 ms, the backends listed in
    /// `order` (numbers).
    pub fn xlb_config(&self, i: usize, order: &[usize]) -> String {
        let mut svc = ServiceToml::new("www", self.vip()).set("forwarding", "dsr").quick_http_checks();
        for &n in order {
            svc = svc.backend(BackendToml::new(SocketAddr::new(ha_backend(n).into(), 80)));
        }
        let toml = ConfigToml::new()
            .daemon("interfaces", ["eth0"])
            .daemon("metrics", "127.0.0.1:9477")
            .daemon("conntrack_entries", 65536u32)
            .service(svc)
            .to_string();
        format!(
            "{toml}\n[daemon.announce]\nsocket = \"{}\"\nprotocol = \"xlb_{{vip}}\"\n",
            self.lb_bird_socket(i).display()
        )
    }
}

/// One kept-alive connection's answers while [`drive`] ran.
#[derive(Debug)]
pub struct ConnLog {
    /// The backend that answered it first.
    pub backend: String,
    /// When each request was answered (or failed), and the body or the error.
    pub answers: Vec<(Instant, std::result::Result<String, String>)>,
}

impl ConnLog {
    /// The first answer completed after `t`.
    pub fn first_answer_after(&self, t: Instant) -> Option<Instant> {
        self.answers.iter().find(|(at, r)| *at > t && r.is_ok()).map(|(at, _)| *at)
    }

    /// The longest pause between two answers that ended after `t`, and when it ended.
    pub fn longest_pause_after(&self, t: Instant) -> Option<(Duration, Instant)> {
        let ok: Vec<Instant> = self.answers.iter().filter(|(_, r)| r.is_ok()).map(|(at, _)| *at).collect();
        ok.windows(2).filter(|w| w[1] > t).map(|w| (w[1] - w[0], w[1])).max_by_key(|(gap, _)| *gap)
    }

    /// Answers from another backend than the first, and failed requests.
    pub fn moved_and_failed(&self) -> (usize, usize) {
        let moved = self.answers.iter().filter(|(_, r)| r.as_ref().is_ok_and(|b| *b != self.backend)).count();
        (moved, self.answers.iter().filter(|(_, r)| r.is_err()).count())
    }
}

/// Opens `n` kept-alive connections from the client to the VIP; each with
/// the backend that answered its first request.
pub fn open_connections(topo: &HaTopology, n: usize) -> Result<Vec<(crate::KeptAlive, String)>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = crate::KeptAlive::open(&topo.client, topo.vip()).with_context(|| format!("connection {i}"))?;
        let (status, body) = k.get("/").with_context(|| format!("first request on connection {i}"))?;
        if status != 200 {
            bail!("connection {i}: status {status}");
        }
        conns.push((k, body.trim().to_owned()));
    }
    Ok(conns)
}

/// Sends a request on every connection every `step`, each connection on its
/// own thread, until `stop` is set (or `limit` passes); a connection whose
/// request fails is given up. `during` runs on the calling thread meanwhile.
pub fn drive<R>(
    conns: &mut [(crate::KeptAlive, String)],
    step: Duration,
    limit: Duration,
    during: impl FnOnce() -> R,
) -> (Vec<ConnLog>, R) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + limit;
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .map(|(k, backend)| {
                let stop = &stop;
                s.spawn(move || {
                    let mut log = ConnLog { backend: backend.clone(), answers: Vec::new() };
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = k.get("/").map(|(_, b)| b.trim().to_owned()).map_err(|e| format!("{e:#}"));
                        let failed = r.is_err();
                        log.answers.push((Instant::now(), r));
                        if failed {
                            break;
                        }
                        std::thread::sleep(step);
                    }
                    log
                })
            })
            .collect();
        let r = during();
        stop.store(true, Ordering::Relaxed);
        (handles.into_iter().map(|h| h.join().expect("a traffic thread panicked")).collect(), r)
    })
}

/// A pause between two answers of one connection longer than this is a
/// stall (requests go every 20 ms or so).
pub const STALLED: Duration = Duration::from_millis(100);

/// How long after `t` the last stalled connection answered again: for each
/// connection whose longest pause after `t` (or spanning it) exceeds
/// [`STALLED`], the time from `t` to the answer that ended it; the largest.
/// Zero when none stalled; `None` when a connection never answered after `t`.
pub fn last_stall(logs: &[ConnLog], t: Instant) -> Option<Duration> {
    let mut worst = Duration::ZERO;
    for l in logs {
        l.first_answer_after(t)?;
        if let Some((gap, end)) = l.longest_pause_after(t) {
            if gap > STALLED {
                worst = worst.max(end - t);
            }
        }
    }
    Some(worst)
}

/// The longest pause of any connection that ended after `t`.
pub fn longest_pause(logs: &[ConnLog], t: Instant) -> Duration {
    logs.iter().filter_map(|l| l.longest_pause_after(t)).map(|(gap, _)| gap).max().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_test_addresses() {
        for a in [HA_VIP, HA_CLIENT, ROUTER_CLIENT_SIDE, ROUTER_FABRIC, lb_addr(1), lb_addr(4), ha_backend(8)] {
            assert!(crate::is_test_address(a.into()), "{a}");
        }
        assert_eq!(vip_protocol(), "xlb_198_18_9_10");
    }

    #[test]
    fn lb_config_is_valid_and_announces() {
        let toml = ConfigToml::new().daemon("interfaces", ["eth0"]).to_string();
        let text = format!(
            "{toml}\n[[service]]\nname = \"www\"\nvip = \"198.18.9.10:80\"\nforwarding = \"dsr\"\n[[service.backend]]\naddress = \"198.18.2.11:80\"\n\n[daemon.announce]\nsocket = \"/tmp/x.ctl\"\n"
        );
        let cfg = xlb::config::parse(&text, "ha.toml").unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        let a = cfg.daemon.announce.expect("announce");
        assert_eq!(xlb::daemon::announce::protocol_name(&a.protocol, HA_VIP.into()), vip_protocol());
    }

    /// The condition for a flow to keep its backend when it moves between
    /// lbs: both build the same Maglev table, whatever order the backends
    /// are listed in.
    #[test]
    fn backend_order_in_the_file_does_not_change_the_pick() {
        let cfg = |order: &[usize]| {
            // A small table: `pick` builds it for every flow.
            let mut svc = ServiceToml::new("www", SocketAddr::new(HA_VIP.into(), 80))
                .set("forwarding", "dsr")
                .set("table_size", 1021u32);
            for &n in order {
                svc = svc.backend(BackendToml::new(SocketAddr::new(ha_backend(n).into(), 80)));
            }
            let text = ConfigToml::new().daemon("interfaces", ["eth0"]).service(svc).to_string();
            xlb::config::parse(&text, "ha.toml").unwrap_or_else(|e| panic!("{e:#}\n{text}"))
        };
        let (a, b) = (cfg(&[1, 2, 3]), cfg(&[3, 1, 2]));
        let vip = SocketAddr::new(HA_VIP.into(), 80);
        let mut per_backend = std::collections::BTreeMap::new();
        for port in 20000..20500u16 {
            let client = SocketAddr::new(HA_CLIENT.into(), port);
            let pa = xlb::cli::explain::pick(&a, client, vip, xlb::config::Protocol::Tcp).unwrap();
            let pb = xlb::cli::explain::pick(&b, client, vip, xlb::config::Protocol::Tcp).unwrap();
            assert_eq!(pa, pb, "flow from {client}: {pa} with backends 1,2,3 but {pb} with 3,1,2");
            *per_backend.entry(pa).or_insert(0) += 1;
        }
        assert_eq!(per_backend.len(), 3, "500 flows reach every backend: {per_backend:?}");
    }

    #[test]
    fn bird_configs_name_every_peer() {
        let r = router_conf(2);
        assert!(r.contains("neighbor 198.18.2.2 as 65001") && r.contains("neighbor 198.18.2.3 as 65001"), "{r}");
        assert!(r.contains("merge paths on") && r.contains("bfd on"), "{r}");
        let l = lb_bird_conf(2);
        assert!(l.contains("protocol static xlb_198_18_9_10 { disabled yes;") && l.contains("local 198.18.2.3"), "{l}");
    }
}
