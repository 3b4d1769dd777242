//! The capture reader (pcap in both byte orders and resolutions, pcapng):
//! never panics, and every record it returns lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cap) = dataplane::pcapfile::parse(data.to_vec(), std::path::Path::new("fuzz.pcap"))
    else {
        return;
    };
    assert_eq!(cap.data.len(), data.len());
    for r in &cap.records {
        assert!(r.offset + r.len <= cap.data.len(), "record past the end");
        assert!(r.len <= dataplane::pcapfile::MAX_FRAME);
    }
    // What we write, we read back.
    let mut w = dataplane::pcapfile::PcapWriter::new();
    for (r, f) in cap.iter() {
        w.write(r.ts_ns, f);
    }
    let back = dataplane::pcapfile::parse(w.buf, std::path::Path::new("back.pcap"))
        .expect("own output parses");
    assert_eq!(back.records.len(), cap.records.len());
    for ((_, a), (_, b)) in back.iter().zip(cap.iter()) {
        assert_eq!(a, b);
    }
});
