//! Connection tracking for stateful rules: a bounded connection table per
//! worker that every worker can read without a lock.
//!
//! # Model
//!
//! * A connection is named by its [`ConnKey`]: VNI, protocol, family and the
//!   two endpoints (address, port) in canonical order (`lo` ≤ `hi`), so both
//!   directions of a flow give the same key. The entry remembers which
//!   endpoint sent the packet that created it (the *originator*); a packet
//!   from the other endpoint is a *reply*.
//! * [`ConnTables`] holds one [`Table`] per worker. Each table has **one
//!   writer**, the worker that owns it (through its [`Writer`], of which there
//!   is at most one per table: [`ConnTables::writer`] hands it out once), and
//!   any number of readers: a lookup tries the caller's own table first, then
//!   the other workers' (the reply of an overlay flow comes back from the
//!   outside with other outer headers, so RSS or fanout need not bring it to
//!   the worker that saw the request).
//! * Tables are 8-way set-associative: a set's tags and sequence counters fill
//!   one cache line (so a miss costs one line per table), bodies are read only
//!   when a tag matches. Each slot is guarded by a sequence counter (seqlock,
//!   as `lb::shared_flows`): the owner makes it odd, writes, makes it even; a
//!   reader that sees it odd or changed ignores the slot (a miss, never a torn
//!   key). Everything is an atomic: no `unsafe`, no lock, no CAS on insert.
//! * State that any worker's packets change (last seen, the TCP flags seen per
//!   direction) lives in atomics outside the seqlock: relaxed `store` of the
//!   last-seen time (only when it moved by [`LAST_SEEN_GRANULE_MS`] or more, so
//!   an established flow's hits are reads) and `fetch_or` of flag bits (only
//!   when a bit is new). Race, documented and accepted: a non-owner's update
//!   of an entry that the owner replaces at the same instant lands on the new
//!   entry. The owner only replaces *expired* entries, so this needs an entry
//!   to expire between a reader's check and its store (microseconds); the
//!   damage is one refreshed timestamp or a FIN/RST bit on the new entry
//!   (which then times out sooner, and its next packets re-create it).
//! * Bounded: a fixed number of entries per worker. An insert replaces only
//!   entries that are dead (timed out, flushed, or closed and re-opened); when
//!   the set has none, the insert fails ([`Insert::Full`]): the new flow is
//!   denied (counted as `ct_full` by the caller) and established ones keep
//!   their entries.
//! * Flush without writing the workers' tables: an entry records the value of
//!   a generation counter when it was created; [`ConnTables::flush`] moves a
//!   floor (for all VNIs, or for one VNI in a small fixed array of per-VNI
//!   floors), and entries born under a floor are dead.
//! * Time is the caller's: every call takes `now` in milliseconds on a clock
//!   all workers share (the dataplane uses one `Instant` for all of them;
//!   tests pass any number).
//!
//! # Timeouts and TCP
//!
//! An entry is dead once it has been idle (no packet in either direction)
//! longer than its state's timeout ([`Timeouts`]). TCP is tracked coarsely,
//! from the flags of the packets, like VPP's acl-plugin and Linux conntrack:
//! `syn_sent` (created by a SYN without ACK, no reply yet), `established` (a
//! reply was seen, or the entry was picked up mid-stream), `closing` (a FIN
//! was seen), `closed` (a RST was seen). A SYN without ACK from the
//! originator to a `closing` or `closed` connection ends the old entry (the
//! packet is then treated as new). A RST never creates an entry. UDP, ICMP
//! and other protocols have one idle timeout each (ICMP echo is tracked by
//! its identifier: the caller puts it in both ports of the key).
//!
//! ```
//! use acl::conntrack::{ConnKey, ConnTables, Insert, Timeouts};
//! use acl::Key;
//! let ct = ConnTables::new(2, 1024);
//! let (mut w0, w1) = (ct.writer(0).unwrap(), ct.writer(1).unwrap());
//! let to = Timeouts::default();
//! let req = Key { vni: 100, src: 0x0a00_0001, dst: 0x0a00_0002, sport: 40000, dport: 53, proto: 17, v6: false };
//! let (ck, fwd) = ConnKey::of(&req);
//! assert_eq!(w0.insert(&ck, fwd, 0, 1_000, &to), Insert::New);
//! // The reply, on the other worker: found in worker 0's table.
//! let (rk, rfwd) = ConnKey::of(&Key { src: req.dst, dst: req.src, sport: 53, dport: 40000, ..req });
//! assert_eq!(rk, ck);
//! let hit = w1.lookup(&rk, rfwd, 0, 2_000, &to).unwrap();
//! assert!(hit.reply && hit.remote);
//! ```

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::rule::Key;

