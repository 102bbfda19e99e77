//! Configuration: parsing (TOML -> raw structs) and validation (raw -> [`Config`]).
//!
//! Parsing and validation are separate steps:
//!
//! 1. `raw` reads the text into structs that mirror the file, every value kept
//!    with its place (`toml::Spanned`) and loose (strings, integers); values of
//!    the wrong TOML type and unknown keys are noted there, not fatal. Only a
//!    TOML syntax error stops at this step, reported with its line and column.
//! 2. Validation (`validate`, then one module per table: `daemon`, `service`,
//!    `health`, `backend`, using the pure field checks of `checks`) turns them
//!    into a [`Config`], collecting *every* problem, each named by its field
//!    path (`service[1] (www).backend[0].address`) and its line (`diag`).
//!
//! [`load`] is the one entry point for files: `xlb check`, `xlb run` and a
//! reload all get the same [`ConfigError`], shown as
//! `invalid configuration FILE (N problems)` and one line per problem.
//!
//! This module uses nothing of the crate but `maglev::is_prime`.

mod backend;
mod checks;
mod daemon;
mod diag;
mod firewall;
mod health;
mod raw;
mod service;
mod validate;

#[cfg(test)]
mod testing;

/// Shared with the health checks, which read the same files and names.
pub use checks::{read_ca_file, tls_name};

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

pub use diag::{ConfigError, Problem};

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xlb/xlb.sock";
/// The configuration file every command reads unless `--config` names another.
pub const DEFAULT_CONFIG: &str = "/etc/xlb/xlb.toml";
/// Default Prometheus endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";
/// Where maps and XDP links are pinned (a BPF filesystem).
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xlb";
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
    /// New flows per second per CPU above which new flows are not tracked
    /// (Katran's conntrack guard); 0: off.
    pub conntrack_guard_rate: u32,
    /// The bpffs directory holding the pinned maps and XDP links.
    pub pin_path: PathBuf,
    /// Idle timeouts of conntrack entries, per state.
    pub conntrack_timeouts: ConntrackTimeouts,
    /// `[daemon.announce]`: the VIPs are announced through BIRD (absent: not announced).
    pub announce: Option<AnnounceConfig>,
    /// Sources refused for every VIP (`[daemon] deny`).
    pub deny: Vec<Cidr>,
    /// What becomes of TCP/UDP packets to a port of a VIP address that no service uses.
    pub closed_ports: ClosedPorts,
    /// UDP destination port of `forwarding = "gue"` packets.
    pub gue_port: u16,
    /// Outer source prefixes of ipip/gue packets, per family.
    pub encap_source_v4: Option<EncapSource>,
    pub encap_source_v6: Option<EncapSource>,
}

/// An address prefix of `allow` / `deny`: the address has no bits set after `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

/// `new_flows_per_source`: a token bucket per source (IPv4 /32, IPv6 /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// New flows per second.
    pub rate: u32,
    /// New flows back to back.
    pub burst: u32,
}

/// `[daemon] closed_ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedPorts {
    /// Handed to the kernel (which answers as it would without xlb): the default.
    Pass,
    /// Dropped and counted (`closed_port`).
    Drop,
}

impl ClosedPorts {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 2] = [("pass", Self::Pass), ("drop", Self::Drop)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
}

/// `[daemon] conntrack_timeout_*`: how long a tracked flow may stay idle in
/// each state before its entry expires (and its backend's count falls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    /// A TCP flow that has sent only its SYN.
    pub syn: std::time::Duration,
    /// A TCP flow whose client has acknowledged.
    pub established: std::time::Duration,
    /// A TCP flow after a FIN or RST.
    pub closing: std::time::Duration,
    /// A UDP flow.
    pub udp: std::time::Duration,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        use lb_common::ct;
        use std::time::Duration;
        Self {
            syn: Duration::from_secs(ct::DEFAULT_SYN_S),
            established: Duration::from_secs(ct::DEFAULT_EST_S),
            closing: Duration::from_secs(ct::DEFAULT_CLOSING_S),
            udp: Duration::from_secs(ct::DEFAULT_UDP_S),
        }
    }
}

impl ConntrackTimeouts {
    /// `CONNTRACK_TIMEOUTS` as the data path reads it: ticks, by `ct::SYN` .. `ct::UDP`.
    pub fn ticks(&self) -> [u32; lb_common::ct::NUM_TIMEOUTS as usize] {
        let t = |d: std::time::Duration| lb_common::ct::ticks_of_ms(d.as_millis().min(u64::MAX as u128) as u64);
        [t(self.syn), t(self.established), t(self.closing), t(self.udp)]
    }
}

/// Longest idle timeout accepted: 7 days (the data path's clock wraps after 52).
pub const MAX_CONNTRACK_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// `[daemon.announce]`: which BIRD to tell, and the name of each VIP's protocol there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// BIRD's control socket.
    pub socket: PathBuf,
    /// The static protocol's name for a VIP: `{vip}` stands for the address
    /// with every character that is not a letter or digit written as `_`.
    pub protocol: String,
}

