//! Inner flow identity: [`parse_inner`] reads an inner Ethernet frame into a
//! [`FlowKey`]; [`symmetric_hash`] and [`flow_src_port`] hash keys.
//!
//! Ports: TCP and UDP ports are read from the first 4 bytes of the L4 header.
//! Every other protocol (ICMP and ICMPv6 included: type/code are *not* folded
//! into the ports, so that an echo request and its reply hash alike), and every
//! non-first fragment (IPv4 offset ≠ 0, IPv6 fragment offset ≠ 0), gets ports 0.
//! A first fragment carries the L4 header and gets its ports. [`Inner::frag`]
//! says which kind of fragment a packet is (and [`Inner::frag_id`] its IPv4
//! identification / IPv6 fragment identification), so that a caller can
//! send a datagram's later fragments where its first one went.

use crate::{be128, be16, be32, ethernet, ipv4, ipv6, proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Inner flow identity. IPv4 addresses are stored as their u32 value
/// (`u32::from(Ipv4Addr)`) zero-extended to u128, with `v6 = false`; IPv6 as
/// `u128::from(Ipv6Addr)` with `v6 = true`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// VXLAN network identifier (tenant).
    pub vni: u32,
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// Source port (0 when the protocol has none, see the module docs).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Final L4 protocol number.
    pub proto: u8,
    /// IPv6 addresses.
    pub v6: bool,
}

impl FlowKey {
    /// The key of the reverse direction.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    fn ip(v: u128, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(v))
        } else {
            IpAddr::V4(Ipv4Addr::from(v as u32))
        }
    }

    /// Source address.
    pub fn src_ip(&self) -> IpAddr {
        Self::ip(self.src, self.v6)
    }

    /// Destination address.
    pub fn dst_ip(&self) -> IpAddr {
        Self::ip(self.dst, self.v6)
    }
}

/// Result of [`parse_inner`]. Offsets are relative to the start of the inner
/// Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    /// The flow.
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// IP total length (IPv4) or 40 + payload length (IPv6); trailing Ethernet
    /// padding is excluded.
    pub l3_len: usize,
    /// Which kind of fragment the packet is.
    pub frag: FragKind,
    /// The IPv4 identification (zero-extended) or the IPv6 fragment
    /// header's identification of a fragment; 0 when `frag` is `None`.
    pub frag_id: u32,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FragKind {
    /// Not a fragment (an IPv6 "atomic fragment", offset 0 without M, is
    /// a whole datagram: RFC 6946).
    #[default]
    None = 0,
    /// Offset 0 with more fragments to come: carries the L4 header (ports).
    First = 1,
    /// Offset ≠ 0: fragment data only, no ports.
    Later = 2,
}

impl FragKind {
    /// The kind of a fragment at byte `offset` with the more-fragments flag `more`.
    #[inline(always)]
    pub fn of(offset: u16, more: bool) -> FragKind {
        if offset != 0 {
            FragKind::Later
        } else if more {
            FragKind::First
        } else {
            FragKind::None
        }
    }
}

/// Why [`parse_inner`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InnerError {
    /// The frame ends inside the Ethernet header or tags, the fixed IP header,
    /// an IPv6 extension header, or the first 4 bytes of a TCP/UDP header.
    Truncated,
    /// The ethertype (after up to two VLAN tags) is neither IPv4 nor IPv6.
    NotIp,
    /// Bad version, IHL < 5, or a length field that contradicts the header or
    /// the frame, or too many IPv6 extension headers.
    BadHeader,
}

impl InnerError {
    /// A stable snake_case name for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            InnerError::Truncated => "inner_truncated",
            InnerError::NotIp => "inner_not_ip",
            InnerError::BadHeader => "inner_bad_header",
        }
    }
}

impl std::fmt::Display for InnerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for InnerError {}

#[inline(always)]
fn ports(protocol: u8, l4: &[u8]) -> Result<(u16, u16), InnerError> {
    if protocol == proto::TCP || protocol == proto::UDP {
        if l4.len() < 4 {
            return Err(InnerError::Truncated);
        }
        Ok((be16(l4, 0), be16(l4, 2)))
    } else {
        Ok((0, 0))
    }
}

