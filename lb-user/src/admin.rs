//! The admin socket: a root-only (0600) Unix socket speaking one line in,
//! one text answer out. `xlb status` is its client.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{balancer::Balancer, daemon::Ctx};

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
pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, ctx).await {
                log::debug!("admin request failed: {e:#}");
            }
        });
    }
}

/// The requests, as `xlb` sends them: `status`, `reload`,
/// `drain SERVICE BACKEND`, `enable SERVICE BACKEND`, and `trace` (which
/// streams events until its limits are reached).
pub const REQUESTS: &str = "status, reload, drain SERVICE BACKEND, enable SERVICE BACKEND, trace SAMPLE COUNT SECONDS";

async fn handle(stream: UnixStream, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(4096).read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let answer = match words[..] {
        ["status"] => status(&ctx.bal.lock().unwrap()),
        ["reload"] => ctx.reload(),
        ["drain", service, backend] => {
            tokio::task::block_in_place(|| ctx.bal.lock().unwrap().set_drained(service, backend, true))
        }
        ["enable", service, backend] => {
            tokio::task::block_in_place(|| ctx.bal.lock().unwrap().set_drained(service, backend, false))
        }
        ["trace", ..] => {
            let args = line.trim_start()["trace".len()..].to_string();
            return crate::trace::serve(&args, &ctx.bal, &mut w).await;
        }
        _ => Err(anyhow::anyhow!("unknown request {:?}; known: {REQUESTS}", line.trim())),
    };
    let text = match answer {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error\n{e:#}\n"),
    };
    w.write_all(text.as_bytes()).await?;
    w.shutdown().await?;
    Ok(())
}

/// The status table: the balancer's state and counters, with the sampler's
/// current rates (see `status::text`).
pub fn status(bal: &Balancer) -> anyhow::Result<String> {
    let snap = crate::metrics::Snapshot::collect(bal)?;
    let history = crate::rates::history();
    let rates = history.rates();
    let view = crate::status::View { snap: &snap, rates: rates.as_ref(), conntrack: history.conntrack.as_ref() };
    Ok(crate::status::text(&view))
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
