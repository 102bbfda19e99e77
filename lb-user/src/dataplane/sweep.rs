//! The conntrack sweeper: expires idle entries off the packet path and keeps
//! `BACKEND_CONNS` honest.
//!
//! Each pass reads a bounded number of `CONNTRACK` slots (in place: the
//! table is mapped, see `ct_table`), resuming where the last pass stopped, and:
//! - removes an entry idle longer than its state's timeout; if it still
//!   counted (no `ct::CLOSED`: no packet closed or retired it), its backend's
//!   count falls by one (an atomic add on the mapped array). The removal
//!   claims the slot with a compare-exchange of its state and checks the
//!   entry again: it is left alone if a packet refreshed, closed or replaced
//!   it meanwhile;
//! - counts the entries that are live (not closed, not expired, made for the
//!   backend now in their slot) per slot.
//!
//! At the end of a cycle over the whole table the live counts are compared with
//! `BACKEND_CONNS` (reconciliation): a count can drift when a late packet of
//! a flow whose slot was just taken for another flow writes that slot. The
//! comparison races the data path (a flow may open or close while the cycle
//! walks the map), so a slot is corrected only when (1) its count did not
//! move between the cycle's start and end, and (2) the same difference was
//! seen at the end of the previous cycle too. Races that remain (a packet
//! closing an expired entry in the microseconds between the re-read and the
//! delete) leave a drift of one that the next quiet cycles correct.

use std::{collections::HashMap, io, sync::Arc};

use lb_common::{ct, CtSlot, FlowState};

use super::{conns::ConnsMem, ct_table::CtTable};

/// What the sweeper does with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open and counted on its backend's slot.
    Live,
    /// Idle past its timeout: deleted; `counted`: its backend's count falls.
    Expired { counted: bool },
    /// Closed (not counted) or made for an earlier occupant of its slot, not expired yet.
    Idle,
}

/// The verdict on entry `st` of a flow of protocol `proto` at `now` (ticks),
/// with the timeouts `t` (ticks, by `ct::SYN` .. `ct::UDP`; 0: none) and
/// `generation`, the generation of the backend in the entry's slot (`None`:
/// the slot is free).
pub fn verdict(proto: u8, st: &FlowState, now: u32, t: &[u32; 4], generation: Option<u32>) -> Verdict {
    let current = generation == Some(st.generation);
    let counted = current && st.state & ct::CLOSED == 0;
    let timeout = t[ct::timeout_index(proto, st.state) as usize];
    if ct::expired(now, st.seen, timeout) {
        return Verdict::Expired { counted };
    }
    if counted {
        Verdict::Live
    } else {
        Verdict::Idle
    }
}

/// `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`'s clock) in conntrack ticks.
pub fn now_ticks() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> ct::TICK_SHIFT) as u32
}

/// What the sweeper did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Entries deleted because they were idle past their timeout.
    pub expired: u64,
    /// Of those, entries that still counted on their backend.
    pub expired_counted: u64,
    /// Connections added to (positive) or taken from (negative) counts by reconciliation.
    pub corrected: i64,
    /// Full cycles over the map.
    pub cycles: u64,
}

/// Reconciliation of one cycle: what the counts should be.
#[derive(Default)]
struct Cycle {
    /// Live entries per slot.
    live: HashMap<u32, u64>,
    /// Counts per slot when the cycle began.
    start: HashMap<u32, i64>,
}

pub struct Sweeper {
    table: Arc<CtTable>,
    conns: Arc<ConnsMem>,
    timeouts: [u32; 4],
    /// The slot to resume from; `None`: a new cycle.
    cursor: Option<usize>,
    cycle: Cycle,
    /// Differences (count - live) seen at the end of the last cycle.
    suspects: HashMap<u32, i64>,
    pub stats: SweepStats,
}

impl Sweeper {
    pub fn new(table: Arc<CtTable>, conns: Arc<ConnsMem>, timeouts: [u32; 4]) -> Self {
        Self {
            table,
            conns,
            timeouts,
            cursor: None,
            cycle: Cycle::default(),
            suspects: HashMap::new(),
            stats: SweepStats::default(),
        }
    }

    /// One pass of at most about `budget` entries. `slots`: each backend slot in
    /// use and its generation. Returns whether the pass finished a cycle.
    pub fn pass(&mut self, slots: &HashMap<u32, u32>, budget: usize) -> io::Result<bool> {
        self.pass_with(slots, self.timeouts, budget)
    }

    /// [`Sweeper::pass`] with the timeouts (ticks) now in force (a reload may change them).
    pub fn pass_with(&mut self, slots: &HashMap<u32, u32>, timeouts: [u32; 4], budget: usize) -> io::Result<bool> {
        self.timeouts = timeouts;
        if self.cursor.is_none() {
            self.cycle = Cycle { live: HashMap::new(), start: slots.keys().map(|&s| (s, self.conns.raw(s))).collect() };
        }
        let now = now_ticks();
        let start = self.cursor.unwrap_or(0);
        let end = start.saturating_add(budget.max(1)).min(self.table.slots());
        for i in start..end {
            if let Some(e) = self.table.get(i) {
                self.sweep_one(i, &e, now, slots);
            }
        }
        let done = end >= self.table.slots();
        self.cursor = (!done).then_some(end);
        if done {
            self.reconcile(slots);
            self.stats.cycles += 1;
        }
        Ok(done)
    }

