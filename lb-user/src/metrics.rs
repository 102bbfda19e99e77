//! Monitoring: a snapshot of the balancer's state and counters, its Prometheus
//! text exposition (format 0.0.4) for `/metrics`, and the daemon's monitoring
//! tasks (the rate sampler and the HTTP server of `daemon.metrics`).
//!
//! Counters are the kernel's per-CPU values summed; a snapshot is taken under
//! the balancer's lock, quickly (a few map lookups per backend), and rendered
//! after the lock is released.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use lb_common::{counter, BackendStats, ServiceStats};
use tokio::task::JoinHandle;

use crate::{
    balancer::{BackendState, Balancer},
    config::{DaemonConfig, Role},
    conntrack_count::ConntrackCount,
};

/// A backend's health as operators read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    /// Up, but taking no new flows (drained by the operator).
    Drained,
}

impl State {
    pub fn of(b: &BackendState) -> Self {
        match (b.healthy, b.drained) {
            (false, _) => State::Down,
            (true, true) => State::Drained,
            (true, false) => State::Up,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Drained => "drained",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendSample {
    pub address: SocketAddr,
    pub role: Role,
    pub weight: u32,
    pub state: State,
    /// When the health state last changed.
    pub since: SystemTime,
    pub last_check: String,
    pub last_check_duration: Option<Duration>,
    /// Health state changes since the backend was added.
    pub transitions: u64,
    /// Changes when the backend's slot (and its counters) is handed out anew.
    pub generation: u32,
    pub stats: BackendStats,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSample {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: &'static str,
    pub forwarding: &'static str,
    /// New flows go to the backup backends.
    pub on_backup: bool,
    pub stats: ServiceStats,
    pub backends: Vec<BackendSample>,
}

/// Everything the monitoring outputs show, read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub at: Instant,
    pub services: Vec<ServiceSample>,
    /// `COUNTERS` (drop reasons and events), summed over CPUs.
    pub counters: Vec<u64>,
    pub rebuilds: u64,
    pub slots_written: u64,
    /// Interface and XDP mode.
    pub attached: Vec<(String, &'static str)>,
}

impl Snapshot {
    /// Reads the balancer's state and the kernel's counters.
    pub fn collect(bal: &Balancer) -> anyhow::Result<Self> {
        let mut services = Vec::with_capacity(bal.services.len());
        for s in &bal.services {
            let backends = s
                .backends
                .iter()
                .map(|b| {
                    Ok(BackendSample {
                        address: b.cfg.address,
                        role: b.cfg.role,
                        weight: b.cfg.weight,
                        state: State::of(b),
                        since: b.since,
                        last_check: b.last_check.clone(),
                        last_check_duration: b.last_check_duration,
                        transitions: b.transitions,
                        generation: b.generation,
                        stats: bal.dp.backend_stats(b.slot)?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            services.push(ServiceSample {
                name: s.cfg.name.clone(),
                vip: s.cfg.vip,
                protocol: s.cfg.protocol.as_str(),
                forwarding: s.cfg.forwarding.as_str(),
                on_backup: s.on_backup,
                stats: bal.dp.service_stats(s.id)?,
                backends,
            });
        }
        Ok(Snapshot {
            at: Instant::now(),
            services,
            counters: bal.dp.counters()?,
            rebuilds: bal.rebuilds,
            slots_written: bal.slots_written,
            attached: bal.dp.attached().iter().map(|(i, m)| (i.clone(), *m)).collect(),
        })
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }
}

// ------------------------------------------------------------ Prometheus text

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

/// Names of the `COUNTERS` events that pass packets to the kernel, as `reason` labels.
const PASS_REASONS: [(u32, &str); 3] =
    [(counter::PASS_NO_ROUTE, "no_route"), (counter::PASS_TTL, "ttl_expired"), (counter::PASS_NOT_VIP, "not_vip")];

/// One per-backend metric: name, type, help and how to read it.
type BackendMetric = (&'static str, &'static str, &'static str, fn(&BackendSample) -> f64);

const BACKEND_METRICS: &[BackendMetric] = &[
    ("xlb_backend_packets_total", "counter", "Packets sent to the backend.", |b| b.stats.packets as f64),
    ("xlb_backend_bytes_total", "counter", "Bytes sent to the backend (frames as received).", |b| b.stats.bytes as f64),
    ("xlb_backend_new_flows_total", "counter", "New flows the backend was picked for.", |b| b.stats.new_flows as f64),
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

    e.family("xlb_service_info", "gauge", "Always 1, per service: its VIP, protocol and forwarding mode.");
    for s in &snap.services {
        let vip = s.vip.to_string();
        e.sample(
            "xlb_service_info",
            &[("service", &s.name), ("vip", &vip), ("protocol", s.protocol), ("forwarding", s.forwarding)],
            1,
        );
    }
    for (name, help, get) in SERVICE_COUNTERS {
        e.family(name, "counter", help);
        for s in &snap.services {
            e.sample(name, &[("service", &s.name)], get(&s.stats));
        }
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
    for (i, reason) in counter::DROP_NAMES.iter().enumerate() {
        e.sample("xlb_dropped_packets_total", &[("reason", reason)], snap.counter(i as u32));
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
            "Capacity of the conntrack table (LRU: the oldest flows are evicted beyond it).",
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

// ------------------------------------------------------------ daemon tasks

/// The daemon's monitoring tasks: the rate sampler and, unless
/// `daemon.metrics = ""`, the HTTP server for `/metrics` and the status page.
pub struct Monitor {
    tasks: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Binds `daemon.metrics` (an error names the address) and starts the tasks.
    /// The address is read at start only; a reload does not move it.
    pub async fn start(daemon: &DaemonConfig, bal: Arc<Mutex<Balancer>>) -> anyhow::Result<Self> {
        let conntrack = bal.lock().unwrap().dp.conntrack_fd();
        let conntrack = match conntrack {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("conntrack entries will not be counted: {e:#}");
                None
            }
        };
        let mut tasks = vec![tokio::spawn(crate::rates::sample(bal.clone(), conntrack))];
        if let Some(addr) = daemon.metrics {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding daemon.metrics address {addr} (it must be an address of this host that no other program uses; metrics = \"\" turns the endpoint off)")
            })?;
            log::info!("metrics on http://{addr}/metrics, status page on http://{addr}/");
            tasks.push(tokio::spawn(crate::http::serve(listener, bal)));
        }
        Ok(Monitor { tasks })
    }

    /// Stops the tasks and waits until they have let go of the balancer.
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn backend(addr: &str, role: Role, state: State, stats: (u64, u64, u64)) -> BackendSample {
        BackendSample {
            address: addr.parse().unwrap(),
            role,
            weight: 1,
            state,
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            last_check: "checks off".into(),
            last_check_duration: None,
            transitions: 0,
            generation: 1,
            stats: BackendStats { packets: stats.0, bytes: stats.1, new_flows: stats.2 },
        }
    }

    /// Two services: www (a primary up, a primary down, a backup drained)
    /// and a v6 one with a quote in its name.
    pub(crate) fn snapshot() -> Snapshot {
        let mut down = backend("198.18.1.12:80", Role::Primary, State::Down, (40, 4000, 4));
        down.transitions = 3;
        down.last_check = "status 503".into();
        down.last_check_duration = Some(Duration::from_micros(1500));
        Snapshot {
            at: Instant::now(),
            services: vec![
                ServiceSample {
                    name: "www".into(),
                    vip: "198.18.0.10:80".parse().unwrap(),
                    protocol: "tcp",
                    forwarding: "nat",
                    on_backup: false,
                    stats: ServiceStats { packets: 1000, established: 900, new_flows: 100, repicked: 2 },
                    backends: vec![
                        backend("198.18.1.11:80", Role::Primary, State::Up, (960, 96_000, 96)),
                        down,
                        backend("198.18.1.13:80", Role::Backup, State::Drained, (0, 0, 0)),
                    ],
                },
                ServiceSample {
                    name: "we\"b6".into(),
                    vip: "[2001:db8::10]:443".parse().unwrap(),
                    protocol: "tcp",
                    forwarding: "dsr",
                    on_backup: true,
                    stats: ServiceStats::default(),
                    backends: vec![backend("[2001:db8:1::11]:443", Role::Backup, State::Up, (7, 700, 1))],
                },
            ],
            counters: (0..counter::NUM_COUNTERS as u64).map(|i| i * 10).collect(),
            rebuilds: 4,
            slots_written: 131_074,
            attached: vec![("eth0".into(), "native"), ("eth1".into(), "generic")],
        }
    }

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
        // Quotes in label values are escaped.
        assert_eq!(value(&text, "xlb_service_on_backup{service=\"we\\\"b6\"}"), "1");
        assert_eq!(
            value(&text, "xlb_backend_packets_total{service=\"we\\\"b6\",backend=\"[2001:db8:1::11]:443\"}"),
            "7"
        );
        for (i, reason) in ["truncated", "fragment", "ipv6_extension", "bad_header", "no_backend"].iter().enumerate() {
            assert_eq!(
                value(&text, &format!("xlb_dropped_packets_total{{reason=\"{reason}\"}}")),
                (i * 10).to_string()
            );
        }
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
