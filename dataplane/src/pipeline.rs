//! The [`Pipeline`]: the gateway's stages in order. The worker loop
//! (`engine`) drives it; the stages (`stages`) speak the burst vocabulary of
//! [`crate::burst`] (re-exported here) and use the pure crates.

pub use crate::burst::{Meta, Stage, Verdict};
use crate::io::Packet;
use crate::stats::{BurstHistogram, Telemetry};
use crate::tables::Tables;

/// The stages of the gateway, in order.
#[derive(Default)]
pub struct Pipeline {
    pub decap: crate::stages::Decap,
    pub inner: crate::stages::InnerParse,
    pub acl: crate::stages::Acl,
    pub lb: crate::stages::Lb,
    pub route: crate::stages::Route,
}

impl Pipeline {
    /// Moves the stages' slow counters into `tel`, naming them with `t`, the
    /// snapshot they were counted under (rule hits and per-service/backend
    /// counters are indexed by positions in it). The caller hands `tel` on.
    pub fn flush_telemetry(&mut self, t: &Tables, tel: &mut Telemetry, hist: &mut BurstHistogram) {
        self.acl.drain_hits(t, &mut tel.rule_hits);
        for (a, b) in tel
            .burst_cycle_buckets
            .iter_mut()
            .zip(hist.buckets.iter_mut())
        {
            *a += std::mem::take(b);
        }
        self.lb.flush_telemetry(t, tel);
        tel.icmp_too_big += std::mem::take(&mut self.route.icmp_too_big);
        tel.acl_cache
            .add(&std::mem::take(&mut self.acl.cache_counts));
    }

    /// Runs the stages over one burst. `learned_next_hop` is the slow path's
    /// next-hop state ([`crate::punt::NextHop`]: 0 = use the configured
    /// MAC, learned MAC, or pending = drop as `next_hop_unresolved`).
    #[inline]
    pub fn run<P: Packet>(
        &mut self,
        t: &Tables,
        learned_next_hop: u64,
        pkts: &mut [P],
        meta: &mut [Meta],
        verdicts: &mut [Verdict],
    ) {
        // An unresolved next hop (ARP/ND pending) drops what would be sent.
        let nh = crate::punt::NextHop::decode(learned_next_hop).mac(t.next_hop_mac);
        self.lb.next_hop = nh.unwrap_or([0; 6]);
        self.route.next_hop = nh.unwrap_or([0; 6]);
        self.lb.unresolved = nh.is_none();
        self.route.unresolved = nh.is_none();
        self.decap.process(t, pkts, meta, verdicts);
        self.inner.process(t, pkts, meta, verdicts);
        self.acl.process(t, pkts, meta, verdicts);
        self.lb.process(t, pkts, meta, verdicts);
        self.route.process(t, pkts, meta, verdicts);
    }
}
