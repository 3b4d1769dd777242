//! The poll-mode engine: one pinned worker per queue, run to completion over
//! caller-owned bursts.
//!
//! Each burst goes through the stages in [`Pipeline`](crate::pipeline::Pipeline); a stage writes a
//! [`Verdict`] per packet and skips packets already dropped. The worker then acts
//! once per burst: dropped packets are freed and counted by reason, the rest are
//! transmitted (a partial transmit is retried, then the remainder is freed and
//! counted as `tx_full`). Configuration arrives as an immutable [`Tables`]
//! snapshot loaded once per burst (RCU through `arc-swap`): a burst never sees
//! half of a change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::burst::{Meta, Verdict};
use crate::cpu::{rdtsc, thread_cpu_ns};
use crate::frag::HoldBuffer;
use crate::io::{Burst, Packet, Queue, MAX_BURST};
use crate::observe::Observed;
use crate::pipeline::Pipeline;
use crate::punt::Punt;
use crate::stats::{
    wire_bytes, BurstHistogram, DropReason, HealthBoard, Published, Telemetry, WorkerStats,
};
use crate::tables::Tables;

/// State shared between the workers and the control side.
pub struct Shared {
    /// The current snapshot. Replace it only through [`Shared::publish_with`]
    /// or [`Shared::store_tables`], which also bump `swaps`.
    pub tables: ArcSwap<Tables>,
    /// How many times `tables` was replaced: what a worker checks once per
    /// burst (one relaxed-cost load of a line that changes only with the
    /// configuration) before it loads the snapshot itself.
    swaps: AtomicU64,
    pub stop: AtomicBool,
    pub published: Vec<Published>,
    /// Per-worker "still running" flags (false once the worker has exited).
    pub running: Vec<AtomicBool>,
    /// Next-hop MAC learned by the slow path (ARP/ND), as `mac | 1 << 48`;
    /// 0 = not learned (the configured `next_hop_mac` is used). Read once per burst.
    pub learned_next_hop: AtomicU64,
    /// Per-worker counters that are not plain numbers (per rule, service,
    /// backend, flow table). A worker drains its stages into a `Telemetry` of
    /// its own (named with the snapshot they were counted under) and moves
    /// that in here every few bursts, at each snapshot change and when idle,
    /// with a `try_lock`: when a reader holds the lock the worker keeps
    /// counting and hands over at the next try. It waits only when it exits.
    pub telemetry: Vec<Mutex<Telemetry>>,
    /// Per-worker generation of the last snapshot a burst used.
    pub seen_generation: Vec<AtomicU64>,
    /// Reads the I/O backend's port counters (DPDK ports), set by the runner
    /// while the ports are up; read by the control thread only.
    port_source: Mutex<Option<PortSource>>,
    /// The armed trace or capture, if any (one flag read per burst).
    pub armed: crate::observe::Armed,
    /// Per-worker `flows list` requests.
    pub flow_query: Vec<crate::observe::FlowQuery>,
    /// Held by whoever builds and swaps in a new snapshot (the control thread
    /// for changes, the health checker for health changes), so that neither
    /// publishes a snapshot built from one the other has replaced. Never taken
    /// by a worker.
    pub publish: Mutex<()>,
    /// The health checker's results (never touched by a worker).
    pub health: Mutex<HealthBoard>,
    /// The route announcement, when `[announce]` is configured (set once at
    /// start; `crate::announce::Announcer`).
    pub announce: std::sync::OnceLock<Arc<dyn Announce>>,
    /// The slow path's frames for worker 0 to send, when the workers own the
    /// I/O (DPDK); set once before the workers start.
    pub inject: std::sync::OnceLock<Arc<crate::punt::Inject>>,
    /// The connection tables of stateful rules (one per worker, read by
    /// all), created once: connections outlive snapshots.
    pub conntrack: Arc<crate::conntrack::CtShared>,
}

pub use crate::io::PortSource;

