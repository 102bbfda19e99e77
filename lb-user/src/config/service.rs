//! `[[service]]`: each service on its own, then the checks across services.

use std::{collections::HashMap, net::SocketAddr};

use super::{
    backend, checks,
    diag::{FieldPath, Span},
    firewall, health,
    raw::{Item, RawService, Spanned},
    validate::{Located, Reported, Validator},
    Cidr, Forwarding, Protocol, Scheduler, ServiceConfig,
};

/// The `[[service]]` tables: each one, then names and VIPs across them.
pub fn validate_all(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Option<Item<Vec<Item<RawService>>>>,
    daemon_deny: &[Located<Cidr>],
) -> Vec<ServiceConfig> {
    let (items, span) = match v.tables(path, raw) {
        Ok(Some(list)) => {
            let span = list.span();
            (list.into_inner(), Some(span))
        }
        Ok(None) => (Vec::new(), None),
        Err(Reported) => return Vec::new(),
    };
    if items.is_empty() {
        v.report(path, span.clone(), "no services: add at least one [[service]] with a vip and a [[service.backend]]");
    }
    if items.len() > lb_common::MAX_SERVICES as usize {
        v.report(
            path,
            span.clone(),
            format!("{} services; at most {} are supported", items.len(), lb_common::MAX_SERVICES),
        );
    }
    let total_backends: usize =
        items.iter().filter_map(|s| s.get_ref().ok()?.backend.as_ref()?.get_ref().ok().map(Vec::len)).sum();
    if total_backends > lb_common::MAX_BACKENDS as usize {
        v.report(
            path,
            span,
            format!("{total_backends} backends over all services; at most {} are supported", lb_common::MAX_BACKENDS),
        );
    }

    let mut services = Vec::with_capacity(items.len());
    // Where each name and each VIP (address, port, protocol) was first seen.
    let mut names: HashMap<String, FieldPath> = HashMap::new();
    let mut vips: HashMap<(SocketAddr, Protocol), FieldPath> = HashMap::new();
    for (i, item) in items.into_iter().enumerate() {
        let name = item.get_ref().ok().and_then(|s| s.name.as_ref()?.get_ref().ok().cloned());
        let path = path.index(i, name.as_deref());
        let Some(raw) = v.table_element(&path, item) else { continue };
        let Some(service) = validate(v, &path, raw, daemon_deny) else { continue };
        if let Some(name) = &service.name {
            match names.get(&name.value) {
                Some(first) => {
                    let message = format!("duplicate service name \"{}\" (also {first})", name.value);
                    v.report(&name.path, Some(name.span.clone()), message);
                }
                None => {
                    names.insert(name.value.clone(), path.clone());
                }
            }
        }
        let vip = &service.vip;
        let protocol = service.config.protocol;
        match vips.get(&(vip.value, protocol)) {
            Some(first) => {
                let message = format!(
                    "duplicate VIP {} {}: {first} already serves it; each (VIP, port, protocol) belongs to one service",
                    vip.value,
                    protocol.as_str()
                );
                v.report(&vip.path, Some(vip.span.clone()), message);
            }
            None => {
                vips.insert((vip.value, protocol), path.clone());
            }
        }
        services.push(service);
    }

    // A backend that is itself a VIP would send traffic round in a loop.
    for service in &services {
        for backend in &service.backends {
            if let Some(owner) = vips.get(&(backend.value, service.config.protocol)) {
                let message = format!(
                    "backend {} is the VIP of {owner}; a backend must be a real server, not a VIP",
                    backend.value
                );
                v.report(&backend.path, Some(backend.span.clone()), message);
            }
        }
    }
    services.into_iter().map(|s| s.config).collect()
}

/// A validated service with where its identifying fields came from.
struct Checked {
    config: ServiceConfig,
    name: Option<Located<String>>,
    vip: Located<SocketAddr>,
    backends: Vec<Located<SocketAddr>>,
}

