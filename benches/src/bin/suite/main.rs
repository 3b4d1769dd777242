//! `suite`: dpgw's line-rate benchmark suite — one command that runs the
//! benchmark matrix, the per-stage cost breakdown, latency under paced load and
//! the peers on this machine, and writes `report.md`, `results.json` and SVG
//! plots.
//!
//! ```text
//! cargo build --profile production -p benches --bins
//! target/production/suite [--quick] [--out DIR] [--repeats N] [--keep-captures] [--no-peers]
//! ```
//!
//! `scripts/bench-suite.sh` does both and checks the JSON. What each figure
//! means is written in `docs/benchmarks.md` and at the end of every report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

mod inproc;
mod machine;
mod peers;
mod plots;
mod report;
mod stat;
mod workload;

use stat::Stat;
use workload::{AclSet, Dist, ReplayResult, Scenario};

/// The `dpgw` binary's allocator (large tables on transparent huge pages),
/// so that the matrix rows, replayed in process, cost what `dpgw replay` does.
#[global_allocator]
static ALLOC: dataplane::hugealloc::HugeAlloc = dataplane::hugealloc::HugeAlloc;

#[derive(Parser, Debug)]
#[command(
    name = "suite",
    about = "dpgw line-rate benchmark suite: matrix, per-stage costs, latency, peers, plots"
)]
struct Cli {
    /// Small subset (CI smoke test; a few minutes at most).
    #[arg(long)]
    quick: bool,
    /// Even smaller than --quick: a functional check of the harness, not a benchmark.
    #[arg(long, hide = true)]
    tiny: bool,
    /// Output directory (report.md, results.json, plots/, configs/).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Repeats per matrix cell (default: 3 quick, 5 full).
    #[arg(long)]
    repeats: Option<usize>,
    /// Packets per burst.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Keep the generated captures in OUT/captures (they can be large).
    #[arg(long)]
    keep_captures: bool,
    /// Do not run dpdk-testpmd / dpdk-test-acl.
    #[arg(long)]
    no_peers: bool,
    /// Only check that FILE is a well-formed results.json (exit 0 if so), then exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

/// How much work each part does.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub mode: &'static str,
    pub repeats: usize,
    pub packets_per_run: u64,
    pub burst: usize,
    pub stage_passes: usize,
    pub latency_seconds_per_point: f64,
    pub testpmd_seconds: f64,
}

