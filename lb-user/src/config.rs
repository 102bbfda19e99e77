//! Configuration: parsing (TOML -> raw structs) and validation (raw -> [`Config`]).
//!
//! Parsing and validation are separate steps:
//!
//! 1. The text is parsed into a spanned TOML document and deserialized into the
//!    `Raw*` structs below, which mirror the file exactly (unknown keys are
//!    rejected) but keep enums, addresses and numbers loose (strings and `i64`),
//!    so that nothing is rejected before validation can say where and why.
//!    A TOML syntax error, an unknown key or a value of the wrong TOML type stops
//!    here and is reported with its line and column.
//! 2. Validation turns the raw structs into a [`Config`], collecting *every*
//!    problem it finds, each named by its field path
//!    (`service[1] (www).backend[0].address`) and the line it is on.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::maglev::is_prime;

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xlb/xlb.sock";
/// Default Prometheus endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";
/// Smallest Maglev table size accepted.
pub const MIN_TABLE_SIZE: u32 = 7;
/// Largest backend weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest conntrack capacity accepted (2^27 flows).
pub const MAX_CONNTRACK_ENTRIES: u32 = 1 << 27;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
/// Longest service name accepted.
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub services: Vec<ServiceConfig>,
}

impl Config {
    /// Number of backends over all services.
    pub fn backend_count(&self) -> usize {
        self.services.iter().map(|s| s.backends.len()).sum()
    }

    /// The service listening on `vip` for `protocol`.
    pub fn find_service(&self, vip: SocketAddr, protocol: Protocol) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.vip == vip && s.protocol == protocol)
    }
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

impl XdpModeConfig {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 3] =
        [("auto", Self::Auto), ("native", Self::Native), ("generic", Self::Generic)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
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

impl ServiceConfig {
    /// Indices (into `backends`) of the backends that take new flows, given
    /// which backends are up: the primaries that are up with weight > 0, or,
    /// when there is none, the backups that are up with weight > 0.
    ///
    /// This is the stateless rule; with `preempt = false` the daemon may keep
    /// a backup serving after a primary came back.
    pub fn serving_backends(&self, up: impl Fn(usize) -> bool) -> Vec<usize> {
        let pick = |role: Role| -> Vec<usize> {
            self.backends
                .iter()
                .enumerate()
                .filter(|&(i, b)| b.role == role && b.weight > 0 && up(i))
                .map(|(i, _)| i)
                .collect()
        };
        let primaries = pick(Role::Primary);
        if primaries.is_empty() {
            pick(Role::Backup)
        } else {
            primaries
        }
    }

    /// The backends that take new flows when every backend is up.
    pub fn serving_when_all_up(&self) -> Vec<usize> {
        self.serving_backends(|_| true)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 2] = [("tcp", Self::Tcp), ("udp", Self::Udp)];

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

impl Forwarding {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 2] = [("nat", Self::Nat), ("dsr", Self::Dsr)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
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

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Tcp,
            path: "/".to_owned(),
            host: None,
            expect_status: 200,
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
    None,
}

impl CheckKind {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 3] = [("tcp", Self::Tcp), ("http", Self::Http), ("none", Self::None)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
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

impl Role {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 2] = [("primary", Self::Primary), ("backup", Self::Backup)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
}

fn choice_name<T: Copy + PartialEq>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices.iter().find(|(_, v)| *v == value).map_or("?", |(name, _)| name)
}

// ---------------------------------------------------------------------------
// Errors

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: the field path (`service[1] (www).backend[0].address`) followed by
    /// its line when known, `line L, column C` for a TOML syntax error, or empty
    /// when the file itself is the problem (it cannot be read).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A configuration that cannot be used: every problem found, one per line as
/// `FILE: FIELD: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file as given (or the name passed to [`parse`]).
    pub file: String,
    /// Never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.file)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigError {
            file,
            problems: vec![Problem {
                field: String::new(),
                message: format!("cannot read the configuration file: {e}"),
                line: None,
            }],
        }),
    }
}

/// Parses and validates a configuration given as text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError { file: file.to_owned(), problems };
    let doc = DeTable::parse(text).map_err(|e| fail(vec![syntax_problem(text, &e)]))?;
    let raw: RawConfig = toml::from_str(text).map_err(|e| fail(vec![serde_problem(text, doc.get_ref(), &e)]))?;
    let mut v = Validator { text, doc: doc.get_ref(), problems: Vec::new() };
    let config = v.config(raw);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        // In file order; problems without a line (nothing to point at) last.
        v.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(fail(v.problems))
    }
}

// ---------------------------------------------------------------------------
// Raw layer: mirrors the file, strict about keys, loose about values.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    admin_socket: Option<String>,
    metrics: Option<String>,
    conntrack_entries: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: Option<String>,
    protocol: Option<String>,
    forwarding: Option<String>,
    table_size: Option<i64>,
    preempt: Option<bool>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: Option<String>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<i64>,
    interval_ms: Option<i64>,
    timeout_ms: Option<i64>,
    rise: Option<i64>,
    fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    role: Option<String>,
}

// ---------------------------------------------------------------------------
// Field paths and locations

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    /// Array index, with the element's `name` when it has one.
    Index(usize, Option<String>),
}

