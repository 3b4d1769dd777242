//! The gateway's burst stages. Each looks only at packets whose verdict is `Tx`.

use crate::burst::{Meta, Stage, Verdict};
use crate::config::NonVip;
use crate::io::{Packet, MAX_BURST};
use crate::stats::{AclCacheCounters, DropReason, FlowCounters, Telemetry, TrafficCounters};
use crate::tables::Tables;

/// Collects the keys of the packets still to be sent (converted to a stage
/// crate's own key type) and their positions in the burst; returns how many.
/// Packets with a [`Meta::ct`] bit of `skip` are left out.
#[inline(always)]
fn gather<K>(
    meta: &[Meta],
    v: &[Verdict],
    skip: u8,
    keys: &mut [K],
    pos: &mut [u16],
    convert: impl Fn(&vxlan::FlowKey) -> K,
) -> usize {
    let mut n = 0;
    for (i, m) in meta.iter().enumerate() {
        if v[i] == Verdict::Tx && m.ct & skip == 0 {
            keys[n] = convert(&m.key);
            pos[n] = i as u16;
            n += 1;
        }
    }
    n
}

/// [`gather`] of the packets no stage has finished yet (the LB stage's view:
/// what the overlay stage sent into a tenant is not VIP traffic).
#[inline(always)]
fn gather_open<K>(
    meta: &[Meta],
    v: &[Verdict],
    keys: &mut [K],
    pos: &mut [u16],
    convert: impl Fn(&vxlan::FlowKey) -> K,
) -> usize {
    let mut n = 0;
    for (i, m) in meta.iter().enumerate() {
        if v[i] == Verdict::Tx && !m.finished {
            keys[n] = convert(&m.key);
            pos[n] = i as u16;
            n += 1;
        }
    }
    n
}

/// Outer headers → VNI + inner Ethernet frame (the outer bytes are stripped in place).
#[derive(Default)]
pub struct Decap;

impl Stage for Decap {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx {
                continue;
            }
            match vxlan::decap(pkts[i].data(), &t.decap) {
                Ok(d) => {
                    let p = &mut pkts[i];
                    p.trim(d.inner_offset + d.inner_len);
                    p.adj(d.inner_offset);
                    meta[i].vni = d.vni;
                    meta[i].outer_len = d.inner_offset as u16;
                    meta[i].geneve_len = d.geneve_len;
                    meta[i].finished = false;
                    meta[i].inbound = false;
                }
                // Of the frames that are not IP, only ARP can be for us: the
                // rest (a flood of them costs this much) skip the look.
                Err(vxlan::DecapError::NotIp) if !crate::exception::may_be_arp(pkts[i].data()) => {
                    v[i] = Verdict::Drop(DropReason::NotIp);
                }
                Err(
                    vxlan::DecapError::NotIp
                    | vxlan::DecapError::NotUdp
                    | vxlan::DecapError::NotVxlan,
                ) if crate::exception::is_exception(pkts[i].data(), t) => {
                    v[i] = Verdict::Punt;
                }
                // Plain IP from the outside to a tenant address (its
                // fragments too), or an ICMP error to a VIP about a tenant
                // client's flow: a packet of that tenant.
                Err(
                    e @ (vxlan::DecapError::NotUdp
                    | vxlan::DecapError::NotVxlan
                    | vxlan::DecapError::OuterFragment),
                ) => match crate::overlay::plain_tenant(pkts[i].data(), t) {
                    Some((vni, inbound)) => {
                        let m = &mut meta[i];
                        m.vni = vni;
                        m.inbound = inbound;
                        m.outer_len = 0;
                        m.geneve_len = 0;
                        m.finished = false;
                    }
                    None => v[i] = Verdict::Drop(e.into()),
                },
                Err(e) => v[i] = Verdict::Drop(e.into()),
            }
        }
    }
}

/// Inner Ethernet/IP/L4 → `FlowKey`; an inner IPv4 header with a wrong
/// checksum is dropped (`inner_bad_checksum`, RFC 1812 §5.2.2).
#[derive(Default)]
pub struct InnerParse {
    /// Non-zero when the last burst held a fragment (the pipeline then runs
    /// the fragment stage; reset by the pipeline).
    pub frags: u8,
}

impl Stage for InnerParse {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        _t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx {
                continue;
            }
            match vxlan::parse_inner(pkts[i].data(), meta[i].vni) {
                Ok(inner) if !vxlan::inner_checksum_ok(pkts[i].data(), &inner) => {
                    v[i] = Verdict::Drop(DropReason::InnerBadChecksum);
                }
                Ok(inner) => {
                    meta[i].key = inner.key;
                    meta[i].l3_off = inner.l3_offset as u16;
                    meta[i].frag = inner.frag;
                    meta[i].frag_id = inner.frag_id;
                    self.frags |= inner.frag as u8;
                    // Ethernet padding after the IP packet is not forwarded.
                    pkts[i].trim(inner.l3_offset + inner.l3_len);
                }
                Err(e) => v[i] = Verdict::Drop(e.into()),
            }
        }
    }
}

/// Tenant ACL: the burst's flow keys are classified at once; deny → `acl_deny`.
/// Keeps per-rule hit counters for the current snapshot.
pub struct Acl {
    keys: [acl::Key; MAX_BURST],
    pos: [u16; MAX_BURST],
    out: [u32; MAX_BURST],
    /// Hits per rule index of the compiled base `hits_base`
    /// ([`acl::LiveClassifier::base_id`]; 0 = none): within a base, rule
    /// changes only append indices and never change an index's counter id,
    /// so the counts carry over from snapshot to snapshot until the base
    /// changes (the worker drains them before it takes a new one, see
    /// [`crate::pipeline::Pipeline::counters_layout`]).
    pub hits: Vec<u64>,
    pub hits_base: u64,
    cache: AclCache,
    /// Keys the cache did not answer, their positions in `keys`, and their slots.
    miss_keys: [acl::Key; MAX_BURST],
    miss_at: [u16; MAX_BURST],
    slot_of: [u32; MAX_BURST],
    miss_out: [u32; MAX_BURST],
    /// What the result cache did, for telemetry (drained by the worker).
    pub cache_counts: AclCacheCounters,
    /// Keys classified in the last burst (`keys`, `pos`, `out`), for tracing.
    last: usize,
}

/// A two-way set-associative cache of classification results by exact key: the packets
/// of an established flow skip the classifier. The result of a key depends
/// only on the rule set, so the cache changes no verdict, only what it costs.
/// Allocated on the worker at its first burst with an ACL (like the flow table).
///
/// Rule changes do not empty it: each entry carries the rule-set version
/// ([`acl::LiveClassifier::version`]) its answer was computed at, and an
/// entry of an older version is brought up to date
/// ([`acl::LiveClassifier::revalidate`]: one rule match per rule added
/// since when a change or two behind, one lookup among the added rules when
/// further, and a fresh classification only if its own rule was removed).
/// Only a new compiled base (a recompile, another ACL section, a new cache
/// size) empties it.
///
/// When flows rarely recur (more active flows than the cache holds, a scan,
/// a flood of new flows) every lookup would miss and cost more than the
/// classifier alone, so the cache watches its hit ratio: under 1/8 over a
/// window of [`CACHE_WINDOW`] lookups, it is bypassed for the next
/// [`CACHE_BYPASS`] keys, then tried again.
#[derive(Default)]
struct AclCache {
    slots: Vec<CacheSlot>,
    /// The compiled base ([`acl::LiveClassifier::base_id`]) the entries belong to.
    base: u64,
    /// Lookups and hits in the current window.
    window: u32,
    window_hits: u32,
    /// Keys still to classify without the cache (0 = in use).
    bypass: u64,
}

