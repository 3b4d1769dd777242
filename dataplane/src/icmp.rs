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
    let Ok(came) = vxlan::outer_endpoints(&p.data()[..outer_len]) else {
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
    vxlan::emit_vxlan(&outer, sport, came.dst_port, m.vni, inner, hdr);
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
