//! Wire types. Field names are the JSON keys; enums are `snake_case`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use acl::{Action, FileSpec, RuleSpec};
pub use lb::{
    BackendSpec, BackendState, EncapKind, Health, HealthKind, HealthMode, HealthSpec, MacAddr,
    OnDown, Proto, Scheduler, ServiceSpec,
};

/// The protocol version this crate speaks (the `v` field of every message).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line a server accepts, in bytes (newline excluded).
/// Large enough for a 10k-rule ClassBench file sent by `rule load`.
pub const MAX_LINE: usize = 4 << 20;

/// The default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/dpgw/dpgw.sock";

/// One request line: `{"v":1,"cmd":"<command>", ...arguments}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// The command and its arguments (flattened into the same object).
    #[serde(flatten)]
    pub cmd: Command,
}

impl Request {
    /// A request in this crate's protocol version.
    pub fn new(cmd: Command) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            cmd,
        }
    }

    /// The request as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        // Serialising these types cannot fail (string keys, no non-finite floats).
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Format of a rule file sent with [`Command::RuleLoad`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleFormat {
    /// TOML with `[[rule]]` (or `[[acl.rule]]`) tables, the fields of `[[acl.rule]]`.
    #[default]
    Toml,
    /// ClassBench filters (IPv4), one rule per line.
    Classbench,
}

/// The commands. `cmd` is the variant name in `snake_case`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Liveness and version check.
    Ping,
    /// Adds a service (with the backends it lists).
    ServiceAdd {
        /// The service, as in `[[service]]`.
        service: ServiceSpec,
    },
    /// Sets (or, with `health` absent, removes) a service's health checks
    /// (`[service.health]`); the checks' state restarts at unknown.
    ServiceHealth {
        /// Service name.
        name: String,
        /// The checks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<HealthSpec>,
    },
    /// Changes a service's scheduler and/or new-flow rate cap (absent =
    /// unchanged); flows already pinned keep their backends.
    ServiceSet {
        /// Service name.
        name: String,
        /// `maglev`, `src_ip`, `round_robin`, `least_conn` or `weighted_least_conn`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<Scheduler>,
        /// New flows per second per worker (0 = no cap).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_flow_rate: Option<u32>,
    },
    /// Removes a service and its backends.
    ServiceDel {
        /// Service name.
        name: String,
    },
    /// Lists the services (desired state).
    ServiceList,
    /// Adds a backend to a service.
    BackendAdd {
        /// Service name.
        service: String,
        /// The backend, as in `[[service.backend]]`.
        backend: BackendSpec,
    },
    /// Removes a backend.
    BackendDel {
        /// Service name.
        service: String,
        /// Backend address.
        ip: IpAddr,
    },
    /// Sets a backend's state (`drain` = `draining`).
    BackendState {
        /// Service name.
        service: String,
        /// Backend address.
        ip: IpAddr,
        /// New state.
        state: BackendState,
    },
    /// Sets a backend's weight.
    BackendWeight {
        /// Service name.
        service: String,
        /// Backend address.
        ip: IpAddr,
        /// New weight (0 = no new flows).
        weight: u32,
    },
    /// Lists backends, of one service or of all.
    BackendList {
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Adds an ACL rule; the daemon assigns its id (the `id` field must be absent).
    RuleAdd {
        /// The rule, as in `[[acl.rule]]`.
        rule: RuleSpec,
    },
    /// Removes an ACL rule by id.
    RuleDel {
        /// Rule id.
        id: u32,
    },
    /// Lists the ACL rules.
    RuleList,
    /// Adds the rules of a file whose content the client read and sends.
    RuleLoad {
        /// Format of `content`.
        #[serde(default)]
        format: RuleFormat,
        /// The file's text.
        content: String,
        /// Replace every inline rule instead of appending.
        #[serde(default)]
        replace: bool,
        /// Action of every ClassBench rule (default `deny`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<Action>,
        /// Restrict every ClassBench rule to one tenant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
    },
    /// Counters: per worker, total, per service/backend/rule, flow tables.
    Stats,
    /// Flow-table summary (per worker, per service and backend).
    Flows {
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// At most this many service/backend rows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// The running state as a TOML config `dpgw run` accepts.
    ConfigDump,
    /// Writes the running state to the config file (or `path`, see the server's policy).
    ConfigSave {
        /// Target path; absent = the file the daemon was started with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// Arms a trace (`capture` absent) or a capture of the next `count`
    /// packets matching `filter` (the grammar of `dpgwctl trace --help`).
    /// One watch at a time; read it with `watch_read`, end it with `watch_stop`
    /// (a watch nobody reads for 10 s stops by itself).
    WatchStart {
        /// The filter expression (empty = every packet).
        #[serde(default)]
        filter: String,
        /// Packets to record.
        count: u64,
        /// Record the packets' bytes instead of the stages' decisions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<CaptureSpec>,
    },
    /// What the watch recorded since the last read.
    WatchRead {
        /// The id `watch_start` returned.
        id: u64,
    },
    /// Ends a watch (and returns what it still held).
    WatchStop {
        /// The id `watch_start` returned.
        id: u64,
    },
    /// Flow-table entries of every worker (collected at burst boundaries).
    FlowsList {
        /// Only flows of this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// Only flows pinned to this backend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<IpAddr>,
        /// Only flows of this VNI.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        /// At most this many entries (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Connection-tracking entries of every worker (stateful ACL rules).
    ConnList {
        /// Only connections of this VNI.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        /// At most this many entries (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Ends tracked connections (all, or one VNI's): their packets are
    /// evaluated by the rules again.
    ConnFlush {
        /// Only connections of this VNI.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
    },
    /// Walks one packet through the live snapshot, stage by stage.
    Explain {
        /// The packet.
        #[serde(flatten)]
        packet: ExplainPacket,
    },
    /// Makes the running services, backends and ACL equal to a desired
    /// config file (its `[[service]]` and `[acl]`), as one snapshot, and
    /// reports the difference. With `dry_run`, only reports it.
    Apply {
        /// The desired file's TOML text (the client reads the file).
        content: String,
        /// Directory relative `[[acl.file]]` paths are resolved against (the
        /// desired file's directory); absent = the daemon's config directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_dir: Option<String>,
        /// Report the difference without changing anything.
        #[serde(default)]
        dry_run: bool,
    },
    /// Withdraws the gateway's route announcement (`[announce]`); the
    /// workers keep forwarding what still arrives.
    GatewayDrain,
    /// Restores the announcement (when the gateway is able to forward).
    GatewayUndrain,
    /// The announcement's state, why, and since when.
    GatewayStatus,
    /// The tenant networks (`[[tenant]]`).
    TenantList,
    /// Adds a tenant network: its VNI and the prefixes the outside reaches
    /// it at.
    TenantAdd {
        /// As in `[[tenant]]`.
        tenant: TenantSpec,
    },
    /// Removes a tenant network (its learned VTEPs are forgotten).
    TenantDel {
        /// Its VNI.
        vni: u32,
    },
    /// Where tenant addresses live: static entries and learned ones.
    VtepList {
        /// Only this tenant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
    },
    /// Adds (or replaces) a static address → VTEP entry of a tenant.
    VtepAdd {
        /// The tenant.
        vni: u32,
        /// The tenant address (inside one of its prefixes).
        addr: IpAddr,
        /// The VTEP's underlay address.
        vtep: IpAddr,
        /// Inner destination MAC of frames to it (absent = broadcast).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<MacAddr>,
    },
    /// Removes a static entry.
    VtepDel {
        /// The tenant.
        vni: u32,
        /// The tenant address.
        addr: IpAddr,
    },
    /// Forgets learned entries (static ones stay).
    VtepFlush {
        /// Only this tenant's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
    },
}

/// How traffic from the outside is carried into a tenant network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayEncap {
    /// VXLAN to `vxlan_ports[0]`.
    #[default]
    Vxlan,
    /// Geneve without options to `geneve_ports[0]` (6081 if none).
    Geneve,
}

/// A tenant network: `[[tenant]]` in the configuration, `tenant_add` on
/// the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Its VNI (24 bits).
    pub vni: u32,
    /// Prefixes of its addresses (`172.16.0.0/16`, `fd10::/48`): a plain IP
    /// packet to one of them is encapsulated into this VNI.
    pub prefixes: Vec<String>,
    /// `vxlan` (default) or `geneve`.
    #[serde(default)]
    pub encap: OverlayEncap,
    /// Static address → VTEP entries (`[[tenant.vtep]]`): used before, and
    /// never displaced by, learned ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vtep: Vec<StaticVtep>,
}

/// One static entry of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticVtep {
    /// The tenant address.
    pub addr: IpAddr,
    /// The VTEP's underlay address.
    pub vtep: IpAddr,
    /// Inner destination MAC (absent = broadcast, which a kernel VXLAN
    /// device accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// One address → VTEP entry as `vtep_list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepRow {
    pub vni: u32,
    pub addr: IpAddr,
    pub vtep: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// `static` or `learned`.
    pub source: String,
    /// Seconds since a packet last confirmed it (learned entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u32>,
    /// Times it moved to another VTEP or MAC (learned entries).
    #[serde(default)]
    pub moves: u32,
}

/// Outside → overlay traffic and the address → VTEP table, summed over
/// the workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayCounters {
    /// Plain IP packets encapsulated into a tenant network.
    pub encapsulated: u64,
    /// Of them, to a static entry.
    pub to_static: u64,
    /// Entries learned (new addresses).
    pub learned: u64,
    /// Learned addresses that moved to another VTEP or MAC.
    pub moved: u64,
    /// New entries that replaced the least recently used one of a full set.
    pub evicted: u64,
    /// New addresses not learned: the per-worker learning rate was spent.
    pub learn_limited: u64,
    /// Not learned this time: another worker was writing the same set.
    pub learn_busy: u64,
    /// Live learned entries.
    pub entries: u64,
}

/// Where `capture` takes packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePoint {
    /// As received.
    #[default]
    Rx,
    /// As transmitted.
    Tx,
    /// Dropped packets, as received.
    Drop,
    /// Each packet as received, then as transmitted or dropped.
    All,
}

