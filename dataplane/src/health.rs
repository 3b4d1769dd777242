//! Backend health checks through the data path.
//!
//! The checker ([`Prober`]) runs on the slow-path thread ([`crate::slowpath`]):
//! no thread per check, no blocking call. Every checked backend has one
//! state machine; a probe is a frame the checker builds and the slow path
//! sends, and its answer is a frame the workers punt (the exception check
//! recognises TCP/UDP to our address at a probe port,
//! [`crate::exception::PROBE_PORT_BASE`]: nothing more per packet).
//!
//! * **In-band** (`mode = "inband"`, the default): the probe is addressed to
//!   the service VIP from the gateway's underlay address and encapsulated to
//!   the backend with the same `vxlan` emitters and outer header as client
//!   traffic (IPIP, GUE or VXLAN with the backend's MAC); the backend answers
//!   directly (DSR) to the underlay address. A backend whose decapsulation,
//!   VIP on `lo` or reverse-path filter is wrong fails its check.
//! * **Direct**: the same probe, not encapsulated, to the backend's address.
//!
//! Kinds: `tcp` (SYN → SYN-ACK = ok, RST = refused), `http` (GET `path`
//! after the handshake; 2xx/3xx or `expect_status` = ok), `udp` (`payload`,
//! any answer = ok). No answer within `timeout_ms` = timeout. The TCP side is
//! the minimum a check needs (one SYN, one request segment, then RST), not a
//! general TCP: a lost segment is a failed check, as `fall > 1` allows for.
//!
//! Results go through `rise`/`fall` into [`lb::Health`]; a change is
//! published as a new snapshot ([`Tables::with_health`]) through
//! [`Shared::publish_with`], logged on stderr, and shown on the
//! [`crate::stats::HealthBoard`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lb::{EncapKind, Health, HealthKind, HealthMode, HealthSpec, Proto};
use vxlan::ethernet::{ethertype, EthernetFrame, EthernetRepr};
use vxlan::ipv4::{Ipv4Packet, Ipv4Repr};
use vxlan::ipv6::{Ipv6Packet, Ipv6Repr};
use vxlan::{checksum, proto};

use crate::engine::Shared;
use crate::exception::{PROBE_PORTS, PROBE_PORT_BASE};
use crate::punt::NextHop;
use crate::stats::BoardRow;
use crate::tables::Tables;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_HDR: usize = 20;
const UDP_HDR: usize = 8;
/// Bytes of an HTTP answer kept while looking for its status line.
const HTTP_HEAD: usize = 256;
/// The checker looks at its timers at most this often (probes and timeouts
/// are up to this late). 10 ms rather than 2 ms: 65 → 55 ms of checker CPU
/// per second at 1000 checks/s (health_bench), fewer wake-ups.
const TICK: Duration = Duration::from_millis(10);
/// Health changes the workers do not see (unknown → healthy) are published
/// together, at most this often.
const PUBLISH_BATCH: Duration = Duration::from_millis(200);

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Timeout,
    /// RST in answer to the SYN.
    Refused,
    /// An HTTP status that does not count as success.
    HttpStatus(u16),
    /// RST (or FIN) before the HTTP status line.
    Reset,
    /// An answer that is not HTTP.
    BadResponse,
}

impl Outcome {
    /// The metrics label.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::HttpStatus(_) => "http_status",
            Outcome::Reset => "reset",
            Outcome::BadResponse => "bad_response",
        }
    }

    /// What `backend list` shows.
    pub fn text(self) -> String {
        match self {
            Outcome::HttpStatus(s) => format!("http {s}"),
            o => o.class().to_string(),
        }
    }
}

/// Where and how one backend is probed (from the snapshot's service spec).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    spec: HealthSpec,
    proto: Proto,
    vip: IpAddr,
    port: u16,
    backend: IpAddr,
    mac: Option<[u8; 6]>,
    encap: EncapKind,
    vni: u32,
}

impl Target {
    /// The address the probe goes to and its answer comes from.
    fn peer(&self) -> IpAddr {
        match self.spec.mode {
            HealthMode::Inband => self.vip,
            HealthMode::Direct => self.backend,
        }
    }
}

/// What an attempt has sent last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Syn,
    Request,
    Datagram,
}

#[derive(Debug)]
struct Attempt {
    id: u32,
    port: u16,
    sent: Instant,
    deadline: Instant,
    iss: u32,
    stage: Stage,
    rcv_next: u32,
    req_len: u32,
    head: Vec<u8>,
}

#[derive(Debug)]
struct Check {
    key: (String, IpAddr),
    t: Target,
    health: Health,
    ok_run: u32,
    fail_run: u32,
    next_due: Instant,
    inflight: Option<Attempt>,
}

