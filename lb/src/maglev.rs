//! Maglev lookup-table population (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4) as pure functions.
//!
//! * Each backend has a permutation of the `M` table slots given by an
//!   `(offset, skip)` pair: `perm[j] = (offset + j * skip) mod M`. With `M` prime
//!   and `1 <= skip < M` every permutation visits every slot exactly once.
//! * [`populate`] is the paper's Pseudocode 1: backends take turns in input order
//!   and each claims its next unclaimed preferred slot until the table is full.
//! * [`populate_weighted`] is Envoy's weighted variant (see
//!   `shared/testdata/maglev/VECTORS.md`): in iteration `it = 1, 2, ...` a backend
//!   with normalised weight `w` that has already claimed `k` slots is skipped when
//!   `it * w < k * max_w`. We evaluate that test in exact integer arithmetic
//!   (`it * weight < k * max_weight`, both sides multiplied by the weight sum), so
//!   the result cannot depend on floating-point rounding and is the same on every
//!   machine. With equal weights it degenerates to [`populate`].
//! * [`Permutation::from_key`] is Envoy's hashing: `offset = XXH64(key, 0) mod M`,
//!   `skip = XXH64(key, 1) mod (M - 1) + 1`. The production key of a backend is
//!   the canonical text of its IP address (`IpAddr`'s `Display`), and callers sort
//!   backends by key bytes before filling, so a table depends only on the *set*
//!   of backends and their weights — never on the order they were added, nor on
//!   any random seed (several gateways with one configuration agree).
//!
//! The fill never materialises the `N × M` permutation matrix: each backend keeps
//! its current position and adds `skip` (mod `M`) per step, and slot occupancy is
//! a bitmap (8 KiB for `M = 65537`, so it stays in L1).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Index of a backend in the input slice given to [`populate`] (`u16` keeps the
/// table small: 128 KiB for `M = 65537`).
pub type BackendIdx = u16;

/// The largest number of backends a table can hold.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// The table size the paper and Envoy use by default.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// The largest table size accepted (a prime close to 2^24; 32 MiB of `u16`).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// Errors from table population.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// `M` must be prime for every `(offset, skip)` to be a full permutation.
    #[error("table size {0} is not prime (e.g. 65537 or 655373 are)")]
    NotPrime(u32),
    /// `M` above [`MAX_TABLE_SIZE`].
    #[error("table size {0} is larger than the maximum {MAX_TABLE_SIZE}")]
    TooLarge(u32),
    /// No backend (with a positive weight) to fill the table with.
    #[error("no backend with a positive weight")]
    NoBackends,
    /// More backends than slots, or more than [`MAX_BACKENDS`].
    #[error("{n} backends do not fit a table of size {m} (at most min(M, {MAX_BACKENDS}))")]
    TooManyBackends {
        /// Number of backends given.
        n: usize,
        /// Table size.
        m: u32,
    },
    /// An explicit permutation outside `offset < M`, `1 <= skip < M`.
    #[error("backend {index}: offset {offset} / skip {skip} invalid for table size {m}")]
    BadPermutation {
        /// Position of the backend in the input.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its skip.
        skip: u32,
        /// Table size.
        m: u32,
    },
}

/// Deterministic primality test (trial division; `M` is at most 2^24).
pub fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    if m & 1 == 0 {
        return m == 2;
    }
    let m = u64::from(m);
    let mut d = 3u64;
    while d * d <= m {
        if m.checked_rem(d) == Some(0) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks a table size: prime and at most [`MAX_TABLE_SIZE`].
pub fn check_table_size(m: u32) -> Result<(), MaglevError> {
    if m > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge(m));
    }
    if !is_prime(m) {
        return Err(MaglevError::NotPrime(m));
    }
    Ok(())
}

/// A backend's preference list over the table slots: `perm[j] = (offset + j*skip) mod M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    /// First preferred slot, `< M`.
    pub offset: u32,
    /// Step between preferred slots, `1 <= skip < M`.
    pub skip: u32,
}

impl Permutation {
    /// Envoy's scheme: `offset = XXH64(key, 0) mod M`, `skip = XXH64(key, 1) mod (M-1) + 1`.
    /// `m` must be at least 2.
    pub fn from_key(key: &[u8], m: u32) -> Self {
        let m = u64::from(m.max(2));
        let offset = (xxh64(key, 0) % m) as u32;
        let skip = (xxh64(key, 1) % (m - 1)) as u32 + 1;
        Permutation { offset, skip }
    }

