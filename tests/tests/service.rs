//! xlb as a service: the Debian package `cargo xtask deb` builds (its files,
//! modes, control fields, conffiles, maintainer scripts), its systemd unit
//! (`systemd-analyze verify`, the settings the README promises), and the
//! daemon run with exactly the unit's capabilities, telling a notify socket
//! READY=1, RELOADING=1/READY=1 and STOPPING=1 as systemd would hear them.
//!
//! Needs root, the release build and the package (`cargo xtask test` builds
//! it and passes its path in `XLB_DEB`).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xlb_testbed::{
    config::{web, ConfigToml, ServiceToml},
    http_url,
    xlb::{xlb_bin, Daemon, Launch, TempDir},
    Topology, VIP_V4,
};

/// The package under test: `XLB_DEB`, else where `cargo xtask deb` leaves it.
fn deb() -> PathBuf {
    let path = match std::env::var_os("XLB_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let arch = run(Command::new("dpkg").arg("--print-architecture"));
            let version = env!("CARGO_PKG_VERSION");
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/debian/xlb_{version}_{}.deb", arch.trim()))
        }
    };
    assert!(path.is_file(), "no package at {} (cargo xtask deb builds it; cargo xtask test too)", path.display());
    path
}

/// Runs `cmd`; its stdout. Panics with stderr unless it exits 0.
#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package unpacked into a scratch directory (removed on drop).
struct Unpacked {
    dir: TempDir,
}

impl Unpacked {
    fn new(deb: &Path) -> Self {
        let dir = TempDir::new("deb").unwrap();
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path().join("root")));
        run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(dir.path().join("DEBIAN")));
        Unpacked { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn control_file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join("DEBIAN").join(name)).unwrap_or_else(|e| panic!("DEBIAN/{name}: {e}"))
    }
}

/// The commands `xlb --help` lists (without `help`).
fn commands() -> Vec<String> {
    let help = run(Command::new(xlb_bin()).arg("--help"));
    let list = help.split_once("Commands:\n").unwrap_or_else(|| panic!("no command list in xlb --help:\n{help}")).1;
    let names: Vec<String> = list
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&n| n != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.iter().any(|n| n == "run"), "no `run` in xlb --help's commands: {names:?}");
    names
}

/// One `dpkg-deb -c` line: mode, owner, path (without the leading `.`).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert!(w.len() >= 6, "unexpected dpkg-deb -c line: {l:?}");
            (w[0].to_owned(), w[1].to_owned(), w[5].trim_start_matches('.').to_owned())
        })
        .collect()
}

#[test]
#[ignore = "needs the package built by cargo xtask deb: cargo xtask test runs it"]
fn service_package_holds_binary_unit_man_pages_completions_and_the_config() {
    let deb = deb();
    let mut want: BTreeSet<String> = [
        "/usr/bin/xlb",
        "/lib/systemd/system/xlb.service",
        "/etc/xlb/xlb.toml",
        "/usr/share/bash-completion/completions/xlb",
        "/usr/share/zsh/vendor-completions/_xlb",
        "/usr/share/fish/vendor_completions.d/xlb.fish",
        "/usr/share/doc/xlb/copyright",
        "/usr/share/man/man1/xlb.1.gz",
    ]
    .map(str::to_owned)
    .into();
    for c in commands() {
        want.insert(format!("/usr/share/man/man1/xlb-{c}.1.gz"));
    }
    let listed = contents(&deb);
    let files: BTreeSet<String> =
        listed.iter().filter(|(mode, _, _)| mode.starts_with('-')).map(|(_, _, p)| p.clone()).collect();
    assert_eq!(files, want, "the package's files (dpkg-deb -c {})", deb.display());
    for (mode, owner, path) in &listed {
        assert_eq!(owner, "root/root", "{path} is owned by {owner}");
        let expected = if path == "/usr/bin/xlb" {
            "-rwxr-xr-x"
        } else if mode.starts_with('d') {
            "drwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, expected, "mode of {path}");
    }

    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)).trim().to_owned();
    assert_eq!(field("Package"), "xlb");
    let version = run(Command::new(xlb_bin()).arg("--version"));
    assert!(
        version.starts_with(&format!("xlb {} ", field("Version")))
            || version.trim() == format!("xlb {}", field("Version")),
        "package version {} but the binary says {version}",
        field("Version")
    );
    assert_eq!(field("Architecture"), run(Command::new("dpkg").arg("--print-architecture")).trim());
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= ") && depends.contains("iproute2"), "Depends: {depends}");
    assert!(!field("Maintainer").is_empty() && !field("Description").is_empty(), "Maintainer and Description are set");
    let size: u64 = field("Installed-Size").parse().expect("Installed-Size is a number of KiB");
    let bin_kib = fs::metadata(xlb_bin()).unwrap().len() / 1024;
    assert!(size >= bin_kib && size < bin_kib + 1024, "Installed-Size {size} KiB for a {bin_kib} KiB binary");

    let pkg = Unpacked::new(&deb);
    assert_eq!(pkg.control_file("conffiles"), "/etc/xlb/xlb.toml\n", "the config is a conffile");
    for script in ["postinst", "prerm", "postrm"] {
        let text = pkg.control_file(script);
        run(Command::new("sh").arg("-n").arg(pkg.dir.path().join("DEBIAN").join(script)));
        let commands: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
        for c in commands.iter().filter(|c| c.contains("systemctl")) {
            let words: Vec<&str> = c.split_whitespace().collect();
            assert!(
                !words.contains(&"enable") && !words.contains(&"start"),
                "{script} must not start or enable xlb: {c}"
            );
        }
    }

    // The packaged binary is the one under test (the XDP object embedded in it).
    let packaged = pkg.root().join("usr/bin/xlb");
    assert!(fs::read(&packaged).unwrap() == fs::read(xlb_bin()).unwrap(), "the package holds another binary");
    // The example config is valid.
    let config = pkg.root().join("etc/xlb/xlb.toml");
    run(Command::new(&packaged).arg("check").arg("--config").arg(&config));
    // The man pages are gzip'd roff that names the command; bash completes xlb.
    let page = run(Command::new("gzip").arg("-dc").arg(pkg.root().join("usr/share/man/man1/xlb-run.1.gz")));
    assert!(page.contains(".TH") && page.contains("xlb\\-run"), "xlb-run.1:\n{page}");
    let bash = pkg.root().join("usr/share/bash-completion/completions/xlb");
    let complete = run(Command::new("bash").arg("-c").arg(format!("source '{}' && complete -p xlb", bash.display())));
    assert!(complete.contains("_xlb") && complete.trim_end().ends_with(" xlb"), "bash: {complete}");
}

