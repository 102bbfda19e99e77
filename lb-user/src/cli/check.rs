//! `xlb check -c FILE`: validate a configuration and print the plan.

use std::{fmt::Write as _, path::Path};

use crate::{
    config::{CheckKind, Config, Role, ServiceConfig},
    plan,
};

/// Loads and validates `config`; prints the plan, or fails with every problem.
pub fn run(config: &Path) -> anyhow::Result<()> {
    let cfg = crate::config::load(config)?;
    print!("{}", plan(&cfg, &config.display().to_string()));
    Ok(())
}

/// The human-readable plan of a valid configuration.
pub fn plan(cfg: &Config, file: &str) -> String {
    let mut out = String::new();
    let d = &cfg.daemon;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "configuration {file}");
    let _ = writeln!(out, "daemon:");
    let _ = writeln!(out, "  interfaces:        {} (client side: {})", d.interfaces.join(", "), d.interfaces[0]);
    let _ = writeln!(out, "  xdp_mode:          {}", d.xdp_mode.as_str());
    let _ = writeln!(out, "  admin_socket:      {}", d.admin_socket.display());
    let metrics = d.metrics.map_or_else(|| "off".to_owned(), |m| format!("http://{m}/metrics"));
    let _ = writeln!(out, "  metrics:           {metrics}");
    let _ = writeln!(out, "  conntrack_entries: {}", d.conntrack_entries);
    let _ = writeln!(out, "  conntrack_guard_rate: {}", d.conntrack_guard_rate);
    let _ = writeln!(out, "  closed_ports:      {}", d.closed_ports.as_str());
    if !d.deny.is_empty() {
        let list: Vec<String> = d.deny.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  deny (every VIP):  {}", list.join(", "));
    }

    for service in &cfg.services {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "service {}: vip {} {}, forwarding {}, scheduler {}, table_size {}, preempt {}",
            service.name,
            service.vip,
            service.protocol.as_str(),
            service.forwarding.as_str(),
            service.scheduler.as_str(),
            service.table_size,
            if service.preempt { "yes" } else { "no" },
        );
        let _ = writeln!(out, "  health: {}", health_summary(service));
        let show = |l: &[crate::config::Cidr]| l.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if !service.allow.is_empty() {
            let _ = writeln!(out, "  allow: {} (everyone else is denied)", show(&service.allow));
        }
        if !service.deny.is_empty() {
            let _ = writeln!(out, "  deny: {}", show(&service.deny));
        }
        if let Some(r) = service.new_flows_per_source {
            let _ = writeln!(out, "  new flows per source: {}/s, burst {}", r.rate, r.burst);
        }
        let shares = plan::slot_shares(service);
        let serving = plan::serving_when_all_up(service);
        for (i, (backend, share)) in service.backends.iter().zip(&shares).enumerate() {
            let note = if serving.contains(&i) {
                ""
            } else if backend.weight == 0 {
                "  (weight 0: no new flows)"
            } else if backend.role == Role::Backup {
                "  (standby: takes new flows only while no primary is up)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  backend {:<24} {:<7} weight {:<5} slots {:>6.2}%{note}",
                backend.address.to_string(),
                backend.role.as_str(),
                backend.weight,
                share,
            );
        }
    }
    let _ = writeln!(out);
    let n = cfg.services.len();
    let b = cfg.backend_count();
    let _ = writeln!(
        out,
        "configuration OK: {n} service{}, {b} backend{}",
        if n == 1 { "" } else { "s" },
        if b == 1 { "" } else { "s" }
    );
    out
}

fn health_summary(service: &ServiceConfig) -> String {
    let h = &service.health;
    let what = match h.check {
        CheckKind::None => return "none (backends are always up)".to_owned(),
        CheckKind::Tcp => "tcp connect".to_owned(),
        CheckKind::Http | CheckKind::Https => {
            let host = h.host.as_ref().map_or_else(String::new, |host| format!(" Host: {host}"));
            format!("{} GET {}{host} expecting {}{}", h.check.as_str(), h.path, h.expect_status, tls_summary(h))
        }
        CheckKind::Tls => format!("tls handshake{}", tls_summary(h)),
    };
    format!(
        "{what}, every {} ms, timeout {} ms, up after {} passed, down after {} failed",
        h.interval_ms, h.timeout_ms, h.rise, h.fall
    )
}

/// For the TLS checks: the name checked and the CAs trusted.
fn tls_summary(h: &crate::config::HealthConfig) -> String {
    if !h.check.uses_tls() {
        return String::new();
    }
    let name = h.host.as_deref().unwrap_or("the backend's IP");
    let ca = h.ca_file.as_ref().map_or_else(|| "the system's CAs".to_owned(), |p| p.display().to_string());
    format!(", certificate for {name} signed by {ca}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lists_backends_with_shares() {
        let text = r#"
[daemon]
interfaces = ["eth0"]
metrics = ""
[[service]]
name = "www"
vip = "198.18.0.10:80"
[[service.backend]]
address = "198.18.1.11:80"
weight = 1
[[service.backend]]
address = "198.18.1.12:80"
weight = 3
[[service.backend]]
address = "198.18.1.13:80"
role = "backup"
"#;
        let cfg = crate::config::parse(text, "t.toml").expect("valid");
        let shares = plan::slot_shares(&cfg.services[0]);
        assert!((shares[0] - 25.0).abs() < 0.5 && (shares[1] - 75.0).abs() < 0.5 && shares[2] == 0.0, "{shares:?}");
        let plan = plan(&cfg, "t.toml");
        for want in [
            "198.18.1.11:80",
            "198.18.1.12:80",
            "198.18.1.13:80",
            "standby",
            "metrics:           off",
            "configuration OK: 1 service, 3 backends",
        ] {
            assert!(plan.contains(want), "expected the plan to mention {want:?}:\n{plan}");
        }
    }

    #[test]
    fn tls_checks_say_what_they_verify() {
        let text = "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"www\"\nvip = \"198.18.0.10:443\"\n\
                    [service.health]\ncheck = \"tls\"\n[[service.backend]]\naddress = \"198.18.1.11:443\"\n";
        let mut cfg = crate::config::parse(text, "t.toml").expect("valid");
        assert_eq!(
            health_summary(&cfg.services[0]).split(", every").next(),
            Some("tls handshake, certificate for the backend's IP signed by the system's CAs")
        );
        let h = &mut cfg.services[0].health;
        h.check = CheckKind::Https;
        h.host = Some("www.foobar.com".into());
        h.ca_file = Some("/etc/xlb/ca.pem".into());
        assert_eq!(
            health_summary(&cfg.services[0]).split(", every").next(),
            Some("https GET / Host: www.foobar.com expecting 200, certificate for www.foobar.com signed by /etc/xlb/ca.pem")
        );
    }
}
