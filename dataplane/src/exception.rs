//! Is this frame for the gateway itself? The fast path's classification of
//! frames that are not VXLAN ([`is_exception`]: ARP for our addresses,
//! ICMP/ICMPv6 echo to them, neighbour discovery). Workers hand such frames
//! to a [`crate::punt::Punt`]; the slow-path thread ([`crate::slowpath`])
//! answers them.
//!
//! Frames with VLAN tags are not handled here (the fast path drops them).
//!
//! ```
//! use dataplane::exception::{classify, Exception};
//! // An ARP request (who has 192.0.2.1?) to the broadcast address.
//! let mut f = vec![0xff; 6];
//! f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
//! f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
//! let ours = [u32::from(std::net::Ipv4Addr::new(192, 0, 2, 1))];
//! assert_eq!(classify(&f, &ours, &[]), Some(Exception::Arp));
//! assert_eq!(classify(&f, &[], &[]), None);
//! ```

use vxlan::arp::{self, ArpPacket, ArpRepr};
use vxlan::ethernet::{ethertype, EthernetFrame};
use vxlan::icmp::{self, IcmpPacket};
use vxlan::ipv4::Ipv4Packet;
use vxlan::ipv6::{self, Ipv6Packet};
use vxlan::proto;

use crate::tables::Tables;

/// Kinds of frames the slow path answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// ARP whose target protocol address is ours (requests and replies).
    Arp,
    /// ICMP echo request to one of our IPv4 addresses.
    IcmpEcho,
    /// ICMPv6 echo request to one of our IPv6 addresses.
    Icmpv6Echo,
    /// Neighbour solicitation for one of our addresses, or any neighbour advertisement.
    Ndp,
    /// TCP or UDP to one of our addresses at a port of [`PROBE_PORTS`]: the
    /// answer to one of the health checker's probes ([`crate::health`]).
    ProbeReply,
}

/// The source ports the health checker's probes use (and the destination
/// ports of their answers): 61440..=65535, recognised by one compare.
pub const PROBE_PORT_BASE: u16 = 0xF000;
/// Number of probe ports.
pub const PROBE_PORTS: usize = 0x1_0000 - PROBE_PORT_BASE as usize;

/// Destination port of a TCP/UDP segment `l4`, if it is a probe port.
#[inline]
fn probe_port(l4: Option<&[u8]>) -> bool {
    match l4 {
        Some([_, _, hi, lo, ..]) => u16::from_be_bytes([*hi, *lo]) >= PROBE_PORT_BASE,
        _ => false,
    }
}

/// Classifies an untagged Ethernet frame against our addresses (IPv4 as `u32`,
/// IPv6 as `u128`, as in `vxlan::DecapConfig`). Never panics.
///
/// An IP header whose length fields disagree with the frame is not an
/// exception (decap has already dropped such frames as `bad_ip_header`
/// before [`is_exception`] is asked). The ICMP header itself is looked for in
/// the rest of the frame, not only within the IP length: a message cut short
/// by its IP length but followed by Ethernet padding still counts, and the
/// slow path, which checks lengths, discards it.
pub fn classify(frame: &[u8], v4: &[u32], v6: &[u128]) -> Option<Exception> {
    classify_with(frame, |a| v4.contains(&a), |a| v6.contains(&a))
}

/// [`classify`] with "is this address ours?" as functions.
#[inline]
pub fn classify_with(
    frame: &[u8],
    ours_v4: impl Fn(u32) -> bool,
    ours_v6: impl Fn(u128) -> bool,
) -> Option<Exception> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.tag_count() != 0 {
        return None;
    }
    let l3 = eth.payload();
    match eth.ethertype() {
        ethertype::ARP => {
            let arp = ArpRepr::parse(&ArpPacket::new_checked(l3).ok()?).ok()?;
            (matches!(
                arp.operation,
                arp::operation::REQUEST | arp::operation::REPLY
            ) && ours_v4(u32::from(arp.target_ip)))
            .then_some(Exception::Arp)
        }
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(l3).ok()?;
            if ip.is_fragment() {
                return None;
            }
            if ip.protocol() == proto::TCP || ip.protocol() == proto::UDP {
                return (probe_port(ip.payload().get(..4)) && ours_v4(u32::from(ip.dst_addr())))
                    .then_some(Exception::ProbeReply);
            }
            if ip.protocol() != proto::ICMP {
                return None;
            }
            let msg = IcmpPacket::new_checked(l3.get(ip.header_len()..)?).ok()?;
            (msg.msg_type() == icmp::v4::ECHO_REQUEST && ours_v4(u32::from(ip.dst_addr())))
                .then_some(Exception::IcmpEcho)
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(l3).ok()?;
            if ip.next_header() == proto::TCP || ip.next_header() == proto::UDP {
                return (probe_port(ip.payload().get(..4)) && ours_v6(u128::from(ip.dst_addr())))
                    .then_some(Exception::ProbeReply);
            }
            if ip.next_header() != proto::ICMPV6 {
                return None;
            }
            let msg = IcmpPacket::new_checked(l3.get(ipv6::HEADER_LEN..)?).ok()?;
            let dst = ip.dst_addr();
            match msg.msg_type() {
                icmp::v6::ECHO_REQUEST => ours_v6(u128::from(dst)).then_some(Exception::Icmpv6Echo),
                icmp::v6::NEIGHBOR_SOLICIT => {
                    ours_v6(u128::from(msg.nd_target()?)).then_some(Exception::Ndp)
                }
                icmp::v6::NEIGHBOR_ADVERT => (msg.nd_target().is_some()
                    && (dst.is_multicast() || ours_v6(u128::from(dst))))
                .then_some(Exception::Ndp),
                _ => None,
            }
        }
        _ => None,
    }
}