#[test]
#[ignore = "needs the package built by cargo xtask deb: cargo xtask test runs it"]
fn service_unit_passes_systemd_analyze_verify_and_says_what_the_readme_says() {
    let pkg = Unpacked::new(&deb());
    let unit = fs::read_to_string(pkg.root().join("lib/systemd/system/xlb.service")).unwrap();
    let settings: Vec<(&str, &str)> =
        unit.lines().filter(|l| !l.starts_with('#') && !l.starts_with('[')).filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>();
    assert_eq!(get("Type"), ["notify"], "{unit}");
    assert_eq!(get("ExecStart"), ["/usr/bin/xlb run --config /etc/xlb/xlb.toml"], "{unit}");
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"], "{unit}");
    assert_eq!(get("Restart"), ["on-failure"], "{unit}");
    assert_eq!(get("RuntimeDirectory"), ["xlb"], "the admin socket's /run/xlb: {unit}");
    assert!(get("ExecStop").is_empty(), "stopping the service must leave the data path (no ExecStop): {unit}");
    assert!(!get("CapabilityBoundingSet").is_empty(), "the unit limits capabilities: {unit}");
    assert!(get("User").is_empty(), "runs as root with fewer capabilities: {unit}");

    // verify checks that ExecStart's binary exists and runs `man` for
    // Documentation=: point both at the unpacked package.
    let dir = TempDir::new("unit").unwrap();
    let verify = |text: &str| {
        let path = dir.path().join("xlb.service");
        fs::write(&path, text).unwrap();
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", pkg.root().join("usr/share/man"))
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("systemd-analyze runs (cargo xtask setup installs systemd)")
    };
    let bin = pkg.root().join("usr/bin/xlb");
    let ok = verify(&unit.replace("/usr/bin/xlb", bin.to_str().unwrap()));
    let said = format!("{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    assert!(ok.status.success() && said.trim().is_empty(), "systemd-analyze verify ({}):\n{said}", ok.status);
    // The same check finds a missing binary: verify really looked.
    let missing = dir.path().join("no-such-xlb");
    let bad = verify(&unit.replace("/usr/bin/xlb", missing.to_str().unwrap()));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && said.contains("no-such-xlb"), "verify of a unit without its binary: {said}");
}

/// The `CAP_*` names of the unit's CapabilityBoundingSet, as setpriv writes them (`bpf`, `net_admin`).
fn unit_capabilities() -> Vec<String> {
    let unit = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/xlb.service")).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("a CapabilityBoundingSet");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase()).collect()
}

/// `setpriv` keeping only `caps` (root's capabilities come from the bounding set at exec).
fn setpriv(caps: &[String]) -> Vec<String> {
    let bounding = std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>();
    ["setpriv", "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all"]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--bounding-set={}", bounding.join(","))])
        .collect()
}

