//! The immutable lookup snapshot ([`LbTables`]) the workers read: service lookup,
//! Maglev tables, and backend selection through the per-worker flow table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::flow_table::{FlowTable, Pinned, Probe};
use crate::health::{Health, HealthMap, OnDown};
use crate::maglev::{self, BackendIdx, Permutation, WeightedBackend};
use crate::sched::{Cand, ConnKey, SchedState, Scheduler, SvcState, NO_COUNTER};
use crate::spec::{BackendState, EncapKind, LbError, MacAddr, Proto, ServiceSpec, Services};
use crate::{client_hash, flow_hash, fold_mul, FlowKey};

/// Index of a service in an [`LbTables`] snapshot (services are in name order).
/// Valid for the snapshot that returned it; per-service counters kept by the
/// engine should be re-keyed by name when the snapshot changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceIdx(pub u32);

/// Everything the engine needs to encapsulate one packet to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRef {
    /// Backend address; IPv4 is `u32::from(Ipv4Addr)` zero-extended.
    pub addr: u128,
    /// Whether `addr` is IPv6.
    pub v6: bool,
    /// Backend MAC (always present for `vxlan` services).
    pub mac: Option<[u8; 6]>,
    /// How to encapsulate.
    pub encap: EncapKind,
    /// Index of the backend in its service ([`LbTables::backends`]), for counters.
    pub index: BackendIdx,
}

impl BackendRef {
    /// The backend address as an `IpAddr`.
    pub fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.addr as u32))
        }
    }
}

/// The backend chosen for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selected {
    /// Where to send it.
    pub backend: BackendRef,
    /// True if the flow was not (validly) in the flow table: a new selection.
    pub new_flow: bool,
}

/// Per-packet result of [`LbTables::process_burst`]: 8 bytes, so a burst of
/// verdicts is cheap to write; [`LbTables::backend_ref`] gives the address,
/// MAC and encapsulation of a `Forward` backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbVerdict {
    /// The packet is not addressed to a service VIP.
    #[default]
    NotService,
    /// The service has no backend able to take the flow: drop (NoBackend).
    NoBackend(ServiceIdx),
    /// Encapsulate to backend `backend` of service `svc`.
    Forward {
        /// The service (for per-service counters).
        svc: ServiceIdx,
        /// The backend's index in the service (for per-backend counters and
        /// [`LbTables::backend_ref`]).
        backend: BackendIdx,
        /// True if this packet started (or re-homed) a flow.
        new_flow: bool,
    },
}

/// A backend as seen in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Address.
    pub ip: IpAddr,
    /// Weight (0 = no new flows).
    pub weight: u32,
    /// State.
    pub state: BackendState,
    /// MAC, if configured.
    pub mac: Option<MacAddr>,
    /// Health the snapshot was built with (separate from the admin `state`).
    pub health: Health,
    /// Whether flows pinned to it stay: not `Down`, and not unhealthy under
    /// `on_down = "rehome"`.
    keeps_flows: bool,
    /// Number of Maglev table entries it owns (its share of new flows is
    /// `slots / table_size`).
    pub slots: u32,
    r: BackendRef,
}

impl Backend {
    /// The encapsulation target for this backend.
    pub fn backend_ref(&self) -> BackendRef {
        self.r
    }

    /// Whether it may be given new flows: admin-active, positive weight, not
    /// unhealthy (unknown counts as healthy).
    pub fn eligible(&self) -> bool {
        self.state == BackendState::Active && self.weight > 0 && self.health != Health::Unhealthy
    }

    /// Whether flows pinned to it keep it.
    pub fn keeps_flows(&self) -> bool {
        self.keeps_flows
    }
}

/// A service as seen in a snapshot.
#[derive(Clone, Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// VIP.
    pub vip: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// VNI scope.
    pub vni: Option<u32>,
    /// Encapsulation.
    pub encap: EncapKind,
    /// Maglev table size.
    pub table_size: u32,
    /// How new flows choose a backend.
    pub scheduler: Scheduler,
    /// New flows per second per worker (0 = no cap).
    pub new_flow_rate: u32,
    /// True if the service has health checks.
    pub checked: bool,
    /// Backends sorted by Maglev key (the canonical IP text).
    backends: Vec<Backend>,
    /// (addr, v6, index) sorted, for finding a pinned backend after a rebuild.
    by_addr: Vec<(u128, bool, BackendIdx)>,
    /// The Maglev table over `backends` indices; empty if no backend is eligible.
    table: Arc<Vec<BackendIdx>>,
    /// What `table` was computed from: eligible (addr, v6, weight, index).
    input: Vec<(u128, bool, u32, BackendIdx)>,
    /// Generation of the backend list: unchanged while `(addr, v6, down)` of
    /// every index is unchanged, so a flow pinned under this generation has a
    /// valid index without any further check.
    gen: u32,
}

impl Service {
    /// The backends, in the order [`BackendRef::index`] refers to.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The Maglev table (backend indices); empty if no backend is eligible.
    pub fn table(&self) -> &[BackendIdx] {
        &self.table
    }

