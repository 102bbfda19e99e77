//! `xlb explain -c FILE CLIENT_IP:PORT VIP:PORT [tcp|udp]`: which backend a new
//! flow would get, computed with the kernel's flow hash over the Maglev table
//! the daemon builds when every backend is up.

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Context as _};
use lb_common::{FlowKey, NO_BACKEND};

use crate::{
    config::{Config, Protocol, Scheduler, ServiceConfig},
    plan,
};

/// How a new flow is placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Index into `Config::services`.
    pub service: usize,
    /// The key the XDP program builds for the flow.
    pub key: FlowKey,
    /// `lb_common::flow_hash(&key)`.
    pub hash: u32,
    /// `hash % table_size`.
    pub slot: u32,
    /// Index into the service's `backends`.
    pub backend: usize,
}

/// The flow key the XDP program builds for a packet from `client` to `vip`.
pub fn flow_key(client: SocketAddr, vip: SocketAddr, protocol: Protocol) -> anyhow::Result<FlowKey> {
    let (src, dst, family) = match (client, vip) {
        (SocketAddr::V4(c), SocketAddr::V4(v)) => {
            (lb_common::addr_v4(c.ip().octets()), lb_common::addr_v4(v.ip().octets()), lb_common::FAMILY_V4)
        }
        (SocketAddr::V6(c), SocketAddr::V6(v)) => {
            (lb_common::addr_v6(c.ip().octets()), lb_common::addr_v6(v.ip().octets()), lb_common::FAMILY_V6)
        }
        _ => bail!("client {client} and VIP {vip} are of different address families; both must be IPv4 or both IPv6"),
    };
    Ok(FlowKey {
        src,
        dst,
        sport: client.port().to_be(),
        dport: vip.port().to_be(),
        proto: protocol.number(),
        family,
        _pad: [0; 2],
    })
}

/// Explains where a new flow from `client` to `vip` goes when every backend is up.
pub fn explain(cfg: &Config, client: SocketAddr, vip: SocketAddr, protocol: Protocol) -> anyhow::Result<Explanation> {
    let key = flow_key(client, vip, protocol)?;
    let Some(index) = cfg.services.iter().position(|s| s.vip == vip && s.protocol == protocol) else {
        let configured: Vec<String> =
            cfg.services.iter().map(|s| format!("{} {} ({})", s.vip, s.protocol.as_str(), s.name)).collect();
        bail!(
            "no service has VIP {vip} {}; configured VIPs: {}",
            protocol.as_str(),
            if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
        );
    };
    let service = &cfg.services[index];
    let table = plan::service_table(service, &plan::serving_when_all_up(service));
    let hash = lb_common::flow_hash(&key);
    let slot = hash % service.table_size;
    let backend = table[slot as usize];
    if backend == NO_BACKEND {
        bail!("service {} has no backend that takes new flows (every weight is 0)", service.name);
    }
    Ok(Explanation { service: index, key, hash, slot, backend: backend as usize })
}

/// The backend a new flow from `client` to `vip` gets when every backend is up.
pub fn pick(cfg: &Config, client: SocketAddr, vip: SocketAddr, proto: Protocol) -> anyhow::Result<SocketAddr> {
    let e = explain(cfg, client, vip, proto)?;
    Ok(cfg.services[e.service].backends[e.backend].address)
}

/// What decides the flow's backend, the scheduler's way: Maglev names the backend
/// (the flow hash and its slot); round robin and least connections depend on live
/// state, so they name the candidates (and the Maglev backend an untracked packet gets).
pub fn describe(service: &ServiceConfig, e: &Explanation) -> String {
    let backend = &service.backends[e.backend];
    let maglev = format!(
        "hash: {:#010x}\nslot: {} of {}\nbackend: {}\nrole: {}, weight {}\n",
        e.hash,
        e.slot,
        service.table_size,
        backend.address,
        backend.role.as_str(),
        backend.weight
    );
    let candidates = || {
        plan::serving_when_all_up(service)
            .iter()
            .map(|&i| format!("{} (weight {})", service.backends[i].address, service.backends[i].weight))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let decides = match service.scheduler {
        Scheduler::Maglev => {
            return format!(
                "decided by: maglev (the flow hash; every xlb instance agrees)\n{maglev}\
                 (assumes every backend is up and no conntrack entry exists for the flow yet)\n"
            )
        }
        Scheduler::RoundRobin => "round_robin: the next backend in this CPU's walk of the smooth weighted sequence",
        Scheduler::LeastConn => {
            "least_conn: the candidate with the fewest active connections per weight (ties shared out in turn)"
        }
    };
    format!(
        "decided by: {decides}; it depends on live state, so the backend cannot be named here\n\
         candidates: {}\n\
         (assumes every backend is up; a flow keeps its backend once tracked)\n\
         untracked (a TCP packet without a conntrack entry that is not a SYN): maglev\n{maglev}",
        candidates()
    )
}

/// Parses the `tcp|udp` argument.
pub fn parse_protocol(text: &str) -> anyhow::Result<Protocol> {
    Protocol::CHOICES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|&(_, p)| p)
        .with_context(|| format!("unknown protocol \"{text}\"; expected tcp or udp"))
}

