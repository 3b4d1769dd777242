//! Backend choices other gateways of a fleet made for their new flows, where
//! this gateway's workers find them without a lock: when ECMP moves a flow
//! here and the local flow table has no entry, the shared choice is used if
//! that backend is still eligible, else Maglev picks as usual.
//!
//! A fixed-capacity, 4-way set-associative table of `(flow hash, backend
//! address, time)` entries (a set's hashes in one cache line, so looking up
//! an absent flow costs one line), written by **one** thread (the fleet sync
//! receiver) and read by any number of workers. Each slot is guarded by a
//! sequence counter (a seqlock): the writer makes it odd, writes, makes it
//! even; a reader that sees it odd or changed across its reads ignores the
//! slot (a miss, never a torn entry). Everything is an atomic: no `unsafe`,
//! no lock, no allocation after [`SharedFlows::new`].
//!
//! Entries older than the reader's `max_age_ms` are not used; the writer
//! replaces, in order, the same flow's entry, an empty or expired slot, or
//! the oldest one of the set. The flow hash ([`crate::flow_hash`]) is the same
//! on every gateway, so it names the flow across the fleet.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

const WAYS: usize = 4;

/// One set's flow hashes and slot sequence counters: one cache line, the
/// only one a lookup of an absent flow touches.
#[derive(Default)]
#[repr(align(64))]
struct Head {
    hash: [AtomicU64; WAYS],
    seq: [AtomicU32; WAYS],
}

/// A slot's value, read only when its hash matched.
#[derive(Default)]
struct Body {
    addr_hi: AtomicU64,
    addr_lo: AtomicU64,
    /// `stamp_ms << 1 | v6`; 0 = empty.
    meta: AtomicU64,
}

/// The store (see the module doc).
pub struct SharedFlows {
    heads: Box<[Head]>,
    bodies: Box<[Body]>,
    mask: usize,
    /// The writer's clock (ms), which readers use too.
    now_ms: AtomicU64,
    /// Lookups that found a usable entry (counted by [`SharedFlows::note_used`]).
    used: AtomicU64,
}

impl std::fmt::Debug for SharedFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFlows")
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// What [`SharedFlows::install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Into an empty or expired slot.
    New,
    /// The flow's entry was there and was updated.
    Updated,
    /// A live entry of another flow was replaced (the set was full).
    Evicted,
}

impl SharedFlows {
    /// A store of at least `capacity` entries (rounded up to a power of two, ≥ 64).
    pub fn new(capacity: usize) -> SharedFlows {
        let sets = capacity.max(64).next_power_of_two() / WAYS;
        SharedFlows {
            heads: (0..sets).map(|_| Head::default()).collect(),
            bodies: (0..sets * WAYS).map(|_| Body::default()).collect(),
            mask: sets - 1,
            now_ms: AtomicU64::new(1),
            used: AtomicU64::new(0),
        }
    }

    /// Number of entries.
    pub fn capacity(&self) -> usize {
        self.bodies.len()
    }

