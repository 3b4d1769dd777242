//! In-process measurements on preloaded packets: the cost of each pipeline
//! stage, and per-packet latency under a paced (rate-limited) offered load.
//!
//! Both drive `dataplane::pipeline::Pipeline`'s stages directly over
//! `HeapBuf` packets — the same stage code the workers run, without threads,
//! queues or the replay backend in between.

use std::path::Path;

use dataplane::config::Config;
use dataplane::cpu::rdtsc;
use dataplane::io::buf::HeapBuf;
use dataplane::io::MAX_BURST;
use dataplane::pipeline::{Meta, Pipeline, Stage, Verdict};
use dataplane::tables::Tables;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stat::Stat;

/// Frames of a capture, in order.
pub fn load_frames(path: &Path, max: usize) -> Result<Vec<Vec<u8>>, String> {
    let cap = dataplane::pcapfile::read_file(path).map_err(|e| e.to_string())?;
    Ok(cap.iter().take(max).map(|(_, f)| f.to_vec()).collect())
}

/// Everything a stage run needs: tables, stages and a burst of buffers.
pub struct Bench {
    pub tables: Tables,
    pub pipeline: Pipeline,
    bufs: Vec<HeapBuf>,
    meta: Vec<Meta>,
    verdicts: Vec<Verdict>,
    burst: usize,
}

impl Bench {
    pub fn new(cfg: &Config, frames: &[Vec<u8>], burst: usize) -> Result<Bench, String> {
        let tables = Tables::build(cfg, 1).map_err(|e| e.to_string())?;
        let max_frame = frames.iter().map(|f| f.len()).max().unwrap_or(64).max(64);
        let burst = burst.clamp(1, MAX_BURST);
        let mut pipeline = Pipeline::default();
        pipeline.lb.next_hop = tables.next_hop_mac;
        pipeline.route.next_hop = tables.next_hop_mac;
        Ok(Bench {
            tables,
            pipeline,
            bufs: (0..burst)
                .map(|_| HeapBuf::with_capacity(max_frame))
                .collect(),
            meta: vec![Meta::default(); burst],
            verdicts: vec![Verdict::Tx; burst],
            burst,
        })
    }

    /// Loads `chunk` into the burst buffers (what a NIC's DMA + rx_burst do).
    #[inline]
    fn load(&mut self, chunk: &[Vec<u8>]) {
        for (b, f) in self.bufs.iter_mut().zip(chunk) {
            b.load(f, 0);
        }
        self.verdicts[..chunk.len()].fill(Verdict::Tx);
    }

    /// Runs the whole pipeline over the loaded burst of `n`; returns packets to transmit.
    #[inline]
    fn run_loaded(&mut self, n: usize) -> usize {
        self.pipeline.run(
            &self.tables,
            0,
            &mut self.bufs[..n],
            &mut self.meta[..n],
            &mut self.verdicts[..n],
        );
        self.verdicts[..n]
            .iter()
            .filter(|v| **v == Verdict::Tx)
            .count()
    }

    /// Flow-table hits and misses so far.
    fn flow_counts(&self) -> (u64, u64) {
        self.pipeline
            .lb
            .flows
            .as_ref()
            .map(|f| {
                let s = f.stats();
                (s.hits, s.misses)
            })
            .unwrap_or((0, 0))
    }
}

/// The stage columns, in pipeline order.
pub const STAGES: [&str; 7] = [
    "rx: copy frame into buffer",
    "decap (outer Eth/IP/UDP/VXLAN)",
    "inner parse (flow key)",
    "acl classify",
    "lb stage (lookup + encap)",
    "route (non-service)",
    "verdict scan (act once per burst)",
];

/// Per-stage cost over one pass.
#[derive(Clone, Debug, Serialize)]
pub struct StageRow {
    pub stage: String,
    pub cycles_per_packet: Stat,
    pub ns_per_packet: Stat,
}

/// Result of [`stage_costs`].
#[derive(Clone, Debug, Serialize)]
pub struct StageCosts {
    pub rows: Vec<StageRow>,
    /// Σ of the stage medians.
    pub total_cycles: f64,
    /// Cost of the timer itself per burst (subtracted from every stage).
    pub timer_cycles_per_burst: f64,
    /// Flow-table hit ratio during the measured passes.
    pub flow_hit_ratio: f64,
    pub packets_per_pass: usize,
    pub passes: usize,
    /// Packets transmitted per pass (the rest were dropped; by design none here).
    pub tx_per_pass: usize,
    /// Bursts left out because they took over 5× the median (preempted).
    pub skipped_bursts: u64,
}

/// Median cost of `rdtsc(); rdtsc()`.
fn timer_overhead() -> f64 {
    let v: Vec<f64> = (0..1001)
        .map(|_| {
            let a = rdtsc();
            let b = rdtsc();
            b.wrapping_sub(a) as f64
        })
        .collect();
    Stat::of(&v).median
}

