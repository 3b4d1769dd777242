//! `dpdk-bench`: dpgw on DPDK, doing the whole job, next to `dpdk-testpmd`
//! moving packets without touching them — same virtual device, same machine,
//! same run.
//!
//! ```text
//! cargo build --profile production -p dataplane --features dpdk --bin dpgw
//! cargo build --profile production -p benches --bin dpdk-bench
//! target/production/dpdk-bench [--seconds S] [--runs N] [--quick] [--out DIR] [--no-huge]
//! ```
//!
//! `scripts/bench-dpdk.sh` does all three. For each device —
//!
//! * `net_pcap`: a generated 64-byte VXLAN capture held in memory and replayed
//!   forever (`infinite_rx=1`), transmitted to `/dev/null`;
//! * `net_null`: a device that costs nothing (the I/O ceiling). Its frames are
//!   not VXLAN, so dpgw drops every one at the first check: this row measures
//!   the engine's bare receive-and-drop loop, not the pipeline —
//!
//! it runs `dpdk-testpmd --forward-mode=io`, `--forward-mode=macswap` and
//! `dpgw run` (one worker: decap + 1k-rule ClassBench ACL + Maglev with flow
//! table + IPIP encap to the backend), each for `--seconds` after a warm-up,
//! `--runs` times interleaved, and prints the median Mpps, wall-clock
//! ns/packet and cycles/packet of the forwarding core, on-CPU cycles/packet
//! (the forwarding threads' scheduler time), and the ratio dpgw / testpmd io.
//! Both forward on core 1 (testpmd `-l 0-1`; dpgw `cores = [1]`). Beside
//! them, in the same rounds:
//!
//! * `net_null 2q`: two queues of `net_null`, testpmd io on two forwarding
//!   cores and dpgw with two workers (cores 1 and 0): the scaling of each
//!   (2 queues / 1 queue, Mpps);
//! * `in process`: `dpgw replay` of the `net_pcap` capture under the same
//!   config with the pcap backend (no device), which gives the pipeline's own
//!   cost; `(dpgw − testpmd io) on net_pcap / in process` (on-CPU cycles per
//!   packet) is what dpgw pays on the device beyond what testpmd pays, per
//!   cycle of the pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::sanity::{check_timed, testpmd_floor_mpps, Status};
use clap::Parser;
use serde::Serialize;

#[allow(dead_code)]
#[path = "../suite/machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../suite/peers.rs"]
mod peers;
#[path = "../suite/stat.rs"]
mod stat;

use stat::Stat;

#[derive(Parser, Debug)]
#[command(
    name = "dpdk-bench",
    about = "dpgw (full pipeline, DPDK) next to dpdk-testpmd io/macswap on the same vdev"
)]
struct Cli {
    /// The `dpgw` binary, built with `--features dpdk` (default: next to this one).
    #[arg(long)]
    dpgw: Option<PathBuf>,
    /// Measuring interval of each run, seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs of each (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One run of one second each (CI smoke test).
    #[arg(long)]
    quick: bool,
    /// Output directory (capture, configs, results.json).
    #[arg(long, default_value = "bench-out/dpdk")]
    out: PathBuf,
    /// Do not set up hugepages; run every process with `--no-huge`.
    #[arg(long)]
    no_huge: bool,
    /// Packets in the generated capture (1000 flows; each replayed many times).
    #[arg(long, default_value_t = 16_384)]
    packets: usize,
    /// ClassBench rule file of the ACL (default: NeuroCuts acl1_1k from ../shared/testdata).
    #[arg(long)]
    rules: Option<PathBuf>,
}

/// What one run of one forwarder measured.
#[derive(Clone, Debug, Default, Serialize)]
struct Sample {
    mpps: f64,
    /// Wall-clock cycles per packet of the forwarding core (TSC / rate).
    cycles_per_packet: f64,
    ns_per_packet: f64,
    /// Forwarding thread's CPU time × TSC rate / packets.
    cpu_cycles_per_packet: Option<f64>,
    /// CPU time / wall time of the forwarding thread (1.0 = it had its core).
    cpu_share: Option<f64>,
    /// dpgw only: drops by reason over the interval, and the port's `imissed`.
    drops: BTreeMap<String, u64>,
    tx_mpps: f64,
    imissed: u64,
}