/// A path to a field, displayed as `service[1] (www).backend[0].address`.
#[derive(Clone, Debug, Default)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn key(&self, key: &str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        FieldPath(segs)
    }

    fn index(&self, index: usize, name: Option<&str>) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index, name.map(str::to_owned)));
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index, None) => write!(f, "[{index}]")?,
                Seg::Index(index, Some(name)) => write!(f, "[{index}] ({name})")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The `name` of an array element that is a table with a string `name` key.
fn element_name<'a>(value: &'a DeValue<'_>) -> Option<&'a str> {
    match value {
        DeValue::Table(t) => t.iter().find(|(k, _)| k.get_ref() == "name").and_then(|(_, v)| v.get_ref().as_str()),
        _ => None,
    }
}

/// The path of the innermost key or value of `table` that covers byte `pos`.
fn path_at(table: &DeTable<'_>, pos: usize) -> Option<Vec<Seg>> {
    for (key, value) in table.iter() {
        let here = || vec![Seg::Key(key.get_ref().to_string())];
        if key.span().contains(&pos) {
            return Some(here());
        }
        match value.get_ref() {
            DeValue::Table(inner) => {
                if let Some(rest) = path_at(inner, pos) {
                    return Some([here(), rest].concat());
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let index = || Seg::Index(i, element_name(item.get_ref()).map(str::to_owned));
                    if let DeValue::Table(inner) = item.get_ref() {
                        if let Some(rest) = path_at(inner, pos) {
                            return Some([here(), vec![index()], rest].concat());
                        }
                    }
                    if item.span().contains(&pos) {
                        return Some([here(), vec![index()]].concat());
                    }
                }
            }
            _ => {}
        }
        if value.span().contains(&pos) {
            return Some(here());
        }
    }
    None
}

/// Byte offset of the value at `path`, or of its deepest existing ancestor.
fn offset_of(table: &DeTable<'_>, path: &[Seg]) -> Option<usize> {
    let mut current: Option<&DeValue<'_>> = None;
    let mut offset = None;
    for seg in path {
        let found = match (seg, current) {
            (Seg::Key(key), None) => table.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v),
            (Seg::Key(key), Some(DeValue::Table(t))) => t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v),
            (Seg::Index(i, _), Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        match found {
            Some(value) => {
                offset = Some(value.span().start);
                current = Some(value.get_ref());
            }
            None => break,
        }
    }
    offset
}

fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let (line, column) = line_col(text, error.span().map_or(0, |s| s.start));
    let mut message = error.message().to_owned();
    if let Some(span) = error.span() {
        let snippet = text.get(span).unwrap_or("");
        if !snippet.is_empty() && snippet.len() <= 40 && !snippet.contains('\n') {
            message = format!("{message}: `{snippet}`");
        }
    }
    Problem { field: format!("line {line}, column {column}"), message, line: Some(line) }
}

/// A deserialization error (unknown key, wrong TOML type), located by its key path.
fn serde_problem(text: &str, doc: &DeTable<'_>, error: &toml::de::Error) -> Problem {
    let message = error
        .message()
        .replace("unknown field", "unknown key")
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    let Some(span) = error.span() else {
        return Problem { field: "(document)".to_owned(), message, line: None };
    };
    let (line, column) = line_col(text, span.start);
    let at = format!("line {line}, column {column}");
    let field = match path_at(doc, span.start) {
        Some(path) => format!("{} ({at})", FieldPath(path)),
        None => at,
    };
    Problem { field, message, line: Some(line) }
}

// ---------------------------------------------------------------------------
// Validation

struct Validator<'a> {
    text: &'a str,
    doc: &'a DeTable<'a>,
    problems: Vec<Problem>,
}

/// An address that parsed, with the field it came from.
struct Located<T> {
    value: T,
    path: FieldPath,
}

