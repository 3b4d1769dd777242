//! Connection tracking cost per packet on the gateway pipeline.
//!
//! Runs `dataplane::pipeline::Pipeline::run` (decap, inner parse, conntrack
//! lookup, ACL, conntrack commit, LB, route) over preloaded VXLAN bursts of
//! UDP flows in VNI 100 (`default = "deny"`, one allow rule), once with the
//! rule stateful and once stateless, alternating, and prints TSC cycles per
//! packet (median of `--rounds`) for:
//!
//! * `established`: packets of `--flows` connections that exist (own table),
//! * `remote`: their replies on a second pipeline attached as worker 1 (the
//!   entries are in worker 0's table),
//! * `new`: every packet a new connection (created in the commit stage).
//!
//! The stateless runs are the baseline (the conntrack stages are one test per
//! burst there). `cargo run --release -p benches --bin ct-bench`.

use clap::Parser;
use dataplane::config::Config;
use dataplane::conntrack::CtShared;
use dataplane::cpu::{rdtsc, thread_cpu_ns};
use dataplane::io::buf::HeapBuf;
use dataplane::io::{Packet, MAX_BURST};
use dataplane::pipeline::{Meta, Pipeline, Verdict};
use dataplane::tables::Tables;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Parser)]
struct Args {
    /// Established connections cycled through.
    #[arg(long, default_value_t = 4096)]
    flows: u32,
    /// Packets per measurement (new flows: this many connections).
    #[arg(long, default_value_t = 400_000)]
    packets: u32,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// `[conntrack] capacity` (entries per worker).
    #[arg(long, default_value_t = 1 << 20)]
    capacity: usize,
}

fn config(stateful: bool, capacity: usize) -> Config {
    Config::parse(&format!(
        "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [\"10.0.0.1\"]\n\
         [conntrack]\ncapacity = {capacity}\n\
         [acl]\ndefault = \"allow\"\n[[acl.vni]]\nvni = 100\ndefault = \"deny\"\n\
         [[acl.rule]]\nvni = 100\nsrc = \"172.16.0.0/16\"\ndst = \"192.0.2.0/24\"\naction = \"allow\"\nstateful = {stateful}\n"
    ))
    .expect("config")
}

/// VXLAN frame of UDP `src:sport → dst:dport` in VNI 100.
fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut inner = Vec::new();
    vxlan::build_inner_frame(
        &vxlan::InnerSpec {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            proto: 17,
            sport,
            dport,
            ttl: 64,
            frame_len: 128,
        },
        &mut inner,
    );
    let o = vxlan::Outer {
        src_mac: [2, 0, 0, 0, 0, 9],
        dst_mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
        src_ip: "10.0.0.2".parse().unwrap(),
        dst_ip: "10.0.0.1".parse().unwrap(),
        ttl: 64,
    };
    let key = vxlan::FlowKey {
        vni: 100,
        sport,
        ..Default::default()
    };
    vxlan::encap::vxlan_encap_to_vec(&o, &key, 4789, &inner)
}

fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(172, 16, (i >> 14) as u8, ((i >> 6) & 0xff) as u8),
        10_000 + (i & 63) as u16,
    )
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn request(i: u32) -> Vec<u8> {
    let (c, p) = client(i);
    frame(c, p, SERVER, 53)
}

fn reply(i: u32) -> Vec<u8> {
    let (c, p) = client(i);
    frame(SERVER, 53, c, p)
}

/// Runs `frames` (cycled, `packets` in all) through `p`; on-CPU ns per
/// packet of the whole loop (buffer loads included, time the thread was
/// preempted excluded: the machine is shared), TSC cycles per packet inside
/// `run`, and packets sent.
fn measure(
    p: &mut Pipeline,
    t: &Tables,
    frames: &[Vec<u8>],
    packets: u32,
    burst: usize,
) -> (f64, f64, u64) {
    let mut bufs: Vec<HeapBuf> = (0..burst).map(|_| HeapBuf::with_capacity(512)).collect();
    let mut meta = vec![Meta::default(); burst];
    let mut v = vec![Verdict::Tx; burst];
    let (mut cycles, mut sent, mut done) = (0u64, 0u64, 0u32);
    let mut at = 0usize;
    let ns0 = thread_cpu_ns();
    while done < packets {
        let n = burst.min((packets - done) as usize);
        for b in bufs[..n].iter_mut() {
            b.load(&frames[at % frames.len()], 0);
            at += 1;
        }
        v[..n].fill(Verdict::Tx);
        let c0 = rdtsc();
        p.run(t, 0, &mut bufs[..n], &mut meta[..n], &mut v[..n]);
        cycles += rdtsc() - c0;
        sent += v[..n].iter().filter(|x| **x == Verdict::Tx).count() as u64;
        std::hint::black_box(bufs[0].data());
        done += n as u32;
    }
    let ns = (thread_cpu_ns() - ns0) as f64 / f64::from(packets);
    (ns, cycles as f64 / f64::from(packets), sent)
}

