//! `dpgw`: the gateway daemon, the pcap replay benchmark and the traffic generator.

#![deny(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use dataplane::config::Config;
use dataplane::gen::{generate, GenSpec, Popularity};
use dataplane::runner::{self, RunOptions};

/// Allocations of 2 MiB or more (flow tables, conntrack, ACL and Maglev
/// tables, captures) on transparent huge pages: see `dataplane::hugealloc`.
#[global_allocator]
static ALLOC: dataplane::hugealloc::HugeAlloc = dataplane::hugealloc::HugeAlloc;

#[derive(Parser)]
#[command(
    name = "dpgw",
    version,
    about = "User-space VXLAN gateway dataplane: decap, ACL, Maglev load balancing"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway as a daemon until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replay captures through the full pipeline as fast as possible and print a summary.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Input capture(s) (replaces `[pcap] input`).
        #[arg(long)]
        pcap: Vec<PathBuf>,
        /// Output capture (replaces `[pcap] output`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replays of the input (0 = until interrupted).
        #[arg(long)]
        loops: Option<u64>,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        burst: Option<usize>,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file (and the rule files it names) without running:
    /// prints the table digest (`dpgwctl stats` shows the running one), or
    /// every problem found (exit status 2).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print, for each packet of a capture, what every stage decides under a
    /// config (the code the workers run, one worker, flow table included),
    /// without running the daemon.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// Input capture (pcap or pcapng).
        #[arg(long)]
        pcap: PathBuf,
        /// Only the first N packets.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per packet instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages (dpgw.8 and its subcommands) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Write a generated VXLAN capture.
    Gen {
        /// Output pcap file.
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        packets: usize,
        #[arg(long, default_value_t = 1000)]
        flows: usize,
        #[arg(long, default_value_t = 1)]
        vnis: u32,
        #[arg(long, default_value_t = 100)]
        vni_base: u32,
        /// Inner Ethernet frame size in bytes.
        #[arg(long, default_value_t = 64)]
        frame_size: usize,
        #[arg(long, value_enum, default_value_t = Family::V4)]
        inner: Family,
        #[arg(long, value_enum, default_value_t = Family::V4)]
        outer: Family,
        /// Percentage of TCP flows (the rest are UDP).
        #[arg(long, default_value_t = 50)]
        tcp_pct: u8,
        /// Flow popularity: `uniform` or `zipf:S` (e.g. zipf:1.1).
        #[arg(long, default_value = "uniform")]
        dist: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Outer destination address (the gateway's VTEP).
        #[arg(long)]
        vtep: Option<IpAddr>,
        /// Inner destination addresses (flows take them round-robin).
        #[arg(long)]
        dst: Vec<IpAddr>,
        /// Inner destination ports (flows take them round-robin).
        #[arg(long)]
        dport: Vec<u16>,
        #[arg(long, default_value_t = 4789)]
        vxlan_port: u16,
        #[arg(long, default_value_t = 64)]
        ttl: u8,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Family {
    V4,
    V6,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dpgw: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            // Before any thread starts: they inherit it (workers then pin
            // themselves to their own cores).
            if !cfg.dataplane.control_cores.is_empty() && !cfg.dataplane.no_pin {
                dataplane::cpu::pin_thread_to(&cfg.dataplane.control_cores)
                    .map_err(|e| anyhow::anyhow!("dataplane.control_cores: {e}"))?;
            }
            let stop = stop_on_signals()?;
            // SIGHUP re-reads the config (the control server handles it);
            // without a [control] section it is ignored rather than fatal.
            signal_hook::flag::register(
                signal_hook::consts::SIGHUP,
                Arc::new(AtomicBool::new(false)),
            )?;
            eprintln!(
                "dpgw: running {} worker(s) on {:?} I/O; SIGINT/SIGTERM to stop",
                cfg.dataplane.workers, cfg.dataplane.io
            );
            let shared = runner::prepare(&cfg)?;
            let ctl = dataplane::control::start(&cfg, &config, shared.clone())?;
            if let Some(c) = &ctl {
                eprintln!("dpgw: control socket {}", c.socket().display());
                if let Some(m) = c.metrics_addr() {
                    eprintln!("dpgw: metrics on http://{m}/metrics");
                }
            }
            dataplane::sdnotify::spawn(shared.clone());
            let announcer = dataplane::announce::Announcer::start(&cfg, shared.clone())
                .map_err(anyhow::Error::msg)?;
            if let Some(a) = &announcer {
                let _ = shared.announce.set(a.clone());
                let st = a.status();
                eprintln!(
                    "dpgw: announcing {} through {} (table {}) while able to forward",
                    st.prefixes.join(", "),
                    st.device,
                    st.table
                );
            }
            let link = shared.tables.load().fleet.clone();
            let sh = shared.clone();
            let stop_fleet = shared.clone();
            let fleet = dataplane::fleet::start(&cfg, link, move || {
                sh.stop.load(std::sync::atomic::Ordering::Relaxed)
            })
            .map_err(anyhow::Error::msg)?;
            if let Some(f) = &cfg.fleet {
                eprintln!(
                    "dpgw: sharing flow state on {} with {}",
                    f.listen,
                    f.peers.join(", ")
                );
            }
            let result = runner::run_prepared(&cfg, &RunOptions { progress: false }, stop, shared);
            if let Some(f) = fleet {
                // The workers are done (input exhausted or a signal): so is the sync.
                stop_fleet
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = f.join();
            }
            if let Some(a) = announcer {
                a.stop();
            }
            if let Some(c) = ctl {
                c.stop();
            }
            let (summary, _) = result?;
            eprint!("dpgw: final counters:\n{}", summary.human());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay {
            config,
            pcap,
            out,
            loops,
            workers,
            burst,
            json,
        } => {
            let mut cfg = Config::load(&config)?;
            {
                let pc = cfg.pcap.get_or_insert_with(Default::default);
                if !pcap.is_empty() {
                    pc.input = pcap;
                }
                if out.is_some() {
                    pc.output = out;
                }
                if let Some(l) = loops {
                    pc.loops = l;
                }
            }
            if let Some(w) = workers {
                cfg.dataplane.workers = w;
            }
            if let Some(b) = burst {
                cfg.dataplane.burst = b;
            }
            cfg.dataplane.io = dataplane::config::IoKind::Pcap;
            let problems = cfg.validate();
            if !problems.is_empty() {
                anyhow::bail!("invalid options:\n  - {}", problems.join("\n  - "));
            }
            let stop = stop_on_signals()?;
            let (summary, _) = runner::run(&cfg, &RunOptions { progress: true }, stop)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.human());
            }
            if !summary.conserved() {
                eprintln!("dpgw: BUG: rx != tx + punted + drops");
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { config } => {
            let cfg = Config::load(&config)?;
            match dataplane::tables::Tables::build(&cfg, 1) {
                Ok(t) => {
                    println!(
                        "{}: ok, {} service(s), {} ACL rule(s), table digest {}",
                        config.display(),
                        t.lb.len(),
                        t.acl.as_ref().map_or(0, |a| a.classifier.rule_count()),
                        t.digest()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("dpgw: {}: invalid:", config.display());
                    for m in e.messages() {
                        eprintln!("  - {m}");
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Explain {
            config,
            pcap,
            limit,
            json,
        } => {
            let cfg = Config::load(&config)?;
            let t = dataplane::tables::Tables::build(&cfg, 1)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let cap = dataplane::pcapfile::read_file(&pcap)
                .map_err(|e| anyhow::anyhow!("{}: {e}", pcap.display()))?;
            let frames: Vec<&[u8]> = cap
                .iter()
                .map(|(_, d)| d)
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            let mut pipeline = dataplane::pipeline::Pipeline::default();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write as _;
            let mut err = None;
            dataplane::pipeline::explain_frames(&mut pipeline, &t, 0, &frames, 0, |i, r| {
                let res = if json {
                    let v = serde_json::json!({
                        "packet": i + 1,
                        "len": r.orig_len,
                        "verdict": r.verdict,
                        "service": r.service,
                        "backend": r.backend,
                        "steps": r.steps,
                        // The frame as it would be sent (transmitted packets only).
                        "out": (r.verdict == "tx").then(|| {
                            r.data.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        }),
                    });
                    writeln!(out, "{v}")
                } else {
                    let mut s = format!("#{} len {}: {}\n", i + 1, r.orig_len, r.verdict);
                    for l in &r.steps {
                        s.push_str("    ");
                        s.push_str(l);
                        s.push('\n');
                    }
                    out.write_all(s.as_bytes())
                };
                if let Err(e) = res {
                    err.get_or_insert(e);
                }
            });
            out.flush()?;
            match err {
                Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Some(e) => Err(e.into()),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Man { out } => {
            ctl::man::write(&out, <Cli as clap::CommandFactory>::command(), "dpgw", "8")
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gen {
            out,
            packets,
            flows,
            vnis,
            vni_base,
            frame_size,
            inner,
            outer,
            tcp_pct,
            dist,
            seed,
            vtep,
            dst,
            dport,
            vxlan_port,
            ttl,
        } => {
            let popularity = if dist == "uniform" {
                Popularity::Uniform
            } else if let Some(s) = dist.strip_prefix("zipf:") {
                let s: f64 = s
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--dist: bad Zipf exponent {s:?}"))?;
                if !(s > 0.0 && s < 10.0) {
                    anyhow::bail!("--dist: Zipf exponent {s} must be in (0, 10)");
                }
                Popularity::Zipf(s)
            } else {
                anyhow::bail!("--dist: expected `uniform` or `zipf:S`, got {dist:?}");
            };
            if tcp_pct > 100 {
                anyhow::bail!("--tcp-pct: {tcp_pct} is over 100");
            }
            let outer_v6 = matches!(outer, Family::V6);
            let spec = GenSpec {
                packets,
                flows,
                vnis,
                vni_base,
                frame_size,
                inner_v6: matches!(inner, Family::V6),
                outer_v6,
                tcp_pct,
                popularity,
                seed,
                vtep: vtep.unwrap_or(if outer_v6 {
                    "fd00::1".parse()?
                } else {
                    "10.0.0.1".parse()?
                }),
                dsts: dst,
                dports: if dport.is_empty() { vec![80] } else { dport },
                vxlan_port,
                inner_ttl: ttl,
            };
            let w = generate(&spec).map_err(|e| anyhow::anyhow!(e))?;
            runner::write_atomic(&out, &w.buf)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            eprintln!(
                "dpgw: wrote {} packets ({} bytes) to {}",
                packets,
                w.buf.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
