//! HTTPS through xlb, and the `tls` and `https` health checks, with real
//! nginx serving certificates from a throwaway CA made at run time: xlb
//! passes TLS through untouched (a client that pins the CA talks to the web
//! servers through the VIP), and a backend whose certificate expires, names
//! another host or comes from an unknown CA is taken DOWN with the reason,
//! and new connections go to the others.
//!
//! Needs root, openssl and a release build with the XDP object (`cargo xtask test tls_`: the tests are named tls_*).

use std::{collections::BTreeSet, path::Path, time::Duration};

use xlb_testbed::{
    config::{web, BackendToml, ConfigToml, ServiceToml},
    tls::{https_fetch, CertKind, CertPair, TestCa, TLS_NAME},
    xlb::{json_backend, Daemon},
    Nginx, Topology, VIP_V4,
};

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;

/// Service www on VIP:443 with `check` (tls or https) trusting `ca`, over web1 and web2's port 443.
fn config(check: &str, ca: &Path) -> String {
    let mut svc = ServiceToml::new("www", (VIP_V4, 443).into())
        .health("check", check)
        .health("host", TLS_NAME)
        .health("ca_file", ca.to_string_lossy().into_owned())
        .health("path", "/health")
        .health("interval_ms", INTERVAL_MS)
        .health("timeout_ms", 150u64)
        .health("rise", 2u64)
        .health("fall", FALL);
    for n in 1..=2 {
        svc = svc.backend(BackendToml::new(web(n, 443)));
    }
    ConfigToml::new().daemon("metrics", "").daemon("conntrack_entries", 65536u32).service(svc).to_string()
}

/// Two web servers serving `certs[i]` on 443, and xlb checking them with `check`.
fn start(check: &str, ca: &TestCa, certs: [&CertPair; 2]) -> (Topology, Vec<Nginx>, Daemon) {
    let topo = Topology::new(2).unwrap();
    let web: Vec<Nginx> = topo.backends().iter().zip(certs).map(|(b, pair)| b.start_nginx_tls(pair).unwrap()).collect();
    let d = Daemon::start(topo.lb_ns(), &config(check, &ca.cert()), &["eth0", "eth1"]).unwrap();
    d.expect_log("health checks started for 2 backends", 1);
    d.wait_checked(Duration::from_secs(5)).unwrap();
    (topo, web, d)
}

/// `https://www.foobar.com/` on a new connection, the name resolved to the
/// VIP and the CA pinned: which backend answered, or curl's error.
fn fetch(topo: &Topology, ca: &TestCa) -> Result<String, String> {
    https_fetch(topo.client_ns(), TLS_NAME, VIP_V4.into(), &ca.cert()).map_err(|e| format!("{e:#}"))
}

/// `n` HTTPS fetches through the VIP; the backends that answered. Panics on a failed one.
fn answered_by(topo: &Topology, d: &Daemon, ca: &TestCa, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            fetch(topo, ca).unwrap_or_else(|e| {
                panic!(
                    "expected https://{TLS_NAME}/ through the VIP to answer (fetch {i}), got: {e}\nxlb log:\n{}",
                    d.log_text()
                )
            })
        })
        .collect()
}

/// Backend `addr` of www in `xlb status --json`: (state, last check).
fn backend_state(d: &Daemon, addr: &str) -> (String, String) {
    let status = d.status_json();
    let b = json_backend(&status, "www", addr);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_else(|| panic!("{v} is not text in {b}")).to_owned();
    (text(&b["state"]), text(&b["last_check"]))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// check = "https": both backends pass with a good certificate and HTTPS
/// through the VIP reaches both with the CA pinned; web1 switched to an
/// expired certificate goes DOWN with "tls: certificate expired" and every new
/// connection goes to web2; back to a good one, it comes back UP; switched to
/// a certificate for another name, it goes DOWN again, naming the name.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn tls_https_check_takes_out_expired_and_wrong_name_certificates() {
    let mut ca = TestCa::new("https").unwrap();
    let good = ca.issue(TLS_NAME, CertKind::Good).unwrap();
    let expired = ca.issue(TLS_NAME, CertKind::Expired).unwrap();
    let other = ca.issue("www.example.org", CertKind::Good).unwrap();
    let (topo, mut web, d) = start("https", &ca, [&good, &good]);
    let web1 = "198.18.1.11:443";

    assert_eq!(backend_state(&d, web1), ("up".into(), "ok".into()), "web1 with a good certificate");
    assert_eq!(backend_state(&d, "198.18.1.12:443"), ("up".into(), "ok".into()), "web2 with a good certificate");
    assert_eq!(answered_by(&topo, &d, &ca, 20), set(&["web1", "web2"]), "HTTPS through the VIP, both backends up");

    web[0].set_certificate(&expired).unwrap();
    d.expect_log(&format!("backend www/{web1} is DOWN after {FALL} failed checks: tls: certificate expired"), 1);
    assert_eq!(backend_state(&d, web1), ("down".into(), "tls: certificate expired".into()));
    assert_eq!(answered_by(&topo, &d, &ca, 10), set(&["web2"]), "web1 is down: new connections go to web2");

    web[0].set_certificate(&good).unwrap();
    d.expect_log(&format!("backend www/{web1} is UP after 2 successful checks"), 1);

    web[0].set_certificate(&other).unwrap();
    let reason = format!("tls: certificate not valid for {TLS_NAME} (it is for www.example.org)");
    d.expect_log(&format!("backend www/{web1} is DOWN after {FALL} failed checks: {reason}"), 1);
    assert_eq!(backend_state(&d, web1), ("down".into(), reason));
    assert_eq!(answered_by(&topo, &d, &ca, 10), set(&["web2"]), "web1 is down again: new connections go to web2");
}

/// check = "tls": web2 switched to a certificate from another CA goes DOWN
/// ("signed by an unknown CA") and new connections go to web1; an expired
/// one takes web1 down as well, and then the VIP answers no more.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn tls_check_takes_out_unknown_ca_and_expired_certificates() {
    let mut ca = TestCa::new("tls").unwrap();
    let mut rogue = TestCa::new("tls-rogue").unwrap();
    let good = ca.issue(TLS_NAME, CertKind::Good).unwrap();
    let expired = ca.issue(TLS_NAME, CertKind::Expired).unwrap();
    let foreign = rogue.issue(TLS_NAME, CertKind::Good).unwrap();
    let (topo, mut web, d) = start("tls", &ca, [&good, &good]);
    let (web1, web2) = ("198.18.1.11:443", "198.18.1.12:443");
    assert_eq!(backend_state(&d, web2), ("up".into(), "ok".into()), "web2 with a good certificate");

    web[1].set_certificate(&foreign).unwrap();
    let reason = "tls: certificate signed by an unknown CA";
    d.expect_log(&format!("backend www/{web2} is DOWN after {FALL} failed checks: {reason}"), 1);
    assert_eq!(backend_state(&d, web2), ("down".into(), reason.into()));
    assert_eq!(answered_by(&topo, &d, &ca, 10), set(&["web1"]), "web2 is down: new connections go to web1");

    web[0].set_certificate(&expired).unwrap();
    d.expect_log(&format!("backend www/{web1} is DOWN after {FALL} failed checks: tls: certificate expired"), 1);
    d.expect_log("service www: no backend takes new flows", 1);
    let r = fetch(&topo, &ca);
    assert!(r.is_err(), "expected no answer with both backends down, got {r:?}");
}
