//! Throughput of the AF_PACKET path against the Linux kernel doing the same job
//! on the same veth topology. A benchmark, not a test: it is `#[ignore]`d and
//! prints a table; run it as root with
//!
//! ```text
//! cargo test --release -p dataplane --test afpacket_bench -- --ignored --nocapture
//! ```
//!
//! Topology: namespace `src` (`s0`) <-> namespace `gw` (`g0`). A generator
//! thread blasts VXLAN (VNI 100) frames of 64-byte inner frames, 1024 flows,
//! from a TX ring on `s0` for a few seconds; the gateway decapsulates, filters,
//! routes (TTL, MACs) and sends the inner frames back out of `g0`, where they
//! are counted as `s0`'s received packets. Gateway is either dpgw (1 worker, full
//! pipeline, an allow-all ACL with one deny rule) or the kernel (`vxlan` device,
//! nftables forward chain with the same deny rule, IPv4 forwarding).
//!
//! CPU per packet: the generator thread's CPU time (for the kernel, its
//! `sendto` also runs the whole receive path in softirq context), plus
//! ksoftirqd's, plus (dpgw) the worker thread's on-CPU time.

mod afpacket_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afpacket_support::{require_root_netns, Netns};
use dataplane::config::{format_mac, Config};
use dataplane::io::afpacket::{if_mac, open_queues};
use dataplane::io::buf::HeapBuf;
use dataplane::io::{Burst, Queue};

const SECS: f64 = 3.0;

fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes into a live timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Total CPU time (ns) of all ksoftirqd threads.
fn ksoftirqd_ns() -> u64 {
    let tick = 1e9 / 100.0;
    let mut total = 0.0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let p = e.path();
            let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
                continue;
            };
            if !comm.starts_with("ksoftirqd") {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                let f: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
                let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
                total += (ut + st) * tick;
            }
        }
    }
    total as u64
}

/// CPU time (ns) of this process's thread named `name` (0 if none).
fn task_cpu_ns(name: &str) -> u64 {
    let tick = 1e9 / 100.0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let p = e.path();
            if std::fs::read_to_string(p.join("comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
            {
                if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
                    let f: Vec<&str> = stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
                    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
                    return ((ut + st) * tick) as u64;
                }
            }
        }
    }
    0
}

fn rx_packets(ns: &Netns, ifname: &str) -> u64 {
    ns.sh(&format!(
        "cat /sys/class/net/{ifname}/statistics/rx_packets"
    ))
    .trim()
    .parse()
    .unwrap()
}

fn frames(s0: [u8; 6], g0: [u8; 6], inner_dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    (0..1024u16)
        .map(|i| {
            let spec = vxlan::InnerSpec {
                src_mac: [2, 0, 0, 0, 0, 0x10],
                dst_mac: inner_dst_mac,
                src: "10.2.0.1".parse().unwrap(),
                dst: format!("10.1.{}.{}", i >> 8, i & 0xff).parse().unwrap(),
                proto: 17,
                sport: 1000 + i,
                dport: 5000,
                ttl: 64,
                frame_len: 64,
            };
            let mut inner = Vec::new();
            vxlan::build_inner_frame(&spec, &mut inner);
            let outer = vxlan::Outer {
                src_mac: s0,
                dst_mac: g0,
                vlan: None,
                src_ip: "198.18.0.2".parse().unwrap(),
                dst_ip: "198.18.0.1".parse().unwrap(),
                ttl: 64,
            };
            let mut pkt = vec![0u8; vxlan::vxlan_header_len(&outer)];
            vxlan::emit_vxlan(&outer, 40000 + i, 4789, 100, &inner, &mut pkt);
            pkt.extend_from_slice(&inner);
            pkt
        })
        .collect()
}

struct Gen {
    sent: u64,
    cpu_ns: u64,
}

/// Blasts `frames` out of `s0` for SECS seconds (in the caller's namespace).
fn generate(frames: Vec<Vec<u8>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Gen> {
    let mut q = open_queues(
        &dataplane::config::AfPacketSection {
            interfaces: vec!["s0".into()],
            tx_interface: None,
            block_size: 1 << 16,
            block_count: 4,
            tx_frames: 4096,
            poll_when_idle: false,
            promiscuous: false,
            block_timeout_ms: 1,
        },
        1,
    )
    .unwrap()
    .pop()
    .unwrap();
    std::thread::spawn(move || {
        let c0 = thread_cpu_ns();
        let mut sent = 0u64;
        let mut i = 0usize;
        let mut burst: Burst<HeapBuf> = Burst::new();
        while !stop.load(Ordering::Relaxed) {
            while burst.len() < 64 {
                let mut b = HeapBuf::with_capacity(256);
                b.load(&frames[i % frames.len()], 0);
                i += 1;
                burst.push(b);
            }
            sent += q.tx_burst(&mut burst) as u64;
        }
        Gen {
            sent,
            cpu_ns: thread_cpu_ns() - c0,
        }
    })
}

struct Row {
    name: &'static str,
    offered: f64,
    forwarded: f64,
    cpu_ns_per_pkt: f64,
}

fn measure(src: &Netns, frames: Vec<Vec<u8>>) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let k0 = ksoftirqd_ns();
    let g = generate(frames, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let r0 = rx_packets(src, "s0");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(SECS));
    let r1 = rx_packets(src, "s0");
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let g = g.join().unwrap();
    let k1 = ksoftirqd_ns();
    let fwd = (r1 - r0) as f64 / dt;
    let total_s = dt + 0.5;
    let cpu = g.cpu_ns + (k1 - k0);
    let forwarded_total = fwd * total_s;
    (
        g.sent as f64 / total_s,
        fwd,
        cpu as f64 / forwarded_total.max(1.0),
    )
}

