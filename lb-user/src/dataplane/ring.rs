//! The Maglev tables (`RING`) written through a shared memory mapping of the
//! BPF array (created with `BPF_F_MMAPABLE`): a table change is a few
//! hundred microseconds of plain stores instead of one syscall per slot
//! (about 100 ms for a 65537-slot table), so a failover is not held up by
//! the write. Each slot is one aligned u32 store: a packet sees either the
//! old or the new backend of a slot, both in the configured set.

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU32, Ordering},
};

use super::mmap::ArrayMapping;

/// A writable mapping of `entries` u32 values of an mmapable BPF array.
pub struct RingMem {
    mem: ArrayMapping,
}

impl RingMem {
    /// Maps `entries` slots of the array behind `fd`.
    pub fn map(fd: impl AsFd, entries: usize) -> anyhow::Result<Self> {
        Ok(Self { mem: ArrayMapping::map(fd, entries, "RING")? })
    }

    pub fn entries(&self) -> usize {
        self.mem.entries()
    }

    fn slot(&self, i: usize) -> &AtomicU32 {
        let Some(p) = self.mem.elem(i) else { panic!("RING slot {i} out of {}", self.mem.entries()) };
        // SAFETY: an element of the live mapping, 8-aligned, holding a u32.
        unsafe { p.cast::<AtomicU32>().as_ref() }
    }

    pub fn get(&self, i: usize) -> u32 {
        self.slot(i).load(Ordering::Relaxed)
    }

    pub fn set(&self, i: usize, v: u32) {
        self.slot(i).store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    /// Needs root (BPF): a slot written through the mapping reads back
    /// through the syscall, and the other way round.
    #[test]
    #[ignore = "needs root and the BPF object: cargo xtask test runs ignored tests"]
    fn mapping_and_syscall_agree() {
        let mut dp =
            crate::dataplane::Dataplane::load(crate::dataplane::Sizes { conntrack_entries: 1024, ring_entries: 1000 })
                .expect("loading the XDP object");
        let table: Vec<u32> = (0..997).map(|i| i * 3 + 1).collect();
        dp.write_ring(3, &table, None).unwrap();
        for (i, &v) in table.iter().enumerate() {
            assert_eq!(dp.read_ring_slot(3 + i as u32).unwrap(), v, "slot {}", 3 + i);
        }
    }
}
