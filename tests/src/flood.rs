//! A bounded SYN flood from random sources, sent from a namespace through an
//! `AF_PACKET` socket: frames built by [`Pkt`], sources drawn from
//! 198.19.0.0/16 (inside the benchmarking range 198.18.0.0/15, and routed
//! nowhere: answers to them die at the lb), random source ports.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{packet::Pkt, Netns};

/// What a flood did.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub sent: u64,
    pub elapsed: Duration,
}

/// The flood's parameters: `count` SYNs to `vip`:`port`, out of `iface` in
/// the namespace, in frames from `src_mac` to `dst_mac` (the lb's), at most
/// `rate` per second and for at most `max_time`.
#[derive(Clone, Debug)]
pub struct SynFlood {
    pub iface: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vip: Ipv4Addr,
    pub port: u16,
    pub count: u64,
    pub rate: u64,
    pub max_time: Duration,
    pub seed: u64,
}

impl SynFlood {
    /// Sends the flood from `ns` (blocking; run it on a thread of its own).
    pub fn run(&self, ns: &Netns) -> Result<Flood> {
        let me = self.clone();
        ns.run_in(move || me.send())?
    }

    fn send(&self) -> Result<Flood> {
        // SAFETY: plain socket calls on a descriptor this function owns and closes.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let result = self.send_on(fd);
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        result
    }

    fn send_on(&self, fd: libc::c_int) -> Result<Flood> {
        let name = std::ffi::CString::new(self.iface.as_str())?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {}", self.iface);
        }
        // SAFETY: zeroed sockaddr_ll is valid; filled below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&self.dst_mac);
        let mut rng = self.seed | 1;
        let mut next = move || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < self.count && start.elapsed() < self.max_time {
            // Pace: never ahead of `rate` per second.
            let due = Duration::from_secs_f64(sent as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            for _ in 0..64 {
                let r = next();
                let src = Ipv4Addr::new(198, 19, (r >> 8) as u8, (r >> 16) as u8 | 1);
                let sport = 1024 + (r >> 32) as u16 % 60000;
                let mut p = Pkt::tcp(IpAddr::V4(src), IpAddr::V4(self.vip), sport, self.port);
                p.eth_dst = self.dst_mac;
                p.eth_src = self.src_mac;
                let frame = p.build();
                // SAFETY: `frame` and `to` outlive the call; lengths are theirs.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    bail!("sendto on {}: {e}", self.iface);
                }
                sent += 1;
            }
        }
        Ok(Flood { sent, elapsed: start.elapsed() })
    }
}