/// TCP flag bits as in the header's flags byte.
pub mod tcp {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

const WAYS: usize = 8;

/// A hit refreshes an entry's last-seen time only when it is this much
/// older than `now`: an established flow's packets then only read the entry.
pub const LAST_SEEN_GRANULE_MS: u64 = 100;

/// How many per-VNI flushes can be in effect at once (a flush of all VNIs
/// clears them).
pub const MAX_VNI_FLOORS: usize = 64;

/// Default entries per worker.
pub const DEFAULT_CAPACITY: usize = 65536;

// Entry flag bits (the `flags` atomic).
/// Created by a packet other than a bare SYN (picked up mid-stream), or any
/// non-TCP entry.
const F_PICKED: u32 = 1 << 0;
/// A packet from the responder was seen.
const F_REPLIED: u32 = 1 << 1;
/// FIN from the `lo` / `hi` endpoint.
const F_FIN_LO: u32 = 1 << 2;
const F_FIN_HI: u32 = 1 << 3;
/// RST seen.
const F_RST: u32 = 1 << 4;
/// Ended by a re-opening SYN: dead.
const F_DEAD: u32 = 1 << 5;

/// Idle timeouts per state, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP: SYN seen, no reply yet.
    pub tcp_syn_ms: u64,
    /// TCP: a reply seen (or picked up mid-stream).
    pub tcp_established_ms: u64,
    /// TCP: a FIN seen.
    pub tcp_fin_ms: u64,
    /// TCP: a RST seen.
    pub tcp_rst_ms: u64,
    /// UDP.
    pub udp_ms: u64,
    /// ICMP and ICMPv6 (echo, by identifier; other messages by type-less key).
    pub icmp_ms: u64,
    /// Other IP protocols.
    pub other_ms: u64,
}

impl Default for Timeouts {
    /// Linux conntrack's and VPP acl-plugin's defaults, rounded: SYN 120 s,
    /// established 24 h (VPP's TCP idle; Linux uses 5 days), FIN 120 s, RST
    /// 10 s (Linux `close`), UDP 120 s (Linux `udp_stream`), ICMP 30 s, other
    /// 600 s (Linux `generic`).
    fn default() -> Self {
        Timeouts {
            tcp_syn_ms: 120_000,
            tcp_established_ms: 86_400_000,
            tcp_fin_ms: 120_000,
            tcp_rst_ms: 10_000,
            udp_ms: 120_000,
            icmp_ms: 30_000,
            other_ms: 600_000,
        }
    }
}

/// A connection's state, derived from the flags its packets carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// TCP: SYN from the originator, nothing from the responder yet.
    SynSent,
    /// TCP: both directions seen, or picked up mid-stream.
    Established,
    /// TCP: a FIN seen.
    Closing,
    /// TCP: a RST seen.
    Closed,
    /// Not TCP: alive until idle.
    Active,
}

impl State {
    /// Stable snake_case name (CLI, JSON, traces).
    pub fn name(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::Established => "established",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Active => "active",
        }
    }

    fn of(proto: u8, flags: u32) -> State {
        if proto != PROTO_TCP {
            State::Active
        } else if flags & F_RST != 0 {
            State::Closed
        } else if flags & (F_FIN_LO | F_FIN_HI) != 0 {
            State::Closing
        } else if flags & (F_PICKED | F_REPLIED) != 0 {
            State::Established
        } else {
            State::SynSent
        }
    }
}

impl Timeouts {
    /// The idle timeout of a `proto` connection in `state`.
    pub fn of(&self, proto: u8, state: State) -> u64 {
        match (proto, state) {
            (PROTO_TCP, State::SynSent) => self.tcp_syn_ms,
            (PROTO_TCP, State::Established | State::Active) => self.tcp_established_ms,
            (PROTO_TCP, State::Closing) => self.tcp_fin_ms,
            (PROTO_TCP, State::Closed) => self.tcp_rst_ms,
            (PROTO_UDP, _) => self.udp_ms,
            (PROTO_ICMP | PROTO_ICMPV6, _) => self.icmp_ms,
            _ => self.other_ms,
        }
    }
}

/// A connection, direction-independent: endpoints in canonical order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Tenant.
    pub vni: u32,
    /// The lower endpoint (address, then port).
    pub lo: u128,
    /// The higher endpoint.
    pub hi: u128,
    /// Port of `lo` (ICMP echo: the identifier).
    pub lo_port: u16,
    /// Port of `hi`.
    pub hi_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// IPv6?
    pub v6: bool,
}

impl ConnKey {
    /// The connection of a packet with key `k` and whether the packet goes
    /// from `lo` to `hi` ("forward" in the key's order, not the connection's).
    #[inline]
    pub fn of(k: &Key) -> (ConnKey, bool) {
        Self::with_ports(k, k.sport, k.dport)
    }

    /// [`ConnKey::of`] with the ports replaced (ICMP echo: both are the identifier).
    #[inline]
    pub fn with_ports(k: &Key, sport: u16, dport: u16) -> (ConnKey, bool) {
        let fwd = (k.src, sport) <= (k.dst, dport);
        let (lo, lo_port, hi, hi_port) = if fwd {
            (k.src, sport, k.dst, dport)
        } else {
            (k.dst, dport, k.src, sport)
        };
        (
            ConnKey {
                vni: k.vni,
                lo,
                hi,
                lo_port,
                hi_port,
                proto: k.proto,
                v6: k.v6,
            },
            fwd,
        )
    }

    /// The hash the tables place this connection by.
    #[inline]
    pub fn hash(&self) -> u64 {
        let a = (self.lo as u64) ^ ((self.lo >> 64) as u64).rotate_left(21);
        let b = (self.hi as u64).rotate_left(11) ^ ((self.hi >> 64) as u64).rotate_left(43);
        let c = (u64::from(self.lo_port) << 48)
            | (u64::from(self.hi_port) << 32)
            | (u64::from(self.proto) << 24)
            | (u64::from(self.v6) << 23) ^ u64::from(self.vni);
        let h = (a ^ b ^ c).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 29)
    }

    /// The ports, protocol and family packed as the body stores them.
    #[inline]
    fn packed(&self) -> u64 {
        (u64::from(self.lo_port) << 48)
            | (u64::from(self.hi_port) << 32)
            | (u64::from(self.proto) << 24)
            | (u64::from(self.v6) << 23)
    }
}

