//! IPv4 headers (RFC 791). Options (IHL > 5) are allowed and skipped; the total
//! length is checked against the buffer and used to trim the payload (Ethernet
//! padding is not payload). [`Ipv4Repr::parse`] verifies the header checksum;
//! the view itself does not, so that callers that forward regardless (the inner
//! packet) do not pay for it.

use crate::{array, be16, checksum, put, put16, Result, WireError};
use std::net::Ipv4Addr;

/// Byte offsets in the fixed header.
pub mod field {
    use core::ops::Range;
    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const DSCP_ECN: usize = 1;
    /// Total length (header + payload).
    pub const LENGTH: Range<usize> = 2..4;
    /// Identification.
    pub const IDENT: Range<usize> = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits, in 8-byte units).
    pub const FLG_OFF: Range<usize> = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Payload protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 12..16;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Don't Fragment flag in the FLG_OFF word.
pub const FLAG_DF: u16 = 0x4000;
/// More Fragments flag in the FLG_OFF word.
pub const FLAG_MF: u16 = 0x2000;
/// Fragment offset bits in the FLG_OFF word.
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Checks a buffer that starts with an IPv4 header: returns
/// `(header_len, total_len)`.
///
/// `Truncated` if the buffer is shorter than 20 bytes or than the IHL says;
/// `Malformed` if the version is not 4, IHL < 5, total length < header length,
/// or total length > buffer.
#[inline(always)]
pub fn check(b: &[u8]) -> Result<(usize, usize)> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let vi = b[field::VER_IHL];
    let hl = usize::from(vi & 0x0f) * 4;
    if vi >> 4 != 4 || hl < HEADER_LEN {
        return Err(WireError::Malformed);
    }
    if b.len() < hl {
        return Err(WireError::Truncated);
    }
    let total = usize::from(be16(b, field::LENGTH.start));
    if total < hl || total > b.len() {
        return Err(WireError::Malformed);
    }
    Ok((hl, total))
}

/// A read/write view of an IPv4 packet.
///
/// If [`Ipv4Packet::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks the header (see [`check`]); the checksum is not verified.
    pub fn new_checked(buffer: T) -> Result<Self> {
        check(buffer.as_ref())?;
        Ok(Ipv4Packet { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Version (always 4 for a checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }
    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }
    /// DSCP and ECN byte.
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN]
    }
    /// Total length.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), field::LENGTH.start))
    }
    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT.start)
    }
    /// Don't Fragment.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_DF != 0
    }
    /// More Fragments.
    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (be16(self.b(), field::FLG_OFF.start) & FRAG_OFFSET_MASK) << 3
    }
    /// True for any fragment (MF set or offset ≠ 0).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }
    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    /// Payload protocol.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }
    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.b(), field::SRC_ADDR.start))
    }
    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.b(), field::DST_ADDR.start))
    }
    /// Options (empty if IHL = 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.header_len()]
    }
    /// True if the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.b()[..self.header_len()])
    }
    /// The payload, trimmed to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets DSCP/ECN (checksum not updated).
    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.bm()[field::DSCP_ECN] = v;
    }
    /// Sets the identification (checksum not updated).
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        put16(self.bm(), field::IDENT.start, v);
    }
    /// Sets the TTL (checksum not updated).
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.bm()[field::TTL] = v;
    }
    /// Sets the protocol (checksum not updated).
    #[inline]
    pub fn set_protocol(&mut self, v: u8) {
        self.bm()[field::PROTOCOL] = v;
    }
    /// Sets the source address (checksum not updated).
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        put(self.bm(), field::SRC_ADDR.start, &a.octets());
    }
    /// Sets the destination address (checksum not updated).
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        put(self.bm(), field::DST_ADDR.start, &a.octets());
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.bm(), field::CHECKSUM.start, v);
    }
    /// Recomputes the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.b()[..hl]);
        self.set_checksum(c);
    }
    /// Mutable payload, trimmed to the total length.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        &mut self.bm()[hl..tl]
    }
}

