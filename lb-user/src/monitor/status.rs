//! The status as people read it: the text table of `xlb status` / `xlb top`
//! and the JSON behind the status page (`/status.json`). Both are rendered
//! from a [`Snapshot`] (totals), the sampler's [`Rates`] and the last
//! conntrack count.

use std::{
    fmt::Write as _,
    time::{Instant, SystemTime},
};

use lb_common::counter;
use serde::Serialize;

use super::{
    rates::Rates,
    snapshot::{BackendSample, ServiceSample, Snapshot, PASS_REASONS},
};
use crate::dataplane::conntrack_count::ConntrackCount;

/// What every status output is made from.
pub struct View<'a> {
    pub snap: &'a Snapshot,
    pub rates: Option<&'a Rates>,
    pub conntrack: Option<&'a ConntrackCount>,
}

// ------------------------------------------------------------ text

/// `3s`, `5m`, `2h`, `3d`: how long ago `t` was.
pub fn ago(t: SystemTime) -> String {
    let s = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A rate with an SI suffix (`950`, `12.3k`, `4.56M`), or `-` when unknown.
pub fn si(rate: Option<f64>) -> String {
    let Some(r) = rate else { return "-".into() };
    match r {
        r if r >= 1e9 => format!("{:.2}G", r / 1e9),
        r if r >= 1e6 => format!("{:.2}M", r / 1e6),
        r if r >= 1e4 => format!("{:.1}k", r / 1e3),
        r if r >= 100.0 => format!("{r:.0}"),
        r => format!("{r:.1}"),
    }
}

/// The status table. Totals are the last columns of each row.
pub fn text(v: &View) -> String {
    let mut o = String::new();
    let attached: Vec<String> = v.snap.attached.iter().map(|(i, m)| format!("{i} ({m})")).collect();
    let _ = writeln!(o, "attached: {}", attached.join(", "));
    let _ = match v.conntrack {
        Some(c) => write!(
            o,
            "conntrack entries: {} of {} ({:.1}% used, counted {}s ago)",
            c.entries,
            c.limit,
            percent(c.entries, c.limit),
            v.snap.at.saturating_duration_since(c.at).as_secs()
        ),
        None => write!(o, "conntrack entries: not counted yet"),
    };
    let _ = writeln!(o, ", open flows evicted {}", v.snap.counter(counter::CT_EVICTED));
    let _ = match v.rates {
        Some(r) => writeln!(o, "rates: per second, over the last {:.1} s", r.window.as_secs_f64()),
        None => writeln!(o, "rates: not sampled yet (-)"),
    };
    let _ = writeln!(o, "maglev tables: {} rebuilds, {} slots written", v.snap.rebuilds, v.snap.slots_written);
    for a in &v.snap.announcements {
        let state = match (a.announced, a.wanted, &a.error) {
            (_, _, Some(e)) => format!("BIRD not told: {e}"),
            (true, _, None) => "announced".to_owned(),
            (false, true, None) => "to be announced".to_owned(),
            (false, false, None) => "withdrawn (no backend takes new flows)".to_owned(),
        };
        let _ = writeln!(o, "vip {} (BIRD protocol {}): {state}", a.vip, a.protocol);
    }
    backend_table(&mut o, v);
    service_table(&mut o, v);
    let _ = writeln!(o, "\ndropped:{:>22} {:>9}", "TOTAL", "PER S");
    for (pos, (i, name)) in counter::drops().enumerate() {
        let rate = v.rates.and_then(|r| r.drop(pos));
        let _ = writeln!(o, "  {name:<17} {:>11} {:>9}", v.snap.counter(i), si(rate));
    }
    let c = |i| v.snap.counter(i);
    let _ = writeln!(
        o,
        "to the kernel: no route/neighbour {}, ttl {}, not for a VIP {}, icmp {}",
        c(counter::PASS_NO_ROUTE),
        c(counter::PASS_TTL),
        c(counter::PASS_NOT_VIP),
        c(counter::PASS_ICMP)
    );
    let _ = writeln!(o, "nat replies rewritten: {}", c(counter::REPLY_NAT));
    let _ = writeln!(
        o,
        "conntrack guard: {}, flows untracked {}, activations {}",
        if v.snap.guard_active { "ACTIVE" } else { "idle" },
        c(counter::FLOWS_UNTRACKED),
        c(counter::GUARD_ACTIVATIONS)
    );
    let _ = writeln!(
        o,
        "icmp: errors to backends {}, errors to clients {}, pings answered {}",
        c(counter::ICMP_TO_BACKEND),
        c(counter::ICMP_TO_CLIENT),
        c(counter::PING_ANSWERED)
    );
    o
}

fn percent(n: u64, of: u32) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / f64::from(of)
    }
}

