//! The admin socket: a root-only (0600) Unix socket speaking one line in,
//! one text answer out (`cli` is its client). At most [`MAX_CONNECTIONS`]
//! are served at once; they end when the daemon stops.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    task::JoinSet,
};

use super::ctx::{lock, Ctx};
use crate::monitor;

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Pause after a failed accept (out of descriptors, ...), so the loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bound socket; its file is removed when this is dropped.
pub struct AdminSocket {
    /// Non-blocking; served by the tokio runtime, which starts after attaching.
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket (replacing a stale one) with mode 0600. The socket is
/// made under umask 0177, so it is never open to others, not even between
/// its creation and the `chmod`. The umask is the process's: call this
/// before other threads exist (`xlb run` does, before its runtime starts).
pub fn bind(path: &Path) -> anyhow::Result<AdminSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: is another xlb running?", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // SAFETY: umask only sets the process's file mode mask.
    let umask = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, putting the previous mask back.
    unsafe { libc::umask(umask) };
    let listener = bound.with_context(|| format!("binding admin socket {}", path.display()))?;
    let socket = AdminSocket { listener, path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listener.set_nonblocking(true).context("making the admin socket non-blocking")?;
    Ok(socket)
}

/// Serves requests until `ctx.cancel` is cancelled, then ends the
/// connections in progress (a running trace turns tracing off as it ends)
/// and removes the socket.
pub async fn serve(socket: AdminSocket, ctx: Arc<Ctx>) {
    let listener = match socket.listener.try_clone().and_then(UnixListener::from_std) {
        Ok(l) => l,
        Err(e) => {
            log::error!("admin socket {} not served: {e}", socket.path.display());
            return;
        }
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle(stream, ctx).await {
                            log::warn!("admin request failed: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    log::warn!("admin socket: accept failed: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    drop(socket);
}

/// The requests, as `xlb` sends them: `status`, `status json`, `reload`,
/// `drain SERVICE BACKEND`, `enable SERVICE BACKEND`, and `trace` (which
/// streams events until its limits are reached), `stop` (detach, remove the
/// pins, exit).
pub const REQUESTS: &str =
    "status, status json, reload, drain SERVICE BACKEND, enable SERVICE BACKEND, trace SAMPLE COUNT SECONDS, stop";

async fn handle(stream: UnixStream, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(4096).read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let answer = match words[..] {
        ["status"] => monitor::status_text(&ctx.bal, &ctx.history),
        ["status", "json"] => monitor::status_json(&ctx.bal, &ctx.history).map(|j| j + "\n"),
        ["reload"] => ctx.reload(),
        ["drain", service, backend] => {
            let r = tokio::task::block_in_place(|| lock(&ctx.bal).set_drained(service, backend, true));
            ctx.save_state();
            r
        }
        ["enable", service, backend] => {
            let r = tokio::task::block_in_place(|| lock(&ctx.bal).set_drained(service, backend, false));
            ctx.save_state();
            r
        }
        ["stop"] => {
            ctx.stop.cancel();
            Ok("stopping: the daemon detaches XDP, removes its pins and exits\n".to_string())
        }
        ["trace", ..] => {
            let args = line.trim_start()["trace".len()..].to_string();
            return monitor::trace::serve(&args, &ctx.bal, &mut w).await;
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
