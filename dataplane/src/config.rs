//! The TOML configuration (`dpgw run --config FILE`, `dpgw replay --config FILE`).
//!
//! Every section is `deny_unknown_fields`; a syntax or type error names the line,
//! column and key (the `toml` crate's spans), and [`Config::validate`] lists every
//! semantic problem at once instead of stopping at the first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A problem with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcap: Option<PcapSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afpacket: Option<AfPacketSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<AfXdpSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkSection>,
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSection>,
    /// Route announcement for ECMP through a routing daemon (`announce.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceSection>,
    /// Flow-state sharing with the other gateways (`fleet.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSection>,
    /// Tenant networks the outside reaches through the gateway: `[[tenant]]`
    /// with `vni`, `prefixes`, `encap`, `[[tenant.vtep]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant: Vec<ctl::TenantSpec>,
    /// The learned address → VTEP table of the tenants (`[fdb]`).
    #[serde(default, skip_serializing_if = "FdbSection::is_default")]
    pub fdb: FdbSection,
    /// Connection tracking for stateful ACL rules (`conntrack.rs`).
    #[serde(default)]
    pub conntrack: ConntrackSection,
    /// Tenant ACL: `[acl]` with `default`, `[[acl.vni]]`, `[[acl.rule]]`, `[[acl.file]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<acl::AclSpec>,
    /// Load-balanced services: `[[service]]` with `[[service.backend]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<lb::ServiceSpec>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoKind {
    #[default]
    Pcap,
    Afpacket,
    Afxdp,
    Dpdk,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Number of worker threads (one queue each).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// CPU ids to pin workers to, in worker order. Empty = cores 0.. in order
    /// (wrapping around the available cores).
    #[serde(default)]
    pub cores: Vec<usize>,
    /// CPU ids for every thread that is not a worker (the control server,
    /// health checker, slow path, route announcer, fleet link, ACL
    /// recompiles). Empty = wherever the scheduler puts them, which can be a
    /// worker's core. Ignored with `no_pin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_cores: Vec<usize>,
    /// Packets per burst (1..=256).
    #[serde(default = "default_burst")]
    pub burst: usize,
    #[serde(default)]
    pub io: IoKind,
    /// Do not pin workers (useful on a busy laptop).
    #[serde(default)]
    pub no_pin: bool,
    /// Flow-table entries per worker (connection tracking for services).
    #[serde(default = "default_flow_capacity")]
    pub flow_capacity: usize,
    /// Per-worker cache of ACL results by exact flow key, in entries (a power
    /// of two, 64 B each; 0 = classify every packet). Cleared whenever the
    /// rules change, so it never changes a verdict, only its cost.
    #[serde(default = "default_acl_cache")]
    pub acl_cache: usize,
    /// Idle timeout of a TCP flow, seconds.
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout_s: u32,
    /// Idle timeout of a UDP flow, seconds.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout_s: u32,
    /// Idle timeout of a TCP flow once the client sent a FIN, seconds.
    #[serde(default = "default_fin_timeout")]
    pub fin_timeout_s: u32,
    /// Entries of each worker's fragment association table (a power of
    /// two): a datagram's later fragments find its first fragment's ports
    /// there.
    #[serde(default = "default_frag_table_size")]
    pub frag_table_size: usize,
    /// Lifetime of a fragment association after the last fragment that
    /// used it, milliseconds.
    #[serde(default = "default_frag_timeout")]
    pub frag_timeout_ms: u64,
    /// How long a later fragment that came before its first fragment is
    /// held, milliseconds.
    #[serde(default = "default_frag_hold")]
    pub frag_hold_ms: u64,
    /// Fragments each worker holds at most (0 = hold none: a fragment ahead
    /// of its first is dropped at once, as `frag_hold_full`).
    #[serde(default = "default_frag_hold_slots")]
    pub frag_hold_slots: usize,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            workers: default_workers(),
            cores: Vec::new(),
            control_cores: Vec::new(),
            burst: default_burst(),
            io: IoKind::Pcap,
            no_pin: false,
            flow_capacity: default_flow_capacity(),
            acl_cache: default_acl_cache(),
            tcp_timeout_s: default_tcp_timeout(),
            udp_timeout_s: default_udp_timeout(),
            fin_timeout_s: default_fin_timeout(),
            frag_table_size: default_frag_table_size(),
            frag_timeout_ms: default_frag_timeout(),
            frag_hold_ms: default_frag_hold(),
            frag_hold_slots: default_frag_hold_slots(),
        }
    }
}

fn default_workers() -> usize {
    1
}
fn default_burst() -> usize {
    32
}
fn default_flow_capacity() -> usize {
    65_536
}
fn default_acl_cache() -> usize {
    4096
}
fn default_tcp_timeout() -> u32 {
    300
}
fn default_udp_timeout() -> u32 {
    30
}
fn default_fin_timeout() -> u32 {
    10
}
fn default_frag_table_size() -> usize {
    1024
}
fn default_frag_timeout() -> u64 {
    1000
}
fn default_frag_hold() -> u64 {
    5
}
fn default_frag_hold_slots() -> usize {
    32
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PcapSection {
    /// Input captures (pcap or pcapng), replayed in order. Relative paths are
    /// relative to the config file.
    #[serde(default)]
    pub input: Vec<PathBuf>,
    /// Output capture for transmitted packets (pcap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Times to replay the input; 0 = forever (until SIGINT/SIGTERM).
    #[serde(default = "default_loops")]
    pub loops: u64,
    /// How the frames are spread over the workers.
    #[serde(default)]
    pub split: PcapSplit,
}

/// How a pcap replay spreads its frames over the workers. Both keep every
/// flow (both directions: a symmetric hash of the outer addresses and
/// ports) on one worker.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PcapSplit {
    /// Like a NIC's RSS: the hash modulo the workers. With few flows the
    /// workers get unequal shares (1000 flows over 2: 47 % and 53 % in the
    /// benchmark suite's capture), and the replay takes as long as the
    /// largest share.
    #[default]
    Rss,
    /// Flows (by hash) dealt out so that the workers get equal packet
    /// counts, largest flow first, each to the least loaded worker so far:
    /// what measuring the workers' scaling wants.
    Balanced,
}

