//! Stateful ACL: the connection-tracking stages around the ACL stage, on
//! the pure tables of `acl::conntrack`.
//!
//! * [`Conntrack::lookup`] runs before the ACL: a packet of a known
//!   connection (either direction, in any worker's table) or an ICMP error
//!   quoting one is marked in [`Meta::ct`] ([`ct::KNOWN`]) and the ACL stage
//!   does not classify it: it passes without the rules.
//! * [`Conntrack::commit`] runs after it: a packet of no known connection
//!   that a stateful rule allowed creates its connection in this worker's
//!   table; when the table has no room it is dropped as `ct_full`.
//! * Both are one test per burst while the snapshot has no stateful rule
//!   (`Tables::ct_active`): nothing is looked up and the table is not
//!   touched (its entries age out).
//!
//! The tables ([`CtShared`]) are created once per run with the worker count
//! (`engine::Shared`), so connections survive rule changes and reloads; each
//! worker's stage holds its table's one writer. A pipeline without them
//! (tests, offline tools) makes a private single-worker table on first use.
//!
//! Keys: the connection key is the flow key with its VNI; ICMP echo request
//! and reply use the echo identifier as both ports (the ACL still sees
//! ports 0); ICMP errors are looked up by the flow they quote and never
//! create a connection. Later fragments (no L4 header) are not tracked: the
//! rules decide them, as without conntrack.

use std::sync::Arc;

use crate::burst::{ct, Meta, Verdict};
use crate::io::{Packet, MAX_BURST};
use crate::stats::{CtCounters, DropReason, Telemetry, CT_OTHER_VNI, CT_VNIS};
use crate::tables::Tables;
use acl::conntrack::{ConnKey, ConnTables, Decision, State, Writer};

/// The connection tables of all workers and their common clock.
pub struct CtShared {
    pub tables: Arc<ConnTables>,
    t0: std::time::Instant,
}

impl std::fmt::Debug for CtShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtShared")
            .field("tables", &self.tables)
            .finish()
    }
}

impl CtShared {
    /// Tables for `workers` workers of `capacity` entries each (allocated by
    /// each worker when it first needs its own).
    pub fn new(workers: usize, capacity: usize) -> Arc<CtShared> {
        Arc::new(CtShared {
            tables: ConnTables::new(workers, capacity),
            t0: std::time::Instant::now(),
        })
    }

    /// Milliseconds on the clock every worker uses for these tables.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }
}

/// The two conntrack stages of one worker (see the module doc).
pub struct Conntrack {
    shared: Option<Arc<CtShared>>,
    writer: Option<Writer>,
    /// Explain: look, change nothing.
    read_only: bool,
    /// The lookup ran on this burst (the snapshot had stateful rules).
    active: bool,
    now: u64,
    /// Per packet of the burst: its connection key, direction, TCP flags,
    /// and whether it is tracked at all.
    keys: [(ConnKey, bool); MAX_BURST],
    flags: [u8; MAX_BURST],
    tracked: [bool; MAX_BURST],
    /// The connection state after each packet (hits), for `explain`/`trace`.
    pub state: [Option<State>; MAX_BURST],
    /// Counters per VNI (at most [`CT_VNIS`], then [`CT_OTHER_VNI`]).
    vnis: Vec<(u32, CtCounters)>,
    last_vni: usize,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            shared: None,
            writer: None,
            read_only: false,
            active: false,
            now: 0,
            keys: [(ConnKey::default(), false); MAX_BURST],
            flags: [0; MAX_BURST],
            tracked: [false; MAX_BURST],
            state: [None; MAX_BURST],
            vnis: Vec::with_capacity(CT_VNIS + 1),
            last_vni: 0,
        }
    }
}

impl Conntrack {
    /// Uses `shared`'s tables as worker `worker` (its table's writer). If
    /// the writer is taken (another pipeline of the same worker index is
    /// alive), the stage only reads.
    pub fn attach(&mut self, shared: Arc<CtShared>, worker: usize) {
        self.writer = shared.tables.writer(worker);
        self.read_only = self.writer.is_none();
        self.shared = Some(shared);
    }

    /// Uses `shared`'s tables without changing them (explain on the live
    /// tables: hits are shown, nothing is created or refreshed).
    pub fn attach_read_only(&mut self, shared: Arc<CtShared>) {
        self.writer = None;
        self.read_only = true;
        self.shared = Some(shared);
    }

    /// The tables in use, if any.
    pub fn shared(&self) -> Option<&Arc<CtShared>> {
        self.shared.as_ref()
    }

