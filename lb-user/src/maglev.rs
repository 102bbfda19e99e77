//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), with weights.
//!
//! Every backend has a permutation of the table's M slots, `offset = h1(id) mod M`,
//! `skip = h2(id) mod (M - 1) + 1`, its j-th preference being
//! `(offset + j * skip) mod M`. Backends take turns, in rounds, in the order of
//! their ids. Each backend has a quota of slots, `M * weight / total weight`
//! (rounded so the quotas add up to M): that is how weights act.
//!
//! One deliberate difference from the paper: in round j a backend proposes its
//! j-th preference and takes it if it is free; when it is taken, the turn is
//! spent (the paper's backend instead walks on to its next free preference
//! within the same turn). A slot thus goes to the backend that ranks it
//! highest among those that still have quota, and taking a slot never shifts
//! another backend's schedule. At M = 65537 removing 1 of 100 backends moves
//! about 1.3 x the ideal 1/N of the slots instead of the paper's 1.5 x, with the
//! same exact balance. Finding the last few free slots that way takes many
//! nearly empty rounds, so the tail is computed directly: the round in which a
//! backend proposes slot s is `(s - next) * skip^-1 mod M`; sorting those
//! (round, turn order) events gives exactly the result the rounds would.
//!
//! The table depends only on the set of (id, weight) pairs and on M: the hashes
//! are fixed functions of the id's bytes (FNV-1a and murmur3's finaliser, not
//! std's randomly seeded hasher), and turns go in the order of the ids, not in
//! the caller's order. Every xlb instance, on every machine and after every
//! restart, builds the same table from the same configuration.

use lb_common::NO_BACKEND;

/// A backend as Maglev sees it: a stable identity and a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity (`address:port`); it alone places the backend in the table.
    pub id: &'a str,
    /// 0 takes no slots.
    pub weight: u32,
}

/// Indices of the backends that take turns (weight > 0), in id order (then
/// position), so the table does not depend on the order of `backends`.
fn turn_order(backends: &[MaglevBackend<'_>]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..backends.len() as u32).filter(|&i| backends[i as usize].weight > 0).collect();
    order.sort_by(|&a, &b| backends[a as usize].id.cmp(backends[b as usize].id).then(a.cmp(&b)));
    order
}

/// One turn per backend in `order` with a quota above 0: where its
/// permutation starts, its step, and how many slots it may still take.
fn turns(backends: &[MaglevBackend<'_>], order: &[u32], size: u32) -> Vec<Turn> {
    let weights: Vec<u32> = order.iter().map(|&i| backends[i as usize].weight).collect();
    order
        .iter()
        .zip(quotas(&weights, size))
        .filter(|&(_, quota)| quota > 0)
        .map(|(&index, quota)| {
            let (next, skip) = permutation(backends[index as usize].id, size);
            Turn { next, skip, left: quota, index }
        })
        .collect()
}

/// Builds a Maglev table of `size` slots (`size` should be prime).
///
/// Returns a table of `size` entries, each an index into `backends`, or
/// [`lb_common::NO_BACKEND`] (u32::MAX) for every slot when no backend has
/// weight > 0. The result does not depend on the order of `backends`: turns
/// are taken in the order of the ids (backends with equal ids, which a valid
/// configuration never has, are ordered by their position).
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
    let mut table = vec![NO_BACKEND; size as usize];
    let order = turn_order(backends);
    if size == 0 || order.is_empty() {
        return table;
    }
    let mut turns = turns(backends, &order, size);

    let mut free = size;
    // Round by round while most proposals find a free slot; the tail by events.
    while free > 0 && u64::from(free) * turns.len() as u64 > TAIL_EVENTS {
        let mut finished = false;
        for turn in &mut turns {
            let slot = turn.advance(size);
            let entry = &mut table[slot as usize];
            if *entry == NO_BACKEND {
                *entry = turn.index;
                free -= 1;
                turn.left -= 1;
                finished |= turn.left == 0;
            }
        }
        if finished {
            turns.retain(|turn| turn.left > 0);
        }
    }
    if free > 0 {
        finish_by_events(&mut table, &mut turns, size);
    }
    table
}

/// Once free slots x backends with quota left is at most this, the rest of the
/// table is filled from a sorted list of that many events.
const TAIL_EVENTS: u64 = 8192;

/// A backend's place in the rounds.
struct Turn {
    /// Its next preference (slot).
    next: u32,
    skip: u32,
    /// Slots it still has to take.
    left: u32,
    /// Index into the caller's backends.
    index: u32,
}

impl Turn {
    /// This round's proposal; moves on to the next preference.
    fn advance(&mut self, size: u32) -> u32 {
        let slot = self.next;
        // next < size and skip < size: an addition and a subtraction, no
        // multiplication or division (u64 so that any u32 size is safe).
        let next = u64::from(self.next) + u64::from(self.skip);
        self.next = next.checked_sub(u64::from(size)).unwrap_or(next) as u32;
        slot
    }
}

/// Finishes the rounds without running them. Backend `t` proposes slot `s`
/// after `(s - next) * skip^-1 mod size` more rounds; handling the proposals
/// of free slots in (round, turn order) order takes the same slots as the
/// rounds would, since a proposal of a taken slot changes nothing.
fn finish_by_events(table: &mut [u32], turns: &mut [Turn], size: u32) {
    let size64 = u64::from(size);
    let free: Vec<u32> = (0..size).filter(|&s| table[s as usize] == NO_BACKEND).collect();
    let mut events: Vec<(u64, u32)> = Vec::with_capacity(free.len() * turns.len());
    for (position, turn) in turns.iter().enumerate() {
        let inverse = mod_inverse(turn.skip, size);
        for &slot in &free {
            let distance = (u64::from(slot) + size64 - u64::from(turn.next)) % size64;
            let round = distance * inverse % size64;
            events.push(((round << 32) | position as u64, slot));
        }
    }
    events.sort_unstable();
    for (key, slot) in events {
        let turn = &mut turns[(key & u64::from(u32::MAX)) as usize];
        let entry = &mut table[slot as usize];
        if turn.left > 0 && *entry == NO_BACKEND {
            *entry = turn.index;
            turn.left -= 1;
        }
    }
}

/// `a^-1 mod m` for `a` coprime with `m` (extended Euclid).
fn mod_inverse(a: u32, m: u32) -> u64 {
    if m == 1 {
        return 0;
    }
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} is not invertible mod {m}");
    t0.rem_euclid(i64::from(m)) as u64
}