fn backend_table(o: &mut String, v: &View) {
    let _ = writeln!(
        o,
        "\n{:<10} {:<26} {:<8} {:<8} {:>6} {:>6}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>12} {:>14}",
        "SERVICE",
        "BACKEND",
        "ROLE",
        "STATE",
        "WEIGHT",
        "SINCE",
        "LAST CHECK",
        "ACTIVE",
        "NEW/S",
        "PKTS/S",
        "BYTES/S",
        "NEW FLOWS",
        "PACKETS",
        "BYTES"
    );
    for s in &v.snap.services {
        for b in &s.backends {
            let r = v.rates.and_then(|r| r.backend(&s.name, b.address));
            let _ = writeln!(
                o,
                "{:<10} {:<26} {:<8} {:<8} {:>6} {:>6}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>12} {:>14}",
                s.name,
                b.address.to_string(),
                b.role.as_str(),
                b.state.as_str(),
                b.weight,
                ago(b.since),
                b.last_check,
                b.active,
                si(r.map(|r| r.new_flows)),
                si(r.map(|r| r.packets)),
                si(r.map(|r| r.bytes)),
                b.stats.new_flows,
                b.stats.packets,
                b.stats.bytes
            );
        }
    }
}

fn service_table(o: &mut String, v: &View) {
    let _ = writeln!(
        o,
        "\n{:<10} {:<26} {:<11} {:>10} {:>12} {:>10} {:>10} {:>8} {:>8}  NEW FLOWS TO",
        "SERVICE", "VIP", "SCHEDULER", "NEW FLOWS", "ESTABLISHED", "REPICKED", "NON-SYN", "NEW/S", "PKTS/S"
    );
    for s in &v.snap.services {
        let r = v.rates.and_then(|r| r.service(&s.name));
        let vip = format!("{} {}", s.protocol, s.vip);
        let _ = writeln!(
            o,
            "{:<10} {:<26} {:<11} {:>10} {:>12} {:>10} {:>10} {:>8} {:>8}  {}",
            s.name,
            vip,
            s.scheduler,
            s.stats.new_flows,
            s.stats.established,
            s.stats.repicked,
            s.stats.non_syn,
            si(r.map(|r| r.new_flows)),
            si(r.map(|r| r.packets)),
            if s.on_backup { "backups" } else { "primaries" }
        );
    }
}

// ------------------------------------------------------------ JSON

