//! The gateway's burst stages. Each looks only at packets whose verdict is `Tx`.

use crate::config::NonVip;
use crate::engine::{Meta, Stage, Verdict};
use crate::io::Packet;
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

/// Tenant ACL (filled in by the ACL stage work).
#[derive(Default)]
pub struct Acl;

impl Stage for Acl {
    #[inline]
    fn process<P: Packet>(&mut self, _t: &Tables, _pkts: &mut [P], _meta: &mut [Meta], _v: &mut [Verdict]) {}
}

/// Service lookup and load balancing; non-service traffic follows `non_vip`.
#[derive(Default)]
pub struct Lb;

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