/// The next datagram on the notify socket (5 s at most).
#[track_caller]
fn next_notification(sock: &UnixDatagram, what: &str, log: impl Fn() -> String) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no notification ({what} expected) within 5 s: {e}; log:\n{}", log()),
    }
}

/// The capability bits of `CapEff` in /proc/PID/status.
fn effective_caps(pid: u32) -> u64 {
    xlb_testbed::xlb::capabilities(pid, "CapEff")
}

fn cap_bit(name: &str) -> u64 {
    let n = match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other} is not known to this test: add its number"),
    };
    1 << n
}

fn config() -> String {
    let svc = ServiceToml::new("www", (VIP_V4, 80).into()).quick_http_checks().backend(web(1, 80)).backend(web(2, 80));
    ConfigToml::new().daemon("metrics", "").service(svc).to_string()
}

/// The daemon with only the unit's capabilities attaches, serves, checks and
/// reloads, and tells the notify socket each step; without any one of those
/// capabilities it does not start (so each one is needed).
#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn service_daemon_with_the_units_capabilities_serves_and_notifies_systemd() {
    let caps = unit_capabilities();
    let topo = Topology::new(2).unwrap();
    let _web = topo.start_nginx_all().unwrap();
    let dir = TempDir::new("notify").unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let env = [("NOTIFY_SOCKET", notify_path.to_str().unwrap())];
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();

    let mut d = Daemon::start_launched(
        topo.lb_ns(),
        &config(),
        &["eth0", "eth1"],
        Launch { wrapper: &wrapper, env: &env, journal_stream: true },
    )
    .unwrap_or_else(|e| panic!("xlb run with only {caps:?}: {e:#}"));
    let want: u64 = caps.iter().map(|c| cap_bit(c)).sum();
    assert_eq!(effective_caps(d.pid()), want, "the daemon's effective capabilities are exactly the unit's {caps:?}");

    let ready = next_notification(&notify, "READY=1", || d.log_text());
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("STATUS=serving 1 service on eth0, eth1"),
        "first notification: {ready:?}"
    );
    assert_eq!(d.xdp_attached(), [true, true], "READY=1 came before XDP was attached");
    d.wait_checked(Duration::from_secs(10)).unwrap();
    let url = http_url(VIP_V4.into(), 80, "/");
    let answer = topo.client().curl(&url).unwrap_or_else(|e| panic!("{e:#}; log:\n{}", d.log_text()));
    assert!(answer.contains("web"), "a backend answered through the VIP: {answer:?}");

    d.signal(libc::SIGHUP).unwrap();
    let reloading = next_notification(&notify, "RELOADING=1", || d.log_text());
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "after SIGHUP: {reloading:?}");
    let reloaded = next_notification(&notify, "READY=1 after the reload", || d.log_text());
    assert!(reloaded.starts_with("READY=1\nSTATUS=reloaded"), "after the reload: {reloaded:?}");

    // Logged for journald: each line starts with its syslog priority, no timestamp, no colour.
    let log = d.log_text();
    for line in log.lines() {
        let split = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        let (prio, rest) = split.unwrap_or_else(|| panic!("a log line without its priority: {line:?}\n{log}"));
        assert!(matches!(prio, "3" | "4" | "6" | "7"), "priority {prio} in {line:?}");
        let level = rest.split_whitespace().next().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "the level right after the priority (no timestamp): {line:?}"
        );
        assert!(!line.contains('\x1b'), "colour in the journal: {line:?}");
    }
    assert!(log.contains("<6>INFO xlb::daemon: xlb running"), "the daemon's start for journald:\n{log}");

    let status = d.stop().unwrap();
    assert!(status.success(), "xlb exited {status}; log:\n{}", d.log_text());
    let stopping = next_notification(&notify, "STOPPING=1", || d.log_text());
    assert!(stopping.starts_with("STOPPING=1\nSTATUS=stopping (SIGTERM)"), "at SIGTERM: {stopping:?}");

    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| c != &missing).cloned().collect();
        let wrapper = setpriv(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let launch = Launch { wrapper: &wrapper, ..Launch::default() };
        match Daemon::start_launched(topo.lb_ns(), &config(), &["eth0", "eth1"], launch) {
            Ok(d) => panic!(
                "xlb run started without CAP_{}: the unit grants it for nothing; log:\n{}",
                missing.to_uppercase(),
                d.log_text()
            ),
            Err(e) => {
                let e = format!("{e:#}");
                let tail: Vec<&str> = e.lines().rev().take(6).collect();
                eprintln!("without CAP_{}: {}", missing.to_uppercase(), tail.join(" | "));
            }
        }
    }
}
