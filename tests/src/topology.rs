//! The classic client → lb → switch → backends topology.
//!
//! ```text
//!  client ns            lb ns                     switch ns           webN ns
//!  eth0 198.18.0.1 ──── eth0 198.18.0.2
//!       2001:db8::1          2001:db8::2
//!                       eth1 198.18.1.1  ──── p-lb ─┐
//!                            2001:db8:1::1          br0 ─ p-webN ──── eth0 198.18.1.(10+N)
//!                                                                          2001:db8:1::(10+N)
//! ```
//!
//! The VIPs (default [`VIP_V4`], [`VIP_V6`]) are configured nowhere; the client
//! routes them (/32, /128) via the lb. The backends' default routes point at the lb
//! (NAT mode needs replies to pass through it); the lb forwards IPv4 and IPv6, so
//! without any load balancer the client reaches the backends by plain routing.
//!
//! One-arm ([`TopologyBuilder::one_arm`]): the same addresses, but the client and
//! the lb's single interface `eth0` (with both lb addresses) are ports of the
//! backends' bridge too, so every packet xlb forwards leaves by the interface it
//! came in on:
//!
//! ```text
//!  client ns  eth0 198.18.0.1 ──── p-client ─┐
//!  lb ns      eth0 198.18.0.2, 198.18.1.1 ── p-lb ─ br0 ─ p-webN ──── webN eth0
//! ```
//!
//! For one-arm DSR, [`Topology::backends_answer_clients_directly`] gives the
//! backends an on-link route to the client's subnet, so their answers skip the lb.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::netns::{run_suffix, Netns, NS_PREFIX};
use crate::nginx::Nginx;

/// The client's IPv4 address (on its `eth0`).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client's IPv6 address (on its `eth0`).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The lb's address on the client side (`eth0`), the client's gateway.
pub const LB_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The lb's IPv6 address on the client side (`eth0`), the client's gateway.
pub const LB_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The lb's address on the backend side (`eth1`), the backends' gateway.
pub const LB_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The lb's IPv6 address on the backend side (`eth1`), the backends' gateway.
pub const LB_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Default IPv4 VIP (not configured on any interface of the lb).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Default IPv6 VIP (not configured on any interface of the lb).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// Interface names inside the lb namespace: client side, backend side (the order
/// of `daemon.interfaces` in xlb.toml).
pub const LB_INTERFACES: [&str; 2] = ["eth0", "eth1"];
/// Most backends a topology can have (addresses 198.18.1.11 ..= 198.18.1.210).
pub const MAX_BACKENDS: usize = 200;

/// IPv4 address of backend number `n` (1-based: web1 = 198.18.1.11).
pub fn backend_v4(n: usize) -> Ipv4Addr {
    assert!((1..=MAX_BACKENDS).contains(&n), "backend number {n} out of range");
    Ipv4Addr::new(198, 18, 1, (10 + n) as u8)
}

/// IPv6 address of backend number `n` (1-based: web1 = 2001:db8:1::11; the last
/// group reads like the IPv4 host part).
pub fn backend_v6(n: usize) -> Ipv6Addr {
    assert!((1..=MAX_BACKENDS).contains(&n), "backend number {n} out of range");
    format!("2001:db8:1::{}", 10 + n).parse().expect("valid IPv6 literal")
}

/// Runs `ethtool -K` on each interface (`gro on`, and `tx off` when asked).
pub(crate) fn tune_veths(ns: &Netns, ifaces: &[&str], tx_csum_off: bool) -> Result<()> {
    for iface in ifaces {
        let mut argv = vec!["ethtool", "-K", iface, "gro", "on"];
        if tx_csum_off {
            argv.extend(["tx", "off"]);
        }
        ns.run(&argv).with_context(|| format!("tuning {iface} in {}", ns.name()))?;
    }
    Ok(())
}

/// Sysctls every namespace of the topology gets before its interfaces exist, so
/// new interfaces inherit them: no IPv6 DAD, no reverse-path filter, no redirects.
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
];

/// A veth pair created inside `ns` (`dev`) with its peer moved straight into
/// `peer_ns` (`peer`): nothing ever exists in the root namespace.
pub(crate) fn veth(ns: &Netns, dev: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
    ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer, "netns", peer_ns.name()])
}

pub(crate) fn new_ns(suffix: &str, role: &str) -> Result<Netns> {
    let ns = Netns::new(format!("{NS_PREFIX}-{suffix}-{role}"))?;
    ns.sysctl(COMMON_SYSCTLS)?;
    Ok(ns)
}

/// Builder for [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    backends: usize,
    vips: Vec<IpAddr>,
    tx_checksum_offload: bool,
    one_arm: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            backends: 2,
            vips: vec![IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)],
            tx_checksum_offload: false,
            one_arm: false,
        }
    }
}