fn parse_addr(text: &str, what: &str, example: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("{what} \"{text}\" is not IP:port; expected e.g. {example} or [2001:db8::1]:40000"))
}

pub fn run(config: &Path, client: &str, vip: &str, protocol: &str) -> anyhow::Result<()> {
    let client = parse_addr(client, "client", "198.18.0.1:40000")?;
    let vip = parse_addr(vip, "VIP", "198.18.0.10:80")?;
    let protocol = parse_protocol(protocol)?;
    let cfg = crate::config::load(config)?;
    let e = explain(&cfg, client, vip, protocol)?;
    let service = &cfg.services[e.service];
    println!("flow: {client} -> {vip} {}", protocol.as_str());
    println!(
        "service: {} (vip {} {}, forwarding {}, scheduler {})",
        service.name,
        service.vip,
        service.protocol.as_str(),
        service.forwarding.as_str(),
        service.scheduler.as_str()
    );
    print!("{}", describe(service, &e));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const TEXT: &str = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "www"
vip = "198.18.0.10:80"
[[service.backend]]
address = "198.18.1.11:80"
[[service.backend]]
address = "198.18.1.12:80"
[[service]]
name = "dns6"
vip = "[2001:db8::10]:53"
protocol = "udp"
[[service.backend]]
address = "[2001:db8:1::11]:53"
"#;

    #[test]
    fn key_is_built_like_the_kernel() {
        let key =
            flow_key("198.18.0.1:40000".parse().unwrap(), "198.18.0.10:80".parse().unwrap(), Protocol::Tcp).unwrap();
        assert_eq!(key.src, lb_common::addr_v4([198, 18, 0, 1]));
        assert_eq!(key.dst, lb_common::addr_v4([198, 18, 0, 10]));
        assert_eq!((key.sport, key.dport), (40000u16.to_be(), 80u16.to_be()));
        assert_eq!((key.proto, key.family), (lb_common::PROTO_TCP, lb_common::FAMILY_V4));
        let mixed = flow_key("[2001:db8::1]:40000".parse().unwrap(), "198.18.0.10:80".parse().unwrap(), Protocol::Tcp);
        assert!(mixed.is_err(), "mixed families must be refused");
    }

    #[test]
    fn picks_are_stable_and_spread() {
        let cfg = config::parse(TEXT, "t.toml").expect("valid");
        let vip: SocketAddr = "198.18.0.10:80".parse().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for port in 40000..40200 {
            let client = SocketAddr::from(([198, 18, 0, 1], port));
            let a = pick(&cfg, client, vip, Protocol::Tcp).unwrap();
            assert_eq!(a, pick(&cfg, client, vip, Protocol::Tcp).unwrap(), "same flow, different answer");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 2, "expected both backends over 200 client ports, got {seen:?}");
        let v6 = pick(&cfg, "[2001:db8::1]:5353".parse().unwrap(), "[2001:db8::10]:53".parse().unwrap(), Protocol::Udp)
            .unwrap();
        assert_eq!(v6, "[2001:db8:1::11]:53".parse().unwrap());
    }

    #[test]
    fn unknown_vip_lists_configured_ones() {
        let cfg = config::parse(TEXT, "t.toml").expect("valid");
        let client = "198.18.0.1:40000".parse().unwrap();
        let err = pick(&cfg, client, "198.18.0.10:80".parse().unwrap(), Protocol::Udp).unwrap_err().to_string();
        assert!(
            err.contains("no service has VIP 198.18.0.10:80 udp") && err.contains("198.18.0.10:80 tcp (www)"),
            "{err}"
        );
    }

    #[test]
    fn describe_names_the_scheduler_and_its_candidates() {
        let mut cfg = config::parse(TEXT, "t.toml").expect("valid");
        let (client, vip) = ("198.18.0.1:40000".parse().unwrap(), "198.18.0.10:80".parse().unwrap());
        let e = explain(&cfg, client, vip, Protocol::Tcp).unwrap();
        let maglev = describe(&cfg.services[0], &e);
        assert!(maglev.starts_with("decided by: maglev") && maglev.contains("backend: "), "{maglev}");
        cfg.services[0].scheduler = Scheduler::LeastConn;
        let lc = describe(&cfg.services[0], &e);
        assert!(lc.starts_with("decided by: least_conn") && lc.contains("depends on live state"), "{lc}");
        assert!(lc.contains("candidates: 198.18.1.11:80 (weight 1), 198.18.1.12:80 (weight 1)"), "{lc}");
        assert!(lc.contains("untracked (a TCP packet without a conntrack entry that is not a SYN): maglev"), "{lc}");
    }
}
