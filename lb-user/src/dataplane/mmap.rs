//! A shared, writable memory mapping of an mmapable BPF array
//! (`BPF_F_MMAPABLE`), as `RING`, `BACKEND_CONNS` and `CONNTRACK` are: the
//! kernel lays the array's elements out one value size (rounded up to 8)
//! apart, so element `i` starts at byte `size * i`, 8-aligned.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::bail;

/// Bytes from one element to the next of an array of values of at most 8 bytes.
const ELEM: usize = 8;

/// The first `entries` elements of an array map, mapped into this process.
pub struct ArrayMapping {
    base: NonNull<u8>,
    entries: usize,
    /// Bytes from one element to the next.
    elem: usize,
    len: usize,
}

// Plain shared memory owned by this value; its users access it with atomics.
unsafe impl Send for ArrayMapping {}
unsafe impl Sync for ArrayMapping {}

impl ArrayMapping {
    /// Maps `entries` elements of the array behind `fd` (`name` for errors).
    pub fn map(fd: impl AsFd, entries: usize, name: &str) -> anyhow::Result<Self> {
        Self::map_values(fd, entries, ELEM, name)
    }

    /// Maps `entries` elements of `value_size` bytes (rounded up to 8) of the
    /// array behind `fd`.
    pub fn map_values(fd: impl AsFd, entries: usize, value_size: usize, name: &str) -> anyhow::Result<Self> {
        let elem = value_size.next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries * elem).div_ceil(page) * page;
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
            bail!("mmap of the {name} map: {}", std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).expect("mmap returned a non-null address");
        Ok(Self { base, entries, elem, len })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Element `i`'s first byte (8-aligned: the base is page-aligned), or
    /// `None` past the mapped elements.
    pub fn elem(&self, i: usize) -> Option<NonNull<u8>> {
        // SAFETY: in bounds of the mapping.
        (i < self.entries).then(|| unsafe { self.base.add(i * self.elem) })
    }
}

impl Drop for ArrayMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
