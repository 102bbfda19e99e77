//! Counting the entries of the conntrack table.
//!
//! The table is mapped into the daemon (see `ct_table`): a count reads every
//! slot in place, with no syscall. The sampler runs it on a shared handle,
//! outside the balancer's lock, every few seconds and caches the result.

use std::time::{Duration, Instant};

use super::ct_table::CtTable;

/// One count of the conntrack table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackCount {
    pub entries: u64,
    /// The table's capacity (`daemon.conntrack_entries`, rounded up to a power of two).
    pub limit: u32,
    /// When it was counted.
    pub at: Instant,
    /// How long counting took.
    pub took: Duration,
}

/// Counts the entries of `table`.
pub fn count(table: &CtTable, limit: u32) -> ConntrackCount {
    let t0 = Instant::now();
    let entries = table.len();
    ConntrackCount { entries, limit, at: t0, took: t0.elapsed() }
}