    /// The `j`-th preferred slot.
    pub fn nth(&self, j: u64, m: u32) -> u32 {
        let m = u64::from(m);
        ((u64::from(self.offset) + (j % m) * u64::from(self.skip)) % m) as u32
    }
}

/// A backend as the weighted fill sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Its permutation.
    pub perm: Permutation,
    /// Its weight; 0 means it gets no slot.
    pub weight: u32,
}

/// Fills a table of size `m` round-robin over `perms` (paper Pseudocode 1).
/// Entry `i` of the result is the index in `perms` of the backend owning slot `i`.
/// Every backend gets `⌊M/N⌋` or `⌈M/N⌉` slots.
pub fn populate(perms: &[Permutation], m: u32) -> Result<Vec<BackendIdx>, MaglevError> {
    check_inputs(perms.iter().copied(), perms.len(), m)?;
    let mut fill = Fill::new(perms.iter().copied(), m);
    'outer: loop {
        for i in 0..perms.len() {
            fill.claim(i);
            if fill.full() {
                break 'outer;
            }
        }
    }
    Ok(fill.table)
}

/// Fills a table of size `m` with Envoy's weighted round-robin over `backends`
/// (see the module docs). Backends with weight 0 get no slot; the others get a
/// share of `M` proportional to their weight (equal weights ⇒ exactly [`populate`]).
pub fn populate_weighted(
    backends: &[WeightedBackend],
    m: u32,
) -> Result<Vec<BackendIdx>, MaglevError> {
    check_inputs(backends.iter().map(|b| b.perm), backends.len(), m)?;
    let max_w = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    if max_w == 0 {
        return Err(MaglevError::NoBackends);
    }
    let mut fill = Fill::new(backends.iter().map(|b| b.perm), m);
    if backends.iter().all(|b| b.weight == max_w) {
        // Every backend is eligible in every iteration: plain round robin.
        'outer: loop {
            for i in 0..backends.len() {
                fill.claim(i);
                if fill.full() {
                    break 'outer;
                }
            }
        }
        return Ok(fill.table);
    }
    // Event-driven form of the iteration loop: a backend with weight w that has
    // claimed k slots is next eligible in iteration max(it + 1, ceil(k*max_w/w)).
    // Popping (iteration, index) in ascending order replays exactly the order of
    // the plain loop, in O(M log N) instead of O(iterations × N).
    let max_w = u128::from(max_w);
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, _)| Reverse((1u64, i as u32)))
        .collect();
    let mut claimed = vec![0u64; backends.len()];
    while let Some(Reverse((it, i))) = heap.pop() {
        let i = i as usize;
        fill.claim(i);
        if fill.full() {
            break;
        }
        claimed[i] += 1;
        let w = u128::from(backends[i].weight);
        let need = (u128::from(claimed[i]) * max_w).div_ceil(w);
        let next = (it + 1).max(u64::try_from(need).unwrap_or(u64::MAX));
        heap.push(Reverse((next, i as u32)));
    }
    Ok(fill.table)
}

fn check_inputs(
    perms: impl Iterator<Item = Permutation>,
    n: usize,
    m: u32,
) -> Result<(), MaglevError> {
    check_table_size(m)?;
    if n == 0 {
        return Err(MaglevError::NoBackends);
    }
    if n > MAX_BACKENDS || n > m as usize {
        return Err(MaglevError::TooManyBackends { n, m });
    }
    for (index, p) in perms.enumerate() {
        if p.offset >= m || p.skip == 0 || p.skip >= m {
            return Err(MaglevError::BadPermutation {
                index,
                offset: p.offset,
                skip: p.skip,
                m,
            });
        }
    }
    Ok(())
}

/// Fill state: the table, an occupancy bitmap and each backend's next position.
///
/// Two phases, same result. While many slots are free a backend walks its
/// permutation and tests each slot (the paper's loop). Near the end that walk
/// costs ~M/K probes for K free slots (most of the M·ln M total), so once K
/// drops to sqrt(M)/2 each claim instead scans the K free slots and takes the
/// one earliest in the backend's permutation: slot `e` is at position
/// `(e - offset) * skip⁻¹ mod M`, and every slot before the backend's current
/// position is already taken, so the earliest free one is exactly the slot the
/// walk would have reached. (Tested against the plain walk below.)
struct Fill {
    table: Vec<BackendIdx>,
    used: Vec<u64>,
    next: Vec<(u32, u32)>, // (position, skip)
    offsets: Vec<u32>,
    m: u32,
    filled: u32,
    tail_at: u32,
    tail: Option<Tail>,
}

