//! ICMP (RFC 792) and ICMPv6 (RFC 4443) message headers. Both begin with the
//! same 8 bytes: type, code, checksum, and a 4-byte "rest of header" whose
//! meaning depends on the type (echo identifier and sequence number, a
//! next-hop MTU, reserved). One view serves both; what differs is the
//! checksum (ICMPv6 also covers an IPv6 pseudo-header, RFC 4443 section 2.3)
//! and the type numbers ([`v4`], [`v6`]).
//!
//! ICMP has no length field: the message is the whole buffer, so pass it
//! trimmed to the IP payload.
//!
//! ```
//! use vxlan::icmp::{v4, IcmpPacket, IcmpRepr};
//!
//! // "Fragmentation needed, next-hop MTU 1400" quoting 4 bytes of a packet.
//! let mut msg = [0u8; 12];
//! IcmpRepr::frag_needed(1400).emit(&mut msg).unwrap();
//! msg[8..].copy_from_slice(&[0x45, 0, 0x05, 0xdc]);
//! let mut p = IcmpPacket::new_checked(&mut msg[..]).unwrap();
//! p.fill_checksum_v4();
//! assert!(p.verify_checksum_v4());
//! assert_eq!((p.msg_type(), p.code(), p.next_hop_mtu()), (v4::DST_UNREACHABLE, v4::FRAG_NEEDED, 1400));
//! ```

use crate::{array, be16, be32, checksum, proto, put16, put32, Result, WireError};
use std::net::Ipv6Addr;

/// Byte offsets in the message.
pub mod field {
    use core::ops::Range;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Code (a subtype).
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Rest of the header: identifier and sequence number (echo), unused and
    /// next-hop MTU (ICMP "fragmentation needed"), MTU (ICMPv6 "packet too
    /// big"), flags and reserved (neighbour discovery).
    pub const REST: Range<usize> = 4..8;
    /// ICMP "fragmentation needed": next-hop MTU (RFC 1191), the low half of
    /// [`REST`].
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// Neighbour solicitation / advertisement: the target address (RFC 4861
    /// sections 4.3 and 4.4).
    pub const ND_TARGET: Range<usize> = 8..24;
}

/// Length of the header every ICMP and ICMPv6 message has.
pub const HEADER_LEN: usize = 8;
/// Length of a neighbour solicitation or advertisement without options.
pub const ND_LEN: usize = field::ND_TARGET.end;

/// ICMP message types and codes (IANA "ICMP Parameters").
pub mod v4 {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Destination unreachable code: fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 message types (IANA "ICMPv6 Parameters").
pub mod v6 {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// A read/write view of an ICMP or ICMPv6 message.
///
/// If [`IcmpPacket::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Checks that the 8-byte header fits (`Truncated` otherwise).
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.b()[field::TYPE]
    }
    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.b()[field::CODE]
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }
    /// The 4 bytes after the checksum, as one big-endian word (the MTU of an
    /// ICMPv6 "packet too big").
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        be32(self.b(), field::REST.start)
    }
    /// The next-hop MTU of an ICMP "fragmentation needed".
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.b(), field::NEXT_HOP_MTU.start)
    }
    /// The target address of a neighbour solicitation or advertisement, if
    /// the message is long enough to carry one.
    #[inline]
    pub fn nd_target(&self) -> Option<Ipv6Addr> {
        (self.b().len() >= ND_LEN)
            .then(|| Ipv6Addr::from(array::<16>(self.b(), field::ND_TARGET.start)))
    }
    /// Everything after the 8-byte header (the quoted packet of an error,
    /// the data of an echo).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
    /// True if the ICMP checksum (over the message alone) is correct.
    #[inline]
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::verify(self.b())
    }
    /// True if the ICMPv6 checksum (message and IPv6 pseudo-header) is correct.
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum::l4_checksum_v6(&src.octets(), &dst.octets(), proto::ICMPV6, self.b()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.bm()[field::TYPE] = v;
    }
    /// Sets the code.
    #[inline]
    pub fn set_code(&mut self, v: u8) {
        self.bm()[field::CODE] = v;
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.bm(), field::CHECKSUM.start, v);
    }
    /// Sets the 4 bytes after the checksum.
    #[inline]
    pub fn set_rest_of_header(&mut self, v: u32) {
        put32(self.bm(), field::REST.start, v);
    }
    /// Mutable data after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[HEADER_LEN..]
    }
    /// Computes the ICMP checksum over the whole message.
    pub fn fill_checksum_v4(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.b());
        self.set_checksum(c);
    }
    /// Computes the ICMPv6 checksum over the message and the pseudo-header.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let c = checksum::l4_checksum_v6(&src.octets(), &dst.octets(), proto::ICMPV6, self.b());
        self.set_checksum(c);
    }
}

