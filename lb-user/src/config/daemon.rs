//! `[daemon]`: where XDP attaches and how the daemon is reached.

use super::{
    checks,
    diag::{FieldPath, Span},
    firewall,
    raw::{Item, RawAnnounce, RawDaemon, Spanned},
    validate::{Located, Reported, Validator},
    AnnounceConfig, Cidr, ClosedPorts, ConntrackTimeouts, DaemonConfig, EncapSource, ServiceConfig, XdpModeConfig,
    DEFAULT_ADMIN_SOCKET, DEFAULT_ANNOUNCE_PROTOCOL, DEFAULT_BIRD_SOCKET, DEFAULT_METRICS, DEFAULT_PIN_PATH,
    MAX_CONNTRACK_ENTRIES, MAX_CONNTRACK_TIMEOUT_S,
};

/// `[daemon]`, and its `deny` entries with their places (for the services' dead-entry checks).
pub fn validate(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Option<Item<RawDaemon>>,
) -> (DaemonConfig, Vec<Located<Cidr>>) {
    // A [daemon] of the wrong TOML type is reported once: its keys then count
    // as left out, not as missing.
    let (raw, span, reported) = match v.table(path, raw) {
        Ok(Some(table)) => {
            let span = table.span();
            (table.into_inner(), Some(span), false)
        }
        Ok(None) => (RawDaemon::default(), None, false),
        Err(Reported) => (RawDaemon::default(), None, true),
    };
    v.unknown_keys(path, &raw.unknown, RawDaemon::KEYS);

    let interfaces = interfaces(v, &path.key("interfaces"), raw.interfaces, span, reported);
    let xdp_mode = v.choice(&path.key("xdp_mode"), raw.xdp_mode, &XdpModeConfig::CHOICES, XdpModeConfig::Auto);

    let admin_path = path.key("admin_socket");
    let expected = format!("the admin socket's path, e.g. \"{DEFAULT_ADMIN_SOCKET}\"");
    let admin_socket = match v.read(&admin_path, raw.admin_socket, &expected) {
        Ok(Some(socket)) if socket.get_ref().is_empty() => {
            v.report(&admin_path, Some(socket.span()), format!("empty path; expected {expected}"));
            DEFAULT_ADMIN_SOCKET.to_owned()
        }
        Ok(Some(socket)) => socket.into_inner(),
        _ => DEFAULT_ADMIN_SOCKET.to_owned(),
    };

    let metrics_path = path.key("metrics");
    let expected =
        format!("the Prometheus endpoint's IP:port, e.g. \"{DEFAULT_METRICS}\", or \"\" to turn metrics off");
    let metrics = match v.read(&metrics_path, raw.metrics, &expected) {
        Ok(Some(text)) => checks::metrics(text.get_ref()).unwrap_or_else(|why| {
            v.report(&metrics_path, Some(text.span()), why);
            None
        }),
        Ok(None) => Some(DEFAULT_METRICS.parse().expect("the default metrics address parses")),
        Err(Reported) => None,
    };

    let conntrack_entries = v.int(
        &path.key("conntrack_entries"),
        raw.conntrack_entries,
        lb_common::DEFAULT_CONNTRACK_ENTRIES,
        (1, MAX_CONNTRACK_ENTRIES.into()),
        &format!(
            "the number of flows tracked, 1 to {MAX_CONNTRACK_ENTRIES} (default {})",
            lb_common::DEFAULT_CONNTRACK_ENTRIES
        ),
    );

    let conntrack_guard_rate = v.int(
        &path.key("conntrack_guard_rate"),
        raw.conntrack_guard_rate,
        lb_common::DEFAULT_GUARD_RATE,
        (0, u32::MAX.into()),
        &format!(
            "new flows per second per CPU above which new flows are forwarded without a conntrack entry, \
             0 to {} (0: no guard; default {})",
            u32::MAX,
            lb_common::DEFAULT_GUARD_RATE
        ),
    );

    let pin = path.key("pin_path");
    let expected = format!("an absolute directory in a BPF filesystem, e.g. \"{DEFAULT_PIN_PATH}\"");
    let pin_path = match v.read(&pin, raw.pin_path, &expected) {
        Ok(Some(p)) if !p.get_ref().starts_with('/') || p.get_ref().trim_end_matches('/').is_empty() => {
            v.report(
                &pin,
                Some(p.span()),
                format!("{:?} is not an absolute directory; expected {expected}", p.get_ref()),
            );
            DEFAULT_PIN_PATH.to_owned()
        }
        Ok(Some(p)) => p.into_inner().trim_end_matches('/').to_owned(),
        _ => DEFAULT_PIN_PATH.to_owned(),
    };

    let gue_port = v.int(
        &path.key("gue_port"),
        raw.gue_port,
        lb_common::DEFAULT_GUE_PORT,
        (1, u16::MAX.into()),
        &format!("the UDP port of forwarding = \"gue\" packets, 1 to 65535 (default {})", lb_common::DEFAULT_GUE_PORT),
    );
    let encap_source_v4 = encap_source(v, &path.key("encap_source_v4"), raw.encap_source_v4, true);
    let encap_source_v6 = encap_source(v, &path.key("encap_source_v6"), raw.encap_source_v6, false);

    let d = ConntrackTimeouts::default();
    let conntrack_timeouts = ConntrackTimeouts {
        syn: timeout(v, &path.key("conntrack_timeout_syn"), raw.conntrack_timeout_syn, d.syn),
        established: timeout(
            v,
            &path.key("conntrack_timeout_established"),
            raw.conntrack_timeout_established,
            d.established,
        ),
        closing: timeout(v, &path.key("conntrack_timeout_closing"), raw.conntrack_timeout_closing, d.closing),
        udp: timeout(v, &path.key("conntrack_timeout_udp"), raw.conntrack_timeout_udp, d.udp),
    };

    let deny = firewall::cidr_list(v, &path.key("deny"), raw.deny, None);
    firewall::dead_daemon_entries(v, &deny);
    let closed_ports = v.choice(&path.key("closed_ports"), raw.closed_ports, &ClosedPorts::CHOICES, ClosedPorts::Pass);

    let config = DaemonConfig {
        conntrack_timeouts,
        interfaces,
        xdp_mode,
        admin_socket: admin_socket.into(),
        metrics,
        conntrack_entries,
        conntrack_guard_rate,
        pin_path: pin_path.into(),
        announce: announce(v, &path.key("announce"), raw.announce),
        gue_port,
        encap_source_v4,
        encap_source_v6,
        deny: deny.iter().map(|d| d.value).collect(),
        closed_ports,
    };
    (config, deny)
}

