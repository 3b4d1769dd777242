//! `rule-bench`: how fast a rule change is live, and what a storm of rule
//! changes costs the workers (issue 17).
//!
//! Runs `dpgw run` on a generated VXLAN capture replayed forever (one worker,
//! full rate), loads a ClassBench rule set as inline rules (`rule load`), and
//! then, through the control socket:
//!
//! * latency: `rule add` of a new rule and `rule del` of an existing one
//!   (alternately a loaded rule and one added before), paced, each timed from
//!   the request to the answer with `live: true` (every worker uses the new
//!   snapshot); prints p50/p90/p99/max and how many answered `live: false`;
//! * storm: the worker's packet rate (from `stats`) over rounds without
//!   changes and rounds with `--rate` changes per second (adds and deletes),
//!   alternated; prints the median ratio storm/quiet.
//!
//! Benchmark, not a test: numbers depend on the machine and its load (print
//! `/proc/loadavg` beside them).

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Rule add/del latency under load and the storm throughput ratio")]
struct Args {
    /// The `dpgw` binary.
    #[arg(long, default_value = "target/release/dpgw")]
    dpgw: PathBuf,
    /// ClassBench rule sets to load (one run each).
    #[arg(long, default_values = [
        "../shared/testdata/classbench/neurocuts/acl1_1k",
        "../shared/testdata/classbench/neurocuts/acl1_10k",
    ])]
    rules: Vec<PathBuf>,
    /// Timed changes per set (half adds, half deletes).
    #[arg(long, default_value_t = 400)]
    changes: usize,
    /// Pause between timed changes, ms.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// Changes per second during a storm round.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds per throughput round.
    #[arg(long, default_value_t = 3.0)]
    round_s: f64,
    /// Storm/quiet round pairs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Flows in the generated capture.
    #[arg(long, default_value_t = 20000)]
    flows: u32,
    /// `dataplane.acl_cache` (entries of the worker's ACL result cache).
    #[arg(long, default_value_t = 4096)]
    acl_cache: u32,
    /// Core to pin the worker to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Work directory (capture, config, socket, log).
    #[arg(long, default_value = "/tmp/rule-bench")]
    dir: PathBuf,
}

use benches::daemon::{thread_cpu_ns, Daemon};

/// Packets per wall second and per second the worker was on a CPU.
struct Rates {
    wall: f64,
    cpu: f64,
}

fn measure(
    c: &mut ctl::Client,
    pid: u32,
    round: Duration,
    mut during: impl FnMut(&mut ctl::Client) -> Result<(), String>,
) -> Result<Rates, String> {
    let r0 = rx(c)?;
    let c0 = thread_cpu_ns(pid, "dpgw-w0").unwrap_or(0);
    let t0 = Instant::now();
    while t0.elapsed() < round {
        during(c)?;
    }
    let n = (rx(c)? - r0) as f64;
    let cpu = thread_cpu_ns(pid, "dpgw-w0")
        .unwrap_or(0)
        .saturating_sub(c0) as f64
        / 1e9;
    Ok(Rates {
        wall: n / t0.elapsed().as_secs_f64(),
        cpu: if cpu > 0.0 { n / cpu } else { f64::NAN },
    })
}

fn client(sock: &Path) -> Result<ctl::Client, String> {
    ctl::Client::connect(sock, Duration::from_secs(10)).map_err(|e| e.to_string())
}

fn rx(c: &mut ctl::Client) -> Result<u64, String> {
    match c.data(ctl::Command::Stats).map_err(|e| e.to_string())? {
        Some(ctl::Data::Stats(s)) => Ok(s.total.rx),
        other => Err(format!("stats answered {other:?}")),
    }
}

/// A rule nobody's traffic matches much, different every time.
fn new_rule(i: u64) -> ctl::RuleSpec {
    ctl::RuleSpec {
        vni: None,
        src: format!("10.{}.{}.0/24", (i >> 8) % 256, i % 256),
        dst: "any".into(),
        proto: "tcp".into(),
        src_ports: "any".into(),
        dst_ports: format!("{}", 1000 + i % 50000),
        action: acl::Action::Deny,
        priority: i.is_multiple_of(3).then_some((i % 1000) as u32),
        id: None,
        stateful: None,
    }
}

