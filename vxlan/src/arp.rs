//! ARP (RFC 826). The view checks the fixed 8 bytes and that the four
//! addresses, of the lengths the header declares, fit in the buffer;
//! [`ArpRepr`] is the Ethernet/IPv4 kind, the only one dpgw reads.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use vxlan::arp::{operation, ArpPacket, ArpRepr};
//!
//! let who_has = ArpRepr {
//!     operation: operation::REQUEST,
//!     source_mac: [2, 0, 0, 0, 0, 9],
//!     source_ip: Ipv4Addr::new(192, 0, 2, 7),
//!     target_mac: [0; 6],
//!     target_ip: Ipv4Addr::new(192, 0, 2, 1),
//! };
//! let mut buf = [0u8; 28];
//! who_has.emit(&mut buf).unwrap();
//! let p = ArpPacket::new_checked(&buf[..]).unwrap();
//! assert_eq!(p.target_protocol_addr(), &[192, 0, 2, 1]);
//! assert_eq!(ArpRepr::parse(&p), Ok(who_has));
//! ```

use crate::ethernet::ethertype;
use crate::{array, be16, put, put16, Result, WireError};
use core::ops::Range;
use std::net::Ipv4Addr;

/// Byte offsets of the fixed part; the addresses follow it, each as long as
/// the header says (see [`ArpPacket`]'s accessors).
pub mod field {
    use core::ops::Range;
    /// Hardware type.
    pub const HTYPE: Range<usize> = 0..2;
    /// Protocol type (an ethertype).
    pub const PTYPE: Range<usize> = 2..4;
    /// Hardware address length.
    pub const HLEN: usize = 4;
    /// Protocol address length.
    pub const PLEN: usize = 5;
    /// Operation.
    pub const OPER: Range<usize> = 6..8;
}

/// Length of the fixed part.
pub const HEADER_LEN: usize = 8;
/// Length of an Ethernet/IPv4 ARP packet: the fixed part and 2 × (6 + 4).
pub const ETHERNET_IPV4_LEN: usize = HEADER_LEN + 2 * (6 + 4);

/// Hardware types (IANA).
pub mod hardware {
    /// Ethernet.
    pub const ETHERNET: u16 = 1;
}

/// Operations.
pub mod operation {
    /// Request ("who has").
    pub const REQUEST: u16 = 1;
    /// Reply ("is at").
    pub const REPLY: u16 = 2;
}

