//! Telling systemd how the daemon is doing (sd_notify(3)): `READY=1` once
//! XDP is attached with complete tables, `RELOADING=1` ... `READY=1` around a
//! reload, `STOPPING=1` at shutdown, each with a `STATUS=` line that
//! `systemctl status` shows. Does nothing when `NOTIFY_SOCKET` is unset
//! (not started by systemd, or not `Type=notify`).
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the unix socket
//! `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace).

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
};

/// The service is up: the program is attached and the tables are written.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}", one_line(status)));
}

/// A reload starts; [`reloaded`] ends it.
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", monotonic_usec()));
}

/// A reload ended (applied or refused: either way the daemon serves).
pub fn reloaded(status: &str) {
    send(&format!("READY=1\nSTATUS={}", one_line(status)));
}

/// The daemon is stopping.
pub fn stopping(why: &str) {
    send(&format!("STOPPING=1\nSTATUS=stopping ({})", one_line(why)));
}

/// Sends `state` to `NOTIFY_SOCKET` when it is set; a failure is logged, never fatal.
fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = socket.to_string_lossy();
    if let Err(e) = send_to(&socket, state) {
        log::warn!("telling systemd {:?} through NOTIFY_SOCKET={socket}: {e}", state.lines().next().unwrap_or(""));
    }
}

/// Sends one datagram to the notify socket `socket`.
pub fn send_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes", state.len())));
    }
    Ok(())
}

/// `NOTIFY_SOCKET`'s address: an absolute path, or `@name` for the abstract namespace.
fn address(socket: &str) -> io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "neither an absolute path nor @name"))
    }
}

/// A STATUS= value is one line.
fn one_line(s: &str) -> String {
    s.replace('\n', "; ")
}

/// CLOCK_MONOTONIC in microseconds (systemd matches RELOADING=1 with it).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a datagram within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_one_datagram_to_a_path() {
        let path = std::env::temp_dir().join(format!("xlb-notify-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=serving").unwrap();
        let got = receive(&listener);
        let _ = std::fs::remove_file(&path);
        assert_eq!(got, "READY=1\nSTATUS=serving", "the datagram as sent");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("xlb-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_socket_path() {
        let e = send_to("run/notify", "READY=1").expect_err("a relative path is not a notify socket");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("reload refused: a\nb"), "reload refused: a; b");
    }
}