/// A capture's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// Where.
    #[serde(rename = "where", default)]
    pub at: CapturePoint,
    /// Bytes kept of each packet.
    pub snaplen: u32,
}

/// The packet `explain` walks through the pipeline: a VXLAN frame to the
/// gateway's VTEP carrying this inner flow (a TCP SYN, a UDP datagram, an
/// ICMP echo request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainPacket {
    /// VNI.
    pub vni: u32,
    /// Inner source address and port.
    pub src: IpAddr,
    #[serde(default)]
    pub sport: u16,
    /// Inner destination address and port.
    pub dst: IpAddr,
    #[serde(default)]
    pub dport: u16,
    /// `tcp`, `udp`, `icmp` (ICMPv6 for IPv6 addresses).
    pub proto: String,
    /// Inner payload bytes (to check the MTU verdict).
    #[serde(default)]
    pub payload: usize,
}

impl Command {
    /// True for commands that change the desired state.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Command::ServiceAdd { .. }
                | Command::ServiceHealth { .. }
                | Command::ServiceSet { .. }
                | Command::ServiceDel { .. }
                | Command::BackendAdd { .. }
                | Command::BackendDel { .. }
                | Command::BackendState { .. }
                | Command::BackendWeight { .. }
                | Command::RuleAdd { .. }
                | Command::RuleDel { .. }
                | Command::RuleLoad { .. }
                | Command::TenantAdd { .. }
                | Command::TenantDel { .. }
                | Command::VtepAdd { .. }
                | Command::VtepDel { .. }
        )
    }
}

