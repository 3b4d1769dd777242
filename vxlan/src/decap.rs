//! VXLAN and Geneve decapsulation: outer Ethernet (+ up to two VLAN tags) →
//! IPv4/IPv6 → UDP → VXLAN or Geneve, giving the VNI and where the inner
//! Ethernet frame is.
//!
//! Checks, in this order (the first failing one is reported):
//!
//! 1. Ethernet header and tags present, else `Truncated`.
//! 2. Ethertype IPv4 or IPv6, else `NotIp` (ARP and everything else).
//! 3. IP header: fewer than 20 (IPv4) / 40 (IPv6) bytes or fewer than the IHL
//!    says → `Truncated`; version wrong, IHL < 5, total length < header length,
//!    total/payload length beyond the buffer → `BadIpHeader`.
//! 4. IPv4 header checksum → `BadIpChecksum`.
//! 5. IPv4 MF flag or fragment offset ≠ 0, or an IPv6 fragment header →
//!    `OuterFragment` (IPv6 extension headers hop-by-hop, routing, destination
//!    options and AH are walked; one running past the payload → `Truncated`,
//!    more than 8 → `BadIpHeader`).
//! 6. Protocol / final next header not UDP → `NotUdp`.
//! 7. IP payload shorter than the 8-byte UDP header → `Truncated`.
//! 8. UDP destination port neither in `cfg.ports` (VXLAN) nor in
//!    `cfg.geneve_ports` → `NotVxlan`.
//! 9. IP destination not one of our VTEP addresses → `WrongVtep`.
//! 10. UDP length < 16 (UDP + VXLAN / fixed Geneve header) or > IP payload →
//!     `BadUdpLength`.
//! 11. VXLAN: I flag clear → `BadVxlanFlags`. Reserved bits and GBP fields are
//!     ignored.
//! 11. Geneve ([`crate::geneve::check`]): version ≠ 0 or options running past
//!     the UDP payload → `BadGeneveHeader`; O flag → `GeneveControl`; a
//!     critical option (C flag with options, or an option type's critical
//!     bit) → `GeneveCritical`; protocol type ≠ 0x6558 → `GeneveProto`.
//!     Options are skipped; the inner frame starts after them.
//!
//! A port in both lists is VXLAN.
//!
//! The port is checked before the VTEP so that other UDP traffic to our
//! addresses is classified `NotVxlan` (exception path), and traffic to our VXLAN
//! port on an address we do not own is `WrongVtep`.
//!
//! The UDP checksum is not verified (RFC 7348 sends 0 over IPv4; RFC 6935/6936
//! allow 0 over IPv6 for tunnels), and the inner frame is not looked at:
//! `inner_len` may be below an Ethernet header, which [`crate::parse_inner`]
//! then reports as truncated.

use crate::{
    array, be128, be16, checksum, ethernet, ipv4, ipv6, proto, udp, vxlan, WireError, VXLAN_PORT,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which outer packets are ours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// Our IPv4 VTEP addresses (`u32::from(Ipv4Addr)`).
    pub vtep_v4: Vec<u32>,
    /// Our IPv6 VTEP addresses (`u128::from(Ipv6Addr)`).
    pub vtep_v6: Vec<u128>,
    /// VXLAN UDP destination ports; empty means `[4789]`.
    pub ports: Vec<u16>,
    /// Geneve UDP destination ports; empty means no Geneve.
    pub geneve_ports: Vec<u16>,
}

/// A decapsulated packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decap {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Offset of the inner Ethernet frame within the outer frame.
    pub inner_offset: usize,
    /// Length of the inner Ethernet frame (UDP length − 16; outer Ethernet
    /// padding excluded).
    pub inner_len: usize,
    /// The outer IP header was IPv6.
    pub outer_v6: bool,
    /// Geneve header length (8 + options) if the tunnel was Geneve, 0 for
    /// VXLAN.
    pub geneve_len: u16,
}

