//! What a configuration means for new flows, written once: which backends of
//! a service take new flows, its Maglev table over them, and the share of the
//! table each backend holds. The balancer plans with the backends' live
//! states; `xlb check` and `xlb explain` plan with every backend up.

use lb_common::NO_BACKEND;

use crate::{
    config::{Role, ServiceConfig},
    maglev::{build_table, MaglevBackend},
};

/// The backends that take new flows, and whether they are the backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Indices into `service.backends`, in configuration order.
    pub members: Vec<usize>,
    /// New flows go to the backups.
    pub on_backup: bool,
}

/// Which backends of `service` take new flows. `usable(i)` says whether
/// backend `i` may take new flows apart from its weight (healthy and not
/// drained); a weight of 0 never does. Primaries serve while one of them
/// can; the backups take over otherwise, and without `preempt` they keep new
/// flows (`on_backup_now`) until no backup can take them any more.
pub fn serving(service: &ServiceConfig, usable: impl Fn(usize) -> bool, on_backup_now: bool) -> Serving {
    let pick = |role: Role| -> Vec<usize> {
        service
            .backends
            .iter()
            .enumerate()
            .filter(|&(i, b)| b.role == role && b.weight > 0 && usable(i))
            .map(|(i, _)| i)
            .collect()
    };
    let primaries = pick(Role::Primary);
    let backups = pick(Role::Backup);
    let on_backup = !backups.is_empty() && (primaries.is_empty() || (!service.preempt && on_backup_now));
    Serving { members: if on_backup { backups } else { primaries }, on_backup }
}

/// The backends that take new flows when every backend is up.
pub fn serving_when_all_up(service: &ServiceConfig) -> Vec<usize> {
    serving(service, |_| true, false).members
}

/// The Maglev table of a service over the backends `serving` (indices into
/// `service.backends`, e.g. [`serving_when_all_up`]); each entry is an index
/// into `service.backends`, or [`NO_BACKEND`].
pub fn service_table(service: &ServiceConfig, serving: &[usize]) -> Vec<u32> {
    let ids: Vec<String> = serving.iter().map(|&i| service.backends[i].id()).collect();
    let members: Vec<MaglevBackend<'_>> =
        serving.iter().zip(&ids).map(|(&i, id)| MaglevBackend { id, weight: service.backends[i].weight }).collect();
    let mut table = build_table(&members, service.table_size);
    for entry in &mut table {
        if *entry != NO_BACKEND {
            *entry = serving[*entry as usize] as u32;
        }
    }
    table
}

/// Share of the table's slots each backend holds when every backend is up, in
/// percent, indexed like `service.backends` (0 for the ones not serving).
pub fn slot_shares(service: &ServiceConfig) -> Vec<f64> {
    let table = service_table(service, &serving_when_all_up(service));
    let mut counts = vec![0usize; service.backends.len()];
    for entry in table.iter().filter(|&&e| e != NO_BACKEND) {
        counts[*entry as usize] += 1;
    }
    counts.iter().map(|&c| 100.0 * c as f64 / table.len().max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    fn service(text: &str) -> ServiceConfig {
        crate::config::parse(text, "t.toml").expect("valid").services.remove(0)
    }

    const BACKUP_PRIMARY_ZERO: &str = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
vip = "198.18.0.10:80"
table_size = 251
[[service.backend]]
address = "198.18.1.11:80"
role = "backup"
[[service.backend]]
address = "198.18.1.12:80"
[[service.backend]]
address = "198.18.1.13:80"
weight = 0
"#;

    #[test]
    fn primaries_then_backups() {
        let s = service(BACKUP_PRIMARY_ZERO);
        assert_eq!(serving_when_all_up(&s), [1]);
        assert_eq!(serving(&s, |i| i != 1, false), Serving { members: vec![0], on_backup: true });
        assert_eq!(serving(&s, |_| false, false), Serving { members: vec![], on_backup: false });
    }

    #[test]
    fn backups_keep_new_flows_without_preempt() {
        let mut s = service(BACKUP_PRIMARY_ZERO);
        s.preempt = true;
        assert_eq!(serving(&s, |_| true, true).members, [1], "preempt: the primary takes new flows back");
        s.preempt = false;
        assert_eq!(serving(&s, |_| true, true), Serving { members: vec![0], on_backup: true });
        assert_eq!(serving(&s, |i| i != 0, true).members, [1], "no backup left: back to the primaries");
    }

    #[test]
    fn service_table_maps_to_service_indices() {
        let s = service(&BACKUP_PRIMARY_ZERO.replace("weight = 0", "weight = 1"));
        let table = service_table(&s, &serving_when_all_up(&s));
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for entry in table {
            *seen.entry(entry).or_default() += 1;
        }
        assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), [1, 2].into());
    }
}
