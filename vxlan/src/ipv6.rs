//! IPv6 headers (RFC 8200) and the extension-header walk. The payload length is
//! checked against the buffer and used to trim. [`walk_extensions`] follows
//! hop-by-hop (0), routing (43), destination options (60), fragment (44) and
//! AH (51) headers to the upper-layer protocol.

use crate::{array, be16, be32, proto, put, put16, put32, Result, WireError};
use std::net::Ipv6Addr;

/// Byte offsets in the fixed header.
pub mod field {
    use core::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    /// Payload length (everything after the fixed header).
    pub const LENGTH: Range<usize> = 4..6;
    /// Next header.
    pub const NXT_HDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 8..24;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Extension headers walked at most before giving up (`Malformed`).
pub const MAX_EXTENSIONS: usize = 8;
/// Length of a fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;
/// The smallest link MTU IPv6 allows (RFC 8200 section 5).
pub const MIN_MTU: u32 = 1280;

/// Checks a buffer that starts with an IPv6 header: returns the total length
/// (40 + payload length). `Truncated` below 40 bytes; `Malformed` if the
/// version is not 6 or the payload length runs past the buffer.
#[inline(always)]
pub fn check(b: &[u8]) -> Result<usize> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if b[0] >> 4 != 6 {
        return Err(WireError::Malformed);
    }
    let total = HEADER_LEN + usize::from(be16(b, field::LENGTH.start));
    if total > b.len() {
        return Err(WireError::Malformed);
    }
    Ok(total)
}

/// A fragment extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Fragment offset in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the upper-layer header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (the last next-header value).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the packet that was
    /// walked. For a non-first fragment this is where the fragment data starts,
    /// which is not a header.
    pub offset: usize,
    /// The fragment header, if one was met.
    pub fragment: Option<FragmentInfo>,
}

/// Walks the extension headers of `pkt` (an IPv6 packet trimmed to its total
/// length, starting at the fixed header) to the upper-layer protocol.
///
/// Stops at the first next-header value that is not an extension header walked
/// here, and after a fragment header whose offset is not zero (the rest is
/// fragment data). `Truncated` if an extension header runs past the packet;
/// `Malformed` after [`MAX_EXTENSIONS`] headers.
#[inline]
pub fn walk_extensions(pkt: &[u8]) -> Result<UpperLayer> {
    let mut nh = match pkt.get(field::NXT_HDR) {
        Some(&nh) => nh,
        None => return Err(WireError::Truncated),
    };
    let mut off = HEADER_LEN;
    let mut fragment = None;
    for _ in 0..MAX_EXTENSIONS {
        let len = match nh {
            proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS => match pkt.get(off + 1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return Err(WireError::Truncated),
            },
            proto::AH => match pkt.get(off + 1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return Err(WireError::Truncated),
            },
            proto::FRAGMENT => FRAGMENT_HEADER_LEN,
            _ => {
                return Ok(UpperLayer {
                    proto: nh,
                    offset: off,
                    fragment,
                })
            }
        };
        if pkt.len() < off + len {
            return Err(WireError::Truncated);
        }
        let this = nh;
        nh = pkt[off];
        if this == proto::FRAGMENT {
            let fo = be16(pkt, off + 2);
            let f = FragmentInfo {
                offset: fo & 0xfff8,
                more: fo & 1 != 0,
                ident: be32(pkt, off + 4),
            };
            fragment = Some(f);
            off += len;
            if f.offset != 0 {
                return Ok(UpperLayer {
                    proto: nh,
                    offset: off,
                    fragment,
                });
            }
        } else {
            off += len;
        }
    }
    // Exactly MAX_EXTENSIONS headers are allowed: only a ninth is refused.
    match nh {
        proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS | proto::AH | proto::FRAGMENT => {
            Err(WireError::Malformed)
        }
        _ => Ok(UpperLayer {
            proto: nh,
            offset: off,
            fragment,
        }),
    }
}

/// A read/write view of an IPv6 packet.
///
/// If [`Ipv6Packet::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Checks the fixed header (see [`check`]).
    pub fn new_checked(buffer: T) -> Result<Self> {
        check(buffer.as_ref())?;
        Ok(Ipv6Packet { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Version (always 6 for a checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }
    /// Traffic class.
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (be16(self.b(), 0) >> 4) as u8
    }
    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        be32(self.b(), 0) & 0x000f_ffff
    }
    /// Payload length.
    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), field::LENGTH.start))
    }
    /// Total length (40 + payload length).
    #[inline]
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }
    /// Next header of the fixed header.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[field::NXT_HDR]
    }
    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }
    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.b(), field::SRC_ADDR.start))
    }
    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.b(), field::DST_ADDR.start))
    }
    /// Payload (extension headers included), trimmed to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.total_len()]
    }
    /// Walks the extension headers (see [`walk_extensions`]); offsets are from
    /// the start of the fixed header.
    #[inline]
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        walk_extensions(&self.b()[..self.total_len()])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets traffic class and flow label (flow label masked to 20 bits).
    #[inline]
    pub fn set_tc_flow(&mut self, tc: u8, flow: u32) {
        put32(
            self.bm(),
            0,
            (6 << 28) | (u32::from(tc) << 20) | (flow & 0x000f_ffff),
        );
    }
    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, v: u8) {
        self.bm()[field::NXT_HDR] = v;
    }
    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, v: u8) {
        self.bm()[field::HOP_LIMIT] = v;
    }
    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        put(self.bm(), field::SRC_ADDR.start, &a.octets());
    }
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        put(self.bm(), field::DST_ADDR.start, &a.octets());
    }
    /// Mutable payload, trimmed to the payload length.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let tl = self.total_len();
        &mut self.bm()[HEADER_LEN..tl]
    }
}