/// One forwarder on one device: its measured runs and the runs that failed.
#[derive(Clone, Debug, Serialize)]
struct Row {
    device: String,
    forwarder: String,
    command: String,
    /// `failed` when no run was a measurement (`benches::sanity`): then the
    /// figures are null and `reason` says why. Runs that failed next to
    /// measured ones are left out of the figures and listed in `errors`.
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    runs: Vec<Sample>,
    errors: Vec<String>,
    mpps: Option<Stat>,
    ns_per_packet: Option<Stat>,
    cycles_per_packet: Option<Stat>,
    cpu_cycles_per_packet: Option<Stat>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: machine::Machine,
    hugepages: String,
    capture: String,
    frame_bytes: usize,
    rules: String,
    rows: Vec<Row>,
    /// Per device: median dpgw Mpps / median testpmd io Mpps (absent when
    /// either row failed).
    ratios: BTreeMap<String, f64>,
    load_avg_end: f64,
}

/// VIP the capture is sent to and the service listens on.
const VIP: &str = "192.168.0.1";

fn gen_capture(dpgw: &Path, out: &Path, packets: usize) -> Result<(), String> {
    let o = Proc::new(dpgw)
        .args(["gen", "--out"])
        .arg(out)
        .args(["--packets", &packets.to_string()])
        .args(["--flows", "1000", "--frame-size", "64", "--tcp-pct", "100"])
        .args(["--dst", VIP, "--dport", "80", "--seed", "1"])
        .output()
        .map_err(|e| format!("{}: {e}", dpgw.display()))?;
    if !o.status.success() {
        return Err(format!(
            "dpgw gen failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

fn config(eal: &[String], mbufs: u32, rules: &Path, sock: &Path, workers: usize) -> String {
    let eal: Vec<String> = eal.iter().map(|a| format!("{a:?}")).collect();
    // One worker forwards on core 1, as testpmd does; two on cores 1 and 0.
    let cores = if workers == 1 { "1" } else { "1, 0" };
    let mut t = format!(
        "# dpdk-bench: the whole pipeline on {workers} worker(s) (cores {cores})\n\
         [dataplane]\nworkers = {workers}\ncores = [{cores}]\nburst = 32\nio = \"dpdk\"\nflow_capacity = 65536\n\n\
         [dpdk]\neal_args = [{}]\nmbufs = {mbufs}\nmbuf_cache = 256\n\n\
         [control]\nsocket = {:?}\n\n\
         [gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [\"10.0.0.1\"]\nvxlan_ports = [4789]\n\
         local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\nnon_vip = \"forward\"\n\
         mtu = 9000\n\n\
         [acl]\ndefault = \"allow\"\n[[acl.file]]\npath = {:?}\nformat = \"classbench\"\naction = \"allow\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"ipip\"\n",
        eal.join(", "),
        sock.display().to_string(),
        rules.display().to_string(),
    );
    for b in 1..=10 {
        t.push_str(&format!("[[service.backend]]\nip = \"10.128.0.{b}\"\n"));
    }
    t
}

/// CPU time of the threads of process `pid` whose names start with
/// `prefix` (the workers: `dpgw-w0`, `dpgw-w1`, ...), ns (`schedstat`);
/// `None` if there is none.
fn threads_cpu_ns(pid: u32, prefix: &str) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(prefix) {
            let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
            total = Some(total.unwrap_or(0) + ns);
        }
    }
    total
}

struct Daemon(Option<Child>);

impl Daemon {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.0.take()?;
        let _ = Proc::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stats(sock: &Path) -> Result<ctl::StatsReport, String> {
    let mut c = ctl::Client::connect(sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    match c.data(ctl::Command::Stats).map_err(|e| e.to_string())? {
        Some(ctl::Data::Stats(s)) => Ok(*s),
        other => Err(format!("stats answered {other:?}")),
    }
}

/// Runs `dpgw run` on `cfg` and measures `seconds` after a warm-up.
fn run_dpgw(
    dpgw: &Path,
    cfg: &Path,
    sock: &Path,
    log: &Path,
    seconds: f64,
    tsc_ghz: f64,
) -> Result<Sample, String> {
    let _ = std::fs::remove_file(sock);
    let child = Proc::new(dpgw)
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?)
        .spawn()
        .map_err(|e| format!("{}: {e}", dpgw.display()))?;
    let pid = child.id();
    let mut d = Daemon(Some(child));
    let log_tail = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let t0 = Instant::now();
    loop {
        if let Ok(s) = stats(sock) {
            if s.total.rx > 0 {
                break;
            }
        }
        if let Some(Ok(Some(st))) = d.0.as_mut().map(|c| c.try_wait()) {
            return Err(format!("dpgw exited early ({st}): {}", log_tail()));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("no traffic after 60 s: {}", log_tail()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (a, ca, ta) = (stats(sock)?, threads_cpu_ns(pid, "dpgw-w"), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (b, cb, tb) = (stats(sock)?, threads_cpu_ns(pid, "dpgw-w"), Instant::now());
    let st = d.stop();
    if !st.is_some_and(|s| s.success()) {
        return Err(format!("dpgw exited with {st:?}: {}", log_tail()));
    }
    let secs = (tb - ta).as_secs_f64();
    let rx = b.total.rx.saturating_sub(a.total.rx) as f64;
    let tx = b.total.tx.saturating_sub(a.total.tx) as f64;
    // Packets counted and the interval as asked; the pipeline has no floor.
    check_timed(rx, seconds, secs, 0.0)?;
    let mut drops = BTreeMap::new();
    for (k, v) in &b.total.drops {
        let d = v.saturating_sub(a.total.drops.get(k).copied().unwrap_or(0));
        if d > 0 {
            drops.insert(k.clone(), d);
        }
    }
    let missed = |r: &ctl::StatsReport| r.ports.iter().map(|p| p.imissed).sum::<u64>();
    let cpu = match (ca, cb) {
        (Some(x), Some(y)) if y > x => Some((y - x) as f64),
        _ => None,
    };
    Ok(Sample {
        mpps: rx / secs / 1e6,
        cycles_per_packet: secs * tsc_ghz * 1e9 / rx,
        ns_per_packet: secs * 1e9 / rx,
        cpu_cycles_per_packet: cpu.map(|c| c * tsc_ghz / rx),
        cpu_share: cpu.map(|c| c / (secs * 1e9)),
        drops,
        tx_mpps: tx / secs / 1e6,
        imissed: missed(&b).saturating_sub(missed(&a)),
    })
}

/// Medians over the measured runs; a row without one failed.
fn summarize(mut r: Row) -> Row {
    if r.runs.is_empty() {
        r.status = Status::Failed;
        r.reason = Some(if r.errors.is_empty() {
            "not run".into()
        } else {
            r.errors.join("; ")
        });
        return r;
    }
    let pick = |f: &dyn Fn(&Sample) -> Option<f64>| {
        let v: Vec<f64> = r.runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| Stat::of(&v))
    };
    r.mpps = pick(&|s| Some(s.mpps));
    r.ns_per_packet = pick(&|s| Some(s.ns_per_packet));
    r.cycles_per_packet = pick(&|s| Some(s.cycles_per_packet));
    r.cpu_cycles_per_packet = pick(&|s| s.cpu_cycles_per_packet);
    r
}

/// The row of the in-process replay (no device).
const IN_PROCESS: &str = "in process";
const REPLAY: &str = "dpgw replay";
/// The 2-queue `net_null` setup.
const NULL_2Q: &str = "net_null 2q";
/// Keys of `Results::ratios` beside the per-device ones.
const PCAP_OVERHEAD: &str = "net_pcap_overhead_vs_in_process";
const DPGW_SCALING: &str = "net_null_dpgw_2q_vs_1q";
const TESTPMD_SCALING: &str = "net_null_testpmd_2q_vs_1q";

/// One device setup and the forwarders run on it.
struct Setup {
    /// Row label (the device, and how many queues when more than one).
    label: &'static str,
    device: &'static str,
    vdev: String,
    /// Queues = forwarding cores = dpgw workers.
    queues: usize,
    forwarders: &'static [&'static str],
}

/// `dpgw replay` of `cap` under `cfg` (its I/O replaced by the pcap backend,
/// one worker on core 1), looped to last about `seconds`; the command line
/// and what it measured (from its `--json`).
fn run_replay(
    dpgw: &Path,
    cfg: &Path,
    cap: &Path,
    packets: usize,
    seconds: f64,
) -> (String, Result<Sample, String>) {
    // At most ~10 Mpps here: enough loops for the interval, at least one.
    let loops = ((seconds * 10e6) / packets.max(1) as f64).ceil().max(1.0) as u64;
    let args = [
        "replay".to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--pcap".into(),
        cap.display().to_string(),
        "--loops".into(),
        loops.to_string(),
        "--json".into(),
    ];
    let command = format!("{} {}", dpgw.display(), args.join(" "));
    let r = (|| {
        let o = Proc::new(dpgw)
            .args(&args)
            .output()
            .map_err(|e| format!("{}: {e}", dpgw.display()))?;
        if !o.status.success() {
            return Err(format!(
                "dpgw replay exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| format!("dpgw replay --json: {e}"))?;
        let f = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("dpgw replay --json has no number {k:?}"))
        };
        let rx = f("rx")?;
        if rx != (packets as u64 * loops) as f64 {
            return Err(format!(
                "dpgw replay received {rx} packets, not {packets} × {loops}"
            ));
        }
        let tx = f("tx")?;
        let mpps = f("mpps")?;
        Ok(Sample {
            mpps,
            cycles_per_packet: f("cycles_per_packet")?,
            ns_per_packet: f("ns_per_packet")?,
            cpu_cycles_per_packet: Some(f("cpu_cycles_per_packet")?),
            cpu_share: Some(f("cpu_ns_per_packet")? / f("ns_per_packet")?.max(1e-9)),
            tx_mpps: mpps * tx / rx.max(1.0),
            ..Sample::default()
        })
    })();
    (command, r)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dpdk-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<bool, String> {
    let (seconds, runs) = if cli.quick {
        (1.0, 1)
    } else {
        (cli.seconds, cli.runs.max(1))
    };
    let dpgw = match &cli.dpgw {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("dpgw"),
    };
    if !dpgw.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --profile production -p dataplane --features dpdk --bin dpgw`",
            dpgw.display()
        ));
    }
    let rules = match &cli.rules {
        Some(r) => r.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/classbench/neurocuts/acl1_1k"),
    };
    if !rules.is_file() {
        return Err(format!("rule file {} not found", rules.display()));
    }
    let rules = rules.canonicalize().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let out = cli.out.canonicalize().map_err(|e| e.to_string())?;
    let m = machine::Machine::probe();
    let tsc = m.tsc_ghz;

    let huge = if cli.no_huge {
        Err("--no-huge".to_string())
    } else {
        peers::hugepages()
    };
    let (mem_args, huge_note): (Vec<String>, String) = match &huge {
        Ok(n) => (vec![], format!("hugepages ({n})")),
        Err(e) => (
            vec!["--no-huge".into(), "-m".into(), "1024".into()],
            format!("no hugepages: {e}"),
        ),
    };
    eprintln!("dpdk-bench: {huge_note}");

    let cap = out.join("vxlan64.pcap");
    gen_capture(&dpgw, &cap, cli.packets)?;
    // net_pcap's infinite_rx holds the whole capture in mbufs of the port's pool.
    let mbufs = ((cli.packets as u32 + 8192).next_power_of_two() * 2 - 1).max(16_383);
    let setups = [
        Setup {
            label: "net_pcap",
            device: "net_pcap",
            vdev: format!(
                "--vdev=net_pcap0,rx_pcap={},infinite_rx=1,tx_pcap=/dev/null",
                cap.display()
            ),
            queues: 1,
            forwarders: &["testpmd io", "testpmd macswap", "dpgw"],
        },
        Setup {
            label: "net_null",
            device: "net_null",
            vdev: "--vdev=net_null0".into(),
            queues: 1,
            forwarders: &["testpmd io", "testpmd macswap", "dpgw"],
        },
        Setup {
            label: NULL_2Q,
            device: "net_null",
            vdev: "--vdev=net_null0".into(),
            queues: 2,
            forwarders: &["testpmd io", "dpgw"],
        },
    ];
    let sock = out.join("dpgw.sock");
    let mut rows: Vec<Row> = Vec::new();
    let new_row = |device: &str, forwarder: &str| Row {
        device: device.to_string(),
        forwarder: forwarder.to_string(),
        command: String::new(),
        status: Status::Ok,
        reason: None,
        runs: Vec::new(),
        errors: Vec::new(),
        mpps: None,
        ns_per_packet: None,
        cycles_per_packet: None,
        cpu_cycles_per_packet: None,
    };
    rows.push(new_row(IN_PROCESS, REPLAY));
    for su in &setups {
        for fwd in su.forwarders {
            rows.push(new_row(su.label, fwd));
        }
    }
    let idx = |rows: &[Row], dev: &str, fwd: &str| {
        rows.iter()
            .position(|r| r.device == dev && r.forwarder == fwd)
            .expect("every row was created above")
    };
    for run in 0..runs {
        for su in &setups {
            let mut eal: Vec<String> = vec!["--no-pci".into(), "--no-telemetry".into()];
            eal.extend(mem_args.iter().cloned());
            eal.push(su.vdev.clone());
            for fwd in su.forwarders.iter().filter(|f| f.starts_with("testpmd")) {
                let mode = fwd.trim_start_matches("testpmd ");
                eprintln!(
                    "dpdk-bench: run {}/{runs}: testpmd {mode} on {}",
                    run + 1,
                    su.label
                );
                let mut targs = eal.clone();
                let mut app = vec![format!("--total-num-mbufs={}", mbufs + 1)];
                if su.queues == 1 {
                    // Main lcore 0 (it sleeps on the interactive prompt),
                    // forwarding on lcore 1 = CPU 1.
                    targs.extend(["-l".into(), "0-1".into()]);
                } else {
                    // Forwarding lcores 1 and 2 on CPUs 1 and 0; the main
                    // lcore shares CPU 0 and sleeps.
                    targs.push("--lcores=0@0,1@1,2@0".into());
                    app.extend([
                        format!("--rxq={}", su.queues),
                        format!("--txq={}", su.queues),
                        format!("--nb-cores={}", su.queues),
                    ]);
                }
                let r = peers::testpmd_on(
                    mode,
                    &targs,
                    &app,
                    seconds,
                    tsc,
                    testpmd_floor_mpps(su.device),
                );
                let k = idx(&rows, su.label, fwd);
                let row = &mut rows[k];
                row.command = r.command.clone();
                if let Some(why) = &r.reason {
                    eprintln!("dpdk-bench: testpmd {mode} on {} FAILED: {why}", su.label);
                }
                match (r.mpps, r.cycles_per_packet) {
                    (Some(mpps), Some(cyc)) => row.runs.push(Sample {
                        mpps,
                        cycles_per_packet: cyc,
                        ns_per_packet: 1e3 / mpps,
                        cpu_cycles_per_packet: r.cpu_cycles_per_packet,
                        cpu_share: r.cpu_share,
                        tx_mpps: mpps,
                        ..Sample::default()
                    }),
                    _ => row
                        .errors
                        .push(r.reason.unwrap_or_else(|| "no figures".into())),
                }
            }
            eprintln!("dpdk-bench: run {}/{runs}: dpgw on {}", run + 1, su.label);
            let prefix = format!("dpgw-bench-{}-dpgw", std::process::id());
            let mut deal = eal.clone();
            deal.extend(["-l".into(), "0".into(), format!("--file-prefix={prefix}")]);
            let file = su.label.replace(' ', "-");
            let cfg = out.join(format!("dpgw-{file}.toml"));
            std::fs::write(&cfg, config(&deal, mbufs, &rules, &sock, su.queues))
                .map_err(|e| format!("{}: {e}", cfg.display()))?;
            let log = out.join(format!("dpgw-{file}.log"));
            let r = run_dpgw(&dpgw, &cfg, &sock, &log, seconds, tsc);
            let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&prefix));
            let k = idx(&rows, su.label, "dpgw");
            let row = &mut rows[k];
            row.command = format!("{} run --config {}", dpgw.display(), cfg.display());
            match r {
                Ok(s) => row.runs.push(s),
                Err(e) => {
                    eprintln!("dpdk-bench: dpgw on {} FAILED: {e}", su.label);
                    row.errors.push(e)
                }
            }
            if su.label == "net_pcap" {
                // The same pipeline on the same capture, in process (the
                // pcap backend, no device): what the DPDK run should cost
                // beyond what testpmd pays for the device.
                eprintln!("dpdk-bench: run {}/{runs}: dpgw replay in process", run + 1);
                let k = idx(&rows, IN_PROCESS, REPLAY);
                let (cmd, r) = run_replay(&dpgw, &cfg, &cap, cli.packets, seconds);
                let row = &mut rows[k];
                row.command = cmd;
                match r {
                    Ok(s) => row.runs.push(s),
                    Err(e) => {
                        eprintln!("dpdk-bench: dpgw replay FAILED: {e}");
                        row.errors.push(e)
                    }
                }
            }
        }
    }
    let rows: Vec<Row> = rows.into_iter().map(summarize).collect();
    // Never a ratio against a failed row.
    let median = |dev: &str, fwd: &str, f: &dyn Fn(&Row) -> Option<Stat>| {
        rows.iter()
            .find(|r| r.device == dev && r.forwarder == fwd && r.status == Status::Ok)
            .and_then(f)
            .map(|m| m.median)
    };
    let mpps = |dev: &str, fwd: &str| median(dev, fwd, &|r| r.mpps);
    let cpu = |dev: &str, fwd: &str| median(dev, fwd, &|r| r.cpu_cycles_per_packet);
    let mut ratios = BTreeMap::new();
    for dev in ["net_pcap", "net_null"] {
        if let (Some(a), Some(b)) = (mpps(dev, "dpgw"), mpps(dev, "testpmd io")) {
            ratios.insert(dev.to_string(), a / b);
        }
    }
    if let (Some(d), Some(t), Some(i)) = (
        cpu("net_pcap", "dpgw"),
        cpu("net_pcap", "testpmd io"),
        cpu(IN_PROCESS, REPLAY),
    ) {
        ratios.insert(PCAP_OVERHEAD.into(), (d - t) / i);
    }
    for (key, fwd) in [(DPGW_SCALING, "dpgw"), (TESTPMD_SCALING, "testpmd io")] {
        if let (Some(two), Some(one)) = (mpps(NULL_2Q, fwd), mpps("net_null", fwd)) {
            ratios.insert(key.into(), two / one);
        }
    }

    // Report.
    println!(
        "dpdk-bench: {} runs of {seconds} s each, medians (min–max); TSC {tsc:.2} GHz; {huge_note}; load {:.1} → {:.1}",
        runs,
        m.load_avg_start,
        machine::load_avg()
    );
    println!(
        "dpgw: 1 worker on core 1 (2 on cores 1 and 0 for 2q), decap + ACL ({} ClassBench rules, {}) + Maglev (10 backends, flow table) + IPIP encap",
        std::fs::read_to_string(&rules)
            .map(|t| t.lines().filter(|l| l.starts_with('@')).count())
            .unwrap_or(0),
        rules.file_name().unwrap_or_default().to_string_lossy()
    );
    println!(
        "capture: {} packets, 1000 TCP flows to the VIP, 64 B inner frames (114 B on the wire)\n",
        cli.packets
    );
    println!(
        "{:<9} {:<16} {:>22} {:>20} {:>24} {:>16}",
        "device", "forwarder", "Mpps", "ns/packet", "cycles/packet (wall)", "on-CPU cycles"
    );
    let mut ok = true;
    for r in &rows {
        let (Some(mpps), Some(ns), Some(cyc)) = (r.mpps, r.ns_per_packet, r.cycles_per_packet)
        else {
            ok = false;
            println!(
                "{:<9} {:<16} FAILED: {}",
                r.device,
                r.forwarder,
                r.reason.as_deref().unwrap_or("no figures")
            );
            continue;
        };
        println!(
            "{:<9} {:<16} {:>22} {:>20} {:>24} {:>16}",
            r.device,
            r.forwarder,
            mpps.show(2),
            ns.show(1),
            cyc.show(0),
            r.cpu_cycles_per_packet
                .map(|c| format!("{:.0}", c.median))
                .unwrap_or_else(|| "-".into())
        );
        if !r.errors.is_empty() {
            println!(
                "{:<9} {:<16} {} of {} runs failed, left out: {}",
                "",
                "",
                r.errors.len(),
                r.errors.len() + r.runs.len(),
                r.errors.join("; ")
            );
        }
        if r.forwarder.starts_with("dpgw") {
            if let Some(s) = r.runs.last() {
                let drops: Vec<String> = s.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!(
                    "{:<9} {:<16} tx {:.2} Mpps, port imissed {}, drops: {}",
                    "",
                    "",
                    s.tx_mpps,
                    s.imissed,
                    if drops.is_empty() {
                        "none".into()
                    } else {
                        drops.join(", ")
                    }
                );
            }
        }
    }
    println!();
    let failed = |dev: &str, f: &str| {
        rows.iter()
            .find(|r| r.device == dev && r.forwarder == f)
            .and_then(|r| r.reason.clone())
    };
    let show = |key: &str, what: &str, parts: &[(&str, &str)]| match ratios.get(key) {
        Some(q) => println!("{what}: {q:.2}"),
        None => {
            let why: Vec<String> = parts
                .iter()
                .filter_map(|(d, f)| failed(d, f).map(|w| format!("{f} on {d} failed: {w}")))
                .collect();
            println!("{what}: n/a ({})", why.join("; "))
        }
    };
    show(
        "net_null",
        "net_null, dpgw / testpmd io, Mpps (dpgw drops every frame, which is not VXLAN: the bare receive-and-drop loop; target ≥ 0.9)",
        &[("net_null", "dpgw"), ("net_null", "testpmd io")],
    );
    show(
        PCAP_OVERHEAD,
        "net_pcap, (dpgw − testpmd io) / dpgw replay in process, on-CPU cycles/packet (what dpgw pays on the device beyond testpmd, per cycle of the pipeline itself; target ≤ 1.1)",
        &[("net_pcap", "dpgw"), ("net_pcap", "testpmd io"), (IN_PROCESS, REPLAY)],
    );
    show(
        DPGW_SCALING,
        "net_null, dpgw 2 workers on 2 queues / 1 worker, Mpps (target ≥ 1.8)",
        &[(NULL_2Q, "dpgw"), ("net_null", "dpgw")],
    );
    show(
        TESTPMD_SCALING,
        "net_null, testpmd io 2 cores on 2 queues / 1 core, Mpps (the peer's scaling)",
        &[(NULL_2Q, "testpmd io"), ("net_null", "testpmd io")],
    );
    show(
        "net_pcap",
        "net_pcap, dpgw / testpmd io, Mpps (the whole pipeline vs a forwarder that touches nothing)",
        &[("net_pcap", "dpgw"), ("net_pcap", "testpmd io")],
    );
    let results = Results {
        machine: m,
        hugepages: huge_note,
        capture: cap.display().to_string(),
        frame_bytes: 114,
        rules: rules.display().to_string(),
        rows,
        ratios,
        load_avg_end: machine::load_avg(),
    };
    let json = out.join("results.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", json.display()))?;
    println!("results: {}", json.display());
    Ok(ok)
}