/// The status document: `xlb status --json` prints it and `/status.json`
/// serves it, from the same function ([`json`]). Field names are stable;
/// figures that are not known yet are `null`. Rates are per second over the
/// last sampling window.
///
/// - `version`: xlb's version.
/// - `now`: Unix time of the snapshot (seconds, fractional).
/// - `rate_window_seconds`: the window rates are measured over (`null` until two samples exist).
/// - `xdp[]`: `interface`, `mode` (`native` | `generic`): where the program is attached.
/// - `conntrack`: `entries`, `limit`, `used_percent`, `age_seconds` (since it was counted); `null` before the first count.
/// - `conntrack_evictions`: open flows whose conntrack entry a new flow took (a full bucket), since start.
/// - `table_rebuilds`, `table_slots_written`: Maglev table rebuilds that changed a slot, and slots written, since start.
/// - `drops[]`: `reason`, `total`, `per_second`: packets to a VIP dropped, by reason.
/// - `kernel_passed[]`: `reason` (`no_route`, `ttl_expired`, `not_vip`, `icmp`), `total`: packets handed to the kernel.
/// - `nat_replies`: backend replies rewritten back to the VIP.
/// - `icmp[]`: `event` (`to_backend`, `to_client`, `ping_answered`), `total`: ICMP errors sent on to a VIP
///   flow's backend or client, echo requests answered.
/// - `announce[]`: `vip`, `protocol` (BIRD's), `wanted` (a service on it has a backend taking new flows),
///   `announced` (BIRD confirmed the protocol enabled), `error` (the last failure to tell BIRD, or null);
///   empty without `[daemon.announce]`.
/// - `services[]`: `name`, `vip`, `protocol`, `forwarding`, `scheduler` (`maglev`, `round_robin`,
///   `least_conn`), `on_backup` (new flows go to the backups),
///   `packets`, `new_flows`, `established`, `repicked`, `non_syn` (TCP packets of an unknown flow that are
///   not a SYN: sent to their Maglev backend without a conntrack entry), `denied` (packets refused by the
///   service's `allow`/`deny`; `[daemon] deny` counts only in `drops`), `rate_limited` (new flows refused by
///   `new_flows_per_source`), `packets_per_second`,
///   `new_flows_per_second`, and
///   - `backends[]`: `address`, `role`, `state` (`up` | `down` | `drained`), `since` (Unix time of the
///     last health change), `weight`, `last_check`, `last_check_duration_ms`, `state_changes`, `packets`,
///     `bytes`, `new_flows`, `packets_per_second`, `bytes_per_second`, `new_flows_per_second`.
#[derive(Serialize)]
pub struct StatusJson {
    pub version: &'static str,
    /// Unix time of the snapshot.
    pub now: f64,
    /// Seconds the rates are measured over (null until two samples exist).
    pub rate_window_seconds: Option<f64>,
    pub xdp: Vec<XdpJson>,
    pub conntrack: Option<ConntrackJson>,
    pub conntrack_evictions: u64,
    pub table_rebuilds: u64,
    pub table_slots_written: u64,
    pub drops: Vec<DropJson>,
    pub kernel_passed: Vec<PassJson>,
    pub nat_replies: u64,
    pub icmp: Vec<IcmpJson>,
    pub announce: Vec<AnnounceJson>,
    pub conntrack_guard: GuardJson,
    pub services: Vec<ServiceJson>,
}

/// The conntrack guard: `active` while some CPU is above `conntrack_guard_rate`.
#[derive(Serialize)]
pub struct GuardJson {
    pub active: bool,
    pub flows_untracked: u64,
    pub activations: u64,
}

