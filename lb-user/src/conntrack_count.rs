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

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per syscall.
const BATCH: u32 = 8192;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
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
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        entries += u64::from(attr.count);
        if rc != 0 {
            let err = io::Error::last_os_error();
            // ENOENT: no more buckets; the last batch's entries are counted.
            if err.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(err);
        }
        cursor_in = cursor_out;
        first = false;
    }
    Ok(ConntrackCount { entries, limit, at: t0, took: t0.elapsed() })
}
