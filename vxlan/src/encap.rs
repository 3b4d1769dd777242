//! Encapsulation writers: the caller reserves `xxx_header_len(o)` bytes in
//! front of a packet and asks for them to be filled.
//!
//! * VXLAN (RFC 7348): Ethernet (+ optional 802.1Q tag) + IPv4/IPv6 + UDP +
//!   VXLAN, then the inner Ethernet frame.
//! * Geneve (RFC 8926): as VXLAN, with the 8-byte Geneve header (version 0,
//!   no options, no flags, protocol type 0x6558) in place of VXLAN's.
//! * IP-in-IP (RFC 2003 / RFC 2473): Ethernet + outer IP whose protocol / next
//!   header is 4 (inner IPv4) or 41 (inner IPv6), then the inner IP packet.
//! * GUE variant 1 (draft-ietf-intarea-gue, section 4): Ethernet + IP + UDP,
//!   and the inner IP packet directly after the UDP header, with no GUE header
//!   — the receiver tells IPv4 from IPv6 by the version nibble. This is what
//!   Katran sends.
//!
//! The outer address family is that of `dst_ip`. If `src_ip` is of the other
//! family it is converted: an IPv4-mapped IPv6 source becomes IPv4 (any other
//! IPv6 source becomes 0.0.0.0), an IPv4 source becomes `::ffff:a.b.c.d`.
//!
//! Over IPv4 the outer header has DF set, identification 0 (RFC 6864: atomic
//! datagrams), a correct header checksum, and UDP checksum 0. Over IPv6 the
//! UDP checksum is computed (RFC 8200 requires it), traffic class and flow
//! label are 0.
//!
//! Length fields that would exceed 65535 (an inner packet larger than an IP
//! packet can carry) are clamped to 65535; such output is invalid, so callers
//! must not encapsulate more than 65535 − header bytes.
//!
//! Also [`build_inner_frame`], which builds complete test/traffic frames.

use crate::flow::FlowKey;
use crate::{checksum, ethernet, ipv4, ipv6, proto, put, put16, put32, udp, vxlan};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::flow::flow_src_port;

/// Outer headers to write.
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    /// Our MAC.
    pub src_mac: [u8; 6],
    /// Next hop's MAC.
    pub dst_mac: [u8; 6],
    /// 802.1Q VLAN id (12 bits; PCP and DEI are written as 0).
    pub vlan: Option<u16>,
    /// Outer source address.
    pub src_ip: IpAddr,
    /// Outer destination address; its family selects IPv4 or IPv6.
    pub dst_ip: IpAddr,
    /// Outer TTL / hop limit.
    pub ttl: u8,
}

enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

