//! Current rates: a sampler snapshots the counters once a second; a rate is
//! the difference between the last two snapshots over the time between them.
//! It also counts the conntrack map every few seconds (see `conntrack_count`).
//!
//! The daemon keeps one [`History`], written by [`sample`] and shared (see
//! `monitor::SharedHistory`) with the admin socket's `status`, `/metrics`,
//! `/status.json` and the status page, so they all read the same figures.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::counter;

use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshot;
use crate::{
    balancer::Balancer,
    dataplane::{
        conntrack_count::{self, ConntrackCount},
        ct_table::CtTable,
    },
};

/// How often the sampler takes a snapshot.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Least time between two counts of the conntrack map.
pub const COUNT_CONNTRACK_EVERY: Duration = Duration::from_secs(2);
/// The time between two counts is also at least this many times what the
/// last count took, so counting costs at most 1/20 of a core (a count reads
/// every slot of the mapped table; see examples/conntrack_count.rs).
pub const COUNT_CONNTRACK_SPACING: u32 = 20;

/// Per-second rates of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendRates {
    pub packets: f64,
    pub bytes: f64,
    pub new_flows: f64,
}

/// Per-second rates of one service.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServiceRates {
    pub packets: f64,
    pub new_flows: f64,
}

/// Rates between two snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// Time between the two snapshots.
    pub window: Duration,
    backends: HashMap<(String, SocketAddr), BackendRates>,
    services: HashMap<String, ServiceRates>,
    /// Per drop reason (`counter::drops()` order).
    pub drops: Vec<f64>,
}

impl Rates {
    /// Rates from `prev` to `cur`. A counter that went down (a backend removed
    /// and added again) counts from 0; something absent from `prev` has no rate.
    pub fn between(prev: &Snapshot, cur: &Snapshot) -> Option<Self> {
        let window = cur.at.checked_duration_since(prev.at).filter(|w| !w.is_zero())?;
        let per_s = |new: u64, old: u64| new.checked_sub(old).unwrap_or(new) as f64 / window.as_secs_f64();
        let mut r = Rates { window, ..Default::default() };
        for s in &cur.services {
            let Some(ps) = prev.services.iter().find(|p| p.name == s.name) else { continue };
            r.services.insert(
                s.name.clone(),
                ServiceRates {
                    packets: per_s(s.stats.packets, ps.stats.packets),
                    new_flows: per_s(s.stats.new_flows, ps.stats.new_flows),
                },
            );
            for b in &s.backends {
                let Some(pb) = ps.backends.iter().find(|p| p.address == b.address) else { continue };
                // Another generation: the counters restarted from 0.
                let old = if pb.generation == b.generation { pb.stats } else { Default::default() };
                r.backends.insert(
                    (s.name.clone(), b.address),
                    BackendRates {
                        packets: per_s(b.stats.packets, old.packets),
                        bytes: per_s(b.stats.bytes, old.bytes),
                        new_flows: per_s(b.stats.new_flows, old.new_flows),
                    },
                );
            }
        }
        r.drops = counter::drops().map(|(i, _)| per_s(cur.counter(i), prev.counter(i))).collect();
        Some(r)
    }

    pub fn backend(&self, service: &str, address: SocketAddr) -> Option<BackendRates> {
        self.backends.get(&(service.to_string(), address)).copied()
    }

    pub fn service(&self, service: &str) -> Option<ServiceRates> {
        self.services.get(service).copied()
    }

    pub fn drop(&self, reason: usize) -> Option<f64> {
        self.drops.get(reason).copied()
    }
}

/// The last two snapshots and the last conntrack count.
#[derive(Debug, Default)]
pub struct History {
    prev: Option<Snapshot>,
    last: Option<Snapshot>,
    pub conntrack: Option<ConntrackCount>,
}

impl History {
    pub const fn new() -> Self {
        History { prev: None, last: None, conntrack: None }
    }