/// The checker: every checked backend's state machine, the probe ports in use,
/// and the frames to send. Owned by the slow-path thread.
pub struct Prober {
    checks: Vec<Check>,
    /// When check `i` next needs the timers (its attempt's deadline, else its
    /// next due time): a compact array, so that a timer pass over 1000 checks
    /// touches 16 KB rather than every check (health_bench, 1000 checks/s,
    /// 2 ms tick: 80 → 65 ms of checker CPU per second).
    wake_at: Vec<Instant>,
    /// Probe port - [`PROBE_PORT_BASE`] → (check index, attempt id).
    ports: Vec<Option<(u32, u32)>>,
    cursor: usize,
    next_id: u32,
    generation: u64,
    rng: u64,
    /// Earliest timer among the checks.
    next_wake: Instant,
    /// Health changed since the last publication.
    dirty: bool,
    /// ... and the change is one the workers see (to or from unhealthy).
    urgent: bool,
    last_publish: Instant,
    /// Frames to send (drained by the caller after [`Prober::handle`] and [`Prober::poll`]).
    pub out: Vec<Vec<u8>>,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

fn log_transition(key: &(String, IpAddr), old: Health, new: Health, why: Outcome, runs: u32) {
    let level = if new == Health::Unhealthy {
        crate::log::Level::Warn
    } else {
        crate::log::Level::Info
    };
    crate::log::event(
        level,
        "health_transition",
        &[
            ("service", &key.0),
            ("backend", &key.1),
            ("from", &old),
            ("to", &new),
            ("reason", &why.text()),
            ("runs", &runs),
        ],
    );
}

impl Prober {
    pub fn new() -> Prober {
        let now = Instant::now();
        Prober {
            checks: Vec::new(),
            wake_at: Vec::new(),
            ports: vec![None; PROBE_PORTS],
            cursor: 0,
            next_id: 1,
            generation: u64::MAX,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            next_wake: now,
            dirty: false,
            urgent: false,
            last_publish: now,
            out: Vec::new(),
        }
    }

    /// Number of checked backends.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    fn random(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 16) as u32
    }

    /// Follows the snapshot's services: keeps the state of every backend whose
    /// check did not change, starts new ones at unknown (their first probe
    /// spread over one interval), forgets removed ones.
    fn sync(&mut self, t: &Tables, shared: &Shared, now: Instant) {
        self.generation = t.generation;
        let mut old: HashMap<(String, IpAddr), Check> =
            self.checks.drain(..).map(|c| (c.key.clone(), c)).collect();
        for s in t.services.iter() {
            let Some(spec) = s.health.as_ref().filter(|h| h.enabled()) else {
                continue;
            };
            for b in &s.backends {
                let target = Target {
                    spec: spec.clone(),
                    proto: s.proto,
                    vip: s.vip,
                    port: spec.port.unwrap_or(s.port),
                    backend: b.ip,
                    mac: b.mac.map(|m| m.0),
                    encap: s.encap,
                    vni: spec.vni.or(s.vni).unwrap_or(0),
                };
                let key = (s.name.clone(), b.ip);
                match old.remove(&key) {
                    Some(c) if c.t == target => self.checks.push(c),
                    _ => {
                        let jitter = u64::from(self.random()) % u64::from(spec.interval_ms);
                        self.checks.push(Check {
                            key,
                            t: target,
                            health: Health::Unknown,
                            ok_run: 0,
                            fail_run: 0,
                            next_due: now + Duration::from_millis(jitter),
                            inflight: None,
                        });
                    }
                }
            }
        }
        self.wake_at = self.checks.iter().map(wake_of).collect();
        // Ports follow the checks' new indices; dropped checks free theirs.
        self.ports.iter_mut().for_each(|p| *p = None);
        for (i, c) in self.checks.iter().enumerate() {
            if let Some(a) = &c.inflight {
                self.ports[usize::from(a.port - PROBE_PORT_BASE)] = Some((i as u32, a.id));
            }
        }
        let mut board = shared.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows = std::collections::BTreeMap::new();
        for c in &self.checks {
            let row = board.rows.remove(&c.key).unwrap_or(BoardRow {
                health: c.health,
                last: None,
                latency: None,
                since: now,
                checks: 0,
            });
            rows.insert(c.key.clone(), row);
        }
        board.rows = rows;
        drop(board);
        self.next_wake = now;
        // A removed or restarted check may leave a stale entry (perhaps an
        // unhealthy one, which the workers see) in the snapshot's map.
        if self.health_map() != *t.health {
            self.dirty = true;
            self.urgent = true;
        }
    }

    fn health_map(&self) -> lb::HealthMap {
        self.checks
            .iter()
            .filter(|c| c.health != Health::Unknown)
            .map(|c| (c.key.clone(), c.health))
            .collect()
    }

