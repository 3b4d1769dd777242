//! `lb-bench`: cost of the load-balancing stage (`lb` crate).
//!
//! ```text
//! lb-bench [--backends 10,100,1000] [--table-sizes 65537,655373] [--flows 4096,262144]
//!          [--miss-keys N] [--iters K] [--burst B] [--schedulers S,..] [--json]
//! ```
//!
//! For every (backends N, table size M):
//! * `build`: time to build the snapshot for one service with N backends
//!   (`lb::build`: sort, hash, weighted Maglev fill), and the Maglev fill alone;
//!   thread CPU time (not wall time: on a shared machine a build is preempted),
//!   the fastest of K builds (`build_ms`, `fill_ms`) and the median (`*_median_ms`),
//!   with ns per table entry next to the paper's (1.8 ms for N = 1000 at
//!   M = 65537, 22.9 ms at M = 655373);
//! * `hit`: the full LB stage (`LbTables::process_burst`: service lookup, flow
//!   hash, flow-table hit, backend reference) on F established flows, packets in
//!   random flow order, bursts of B;
//! * `hit_scalar`: the same, one packet at a time without the burst's
//!   flow-table prefetch pass (evidence for or against that trick);
//! * `miss`: every packet a new flow (a stream of distinct keys through a
//!   16 Ki-flow table): Maglev pick + insert (+ eviction);
//! * `miss_src_ip`, `miss_rr`, `miss_lc`, `miss_wlc` (with `--schedulers`):
//!   the same stream through a service with that scheduler (client hash;
//!   smooth weighted round robin; least active flows, whose evictions also
//!   uncount the evicted flow), i.e. each scheduler's selection cost on top
//!   of the insert.
//!
//! Per-packet costs are the median over K passes; cycles are TSC ticks (the
//! TSC is invariant here; its rate is calibrated against `Instant` and printed).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::time::{Duration, Instant};

use clap::Parser;
use dataplane::cpu::rdtsc;
use lb::maglev::{self, Permutation, WeightedBackend};
use lb::{
    build, flow_hash, BackendSpec, FlowKey, FlowTable, FlowTableConfig, LbTables, LbVerdict, Proto,
    Scheduler, ServiceSpec, Services,
};

#[derive(Parser, Debug)]
#[command(
    name = "lb-bench",
    about = "Maglev build time and LB stage cost per packet"
)]
struct Args {
    /// Backend counts N.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 100, 1000])]
    backends: Vec<usize>,
    /// Maglev table sizes M (prime).
    #[arg(long, value_delimiter = ',', default_values_t = vec![65537u32, 655373])]
    table_sizes: Vec<u32>,
    /// Established flow counts for the hit cases.
    #[arg(long, value_delimiter = ',', default_values_t = vec![4096usize, 262144])]
    flows: Vec<usize>,
    /// Distinct keys streamed through the miss case.
    #[arg(long, default_value_t = 1 << 19)]
    miss_keys: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 11)]
    iters: usize,
    /// Burst size.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Schedulers besides maglev to run the miss case with (src_ip,
    /// round_robin, least_conn, weighted_least_conn).
    #[arg(long, value_delimiter = ',')]
    schedulers: Vec<String>,
    /// One JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
}

/// CPU time of this thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`): on a
/// machine shared with other jobs a 50 ms build is preempted several times, and
/// wall time would measure the neighbours.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call and
    // CLOCK_THREAD_CPUTIME_ID is supported by Linux; the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Times `f` by thread CPU time, in milliseconds.
fn cpu_ms(f: impl FnOnce()) -> f64 {
    let t0 = thread_cpu_ns();
    f();
    (thread_cpu_ns() - t0) as f64 / 1e6
}

/// TSC ticks per nanosecond, measured against `Instant` over 200 ms.
fn calibrate() -> f64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    while t0.elapsed() < Duration::from_millis(200) {
        std::hint::spin_loop();
    }
    let (c1, dt) = (rdtsc(), t0.elapsed());
    (c1 - c0) as f64 / dt.as_nanos() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn backend_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        (i >> 16) as u8 + 1,
        (i >> 8) as u8,
        i as u8,
    ))
}

fn services(n: usize, m: u32) -> Services {
    services_with(n, m, Scheduler::Maglev)
}

fn services_with(n: usize, m: u32, scheduler: Scheduler) -> Services {
    let mut spec = ServiceSpec::new("bench", VIP.into(), 80, Proto::Tcp);
    spec.table_size = m;
    spec.scheduler = scheduler;
    spec.backends = (0..n).map(|i| BackendSpec::new(backend_ip(i))).collect();
    Services::from_specs([spec]).expect("valid bench config")
}

fn keys(n: usize, rng: &mut SplitMix) -> Vec<FlowKey> {
    (0..n)
        .map(|_| {
            let r = rng.next();
            FlowKey {
                vni: 1 + (r >> 56) as u32 % 4,
                src: u128::from(0xac10_0000u32 | (r as u32 & 0x000f_ffff)),
                dst: u128::from(u32::from(VIP)),
                sport: (r >> 32) as u16 | 1024,
                dport: 80,
                proto: 6,
                v6: false,
            }
        })
        .collect()
}

