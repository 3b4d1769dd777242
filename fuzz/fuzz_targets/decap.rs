//! Outer headers and VXLAN: `vxlan::decap` under a strict, an any-VTEP and
//! the default config, and every protocol view of the `vxlan` crate on the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = vxlan::DecapConfig {
        vtep_v4: vec![0x0a00_0001],
        vtep_v6: vec![0xfd00 << 112 | 1],
        ports: vec![4789, 8472],
        geneve_ports: vec![6081],
    };
    // Any VTEP address, the same ports (the strict config's 8472 and Geneve
    // are not in the default's ports, `[4789]` and none).
    let any = vxlan::DecapConfig {
        vtep_v4: vec![],
        vtep_v6: vec![],
        ..strict.clone()
    };
    let default = vxlan::DecapConfig::default();
    for cfg in [&strict, &any, &default] {
        if let Ok(d) = vxlan::decap(data, cfg) {
            assert!(d.inner_offset + d.inner_len <= data.len());
            assert!(d.vni <= 0x00ff_ffff);
            // The same frame with trailing padding decapsulates the same way.
            let mut padded = data.to_vec();
            padded.extend_from_slice(&[0u8; 7]);
            assert_eq!(vxlan::decap(&padded, cfg), Ok(d));
        }
    }
    // A strict config accepts a subset of what "any VTEP" accepts.
    if vxlan::decap(data, &strict).is_ok() {
        assert!(vxlan::decap(data, &any).is_ok());
    }
    dpgw_fuzz::check_views(data);
    // The views start at every layer: Ethernet, IP, UDP, VXLAN offsets of a
    // plain untagged frame.
    for off in [14usize, 34, 42, 54, 62] {
        if let Some(rest) = data.get(off..) {
            dpgw_fuzz::check_views(rest);
        }
    }
});