    /// False when the service has backends and every one is unhealthy (new
    /// flows are dropped as `no_backend`); true otherwise.
    pub fn healthy(&self) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|b| b.health != Health::Unhealthy)
    }

    /// The Maglev table entry (bucket) a flow with this hash falls in.
    #[inline]
    pub fn bucket(&self, hash: u64) -> usize {
        // Lemire's multiply-shift reduction of the high 32 bits onto [0, M): no
        // division on the fast path, and independent of the low bits the flow
        // table uses for its set index.
        (((hash >> 32) * self.table.len() as u64) >> 32) as usize
    }

    /// The backend a new flow with this hash would get.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<BackendIdx> {
        self.table.get(self.bucket(hash)).copied()
    }

    #[inline]
    fn find(&self, addr: u128, v6: bool) -> Option<BackendIdx> {
        self.by_addr
            .binary_search_by(|&(a, v, _)| (a, v).cmp(&(addr, v6)))
            .ok()
            .map(|i| self.by_addr[i].2)
    }
}

fn addr_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

const VIP_K0: u64 = 0x9E37_79B9_7F4A_7C15;
const VIP_K1: u64 = 0xD6E8_FEB8_6659_FD93;
const META_USED: u32 = 1 << 31;
/// Above this footprint each lookup's set metadata is prefetched (when the
/// caller gives a prefetch function): the used ways no longer fit in L1
/// beside everything else a worker touches per packet.
const PREFETCH_ABOVE_BYTES: usize = 32 << 10;
/// Above this footprint a burst's lookups are preceded by a pass over their
/// entries (prefetched, or touched with plain loads when the caller gives no
/// prefetch function, which also touch the set metadata first): the table
/// misses L2. Plain loads hold up the CPU and do not pay below.
const TOUCH_ABOVE_BYTES: usize = 2 << 20;
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Default, Debug)]
struct VipSlot {
    addr: u128,
    /// 0 = empty; else `META_USED | v6 << 24 | proto << 16 | port`.
    meta: u32,
    unscoped: u32,
    scoped_start: u32,
    scoped_len: u32,
}

#[inline]
pub(crate) fn vip_meta(v6: bool, proto: u8, port: u16) -> u32 {
    META_USED | (u32::from(v6) << 24) | (u32::from(proto) << 16) | u32::from(port)
}

#[inline]
fn vip_hash(addr: u128, meta: u32) -> u64 {
    fold_mul(
        addr as u64 ^ VIP_K0,
        (addr >> 64) as u64 ^ u64::from(meta) ^ VIP_K1,
    )
}

/// The immutable snapshot workers read. Build it with [`build`] (or
/// [`LbTables::rebuild`] to reuse unchanged Maglev tables) off the fast path.
#[derive(Clone, Debug, Default)]
pub struct LbTables {
    services: Vec<Service>,
    /// Open-addressing map (linear probing, at most half full) from
    /// (vip, v6, proto, port) to its services.
    vips: Box<[VipSlot]>,
    /// (vni, service) ranges referenced by `VipSlot::scoped_*`, sorted by vni.
    scoped: Vec<(u32, u32)>,
    /// Unique per built snapshot (0 for the empty default): flow tables
    /// re-sync their scheduler state when it changes.
    id: u64,
    /// Other gateways' choices, consulted on a flow-table miss.
    shared: Option<SharedRef>,
}

#[derive(Clone, Debug)]
struct SharedRef {
    store: std::sync::Arc<crate::shared_flows::SharedFlows>,
    max_age_ms: u64,
}

/// Flow-table sets swept per burst while a service counts active flows (so
/// that idle-expired flows stop counting within `sets / 4` bursts).
const SWEEP_SETS_PER_BURST: usize = 4;

static NEXT_SNAPSHOT: AtomicU64 = AtomicU64::new(1);

/// Builds a snapshot from the desired state.
pub fn build(services: &Services) -> Result<LbTables, LbError> {
    LbTables::rebuild(&LbTables::default(), services)
}

impl LbTables {
    /// An empty snapshot (no services).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Makes a flow-table miss look up `store` (other gateways' choices, at
    /// most `max_age_ms` old) before Maglev: a shared choice whose backend is
    /// in the service and eligible is taken and pinned like Maglev's.
    pub fn set_shared_flows(
        &mut self,
        store: Option<std::sync::Arc<crate::shared_flows::SharedFlows>>,
        max_age_ms: u64,
    ) {
        self.shared = store.map(|store| SharedRef { store, max_age_ms });
    }

    /// Builds a snapshot, reusing `prev`'s Maglev table for every service whose
    /// table inputs (size and eligible backends with weights) did not change.
    /// (Maglev needs no diffing for "only what changed moves": a table depends
    /// only on the backend set, and changing the set moves few entries.)
    pub fn rebuild(prev: &LbTables, services: &Services) -> Result<LbTables, LbError> {
        Self::rebuild_with_health(prev, services, &HealthMap::new())
    }