/// Why a request failed, for scripts: stable names (the `error` message is
/// for people and may change). Every error response carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a request of this protocol: not JSON, not an object, a missing or
    /// other protocol version, an unknown command or field, a value of the
    /// wrong type, a line over the size limit.
    BadRequest,
    /// The named service, backend or rule does not exist.
    NotFound,
    /// A service, VIP, backend or rule id that already exists.
    AlreadyExists,
    /// A value is out of range or malformed, or the change would leave the
    /// configuration invalid; nothing was applied.
    Invalid,
    /// A valid request the daemon will not carry out (e.g. `config save`
    /// outside the config file's directory).
    Refused,
    /// The daemon failed to carry out a valid request (I/O, a table build
    /// that validation did not foresee); nothing was applied.
    Internal,
}

impl ErrorCode {
    /// The stable name, as in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Refused => "refused",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version of the server.
    pub v: u32,
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong (when `ok` is false), naming the field or value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it went wrong, machine-readable (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Generation of the snapshot live after this request (mutations and stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// For mutations: `true` once every running worker used the new snapshot,
    /// `false` if the bounded wait ended first (the snapshot is published anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

impl Response {
    /// A successful response.
    pub fn ok(data: Option<Data>) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            error: None,
            code: None,
            generation: None,
            live: None,
            data,
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, msg: impl Into<String>) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            error: Some(msg.into()),
            code: Some(code),
            generation: None,
            live: None,
            data: None,
        }
    }

