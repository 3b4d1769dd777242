//! The Internet checksum (RFC 1071), its incremental update (RFC 1624) and the
//! UDP/TCP pseudo-headers for IPv4 and IPv6.
//!
//! Sums are carried unfolded in a `u64` so that pieces (pseudo-header, header,
//! payload) can be added one after the other; [`fold`] reduces them to 16 bits.
//! Every piece except the last must have an even length, so that each byte keeps
//! its position within the 16-bit words.

/// Adds `data`, read as big-endian 16-bit words (an odd trailing byte is padded
/// with a zero byte), to the running one's-complement sum `acc`.
#[inline]
pub fn accumulate(mut acc: u64, data: &[u8]) -> u64 {
    // Adding 32-bit words is equivalent to adding their two 16-bit halves modulo
    // 0xffff, and halves the number of additions.
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rem = chunks.remainder();
    match *rem {
        [a, b, c] => acc + u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => acc + u64::from(u16::from_be_bytes([a, b])),
        [a] => acc + (u64::from(a) << 8),
        _ => acc,
    }
}

/// Folds an unfolded sum to 16 bits (end-around carry), without complementing.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let mut s = (acc & 0xffff_ffff) + (acc >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    let mut s = s as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data`: the complement of its one's-complement sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// True if `data` (which contains its own checksum field) sums to 0xffff, i.e.
/// its checksum is correct.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(accumulate(0, data)) == 0xffff
}

/// [`verify`] for the common option-less IPv4 header: five native-endian
/// 32-bit loads and one reduction, no loop.
///
/// The one's-complement sum is 0xffff exactly when the plain sum of the 16-bit
/// words is a non-zero multiple of 0xffff. Because 2^16 ≡ 1 (mod 0xffff), the
/// plain sum of 32-bit words has the same residue; and byte order does not
/// matter because swapping the bytes of a word multiplies it by 256 (mod
/// 0xffff), which is invertible. So no byte swaps and no carry folding.
#[inline(always)]
pub fn verify20(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let s = (w(0) + w(4)) + (w(8) + w(12)) + w(16);
    s != 0 && s % 0xffff == 0
}

/// Updates checksum `csum` after a 16-bit word of the covered data changed from
/// `old` to `new` (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let s = u64::from(!csum) + u64::from(!old) + u64::from(new);
    !fold(s)
}

/// Unfolded sum of the IPv4 pseudo-header (RFC 768 / RFC 793): source,
/// destination, zero, protocol, L4 length.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(proto)
        + u64::from(l4_len)
}

/// Unfolded sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source,
/// destination, upper-layer packet length (32 bits), zero, next header.
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u64 {
    accumulate(accumulate(0, src), dst) + u64::from(l4_len) + u64::from(proto)
}

/// Finishes a UDP checksum from an unfolded sum: complements it and maps a
/// computed 0 to 0xffff, because 0 on the wire means "no checksum" (RFC 768).
#[inline]
pub fn finish_udp(acc: u64) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Checksum of a UDP or TCP segment `l4` (checksum field included as it is in
/// the buffer; zero it first when computing) over an IPv4 pseudo-header.
pub fn l4_checksum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    !fold(accumulate(pseudo_header_v4(src, dst, proto, len), l4))
}

/// Checksum of a UDP or TCP segment `l4` over an IPv6 pseudo-header.
pub fn l4_checksum_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4: &[u8]) -> u16 {
    let len = u32::try_from(l4.len()).unwrap_or(u32::MAX);
    !fold(accumulate(pseudo_header_v6(src, dst, proto, len), l4))
}

/// Completes a checksum left partial by checksum offload (the kernel's
/// `CHECKSUM_PARTIAL`, virtio's `NEEDS_CSUM`): the field at `start + offset`
/// holds the pseudo-header sum, and the sender expected hardware to add
/// everything from `start` to the end of `frame` and store the complement
/// there. Does what the kernel's `skb_checksum_help` does, including writing
/// 0xffff for a computed 0 (valid for TCP, required for UDP).
///
/// Returns false, leaving `frame` untouched, when the field does not lie
/// inside `frame` (offsets from a lying or buggy sender).
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if start >= frame.len() || !matches!(field.checked_add(2), Some(e) if e <= frame.len()) {
        return false;
    }
    let c = match !fold(accumulate(0, &frame[start..])) {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_complete_partial_udp_and_tcp() {
        let src = [198, 18, 1, 10];
        let dst = [10, 96, 0, 100];
        for proto in [6u8, 17] {
            let field = if proto == 6 { 16 } else { 6 };
            let mut l4 = vec![0u8; if proto == 6 { 20 } else { 8 }];
            l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
            l4[2..4].copy_from_slice(&80u16.to_be_bytes());
            if proto == 17 {
                l4[4..6].copy_from_slice(&13u16.to_be_bytes());
            } else {
                l4[12] = 0x50;
            }
            l4.extend_from_slice(b"hello");
            let want = l4_checksum_v4(src, dst, proto, &l4);
            // What an offloading sender leaves: the folded pseudo-header sum.
            let pseudo = fold(pseudo_header_v4(src, dst, proto, l4.len() as u16));
            l4[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
            let mut frame = vec![0xaa; 34];
            frame.extend_from_slice(&l4);
            assert!(complete_partial(&mut frame, 34, field));
            let got = u16::from_be_bytes([frame[34 + field], frame[35 + field]]);
            assert_eq!(got, if want == 0 { 0xffff } else { want }, "proto {proto}");
            assert_eq!(l4_checksum_v4(src, dst, proto, &frame[34..]), 0);
        }
    }

    #[test]
    fn test_complete_partial_rejects_offsets_outside() {
        let mut f = vec![0u8; 40];
        let copy = f.clone();
        assert!(!complete_partial(&mut f, 40, 0));
        assert!(!complete_partial(&mut f, 34, 5));
        assert!(!complete_partial(&mut f, usize::MAX, 6));
        assert!(!complete_partial(&mut f, 10, usize::MAX));
        assert_eq!(f, copy);
        assert!(complete_partial(&mut f, 34, 4));
    }

    /// Straightforward RFC 1071 reference: 16-bit words, fold at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u64::from(w);
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn test_rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn test_verify20() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verify20(&h));
        for i in 0..20 {
            let mut b = h;
            b[i] ^= 0x10;
            assert!(!verify20(&b));
            assert_eq!(verify20(&b), verify(&b));
        }
    }

    proptest! {
        #[test]
        fn prop_verify20_matches_verify(mut h in any::<[u8; 20]>(), fix in any::<bool>()) {
            if fix {
                h[10] = 0;
                h[11] = 0;
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(verify20(&h), verify(&h));
        }
    }

    #[test]
    fn test_ipv4_header_known() {
        // A classic header with checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verify(&h));
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), 0xb861);
    }

    proptest! {
        #[test]
        fn prop_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn prop_split_sum(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..150) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(!fold(accumulate(accumulate(0, a), b)), reference(&data));
        }

        #[test]
        fn prop_update16(mut data in proptest::collection::vec(any::<u8>(), 2..64), w in 0usize..32, new in any::<u16>()) {
            let len = data.len() & !1;
            data.truncate(len);
            let i = (w * 2) % len;
            let c = checksum(&data);
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update16(c, old, new);
            // 0x0000 and 0xffff are both representations of one's-complement zero.
            let fresh = checksum(&data);
            prop_assert!(updated == fresh || (updated ^ fresh) == 0xffff && (fresh == 0 || fresh == 0xffff),
                "updated {updated:#x} fresh {fresh:#x}");
        }
    }
}