fn default_loops() -> u64 {
    1
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AfPacketSection {
    /// Interfaces to receive on.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Interface to transmit on (default: the first interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_interface: Option<String>,
    /// RX ring: block size in bytes (power of two, multiple of the page size).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default = "default_block_count")]
    pub block_count: u32,
    /// TX ring frames.
    #[serde(default = "default_tx_frames")]
    pub tx_frames: u32,
    /// Sleep in poll(2) when idle instead of spinning.
    #[serde(default)]
    pub poll_when_idle: bool,
    #[serde(default = "default_true")]
    pub promiscuous: bool,
    /// RX ring: a partly filled block is handed to us after this many ms
    /// (TPACKET_V3 `tp_retire_blk_tov`; bounds the latency at low rates).
    #[serde(default = "default_block_timeout_ms")]
    pub block_timeout_ms: u32,
}

/// `[afxdp]`: XDP sockets (`dataplane.io = "afxdp"`, `io::afxdp`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AfXdpSection {
    /// Interfaces to receive on (dpgw attaches its XDP program to each).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Interface to transmit on (default: the first interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_interface: Option<String>,
    /// Entries of each ring (fill, RX, TX, completion), and UMEM frames per
    /// direction: a power of two in 64..=16384.
    #[serde(default = "default_xdp_ring")]
    pub ring_size: u32,
    /// Where the XDP program runs: in the driver (`native`), in the kernel's
    /// generic hook (`generic`), or native with a fallback (`auto`).
    #[serde(default)]
    pub mode: XdpMode,
    /// Sleep in poll(2) when idle instead of spinning.
    #[serde(default)]
    pub poll_when_idle: bool,
}

impl Default for AfXdpSection {
    fn default() -> AfXdpSection {
        AfXdpSection {
            interfaces: Vec::new(),
            tx_interface: None,
            ring_size: default_xdp_ring(),
            mode: XdpMode::Auto,
            poll_when_idle: false,
        }
    }
}

fn default_xdp_ring() -> u32 {
    2048
}

/// `afxdp.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

fn default_block_timeout_ms() -> u32 {
    1
}

fn default_block_size() -> u32 {
    1 << 20
}
fn default_block_count() -> u32 {
    16
}
fn default_tx_frames() -> u32 {
    4096
}
fn default_true() -> bool {
    true
}

/// `[dpdk]`: the DPDK backend (`dataplane.io = "dpdk"`, a dpgw built with
/// `--features dpdk`). The one DPDK configuration type: the backend takes it
/// as it is (`io::dpdk::DpdkConfig` is this type).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    /// EAL arguments, exactly as on a DPDK command line (`-a 0000:01:00.0`,
    /// `--vdev=net_null0`, `--no-huge`, `-m 256`, `-l 0`, `--file-prefix=x`, ...).
    /// The program name (`argv[0]`) is added.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Ports to receive on (DPDK port ids). Each worker polls its queue on every
    /// one of them in turn.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Port to transmit on (default: the first RX port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_port: Option<u16>,
    /// RX descriptors per queue (the driver may round it to its limits).
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    /// TX descriptors per queue (the driver may round it to its limits).
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// Mbufs in the pool of each NUMA socket in use (best as 2^n - 1).
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Per-lcore mempool cache size (0 disables the cache; at most 512).
    #[serde(default = "default_mbuf_cache")]
    pub mbuf_cache: u32,
    /// Spread flows over the workers' RX queues with RSS, when the device has it
    /// and there is more than one worker.
    #[serde(default = "default_true")]
    pub rss: bool,
    /// Put the ports in promiscuous mode (ignored where the driver cannot).
    #[serde(default = "default_true")]
    pub promiscuous: bool,
}

impl Default for DpdkSection {
    fn default() -> Self {
        DpdkSection {
            eal_args: Vec::new(),
            ports: default_ports(),
            tx_port: None,
            rx_desc: default_desc(),
            tx_desc: default_desc(),
            mbufs: default_mbufs(),
            mbuf_cache: default_mbuf_cache(),
            rss: true,
            promiscuous: true,
        }
    }
}