    /// The response as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"v\":{PROTOCOL_VERSION},\"ok\":false,\"error\":\"cannot serialise response: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// Response payloads; `kind` names the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Data {
    /// Answer to `ping`.
    Pong {
        /// Daemon version.
        version: String,
        /// Number of workers.
        workers: usize,
    },
    /// Ids of the rules a `rule_add` / `rule_load` created.
    RuleIds {
        /// The ids, in order.
        ids: Vec<u32>,
    },
    /// Services (with their backends).
    Services {
        /// In name order.
        services: Vec<ServiceSpec>,
    },
    /// Backends.
    Backends {
        /// In service-name order, then configuration order.
        backends: Vec<BackendRow>,
    },
    /// ACL rules.
    Rules {
        /// Default action when no rule matches.
        default: Action,
        /// Inline rules (each with its id), in insertion order.
        rules: Vec<RuleSpec>,
        /// Rule files the daemon was configured with (their rules have no ids).
        files: Vec<FileSpec>,
    },
    /// Counters.
    Stats(Box<StatsReport>),
    /// Flow tables.
    Flows(FlowsReport),
    /// The running configuration.
    Config {
        /// TOML text.
        toml: String,
    },
    /// Where `config_save` wrote.
    Saved {
        /// Absolute path.
        path: String,
        /// Bytes written.
        bytes: usize,
    },
    /// A watch was armed.
    WatchStarted {
        /// Its id, for `watch_read` / `watch_stop`.
        id: u64,
        /// The number of workers (one pcapng interface each).
        workers: usize,
    },
    /// Records of a watch.
    Watch(WatchReport),
    /// Flow-table entries.
    FlowList(FlowListReport),
    /// Connection-tracking entries.
    ConnList(ConnListReport),
    /// Connections ended by `conn_flush`.
    ConnFlushed {
        /// Live entries before the flush (of the VNI, if one was given).
        flushed: u64,
    },
    /// The walk of one packet through the pipeline.
    Explanation(Explanation),
    /// What `apply` changed (or, dry, would change).
    Applied(ApplyReport),
    /// The gateway's announcement.
    Gateway(GatewayReport),
    /// Tenant networks.
    Tenants {
        /// In VNI order.
        tenants: Vec<TenantSpec>,
    },
    /// Address → VTEP entries.
    Vteps {
        /// Static ones first, then learned ones; each by VNI and address.
        vteps: Vec<VtepRow>,
        /// How many learned entries were forgotten (`vtep_flush`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flushed: Option<u64>,
    },
}

/// The difference between the running state and a desired file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Nothing was changed because `dry_run` was asked.
    pub dry_run: bool,
    /// One line per mutation, `+` added, `-` removed, `~` changed, in the
    /// order services, backends, ACL. Empty = already equal.
    pub changes: Vec<String>,
    /// Sections of the file that `apply` does not set (they are the daemon's
    /// own config; change them in its file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// Table digest before.
    pub digest_before: String,
    /// Table digest after (dry run: what it would be).
    pub digest_after: String,
}

