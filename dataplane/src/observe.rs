//! Watching the workers: `dpgwctl trace` and `dpgwctl capture` arm a
//! [`Watch`] that the workers see once per burst; `explain` runs one packet
//! through the same stages with the same recorder.
//!
//! Cost: while nothing is armed a worker reads one atomic flag per burst (a
//! predictable branch) and runs [`Pipeline::run`](crate::pipeline::Pipeline::run)
//! as always. While armed it runs [`Pipeline::run_observed`](crate::pipeline::Pipeline::run_observed),
//! which copies each received frame (up to the snap length) before the stages
//! change it, notes what each stage decided, evaluates the filter once per
//! packet and, for the packets that match, pushes a [`Record`] into its own
//! bounded ring. The worker never waits: a full ring counts the record as
//! lost (`ring_full`), and the count stops the watch by itself once `count`
//! packets matched. Records allocate (only while armed, only for matching
//! packets, at most `count` of them).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_queue::ArrayQueue;

use crate::burst::Verdict;
use crate::filter::{Facts, Filter};
use crate::stats::DropReason;
use crate::tables::Tables;

/// Records a worker's ring holds before it counts them as lost.
pub const RING: usize = 4096;

/// Where a capture takes its packets.
pub use ctl::CapturePoint as Where;

/// What an armed watch records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One record per matching packet with each stage's decision.
    Trace,
    /// The bytes of matching packets at `at`, cut at `snaplen`.
    Capture { at: Where, snaplen: usize },
}

/// An armed trace or capture, shared by the workers and the control thread.
pub struct Watch {
    pub id: u64,
    pub filter: Filter,
    pub mode: Mode,
    /// Matches still to record; workers stop recording at 0.
    remaining: AtomicI64,
    /// Packets that matched (and were recorded or lost), all workers.
    pub matched: AtomicU64,
    pub rings: Vec<ArrayQueue<Record>>,
    /// Records lost because a worker's ring was full, per worker.
    pub ring_full: Vec<AtomicU64>,
}

impl Watch {
    pub fn new(id: u64, filter: Filter, mode: Mode, count: u64, workers: usize) -> Watch {
        Watch {
            id,
            filter,
            mode,
            remaining: AtomicI64::new(count.min(i64::MAX as u64) as i64),
            matched: AtomicU64::new(0),
            rings: (0..workers).map(|_| ArrayQueue::new(RING)).collect(),
            ring_full: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// True once `count` packets matched.
    pub fn exhausted(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) <= 0
    }

    /// Takes one match from the budget; false when it is spent.
    fn take(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::Relaxed) > 0
    }

