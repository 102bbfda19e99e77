//! Running the real `xlb` binary inside a namespace: the daemon, and one-shot
//! commands (`check`, `explain`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns::BgProcess, Netns};

/// The `xlb` binary under test: `XLB_BIN`, else `target/release/xlb`.
pub fn xlb_bin() -> PathBuf {
    match std::env::var_os("XLB_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/xlb"),
    }
}

/// A per-run scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("xlb-{}-{tag}", crate::run_suffix()));
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `xlb run` in a namespace, with its own admin socket and pin directory
/// (`/sys/fs/bpf/xlb-test-*`). Stopped with SIGTERM on drop, then `xlb stop`
/// detaches XDP and removes the pins, whatever state the test left.
pub struct Daemon {
    ns: String,
    proc: Option<BgProcess>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The admin socket (always in the daemon's own scratch directory, so
    /// concurrent runs never share one).
    pub socket: PathBuf,
    /// The pin directory (`[daemon] pin_path`), unique to this daemon.
    pub pin_path: PathBuf,
    interfaces: Vec<String>,
    /// `--detach-on-exit`: SIGTERM leaves nothing behind (most tests).
    detach_on_exit: bool,
    /// Log lines of the daemons started before the current one (restarts).
    log_before: String,
    /// How `xlb run` is started ([`Launch`]).
    launch: OwnedLaunch,
    _dir: TempDir,
}

/// How [`Daemon::start_launched`] runs `xlb run`: behind a wrapper command (e.g.
/// `setpriv` with fewer capabilities) and with extra environment variables.
#[derive(Clone, Copy, Debug, Default)]
pub struct Launch<'a> {
    /// Words before the xlb binary (the wrapper execs it: the pid stays xlb's).
    pub wrapper: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Sets `JOURNAL_STREAM` to the log file's device and inode, as systemd
    /// does when stderr is the journal: the daemon then logs for journald.
    pub journal_stream: bool,
}

/// [`Launch`] kept by the daemon for its restarts.
#[derive(Clone, Debug, Default)]
struct OwnedLaunch {
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    journal_stream: bool,
}

impl From<Launch<'_>> for OwnedLaunch {
    fn from(l: Launch<'_>) -> Self {
        OwnedLaunch {
            wrapper: l.wrapper.iter().map(|s| s.to_string()).collect(),
            env: l.env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            journal_stream: l.journal_stream,
        }
    }
}

/// The pin directories of this process's daemons are numbered.
static PIN_DIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A command run in `ns`'s network namespace only (`nsenter --net`): unlike
/// `ip netns exec`, which mounts a fresh /sys, it keeps the host's BPF
/// filesystem at /sys/fs/bpf, where the daemon pins its maps and links.
pub fn ns_net_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--").args(argv);
    cmd
}

impl Daemon {
    /// Writes `config_toml` and starts `xlb run --detach-on-exit` in `ns`;
    /// returns once XDP is attached to every interface in `interfaces`.
    pub fn start(ns: &Netns, config_toml: &str, interfaces: &[&str]) -> Result<Self> {
        Self::start_with(ns, config_toml, interfaces, true, &[])
    }

    /// [`Daemon::start`] without `--detach-on-exit`, as a service runs: on
    /// SIGTERM the data path stays attached and pinned for the next daemon.
    pub fn start_kept(ns: &Netns, config_toml: &str, interfaces: &[&str]) -> Result<Self> {
        Self::start_with(ns, config_toml, interfaces, false, &[])
    }

    /// [`Daemon::start`] with extra environment variables for `xlb run` (test knobs
    /// such as `XLB_NO_ICMP`).
    pub fn start_with_env(ns: &Netns, config_toml: &str, interfaces: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_launched(ns, config_toml, interfaces, Launch { env, ..Launch::default() })
    }

    /// [`Daemon::start`], run as `launch` says.
    pub fn start_launched(ns: &Netns, config_toml: &str, interfaces: &[&str], launch: Launch) -> Result<Self> {
        Self::start_full(ns, config_toml, interfaces, true, &[], launch)
    }