impl TopologyBuilder {
    /// Number of backends `web1..=webN` (default 2, at most [`MAX_BACKENDS`]).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// The VIPs the client routes via the lb (default [`VIP_V4`] and [`VIP_V6`]).
    /// They must lie in 198.18.0.0/15 or 2001:db8::/32 and must not be an address
    /// of the topology.
    pub fn vips(mut self, vips: &[IpAddr]) -> Self {
        self.vips = vips.to_vec();
        self
    }

    /// Keep transmit checksum offload on the client's and backends' `eth0`
    /// (default: off). With offload on, the hosts send packets whose TCP/UDP
    /// checksum is only partial; once XDP rewrites and redirects such a frame
    /// the "finish the checksum" note is lost and the receiver drops it. Turn
    /// it on only for runs without XDP or to measure that cost.
    pub fn tx_checksum_offload(mut self, on: bool) -> Self {
        self.tx_checksum_offload = on;
        self
    }

    /// One-arm layout (default: two-arm): the lb has the single interface
    /// `eth0`, a port of the backends' bridge like the client's `eth0` (see
    /// the module's picture).
    pub fn one_arm(mut self, on: bool) -> Self {
        self.one_arm = on;
        self
    }

    /// Creates all namespaces, links, addresses and routes. On error everything
    /// created so far is removed.
    pub fn build(self) -> Result<Topology> {
        if !(1..=MAX_BACKENDS).contains(&self.backends) {
            bail!("backend count {} not in 1..={MAX_BACKENDS}", self.backends);
        }
        for vip in &self.vips {
            if !crate::is_test_address(*vip) {
                bail!("VIP {vip} is outside 198.18.0.0/15 and 2001:db8::/32");
            }
        }
        let tx_off = !self.tx_checksum_offload;
        let suffix = run_suffix();

        let client = new_ns(&suffix, "client")?;
        let lb = new_ns(&suffix, "lb")?;
        let switch = new_ns(&suffix, "sw")?;
        // The client keeps no TIME_WAIT sockets, so a fixed source port can be
        // reused at once (same 5-tuple flows, `Client::curl_with_local_port`).
        client.sysctl(&[("net.ipv4.tcp_max_tw_buckets", "0")])?;
        lb.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ])?;
        // The switch is pure L2: no addresses, no IPv6 chatter of its own.
        switch.sysctl(&[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")])?;

        let lb_ifaces: &'static [&'static str] = if self.one_arm { &LB_INTERFACES[..1] } else { &LB_INTERFACES };
        let (lb_client_if, lb_backend_if) = (lb_ifaces[0], lb_ifaces[lb_ifaces.len() - 1]);
        switch.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        let mut switch_ports = vec!["p-lb".to_owned()];
        if self.one_arm {
            // client eth0 <-> switch p-client, lb eth0 <-> switch p-lb
            veth(&client, "eth0", &switch, "p-client")?;
            switch_ports.push("p-client".to_owned());
        } else {
            // client eth0 <-> lb eth0
            veth(&client, "eth0", &lb, "eth0")?;
        }
        // lb's backend side <-> switch p-lb; all switch ports enslaved to br0
        veth(&lb, lb_backend_if, &switch, "p-lb")?;
        for port in &switch_ports {
            switch.ip(&["link", "set", port, "master", "br0"])?;
        }

        let mut backends = Vec::with_capacity(self.backends);
        for n in 1..=self.backends {
            let name = format!("web{n}");
            let ns = new_ns(&suffix, &name)?;
            let port = format!("p-{name}");
            veth(&ns, "eth0", &switch, &port)?;
            switch.ip(&["link", "set", &port, "master", "br0"])?;
            switch_ports.push(port);
            backends.push(Backend { n, name, ns, ipv4: backend_v4(n), ipv6: backend_v6(n) });
        }

        // Links up everywhere before addresses and routes (IPv6 wants carrier).
        switch.ip(&["link", "set", "br0", "up"])?;
        for port in &switch_ports {
            switch.ip(&["link", "set", port, "up"])?;
        }
        client.ip(&["link", "set", "eth0", "up"])?;
        for iface in lb_ifaces {
            lb.ip(&["link", "set", iface, "up"])?;
        }
        for b in &backends {
            b.ns.ip(&["link", "set", "eth0", "up"])?;
        }

        // GRO on every veth: XDP-redirected frames arriving on a veth are dropped
        // unless the receiving veth has GRO (or an XDP program) enabled.
        let ports: Vec<&str> = switch_ports.iter().map(String::as_str).collect();
        tune_veths(&switch, &ports, false)?;
        tune_veths(&lb, lb_ifaces, false)?;
        tune_veths(&client, &["eth0"], tx_off)?;
        for b in &backends {
            tune_veths(&b.ns, &["eth0"], tx_off)?;
        }

        // Addresses (nodad: usable at once).
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", "eth0"])?;
        client.ip(&["-6", "addr", "add", &format!("{CLIENT_V6}/64"), "dev", "eth0", "nodad"])?;
        lb.ip(&["addr", "add", &format!("{LB_CLIENT_V4}/24"), "dev", lb_client_if])?;
        lb.ip(&["-6", "addr", "add", &format!("{LB_CLIENT_V6}/64"), "dev", lb_client_if, "nodad"])?;
        lb.ip(&["addr", "add", &format!("{LB_BACKEND_V4}/24"), "dev", lb_backend_if])?;
        lb.ip(&["-6", "addr", "add", &format!("{LB_BACKEND_V6}/64"), "dev", lb_backend_if, "nodad"])?;
        for b in &backends {
            b.ns.ip(&["addr", "add", &format!("{}/24", b.ipv4), "dev", "eth0"])?;
            b.ns.ip(&["-6", "addr", "add", &format!("{}/64", b.ipv6), "dev", "eth0", "nodad"])?;
        }

        // Routes: client via lb (the VIPs lie inside the client's own prefix, so
        // they need host routes to beat the connected route); backends via lb.
        client.ip(&["route", "add", "default", "via", &LB_CLIENT_V4.to_string()])?;
        client.ip(&["-6", "route", "add", "default", "via", &LB_CLIENT_V6.to_string()])?;
        for b in &backends {
            b.ns.ip(&["route", "add", "default", "via", &LB_BACKEND_V4.to_string()])?;
            b.ns.ip(&["-6", "route", "add", "default", "via", &LB_BACKEND_V6.to_string()])?;
        }
        let mut topo = Topology { suffix, client, lb, switch, backends, vips: Vec::new(), lb_ifaces };
        for vip in self.vips {
            topo.add_client_vip_route(vip)?;
        }
        Ok(topo)
    }
}

