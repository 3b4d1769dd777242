//! The DPDK backend against virtual devices, without a NIC and without hugepages
//! (`--no-huge`): `net_ring` (a loopback: what TX writes, RX reads), `net_null`
//! (infinite RX, TX that frees), `net_pcap` (replays a capture, writes one).
//!
//! The EAL can be initialised only once per process, so one test function
//! brings it up with every device and runs the scenarios in order; each scenario
//! checks that the mbuf pool's in-use count returns to where it started.
#![cfg(feature = "dpdk")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dataplane::io::dpdk::{
    sys, DpdkConfig, DpdkError, DpdkQueue, DpdkRuntime, Eal, Mbuf, Mempool, Port, MBUF_DATA_ROOM,
    MBUF_HEADROOM,
};
use dataplane::io::{Burst, Packet, Queue};

const VXLAN_PCAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/pcap/vxlan/tcpdump-vxlan.pcap"
);

/// Packet data of a classic little-endian pcap file (microsecond or nanosecond).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(d.len() >= 24, "{}: short pcap", path.display());
    let magic = u32::from_le_bytes(d[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "{}: not a little-endian pcap",
        path.display()
    );
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

fn write_pcap(path: &Path, pkts: &[Vec<u8>]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (i, p) in pkts.iter().enumerate() {
        f.extend_from_slice(&(i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(p);
    }
    std::fs::write(path, f).unwrap();
}

/// An Ethernet frame of `len` bytes whose bytes identify `tag`.
fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn small_cfg(ports: Vec<u16>) -> DpdkConfig {
    DpdkConfig {
        ports,
        rx_desc: 256,
        tx_desc: 256,
        mbufs: 4095,
        mbuf_cache: 64,
        ..DpdkConfig::default()
    }
}

fn free_all(q: &mut DpdkQueue, burst: &mut Burst<Mbuf>) {
    for p in burst.drain(..) {
        q.free(p);
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Removes the EAL's runtime directory (`/var/run/dpdk/PREFIX` as root) at the
/// end: the EAL is never cleaned up in-process and would leave it behind.
struct RuntimeDir {
    prefix: String,
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let base = if running_as_root() {
            PathBuf::from("/var/run/dpdk")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join("dpdk")
        };
        let _ = std::fs::remove_dir_all(base.join(&self.prefix));
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn dpdk_backend_on_virtual_devices() {
    let runtime = RuntimeDir {
        prefix: format!("dpgw-dpdk-io-{}", std::process::id()),
    };
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    // A capture with frames longer than an mbuf's data room: net_pcap hands
    // those out as mbuf chains, which the queue must drop, not leak.
    let jumbo_in = vec![
        frame(1, 100),
        frame(2, 3000),
        frame(3, 1500),
        frame(4, 2100),
        frame(5, 64),
    ];
    write_pcap(&files.path("jumbo.pcap"), &jumbo_in);
    let args: Vec<String> = vec![
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-pci".into(),
        "--no-telemetry".into(),
        "-l".into(),
        "0".into(),
        // A prefix of our own: no clash with another DPDK process's runtime files.
        // (`--in-memory` would leave no files, but it refuses `--no-huge`.)
        format!("--file-prefix={}", runtime.prefix),
        "--vdev=net_null0".into(),
        "--vdev=net_ring0".into(),
        format!(
            "--vdev=net_pcap0,rx_pcap={VXLAN_PCAP},tx_pcap={}",
            files.path("vxlan.out.pcap").display()
        ),
        format!(
            "--vdev=net_pcap1,rx_pcap={},tx_pcap={}",
            files.path("jumbo.pcap").display(),
            files.path("jumbo.out.pcap").display()
        ),
    ];
    let eal = Eal::init(&args).expect("EAL init (--no-huge)");
    assert!(matches!(
        Eal::init(&args),
        Err(DpdkError::AlreadyInitialised)
    ));
    assert!(Eal::get().is_some());
    assert_eq!(eal.port_ids().len(), 4, "ports: {:?}", eal.port_ids());
    let null0 = eal.port_by_name("net_null0").unwrap();
    let ring0 = eal.port_by_name("net_ring0").unwrap();
    let pcap0 = eal.port_by_name("net_pcap0").unwrap();
    let pcap1 = eal.port_by_name("net_pcap1").unwrap();
    assert!(eal.port_by_name("net_nothing9").is_err());

    mbuf_semantics(&eal);
    bad_configs(&eal, null0, ring0);
    ring_loopback(&eal, ring0);
    ring_multiseg(&eal, ring0);
    null_two_workers(&eal, null0);
    partial_tx(&eal, null0, ring0);
    pcap_replay(&eal, pcap0, &files.path("vxlan.out.pcap"));
    pcap_jumbo(&eal, pcap1, &files.path("jumbo.out.pcap"), &jumbo_in);
}

/// Mbuf's Packet methods agree with DPDK's own rte_pktmbuf_* functions.
fn mbuf_semantics(eal: &Eal) {
    let pool = Mempool::new(eal, "test_sem", 511, 0, MBUF_DATA_ROOM, None).unwrap();
    assert_eq!(pool.in_use(), 0);
    assert_eq!(pool.avail(), 511);
    // SAFETY: "test_sem" is the pktmbuf pool just created.
    assert!(unsafe { Mempool::lookup(eal, "test_sem") }.is_some());
    assert!(Mempool::new(eal, "test_sem", 511, 0, MBUF_DATA_ROOM, None).is_err());
    assert!(Mempool::new(eal, "test_badcache", 63, 64, MBUF_DATA_ROOM, None).is_err());

    let room = usize::from(MBUF_DATA_ROOM - MBUF_HEADROOM);
    let mut m = pool.alloc().unwrap();
    let r = pool.alloc().unwrap().into_raw();
    assert_eq!(pool.in_use(), 2);
    assert!(m.data().is_empty());
    assert_eq!(m.headroom(), usize::from(MBUF_HEADROOM));
    assert_eq!(m.tailroom(), room);

    // The same operations through DPDK's inline functions on `r`, compared
    // step by step: (data offset, data_len, pkt_len, headroom, tailroom).
    let check = |m: &Mbuf, r: std::ptr::NonNull<sys::rte_mbuf>, what: &str| {
        // SAFETY: r is a live mbuf we own; only read here.
        let (rr, head, tail, mtod) = unsafe {
            (
                r.as_ref(),
                sys::dpdk_sys_rte_pktmbuf_headroom(r.as_ptr()),
                sys::dpdk_sys_rte_pktmbuf_tailroom(r.as_ptr()),
                sys::dpdk_sys_rte_pktmbuf_mtod(m.as_ptr()),
            )
        };
        // SAFETY: m.as_ptr() is live and owned by m.
        let mr = unsafe { &*m.as_ptr() };
        assert_eq!(
            (mr.data_off, mr.data_len, mr.pkt_len),
            (rr.data_off, rr.data_len, rr.pkt_len),
            "after {what}"
        );
        assert_eq!(
            (m.headroom(), m.tailroom()),
            (usize::from(head), usize::from(tail)),
            "after {what}"
        );
        assert_eq!(
            m.data().as_ptr(),
            mtod.cast::<u8>().cast_const(),
            "after {what}"
        );
        assert_eq!(m.data().len(), usize::from(mr.data_len));
    };

    assert!(m.append(100));
    // SAFETY: r is a live mbuf we own.
    assert!(!unsafe { sys::dpdk_sys_rte_pktmbuf_append(r.as_ptr(), 100) }.is_null());
    check(&m, r, "append(100)");
    for (i, b) in m.data_mut().iter_mut().enumerate() {
        *b = i as u8;
    }

    assert!(m.prepend(14));
    // SAFETY: as above.
    assert!(!unsafe { sys::dpdk_sys_rte_pktmbuf_prepend(r.as_ptr(), 14) }.is_null());
    check(&m, r, "prepend(14)");
    assert_eq!(m.data().len(), 114);
    assert_eq!(m.data()[14], 0);
    assert_eq!(m.data()[113], 99);
    m.data_mut()[..14].fill(0xee);

    // Not enough headroom: refused, unchanged (DPDK agrees).
    assert!(!m.prepend(115));
    // SAFETY: as above.
    assert!(unsafe { sys::dpdk_sys_rte_pktmbuf_prepend(r.as_ptr(), 115) }.is_null());
    check(&m, r, "prepend(115) refused");

    m.adj(14);
    // SAFETY: as above.
    assert!(!unsafe { sys::dpdk_sys_rte_pktmbuf_adj(r.as_ptr(), 14) }.is_null());
    check(&m, r, "adj(14)");
    assert_eq!(m.data(), (0..100u8).collect::<Vec<_>>().as_slice());

    m.trim(60);
    // SAFETY: as above.
    assert_eq!(unsafe { sys::dpdk_sys_rte_pktmbuf_trim(r.as_ptr(), 40) }, 0);
    check(&m, r, "trim(60)");
    m.trim(80); // longer than the packet: no-op
    check(&m, r, "trim(80) no-op");
    assert_eq!(m.data(), (0..60u8).collect::<Vec<_>>().as_slice());

    let tail = m.tailroom();
    assert_eq!(tail, room - 60);
    assert!(!m.append(tail + 1));
    assert!(m.append(tail));
    // SAFETY: as above.
    assert!(!unsafe { sys::dpdk_sys_rte_pktmbuf_append(r.as_ptr(), tail as u16) }.is_null());
    check(&m, r, "append to the end");
    assert_eq!(m.tailroom(), 0);
    assert_eq!(m.data().len(), room);

    m.adj(room);
    // SAFETY: as above.
    assert!(!unsafe { sys::dpdk_sys_rte_pktmbuf_adj(r.as_ptr(), room as u16) }.is_null());
    check(&m, r, "adj(all)");
    assert!(m.data().is_empty());
    // adj past the end is an engine bug: it panics, leaving the mbuf intact.
    assert!(catch_unwind(AssertUnwindSafe(|| m.adj(1))).is_err());
    check(&m, r, "adj(1) refused");
    assert!(m.prepend(MBUF_DATA_ROOM.into()));
    assert_eq!(m.headroom(), 0);
    assert_eq!(m.tailroom(), 0);

    drop(m);
    // SAFETY: r is owned (from into_raw), single-segment, from a live pool.
    drop(unsafe { Mbuf::from_raw(r) });
    assert_eq!(pool.in_use(), 0);

    // Exhaustion is None, not a crash; everything comes back.
    let all: Vec<Mbuf> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(all.len(), 511);
    assert!(pool.alloc().is_none());
    drop(all);
    assert_eq!(pool.in_use(), 0);
}

fn bad_configs(eal: &Eal, null0: u16, ring0: u16) {
    let err = |cfg: &DpdkConfig, workers: usize| {
        DpdkRuntime::open(eal, cfg, workers)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(&small_cfg(vec![99]), 1).contains("port 99 does not exist"));
    assert!(err(&small_cfg(vec![null0]), 0).contains("workers = 0"));
    assert!(err(&small_cfg(vec![]), 1).contains("at least one port"));
    assert!(err(&small_cfg(vec![null0, null0]), 1).contains("listed twice"));
    let few = DpdkConfig {
        mbufs: 511,
        ..small_cfg(vec![null0])
    };
    assert!(err(&few, 2).contains("too few"), "{}", err(&few, 2));
    // More workers than the device has queues (net_ring: one per ring).
    let max = Port::new(eal, ring0).unwrap().info().unwrap().max_rx_queues;
    assert!(max >= 2, "net_ring has {max} queues");
    let many = DpdkConfig {
        mbufs: u32::MAX,
        ..small_cfg(vec![ring0])
    };
    let e = err(&many, usize::from(max) + 1);
    assert!(e.contains(&format!("supports {max} RX")), "{e}");
    // A port held by a live runtime cannot be opened twice.
    let (rt, _queues) = DpdkRuntime::open(eal, &small_cfg(vec![null0]), 1).unwrap();
    assert!(matches!(
        DpdkRuntime::open(eal, &small_cfg(vec![null0]), 1),
        Err(DpdkError::PortBusy(p)) if p == null0
    ));
    drop(rt);
}

/// net_ring: what TX writes, RX reads back, byte for byte and in order.
fn ring_loopback(eal: &Eal, ring0: u16) {
    let (rt, mut queues) = DpdkRuntime::open(eal, &small_cfg(vec![ring0]), 1).unwrap();
    assert_eq!(queues.len(), 1);
    assert!(!rt.ports()[0].rss_enabled(), "one queue: no RSS");
    assert_eq!(rt.ports()[0].info().unwrap().driver, "net_ring");
    let start = rt.mbufs_in_use();
    let q = &mut queues[0];
    // The test thread initialised the EAL: it already is lcore 0.
    assert_eq!(q.on_worker_thread(), Some(0));

    let mut burst: Burst<Mbuf> = Burst::new();
    for i in 0..64u8 {
        let mut m = q.mempool().alloc().unwrap();
        let f = frame(i, 60 + usize::from(i));
        assert!(m.append(f.len()));
        m.data_mut().copy_from_slice(&f);
        burst.push(m);
    }
    assert_eq!(rt.mbufs_in_use(), start + 64);
    assert_eq!(q.tx_burst(&mut burst), 64);
    assert!(burst.is_empty());
    assert_eq!(q.rx_burst(&mut burst, 16), 16, "max is honoured");
    assert_eq!(q.rx_burst(&mut burst, 256), 48);
    assert_eq!(burst.len(), 64);
    for (i, m) in burst.iter().enumerate() {
        assert_eq!(m.data(), frame(i as u8, 60 + i).as_slice(), "packet {i}");
    }
    // Encapsulate in place and send again: the prepended bytes travel.
    for m in burst.iter_mut() {
        assert!(m.prepend(20));
        m.data_mut()[..20].fill(0xab);
    }
    assert_eq!(q.tx_burst(&mut burst), 64);
    assert_eq!(q.rx_burst(&mut burst, 256), 64);
    for (i, m) in burst.iter_mut().enumerate() {
        assert_eq!(&m.data()[..20], &[0xab; 20]);
        m.adj(20);
        assert_eq!(m.data(), frame(i as u8, 60 + i).as_slice());
    }
    // Nothing more waiting: an empty poll.
    assert_eq!(q.rx_burst(&mut burst, 32), 0);
    // A full burst takes nothing more.
    while burst.len() < burst.capacity() {
        burst.push(q.mempool().alloc().unwrap());
    }
    assert_eq!(q.rx_burst(&mut burst, 32), 0);
    free_all(q, &mut burst);
    assert_eq!(rt.mbufs_in_use(), start);

    let st = &rt.port_stats()[0];
    assert_eq!((st.port, st.name.as_str()), (ring0, "net_ring0"));
    assert_eq!((st.ipackets, st.opackets), (128, 128));
    let link = rt.links()[0].1;
    assert!(link.up, "{link:?}");
    drop(queues);
    drop(rt);
}

/// net_null with two queues polled by two threads.
fn null_two_workers(eal: &Eal, null0: u16) {
    let (rt, queues) = DpdkRuntime::open(eal, &small_cfg(vec![null0]), 2).unwrap();
    assert_eq!(queues.len(), 2);
    // net_null reports (emulated) RSS hash types, so two queues get RSS.
    let info = rt.ports()[0].info().unwrap();
    assert_eq!(info.driver, "net_null");
    assert_ne!(info.rss_offloads, 0);
    assert!(rt.ports()[0].rss_enabled());
    let start = rt.mbufs_in_use();
    let lcores_before = eal.lcore_count();
    let both_registered = std::sync::Barrier::new(2);
    let results: Vec<(u64, u64, Option<u32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .map(|mut q| {
                let both_registered = &both_registered;
                s.spawn(move || {
                    let lcore = q.on_worker_thread();
                    // Both threads hold their lcore ids at the same time here (an id
                    // is released when its thread exits).
                    both_registered.wait();
                    let during = eal.lcore_count();
                    both_registered.wait();
                    assert_eq!(during, lcores_before + 2);
                    let (mut rx, mut tx) = (0u64, 0u64);
                    let mut burst: Burst<Mbuf> = Burst::new();
                    for i in 0..3000 {
                        rx += q.rx_burst(&mut burst, 32) as u64;
                        // Drop every 7th packet, send the rest, as the engine would.
                        if i % 7 == 0 {
                            if let Some(p) = burst.pop() {
                                q.free(p);
                            }
                        }
                        // Every 11th burst is dropped whole, in one call.
                        if i % 11 == 0 {
                            q.free_burst(&mut burst);
                            assert!(burst.is_empty());
                        }
                        tx += q.tx_burst(&mut burst) as u64;
                        free_all(&mut q, &mut burst);
                    }
                    assert_eq!(q.stats().rx_multiseg_dropped, 0);
                    (rx, tx, lcore)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (rx, tx): (u64, u64) = results.iter().fold((0, 0), |(a, b), r| (a + r.0, b + r.1));
    assert_eq!(rx, 2 * 3000 * 32, "net_null always fills the burst");
    let dropped_per_worker: u64 = (0..3000)
        .map(|i| match (i % 7 == 0, i % 11 == 0) {
            (_, true) => 32,
            (true, false) => 1,
            _ => 0,
        })
        .sum();
    assert_eq!(tx, rx - 2 * dropped_per_worker, "{results:?}");
    let lcores: Vec<_> = results.iter().map(|r| r.2).collect();
    assert!(lcores.iter().all(Option::is_some), "{lcores:?}");
    assert_ne!(
        lcores[0], lcores[1],
        "concurrent worker threads get distinct lcore ids"
    );
    assert_eq!(rt.mbufs_in_use(), start, "every mbuf came back");
    assert_eq!(
        eal.lcore_count(),
        lcores_before,
        "lcore ids released at thread exit"
    );
    let st = &rt.port_stats()[0];
    assert_eq!((st.ipackets, st.opackets), (rx, tx));
}

/// TX on another port than RX; a full TX ring leaves the unsent packets in the burst.
fn partial_tx(eal: &Eal, null0: u16, ring0: u16) {
    let cfg = DpdkConfig {
        tx_port: Some(ring0),
        ..small_cfg(vec![null0])
    };
    let (rt, mut queues) = DpdkRuntime::open(eal, &cfg, 1).unwrap();
    assert_eq!(rt.ports().len(), 2);
    let start = rt.mbufs_in_use();
    let q = &mut queues[0];
    assert_eq!((q.rx_ports(), q.tx_port()), (&[null0][..], ring0));
    let mut burst: Burst<Mbuf> = Burst::new();
    let (mut sent, mut unsent) = (0u64, 0u64);
    // Nobody reads ring0, so its ring fills up and TX starts refusing.
    for _ in 0..100 {
        let n = q.rx_burst(&mut burst, 64);
        let s = q.tx_burst(&mut burst);
        assert_eq!(s + burst.len(), n, "sent + unsent = offered");
        sent += s as u64;
        unsent += burst.len() as u64;
        free_all(q, &mut burst);
    }
    assert!(unsent > 0, "the ring never filled up");
    assert_eq!(
        rt.mbufs_in_use(),
        start + sent,
        "sent mbufs sit in the ring"
    );
    let stats = rt.port_stats();
    let ring_stats = stats.iter().find(|s| s.port == ring0).unwrap();
    assert_eq!(ring_stats.opackets, sent);
    drop(queues);
    drop(rt);

    // Drain the ring through a runtime on it alone: every mbuf comes back.
    let (rt, mut queues) = DpdkRuntime::open(eal, &small_cfg(vec![ring0]), 1).unwrap();
    let q = &mut queues[0];
    let mut got = 0u64;
    loop {
        let n = q.rx_burst(&mut burst, 256);
        if n == 0 {
            break;
        }
        got += n as u64;
        free_all(q, &mut burst);
    }
    assert_eq!(got, sent);
    assert_eq!(rt.mbufs_in_use(), start);
}

fn replay(q: &mut DpdkQueue, expect: u64) -> u64 {
    let mut burst: Burst<Mbuf> = Burst::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rx = 0u64;
    while rx < expect && Instant::now() < deadline {
        rx += q.rx_burst(&mut burst, 32) as u64;
        while !burst.is_empty() && Instant::now() < deadline {
            q.tx_burst(&mut burst);
        }
    }
    free_all(q, &mut burst);
    // Nothing beyond the capture.
    for _ in 0..100 {
        rx += q.rx_burst(&mut burst, 32) as u64;
        free_all(q, &mut burst);
    }
    rx
}

/// net_pcap: the VXLAN capture goes rx -> tx into another capture unchanged.
fn pcap_replay(eal: &Eal, pcap0: u16, out: &Path) {
    let input = read_pcap(Path::new(VXLAN_PCAP));
    let (rt, mut queues) = DpdkRuntime::open(eal, &small_cfg(vec![pcap0]), 1).unwrap();
    let start = rt.mbufs_in_use();
    let rx = replay(&mut queues[0], input.len() as u64);
    assert_eq!(rx, input.len() as u64);
    let st = rt.port_stats()[0].clone();
    assert_eq!((st.ipackets, st.opackets), (rx, rx));
    assert_eq!(st.ibytes, input.iter().map(|p| p.len() as u64).sum::<u64>());
    assert_eq!(rt.mbufs_in_use(), start);
    // Stopping the port (last handle gone) closes the output capture.
    drop(queues);
    drop(rt);
    assert_eq!(read_pcap(out), input);
}

/// Frames longer than the data room arrive as chains: dropped and counted, not leaked.
fn pcap_jumbo(eal: &Eal, pcap1: u16, out: &Path, input: &[Vec<u8>]) {
    let (rt, mut queues) = DpdkRuntime::open(eal, &small_cfg(vec![pcap1]), 1).unwrap();
    let start = rt.mbufs_in_use();
    let fits: Vec<Vec<u8>> = input
        .iter()
        .filter(|p| p.len() <= usize::from(MBUF_DATA_ROOM - MBUF_HEADROOM))
        .cloned()
        .collect();
    let rx = replay(&mut queues[0], fits.len() as u64);
    assert_eq!(rx, fits.len() as u64);
    let qs = queues[0].stats();
    assert_eq!(
        qs.rx_multiseg_dropped,
        (input.len() - fits.len()) as u64,
        "{qs:?}"
    );
    assert_eq!(rt.port_stats()[0].ipackets, input.len() as u64);
    assert_eq!(rt.mbufs_in_use(), start);
    drop(queues);
    drop(rt);
    assert_eq!(read_pcap(out), fits);
}

/// Chains of two segments come back single-segment when they fit in the first
/// buffer (linearised), and are dropped and counted when they do not.
fn ring_multiseg(eal: &Eal, ring0: u16) {
    let (rt, mut queues) = DpdkRuntime::open(eal, &small_cfg(vec![ring0]), 1).unwrap();
    let start = rt.mbufs_in_use();
    let q = &mut queues[0];
    let pool = q.mempool();
    // (first segment length, second segment length)
    let shapes = [(100usize, 50usize), (2000, 100), (1000, 1000)];
    let mut raw = Vec::new();
    for (i, (a, b)) in shapes.iter().enumerate() {
        let mut m1 = pool.alloc().unwrap();
        let mut m2 = pool.alloc().unwrap();
        let f = frame(i as u8, a + b);
        assert!(m1.append(*a) && m2.append(*b));
        m1.data_mut().copy_from_slice(&f[..*a]);
        m2.data_mut().copy_from_slice(&f[*a..]);
        let (p1, p2) = (m1.into_raw(), m2.into_raw());
        // SAFETY: both mbufs are ours; this is what rte_pktmbuf_chain does.
        unsafe {
            let h = &mut *p1.as_ptr();
            h.next = p2.as_ptr();
            h.nb_segs = 2;
            h.pkt_len = (a + b) as u32;
        }
        raw.push(p1.as_ptr());
    }
    // SAFETY: ring0's TX queue 0 is not used by anyone else while this thread
    // holds the only queue; the chains are ours and the driver takes them.
    let sent =
        unsafe { sys::dpdk_sys_rte_eth_tx_burst(ring0, 0, raw.as_mut_ptr(), raw.len() as u16) };
    assert_eq!(usize::from(sent), raw.len());
    let mut burst: Burst<Mbuf> = Burst::new();
    assert_eq!(
        q.rx_burst(&mut burst, 32),
        2,
        "the 2100-byte chain cannot be linearised"
    );
    assert_eq!(burst[0].data(), frame(0, 150).as_slice());
    assert_eq!(burst[1].data(), frame(2, 2000).as_slice());
    for m in burst.iter() {
        // SAFETY: a live mbuf owned by the burst.
        let r = unsafe { &*m.as_ptr() };
        assert_eq!((r.nb_segs, r.pkt_len), (1, u32::from(r.data_len)));
    }
    let st = q.stats();
    assert_eq!((st.rx_linearized, st.rx_multiseg_dropped), (2, 1));
    free_all(q, &mut burst);
    assert_eq!(rt.mbufs_in_use(), start, "every segment came back");
}
