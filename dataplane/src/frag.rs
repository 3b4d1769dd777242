//! Fragments of VIP traffic: a datagram's later fragments (no ports) go where
//! its first fragment (with ports) went.
//!
//! No reassembly: fragments are forwarded as fragments. A first fragment to a
//! service records its ports in a per-worker *association table* under the
//! datagram's identity (VNI, addresses, protocol, IPv4 identification / IPv6
//! fragment identification); a later fragment to a VIP address finds them
//! there, gets them written into its flow key, and from then on is a packet
//! of its flow like any other: the ACL sees its ports and the LB stage finds
//! the flow's backend in the flow table (or Maglev computes the same one),
//! and it is encapsulated like the first (same outer source port too).
//!
//! A later fragment that arrives before its first (reordering) is *held*:
//! the worker keeps the packet itself (no copy, no allocation: a fixed array
//! of slots, [`HoldBuffer`]) for at most `frag_hold_ms`, and sends it on
//! through the rest of the pipeline (ACL, LB, route) on a later burst once
//! the first fragment has made the association, or drops it as
//! `frag_unmatched` when it does not come in time. A full hold buffer drops
//! the fragment at once (`frag_hold_full`).
//!
//! Only fragments pay: the inner parse notes the fragment kind of every
//! packet, the pipeline runs this stage only for a burst that has one, and
//! the worker looks at the hold buffer only while it holds something.
//!
//! State is per worker: fragments of one datagram must reach one worker,
//! which holds when the queues are spread by outer addresses or by an outer
//! UDP source port the sender computes without L4 ports for fragments (as
//! Linux's flow dissector does for IPv4 and IPv6 fragments).

use crate::burst::{Meta, Verdict};
use crate::io::Packet;
pub use crate::stats::FragCounters;
use crate::tables::{FragConfig, Tables};

/// The identity of a fragmented datagram (RFC 791 §3.2: source,
/// destination, protocol and identification; plus the tenant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u128,
    pub dst: u128,
    pub id: u32,
    pub vni: u32,
    pub proto: u8,
    pub v6: bool,
}

impl FragKey {
    /// The datagram `m` (a fragment after the inner parse) belongs to.
    #[inline]
    pub fn of(m: &Meta) -> FragKey {
        FragKey {
            src: m.key.src,
            dst: m.key.dst,
            id: m.frag_id,
            vni: m.key.vni,
            proto: m.key.proto,
            v6: m.key.v6,
        }
    }

    #[inline]
    fn hash(&self) -> u64 {
        let a = (self.src as u64) ^ ((self.src >> 64) as u64).rotate_left(17);
        let b = (self.dst as u64).rotate_left(29) ^ ((self.dst >> 64) as u64).rotate_left(47);
        let c = (u64::from(self.id) << 32)
            | (u64::from(self.vni) << 8)
            | u64::from(self.proto)
            | (u64::from(self.v6) << 40);
        let h = (a ^ b ^ c).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 29)
    }
}

/// Ways per set of the association table.
pub const WAYS: usize = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Assoc {
    key: FragKey,
    sport: u16,
    dport: u16,
    /// Milliseconds on the table's clock after which the entry is dead
    /// (0 = empty).
    expires: u64,
}

/// The association table: set-associative ([`WAYS`] ways), an entry lives
/// `frag_timeout_ms` after the last fragment that used it; a new
/// association takes an empty or expired way, else the way closest to its
/// timeout (the least recently used: every use renews the timeout).
#[derive(Debug, Default)]
pub struct FragTable {
    slots: Vec<Assoc>,
    timeout_ms: u64,
}

