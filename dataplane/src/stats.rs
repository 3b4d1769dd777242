//! Per-worker counters (plain integers, owned by one worker; summed by readers).

use serde::Serialize;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Why a packet was dropped. Counted into `drops[reason as usize]`.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DropReason { $($variant),* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant),*];
            pub const COUNT: usize = Self::ALL.len();
            /// Stable snake_case name used in JSON, metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name),* }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated",
    NotIp => "not_ip",
    BadIpHeader => "bad_ip_header",
    BadIpChecksum => "bad_ip_checksum",
    OuterFragment => "outer_fragment",
    NotUdp => "not_udp",
    NotVxlan => "not_vxlan",
    WrongVtep => "wrong_vtep",
    BadVxlanFlags => "bad_vxlan_flags",
    BadUdpLength => "bad_udp_length",
    BadGeneveHeader => "bad_geneve_header",
    GeneveControl => "geneve_control",
    GeneveCritical => "geneve_critical",
    GeneveProto => "geneve_proto",
    InnerTruncated => "inner_truncated",
    InnerNotIp => "inner_not_ip",
    InnerBadHeader => "inner_bad_header",
    InnerBadChecksum => "inner_bad_checksum",
    TtlExpired => "ttl_expired",
    IcmpQuoteTruncated => "icmp_quote_truncated",
    IcmpQuoteBad => "icmp_quote_bad",
    IcmpNoService => "icmp_no_service",
    FragUnmatched => "frag_unmatched",
    FragHoldFull => "frag_hold_full",
    NonVip => "non_vip",
    NoVtep => "no_vtep",
    AclDeny => "acl_deny",
    CtFull => "ct_full",
    NoBackend => "no_backend",
    NoHeadroom => "no_headroom",
    MtuExceeded => "mtu_exceeded",
    NextHopUnresolved => "next_hop_unresolved",
    TxFull => "tx_full",
}

/// The one mapping from the `vxlan` crate's decapsulation errors to drop
/// reasons (the decap stage and the fuzz checker both use it).
impl From<vxlan::DecapError> for DropReason {
    #[inline(always)]
    fn from(e: vxlan::DecapError) -> DropReason {
        use vxlan::DecapError as E;
        match e {
            E::Truncated => DropReason::Truncated,
            E::NotIp => DropReason::NotIp,
            E::BadIpHeader => DropReason::BadIpHeader,
            E::BadIpChecksum => DropReason::BadIpChecksum,
            E::OuterFragment => DropReason::OuterFragment,
            E::NotUdp => DropReason::NotUdp,
            E::NotVxlan => DropReason::NotVxlan,
            E::WrongVtep => DropReason::WrongVtep,
            E::BadVxlanFlags => DropReason::BadVxlanFlags,
            E::BadUdpLength => DropReason::BadUdpLength,
            E::BadGeneveHeader => DropReason::BadGeneveHeader,
            E::GeneveControl => DropReason::GeneveControl,
            E::GeneveCritical => DropReason::GeneveCritical,
            E::GeneveProto => DropReason::GeneveProto,
        }
    }
}

/// The mapping from inner-frame parse errors to drop reasons.
impl From<vxlan::InnerError> for DropReason {
    #[inline(always)]
    fn from(e: vxlan::InnerError) -> DropReason {
        match e {
            vxlan::InnerError::Truncated => DropReason::InnerTruncated,
            vxlan::InnerError::NotIp => DropReason::InnerNotIp,
            vxlan::InnerError::BadHeader => DropReason::InnerBadHeader,
        }
    }
}

/// One worker's counters. Written only by that worker.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStats {
    pub rx: u64,
    pub tx: u64,
    /// Frames for the gateway itself (ARP, ICMP echo, neighbour discovery)
    /// handed to the slow path; not drops: `rx == tx + punted + Σ drops`.
    pub punted: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Sum of (frame length + 20 B preamble/IFG) of received frames, for line-rate figures.
    pub rx_wire_bytes: u64,
    #[serde(skip)]
    pub drops: [u64; DropReason::COUNT],
    pub bursts: u64,
    pub empty_polls: u64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            rx: 0,
            tx: 0,
            punted: 0,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_wire_bytes: 0,
            drops: [0; DropReason::COUNT],
            bursts: 0,
            empty_polls: 0,
        }
    }
}