    /// The daemon with `extra` arguments to `xlb run`.
    pub fn start_with(
        ns: &Netns,
        config_toml: &str,
        interfaces: &[&str],
        detach_on_exit: bool,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_full(ns, config_toml, interfaces, detach_on_exit, extra, Launch::default())
    }

    fn start_full(
        ns: &Netns,
        config_toml: &str,
        interfaces: &[&str],
        detach_on_exit: bool,
        extra: &[&str],
        launch: Launch,
    ) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let n = PIN_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut d = Daemon {
            ns: ns.name().to_string(),
            proc: None,
            config: dir.path().join("xlb.toml"),
            log: dir.path().join("xlb.log"),
            socket: dir.path().join("xlb.sock"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/xlb-test-{}-{n}", crate::run_suffix())),
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            detach_on_exit,
            log_before: String::new(),
            launch: launch.into(),
            _dir: dir,
        };
        d.write_config(config_toml)?;
        d.spawn(extra)?;
        Ok(d)
    }

    /// Starts `xlb run` (none may run) and waits until it runs with XDP
    /// attached to every interface (20 s at most).
    pub fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        anyhow::ensure!(self.proc.is_none(), "xlb already runs");
        if let Ok(text) = fs::read_to_string(&self.log) {
            self.log_before += &text;
        }
        let logf = fs::File::create(&self.log)?;
        let bin = xlb_bin();
        let mut argv: Vec<&str> = self.launch.wrapper.iter().map(String::as_str).collect();
        argv.extend([bin.to_str().unwrap(), "run", "-c", self.config.to_str().unwrap()]);
        if self.detach_on_exit {
            argv.push("--detach-on-exit");
        }
        argv.extend_from_slice(extra);
        let mut cmd = ns_net_command(&self.ns, &argv);
        cmd.envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        if self.launch.journal_stream {
            use std::os::unix::fs::MetadataExt as _;
            let m = logf.metadata()?;
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf);
        self.proc = Some(BgProcess::spawn(cmd)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.proc.as_mut().unwrap().try_wait()? {
                self.proc = None;
                bail!("xlb run exited early ({st}); log:\n{}", self.log_text());
            }
            if self.log_text().contains("xlb running") && self.xdp_attached().iter().all(|&a| a) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("xlb run did not come up within 20 s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `xlb run` and returns its exit status and log once it exits
    /// (it is expected to refuse); 20 s at most.
    pub fn spawn_expecting_exit(&mut self, extra: &[&str]) -> Result<(std::process::ExitStatus, String)> {
        anyhow::ensure!(self.proc.is_none(), "xlb already runs");
        let out = self.dir_file("refused.log");
        let logf = fs::File::create(&out)?;
        let bin = xlb_bin();
        let mut argv = vec![bin.to_str().unwrap(), "run", "-c", self.config.to_str().unwrap()];
        argv.extend_from_slice(extra);
        let mut cmd = ns_net_command(&self.ns, &argv);
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf);
        let mut p = BgProcess::spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.try_wait()? {
                return Ok((st, fs::read_to_string(&out).unwrap_or_default()));
            }
            if Instant::now() > deadline {
                p.signal(libc::SIGTERM)?;
                bail!("xlb run did not exit within 20 s:\n{}", fs::read_to_string(&out).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dir_file(&self, name: &str) -> PathBuf {
        self.config.with_file_name(name)
    }

    /// SIGTERM, wait for the exit (it must exit 0), start again with `extra`:
    /// a restart as `systemctl restart` makes one. Returns the time from the
    /// signal to the new daemon running.
    pub fn restart(&mut self, extra: &[&str]) -> Result<Duration> {
        let t0 = Instant::now();
        let st = self.stop()?;
        anyhow::ensure!(st.success(), "xlb exited with {st} on SIGTERM; log:\n{}", self.log_text());
        self.spawn(extra)?;
        Ok(t0.elapsed())
    }

    /// The log of every daemon started so far (restarts included).
    pub fn full_log(&self) -> String {
        self.log_before.clone() + &self.log_text()
    }

    /// `xlb stop` for this daemon's pins and socket (in its namespace).
    pub fn xlb_stop(&self) -> Result<Output> {
        let bin = xlb_bin();
        let argv = [
            bin.to_str().unwrap(),
            "stop",
            "--socket",
            self.socket.to_str().unwrap(),
            "--pin-path",
            self.pin_path.to_str().unwrap(),
        ];
        crate::netns::run_with_timeout(&mut ns_net_command(&self.ns, &argv), None, Duration::from_secs(30))
    }

    /// Replaces the daemon's config file (keeping its own admin socket and pin directory).
    pub fn write_config(&self, toml: &str) -> Result<()> {
        let text = with_daemon_key(&with_admin_socket(toml, &self.socket), "pin_path", &self.pin_path);
        fs::write(&self.config, text).with_context(|| format!("writing {}", self.config.display()))
    }

    /// Runs `xlb ARGS... --socket SOCKET` in the daemon's namespace (status,
    /// drain, enable, reload).
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        let sock = self.socket.to_string_lossy().to_string();
        let mut argv: Vec<&str> = args.to_vec();
        argv.extend(["--socket", &sock]);
        let bin = xlb_bin();
        let mut full = vec![bin.to_str().unwrap()];
        full.extend_from_slice(&argv);
        crate::netns::run_with_timeout(&mut crate::netns::ns_command(&self.ns, &full), None, Duration::from_secs(30))
    }

    /// `xlb status` text; panics with the output if it fails.
    pub fn status(&self) -> String {
        let out = self.ctl(&["status"]).expect("running xlb status");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "xlb status failed: {}", String::from_utf8_lossy(&out.stderr));
        text
    }

    /// The daemon's status as JSON: the document `xlb status --json` prints
    /// (and `/status.json` serves). Panics with what went wrong.
    #[track_caller]
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]).expect("running xlb status --json");
        assert!(out.status.success(), "xlb status --json failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("xlb status --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Waits (up to `timeout`) until every backend with health checks has been
    /// checked once (none is "not checked yet").
    pub fn wait_checked(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if !status.contains("not checked yet") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("backends not checked within {timeout:?}:\n{status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to `timeout`) until `pred` holds for the log text.
    pub fn wait_log(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.log_text()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {what} in the xlb log within {timeout:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many times `text` occurs in the log so far.
    pub fn log_count(&self, text: &str) -> usize {
        self.log_text().matches(text).count()
    }

    /// Waits (up to `timeout`) until `text` occurs at least `times` times in
    /// the log: `d.wait_log_count(t, line, d.log_count(line) + 1)` waits for
    /// the next one.
    pub fn wait_log_count(&self, timeout: Duration, text: &str, times: usize) -> Result<()> {
        let what = if times == 1 { format!("{text:?}") } else { format!("{text:?} ({times} times)") };
        self.wait_log(timeout, &what, |log| log.matches(text).count() >= times)
    }

    /// [`Daemon::wait_log_count`] for tests: up to 10 s for `text` to occur
    /// `times` times; panics with the log when it does not.
    #[track_caller]
    pub fn expect_log(&self, text: &str, times: usize) {
        if let Err(e) = self.wait_log_count(Duration::from_secs(10), text, times) {
            panic!("{e:#}");
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// For each interface: whether an XDP program is attached to it now.
    pub fn xdp_attached(&self) -> Vec<bool> {
        self.interfaces
            .iter()
            .map(|i| {
                let out = Command::new("ip").args(["-n", &self.ns, "link", "show", i]).output();
                out.map(|o| String::from_utf8_lossy(&o.stdout).contains(" xdp")).unwrap_or(false)
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        self.proc.as_ref().context("daemon already stopped")?.signal(sig)
    }

    /// SIGTERM, then waits (10 s at most); returns the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `sig` (SIGTERM, SIGINT) once and waits up to 10 s for the daemon
    /// to exit; its exit status.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Result<std::process::ExitStatus> {
        let mut p = self.proc.take().context("daemon already stopped")?;
        p.signal(sig)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = p.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("xlb did not exit within 10 s of signal {sig}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.proc.is_some() {
            let _ = self.stop();
        }
        // Whatever the test left: no XDP, no pins.
        let _ = self.xlb_stop();
        if self.pin_path.exists() {
            let _ = fs::remove_dir_all(&self.pin_path);
        }
    }
}

/// `toml` with `daemon.KEY` set to the path `value` (replaced or added).
pub fn with_daemon_key(toml: &str, key: &str, value: &Path) -> String {
    let line = format!("{key} = \"{}\"", value.display());
    let is_key = |l: &str| {
        l.trim_start().starts_with(key) && l[l.find(key).unwrap() + key.len()..].trim_start().starts_with('=')
    };
    let mut out: Vec<String> = toml.lines().map(|l| if is_key(l) { line.clone() } else { l.to_string() }).collect();
    if !toml.lines().any(is_key) {
        let at = out.iter().position(|l| l.trim() == "[daemon]").map_or(0, |i| i + 1);
        if at == 0 {
            out.insert(0, "[daemon]".into());
            out.insert(1, line);
        } else {
            out.insert(at, line);
        }
    }
    out.join("\n") + "\n"
}

/// Backend `address` of service `service` in a status JSON document
/// ([`Daemon::status_json`]); panics with the document if there is none.
#[track_caller]
pub fn json_backend<'a>(status: &'a serde_json::Value, service: &str, address: &str) -> &'a serde_json::Value {
    json_service(status, service)["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == address))
        .unwrap_or_else(|| panic!("no backend {address} in service {service} of the status:\n{status:#}"))
}

/// Service `name` in a status JSON document; panics with the document if there is none.
#[track_caller]
pub fn json_service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in the status:\n{status:#}"))
}

/// The drop total under `reason` in a status JSON document; panics if absent.
#[track_caller]
pub fn json_drops(status: &serde_json::Value, reason: &str) -> u64 {
    status["drops"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["reason"] == reason))
        .and_then(|d| d["total"].as_u64())
        .unwrap_or_else(|| panic!("no drop total for reason {reason} in the status:\n{status:#}"))
}

/// `toml` with `daemon.admin_socket` set to `socket` (replaced or added).
pub fn with_admin_socket(toml: &str, socket: &Path) -> String {
    let line = format!("admin_socket = \"{}\"", socket.display());
    let mut out: Vec<String> = toml
        .lines()
        .map(|l| if l.trim_start().starts_with("admin_socket") { line.clone() } else { l.to_string() })
        .collect();
    if !toml.lines().any(|l| l.trim_start().starts_with("admin_socket")) {
        let at = out.iter().position(|l| l.trim() == "[daemon]").map_or(0, |i| i + 1);
        if at == 0 {
            out.insert(0, "[daemon]".into());
            out.insert(1, line);
        } else {
            out.insert(at, line);
        }
    }
    out.join("\n") + "\n"
}

/// Runs `xlb ARGS...` in `ns` (or in the current namespace when `None`).
pub fn xlb(ns: Option<&Netns>, args: &[&str]) -> Result<Output> {
    let bin = xlb_bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut argv = vec![bin.to_str().unwrap()];
            argv.extend_from_slice(args);
            ns.command(&argv)
        }
        None => {
            let mut c = Command::new(&bin);
            c.args(args);
            c
        }
    };
    crate::netns::run_with_timeout(&mut cmd, None, Duration::from_secs(30))
}

/// A capability set of process `pid` (`set`: "CapEff", "CapPrm", "CapBnd",
/// ...) as its 64-bit mask, from `/proc/PID/status`.
pub fn capabilities(pid: u32, set: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {set} in /proc/{pid}/status"));
    u64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("{set} {hex:?}: {e}"))
}
