//! The Geneve header (RFC 8926, section 3.4), as far as a decapsulating
//! gateway reads it.
//!
//! ```text
//!  byte 0:    Ver (2 bits, 0) | Opt Len (6 bits, in 4-byte words)
//!  byte 1:    O (control) | C (critical options present) | 6 reserved bits
//!  bytes 2-3: protocol type (0x6558 = Ethernet, as VXLAN carries)
//!  bytes 4-6: VNI
//!  byte 7:    reserved
//!  then Opt Len × 4 bytes of options, each: class (2 bytes), type (1 byte,
//!  high bit = critical), 3 reserved bits + length (5 bits, in 4-byte words
//!  after this 4-byte option header), data.
//! ```
//!
//! We understand no option: options are skipped by their lengths, and a
//! packet carrying a critical one (the C flag with options, or an option whose
//! type has its critical bit) is dropped, as section 3.5 requires of an
//! endpoint that does not understand it. The reserved bits are ignored.

use crate::{be16, be32, put16, put32};

/// Byte offsets in the fixed header.
pub mod field {
    use core::ops::Range;
    /// Version (2 high bits) and options length (6 low bits, 4-byte words).
    pub const VER_OPT_LEN: usize = 0;
    /// O and C flags.
    pub const FLAGS: usize = 1;
    /// Protocol type of the payload.
    pub const PROTOCOL: Range<usize> = 2..4;
    /// Virtual network identifier.
    pub const VNI: Range<usize> = 4..7;
    /// Reserved.
    pub const RESERVED: usize = 7;
}

/// Length of the fixed header (options follow it).
pub const HEADER_LEN: usize = 8;
/// The IANA UDP port.
pub const PORT: u16 = 6081;
/// The only version defined.
pub const VERSION: u8 = 0;
/// "Control packet" flag (byte 1): not to be forwarded to a tenant.
pub const FLAG_O: u8 = 0x80;
/// "Critical options present" flag (byte 1).
pub const FLAG_C: u8 = 0x40;
/// Critical bit of an option's type byte.
pub const OPTION_CRITICAL: u8 = 0x80;
/// Length of an option's own header.
pub const OPTION_HEADER_LEN: usize = 4;
/// Protocol type of an Ethernet payload (Transparent Ethernet Bridging).
pub const PROTO_ETHERNET: u16 = 0x6558;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Version field of the first header byte.
#[inline(always)]
pub fn version(b0: u8) -> u8 {
    b0 >> 6
}

/// Bytes of options announced by the first header byte.
#[inline(always)]
pub fn options_len(b0: u8) -> usize {
    usize::from(b0 & 0x3f) * 4
}

/// Why [`check`] refused a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneveError {
    /// Version not 0, or the options (their total or one of them) run past
    /// the UDP payload / the announced options length.
    BadHeader,
    /// The O (control) flag: a message between tunnel endpoints.
    Control,
    /// A critical option we do not understand (we understand none).
    Critical,
    /// The payload is not Ethernet (0x6558).
    Proto,
}

/// What [`check`] found: the VNI and where the payload starts (after the
/// options), relative to the start of the Geneve header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneveHeader {
    /// VNI (24 bits).
    pub vni: u32,
    /// Fixed header + options.
    pub header_len: usize,
}

/// Checks a Geneve header at the start of `udp_payload` (the UDP payload, cut
/// to the UDP length), in this order: version 0 and room for the fixed header
/// and the announced options, else `BadHeader`; O flag → `Control`; each
/// option's length within the options (else `BadHeader`) and no critical one
/// (the C flag with options, or an option type's critical bit) → `Critical`;
/// protocol type Ethernet, else `Proto`. Never panics.
#[inline]
pub fn check(udp_payload: &[u8]) -> Result<GeneveHeader, GeneveError> {
    let Some(h) = udp_payload.first_chunk::<HEADER_LEN>() else {
        return Err(GeneveError::BadHeader);
    };
    if version(h[field::VER_OPT_LEN]) != VERSION {
        return Err(GeneveError::BadHeader);
    }
    let opt_len = options_len(h[field::VER_OPT_LEN]);
    let Some(opts) = udp_payload.get(HEADER_LEN..HEADER_LEN + opt_len) else {
        return Err(GeneveError::BadHeader);
    };
    let flags = h[field::FLAGS];
    if flags & FLAG_O != 0 {
        return Err(GeneveError::Control);
    }
    if flags & FLAG_C != 0 && opt_len != 0 {
        return Err(GeneveError::Critical);
    }
    let mut at = 0;
    while at < opts.len() {
        let Some(o) = opts.get(at..at + OPTION_HEADER_LEN) else {
            return Err(GeneveError::BadHeader);
        };
        if o[2] & OPTION_CRITICAL != 0 {
            return Err(GeneveError::Critical);
        }
        at += OPTION_HEADER_LEN + usize::from(o[3] & 0x1f) * 4;
        if at > opts.len() {
            return Err(GeneveError::BadHeader);
        }
    }
    if be16(h, field::PROTOCOL.start) != PROTO_ETHERNET {
        return Err(GeneveError::Proto);
    }
    Ok(GeneveHeader {
        vni: be32(h, field::VNI.start) >> 8,
        header_len: HEADER_LEN + opt_len,
    })
}