#[derive(Serialize)]
pub struct AnnounceJson {
    pub vip: String,
    pub protocol: String,
    pub wanted: bool,
    pub announced: bool,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct IcmpJson {
    pub event: &'static str,
    pub total: u64,
}

#[derive(Serialize)]
pub struct XdpJson {
    pub interface: String,
    pub mode: &'static str,
}

#[derive(Serialize)]
pub struct ConntrackJson {
    pub entries: u64,
    pub limit: u32,
    pub used_percent: f64,
    pub age_seconds: f64,
}

#[derive(Serialize)]
pub struct PassJson {
    pub reason: &'static str,
    pub total: u64,
}

#[derive(Serialize)]
pub struct DropJson {
    pub reason: &'static str,
    pub total: u64,
    pub per_second: Option<f64>,
}

#[derive(Serialize)]
pub struct ServiceJson {
    pub name: String,
    pub vip: String,
    pub protocol: &'static str,
    pub forwarding: &'static str,
    pub scheduler: &'static str,
    pub on_backup: bool,
    pub packets: u64,
    pub new_flows: u64,
    pub established: u64,
    pub repicked: u64,
    pub non_syn: u64,
    pub denied: u64,
    pub rate_limited: u64,
    pub packets_per_second: Option<f64>,
    pub new_flows_per_second: Option<f64>,
    pub backends: Vec<BackendJson>,
}

#[derive(Serialize)]
pub struct BackendJson {
    pub address: String,
    pub role: &'static str,
    pub state: &'static str,
    /// Unix time of the last health state change.
    pub since: f64,
    pub weight: u32,
    pub last_check: String,
    pub last_check_duration_ms: Option<f64>,
    pub state_changes: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
    pub new_flows_per_second: Option<f64>,
    /// Active connections (`xlb_backend_active_connections`).
    pub active_connections: u64,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The model behind the status page.
pub fn json(v: &View) -> StatusJson {
    // The snapshot's Instant, expressed as wall-clock time.
    let now = SystemTime::now() - Instant::now().saturating_duration_since(v.snap.at);
    StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        now: unix(now),
        rate_window_seconds: v.rates.map(|r| r.window.as_secs_f64()),
        xdp: v.snap.attached.iter().map(|(i, m)| XdpJson { interface: i.clone(), mode: m }).collect(),
        conntrack: v.conntrack.map(|c| ConntrackJson {
            entries: c.entries,
            limit: c.limit,
            used_percent: percent(c.entries, c.limit),
            age_seconds: v.snap.at.saturating_duration_since(c.at).as_secs_f64(),
        }),
        conntrack_evictions: v.snap.counter(counter::CT_EVICTED),
        table_rebuilds: v.snap.rebuilds,
        table_slots_written: v.snap.slots_written,
        drops: counter::drops()
            .enumerate()
            .map(|(pos, (i, reason))| DropJson {
                reason,
                total: v.snap.counter(i),
                per_second: v.rates.and_then(|r| r.drop(pos)),
            })
            .collect(),
        kernel_passed: PASS_REASONS.iter().map(|&(i, reason)| PassJson { reason, total: v.snap.counter(i) }).collect(),
        nat_replies: v.snap.counter(counter::REPLY_NAT),
        icmp: counter::ICMP_EVENTS.iter().map(|&(i, event)| IcmpJson { event, total: v.snap.counter(i) }).collect(),
        announce: v
            .snap
            .announcements
            .iter()
            .map(|a| AnnounceJson {
                vip: a.vip.to_string(),
                protocol: a.protocol.clone(),
                wanted: a.wanted,
                announced: a.announced,
                error: a.error.clone(),
            })
            .collect(),
        conntrack_guard: GuardJson {
            active: v.snap.guard_active,
            flows_untracked: v.snap.counter(counter::FLOWS_UNTRACKED),
            activations: v.snap.counter(counter::GUARD_ACTIVATIONS),
        },
        services: v.snap.services.iter().map(|s| service_json(v, s)).collect(),
    }
}

fn service_json(v: &View, s: &ServiceSample) -> ServiceJson {
    let r = v.rates.and_then(|r| r.service(&s.name));
    ServiceJson {
        name: s.name.clone(),
        vip: s.vip.to_string(),
        protocol: s.protocol,
        forwarding: s.forwarding,
        scheduler: s.scheduler,
        on_backup: s.on_backup,
        packets: s.stats.packets,
        new_flows: s.stats.new_flows,
        established: s.stats.established,
        repicked: s.stats.repicked,
        non_syn: s.stats.non_syn,
        denied: s.stats.denied,
        rate_limited: s.stats.rate_limited,
        packets_per_second: r.map(|r| r.packets),
        new_flows_per_second: r.map(|r| r.new_flows),
        backends: s.backends.iter().map(|b| backend_json(v, s, b)).collect(),
    }
}

fn backend_json(v: &View, s: &ServiceSample, b: &BackendSample) -> BackendJson {
    let r = v.rates.and_then(|r| r.backend(&s.name, b.address));
    BackendJson {
        address: b.address.to_string(),
        role: b.role.as_str(),
        state: b.state.as_str(),
        since: unix(b.since),
        weight: b.weight,
        last_check: b.last_check.clone(),
        last_check_duration_ms: b.last_check_duration.map(|d| d.as_secs_f64() * 1000.0),
        state_changes: b.transitions,
        packets: b.stats.packets,
        bytes: b.stats.bytes,
        new_flows: b.stats.new_flows,
        packets_per_second: r.map(|r| r.packets),
        bytes_per_second: r.map(|r| r.bytes),
        new_flows_per_second: r.map(|r| r.new_flows),
        active_connections: b.active,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitor::snapshot::tests::snapshot;

    fn view_parts() -> (Snapshot, Rates) {
        let prev = snapshot();
        let mut cur = prev.clone();
        cur.at = prev.at + Duration::from_secs(1);
        cur.services[0].backends[0].stats.packets += 2500;
        (cur.clone(), Rates::between(&prev, &cur).unwrap())
    }

    #[test]
    fn text_shows_states_rates_and_totals_last() {
        let (snap, rates) = view_parts();
        let t = text(&View { snap: &snap, rates: Some(&rates), conntrack: None });
        let row = |addr: &str| t.lines().find(|l| l.contains(addr)).unwrap_or_else(|| panic!("no {addr} in:\n{t}"));
        let up = row("198.18.1.11:80");
        assert!(up.contains(" primary ") && up.contains(" up "), "{up}");
        // NEW/S PKTS/S BYTES/S, then the totals NEW FLOWS PACKETS BYTES.
        let cols: Vec<&str> = up.split_whitespace().rev().take(6).collect();
        assert_eq!(cols, ["96000", "3460", "96", "0.0", "2500", "0.0"], "{up}");
        let down = row("198.18.1.12:80");
        assert!(down.contains(" down ") && down.contains("status 503"), "{down}");
        assert!(row("198.18.1.13:80").contains(" backup   drained "), "{t}");
        assert!(t.contains("conntrack entries: not counted yet, open flows evicted 260\n"), "{t}");
        assert!(t.contains("  fragment ") && t.contains("no_backend"), "{t}");
        assert!(t.contains("vip 198.18.0.10 (BIRD protocol xlb_198_18_0_10): announced\n"), "{t}");
        assert!(
            t.contains("vip 2001:db8::10 (BIRD protocol xlb_2001_db8__10): BIRD not told: cannot reach BIRD"),
            "{t}"
        );
        assert!(t.contains("conntrack guard: ACTIVE, flows untracked 240, activations 250"), "{t}");
    }

    #[test]
    fn text_without_rates_shows_dashes() {
        let snap = snapshot();
        let t = text(&View { snap: &snap, rates: None, conntrack: None });
        let row = t.lines().find(|l| l.contains("198.18.1.11:80")).unwrap();
        assert_eq!(row.split_whitespace().rev().nth(3), Some("-"), "{row}");
    }

    #[test]
    fn json_carries_what_the_page_shows() {
        let (snap, rates) = view_parts();
        let ct = ConntrackCount { entries: 50, limit: 100, at: snap.at, took: Duration::ZERO };
        let j = serde_json::to_value(json(&View { snap: &snap, rates: Some(&rates), conntrack: Some(&ct) })).unwrap();
        let b = &j["services"][0]["backends"];
        assert_eq!(b[0]["address"], "198.18.1.11:80");
        assert_eq!(b[0]["state"], "up");
        assert_eq!(b[0]["packets_per_second"], 2500.0);
        assert_eq!(b[1]["state"], "down");
        assert_eq!(b[1]["last_check_duration_ms"], 1.5);
        assert_eq!(b[2]["state"], "drained");
        assert_eq!(b[2]["role"], "backup");
        assert_eq!(j["services"][1]["vip"], "[2001:db8::10]:443");
        assert_eq!(j["drops"][4]["reason"], "no_backend");
        assert_eq!(j["drops"][4]["total"], 40);
        assert_eq!(j["conntrack"]["entries"], 50);
        assert_eq!(j["conntrack_evictions"], 260);
        assert_eq!(j["conntrack_guard"]["active"], true);
        assert_eq!(j["conntrack_guard"]["flows_untracked"], 240);
        assert_eq!(j["conntrack_guard"]["activations"], 250);
        assert_eq!(j["conntrack"]["used_percent"], 50.0);
        assert_eq!(j["kernel_passed"][1]["reason"], "ttl_expired");
        assert_eq!(j["kernel_passed"][1]["total"], snap.counter(counter::PASS_TTL));
        assert_eq!(j["nat_replies"], snap.counter(counter::REPLY_NAT));
        // ICMP drop reasons follow the others, in index order.
        assert_eq!(j["drops"][7]["reason"], "icmp_truncated");
        assert_eq!(j["drops"][7]["total"], snap.counter(counter::DROP_ICMP_TRUNCATED));
        assert_eq!(j["drops"][10]["reason"], "ping_rate_limited");
        assert_eq!(j["kernel_passed"][3]["reason"], "icmp");
        assert_eq!(j["icmp"][0]["event"], "to_backend");
        assert_eq!(j["icmp"][0]["total"], snap.counter(counter::ICMP_TO_BACKEND));
        assert_eq!(j["icmp"][2]["event"], "ping_answered");
        assert_eq!(j["xdp"][0]["mode"], "native");
        assert_eq!(j["announce"][0]["vip"], "198.18.0.10");
        assert_eq!(j["announce"][0]["announced"], true);
        assert_eq!(j["announce"][1]["protocol"], "xlb_2001_db8__10");
        assert_eq!(
            (&j["announce"][1]["announced"], &j["announce"][1]["error"]),
            (&false.into(), &"cannot reach BIRD".into())
        );
    }

    #[test]
    fn si_suffixes() {
        assert_eq!(si(None), "-");
        assert_eq!(si(Some(0.0)), "0.0");
        assert_eq!(si(Some(99.94)), "99.9");
        assert_eq!(si(Some(950.0)), "950");
        assert_eq!(si(Some(12_345.0)), "12.3k");
        assert_eq!(si(Some(4_560_000.0)), "4.56M");
    }
}