fn default_ports() -> Vec<u16> {
    vec![0]
}
fn default_desc() -> u16 {
    1024
}
fn default_mbufs() -> u32 {
    8191
}
fn default_mbuf_cache() -> u32 {
    256
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NonVip {
    /// Route decapsulated non-service traffic to the next hop.
    #[default]
    Forward,
    /// Drop it (reason `non_vip`).
    Drop,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Our VTEP addresses; VXLAN to any other destination is dropped
    /// (`wrong_vtep`). Empty = accept any destination.
    #[serde(default)]
    pub vtep_ips: Vec<IpAddr>,
    /// UDP ports that carry VXLAN.
    #[serde(default = "default_vxlan_ports")]
    pub vxlan_ports: Vec<u16>,
    /// UDP ports that carry Geneve (RFC 8926, IANA port 6081). Empty = no
    /// Geneve decapsulation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub geneve_ports: Vec<u16>,
    /// Source MAC of everything we transmit.
    #[serde(default = "default_local_mac", with = "mac_serde")]
    pub local_mac: [u8; 6],
    /// Destination MAC of everything we transmit (the next-hop router).
    #[serde(default = "default_next_hop_mac", with = "mac_serde")]
    pub next_hop_mac: [u8; 6],
    /// What to do with decapsulated traffic that is not for a service VIP.
    #[serde(default)]
    pub non_vip: NonVip,
    /// Outer source addresses for encapsulation to backends (one IPv4 and/or one IPv6).
    #[serde(default)]
    pub underlay_ips: Vec<IpAddr>,
    /// MTU of the transmit link (bytes of IP packet).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Next-hop router to resolve by ARP/ND (AF_PACKET slow path); its learned
    /// MAC replaces `next_hop_mac`. Absent = `next_hop_mac` is used as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_ip: Option<IpAddr>,
    /// Seconds between re-resolutions of `next_hop_ip` (unanswered for three
    /// periods = unresolved again).
    #[serde(default = "default_next_hop_refresh_s")]
    pub next_hop_refresh_s: u32,
    /// On-link prefix lengths of our addresses (who we answer ARP/ND for and
    /// reach without the next hop).
    #[serde(default = "default_prefix_len_v4")]
    pub prefix_len_v4: u8,
    #[serde(default = "default_prefix_len_v6")]
    pub prefix_len_v6: u8,
    /// UDP destination port of `gue` encapsulation to backends.
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
}

fn default_next_hop_refresh_s() -> u32 {
    30
}
fn default_prefix_len_v4() -> u8 {
    24
}
fn default_prefix_len_v6() -> u8 {
    64
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            vtep_ips: Vec::new(),
            vxlan_ports: default_vxlan_ports(),
            geneve_ports: Vec::new(),
            local_mac: default_local_mac(),
            next_hop_mac: default_next_hop_mac(),
            non_vip: NonVip::Forward,
            underlay_ips: Vec::new(),
            mtu: default_mtu(),
            next_hop_ip: None,
            gue_port: default_gue_port(),
            next_hop_refresh_s: default_next_hop_refresh_s(),
            prefix_len_v4: default_prefix_len_v4(),
            prefix_len_v6: default_prefix_len_v6(),
        }
    }
}

fn default_vxlan_ports() -> Vec<u16> {
    vec![4789]
}
fn default_local_mac() -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x01]
}
fn default_next_hop_mac() -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0xfe]
}
fn default_mtu() -> u16 {
    1500
}
fn default_gue_port() -> u16 {
    6080
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Unix socket path of the control server.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Socket file mode (octal string, e.g. "0600").
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group allowed to connect (name or gid); default: root's only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Prometheus metrics address (e.g. "127.0.0.1:9100"); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            socket_group: None,
            metrics: None,
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/dpgw/dpgw.sock")
}
fn default_socket_mode() -> String {
    "0600".to_string()
}

/// Parses "02:00:00:00:00:01" (also with `-`), through the workspace's one
/// MAC type ([`lb::MacAddr`]).
/// `[announce]`: put routes for the gateway's anycast addresses into a kernel
/// table a routing daemon (BIRD 2, FRR) imports, while the gateway can
/// forward. See docs/fleet.md.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnnounceSection {
    /// Prefixes to announce (`10.0.0.100/32`, `fd00::/64`); empty = every
    /// `gateway.vtep_ips` address as a host prefix.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// The TUN device the routes point to; created by dpgw and deleted by
    /// the kernel when dpgw exits, taking the routes with it.
    #[serde(default = "default_announce_device")]
    pub device: String,
    /// Kernel routing table the routes go into (254 = main). BIRD imports
    /// any table (`kernel table N; learn;`); FRR reads the main table
    /// (`redistribute kernel`): its `ip import-table` keeps a route whose
    /// device was deleted (seen with FRR 8.4.4), which would defeat
    /// fate-sharing.
    #[serde(default = "default_announce_table")]
    pub table: u32,
    /// Route metric (priority).
    #[serde(default)]
    pub metric: u32,
    /// Announce only while at least one service has an eligible backend
    /// (admin-active and not unhealthy).
    #[serde(default)]
    pub require_healthy_service: bool,
}

/// `[fleet]`: tell the other gateways the backend of every new service flow
/// and use theirs. See docs/fleet.md.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// UDP `IP:PORT` this gateway receives sync datagrams on (a kernel address).
    pub listen: String,
    /// The other gateways' `listen` addresses; nothing else is accepted.
    pub peers: Vec<String>,
    /// The fleet's shared key (≥ 16 bytes, mode 0600), for HMAC-SHA256.
    pub key_file: PathBuf,
    /// Entries of the store of peers' choices.
    #[serde(default = "default_fleet_capacity")]
    pub capacity: usize,
    /// Longest wait before a partly filled datagram is sent (ms).
    #[serde(default = "default_fleet_flush_ms")]
    pub flush_ms: u64,
}

