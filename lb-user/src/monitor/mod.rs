//! Monitoring: what the daemon shows about itself. A [`snapshot`] of the
//! balancer's state and counters is rendered as the status table and JSON
//! ([`status`]), the Prometheus text ([`prometheus`]); the sampler keeps the
//! last two snapshots for [`rates`]; [`http`] serves `daemon.metrics`; and
//! [`trace`] streams sampled data-path decisions.
//!
//! Imports point down: `http` -> `status`, `prometheus` -> `rates` ->
//! `snapshot` -> the balancer.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use self::{
    rates::History,
    snapshot::Snapshot,
    status::{StatusJson, View},
};
use crate::{balancer::Balancer, config::DaemonConfig};

pub mod http;
pub mod prometheus;
pub mod rates;
pub mod snapshot;
pub mod status;
pub mod trace;

/// The sampler's history, shared by the sampler (its only writer) and every
/// status output, so that they all show the same rates.
pub type SharedHistory = Arc<Mutex<History>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a snapshot (holding the balancer's lock for the map reads only)
/// and renders it with the history's rates and conntrack count.
fn render<R>(bal: &Mutex<Balancer>, history: &Mutex<History>, f: impl FnOnce(&View) -> R) -> anyhow::Result<R> {
    let snap = Snapshot::collect(&lock(bal)).context("reading the counters")?;
    let h = lock(history);
    let rates = h.rates();
    Ok(f(&View { snap: &snap, rates: rates.as_ref(), conntrack: h.conntrack.as_ref() }))
}

/// The status table of `xlb status` and `xlb top`.
pub fn status_text(bal: &Mutex<Balancer>, history: &Mutex<History>) -> anyhow::Result<String> {
    render(bal, history, status::text)
}

/// The status document of `xlb status --json` and `/status.json` (see [`StatusJson`]).
pub fn status_json(bal: &Mutex<Balancer>, history: &Mutex<History>) -> anyhow::Result<String> {
    let doc: StatusJson = render(bal, history, status::json)?;
    serde_json::to_string(&doc).context("encoding the status")
}

/// `/metrics`: the Prometheus text.
pub fn metrics_text(bal: &Mutex<Balancer>, history: &Mutex<History>) -> anyhow::Result<String> {
    let snap = Snapshot::collect(&lock(bal)).context("reading the counters")?;
    Ok(prometheus::prometheus(&snap, lock(history).conntrack.as_ref()))
}

/// Binds `daemon.metrics` (an error names the address); `None` when it is
/// turned off. The address is read at start only; a reload does not move it.
pub fn bind_metrics(daemon: &DaemonConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = daemon.metrics else { return Ok(None) };
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("binding daemon.metrics address {addr} (it must be an address of this host that no other program uses; metrics = \"\" turns the endpoint off)")
    })?;
    // Served by the tokio runtime, which is started after attaching.
    listener.set_nonblocking(true).context("making the metrics listener non-blocking")?;
    Ok(Some(listener))
}
