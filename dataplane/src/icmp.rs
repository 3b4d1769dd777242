//! "Fragmentation needed" (ICMP type 3 code 4) and "packet too big" (ICMPv6
//! type 2) replies for packets that would exceed the link MTU once
//! encapsulated to a backend. The reply goes back the way the packet came: as
//! VXLAN from the VTEP it was sent to, to the VTEP that sent it, in the same
//! VNI; its inner packet is from the VIP to the client and quotes the start of
//! the client's packet (RFC 792 / RFC 4443), so the client's stack lowers its
//! path MTU for that destination.
//!
//! It is built in place, in the buffer of the packet it answers: that packet
//! was larger than the MTU, so the reply (at most ~200 bytes) always fits.

use std::net::{Ipv4Addr, Ipv6Addr};

use vxlan::ethernet::{self, EthernetFrame, EthernetRepr};
use vxlan::icmp::{self, IcmpPacket, IcmpRepr};
use vxlan::ipv4::{self, Ipv4Repr};
use vxlan::ipv6::{self, Ipv6Repr};
use vxlan::{proto, udp};

use crate::burst::Meta;
use crate::io::Packet;

/// Bytes of the offending packet quoted in the reply (its IP header and the
/// start of its payload).
const QUOTE: usize = 128;

/// TTL / hop limit of the reply's inner packet and of its outer header.
const REPLY_TTL: u8 = 64;

/// The shortest outer headers of a VXLAN packet: Ethernet, IPv4, UDP, VXLAN.
const MIN_OUTER_LEN: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::vxlan::HEADER_LEN;

/// Turns `p` — the decapsulated inner frame (Ethernet at offset 0, IP at
/// `m.l3_off`), whose original outer headers are still in the headroom (the
/// `m.outer_len` bytes before it) — into the ICMP reply to the client,
/// announcing `mtu` (the largest inner IP packet that fits). `local_mac` is our
/// source MAC. Returns false (packet unchanged in meaning, to be dropped) if
/// the outer headers cannot be recovered.
pub fn too_big_reply<P: Packet>(p: &mut P, m: &Meta, mtu: u32, local_mac: [u8; 6]) -> bool {
    let l3 = m.l3_off as usize;
    let outer_len = m.outer_len as usize;
    let data = p.data();
    if data.len() < l3 + ipv4::HEADER_LEN || outer_len < MIN_OUTER_LEN {
        return false;
    }
    // The client's inner frame: MACs, and the quote.
    let Ok(client_eth) = EthernetFrame::new_checked(data) else {
        return false;
    };
    let (inner_dst_mac, inner_src_mac) = (client_eth.dst_addr(), client_eth.src_addr());
    let mut quote = [0u8; QUOTE];
    let qn = (data.len() - l3).min(QUOTE);
    quote[..qn].copy_from_slice(&data[l3..l3 + qn]);
    let inner_v6 = m.key.v6;
    // The original outer headers, still in front of the data.
    if !p.prepend(outer_len) {
        return false;
    }
    let tunnel_len = if m.geneve_len != 0 {
        usize::from(m.geneve_len)
    } else {
        vxlan::vxlan::HEADER_LEN
    };
    let Ok(came) = vxlan::outer_endpoints_tunnel(&p.data()[..outer_len], tunnel_len) else {
        p.adj(outer_len);
        return false;
    };
    // The reply's inner IP packet, built on the stack.
    let mut ip = [0u8; ipv6::HEADER_LEN + icmp::HEADER_LEN + QUOTE];
    let Some(ip_len) = reply_ip(&mut ip, m, mtu, &quote[..qn]) else {
        p.adj(outer_len);
        return false;
    };
    let outer = vxlan::Outer {
        src_mac: local_mac,
        dst_mac: came.src_mac,
        vlan: None,
        src_ip: came.dst_ip,
        dst_ip: came.src_ip,
        ttl: REPLY_TTL,
    };
    let hl = vxlan::vxlan_header_len(&outer);
    let inner_frame_len = ethernet::HEADER_LEN + ip_len;
    let total = hl + inner_frame_len;
    if p.data().len() < total {
        p.adj(outer_len);
        return false;
    }
    p.trim(total);
    let d = p.data_mut();
    let (hdr, inner) = d.split_at_mut(hl);
    // Inner Ethernet: back to the client, from the MAC it sent to.
    let eth = EthernetRepr {
        src: inner_dst_mac,
        dst: inner_src_mac,
        tags: [None, None],
        ethertype: if inner_v6 {
            ethernet::ethertype::IPV6
        } else {
            ethernet::ethertype::IPV4
        },
    };
    let Ok(eth_len) = eth.emit(inner) else {
        return false;
    };
    inner[eth_len..eth_len + ip_len].copy_from_slice(&ip[..ip_len]);
    let sport = vxlan::flow_src_port(&m.key.reversed());
    // Back over the tunnel it came by (Geneve without options).
    if m.geneve_len != 0 {
        vxlan::emit_geneve(&outer, sport, came.dst_port, m.vni, inner, hdr);
    } else {
        vxlan::emit_vxlan(&outer, sport, came.dst_port, m.vni, inner, hdr);
    }
    true
}