/// Why [`decap()`] rejected a frame (see the module docs for the order).
/// `#[repr(u8)]` with dense discriminants from 0, so `e as usize` can index a
/// counter array of [`DecapError::COUNT`] entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DecapError {
    /// The frame ends before a header that must be read.
    Truncated,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// Bad IP version/IHL or length fields.
    BadIpHeader,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// The outer packet is a fragment.
    OuterFragment,
    /// Not UDP.
    NotUdp,
    /// UDP, but not to a VXLAN port.
    NotVxlan,
    /// VXLAN port, but not to one of our addresses.
    WrongVtep,
    /// UDP length below 16 or beyond the IP payload.
    BadUdpLength,
    /// VXLAN I flag clear.
    BadVxlanFlags,
    /// Geneve version not 0, or options past the UDP payload.
    BadGeneveHeader,
    /// Geneve O (control) flag.
    GeneveControl,
    /// A Geneve option marked critical (we understand none).
    GeneveCritical,
    /// Geneve protocol type not Ethernet (0x6558).
    GeneveProto,
}

impl DecapError {
    /// Number of variants.
    pub const COUNT: usize = 14;
    /// Every variant, in discriminant order.
    pub const ALL: [DecapError; Self::COUNT] = [
        DecapError::Truncated,
        DecapError::NotIp,
        DecapError::BadIpHeader,
        DecapError::BadIpChecksum,
        DecapError::OuterFragment,
        DecapError::NotUdp,
        DecapError::NotVxlan,
        DecapError::WrongVtep,
        DecapError::BadUdpLength,
        DecapError::BadVxlanFlags,
        DecapError::BadGeneveHeader,
        DecapError::GeneveControl,
        DecapError::GeneveCritical,
        DecapError::GeneveProto,
    ];
    /// A stable snake_case name for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            DecapError::Truncated => "truncated",
            DecapError::NotIp => "not_ip",
            DecapError::BadIpHeader => "bad_ip_header",
            DecapError::BadIpChecksum => "bad_ip_checksum",
            DecapError::OuterFragment => "outer_fragment",
            DecapError::NotUdp => "not_udp",
            DecapError::NotVxlan => "not_vxlan",
            DecapError::WrongVtep => "wrong_vtep",
            DecapError::BadUdpLength => "bad_udp_length",
            DecapError::BadVxlanFlags => "bad_vxlan_flags",
            DecapError::BadGeneveHeader => "bad_geneve_header",
            DecapError::GeneveControl => "geneve_control",
            DecapError::GeneveCritical => "geneve_critical",
            DecapError::GeneveProto => "geneve_proto",
        }
    }
}

impl core::fmt::Display for DecapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for DecapError {}

/// The default port list when `cfg.ports` is empty.
const DEFAULT_PORTS: [u16; 1] = [VXLAN_PORT];

/// `list.contains(&x)` as a loop the compiler inlines (the lists are a few
/// entries long; `slice::contains` is an out-of-line call for integers).
#[inline(always)]
#[allow(clippy::manual_contains)] // `contains` is the out-of-line call this avoids
fn has<T: Copy + PartialEq>(list: &[T], x: T) -> bool {
    list.iter().any(|&v| v == x)
}