/// BIRD's control socket on Debian (`bird2`).
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// The default name pattern of a VIP's static protocol in BIRD.
pub const DEFAULT_ANNOUNCE_PROTOCOL: &str = "xlb_{vip}";

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
    /// Who picks a new flow's backend.
    pub scheduler: Scheduler,
    pub table_size: u32,
    /// keepalived's nopreempt when false: traffic stays on a backup until it fails.
    pub preempt: bool,
    /// Echo requests to the VIP are answered by xlb (rate-limited); false: left to the kernel.
    /// An address answers only while every service on it says true.
    pub answer_ping: bool,
    /// Sources admitted (empty: everyone) and refused; longest prefix wins, deny at equal length.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub new_flows_per_source: Option<RateLimit>,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
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
    /// IP in IP (IPv4 in IPv4, IPv6 in IPv6) to a backend anywhere; it answers directly.
    Ipip,
    /// GUE (variant 1: IP in UDP) to a backend anywhere; it answers directly.
    Gue,
}

impl Forwarding {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 4] =
        [("nat", Self::Nat), ("dsr", Self::Dsr), ("ipip", Self::Ipip), ("gue", Self::Gue)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }

    /// The packet goes to the backend inside an outer header (ipip, gue).
    pub fn encapsulates(self) -> bool {
        matches!(self, Self::Ipip | Self::Gue)
    }

    /// The backend answers the client directly, holding the VIP (dsr, ipip, gue):
    /// the packet keeps the VIP as its destination and its port.
    pub fn direct_return(self) -> bool {
        self != Self::Nat
    }
}

/// `[daemon] encap_source_v4` / `encap_source_v6`: the prefix outer sources of
/// ipip/gue packets are taken from (its host bits from the flow hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapSource {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for EncapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Who picks the backend of a service's new flows (a flow's first packet; conntrack
/// keeps it there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// The flow hash in the service's Maglev table: the same on every instance.
    Maglev,
    /// Smooth weighted round robin, per CPU.
    RoundRobin,
    /// Fewest active connections per weight.
    LeastConn,
}

impl Scheduler {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 3] =
        [("maglev", Self::Maglev), ("round_robin", Self::RoundRobin), ("least_conn", Self::LeastConn)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub path: String,
    /// The HTTP Host header; for `tls` and `https` also the TLS server name
    /// (SNI) and the name the certificate must be valid for.
    pub host: Option<String>,
    /// PEM file with the CA certificates that `tls` and `https` checks trust;
    /// `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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
    /// TCP connect and a TLS handshake with a certificate that verifies.
    Tls,
    /// The `http` check over TLS.
    Https,
    None,
}

impl CheckKind {
    /// Every value with its name in the configuration file.
    pub const CHOICES: [(&'static str, Self); 5] =
        [("tcp", Self::Tcp), ("http", Self::Http), ("tls", Self::Tls), ("https", Self::Https), ("none", Self::None)];
    pub fn as_str(self) -> &'static str {
        choice_name(&Self::CHOICES, self)
    }
    /// The check runs a TLS handshake.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Https)
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
// Entry points

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigError {
            file,
            problems: vec![Problem {
                path: String::new(),
                line: None,
                column: None,
                message: format!("cannot read the configuration file: {e}"),
            }],
        }),
    }
}

/// Validates a parsed file: the top level here, each table in its module.
fn validate_config(v: &mut validate::Validator<'_>, raw: raw::RawConfig) -> Config {
    let root = diag::FieldPath::root();
    v.unknown_keys(&root, &raw.unknown, raw::RawConfig::KEYS);
    let (daemon, daemon_deny) = daemon::validate(v, &root.key("daemon"), raw.daemon);
    let services = service::validate_all(v, &root.key("service"), raw.service, &daemon_deny);
    daemon::encap_sources_present(v, &root.key("daemon"), &daemon, &services);
    Config { daemon, services }
}

