//! The lb host itself: the admin socket is root-only, and the metrics
//! endpoint and status page listen on loopback unless told otherwise.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test host_`).

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use xlb_testbed::{
    config::{web, BackendToml, ConfigToml, ServiceToml},
    xlb::{capabilities, xlb_bin, Daemon},
    Topology, VIP_V4,
};

/// nobody:nogroup, with no supplementary groups.
const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

fn config() -> ConfigToml {
    ConfigToml::new()
        .service(ServiceToml::new("www", (VIP_V4, 80).into()).no_checks().backend(BackendToml::new(web(1, 80))))
}

/// `xlb status --socket SOCKET` as nobody: (succeeded, stdout + stderr).
fn status_as_nobody(topo: &Topology, socket: &Path) -> (bool, String) {
    let bin = xlb_bin();
    let (bin, socket) = (bin.to_string_lossy(), socket.to_string_lossy());
    let mut argv = NOBODY.to_vec();
    argv.extend([&*bin, "status", "--socket", &*socket]);
    let out = topo.lb_ns().exec(&argv).unwrap_or_else(|e| panic!("running {argv:?}: {e:#}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The admin socket is a root-owned socket of mode 0600, and a non-root user
/// who can reach it (its directory is open to everyone here) is refused with
/// a message that says why; opened to everyone, the same command succeeds,
/// so it is the socket's mode that refuses.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn host_admin_socket_refuses_a_non_root_user() {
    let topo = Topology::new(1).unwrap();
    let d = Daemon::start(topo.lb_ns(), &config().to_string(), &["eth0", "eth1"]).unwrap();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o600, 0),
        "expected the admin socket {} to be mode 0600 owned by root",
        d.socket.display()
    );
    // Everyone may reach the socket: only its own mode stands in the way.
    let dir = d.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (ok, text) = status_as_nobody(&topo, &d.socket);
    assert!(!ok, "expected xlb status as nobody to be refused, it succeeded:\n{text}");
    let want = "the admin socket is root-only (mode 0600); run this command as root";
    assert!(text.contains("permission denied") && text.contains(want), "expected {want:?} in:\n{text}");

    // The control: with the socket opened to everyone, nobody gets an answer.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, text) = status_as_nobody(&topo, &d.socket);
    assert!(ok && text.contains("www"), "expected the status with the socket opened to everyone, got:\n{text}");
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// With no `metrics` key the metrics endpoint and status page listen on
/// 127.0.0.1:9477 only: from the client side the port is closed.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn host_metrics_listen_on_loopback_by_default() {
    let topo = Topology::new(1).unwrap();
    let toml = config().to_string();
    assert!(!toml.contains("metrics"), "test bug: the config sets metrics:\n{toml}");
    let d = Daemon::start(topo.lb_ns(), &toml, &["eth0", "eth1"]).unwrap();
    d.expect_log("metrics on http://127.0.0.1:9477/metrics", 1);
    let listening = topo.lb_ns().run(&["ss", "-Hltn", "sport = :9477"]).unwrap();
    let locals: Vec<&str> = listening.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(locals, ["127.0.0.1:9477"], "expected one listener on 127.0.0.1:9477, ss says:\n{listening}");
    let page = topo.lb_ns().run(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"]).unwrap();
    assert!(page.contains("xlb_backend_up"), "expected metrics on loopback, got:\n{page}");
    // From the client, the lb's client-side address does not serve them.
    let out = topo.client_ns().exec(&["curl", "-sS", "--max-time", "2", "http://198.18.0.2:9477/metrics"]).unwrap();
    assert!(
        !out.status.success(),
        "expected no metrics from the client side, got:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Once attached, a daemon started as root keeps only CAP_NET_ADMIN,
/// CAP_PERFMON and CAP_BPF (effective, permitted and bounding sets), and
/// still does what it needs them for: serves through the VIP, reloads a
/// changed config into the maps, and detaches on `xlb stop`.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn host_daemon_drops_capabilities_after_attaching() {
    const KEPT: u64 = 1 << 12 | 1 << 38 | 1 << 39;
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let one = config().to_string();
    let mut d = Daemon::start(topo.lb_ns(), &one, &["eth0", "eth1"]).unwrap();
    // The daemon started with this test's capabilities: all of them, more than it keeps.
    let ours = capabilities(std::process::id(), "CapEff");
    assert!(ours & KEPT == KEPT && ours & !KEPT != 0, "the test must run as root with every capability: {ours:#x}");
    d.expect_log("capabilities after attaching: kept cap_net_admin, cap_perfmon, cap_bpf; dropped", 1);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(capabilities(d.pid(), set), KEPT, "{set} of the daemon after attaching:\n{}", d.log_text());
    }
    assert_eq!(capabilities(d.pid(), "CapInh"), 0, "CapInh of the daemon");
    assert_eq!(capabilities(d.pid(), "CapAmb"), 0, "CapAmb of the daemon");

    let url = xlb_testbed::http_url(VIP_V4.into(), 80, "/");
    let answer = topo.client().curl(&url).unwrap_or_else(|e| panic!("{e:#}; log:\n{}", d.log_text()));
    assert!(answer.contains("web1"), "web1 answers through the VIP: {answer:?}");

    // A reload writes the maps: web2 takes web1's place.
    let two = ConfigToml::new()
        .service(ServiceToml::new("www", (VIP_V4, 80).into()).no_checks().backend(BackendToml::new(web(2, 80))))
        .to_string();
    d.write_config(&two).unwrap();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_log_count(std::time::Duration::from_secs(10), "reloaded", 1).unwrap_or_else(|e| panic!("{e:#}"));
    let answer = topo.client().curl(&url).unwrap_or_else(|e| panic!("{e:#}; log:\n{}", d.log_text()));
    assert!(answer.contains("web2"), "after the reload web2 answers through the VIP: {answer:?}");

    // `xlb stop` asks the daemon, which detaches its links and removes its pins itself.
    let out = d.xlb_stop().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("stopping"), "xlb stop did not ask the daemon: {text}");
    let st = d.stop();
    assert!(st.is_err() || st.unwrap().success(), "{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("removed the pins") && log.contains("detached from eth0, eth1"), "log:\n{log}");
    assert_eq!(d.xdp_attached(), [false, false], "XDP left attached by the daemon; log:\n{log}");
}
