//! The test bed itself, without any load balancer: the lb namespace only does
//! plain kernel IP forwarding between the client and the backends.
//!
//! Needs root: `cargo xtask test testbed_smoke` runs it (or
//! `cargo test -p xlb-testbed --test testbed_smoke -- --include-ignored --test-threads=1`).

use std::net::IpAddr;
use std::time::Instant;

use xlb_testbed::{http_url, list_namespaces, Topology};

/// Namespaces whose name carries `suffix`.
fn leftovers(suffix: &str) -> Vec<String> {
    list_namespaces().unwrap().into_iter().filter(|n| n.contains(suffix)).collect()
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn plain_forwarding_reaches_both_backends() {
    let t0 = Instant::now();
    let topo = Topology::builder().backends(2).build().unwrap();
    let built = t0.elapsed();
    let suffix = topo.suffix().to_owned();
    assert_eq!(leftovers(&suffix).len(), 5, "client, lb, switch, web1, web2");

    // GRO on every veth (XDP-redirected frames need it), full checksums from hosts.
    let gro_on = |ns: &xlb_testbed::Netns, iface: &str| {
        let k = ns.must(&["ethtool", "-k", iface]);
        assert!(k.contains("generic-receive-offload: on"), "{} {iface}: {k}", ns.name());
        k
    };
    for iface in topo.lb_interfaces() {
        gro_on(topo.lb_ns(), iface);
    }
    for port in ["p-lb", "p-web1", "p-web2"] {
        gro_on(topo.switch_ns(), port);
    }
    let k = gro_on(topo.client_ns(), "eth0");
    assert!(k.contains("tx-checksumming: off"), "{k}");
    for b in topo.backends() {
        let k = gro_on(b.ns(), b.interface());
        assert!(k.contains("tx-checksumming: off"), "{k}");
    }

    // No IPv6 DAD, also on veth ends created from another namespace.
    for (ns, iface) in
        [(topo.client_ns(), "eth0"), (topo.lb_ns(), "eth0"), (topo.lb_ns(), "eth1"), (topo.backend(2).ns(), "eth0")]
    {
        let key = format!("net.ipv6.conf.{iface}.accept_dad");
        assert_eq!(ns.sysctl_get(&key).unwrap(), "0", "{} {key}", ns.name());
    }

    let mut web = topo.start_nginx_all().unwrap();
    let client = topo.client();

    assert_eq!(client.curl("http://198.18.1.11/").unwrap(), "web1\n");
    assert_eq!(client.curl("http://[2001:db8:1::12]/").unwrap(), "web2\n");
    assert_eq!(client.curl("http://198.18.1.12/health").unwrap(), "ok\n");
    assert_eq!(client.curl(&http_url(IpAddr::V6(topo.backend(1).ipv6()), 80, "/")).unwrap(), "web1\n");

    // Keep-alive: 5 requests, one connection.
    let bodies = client.curl_many_keepalive("http://198.18.1.11/", 5).unwrap();
    assert_eq!(bodies, vec!["web1\n"; 5]);
    let bodies = client.curl_many_keepalive("http://[2001:db8:1::12]/", 5).unwrap();
    assert_eq!(bodies, vec!["web2\n"; 5]);

    // The same source port twice in a row (same 5-tuple): no TIME_WAIT clash.
    for _ in 0..3 {
        assert_eq!(client.curl_with_local_port("http://198.18.1.12/", 40123).unwrap(), "web2\n");
        assert_eq!(client.curl_with_local_port("http://[2001:db8:1::11]/", 40124).unwrap(), "web1\n");
    }

    // The backends see the client's real address (routed, no NAT).
    let log = web[0].access_log();
    assert!(log.contains("198.18.0.1:"), "web1 access log: {log}");
    assert!(log.contains("198.18.0.1:40124") || log.contains("2001:db8::1:40124"), "{log}");

    // stop() makes connections refused, start() brings the backend back.
    web[1].stop().unwrap();
    let err = client.curl("http://198.18.1.12/").unwrap_err();
    assert!(format!("{err:#}").contains("curl: (7)"), "connect must fail: {err:#}");
    web[1].start().unwrap();
    assert_eq!(client.curl("http://198.18.1.12/").unwrap(), "web2\n");

    // The VIPs are routed to the lb, which does not own them.
    let routes = topo.client_ns().must(&["ip", "route", "get", "198.18.0.10"]);
    assert!(routes.contains("via 198.18.0.2"), "{routes}");
    let routes = topo.client_ns().must(&["ip", "-6", "route", "get", "2001:db8::10"]);
    assert!(routes.contains("via 2001:db8::2"), "{routes}");
    assert_eq!(topo.lb_interfaces(), ["eth0", "eth1"]);

    // DSR helper: VIP on the backend's lo, ARP tuned.
    topo.add_vips_to_backends().unwrap();
    let lo = topo.backend(2).ns().must(&["ip", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("198.18.0.10/32") && lo.contains("2001:db8::10/128"), "{lo}");
    assert_eq!(topo.backend(2).ns().sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(), "1");

    drop(web);
    let t1 = Instant::now();
    drop(topo);
    let torn_down = t1.elapsed();
    eprintln!("topology with 2 backends: build {built:?}, teardown {torn_down:?}");
    assert_eq!(leftovers(&suffix), Vec::<String>::new());
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn namespaces_are_removed_on_panic() {
    let result = std::panic::catch_unwind(|| {
        let topo = Topology::new(1).unwrap();
        let _web = topo.start_nginx_all().unwrap();
        let suffix = topo.suffix().to_owned();
        std::panic::panic_any(suffix);
    });
    let suffix = result.unwrap_err().downcast::<String>().expect("panic payload is the suffix");
    assert_eq!(leftovers(&suffix), Vec::<String>::new());
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn build_and_teardown_time() {
    for n in [2, 8] {
        let t0 = Instant::now();
        let topo = Topology::new(n).unwrap();
        let built = t0.elapsed();
        let suffix = topo.suffix().to_owned();
        let t1 = Instant::now();
        drop(topo);
        eprintln!("topology with {n} backends: build {built:?}, teardown {:?}", t1.elapsed());
        assert_eq!(leftovers(&suffix), Vec::<String>::new());
    }
}
