//! Ethernet II frames with up to [`MAX_TAGS`] VLAN tags (802.1Q `0x8100`,
//! 802.1ad `0x88a8`, in any combination). The "ethertype" of a tagged frame is
//! the one after the last tag. A third tag is not walked: the frame then reports
//! a VLAN TPID as its ethertype, which no caller treats as IP.

use crate::{array, be16, put, put16, Result, WireError};

/// Byte offsets of the untagged header.
pub mod field {
    use core::ops::Range;
    /// Destination MAC address.
    pub const DESTINATION: Range<usize> = 0..6;
    /// Source MAC address.
    pub const SOURCE: Range<usize> = 6..12;
    /// Ethertype, or the TPID of the first VLAN tag.
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// Within a tag (which starts right after the previous TPID): the TCI.
    pub const TAG_TCI: Range<usize> = 0..2;
    /// Within a tag: the next ethertype / TPID.
    pub const TAG_NEXT: Range<usize> = 2..4;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length each VLAN tag adds.
pub const TAG_LEN: usize = 4;
/// Tags walked at most.
pub const MAX_TAGS: usize = 2;

/// Ethertypes used in this crate.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service tag (QinQ).
    pub const QINQ: u16 = 0x88a8;
}

#[inline(always)]
fn is_tag(et: u16) -> bool {
    et == ethertype::VLAN || et == ethertype::QINQ
}

/// Walks the header and its tags: returns `(ethertype, payload offset)`.
/// Fails with `Truncated` if the frame ends inside the header or a tag.
#[inline(always)]
pub fn walk(frame: &[u8]) -> Result<(u16, usize)> {
    if frame.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut et = be16(frame, field::ETHERTYPE.start);
    let mut off = HEADER_LEN;
    if !is_tag(et) {
        return Ok((et, off));
    }
    for _ in 0..MAX_TAGS {
        if !is_tag(et) {
            break;
        }
        if frame.len() < off + TAG_LEN {
            return Err(WireError::Truncated);
        }
        et = be16(frame, off + field::TAG_NEXT.start);
        off += TAG_LEN;
    }
    Ok((et, off))
}

/// One VLAN tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Tag protocol identifier: [`ethertype::VLAN`] or [`ethertype::QINQ`].
    pub tpid: u16,
    /// Tag control information: PCP (3 bits), DEI (1), VID (12).
    pub tci: u16,
}

impl VlanTag {
    /// The 12-bit VLAN id.
    pub fn vid(&self) -> u16 {
        self.tci & 0x0fff
    }
    /// The 3-bit priority code point.
    pub fn pcp(&self) -> u8 {
        (self.tci >> 13) as u8
    }
}

