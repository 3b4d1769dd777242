//! `dpgwctl`: steers a running `dpgw run` through its control socket.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use ctl::{
    Action, BackendSpec, BackendState, Client, ClientError, Command, Data, EncapKind, MacAddr,
    Proto, Response, RuleFormat, RuleSpec, ServiceSpec, StatsReport, DEFAULT_SOCKET,
};

#[derive(Parser)]
#[command(
    name = "dpgwctl",
    version,
    about = "Control a running dpgw: services, backends, ACL rules, counters, configuration"
)]
struct Cli {
    /// Control socket of the daemon.
    #[arg(long, env = "DPGW_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print the daemon's JSON response instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load-balanced services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Backends of a service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Tenant ACL rules.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Counters per worker, service, backend and rule.
    Stats {
        /// Print again every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Flow-table use per worker and flow counts per service and backend.
    Flows {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The running configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Checks that the daemon answers.
    Ping,
    /// Prints a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, ValueEnum)]
enum EncapArg {
    Ipip,
    Gue,
    Vxlan,
    Geneve,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Allow,
    Deny,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Action {
        match a {
            ActionArg::Allow => Action::Allow,
            ActionArg::Deny => Action::Deny,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Toml,
    Classbench,
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Adds a service (no backends yet).
    Add {
        name: String,
        #[arg(long)]
        vip: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        proto: ProtoArg,
        /// Only for this tenant.
        #[arg(long)]
        vni: Option<u32>,
        #[arg(long, value_enum, default_value = "ipip")]
        encap: EncapArg,
        /// Maglev table size (prime).
        #[arg(long)]
        table_size: Option<u32>,
    },
    /// Removes a service and its backends.
    Del { name: String },
    /// Lists services.
    List,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Adds a backend to a service.
    Add {
        service: String,
        ip: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Backend MAC (required for vxlan encapsulation).
        #[arg(long)]
        mac: Option<MacAddr>,
    },
    /// Removes a backend (its flows move on their next packet).
    Del { service: String, ip: IpAddr },
    /// No new flows for the backend; existing flows stay.
    Drain { service: String, ip: IpAddr },
    /// Makes a drained or down backend active again.
    Activate { service: String, ip: IpAddr },
    /// Takes a backend out at once (its flows move).
    Down { service: String, ip: IpAddr },
    /// Sets a backend's weight (0 = no new flows).
    Weight {
        service: String,
        ip: IpAddr,
        weight: u32,
    },
    /// Lists backends.
    List { service: Option<String> },
}

#[derive(Subcommand)]
enum RuleCmd {
    /// Adds a rule and prints its id.
    Add {
        #[arg(long)]
        vni: Option<u32>,
        /// Source prefix (CIDR) or `any`.
        #[arg(long, default_value = "any")]
        src: String,
        /// Destination prefix (CIDR) or `any`.
        #[arg(long, default_value = "any")]
        dst: String,
        /// tcp, udp, icmp, icmpv6, a number or any.
        #[arg(long, default_value = "any")]
        proto: String,
        /// Source port or range A-B.
        #[arg(long, default_value = "any")]
        sport: String,
        /// Destination port or range A-B.
        #[arg(long, default_value = "any")]
        dport: String,
        #[arg(long, value_enum)]
        action: ActionArg,
        /// Lower first; absent = after all explicit priorities.
        #[arg(long)]
        priority: Option<u32>,
    },
    /// Removes a rule by id.
    Del { id: u32 },
    /// Lists rules.
    List,
    /// Adds the rules of a file (read here, sent to the daemon).
    Load {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "toml")]
        format: FormatArg,
        /// Replace all rules added so far instead of appending.
        #[arg(long)]
        replace: bool,
        /// Action of ClassBench rules.
        #[arg(long, value_enum, default_value = "deny")]
        action: ActionArg,
        /// Tenant of ClassBench rules.
        #[arg(long)]
        vni: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Prints the running state as a config file `dpgw run` accepts.
    Dump,
    /// Writes the running state to the daemon's config file (or PATH, which must
    /// be in the same directory).
    Save { path: Option<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpgwctl: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

fn run(cli: Cli) -> Result<(), String> {
    let cmd = match cli.cmd {
        Cmd::Completions { shell } => {
            let mut c = Cli::command();
            clap_complete::generate(shell, &mut c, "dpgwctl", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Stats { watch: Some(secs) } => {
            if !(secs.is_finite() && secs > 0.0) {
                return Err(format!(
                    "--watch: {secs} is not a positive number of seconds"
                ));
            }
            let mut client = connect(&cli.socket, cli.timeout)?;
            loop {
                let r = client.request(Command::Stats).map_err(|e| e.to_string())?;
                if cli.json {
                    println!("{}", r.to_line().trim_end());
                } else {
                    if let Some(Data::Stats(s)) = &r.data {
                        print!("{}", format_stats(s));
                    }
                    println!();
                }
                std::io::stdout().flush().ok();
                std::thread::sleep(Duration::from_secs_f64(secs));
            }
        }
        Cmd::Stats { watch: None } => Command::Stats,
        Cmd::Ping => Command::Ping,
        Cmd::Service(s) => match s {
            ServiceCmd::Add {
                name,
                vip,
                port,
                proto,
                vni,
                encap,
                table_size,
            } => {
                let proto = match proto {
                    ProtoArg::Tcp => Proto::Tcp,
                    ProtoArg::Udp => Proto::Udp,
                };
                let mut spec = ServiceSpec::new(name, vip, port, proto);
                spec.vni = vni;
                spec.encap = match encap {
                    EncapArg::Ipip => EncapKind::Ipip,
                    EncapArg::Gue => EncapKind::Gue,
                    EncapArg::Vxlan => EncapKind::Vxlan,
                    EncapArg::Geneve => EncapKind::Geneve,
                };
                if let Some(m) = table_size {
                    spec.table_size = m;
                }
                Command::ServiceAdd { service: spec }
            }
            ServiceCmd::Del { name } => Command::ServiceDel { name },
            ServiceCmd::List => Command::ServiceList,
        },
        Cmd::Backend(b) => match b {
            BackendCmd::Add {
                service,
                ip,
                weight,
                mac,
            } => {
                let mut backend = BackendSpec::new(ip);
                backend.weight = weight;
                backend.mac = mac;
                Command::BackendAdd { service, backend }
            }
            BackendCmd::Del { service, ip } => Command::BackendDel { service, ip },
            BackendCmd::Drain { service, ip } => Command::BackendState {
                service,
                ip,
                state: BackendState::Draining,
            },
            BackendCmd::Activate { service, ip } => Command::BackendState {
                service,
                ip,
                state: BackendState::Active,
            },
            BackendCmd::Down { service, ip } => Command::BackendState {
                service,
                ip,
                state: BackendState::Down,
            },
            BackendCmd::Weight {
                service,
                ip,
                weight,
            } => Command::BackendWeight {
                service,
                ip,
                weight,
            },
            BackendCmd::List { service } => Command::BackendList { service },
        },
        Cmd::Rule(r) => match r {
            RuleCmd::Add {
                vni,
                src,
                dst,
                proto,
                sport,
                dport,
                action,
                priority,
            } => Command::RuleAdd {
                rule: RuleSpec {
                    vni,
                    src,
                    dst,
                    proto,
                    src_ports: sport,
                    dst_ports: dport,
                    action: action.into(),
                    priority,
                    id: None,
                },
            },
            RuleCmd::Del { id } => Command::RuleDel { id },
            RuleCmd::List => Command::RuleList,
            RuleCmd::Load {
                file,
                format,
                replace,
                action,
                vni,
            } => {
                let content = std::fs::read_to_string(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let format = match format {
                    FormatArg::Toml => RuleFormat::Toml,
                    FormatArg::Classbench => RuleFormat::Classbench,
                };
                Command::RuleLoad {
                    format,
                    content,
                    replace,
                    action: Some(action.into()),
                    vni,
                }
            }
        },
        Cmd::Flows { service, limit } => Command::Flows { service, limit },
        Cmd::Config(c) => match c {
            ConfigCmd::Dump => Command::ConfigDump,
            ConfigCmd::Save { path } => {
                // A relative path means the caller's directory, not the daemon's.
                let path = match path {
                    Some(p) if p.is_relative() => Some(
                        std::env::current_dir()
                            .map_err(|e| format!("current directory: {e}"))?
                            .join(p),
                    ),
                    p => p,
                };
                Command::ConfigSave {
                    path: path.map(|p| p.to_string_lossy().into_owned()),
                }
            }
        },
    };
    let mut client = connect(&cli.socket, cli.timeout)?;
    let r = client.call(cmd.clone()).map_err(|e| e.to_string())?;
    if cli.json {
        println!("{}", r.to_line().trim_end());
        return if r.ok {
            Ok(())
        } else {
            Err(r.error.unwrap_or_else(|| "request failed".into()))
        };
    }
    if !r.ok {
        return Err(r.error.unwrap_or_else(|| "request failed".into()));
    }
    if r.live == Some(false) {
        eprintln!(
            "dpgwctl: warning: generation {} published, but not every worker confirmed it in time",
            r.generation.unwrap_or(0)
        );
    }
    print!("{}", human(&cmd, &r));
    Ok(())
}

fn connect(socket: &std::path::Path, timeout: u64) -> Result<Client, String> {
    Client::connect(socket, Duration::from_secs(timeout.max(1))).map_err(|e| match &e {
        ClientError::Connect { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{e} (is dpgw running with a [control] section? see --socket / DPGW_SOCKET)")
        }
        _ => e.to_string(),
    })
}

/// Renders rows as left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<width$}  ", c, width = w[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn human(cmd: &Command, r: &Response) -> String {
    let gen = r
        .generation
        .map(|g| format!(" (generation {g})"))
        .unwrap_or_default();
    match (&r.data, cmd) {
        (Some(Data::RuleIds { ids }), Command::RuleAdd { .. }) => {
            ids.iter().map(|i| format!("{i}\n")).collect()
        }
        (Some(Data::RuleIds { ids }), _) => format!("{} rule(s) loaded{gen}\n", ids.len()),
        (Some(Data::Pong { version, workers }), _) => {
            format!("dpgw {version}, {workers} worker(s){gen}\n")
        }
        (Some(Data::Services { services }), _) => {
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.vni.map_or("any".into(), |v| v.to_string()),
                        s.vip.to_string(),
                        s.port.to_string(),
                        s.proto.to_string(),
                        s.encap.to_string(),
                        s.table_size.to_string(),
                        s.backends.len().to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME", "VNI", "VIP", "PORT", "PROTO", "ENCAP", "TABLE", "BACKENDS",
                ],
                &rows,
            )
        }
        (Some(Data::Backends { backends }), _) => {
            let rows: Vec<Vec<String>> = backends
                .iter()
                .map(|b| {
                    vec![
                        b.service.clone(),
                        b.backend.ip.to_string(),
                        b.backend.weight.to_string(),
                        b.backend.state.to_string(),
                        b.backend.mac.map_or("-".into(), |m| m.to_string()),
                    ]
                })
                .collect();
            table(&["SERVICE", "IP", "WEIGHT", "STATE", "MAC"], &rows)
        }
        (
            Some(Data::Rules {
                default,
                rules,
                files,
            }),
            _,
        ) => {
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    vec![
                        r.id.map_or("-".into(), |i| i.to_string()),
                        r.priority.map_or("-".into(), |p| p.to_string()),
                        r.vni.map_or("any".into(), |v| v.to_string()),
                        r.src.clone(),
                        r.dst.clone(),
                        r.proto.clone(),
                        r.src_ports.clone(),
                        r.dst_ports.clone(),
                        r.action.to_string(),
                    ]
                })
                .collect();
            let mut s = table(
                &[
                    "ID", "PRIO", "VNI", "SRC", "DST", "PROTO", "SPORT", "DPORT", "ACTION",
                ],
                &rows,
            );
            for f in files {
                s.push_str(&format!(
                    "file {} ({:?}, action {}, vni {})\n",
                    f.path,
                    f.format,
                    f.action,
                    f.vni.map_or("any".into(), |v| v.to_string())
                ));
            }
            s.push_str(&format!("default action: {default}\n"));
            s
        }
        (Some(Data::Stats(s)), _) => format_stats(s),
        (Some(Data::Flows(f)), _) => {
            let mut s = flow_tables(&f.tables, &f.total);
            let rows: Vec<Vec<String>> = f
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.service.clone(),
                        r.backend.map_or("(service)".into(), |b| b.to_string()),
                        r.new_flows.to_string(),
                        r.packets.to_string(),
                    ]
                })
                .collect();
            s.push('\n');
            s.push_str(&table(
                &["SERVICE", "BACKEND", "NEW_FLOWS", "PACKETS"],
                &rows,
            ));
            if f.truncated > 0 {
                s.push_str(&format!("({} more rows; raise --limit)\n", f.truncated));
            }
            s
        }
        (Some(Data::Config { toml }), _) => toml.clone(),
        (Some(Data::Saved { path, bytes }), _) => format!("saved {bytes} bytes to {path}\n"),
        (None, _) => format!("ok{gen}\n"),
    }
}

fn flow_tables(per: &[ctl::FlowTableCounters], total: &ctl::FlowTableCounters) -> String {
    let row = |name: String, f: &ctl::FlowTableCounters| {
        vec![
            name,
            f.in_use.to_string(),
            f.capacity.to_string(),
            format!(
                "{:.1}%",
                if f.capacity == 0 {
                    0.0
                } else {
                    f.in_use as f64 * 100.0 / f.capacity as f64
                }
            ),
            f.hits.to_string(),
            f.misses.to_string(),
            f.evictions.to_string(),
            f.expirations.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = per
        .iter()
        .map(|f| row(f.worker.map_or("?".into(), |w| w.to_string()), f))
        .collect();
    rows.push(row("total".into(), total));
    table(
        &[
            "WORKER", "FLOWS", "CAPACITY", "USE", "HITS", "MISSES", "EVICTED", "EXPIRED",
        ],
        &rows,
    )
}

fn format_stats(s: &StatsReport) -> String {
    let mut out = format!(
        "generation {}, up {:.1} s, rates over the last {:.1} s\n",
        s.generation, s.uptime_s, s.rate_window_s
    );
    let row = |name: String, w: &ctl::WorkerCounters| {
        vec![
            name,
            if w.running { "running" } else { "exited" }.to_string(),
            w.generation.to_string(),
            w.rx.to_string(),
            w.tx.to_string(),
            w.punted.to_string(),
            w.total_drops().to_string(),
            format!("{:.3}", w.rx_mpps),
            format!("{:.3}", w.tx_mpps),
        ]
    };
    let mut rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| row(w.worker.map_or("?".into(), |i| i.to_string()), w))
        .collect();
    rows.push(row("total".into(), &s.total));
    out.push_str(&table(
        &[
            "WORKER", "STATE", "GEN", "RX", "TX", "PUNTED", "DROPS", "RX_MPPS", "TX_MPPS",
        ],
        &rows,
    ));
    if !s.ports.is_empty() {
        out.push_str("\nDPDK ports:\n");
        let rows: Vec<Vec<String>> = s
            .ports
            .iter()
            .map(|p| {
                vec![
                    p.port.to_string(),
                    p.name.clone(),
                    p.ipackets.to_string(),
                    p.opackets.to_string(),
                    p.imissed.to_string(),
                    p.rx_nombuf.to_string(),
                    p.ierrors.to_string(),
                    p.oerrors.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "PORT", "DEVICE", "RX", "TX", "MISSED", "NOMBUF", "RX_ERR", "TX_ERR",
            ],
            &rows,
        ));
    }
    if !s.total.drops.is_empty() {
        out.push_str("\ndrops by reason:\n");
        let rows: Vec<Vec<String>> = s
            .total
            .drops
            .iter()
            .map(|(k, v)| {
                let mut r = vec![k.clone(), v.to_string()];
                for w in &s.workers {
                    r.push(w.drops.get(k).copied().unwrap_or(0).to_string());
                }
                r
            })
            .collect();
        let mut header = vec!["REASON".to_string(), "TOTAL".to_string()];
        for w in &s.workers {
            header.push(format!("W{}", w.worker.unwrap_or(0)));
        }
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        out.push_str(&table(&h, &rows));
    }
    if !s.services.is_empty() {
        out.push_str("\nservices:\n");
        let rows: Vec<Vec<String>> = s
            .services
            .iter()
            .map(|x| {
                vec![
                    format!("{}{}", x.name, if x.configured { "" } else { " (deleted)" }),
                    x.packets.to_string(),
                    x.bytes.to_string(),
                    x.new_flows.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["SERVICE", "PACKETS", "BYTES", "NEW_FLOWS"], &rows));
    }
    if !s.backends.is_empty() {
        out.push_str("\nbackends:\n");
        let rows: Vec<Vec<String>> = s
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.service.clone(),
                    b.ip.to_string(),
                    b.state.map_or("deleted".into(), |x| x.to_string()),
                    b.weight.map_or("-".into(), |x| x.to_string()),
                    b.packets.to_string(),
                    b.bytes.to_string(),
                    b.new_flows.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "SERVICE",
                "BACKEND",
                "STATE",
                "WEIGHT",
                "PACKETS",
                "BYTES",
                "NEW_FLOWS",
            ],
            &rows,
        ));
    }
    out.push_str("\nflow tables:\n");
    out.push_str(&flow_tables(&s.flow_tables, &s.flow_total));
    if !s.rules.is_empty() {
        out.push_str("\nrule hits:\n");
        let rows: Vec<Vec<String>> = s
            .rules
            .iter()
            .map(|r| vec![r.id.to_string(), r.hits.to_string()])
            .collect();
        out.push_str(&table(&["RULE", "HITS"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "dpgwctl",
            "--json",
            "service",
            "add",
            "web",
            "--vip",
            "10.0.0.1",
            "--port",
            "80",
            "--proto",
            "tcp",
            "--table-size",
            "251",
        ])
        .unwrap();
        assert!(c.json);
        assert!(matches!(
            c.cmd,
            Cmd::Service(ServiceCmd::Add {
                table_size: Some(251),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["dpgwctl", "backend", "add", "web", "10.0.0.300"]).is_err());
        assert!(Cli::try_parse_from(["dpgwctl", "rule", "add", "--src", "10.0.0.0/8"]).is_err());
    }

    #[test]
    fn test_table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxxx  1\n");
    }

    #[test]
    fn test_stats_shows_ports_only_when_present() {
        let mut s = StatsReport::default();
        assert!(!format_stats(&s).contains("DPDK ports"));
        s.ports.push(ctl::PortCounters {
            port: 0,
            name: "net_pcap0".into(),
            ipackets: 1234,
            imissed: 7,
            ..Default::default()
        });
        let t = format_stats(&s);
        assert!(
            t.contains("DPDK ports:\nPORT  DEVICE     RX    TX  MISSED"),
            "{t}"
        );
        assert!(t.contains("0     net_pcap0  1234  0   7 "), "{t}");
    }
}