/// Lookups over which the cache measures its hit ratio.
const CACHE_WINDOW: u32 = 1 << 16;
/// Keys classified without the cache once a window's hit ratio fell under 1/8.
const CACHE_BYPASS: u64 = 1 << 20;

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct CacheSlot {
    key: acl::Key,
    /// Rule-set version `matched` was computed at.
    version: u64,
    matched: u32,
    valid: bool,
}

impl AclCache {
    /// Ready for compiled base `base` with `entries` slots (0 = off).
    #[cold]
    fn reset(&mut self, base: u64, entries: usize) {
        if self.slots.len() != entries {
            self.slots = vec![CacheSlot::default(); entries];
        } else {
            self.slots.iter_mut().for_each(|s| s.valid = false);
        }
        self.base = base;
        self.window = 0;
        self.window_hits = 0;
        self.bypass = 0;
    }

    /// True while the cache is bypassed, counting `n` keys off the bypass.
    #[inline(always)]
    fn bypassing(&mut self, n: usize) -> bool {
        if self.bypass == 0 {
            return false;
        }
        self.bypass = self.bypass.saturating_sub(n as u64);
        true
    }

    /// Counts a burst's lookups; at the end of a window, starts a bypass if
    /// fewer than 1/8 of them hit.
    #[inline(always)]
    fn account(&mut self, lookups: usize, hits: usize) {
        self.window += lookups as u32;
        self.window_hits += hits as u32;
        if self.window >= CACHE_WINDOW {
            if self.window_hits < self.window / 8 {
                self.bypass = CACHE_BYPASS;
            }
            self.window = 0;
            self.window_hits = 0;
        }
    }

    #[inline(always)]
    fn index(&self, k: &acl::Key) -> usize {
        let a = (k.src as u64) ^ ((k.src >> 64) as u64).rotate_left(21);
        let b = (k.dst as u64).rotate_left(11) ^ ((k.dst >> 64) as u64).rotate_left(43);
        let c = (u64::from(k.sport) << 48)
            | (u64::from(k.dport) << 32)
            | (u64::from(k.proto) << 24)
            | (u64::from(k.v6) << 23)
            | u64::from(k.vni);
        // Two multiply-xorshift rounds: every input bit reaches the index bits.
        let h = (a ^ b ^ c).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        // Index of the set's first way (sets of two ways; one way when the
        // cache has a single entry).
        (h >> 32) as usize & (self.slots.len() - 1) & !1
    }

    /// The slot holding `k` in the set starting at `i`, if any.
    #[inline(always)]
    fn find(&self, i: usize, k: &acl::Key) -> Option<usize> {
        let s = &self.slots[i];
        if s.valid && s.key == *k {
            return Some(i);
        }
        let s = self.slots.get(i + 1)?;
        (s.valid && s.key == *k).then_some(i + 1)
    }

    /// Caches `k → matched` (computed at `version`) in the set at `i`: over
    /// `k`'s own entry if it has one, else the newest entry goes to the first
    /// way and the first way's entry to the second (FIFO replacement).
    #[inline(always)]
    fn put(&mut self, i: usize, k: &acl::Key, matched: u32, version: u64) {
        let slot = CacheSlot {
            key: *k,
            version,
            matched,
            valid: true,
        };
        if let Some(at) = self.find(i, k) {
            self.slots[at] = slot;
            return;
        }
        if i + 1 < self.slots.len() {
            self.slots[i + 1] = self.slots[i];
        }
        self.slots[i] = slot;
    }
}

impl Default for Acl {
    fn default() -> Self {
        Acl {
            keys: [acl::Key::default(); MAX_BURST],
            pos: [0; MAX_BURST],
            out: [acl::NO_MATCH; MAX_BURST],
            hits: Vec::new(),
            hits_base: 0,
            cache: AclCache::default(),
            miss_keys: [acl::Key::default(); MAX_BURST],
            miss_at: [0; MAX_BURST],
            slot_of: [0; MAX_BURST],
            miss_out: [acl::NO_MATCH; MAX_BURST],
            cache_counts: AclCacheCounters::default(),
            last: 0,
        }
    }
}

impl Acl {
    /// Sizes (allocating only when the size changes) and empties the result
    /// cache for snapshot `t`'s compiled ACL base; a no-op when it is already
    /// ready for it (rule changes since the base keep the entries). The
    /// engine calls it before the first burst so the allocation is not on
    /// the fast path.
    #[inline]
    pub fn prepare(&mut self, t: &Tables) {
        let Some(a) = &t.acl else { return };
        let base = a.classifier.base_id();
        if t.acl_cache != 0 && (self.cache.base != base || self.cache.slots.len() != t.acl_cache) {
            self.cache.reset(base, t.acl_cache);
        }
    }

    /// `out[..n]` for `keys[..n]`: from the cache where it has the key (brought
    /// up to date if rules changed since), from the classifier (in one
    /// burst) for the rest, which are then cached.
    #[inline]
    fn classify_cached(&mut self, t: &Tables, a: &crate::tables::AclTables, n: usize) {
        self.prepare(t);
        let live = &a.classifier;
        let version = live.version();
        let cache = &mut self.cache;
        // Slot of each key, prefetched: their cache misses overlap.
        for j in 0..n {
            let i = cache.index(&self.keys[j]);
            self.slot_of[j] = i as u32;
            crate::cpu::prefetch(std::ptr::from_ref(&cache.slots[i]).cast());
        }
        let mut misses = 0;
        for j in 0..n {
            let k = &self.keys[j];
            let found = cache.find(self.slot_of[j] as usize, k).and_then(|at| {
                let s = &mut cache.slots[at];
                if s.version == version {
                    return Some(s.matched);
                }
                let m = live.revalidate(k, s.matched, s.version)?;
                s.matched = m;
                s.version = version;
                Some(m)
            });
            if let Some(m) = found {
                self.out[j] = m;
            } else {
                self.miss_keys[misses] = *k;
                self.miss_at[misses] = j as u16;
                misses += 1;
            }
        }
        self.cache_counts.hits += (n - misses) as u64;
        self.cache_counts.misses += misses as u64;
        cache.account(n, n - misses);
        if misses == 0 {
            return;
        }
        live.classify_burst(&self.miss_keys[..misses], &mut self.miss_out[..misses]);
        for m in 0..misses {
            let j = self.miss_at[m] as usize;
            let matched = self.miss_out[m];
            self.out[j] = matched;
            // A key seen twice in one burst is stored once.
            cache.put(self.slot_of[j] as usize, &self.keys[j], matched, version);
        }
    }

