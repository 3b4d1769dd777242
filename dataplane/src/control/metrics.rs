//! Counters for `stats`, `flows` and the Prometheus endpoint, gathered from the
//! workers' published counters and telemetry (the control thread only reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ctl::{
    BackendCounters, FlowRow, FlowTableCounters, FlowsReport, PortCounters, RuleCounters,
    ServiceCounters, StatsReport, WorkerCounters,
};

use crate::cpu::rdtsc;
use crate::engine::Shared;
use crate::stats::{DropReason, Telemetry, TrafficCounters, WorkerStats};

use super::state::Desired;

/// Samples the workers' counters about once a second, for rates, and
/// calibrates the TSC against the wall clock (for the burst-time histogram).
#[derive(Debug)]
pub struct Sampler {
    start: Instant,
    tsc0: u64,
    last: Option<(Instant, Vec<(u64, u64)>)>,
    rates: Vec<(f64, f64)>,
    window_s: f64,
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            start: Instant::now(),
            tsc0: rdtsc(),
            last: None,
            rates: Vec::new(),
            window_s: 0.0,
        }
    }

    /// Takes a sample if the last one is at least a second old.
    pub fn tick(&mut self, shared: &Shared) {
        let now = Instant::now();
        if let Some((t, _)) = &self.last {
            if now.duration_since(*t).as_secs_f64() < 1.0 {
                return;
            }
        }
        let cur: Vec<(u64, u64)> = shared
            .published
            .iter()
            .map(|p| (p.rx.load(Ordering::Relaxed), p.tx.load(Ordering::Relaxed)))
            .collect();
        if let Some((t, prev)) = &self.last {
            let dt = now.duration_since(*t).as_secs_f64().max(1e-9);
            self.rates = cur
                .iter()
                .zip(prev)
                .map(|(c, p)| {
                    (
                        c.0.saturating_sub(p.0) as f64 / dt / 1e6,
                        c.1.saturating_sub(p.1) as f64 / dt / 1e6,
                    )
                })
                .collect();
            self.window_s = dt;
        }
        self.last = Some((now, cur));
    }

    /// Time until the next sample is due.
    pub fn next_due(&self) -> std::time::Duration {
        match &self.last {
            None => std::time::Duration::ZERO,
            Some((t, _)) => std::time::Duration::from_secs(1).saturating_sub(t.elapsed()),
        }
    }

    /// TSC ticks per second, measured since the server started (0 if unknown).
    pub fn tsc_hz(&self) -> f64 {
        let s = self.start.elapsed().as_secs_f64();
        if s < 0.01 {
            return 0.0;
        }
        rdtsc().wrapping_sub(self.tsc0) as f64 / s
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

/// Copies of every worker's telemetry (the lock is held only for the copy).
pub fn telemetry(shared: &Shared) -> Vec<Telemetry> {
    shared
        .telemetry
        .iter()
        .map(|m| match m.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
        .collect()
}

fn worker_counters(worker: Option<usize>, s: &WorkerStats) -> WorkerCounters {
    WorkerCounters {
        worker,
        running: false,
        generation: 0,
        rx: s.rx,
        tx: s.tx,
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        bursts: s.bursts,
        rx_mpps: 0.0,
        tx_mpps: 0.0,
        drops: s
            .drops_named()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn flow_counters(worker: Option<usize>, t: &Telemetry) -> FlowTableCounters {
    FlowTableCounters {
        worker,
        in_use: t.flows_in_use,
        capacity: t.flow_capacity,
        hits: t.flow_counters.hits,
        misses: t.flow_counters.misses,
        evictions: t.flow_counters.evictions,
        expirations: t.flow_counters.expirations,
    }
}

fn add_flows(a: &mut FlowTableCounters, b: &FlowTableCounters) {
    a.in_use += b.in_use;
    a.capacity += b.capacity;
    a.hits += b.hits;
    a.misses += b.misses;
    a.evictions += b.evictions;
    a.expirations += b.expirations;
}

/// Everything `stats` reports.
pub fn collect(
    shared: &Shared,
    desired: &Desired,
    sampler: &Sampler,
    tel: &[Telemetry],
) -> StatsReport {
    let mut total = WorkerStats::default();
    let mut workers = Vec::new();
    let mut total_c = WorkerCounters::default();
    for (i, p) in shared.published.iter().enumerate() {
        let s = p.snapshot();
        total.add(&s);
        let mut w = worker_counters(Some(i), &s);
        w.running = shared.running[i].load(Ordering::Acquire);
        w.generation = shared.seen_generation[i].load(Ordering::Acquire);
        if let Some((rx, tx)) = sampler.rates.get(i) {
            w.rx_mpps = *rx;
            w.tx_mpps = *tx;
            total_c.rx_mpps += rx;
            total_c.tx_mpps += tx;
        }
        workers.push(w);
    }
    let generation = shared.tables.load().generation;
    let mut t = worker_counters(None, &total);
    t.running = workers.iter().any(|w| w.running);
    t.generation = generation;
    t.rx_mpps = total_c.rx_mpps;
    t.tx_mpps = total_c.tx_mpps;

    let mut svc: BTreeMap<String, TrafficCounters> = BTreeMap::new();
    let mut be: BTreeMap<(String, IpAddr), TrafficCounters> = BTreeMap::new();
    let mut rules: BTreeMap<u32, u64> = BTreeMap::new();
    let mut flow_tables = Vec::new();
    let mut flow_total = FlowTableCounters::default();
    for s in desired.services().iter() {
        svc.entry(s.name.clone()).or_default();
        for b in &s.backends {
            be.entry((s.name.clone(), b.ip)).or_default();
        }
    }
    if let Some(a) = &desired.config().acl {
        for r in &a.rule {
            if let Some(id) = r.id {
                rules.entry(id).or_default();
            }
        }
    }
    for (i, x) in tel.iter().enumerate() {
        for (k, v) in &x.services {
            svc.entry(k.clone()).or_default().add(v);
        }
        for (k, v) in &x.backends {
            be.entry(k.clone()).or_default().add(v);
        }
        for (k, v) in &x.rule_hits {
            *rules.entry(*k).or_default() += v;
        }
        let f = flow_counters(Some(i), x);
        add_flows(&mut flow_total, &f);
        flow_tables.push(f);
    }
    let services = svc
        .into_iter()
        .map(|(name, v)| ServiceCounters {
            configured: desired.services().get(&name).is_some(),
            name,
            packets: v.packets,
            bytes: v.bytes,
            new_flows: v.new_flows,
        })
        .collect();
    let backends = be
        .into_iter()
        .map(|((service, ip), v)| {
            let spec = desired
                .services()
                .get(&service)
                .and_then(|s| s.backends.iter().find(|b| b.ip == ip));
            BackendCounters {
                state: spec.map(|b| b.state),
                weight: spec.map(|b| b.weight),
                service,
                ip,
                packets: v.packets,
                bytes: v.bytes,
                new_flows: v.new_flows,
            }
        })
        .collect();
    StatsReport {
        generation,
        uptime_s: sampler.start.elapsed().as_secs_f64(),
        rate_window_s: sampler.window_s,
        workers,
        total: t,
        services,
        backends,
        rules: rules
            .into_iter()
            .map(|(id, hits)| RuleCounters { id, hits })
            .collect(),
        flow_tables,
        flow_total,
        ports: port_counters(),
    }
}

/// Counters of the DPDK ports of this process's runtime (none without DPDK, or
/// before the ports are up and after they are stopped).
#[cfg(feature = "dpdk")]
fn port_counters() -> Vec<PortCounters> {
    crate::io::dpdk::current_port_stats()
        .unwrap_or_default()
        .into_iter()
        .map(|p| PortCounters {
            port: p.port,
            name: p.name,
            ipackets: p.ipackets,
            opackets: p.opackets,
            ibytes: p.ibytes,
            obytes: p.obytes,
            imissed: p.imissed,
            ierrors: p.ierrors,
            oerrors: p.oerrors,
            rx_nombuf: p.rx_nombuf,
        })
        .collect()
}

#[cfg(not(feature = "dpdk"))]
fn port_counters() -> Vec<PortCounters> {
    Vec::new()
}

/// Answer to `flows`.
pub fn flows(
    report: &StatsReport,
    service: Option<&str>,
    limit: Option<usize>,
) -> Result<FlowsReport, String> {
    if let Some(s) = service {
        if !report.services.iter().any(|x| x.name == s) {
            return Err(format!("service {s:?}: no such service"));
        }
    }
    let mut rows = Vec::new();
    for s in &report.services {
        if service.is_some_and(|n| n != s.name) {
            continue;
        }
        rows.push(FlowRow {
            service: s.name.clone(),
            backend: None,
            new_flows: s.new_flows,
            packets: s.packets,
        });
        for b in report.backends.iter().filter(|b| b.service == s.name) {
            rows.push(FlowRow {
                service: s.name.clone(),
                backend: Some(b.ip),
                new_flows: b.new_flows,
                packets: b.packets,
            });
        }
    }
    let mut truncated = 0;
    if let Some(l) = limit {
        truncated = rows.len().saturating_sub(l);
        rows.truncate(l);
    }
    Ok(FlowsReport {
        tables: report.flow_tables.clone(),
        total: report.flow_total.clone(),
        rows,
        truncated,
    })
}

/// Escapes a Prometheus label value.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4).
pub fn prometheus(shared: &Shared, r: &StatsReport, tel: &[Telemetry], tsc_hz: f64) -> String {
    let mut o = String::with_capacity(8192);
    family(
        &mut o,
        "dpgw_generation",
        "gauge",
        "Generation of the published table snapshot.",
    );
    let _ = writeln!(o, "dpgw_generation {}", r.generation);
    family(
        &mut o,
        "dpgw_worker_generation",
        "gauge",
        "Snapshot generation each worker last used.",
    );
    for w in &r.workers {
        let _ = writeln!(
            o,
            "dpgw_worker_generation{{worker=\"{}\"}} {}",
            w.worker.unwrap_or(0),
            w.generation
        );
    }
    family(
        &mut o,
        "dpgw_worker_running",
        "gauge",
        "1 while the worker runs.",
    );
    for w in &r.workers {
        let _ = writeln!(
            o,
            "dpgw_worker_running{{worker=\"{}\"}} {}",
            w.worker.unwrap_or(0),
            u8::from(w.running)
        );
    }
    type Field = fn(&WorkerCounters) -> u64;
    let per_worker: [(&str, &str, Field); 5] = [
        ("dpgw_rx_packets_total", "Packets received.", |w| w.rx),
        ("dpgw_tx_packets_total", "Packets transmitted.", |w| w.tx),
        ("dpgw_rx_bytes_total", "Bytes received.", |w| w.rx_bytes),
        ("dpgw_tx_bytes_total", "Bytes transmitted.", |w| w.tx_bytes),
        ("dpgw_bursts_total", "Non-empty bursts processed.", |w| {
            w.bursts
        }),
    ];
    for (name, help, f) in per_worker {
        family(&mut o, name, "counter", help);
        for w in &r.workers {
            let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", w.worker.unwrap_or(0), f(w));
        }
    }
    family(
        &mut o,
        "dpgw_drops_total",
        "counter",
        "Packets dropped, by worker and reason.",
    );
    for (i, p) in shared.published.iter().enumerate() {
        let s = p.snapshot();
        for reason in DropReason::ALL {
            let _ = writeln!(
                o,
                "dpgw_drops_total{{worker=\"{i}\",reason=\"{}\"}} {}",
                reason.name(),
                s.drops[*reason as usize]
            );
        }
    }
    type PortField = fn(&PortCounters) -> u64;
    let per_port: [(&str, &str, PortField); 8] = [
        (
            "dpgw_port_rx_packets_total",
            "Packets the DPDK port received.",
            |p| p.ipackets,
        ),
        (
            "dpgw_port_tx_packets_total",
            "Packets the DPDK port sent.",
            |p| p.opackets,
        ),
        (
            "dpgw_port_rx_bytes_total",
            "Bytes the DPDK port received.",
            |p| p.ibytes,
        ),
        (
            "dpgw_port_tx_bytes_total",
            "Bytes the DPDK port sent.",
            |p| p.obytes,
        ),
        (
            "dpgw_port_rx_missed_total",
            "Packets the DPDK port dropped for want of a free RX descriptor (imissed).",
            |p| p.imissed,
        ),
        (
            "dpgw_port_rx_errors_total",
            "Erroneous packets the DPDK port received.",
            |p| p.ierrors,
        ),
        (
            "dpgw_port_tx_errors_total",
            "Packets the DPDK port failed to send.",
            |p| p.oerrors,
        ),
        (
            "dpgw_port_rx_nombuf_total",
            "RX mbuf allocation failures of the DPDK port.",
            |p| p.rx_nombuf,
        ),
    ];
    if !r.ports.is_empty() {
        for (name, help, f) in per_port {
            family(&mut o, name, "counter", help);
            for p in &r.ports {
                let _ = writeln!(
                    o,
                    "{name}{{port=\"{}\",device=\"{}\"}} {}",
                    p.port,
                    esc(&p.name),
                    f(p)
                );
            }
        }
    }
    type SvcField = fn(&ServiceCounters) -> u64;
    let per_svc: [(&str, &str, SvcField); 3] = [
        (
            "dpgw_service_packets_total",
            "Packets sent to a backend of the service.",
            |s| s.packets,
        ),
        (
            "dpgw_service_bytes_total",
            "Bytes sent to a backend of the service.",
            |s| s.bytes,
        ),
        (
            "dpgw_service_new_flows_total",
            "Flows created for the service.",
            |s| s.new_flows,
        ),
    ];
    for (name, help, f) in per_svc {
        family(&mut o, name, "counter", help);
        for s in &r.services {
            let _ = writeln!(o, "{name}{{service=\"{}\"}} {}", esc(&s.name), f(s));
        }
    }
    type BeField = fn(&BackendCounters) -> u64;
    let per_be: [(&str, &str, BeField); 3] = [
        (
            "dpgw_backend_packets_total",
            "Packets sent to the backend.",
            |b| b.packets,
        ),
        (
            "dpgw_backend_bytes_total",
            "Bytes sent to the backend.",
            |b| b.bytes,
        ),
        (
            "dpgw_backend_new_flows_total",
            "Flows pinned to the backend.",
            |b| b.new_flows,
        ),
    ];
    for (name, help, f) in per_be {
        family(&mut o, name, "counter", help);
        for b in &r.backends {
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                esc(&b.service),
                b.ip,
                f(b)
            );
        }
    }
    family(
        &mut o,
        "dpgw_backend_weight",
        "gauge",
        "Configured weight of the backend.",
    );
    for b in &r.backends {
        if let Some(wt) = b.weight {
            let _ = writeln!(
                o,
                "dpgw_backend_weight{{service=\"{}\",backend=\"{}\"}} {wt}",
                esc(&b.service),
                b.ip
            );
        }
    }
    family(
        &mut o,
        "dpgw_rule_hits_total",
        "counter",
        "Packets matched by the ACL rule.",
    );
    for x in &r.rules {
        let _ = writeln!(o, "dpgw_rule_hits_total{{rule=\"{}\"}} {}", x.id, x.hits);
    }
    family(
        &mut o,
        "dpgw_flow_table_entries",
        "gauge",
        "Flow-table entries in use.",
    );
    for f in &r.flow_tables {
        let _ = writeln!(
            o,
            "dpgw_flow_table_entries{{worker=\"{}\"}} {}",
            f.worker.unwrap_or(0),
            f.in_use
        );
    }
    family(
        &mut o,
        "dpgw_flow_table_capacity",
        "gauge",
        "Flow-table capacity.",
    );
    for f in &r.flow_tables {
        let _ = writeln!(
            o,
            "dpgw_flow_table_capacity{{worker=\"{}\"}} {}",
            f.worker.unwrap_or(0),
            f.capacity
        );
    }
    family(
        &mut o,
        "dpgw_flow_table_events_total",
        "counter",
        "Flow-table lookups and removals.",
    );
    for f in &r.flow_tables {
        let w = f.worker.unwrap_or(0);
        for (ev, v) in [
            ("hit", f.hits),
            ("miss", f.misses),
            ("eviction", f.evictions),
            ("expiration", f.expirations),
        ] {
            let _ = writeln!(
                o,
                "dpgw_flow_table_events_total{{worker=\"{w}\",event=\"{ev}\"}} {v}"
            );
        }
    }
    family(
        &mut o,
        "dpgw_acl_cache_lookups_total",
        "counter",
        "ACL result cache per worker: keys answered from the cache (hit), by the classifier after a lookup (miss), or by the classifier while the cache is bypassed for a low hit ratio (bypass).",
    );
    for (w, t) in tel.iter().enumerate() {
        for (res, v) in [
            ("hit", t.acl_cache.hits),
            ("miss", t.acl_cache.misses),
            ("bypass", t.acl_cache.bypassed),
        ] {
            let _ = writeln!(
                o,
                "dpgw_acl_cache_lookups_total{{worker=\"{w}\",result=\"{res}\"}} {v}"
            );
        }
    }
    // Burst processing time: workers count bursts in power-of-two TSC-cycle
    // buckets (bucket i: fewer than 2^i cycles); bounds are converted to
    // seconds with the TSC rate measured by this thread.
    let mut buckets = [0u64; 64];
    let mut nb = 0;
    for t in tel {
        for (i, c) in t.burst_ns_buckets.iter().enumerate().take(64) {
            buckets[i] += c;
            nb = nb.max(i + 1);
        }
    }
    if nb > 0 && tsc_hz > 0.0 {
        family(
            &mut o,
            "dpgw_burst_duration_seconds",
            "histogram",
            "Time to process one burst (all workers; bounds from TSC cycles).",
        );
        let mut cum = 0u64;
        let mut sum = 0.0f64;
        for (i, c) in buckets[..nb].iter().enumerate() {
            cum += c;
            let upper = (1u64 << i) as f64 / tsc_hz;
            // The bucket's midpoint stands in for its bursts' exact durations.
            sum += *c as f64 * upper * 0.75;
            let _ = writeln!(
                o,
                "dpgw_burst_duration_seconds_bucket{{le=\"{upper:e}\"}} {cum}"
            );
        }
        let _ = writeln!(o, "dpgw_burst_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(o, "dpgw_burst_duration_seconds_sum {sum:e}");
        let _ = writeln!(o, "dpgw_burst_duration_seconds_count {cum}");
    }
    o
}