    /// Runs the timers: starts due probes, ends timed-out ones, publishes a
    /// health change. Returns how long the caller may sleep.
    pub fn poll(&mut self, shared: &Shared, now: Instant) -> Duration {
        let t = shared.tables.load();
        if t.generation != self.generation {
            self.sync(&t, shared, now);
        }
        if now >= self.next_wake {
            let next_hop = NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire))
                .mac(t.next_hop_mac);
            let mut wake = now + Duration::from_secs(1);
            for i in 0..self.checks.len() {
                if self.wake_at[i] > now {
                    wake = wake.min(self.wake_at[i]);
                    continue;
                }
                if let Some(a) = &self.checks[i].inflight {
                    if now >= a.deadline {
                        self.finish(i, Outcome::Timeout, now, shared);
                    }
                }
                let c = &self.checks[i];
                if c.inflight.is_none() && now >= c.next_due {
                    let interval = Duration::from_millis(u64::from(c.t.spec.interval_ms));
                    let mut due = c.next_due + interval;
                    if due <= now {
                        due = now + interval;
                    }
                    self.checks[i].next_due = due;
                    if let Some(mac) = next_hop {
                        self.start(i, &t, mac, now);
                    }
                }
                self.wake_at[i] = wake_of(&self.checks[i]);
                wake = wake.min(self.wake_at[i]);
            }
            self.next_wake = wake.max(now + TICK);
        }
        if self.dirty && (self.urgent || now >= self.last_publish + PUBLISH_BATCH) {
            self.publish(shared, now);
        }
        let mut wait = self.next_wake.saturating_duration_since(now);
        if self.dirty {
            wait = wait.min((self.last_publish + PUBLISH_BATCH).saturating_duration_since(now));
        }
        wait
    }

    fn publish(&mut self, shared: &Shared, now: Instant) {
        self.last_publish = now;
        let map = self.health_map();
        let r = shared.publish_with(|prev, g| {
            // Only health changes; the checker's view of the services is the
            // snapshot it builds on (a control change in between re-syncs).
            prev.with_health(map.clone(), g)
        });
        match r {
            Ok(retired) => {
                self.dirty = false;
                self.urgent = false;
                // Built on the snapshot we follow: no re-sync needed.
                if retired.generation == self.generation {
                    self.generation += 1;
                }
                let t = shared.tables.load();
                let mut bad: Vec<String> =
                    t.lb.services()
                        .filter(|(_, s)| s.checked && !s.healthy())
                        .map(|(_, s)| s.name.clone())
                        .collect();
                bad.sort();
                let mut board = shared.health.lock().unwrap_or_else(|p| p.into_inner());
                board.unhealthy_services = bad;
            }
            Err(e) => crate::log::event(
                crate::log::Level::Error,
                "health_publish_failed",
                &[("error", &e)],
            ),
        }
    }

    fn alloc_port(&mut self, check: usize, id: u32) -> Option<u16> {
        for _ in 0..PROBE_PORTS {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % PROBE_PORTS;
            if self.ports[i].is_none() {
                self.ports[i] = Some((check as u32, id));
                return Some(PROBE_PORT_BASE + i as u16);
            }
        }
        None
    }

    fn start(&mut self, i: usize, t: &Tables, next_hop: [u8; 6], now: Instant) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let Some(port) = self.alloc_port(i, id) else {
            return;
        };
        let iss = self.random();
        let c = &self.checks[i];
        let timeout = Duration::from_millis(u64::from(c.t.spec.timeout_ms));
        let (stage, l4proto, seg) = if c.t.spec.kind == HealthKind::Udp {
            (
                Stage::Datagram,
                proto::UDP,
                udp_segment(port, c.t.port, c.t.spec.payload.as_bytes()),
            )
        } else {
            (
                Stage::Syn,
                proto::TCP,
                tcp_segment(port, c.t.port, iss, 0, TCP_SYN, &[]),
            )
        };
        let Some(frame) = probe_frame(t, next_hop, &c.t, l4proto, seg) else {
            self.ports[usize::from(port - PROBE_PORT_BASE)] = None;
            return;
        };
        self.out.push(frame);
        self.checks[i].inflight = Some(Attempt {
            id,
            port,
            sent: now,
            deadline: now + timeout,
            iss,
            stage,
            rcv_next: 0,
            req_len: 0,
            head: Vec::new(),
        });
    }

    /// Ends check `i`'s attempt with `o`, runs rise/fall, updates the board.
    fn finish(&mut self, i: usize, o: Outcome, now: Instant, shared: &Shared) {
        let c = &mut self.checks[i];
        let Some(a) = c.inflight.take() else { return };
        self.ports[usize::from(a.port - PROBE_PORT_BASE)] = None;
        self.wake_at[i] = c.next_due;
        self.next_wake = self.next_wake.min(c.next_due);
        let old = c.health;
        if o == Outcome::Ok {
            c.ok_run += 1;
            c.fail_run = 0;
            if c.ok_run >= c.t.spec.rise {
                c.health = Health::Healthy;
            }
        } else {
            c.fail_run += 1;
            c.ok_run = 0;
            if c.fail_run >= c.t.spec.fall {
                c.health = Health::Unhealthy;
            }
        }
        let changed = c.health != old;
        let runs = if o == Outcome::Ok {
            c.ok_run
        } else {
            c.fail_run
        };
        let mut board = shared.health.lock().unwrap_or_else(|p| p.into_inner());
        *board.results.entry(o.class()).or_insert(0) += 1;
        if changed {
            board.transitions += 1;
        }
        if let Some(row) = board.rows.get_mut(&c.key) {
            row.checks += 1;
            row.last = Some(o.text());
            if o == Outcome::Ok {
                row.latency = Some(now.saturating_duration_since(a.sent));
            }
            if changed {
                row.health = c.health;
                row.since = now;
            }
        }
        drop(board);
        if changed {
            log_transition(&c.key, old, c.health, o, runs);
            self.dirty = true;
            // unknown -> healthy changes nothing the workers see: it waits
            // for the next batched publication.
            self.urgent |= old == Health::Unhealthy || c.health == Health::Unhealthy;
        }
    }

    /// Takes a punted frame; true if it was the answer to a probe (consumed).
    pub fn handle(&mut self, frame: &[u8], shared: &Shared, now: Instant) -> bool {
        let Some(r) = parse_reply(frame) else {
            return false;
        };
        let Some(idx) = r.dport.checked_sub(PROBE_PORT_BASE) else {
            return false;
        };
        let Some(Some((ci, id))) = self.ports.get(usize::from(idx)).copied() else {
            return true; // a late answer to a finished probe: ours, nothing to do
        };
        let ci = ci as usize;
        let t = shared.tables.load();
        let Some(c) = self.checks.get(ci) else {
            return true;
        };
        let Some(a) = c.inflight.as_ref().filter(|a| a.id == id) else {
            return true;
        };
        if r.src != c.t.peer() || r.sport != c.t.port {
            return true;
        }
        let outcome = match (a.stage, r.l4) {
            (Stage::Datagram, L4::Udp) => Some(Outcome::Ok),
            (Stage::Syn, L4::Tcp { flags, .. }) if flags & TCP_RST != 0 => Some(Outcome::Refused),
            (
                Stage::Syn,
                L4::Tcp {
                    flags, seq, ack, ..
                },
            ) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                && ack == a.iss.wrapping_add(1) =>
            {
                let (iss, port, kind) = (a.iss, a.port, c.t.spec.kind);
                let rcv_next = seq.wrapping_add(1);
                if kind == HealthKind::Http {
                    let req = format!(
                        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dpgw-health\r\nConnection: close\r\n\r\n",
                        c.t.spec.path,
                        host(c.t.vip)
                    );
                    let seg = tcp_segment(
                        port,
                        c.t.port,
                        iss.wrapping_add(1),
                        rcv_next,
                        TCP_ACK | TCP_PSH,
                        req.as_bytes(),
                    );
                    let target = c.t.clone();
                    self.send_tcp(&t, shared, &target, seg);
                    if let Some(a) = self.checks[ci].inflight.as_mut() {
                        a.stage = Stage::Request;
                        a.rcv_next = rcv_next;
                        a.req_len = req.len() as u32;
                    }
                    None
                } else {
                    let seg = tcp_segment(port, c.t.port, iss.wrapping_add(1), 0, TCP_RST, &[]);
                    let target = c.t.clone();
                    self.send_tcp(&t, shared, &target, seg);
                    Some(Outcome::Ok)
                }
            }
            (
                Stage::Request,
                L4::Tcp {
                    flags,
                    seq,
                    payload,
                    ..
                },
            ) => {
                if flags & TCP_RST != 0 {
                    Some(Outcome::Reset)
                } else {
                    let mut fin = flags & TCP_FIN != 0;
                    let a = self.checks[ci].inflight.as_mut().expect("checked above");
                    if seq == a.rcv_next && !payload.is_empty() {
                        let room = HTTP_HEAD.saturating_sub(a.head.len());
                        a.head.extend_from_slice(
                            &frame[payload.start..payload.start + room.min(payload.len())],
                        );
                        a.rcv_next = a.rcv_next.wrapping_add(payload.len() as u32);
                    } else if seq != a.rcv_next {
                        fin = false; // out of order: wait for the rest (or the timeout)
                    }
                    match http_status(&a.head) {
                        Some(Ok(status)) => {
                            let expect = self.checks[ci].t.spec.expect_status;
                            let good = match expect {
                                Some(e) => status == e,
                                None => (200..400).contains(&status),
                            };
                            Some(if good {
                                Outcome::Ok
                            } else {
                                Outcome::HttpStatus(status)
                            })
                        }
                        Some(Err(())) => Some(Outcome::BadResponse),
                        None if fin || a.head.len() >= HTTP_HEAD => Some(Outcome::BadResponse),
                        None => None,
                    }
                    .inspect(|_| {
                        // Close our side at once: RST after the request.
                        let a = self.checks[ci].inflight.as_ref().expect("checked above");
                        let seg = tcp_segment(
                            a.port,
                            self.checks[ci].t.port,
                            a.iss.wrapping_add(1).wrapping_add(a.req_len),
                            0,
                            TCP_RST,
                            &[],
                        );
                        let target = self.checks[ci].t.clone();
                        self.send_tcp(&t, shared, &target, seg);
                    })
                }
            }
            _ => None,
        };
        if let Some(o) = outcome {
            self.finish(ci, o, now, shared);
            if self.urgent {
                self.publish(shared, now);
            }
        }
        true
    }

    fn send_tcp(&mut self, t: &Tables, shared: &Shared, target: &Target, seg: Vec<u8>) {
        let Some(mac) =
            NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire)).mac(t.next_hop_mac)
        else {
            return;
        };
        if let Some(f) = probe_frame(t, mac, target, proto::TCP, seg) {
            self.out.push(f);
        }
    }
}