    /// [`rebuild`](Self::rebuild) with the backends' health (absent = unknown).
    pub fn rebuild_with_health(
        prev: &LbTables,
        services: &Services,
        health: &HealthMap,
    ) -> Result<LbTables, LbError> {
        let mut out = Vec::with_capacity(services.len());
        // By name, so that a change among 1000 services does not compare
        // 1000 × 1000 names.
        let by_name: std::collections::HashMap<&str, &Service> =
            prev.services.iter().map(|s| (s.name.as_str(), s)).collect();
        for spec in services.iter() {
            let prev_svc = by_name.get(spec.name.as_str()).copied();
            out.push(build_service(spec, prev_svc, health)?);
        }
        let (vips, scoped) = build_vip_map(&out);
        Ok(LbTables {
            services: out,
            vips,
            scoped,
            id: NEXT_SNAPSHOT.fetch_add(1, Ordering::Relaxed),
            // The store outlives snapshots: keep the previous one's.
            shared: prev.shared.clone(),
        })
    }

    /// Brings a worker's scheduler state (kept in its flow table) in line
    /// with this snapshot: nothing to do (one comparison) when it already
    /// is; otherwise allocates, so call it before a burst (the burst and
    /// [`select`](Self::select) call it too). Active-flow counts and rate-cap
    /// buckets carry over (by VIP/port/protocol/backend and by service
    /// name); round-robin positions restart.
    #[inline]
    pub fn sync_flows(&self, flows: &mut FlowTable) {
        if !flows.sched.synced(self.id) {
            self.resync(&mut flows.sched);
        }
    }

    #[cold]
    #[inline(never)]
    fn resync(&self, st: &mut SchedState) {
        let conn_key = |s: &Service, b: &Backend| -> ConnKey {
            let (vip, v6) = addr_bits(s.vip);
            (vip, b.r.addr, vip_meta(v6, s.proto.number(), s.port))
        };
        let mut keys: Vec<ConnKey> = self
            .services
            .iter()
            .filter(|s| s.scheduler.counts())
            .flat_map(|s| s.backends.iter().map(move |b| conn_key(s, b)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let counts: Vec<u32> = keys
            .iter()
            .map(|k| st.keys.binary_search(k).map_or(0, |i| st.counts[i]))
            .collect();
        let mut old: std::collections::HashMap<String, SvcState> = std::mem::take(&mut st.svcs)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut cands = Vec::new();
        let mut svcs = Vec::with_capacity(self.services.len());
        for s in &self.services {
            let cand_start = cands.len() as u32;
            if s.scheduler != Scheduler::Maglev && s.scheduler != Scheduler::SrcIp {
                for (i, b) in s.backends.iter().enumerate().filter(|(_, b)| b.eligible()) {
                    let counter = if s.scheduler.counts() {
                        keys.binary_search(&conn_key(s, b))
                            .map_or(NO_COUNTER, |i| i as u32)
                    } else {
                        NO_COUNTER
                    };
                    cands.push(Cand {
                        idx: i as BackendIdx,
                        weight: b.weight,
                        counter,
                    });
                }
            }
            let prev = old.remove(&s.name);
            svcs.push(SvcState {
                name: s.name.clone(),
                cand_start,
                cand_len: cands.len() as u32 - cand_start,
                tokens: prev.as_ref().map_or(0, |p| p.tokens),
                last: prev.as_ref().map_or(u64::MAX, |p| p.last),
                rate_limited: prev.map_or(0, |p| p.rate_limited),
            });
        }
        // Counts of services that are gone are still handed out once.
        st.retired.extend(
            old.into_values()
                .filter(|s| s.rate_limited != 0)
                .map(|s| (s.name, s.rate_limited)),
        );
        st.counting = self.services.iter().any(|s| s.scheduler.counts());
        st.rr = vec![0; cands.len()];
        st.cands = cands;
        st.svcs = svcs;
        st.keys = keys;
        st.counts = counts;
        st.snap = self.id;
    }

    /// The active flows of each backend of `svc` (indexed like
    /// [`backends`](Self::backends)) as this worker's flow table counts them
    /// for `least_conn` / `weighted_least_conn`; `None` for other schedulers.
    pub fn active_flows(&self, svc: ServiceIdx, flows: &FlowTable) -> Option<Vec<u32>> {
        let s = self.service(svc).filter(|s| s.scheduler.counts())?;
        let (vip, v6) = addr_bits(s.vip);
        let meta = vip_meta(v6, s.proto.number(), s.port);
        let st = &flows.sched;
        Some(
            s.backends
                .iter()
                .map(|b| {
                    st.keys
                        .binary_search(&(vip, b.r.addr, meta))
                        .map_or(0, |i| st.counts[i])
                })
                .collect(),
        )
    }

    /// Identifies the services and backends (names, order, indices): unique
    /// per built snapshot, kept by clones (which is how a snapshot that
    /// changes something else, an ACL rule say, carries these over), 0 for
    /// the empty default. Per-index counters stay meaningful while it is
    /// unchanged.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True if there is no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// A service by index.
    pub fn service(&self, svc: ServiceIdx) -> Option<&Service> {
        self.services.get(svc.0 as usize)
    }

    /// All services with their indices.
    pub fn services(&self) -> impl Iterator<Item = (ServiceIdx, &Service)> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (ServiceIdx(i as u32), s))
    }

