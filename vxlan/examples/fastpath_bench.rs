//! Fast-path micro-benchmark: decap + parse_inner + inner_checksum_ok +
//! decrement_ttl on VXLAN packets with a 64-byte inner frame, over a working
//! set of 1024 distinct flows. Prints ns/packet and, if /proc/cpuinfo gives a
//! clock, cycles/packet.
//!
//! `cargo run --release -p vxlan --example fastpath_bench [-- v6] [geneve] [decap|inner|csum]`
//!
//! `geneve`: the packets are Geneve (UDP 6081) with one 8-byte option
//! instead of VXLAN, for the cost of Geneve decapsulation against VXLAN's.
//!
//! `decap` stops after decap, `inner` after parse_inner, `csum` after the
//! inner IPv4 header checksum; running `inner` and `csum` back to back gives
//! the checksum's cost.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;
use vxlan::{
    build_inner_frame, decap, decrement_ttl, emit_vxlan, inner_checksum_ok, parse_inner,
    vxlan_header_len, DecapConfig, InnerSpec, Outer,
};

fn cpu_mhz() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// CPU time of this thread in ns (from the scheduler, so other processes on a
/// busy machine do not inflate it), if available.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let v6 = std::env::args().any(|a| a == "v6");
    let geneve = std::env::args().any(|a| a == "geneve");
    // "decap": decap only; "inner": decap + parse_inner; "csum": + inner
    // checksum; default: all four.
    let stop = std::env::args()
        .find(|a| a == "decap" || a == "inner" || a == "csum")
        .unwrap_or_default();
    // Compared inside the loop as a small integer, not a string.
    let depth: u8 = match stop.as_str() {
        "decap" => 1,
        "inner" => 2,
        "csum" => 3,
        _ => 4,
    };
    let (src, dst) = if v6 {
        (
            IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()),
            IpAddr::V6("2001:db8::2".parse::<Ipv6Addr>().unwrap()),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        )
    };
    let outer = Outer {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        vlan: None,
        src_ip: src,
        dst_ip: dst,
        ttl: 64,
    };
    let cfg = DecapConfig {
        vtep_v4: vec![u32::from(Ipv4Addr::new(192, 0, 2, 2))],
        vtep_v6: vec![u128::from("2001:db8::2".parse::<Ipv6Addr>().unwrap())],
        ports: vec![4789],
        geneve_ports: vec![6081],
    };
    let mut pkts: Vec<Vec<u8>> = Vec::new();
    let mut inner = Vec::new();
    for i in 0..1024u32 {
        let spec = InnerSpec {
            src_mac: [4; 6],
            dst_mac: [5; 6],
            src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            proto: if i % 2 == 0 { 6 } else { 17 },
            sport: 1024 + i as u16,
            dport: 80,
            ttl: 255,
            frame_len: 64,
        };
        build_inner_frame(&spec, &mut inner);
        let mut p = vec![0u8; vxlan_header_len(&outer)];
        if geneve {
            // Geneve with one option (class 0x0102, type 3, 4 bytes of data).
            let opt = [0x01, 0x02, 0x03, 0x01, 9, 9, 9, 9];
            let mut with = inner.clone();
            with.splice(0..0, opt);
            let mut h = vec![0u8; vxlan_header_len(&outer)];
            vxlan::emit_geneve(&outer, 50000 + i as u16, 6081, 100 + i % 7, &with, &mut h);
            let g = h.len() - 8;
            h[g] = 2; // options length: 2 words
                      // `with` starts with the options, so every length already counts them.
            p = h;
            p.extend_from_slice(&with);
            if !v6 {
                p[24..26].copy_from_slice(&[0, 0]);
                let c = vxlan::checksum::checksum(&p[14..34]);
                p[24..26].copy_from_slice(&c.to_be_bytes());
            }
        } else {
            emit_vxlan(&outer, 50000 + i as u16, 4789, 100 + i % 7, &inner, &mut p);
            p.extend_from_slice(&inner);
        }
        pkts.push(p);
    }
    // Every packet must take the whole fast path, or the timing means nothing.
    for p in &pkts {
        let d = decap(p, &cfg).expect("bench packet decapsulates");
        let f = &p[d.inner_offset..d.inner_offset + d.inner_len];
        let i = parse_inner(f, d.vni).expect("bench inner frame parses");
        assert!(inner_checksum_ok(f, &i), "bench inner checksum");
    }
    let rounds = 20_000usize;
    let mut acc = 0u64;
    let mut expired = 0u64;
    let cpu0 = thread_cpu_ns();
    let t = Instant::now();
    for _ in 0..rounds {
        for p in pkts.iter_mut() {
            let d = match decap(black_box(p), &cfg) {
                Ok(d) => d,
                Err(_) => continue,
            };
            if depth == 1 {
                acc = acc.wrapping_add(u64::from(d.vni) + d.inner_offset as u64);
                continue;
            }
            let frame = &mut p[d.inner_offset..d.inner_offset + d.inner_len];
            let i = match parse_inner(frame, d.vni) {
                Ok(i) => i,
                Err(_) => continue,
            };
            acc = acc.wrapping_add(u64::from(i.key.sport) ^ i.key.src as u64);
            if depth == 2 {
                continue;
            }
            if !inner_checksum_ok(frame, &i) {
                continue;
            }
            if depth == 3 {
                acc = acc.wrapping_add(1);
                continue;
            }
            let l3 = &mut frame[i.l3_offset..i.l3_offset + i.l3_len];
            if decrement_ttl(l3).is_err() {
                // Rare: refill the TTL so the loop keeps measuring the common case.
                expired += 1;
                l3[8] = 255;
                l3[10] = 0;
                l3[11] = 0;
                let c = vxlan::checksum::checksum(&l3[..20]);
                l3[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
    let el = t.elapsed();
    let n = (rounds * pkts.len()) as f64;
    let wall_ns = el.as_nanos() as f64 / n;
    // Prefer on-CPU time: the wall clock counts time other processes ran.
    let ns = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / n,
        _ => wall_ns,
    };
    black_box(acc);
    print!(
        "outer {} {} {}: {:.0} packets, {:.2} ns/packet on-CPU ({:.2} wall), {:.1} Mpps",
        if v6 { "v6" } else { "v4" },
        if geneve { "geneve" } else { "vxlan" },
        if stop.is_empty() {
            "decap+inner+csum+ttl"
        } else {
            &stop
        },
        n,
        ns,
        wall_ns,
        1e3 / ns
    );
    if let Some(mhz) = cpu_mhz() {
        print!(", {:.1} cycles/packet at {mhz:.0} MHz", ns * mhz / 1e3);
    }
    println!(" [ttl refills {expired}]");
}
