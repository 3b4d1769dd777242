//! The learned address → VTEP table of an overlay gateway (the kernel VXLAN
//! device's forwarding database, keyed by IP instead of MAC): which VTEP, and
//! which inner MAC, a tenant address was last seen behind.
//!
//! Traffic from the overlay teaches it (inner source address + VNI → outer
//! source address and inner source MAC); traffic from the outside to a
//! tenant address uses it to find the VTEP to encapsulate to. Every worker
//! learns and every worker looks up, so the table is shared:
//!
//! * a fixed-capacity, 4-way set-associative array of atomics (no `unsafe`,
//!   no allocation after [`Fdb::new`]);
//! * readers never wait: each slot has a sequence counter (odd while it is
//!   written); a reader that sees it odd or changed across its reads treats
//!   the slot as absent for this packet;
//! * writers never wait either: a set has a writer flag taken with one
//!   compare-and-swap; a learner that finds it taken gives up on this packet
//!   (counted as `busy`; the flow's next packet learns). One writer per set
//!   at a time means an address is never inserted twice.
//!
//! Entries expire `age_s` seconds after the last packet that confirmed them
//! (confirmation rewrites only the timestamp, at most once a second). A new
//! entry takes an empty or expired way, else the least recently confirmed
//! one (counted as `evicted`). Learning of new addresses is bounded per
//! learner by a token bucket ([`LearnBudget`]). Static entries are not kept
//! here: the caller looks them up first and does not learn addresses it has
//! a static entry for, so no amount of learning can displace one.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

const WAYS: usize = 4;

/// Where an address lives: the VTEP's underlay address and the MAC its
/// frames carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VtepEntry {
    /// IPv4 as the low 32 bits, or IPv6.
    pub vtep: u128,
    pub vtep_v6: bool,
    pub mac: [u8; 6],
}

/// One learned entry, as [`Fdb::entries`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedEntry {
    pub vni: u32,
    pub addr: u128,
    pub v6: bool,
    pub at: VtepEntry,
    /// Seconds since the last confirming packet.
    pub age_s: u32,
    /// Times the address moved to another VTEP or MAC.
    pub moves: u32,
}

/// What [`Fdb::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Known at that VTEP, confirmed recently: nothing written.
    Known,
    /// Known at that VTEP: its timestamp renewed.
    Refreshed,
    /// A new entry.
    New,
    /// A new entry that replaced the least recently used one of a full set.
    Evicted,
    /// Known at another VTEP or MAC: moved.
    Moved,
    /// New, but the learner's budget is spent: not learned.
    Limited,
    /// Another learner was writing the set: not learned this time.
    Busy,
}

/// Counters of the table (totals over all learners).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbCounters {
    pub new: u64,
    pub moved: u64,
    pub evicted: u64,
    pub limited: u64,
    pub busy: u64,
}

#[derive(Default)]
struct Slot {
    seq: AtomicU32,
    /// Seconds (the table's clock) of the last confirmation; 0 = empty.
    seen: AtomicU32,
    /// `vni | v6 << 24 | vtep_v6 << 25`.
    kind: AtomicU32,
    moves: AtomicU32,
    addr_hi: AtomicU64,
    addr_lo: AtomicU64,
    vtep_hi: AtomicU64,
    vtep_lo: AtomicU64,
    mac: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Set {
    writer: AtomicU32,
    slots: [Slot; WAYS],
}

/// The table (see the module doc).
pub struct Fdb {
    sets: Box<[Set]>,
    mask: usize,
    age_s: u32,
    new: AtomicU64,
    moved: AtomicU64,
    evicted: AtomicU64,
    limited: AtomicU64,
    busy: AtomicU64,
    flushes: AtomicU64,
}

impl std::fmt::Debug for Fdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdb")
            .field("capacity", &self.capacity())
            .field("age_s", &self.age_s)
            .finish()
    }
}