    /// A service's index by name.
    pub fn service_by_name(&self, name: &str) -> Option<ServiceIdx> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .map(|i| ServiceIdx(i as u32))
    }

    /// A service's backends (empty for an unknown index).
    pub fn backends(&self, svc: ServiceIdx) -> &[Backend] {
        self.service(svc).map_or(&[], |s| &s.backends)
    }

    /// The service a packet is addressed to: `(key.vni, key.dst, key.proto,
    /// key.dport)`. A service scoped to `key.vni` wins over an unscoped one.
    #[inline]
    pub fn lookup_service(&self, key: &FlowKey) -> Option<ServiceIdx> {
        if self.vips.is_empty() {
            return None;
        }
        let mask = self.vips.len() - 1;
        let meta = vip_meta(key.v6, key.proto, key.dport);
        let mut i = vip_hash(key.dst, meta) as usize & mask;
        // The map is at most half full, so the probe ends at an empty slot.
        loop {
            let s = &self.vips[i];
            if s.meta == meta && s.addr == key.dst {
                if s.scoped_len != 0 {
                    let start = s.scoped_start as usize;
                    let range = self.scoped.get(start..start + s.scoped_len as usize)?;
                    if let Ok(j) = range.binary_search_by_key(&key.vni, |&(v, _)| v) {
                        return Some(ServiceIdx(range[j].1));
                    }
                }
                return (s.unscoped != NONE).then_some(ServiceIdx(s.unscoped));
            }
            if s.meta == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Chooses the backend for a packet of service `svc` with flow key `key`
    /// and `hash = flow_hash(key)`:
    /// * a flow in `flows` whose backend is still in the service and not `Down`
    ///   keeps it (also when it is `Draining` or has weight 0);
    /// * otherwise (new, expired, or pinned to a removed/down backend) the Maglev
    ///   table picks one among the eligible backends and the flow is pinned to it;
    /// * `None` if no backend is eligible (drop: NoBackend); nothing is stored.
    #[inline]
    pub fn select(
        &self,
        svc: ServiceIdx,
        key: &FlowKey,
        hash: u64,
        flows: &mut FlowTable,
        now: u64,
    ) -> Option<Selected> {
        let s = self.services.get(svc.0 as usize)?;
        self.sync_flows(flows);
        let (idx, new_flow) = select_in(
            s,
            svc.0 as usize,
            key,
            hash,
            flows,
            now,
            0,
            self.shared.as_ref(),
        )?;
        Some(Selected {
            backend: s.backends[usize::from(idx)].r,
            new_flow,
        })
    }

    /// The encapsulation target of backend `backend` of service `svc` (as found
    /// in [`LbVerdict::Forward`]).
    #[inline]
    pub fn backend_ref(&self, svc: ServiceIdx, backend: BackendIdx) -> Option<&BackendRef> {
        self.services
            .get(svc.0 as usize)?
            .backends
            .get(usize::from(backend))
            .map(|b| &b.r)
    }

    /// The whole LB stage for a burst: service lookup, flow hash and
    /// [`select`](Self::select) for `keys[i]`, written to `out[i]` (for
    /// `i < min(keys.len(), out.len())`). The flow-table sets of a whole burst are
    /// touched first, then the matching entries, so that their cache misses
    /// overlap instead of being paid one after the other (with plain loads,
    /// which pay only for tables whose used ways exceed 2 MiB; see
    /// [`process_burst_with`](Self::process_burst_with) for prefetches).
    pub fn process_burst(
        &self,
        keys: &[FlowKey],
        flows: &mut FlowTable,
        now: u64,
        out: &mut [LbVerdict],
    ) {
        self.process_burst_with(keys, flows, now, out, None::<fn(*const u8)>);
    }

    /// [`process_burst_with`](Self::process_burst_with) with the TCP flags of
    /// each packet (`tcp_flags[i]` for `keys[i]`, [`tcp_flags`] bits; missing
    /// entries and non-TCP packets are 0), which end connections:
    /// * RST: the packet goes to the flow's backend and the entry is removed
    ///   at once (a reset for a flow not in the table is sent where Maglev
    ///   points and nothing is stored);
    /// * FIN: the entry's idle timeout becomes `fin_timeout`
    ///   ([`FlowTable::close`]);
    /// * SYN without ACK on an entry whose backend no longer takes new flows
    ///   (draining, weight 0, down or removed): a new connection on a reused
    ///   5-tuple, so the backend is chosen again (counted as `rehomed`).
    #[inline]
    pub fn process_burst_flags_with<F: Fn(*const u8)>(
        &self,
        keys: &[FlowKey],
        tcp_flags: &[u8],
        flows: &mut FlowTable,
        now: u64,
        out: &mut [LbVerdict],
        prefetch: Option<F>,
    ) {
        self.burst(keys, tcp_flags, flows, now, out, prefetch);
    }

    /// [`process_burst`](Self::process_burst) with a prefetch function:
    /// `prefetch(address)` is called for each packet's set metadata before
    /// the lookups once the used ways exceed 32 KiB (beyond L1), and for its
    /// entry too above 2 MiB, instead of touching them with plain loads
    /// (above 2 MiB only). A real prefetch instruction (which this crate,
    /// free of `unsafe`, cannot issue) does not hold up the CPU while the line
    /// arrives. `prefetch` must not dereference the address: it may be any
    /// address inside the table.
    #[inline]
    pub fn process_burst_with<F: Fn(*const u8)>(
        &self,
        keys: &[FlowKey],
        flows: &mut FlowTable,
        now: u64,
        out: &mut [LbVerdict],
        prefetch: Option<F>,
    ) {
        self.burst(keys, &[], flows, now, out, prefetch);
    }

    #[inline(always)]
    fn burst<F: Fn(*const u8)>(
        &self,
        keys: &[FlowKey],
        tcp_flags: &[u8],
        flows: &mut FlowTable,
        now: u64,
        out: &mut [LbVerdict],
        prefetch: Option<F>,
    ) {
        const CHUNK: usize = 64;
        let n = keys.len().min(out.len());
        // Touching each packet's set metadata, then its entry, before the real
        // lookups lets the CPU overlap their cache misses (the lookup loop itself
        // is too long for the out-of-order window to reach the next packets).
        // Measured with lb-bench: on a DRAM-sized table plain loads save 2-3x,
        // on a cache-resident one they cost ~10 cycles/packet, so they are
        // used only above 2 MiB (`TOUCH_ABOVE_BYTES`). Prefetch instructions
        // do not wait for the line: the set's metadata line is prefetched as
        // soon as the hash is known from an L1-exceeding table on
        // (`PREFETCH_ABOVE_BYTES`), and the entry, whose address needs that
        // line, in a pass of its own above 2 MiB. The target pipeline's
        // thousand flows (128 KiB of entries and set lines, L2-resident):
        // 253.0 on-CPU cycles/packet without prefetches, 240.9 with both
        // passes, 238.8 with the metadata prefetch alone (medians of 15
        // alternating replays).
        let fp = flows.footprint_bytes();
        let pf_meta = prefetch.as_ref().filter(|_| fp > PREFETCH_ABOVE_BYTES);
        let pf_entry = prefetch.as_ref().filter(|_| fp > TOUCH_ABOVE_BYTES);
        let touch = prefetch.is_none() && fp > TOUCH_ABOVE_BYTES;
        self.sync_flows(flows);
        if flows.sched.counting {
            flows.sweep(now, SWEEP_SETS_PER_BURST);
        }
        let mut svcs = [None::<ServiceIdx>; CHUNK];
        let mut hashes = [0u64; CHUNK];
        for (c, (keys, out)) in keys[..n]
            .chunks(CHUNK)
            .zip(out[..n].chunks_mut(CHUNK))
            .enumerate()
        {
            for (i, k) in keys.iter().enumerate() {
                svcs[i] = self.lookup_service(k);
                if svcs[i].is_some() {
                    hashes[i] = flow_hash(k);
                    if let Some(pf) = pf_meta {
                        pf(flows.meta_addr(hashes[i]));
                    }
                }
            }
            if let Some(pf) = pf_entry {
                for (i, k) in keys.iter().enumerate() {
                    if svcs[i].is_some() {
                        if let Some(a) = flows.entry_addr(hashes[i], k.proto) {
                            pf(a);
                        }
                    }
                }
            } else if touch {
                let mut touch = 0u64;
                for (i, &h) in hashes[..keys.len()].iter().enumerate() {
                    if svcs[i].is_some() {
                        touch ^= u64::from(flows.prefetch(h));
                    }
                }
                for (i, k) in keys.iter().enumerate() {
                    if svcs[i].is_some() {
                        touch ^= flows.prefetch_entry(hashes[i], k.proto);
                    }
                }
                std::hint::black_box(touch);
            }
            for (i, (k, o)) in keys.iter().zip(out.iter_mut()).enumerate() {
                *o = match svcs[i] {
                    None => LbVerdict::NotService,
                    Some(svc) => match self.services.get(svc.0 as usize).and_then(|s| {
                        let f = tcp_flags.get(c * CHUNK + i).copied().unwrap_or(0);
                        select_in(
                            s,
                            svc.0 as usize,
                            k,
                            hashes[i],
                            flows,
                            now,
                            f,
                            self.shared.as_ref(),
                        )
                    }) {
                        Some((backend, new_flow)) => LbVerdict::Forward {
                            svc,
                            backend,
                            new_flow,
                        },
                        None => LbVerdict::NoBackend(svc),
                    },
                };
            }
        }
    }
}

/// TCP flag bits as [`LbTables::process_burst_flags_with`] takes them (byte 13
/// of the TCP header).
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize: opens a connection.
    pub const SYN: u8 = 0x02;
    /// Reset: ends a connection at once.
    pub const RST: u8 = 0x04;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// The bits that change what the flow table does.
    pub const ENDS: u8 = FIN | SYN | RST;
}

