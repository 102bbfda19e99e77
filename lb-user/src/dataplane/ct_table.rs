//! `CONNTRACK`, the conntrack table, mapped into the daemon.
//!
//! The table is an mmapable array of buckets ([`CtBucket`]: the tags of its
//! `CT_WAYS` slots, then the [`CtSlot`]s): the XDP program finds a flow in the
//! bucket its hash picks and makes entries there; the daemon reads the slots
//! in place (counting, sweeping) and removes or copies entries with the same
//! protocol as the program: a writer claims a slot by swapping its state word
//! for `ct::BUSY` (compare-exchange), writes it, publishes the final state,
//! then sets the slot's tag (a remover clears it last).

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_common::{ct, ct_bucket, ct_tag_of, flow_hash, CtBucket, CtSlot, FlowKey, FlowState, CT_WAYS};

use super::mmap::ArrayMapping;

/// The slots of a `CONNTRACK` array, shared with the XDP program.
pub struct CtTable {
    mem: ArrayMapping,
}

impl CtTable {
    /// Maps the `slots` slots (`slots / CT_WAYS` buckets) of the `CONNTRACK`
    /// array behind `fd`.
    pub fn map(fd: impl AsFd, slots: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            slots.is_power_of_two() && slots >= CT_WAYS as usize,
            "CONNTRACK has {slots} slots: not a power of two of at least {CT_WAYS}"
        );
        let buckets = slots / CT_WAYS as usize;
        Ok(Self { mem: ArrayMapping::map_values(fd, buckets, std::mem::size_of::<CtBucket>(), "CONNTRACK")? })
    }

    pub fn slots(&self) -> usize {
        self.mem.entries() * CT_WAYS as usize
    }

    fn bucket(&self, i: usize) -> Option<*mut CtBucket> {
        self.mem.elem(i / CT_WAYS as usize).map(|p| p.cast::<CtBucket>().as_ptr())
    }

    fn slot(&self, i: usize) -> Option<*mut CtSlot> {
        // SAFETY: a slot of a live bucket.
        self.bucket(i).map(|b| unsafe { (&raw mut (*b).slots).cast::<CtSlot>().add(i % CT_WAYS as usize) })
    }

    /// Sets slot `i`'s tag (0: empty).
    fn set_tag(&self, i: usize, tag: u32) {
        if let Some(b) = self.bucket(i) {
            // SAFETY: a u32 of a live bucket; the program reads it as a plain word.
            unsafe { (&raw mut (*b).tags).cast::<u32>().add(i % CT_WAYS as usize).write_volatile(tag) };
        }
    }

    /// Slot `i`'s state word, shared with the program's atomics.
    fn word(&self, i: usize) -> Option<&AtomicU64> {
        // SAFETY: the u64 `state.state` of a live, 8-aligned slot.
        self.slot(i).map(|s| unsafe { AtomicU64::from_ptr(&raw mut (*s).state.state) })
    }

    /// A copy of slot `i`'s entry; `None` when empty or being written.
    pub fn get(&self, i: usize) -> Option<CtSlot> {
        let s = self.slot(i)?;
        if self.word(i)?.load(Ordering::Acquire) & ct::BUSY != 0 {
            return None;
        }
        // SAFETY: a live slot; a volatile copy (the program may be writing
        // plain fields of it: a copy is a snapshot that may be stale).
        let copy = unsafe { s.read_volatile() };
        (copy.key.family != 0 && copy.state.state & ct::BUSY == 0).then_some(copy)
    }

    /// Entries in the table.
    pub fn len(&self) -> u64 {
        (0..self.slots()).filter(|&i| self.get(i).is_some()).count() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of flow `k`, if any.
    pub fn lookup(&self, k: &FlowKey) -> Option<(usize, FlowState)> {
        let base = ct_bucket(k, self.slots() as u32) as usize;
        (base..base + CT_WAYS as usize).find_map(|i| self.get(i).filter(|s| s.key == *k).map(|s| (i, s.state)))
    }

    /// Claims slot `i` if its state word is `old`.
    fn claim(&self, i: usize, old: u64) -> bool {
        old & ct::BUSY == 0
            && self
                .word(i)
                .is_some_and(|w| w.compare_exchange(old, ct::BUSY, Ordering::SeqCst, Ordering::Relaxed).is_ok())
    }

    /// Writes a claimed slot and publishes its state (`None`: empties it).
    fn publish(&self, i: usize, entry: Option<(&FlowKey, &FlowState)>) {
        let Some(s) = self.slot(i) else { return };
        let (key, state) = match entry {
            Some((k, st)) => (*k, *st),
            None => (FlowKey::default(), FlowState::default()),
        };
        // SAFETY: a live slot this process claimed: no one else writes it.
        unsafe {
            (&raw mut (*s).key).write_volatile(key);
            (&raw mut (*s).state).write_volatile(FlowState { state: ct::BUSY, ..state });
        }
        if let Some(w) = self.word(i) {
            w.store(state.state, Ordering::SeqCst);
        }
        self.set_tag(i, entry.map_or(0, |(k, _)| ct_tag_of(flow_hash(k))));
    }

    /// Removes slot `i`'s entry if it is still `expect` (no packet changed
    /// its state or refreshed it since `expect` was read).
    pub fn remove_if(&self, i: usize, expect: &CtSlot) -> bool {
        let old = expect.state.state;
        if !self.claim(i, old) {
            return false;
        }
        let Some(s) = self.slot(i) else { return false };
        // SAFETY: a live slot this process claimed.
        let now = unsafe { s.read_volatile() };
        if now.key != expect.key || (FlowState { state: old, ..now.state }) != expect.state {
            // Refreshed meanwhile: put its state back.
            if let Some(w) = self.word(i) {
                w.store(old, Ordering::SeqCst);
            }
            return false;
        }
        self.publish(i, None);
        true
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        (0..self.slots()).filter(|&i| self.get(i).is_some_and(|e| self.remove_if(i, &e))).count()
    }

    /// Writes the entry of flow `k` as the program does: into the slot that
    /// holds `k` (only when `overwrite`), else into its bucket's slot least
    /// worth keeping. Whether it was written. Counts are not touched (the
    /// sweeper reconciles them).
    pub fn insert(&self, k: &FlowKey, st: &FlowState, overwrite: bool) -> bool {
        let base = ct_bucket(k, self.slots() as u32) as usize;
        let mut best: Option<(usize, u64, u64)> = None;
        for i in base..base + CT_WAYS as usize {
            let Some(s) = self.slot(i) else { return false };
            // SAFETY: a live slot, copied.
            let cur = unsafe { s.read_volatile() };
            let bits = self.word(i).map_or(ct::BUSY, |w| w.load(Ordering::Acquire));
            if cur.key == *k && bits & ct::BUSY == 0 {
                if !overwrite {
                    return false;
                }
                best = Some((i, u64::MAX, bits));
                break;
            }
            let rank = ct::victim_rank(cur.key.family, cur.key.proto, bits, cur.state.seen, st.seen);
            if best.is_none_or(|(_, r, _)| rank > r) && rank > 0 {
                best = Some((i, rank, bits));
            }
        }
        let Some((i, _, bits)) = best else { return false };
        if !self.claim(i, bits) {
            return false;
        }
        self.publish(i, Some((k, st)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in this process's memory, not a map (`ArrayMapping` of an
    /// anonymous shared mapping of a memfd).
    fn table(slots: usize) -> CtTable {
        let fd = memfd(slots / CT_WAYS as usize * std::mem::size_of::<CtBucket>());
        CtTable::map(fd, slots).unwrap()
    }

    fn memfd(len: usize) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain syscalls; the fd is owned by the returned value.
        unsafe {
            let fd = libc::memfd_create(c"ct".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len.next_multiple_of(4096) as i64), 0);
            std::os::fd::OwnedFd::from_raw_fd(fd)
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey { src: [1, 0, 0, 0], dst: [2, 0, 0, 0], sport: port, dport: 80, proto: 6, family: 4, _pad: [0; 2] }
    }

    fn st(backend: u32, state: u64, seen: u32) -> FlowState {
        FlowState { backend, state, seen, ..FlowState::default() }
    }

    #[test]
    fn insert_lookup_remove_and_clear() {
        let t = table(64);
        assert!(t.insert(&key(1), &st(3, ct::ESTABLISHED, 10), false));
        assert!(!t.insert(&key(1), &st(4, 0, 11), false), "an existing entry is kept without overwrite");
        let (i, found) = t.lookup(&key(1)).unwrap();
        assert_eq!((found.backend, found.state), (3, ct::ESTABLISHED));
        assert!(t.insert(&key(1), &st(5, 0, 12), true));
        assert_eq!(t.lookup(&key(1)).unwrap().1.backend, 5);
        assert_eq!(t.len(), 1);
        let e = t.get(i).unwrap();
        let stale = CtSlot { state: st(5, 0, 11), ..e };
        assert!(!t.remove_if(i, &stale), "a refreshed entry is not removed");
        assert!(t.remove_if(i, &e));
        assert!(t.lookup(&key(1)).is_none());
        for p in 0..20 {
            t.insert(&key(100 + p), &st(1, 0, 1), false);
        }
        let n = t.len();
        assert!(n > 0);
        assert_eq!(t.clear() as u64, n);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_bucket_gives_up_closed_then_syn_only_then_the_longest_idle() {
        let t = table(CT_WAYS as usize);
        // One bucket: every key lands in it.
        t.insert(&key(1), &st(1, ct::ESTABLISHED, 100), false);
        t.insert(&key(2), &st(1, 0, 100), false);
        t.insert(&key(3), &st(1, ct::ESTABLISHED | ct::CLOSED, 100), false);
        t.insert(&key(4), &st(1, ct::ESTABLISHED, 50), false);
        assert_eq!(t.len(), 4);
        t.insert(&key(5), &st(1, 0, 200), false);
        assert!(t.lookup(&key(3)).is_none(), "the closed entry goes first");
        t.insert(&key(6), &st(1, ct::ESTABLISHED, 200), false);
        assert!(t.lookup(&key(2)).is_none() || t.lookup(&key(5)).is_none(), "then a SYN-only one");
        assert!(t.lookup(&key(1)).is_some() && t.lookup(&key(4)).is_some());
        t.insert(&key(7), &st(1, ct::ESTABLISHED, 200), false);
        t.insert(&key(8), &st(1, ct::ESTABLISHED, 200), false);
        assert!(t.lookup(&key(4)).is_none(), "then the longest idle");
    }
}
