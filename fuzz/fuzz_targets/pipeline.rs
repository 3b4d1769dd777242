//! The whole per-packet pipeline (decap → inner parse → ACL → LB → encap or
//! route) on one frame against a fixed gateway config; the output must be a
//! well-formed packet or a drop with the right reason (see
//! `dpgw_fuzz::check_pipeline`). The first byte picks the VTEP config.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    dpgw_fuzz::check_pipeline(frame, sel & 1 == 1);
});
