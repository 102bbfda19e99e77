//! ipip and gue across L3: the backend sits behind a router, in another subnet
//! than the lb (no shared segment), runs `xlb decap` and holds the VIPs on
//! `lo`; nginx answers a client's curl through the VIPs directly (the replies
//! do not pass xlb's XDP). IPv4 by ipip, IPv6 by gue.
//!
//! ```text
//! client 198.18.0.1 ── c0 [lb: xlb] r0 ── r1 [router] b1 ── eth0 [backend: xlb decap, nginx, VIPs on lo]
//!        2001:db8::1      198.18.2.0/24       198.18.3.0/24        198.18.3.11, 2001:db8:3::11
//! VIPs 198.18.10.10 and 2001:db8:10::10 (off the client's subnet: it sends them to its gateway, the lb)
//! ```

use std::{fs::File, process::Stdio, time::Duration};

use xlb_testbed::{http_url, run_suffix, xlb::xlb_bin, xlb::Daemon, BgProcess, Client, Netns, Nginx};

fn ns(tag: &str) -> Netns {
    Netns::new(format!("xlb-{}-en{tag}", run_suffix())).unwrap_or_else(|e| panic!("create namespace {tag}: {e:#}"))
}

fn ip(ns: &Netns, cmds: &[&str]) {
    for c in cmds {
        let args: Vec<&str> = c.split_whitespace().collect();
        ns.ip(&args).unwrap_or_else(|e| panic!("{}: ip {c}: {e:#}", ns.name()));
    }
}

/// A veth pair `a` (in `x`) -- `b` (in `y`).
fn link(x: &Netns, a: &str, y: &Netns, b: &str) {
    ip(x, &[&format!("link add {a} type veth peer name {b} netns {}", y.name()), &format!("link set {a} up")]);
    ip(y, &[&format!("link set {b} up")]);
}

const CONFIG: &str = r#"
[daemon]
interfaces = ["c0"]
xdp_mode = "generic"
metrics = ""
encap_source_v4 = "198.18.5.0/24"
encap_source_v6 = "2001:db8:5::/64"

[[service]]
name = "www4"
vip = "198.18.10.10:80"
forwarding = "ipip"
[service.health]
check = "tcp"
interval_ms = 200
timeout_ms = 150
rise = 1
[[service.backend]]
address = "198.18.3.11:80"

[[service]]
name = "www6"
vip = "[2001:db8:10::10]:80"
forwarding = "gue"
[service.health]
check = "tcp"
interval_ms = 200
timeout_ms = 150
rise = 1
[[service.backend]]
address = "[2001:db8:3::11]:80"
"#;

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn curl_through_ipip_and_gue_to_a_backend_behind_a_router() {
    let (client, lb, router, backend) = (ns("c"), ns("l"), ns("r"), ns("b"));
    link(&client, "eth0", &lb, "c0");
    link(&lb, "r0", &router, "r1");
    link(&router, "b1", &backend, "eth0");
    let no_rp = [("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")];
    let fwd = [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")];
    for n in [&lb, &router] {
        n.sysctl(&fwd).unwrap();
        n.sysctl(&no_rp).unwrap();
    }
    ip(
        &client,
        &[
            "addr add 198.18.0.1/24 dev eth0",
            "addr add 2001:db8::1/64 dev eth0 nodad",
            "route add default via 198.18.0.2",
            "-6 route add default via 2001:db8::2",
        ],
    );
    ip(
        &lb,
        &[
            "addr add 198.18.0.2/24 dev c0",
            "addr add 2001:db8::2/64 dev c0 nodad",
            "addr add 198.18.2.1/24 dev r0",
            "addr add 2001:db8:2::1/64 dev r0 nodad",
            "route add 198.18.3.0/24 via 198.18.2.2",
            "-6 route add 2001:db8:3::/64 via 2001:db8:2::2",
        ],
    );
    ip(
        &router,
        &[
            "addr add 198.18.2.2/24 dev r1",
            "addr add 2001:db8:2::2/64 dev r1 nodad",
            "addr add 198.18.3.1/24 dev b1",
            "addr add 2001:db8:3::1/64 dev b1 nodad",
            "route add 198.18.0.0/24 via 198.18.2.1",
            "-6 route add 2001:db8::/64 via 2001:db8:2::1",
        ],
    );
    ip(
        &backend,
        &[
            "link set lo up",
            "addr add 198.18.3.11/24 dev eth0",
            "addr add 2001:db8:3::11/64 dev eth0 nodad",
            "route add default via 198.18.3.1",
            "-6 route add default via 2001:db8:3::1",
            "addr add 198.18.10.10/32 dev lo",
            "addr add 2001:db8:10::10/128 dev lo",
        ],
    );
    backend.sysctl(&no_rp).unwrap();
    let _nginx = Nginx::spawn(&backend, "web-behind-router").expect("start nginx on the backend");

    let out = std::env::temp_dir().join(format!("xlb-decap-{}.out", run_suffix()));
    let bin = xlb_bin();
    let mut cmd = backend.command(&[
        bin.to_str().unwrap(),
        "decap",
        "--interface",
        "eth0",
        "--address",
        "198.18.3.11",
        "--address",
        "2001:db8:3::11",
        "--xdp-mode",
        "generic",
    ]);
    cmd.stdin(Stdio::null()).stdout(File::create(&out).expect("decap output file"));
    let mut decap = BgProcess::spawn(cmd).expect("start xlb decap");
    std::thread::sleep(Duration::from_millis(500));
    assert!(decap.try_wait().unwrap().is_none(), "xlb decap exited early");

    let xlb = Daemon::start(&lb, CONFIG, &["c0"]).expect("start xlb");
    let c = Client::new(&client);
    for vip in ["198.18.10.10".parse().unwrap(), "2001:db8:10::10".parse().unwrap()] {
        let url = http_url(vip, 80, "/");
        // Health checks and next hops settle within a few seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let body = loop {
            match c.curl(&url) {
                Ok(body) => break body,
                Err(e) if std::time::Instant::now() > deadline => {
                    let status = xlb.ctl(&["status"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                    let links = lb.run(&["ip", "-s", "link"]).unwrap_or_default();
                    let rlinks = router.run(&["ip", "-s", "link"]).unwrap_or_default();
                    let blinks = backend.run(&["ip", "-s", "link"]).unwrap_or_default();
                    panic!("curl {url} through the lb: {e:#}\nxlb status:\n{status:?}\nlb links:\n{links}\nrouter:\n{rlinks}\nbackend:\n{blinks}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        assert_eq!(body.trim(), "web-behind-router", "curl {url}: expected the backend's page");
        for i in 0..5 {
            let body = c.curl(&url).unwrap_or_else(|e| panic!("curl {url} #{i}: {e:#}"));
            assert_eq!(body.trim(), "web-behind-router", "curl {url} #{i}");
        }
    }

    decap.signal(libc::SIGTERM).expect("SIGTERM to xlb decap");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while decap.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "xlb decap did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let count = |name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    };
    assert!(
        count("ipip") >= 6 && count("gue") >= 6,
        "expected ipip and gue packets decapsulated, xlb decap printed:\n{text}"
    );
    assert_eq!(
        count("dropped_bad_header") + count("dropped_truncated") + count("dropped_fragment"),
        0,
        "drops:\n{text}"
    );
    let attached = backend.run(&["ip", "link", "show", "eth0"]).unwrap();
    assert!(!attached.contains("xdp"), "xlb decap left XDP attached to eth0:\n{attached}");
}