/// What the control side asks of the route announcement.
pub trait Announce: Send + Sync {
    /// State, reason, since when.
    fn status(&self) -> ctl::GatewayReport;
    /// `gateway drain` (true) / `undrain` (false), in effect when it returns.
    fn set_drained(&self, drained: bool) -> ctl::GatewayReport;
}

impl Shared {
    pub fn new(tables: Tables, workers: usize) -> Arc<Shared> {
        let conntrack = crate::conntrack::CtShared::new(workers, tables.ct_capacity);
        Arc::new(Shared {
            tables: ArcSwap::from_pointee(tables),
            swaps: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            published: (0..workers).map(|_| Published::default()).collect(),
            running: (0..workers).map(|_| AtomicBool::new(true)).collect(),
            learned_next_hop: AtomicU64::new(0),
            telemetry: (0..workers)
                .map(|_| Mutex::new(Telemetry::default()))
                .collect(),
            seen_generation: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            port_source: Mutex::new(None),
            armed: crate::observe::Armed::default(),
            flow_query: (0..workers)
                .map(|_| crate::observe::FlowQuery::default())
                .collect(),
            publish: Mutex::new(()),
            health: Mutex::new(HealthBoard::default()),
            announce: std::sync::OnceLock::new(),
            inject: std::sync::OnceLock::new(),
            conntrack,
        })
    }

    /// Installs (or, with `None`, removes) the reader of the backend's port
    /// counters that stats and metrics show.
    pub fn set_port_source(&self, source: Option<PortSource>) {
        let mut g = self.port_source.lock().unwrap_or_else(|p| p.into_inner());
        *g = source;
    }

    /// The backend's port counters (empty without ports, e.g. pcap or AF_PACKET).
    pub fn port_counters(&self) -> Vec<ctl::PortCounters> {
        let g = self.port_source.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|f| f()).unwrap_or_default()
    }

    /// Builds the snapshot that follows the current one with `build(current,
    /// next_generation)` and publishes it, under [`Shared::publish`]. Returns
    /// the replaced snapshot (drop it off the fast path), or `build`'s error.
    pub fn publish_with<E>(
        &self,
        build: impl FnOnce(&Tables, u64) -> Result<Tables, E>,
    ) -> Result<Arc<Tables>, E> {
        let _g = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.tables.load_full();
        let next = build(&prev, prev.generation + 1)?;
        let old = self.tables.swap(Arc::new(next));
        self.swaps.fetch_add(1, Ordering::Release);
        Ok(old)
    }

    /// Replaces the snapshot with `t` as it is (no generation bump, no
    /// publish lock: for tests and tools that drive an engine directly).
    pub fn store_tables(&self, t: Arc<Tables>) {
        self.tables.store(t);
        self.swaps.fetch_add(1, Ordering::Release);
    }

    /// The count of snapshot replacements so far (see `swaps`).
    #[inline]
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Acquire)
    }

    /// Sum of all workers' published counters.
    pub fn totals(&self) -> WorkerStats {
        let mut t = WorkerStats::default();
        for p in &self.published {
            t.add(&p.snapshot());
        }
        t
    }
}

/// What a worker reports when it exits.
#[derive(Debug)]
pub struct WorkerResult<Q> {
    pub queue: Q,
    pub stats: WorkerStats,
    /// TSC cycles and wall time the worker spent in its loop.
    pub cycles: u64,
    pub busy_ns: u64,
    /// Time the worker thread actually ran on a CPU (from the scheduler), which
    /// excludes time it was preempted on a busy machine; 0 if unknown.
    pub on_cpu_ns: u64,
    pub pinned_to: Option<usize>,
    /// When the worker was done (its queue drained, or told to stop).
    pub finished: Instant,
}

/// Bursts between two publications of a busy worker's counters (about 50
/// stores each); an idle worker publishes at once, and every worker when it
/// exits. At 32 packets per burst and 20 Mpps, `stats` lags by ≤ 13 µs.
const PUBLISH_EVERY: u32 = 8;

