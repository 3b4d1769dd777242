//! The control side of `trace`, `capture`, `flows list` and `explain`: arming
//! and draining watches, asking the workers for their flow entries, walking
//! a packet through the live snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctl::{CaptureSpec, Data, ErrorCode};

use crate::engine::Shared;
use crate::filter::Filter;
use crate::observe::{self, FlowScan, Mode, Point, Record, Watch};

type Answer = Result<Data, (ErrorCode, String)>;

/// A watch nobody read for this long is stopped (its client went away).
pub const UNREAD_STOP: Duration = Duration::from_secs(10);
/// The most a watch may record.
pub const MAX_COUNT: u64 = 10_000_000;
/// Largest snap length.
pub const MAX_SNAPLEN: u32 = 65535;
/// Bytes of packet data handed out per `watch_read` (the rest waits).
const READ_BYTES: usize = 1 << 20;
/// The most entries one `flows list` returns.
pub const MAX_FLOWS_LISTED: usize = 4_000_000;
/// How long `flows list` waits for the workers.
const FLOWS_WAIT: Duration = Duration::from_secs(5);

/// The watch the control server runs (at most one).
#[derive(Default)]
pub struct Watches {
    current: Option<(Arc<Watch>, Instant)>,
    next_id: u64,
}

impl Watches {
    pub fn start(
        &mut self,
        shared: &Shared,
        filter: &str,
        count: u64,
        capture: Option<CaptureSpec>,
    ) -> Answer {
        self.tick(shared);
        if let Some((w, _)) = &self.current {
            return Err((
                ErrorCode::Refused,
                format!(
                    "a {} (id {}) is already running; one trace or capture at a time (watch_stop it first)",
                    if matches!(w.mode, Mode::Trace) { "trace" } else { "capture" },
                    w.id
                ),
            ));
        }
        let f = Filter::parse(filter).map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
        if count == 0 || count > MAX_COUNT {
            return Err((
                ErrorCode::Invalid,
                format!("count: {count} is out of range (1..={MAX_COUNT})"),
            ));
        }
        let mode = match capture {
            None => Mode::Trace,
            Some(c) => {
                if c.snaplen == 0 || c.snaplen > MAX_SNAPLEN {
                    return Err((
                        ErrorCode::Invalid,
                        format!("snaplen: {} is out of range (1..={MAX_SNAPLEN})", c.snaplen),
                    ));
                }
                Mode::Capture {
                    at: c.at,
                    snaplen: c.snaplen as usize,
                }
            }
        };
        self.next_id += 1;
        let workers = shared.published.len();
        let w = Arc::new(Watch::new(self.next_id, f, mode, count, workers));
        shared.armed.arm(w.clone());
        self.current = Some((w, Instant::now()));
        Ok(Data::WatchStarted {
            id: self.next_id,
            workers,
        })
    }

    /// Hands out what the watch recorded; with `stop`, ends it first.
    pub fn read(&mut self, shared: &Shared, id: u64, stop: bool) -> Answer {
        let Some((w, last)) = self.current.as_mut() else {
            return Err((
                ErrorCode::NotFound,
                format!("no watch with id {id} is running"),
            ));
        };
        if w.id != id {
            return Err((
                ErrorCode::NotFound,
                format!(
                    "no watch with id {id} is running (the running one is {})",
                    w.id
                ),
            ));
        }
        *last = Instant::now();
        if stop || w.exhausted() {
            // Workers that saw the watch keep their Arc for at most a burst.
            shared.armed.disarm();
        }
        let w = w.clone();
        // Workers that picked the watch up hold a clone until their burst
        // ends: only when none does can no record still arrive.
        let quiet = Arc::strong_count(&w) == 2;
        let mut records = Vec::new();
        let mut bytes = 0;
        'drain: for ring in &w.rings {
            while bytes < READ_BYTES {
                let Some(r) = ring.pop() else { continue 'drain };
                bytes += r.data.len() * 2 + 64 * r.steps.len() + 64;
                records.push(wire(r));
            }
            break;
        }
        records.sort_by_key(|r| r.ts_ns);
        let ended = stop || w.exhausted();
        let empty = w.rings.iter().all(|r| r.is_empty());
        let done = ended && quiet && empty;
        if done {
            self.current = None;
        }
        Ok(Data::Watch(ctl::WatchReport {
            records,
            matched: w.matched.load(Ordering::Relaxed),
            lost: w.lost(),
            done,
        }))
    }