impl WorkerStats {
    #[inline(always)]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// `n` drops for one reason (a burst dropped whole).
    #[inline]
    pub fn drop_many(&mut self, reason: DropReason, n: u64) {
        self.drops[reason as usize] += n;
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn add(&mut self, o: &WorkerStats) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.punted += o.punted;
        self.rx_bytes += o.rx_bytes;
        self.tx_bytes += o.tx_bytes;
        self.rx_wire_bytes += o.rx_wire_bytes;
        self.bursts += o.bursts;
        self.empty_polls += o.empty_polls;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += *b;
        }
    }

    /// Drops as (reason name, count), non-zero only.
    pub fn drops_named(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .filter(|r| self.drops[**r as usize] != 0)
            .map(|r| (r.name(), self.drops[*r as usize]))
            .collect()
    }
}

/// Bytes a frame of `len` captured bytes takes on an Ethernet wire: padded to the
/// 60-byte minimum, plus 4 bytes of FCS (captures do not carry it) and 20 bytes of
/// preamble, start delimiter and inter-frame gap.
#[inline]
pub fn wire_bytes(len: usize) -> u64 {
    (len.max(60) + 4 + 20) as u64
}

/// A worker's counters as published for other threads: the worker stores its
/// plain counters here once per burst (relaxed stores, no read-modify-write).
#[derive(Debug)]
pub struct Published {
    pub rx: std::sync::atomic::AtomicU64,
    pub tx: std::sync::atomic::AtomicU64,
    pub punted: std::sync::atomic::AtomicU64,
    pub rx_bytes: std::sync::atomic::AtomicU64,
    pub tx_bytes: std::sync::atomic::AtomicU64,
    pub rx_wire_bytes: std::sync::atomic::AtomicU64,
    pub bursts: std::sync::atomic::AtomicU64,
    pub drops: [std::sync::atomic::AtomicU64; DropReason::COUNT],
}

impl Default for Published {
    fn default() -> Self {
        use std::sync::atomic::AtomicU64;
        Published {
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            punted: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_wire_bytes: AtomicU64::new(0),
            bursts: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Published {
    #[inline]
    pub fn publish(&self, s: &WorkerStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.rx.store(s.rx, Relaxed);
        self.tx.store(s.tx, Relaxed);
        self.punted.store(s.punted, Relaxed);
        self.rx_bytes.store(s.rx_bytes, Relaxed);
        self.tx_bytes.store(s.tx_bytes, Relaxed);
        self.rx_wire_bytes.store(s.rx_wire_bytes, Relaxed);
        self.bursts.store(s.bursts, Relaxed);
        for (a, v) in self.drops.iter().zip(s.drops.iter()) {
            a.store(*v, Relaxed);
        }
    }

    pub fn snapshot(&self) -> WorkerStats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = WorkerStats {
            rx: self.rx.load(Relaxed),
            tx: self.tx.load(Relaxed),
            punted: self.punted.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_wire_bytes: self.rx_wire_bytes.load(Relaxed),
            bursts: self.bursts.load(Relaxed),
            ..Default::default()
        };
        for (v, a) in s.drops.iter_mut().zip(self.drops.iter()) {
            *v = a.load(Relaxed);
        }
        s
    }
}

/// Packets, bytes and new flows sent to a service or a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New flows over the service's `new_flow_rate` (forwarded, not stored).
    pub rate_limited: u64,
}

impl TrafficCounters {
    /// Counts one packet of `len` bytes (`new_flow`: it created its flow).
    #[inline(always)]
    pub fn count(&mut self, len: u64, new_flow: bool) {
        self.packets += 1;
        self.bytes += len;
        self.new_flows += u64::from(new_flow);
    }

    pub fn add(&mut self, o: &TrafficCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.rate_limited += o.rate_limited;
    }