impl Validator<'_> {
    fn report(&mut self, path: &FieldPath, message: impl Into<String>) {
        let line = offset_of(self.doc, &path.0).map(|offset| line_col(self.text, offset).0);
        let field = match line {
            Some(line) => format!("{path} (line {line})"),
            None => path.to_string(),
        };
        self.problems.push(Problem { field, message: message.into(), line });
    }

    /// An enum value, or its default when absent; reports unknown names.
    fn choice<T: Copy>(
        &mut self,
        path: &FieldPath,
        value: Option<&str>,
        choices: &[(&'static str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return *v;
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let hint = match choices.iter().find(|(name, _)| name.eq_ignore_ascii_case(value.trim())) {
            Some((name, _)) => format!(" (did you mean \"{name}\"?)"),
            None => String::new(),
        };
        self.report(path, format!("unknown value \"{value}\"{hint}; expected one of: {}", names.join(", ")));
        default
    }

    /// An integer in `min..=max`, or `default` when absent; reports values out of range.
    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        path: &FieldPath,
        value: Option<i64>,
        default: T,
        (min, max): (i64, i64),
        expected: &str,
    ) -> T {
        let Some(value) = value else { return default };
        match T::try_from(value) {
            Ok(v) if (min..=max).contains(&value) => v,
            _ => {
                self.report(path, format!("{value} is out of range; expected {expected}"));
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let daemon = self.daemon(raw.daemon);
        let root = FieldPath::default();
        let services_path = root.key("service");
        if raw.service.is_empty() {
            self.report(
                &services_path,
                "no services: add at least one [[service]] with a vip and a [[service.backend]]",
            );
        }
        if raw.service.len() > lb_common::MAX_SERVICES as usize {
            self.report(
                &services_path,
                format!("{} services; at most {} are supported", raw.service.len(), lb_common::MAX_SERVICES),
            );
        }
        let total_backends: usize = raw.service.iter().map(|s| s.backend.len()).sum();
        if total_backends > lb_common::MAX_BACKENDS as usize {
            self.report(
                &services_path,
                format!(
                    "{total_backends} backends over all services; at most {} are supported",
                    lb_common::MAX_BACKENDS
                ),
            );
        }

        let mut services = Vec::with_capacity(raw.service.len());
        // Where each name and each VIP (address, port, protocol) was first seen.
        let mut names: HashMap<String, FieldPath> = HashMap::new();
        let mut vips: HashMap<(SocketAddr, Protocol), FieldPath> = HashMap::new();
        for (i, raw) in raw.service.into_iter().enumerate() {
            let path = services_path.index(i, raw.name.as_deref());
            let Some(service) = self.service(&path, raw) else {
                continue;
            };
            if let Some(name) = &service.name {
                match names.get(&name.value) {
                    Some(first) => {
                        let first = first.to_string();
                        self.report(&name.path, format!("duplicate service name \"{}\" (also {first})", name.value));
                    }
                    None => {
                        names.insert(name.value.clone(), path.clone());
                    }
                }
            }
            let vip = &service.vip;
            let key = (vip.value, service.config.protocol);
            match vips.get(&key) {
                Some(first) => {
                    let first = first.to_string();
                    self.report(
                        &vip.path,
                        format!(
                            "duplicate VIP {} {}: {first} already serves it; each (VIP, port, protocol) belongs to one service",
                            vip.value,
                            service.config.protocol.as_str()
                        ),
                    );
                }
                None => {
                    vips.insert(key, path.clone());
                }
            }
            services.push(service);
        }

        // A backend that is itself a VIP would send traffic round in a loop.
        for service in &services {
            for backend in &service.backends {
                if let Some(owner) = vips.get(&(backend.value, service.config.protocol)) {
                    let owner = owner.to_string();
                    self.report(
                        &backend.path,
                        format!(
                            "backend {} is the VIP of {owner}; a backend must be a real server, not a VIP",
                            backend.value
                        ),
                    );
                }
            }
        }

        Config { daemon, services: services.into_iter().map(|s| s.config).collect() }
    }

    fn daemon(&mut self, raw: Option<RawDaemon>) -> DaemonConfig {
        let path = FieldPath::default().key("daemon");
        let raw = raw.unwrap_or(RawDaemon {
            interfaces: None,
            xdp_mode: None,
            admin_socket: None,
            metrics: None,
            conntrack_entries: None,
        });

        let interfaces_path = path.key("interfaces");
        let interfaces = raw.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            self.report(
                &interfaces_path,
                "no interfaces; expected the interfaces XDP attaches to, client side first, e.g. interfaces = [\"eth0\"]",
            );
        }
        for (i, name) in interfaces.iter().enumerate() {
            let item = interfaces_path.index(i, None);
            if let Some(j) = interfaces[..i].iter().position(|n| n == name) {
                self.report(&item, format!("duplicate interface \"{name}\" (also daemon.interfaces[{j}])"));
            } else if let Err(why) = check_ifname(name) {
                self.report(&item, why);
            }
        }

        let xdp_mode =
            self.choice(&path.key("xdp_mode"), raw.xdp_mode.as_deref(), &XdpModeConfig::CHOICES, XdpModeConfig::Auto);

        let admin_socket = raw.admin_socket.unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.to_owned());
        if admin_socket.is_empty() {
            self.report(
                &path.key("admin_socket"),
                format!("empty path; expected the admin socket's path, e.g. \"{DEFAULT_ADMIN_SOCKET}\""),
            );
        }

        let metrics = match raw.metrics.as_deref().unwrap_or(DEFAULT_METRICS) {
            "" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.report(
                        &path.key("metrics"),
                        format!("\"{text}\" is not an IP:port address; expected e.g. \"{DEFAULT_METRICS}\", or \"\" to turn metrics off"),
                    );
                    None
                }
            },
        };

        let conntrack_entries = self.int(
            &path.key("conntrack_entries"),
            raw.conntrack_entries,
            lb_common::DEFAULT_CONNTRACK_ENTRIES,
            (1, MAX_CONNTRACK_ENTRIES.into()),
            &format!(
                "the number of flows tracked, 1 to {MAX_CONNTRACK_ENTRIES} (default {})",
                lb_common::DEFAULT_CONNTRACK_ENTRIES
            ),
        );

        DaemonConfig { interfaces, xdp_mode, admin_socket: admin_socket.into(), metrics, conntrack_entries }
    }

    /// Validates one service; `None` only when it has no usable VIP to build from.
    fn service(&mut self, path: &FieldPath, raw: RawService) -> Option<CheckedService> {
        let name = match raw.name {
            Some(name) => {
                let name_path = path.key("name");
                if let Err(why) = check_service_name(&name) {
                    self.report(&name_path, why);
                }
                Some(Located { value: name, path: name_path })
            }
            None => None,
        };

        let vip_path = path.key("vip");
        let vip = match raw.vip.as_deref() {
            None => {
                self.report(
                    &vip_path,
                    "missing; expected the virtual address clients connect to, e.g. vip = \"198.18.0.10:80\"",
                );
                None
            }
            Some(text) => match parse_endpoint(text, "198.18.0.10:80") {
                Ok(addr) => Some(Located { value: addr, path: vip_path }),
                Err(why) => {
                    self.report(&vip_path, why);
                    None
                }
            },
        };

        let protocol = self.choice(&path.key("protocol"), raw.protocol.as_deref(), &Protocol::CHOICES, Protocol::Tcp);
        let forwarding =
            self.choice(&path.key("forwarding"), raw.forwarding.as_deref(), &Forwarding::CHOICES, Forwarding::Nat);
        let health = self.health(&path.key("health"), raw.health);

        let backends_path = path.key("backend");
        if raw.backend.is_empty() {
            self.report(
                &backends_path,
                "no backends; expected at least one [[service.backend]] with an address, e.g. address = \"198.18.1.11:80\"",
            );
        }
        let mut backends: Vec<Located<SocketAddr>> = Vec::new();
        let mut configs = Vec::new();
        for (j, raw) in raw.backend.into_iter().enumerate() {
            let bpath = backends_path.index(j, None);
            if let Some(backend) = self.backend(&bpath, raw, vip.as_ref().map(|v| v.value), forwarding) {
                if let Some(first) = backends.iter().find(|b| b.value == backend.address) {
                    let first = first.path.to_string();
                    self.report(
                        &bpath.key("address"),
                        format!("duplicate backend {} (also {first}); list each backend once and use weight to give it more flows", backend.address),
                    );
                }
                backends.push(Located { value: backend.address, path: bpath.key("address") });
                configs.push(backend);
            }
        }
        if !configs.is_empty() && configs.iter().all(|b| b.weight == 0) {
            self.report(
                &backends_path,
                "every backend has weight 0, so the service could never take a flow; give at least one backend a weight of 1 or more",
            );
        }

        let table_size = self.table_size(&path.key("table_size"), raw.table_size, configs.len());

        let vip = vip?;
        Some(CheckedService {
            config: ServiceConfig {
                name: name.as_ref().map_or_else(|| format!("{}/{}", vip.value, protocol.as_str()), |n| n.value.clone()),
                vip: vip.value,
                protocol,
                forwarding,
                table_size,
                preempt: raw.preempt.unwrap_or(true),
                health,
                backends: configs,
            },
            name,
            vip,
            backends,
        })
    }

    fn table_size(&mut self, path: &FieldPath, value: Option<i64>, backends: usize) -> u32 {
        let default = lb_common::DEFAULT_TABLE_SIZE;
        let Some(value) = value else { return default };
        let range = i64::from(MIN_TABLE_SIZE)..=i64::from(lb_common::MAX_TABLE_SIZE);
        let Some(size) = u32::try_from(value).ok().filter(|_| range.contains(&value)) else {
            self.report(
                path,
                format!(
                    "{value} is out of range; expected a prime from {MIN_TABLE_SIZE} to {} (default {default})",
                    lb_common::MAX_TABLE_SIZE
                ),
            );
            return default;
        };
        if !is_prime(size) {
            let below = (MIN_TABLE_SIZE..size).rev().find(|&n| is_prime(n));
            let above = (size..=lb_common::MAX_TABLE_SIZE).find(|&n| is_prime(n));
            let near: Vec<String> = below.into_iter().chain(above).map(|n| n.to_string()).collect();
            self.report(
                path,
                format!(
                    "{size} is not prime; Maglev needs a prime table size (nearest: {}; default {default})",
                    near.join(" or ")
                ),
            );
            return size;
        }
        if size as usize <= backends {
            self.report(
                path,
                format!(
                    "{size} is not larger than the number of backends ({backends}); expected a prime well above it (ideally 100 times the backends)"
                ),
            );
        }
        size
    }

    fn health(&mut self, path: &FieldPath, raw: Option<RawHealth>) -> HealthConfig {
        let defaults = HealthConfig::default();
        let Some(raw) = raw else { return defaults };
        let check = self.choice(&path.key("check"), raw.check.as_deref(), &CheckKind::CHOICES, defaults.check);

        let http_path = raw.path.unwrap_or(defaults.path);
        if !http_path.starts_with('/') {
            self.report(
                &path.key("path"),
                format!("\"{http_path}\" does not start with '/'; expected an HTTP path such as \"/\" or \"/healthz\""),
            );
        } else if http_path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.report(
                &path.key("path"),
                format!(
                    "{http_path:?} contains spaces or control characters; expected an HTTP path (percent-encode them)"
                ),
            );
        }
        if let Some(host) = &raw.host {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.report(
                    &path.key("host"),
                    format!(
                        "{host:?} is not a valid Host header value; expected e.g. \"www.example.org\", or leave it out"
                    ),
                );
            }
        }

        let expect_status = self.int(
            &path.key("expect_status"),
            raw.expect_status,
            defaults.expect_status,
            (100, 599),
            "an HTTP status from 100 to 599",
        );
        let interval_ms: u64 = self.int(
            &path.key("interval_ms"),
            raw.interval_ms,
            defaults.interval_ms,
            (1, 3_600_000),
            "milliseconds between checks, 1 to 3600000",
        );
        let timeout_ms: u64 = self.int(
            &path.key("timeout_ms"),
            raw.timeout_ms,
            defaults.timeout_ms,
            (1, 3_600_000),
            "milliseconds, 1 to 3600000, no more than interval_ms",
        );
        if timeout_ms > interval_ms {
            self.report(
                &path.key("timeout_ms"),
                format!("timeout_ms ({timeout_ms}) is greater than interval_ms ({interval_ms}); expected a timeout no longer than the interval between checks"),
            );
        }
        let rise = self.int(
            &path.key("rise"),
            raw.rise,
            defaults.rise,
            (1, 1000),
            "the number of passed checks that bring a backend up, 1 to 1000",
        );
        let fall = self.int(
            &path.key("fall"),
            raw.fall,
            defaults.fall,
            (1, 1000),
            "the number of failed checks that take a backend down, 1 to 1000",
        );
        HealthConfig { check, path: http_path, host: raw.host, expect_status, interval_ms, timeout_ms, rise, fall }
    }

    fn backend(
        &mut self,
        path: &FieldPath,
        raw: RawBackend,
        vip: Option<SocketAddr>,
        forwarding: Forwarding,
    ) -> Option<BackendConfig> {
        let weight = self.int(
            &path.key("weight"),
            raw.weight,
            1,
            (0, MAX_WEIGHT.into()),
            &format!("a weight from 0 (no new flows) to {MAX_WEIGHT}"),
        );
        let role = self.choice(&path.key("role"), raw.role.as_deref(), &Role::CHOICES, Role::Primary);
        let address_path = path.key("address");
        let Some(text) = raw.address.as_deref() else {
            self.report(
                &address_path,
                "missing; expected the real server's IP:port, e.g. address = \"198.18.1.11:80\"",
            );
            return None;
        };
        let address = match parse_endpoint(text, "198.18.1.11:80") {
            Ok(address) => address,
            Err(why) => {
                self.report(&address_path, why);
                return None;
            }
        };
        if let Some(vip) = vip {
            if vip.is_ipv4() != address.is_ipv4() {
                let family = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
                self.report(
                    &address_path,
                    format!(
                        "{address} is {} but the VIP {vip} is {}; expected a backend of the VIP's address family",
                        family(address),
                        family(vip)
                    ),
                );
            } else if forwarding == Forwarding::Dsr && address.port() != vip.port() {
                self.report(
                    &address_path,
                    format!(
                        "port {} differs from the VIP port {}; with forwarding = \"dsr\" only the MAC address is rewritten, so expected the backend to listen on port {}",
                        address.port(),
                        vip.port(),
                        vip.port()
                    ),
                );
            }
        }
        Some(BackendConfig { address, weight, role })
    }
}

