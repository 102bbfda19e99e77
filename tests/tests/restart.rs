//! Restarts and upgrades without losing flows, for real: xlb in the lb
//! namespace in front of nginx on web1, web2; a client keeps one HTTP/1.1
//! connection open and sends a request every 50 ms while the daemon is
//! stopped (SIGTERM, as `systemctl restart` does) and started again, or
//! replaced by a daemon with another XDP program, or with another
//! `conntrack_entries`. Every request must be answered, by the same backend.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xlb_testbed::{
    config::{web, web_like, ConfigToml, ServiceToml},
    xlb::{json_backend, Daemon},
    KeptAlive, Netns, Topology, VIP_V4,
};

const REQUEST_EVERY: Duration = Duration::from_millis(50);
/// Bound on one pinger's life.
const PINGER_MAX: Duration = Duration::from_secs(180);

/// www on VIP_V4:80 over web1 and web2, `forwarding`, HTTP checks every 200 ms.
fn config(forwarding: &str, conntrack_entries: u32) -> ConfigToml {
    let svc = ServiceToml::new("www", (VIP_V4, 80).into())
        .set("forwarding", forwarding)
        .set("table_size", 251u32)
        .quick_http_checks()
        .backend(web_like(VIP_V4.into(), 1, 80))
        .backend(web_like(VIP_V4.into(), 2, 80));
    ConfigToml::new().daemon("metrics", "").daemon("conntrack_entries", conntrack_entries).service(svc)
}

/// One kept-alive connection asking every 50 ms until stopped.
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Result<String, String>>>>,
}