    /// Allocates this worker's table now if `t` has stateful rules (the
    /// engine calls it before the first burst).
    pub fn prepare(&mut self, t: &Tables) {
        if t.ct_active {
            self.ensure(t);
            if let Some(w) = &self.writer {
                w.prepare();
            }
        }
    }

    #[cold]
    fn make_private(&mut self, t: &Tables) {
        let s = CtShared::new(1, t.ct_capacity);
        self.writer = s.tables.writer(0);
        self.shared = Some(s);
    }

    #[inline]
    fn ensure(&mut self, t: &Tables) {
        if self.shared.is_none() {
            self.make_private(t);
        }
    }

    #[inline]
    fn counters(&mut self, vni: u32) -> &mut CtCounters {
        if self.vnis.get(self.last_vni).is_none_or(|e| e.0 != vni) {
            self.last_vni = match self.vnis.iter().position(|e| e.0 == vni) {
                Some(i) => i,
                None => {
                    let v = if self.vnis.len() >= CT_VNIS {
                        CT_OTHER_VNI
                    } else {
                        vni
                    };
                    match self.vnis.iter().position(|e| e.0 == v) {
                        Some(i) => i,
                        None => {
                            self.vnis.push((v, CtCounters::default()));
                            self.vnis.len() - 1
                        }
                    }
                }
            };
        }
        &mut self.vnis[self.last_vni].1
    }

    /// Moves the per-VNI counters into `tel`.
    pub fn flush_telemetry(&mut self, tel: &mut Telemetry) {
        for (vni, c) in self.vnis.iter_mut() {
            if *c != CtCounters::default() {
                tel.conntrack
                    .entry(*vni)
                    .or_default()
                    .add(&std::mem::take(c));
            }
        }
    }

    /// Before the ACL: marks packets of known connections (see the module doc).
    #[inline]
    pub fn lookup<P: Packet>(&mut self, t: &Tables, pkts: &[P], meta: &mut [Meta], v: &[Verdict]) {
        self.active = t.ct_active;
        if !self.active {
            return;
        }
        self.lookup_burst(t, pkts, meta, v);
    }

    #[inline(never)]
    fn lookup_burst<P: Packet>(&mut self, t: &Tables, pkts: &[P], meta: &mut [Meta], v: &[Verdict]) {
        self.ensure(t);
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let to = t.ct_timeouts;
        self.now = shared.now_ms();
        let me = self.writer.as_ref().map_or(0, |w| w.worker());
        for i in 0..pkts.len() {
            meta[i].ct = 0;
            self.state[i] = None;
            self.tracked[i] = false;
            if v[i] != Verdict::Tx || meta[i].frag == vxlan::FragKind::Later {
                continue;
            }
            let m = &meta[i];
            let k = acl_key(&m.key);
            let l3 = m.l3_off as usize;
            let d = pkts[i].data();
            let (ck, fwd, flags) = match k.proto {
                vxlan::proto::TCP => {
                    let (ck, fwd) = ConnKey::of(&k);
                    (ck, fwd, tcp_flags(d, l3, k.v6))
                }
                vxlan::proto::ICMP | vxlan::proto::ICMPV6 => match icmp_kind(d, l3, k.v6) {
                    Icmp::Echo(id) => {
                        let (ck, fwd) = ConnKey::with_ports(&k, id, id);
                        (ck, fwd, 0)
                    }
                    Icmp::Error(q) => {
                        // Related to a known connection? Never creates one.
                        let qk = acl::Key {
                            src: q.src,
                            dst: q.dst,
                            sport: q.sport,
                            dport: q.dport,
                            proto: q.proto,
                            ..k
                        };
                        let (qc, qf) = ConnKey::of(&qk);
                        if let Some(h) = shared.tables.peek(me, &qc, qf, self.now, &to) {
                            meta[i].ct = ct::KNOWN | ct::RELATED | remote_bit(h.remote);
                            self.state[i] = Some(h.state);
                            self.counters(k.vni).related += 1;
                        }
                        continue;
                    }
                    Icmp::Other => {
                        let (ck, fwd) = ConnKey::of(&k);
                        (ck, fwd, 0)
                    }
                },
                _ => {
                    let (ck, fwd) = ConnKey::of(&k);
                    (ck, fwd, 0)
                }
            };
            self.keys[i] = (ck, fwd);
            self.flags[i] = flags;
            self.tracked[i] = true;
            let hit = match &self.writer {
                Some(w) if !self.read_only => w.lookup(&ck, fwd, flags, self.now, &to),
                _ => shared.tables.peek(me, &ck, fwd, self.now, &to),
            };
            if let Some(h) = hit {
                meta[i].ct = ct::KNOWN | remote_bit(h.remote) | if h.reply { ct::REPLY } else { 0 };
                self.state[i] = Some(h.state);
                let c = self.counters(k.vni);
                c.hits += 1;
                c.remote_hits += u64::from(h.remote);
            }
        }
    }