/// A parsed IPv4 header (options are not represented; emit writes none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length (total length − header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN.
    pub dscp_ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// Reads a checked packet; fails with `BadChecksum` if the header checksum
    /// is wrong.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        if !p.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        Ok(Ipv4Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() - p.header_len(),
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            more_frags: p.more_frags(),
            frag_offset: p.frag_offset(),
        })
    }

    /// Header length this representation emits.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a correct checksum at the start of `buf`
    /// (the payload is not touched); returns 20. `Malformed` if the total
    /// length would exceed 65535 or the fragment offset is not a multiple of 8
    /// below 65536.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let total =
            u16::try_from(HEADER_LEN + self.payload_len).map_err(|_| WireError::Malformed)?;
        if !self.frag_offset.is_multiple_of(8) {
            return Err(WireError::Malformed);
        }
        let mut flg = self.frag_offset >> 3;
        if self.dont_frag {
            flg |= FLAG_DF;
        }
        if self.more_frags {
            flg |= FLAG_MF;
        }
        let h = &mut buf[..HEADER_LEN];
        h[field::VER_IHL] = 0x45;
        h[field::DSCP_ECN] = self.dscp_ecn;
        put16(h, field::LENGTH.start, total);
        put16(h, field::IDENT.start, self.ident);
        put16(h, field::FLG_OFF.start, flg);
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        put16(h, field::CHECKSUM.start, 0);
        put(h, field::SRC_ADDR.start, &self.src.octets());
        put(h, field::DST_ADDR.start, &self.dst.octets());
        let c = checksum::checksum(h);
        put16(h, field::CHECKSUM.start, c);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 192.168.0.1 -> 192.168.0.199, UDP, total 0x73, DF, TTL 64, checksum 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet() -> Vec<u8> {
        let mut v = HDR.to_vec();
        v.resize(0x73, 0xab);
        v
    }

    #[test]
    fn test_parse() {
        let mut v = packet();
        v.extend_from_slice(&[0; 6]); // Ethernet padding
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(p.payload().len(), 0x73 - 20);
        assert!(p.verify_checksum());
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.payload_len, 0x73 - 20);
        let mut out = [0u8; 20];
        r.emit(&mut out).unwrap();
        assert_eq!(out, HDR);
    }

    #[test]
    fn test_options() {
        let mut v = packet();
        v[0] = 0x46;
        v[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        p.fill_checksum();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload().len(), 0x73 - 24);
        assert!(Ipv4Repr::parse(&p).is_ok());
    }

    #[test]
    fn test_bad_checksum() {
        let mut v = packet();
        v[11] ^= 1;
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p), Err(WireError::BadChecksum));
    }

    #[test]
    fn test_truncated() {
        let v = packet();
        for n in 0..v.len() {
            let e = Ipv4Packet::new_checked(&v[..n]).err();
            let want = if n < 20 {
                WireError::Truncated
            } else {
                WireError::Malformed
            };
            assert_eq!(e, Some(want), "len {n}");
        }
        let mut v = packet();
        v[0] = 0x4f; // 60-byte header, buffer 0x73 long: fine; cut at 59 -> truncated
        assert_eq!(check(&v[..59]), Err(WireError::Truncated));
    }

    #[test]
    fn test_lying_lengths() {
        let mut v = packet();
        v[0] = 0x44; // IHL 4
        assert_eq!(check(&v), Err(WireError::Malformed));
        let mut v = packet();
        v[0] = 0x65; // version 6
        assert_eq!(check(&v), Err(WireError::Malformed));
        let mut v = packet();
        v[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(check(&v), Err(WireError::Malformed));
        v[2..4].copy_from_slice(&0x74u16.to_be_bytes());
        assert_eq!(check(&v), Err(WireError::Malformed));
        v[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(check(&v), Ok((20, 20)));
    }

    fn arb_repr() -> impl Strategy<Value = Ipv4Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0usize..1500,
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            any::<bool>(),
            0u16..8192,
        )
            .prop_map(
                |(s, d, protocol, payload_len, ttl, dscp_ecn, ident, dont_frag, more_frags, fo)| {
                    Ipv4Repr {
                        src: s.into(),
                        dst: d.into(),
                        protocol,
                        payload_len,
                        ttl,
                        dscp_ecn,
                        ident,
                        dont_frag,
                        more_frags,
                        frag_offset: fo << 3,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn prop_roundtrip(r in arb_repr()) {
            let mut buf = vec![0u8; 20 + r.payload_len];
            prop_assert_eq!(r.emit(&mut buf).unwrap(), 20);
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
            prop_assert_eq!(p.payload().len(), r.payload_len);
        }

        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.options(), p.payload(), p.verify_checksum(), p.src_addr(), p.frag_offset());
                let _ = Ipv4Repr::parse(&p);
            }
        }
    }
}
