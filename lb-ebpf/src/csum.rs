//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! The one's complement sum does not depend on byte order as long as every
//! 16-bit word is taken in the same order, so values are used exactly as they
//! were loaded from the packet. Nor does it depend on the width of the words
//! added: a 32-bit word is congruent to the sum of its two halves modulo
//! 0xffff (and its complement to the sum of theirs), so 32-bit words are
//! added whole into a 64-bit sum that is folded once, when applied.

/// The changes made to the words a checksum covers: `~m + m'` for each.
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn u16(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u64 + new as u64;
    }

    /// A 32-bit word (an IPv4 address) changed from `old` to `new`.
    #[inline(always)]
    pub fn u32(&mut self, old: u32, new: u32) {
        self.0 += (!old) as u64 + new as u64;
    }

    /// A 128-bit address (four words) changed from `old` to `new`.
    #[inline(always)]
    pub fn addr6(&mut self, old: &[u32; 4], new: &[u32; 4]) {
        for i in 0..4 {
            self.u32(old[i], new[i]);
        }
    }

    /// The checksum `check` after the changes.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold((!check) as u64 + self.0)
    }
}

/// Folds a sum of 16- and 32-bit words into 16 bits (end-around carries).
/// Three rounds suffice below 2^36 (a [`Delta`] adds at most ten terms below
/// 2^33): after the first the sum is below 2^16 + 2^20, after the second
/// below 2^16 + 2^5, after the third it fits.
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum over words already summed (16- and 32-bit words as they sit in
/// memory, in one byte order): the complement of the folded sum.
#[inline(always)]
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}
