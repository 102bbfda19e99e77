//! xlb in the classic setup, for real: client -> lb (xlb on eth0/eth1) ->
//! web1, web2 (nginx), all in namespaces, with curl as the client.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, time::Duration};

use xlb_testbed::{
    config::{web, web_like, ConfigToml, ServiceToml},
    http_url,
    xlb::{json_service, xlb, Daemon},
    Nginx, Topology, CLIENT_V4, CLIENT_V6, LB_CLIENT_V4, VIP_V4, VIP_V6,
};

/// Services www4 and www6 on port 80 over web1..web`backends`, no checks.
fn config(forwarding: &str, vip4: IpAddr, vip6: IpAddr, backends: usize) -> ConfigToml {
    let mut cfg = ConfigToml::new().daemon("xdp_mode", "native").daemon("conntrack_entries", 65536u32);
    for (name, vip) in [("www4", vip4), ("www6", vip6)] {
        let mut svc = ServiceToml::new(name, SocketAddr::new(vip, 80))
            .set("protocol", "tcp")
            .set("forwarding", forwarding)
            .set("table_size", 65537u32)
            .no_checks();
        for n in 1..=backends {
            svc = svc.backend(web_like(vip, n, 80));
        }
        cfg = cfg.service(svc);
    }
    cfg
}

/// Fresh connections to `url`: how many each backend answered.
fn spread(topo: &Topology, url: &str, n: usize) -> BTreeMap<String, usize> {
    let replies = topo.client().get_many(url, n, None, true).unwrap_or_else(|e| panic!("{url}: {e:#}"));
    assert_eq!(replies.len(), n);
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.body.trim().to_string()).or_insert(0) += 1;
    }
    m
}

fn assert_balanced(what: &str, m: &BTreeMap<String, usize>, n: usize) {
    assert_eq!(m.keys().cloned().collect::<Vec<_>>(), ["web1", "web2"], "{what}: backends that answered: {m:?}");
    for (b, c) in m {
        assert!(*c >= n / 5, "{what}: {b} answered only {c} of {n} new connections: {m:?}");
    }
}