/// When a check next needs the timers.
fn wake_of(c: &Check) -> Instant {
    c.inflight.as_ref().map_or(c.next_due, |a| a.deadline)
}

fn host(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `Some(Ok(status))` once `head` holds an HTTP status line, `Some(Err)` if it
/// cannot be one, `None` while incomplete.
fn http_status(head: &[u8]) -> Option<Result<u16, ()>> {
    const P: &[u8] = b"HTTP/1.";
    let n = head.len().min(P.len());
    if head[..n] != P[..n] {
        return Some(Err(()));
    }
    if head.len() < 12 {
        return None;
    }
    if head[8] != b' ' || !head[9..12].iter().all(u8::is_ascii_digit) {
        return Some(Err(()));
    }
    let s = head[9..12]
        .iter()
        .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    Some(Ok(s))
}

fn tcp_segment(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; TCP_HDR + data.len()];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = ((TCP_HDR / 4) as u8) << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    s[TCP_HDR..].copy_from_slice(data);
    s
}

fn udp_segment(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; UDP_HDR + data.len()];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    let len = s.len() as u16;
    s[4..6].copy_from_slice(&len.to_be_bytes());
    s[UDP_HDR..].copy_from_slice(data);
    s
}

/// The IP packet `src → dst` carrying segment `seg` (its checksum filled in).
fn ip_packet(src: IpAddr, dst: IpAddr, l4proto: u8, mut seg: Vec<u8>) -> Option<Vec<u8>> {
    let at = if l4proto == proto::TCP { 16 } else { 6 };
    let mut out;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = checksum::l4_checksum_v4(s.octets(), d.octets(), l4proto, &seg);
            let c = if l4proto == proto::UDP && c == 0 {
                0xffff
            } else {
                c
            };
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
            out = vec![0u8; 20];
            Ipv4Repr {
                src: s,
                dst: d,
                protocol: l4proto,
                payload_len: seg.len(),
                ttl: 64,
                dscp_ecn: 0,
                ident: 0,
                dont_frag: true,
                more_frags: false,
                frag_offset: 0,
            }
            .emit(&mut out)
            .ok()?;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let c = checksum::l4_checksum_v6(&s.octets(), &d.octets(), l4proto, &seg);
            let c = if l4proto == proto::UDP && c == 0 {
                0xffff
            } else {
                c
            };
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
            out = vec![0u8; 40];
            Ipv6Repr {
                src: s,
                dst: d,
                next_header: l4proto,
                payload_len: seg.len(),
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            }
            .emit(&mut out)
            .ok()?;
        }
        _ => return None,
    }
    out.extend_from_slice(&seg);
    Some(out)
}

