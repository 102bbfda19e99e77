//! xlb user space: configuration, Maglev tables, the XDP loader and the daemon.
pub mod admin;
pub mod balancer;
pub mod check;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod maglev;
pub mod neigh;
pub mod trace;