    /// Forgets the last burst's classifications (the pipeline skipped this
    /// stage for a burst).
    #[inline]
    pub fn clear_results(&mut self) {
        self.last = 0;
    }

    /// The last burst's classifications: (position in the burst, matched rule
    /// index or `acl::NO_MATCH`).
    pub fn last_results(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (0..self.last).map(|j| (self.pos[j] as usize, self.out[j]))
    }

    /// Moves the hit counts into `into` (rule counter id → packets), zeroing them.
    pub fn drain_hits(&mut self, t: &Tables, into: &mut std::collections::HashMap<u32, u64>) {
        if let Some(a) = &t.acl {
            if self.hits_base == a.classifier.base_id() {
                for (i, h) in self.hits.iter_mut().enumerate() {
                    if *h != 0 {
                        if let Some(id) = a.counter_ids.get(i) {
                            *into.entry(*id).or_insert(0) += *h;
                        }
                        *h = 0;
                    }
                }
            }
        }
    }
}

impl Stage for Acl {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        _pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        self.last = 0;
        let Some(a) = &t.acl else { return };
        let base = a.classifier.base_id();
        if self.hits_base != base {
            // New compiled base: counts of the old one were drained by the worker.
            self.hits.clear();
            self.hits.resize(a.classifier.len(), 0);
            self.hits_base = base;
        } else if self.hits.len() != a.classifier.len() {
            // Rules added since: new indices, counted from zero.
            self.hits.resize(a.classifier.len(), 0);
        }
        // Packets of known connections pass without the rules (`conntrack`).
        let skip = if t.ct_active {
            crate::burst::ct::KNOWN
        } else {
            0
        };
        let n = gather(meta, v, skip, &mut self.keys, &mut self.pos, |k| acl::Key {
            vni: k.vni,
            src: k.src,
            dst: k.dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            v6: k.v6,
        });
        self.last = n;
        if n == 0 {
            return;
        }
        let bypass = t.acl_cache != 0
            && self.cache.base == a.classifier.base_id()
            && self.cache.bypassing(n);
        if t.acl_cache == 0 || bypass {
            self.cache_counts.bypassed += bypass as u64 * n as u64;
            a.classifier
                .classify_burst(&self.keys[..n], &mut self.out[..n]);
        } else {
            self.classify_cached(t, a, n);
        }
        for j in 0..n {
            let m = self.out[j];
            let i = self.pos[j] as usize;
            if m != acl::NO_MATCH {
                if let Some(h) = self.hits.get_mut(m as usize) {
                    *h += 1;
                }
            }
            if a.classifier.action(m, self.keys[j].vni) == acl::Action::Deny {
                v[i] = Verdict::Drop(DropReason::AclDeny);
            }
        }
    }
}

/// Service lookup and load balancing: packets to a service VIP are pinned to a
/// backend (per-worker flow table, Maglev for new flows) and encapsulated to
/// it; other traffic follows `non_vip`.
pub struct Lb {
    keys: [lb::FlowKey; MAX_BURST],
    /// TCP flags of each gathered packet (0 for others): FIN/RST/SYN end or
    /// renew flow-table entries.
    flags: [u8; MAX_BURST],
    /// Positions in `keys` of ICMP errors to a VIP whose key was replaced by
    /// the flow they quote (see [`icmp_error_key`]).
    icmp_at: [u16; MAX_BURST],
    /// ICMP errors sent on to the backend that owns the quoted flow.
    pub icmp_errors_forwarded: u64,
    pos: [u16; MAX_BURST],
    out: [lb::LbVerdict; MAX_BURST],
    pub flows: Option<lb::flow_table::FlowTable>,
    /// Per service index of the services and backends `layout`
    /// ([`lb::LbTables::id`]; shared by every snapshot that keeps them, an
    /// ACL change's for one).
    svc: Vec<TrafficCounters>,
    /// Per (service index, backend index), flat: service `si`'s backends
    /// are `backend[backend_at[si].0..][..backend_at[si].1]`. Rebuilt in
    /// place at a layout change (no allocation unless the layout grew).
    backend: Vec<TrafficCounters>,
    backend_at: Vec<(u32, u32)>,
    layout: u64,
    epoch: Option<std::time::Instant>,
    /// Destination MAC of transmitted frames for the current burst.
    pub next_hop: [u8; 6],
    /// The next hop's MAC is not known (ARP/ND pending): drop.
    pub unresolved: bool,
    icmp_too_big: u64,
    live_scanned_at: u64,
    /// Keys looked up in the last burst (`pos`, `out`), for tracing.
    last: usize,
    /// New flows not yet offered to the fleet (`[fleet]`).
    fleet_batch: crate::fleet::Batch,
}

impl Default for Lb {
    fn default() -> Self {
        Lb {
            keys: [lb::FlowKey::default(); MAX_BURST],
            flags: [0; MAX_BURST],
            icmp_at: [0; MAX_BURST],
            icmp_errors_forwarded: 0,
            pos: [0; MAX_BURST],
            out: [lb::LbVerdict::NotService; MAX_BURST],
            flows: None,
            svc: Vec::new(),
            backend: Vec::new(),
            backend_at: Vec::new(),
            layout: u64::MAX,
            epoch: None,
            next_hop: [0; 6],
            unresolved: false,
            icmp_too_big: 0,
            live_scanned_at: 0,
            last: 0,
            fleet_batch: crate::fleet::Batch::default(),
        }
    }
}

/// Service `si`'s backend counters in the flat per-backend array.
#[inline(always)]
fn backend_counters<'a>(
    all: &'a mut [TrafficCounters],
    at: &[(u32, u32)],
    si: u32,
) -> Option<&'a mut [TrafficCounters]> {
    let &(start, n) = at.get(si as usize)?;
    all.get_mut(start as usize..(start + n) as usize)
}

impl Lb {
    /// Moves per-service/backend counters and flow-table figures into `tel`.
    pub fn flush_telemetry(&mut self, t: &Tables, tel: &mut Telemetry) {
        if self.layout == t.lb.id() {
            for ((si, svc), c) in t.lb.services().zip(self.svc.iter_mut()) {
                if !c.is_zero() {
                    let c = std::mem::take(c);
                    match tel.services.get_mut(&svc.name) {
                        Some(e) => e.add(&c),
                        None => {
                            tel.services.insert(svc.name.clone(), c);
                        }
                    }
                }
                if let Some(bc) = backend_counters(&mut self.backend, &self.backend_at, si.0) {
                    for (b, c) in t.lb.backends(si).iter().zip(bc.iter_mut()) {
                        if !c.is_zero() {
                            tel.backends
                                .entry((svc.name.clone(), b.ip))
                                .or_default()
                                .add(&std::mem::take(c));
                        }
                    }
                }
            }
        }
        tel.icmp_too_big += std::mem::take(&mut self.icmp_too_big);
        tel.icmp_errors_forwarded += std::mem::take(&mut self.icmp_errors_forwarded);
        if let Some(f) = self.flows.as_mut() {
            f.sched_mut()
                .take_rate_limited(|name, n| match tel.services.get_mut(name) {
                    Some(e) => e.rate_limited += n,
                    None => {
                        tel.services.insert(
                            name.to_string(),
                            TrafficCounters {
                                rate_limited: n,
                                ..TrafficCounters::default()
                            },
                        );
                    }
                });
        }
        if let Some(f) = &self.flows {
            // Counting live flows scans the whole table: at most once a second.
            let now = self.now_ms();
            if now >= self.live_scanned_at + 1000 || tel.flow_capacity == 0 {
                self.live_scanned_at = now;
                tel.flows_in_use = f.live(now) as u64;
            }
            tel.flow_capacity = f.capacity() as u64;
            tel.flow_counters = FlowCounters::from(&f.stats());
        }
    }

