//! Starting workers on a backend, watching them, and summarising a run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, IoKind};
use crate::engine::{run_worker, Shared, WorkerResult};
use crate::io::Queue;
use crate::pcapfile::PcapError;
use crate::stats::{DropReason, WorkerStats};
use crate::tables::Tables;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pcap(#[from] PcapError),
    /// The configuration does not make tables (every problem is listed).
    #[error("{}", .0.messages().join("\n"))]
    Tables(#[from] crate::tables::BuildError),
    /// A section the configured I/O backend needs is missing.
    #[error("{section}: section required when dataplane.io = \"{io}\"")]
    MissingSection {
        section: &'static str,
        io: &'static str,
    },
    /// `dataplane.io = "dpdk"` in a dpgw built without the `dpdk` feature.
    #[error("dataplane.io = \"dpdk\" needs a dpgw built with `--features dpdk`")]
    NoDpdk,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Backend(String),
}

/// Per-worker figures of a run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerSummary {
    pub worker: usize,
    pub core: Option<usize>,
    pub rx: u64,
    pub tx: u64,
    pub drops: u64,
    pub mpps: f64,
    pub ns_per_packet: f64,
    pub cycles_per_packet: f64,
    /// On-CPU time per packet (excludes time the thread was preempted).
    pub cpu_ns_per_packet: f64,
}

/// The result of a run, as printed by `dpgw replay` (and `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rx: u64,
    pub tx: u64,
    /// Frames for the gateway itself handed to the slow path (not drops).
    pub punted: u64,
    pub drops: BTreeMap<&'static str, u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub seconds: f64,
    /// Received packets per second over the run, in millions (all workers).
    pub mpps: f64,
    /// Time one worker core spends per packet (worker busy time / packets it handled).
    pub ns_per_packet: f64,
    /// TSC cycles one worker core spends per packet.
    pub cycles_per_packet: f64,
    /// Like `ns_per_packet`, but counting only the time the worker threads ran
    /// on a CPU (the scheduler's figure): robust on a shared, busy machine.
    pub cpu_ns_per_packet: f64,
    /// `cpu_ns_per_packet` in TSC cycles.
    pub cpu_cycles_per_packet: f64,
    /// Received L2 bytes (no FCS) per second, in Gbit/s.
    pub gbps: f64,
    /// Share of each link speed's packet rate for the replayed frame sizes
    /// (frame padded to 60 B + 4 B FCS + 20 B preamble, delimiter and gap).
    pub line_rate_pct: BTreeMap<&'static str, f64>,
    pub avg_frame_bytes: f64,
    pub workers: Vec<WorkerSummary>,
    pub tsc_ghz: f64,
    pub generation: u64,
    /// The I/O backend's own counters, summed over the queues (AF_PACKET:
    /// kernel ring drops, partial checksums completed, ...); non-zero only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub io: BTreeMap<&'static str, u64>,
}

impl Summary {
    pub fn conserved(&self) -> bool {
        self.rx == self.tx + self.punted + self.drops.values().sum::<u64>()
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "rx {} packets ({} bytes), tx {} packets ({} bytes), punted {}, dropped {}\n",
            self.rx,
            self.rx_bytes,
            self.tx,
            self.tx_bytes,
            self.punted,
            self.drops.values().sum::<u64>()
        ));
        for (k, v) in &self.drops {
            s.push_str(&format!("  drop {k:<20} {v}\n"));
        }
        s.push_str(&format!(
            "{:.3} s, {:.3} Mpps, {:.2} Gbit/s, {:.1} ns/packet, {:.1} cycles/packet per worker (TSC {:.2} GHz)\n",
            self.seconds, self.mpps, self.gbps, self.ns_per_packet, self.cycles_per_packet, self.tsc_ghz
        ));
        s.push_str(&format!(
            "on-CPU: {:.1} ns/packet, {:.1} cycles/packet per worker\n",
            self.cpu_ns_per_packet, self.cpu_cycles_per_packet
        ));
        s.push_str(&format!(
            "line rate (avg frame {:.0} B):",
            self.avg_frame_bytes
        ));
        for (k, v) in &self.line_rate_pct {
            s.push_str(&format!(" {k} {v:.1}%"));
        }
        s.push('\n');
        for (k, v) in &self.io {
            s.push_str(&format!("  io {k:<20} {v}\n"));
        }
        for w in &self.workers {
            s.push_str(&format!(
                "  worker {} (core {}): rx {} tx {} drops {} | {:.3} Mpps {:.1} ns/pkt {:.1} cycles/pkt\n",
                w.worker,
                w.core.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                w.rx,
                w.tx,
                w.drops,
                w.mpps,
                w.ns_per_packet,
                w.cycles_per_packet
            ));
        }
        s
    }
}