/// A parsed ICMP / ICMPv6 header (the data after it is the caller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpRepr {
    /// Message type ([`v4`] or [`v6`]).
    pub msg_type: u8,
    /// Code.
    pub code: u8,
    /// The 4 bytes after the checksum, big-endian.
    pub rest: u32,
}

impl IcmpRepr {
    /// ICMP "destination unreachable, fragmentation needed and DF set" with
    /// the next-hop MTU (RFC 792, RFC 1191).
    pub const fn frag_needed(mtu: u16) -> Self {
        IcmpRepr {
            msg_type: v4::DST_UNREACHABLE,
            code: v4::FRAG_NEEDED,
            rest: mtu as u32,
        }
    }

    /// ICMPv6 "packet too big" with the MTU (RFC 4443 section 3.2).
    pub const fn packet_too_big(mtu: u32) -> Self {
        IcmpRepr {
            msg_type: v6::PACKET_TOO_BIG,
            code: 0,
            rest: mtu,
        }
    }

    /// Reads a checked message's header (the checksum is left to the caller,
    /// who knows the family and, for ICMPv6, the addresses).
    pub fn parse<T: AsRef<[u8]>>(p: &IcmpPacket<T>) -> Result<Self> {
        Ok(IcmpRepr {
            msg_type: p.msg_type(),
            code: p.code(),
            rest: p.rest_of_header(),
        })
    }

    /// Writes the 8-byte header with checksum 0 at the start of `buf`
    /// (fill the checksum once the data is in place); returns 8.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        buf[field::TYPE] = self.msg_type;
        buf[field::CODE] = self.code;
        put16(buf, field::CHECKSUM.start, 0);
        put32(buf, field::REST.start, self.rest);
        Ok(HEADER_LEN)
    }
}

/// The flow an ICMP error is about, read from its quote (RFC 792 / RFC 4443:
/// the offending packet's IP header and at least its first 8 bytes). For an
/// error about a packet that went from `quoted.src:sport` to
/// `quoted.dst:dport`, this is the *reverse* direction, the flow of the host
/// the packet was sent to: what a load balancer that only sees client → VIP
/// traffic has in its flow table when the VIP's backend answered the client
/// directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedFlow {
    /// The quoted packet's destination (the client).
    pub src: u128,
    /// The quoted packet's source (the VIP).
    pub dst: u128,
    /// The quoted destination port.
    pub sport: u16,
    /// The quoted source port.
    pub dport: u16,
    /// 6 or 17.
    pub proto: u8,
}

/// Why [`quoted_flow`] could not read the flow of an ICMP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuoteError {
    /// The message or its quote ends before the quoted IP header and the
    /// 8 bytes of L4 header after it.
    Truncated,
    /// The quoted header lies: wrong version, IHL below 5, or a total
    /// (IPv4) length shorter than its own header and 8 bytes, or the quote
    /// is of a non-first fragment (no ports).
    Lies,
    /// The quoted packet is not TCP or UDP (over IPv6: not directly after
    /// the fixed header), so it belongs to no service.
    NotTcpUdp,
}

/// Whether `(type, code)` is an error that quotes a packet and concerns its
/// flow: destination unreachable (every code, fragmentation needed
/// included) and time exceeded; over ICMPv6 also packet too big.
#[inline]
pub fn is_error(v6: bool, msg_type: u8) -> bool {
    if v6 {
        matches!(
            msg_type,
            v6::DST_UNREACHABLE | v6::PACKET_TOO_BIG | v6::TIME_EXCEEDED
        )
    } else {
        matches!(msg_type, v4::DST_UNREACHABLE | v4::TIME_EXCEEDED)
    }
}