/// Parses an inner Ethernet frame into a flow key (see the module docs for the
/// port rules). The IPv4 header checksum is *not* verified here (see
/// [`inner_checksum_ok`], which a forwarder calls next); all length fields are
/// checked. Never panics.
#[inline(always)]
pub fn parse_inner(frame: &[u8], vni: u32) -> Result<Inner, InnerError> {
    let (et, l3) = ethernet::walk(frame).map_err(|_| InnerError::Truncated)?;
    let ip = &frame[l3..];
    match et {
        ethernet::ethertype::IPV4 => {
            // Fast path: no options, the first 4 bytes of L4 present.
            if let Some(h) = ip.first_chunk::<{ ipv4::HEADER_LEN + 4 }>() {
                let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
                if h[ipv4::field::VER_IHL] == 0x45
                    && total >= ipv4::HEADER_LEN + 4
                    && total <= ip.len()
                {
                    let protocol = h[ipv4::field::PROTOCOL];
                    let flg = u16::from_be_bytes([h[6], h[7]]);
                    let has_ports = flg & ipv4::FRAG_OFFSET_MASK == 0
                        && (protocol == proto::TCP || protocol == proto::UDP);
                    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                    let p = if has_ports { w(ipv4::HEADER_LEN) } else { 0 };
                    let frag = FragKind::of(flg & ipv4::FRAG_OFFSET_MASK, flg & ipv4::FLAG_MF != 0);
                    return Ok(Inner {
                        key: FlowKey {
                            vni,
                            src: u128::from(w(ipv4::field::SRC_ADDR.start)),
                            dst: u128::from(w(ipv4::field::DST_ADDR.start)),
                            sport: (p >> 16) as u16,
                            dport: p as u16,
                            proto: protocol,
                            v6: false,
                        },
                        l3_offset: l3,
                        l3_len: total,
                        frag,
                        frag_id: if frag == FragKind::None {
                            0
                        } else {
                            u32::from(u16::from_be_bytes([h[4], h[5]]))
                        },
                    });
                }
            }
            let (hl, total) = ipv4::check(ip).map_err(|e| match e {
                crate::WireError::Truncated => InnerError::Truncated,
                _ => InnerError::BadHeader,
            })?;
            let protocol = ip[ipv4::field::PROTOCOL];
            let flg = be16(ip, ipv4::field::FLG_OFF.start);
            let frag = flg & ipv4::FRAG_OFFSET_MASK;
            let kind = FragKind::of(frag, flg & ipv4::FLAG_MF != 0);
            let (sport, dport) = if frag == 0 {
                ports(protocol, &ip[hl..total])?
            } else {
                (0, 0)
            };
            Ok(Inner {
                key: FlowKey {
                    vni,
                    src: u128::from(be32(ip, ipv4::field::SRC_ADDR.start)),
                    dst: u128::from(be32(ip, ipv4::field::DST_ADDR.start)),
                    sport,
                    dport,
                    proto: protocol,
                    v6: false,
                },
                l3_offset: l3,
                l3_len: total,
                frag: kind,
                frag_id: if kind == FragKind::None {
                    0
                } else {
                    u32::from(be16(ip, ipv4::field::IDENT.start))
                },
            })
        }
        ethernet::ethertype::IPV6 => {
            let total = ipv6::check(ip).map_err(|e| match e {
                crate::WireError::Truncated => InnerError::Truncated,
                _ => InnerError::BadHeader,
            })?;
            let pkt = &ip[..total];
            let nh = pkt[ipv6::field::NXT_HDR];
            // Fast path: no extension headers.
            let (protocol, l4_off, first, frag, frag_id) = if nh == proto::TCP || nh == proto::UDP {
                (nh, ipv6::HEADER_LEN, true, FragKind::None, 0)
            } else {
                let u = ipv6::walk_extensions(pkt).map_err(|e| match e {
                    crate::WireError::Truncated => InnerError::Truncated,
                    _ => InnerError::BadHeader,
                })?;
                let (frag, id) = u.fragment.map_or((FragKind::None, 0), |f| {
                    (FragKind::of(f.offset, f.more), f.ident)
                });
                let id = if frag == FragKind::None { 0 } else { id };
                (
                    u.proto,
                    u.offset,
                    u.fragment.is_none_or(|f| f.offset == 0),
                    frag,
                    id,
                )
            };
            let (sport, dport) = if first {
                ports(protocol, &pkt[l4_off..])?
            } else {
                (0, 0)
            };
            Ok(Inner {
                key: FlowKey {
                    vni,
                    src: be128(pkt, ipv6::field::SRC_ADDR.start),
                    dst: be128(pkt, ipv6::field::DST_ADDR.start),
                    sport,
                    dport,
                    proto: protocol,
                    v6: true,
                },
                l3_offset: l3,
                l3_len: total,
                frag,
                frag_id,
            })
        }
        _ => Err(InnerError::NotIp),
    }
}