/// Selection within one service; returns the backend index and whether the
/// flow is new (see [`LbTables::select`] and, for `flags`,
/// [`LbTables::process_burst_flags_with`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn select_in(
    s: &Service,
    si: usize,
    key: &FlowKey,
    hash: u64,
    flows: &mut FlowTable,
    now: u64,
    flags: u8,
    shared: Option<&SharedRef>,
) -> Option<(BackendIdx, bool)> {
    match flows.lookup(key, hash, now) {
        Probe::Hit(slot, p) => {
            if p.gen == s.gen && flags & tcp_flags::ENDS == 0 {
                flows.stats_mut().hits += 1;
                return Some((p.idx, false));
            }
            hit_slow(s, si, key, hash, flows, slot, p, flags)
        }
        Probe::Miss(slot) => {
            flows.stats_mut().misses += 1;
            if flags & tcp_flags::RST != 0 {
                // A reset of a flow we do not know: nothing to remember.
                let idx = hash_pick(s, key, hash)?;
                flows.stats_mut().reset += 1;
                return Some((idx, true));
            }
            // Another gateway's choice (a flow ECMP moved here): an
            // established flow, so neither rate-capped nor scheduled again
            // (and not counted by least_conn on this worker).
            let shared_idx = shared.and_then(|x| shared_choice(s, x, hash));
            if shared_idx.is_none()
                && s.new_flow_rate != 0
                && !flows.sched.admit(si, s.new_flow_rate, now)
            {
                // Over the cap: a consistent backend, nothing stored.
                let idx = hash_pick(s, key, hash)?;
                flows.stats_mut().rate_limited += 1;
                return Some((idx, true));
            }
            let (idx, counter) = match shared_idx {
                Some(idx) => (idx, NO_COUNTER),
                None => choose(s, si, key, hash, &mut flows.sched)?,
            };
            if counter == NO_COUNTER {
                flows.insert_at(slot, key, hash, now, pinned(s, idx));
            } else {
                flows.insert_counted_at(slot, key, hash, now, pinned(s, idx), counter);
            }
            if flags & tcp_flags::FIN != 0 {
                flows.close(slot);
            }
            Some((idx, true))
        }
    }
}