    /// Forgets the last burst's answers (the pipeline skipped this stage
    /// for a burst).
    #[inline]
    pub fn clear_results(&mut self) {
        self.last = 0;
    }

    /// The last burst's answers: (position in the burst, verdict).
    pub fn last_results(&self) -> impl Iterator<Item = (usize, lb::LbVerdict)> + '_ {
        (0..self.last).map(|j| (self.pos[j] as usize, self.out[j]))
    }

    /// Milliseconds on this worker's flow-table clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.map_or(0, |e| e.elapsed().as_millis() as u64)
    }

    /// Allocates the flow table and the counters for `t` (done before the
    /// first burst so the allocation is not on the fast path).
    pub fn prepare(&mut self, t: &Tables) {
        if self.flows.is_none() {
            let mut f = lb::flow_table::FlowTable::new(t.flow_cfg);
            if t.fleet.is_some() {
                // Half the longest idle timeout: a peer's copy (used for that
                // long after it arrived) is renewed before it expires.
                f.set_reshare_period(t.flow_cfg.tcp_timeout.max(t.flow_cfg.udp_timeout) / 2);
            }
            self.flows = Some(f);
            self.epoch = Some(std::time::Instant::now());
        }
        if self.layout != t.lb.id() {
            self.layout = t.lb.id();
            self.svc.clear();
            self.svc.resize(t.lb.len(), TrafficCounters::default());
            self.backend.clear();
            self.backend_at.clear();
            for (si, _) in t.lb.services() {
                let n = t.lb.backends(si).len();
                self.backend_at.push((self.backend.len() as u32, n as u32));
                self.backend
                    .resize(self.backend.len() + n, TrafficCounters::default());
            }
        }
    }
}

impl Stage for Lb {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        self.last = 0;
        if t.lb.is_empty() {
            if t.non_vip == NonVip::Drop {
                for (x, m) in v.iter_mut().zip(meta.iter()) {
                    if *x == Verdict::Tx && !m.finished {
                        *x = Verdict::Drop(DropReason::NonVip);
                    }
                }
            }
            return;
        }
        self.prepare(t);
        let n = gather_open(meta, v, &mut self.keys, &mut self.pos, |k| lb::FlowKey {
            vni: k.vni,
            src: k.src,
            dst: k.dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            v6: k.v6,
        });
        if n == 0 {
            return;
        }
        let mut n_icmp = 0;
        for j in 0..n {
            let k = &self.keys[j];
            let i = self.pos[j] as usize;
            // Non-first fragments have no TCP header (their ports, if
            // any, are their datagram's: `frag`).
            self.flags[j] = if k.proto == 6
                && (k.sport | k.dport) != 0
                && meta[i].frag != vxlan::FragKind::Later
            {
                tcp_flags_of(pkts[i].data(), meta[i].l3_off as usize, k.v6)
            } else {
                if k.proto == vxlan::proto::ICMP || k.proto == vxlan::proto::ICMPV6 {
                    match icmp_error_key(t, pkts[i].data(), meta[i].l3_off as usize, k) {
                        None => {}
                        Some(Ok(q)) => {
                            self.keys[j] = q;
                            self.icmp_at[n_icmp] = j as u16;
                            n_icmp += 1;
                        }
                        Some(Err(r)) => v[i] = Verdict::Drop(r),
                    }
                }
                0
            };
        }
        let now = self.now_ms();
        self.last = n;
        let Some(flows) = self.flows.as_mut() else {
            return;
        };
        t.lb.process_burst_flags_with(
            &self.keys[..n],
            &self.flags[..n],
            flows,
            now,
            &mut self.out[..n],
            Some(crate::cpu::prefetch),
        );
        if t.fleet.is_some() {
            // Active flows crossing a re-share period go to the fleet again,
            // so the peers' copies age like this table's entries.
            let batch = &mut self.fleet_batch;
            let fleet = &t.fleet;
            flows.drain_reshare(|h, addr, v6| {
                if batch.push(h, addr, v6) {
                    if let Some(f) = fleet {
                        f.offer(batch);
                    }
                }
            });
        }
        for &j in &self.icmp_at[..n_icmp] {
            let i = self.pos[j as usize] as usize;
            match self.out[j as usize] {
                // To a VIP, about a flow of no service: not routed on.
                lb::LbVerdict::NotService => v[i] = Verdict::Drop(DropReason::IcmpNoService),
                lb::LbVerdict::Forward { .. } => self.icmp_errors_forwarded += 1,
                lb::LbVerdict::NoBackend(_) => {}
            }
        }
        for j in 0..n {
            let i = self.pos[j] as usize;
            if v[i] != Verdict::Tx {
                continue; // an ICMP error dropped above
            }
            match self.out[j] {
                lb::LbVerdict::NotService => {
                    if t.non_vip == NonVip::Drop {
                        v[i] = Verdict::Drop(DropReason::NonVip);
                    }
                }
                lb::LbVerdict::NoBackend(_) => v[i] = Verdict::Drop(DropReason::NoBackend),
                lb::LbVerdict::Forward {
                    svc,
                    backend,
                    new_flow,
                } => {
                    let len = pkts[i].data().len() as u64;
                    let Some(bref) = t.lb.backend_ref(svc, backend) else {
                        v[i] = Verdict::Drop(DropReason::NoBackend);
                        continue;
                    };
                    match encap(t, self.next_hop, &mut pkts[i], &meta[i], bref) {
                        Ok(Encapped::IcmpTooBig) => {
                            // The packet became the ICMP reply: send it.
                            meta[i].finished = true;
                            self.icmp_too_big += 1;
                        }
                        Ok(Encapped::ToBackend) => {
                            meta[i].finished = true;
                            if new_flow && t.fleet.is_some() {
                                let full = self.fleet_batch.push(
                                    lb::flow_hash(&self.keys[j]),
                                    bref.addr,
                                    bref.v6,
                                );
                                if full {
                                    if let Some(f) = &t.fleet {
                                        f.offer(&mut self.fleet_batch);
                                    }
                                }
                            }
                            let si = svc.0 as usize;
                            if let Some(c) = self.svc.get_mut(si) {
                                c.count(len, new_flow);
                            }
                            if let Some(c) =
                                backend_counters(&mut self.backend, &self.backend_at, si as u32)
                                    .and_then(|b| b.get_mut(backend as usize))
                            {
                                c.count(len, new_flow);
                            }
                        }
                        Err(r) => v[i] = Verdict::Drop(r),
                    }
                }
            }
        }
        if !self.fleet_batch.is_empty() {
            if let Some(f) = &t.fleet {
                f.offer(&mut self.fleet_batch);
            }
        }
    }
}