fn ether(src: [u8; 6], dst: [u8; 6], et: u16, body: &[u8]) -> Option<Vec<u8>> {
    let mut f = vec![0u8; 14];
    EthernetRepr {
        src,
        dst,
        tags: [None, None],
        ethertype: et,
    }
    .emit(&mut f)
    .ok()?;
    f.extend_from_slice(body);
    Some(f)
}

/// The probe as it leaves the gateway: in-band, the IP packet to the VIP
/// encapsulated to the backend exactly as the LB stage encapsulates client
/// traffic (same emitters, same outer addresses and ports); direct, the IP
/// packet to the backend. `None` without an underlay address of the family.
fn probe_frame(
    t: &Tables,
    next_hop: [u8; 6],
    tg: &Target,
    l4proto: u8,
    seg: Vec<u8>,
) -> Option<Vec<u8>> {
    let src = match tg.backend {
        IpAddr::V4(_) => IpAddr::V4(t.underlay_v4?),
        IpAddr::V6(_) => IpAddr::V6(t.underlay_v6?),
    };
    let sport = u16::from_be_bytes([seg[0], seg[1]]);
    let et = if src.is_ipv4() {
        ethertype::IPV4
    } else {
        ethertype::IPV6
    };
    if tg.spec.mode == HealthMode::Direct {
        let ip = ip_packet(src, tg.backend, l4proto, seg)?;
        return ether(t.local_mac, next_hop, et, &ip);
    }
    let ip = ip_packet(src, tg.vip, l4proto, seg)?;
    let outer = vxlan::Outer {
        src_mac: t.local_mac,
        dst_mac: next_hop,
        vlan: None,
        src_ip: src,
        dst_ip: tg.backend,
        ttl: 64,
    };
    let key = vxlan::FlowKey {
        vni: tg.vni,
        src: ip_bits(src),
        dst: ip_bits(tg.vip),
        sport,
        dport: tg.port,
        proto: l4proto,
        v6: !src.is_ipv4(),
    };
    let (mut hdr, inner) = match tg.encap {
        EncapKind::Vxlan => {
            let inner = ether(t.local_mac, tg.mac.unwrap_or([0xff; 6]), et, &ip)?;
            let mut hdr = vec![0u8; vxlan::vxlan_header_len(&outer)];
            vxlan::emit_vxlan(
                &outer,
                vxlan::flow_src_port(&key),
                t.vxlan_dst_port,
                tg.vni,
                &inner,
                &mut hdr,
            );
            (hdr, inner)
        }
        EncapKind::Geneve => {
            let inner = ether(t.local_mac, tg.mac.unwrap_or([0xff; 6]), et, &ip)?;
            let mut hdr = vec![0u8; vxlan::geneve_header_len(&outer)];
            vxlan::emit_geneve(
                &outer,
                vxlan::flow_src_port(&key),
                t.geneve_dst_port,
                tg.vni,
                &inner,
                &mut hdr,
            );
            (hdr, inner)
        }
        EncapKind::Ipip => {
            let mut hdr = vec![0u8; vxlan::ipip_header_len(&outer)];
            vxlan::emit_ipip(&outer, &ip, &mut hdr);
            (hdr, ip)
        }
        EncapKind::Gue => {
            let mut hdr = vec![0u8; vxlan::gue_header_len(&outer)];
            vxlan::emit_gue(
                &outer,
                vxlan::flow_src_port(&key),
                t.gue_port,
                &ip,
                &mut hdr,
            );
            (hdr, ip)
        }
    };
    hdr.extend_from_slice(&inner);
    Some(hdr)
}

