//! The Prometheus text exposition (format 0.0.4) of a [`Snapshot`], served
//! at `/metrics`.

use std::{fmt::Write as _, time::SystemTime};

use lb_common::{counter, ServiceStats};

use super::snapshot::{BackendSample, ServiceSample, Snapshot, State, PASS_REASONS};
use crate::dataplane::conntrack_count::ConntrackCount;

/// Prometheus text format 0.0.4 content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes metric families: one `# HELP` and `# TYPE` each, then its samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One per-backend metric: name, type, help and how to read it.
type BackendMetric = (&'static str, &'static str, &'static str, fn(&BackendSample) -> f64);

const BACKEND_METRICS: &[BackendMetric] = &[
    ("xlb_backend_packets_total", "counter", "Packets sent to the backend.", |b| b.stats.packets as f64),
    ("xlb_backend_bytes_total", "counter", "Bytes sent to the backend (frames as received).", |b| b.stats.bytes as f64),
    ("xlb_backend_new_flows_total", "counter", "New flows the backend was picked for.", |b| b.stats.new_flows as f64),
    ("xlb_backend_active_connections", "gauge", "Connections open on the backend: assigned, not yet closed (FIN from both sides, or the client's in DSR; RST) nor expired.", |b| {
        b.active as f64
    }),
    ("xlb_backend_up", "gauge", "Health state: 1 up (established flows may continue to it), 0 down.", |b| {
        f64::from(u8::from(b.state != State::Down))
    }),
    ("xlb_backend_drained", "gauge", "1 when drained by the operator (no new flows), else 0.", |b| {
        f64::from(u8::from(b.state == State::Drained))
    }),
    ("xlb_backend_weight", "gauge", "Configured weight (0: no new flows).", |b| f64::from(b.weight)),
    (
        "xlb_backend_state_changes_total",
        "counter",
        "Health state changes (up->down, down->up) since the backend was added.",
        |b| b.transitions as f64,
    ),
    ("xlb_backend_state_since_timestamp_seconds", "gauge", "When the health state last changed (Unix time).", |b| {
        unix_seconds(b.since)
    }),
];

/// One per-service counter: name, help and how to read it.
type ServiceMetric = (&'static str, &'static str, fn(&ServiceStats) -> u64);

const SERVICE_COUNTERS: &[ServiceMetric] = &[
    ("xlb_service_packets_total", "Packets to the service's VIP and port.", |s| s.packets),
    ("xlb_service_new_flows_total", "Flows given a backend by the Maglev table (new, or re-picked).", |s| s.new_flows),
    (
        "xlb_service_established_packets_total",
        "Packets that found a usable conntrack entry (established-flow lookups).",
        |s| s.established,
    ),
    (
        "xlb_service_repicked_flows_total",
        "Conntrack entries found pointing at a backend no longer usable; the flow was re-picked.",
        |s| s.repicked,
    ),
];

/// The whole `/metrics` answer.
pub fn prometheus(snap: &Snapshot, conntrack: Option<&ConntrackCount>) -> String {
    let mut e = Exposition { out: String::with_capacity(4096) };
    e.family("xlb_build_info", "gauge", "Always 1; the running xlb's version.").sample(
        "xlb_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.family(
        "xlb_xdp_attached_info",
        "gauge",
        "Always 1, per interface the XDP program is attached to, with its mode.",
    );
    for (iface, mode) in &snap.attached {
        e.sample("xlb_xdp_attached_info", &[("interface", iface), ("mode", mode)], 1);
    }

    if !snap.announcements.is_empty() {
        e.family(
            "xlb_vip_announced",
            "gauge",
            "1 while the VIP is announced by BGP through BIRD (its protocol enabled), else 0.",
        );
        for a in &snap.announcements {
            let vip = a.vip.to_string();
            e.sample("xlb_vip_announced", &[("vip", &vip), ("protocol", &a.protocol)], u8::from(a.announced));
        }
    }

    e.family("xlb_service_info", "gauge", "Always 1, per service: its VIP, protocol, forwarding mode and scheduler.");
    for s in &snap.services {
        let vip = s.vip.to_string();
        e.sample(
            "xlb_service_info",
            &[
                ("service", &s.name),
                ("vip", &vip),
                ("protocol", s.protocol),
                ("forwarding", s.forwarding),
                ("scheduler", s.scheduler),
            ],
            1,
        );
    }
    for (name, help, get) in SERVICE_COUNTERS {
        e.family(name, "counter", help);
        for s in &snap.services {
            e.sample(name, &[("service", &s.name)], get(&s.stats));
        }
    }
    e.family(
        "xlb_service_conntrack_misses_total",
        "counter",
        "Packets of flows without a conntrack entry that make none, by kind (non_syn: a TCP packet that is not a \
         SYN, sent to its Maglev backend without tracking).",
    );
    for s in &snap.services {
        e.sample("xlb_service_conntrack_misses_total", &[("service", &s.name), ("kind", "non_syn")], s.stats.non_syn);
    }
    e.family(
        "xlb_service_refused_total",
        "counter",
        "Packets without a conntrack entry refused by the service's firewall, by reason (denied: its allow/deny \
         lists; rate_limited: new_flows_per_source). [daemon] deny counts only in xlb_dropped_packets_total.",
    );
    for s in &snap.services {
        e.sample("xlb_service_refused_total", &[("service", &s.name), ("reason", "denied")], s.stats.denied);
        e.sample(
            "xlb_service_refused_total",
            &[("service", &s.name), ("reason", "rate_limited")],
            s.stats.rate_limited,
        );
    }
    e.family("xlb_service_on_backup", "gauge", "1 while new flows go to the backup backends, else 0.");
    for s in &snap.services {
        e.sample("xlb_service_on_backup", &[("service", &s.name)], u8::from(s.on_backup));
    }

    backend_families(&mut e, snap);

    e.family(
        "xlb_dropped_packets_total",
        "counter",
        "Packets to a VIP dropped, by reason (no_backend: no backend up).",
    );
    for (i, reason) in counter::drops() {
        e.sample("xlb_dropped_packets_total", &[("reason", reason)], snap.counter(i));
    }
    e.family("xlb_kernel_passed_packets_total", "counter", "Packets handed to the kernel's stack, by reason.");
    for (i, reason) in PASS_REASONS {
        e.sample("xlb_kernel_passed_packets_total", &[("reason", reason)], snap.counter(i));
    }
    e.family("xlb_nat_replies_total", "counter", "Backend replies rewritten back to the VIP (NAT).").sample(
        "xlb_nat_replies_total",
        &[],
        snap.counter(counter::REPLY_NAT),
    );
    e.family(
        "xlb_icmp_packets_total",
        "counter",
        "ICMP about VIP flows sent on (to_backend: frag needed / packet too big to the flow's backend; \
         to_client: errors from the backend side rewritten to the VIP), echo requests to VIPs answered.",
    );
    for (i, event) in counter::ICMP_EVENTS {
        e.sample("xlb_icmp_packets_total", &[("event", event)], snap.counter(i));
    }
    e.family(
        "xlb_encap_dropped_packets_total",
        "counter",
        "ipip/gue packets dropped: too_big (beyond the egress MTU with the outer header), \
         no_source (no encap_source for the family).",
    );
    for (i, reason) in counter::ENCAP_DROPS {
        e.sample("xlb_encap_dropped_packets_total", &[("reason", reason)], snap.counter(i));
    }

    e.family(
        "xlb_conntrack_guard_active",
        "gauge",
        "1 while some CPU is above conntrack_guard_rate (new flows in the last two seconds): new flows are \
         forwarded by Maglev without a conntrack entry.",
    )
    .sample("xlb_conntrack_guard_active", &[], u64::from(snap.guard_active));
    e.family(
        "xlb_flows_untracked_total",
        "counter",
        "New flows the conntrack guard forwarded without a conntrack entry.",
    )
    .sample("xlb_flows_untracked_total", &[], snap.counter(counter::FLOWS_UNTRACKED));
    e.family(
        "xlb_conntrack_guard_activations_total",
        "counter",
        "One-second windows in which a CPU's conntrack guard stopped tracking new flows.",
    )
    .sample("xlb_conntrack_guard_activations_total", &[], snap.counter(counter::GUARD_ACTIVATIONS));
    e.family(
        "xlb_conntrack_evictions_total",
        "counter",
        "Open flows whose conntrack entry a new flow took (their bucket was full): they go on to their Maglev \
         backend without an entry. Growing: the table is too small for the flows (or a SYN flood; see the guard).",
    )
    .sample("xlb_conntrack_evictions_total", &[], snap.counter(counter::CT_EVICTED));

    if let Some(ct) = conntrack {
        e.family(
            "xlb_conntrack_entries",
            "gauge",
            "Flows in the conntrack table (counted every few seconds, not per scrape).",
        )
        .sample("xlb_conntrack_entries", &[], ct.entries);
        e.family(
            "xlb_conntrack_entries_limit",
            "gauge",
            "Capacity of the conntrack table (slots; a new flow in a full bucket evicts its least valuable entry).",
        )
        .sample("xlb_conntrack_entries_limit", &[], ct.limit);
    }
    e.family("xlb_table_rebuilds_total", "counter", "Maglev table rebuilds that changed at least one slot.").sample(
        "xlb_table_rebuilds_total",
        &[],
        snap.rebuilds,
    );
    e.family("xlb_table_slots_written_total", "counter", "Maglev table slots written to the kernel.").sample(
        "xlb_table_slots_written_total",
        &[],
        snap.slots_written,
    );
    e.out
}

fn backend_families(e: &mut Exposition, snap: &Snapshot) {
    let each = |f: &mut dyn FnMut(&ServiceSample, &BackendSample, String)| {
        for s in &snap.services {
            for b in &s.backends {
                f(s, b, b.address.to_string());
            }
        }
    };
    for (name, kind, help, get) in BACKEND_METRICS {
        e.family(name, kind, help);
        each(&mut |s, b, addr| {
            e.sample(name, &[("service", &s.name), ("backend", &addr)], get(b));
        });
    }
    e.family("xlb_backend_info", "gauge", "Always 1, per backend: its role (primary or backup).");
    each(&mut |s, b, addr| {
        e.sample("xlb_backend_info", &[("service", &s.name), ("backend", &addr), ("role", b.role.as_str())], 1);
    });
    e.family(
        "xlb_backend_last_check_duration_seconds",
        "gauge",
        "How long the last health check took (absent before the first check).",
    );
    each(&mut |s, b, addr| {
        if let Some(d) = b.last_check_duration {
            e.sample(
                "xlb_backend_last_check_duration_seconds",
                &[("service", &s.name), ("backend", &addr)],
                d.as_secs_f64(),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::monitor::snapshot::tests::snapshot;

    /// `name{labels} value` lines of the exposition, by name and labels.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {l:?}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn value(text: &str, key: &str) -> String {
        samples(text).into_iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no sample {key} in:\n{text}")).1
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = prometheus(&snapshot(), None);
        let mut declared = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge"].contains(&kind), "type {kind}");
                assert!(declared.insert(name.to_string()), "TYPE twice for {name}");
                assert!(!name.ends_with("_total") || kind == "counter", "{name} is a {kind}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "sample of undeclared {name}: {line}");
                assert!(name.starts_with("xlb_"), "{name}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn backend_service_and_drop_values() {
        let text = prometheus(&snapshot(), None);
        let b = |m: &str, addr: &str| value(&text, &format!("{m}{{service=\"www\",backend=\"{addr}\"}}"));
        assert_eq!(b("xlb_backend_packets_total", "198.18.1.11:80"), "960");
        assert_eq!(b("xlb_backend_bytes_total", "198.18.1.11:80"), "96000");
        assert_eq!(b("xlb_backend_new_flows_total", "198.18.1.11:80"), "96");
        assert_eq!(b("xlb_backend_up", "198.18.1.11:80"), "1");
        assert_eq!(value(&text, "xlb_vip_announced{vip=\"198.18.0.10\",protocol=\"xlb_198_18_0_10\"}"), "1");
        assert_eq!(value(&text, "xlb_vip_announced{vip=\"2001:db8::10\",protocol=\"xlb_2001_db8__10\"}"), "0");
        assert_eq!(b("xlb_backend_up", "198.18.1.12:80"), "0");
        assert_eq!(b("xlb_backend_up", "198.18.1.13:80"), "1");
        assert_eq!(b("xlb_backend_drained", "198.18.1.13:80"), "1");
        assert_eq!(b("xlb_backend_state_changes_total", "198.18.1.12:80"), "3");
        assert_eq!(b("xlb_backend_last_check_duration_seconds", "198.18.1.12:80"), "0.0015");
        assert_eq!(b("xlb_backend_state_since_timestamp_seconds", "198.18.1.11:80"), "1700000000");
        assert!(!text.contains("xlb_backend_last_check_duration_seconds{service=\"www\",backend=\"198.18.1.11:80\"}"));
        assert_eq!(value(&text, "xlb_backend_info{service=\"www\",backend=\"198.18.1.13:80\",role=\"backup\"}"), "1");
        assert_eq!(value(&text, "xlb_service_new_flows_total{service=\"www\"}"), "100");
        assert_eq!(value(&text, "xlb_service_established_packets_total{service=\"www\"}"), "900");
        assert_eq!(value(&text, "xlb_service_repicked_flows_total{service=\"www\"}"), "2");
        assert_eq!(value(&text, "xlb_service_conntrack_misses_total{service=\"www\",kind=\"non_syn\"}"), "7");
        assert_eq!(value(&text, "xlb_service_refused_total{service=\"www\",reason=\"denied\"}"), "3");
        assert_eq!(value(&text, "xlb_service_refused_total{service=\"www\",reason=\"rate_limited\"}"), "4");
        assert_eq!(value(&text, "xlb_dropped_packets_total{reason=\"closed_port\"}"), "130");
        // Quotes in label values are escaped.
        assert_eq!(value(&text, "xlb_service_on_backup{service=\"we\\\"b6\"}"), "1");
        assert_eq!(
            value(&text, "xlb_backend_packets_total{service=\"we\\\"b6\",backend=\"[2001:db8:1::11]:443\"}"),
            "7"
        );
        for (i, reason) in lb_common::counter::DROP_NAMES.iter().enumerate() {
            assert_eq!(
                value(&text, &format!("xlb_dropped_packets_total{{reason=\"{reason}\"}}")),
                (i * 10).to_string()
            );
        }
        assert_eq!(value(&text, "xlb_conntrack_guard_active"), "1");
        assert_eq!(value(&text, "xlb_flows_untracked_total"), "240");
        assert_eq!(value(&text, "xlb_conntrack_guard_activations_total"), "250");
        assert_eq!(value(&text, "xlb_conntrack_evictions_total"), "260");
        // The snapshot holds 10 * index in each counter: icmp_unknown_flow is drop 9.
        assert_eq!(value(&text, "xlb_dropped_packets_total{reason=\"icmp_unknown_flow\"}"), "90");
        assert_eq!(value(&text, "xlb_icmp_packets_total{event=\"to_client\"}"), "210");
        assert_eq!(value(&text, "xlb_kernel_passed_packets_total{reason=\"icmp\"}"), "230");
        assert_eq!(value(&text, "xlb_xdp_attached_info{interface=\"eth1\",mode=\"generic\"}"), "1");
        assert_eq!(value(&text, "xlb_table_slots_written_total"), "131074");
        assert_eq!(value(&text, &format!("xlb_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), "1");
        assert!(!text.contains("xlb_conntrack_entries"), "no conntrack figures before the first count");
    }

    #[test]
    fn conntrack_entries_and_limit() {
        let ct = ConntrackCount { entries: 123, limit: 65536, at: Instant::now(), took: Duration::ZERO };
        let text = prometheus(&snapshot(), Some(&ct));
        assert_eq!(value(&text, "xlb_conntrack_entries"), "123");
        assert_eq!(value(&text, "xlb_conntrack_entries_limit"), "65536");
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