/// Decapsulates one outer frame (see the module docs). Never panics, never
/// allocates.
#[inline(always)]
pub fn decap(frame: &[u8], cfg: &DecapConfig) -> Result<Decap, DecapError> {
    let (et, l3) = ethernet::walk(frame).map_err(|_| DecapError::Truncated)?;
    let ip = &frame[l3..];
    // (offset of UDP within `ip`, end of the IP packet within `ip`, our address?, v6)
    let (l4, end, ours, outer_v6) = match et {
        ethernet::ethertype::IPV4 => {
            let (hl, total) = ipv4::check(ip).map_err(|e| match e {
                WireError::Truncated => DecapError::Truncated,
                _ => DecapError::BadIpHeader,
            })?;
            let Some(h) = ip.first_chunk::<{ ipv4::HEADER_LEN }>() else {
                return Err(DecapError::Truncated);
            };
            let csum_ok = if hl == ipv4::HEADER_LEN {
                checksum::verify20(h)
            } else {
                checksum::verify(&ip[..hl])
            };
            if !csum_ok {
                return Err(DecapError::BadIpChecksum);
            }
            let flg = u16::from_be_bytes([
                h[ipv4::field::FLG_OFF.start],
                h[ipv4::field::FLG_OFF.start + 1],
            ]);
            if flg & (ipv4::FLAG_MF | ipv4::FRAG_OFFSET_MASK) != 0 {
                return Err(DecapError::OuterFragment);
            }
            if h[ipv4::field::PROTOCOL] != proto::UDP {
                return Err(DecapError::NotUdp);
            }
            let d = ipv4::field::DST_ADDR.start;
            let dst = u32::from_be_bytes([h[d], h[d + 1], h[d + 2], h[d + 3]]);
            let ours = (cfg.vtep_v4.is_empty() && cfg.vtep_v6.is_empty()) || has(&cfg.vtep_v4, dst);
            (hl, total, ours, false)
        }
        ethernet::ethertype::IPV6 => {
            let total = ipv6::check(ip).map_err(|e| match e {
                WireError::Truncated => DecapError::Truncated,
                _ => DecapError::BadIpHeader,
            })?;
            let pkt = &ip[..total];
            let l4 = if pkt[ipv6::field::NXT_HDR] == proto::UDP {
                ipv6::HEADER_LEN
            } else {
                let u = ipv6::walk_extensions(pkt).map_err(|e| match e {
                    WireError::Truncated => DecapError::Truncated,
                    _ => DecapError::BadIpHeader,
                })?;
                if u.fragment.is_some() {
                    return Err(DecapError::OuterFragment);
                }
                if u.proto != proto::UDP {
                    return Err(DecapError::NotUdp);
                }
                u.offset
            };
            let dst = be128(pkt, ipv6::field::DST_ADDR.start);
            let ours = (cfg.vtep_v4.is_empty() && cfg.vtep_v6.is_empty()) || has(&cfg.vtep_v6, dst);
            (l4, total, ours, true)
        }
        _ => return Err(DecapError::NotIp),
    };
    let payload = end - l4;
    let Some(u) = ip
        .get(l4..end)
        .and_then(|b| b.first_chunk::<{ udp::HEADER_LEN }>())
    else {
        return Err(DecapError::Truncated);
    };
    let dport = u16::from_be_bytes([
        u[udp::field::DST_PORT.start],
        u[udp::field::DST_PORT.start + 1],
    ]);
    let ports: &[u16] = if cfg.ports.is_empty() {
        &DEFAULT_PORTS
    } else {
        &cfg.ports
    };
    let geneve = if has(ports, dport) {
        false
    } else if has(&cfg.geneve_ports, dport) {
        true
    } else {
        return Err(DecapError::NotVxlan);
    };
    if !ours {
        return Err(DecapError::WrongVtep);
    }
    let ulen = usize::from(u16::from_be_bytes([
        u[udp::field::LENGTH.start],
        u[udp::field::LENGTH.start + 1],
    ]));
    if ulen < udp::HEADER_LEN + vxlan::HEADER_LEN || ulen > payload {
        return Err(DecapError::BadUdpLength);
    }
    let vx = l4 + udp::HEADER_LEN;
    if geneve {
        return decap_geneve(&ip[vx..l4 + ulen], l3 + vx, outer_v6);
    }
    // ulen >= 16 and ulen <= payload, so the VXLAN header is inside `ip`.
    let Some(v) = ip
        .get(vx..)
        .and_then(|b| b.first_chunk::<{ vxlan::HEADER_LEN }>())
    else {
        return Err(DecapError::Truncated);
    };
    if v[vxlan::field::FLAGS] & vxlan::FLAG_I == 0 {
        return Err(DecapError::BadVxlanFlags);
    }
    let n = vxlan::field::VNI.start;
    Ok(Decap {
        vni: u32::from_be_bytes([0, v[n], v[n + 1], v[n + 2]]),
        inner_offset: l3 + vx + vxlan::HEADER_LEN,
        inner_len: ulen - udp::HEADER_LEN - vxlan::HEADER_LEN,
        outer_v6,
        geneve_len: 0,
    })
}

