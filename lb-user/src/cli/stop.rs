//! `xlb stop`: the data path off and the host as it was before xlb ran. A
//! running daemon is asked to exit (it detaches and removes its pins
//! itself); then whatever is still pinned is detached and removed here, so
//! `xlb stop` also works when no daemon runs.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    config::{self, DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_PATH},
    dataplane::pins,
};

/// How long a running daemon has to exit after being asked.
const EXIT_WAIT: Duration = Duration::from_secs(15);

pub fn run(socket: Option<PathBuf>, config: Option<&Path>, pin_path: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = config.map(config::load).transpose()?;
    let socket = socket
        .or_else(|| cfg.as_ref().map(|c| c.daemon.admin_socket.clone()))
        .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into());
    let dir =
        pin_path.or_else(|| cfg.as_ref().map(|c| c.daemon.pin_path.clone())).unwrap_or_else(|| DEFAULT_PIN_PATH.into());

    let mut asked = false;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        print!("{}", super::request(&socket, "stop")?);
        wait_gone("the daemon to exit", || std::os::unix::net::UnixStream::connect(&socket).is_err())?;
        asked = true;
    }
    // A daemon on these pins that the socket did not reach: SIGTERM, then wait.
    if let Some(pid) = pins::owner(&dir) {
        println!("stopping xlb (pid {pid}), which runs on the pins in {}", dir.display());
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        wait_gone("xlb to exit", || pins::owner(&dir).is_none())?;
    }
    if !dir.exists() {
        match asked {
            true => println!("the daemon detached XDP and removed the pins in {}", dir.display()),
            false => println!("nothing pinned in {}: XDP is not attached by xlb", dir.display()),
        }
        return Ok(());
    }
    let detached = pins::remove(&dir)?;
    if detached.is_empty() {
        println!("removed the pins in {} (no XDP link was pinned)", dir.display());
    } else {
        println!("detached XDP from {} and removed the pins in {}", detached.join(", "), dir.display());
    }
    Ok(())
}

fn wait_gone(what: &str, gone: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + EXIT_WAIT;
    while !gone() {
        if Instant::now() > deadline {
            anyhow::bail!("gave up waiting {EXIT_WAIT:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
