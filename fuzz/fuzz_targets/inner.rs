//! The inner frame: `vxlan::parse_inner`, then the in-place rewrites the
//! routing stage does (`decrement_ttl`, `set_macs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(inner) = vxlan::parse_inner(data, 42) else {
        return;
    };
    assert!(inner.l3_offset + inner.l3_len <= data.len());
    assert_eq!(inner.key.vni, 42);
    if !matches!(inner.key.proto, 6 | 17) {
        assert_eq!((inner.key.sport, inner.key.dport), (0, 0));
    }
    // Trailing padding is not part of the packet.
    let mut padded = data.to_vec();
    padded.extend_from_slice(&[0xa5; 5]);
    assert_eq!(vxlan::parse_inner(&padded, 42), Ok(inner));

    let mut buf = data[..inner.l3_offset + inner.l3_len].to_vec();
    let l3 = inner.l3_offset;
    let v6 = inner.key.v6;
    let before = buf.clone();
    match vxlan::decrement_ttl(&mut buf[l3..]) {
        Ok(()) => {
            let at = l3 + if v6 { 7 } else { 8 };
            assert!(before[at] > 1);
            assert_eq!(buf[at], before[at] - 1);
            if !v6 {
                // The incremental update keeps a valid checksum valid.
                let hl = usize::from(before[l3] & 15) * 4;
                let was = dpgw_fuzz::ones_sum(&before[l3..l3 + hl]) == 0xffff;
                let now = dpgw_fuzz::ones_sum(&buf[l3..l3 + hl]) == 0xffff;
                assert_eq!(was, now, "checksum validity changed");
            }
        }
        Err(_) => assert_eq!(buf, before, "a refused packet was modified"),
    }
    vxlan::set_macs(&mut buf, [1; 6], [2; 6]);
    assert_eq!(
        vxlan::parse_inner(&buf, 42).map(|i| i.l3_len),
        Ok(inner.l3_len)
    );
});
