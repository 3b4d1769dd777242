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
use crate::stats::{BurstHistogram, DropReason, Telemetry, TrafficCounters, WorkerStats};

use super::state::Desired;

/// How long the TSC is measured against the wall clock before its rate is
/// fixed (the rate's error is then about the time between the two clock
/// reads over this, well under 1e-6).
const TSC_CALIBRATION_S: f64 = 1.0;

/// Samples the workers' counters about once a second, for rates, and
/// calibrates the TSC against the wall clock (for the burst-time histogram).
#[derive(Debug)]
pub struct Sampler {
    start: Instant,
    tsc0: u64,
    /// TSC ticks per second, fixed once measured (0 until then), so the
    /// histogram's bounds do not move from one scrape to the next.
    tsc_hz: f64,
    last: Option<(Instant, Vec<(u64, u64)>)>,
    rates: Vec<(f64, f64)>,
    window_s: f64,
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            start: Instant::now(),
            tsc0: rdtsc(),
            tsc_hz: 0.0,
            last: None,
            rates: Vec::new(),
            window_s: 0.0,
        }
    }

    /// Takes a sample if the last one is at least a second old.
    pub fn tick(&mut self, shared: &Shared) {
        if self.tsc_hz == 0.0 {
            let s = self.start.elapsed().as_secs_f64();
            if s >= TSC_CALIBRATION_S {
                self.tsc_hz = rdtsc().wrapping_sub(self.tsc0) as f64 / s;
            }
        }
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

    /// TSC ticks per second, measured over the server's first second (0
    /// before that, or without a TSC).
    pub fn tsc_hz(&self) -> f64 {
        self.tsc_hz
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
        punted: s.punted,
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
        evicted_probationary: t.flow_counters.evicted_probationary,
        evicted_protected: t.flow_counters.evicted_protected,
        promoted: t.flow_counters.promoted,
        demoted: t.flow_counters.demoted,
        closed: t.flow_counters.closed,
        reset: t.flow_counters.reset,
        rehomed: t.flow_counters.rehomed,
        rate_limited: t.flow_counters.rate_limited,
    }
}

