//! `acl-bench`: build and lookup cost of the compiled ACL classifier on a
//! ClassBench rule set, optionally next to DPDK's `rte_acl` (`dpdk-test-acl`)
//! on the same files in the same run.
//!
//! ```text
//! acl-bench --rules FILE [--trace FILE | --gen N] [--seed S] [--iters K]
//!           [--burst B] [--json] [--peer]
//! ```
//!
//! Lookup cost is the median over K passes of the whole trace, classified in
//! bursts of B keys; cycles come from the TSC (what `dpdk-test-acl` reports
//! too), nanoseconds from `Instant`.

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use acl::{
    format_classbench_trace_line, generate_trace, parse_classbench, parse_classbench_trace, Action,
    BuildParams, Classifier, Key, LinearClassifier, RuleSet, Walk,
};
use benches::sanity::{check_test_acl, parse_test_acl};
use dataplane::cpu::rdtsc;

const USAGE: &str = "usage: acl-bench --rules FILE [--trace FILE | --gen N] [--seed S] \
[--iters K] [--burst B] [--json] [--peer] [--binth N] [--spfac N] [--max-bits N] [--split-len N] [--walk one|group|interleave|auto]";

struct Args {
    rules: String,
    trace: Option<String>,
    gen: Option<usize>,
    seed: u64,
    iters: usize,
    burst: usize,
    json: bool,
    peer: bool,
    params: BuildParams,
    /// Any compiler knob given: build with exactly `params`.
    custom: bool,
    single: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rules: String::new(),
        trace: None,
        gen: None,
        seed: 1,
        iters: 11,
        burst: 32,
        json: false,
        peer: false,
        params: BuildParams::default(),
        custom: false,
        single: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: bad number {v:?}"))
        }
        if ["--binth", "--spfac", "--max-bits", "--split-len", "--walk"].contains(&flag.as_str()) {
            a.custom = true;
        }
        match flag.as_str() {
            "--rules" => a.rules = val("--rules")?,
            "--trace" => a.trace = Some(val("--trace")?),
            "--gen" => a.gen = Some(num("--gen", val("--gen")?)?),
            "--seed" => a.seed = num("--seed", val("--seed")?)?,
            "--iters" => a.iters = num("--iters", val("--iters")?)?,
            "--burst" => a.burst = num("--burst", val("--burst")?)?,
            "--json" => a.json = true,
            "--peer" => a.peer = true,
            // Per-key `classify` instead of `classify_burst` (for comparison).
            "--single" => a.single = true,
            // Tuning knobs of the compiler (see `acl::BuildParams`).
            "--binth" => a.params.binth = num("--binth", val("--binth")?)?,
            "--spfac" => a.params.spfac = num("--spfac", val("--spfac")?)?,
            "--max-bits" => a.params.max_bits = num("--max-bits", val("--max-bits")?)?,
            "--split-len" => a.params.split_len = num("--split-len", val("--split-len")?)?,
            "--walk" => {
                a.params.walk = match val("--walk")?.as_str() {
                    "one" => Some(Walk::One),
                    "group" => Some(Walk::Group),
                    "interleave" => Some(Walk::Interleave),
                    "auto" => None,
                    v => {
                        return Err(format!(
                            "--walk: want one, group, interleave or auto, got {v:?}"
                        ))
                    }
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.rules.is_empty() {
        return Err(format!("--rules is required\n{USAGE}"));
    }
    if a.trace.is_some() == a.gen.is_some() {
        return Err(format!("give exactly one of --trace and --gen\n{USAGE}"));
    }
    if a.iters == 0 || a.burst == 0 {
        return Err("--iters and --burst must be positive".to_string());
    }
    Ok(a)
}

/// TSC ticks per nanosecond, measured against `Instant`.
fn tsc_per_ns() -> f64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    while t0.elapsed() < Duration::from_millis(200) {
        std::hint::spin_loop();
    }
    let (ns, c1) = (t0.elapsed().as_nanos() as f64, rdtsc());
    (c1 - c0) as f64 / ns
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Peer {
    alg: &'static str,
    cycles_per_packet: Option<f64>,
    note: String,
}

fn run_peer(rules: &str, trace: &str, packets: usize, iters: usize) -> Vec<Peer> {
    ["scalar", "sse", "avx2"]
        .into_iter()
        .map(|alg| {
            let out = Command::new("dpdk-test-acl")
                .args([
                    "--no-huge",
                    "--no-pci",
                    "-m",
                    "256",
                    "-l",
                    "0",
                    "--",
                    &format!("--rulesf={rules}"),
                    &format!("--tracef={trace}"),
                    "--verbose=1",
                    &format!("--iter={iters}"),
                    &format!("--tracenum={}", packets.max(1)),
                    &format!("--alg={alg}"),
                ])
                .output();
            // A figure only from a run that classified the whole trace, every
            // pass, at a plausible cost (`benches::sanity`).
            let (cpp, note) = match out {
                Err(e) => (None, format!("cannot run dpdk-test-acl: {e}")),
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr);
                    match parse_test_acl(&text) {
                        None => (
                            None,
                            format!(
                                "no summary line (exit {:?}): {}",
                                o.status.code(),
                                text.lines().last().unwrap_or("")
                            ),
                        ),
                        Some(run) => match check_test_acl(&run, iters as u64, packets as u64) {
                            Ok(()) => (Some(run.cycles_per_packet), String::new()),
                            Err(why) => (None, why),
                        },
                    }
                }
            };
            Peer {
                alg,
                cycles_per_packet: cpp,
                note,
            }
        })
        .collect()
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let text = std::fs::read_to_string(&a.rules).map_err(|e| format!("{}: {e}", a.rules))?;
    let rules = parse_classbench(&text, &a.rules, Action::Allow).map_err(|e| e.to_string())?;
    let mut set = RuleSet::new(Action::Deny);
    set.extend(rules).map_err(|e| e.to_string())?;

    // Build a few times; report the fastest (the others warm caches/allocator).
    let mut builds = Vec::new();
    let mut classifier = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let c = if a.custom {
            Classifier::with_params(&set, a.params)
        } else {
            Classifier::new(&set)
        };
        builds.push(t0.elapsed().as_secs_f64() * 1e3);
        classifier = Some(c);
    }
    let Some(c) = classifier else {
        return Err("no build".into());
    };
    let build_ms = builds.iter().copied().fold(f64::INFINITY, f64::min);

    let mut tmp_trace = None;
    let (keys, trace_path): (Vec<Key>, String) = match (&a.trace, a.gen) {
        (Some(p), _) => {
            let t = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
            let tr = parse_classbench_trace(&t, p).map_err(|e| e.to_string())?;
            (tr.iter().map(|e| e.key).collect(), p.clone())
        }
        (None, Some(n)) => {
            let tr = generate_trace(set.rules(), n, a.seed);
            let path = std::env::temp_dir().join(format!(
                "acl-bench-{}-{}.trace",
                std::process::id(),
                a.seed
            ));
            let mut body = String::with_capacity(n * 40);
            for e in &tr {
                body.push_str(&format_classbench_trace_line(&e.key, e.filter));
                body.push('\n');
            }
            std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
            tmp_trace = Some(path.clone());
            (
                tr.iter().map(|e| e.key).collect(),
                path.display().to_string(),
            )
        }
        (None, None) => return Err(USAGE.to_string()),
    };
    if keys.is_empty() {
        return Err("empty trace".into());
    }

    // Sanity: the compiled answers equal the linear reference on a sample.
    let lin = LinearClassifier::new(&set);
    let step = (keys.len() / 4000).max(1);
    let mismatches = keys
        .iter()
        .step_by(step)
        .filter(|k| c.classify(k) != lin.classify(k))
        .count();

    let mut work = [0usize; 3];
    for k in &keys {
        let w = c.lookup_cost(k);
        for i in 0..3 {
            work[i] += w[i];
        }
    }
    let per = |i: usize| work[i] as f64 / keys.len() as f64;
    let tsc = tsc_per_ns();
    let mut out = vec![0u32; a.burst];
    let mut cycles = Vec::with_capacity(a.iters);
    let mut nanos = Vec::with_capacity(a.iters);
    let mut check = 0u64;
    for _ in 0..a.iters + 1 {
        let t0 = Instant::now();
        let c0 = rdtsc();
        for chunk in keys.chunks(a.burst) {
            let o = &mut out[..chunk.len()];
            if a.single {
                for (k, r) in chunk.iter().zip(o.iter_mut()) {
                    *r = c.classify(k);
                }
            } else {
                c.classify_burst(chunk, o);
            }
            check = check.wrapping_add(u64::from(o[0]));
        }
        let c1 = rdtsc();
        let ns = t0.elapsed().as_nanos() as f64;
        cycles.push((c1 - c0) as f64 / keys.len() as f64);
        nanos.push(ns / keys.len() as f64);
    }
    std::hint::black_box(check);
    // The first pass warms the caches; drop it.
    // What dpdk-test-acl reports: all cycles over all packets of all passes.
    let cpp_mean = cycles[1..].iter().sum::<f64>() / (cycles.len() - 1) as f64;
    let cpp = median(&mut cycles[1..]);
    let npp = median(&mut nanos[1..]);
    // On a shared machine the best pass is the least disturbed one.
    let cpp_min = cycles[1];
    let st = c.stats();
    let memory = c.memory_bytes();

    let peers = if a.peer {
        run_peer(&a.rules, &trace_path, keys.len(), a.iters)
    } else {
        Vec::new()
    };
    if let Some(p) = tmp_trace {
        std::fs::remove_file(p).ok();
    }
    let best_peer = peers
        .iter()
        .filter_map(|p| p.cycles_per_packet.map(|c| (p.alg, c)))
        .min_by(|x, y| x.1.total_cmp(&y.1));

    if a.json {
        let mut s = format!(
            "{{\"rules\":{},\"packets\":{},\"build_ms\":{:.3},\"memory_bytes\":{},\
             \"ns_per_packet\":{:.3},\"cycles_per_packet\":{:.2},\"cycles_per_packet_min\":{:.2},\"cycles_per_packet_mean\":{:.2},\"burst\":{},\"iters\":{},\
             \"tsc_ghz\":{:.4},\"trees\":{},\"nodes\":{},\"leaves\":{},\"rows\":{},\
             \"max_depth\":{},\"walk\":\"{:?}\",\"mismatches\":{},\"trees_per_packet\":{:.3},\
             \"nodes_per_packet\":{:.3},\"rows_per_packet\":{:.3}",
            set.len(),
            keys.len(),
            build_ms,
            memory,
            npp,
            cpp,
            cpp_min,
            cpp_mean,
            a.burst,
            a.iters,
            tsc,
            st.trees,
            st.nodes,
            st.leaves,
            st.rows,
            st.max_depth,
            st.walk,
            mismatches,
            per(0),
            per(1),
            per(2)
        );
        if a.peer {
            s.push_str(",\"peer\":{");
            let items: Vec<String> = peers
                .iter()
                .map(|p| match p.cycles_per_packet {
                    Some(c) => format!("\"{}\":{c:.2}", p.alg),
                    None => format!("\"{}\":null", p.alg),
                })
                .collect();
            s.push_str(&items.join(","));
            s.push('}');
            // Why each failed alg has no figure.
            let failed: Vec<String> = peers
                .iter()
                .filter(|p| p.cycles_per_packet.is_none())
                .map(|p| format!("{:?}:{}", p.alg, serde_json::Value::from(p.note.as_str())))
                .collect();
            s.push_str(&format!(",\"peer_failed\":{{{}}}", failed.join(",")));
            match best_peer {
                Some((alg, c)) => s.push_str(&format!(
                    ",\"peer_best_alg\":\"{alg}\",\"peer_best_cycles_per_packet\":{c:.2},\"ratio\":{:.3},\"ratio_mean\":{:.3}",
                    cpp / c,
                    cpp_mean / c
                )),
                None => s.push_str(",\"ratio\":null"),
            }
        }
        s.push('}');
        println!("{s}");
    } else {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "rules          {} ({})", set.len(), a.rules);
        let _ = writeln!(o, "packets        {} ({trace_path})", keys.len());
        let _ = writeln!(
            o,
            "build          {build_ms:.2} ms (best of 3): {} trees, {} nodes, {} leaves, {} rows, depth {}, walk {:?}",
            st.trees, st.nodes, st.leaves, st.rows, st.max_depth, st.walk
        );
        let _ = writeln!(
            o,
            "memory         {memory} bytes ({:.2} MiB)",
            memory as f64 / 1048576.0
        );
        let _ = writeln!(
            o,
            "work/packet    {:.2} trees, {:.2} nodes, {:.2} rows",
            per(0),
            per(1),
            per(2)
        );
        let _ = writeln!(
            o,
            "check          {mismatches} mismatches vs linear reference (sampled)"
        );
        let _ = writeln!(
            o,
            "lookup         {npp:.2} ns/packet, {cpp:.1} cycles/packet (median of {}, best {cpp_min:.1}, mean {cpp_mean:.1}, burst {}, TSC {tsc:.3} GHz)",
            a.iters, a.burst
        );
        for p in &peers {
            match p.cycles_per_packet {
                Some(c) => {
                    let _ = writeln!(o, "rte_acl {:<7}{c:.1} cycles/packet", p.alg);
                }
                None => {
                    let _ = writeln!(o, "rte_acl {:<7}failed: {}", p.alg, p.note);
                }
            }
        }
        if a.peer {
            match best_peer {
                Some((alg, c)) => {
                    let _ = writeln!(
                        o,
                        "ratio          {:.3} (ours median / rte_acl {alg}); {:.3} with our mean",
                        cpp / c,
                        cpp_mean / c
                    );
                }
                None => {
                    let why: Vec<String> = peers
                        .iter()
                        .map(|p| format!("{}: {}", p.alg, p.note))
                        .collect();
                    let _ = writeln!(o, "ratio          n/a (peer failed: {})", why.join("; "));
                }
            }
        }
    }
    if mismatches > 0 {
        return Err(format!("{mismatches} mismatches vs the linear reference"));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acl-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