/// A read/write view of an Ethernet frame.
///
/// If [`EthernetFrame::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
    tags: u8,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks that the header and its tags fit in `buffer`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let (_, off) = walk(buffer.as_ref())?;
        let tags = ((off - HEADER_LEN) / TAG_LEN) as u8;
        Ok(EthernetFrame { buffer, tags })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    #[inline]
    pub fn dst_addr(&self) -> [u8; 6] {
        array(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// Source MAC.
    #[inline]
    pub fn src_addr(&self) -> [u8; 6] {
        array(self.buffer.as_ref(), field::SOURCE.start)
    }

    /// Number of VLAN tags walked (0..=2).
    #[inline]
    pub fn tag_count(&self) -> usize {
        usize::from(self.tags)
    }

    /// The `i`-th tag, outermost first.
    #[inline]
    pub fn tag(&self, i: usize) -> Option<VlanTag> {
        if i >= self.tag_count() {
            return None;
        }
        let b = self.buffer.as_ref();
        let tpid_at = field::ETHERTYPE.start + i * TAG_LEN;
        Some(VlanTag {
            tpid: be16(b, tpid_at),
            tci: be16(b, tpid_at + 2),
        })
    }

    /// Header length including tags.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.tag_count() * TAG_LEN
    }

    /// Ethertype after the tags.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), self.header_len() - 2)
    }

    /// Everything after the header (Ethernet has no length field, so this may
    /// include padding; the IP layer trims it).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    #[inline]
    pub fn set_dst_addr(&mut self, mac: [u8; 6]) {
        put(self.buffer.as_mut(), field::DESTINATION.start, &mac);
    }

    /// Sets the source MAC.
    #[inline]
    pub fn set_src_addr(&mut self, mac: [u8; 6]) {
        put(self.buffer.as_mut(), field::SOURCE.start, &mac);
    }

    /// Sets the TCI of tag `i` (no-op if there is no such tag).
    #[inline]
    pub fn set_tag_tci(&mut self, i: usize, tci: u16) {
        if i < self.tag_count() {
            put16(
                self.buffer.as_mut(),
                field::ETHERTYPE.start + i * TAG_LEN + 2,
                tci,
            );
        }
    }

    /// Sets the ethertype after the tags.
    #[inline]
    pub fn set_ethertype(&mut self, et: u16) {
        let at = self.header_len() - 2;
        put16(self.buffer.as_mut(), at, et);
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// A parsed Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src: [u8; 6],
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Tags, outermost first; a `None` must not precede a `Some`.
    pub tags: [Option<VlanTag>; MAX_TAGS],
    /// Ethertype after the tags.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self> {
        Ok(EthernetRepr {
            src: frame.src_addr(),
            dst: frame.dst_addr(),
            tags: [frame.tag(0), frame.tag(1)],
            ethertype: frame.ethertype(),
        })
    }

    /// Header length this representation emits.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.tags.iter().flatten().count() * TAG_LEN
    }

    /// Writes the header at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.header_len();
        if buf.len() < len {
            return Err(WireError::Truncated);
        }
        put(buf, field::DESTINATION.start, &self.dst);
        put(buf, field::SOURCE.start, &self.src);
        let mut at = field::ETHERTYPE.start;
        for t in self.tags.iter().flatten() {
            put16(buf, at, t.tpid);
            put16(buf, at + 2, t.tci);
            at += TAG_LEN;
        }
        put16(buf, at, self.ethertype);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // dst ff..ff, src 00:11:22:33:44:55, 802.1ad tag VID 100, 802.1Q tag VID 10, IPv4.
    const QINQ: [u8; 24] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x88, 0xa8, 0x00,
        0x64, 0x81, 0x00, 0x20, 0x0a, 0x08, 0x00, 0xaa, 0xbb,
    ];

    #[test]
    fn test_parse() {
        let f = EthernetFrame::new_checked(&QINQ[..]).unwrap();
        assert_eq!(f.dst_addr(), [0xff; 6]);
        assert_eq!(f.src_addr(), [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(f.tag_count(), 2);
        assert_eq!(f.tag(0).unwrap().vid(), 100);
        assert_eq!(f.tag(0).unwrap().tpid, ethertype::QINQ);
        assert_eq!(f.tag(1).unwrap().vid(), 10);
        assert_eq!(f.tag(1).unwrap().pcp(), 1);
        assert_eq!(f.tag(2), None);
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn test_untagged_and_third_tag() {
        let mut b = QINQ;
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        let f = EthernetFrame::new_checked(&b[..]).unwrap();
        assert_eq!(
            (f.tag_count(), f.ethertype(), f.header_len()),
            (0, ethertype::IPV6, 14)
        );
        // Three tags: the third TPID is reported as the ethertype.
        let mut b = QINQ.to_vec();
        b[20..22].copy_from_slice(&[0x81, 0x00]);
        b.extend_from_slice(&[0; 4]);
        assert_eq!(walk(&b).unwrap(), (ethertype::VLAN, 22));
    }

    #[test]
    fn test_truncated() {
        for n in 0..22 {
            assert_eq!(
                EthernetFrame::new_checked(&QINQ[..n]).err(),
                Some(WireError::Truncated),
                "len {n}"
            );
        }
        assert!(EthernetFrame::new_checked(&QINQ[..22]).is_ok());
    }

    #[test]
    fn test_setters() {
        let mut b = QINQ;
        let mut f = EthernetFrame::new_checked(&mut b[..]).unwrap();
        f.set_src_addr([1; 6]);
        f.set_dst_addr([2; 6]);
        f.set_ethertype(ethertype::IPV6);
        f.set_tag_tci(1, 0x0123);
        assert_eq!(f.src_addr(), [1; 6]);
        assert_eq!(f.dst_addr(), [2; 6]);
        assert_eq!(f.ethertype(), ethertype::IPV6);
        assert_eq!(f.tag(1).unwrap().tci, 0x0123);
    }

    fn arb_tag() -> impl Strategy<Value = VlanTag> {
        (
            prop_oneof![Just(ethertype::VLAN), Just(ethertype::QINQ)],
            any::<u16>(),
        )
            .prop_map(|(tpid, tci)| VlanTag { tpid, tci })
    }

    proptest! {
        #[test]
        fn prop_roundtrip(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), t0 in proptest::option::of(arb_tag()),
                          t1 in proptest::option::of(arb_tag()), et in any::<u16>().prop_filter("not a tag", |e| !is_tag(*e))) {
            let tags = if t0.is_some() { [t0, t1] } else { [t1, None] };
            let r = EthernetRepr { src, dst, tags, ethertype: et };
            let mut buf = vec![0u8; r.header_len() + 3];
            prop_assert_eq!(r.emit(&mut buf).unwrap(), r.header_len());
            prop_assert!(r.emit(&mut buf[..r.header_len() - 1]).is_err());
            let f = EthernetFrame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(f.payload().len(), 3);
            prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        }

        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = EthernetFrame::new_checked(&data[..]) {
                let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload(), f.tag(0), f.tag(1));
            }
        }
    }
}
