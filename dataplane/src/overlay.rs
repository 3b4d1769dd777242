//! Outside → overlay: plain IP packets to a tenant address are encapsulated
//! into the tenant's VNI, to the VTEP the address lives behind; and the
//! address → VTEP table ([`vxlan::fdb`]) is learned from the tenants' own
//! decapsulated traffic.
//!
//! * The decap stage hands a non-VXLAN IPv4/IPv6 packet whose destination is
//!   in a tenant's prefixes ([`inbound_tenant`]) on with `meta.inbound` set
//!   and `meta.vni` = the tenant; the inner parse, the fragment stage, the
//!   conntrack and the ACL see it as any other packet of that VNI.
//! * [`Overlay`] runs after the ACL (so only what the ACL let through
//!   teaches or is sent):
//!   - a decapsulated packet of a tenant whose inner source is inside the
//!     tenant's prefixes (and has no static entry) teaches "source → outer
//!     source VTEP, inner source MAC";
//!   - an inbound packet is sent to its destination's static entry, else its
//!     learned one, else dropped (`no_vtep`): TTL decremented, inner MACs
//!     gateway → the address's MAC, VXLAN or Geneve with the gateway's VTEP
//!     as source and the outer UDP source port from the inner flow hash
//!     (RFC 7348 §5), under the MTU (ICMP "too big" back to the sender, or
//!     `mtu_exceeded`).

use crate::burst::{Meta, Stage, Verdict};
use crate::io::{Packet, MAX_BURST};
use crate::stats::DropReason;
use crate::tables::Tables;

/// The tenant (VNI) a plain frame is addressed to, if any: its destination
/// IPv4/IPv6 address is inside a tenant prefix. `None` without tenants.
#[inline]
pub fn inbound_tenant(frame: &[u8], t: &Tables) -> Option<u32> {
    let o = t.overlay.as_ref()?;
    let (a, v6) = plain_dst(frame)?;
    o.tenant_of(a, v6)
}

/// The tenant a plain (not VXLAN/Geneve for us) frame belongs to, and
/// whether it is to be sent into it (`true`, [`inbound_tenant`]) or is an
/// ICMP error for the LB stage (`false`, [`icmp_error_tenant`]).
#[inline]
pub fn plain_tenant(frame: &[u8], t: &Tables) -> Option<(u32, bool)> {
    t.overlay.as_ref()?;
    inbound_tenant(frame, t)
        .map(|v| (v, true))
        .or_else(|| icmp_error_tenant(frame, t).map(|v| (v, false)))
}

/// For a plain ICMP/ICMPv6 error addressed to a service VIP (a router on the
/// path of a backend's direct reply to a client, e.g. "fragmentation
/// needed"): the tenant (VNI) of the client its quote is about, i.e. whose
/// prefixes hold the quoted destination. The LB stage then sends the error
/// to the backend owning that client's flow. `None` for anything else.
#[cold]
#[inline(never)]
pub fn icmp_error_tenant(frame: &[u8], t: &Tables) -> Option<u32> {
    let o = t.overlay.as_ref()?;
    let inner = vxlan::parse_inner(frame, 0).ok()?;
    let k = &inner.key;
    if k.proto != vxlan::proto::ICMP && k.proto != vxlan::proto::ICMPV6 {
        return None;
    }
    if !t.frag_vips.iter().any(|e| e.0 == k.dst && e.1 == k.v6) {
        return None;
    }
    let ip = frame.get(inner.l3_offset..inner.l3_offset + inner.l3_len)?;
    let hl = if k.v6 {
        40
    } else {
        usize::from(ip.first()? & 0x0f) * 4
    };
    let q = vxlan::icmp::quoted_flow(ip.get(hl..)?, k.v6).ok()??;
    o.tenant_of(q.src, k.v6)
}

/// The destination address of an Ethernet (up to two VLAN tags) IPv4/IPv6
/// frame.
fn plain_dst(f: &[u8]) -> Option<(u128, bool)> {
    let (et, l3) = vxlan::ethernet::walk(f).ok()?;
    let ip = f.get(l3..)?;
    match et {
        vxlan::ethernet::ethertype::IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            Some((u128::from(u32::from_be_bytes(d)), false))
        }
        vxlan::ethernet::ethertype::IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            Some((u128::from_be_bytes(d), true))
        }
        _ => None,
    }
}