/// Parses and validates a configuration given as text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut v = validate::Validator::new(text);
    let config = match raw::parse(text) {
        Ok(raw) => Some(validate_config(&mut v, raw)),
        Err(e) => {
            v.report_toml(&e);
            None
        }
    };
    match (config, v.finish()) {
        (Some(config), None) => Ok(config),
        (_, problems) => Err(ConfigError {
            file: file.to_owned(),
            problems: problems.expect("a file that did not parse has a problem"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        testing::{assert_one, problems, BASE},
        *,
    };

    /// The example of design.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
[daemon]
interfaces = ["eth0"]              # where XDP attaches; client side first
xdp_mode = "auto"                  # auto | native | generic
admin_socket = "/run/xlb/xlb.sock" # root-only (0600)
metrics = "127.0.0.1:9477"         # Prometheus text endpoint; "" turns it off
conntrack_entries = 1048576        # conntrack table slots (buckets of 4; a full bucket evicts)

[[service]]
name = "www"
vip = "198.18.0.10:80"             # IPv4 or [IPv6]:port
protocol = "tcp"                   # tcp | udp
forwarding = "nat"                 # nat | dsr
scheduler = "maglev"               # maglev | round_robin | least_conn
table_size = 65537                 # prime

[service.health]
check = "http"                     # tcp | http | tls | https | none
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
    fn syntax_error_keeps_tomls_message_with_line_and_column() {
        let p = problems("[daemon]\ninterfaces = [\"eth0\"\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!((p[0].path.as_str(), p[0].line, p[0].column), ("", Some(2), Some(21)), "{p:#?}");
        assert!(p[0].message.contains("unclosed array"), "{p:#?}");
        assert_one(&format!("{BASE}\n[daemon]\n"), "line 15, column 2", "duplicate key: `daemon`");
        assert_one(
            &BASE.replacen("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:80", 1),
            "line 7, column",
            "invalid basic string",
        );
    }

    #[test]
    fn unknown_top_level_key() {
        assert_one(
            &format!("verbose = true\n{BASE}"),
            "verbose (line 1, column 1)",
            "unknown key `verbose`; expected one of: daemon, service",
        );
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let text = r#"
[daemon]
interfaces = []
xdp_mode = "turbo"
verbose = true

[[service]]
name = "www"
vip = "198.18.0.10"
table_size = "big"
preempt = 1

[service.health]
timeout_ms = 5000

[[service.backend]]
address = "198.18.1.11:0"
role = "leader"
wieght = 2
"#;
        let p = problems(text);
        let expect = [
            ("daemon.interfaces (line 3)", "no interfaces"),
            ("daemon.xdp_mode (line 4)", "unknown value \"turbo\""),
            ("daemon.verbose (line 5, column 1)", "unknown key `verbose`"),
            ("service[0] (www).vip (line 9)", "has no port"),
            ("service[0] (www).table_size (line 10, column 14)", "the string \"big\" is not an integer"),
            ("service[0] (www).preempt (line 11, column 11)", "the integer 1 is not a boolean"),
            ("service[0] (www).health.timeout_ms (line 14)", "greater than interval_ms"),
            ("service[0] (www).backend[0].address (line 17)", "port 0"),
            ("service[0] (www).backend[0].role (line 18)", "unknown value \"leader\""),
            ("service[0] (www).backend[0].wieght (line 19, column 1)", "unknown key `wieght` (did you mean `weight`?)"),
        ];
        let got: Vec<String> = p.iter().map(|p| p.location()).collect();
        let want: Vec<&str> = expect.iter().map(|(field, _)| *field).collect();
        assert_eq!(got, want, "expected these problems in this order: {p:#?}");
        for (problem, (_, message)) in p.iter().zip(expect) {
            assert!(problem.message.contains(message), "expected {message:?} in {problem:#?}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_once() {
        // Not also "missing" (vip), "no backends" (backend) or "no services" (service).
        let text = BASE.replacen("vip = \"198.18.0.10:80\"", "vip = 80", 1);
        assert_one(&text, "service[0] (www).vip (line 7, column 7)", "the integer 80 is not a string");
        let text = "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nvip = \"198.18.0.10:80\"\nbackend = 5\n";
        assert_one(
            text,
            "service[0].backend (line 5, column 11)",
            "the integer 5 is not an array of tables; expected [[service.backend]] tables",
        );
        assert_one(
            "service = 1\n[daemon]\ninterfaces = [\"eth0\"]\n",
            "service (line 1, column 11)",
            "is not an array of tables",
        );
        assert_one(
            "[daemon]\ninterfaces = [\"eth0\"]\n[service]\nvip = 1\n",
            "service (line 3, column 1)",
            "a table is not an array of tables; write [[service]], not [service]",
        );
        let text = BASE.replacen("[daemon]\ninterfaces = [\"eth0\", \"eth1\"]", "daemon = 1", 1);
        assert_one(&text, "daemon (line 2, column 10)", "the integer 1 is not a table; expected a [daemon] table");
    }

    #[test]
    fn empty_file() {
        let p = problems("");
        let got: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "daemon.interfaces: no interfaces; expected the interfaces XDP attaches to, client side first, e.g. interfaces = [\"eth0\"]",
                "service: no services: add at least one [[service]] with a vip and a [[service.backend]]",
            ]
        );
    }

    #[test]
    fn error_shows_header_then_one_problem_per_line() {
        let err = parse("[daemon]\ninterfaces = []\nxdp_mode = \"x\"\n", "/etc/xlb.toml").unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "invalid configuration /etc/xlb.toml (3 problems)", "{text}");
        assert_eq!(lines.len(), 1 + err.problems.len(), "{text}");
        assert!(lines[1..].iter().all(|l| l.starts_with("/etc/xlb.toml: ")), "{text}");
        assert!(lines[1].starts_with("/etc/xlb.toml: daemon.interfaces (line 2): no interfaces"), "{text}");
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let err = load(Path::new("/nonexistent/xlb-test.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration /nonexistent/xlb-test.toml (1 problem)\n/nonexistent/xlb-test.toml: cannot read the configuration file: "),
            "{text}"
        );
    }
}
