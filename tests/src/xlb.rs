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

/// `xlb run` in a namespace; stopped with SIGTERM on drop.
pub struct Daemon {
    ns: String,
    proc: Option<BgProcess>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The admin socket (always in the daemon's own scratch directory, so
    /// concurrent runs never share one).
    pub socket: PathBuf,
    interfaces: Vec<String>,
    _dir: TempDir,
}

impl Daemon {
    /// Writes `config_toml` and starts `xlb run` in `ns`; returns once XDP is
    /// attached to every interface in `interfaces`.
    pub fn start(ns: &Netns, config_toml: &str, interfaces: &[&str]) -> Result<Self> {
        Daemon::start_with_env(ns, config_toml, interfaces, &[])
    }

    /// [`Daemon::start`] with extra environment variables for `xlb run` (test knobs
    /// such as `XLB_NO_ICMP`).
    pub fn start_with_env(ns: &Netns, config_toml: &str, interfaces: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let config = dir.path().join("xlb.toml");
        let log = dir.path().join("xlb.log");
        let socket = dir.path().join("xlb.sock");
        fs::write(&config, with_admin_socket(config_toml, &socket))?;
        let logf = fs::File::create(&log)?;
        let mut cmd = ns.command(&[xlb_bin().to_str().unwrap(), "run", "-c", config.to_str().unwrap()]);
        cmd.env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let proc = BgProcess::spawn(cmd)?;
        let mut d = Daemon {
            ns: ns.name().to_string(),
            proc: Some(proc),
            config,
            log,
            socket,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = d.proc.as_mut().unwrap().try_wait()? {
                bail!("xlb run exited early ({st}); log:\n{}", d.log_text());
            }
            if d.log_text().contains("xlb running") && d.xdp_attached().iter().all(|&a| a) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("xlb run did not come up within 20 s; log:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the daemon's config file (keeping its own admin socket).
    pub fn write_config(&self, toml: &str) -> Result<()> {
        fs::write(&self.config, with_admin_socket(toml, &self.socket))
            .with_context(|| format!("writing {}", self.config.display()))
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
    }
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