/// A read/write view of an ARP packet.
///
/// If [`ArpPacket::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Checks that the fixed part and the four addresses fit: `Truncated`
    /// otherwise.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let addrs = 2 * (usize::from(b[field::HLEN]) + usize::from(b[field::PLEN]));
        if b.len() < HEADER_LEN + addrs {
            return Err(WireError::Truncated);
        }
        Ok(ArpPacket { buffer })
    }
    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Hardware type.
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        be16(self.b(), field::HTYPE.start)
    }
    /// Protocol type.
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        be16(self.b(), field::PTYPE.start)
    }
    /// Hardware address length.
    #[inline]
    pub fn hardware_len(&self) -> usize {
        usize::from(self.b()[field::HLEN])
    }
    /// Protocol address length.
    #[inline]
    pub fn protocol_len(&self) -> usize {
        usize::from(self.b()[field::PLEN])
    }
    /// Operation.
    #[inline]
    pub fn operation(&self) -> u16 {
        be16(self.b(), field::OPER.start)
    }
    #[inline]
    fn sha(&self) -> Range<usize> {
        HEADER_LEN..HEADER_LEN + self.hardware_len()
    }
    #[inline]
    fn spa(&self) -> Range<usize> {
        let s = self.sha().end;
        s..s + self.protocol_len()
    }
    #[inline]
    fn tha(&self) -> Range<usize> {
        let s = self.spa().end;
        s..s + self.hardware_len()
    }
    #[inline]
    fn tpa(&self) -> Range<usize> {
        let s = self.tha().end;
        s..s + self.protocol_len()
    }
    /// Sender hardware address.
    #[inline]
    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.b()[self.sha()]
    }
    /// Sender protocol address.
    #[inline]
    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.b()[self.spa()]
    }
    /// Target hardware address.
    #[inline]
    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.b()[self.tha()]
    }
    /// Target protocol address.
    #[inline]
    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.b()[self.tpa()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the operation.
    #[inline]
    pub fn set_operation(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::OPER.start, v);
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    /// Operation ([`operation`]; other values are kept as they are).
    pub operation: u16,
    /// Sender MAC.
    pub source_mac: [u8; 6],
    /// Sender IPv4 address.
    pub source_ip: Ipv4Addr,
    /// Target MAC (zero in a request).
    pub target_mac: [u8; 6],
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Reads a checked packet; `Malformed` unless it is Ethernet (hardware
    /// type 1, 6-byte addresses) over IPv4 (protocol type 0x0800, 4-byte
    /// addresses).
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Result<Self> {
        if p.hardware_type() != hardware::ETHERNET
            || p.protocol_type() != ethertype::IPV4
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(WireError::Malformed);
        }
        let b = p.b();
        Ok(ArpRepr {
            operation: p.operation(),
            source_mac: array(b, p.sha().start),
            source_ip: Ipv4Addr::from(array::<4>(b, p.spa().start)),
            target_mac: array(b, p.tha().start),
            target_ip: Ipv4Addr::from(array::<4>(b, p.tpa().start)),
        })
    }

    /// Writes the 28-byte packet at the start of `buf`; returns 28.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < ETHERNET_IPV4_LEN {
            return Err(WireError::Truncated);
        }
        put16(buf, field::HTYPE.start, hardware::ETHERNET);
        put16(buf, field::PTYPE.start, ethertype::IPV4);
        buf[field::HLEN] = 6;
        buf[field::PLEN] = 4;
        put16(buf, field::OPER.start, self.operation);
        put(buf, HEADER_LEN, &self.source_mac);
        put(buf, HEADER_LEN + 6, &self.source_ip.octets());
        put(buf, HEADER_LEN + 10, &self.target_mac);
        put(buf, HEADER_LEN + 16, &self.target_ip.octets());
        Ok(ETHERNET_IPV4_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Who has 192.0.2.1? Tell 192.0.2.7 (02:00:00:00:00:09).
    const REQUEST: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1,
    ];

    #[test]
    fn test_parse() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!((p.hardware_type(), p.protocol_type()), (1, 0x0800));
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), operation::REQUEST);
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 9]);
        assert_eq!(p.source_protocol_addr(), &[192, 0, 2, 7]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[192, 0, 2, 1]);
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(r.target_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(r.source_mac, [2, 0, 0, 0, 0, 9]);
        // Not Ethernet/IPv4: the view reads it, the repr refuses it.
        let mut other = REQUEST;
        other[1] = 6; // IEEE 802
        let p = ArpPacket::new_checked(&other[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Malformed));
    }

    #[test]
    fn test_emit() {
        let r = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
        let mut b = [0xffu8; 30];
        assert_eq!(r.emit(&mut b), Ok(28));
        assert_eq!(b[..28], REQUEST);
        assert_eq!(b[28..], [0xff, 0xff]);
        let mut p = ArpPacket::new_checked(&mut b[..]).unwrap();
        p.set_operation(operation::REPLY);
        assert_eq!(p.operation(), operation::REPLY);
        assert_eq!(r.emit(&mut b[..27]), Err(WireError::Truncated));
    }

    #[test]
    fn test_truncated() {
        for n in 0..REQUEST.len() {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..n]).err(),
                Some(WireError::Truncated),
                "len {n}"
            );
        }
        // Address lengths that run past the buffer.
        let mut lying = REQUEST;
        lying[field::HLEN] = 7;
        assert_eq!(
            ArpPacket::new_checked(&lying[..]).err(),
            Some(WireError::Truncated)
        );
        lying[field::HLEN] = 0;
        lying[field::PLEN] = 0;
        let p = ArpPacket::new_checked(&lying[..HEADER_LEN]).unwrap();
        assert_eq!(p.target_protocol_addr(), &[] as &[u8]);
    }

    proptest! {
        #[test]
        fn prop_roundtrip(operation in any::<u16>(), sm in any::<[u8; 6]>(), si in any::<[u8; 4]>(),
                          tm in any::<[u8; 6]>(), ti in any::<[u8; 4]>()) {
            let r = ArpRepr { operation, source_mac: sm, source_ip: si.into(), target_mac: tm, target_ip: ti.into() };
            let mut b = [0u8; ETHERNET_IPV4_LEN];
            r.emit(&mut b).unwrap();
            let p = ArpPacket::new_checked(&b[..]).unwrap();
            prop_assert_eq!(ArpRepr::parse(&p).unwrap(), r);
        }

        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = ArpPacket::new_checked(&data[..]) {
                let _ = (p.operation(), p.source_hardware_addr(), p.source_protocol_addr(),
                         p.target_hardware_addr(), p.target_protocol_addr());
                let _ = ArpRepr::parse(&p);
            }
        }
    }
}
