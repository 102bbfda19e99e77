//! The client side: commands that read a config file (`check`, `explain`)
//! or ask the running daemon over its admin socket (`status`, `top`,
//! `trace`, `drain`, `enable`, `reload`), and the completion scripts and
//! man pages generated from the command line's definition.
//!
//! The admin protocol: one request line in; `ok` or `error` on the first
//! line of the answer, then the text (see `daemon::admin`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub mod check;
pub mod decap;
pub mod docs;
pub mod explain;
pub mod status;
pub mod stop;
pub mod top;
pub mod trace;

/// Sends one request to the daemon at `socket`; its answer, or its error.
pub fn request(socket: &Path, req: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = connect(socket)?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    match answer.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => anyhow::bail!("{}", rest.trim_end()),
        _ => anyhow::bail!("unexpected answer from {}: {answer:?}", socket.display()),
    }
}

/// Connects to the admin socket; the error says what to check.
pub fn connect(socket: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the admin socket is root-only (mode 0600); run this command as root",
            socket.display()
        ),
        _ => {
            anyhow::Error::new(e).context(format!("connecting to {} (is xlb running? are you root?)", socket.display()))
        }
    })
}

/// The socket to use: `--socket`, else the `admin_socket` of `--config`, else
/// that of `/etc/xlb/xlb.toml` when it exists, else the default socket.
pub fn socket_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    socket_path_with(socket, config, Path::new(crate::config::DEFAULT_CONFIG))
}

/// [`socket_path`] with `default_config` in place of `/etc/xlb/xlb.toml`.
pub fn socket_path_with(
    socket: Option<PathBuf>,
    config: Option<&Path>,
    default_config: &Path,
) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    if let Some(c) = config {
        return Ok(crate::config::load(c)?.daemon.admin_socket);
    }
    if default_config.exists() {
        let cfg = crate::config::load(default_config).with_context(|| {
            format!("reading {} to find the admin socket (or pass --socket)", default_config.display())
        })?;
        return Ok(cfg.daemon.admin_socket);
    }
    Ok(PathBuf::from(crate::config::DEFAULT_ADMIN_SOCKET))
}