struct Tail {
    free: Vec<u32>,
    inv_skip: Vec<u64>,
    barrett: u64,
}

impl Fill {
    fn new(perms: impl Iterator<Item = Permutation>, m: u32) -> Self {
        let perms: Vec<Permutation> = perms.collect();
        Fill {
            table: vec![0; m as usize],
            used: vec![0; (m as usize).div_ceil(64)],
            next: perms.iter().map(|p| (p.offset, p.skip)).collect(),
            offsets: perms.iter().map(|p| p.offset).collect(),
            m,
            filled: 0,
            tail_at: (f64::from(m).sqrt() / 2.0) as u32,
            tail: None,
        }
    }

    fn full(&self) -> bool {
        self.filled == self.m
    }

    /// Backend `i` claims its next unclaimed preferred slot. Only called while
    /// the table has a free slot, and a full permutation reaches every slot, so
    /// the walk ends.
    #[inline]
    fn claim(&mut self, i: usize) {
        if let Some(tail) = &mut self.tail {
            let c = tail.claim(i, self.offsets[i], self.m);
            self.table[c as usize] = i as BackendIdx;
            self.filled += 1;
            return;
        }
        let (mut pos, skip) = self.next[i];
        loop {
            let c = pos as usize;
            pos += skip;
            if pos >= self.m {
                pos -= self.m;
            }
            let (word, bit) = (c / 64, 1u64 << (c % 64));
            if self.used[word] & bit == 0 {
                self.used[word] |= bit;
                self.table[c] = i as BackendIdx;
                self.filled += 1;
                break;
            }
        }
        self.next[i] = (pos, skip);
        if self.m - self.filled <= self.tail_at && !self.full() {
            self.enter_tail();
        }
    }

    fn enter_tail(&mut self) {
        let m = self.m;
        let free = (0..m)
            .filter(|&c| self.used[c as usize / 64] & (1u64 << (c % 64)) == 0)
            .collect();
        let inv_skip = self
            .next
            .iter()
            .map(|&(_, skip)| mod_inverse(u64::from(skip), u64::from(m)))
            .collect();
        self.tail = Some(Tail {
            free,
            inv_skip,
            barrett: u64::MAX / u64::from(m),
        });
    }
}

impl Tail {
    /// Takes the free slot earliest in backend `i`'s permutation.
    fn claim(&mut self, i: usize, offset: u32, m: u32) -> u32 {
        let (m64, inv) = (u64::from(m), self.inv_skip[i]);
        let mut best = (u64::MAX, 0usize);
        for (k, &e) in self.free.iter().enumerate() {
            let d = if e >= offset {
                e - offset
            } else {
                e + m - offset
            };
            let rank = mul_mod(u64::from(d), inv, m64, self.barrett);
            if rank < best.0 {
                best = (rank, k);
            }
        }
        self.free.swap_remove(best.1)
    }
}

/// `a * b mod m` for `a, b < m < 2^24` by Barrett reduction (`mu = ⌊2^64/m⌋`):
/// no division on the fill's hot path.
#[inline]
fn mul_mod(a: u64, b: u64, m: u64, mu: u64) -> u64 {
    let x = a * b; // < 2^48
    let q = ((u128::from(x) * u128::from(mu)) >> 64) as u64;
    let mut r = x - q * m;
    while r >= m {
        r -= m;
    }
    r
}