/// Runs one worker until its input is exhausted or `shared.stop` is set.
pub fn run_worker<Q: Queue>(
    id: usize,
    mut queue: Q,
    shared: Arc<Shared>,
    burst_size: usize,
    core: Option<usize>,
    mut punt: Option<Box<dyn Punt>>,
) -> WorkerResult<Q> {
    // Pinned by id, whatever the mask the thread inherited (`control_cores`
    // narrows the main thread's to the control CPUs).
    let pinned_to = core.and_then(|c| match crate::cpu::pin_thread_to(&[c]) {
        Ok(()) => Some(c),
        Err(e) => {
            eprintln!("dpgw: worker {id}: {e}; it runs unpinned");
            None
        }
    });
    let burst_size = burst_size.clamp(1, MAX_BURST);
    let mut pipeline = Pipeline::default();
    let mut stats = WorkerStats::default();
    let mut rx: Burst<Q::Pkt> = Burst::new();
    let mut tx: Burst<Q::Pkt> = Burst::new();
    let mut dropped: Burst<Q::Pkt> = Burst::new();
    let mut meta = [Meta::default(); MAX_BURST];
    let mut verdicts = [Verdict::Tx; MAX_BURST];
    let published = &shared.published[id];

    // Allocate per-worker state (flow table, counters, fragment table and
    // hold slots) before timing starts.
    let mut hold: HoldBuffer<Q::Pkt> = {
        let t = shared.tables.load();
        pipeline.ct.attach(shared.conntrack.clone(), id);
        pipeline.ct.prepare(&t);
        pipeline.acl.prepare(&t);
        pipeline.lb.prepare(&t);
        pipeline.frag.prepare(&t);
        HoldBuffer::new(t.frag.hold_slots)
    };
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let c0 = rdtsc();
    // When the current loop turn began (after the last empty poll, or where
    // the last burst ended): a burst's time in the histogram is its whole
    // turn, the poll that brought it included, and a busy worker reads the
    // TSC once per burst.
    let mut turn0 = c0;
    let mut idle_spins = 0u32;
    // The snapshot in use; replaced when the control side publishes a new one
    // (checked once per burst: one atomic load and a pointer compare).
    let mut seen_swaps = shared.swaps();
    let mut cur: Arc<Tables> = shared.tables.load_full();
    shared.seen_generation[id].store(cur.generation, Ordering::Release);
    let mut since_flush = 0u32;
    // Bursts since the counters were last published (see PUBLISH_EVERY).
    let mut unpublished = 0u32;
    let mut burst_hist = BurstHistogram::default();
    // Counts not yet handed to the control side (see `Shared::telemetry`).
    let mut pending = Telemetry::default();
    let slot = &shared.telemetry[id];
    // What a trace or capture notes per burst; allocated when one is first armed.
    let mut observed: Option<Box<Observed>> = None;
    let query = &shared.flow_query[id];
    let inject = if id == 0 {
        shared.inject.get().cloned()
    } else {
        None
    };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(inj) = &inject {
            if !inj.is_empty() {
                send_injected(&mut queue, inj, &mut tx);
            }
        }
        if query.pending.load(Ordering::Relaxed) {
            let now = pipeline.lb.now_ms();
            crate::observe::scan_step(query, &cur, pipeline.lb.flows.as_ref(), now, id);
        }
        let swaps = shared.swaps();
        if swaps != seen_swaps {
            seen_swaps = swaps;
            let g = shared.tables.load_full();
            if !Arc::ptr_eq(&g, &cur) {
                // The stages' counters are indexed by the old snapshot: name
                // them with it before it goes, unless the new one indexes
                // them the same way (a storm of rule changes would otherwise
                // cost every swap a flush: 1,400 cycles measured).
                if Pipeline::counters_layout(&g) != Pipeline::counters_layout(&cur) {
                    pipeline.flush_telemetry(&cur, &mut pending, &mut burst_hist);
                    hand_off(&mut pending, slot, false);
                }
                // What this worker counted under the old snapshot is
                // published before it says it uses the new one: a caller
                // told `live: true` reads counters that include it all.
                published.publish(&stats);
                unpublished = 0;
                cur = g;
                shared.seen_generation[id].store(cur.generation, Ordering::Release);
            }
        }
        let n = queue.rx_burst(&mut rx, burst_size);
        if n == 0 {
            if !hold.is_empty() {
                // Held fragments time out while nothing arrives too.
                let nh = shared.learned_next_hop.load(Ordering::Relaxed);
                let mut held = Held {
                    pipeline: &mut pipeline,
                    hold: &mut hold,
                    meta: &mut meta,
                    verdicts: &mut verdicts,
                    stats: &mut stats,
                };
                held.service(&mut queue, &cur, nh, &mut rx, &mut tx, &mut dropped);
            }
            if queue.rx_done() {
                break;
            }
            if unpublished != 0 {
                // The first empty poll after traffic: counters are exact again.
                unpublished = 0;
                published.publish(&stats);
            }
            stats.empty_polls += 1;
            idle_spins += 1;
            if idle_spins > 1024 {
                // Nothing to do for a while: publish and yield the core briefly.
                published.publish(&stats);
                pipeline.flush_telemetry(&cur, &mut pending, &mut burst_hist);
                hand_off(&mut pending, slot, false);
                idle_spins = 0;
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            turn0 = rdtsc();
            continue;
        }
        idle_spins = 0;
        stats.bursts += 1;
        let n = rx.len();
        stats.rx += n as u64;
        for p in rx.iter() {
            let len = p.data().len();
            stats.rx_bytes += len as u64;
            stats.rx_wire_bytes += wire_bytes(len);
        }
        verdicts[..n].fill(Verdict::Tx);
        let nh = shared.learned_next_hop.load(Ordering::Relaxed);
        if shared.armed.on.load(Ordering::Relaxed) {
            observe_burst(
                &shared,
                &mut pipeline,
                &mut observed,
                &cur,
                nh,
                &mut rx,
                &mut meta[..n],
                &mut verdicts[..n],
                id,
            );
        } else {
            pipeline.run(&cur, nh, &mut rx, &mut meta[..n], &mut verdicts[..n]);
        }

        // The common bursts, acted on whole: all sent (a forwarding
        // pipeline) or all dropped for one reason (a flood of what is not
        // ours); anything else packet by packet.
        let first = verdicts[0];
        let uniform = crate::burst::uniform(&verdicts[..n]);
        if uniform && first == Verdict::Tx {
            for p in rx.iter() {
                stats.tx_bytes += p.data().len() as u64;
            }
            transmit(&mut queue, &mut rx, &mut stats);
        } else if let (true, Verdict::Drop(r)) = (uniform, first) {
            stats.drop_many(r, n as u64);
            queue.free_burst(&mut rx);
        }
        for (i, (pkt, v)) in rx.drain(..).zip(verdicts[..n].iter()).enumerate() {
            match v {
                Verdict::Tx => {
                    stats.tx_bytes += pkt.data().len() as u64;
                    tx.push(pkt);
                }
                Verdict::Punt => {
                    if let Some(p) = punt.as_mut() {
                        p.punt(pkt.data());
                    }
                    stats.punted += 1;
                    dropped.push(pkt);
                }
                Verdict::Drop(r) => {
                    stats.drop(*r);
                    dropped.push(pkt);
                }
                Verdict::Hold => hold_one(
                    &mut pipeline,
                    &mut hold,
                    &cur,
                    pkt,
                    &meta[i],
                    &mut stats,
                    &mut dropped,
                ),
            }
        }
        if !dropped.is_empty() {
            queue.free_burst(&mut dropped);
        }
        transmit(&mut queue, &mut tx, &mut stats);
        if !hold.is_empty() {
            let mut held = Held {
                pipeline: &mut pipeline,
                hold: &mut hold,
                meta: &mut meta,
                verdicts: &mut verdicts,
                stats: &mut stats,
            };
            held.service(&mut queue, &cur, nh, &mut rx, &mut tx, &mut dropped);
        }
        let turn1 = rdtsc();
        burst_hist.record(turn1.wrapping_sub(turn0));
        turn0 = turn1;
        unpublished += 1;
        if unpublished >= PUBLISH_EVERY {
            unpublished = 0;
            published.publish(&stats);
        }
        since_flush += 1;
        if since_flush >= 256 {
            since_flush = 0;
            pipeline.flush_telemetry(&cur, &mut pending, &mut burst_hist);
            hand_off(&mut pending, slot, false);
        }
    }
    // Fragments still held never see their first fragment now.
    hold.drain(|p| {
        stats.drop(DropReason::FragUnmatched);
        queue.free(p);
    });
    let cycles = rdtsc().wrapping_sub(c0);
    let busy_ns = t0.elapsed().as_nanos() as u64;
    let on_cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
    pipeline.flush_telemetry(&cur, &mut pending, &mut burst_hist);
    hand_off(&mut pending, slot, true);
    if let Err(e) = queue.flush() {
        eprintln!("dpgw: worker {id}: flushing output failed: {e}");
    }
    published.publish(&stats);
    shared.running[id].store(false, Ordering::Release);
    WorkerResult {
        queue,
        stats,
        cycles,
        busy_ns,
        on_cpu_ns,
        pinned_to,
        finished: Instant::now(),
    }
}

