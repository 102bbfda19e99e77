//! Announcing the VIPs by BGP through the local BIRD (`[daemon.announce]`).
//!
//! xlb speaks no BGP. The operator's BIRD holds one static protocol per VIP
//! (a /32 or /128 route, `disabled yes` in its file) and exports it to the
//! router by BGP; xlb enables the protocol while the VIP should attract
//! traffic and disables it otherwise, through BIRD's control socket — the
//! protocol `birdc` speaks: a `0001 ... ready.` greeting, then one command
//! line per request, answered by lines `CODE-text` (more follow), ` text`
//! (continued) and `CODE text` (the last); codes 8000 and up are errors.
//!
//! A VIP address is announced while some service on it has a backend taking
//! new flows that has passed a health check, and the program is attached (the daemon runs this task only
//! after attaching); withdrawn when no service on it has one, when its last
//! service is removed by a reload, and when the daemon stops. A daemon that
//! dies cannot withdraw: the unit's `ExecStopPost=xlb withdraw` does, and
//! BFD on the BGP session drops a host that is gone altogether.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::ctx::lock;
use crate::{
    balancer::{Balancer, VipAnnouncement},
    config::{AnnounceConfig, Config},
};

/// How often the wanted state is compared with what BIRD was told.
pub const POLL: Duration = Duration::from_millis(100);
/// Every VIP's state is told again this often (BIRD may have restarted and
/// read its file, where every VIP protocol is disabled).
pub const REASSERT: Duration = Duration::from_secs(2);
/// Bound on connecting to, writing to and reading from BIRD's socket.
pub const BIRD_TIMEOUT: Duration = Duration::from_secs(1);

/// Talking to BIRD failed.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot reach BIRD at {path}: {source} (is bird running, and is this its control socket?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to BIRD at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("BIRD at {path} closed the connection before answering")]
    Closed { path: PathBuf },
    #[error("BIRD has no protocol {name}: add `protocol static {name} {{ disabled yes; ... }}` to its configuration")]
    NoProtocol { name: String },
    #[error("BIRD refused `{command}`: {code} {message}")]
    Refused { command: String, code: u16, message: String },
}

/// The BIRD protocol name for `vip` under `pattern`: `{vip}` replaced by the
/// address with every character but letters and digits written as `_`
/// (198.18.0.10 → `xlb_198_18_0_10`, 2001:db8::10 → `xlb_2001_db8__10`).
pub fn protocol_name(pattern: &str, vip: IpAddr) -> String {
    let addr: String = vip.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    pattern.replace("{vip}", &addr)
}

/// One reply of BIRD: the code and the text of its last line.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    code: u16,
    text: String,
}

/// A connection to BIRD's control socket, greeted.
pub struct Bird {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Bird {
    /// Connects and reads the greeting; every step is bounded by [`BIRD_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Self, BirdError> {
        let connect_err = |source| BirdError::Connect { path: path.to_owned(), source };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream.set_read_timeout(Some(BIRD_TIMEOUT)).map_err(connect_err)?;
        stream.set_write_timeout(Some(BIRD_TIMEOUT)).map_err(connect_err)?;
        let mut bird = Bird { path: path.to_owned(), reader: BufReader::new(stream) };
        let hello = bird.reply()?;
        if hello.code != 1 {
            return Err(BirdError::Refused { command: "(connect)".into(), code: hello.code, message: hello.text });
        }
        Ok(bird)
    }

    fn io(&self, source: std::io::Error) -> BirdError {
        BirdError::Io { path: self.path.clone(), source }
    }

    /// Reads lines up to the last of one reply.
    fn reply(&mut self) -> Result<Reply, BirdError> {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(BirdError::Closed { path: self.path.clone() });
            }
            if let Some(reply) = last_line(line.trim_end_matches('\n')) {
                return Ok(reply);
            }
        }
    }

    /// Sends `command` and returns the last line of the reply, an error for
    /// codes 8000 and up.
    fn command(&mut self, command: &str) -> Result<Reply, BirdError> {
        self.reader.get_mut().write_all(format!("{command}\n").as_bytes()).map_err(|e| self.io(e))?;
        let reply = self.reply()?;
        if reply.code >= 8000 {
            return Err(BirdError::Refused { command: command.to_owned(), code: reply.code, message: reply.text });
        }
        Ok(reply)
    }

    /// Enables (`announce`) or disables protocol `name`. The name is quoted, so
    /// an unknown one reads as "no such protocol" rather than a syntax error.
    pub fn set(&mut self, name: &str, announce: bool) -> Result<(), BirdError> {
        let verb = if announce { "enable" } else { "disable" };
        match self.command(&format!("{verb} \"{name}\"")) {
            // 8003: "No protocols match".
            Err(BirdError::Refused { code: 8003, .. }) => Err(BirdError::NoProtocol { name: name.to_owned() }),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }
}

