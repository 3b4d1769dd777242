//! `dpgwctl`: steers a running `dpgw run` through its control socket.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use ctl::{
    Action, BackendSpec, BackendState, Client, ClientError, Command, Data, EncapKind, HealthKind,
    HealthMode, HealthSpec, MacAddr, OnDown, Proto, Response, RuleFormat, RuleSpec, ServiceSpec,
    StatsReport, DEFAULT_SOCKET,
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
    /// Seconds to wait for an answer (trace and capture: the longest they run).
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
    /// Flow tables: `flows count` (the default) summarises them, `flows list`
    /// prints their entries.
    Flows {
        #[command(subcommand)]
        sub: Option<FlowsCmd>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Tracked connections of stateful ACL rules: `conn list`, `conn flush`.
    Conn {
        #[command(subcommand)]
        sub: ConnCmd,
    },
    /// A live view, refreshed every --interval seconds: packet rates per
    /// worker, service, backend and drop reason, with the change since the
    /// last refresh. On a terminal the screen is redrawn; otherwise one
    /// snapshot is printed per interval.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after N refreshes (default: until interrupted).
        #[arg(long, short = 'n')]
        iterations: Option<u64>,
        /// Rows per table.
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Walks one packet through the live tables, stage by stage: decap, ACL
    /// rule, service, Maglev bucket and backend (or an existing flow entry),
    /// encapsulation, next hop and MTU.
    Explain {
        /// VNI of the overlay packet.
        #[arg(long)]
        vni: u32,
        /// Inner source, `IP:PORT`, `[IPv6]:PORT` or `IP`.
        #[arg(long)]
        src: String,
        /// Inner destination, same forms.
        #[arg(long)]
        dst: String,
        /// tcp (a SYN), udp or icmp (an echo request).
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Payload bytes (for the MTU verdict).
        #[arg(long, default_value_t = 0)]
        payload: usize,
    },
    /// Prints the next packets matching a filter, with each stage's decision
    /// (the daemon's workers record them). Ends after --count packets or
    /// --timeout seconds.
    ///
    /// FILTER (shared with `capture`): primitives `vni N`, `[src|dst] host IP`,
    /// `[src|dst] net CIDR`, `[src|dst] port N[-M]`, `tcp`, `udp`, `icmp`,
    /// `icmp6`, `ip`, `ip6`, `drop`, `reason NAME`, `service NAME`,
    /// `backend IP`, `worker N`, combined with `and`/`&&`, `or`/`||`,
    /// `not`/`!` and parentheses (`and` binds tighter than `or`). Addresses,
    /// ports and protocols are the tenant's (inner) packet's.
    Trace {
        /// Filter expression (default: every packet).
        #[arg(long, default_value = "")]
        filter: String,
        /// Packets to trace.
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    /// Copies packets matching a filter (see `trace --help`) into a pcapng
    /// file (`-w -`: standard output, e.g. `| tshark -r -`), one interface per
    /// worker, each packet commented with its direction, worker and drop
    /// reason. Ends after --count packets or --timeout seconds; packets the
    /// daemon could not hand over (reader too slow) are counted at the end.
    Capture {
        #[arg(long, default_value = "")]
        filter: String,
        /// Where: rx (as received), tx (as sent), drop (dropped, as received), all.
        #[arg(long = "where", value_enum, default_value = "rx")]
        at: WhereArg,
        /// Packets to capture.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Bytes kept of each packet.
        #[arg(long, default_value_t = 262)]
        snaplen: u32,
        /// Output file, `-` for standard output.
        #[arg(short = 'w', value_name = "FILE")]
        write: PathBuf,
    },
    /// The running configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Makes the running services, backends and ACL rules equal to a desired
    /// file (its `[[service]]` and `[acl]`; other sections are reported as
    /// ignored), as one snapshot, and prints each mutation: `+` added, `-`
    /// removed, `~` changed. Rules equal to running ones keep their ids.
    /// Applying the same file again changes nothing; a file with an error
    /// changes nothing and the error names the key. Give a fleet the same
    /// file and every gateway shows the same table digest.
    Apply {
        /// The desired file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Print the difference without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The gateway's route announcement (`[announce]`), for ECMP behind a
    /// router running BGP through BIRD or FRR.
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// Tenant networks the outside reaches through the gateway (`[[tenant]]`):
    /// a plain IP packet to one of a tenant's prefixes is encapsulated into
    /// its VNI, to the VTEP its destination lives behind.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Where tenant addresses live (address → VTEP): static entries and
    /// those learned from the tenant's traffic.
    #[command(subcommand)]
    Vtep(VtepCmd),
    /// Checks that the daemon answers.
    Ping,
    /// Writes the man pages (dpgwctl.1 and its subcommands) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Prints a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum FlowsCmd {
    /// Flow-table use per worker and flow counts per service and backend.
    Count,
    /// The entries of every worker's flow table (read at burst boundaries,
    /// without stopping the workers).
    List {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        backend: Option<IpAddr>,
        #[arg(long)]
        vni: Option<u32>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum ConnCmd {
    /// The entries of every worker's connection table (read while the
    /// workers run): VNI, originator → responder, protocol, state, age.
    List {
        #[arg(long)]
        vni: Option<u32>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Ends the tracked connections (all, or one VNI's): their next packets
    /// are evaluated by the rules again (see the docs for what that means
    /// for established traffic).
    Flush {
        #[arg(long)]
        vni: Option<u32>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum WhereArg {
    Rx,
    Tx,
    Drop,
    All,
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
        /// How new flows choose a backend: maglev (default), src_ip,
        /// round_robin, least_conn or weighted_least_conn.
        #[arg(long)]
        scheduler: Option<String>,
        /// At most this many new flows per second per worker (0 = no cap).
        #[arg(long)]
        new_flow_rate: Option<u32>,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Changes a service's scheduler and/or new-flow rate cap; flows
    /// already pinned keep their backends.
    Set {
        name: String,
        /// maglev, src_ip, round_robin, least_conn or weighted_least_conn.
        #[arg(long)]
        scheduler: Option<String>,
        /// New flows per second per worker (0 = no cap).
        #[arg(long)]
        new_flow_rate: Option<u32>,
    },
    /// Sets a service's health checks (`--kind none` removes them); their
    /// state restarts at unknown.
    Health {
        name: String,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Removes a service and its backends.
    Del { name: String },
    /// Lists services.
    List,
}

/// The keys of `[service.health]` (defaults as there).
#[derive(clap::Args, Default)]
struct HealthArgs {
    /// tcp, http, udp or none.
    #[arg(long = "kind", id = "health_kind")]
    kind: Option<String>,
    /// inband or direct.
    #[arg(long = "mode", id = "health_mode")]
    mode: Option<String>,
    /// HTTP path.
    #[arg(long = "path", id = "health_path")]
    path: Option<String>,
    /// HTTP status that counts as success (default: any 2xx/3xx).
    #[arg(long = "expect-status", id = "health_expect_status")]
    expect_status: Option<u16>,
    /// UDP payload.
    #[arg(long = "payload", id = "health_payload")]
    payload: Option<String>,
    /// Port probed (default: the service port).
    #[arg(long = "check-port", id = "health_port")]
    port: Option<u16>,
    /// VNI of in-band probes to vxlan backends (default: the service's).
    #[arg(long = "check-vni", id = "health_vni")]
    vni: Option<u32>,
    #[arg(long = "interval-ms", id = "health_interval")]
    interval_ms: Option<u32>,
    #[arg(long = "timeout-ms", id = "health_timeout")]
    timeout_ms: Option<u32>,
    /// Consecutive successes to become healthy.
    #[arg(long = "rise", id = "health_rise")]
    rise: Option<u32>,
    /// Consecutive failures to become unhealthy.
    #[arg(long = "fall", id = "health_fall")]
    fall: Option<u32>,
    /// rehome or keep.
    #[arg(long = "on-down", id = "health_on_down")]
    on_down: Option<String>,
}

impl HealthArgs {
    /// The section these flags describe (`None`: no checks).
    fn spec(self) -> Result<Option<HealthSpec>, String> {
        let kind = match self.kind {
            None if self.mode.is_none()
                && self.path.is_none()
                && self.interval_ms.is_none()
                && self.timeout_ms.is_none()
                && self.rise.is_none()
                && self.fall.is_none() =>
            {
                return Ok(None)
            }
            None => return Err("--kind: required with the other health flags".into()),
            Some(k) => HealthKind::try_from(k)?,
        };
        if kind == HealthKind::None {
            return Ok(None);
        }
        let mut h = HealthSpec {
            kind,
            ..HealthSpec::default()
        };
        if let Some(m) = self.mode {
            h.mode = HealthMode::try_from(m)?;
        }
        if let Some(o) = self.on_down {
            h.on_down = OnDown::try_from(o)?;
        }
        if let Some(p) = self.path {
            h.path = p;
        }
        h.expect_status = self.expect_status;
        h.payload = self.payload.unwrap_or_default();
        h.port = self.port;
        h.vni = self.vni;
        h.interval_ms = self.interval_ms.unwrap_or(h.interval_ms);
        h.timeout_ms = self.timeout_ms.unwrap_or(h.timeout_ms);
        h.rise = self.rise.unwrap_or(h.rise);
        h.fall = self.fall.unwrap_or(h.fall);
        Ok(Some(h))
    }
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
        /// Connection tracking: allowed flows create a connection whose
        /// replies pass (default: stateful for `allow` in a VNI whose default
        /// is `deny`).
        #[arg(long, conflicts_with = "stateless")]
        stateful: bool,
        /// No connection tracking for this rule, whatever the default.
        #[arg(long)]
        stateless: bool,
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
enum GatewayCmd {
    /// Withdraws the announcement; the workers keep forwarding what still
    /// arrives (the router moves new flows to the other gateways).
    Drain,
    /// Restores the announcement (once the gateway is able to forward).
    Undrain,
    /// Whether the gateway announces, why, and since when.
    Status,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// The tenant networks.
    List,
    /// Adds a tenant network.
    Add {
        /// Its VNI.
        #[arg(long)]
        vni: u32,
        /// A prefix of its addresses (repeat for more), e.g. 172.16.0.0/16.
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
        /// How the outside's packets are carried in: vxlan or geneve.
        #[arg(long, default_value = "vxlan")]
        encap: String,
    },
    /// Removes a tenant network.
    Del {
        #[arg(long)]
        vni: u32,
    },
}

#[derive(Subcommand)]
enum VtepCmd {
    /// Static and learned entries.
    List {
        #[arg(long)]
        vni: Option<u32>,
    },
    /// Adds (or replaces) a static entry.
    Add {
        #[arg(long)]
        vni: u32,
        /// The tenant address.
        #[arg(long)]
        addr: IpAddr,
        /// The VTEP's underlay address.
        #[arg(long)]
        vtep: IpAddr,
        /// Inner destination MAC (default: broadcast).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Removes a static entry.
    Del {
        #[arg(long)]
        vni: u32,
        #[arg(long)]
        addr: IpAddr,
    },
    /// Forgets learned entries (static ones stay).
    Flush {
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
        Cmd::Man { out } => {
            return ctl::man::write(&out, Cli::command(), "dpgwctl", "1")
                .map_err(|e| format!("{}: {e}", out.display()));
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
        Cmd::Top {
            interval,
            iterations,
            rows,
        } => return top(&cli.socket, cli.timeout, interval, iterations, rows),
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
                scheduler,
                new_flow_rate,
                health,
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
                if let Some(s) = scheduler {
                    spec.scheduler = s.parse()?;
                }
                spec.new_flow_rate = new_flow_rate.unwrap_or(0);
                spec.health = health.spec()?;
                Command::ServiceAdd { service: spec }
            }
            ServiceCmd::Health { name, health } => Command::ServiceHealth {
                name,
                health: health.spec()?,
            },
            ServiceCmd::Set {
                name,
                scheduler,
                new_flow_rate,
            } => {
                if scheduler.is_none() && new_flow_rate.is_none() {
                    return Err("service set: give --scheduler and/or --new-flow-rate".into());
                }
                Command::ServiceSet {
                    name,
                    scheduler: scheduler.map(|s| s.parse()).transpose()?,
                    new_flow_rate,
                }
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
                stateful,
                stateless,
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
                    stateful: match (stateful, stateless) {
                        (true, _) => Some(true),
                        (_, true) => Some(false),
                        _ => None,
                    },
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
        Cmd::Flows {
            sub:
                Some(FlowsCmd::List {
                    service,
                    backend,
                    vni,
                    limit,
                }),
            ..
        } => Command::FlowsList {
            service,
            backend,
            vni,
            limit: Some(limit),
        },
        Cmd::Flows { service, limit, .. } => Command::Flows { service, limit },
        Cmd::Conn {
            sub: ConnCmd::List { vni, limit },
        } => Command::ConnList {
            vni,
            limit: Some(limit),
        },
        Cmd::Conn {
            sub: ConnCmd::Flush { vni },
        } => Command::ConnFlush { vni },
        Cmd::Explain {
            vni,
            src,
            dst,
            proto,
            payload,
        } => {
            let (src, sport) = endpoint(&src, "--src")?;
            let (dst, dport) = endpoint(&dst, "--dst")?;
            Command::Explain {
                packet: ctl::ExplainPacket {
                    vni,
                    src,
                    sport,
                    dst,
                    dport,
                    proto,
                    payload,
                },
            }
        }
        Cmd::Trace { filter, count } => {
            return watch(&cli.socket, cli.timeout, cli.json, filter, count, None)
        }
        Cmd::Capture {
            filter,
            at,
            count,
            snaplen,
            write,
        } => {
            let at = match at {
                WhereArg::Rx => ctl::CapturePoint::Rx,
                WhereArg::Tx => ctl::CapturePoint::Tx,
                WhereArg::Drop => ctl::CapturePoint::Drop,
                WhereArg::All => ctl::CapturePoint::All,
            };
            let spec = ctl::CaptureSpec { at, snaplen };
            return watch(
                &cli.socket,
                cli.timeout,
                cli.json,
                filter,
                count,
                Some((spec, write)),
            );
        }
        Cmd::Apply { file, dry_run } => {
            let content =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let base = dir
                .canonicalize()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            Command::Apply {
                content,
                base_dir: Some(base.to_string_lossy().into_owned()),
                dry_run,
            }
        }
        Cmd::Gateway(g) => match g {
            GatewayCmd::Drain => Command::GatewayDrain,
            GatewayCmd::Undrain => Command::GatewayUndrain,
            GatewayCmd::Status => Command::GatewayStatus,
        },
        Cmd::Tenant(t) => match t {
            TenantCmd::List => Command::TenantList,
            TenantCmd::Add {
                vni,
                prefixes,
                encap,
            } => Command::TenantAdd {
                tenant: ctl::TenantSpec {
                    vni,
                    prefixes,
                    encap: match encap.as_str() {
                        "vxlan" => ctl::OverlayEncap::Vxlan,
                        "geneve" => ctl::OverlayEncap::Geneve,
                        other => {
                            return Err(format!("--encap: {other:?} is not one of vxlan, geneve"))
                        }
                    },
                    vtep: Vec::new(),
                },
            },
            TenantCmd::Del { vni } => Command::TenantDel { vni },
        },
        Cmd::Vtep(v) => match v {
            VtepCmd::List { vni } => Command::VtepList { vni },
            VtepCmd::Add {
                vni,
                addr,
                vtep,
                mac,
            } => Command::VtepAdd {
                vni,
                addr,
                vtep,
                mac: mac
                    .map(|m| m.parse::<MacAddr>().map_err(|e| format!("--mac: {e}")))
                    .transpose()?,
            },
            VtepCmd::Del { vni, addr } => Command::VtepDel { vni, addr },
            VtepCmd::Flush { vni } => Command::VtepFlush { vni },
        },
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

/// `dpgwctl top`: rates between two `stats` answers.
fn top(
    socket: &std::path::Path,
    timeout: u64,
    interval: f64,
    iterations: Option<u64>,
    rows: usize,
) -> Result<(), String> {
    use std::collections::BTreeMap;
    use std::io::IsTerminal;
    if !(interval.is_finite() && interval > 0.0) {
        return Err(format!(
            "--interval: {interval} is not a positive number of seconds"
        ));
    }
    let tty = std::io::stdout().is_terminal();
    let mut client = connect(socket, timeout)?;
    let get = |c: &mut Client| -> Result<(StatsReport, std::time::Instant), String> {
        match c.request(Command::Stats).map_err(|e| e.to_string())?.data {
            Some(Data::Stats(s)) => Ok((*s, std::time::Instant::now())),
            _ => Err("unexpected answer to stats".into()),
        }
    };
    let (mut prev, mut t_prev) = get(&mut client)?;
    let mut last_rates: BTreeMap<String, f64> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let (cur, t) = get(&mut client)?;
        let dt = t.duration_since(t_prev).as_secs_f64().max(1e-9);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let mut rates: BTreeMap<String, f64> = BTreeMap::new();
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        let total_rx = rate(cur.total.rx, prev.total.rx);
        let total_tx = rate(cur.total.tx, prev.total.tx);
        out.push_str(&format!(
            "dpgw: generation {} digest {}, up {:.0} s, every {interval} s; rx {} pps, tx {} pps, drops {} pps\n\n",
            cur.generation,
            cur.digest,
            cur.uptime_s,
            si(total_rx),
            si(total_tx),
            si(rate(cur.total.total_drops(), prev.total.total_drops()))
        ));
        let delta = |key: &str, v: f64, rates: &mut BTreeMap<String, f64>| {
            rates.insert(key.to_string(), v);
            match last_rates.get(key) {
                Some(p) if (v - p).abs() >= 0.5 => {
                    format!("{}{}", if v > *p { "+" } else { "" }, si(v - p))
                }
                Some(_) => "=".to_string(),
                None => "new".to_string(),
            }
        };
        // Workers: rate, share of the packets.
        let mut w_rows = Vec::new();
        for w in &cur.workers {
            let p = prev.workers.iter().find(|x| x.worker == w.worker);
            let r = rate(w.rx, p.map_or(0, |p| p.rx));
            let key = format!("w{}", w.worker.unwrap_or(0));
            w_rows.push(vec![
                w.worker.map_or("-".into(), |x| x.to_string()),
                if w.running { "yes".into() } else { "NO".into() },
                si(r),
                format!(
                    "{:.0}%",
                    if total_rx > 0.0 {
                        r * 100.0 / total_rx
                    } else {
                        0.0
                    }
                ),
                delta(&key, r, &mut rates),
            ]);
        }
        out.push_str(&table(
            &["WORKER", "RUNNING", "RX PPS", "SHARE", "CHANGE"],
            &w_rows,
        ));
        // Drops by reason.
        let mut d: Vec<(String, f64)> = cur
            .total
            .drops
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    rate(*v, prev.total.drops.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        let d_rows: Vec<Vec<String>> = d
            .iter()
            .take(rows)
            .map(|(k, r)| vec![k.clone(), si(*r), delta(&format!("d{k}"), *r, &mut rates)])
            .collect();
        out.push('\n');
        out.push_str(&table(&["DROP REASON", "PPS", "CHANGE"], &d_rows));
        // Services.
        let mut sv: Vec<(String, f64, f64)> = cur
            .services
            .iter()
            .map(|x| {
                let p = prev.services.iter().find(|p| p.name == x.name);
                (
                    x.name.clone(),
                    rate(x.packets, p.map_or(0, |p| p.packets)),
                    rate(x.new_flows, p.map_or(0, |p| p.new_flows)),
                )
            })
            .collect();
        sv.sort_by(|a, b| b.1.total_cmp(&a.1));
        let s_rows: Vec<Vec<String>> = sv
            .iter()
            .take(rows)
            .map(|(k, r, f)| {
                vec![
                    k.clone(),
                    si(*r),
                    si(*f),
                    delta(&format!("s{k}"), *r, &mut rates),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["SERVICE", "PPS", "NEW FLOWS/S", "CHANGE"],
            &s_rows,
        ));
        // Backends.
        let mut bv: Vec<(String, String, f64)> = cur
            .backends
            .iter()
            .map(|x| {
                let p = prev
                    .backends
                    .iter()
                    .find(|p| p.service == x.service && p.ip == x.ip);
                (
                    x.service.clone(),
                    x.ip.to_string(),
                    rate(x.packets, p.map_or(0, |p| p.packets)),
                )
            })
            .collect();
        bv.sort_by(|a, b| b.2.total_cmp(&a.2));
        let b_rows: Vec<Vec<String>> = bv
            .iter()
            .take(rows)
            .map(|(s, ip, r)| {
                vec![
                    s.clone(),
                    ip.clone(),
                    si(*r),
                    delta(&format!("b{s}/{ip}"), *r, &mut rates),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["SERVICE", "BACKEND", "PPS", "CHANGE"], &b_rows));
        if !tty {
            out.push('\n');
        }
        let mut so = std::io::stdout().lock();
        if so
            .write_all(out.as_bytes())
            .and_then(|_| so.flush())
            .is_err()
        {
            return Ok(()); // the reader went away
        }
        drop(so);
        last_rates = rates;
        prev = cur;
        t_prev = t;
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
    }
}

/// A rate with an SI suffix: 950, 12.3k, 4.56M.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare address (port 0).
fn endpoint(s: &str, what: &str) -> Result<(IpAddr, u16), String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok((a.ip(), a.port()));
    }
    s.parse::<IpAddr>()
        .map(|ip| (ip, 0))
        .map_err(|_| format!("{what}: {s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

/// Clock time of a timestamp, UTC, to the nanosecond.
fn clock(ts_ns: u64) -> String {
    let s = ts_ns / 1_000_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ts_ns % 1_000_000_000
    )
}

/// `trace` and `capture`: arm a watch, read it until it ends or `timeout`
/// seconds pass, print (trace) or write pcapng (capture).
fn watch(
    socket: &std::path::Path,
    timeout: u64,
    json: bool,
    filter: String,
    count: u64,
    capture: Option<(ctl::CaptureSpec, PathBuf)>,
) -> Result<(), String> {
    let mut client = connect(socket, 10)?;
    let spec = capture.as_ref().map(|c| c.0);
    let r = client
        .call(Command::WatchStart {
            filter,
            count,
            capture: spec,
        })
        .map_err(|e| e.to_string())?;
    if !r.ok {
        return Err(r.error.unwrap_or_else(|| "request failed".into()));
    }
    let Some(Data::WatchStarted { id, workers }) = r.data else {
        return Err("unexpected answer to watch_start".into());
    };
    let mut out: Box<dyn Write> = match &capture {
        Some((_, p)) if p.as_os_str() == "-" => Box::new(std::io::stdout().lock()),
        Some((_, p)) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    if let Some((spec, _)) = &capture {
        let names: Vec<String> = (0..workers).map(|w| format!("dpgw worker {w}")).collect();
        ctl::pcapng::write_header(&mut out, &names, spec.snaplen).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout.max(1));
    let mut n = 0u64;
    let mut stop = false;
    loop {
        let cmd = if stop {
            Command::WatchStop { id }
        } else {
            Command::WatchRead { id }
        };
        let r = client.call(cmd).map_err(|e| e.to_string())?;
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "request failed".into()));
        }
        let Some(Data::Watch(rep)) = r.data else {
            return Err("unexpected answer to watch_read".into());
        };
        let mut failed = None;
        for rec in &rep.records {
            n += 1;
            let res = if capture.is_some() {
                let data = ctl::pcapng::unhex(&rec.data)?;
                let comment = match &rec.reason {
                    Some(reason) => format!("{} {} worker {}", rec.point, reason, rec.worker),
                    None => format!("{} worker {}", rec.point, rec.worker),
                };
                ctl::pcapng::write_packet(
                    &mut out,
                    rec.worker as u32,
                    rec.ts_ns,
                    &data,
                    rec.len,
                    &comment,
                )
            } else if json {
                writeln!(out, "{}", serde_json::to_string(rec).unwrap_or_default())
            } else {
                let to = match (&rec.service, &rec.backend) {
                    (Some(s), Some(b)) => format!(" (service {s}, backend {b})"),
                    (Some(s), None) => format!(" (service {s})"),
                    _ => String::new(),
                };
                let mut t = format!(
                    "#{n} {} worker {} len {}: {}{to}\n",
                    clock(rec.ts_ns),
                    rec.worker,
                    rec.len,
                    rec.verdict
                );
                for s in &rec.steps {
                    t.push_str("    ");
                    t.push_str(s);
                    t.push('\n');
                }
                out.write_all(t.as_bytes())
            };
            if let Err(e) = res {
                failed = Some(e);
                break;
            }
        }
        if let Err(e) = out.flush() {
            failed = Some(e);
        }
        if let Some(e) = failed {
            // The reader went away (e.g. `| head`): stop the watch and end.
            let _ = client.call(Command::WatchStop { id });
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(format!("writing output: {e}"));
        }
        if rep.done {
            let what = if capture.is_some() {
                "captured"
            } else {
                "traced"
            };
            eprintln!(
                "dpgwctl: {n} packet(s) {what}, {} matched, {} lost to full rings (reader too slow)",
                rep.matched, rep.lost
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            stop = true;
            continue;
        }
        if rep.records.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
                        s.scheduler.to_string(),
                        match s.new_flow_rate {
                            0 => "-".into(),
                            r => r.to_string(),
                        },
                        s.backends.len().to_string(),
                        s.health
                            .as_ref()
                            .filter(|h| h.enabled())
                            .map_or("-".into(), |h| {
                                format!("{} {} {}ms", h.kind, h.mode, h.interval_ms)
                            }),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "VNI",
                    "VIP",
                    "PORT",
                    "PROTO",
                    "ENCAP",
                    "TABLE",
                    "SCHEDULER",
                    "RATE_CAP",
                    "BACKENDS",
                    "CHECKS",
                ],
                &rows,
            )
        }
        (Some(Data::Backends { backends }), _) => {
            let rows: Vec<Vec<String>> = backends
                .iter()
                .map(|b| {
                    let h = b.health.as_ref();
                    vec![
                        b.service.clone(),
                        b.backend.ip.to_string(),
                        b.backend.weight.to_string(),
                        b.backend.state.to_string(),
                        b.backend.mac.map_or("-".into(), |m| m.to_string()),
                        h.map_or("-".into(), |h| h.health.to_string()),
                        h.and_then(|h| h.last.clone()).unwrap_or_else(|| "-".into()),
                        h.and_then(|h| h.latency_us)
                            .map_or("-".into(), |us| format!("{:.1}ms", us as f64 / 1e3)),
                        h.map_or("-".into(), |h| format!("{:.1}s", h.since_ms as f64 / 1e3)),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE", "IP", "WEIGHT", "STATE", "MAC", "HEALTH", "LAST", "LATENCY", "SINCE",
                ],
                &rows,
            )
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
                        match r.stateful {
                            Some(true) => "yes".into(),
                            Some(false) => "no".into(),
                            None => "default".into(),
                        },
                    ]
                })
                .collect();
            let mut s = table(
                &[
                    "ID", "PRIO", "VNI", "SRC", "DST", "PROTO", "SPORT", "DPORT", "ACTION",
                    "STATEFUL",
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
        (Some(Data::ConnList(c)), _) => {
            let ep = |ip: &IpAddr, p: u16| match ip {
                IpAddr::V4(a) => format!("{a}:{p}"),
                IpAddr::V6(a) => format!("[{a}]:{p}"),
            };
            let rows: Vec<Vec<String>> = c
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.vni.to_string(),
                        e.proto.clone(),
                        ep(&e.orig, e.orig_port),
                        ep(&e.resp, e.resp_port),
                        e.state.clone(),
                        format!("{:.1}s", e.age_ms as f64 / 1e3),
                        format!("{:.1}s", e.idle_ms as f64 / 1e3),
                        e.worker.to_string(),
                    ]
                })
                .collect();
            let mut s = table(
                &[
                    "VNI",
                    "PROTO",
                    "ORIGINATOR",
                    "RESPONDER",
                    "STATE",
                    "AGE",
                    "IDLE",
                    "WORKER",
                ],
                &rows,
            );
            let live: u64 = c.live.iter().sum();
            s.push_str(&format!(
                "{live} connection(s) ({} per worker, capacity {} each){}\n",
                c.live
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                c.capacity,
                if c.truncated { "; raise --limit" } else { "" }
            ));
            s
        }
        (Some(Data::ConnFlushed { flushed }), _) => {
            format!("flushed {flushed} connection(s)\n")
        }
        (Some(Data::FlowList(f)), _) => {
            let rows: Vec<Vec<String>> = f
                .entries
                .iter()
                .map(|e| {
                    let ep = |ip: &IpAddr, p: u16| match ip {
                        IpAddr::V4(a) => format!("{a}:{p}"),
                        IpAddr::V6(a) => format!("[{a}]:{p}"),
                    };
                    vec![
                        e.worker.to_string(),
                        e.vni.to_string(),
                        e.proto.clone(),
                        ep(&e.src, e.sport),
                        ep(&e.dst, e.dport),
                        e.service.clone().unwrap_or_else(|| "-".into()),
                        e.backend.to_string(),
                        format!("{:.1}s", e.idle_ms as f64 / 1e3),
                    ]
                })
                .collect();
            let mut s = table(
                &[
                    "WORKER", "VNI", "PROTO", "CLIENT", "VIP", "SERVICE", "BACKEND", "IDLE",
                ],
                &rows,
            );
            s.push_str(&format!(
                "{} flow(s) from {} worker(s) in {:.0} ms{}\n",
                f.entries.len(),
                f.workers,
                f.collect_ms,
                if f.truncated {
                    " (more match: raise --limit)"
                } else {
                    ""
                }
            ));
            s
        }
        (Some(Data::Explanation(e)), _) => {
            let mut s = format!("generation {}\n", e.generation);
            for l in &e.steps {
                s.push_str(l);
                s.push('\n');
            }
            for f in &e.flows {
                s.push_str(&format!(
                    "flow table: worker {} has this flow pinned to {} (idle {:.1}s)\n",
                    f.worker,
                    f.backend,
                    f.idle_ms as f64 / 1e3
                ));
            }
            if e.service.is_some() && e.flows.is_empty() {
                s.push_str(
                    "flow table: no worker has this flow (a new flow gets the backend above)\n",
                );
            }
            s
        }
        (Some(Data::Applied(a)), _) => {
            let mut s = String::new();
            for c in &a.changes {
                s.push_str(c);
                s.push('\n');
            }
            for i in &a.ignored {
                s.push_str(&format!(
                    "ignored: {i} (apply sets [[service]] and [acl]; the rest is the daemon's own config)\n"
                ));
            }
            let verb = if a.changes.is_empty() {
                "no change".to_string()
            } else if a.dry_run {
                format!("{} change(s) would be applied (dry run)", a.changes.len())
            } else {
                format!("{} change(s) applied", a.changes.len())
            };
            s.push_str(&format!(
                "{verb}; digest {} -> {}{gen}\n",
                a.digest_before, a.digest_after
            ));
            s
        }
        (Some(Data::Gateway(g)), _) => {
            if !g.configured {
                return format!("{}\n", g.reason);
            }
            let state = if g.announced {
                "announced"
            } else {
                "withdrawn"
            };
            format!(
                "{state} ({}) for {:.1}s, since {}\nprefixes {} via {} table {}{}\ntransitions {}\n",
                g.reason,
                g.since_s,
                rfc3339(g.since_unix),
                g.prefixes.join(", "),
                g.device,
                g.table,
                if g.drained { ", drained by operator" } else { "" },
                g.transitions
            )
        }
        (Some(Data::Tenants { tenants }), _) => {
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.vni.to_string(),
                        format!("{:?}", t.encap).to_lowercase(),
                        t.prefixes.join(","),
                        t.vtep.len().to_string(),
                    ]
                })
                .collect();
            table(&["VNI", "ENCAP", "PREFIXES", "STATIC"], &rows)
        }
        (
            Some(Data::Vteps {
                flushed: Some(n), ..
            }),
            _,
        ) => {
            format!(
                "{n} learned entr{} forgotten\n",
                if *n == 1 { "y" } else { "ies" }
            )
        }
        (Some(Data::Vteps { vteps, .. }), _) => {
            let rows: Vec<Vec<String>> = vteps
                .iter()
                .map(|v| {
                    vec![
                        v.vni.to_string(),
                        v.addr.to_string(),
                        v.vtep.to_string(),
                        v.mac.map_or("-".into(), |m| m.to_string()),
                        v.source.clone(),
                        v.age_s.map_or("-".into(), |a| format!("{a}s")),
                        v.moves.to_string(),
                    ]
                })
                .collect();
            table(
                &["VNI", "ADDRESS", "VTEP", "MAC", "SOURCE", "AGE", "MOVES"],
                &rows,
            )
        }
        (Some(Data::WatchStarted { id, .. }), _) => format!("watch {id} started\n"),
        (Some(Data::Watch(w)), _) => format!("{} record(s)\n", w.records.len()),
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
        "generation {}, table digest {}, up {:.1} s, rates over the last {:.1} s\n",
        s.generation, s.digest, s.uptime_s, s.rate_window_s
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
    out.push_str(&format!(
        "icmp: {} errors to a VIP forwarded to the flow's backend, {} too-big replies sent\n",
        s.icmp_errors_forwarded, s.icmp_too_big_sent
    ));
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
    if !s.conntrack.is_empty() || s.conntrack_live != 0 {
        out.push_str(&format!(
            "\nconntrack ({} live connections):\n",
            s.conntrack_live
        ));
        let rows: Vec<Vec<String>> = s
            .conntrack
            .iter()
            .map(|c| {
                vec![
                    if c.vni == u32::MAX {
                        "other".to_string()
                    } else {
                        c.vni.to_string()
                    },
                    c.created.to_string(),
                    c.hits.to_string(),
                    c.remote_hits.to_string(),
                    c.related.to_string(),
                    c.ct_full.to_string(),
                    c.denied_new.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "VNI",
                "CREATED",
                "HITS",
                "REMOTE_HITS",
                "RELATED",
                "CT_FULL",
                "DENIED_NEW",
            ],
            &rows,
        ));
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
                    x.rate_limited.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["SERVICE", "PACKETS", "BYTES", "NEW_FLOWS", "RATE_LIMITED"],
            &rows,
        ));
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
    let f = &s.fragments;
    if f != &ctl::FragmentCounters::default() {
        out.push_str("\nfragments:\n");
        out.push_str(&table(
            &["FIRST", "ASSOCIATED", "HELD", "RELEASED", "TABLE_FULL"],
            &[vec![
                f.first.to_string(),
                f.associated.to_string(),
                f.held.to_string(),
                f.released.to_string(),
                f.table_full.to_string(),
            ]],
        ));
    }
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
        let c = Cli::try_parse_from([
            "dpgwctl",
            "service",
            "set",
            "web",
            "--scheduler",
            "least_conn",
            "--new-flow-rate",
            "1000",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Service(ServiceCmd::Set {
                new_flow_rate: Some(1000),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["dpgwctl", "backend", "add", "web", "10.0.0.300"]).is_err());
        assert!(Cli::try_parse_from(["dpgwctl", "rule", "add", "--src", "10.0.0.0/8"]).is_err());
    }

    #[test]
    fn test_health_flags() {
        let health = |args: &[&str]| -> Result<Option<HealthSpec>, String> {
            let mut v = vec!["dpgwctl", "service", "health", "web"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).map_err(|e| e.to_string())?.cmd {
                Cmd::Service(ServiceCmd::Health { health, .. }) => health.spec(),
                _ => unreachable!(),
            }
        };
        let h = health(&[
            "--kind",
            "http",
            "--mode",
            "direct",
            "--path",
            "/hz",
            "--interval-ms",
            "200",
            "--timeout-ms",
            "100",
            "--fall",
            "2",
            "--on-down",
            "keep",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!(h.mode, HealthMode::Direct);
        assert_eq!(h.on_down, OnDown::Keep);
        assert_eq!(
            (h.path.as_str(), h.interval_ms, h.timeout_ms, h.rise, h.fall),
            ("/hz", 200, 100, 2, 2)
        );
        assert_eq!(health(&["--kind", "none"]).unwrap(), None);
        assert_eq!(health(&[]).unwrap(), None);
        for (args, key) in [
            (&["--kind", "tpc"][..], "health.kind"),
            (&["--kind", "tcp", "--mode", "x"][..], "health.mode"),
            (&["--kind", "tcp", "--on-down", "x"][..], "health.on_down"),
            (&["--rise", "2"][..], "--kind"),
        ] {
            let e = health(args).unwrap_err();
            assert!(e.contains(key), "{args:?}: {e}");
        }
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
        s.icmp_errors_forwarded = 3;
        let t = format_stats(&s);
        assert!(t.contains("icmp: 3 errors to a VIP forwarded"), "{t}");
        assert!(
            t.contains("DPDK ports:\nPORT  DEVICE     RX    TX  MISSED"),
            "{t}"
        );
        assert!(t.contains("0     net_pcap0  1234  0   7 "), "{t}");
    }

    #[test]
    fn test_stats_shows_fragments_only_when_there_were_some() {
        let mut s = StatsReport::default();
        assert!(!format_stats(&s).contains("fragments:"));
        s.fragments.held = 3;
        s.fragments.associated = 5;
        let t = format_stats(&s);
        assert!(
            t.contains(
                "fragments:\nFIRST  ASSOCIATED  HELD  RELEASED  TABLE_FULL\n0      5           3"
            ),
            "{t}"
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from seconds since the Unix epoch (UTC).
fn rfc3339(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn test_rfc3339() {
        assert_eq!(super::rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_176_800.0), "2026-12-02T02:00:00Z");
        assert_eq!(super::rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
    }
}