/// A parsed fixed IPv6 header (extension headers are part of the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Reads a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Result<Self> {
        Ok(Ipv6Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    /// Header length this representation emits.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte header at the start of `buf`; returns 40.
    /// `Malformed` if the payload length exceeds 65535 or the flow label 20 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = u16::try_from(self.payload_len).map_err(|_| WireError::Malformed)?;
        if self.flow_label > 0x000f_ffff {
            return Err(WireError::Malformed);
        }
        let h = &mut buf[..HEADER_LEN];
        put32(
            h,
            0,
            (6 << 28) | (u32::from(self.traffic_class) << 20) | self.flow_label,
        );
        put16(h, field::LENGTH.start, len);
        h[field::NXT_HDR] = self.next_header;
        h[field::HOP_LIMIT] = self.hop_limit;
        put(h, field::SRC_ADDR.start, &self.src.octets());
        put(h, field::DST_ADDR.start, &self.dst.octets());
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(nh: u8, payload: &[u8]) -> Vec<u8> {
        let r = Ipv6Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header: nh,
            payload_len: payload.len(),
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
        };
        let mut v = vec![0u8; 40];
        r.emit(&mut v).unwrap();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn test_parse_known() {
        // Hand-written header: tc 0xb8, flow 0xabcde, plen 8, UDP, hop limit 255.
        let mut v = vec![0x6b, 0x8a, 0xbc, 0xde, 0x00, 0x08, 0x11, 0xff];
        v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v.extend_from_slice(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0, 0xee]); // UDP header + padding byte
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload().len(), 8);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(p.dst_addr(), "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            p.upper_layer().unwrap(),
            UpperLayer {
                proto: 17,
                offset: 40,
                fragment: None
            }
        );
    }

    #[test]
    fn test_extensions() {
        // hop-by-hop (8) -> routing (24) -> dest opts (8) -> fragment (first) -> TCP
        let mut pl = vec![43, 0, 0, 0, 0, 0, 0, 0];
        pl.extend_from_slice(&[60, 2]);
        pl.extend_from_slice(&[0; 22]);
        pl.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]);
        pl.extend_from_slice(&[6, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        pl.extend_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        let v = packet(0, &pl);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!(u.proto, 6);
        assert_eq!(u.offset, 40 + 8 + 24 + 8 + 8);
        assert_eq!(
            u.fragment,
            Some(FragmentInfo {
                offset: 0,
                more: true,
                ident: 0xdeadbeef
            })
        );
        // Every truncation of the walked headers is reported as truncated.
        for cut in 40..u.offset {
            let mut w = v[..cut].to_vec();
            w[4..6].copy_from_slice(&((cut - 40) as u16).to_be_bytes());
            assert_eq!(walk_extensions(&w), Err(WireError::Truncated), "cut {cut}");
        }
    }

    #[test]
    fn test_non_first_fragment() {
        let pl = [17, 0, 0x05, 0x50, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd];
        let v = packet(44, &pl);
        let u = walk_extensions(&v).unwrap();
        assert_eq!(u.proto, 17);
        assert_eq!(u.offset, 48);
        assert_eq!(
            u.fragment,
            Some(FragmentInfo {
                offset: 0x550,
                more: false,
                ident: 1
            })
        );
    }

    #[test]
    fn test_too_many_extensions() {
        let pl: Vec<u8> = (0..MAX_EXTENSIONS + 1)
            .flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        let v = packet(60, &pl);
        assert_eq!(walk_extensions(&v), Err(WireError::Malformed));
    }

    #[test]
    fn test_truncated_and_lying() {
        let v = packet(17, &[0; 8]);
        for n in 0..v.len() {
            let want = if n < 40 {
                WireError::Truncated
            } else {
                WireError::Malformed
            };
            assert_eq!(check(&v[..n]), Err(want), "len {n}");
        }
        let mut w = v.clone();
        w[0] = 0x45;
        assert_eq!(check(&w), Err(WireError::Malformed));
        let mut w = v.clone();
        w.push(0); // padding is trimmed
        assert_eq!(Ipv6Packet::new_checked(&w[..]).unwrap().payload().len(), 8);
    }

    proptest! {
        #[test]
        fn prop_roundtrip(s in any::<u128>(), d in any::<u128>(), nh in any::<u8>(), plen in 0usize..2000,
                          hl in any::<u8>(), tc in any::<u8>(), fl in 0u32..0x10_0000) {
            let r = Ipv6Repr { src: s.into(), dst: d.into(), next_header: nh, payload_len: plen, hop_limit: hl, traffic_class: tc, flow_label: fl };
            let mut buf = vec![0u8; 40 + plen];
            prop_assert_eq!(r.emit(&mut buf).unwrap(), 40);
            let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), r);
        }

        #[test]
        fn prop_no_panic(mut data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if data.len() >= 40 {
                data[0] = 0x60;
            }
            if let Ok(p) = Ipv6Packet::new_checked(&data[..]) {
                let _ = (p.payload(), p.upper_layer(), p.flow_label(), p.src_addr());
            }
            let _ = walk_extensions(&data);
        }
    }
}
