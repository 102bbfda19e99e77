//! Stopping the daemon always completes: SIGTERM or SIGINT while health
//! checks keep failing (one backend refuses, one never answers) and an
//! `xlb trace` is streaming. The daemon exits 0 and removes its admin
//! socket; the trace client ends cleanly. As a service runs it, the data
//! path stays attached and pinned (the log says so and names `xlb stop`),
//! and `xlb stop` then leaves neither XDP nor pins; with
//! `--detach-on-exit` the daemon itself leaves nothing.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::time::{Duration, Instant};

use xlb_testbed::{
    config::{web, BackendToml, ConfigToml, ServiceToml},
    xlb::{xlb, Daemon},
    Topology, VIP_V4,
};

/// web1 answers; web2 has no server (refused); 198.18.1.250 is no host at
/// all (its checks time out). Checks every 100 ms, down at the first failure.
fn config() -> String {
    let svc = ServiceToml::new("www", (VIP_V4, 80).into())
        .health("check", "tcp")
        .health("interval_ms", 100u64)
        .health("timeout_ms", 80u64)
        .health("rise", 2u32)
        .health("fall", 1u32)
        .backend(web(1, 80))
        .backend(web(2, 80))
        .backend(BackendToml::new("198.18.1.250:80".parse().unwrap()));
    ConfigToml::new().daemon("metrics", "127.0.0.1:9477").daemon("conntrack_entries", 4096u32).service(svc).to_string()
}

fn stop_while_busy(topo: &Topology, sig: libc::c_int, name: &str, detach_on_exit: bool) {
    let mut d = Daemon::start_with(topo.lb_ns(), &config(), &["eth0", "eth1"], detach_on_exit, &[]).unwrap();
    d.expect_log("backend www/198.18.1.12:80 is DOWN", 1);
    d.expect_log("backend www/198.18.1.250:80 is DOWN", 1);

    let socket = d.socket.to_str().unwrap().to_string();
    let trace = std::thread::spawn(move || {
        xlb(None, &["trace", "--socket", &socket, "--sample", "1", "--count", "100000", "--seconds", "60"]).unwrap()
    });
    d.expect_log("trace started", 1);
    // Checks keep failing (every 100 ms) while the daemon stops.
    let t0 = Instant::now();
    let status = d.stop_with(sig).unwrap_or_else(|e| panic!("{e:#}"));
    let log = d.log_text();
    assert_eq!(status.code(), Some(0), "xlb exit status after {name}: {status}; log:\n{log}");
    assert!(t0.elapsed() < Duration::from_secs(8), "stopping took {:?}; log:\n{log}", t0.elapsed());
    assert!(log.contains("trace stopped"), "the trace was not turned off:\n{log}");
    assert!(!d.socket.exists(), "admin socket {} left behind", d.socket.display());
    if detach_on_exit {
        assert!(log.contains("detached from eth0, eth1; bye"), "no clean detach in the log:\n{log}");
        assert_eq!(d.xdp_attached(), [false, false], "XDP still attached after {name}; log:\n{log}");
        assert!(!d.pin_path.exists(), "{} left behind after {name}; log:\n{log}", d.pin_path.display());
    } else {
        let kept = "XDP stays attached to eth0, eth1 and keeps forwarding with the last tables";
        assert!(log.contains(kept) && log.contains("`xlb stop` detaches it"), "expected {kept:?} in the log:\n{log}");
        assert_eq!(d.xdp_attached(), [true, true], "XDP detached after {name}; log:\n{log}");
        let out = d.xlb_stop().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "xlb stop after {name}: {text}");
        assert_eq!(d.xdp_attached(), [false, false], "XDP still attached after xlb stop: {text}");
        assert!(!d.pin_path.exists(), "{} left behind by xlb stop: {text}", d.pin_path.display());
    }

    let out = trace.join().unwrap();
    assert!(
        out.status.success(),
        "xlb trace after the daemon stopped: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn shutdown_is_clean_on_sigterm_and_sigint_while_checks_fail_and_a_trace_runs() {
    let topo = Topology::new(2).unwrap();
    let _web1 = topo.backend(1).start_nginx().unwrap();
    stop_while_busy(&topo, libc::SIGTERM, "SIGTERM", false);
    stop_while_busy(&topo, libc::SIGINT, "SIGINT", false);
    stop_while_busy(&topo, libc::SIGTERM, "SIGTERM with --detach-on-exit", true);
}