/// For an ICMP / ICMPv6 packet `d` (IP header at `l3`, flow key `k`) that is an
/// error (destination unreachable, fragmentation needed / packet too big,
/// time exceeded) addressed to a service VIP: `Ok` with the client → VIP flow
/// its quote is about (the quoted VIP:port → client packet reversed), so the
/// LB sends the error to the backend that owns that flow (which answered the
/// client directly, and needs e.g. the path MTU); `Err` with the drop reason
/// when the quote is truncated, lies or is not TCP/UDP. `None` for everything
/// else (echo, errors to other addresses): handled as before. Off the common
/// path: only ICMP packets get here.
#[cold]
#[inline(never)]
fn icmp_error_key(
    t: &Tables,
    d: &[u8],
    l3: usize,
    k: &lb::FlowKey,
) -> Option<Result<lb::FlowKey, DropReason>> {
    let ip = d.get(l3..)?;
    let (hl, total) = if k.v6 {
        // ICMPv6 right after the fixed header only.
        if ip.get(6) != Some(&vxlan::proto::ICMPV6) || ip.len() < 40 {
            return None;
        }
        (40, 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])))
    } else {
        let hl = usize::from(ip.first()? & 0x0f) * 4;
        // A non-first fragment carries no ICMP header.
        if ip.len() < 20 || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
            return None;
        }
        (hl, usize::from(u16::from_be_bytes([ip[2], ip[3]])))
    };
    let msg = ip.get(hl..total.min(ip.len()))?;
    let r = vxlan::icmp::quoted_flow(msg, k.v6);
    if matches!(r, Ok(None)) {
        return None;
    }
    let vip: std::net::IpAddr = if k.v6 {
        std::net::Ipv6Addr::from(k.dst).into()
    } else {
        std::net::Ipv4Addr::from(k.dst as u32).into()
    };
    if !t.lb.services().any(|(_, s)| s.vip == vip) {
        return None;
    }
    use vxlan::icmp::QuoteError;
    Some(match r {
        Ok(Some(q)) => Ok(lb::FlowKey {
            vni: k.vni,
            src: q.src,
            dst: q.dst,
            sport: q.sport,
            dport: q.dport,
            proto: q.proto,
            v6: k.v6,
        }),
        Ok(None) => return None,
        Err(QuoteError::Truncated) => Err(DropReason::IcmpQuoteTruncated),
        Err(QuoteError::Lies) => Err(DropReason::IcmpQuoteBad),
        Err(QuoteError::NotTcpUdp) => Err(DropReason::IcmpNoService),
    })
}

/// The TCP flags byte of the packet whose IP header is at `l3` in `d` (0 if
/// it cannot be read; over IPv6 only when TCP follows the fixed header,
/// extension headers are not walked for this).
#[inline(always)]
fn tcp_flags_of(d: &[u8], l3: usize, v6: bool) -> u8 {
    const FLAGS: usize = 13;
    let l4 = if v6 {
        if d.get(l3 + 6) != Some(&6) {
            return 0;
        }
        l3 + 40
    } else {
        let Some(&b) = d.get(l3) else { return 0 };
        l3 + usize::from(b & 0x0f) * 4
    };
    d.get(l4 + FLAGS).copied().unwrap_or(0)
}

/// What became of a packet sent to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encapped {
    /// Encapsulated to the backend.
    ToBackend,
    /// Too big for the MTU: it became an ICMP reply to the client.
    IcmpTooBig,
}

/// The packet does not fit the MTU once encapsulated. IPv6, and IPv4 with DF
/// set, get a "packet too big" / "fragmentation needed" reply back to the
/// client (the packet becomes the reply); others are dropped (`mtu_exceeded`).
#[cold]
fn too_big<P: Packet>(
    t: &Tables,
    p: &mut P,
    m: &Meta,
    room: usize,
) -> Result<Encapped, DropReason> {
    let l3 = m.l3_off as usize;
    let df = m.key.v6 || p.data().get(l3 + 6).is_some_and(|b| b & 0x40 != 0);
    if df && crate::icmp::too_big_reply(p, m, room as u32, t.local_mac) {
        Ok(Encapped::IcmpTooBig)
    } else {
        Err(DropReason::MtuExceeded)
    }
}

/// Encapsulates the decapsulated inner frame `p` to `b` in place.
#[inline]
fn encap<P: Packet>(
    t: &Tables,
    next_hop: [u8; 6],
    p: &mut P,
    m: &Meta,
    b: &lb::BackendRef,
) -> Result<Encapped, DropReason> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (src_ip, dst_ip) = if b.v6 {
        let Some(s) = t.underlay_v6 else {
            return Err(DropReason::NoBackend);
        };
        (IpAddr::V6(s), IpAddr::V6(Ipv6Addr::from(b.addr)))
    } else {
        let Some(s) = t.underlay_v4 else {
            return Err(DropReason::NoBackend);
        };
        (IpAddr::V4(s), IpAddr::V4(Ipv4Addr::from(b.addr as u32)))
    };
    let outer = vxlan::Outer {
        src_mac: t.local_mac,
        dst_mac: next_hop,
        vlan: None,
        src_ip,
        dst_ip,
        ttl: 64,
    };
    let l3 = m.l3_off as usize;
    match b.encap {
        lb::EncapKind::Vxlan | lb::EncapKind::Geneve => {
            // The inner Ethernet frame goes to the backend's VTEP: its MACs become
            // gateway → backend (as Cilium's VTEP integration expects).
            let inner_len = p.data().len();
            // Geneve without options is as long as VXLAN.
            let hl = vxlan::vxlan_header_len(&outer);
            if inner_len + hl - 14 > t.mtu as usize {
                let room = (t.mtu as usize + 14).saturating_sub(hl + l3);
                return too_big(t, p, m, room);
            }
            {
                let d = p.data_mut();
                vxlan::set_macs(d, t.local_mac, b.mac.unwrap_or([0xff; 6]));
            }
            if !p.prepend(hl) {
                return Err(DropReason::NoHeadroom);
            }
            let (hdr, inner) = p.data_mut().split_at_mut(hl);
            let sport = vxlan::flow_src_port(&m.key);
            if b.encap == lb::EncapKind::Vxlan {
                vxlan::emit_vxlan(&outer, sport, t.vxlan_dst_port, m.vni, inner, hdr);
            } else {
                vxlan::emit_geneve(&outer, sport, t.geneve_dst_port, m.vni, inner, hdr);
            }
        }
        lb::EncapKind::Ipip | lb::EncapKind::Gue => {
            // The inner Ethernet header is replaced by the outer stack.
            let ip_len = p.data().len() - l3;
            let hl = if b.encap == lb::EncapKind::Ipip {
                vxlan::ipip_header_len(&outer)
            } else {
                vxlan::gue_header_len(&outer)
            };
            if ip_len + hl - 14 > t.mtu as usize {
                let room = (t.mtu as usize + 14).saturating_sub(hl);
                return too_big(t, p, m, room);
            }
            p.adj(l3);
            if !p.prepend(hl) {
                return Err(DropReason::NoHeadroom);
            }
            let (hdr, inner) = p.data_mut().split_at_mut(hl);
            if b.encap == lb::EncapKind::Ipip {
                vxlan::emit_ipip(&outer, inner, hdr);
            } else {
                vxlan::emit_gue(&outer, vxlan::flow_src_port(&m.key), t.gue_port, inner, hdr);
            }
        }
    }
    Ok(Encapped::ToBackend)
}