#[test]
#[ignore = "benchmark; needs root and ip netns: run with --ignored --nocapture as root"]
fn bench_afpacket_vs_kernel() {
    require_root_netns();
    let src = Netns::new("bench-src");
    let gw = Netns::new("bench-gw");
    src.sh(&format!(
        "ip link add name s0 type veth peer name g0 netns {}",
        gw.name
    ));
    for ns in [&src, &gw] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
    }
    src.sh("ip link set s0 up");
    gw.sh("ip link set g0 up");
    let gw_inner_mac = [2, 0, 0, 0, 0, 1];
    let (s0, g0) = {
        src.enter();
        let s0 = if_mac("s0").unwrap();
        let g0 =
            dataplane::config::parse_mac(gw.sh("cat /sys/class/net/g0/address").trim()).unwrap();
        (s0, g0)
    };
    let mut rows = Vec::new();

    // dpgw: one worker on g0, in this process (its sockets live in `gw`).
    {
        let cfg = Config::parse(&format!(
            "[dataplane]\nworkers = 1\nio = \"afpacket\"\n\
             [afpacket]\ninterfaces = [\"g0\"]\nblock_size = 1048576\nblock_count = 16\ntx_frames = 4096\n\
             [gateway]\nvtep_ips = [\"198.18.0.1\"]\nlocal_mac = \"{}\"\nnext_hop_mac = \"{}\"\n\
             [acl]\ndefault = \"allow\"\n[[acl.rule]]\nsrc = \"192.168.0.0/16\"\naction = \"deny\"\n",
            format_mac(&g0),
            format_mac(&s0)
        ))
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let gw_path = format!("/run/netns/{}", gw.name);
        let runner = std::thread::spawn(move || {
            let f = std::fs::File::open(&gw_path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace fd we hold; this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            dataplane::runner::run(&cfg, &dataplane::runner::RunOptions::default(), stop2)
                .unwrap()
                .0
        });
        std::thread::sleep(Duration::from_millis(500));
        let w0 = task_cpu_ns("dpgw-w0");
        let (offered, fwd, gen_cpu) = measure(&src, frames(s0, g0, gw_inner_mac));
        let w1 = task_cpu_ns("dpgw-w0");
        stop.store(true, Ordering::Relaxed);
        let summary = runner.join().unwrap();
        // The worker's CPU over the measured run (generator start to stop), per
        // forwarded packet, on top of the generator's and ksoftirqd's.
        let worker = (w1 - w0) as f64 / (fwd * (SECS + 0.5)).max(1.0);
        rows.push(Row {
            name: "dpgw AF_PACKET (1 worker)",
            offered,
            forwarded: fwd,
            cpu_ns_per_pkt: gen_cpu + worker,
        });
        println!("dpgw worker: {worker:.0} ns/packet of CPU; generator + ksoftirqd: {gen_cpu:.0}");
        println!("{}", summary.human());
    }

    // The kernel: vxlan device + nftables + forwarding.
    gw.sh(&format!(
        "ip addr add 198.18.0.1/24 dev g0 && \
         ip link add vxlan0 type vxlan id 100 local 198.18.0.1 dstport 4789 dev g0 nolearning && \
         ip link set vxlan0 address {} && ip link set vxlan0 up && ip addr add 10.2.0.254/16 dev vxlan0 && \
         sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.vxlan0.rp_filter=0 net.ipv4.conf.g0.rp_filter=0 && \
         ip neigh add 198.18.0.2 lladdr {} dev g0 nud permanent && ip route add 10.1.0.0/16 via 198.18.0.2 dev g0",
        format_mac(&gw_inner_mac),
        format_mac(&s0)
    ));
    let nft = gw.try_sh(
        "nft add table inet f && nft 'add chain inet f fw_chain { type filter hook forward priority 0; policy accept; }' && \
         nft add rule inet f fw_chain ip saddr 192.168.0.0/16 drop",
    );
    let nft_ok = nft.status.success();
    let (offered, fwd, cpu) = measure(&src, frames(s0, g0, gw_inner_mac));
    rows.push(Row {
        name: if nft_ok {
            "Linux vxlan + nftables + forwarding"
        } else {
            "Linux vxlan + forwarding (no nft)"
        },
        offered,
        forwarded: fwd,
        cpu_ns_per_pkt: cpu,
    });

    println!(
        "\n{:<40} {:>12} {:>12} {:>16}",
        "gateway", "offered pps", "forwarded pps", "CPU ns/packet"
    );
    for r in &rows {
        println!(
            "{:<40} {:>12.0} {:>12.0} {:>16.0}",
            r.name, r.offered, r.forwarded, r.cpu_ns_per_pkt
        );
    }
    if rows.len() == 2 && rows[1].forwarded > 0.0 {
        println!(
            "forwarded packets/s ratio dpgw / kernel: {:.2}",
            rows[0].forwarded / rows[1].forwarded
        );
    }
    println!(
        "CPU per forwarded packet = generator thread + ksoftirqd (+ dpgw's worker thread, which \
         busy-polls: when it is not saturated this counts its idle spinning too). The kernel's \
         receive path runs inside the generator's sendto, so it is in the generator's share."
    );
}
