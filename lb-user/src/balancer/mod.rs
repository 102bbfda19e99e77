//! The balancer's state: which services and backends exist, which slots and
//! table regions they hold in the maps, which backends take new flows, and
//! the Maglev tables written to the kernel.
//!
//! Every change (start, reload, health, drain) goes through
//! [`Balancer::sync_service`], which writes only what differs, in an order
//! that never lets a packet reach a backend outside the configured set nor
//! find a slot that names a backend it may not use: a backend is written
//! (and marked up) before any table slot points at it, and it is marked
//! down only after no slot points at it any more. The writes go through the
//! [`Tables`] trait, so that order is tested without the kernel.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use anyhow::{bail, Context as _};
use lb_common::{
    addr_v4, addr_v6, Backend, NextHop, Service, VipKey, BACKEND_F_UP, FAMILY_V4, FAMILY_V6, MAX_BACKENDS,
    MAX_SERVICES, NO_BACKEND, SCHED_HALF, SCHED_REGION, SERVICE_F_DSR, SERVICE_F_GUE, SERVICE_F_IPIP,
    SERVICE_F_LEAST_CONN, SERVICE_F_PING, SERVICE_F_ROUND_ROBIN, SETTINGS_F_NAT,
};
use lb_common::{
    SourceRuleKey, RULE_ALLOW, RULE_DENY, SCOPE_DAEMON_V4, SCOPE_DAEMON_V6, SERVICE_F_ALLOW_LIST, SERVICE_F_FIREWALL,
    SERVICE_F_RATE_LIMIT,
};

pub use self::tables::Tables;
use crate::{
    config::{BackendConfig, CheckKind, Cidr, ClosedPorts, Config, Forwarding, HealthConfig, Scheduler, ServiceConfig},
    dataplane::{Dataplane, RuleId, Sizes},
    health::{
        hysteresis::{Hysteresis, Step},
        Probe, Target,
    },
    plan,
};

mod tables;

/// Address words, port (network order) and family of a socket address, as the maps hold them.
pub fn map_addr(a: &SocketAddr) -> ([u32; 4], u16, u8) {
    match a {
        SocketAddr::V4(v4) => (addr_v4(v4.ip().octets()), v4.port().to_be(), FAMILY_V4),
        SocketAddr::V6(v6) => (addr_v6(v6.ip().octets()), v6.port().to_be(), FAMILY_V6),
    }
}

/// `Service::flags` of a service: ipip and gue also carry `SERVICE_F_DSR` (the
/// backend answers directly: no NAT state, no reply path).
pub fn service_flags(svc: &ServiceConfig) -> u32 {
    let forwarding = match svc.forwarding {
        Forwarding::Nat => 0,
        Forwarding::Dsr => SERVICE_F_DSR,
        Forwarding::Ipip => SERVICE_F_DSR | SERVICE_F_IPIP,
        Forwarding::Gue => SERVICE_F_DSR | SERVICE_F_GUE,
    };
    let scheduler = match svc.scheduler {
        Scheduler::Maglev => 0,
        Scheduler::RoundRobin => SERVICE_F_ROUND_ROBIN,
        Scheduler::LeastConn => SERVICE_F_LEAST_CONN,
    };
    forwarding | scheduler | if svc.answer_ping { SERVICE_F_PING } else { 0 }
}

pub fn vip_key(svc: &ServiceConfig) -> VipKey {
    let (addr, port, family) = map_addr(&svc.vip);
    VipKey { addr, port, proto: svc.protocol.number(), family }
}

/// One backend of a service.
#[derive(Clone, Debug)]
pub struct BackendState {
    pub cfg: BackendConfig,
    /// Index in `BACKENDS` / `BACKEND_STATS`.
    pub slot: u32,
    pub generation: u32,
    /// Health as last decided by the checker (true when checks are off).
    pub healthy: bool,
    /// Drained by the operator: no new flows, established ones continue.
    pub drained: bool,
    /// When `healthy` last changed.
    pub since: SystemTime,
    /// Last check result, for status ("ok", "timeout", "refused", "status 503", ...).
    pub last_check: String,
    /// How long the last check took (None before the first check).
    pub last_check_duration: Option<std::time::Duration>,
    /// Health state changes (up->down and down->up) since the backend was added.
    pub transitions: u64,
    /// Its check history (rise/fall hysteresis): until its first check it
    /// is assumed up, and the first check decides at once.
    pub checks: Hysteresis,
    /// Egress interface and MACs, resolved by the daemon (0: ask the FIB).
    pub next_hop: NextHop,
}

impl BackendState {
    /// The service's check settings changed: the new checks start afresh.
    /// With checks off a backend counts as healthy.
    fn restart_checks(&mut self, check: &CheckKind) {
        self.checks.restart();
        if *check == CheckKind::None {
            if !self.healthy {
                self.healthy = true;
                self.since = SystemTime::now();
                self.transitions += 1;
            }
            self.last_check = "checks off".into();
        }
    }

    /// Established flows may continue to it.
    pub fn up(&self) -> bool {
        self.healthy
    }
}

#[derive(Clone, Debug)]
pub struct ServiceState {
    pub cfg: ServiceConfig,
    pub key: VipKey,
    /// Index in `SERVICE_STATS`, and the region of `RING` it owns.
    pub id: u32,
    pub backends: Vec<BackendState>,
    /// The Maglev table as written to the kernel (backend slots).
    pub ring: Vec<u32>,
    /// New flows go to the backups (no primary up, or no preemption).
    pub on_backup: bool,
    /// Some backend takes new flows.
    pub serving: bool,
    /// round_robin / least_conn: the list in `SCHED_SLOTS` the service points at
    /// (`plan::sched_list`), and which half of its region holds it.
    pub sched: Vec<u32>,
    pub sched_half: u32,
    /// `sched` has been written (else the next sync writes it).
    pub sched_written: bool,
}