/// Routes a decapsulated inner packet to the next hop: TTL/hop limit decremented
/// (expired → drop), MACs rewritten to local → next hop.
#[derive(Default)]
pub struct Route {
    /// Destination MAC of transmitted frames for the current burst.
    pub next_hop: [u8; 6],
    /// The next hop's MAC is not known (ARP/ND pending): drop.
    pub unresolved: bool,
    /// ICMP "too big" replies sent for routed packets over the MTU.
    pub icmp_too_big: u64,
}

impl Stage for Route {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx || meta[i].finished {
                continue;
            }
            if self.unresolved {
                v[i] = Verdict::Drop(DropReason::NextHopUnresolved);
                continue;
            }
            let l3 = meta[i].l3_off as usize;
            let ip_len = pkts[i].data().len() - l3;
            if ip_len > t.mtu as usize {
                // No fragmentation: IPv6 and DF get "too big" back, others are dropped.
                match too_big(t, &mut pkts[i], &meta[i], t.mtu as usize) {
                    Ok(_) => {
                        meta[i].finished = true;
                        self.icmp_too_big += 1;
                    }
                    Err(r) => v[i] = Verdict::Drop(r),
                }
                continue;
            }
            let data = pkts[i].data_mut();
            if vxlan::decrement_ttl(&mut data[l3..]).is_err() {
                v[i] = Verdict::Drop(DropReason::TtlExpired);
                continue;
            }
            vxlan::set_macs(data, t.local_mac, self.next_hop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::io::buf::HeapBuf;

    fn tables(rules: &str, generation: u64, cache: usize) -> Tables {
        let text = format!(
            "[dataplane]\nacl_cache = {cache}\n[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nunderlay_ips = [\"10.0.0.1\"]\n\
             [acl]\ndefault = \"allow\"\n{rules}"
        );
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.validate(), Vec::<String>::new());
        Tables::build(&cfg, generation).unwrap()
    }

    const RULES_A: &str = "[[acl.rule]]\nproto = \"tcp\"\ndst_ports = \"1-2\"\naction = \"deny\"\n\
                           [[acl.rule]]\nsrc = \"10.0.0.0/26\"\naction = \"deny\"\n";
    const RULES_B: &str = "[[acl.rule]]\nproto = \"udp\"\naction = \"deny\"\n\
                           [[acl.rule]]\nsrc = \"10.0.0.0/26\"\nproto = \"tcp\"\naction = \"allow\"\npriority = 1\n\
                           [[acl.rule]]\ndst = \"10.1.0.0/25\"\naction = \"deny\"\npriority = 2\n";

    /// Verdicts of `bursts` bursts of keys drawn from a small space (so flows
    /// recur and collide in a small cache), and the stage's cache hits.
    fn run(acl: &mut Acl, t: &Tables, seed: u64, bursts: usize) -> (Vec<Verdict>, Vec<u64>) {
        let mut rng = seed;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let mut all = Vec::new();
        // Counts of this run only (the worker drains them in between).
        acl.hits.iter_mut().for_each(|h| *h = 0);
        for _ in 0..bursts {
            let mut meta = [Meta::default(); 32];
            for m in meta.iter_mut() {
                m.key = vxlan::FlowKey {
                    vni: (next() % 2) as u32,
                    src: u128::from(0x0a00_0000u32 + (next() % 4 + 64 * (next() % 2)) as u32),
                    dst: u128::from(0x0a01_0000u32 + (next() % 2 + 200 * (next() % 2)) as u32),
                    sport: 1000,
                    dport: (next() % 4) as u16,
                    proto: if next() % 2 == 0 { 6 } else { 17 },
                    v6: false,
                };
            }
            let mut v = [Verdict::Tx; 32];
            // One packet already dropped by an earlier stage stays untouched.
            v[5] = Verdict::Drop(DropReason::InnerTruncated);
            let mut pkts: [HeapBuf; 0] = [];
            acl.process(t, &mut pkts, &mut meta, &mut v);
            all.extend_from_slice(&v);
        }
        (all, acl.hits.clone())
    }

    #[test]
    fn test_acl_cache_changes_no_verdict_and_follows_rule_changes() {
        // 512 distinct keys: a 64-entry cache collides all the time, a
        // 1024-entry one holds them all.
        for entries in [64, 1024] {
            let (a_off, a_on) = (tables(RULES_A, 1, 0), tables(RULES_A, 1, entries));
            let (b_off, b_on) = (tables(RULES_B, 2, 0), tables(RULES_B, 2, entries));
            let (mut plain, mut cached) = (Acl::default(), Acl::default());
            let (want, want_hits) = run(&mut plain, &a_off, 7, 200);
            let (got, got_hits) = run(&mut cached, &a_on, 7, 200);
            assert_eq!(got, want, "{entries} entries");
            assert_eq!(got_hits, want_hits, "per-rule hit counts");
            assert!(want.contains(&Verdict::Drop(DropReason::AclDeny)));
            assert!(want.contains(&Verdict::Tx));
            assert_eq!(
                plain.cache_counts.hits + plain.cache_counts.misses,
                0,
                "cache off"
            );
            assert_eq!(
                cached.cache_counts.hits + cached.cache_counts.misses,
                200 * 31
            );
            if entries == 1024 {
                assert!(
                    cached.cache_counts.hits > 2 * cached.cache_counts.misses,
                    "flows recur: {} hits, {} misses",
                    cached.cache_counts.hits,
                    cached.cache_counts.misses
                );
            }
            // A new rule set (new snapshot): the same keys get the new answers at once.
            let (want, _) = run(&mut plain, &b_off, 7, 50);
            let (got, _) = run(&mut cached, &b_on, 7, 50);
            assert_eq!(got, want, "{entries} entries, after the rule change");
            let (old, _) = run(&mut Acl::default(), &a_off, 7, 50);
            assert_ne!(got, old, "rule sets A and B disagree on these keys");
        }
    }