/// [`too_big_reply`] for a plain packet from the outside (no outer headers):
/// the reply goes back to the sender as a plain frame, to the MAC the packet
/// came from. Returns false if it cannot be built (the packet is dropped).
pub fn too_big_reply_plain<P: Packet>(p: &mut P, m: &Meta, mtu: u32, local_mac: [u8; 6]) -> bool {
    let l3 = m.l3_off as usize;
    let data = p.data();
    if data.len() < l3 + ipv4::HEADER_LEN {
        return false;
    }
    let Ok(eth) = EthernetFrame::new_checked(data) else {
        return false;
    };
    let came_from = eth.src_addr();
    let mut quote = [0u8; QUOTE];
    let qn = (data.len() - l3).min(QUOTE);
    quote[..qn].copy_from_slice(&data[l3..l3 + qn]);
    let mut ip = [0u8; ipv6::HEADER_LEN + icmp::HEADER_LEN + QUOTE];
    let Some(ip_len) = reply_ip(&mut ip, m, mtu, &quote[..qn]) else {
        return false;
    };
    let total = ethernet::HEADER_LEN + ip_len;
    if p.data().len() < total {
        return false;
    }
    p.trim(total);
    let d = p.data_mut();
    let eth = EthernetRepr {
        src: local_mac,
        dst: came_from,
        tags: [None, None],
        ethertype: if m.key.v6 {
            ethernet::ethertype::IPV6
        } else {
            ethernet::ethertype::IPV4
        },
    };
    let Ok(eth_len) = eth.emit(d) else {
        return false;
    };
    d[eth_len..eth_len + ip_len].copy_from_slice(&ip[..ip_len]);
    true
}