/// The code and text of `line` if it ends a reply (`CODE text`), `None` for
/// a line that more follow (`CODE-text`, ` text`).
fn last_line(line: &str) -> Option<Reply> {
    let (code, rest) = (line.get(..4)?, line.get(4..)?);
    let code = code.parse::<u16>().ok()?;
    rest.strip_prefix(' ').map(|text| Reply { code, text: text.to_owned() })
}

/// Tells BIRD at `socket` each `(protocol, announce)`, over one connection;
/// the result of each.
pub fn tell(socket: &Path, what: &[(String, bool)]) -> Vec<Result<(), String>> {
    match Bird::connect(socket) {
        Ok(mut bird) => what.iter().map(|(name, on)| bird.set(name, *on).map_err(|e| e.to_string())).collect(),
        Err(e) => {
            let e = e.to_string();
            what.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// `xlb withdraw`: disables every VIP protocol of `cfg` in BIRD (for the
/// unit's `ExecStopPost`, when the daemon could not). What was done.
pub fn withdraw_all(cfg: &Config) -> anyhow::Result<String> {
    let Some(a) = &cfg.daemon.announce else {
        return Ok("no [daemon.announce] in the config: nothing is announced\n".into());
    };
    let vips: std::collections::BTreeSet<IpAddr> = cfg.services.iter().map(|s| s.vip.ip()).collect();
    let what: Vec<(String, bool)> = vips.iter().map(|v| (protocol_name(&a.protocol, *v), false)).collect();
    let mut out = String::new();
    let mut failed = Vec::new();
    for ((vip, (name, _)), r) in vips.iter().zip(&what).zip(tell(&a.socket, &what)) {
        match r {
            Ok(()) => out += &format!("withdrawn {vip} (BIRD protocol {name} disabled)\n"),
            Err(e) => failed.push(format!("{vip}: {e}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{out}could not withdraw:\n  {}", failed.join("\n  "));
    }
    Ok(out)
}

/// The daemon's announcer: keeps BIRD's VIP protocols in step with
/// [`Balancer::vips_to_announce`] every [`POLL`] (and tells every state again each
/// [`REASSERT`]); withdraws every VIP when `cancel` fires.
pub async fn run(cfg: AnnounceConfig, bal: Arc<Mutex<Balancer>>, cancel: CancellationToken) {
    // What BIRD confirmed for each VIP.
    let mut told: BTreeMap<IpAddr, bool> = BTreeMap::new();
    let mut errors: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut last_full: Option<Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let want = lock(&bal).vips_to_announce();
        let full = last_full.is_none_or(|t| t.elapsed() >= REASSERT);
        // VIPs a reload removed are withdrawn, then forgotten.
        let gone: Vec<IpAddr> = told.keys().filter(|v| !want.contains_key(v)).copied().collect();
        let mut todo: Vec<(IpAddr, bool)> =
            want.iter().filter(|(v, w)| full || told.get(v) != Some(w)).map(|(v, w)| (*v, *w)).collect();
        todo.extend(gone.iter().filter(|v| told[v]).map(|v| (*v, false)));
        if full {
            last_full = Some(Instant::now());
        }
        if !todo.is_empty() {
            let results = tell_async(&cfg, &todo).await;
            for ((vip, on), r) in todo.iter().zip(results) {
                let name = protocol_name(&cfg.protocol, *vip);
                match r {
                    Ok(()) => {
                        if told.get(vip) != Some(on) {
                            if *on {
                                log::info!("announcing VIP {vip} (BIRD protocol {name} enabled)");
                            } else if told.contains_key(vip) {
                                log::warn!("withdrew VIP {vip} (BIRD protocol {name} disabled)");
                            }
                        }
                        if errors.remove(vip).is_some() {
                            log::info!("BIRD answers again for VIP {vip}");
                        }
                        told.insert(*vip, *on);
                    }
                    Err(e) => {
                        if errors.get(vip) != Some(&e) {
                            log::error!("could not {} VIP {vip}: {e}", if *on { "announce" } else { "withdraw" });
                        }
                        errors.insert(*vip, e);
                        // Unknown: told again at the next poll.
                        told.remove(vip);
                    }
                }
            }
        }
        for v in &gone {
            if told.get(v) == Some(&false) || !errors.contains_key(v) {
                told.remove(v);
                errors.remove(v);
            }
        }
        let list = want
            .iter()
            .map(|(vip, w)| VipAnnouncement {
                vip: *vip,
                protocol: protocol_name(&cfg.protocol, *vip),
                wanted: *w,
                announced: told.get(vip) == Some(&true),
                error: errors.get(vip).cloned(),
            })
            .collect();
        lock(&bal).announcements = list;
    }
    // Stopping: nothing keeps the tables in step with the backends any more.
    let all: Vec<(IpAddr, bool)> =
        lock(&bal).vips_to_announce().keys().chain(told.keys()).map(|v| (*v, false)).collect();
    let mut all = all;
    all.dedup();
    if all.is_empty() {
        return;
    }
    for ((vip, _), r) in all.iter().zip(tell_async(&cfg, &all).await) {
        match r {
            Ok(()) => log::info!("withdrew VIP {vip}: the daemon stops"),
            Err(e) => log::error!("could not withdraw VIP {vip} at exit: {e}"),
        }
    }
    let mut b = lock(&bal);
    for a in &mut b.announcements {
        a.announced = false;
        a.wanted = false;
    }
}

/// [`tell`] on a blocking thread.
async fn tell_async(cfg: &AnnounceConfig, todo: &[(IpAddr, bool)]) -> Vec<Result<(), String>> {
    let socket = cfg.socket.clone();
    let what: Vec<(String, bool)> = todo.iter().map(|(v, on)| (protocol_name(&cfg.protocol, *v), *on)).collect();
    let n = what.len();
    tokio::task::spawn_blocking(move || tell(&socket, &what))
        .await
        .unwrap_or_else(|e| vec![Err(format!("the BIRD client task failed: {e}")); n])
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name("xlb_{vip}", "198.18.0.10".parse().unwrap()), "xlb_198_18_0_10");
        assert_eq!(protocol_name("v{vip}_bgp", "2001:db8::10".parse().unwrap()), "v2001_db8__10_bgp");
    }

    #[test]
    fn reply_lines() {
        assert_eq!(last_line("0011-xlb: enabled"), None);
        assert_eq!(last_line(" more"), None);
        assert_eq!(last_line("0000 "), Some(Reply { code: 0, text: String::new() }));
        assert_eq!(last_line("9001 syntax error"), Some(Reply { code: 9001, text: "syntax error".into() }));
        assert_eq!(last_line("0001 BIRD 2.0.12 ready."), Some(Reply { code: 1, text: "BIRD 2.0.12 ready.".into() }));
    }

    /// A fake BIRD: greets, then answers each command from `answers` in
    /// turn (as BIRD 2.0.12 answers them), recording the commands.
    fn fake_bird(answers: Vec<&'static str>) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let dir = std::env::temp_dir().join(format!("xlb-fake-bird-{}-{}", std::process::id(), answers.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
            let mut r = BufReader::new(s);
            let mut got = Vec::new();
            for a in answers {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(line.trim_end().to_owned());
                w.write_all(a.as_bytes()).unwrap();
            }
            let _ = std::fs::remove_dir_all(dir);
            got
        });
        (path, t)
    }

    #[test]
    fn tells_bird_and_reads_its_answers() {
        let (path, bird) = fake_bird(vec![
            "0011-xlb_198_18_0_10: enabled\n0000 \n",
            "0010-xlb_198_18_0_10: already enabled\n0000 \n",
            "8003 No protocols match\n",
            "0009-xlb_2001_db8__10: disabled\n0000 \n",
        ]);
        let what = [
            ("xlb_198_18_0_10".to_owned(), true),
            ("xlb_198_18_0_10".to_owned(), true),
            ("nope".to_owned(), true),
            ("xlb_2001_db8__10".to_owned(), false),
        ];
        let results = tell(&path, &what);
        assert_eq!(
            bird.join().unwrap(),
            [
                "enable \"xlb_198_18_0_10\"",
                "enable \"xlb_198_18_0_10\"",
                "enable \"nope\"",
                "disable \"xlb_2001_db8__10\""
            ]
        );
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok(), "{results:?}");
        let e = results[2].as_ref().expect_err("an unknown protocol is an error");
        assert!(e.contains("BIRD has no protocol nope: add `protocol static nope"), "{e}");
    }

    #[test]
    fn unreachable_bird_fails_every_request_with_the_path() {
        let results = tell(Path::new("/nonexistent/bird.ctl"), &[("a".into(), true), ("b".into(), false)]);
        assert_eq!(results.len(), 2);
        for r in results {
            let e = r.expect_err("nobody listens");
            assert!(e.contains("cannot reach BIRD at /nonexistent/bird.ctl"), "{e}");
        }
    }
}
