//! The gateway's burst stages. Each looks only at packets whose verdict is `Tx`.

use crate::config::NonVip;
use crate::engine::{Meta, Stage, Verdict};
use crate::io::{Packet, MAX_BURST};
use crate::stats::DropReason;
use crate::tables::Tables;

#[inline(always)]
fn decap_reason(e: vxlan::DecapError) -> DropReason {
    use vxlan::DecapError as E;
    match e {
        E::Truncated => DropReason::Truncated,
        E::NotIp => DropReason::NotIp,
        E::BadIpHeader => DropReason::BadIpHeader,
        E::BadIpChecksum => DropReason::BadIpChecksum,
        E::OuterFragment => DropReason::OuterFragment,
        E::NotUdp => DropReason::NotUdp,
        E::NotVxlan => DropReason::NotVxlan,
        E::WrongVtep => DropReason::WrongVtep,
        E::BadVxlanFlags => DropReason::BadVxlanFlags,
        E::BadUdpLength => DropReason::BadUdpLength,
    }
}

/// Outer headers → VNI + inner Ethernet frame (the outer bytes are stripped in place).
#[derive(Default)]
pub struct Decap;

impl Stage for Decap {
    #[inline]
    fn process<P: Packet>(&mut self, t: &Tables, pkts: &mut [P], meta: &mut [Meta], v: &mut [Verdict]) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx {
                continue;
            }
            match vxlan::decap(pkts[i].data(), &t.decap) {
                Ok(d) => {
                    let p = &mut pkts[i];
                    p.trim(d.inner_offset + d.inner_len);
                    p.adj(d.inner_offset);
                    meta[i].vni = d.vni;
                    meta[i].finished = false;
                }
                Err(e) => v[i] = Verdict::Drop(decap_reason(e)),
            }
        }
    }
}

/// Inner Ethernet/IP/L4 → `FlowKey`.
#[derive(Default)]
pub struct InnerParse;

impl Stage for InnerParse {
    #[inline]
    fn process<P: Packet>(&mut self, _t: &Tables, pkts: &mut [P], meta: &mut [Meta], v: &mut [Verdict]) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx {
                continue;
            }
            match vxlan::parse_inner(pkts[i].data(), meta[i].vni) {
                Ok(inner) => {
                    meta[i].key = inner.key;
                    meta[i].l3_off = inner.l3_offset as u16;
                    // Ethernet padding after the IP packet is not forwarded.
                    pkts[i].trim(inner.l3_offset + inner.l3_len);
                }
                Err(vxlan::InnerError::Truncated) => v[i] = Verdict::Drop(DropReason::InnerTruncated),
                Err(vxlan::InnerError::NotIp) => v[i] = Verdict::Drop(DropReason::InnerNotIp),
                Err(vxlan::InnerError::BadHeader) => v[i] = Verdict::Drop(DropReason::InnerBadHeader),
            }
        }
    }
}

/// Tenant ACL: the burst's flow keys are classified at once; deny → `acl_deny`.
/// Keeps per-rule hit counters for the current snapshot.
pub struct Acl {
    keys: [acl::Key; MAX_BURST],
    pos: [u16; MAX_BURST],
    out: [u32; MAX_BURST],
    /// Hits per rule index of the snapshot `hits_generation`.
    pub hits: Vec<u64>,
    pub hits_generation: u64,
}

impl Default for Acl {
    fn default() -> Self {
        Acl {
            keys: [acl::Key::default(); MAX_BURST],
            pos: [0; MAX_BURST],
            out: [acl::NO_MATCH; MAX_BURST],
            hits: Vec::new(),
            hits_generation: 0,
        }
    }
}

impl Acl {
    /// Moves the hit counts into `into` (rule counter id → packets), zeroing them.
    pub fn drain_hits(&mut self, t: &Tables, into: &mut std::collections::HashMap<u32, u64>) {
        if let Some(a) = &t.acl {
            if self.hits_generation == t.generation {
                for (i, h) in self.hits.iter_mut().enumerate() {
                    if *h != 0 {
                        if let Some(id) = a.counter_ids.get(i) {
                            *into.entry(*id).or_insert(0) += *h;
                        }
                        *h = 0;
                    }
                }
            }
        }
    }
}

impl Stage for Acl {
    #[inline]
    fn process<P: Packet>(&mut self, t: &Tables, _pkts: &mut [P], meta: &mut [Meta], v: &mut [Verdict]) {
        let Some(a) = &t.acl else { return };
        if self.hits_generation != t.generation {
            // New rule set: counts of the old one were drained by the worker.
            self.hits.clear();
            self.hits.resize(a.classifier.len(), 0);
            self.hits_generation = t.generation;
        }
        let mut n = 0;
        for i in 0..meta.len() {
            if v[i] != Verdict::Tx {
                continue;
            }
            let k = &meta[i].key;
            self.keys[n] = acl::Key {
                vni: k.vni,
                src: k.src,
                dst: k.dst,
                sport: k.sport,
                dport: k.dport,
                proto: k.proto,
                v6: k.v6,
            };
            self.pos[n] = i as u16;
            n += 1;
        }
        if n == 0 {
            return;
        }
        a.classifier.classify_burst(&self.keys[..n], &mut self.out[..n]);
        for j in 0..n {
            let m = self.out[j];
            let i = self.pos[j] as usize;
            if m != acl::NO_MATCH {
                if let Some(h) = self.hits.get_mut(m as usize) {
                    *h += 1;
                }
            }
            if a.classifier.action(m, self.keys[j].vni) == acl::Action::Deny {
                v[i] = Verdict::Drop(DropReason::AclDeny);
            }
        }
    }
}

/// Service lookup and load balancing; non-service traffic follows `non_vip`.
#[derive(Default)]
pub struct Lb;

impl Lb {
    pub fn flush_telemetry(&mut self, _t: &Tables, _tel: &mut crate::engine::Telemetry) {}
}

impl Stage for Lb {
    #[inline]
    fn process<P: Packet>(&mut self, t: &Tables, _pkts: &mut [P], _meta: &mut [Meta], v: &mut [Verdict]) {
        if t.non_vip == NonVip::Drop {
            for x in v.iter_mut() {
                if *x == Verdict::Tx {
                    *x = Verdict::Drop(DropReason::NonVip);
                }
            }
        }
    }
}

/// Routes a decapsulated inner packet to the next hop: TTL/hop limit decremented
/// (expired → drop), MACs rewritten to local → next hop.
#[derive(Default)]
pub struct Route;

impl Stage for Route {
    #[inline]
    fn process<P: Packet>(&mut self, t: &Tables, pkts: &mut [P], meta: &mut [Meta], v: &mut [Verdict]) {
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx || meta[i].finished {
                continue;
            }
            let data = pkts[i].data_mut();
            let l3 = meta[i].l3_off as usize;
            if vxlan::decrement_ttl(&mut data[l3..]).is_err() {
                v[i] = Verdict::Drop(DropReason::TtlExpired);
                continue;
            }
            vxlan::set_macs(data, t.local_mac, t.next_hop_mac);
        }
    }
}
