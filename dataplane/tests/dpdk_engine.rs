//! The whole pipeline on the DPDK backend (`dataplane.io = "dpdk"`): the demo
//! capture goes in through a `net_pcap` port and out through another capture,
//! and the result must equal the pcap backend's on the same config: same
//! counters, same drops, the same frames in the same order.
//!
//! Its own test binary: the EAL can be initialised only once per process.
#![cfg(feature = "dpdk")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::{Config, DpdkSection, IoKind, PcapSection};
use dataplane::runner::{self, RunOptions};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pcaps/demo.toml");
const DEMO_PCAP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pcaps/demo.pcap");

/// Packet data of a classic little-endian pcap file (micro- or nanosecond).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(d.len() >= 24, "{}: short pcap", path.display());
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        assert!(
            off + incl <= d.len(),
            "{}: truncated record",
            path.display()
        );
        out.push(d[off..off + incl].to_vec());
        off += incl;
    }
    out
}

fn demo_config() -> Config {
    let text = std::fs::read_to_string(DEMO).unwrap();
    let mut cfg = Config::parse(&text).unwrap();
    cfg.dataplane.workers = 1;
    cfg.dataplane.no_pin = true;
    cfg
}

#[test]
fn demo_capture_through_dpdk_equals_pcap_backend() {
    let dir = tempfile::tempdir().unwrap();
    let input = read_pcap(Path::new(DEMO_PCAP));
    let n = input.len() as u64;
    assert!(n > 0);

    // Reference: the pcap backend, one pass over the capture.
    let ref_out = dir.path().join("ref.pcap");
    let mut pcfg = demo_config();
    pcfg.dataplane.io = IoKind::Pcap;
    pcfg.pcap = Some(PcapSection {
        input: vec![PathBuf::from(DEMO_PCAP)],
        output: Some(ref_out.clone()),
        loops: 1,
        split: Default::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (reference, _) = runner::run(&pcfg, &RunOptions::default(), stop).unwrap();
    assert_eq!(reference.rx, n);
    assert!(reference.conserved());

    // DPDK: a net_pcap port replays the same capture once and writes what we send.
    let prefix = format!("dpgw-dpdk-engine-{}", std::process::id());
    let out = dir.path().join("dpdk.pcap");
    let mut dcfg = demo_config();
    dcfg.dataplane.io = IoKind::Dpdk;
    dcfg.pcap = None;
    dcfg.dpdk = Some(DpdkSection {
        eal_args: vec![
            "--no-huge".into(),
            "-m".into(),
            "256".into(),
            "--no-pci".into(),
            "--no-telemetry".into(),
            "-l".into(),
            "0".into(),
            format!("--file-prefix={prefix}"),
            format!(
                "--vdev=net_pcap0,rx_pcap={DEMO_PCAP},tx_pcap={}",
                out.display()
            ),
        ],
        rx_desc: 256,
        tx_desc: 256,
        mbufs: 2047,
        mbuf_cache: 32,
        ..DpdkSection::default()
    });
    assert_eq!(dcfg.validate(), Vec::<String>::new());
    let shared = runner::prepare(&dcfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The port never reports the end of its input: stop once every packet has
    // been accounted for (or after a generous timeout, and let the checks fail).
    let watcher = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let t = shared.totals();
                if t.rx >= n && t.tx + t.total_drops() >= t.rx {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Let a stray extra packet (there must be none) show up in the counts.
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let result = dataplane::runner::run_prepared(&dcfg, &RunOptions::default(), stop, shared);
    watcher.join().unwrap();
    let (summary, shared) = result.unwrap();
    // The port is stopped (its output capture closed) when run_prepared
    // returns, and the control side no longer sees it.
    assert!(shared.port_counters().is_empty());
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));

    assert_eq!(summary.rx, n, "{}", summary.human());
    assert!(summary.conserved(), "{}", summary.human());
    assert_eq!(summary.tx, reference.tx);
    assert_eq!(summary.drops, reference.drops);
    assert_eq!(summary.rx_bytes, reference.rx_bytes);
    assert_eq!(summary.tx_bytes, reference.tx_bytes);
    let got = read_pcap(&out);
    let want = read_pcap(&ref_out);
    assert_eq!(got.len() as u64, summary.tx);
    assert_eq!(got, want, "DPDK output differs from the pcap backend's");
}