/// State of the changes: ids that can be deleted.
struct Changer {
    loaded: Vec<u32>,
    added: Vec<u32>,
    n: u64,
    live_false: usize,
}

impl Changer {
    /// One change (an add, then a delete, alternately); its latency.
    fn step(&mut self, c: &mut ctl::Client) -> Result<Duration, String> {
        self.n += 1;
        let cmd = if self.n % 2 == 1 {
            ctl::Command::RuleAdd {
                rule: new_rule(self.n),
            }
        } else if self.n.is_multiple_of(4) && !self.loaded.is_empty() {
            let at = (self.n as usize * 7919) % self.loaded.len();
            ctl::Command::RuleDel {
                id: self.loaded.swap_remove(at),
            }
        } else {
            match self.added.pop() {
                Some(id) => ctl::Command::RuleDel { id },
                None => ctl::Command::RuleAdd {
                    rule: new_rule(self.n),
                },
            }
        };
        let t0 = Instant::now();
        let r = c.call(cmd).map_err(|e| e.to_string())?;
        let dt = t0.elapsed();
        if !r.ok {
            return Err(format!("change refused: {:?}", r.error));
        }
        if r.live != Some(true) {
            self.live_false += 1;
        }
        if let Some(ctl::Data::RuleIds { ids }) = r.data {
            self.added.extend(ids);
        }
        Ok(dt)
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_set(a: &Args, rules: &Path, pcap: &Path) -> Result<(), String> {
    let sock = a.dir.join("ctl.sock");
    let cfg = a.dir.join("dpgw.toml");
    let log = a.dir.join("dpgw.log");
    let _ = std::fs::remove_file(&sock);
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nworkers = 1\ncores = [{}]\nburst = 32\nio = \"pcap\"\nacl_cache = {}\n\n\
             [pcap]\ninput = [{:?}]\nloops = 0\n\n[control]\nsocket = {:?}\n\n\
             [gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [\"10.0.0.1\"]\nvxlan_ports = [4789]\n\
             local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\nnon_vip = \"forward\"\n\n\
             [acl]\ndefault = \"allow\"\n",
            a.core,
            a.acl_cache,
            pcap.display().to_string(),
            sock.display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Proc::new(&a.dpgw)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("{}: {e}", a.dpgw.display()))?;
    let pid = child.id();
    let _d = Daemon(Some(child));
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(mut c) = client(&sock) {
            if rx(&mut c).unwrap_or(0) > 0 {
                break c;
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("no traffic after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let content =
        std::fs::read_to_string(rules).map_err(|e| format!("{}: {e}", rules.display()))?;
    let t = Instant::now();
    let r = c
        .call(ctl::Command::RuleLoad {
            format: ctl::RuleFormat::Classbench,
            content,
            replace: true,
            action: Some(acl::Action::Allow),
            vni: None,
        })
        .map_err(|e| e.to_string())?;
    let loaded = match r.data {
        Some(ctl::Data::RuleIds { ids }) if r.ok => ids,
        _ => return Err(format!("rule load failed: {:?}", r.error)),
    };
    println!(
        "{}: {} rules loaded (full compile) in {:.1} ms",
        rules.display(),
        loaded.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut ch = Changer {
        loaded,
        added: Vec::new(),
        n: 0,
        live_false: 0,
    };
    std::thread::sleep(Duration::from_millis(500));
    // Baseline: a request that changes nothing (socket, JSON, scheduling).
    let mut ping = Vec::with_capacity(a.changes);
    for _ in 0..a.changes {
        let t0 = Instant::now();
        c.call(ctl::Command::Ping).map_err(|e| e.to_string())?;
        ping.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(a.pause_ms / 2));
    }
    ping.sort();
    println!(
        "  ping (baseline): p50 {:.3} ms  p99 {:.3} ms",
        pct(&ping, 0.5),
        pct(&ping, 0.99)
    );
    let mut lat = Vec::with_capacity(a.changes);
    let (c0, t0) = (thread_cpu_ns(pid, "dpgw-w0").unwrap_or(0), Instant::now());
    for _ in 0..a.changes {
        lat.push(ch.step(&mut c)?);
        std::thread::sleep(Duration::from_millis(a.pause_ms));
    }
    let share = thread_cpu_ns(pid, "dpgw-w0")
        .unwrap_or(0)
        .saturating_sub(c0) as f64
        / t0.elapsed().as_nanos() as f64;
    lat.sort();
    println!(
        "  worker on a CPU {:.0} % of the time (less: another process shares its core, and a change waits for the worker's next time slice)",
        share * 100.0
    );
    println!(
        "  latency to live: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} changes, {} live:false)",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        lat.len(),
        ch.live_false
    );
    // Throughput: quiet rounds, rounds with as many pings (requests that
    // change nothing: what the client and the control thread cost the
    // worker's core on this machine) and storm rounds with rule changes,
    // alternated.
    std::thread::sleep(Duration::from_millis(500));
    let period = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    let round = Duration::from_secs_f64(a.round_s);
    let mut rows: [Vec<f64>; 6] = Default::default();
    let mut storm_lat = Vec::new();
    let paced = |next: &mut Instant| {
        *next += period;
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
    };
    for _ in 0..a.rounds {
        let q = measure(&mut c, pid, round, |_| {
            std::thread::sleep(Duration::from_millis(10));
            Ok(())
        })?;
        let mut next = Instant::now();
        let p = measure(&mut c, pid, round, |c| {
            c.call(ctl::Command::Ping).map_err(|e| e.to_string())?;
            paced(&mut next);
            Ok(())
        })?;
        let mut next = Instant::now();
        let s = measure(&mut c, pid, round, |c| {
            storm_lat.push(ch.step(c)?);
            paced(&mut next);
            Ok(())
        })?;
        println!(
            "  round: quiet {:.3} Mpps ({:.3} per worker CPU s), pings {:.3} ({:.3}), storm {:.3} ({:.3})",
            q.wall / 1e6,
            q.cpu / 1e6,
            p.wall / 1e6,
            p.cpu / 1e6,
            s.wall / 1e6,
            s.cpu / 1e6
        );
        for (i, v) in [q.wall, p.wall, s.wall, q.cpu, p.cpu, s.cpu]
            .into_iter()
            .enumerate()
        {
            rows[i].push(v);
        }
    }
    let ratio = |a: &[f64], b: &[f64]| -> f64 {
        let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        median(&mut r)
    };
    storm_lat.sort();
    println!(
        "  storm ({} changes/s): median ratio storm/quiet {:.3} (per worker CPU second {:.3}); pings/quiet {:.3} ({:.3}); storm/pings {:.3}",
        a.rate,
        ratio(&rows[2], &rows[0]),
        ratio(&rows[5], &rows[3]),
        ratio(&rows[1], &rows[0]),
        ratio(&rows[4], &rows[3]),
        ratio(&rows[2], &rows[1]),
    );
    println!(
        "  latency during storm p50 {:.3} ms p99 {:.3} ms ({} live:false in all)",
        pct(&storm_lat, 0.5),
        pct(&storm_lat, 0.99),
        ch.live_false
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let recompiles = text.matches("acl_recompiled").count();
    println!("  background recompiles published: {recompiles}");
    Ok(())
}

fn main() {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir).expect("work dir");
    let pcap = a.dir.join("traffic.pcap");
    let o = Proc::new(&a.dpgw)
        .args(["gen", "--out"])
        .arg(&pcap)
        .args([
            "--packets",
            "200000",
            "--flows",
            &a.flows.to_string(),
            "--vnis",
            "4",
        ])
        .args(["--seed", "17"])
        .output()
        .unwrap_or_else(|e| {
            eprintln!(
                "rule-bench: cannot run {} ({e}); build it first or point --dpgw at it",
                a.dpgw.display()
            );
            std::process::exit(2)
        });
    assert!(
        o.status.success(),
        "dpgw gen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!(
        "{} flows, acl_cache = {}; loadavg before: {}",
        a.flows,
        a.acl_cache,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for r in &a.rules {
        if let Err(e) = run_set(&a, r, &pcap) {
            eprintln!("rule-bench: {}: {e}", r.display());
            std::process::exit(1);
        }
        println!(
            "loadavg: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    }
}