/// Options that do not come from the config file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Print a progress line on stderr every second (after the first few).
    pub progress: bool,
}

/// A handle the caller can use to stop a run (e.g. from a signal handler).
pub type StopFlag = Arc<AtomicBool>;

/// Builds the first snapshot and the state shared with the workers. Every
/// problem that keeps the config from being applied whole is listed.
pub fn prepare(cfg: &Config) -> Result<Arc<Shared>, RunError> {
    let tables = Tables::build(cfg, 1)?;
    Ok(Shared::new(tables, cfg.dataplane.workers))
}

/// Runs the configured pipeline until the input is exhausted or `stop` is set.
pub fn run(
    cfg: &Config,
    opts: &RunOptions,
    stop: StopFlag,
) -> Result<(Summary, Arc<Shared>), RunError> {
    let shared = prepare(cfg)?;
    run_prepared(cfg, opts, stop, shared)
}

/// Like [`run`], on a [`prepare`]d state (so a control server can hold it too).
///
/// Each backend only opens queues (and says where its port counters are);
/// this one driver runs the workers over them.
pub fn run_prepared(
    cfg: &Config,
    opts: &RunOptions,
    stop: StopFlag,
    shared: Arc<Shared>,
) -> Result<(Summary, Arc<Shared>), RunError> {
    let workers = cfg.dataplane.workers;
    let summary = match cfg.dataplane.io {
        IoKind::Pcap => {
            let pc = cfg.pcap.as_ref().ok_or(RunError::MissingSection {
                section: "pcap",
                io: "pcap",
            })?;
            let (queues, output) = crate::io::pcap::open_queues(pc, workers)?;
            let summary = drive(cfg, opts, &shared, queues, Vec::new(), &stop)?;
            if let (Some(path), Some(slots)) = (&pc.output, output) {
                let file = crate::io::pcap::output_file(&slots)
                    .ok_or_else(|| RunError::Backend("output lock poisoned".into()))?;
                write_atomic(path, &file).map_err(|source| RunError::Io {
                    what: format!("writing {}", path.display()),
                    source,
                })?;
            }
            summary
        }
        IoKind::Afpacket => {
            // AF_PACKET rings per worker + the slow-path thread (ARP/ICMP/NDP
            // for our addresses, next-hop resolution), fed by one punt handle
            // per worker.
            let af = cfg.afpacket.as_ref().ok_or(RunError::MissingSection {
                section: "afpacket",
                io: "afpacket",
            })?;
            let queues: Vec<_> = crate::io::afpacket::open_queues(af, workers)
                .map_err(|e| RunError::Backend(e.to_string()))?
                .into_iter()
                .map(crate::io::HostQueue::Packet)
                .collect();
            let tx_if = af
                .tx_interface
                .as_deref()
                .or(af.interfaces.first().map(|s| s.as_str()));
            let slow = crate::slowpath::SlowPath::start(cfg, shared.clone(), tx_if)
                .map_err(RunError::Backend)?;
            let punts = (0..workers).map(|_| Some(slow.punt())).collect();
            let summary = drive(cfg, opts, &shared, queues, punts, &stop);
            slow.stop();
            summary?
        }
        IoKind::Afxdp => {
            // XDP sockets per worker; the slow path as with AF_PACKET (the
            // workers punt what is for the gateway itself, its replies leave
            // through a plain packet socket, which XDP does not affect).
            let ax = cfg.afxdp.as_ref().ok_or(RunError::MissingSection {
                section: "afxdp",
                io: "afxdp",
            })?;
            let queues = crate::io::afxdp::open_queues(ax, workers)
                .map_err(|e| RunError::Backend(e.to_string()))?;
            for (iface, native) in crate::io::afxdp::describe(&queues) {
                let mode = if native { "native" } else { "generic" };
                crate::log::event(
                    crate::log::Level::Info,
                    "xdp_attached",
                    &[
                        ("iface", &iface),
                        ("mode", &mode),
                        ("queues", &queues.len()),
                    ],
                );
            }
            let queues: Vec<_> = queues.into_iter().map(crate::io::HostQueue::Xdp).collect();
            let tx_if = ax
                .tx_interface
                .as_deref()
                .or(ax.interfaces.first().map(|s| s.as_str()));
            let slow = crate::slowpath::SlowPath::start(cfg, shared.clone(), tx_if)
                .map_err(RunError::Backend)?;
            let punts = (0..workers).map(|_| Some(slow.punt())).collect();
            let summary = drive(cfg, opts, &shared, queues, punts, &stop);
            slow.stop();
            summary?
        }
        #[cfg(feature = "dpdk")]
        IoKind::Dpdk => {
            // The EAL is initialised here, so this runs once per process.
            let section = cfg.dpdk.as_ref().ok_or(RunError::MissingSection {
                section: "dpdk",
                io: "dpdk",
            })?;
            let (runtime, queues) = crate::io::dpdk::open(section, workers)
                .map_err(|e| RunError::Backend(format!("dpdk: {e}")))?;
            shared.set_port_source(Some(runtime.port_source()));
            // The slow path (ARP/ND/echo for our addresses, next-hop
            // resolution, health checks) takes punted frames as with
            // AF_PACKET, and its frames leave through worker 0's TX queue:
            // the kernel does not own the port.
            let slow = crate::slowpath::SlowPath::start_injecting(cfg, shared.clone())
                .map_err(RunError::Backend)?;
            let punts = (0..workers).map(|_| Some(slow.punt())).collect();
            let summary = drive(cfg, opts, &shared, queues, punts, &stop);
            slow.stop();
            shared.set_port_source(None);
            drop(runtime);
            summary?
        }
        #[cfg(not(feature = "dpdk"))]
        IoKind::Dpdk => return Err(RunError::NoDpdk),
    };
    Ok((summary, shared))
}