/// `[daemon.announce]`: BIRD's control socket (absolute) and the protocol
/// name pattern (one `{vip}`, otherwise letters, digits and `_`, starting
/// with a letter: a BIRD symbol once `{vip}` is filled in).
fn announce(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<RawAnnounce>>) -> Option<AnnounceConfig> {
    let raw = v.table(path, raw).ok()??.into_inner();
    v.unknown_keys(path, &raw.unknown, RawAnnounce::KEYS);
    let socket_path = path.key("socket");
    let expected = format!("the absolute path of BIRD's control socket, e.g. \"{DEFAULT_BIRD_SOCKET}\"");
    let socket = match v.read(&socket_path, raw.socket, &expected) {
        Ok(Some(s)) if !s.get_ref().starts_with('/') => {
            v.report(
                &socket_path,
                Some(s.span()),
                format!("{:?} is not an absolute path; expected {expected}", s.get_ref()),
            );
            DEFAULT_BIRD_SOCKET.to_owned()
        }
        Ok(Some(s)) => s.into_inner(),
        _ => DEFAULT_BIRD_SOCKET.to_owned(),
    };
    let proto_path = path.key("protocol");
    let expected = format!(
        "the name of each VIP's static protocol in BIRD, with {{vip}} for the address, e.g. \"{DEFAULT_ANNOUNCE_PROTOCOL}\""
    );
    let protocol = match v.read(&proto_path, raw.protocol, &expected) {
        Ok(Some(p)) => {
            if let Err(why) = check_protocol_pattern(p.get_ref()) {
                v.report(&proto_path, Some(p.span()), format!("{why}; expected {expected}"));
            }
            p.into_inner()
        }
        _ => DEFAULT_ANNOUNCE_PROTOCOL.to_owned(),
    };
    Some(AnnounceConfig { socket: socket.into(), protocol })
}