/// Puts a fragment the fragment stage held into the hold buffer, or drops
/// it (`frag_hold_full`) when every slot is taken.
#[cold]
#[inline(never)]
fn hold_one<P: Packet>(
    pipeline: &mut Pipeline,
    hold: &mut HoldBuffer<P>,
    t: &Tables,
    pkt: P,
    meta: &Meta,
    stats: &mut WorkerStats,
    dropped: &mut Burst<P>,
) {
    let deadline = crate::frag::deadline(&t.frag, pipeline.frag.now_us());
    match hold.push(pkt, *meta, deadline) {
        Ok(()) => pipeline.frag.counters.held += 1,
        Err(pkt) => {
            stats.drop(DropReason::FragHoldFull);
            dropped.push(pkt);
        }
    }
}

/// The worker's state the hold buffer's servicing needs.
struct Held<'a, P> {
    pipeline: &'a mut Pipeline,
    hold: &'a mut HoldBuffer<P>,
    meta: &'a mut [Meta; MAX_BURST],
    verdicts: &'a mut [Verdict; MAX_BURST],
    stats: &'a mut WorkerStats,
}

impl<P: Packet> Held<'_, P> {
    /// Sends on the held fragments whose first fragment has come (through
    /// ACL, LB and route, as a burst of their own) and drops those whose
    /// time ran out (`frag_unmatched`). `rx`, `tx` and `dropped` are empty
    /// and stay so.
    #[cold]
    #[inline(never)]
    fn service<Q: Queue<Pkt = P>>(
        &mut self,
        queue: &mut Q,
        t: &Tables,
        nh: u64,
        rx: &mut Burst<P>,
        tx: &mut Burst<P>,
        dropped: &mut Burst<P>,
    ) {
        let now = self.pipeline.frag.now_us();
        if !self.hold.due(&self.pipeline.frag, now) {
            return;
        }
        let (meta, stats) = (&mut *self.meta, &mut *self.stats);
        self.hold
            .service(&mut self.pipeline.frag, now, MAX_BURST, |o| match o {
                crate::frag::Out::Release(p, m) => {
                    meta[rx.len()] = m;
                    rx.push(p);
                }
                crate::frag::Out::Expired(p) => {
                    stats.drop(DropReason::FragUnmatched);
                    dropped.push(p);
                }
            });
        let n = rx.len();
        if n != 0 {
            let v = &mut self.verdicts[..n];
            v.fill(Verdict::Tx);
            self.pipeline
                .run_released(t, nh, rx, &mut self.meta[..n], v);
            for (pkt, v) in rx.drain(..).zip(self.verdicts[..n].iter()) {
                match v {
                    Verdict::Tx => {
                        self.stats.tx_bytes += pkt.data().len() as u64;
                        tx.push(pkt);
                    }
                    Verdict::Drop(r) => {
                        self.stats.drop(*r);
                        dropped.push(pkt);
                    }
                    // The stages after the fragment stage neither punt nor hold.
                    Verdict::Punt | Verdict::Hold => {
                        self.stats.drop(DropReason::FragUnmatched);
                        dropped.push(pkt);
                    }
                }
            }
        }
        if !dropped.is_empty() {
            queue.free_burst(dropped);
        }
        transmit(queue, tx, self.stats);
    }
}