/// The backend another gateway chose for this flow, if it is still in the
/// service and eligible.
#[inline(never)]
fn shared_choice(s: &Service, x: &SharedRef, hash: u64) -> Option<BackendIdx> {
    let (addr, v6) = x.store.lookup(hash, x.max_age_ms)?;
    let idx = s
        .find(addr, v6)
        .filter(|&i| s.backends[usize::from(i)].eligible())?;
    x.store.note_used();
    Some(idx)
}

/// The backend the service's hash names for this flow (the Maglev table,
/// indexed by the client hash for `src_ip` and by the flow hash otherwise);
/// `None` if no backend is eligible.
#[inline(always)]
fn hash_pick(s: &Service, key: &FlowKey, hash: u64) -> Option<BackendIdx> {
    if s.scheduler == Scheduler::SrcIp {
        s.pick(client_hash(key))
    } else {
        s.pick(hash)
    }
}

/// The scheduler's choice for a new flow and the active-flow counter to
/// count it on (`NO_COUNTER` unless the scheduler counts).
#[inline(always)]
fn choose(
    s: &Service,
    si: usize,
    key: &FlowKey,
    hash: u64,
    st: &mut SchedState,
) -> Option<(BackendIdx, u32)> {
    if s.scheduler == Scheduler::Maglev {
        return s.pick(hash).map(|i| (i, NO_COUNTER));
    }
    choose_other(s, si, key, hash, st)
}