/// The outer source address of a decapsulated packet, read from its outer
/// headers (still in the headroom, `m.outer_len` bytes before the data).
fn outer_src<P: Packet>(p: &mut P, m: &Meta) -> Option<(u128, bool)> {
    let n = m.outer_len as usize;
    if n == 0 || !p.prepend(n) {
        return None;
    }
    let r = (|| {
        let h = &p.data()[..n];
        let (et, l3) = vxlan::ethernet::walk(h).ok()?;
        let ip = h.get(l3..)?;
        match et {
            vxlan::ethernet::ethertype::IPV4 if ip.len() >= 20 => {
                let s: [u8; 4] = ip[12..16].try_into().ok()?;
                Some((u128::from(u32::from_be_bytes(s)), false))
            }
            vxlan::ethernet::ethertype::IPV6 if ip.len() >= 40 => {
                let s: [u8; 16] = ip[8..24].try_into().ok()?;
                Some((u128::from_be_bytes(s), true))
            }
            _ => None,
        }
    })();
    p.adj(n);
    r
}

/// What the stage did with one packet (for `explain` and `trace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Note {
    #[default]
    None,
    /// Sent into the tenant to this VTEP (true: a static entry).
    ToVtep(vxlan::fdb::VtepEntry, bool),
    /// Inbound, no entry for its destination.
    NoVtep,
    /// Inbound, too big once encapsulated.
    TooBig,
    /// Taught the table where its source lives.
    Learned(vxlan::fdb::Learned),
}

/// The stage (see the module doc).
pub struct Overlay {
    budget: Option<vxlan::fdb::LearnBudget>,
    /// Destination MAC of the outer frames of the current burst.
    pub next_hop: [u8; 6],
    /// The next hop's MAC is not known (ARP/ND pending): drop.
    pub unresolved: bool,
    pub counters: crate::stats::OverlayTelemetry,
    /// ICMP "too big" replies sent to outside senders.
    pub icmp_too_big: u64,
    /// What happened to each packet of the last burst (kept only while `observe`).
    pub notes: [Note; MAX_BURST],
    pub observe: bool,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            budget: None,
            next_hop: [0; 6],
            unresolved: false,
            counters: crate::stats::OverlayTelemetry::default(),
            icmp_too_big: 0,
            notes: [Note::None; MAX_BURST],
            observe: false,
        }
    }
}

impl Stage for Overlay {
    #[inline]
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        v: &mut [Verdict],
    ) {
        let (Some(o), Some(fdb)) = (&t.overlay, &t.fdb) else {
            return;
        };
        if self.observe {
            self.notes[..pkts.len()].fill(Note::None);
        }
        // The table's sets of the burst's packets, prefetched: their cache
        // misses overlap instead of adding up.
        for i in 0..pkts.len() {
            let m = &meta[i];
            if v[i] != Verdict::Tx || m.finished {
                continue;
            }
            let a = if m.inbound { m.key.dst } else { m.key.src };
            crate::cpu::prefetch(fdb.fdb.set_addr(m.vni, a, m.key.v6));
        }
        let mut now = 0;
        for i in 0..pkts.len() {
            if v[i] != Verdict::Tx || meta[i].finished {
                continue;
            }
            let m = &meta[i];
            if now == 0 && (m.inbound || o.encap_of(m.vni).is_some()) {
                now = fdb.now_s();
            }
            if m.inbound {
                let note = self.send_in(t, o, fdb, now, &mut pkts[i], &mut meta[i], &mut v[i]);
                if self.observe {
                    self.notes[i] = note;
                }
                continue;
            }
            let k = &m.key;
            if o.encap_of(m.vni).is_none()
                || !o.holds(m.vni, k.src, k.v6)
                || o.static_of(m.vni, k.src, k.v6).is_some()
            {
                continue;
            }
            let Some((vtep, vtep_v6)) = outer_src(&mut pkts[i], m) else {
                continue;
            };
            let Some(mac) = pkts[i].data().get(6..12) else {
                continue;
            };
            let at = vxlan::fdb::VtepEntry {
                vtep,
                vtep_v6,
                mac: mac.try_into().unwrap_or([0; 6]),
            };
            let rate = o.learn_rate;
            let budget = self
                .budget
                .get_or_insert_with(|| vxlan::fdb::LearnBudget::new(rate));
            let r = fdb.fdb.learn(m.vni, k.src, k.v6, &at, now, budget);
            if self.observe {
                self.notes[i] = Note::Learned(r);
            }
        }
    }
}

