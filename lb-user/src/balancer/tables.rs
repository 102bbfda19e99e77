//! The writes the balancer makes to the data path's maps, behind a trait:
//! the kernel's maps ([`Dataplane`]) in the daemon, a recording fake in the
//! tests that check the order of the writes.

use lb_common::{Backend, Service, VipKey};

use std::collections::HashMap;

use crate::{
    config::DaemonConfig,
    dataplane::{Dataplane, RuleId},
};

/// What the balancer writes. Each call is one step a packet may observe.
pub trait Tables {
    /// Publishes a service (its table must be written first).
    fn set_service(&mut self, key: &VipKey, svc: &Service) -> anyhow::Result<()>;
    /// Unpublishes a service; its VIP address stays known while `addr_still_used`.
    fn remove_service(&mut self, key: &VipKey, addr_still_used: bool) -> anyhow::Result<()>;
    /// Writes `BACKENDS[slot]` (`Backend::default()` frees it).
    fn set_backend(&mut self, slot: u32, be: &Backend) -> anyhow::Result<()>;
    /// Zeroes the counters of a backend slot handed out anew.
    fn reset_backend_stats(&mut self, slot: u32) -> anyhow::Result<()>;
    /// Writes the slots of a Maglev table at `offset` that differ from `old`;
    /// how many were written.
    fn write_ring(&mut self, offset: u32, new: &[u32], old: Option<&[u32]>) -> anyhow::Result<usize>;
    /// The data path's global flags (`SETTINGS_F_NAT`).
    fn set_flags(&mut self, flags: u32) -> anyhow::Result<()>;
    /// Conntrack idle timeouts, in ticks by state.
    fn set_conntrack_timeouts(&mut self, _ticks: [u32; lb_common::ct::NUM_TIMEOUTS as usize]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Writes a round_robin sequence or least_conn candidate list at `offset` in
    /// `SCHED_SLOTS` (a half no service entry names).
    fn write_sched(&mut self, offset: u32, list: &[u32]) -> anyhow::Result<()>;
    /// `SOURCE_RULES`: writes what `want` adds or changes; with `prune`, removes the rest.
    fn sync_source_rules(&mut self, want: &HashMap<RuleId, u32>, prune: bool) -> anyhow::Result<()>;
    /// `[daemon] closed_ports = "drop"` on every VIP address.
    fn set_closed_drop(&mut self, drop: bool) -> anyhow::Result<()>;
    /// The outer source prefixes and the GUE port of ipip/gue services.
    fn set_encap(&mut self, _daemon: &DaemonConfig) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Tables for Dataplane {
    fn set_service(&mut self, key: &VipKey, svc: &Service) -> anyhow::Result<()> {
        Dataplane::set_service(self, key, svc)
    }
    fn remove_service(&mut self, key: &VipKey, addr_still_used: bool) -> anyhow::Result<()> {
        Dataplane::remove_service(self, key, addr_still_used)
    }
    fn set_backend(&mut self, slot: u32, be: &Backend) -> anyhow::Result<()> {
        Dataplane::set_backend(self, slot, be)
    }
    fn reset_backend_stats(&mut self, slot: u32) -> anyhow::Result<()> {
        Dataplane::reset_backend_stats(self, slot)
    }
    fn write_ring(&mut self, offset: u32, new: &[u32], old: Option<&[u32]>) -> anyhow::Result<usize> {
        Dataplane::write_ring(self, offset, new, old)
    }
    fn set_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        Dataplane::set_flags(self, flags)
    }
    fn set_conntrack_timeouts(&mut self, ticks: [u32; lb_common::ct::NUM_TIMEOUTS as usize]) -> anyhow::Result<()> {
        Dataplane::set_conntrack_timeouts(self, ticks)
    }
    fn write_sched(&mut self, offset: u32, list: &[u32]) -> anyhow::Result<()> {
        Dataplane::write_sched(self, offset, list)
    }
    fn sync_source_rules(&mut self, want: &HashMap<RuleId, u32>, prune: bool) -> anyhow::Result<()> {
        Dataplane::sync_source_rules(self, want, prune)
    }
    fn set_closed_drop(&mut self, drop: bool) -> anyhow::Result<()> {
        Dataplane::set_closed_drop(self, drop)
    }
    fn set_encap(&mut self, daemon: &DaemonConfig) -> anyhow::Result<()> {
        Dataplane::set_encap(self, daemon.gue_port, daemon.encap_source_v4, daemon.encap_source_v6)
    }
}