impl FleetSection {
    /// `listen` and `peers`, parsed (errors name the key).
    pub fn addresses(&self) -> Result<(std::net::SocketAddr, Vec<std::net::SocketAddr>), String> {
        let f = self;
        let listen: std::net::SocketAddr = f
            .listen
            .parse()
            .map_err(|_| format!("fleet.listen: {:?} is not an IP:PORT", f.listen))?;
        let mut peers = Vec::new();
        for p in &f.peers {
            let a: std::net::SocketAddr = p
                .parse()
                .map_err(|_| format!("fleet.peers: {p:?} is not an IP:PORT"))?;
            if a == listen {
                return Err(format!(
                    "fleet.peers: {p} is this gateway's own fleet.listen"
                ));
            }
            peers.push(a);
        }
        if peers.is_empty() {
            return Err(
                "fleet.peers: no peers (list the other gateways' fleet.listen addresses)".into(),
            );
        }
        Ok((listen, peers))
    }
}

/// `[fdb]`: the table of where tenant addresses live, learned from the
/// tenants' traffic (see `vxlan::fdb`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FdbSection {
    /// Entries (all tenants; rounded up to a power of two).
    #[serde(default = "default_fdb_capacity")]
    pub capacity: usize,
    /// Seconds a learned entry lives after the last packet that confirmed it.
    #[serde(default = "default_fdb_age_s")]
    pub age_s: u32,
    /// New addresses each worker learns per second at most (moves and
    /// confirmations are not limited).
    #[serde(default = "default_fdb_learn_rate")]
    pub learn_rate: u32,
}

impl Default for FdbSection {
    fn default() -> Self {
        FdbSection {
            capacity: default_fdb_capacity(),
            age_s: default_fdb_age_s(),
            learn_rate: default_fdb_learn_rate(),
        }
    }
}

impl FdbSection {
    fn is_default(&self) -> bool {
        *self == FdbSection::default()
    }
}

fn default_fdb_capacity() -> usize {
    65_536
}
fn default_fdb_age_s() -> u32 {
    300
}
fn default_fdb_learn_rate() -> u32 {
    1000
}

/// A tenant prefix, parsed: the address (IPv4 in the low 32 bits) and mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantPrefix {
    pub addr: u128,
    pub mask: u128,
    pub len: u8,
    pub v6: bool,
}

impl TenantPrefix {
    pub fn contains(&self, a: u128, v6: bool) -> bool {
        v6 == self.v6 && a & self.mask == self.addr
    }

    /// True when the two share an address.
    pub fn overlaps(&self, o: &TenantPrefix) -> bool {
        self.v6 == o.v6 && (self.addr & o.mask == o.addr || o.addr & self.mask == self.addr)
    }
}

/// Parses a `[[tenant]]` prefix (errors name the value).
pub fn parse_tenant_prefix(s: &str) -> Result<TenantPrefix, String> {
    let bad = || format!("{s:?} is not an address prefix (such as 172.16.0.0/16 or fd10::/48)");
    match acl::parse_prefix(s).map_err(|_| bad())? {
        acl::Prefix::Any => Err(bad()),
        acl::Prefix::V4 { addr, len } => {
            let mask = if len == 0 {
                0
            } else {
                u128::from(u32::MAX << (32 - len))
            };
            Ok(TenantPrefix {
                addr: u128::from(u32::from(addr)),
                mask,
                len,
                v6: false,
            })
        }
        acl::Prefix::V6 { addr, len } => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            Ok(TenantPrefix {
                addr: u128::from(addr),
                mask,
                len,
                v6: true,
            })
        }
    }
}

/// An address as a flow key holds it: (IPv4 in the low 32 bits, v6).
pub fn addr_key(a: IpAddr) -> (u128, bool) {
    match a {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

/// The problems of the `[[tenant]]` list and `[fdb]` (each names its key).
fn validate_tenants(c: &Config, p: &mut Vec<String>) {
    let f = &c.fdb;
    if f.capacity == 0 || f.capacity > 1 << 26 {
        p.push(format!(
            "fdb.capacity: {} is out of range 1..=67108864",
            f.capacity
        ));
    }
    if f.age_s == 0 || f.age_s > 86_400 {
        p.push(format!("fdb.age_s: {} is out of range 1..=86400", f.age_s));
    }
    let mut all: Vec<(u32, TenantPrefix, String)> = Vec::new();
    let mut vnis = std::collections::HashSet::new();
    for (i, t) in c.tenant.iter().enumerate() {
        let at = format!("tenant[{i}]");
        if t.vni > 0xff_ffff {
            p.push(format!("{at}.vni: {} does not fit 24 bits", t.vni));
        }
        if !vnis.insert(t.vni) {
            p.push(format!("{at}.vni: {} is already another tenant's", t.vni));
        }
        if t.prefixes.is_empty() {
            p.push(format!("{at}.prefixes: at least one prefix is required"));
        }
        let mut mine = Vec::new();
        for s in &t.prefixes {
            match parse_tenant_prefix(s) {
                Err(e) => p.push(format!("{at}.prefixes: {e}")),
                Ok(q) => {
                    for (v, o, os) in &all {
                        if o.overlaps(&q) {
                            p.push(format!(
                                "{at}.prefixes: {s} overlaps {os} of tenant {v} (an address must belong to one tenant)"
                            ));
                        }
                    }
                    all.push((t.vni, q, s.clone()));
                    mine.push(q);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (j, v) in t.vtep.iter().enumerate() {
            let (a, v6) = addr_key(v.addr);
            if !mine.iter().any(|q| q.contains(a, v6)) {
                p.push(format!(
                    "{at}.vtep[{j}].addr: {} is in none of the tenant's prefixes",
                    v.addr
                ));
            }
            if !seen.insert(v.addr) {
                p.push(format!(
                    "{at}.vtep[{j}].addr: {} has another static entry",
                    v.addr
                ));
            }
            let has_src = c
                .gateway
                .vtep_ips
                .iter()
                .chain(&c.gateway.underlay_ips)
                .any(|s| s.is_ipv6() == v.vtep.is_ipv6());
            if !has_src {
                p.push(format!(
                    "{at}.vtep[{j}].vtep: {} needs a gateway.vtep_ips or gateway.underlay_ips address of its family as the outer source",
                    v.vtep
                ));
            }
        }
    }
}

fn default_fleet_capacity() -> usize {
    262_144
}
fn default_fleet_flush_ms() -> u64 {
    1
}

fn default_announce_device() -> String {
    "dpgw-announce".into()
}
fn default_announce_table() -> u32 {
    254
}

impl Default for AnnounceSection {
    fn default() -> Self {
        AnnounceSection {
            prefixes: Vec::new(),
            device: default_announce_device(),
            table: default_announce_table(),
            metric: 0,
            require_healthy_service: false,
        }
    }
}

/// A prefix to announce (`addr/len`, host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Parses `a.b.c.d/len` or `x::y/len` (a bare address = a host prefix).
pub fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or prefix like 10.0.0.100/32"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
    };
    let masked = match addr {
        IpAddr::V4(v) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(v) & m).into())
        }
    };
    if masked != addr {
        return Err(format!(
            "{s:?} has host bits set (did you mean {masked}/{len}?)"
        ));
    }
    Ok(Prefix { addr, len })
}