    pub fn is_zero(&self) -> bool {
        *self == TrafficCounters::default()
    }
}

/// What the ACL result cache did with the keys it was asked about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclCacheCounters {
    /// Keys answered from the cache.
    pub hits: u64,
    /// Keys looked up, not found, and classified.
    pub misses: u64,
    /// Keys classified without looking, while the cache was bypassed.
    pub bypassed: u64,
}

impl AclCacheCounters {
    pub fn add(&mut self, o: &AclCacheCounters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.bypassed += o.bypassed;
    }
}

/// What the fragment path did (see `frag`): first fragments that made an
/// association, later fragments sent on with their datagram's ports
/// (`associated`, of which `released` after being held), fragments put on
/// hold, and associations that replaced a live one (`table_full`). Drops
/// are counted as drop reasons (`frag_unmatched`, `frag_hold_full`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragCounters {
    pub first: u64,
    pub associated: u64,
    pub held: u64,
    pub released: u64,
    pub table_full: u64,
}

impl FragCounters {
    pub fn add(&mut self, o: &FragCounters) {
        self.first += o.first;
        self.associated += o.associated;
        self.held += o.held;
        self.released += o.released;
        self.table_full += o.table_full;
    }
}

/// Flow-table lookups and removals (totals since the table was created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Segmented LRU (see `lb::flow_table`): evictions by segment, promotions
    /// and demotions; connection ends (FIN, RST) and re-selections.
    pub evicted_probationary: u64,
    pub evicted_protected: u64,
    pub promoted: u64,
    pub demoted: u64,
    pub closed: u64,
    pub reset: u64,
    pub rehomed: u64,
    pub rate_limited: u64,
}

impl FlowCounters {
    pub fn add(&mut self, o: &FlowCounters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        self.evicted_probationary += o.evicted_probationary;
        self.evicted_protected += o.evicted_protected;
        self.promoted += o.promoted;
        self.demoted += o.demoted;
        self.closed += o.closed;
        self.reset += o.reset;
        self.rehomed += o.rehomed;
        self.rate_limited += o.rate_limited;
    }
}

impl From<&lb::FlowStats> for FlowCounters {
    fn from(s: &lb::FlowStats) -> FlowCounters {
        FlowCounters {
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            expirations: s.expired,
            evicted_probationary: s.evicted_probationary,
            evicted_protected: s.evicted_protected,
            promoted: s.promoted,
            demoted: s.demoted,
            closed: s.closed,
            reset: s.reset,
            rehomed: s.rehomed,
            rate_limited: s.rate_limited,
        }
    }
}

/// Per-worker counts of the overlay stage (the address table keeps its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayTelemetry {
    /// Plain IP packets encapsulated into a tenant.
    pub encapsulated: u64,
    /// Of them, to a static entry.
    pub to_static: u64,
}

/// Slow-path counters of one worker, keyed by stable names/ids.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    /// Rule id → packets matched.
    pub rule_hits: std::collections::HashMap<u32, u64>,
    /// Service name → traffic sent to its backends.
    pub services: std::collections::HashMap<String, TrafficCounters>,
    /// (service name, backend address) → traffic sent to the backend.
    pub backends: std::collections::HashMap<(String, std::net::IpAddr), TrafficCounters>,
    pub flows_in_use: u64,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" replies sent.
    pub icmp_too_big: u64,
    /// ICMP errors to a VIP sent on to the backend owning the quoted flow.
    pub icmp_errors_forwarded: u64,
    pub acl_cache: AclCacheCounters,
    pub flow_capacity: u64,
    pub flow_counters: FlowCounters,
    /// The fragment path ([`FragCounters`]; counts, added on hand-off).
    pub frag: FragCounters,
    /// Outside → overlay ([`OverlayTelemetry`]; counts, added on hand-off).
    pub overlay: OverlayTelemetry,
    /// Burst processing time in TSC cycles (not seconds: the TSC rate is
    /// applied by whoever exports it), as [`BurstHistogram::buckets`].
    pub burst_cycle_buckets: [u64; BurstHistogram::BUCKETS],
    /// Connection tracking per VNI (`conntrack`; [`CT_OTHER_VNI`] collects
    /// the VNIs past the per-worker limit).
    pub conntrack: std::collections::HashMap<u32, CtCounters>,
}

