//! Network namespaces as RAII guards, and background processes that die with
//! their guard.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this crate creates; leftovers are recognisable by it.
pub const NS_PREFIX: &str = "xlb";

/// Default bound for commands run through [`Netns::exec`] and friends.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh per-run suffix, `"<pid>-<counter>"`, unique within this host for as
/// long as this process lives.
pub fn run_suffix() -> String {
    format!("{}-{}", std::process::id(), RUN_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether the current process runs as root (needed for namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Names of the existing network namespaces (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run_checked(Command::new("ip").args(["netns", "list"]), DEFAULT_COMMAND_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Removes namespaces left behind by earlier runs that were killed before their
/// guards could clean up (e.g. SIGKILL). Only names created by this crate
/// (`xlb-<pid>-<n>-<role>`) whose `<pid>` no longer runs are removed. Returns the
/// removed names.
pub fn cleanup_stale_namespaces() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list_namespaces()? {
        let mut parts = name.splitn(4, '-');
        let (Some(NS_PREFIX), Some(pid), Some(n), Some(_role)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_ns_pids(&name);
        if Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Renders a command line for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Runs `cmd` to completion, feeding it `stdin`, killing it after `timeout`.
/// Does not look at the exit status.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            // A child that exits early closes the pipe; that is not our error.
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for `{what}`"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?} and was killed");
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// Like [`run_with_timeout`] without stdin, but fails unless the command exits 0;
/// the error names the command and shows its stderr (and stdout).
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let out = run_with_timeout(cmd, None, timeout)?;
    check_output(&what, &out)?;
    Ok(out)
}

fn check_output(what: &str, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut msg = format!("`{what}` failed ({})", describe_status(out.status));
    if !stderr.trim().is_empty() {
        msg.push_str(&format!("\nstderr: {}", stderr.trim_end()));
    }
    if !stdout.trim().is_empty() {
        msg.push_str(&format!("\nstdout: {}", stdout.trim_end()));
    }
    bail!(msg)
}

/// SIGKILLs every process inside namespace `name` (best effort).
fn kill_ns_pids(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            if pid > 1 && pid != std::process::id() as libc::pid_t {
                // SAFETY: kill(2) with a concrete pid and signal has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A `Command` that runs `argv` inside namespace `ns` (`ip netns exec`).
pub fn ns_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(argv);
    cmd
}

/// Runs `f` on a fresh thread that has entered the network namespace `name`
/// (`/run/netns/NAME`, via `setns`) and returns its result. A panic in `f` is
/// propagated. See [`Netns::run_in`].
pub fn in_named_ns<R: Send, F: FnOnce() -> R + Send>(name: &str, f: F) -> Result<R> {
    let path = format!("/run/netns/{name}");
    let cpath = CString::new(path.clone()).context("NUL in namespace name")?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<R> {
            // SAFETY: plain syscall on a valid C string; the fd is closed below.
            let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context(format!("open {path}"));
            }
            // SAFETY: fd is a namespace file descriptor; setns only affects this
            // short-lived scoped thread.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            let err = std::io::Error::last_os_error();
            // SAFETY: fd was returned by open above and is not used afterwards.
            unsafe { libc::close(fd) };
            if rc != 0 {
                return Err(err).context(format!("setns into {path}"));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A named network namespace, deleted on drop together with everything inside
/// it: processes are killed first; interfaces (veth ends) go with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`) and brings `lo` up. The name
    /// should start with [`NS_PREFIX`] and carry a per-run suffix ([`run_suffix`]).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        run_checked(Command::new("ip").args(["netns", "add", &name]), DEFAULT_COMMAND_TIMEOUT)
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on the guard owns the namespace: any error below deletes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as listed by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that will run `argv` inside this namespace; for callers that
    /// need their own stdio or environment.
    pub fn command(&self, argv: &[&str]) -> Command {
        ns_command(&self.name, argv)
    }

    /// Runs `argv` inside the namespace and returns its output whatever its exit
    /// status. Killed after [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.exec_timeout(argv, DEFAULT_COMMAND_TIMEOUT)
    }

    /// [`Netns::exec`] with an explicit time bound.
    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Result<Output> {
        run_with_timeout(&mut self.command(argv), None, timeout)
    }

    /// Runs `argv` inside the namespace with `stdin` as its input, bounded by
    /// `timeout`; returns its output whatever its exit status.
    pub fn exec_stdin(&self, argv: &[&str], stdin: &[u8], timeout: Duration) -> Result<Output> {
        run_with_timeout(&mut self.command(argv), Some(stdin), timeout)
    }

    /// Runs `argv` inside the namespace and fails unless it exits 0; the error
    /// names the namespace, the command and its stderr. Returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let out = run_checked(&mut self.command(argv), DEFAULT_COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Netns::run`] but panics with the error (command, stderr) on failure.
    /// Convenient in tests.
    #[track_caller]
    pub fn must(&self, argv: &[&str]) -> String {
        match self.run(argv) {
            Ok(s) => s,
            Err(e) => panic!("in namespace {}: {e:#}", self.name),
        }
    }

    /// Runs `ip -n NS ARGS...` and fails unless it exits 0.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args), DEFAULT_COMMAND_TIMEOUT)?;
        Ok(())
    }

    /// Sets sysctls inside the namespace in one `sysctl -w k=v ...` call.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let kv: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend(kv.iter().map(String::as_str));
        self.run(&argv)?;
        Ok(())
    }

    /// Reads one sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.run(&["sysctl", "-n", key])?.trim().to_owned())
    }

    /// Starts `argv` inside the namespace in the background (stdin from
    /// `/dev/null`, stdout/stderr inherited). The process is killed when the
    /// returned guard is dropped. `ip netns exec` execs the command, so the guard's
    /// pid is the command's pid.
    pub fn spawn(&self, argv: &[&str]) -> Result<BgProcess> {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null());
        BgProcess::spawn(cmd)
    }

    /// Runs `f` on a fresh thread that has entered this namespace (`setns`), and
    /// returns its result. Sockets created by `f` live in the namespace; handy to
    /// probe ports or drive traffic without starting processes.
    pub fn run_in<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> Result<R> {
        in_named_ns(&self.name, f)
    }

    /// The MAC address of interface `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let text = self.run(&["cat", &format!("/sys/class/net/{iface}/address")])?;
        crate::packet::parse_mac(&text).with_context(|| format!("{iface} in {}", self.name))
    }

    /// The interface index of `iface` in this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let text = self.run(&["cat", &format!("/sys/class/net/{iface}/ifindex")])?;
        text.trim().parse().with_context(|| format!("ifindex of {iface} in {}: {text:?}", self.name))
    }

    /// Sends `frames` (whole Ethernet frames, as built) out of `iface` in this
    /// namespace through an AF_PACKET socket, in order; fails unless every
    /// frame is sent whole.
    pub fn send_frames<F: AsRef<[u8]> + Sync>(&self, iface: &str, frames: &[F]) -> Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let c_iface = CString::new(iface).context("NUL in interface name")?;
        self.run_in(|| -> Result<()> {
            // SAFETY: plain syscall; the descriptor is owned (and closed) by `fd` below.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error()).context(format!("no interface {iface}"));
            }
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            for (i, f) in frames.iter().enumerate() {
                let f = f.as_ref();
                // SAFETY: pointer and length of a live slice; the address is a
                // sockaddr_ll of the size given.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if sent != f.len() as isize {
                    let e = std::io::Error::last_os_error();
                    bail!("sending frame {i} ({} bytes) out of {iface}: sent {sent}: {e}", f.len());
                }
            }
            Ok(())
        })?
        .with_context(|| format!("raw frames out of {iface} in {}", self.name))
    }

    /// Whether a TCP connection to `addr` succeeds from inside the namespace
    /// within `timeout`.
    pub fn tcp_connects(&self, addr: std::net::SocketAddr, timeout: Duration) -> bool {
        self.run_in(|| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()).unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_ns_pids(&self.name);
        let mut last_err = String::new();
        // `ip netns del` can race with processes that are still exiting; retry briefly.
        for _ in 0..20 {
            match Command::new("ip").args(["netns", "del", &self.name]).output() {
                Ok(o) if o.status.success() => return,
                Ok(o) => last_err = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => last_err = e.to_string(),
            }
            if !std::path::Path::new(&format!("/run/netns/{}", self.name)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("xlb-testbed: could not delete namespace {}: {last_err}", self.name);
    }
}

/// A background process that is terminated (SIGTERM, then SIGKILL after a grace
/// period) and reaped when dropped.
#[derive(Debug)]
pub struct BgProcess {
    child: Option<Child>,
    what: String,
}

impl BgProcess {
    /// Grace period between SIGTERM and SIGKILL in [`BgProcess::stop`] and drop.
    pub const GRACE: Duration = Duration::from_secs(3);

    /// Spawns `cmd` and guards it.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let what = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start `{what}`"))?;
        Ok(BgProcess { child: Some(child), what })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.what
    }

    /// `Some(status)` if the process has already exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("`{}` was already stopped", self.what),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid() as libc::pid_t;
        if pid <= 0 {
            bail!("`{}` is not running", self.what);
        }
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill -{signal} {pid} (`{}`)", self.what));
        }
        Ok(())
    }

    /// SIGTERM, wait up to [`BgProcess::GRACE`], then SIGKILL; reaps the process and
    /// returns its exit status (`None` if it was already stopped).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Self::GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