/// The prefixes an `[announce]` section stands for: its `prefixes`, or the
/// gateway's VTEP addresses as host prefixes when it lists none.
pub fn announce_prefixes(cfg: &Config, a: &AnnounceSection) -> Result<Vec<Prefix>, String> {
    if a.prefixes.is_empty() {
        return Ok(cfg
            .gateway
            .vtep_ips
            .iter()
            .map(|&addr| Prefix {
                addr,
                len: if addr.is_ipv4() { 32 } else { 128 },
            })
            .collect());
    }
    a.prefixes
        .iter()
        .map(|p| parse_prefix(p).map_err(|e| format!("announce.prefixes: {e}")))
        .collect()
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<lb::MacAddr>()
        .map(|m| m.0)
        .map_err(|e| e.to_string())
}

pub fn format_mac(m: &[u8; 6]) -> String {
    lb::MacAddr(*m).to_string()
}

mod mac_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&lb::MacAddr(*m))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
        let s = String::deserialize(d)?;
        super::parse_mac(&s).map_err(serde::de::Error::custom)
    }
}

/// `[conntrack]`: the connection tables of stateful ACL rules (one per
/// worker, every worker reads all of them) and the idle timeouts per state.
/// `capacity` is read at start only; the timeouts follow reloads.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackSection {
    /// Entries per worker (rounded up to a power of two).
    pub capacity: usize,
    pub tcp_syn_timeout_s: u32,
    pub tcp_established_timeout_s: u32,
    pub tcp_fin_timeout_s: u32,
    pub tcp_rst_timeout_s: u32,
    pub udp_timeout_s: u32,
    pub icmp_timeout_s: u32,
    pub other_timeout_s: u32,
}

impl Default for ConntrackSection {
    fn default() -> Self {
        let t = acl::conntrack::Timeouts::default();
        let s = |ms: u64| (ms / 1000) as u32;
        ConntrackSection {
            capacity: acl::conntrack::DEFAULT_CAPACITY,
            tcp_syn_timeout_s: s(t.tcp_syn_ms),
            tcp_established_timeout_s: s(t.tcp_established_ms),
            tcp_fin_timeout_s: s(t.tcp_fin_ms),
            tcp_rst_timeout_s: s(t.tcp_rst_ms),
            udp_timeout_s: s(t.udp_ms),
            icmp_timeout_s: s(t.icmp_ms),
            other_timeout_s: s(t.other_ms),
        }
    }
}

impl ConntrackSection {
    /// The timeouts in the table's unit (ms).
    pub fn timeouts(&self) -> acl::conntrack::Timeouts {
        let ms = |s: u32| u64::from(s) * 1000;
        acl::conntrack::Timeouts {
            tcp_syn_ms: ms(self.tcp_syn_timeout_s),
            tcp_established_ms: ms(self.tcp_established_timeout_s),
            tcp_fin_ms: ms(self.tcp_fin_timeout_s),
            tcp_rst_ms: ms(self.tcp_rst_timeout_s),
            udp_ms: ms(self.udp_timeout_s),
            icmp_ms: ms(self.icmp_timeout_s),
            other_ms: ms(self.other_timeout_s),
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        if self.capacity < 8 || self.capacity > (1 << 24) {
            p.push(format!(
                "conntrack.capacity: {} is out of range 8..={}",
                self.capacity,
                1 << 24
            ));
        }
        for (k, v) in [
            ("tcp_syn_timeout_s", self.tcp_syn_timeout_s),
            ("tcp_established_timeout_s", self.tcp_established_timeout_s),
            ("tcp_fin_timeout_s", self.tcp_fin_timeout_s),
            ("tcp_rst_timeout_s", self.tcp_rst_timeout_s),
            ("udp_timeout_s", self.udp_timeout_s),
            ("icmp_timeout_s", self.icmp_timeout_s),
            ("other_timeout_s", self.other_timeout_s),
        ] {
            if v == 0 {
                p.push(format!("conntrack.{k}: must be at least 1"));
            }
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(cfg)
    }

    /// Parses TOML text (no validation beyond types).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Resolves relative file paths inside the config against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(f) = &mut self.fleet {
            if f.key_file.is_relative() && !base.as_os_str().is_empty() {
                f.key_file = base.join(&f.key_file);
            }
        }
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(a) = &mut self.acl {
            for f in &mut a.file {
                let p = Path::new(&f.path);
                if p.is_relative() && !base.as_os_str().is_empty() {
                    f.path = base.join(p).to_string_lossy().into_owned();
                }
            }
        }
        if let Some(pcap) = &mut self.pcap {
            pcap.input.iter_mut().for_each(fix);
            if let Some(o) = &mut pcap.output {
                fix(o);
            }
        }
    }