impl FragTable {
    /// A table of `entries` (rounded up to a power of two, at least [`WAYS`]).
    pub fn new(entries: usize, timeout_ms: u64) -> FragTable {
        let n = entries.max(WAYS).next_power_of_two();
        FragTable {
            slots: vec![Assoc::default(); n],
            timeout_ms: timeout_ms.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn set(&self, k: &FragKey) -> usize {
        (k.hash() as usize) & (self.slots.len() - 1) & !(WAYS - 1)
    }

    /// The ports of `k`'s datagram, renewing its entry; `None` if unknown or
    /// expired at `now` (ms).
    #[inline]
    pub fn lookup(&mut self, k: &FragKey, now: u64) -> Option<(u16, u16)> {
        if self.slots.is_empty() {
            return None;
        }
        let s = self.set(k);
        let timeout = self.timeout_ms;
        self.slots[s..s + WAYS]
            .iter_mut()
            .find(|a| a.expires > now && a.key == *k)
            .map(|a| {
                a.expires = now + timeout;
                (a.sport, a.dport)
            })
    }

    /// Records `k → (sport, dport)` at `now`; true if it replaced a live
    /// entry of another datagram (the set was full).
    #[inline]
    pub fn insert(&mut self, k: &FragKey, sport: u16, dport: u16, now: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let s = self.set(k);
        let expires = now + self.timeout_ms;
        let ways = &mut self.slots[s..s + WAYS];
        let i = ways
            .iter()
            .position(|a| a.expires > now && a.key == *k)
            .or_else(|| ways.iter().position(|a| a.expires <= now));
        let (i, evicted) = match i {
            Some(i) => (i, false),
            None => {
                let i = (0..WAYS).min_by_key(|&i| ways[i].expires).unwrap_or(0);
                (i, true)
            }
        };
        ways[i] = Assoc {
            key: *k,
            sport,
            dport,
            expires,
        };
        evicted
    }

    /// Live entries at `now` (a scan: tests and telemetry only).
    pub fn live(&self, now: u64) -> usize {
        self.slots.iter().filter(|a| a.expires > now).count()
    }
}

/// The pipeline stage between the inner parse and the ACL, run only for
/// bursts with a fragment: first fragments to a service make associations,
/// later fragments to a VIP address get their datagram's ports or are held
/// (`Verdict::Hold`; the worker moves them to its [`HoldBuffer`]).
#[derive(Debug, Default)]
pub struct Frag {
    pub table: FragTable,
    pub counters: FragCounters,
    epoch: Option<std::time::Instant>,
    /// Associations made since the worker last looked at its hold buffer.
    pub fresh: bool,
}

impl Frag {
    /// Allocates the association table for `t` (before the first burst, or
    /// when the configured size changes).
    pub fn prepare(&mut self, t: &Tables) {
        let want = t.frag.table_entries.max(WAYS).next_power_of_two();
        if self.table.capacity() != want || self.table.timeout_ms != t.frag.timeout_ms.max(1) {
            self.table = FragTable::new(t.frag.table_entries, t.frag.timeout_ms);
        }
        if self.epoch.is_none() {
            self.epoch = Some(std::time::Instant::now());
        }
    }

    /// Microseconds on this worker's fragment clock.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.epoch.map_or(0, |e| e.elapsed().as_micros() as u64)
    }

    /// Runs over a burst that holds at least one fragment.
    #[cold]
    #[inline(never)]
    pub fn process<P: Packet>(
        &mut self,
        t: &Tables,
        _pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        if t.lb.is_empty() {
            return;
        }
        self.prepare(t);
        let now = self.now_us() / 1000;
        // First fragments first, so that a later fragment ahead of its
        // first in the same burst is not held.
        for (m, _) in meta
            .iter()
            .zip(v.iter())
            .filter(|(m, v)| **v == Verdict::Tx && m.frag == vxlan::FragKind::First)
        {
            if t.lb.lookup_service(&lb_key(&m.key)).is_some() {
                let k = FragKey::of(m);
                self.counters.table_full +=
                    u64::from(self.table.insert(&k, m.key.sport, m.key.dport, now));
                self.counters.first += 1;
                self.fresh = true;
            }
        }
        for (m, v) in meta.iter_mut().zip(v.iter_mut()) {
            if *v != Verdict::Tx || m.frag != vxlan::FragKind::Later || !t.is_frag_vip(&m.key) {
                continue;
            }
            match self.table.lookup(&FragKey::of(m), now) {
                Some((sport, dport)) => {
                    m.key.sport = sport;
                    m.key.dport = dport;
                    self.counters.associated += 1;
                }
                None => *v = Verdict::Hold,
            }
        }
    }

    /// The ports for a held fragment's datagram, if its first fragment has
    /// come (written into `m`, counted as associated and released).
    #[inline]
    fn release(&mut self, m: &mut Meta, now_ms: u64) -> bool {
        match self.table.lookup(&FragKey::of(m), now_ms) {
            Some((sport, dport)) => {
                m.key.sport = sport;
                m.key.dport = dport;
                self.counters.associated += 1;
                self.counters.released += 1;
                true
            }
            None => false,
        }
    }
}

fn lb_key(k: &vxlan::FlowKey) -> lb::FlowKey {
    lb::FlowKey {
        vni: k.vni,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        v6: k.v6,
    }
}

struct HeldFrag<P> {
    pkt: P,
    meta: Meta,
    /// Microseconds on the fragment clock after which it is dropped.
    deadline: u64,
}

/// The worker's held fragments: a fixed number of slots allocated when the
/// worker starts (held packets keep their own buffers: the I/O pools have
/// slack for [`MAX_HOLD_SLOTS`] of them beyond two full bursts).
pub struct HoldBuffer<P> {
    slots: Vec<Option<HeldFrag<P>>>,
    len: usize,
    /// Earliest deadline among the held (u64::MAX when empty).
    next_deadline: u64,
}

/// Upper bound of `frag_hold_slots`.
pub const MAX_HOLD_SLOTS: usize = crate::io::MAX_HELD;

/// What the worker does with what [`HoldBuffer::service`] returns.
pub enum Out<P> {
    /// Its first fragment came: run it through the rest of the pipeline.
    Release(P, Meta),
    /// Its time ran out: drop as `frag_unmatched`.
    Expired(P),
}

impl<P: Packet> HoldBuffer<P> {
    pub fn new(slots: usize) -> HoldBuffer<P> {
        HoldBuffer {
            slots: (0..slots.min(MAX_HOLD_SLOTS)).map(|_| None).collect(),
            len: 0,
            next_deadline: u64::MAX,
        }
    }

