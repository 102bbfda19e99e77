//! xlb user space: the `xlb` daemon and CLI. Modules, top to bottom (a
//! module imports only from the ones below it; `tests/layers.rs` checks it):
//!
//! - [`cli`]: the client side: `check`, `explain`, `status`, `top`, `trace`,
//!   and the admin socket's client.
//! - [`daemon`]: `xlb run`: start, signals, shutdown, the control context and
//!   the admin socket's server.
//! - [`monitor`]: snapshots, rates, Prometheus text, the status table and
//!   JSON, the HTTP server, data-path traces.
//! - [`balancer`]: services and backends as they run, and the order in which
//!   their changes are written to the maps.
//! - [`health`]: probes, rise/fall hysteresis, the check tasks.
//! - [`dataplane`]: the XDP program and its maps (NAT book, mmapped table
//!   memory, conntrack count, next hops).
//! - [`plan`]: which backends take new flows, Maglev tables, shares; loading
//!   a config file.
//! - [`config`]: the configuration file: parsing and validation.
//! - [`maglev`]: the Maglev table builder (pure).
//! - [`logging`]: log lines for a terminal, a file or journald (used by `main`).
pub mod balancer;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod logging;
pub mod maglev;
pub mod monitor;
pub mod plan;
