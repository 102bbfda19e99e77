//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! The one's complement sum does not depend on byte order as long as every
//! 16-bit word is taken in the same order, so values are used exactly as they
//! were loaded from the packet.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
fn add32(s: u32, old: u32, new: u32) -> u32 {
    s + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16)
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// Checksum after a 32-bit word (an IPv4 address) and a 16-bit word (a port) changed.
#[inline(always)]
pub fn replace4_2(check: u16, old4: u32, new4: u32, old2: u16, new2: u16) -> u16 {
    let s = add32((!check) as u32, old4, new4) + (!old2) as u32 + new2 as u32;
    !fold(s)
}

/// Checksum after a 128-bit address (four words) and a 16-bit word changed.
#[inline(always)]
pub fn replace16_2(check: u16, old: &[u32; 4], new: &[u32; 4], old2: u16, new2: u16) -> u16 {
    let mut s = (!check) as u32 + (!old2) as u32 + new2 as u32;
    s = add32(s, old[0], new[0]);
    s = add32(s, old[1], new[1]);
    s = add32(s, old[2], new[2]);
    s = add32(s, old[3], new[3]);
    !fold(s)
}