impl Overlay {
    /// Encapsulates the inbound packet `p` into its tenant (see the module doc).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn send_in<P: Packet>(
        &mut self,
        t: &Tables,
        o: &crate::tables::Overlay,
        fdb: &crate::tables::FdbHandle,
        now: u32,
        p: &mut P,
        m: &mut Meta,
        v: &mut Verdict,
    ) -> Note {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let (vni, dst, v6) = (m.vni, m.key.dst, m.key.v6);
        let (e, stat) = match o.static_of(vni, dst, v6) {
            Some(e) => (*e, true),
            None => match fdb.fdb.lookup(vni, dst, v6, now) {
                Some(e) => (e, false),
                None => {
                    *v = Verdict::Drop(DropReason::NoVtep);
                    return Note::NoVtep;
                }
            },
        };
        let src_ip = if e.vtep_v6 {
            o.src_v6.map(IpAddr::V6)
        } else {
            o.src_v4.map(IpAddr::V4)
        };
        let Some(src_ip) = src_ip else {
            *v = Verdict::Drop(DropReason::NoVtep);
            return Note::NoVtep;
        };
        if self.unresolved {
            *v = Verdict::Drop(DropReason::NextHopUnresolved);
            return Note::ToVtep(e, stat);
        }
        let dst_ip = if e.vtep_v6 {
            IpAddr::V6(Ipv6Addr::from(e.vtep))
        } else {
            IpAddr::V4(Ipv4Addr::from(e.vtep as u32))
        };
        let outer = vxlan::Outer {
            src_mac: t.local_mac,
            dst_mac: self.next_hop,
            vlan: None,
            src_ip,
            dst_ip,
            ttl: 64,
        };
        let l3 = m.l3_off as usize;
        // The inner frame: one plain Ethernet header (tags of the outside
        // link are not carried in), then the IP packet.
        let ip_len = p.data().len() - l3;
        let hl = vxlan::vxlan_header_len(&outer);
        if ip_len + hl > t.mtu as usize {
            let room = (t.mtu as usize).saturating_sub(hl);
            return if crate::icmp::too_big_reply_plain(p, m, room as u32, t.local_mac) {
                m.finished = true;
                self.icmp_too_big += 1;
                Note::TooBig
            } else {
                *v = Verdict::Drop(DropReason::MtuExceeded);
                Note::TooBig
            };
        }
        if vxlan::decrement_ttl(&mut p.data_mut()[l3..]).is_err() {
            *v = Verdict::Drop(DropReason::TtlExpired);
            return Note::ToVtep(e, stat);
        }
        let et = p.data()[l3 - 2..l3].try_into().unwrap_or([0x08, 0]);
        if l3 > 14 {
            p.adj(l3 - 14);
            m.l3_off = 14;
        }
        {
            let d = p.data_mut();
            vxlan::set_macs(d, t.local_mac, e.mac);
            d[12..14].copy_from_slice(&et);
        }
        if !p.prepend(hl) {
            *v = Verdict::Drop(DropReason::NoHeadroom);
            return Note::ToVtep(e, stat);
        }
        let (hdr, inner) = p.data_mut().split_at_mut(hl);
        let sport = vxlan::flow_src_port(&m.key);
        match o.encap_of(vni) {
            Some(ctl::OverlayEncap::Geneve) => {
                vxlan::emit_geneve(&outer, sport, t.geneve_dst_port, vni, inner, hdr)
            }
            _ => vxlan::emit_vxlan(&outer, sport, t.vxlan_dst_port, vni, inner, hdr),
        }
        m.finished = true;
        self.counters.encapsulated += 1;
        self.counters.to_static += u64::from(stat);
        Note::ToVtep(e, stat)
    }
}