/// A burst while a trace or capture is armed: the stages with their
/// decisions noted, then the matching packets recorded (see `observe`).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn observe_burst<P: Packet>(
    shared: &Shared,
    pipeline: &mut Pipeline,
    observed: &mut Option<Box<Observed>>,
    t: &Tables,
    nh: u64,
    pkts: &mut [P],
    meta: &mut [Meta],
    verdicts: &mut [Verdict],
    id: usize,
) {
    let Some(w) = shared.armed.current() else {
        pipeline.run(t, nh, pkts, meta, verdicts);
        return;
    };
    let o = observed.get_or_insert_with(Box::default);
    o.snap = match w.mode {
        crate::observe::Mode::Capture { snaplen, .. } => snaplen.max(256),
        crate::observe::Mode::Trace => 256,
    };
    pipeline.run_observed(t, nh, pkts, meta, verdicts, o);
    crate::observe::Recorder::finish(&w, t, o, pkts, meta, verdicts, id, crate::observe::now_ns());
}

/// Moves `pending` into the control side's `slot` if its lock is free (or,
/// with `wait`, once it is); when it is busy everything stays in `pending`
/// for the next try. A lock poisoned by a panicking reader is
/// still used: the counters in it are plain numbers, never half-written by
/// a reader.
fn hand_off(pending: &mut Telemetry, slot: &Mutex<Telemetry>, wait: bool) {
    let mut guard = match slot.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) if !wait => return,
        Err(TryLockError::WouldBlock) => slot.lock().unwrap_or_else(|p| p.into_inner()),
    };
    guard.take_from(pending);
}