/// Per-stage breakdown of the target pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    pub stage: String,
    pub cycles_per_packet: Stat,
    pub ns_per_packet: Stat,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stages {
    /// Scenario the stages were measured on (label of a replay row).
    pub scenario: String,
    pub rows: Vec<Breakdown>,
    /// Σ of the in-process stage medians.
    pub in_process_cycles: f64,
    /// The same pipeline through `dpgw replay` (1 worker), on-CPU cycles per packet.
    pub replay_cycles: f64,
    /// The same, wall-clock TSC cycles per packet (includes time other processes had the core).
    pub replay_wall_cycles: f64,
    /// Bursts left out of the stage timings as interrupted (over 5× the median).
    pub skipped_bursts: u64,
    /// replay − in-process: the worker loop around the stages (queue, counters, tx).
    pub engine_residual_cycles: f64,
    pub flow_hit_ratio: f64,
    /// LB stage when (almost) every packet is a new flow.
    pub lb_miss_cycles: Stat,
    pub lb_miss_ratio: f64,
    pub timer_cycles_per_burst: f64,
    pub packets_per_pass: usize,
    pub passes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub description: String,
    pub budget_cycles: f64,
    /// The budget as a multiple of the calibration (6.5: 200 cycles where
    /// testpmd io on net_null costs about 30).
    pub budget_ratio: f64,
    /// On-CPU cycles per packet of `dpdk-testpmd` io on `net_null`, same run
    /// (null when it was not run or failed).
    pub calibration_cycles: Option<f64>,
    /// `cycles_per_packet` median / `calibration_cycles`.
    pub ratio_to_calibration: Option<f64>,
    /// On-CPU cycles per packet through `dpgw replay` (what a dedicated core costs).
    pub cycles_per_packet: Stat,
    /// Wall-clock TSC cycles per packet (inflated when the core was shared).
    pub wall_cycles_per_packet: Stat,
    pub met: bool,
    /// The three largest per-stage costs (stage, cycles/packet).
    pub top_costs: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LineRateLink {
    pub link: &'static str,
    pub link_mpps: f64,
    pub pct_one_worker: f64,
    pub workers_needed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LineRate {
    pub inner_frame: usize,
    /// Outer frame on the wire (+ FCS, preamble, gap), bytes.
    pub wire_bytes: usize,
    pub mpps_one_worker: f64,
    pub links: Vec<LineRateLink>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Peers {
    pub testpmd: Vec<peers::TestpmdResult>,
    /// On-CPU cycles per packet of our replay loop alone (`io_only`) / testpmd
    /// io's; null when testpmd io failed (see its `reason`).
    pub io_ratio: Option<f64>,
    pub acl: Vec<peers::AclPeer>,
    pub published: Vec<peers::Published>,
    /// The kernel on veth against dpgw on AF_PACKET and AF_XDP (`veth-bench`).
    pub veth: Option<peers::VethPeer>,
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub scenario: String,
    /// Unpaced rate of the in-process loop the loads are a share of.
    pub max_mpps: f64,
    pub points: Vec<inproc::LatencyPoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub schema: u32,
    pub machine: machine::Machine,
    pub settings: Settings,
    pub replay: Vec<ReplayResult>,
    pub stages: Option<Stages>,
    pub target: Option<Target>,
    pub latency: Option<Latency>,
    pub line_rate: Vec<LineRate>,
    pub peers: Peers,
    pub plots: Vec<String>,
    pub errors: Vec<String>,
    pub load_avg_end: f64,
    pub duration_s: f64,
}

/// Budget of the target pipeline, cycles per packet, where testpmd io on
/// net_null costs about 30 ...
const TARGET_CYCLES: f64 = 200.0;
/// ... that is, as a multiple of testpmd io on net_null in the same run
/// (what decides `met` when the calibration ran; the absolute budget
/// otherwise).
const TARGET_RATIO: f64 = 6.5;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.check {
        return match check_file(path) {
            Ok(n) => {
                eprintln!("suite: {} is well formed ({n} replay rows)", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("suite: {}: {e}", path.display());
                ExitCode::from(1)
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("suite: {e}");
            ExitCode::from(2)
        }
    }
}

/// Progress on stderr: a bar with ETA on a terminal, one line per step otherwise.
struct Progress {
    bar: ProgressBar,
    tty: bool,
}

impl Progress {
    fn new(len: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_length(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} ETA {eta} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar, tty }
    }

    fn step(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
        if !self.tty {
            eprintln!(
                "suite: [{}/{}] {msg}",
                self.bar.position() + 1,
                self.bar.length().unwrap_or(0)
            );
        }
    }

    fn tick(&self) {
        self.bar.inc(1);
    }

    fn note(&self, msg: &str) {
        if self.tty {
            self.bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }
}

/// The matrix, as scenarios grouped by sweep.
fn matrix(quick: bool, tiny: bool, cores: usize, acl1k: &Option<AclSet>) -> Vec<Scenario> {
    let t = Scenario::target(acl1k.clone());
    let mut v = Vec::new();
    let with = |group: &'static str, label: String, f: &dyn Fn(&mut Scenario)| {
        let mut s = t.clone();
        s.group = group;
        s.label = label;
        f(&mut s);
        s
    };
    v.push(t.clone());
    // Frame size: the target pipeline and decap + route only.
    let frames: &[usize] = if tiny {
        &[64]
    } else if quick {
        &[64, 1500]
    } else {
        &[64, 128, 512, 1500]
    };
    for &f in frames {
        v.push(with("frame_size", format!("frame{f}_full"), &|s| {
            s.frame = f
        }));
        v.push(with("frame_size", format!("frame{f}_route"), &|s| {
            s.frame = f;
            s.acl = None;
            s.services = 0;
        }));
    }
    // Flows and popularity.
    let flows: Vec<(usize, Dist)> = if tiny {
        vec![(1000, Dist::Zipf)]
    } else if quick {
        vec![(1000, Dist::Uniform), (100_000, Dist::Zipf)]
    } else {
        [1000, 100_000, 1_000_000]
            .into_iter()
            .flat_map(|n| [(n, Dist::Uniform), (n, Dist::Zipf)])
            .collect()
    };
    for (n, d) in flows {
        let tag = if d == Dist::Uniform {
            "uniform"
        } else {
            "zipf"
        };
        v.push(with("flows", format!("flows{n}_{tag}"), &|s| {
            s.flows = n;
            s.dist = d;
        }));
    }
    // ACL rule count (ClassBench sets).
    v.push(with("acl", "acl0".into(), &|s| s.acl = None));
    let sets: &[&str] = if tiny || quick {
        &["acl1_1k"]
    } else {
        &[
            "acl1_1k", "fw1_1k", "ipc1_1k", "acl1_10k", "fw1_10k", "ipc1_10k",
        ]
    };
    for name in sets {
        if let Some(a) = AclSet::neurocuts(name) {
            v.push(with("acl", format!("acl_{name}"), &|s| {
                s.acl = Some(a.clone())
            }));
        }
    }
    // Services × backends.
    let svc: &[(usize, usize)] = if tiny {
        &[(1, 10)]
    } else if quick {
        &[(1, 10), (100, 10)]
    } else {
        &[(1, 10), (1, 1000), (100, 10), (100, 1000)]
    };
    for &(n, b) in svc {
        v.push(with("services", format!("svc{n}_be{b}"), &|s| {
            s.services = n;
            s.backends = b;
        }));
    }
    // Workers.
    for w in 1..=cores.max(1) {
        v.push(with("workers", format!("workers{w}"), &|s| s.workers = w));
    }
    // Address families (inner/outer).
    let fams: &[(bool, bool)] = if tiny {
        &[(true, true)]
    } else if quick {
        &[(false, false), (true, true)]
    } else {
        &[(false, false), (true, false), (false, true), (true, true)]
    };
    for &(i6, o6) in fams {
        let n = |b: bool| if b { 6 } else { 4 };
        v.push(with(
            "family",
            format!("inner{}_outer{}", n(i6), n(o6)),
            &|s| {
                s.inner_v6 = i6;
                s.outer_v6 = o6;
                // An IPv6 + TCP inner frame needs 74 B: the smallest one is used.
                if i6 {
                    s.frame = 74;
                }
            },
        ));
    }
    // The replay loop alone: every packet dropped at the outer VTEP check.
    v.push(with("io_only", "io_only".into(), &|s| {
        s.acl = None;
        s.services = 0;
        s.drop_all = true;
    }));
    v
}

fn run(cli: &Cli) -> Result<(), String> {
    let started = Instant::now();
    let quick = cli.quick || cli.tiny;
    let mode = if cli.tiny {
        "tiny"
    } else if quick {
        "quick"
    } else {
        "full"
    };
    let m = machine::Machine::probe();
    let tsc = m.tsc_ghz;
    let settings = Settings {
        mode,
        repeats: cli
            .repeats
            .unwrap_or(if cli.tiny {
                1
            } else if quick {
                3
            } else {
                5
            })
            .max(1),
        packets_per_run: if cli.tiny {
            50_000
        } else if quick {
            1_000_000
        } else {
            4_000_000
        },
        burst: cli.burst.clamp(1, dataplane::io::MAX_BURST),
        stage_passes: if cli.tiny {
            2
        } else if quick {
            5
        } else {
            15
        },
        latency_seconds_per_point: if cli.tiny {
            0.02
        } else if quick {
            0.2
        } else {
            0.5
        },
        testpmd_seconds: if quick { 1.0 } else { 3.0 },
    };
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let out = cli
        .out
        .canonicalize()
        .map_err(|e| format!("{}: {e}", cli.out.display()))?;
    eprintln!(
        "suite: {mode} run on {} ({} cores, TSC {:.3} GHz, load {:.1}), commit {}{}, writing {}",
        m.cpu_model,
        m.cores,
        tsc,
        m.load_avg_start,
        &m.git_commit[..m.git_commit.len().min(12)],
        if m.git_dirty { " (dirty)" } else { "" },
        out.display()
    );

    let acl1k = AclSet::neurocuts("acl1_1k");
    let scenarios = matrix(quick, cli.tiny, m.cores, &acl1k);
    let latency_loads: Vec<f64> = if quick {
        vec![10.0, 50.0, 90.0]
    } else {
        (1..=9).map(|i| i as f64 * 10.0).collect()
    };
    let acl_peer_sets: Vec<(&str, &str, bool)> = if cli.no_peers || cli.tiny {
        vec![]
    } else if quick {
        vec![("acl_1k", "cutsplit", true)]
    } else {
        vec![
            ("acl_1k", "cutsplit", true),
            ("fw_1k", "cutsplit", true),
            ("ipc_1k", "cutsplit", true),
            ("acl1_10k", "neurocuts", false),
            ("fw1_10k", "neurocuts", false),
            ("ipc1_10k", "neurocuts", false),
        ]
    };
    let testpmd_modes: Vec<&str> = if cli.no_peers || cli.tiny {
        vec![]
    } else {
        vec!["io", "macswap"]
    };
    let total = scenarios.len() * settings.repeats
        + 3
        + latency_loads.len()
        + acl_peer_sets.len()
        + testpmd_modes.len();
    let progress = Progress::new(total as u64);
    let mut errors = Vec::new();

    // 1. The matrix through the engine (`dpgw replay`'s code path).
    let mut caps =
        workload::Captures::new(out.join("captures"), quick).map_err(|e| e.to_string())?;
    let cfg_dir = out.join("configs");
    let mut replay = Vec::new();
    for s in &scenarios {
        progress.step(&format!("replay {} ({})", s.label, s.group));
        let tick = || progress.tick();
        match workload::replay(
            s,
            &mut caps,
            &cfg_dir,
            // Per worker: a 2-worker run lasts as long as a 1-worker one, so
            // that its fixed start and end weigh the same in both.
            settings.packets_per_run * s.workers.max(1) as u64,
            settings.repeats,
            settings.burst,
            &tick,
        ) {
            Ok(r) => {
                if !r.conserved {
                    errors.push(format!("{}: rx != tx + drops", s.label));
                }
                progress.note(&format!(
                    "  {:<22} {} Mpps, {} cycles/pkt on CPU (CPU share {:.2}), drops {:?}",
                    s.label,
                    r.mpps.show(3),
                    r.cpu_cycles_per_packet.show(1),
                    r.cpu_share.median,
                    r.drops
                ));
                replay.push(r);
            }
            Err(e) => {
                progress.note(&format!("  {}: FAILED: {e}", s.label));
                errors.push(format!("{}: {e}", s.label));
                for _ in 0..settings.repeats {
                    progress.tick();
                }
            }
        }
    }

    // 2. Per-stage costs on the target pipeline, in process.
    progress.step("per-stage costs (flow hits)");
    let target = Scenario::target(acl1k.clone());
    let stage_frames_max = if cli.tiny { 4096 } else { 65_536 };
    let mut stages = None;
    let mut latency = None;
    match stage_measurements(
        &target,
        &mut caps,
        &cfg_dir,
        &settings,
        stage_frames_max,
        tsc,
        &replay,
        &progress,
    ) {
        Ok((st, mut bench, frames)) => {
            stages = Some(st);
            // 3. Latency under paced load.
            let max = inproc::max_rate(&mut bench, &frames, 3, tsc);
            let mut points = Vec::new();
            for load in &latency_loads {
                progress.step(&format!("latency at {load:.0}% of {:.2} Mpps", max / 1e6));
                let mut p = inproc::paced(
                    &mut bench,
                    &frames,
                    max * load / 100.0,
                    settings.latency_seconds_per_point,
                    tsc,
                );
                p.load_pct = *load;
                points.push(p);
                progress.tick();
            }
            latency = Some(Latency {
                scenario: target.label.clone(),
                max_mpps: max / 1e6,
                points,
            });
        }
        Err(e) => {
            errors.push(format!("stages: {e}"));
            for _ in 0..3 + latency_loads.len() {
                progress.tick();
            }
        }
    }

    // 4. Peers.
    let mut testpmd = Vec::new();
    for mode in &testpmd_modes {
        progress.step(&format!("dpdk-testpmd {mode} on net_null0"));
        let t = peers::testpmd(mode, settings.testpmd_seconds, tsc);
        if let Some(why) = &t.reason {
            progress.note(&format!("  testpmd {mode}: FAILED: {why}"));
            errors.push(format!("peer testpmd {mode} on net_null0 failed: {why}"));
        }
        testpmd.push(t);
        progress.tick();
    }
    let mut acl_peers = Vec::new();
    if !acl_peer_sets.is_empty() {
        match peers::acl_bench_path() {
            Some(bin) => {
                for (set, dir, has_trace) in &acl_peer_sets {
                    progress.step(&format!("acl-bench --peer {set}"));
                    let base = workload::classbench_dir().join(dir);
                    let rules = base.join(set);
                    let trace = base.join(format!("{set}_trace"));
                    let iters = if quick { 5 } else { 11 };
                    let a = peers::acl_peer(
                        &bin,
                        set,
                        &rules,
                        has_trace.then_some(trace.as_path()),
                        100_000,
                        iters,
                    );
                    if let Some(why) = &a.reason {
                        progress.note(&format!("  rte_acl on {set}: FAILED: {why}"));
                        errors.push(format!("peer rte_acl on {set} failed: {why}"));
                    }
                    acl_peers.push(a);
                    progress.tick();
                }
            }
            None => {
                errors.push("acl-bench not found next to suite (build with `cargo build --profile production -p benches --bins`); ACL peer skipped".into());
                for _ in &acl_peer_sets {
                    progress.tick();
                }
            }
        }
    }
    let io_cycles = replay
        .iter()
        .find(|r| r.scenario.group == "io_only")
        .map(|r| r.cpu_cycles_per_packet.median);
    // No ratio against a failed peer (its figures are null anyway).
    let tp_io = testpmd
        .iter()
        .find(|t| t.mode == "io" && t.status == benches::sanity::Status::Ok)
        .and_then(|t| t.cpu_cycles_per_packet);
    let calibration = tp_io.filter(|c| *c > 0.0);
    let veth = (!cli.no_peers && !cli.tiny).then(|| {
        progress.note("peer: the kernel on veth vs dpgw on AF_PACKET and AF_XDP (veth-bench)");
        let v = peers::veth_peer(quick);
        if let Some(why) = &v.reason {
            progress.note(&format!("  veth-bench: FAILED: {why}"));
            errors.push(format!("peer veth-bench failed: {why}"));
        }
        v
    });
    let peers = Peers {
        veth,
        io_ratio: match (io_cycles, tp_io) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        testpmd,
        acl: acl_peers,
        published: peers::published(),
        skipped: (cli.no_peers || cli.tiny)
            .then(|| "peers not run (--no-peers or --tiny)".to_string()),
    };
    progress.bar.finish_and_clear();

    // 5. Derived figures: target, line rate.
    let target_row = replay.iter().find(|r| r.scenario.group == "target");
    let target = match (target_row, &stages) {
        (Some(r), Some(st)) => {
            let mut costs: Vec<(String, f64)> = st
                .rows
                .iter()
                .map(|b| (b.stage.clone(), b.cycles_per_packet.median))
                .collect();
            costs.push((
                "engine loop (replay − Σ stages)".into(),
                st.engine_residual_cycles,
            ));
            costs.sort_by(|a, b| b.1.total_cmp(&a.1));
            costs.truncate(3);
            Some(Target {
                description: format!(
                    "decap + {}-rule ACL ({}) + Maglev (1 service, 10 backends, flow hit) + IPIP encap, 64 B inner frames, 1 worker",
                    acl1k.as_ref().map(|a| a.rules).unwrap_or(0),
                    acl1k.as_ref().map(|a| a.name.as_str()).unwrap_or("none")
                ),
                budget_cycles: TARGET_CYCLES,
                budget_ratio: TARGET_RATIO,
                calibration_cycles: calibration,
                ratio_to_calibration: calibration.map(|c| r.cpu_cycles_per_packet.median / c),
                cycles_per_packet: r.cpu_cycles_per_packet,
                wall_cycles_per_packet: r.cycles_per_packet,
                met: match calibration {
                    Some(c) => r.cpu_cycles_per_packet.median / c <= TARGET_RATIO,
                    None => r.cpu_cycles_per_packet.median <= TARGET_CYCLES,
                },
                top_costs: costs,
            })
        }
        _ => None,
    };
    let line_rate = line_rate(&replay, tsc);

    let mut results = Results {
        schema: 2,
        machine: m,
        settings,
        replay,
        stages,
        target,
        latency,
        line_rate,
        peers,
        plots: Vec::new(),
        errors,
        load_avg_end: machine::load_avg(),
        duration_s: 0.0,
    };
    let plot_dir = out.join("plots");
    std::fs::create_dir_all(&plot_dir).map_err(|e| format!("{}: {e}", plot_dir.display()))?;
    match plots::all(&results, &plot_dir) {
        Ok(names) => results.plots = names,
        Err(e) => results.errors.push(format!("plots: {e}")),
    }
    if !cli.keep_captures {
        let _ = std::fs::remove_dir_all(caps.dir());
    }
    results.duration_s = started.elapsed().as_secs_f64();
    write_outputs(&results, &out)?;
    eprintln!("{}", report::summary_lines(&results));
    eprintln!(
        "suite: done in {:.0} s; {} , {}, {}/",
        results.duration_s,
        out.join("report.md").display(),
        out.join("results.json").display(),
        plot_dir.display()
    );
    if !results.errors.is_empty() {
        eprintln!("suite: {} problem(s):", results.errors.len());
        for e in &results.errors {
            eprintln!("  - {e}");
        }
    }
    Ok(())
}

/// Parses and checks a results.json; returns its number of replay rows.
fn check_file(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
    report::check_json(&v)?;
    Ok(v["replay"].as_array().map_or(0, |a| a.len()))
}

/// Writes results.json (checked by reading it back) and report.md.
fn write_outputs(r: &Results, out: &Path) -> Result<(), String> {
    let json = serde_json::to_string_pretty(r).map_err(|e| format!("serialising results: {e}"))?;
    let jpath = out.join("results.json");
    dataplane::runner::write_atomic(&jpath, json.as_bytes())
        .map_err(|e| format!("{}: {e}", jpath.display()))?;
    let back = std::fs::read_to_string(&jpath).map_err(|e| format!("{}: {e}", jpath.display()))?;
    let v: serde_json::Value = serde_json::from_str(&back)
        .map_err(|e| format!("{}: not valid JSON: {e}", jpath.display()))?;
    report::check_json(&v).map_err(|e| format!("{}: {e}", jpath.display()))?;
    let md = report::markdown(r);
    let mpath = out.join("report.md");
    dataplane::runner::write_atomic(&mpath, md.as_bytes())
        .map_err(|e| format!("{}: {e}", mpath.display()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn stage_measurements(
    target: &Scenario,
    caps: &mut workload::Captures,
    cfg_dir: &Path,
    settings: &Settings,
    max_frames: usize,
    tsc: f64,
    replay: &[ReplayResult],
    progress: &Progress,
) -> Result<(Stages, inproc::Bench, Vec<Vec<u8>>), String> {
    let load_cfg = |s: &Scenario, pcap: &Path| -> Result<dataplane::config::Config, String> {
        let text = workload::config_text(s, pcap, 1, settings.burst);
        let p = cfg_dir.join(format!("{}.toml", s.label));
        std::fs::create_dir_all(cfg_dir).map_err(|e| e.to_string())?;
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        dataplane::config::Config::load(&p).map_err(|e| e.to_string())
    };
    let (pcap, _) = caps.get(target)?;
    let cfg = load_cfg(&target.clone(), &pcap)?;
    let frames = inproc::load_frames(&pcap, max_frames)?;
    let mut bench = inproc::Bench::new(&cfg, &frames, settings.burst)?;
    let hit = inproc::stage_costs(&mut bench, &frames, settings.stage_passes, tsc);
    if hit.tx_per_pass != frames.len() {
        progress.note(&format!(
            "  note: {} of {} packets dropped in the stage run",
            frames.len() - hit.tx_per_pass,
            frames.len()
        ));
    }
    progress.tick();
    progress.step("per-stage costs (LB lookup alone)");
    let mut lookup_bench = inproc::Bench::new(&cfg, &frames, settings.burst)?;
    let lookup = inproc::lb_lookup_cost(&mut lookup_bench, &frames, settings.stage_passes);
    progress.tick();

    // Flow misses: 1M uniform flows through a 4 Ki-entry flow table.
    progress.step("per-stage costs (flow misses)");
    let mut miss_s = target.clone();
    miss_s.label = "stages_lb_miss".into();
    miss_s.flows = 1_000_000;
    let (mpcap, _) = caps.get(&miss_s)?;
    let mut mcfg = load_cfg(&miss_s, &mpcap)?;
    mcfg.dataplane.flow_capacity = 4096;
    let mframes = inproc::load_frames(&mpcap, max_frames)?;
    let mut mbench = inproc::Bench::new(&mcfg, &mframes, settings.burst)?;
    let miss = inproc::stage_costs(&mut mbench, &mframes, settings.stage_passes.min(5), tsc);
    progress.tick();

    let lb_idx = inproc::STAGES
        .iter()
        .position(|s| s.starts_with("lb stage"))
        .unwrap_or(4);
    let mut rows = Vec::new();
    for (i, r) in hit.rows.iter().enumerate() {
        if i == lb_idx {
            rows.push(Breakdown {
                stage: "lb lookup (flow hit: hash + flow table)".into(),
                cycles_per_packet: lookup,
                ns_per_packet: scale(lookup, 1.0 / tsc),
            });
            let rest = (r.cycles_per_packet.median - lookup.median).max(0.0);
            rows.push(Breakdown {
                stage: "ipip encap + lb bookkeeping (lb stage − lookup)".into(),
                cycles_per_packet: Stat {
                    median: rest,
                    min: rest,
                    max: rest,
                    n: 1,
                },
                ns_per_packet: Stat {
                    median: rest / tsc,
                    min: rest / tsc,
                    max: rest / tsc,
                    n: 1,
                },
            });
        } else {
            rows.push(Breakdown {
                stage: r.stage.clone(),
                cycles_per_packet: r.cycles_per_packet,
                ns_per_packet: r.ns_per_packet,
            });
        }
    }
    let in_process: f64 = hit.total_cycles;
    let trow = replay.iter().find(|r| r.scenario.group == "target");
    let replay_cycles = trow.map(|r| r.cpu_cycles_per_packet.median).unwrap_or(0.0);
    let replay_wall_cycles = trow.map(|r| r.cycles_per_packet.median).unwrap_or(0.0);
    let st = Stages {
        scenario: target.label.clone(),
        rows,
        in_process_cycles: in_process,
        replay_cycles,
        replay_wall_cycles,
        skipped_bursts: hit.skipped_bursts,
        engine_residual_cycles: (replay_cycles - in_process).max(0.0),
        flow_hit_ratio: hit.flow_hit_ratio,
        lb_miss_cycles: miss.rows[lb_idx].cycles_per_packet,
        lb_miss_ratio: 1.0 - miss.flow_hit_ratio,
        timer_cycles_per_burst: hit.timer_cycles_per_burst,
        packets_per_pass: hit.packets_per_pass,
        passes: hit.passes,
    };
    Ok((st, bench, frames))
}

fn scale(s: Stat, k: f64) -> Stat {
    Stat {
        median: s.median * k,
        min: s.min * k,
        max: s.max * k,
        n: s.n,
    }
}

/// Frame on the wire: padded to 60 B, + 4 B FCS + 20 B preamble/SFD/gap.
pub fn wire_bytes(frame: usize) -> usize {
    frame.max(60) + 24
}

/// Line-rate shares for the full-pipeline frame-size rows, at the rate one
/// dedicated core reaches (TSC rate / on-CPU cycles per packet).
fn line_rate(replay: &[ReplayResult], tsc_ghz: f64) -> Vec<LineRate> {
    let mut v = Vec::new();
    for r in replay
        .iter()
        .filter(|r| r.scenario.group == "frame_size" && r.scenario.label.ends_with("_full"))
    {
        let wire = wire_bytes(r.scenario.frame + r.scenario.outer_overhead());
        let c = r.cpu_cycles_per_packet.median;
        let pps = if c > 0.0 { tsc_ghz * 1e9 / c } else { 0.0 };
        let links = [("10G", 10.0), ("25G", 25.0), ("40G", 40.0), ("100G", 100.0)]
            .into_iter()
            .map(|(link, g)| {
                let link_pps = g * 1e9 / (8.0 * wire as f64);
                LineRateLink {
                    link,
                    link_mpps: link_pps / 1e6,
                    pct_one_worker: if link_pps > 0.0 {
                        pps / link_pps * 100.0
                    } else {
                        0.0
                    },
                    workers_needed: if pps > 0.0 {
                        (link_pps / pps).ceil() as u64
                    } else {
                        0
                    },
                }
            })
            .collect();
        v.push(LineRate {
            inner_frame: r.scenario.frame,
            wire_bytes: wire,
            mpps_one_worker: pps / 1e6,
            links,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_wire_bytes() {
        assert_eq!(wire_bytes(114), 138);
        assert_eq!(wire_bytes(40), 84);
    }

    #[test]
    fn test_matrix_labels_unique() {
        for (q, t) in [(false, false), (true, false), (true, true)] {
            let m = matrix(q, t, 2, &None);
            let labels: std::collections::HashSet<_> = m.iter().map(|s| s.label.clone()).collect();
            assert_eq!(labels.len(), m.len());
            assert_eq!(m.iter().filter(|s| s.group == "target").count(), 1);
        }
    }
}