#[inline(always)]
fn addrs(src: IpAddr, dst: IpAddr) -> Addrs {
    match dst {
        IpAddr::V4(d) => {
            let s = match src {
                IpAddr::V4(s) => s,
                IpAddr::V6(s) => s.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            Addrs::V4(s, d)
        }
        IpAddr::V6(d) => {
            let s = match src {
                IpAddr::V6(s) => s,
                IpAddr::V4(s) => s.to_ipv6_mapped(),
            };
            Addrs::V6(s, d)
        }
    }
}

#[inline]
fn l2_len(o: &Outer) -> usize {
    ethernet::HEADER_LEN
        + if o.vlan.is_some() {
            ethernet::TAG_LEN
        } else {
            0
        }
}

#[inline]
fn ip_len(dst: &IpAddr) -> usize {
    match dst {
        IpAddr::V4(_) => ipv4::HEADER_LEN,
        IpAddr::V6(_) => ipv6::HEADER_LEN,
    }
}

#[inline]
fn clamp16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Writes Ethernet (+ tag) with the given ethertype; returns its length.
#[inline(always)]
fn emit_l2(o: &Outer, hdr: &mut [u8], et: u16) -> usize {
    put(hdr, ethernet::field::DESTINATION.start, &o.dst_mac);
    put(hdr, ethernet::field::SOURCE.start, &o.src_mac);
    let mut at = ethernet::field::ETHERTYPE.start;
    if let Some(vid) = o.vlan {
        put16(hdr, at, ethernet::ethertype::VLAN);
        put16(hdr, at + 2, vid & 0x0fff);
        at += ethernet::TAG_LEN;
    }
    put16(hdr, at, et);
    at + 2
}

/// Writes the IP header for `payload_len` bytes of `protocol` at the start of
/// `h`; returns its length.
#[inline(always)]
fn emit_ip(a: &Addrs, ttl: u8, protocol: u8, payload_len: usize, h: &mut [u8]) -> usize {
    match a {
        Addrs::V4(s, d) => {
            // The checksum is summed from the values, not read back from the
            // header just written: reading 32-bit words over fresh byte and
            // 16-bit stores stalls on store forwarding (≈ 30 cycles a packet).
            let len = clamp16(ipv4::HEADER_LEN + payload_len);
            let (s, d) = (u32::from(*s), u32::from(*d));
            let sum = 0x4500u64
                + u64::from(len)
                + u64::from(ipv4::FLAG_DF)
                + (u64::from(ttl) << 8 | u64::from(protocol))
                + u64::from(s >> 16)
                + u64::from(s & 0xffff)
                + u64::from(d >> 16)
                + u64::from(d & 0xffff);
            let c = !checksum::fold(sum);
            let mut b = [0u8; ipv4::HEADER_LEN];
            b[ipv4::field::VER_IHL] = 0x45;
            b[ipv4::field::LENGTH].copy_from_slice(&len.to_be_bytes());
            b[ipv4::field::FLG_OFF].copy_from_slice(&ipv4::FLAG_DF.to_be_bytes());
            b[ipv4::field::TTL] = ttl;
            b[ipv4::field::PROTOCOL] = protocol;
            b[ipv4::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
            b[ipv4::field::SRC_ADDR].copy_from_slice(&s.to_be_bytes());
            b[ipv4::field::DST_ADDR].copy_from_slice(&d.to_be_bytes());
            h[..ipv4::HEADER_LEN].copy_from_slice(&b);
            ipv4::HEADER_LEN
        }
        Addrs::V6(s, d) => {
            let h = &mut h[..ipv6::HEADER_LEN];
            put32(h, 0, 6 << 28);
            put16(h, ipv6::field::LENGTH.start, clamp16(payload_len));
            h[ipv6::field::NXT_HDR] = protocol;
            h[ipv6::field::HOP_LIMIT] = ttl;
            put(h, ipv6::field::SRC_ADDR.start, &s.octets());
            put(h, ipv6::field::DST_ADDR.start, &d.octets());
            ipv6::HEADER_LEN
        }
    }
}

/// Writes a UDP header (with its checksum over IPv6, 0 over IPv4) for a payload
/// made of `extra` (already written in `h` after the UDP header) followed by `rest`.
fn emit_udp(a: &Addrs, sport: u16, dport: u16, h: &mut [u8], extra: usize, rest: &[u8]) {
    let len = udp::HEADER_LEN + extra + rest.len();
    put16(h, udp::field::SRC_PORT.start, sport);
    put16(h, udp::field::DST_PORT.start, dport);
    put16(h, udp::field::LENGTH.start, clamp16(len));
    put16(h, udp::field::CHECKSUM.start, 0);
    if let Addrs::V6(s, d) = a {
        let acc = checksum::pseudo_header_v6(&s.octets(), &d.octets(), proto::UDP, len as u32);
        let acc = checksum::accumulate(acc, &h[..udp::HEADER_LEN + extra]);
        let c = checksum::finish_udp(checksum::accumulate(acc, rest));
        put16(h, udp::field::CHECKSUM.start, c);
    }
}

/// Bytes [`emit_vxlan`] writes: Ethernet (+ tag) + IP + UDP + VXLAN.
#[inline]
pub fn vxlan_header_len(o: &Outer) -> usize {
    l2_len(o) + ip_len(&o.dst_ip) + udp::HEADER_LEN + vxlan::HEADER_LEN
}

/// Writes the outer headers into `hdr[..vxlan_header_len(o)]`; `inner` is the
/// inner Ethernet frame that follows (needed for lengths and the IPv6 UDP
/// checksum). UDP source port = `src_port` (see [`flow_src_port`]); the VNI is
/// masked to 24 bits; VXLAN flags = I only.
///
/// # Panics
/// If `hdr` is shorter than [`vxlan_header_len`] (a caller bug, not input).
#[inline(always)]
pub fn emit_vxlan(o: &Outer, src_port: u16, dst_port: u16, vni: u32, inner: &[u8], hdr: &mut [u8]) {
    let total = vxlan_header_len(o);
    let hdr = &mut hdr[..total];
    let a = addrs(o.src_ip, o.dst_ip);
    let et = match a {
        Addrs::V4(..) => ethernet::ethertype::IPV4,
        Addrs::V6(..) => ethernet::ethertype::IPV6,
    };
    let l3 = emit_l2(o, hdr, et);
    let ulen = udp::HEADER_LEN + vxlan::HEADER_LEN + inner.len();
    let l4 = l3 + emit_ip(&a, o.ttl, proto::UDP, ulen, &mut hdr[l3..]);
    let vx = l4 + udp::HEADER_LEN;
    put32(hdr, vx, u32::from(vxlan::FLAG_I) << 24);
    put32(hdr, vx + 4, (vni & vxlan::MAX_VNI) << 8);
    emit_udp(
        &a,
        src_port,
        dst_port,
        &mut hdr[l4..],
        vxlan::HEADER_LEN,
        inner,
    );
}

/// Bytes [`emit_geneve`] writes: Ethernet (+ tag) + IP + UDP + Geneve (no
/// options): the same as [`vxlan_header_len`].
#[inline]
pub fn geneve_header_len(o: &Outer) -> usize {
    l2_len(o) + ip_len(&o.dst_ip) + udp::HEADER_LEN + crate::geneve::HEADER_LEN
}

/// [`emit_vxlan`] for Geneve: the outer headers into
/// `hdr[..geneve_header_len(o)]` for the inner Ethernet frame `inner`, with a
/// Geneve header of version 0, no options, no flags, protocol type Ethernet
/// and `vni` (masked to 24 bits).
///
/// # Panics
/// If `hdr` is shorter than [`geneve_header_len`] (a caller bug, not input).
#[inline(always)]
pub fn emit_geneve(
    o: &Outer,
    src_port: u16,
    dst_port: u16,
    vni: u32,
    inner: &[u8],
    hdr: &mut [u8],
) {
    let total = geneve_header_len(o);
    let hdr = &mut hdr[..total];
    let a = addrs(o.src_ip, o.dst_ip);
    let et = match a {
        Addrs::V4(..) => ethernet::ethertype::IPV4,
        Addrs::V6(..) => ethernet::ethertype::IPV6,
    };
    let l3 = emit_l2(o, hdr, et);
    let ulen = udp::HEADER_LEN + crate::geneve::HEADER_LEN + inner.len();
    let l4 = l3 + emit_ip(&a, o.ttl, proto::UDP, ulen, &mut hdr[l3..]);
    crate::geneve::emit(vni, &mut hdr[l4 + udp::HEADER_LEN..]);
    emit_udp(
        &a,
        src_port,
        dst_port,
        &mut hdr[l4..],
        crate::geneve::HEADER_LEN,
        inner,
    );
}

/// Bytes [`emit_ipip`] writes: Ethernet (+ tag) + outer IP.
#[inline]
pub fn ipip_header_len(o: &Outer) -> usize {
    l2_len(o) + ip_len(&o.dst_ip)
}

/// The tunnel protocol number for an inner IP packet: 41 if its version nibble
/// is 6, else 4.
#[inline]
fn inner_proto(inner_ip: &[u8]) -> u8 {
    match inner_ip.first() {
        Some(b) if b >> 4 == 6 => proto::IPV6,
        _ => proto::IPIP,
    }
}

/// Writes Ethernet + outer IP into `hdr[..ipip_header_len(o)]` for the inner IP
/// packet `inner_ip` (which starts at its IP header and follows the header).
/// The outer protocol / next header is 4 for an inner IPv4 packet and 41 for an
/// inner IPv6 packet (by its version nibble).
///
/// # Panics
/// If `hdr` is shorter than [`ipip_header_len`].
#[inline(always)]
pub fn emit_ipip(o: &Outer, inner_ip: &[u8], hdr: &mut [u8]) {
    let hdr = &mut hdr[..ipip_header_len(o)];
    let a = addrs(o.src_ip, o.dst_ip);
    let et = match a {
        Addrs::V4(..) => ethernet::ethertype::IPV4,
        Addrs::V6(..) => ethernet::ethertype::IPV6,
    };
    let l3 = emit_l2(o, hdr, et);
    emit_ip(
        &a,
        o.ttl,
        inner_proto(inner_ip),
        inner_ip.len(),
        &mut hdr[l3..],
    );
}

/// Bytes [`emit_gue`] writes: Ethernet (+ tag) + IP + UDP.
#[inline]
pub fn gue_header_len(o: &Outer) -> usize {
    l2_len(o) + ip_len(&o.dst_ip) + udp::HEADER_LEN
}

/// Writes Ethernet + IP + UDP into `hdr[..gue_header_len(o)]` for GUE variant 1:
/// the inner IP packet `inner_ip` follows the UDP header directly.
///
/// # Panics
/// If `hdr` is shorter than [`gue_header_len`].
#[inline(always)]
pub fn emit_gue(o: &Outer, src_port: u16, dst_port: u16, inner_ip: &[u8], hdr: &mut [u8]) {
    let hdr = &mut hdr[..gue_header_len(o)];
    let a = addrs(o.src_ip, o.dst_ip);
    let et = match a {
        Addrs::V4(..) => ethernet::ethertype::IPV4,
        Addrs::V6(..) => ethernet::ethertype::IPV6,
    };
    let l3 = emit_l2(o, hdr, et);
    let l4 = l3
        + emit_ip(
            &a,
            o.ttl,
            proto::UDP,
            udp::HEADER_LEN + inner_ip.len(),
            &mut hdr[l3..],
        );
    emit_udp(&a, src_port, dst_port, &mut hdr[l4..], 0, inner_ip);
}

/// What [`build_inner_frame`] builds.
#[derive(Clone, Copy, Debug)]
pub struct InnerSpec {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address (converted like [`Outer::src_ip`] if its family differs).
    pub src: IpAddr,
    /// Destination address; its family selects IPv4 or IPv6.
    pub dst: IpAddr,
    /// 6 (TCP) or 17 (UDP); any other value gets no L4 header (payload only,
    /// no L4 checksum) with that protocol number.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Total frame length including the 14-byte Ethernet header. Raised to the
    /// minimum for the headers, lowered to the largest IP packet (65535 bytes).
    pub frame_len: usize,
}

/// TCP header length written by [`build_inner_frame`] (no options).
const TCP_HEADER_LEN: usize = 20;

/// Builds a complete inner Ethernet + IPv4/IPv6 + TCP/UDP frame of
/// `spec.frame_len` bytes into `out` (cleared first), with valid IP and L4
/// checksums. The payload is the byte pattern 0, 1, 2, … (mod 256). TCP
/// segments have flags PSH|ACK, window 65535, sequence and ack numbers 1.
/// IPv4 headers have DF set and identification 0.
pub fn build_inner_frame(spec: &InnerSpec, out: &mut Vec<u8>) {
    out.clear();
    let a = addrs(spec.src, spec.dst);
    let (et, iph, max_ip) = match a {
        Addrs::V4(..) => (ethernet::ethertype::IPV4, ipv4::HEADER_LEN, 65535),
        Addrs::V6(..) => (
            ethernet::ethertype::IPV6,
            ipv6::HEADER_LEN,
            ipv6::HEADER_LEN + 65535,
        ),
    };
    let l4h = match spec.proto {
        proto::TCP => TCP_HEADER_LEN,
        proto::UDP => udp::HEADER_LEN,
        _ => 0,
    };
    let min = ethernet::HEADER_LEN + iph + l4h;
    let len = spec.frame_len.clamp(min, ethernet::HEADER_LEN + max_ip);
    out.resize(len, 0);
    let o = Outer {
        src_mac: spec.src_mac,
        dst_mac: spec.dst_mac,
        vlan: None,
        src_ip: spec.src,
        dst_ip: spec.dst,
        ttl: spec.ttl,
    };
    let l3 = emit_l2(&o, out, et);
    let l4 = l3 + iph;
    let l4_len = len - l4;
    emit_ip(&a, spec.ttl, spec.proto, l4_len, &mut out[l3..]);
    for (i, b) in out[l4 + l4h..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let seg = &mut out[l4..];
    match spec.proto {
        proto::TCP => {
            put16(seg, 0, spec.sport);
            put16(seg, 2, spec.dport);
            put32(seg, 4, 1); // sequence number
            put32(seg, 8, 1); // acknowledgement number
            seg[12] = ((TCP_HEADER_LEN / 4) as u8) << 4;
            seg[13] = 0x18; // PSH | ACK
            put16(seg, 14, 0xffff); // window
            put16(seg, 16, 0); // checksum
            put16(seg, 18, 0); // urgent pointer
        }
        proto::UDP => {
            put16(seg, udp::field::SRC_PORT.start, spec.sport);
            put16(seg, udp::field::DST_PORT.start, spec.dport);
            put16(seg, udp::field::LENGTH.start, clamp16(l4_len));
            put16(seg, udp::field::CHECKSUM.start, 0);
        }
        _ => return,
    }
    let acc = match a {
        Addrs::V4(s, d) => {
            checksum::pseudo_header_v4(s.octets(), d.octets(), spec.proto, clamp16(l4_len))
        }
        Addrs::V6(s, d) => {
            checksum::pseudo_header_v6(&s.octets(), &d.octets(), spec.proto, l4_len as u32)
        }
    };
    let acc = checksum::accumulate(acc, seg);
    let (at, c) = if spec.proto == proto::TCP {
        (16, !checksum::fold(acc))
    } else {
        (udp::field::CHECKSUM.start, checksum::finish_udp(acc))
    };
    put16(seg, at, c);
}

/// Convenience: the outer UDP source port for `key` and the VXLAN encap of
/// `inner` in one call, into a fresh buffer (for tests and tools, not the fast
/// path).
pub fn vxlan_encap_to_vec(o: &Outer, key: &FlowKey, dst_port: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; vxlan_header_len(o)];
    emit_vxlan(o, flow_src_port(key), dst_port, key.vni, inner, &mut v);
    v.extend_from_slice(inner);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::Ipv4Packet;
    use crate::ipv6::Ipv6Packet;
    use crate::udp::UdpPacket;
    use crate::{decap, parse_inner, DecapConfig};
    use proptest::prelude::*;

    fn v4(a: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, a))
    }
    fn v6(a: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, a))
    }
    fn outer(src: IpAddr, dst: IpAddr, vlan: Option<u16>) -> Outer {
        Outer {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            src_ip: src,
            dst_ip: dst,
            ttl: 33,
        }
    }
    fn spec(src: IpAddr, dst: IpAddr, proto: u8, frame_len: usize) -> InnerSpec {
        InnerSpec {
            src_mac: [4; 6],
            dst_mac: [5; 6],
            src,
            dst,
            proto,
            sport: 1111,
            dport: 2222,
            ttl: 9,
            frame_len,
        }
    }

    /// Verifies the L4 checksum of a frame built by build_inner_frame.
    fn l4_ok(f: &[u8]) -> bool {
        let i = parse_inner(f, 0).unwrap();
        let ip = &f[i.l3_offset..i.l3_offset + i.l3_len];
        if i.key.v6 {
            let p = Ipv6Packet::new_checked(ip).unwrap();
            let acc = checksum::pseudo_header_v6(
                &p.src_addr().octets(),
                &p.dst_addr().octets(),
                i.key.proto,
                p.payload().len() as u32,
            );
            checksum::fold(checksum::accumulate(acc, p.payload())) == 0xffff
        } else {
            let p = Ipv4Packet::new_checked(ip).unwrap();
            p.verify_checksum()
                && checksum::fold(checksum::accumulate(
                    checksum::pseudo_header_v4(
                        p.src_addr().octets(),
                        p.dst_addr().octets(),
                        i.key.proto,
                        p.payload().len() as u16,
                    ),
                    p.payload(),
                )) == 0xffff
        }
    }

    #[test]
    fn test_build_inner_frame() {
        let mut f = Vec::new();
        for (s, d) in [(v4(1), v4(2)), (v6(1), v6(2))] {
            for proto in [6u8, 17] {
                for len in [0usize, 60, 64, 1514, 9000] {
                    build_inner_frame(&spec(s, d, proto, len), &mut f);
                    let min =
                        14 + if s.is_ipv4() { 20 } else { 40 } + if proto == 6 { 20 } else { 8 };
                    assert_eq!(f.len(), len.max(min));
                    let i = parse_inner(&f, 3).unwrap();
                    assert_eq!((i.key.sport, i.key.dport, i.key.proto), (1111, 2222, proto));
                    assert_eq!(i.key.src_ip(), s);
                    assert_eq!(i.l3_offset + i.l3_len, f.len());
                    assert!(l4_ok(&f), "{s} {proto} {len}");
                }
            }
        }
        // Mixed families: source converted.
        build_inner_frame(&spec(v6(1), v4(2), 17, 100), &mut f);
        assert_eq!(parse_inner(&f, 0).unwrap().key.src, 0);
        // Oversize is clamped to the largest IPv4 packet.
        build_inner_frame(&spec(v4(1), v4(2), 17, 70000), &mut f);
        assert_eq!(f.len(), 14 + 65535);
        assert!(l4_ok(&f));
    }

    #[test]
    fn test_emit_vxlan_decaps() {
        let mut inner = Vec::new();
        build_inner_frame(&spec(v6(7), v6(8), 6, 200), &mut inner);
        for (s, d) in [(v4(1), v4(2)), (v6(1), v6(2))] {
            for vlan in [None, Some(0x123)] {
                let o = outer(s, d, vlan);
                let key = parse_inner(&inner, 77).unwrap().key;
                let pkt = vxlan_encap_to_vec(&o, &key, 4789, &inner);
                assert_eq!(pkt.len(), vxlan_header_len(&o) + inner.len());
                let dec = decap(&pkt, &DecapConfig::default()).unwrap();
                assert_eq!((dec.vni, dec.outer_v6), (77, d.is_ipv6()));
                assert_eq!(
                    &pkt[dec.inner_offset..dec.inner_offset + dec.inner_len],
                    &inner[..]
                );
                let (et, l3) = ethernet::walk(&pkt).unwrap();
                let ip = &pkt[l3..];
                if d.is_ipv6() {
                    assert_eq!(et, ethernet::ethertype::IPV6);
                    let p = Ipv6Packet::new_checked(ip).unwrap();
                    assert_eq!(p.hop_limit(), 33);
                    let u = UdpPacket::new_checked(p.payload()).unwrap();
                    assert!(u.verify_checksum_v6(p.src_addr(), p.dst_addr()));
                    assert_eq!(u.src_port(), flow_src_port(&key));
                } else {
                    let p = Ipv4Packet::new_checked(ip).unwrap();
                    assert!(p.verify_checksum() && p.dont_frag() && p.ttl() == 33);
                    let u = UdpPacket::new_checked(p.payload()).unwrap();
                    assert_eq!(u.checksum(), 0);
                }
                if vlan.is_some() {
                    assert_eq!(
                        ethernet::EthernetFrame::new_checked(&pkt[..])
                            .unwrap()
                            .tag(0)
                            .unwrap()
                            .vid(),
                        0x123
                    );
                }
            }
        }
    }

    #[test]
    fn test_emit_ipip_and_gue() {
        for (is, id) in [(v4(7), v4(8)), (v6(7), v6(8))] {
            let mut inner = Vec::new();
            build_inner_frame(&spec(is, id, 17, 120), &mut inner);
            let inner_ip = &inner[14..];
            for (s, d) in [(v4(1), v4(2)), (v6(1), v6(2))] {
                let o = outer(s, d, None);
                let mut pkt = vec![0u8; ipip_header_len(&o)];
                emit_ipip(&o, inner_ip, &mut pkt);
                pkt.extend_from_slice(inner_ip);
                let want = if is.is_ipv6() { 41 } else { 4 };
                let (_, l3) = ethernet::walk(&pkt).unwrap();
                let payload = if d.is_ipv6() {
                    let p = Ipv6Packet::new_checked(&pkt[l3..]).unwrap();
                    assert_eq!(p.next_header(), want);
                    p.payload().to_vec()
                } else {
                    let p = Ipv4Packet::new_checked(&pkt[l3..]).unwrap();
                    assert!(p.verify_checksum());
                    assert_eq!(p.protocol(), want);
                    p.payload().to_vec()
                };
                assert_eq!(payload, inner_ip);

                let mut pkt = vec![0u8; gue_header_len(&o)];
                emit_gue(&o, 50001, 6080, inner_ip, &mut pkt);
                pkt.extend_from_slice(inner_ip);
                let (_, l3) = ethernet::walk(&pkt).unwrap();
                let udp_bytes = if d.is_ipv6() {
                    let p = Ipv6Packet::new_checked(&pkt[l3..]).unwrap();
                    let u = UdpPacket::new_checked(p.payload()).unwrap();
                    assert!(u.verify_checksum_v6(p.src_addr(), p.dst_addr()));
                    p.payload().to_vec()
                } else {
                    let p = Ipv4Packet::new_checked(&pkt[l3..]).unwrap();
                    assert!(p.verify_checksum());
                    p.payload().to_vec()
                };
                let u = UdpPacket::new_checked(&udp_bytes[..]).unwrap();
                assert_eq!((u.src_port(), u.dst_port()), (50001, 6080));
                assert_eq!(u.payload(), inner_ip);
            }
        }
    }

    proptest! {
        #[test]
        fn prop_encap_decap(vni in 0u32..=0xff_ffff, sport in any::<u16>(), len in 0usize..1600, v6o in any::<bool>(), v6i in any::<bool>(),
                            tcp in any::<bool>(), vlan in proptest::option::of(0u16..4096)) {
            let (s, d) = if v6i { (v6(3), v6(4)) } else { (v4(3), v4(4)) };
            let mut inner = Vec::new();
            build_inner_frame(&spec(s, d, if tcp { 6 } else { 17 }, len), &mut inner);
            prop_assert!(l4_ok(&inner));
            let o = if v6o { outer(v6(1), v6(2), vlan) } else { outer(v4(1), v4(2), vlan) };
            let mut pkt = vec![0u8; vxlan_header_len(&o)];
            emit_vxlan(&o, sport, 4789, vni, &inner, &mut pkt);
            pkt.extend_from_slice(&inner);
            let dd = decap(&pkt, &DecapConfig::default()).unwrap();
            prop_assert_eq!(dd.vni, vni);
            let i = parse_inner(&pkt[dd.inner_offset..dd.inner_offset + dd.inner_len], dd.vni).unwrap();
            prop_assert_eq!(i.key.vni, vni);
            prop_assert_eq!(i.key.sport, 1111);
        }
    }
}
