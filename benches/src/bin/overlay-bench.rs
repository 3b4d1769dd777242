//! `overlay-bench`: what outside → overlay costs (issue 17), in process, on
//! the workers' pipeline code (`Pipeline::run` over preloaded bursts of 64-byte
//! UDP packets, one core), in TSC cycles per packet, medians of alternated
//! rounds:
//!
//! * `route`: VXLAN from the overlay, decapsulated and routed out (no tenant
//!   configured): the baseline;
//! * `route+learn`: the same packets with their VNI a `[[tenant]]` whose
//!   prefixes hold their sources: every packet also confirms its source's
//!   VTEP in the learned table (what the overlay direction costs the other
//!   one);
//! * `inbound`: plain IP from the outside to tenant addresses, encapsulated
//!   to the VTEP learned for each (the outside → overlay direction);
//! * `inbound-static`: the same to static entries.
//!
//! Benchmark, not a test: print `/proc/loadavg` beside the numbers.

use clap::Parser;
use dataplane::config::Config;
use dataplane::cpu::rdtsc;
use dataplane::io::buf::HeapBuf;
use dataplane::pipeline::{Meta, Pipeline, Verdict};
use dataplane::tables::Tables;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Parser)]
#[command(about = "Cycles per packet of outside -> overlay encapsulation and of learning")]
struct Args {
    /// Distinct tenant addresses (flows).
    #[arg(long, default_value_t = 1024)]
    addrs: usize,
    /// Bursts per round.
    #[arg(long, default_value_t = 20000)]
    bursts: usize,
    /// Rounds (alternated between the cases; medians are printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Run only this case (route, learn, inbound, static), for a profiler.
    #[arg(long)]
    only: Option<String>,
}

const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
const RT: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

fn client(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, (i >> 8) as u8, i as u8)
}

fn vtep(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + (i % 200) as u8)
}

fn inner(src: Ipv4Addr, dst: Ipv4Addr, smac: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    vxlan::build_inner_frame(
        &vxlan::InnerSpec {
            src_mac: smac,
            dst_mac: GW,
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            proto: 17,
            sport: 5000,
            dport: 53,
            ttl: 64,
            frame_len: len,
        },
        &mut f,
    );
    f
}

fn from_overlay(i: usize) -> Vec<u8> {
    let inner = inner(
        client(i),
        Ipv4Addr::new(203, 0, 113, 10),
        [2, 0xc1, 0, 0, 0, 1],
        64,
    );
    let outer = vxlan::Outer {
        src_mac: RT,
        dst_mac: GW,
        vlan: None,
        src_ip: IpAddr::V4(vtep(i)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        ttl: 64,
    };
    let hl = vxlan::vxlan_header_len(&outer);
    let mut f = vec![0u8; hl + inner.len()];
    let (h, b) = f.split_at_mut(hl);
    b.copy_from_slice(&inner);
    vxlan::emit_vxlan(&outer, 49152 + (i % 1000) as u16, 4789, 100, b, h);
    f
}

fn from_outside(i: usize) -> Vec<u8> {
    inner(Ipv4Addr::new(203, 0, 113, 10), client(i), RT, 64)
}

fn tables(tenant: bool, statics: usize) -> Tables {
    let mut text = "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nvtep_ips = [\"198.18.0.1\"]\n\
                    local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\n\
                    [fdb]\nlearn_rate = 1000000\n"
        .to_string();
    if tenant {
        text.push_str("[[tenant]]\nvni = 100\nprefixes = [\"172.16.0.0/16\"]\n");
        for i in 0..statics {
            text.push_str(&format!(
                "[[tenant.vtep]]\naddr = \"{}\"\nvtep = \"{}\"\nmac = \"02:c1:00:00:00:01\"\n",
                client(i),
                vtep(i)
            ));
        }
    }
    Tables::build(&Config::parse(&text).unwrap(), 1).unwrap()
}

/// Cycles per packet of `bursts` bursts of `frames` (cycled) through `p`.
fn run(p: &mut Pipeline, t: &Tables, frames: &[Vec<u8>], burst: usize, bursts: usize) -> f64 {
    let mut bufs: Vec<HeapBuf> = (0..burst).map(|_| HeapBuf::with_capacity(256)).collect();
    let mut meta = vec![Meta::default(); burst];
    let mut v = vec![Verdict::Tx; burst];
    let mut cycles = 0u64;
    let mut k = 0;
    let mut bad = 0u64;
    for _ in 0..bursts {
        for b in bufs.iter_mut() {
            b.load(&frames[k % frames.len()], 0);
            k += 1;
        }
        v.fill(Verdict::Tx);
        let c0 = rdtsc();
        p.run(t, 0, &mut bufs, &mut meta, &mut v);
        cycles += rdtsc().wrapping_sub(c0);
        bad += v.iter().filter(|x| **x != Verdict::Tx).count() as u64;
    }
    assert_eq!(bad, 0, "every packet is sent");
    cycles as f64 / (burst * bursts) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    let overlay: Vec<Vec<u8>> = (0..a.addrs).map(from_overlay).collect();
    let outside: Vec<Vec<u8>> = (0..a.addrs).map(from_outside).collect();
    let plain = tables(false, 0);
    let learned = tables(true, 0);
    let statics = tables(true, a.addrs);
    let mut p_plain = Pipeline::default();
    let mut p_learn = Pipeline::default();
    let mut p_static = Pipeline::default();
    // Warm up: learning fills the table, every case's caches are hot.
    run(&mut p_plain, &plain, &overlay, a.burst, 1000);
    run(&mut p_learn, &learned, &overlay, a.burst, 1000);
    run(&mut p_static, &statics, &outside, a.burst, 1000);
    if let Some(c) = &a.only {
        let cpp = match c.as_str() {
            "route" => run(&mut p_plain, &plain, &overlay, a.burst, a.bursts),
            "learn" => run(&mut p_learn, &learned, &overlay, a.burst, a.bursts),
            "inbound" => run(&mut p_learn, &learned, &outside, a.burst, a.bursts),
            "static" => run(&mut p_static, &statics, &outside, a.burst, a.bursts),
            other => panic!("--only {other}: not route, learn, inbound, static"),
        };
        println!("{c}: {cpp:.1} cycles/packet");
        return;
    }
    let (mut r, mut rl, mut i, mut is) = (vec![], vec![], vec![], vec![]);
    for _ in 0..a.rounds {
        r.push(run(&mut p_plain, &plain, &overlay, a.burst, a.bursts));
        rl.push(run(&mut p_learn, &learned, &overlay, a.burst, a.bursts));
        i.push(run(&mut p_learn, &learned, &outside, a.burst, a.bursts));
        is.push(run(&mut p_static, &statics, &outside, a.burst, a.bursts));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (r, rl, i, is) = (median(r), median(rl), median(i), median(is));
    println!(
        "overlay-bench: {} addresses, 64-byte UDP, burst {}, {} rounds of {} bursts (medians, TSC cycles/packet); loadavg {}",
        a.addrs,
        a.burst,
        a.rounds,
        a.bursts,
        load.trim()
    );
    println!("  route (no tenant, baseline)        {r:7.1}");
    println!(
        "  route+learn (source confirmed)     {rl:7.1}  ({:+.1}, {:.3}x)",
        rl - r,
        rl / r
    );
    println!(
        "  inbound, learned entries           {i:7.1}  ({:.3}x route)",
        i / r
    );
    println!(
        "  inbound, static entries            {is:7.1}  ({:.3}x route)",
        is / r
    );
}