/// One service; `None` only when it has no usable VIP to build from.
fn validate(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Spanned<RawService>,
    daemon_deny: &[Located<Cidr>],
) -> Option<Checked> {
    let span = raw.span();
    let raw = raw.into_inner();
    v.unknown_keys(path, &raw.unknown, RawService::KEYS);

    let name_path = path.key("name");
    let name = match v.read(&name_path, raw.name, "the service's name, e.g. name = \"www\"") {
        Ok(Some(name)) => {
            if let Err(why) = checks::service_name(name.get_ref()) {
                v.report(&name_path, Some(name.span()), why);
            }
            Some(Located::new(name.get_ref().clone(), name_path, name.span()))
        }
        _ => None,
    };

    let vip_path = path.key("vip");
    let vip = match v.read(&vip_path, raw.vip, "the VIP as IP:port, e.g. vip = \"198.18.0.10:80\"") {
        Ok(None) => {
            v.report(
                &vip_path,
                Some(span.clone()),
                "missing; expected the virtual address clients connect to, e.g. vip = \"198.18.0.10:80\"",
            );
            None
        }
        Ok(Some(text)) => match checks::endpoint(text.get_ref(), "198.18.0.10:80") {
            Ok(addr) => Some(Located::new(addr, vip_path, text.span())),
            Err(why) => {
                v.report(&vip_path, Some(text.span()), why);
                None
            }
        },
        Err(Reported) => None,
    };

    let protocol = v.choice(&path.key("protocol"), raw.protocol, &Protocol::CHOICES, Protocol::Tcp);
    let forwarding = v.choice(&path.key("forwarding"), raw.forwarding, &Forwarding::CHOICES, Forwarding::Nat);
    let scheduler = v.choice(&path.key("scheduler"), raw.scheduler, &Scheduler::CHOICES, Scheduler::Maglev);
    let preempt = v.flag(
        &path.key("preempt"),
        raw.preempt,
        true,
        "true or false (false: a backup keeps its flows after a primary comes back)",
    );
    let answer_ping = v.flag(
        &path.key("answer_ping"),
        raw.answer_ping,
        true,
        "true or false (false: echo requests to the VIP are left to the kernel, which does not answer them)",
    );
    let vip_ip = vip.as_ref().map(|vip| vip.value.ip());
    let allow = firewall::cidr_list(v, &path.key("allow"), raw.allow, vip_ip);
    let deny = firewall::cidr_list(v, &path.key("deny"), raw.deny, vip_ip);
    let family = |c: &&Located<Cidr>| vip_ip.is_none_or(|ip| ip.is_ipv4() == c.value.addr.is_ipv4());
    let daemon_deny: Vec<Located<Cidr>> =
        daemon_deny.iter().filter(family).map(|d| Located::new(d.value, d.path.clone(), d.span.clone())).collect();
    firewall::dead_entries(v, &allow, &deny, &daemon_deny);
    let new_flows_per_source = firewall::rate_limit(v, &path.key("new_flows_per_source"), raw.new_flows_per_source);
    let health = health::validate(v, &path.key("health"), raw.health);

    let backends_path = path.key("backend");
    let (items, backends_span) = match v.tables(&backends_path, raw.backend) {
        Ok(Some(list)) => {
            let span = list.span();
            (list.into_inner(), Some(span))
        }
        Ok(None) => (Vec::new(), Some(span.clone())),
        Err(Reported) => (Vec::new(), None),
    };
    if items.is_empty() && backends_span.is_some() {
        v.report(
            &backends_path,
            backends_span.clone(),
            "no backends; expected at least one [[service.backend]] with an address, e.g. address = \"198.18.1.11:80\"",
        );
    }
    let mut backends: Vec<Located<SocketAddr>> = Vec::new();
    let mut configs = Vec::new();
    for (j, item) in items.into_iter().enumerate() {
        let path = backends_path.index(j, None);
        let Some(raw) = v.table_element(&path, item) else { continue };
        let vip = vip.as_ref().map(|vip| vip.value);
        let Some((config, address)) = backend::validate(v, &path, raw, vip, forwarding) else { continue };
        if let Some(first) = backends.iter().find(|b| b.value == config.address) {
            let message = format!(
                "duplicate backend {} (also {}); list each backend once and use weight to give it more flows",
                config.address, first.path
            );
            v.report(&address.path, Some(address.span.clone()), message);
        }
        backends.push(address);
        configs.push(config);
    }
    if !configs.is_empty() && configs.iter().all(|b| b.weight == 0) {
        v.report(
            &backends_path,
            backends_span,
            "every backend has weight 0, so the service could never take a flow; give at least one backend a weight of 1 or more",
        );
    }

    let table_size = table_size(v, &path.key("table_size"), raw.table_size, configs.len());

    let vip = vip?;
    Some(Checked {
        config: ServiceConfig {
            name: name.as_ref().map_or_else(|| format!("{}/{}", vip.value, protocol.as_str()), |n| n.value.clone()),
            vip: vip.value,
            protocol,
            forwarding,
            scheduler,
            table_size,
            preempt,
            answer_ping,
            allow: allow.into_iter().map(|a| a.value).collect(),
            deny: deny.into_iter().map(|d| d.value).collect(),
            new_flows_per_source,
            health,
            backends: configs,
        },
        name,
        vip,
        backends,
    })
}