    /// Stops a watch nobody reads.
    pub fn tick(&mut self, shared: &Shared) {
        if let Some((_, last)) = &self.current {
            if last.elapsed() > UNREAD_STOP {
                shared.armed.disarm();
                self.current = None;
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn wire(r: Record) -> ctl::WatchRecord {
    let (point, reason) = match r.point {
        Point::Rx => ("rx", None),
        Point::Tx => ("tx", None),
        Point::Drop(d) => ("drop", Some(d.name().to_string())),
        Point::Punt => ("punt", None),
        Point::Trace => ("trace", None),
    };
    ctl::WatchRecord {
        worker: r.worker,
        ts_ns: r.ts_ns,
        point: point.to_string(),
        reason,
        len: r.orig_len,
        data: hex(&r.data),
        steps: r.steps,
        verdict: r.verdict,
        service: r.service,
        backend: r.backend,
    }
}

/// Asks every running worker for its flow entries matching `scan` and waits
/// (bounded) for their answers.
fn query_flows(shared: &Shared, scan: FlowScan) -> (Vec<ctl::FlowEntry>, bool, usize) {
    let mut asked = Vec::new();
    for (i, q) in shared.flow_query.iter().enumerate() {
        if !shared.running[i].load(Ordering::Acquire) {
            continue;
        }
        let mut g = q.scan.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(FlowScan {
            service: scan.service.clone(),
            backend: scan.backend,
            vni: scan.vni,
            exact: scan.exact,
            limit: scan.limit,
            ..FlowScan::default()
        });
        drop(g);
        q.pending.store(true, Ordering::Release);
        asked.push(i);
    }
    let t0 = Instant::now();
    let mut answered = 0;
    let mut entries = Vec::new();
    let mut truncated = false;
    for i in asked {
        let q = &shared.flow_query[i];
        while q.pending.load(Ordering::Acquire)
            && t0.elapsed() < FLOWS_WAIT
            && shared.running[i].load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        q.pending.store(false, Ordering::Release);
        let mut g = q.scan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.take() {
            if s.done {
                answered += 1;
            }
            truncated |= s.truncated || !s.done;
            entries.extend(s.out);
        }
    }
    if entries.len() > scan.limit {
        entries.truncate(scan.limit);
        truncated = true;
    }
    (entries, truncated, answered)
}

pub fn flows_list(
    shared: &Shared,
    service: Option<String>,
    backend: Option<std::net::IpAddr>,
    vni: Option<u32>,
    limit: Option<usize>,
) -> Answer {
    if let Some(s) = &service {
        let t = shared.tables.load();
        if t.lb.service_by_name(s).is_none() {
            return Err((ErrorCode::NotFound, format!("service {s:?} does not exist")));
        }
    }
    let limit = limit.unwrap_or(1000).min(MAX_FLOWS_LISTED);
    let t0 = Instant::now();
    let (entries, truncated, workers) = query_flows(
        shared,
        FlowScan {
            service,
            backend,
            vni,
            limit,
            ..FlowScan::default()
        },
    );
    Ok(Data::FlowList(ctl::FlowListReport {
        entries,
        truncated,
        workers,
        collect_ms: t0.elapsed().as_secs_f64() * 1e3,
    }))
}

fn addr(a: u128, v6: bool) -> std::net::IpAddr {
    if v6 {
        std::net::Ipv6Addr::from(a).into()
    } else {
        std::net::Ipv4Addr::from(a as u32).into()
    }
}

/// `conn list`: the workers' connection tables, read without stopping them.
pub fn conn_list(shared: &Shared, vni: Option<u32>, limit: Option<usize>) -> Answer {
    let limit = limit.unwrap_or(1000);
    let ct = &shared.conntrack;
    let to = shared.tables.load().ct_timeouts;
    let mut out = ctl::ConnListReport {
        live: vec![0; ct.tables.workers()],
        capacity: ct.tables.capacity() as u64,
        ..Default::default()
    };
    ct.tables.for_each(ct.now_ms(), &to, |c| {
        if vni.is_some_and(|v| v != c.key.vni) {
            return;
        }
        out.live[c.worker] += 1;
        if out.entries.len() >= limit {
            out.truncated = true;
            return;
        }
        let ((o, op), (r, rp)) = c.endpoints();
        out.entries.push(ctl::ConnEntry {
            worker: c.worker,
            vni: c.key.vni,
            proto: acl::proto_name(c.key.proto).to_string(),
            orig: addr(o, c.key.v6),
            orig_port: op,
            resp: addr(r, c.key.v6),
            resp_port: rp,
            state: c.state.name().to_string(),
            age_ms: c.age_ms,
            idle_ms: c.idle_ms,
        });
    });
    out.entries.sort_by_key(|e| (e.vni, e.orig, e.orig_port));
    Ok(Data::ConnList(out))
}

/// `conn flush`: ends the connections (all, or one VNI's) without writing
/// the workers' tables (see `acl::conntrack`).
pub fn conn_flush(shared: &Shared, vni: Option<u32>) -> Answer {
    let ct = &shared.conntrack;
    let to = shared.tables.load().ct_timeouts;
    let mut flushed = 0u64;
    ct.tables.for_each(ct.now_ms(), &to, |c| {
        flushed += u64::from(vni.is_none_or(|v| v == c.key.vni));
    });
    ct.tables
        .flush(vni)
        .map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
    Ok(Data::ConnFlushed { flushed })
}

pub fn explain(shared: &Shared, p: &ctl::ExplainPacket) -> Answer {
    let t = shared.tables.load_full();
    let frame = observe::explain_frame(&t, p).map_err(|e| (ErrorCode::Invalid, e))?;
    // A pipeline of its own, with a small flow table: it shows what a new
    // flow would get; the workers' tables are asked below for an existing one.
    let mut pipeline = crate::pipeline::Pipeline::default();
    // The workers' connections are looked at, never changed.
    pipeline.ct.attach_read_only(shared.conntrack.clone());
    pipeline.lb.flows = Some(lb::FlowTable::new(lb::FlowTableConfig {
        capacity: 64,
        ..t.flow_cfg
    }));
    let nh = shared.learned_next_hop.load(Ordering::Relaxed);
    let mut out = ctl::Explanation {
        generation: t.generation,
        ..Default::default()
    };
    let mut key = None;
    crate::pipeline::explain_frames(
        &mut pipeline,
        &t,
        nh,
        &[&frame],
        observe::now_ns(),
        |_, r| {
            out.steps = r.steps.clone();
            out.verdict = r.verdict.clone();
            out.service = r.service.clone();
            out.backend = r.backend;
        },
    );
    if let Ok(d) = vxlan::decap(&frame, &t.decap) {
        if let Ok(i) = vxlan::parse_inner(&frame[d.inner_offset..], d.vni) {
            key = Some(i.key);
        }
    }
    if let (Some(k), Some(_)) = (key, &out.service) {
        let (entries, _, _) = query_flows(
            shared,
            FlowScan {
                exact: Some(k),
                limit: 64,
                ..FlowScan::default()
            },
        );
        out.flows = entries;
    }
    Ok(Data::Explanation(out))
}