/// Times each stage separately, burst by burst, over `passes` passes of
/// `frames` (after one warm-up pass). Cycles are TSC ticks.
pub fn stage_costs(b: &mut Bench, frames: &[Vec<u8>], passes: usize, tsc_ghz: f64) -> StageCosts {
    let timer = timer_overhead();
    let mut per_pass: Vec<[f64; 7]> = Vec::new();
    let mut tx_per_pass = 0;
    let mut hits_misses = (0u64, 0u64);
    let mut threshold = u64::MAX;
    let mut warm_totals = Vec::new();
    let mut skipped = 0u64;
    for pass in 0..=passes {
        let hm0 = b.flow_counts();
        let mut acc = [0u64; 7];
        let mut bursts = 0u64;
        let mut kept_pkts = 0u64;
        let mut tx = 0;
        for chunk in frames.chunks(b.burst) {
            let n = chunk.len();
            let t = &b.tables;
            let c0 = rdtsc();
            for (buf, f) in b.bufs.iter_mut().zip(chunk) {
                buf.load(f, 0);
            }
            b.verdicts[..n].fill(Verdict::Tx);
            let c1 = rdtsc();
            let (p, m, v) = (&mut b.bufs[..n], &mut b.meta[..n], &mut b.verdicts[..n]);
            b.pipeline.decap.process(t, p, m, v);
            let c2 = rdtsc();
            b.pipeline.inner.process(t, p, m, v);
            let c3 = rdtsc();
            b.pipeline.acl.process(t, p, m, v);
            let c4 = rdtsc();
            b.pipeline.lb.process(t, p, m, v);
            let c5 = rdtsc();
            b.pipeline.route.process(t, p, m, v);
            let c6 = rdtsc();
            tx += std::hint::black_box(v.iter().filter(|x| **x == Verdict::Tx).count());
            let c7 = rdtsc();
            if pass == 0 {
                warm_totals.push((c7 - c0) as f64);
                continue;
            }
            if c7 - c0 > threshold {
                // Preempted or interrupted: not the pipeline's cost.
                skipped += 1;
                continue;
            }
            for (a, d) in acc.iter_mut().zip([
                c1 - c0,
                c2 - c1,
                c3 - c2,
                c4 - c3,
                c5 - c4,
                c6 - c5,
                c7 - c6,
            ]) {
                *a += d;
            }
            bursts += 1;
            kept_pkts += n as u64;
        }
        if pass == 0 {
            threshold = outlier_threshold(&warm_totals);
            continue;
        }
        let hm1 = b.flow_counts();
        hits_misses.0 += hm1.0 - hm0.0;
        hits_misses.1 += hm1.1 - hm0.1;
        tx_per_pass = tx;
        let pkts = kept_pkts.max(1) as f64;
        let mut row = [0f64; 7];
        for (r, a) in row.iter_mut().zip(acc) {
            *r = ((a as f64 - timer * bursts as f64) / pkts).max(0.0);
        }
        per_pass.push(row);
    }
    let rows: Vec<StageRow> = STAGES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let c: Vec<f64> = per_pass.iter().map(|r| r[i]).collect();
            let ns: Vec<f64> = c.iter().map(|x| x / tsc_ghz).collect();
            StageRow {
                stage: name.to_string(),
                cycles_per_packet: Stat::of(&c),
                ns_per_packet: Stat::of(&ns),
            }
        })
        .collect();
    let total_cycles = rows.iter().map(|r| r.cycles_per_packet.median).sum();
    let (h, m) = hits_misses;
    StageCosts {
        rows,
        total_cycles,
        timer_cycles_per_burst: timer,
        flow_hit_ratio: if h + m == 0 {
            0.0
        } else {
            h as f64 / (h + m) as f64
        },
        packets_per_pass: frames.len(),
        passes,
        tx_per_pass,
        skipped_bursts: skipped,
    }
}

/// Bursts slower than this are left out: 5× the median burst of the warm-up
/// pass (at least 20 000 cycles) — a burst that long was interrupted.
fn outlier_threshold(totals: &[f64]) -> u64 {
    (Stat::of(totals).median * 5.0).max(20_000.0) as u64
}