/// A validated service with where its identifying fields came from.
struct CheckedService {
    config: ServiceConfig,
    name: Option<Located<String>>,
    vip: Located<SocketAddr>,
    backends: Vec<Located<SocketAddr>>,
}

/// Parses `IP:port` (IPv6 in brackets), explaining what is wrong otherwise.
fn parse_endpoint(text: &str, example: &str) -> Result<SocketAddr, String> {
    let expected = format!("expected IP:port, e.g. \"{example}\" or \"[2001:db8::10]:80\"");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return check_endpoint(addr);
    }
    if text.trim() != text && text.trim().parse::<SocketAddr>().is_ok() {
        return Err(format!("\"{text}\" has spaces around it; {expected}"));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        let with_port = SocketAddr::new(ip, 80);
        let note = if ip.is_ipv6() { " (an IPv6 address takes brackets when a port follows)" } else { "" };
        return Err(format!("\"{text}\" has no port; expected IP:port, e.g. \"{with_port}\"{note}"));
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let host_ok = host.parse::<IpAddr>().is_ok()
            || host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|h| h.parse::<IpAddr>().is_ok());
        if host_ok {
            return Err(format!("\"{text}\": \"{port}\" is not a port; expected a port from 1 to 65535"));
        }
    }
    Err(format!("\"{text}\" is not an IP:port address (host names are not resolved); {expected}"))
}