struct PerPacket {
    ns: f64,
    cycles: f64,
    hit_ratio: f64,
}

/// Packets per timed slice: short enough (tens of microseconds) that most
/// slices run without being preempted on a busy machine, long enough that the
/// timer's cost (~25 ns) is noise.
const SLICE: usize = 2048;

/// Runs `pass` over `0..packets` `iters` times, timing each slice of [`SLICE`]
/// packets; the median slice gives the cost per packet.
fn measure(
    iters: usize,
    packets: usize,
    flows: &mut FlowTable,
    mut pass: impl FnMut(&mut FlowTable, Range<usize>),
) -> PerPacket {
    let before = flows.stats();
    let mut ns = Vec::new();
    let mut cyc = Vec::new();
    for _ in 0..iters {
        for start in (0..packets).step_by(SLICE) {
            let end = (start + SLICE).min(packets);
            let (t0, c0) = (Instant::now(), rdtsc());
            pass(flows, start..end);
            let (c1, dt) = (rdtsc(), t0.elapsed());
            let n = (end - start) as f64;
            ns.push(dt.as_nanos() as f64 / n);
            cyc.push((c1 - c0) as f64 / n);
        }
    }
    let after = flows.stats();
    let hits = after.hits - before.hits;
    let misses = after.misses - before.misses;
    PerPacket {
        ns: median(&mut ns),
        cycles: median(&mut cyc),
        hit_ratio: hits as f64 / (hits + misses).max(1) as f64,
    }
}

fn burst_pass<'a>(
    tables: &'a LbTables,
    packets: &'a [FlowKey],
    burst: usize,
) -> impl FnMut(&mut FlowTable, Range<usize>) + 'a {
    let mut out = vec![LbVerdict::default(); burst];
    move |ft: &mut FlowTable, range: Range<usize>| {
        for chunk in packets[range].chunks(burst) {
            let o = &mut out[..chunk.len()];
            tables.process_burst(chunk, ft, 1, o);
            black_box(&*o);
        }
    }
}

fn scalar_pass<'a>(
    tables: &'a LbTables,
    packets: &'a [FlowKey],
) -> impl FnMut(&mut FlowTable, Range<usize>) + 'a {
    move |ft: &mut FlowTable, range: Range<usize>| {
        for k in &packets[range] {
            let v = match tables.lookup_service(k) {
                None => LbVerdict::NotService,
                Some(svc) => match tables.select(svc, k, flow_hash(k), ft, 1) {
                    Some(s) => LbVerdict::Forward {
                        svc,
                        backend: s.backend.index,
                        new_flow: s.new_flow,
                    },
                    None => LbVerdict::NoBackend(svc),
                },
            };
            black_box(v);
        }
    }
}

fn flow_table(capacity: usize) -> FlowTable {
    FlowTable::new(FlowTableConfig {
        capacity,
        tcp_timeout: u32::MAX / 2,
        udp_timeout: u32::MAX / 2,
        fin_timeout: u32::MAX / 2,
    })
}