impl ServiceState {
    pub fn ring_offset(&self, stride: u32) -> u32 {
        self.id * stride
    }

    /// Where half `half` of the service's region in `SCHED_SLOTS` starts.
    pub fn sched_offset(&self, half: u32) -> u32 {
        self.id * SCHED_REGION + half * SCHED_HALF
    }
}

/// The balancer over the maps it writes (`T`: the kernel's, or a test's).
pub struct Balancer<T = Dataplane> {
    pub dp: T,
    pub services: Vec<ServiceState>,
    /// Slots of `RING` per service (the largest table size at start).
    stride: u32,
    free_ids: Vec<u32>,
    free_slots: Vec<u32>,
    next_generation: u32,
    /// Total table slots written since start (for metrics and tests).
    pub slots_written: u64,
    /// Conntrack idle timeouts in ticks, as last written (the sweeper uses the same).
    pub conntrack_ticks: [u32; lb_common::ct::NUM_TIMEOUTS as usize],
    /// Table rebuilds that changed at least one slot, since start.
    pub rebuilds: u64,
    /// What pinned maps taken over at start held, until the first `apply`.
    seed: Option<Seed>,
    /// The VIPs and what BIRD was told of them (`[daemon.announce]`; written
    /// by the daemon's announcer, empty without one).
    pub announcements: Vec<VipAnnouncement>,
    /// `[daemon] deny` has IPv4 / IPv6 entries: every service of that family searches `SOURCE_RULES`.
    daemon_deny: (bool, bool),
}

/// One VIP address and what BIRD was told about it (`daemon::announce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipAnnouncement {
    pub vip: IpAddr,
    /// The BIRD protocol that announces it.
    pub protocol: String,
    /// Some service on this address has a backend taking new flows.
    pub wanted: bool,
    /// BIRD confirmed the protocol enabled (the route is exported).
    pub announced: bool,
    /// The last failure to tell BIRD, if the last attempt failed.
    pub error: Option<String>,
}

/// The `SOURCE_RULES` entry of `c` in `scope`.
fn rule_id(scope: u32, c: &Cidr) -> RuleId {
    let (addr, ..) = map_addr(&SocketAddr::new(c.addr, 0));
    (32 + u32::from(c.len), SourceRuleKey { scope: scope.to_be(), addr })
}

/// Every rule of `services` (by id) and `[daemon] deny`: one per prefix, deny where a
/// prefix is in both lists (deny wins at equal length).
pub fn source_rules<'a>(
    services: impl Iterator<Item = (u32, &'a ServiceConfig)>,
    daemon_deny: &[Cidr],
) -> HashMap<RuleId, u32> {
    let mut rules = HashMap::new();
    for (id, s) in services {
        for c in &s.allow {
            rules.entry(rule_id(id, c)).or_insert(RULE_ALLOW);
        }
        for c in &s.deny {
            rules.insert(rule_id(id, c), RULE_DENY);
        }
    }
    for c in daemon_deny {
        let scope = if c.addr.is_ipv4() { SCOPE_DAEMON_V4 } else { SCOPE_DAEMON_V6 };
        rules.insert(rule_id(scope, c), RULE_DENY);
    }
    rules
}

/// `Service::flags`, `flow_cost_ns` and `flow_burst` of the firewall.
fn firewall_fields(cfg: &ServiceConfig, daemon_deny: (bool, bool)) -> (u32, u32, u32) {
    let daemon = if cfg.vip.is_ipv4() { daemon_deny.0 } else { daemon_deny.1 };
    let mut flags = 0;
    if daemon || !cfg.allow.is_empty() || !cfg.deny.is_empty() {
        flags |= SERVICE_F_FIREWALL;
    }
    if !cfg.allow.is_empty() {
        flags |= SERVICE_F_ALLOW_LIST;
    }
    match cfg.new_flows_per_source {
        Some(r) => (flags | SERVICE_F_RATE_LIMIT, (1_000_000_000 / r.rate.max(1)).max(1), r.burst),
        None => (flags, 0, 0),
    }
}

/// A backend as the maps name it: (service id, address, port, family).
type SeedKey = (u32, [u32; 4], u16, u8);
/// What a backend had: (slot, generation, up, next hop).
type SeedBackend = (u32, u32, bool, NextHop);

/// The services and backends a daemon found in the pinned maps it took
/// over: each configured one keeps its id, slot and generation (so tracked
/// flows stay valid), its health and its drain.
#[derive(Debug, Default)]
struct Seed {
    /// Service id, and the half of its `SCHED_SLOTS` region its entry pointed at.
    services: HashMap<VipKey, (u32, u32)>,
    backends: HashMap<SeedKey, SeedBackend>,
    /// (service name, backend address:port).
    drains: Vec<(String, String)>,
}

impl Balancer {
    /// Loads the program with maps sized for `cfg` (and room to grow on reload).
    pub fn load(cfg: &Config) -> anyhow::Result<Self> {
        let (stride, regions) = Self::table_room(cfg);
        let dp =
            Dataplane::load(Sizes { conntrack_entries: cfg.daemon.conntrack_entries, ring_entries: stride * regions })?;
        Ok(Self::new(dp, stride, regions))
    }