/// `encap_source_v4` / `encap_source_v6`: a prefix (`ADDRESS/LEN`) of the family.
fn encap_source(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<String>>, v4: bool) -> Option<EncapSource> {
    let example = if v4 { "\"198.18.0.64/26\"" } else { "\"2001:db8:ff::/64\"" };
    let family = if v4 { "IPv4" } else { "IPv6" };
    let expected = format!(
        "an {family} prefix the outer source addresses of ipip/gue packets come from (host bits from the flow hash), e.g. {example}"
    );
    let text = match v.read(path, raw, &expected) {
        Ok(Some(text)) => text,
        _ => return None,
    };
    match checks::prefix(text.get_ref(), v4) {
        Ok((addr, prefix_len)) => Some(EncapSource { addr, prefix_len }),
        Err(why) => {
            v.report(path, Some(text.span()), format!("{why}; expected {expected}"));
            None
        }
    }
}

/// Every family a service encapsulates (`forwarding = "ipip"` or `"gue"`) has
/// its outer source prefix.
pub fn encap_sources_present(
    v: &mut Validator<'_>,
    path: &FieldPath,
    daemon: &DaemonConfig,
    services: &[ServiceConfig],
) {
    for (key, v4, have) in [
        ("encap_source_v4", true, daemon.encap_source_v4.is_some()),
        ("encap_source_v6", false, daemon.encap_source_v6.is_some()),
    ] {
        if have {
            continue;
        }
        if let Some(s) = services.iter().find(|s| s.forwarding.encapsulates() && s.vip.is_ipv4() == v4) {
            let example = if v4 { "\"198.18.0.64/26\"" } else { "\"2001:db8:ff::/64\"" };
            v.report(
                &path.key(key),
                None,
                format!(
                    "missing; service {} uses forwarding = \"{}\" with an {} VIP, so expected the prefix its outer \
                     source addresses come from, e.g. {key} = {example} (a /32 or /128 for a single address)",
                    s.name,
                    s.forwarding.as_str(),
                    if v4 { "IPv4" } else { "IPv6" },
                ),
            );
        }
    }
}

/// Whether `pattern` makes a BIRD symbol for every VIP.
fn check_protocol_pattern(pattern: &str) -> Result<(), String> {
    let n = pattern.matches("{vip}").count();
    if n != 1 {
        return Err(format!("{pattern:?} holds {{vip}} {n} times, not once"));
    }
    let rest = pattern.replace("{vip}", "");
    if let Some(c) = rest.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!("{pattern:?} holds {c:?}: a BIRD protocol name takes only letters, digits and _"));
    }
    if !pattern.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("{pattern:?} does not start with a letter, as a BIRD protocol name must"));
    }
    if pattern.len() + 39 - 5 > 64 {
        return Err(format!("{pattern:?} is too long: with an IPv6 VIP the name would pass BIRD's 64 characters"));
    }
    Ok(())
}

/// A `conntrack_timeout_*` key: a duration such as "60s", "10m", "6h" or
/// "500ms", from 1s to 7 days.
fn timeout(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Option<Item<String>>,
    default: std::time::Duration,
) -> std::time::Duration {
    let expected =
        format!("an idle timeout from 1s to 7d: a number and a unit (ms, s, m, h, d), e.g. \"{}s\"", default.as_secs());
    let Ok(Some(text)) = v.read(path, raw, &expected) else { return default };
    match parse_duration(text.get_ref()) {
        Some(d) if d >= std::time::Duration::from_secs(1) && d.as_secs() <= MAX_CONNTRACK_TIMEOUT_S => d,
        Some(_) => {
            v.report(path, Some(text.span()), format!("{:?} is out of range; expected {expected}", text.get_ref()));
            default
        }
        None => {
            v.report(path, Some(text.span()), format!("{:?} is not a duration; expected {expected}", text.get_ref()));
            default
        }
    }
}

/// "60s", "10m", "6h", "1d", "500ms": a whole number and a unit.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(n.checked_mul(ms)?))
}

