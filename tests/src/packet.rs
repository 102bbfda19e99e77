//! A small packet builder and an independent checksum verifier, for the
//! data-path fixtures and the benchmarks.
//!
//! Checksums are computed here from scratch over the whole packet (RFC 1071),
//! never incrementally, so they check the XDP program's RFC 1624 updates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use lb_common::counter;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// A packet description; `build` turns it into frame bytes with correct checksums.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// UDP over IPv4 sent without a checksum (0).
    pub udp_no_csum: bool,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x2000 = MF.
    pub ipv4_frag: u16,
    /// IPv4 options (a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// IPv6: insert one extension header of this type (e.g. 0 hop-by-hop, 44 fragment).
    pub ipv6_ext: Option<u8>,
}

impl Pkt {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4, sport: u16, dport: u16) -> Self {
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0xaa],
            eth_src: [0x02, 0, 0, 0, 0, 0x01],
            vlan: None,
            src,
            dst,
            ttl: 64,
            l4,
            sport,
            dport,
            tcp_flags: TCP_SYN,
            payload: Vec::new(),
            udp_no_csum: false,
            ipv4_frag: 0,
            ipv4_options: Vec::new(),
            ipv6_ext: None,
        }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, L4::Tcp, sport, dport)
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        let mut p = Self::new(src, dst, L4::Udp, sport, dport);
        p.payload = b"hello".to_vec();
        p
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 20 + self.ipv4_options.len();
                let mut h = Vec::with_capacity(ihl);
                h.push(0x40 | (ihl / 4) as u8);
                h.push(0);
                h.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes());
                h.extend_from_slice(&self.ipv4_frag.to_be_bytes());
                h.push(self.ttl);
                h.push(self.proto());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ipv4_options);
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext_len = if self.ipv6_ext.is_some() { 8 } else { 0 };
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                f.push(self.ipv6_ext.unwrap_or(self.proto()));
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                if self.ipv6_ext.is_some() {
                    f.extend_from_slice(&[self.proto(), 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            _ => panic!("source and destination families differ"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        let csum_at = match self.l4 {
            L4::Tcp => {
                b.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(5 << 4);
                b.push(self.tcp_flags);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                16
            }
            L4::Udp => {
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                6
            }
        };
        b.extend_from_slice(&self.payload);
        if !(self.l4 == L4::Udp && self.udp_no_csum && self.src.is_ipv4()) {
            let c = l4_checksum(self.src, self.dst, self.proto(), &b);
            let c = if c == 0 && self.l4 == L4::Udp { 0xffff } else { c };
            b[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }
}

/// RFC 1071 Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in part.iter() {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// Checksum of an L4 segment (with its checksum field as it is) over the pseudo-header.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    checksum(&[&pseudo_header(src, dst, proto, seg.len()), seg])
}

/// What a frame says, as far as the tests need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an IPv4/IPv6 TCP/UDP frame (untagged or with one 802.1Q tag) and verifies every checksum
/// from scratch (IPv4 header, TCP/UDP with the pseudo-header; a zero UDP
/// checksum over IPv4 is accepted as "none").
pub fn parse_and_verify(f: &[u8]) -> Result<Parsed, String> {
    if f.len() < 14 {
        return Err("frame shorter than Ethernet".into());
    }
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut l3 = 14;
    if et == 0x8100 {
        et = u16::from_be_bytes([f[16], f[17]]);
        l3 = 18;
    }
    let (src, dst, ttl, proto, l4): (IpAddr, IpAddr, u8, u8, &[u8]) = match et {
        ETH_P_IP => {
            let h = &f[l3..];
            let ihl = usize::from(h[0] & 0xf) * 4;
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if checksum(&[&h[..ihl]]) != 0 {
                return Err(format!("bad IPv4 header checksum {:02x?}", &h[10..12]));
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap();
            let d: [u8; 4] = h[16..20].try_into().unwrap();
            (s.into(), d.into(), h[8], h[9], &h[ihl..tot])
        }
        ETH_P_IPV6 => {
            let h = &f[l3..];
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let s: [u8; 16] = h[8..24].try_into().unwrap();
            let d: [u8; 16] = h[24..40].try_into().unwrap();
            (s.into(), d.into(), h[7], h[6], &h[40..40 + plen])
        }
        other => return Err(format!("unexpected ethertype {other:#06x}")),
    };
    let csum_field = match proto {
        6 => u16::from_be_bytes([l4[16], l4[17]]),
        17 => u16::from_be_bytes([l4[6], l4[7]]),
        p => return Err(format!("unexpected protocol {p}")),
    };
    let none = proto == 17 && csum_field == 0 && src.is_ipv4();
    if !none && l4_checksum(src, dst, proto, l4) != 0 {
        return Err(format!("bad L4 checksum {csum_field:#06x}"));
    }
    Ok(Parsed {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        src,
        dst,
        ttl,
        proto,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    })
}

/// Parses a MAC address written `02:00:00:00:00:aa` (as in `/sys/class/net/*/address`).
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("bad MAC address {text:?}: {e}"))?;
    match bytes.try_into() {
        Ok(mac) => Ok(mac),
        Err(_) => bail!("bad MAC address {text:?}: expected six bytes"),
    }
}

/// A MAC address as `ip neigh` takes it: `02:00:00:00:00:aa`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One malformed frame to a VIP, and the drop counter xlb must count it under.
#[derive(Clone, Debug)]
pub struct Malformed {
    /// What is wrong with it, for messages.
    pub desc: &'static str,
    /// The whole Ethernet frame.
    pub frame: Vec<u8>,
    /// The drop counter (`lb_common::counter::DROP_*`) it must raise by one.
    pub counter: u32,
}

impl Malformed {
    /// The counter's `reason` label (`xlb_dropped_packets_total{reason=...}`,
    /// `drops[].reason` in the status JSON, `reason=` in `xlb trace`).
    pub fn reason(&self) -> &'static str {
        counter::DROP_NAMES[self.counter as usize]
    }
}

/// The malformed-frame set: every kind of frame to a VIP that xlb must drop
/// and count by reason, TCP to `vip:port` from `client`, each with its own
/// source port, from `eth_src` to `eth_dst`. Per reason: 3 truncated, 4
/// fragment, 1 ipv6_extension, 2 bad_header, 5 bad_source, 6 bad_flags
/// (distinct counts, so a frame counted under the wrong reason shows). The first frame is an IPv4 TCP
/// header cut short (10 of its 20 bytes, total length 30).
pub fn malformed_frames(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    client: (Ipv4Addr, Ipv6Addr),
    vip: (Ipv4Addr, Ipv6Addr),
    port: u16,
) -> Vec<Malformed> {
    let mut sport = 45000u16;
    let mut tcp = |v6: bool| {
        sport += 1;
        let mut p = if v6 {
            Pkt::tcp(client.1.into(), vip.1.into(), sport, port)
        } else {
            Pkt::tcp(client.0.into(), vip.0.into(), sport, port)
        };
        p.eth_dst = eth_dst;
        p.eth_src = eth_src;
        p
    };
    let mut out = Vec::new();
    let mut push = |desc, frame, counter| out.push(Malformed { desc, frame, counter });

    let mut f = tcp(false).build();
    f.truncate(14 + 20 + 10);
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    push("IPv4 TCP header cut short", f, counter::DROP_TRUNCATED);
    let mut f = tcp(false).build();
    f[16..18].copy_from_slice(&400u16.to_be_bytes());
    push("IPv4 total length beyond the frame", f, counter::DROP_TRUNCATED);
    let mut f = tcp(true).build();
    f.truncate(f.len() - 8);
    push("IPv6 payload length beyond the frame", f, counter::DROP_TRUNCATED);

    for (desc, frag) in [
        ("IPv4 first fragment (MF)", 0x2000),
        ("IPv4 middle fragment (MF, offset 128)", 0x2010),
        ("IPv4 last fragment (offset 128)", 0x0010),
    ] {
        let mut p = tcp(false);
        p.ipv4_frag = frag;
        push(desc, p.build(), counter::DROP_FRAGMENT);
    }
    let mut p = tcp(true);
    p.ipv6_ext = Some(44);
    push("IPv6 fragment header", p.build(), counter::DROP_FRAGMENT);

    let mut p = tcp(true);
    p.ipv6_ext = Some(0);
    push("IPv6 hop-by-hop options header", p.build(), counter::DROP_IPV6_EXT);

    let mut f = tcp(false).build();
    f[14] = 0x44; // IHL 4
    push("IPv4 IHL 4 (< 5)", f, counter::DROP_BAD_HEADER);
    let mut f = tcp(false).build();
    f[14 + 20 + 12] = 4 << 4;
    push("TCP data offset 4 (< 5)", f, counter::DROP_BAD_HEADER);

    // A source no client has: the VIP itself (the one martian inside the
    // test ranges), whatever the flags.
    for (desc, v6, flags) in [
        ("IPv4 SYN from the VIP itself", false, TCP_SYN),
        ("IPv4 ACK from the VIP itself", false, TCP_ACK),
        ("IPv4 FIN+ACK from the VIP itself", false, TCP_FIN | TCP_ACK),
        ("IPv6 SYN from the VIP itself", true, TCP_SYN),
        ("IPv6 ACK from the VIP itself", true, TCP_ACK),
    ] {
        let mut p = tcp(v6);
        p.src = if v6 { vip.1.into() } else { vip.0.into() };
        p.tcp_flags = flags;
        push(desc, p.build(), counter::DROP_BAD_SOURCE);
    }
    for (desc, v6, flags) in [
        ("TCP without flags", false, 0),
        ("TCP SYN+FIN", false, TCP_SYN | TCP_FIN),
        ("TCP SYN+RST", false, TCP_SYN | TCP_RST),
        ("TCP with only ECE and CWR", false, 0xc0),
        ("TCP with every control bit (christmas tree)", false, 0x3f),
        ("IPv6 TCP SYN+FIN", true, TCP_SYN | TCP_FIN),
    ] {
        let mut p = tcp(v6);
        p.tcp_flags = flags;
        push(desc, p.build(), counter::DROP_BAD_FLAGS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_verify() {
        for (s, d) in [("198.18.0.1", "198.18.0.10"), ("2001:db8::1", "2001:db8::10")] {
            let (s, d) = (s.parse().unwrap(), d.parse().unwrap());
            for p in [Pkt::tcp(s, d, 40000, 80), Pkt::udp(s, d, 40000, 53)] {
                let f = p.build();
                let got = parse_and_verify(&f).unwrap();
                assert_eq!((got.src, got.dst, got.sport, got.dport), (s, d, 40000, p.dport));
            }
        }
        // A flipped bit is caught.
        let mut f = Pkt::tcp("198.18.0.1".parse().unwrap(), "198.18.0.10".parse().unwrap(), 1, 2).build();
        f[14 + 20 + 4] ^= 1;
        assert!(parse_and_verify(&f).is_err());
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("02:00:0a:ff:01:11\n").unwrap();
        assert_eq!(mac, [2, 0, 10, 255, 1, 0x11]);
        assert_eq!(mac_string(mac), "02:00:0a:ff:01:11");
        assert!(parse_mac("02:00:0a").is_err());
        assert!(parse_mac("02:00:0a:ff:01:zz").is_err());
    }

    #[test]
    fn malformed_set_counts_differ_per_reason() {
        let set = malformed_frames(
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            ("198.18.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()),
            ("198.18.0.10".parse().unwrap(), "2001:db8::10".parse().unwrap()),
            80,
        );
        let count = |r: &str| set.iter().filter(|m| m.reason() == r).count();
        let counts = ["truncated", "fragment", "ipv6_extension", "bad_header", "bad_source", "bad_flags"].map(count);
        assert_eq!(counts, [3, 4, 1, 2, 5, 6]);
        assert_eq!(set.len(), 21, "every frame has a drop reason");
        assert_eq!(set[0].frame.len(), 14 + 20 + 10, "the first frame is the cut-short IPv4 TCP header");
        for m in &set {
            assert_eq!(&m.frame[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1], "{}", m.desc);
        }
    }
}