/// True for frames the slow path handles: ARP for our addresses, ICMP/ICMPv6
/// echo requests to them, neighbour solicitations for them, neighbour
/// advertisements, and answers to health probes (TCP/UDP to our addresses at
/// a probe port). "Our addresses" are the snapshot's VTEP addresses
/// (`t.decap.vtep_v4` / `vtep_v6`) and underlay source addresses
/// (`t.underlay_v4` / `underlay_v6`). Meant for frames that fail decap with
/// `NotIp`, `NotUdp` or `NotVxlan`; cheap (a few compares), never panics.
/// False when `frame` is certainly not an untagged ARP frame (the only
/// exception whose ethertype is not IP): one compare.
#[inline]
pub fn may_be_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ethertype::ARP.to_be_bytes()[..])
}

#[inline]
pub fn is_exception(frame: &[u8], t: &Tables) -> bool {
    let u4 = t.underlay_v4.map(u32::from);
    let u6 = t.underlay_v6.map(u128::from);
    classify_with(
        frame,
        |a| t.decap.vtep_v4.contains(&a) || u4 == Some(a),
        |a| t.decap.vtep_v6.contains(&a) || u6 == Some(a),
    )
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use vxlan::ethernet::EthernetRepr;
    use vxlan::icmp::IcmpRepr;
    use vxlan::ipv4::Ipv4Repr;
    use vxlan::ipv6::Ipv6Repr;

    const OUR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const OUR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7);

    fn eth(et: u16, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        EthernetRepr {
            src: [2, 0, 0, 0, 0, 7],
            dst: [2, 0, 0, 0, 0, 1],
            tags: [None, None],
            ethertype: et,
        }
        .emit(&mut f)
        .unwrap();
        f.extend_from_slice(body);
        f
    }

    fn arp(op: u16, target: Ipv4Addr) -> Vec<u8> {
        let mut b = [0u8; arp::ETHERNET_IPV4_LEN];
        ArpRepr {
            operation: op,
            source_mac: [2, 0, 0, 0, 0, 7],
            source_ip: PEER4,
            target_mac: [0; 6],
            target_ip: target,
        }
        .emit(&mut b)
        .unwrap();
        eth(ethertype::ARP, &b)
    }

    /// An ICMP message of `icmp_len` bytes (type `ty`) to `dst`, in an IPv4
    /// packet whose total length says `ip_payload` bytes.
    fn icmp4(ty: u8, dst: Ipv4Addr, icmp_len: usize, ip_payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; 20 + icmp_len];
        Ipv4Repr {
            src: PEER4,
            dst,
            protocol: proto::ICMP,
            payload_len: ip_payload,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut b)
        .unwrap();
        IcmpRepr {
            msg_type: ty,
            code: 0,
            rest: 1,
        }
        .emit(&mut b[20..])
        .unwrap();
        eth(ethertype::IPV4, &b)
    }

    fn icmp6(ty: u8, dst: Ipv6Addr, target: Option<Ipv6Addr>) -> Vec<u8> {
        let mut msg = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        if let Some(t) = target {
            msg.extend_from_slice(&t.octets());
        }
        let mut b = vec![0u8; 40];
        Ipv6Repr {
            src: PEER6,
            dst,
            next_header: proto::ICMPV6,
            payload_len: msg.len(),
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut b)
        .unwrap();
        b.extend_from_slice(&msg);
        eth(ethertype::IPV6, &b)
    }

    fn c(f: &[u8]) -> Option<Exception> {
        classify(f, &[u32::from(OUR4)], &[u128::from(OUR6)])
    }

    #[test]
    fn test_arp() {
        assert_eq!(c(&arp(1, OUR4)), Some(Exception::Arp));
        assert_eq!(c(&arp(2, OUR4)), Some(Exception::Arp));
        assert_eq!(c(&arp(3, OUR4)), None);
        assert_eq!(c(&arp(1, PEER4)), None);
        let f = arp(1, OUR4);
        assert_eq!(c(&f[..f.len() - 1]), None);
        // Tagged frames are not handled here.
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0, 0, 5]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(c(&tagged), None);
    }

    #[test]
    fn test_icmp_echo() {
        let echo = icmp::v4::ECHO_REQUEST;
        assert_eq!(c(&icmp4(echo, OUR4, 12, 12)), Some(Exception::IcmpEcho));
        assert_eq!(c(&icmp4(icmp::v4::ECHO_REPLY, OUR4, 12, 12)), None);
        assert_eq!(c(&icmp4(echo, PEER4, 12, 12)), None);
        // A fragment is not answered.
        let mut frag = icmp4(echo, OUR4, 12, 12);
        frag[14 + 6] = 0x20;
        assert_eq!(c(&frag), None);
        // The ICMP header is looked for in the frame: 4 bytes by the IP
        // length, 12 with the padding after it.
        assert_eq!(c(&icmp4(echo, OUR4, 12, 4)), Some(Exception::IcmpEcho));
        assert_eq!(c(&icmp4(echo, OUR4, 12, 4)[..14 + 20 + 7]), None);
        // A total length beyond the frame: not ours to answer.
        assert_eq!(c(&icmp4(echo, OUR4, 12, 13)), None);
    }

    #[test]
    fn test_icmpv6_and_nd() {
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let sn = "ff02::1:ff00:1".parse().unwrap();
        assert_eq!(
            c(&icmp6(icmp::v6::ECHO_REQUEST, OUR6, None)),
            Some(Exception::Icmpv6Echo)
        );
        assert_eq!(c(&icmp6(icmp::v6::ECHO_REPLY, OUR6, None)), None);
        assert_eq!(c(&icmp6(icmp::v6::ECHO_REQUEST, PEER6, None)), None);
        let ns = icmp::v6::NEIGHBOR_SOLICIT;
        assert_eq!(c(&icmp6(ns, sn, Some(OUR6))), Some(Exception::Ndp));
        assert_eq!(c(&icmp6(ns, sn, Some(PEER6))), None);
        assert_eq!(c(&icmp6(ns, sn, None)), None);
        let na = icmp::v6::NEIGHBOR_ADVERT;
        assert_eq!(c(&icmp6(na, all_nodes, Some(PEER6))), Some(Exception::Ndp));
        assert_eq!(c(&icmp6(na, OUR6, Some(PEER6))), Some(Exception::Ndp));
        assert_eq!(c(&icmp6(na, PEER6, Some(PEER6))), None);
        assert_eq!(c(&icmp6(na, all_nodes, None)), None);
    }

    /// A TCP or UDP segment to `dst:dport` in IPv4.
    fn l4v4(p: u8, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut seg = vec![0u8; 20];
        seg[2..4].copy_from_slice(&dport.to_be_bytes());
        let mut b = vec![0u8; 20];
        Ipv4Repr {
            src: PEER4,
            dst,
            protocol: p,
            payload_len: seg.len(),
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut b)
        .unwrap();
        b.extend_from_slice(&seg);
        eth(ethertype::IPV4, &b)
    }

    #[test]
    fn test_probe_replies() {
        for p in [proto::TCP, proto::UDP] {
            assert_eq!(
                c(&l4v4(p, OUR4, PROBE_PORT_BASE)),
                Some(Exception::ProbeReply)
            );
            assert_eq!(c(&l4v4(p, OUR4, 0xffff)), Some(Exception::ProbeReply));
            assert_eq!(c(&l4v4(p, OUR4, PROBE_PORT_BASE - 1)), None);
            assert_eq!(c(&l4v4(p, PEER4, PROBE_PORT_BASE)), None);
            let f = l4v4(p, OUR4, PROBE_PORT_BASE);
            for n in 0..f.len() {
                let _ = c(&f[..n]);
            }
            assert_eq!(c(&f[..14 + 20 + 3]), None);
        }
        let mut b = vec![0u8; 40];
        Ipv6Repr {
            src: PEER6,
            dst: OUR6,
            next_header: proto::TCP,
            payload_len: 20,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut b)
        .unwrap();
        let mut seg = vec![0u8; 20];
        seg[2..4].copy_from_slice(&0xF123u16.to_be_bytes());
        b.extend_from_slice(&seg);
        assert_eq!(c(&eth(ethertype::IPV6, &b)), Some(Exception::ProbeReply));
    }

    #[test]
    fn test_truncated_never_panics() {
        for f in [
            arp(1, OUR4),
            icmp4(icmp::v4::ECHO_REQUEST, OUR4, 12, 12),
            icmp6(icmp::v6::NEIGHBOR_SOLICIT, OUR6, Some(OUR6)),
        ] {
            for n in 0..f.len() {
                assert_eq!(c(&f[..n]), None, "len {n}");
            }
        }
    }
}