/// Writes a file through a temporary file and a rename, so readers never see half of it.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn core_for(cfg: &Config, worker: usize) -> Option<usize> {
    if cfg.dataplane.no_pin {
        return None;
    }
    if let Some(c) = cfg.dataplane.cores.get(worker) {
        return Some(*c);
    }
    let ids = crate::cpu::online_cpus();
    if ids.is_empty() {
        return None;
    }
    Some(ids[worker % ids.len()])
}

/// Spawns one pinned worker per queue, watches them, and summarises. Worker
/// `i` hands frames for the gateway itself to `punts[i]` (missing entries: no
/// slow path; such frames are still counted as punted, and freed).
pub fn drive<Q: Queue + 'static>(
    cfg: &Config,
    opts: &RunOptions,
    shared: &Arc<Shared>,
    queues: Vec<Q>,
    punts: Vec<Option<Box<dyn crate::punt::Punt>>>,
    stop: &StopFlag,
) -> Result<Summary, RunError> {
    let mut punts = punts.into_iter();
    let burst = cfg.dataplane.burst;
    let tsc0 = crate::cpu::rdtsc();
    let t0 = Instant::now();
    let mut handles: Vec<JoinHandle<WorkerResult<Q>>> = Vec::new();
    for (i, q) in queues.into_iter().enumerate() {
        let sh = shared.clone();
        let core = core_for(cfg, i);
        let punt = punts.next().flatten();
        let h = std::thread::Builder::new()
            .name(format!("dpgw-w{i}"))
            .spawn(move || run_worker(i, q, sh, burst, core, punt))
            .map_err(|source| RunError::Io {
                what: "spawning a worker thread".into(),
                source,
            })?;
        handles.push(h);
    }
    let mut last_print = Instant::now();
    let mut last_rx = 0u64;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if stop.load(Ordering::Relaxed) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if opts.progress
            && t0.elapsed() > Duration::from_secs(3)
            && last_print.elapsed() >= Duration::from_secs(1)
        {
            let t = shared.totals();
            let dt = last_print.elapsed().as_secs_f64();
            eprintln!(
                "dpgw: {:>7.1}s rx {} tx {} drops {} | {:.3} Mpps",
                t0.elapsed().as_secs_f64(),
                t.rx,
                t.tx,
                t.total_drops(),
                (t.rx - last_rx) as f64 / dt / 1e6
            );
            last_rx = t.rx;
            last_print = Instant::now();
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let tsc_ghz = {
        let c = crate::cpu::rdtsc().wrapping_sub(tsc0) as f64;
        if seconds > 0.0 {
            c / seconds / 1e9
        } else {
            0.0
        }
    };
    let mut results = Vec::new();
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| RunError::Backend("a worker thread panicked".into()))?,
        );
    }
    // The run ends when the last worker is done, not when this thread's
    // 20 ms poll above noticed (up to 20 ms late: a tenth of a 0.2 s replay).
    let last_done = results
        .iter()
        .map(|r| r.finished.saturating_duration_since(t0).as_secs_f64())
        .fold(0.0, f64::max);
    let seconds = if last_done > 0.0 {
        last_done.min(seconds)
    } else {
        seconds
    };
    let mut io: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &mut results {
        for (k, v) in r.queue.io_counters() {
            if v != 0 {
                *io.entry(k).or_insert(0) += v;
            }
        }
    }
    let mut summary = summarise(&results, seconds, tsc_ghz, shared.tables.load().generation);
    summary.io = io;
    Ok(summary)
}