/// The Geneve end of [`decap()`]: `payload` is the UDP payload (cut to the UDP
/// length, at least 8 bytes), which starts at `at` in the frame. Out of line:
/// VXLAN does not pay for it.
#[inline(never)]
fn decap_geneve(payload: &[u8], at: usize, outer_v6: bool) -> Result<Decap, DecapError> {
    use crate::geneve::{check, GeneveError};
    let g = check(payload).map_err(|e| match e {
        GeneveError::BadHeader => DecapError::BadGeneveHeader,
        GeneveError::Control => DecapError::GeneveControl,
        GeneveError::Critical => DecapError::GeneveCritical,
        GeneveError::Proto => DecapError::GeneveProto,
    })?;
    Ok(Decap {
        vni: g.vni,
        inner_offset: at + g.header_len,
        inner_len: payload.len() - g.header_len,
        outer_v6,
        geneve_len: g.header_len as u16,
    })
}

/// Where a VXLAN packet came from and went to, read back from its outer
/// headers: what a reply needs to go back the way the packet came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterEndpoints {
    /// Outer Ethernet source: the sender's MAC (or its router's).
    pub src_mac: [u8; 6],
    /// The sending VTEP.
    pub src_ip: IpAddr,
    /// The VTEP it was sent to.
    pub dst_ip: IpAddr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port: the VXLAN port it came in on.
    pub dst_port: u16,
}

/// Reads the [`OuterEndpoints`] of `headers`: the first
/// [`Decap::inner_offset`] bytes of a frame that [`decap()`] accepted
/// (Ethernet and up to two tags, IPv4 or IPv6, UDP, VXLAN). It relies on
/// decap's checks and repeats only those it needs not to panic: the IP and
/// UDP length fields, which count the inner frame too, are not looked at.
/// Over IPv6 the UDP header is taken to be the one right before the VXLAN
/// header, where decap found it after the extension headers, so `headers`
/// must end exactly where decap said the inner frame starts.
///
/// `Truncated` if `headers` ends before a field it reads, `Malformed` if the
/// ethertype is neither IPv4 nor IPv6. Never panics, never allocates.
pub fn outer_endpoints(headers: &[u8]) -> Result<OuterEndpoints, WireError> {
    outer_endpoints_tunnel(headers, vxlan::HEADER_LEN)
}

