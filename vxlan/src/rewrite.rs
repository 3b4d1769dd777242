//! In-place rewrites on the forwarding path: TTL / hop limit and MACs.

#[cfg(test)]
use crate::checksum;
use crate::{be16, ipv4, ipv6, put16};

/// Why [`decrement_ttl`] refused to forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlError {
    /// TTL / hop limit is 0 or 1, or `l3` is not an IPv4/IPv6 header at all
    /// (too short or another version): the packet must not be forwarded.
    Expired,
}

impl std::fmt::Display for TtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ttl_expired")
    }
}

impl std::error::Error for TtlError {}

/// Decrements the IPv4 TTL (updating the header checksum incrementally, RFC
/// 1624) or the IPv6 hop limit in place. `l3` starts at the IP header.
///
/// `Err(Expired)` if the TTL / hop limit is 0 or 1 — the packet must not be
/// forwarded — and also if `l3` is shorter than the fixed header or its version
/// is neither 4 nor 6. The packet is left unchanged on error. Never panics.
#[inline]
pub fn decrement_ttl(l3: &mut [u8]) -> Result<(), TtlError> {
    match l3.first().map(|b| b >> 4) {
        Some(4) if l3.len() >= ipv4::HEADER_LEN => {
            let ttl = l3[ipv4::field::TTL];
            if ttl <= 1 {
                return Err(TtlError::Expired);
            }
            l3[ipv4::field::TTL] = ttl - 1;
            // RFC 1624 eqn 3 with m = TTL·256 + proto and m' = m − 256:
            // ~m + m' = 0xffff − 256 = 0xfeff, so HC' = ~(~HC + 0xfeff); the sum
            // is below 0x1ffff, so one end-around carry folds it.
            let c = be16(l3, ipv4::field::CHECKSUM.start);
            let s = u32::from(!c) + 0xfeff;
            let s = (s & 0xffff) + (s >> 16);
            put16(l3, ipv4::field::CHECKSUM.start, !(s as u16));
            Ok(())
        }
        Some(6) if l3.len() >= ipv6::HEADER_LEN => {
            let hl = l3[ipv6::field::HOP_LIMIT];
            if hl <= 1 {
                return Err(TtlError::Expired);
            }
            l3[ipv6::field::HOP_LIMIT] = hl - 1;
            Ok(())
        }
        _ => Err(TtlError::Expired),
    }
}

/// Rewrites the Ethernet source and destination MACs of `frame` in place
/// (no-op if the frame is shorter than 12 bytes).
#[inline]
pub fn set_macs(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    if let Some(h) = frame.get_mut(..12) {
        h[..6].copy_from_slice(&dst);
        h[6..].copy_from_slice(&src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_known_v4() {
        // Checksum 0xb861 with TTL 64; with TTL 63 the header sums to 0xb961.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        decrement_ttl(&mut h).unwrap();
        assert_eq!(h[8], 63);
        assert_eq!(&h[10..12], &[0xb9, 0x61]);
        assert!(checksum::verify(&h));
    }

    #[test]
    fn test_expired_unchanged() {
        for ttl in [0u8, 1] {
            let mut h = [
                0x45, 0, 0, 20, 0, 0, 0, 0, ttl, 17, 0xaa, 0xbb, 1, 2, 3, 4, 5, 6, 7, 8,
            ];
            let before = h;
            assert_eq!(decrement_ttl(&mut h), Err(TtlError::Expired));
            assert_eq!(h, before);
            let mut v6 = [0u8; 40];
            v6[0] = 0x60;
            v6[7] = ttl;
            assert_eq!(decrement_ttl(&mut v6), Err(TtlError::Expired));
            assert_eq!(v6[7], ttl);
        }
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[7] = 2;
        decrement_ttl(&mut v6).unwrap();
        assert_eq!(v6[7], 1);
        assert_eq!(decrement_ttl(&mut []), Err(TtlError::Expired));
        assert_eq!(decrement_ttl(&mut [0x45; 19]), Err(TtlError::Expired));
        assert_eq!(decrement_ttl(&mut [0x60; 39]), Err(TtlError::Expired));
        assert_eq!(decrement_ttl(&mut [0x55; 60]), Err(TtlError::Expired));
    }

    #[test]
    fn test_set_macs() {
        let mut f = [0u8; 14];
        set_macs(&mut f, [1; 6], [2; 6]);
        assert_eq!(&f[..6], &[2; 6]);
        assert_eq!(&f[6..12], &[1; 6]);
        let mut short = [9u8; 11];
        set_macs(&mut short, [1; 6], [2; 6]);
        assert_eq!(short, [9; 11]);
    }

    proptest! {
        #[test]
        fn prop_v4_checksum_stays_valid(mut h in any::<[u8; 24]>(), ttl in 2u8..=255, ihl in 5u8..=6) {
            h[0] = 0x40 | ihl;
            h[8] = ttl;
            let hl = usize::from(ihl) * 4;
            h[10] = 0;
            h[11] = 0;
            let c = checksum::checksum(&h[..hl]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            decrement_ttl(&mut h).unwrap();
            prop_assert_eq!(h[8], ttl - 1);
            // Recompute from scratch and compare.
            let mut z = h;
            z[10] = 0;
            z[11] = 0;
            let fresh = checksum::checksum(&z[..hl]);
            prop_assert_eq!(be16(&h, 10), fresh);
            prop_assert!(checksum::verify(&h[..hl]));
        }
    }
}
