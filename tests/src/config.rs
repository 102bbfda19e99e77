//! A small builder for the xlb.toml files the tests write: `[daemon]`,
//! `[[service]]` with its `[service.health]` and `[[service.backend]]`s.
//!
//! ```
//! use xlb_testbed::config::{ConfigToml, ServiceToml, web};
//! let toml = ConfigToml::new()
//!     .daemon("metrics", "")
//!     .service(ServiceToml::new("www", "198.18.0.10:80".parse().unwrap()).no_checks().backend(web(1, 80)))
//!     .to_string();
//! assert!(toml.contains("[[service.backend]]\naddress = \"198.18.1.11:80\"\n"));
//! ```
//!
//! Keys are written as given (in the order given; setting a key again
//! replaces its value), so a test can also write keys xlb refuses.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use crate::{backend_v4, backend_v6, LB_INTERFACES};

/// A TOML value: a string, an integer, a boolean or a list of strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Strs(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        match self {
            Value::Str(s) => f.write_str(&quote(s)),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Strs(v) => write!(f, "[{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<SocketAddr> for Value {
    fn from(a: SocketAddr) -> Self {
        Value::Str(a.to_string())
    }
}
impl From<&std::path::Path> for Value {
    fn from(p: &std::path::Path) -> Self {
        Value::Str(p.display().to_string())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<&[&str]> for Value {
    fn from(v: &[&str]) -> Self {
        Value::Strs(v.iter().map(|s| s.to_string()).collect())
    }
}
impl<const N: usize> From<[&str; N]> for Value {
    fn from(v: [&str; N]) -> Self {
        Value::Strs(v.iter().map(|s| s.to_string()).collect())
    }
}
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(i: $t) -> Self {
                Value::Int(i64::try_from(i).expect("integer fits in a TOML integer"))
            }
        }
    )*};
}
int_value!(i32, i64, u16, u32, u64, usize);

/// Keys in order; setting one again replaces it in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Keys(Vec<(String, Value)>);

impl Keys {
    fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    fn write(&self, out: &mut String) {
        for (k, v) in &self.0 {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
}

/// A whole xlb.toml. [`ConfigToml::new`] starts with `[daemon] interfaces =
/// ["eth0", "eth1"]` (the lb's interfaces in a [`crate::Topology`]); the
/// admin socket is left to [`crate::xlb::Daemon::start`], which sets its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigToml {
    daemon: Keys,
    services: Vec<ServiceToml>,
}

impl Default for ConfigToml {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigToml {
    pub fn new() -> Self {
        let mut daemon = Keys::default();
        daemon.set("interfaces", LB_INTERFACES.into());
        ConfigToml { daemon, services: Vec::new() }
    }

    /// Sets `key` in `[daemon]` (e.g. `metrics`, `xdp_mode`, `conntrack_entries`).
    pub fn daemon(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.daemon.set(key, value.into());
        self
    }

    /// Appends a `[[service]]`.
    pub fn service(mut self, service: ServiceToml) -> Self {
        self.services.push(service);
        self
    }

    /// Changes service `name` with `f` (e.g. to break one key of a good
    /// config). Panics if there is no such service.
    #[track_caller]
    pub fn with_service(mut self, name: &str, f: impl FnOnce(ServiceToml) -> ServiceToml) -> Self {
        let Some(i) = self.services.iter().position(|s| s.keys.0.iter().any(|(k, v)| k == "name" && *v == name.into()))
        else {
            panic!("no service {name} in the config:\n{self}");
        };
        let svc = self.services.remove(i);
        self.services.insert(i, f(svc));
        self
    }
}

impl fmt::Display for ConfigToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::from("[daemon]\n");
        self.daemon.write(&mut out);
        for s in &self.services {
            out.push_str("\n[[service]]\n");
            s.keys.write(&mut out);
            if !s.health.0.is_empty() {
                out.push_str("[service.health]\n");
                s.health.write(&mut out);
            }
            for b in &s.backends {
                out.push_str("[[service.backend]]\n");
                b.keys.write(&mut out);
            }
        }
        f.write_str(&out)
    }
}

/// One `[[service]]`: its keys (`name` and `vip` first), its
/// `[service.health]` keys and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceToml {
    keys: Keys,
    health: Keys,
    backends: Vec<BackendToml>,
}

impl ServiceToml {
    pub fn new(name: &str, vip: SocketAddr) -> Self {
        let mut keys = Keys::default();
        keys.set("name", name.into());
        keys.set("vip", vip.into());
        ServiceToml { keys, health: Keys::default(), backends: Vec::new() }
    }