    /// Loads `object` with its maps and XDP links pinned in the config's
    /// `pin_path`: what a previous daemon pinned there is taken over (maps
    /// that match reused, tables and health adopted; see `dataplane::pins`).
    pub fn load_pinned(cfg: &Config, config_path: &std::path::Path, object: &[u8]) -> anyhow::Result<Self> {
        use crate::dataplane::pins::{self, Fate};
        let (stride, regions) = Self::table_room(cfg);
        let sizes = Sizes { conntrack_entries: cfg.daemon.conntrack_entries, ring_entries: stride * regions };
        let who = pins::Identity {
            config: std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf()),
            interfaces: cfg.daemon.interfaces.clone(),
        };
        let dir = &cfg.daemon.pin_path;
        let plan = pins::prepare(dir, &who, object, &Dataplane::size_overrides(sizes))?;
        let previous = plan.previous.clone();
        match &previous {
            Some(prev) => {
                let name = |m: &pins::PinnedMap| m.name.clone();
                let reused: Vec<String> =
                    plan.maps.iter().filter(|m| matches!(m.fate, Fate::Reused)).map(name).collect();
                let new: Vec<String> = plan.maps.iter().filter(|m| matches!(m.fate, Fate::New)).map(name).collect();
                log::info!(
                    "taking over the data path pinned in {} (left by {}): {} maps reused{}",
                    dir.display(),
                    prev.config,
                    reused.len(),
                    if new.is_empty() { String::new() } else { format!(", new maps: {}", new.join(", ")) }
                );
                for m in &plan.maps {
                    if let Fate::Replaced { why, .. } = &m.fate {
                        log::warn!("map {}: the pinned map does not match this program ({why}): recreating it", m.name);
                    }
                }
            }
            None => log::info!("pinning maps and XDP links in {}", dir.display()),
        }
        let dp = Dataplane::load_with(sizes, object, Some(plan))?;
        let mut bal = Self::new(dp, stride, regions);
        if let Some(prev) = previous {
            let tables = bal.dp.adopted_tables()?;
            log::info!(
                "adopting {} services and {} backends from the pinned tables ({} drained)",
                tables.services.len(),
                tables.backends.len(),
                prev.drains.len()
            );
            bal.adopt(&tables, prev.drains);
        }
        Ok(bal)
    }

    /// Each backend's slot and generation (what a conntrack entry must name to count).
    pub fn backend_slots(&self) -> HashMap<u32, u32> {
        self.services.iter().flat_map(|s| s.backends.iter().map(|b| (b.slot, b.generation))).collect()
    }

    /// Resolves and writes next hops now (blocking: runs `ip`).
    pub fn refresh_next_hops(&mut self) -> anyhow::Result<usize> {
        let hops = crate::dataplane::neigh::resolve(&self.backend_ips());
        self.set_next_hops(&hops)
    }
}

impl<T> Balancer<T> {
    /// Every VIP address of the services, and whether it should be announced
    /// (`[daemon.announce]`): some service on it has a backend taking new
    /// flows that its health checks have passed at least once (checks off: up
    /// is enough). A new daemon's backends count as up before their first
    /// check; a VIP is not announced on that guess.
    pub fn vips_to_announce(&self) -> std::collections::BTreeMap<IpAddr, bool> {
        let mut m = std::collections::BTreeMap::new();
        for s in &self.services {
            let checks_off = s.cfg.health.check == CheckKind::None;
            let proven = s.backends.iter().any(|b| b.up() && !b.drained && (checks_off || b.checks.checked));
            *m.entry(s.cfg.vip.ip()).or_insert(false) |= s.serving && proven;
        }
        m
    }
}

impl<T: Tables> Balancer<T> {
    /// Slots of `RING` per service region and the number of regions for
    /// `cfg`, with room for more services on reload.
    pub fn table_room(cfg: &Config) -> (u32, u32) {
        let stride = cfg.services.iter().map(|s| s.table_size).max().unwrap_or(lb_common::DEFAULT_TABLE_SIZE);
        (stride, (cfg.services.len() as u32 * 2).clamp(16, MAX_SERVICES))
    }

    /// A balancer with nothing configured yet over `dp`, whose `RING` holds
    /// `regions` tables of `stride` slots.
    pub fn new(dp: T, stride: u32, regions: u32) -> Self {
        Self {
            dp,
            services: Vec::new(),
            stride,
            free_ids: (0..regions).rev().collect(),
            free_slots: (0..MAX_BACKENDS).rev().collect(),
            next_generation: 1,
            slots_written: 0,
            conntrack_ticks: crate::config::ConntrackTimeouts::default().ticks(),
            rebuilds: 0,
            seed: None,
            announcements: Vec::new(),
            daemon_deny: (false, false),
        }
    }

    /// Before the first `apply`: takes over what a previous daemon left in
    /// the maps. Its ids and slots are held back until `apply` has given
    /// them to the configured services and backends that match.
    pub fn adopt(&mut self, tables: &crate::dataplane::Adopted, drains: Vec<(String, String)>) {
        let mut seed = Seed { drains, ..Seed::default() };
        for (key, svc) in &tables.services {
            if let Some(i) = self.free_ids.iter().position(|&id| id == svc.id) {
                self.free_ids.remove(i);
                let half = u32::from(svc.sched_offset >= svc.id * SCHED_REGION + SCHED_HALF);
                seed.services.insert(*key, (svc.id, half));
            }
        }
        for (slot, be) in &tables.backends {
            if let Some(i) = self.free_slots.iter().position(|s| s == slot) {
                self.free_slots.remove(i);
                seed.backends.insert(
                    (be.service, be.addr, be.port, be.family),
                    (*slot, be.generation, be.flags & BACKEND_F_UP != 0, be.next_hop),
                );
                self.next_generation = self.next_generation.max(be.generation.wrapping_add(1).max(1));
            }
        }
        self.seed = Some(seed);
    }