    pub fn lost(&self) -> u64 {
        self.ring_full
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Where a record was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Rx,
    Tx,
    Drop(DropReason),
    Punt,
    /// A trace record (no bytes).
    Trace,
}

/// One recorded packet.
#[derive(Clone, Debug)]
pub struct Record {
    pub worker: usize,
    /// Nanoseconds since the Unix epoch (taken once per burst).
    pub ts_ns: u64,
    pub point: Point,
    /// Length of the frame at that point.
    pub orig_len: u32,
    /// The frame's bytes, cut at the snap length (captures only).
    pub data: Vec<u8>,
    /// A trace: one line per stage, then the verdict.
    pub steps: Vec<String>,
    /// The final verdict's name (`tx`, `punt`, or the drop reason).
    pub verdict: String,
    /// Service and backend, when the load balancer chose one.
    pub service: Option<String>,
    pub backend: Option<IpAddr>,
}

/// What each stage decided for the packets of one burst, filled by
/// `Pipeline::run_observed` and read by [`Recorder::finish`].
pub struct Observed {
    /// Each packet as received (cut at `snap`), and its length.
    pub rx: Vec<Vec<u8>>,
    pub rx_len: Vec<u32>,
    pub snap: usize,
    /// Verdict after decap and after the inner parse.
    pub after_decap: Vec<Verdict>,
    pub after_inner: Vec<Verdict>,
    pub after_acl: Vec<Verdict>,
    /// Matched rule index (`acl::NO_MATCH` for none), if the ACL ran on it.
    pub acl_rule: Vec<Option<u32>>,
    /// The load balancer's answer, if it ran on the packet.
    pub lb: Vec<Option<lb::LbVerdict>>,
    /// What the overlay stage did (sent into a tenant, learned a VTEP).
    pub overlay: Vec<crate::overlay::Note>,
    /// Connection tracking: `Meta::ct` bits and the connection's state
    /// (hits), if conntrack ran on the burst.
    pub ct: Vec<Option<(u8, Option<&'static str>)>>,
}

impl Default for Observed {
    fn default() -> Self {
        let n = crate::io::MAX_BURST;
        Observed {
            rx: (0..n).map(|_| Vec::new()).collect(),
            rx_len: vec![0; n],
            snap: 65535,
            after_decap: vec![Verdict::Tx; n],
            after_inner: vec![Verdict::Tx; n],
            after_acl: vec![Verdict::Tx; n],
            acl_rule: vec![None; n],
            lb: vec![None; n],
            overlay: vec![crate::overlay::Note::None; n],
            ct: vec![None; n],
        }
    }
}

impl Observed {
    /// Forgets the previous burst and copies the received frames.
    pub fn begin<P: crate::io::Packet>(&mut self, pkts: &[P]) {
        for (i, p) in pkts.iter().enumerate() {
            let d = p.data();
            self.rx_len[i] = d.len() as u32;
            self.rx[i].clear();
            self.rx[i].extend_from_slice(&d[..d.len().min(self.snap)]);
            self.acl_rule[i] = None;
            self.lb[i] = None;
            self.overlay[i] = crate::overlay::Note::None;
            self.ct[i] = None;
        }
    }
}

/// The overlay stage's line of a walk, if it did something.
fn overlay_step(n: crate::overlay::Note) -> Option<String> {
    use crate::overlay::Note;
    let vtep = |e: &vxlan::fdb::VtepEntry| {
        if e.vtep_v6 {
            std::net::Ipv6Addr::from(e.vtep).to_string()
        } else {
            std::net::Ipv4Addr::from(e.vtep as u32).to_string()
        }
    };
    Some(match n {
        Note::None => return None,
        Note::ToVtep(e, stat) => format!(
            "overlay: destination lives behind VTEP {} (MAC {}, {} entry): encapsulated into the tenant",
            vtep(&e),
            crate::config::format_mac(&e.mac),
            if stat { "static" } else { "learned" }
        ),
        Note::NoVtep => "overlay: no VTEP known for the destination (dpgw_drops_total{reason=\"no_vtep\"})".into(),
        Note::TooBig => "overlay: too big once encapsulated: ICMP too big to the sender (or mtu_exceeded)".into(),
        Note::Learned(r) => format!(
            "overlay: source learned ({})",
            match r {
                vxlan::fdb::Learned::Known | vxlan::fdb::Learned::Refreshed => "known at this VTEP",
                vxlan::fdb::Learned::New => "new entry",
                vxlan::fdb::Learned::Evicted => "new entry, replaced the oldest of its set",
                vxlan::fdb::Learned::Moved => "moved here from another VTEP",
                vxlan::fdb::Learned::Limited => "not learned: learning rate spent",
                vxlan::fdb::Learned::Busy => "not learned this time: set busy",
            }
        ),
    })
}

/// The facts a filter sees for packet `i` of an observed burst.
pub fn facts<'a>(
    t: &'a Tables,
    o: &Observed,
    meta: &crate::burst::Meta,
    i: usize,
    v: Verdict,
    worker: usize,
) -> Facts<'a> {
    let decapped = o.after_decap[i] == Verdict::Tx;
    let vni = decapped.then_some(meta.vni);
    let key = if decapped && o.after_inner[i] == Verdict::Tx {
        Some(meta.key)
    } else if !decapped {
        // Not decapsulated: the frame's own IP packet.
        vxlan::parse_inner(&o.rx[i], 0).ok().map(|x| x.key)
    } else {
        None
    };
    let (service, backend) = match o.lb[i] {
        Some(lb::LbVerdict::Forward { svc, backend, .. }) => (
            t.lb.service(svc).map(|s| s.name.as_str()),
            t.lb.backend_ref(svc, backend).map(|b| b.ip()),
        ),
        Some(lb::LbVerdict::NoBackend(svc)) => (t.lb.service(svc).map(|s| s.name.as_str()), None),
        _ => (None, None),
    };
    Facts {
        vni,
        key,
        drop: match v {
            Verdict::Drop(r) => Some(r),
            _ => None,
        },
        service,
        backend,
        worker,
    }
}

