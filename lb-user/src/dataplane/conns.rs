//! `BACKEND_CONNS`, the active connections of each backend slot, mapped into
//! memory (the array is `BPF_F_MMAPABLE`): the daemon reads the counts and
//! corrects them (expired and evicted entries) with atomic adds of its own,
//! which cannot lose an update the data path makes at the same moment (a
//! syscall's read-modify-write could).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::bail;

/// A shared mapping of the u64 counts of an mmapable BPF array.
pub struct ConnsMem {
    ptr: NonNull<AtomicU64>,
    entries: usize,
    len: usize,
}

// Plain shared memory owned by this value; every access is atomic.
unsafe impl Send for ConnsMem {}
unsafe impl Sync for ConnsMem {}

impl ConnsMem {
    /// Maps the `entries` u64 values of the array behind `fd`.
    pub fn map(fd: impl AsFd, entries: usize) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries * 8).div_ceil(page) * page;
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
            bail!("mmap of the BACKEND_CONNS map: {}", std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).expect("mmap returned a non-null address");
        Ok(Self { ptr, entries, len })
    }

    fn slot(&self, i: u32) -> Option<&AtomicU64> {
        // SAFETY: in bounds of the mapping, 8-aligned (page-aligned base, 8-byte values).
        ((i as usize) < self.entries).then(|| unsafe { &*self.ptr.as_ptr().add(i as usize) })
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

impl Drop for ConnsMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