fn main() {
    let args = Args::parse();
    if args.iters == 0 || args.burst == 0 {
        eprintln!("lb-bench: --iters and --burst must be positive");
        std::process::exit(2);
    }
    for &m in &args.table_sizes {
        if let Err(e) = maglev::check_table_size(m) {
            eprintln!("lb-bench: --table-sizes: {e}");
            std::process::exit(2);
        }
    }
    let mut scheds = Vec::new();
    for s in &args.schedulers {
        match s.parse::<Scheduler>() {
            Ok(Scheduler::Maglev) => {}
            Ok(x) => scheds.push(x),
            Err(e) => {
                eprintln!("lb-bench: --schedulers: {e}");
                std::process::exit(2);
            }
        }
    }
    let tsc_per_ns = calibrate();
    if !args.json {
        println!(
            "TSC {:.3} GHz; flow table {} bytes/entry; burst {}; median of {} runs",
            tsc_per_ns,
            FlowTable::BYTES_PER_ENTRY,
            args.burst,
            args.iters
        );
        println!(
            "{:>6} {:>7} {:>10} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8} {:>9} {:>6}",
            "N",
            "M",
            "mode",
            "flows",
            "build_ms",
            "fill_ms",
            "ns/entry",
            "paper",
            "ns/pkt",
            "cyc/pkt",
            "hit%"
        );
    }
    let mut rng = SplitMix(0x5EED);
    for &m in &args.table_sizes {
        for &n in &args.backends {
            if n == 0 || n > m as usize || n > maglev::MAX_BACKENDS {
                eprintln!("lb-bench: skipping N={n} for M={m}");
                continue;
            }
            let desired = services(n, m);
            // Snapshot build (what the control plane pays per change).
            let mut build_ms: Vec<f64> = (0..args.iters)
                .map(|_| cpu_ms(|| drop(black_box(build(black_box(&desired)).expect("build")))))
                .collect();
            let build_med_ms = median(&mut build_ms);
            let build_ms = build_ms[0];
            // The Maglev fill alone (permutations precomputed).
            let wb: Vec<WeightedBackend> = (0..n)
                .map(|i| WeightedBackend {
                    perm: Permutation::from_key(backend_ip(i).to_string().as_bytes(), m),
                    weight: 1,
                })
                .collect();
            let mut fill_ms: Vec<f64> = (0..args.iters)
                .map(|_| {
                    cpu_ms(|| {
                        drop(black_box(
                            maglev::populate_weighted(black_box(&wb), m).expect("fill"),
                        ))
                    })
                })
                .collect();
            let fill_med_ms = median(&mut fill_ms);
            let fill_ms = fill_ms[0];
            let paper_ms = match m {
                65537 if n == 1000 => Some(1.8),
                655373 if n == 1000 => Some(22.9),
                _ => None,
            };
            let tables = build(&desired).expect("build");

            let report = |mode: &str, flows: usize, r: &PerPacket| {
                let ns_per_entry = build_ms * 1e6 / f64::from(m);
                if args.json {
                    let mut o = serde_json::json!({
                        "bench": "lb",
                        "mode": mode,
                        "backends": n,
                        "table_size": m,
                        "flows": flows,
                        "build_ms": build_ms,
                        "fill_ms": fill_ms,
                        "build_median_ms": build_med_ms,
                        "fill_median_ms": fill_med_ms,
                        "build_ns_per_entry": ns_per_entry,
                        "ns_per_packet": r.ns,
                        "cycles_per_packet": r.cycles,
                        "hit_ratio": r.hit_ratio,
                        "burst": args.burst,
                        "flow_table_bytes_per_entry": FlowTable::BYTES_PER_ENTRY,
                        "tsc_ghz": tsc_per_ns,
                    });
                    if let Some(p) = paper_ms {
                        o["paper_build_ms"] = serde_json::json!(p);
                    }
                    println!("{o}");
                } else {
                    println!(
                        "{:>6} {:>7} {:>10} {:>9} {:>9.3} {:>9.3} {:>11.2} {:>8} {:>8.2} {:>9.1} {:>6.1}",
                        n,
                        m,
                        mode,
                        flows,
                        build_ms,
                        fill_ms,
                        ns_per_entry,
                        paper_ms.map_or("-".to_string(), |p| format!("{p}ms")),
                        r.ns,
                        r.cycles,
                        r.hit_ratio * 100.0
                    );
                }
            };

            for &f in &args.flows {
                let established = keys(f.max(1), &mut rng);
                // Packets: a random flow each, at least 64 Ki of them per pass.
                let pkts = established.len().max(1 << 16);
                let packets: Vec<FlowKey> = (0..pkts)
                    .map(|_| established[(rng.next() % established.len() as u64) as usize])
                    .collect();
                let mut ft = flow_table(f * 4);
                let mut warm = burst_pass(&tables, &established, args.burst);
                warm(&mut ft, 0..established.len());
                let r = measure(
                    args.iters,
                    pkts,
                    &mut ft,
                    burst_pass(&tables, &packets, args.burst),
                );
                report("hit", f, &r);
                let r = measure(args.iters, pkts, &mut ft, scalar_pass(&tables, &packets));
                report("hit_scalar", f, &r);
                // Parts of the stage, for the breakdown.
                let r = measure(args.iters, pkts, &mut ft, |_, range| {
                    for k in &packets[range] {
                        black_box(tables.lookup_service(black_box(k)));
                    }
                });
                report("svc_lookup", f, &r);
                let r = measure(args.iters, pkts, &mut ft, |_, range| {
                    for k in &packets[range] {
                        black_box(flow_hash(black_box(k)));
                    }
                });
                report("flow_hash", f, &r);
                let hashes: Vec<u64> = packets.iter().map(flow_hash).collect();
                let r = measure(args.iters, pkts, &mut ft, |ft, range| {
                    for (k, &h) in packets[range.clone()].iter().zip(&hashes[range]) {
                        black_box(ft.get(black_box(k), h, 1));
                    }
                });
                report("ft_get", f, &r);
            }

            // Misses: a stream of distinct flows much larger than the table.
            let stream = keys(args.miss_keys.max(1), &mut rng);
            let mut ft = flow_table(1 << 14);
            let r = measure(
                args.iters,
                stream.len(),
                &mut ft,
                burst_pass(&tables, &stream, args.burst),
            );
            report("miss", stream.len(), &r);
            for &sc in &scheds {
                let t = build(&services_with(n, m, sc)).expect("build");
                let mut ft = flow_table(1 << 14);
                let r = measure(
                    args.iters,
                    stream.len(),
                    &mut ft,
                    burst_pass(&t, &stream, args.burst),
                );
                let mode = match sc {
                    Scheduler::SrcIp => "miss_src_ip",
                    Scheduler::RoundRobin => "miss_rr",
                    Scheduler::LeastConn => "miss_lc",
                    Scheduler::WeightedLeastConn => "miss_wlc",
                    Scheduler::Maglev => "miss",
                };
                report(mode, stream.len(), &r);
            }
        }
    }
}