fn summarise<Q>(
    results: &[WorkerResult<Q>],
    seconds: f64,
    tsc_ghz: f64,
    generation: u64,
) -> Summary {
    let mut total = WorkerStats::default();
    let mut workers = Vec::new();
    let (mut cycles, mut busy, mut on_cpu) = (0u64, 0u64, 0u64);
    for (i, r) in results.iter().enumerate() {
        total.add(&r.stats);
        cycles += r.cycles;
        busy += r.busy_ns;
        on_cpu += r.on_cpu_ns;
        let rx = r.stats.rx.max(1) as f64;
        workers.push(WorkerSummary {
            worker: i,
            core: r.pinned_to,
            rx: r.stats.rx,
            tx: r.stats.tx,
            drops: r.stats.total_drops(),
            mpps: if r.busy_ns > 0 {
                r.stats.rx as f64 / (r.busy_ns as f64 / 1e9) / 1e6
            } else {
                0.0
            },
            ns_per_packet: r.busy_ns as f64 / rx,
            cycles_per_packet: r.cycles as f64 / rx,
            cpu_ns_per_packet: r.on_cpu_ns as f64 / rx,
        });
    }
    let rx = total.rx.max(1) as f64;
    let secs = seconds.max(1e-9);
    let pps = total.rx as f64 / secs;
    let avg_wire = total.rx_wire_bytes as f64 / rx;
    let mut line_rate_pct = BTreeMap::new();
    for (name, gbit) in [("10G", 10.0), ("25G", 25.0), ("40G", 40.0), ("100G", 100.0)] {
        let max_pps = gbit * 1e9 / (8.0 * avg_wire.max(84.0));
        line_rate_pct.insert(
            name,
            if total.rx == 0 {
                0.0
            } else {
                pps / max_pps * 100.0
            },
        );
    }
    let mut drops = BTreeMap::new();
    for r in DropReason::ALL {
        let v = total.drops[*r as usize];
        if v != 0 {
            drops.insert(r.name(), v);
        }
    }
    Summary {
        rx: total.rx,
        tx: total.tx,
        punted: total.punted,
        drops,
        rx_bytes: total.rx_bytes,
        tx_bytes: total.tx_bytes,
        seconds,
        mpps: pps / 1e6,
        ns_per_packet: busy as f64 / rx,
        cycles_per_packet: cycles as f64 / rx,
        cpu_ns_per_packet: on_cpu as f64 / rx,
        cpu_cycles_per_packet: on_cpu as f64 / rx * tsc_ghz,
        gbps: total.rx_bytes as f64 * 8.0 / secs / 1e9,
        line_rate_pct,
        avg_frame_bytes: if total.rx == 0 {
            0.0
        } else {
            total.rx_bytes as f64 / rx
        },
        workers,
        tsc_ghz,
        generation,
        io: BTreeMap::new(),
    }
}