/// The name of a verdict as `dpgwctl` prints it.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Tx => "tx",
        Verdict::Punt => "punt",
        Verdict::Drop(r) => r.name(),
        Verdict::Hold => "held",
    }
}

/// The name of an IP protocol dpgw knows by name.
fn proto_word(p: u8) -> Option<&'static str> {
    match p {
        6 => Some("tcp"),
        17 => Some("udp"),
        1 => Some("icmp"),
        58 => Some("icmp6"),
        _ => None,
    }
}

/// An address as stored in flow keys (IPv4 as `u32` in a `u128`).
fn ip_of(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(bits as u32))
    }
}

fn key_text(k: &vxlan::FlowKey) -> String {
    let proto = proto_word(k.proto).map_or_else(|| format!("proto {}", k.proto), str::to_string);
    let (s, d) = (k.src_ip(), k.dst_ip());
    let fmt = |ip: IpAddr, port: u16| match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    format!("{proto} {} -> {}", fmt(s, k.sport), fmt(d, k.dport))
}

/// One line per stage for packet `i`: what it decided and why, from the
/// snapshot `t` the burst ran under.
pub fn steps(
    t: &Tables,
    o: &Observed,
    meta: &crate::burst::Meta,
    i: usize,
    v: Verdict,
    out_frame: &[u8],
) -> Vec<String> {
    let mut s = Vec::new();
    match o.after_decap[i] {
        Verdict::Tx if meta.inbound => s.push(format!(
            "decap: plain IP from the outside to tenant VNI {} (its prefixes hold the destination)",
            meta.vni
        )),
        Verdict::Tx if meta.outer_len == 0 => s.push(format!(
            "decap: plain ICMP error to a VIP about a client of tenant VNI {} (its prefixes hold the quoted destination)",
            meta.vni
        )),
        // (Decap holds nothing.)
        Verdict::Tx | Verdict::Hold => s.push(format!(
            "decap: {} VNI {}, {} bytes of outer headers removed",
            overlay_name(t, &o.rx[i]),
            meta.vni,
            meta.outer_len
        )),
        Verdict::Punt => {
            s.push("decap: not VXLAN; a frame for the gateway itself (ARP, ND, echo): punted to the slow path".into());
            return s;
        }
        Verdict::Drop(r) => {
            let what = vxlan::parse_inner(&o.rx[i], 0)
                .map(|x| format!(" ({})", key_text(&x.key)))
                .unwrap_or_default();
            s.push(format!("decap: dropped, {}{what}", r.name()));
            return s;
        }
    }
    match o.after_inner[i] {
        Verdict::Drop(r) => {
            s.push(format!("inner: dropped, {}", r.name()));
            return s;
        }
        Verdict::Hold => {
            s.push(format!("inner: {}", key_text(&meta.key)));
            s.push(format!(
                "frag: a later fragment (id {:#x}) to a VIP before its first fragment: held until it comes (dpgw_drops_total{{reason=\"frag_unmatched\"}} if it does not)",
                meta.frag_id
            ));
            return s;
        }
        _ => s.push(format!("inner: {}", key_text(&meta.key))),
    }
    use crate::burst::ct;
    if let Some((bits, state)) = o.ct[i] {
        if bits & ct::KNOWN != 0 {
            let state = state.unwrap_or("?");
            let place = if bits & ct::REMOTE != 0 {
                ", in another worker's table"
            } else {
                ""
            };
            if bits & ct::RELATED != 0 {
                s.push(format!(
                    "conntrack: an ICMP error quoting a known connection ({state}{place}): passes without the rules"
                ));
            } else {
                let dir = if bits & ct::REPLY != 0 {
                    "reply"
                } else {
                    "original"
                };
                s.push(format!(
                    "conntrack: hit ({state}, {dir}{place}): passes without the rules"
                ));
            }
        } else {
            s.push("conntrack: no known connection".into());
        }
    }
    match (&t.acl, o.acl_rule[i]) {
        (None, _) => s.push("acl: no ACL configured, passes".into()),
        (Some(_), None) if o.ct[i].is_some_and(|c| c.0 & ct::KNOWN != 0) => {}
        (Some(_), None) => s.push("acl: not consulted".into()),
        (Some(a), Some(m)) => {
            let action = a.classifier.action(m, meta.vni);
            if m == acl::NO_MATCH {
                s.push(format!("acl: no rule matches, default {action}"));
            } else {
                let r = a.classifier.rule(m);
                let id =
                    r.id.map(|id| format!("rule {id}"))
                        .unwrap_or_else(|| format!("file rule #{m}"));
                s.push(format!("acl: {id} matches ({}), {action}", rule_text(r)));
            }
        }
    }
    if let Some((bits, _)) = o.ct[i] {
        if bits & ct::NEW != 0 {
            s.push("conntrack: stateful rule: the connection is created (its replies pass)".into());
        } else if bits & ct::FULL != 0 {
            s.push(
                "conntrack: stateful rule, but the connection table is full: dropped, ct_full"
                    .into(),
            );
        }
    }
    if o.after_acl[i] != Verdict::Tx {
        s.push(format!("verdict: {}", verdict_name(v)));
        return s;
    }
    if let Some(line) = overlay_step(o.overlay[i]) {
        s.push(line);
    }
    if meta.inbound {
        s.push(format!("verdict: {}", verdict_name(v)));
        return s;
    }
    match o.lb[i] {
        None if t.lb.is_empty() => s.push("lb: no services configured".into()),
        None => s.push("lb: not consulted".into()),
        Some(lb::LbVerdict::NotService) => s.push(format!(
            "lb: not a service VIP, non_vip = {}",
            match t.non_vip {
                crate::config::NonVip::Drop => "drop",
                crate::config::NonVip::Forward => "forward (routed to the next hop)",
            }
        )),
        Some(lb::LbVerdict::NoBackend(svc)) => s.push(format!(
            "lb: service {}: no backend can take new flows",
            t.lb.service(svc).map_or("?", |x| x.name.as_str())
        )),
        Some(lb::LbVerdict::Forward {
            svc,
            backend,
            new_flow,
        }) => {
            let name = t.lb.service(svc).map_or("?", |x| x.name.as_str());
            let b = t.lb.backends(svc).get(backend as usize);
            let how = if new_flow {
                let k = lb_key(&meta.key);
                let bucket =
                    t.lb.service(svc)
                        .map(|sv| match sv.scheduler {
                            lb::Scheduler::Maglev => {
                                format!("Maglev bucket {}", sv.bucket(lb::flow_hash(&k)))
                            }
                            lb::Scheduler::SrcIp => {
                                format!("src_ip, Maglev bucket {}", sv.bucket(lb::client_hash(&k)))
                            }
                            other => format!("scheduler {other}"),
                        })
                        .unwrap_or_default();
                format!("new flow, {bucket}")
            } else {
                "flow-table hit".to_string()
            };
            match b {
                Some(b) => s.push(format!(
                    "lb: service {name}, {how} -> backend {} (admin {}, health {}, weight {}, encap {})",
                    b.ip,
                    b.state,
                    b.health,
                    b.weight,
                    b.backend_ref().encap
                )),
                None => s.push(format!("lb: service {name}, {how} -> backend #{backend}")),
            }
        }
    }
    if v == Verdict::Tx {
        s.push(format!("out: {}", describe_frame(out_frame)));
        // The frame leaves within the MTU (its IP packet at most `mtu` bytes)
        // to the next hop's MAC: learned by ARP/ND, or the configured one.
        s.push(format!(
            "next hop: {}, MTU ok ({} <= {} bytes)",
            mac_text(out_frame),
            out_frame.len().saturating_sub(14),
            t.mtu
        ));
    }
    s.push(format!("verdict: {}", verdict_name(v)));
    s
}