/// Flow-state sharing with the other gateways (`[fleet]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Entries of the store of peers' choices.
    pub capacity: u64,
    /// Our new flows sent (records), in datagrams and bytes (to all peers).
    pub sent_records: u64,
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    /// Datagrams received (accepted or not) and records accepted.
    pub received_datagrams: u64,
    pub received_records: u64,
    /// Records written into the store; of them, replacing another live flow.
    pub installed: u64,
    pub evicted: u64,
    /// Flow-table misses that took a peer's choice.
    pub used: u64,
    /// Refused datagrams, by reason.
    pub rejected_unknown_peer: u64,
    pub rejected_malformed: u64,
    pub rejected_bad_mac: u64,
    pub rejected_replay: u64,
    /// New flows not sent because the queue to the sync thread was full.
    pub queue_full: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// Each configured peer.
    pub peers: Vec<FleetPeer>,
}

/// One peer of the fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetPeer {
    /// Its `fleet.listen` address.
    pub addr: String,
    /// Seconds since its last valid datagram (absent: never heard).
    pub last_heard_s: Option<f64>,
    /// Unheard for 3 s or more (or never).
    pub silent: bool,
}

/// Whether the gateway announces its routes, and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// An `[announce]` section is configured.
    pub configured: bool,
    /// The routes are in the kernel table the routing daemon imports.
    pub announced: bool,
    /// The operator asked for a drain.
    pub drained: bool,
    /// Why the state is what it is (`announcing`, `drained by operator`,
    /// `next hop unresolved`, `no healthy service`, `workers stopped`, …).
    pub reason: String,
    /// Seconds since the state last changed.
    pub since_s: f64,
    /// When it changed (seconds since the Unix epoch).
    pub since_unix: f64,
    /// The announced prefixes.
    pub prefixes: Vec<String>,
    /// The device the routes point to (lives and dies with the process).
    pub device: String,
    /// The kernel routing table.
    pub table: u32,
    /// Changes of the announcement since start.
    pub transitions: u64,
}

/// What a watch recorded since the last read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    /// The records, oldest first (per worker).
    pub records: Vec<WatchRecord>,
    /// Packets that matched so far (recorded or lost).
    pub matched: u64,
    /// Records lost because a worker's ring was full (the reader was slow).
    pub lost: u64,
    /// True when the watch has ended (count reached or stopped) and every
    /// record was handed out.
    pub done: bool,
}

/// One recorded packet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Worker that handled it.
    pub worker: usize,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// `rx`, `tx`, `drop`, `punt` (captures) or `trace`.
    pub point: String,
    /// Drop reason, for `drop` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Length of the frame at that point.
    pub len: u32,
    /// The frame's bytes (cut at the snap length), hex; captures only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// A trace: what each stage decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Final verdict: `tx`, `punt` or the drop reason.
    pub verdict: String,
    /// Service and backend the load balancer chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
}

/// One flow-table entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    /// Worker whose table holds it.
    pub worker: usize,
    /// VNI.
    pub vni: u32,
    /// `tcp`, `udp`, or the protocol number.
    pub proto: String,
    /// Client address and port.
    pub src: IpAddr,
    pub sport: u16,
    /// Service VIP and port.
    pub dst: IpAddr,
    pub dport: u16,
    /// Service (if the VIP is still configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The backend the flow is pinned to.
    pub backend: IpAddr,
    /// Milliseconds since its last packet.
    pub idle_ms: u64,
}

/// Answer to `flows_list`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowListReport {
    /// Entries, by worker.
    pub entries: Vec<FlowEntry>,
    /// More entries matched than `limit`.
    pub truncated: bool,
    /// Workers that answered (a stopped worker's table is not read).
    pub workers: usize,
    /// Milliseconds the daemon took to collect the entries from the workers.
    #[serde(default)]
    pub collect_ms: f64,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    /// The worker whose table holds it (the one that saw its first packet).
    pub worker: usize,
    pub vni: u32,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub proto: String,
    /// The side that opened it.
    pub orig: IpAddr,
    pub orig_port: u16,
    /// The other side (its packets are replies).
    pub resp: IpAddr,
    pub resp_port: u16,
    /// `syn_sent`, `established`, `closing`, `closed` (TCP) or `active`.
    pub state: String,
    /// Milliseconds since it was created.
    pub age_ms: u64,
    /// Milliseconds since its last packet (either direction).
    pub idle_ms: u64,
}