    /// Every semantic problem, each naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.conntrack.validate(&mut p);
        let d = &self.dataplane;
        if d.workers == 0 {
            p.push("dataplane.workers: must be at least 1".to_string());
        }
        if d.workers > 256 {
            p.push(format!("dataplane.workers: {} is more than 256", d.workers));
        }
        if d.burst == 0 || d.burst > crate::io::MAX_BURST {
            p.push(format!(
                "dataplane.burst: {} is out of range 1..={}",
                d.burst,
                crate::io::MAX_BURST
            ));
        }
        for c in &d.control_cores {
            if *c >= crate::cpu::MAX_CPUS {
                p.push(format!(
                    "dataplane.control_cores: CPU {c} is out of range (0..{})",
                    crate::cpu::MAX_CPUS
                ));
            }
        }
        if !d.cores.is_empty() && d.cores.len() < d.workers {
            p.push(format!(
                "dataplane.cores: {} cores listed for {} workers",
                d.cores.len(),
                d.workers
            ));
        }
        match d.io {
            IoKind::Pcap => match &self.pcap {
                None => p.push("pcap: section required when dataplane.io = \"pcap\"".into()),
                Some(pc) => {
                    if pc.input.is_empty() {
                        p.push("pcap.input: at least one capture is required".into());
                    }
                    if pc.output.is_some() && pc.loops == 0 {
                        p.push("pcap.output: needs a finite pcap.loops (output is buffered in memory until the end of the run)".into());
                    }
                }
            },
            IoKind::Afpacket => match &self.afpacket {
                None => {
                    p.push("afpacket: section required when dataplane.io = \"afpacket\"".into())
                }
                Some(a) => {
                    if a.interfaces.is_empty() {
                        p.push("afpacket.interfaces: at least one interface is required".into());
                    }
                }
            },
            IoKind::Afxdp => match &self.afxdp {
                None => p.push("afxdp: section required when dataplane.io = \"afxdp\"".into()),
                Some(a) => {
                    if a.interfaces.is_empty() {
                        p.push("afxdp.interfaces: at least one interface is required".into());
                    }
                    if !a.ring_size.is_power_of_two() || !(64..=16384).contains(&a.ring_size) {
                        p.push(format!(
                            "afxdp.ring_size: {} is not a power of two in 64..=16384",
                            a.ring_size
                        ));
                    }
                }
            },
            IoKind::Dpdk => {
                if self.dpdk.is_none() {
                    p.push("dpdk: section required when dataplane.io = \"dpdk\"".into());
                }
            }
        }
        let g = &self.gateway;
        if g.vxlan_ports.is_empty() {
            p.push("gateway.vxlan_ports: at least one port is required".into());
        }
        if g.vxlan_ports.contains(&0) {
            p.push("gateway.vxlan_ports: port 0 is not a valid UDP port".into());
        }
        if g.geneve_ports.contains(&0) {
            p.push("gateway.geneve_ports: port 0 is not a valid UDP port".into());
        }
        for port in g.geneve_ports.iter().filter(|x| g.vxlan_ports.contains(x)) {
            p.push(format!(
                "gateway.geneve_ports: port {port} is also in gateway.vxlan_ports"
            ));
        }
        let v4 = g.underlay_ips.iter().filter(|a| a.is_ipv4()).count();
        let v6 = g.underlay_ips.len() - v4;
        if v4 > 1 || v6 > 1 {
            p.push("gateway.underlay_ips: at most one IPv4 and one IPv6 address".into());
        }
        if d.flow_capacity == 0 || d.flow_capacity > (1 << 26) {
            p.push(format!(
                "dataplane.flow_capacity: {} is out of range 1..={}",
                d.flow_capacity,
                1 << 26
            ));
        }
        if d.acl_cache != 0 && (!d.acl_cache.is_power_of_two() || d.acl_cache > (1 << 20)) {
            p.push(format!(
                "dataplane.acl_cache: {} must be 0 (off) or a power of two up to {}",
                d.acl_cache,
                1 << 20
            ));
        }
        if d.frag_table_size < 4
            || !d.frag_table_size.is_power_of_two()
            || d.frag_table_size > (1 << 20)
        {
            p.push(format!(
                "dataplane.frag_table_size: {} must be a power of two in 4..={}",
                d.frag_table_size,
                1 << 20
            ));
        }
        if d.frag_timeout_ms == 0 || d.frag_timeout_ms > 60_000 {
            p.push(format!(
                "dataplane.frag_timeout_ms: {} is out of range 1..=60000",
                d.frag_timeout_ms
            ));
        }
        if d.frag_hold_ms == 0 || d.frag_hold_ms > 1000 {
            p.push(format!(
                "dataplane.frag_hold_ms: {} is out of range 1..=1000",
                d.frag_hold_ms
            ));
        }
        if d.frag_hold_slots > crate::io::MAX_HELD {
            p.push(format!(
                "dataplane.frag_hold_slots: {} is out of range 0..={} (held fragments keep their packet buffers)",
                d.frag_hold_slots,
                crate::io::MAX_HELD
            ));
        }
        if d.tcp_timeout_s == 0 || d.udp_timeout_s == 0 {
            p.push("dataplane.tcp_timeout_s / udp_timeout_s: must be at least 1".into());
        }
        if g.prefix_len_v4 > 32 || g.prefix_len_v6 > 128 {
            p.push("gateway.prefix_len_v4 / prefix_len_v6: at most 32 / 128".into());
        }
        if g.next_hop_refresh_s == 0 {
            p.push("gateway.next_hop_refresh_s: must be at least 1".into());
        }
        if let Err(e) = lb::Services::from_specs(self.service.iter().cloned()) {
            p.push(format!("service: {e}"));
        }
        if let Some(a) = &self.acl {
            for (i, r) in a.rule.iter().enumerate() {
                if let Err(e) = r.to_rule() {
                    p.push(format!("acl.rule[{i}]: {e}"));
                }
            }
            for (i, f) in a.file.iter().enumerate() {
                if !Path::new(&f.path).is_file() {
                    p.push(format!(
                        "acl.file[{i}].path: {} is not a readable file",
                        f.path
                    ));
                }
            }
        }
        let has_v4 = g.underlay_v4().is_some() || g.vtep_ips.iter().any(|a| a.is_ipv4());
        let has_v6 = g.underlay_v6().is_some() || g.vtep_ips.iter().any(|a| a.is_ipv6());
        for s in &self.service {
            for b in &s.backends {
                if (b.ip.is_ipv4() && !has_v4) || (b.ip.is_ipv6() && !has_v6) {
                    p.push(format!(
                        "service {:?}: backend {} needs an {} source address in gateway.underlay_ips (or vtep_ips)",
                        s.name,
                        b.ip,
                        if b.ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    ));
                }
            }
        }
        if g.mtu < 576 {
            p.push(format!(
                "gateway.mtu: {} is below the IPv4 minimum of 576",
                g.mtu
            ));
        }
        validate_tenants(self, &mut p);
        if let Some(f) = &self.fleet {
            if let Err(e) = f.addresses() {
                p.push(e);
            }
            if f.capacity == 0 || f.capacity > 1 << 26 {
                p.push(format!(
                    "fleet.capacity: {} is out of range 1..=67108864",
                    f.capacity
                ));
            }
            if f.flush_ms == 0 || f.flush_ms > 1000 {
                p.push(format!(
                    "fleet.flush_ms: {} is out of range 1..=1000",
                    f.flush_ms
                ));
            }
        }
        if let Some(a) = &self.announce {
            match announce_prefixes(self, a) {
                Err(e) => p.push(e),
                Ok(v) if v.is_empty() => p.push(
                    "announce.prefixes: nothing to announce (list prefixes, or set gateway.vtep_ips)"
                        .into(),
                ),
                Ok(_) => {}
            }
            if a.device.is_empty() || a.device.len() > 15 || a.device.contains(['/', ' ', '\0']) {
                p.push(format!(
                    "announce.device: {:?} is not an interface name (1-15 characters, no '/' or spaces)",
                    a.device
                ));
            }
            if a.table == 0 || a.table == 253 || a.table == 255 {
                p.push(format!(
                    "announce.table: {} is reserved (254 = main, or a table of its own)",
                    a.table
                ));
            }
        }
        p
    }

    /// The config as TOML text that [`Config::parse`] accepts back.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }
}