/// Writes the 8-byte fixed header without options (version 0, no flags,
/// protocol Ethernet, `vni` masked to 24 bits) into `buf[..8]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] (a caller bug, not input).
#[inline(always)]
pub fn emit(vni: u32, buf: &mut [u8]) {
    put16(buf, 0, 0);
    put16(buf, field::PROTOCOL.start, PROTO_ETHERNET);
    put32(buf, field::VNI.start, (vni & MAX_VNI) << 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A header with `opts` (already encoded) and `tail` bytes of payload.
    fn hdr(flags: u8, proto: u16, opts: &[u8]) -> Vec<u8> {
        let mut h = vec![(opts.len() / 4) as u8, flags];
        h.extend_from_slice(&proto.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34, 0x56, 0]);
        h.extend_from_slice(opts);
        h.extend_from_slice(&[0xee; 14]);
        h
    }

    fn opt(ty: u8, words: u8) -> Vec<u8> {
        let mut o = vec![0x01, 0x02, ty, words];
        o.extend(std::iter::repeat_n(0xab, usize::from(words) * 4));
        o
    }

    #[test]
    fn test_check() {
        let h = hdr(0, PROTO_ETHERNET, &[]);
        assert_eq!(
            check(&h),
            Ok(GeneveHeader {
                vni: 0x123456,
                header_len: 8
            })
        );
        // Options of every length 0..=31 words are skipped.
        for w in 0..=31u8 {
            let o = opt(0x01, w);
            let h = hdr(0, PROTO_ETHERNET, &o);
            assert_eq!(check(&h).unwrap().header_len, 8 + 4 + usize::from(w) * 4);
        }
        // The largest options length (63 words): 3 options of 21 words each.
        let mut o = Vec::new();
        for _ in 0..3 {
            o.extend(opt(0x7f, 20));
        }
        assert_eq!(o.len(), 252);
        assert_eq!(check(&hdr(0, PROTO_ETHERNET, &o)).unwrap().header_len, 260);
        // Reserved flag bits and the reserved byte are ignored.
        let mut h = hdr(0x3f, PROTO_ETHERNET, &[]);
        h[7] = 0xff;
        assert!(check(&h).is_ok());
    }

    #[test]
    fn test_errors() {
        for v in 1..4u8 {
            let mut h = hdr(0, PROTO_ETHERNET, &[]);
            h[0] |= v << 6;
            assert_eq!(check(&h), Err(GeneveError::BadHeader), "version {v}");
        }
        for n in 0..8 {
            assert_eq!(
                check(&hdr(0, PROTO_ETHERNET, &[])[..n]),
                Err(GeneveError::BadHeader)
            );
        }
        // Options announced past the end: every cut inside them.
        let o = opt(1, 2);
        let h = hdr(0, PROTO_ETHERNET, &o);
        for n in 8..8 + o.len() {
            assert_eq!(check(&h[..n]), Err(GeneveError::BadHeader), "cut {n}");
        }
        assert!(check(&h[..8 + o.len()]).is_ok());
        // An option longer than the options length: one word too many.
        let mut bad = opt(1, 2);
        bad[3] = 3;
        assert_eq!(
            check(&hdr(0, PROTO_ETHERNET, &bad)),
            Err(GeneveError::BadHeader)
        );
        // Two words of options holding two empty options.
        let mut h = hdr(0, PROTO_ETHERNET, &[0, 0, 1, 0, 0, 0, 0, 0]);
        h[0] = 2;
        assert!(check(&h).is_ok(), "two empty options");
        // O flag.
        assert_eq!(
            check(&hdr(FLAG_O, PROTO_ETHERNET, &[])),
            Err(GeneveError::Control)
        );
        // C flag: critical only with options.
        assert!(check(&hdr(FLAG_C, PROTO_ETHERNET, &[])).is_ok());
        assert_eq!(
            check(&hdr(FLAG_C, PROTO_ETHERNET, &opt(1, 0))),
            Err(GeneveError::Critical)
        );
        // A critical option type without the C flag, first or after another.
        assert_eq!(
            check(&hdr(0, PROTO_ETHERNET, &opt(0x80, 1))),
            Err(GeneveError::Critical)
        );
        let mut two = opt(1, 1);
        two.extend(opt(0xff, 0));
        assert_eq!(
            check(&hdr(0, PROTO_ETHERNET, &two)),
            Err(GeneveError::Critical)
        );
        // Protocol types other than Ethernet.
        for p in [0x0800u16, 0x86dd, 0x6559, 0] {
            assert_eq!(check(&hdr(0, p, &[])), Err(GeneveError::Proto), "{p:#x}");
        }
    }

    proptest! {
        #[test]
        fn prop_no_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(g) = check(&data) {
                prop_assert!(g.header_len <= data.len());
            }
        }

        #[test]
        fn prop_roundtrip(vni in 0u32..=MAX_VNI) {
            let mut b = [0u8; 8];
            emit(vni, &mut b);
            prop_assert_eq!(check(&b), Ok(GeneveHeader { vni, header_len: 8 }));
        }
    }
}
