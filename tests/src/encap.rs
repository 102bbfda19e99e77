//! ipip / gue frames for the fixtures, built from the RFCs' layouts (not from
//! the data path's code): an outer IPv4 (RFC 791) or IPv6 (RFC 8200) header,
//! for GUE variant 1 a UDP header (RFC 768), then the inner IP packet as it is.

use std::net::IpAddr;

use crate::packet::{checksum, l4_checksum, parse_and_verify, Parsed};

/// The outer headers' fields that vary.
#[derive(Clone, Debug)]
pub struct Outer {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `Some(sport, dport)`: GUE; `None`: ipip.
    pub udp: Option<(u16, u16)>,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv6: the 20-bit flow label.
    pub flow_label: u32,
    pub ttl: u8,
    /// IPv4: the flags / fragment offset word (0x4000: DF).
    pub frag: u16,
}

/// The inner IP packet of an untagged frame (everything after Ethernet).
pub fn inner_packet(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// `inner` (an IP packet) inside `o`'s headers, in an Ethernet frame.
pub fn encapsulate(o: &Outer, inner: &[u8]) -> Vec<u8> {
    let udp_len = 8 + inner.len();
    let mut payload = Vec::new();
    if let Some((sport, dport)) = o.udp {
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&dport.to_be_bytes());
        payload.extend_from_slice(&(udp_len as u16).to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
    }
    payload.extend_from_slice(inner);
    let inner_v4 = inner[0] >> 4 == 4;
    let mut f = Vec::new();
    f.extend_from_slice(&o.eth_dst);
    f.extend_from_slice(&o.eth_src);
    match (o.src, o.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let proto = if o.udp.is_some() {
                17
            } else if inner_v4 {
                4
            } else {
                41
            };
            let mut h = vec![0x45, o.tos];
            h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&o.frag.to_be_bytes());
            h.extend_from_slice(&[o.ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
            // GUE over IPv4: checksum 0.
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let next = if o.udp.is_some() {
                17
            } else if inner_v4 {
                4
            } else {
                41
            };
            let vcf = (6u32 << 28) | (u32::from(o.tos) << 20) | (o.flow_label & 0xfffff);
            f.extend_from_slice(&vcf.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            f.extend_from_slice(&[next, o.ttl]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            if o.udp.is_some() {
                let c = l4_checksum(o.src, o.dst, 17, &payload);
                let c = if c == 0 { 0xffff } else { c };
                payload[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        _ => panic!("outer source and destination families differ"),
    }
    f.extend_from_slice(&payload);
    f
}

/// What an encapsulated frame says, every checksum verified from scratch
/// (outer IPv4 header, outer UDP over IPv6; the inner packet's own).
#[derive(Debug)]
pub struct Decoded {
    pub outer: Outer,
    pub inner: Parsed,
    /// The inner packet as a frame (the outer frame's MACs).
    pub inner_frame: Vec<u8>,
}

pub fn decode(f: &[u8]) -> Result<Decoded, String> {
    if f.len() < 34 {
        return Err(format!("{} bytes: too short for Ethernet and an outer IP header", f.len()));
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    let h = &f[14..];
    let (src, dst, proto, tos, flow_label, ttl, frag, l4): (IpAddr, IpAddr, u8, u8, u32, u8, u16, &[u8]) = match et {
        0x0800 => {
            if h[0] != 0x45 {
                return Err(format!("outer IPv4 version/IHL {:#04x}, expected 0x45", h[0]));
            }
            if checksum(&[&h[..20]]) != 0 {
                return Err("bad outer IPv4 header checksum".into());
            }
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if tot != h.len() {
                return Err(format!("outer total length {tot}, frame carries {}", h.len()));
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap();
            let d: [u8; 4] = h[16..20].try_into().unwrap();
            (s.into(), d.into(), h[9], h[1], 0, h[8], u16::from_be_bytes([h[6], h[7]]), &h[20..tot])
        }
        0x86dd => {
            let vcf = u32::from_be_bytes(h[0..4].try_into().unwrap());
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if 40 + plen != h.len() {
                return Err(format!("outer payload length {plen}, frame carries {}", h.len() - 40));
            }
            let s: [u8; 16] = h[8..24].try_into().unwrap();
            let d: [u8; 16] = h[24..40].try_into().unwrap();
            ((s.into()), d.into(), h[6], (vcf >> 20) as u8, vcf & 0xfffff, h[7], 0, &h[40..40 + plen])
        }
        other => return Err(format!("outer ethertype {other:#06x}")),
    };
    let (udp, inner) = match proto {
        17 => {
            let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if len != l4.len() {
                return Err(format!("UDP length {len}, outer payload {}", l4.len()));
            }
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            if src.is_ipv4() && c != 0 {
                return Err(format!("GUE over IPv4 with UDP checksum {c:#06x}, expected 0"));
            }
            if src.is_ipv6() && (c == 0 || l4_checksum(src, dst, 17, l4) != 0) {
                return Err(format!("GUE over IPv6 with a bad UDP checksum {c:#06x}"));
            }
            (Some((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))), &l4[8..])
        }
        4 | 41 => (None, l4),
        p => return Err(format!("outer protocol {p}, expected 4, 41 or 17")),
    };
    let mut inner_frame = f[..12].to_vec();
    inner_frame.extend_from_slice(&(if inner[0] >> 4 == 4 { 0x0800u16 } else { 0x86dd }).to_be_bytes());
    inner_frame.extend_from_slice(inner);
    let parsed = parse_and_verify(&inner_frame).map_err(|e| format!("inner packet: {e}"))?;
    let outer = Outer {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        src,
        dst,
        udp,
        tos,
        flow_label,
        ttl,
        frag,
    };
    Ok(Decoded { outer, inner: parsed, inner_frame })
}