/// True unless `inner` (what [`parse_inner`] returned for `frame`) is IPv4
/// with a wrong header checksum. A router must discard those (RFC 1812
/// §5.2.2; Linux counts them as `InCsumErrors`): a TTL decrement by RFC 1624
/// keeps the error, and a backend would drop the packet anyway. IPv6 has no
/// header checksum: always true. Never panics (a header `frame` does not hold
/// is reported bad).
#[inline(always)]
pub fn inner_checksum_ok(frame: &[u8], inner: &Inner) -> bool {
    if inner.key.v6 {
        return true;
    }
    let Some(ip) = frame.get(inner.l3_offset..) else {
        return false;
    };
    match ip.first_chunk::<{ ipv4::HEADER_LEN }>() {
        // Option-less header: five loads, one reduction.
        Some(h) if h[ipv4::field::VER_IHL] == 0x45 => crate::checksum::verify20(h),
        Some(h) => {
            let hl = usize::from(h[ipv4::field::VER_IHL] & 0x0f) * 4;
            ip.get(..hl).is_some_and(crate::checksum::verify)
        }
        None => false,
    }
}

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xbf58_476d_1ce4_e5b9;

/// 64×64→128 multiply, xor of the halves: a fast, well-mixing step.
#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    let r = u128::from(a ^ K0).wrapping_mul(u128::from(b ^ K1));
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline(always)]
fn hash_parts(vni: u32, proto_v6: u64, a: u128, b: u128, ports: u32) -> u64 {
    let h = mix(a as u64, (a >> 64) as u64);
    let h = mix(h ^ (b as u64), (b >> 64) as u64 ^ K1);
    let h = mix(h ^ (u64::from(ports) << 32 | u64::from(vni)), proto_v6 ^ K0);
    // Final avalanche (splitmix64 finalizer) so every output bit depends on all inputs.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A flow hash that is the same for both directions of a flow (`key` and
/// `key.reversed()`), for software RSS. Deterministic across processes and
/// machines (no random seed).
#[inline]
pub fn symmetric_hash(key: &FlowKey) -> u32 {
    let pv = u64::from(key.proto) | (u64::from(key.v6) << 8);
    // Order the two endpoints canonically so the hash cannot tell the direction.
    let (a, ap, b, bp) = if (key.src, key.sport) <= (key.dst, key.dport) {
        (key.src, key.sport, key.dst, key.dport)
    } else {
        (key.dst, key.dport, key.src, key.sport)
    };
    let h = hash_parts(key.vni, pv, a, b, u32::from(ap) << 16 | u32::from(bp));
    (h ^ (h >> 32)) as u32
}

/// Outer UDP source port for a flow (RFC 7348 section 5: a hash of the inner
/// headers, in the dynamic range 49152..=65535). Deterministic; not symmetric
/// (the two directions of a flow usually get different ports).
#[inline]
pub fn flow_src_port(key: &FlowKey) -> u16 {
    let pv = u64::from(key.proto) | (u64::from(key.v6) << 8);
    let h = hash_parts(
        key.vni,
        pv,
        key.src,
        key.dst,
        u32::from(key.sport) << 16 | u32::from(key.dport),
    );
    0xc000 | ((h >> 32) as u16 & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4_udp_frame() -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
            0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4, // UDP 12345 -> 53
        ]);
        f.extend_from_slice(&[0; 14]); // Ethernet padding to 60
        f
    }

    #[test]
    fn test_parse_v4() {
        let f = v4_udp_frame();
        let i = parse_inner(&f, 7).unwrap();
        assert_eq!(i.l3_offset, 14);
        assert_eq!(i.l3_len, 32);
        assert_eq!(
            i.key,
            FlowKey {
                vni: 7,
                src: u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 1))),
                dst: u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 2))),
                sport: 12345,
                dport: 53,
                proto: 17,
                v6: false
            }
        );
        assert_eq!(i.key.src_ip(), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn test_inner_checksum() {
        let mut f = v4_udp_frame();
        // The frame's checksum field is 0: wrong.
        let i = parse_inner(&f, 0).unwrap();
        assert!(!inner_checksum_ok(&f, &i));
        let c = crate::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(inner_checksum_ok(&f, &i));
        // Every single-bit error in the header is caught.
        for bit in 0..160 {
            let mut g = f.clone();
            g[14 + bit / 8] ^= 1 << (bit % 8);
            if let Ok(j) = parse_inner(&g, 0) {
                assert!(!inner_checksum_ok(&g, &j), "bit {bit}");
            }
        }
        // With options (IHL 6): the whole 24-byte header is summed.
        let mut o = f[..34].to_vec();
        o[14] = 0x46;
        o.extend_from_slice(&[1, 1, 1, 0]);
        o.extend_from_slice(&f[34..46]);
        o[16..18].copy_from_slice(&36u16.to_be_bytes());
        o[24..26].copy_from_slice(&[0, 0]);
        let c = crate::checksum::checksum(&o[14..38]);
        o[24..26].copy_from_slice(&c.to_be_bytes());
        let j = parse_inner(&o, 0).unwrap();
        assert!(inner_checksum_ok(&o, &j));
        o[36] ^= 0x80; // an option byte
        assert!(!inner_checksum_ok(&o, &j));
        // A header the frame does not hold is not ok (no panic).
        assert!(!inner_checksum_ok(&f[..20], &i));
        // IPv6: no header checksum.
        let v6 = Inner {
            key: FlowKey { v6: true, ..i.key },
            ..i
        };
        assert!(inner_checksum_ok(&[], &v6));
    }

    #[test]
    fn test_v4_fragments_and_icmp() {
        let mut f = v4_udp_frame();
        assert_eq!(parse_inner(&f, 0).unwrap().frag, FragKind::None);
        f[14 + 4..14 + 6].copy_from_slice(&[0xab, 0xcd]); // identification
        assert_eq!(parse_inner(&f, 0).unwrap().frag_id, 0, "not a fragment");
        f[14 + 6] = 0x20; // MF, offset 0: first fragment keeps ports
        let i = parse_inner(&f, 0).unwrap();
        assert_eq!(i.key.sport, 12345);
        assert_eq!((i.frag, i.frag_id), (FragKind::First, 0xabcd));
        f[14 + 7] = 0x10; // offset 128
        let i = parse_inner(&f, 0).unwrap();
        let k = i.key;
        assert_eq!((k.sport, k.dport, k.proto), (0, 0, 17));
        assert_eq!((i.frag, i.frag_id), (FragKind::Later, 0xabcd));
        f[14 + 6] = 0; // the last fragment (no MF) is a later one too
        assert_eq!(parse_inner(&f, 0).unwrap().frag, FragKind::Later);
        let mut f = v4_udp_frame();
        f[14 + 9] = 1; // ICMP
        let k = parse_inner(&f, 0).unwrap().key;
        assert_eq!((k.sport, k.dport, k.proto), (0, 0, 1));
    }

    #[test]
    fn test_errors() {
        let f = v4_udp_frame();
        for n in 0..14 + 24 {
            assert_eq!(
                parse_inner(&f[..n], 0),
                Err(if n < 34 {
                    InnerError::Truncated
                } else {
                    InnerError::BadHeader
                }),
                "len {n}"
            );
        }
        let mut g = f.clone();
        g[14 + 3] = 23; // total length leaves 3 bytes of UDP
        assert_eq!(parse_inner(&g, 0), Err(InnerError::Truncated));
        g[14 + 3] = 19;
        assert_eq!(parse_inner(&g, 0), Err(InnerError::BadHeader));
        g[14 + 3] = 200;
        assert_eq!(parse_inner(&g, 0), Err(InnerError::BadHeader));
        let mut g = f.clone();
        g[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse_inner(&g, 0), Err(InnerError::NotIp));
        let mut g = f.clone();
        g[14] = 0x44;
        assert_eq!(parse_inner(&g, 0), Err(InnerError::BadHeader));
    }

    fn v6_frame(nh: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x81, 0x00, 0x00, 0x05, 0x86, 0xdd,
        ];
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[nh, 64]);
        f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(ext);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn test_parse_v6() {
        let tcp = [0x01, 0xbb, 0xc3, 0x50, 0, 0, 0, 0];
        let f = v6_frame(6, &[], &tcp);
        let i = parse_inner(&f, 9).unwrap();
        assert_eq!((i.l3_offset, i.l3_len), (18, 48));
        assert_eq!(
            (i.key.sport, i.key.dport, i.key.proto, i.key.v6),
            (443, 50000, 6, true)
        );
        assert_eq!(
            i.key.dst,
            u128::from("2001:db8::2".parse::<Ipv6Addr>().unwrap())
        );
        // hop-by-hop + first fragment: ports kept.
        let ext = [44, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 9];
        let i = parse_inner(&v6_frame(0, &ext, &tcp), 9).unwrap();
        assert_eq!((i.key.sport, i.key.proto), (443, 6));
        assert_eq!((i.frag, i.frag_id), (FragKind::First, 9));
        // An atomic fragment (offset 0, no M) is a whole datagram.
        let ext = [6, 0, 0, 0, 0, 0, 0, 7];
        let i = parse_inner(&v6_frame(44, &ext, &tcp), 9).unwrap();
        assert_eq!((i.key.sport, i.frag, i.frag_id), (443, FragKind::None, 0));
        // non-first fragment: ports 0, proto = fragment's next header.
        let ext = [6, 0, 0, 0x08, 0, 0, 0x12, 9];
        let i = parse_inner(&v6_frame(44, &ext, &tcp), 9).unwrap();
        assert_eq!((i.key.sport, i.key.dport, i.key.proto), (0, 0, 6));
        assert_eq!((i.frag, i.frag_id), (FragKind::Later, 0x1209));
        assert_eq!(
            parse_inner(&v6_frame(6, &[], &tcp), 9).unwrap().frag,
            FragKind::None
        );
        // ICMPv6 after dest opts.
        let ext = [58, 0, 0, 0, 0, 0, 0, 0];
        let i = parse_inner(&v6_frame(60, &ext, &[128, 0, 0, 0]), 9).unwrap();
        assert_eq!((i.key.sport, i.key.proto), (0, 58));
        // Truncated ports / extension header.
        assert_eq!(
            parse_inner(&v6_frame(17, &[], &[0, 1, 0]), 9),
            Err(InnerError::Truncated)
        );
        assert_eq!(
            parse_inner(&v6_frame(0, &[17, 1, 0, 0, 0, 0, 0, 0], &[]), 9),
            Err(InnerError::Truncated)
        );
        // Payload length beyond the frame.
        let mut f = v6_frame(6, &[], &tcp);
        f[18 + 5] += 1;
        assert_eq!(parse_inner(&f, 9), Err(InnerError::BadHeader));
        for n in 0..f.len() - 1 {
            assert!(parse_inner(&f[..n], 9).is_err());
        }
    }

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<u32>(),
            any::<u128>(),
            any::<u128>(),
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(vni, src, dst, sport, dport, proto, v6)| FlowKey {
                vni,
                src,
                dst,
                sport,
                dport,
                proto,
                v6,
            })
    }

    #[test]
    fn test_hash_values_are_stable() {
        // Pinned so a change to the hash (which would move flows between
        // workers/ports across versions) is noticed.
        let k = FlowKey {
            vni: 1,
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            sport: 1,
            dport: 2,
            proto: 6,
            v6: false,
        };
        let (h, p) = (symmetric_hash(&k), flow_src_port(&k));
        assert_eq!(h, symmetric_hash(&k.reversed()));
        assert!(p >= 49152);
        let k2 = FlowKey { sport: 3, ..k };
        assert_ne!(symmetric_hash(&k2), h);
    }

    #[test]
    fn test_hash_spread() {
        // 4096 flows over 16 buckets: every bucket within ±30% of the mean.
        let mut buckets = [0u32; 16];
        let mut ports = [0u32; 16];
        for i in 0..4096u32 {
            let k = FlowKey {
                vni: 5,
                src: u128::from(0x0a00_0000 + i),
                dst: 0x0a01_0001,
                sport: 1000 + i as u16,
                dport: 80,
                proto: 6,
                v6: false,
            };
            buckets[(symmetric_hash(&k) & 15) as usize] += 1;
            ports[usize::from(flow_src_port(&k) & 15)] += 1;
        }
        for b in buckets.iter().chain(ports.iter()) {
            assert!((180..=332).contains(b), "{buckets:?} {ports:?}");
        }
    }

    /// Reference for IPv4 frames, written with the checked views.
    fn reference_v4(f: &[u8], vni: u32) -> Result<Inner, InnerError> {
        use crate::ethernet::EthernetFrame;
        use crate::ipv4::Ipv4Packet;
        let e = EthernetFrame::new_checked(f).map_err(|_| InnerError::Truncated)?;
        if e.ethertype() != ethernet::ethertype::IPV4 {
            return Err(InnerError::NotIp);
        }
        let p = Ipv4Packet::new_checked(e.payload()).map_err(|err| match err {
            crate::WireError::Truncated => InnerError::Truncated,
            _ => InnerError::BadHeader,
        })?;
        let (mut sport, mut dport) = (0, 0);
        if p.frag_offset() == 0 && (p.protocol() == 6 || p.protocol() == 17) {
            let l4 = p.payload();
            if l4.len() < 4 {
                return Err(InnerError::Truncated);
            }
            sport = u16::from_be_bytes([l4[0], l4[1]]);
            dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        Ok(Inner {
            key: FlowKey {
                vni,
                src: u128::from(u32::from(p.src_addr())),
                dst: u128::from(u32::from(p.dst_addr())),
                sport,
                dport,
                proto: p.protocol(),
                v6: false,
            },
            l3_offset: e.header_len(),
            l3_len: p.total_len(),
            frag: FragKind::of(p.frag_offset(), p.more_frags()),
            frag_id: if p.is_fragment() {
                u32::from(p.ident())
            } else {
                0
            },
        })
    }

    proptest! {
        #[test]
        fn prop_v4_matches_reference(at in 14usize..40, val in any::<u8>(), cut in 0usize..70, proto_sel in 0usize..3) {
            let mut f = v4_udp_frame();
            f[14 + 9] = [6u8, 17, 1][proto_sel];
            f[at] = val;
            f.truncate(cut.max(1));
            prop_assert_eq!(parse_inner(&f, 4), reference_v4(&f, 4));
        }

        #[test]
        fn prop_symmetric(k in arb_key()) {
            prop_assert_eq!(symmetric_hash(&k), symmetric_hash(&k.reversed()));
            prop_assert!(flow_src_port(&k) >= 49152);
        }

        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..120), et in 0usize..3) {
            let mut d = data;
            if d.len() >= 14 {
                let e: [u8; 2] = [[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]][et];
                d[12..14].copy_from_slice(&e);
                if d.len() > 14 { d[14] = if et == 1 { 0x60 } else { 0x45 } }
            }
            if let Ok(i) = parse_inner(&d, 0) {
                prop_assert!(i.l3_offset + i.l3_len <= d.len());
            }
        }
    }
}