/// For an ICMP (`v6` false) or ICMPv6 message `msg` (from its type byte to
/// the end of the IP payload): `Ok(None)` if it is not an error
/// ([`is_error`]: echo, neighbour discovery...), else the reversed flow of
/// the packet it quotes. Never panics.
pub fn quoted_flow(msg: &[u8], v6: bool) -> core::result::Result<Option<QuotedFlow>, QuoteError> {
    let Some(&t) = msg.first() else {
        return Err(QuoteError::Truncated);
    };
    if !is_error(v6, t) {
        return Ok(None);
    }
    let q = msg.get(HEADER_LEN..).ok_or(QuoteError::Truncated)?;
    let (hl, protocol, src, dst) = if v6 {
        if q.len() < crate::ipv6::HEADER_LEN + 8 {
            return Err(QuoteError::Truncated);
        }
        if q[0] >> 4 != 6 {
            return Err(QuoteError::Lies);
        }
        (
            crate::ipv6::HEADER_LEN,
            q[6],
            crate::be128(q, 8),
            crate::be128(q, 24),
        )
    } else {
        if q.len() < crate::ipv4::HEADER_LEN {
            return Err(QuoteError::Truncated);
        }
        let hl = usize::from(q[0] & 0x0f) * 4;
        if q[0] >> 4 != 4 || hl < crate::ipv4::HEADER_LEN {
            return Err(QuoteError::Lies);
        }
        if q.len() < hl + 8 {
            return Err(QuoteError::Truncated);
        }
        if usize::from(be16(q, 2)) < hl + 8 || be16(q, 6) & crate::ipv4::FRAG_OFFSET_MASK != 0 {
            return Err(QuoteError::Lies);
        }
        (hl, q[9], u128::from(be32(q, 12)), u128::from(be32(q, 16)))
    };
    if protocol != proto::TCP && protocol != proto::UDP {
        return Err(QuoteError::NotTcpUdp);
    }
    Ok(Some(QuotedFlow {
        src: dst,
        dst: src,
        sport: be16(q, hl + 2),
        dport: be16(q, hl),
        proto: protocol,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_quoted_flow() {
        // VIP 192.168.0.1:80 -> client 10.1.0.1:40000, TCP.
        let mut q = vec![
            0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 192, 168, 0, 1, 10, 1, 0, 1,
        ];
        q.extend_from_slice(&[0, 80, 0x9c, 0x40, 0, 0, 0, 1]);
        let msg = |ty: u8, q: &[u8]| {
            let mut m = vec![ty, 4, 0, 0, 0, 0, 5, 0x78];
            m.extend_from_slice(q);
            m
        };
        let f = quoted_flow(&msg(3, &q), false).unwrap().unwrap();
        assert_eq!(
            f,
            QuotedFlow {
                src: 0x0a01_0001,
                dst: 0xc0a8_0001,
                sport: 40000,
                dport: 80,
                proto: 6
            }
        );
        assert!(quoted_flow(&msg(11, &q), false).unwrap().is_some());
        assert_eq!(quoted_flow(&msg(8, &q), false), Ok(None), "echo");
        assert_eq!(quoted_flow(&msg(0, &[]), false), Ok(None));
        for n in 0..28 {
            assert_eq!(
                quoted_flow(&msg(3, &q[..n]), false),
                Err(QuoteError::Truncated),
                "{n}"
            );
        }
        let mut l = q.clone();
        l[2..4].copy_from_slice(&27u16.to_be_bytes());
        assert_eq!(quoted_flow(&msg(3, &l), false), Err(QuoteError::Lies));
        let mut l = q.clone();
        l[0] = 0x44;
        assert_eq!(quoted_flow(&msg(3, &l), false), Err(QuoteError::Lies));
        let mut l = q.clone();
        l[7] = 1; // a non-first fragment
        assert_eq!(quoted_flow(&msg(3, &l), false), Err(QuoteError::Lies));
        let mut l = q.clone();
        l[9] = 1;
        assert_eq!(quoted_flow(&msg(3, &l), false), Err(QuoteError::NotTcpUdp));
        // ICMPv6 packet too big quoting fd01::1:80 -> fd02::1:40000 UDP.
        let mut q6 = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
        q6.extend_from_slice(&[0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        q6.extend_from_slice(&[0xfd, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        q6.extend_from_slice(&[0, 80, 0x9c, 0x40, 0, 16, 0, 0]);
        let f = quoted_flow(&msg(2, &q6), true).unwrap().unwrap();
        assert_eq!((f.sport, f.dport, f.proto), (40000, 80, 17));
        assert_eq!(f.src >> 112, 0xfd02);
        assert_eq!(quoted_flow(&msg(128, &q6), true), Ok(None));
        assert_eq!(
            quoted_flow(&msg(2, &q6[..47]), true),
            Err(QuoteError::Truncated)
        );
        q6[0] = 0x40;
        assert_eq!(quoted_flow(&msg(2, &q6), true), Err(QuoteError::Lies));
    }
    use proptest::prelude::*;

    // An ICMP echo request (id 0x1234, seq 1, data "abcd"); its checksum by
    // hand: 0800 + 1234 + 0001 + 6162 + 6364 = 0xdefb, complemented 0x2104.
    const ECHO: [u8; 12] = [
        8, 0, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd',
    ];

    #[test]
    fn test_parse() {
        let p = IcmpPacket::new_checked(&ECHO[..]).unwrap();
        assert_eq!((p.msg_type(), p.code()), (v4::ECHO_REQUEST, 0));
        assert_eq!(p.checksum(), 0x2104);
        assert_eq!(p.rest_of_header(), 0x1234_0001);
        assert_eq!(p.data(), b"abcd");
        assert!(p.verify_checksum_v4());
        assert_eq!(
            IcmpRepr::parse(&p).unwrap(),
            IcmpRepr {
                msg_type: 8,
                code: 0,
                rest: 0x1234_0001
            }
        );
        let mut bad = ECHO;
        bad[9] ^= 1;
        assert!(!IcmpPacket::new_checked(&bad[..])
            .unwrap()
            .verify_checksum_v4());
    }

    #[test]
    fn test_emit() {
        // Fragmentation needed, MTU 1400: 03 04 cksum 00 00 05 78.
        let mut b = [0xffu8; 8];
        assert_eq!(IcmpRepr::frag_needed(1400).emit(&mut b), Ok(8));
        assert_eq!(b, [3, 4, 0, 0, 0, 0, 0x05, 0x78]);
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        p.fill_checksum_v4();
        // 0304 + 0578 = 0x087c -> !0x087c = 0xf783.
        assert_eq!(p.checksum(), 0xf783);
        assert_eq!(p.next_hop_mtu(), 1400);

        // Packet too big, MTU 1280, between fe80::1 and fe80::2.
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let mut b = [0u8; 16];
        IcmpRepr::packet_too_big(1280).emit(&mut b).unwrap();
        assert_eq!(b[..8], [2, 0, 0, 0, 0, 0, 0x05, 0x00]);
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        p.data_mut().copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 58, 64]);
        p.fill_checksum_v6(s, d);
        assert!(p.verify_checksum_v6(s, d));
        assert!(!p.verify_checksum_v6(s, s));
        assert!(!p.verify_checksum_v4());
        // The reference sum, word by word: pseudo-header (fe80+0001, fe80+0002,
        // length 16, next header 58) and the message.
        let sum: u32 = [
            0xfe80u32, 1, 0xfe80, 2, 16, 58, 0x0200, 0, 0x0500, 0x6000, 0, 0, 0x3a40,
        ]
        .iter()
        .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(p.checksum(), !(folded as u16));
    }

    #[test]
    fn test_nd_target() {
        let target: Ipv6Addr = "fd00::1".parse().unwrap();
        let mut ns = vec![v6::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&target.octets());
        let p = IcmpPacket::new_checked(&ns[..]).unwrap();
        assert_eq!(p.nd_target(), Some(target));
        let p = IcmpPacket::new_checked(&ns[..ND_LEN - 1]).unwrap();
        assert_eq!(p.nd_target(), None);
    }

    #[test]
    fn test_truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                IcmpPacket::new_checked(&ECHO[..n]).err(),
                Some(WireError::Truncated),
                "len {n}"
            );
            assert_eq!(
                IcmpRepr::frag_needed(1).emit(&mut [0u8; 8][..n]),
                Err(WireError::Truncated)
            );
        }
        let p = IcmpPacket::new_checked(&ECHO[..HEADER_LEN]).unwrap();
        assert_eq!(p.data(), &[] as &[u8]);
        assert_eq!(p.nd_target(), None);
    }

    proptest! {
        #[test]
        fn prop_roundtrip(msg_type in any::<u8>(), code in any::<u8>(), rest in any::<u32>(),
                          data in proptest::collection::vec(any::<u8>(), 0..64),
                          s in any::<u128>(), d in any::<u128>()) {
            let r = IcmpRepr { msg_type, code, rest };
            let mut buf = vec![0u8; HEADER_LEN];
            prop_assert_eq!(r.emit(&mut buf).unwrap(), HEADER_LEN);
            buf.extend_from_slice(&data);
            let mut p = IcmpPacket::new_checked(&mut buf[..]).unwrap();
            prop_assert_eq!(IcmpRepr::parse(&p).unwrap(), r);
            p.fill_checksum_v4();
            prop_assert!(p.verify_checksum_v4());
            p.fill_checksum_v6(s.into(), d.into());
            prop_assert!(p.verify_checksum_v6(s.into(), d.into()));
            prop_assert_eq!(p.data(), &data[..]);
        }

        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = IcmpPacket::new_checked(&data[..]) {
                let _ = (p.msg_type(), p.code(), p.checksum(), p.rest_of_header(), p.next_hop_mtu(),
                         p.nd_target(), p.data(), p.verify_checksum_v4());
            }
        }
    }
}
