//! AF_XDP backend on veth pairs in fresh network namespaces: the steering
//! program attached (native XDP on veth) and detached with the queues, RX of
//! every frame through the XDP socket and TX back out, one queue per worker
//! (and a clear error when the interface has too few), a second attach
//! refused with the reason, and the full pipeline's conservation on real
//! traffic with two workers on two queues. Needs root and `ip netns`: every
//! test is `#[ignore]`d and run by `scripts/test.sh` as root
//! (`cargo test -p dataplane --test afxdp -- --ignored`); asked for without
//! root, each fails.

mod afpacket_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afpacket_support::{require_root_netns, test_frame, test_seq, Netns};
use dataplane::config::{AfPacketSection, AfXdpSection, Config, XdpMode};
use dataplane::io::afpacket::{self, if_mac, AfPacketQueue};
use dataplane::io::afxdp::{self, AfXdpQueue};
use dataplane::io::buf::HeapBuf;
use dataplane::io::{Burst, Packet, Queue};

fn xdp_section(iface: &str) -> AfXdpSection {
    AfXdpSection {
        interfaces: vec![iface.to_string()],
        ring_size: 512,
        ..AfXdpSection::default()
    }
}

fn packet_section(iface: &str) -> AfPacketSection {
    AfPacketSection {
        interfaces: vec![iface.to_string()],
        tx_interface: None,
        block_size: 1 << 16,
        block_count: 64,
        tx_frames: 512,
        poll_when_idle: false,
        promiscuous: true,
        block_timeout_ms: 1,
    }
}

/// A namespace with veth `a` <-> `b` (`queues` RX/TX queues each), both up,
/// no IPv6 chatter.
fn veth_ns(tag: &str, queues: u32) -> Netns {
    let ns = Netns::new(tag);
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
    ns.sh(&format!(
        "ip link add name va numtxqueues {queues} numrxqueues {queues} type veth peer name vb numtxqueues {queues} numrxqueues {queues} && ip link set va up && ip link set vb up"
    ));
    ns
}

fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    ns.sh(&format!("ip -d link show {iface}"))
        .contains("prog/xdp")
}