fn ip_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        /// The segment's data, as a range of the frame.
        payload: std::ops::Range<usize>,
    },
    Udp,
}

struct Reply {
    src: IpAddr,
    sport: u16,
    dport: u16,
    l4: L4,
}

/// A TCP/UDP answer (untagged Ethernet, IPv4 or IPv6 without extension
/// headers). Never panics.
fn parse_reply(frame: &[u8]) -> Option<Reply> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.tag_count() != 0 {
        return None;
    }
    let l3_off = frame.len() - eth.payload().len();
    let l3 = eth.payload();
    let (src, p, l4_off, l4_len) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(l3).ok()?;
            if ip.is_fragment() {
                return None;
            }
            let hl = ip.header_len();
            (
                IpAddr::V4(ip.src_addr()),
                ip.protocol(),
                l3_off + hl,
                ip.total_len().checked_sub(hl)?,
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(l3).ok()?;
            (
                IpAddr::V6(ip.src_addr()),
                ip.next_header(),
                l3_off + 40,
                ip.payload_len(),
            )
        }
        _ => return None,
    };
    let l4 = frame.get(l4_off..l4_off.checked_add(l4_len)?)?;
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let l4 = match p {
        proto::TCP => {
            if l4.len() < TCP_HDR {
                return None;
            }
            let off = usize::from(l4[12] >> 4) * 4;
            if off < TCP_HDR || off > l4.len() {
                return None;
            }
            L4::Tcp {
                flags: l4[13],
                seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                ack: u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]),
                payload: l4_off + off..l4_off + l4.len(),
            }
        }
        proto::UDP if l4.len() >= UDP_HDR => L4::Udp,
        _ => return None,
    };
    Some(Reply {
        src,
        sport,
        dport,
        l4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    fn setup(kind: &str, mode: &str, encap: &str) -> Arc<Shared> {
        let cfg = Config::parse(&format!(
            "[pcap]\ninput = [\"x.pcap\"]\n\
             [gateway]\nvtep_ips = [\"{UNDERLAY}\"]\nunderlay_ips = [\"{UNDERLAY}\"]\n\
             local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\n\
             [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"{encap}\"\n\
             [service.health]\nkind = \"{kind}\"\nmode = \"{mode}\"\nvni = 100\npath = \"/hz\"\n\
             interval_ms = 100\ntimeout_ms = 50\nrise = 2\nfall = 2\n\
             [[service.backend]]\nip = \"{BACKEND}\"\nmac = \"02:00:00:00:01:01\"\n"
        ))
        .unwrap();
        Shared::new(Tables::build(&cfg, 1).unwrap(), 1)
    }

    /// The inner IPv4 packet of a probe frame (checked: outer headers as the
    /// LB stage writes them for this backend, valid checksums).
    fn inner_ip(f: &[u8], encap: EncapKind, direct: bool) -> Vec<u8> {
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 0xfe], "to the next hop");
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), UNDERLAY);
        if direct {
            assert_eq!(ip.dst_addr(), BACKEND);
            return f[14..].to_vec();
        }
        assert_eq!(ip.dst_addr(), BACKEND);
        let inner = match encap {
            EncapKind::Vxlan | EncapKind::Geneve => {
                let d = vxlan::decap(
                    f,
                    &vxlan::DecapConfig {
                        vtep_v4: vec![u32::from(BACKEND)],
                        vtep_v6: vec![],
                        ports: vec![4789],
                        geneve_ports: vec![vxlan::geneve::PORT],
                    },
                )
                .unwrap();
                assert_eq!(d.vni, 100);
                let e = &f[d.inner_offset..d.inner_offset + d.inner_len];
                assert_eq!(&e[0..6], &[2, 0, 0, 0, 1, 1], "to the backend's MAC");
                e[14..].to_vec()
            }
            EncapKind::Ipip => {
                assert_eq!(ip.protocol(), 4);
                ip.payload().to_vec()
            }
            EncapKind::Gue => {
                assert_eq!(ip.protocol(), proto::UDP);
                ip.payload()[UDP_HDR..].to_vec()
            }
        };
        let i = Ipv4Packet::new_checked(&inner[..]).unwrap();
        assert!(i.verify_checksum());
        assert_eq!((i.src_addr(), i.dst_addr()), (UNDERLAY, VIP), "to the VIP");
        inner
    }

    /// (sport, dport, seq, flags, payload) of a TCP probe packet, checksum checked.
    fn tcp(ip: &[u8]) -> (u16, u16, u32, u8, Vec<u8>) {
        let p = Ipv4Packet::new_checked(ip).unwrap();
        let s = p.payload();
        assert_eq!(
            checksum::l4_checksum_v4(p.src_addr().octets(), p.dst_addr().octets(), 6, s),
            0,
            "TCP checksum"
        );
        (
            u16::from_be_bytes([s[0], s[1]]),
            u16::from_be_bytes([s[2], s[3]]),
            u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
            s[13],
            s[TCP_HDR..].to_vec(),
        )
    }

    /// A plain answer from `src:80` to the probe port (what the backend sends by DSR).
    fn answer(src: Ipv4Addr, dport: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let seg = tcp_segment(80, dport, seq, ack, flags, data);
        let ip = ip_packet(IpAddr::V4(src), IpAddr::V4(UNDERLAY), proto::TCP, seg).unwrap();
        ether(
            [2, 0, 0, 0, 0, 0xfe],
            [2, 0, 0, 0, 0, 1],
            ethertype::IPV4,
            &ip,
        )
        .unwrap()
    }

    fn health_of(shared: &Shared) -> Health {
        let t = shared.tables.load();
        t.lb.backends(t.lb.service_by_name("web").unwrap())[0].health
    }

    /// The next probe: `poll` with the clock `now` moved on in 5 ms steps
    /// until it sends one (within one interval, 100 ms).
    fn probe(p: &mut Prober, shared: &Shared, now: &mut Instant) -> Vec<u8> {
        for _ in 0..=20 {
            p.poll(shared, *now);
            if !p.out.is_empty() {
                assert_eq!(p.out.len(), 1, "one probe per backend per interval");
                return p.out.pop().unwrap();
            }
            *now += Duration::from_millis(5);
        }
        panic!("no probe within an interval");
    }

    #[test]
    fn test_tcp_inband_rise_and_fall() {
        for encap in [
            EncapKind::Vxlan,
            EncapKind::Geneve,
            EncapKind::Ipip,
            EncapKind::Gue,
        ] {
            let shared = setup("tcp", "inband", &encap.to_string());
            let mut p = Prober::new();
            let mut now = Instant::now() + Duration::from_millis(200);
            for round in 0..2 {
                let f = probe(&mut p, &shared, &mut now);
                let (sport, dport, iss, flags, _) = tcp(&inner_ip(&f, encap, false));
                assert!(sport >= PROBE_PORT_BASE && dport == 80 && flags == TCP_SYN);
                let a = answer(
                    VIP,
                    sport,
                    7777,
                    iss.wrapping_add(1),
                    TCP_SYN | TCP_ACK,
                    &[],
                );
                // The workers punt it: the exception check knows it.
                assert!(crate::exception::is_exception(&a, &shared.tables.load()));
                assert!(p.handle(&a, &shared, now + Duration::from_millis(1)));
                // The connection is closed with an RST, encapsulated the same way.
                let rst = p.out.pop().expect("an RST");
                let (_, _, seq, flags, _) = tcp(&inner_ip(&rst, encap, false));
                assert_eq!((seq, flags), (iss.wrapping_add(1), TCP_RST));
                let want = if round == 0 {
                    Health::Unknown
                } else {
                    Health::Healthy
                };
                assert_eq!(p.checks[0].health, want);
            }
            // Refused twice (fall = 2): unhealthy, published in the snapshot.
            let g0 = shared.tables.load().generation;
            for _ in 0..2 {
                let f = probe(&mut p, &shared, &mut now);
                let (sport, _, iss, _, _) = tcp(&inner_ip(&f, encap, false));
                let rst = answer(VIP, sport, 0, iss.wrapping_add(1), TCP_RST | TCP_ACK, &[]);
                assert!(p.handle(&rst, &shared, now));
            }
            assert_eq!(health_of(&shared), Health::Unhealthy);
            assert!(shared.tables.load().generation > g0);
            let board = shared.health.lock().unwrap();
            assert_eq!(board.results["refused"], 2);
            assert_eq!(board.results["ok"], 2);
            assert_eq!(board.unhealthy_services, vec!["web".to_string()]);
            let row = &board.rows[&("web".to_string(), IpAddr::V4(BACKEND))];
            assert_eq!(row.last.as_deref(), Some("refused"));
        }
    }

    #[test]
    fn test_timeout_and_wrong_source() {
        let shared = setup("tcp", "inband", "vxlan");
        let mut p = Prober::new();
        let mut now = Instant::now() + Duration::from_millis(200);
        for _ in 0..2 {
            let f = probe(&mut p, &shared, &mut now);
            let (sport, _, iss, _, _) = tcp(&inner_ip(&f, EncapKind::Vxlan, false));
            // An answer from the backend's own address is not the in-band answer.
            let a = answer(
                BACKEND,
                sport,
                1,
                iss.wrapping_add(1),
                TCP_SYN | TCP_ACK,
                &[],
            );
            assert!(p.handle(&a, &shared, now));
            assert!(p.out.is_empty());
            now += Duration::from_millis(60);
            p.poll(&shared, now); // timed out
        }
        assert_eq!(health_of(&shared), Health::Unhealthy);
        assert_eq!(shared.health.lock().unwrap().results["timeout"], 2);
        // Not a probe answer: left to the rest of the slow path.
        let other = answer(VIP, 1234, 1, 1, TCP_ACK, &[]);
        let mut other = other;
        other[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&80u16.to_be_bytes());
        assert!(!p.handle(&other, &shared, now));
    }

    #[test]
    fn test_http_direct_status() {
        let shared = setup("http", "direct", "vxlan");
        let mut p = Prober::new();
        let mut now = Instant::now() + Duration::from_millis(200);
        for (status, ok) in [(200, true), (302, true), (503, false), (503, false)] {
            let f = probe(&mut p, &shared, &mut now);
            let (sport, _, iss, _, _) = tcp(&inner_ip(&f, EncapKind::Vxlan, true));
            let a = answer(
                BACKEND,
                sport,
                500,
                iss.wrapping_add(1),
                TCP_SYN | TCP_ACK,
                &[],
            );
            assert!(p.handle(&a, &shared, now));
            let req = p.out.pop().expect("the request");
            let (_, _, seq, flags, data) = tcp(&inner_ip(&req, EncapKind::Vxlan, true));
            assert_eq!(seq, iss.wrapping_add(1));
            assert_eq!(flags, TCP_ACK | TCP_PSH);
            assert!(data.starts_with(b"GET /hz HTTP/1.1\r\n"), "{data:?}");
            // The status line split over two segments.
            let head = format!("HTTP/1.1 {status} X\r\n\r\n");
            let (a1, a2) = head.as_bytes().split_at(5);
            let s1 = answer(BACKEND, sport, 501, seq + data.len() as u32, TCP_ACK, a1);
            assert!(p.handle(&s1, &shared, now));
            assert!(p.out.is_empty() && p.checks[0].inflight.is_some());
            let s2 = answer(BACKEND, sport, 501 + 5, 0, TCP_ACK | TCP_FIN, a2);
            assert!(p.handle(&s2, &shared, now));
            assert!(p.checks[0].inflight.is_none());
            let rst = p.out.pop().expect("an RST");
            assert_eq!(tcp(&inner_ip(&rst, EncapKind::Vxlan, true)).3, TCP_RST);
            let last = shared.health.lock().unwrap().rows
                [&("web".to_string(), IpAddr::V4(BACKEND))]
                .last
                .clone();
            assert_eq!(
                last,
                Some(if ok {
                    "ok".into()
                } else {
                    format!("http {status}")
                })
            );
        }
        assert_eq!(health_of(&shared), Health::Unhealthy);
    }

    #[test]
    fn test_http_status_parse() {
        assert_eq!(http_status(b"HTTP/1.1 204 No"), Some(Ok(204)));
        assert_eq!(http_status(b"HTTP/1.0 500"), Some(Ok(500)));
        assert_eq!(http_status(b"HTTP/1."), None);
        assert_eq!(http_status(b"HTTP/1.1 2"), None);
        assert_eq!(http_status(b"SSH-2.0"), Some(Err(())));
        assert_eq!(http_status(b"HTTP/1.1 2x4"), Some(Err(())));
        // Truncations of a reply never panic.
        let f = answer(VIP, 0xF001, 1, 1, TCP_ACK, b"HTTP/1.1 200 OK\r\n");
        for n in 0..f.len() {
            let _ = parse_reply(&f[..n]);
        }
    }
}