/// Sends the slow path's queued frames (at most a burst) on `queue`; they
/// are not the workers' traffic, so they are counted in `inj`, not in the
/// worker's counters.
#[cold]
#[inline(never)]
fn send_injected<Q: Queue>(queue: &mut Q, inj: &crate::punt::Inject, tx: &mut Burst<Q::Pkt>) {
    let mut no_buf = 0u64;
    inj.drain(32, |f| match queue.alloc_frame(f) {
        Some(p) => tx.push(p),
        None => no_buf += 1,
    });
    let mut sent = 0;
    for _ in 0..4 {
        if tx.is_empty() {
            break;
        }
        sent += queue.tx_burst(tx);
    }
    let left = tx.len() as u64;
    queue.free_burst(tx);
    inj.sent.fetch_add(sent as u64, Ordering::Relaxed);
    inj.dropped.fetch_add(no_buf + left, Ordering::Relaxed);
}

/// Sends `tx`, retrying a partial send a few times; what is left is freed and
/// counted as `tx_full` (so `rx == tx + punted + drops` always holds).
#[inline]
fn transmit<Q: Queue>(queue: &mut Q, tx: &mut Burst<Q::Pkt>, stats: &mut WorkerStats) {
    let mut tries = 0;
    while !tx.is_empty() {
        let sent = queue.tx_burst(tx);
        stats.tx += sent as u64;
        tries += 1;
        if tries >= 4 && !tx.is_empty() {
            for p in tx.drain(..) {
                stats.tx_bytes -= p.data().len() as u64;
                stats.drop(DropReason::TxFull);
                queue.free(p);
            }
        }
    }
}