    fn sweep_one(&mut self, i: usize, e: &CtSlot, now: u32, slots: &HashMap<u32, u32>) {
        let st = &e.state;
        match verdict(e.key.proto, st, now, &self.timeouts, slots.get(&st.backend).copied()) {
            Verdict::Live => *self.cycle.live.entry(st.backend).or_default() += 1,
            Verdict::Idle => {}
            Verdict::Expired { counted } => {
                // Only if no packet refreshed, closed or replaced it since it was read.
                if self.table.remove_if(i, e) {
                    self.stats.expired += 1;
                    if counted {
                        self.conns.add(st.backend, -1);
                        self.stats.expired_counted += 1;
                    }
                }
            }
        }
    }

    fn reconcile(&mut self, slots: &HashMap<u32, u32>) {
        let mut suspects = HashMap::new();
        for &slot in slots.keys() {
            let end = self.conns.raw(slot);
            let live = self.cycle.live.get(&slot).copied().unwrap_or(0) as i64;
            // Moved during the cycle: the walk may have seen either side of the change.
            if self.cycle.start.get(&slot) != Some(&end) || end == live {
                continue;
            }
            let diff = end - live;
            if self.suspects.get(&slot) == Some(&diff) {
                log::debug!("conntrack: backend slot {slot} counted {end} connections, {live} live: corrected");
                self.conns.add(slot, -diff);
                self.stats.corrected -= diff;
            } else {
                suspects.insert(slot, diff);
            }
        }
        self.suspects = suspects;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{PROTO_TCP, PROTO_UDP};

    const T: [u32; 4] = [100, 10_000, 50, 200];

    fn st(state: u64, seen: u32) -> FlowState {
        FlowState { backend: 3, generation: 7, state, seen, ..Default::default() }
    }

    #[test]
    fn verdicts_follow_state_timeout_and_generation() {
        let now = 1_000_000;
        // SYN-only: 100 ticks.
        assert_eq!(verdict(PROTO_TCP, &st(0, now - 100), now, &T, Some(7)), Verdict::Live);
        assert_eq!(verdict(PROTO_TCP, &st(0, now - 101), now, &T, Some(7)), Verdict::Expired { counted: true });
        // Established: 10000 ticks.
        assert_eq!(verdict(PROTO_TCP, &st(ct::ESTABLISHED, now - 5000), now, &T, Some(7)), Verdict::Live);
        // A client FIN (NAT, open until the backend's): closing timeout, still counted.
        let fin = ct::ESTABLISHED | ct::FIN_CLIENT;
        assert_eq!(verdict(PROTO_TCP, &st(fin, now - 40), now, &T, Some(7)), Verdict::Live);
        assert_eq!(verdict(PROTO_TCP, &st(fin, now - 60), now, &T, Some(7)), Verdict::Expired { counted: true });
        // Closed: no longer counted, deleted after the closing timeout.
        let closed = fin | ct::FIN_BACKEND | ct::CLOSED;
        assert_eq!(verdict(PROTO_TCP, &st(closed, now - 10), now, &T, Some(7)), Verdict::Idle);
        assert_eq!(verdict(PROTO_TCP, &st(closed, now - 60), now, &T, Some(7)), Verdict::Expired { counted: false });
        // UDP: its own timeout, whatever the bits.
        assert_eq!(verdict(PROTO_UDP, &st(0, now - 150), now, &T, Some(7)), Verdict::Live);
        assert_eq!(verdict(PROTO_UDP, &st(0, now - 201), now, &T, Some(7)), Verdict::Expired { counted: true });
        // A slot given to another backend since (or freed): never counted.
        assert_eq!(verdict(PROTO_TCP, &st(0, now - 10), now, &T, Some(8)), Verdict::Idle);
        assert_eq!(verdict(PROTO_TCP, &st(0, now - 101), now, &T, None), Verdict::Expired { counted: false });
        // Timeout 0: never expires. The clock wraps.
        assert_eq!(verdict(PROTO_TCP, &st(0, 5), 4, &[0, 0, 0, 0], Some(7)), Verdict::Live);
        assert_eq!(verdict(PROTO_TCP, &st(0, u32::MAX - 10), 20, &T, Some(7)), Verdict::Live);
    }

    #[test]
    fn ticks_of_ms_rounds_up() {
        assert_eq!(ct::ticks_of_ms(0), 0);
        assert_eq!(ct::ticks_of_ms(1), 1);
        assert_eq!(ct::ticks_of_ms(1000), 954);
        assert_eq!(ct::ticks_of_ms(6 * 3600 * 1000), 20_599_366);
    }
}