    /// Sets the clock (the writer does, every few milliseconds; never 0).
    pub fn set_now(&self, ms: u64) {
        self.now_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// The clock.
    #[inline]
    pub fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// The set of `hash`: its head and its first body index.
    #[inline]
    fn set(&self, hash: u64) -> (&Head, usize) {
        // The low bits pick the set in flow tables too; use high ones here.
        let s = ((hash >> 40) as usize) & self.mask;
        (&self.heads[s], s * WAYS)
    }

    /// Reads way `w` consistently if it holds `hash`: `(addr, v6, stamp)`.
    #[inline]
    fn read(&self, head: &Head, base: usize, w: usize, hash: u64) -> Option<(u128, bool, u64)> {
        let q1 = head.seq[w].load(Ordering::Acquire);
        if q1 & 1 != 0 || head.hash[w].load(Ordering::Relaxed) != hash {
            return None;
        }
        let b = &self.bodies[base + w];
        let hi = b.addr_hi.load(Ordering::Relaxed);
        let lo = b.addr_lo.load(Ordering::Relaxed);
        let m = b.meta.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if head.seq[w].load(Ordering::Relaxed) != q1
            || head.hash[w].load(Ordering::Relaxed) != hash
            || m == 0
        {
            return None;
        }
        Some(((u128::from(hi) << 64) | u128::from(lo), m & 1 != 0, m >> 1))
    }

    /// The backend another gateway chose for the flow with this hash, if it
    /// was announced at most `max_age_ms` ago: `(address, v6)`.
    #[inline]
    pub fn lookup(&self, hash: u64, max_age_ms: u64) -> Option<(u128, bool)> {
        let now = self.now();
        let (head, base) = self.set(hash);
        for w in 0..WAYS {
            if let Some((addr, v6, stamp)) = self.read(head, base, w, hash) {
                if now.saturating_sub(stamp) <= max_age_ms {
                    return Some((addr, v6));
                }
            }
        }
        None
    }

    /// Counts one use of a shared entry (a worker took its backend).
    #[inline]
    pub fn note_used(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    /// Shared entries workers used.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Records a choice (the one writer only). Entries older than
    /// `max_age_ms` count as empty when choosing a slot.
    pub fn install(&self, hash: u64, addr: u128, v6: bool, max_age_ms: u64) -> Installed {
        let now = self.now();
        let (head, base) = self.set(hash);
        let mut pick = None;
        let mut oldest = (u64::MAX, 0usize);
        for w in 0..WAYS {
            let m = self.bodies[base + w].meta.load(Ordering::Relaxed);
            let stamp = m >> 1;
            if m != 0 && head.hash[w].load(Ordering::Relaxed) == hash {
                pick = Some((w, Installed::Updated));
                break;
            }
            if m == 0 || now.saturating_sub(stamp) > max_age_ms {
                if pick.is_none() {
                    pick = Some((w, Installed::New));
                }
            } else if stamp < oldest.0 {
                oldest = (stamp, w);
            }
        }
        let (w, how) = pick.unwrap_or((oldest.1, Installed::Evicted));
        let b = &self.bodies[base + w];
        let q = head.seq[w].load(Ordering::Relaxed);
        head.seq[w].store(q.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        head.hash[w].store(hash, Ordering::Relaxed);
        b.addr_hi.store((addr >> 64) as u64, Ordering::Relaxed);
        b.addr_lo.store(addr as u64, Ordering::Relaxed);
        b.meta.store((now << 1) | u64::from(v6), Ordering::Relaxed);
        head.seq[w].store(q.wrapping_add(2), Ordering::Release);
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn test_install_lookup_age_and_eviction() {
        let f = SharedFlows::new(64);
        assert_eq!(f.capacity(), 64);
        f.set_now(1000);
        assert_eq!(f.lookup(7 << 40, 10_000), None);
        assert_eq!(
            f.install(7 << 40, 0x0a00_0001, false, 10_000),
            Installed::New
        );
        assert_eq!(f.lookup(7 << 40, 10_000), Some((0x0a00_0001, false)));
        assert_eq!(
            f.install(7 << 40, 0x0a00_0002, false, 10_000),
            Installed::Updated
        );
        assert_eq!(f.lookup(7 << 40, 10_000), Some((0x0a00_0002, false)));
        // Same set (same high bits), other flows: fill the 4 ways, then evict the oldest.
        for (i, h) in [(7u64 << 40) | 1, (7 << 40) | 2, (7 << 40) | 3]
            .iter()
            .enumerate()
        {
            f.set_now(1001 + i as u64);
            assert_eq!(f.install(*h, 1, true, 10_000), Installed::New);
        }
        f.set_now(2000);
        assert_eq!(
            f.install((7 << 40) | 4, 9, false, 10_000),
            Installed::Evicted
        );
        assert_eq!(f.lookup(7 << 40, 10_000), None, "the oldest went");
        assert_eq!(f.lookup((7 << 40) | 1, 10_000), Some((1, true)));
        // Too old for this reader.
        f.set_now(20_000);
        assert_eq!(f.lookup((7 << 40) | 4, 10_000), None);
        assert_eq!(f.install((7 << 40) | 5, 5, false, 10_000), Installed::New);
    }

    #[test]
    fn test_readers_never_see_a_torn_entry() {
        // The writer keeps rewriting one flow with both address halves equal
        // and the v6 flag = their low bit; readers check every entry they get
        // is self-consistent.
        let f = Arc::new(SharedFlows::new(64));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (f, stop, seen) = (f.clone(), stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some((a, v6)) = f.lookup(1 << 40, u64::MAX) {
                            let hi = (a >> 64) as u64;
                            assert_eq!(hi, a as u64, "torn address");
                            assert_eq!(v6, hi & 1 == 1, "torn flag");
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        while seen.load(Ordering::Relaxed) < 100_000 && t0.elapsed().as_secs() < 10 {
            f.install(
                1 << 40,
                (u128::from(i) << 64) | u128::from(i),
                i & 1 == 1,
                u64::MAX,
            );
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(seen.load(Ordering::Relaxed) > 0);
    }
}
