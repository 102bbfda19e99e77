//! xlb user space: configuration, Maglev tables, the XDP loader and the daemon.
pub mod check;
pub mod balancer;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod maglev;
