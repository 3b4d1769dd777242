//! `ctl-bench`: what a storm of control-socket mutations costs a worker
//! that runs at full rate (issue 19, "control under load").
//!
//! Runs `dpgw run` on a generated capture of TCP flows to a service VIP,
//! replayed forever (one worker pinned to `--core`; with `--control-core`,
//! every other thread of dpgw, and this client, on that CPU: dpgw's
//! `dataplane.control_cores`). Then, alternately:
//!
//! * a storm round: `--mutations` changes through the control socket, one
//!   after the other, each answered once every worker uses the new snapshot
//!   (`live: true`): services added and deleted, backends added, deleted,
//!   re-weighted and drained, ACL rules added and deleted (the mix of the
//!   `control` test's thousand mutations);
//! * a quiet round of the same length, no requests.
//!
//! The worker's packet rate over each round (from `stats`, per wall second
//! and per second the worker was on a CPU) and the ratio storm/quiet of each
//! pair; prints the median ratio. Benchmark, not a test: the figures depend
//! on the machine and its load (`/proc/loadavg` is printed beside them).
//!
//! ```text
//! cargo build --profile production -p dataplane --bin dpgw
//! cargo build --profile production -p benches --bin ctl-bench
//! target/production/ctl-bench --dpgw target/production/dpgw [--rounds 3] [--mutations 1000] [--mix all|lb|acl] [--rules elsewhere|traffic]
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use ctl::{BackendSpec, BackendState, Command, Proto, RuleSpec, ServiceSpec};

#[derive(Parser)]
#[command(about = "Throughput of a worker during a storm of control mutations vs quiet")]
struct Args {
    /// The `dpgw` binary.
    #[arg(long, default_value = "target/production/dpgw")]
    dpgw: PathBuf,
    /// Mutations per storm round.
    #[arg(long, default_value_t = 1000)]
    mutations: u32,
    /// Storm/quiet round pairs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU of the worker.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// CPU of every other dpgw thread and of this client (`control_cores`);
    /// negative = unpinned (the scheduler may put them on the worker's CPU).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    control_core: i64,
    /// Which mutations a storm sends: `all` (the `control` test's mix), `lb`
    /// (services and backends only) or `acl` (rule adds and deletes only):
    /// says which kind the worker pays for.
    #[arg(long, default_value = "all", value_parser = ["all", "lb", "acl"])]
    mix: String,
    /// Where the storm's ACL rules point: `elsewhere` (deny rules on /24s
    /// of 10.200.0.0/16, a subnet the traffic never goes to: the delta's
    /// prefilter rules every flow out) or `traffic` (allow rules on /24s of
    /// the VIP's own /16, one of them covering the VIP: every cached answer
    /// is checked against the rules added since, the worst case; verdicts
    /// do not change).
    #[arg(long, default_value = "elsewhere", value_parser = ["elsewhere", "traffic"])]
    rules: String,
    /// Work directory (capture, config, socket, log).
    #[arg(long, default_value = "/tmp/ctl-bench")]
    dir: PathBuf,
}

const VIP: &str = "10.99.0.1";

use benches::daemon::{thread_cpu_ns, Daemon};