/// `table_size`: a prime in range, larger than the number of backends.
fn table_size(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<i128>>, backends: usize) -> u32 {
    let default = lb_common::DEFAULT_TABLE_SIZE;
    let expected = format!("a prime table size, e.g. table_size = {default}");
    let Ok(Some(value)) = v.read(path, raw, &expected) else { return default };
    let span: Span = value.span();
    match checks::table_size(*value.get_ref()) {
        Err(why) => {
            v.report(path, Some(span), why);
            default
        }
        Ok(size) if size as usize <= backends => {
            v.report(
                path,
                Some(span),
                format!(
                    "{size} is not larger than the number of backends ({backends}); expected a prime well above it (ideally 100 times the backends)"
                ),
            );
            size
        }
        Ok(size) => size,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{
        parse,
        testing::{assert_one, edit, problems, BASE},
        Forwarding, Protocol, DEFAULT_METRICS,
    };

    const VIP: &str = "vip = \"198.18.0.10:80\"";

    /// BASE with `lines` after the service's vip.
    fn with(lines: &str) -> String {
        edit(VIP, &format!("{VIP}\n{lines}"))
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = &parse(BASE, "base.toml").expect("BASE is valid").services[0];
        assert_eq!(
            (s.protocol, s.forwarding, s.table_size, s.preempt, s.answer_ping),
            (Protocol::Tcp, Forwarding::Nat, lb_common::DEFAULT_TABLE_SIZE, true, true)
        );
    }

    #[test]
    fn ipv6_service_without_a_name_is_named_by_its_vip() {
        let text = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
vip = "[2001:db8::10]:443"
protocol = "udp"
forwarding = "dsr"
preempt = false
answer_ping = false
[[service.backend]]
address = "[2001:db8:1::12]:443"
"#;
        let config = parse(text, "v6.toml").expect("valid");
        let s = &config.services[0];
        assert_eq!(s.name, "[2001:db8::10]:443/udp");
        assert_eq!(
            (s.protocol, s.forwarding, s.preempt, s.answer_ping),
            (Protocol::Udp, Forwarding::Dsr, false, false)
        );
        assert_eq!(config.daemon.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
    }

    #[test]
    fn vip() {
        let cases = [
            ("vip = \"198.18.0.10\"", "has no port; expected IP:port, e.g. \"198.18.0.10:80\""),
            ("vip = \"2001:db8::10:80\"", "takes brackets"),
            ("vip = \"2001:db8::10::80\"", "is not an IP:port address"),
            ("vip = \"198.18.0.10:0\"", "port 0"),
            ("vip = \"198.18.0.10:http\"", "\"http\" is not a port"),
            ("vip = \"www.example.org:80\"", "is not an IP:port address (host names are not resolved)"),
        ];
        for (line, message) in cases {
            assert_one(&edit(VIP, line), "service[0] (www).vip (line 7)", message);
        }
        assert_one(&edit(VIP, ""), "service[0] (www).vip (line 5)", "missing; expected the virtual address");
        assert_one(
            &edit(VIP, "vip = 80"),
            "service[0] (www).vip (line 7, column 7)",
            "the integer 80 is not a string; expected the VIP as IP:port, e.g. vip = \"198.18.0.10:80\"",
        );
    }

    #[test]
    fn settings() {
        let cases = [
            ("protocol = \"sctp\"", "service[0] (www).protocol (line 8)", "unknown value \"sctp\"; expected one of: tcp, udp"),
            ("protocol = \"TCP\"", "service[0] (www).protocol", "(did you mean \"tcp\"?)"),
            ("protocol = 6", "service[0] (www).protocol (line 8, column 12)", "the integer 6 is not a string; expected one of: tcp, udp"),
            ("forwarding = \"tunnel\"", "service[0] (www).forwarding (line 8)", "unknown value \"tunnel\"; expected one of: nat, dsr"),
            ("scheduler = \"wrr\"", "service[0] (www).scheduler (line 8)", "unknown value \"wrr\"; expected one of: maglev, round_robin, least_conn"),
            ("table_size = 65536", "service[0] (www).table_size (line 8)", "65536 is not prime; Maglev needs a prime table size (nearest: 65521 or 65537"),
            ("table_size = 5", "service[0] (www).table_size", "5 is out of range; expected a prime from 7"),
            ("table_size = 2000003", "service[0] (www).table_size", "out of range"),
            ("table_size = \"big\"", "service[0] (www).table_size (line 8, column 14)", "the string \"big\" is not an integer; expected a prime table size"),
            ("table_size = 65537.0", "service[0] (www).table_size (line 8, column 14)", "the float 65537.0 is not an integer"),
            ("preempt = \"yes\"", "service[0] (www).preempt (line 8, column 11)", "the string \"yes\" is not a boolean; expected true or false"),
            ("preempt = \"false\"", "service[0] (www).preempt", "(write it without quotes: preempt = false)"),
            ("answer_ping = \"no\"", "service[0] (www).answer_ping (line 8, column 15)", "the string \"no\" is not a boolean; expected true or false"),
            ("answer_ping = 0", "service[0] (www).answer_ping", "the integer 0 is not a boolean"),
            ("port = 80", "service[0] (www).port (line 8, column 1)", "unknown key `port`; expected one of: name, vip, protocol, forwarding, scheduler, table_size, preempt, answer_ping, allow, deny, new_flows_per_source, health, backend"),
            ("vips = 1", "service[0] (www).vips (line 8, column 1)", "unknown key `vips` (did you mean `vip`?)"),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
    }

    #[test]
    fn name() {
        assert_one(
            &edit("name = \"www\"", "name = \"w w\""),
            "service[0] (w w).name (line 6)",
            "\"w w\" is not a valid service name",
        );
        assert_one(
            &edit("name = \"www\"", "name = 7"),
            "service[0].name (line 6, column 8)",
            "the integer 7 is not a string",
        );
        assert_one(
            &edit("name = \"www\"", "name = 1979-05-27"),
            "service[0].name (line 6, column 8)",
            "a date-time is not a string",
        );
    }

    #[test]
    fn no_backends() {
        let text = "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"www\"\nvip = \"198.18.0.10:80\"\n";
        assert_one(text, "service[0] (www).backend (line 3)", "no backends; expected at least one [[service.backend]]");
        assert_one(&format!("{text}backend = []\n"), "service[0] (www).backend (line 6)", "no backends");
    }

    #[test]
    fn backends_together() {
        // Table not larger than the backends.
        let mut text = with("table_size = 7");
        for i in 0..6 {
            text.push_str(&format!("[[service.backend]]\naddress = \"198.18.2.{i}:80\"\n"));
        }
        assert_one(&text, "service[0] (www).table_size (line 8)", "7 is not larger than the number of backends (8)");
        // All weights zero: pointed at the first backend.
        let text = edit("address = \"198.18.1.11:80\"", "address = \"198.18.1.11:80\"\nweight = 0").replacen(
            "address = \"198.18.1.12:80\"",
            "address = \"198.18.1.12:80\"\nweight = 0",
            1,
        );
        assert_one(&text, "service[0] (www).backend (line 9)", "every backend has weight 0");
        // The same backend twice.
        assert_one(
            &edit("address = \"198.18.1.12:80\"", "address = \"198.18.1.11:80\""),
            "service[0] (www).backend[1].address (line 13)",
            "duplicate backend 198.18.1.11:80 (also service[0] (www).backend[0].address); list each backend once",
        );
    }

    #[test]
    fn across_services() {
        const SECOND: &str = "\n[[service]]\nname = \"www\"\nvip = \"198.18.0.10:80\"\n[[service.backend]]\naddress = \"198.18.1.13:80\"\n";
        let p = problems(&format!("{BASE}{SECOND}"));
        let got: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "service[1] (www).name (line 16): duplicate service name \"www\" (also service[0] (www))",
                "service[1] (www).vip (line 17): duplicate VIP 198.18.0.10:80 tcp: service[0] (www) already serves it; each (VIP, port, protocol) belongs to one service",
            ]
        );
        // The same VIP over UDP is another service.
        let udp = SECOND.replace("name = \"www\"", "protocol = \"udp\"");
        parse(&format!("{BASE}{udp}"), "t.toml").expect("the same VIP over another protocol is fine");
        // A backend that is a VIP.
        assert_one(
            &edit("address = \"198.18.1.12:80\"", "address = \"198.18.0.10:80\""),
            "service[0] (www).backend[1].address (line 13)",
            "backend 198.18.0.10:80 is the VIP of service[0] (www); a backend must be a real server",
        );
        // No services at all.
        assert_one("[daemon]\ninterfaces = [\"eth0\"]\n", "service", "no services: add at least one [[service]]");
    }
}
