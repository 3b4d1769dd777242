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

/// What the lookup does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Not tracked (dropped already, a later fragment).
    None,
    /// Looked up (and, if new and allowed by a stateful rule, created).
    Tracked,
    /// An ICMP error: the connection it quotes is looked up.
    Related,
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
    kind: [Kind; MAX_BURST],
    hashes: [u64; MAX_BURST],
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
            kind: [Kind::None; MAX_BURST],
            hashes: [0; MAX_BURST],
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
    fn lookup_burst<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &[P],
        meta: &mut [Meta],
        v: &[Verdict],
    ) {
        self.ensure(t);
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let to = t.ct_timeouts;
        self.now = shared.now_ms();
        let me = self.writer.as_ref().map_or(0, |w| w.worker());
        let n = pkts.len();
        for i in 0..n {
            self.kind[i] = self.key_of(&pkts[i], &mut meta[i], v[i], i);
        }
        // The burst's set heads, then the bodies their tags point to, are
        // prefetched before any lookup: the cache misses overlap.
        for i in 0..n {
            if self.kind[i] != Kind::None {
                let h = self.keys[i].0.hash();
                self.hashes[i] = h;
                shared.tables.heads(h, crate::cpu::prefetch);
            }
        }
        for i in 0..n {
            if self.kind[i] != Kind::None {
                for w in 0..shared.tables.workers() {
                    shared
                        .tables
                        .bodies(w, self.hashes[i], crate::cpu::prefetch);
                }
            }
        }
        for (i, m) in meta.iter_mut().enumerate().take(n) {
            let (ck, fwd) = self.keys[i];
            let vni = ck.vni;
            match self.kind[i] {
                Kind::None => {}
                Kind::Related => {
                    // An ICMP error: related to a known connection? It never
                    // creates one.
                    if let Some(h) = shared.tables.peek(me, &ck, fwd, self.now, &to) {
                        m.ct = ct::KNOWN | ct::RELATED | remote_bit(h.remote);
                        self.state[i] = Some(h.state);
                        self.counters(vni).related += 1;
                    }
                }
                Kind::Tracked => {
                    self.tracked[i] = true;
                    let hit = match &self.writer {
                        Some(w) if !self.read_only => {
                            w.lookup(&ck, fwd, self.flags[i], self.now, &to)
                        }
                        _ => shared.tables.peek(me, &ck, fwd, self.now, &to),
                    };
                    if let Some(h) = hit {
                        m.ct =
                            ct::KNOWN | remote_bit(h.remote) | if h.reply { ct::REPLY } else { 0 };
                        self.state[i] = Some(h.state);
                        let c = self.counters(vni);
                        c.hits += 1;
                        c.remote_hits += u64::from(h.remote);
                    }
                }
            }
        }
    }

    /// The connection key of packet `i` (in `keys[i]`, its TCP flags in
    /// `flags[i]`) and what to do with it; resets its per-burst state.
    #[inline(always)]
    fn key_of<P: Packet>(&mut self, p: &P, m: &mut Meta, v: Verdict, i: usize) -> Kind {
        m.ct = 0;
        self.state[i] = None;
        self.tracked[i] = false;
        self.flags[i] = 0;
        if v != Verdict::Tx || m.frag == vxlan::FragKind::Later {
            return Kind::None;
        }
        let k = acl_key(&m.key);
        let l3 = m.l3_off as usize;
        let d = p.data();
        match k.proto {
            vxlan::proto::TCP => {
                self.keys[i] = ConnKey::of(&k);
                self.flags[i] = tcp_flags(d, l3, k.v6);
            }
            vxlan::proto::ICMP | vxlan::proto::ICMPV6 => match icmp_kind(d, l3, k.v6) {
                Icmp::Echo(id) => self.keys[i] = ConnKey::with_ports(&k, id, id),
                Icmp::Error(q) => {
                    let qk = acl::Key {
                        src: q.src,
                        dst: q.dst,
                        sport: q.sport,
                        dport: q.dport,
                        proto: q.proto,
                        ..k
                    };
                    self.keys[i] = ConnKey::of(&qk);
                    return Kind::Related;
                }
                Icmp::Other => self.keys[i] = ConnKey::of(&k),
            },
            _ => self.keys[i] = ConnKey::of(&k),
        }
        Kind::Tracked
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::io::buf::HeapBuf;
    use crate::pipeline::Pipeline;
    use std::net::{IpAddr, Ipv4Addr};

    const CFG: &str = "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [\"10.0.0.1\"]\n\
        [acl]\ndefault = \"allow\"\n[[acl.vni]]\nvni = 100\ndefault = \"deny\"\n\
        [[acl.rule]]\nvni = 100\nsrc = \"172.16.0.0/24\"\ndst = \"192.0.2.0/24\"\naction = \"allow\"\n";

    fn tables(extra: &str) -> Tables {
        let cfg = Config::parse(&format!("{CFG}{extra}")).unwrap();
        assert_eq!(cfg.validate(), Vec::<String>::new());
        Tables::build(&cfg, 1).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A VXLAN packet of VNI `vni` carrying `src:sport → dst:dport` (`proto`;
    /// TCP with `flags`), the inner frame changed by `edit`.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        vni: u32,
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        proto: u8,
        flags: u8,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let mut inner = Vec::new();
        vxlan::build_inner_frame(
            &vxlan::InnerSpec {
                src_mac: [2, 0, 0, 0, 0, 2],
                dst_mac: [2, 0, 0, 0, 0, 1],
                src: ip(src),
                dst: ip(dst),
                proto,
                sport,
                dport,
                ttl: 64,
                frame_len: 90,
            },
            &mut inner,
        );
        if proto == 6 {
            inner[14 + 20 + 13] = flags; // the TCP checksum is not looked at
        }
        edit(&mut inner);
        let o = vxlan::Outer {
            src_mac: [2, 0, 0, 0, 0, 9],
            dst_mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
            src_ip: ip("10.0.0.2"),
            dst_ip: ip("10.0.0.1"),
            ttl: 64,
        };
        let key = vxlan::FlowKey {
            vni,
            ..Default::default()
        };
        vxlan::encap::vxlan_encap_to_vec(&o, &key, 4789, &inner)
    }

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
        frame(100, src, sport, dst, dport, 6, flags, |_| {})
    }

    /// Runs one frame through `p`: its verdict and `Meta::ct`.
    fn run(p: &mut Pipeline, t: &Tables, f: &[u8]) -> (Verdict, u8) {
        let mut b = HeapBuf::with_capacity(f.len() + 256);
        b.load(f, 0);
        let mut pkts = [b];
        let mut meta = [Meta::default()];
        let mut v = [Verdict::Tx];
        p.run(t, 0, &mut pkts, &mut meta, &mut v);
        (v[0], meta[0].ct)
    }

    fn counters(p: &mut Pipeline, vni: u32) -> CtCounters {
        let mut tel = Telemetry::default();
        p.ct.flush_telemetry(&mut tel);
        tel.conntrack.get(&vni).copied().unwrap_or_default()
    }

    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    const ACK: u8 = 0x10;
    const DENY: Verdict = Verdict::Drop(DropReason::AclDeny);

    fn two_workers(t: &Tables) -> (Arc<CtShared>, Pipeline, Pipeline) {
        let s = CtShared::new(2, t.ct_capacity);
        let (mut a, mut b) = (Pipeline::default(), Pipeline::default());
        a.ct.attach(s.clone(), 0);
        b.ct.attach(s.clone(), 1);
        (s, a, b)
    }

    #[test]
    fn test_reply_on_other_worker_passes_and_far_side_cannot_open() {
        let t = tables("");
        assert!(t.ct_active, "an allow in a default-deny VNI is stateful");
        let (s, mut w0, mut w1) = two_workers(&t);
        let (c, srv) = ("172.16.0.5", "192.0.2.10");
        // Without a connection the reply direction is denied by the VNI default.
        assert_eq!(run(&mut w1, &t, &tcp(srv, 80, c, 40000, SYN_ACK)).0, DENY);
        let (v, bits) = run(&mut w0, &t, &tcp(c, 40000, srv, 80, SYN));
        assert_eq!(v, Verdict::Tx);
        assert_eq!(bits & ct::NEW, ct::NEW);
        // The reply on the other worker: found in worker 0's table.
        let (v, bits) = run(&mut w1, &t, &tcp(srv, 80, c, 40000, SYN_ACK));
        assert_eq!(v, Verdict::Tx);
        assert_eq!(bits, ct::KNOWN | ct::REPLY | ct::REMOTE);
        let (v, bits) = run(&mut w0, &t, &tcp(c, 40000, srv, 80, ACK));
        assert_eq!((v, bits), (Verdict::Tx, ct::KNOWN));
        // The server opening a connection toward the client: denied.
        assert_eq!(run(&mut w0, &t, &tcp(srv, 5555, c, 22, SYN)).0, DENY);
        assert_eq!(run(&mut w1, &t, &tcp(srv, 5555, c, 22, SYN)).0, DENY);
        // Another VNI's packet with the same tuple is another connection.
        let other = frame(200, srv, 80, c, 40000, 6, ACK, |_| {});
        assert_eq!(run(&mut w1, &t, &other).1 & ct::KNOWN, 0);
        let c0 = counters(&mut w0, 100);
        let c1 = counters(&mut w1, 100);
        assert_eq!((c0.created, c0.hits, c0.denied_new), (1, 1, 1));
        assert_eq!((c1.hits, c1.remote_hits, c1.denied_new), (1, 1, 2));
        let mut n = 0;
        s.tables.for_each(s.now_ms(), &t.ct_timeouts, |e| {
            n += 1;
            assert_eq!(e.worker, 0);
            assert_eq!(e.state, State::Established);
            let o = e.endpoints().0;
            assert_eq!(
                o,
                (u128::from(u32::from(Ipv4Addr::new(172, 16, 0, 5))), 40000)
            );
        });
        assert_eq!(n, 1);

        // After a flush, replies are denied until the originator sends again
        // (loose pickup: its next packet, mid-stream, re-creates the entry).
        s.tables.flush(None).unwrap();
        assert_eq!(run(&mut w1, &t, &tcp(srv, 80, c, 40000, ACK)).0, DENY);
        let (v, bits) = run(&mut w1, &t, &tcp(c, 40000, srv, 80, ACK));
        assert_eq!((v, bits), (Verdict::Tx, ct::NEW));
        let (v, bits) = run(&mut w0, &t, &tcp(srv, 80, c, 40000, ACK));
        assert_eq!((v, bits), (Verdict::Tx, ct::KNOWN | ct::REPLY | ct::REMOTE));
    }

    #[test]
    fn test_stateless_rule_and_no_stateful_rule() {
        // The same rule marked stateless: replies are denied.
        let t = tables("stateful = false\n");
        assert!(!t.ct_active);
        let (_s, mut w0, mut w1) = two_workers(&t);
        let (v, bits) = run(
            &mut w0,
            &t,
            &tcp("172.16.0.5", 40000, "192.0.2.10", 80, SYN),
        );
        assert_eq!((v, bits), (Verdict::Tx, 0));
        assert_eq!(
            run(
                &mut w1,
                &t,
                &tcp("192.0.2.10", 80, "172.16.0.5", 40000, SYN_ACK)
            )
            .0,
            DENY
        );
        assert_eq!(counters(&mut w0, 100), CtCounters::default());
    }

    #[test]
    fn test_full_table_denies_new_flows_only() {
        // 8 entries: one set.
        let t = tables("[conntrack]\ncapacity = 8\n");
        let mut p = Pipeline::default();
        for port in 0..8 {
            assert_eq!(
                run(
                    &mut p,
                    &t,
                    &tcp("172.16.0.5", 1000 + port, "192.0.2.10", 80, SYN)
                )
                .0,
                Verdict::Tx
            );
        }
        let (v, bits) = run(&mut p, &t, &tcp("172.16.0.5", 2000, "192.0.2.10", 80, SYN));
        assert_eq!((v, bits), (Verdict::Drop(DropReason::CtFull), ct::FULL));
        // Established ones keep flowing, both ways.
        assert_eq!(
            run(
                &mut p,
                &t,
                &tcp("192.0.2.10", 80, "172.16.0.5", 1003, SYN_ACK)
            )
            .0,
            Verdict::Tx
        );
        assert_eq!(counters(&mut p, 100).ct_full, 1);
    }

    #[test]
    fn test_icmp_echo_and_errors_quoting_a_connection() {
        let t = tables("[[acl.rule]]\nvni = 100\nsrc = \"172.16.0.0/24\"\nproto = \"icmp\"\naction = \"allow\"\n");
        let mut p = Pipeline::default();
        let echo = |src: &str, dst: &str, ty: u8, id: u16| {
            frame(100, src, 0, dst, 0, 1, 0, |f| {
                f[34] = ty;
                f[38..40].copy_from_slice(&id.to_be_bytes());
            })
        };
        let (c, srv) = ("172.16.0.5", "192.0.2.10");
        assert_eq!(
            run(&mut p, &t, &echo(srv, c, 0, 7)).0,
            DENY,
            "an unsolicited reply"
        );
        assert_eq!(run(&mut p, &t, &echo(c, srv, 8, 7)), (Verdict::Tx, ct::NEW));
        assert_eq!(
            run(&mut p, &t, &echo(srv, c, 0, 7)),
            (Verdict::Tx, ct::KNOWN | ct::REPLY)
        );
        assert_eq!(
            run(&mut p, &t, &echo(srv, c, 0, 8)).0,
            DENY,
            "another identifier"
        );
        // A router's "port unreachable" about the client's UDP flow.
        let unreachable = |sport: u16| {
            frame(100, "198.51.100.1", 0, c, 0, 1, 0, move |f| {
                let q = 34 + 8;
                f[34] = 3;
                f[35] = 3;
                f[q] = 0x45;
                f[q + 2..q + 4].copy_from_slice(&48u16.to_be_bytes());
                f[q + 6] = 0;
                f[q + 7] = 0;
                f[q + 9] = 17;
                f[q + 12..q + 16].copy_from_slice(&[172, 16, 0, 5]);
                f[q + 16..q + 20].copy_from_slice(&[192, 0, 2, 10]);
                f[q + 20..q + 22].copy_from_slice(&sport.to_be_bytes());
                f[q + 22..q + 24].copy_from_slice(&53u16.to_be_bytes());
            })
        };
        assert_eq!(
            run(&mut p, &t, &unreachable(5000)).0,
            DENY,
            "no such connection yet"
        );
        let udp = frame(100, c, 5000, srv, 53, 17, 0, |_| {});
        assert_eq!(run(&mut p, &t, &udp), (Verdict::Tx, ct::NEW));
        assert_eq!(
            run(&mut p, &t, &unreachable(5000)),
            (Verdict::Tx, ct::KNOWN | ct::RELATED)
        );
        assert_eq!(run(&mut p, &t, &unreachable(5001)).0, DENY);
        assert_eq!(counters(&mut p, 100).related, 1);
    }

    #[test]
    fn test_explain_shows_the_connection() {
        let t = tables("");
        let mut p = Pipeline::default();
        let req = tcp("172.16.0.5", 40000, "192.0.2.10", 80, SYN);
        let rep = tcp("192.0.2.10", 80, "172.16.0.5", 40000, SYN_ACK);
        let mut steps = Vec::new();
        // One burst each: a connection is seen from the next burst on.
        for f in [&req, &rep] {
            crate::pipeline::explain_frames(&mut p, &t, 0, &[f], 0, |_, r| {
                steps.push(r.steps.join("\n"));
            });
        }
        assert!(
            steps[0].contains("conntrack: no known connection"),
            "{}",
            steps[0]
        );
        assert!(
            steps[0].contains("the connection is created"),
            "{}",
            steps[0]
        );
        assert!(
            steps[1].contains("conntrack: hit (established, reply)"),
            "{}",
            steps[1]
        );
        assert!(!steps[1].contains("acl:"), "{}", steps[1]);
    }
}