/// [`outer_endpoints`] for a tunnel header of `tunnel_len` bytes between the
/// UDP header and the inner frame (8 for VXLAN, [`Decap::geneve_len`] for
/// Geneve).
pub fn outer_endpoints_tunnel(
    headers: &[u8],
    tunnel_len: usize,
) -> Result<OuterEndpoints, WireError> {
    let (et, l3) = ethernet::walk(headers)?;
    let ip = &headers[l3..];
    let (src_ip, dst_ip, l4) = match et {
        ethernet::ethertype::IPV4 => {
            if ip.len() < ipv4::HEADER_LEN {
                return Err(WireError::Truncated);
            }
            let hl = usize::from(ip[ipv4::field::VER_IHL] & 0x0f) * 4;
            (
                IpAddr::V4(Ipv4Addr::from(array::<4>(ip, ipv4::field::SRC_ADDR.start))),
                IpAddr::V4(Ipv4Addr::from(array::<4>(ip, ipv4::field::DST_ADDR.start))),
                l3 + hl,
            )
        }
        ethernet::ethertype::IPV6 => {
            if ip.len() < ipv6::HEADER_LEN {
                return Err(WireError::Truncated);
            }
            let l4 = headers.len() - (udp::HEADER_LEN + tunnel_len).min(headers.len());
            if l4 < l3 + ipv6::HEADER_LEN {
                return Err(WireError::Truncated);
            }
            (
                IpAddr::V6(Ipv6Addr::from(array::<16>(ip, ipv6::field::SRC_ADDR.start))),
                IpAddr::V6(Ipv6Addr::from(array::<16>(ip, ipv6::field::DST_ADDR.start))),
                l4,
            )
        }
        _ => return Err(WireError::Malformed),
    };
    // The ports are all of the UDP header that is read.
    if headers.len() < l4 + udp::field::DST_PORT.end {
        return Err(WireError::Truncated);
    }
    Ok(OuterEndpoints {
        src_mac: array(headers, ethernet::field::SOURCE.start),
        src_ip,
        dst_ip,
        src_port: be16(headers, l4 + udp::field::SRC_PORT.start),
        dst_port: be16(headers, l4 + udp::field::DST_PORT.start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encap::{emit_vxlan, vxlan_header_len, Outer};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const INNER: [u8; 20] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4,
    ];

    fn outer(v6: bool, vlan: Option<u16>) -> Outer {
        let (s, d) = if v6 {
            (
                IpAddr::V6("2001:db8::1".parse().unwrap()),
                IpAddr::V6("2001:db8::2".parse().unwrap()),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            )
        };
        Outer {
            src_mac: [2, 0, 0, 0, 0, 0xa],
            dst_mac: [2, 0, 0, 0, 0, 0xb],
            vlan,
            src_ip: s,
            dst_ip: d,
            ttl: 64,
        }
    }

    fn packet(v6: bool, vlan: Option<u16>, vni: u32) -> Vec<u8> {
        let o = outer(v6, vlan);
        let mut p = vec![0u8; vxlan_header_len(&o)];
        emit_vxlan(&o, 50000, 4789, vni, &INNER, &mut p);
        p.extend_from_slice(&INNER);
        p
    }

    fn any_cfg() -> DecapConfig {
        DecapConfig::default()
    }

    fn ours() -> DecapConfig {
        DecapConfig {
            vtep_v4: vec![u32::from(Ipv4Addr::new(192, 0, 2, 2))],
            vtep_v6: vec![u128::from("2001:db8::2".parse::<Ipv6Addr>().unwrap())],
            ports: vec![],
            geneve_ports: vec![],
        }
    }

    #[test]
    fn test_error_table() {
        for (i, e) in DecapError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(e.to_string(), e.name());
        }
    }

    #[test]
    fn test_decap_known_bytes() {
        // Hand-assembled: Ethernet, IPv4 (checksum 0xb645 computed offline by
        // summing the words), UDP 4789, VXLAN VNI 100, 20 bytes inner, 2 bytes padding.
        let mut f = vec![0u8; 0];
        f.extend_from_slice(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00]);
        let mut ip = [
            0x45, 0, 0, 56, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0xc3, 0x50, 0x12, 0xb5, 0, 36, 0, 0]);
        f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 100, 0]);
        f.extend_from_slice(&INNER);
        f.extend_from_slice(&[0, 0]);
        let d = decap(&f, &any_cfg()).unwrap();
        assert_eq!(
            d,
            Decap {
                vni: 100,
                inner_offset: 14 + 20 + 16,
                inner_len: 20,
                outer_v6: false,
                geneve_len: 0,
            }
        );
        assert_eq!(&f[d.inner_offset..d.inner_offset + d.inner_len], &INNER);
    }

    #[test]
    fn test_roundtrip_variants() {
        for v6 in [false, true] {
            for vlan in [None, Some(7)] {
                let p = packet(v6, vlan, 0xabcdef);
                let d = decap(&p, &ours()).unwrap();
                assert_eq!(
                    (d.vni, d.inner_len, d.outer_v6),
                    (0xabcdef, INNER.len(), v6)
                );
                assert_eq!(&p[d.inner_offset..], &INNER);
            }
        }
    }

    #[test]
    fn test_truncated_every_length() {
        for v6 in [false, true] {
            for vlan in [None, Some(7)] {
                let p = packet(v6, vlan, 1);
                let hl = vxlan_header_len(&outer(v6, vlan));
                let l3 = if vlan.is_some() { 18 } else { 14 };
                for n in 0..p.len() {
                    let e = decap(&p[..n], &ours());
                    if n < l3 + if v6 { 40 } else { 20 } {
                        assert_eq!(e, Err(DecapError::Truncated), "len {n}");
                    } else {
                        // IP total length now runs past the buffer.
                        assert_eq!(e, Err(DecapError::BadIpHeader), "len {n}");
                    }
                }
                assert!(hl < p.len());
            }
        }
    }

    fn ipv4_fixup(p: &mut [u8]) {
        p[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&p[14..34]);
        p[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn test_errors_v4() {
        let cfg = ours();
        let base = packet(false, None, 1);
        let mut p = base.clone();
        p[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(decap(&p, &cfg), Err(DecapError::NotIp));
        let mut p = base.clone();
        p[14] = 0x44;
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadIpHeader));
        let mut p = base.clone();
        p[14] = 0x55;
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadIpHeader));
        let mut p = base.clone();
        p[14 + 3] = 19; // total < header
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadIpHeader));
        let mut p = base.clone();
        p[14 + 8] = 63; // TTL changed, checksum not
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadIpChecksum));
        let mut p = base.clone();
        p[14 + 6] = 0x20; // MF
        ipv4_fixup(&mut p);
        assert_eq!(decap(&p, &cfg), Err(DecapError::OuterFragment));
        let mut p = base.clone();
        p[14 + 6] = 0x40;
        p[14 + 7] = 1; // DF + offset 8
        ipv4_fixup(&mut p);
        assert_eq!(decap(&p, &cfg), Err(DecapError::OuterFragment));
        let mut p = base.clone();
        p[14 + 9] = 6;
        ipv4_fixup(&mut p);
        assert_eq!(decap(&p, &cfg), Err(DecapError::NotUdp));
        let mut p = base.clone();
        p[36..38].copy_from_slice(&8472u16.to_be_bytes());
        assert_eq!(decap(&p, &cfg), Err(DecapError::NotVxlan));
        assert!(decap(
            &p,
            &DecapConfig {
                ports: vec![4789, 8472],
                ..ours()
            }
        )
        .is_ok());
        let mut p = base.clone();
        p[33] = 3; // dst 192.0.2.3
        ipv4_fixup(&mut p);
        assert_eq!(decap(&p, &cfg), Err(DecapError::WrongVtep));
        assert!(decap(&p, &any_cfg()).is_ok());
        // Only a v6 VTEP configured: v4 traffic is not ours.
        let v6only = DecapConfig {
            vtep_v4: vec![],
            ..ours()
        };
        assert_eq!(decap(&base, &v6only), Err(DecapError::WrongVtep));
        for bad in [0u16, 15, 8 + 8 + INNER.len() as u16 + 1] {
            let mut p = base.clone();
            p[38..40].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(
                decap(&p, &cfg),
                Err(DecapError::BadUdpLength),
                "udp len {bad}"
            );
        }
        // UDP length 16: empty inner frame.
        let mut p = base.clone();
        p[38..40].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(decap(&p, &cfg).unwrap().inner_len, 0);
        let mut p = base.clone();
        p[42] = 0xf7; // every flag but I
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadVxlanFlags));
        let mut p = base.clone();
        p[42..50].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 5, 0xff]); // I + all reserved bits
        assert_eq!(decap(&p, &cfg).unwrap().vni, 5);
        // IP payload too short for UDP.
        let mut p = base[..14 + 20 + 7].to_vec();
        p[14 + 2..14 + 4].copy_from_slice(&27u16.to_be_bytes());
        ipv4_fixup(&mut p);
        assert_eq!(decap(&p, &cfg), Err(DecapError::Truncated));
        // IPv4 options are skipped.
        let mut p = base[..34].to_vec();
        p[14] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend_from_slice(&base[34..]);
        let total = (p.len() - 14) as u16;
        p[16..18].copy_from_slice(&total.to_be_bytes());
        p[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&p[14..38]);
        p[24..26].copy_from_slice(&c.to_be_bytes());
        let d = decap(&p, &cfg).unwrap();
        assert_eq!(&p[d.inner_offset..d.inner_offset + d.inner_len], &INNER);
    }

    /// Inserts an IPv6 extension header right after the fixed header.
    fn with_ext(p: &[u8], ext: &[u8]) -> Vec<u8> {
        let mut q = p[..54].to_vec();
        let nh = q[14 + 6];
        q[14 + 6] = ext[0];
        let mut e = ext.to_vec();
        e[0] = nh;
        q.extend_from_slice(&e);
        q.extend_from_slice(&p[54..]);
        let plen = (q.len() - 54) as u16;
        q[18..20].copy_from_slice(&plen.to_be_bytes());
        q
    }

    #[test]
    fn test_errors_v6() {
        let cfg = ours();
        let base = packet(true, None, 9);
        let p = with_ext(&base, &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decap(&p, &cfg).unwrap().vni, 9);
        let p = with_ext(&base, &[43, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decap(&p, &cfg).unwrap().vni, 9);
        let p = with_ext(&base, &[44, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(decap(&p, &cfg), Err(DecapError::OuterFragment));
        let p = with_ext(&base, &[60, 0, 0, 0, 0, 0, 0, 0]);
        let mut p2 = p.clone();
        p2[54] = 6; // dest opts -> TCP
        assert_eq!(decap(&p2, &cfg), Err(DecapError::NotUdp));
        let mut p = base.clone();
        p[14] = 0x40;
        assert_eq!(decap(&p, &cfg), Err(DecapError::BadIpHeader));
        let mut p = base.clone();
        p[14 + 39] ^= 1;
        assert_eq!(decap(&p, &cfg), Err(DecapError::WrongVtep));
        let mut p = base.clone();
        p[14 + 6] = 58;
        assert_eq!(decap(&p, &cfg), Err(DecapError::NotUdp));
        let mut p = base.clone();
        p.extend_from_slice(&[0; 10]); // padding after the IPv6 packet is excluded
        let d = decap(&p, &cfg).unwrap();
        assert_eq!(d.inner_offset + d.inner_len, base.len());
    }

    #[test]
    fn test_outer_endpoints() {
        let v4 = |d| IpAddr::V4(Ipv4Addr::new(192, 0, 2, d));
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        for outer_v6 in [false, true] {
            for vlan in [None, Some(7)] {
                let p = packet(outer_v6, vlan, 5);
                let mut variants = vec![p.clone()];
                if outer_v6 && vlan.is_none() {
                    // Decap walks extension headers to UDP; so does this.
                    variants.push(with_ext(&p, &[60, 0, 0, 0, 0, 0, 0, 0]));
                }
                for p in variants {
                    let d = decap(&p, &ours()).unwrap();
                    let e = outer_endpoints(&p[..d.inner_offset]).unwrap();
                    let (src_ip, dst_ip) = if outer_v6 {
                        (v6("2001:db8::1"), v6("2001:db8::2"))
                    } else {
                        (v4(1), v4(2))
                    };
                    assert_eq!(
                        e,
                        OuterEndpoints {
                            src_mac: [2, 0, 0, 0, 0, 0xa],
                            src_ip,
                            dst_ip,
                            src_port: 50000,
                            dst_port: 4789,
                        }
                    );
                }
            }
        }
    }

    /// A Geneve packet with `opts` (encoded) built from a VXLAN one.
    fn geneve_packet(v6: bool, opts: &[u8], inner: &[u8]) -> Vec<u8> {
        let o = outer(v6, None);
        let mut p = vec![0u8; crate::encap::geneve_header_len(&o)];
        crate::encap::emit_geneve(&o, 50000, 6081, 77, inner, &mut p);
        p.extend_from_slice(inner);
        // Insert the options after the fixed Geneve header and fix lengths.
        let g = p.len() - inner.len() - 8;
        p[g] = (opts.len() / 4) as u8;
        let mut q = p[..g + 8].to_vec();
        q.extend_from_slice(opts);
        q.extend_from_slice(inner);
        let l3 = 14;
        let udp = g - 8;
        let ulen = (q.len() - udp) as u16;
        q[udp + 4..udp + 6].copy_from_slice(&ulen.to_be_bytes());
        if v6 {
            q[l3 + 4..l3 + 6].copy_from_slice(&ulen.to_be_bytes());
        } else {
            let total = (q.len() - l3) as u16;
            q[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            ipv4_fixup(&mut q);
        }
        q
    }

    #[test]
    fn test_geneve() {
        let cfg = DecapConfig {
            geneve_ports: vec![6081],
            ..ours()
        };
        for v6 in [false, true] {
            for opts in [
                vec![],
                vec![1, 2, 3, 1, 9, 9, 9, 9],
                vec![1, 2, 3, 0, 1, 2, 4, 0],
            ] {
                let p = geneve_packet(v6, &opts, &INNER);
                let d = decap(&p, &cfg).unwrap();
                assert_eq!(d.vni, 77);
                assert_eq!(usize::from(d.geneve_len), 8 + opts.len());
                assert_eq!(&p[d.inner_offset..d.inner_offset + d.inner_len], &INNER);
                // Without Geneve ports it is not ours; the port is what decides.
                assert_eq!(decap(&p, &ours()), Err(DecapError::NotVxlan));
                let e = outer_endpoints_tunnel(&p[..d.inner_offset], usize::from(d.geneve_len))
                    .unwrap();
                assert_eq!((e.src_port, e.dst_port), (50000, 6081));
            }
            let udp = if v6 { 14 + 40 } else { 14 + 20 };
            let g = udp + 8;
            let base = geneve_packet(v6, &[1, 2, 3, 1, 9, 9, 9, 9], &INNER);
            let mut p = base.clone();
            p[g] |= 0x40; // version 1
            assert_eq!(decap(&p, &cfg), Err(DecapError::BadGeneveHeader));
            let mut p = base.clone();
            p[g + 1] = 0x80;
            assert_eq!(decap(&p, &cfg), Err(DecapError::GeneveControl));
            let mut p = base.clone();
            p[g + 1] = 0x40;
            assert_eq!(decap(&p, &cfg), Err(DecapError::GeneveCritical));
            let mut p = base.clone();
            p[g + 8 + 2] |= 0x80;
            assert_eq!(decap(&p, &cfg), Err(DecapError::GeneveCritical));
            let mut p = base.clone();
            p[g + 2] = 0x08;
            p[g + 3] = 0x00;
            assert_eq!(decap(&p, &cfg), Err(DecapError::GeneveProto));
            // Options length past the UDP payload (63 words).
            let mut p = base.clone();
            p[g] = 63;
            assert_eq!(decap(&p, &cfg), Err(DecapError::BadGeneveHeader));
            // A port in both lists is VXLAN.
            let both = DecapConfig {
                ports: vec![6081],
                ..cfg.clone()
            };
            assert_eq!(decap(&base, &both), Err(DecapError::BadVxlanFlags));
        }
    }

    #[test]
    fn test_outer_endpoints_truncated() {
        for outer_v6 in [false, true] {
            let p = packet(outer_v6, None, 5);
            let hl = decap(&p, &ours()).unwrap().inner_offset;
            // Every cut that loses an address or a port (the last 12 bytes,
            // the UDP length and checksum and the VXLAN header, are not read
            // over IPv4; over IPv6 the UDP header is found from the end).
            let needed = if outer_v6 { hl } else { hl - 12 };
            for n in 0..needed {
                assert_eq!(
                    outer_endpoints(&p[..n]),
                    Err(WireError::Truncated),
                    "v6 {outer_v6} len {n}"
                );
            }
            assert!(outer_endpoints(&p[..needed]).is_ok());
        }
        let mut arp = packet(false, None, 5);
        arp[12..14].copy_from_slice(&ethernet::ethertype::ARP.to_be_bytes());
        assert_eq!(outer_endpoints(&arp[..50]), Err(WireError::Malformed));
    }

    proptest! {
        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..160), et in 0usize..2, mutate in 0usize..160) {
            // Start from a valid packet and corrupt one byte, or use random bytes.
            let mut p = packet(et == 1, None, 3);
            if let Some(b) = p.get_mut(mutate) { *b ^= data.first().copied().unwrap_or(0xff); }
            let _ = decap(&p, &ours());
            if let Ok(d) = decap(&data, &any_cfg()) {
                prop_assert!(d.inner_offset + d.inner_len <= data.len());
            }
        }
    }
}