fn rx(c: &mut ctl::Client) -> Result<u64, String> {
    match c.data(Command::Stats).map_err(|e| e.to_string())? {
        Some(ctl::Data::Stats(s)) => Ok(s.total.rx),
        other => Err(format!("stats answered {other:?}")),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// The mutations, from a seeded generator; tracks the rules it added so
/// that deletes mostly name real ones.
struct Storm {
    rng: u64,
    /// Mutation kinds drawn from: `r % kinds + first` (see `command`).
    first: u64,
    kinds: u64,
    rules: Vec<u32>,
    /// Rules on the traffic's /16 (allow), not on 10.200.0.0/16 (deny).
    near: bool,
    ok: u64,
    refused: u64,
    live_false: u64,
}

impl Storm {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn command(&mut self, i: u32) -> Command {
        let r = self.next();
        let svc = format!("s{}", r % 8);
        let backend = ip(&format!("10.1.{}.{}", (r >> 8) % 4, 1 + (r >> 16) % 6));
        match self.first + r % self.kinds {
            0 => Command::ServiceAdd {
                service: ServiceSpec {
                    table_size: 251,
                    ..ServiceSpec::new(svc, ip(&format!("10.98.0.{}", r % 8 + 1)), 80, Proto::Tcp)
                },
            },
            1 => Command::ServiceDel { name: svc },
            2 | 3 => Command::BackendAdd {
                service: svc,
                backend: BackendSpec::new(backend),
            },
            4 => Command::BackendDel {
                service: svc,
                ip: backend,
            },
            5 => Command::BackendWeight {
                service: svc,
                ip: backend,
                weight: (r >> 24) as u32 % 5,
            },
            6 => Command::BackendState {
                service: svc,
                ip: backend,
                state: BackendState::Draining,
            },
            7 => Command::RuleAdd {
                rule: RuleSpec {
                    vni: None,
                    src: "any".into(),
                    dst: if self.near {
                        format!("10.99.{}.0/24", r % 200)
                    } else {
                        format!("10.200.{}.0/24", r % 200)
                    },
                    proto: "tcp".into(),
                    src_ports: "any".into(),
                    dst_ports: "80".into(),
                    action: if self.near {
                        acl::Action::Allow
                    } else {
                        acl::Action::Deny
                    },
                    priority: None,
                    id: None,
                    stateful: None,
                },
            },
            _ => match self.rules.len() {
                0 => Command::RuleDel { id: 1_000_000 + i },
                n => Command::RuleDel {
                    id: self.rules.swap_remove((r >> 8) as usize % n),
                },
            },
        }
    }

    /// One mutation, answered.
    fn step(&mut self, c: &mut ctl::Client, i: u32) -> Result<(), String> {
        let cmd = self.command(i);
        let r = c.call(cmd).map_err(|e| e.to_string())?;
        if !r.ok {
            // A delete of what a earlier delete removed, an add of what
            // exists: refused with a reason, nothing changed.
            if r.error.as_deref().unwrap_or("").is_empty() {
                return Err("a refused mutation without a reason".into());
            }
            self.refused += 1;
            return Ok(());
        }
        self.ok += 1;
        if r.live != Some(true) {
            self.live_false += 1;
        }
        if let Some(ctl::Data::RuleIds { ids }) = r.data {
            self.rules.extend(ids);
        }
        Ok(())
    }
}

/// Packets per wall second and per second the worker was on a CPU over
/// `f`'s run.
fn round(
    c: &mut ctl::Client,
    pid: u32,
    f: impl FnOnce(&mut ctl::Client) -> Result<(), String>,
) -> Result<(f64, f64, Duration), String> {
    let r0 = rx(c)?;
    let c0 = thread_cpu_ns(pid, "dpgw-w0").unwrap_or(0);
    let t0 = Instant::now();
    f(c)?;
    let dt = t0.elapsed();
    let n = (rx(c)? - r0) as f64;
    let cpu = thread_cpu_ns(pid, "dpgw-w0")
        .unwrap_or(0)
        .saturating_sub(c0) as f64
        / 1e9;
    Ok((
        n / dt.as_secs_f64(),
        if cpu > 0.0 { n / cpu } else { f64::NAN },
        dt,
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(a: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let pcap = a.dir.join("traffic.pcap");
    let o = Proc::new(&a.dpgw)
        .args(["gen", "--out"])
        .arg(&pcap)
        .args(["--packets", "200000", "--flows", "2000", "--tcp-pct", "100"])
        .args(["--dst", VIP, "--dport", "80", "--seed", "19"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); build it first or point --dpgw at it",
                a.dpgw.display()
            )
        })?;
    if !o.status.success() {
        return Err(format!("dpgw gen: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let pinned = u32::try_from(a.control_core).ok();
    if let Some(cc) = pinned {
        // This client too, so that neither it nor dpgw's control thread
        // takes the worker's CPU.
        dataplane::cpu::pin_thread_to(&[cc as usize])?;
    }
    let sock = a.dir.join("ctl.sock");
    let cfg = a.dir.join("dpgw.toml");
    let log = a.dir.join("dpgw.log");
    let _ = std::fs::remove_file(&sock);
    let mut toml = format!(
        "[dataplane]\nworkers = 1\ncores = [{}]\n{}burst = 32\nio = \"pcap\"\n\n\
         [pcap]\ninput = [{:?}]\nloops = 0\n\n[control]\nsocket = {:?}\n\n\
         [gateway]\nunderlay_ips = [\"10.0.0.1\"]\nlocal_mac = \"02:00:00:00:00:01\"\n\
         next_hop_mac = \"02:00:00:00:00:fe\"\n\n[acl]\ndefault = \"allow\"\n\n\
         [[service]]\nname = \"base\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\n",
        a.core,
        pinned.map_or(String::new(), |c| format!("control_cores = [{c}]\n")),
        pcap.display().to_string(),
        sock.display().to_string()
    );
    for b in 1..=4 {
        toml.push_str(&format!("[[service.backend]]\nip = \"192.168.0.{b}\"\n"));
    }
    std::fs::write(&cfg, toml).map_err(|e| format!("{}: {e}", cfg.display()))?;
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
        if let Ok(mut c) = ctl::Client::connect(&sock, Duration::from_secs(10)) {
            if rx(&mut c).unwrap_or(0) > 0 {
                break c;
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "no traffic after 60 s (log {}: {})",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "ctl-bench: worker on CPU {}, {}; {} mutations ({}, ACL rules {}) per storm round; loadavg {}",
        a.core,
        match pinned {
            Some(cc) => format!("control threads and this client on CPU {cc}"),
            None => "control threads and this client unpinned".into(),
        },
        a.mutations,
        a.mix,
        a.rules,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let (first, kinds) = match a.mix.as_str() {
        "lb" => (0, 7),
        "acl" => (7, 2),
        _ => (0, 9),
    };
    let mut storm = Storm {
        rng: 0x2545_f491_4f6c_dd1d,
        first,
        kinds,
        rules: Vec::new(),
        near: a.rules == "traffic",
        ok: 0,
        refused: 0,
        live_false: 0,
    };
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for k in 0..a.rounds {
        let (sw, sc, dt) = round(&mut c, pid, |c| {
            (0..a.mutations).try_for_each(|i| storm.step(c, i))
        })?;
        let (qw, qc, _) = round(&mut c, pid, |_| {
            std::thread::sleep(dt);
            Ok(())
        })?;
        println!(
            "  round {}: storm {:.2} s ({:.0} mutations/s): {:.3} Mpps ({:.3} per worker CPU s); quiet {:.3} Mpps ({:.3}); ratio {:.3} ({:.3})",
            k + 1,
            dt.as_secs_f64(),
            f64::from(a.mutations) / dt.as_secs_f64(),
            sw / 1e6,
            sc / 1e6,
            qw / 1e6,
            qc / 1e6,
            sw / qw,
            sc / qc
        );
        wall.push(sw / qw);
        cpu.push(sc / qc);
    }
    println!(
        "ctl-bench: median ratio storm/quiet {:.3} per wall second, {:.3} per worker CPU second ({} rounds; {} applied, {} refused, {} live:false); loadavg {}",
        median(&mut wall),
        median(&mut cpu),
        a.rounds,
        storm.ok,
        storm.refused,
        storm.live_false,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("ctl-bench: {e}");
        std::process::exit(1);
    }
}
