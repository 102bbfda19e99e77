//! Counting the entries of the conntrack map.
//!
//! A hash map has no "number of elements" the kernel hands to user space, and
//! walking a full 1M-entry map key by key (`BPF_MAP_GET_NEXT_KEY`) costs one
//! syscall per entry. `BPF_MAP_LOOKUP_BATCH` copies thousands of entries per
//! syscall instead; the sampler runs it on a duplicated descriptor, outside the
//! balancer's lock, every few seconds and caches the result.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use lb_common::{FlowKey, FlowState};

pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries asked for per syscall.
const BATCH: u32 = 8192;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `bpf(cmd, attr)` for a `BPF_MAP_*_BATCH` command.
///
/// # Safety
/// `attr`'s pointers must point at buffers of `attr.count` keys and values of
/// the map's key and value types (and at u32 cursors), alive for the call.
pub unsafe fn batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the caller vouches for the buffers behind `attr`.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>() as u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One count of the conntrack map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackCount {
    pub entries: u64,
    /// The map's capacity (`daemon.conntrack_entries`).
    pub limit: u32,
    /// When it was counted.
    pub at: Instant,
    /// How long counting took.
    pub took: Duration,
}

/// Counts the entries of the conntrack map behind `fd` with batched lookups.
pub fn count(fd: &OwnedFd, limit: u32) -> io::Result<ConntrackCount> {
    let t0 = Instant::now();
    let mut keys = vec![FlowKey::default(); BATCH as usize];
    let mut values = vec![FlowState::default(); BATCH as usize];
    // The hash map's batch cursor is a bucket index (u32).
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut first = true;
    let mut entries = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &cursor_in as *const u32 as u64 },
            out_batch: &mut cursor_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers of `BATCH` keys and values of the
        // map's key and value types, and at two u32 cursors, all alive for the call.
        let result = unsafe { batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        entries += u64::from(attr.count);
        match result {
            Ok(()) => {}
            // ENOENT: no more buckets; the last batch's entries are counted.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        cursor_in = cursor_out;
        first = false;
    }
    Ok(ConntrackCount { entries, limit, at: t0, took: t0.elapsed() })
}