fn check_endpoint(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!("port 0 in \"{addr}\"; expected a port from 1 to 65535"));
    }
    if let SocketAddr::V6(v6) = addr {
        if v6.scope_id() != 0 {
            return Err(format!("\"{addr}\" has a zone index; expected a global IPv6 address without %zone"));
        }
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("{ip} is not a unicast address; expected the address of one host"));
    }
    Ok(addr)
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name; expected a name such as \"eth0\"".to_owned());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!("interface name \"{name}\" is longer than {MAX_IFNAME_LEN} bytes, the kernel's limit"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) || name == "." || name == ".."
    {
        return Err(format!("\"{name}\" is not a valid interface name; expected a name such as \"eth0\""));
    }
    Ok(())
}

fn check_service_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(valid) {
        return Err(format!(
            "{name:?} is not a valid service name; expected 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of design.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
[daemon]
interfaces = ["eth0"]              # where XDP attaches; client side first
xdp_mode = "auto"                  # auto | native | generic
admin_socket = "/run/xlb/xlb.sock" # root-only (0600)
metrics = "127.0.0.1:9477"         # Prometheus text endpoint; "" turns it off
conntrack_entries = 1048576        # flows tracked (LRU capacity)

[[service]]
name = "www"
vip = "198.18.0.10:80"             # IPv4 or [IPv6]:port
protocol = "tcp"                   # tcp | udp
forwarding = "nat"                 # nat | dsr
table_size = 65537                 # prime

[service.health]
check = "http"                     # tcp | http | none
path = "/"
expect_status = 200
interval_ms = 1000
timeout_ms = 500
rise = 2
fall = 3

[[service.backend]]
address = "198.18.1.11:80"
weight = 1
role = "primary"                   # primary | backup
"#;

    /// A small valid config the broken ones are made from.
    const BASE: &str = r#"
[daemon]
interfaces = ["eth0", "eth1"]

[[service]]
name = "www"
vip = "198.18.0.10:80"

[[service.backend]]
address = "198.18.1.11:80"

[[service.backend]]
address = "198.18.1.12:80"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, "test.toml") {
            Ok(config) => panic!("expected the config to be refused, but it parsed: {config:#?}"),
            Err(e) => {
                assert_eq!(e.file, "test.toml");
                assert!(!e.problems.is_empty(), "a ConfigError must carry problems");
                e.problems
            }
        }
    }

    /// Asserts exactly one problem, on a field containing `field`, with a message containing `message`.
    #[track_caller]
    fn assert_one(text: &str, field: &str, message: &str) {
        let problems = problems(text);
        assert!(
            problems.len() == 1 && problems[0].field.contains(field) && problems[0].message.contains(message),
            "expected one problem on `{field}` saying `{message}`, got: {problems:#?}"
        );
    }

    #[test]
    fn design_example_parses() {
        let config = parse(DESIGN_EXAMPLE, "design.toml").expect("the design.md example is valid");
        assert_eq!(config.daemon.interfaces, ["eth0"]);
        assert_eq!(config.daemon.xdp_mode, XdpModeConfig::Auto);
        assert_eq!(config.daemon.admin_socket, PathBuf::from("/run/xlb/xlb.sock"));
        assert_eq!(config.daemon.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(config.daemon.conntrack_entries, 1_048_576);
        let service = &config.services[0];
        assert_eq!(service.name, "www");
        assert_eq!(service.vip, "198.18.0.10:80".parse().unwrap());
        assert_eq!((service.protocol, service.forwarding, service.table_size), (Protocol::Tcp, Forwarding::Nat, 65537));
        assert!(service.preempt);
        assert_eq!(service.health.check, CheckKind::Http);
        assert_eq!(
            service.backends,
            [BackendConfig { address: "198.18.1.11:80".parse().unwrap(), weight: 1, role: Role::Primary }]
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let config = parse(BASE, "base.toml").expect("BASE is valid");
        let d = &config.daemon;
        assert_eq!(d.xdp_mode, XdpModeConfig::Auto);
        assert_eq!(d.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(d.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert_eq!(d.conntrack_entries, lb_common::DEFAULT_CONNTRACK_ENTRIES);
        let s = &config.services[0];
        assert_eq!(
            (s.protocol, s.forwarding, s.table_size, s.preempt),
            (Protocol::Tcp, Forwarding::Nat, lb_common::DEFAULT_TABLE_SIZE, true)
        );
        assert_eq!(s.health, HealthConfig::default());
        assert!(s.backends.iter().all(|b| b.weight == 1 && b.role == Role::Primary));
    }

    #[test]
    fn metrics_empty_turns_off_and_ipv6_service_parses() {
        let text = r#"
[daemon]
interfaces = ["eth0"]
metrics = ""
[[service]]
vip = "[2001:db8::10]:443"
protocol = "udp"
forwarding = "dsr"
preempt = false
[service.health]
check = "none"
[[service.backend]]
address = "[2001:db8:1::11]:443"
role = "backup"
weight = 0
[[service.backend]]
address = "[2001:db8:1::12]:443"
"#;
        let config = parse(text, "v6.toml").expect("valid");
        assert_eq!(config.daemon.metrics, None);
        let s = &config.services[0];
        assert_eq!(s.name, "[2001:db8::10]:443/udp", "a service without a name is named by its VIP");
        assert!(!s.preempt);
        assert_eq!(s.health.check, CheckKind::None);
        assert_eq!(s.backends[0].role, Role::Backup);
    }

    #[test]
    fn serving_backends_prefers_primaries_then_backups() {
        let text = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
vip = "198.18.0.10:80"
[[service.backend]]
address = "198.18.1.11:80"
role = "backup"
[[service.backend]]
address = "198.18.1.12:80"
[[service.backend]]
address = "198.18.1.13:80"
weight = 0
"#;
        let s = &parse(text, "t.toml").expect("valid").services[0];
        assert_eq!(s.serving_when_all_up(), [1]);
        assert_eq!(s.serving_backends(|i| i != 1), [0], "backup takes over when the primary is down");
        assert_eq!(s.serving_backends(|_| false), Vec::<usize>::new());
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let text = "[daemon]\ninterfaces = [\"eth0\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].field.starts_with("line 2, column"), "{p:#?}");
        assert_eq!(p[0].line, Some(2));
    }

    #[test]
    fn unknown_key_reports_path_and_line() {
        let text = BASE.replace("address = \"198.18.1.12:80\"", "address = \"198.18.1.12:80\"\nwieght = 2");
        assert_one(&text, "service[0] (www).backend[1].wieght (line 14, column 1)", "unknown key `wieght`");
        assert_one(&format!("{BASE}\n[daemon]\n"), "line 15, column 2", "duplicate key: `daemon`");
        assert_one(
            &format!("{BASE}\n[daemon.extra]\n"),
            "daemon.extra (line 15, column 9)",
            "unknown key `extra`, expected one of `interfaces`",
        );
        assert_one(
            &BASE.replace("[daemon]", "[daemon]\nmode = \"x\""),
            "daemon.mode (line 3, column 1)",
            "unknown key `mode`",
        );
    }

    #[test]
    fn wrong_toml_type_reports_path() {
        assert_one(
            &BASE.replace("name = \"www\"", "name = \"www\"\ntable_size = \"big\""),
            "service[0] (www).table_size (line 7",
            "expected an integer",
        );
    }

    #[test]
    fn bad_values_name_their_fields() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("interfaces = [\"eth0\", \"eth1\"]", "interfaces = []", "daemon.interfaces", "no interfaces"),
            (
                "interfaces = [\"eth0\", \"eth1\"]",
                "interfaces = [\"eth0\", \"eth0\"]",
                "daemon.interfaces[1]",
                "duplicate interface",
            ),
            ("[daemon]", "[daemon]\nxdp_mode = \"fast\"", "daemon.xdp_mode", "expected one of: auto, native, generic"),
            ("[daemon]", "[daemon]\nmetrics = \"localhost\"", "daemon.metrics", "not an IP:port"),
            ("[daemon]", "[daemon]\nconntrack_entries = 0", "daemon.conntrack_entries", "out of range"),
            ("[daemon]", "[daemon]\nconntrack_entries = 134217729", "daemon.conntrack_entries", "out of range"),
            ("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10\"", "service[0] (www).vip", "has no port"),
            ("vip = \"198.18.0.10:80\"", "vip = \"2001:db8::10:80\"", "service[0] (www).vip", "takes brackets"),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"2001:db8::10::80\"",
                "service[0] (www).vip",
                "is not an IP:port address",
            ),
            ("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:0\"", "service[0] (www).vip", "port 0"),
            ("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:http\"", "service[0] (www).vip", "not a port"),
            ("vip = \"198.18.0.10:80\"", "vip = \"www.example.org:80\"", "service[0] (www).vip", "not an IP:port"),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"198.18.0.10:80\"\nprotocol = \"sctp\"",
                "service[0] (www).protocol",
                "expected one of: tcp, udp",
            ),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"198.18.0.10:80\"\nforwarding = \"tunnel\"",
                "service[0] (www).forwarding",
                "expected one of: nat, dsr",
            ),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"198.18.0.10:80\"\ntable_size = 65536",
                "service[0] (www).table_size",
                "not prime",
            ),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"198.18.0.10:80\"\ntable_size = 5",
                "service[0] (www).table_size",
                "out of range",
            ),
            (
                "vip = \"198.18.0.10:80\"",
                "vip = \"198.18.0.10:80\"\ntable_size = 2000003",
                "service[0] (www).table_size",
                "out of range",
            ),
            ("name = \"www\"", "name = \"w w\"", "service[0] (w w).name", "not a valid service name"),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"198.18.1.12:0\"",
                "service[0] (www).backend[1].address",
                "port 0",
            ),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"198.18.1.11:80\"",
                "service[0] (www).backend[1].address",
                "duplicate backend",
            ),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"[2001:db8::12]:80\"",
                "service[0] (www).backend[1].address",
                "address family",
            ),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"198.18.1.12:80\"\nweight = 10001",
                "service[0] (www).backend[1].weight",
                "out of range",
            ),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"198.18.1.12:80\"\nrole = \"master\"",
                "service[0] (www).backend[1].role",
                "expected one of: primary, backup",
            ),
            ("address = \"198.18.1.12:80\"", "role = \"backup\"", "service[0] (www).backend[1].address", "missing"),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"198.18.0.10:80\"",
                "service[0] (www).backend[1].address",
                "is the VIP of",
            ),
            (
                "address = \"198.18.1.12:80\"",
                "address = \"224.0.0.1:80\"",
                "service[0] (www).backend[1].address",
                "not a unicast",
            ),
        ];
        for (from, to, field, message) in cases {
            let text = BASE.replace(from, to);
            assert_ne!(text, BASE, "test case {to:?} did not change the config");
            assert_one(&text, field, message);
        }
    }

    #[test]
    fn service_level_problems() {
        // No backends.
        let text = "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"www\"\nvip = \"198.18.0.10:80\"\n";
        assert_one(text, "service[0] (www).backend (line 3)", "no backends");
        // Duplicate VIP and duplicate name.
        let text = format!("{BASE}\n[[service]]\nname = \"www\"\nvip = \"198.18.0.10:80\"\n[[service.backend]]\naddress = \"198.18.1.13:80\"\n");
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.field.contains("service[1] (www).name") && p.message.contains("duplicate service name")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|p| p.field.contains("service[1] (www).vip")
                    && p.message.contains("duplicate VIP 198.18.0.10:80 tcp")),
            "{p:#?}"
        );
        // Same VIP over UDP is another service.
        let text = format!("{BASE}\n[[service]]\nvip = \"198.18.0.10:80\"\nprotocol = \"udp\"\n[[service.backend]]\naddress = \"198.18.1.13:80\"\n");
        parse(&text, "t.toml").expect("the same VIP over another protocol is fine");
        // DSR port mismatch.
        let text = BASE
            .replace("name = \"www\"", "name = \"www\"\nforwarding = \"dsr\"")
            .replace("198.18.1.12:80", "198.18.1.12:8080");
        assert_one(&text, "service[0] (www).backend[1].address", "differs from the VIP port 80");
        // Table not larger than the backends.
        let mut text = BASE.replace("name = \"www\"", "name = \"www\"\ntable_size = 7");
        for i in 0..6 {
            text.push_str(&format!("[[service.backend]]\naddress = \"198.18.2.{i}:80\"\n"));
        }
        assert_one(&text, "service[0] (www).table_size", "not larger than the number of backends (8)");
        // All weights zero.
        let text = BASE
            .replace("address = \"198.18.1.11:80\"", "address = \"198.18.1.11:80\"\nweight = 0")
            .replace("address = \"198.18.1.12:80\"", "address = \"198.18.1.12:80\"\nweight = 0");
        assert_one(&text, "service[0] (www).backend", "every backend has weight 0");
        // No services at all.
        assert_one("[daemon]\ninterfaces = [\"eth0\"]\n", "service", "no services");
        // No daemon section.
        assert_one(
            &BASE.replace("[daemon]\ninterfaces = [\"eth0\", \"eth1\"]", ""),
            "daemon.interfaces",
            "no interfaces",
        );
    }

    #[test]
    fn health_problems() {
        // [service.health] after the backends belongs to the last [[service]].
        let with = |lines: &str| format!("{BASE}\n[service.health]\n{lines}\n");
        let cases = [
            ("interval_ms = 0", "service[0] (www).health.interval_ms", "out of range"),
            ("timeout_ms = 0", "service[0] (www).health.timeout_ms", "out of range"),
            ("timeout_ms = 2000", "service[0] (www).health.timeout_ms", "greater than interval_ms (1000)"),
            ("rise = 0", "service[0] (www).health.rise", "out of range"),
            ("fall = 0", "service[0] (www).health.fall", "out of range"),
            ("expect_status = 99", "service[0] (www).health.expect_status", "100 to 599"),
            ("expect_status = 600", "service[0] (www).health.expect_status", "100 to 599"),
            ("path = \"healthz\"", "service[0] (www).health.path", "does not start with '/'"),
            ("check = \"icmp\"", "service[0] (www).health.check", "expected one of: tcp, http, none"),
            ("host = \"\"", "service[0] (www).health.host", "not a valid Host"),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
        let config =
            parse(&with("check = \"http\"\npath = \"/healthz\"\nhost = \"www.example.org\""), "t.toml").expect("valid");
        assert_eq!(config.services[0].health.host.as_deref(), Some("www.example.org"));
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[daemon]
interfaces = []
xdp_mode = "turbo"

[[service]]
name = "www"
vip = "198.18.0.10"
table_size = 100

[service.health]
timeout_ms = 5000

[[service.backend]]
address = "198.18.1.11:0"
role = "leader"
"#;
        let p = problems(text);
        let expect = [
            ("daemon.interfaces (line 3)", "no interfaces"),
            ("daemon.xdp_mode (line 4)", "unknown value \"turbo\""),
            ("service[0] (www).vip (line 8)", "has no port"),
            ("service[0] (www).table_size (line 9)", "not prime"),
            ("service[0] (www).health.timeout_ms (line 12)", "greater than interval_ms"),
            ("service[0] (www).backend[0].address (line 15)", "port 0"),
            ("service[0] (www).backend[0].role (line 16)", "unknown value \"leader\""),
        ];
        for (field, message) in expect {
            assert!(
                p.iter().any(|p| p.field == field && p.message.contains(message)),
                "expected a problem `{field}: ...{message}...` among {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "unexpected extra problems: {p:#?}");
    }

    #[test]
    fn display_is_one_problem_per_line() {
        let err = parse("[daemon]\ninterfaces = []\nxdp_mode = \"x\"\n", "/etc/xlb.toml").unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), err.problems.len(), "{text}");
        assert!(lines.iter().all(|l| l.starts_with("/etc/xlb.toml: ")), "{text}");
        assert!(lines[0].starts_with("/etc/xlb.toml: daemon.interfaces (line 2): "), "{text}");
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let err = load(Path::new("/nonexistent/xlb-test.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/nonexistent/xlb-test.toml: cannot read"), "{text}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 5), (1, 1));
    }
}