/// Sends `frames` through an AF_PACKET queue in bursts of 32.
fn send_packet(q: &mut AfPacketQueue, frames: &[Vec<u8>]) {
    for chunk in frames.chunks(32) {
        let mut burst: Burst<HeapBuf> = Burst::new();
        for f in chunk {
            let mut b = HeapBuf::with_capacity(2048);
            b.load(f, 0);
            burst.push(b);
        }
        let t0 = Instant::now();
        while !burst.is_empty() {
            q.tx_burst(&mut burst);
            assert!(t0.elapsed() < Duration::from_secs(5), "TX ring stuck");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Drains any queue until `want` test frames arrived or `timeout`; returns their seqs.
fn drain<Q: Queue<Pkt = HeapBuf>>(q: &mut Q, want: usize, timeout: Duration) -> Vec<u32> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut burst: Burst<HeapBuf> = Burst::new();
    while got.len() < want && t0.elapsed() < timeout {
        q.rx_burst(&mut burst, 64);
        for p in burst.drain(..) {
            if let Some(s) = test_seq(p.data()) {
                got.push(s);
            }
            q.free(p);
        }
    }
    got
}

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn afxdp_rx_tx_and_detach() {
    require_root_netns();
    let ns = veth_ns("axdp-rxtx", 1);
    ns.enter();
    let (mac_a, mac_b) = (if_mac("va").unwrap(), if_mac("vb").unwrap());
    let mut q: Vec<AfXdpQueue> = afxdp::open_queues(&xdp_section("va"), 1).unwrap();
    assert_eq!(
        afxdp::describe(&q),
        vec![("va".to_string(), true)],
        "veth takes native XDP"
    );
    assert!(xdp_attached(&ns, "va"), "{}", ns.sh("ip -d link show va"));
    assert_eq!(q[0].tx_interface(), "va");

    // vb -> va: every frame reaches the XDP socket, none the kernel's stack.
    let mut on_b = afpacket::open_queues(&packet_section("vb"), 1).unwrap();
    let n = 2000u32;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| test_frame(mac_a, mac_b, i, (i % 64) as u16, 60 + (i % 1400) as usize))
        .collect();
    let reader = std::thread::spawn(move || {
        let got = drain(&mut q[0], n as usize, Duration::from_secs(10));
        (q, got)
    });
    send_packet(&mut on_b[0], &frames);
    let (mut q, got) = reader.join().unwrap();
    let uniq: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(
        uniq.len(),
        n as usize,
        "frames through XDP: {:?}",
        q[0].counters()
    );
    let c = q[0].counters();
    assert!(c.rx_frames >= n as u64, "{c:?}");
    assert_eq!(c.kernel_ring_full + c.kernel_fill_empty, 0, "{c:?}");

    // va -> vb through the TX ring, more than a ring's worth so the
    // completion ring must recycle frames, in bursts larger than one kick.
    let m = 1500u32;
    let back: Vec<Vec<u8>> = (0..m)
        .map(|i| test_frame(mac_b, mac_a, 100_000 + i, 1, 64 + (i % 900) as usize))
        .collect();
    let sink = std::thread::spawn(move || {
        let got = drain(&mut on_b[0], m as usize, Duration::from_secs(10));
        (on_b, got)
    });
    std::thread::sleep(Duration::from_millis(50));
    for chunk in back.chunks(128) {
        let mut burst: Burst<HeapBuf> = Burst::new();
        for f in chunk {
            let mut b = HeapBuf::with_capacity(2048);
            b.load(f, 0);
            burst.push(b);
        }
        let t0 = Instant::now();
        while !burst.is_empty() {
            q[0].tx_burst(&mut burst);
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "XDP TX stuck: {:?}",
                q[0].counters()
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let (_, got) = sink.join().unwrap();
    let uniq: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(
        uniq.len(),
        m as usize,
        "frames sent through XDP TX: {:?}",
        q[0].counters()
    );
    let c = q[0].counters();
    assert_eq!(c.tx_kick_errors, 0, "{c:?}");

    // A second gateway on the same interface is refused, with the reason.
    let e = afxdp::open_queues(&xdp_section("va"), 1)
        .err()
        .expect("second attach must fail");
    let s = e.to_string();
    assert!(s.contains("another XDP program is attached to va"), "{s}");

    // The program goes with the queues.
    drop(q);
    assert!(!xdp_attached(&ns, "va"), "{}", ns.sh("ip -d link show va"));
    // And a fresh attach works again, in generic mode when asked.
    let mut sec = xdp_section("va");
    sec.mode = XdpMode::Generic;
    let q = afxdp::open_queues(&sec, 1).unwrap();
    assert_eq!(afxdp::describe(&q), vec![("va".to_string(), false)]);
}

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn afxdp_needs_a_queue_per_worker() {
    require_root_netns();
    let ns = veth_ns("axdp-q", 1);
    ns.enter();
    let e = afxdp::open_queues(&xdp_section("va"), 2)
        .err()
        .expect("2 workers on 1 queue");
    let s = e.to_string();
    assert!(
        s.contains("va has 1 RX queue(s)") && s.contains("bind(queue 1)"),
        "{s}"
    );
    assert!(
        !xdp_attached(&ns, "va"),
        "a failed start leaves no program behind"
    );
    let e = afxdp::open_queues(&xdp_section("nosuch0"), 1)
        .err()
        .expect("no such interface");
    assert!(e.to_string().contains("nosuch0: if_nametoindex"), "{e}");
}

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn afxdp_pipeline_forwards_and_conserves() {
    require_root_netns();
    let ns = veth_ns("axdp-pipe", 2);
    ns.enter();
    let mac_a = if_mac("va").unwrap();
    let mac_b = if_mac("vb").unwrap();
    let cfg_text = format!(
        "[dataplane]\nworkers = 2\nio = \"afxdp\"\nno_pin = true\nburst = 32\n\
         [afxdp]\ninterfaces = [\"va\"]\nring_size = 1024\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\"]\nlocal_mac = \"{}\"\nnext_hop_mac = \"{}\"\n",
        dataplane::config::format_mac(&mac_a),
        dataplane::config::format_mac(&mac_b),
    );
    let cfg = Config::parse(&cfg_text).unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let runner = std::thread::spawn(move || {
        dataplane::runner::run(&cfg, &dataplane::runner::RunOptions::default(), stop2)
            .map(|(s, _)| s)
    });
    let t0 = Instant::now();
    while !xdp_attached(&ns, "va") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "dpgw did not attach"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));

    // 1000 VXLAN packets (VNI 100) to our VTEP, from two senders (two TX
    // queues of vb, so both RX queues of va see traffic).
    let mut senders = afpacket::open_queues(&packet_section("vb"), 1).unwrap();
    let mut reader_q = afpacket::open_queues(&packet_section("vb"), 1).unwrap();
    let n = 1000u32;
    let reader = std::thread::spawn(move || {
        let got = drain(&mut reader_q[0], n as usize, Duration::from_secs(10));
        (reader_q, got)
    });
    let mut frames = Vec::new();
    for i in 0..n {
        let inner = test_frame(
            [2, 0, 0, 0, 0, 0x10],
            [2, 0, 0, 0, 0, 0x11],
            i,
            (i % 100) as u16,
            200,
        );
        let outer = vxlan::Outer {
            src_mac: mac_b,
            dst_mac: mac_a,
            vlan: None,
            src_ip: "198.18.0.2".parse().unwrap(),
            dst_ip: "198.18.0.1".parse().unwrap(),
            ttl: 64,
        };
        let mut pkt = vec![0u8; vxlan::vxlan_header_len(&outer)];
        vxlan::emit_vxlan(
            &outer,
            40000 + (i % 100) as u16,
            4789,
            100,
            &inner,
            &mut pkt,
        );
        pkt.extend_from_slice(&inner);
        frames.push(pkt);
    }
    send_packet(&mut senders[0], &frames);
    let (_, got) = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap().expect("afxdp run");
    let uniq: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(
        uniq.len(),
        n as usize,
        "forwarded frames seen on b: {}\n{}",
        uniq.len(),
        summary.human()
    );
    assert!(summary.conserved(), "{}", summary.human());
    assert!(summary.rx >= n as u64, "{}", summary.human());
    assert_eq!(summary.tx, n as u64, "{}", summary.human());
    assert_eq!(summary.workers.len(), 2);
    assert!(
        !xdp_attached(&ns, "va"),
        "the program is detached when the run ends"
    );
}