/// `interfaces`: at least one, each a valid name, none twice.
fn interfaces(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Option<Item<Vec<Item<String>>>>,
    daemon: Option<Span>,
    daemon_reported: bool,
) -> Vec<String> {
    let expected = "the interfaces XDP attaches to, client side first, e.g. interfaces = [\"eth0\"]";
    let list = match v.read(path, raw, expected) {
        Ok(None) if daemon_reported => return Vec::new(),
        Ok(list) => list,
        Err(Reported) => return Vec::new(),
    };
    let span = list.as_ref().map(Spanned::span).or(daemon);
    let items = list.map(Spanned::into_inner).unwrap_or_default();
    if items.is_empty() {
        v.report(path, span, format!("no interfaces; expected {expected}"));
    }
    // Each name with its index in the file.
    let mut names: Vec<(usize, String)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item_path = path.index(i, None);
        let Some(name) = v.element(&item_path, item, "an interface name such as \"eth0\"") else { continue };
        let (span, name) = (name.span(), name.into_inner());
        if let Some((j, _)) = names.iter().find(|(_, n)| *n == name) {
            v.report(&item_path, Some(span), format!("duplicate interface \"{name}\" (also {path}[{j}])"));
        } else if let Err(why) = checks::interface_name(&name) {
            v.report(&item_path, Some(span), why);
        }
        names.push((i, name));
    }
    names.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use crate::config::{
        parse,
        testing::{assert_one, problems, BASE},
        XdpModeConfig, DEFAULT_ADMIN_SOCKET, DEFAULT_METRICS,
    };

    /// BASE with its `[daemon]` line followed by `lines`.
    fn with(lines: &str) -> String {
        BASE.replacen("[daemon]", &format!("[daemon]\n{lines}"), 1)
    }

    #[test]
    fn defaults_are_filled_in() {
        let d = parse(BASE, "base.toml").expect("BASE is valid").daemon;
        assert_eq!(d.interfaces, ["eth0", "eth1"]);
        assert_eq!(d.xdp_mode, XdpModeConfig::Auto);
        assert_eq!(d.admin_socket, std::path::PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(d.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert_eq!(d.conntrack_entries, lb_common::DEFAULT_CONNTRACK_ENTRIES);
        assert_eq!(d.pin_path, std::path::PathBuf::from(crate::config::DEFAULT_PIN_PATH));
        assert_eq!(d.conntrack_guard_rate, lb_common::DEFAULT_GUARD_RATE);
        let d = parse(&with("conntrack_guard_rate = 0"), "t.toml").expect("0 turns the guard off").daemon;
        assert_eq!(d.conntrack_guard_rate, 0);
        let d = parse(&with("pin_path = \"/sys/fs/bpf/xlb-edge/\""), "t.toml").expect("valid").daemon;
        assert_eq!(d.pin_path, std::path::PathBuf::from("/sys/fs/bpf/xlb-edge"));
    }

    #[test]
    fn metrics_empty_turns_off() {
        let d = parse(&with("metrics = \"\"\nxdp_mode = \"generic\""), "t.toml").expect("valid").daemon;
        assert_eq!((d.metrics, d.xdp_mode), (None, XdpModeConfig::Generic));
    }

    #[test]
    fn interfaces() {
        let base_line = "interfaces = [\"eth0\", \"eth1\"]";
        let cases = [
            ("interfaces = []", "daemon.interfaces (line 3)", "no interfaces; expected the interfaces XDP attaches to"),
            ("interfaces = [\"eth0\", \"eth0\"]", "daemon.interfaces[1] (line 3)", "duplicate interface \"eth0\" (also daemon.interfaces[0])"),
            ("interfaces = [\"\"]", "daemon.interfaces[0] (line 3)", "empty interface name"),
            ("interfaces = [\"eth0123456789abcdef\"]", "daemon.interfaces[0]", "longer than 15 bytes"),
            ("interfaces = \"eth0\"", "daemon.interfaces (line 3, column 14)", "the string \"eth0\" is not an array; expected the interfaces XDP attaches to, client side first, e.g. interfaces = [\"eth0\"]"),
            ("interfaces = [\"eth0\", 5]", "daemon.interfaces[1] (line 3, column 23)", "the integer 5 is not a string; expected an interface name such as \"eth0\""),
        ];
        for (line, field, message) in cases {
            assert_one(&BASE.replacen(base_line, line, 1), field, message);
        }
    }

    #[test]
    fn missing_interfaces() {
        // No [daemon] at all: nothing to point at.
        let text = BASE.replacen("[daemon]\ninterfaces = [\"eth0\", \"eth1\"]", "", 1);
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!((p[0].path.as_str(), p[0].line), ("daemon.interfaces", None), "{p:#?}");
        assert!(p[0].message.starts_with("no interfaces"), "{p:#?}");
        // A [daemon] without interfaces: its header.
        assert_one(
            &BASE.replacen("interfaces = [\"eth0\", \"eth1\"]", "", 1),
            "daemon.interfaces (line 2)",
            "no interfaces",
        );
    }

    #[test]
    fn settings() {
        let cases = [
            ("xdp_mode = \"fast\"", "daemon.xdp_mode (line 3)", "unknown value \"fast\"; expected one of: auto, native, generic"),
            ("xdp_mode = \"Native\"", "daemon.xdp_mode", "(did you mean \"native\"?)"),
            ("xdp_mode = true", "daemon.xdp_mode (line 3, column 12)", "the boolean true is not a string; expected one of: auto, native, generic (a quoted string, e.g. xdp_mode = \"auto\")"),
            ("metrics = \"localhost\"", "daemon.metrics (line 3)", "\"localhost\" is not an IP:port address"),
            ("metrics = 9477", "daemon.metrics (line 3, column 11)", "the integer 9477 is not a string; expected the Prometheus endpoint's IP:port"),
            ("admin_socket = \"\"", "daemon.admin_socket (line 3)", "empty path; expected the admin socket's path, e.g. \"/run/xlb/xlb.sock\""),
            ("pin_path = \"xlb\"", "daemon.pin_path (line 3)", "\"xlb\" is not an absolute directory; expected an absolute directory in a BPF filesystem"),
            ("pin_path = \"/\"", "daemon.pin_path", "\"/\" is not an absolute directory"),
            ("admin_socket = [\"/a\"]", "daemon.admin_socket (line 3, column 16)", "an array is not a string"),
            ("conntrack_entries = 0", "daemon.conntrack_entries (line 3)", "0 is out of range; expected the number of flows tracked, 1 to 134217728 (default 1048576)"),
            ("conntrack_entries = 134217729", "daemon.conntrack_entries", "out of range"),
            ("conntrack_entries = -5", "daemon.conntrack_entries", "-5 is out of range"),
            ("conntrack_entries = 99999999999999999999", "daemon.conntrack_entries", "99999999999999999999 is out of range"),
            ("conntrack_guard_rate = -1", "daemon.conntrack_guard_rate (line 3)", "-1 is out of range; expected new flows per second per CPU above which new flows are forwarded without a conntrack entry, 0 to 4294967295 (0: no guard; default 125000)"),
            ("conntrack_guard_rate = 4294967296", "daemon.conntrack_guard_rate", "4294967296 is out of range"),
            ("conntrack_entries = \"1M\"", "daemon.conntrack_entries (line 3, column 21)", "the string \"1M\" is not an integer; expected the number of flows tracked"),
            ("conntrack_entries = \"1024\"", "daemon.conntrack_entries", "(write numbers without quotes: conntrack_entries = 1024)"),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
    }

    #[test]
    fn conntrack_timeouts() {
        use std::time::Duration;
        let d = parse(BASE, "base.toml").expect("BASE is valid").daemon.conntrack_timeouts;
        assert_eq!(
            (d.syn, d.established, d.closing, d.udp),
            (Duration::from_secs(60), Duration::from_secs(6 * 3600), Duration::from_secs(10), Duration::from_secs(60))
        );
        let text = with("conntrack_timeout_syn = \"5s\"\nconntrack_timeout_established = \"2h\"\nconntrack_timeout_closing = \"1500ms\"\nconntrack_timeout_udp = \"3m\"");
        let d = parse(&text, "t.toml").expect("valid").daemon.conntrack_timeouts;
        assert_eq!(
            (d.syn, d.established, d.closing, d.udp),
            (Duration::from_secs(5), Duration::from_secs(7200), Duration::from_millis(1500), Duration::from_secs(180))
        );
        let cases = [
            (
                "conntrack_timeout_syn = \"60\"",
                "daemon.conntrack_timeout_syn (line 3)",
                "\"60\" is not a duration; expected an idle timeout from 1s to 7d",
            ),
            ("conntrack_timeout_udp = \"500ms\"", "daemon.conntrack_timeout_udp (line 3)", "\"500ms\" is out of range"),
            ("conntrack_timeout_closing = \"8d\"", "daemon.conntrack_timeout_closing", "\"8d\" is out of range"),
            (
                "conntrack_timeout_established = 60",
                "daemon.conntrack_timeout_established (line 3, column 33)",
                "the integer 60 is not a string",
            ),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
    }

    #[test]
    fn unknown_keys() {
        assert_one(
            &with("mode = \"x\""),
            "daemon.mode (line 3, column 1)",
            "unknown key `mode`; expected one of: interfaces, xdp_mode, admin_socket, metrics, conntrack_entries, conntrack_guard_rate, pin_path, conntrack_timeout_syn, conntrack_timeout_established, conntrack_timeout_closing, conntrack_timeout_udp, deny, closed_ports, gue_port, encap_source_v4, encap_source_v6, announce",
        );
        assert_one(
            &with("interface = [\"eth2\"]"),
            "daemon.interface (line 3, column 1)",
            "unknown key `interface` (did you mean `interfaces`?)",
        );
        assert_one(&format!("{BASE}\n[daemon.extra]\n"), "daemon.extra (line 15, column 9)", "unknown key `extra`");
    }

    #[test]
    fn announce() {
        let d = parse(BASE, "t.toml").expect("valid").daemon;
        assert_eq!(d.announce, None, "no [daemon.announce]: nothing announced");
        let d = parse(&format!("{BASE}\n[daemon.announce]\n"), "t.toml").expect("valid").daemon;
        let a = d.announce.expect("an empty [daemon.announce] announces with the defaults");
        assert_eq!((a.socket.to_str(), a.protocol.as_str()), (Some("/run/bird/bird.ctl"), "xlb_{vip}"));
        let text = format!("{BASE}\n[daemon.announce]\nsocket = \"/run/b.ctl\"\nprotocol = \"vip_{{vip}}_x\"\n");
        let a = parse(&text, "t.toml").expect("valid").daemon.announce.expect("announce");
        assert_eq!((a.socket.to_str(), a.protocol.as_str()), (Some("/run/b.ctl"), "vip_{vip}_x"));
        let cases = [
            ("socket = \"bird.ctl\"", "daemon.announce.socket (line 16)", "\"bird.ctl\" is not an absolute path"),
            ("protocol = \"xlb\"", "daemon.announce.protocol (line 16)", "holds {vip} 0 times, not once"),
            ("protocol = \"{vip}\"", "daemon.announce.protocol", "does not start with a letter"),
            ("protocol = \"xlb-{vip}\"", "daemon.announce.protocol", "holds '-': a BIRD protocol name takes only"),
            ("protocol = 5", "daemon.announce.protocol (line 16, column 12)", "the integer 5 is not a string"),
            (
                "sockets = \"/x\"",
                "daemon.announce.sockets (line 16, column 1)",
                "unknown key `sockets` (did you mean `socket`?)",
            ),
        ];
        for (line, field, message) in cases {
            assert_one(&format!("{BASE}\n[daemon.announce]\n{line}\n"), field, message);
        }
    }

    #[test]
    fn daemon_of_the_wrong_type() {
        let text =
            BASE.replacen("[daemon]\ninterfaces = [\"eth0\", \"eth1\"]", "[[daemon]]\ninterfaces = [\"eth0\"]", 1);
        assert_one(
            &text,
            "daemon (line 2, column 1)",
            "an array of tables is not a table; write [daemon], not [[daemon]]",
        );
        let text = BASE.replacen("[daemon]\ninterfaces = [\"eth0\", \"eth1\"]", "daemon = \"eth0\"", 1);
        assert_one(
            &text,
            "daemon (line 2, column 10)",
            "the string \"eth0\" is not a table; expected a [daemon] table",
        );
    }

    #[test]
    fn encapsulation_needs_a_source_prefix_of_the_family() {
        let ipip = BASE.replacen("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:80\"\nforwarding = \"ipip\"", 1);
        let p = problems(&ipip);
        assert!(
            p.len() == 1
                && p[0].path == "daemon.encap_source_v4"
                && p[0].message.contains("service www uses forwarding = \"ipip\""),
            "expected one problem at daemon.encap_source_v4 naming service www, got {p:#?}"
        );
        let ok = ipip.replacen("[daemon]", "[daemon]\nencap_source_v4 = \"198.18.5.0/24\"", 1);
        let cfg = parse(&ok, "t.toml").expect("an ipip service with its source prefix is valid");
        let src = cfg.daemon.encap_source_v4.expect("the prefix is kept");
        assert_eq!((src.to_string(), cfg.daemon.gue_port), ("198.18.5.0/24".to_string(), 6080));
        // Only the families used need one; a wrong family is refused.
        assert!(parse(&with("encap_source_v6 = \"2001:db8:5::/64\""), "t.toml").is_ok());
        let p = problems(&with("encap_source_v6 = \"198.18.5.0/24\"\ngue_port = 0"));
        assert_eq!(p.len(), 2, "expected the IPv4 prefix for v6 and gue_port 0 refused, got {p:#?}");
    }
}