    /// Rule hits counted under one snapshot and not yet drained carry over
    /// to the next snapshot of the same compiled base (the worker skips the
    /// flush when it takes it) and are drained under the new one's counter
    /// ids, those of the rules that were hit; a new base starts from zero.
    #[test]
    fn test_acl_hits_carry_over_within_a_base() {
        use crate::pipeline::Pipeline;
        use crate::tables::RuleChange;
        let spec: acl::RuleSpec = toml::from_str::<toml::Table>(
            "proto = \"udp\"\naction = \"allow\"\npriority = 0\nid = 3\n",
        )
        .unwrap()
        .try_into()
        .unwrap();
        let t1 = tables(
            "[[acl.rule]]\nproto = \"tcp\"\naction = \"deny\"\nid = 1\n",
            1,
            64,
        );
        let t2 = t1.with_rule_change(&RuleChange::Add(spec), 2).unwrap();
        assert_eq!(
            Pipeline::counters_layout(&t1),
            Pipeline::counters_layout(&t2),
            "a rule change keeps the layout"
        );
        let mut acl = Acl::default();
        let (v1, _) = run(&mut acl, &t1, 7, 10);
        let tcp = v1
            .iter()
            .filter(|v| **v == Verdict::Drop(DropReason::AclDeny))
            .count() as u64;
        // Not drained: the next bursts use t2 (UDP now matches rule 3).
        let mut meta = [Meta::default(); 1];
        meta[0].key.proto = 17;
        let mut v = [Verdict::Tx];
        let mut pkts: [HeapBuf; 0] = [];
        acl.process(&t2, &mut pkts, &mut meta, &mut v);
        let mut hits = std::collections::HashMap::new();
        acl.drain_hits(&t2, &mut hits);
        assert_eq!(hits.get(&1), Some(&tcp), "rule 1's hits under t1 survive");
        assert_eq!(hits.get(&3), Some(&1));
        assert!(acl.hits.iter().all(|h| *h == 0), "drained");
        // A recompiled base: another layout, counts from zero.
        let t3 = tables(
            "[[acl.rule]]\nproto = \"tcp\"\naction = \"deny\"\nid = 1\n",
            3,
            64,
        );
        assert_ne!(
            Pipeline::counters_layout(&t2),
            Pipeline::counters_layout(&t3)
        );
        assert!(run(&mut acl, &t2, 7, 1).1.iter().sum::<u64>() > 0);
        meta[0].key.proto = 6;
        acl.process(&t3, &mut pkts, &mut meta, &mut v);
        assert_eq!(acl.hits.iter().sum::<u64>(), 1, "t2's counts are not t3's");
    }