    /// Fragments held now.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds `pkt` until `deadline` (µs); gives it back when every slot is taken.
    pub fn push(&mut self, pkt: P, meta: Meta, deadline: u64) -> Result<(), P> {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(s) => {
                *s = Some(HeldFrag {
                    pkt,
                    meta,
                    deadline,
                });
                self.len += 1;
                self.next_deadline = self.next_deadline.min(deadline);
                Ok(())
            }
            None => Err(pkt),
        }
    }

    /// True when [`service`](Self::service) has something to do: an
    /// association was made since the last look (`frag.fresh`), or a
    /// deadline passed.
    #[inline(always)]
    pub fn due(&self, frag: &Frag, now_us: u64) -> bool {
        self.len != 0 && (frag.fresh || now_us >= self.next_deadline)
    }

    /// Hands each held fragment whose datagram now has an association, or
    /// whose deadline passed at `now_us`, to `each` (at most `max`).
    pub fn service(
        &mut self,
        frag: &mut Frag,
        now_us: u64,
        max: usize,
        mut each: impl FnMut(Out<P>),
    ) {
        frag.fresh = false;
        let now_ms = now_us / 1000;
        let mut next = u64::MAX;
        let mut n = 0;
        for s in self.slots.iter_mut() {
            let Some(h) = s else { continue };
            if n < max && frag.release(&mut h.meta, now_ms) {
                let h = s.take().map(|h| (h.pkt, h.meta));
                if let Some((pkt, meta)) = h {
                    each(Out::Release(pkt, meta));
                }
                self.len -= 1;
                n += 1;
            } else if n < max && now_us >= h.deadline {
                if let Some(h) = s.take() {
                    each(Out::Expired(h.pkt));
                }
                self.len -= 1;
                n += 1;
            } else {
                next = next.min(h.deadline);
            }
        }
        if n >= max {
            // Not everything was looked at: look again next burst.
            frag.fresh = true;
        }
        self.next_deadline = next;
    }

    /// Everything still held (the worker is stopping).
    pub fn drain(&mut self, mut each: impl FnMut(P)) {
        for s in self.slots.iter_mut() {
            if let Some(h) = s.take() {
                each(h.pkt);
            }
        }
        self.len = 0;
        self.next_deadline = u64::MAX;
    }
}