fn assert_keepalive_sticks(topo: &Topology, url: &str) {
    let bodies = topo.client().curl_many_keepalive(url, 20).unwrap_or_else(|e| panic!("{url}: {e:#}"));
    assert_eq!(bodies.len(), 20);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "one kept-alive connection changed backend: {bodies:?}");
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn nat_v4_and_v6_spread_stick_and_leave_host_traffic_alone() {
    let topo = Topology::new(2).unwrap();
    let web = topo.start_nginx_all().unwrap();
    // The lb host's own web service: not a VIP, must be unaffected.
    let _own = Nginx::spawn(topo.lb_ns(), "lbhost").unwrap();
    let cfg = config("nat", VIP_V4.into(), VIP_V6.into(), 2).to_string();
    let mut d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();

    let (u4, u6) = (http_url(VIP_V4.into(), 80, "/"), http_url(VIP_V6.into(), 80, "/"));
    assert_balanced("nat v4", &spread(&topo, &u4, 60), 60);
    assert_balanced("nat v6", &spread(&topo, &u6, 60), 60);
    assert_keepalive_sticks(&topo, &u4);
    assert_keepalive_sticks(&topo, &u6);

    // Not for a VIP: the lb's own service and plain routing to a backend address.
    let c = topo.client();
    assert_eq!(c.curl(&http_url(LB_CLIENT_V4.into(), 80, "/")).unwrap(), "lbhost\n");
    assert_eq!(c.curl("http://198.18.1.12/").unwrap(), "web2\n");
    assert_eq!(c.curl("http://[2001:db8:1::11]/").unwrap(), "web1\n");

    // Backends see the real client address (NAT keeps the source).
    let log = web[0].access_log() + &web[1].access_log();
    assert!(log.contains(&CLIENT_V4.to_string()), "backends did not see the client's v4 address:\n{log}");
    assert!(log.contains(&CLIENT_V6.to_string()), "backends did not see the client's v6 address:\n{log}");

    // Counters are exact: 60 new connections + 1 kept-alive one per family.
    let status = d.status_json();
    for svc in ["www4", "www6"] {
        let s = json_service(&status, svc);
        let backends = s["backends"].as_array().unwrap();
        let new_flows: u64 = backends.iter().map(|b| b["new_flows"].as_u64().unwrap()).sum();
        assert_eq!(new_flows, 61, "{svc}: backend new-flow counters in the status:\n{status:#}");
        assert_eq!(s["new_flows"], 61, "{svc}: service new-flow counter in the status:\n{status:#}");
    }

    let st = d.stop().unwrap();
    assert!(st.success(), "xlb exit status {st}; log:\n{}", d.log_text());
    assert_eq!(d.xdp_attached(), [false, false], "XDP left attached after SIGTERM");
    assert!(d.log_text().contains("detached from eth0, eth1"), "log:\n{}", d.log_text());
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn dsr_v4_and_v6_spread_and_stick() {
    let topo = Topology::new(2).unwrap();
    topo.add_vips_to_backends().unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let cfg = config("dsr", VIP_V4.into(), VIP_V6.into(), 2).to_string();
    let _d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
    let (u4, u6) = (http_url(VIP_V4.into(), 80, "/"), http_url(VIP_V6.into(), 80, "/"));
    assert_balanced("dsr v4", &spread(&topo, &u4, 60), 60);
    assert_balanced("dsr v6", &spread(&topo, &u6, 60), 60);
    assert_keepalive_sticks(&topo, &u4);
    assert_keepalive_sticks(&topo, &u6);
}

/// One-arm (issue 15): client, lb and both backends on one bridge, xlb on the
/// lb's single veth in native mode, so every packet it forwards leaves by the
/// interface it came in on. DSR: the backends hold the VIPs and answer the
/// client directly; NAT: the lb is the backends' gateway and turns their
/// replies around too. 200 new connections per family, answered and spread,
/// then kept-alive connections that stay on their backend.
fn one_arm(forwarding: &str) {
    let topo = Topology::builder().backends(2).one_arm(true).build().unwrap();
    assert_eq!(topo.lb_interfaces(), ["eth0"], "the one-arm lb has one interface");
    if forwarding == "dsr" {
        topo.add_vips_to_backends().unwrap();
        topo.backends_answer_clients_directly().unwrap();
    }
    let _web = topo.start_nginx_all().unwrap();
    let cfg = config(forwarding, VIP_V4.into(), VIP_V6.into(), 2).daemon("interfaces", topo.lb_interfaces());
    let d = Daemon::start(topo.lb_ns(), &cfg.to_string(), topo.lb_interfaces()).unwrap();
    let log = d.log_text();
    assert!(
        log.contains("eth0 is a veth in native XDP mode") && log.contains("gro on") && log.contains("tx off"),
        "xlb run did not say what a native-mode veth needs; log:\n{log}"
    );
    for (family, vip) in [("v4", IpAddr::from(VIP_V4)), ("v6", VIP_V6.into())] {
        let url = http_url(vip, 80, "/");
        assert_balanced(&format!("one-arm {forwarding} {family}"), &spread(&topo, &url, 200), 200);
        assert_keepalive_sticks(&topo, &url);
    }
    // Every connection went through xlb (none was routed by the lb's kernel).
    let status = d.status_json();
    for svc in ["www4", "www6"] {
        let s = json_service(&status, svc);
        assert_eq!(s["new_flows"], 201, "{svc}: 200 new connections + 1 kept-alive one; status:\n{status:#}");
    }
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn one_arm_dsr_v4_and_v6_on_a_veth() {
    one_arm("dsr");
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn one_arm_nat_v4_and_v6_on_a_veth() {
    one_arm("nat");
}

/// `xlb explain` names the backend that each of 20 fixed-port flows reached.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn explain_matches_the_backend_that_answered() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let cfg = config("nat", VIP_V4.into(), VIP_V6.into(), 2).to_string();
    let d = Daemon::start(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
    let conf = d.config.to_str().unwrap().to_string();
    let mut seen = BTreeMap::new();
    for (vip, client) in [(IpAddr::from(VIP_V4), IpAddr::from(CLIENT_V4)), (VIP_V6.into(), CLIENT_V6.into())] {
        for port in 42000..42010u16 {
            let body = topo.client().curl_with_local_port(&http_url(vip, 80, "/"), port).unwrap();
            let c = if client.is_ipv6() { format!("[{client}]:{port}") } else { format!("{client}:{port}") };
            let v = if vip.is_ipv6() { format!("[{vip}]:80") } else { format!("{vip}:80") };
            let out = xlb(None, &["explain", "-c", &conf, &c, &v, "tcp"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("backend:"))
                .unwrap_or_else(|| panic!("no backend line in:\n{text}"));
            let addr = line.trim_start_matches("backend:").trim();
            let named = match addr {
                "198.18.1.11:80" | "[2001:db8:1::11]:80" => "web1",
                "198.18.1.12:80" | "[2001:db8:1::12]:80" => "web2",
                other => panic!("explain named an unknown backend {other}"),
            };
            assert_eq!(body.trim(), named, "flow {c} -> {v}: explain says {addr}, {} answered", body.trim());
            *seen.entry(named).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 2, "20 flows all went to one backend: {seen:?}");
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn a_bad_config_is_refused_and_nothing_is_attached() {
    let topo = Topology::new(1).unwrap();
    let dir = xlb_testbed::xlb::TempDir::new("badcfg").unwrap();
    let path = dir.path().join("bad.toml");
    let cfg = config("nat", VIP_V4.into(), VIP_V6.into(), 1).with_service("www4", |s| s.set("table_size", 65536u32));
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = xlb(Some(topo.lb_ns()), &["run", "-c", path.to_str().unwrap()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains(path.to_str().unwrap()) && err.contains("table_size"), "stderr:\n{err}");
    let link = topo.lb_ns().must(&["ip", "link", "show", "eth0"]);
    assert!(!link.contains(" xdp"), "XDP attached despite a refused config: {link}");
}

/// SIGHUP: a backend added and one removed by reload take effect; a broken
/// file is refused and the running configuration keeps serving.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn sighup_reload_adds_removes_and_refuses_a_broken_file() {
    let topo = Topology::new(3).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let with = |backends: &[usize]| {
        let svc = backends
            .iter()
            .fold(ServiceToml::new("www", (VIP_V4, 80).into()).no_checks(), |svc, &n| svc.backend(web(n, 80)));
        ConfigToml::new().daemon("metrics", "").service(svc)
    };
    let d = Daemon::start(topo.lb_ns(), &with(&[1, 2]).to_string(), &["eth0", "eth1"]).unwrap();
    let url = http_url(VIP_V4.into(), 80, "/");
    let reload = |cfg: ConfigToml, expect: &str| {
        let before = d.log_count(expect);
        d.write_config(&cfg.to_string()).unwrap();
        d.signal(libc::SIGHUP).unwrap();
        d.wait_log_count(Duration::from_secs(10), expect, before + 1).unwrap();
    };
    let names = |m: BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(spread(&topo, &url, 30)), ["web1", "web2"]);

    reload(with(&[1, 2, 3]), "reloaded");
    assert_eq!(names(spread(&topo, &url, 60)), ["web1", "web2", "web3"], "web3 added by reload");

    reload(with(&[1, 2, 3]).with_service("www", |s| s.set("table_size", 65536u32)), "reload refused");
    assert!(d.log_text().contains("table_size"), "the refusal names the field:\n{}", d.log_text());
    assert_eq!(names(spread(&topo, &url, 60)), ["web1", "web2", "web3"], "still serving after a refused reload");

    reload(with(&[2, 3]), "reloaded");
    assert_eq!(names(spread(&topo, &url, 60)), ["web2", "web3"], "web1 removed by reload");
}