/// Answer to `conn_list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnListReport {
    pub entries: Vec<ConnEntry>,
    /// More entries matched than `limit`.
    pub truncated: bool,
    /// Live entries per worker (of the VNI, if one was given).
    pub live: Vec<u64>,
    /// Entries per worker table.
    pub capacity: u64,
}

/// Connection tracking counters of one VNI (`stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnCounters {
    /// The VNI (4294967295 = VNIs past a worker's per-VNI counter limit).
    pub vni: u32,
    /// Connections created by stateful rules.
    pub created: u64,
    /// Packets of known connections (passed without the rules).
    pub hits: u64,
    /// Of `hits`: found in another worker's table.
    pub remote_hits: u64,
    /// ICMP errors quoting a known connection (passed).
    pub related: u64,
    /// New connections dropped because the table was full.
    pub ct_full: u64,
    /// Packets of no known connection denied by the rules.
    pub denied_new: u64,
}

/// Answer to `explain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Snapshot generation walked.
    pub generation: u64,
    /// One line per stage.
    pub steps: Vec<String>,
    /// Final verdict: `tx`, `punt` or the drop reason.
    pub verdict: String,
    /// Service and backend a new flow gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    /// Existing entries of this flow in the workers' flow tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowEntry>,
}

/// A backend with its service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRow {
    /// Service name.
    pub service: String,
    /// The backend.
    pub backend: BackendSpec,
    /// Its health checks' state (absent when the service has no checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthRow>,
}

/// The health checker's view of one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRow {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub ip: IpAddr,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: Health,
    /// The last check's result: `ok`, `timeout`, `refused`, `http 503`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// The last successful check's round trip, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Milliseconds since the last change of `health` (or since checks began).
    pub since_ms: u64,
    /// Checks completed.
    pub checks: u64,
}

/// The health checker's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Every checked backend.
    pub backends: Vec<HealthRow>,
    /// Completed checks by result class (`ok`, `timeout`, `refused`, `http_status`, `reset`, `bad_response`).
    pub results: BTreeMap<String, u64>,
    /// Health changes since the daemon started.
    pub transitions: u64,
    /// Services with checks whose every backend is unhealthy (new flows are dropped as `no_backend`).
    pub unhealthy_services: Vec<String>,
}

/// Packet counters of one worker (or of all, `worker == None`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Worker index; `None` for the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<usize>,
    /// Still running (not exited).
    pub running: bool,
    /// Snapshot generation the worker last used.
    pub generation: u64,
    /// Received packets.
    pub rx: u64,
    /// Transmitted packets.
    pub tx: u64,
    /// Frames for the gateway itself handed to the slow path (not drops:
    /// `rx == tx + punted + Σ drops`).
    #[serde(default)]
    pub punted: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Non-empty bursts.
    pub bursts: u64,
    /// Receive rate over the daemon's last sampling window, Mpps.
    pub rx_mpps: f64,
    /// Transmit rate over the same window, Mpps.
    pub tx_mpps: f64,
    /// Drops by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

impl WorkerCounters {
    /// Sum of all drop reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Counters of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounters {
    /// Service name.
    pub name: String,
    /// False if the service was deleted (its counters are kept).
    pub configured: bool,
    /// Packets sent to a backend.
    pub packets: u64,
    /// Bytes sent to a backend.
    pub bytes: u64,
    /// Flows created.
    pub new_flows: u64,
    /// New flows over the service's `new_flow_rate`: forwarded where the
    /// hash points, not stored in the flow table.
    #[serde(default)]
    pub rate_limited: u64,
}

