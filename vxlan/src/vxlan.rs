//! The 8-byte VXLAN header (RFC 7348).
//!
//! ```text
//!  byte 0: flags   R R R R I R R R   (I = 0x08, required)
//!  byte 1, 2-3:    reserved (or GBP: D = 0x40, A = 0x08 in byte 1, group policy id in 2-3)
//!  bytes 4-6:      VNI
//!  byte 7:         reserved
//! ```
//!
//! Only the I flag is interpreted. Every reserved bit, the Group Based Policy
//! extension (G = 0x80 in byte 0, D and A in byte 1, policy id in bytes 2-3) is
//! tolerated and ignored when receiving, as RFC 7348 asks; accessors for the
//! GBP fields are provided for diagnostics only.

use crate::{be16, be32, put32, Result, WireError};

/// Byte offsets in the header.
pub mod field {
    use core::ops::Range;
    /// Flags (I = 0x08, GBP G = 0x80).
    pub const FLAGS: usize = 0;
    /// GBP flags (D = 0x40, A = 0x08) or reserved.
    pub const GBP_FLAGS: usize = 1;
    /// GBP group policy id or reserved.
    pub const GROUP_POLICY: Range<usize> = 2..4;
    /// VXLAN network identifier.
    pub const VNI: Range<usize> = 4..7;
    /// Reserved.
    pub const RESERVED: usize = 7;
}

/// Header length.
pub const HEADER_LEN: usize = 8;
/// "VNI valid" flag in byte 0.
pub const FLAG_I: u8 = 0x08;
/// GBP "group policy present" flag in byte 0.
pub const FLAG_G: u8 = 0x80;
/// GBP "don't learn" flag in byte 1.
pub const FLAG_D: u8 = 0x40;
/// GBP "policy applied" flag in byte 1.
pub const FLAG_A: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// A read/write view of a VXLAN header and the inner frame after it.
///
/// If [`VxlanPacket::new_checked`] returns `Ok`, no accessor panics.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Checks that the 8-byte header fits (flags are checked by [`VxlanRepr::parse`]).
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VxlanPacket { buffer })
    }
    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// The I flag: the VNI is valid.
    #[inline]
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }
    /// GBP: group policy id present.
    #[inline]
    pub fn gbp(&self) -> bool {
        self.flags() & FLAG_G != 0
    }
    /// GBP: don't learn.
    #[inline]
    pub fn dont_learn(&self) -> bool {
        self.buffer.as_ref()[field::GBP_FLAGS] & FLAG_D != 0
    }
    /// GBP: policy applied.
    #[inline]
    pub fn policy_applied(&self) -> bool {
        self.buffer.as_ref()[field::GBP_FLAGS] & FLAG_A != 0
    }
    /// GBP group policy id (meaningful only if [`gbp`](Self::gbp)).
    #[inline]
    pub fn group_policy_id(&self) -> u16 {
        be16(self.buffer.as_ref(), field::GROUP_POLICY.start)
    }
    /// VNI (24 bits).
    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI.start) >> 8
    }
    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    /// Sets the VNI (masked to 24 bits), keeping the reserved byte 7.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        let r = b[field::RESERVED];
        put32(b, field::VNI.start, ((vni & MAX_VNI) << 8) | u32::from(r));
    }
    /// Mutable inner frame.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A parsed VXLAN header: just the VNI (GBP and reserved bits are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanRepr {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a checked header; `Malformed` if the I flag is clear.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<Self> {
        if !p.vni_valid() {
            return Err(WireError::Malformed);
        }
        Ok(VxlanRepr { vni: p.vni() })
    }

    /// Writes the header (flags = I only, reserved bits zero); returns 8.
    /// `Malformed` if the VNI does not fit in 24 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.vni > MAX_VNI {
            return Err(WireError::Malformed);
        }
        put32(buf, 0, u32::from(FLAG_I) << 24);
        put32(buf, 4, self.vni << 8);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_parse_gbp() {
        // PcapPlusPlus Vxlan1: flags 0x8848, group policy 100, VNI 3000001.
        let h = [0x88, 0x48, 0x00, 0x64, 0x2d, 0xc6, 0xc1, 0x00, 0xee];
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert!(p.vni_valid() && p.gbp() && p.dont_learn() && p.policy_applied());
        assert_eq!(p.group_policy_id(), 100);
        assert_eq!(p.vni(), 3_000_001);
        assert_eq!(p.payload(), &[0xee]);
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 3_000_001 }));
    }

    #[test]
    fn test_flags_and_truncated() {
        let h = [0x00, 0, 0, 0, 0, 0, 100, 0xff];
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Err(WireError::Malformed));
        for n in 0..8 {
            assert_eq!(
                VxlanPacket::new_checked(&h[..n]).err(),
                Some(WireError::Truncated)
            );
        }
        let mut h = [0xf7u8, 0xff, 0xff, 0xff, 0, 0, 0, 0xff]; // every bit but I
        assert!(VxlanRepr::parse(&VxlanPacket::new_checked(&h[..]).unwrap()).is_err());
        h[0] = 0xff;
        let mut p = VxlanPacket::new_checked(&mut h[..]).unwrap();
        p.set_vni(0x123456);
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 0x123456 }));
        assert_eq!(h[7], 0xff);
    }

    proptest! {
        #[test]
        fn prop_roundtrip(vni in 0u32..=MAX_VNI) {
            let mut b = [0u8; 8];
            VxlanRepr { vni }.emit(&mut b).unwrap();
            prop_assert_eq!(b[0], FLAG_I);
            prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap()).unwrap(), VxlanRepr { vni });
        }
    }
}
