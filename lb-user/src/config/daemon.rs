//! `[daemon]`: where XDP attaches and how the daemon is reached.

use super::{
    checks,
    diag::{FieldPath, Span},
    raw::{Item, RawDaemon, Spanned},
    validate::{Reported, Validator},
    DaemonConfig, EncapSource, ServiceConfig, XdpModeConfig, DEFAULT_ADMIN_SOCKET, DEFAULT_METRICS, DEFAULT_PIN_PATH,
    MAX_CONNTRACK_ENTRIES,
};

pub fn validate(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<RawDaemon>>) -> DaemonConfig {
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

    DaemonConfig {
        interfaces,
        xdp_mode,
        admin_socket: admin_socket.into(),
        metrics,
        conntrack_entries,
        pin_path: pin_path.into(),
        gue_port,
        encap_source_v4,
        encap_source_v6,
    }
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
            ("conntrack_entries = \"1M\"", "daemon.conntrack_entries (line 3, column 21)", "the string \"1M\" is not an integer; expected the number of flows tracked"),
            ("conntrack_entries = \"1024\"", "daemon.conntrack_entries", "(write numbers without quotes: conntrack_entries = 1024)"),
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
            "unknown key `mode`; expected one of: interfaces, xdp_mode, admin_socket, metrics, conntrack_entries, pin_path",
        );
        assert_one(
            &with("interface = [\"eth2\"]"),
            "daemon.interface (line 3, column 1)",
            "unknown key `interface` (did you mean `interfaces`?)",
        );
        assert_one(&format!("{BASE}\n[daemon.extra]\n"), "daemon.extra (line 15, column 9)", "unknown key `extra`");
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