impl GatewaySection {
    pub fn vtep_v4(&self) -> Vec<u32> {
        self.vtep_ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v) => Some(u32::from(*v)),
                _ => None,
            })
            .collect()
    }

    pub fn vtep_v6(&self) -> Vec<u128> {
        self.vtep_ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v) => Some(u128::from(*v)),
                _ => None,
            })
            .collect()
    }

    pub fn underlay_v4(&self) -> Option<Ipv4Addr> {
        self.underlay_ips.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            _ => None,
        })
    }

    pub fn underlay_v6(&self) -> Option<Ipv6Addr> {
        self.underlay_ips.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[dpdk] rss` and `promiscuous` are settable from the file (they once
    /// existed only in the backend's own config type).
    #[test]
    fn test_dpdk_rss_and_promiscuous_from_toml() {
        let c = Config::parse(
            "[dataplane]\nio = \"dpdk\"\n[dpdk]\neal_args = [\"--no-huge\"]\nrss = false\npromiscuous = false\n",
        )
        .unwrap();
        let d = c.dpdk.unwrap();
        assert!(!d.rss && !d.promiscuous);
        let d = Config::parse("[dataplane]\nio = \"dpdk\"\n[dpdk]\n")
            .unwrap()
            .dpdk
            .unwrap();
        assert!(d.rss && d.promiscuous, "both default to on");
        assert_eq!(d, DpdkSection::default());
        let e = Config::parse("[dpdk]\nrss = \"yes\"\n").unwrap_err();
        assert!(e.contains("rss"), "{e}");
    }

    #[test]
    fn test_minimal() {
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n").unwrap();
        assert_eq!(c.dataplane.workers, 1);
        assert_eq!(c.dataplane.burst, 32);
        assert_eq!(c.gateway.vxlan_ports, vec![4789]);
        assert!(c.validate().is_empty());
    }

    #[test]
    fn test_control_cores() {
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n").unwrap();
        assert!(c.dataplane.control_cores.is_empty(), "anywhere by default");
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n[dataplane]\ncontrol_cores = [0]\n")
            .unwrap();
        assert_eq!(c.dataplane.control_cores, vec![0]);
        assert!(c.validate().is_empty());
        let c =
            Config::parse("[pcap]\ninput = [\"a.pcap\"]\n[dataplane]\ncontrol_cores = [0, 5000]\n")
                .unwrap();
        let p = c.validate();
        assert!(
            p.iter()
                .any(|s| s.starts_with("dataplane.control_cores: CPU 5000 is out of range")),
            "{p:?}"
        );
    }

    #[test]
    fn test_geneve_ports() {
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n").unwrap();
        assert!(c.gateway.geneve_ports.is_empty(), "off by default");
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n[gateway]\ngeneve_ports = [6081]\n")
            .unwrap();
        assert_eq!(c.gateway.geneve_ports, vec![6081]);
        assert!(c.validate().is_empty());
        let c =
            Config::parse("[pcap]\ninput = [\"a.pcap\"]\n[gateway]\ngeneve_ports = [0, 4789]\n")
                .unwrap();
        let p = c.validate();
        assert!(
            p.iter()
                .any(|s| s.starts_with("gateway.geneve_ports: port 0")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|s| s.contains("port 4789 is also in gateway.vxlan_ports")),
            "{p:?}"
        );
        let e = Config::parse("[gateway]\ngeneve_ports = [\"x\"]\n").unwrap_err();
        assert!(e.contains("geneve_ports") || e.contains("line 2"), "{e}");
    }

    #[test]
    fn test_frag_keys() {
        let c = Config::parse("[pcap]\ninput = [\"a.pcap\"]\n").unwrap();
        let d = &c.dataplane;
        assert_eq!(
            (
                d.frag_table_size,
                d.frag_timeout_ms,
                d.frag_hold_ms,
                d.frag_hold_slots
            ),
            (1024, 1000, 5, 32)
        );
        let c = Config::parse(
            "[dataplane]\nfrag_table_size = 4\nfrag_timeout_ms = 60000\nfrag_hold_ms = 1000\nfrag_hold_slots = 0\n[pcap]\ninput = [\"a.pcap\"]\n",
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        for (line, key) in [
            ("frag_table_size = 1000", "dataplane.frag_table_size: 1000"),
            ("frag_table_size = 2", "dataplane.frag_table_size: 2"),
            ("frag_timeout_ms = 0", "dataplane.frag_timeout_ms: 0"),
            (
                "frag_timeout_ms = 60001",
                "dataplane.frag_timeout_ms: 60001",
            ),
            ("frag_hold_ms = 0", "dataplane.frag_hold_ms: 0"),
            ("frag_hold_ms = 1001", "dataplane.frag_hold_ms: 1001"),
            ("frag_hold_slots = 65", "dataplane.frag_hold_slots: 65"),
        ] {
            let c = Config::parse(&format!(
                "[dataplane]\n{line}\n[pcap]\ninput = [\"a.pcap\"]\n"
            ))
            .unwrap();
            let p = c.validate();
            assert!(p.iter().any(|s| s.starts_with(key)), "{line}: {p:?}");
        }
        let e = Config::parse("[dataplane]\nfrag_hold_ms = -1\n").unwrap_err();
        assert!(e.contains("frag_hold_ms"), "{e}");
    }

    #[test]
    fn test_unknown_key_names_line() {
        let e = Config::parse("[dataplane]\nworkers = 1\nwrokers = 2\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("wrokers"), "{e}");
    }

    #[test]
    fn test_bad_mac_names_value() {
        let e = Config::parse("[gateway]\nlocal_mac = \"02:00:00:zz:00:01\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("zz"), "{e}");
    }

    #[test]
    fn test_all_problems_listed() {
        let c =
            Config::parse("[dataplane]\nworkers = 0\nburst = 1000\n[gateway]\nvxlan_ports = []\n")
                .unwrap();
        let p = c.validate();
        assert!(p.iter().any(|s| s.starts_with("dataplane.workers")));
        assert!(p.iter().any(|s| s.starts_with("dataplane.burst")));
        assert!(p.iter().any(|s| s.starts_with("gateway.vxlan_ports")));
        assert!(p.iter().any(|s| s.starts_with("pcap")));
    }

    #[test]
    fn test_round_trip() {
        let text = "[dataplane]\nworkers = 2\n[pcap]\ninput = [\"x.pcap\"]\nloops = 3\n[gateway]\nvtep_ips = [\"10.0.0.1\", \"fd00::1\"]\nnon_vip = \"drop\"\n";
        let c = Config::parse(text).unwrap();
        let back = Config::parse(&c.to_toml()).unwrap();
        assert_eq!(c, back);
        assert_eq!(c.gateway.vtep_v4(), vec![0x0a00_0001]);
        assert_eq!(c.gateway.vtep_v6().len(), 1);
    }
}