/// One set's tags and slot sequence counters: one cache line.
#[derive(Default)]
#[repr(align(64))]
struct Head {
    /// 0 = empty slot (tags are never 0).
    tag: [AtomicU32; WAYS],
    seq: [AtomicU32; WAYS],
}

/// A slot's key and state, read only when its tag matched.
#[derive(Default)]
struct Body {
    lo_hi: AtomicU64,
    lo_lo: AtomicU64,
    hi_hi: AtomicU64,
    hi_lo: AtomicU64,
    /// [`ConnKey::packed`] | originator-is-`hi` (bit 0).
    meta: AtomicU64,
    /// `vni << 32 | generation at creation`.
    vni_born: AtomicU64,
    created_ms: AtomicU64,
    // Written by any worker (see the module doc):
    last_ms: AtomicU64,
    flags: AtomicU32,
}

/// One worker's entries (allocated by its writer on first use).
#[derive(Default)]
pub struct Table {
    slots: OnceLock<Slots>,
    claimed: AtomicBool,
}

struct Slots {
    heads: Box<[Head]>,
    bodies: Box<[Body]>,
    mask: usize,
}

impl Slots {
    fn new(capacity: usize) -> Slots {
        let sets = capacity.max(WAYS).next_power_of_two() / WAYS;
        Slots {
            heads: (0..sets).map(|_| Head::default()).collect(),
            bodies: (0..sets * WAYS).map(|_| Body::default()).collect(),
            mask: sets - 1,
        }
    }

    #[inline]
    fn set(&self, h: u64) -> (usize, u32) {
        (((h >> 32) as usize) & self.mask, (h as u32).max(1))
    }
}

/// A consistent copy of one slot.
#[derive(Clone, Copy, Debug)]
struct Seen {
    key: ConnKey,
    orig_hi: bool,
    born: u32,
    created_ms: u64,
    last_ms: u64,
    flags: u32,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The packet came from the responder.
    pub reply: bool,
    /// The entry is in another worker's table.
    pub remote: bool,
    /// Whose table.
    pub worker: usize,
    /// The state after this packet.
    pub state: State,
}

/// What [`Writer::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// A new entry.
    New,
    /// A live entry of this connection was already in the own table.
    Exists,
    /// Not tracked (a TCP RST).
    NotTracked,
    /// The set has no free or dead slot: the connection is not tracked.
    Full,
}

/// One entry as [`ConnTables::for_each`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Whose table.
    pub worker: usize,
    /// The connection.
    pub key: ConnKey,
    /// The originator is the `hi` endpoint (else `lo`).
    pub orig_hi: bool,
    /// State.
    pub state: State,
    /// Since creation, ms.
    pub age_ms: u64,
    /// Since the last packet, ms.
    pub idle_ms: u64,
}

impl ConnInfo {
    /// (originator address, port), (responder address, port).
    pub fn endpoints(&self) -> ((u128, u16), (u128, u16)) {
        let lo = (self.key.lo, self.key.lo_port);
        let hi = (self.key.hi, self.key.hi_port);
        if self.orig_hi {
            (hi, lo)
        } else {
            (lo, hi)
        }
    }
}

/// Why a flush was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Too many per-VNI flushes since the last flush of all VNIs.
    #[error("64 per-VNI flushes are in effect: flush all VNIs (no --vni) first")]
    TooManyVniFlushes,
}