#[cfg(test)]
mod tests {
    //! Through the whole pipeline; what leaves is taken apart with etherparse.
    use super::*;
    use crate::config::Config;
    use crate::io::buf::HeapBuf;
    use crate::pipeline::Pipeline;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use std::net::{IpAddr, Ipv4Addr};

    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
    const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];

    fn tables(extra: &str) -> crate::tables::Tables {
        let text = format!(
            "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nvtep_ips = [\"198.18.0.1\"]\n\
             local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\nmtu = 1500\n\
             [[tenant]]\nvni = 100\nprefixes = [\"172.16.0.0/16\"]\n{extra}"
        );
        crate::tables::Tables::build(&Config::parse(&text).unwrap(), 1).unwrap()
    }

    fn ip4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A VXLAN frame from VTEP `vtep` (VNI 100) carrying UDP `src` → `dst`.
    fn from_overlay(vtep: &str, src: &str, dst: &str, len: usize) -> Vec<u8> {
        let mut inner = Vec::new();
        vxlan::build_inner_frame(
            &vxlan::InnerSpec {
                src_mac: CLIENT_MAC,
                dst_mac: GW_MAC,
                src: ip4(src),
                dst: ip4(dst),
                proto: 17,
                sport: 5000,
                dport: 53,
                ttl: 64,
                frame_len: len,
            },
            &mut inner,
        );
        let outer = vxlan::Outer {
            src_mac: ROUTER_MAC,
            dst_mac: GW_MAC,
            vlan: None,
            src_ip: ip4(vtep),
            dst_ip: ip4("198.18.0.1"),
            ttl: 64,
        };
        let hl = vxlan::vxlan_header_len(&outer);
        let mut f = vec![0u8; hl + inner.len()];
        let (h, i) = f.split_at_mut(hl);
        i.copy_from_slice(&inner);
        vxlan::emit_vxlan(&outer, 49152, 4789, 100, i, h);
        f
    }

    /// A plain frame from the outside: UDP `src` → `dst`, `len` bytes.
    fn from_outside(src: &str, dst: &str, len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        vxlan::build_inner_frame(
            &vxlan::InnerSpec {
                src_mac: ROUTER_MAC,
                dst_mac: GW_MAC,
                src: ip4(src),
                dst: ip4(dst),
                proto: 17,
                sport: 53,
                dport: 5000,
                ttl: 64,
                frame_len: len,
            },
            &mut f,
        );
        f
    }

    fn run(p: &mut Pipeline, t: &crate::tables::Tables, f: &[u8]) -> (Verdict, Vec<u8>, Meta) {
        let mut b = HeapBuf::with_capacity(4096);
        b.load(f, 0);
        let mut pkts = [b];
        let mut meta = [Meta::default()];
        let mut v = [Verdict::Tx];
        p.run(t, 0, &mut pkts, &mut meta, &mut v);
        (v[0], pkts[0].data().to_vec(), meta[0])
    }

    #[test]
    fn test_reply_from_outside_goes_to_the_learned_vtep() {
        let t = tables("");
        let mut p = Pipeline::default();
        // Unknown yet: no_vtep.
        let (v, _, _) = run(
            &mut p,
            &t,
            &from_outside("203.0.113.10", "172.16.0.10", 100),
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoVtep));
        // The client's request teaches where it lives, and is routed out.
        let (v, _, _) = run(
            &mut p,
            &t,
            &from_overlay("198.18.1.10", "172.16.0.10", "203.0.113.10", 100),
        );
        assert_eq!(v, Verdict::Tx);
        let fdb = &t.fdb.as_ref().unwrap().fdb;
        assert_eq!(fdb.counters().new, 1);
        // The reply: VXLAN VNI 100 from our VTEP to the client's, inner
        // frame gateway → client MAC, TTL decremented.
        let req = from_outside("203.0.113.10", "172.16.0.10", 100);
        let (v, out, m) = run(&mut p, &t, &req);
        assert_eq!(v, Verdict::Tx);
        assert!(m.finished && m.inbound);
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            ip.header().destination_addr(),
            Ipv4Addr::new(198, 18, 1, 10)
        );
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!()
        };
        assert_eq!(u.destination_port(), 4789);
        assert!(u.source_port() >= 49152, "RFC 7348 source port range");
        let vx = u.payload();
        assert_eq!(&vx[..8], &[0x08, 0, 0, 0, 0, 0, 100, 0]);
        let inner = &vx[8..];
        assert_eq!(&inner[..6], &CLIENT_MAC);
        assert_eq!(&inner[6..12], &GW_MAC);
        assert_eq!(&out[..6], &ROUTER_MAC, "outer frame to the next hop");
        let si = SlicedPacket::from_ethernet(inner).unwrap();
        let Some(NetSlice::Ipv4(iip)) = &si.net else {
            panic!()
        };
        assert_eq!(iip.header().ttl(), 63);
        assert_eq!(
            iip.header().destination_addr(),
            Ipv4Addr::new(172, 16, 0, 10)
        );
        assert_eq!(inner.len(), req.len(), "the inner frame is the packet");
        // The same flow gets the same source port; the inner checksum is valid.
        let (_, out2, _) = run(&mut p, &t, &req);
        assert_eq!(out2, out);
        assert_eq!(
            iip.header().header_checksum(),
            iip.header().to_header().calc_header_checksum()
        );
        assert_eq!(p.overlay.counters.encapsulated, 2);
        // Not a tenant address: as before, not_vxlan.
        let (v, _, _) = run(&mut p, &t, &from_outside("203.0.113.10", "10.9.9.9", 100));
        assert_eq!(v, Verdict::Drop(DropReason::NotVxlan));
    }

    #[test]
    fn test_learning_follows_moves_and_ignores_spoofed_sources() {
        let t = tables("");
        let mut p = Pipeline::default();
        let fdb = &t.fdb.as_ref().unwrap().fdb;
        // A source outside the tenant's prefixes teaches nothing.
        run(
            &mut p,
            &t,
            &from_overlay("198.18.1.66", "10.99.0.5", "203.0.113.10", 100),
        );
        assert_eq!(fdb.counters().new, 0);
        assert!(fdb.entries(1).is_empty());
        run(
            &mut p,
            &t,
            &from_overlay("198.18.1.10", "172.16.0.10", "203.0.113.10", 100),
        );
        run(
            &mut p,
            &t,
            &from_overlay("198.18.1.20", "172.16.0.10", "203.0.113.10", 100),
        );
        assert_eq!(fdb.counters().moved, 1);
        let (_, out, _) = run(
            &mut p,
            &t,
            &from_outside("203.0.113.10", "172.16.0.10", 100),
        );
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(
            ip.header().destination_addr(),
            Ipv4Addr::new(198, 18, 1, 20)
        );
    }

    #[test]
    fn test_acl_denied_sources_teach_nothing_and_static_entries_win() {
        let t = tables(
            "[[tenant.vtep]]\naddr = \"172.16.0.99\"\nvtep = \"198.18.1.99\"\nmac = \"02:00:00:00:00:99\"\n\
             [acl]\ndefault = \"allow\"\n[[acl.rule]]\nsrc = \"172.16.5.0/24\"\naction = \"deny\"\n",
        );
        let mut p = Pipeline::default();
        let fdb = &t.fdb.as_ref().unwrap().fdb;
        let (v, _, _) = run(
            &mut p,
            &t,
            &from_overlay("198.18.1.10", "172.16.5.1", "203.0.113.10", 100),
        );
        assert_eq!(v, Verdict::Drop(DropReason::AclDeny));
        assert_eq!(fdb.counters().new, 0);
        // A packet claiming the static address from elsewhere moves nothing.
        run(
            &mut p,
            &t,
            &from_overlay("198.18.1.10", "172.16.0.99", "203.0.113.10", 100),
        );
        assert_eq!(fdb.counters().new, 0);
        let (v, out, _) = run(
            &mut p,
            &t,
            &from_outside("203.0.113.10", "172.16.0.99", 100),
        );
        assert_eq!(v, Verdict::Tx);
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(
            ip.header().destination_addr(),
            Ipv4Addr::new(198, 18, 1, 99)
        );
        assert_eq!(p.overlay.counters.to_static, 1);
    }

    /// A router's "fragmentation needed" for a backend's direct reply to a
    /// tenant client reaches the gateway as plain IP to the VIP: it goes to
    /// the backend owning the client's flow, in the client's VNI.
    #[test]
    fn test_plain_icmp_error_to_a_vip_reaches_the_flow_owner() {
        use etherparse::{Icmpv4Type, PacketBuilder};
        let t = tables(
            "[[service]]\nname = \"web\"\nvip = \"10.96.0.100\"\nport = 80\nproto = \"tcp\"\nencap = \"vxlan\"\n\
             [[service.backend]]\nip = \"198.18.2.11\"\nmac = \"02:00:00:00:01:01\"\n",
        );
        let mut p = Pipeline::default();
        // The quoted packet: the backend's reply VIP:80 -> 172.16.0.10:40000.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4([10, 96, 0, 100], [172, 16, 0, 10], 63)
            .tcp(80, 40000, 1, 1000)
            .write(&mut quoted, &[0u8; 64])
            .unwrap();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, GW_MAC)
            .ipv4([198, 18, 1, 1], [10, 96, 0, 100], 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut f, &quoted[..28 + 20])
            .unwrap();
        let (v, out, m) = run(&mut p, &t, &f);
        assert_eq!(v, Verdict::Tx);
        assert!(m.finished && !m.inbound && m.vni == 100);
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(
            ip.header().destination_addr(),
            Ipv4Addr::new(198, 18, 2, 11)
        );
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!()
        };
        assert_eq!(&u.payload()[4..7], &[0, 0, 100], "the client's VNI");
        assert_eq!(&u.payload()[8 + 14..], &f[14..], "the error, unchanged");
        assert_eq!(p.lb.icmp_errors_forwarded, 1);
        // About a client of no tenant: dropped as before.
        let mut q2 = quoted.clone();
        q2[16..20].copy_from_slice(&[10, 9, 9, 9]);
        let mut f2 = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, GW_MAC)
            .ipv4([198, 18, 1, 1], [10, 96, 0, 100], 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut f2, &q2[..48])
            .unwrap();
        let (v, _, _) = run(&mut p, &t, &f2);
        assert_eq!(v, Verdict::Drop(DropReason::NotUdp));
    }

    #[test]
    fn test_too_big_for_the_tunnel_answers_the_sender() {
        let t = tables("[[tenant.vtep]]\naddr = \"172.16.0.99\"\nvtep = \"198.18.1.99\"\n");
        let mut p = Pipeline::default();
        // A 1500-byte IP packet with DF + 50 bytes of VXLAN > 1500: frag needed.
        let mut f = from_outside("203.0.113.10", "172.16.0.99", 14 + 1500);
        f[14 + 6] |= 0x40;
        // Fix the IPv4 header checksum after setting DF.
        f[14 + 10] = 0;
        f[14 + 11] = 0;
        let c = vxlan::checksum::checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        let (v, out, _) = run(&mut p, &t, &f);
        assert_eq!(v, Verdict::Tx);
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        assert_eq!(&out[..6], &ROUTER_MAC);
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(
            ip.header().destination_addr(),
            Ipv4Addr::new(203, 0, 113, 10)
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!(icmp.type_u8(), 3);
        assert_eq!(icmp.code_u8(), 4);
        // Next-hop MTU: 1500 - 50.
        assert_eq!(
            u16::from_be_bytes([icmp.bytes5to8()[2], icmp.bytes5to8()[3]]),
            1450
        );
        assert_eq!(p.overlay.icmp_too_big, 1);
    }
}