/// Cost of `LbTables::process_burst_with` and the prefetch instruction, as
/// the LB stage calls it, alone (service lookup, flow hash,
/// flow-table probe, Maglev on a miss) on the keys the pipeline extracts from
/// `frames`, with a flow table of its own warmed by one pass. Cycles per packet.
pub fn lb_lookup_cost(b: &mut Bench, frames: &[Vec<u8>], passes: usize) -> Stat {
    let timer = timer_overhead();
    let mut flows = lb::flow_table::FlowTable::new(b.tables.flow_cfg);
    let mut keys = vec![lb::FlowKey::default(); b.burst];
    let mut out = vec![lb::LbVerdict::NotService; b.burst];
    let mut v = Vec::new();
    let mut threshold = u64::MAX;
    let mut warm = Vec::new();
    for pass in 0..=passes {
        let mut acc = 0u64;
        let mut bursts = 0u64;
        let mut kept = 0u64;
        for chunk in frames.chunks(b.burst) {
            let n = chunk.len();
            b.load(chunk);
            let t = &b.tables;
            let (p, m, vd) = (&mut b.bufs[..n], &mut b.meta[..n], &mut b.verdicts[..n]);
            b.pipeline.decap.process(t, p, m, vd);
            b.pipeline.inner.process(t, p, m, vd);
            let mut k = 0;
            for i in 0..n {
                if vd[i] == Verdict::Tx {
                    let f = &m[i].key;
                    keys[k] = lb::FlowKey {
                        vni: f.vni,
                        src: f.src,
                        dst: f.dst,
                        sport: f.sport,
                        dport: f.dport,
                        proto: f.proto,
                        v6: f.v6,
                    };
                    k += 1;
                }
            }
            let c0 = rdtsc();
            // With the prefetch instruction, as the LB stage calls it.
            t.lb.process_burst_with(
                &keys[..k],
                &mut flows,
                0,
                &mut out[..k],
                Some(dataplane::cpu::prefetch),
            );
            let c1 = rdtsc();
            std::hint::black_box(&out);
            if pass == 0 {
                warm.push((c1 - c0) as f64);
            } else if c1 - c0 <= threshold {
                acc += c1 - c0;
                bursts += 1;
                kept += k as u64;
            }
        }
        if pass == 0 {
            threshold = (Stat::of(&warm).median * 5.0).max(5_000.0) as u64;
        } else {
            v.push(((acc as f64 - timer * bursts as f64) / kept.max(1) as f64).max(0.0));
        }
    }
    Stat::of(&v)
}

/// Unpaced rate of the in-process loop (load + pipeline + verdict scan), packets/s:
/// the best of `passes` passes.
pub fn max_rate(b: &mut Bench, frames: &[Vec<u8>], passes: usize, tsc_ghz: f64) -> f64 {
    let mut v = Vec::new();
    for pass in 0..=passes {
        let c0 = rdtsc();
        for chunk in frames.chunks(b.burst) {
            b.load(chunk);
            std::hint::black_box(b.run_loaded(chunk.len()));
        }
        let c = rdtsc() - c0;
        if pass > 0 {
            v.push(frames.len() as f64 / (c as f64 / (tsc_ghz * 1e9)));
        }
    }
    // The least disturbed pass is the closest to the loop's real maximum.
    Stat::of(&v).max
}

/// Latency at one offered load.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPoint {
    pub load_pct: f64,
    pub offered_mpps: f64,
    pub achieved_mpps: f64,
    pub packets: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Mean packets per processed burst (1 at low load: each packet is polled alone).
    pub mean_burst: f64,
}

/// Paced replay: packet `i` "arrives" at `t0 + i / rate` (constant spacing, on
/// the TSC). The loop polls like a worker: it takes every packet that has
/// arrived (up to a burst), copies them into buffers, runs the pipeline, and
/// records for each packet `completion − arrival` (queueing in the RX ring +
/// copy + processing of its whole burst) into an HDR histogram in ns.
pub fn paced(
    b: &mut Bench,
    frames: &[Vec<u8>],
    rate_pps: f64,
    seconds: f64,
    tsc_ghz: f64,
) -> LatencyPoint {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .expect("static histogram bounds are valid");
    let period = tsc_ghz * 1e9 / rate_pps.max(1.0);
    let total = ((rate_pps * seconds) as usize).max(b.burst);
    let t0 = rdtsc() + (tsc_ghz * 1e6) as u64; // start 1 ms from now
    let mut next = 0usize;
    let mut bursts = 0u64;
    let mut last_done = t0;
    while next < total {
        let now = rdtsc();
        if now < t0 {
            std::hint::spin_loop();
            continue;
        }
        let arrived = (((now - t0) as f64 / period) as usize + 1).min(total);
        if arrived <= next {
            std::hint::spin_loop();
            continue;
        }
        let n = (arrived - next).min(b.burst);
        for k in 0..n {
            let f = &frames[(next + k) % frames.len()];
            b.bufs[k].load(f, 0);
        }
        b.verdicts[..n].fill(Verdict::Tx);
        std::hint::black_box(b.run_loaded(n));
        let done = rdtsc();
        for k in 0..n {
            let arrival = t0 + ((next + k) as f64 * period) as u64;
            let ns = (done.saturating_sub(arrival) as f64 / tsc_ghz) as u64;
            hist.saturating_record(ns.max(1));
        }
        next += n;
        bursts += 1;
        last_done = done;
    }
    let secs = (last_done - t0) as f64 / (tsc_ghz * 1e9);
    LatencyPoint {
        load_pct: 0.0,
        offered_mpps: rate_pps / 1e6,
        achieved_mpps: total as f64 / secs.max(1e-9) / 1e6,
        packets: hist.len(),
        mean_ns: hist.mean(),
        p50_ns: hist.value_at_quantile(0.5),
        p90_ns: hist.value_at_quantile(0.9),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        mean_burst: total as f64 / bursts.max(1) as f64,
    }
}