/// "Geneve" when the frame's outer UDP destination port is a Geneve port,
/// else "VXLAN" (decap accepted it, so it is one of the two).
fn overlay_name(t: &Tables, frame: &[u8]) -> &'static str {
    use etherparse::{SlicedPacket, TransportSlice};
    match SlicedPacket::from_ethernet(frame)
        .ok()
        .and_then(|p| p.transport)
    {
        Some(TransportSlice::Udp(u)) if t.decap.geneve_ports.contains(&u.destination_port()) => {
            "Geneve"
        }
        _ => "VXLAN",
    }
}

fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The destination MAC of a frame.
fn mac_text(f: &[u8]) -> String {
    f.get(..6).map_or_else(|| "?".to_string(), mac_str)
}

fn lb_key(k: &vxlan::FlowKey) -> lb::FlowKey {
    lb::FlowKey {
        vni: k.vni,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        v6: k.v6,
    }
}

fn rule_text(r: &acl::Rule) -> String {
    let mut s = String::new();
    if let Some(v) = r.vni {
        let _ = write!(s, "vni {v} ");
    }
    let _ = write!(
        s,
        "src {} dst {} proto {} sport {} dport {}",
        r.src, r.dst, r.proto, r.src_ports, r.dst_ports
    );
    s
}

/// The outer headers of a frame the pipeline is about to send, in words.
pub fn describe_frame(f: &[u8]) -> String {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return format!("{} bytes (not parsed)", f.len());
    };
    let mut s = String::new();
    if let Some(etherparse::LinkSlice::Ethernet2(e)) = &p.link {
        let _ = write!(
            s,
            "eth {} -> {}",
            mac_str(&e.source()),
            mac_str(&e.destination())
        );
    }
    match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let _ = write!(
                s,
                ", ip {} -> {} ttl {} proto {}",
                h.source_addr(),
                h.destination_addr(),
                h.ttl(),
                h.protocol().0
            );
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let _ = write!(
                s,
                ", ip6 {} -> {} hlim {}",
                h.source_addr(),
                h.destination_addr(),
                h.hop_limit()
            );
        }
        _ => {}
    }
    if let Some(TransportSlice::Udp(u)) = &p.transport {
        let _ = write!(s, ", udp {} -> {}", u.source_port(), u.destination_port());
        let pl = u.payload();
        if u.destination_port() != 0 && pl.len() >= 8 && pl[0] & 0x08 != 0 {
            let vni = u32::from_be_bytes([0, pl[4], pl[5], pl[6]]);
            if pl[0] == 0x08 {
                let _ = write!(s, ", vxlan vni {vni}");
            }
        }
    }
    let _ = write!(s, ", {} bytes", f.len());
    s
}

