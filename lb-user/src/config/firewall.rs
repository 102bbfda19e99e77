//! The firewall's keys: `allow` and `deny` (per service), `[daemon] deny`, `closed_ports`,
//! `new_flows_per_source`.
//!
//! A source's verdict for a service: a `[daemon] deny` prefix that holds it denies it (for
//! every VIP, whatever the service allows); else the longest of the service's prefixes that
//! holds it decides (a prefix in both lists: deny); else it is denied when the service has an
//! `allow` list and admitted when it has none.
//!
//! An entry is **dead** when removing it changes no source's verdict. `xlb check` refuses
//! the dead entries it can prove dead from one other entry (it does not look for an entry
//! covered only by several longer ones together):
//! - the same prefix twice in one list;
//! - an `allow` prefix that `deny` also lists (deny wins at equal length);
//! - an entry whose verdict is already that of the longest shorter prefix holding it (allow
//!   inside allow, deny inside deny), or, with none, of the default (a deny where an `allow`
//!   list exists and no allow entry holds it: those sources are denied already);
//! - a service entry held by a `[daemon] deny` prefix (of the same or a shorter length), and
//!   a `[daemon] deny` prefix held by a shorter one.

use std::{fmt, net::IpAddr};

use super::{
    diag::FieldPath,
    raw::{Item, RawRate, Spanned},
    validate::{Located, Reported, Validator},
    Cidr, RateLimit,
};

impl Cidr {
    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.len <= other.len && self.addr.is_ipv4() == other.addr.is_ipv4() && mask(other.addr, self.len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr` with the bits after the first `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// One CIDR (`198.18.0.0/15`, `2001:db8::/32`; a bare address is a host: /32 or /128).
pub fn cidr(text: &str) -> Result<Cidr, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!("\"{text}\" is not a CIDR; expected an address and prefix length, e.g. \"198.18.0.0/24\"")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("\"{text}\": prefix length \"{l}\" is not a number from 0 to {max}")),
        },
    };
    let net = mask(addr, len);
    if net != addr {
        return Err(format!("\"{text}\" has host bits set; did you mean \"{net}/{len}\"?"));
    }
    Ok(Cidr { addr, len })
}