/// A learner's bound on new entries: `rate` per second with a burst of
/// `rate` (a token bucket; one per worker, no sharing).
#[derive(Clone, Copy, Debug)]
pub struct LearnBudget {
    rate: u32,
    tokens: u32,
    at_s: u32,
}

impl LearnBudget {
    /// `rate` new entries per second (0 = learn nothing new).
    pub fn new(rate: u32) -> LearnBudget {
        LearnBudget {
            rate,
            tokens: rate,
            at_s: 0,
        }
    }

    fn take(&mut self, now_s: u32) -> bool {
        if now_s != self.at_s {
            let refill = u64::from(now_s.wrapping_sub(self.at_s)) * u64::from(self.rate);
            self.tokens = (u64::from(self.tokens) + refill).min(u64::from(self.rate)) as u32;
            self.at_s = now_s;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

fn kind_of(vni: u32, v6: bool, vtep_v6: bool) -> u32 {
    (vni & 0xff_ffff) | (u32::from(v6) << 24) | (u32::from(vtep_v6) << 25)
}

fn mac_word(m: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&m);
    u64::from_le_bytes(b)
}

fn word_mac(w: u64) -> [u8; 6] {
    let b = w.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// A slot's contents as read under its sequence counter.
#[derive(Clone, Copy)]
struct Read {
    seen: u32,
    kind: u32,
    addr: u128,
    at: VtepEntry,
    moves: u32,
}

impl Slot {
    /// A consistent read, or `None` while (or if) a writer changed it.
    #[inline]
    fn read(&self) -> Option<Read> {
        let s0 = self.seq.load(Ordering::Acquire);
        if s0 & 1 != 0 {
            return None;
        }
        let seen = self.seen.load(Ordering::Relaxed);
        let kind = self.kind.load(Ordering::Relaxed);
        let addr = (u128::from(self.addr_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.addr_lo.load(Ordering::Relaxed));
        let vtep = (u128::from(self.vtep_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.vtep_lo.load(Ordering::Relaxed));
        let mac = self.mac.load(Ordering::Relaxed);
        let moves = self.moves.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s0 {
            return None;
        }
        Some(Read {
            seen,
            kind,
            addr,
            at: VtepEntry {
                vtep,
                vtep_v6: kind & (1 << 25) != 0,
                mac: word_mac(mac),
            },
            moves,
        })
    }

    /// Writes the slot (the caller holds the set's writer flag).
    fn write(&self, seen: u32, kind: u32, addr: u128, at: &VtepEntry, moves: u32) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.seen.store(seen, Ordering::Relaxed);
        self.kind.store(kind, Ordering::Relaxed);
        self.addr_hi.store((addr >> 64) as u64, Ordering::Relaxed);
        self.addr_lo.store(addr as u64, Ordering::Relaxed);
        self.vtep_hi
            .store((at.vtep >> 64) as u64, Ordering::Relaxed);
        self.vtep_lo.store(at.vtep as u64, Ordering::Relaxed);
        self.mac.store(mac_word(at.mac), Ordering::Relaxed);
        self.moves.store(moves, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

impl Fdb {
    /// A table of at least `capacity` entries (rounded up to a power of two,
    /// ≥ 64) whose entries live `age_s` seconds after their last confirmation.
    pub fn new(capacity: usize, age_s: u32) -> Fdb {
        let sets = capacity.max(64).next_power_of_two() / WAYS;
        Fdb {
            sets: (0..sets).map(|_| Set::default()).collect(),
            mask: sets - 1,
            age_s: age_s.max(1),
            new: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    pub fn age_s(&self) -> u32 {
        self.age_s
    }

    #[inline]
    fn set_of(&self, vni: u32, addr: u128, v6: bool) -> &Set {
        let a = (addr as u64) ^ ((addr >> 64) as u64).rotate_left(29);
        let h =
            (a ^ (u64::from(kind_of(vni, v6, false)) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        &self.sets[(h >> 32) as usize & self.mask]
    }

    /// The address of the set `addr` of tenant `vni` lives in, for a
    /// prefetch ahead of [`Fdb::lookup`] / [`Fdb::learn`] (the caller's
    /// prefetch instruction; this crate has no `unsafe`).
    #[inline]
    pub fn set_addr(&self, vni: u32, addr: u128, v6: bool) -> *const u8 {
        std::ptr::from_ref(self.set_of(vni, addr, v6)).cast()
    }

    #[inline]
    fn live(&self, seen: u32, now_s: u32) -> bool {
        // Learners' clocks may lag one another by a second: a stamp ahead
        // of `now_s` is live.
        seen != 0 && (now_s.wrapping_sub(seen) as i32) < self.age_s as i32
    }

    /// Where `addr` (IPv4 in the low 32 bits unless `v6`) of tenant `vni`
    /// was last seen, if that was less than the age ago. `now_s` is the
    /// caller's clock in seconds, which must never be 0 (start it at 1).
    #[inline]
    pub fn lookup(&self, vni: u32, addr: u128, v6: bool, now_s: u32) -> Option<VtepEntry> {
        let set = self.set_of(vni, addr, v6);
        for s in &set.slots {
            if let Some(r) = s.read() {
                if r.addr == addr
                    && r.kind & 0x1ff_ffff == kind_of(vni, v6, false)
                    && self.live(r.seen, now_s)
                {
                    return Some(r.at);
                }
            }
        }
        None
    }

    /// Notes that `addr` of tenant `vni` was seen behind `at` at `now_s`
    /// (≠ 0). New addresses spend one of `budget`'s tokens.
    #[inline]
    pub fn learn(
        &self,
        vni: u32,
        addr: u128,
        v6: bool,
        at: &VtepEntry,
        now_s: u32,
        budget: &mut LearnBudget,
    ) -> Learned {
        let set = self.set_of(vni, addr, v6);
        let k = kind_of(vni, v6, at.vtep_v6);
        // The common case, read-only: known there and confirmed this second.
        for s in &set.slots {
            if let Some(r) = s.read() {
                if r.addr == addr
                    && r.kind & 0x1ff_ffff == kind_of(vni, v6, false)
                    && self.live(r.seen, now_s)
                    && r.at == *at
                {
                    if r.seen == now_s {
                        return Learned::Known;
                    }
                    // Only the timestamp: no sequence change needed (a
                    // reader sees the old or the new second, both live). A
                    // compare-and-swap, so an entry a writer replaced or
                    // flushed meanwhile is not revived.
                    let _ = s.seen.compare_exchange(
                        r.seen,
                        now_s,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return Learned::Refreshed;
                }
            }
        }
        self.learn_slow(set, k, vni, addr, v6, at, now_s, budget)
    }

    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn learn_slow(
        &self,
        set: &Set,
        k: u32,
        vni: u32,
        addr: u128,
        v6: bool,
        at: &VtepEntry,
        now_s: u32,
        budget: &mut LearnBudget,
    ) -> Learned {
        if set
            .writer
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Learned::Busy;
        }
        let key = kind_of(vni, v6, false);
        // Under the writer flag the slots only change by our hand.
        let mut same = None;
        let mut free = None;
        let mut oldest: Option<(usize, u32)> = None;
        for (w, s) in set.slots.iter().enumerate() {
            let r = s.read().expect("no other writer while the flag is held");
            let live = self.live(r.seen, now_s);
            let mine = r.seen != 0 && r.addr == addr && r.kind & 0x1ff_ffff == key;
            if mine && live {
                same = Some((w, r));
                break;
            }
            if mine {
                // Its own expired entry: reused before any other way.
                free = Some(w);
            } else if !live {
                free.get_or_insert(w);
            } else {
                let age = (now_s.wrapping_sub(r.seen) as i32).max(0) as u32;
                if oldest.is_none_or(|(_, a)| age > a) {
                    oldest = Some((w, age));
                }
            }
        }
        let out = if let Some((w, r)) = same {
            if r.at == *at {
                set.slots[w].seen.store(now_s, Ordering::Relaxed);
                Learned::Refreshed
            } else {
                set.slots[w].write(now_s, k, addr, at, r.moves.saturating_add(1));
                self.moved.fetch_add(1, Ordering::Relaxed);
                Learned::Moved
            }
        } else if !budget.take(now_s) {
            self.limited.fetch_add(1, Ordering::Relaxed);
            Learned::Limited
        } else if let Some(w) = free {
            set.slots[w].write(now_s, k, addr, at, 0);
            self.new.fetch_add(1, Ordering::Relaxed);
            Learned::New
        } else {
            let (w, _) = oldest.expect("a full set has an oldest way");
            set.slots[w].write(now_s, k, addr, at, 0);
            self.new.fetch_add(1, Ordering::Relaxed);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            Learned::Evicted
        };
        set.writer.store(0, Ordering::Release);
        out
    }

    /// Forgets learned entries of `vni` (all tenants when `None`); returns how
    /// many. Learners racing with it may keep an entry they were writing.
    pub fn flush(&self, vni: Option<u32>) -> usize {
        let mut n = 0;
        for set in self.sets.iter() {
            while set
                .writer
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            for s in &set.slots {
                if let Some(r) = s.read() {
                    if r.seen != 0 && vni.is_none_or(|v| r.kind & 0xff_ffff == v) {
                        s.write(0, 0, 0, &VtepEntry::default(), 0);
                        n += 1;
                    }
                }
            }
            set.writer.store(0, Ordering::Release);
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        n
    }

    /// The live entries (a scan of the whole table: for the control side).
    pub fn entries(&self, now_s: u32) -> Vec<LearnedEntry> {
        let mut out = Vec::new();
        for set in self.sets.iter() {
            for s in &set.slots {
                let Some(r) = s.read() else { continue };
                if !self.live(r.seen, now_s) {
                    continue;
                }
                out.push(LearnedEntry {
                    vni: r.kind & 0xff_ffff,
                    addr: r.addr,
                    v6: r.kind & (1 << 24) != 0,
                    at: r.at,
                    age_s: (now_s.wrapping_sub(r.seen) as i32).max(0) as u32,
                    moves: r.moves,
                });
            }
        }
        out
    }

    pub fn counters(&self) -> FdbCounters {
        FdbCounters {
            new: self.new.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(v: u32, m: u8) -> VtepEntry {
        VtepEntry {
            vtep: u128::from(v),
            vtep_v6: false,
            mac: [2, 0, 0, 0, 0, m],
        }
    }

    #[test]
    fn test_learn_lookup_move_and_age() {
        let f = Fdb::new(64, 10);
        let mut b = LearnBudget::new(100);
        assert_eq!(f.lookup(100, 5, false, 1), None);
        assert_eq!(f.learn(100, 5, false, &at(1, 1), 1, &mut b), Learned::New);
        assert_eq!(f.lookup(100, 5, false, 1), Some(at(1, 1)));
        // Another VNI, or the v6 address with the same bits, is another key.
        assert_eq!(f.lookup(101, 5, false, 1), None);
        assert_eq!(f.lookup(100, 5, true, 1), None);
        assert_eq!(f.learn(100, 5, false, &at(1, 1), 1, &mut b), Learned::Known);
        assert_eq!(
            f.learn(100, 5, false, &at(1, 1), 5, &mut b),
            Learned::Refreshed
        );
        assert_eq!(f.learn(100, 5, false, &at(2, 1), 6, &mut b), Learned::Moved);
        assert_eq!(f.learn(100, 5, false, &at(2, 9), 6, &mut b), Learned::Moved);
        assert_eq!(f.lookup(100, 5, false, 6), Some(at(2, 9)));
        let e = f.entries(7);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].moves, e[0].age_s), (2, 1));
        // Aged out 10 s after the last confirmation.
        assert_eq!(f.lookup(100, 5, false, 15), Some(at(2, 9)));
        assert_eq!(f.lookup(100, 5, false, 16), None);
        assert!(f.entries(16).is_empty());
        let c = f.counters();
        assert_eq!((c.new, c.moved), (1, 2));
    }

    #[test]
    fn test_budget_bounds_new_entries_not_moves() {
        let f = Fdb::new(4096, 300);
        let mut b = LearnBudget::new(10);
        let mut learned = 0;
        for a in 0..100u128 {
            if f.learn(7, a, false, &at(1, 1), 1, &mut b) == Learned::New {
                learned += 1;
            }
        }
        assert_eq!(learned, 10);
        assert_eq!(f.counters().limited, 90);
        // Known addresses still move with no budget left.
        assert_eq!(f.learn(7, 0, false, &at(2, 1), 1, &mut b), Learned::Moved);
        // The next second brings 10 more.
        let n = (100..200u128)
            .filter(|&a| f.learn(7, a, false, &at(1, 1), 2, &mut b) == Learned::New)
            .count();
        assert_eq!(n, 10);
    }

    #[test]
    fn test_full_set_evicts_least_recently_confirmed() {
        // 64 entries = 16 sets: 80 addresses overfill some set.
        let f = Fdb::new(64, 1000);
        let mut b = LearnBudget::new(1_000_000);
        for a in 0..80u128 {
            f.learn(1, a, false, &at(a as u32, 1), 1 + a as u32, &mut b);
        }
        let c = f.counters();
        assert_eq!(c.new, 80);
        assert!(c.evicted >= 16, "{c:?}");
        assert_eq!(f.entries(100).len() as u64, 80 - c.evicted);
        // The newest address of each set survived.
        assert_eq!(f.lookup(1, 79, false, 100), Some(at(79, 1)));
    }

    #[test]
    fn test_flush_by_vni() {
        let f = Fdb::new(256, 100);
        let mut b = LearnBudget::new(1000);
        for a in 0..10u128 {
            f.learn(1, a, false, &at(1, 1), 1, &mut b);
            f.learn(2, a, false, &at(1, 1), 1, &mut b);
        }
        assert_eq!(f.flush(Some(1)), 10);
        assert_eq!(f.lookup(1, 3, false, 1), None);
        assert_eq!(f.lookup(2, 3, false, 1), Some(at(1, 1)));
        assert_eq!(f.flush(None), 10);
        assert!(f.entries(1).is_empty());
    }

    #[test]
    fn test_concurrent_learners_and_readers_see_whole_entries() {
        // Two learners move the same addresses between two VTEPs while a
        // reader checks that every entry it sees is one that was written.
        let f = std::sync::Arc::new(Fdb::new(256, 1000));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let learners: Vec<_> = (0..2u32)
            .map(|w| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut b = LearnBudget::new(u32::MAX);
                    for i in 0..20_000u32 {
                        let a = u128::from(i % 50);
                        let v = 1 + (i + w) % 2;
                        f.learn(9, a, false, &at(v, v as u8), 1 + i / 1000, &mut b);
                    }
                })
            })
            .collect();
        let reader = {
            let (f, stop) = (f.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for a in 0..50u128 {
                        if let Some(e) = f.lookup(9, a, false, 20) {
                            assert!(e == at(1, 1) || e == at(2, 2), "{e:?}");
                            seen += 1;
                        }
                    }
                }
                seen
            })
        };
        for l in learners {
            l.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        // Never two entries for one address.
        let e = f.entries(20);
        let mut addrs: Vec<u128> = e.iter().map(|e| e.addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), e.len());
        assert_eq!(e.len(), 50);
    }
}