/// Counters of one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub ip: IpAddr,
    /// Current state, `None` if no longer configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BackendState>,
    /// Current weight, `None` if no longer configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Packets sent to it.
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Flows pinned to it.
    pub new_flows: u64,
}

/// Hits of one ACL rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounters {
    /// Rule id.
    pub id: u32,
    /// Packets matched.
    pub hits: u64,
}

/// The fragment path, all workers: later fragments of a VIP datagram sent
/// where its first fragment went. Drops are drop reasons
/// (`frag_unmatched`, `frag_hold_full`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentCounters {
    /// First fragments to a service that made (or renewed) an association.
    pub first: u64,
    /// Later fragments sent on with their datagram's ports.
    pub associated: u64,
    /// Later fragments held because they came before their first fragment.
    pub held: u64,
    /// Of `associated`: held ones sent on once their first fragment came.
    pub released: u64,
    /// Associations that replaced a live one (the table's set was full).
    pub table_full: u64,
}

/// Flow-table use (of one worker, or summed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableCounters {
    /// Worker index; `None` for the sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<usize>,
    /// Entries in use.
    pub in_use: u64,
    /// Capacity.
    pub capacity: u64,
    /// Lookups that found the flow.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries expired by idle timeout.
    pub expirations: u64,
    /// Of `evictions`: probationary entries (flows seen once).
    #[serde(default)]
    pub evicted_probationary: u64,
    /// Of `evictions`: protected entries (established flows).
    #[serde(default)]
    pub evicted_protected: u64,
    /// Entries promoted to the protected segment (their flow's second packet).
    #[serde(default)]
    pub promoted: u64,
    /// Protected entries demoted to make room for a promotion.
    #[serde(default)]
    pub demoted: u64,
    /// Entries whose timeout a FIN shortened.
    #[serde(default)]
    pub closed: u64,
    /// Entries a client RST ended.
    #[serde(default)]
    pub reset: u64,
    /// Flows re-selected (backend removed, down, or a SYN to one that takes
    /// no new flows).
    #[serde(default)]
    pub rehomed: u64,
    /// New flows over their service's `new_flow_rate` (not stored).
    #[serde(default)]
    pub rate_limited: u64,
}

/// Answer to `stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Generation of the published snapshot.
    pub generation: u64,
    /// Digest of the forwarding tables of that snapshot (services, backends
    /// with their effective state, Maglev tables, ACL): equal on two gateways
    /// means they send every packet to the same place.
    #[serde(default)]
    pub digest: String,
    /// Seconds since the control server started.
    pub uptime_s: f64,
    /// Length of the window the Mpps figures are computed over, seconds.
    pub rate_window_s: f64,
    /// Per worker.
    pub workers: Vec<WorkerCounters>,
    /// All workers.
    pub total: WorkerCounters,
    /// Per service (configured ones and deleted ones with traffic).
    pub services: Vec<ServiceCounters>,
    /// Per backend.
    pub backends: Vec<BackendCounters>,
    /// Per rule with an id.
    pub rules: Vec<RuleCounters>,
    /// Flow tables, per worker.
    pub flow_tables: Vec<FlowTableCounters>,
    /// Flow tables, summed.
    pub flow_total: FlowTableCounters,
    /// Fragments of VIP traffic, summed.
    #[serde(default)]
    pub fragments: FragmentCounters,
    /// Counters of the DPDK ports (empty unless the daemon runs on DPDK).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortCounters>,
    /// Flow-state sharing (absent without `[fleet]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    /// Backend health checks.
    #[serde(default)]
    pub health: HealthReport,
    /// ICMP errors to a VIP (fragmentation needed / packet too big,
    /// unreachable, time exceeded) sent on to the backend owning the flow
    /// they quote.
    #[serde(default)]
    pub icmp_errors_forwarded: u64,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" replies the
    /// gateway sent for packets too big to encapsulate or route.
    #[serde(default)]
    pub icmp_too_big_sent: u64,
    /// Outside → overlay traffic and address learning (absent without
    /// `[[tenant]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayCounters>,
    /// Connection tracking per VNI (VNIs with any count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conntrack: Vec<ConnCounters>,
    /// Live tracked connections, all workers (counted when asked).
    #[serde(default)]
    pub conntrack_live: u64,
}