    /// Rule changes through the delta keep the cache (no wholesale reset):
    /// verdicts and per-rule hits stay those of the classifier without a
    /// cache and of a full rebuild of the changed rule set, and flows keep
    /// hitting.
    #[test]
    fn test_acl_cache_kept_across_rule_changes() {
        use crate::tables::RuleChange;
        const RULES: &str =
            "[[acl.rule]]\nproto = \"tcp\"\ndst_ports = \"1-2\"\naction = \"deny\"\nid = 1\n\
                             [[acl.rule]]\nsrc = \"10.0.0.0/26\"\naction = \"deny\"\nid = 2\n";
        let spec = |text: &str| -> acl::RuleSpec {
            #[derive(serde::Deserialize)]
            struct R {
                rule: acl::RuleSpec,
            }
            toml::from_str::<R>(text).unwrap().rule
        };
        // Allow UDP before everything; then remove rule 2 (the /26 deny).
        let add = spec("[rule]\nproto = \"udp\"\naction = \"allow\"\npriority = 0\nid = 3\n");
        let after_add = format!(
            "{RULES}[[acl.rule]]\nproto = \"udp\"\naction = \"allow\"\npriority = 0\nid = 3\n"
        );
        let after_del =
            "[[acl.rule]]\nproto = \"tcp\"\ndst_ports = \"1-2\"\naction = \"deny\"\nid = 1\n\
                         [[acl.rule]]\nproto = \"udp\"\naction = \"allow\"\npriority = 0\nid = 3\n";
        let on = tables(RULES, 1, 1024);
        let off = tables(RULES, 1, 0);
        let (mut plain, mut cached) = (Acl::default(), Acl::default());
        let (want, _) = run(&mut plain, &off, 7, 400);
        assert_eq!(run(&mut cached, &on, 7, 400).0, want);
        // The same cache on the unchanged rules: the misses it has anyway.
        let mut control = Acl::default();
        run(&mut control, &on, 7, 400);
        let base = cached.cache.base;
        let on1 = on
            .with_rule_change(&RuleChange::Add(add.clone()), 2)
            .unwrap();
        let off1 = off.with_rule_change(&RuleChange::Add(add), 2).unwrap();
        let on2 = on1.with_rule_change(&RuleChange::Del(2), 3).unwrap();
        let off2 = off1.with_rule_change(&RuleChange::Del(2), 3).unwrap();
        assert!(
            on2.with_rule_change(&RuleChange::Del(2), 4).is_none(),
            "gone"
        );
        for (t_on, t_off, full) in [(&on1, &off1, after_add.as_str()), (&on2, &off2, after_del)] {
            let fresh = tables(full, 9, 0);
            let misses = cached.cache_counts.misses;
            let control_misses = control.cache_counts.misses;
            run(&mut control, &on, 7, 50);
            let control_misses = control.cache_counts.misses - control_misses;
            let (want, want_hits) = run(&mut Acl::default(), &fresh, 7, 50);
            let (plain_v, _) = run(&mut plain, t_off, 7, 50);
            let (got, got_hits) = run(&mut cached, t_on, 7, 50);
            assert_eq!(plain_v, want, "the delta equals a rebuild");
            assert_eq!(got, want, "the cache follows the change");
            // Hits by rule id are those of the rebuild.
            let by_id = |t: &Tables, hits: &[u64]| {
                let a = t.acl.as_ref().unwrap();
                let mut m: Vec<(u32, u64)> = hits
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| **h != 0)
                    .map(|(i, h)| (a.counter_ids[i], *h))
                    .collect();
                m.sort_unstable();
                m
            };
            assert_eq!(by_id(t_on, &got_hits), by_id(&fresh, &want_hits));
            assert_eq!(cached.cache.base, base, "not emptied");
            // Only keys whose rule went are classified again (rule 2 matched
            // a quarter of the keys at most).
            let extra = (cached.cache_counts.misses - misses).saturating_sub(control_misses);
            assert!(
                extra <= 160,
                "{extra} extra misses ({control_misses} anyway)"
            );
        }
        // The background recompile's result means the same; it is a new base.
        let re = on2.with_acl(
            std::sync::Arc::new(on2.acl.as_ref().unwrap().recompiled()),
            4,
        );
        assert_eq!(re.digest(), on2.digest());
        assert_eq!(re.digest(), tables(after_del, 9, 0).digest());
        assert_eq!(
            run(&mut cached, &re, 7, 50).0,
            run(&mut Acl::default(), &off2, 7, 50).0
        );
        assert_ne!(cached.cache.base, base);
    }

    /// Keys that never recur: after one window the cache is bypassed (and
    /// verdicts stay those of the classifier); after the bypass it is tried
    /// again, and recurring keys use it.
    #[test]
    fn test_acl_cache_bypassed_while_it_does_not_hit() {
        let (off, on) = (tables(RULES_A, 1, 0), tables(RULES_A, 1, 1024));
        let (mut plain, mut cached) = (Acl::default(), Acl::default());
        let unique = |i: u64| vxlan::FlowKey {
            vni: 0,
            src: u128::from(0x0a00_0000u32 + (i % 128) as u32),
            dst: u128::from(0x0a01_0000u32 + (i >> 7) as u32),
            sport: 1000,
            dport: (i % 3) as u16,
            proto: 6,
            v6: false,
        };
        let mut i = 0u64;
        let burst =
            |acl: &mut Acl, t: &Tables, keys: &dyn Fn(u64) -> vxlan::FlowKey, i: &mut u64| {
                let mut meta = [Meta::default(); 32];
                for m in meta.iter_mut() {
                    m.key = keys(*i);
                    *i += 1;
                }
                let mut v = [Verdict::Tx; 32];
                let mut pkts: [HeapBuf; 0] = [];
                acl.process(t, &mut pkts, &mut meta, &mut v);
                v
            };
        let window = (CACHE_WINDOW / 32) as usize;
        let bypass = (CACHE_BYPASS / 32) as usize;
        // One window of distinct keys: all misses, then the bypass starts.
        for _ in 0..window {
            let mut j = i;
            let a = burst(&mut plain, &off, &unique, &mut j);
            let b = burst(&mut cached, &on, &unique, &mut i);
            assert_eq!(a, b);
        }
        assert_eq!(cached.cache_counts.misses, u64::from(CACHE_WINDOW));
        assert_eq!(cached.cache_counts.bypassed, 0);
        for _ in 0..bypass {
            let mut j = i;
            let a = burst(&mut plain, &off, &unique, &mut j);
            let b = burst(&mut cached, &on, &unique, &mut i);
            assert_eq!(a, b);
        }
        assert_eq!(cached.cache_counts.bypassed, CACHE_BYPASS);
        assert_eq!(
            cached.cache_counts.misses,
            u64::from(CACHE_WINDOW),
            "no lookups while bypassed"
        );
        // Then the cache is used again, and 32 recurring keys hit.
        let same = |i: u64| unique(i % 32);
        for _ in 0..100 {
            burst(&mut cached, &on, &same, &mut i);
        }
        assert_eq!(cached.cache_counts.bypassed, CACHE_BYPASS);
        assert!(
            cached.cache_counts.hits >= 99 * 32,
            "{}",
            cached.cache_counts.hits
        );
    }

    /// The LB stage reads TCP flags from the packets: a client RST removes
    /// the flow's entry, a FIN marks it closing, other packets keep it.
    #[test]
    fn test_lb_stage_reads_tcp_flags() {
        let text = "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nunderlay_ips = [\"10.0.0.1\"]\n\
                    [[service]]\nname = \"web\"\nvip = \"192.168.0.1\"\nport = 80\nproto = \"tcp\"\n\
                    [[service.backend]]\nip = \"10.9.0.1\"\n";
        let cfg = Config::parse(text).unwrap();
        let t = Tables::build(&cfg, 1).unwrap();
        let mut lb = Lb::default();
        let mut inner = InnerParse::default();
        let send = |lb: &mut Lb, inner: &mut InnerParse, src: u8, flags: u8| {
            let mut f = Vec::new();
            vxlan::build_inner_frame(
                &vxlan::InnerSpec {
                    src_mac: [2, 0, 0, 0, 0, 2],
                    dst_mac: [2, 0, 0, 0, 0, 1],
                    src: std::net::Ipv4Addr::new(10, 1, 0, src).into(),
                    dst: std::net::Ipv4Addr::new(192, 168, 0, 1).into(),
                    proto: 6,
                    sport: 40000,
                    dport: 80,
                    ttl: 64,
                    frame_len: 80,
                },
                &mut f,
            );
            f[14 + 20 + 13] = flags; // TCP flags (the checksum is not looked at)
            let mut b = HeapBuf::with_capacity(256);
            b.load(&f, 0);
            let mut pkts = [b];
            let mut meta = [Meta::default()];
            let mut v = [Verdict::Tx];
            inner.process(&t, &mut pkts, &mut meta, &mut v);
            lb.process(&t, &mut pkts, &mut meta, &mut v);
            assert_eq!(v[0], Verdict::Tx);
            assert!(meta[0].finished, "encapsulated to the backend");
        };
        let live = |lb: &Lb| lb.flows.as_ref().unwrap().live(lb.now_ms());
        send(&mut lb, &mut inner, 1, 0x02); // SYN
        send(&mut lb, &mut inner, 2, 0x02);
        assert_eq!(live(&lb), 2);
        send(&mut lb, &mut inner, 1, 0x14); // RST|ACK
        assert_eq!(live(&lb), 1);
        send(&mut lb, &mut inner, 2, 0x11); // FIN|ACK
        let st = lb.flows.as_ref().unwrap().stats();
        assert_eq!((st.reset, st.closed), (1, 1));
        assert_eq!(live(&lb), 1);
    }

    /// A service's `new_flow_rate`: new flows over it are forwarded (to the
    /// hash's backend) but not stored, and reach the telemetry as the
    /// service's `rate_limited`.
    #[test]
    fn test_lb_stage_counts_rate_limited_per_service() {
        let text = "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nunderlay_ips = [\"10.0.0.1\"]\n\
                    [[service]]\nname = \"web\"\nvip = \"192.168.0.1\"\nport = 80\nproto = \"tcp\"\n\
                    scheduler = \"least_conn\"\nnew_flow_rate = 3\n\
                    [[service.backend]]\nip = \"10.9.0.1\"\n[[service.backend]]\nip = \"10.9.0.2\"\n";
        let t = Tables::build(&Config::parse(text).unwrap(), 1).unwrap();
        let mut lb = Lb::default();
        let mut inner = InnerParse::default();
        for src in 1..=10u8 {
            let mut f = Vec::new();
            vxlan::build_inner_frame(
                &vxlan::InnerSpec {
                    src_mac: [2, 0, 0, 0, 0, 2],
                    dst_mac: [2, 0, 0, 0, 0, 1],
                    src: std::net::Ipv4Addr::new(10, 1, 0, src).into(),
                    dst: std::net::Ipv4Addr::new(192, 168, 0, 1).into(),
                    proto: 6,
                    sport: 40000,
                    dport: 80,
                    ttl: 64,
                    frame_len: 80,
                },
                &mut f,
            );
            let mut b = HeapBuf::with_capacity(256);
            b.load(&f, 0);
            let mut pkts = [b];
            let mut meta = [Meta::default()];
            let mut v = [Verdict::Tx];
            inner.process(&t, &mut pkts, &mut meta, &mut v);
            lb.process(&t, &mut pkts, &mut meta, &mut v);
            assert_eq!(v[0], Verdict::Tx, "rate-limited flows are forwarded");
        }
        let flows = lb.flows.as_ref().unwrap();
        assert_eq!(
            flows.live(lb.now_ms()),
            3,
            "only the admitted flows are stored"
        );
        assert_eq!(flows.stats().rate_limited, 7);
        let mut tel = Telemetry::default();
        lb.flush_telemetry(&t, &mut tel);
        let web = tel.services["web"];
        assert_eq!((web.packets, web.rate_limited), (10, 7));
        assert_eq!(tel.flow_counters.rate_limited, 7);
        // Handed over once.
        let mut tel = Telemetry::default();
        lb.flush_telemetry(&t, &mut tel);
        assert!(tel.services.get("web").is_none_or(|w| w.rate_limited == 0));
    }
}
