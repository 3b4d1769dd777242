//! The [`Pipeline`]: the gateway's stages in order. The worker loop
//! (`engine`) drives it; the stages (`stages`) speak the burst vocabulary of
//! [`crate::burst`] (re-exported here) and use the pure crates.

pub use crate::burst::{Meta, Stage, Verdict};
use crate::io::Packet;
use crate::observe::Observed;
use crate::stats::{BurstHistogram, Telemetry};
use crate::tables::Tables;

/// The stages of the gateway, in order.
#[derive(Default)]
pub struct Pipeline {
    pub decap: crate::stages::Decap,
    pub inner: crate::stages::InnerParse,
    pub frag: crate::frag::Frag,
    /// Connection tracking: `ct.lookup` before the ACL, `ct.commit` after.
    pub ct: crate::conntrack::Conntrack,
    pub acl: crate::stages::Acl,
    pub overlay: crate::overlay::Overlay,
    pub lb: crate::stages::Lb,
    pub route: crate::stages::Route,
}

impl Pipeline {
    /// Moves the stages' slow counters into `tel`, naming them with `t`, the
    /// snapshot they were counted under (rule hits and per-service/backend
    /// counters are indexed by positions in it). The caller hands `tel` on.
    pub fn flush_telemetry(&mut self, t: &Tables, tel: &mut Telemetry, hist: &mut BurstHistogram) {
        self.acl.drain_hits(t, &mut tel.rule_hits);
        self.ct.flush_telemetry(tel);
        for (a, b) in tel
            .burst_cycle_buckets
            .iter_mut()
            .zip(hist.buckets.iter_mut())
        {
            *a += std::mem::take(b);
        }
        self.lb.flush_telemetry(t, tel);
        tel.icmp_too_big += std::mem::take(&mut self.route.icmp_too_big);
        tel.icmp_too_big += std::mem::take(&mut self.overlay.icmp_too_big);
        let oc = std::mem::take(&mut self.overlay.counters);
        tel.overlay.encapsulated += oc.encapsulated;
        tel.overlay.to_static += oc.to_static;
        tel.frag.add(&std::mem::take(&mut self.frag.counters));
        tel.acl_cache
            .add(&std::mem::take(&mut self.acl.cache_counts));
    }

    /// What the stages' per-index counters (rule hits, per-service and
    /// per-backend traffic) are indexed by in `t`: the ACL's compiled base
    /// and the LB's services and backends. While it is unchanged from one
    /// snapshot to the next (a rule change keeps the LB's; any change
    /// within one compiled ACL base keeps the rule indices), the counters
    /// carry over and need no flush when the worker takes the new snapshot.
    /// A service, backend or health change builds new LB tables, so it
    /// flushes.
    pub fn counters_layout(t: &Tables) -> (u64, u64) {
        (
            t.acl.as_ref().map_or(0, |a| a.classifier.base_id()),
            t.lb.id(),
        )
    }

    /// Hands the LB and route stages the next-hop MAC for this burst (none
    /// while ARP/ND is pending: they drop what would be sent).
    #[inline(always)]
    fn set_next_hop(&mut self, t: &Tables, learned_next_hop: u64) {
        let nh = crate::punt::NextHop::decode(learned_next_hop).mac(t.next_hop_mac);
        self.lb.next_hop = nh.unwrap_or([0; 6]);
        self.route.next_hop = nh.unwrap_or([0; 6]);
        self.lb.unresolved = nh.is_none();
        self.route.unresolved = nh.is_none();
        self.overlay.next_hop = self.route.next_hop;
        self.overlay.unresolved = nh.is_none();
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
        self.set_next_hop(t, learned_next_hop);
        self.decap.process(t, pkts, meta, verdicts);
        // A burst that decap dropped or punted whole (a flood of frames that
        // are not ours) skips the later stages: each would only walk the
        // verdicts to find nothing to do.
        if !any_tx(verdicts) {
            self.nothing_left();
            return;
        }
        self.inner.process(t, pkts, meta, verdicts);
        // The one test the common path pays for fragments.
        if self.inner.frags != 0 {
            self.inner.frags = 0;
            self.frag.process(t, pkts, meta, verdicts);
        }
        self.ct.lookup(t, pkts, meta, verdicts);
        self.acl.process(t, pkts, meta, verdicts);
        self.ct.commit(t, meta, verdicts, self.acl.last_results());
        self.overlay.process(t, pkts, meta, verdicts);
        self.lb.process(t, pkts, meta, verdicts);
        self.route.process(t, pkts, meta, verdicts);
    }

    /// What the skipped stages would have left for this burst: no ACL or LB
    /// results.
    #[inline]
    fn nothing_left(&mut self) {
        self.acl.clear_results();
        self.lb.clear_results();
    }