/// Writes the reply's IP packet into `ip`: from the VIP to the client, an
/// ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" announcing
/// `mtu` and quoting `quote`. Returns its length.
fn reply_ip(ip: &mut [u8], m: &Meta, mtu: u32, quote: &[u8]) -> Option<usize> {
    let icmp_len = icmp::HEADER_LEN + quote.len();
    if m.key.v6 {
        let (src, dst) = (Ipv6Addr::from(m.key.dst), Ipv6Addr::from(m.key.src));
        let hl = Ipv6Repr {
            src,
            dst,
            next_header: proto::ICMPV6,
            payload_len: icmp_len,
            hop_limit: REPLY_TTL,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(ip)
        .ok()?;
        let msg = ip.get_mut(hl..hl + icmp_len)?;
        IcmpRepr::packet_too_big(mtu.max(ipv6::MIN_MTU))
            .emit(msg)
            .ok()?;
        let mut msg = IcmpPacket::new_checked(msg).ok()?;
        msg.data_mut().copy_from_slice(quote);
        msg.fill_checksum_v6(src, dst);
        Some(hl + icmp_len)
    } else {
        let hl = Ipv4Repr {
            src: Ipv4Addr::from(m.key.dst as u32),
            dst: Ipv4Addr::from(m.key.src as u32),
            protocol: proto::ICMP,
            payload_len: icmp_len,
            ttl: REPLY_TTL,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(ip)
        .ok()?;
        let msg = ip.get_mut(hl..hl + icmp_len)?;
        IcmpRepr::frag_needed(mtu.min(u32::from(u16::MAX)) as u16)
            .emit(msg)
            .ok()?;
        let mut msg = IcmpPacket::new_checked(msg).ok()?;
        msg.data_mut().copy_from_slice(quote);
        msg.fill_checksum_v4();
        Some(hl + icmp_len)
    }
}

#[cfg(test)]
mod tests {
    //! The replies are taken apart with etherparse, an implementation
    //! independent of the `vxlan` views that wrote them, and the requests are
    //! built with it too.
    use super::*;
    use crate::io::buf::HeapBuf;
    use etherparse::icmpv4::DestUnreachableHeader;
    use etherparse::{
        Icmpv4Header, Icmpv4Type, Icmpv6Type, LinkSlice, NetSlice, PacketBuilder, SlicedPacket,
        TransportSlice,
    };
    use std::net::IpAddr;

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x77];
    const CLIENT_VTEP_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];
    const SERVICE_MAC: [u8; 6] = [2, 0xbb, 0, 0, 0, 1];
    const VNI: u32 = 42;

    fn addrs(v6: bool, outer: bool) -> (IpAddr, IpAddr) {
        let s = |a: &str| a.parse::<IpAddr>().unwrap();
        match (v6, outer) {
            (false, true) => (s("172.16.0.9"), s("10.0.0.1")),
            (true, true) => (s("fd10::9"), s("fd00::1")),
            (false, false) => (s("10.1.0.5"), s("192.168.0.1")),
            (true, false) => (s("fd00:1::5"), s("fd01::1")),
        }
    }

    fn ip_step(
        b: etherparse::PacketBuilderStep<etherparse::Ethernet2Header>,
        (src, dst): (IpAddr, IpAddr),
    ) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        }
    }

    /// A client's TCP segment of `payload` bytes to the service (IPv4 with
    /// DF), in VXLAN from the client's VTEP to ours.
    fn request(outer_v6: bool, inner_v6: bool, payload: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| i as u8).collect();
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, VNI as u8, 0];
        ip_step(
            PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC),
            addrs(inner_v6, false),
        )
        .tcp(40000, 80, 1, 1000)
        .write(&mut vx, &data)
        .unwrap();
        let mut f = Vec::new();
        ip_step(
            PacketBuilder::ethernet2(CLIENT_VTEP_MAC, OUR_MAC),
            addrs(outer_v6, true),
        )
        .udp(50000, 4789)
        .write(&mut f, &vx)
        .unwrap();
        f
    }

    /// The packet as the decap and inner-parse stages leave it.
    fn decapsulated(frame: &[u8]) -> (HeapBuf, Meta) {
        let d = vxlan::decap(frame, &vxlan::DecapConfig::default()).unwrap();
        let mut b = HeapBuf::with_capacity(frame.len());
        b.load(frame, 0);
        b.trim(d.inner_offset + d.inner_len);
        b.adj(d.inner_offset);
        let inner = vxlan::parse_inner(b.data(), d.vni).unwrap();
        let m = Meta {
            vni: d.vni,
            key: inner.key,
            l3_off: inner.l3_offset as u16,
            outer_len: d.inner_offset as u16,
            geneve_len: d.geneve_len,
            finished: false,
            inbound: false,
            frag: inner.frag,
            frag_id: inner.frag_id,
            ..Meta::default()
        };
        (b, m)
    }

    fn eth_addrs(p: &SlicedPacket) -> ([u8; 6], [u8; 6]) {
        match &p.link {
            Some(LinkSlice::Ethernet2(e)) => (e.source(), e.destination()),
            l => panic!("not Ethernet: {l:?}"),
        }
    }

    /// (source, destination, hop limit) of `p`'s IP header; IPv4 checksum checked.
    fn ip_addrs(p: &SlicedPacket) -> (IpAddr, IpAddr, u8) {
        match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                (h.source_addr().into(), h.destination_addr().into(), h.ttl())
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.hop_limit(),
                )
            }
            n => panic!("not IP: {n:?}"),
        }
    }

    /// Checks the reply to `req` (announcing `want_mtu`) field by field.
    fn check_reply(
        req: &[u8],
        reply: &[u8],
        m: &Meta,
        outer_v6: bool,
        inner_v6: bool,
        want_mtu: u32,
    ) {
        let outer = SlicedPacket::from_ethernet(reply).unwrap();
        assert_eq!(eth_addrs(&outer), (OUR_MAC, CLIENT_VTEP_MAC));
        let (client_vtep, our_vtep) = addrs(outer_v6, true);
        assert_eq!(ip_addrs(&outer), (our_vtep, client_vtep, REPLY_TTL));
        let Some(TransportSlice::Udp(udp)) = &outer.transport else {
            panic!("outer not UDP");
        };
        assert_eq!(udp.destination_port(), 4789);
        assert_eq!(udp.source_port(), vxlan::flow_src_port(&m.key.reversed()));
        assert_eq!(udp.payload().len() + 8, usize::from(udp.length()));
        let vx = vxlan::vxlan::VxlanPacket::new_checked(udp.payload()).unwrap();
        assert!(vx.vni_valid());
        assert_eq!(vx.vni(), VNI);

        let inner = SlicedPacket::from_ethernet(vx.payload()).unwrap();
        assert_eq!(eth_addrs(&inner), (SERVICE_MAC, CLIENT_MAC));
        let (client, service) = addrs(inner_v6, false);
        assert_eq!(ip_addrs(&inner), (service, client, REPLY_TTL));
        // The quote: the start of the client's IP packet.
        let d = vxlan::decap(req, &vxlan::DecapConfig::default()).unwrap();
        let client_ip = &req[d.inner_offset + usize::from(m.l3_off)..];
        let quote = &client_ip[..client_ip.len().min(QUOTE)];
        match &inner.transport {
            Some(TransportSlice::Icmpv4(icmp)) => {
                assert!(!inner_v6);
                assert_eq!(
                    icmp.icmp_type(),
                    Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded {
                            next_hop_mtu: want_mtu as u16
                        }
                    )
                );
                assert_eq!(
                    Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum,
                    icmp.checksum()
                );
                assert_eq!(icmp.payload(), quote);
            }
            Some(TransportSlice::Icmpv6(icmp)) => {
                assert!(inner_v6);
                assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: want_mtu });
                let (IpAddr::V6(c), IpAddr::V6(s)) = (client, service) else {
                    unreachable!()
                };
                assert!(icmp.is_checksum_valid(s.octets(), c.octets()));
                assert_eq!(icmp.payload(), quote);
            }
            t => panic!("inner not ICMP: {t:?}"),
        }
    }

    #[test]
    fn test_reply_every_family() {
        for outer_v6 in [false, true] {
            for inner_v6 in [false, true] {
                for (payload, mtu) in [(1500, 1400), (150, 1280), (200, 1000), (3000, 70_000)] {
                    let req = request(outer_v6, inner_v6, payload);
                    let (mut b, m) = decapsulated(&req);
                    assert!(
                        too_big_reply(&mut b, &m, mtu, OUR_MAC),
                        "{outer_v6} {inner_v6} {payload}"
                    );
                    // IPv6 never announces less than its minimum MTU; the
                    // IPv4 field has 16 bits.
                    let want = if inner_v6 {
                        mtu.max(ipv6::MIN_MTU)
                    } else {
                        mtu.min(65535)
                    };
                    check_reply(&req, b.data(), &m, outer_v6, inner_v6, want);
                }
            }
        }
    }

    #[test]
    fn test_no_room_leaves_the_packet() {
        // A reply quoting 40 bytes is longer than a 40-byte TCP/IPv4 packet.
        let req = request(false, false, 0);
        let (mut b, m) = decapsulated(&req);
        let before = b.data().to_vec();
        assert!(!too_big_reply(&mut b, &m, 1400, OUR_MAC));
        assert_eq!(b.data(), &before[..]);
        // Outer headers that cannot be recovered (the headroom was lost).
        let (mut b, mut m) = decapsulated(&request(false, false, 1500));
        m.outer_len = MIN_OUTER_LEN as u16 - 1;
        assert!(!too_big_reply(&mut b, &m, 1400, OUR_MAC));
    }
}