fn add_flows(a: &mut FlowTableCounters, b: &FlowTableCounters) {
    a.in_use += b.in_use;
    a.capacity += b.capacity;
    a.hits += b.hits;
    a.misses += b.misses;
    a.evictions += b.evictions;
    a.expirations += b.expirations;
    a.evicted_probationary += b.evicted_probationary;
    a.evicted_protected += b.evicted_protected;
    a.promoted += b.promoted;
    a.demoted += b.demoted;
    a.closed += b.closed;
    a.reset += b.reset;
    a.rehomed += b.rehomed;
    a.rate_limited += b.rate_limited;
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
    let snapshot = shared.tables.load();
    let generation = snapshot.generation;
    let digest = snapshot.digest().to_string();
    drop(snapshot);
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
    let mut frag = crate::stats::FragCounters::default();
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
        frag.add(&x.frag);
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
            rate_limited: v.rate_limited,
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
    let snap = shared.tables.load();
    let fleet = snap.fleet.as_ref().map(|f| f.report());
    let overlay = snap.fdb.as_ref().map(|f| {
        let c = f.fdb.counters();
        ctl::OverlayCounters {
            encapsulated: tel.iter().map(|t| t.overlay.encapsulated).sum(),
            to_static: tel.iter().map(|t| t.overlay.to_static).sum(),
            learned: c.new,
            moved: c.moved,
            evicted: c.evicted,
            learn_limited: c.limited,
            learn_busy: c.busy,
            entries: f.fdb.entries(f.now_s()).len() as u64,
        }
    });
    drop(snap);
    StatsReport {
        fleet,
        overlay,
        generation,
        digest,
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
        fragments: ctl::FragmentCounters {
            first: frag.first,
            associated: frag.associated,
            held: frag.held,
            released: frag.released,
            table_full: frag.table_full,
        },
        ports: shared.port_counters(),
        health: shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(),
        icmp_errors_forwarded: tel.iter().map(|t| t.icmp_errors_forwarded).sum(),
        icmp_too_big_sent: tel.iter().map(|t| t.icmp_too_big).sum(),
        conntrack: {
            let mut per: std::collections::BTreeMap<u32, crate::stats::CtCounters> =
                Default::default();
            for x in tel.iter() {
                for (vni, c) in &x.conntrack {
                    per.entry(*vni).or_default().add(c);
                }
            }
            per.into_iter()
                .map(|(vni, c)| ctl::ConnCounters {
                    vni,
                    created: c.created,
                    hits: c.hits,
                    remote_hits: c.remote_hits,
                    related: c.related,
                    ct_full: c.ct_full,
                    denied_new: c.denied_new,
                })
                .collect()
        },
        conntrack_live: {
            let ct = &shared.conntrack;
            let to = shared.tables.load().ct_timeouts;
            ct.tables
                .live(ct.now_ms(), &to)
                .iter()
                .map(|&n| n as u64)
                .sum()
        },
    }
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

/// What the metric families are computed from (one scrape).
struct Sources<'a> {
    report: &'a StatsReport,
    /// Every worker's published counters (all drop reasons, zero or not).
    workers: Vec<WorkerStats>,
    tel: &'a [Telemetry],
    tsc_hz: f64,
    /// The route announcement, when `[announce]` is configured.
    gateway: Option<ctl::GatewayReport>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One line of a family: `{name}{suffix}{labels} {value}`.
#[derive(Debug)]
struct Sample {
    /// Appended to the family name (`_bucket`, `_sum`, `_count` of a histogram).
    suffix: &'static str,
    /// Label names and values (unescaped).
    labels: Vec<(&'static str, String)>,
    value: Value,
}

fn sample(labels: Vec<(&'static str, String)>, v: u64) -> Sample {
    Sample {
        suffix: "",
        labels,
        value: Value::Int(v),
    }
}

/// A metric family: what the exposition says about it and where its samples
/// come from.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// Left out entirely (no HELP/TYPE) when it has no samples.
    optional: bool,
    samples: fn(&Sources) -> Vec<Sample>,
}

fn worker_label(w: Option<usize>) -> (&'static str, String) {
    ("worker", w.unwrap_or(0).to_string())
}

fn per_worker(s: &Sources, f: fn(&WorkerCounters) -> u64) -> Vec<Sample> {
    s.report
        .workers
        .iter()
        .map(|w| sample(vec![worker_label(w.worker)], f(w)))
        .collect()
}

fn per_port(s: &Sources, f: fn(&PortCounters) -> u64) -> Vec<Sample> {
    s.report
        .ports
        .iter()
        .map(|p| {
            let labels = vec![("port", p.port.to_string()), ("device", p.name.clone())];
            sample(labels, f(p))
        })
        .collect()
}

fn per_service(s: &Sources, f: fn(&ServiceCounters) -> u64) -> Vec<Sample> {
    s.report
        .services
        .iter()
        .map(|x| sample(vec![("service", x.name.clone())], f(x)))
        .collect()
}

fn per_backend(s: &Sources, f: fn(&BackendCounters) -> Option<u64>) -> Vec<Sample> {
    s.report
        .backends
        .iter()
        .filter_map(|b| {
            let labels = vec![
                ("service", b.service.clone()),
                ("backend", b.ip.to_string()),
            ];
            Some(sample(labels, f(b)?))
        })
        .collect()
}

fn per_flow_table(s: &Sources, f: fn(&FlowTableCounters) -> u64) -> Vec<Sample> {
    s.report
        .flow_tables
        .iter()
        .map(|t| sample(vec![worker_label(t.worker)], f(t)))
        .collect()
}

/// Every family of `/metrics`, in output order.
const FAMILIES: &[Family] = &[
    Family {
        name: "dpgw_backend_healthy",
        kind: Kind::Gauge,
        help: "1 unless the backend's health checks found it unhealthy (unknown counts as healthy), per checked backend.",
        optional: false,
        samples: |s| {
            s.report
                .health
                .backends
                .iter()
                .map(|h| {
                    sample(
                        vec![("service", h.service.clone()), ("backend", h.ip.to_string())],
                        u64::from(h.health != ctl::Health::Unhealthy),
                    )
                })
                .collect()
        },
    },
    Family {
        name: "dpgw_health_checks_total",
        kind: Kind::Counter,
        help: "Completed backend health checks by result (ok, timeout, refused, http_status, reset, bad_response).",
        optional: false,
        samples: |s| {
            let h = &s.report.health.results;
            ["ok", "timeout", "refused", "http_status", "reset", "bad_response"]
                .iter()
                .map(|r| {
                    sample(
                        vec![("result", r.to_string())],
                        h.get(*r).copied().unwrap_or(0),
                    )
                })
                .collect()
        },
    },
    Family {
        name: "dpgw_health_transitions_total",
        kind: Kind::Counter,
        help: "Changes of a backend's health state.",
        optional: false,
        samples: |s| vec![sample(vec![], s.report.health.transitions)],
    },
    Family {
        name: "dpgw_service_healthy",
        kind: Kind::Gauge,
        help: "0 for a checked service whose every backend is unhealthy (new flows dropped as no_backend), else 1.",
        optional: false,
        samples: |s| {
            let bad = &s.report.health.unhealthy_services;
            let mut names: Vec<&String> =
                s.report.health.backends.iter().map(|h| &h.service).collect();
            names.dedup();
            names
                .into_iter()
                .map(|n| sample(vec![("service", n.clone())], u64::from(!bad.contains(n))))
                .collect()
        },
    },
    Family {
        name: "dpgw_generation",
        kind: Kind::Gauge,
        help: "Generation of the published table snapshot.",
        optional: false,
        samples: |s| vec![sample(vec![], s.report.generation)],
    },
    Family {
        name: "dpgw_announce_up",
        kind: Kind::Gauge,
        help: "1 while the gateway's [announce] routes are in the kernel (the routing daemon announces them), 0 while withdrawn; the reason is in `dpgwctl gateway status`.",
        optional: true,
        samples: |s| {
            s.gateway
                .iter()
                .map(|g| sample(vec![("drained", g.drained.to_string())], u64::from(g.announced)))
                .collect()
        },
    },
    Family {
        name: "dpgw_announce_transitions_total",
        kind: Kind::Counter,
        help: "Changes of the announcement (announced <-> withdrawn) since start.",
        optional: true,
        samples: |s| s.gateway.iter().map(|g| sample(vec![], g.transitions)).collect(),
    },
    Family {
        name: "dpgw_fleet_sync_total",
        kind: Kind::Counter,
        help: "Flow-state sharing with the fleet: records sent/received/installed/used, datagrams and bytes sent, datagrams rejected by reason, records lost to a full queue.",
        optional: true,
        samples: |s| {
            let Some(f) = &s.report.fleet else {
                return Vec::new();
            };
            [
                ("sent_records", f.sent_records),
                ("sent_datagrams", f.sent_datagrams),
                ("sent_bytes", f.sent_bytes),
                ("received_datagrams", f.received_datagrams),
                ("received_records", f.received_records),
                ("installed", f.installed),
                ("evicted", f.evicted),
                ("used", f.used),
                ("rejected_unknown_peer", f.rejected_unknown_peer),
                ("rejected_malformed", f.rejected_malformed),
                ("rejected_bad_mac", f.rejected_bad_mac),
                ("rejected_replay", f.rejected_replay),
                ("queue_full", f.queue_full),
                ("send_errors", f.send_errors),
            ]
            .into_iter()
            .map(|(w, v)| sample(vec![("what", w.to_string())], v))
            .collect()
        },
    },
    Family {
        name: "dpgw_overlay_total",
        kind: Kind::Counter,
        help: "Outside -> overlay: plain IP packets encapsulated into a tenant (and of them to static entries); address -> VTEP learning: new entries, moves, evictions, new addresses not learned (rate spent, set busy).",
        optional: true,
        samples: |s| {
            let Some(o) = &s.report.overlay else {
                return Vec::new();
            };
            [
                ("encapsulated", o.encapsulated),
                ("to_static", o.to_static),
                ("learned", o.learned),
                ("moved", o.moved),
                ("evicted", o.evicted),
                ("learn_limited", o.learn_limited),
                ("learn_busy", o.learn_busy),
            ]
            .into_iter()
            .map(|(w, v)| sample(vec![("what", w.to_string())], v))
            .collect()
        },
    },
    Family {
        name: "dpgw_overlay_vtep_entries",
        kind: Kind::Gauge,
        help: "Live learned address -> VTEP entries.",
        optional: true,
        samples: |s| s.report.overlay.iter().map(|o| sample(vec![], o.entries)).collect(),
    },
    Family {
        name: "dpgw_fleet_peer_silent",
        kind: Kind::Gauge,
        help: "1 while a fleet peer has sent nothing valid for 3 s (or never).",
        optional: true,
        samples: |s| {
            s.report.fleet.iter().flat_map(|f| f.peers.iter()).map(|p| sample(vec![("peer", p.addr.clone())], u64::from(p.silent))).collect()
        },
    },
    Family {
        name: "dpgw_tables_info",
        kind: Kind::Gauge,
        help: "The published snapshot's table digest (label) and generation (value): gateways with the same digest forward alike.",
        optional: false,
        samples: |s| {
            vec![sample(
                vec![("digest", s.report.digest.clone())],
                s.report.generation,
            )]
        },
    },
    Family {
        name: "dpgw_worker_generation",
        kind: Kind::Gauge,
        help: "Snapshot generation each worker last used.",
        optional: false,
        samples: |s| per_worker(s, |w| w.generation),
    },
    Family {
        name: "dpgw_worker_running",
        kind: Kind::Gauge,
        help: "1 while the worker runs.",
        optional: false,
        samples: |s| per_worker(s, |w| u64::from(w.running)),
    },
    Family {
        name: "dpgw_rx_packets_total",
        kind: Kind::Counter,
        help: "Packets received.",
        optional: false,
        samples: |s| per_worker(s, |w| w.rx),
    },
    Family {
        name: "dpgw_tx_packets_total",
        kind: Kind::Counter,
        help: "Packets transmitted.",
        optional: false,
        samples: |s| per_worker(s, |w| w.tx),
    },
    Family {
        name: "dpgw_punted_packets_total",
        kind: Kind::Counter,
        help: "Frames for the gateway itself (ARP, ICMP echo, neighbour discovery) handed to the slow path; not drops.",
        optional: false,
        samples: |s| per_worker(s, |w| w.punted),
    },
    Family {
        name: "dpgw_rx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes received.",
        optional: false,
        samples: |s| per_worker(s, |w| w.rx_bytes),
    },
    Family {
        name: "dpgw_tx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes transmitted.",
        optional: false,
        samples: |s| per_worker(s, |w| w.tx_bytes),
    },
    Family {
        name: "dpgw_bursts_total",
        kind: Kind::Counter,
        help: "Non-empty bursts processed.",
        optional: false,
        samples: |s| per_worker(s, |w| w.bursts),
    },
    Family {
        name: "dpgw_drops_total",
        kind: Kind::Counter,
        help: "Packets dropped, by worker and reason.",
        optional: false,
        samples: |s| {
            let mut v = Vec::new();
            for (i, w) in s.workers.iter().enumerate() {
                for reason in DropReason::ALL {
                    let labels = vec![worker_label(Some(i)), ("reason", reason.name().into())];
                    v.push(sample(labels, w.drops[*reason as usize]));
                }
            }
            v
        },
    },
    Family {
        name: "dpgw_port_rx_packets_total",
        kind: Kind::Counter,
        help: "Packets the DPDK port received.",
        optional: true,
        samples: |s| per_port(s, |p| p.ipackets),
    },
    Family {
        name: "dpgw_port_tx_packets_total",
        kind: Kind::Counter,
        help: "Packets the DPDK port sent.",
        optional: true,
        samples: |s| per_port(s, |p| p.opackets),
    },
    Family {
        name: "dpgw_port_rx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes the DPDK port received.",
        optional: true,
        samples: |s| per_port(s, |p| p.ibytes),
    },
    Family {
        name: "dpgw_port_tx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes the DPDK port sent.",
        optional: true,
        samples: |s| per_port(s, |p| p.obytes),
    },
    Family {
        name: "dpgw_port_rx_missed_total",
        kind: Kind::Counter,
        help: "Packets the DPDK port dropped for want of a free RX descriptor (imissed).",
        optional: true,
        samples: |s| per_port(s, |p| p.imissed),
    },
    Family {
        name: "dpgw_port_rx_errors_total",
        kind: Kind::Counter,
        help: "Erroneous packets the DPDK port received.",
        optional: true,
        samples: |s| per_port(s, |p| p.ierrors),
    },
    Family {
        name: "dpgw_port_tx_errors_total",
        kind: Kind::Counter,
        help: "Packets the DPDK port failed to send.",
        optional: true,
        samples: |s| per_port(s, |p| p.oerrors),
    },
    Family {
        name: "dpgw_port_rx_nombuf_total",
        kind: Kind::Counter,
        help: "RX mbuf allocation failures of the DPDK port.",
        optional: true,
        samples: |s| per_port(s, |p| p.rx_nombuf),
    },
    Family {
        name: "dpgw_service_packets_total",
        kind: Kind::Counter,
        help: "Packets sent to a backend of the service.",
        optional: false,
        samples: |s| per_service(s, |x| x.packets),
    },
    Family {
        name: "dpgw_service_bytes_total",
        kind: Kind::Counter,
        help: "Bytes sent to a backend of the service.",
        optional: false,
        samples: |s| per_service(s, |x| x.bytes),
    },
    Family {
        name: "dpgw_service_new_flows_total",
        kind: Kind::Counter,
        help: "Flows created for the service.",
        optional: false,
        samples: |s| per_service(s, |x| x.new_flows),
    },
    Family {
        name: "dpgw_service_rate_limited_total",
        kind: Kind::Counter,
        help: "New flows over the service's new_flow_rate: forwarded where the hash points, not stored in the flow table.",
        optional: false,
        samples: |s| per_service(s, |x| x.rate_limited),
    },
    Family {
        name: "dpgw_backend_packets_total",
        kind: Kind::Counter,
        help: "Packets sent to the backend.",
        optional: false,
        samples: |s| per_backend(s, |b| Some(b.packets)),
    },
    Family {
        name: "dpgw_backend_bytes_total",
        kind: Kind::Counter,
        help: "Bytes sent to the backend.",
        optional: false,
        samples: |s| per_backend(s, |b| Some(b.bytes)),
    },
    Family {
        name: "dpgw_backend_new_flows_total",
        kind: Kind::Counter,
        help: "Flows pinned to the backend.",
        optional: false,
        samples: |s| per_backend(s, |b| Some(b.new_flows)),
    },
    Family {
        name: "dpgw_backend_weight",
        kind: Kind::Gauge,
        help: "Configured weight of the backend.",
        optional: false,
        // Backends no longer configured have no weight.
        samples: |s| per_backend(s, |b| b.weight.map(u64::from)),
    },
    Family {
        name: "dpgw_rule_hits_total",
        kind: Kind::Counter,
        help: "Packets matched by the ACL rule.",
        optional: false,
        samples: |s| {
            s.report
                .rules
                .iter()
                .map(|x| sample(vec![("rule", x.id.to_string())], x.hits))
                .collect()
        },
    },
    Family {
        name: "dpgw_flow_table_entries",
        kind: Kind::Gauge,
        help: "Flow-table entries in use.",
        optional: false,
        samples: |s| per_flow_table(s, |f| f.in_use),
    },
    Family {
        name: "dpgw_flow_table_capacity",
        kind: Kind::Gauge,
        help: "Flow-table capacity.",
        optional: false,
        samples: |s| per_flow_table(s, |f| f.capacity),
    },
    Family {
        name: "dpgw_flow_table_events_total",
        kind: Kind::Counter,
        help: "Flow-table lookups and removals.",
        optional: false,
        samples: |s| {
            let mut v = Vec::new();
            for f in &s.report.flow_tables {
                for (ev, n) in [
                    ("hit", f.hits),
                    ("miss", f.misses),
                    ("eviction", f.evictions),
                    ("expiration", f.expirations),
                    ("eviction_probationary", f.evicted_probationary),
                    ("eviction_protected", f.evicted_protected),
                    ("promotion", f.promoted),
                    ("demotion", f.demoted),
                    ("fin", f.closed),
                    ("rst", f.reset),
                    ("rehome", f.rehomed),
                    ("rate_limited", f.rate_limited),
                ] {
                    v.push(sample(vec![worker_label(f.worker), ("event", ev.into())], n));
                }
            }
            v
        },
    },
    Family {
        name: "dpgw_fragments_total",
        kind: Kind::Counter,
        help: "Fragments of VIP traffic per worker: first fragments that made an association (first), later fragments sent with their datagram's ports (associated; released: of those, after being held), later fragments held for their first (held), associations that replaced a live one (table_full). Drops are dpgw_drops_total reasons frag_unmatched and frag_hold_full.",
        optional: false,
        samples: |s| {
            let mut v = Vec::new();
            for (w, t) in s.tel.iter().enumerate() {
                for (ev, n) in [
                    ("first", t.frag.first),
                    ("associated", t.frag.associated),
                    ("held", t.frag.held),
                    ("released", t.frag.released),
                    ("table_full", t.frag.table_full),
                ] {
                    v.push(sample(vec![worker_label(Some(w)), ("event", ev.into())], n));
                }
            }
            v
        },
    },
    Family {
        name: "dpgw_icmp_errors_forwarded_total",
        kind: Kind::Counter,
        help: "ICMP errors to a VIP (fragmentation needed / packet too big, unreachable, time exceeded) sent on to the backend that owns the flow they quote, per worker.",
        optional: false,
        samples: |s| {
            (s.tel.iter().enumerate())
                .map(|(w, t)| sample(vec![worker_label(Some(w))], t.icmp_errors_forwarded))
                .collect()
        },
    },
    Family {
        name: "dpgw_icmp_too_big_sent_total",
        kind: Kind::Counter,
        help: "ICMP fragmentation-needed / ICMPv6 packet-too-big replies the gateway sent, per worker.",
        optional: false,
        samples: |s| {
            (s.tel.iter().enumerate())
                .map(|(w, t)| sample(vec![worker_label(Some(w))], t.icmp_too_big))
                .collect()
        },
    },
    Family {
        name: "dpgw_conntrack_total",
        kind: Kind::Counter,
        help: "Connection tracking of stateful ACL rules per VNI (vni=\"other\": VNIs past a worker's 64): connections created, packets of known connections (hit; remote_hit: found in another worker's table), ICMP errors quoting one (related), new connections dropped for a full table (ct_full), packets of no connection denied by the rules (denied_new).",
        optional: true,
        samples: |s| {
            let mut v = Vec::new();
            for c in &s.report.conntrack {
                let vni = if c.vni == u32::MAX {
                    "other".to_string()
                } else {
                    c.vni.to_string()
                };
                for (event, n) in [
                    ("created", c.created),
                    ("hit", c.hits),
                    ("remote_hit", c.remote_hits),
                    ("related", c.related),
                    ("ct_full", c.ct_full),
                    ("denied_new", c.denied_new),
                ] {
                    v.push(sample(vec![("vni", vni.clone()), ("event", event.into())], n));
                }
            }
            v
        },
    },
    Family {
        name: "dpgw_conntrack_connections",
        kind: Kind::Gauge,
        help: "Live tracked connections, all workers.",
        optional: false,
        samples: |s| vec![sample(vec![], s.report.conntrack_live)],
    },
    Family {
        name: "dpgw_acl_cache_lookups_total",
        kind: Kind::Counter,
        help: "ACL result cache per worker: keys answered from the cache (hit), by the classifier after a lookup (miss), or by the classifier while the cache is bypassed for a low hit ratio (bypass).",
        optional: false,
        samples: |s| {
            let mut v = Vec::new();
            for (w, t) in s.tel.iter().enumerate() {
                for (res, n) in [
                    ("hit", t.acl_cache.hits),
                    ("miss", t.acl_cache.misses),
                    ("bypass", t.acl_cache.bypassed),
                ] {
                    v.push(sample(vec![worker_label(Some(w)), ("result", res.into())], n));
                }
            }
            v
        },
    },
    Family {
        name: "dpgw_burst_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to receive and process one burst (the worker loop turn that handled it), all workers (bounds: powers of two of TSC cycles at the measured TSC rate; _sum estimated from bucket midpoints).",
        optional: true,
        samples: burst_duration,
    },
];

/// Burst processing time in seconds. Workers count bursts in power-of-two
/// buckets of TSC cycles ([`BurstHistogram`]); each bound is converted to
/// seconds with the TSC rate this thread measured (4 significant digits, so
/// the `le` labels stay the same from one scrape, and mostly one run, to the
/// next). Bursts are not timed exactly, so `_sum` is estimated: a bucket's
/// bursts count at its midpoint (3/4 of its upper bound), the open top
/// bucket's at its lower bound.
fn burst_duration(s: &Sources) -> Vec<Sample> {
    if s.tsc_hz <= 0.0 {
        return Vec::new();
    }
    let mut buckets = [0u64; BurstHistogram::BUCKETS];
    for t in s.tel {
        for (a, c) in buckets.iter_mut().zip(t.burst_cycle_buckets.iter()) {
            *a += c;
        }
    }
    let bucket = |le: String, n: u64| Sample {
        suffix: "_bucket",
        labels: vec![("le", le)],
        value: Value::Int(n),
    };
    let mut v = Vec::with_capacity(BurstHistogram::BUCKETS + 2);
    let mut cum = 0u64;
    let mut sum_cycles = 0.0f64;
    for (i, c) in buckets.iter().enumerate() {
        cum += c;
        match BurstHistogram::upper_bound(i) {
            Some(up) => {
                sum_cycles += *c as f64 * up as f64 * if i == 0 { 0.0 } else { 0.75 };
                v.push(bucket(format!("{:.3e}", up as f64 / s.tsc_hz), cum));
            }
            None => {
                let low = BurstHistogram::upper_bound(i - 1).unwrap_or(0);
                sum_cycles += *c as f64 * low as f64;
            }
        }
    }
    v.push(bucket("+Inf".into(), cum));
    v.push(Sample {
        suffix: "_sum",
        labels: vec![],
        value: Value::Float(sum_cycles / s.tsc_hz),
    });
    v.push(Sample {
        suffix: "_count",
        labels: vec![],
        value: Value::Int(cum),
    });
    v
}

/// The Prometheus text exposition (format 0.0.4) of [`FAMILIES`].
pub fn prometheus(shared: &Shared, r: &StatsReport, tel: &[Telemetry], tsc_hz: f64) -> String {
    let src = Sources {
        report: r,
        workers: shared.published.iter().map(|p| p.snapshot()).collect(),
        tel,
        tsc_hz,
        gateway: shared.announce.get().map(|a| a.status()),
    };
    let mut o = String::with_capacity(8192);
    for f in FAMILIES {
        let samples = (f.samples)(&src);
        if f.optional && samples.is_empty() {
            continue;
        }
        let _ = writeln!(o, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(o, "# TYPE {} {}", f.name, f.kind.name());
        for s in samples {
            o.push_str(f.name);
            o.push_str(s.suffix);
            for (i, (k, v)) in s.labels.iter().enumerate() {
                o.push(if i == 0 { '{' } else { ',' });
                let _ = write!(o, "{k}=\"{}\"", esc(v));
            }
            if !s.labels.is_empty() {
                o.push('}');
            }
            let _ = match s.value {
                Value::Int(v) => writeln!(o, " {v}"),
                Value::Float(v) => writeln!(o, " {v:e}"),
            };
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tables::Tables;

    fn fixture() -> (std::sync::Arc<Shared>, StatsReport, Vec<Telemetry>) {
        let cfg = Config::parse(
            "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nunderlay_ips = [\"10.0.0.1\"]\n",
        )
        .unwrap();
        let shared = Shared::new(Tables::build(&cfg, 7).unwrap(), 2);
        let mut tel = vec![Telemetry::default(), Telemetry::default()];
        for (w, t) in tel.iter_mut().enumerate() {
            let w = w as u64;
            let mut s = WorkerStats {
                rx: 100 + w,
                tx: 90 + w,
                rx_bytes: 10_000 + w,
                tx_bytes: 9_000 + w,
                bursts: 5 + w,
                ..Default::default()
            };
            s.drops[DropReason::AclDeny as usize] = 7 + w;
            s.drops[DropReason::Truncated as usize] = 3;
            shared.published[w as usize].publish(&s);
            t.rule_hits.insert(10, 4 + w);
            let web = TrafficCounters {
                packets: 50 + w,
                bytes: 5000,
                new_flows: 2,
                rate_limited: 0,
            };
            t.services.insert("web".into(), web);
            t.services.insert(
                "dns \"q\"".into(),
                TrafficCounters {
                    packets: 1,
                    bytes: 2,
                    new_flows: 3,
                    rate_limited: 0,
                },
            );
            t.backends
                .insert(("web".into(), "192.168.1.1".parse().unwrap()), web);
            t.icmp_errors_forwarded = 5 + w;
            t.icmp_too_big = 1;
            t.flows_in_use = 12 + w;
            t.flow_capacity = 1024;
            t.flow_counters = crate::stats::FlowCounters {
                hits: 1 + w,
                misses: 2,
                evictions: 3,
                expirations: 4,
                ..Default::default()
            };
            t.acl_cache = crate::stats::AclCacheCounters {
                hits: 20 + w,
                misses: 30,
                bypassed: 40,
            };
            t.burst_cycle_buckets[0] = 1;
            t.burst_cycle_buckets[10] = 3 + w;
            t.burst_cycle_buckets[12] = 1;
            t.burst_cycle_buckets[31] = 1;
        }
        let mut r = StatsReport::default();
        for i in 0..2 {
            let mut w = worker_counters(Some(i), &shared.published[i].snapshot());
            w.running = i == 0;
            w.generation = 7;
            r.workers.push(w);
        }
        r.generation = 7;
        r.conntrack = vec![ctl::ConnCounters {
            vni: 100,
            created: 3,
            hits: 9,
            remote_hits: 4,
            related: 1,
            ct_full: 2,
            denied_new: 5,
        }];
        r.conntrack_live = 3;
        r.services = vec![
            ServiceCounters {
                name: "web".into(),
                configured: true,
                packets: 101,
                bytes: 10_000,
                new_flows: 4,
                rate_limited: 17,
            },
            ServiceCounters {
                name: "dns \"q\"".into(),
                configured: false,
                packets: 2,
                bytes: 4,
                new_flows: 6,
                rate_limited: 0,
            },
        ];
        r.backends = vec![
            BackendCounters {
                service: "web".into(),
                ip: "192.168.1.1".parse().unwrap(),
                state: None,
                weight: Some(3),
                packets: 101,
                bytes: 10_000,
                new_flows: 4,
            },
            BackendCounters {
                service: "web".into(),
                ip: "fd00::2".parse().unwrap(),
                state: None,
                weight: None,
                packets: 0,
                bytes: 0,
                new_flows: 0,
            },
        ];
        r.rules = vec![RuleCounters { id: 10, hits: 9 }];
        r.health = ctl::HealthReport {
            backends: vec![ctl::HealthRow {
                service: "web".into(),
                ip: "192.168.1.1".parse().unwrap(),
                health: ctl::Health::Unhealthy,
                last: Some("http 503".into()),
                latency_us: None,
                since_ms: 10,
                checks: 4,
            }],
            results: [("ok".to_string(), 3), ("http_status".to_string(), 4)].into(),
            transitions: 2,
            unhealthy_services: vec!["web".into()],
        };
        r.flow_tables = tel
            .iter()
            .enumerate()
            .map(|(i, t)| flow_counters(Some(i), t))
            .collect();
        r.ports = vec![PortCounters {
            port: 0,
            name: "net_null0".into(),
            ipackets: 1,
            opackets: 2,
            ibytes: 3,
            obytes: 4,
            imissed: 5,
            ierrors: 6,
            oerrors: 7,
            rx_nombuf: 8,
        }];
        (shared, r, tel)
    }

    /// Reads an exposition the way a scraper does and checks its shape:
    /// each family declared once (HELP then TYPE) before its samples, every
    /// sample named after the family it follows (plus `_bucket`/`_sum`/
    /// `_count` for a histogram), label values quoted, values numbers.
    /// Returns family → (sample name with labels, value).
    fn parse(text: &str) -> BTreeMap<String, Vec<(String, f64)>> {
        let mut fams: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        let mut cur: Option<(String, String)> = None;
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split_once(' ').unwrap().0.to_string();
                let ty = lines.next().unwrap();
                let (tname, kind) = ty.strip_prefix("# TYPE ").unwrap().split_once(' ').unwrap();
                assert_eq!(tname, name, "{ty}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{ty}");
                assert!(
                    fams.insert(name.clone(), Vec::new()).is_none(),
                    "{name} twice"
                );
                cur = Some((name, kind.to_string()));
                continue;
            }
            let (fam, kind) = cur.as_ref().expect("sample before any family");
            let (series, value) = l.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{l}"));
            let name = series.split('{').next().unwrap();
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{fam}{s}")),
                _ => name == fam,
            };
            assert!(ok, "{l} after family {fam}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels.strip_prefix('{').unwrap().strip_suffix('}').unwrap();
                    assert!(inner.ends_with('"') && inner.contains("=\""), "{l}");
                }
            }
            fams.get_mut(fam).unwrap().push((series.to_string(), value));
        }
        fams
    }

    fn value(fams: &BTreeMap<String, Vec<(String, f64)>>, fam: &str, series: &str) -> Option<f64> {
        fams.get(fam)?
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }

    #[test]
    fn test_prometheus_families_labels_and_values() {
        let (shared, r, tel) = fixture();
        let f = parse(&prometheus(&shared, &r, &tel, 2.0e9));
        // Optional families without samples are left out (the fixture has
        // no [announce] section).
        let names: Vec<&str> = FAMILIES
            .iter()
            .filter(|x| {
                !x.name.starts_with("dpgw_announce_")
                    && !x.name.starts_with("dpgw_fleet_")
                    && !x.name.starts_with("dpgw_overlay_")
            })
            .map(|x| x.name)
            .collect();
        assert_eq!(f.keys().count(), names.len());
        for n in names {
            assert!(f.contains_key(n), "{n} missing");
        }
        for (fam, series, v) in [
            ("dpgw_generation", "dpgw_generation", 7.0),
            (
                "dpgw_conntrack_total",
                "dpgw_conntrack_total{vni=\"100\",event=\"remote_hit\"}",
                4.0,
            ),
            (
                "dpgw_conntrack_connections",
                "dpgw_conntrack_connections",
                3.0,
            ),
            (
                "dpgw_backend_healthy",
                "dpgw_backend_healthy{service=\"web\",backend=\"192.168.1.1\"}",
                0.0,
            ),
            (
                "dpgw_health_checks_total",
                "dpgw_health_checks_total{result=\"http_status\"}",
                4.0,
            ),
            (
                "dpgw_health_checks_total",
                "dpgw_health_checks_total{result=\"timeout\"}",
                0.0,
            ),
            (
                "dpgw_health_transitions_total",
                "dpgw_health_transitions_total",
                2.0,
            ),
            (
                "dpgw_service_healthy",
                "dpgw_service_healthy{service=\"web\"}",
                0.0,
            ),
            (
                "dpgw_worker_running",
                "dpgw_worker_running{worker=\"1\"}",
                0.0,
            ),
            (
                "dpgw_rx_packets_total",
                "dpgw_rx_packets_total{worker=\"1\"}",
                101.0,
            ),
            ("dpgw_bursts_total", "dpgw_bursts_total{worker=\"0\"}", 5.0),
            (
                "dpgw_drops_total",
                "dpgw_drops_total{worker=\"1\",reason=\"acl_deny\"}",
                8.0,
            ),
            (
                "dpgw_drops_total",
                "dpgw_drops_total{worker=\"0\",reason=\"tx_full\"}",
                0.0,
            ),
            (
                "dpgw_port_rx_nombuf_total",
                "dpgw_port_rx_nombuf_total{port=\"0\",device=\"net_null0\"}",
                8.0,
            ),
            (
                "dpgw_service_new_flows_total",
                "dpgw_service_new_flows_total{service=\"dns \\\"q\\\"\"}",
                6.0,
            ),
            (
                "dpgw_service_rate_limited_total",
                "dpgw_service_rate_limited_total{service=\"web\"}",
                17.0,
            ),
            (
                "dpgw_icmp_errors_forwarded_total",
                "dpgw_icmp_errors_forwarded_total{worker=\"1\"}",
                6.0,
            ),
            (
                "dpgw_icmp_too_big_sent_total",
                "dpgw_icmp_too_big_sent_total{worker=\"0\"}",
                1.0,
            ),
            (
                "dpgw_backend_bytes_total",
                "dpgw_backend_bytes_total{service=\"web\",backend=\"192.168.1.1\"}",
                10_000.0,
            ),
            (
                "dpgw_backend_weight",
                "dpgw_backend_weight{service=\"web\",backend=\"192.168.1.1\"}",
                3.0,
            ),
            (
                "dpgw_rule_hits_total",
                "dpgw_rule_hits_total{rule=\"10\"}",
                9.0,
            ),
            (
                "dpgw_flow_table_entries",
                "dpgw_flow_table_entries{worker=\"1\"}",
                13.0,
            ),
            (
                "dpgw_flow_table_events_total",
                "dpgw_flow_table_events_total{worker=\"1\",event=\"hit\"}",
                2.0,
            ),
            (
                "dpgw_flow_table_events_total",
                "dpgw_flow_table_events_total{worker=\"0\",event=\"expiration\"}",
                4.0,
            ),
            (
                "dpgw_acl_cache_lookups_total",
                "dpgw_acl_cache_lookups_total{worker=\"1\",result=\"bypass\"}",
                40.0,
            ),
        ] {
            assert_eq!(value(&f, fam, series), Some(v), "{series}");
        }
        assert_eq!(f["dpgw_drops_total"].len(), 2 * DropReason::COUNT);
        // A backend that is no longer configured has counters but no weight.
        assert_eq!(f["dpgw_backend_packets_total"].len(), 2);
        assert_eq!(f["dpgw_backend_weight"].len(), 1);
    }

    #[test]
    fn test_prometheus_leaves_out_what_it_does_not_have() {
        let (shared, mut r, tel) = fixture();
        r.ports.clear();
        r.rules.clear();
        // The TSC rate is not known yet.
        let f = parse(&prometheus(&shared, &r, &tel, 0.0));
        assert!(!f.keys().any(|k| k.starts_with("dpgw_port_")));
        assert!(!f.contains_key("dpgw_burst_duration_seconds"));
        // A family that can have samples but has none now is still declared.
        assert_eq!(f["dpgw_rule_hits_total"], vec![]);
    }

    #[test]
    fn test_burst_histogram_in_seconds() {
        let (shared, r, tel) = fixture();
        // Two workers, each: one burst of 0 cycles, 3 + w of 512..1023, one
        // of 2048..4095, one of 2^30 or more.
        let f = parse(&prometheus(&shared, &r, &tel, 2.0e9));
        let h = &f["dpgw_burst_duration_seconds"];
        let buckets: Vec<(&str, f64)> = h
            .iter()
            .filter_map(|(s, v)| {
                let le = s.strip_prefix("dpgw_burst_duration_seconds_bucket{le=\"")?;
                Some((le.strip_suffix("\"}").unwrap(), *v))
            })
            .collect();
        // One bucket per finite power of two, then +Inf.
        assert_eq!(buckets.len(), BurstHistogram::BUCKETS);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let le = |b: &str| buckets.iter().find(|x| x.0 == b).map(|x| x.1);
        // 2^0 cycles at 2 GHz, 2^10, 2^11, 2^12, 2^30 (the last finite bound).
        assert_eq!(buckets[0], ("5.000e-10", 2.0));
        assert_eq!(le("5.120e-7"), Some(9.0));
        assert_eq!(le("1.024e-6"), Some(9.0));
        assert_eq!(le("2.048e-6"), Some(11.0));
        assert_eq!(buckets[30], ("5.369e-1", 11.0));
        assert_eq!(buckets[31], ("+Inf", 13.0));
        let count = value(
            &f,
            "dpgw_burst_duration_seconds",
            "dpgw_burst_duration_seconds_count",
        );
        assert_eq!(count, Some(13.0));
        let sum = value(
            &f,
            "dpgw_burst_duration_seconds",
            "dpgw_burst_duration_seconds_sum",
        );
        let expect = (7.0 * 768.0 + 2.0 * 3072.0 + 2.0 * (1u64 << 30) as f64) / 2.0e9;
        assert!((sum.unwrap() - expect).abs() < 1e-12, "{sum:?} vs {expect}");
    }
}