/// The VNI under which a worker counts connection-tracking events of VNIs
/// beyond the first [`CT_VNIS`] it saw.
pub const CT_OTHER_VNI: u32 = u32::MAX;
/// VNIs a worker keeps connection-tracking counters for.
pub const CT_VNIS: usize = 64;

/// Connection tracking counts of one VNI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtCounters {
    /// Connections created (allowed by a stateful rule).
    pub created: u64,
    /// Packets of a known connection (allowed without the rules).
    pub hits: u64,
    /// Of `hits`: the connection is in another worker's table.
    pub remote_hits: u64,
    /// ICMP errors quoting a known connection (allowed without the rules).
    pub related: u64,
    /// New connections denied because the table was full (`ct_full` drops).
    pub ct_full: u64,
    /// Packets of no known connection denied by the rules while conntrack
    /// was in use (e.g. a connection the far side tries to open).
    pub denied_new: u64,
}

impl CtCounters {
    pub fn add(&mut self, o: &CtCounters) {
        self.created += o.created;
        self.hits += o.hits;
        self.remote_hits += o.remote_hits;
        self.related += o.related;
        self.ct_full += o.ct_full;
        self.denied_new += o.denied_new;
    }
}

impl Telemetry {
    /// Moves what `from` counted since its last hand-off into `self`: counts
    /// are added (and zeroed in `from`, so they are never counted twice);
    /// flow-table figures, which are the table's current state, replace
    /// the older ones. Keys are stable names and ids, so `from` may hold
    /// counts of several snapshots.
    pub fn take_from(&mut self, from: &mut Telemetry) {
        for (k, v) in from.rule_hits.drain() {
            *self.rule_hits.entry(k).or_default() += v;
        }
        for (k, v) in from.services.drain() {
            self.services.entry(k).or_default().add(&v);
        }
        for (k, v) in from.backends.drain() {
            self.backends.entry(k).or_default().add(&v);
        }
        let o = std::mem::take(&mut from.overlay);
        self.overlay.encapsulated += o.encapsulated;
        self.overlay.to_static += o.to_static;
        self.icmp_too_big += std::mem::take(&mut from.icmp_too_big);
        self.icmp_errors_forwarded += std::mem::take(&mut from.icmp_errors_forwarded);
        self.acl_cache.add(&std::mem::take(&mut from.acl_cache));
        self.frag.add(&std::mem::take(&mut from.frag));
        for (k, v) in from.conntrack.drain() {
            self.conntrack.entry(k).or_default().add(&v);
        }
        for (a, b) in self
            .burst_cycle_buckets
            .iter_mut()
            .zip(from.burst_cycle_buckets.iter_mut())
        {
            *a += std::mem::take(b);
        }
        self.flows_in_use = from.flows_in_use;
        self.flow_capacity = from.flow_capacity;
        self.flow_counters = from.flow_counters;
    }
}

/// Burst time in TSC cycles (the worker loop turn that received and handled
/// the burst: its poll, the stages, transmit and free), as power-of-two
/// buckets, folded into [`Telemetry`] periodically. Bucket 0 counts bursts of 0 cycles, bucket i
/// (1 ≤ i < `BUCKETS - 1`) those of 2^(i-1) to 2^i - 1 cycles, and the last
/// bucket everything from 2^(BUCKETS - 2) cycles up (it has no upper bound).
/// Not cumulative.
#[derive(Debug, Default)]
pub struct BurstHistogram {
    pub buckets: [u64; BurstHistogram::BUCKETS],
}

impl BurstHistogram {
    pub const BUCKETS: usize = 32;

    #[inline(always)]
    pub fn record(&mut self, cycles: u64) {
        let b = (64 - cycles.leading_zeros() as usize).min(Self::BUCKETS - 1);
        self.buckets[b] += 1;
    }