/// Counters of one DPDK port, as the driver keeps them (`rte_eth_stats`):
/// what reached the port, including what dpgw never saw (`imissed`,
/// `rx_nombuf`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// DPDK port id.
    pub port: u16,
    /// Device name (`0000:01:00.0`, `net_pcap0`, ...).
    pub name: String,
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the device dropped because no RX descriptor was free (the
    /// workers did not keep up).
    pub imissed: u64,
    /// Erroneous packets received.
    pub ierrors: u64,
    /// Packets the device failed to send.
    pub oerrors: u64,
    /// RX mbuf allocation failures (the mbuf pool ran dry).
    pub rx_nombuf: u64,
}

/// Flows of one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// Service name.
    pub service: String,
    /// Backend address (`None`: the service's row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    /// Flows created since start.
    pub new_flows: u64,
    /// Packets.
    pub packets: u64,
}

/// Answer to `flows`. Flow tables are per worker and private to it, so the
/// daemon reports what workers publish: table use and per-service/backend
/// flow counts, not individual entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowsReport {
    /// Per worker.
    pub tables: Vec<FlowTableCounters>,
    /// Summed.
    pub total: FlowTableCounters,
    /// Per service, then its backends.
    pub rows: Vec<FlowRow>,
    /// Rows left out by `limit`.
    pub truncated: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_round_trip() {
        let mut svc = ServiceSpec::new("web", "10.99.0.1".parse().unwrap(), 80, Proto::Tcp);
        svc.vni = Some(7);
        svc.backends
            .push(BackendSpec::new("192.168.0.1".parse().unwrap()));
        let cmds = vec![
            Command::Ping,
            Command::ServiceAdd { service: svc },
            Command::BackendAdd {
                service: "web".into(),
                backend: BackendSpec::new("192.168.0.2".parse().unwrap()),
            },
            Command::BackendState {
                service: "web".into(),
                ip: "192.168.0.2".parse().unwrap(),
                state: BackendState::Draining,
            },
            Command::RuleLoad {
                format: RuleFormat::Classbench,
                content: "@1.2.3.4/32\t0.0.0.0/0\t0 : 65535\t80 : 80\t0x06/0xFF\n".into(),
                replace: true,
                action: Some(Action::Deny),
                vni: None,
            },
            Command::Flows {
                service: None,
                limit: Some(3),
            },
            Command::ConfigSave { path: None },
            Command::ServiceSet {
                name: "web".into(),
                scheduler: Some(Scheduler::LeastConn),
                new_flow_rate: None,
            },
        ];
        for c in cmds {
            let line = Request::new(c.clone()).to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(back.cmd, c, "{line}");
        }
    }

    #[test]
    fn test_bad_requests_name_the_problem() {
        let e = serde_json::from_str::<Request>(r#"{"v":1,"cmd":"service_frob"}"#).unwrap_err();
        assert!(e.to_string().contains("service_frob"), "{e}");
        let e =
            serde_json::from_str::<Request>(r#"{"v":1,"cmd":"rule_del","id":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = serde_json::from_str::<Request>(
            r#"{"v":1,"cmd":"backend_weight","service":"a","ip":"1.2.3.999","weight":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
    }

    #[test]
    fn test_response_round_trip() {
        let mut r = Response::ok(Some(Data::RuleIds { ids: vec![4] }));
        r.generation = Some(9);
        r.live = Some(true);
        let back: Response = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
        let mut s = StatsReport::default();
        s.total.drops.insert("acl_deny".into(), 3);
        let r = Response::ok(Some(Data::Stats(Box::new(s))));
        let back: Response = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
        let e = Response::error(ErrorCode::Internal, "boom");
        assert_eq!(
            e.to_line(),
            "{\"v\":1,\"ok\":false,\"error\":\"boom\",\"code\":\"internal\"}\n"
        );
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::Invalid,
            ErrorCode::Refused,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
    }
}