/// The hold deadline of a fragment held at `now_us` under `cfg`.
#[inline]
pub fn deadline(cfg: &FragConfig, now_us: u64) -> u64 {
    now_us + cfg.hold_ms * 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::buf::HeapBuf;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: 0x0a00_0001,
            dst: 0xc0a8_0001,
            id,
            vni: 5,
            proto: 17,
            v6: false,
        }
    }

    #[test]
    fn test_table_lookup_insert_expire() {
        let mut t = FragTable::new(16, 1000);
        assert_eq!(t.lookup(&key(1), 0), None);
        assert!(!t.insert(&key(1), 1000, 53, 0));
        assert_eq!(t.lookup(&key(1), 500), Some((1000, 53)));
        // Renewed at 500: alive until 1500.
        assert_eq!(t.lookup(&key(1), 1400), Some((1000, 53)));
        assert_eq!(t.lookup(&key(1), 2400), None, "expired");
        assert_eq!(t.lookup(&key(2), 0), None);
        // A new first fragment of the same identity replaces the ports.
        assert!(!t.insert(&key(1), 7, 8, 3000));
        assert!(!t.insert(&key(1), 9, 10, 3001));
        assert_eq!(t.lookup(&key(1), 3002), Some((9, 10)));
        assert_eq!(t.live(3002), 1);
        for f in [
            FragKey { vni: 6, ..key(1) },
            FragKey { proto: 6, ..key(1) },
            FragKey { v6: true, ..key(1) },
            FragKey { src: 9, ..key(1) },
        ] {
            assert_eq!(t.lookup(&f, 3002), None, "{f:?}");
        }
    }

    #[test]
    fn test_table_full_evicts_the_oldest_and_counts() {
        let mut t = FragTable::new(WAYS, 1000);
        for i in 0..WAYS as u32 {
            assert!(!t.insert(&key(i), i as u16, 0, u64::from(i)));
        }
        // A fifth datagram in a 4-entry table: replaces the oldest (id 0).
        assert!(t.insert(&key(99), 99, 0, 10));
        assert_eq!(t.lookup(&key(0), 11), None);
        for i in 1..WAYS as u32 {
            assert_eq!(t.lookup(&key(i), 11), Some((i as u16, 0)));
        }
        assert_eq!(t.lookup(&key(99), 11), Some((99, 0)));
        // Once they expire, a new one replaces no live entry.
        assert!(!t.insert(&key(100), 1, 1, 5000));
    }

    fn meta(id: u32) -> Meta {
        let mut m = Meta::default();
        m.key.src = 0x0a00_0001;
        m.key.dst = 0xc0a8_0001;
        m.key.vni = 5;
        m.key.proto = 17;
        m.frag = vxlan::FragKind::Later;
        m.frag_id = id;
        m
    }

    #[test]
    fn test_hold_buffer_bounded_released_and_expired() {
        let mut f = Frag {
            table: FragTable::new(64, 1000),
            ..Default::default()
        };
        let mut h: HoldBuffer<HeapBuf> = HoldBuffer::new(2);
        let pkt = || HeapBuf::with_capacity(64);
        assert!(h.push(pkt(), meta(1), 5_000).is_ok());
        assert!(h.push(pkt(), meta(2), 7_000).is_ok());
        assert!(h.push(pkt(), meta(3), 7_000).is_err(), "bounded");
        assert_eq!(h.len(), 2);
        assert!(!h.due(&f, 4_000), "nothing new, no deadline passed");
        // The first fragment of datagram 2 comes at 4 ms.
        f.table.insert(&FragKey::of(&meta(2)), 4444, 53, 4);
        f.fresh = true;
        assert!(h.due(&f, 4_000));
        let mut out = Vec::new();
        h.service(&mut f, 4_000, 64, |o| out.push(o));
        assert_eq!(out.len(), 1);
        match &out[0] {
            Out::Release(_, m) => assert_eq!((m.key.sport, m.key.dport, m.frag_id), (4444, 53, 2)),
            Out::Expired(_) => panic!("released"),
        }
        assert_eq!(h.len(), 1);
        assert!(!h.due(&f, 4_999));
        assert!(h.due(&f, 5_000), "datagram 1's deadline");
        out.clear();
        h.service(&mut f, 5_000, 64, |o| out.push(o));
        assert!(matches!(out[..], [Out::Expired(_)]));
        assert!(h.is_empty());
        assert_eq!((f.counters.associated, f.counters.released), (1, 1));
        // A slot freed is used again; drain gives back the rest.
        assert!(h.push(pkt(), meta(3), 9_000).is_ok());
        let mut n = 0;
        h.drain(|_| n += 1);
        assert_eq!((n, h.len()), (1, 0));
    }
}
