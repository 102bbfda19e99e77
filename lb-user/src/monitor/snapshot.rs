//! A snapshot of the balancer's state and counters, read at one moment: what
//! every monitoring output (the status table and JSON, `/metrics`, rates) is
//! rendered from.
//!
//! Counters are the kernel's per-CPU values summed; a snapshot is taken under
//! the balancer's lock, quickly (a few map lookups per backend), and rendered
//! after the lock is released.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use lb_common::{counter, BackendStats, ServiceStats};

use crate::{
    balancer::{BackendState, Balancer, VipAnnouncement},
    config::Role,
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
    /// Active connections (`BACKEND_CONNS`).
    pub active: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSample {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: &'static str,
    pub forwarding: &'static str,
    /// Who picks new flows' backends: maglev, round_robin, least_conn.
    pub scheduler: &'static str,
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
    /// Some CPU's conntrack guard stopped tracking new flows in the last two seconds.
    pub guard_active: bool,
    /// Interface and XDP mode.
    pub attached: Vec<(String, &'static str)>,
    /// The VIPs announced through BIRD (empty without `[daemon.announce]`).
    pub announcements: Vec<VipAnnouncement>,
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
                        active: bal.dp.active_connections(b.slot),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            services.push(ServiceSample {
                name: s.cfg.name.clone(),
                vip: s.cfg.vip,
                protocol: s.cfg.protocol.as_str(),
                forwarding: s.cfg.forwarding.as_str(),
                scheduler: s.cfg.scheduler.as_str(),
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
            guard_active: bal.dp.guard_active()?,
            attached: bal.dp.attached().iter().map(|(i, m)| (i.clone(), *m)).collect(),
            announcements: bal.announcements.clone(),
        })
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }
}

/// Names of the `COUNTERS` events that pass packets to the kernel, as `reason` labels.
pub const PASS_REASONS: [(u32, &str); 4] = [
    (counter::PASS_NO_ROUTE, "no_route"),
    (counter::PASS_TTL, "ttl_expired"),
    (counter::PASS_NOT_VIP, "not_vip"),
    (counter::PASS_ICMP, "icmp"),
];

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
            active: stats.2 / 8,
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
                    scheduler: "maglev",
                    on_backup: false,
                    stats: ServiceStats {
                        packets: 1000,
                        established: 900,
                        new_flows: 100,
                        repicked: 2,
                        non_syn: 7,
                        denied: 3,
                        rate_limited: 4,
                    },
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
                    scheduler: "least_conn",
                    on_backup: true,
                    stats: ServiceStats::default(),
                    backends: vec![backend("[2001:db8:1::11]:443", Role::Backup, State::Up, (7, 700, 1))],
                },
            ],
            counters: (0..counter::NUM_COUNTERS as u64).map(|i| i * 10).collect(),
            rebuilds: 4,
            slots_written: 131_074,
            guard_active: true,
            attached: vec![("eth0".into(), "native"), ("eth1".into(), "generic")],
            announcements: vec![
                VipAnnouncement {
                    vip: "198.18.0.10".parse().unwrap(),
                    protocol: "xlb_198_18_0_10".into(),
                    wanted: true,
                    announced: true,
                    error: None,
                },
                VipAnnouncement {
                    vip: "2001:db8::10".parse().unwrap(),
                    protocol: "xlb_2001_db8__10".into(),
                    wanted: true,
                    announced: false,
                    error: Some("cannot reach BIRD".into()),
                },
            ],
        }
    }
}
