//! `BACKEND_CONNS`, the active connections of each backend slot, mapped into
//! memory (the array is `BPF_F_MMAPABLE`): the daemon reads the counts and
//! corrects them (expired and evicted entries) with atomic adds of its own,
//! which cannot lose an update the data path makes at the same moment (a
//! syscall's read-modify-write could).

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use super::mmap::ArrayMapping;

/// A shared mapping of the u64 counts of an mmapable BPF array.
pub struct ConnsMem {
    mem: ArrayMapping,
}

impl ConnsMem {
    /// Maps the `entries` u64 values of the array behind `fd`.
    pub fn map(fd: impl AsFd, entries: usize) -> anyhow::Result<Self> {
        Ok(Self { mem: ArrayMapping::map(fd, entries, "BACKEND_CONNS")? })
    }

    fn slot(&self, i: u32) -> Option<&AtomicU64> {
        // SAFETY: an element of the live mapping, 8-aligned, holding a u64.
        self.mem.elem(i as usize).map(|p| unsafe { p.cast::<AtomicU64>().as_ref() })
    }

    /// The count of slot `i`. Read as signed: a count corrected by the daemon
    /// a moment before the data path's own decrement may dip below zero for
    /// a moment; it shows as 0.
    pub fn get(&self, i: u32) -> u64 {
        self.slot(i).map_or(0, |s| (s.load(Ordering::Relaxed) as i64).max(0) as u64)
    }

    /// The raw (signed) count of slot `i`.
    pub fn raw(&self, i: u32) -> i64 {
        self.slot(i).map_or(0, |s| s.load(Ordering::Relaxed) as i64)
    }

    /// Adds `d` (may be negative) to slot `i`, atomically with the data path.
    pub fn add(&self, i: u32, d: i64) {
        if let Some(s) = self.slot(i) {
            s.fetch_add(d as u64, Ordering::Relaxed);
        }
    }

    /// Sets slot `i` (a slot handed to a new backend starts from 0).
    pub fn set(&self, i: u32, v: u64) {
        if let Some(s) = self.slot(i) {
            s.store(v, Ordering::Relaxed);
        }
    }
}