impl Pinger {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let mut conn = KeptAlive::open(ns, addr).unwrap_or_else(|e| panic!("opening {addr}: {e:#}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) && t0.elapsed() < PINGER_MAX {
                out.push(match conn.get("/") {
                    Ok((200, body)) => Ok(body.trim().to_string()),
                    Ok((status, body)) => Err(format!("status {status}: {body}")),
                    Err(e) => Err(format!("{e:#}")),
                });
                std::thread::sleep(REQUEST_EVERY);
            }
            out
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops and returns the answers (each the backend's name, or the error).
    fn finish(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("pinger thread")
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every answer came, all from one backend; returns its name.
#[track_caller]
fn assert_all_answered_by_one(what: &str, answers: &[Result<String, String>], min: usize) -> String {
    let failed: Vec<(usize, &String)> =
        answers.iter().enumerate().filter_map(|(i, a)| a.as_ref().err().map(|e| (i, e))).collect();
    assert!(failed.is_empty(), "{what}: {} of {} requests failed: {failed:?}", failed.len(), answers.len());
    assert!(answers.len() >= min, "{what}: only {} requests were made (expected at least {min})", answers.len());
    let first = answers[0].as_ref().unwrap().clone();
    let other: Vec<&String> = answers.iter().map(|a| a.as_ref().unwrap()).filter(|b| **b != first).collect();
    assert!(other.is_empty(), "{what}: the kept-alive connection moved from {first} to {other:?}");
    first
}

/// While no daemon runs: XDP stays attached, the pins are there, and new
/// connections are answered.
#[track_caller]
fn assert_served_without_daemon(topo: &Topology, d: &Daemon, url: &str) {
    let log = d.log_text();
    assert!(log.contains("XDP stays attached to eth0, eth1"), "no word that XDP stays attached:\n{log}");
    assert_eq!(d.xdp_attached(), [true, true], "XDP gone after SIGTERM; log:\n{log}");
    assert!(d.pin_path.join("link_eth0").exists(), "no pinned link in {}", d.pin_path.display());
    let replies = topo.client().get_many(url, 10, None, true).unwrap_or_else(|e| panic!("{url} with no daemon: {e:#}"));
    assert_eq!(replies.len(), 10, "new connections while no daemon runs: {replies:?}");
}

fn flows_survive_restarts(forwarding: &str, restarts: usize) {
    let topo = Topology::new(2).unwrap();
    if forwarding == "dsr" {
        topo.add_vips_to_backends().unwrap();
    }
    let _web = topo.start_nginx_all().unwrap();
    let mut d = Daemon::start_kept(topo.lb_ns(), &config(forwarding, 65536).to_string(), &["eth0", "eth1"]).unwrap();
    d.wait_checked(Duration::from_secs(10)).unwrap();
    let url = format!("http://{VIP_V4}:80/");
    let pinger = Pinger::start(topo.client_ns(), (VIP_V4, 80).into());
    std::thread::sleep(Duration::from_millis(300));

    // The first restart with a pause: the data path runs alone.
    let t0 = Instant::now();
    let st = d.stop().unwrap();
    assert!(st.success(), "xlb exit status {st} on SIGTERM; log:\n{}", d.log_text());
    assert_served_without_daemon(&topo, &d, &url);
    std::thread::sleep(Duration::from_millis(500));
    d.spawn(&[]).unwrap();
    eprintln!("{forwarding}: restart with a pause: {:?} without a daemon", t0.elapsed());

    let (mut running, mut checked) = (Vec::new(), Vec::new());
    for _ in 1..restarts {
        let t0 = Instant::now();
        running.push(d.restart(&[]).unwrap());
        d.wait_checked(Duration::from_secs(10)).unwrap();
        checked.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let answers = pinger.finish();
    let log = d.full_log();
    let backend = assert_all_answered_by_one(&format!("{forwarding}, {restarts} restarts"), &answers, 10);
    assert_eq!(
        log.matches("took over the pinned XDP link on eth0: program replaced atomically (same program").count(),
        restarts,
        "each new daemon takes over the link; log:\n{log}"
    );
    assert!(!log.contains("recreating"), "no map is recreated when nothing changed; log:\n{log}");
    let failed = answers.iter().filter(|a| a.is_err()).count();
    eprintln!(
        "{forwarding}: {} requests on one kept-alive connection ({backend}) across {restarts} restarts, {failed} failed",
        answers.len()
    );
    eprintln!("{forwarding}: SIGTERM -> new daemon running: {running:?}");
    eprintln!("{forwarding}: SIGTERM -> new daemon's first health checks applied: {checked:?}");
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn nat_flow_survives_ten_restarts_and_new_connections_are_served_in_the_gap() {
    flows_survive_restarts("nat", 10);
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn dsr_flow_survives_restarts_and_new_connections_are_served_in_the_gap() {
    flows_survive_restarts("dsr", 3);
}

/// The `upgrade-variant` build of the XDP object (a few more instructions,
/// same behaviour): `XLB_UPGRADE_OBJ`, else built here into
/// `target/ebpf-variant` (about a minute the first time).
fn variant_object() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_UPGRADE_OBJ") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/ebpf-variant");
    let out = Command::new("cargo")
        .current_dir(&root)
        .args(["+nightly", "build", "-p", "lb-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--release", "--features", "upgrade-variant"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .expect("running cargo to build the upgrade-variant XDP object");
    assert!(out.status.success(), "building the variant object failed:\n{}", String::from_utf8_lossy(&out.stderr));
    target.join("bpfel-unknown-none/release/lb-ebpf")
}

/// An upgrade to a program with another instruction count, and back: the
/// link's program is swapped atomically and the flow never notices.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn upgrade_to_another_program_and_back_keeps_the_flow() {
    let variant = variant_object();
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let mut d = Daemon::start_kept(topo.lb_ns(), &config("nat", 65536).to_string(), &["eth0", "eth1"]).unwrap();
    let pinger = Pinger::start(topo.client_ns(), (VIP_V4, 80).into());
    std::thread::sleep(Duration::from_millis(300));
    d.restart(&["--object", variant.to_str().unwrap()]).unwrap();
    let log = d.log_text();
    assert!(
        log.contains("took over the pinned XDP link on eth0: program replaced atomically (program changed"),
        "the upgrade did not swap the program; log:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    d.restart(&[]).unwrap();
    let log = d.log_text();
    assert!(log.contains("(program changed"), "the downgrade did not swap the program; log:\n{log}");
    std::thread::sleep(Duration::from_millis(300));
    let answers = pinger.finish();
    assert_all_answered_by_one("upgrade and downgrade", &answers, 10);
}

/// A new `conntrack_entries`: the conntrack maps are recreated with their
/// entries copied (the log names them and why), and the flow goes on.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn changed_conntrack_entries_recreates_the_maps_and_keeps_the_flow() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let mut d = Daemon::start_kept(topo.lb_ns(), &config("nat", 4096).to_string(), &["eth0", "eth1"]).unwrap();
    let pinger = Pinger::start(topo.client_ns(), (VIP_V4, 80).into());
    std::thread::sleep(Duration::from_millis(300));
    let st = d.stop().unwrap();
    assert!(st.success(), "{}", d.log_text());
    d.write_config(&config("nat", 8192).to_string()).unwrap();
    d.spawn(&[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = d.log_text();
    // Both maps sized by conntrack_entries are recreated, named, with the reason.
    // CONNTRACK's entries are buckets of 4 slots.
    for (map, from, to) in [("CONNTRACK", 1024, 2048), ("REVERSE_NAT", 4096, 8192)] {
        let line = format!("map {map}: the pinned map does not match this program (max_entries {from} -> {to})");
        assert!(log.contains(&line), "no line {line:?} in the log:\n{log}");
    }
    // The conntrack entries are copied (rehashed into the larger table), the kept-alive flow's among them.
    let copied = "map CONNTRACK: pinned map does not match this program (max_entries 1024 -> 2048): recreated, ";
    let at = log.find(copied).unwrap_or_else(|| panic!("no line {copied:?} in the log:\n{log}"));
    let rest = &log[at + copied.len()..];
    let n: u64 = rest.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0);
    assert!(n >= 1, "expected the kept-alive flow's entry among those copied: {}", rest.lines().next().unwrap());
    assert_eq!(
        std::fs::read_dir(&d.pin_path)
            .unwrap()
            .filter(|e| { e.as_ref().unwrap().file_name().to_string_lossy().ends_with("__new") })
            .count(),
        0,
        "replaced maps left under a temporary name in {}",
        d.pin_path.display()
    );
    let answers = pinger.finish();
    assert_all_answered_by_one("conntrack_entries 4096 -> 8192", &answers, 10);
    // And the next restart reuses the new maps as they are.
    d.restart(&[]).unwrap();
    assert!(!d.log_text().contains("recreating"), "{}", d.log_text());
}

/// A drain survives a restart; `xlb stop` leaves no XDP and no pin; pins of
/// another configuration are refused with the way out; `xlb stop` also
/// stops a running daemon.
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn drains_survive_stop_cleans_up_and_foreign_pins_are_refused() {
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let cfg = config("nat", 4096).to_string();
    let mut d = Daemon::start_kept(topo.lb_ns(), &cfg, &["eth0", "eth1"]).unwrap();
    let web1 = web(1, 80).to_string();
    let out = d.ctl(&["drain", "www", &web1]).unwrap();
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    d.restart(&[]).unwrap();
    let status = d.status_json();
    assert_eq!(json_backend(&status, "www", &web1)["state"], "drained", "the drain was lost:\n{status:#}");
    assert_eq!(json_backend(&status, "www", &web(2, 80).to_string())["state"], "up", "{status:#}");

    // xlb stop with no daemon running.
    d.stop().unwrap();
    assert_eq!(d.xdp_attached(), [true, true], "{}", d.log_text());
    let out = d.xlb_stop().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xlb stop: {text}");
    assert!(text.contains("detached XDP from eth0, eth1"), "xlb stop said: {text}");
    assert_eq!(d.xdp_attached(), [false, false], "XDP left attached after xlb stop: {text}");
    assert!(!d.pin_path.exists(), "{} left behind by xlb stop", d.pin_path.display());

    // Pins of another configuration (other interfaces): refused, with the way out.
    d.spawn(&[]).unwrap();
    d.stop().unwrap();
    let other = config("nat", 4096).daemon("interfaces", &["eth0"][..]).to_string();
    d.write_config(&other).unwrap();
    let (st, log) = d.spawn_expecting_exit(&[]).unwrap();
    assert!(!st.success(), "xlb run took over foreign pins; log:\n{log}");
    let want = format!("{} holds the pins of another xlb configuration", d.pin_path.display());
    assert!(log.contains(&want), "expected {want:?} in:\n{log}");
    assert!(log.contains(&format!("xlb stop --pin-path {}", d.pin_path.display())), "no way out in:\n{log}");
    assert_eq!(d.xdp_attached(), [true, true], "the refusal touched the running data path");

    // xlb stop while a daemon runs: it exits, detached, pins gone.
    d.write_config(&cfg).unwrap();
    d.spawn(&[]).unwrap();
    let out = d.xlb_stop().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xlb stop: {text}");
    assert!(text.contains("stopping"), "xlb stop did not ask the daemon: {text}");
    let st = d.stop();
    assert!(st.is_err() || st.unwrap().success(), "{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("xlb stop: stopping") && log.contains("removed the pins"), "log:\n{log}");
    assert_eq!(d.xdp_attached(), [false, false], "XDP left attached; log:\n{log}");
    assert!(!d.pin_path.exists(), "{} left behind; log:\n{log}", d.pin_path.display());
}
