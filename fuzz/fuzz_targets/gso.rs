//! Software TCP segmentation (`vxlan::gso`), as AF_PACKET RX runs it on
//! super-frames from the kernel: the first two bytes are the TCP header
//! offset the sender claims, the next two the MSS, the rest the frame. A plan
//! either is refused or writes every segment without panicking, each of the
//! announced length, and the segments' payloads put back together are the
//! frame's payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxlan::gso::GsoPlan;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let tcp = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let mss = usize::from(u16::from_be_bytes([data[2], data[3]]) % 2048);
    let frame = &data[4..];
    let Ok(plan) = GsoPlan::new(frame, tcp, mss) else {
        return;
    };
    let hdr = plan.header_len();
    assert!(hdr <= frame.len());
    let mut payload = Vec::new();
    let mut buf = vec![0u8; hdr + mss];
    for i in 0..plan.segments() {
        let n = plan
            .write(frame, i, &mut buf)
            .expect("a planned segment is written");
        assert_eq!(n, plan.segment_len(i));
        assert!(n >= hdr && n <= hdr + mss);
        payload.extend_from_slice(&buf[hdr..n]);
    }
    assert_eq!(&payload[..], &frame[hdr..]);
    assert!(plan.write(frame, plan.segments(), &mut buf).is_none());
});