/// One backend host `webN`: its namespace (interface `eth0`) and addresses.
#[derive(Debug)]
pub struct Backend {
    n: usize,
    name: String,
    ns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Backend {
    /// 1-based number: web1 is 1.
    pub fn number(&self) -> usize {
        self.n
    }

    /// Host name, `webN`; also the body nginx answers with (`"webN\n"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// IPv4 address on `eth0` (198.18.1.(10+N)).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// IPv6 address on `eth0` (2001:db8:1::(10+N)).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Interface name inside the backend's namespace (`eth0`).
    pub fn interface(&self) -> &'static str {
        "eth0"
    }

    /// For DSR: puts `vip` on the backend's `lo` (/32 or /128) and sets
    /// `arp_ignore=1`, `arp_announce=2` so the backend never answers ARP for it.
    pub fn add_vip(&self, vip: IpAddr) -> Result<()> {
        if !crate::is_test_address(vip) {
            bail!("VIP {vip} is outside 198.18.0.0/15 and 2001:db8::/32");
        }
        self.ns.sysctl(&[
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.eth0.arp_announce", "2"),
        ])?;
        match vip {
            IpAddr::V4(v4) => self.ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"]),
            IpAddr::V6(v6) => self.ns.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo", "nodad"]),
        }
        .with_context(|| format!("adding VIP {vip} to lo of {}", self.name))
    }

    /// Starts nginx (answering `"webN\n"`) in this backend's namespace.
    pub fn start_nginx(&self) -> Result<Nginx> {
        Nginx::spawn(&self.ns, &self.name)
    }

    /// Starts nginx answering `"webN\n"` over HTTP on 80 and HTTPS on 443 with `pair`.
    pub fn start_nginx_tls(&self, pair: &crate::tls::CertPair) -> Result<Nginx> {
        Nginx::spawn_with(&self.ns, crate::NginxConfig::new(&self.name).with_tls(pair))
    }
}

/// The running topology; dropping it removes every namespace it created (and so
/// every veth and every process inside).
#[derive(Debug)]
pub struct Topology {
    suffix: String,
    client: Netns,
    lb: Netns,
    switch: Netns,
    backends: Vec<Backend>,
    vips: Vec<IpAddr>,
    /// The lb's interfaces: [`LB_INTERFACES`], or its first alone (one-arm).
    lb_ifaces: &'static [&'static str],
}

impl Topology {
    /// A builder with the defaults: 2 backends, VIPs [`VIP_V4`] and [`VIP_V6`],
    /// transmit checksum offload off on the hosts.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Builds the default topology with `n` backends.
    pub fn new(n: usize) -> Result<Topology> {
        Topology::builder().backends(n).build()
    }