/// A worker's side of a watch: turns an observed burst into records.
pub struct Recorder;

impl Recorder {
    /// For each packet of the burst: filter, then record into the worker's
    /// ring. `pkts` are the packets after the stages (their bytes are what
    /// would be sent).
    #[allow(clippy::too_many_arguments)]
    pub fn finish<P: crate::io::Packet>(
        w: &Watch,
        t: &Tables,
        o: &Observed,
        pkts: &[P],
        meta: &[crate::burst::Meta],
        verdicts: &[Verdict],
        worker: usize,
        ts_ns: u64,
    ) {
        for i in 0..pkts.len() {
            if w.exhausted() {
                return;
            }
            let v = verdicts[i];
            let f = facts(t, o, &meta[i], i, v, worker);
            if !w.filter.matches(&f) || !w.take() {
                continue;
            }
            w.matched.fetch_add(1, Ordering::Relaxed);
            let base = Record {
                worker,
                ts_ns,
                point: Point::Trace,
                orig_len: o.rx_len[i],
                data: Vec::new(),
                steps: Vec::new(),
                verdict: verdict_name(v).to_string(),
                service: f.service.map(str::to_string),
                backend: f.backend,
            };
            let push = |r: Record| {
                if w.rings[worker].push(r).is_err() {
                    w.ring_full[worker].fetch_add(1, Ordering::Relaxed);
                }
            };
            match w.mode {
                Mode::Trace => push(Record {
                    steps: steps(t, o, &meta[i], i, v, pkts[i].data()),
                    ..base
                }),
                Mode::Capture { at, snaplen } => {
                    let rx = || Record {
                        point: Point::Rx,
                        data: o.rx[i][..o.rx[i].len().min(snaplen)].to_vec(),
                        ..base.clone()
                    };
                    let out = || {
                        let d = pkts[i].data();
                        match v {
                            Verdict::Tx => Record {
                                point: Point::Tx,
                                orig_len: d.len() as u32,
                                data: d[..d.len().min(snaplen)].to_vec(),
                                ..base.clone()
                            },
                            Verdict::Drop(r) => Record {
                                point: Point::Drop(r),
                                ..rx()
                            },
                            Verdict::Punt => Record {
                                point: Point::Punt,
                                ..rx()
                            },
                            // Held: what it becomes is not known yet.
                            Verdict::Hold => rx(),
                        }
                    };
                    match at {
                        Where::Rx => push(rx()),
                        Where::Tx if v == Verdict::Tx => push(out()),
                        Where::Drop if matches!(v, Verdict::Drop(_)) => push(out()),
                        Where::All => {
                            push(rx());
                            push(out());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The worker-side switch: one flag read per burst while nothing is armed.
#[derive(Default)]
pub struct Armed {
    pub on: AtomicBool,
    pub watch: arc_swap::ArcSwapOption<Watch>,
}

impl Armed {
    pub fn arm(&self, w: std::sync::Arc<Watch>) {
        self.watch.store(Some(w));
        self.on.store(true, Ordering::Release);
    }

    pub fn disarm(&self) -> Option<std::sync::Arc<Watch>> {
        self.on.store(false, Ordering::Release);
        self.watch.swap(None)
    }

    /// The armed watch, if any (workers call this only when `on` is set).
    pub fn current(&self) -> Option<std::sync::Arc<Watch>> {
        self.watch.load_full()
    }
}

/// Current time as nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A `flows list` request to one worker, answered at its burst boundaries
/// in bounded steps.
#[derive(Default)]
pub struct FlowQuery {
    /// Set by the control side when `scan` holds work; cleared by the worker.
    pub pending: AtomicBool,
    pub scan: Mutex<Option<FlowScan>>,
}

/// What to list and what was found so far.
#[derive(Debug, Default)]
pub struct FlowScan {
    pub service: Option<String>,
    pub backend: Option<IpAddr>,
    pub vni: Option<u32>,
    /// Only this flow (its one set is read).
    pub exact: Option<vxlan::FlowKey>,
    pub limit: usize,
    /// Next set to read.
    pub cursor: usize,
    pub out: Vec<ctl::FlowEntry>,
    /// More entries matched than `limit`.
    pub truncated: bool,
    pub done: bool,
}

/// Sets a worker reads per burst while a `flows list` runs (8 flows each):
/// about 30 µs of work, so a listing of a million flows takes a few hundred
/// bursts and no burst is held up for long.
pub const SCAN_SETS_PER_BURST: usize = 2048;

fn proto_name(p: u8) -> String {
    proto_word(p).map_or_else(|| p.to_string(), str::to_string)
}

/// The worker's side of a flow query: one bounded step.
pub fn scan_step(
    q: &FlowQuery,
    t: &Tables,
    flows: Option<&lb::FlowTable>,
    now: u64,
    worker: usize,
) {
    let Ok(mut g) = q.scan.try_lock() else { return };
    let Some(scan) = g.as_mut() else {
        q.pending.store(false, Ordering::Release);
        return;
    };
    if scan.done {
        q.pending.store(false, Ordering::Release);
        return;
    }
    let Some(ft) = flows else {
        scan.done = true;
        q.pending.store(false, Ordering::Release);
        return;
    };
    let range = match &scan.exact {
        Some(k) => {
            let set = ft.set_of(lb::flow_hash(&lb_key(k)));
            scan.cursor = ft.sets();
            set..set + 1
        }
        None => {
            let r = scan.cursor..scan.cursor + SCAN_SETS_PER_BURST;
            scan.cursor = r.end;
            r
        }
    };
    for f in ft.iter_sets(range, now) {
        let k = f.key;
        if let Some(x) = &scan.exact {
            if lb_key(x) != k {
                continue;
            }
        }
        if scan.vni.is_some_and(|v| v != k.vni) {
            continue;
        }
        let backend = ip_of(f.pinned.addr, f.pinned.v6);
        if scan.backend.is_some_and(|b| b != backend) {
            continue;
        }
        let service =
            t.lb.lookup_service(&k)
                .and_then(|s| t.lb.service(s))
                .map(|s| s.name.clone());
        if let Some(want) = &scan.service {
            if service.as_deref() != Some(want.as_str()) {
                continue;
            }
        }
        if scan.out.len() >= scan.limit {
            scan.truncated = true;
            scan.done = true;
            break;
        }
        scan.out.push(ctl::FlowEntry {
            worker,
            vni: k.vni,
            proto: proto_name(k.proto),
            src: ip_of(k.src, k.v6),
            sport: k.sport,
            dst: ip_of(k.dst, k.v6),
            dport: k.dport,
            service,
            backend,
            idle_ms: u64::from(f.idle),
        });
    }
    if scan.cursor >= ft.sets() {
        scan.done = true;
    }
    if scan.done {
        q.pending.store(false, Ordering::Release);
    }
}

/// The frame `explain` walks: VXLAN to the gateway's first VTEP address
/// (from a documentation address of the same family) carrying the inner
/// flow of `p` between two locally administered MACs, as a client's VTEP
/// would send it.
pub fn explain_frame(t: &Tables, p: &ctl::ExplainPacket) -> Result<Vec<u8>, String> {
    use etherparse::PacketBuilder;
    if p.src.is_ipv4() != p.dst.is_ipv4() {
        return Err("src and dst must both be IPv4 or both IPv6".into());
    }
    if p.vni >= 1 << 24 {
        return Err(format!("vni {} is out of range (0..16777215)", p.vni));
    }
    let payload = vec![0u8; p.payload.min(9000)];
    let mac_c = [0x02, 0, 0, 0, 0xcc, 0x01];
    let b = PacketBuilder::ethernet2(mac_c, t.local_mac);
    let b = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("families checked above"),
    };
    let mut inner = Vec::new();
    let v6 = p.src.is_ipv6();
    let r = match p.proto.as_str() {
        "tcp" => {
            let b = b.tcp(p.sport, p.dport, 1, 64240).syn();
            inner.reserve(b.size(payload.len()));
            b.write(&mut inner, &payload)
        }
        "udp" => {
            let b = b.udp(p.sport, p.dport);
            inner.reserve(b.size(payload.len()));
            b.write(&mut inner, &payload)
        }
        "icmp" | "icmp6" if v6 => {
            let b = b.icmpv6_echo_request(p.sport, 1);
            b.write(&mut inner, &payload)
        }
        "icmp" | "icmp6" => {
            let b = b.icmpv4_echo_request(p.sport, 1);
            b.write(&mut inner, &payload)
        }
        other => return Err(format!("proto {other:?}: expected tcp, udp or icmp")),
    };
    r.map_err(|e| format!("cannot build the packet: {e}"))?;
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(p.vni << 8).to_be_bytes());
    vx.extend_from_slice(&inner);
    let port = t.decap.ports.first().copied().unwrap_or(4789);
    let outer = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0xcc, 0x02], t.local_mac);
    let mut frame = Vec::new();
    let r = if let Some(&v) = t.decap.vtep_v4.first() {
        outer
            .ipv4([192, 0, 2, 1], std::net::Ipv4Addr::from(v).octets(), 64)
            .udp(49152, port)
            .write(&mut frame, &vx)
    } else if let Some(&v) = t.decap.vtep_v6.first() {
        let src: std::net::Ipv6Addr = "2001:db8::1"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
        outer
            .ipv6(src.octets(), std::net::Ipv6Addr::from(v).octets(), 64)
            .udp(49152, port)
            .write(&mut frame, &vx)
    } else {
        return Err("the gateway has no VTEP address".into());
    };
    r.map_err(|e| format!("cannot build the frame: {e}"))?;
    Ok(frame)
}