/// A list of CIDRs; `family` (the VIP's: true for IPv4) refuses the other family's entries.
pub fn cidr_list(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Option<Item<Vec<Item<String>>>>,
    vip: Option<IpAddr>,
) -> Vec<Located<Cidr>> {
    let expected = "a list of CIDRs, e.g. [\"198.18.0.0/24\", \"2001:db8::/48\"]";
    let Ok(Some(list)) = v.read(path, raw, expected) else { return Vec::new() };
    let mut out: Vec<Located<Cidr>> = Vec::new();
    for (i, item) in list.into_inner().into_iter().enumerate() {
        let item_path = path.index(i, None);
        let Some(text) = v.element(&item_path, item, "a CIDR such as \"198.18.0.0/24\"") else { continue };
        let span = text.span();
        let c = match cidr(text.get_ref()) {
            Ok(c) => c,
            Err(why) => {
                v.report(&item_path, Some(span), why);
                continue;
            }
        };
        if let Some(vip) = vip.filter(|vip| vip.is_ipv4() != c.addr.is_ipv4()) {
            let (this, that) = if c.addr.is_ipv4() { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
            v.report(
                &item_path,
                Some(span),
                format!("{c} is {this} but the VIP {vip} is {that}: it could never match a client"),
            );
            continue;
        }
        if let Some(first) = out.iter().find(|o| o.value == c) {
            v.report(&item_path, Some(span), format!("duplicate {c} (also {}): dead", first.path));
            continue;
        }
        out.push(Located::new(c, item_path, span));
    }
    out
}

/// Reports the dead entries of a service's lists (see the module's doc); `daemon`: `[daemon] deny`.
pub fn dead_entries(v: &mut Validator<'_>, allow: &[Located<Cidr>], deny: &[Located<Cidr>], daemon: &[Located<Cidr>]) {
    // (entry, is_allow)
    let all: Vec<(&Located<Cidr>, bool)> =
        allow.iter().map(|a| (a, true)).chain(deny.iter().map(|d| (d, false))).collect();
    for &(e, is_allow) in &all {
        if let Some(g) = daemon.iter().find(|g| g.value.contains(&e.value)) {
            let message = format!("{} is dead: {} ({}) denies these sources for every VIP", e.value, g.path, g.value);
            v.report(&e.path, Some(e.span.clone()), message);
            continue;
        }
        if is_allow {
            if let Some(d) = deny.iter().find(|d| d.value == e.value) {
                let message =
                    format!("{} is dead: {} names the same prefix and deny wins at equal length", e.value, d.path);
                v.report(&e.path, Some(e.span.clone()), message);
                continue;
            }
        }
        // What decides its sources without it: the longest other entry holding it (an allow
        // of the same prefix, for a deny), deny first at equal length.
        let parent = all
            .iter()
            .filter(|(o, _)| !std::ptr::eq(*o, e) && o.value.contains(&e.value))
            .max_by_key(|(o, o_allow)| (o.value.len, !*o_allow));
        match parent {
            Some((p, p_allow)) if *p_allow == is_allow => {
                let what = if is_allow { "admits" } else { "denies" };
                let message =
                    format!("{} is dead: {} ({}) already {what} every source in it", e.value, p.path, p.value);
                v.report(&e.path, Some(e.span.clone()), message);
            }
            None if !is_allow && !allow.is_empty() => {
                let message = format!(
                    "{} is dead: no allow entry holds it, so the allow list already denies these sources",
                    e.value
                );
                v.report(&e.path, Some(e.span.clone()), message);
            }
            _ => {}
        }
    }
}

/// `[daemon] deny` prefixes held by a shorter one of the same list.
pub fn dead_daemon_entries(v: &mut Validator<'_>, daemon: &[Located<Cidr>]) {
    for e in daemon {
        if let Some(p) = daemon.iter().find(|p| p.value.len < e.value.len && p.value.contains(&e.value)) {
            let message = format!("{} is dead: {} ({}) already denies every source in it", e.value, p.path, p.value);
            v.report(&e.path, Some(e.span.clone()), message);
        }
    }
}

/// Largest `rate` accepted (new flows per second per source).
pub const MAX_RATE: u32 = 1_000_000_000;
/// Largest `burst` accepted.
pub const MAX_BURST: u32 = 1_000_000;

/// `new_flows_per_source = { rate = 100, burst = 200 }`.
pub fn rate_limit(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<RawRate>>) -> Option<RateLimit> {
    let table: Spanned<RawRate> = match v.table(path, raw) {
        Ok(Some(t)) => t,
        Ok(None) | Err(Reported) => return None,
    };
    let span = table.span();
    let raw = table.into_inner();
    v.unknown_keys(path, &raw.unknown, RawRate::KEYS);
    let (rate_path, burst_path) = (path.key("rate"), path.key("burst"));
    if raw.rate.is_none() {
        v.report(&rate_path, Some(span.clone()), "missing; expected new flows per second per source, e.g. rate = 100");
    }
    let rate = v.int(
        &rate_path,
        raw.rate,
        0u32,
        (1, MAX_RATE.into()),
        &format!("new flows per second per source, 1 to {MAX_RATE}"),
    );
    let burst = match raw.burst {
        None => rate.clamp(1, MAX_BURST),
        some => v.int(
            &burst_path,
            some,
            1u32,
            (1, MAX_BURST.into()),
            &format!("new flows a source may open back to back, 1 to {MAX_BURST} (default: the rate)"),
        ),
    };
    (rate > 0).then_some(RateLimit { rate, burst })
}

#[cfg(test)]
mod tests {
    use crate::config::{
        parse,
        testing::{assert_one, edit, problems, BASE},
        ClosedPorts, RateLimit,
    };

    const VIP: &str = "vip = \"198.18.0.10:80\"";

    fn with(lines: &str) -> String {
        edit(VIP, &format!("{VIP}\n{lines}"))
    }

    #[test]
    fn lists_and_limits_are_read() {
        let text = with(
            "allow = [\"198.18.0.0/15\", \"198.18.5.7\"]\ndeny = [\"198.18.5.0/24\"]\nnew_flows_per_source = { rate = 100, burst = 200 }",
        )
        .replacen("[daemon]", "[daemon]\ndeny = [\"203.0.113.0/24\", \"2001:db8:bad::/48\"]\nclosed_ports = \"drop\"", 1);
        let config = parse(&text, "t.toml").expect("valid");
        let s = &config.services[0];
        let show = |l: &[crate::config::Cidr]| l.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(show(&s.allow), ["198.18.0.0/15", "198.18.5.7/32"]);
        assert_eq!(show(&s.deny), ["198.18.5.0/24"]);
        assert_eq!(s.new_flows_per_source, Some(RateLimit { rate: 100, burst: 200 }));
        assert_eq!(show(&config.daemon.deny), ["203.0.113.0/24", "2001:db8:bad::/48"]);
        assert_eq!(config.daemon.closed_ports, ClosedPorts::Drop);
        let base = parse(BASE, "t.toml").expect("valid");
        assert_eq!(base.daemon.closed_ports, ClosedPorts::Pass, "closed_ports defaults to pass");
        assert!(base.services[0].allow.is_empty() && base.services[0].new_flows_per_source.is_none());
    }

    #[test]
    fn each_cidr_is_checked_with_its_field() {
        let cases = [
            (
                "allow = [\"198.18.0.1/24\"]",
                "service[0] (www).allow[0] (line 8)",
                "\"198.18.0.1/24\" has host bits set; did you mean \"198.18.0.0/24\"?",
            ),
            (
                "deny = [\"2001:db8::/32\"]",
                "service[0] (www).deny[0] (line 8)",
                "2001:db8::/32 is IPv6 but the VIP 198.18.0.10 is IPv4: it could never match a client",
            ),
            (
                "deny = [\"198.18.0.0/33\"]",
                "service[0] (www).deny[0]",
                "prefix length \"33\" is not a number from 0 to 32",
            ),
            ("allow = [\"www.example.org\"]", "service[0] (www).allow[0]", "is not a CIDR"),
            ("allow = [7]", "service[0] (www).allow[0] (line 8, column 10)", "the integer 7 is not a string"),
            (
                "allow = \"198.18.0.0/24\"",
                "service[0] (www).allow (line 8, column 9)",
                "is not an array; expected a list of CIDRs",
            ),
            (
                "deny = [\"198.18.0.0/24\", \"198.18.0.0/24\"]",
                "service[0] (www).deny[1]",
                "duplicate 198.18.0.0/24 (also service[0] (www).deny[0]): dead",
            ),
            (
                "new_flows_per_source = { rate = 0 }",
                "service[0] (www).new_flows_per_source.rate",
                "0 is out of range; expected new flows per second per source",
            ),
            (
                "new_flows_per_source = { burst = 5 }",
                "service[0] (www).new_flows_per_source.rate",
                "missing; expected new flows per second",
            ),
            (
                "new_flows_per_source = { rate = 5, burst = 0 }",
                "service[0] (www).new_flows_per_source.burst",
                "0 is out of range",
            ),
            (
                "new_flows_per_source = { rate = 5, per = 1 }",
                "service[0] (www).new_flows_per_source.per",
                "unknown key `per`",
            ),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
        let daemon = |lines: &str| BASE.replacen("[daemon]", &format!("[daemon]\n{lines}"), 1);
        assert_one(&daemon("deny = [\"10.0.0.1/8\"]"), "daemon.deny[0] (line 3)", "has host bits set");
        assert_one(&daemon("closed_ports = \"reject\""), "daemon.closed_ports (line 3)", "expected one of: pass, drop");
    }

    #[test]
    fn dead_entries_are_refused() {
        let dead = [
            // Same prefix in both: the allow is dead.
            (
                "allow = [\"198.18.1.0/24\"]\ndeny = [\"198.18.1.0/24\"]",
                "service[0] (www).allow[0]",
                "is dead: service[0] (www).deny[0] names the same prefix and deny wins",
            ),
            // Allow inside allow, deny inside deny.
            (
                "allow = [\"198.18.0.0/16\", \"198.18.4.0/24\"]",
                "service[0] (www).allow[1]",
                "198.18.4.0/24 is dead: service[0] (www).allow[0] (198.18.0.0/16) already admits",
            ),
            (
                "deny = [\"198.18.0.0/16\", \"198.18.4.0/24\"]",
                "service[0] (www).deny[1]",
                "already denies every source in it",
            ),
            // A deny outside every allow entry: denied by the allow list already.
            (
                "allow = [\"198.18.0.0/16\"]\ndeny = [\"203.0.113.0/24\"]",
                "service[0] (www).deny[0]",
                "no allow entry holds it",
            ),
            // Inside an allow that sits inside a deny: the nearest holder decides.
            (
                "allow = [\"198.18.0.0/15\", \"198.18.1.0/24\", \"198.18.1.128/25\"]\ndeny = [\"198.18.0.0/16\"]",
                "service[0] (www).allow[2]",
                "allow[1] (198.18.1.0/24) already admits",
            ),
            // A deny wider than every allow entry: denied by the allow list already.
            (
                "allow = [\"198.18.1.0/24\"]\ndeny = [\"198.18.0.0/16\"]",
                "service[0] (www).deny[0]",
                "no allow entry holds it",
            ),
        ];
        for (lines, field, message) in dead {
            assert_one(&with(lines), field, message);
        }
        // Held by [daemon] deny.
        let text =
            with("allow = [\"203.0.113.0/25\"]").replacen("[daemon]", "[daemon]\ndeny = [\"203.0.113.0/24\"]", 1);
        assert_one(
            &text,
            "service[0] (www).allow[0]",
            "daemon.deny[0] (203.0.113.0/24) denies these sources for every VIP",
        );
        let text = BASE.replacen("[daemon]", "[daemon]\ndeny = [\"203.0.113.0/24\", \"203.0.113.8/29\"]", 1);
        assert_one(&text, "daemon.deny[1]", "already denies every source in it");
        // Not dead: a deny carved out of an allow, an allow carved out of a deny, a deny at
        // equal length with an allow (the allow is the dead one, reported once).
        let live =
            with("allow = [\"198.18.0.0/16\", \"198.18.7.0/24\"]\ndeny = [\"198.18.7.0/25\", \"198.18.4.0/24\"]");
        assert_one(&live, "service[0] (www).allow[1]", "198.18.7.0/24 is dead: service[0] (www).allow[0]");
        let live = with("allow = [\"198.18.0.0/16\", \"198.18.4.8/29\"]\ndeny = [\"198.18.4.0/24\"]");
        parse(&live, "t.toml").expect("a deny carved out of an allow and an allow carved out of it are live");
        assert_eq!(problems(&with("deny = [\"198.18.0.0/24\", \"198.18.0.0/24\", \"x\"]")).len(), 2);
    }
}