/// Inverse of `a` modulo the prime `m` (`0 < a < m`), by extended Euclid.
fn mod_inverse(a: u64, m: u64) -> u64 {
    let (mut old_r, mut r) = (a as i64, m as i64);
    let (mut old_s, mut s) = (1i64, 0i64);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    old_s.rem_euclid(m as i64) as u64
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline]
fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline]
fn xxh_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh_round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Standard XXH64 (Yann Collet's xxHash, 64-bit variant) of `data` with `seed`.
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len() as u64;
    let mut rest = data;
    let mut h = if rest.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (k, acc) in v.iter_mut().enumerate() {
                *acc = xxh_round(*acc, read_u64(&rest[k * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = xxh_merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h ^= xxh_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^= h >> 32;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_known_values() {
        // Reference values of the xxHash specification / reference implementation.
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&m| is_prime(m)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(is_prime(655373));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65536));
        assert!(!is_prime(655371));
        assert_eq!(check_table_size(65536), Err(MaglevError::NotPrime(65536)));
        assert!(check_table_size(MAX_TABLE_SIZE + 2).is_err());
    }

    #[test]
    fn permutation_is_full_cycle() {
        let m = 101;
        let p = Permutation::from_key(b"10.0.0.1", m);
        let mut seen = vec![false; m as usize];
        for j in 0..u64::from(m) {
            seen[p.nth(j, m) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn rejects_bad_inputs() {
        let p = Permutation { offset: 0, skip: 1 };
        assert_eq!(populate(&[], 7), Err(MaglevError::NoBackends));
        assert_eq!(populate(&[p], 8), Err(MaglevError::NotPrime(8)));
        assert!(matches!(
            populate(&[Permutation { offset: 7, skip: 1 }], 7),
            Err(MaglevError::BadPermutation { .. })
        ));
        assert!(matches!(
            populate(&[Permutation { offset: 0, skip: 0 }], 7),
            Err(MaglevError::BadPermutation { .. })
        ));
        assert!(matches!(
            populate(&[p; 4], 3),
            Err(MaglevError::TooManyBackends { .. })
        ));
        let zero = WeightedBackend { perm: p, weight: 0 };
        assert_eq!(populate_weighted(&[zero], 7), Err(MaglevError::NoBackends));
    }

    /// The plain algorithm, straight from the definitions (permutation by
    /// `nth`, Envoy's weighted rule in exact arithmetic, no tail phase).
    fn reference(backends: &[WeightedBackend], m: u32) -> Vec<BackendIdx> {
        let max_w = backends.iter().map(|b| u64::from(b.weight)).max().unwrap();
        let mut table = vec![None; m as usize];
        let mut next = vec![0u64; backends.len()];
        let mut claimed = vec![0u64; backends.len()];
        let mut filled = 0;
        let mut it = 0u64;
        while filled < m {
            it += 1;
            for (i, b) in backends.iter().enumerate() {
                if b.weight == 0 || it * u64::from(b.weight) < claimed[i] * max_w {
                    continue;
                }
                loop {
                    let c = b.perm.nth(next[i], m) as usize;
                    next[i] += 1;
                    if table[c].is_none() {
                        table[c] = Some(i as BackendIdx);
                        break;
                    }
                }
                claimed[i] += 1;
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        table.into_iter().map(|e| e.unwrap()).collect()
    }

    #[test]
    fn matches_the_plain_algorithm() {
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for &m in &[7u32, 13, 251, 1021, 4099] {
            for n in [1usize, 2, 3, 10, 37] {
                if n > m as usize {
                    continue;
                }
                for weighted in [false, true] {
                    let backends: Vec<WeightedBackend> = (0..n)
                        .map(|i| WeightedBackend {
                            perm: Permutation::from_key(format!("b{i}-{}", rnd()).as_bytes(), m),
                            weight: if weighted { 1 + rnd() % 9 } else { 3 },
                        })
                        .collect();
                    let want = reference(&backends, m);
                    assert_eq!(
                        populate_weighted(&backends, m).unwrap(),
                        want,
                        "m={m} n={n}"
                    );
                    if !weighted {
                        let perms: Vec<Permutation> = backends.iter().map(|b| b.perm).collect();
                        assert_eq!(populate(&perms, m).unwrap(), want, "m={m} n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn modular_helpers() {
        let m = 65537u64;
        for a in [1u64, 2, 3, 12345, 65536] {
            let inv = mod_inverse(a, m);
            assert_eq!(a * inv % m, 1);
        }
        let mu = u64::MAX / m;
        for (a, b) in [(65536u64, 65536u64), (0, 5), (12345, 54321), (65535, 2)] {
            assert_eq!(mul_mod(a, b, m, mu), a * b % m);
        }
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let m = 101;
        let a = WeightedBackend {
            perm: Permutation::from_key(b"a", m),
            weight: 3,
        };
        let b = WeightedBackend {
            perm: Permutation::from_key(b"b", m),
            weight: 0,
        };
        let t = populate_weighted(&[a, b], m).unwrap();
        assert!(t.iter().all(|&i| i == 0));
    }
}
