//! What the program needs to know about the interfaces it runs on: which
//! are veths, and what a veth in native mode needs from its peer.
//!
//! A packet that leaves by the interface it came in on goes out with
//! `XDP_TX`, except on a veth attached in native mode: there the veth queues
//! the frame on its peer but wakes the peer's NAPI only if the peer runs an
//! XDP program of its own, so the frame waits until something else (a router
//! solicitation, a ping) wakes it. A redirect (`XDP_REDIRECT` through the
//! `HAIRPIN_PORTS` device map) wakes it at once. On real NICs `XDP_TX` stays:
//! it is the driver's own transmit ring, the cheapest way out.

use std::{ffi::CString, io, process::Command};

/// `SIOCETHTOOL` / `ETHTOOL_GDRVINFO` (linux/sockios.h, linux/ethtool.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _rest: [u8; 16],
}

/// The interface's driver, as `ethtool -i` names it (`veth`, `mlx5_core`, ...),
/// in the caller's network namespace.
pub fn driver(iface: &str) -> io::Result<String> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
    }
    // SAFETY: all-zero is a valid value of both plain-data structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: (&raw mut info).cast(), _rest: [0; 16] };
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: plain syscall; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `req` and the `info` it points to live across the call and have
    // the layouts the ioctl expects.
    let ret = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &raw mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if ret < 0 {
        return Err(err);
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether `iface` is a veth (its driver says so).
pub fn is_veth(iface: &str) -> bool {
    driver(iface).is_ok_and(|d| d == "veth")
}

/// The interface's index in the caller's network namespace.
pub fn ifindex(iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The index of a veth's peer (`eth0@if5` in `ip link`: 5), which may live in
/// another network namespace.
pub fn peer_ifindex(iface: &str) -> Option<u32> {
    let out = Command::new("ip").args(["-o", "link", "show", "dev", iface]).output().ok()?;
    parse_peer_ifindex(&String::from_utf8_lossy(&out.stdout), iface)
}

/// `5` from `2: eth0@if5: <BROADCAST,...`.
fn parse_peer_ifindex(line: &str, iface: &str) -> Option<u32> {
    let name = line.split(':').nth(1)?.trim();
    name.strip_prefix(iface)?.strip_prefix("@if")?.parse().ok()
}

/// What a veth attached in native mode needs so that the frames xlb sends out
/// of it arrive, said at attach time: the peer must poll (NAPI) and the hosts
/// whose packets xlb forwards must not leave checksums to offload.
pub fn native_veth_advice(iface: &str, peer: Option<u32>) -> String {
    let peer = match peer {
        Some(i) => format!("its peer (ifindex {i}, `{iface}@if{i}` in `ip link`)"),
        None => "its peer".to_owned(),
    };
    format!(
        "{iface} is a veth in native XDP mode: frames xlb sends out of it are dropped unless {peer} runs NAPI: \
         `ethtool -K PEER gro on` there (or attach an XDP program to it); and every host whose packets xlb \
         forwards (clients, NAT backends) needs `ethtool -K IF tx off` on its interface, because a checksum left \
         to the NIC is lost when XDP forwards the frame. Or use xdp_mode = \"generic\" (slower; it does not need the peer's NAPI)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ifindex_from_ip_link() {
        let line = "2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP";
        assert_eq!(parse_peer_ifindex(line, "eth0"), Some(5));
        assert_eq!(parse_peer_ifindex("3: eth1: <BROADCAST> mtu 1500", "eth1"), None);
        assert_eq!(parse_peer_ifindex("4: eth10@if9: <UP>", "eth1"), None);
    }

    #[test]
    fn loopback_is_no_veth() {
        assert!(!is_veth("lo"), "lo: driver {:?}", driver("lo"));
        assert!(driver("no-such-if0").is_err());
    }

    #[test]
    fn advice_names_the_fixes() {
        let a = native_veth_advice("eth0", Some(7));
        for part in ["eth0", "ifindex 7", "gro on", "tx off", "generic"] {
            assert!(a.contains(part), "advice lacks {part:?}: {a}");
        }
    }
}