    /// Sets `key` of the service (`protocol`, `forwarding`, `table_size`, `preempt`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.keys.set(key, value.into());
        self
    }

    /// Sets `key` in `[service.health]`.
    pub fn health(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.health.set(key, value.into());
        self
    }

    /// `check = "none"`: every backend is taken as up.
    pub fn no_checks(self) -> Self {
        self.health("check", "none")
    }

    /// HTTP checks of `/health` every 200 ms (150 ms timeout), up or down
    /// after 2 in a row: failover within about half a second, as the status
    /// page scene and the failover bench want it.
    pub fn quick_http_checks(self) -> Self {
        self.health("check", "http")
            .health("path", "/health")
            .health("interval_ms", 200u64)
            .health("timeout_ms", 150u64)
            .health("rise", 2u64)
            .health("fall", 2u64)
    }

    /// Appends a backend: a [`BackendToml`], or just its address.
    pub fn backend(mut self, backend: impl Into<BackendToml>) -> Self {
        self.backends.push(backend.into());
        self
    }
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendToml {
    keys: Keys,
}

impl BackendToml {
    pub fn new(address: SocketAddr) -> Self {
        let mut keys = Keys::default();
        keys.set("address", address.into());
        BackendToml { keys }
    }

    /// `role = "primary" | "backup"`.
    pub fn role(self, role: &str) -> Self {
        self.set("role", role)
    }

    pub fn weight(self, weight: u32) -> Self {
        self.set("weight", weight)
    }

    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.keys.set(key, value.into());
        self
    }
}

impl From<SocketAddr> for BackendToml {
    fn from(address: SocketAddr) -> Self {
        BackendToml::new(address)
    }
}

/// Backend webN's IPv4 address and `port` (198.18.1.(10+N):port).
pub fn web(n: usize, port: u16) -> SocketAddr {
    SocketAddr::new(backend_v4(n).into(), port)
}

/// Backend webN's address of the same family as `vip`, and `port`.
pub fn web_like(vip: IpAddr, n: usize, port: u16) -> SocketAddr {
    match vip {
        IpAddr::V4(_) => web(n, port),
        IpAddr::V6(_) => SocketAddr::new(backend_v6(n).into(), port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_table_in_order() {
        let svc = |vip: &str| {
            let vip: SocketAddr = vip.parse().unwrap();
            ServiceToml::new("www", vip)
                .set("preempt", false)
                .health("check", "http")
                .health("interval_ms", 200u64)
                .backend(web_like(vip.ip(), 1, 80))
                .backend(BackendToml::new(web_like(vip.ip(), 2, 80)).role("backup").weight(0))
        };
        let toml = ConfigToml::new()
            .daemon("metrics", "")
            .daemon("conntrack_entries", 4096u32)
            .daemon("metrics", "127.0.0.1:9477")
            .service(svc("198.18.0.10:80"))
            .service(svc("[2001:db8::10]:80").set("name", "www6"))
            .with_service("www6", |s| s.set("preempt", true))
            .to_string();
        assert_eq!(
            toml,
            r#"[daemon]
interfaces = ["eth0", "eth1"]
metrics = "127.0.0.1:9477"
conntrack_entries = 4096

[[service]]
name = "www"
vip = "198.18.0.10:80"
preempt = false
[service.health]
check = "http"
interval_ms = 200
[[service.backend]]
address = "198.18.1.11:80"
[[service.backend]]
address = "198.18.1.12:80"
role = "backup"
weight = 0

[[service]]
name = "www6"
vip = "[2001:db8::10]:80"
preempt = true
[service.health]
check = "http"
interval_ms = 200
[[service.backend]]
address = "[2001:db8:1::11]:80"
[[service.backend]]
address = "[2001:db8:1::12]:80"
role = "backup"
weight = 0
"#
        );
    }

    #[test]
    fn xlb_accepts_what_it_writes() {
        let toml = ConfigToml::new()
            .daemon("metrics", "")
            .service(
                ServiceToml::new("www", "198.18.0.10:80".parse().unwrap())
                    .set("table_size", 251u32)
                    .health("check", "tcp")
                    .health("rise", 3u64)
                    .backend(web(1, 80))
                    .backend(BackendToml::new(web(2, 80)).role("backup")),
            )
            .to_string();
        let cfg = xlb::config::parse(&toml, "builder.toml")
            .unwrap_or_else(|e| panic!("xlb refused the builder's output: {e:#}\n{toml}"));
        assert_eq!(cfg.services.len(), 1);
        assert_eq!(cfg.services[0].backends.len(), 2);
        assert_eq!(cfg.services[0].health.rise, 3);
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(Value::from("a\"b\\c").to_string(), r#""a\"b\\c""#);
        assert_eq!(Value::from(["x"]).to_string(), r#"["x"]"#);
    }
}
