//! xlb user space: configuration, Maglev tables, the XDP loader and the daemon.
pub mod admin;
pub mod balancer;
pub mod check;
pub mod config;
pub mod conntrack_count;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod health;
pub mod http;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod ring;
pub mod rates;
pub mod status;
pub mod top;
