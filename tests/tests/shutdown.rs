//! Stopping the daemon always completes: SIGTERM or SIGINT while health
//! checks keep failing (one backend refuses, one never answers) and an
//! `xlb trace` is streaming. The daemon exits 0, says it detached, leaves
//! XDP attached to neither interface and removes its admin socket; the
//! trace client ends cleanly.
//!
//! Needs root and a release build with the XDP object (`cargo xtask test`).

use std::time::{Duration, Instant};

use xlb_testbed::{
    require_root,
    xlb::{xlb, Daemon},
    Topology, VIP_V4,
};

/// web1 answers; web2 has no server (refused); 198.18.1.250 is no host at
/// all (its checks time out). Checks every 100 ms, down at the first failure.
fn config() -> String {
    format!(
        "[daemon]\ninterfaces = [\"eth0\", \"eth1\"]\nmetrics = \"127.0.0.1:9477\"\nconntrack_entries = 4096\n\n\
         [[service]]\nname = \"www\"\nvip = \"{VIP_V4}:80\"\n\
         [service.health]\ncheck = \"tcp\"\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 1\n\
         [[service.backend]]\naddress = \"198.18.1.11:80\"\n\
         [[service.backend]]\naddress = \"198.18.1.12:80\"\n\
         [[service.backend]]\naddress = \"198.18.1.250:80\"\n"
    )
}

fn wait_log(d: &Daemon, what: &str) {
    d.wait_log(Duration::from_secs(10), what, |l| l.contains(what)).unwrap_or_else(|e| panic!("{e:#}"));
}

fn stop_while_busy(topo: &Topology, sig: libc::c_int, name: &str) {
    let mut d = Daemon::start(topo.lb_ns(), &config(), &["eth0", "eth1"]).unwrap();
    wait_log(&d, "backend www/198.18.1.12:80 is DOWN");
    wait_log(&d, "backend www/198.18.1.250:80 is DOWN");

    let socket = d.socket.to_str().unwrap().to_string();
    let trace = std::thread::spawn(move || {
        xlb(None, &["trace", "--socket", &socket, "--sample", "1", "--count", "100000", "--seconds", "60"]).unwrap()
    });
    wait_log(&d, "trace started");
    // Checks keep failing (every 100 ms) while the daemon stops.
    let t0 = Instant::now();
    d.signal(sig).unwrap();
    wait_log(&d, &format!("{name}: stopping"));
    wait_log(&d, "; bye");
    // Reaps the exited daemon (its SIGTERM reaches a process already gone).
    let status = d.stop().unwrap();
    let log = d.log_text();
    assert_eq!(status.code(), Some(0), "xlb exit status after {name}: {status}; log:\n{log}");
    assert!(t0.elapsed() < Duration::from_secs(8), "stopping took {:?}; log:\n{log}", t0.elapsed());
    assert!(log.contains("detached from eth0, eth1; bye"), "no clean detach in the log:\n{log}");
    assert!(log.contains("trace stopped"), "the trace was not turned off:\n{log}");
    assert_eq!(d.xdp_attached(), [false, false], "XDP still attached after {name}; log:\n{log}");
    assert!(!d.socket.exists(), "admin socket {} left behind", d.socket.display());

    let out = trace.join().unwrap();
    assert!(
        out.status.success(),
        "xlb trace after the daemon stopped: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shutdown_is_clean_on_sigterm_and_sigint_while_checks_fail_and_a_trace_runs() {
    if !require_root("shutdown topology") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let _web1 = topo.backend(1).start_nginx().unwrap();
    stop_while_busy(&topo, libc::SIGTERM, "SIGTERM");
    stop_while_busy(&topo, libc::SIGINT, "SIGINT");
}