    pub fn push(&mut self, snap: Snapshot) {
        self.prev = self.last.replace(snap);
    }

    /// Rates over the last sampling interval (None until two samples exist).
    pub fn rates(&self) -> Option<Rates> {
        Rates::between(self.prev.as_ref()?, self.last.as_ref()?)
    }
}

/// Samples the counters every [`SAMPLE_EVERY`] into `history`, and counts
/// the conntrack map (`fd`, capacity) as often as [`COUNT_CONNTRACK_EVERY`]
/// and [`COUNT_CONNTRACK_SPACING`] allow, until `cancel` is cancelled.
pub async fn sample(
    bal: Arc<Mutex<Balancer>>,
    conntrack: Option<(Arc<CtTable>, u32)>,
    history: Arc<Mutex<History>>,
    cancel: CancellationToken,
) {
    let history = || history.lock().unwrap_or_else(|e| e.into_inner());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_count = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The balancer's lock is held for the map reads only.
        let snap = Snapshot::collect(&bal.lock().unwrap_or_else(|e| e.into_inner()));
        match snap {
            Ok(s) => history().push(s),
            Err(e) => log::warn!("sampling counters: {e:#}"),
        }
        let Some((table, limit)) = &conntrack else { continue };
        if std::time::Instant::now() >= next_count {
            let (table, limit) = (table.clone(), *limit);
            let counted = tokio::select! {
                _ = cancel.cancelled() => return,
                c = tokio::task::spawn_blocking(move || conntrack_count::count(&table, limit)) => c,
            };
            if let Ok(c) = counted {
                next_count = c.at + COUNT_CONNTRACK_EVERY.max(c.took * COUNT_CONNTRACK_SPACING);
                history().conntrack = Some(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::snapshot::tests::snapshot;

    #[test]
    fn rates_are_differences_over_the_window() {
        let prev = snapshot();
        let mut cur = prev.clone();
        cur.at = prev.at + Duration::from_secs(2);
        let b = &mut cur.services[0].backends[0].stats;
        b.packets += 300;
        b.bytes += 30_000;
        b.new_flows += 10;
        cur.services[0].stats.new_flows += 10;
        cur.counters[counter::DROP_FRAGMENT as usize] += 8;
        let r = Rates::between(&prev, &cur).unwrap();
        assert_eq!(r.window, Duration::from_secs(2));
        let addr = "198.18.1.11:80".parse().unwrap();
        assert_eq!(r.backend("www", addr), Some(BackendRates { packets: 150.0, bytes: 15_000.0, new_flows: 5.0 }));
        assert_eq!(r.backend("www", "198.18.1.12:80".parse().unwrap()).unwrap().packets, 0.0);
        assert_eq!(r.service("www").unwrap().new_flows, 5.0);
        assert_eq!(r.drop(counter::DROP_FRAGMENT as usize), Some(4.0));
        assert_eq!(r.drop(counter::DROP_TRUNCATED as usize), Some(0.0));
        assert_eq!(r.backend("nope", addr), None);
    }

    #[test]
    fn a_backend_added_again_counts_from_zero() {
        let prev = snapshot();
        let mut cur = prev.clone();
        cur.at = prev.at + Duration::from_secs(1);
        let b = &mut cur.services[0].backends[0];
        b.generation += 1;
        b.stats.packets = 5;
        let addr = b.address;
        let r = Rates::between(&prev, &cur).unwrap();
        assert_eq!(r.backend("www", addr).unwrap().packets, 5.0);
    }

    #[test]
    fn history_needs_two_samples() {
        let mut h = History::new();
        assert!(h.rates().is_none());
        let s = snapshot();
        h.push(s.clone());
        assert!(h.rates().is_none());
        let mut later = s;
        later.at += Duration::from_millis(500);
        h.push(later);
        assert_eq!(h.rates().unwrap().window, Duration::from_millis(500));
    }
}