#[inline(never)]
fn choose_other(
    s: &Service,
    si: usize,
    key: &FlowKey,
    hash: u64,
    st: &mut SchedState,
) -> Option<(BackendIdx, u32)> {
    if s.table.is_empty() {
        return None; // no eligible backend
    }
    let SchedState {
        svcs,
        cands,
        rr,
        counts,
        ..
    } = st;
    let range = svcs
        .get(si)
        .map(|x| x.cand_start as usize..(x.cand_start + x.cand_len) as usize)
        .filter(|r| r.end <= cands.len() && !r.is_empty());
    let hashed = |h: u64| s.pick(h).map(|i| (i, NO_COUNTER));
    match s.scheduler {
        Scheduler::Maglev => hashed(hash),
        Scheduler::SrcIp => hashed(client_hash(key)),
        // Without state for this snapshot (not synced): Maglev.
        _ if range.is_none() => hashed(hash),
        Scheduler::RoundRobin => {
            let r = range?;
            // Smooth weighted round robin (nginx): every eligible backend
            // gains its weight, the richest is chosen and pays the total.
            let (cs, cur) = (&cands[r.clone()], &mut rr[r]);
            let mut total = 0i64;
            let mut best = 0;
            let mut best_cur = i64::MIN;
            for (j, (c, w)) in cs.iter().zip(cur.iter_mut()).enumerate() {
                *w += i64::from(c.weight);
                total += i64::from(c.weight);
                if *w > best_cur {
                    best_cur = *w;
                    best = j;
                }
            }
            cur[best] -= total;
            Some((cs[best].idx, NO_COUNTER))
        }
        Scheduler::LeastConn | Scheduler::WeightedLeastConn => {
            let cs = &cands[range?];
            let n = cs.len();
            let weighted = s.scheduler == Scheduler::WeightedLeastConn;
            let load = |c: &Cand| counts.get(c.counter as usize).map_or(0, |&x| u64::from(x));
            // Ties go to the first in a rotation starting where the flow
            // hash points, so that equal backends share new flows instead of
            // the first one taking every tie.
            let start = (((hash >> 32) * n as u64) >> 32) as usize;
            let mut best = start;
            let (mut best_c, mut best_w) = (load(&cs[start]), u64::from(cs[start].weight));
            for j in 1..n {
                let i = if start + j >= n {
                    start + j - n
                } else {
                    start + j
                };
                let c = load(&cs[i]);
                let w = u64::from(cs[i].weight);
                // wlc: (c + 1) / w < (best_c + 1) / best_w, without division
                // (the load the backend would have after taking the flow).
                let better = if weighted {
                    (c + 1) * best_w < (best_c + 1) * w
                } else {
                    c < best_c
                };
                if better {
                    best = i;
                    best_c = c;
                    best_w = w;
                }
            }
            Some((cs[best].idx, cs[best].counter))
        }
    }
}

/// A hit whose backend list changed since the flow was pinned, or that
/// carries FIN, SYN or RST.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn hit_slow(
    s: &Service,
    si: usize,
    key: &FlowKey,
    hash: u64,
    flows: &mut FlowTable,
    slot: crate::flow_table::Slot,
    p: Pinned,
    flags: u8,
) -> Option<(BackendIdx, bool)> {
    // The flow's backend, if it may keep it: unchanged list, or found by
    // address and keeping its flows (not down, not unhealthy with
    // `on_down = "rehome"`).
    let mut kept = if p.gen == s.gen {
        Some(p.idx)
    } else {
        s.find(p.addr, p.v6)
            .filter(|&idx| s.backends[usize::from(idx)].keeps_flows)
    };
    // A SYN (not a SYN-ACK) on a backend that takes no new flows is a new
    // connection on a reused 5-tuple: choose again.
    if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        kept = kept.filter(|&idx| s.backends[usize::from(idx)].eligible());
    }
    if let Some(idx) = kept {
        flows.stats_mut().hits += 1;
        if flags & tcp_flags::RST != 0 {
            flows.remove_at(slot);
            flows.stats_mut().reset += 1;
        } else {
            if p.gen != s.gen {
                flows.repin(
                    slot,
                    Pinned {
                        idx,
                        gen: s.gen,
                        ..p
                    },
                );
            }
            if flags & tcp_flags::FIN != 0 {
                flows.close(slot);
            }
        }
        return Some((idx, false));
    }
    // Removed, down, or a new connection to a backend that takes none: re-select.
    flows.stats_mut().misses += 1;
    let Some((idx, counter)) = choose(s, si, key, hash, &mut flows.sched) else {
        flows.remove_at(slot);
        return None;
    };
    flows.stats_mut().rehomed += 1;
    if flags & tcp_flags::RST != 0 {
        flows.remove_at(slot);
        flows.stats_mut().reset += 1;
    } else {
        flows.repin_counted(slot, pinned(s, idx), counter);
        if flags & tcp_flags::FIN != 0 {
            flows.close(slot);
        }
    }
    Some((idx, true))
}

#[inline]
fn pinned(s: &Service, idx: BackendIdx) -> Pinned {
    let b = &s.backends[usize::from(idx)];
    Pinned {
        addr: b.r.addr,
        v6: b.r.v6,
        idx,
        gen: s.gen,
    }
}

/// Source of backend-list generations; unique within the process (flow tables
/// never outlive it). 0 is never handed out.
static NEXT_GEN: AtomicU32 = AtomicU32::new(1);

fn next_gen() -> u32 {
    loop {
        let g = NEXT_GEN.fetch_add(1, Ordering::Relaxed);
        if g != 0 {
            return g;
        }
    }
}