    /// The stages after the fragment stage, for held fragments whose first
    /// fragment has come (their ports are in `meta` already).
    #[cold]
    #[inline(never)]
    pub fn run_released<P: Packet>(
        &mut self,
        t: &Tables,
        learned_next_hop: u64,
        pkts: &mut [P],
        meta: &mut [Meta],
        verdicts: &mut [Verdict],
    ) {
        self.set_next_hop(t, learned_next_hop);
        self.ct.lookup(t, pkts, meta, verdicts);
        self.acl.process(t, pkts, meta, verdicts);
        self.ct.commit(t, meta, verdicts, self.acl.last_results());
        self.overlay.process(t, pkts, meta, verdicts);
        self.lb.process(t, pkts, meta, verdicts);
        self.route.process(t, pkts, meta, verdicts);
    }

    /// [`run`](Self::run) with each stage's decision noted in `o` (for
    /// `trace`, `capture` and `explain`): the same stages in the same order,
    /// so what is observed is what the workers do.
    #[cold]
    pub fn run_observed<P: Packet>(
        &mut self,
        t: &Tables,
        learned_next_hop: u64,
        pkts: &mut [P],
        meta: &mut [Meta],
        verdicts: &mut [Verdict],
        o: &mut Observed,
    ) {
        let n = pkts.len();
        o.begin(pkts);
        self.set_next_hop(t, learned_next_hop);
        self.decap.process(t, pkts, meta, verdicts);
        o.after_decap[..n].copy_from_slice(verdicts);
        self.inner.process(t, pkts, meta, verdicts);
        if self.inner.frags != 0 {
            self.inner.frags = 0;
            self.frag.process(t, pkts, meta, verdicts);
        }
        o.after_inner[..n].copy_from_slice(verdicts);
        self.ct.lookup(t, pkts, meta, verdicts);
        self.acl.process(t, pkts, meta, verdicts);
        for (i, m) in self.acl.last_results() {
            o.acl_rule[i] = Some(m);
        }
        self.ct.commit(t, meta, verdicts, self.acl.last_results());
        if t.ct_active {
            for (i, m) in meta.iter().enumerate().take(n) {
                o.ct[i] = Some((m.ct, self.ct.state[i].map(|s| s.name())));
            }
        }
        o.after_acl[..n].copy_from_slice(verdicts);
        self.overlay.observe = true;
        self.overlay.process(t, pkts, meta, verdicts);
        self.overlay.observe = false;
        o.overlay[..n].copy_from_slice(&self.overlay.notes[..n]);
        self.lb.process(t, pkts, meta, verdicts);
        for (i, v) in self.lb.last_results() {
            o.lb[i] = Some(v);
        }
        self.route.process(t, pkts, meta, verdicts);
    }
}

/// True when some packet of the burst is still to be sent (cheaper than the
/// stages' own walks: eight verdicts compared per step, no early exit).
#[inline]
fn any_tx(verdicts: &[Verdict]) -> bool {
    verdicts
        .chunks(8)
        .any(|c| c.iter().fold(false, |a, v| a | (*v == Verdict::Tx)))
}

/// Runs `frames` through `pipeline` under `t` in bursts, as a worker would,
/// and gives each packet's decisions (the offline `dpgw explain` and the
/// control side's `explain` both use it).
pub fn explain_frames(
    pipeline: &mut Pipeline,
    t: &Tables,
    learned_next_hop: u64,
    frames: &[&[u8]],
    ts_ns: u64,
    mut each: impl FnMut(usize, &crate::observe::Record),
) {
    use crate::io::{buf::HeapBuf, Packet};
    let mut o = Box::<Observed>::default();
    o.snap = 65535;
    let mut n0 = 0;
    for chunk in frames.chunks(crate::io::MAX_BURST) {
        let mut pkts: Vec<HeapBuf> = chunk
            .iter()
            .map(|f| {
                let mut b = HeapBuf::with_capacity(f.len().max(64) + 256);
                b.load(f, ts_ns);
                b
            })
            .collect();
        let n = pkts.len();
        let mut meta = [crate::burst::Meta::default(); crate::io::MAX_BURST];
        let mut v = [Verdict::Tx; crate::io::MAX_BURST];
        pipeline.run_observed(
            t,
            learned_next_hop,
            &mut pkts,
            &mut meta[..n],
            &mut v[..n],
            &mut o,
        );
        for i in 0..n {
            let f = crate::observe::facts(t, &o, &meta[i], i, v[i], 0);
            let r = crate::observe::Record {
                worker: 0,
                ts_ns,
                point: crate::observe::Point::Trace,
                orig_len: o.rx_len[i],
                data: pkts[i].data().to_vec(),
                steps: crate::observe::steps(t, &o, &meta[i], i, v[i], pkts[i].data()),
                verdict: crate::observe::verdict_name(v[i]).to_string(),
                service: f.service.map(str::to_string),
                backend: f.backend,
            };
            each(n0 + i, &r);
        }
        n0 += n;
    }
}