/// The connection tables of all workers (see the module doc).
pub struct ConnTables {
    tables: Box<[Table]>,
    capacity: usize,
    /// Generation counter: entries record it when created.
    generation: AtomicU32,
    /// Entries born before this are dead.
    floor_all: AtomicU32,
    /// Per-VNI floors: `vni << 32 | floor`, 0 = unused; the first
    /// `n_floors` slots are in use.
    floors: [AtomicU64; MAX_VNI_FLOORS],
    n_floors: AtomicU32,
    /// Serialises flushes (control side only; never taken by a worker).
    flush_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for ConnTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTables")
            .field("workers", &self.tables.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ConnTables {
    /// Tables for `workers` workers of at least `capacity` entries each
    /// (rounded up to a power of two, ≥ 8). Nothing is allocated until a
    /// worker's writer first inserts (or [`Writer::prepare`]s).
    pub fn new(workers: usize, capacity: usize) -> Arc<ConnTables> {
        Arc::new(ConnTables {
            tables: (0..workers.max(1)).map(|_| Table::default()).collect(),
            capacity: capacity.max(WAYS).next_power_of_two(),
            generation: AtomicU32::new(1),
            floor_all: AtomicU32::new(0),
            floors: std::array::from_fn(|_| AtomicU64::new(0)),
            n_floors: AtomicU32::new(0),
            flush_lock: std::sync::Mutex::new(()),
        })
    }

    /// Number of workers' tables.
    pub fn workers(&self) -> usize {
        self.tables.len()
    }

    /// Entries per worker.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The single writer of worker `me`'s table, or `None` if it was handed
    /// out already (and not dropped) or `me` is out of range.
    pub fn writer(self: &Arc<Self>, me: usize) -> Option<Writer> {
        let t = self.tables.get(me)?;
        if t.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Writer {
            ct: self.clone(),
            me,
        })
    }

    /// Ends connections: all of them, or those of one VNI. Entries are not
    /// written: they are dead from now on for every lookup, and their slots
    /// free for inserts.
    pub fn flush(&self, vni: Option<u32>) -> Result<(), FlushError> {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let floor = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        match vni {
            None => {
                self.floor_all.store(floor, Ordering::Release);
                // Per-VNI floors are all below it now.
                self.n_floors.store(0, Ordering::Release);
                for f in &self.floors {
                    f.store(0, Ordering::Relaxed);
                }
            }
            Some(v) => {
                let n = self.n_floors.load(Ordering::Acquire) as usize;
                let packed = (u64::from(v) << 32) | u64::from(floor);
                if let Some(f) = self.floors[..n]
                    .iter()
                    .find(|f| (f.load(Ordering::Relaxed) >> 32) as u32 == v)
                {
                    f.store(packed, Ordering::Release);
                } else if n < MAX_VNI_FLOORS {
                    self.floors[n].store(packed, Ordering::Release);
                    self.n_floors.store(n as u32 + 1, Ordering::Release);
                } else {
                    return Err(FlushError::TooManyVniFlushes);
                }
            }
        }
        Ok(())
    }

    /// Reads slot `w` of set `s` of `slots` consistently.
    #[inline]
    fn read(slots: &Slots, s: usize, w: usize, tag: Option<u32>) -> Option<Seen> {
        let head = &slots.heads[s];
        let q1 = head.seq[w].load(Ordering::Acquire);
        let t = head.tag[w].load(Ordering::Relaxed);
        if q1 & 1 != 0 || t == 0 || tag.is_some_and(|x| x != t) {
            return None;
        }
        let b = &slots.bodies[s * WAYS + w];
        let lo = (u128::from(b.lo_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(b.lo_lo.load(Ordering::Relaxed));
        let hi = (u128::from(b.hi_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(b.hi_lo.load(Ordering::Relaxed));
        let meta = b.meta.load(Ordering::Relaxed);
        let vni_born = b.vni_born.load(Ordering::Relaxed);
        let created_ms = b.created_ms.load(Ordering::Relaxed);
        let last_ms = b.last_ms.load(Ordering::Relaxed);
        let flags = b.flags.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if head.seq[w].load(Ordering::Relaxed) != q1 {
            return None;
        }
        Some(Seen {
            key: ConnKey {
                vni: (vni_born >> 32) as u32,
                lo,
                hi,
                lo_port: (meta >> 48) as u16,
                hi_port: (meta >> 32) as u16,
                proto: (meta >> 24) as u8,
                v6: (meta >> 23) & 1 != 0,
            },
            orig_hi: meta & 1 != 0,
            born: vni_born as u32,
            created_ms,
            last_ms,
            flags,
        })
    }

    /// Is an entry born at `born` for `vni` under a flush floor?
    #[inline]
    fn flushed(&self, vni: u32, born: u32) -> bool {
        if born < self.floor_all.load(Ordering::Acquire) {
            return true;
        }
        let n = self.n_floors.load(Ordering::Acquire) as usize;
        self.floors[..n.min(MAX_VNI_FLOORS)].iter().any(|f| {
            let f = f.load(Ordering::Acquire);
            (f >> 32) as u32 == vni && born < f as u32
        })
    }

    /// The state of `e` if it is alive at `now`.
    #[inline]
    fn alive(&self, e: &Seen, now: u64, to: &Timeouts) -> Option<State> {
        if e.flags & F_DEAD != 0 || self.flushed(e.key.vni, e.born) {
            return None;
        }
        let st = State::of(e.key.proto, e.flags);
        (now.saturating_sub(e.last_ms) <= to.of(e.key.proto, st)).then_some(st)
    }

    /// Finds the live entry of `k` in table `t`: (set, way, copy).
    #[inline]
    fn find(
        &self,
        t: usize,
        k: &ConnKey,
        h: u64,
        now: u64,
        to: &Timeouts,
    ) -> Option<(usize, usize, Seen, State)> {
        let slots = self.tables[t].slots.get()?;
        let (s, tag) = slots.set(h);
        for w in 0..WAYS {
            if let Some(e) = Self::read(slots, s, w, Some(tag)) {
                if e.key == *k {
                    if let Some(st) = self.alive(&e, now, to) {
                        return Some((s, w, e, st));
                    }
                }
            }
        }
        None
    }

    /// The addresses a lookup of a connection with hash `h` reads first (each
    /// allocated table's set head), for the caller to prefetch a burst's
    /// lines before looking its packets up (so their cache misses overlap).
    #[inline]
    pub fn heads(&self, h: u64, mut each: impl FnMut(*const u8)) {
        for t in self.tables.iter() {
            if let Some(slots) = t.slots.get() {
                let (s, _) = slots.set(h);
                each(std::ptr::from_ref(&slots.heads[s]).cast());
            }
        }
    }

    /// The bodies of the slots of table `t` whose tag matches hash `h` (read
    /// after [`ConnTables::heads`], when the head is in cache), to prefetch.
    #[inline]
    pub fn bodies(&self, t: usize, h: u64, mut each: impl FnMut(*const u8)) {
        let Some(slots) = self.tables.get(t).and_then(|x| x.slots.get()) else {
            return;
        };
        let (s, tag) = slots.set(h);
        for w in 0..WAYS {
            if slots.heads[s].tag[w].load(Ordering::Relaxed) == tag {
                each(std::ptr::from_ref(&slots.bodies[s * WAYS + w]).cast());
            }
        }
    }

    /// Looks `k` up (own table `me` first, then the others'), and notes the
    /// packet (`fwd`: it goes `lo` → `hi`; `tcp_flags`: its flags byte, 0
    /// for other protocols) in the entry. `None`: no live connection (the
    /// packet is new, or re-opens a closed TCP connection).
    #[inline]
    pub fn lookup(
        &self,
        me: usize,
        k: &ConnKey,
        fwd: bool,
        tcp_flags: u8,
        now: u64,
        to: &Timeouts,
    ) -> Option<Hit> {
        let h = k.hash();
        let n = self.tables.len();
        for i in 0..n {
            let t = if i == 0 {
                me
            } else if i <= me {
                i - 1
            } else {
                i
            };
            if let Some((s, w, e, st)) = self.find(t, k, h, now, to) {
                return self.note(t, t != me, s, w, &e, st, fwd, tcp_flags, now);
            }
        }
        None
    }

    /// Like [`ConnTables::lookup`], but changes nothing (explain, ICMP errors).
    pub fn peek(&self, me: usize, k: &ConnKey, fwd: bool, now: u64, to: &Timeouts) -> Option<Hit> {
        let h = k.hash();
        let n = self.tables.len();
        (0..n)
            .map(|i| (me + i) % n)
            .find_map(|t| self.find(t, k, h, now, to).map(|f| (t, f)))
            .map(|(t, (_, _, e, st))| Hit {
                reply: fwd == e.orig_hi,
                remote: t != me,
                worker: t,
                state: st,
            })
    }

    /// Records a packet in a live entry.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn note(
        &self,
        t: usize,
        remote: bool,
        s: usize,
        w: usize,
        e: &Seen,
        st: State,
        fwd: bool,
        tcp_flags: u8,
        now: u64,
    ) -> Option<Hit> {
        let slots = self.tables[t].slots.get()?;
        let b = &slots.bodies[s * WAYS + w];
        // The packet comes from `hi` when it goes hi → lo.
        let from_hi = !fwd;
        let reply = from_hi != e.orig_hi;
        let mut bits = 0;
        if reply {
            bits |= F_REPLIED;
        }
        if e.key.proto == PROTO_TCP {
            if tcp_flags & tcp::SYN != 0
                && tcp_flags & tcp::ACK == 0
                && !reply
                && matches!(st, State::Closing | State::Closed)
            {
                // A new connection on the same 5-tuple: this one is over.
                b.flags.fetch_or(F_DEAD, Ordering::Relaxed);
                return None;
            }
            if tcp_flags & tcp::RST != 0 {
                bits |= F_RST;
            }
            if tcp_flags & tcp::FIN != 0 {
                bits |= if from_hi { F_FIN_HI } else { F_FIN_LO };
            }
        }
        let mut flags = e.flags;
        if flags & bits != bits {
            flags |= b.flags.fetch_or(bits, Ordering::Relaxed) | bits;
        }
        if now >= e.last_ms + LAST_SEEN_GRANULE_MS {
            b.last_ms.store(now, Ordering::Relaxed);
        }
        Some(Hit {
            reply,
            remote,
            worker: t,
            state: State::of(e.key.proto, flags),
        })
    }

    /// Calls `each` with every live entry of every worker (a consistent copy
    /// of each; entries change while the scan runs).
    pub fn for_each(&self, now: u64, to: &Timeouts, mut each: impl FnMut(&ConnInfo)) {
        for (t, table) in self.tables.iter().enumerate() {
            let Some(slots) = table.slots.get() else {
                continue;
            };
            for s in 0..slots.heads.len() {
                for w in 0..WAYS {
                    let Some(e) = Self::read(slots, s, w, None) else {
                        continue;
                    };
                    if let Some(state) = self.alive(&e, now, to) {
                        each(&ConnInfo {
                            worker: t,
                            key: e.key,
                            orig_hi: e.orig_hi,
                            state,
                            age_ms: now.saturating_sub(e.created_ms),
                            idle_ms: now.saturating_sub(e.last_ms),
                        });
                    }
                }
            }
        }
    }

    /// Live entries per worker.
    pub fn live(&self, now: u64, to: &Timeouts) -> Vec<usize> {
        let mut v = vec![0; self.tables.len()];
        self.for_each(now, to, |c| v[c.worker] += 1);
        v
    }
}

/// The one writer of a worker's table; also that worker's reader handle.
pub struct Writer {
    ct: Arc<ConnTables>,
    me: usize,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("worker", &self.me).finish()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.ct.tables[self.me]
            .claimed
            .store(false, Ordering::Release);
    }
}

impl Writer {
    /// The tables.
    pub fn tables(&self) -> &Arc<ConnTables> {
        &self.ct
    }

    /// Whose table this writes.
    pub fn worker(&self) -> usize {
        self.me
    }

    /// Allocates the own table now (else the first insert does).
    pub fn prepare(&self) {
        self.ct.tables[self.me]
            .slots
            .get_or_init(|| Slots::new(self.ct.capacity));
    }

    /// [`ConnTables::lookup`] from this worker.
    #[inline]
    pub fn lookup(
        &self,
        k: &ConnKey,
        fwd: bool,
        tcp_flags: u8,
        now: u64,
        to: &Timeouts,
    ) -> Option<Hit> {
        self.ct.lookup(self.me, k, fwd, tcp_flags, now, to)
    }

    /// Creates the entry of `k`, with the sender of this packet (`fwd`: it
    /// goes `lo` → `hi`, so `lo` is the originator) as originator, in this
    /// worker's table. Only dead slots are reused.
    pub fn insert(
        &mut self,
        k: &ConnKey,
        fwd: bool,
        tcp_flags: u8,
        now: u64,
        to: &Timeouts,
    ) -> Insert {
        let tcp = k.proto == PROTO_TCP;
        if tcp && tcp_flags & tcp::RST != 0 {
            return Insert::NotTracked;
        }
        let ct = &*self.ct;
        let slots = ct.tables[self.me]
            .slots
            .get_or_init(|| Slots::new(ct.capacity));
        let h = k.hash();
        let (s, tag) = slots.set(h);
        let mut free = None;
        for w in 0..WAYS {
            match ConnTables::read(slots, s, w, None) {
                // Only this thread writes here: a slot is never mid-write.
                None => {
                    free.get_or_insert(w);
                }
                Some(e) => {
                    if ct.alive(&e, now, to).is_none() {
                        free.get_or_insert(w);
                    } else if e.key == *k {
                        return Insert::Exists;
                    }
                }
            }
        }
        let Some(w) = free else {
            return Insert::Full;
        };
        let flags = if tcp && !(tcp_flags & tcp::SYN != 0 && tcp_flags & tcp::ACK == 0) {
            F_PICKED
        } else if tcp {
            0
        } else {
            F_PICKED
        };
        let born = ct.generation.load(Ordering::Acquire);
        let head = &slots.heads[s];
        let b = &slots.bodies[s * WAYS + w];
        let q = head.seq[w].load(Ordering::Relaxed);
        head.seq[w].store(q.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        head.tag[w].store(tag, Ordering::Relaxed);
        b.lo_hi.store((k.lo >> 64) as u64, Ordering::Relaxed);
        b.lo_lo.store(k.lo as u64, Ordering::Relaxed);
        b.hi_hi.store((k.hi >> 64) as u64, Ordering::Relaxed);
        b.hi_lo.store(k.hi as u64, Ordering::Relaxed);
        b.meta
            .store(k.packed() | u64::from(!fwd), Ordering::Relaxed);
        b.vni_born.store(
            (u64::from(k.vni) << 32) | u64::from(born),
            Ordering::Relaxed,
        );
        b.created_ms.store(now, Ordering::Relaxed);
        b.last_ms.store(now, Ordering::Relaxed);
        b.flags.store(flags, Ordering::Relaxed);
        head.seq[w].store(q.wrapping_add(2), Ordering::Release);
        Insert::New
    }
}

/// What the stateful classifier decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A packet of a known connection: allowed without the rules.
    Known(Hit),
    /// Allowed by rule `matched` (or by the default, `NO_MATCH`); `created`
    /// says whether a connection entry was made (stateful rule).
    Allowed {
        /// Rule index or [`crate::NO_MATCH`].
        matched: u32,
        /// An entry was created (or was there already).
        created: bool,
    },
    /// Denied by the rules.
    Denied {
        /// Rule index or [`crate::NO_MATCH`].
        matched: u32,
    },
    /// Allowed by a stateful rule, but the table had no room: denied.
    Full {
        /// Rule index.
        matched: u32,
    },
}

/// What the stateful decision needs of a classifier (the compiled
/// [`crate::Classifier`] and the [`crate::LiveClassifier`] with its delta).
pub trait Rules {
    fn classify(&self, key: &Key) -> u32;
    fn action(&self, matched: u32, vni: u32) -> crate::Action;
    fn get(&self, idx: u32) -> Option<&crate::Rule>;
}

impl Rules for crate::Classifier {
    fn classify(&self, key: &Key) -> u32 {
        crate::Classifier::classify(self, key)
    }
    fn action(&self, matched: u32, vni: u32) -> crate::Action {
        crate::Classifier::action(self, matched, vni)
    }
    fn get(&self, idx: u32) -> Option<&crate::Rule> {
        crate::Classifier::get(self, idx)
    }
}

impl Rules for crate::LiveClassifier {
    fn classify(&self, key: &Key) -> u32 {
        crate::LiveClassifier::classify(self, key)
    }
    fn action(&self, matched: u32, vni: u32) -> crate::Action {
        crate::LiveClassifier::action(self, matched, vni)
    }
    fn get(&self, idx: u32) -> Option<&crate::Rule> {
        crate::LiveClassifier::get(self, idx)
    }
}

/// The second half of the stateful classification, for a packet of no known
/// connection that the classifier matched to `matched`: deny, allow, or
/// allow and create its connection when the rule is stateful. The
/// dataplane's commit stage and [`decide`] both use it.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn commit<C: Rules + ?Sized>(
    w: &mut Writer,
    c: &C,
    vni: u32,
    matched: u32,
    k: &ConnKey,
    fwd: bool,
    tcp_flags: u8,
    now: u64,
    to: &Timeouts,
) -> Decision {
    if c.action(matched, vni) == crate::Action::Deny {
        return Decision::Denied { matched };
    }
    let stateful = c
        .get(matched)
        .is_some_and(|r| r.is_stateful(c.action(crate::NO_MATCH, vni)));
    if !stateful {
        return Decision::Allowed {
            matched,
            created: false,
        };
    }
    match w.insert(k, fwd, tcp_flags, now, to) {
        Insert::Full => Decision::Full { matched },
        Insert::NotTracked => Decision::Allowed {
            matched,
            created: false,
        },
        Insert::New | Insert::Exists => Decision::Allowed {
            matched,
            created: true,
        },
    }
}

/// The stateful classifier on one packet `key` (TCP flags `tcp_flags`):
/// a known connection passes; otherwise the rules decide, and an allow by a
/// stateful rule creates the connection.
pub fn decide<C: Rules + ?Sized>(
    w: &mut Writer,
    c: &C,
    key: &Key,
    tcp_flags: u8,
    now: u64,
    to: &Timeouts,
) -> Decision {
    let (k, fwd) = ConnKey::of(key);
    if let Some(h) = w.lookup(&k, fwd, tcp_flags, now, to) {
        return Decision::Known(h);
    }
    let m = c.classify(key);
    commit(w, c, key.vni, m, &k, fwd, tcp_flags, now, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> Key {
        Key {
            vni: 7,
            src: u128::from(src),
            dst: u128::from(dst),
            sport,
            dport,
            proto,
            v6: false,
        }
    }

    #[test]
    fn test_reply_on_other_worker_and_direction() {
        let ct = ConnTables::new(2, 64);
        let (mut w0, w1) = (ct.writer(0).unwrap(), ct.writer(1).unwrap());
        assert!(ct.writer(0).is_none(), "one writer per table");
        let to = Timeouts::default();
        // Originator is the higher address: direction must still be right.
        let req = key(9, 1000, 5, 80, 6);
        let (k, fwd) = ConnKey::of(&req);
        assert!(!fwd);
        assert_eq!(w0.insert(&k, fwd, tcp::SYN, 0, &to), Insert::New);
        assert_eq!(w0.insert(&k, fwd, tcp::SYN, 0, &to), Insert::Exists);
        let (rk, rfwd) = ConnKey::of(&key(5, 80, 9, 1000, 6));
        let own = w0.lookup(&rk, rfwd, tcp::SYN | tcp::ACK, 10, &to).unwrap();
        assert_eq!((own.reply, own.remote, own.worker), (true, false, 0));
        assert_eq!(own.state, State::Established);
        let h = w1.lookup(&k, fwd, tcp::ACK, 20, &to).unwrap();
        assert_eq!((h.reply, h.remote, h.worker), (false, true, 0));
        let mut seen = Vec::new();
        ct.for_each(30, &to, |c| seen.push(*c));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].endpoints(), ((9, 1000), (5, 80)));
        assert_eq!(seen[0].age_ms, 30);
        drop(w0);
        assert!(ct.writer(0).is_some(), "released on drop");
    }

    #[test]
    fn test_full_set_denies_new_and_keeps_established() {
        // 8 entries = one set: the ninth connection does not fit.
        let ct = ConnTables::new(1, 8);
        let mut w = ct.writer(0).unwrap();
        let to = Timeouts::default();
        for p in 0..8 {
            let (k, f) = ConnKey::of(&key(1, 1000 + p, 2, 53, 17));
            assert_eq!(w.insert(&k, f, 0, 0, &to), Insert::New);
        }
        let (k9, f9) = ConnKey::of(&key(1, 2000, 2, 53, 17));
        assert_eq!(w.insert(&k9, f9, 0, 1000, &to), Insert::Full);
        for p in 0..8 {
            let (k, f) = ConnKey::of(&key(1, 1000 + p, 2, 53, 17));
            assert!(w.lookup(&k, f, 0, 1000, &to).is_some());
        }
        // Expired entries (UDP idle 120 s) are the only ones replaced.
        let (k0, f0) = ConnKey::of(&key(1, 1000, 2, 53, 17));
        for p in 1..8 {
            let (k, f) = ConnKey::of(&key(1, 1000 + p, 2, 53, 17));
            w.lookup(&k, f, 0, 100_000, &to).unwrap();
        }
        assert_eq!(w.insert(&k9, f9, 0, 121_001, &to), Insert::New);
        assert!(
            w.lookup(&k0, f0, 0, 121_001, &to).is_none(),
            "the expired one went"
        );
        assert_eq!(w.insert(&k0, f0, 0, 121_001, &to), Insert::Full);
    }

    #[test]
    fn test_tcp_state_timeouts() {
        let ct = ConnTables::new(1, 64);
        let mut w = ct.writer(0).unwrap();
        let to = Timeouts {
            tcp_syn_ms: 1000,
            tcp_established_ms: 100_000,
            tcp_fin_ms: 5000,
            tcp_rst_ms: 500,
            ..Timeouts::default()
        };
        let c = key(1, 1000, 2, 80, 6);
        let s = key(2, 80, 1, 1000, 6);
        let (k, cf) = ConnKey::of(&c);
        let sf = ConnKey::of(&s).1;
        // SYN only: the SYN timeout.
        assert_eq!(w.insert(&k, cf, tcp::SYN, 0, &to), Insert::New);
        assert_eq!(ct.peek(0, &k, cf, 1000, &to).unwrap().state, State::SynSent);
        assert!(ct.peek(0, &k, cf, 1001, &to).is_none());
        // Re-created; the reply makes it established: the long timeout.
        assert_eq!(w.insert(&k, cf, tcp::SYN, 2000, &to), Insert::New);
        let h = w.lookup(&k, sf, tcp::SYN | tcp::ACK, 2100, &to).unwrap();
        assert_eq!((h.state, h.reply), (State::Established, true));
        assert!(ct.peek(0, &k, cf, 50_000, &to).is_some());
        // FIN: the FIN timeout from the last packet.
        let h = w.lookup(&k, cf, tcp::FIN | tcp::ACK, 60_000, &to).unwrap();
        assert_eq!(h.state, State::Closing);
        assert!(ct.peek(0, &k, cf, 65_000, &to).is_some());
        assert!(ct.peek(0, &k, cf, 65_001, &to).is_none());
        // Mid-stream pickup is established; RST closes with its own timeout.
        assert_eq!(w.insert(&k, cf, tcp::ACK, 70_000, &to), Insert::New);
        assert_eq!(
            ct.peek(0, &k, cf, 70_000, &to).unwrap().state,
            State::Established
        );
        let h = w.lookup(&k, sf, tcp::RST, 70_100, &to).unwrap();
        assert_eq!(h.state, State::Closed);
        assert!(ct.peek(0, &k, cf, 70_600, &to).is_some());
        assert!(ct.peek(0, &k, cf, 70_601, &to).is_none());
        // A RST creates nothing.
        assert_eq!(w.insert(&k, cf, tcp::RST, 80_000, &to), Insert::NotTracked);
        // A new SYN on a closing connection ends it.
        assert_eq!(w.insert(&k, cf, tcp::ACK, 90_000, &to), Insert::New);
        w.lookup(&k, cf, tcp::FIN, 90_001, &to).unwrap();
        assert!(w.lookup(&k, cf, tcp::SYN, 90_002, &to).is_none());
        assert!(ct.peek(0, &k, cf, 90_003, &to).is_none());
        assert_eq!(w.insert(&k, cf, tcp::SYN, 90_003, &to), Insert::New);
    }

    #[test]
    fn test_flush_all_and_per_vni() {
        let ct = ConnTables::new(2, 64);
        let (mut w0, mut w1) = (ct.writer(0).unwrap(), ct.writer(1).unwrap());
        let to = Timeouts::default();
        let a = ConnKey::of(&key(1, 1, 2, 2, 17));
        let b = ConnKey::of(&Key {
            vni: 8,
            ..key(1, 1, 2, 2, 17)
        });
        assert_eq!(w0.insert(&a.0, a.1, 0, 0, &to), Insert::New);
        assert_eq!(w1.insert(&b.0, b.1, 0, 0, &to), Insert::New);
        ct.flush(Some(7)).unwrap();
        assert!(w1.lookup(&a.0, a.1, 0, 1, &to).is_none(), "VNI 7 flushed");
        assert!(w0.lookup(&b.0, b.1, 0, 1, &to).is_some(), "VNI 8 kept");
        // Re-created after the flush: alive.
        assert_eq!(w0.insert(&a.0, a.1, 0, 2, &to), Insert::New);
        assert!(w1.lookup(&a.0, a.1, 0, 3, &to).is_some());
        ct.flush(None).unwrap();
        assert!(ct.live(4, &to).iter().all(|&n| n == 0));
        assert_eq!(w0.insert(&a.0, a.1, 0, 5, &to), Insert::New);
        assert_eq!(ct.live(5, &to), vec![1, 0]);
        for v in 0..MAX_VNI_FLOORS as u32 {
            ct.flush(Some(1000 + v)).unwrap();
        }
        ct.flush(Some(1000)).unwrap();
        assert_eq!(ct.flush(Some(5)), Err(FlushError::TooManyVniFlushes));
        ct.flush(None).unwrap();
        ct.flush(Some(5)).unwrap();
    }

    #[test]
    fn test_readers_never_see_a_torn_key() {
        // The owner keeps replacing entries (a tiny UDP timeout makes them
        // dead at once) whose lo and hi are equal; readers check every live
        // entry they see.
        let ct = ConnTables::new(2, 8);
        let mut w = ct.writer(0).unwrap();
        w.prepare();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (ct, stop) = (ct.clone(), stop.clone());
                std::thread::spawn(move || {
                    let to = Timeouts {
                        udp_ms: u64::MAX,
                        ..Timeouts::default()
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        ct.for_each(0, &to, |c| {
                            assert_eq!(c.key.lo, c.key.hi, "torn");
                            assert_eq!(c.key.lo as u16, c.key.lo_port, "torn port");
                            n += 1;
                        });
                    }
                    n
                })
            })
            .collect();
        let to = Timeouts {
            udp_ms: 0,
            ..Timeouts::default()
        };
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        while t0.elapsed().as_millis() < 300 {
            let a = u128::from(i) * 0x1_0001_0001;
            let k = ConnKey {
                vni: 1,
                lo: a,
                hi: a,
                lo_port: a as u16,
                hi_port: 1,
                proto: 17,
                v6: true,
            };
            w.insert(&k, true, 0, i + 10, &to);
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(seen > 0);
    }
}