/// (case, stateful ns, stateless ns, stateful cycles, stateless cycles).
type Row = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    let burst = a.burst.clamp(1, MAX_BURST);
    let requests: Vec<Vec<u8>> = (0..a.flows).map(request).collect();
    let replies: Vec<Vec<u8>> = (0..a.flows).map(reply).collect();
    let new: Vec<Vec<u8>> = (0..a.packets).map(|i| request(a.flows + i)).collect();
    let mut rows: Vec<Row> = ["established", "remote", "new"]
        .into_iter()
        .map(|n| (n, vec![], vec![], vec![], vec![]))
        .collect();
    let mut full_new = Vec::new();
    for _round in 0..a.rounds {
        for stateful in [true, false] {
            let t = Tables::build(&config(stateful, a.capacity), 1).expect("tables");
            assert_eq!(t.ct_active, stateful);
            let shared = CtShared::new(2, t.ct_capacity);
            let (mut w0, mut w1) = (Pipeline::default(), Pipeline::default());
            for (w, id) in [(&mut w0, 0), (&mut w1, 1)] {
                w.ct.attach(shared.clone(), id);
                w.ct.prepare(&t);
                w.acl.prepare(&t);
                w.lb.next_hop = t.next_hop_mac;
                w.route.next_hop = t.next_hop_mac;
            }
            // Create the connections (and warm caches), then measure.
            measure(&mut w0, &t, &requests, a.flows, burst);
            let (est, est_c, sent_est) = measure(&mut w0, &t, &requests, a.packets, burst);
            let (rem, rem_c, sent_rem) = measure(&mut w1, &t, &replies, a.packets, burst);
            let (nw, nw_c, sent_new) = measure(&mut w0, &t, &new, a.packets, burst);
            assert_eq!(sent_est, u64::from(a.packets), "established traffic passes");
            // Set-associative: a few new flows may meet a full set (ct_full).
            if stateful {
                full_new.push(u64::from(a.packets) - sent_new);
            } else {
                assert_eq!(sent_new, u64::from(a.packets), "new flows are allowed");
            }
            // Stateless: the replies are denied by the VNI default.
            assert_eq!(sent_rem, if stateful { u64::from(a.packets) } else { 0 });
            let col = |r: &mut Row, x: (f64, f64)| {
                if stateful {
                    r.1.push(x.0);
                    r.3.push(x.1);
                } else {
                    r.2.push(x.0);
                    r.4.push(x.1);
                }
            };
            col(&mut rows[0], (est, est_c));
            col(&mut rows[1], (rem, rem_c));
            col(&mut rows[2], (nw, nw_c));
        }
    }
    println!(
        "conntrack on the pipeline: {} flows, {} packets per run, burst {burst}, capacity {}, median of {} rounds",
        a.flows, a.packets, a.capacity, a.rounds
    );
    println!(
        "{:<12} {:>12} {:>12} {:>10} {:>14} {:>14} {:>10}",
        "case",
        "stateful ns",
        "stateless ns",
        "delta ns",
        "stateful TSC",
        "stateless TSC",
        "delta TSC"
    );
    for (name, s, b, sc, bc) in rows {
        let (s, b, sc, bc) = (median(s), median(b), median(sc), median(bc));
        let note = if name == "remote" {
            "  (stateless: denied by the rules, not sent on)"
        } else {
            ""
        };
        println!(
            "{name:<12} {s:>12.1} {b:>12.1} {:>10.1} {sc:>14.1} {bc:>14.1} {:>10.1}{note}",
            s - b,
            sc - bc
        );
    }
    println!(
        "new flows dropped as ct_full per round (capacity {}, 8-way sets, {} connections at the end): {full_new:?}",
        a.capacity,
        a.flows + a.packets
    );
}
