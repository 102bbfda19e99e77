//! The admin socket: a root-only (0600) Unix socket speaking one line in,
//! one text answer out. `xlb status` is its client.

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Context as _;
use lb_common::counter;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{balancer::Balancer, config::Role};

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: is another xlb running?", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, bal: Arc<Mutex<Balancer>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let bal = bal.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, bal).await {
                log::debug!("admin request failed: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, bal: Arc<Mutex<Balancer>>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(4096).read_line(&mut line).await?;
    let answer = match line.trim() {
        "status" => status(&bal.lock().unwrap()),
        l if l.split_whitespace().next() == Some("trace") => {
            return crate::trace::serve(&l["trace".len()..], &bal, &mut w).await;
        }
        other => Err(anyhow::anyhow!("unknown request {other:?}; known: status, trace")),
    };
    let text = match answer {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error\n{e:#}\n"),
    };
    w.write_all(text.as_bytes()).await?;
    w.shutdown().await?;
    Ok(())
}

fn ago(t: SystemTime) -> String {
    let s = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The status table.
pub fn status(bal: &Balancer) -> anyhow::Result<String> {
    let mut o = String::new();
    let attached: Vec<String> = bal.dp.attached().iter().map(|(i, m)| format!("{i} ({m})")).collect();
    writeln!(o, "attached: {}", attached.join(", "))?;
    writeln!(o, "conntrack entries: {}", bal.dp.conntrack_len()?)?;
    writeln!(
        o,
        "\n{:<10} {:<26} {:<8} {:<8} {:>6} {:>6}  {:<16} {:>10} {:>12} {:>14}",
        "SERVICE", "BACKEND", "ROLE", "STATE", "WEIGHT", "SINCE", "LAST CHECK", "NEW FLOWS", "PACKETS", "BYTES"
    )?;
    for s in &bal.services {
        for b in &s.backends {
            let st = bal.dp.backend_stats(b.slot)?;
            let state = match (b.healthy, b.drained) {
                (false, _) => "down",
                (true, true) => "drained",
                (true, false) => "up",
            };
            let role = match b.cfg.role {
                Role::Primary => "primary",
                Role::Backup => "backup",
            };
            writeln!(
                o,
                "{:<10} {:<26} {:<8} {:<8} {:>6} {:>6}  {:<16} {:>10} {:>12} {:>14}",
                s.cfg.name,
                b.cfg.address.to_string(),
                role,
                state,
                b.cfg.weight,
                ago(b.since),
                b.last_check,
                st.new_flows,
                st.packets,
                st.bytes
            )?;
        }
    }
    writeln!(o, "\n{:<10} {:<26} {:>10} {:>12} {:>10}", "SERVICE", "VIP", "NEW FLOWS", "ESTABLISHED", "REPICKED")?;
    for s in &bal.services {
        let st = bal.dp.service_stats(s.id)?;
        let vip = format!("{} {}", s.cfg.protocol.as_str(), s.cfg.vip);
        writeln!(o, "{:<10} {:<26} {:>10} {:>12} {:>10}", s.cfg.name, vip, st.new_flows, st.established, st.repicked)?;
    }
    let c = bal.dp.counters()?;
    writeln!(o, "\ndropped:")?;
    for (i, name) in counter::DROP_NAMES.iter().enumerate() {
        writeln!(o, "  {name:<16} {}", c[i])?;
    }
    writeln!(o, "to the kernel: no route/neighbour {}, ttl {}", c[counter::PASS_NO_ROUTE as usize], c[counter::PASS_TTL as usize])?;
    writeln!(o, "nat replies rewritten: {}", c[counter::REPLY_NAT as usize])?;
    Ok(o)
}

/// `xlb status`: asks the daemon at `socket`.
pub fn request(socket: &Path, req: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {} (is xlb running? are you root?)", socket.display()))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    match answer.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => anyhow::bail!("{}", rest.trim_end()),
        _ => anyhow::bail!("unexpected answer from {}: {answer:?}", socket.display()),
    }
}

/// The socket to use: `--socket`, else the config's `admin_socket`, else the default.
pub fn socket_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    if let Some(c) = config {
        return Ok(crate::config::load(c)?.daemon.admin_socket);
    }
    Ok(PathBuf::from("/run/xlb/xlb.sock"))
}
