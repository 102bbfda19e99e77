//! ICMP and ICMPv6 frames for the data-path fixtures (errors quoting a packet, echo
//! requests and replies), and an independent verifier of every checksum in them.
//!
//! Like [`crate::packet`], checksums are computed from scratch (RFC 1071), never
//! incrementally, so they check the XDP program's RFC 1624 updates.

use std::net::IpAddr;

use crate::packet::{checksum, l4_checksum, ETH_P_IP, ETH_P_IPV6};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_HOST_UNREACH: u8 = 1;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PORT_UNREACH: u8 = 4;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

/// An ICMP (IPv4) or ICMPv6 packet; `build` gives the frame with every checksum right.
#[derive(Clone, Debug)]
pub struct Icmp {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ty: u8,
    pub code: u8,
    /// The 4 bytes after the checksum: unused, the next-hop MTU, or echo id and sequence.
    pub rest: [u8; 4],
    /// What follows: the quoted packet of an error, an echo's data.
    pub body: Vec<u8>,
}

impl Icmp {
    /// An error (`ty`/`code`) quoting `quoted` (an IP packet, maybe cut short); `mtu` for
    /// frag-needed / packet-too-big, else 0.
    pub fn error(src: IpAddr, dst: IpAddr, ty: u8, code: u8, mtu: u32, quoted: &[u8]) -> Self {
        let rest = if src.is_ipv4() { [0, 0, (mtu >> 8) as u8, mtu as u8] } else { mtu.to_be_bytes() };
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0xaa],
            eth_src: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            ttl: 64,
            ty,
            code,
            rest,
            body: quoted.to_vec(),
        }
    }

    /// An echo request (`reply == false`) or reply with id 0x4242, sequence `seq`.
    pub fn echo(src: IpAddr, dst: IpAddr, reply: bool, seq: u16, data: &[u8]) -> Self {
        let ty = match (src.is_ipv4(), reply) {
            (true, false) => ICMP_ECHO,
            (true, true) => ICMP_ECHO_REPLY,
            (false, false) => ICMP6_ECHO_REQUEST,
            (false, true) => ICMP6_ECHO_REPLY,
        };
        let [s0, s1] = seq.to_be_bytes();
        let mut p = Self::error(src, dst, ty, 0, 0, data);
        p.rest = [0x42, 0x42, s0, s1];
        p
    }

    pub fn build(&self) -> Vec<u8> {
        let mut icmp = vec![self.ty, self.code, 0, 0];
        icmp.extend_from_slice(&self.rest);
        icmp.extend_from_slice(&self.body);
        let mut f = Vec::with_capacity(64 + icmp.len());
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let c = checksum(&[&icmp]);
                icmp[2..4].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0x56, 0x78, 0, 0, self.ttl, 1, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let c = l4_checksum(self.src, self.dst, 58, &icmp);
                icmp[2..4].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
                f.push(58);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("source and destination families differ"),
        }
        f.extend_from_slice(&icmp);
        f
    }
}

/// The IP packet of `frame` (an untagged Ethernet frame), its first `n` bytes at most.
pub fn ip_packet(frame: &[u8], n: usize) -> Vec<u8> {
    frame[14..].iter().take(n).copied().collect()
}

/// What [`verify_icmp`] checked.
#[derive(Debug, PartialEq, Eq)]
pub struct IcmpChecked {
    pub ty: u8,
    /// The quoted packet held all of its TCP/UDP segment, whose checksum was verified.
    pub inner_l4_verified: bool,
}

/// Verifies an ICMP/ICMPv6 frame from scratch: the outer IPv4 header checksum, the
/// ICMP checksum (ICMPv6: with its pseudo-header) and, for an error, the quoted IPv4
/// header's checksum and, when the whole quoted segment is there, its TCP/UDP checksum.
pub fn verify_icmp(f: &[u8]) -> Result<IcmpChecked, String> {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, icmp) = match et {
        ETH_P_IP => {
            let h = &f[14..];
            let ihl = usize::from(h[0] & 0xf) * 4;
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if checksum(&[&h[..ihl]]) != 0 {
                return Err("bad outer IPv4 header checksum".into());
            }
            if h[9] != 1 {
                return Err(format!("outer protocol {} is not ICMP", h[9]));
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap();
            let d: [u8; 4] = h[16..20].try_into().unwrap();
            let icmp = &h[ihl..tot];
            if checksum(&[icmp]) != 0 {
                return Err("bad ICMP checksum".into());
            }
            (IpAddr::from(s), IpAddr::from(d), icmp)
        }
        ETH_P_IPV6 => {
            let h = &f[14..];
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if h[6] != 58 {
                return Err(format!("outer next header {} is not ICMPv6", h[6]));
            }
            let s: [u8; 16] = h[8..24].try_into().unwrap();
            let d: [u8; 16] = h[24..40].try_into().unwrap();
            let icmp = &h[40..40 + plen];
            let (src, dst) = (IpAddr::from(s), IpAddr::from(d));
            if l4_checksum(src, dst, 58, icmp) != 0 {
                return Err("bad ICMPv6 checksum (with its pseudo-header)".into());
            }
            (src, dst, icmp)
        }
        other => return Err(format!("unexpected ethertype {other:#06x}")),
    };
    let _ = (src, dst);
    let ty = icmp[0];
    let error = if et == ETH_P_IP { matches!(ty, 3 | 11 | 12) } else { (1..=4).contains(&ty) };
    if !error {
        return Ok(IcmpChecked { ty, inner_l4_verified: false });
    }
    let q = &icmp[8..];
    let (isrc, idst, proto, l4, whole): (IpAddr, IpAddr, u8, &[u8], bool) = if et == ETH_P_IP {
        let ihl = usize::from(q[0] & 0xf) * 4;
        if checksum(&[&q[..ihl]]) != 0 {
            return Err("bad quoted IPv4 header checksum".into());
        }
        let tot = usize::from(u16::from_be_bytes([q[2], q[3]]));
        let s: [u8; 4] = q[12..16].try_into().unwrap();
        let d: [u8; 4] = q[16..20].try_into().unwrap();
        (s.into(), d.into(), q[9], &q[ihl..q.len().min(tot)], q.len() >= tot)
    } else {
        let plen = usize::from(u16::from_be_bytes([q[4], q[5]]));
        let s: [u8; 16] = q[8..24].try_into().unwrap();
        let d: [u8; 16] = q[24..40].try_into().unwrap();
        (s.into(), d.into(), q[6], &q[40..q.len().min(40 + plen)], q.len() >= 40 + plen)
    };
    let none = proto == 17 && isrc.is_ipv4() && l4.len() >= 8 && l4[6] == 0 && l4[7] == 0;
    if whole && !none && l4_checksum(isrc, idst, proto, l4) != 0 {
        return Err("bad quoted TCP/UDP checksum".into());
    }
    Ok(IcmpChecked { ty, inner_l4_verified: whole && !none })
}