    /// The per-run suffix carried by every namespace name (`xlb-<suffix>-<role>`).
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Names of all namespaces of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.client.name().to_owned(), self.lb.name().to_owned(), self.switch.name().to_owned()];
        v.extend(self.backends.iter().map(|b| b.ns.name().to_owned()));
        v
    }

    /// The client namespace (interface `eth0`).
    pub fn client_ns(&self) -> &Netns {
        &self.client
    }

    /// curl helpers running in the client namespace.
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.client)
    }

    /// The lb namespace, where xlb runs (interfaces [`Topology::lb_interfaces`]).
    pub fn lb_ns(&self) -> &Netns {
        &self.lb
    }

    /// The lb's interfaces for xlb.toml's `daemon.interfaces`: client side
    /// (`eth0`) first, backend side (`eth1`) second; one-arm: `eth0` alone.
    pub fn lb_interfaces(&self) -> &'static [&'static str] {
        self.lb_ifaces
    }

    /// Whether the lb has a single interface (see [`TopologyBuilder::one_arm`]).
    pub fn is_one_arm(&self) -> bool {
        self.lb_ifaces.len() == 1
    }

    /// The lb's client-side interface name (`eth0`).
    pub fn lb_client_interface(&self) -> &'static str {
        self.lb_ifaces[0]
    }

    /// The lb's backend-side interface name (`eth1`; one-arm: `eth0`).
    pub fn lb_backend_interface(&self) -> &'static str {
        self.lb_ifaces[self.lb_ifaces.len() - 1]
    }

    /// One-arm DSR: each backend reaches the client's subnets (198.18.0.0/24,
    /// 2001:db8::/64) on its own link, so it answers clients directly rather
    /// than through its default route (the lb). Only a one-arm topology has
    /// the client on the backends' segment.
    pub fn backends_answer_clients_directly(&self) -> Result<()> {
        if !self.is_one_arm() {
            bail!("only a one-arm topology has the client on the backends' segment");
        }
        for b in &self.backends {
            b.ns.ip(&["route", "add", "198.18.0.0/24", "dev", "eth0"])?;
            b.ns.ip(&["-6", "route", "add", "2001:db8::/64", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// The switch namespace (bridge `br0`, ports `p-lb`, `p-webN`).
    pub fn switch_ns(&self) -> &Netns {
        &self.switch
    }

    /// All backends, web1 first.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backend number `n`, 1-based (`backend(1)` is web1). Panics if absent.
    #[track_caller]
    pub fn backend(&self, n: usize) -> &Backend {
        assert!((1..=self.backends.len()).contains(&n), "no backend web{n}: topology has {}", self.backends.len());
        &self.backends[n - 1]
    }

    /// The VIPs the client routes via the lb.
    pub fn vips(&self) -> &[IpAddr] {
        &self.vips
    }

    /// The IPv4 VIPs (first is the default [`VIP_V4`] unless changed).
    pub fn vip_v4(&self) -> Option<Ipv4Addr> {
        self.vips.iter().find_map(|v| match v {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }

    /// The first IPv6 VIP.
    pub fn vip_v6(&self) -> Option<Ipv6Addr> {
        self.vips.iter().find_map(|v| match v {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
    }

    /// Adds a host route for `vip` via the lb in the client namespace (once
    /// per VIP; already done by [`TopologyBuilder::build`] for the builder's VIPs).
    pub fn add_client_vip_route(&mut self, vip: IpAddr) -> Result<()> {
        if !crate::is_test_address(vip) {
            bail!("VIP {vip} is outside 198.18.0.0/15 and 2001:db8::/32");
        }
        if self.vips.contains(&vip) {
            return Ok(());
        }
        match vip {
            IpAddr::V4(v4) => self.client.ip(&["route", "add", &format!("{v4}/32"), "via", &LB_CLIENT_V4.to_string()]),
            IpAddr::V6(v6) => {
                self.client.ip(&["-6", "route", "add", &format!("{v6}/128"), "via", &LB_CLIENT_V6.to_string()])
            }
        }?;
        self.vips.push(vip);
        Ok(())
    }

    /// DSR setup: puts every VIP of the topology on every backend's `lo`.
    pub fn add_vips_to_backends(&self) -> Result<()> {
        for b in &self.backends {
            for vip in &self.vips {
                b.add_vip(*vip)?;
            }
        }
        Ok(())
    }

    /// Starts nginx on every backend (web1 answers `"web1\n"`, ...), in order.
    pub fn start_nginx_all(&self) -> Result<Vec<Nginx>> {
        self.backends.iter().map(Backend::start_nginx).collect()
    }
}
