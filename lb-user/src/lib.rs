//! xlb user space: configuration, Maglev tables, the XDP loader and the daemon.
pub mod config;
pub mod maglev;