    /// After the first `apply`: ids and slots taken over but not given out are free again.
    fn release_seed(&mut self) {
        let Some(seed) = self.seed.take() else { return };
        self.free_ids.extend(seed.services.into_values().map(|(id, _)| id));
        self.free_slots.extend(seed.backends.into_values().map(|(slot, ..)| slot));
        self.free_ids.sort_unstable_by(|a, b| b.cmp(a));
        self.free_slots.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The drained backends: (service name, address:port).
    pub fn drains(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .flat_map(|s| {
                s.backends.iter().filter(|b| b.drained).map(|b| (s.cfg.name.clone(), b.cfg.address.to_string()))
            })
            .collect()
    }

    /// Makes the running state match `cfg`: services and backends are added,
    /// kept (with their health, slots and flows) or removed. Checks everything
    /// that could fail before the first write.
    pub fn apply(&mut self, cfg: &Config) -> anyhow::Result<()> {
        for s in &cfg.services {
            if s.table_size > self.stride {
                bail!(
                    "service {}: table_size {} is larger than the tables allocated at start ({}); restart xlb to grow them",
                    s.name, s.table_size, self.stride
                );
            }
        }
        let kept = cfg.services.iter().filter(|s| self.find(&vip_key(s)).is_some()).count();
        let new_services = cfg.services.len() - kept;
        if new_services > self.free_ids.len() + (self.services.len() - kept) {
            bail!("too many services for the tables allocated at start; restart xlb");
        }

        self.conntrack_ticks = cfg.daemon.conntrack_timeouts.ticks();
        self.dp.set_conntrack_timeouts(self.conntrack_ticks)?;
        // Outer sources and the GUE port before any service that encapsulates is published.
        self.dp.set_encap(&cfg.daemon)?;
        let mut old = std::mem::take(&mut self.services);
        let mut next = Vec::with_capacity(cfg.services.len());
        let mut removed_backends = Vec::new();
        for s in &cfg.services {
            let key = vip_key(s);
            let st = match old.iter().position(|o| o.key == key) {
                Some(i) => {
                    let mut st = old.swap_remove(i);
                    let mut backends = Vec::with_capacity(s.backends.len());
                    for b in &s.backends {
                        match st.backends.iter().position(|o| o.cfg.address == b.address) {
                            Some(j) => {
                                let mut be = st.backends.swap_remove(j);
                                be.cfg = b.clone();
                                if s.health != st.cfg.health {
                                    be.restart_checks(&s.health.check);
                                }
                                backends.push(be);
                            }
                            None => backends.push(self.new_backend(b, &s.health.check, st.id, &s.name)?),
                        }
                    }
                    removed_backends.append(&mut st.backends);
                    st.backends = backends;
                    st.cfg = s.clone();
                    st
                }
                None => {
                    let seeded = self.seed.as_mut().and_then(|seed| seed.services.remove(&key));
                    // The first list goes to the half the previous daemon's entry did not name.
                    let (id, sched_half) = match seeded {
                        Some(seeded) => seeded,
                        None => (self.free_ids.pop().context("no free service id")?, 1),
                    };
                    let backends = s
                        .backends
                        .iter()
                        .map(|b| self.new_backend(b, &s.health.check, id, &s.name))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    ServiceState {
                        cfg: s.clone(),
                        key,
                        id,
                        backends,
                        ring: Vec::new(),
                        on_backup: false,
                        serving: false,
                        sched: Vec::new(),
                        sched_half,
                        sched_written: false,
                    }
                }
            };
            next.push(st);
        }
        self.services = next;
        // Services no longer configured: first unpublish them, then their backends.
        for gone in old {
            let still_used =
                self.services.iter().any(|s| s.key.addr == gone.key.addr && s.key.family == gone.key.family);
            self.dp.remove_service(&gone.key, still_used)?;
            self.free_ids.push(gone.id);
            removed_backends.extend(gone.backends);
            log::info!("service {} ({}) removed", gone.cfg.name, gone.cfg.vip);
        }
        // Source rules are written before the service flags that make packets search them
        // (and removed after): a service never searches a half-written list.
        let rules = source_rules(self.services.iter().map(|s| (s.id, &s.cfg)), &cfg.daemon.deny);
        self.dp.sync_source_rules(&rules, false)?;
        self.daemon_deny =
            (cfg.daemon.deny.iter().any(|c| c.addr.is_ipv4()), cfg.daemon.deny.iter().any(|c| c.addr.is_ipv6()));
        self.dp.set_closed_drop(cfg.daemon.closed_ports == ClosedPorts::Drop)?;
        // New backends exist in BACKENDS before any table slot names them.
        for svc in &self.services {
            for be in &svc.backends {
                self.dp.set_backend(be.slot, &backend_entry(svc, be))?;
            }
        }
        for i in 0..self.services.len() {
            self.sync_service(i)?;
        }
        for be in removed_backends {
            self.dp.set_backend(be.slot, &Backend::default())?;
            self.free_slots.push(be.slot);
        }
        let nat = self.services.iter().any(|s| s.cfg.forwarding == Forwarding::Nat);
        self.dp.set_flags(if nat { SETTINGS_F_NAT } else { 0 })?;
        // Rules no longer wanted go once no service flag asks for them.
        self.dp.sync_source_rules(&rules, true)?;
        self.release_seed();
        Ok(())
    }

    fn new_backend(
        &mut self,
        b: &BackendConfig,
        check: &CheckKind,
        service: u32,
        service_name: &str,
    ) -> anyhow::Result<BackendState> {
        let (addr, port, family) = map_addr(&b.address);
        let seeded = self.seed.as_mut().and_then(|seed| {
            let found = seed.backends.remove(&(service, addr, port, family))?;
            let drained = seed.drains.iter().any(|(s, a)| s == service_name && *a == b.address.to_string());
            Some((found, drained))
        });
        if let Some(((slot, generation, up, next_hop), drained)) = seeded {
            // Taken over: the same slot and generation, so its tracked flows
            // stay valid; the health the previous daemon decided (its checks
            // then go on with rise/fall, not "first check decides").
            return Ok(BackendState {
                cfg: b.clone(),
                slot,
                generation,
                healthy: up,
                drained,
                since: SystemTime::now(),
                last_check: match check {
                    CheckKind::None => "checks off".into(),
                    _ => "not checked yet".into(),
                },
                last_check_duration: None,
                transitions: 0,
                checks: Hysteresis { checked: true, ..Hysteresis::default() },
                next_hop,
            });
        }
        let slot = self.free_slots.pop().context("no free backend slot (MAX_BACKENDS reached)")?;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.dp.reset_backend_stats(slot)?;
        Ok(BackendState {
            cfg: b.clone(),
            slot,
            generation,
            // Like HAProxy, a new server is assumed up until checks say otherwise.
            healthy: true,
            drained: false,
            since: SystemTime::now(),
            last_check: match check {
                CheckKind::None => "checks off".into(),
                _ => "not checked yet".into(),
            },
            last_check_duration: None,
            transitions: 0,
            checks: Hysteresis::default(),
            next_hop: NextHop::default(),
        })
    }

    /// Every backend's address (for next-hop resolution).
    pub fn backend_ips(&self) -> Vec<IpAddr> {
        self.services.iter().flat_map(|s| s.backends.iter().map(|b| b.cfg.address.ip())).collect()
    }

    /// Writes the next hops that changed; a backend missing from `hops` goes
    /// back to FIB lookups. Returns how many entries changed.
    pub fn set_next_hops(&mut self, hops: &HashMap<IpAddr, NextHop>) -> anyhow::Result<usize> {
        let mut changed = 0;
        for i in 0..self.services.len() {
            for j in 0..self.services[i].backends.len() {
                let be = &self.services[i].backends[j];
                let hop = hops.get(&be.cfg.address.ip()).copied().unwrap_or_default();
                if hop != be.next_hop {
                    self.services[i].backends[j].next_hop = hop;
                    let entry = backend_entry(&self.services[i], &self.services[i].backends[j]);
                    self.dp.set_backend(self.services[i].backends[j].slot, &entry)?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// The checks the backends need: one per backend of a service whose
    /// checks are on.
    pub fn health_targets(&self) -> HashMap<Target, HealthConfig> {
        self.services
            .iter()
            .filter(|s| s.cfg.health.check != CheckKind::None)
            .flat_map(|s| {
                s.backends.iter().map(|be| (Target { service: s.id, address: be.cfg.address }, s.cfg.health.clone()))
            })
            .collect()
    }

    /// Applies one health check result of backend `address` in service `id`
    /// with rise/fall hysteresis; rewrites the service's table when the
    /// backend changes state. Returns false when no such backend exists any
    /// more (its check task should stop).
    pub fn record_check(&mut self, id: u32, address: SocketAddr, probe: &Probe) -> anyhow::Result<bool> {
        let Some(i) = self.services.iter().position(|s| s.id == id) else { return Ok(false) };
        let svc = &mut self.services[i];
        let Some(be) = svc.backends.iter_mut().find(|b| b.cfg.address == address) else { return Ok(false) };
        let (rise, fall) = (svc.cfg.health.rise, svc.cfg.health.fall);
        let name = format!("{}/{}", svc.cfg.name, address);
        let took = probe.duration.as_secs_f64() * 1000.0;
        be.last_check = probe.detail.clone();
        be.last_check_duration = Some(probe.duration);
        let step = be.checks.record(be.healthy, probe.ok, rise, fall);
        let detail = &probe.detail;
        match step {
            Step::Steady | Step::StillDown(2..) => {}
            Step::Rising(n) => log::info!("backend {name}: check ok ({n} of {rise} to come up)"),
            Step::Up => log::info!("backend {name} is UP after {rise} successful checks ({took:.1} ms)"),
            Step::Falling(n) => {
                log::info!("backend {name}: check failed: {detail} ({took:.1} ms) ({n} of {fall} to go down)")
            }
            Step::StillDown(_) => log::info!("backend {name}: check failed: {detail} ({took:.1} ms)"),
            Step::DownAtFirstCheck => {
                log::warn!("backend {name} is DOWN: its first check failed: {detail} ({took:.1} ms)")
            }
            Step::Down => log::warn!("backend {name} is DOWN after {fall} failed checks: {detail} ({took:.1} ms)"),
        }
        let changed = step.changed();
        if changed {
            be.healthy = !be.healthy;
            be.since = SystemTime::now();
            be.transitions += 1;
            self.sync_service(i)?;
        }
        Ok(true)
    }

    /// Drains (no new flows; established ones continue) or re-enables a
    /// backend, named by `address:port`, or by address alone when that is
    /// unique in the service.
    pub fn set_drained(&mut self, service: &str, backend: &str, drained: bool) -> anyhow::Result<String> {
        let i = self.services.iter().position(|s| s.cfg.name == service).with_context(|| {
            let names: Vec<&str> = self.services.iter().map(|s| s.cfg.name.as_str()).collect();
            format!("no service named {service:?}; services: {}", names.join(", "))
        })?;
        let svc = &self.services[i];
        let matches: Vec<usize> = svc
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| match backend.parse::<SocketAddr>() {
                Ok(a) => b.cfg.address == a,
                Err(_) => backend.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() == Ok(b.cfg.address.ip()),
            })
            .map(|(j, _)| j)
            .collect();
        let list = || svc.backends.iter().map(|b| b.cfg.id()).collect::<Vec<_>>().join(", ");
        let j = match matches[..] {
            [j] => j,
            [] => bail!("service {service} has no backend {backend}; its backends: {}", list()),
            _ => bail!("{backend} names several backends of service {service}; give address:port ({})", list()),
        };
        let be = &mut self.services[i].backends[j];
        let id = be.cfg.id();
        if be.drained == drained {
            return Ok(format!("{service} {id} was already {}\n", if drained { "drained" } else { "enabled" }));
        }
        be.drained = drained;
        self.sync_service(i)?;
        let note = if drained {
            log::warn!("backend {service}/{id} drained by the operator: no new flows, established flows continue");
            "drained: no new flows; established flows continue"
        } else {
            log::info!("backend {service}/{id} enabled by the operator");
            "enabled: takes new flows again while healthy"
        };
        Ok(format!("{service} {id} {note}\n"))
    }

    fn find(&self, key: &VipKey) -> Option<usize> {
        self.services.iter().position(|s| s.key == *key)
    }

    /// Recomputes service `i`'s table from its backends' states and writes
    /// what changed, in this order: the backends that are up (so a slot
    /// never names a backend not yet marked up), the table slots, the
    /// service entry, then the backends that are down (so they are marked
    /// down only once no slot names them).
    pub fn sync_service(&mut self, i: usize) -> anyhow::Result<()> {
        let stride = self.stride;
        let svc = &mut self.services[i];
        debug_assert!(svc.backends.iter().zip(&svc.cfg.backends).all(|(b, c)| b.cfg.address == c.address));
        let backends = &svc.backends;
        let serving = plan::serving(&svc.cfg, |j| backends[j].healthy && !backends[j].drained, svc.on_backup);
        let ring: Vec<u32> = plan::service_table(&svc.cfg, &serving.members)
            .into_iter()
            .map(|j| if j == NO_BACKEND { NO_BACKEND } else { backends[j as usize].slot })
            .collect();
        if serving.on_backup != svc.on_backup {
            log::warn!(
                "service {}: new flows now go to the {} backends",
                svc.cfg.name,
                if serving.on_backup { "backup" } else { "primary" }
            );
        }
        svc.on_backup = serving.on_backup;
        // Up first: the table may name them from the next write on.
        for be in svc.backends.iter().filter(|b| b.up()) {
            self.dp.set_backend(be.slot, &backend_entry(svc, be))?;
        }
        let offset = svc.ring_offset(stride);
        let old = (svc.ring.len() == ring.len()).then_some(svc.ring.as_slice());
        let t0 = std::time::Instant::now();
        let written = self.dp.write_ring(offset, &ring, old)?;
        let took = t0.elapsed().as_secs_f64() * 1000.0;
        self.slots_written += written as u64;
        if written > 0 {
            self.rebuilds += 1;
            log::info!("service {}: {} of {} table slots rewritten in {took:.2} ms", svc.cfg.name, written, ring.len());
        }
        let first = svc.ring.is_empty();
        svc.ring = ring;
        // round_robin / least_conn: a changed list goes to the half no packet reads;
        // the service entry, replaced whole, then names it.
        let sched = plan::sched_list(&svc.cfg, &serving.members, |j| svc.backends[j].slot);
        if svc.cfg.scheduler != Scheduler::Maglev && (!svc.sched_written || sched != svc.sched) {
            let half = 1 - svc.sched_half;
            self.dp.write_sched(svc.sched_offset(half), &sched)?;
            (svc.sched, svc.sched_half, svc.sched_written) = (sched, half, true);
        } else if svc.cfg.scheduler == Scheduler::Maglev {
            (svc.sched, svc.sched_written) = (Vec::new(), false);
        }
        let (sched_offset, sched_len) = match svc.cfg.scheduler {
            Scheduler::Maglev => (0, 0),
            Scheduler::RoundRobin => (svc.sched_offset(svc.sched_half), svc.sched.len() as u32),
            Scheduler::LeastConn => (svc.sched_offset(svc.sched_half), svc.sched.len() as u32 / 2),
        };
        let (firewall, flow_cost_ns, flow_burst) = firewall_fields(&svc.cfg, self.daemon_deny);
        let entry = Service {
            id: svc.id,
            ring_offset: offset,
            table_size: svc.cfg.table_size,
            flags: service_flags(&svc.cfg) | firewall,
            sched_offset,
            sched_len,
            flow_cost_ns,
            flow_burst,
        };
        // Written after its table, so a new service is published complete.
        self.dp.set_service(&svc.key, &entry)?;
        let serving = svc.ring.iter().any(|&b| b != NO_BACKEND);
        if !serving && (first || svc.serving) {
            log::warn!(
                "service {}: no backend takes new flows; its packets are dropped and counted as no_backend",
                svc.cfg.name
            );
        } else if serving && !first && !svc.serving {
            log::info!("service {}: serving again", svc.cfg.name);
        }
        svc.serving = serving;
        // Down last: no slot names them any more.
        let svc = &self.services[i];
        for be in svc.backends.iter().filter(|b| !b.up()) {
            self.dp.set_backend(be.slot, &backend_entry(svc, be))?;
        }
        Ok(())
    }
}

fn backend_entry(svc: &ServiceState, be: &BackendState) -> Backend {
    let (addr, port, family) = map_addr(&be.cfg.address);
    Backend {
        addr,
        port,
        family,
        _pad: 0,
        service: svc.id,
        generation: be.generation,
        flags: if be.up() { BACKEND_F_UP } else { 0 },
        next_hop: be.next_hop,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The maps as a packet sees them, checked after every single write: no
    /// table slot may name a backend slot that is not marked up (such a
    /// packet would be dropped as `no_backend`).
    #[derive(Default)]
    struct Kernel {
        backends: HashMap<u32, Backend>,
        services: HashMap<VipKey, Service>,
        ring: HashMap<u32, u32>,
        sched: HashMap<u32, u32>,
        rules: HashMap<RuleId, u32>,
        writes: Vec<String>,
    }

    impl Kernel {
        fn check(&self) {
            for (&i, &slot) in &self.ring {
                let up = self.backends.get(&slot).is_some_and(|b| b.flags & BACKEND_F_UP != 0);
                assert!(
                    slot == NO_BACKEND || up,
                    "table slot {i} names backend slot {slot}, which is not marked up; writes so far:\n{}",
                    self.writes.join("\n")
                );
            }
        }
    }

    impl Tables for Kernel {
        fn set_service(&mut self, key: &VipKey, svc: &Service) -> anyhow::Result<()> {
            self.services.insert(*key, *svc);
            self.writes.push(format!("service {}", svc.id));
            Ok(())
        }
        fn remove_service(&mut self, _: &VipKey, _: bool) -> anyhow::Result<()> {
            self.writes.push("remove service".into());
            Ok(())
        }
        fn set_backend(&mut self, slot: u32, be: &Backend) -> anyhow::Result<()> {
            self.backends.insert(slot, *be);
            let state = if be.flags & BACKEND_F_UP != 0 { "up" } else { "down" };
            self.writes.push(format!("backend {slot} {state}"));
            self.check();
            Ok(())
        }
        fn reset_backend_stats(&mut self, _: u32) -> anyhow::Result<()> {
            Ok(())
        }
        fn write_ring(&mut self, offset: u32, new: &[u32], old: Option<&[u32]>) -> anyhow::Result<usize> {
            let mut n = 0;
            for (i, &b) in new.iter().enumerate() {
                if old.is_none_or(|o| o.get(i) != Some(&b)) {
                    self.ring.insert(offset + i as u32, b);
                    self.writes.push(format!("ring {} -> {b}", offset + i as u32));
                    self.check();
                    n += 1;
                }
            }
            Ok(n)
        }
        fn set_flags(&mut self, _: u32) -> anyhow::Result<()> {
            Ok(())
        }
        fn write_sched(&mut self, offset: u32, list: &[u32]) -> anyhow::Result<()> {
            for (i, &b) in list.iter().enumerate() {
                self.sched.insert(offset + i as u32, b);
            }
            self.writes.push(format!("sched {offset} len {}", list.len()));
            Ok(())
        }
        fn sync_source_rules(&mut self, want: &HashMap<RuleId, u32>, prune: bool) -> anyhow::Result<()> {
            self.rules.extend(want.iter().map(|(k, v)| (*k, *v)));
            if prune {
                self.rules.retain(|k, _| want.contains_key(k));
            }
            self.writes.push(format!("rules {} prune {prune}", self.rules.len()));
            Ok(())
        }
        fn set_closed_drop(&mut self, _: bool) -> anyhow::Result<()> {
            Ok(())
        }
    }

    const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "www"
vip = "198.18.0.10:80"
table_size = 31
[service.health]
check = "tcp"
rise = 1
fall = 1
[[service.backend]]
address = "198.18.1.11:80"
[[service.backend]]
address = "198.18.1.12:80"
[[service.backend]]
address = "198.18.1.13:80"
role = "backup"
"#;

    fn balancer() -> (Balancer<Kernel>, u32) {
        let cfg = crate::config::parse(CONFIG, "t.toml").expect("valid");
        let (stride, regions) = Balancer::<Kernel>::table_room(&cfg);
        let mut bal = Balancer::new(Kernel::default(), stride, regions);
        bal.apply(&cfg).expect("apply");
        let id = bal.services[0].id;
        (bal, id)
    }

    fn check(bal: &mut Balancer<Kernel>, service: u32, backend: &str, ok: bool) {
        let probe = Probe { ok, detail: if ok { "ok" } else { "refused" }.into(), duration: Duration::from_millis(1) };
        assert!(bal.record_check(service, backend.parse().unwrap(), &probe).unwrap(), "{backend} is known");
    }

    fn up(bal: &Balancer<Kernel>, backend: &str) -> bool {
        bal.services[0].backends.iter().find(|b| b.cfg.address.to_string() == backend).unwrap().healthy
    }

    /// Going down, coming back up, backups taking over and handing back: at
    /// no point does a slot name a backend not marked up (the kernel fake
    /// asserts it after each write).
    #[test]
    fn slots_never_name_a_backend_not_marked_up() {
        let (mut bal, id) = balancer();
        let (web1, web2, backup) = ("198.18.1.11:80", "198.18.1.12:80", "198.18.1.13:80");
        check(&mut bal, id, web1, false);
        assert!(!up(&bal, web1), "web1 down after its first failed check");
        check(&mut bal, id, web1, true);
        assert!(up(&bal, web1), "web1 up again (rise = 1)");
        // Both primaries down: the backup takes new flows; then they come back.
        check(&mut bal, id, web1, false);
        check(&mut bal, id, web2, false);
        assert!(bal.services[0].on_backup);
        check(&mut bal, id, web2, true);
        check(&mut bal, id, web1, true);
        assert!(!bal.services[0].on_backup);
        // The backup fails and recovers while standing by.
        check(&mut bal, id, backup, false);
        check(&mut bal, id, backup, true);
        let k = &bal.dp;
        let named: std::collections::BTreeSet<u32> = k.ring.values().copied().collect();
        let web_slots: std::collections::BTreeSet<u32> = bal.services[0].backends[..2].iter().map(|b| b.slot).collect();
        assert_eq!(named, web_slots, "the table names both primaries at the end");
    }

    /// A VIP is to be announced once a backend taking new flows has passed a
    /// check, and not while none takes new flows.
    #[test]
    fn vips_to_announce_wait_for_a_checked_backend() {
        let (mut bal, id) = balancer();
        let vip: IpAddr = "198.18.0.10".parse().unwrap();
        assert!(!bal.vips_to_announce()[&vip], "no backend checked yet");
        check(&mut bal, id, "198.18.1.11:80", true);
        assert!(bal.vips_to_announce()[&vip], "web1 passed a check");
        for b in ["198.18.1.11:80", "198.18.1.12:80", "198.18.1.13:80"] {
            check(&mut bal, id, b, false);
        }
        assert!(!bal.services[0].serving);
        assert!(!bal.vips_to_announce()[&vip], "no backend takes new flows");
        check(&mut bal, id, "198.18.1.13:80", true);
        assert!(bal.vips_to_announce()[&vip], "the backup takes new flows");
        bal.set_drained("www", "198.18.1.13:80", true).unwrap();
        assert!(!bal.vips_to_announce()[&vip], "the only backend up is drained");
    }

    /// A drained backend keeps its up flag (established flows continue) and
    /// leaves the table before anything else changes.
    #[test]
    fn draining_keeps_the_backend_up_and_out_of_the_table() {
        let (mut bal, _) = balancer();
        bal.set_drained("www", "198.18.1.11:80", true).unwrap();
        let slot = bal.services[0].backends[0].slot;
        assert!(!bal.dp.ring.values().any(|&b| b == slot), "a drained backend takes no new flows");
        assert_ne!(bal.dp.backends[&slot].flags & BACKEND_F_UP, 0, "established flows may continue to it");
        bal.set_drained("www", "198.18.1.11:80", false).unwrap();
        assert!(bal.dp.ring.values().any(|&b| b == slot));
    }

    /// A daemon that takes over the maps of another: every configured
    /// backend keeps its slot, generation (its tracked flows stay valid),
    /// health and drain; a backend new in the config gets a fresh slot and a
    /// generation no tracked flow has; the rest is free again.
    #[test]
    fn adopting_keeps_slots_generations_health_and_drains() {
        let (mut old, id) = balancer();
        check(&mut old, id, "198.18.1.12:80", false);
        old.set_drained("www", "198.18.1.11:80", true).unwrap();
        let tables = crate::dataplane::Adopted {
            services: old.dp.services.iter().map(|(k, s)| (*k, *s)).collect(),
            backends: old.dp.backends.iter().filter(|(_, b)| b.port != 0).map(|(i, b)| (*i, *b)).collect(),
        };
        let before: Vec<(u32, u32)> = old.services[0].backends.iter().map(|b| (b.slot, b.generation)).collect();

        // The new config drops web3 (the backup) and adds web4.
        let text = CONFIG.replace("198.18.1.13:80", "198.18.1.14:80");
        let cfg = crate::config::parse(&text, "t.toml").expect("valid");
        let (stride, regions) = Balancer::<Kernel>::table_room(&cfg);
        let mut new = Balancer::new(Kernel::default(), stride, regions);
        new.adopt(&tables, old.drains());
        new.apply(&cfg).expect("apply");
        let svc = &new.services[0];
        assert_eq!(svc.id, id, "the service keeps its id");
        let b = &svc.backends;
        assert_eq!((b[0].slot, b[0].generation), before[0], "web1 keeps slot and generation");
        assert_eq!((b[1].slot, b[1].generation), before[1], "web2 keeps slot and generation");
        assert!(b[0].healthy && b[0].drained, "web1: up and drained as before: {:?}", b[0]);
        assert!(!b[1].healthy, "web2 stays down until its checks say otherwise");
        assert!(b[1].checks.checked, "adopted backends follow rise/fall, not the first-check rule");
        let max_gen = before.iter().map(|&(_, g)| g).max().unwrap();
        assert!(b[2].generation > max_gen, "web4 gets a new generation: {} vs {max_gen}", b[2].generation);
        assert!(!before.iter().any(|&(s, _)| s == b[2].slot), "web4 takes a slot no kept backend has");
        assert!(new.free_slots.contains(&before[2].0), "web3's slot is free again");
        assert_eq!(new.drains(), [("www".to_string(), "198.18.1.11:80".to_string())]);
    }
}
