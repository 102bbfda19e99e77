//! What a configuration means for new flows, written once: which backends of
//! a service take new flows, its Maglev table over them, and the share of the
//! table each backend holds. The balancer plans with the backends' live
//! states; `xlb check` and `xlb explain` plan with every backend up.

use lb_common::{MAX_LC_CANDIDATES, NO_BACKEND, SCHED_HALF};

use crate::{
    config::{Role, Scheduler, ServiceConfig},
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

/// Smooth weighted round robin (nginx's, like IPVS's wrr without bursts) over the
/// backends `serving`, as one period of picks: each backend appears in proportion to
/// its weight (weights divided by their greatest common divisor), spread out, never
/// bunched. Indices into `service.backends`. A period longer than `SCHED_HALF` is
/// made from the weights scaled down to fit (each serving backend keeps at least one turn).
pub fn rr_sequence(service: &ServiceConfig, serving: &[usize]) -> Vec<usize> {
    let members: Vec<usize> = serving.iter().copied().take(SCHED_HALF as usize).collect();
    let mut weights: Vec<u64> = members.iter().map(|&i| u64::from(service.backends[i].weight)).collect();
    let g = weights.iter().fold(0, |a, &b| gcd(a, b));
    if g == 0 {
        return Vec::new();
    }
    weights.iter_mut().for_each(|w| *w /= g);
    let total: u64 = weights.iter().sum();
    let room = SCHED_HALF as u64;
    if total > room {
        // Scaled to fit, every backend at least once, then trimmed from the heaviest.
        let spare = room - members.len() as u64;
        weights.iter_mut().for_each(|w| *w = 1 + (*w - 1) * spare / (total - members.len() as u64).max(1));
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; members.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += w as i64;
        }
        // The largest current weight; the first on a tie (configuration order).
        let best = (0..current.len()).fold(0, |b, j| if current[j] > current[b] { j } else { b });
        current[best] -= total;
        out.push(members[best]);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What a round_robin or least_conn service's list in `SCHED_SLOTS` holds, over the
/// backends `serving`, with `slot(i)` naming backend `i`'s slot: the round-robin
/// sequence of slots, or (slot, weight) pairs of the least-conn candidates (at most
/// `MAX_LC_CANDIDATES`). Empty for Maglev.
pub fn sched_list(service: &ServiceConfig, serving: &[usize], slot: impl Fn(usize) -> u32) -> Vec<u32> {
    match service.scheduler {
        Scheduler::Maglev => Vec::new(),
        Scheduler::RoundRobin => rr_sequence(service, serving).into_iter().map(slot).collect(),
        Scheduler::LeastConn => serving
            .iter()
            .take(MAX_LC_CANDIDATES as usize)
            .flat_map(|&i| [slot(i), service.backends[i].weight])
            .collect(),
    }
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

    fn counts(seq: &[usize]) -> HashMap<usize, usize> {
        let mut seen = HashMap::new();
        for &b in seq {
            *seen.entry(b).or_default() += 1;
        }
        seen
    }

    #[test]
    fn rr_sequence_is_smooth_and_weighted() {
        let text = BACKUP_PRIMARY_ZERO.replace("weight = 0", "weight = 2").replace("role = \"backup\"", "");
        let s = service(&text);
        let seq = rr_sequence(&s, &[0, 1, 2]);
        assert_eq!(seq.len(), 4, "weights 1/1/2: a period of 4, got {seq:?}");
        assert_eq!(counts(&seq), HashMap::from([(0, 1), (1, 1), (2, 2)]), "shares in {seq:?}");
        assert!(seq.windows(2).all(|w| w[0] != w[1] || w[0] != 2), "no burst of the heavy one: {seq:?}");
        let mut s = s;
        s.backends[2].weight = 6;
        s.backends[0].weight = 3;
        s.backends[1].weight = 3;
        assert_eq!(rr_sequence(&s, &[0, 1, 2]).len(), 4, "3/3/6 is 1/1/2");
        // 1 and 5: the heavy one never runs more than 3 in a row (plain wrr: 5).
        s.backends[0].weight = 1;
        s.backends[1].weight = 5;
        let seq = rr_sequence(&s, &[0, 1]);
        assert_eq!(counts(&seq), HashMap::from([(0, 1), (1, 5)]));
        let longest = seq.chunk_by(|a, b| a == b).map(<[usize]>::len).max().unwrap();
        assert!(longest <= 3, "smooth: {seq:?}");
    }

    #[test]
    fn rr_sequence_fits_its_half() {
        let mut s = service(&BACKUP_PRIMARY_ZERO.replace("weight = 0", "weight = 1").replace("role = \"backup\"", ""));
        s.backends[0].weight = 10000;
        s.backends[1].weight = 9999;
        let seq = rr_sequence(&s, &[0, 1, 2]);
        assert!(seq.len() <= SCHED_HALF as usize, "{} entries", seq.len());
        let c = counts(&seq);
        assert_eq!(c[&2], 1, "the light one keeps a turn");
        assert!(c[&0] >= c[&1] && c[&0] > 200, "{c:?}");
    }

    #[test]
    fn least_conn_list_is_slot_weight_pairs() {
        let mut s = service(&BACKUP_PRIMARY_ZERO.replace("weight = 0", "weight = 3"));
        s.scheduler = Scheduler::LeastConn;
        assert_eq!(sched_list(&s, &[1, 2], |i| 100 + i as u32), [101, 1, 102, 3]);
        s.scheduler = Scheduler::Maglev;
        assert!(sched_list(&s, &[1, 2], |i| i as u32).is_empty());
    }
}
