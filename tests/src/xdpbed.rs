//! A namespace for running the XDP program with BPF_PROG_TEST_RUN as on a
//! real lb host: `c0` faces the client (198.18.0.2), `b0` the backends
//! (198.18.1.1), with static neighbours for the client (198.18.0.1,
//! 2001:db8::1) and web1/web2 (198.18.1.11/.12, 2001:db8:1::11/12), and
//! forwarding on, so the program's FIB lookups succeed.

use aya::programs::{TestRun, TestRunOptions};
use std::net::SocketAddr;

use xlb::{
    balancer::Balancer,
    config::{
        BackendConfig, CheckKind, ClosedPorts, Config, DaemonConfig, EncapSource, Forwarding, HealthConfig, Protocol,
        Role, Scheduler, ServiceConfig, XdpModeConfig,
    },
};

use crate::{packet::mac_string, run_suffix, Netns};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const WEB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x11];
pub const WEB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x12];

/// The fixture namespace: `c0` faces the client, `b0` the backends.
pub struct Bed {
    pub ns: Netns,
    pub c0_mac: [u8; 6],
    pub b0_mac: [u8; 6],
    pub c0: u32,
    pub b0: u32,
}

pub fn bed() -> Bed {
    let ns = Netns::new(format!("xlb-{}-fx", run_suffix())).expect("create namespace");
    let mut cmds: Vec<Vec<String>> = vec![];
    let mut add = |s: &str| cmds.push(s.split_whitespace().map(String::from).collect());
    add("link add c0 type veth peer name c1");
    add("link add b0 type veth peer name b1");
    for d in ["c0", "c1", "b0", "b1"] {
        add(&format!("link set {d} up"));
    }
    add("addr add 198.18.0.2/24 dev c0");
    add("addr add 2001:db8::2/64 dev c0 nodad");
    add("addr add 198.18.1.1/24 dev b0");
    add("addr add 2001:db8:1::1/64 dev b0 nodad");
    add(&format!("neigh add 198.18.0.1 lladdr {} dev c0 nud permanent", mac_string(CLIENT_MAC)));
    add(&format!("neigh add 2001:db8::1 lladdr {} dev c0 nud permanent", mac_string(CLIENT_MAC)));
    for (a, m) in [
        ("198.18.1.11", WEB1_MAC),
        ("198.18.1.12", WEB2_MAC),
        ("2001:db8:1::11", WEB1_MAC),
        ("2001:db8:1::12", WEB2_MAC),
    ] {
        add(&format!("neigh add {a} lladdr {} dev b0 nud permanent", mac_string(m)));
    }
    ns.sysctl(&[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")]).unwrap();
    for c in &cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        ns.ip(&args).unwrap_or_else(|e| panic!("ip {c:?}: {e:#}"));
    }
    let mac = |d: &str| ns.mac(d).unwrap_or_else(|e| panic!("{e:#}"));
    let idx = |d: &str| ns.ifindex(d).unwrap_or_else(|e| panic!("{e:#}"));
    Bed { c0_mac: mac("c0"), b0_mac: mac("b0"), c0: idx("c0"), b0: idx("b0"), ns }
}

/// `struct xdp_md` for ctx_in: data = 0, data_end = len, ingress_ifindex.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut m = [0u8; 24];
    m[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    m[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

pub fn run(bal: &Balancer, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    run_program(bal.dp.program(), input, ifindex)
}

/// One BPF_PROG_TEST_RUN of `prog` on `input` arriving on `ifindex`: its
/// return value and the frame it leaves.
pub fn run_program(prog: &aya::programs::Xdp, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let ctx = xdp_md(input.len(), ifindex);
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(name: &str, vip: &str, proto: Protocol, fwd: Forwarding, backends: &[&str]) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        vip: sa(vip),
        protocol: proto,
        forwarding: fwd,
        scheduler: Scheduler::Maglev,
        table_size: 251,
        preempt: true,
        answer_ping: true,
        allow: Vec::new(),
        deny: Vec::new(),
        new_flows_per_source: None,
        health: HealthConfig { check: CheckKind::None, ..HealthConfig::default() },
        backends: backends.iter().map(|b| BackendConfig { address: sa(b), weight: 1, role: Role::Primary }).collect(),
    }
}

/// The services the fixtures and the per-packet benchmarks use (table size 251).
pub fn fixture_config() -> Config {
    use Forwarding::*;
    use Protocol::*;
    Config {
        daemon: DaemonConfig {
            interfaces: vec!["c0".into(), "b0".into()],
            xdp_mode: XdpModeConfig::Auto,
            admin_socket: "/nonexistent".into(),
            metrics: None,
            conntrack_entries: 4096,
            conntrack_guard_rate: 0,
            pin_path: "/nonexistent".into(),
            announce: None,
            conntrack_timeouts: Default::default(),
            deny: Vec::new(),
            closed_ports: ClosedPorts::Pass,
            gue_port: lb_common::DEFAULT_GUE_PORT,
            encap_source_v4: Some(EncapSource { addr: "198.18.5.0".parse().unwrap(), prefix_len: 24 }),
            encap_source_v6: Some(EncapSource { addr: "2001:db8:5::".parse().unwrap(), prefix_len: 64 }),
        },
        services: vec![
            service("web4", "198.18.0.10:80", Tcp, Nat, &["198.18.1.11:8080"]),
            service("dns4", "198.18.0.10:53", Udp, Nat, &["198.18.1.11:5353"]),
            service("web6", "[2001:db8::10]:80", Tcp, Nat, &["[2001:db8:1::11]:8080"]),
            service("dns6", "[2001:db8::10]:53", Udp, Nat, &["[2001:db8:1::11]:53"]),
            service("dsr4", "198.18.0.20:80", Tcp, Dsr, &["198.18.1.12:80"]),
            service("dsr6", "[2001:db8::20]:80", Tcp, Dsr, &["[2001:db8:1::12]:80"]),
            service("pair", "198.18.0.30:80", Tcp, Nat, &["198.18.1.11:80", "198.18.1.12:80"]),
            service("ipip4", "198.18.0.40:80", Tcp, Ipip, &["198.18.1.11:80"]),
            service("gue4", "198.18.0.41:80", Tcp, Gue, &["198.18.1.12:80"]),
            service("ipip6", "[2001:db8::40]:80", Tcp, Ipip, &["[2001:db8:1::11]:80"]),
            service("gue6", "[2001:db8::41]:80", Tcp, Gue, &["[2001:db8:1::12]:80"]),
        ],
    }
}