/// How many slots each weight gets: `size * w / total`, rounded so that the
/// quotas add up to `size` (largest remainder first; ties to the earlier).
fn quotas(weights: &[u32], size: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let exact = |w: u32| u64::from(size) * u64::from(w);
    let mut quotas: Vec<u32> = weights.iter().map(|&w| (exact(w) / total) as u32).collect();
    let short = size - quotas.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by_key(|&i| (std::cmp::Reverse(exact(weights[i]) % total), i));
    for &i in by_remainder.iter().take(short as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// Whether `n` is prime (deterministic trial division; fast for table sizes).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// `(offset, skip)` of a backend's permutation of a table of `size` slots.
fn permutation(id: &str, size: u32) -> (u32, u32) {
    let size64 = u64::from(size);
    let offset = (h1(id.as_bytes()) % size64) as u32;
    let mut skip = if size > 1 { (h2(id.as_bytes()) % (size64 - 1)) as u32 + 1 } else { 1 };
    // With a prime size every skip visits every slot. For any other size, step
    // to a skip coprime with it so that the permutation still covers the table.
    while size > 1 && gcd(skip, size) != 1 {
        skip = skip % (size - 1) + 1;
    }
    (offset, skip)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The standard FNV-1a 64-bit offset basis.
const FNV_BASIS_1: u64 = 0xcbf2_9ce4_8422_2325;
/// A second, unrelated basis (the first 64 bits of the fractional part of e).
const FNV_BASIS_2: u64 = 0xb7e1_5162_8aed_2a6a;

fn fnv1a64(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// murmur3's 64-bit finaliser: every input bit reaches every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn h1(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(FNV_BASIS_1, bytes))
}

fn h2(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(FNV_BASIS_2, bytes))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const M: u32 = lb_common::DEFAULT_TABLE_SIZE;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("198.18.{}.{}:80", 1 + i / 250, 1 + i % 250)).collect()
    }

    fn equal(ids: &[String]) -> Vec<MaglevBackend<'_>> {
        ids.iter().map(|id| MaglevBackend { id, weight: 1 }).collect()
    }

    /// Slots held by each backend index.
    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &entry in table {
            counts[entry as usize] += 1;
        }
        counts
    }

    /// The table as backend ids, which do not depend on the caller's order.
    fn by_id<'a>(table: &[u32], backends: &[MaglevBackend<'a>]) -> Vec<&'a str> {
        table.iter().map(|&e| backends[e as usize].id).collect()
    }

    #[test]
    fn no_empty_slot() {
        for (n, size) in [(1, 7), (3, 7), (7, 7), (10, 251), (100, M), (1000, M)] {
            let ids = ids(n);
            let table = build_table(&equal(&ids), size);
            assert_eq!(table.len(), size as usize);
            assert!(
                table.iter().all(|&e| (e as usize) < n),
                "{n} backends, size {size}: expected every slot to hold a backend index, found {:?}",
                table.iter().find(|&&e| e as usize >= n)
            );
        }
    }

    #[test]
    fn same_input_same_table_in_any_order() {
        let ids = ids(50);
        let backends: Vec<MaglevBackend<'_>> =
            ids.iter().enumerate().map(|(i, id)| MaglevBackend { id, weight: 1 + (i % 3) as u32 }).collect();
        let table = build_table(&backends, M);
        assert_eq!(table, build_table(&backends, M), "two builds of the same input differ");

        // Shuffle (deterministic LCG Fisher-Yates) and compare by id.
        let mut shuffled = backends.clone();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        assert_ne!(shuffled, backends, "the shuffle should change the order");
        assert!(
            by_id(&table, &backends) == by_id(&build_table(&shuffled, M), &shuffled),
            "the table changed when the backends were given in another order"
        );
    }

    /// The hashes are part of the contract (every instance builds the same
    /// table): they must not change between versions, machines or toolchains.
    #[test]
    fn hashes_and_table_are_stable() {
        assert_eq!(fnv1a64(FNV_BASIS_1, b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 reference value");
        assert_eq!(permutation("198.18.1.11:80", M), (567, 51_583));
        assert_eq!(permutation("[2001:db8::11]:80", M), (595, 10_518));
        let ids = ids(3);
        let table = build_table(&equal(&ids), 13);
        assert_eq!(table, [1, 0, 2, 1, 1, 0, 2, 0, 0, 1, 2, 0, 2]);
    }

    #[test]
    fn balanced_over_1000_backends() {
        let ids = ids(1000);
        let backends = equal(&ids);
        let start = Instant::now();
        let table = build_table(&backends, M);
        let elapsed = start.elapsed();
        eprintln!("maglev: 1000 backends, M = {M}: built in {elapsed:?}");
        let counts = counts(&table, 1000);
        let max = *counts.iter().max().unwrap() as f64;
        let mean = f64::from(M) / 1000.0;
        assert!(max / mean <= 1.01, "expected max/mean <= 1.01, got {max}/{mean} = {:.4}", max / mean);
    }

    #[test]
    fn removing_one_backend_moves_few_slots() {
        let n = 100;
        let ids = ids(n);
        let all = equal(&ids);
        let before = by_id(&build_table(&all, M), &all);
        for removed in (0..n).step_by(9) {
            let rest: Vec<MaglevBackend<'_>> =
                all.iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, b)| *b).collect();
            let after = by_id(&build_table(&rest, M), &rest);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let ideal = f64::from(M) / n as f64;
            assert!(
                moved as f64 <= 1.5 * ideal,
                "removing 1 of {n} moved {moved} slots; expected at most 1.5 x the ideal {ideal:.0}"
            );
            let survivors_kept =
                before.iter().zip(&after).filter(|(a, _)| **a != all[removed].id).filter(|(a, b)| a == b).count();
            let survivors_total = before.iter().filter(|a| **a != all[removed].id).count();
            let kept = survivors_kept as f64 / survivors_total as f64;
            assert!(kept >= 0.99, "expected >= 99% of the survivors' slots to stay, {:.2}% did", kept * 100.0);
        }
    }

    #[test]
    fn adding_one_backend_moves_few_slots() {
        let ids = ids(101);
        let before_set = equal(&ids[..100]);
        let after_set = equal(&ids);
        let before = by_id(&build_table(&before_set, M), &before_set);
        let after = by_id(&build_table(&after_set, M), &after_set);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let ideal = f64::from(M) / 101.0;
        assert!(moved as f64 <= 1.5 * ideal, "adding 1 backend to 100 moved {moved} slots; ideal {ideal:.0}");
    }

    #[test]
    fn slots_proportional_to_weights() {
        let ids = ids(3);
        let backends: Vec<MaglevBackend<'_>> =
            ids.iter().zip([1, 2, 3]).map(|(id, weight)| MaglevBackend { id, weight }).collect();
        let counts = counts(&build_table(&backends, M), 3);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
            let share = counts[i] as f64 / f64::from(M);
            assert!(
                (share - want).abs() <= 0.02 * want,
                "backend of weight {}: expected a share of {want:.4} (within 2%), got {share:.4}",
                i + 1
            );
        }

        // Many backends with mixed weights: each within 2% of its ideal share.
        let ids = self::ids(40);
        let backends: Vec<MaglevBackend<'_>> =
            ids.iter().enumerate().map(|(i, id)| MaglevBackend { id, weight: [1, 5, 10, 100][i % 4] }).collect();
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        let counts = self::counts(&build_table(&backends, M), 40);
        for (b, &count) in backends.iter().zip(&counts) {
            let want = f64::from(M) * f64::from(b.weight) / f64::from(total);
            assert!(
                (count as f64 - want).abs() <= 0.02 * want + 1.0,
                "{} (weight {}): expected about {want:.1} slots, got {count}",
                b.id,
                b.weight
            );
        }
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let ids = ids(3);
        let backends: Vec<MaglevBackend<'_>> =
            ids.iter().zip([1, 0, 1]).map(|(id, weight)| MaglevBackend { id, weight }).collect();
        let counts = counts(&build_table(&backends, M), 3);
        assert_eq!(counts[1], 0, "a backend of weight 0 must get no slots, got {}", counts[1]);
        assert_eq!(counts[0] + counts[2], M as usize);
    }

    #[test]
    fn all_zero_or_none_gives_no_backend() {
        let ids = ids(2);
        let backends: Vec<MaglevBackend<'_>> = ids.iter().map(|id| MaglevBackend { id, weight: 0 }).collect();
        assert!(build_table(&backends, 7).iter().all(|&e| e == NO_BACKEND), "all weights 0: expected all NO_BACKEND");
        assert!(build_table(&[], 7).iter().all(|&e| e == NO_BACKEND), "no backends: expected all NO_BACKEND");
        assert!(build_table(&backends, 0).is_empty());
    }

    /// The rounds run to the end, without the event shortcut.
    fn build_by_rounds(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
        let mut turns = turns(backends, &turn_order(backends), size);
        let mut table = vec![NO_BACKEND; size as usize];
        while table.contains(&NO_BACKEND) {
            for turn in turns.iter_mut().filter(|t| t.left > 0) {
                let slot = turn.advance(size) as usize;
                if table[slot] == NO_BACKEND {
                    table[slot] = turn.index;
                    turn.left -= 1;
                }
            }
        }
        table
    }

    #[test]
    fn event_tail_matches_the_rounds() {
        let ids = ids(300);
        for (n, size, weighted) in
            [(1, 13, false), (5, 251, true), (40, 4099, false), (100, 65537, false), (300, 65537, true), (7, 100, true)]
        {
            let backends: Vec<MaglevBackend<'_>> = ids[..n]
                .iter()
                .enumerate()
                .map(|(i, id)| MaglevBackend { id, weight: if weighted { 1 + (i as u32 * 7) % 10 } else { 1 } })
                .collect();
            assert!(
                build_table(&backends, size) == build_by_rounds(&backends, size),
                "{n} backends, size {size}, weighted {weighted}: the event tail differs from running the rounds"
            );
        }
    }

    #[test]
    fn modular_inverse() {
        for (a, m) in [(1, 7), (3, 7), (51_583, 65537), (65_536, 65537), (7, 100)] {
            assert_eq!(u64::from(a) * mod_inverse(a, m) % u64::from(m), 1, "{a}^-1 mod {m}");
        }
    }

    #[test]
    fn non_prime_sizes_still_fill() {
        for size in [1, 2, 4, 9, 12, 100, 65536] {
            let ids = ids(5);
            let table = build_table(&equal(&ids), size);
            assert!(table.iter().all(|&e| e < 5), "size {size}: a slot was left empty");
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]);
        assert!(is_prime(65537) && is_prime(lb_common::MAX_TABLE_SIZE) && is_prime(4_294_967_291));
        assert!(!is_prime(65536) && !is_prime(65535) && !is_prime(1_046_529) && !is_prime(u32::MAX));
    }
}
