//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! The one's complement sum does not depend on byte order as long as every
//! 16-bit word is taken in the same order, so values are used exactly as they
//! were loaded from the packet. Nor does it depend on the width of the words
//! added: a 32-bit word is congruent to the sum of its two halves modulo
//! 0xffff (and its complement to the sum of theirs), so 32-bit words are
//! added whole into a 64-bit sum that is folded once at the end.

/// Folds a sum of 16- and 32-bit words into 16 bits (end-around carries).
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// `~old + new` for a 32-bit word.
#[inline(always)]
fn diff32(old: u32, new: u32) -> u64 {
    (!old) as u64 + new as u64
}

/// `~old + new` for a 16-bit word.
#[inline(always)]
fn diff16(old: u16, new: u16) -> u64 {
    (!old) as u64 + new as u64
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u64 + diff16(old, new))
}

/// Checksum after a 32-bit word (an IPv4 address) changed.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    !fold((!check) as u64 + diff32(old, new))
}

/// Checksum after a 32-bit word (an IPv4 address) and a 16-bit word (a port) changed.
#[inline(always)]
pub fn replace4_2(check: u16, old4: u32, new4: u32, old2: u16, new2: u16) -> u16 {
    !fold((!check) as u64 + diff32(old4, new4) + diff16(old2, new2))
}

/// Checksum after a 128-bit address (four words) and a 16-bit word changed.
#[inline(always)]
pub fn replace16_2(check: u16, old: &[u32; 4], new: &[u32; 4], old2: u16, new2: u16) -> u16 {
    let s = (!check) as u64
        + diff32(old[0], new[0])
        + diff32(old[1], new[1])
        + diff32(old[2], new[2])
        + diff32(old[3], new[3])
        + diff16(old2, new2);
    !fold(s)
}