fn build_service(
    spec: &ServiceSpec,
    prev: Option<&Service>,
    health_map: &HealthMap,
) -> Result<Service, LbError> {
    spec.validate()?;
    let hs = spec.health.as_ref().filter(|h| h.enabled());
    let rehome = hs.is_none_or(|h| h.on_down == OnDown::Rehome);
    let mut keyed: Vec<(String, &crate::spec::BackendSpec)> = spec
        .backends
        .iter()
        .map(|b| (b.ip.to_string(), b))
        .collect();
    keyed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut backends: Vec<Backend> = keyed
        .iter()
        .enumerate()
        .map(|(i, (_, b))| {
            let (addr, v6) = addr_bits(b.ip);
            let health = if hs.is_some() {
                health_map
                    .get(&(spec.name.clone(), b.ip))
                    .copied()
                    .unwrap_or_default()
            } else {
                Health::Unknown
            };
            Backend {
                ip: b.ip,
                weight: b.weight,
                state: b.state,
                mac: b.mac,
                health,
                keeps_flows: b.state != BackendState::Down
                    && !(rehome && health == Health::Unhealthy),
                slots: 0,
                r: BackendRef {
                    addr,
                    v6,
                    mac: b.mac.map(|m| m.0),
                    encap: spec.encap,
                    index: i as BackendIdx,
                },
            }
        })
        .collect();
    let input: Vec<(u128, bool, u32, BackendIdx)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.eligible())
        .map(|(i, b)| (b.r.addr, b.r.v6, b.weight, i as BackendIdx))
        .collect();
    let gen = match prev {
        Some(p) if same_backend_list(&p.backends, &backends) => p.gen,
        _ => next_gen(),
    };
    let reusable = prev.filter(|p| p.table_size == spec.table_size && p.input == input);
    let table: Arc<Vec<BackendIdx>> = if let Some(p) = reusable {
        Arc::clone(&p.table)
    } else if input.is_empty() {
        Arc::new(Vec::new())
    } else {
        let m = spec.table_size;
        let wb: Vec<WeightedBackend> = input
            .iter()
            .map(|&(_, _, weight, i)| WeightedBackend {
                perm: Permutation::from_key(keyed[usize::from(i)].0.as_bytes(), m),
                weight,
            })
            .collect();
        let mut t = maglev::populate_weighted(&wb, m).map_err(|e| LbError::InvalidService {
            service: spec.name.clone(),
            field: "table_size",
            reason: e.to_string(),
        })?;
        // Table entries index `input`; map them to backend indices (nothing to
        // do when every backend is eligible).
        if input.len() != backends.len() {
            for e in &mut t {
                *e = input[usize::from(*e)].3;
            }
        }
        Arc::new(t)
    };
    for &e in table.iter() {
        backends[usize::from(e)].slots += 1;
    }
    let mut by_addr: Vec<(u128, bool, BackendIdx)> = backends
        .iter()
        .map(|b| (b.r.addr, b.r.v6, b.r.index))
        .collect();
    by_addr.sort_unstable();
    Ok(Service {
        name: spec.name.clone(),
        vip: spec.vip,
        port: spec.port,
        proto: spec.proto,
        vni: spec.vni,
        encap: spec.encap,
        table_size: spec.table_size,
        scheduler: spec.scheduler,
        new_flow_rate: spec.new_flow_rate,
        checked: hs.is_some(),
        backends,
        by_addr,
        table,
        input,
        gen,
    })
}

/// Same addresses at the same indices, and the same ones keeping their flows.
fn same_backend_list(a: &[Backend], b: &[Backend]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.r.addr == y.r.addr && x.r.v6 == y.r.v6 && x.keeps_flows == y.keeps_flows
        })
}

fn build_vip_map(services: &[Service]) -> (Box<[VipSlot]>, Vec<(u32, u32)>) {
    // Group services by (vip, v6, proto, port).
    let mut groups: Vec<((u128, u32), Option<u32>, u32)> = services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (addr, v6) = addr_bits(s.vip);
            (
                (addr, vip_meta(v6, s.proto.number(), s.port)),
                s.vni,
                i as u32,
            )
        })
        .collect();
    groups.sort_unstable();
    if groups.is_empty() {
        return (Box::default(), Vec::new());
    }
    let distinct = groups.windows(2).filter(|w| w[0].0 != w[1].0).count() + 1;
    let size = (distinct * 2).next_power_of_two();
    let mask = size - 1;
    let mut slots = vec![VipSlot::default(); size];
    let mut scoped = Vec::new();
    let mut g = 0;
    while g < groups.len() {
        let (addr, meta) = groups[g].0;
        let mut slot = VipSlot {
            addr,
            meta,
            unscoped: NONE,
            scoped_start: scoped.len() as u32,
            scoped_len: 0,
        };
        // Within a group `None` sorts first, then VNIs ascending.
        while g < groups.len() && groups[g].0 == (addr, meta) {
            match groups[g].1 {
                None => slot.unscoped = groups[g].2,
                Some(vni) => {
                    scoped.push((vni, groups[g].2));
                    slot.scoped_len += 1;
                }
            }
            g += 1;
        }
        let mut i = vip_hash(addr, meta) as usize & mask;
        while slots[i].meta != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = slot;
    }
    (slots.into_boxed_slice(), scoped)
}