    /// Exclusive upper bound, in cycles, of bucket `i`; `None` for the last.
    pub fn upper_bound(i: usize) -> Option<u64> {
        (i < Self::BUCKETS - 1).then(|| 1u64 << i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_burst_histogram_buckets_match_their_bounds() {
        for cycles in [
            0u64,
            1,
            2,
            3,
            4,
            1000,
            1 << 29,
            (1 << 30) - 1,
            1 << 30,
            u64::MAX,
        ] {
            let mut h = BurstHistogram::default();
            h.record(cycles);
            let i = h.buckets.iter().position(|c| *c == 1).unwrap();
            match BurstHistogram::upper_bound(i) {
                Some(up) => {
                    assert!(cycles < up, "{cycles} in bucket {i}");
                    assert!(i == 0 || cycles >= up / 2, "{cycles} in bucket {i}");
                }
                None => assert!(cycles >= 1 << (BurstHistogram::BUCKETS - 2), "{cycles}"),
            }
        }
    }

    #[test]
    fn test_take_from_moves_counts_once_and_keeps_the_latest_figures() {
        let web = TrafficCounters {
            packets: 2,
            bytes: 200,
            new_flows: 1,
            rate_limited: 0,
        };
        let mut worker = Telemetry::default();
        let mut slot = Telemetry::default();
        for round in 1..=3u64 {
            worker.rule_hits.insert(7, 5);
            worker.services.insert("web".into(), web);
            worker.acl_cache.hits += 4;
            worker.burst_cycle_buckets[3] += 1;
            worker.flows_in_use = 10 * round;
            worker.flow_capacity = 64;
            worker.flow_counters.hits = 100 * round;
            slot.take_from(&mut worker);
            // Handing over again with nothing new changes nothing.
            slot.take_from(&mut worker);
            assert_eq!(slot.rule_hits[&7], 5 * round);
            assert_eq!(slot.services["web"].packets, 2 * round);
            assert_eq!(slot.acl_cache.hits, 4 * round);
            assert_eq!(slot.burst_cycle_buckets[3], round);
            // Flow-table figures are the table's state, not counts.
            assert_eq!(slot.flows_in_use, 10 * round);
            assert_eq!(slot.flow_counters.hits, 100 * round);
        }
        assert!(worker.rule_hits.is_empty() && worker.services.is_empty());
        assert_eq!(worker.acl_cache, AclCacheCounters::default());
        assert_eq!(worker.flow_capacity, 64, "kept: the worker reads it");
    }
}

/// The health checker's results, written by the checker
/// ([`crate::health`], on the slow-path thread) and read by the control side
/// (`backend list`, `stats`, metrics). Behind a mutex: neither side is a worker.
#[derive(Debug, Default)]
pub struct HealthBoard {
    pub rows: std::collections::BTreeMap<(String, std::net::IpAddr), BoardRow>,
    /// Completed checks by result class.
    pub results: std::collections::BTreeMap<&'static str, u64>,
    pub transitions: u64,
    /// Services with checks whose every backend is unhealthy.
    pub unhealthy_services: Vec<String>,
}

/// One checked backend on the [`HealthBoard`].
#[derive(Clone, Debug)]
pub struct BoardRow {
    pub health: lb::Health,
    pub last: Option<String>,
    pub latency: Option<std::time::Duration>,
    /// Last change of `health` (or when checks began).
    pub since: std::time::Instant,
    pub checks: u64,
}

impl HealthBoard {
    /// The board as the control protocol reports it.
    pub fn report(&self) -> ctl::HealthReport {
        let now = std::time::Instant::now();
        ctl::HealthReport {
            backends: self
                .rows
                .iter()
                .map(|((s, ip), r)| ctl::HealthRow {
                    service: s.clone(),
                    ip: *ip,
                    health: r.health,
                    last: r.last.clone(),
                    latency_us: r.latency.map(|d| d.as_micros() as u64),
                    since_ms: now.saturating_duration_since(r.since).as_millis() as u64,
                    checks: r.checks,
                })
                .collect(),
            results: self
                .results
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            transitions: self.transitions,
            unhealthy_services: self.unhealthy_services.clone(),
        }
    }
}
