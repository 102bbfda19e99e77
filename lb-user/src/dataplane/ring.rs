//! The Maglev tables (`RING`) written through a shared memory mapping of the
//! BPF array (created with `BPF_F_MMAPABLE`): a table change is a few
//! hundred microseconds of plain stores instead of one syscall per slot
//! (about 100 ms for a 65537-slot table), so a failover is not held up by
//! the write. Each slot is one aligned u32 store: a packet sees either the
//! old or the new backend of a slot, both in the configured set.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::bail;

/// The kernel lays array elements out 8 bytes apart (value size rounded up
/// to 8), so a u32 slot `i` lives at byte `8 * i`.
const ELEM: usize = 8;

/// A writable mapping of `entries` u32 values of an mmapable BPF array.
pub struct RingMem {
    ptr: NonNull<AtomicU32>,
    entries: usize,
    len: usize,
}

// The mapping is plain shared memory, owned by this value; access goes
// through atomics.
unsafe impl Send for RingMem {}
unsafe impl Sync for RingMem {}

impl RingMem {
    /// Maps `entries` slots of the array behind `fd`.
    pub fn map(fd: impl AsFd, entries: usize) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries * ELEM).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks
        // that the map is mmapable and at least `len` bytes long.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of the RING map: {}", std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU32>()).expect("mmap returned a non-null address");
        Ok(Self { ptr, entries, len })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    fn slot(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.entries, "RING slot {i} out of {}", self.entries);
        // SAFETY: in bounds of the mapping, 4-byte aligned (page-aligned base).
        unsafe { &*self.ptr.as_ptr().add(i * ELEM / 4) }
    }

    pub fn get(&self, i: usize) -> u32 {
        self.slot(i).load(Ordering::Relaxed)
    }

    pub fn set(&self, i: usize, v: u32) {
        self.slot(i).store(v, Ordering::Relaxed);
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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