    /// After the ACL: `classified` are the ACL stage's results of this burst
    /// (position, matched rule); allowed packets of stateful rules create
    /// their connection, and a full table drops them as `ct_full`.
    #[inline]
    pub fn commit(
        &mut self,
        t: &Tables,
        meta: &mut [Meta],
        v: &mut [Verdict],
        classified: impl Iterator<Item = (usize, u32)>,
    ) {
        if !self.active {
            return;
        }
        let Some(a) = &t.acl else { return };
        let to = t.ct_timeouts;
        for (i, matched) in classified {
            if !self.tracked[i] {
                continue;
            }
            let vni = meta[i].key.vni;
            if v[i] == Verdict::Drop(DropReason::AclDeny) {
                self.counters(vni).denied_new += 1;
                continue;
            }
            if v[i] != Verdict::Tx {
                continue;
            }
            let (ck, fwd) = self.keys[i];
            let Some(w) = self.writer.as_mut().filter(|_| !self.read_only) else {
                // Explain: say what would happen, change nothing.
                let stateful = a
                    .classifier
                    .get(matched)
                    .is_some_and(|r| r.is_stateful(a.classifier.action(acl::NO_MATCH, vni)));
                if stateful {
                    meta[i].ct |= ct::NEW;
                }
                continue;
            };
            match acl::conntrack::commit(
                w,
                &a.classifier,
                vni,
                matched,
                &ck,
                fwd,
                self.flags[i],
                self.now,
                &to,
            ) {
                Decision::Allowed { created: true, .. } => {
                    meta[i].ct |= ct::NEW;
                    self.counters(vni).created += 1;
                }
                Decision::Full { .. } => {
                    meta[i].ct |= ct::FULL;
                    v[i] = Verdict::Drop(DropReason::CtFull);
                    self.counters(vni).ct_full += 1;
                }
                _ => {}
            }
        }
    }
}

#[inline(always)]
fn remote_bit(remote: bool) -> u8 {
    if remote {
        ct::REMOTE
    } else {
        0
    }
}

#[inline(always)]
fn acl_key(k: &vxlan::FlowKey) -> acl::Key {
    acl::Key {
        vni: k.vni,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        v6: k.v6,
    }
}

/// The L4 header of the packet whose IP header is at `l3` (IPv6: only
/// directly after the fixed header; extension headers are not walked here).
#[inline(always)]
fn l4(d: &[u8], l3: usize, v6: bool) -> Option<&[u8]> {
    if v6 {
        d.get(l3 + 40..)
    } else {
        let hl = usize::from(d.get(l3)? & 0x0f) * 4;
        d.get(l3 + hl..)
    }
}

/// The TCP flags byte (0 if it cannot be read).
#[inline(always)]
fn tcp_flags(d: &[u8], l3: usize, v6: bool) -> u8 {
    if v6 && d.get(l3 + 6) != Some(&vxlan::proto::TCP) {
        return 0;
    }
    l4(d, l3, v6).and_then(|h| h.get(13).copied()).unwrap_or(0)
}

enum Icmp {
    /// Echo request or reply, with its identifier.
    Echo(u16),
    /// An error quoting a TCP/UDP packet: the reversed quoted flow.
    Error(vxlan::icmp::QuotedFlow),
    Other,
}

#[cold]
fn icmp_kind(d: &[u8], l3: usize, v6: bool) -> Icmp {
    use vxlan::icmp::{v4, v6 as i6};
    if v6 && d.get(l3 + 6) != Some(&vxlan::proto::ICMPV6) {
        return Icmp::Other;
    }
    let Some(msg) = l4(d, l3, v6) else {
        return Icmp::Other;
    };
    let Some(&ty) = msg.first() else {
        return Icmp::Other;
    };
    let echo = if v6 {
        ty == i6::ECHO_REQUEST || ty == i6::ECHO_REPLY
    } else {
        ty == v4::ECHO_REQUEST || ty == v4::ECHO_REPLY
    };
    if echo {
        return match msg.get(4..6) {
            Some(id) => Icmp::Echo(u16::from_be_bytes([id[0], id[1]])),
            None => Icmp::Other,
        };
    }
    match vxlan::icmp::quoted_flow(msg, v6) {
        Ok(Some(q)) => Icmp::Error(q),
        _ => Icmp::Other,
    }
}
