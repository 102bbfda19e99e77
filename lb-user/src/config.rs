//! Configuration: parsing (TOML -> raw structs) and validation (raw -> [`Config`]).
//!
//! STUB: the types below are the contract the rest of the daemon uses; parsing
//! and validation are being written.

use std::{net::SocketAddr, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Where XDP attaches; client side first.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeConfig,
    pub admin_socket: PathBuf,
    /// `None` when `metrics = ""`.
    pub metrics: Option<SocketAddr>,
    pub conntrack_entries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeConfig {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub table_size: u32,
    /// keepalived's nopreempt when false: traffic stays on a backup until it fails.
    pub preempt: bool,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Nat,
    Dsr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub path: String,
    pub host: Option<String>,
    pub expect_status: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
    pub role: Role,
}

impl BackendConfig {
    /// The backend's stable identity: `address:port` (IPv6 in brackets).
    pub fn id(&self) -> String {
        self.address.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}
