//! Scenarios of the matrix: the capture each one replays (written by the same
//! generator as `dpgw gen`), the config file it runs with (kept in the output
//! directory so every row can be rerun with `dpgw replay --config`), and the
//! replay itself (the same code as `dpgw replay --json`: `runner::run`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use dataplane::config::Config;
use dataplane::gen::{generate, GenSpec, Popularity};
use dataplane::runner::{self, RunOptions, Summary};
use serde::Serialize;

use crate::stat::Stat;

/// A ClassBench rule set loaded through `[[acl.file]]`.
#[derive(Clone, Debug, Serialize)]
pub struct AclSet {
    /// e.g. `acl1_10k`.
    pub name: String,
    pub path: PathBuf,
    pub rules: usize,
}

/// Where the ClassBench files are (`../shared/testdata/classbench` from the repo root).
pub fn classbench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/classbench")
}

impl AclSet {
    /// A NeuroCuts-generated set (`acl1_1k`, `fw1_10k`, ...); None if the file is missing.
    pub fn neurocuts(name: &str) -> Option<AclSet> {
        let path = classbench_dir().join("neurocuts").join(name);
        let text = std::fs::read_to_string(&path).ok()?;
        let rules = text.lines().filter(|l| l.starts_with('@')).count();
        Some(AclSet {
            name: name.to_string(),
            path: path.canonicalize().unwrap_or(path),
            rules,
        })
    }
}

/// Flow popularity of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Dist {
    Uniform,
    Zipf,
}

/// Zipf exponent used for skewed captures.
pub const ZIPF_S: f64 = 1.1;

impl Dist {
    pub fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf:1.1",
        }
    }
}

/// One cell of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Which sweep it belongs to (`frame_size`, `flows`, `acl`, ...).
    pub group: &'static str,
    /// Unique, file-name safe.
    pub label: String,
    /// Inner Ethernet frame length (the outer frame is 50 B longer with an IPv4
    /// underlay, 70 B with IPv6).
    pub frame: usize,
    pub flows: usize,
    pub dist: Dist,
    pub acl: Option<AclSet>,
    /// Service VIPs (0 = no `[[service]]`: packets are routed to the next hop).
    pub services: usize,
    pub backends: usize,
    pub workers: usize,
    pub inner_v6: bool,
    pub outer_v6: bool,
    /// VTEP set to an address the traffic does not use: every packet is dropped
    /// at the outer check (`wrong_vtep`). Measures the replay loop itself.
    pub drop_all: bool,
}

impl Scenario {
    /// The target pipeline: decap + ACL (1k ClassBench rules) + Maglev (1
    /// service, 10 backends, flow hits) + IPIP encap, 64 B, one worker, IPv4.
    pub fn target(acl: Option<AclSet>) -> Scenario {
        Scenario {
            group: "target",
            label: "target".into(),
            frame: 64,
            flows: 1000,
            dist: Dist::Uniform,
            acl,
            services: 1,
            backends: 10,
            workers: 1,
            inner_v6: false,
            outer_v6: false,
            drop_all: false,
        }
    }

    pub fn outer_overhead(&self) -> usize {
        if self.outer_v6 {
            70
        } else {
            50
        }
    }

    fn capture_key(&self) -> CaptureKey {
        (
            self.frame,
            self.flows,
            self.dist.name(),
            self.services,
            self.inner_v6,
            self.outer_v6,
        )
    }

    /// Packets in the capture: enough for every flow to recur, within memory.
    pub fn trace_packets(&self, quick: bool) -> usize {
        let cap = if self.frame > 256 { 1 << 15 } else { 1 << 20 };
        let min = if quick { 1 << 14 } else { 1 << 16 };
        (self.flows * 2).clamp(min.min(cap), cap)
    }

    /// Flow-table capacity per worker: twice the flows (at least the default).
    pub fn flow_capacity(&self) -> usize {
        (self.flows * 2).next_power_of_two().clamp(65_536, 1 << 24)
    }
}

/// The VIP of service `s`.
pub fn vip(s: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, s as u16 + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            192,
            168,
            (s / 250) as u8,
            (s % 250) as u8 + 1,
        ))
    }
}

/// The address of backend `b` of service `s` (same family as the VIP).
fn backend_ip(s: usize, b: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(
            0xfd02u128 << 112 | (s as u128) << 16 | (b as u128 + 1),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(
            0x0a80_0000u32 + (s as u32) * 1024 + b as u32 + 1,
        ))
    }
}

/// What makes two scenarios' captures the same: frame, flows, popularity,
/// services, inner v6, outer v6.
type CaptureKey = (usize, usize, &'static str, usize, bool, bool);

/// Generates captures once per distinct traffic shape and remembers the paths.
pub struct Captures {
    dir: PathBuf,
    made: HashMap<CaptureKey, (PathBuf, usize)>,
    quick: bool,
}

impl Captures {
    pub fn new(dir: PathBuf, quick: bool) -> std::io::Result<Captures> {
        std::fs::create_dir_all(&dir)?;
        Ok(Captures {
            dir,
            made: HashMap::new(),
            quick,
        })
    }

    /// The capture `s` replays (path, packets), generating it on first use.
    pub fn get(&mut self, s: &Scenario) -> Result<(PathBuf, usize), String> {
        let key = s.capture_key();
        if let Some(p) = self.made.get(&key) {
            return Ok(p.clone());
        }
        let packets = s.trace_packets(self.quick);
        let name = format!(
            "f{}_n{}_{}_s{}_{}{}.pcap",
            s.frame,
            s.flows,
            if s.dist == Dist::Uniform {
                "uni"
            } else {
                "zipf"
            },
            s.services,
            if s.inner_v6 { "i6" } else { "i4" },
            if s.outer_v6 { "o6" } else { "o4" }
        );
        let path = self.dir.join(name);
        let spec = gen_spec(s, packets);
        let w = generate(&spec)?;
        runner::write_atomic(&path, &w.buf)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        self.made.insert(key, (path.clone(), packets));
        Ok((path, packets))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The generator settings of a scenario (`dpgw gen` flags in the comment of each config).
pub fn gen_spec(s: &Scenario, packets: usize) -> GenSpec {
    GenSpec {
        packets,
        flows: s.flows,
        vnis: 1,
        vni_base: 100,
        frame_size: s.frame,
        inner_v6: s.inner_v6,
        outer_v6: s.outer_v6,
        // Services match TCP; all-TCP traffic makes every packet a service packet.
        tcp_pct: 100,
        popularity: match s.dist {
            Dist::Uniform => Popularity::Uniform,
            Dist::Zipf => Popularity::Zipf(ZIPF_S),
        },
        seed: 1,
        vtep: if s.outer_v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        },
        dsts: (0..s.services.max(1)).map(|i| vip(i, s.inner_v6)).collect(),
        dports: vec![80],
        vxlan_port: 4789,
        inner_ttl: 64,
    }
}

/// The `dpgw gen` command line equivalent to [`gen_spec`].
pub fn gen_command(s: &Scenario, packets: usize, out: &Path) -> String {
    let mut c = format!(
        "dpgw gen --out {} --packets {packets} --flows {} --frame-size {} --inner {} --outer {} --tcp-pct 100 --dist {}",
        out.display(),
        s.flows,
        s.frame,
        if s.inner_v6 { "v6" } else { "v4" },
        if s.outer_v6 { "v6" } else { "v4" },
        s.dist.name()
    );
    for i in 0..s.services.max(1) {
        let _ = write!(c, " --dst {}", vip(i, s.inner_v6));
    }
    c
}

/// The config file of a scenario.
pub fn config_text(s: &Scenario, pcap: &Path, loops: u64, burst: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# dpgw bench suite scenario {} ({})", s.label, s.group);
    let _ = writeln!(t, "[dataplane]\nworkers = {}\nburst = {burst}", s.workers);
    let _ = writeln!(t, "flow_capacity = {}", s.flow_capacity());
    let _ = writeln!(
        t,
        "\n[pcap]\ninput = [{:?}]\nloops = {loops}",
        pcap.display().to_string()
    );
    if s.workers > 1 {
        // Equal shares: the replay lasts as long as the largest, and the
        // hash split of the capture's 1000 flows gives two workers 47 %
        // and 53 %, which would measure the split, not the scaling.
        let _ = writeln!(t, "split = \"balanced\"");
    }
    let vteps = if s.drop_all {
        "\"10.255.255.254\", \"fd00::fe\""
    } else {
        "\"10.0.0.1\", \"fd00::1\""
    };
    let _ = writeln!(
        t,
        "\n[gateway]\nvtep_ips = [{vteps}]\nunderlay_ips = [\"10.0.0.1\", \"fd00::1\"]\nvxlan_ports = [4789]\n\
         local_mac = \"02:00:00:00:00:01\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\nnon_vip = \"forward\"\n\
         mtu = 9000"
    );
    if let Some(a) = &s.acl {
        let _ = writeln!(
            t,
            "\n[acl]\ndefault = \"allow\"\n[[acl.file]]\npath = {:?}\nformat = \"classbench\"\naction = \"allow\"",
            a.path.display().to_string()
        );
    }
    for i in 0..s.services {
        let _ = writeln!(
            t,
            "\n[[service]]\nname = \"svc{i}\"\nvip = \"{}\"\nport = 80\nproto = \"tcp\"\nencap = \"ipip\"",
            vip(i, s.inner_v6)
        );
        for b in 0..s.backends {
            let _ = writeln!(
                t,
                "[[service.backend]]\nip = \"{}\"",
                backend_ip(i, b, s.inner_v6)
            );
        }
    }
    t
}

/// Result of one scenario over its repeats.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayResult {
    pub scenario: Scenario,
    pub config: PathBuf,
    pub gen_command: String,
    pub trace_packets: usize,
    /// Packets per repeat (the capture replayed `loops` times).
    pub packets: u64,
    pub repeats: usize,
    /// All workers together.
    pub mpps: Stat,
    /// Per worker core (worker TSC cycles / packets it received).
    pub cycles_per_packet: Stat,
    pub ns_per_packet: Stat,
    /// Process CPU time (all threads, less the runner's setup: table build,
    /// capture load and split) × TSC rate / packets: the cost while the
    /// workers actually ran. Equal to `cycles_per_packet` on an idle machine;
    /// lower when other processes took the cores for part of the run.
    pub cpu_cycles_per_packet: Stat,
    /// CPU time / (wall time × workers): 1.0 = the workers had their cores.
    pub cpu_share: Stat,
    pub gbps: Stat,
    /// Received frame length (outer, no FCS), bytes.
    pub avg_frame_bytes: f64,
    /// Drops by reason of the last repeat.
    pub drops: BTreeMap<String, u64>,
    pub tx: u64,
    pub rx: u64,
    pub conserved: bool,
}

/// CPU seconds of what `runner::run` does before its workers start: build the
/// tables (ACL compile, Maglev), read the captures, split them over the workers.
fn setup_cpu_seconds(cfg: &Config) -> Option<f64> {
    let c0 = crate::machine::process_cpu_seconds()?;
    let tables = dataplane::tables::Tables::build(cfg, 1).ok()?;
    let mut caps = Vec::new();
    for p in cfg.pcap.as_ref().map(|p| p.input.as_slice()).unwrap_or(&[]) {
        caps.push(dataplane::pcapfile::read_file(p).ok()?);
    }
    let how = cfg.pcap.as_ref().map(|p| p.split).unwrap_or_default();
    let traces = dataplane::io::pcap::split_by(&caps, cfg.dataplane.workers, how);
    drop(caps);
    drop(std::hint::black_box(traces));
    drop(tables);
    Some(crate::machine::process_cpu_seconds()? - c0)
}

/// Writes the config of `s` into `cfg_dir`, replays it `repeats` times.
pub fn replay(
    s: &Scenario,
    caps: &mut Captures,
    cfg_dir: &Path,
    target_packets: u64,
    repeats: usize,
    burst: usize,
    tick: &dyn Fn(),
) -> Result<ReplayResult, String> {
    let (pcap, trace_packets) = caps.get(s)?;
    let loops = target_packets.div_ceil(trace_packets as u64).max(1);
    let text = config_text(s, &pcap, loops, burst);
    std::fs::create_dir_all(cfg_dir).map_err(|e| format!("{}: {e}", cfg_dir.display()))?;
    let cfg_path = cfg_dir.join(format!("{}.toml", s.label));
    std::fs::write(&cfg_path, &text).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let cfg = Config::load(&cfg_path).map_err(|e| e.to_string())?;
    // The runner builds the tables and loads and splits the captures before the
    // workers start; that CPU time is not per-packet work: measure it alone
    // (best of two) and leave it out of the on-CPU figures.
    let setup_cpu = (0..2)
        .filter_map(|_| setup_cpu_seconds(&cfg))
        .fold(f64::INFINITY, f64::min);
    let setup_cpu = if setup_cpu.is_finite() {
        setup_cpu
    } else {
        0.0
    };
    let mut runs: Vec<Summary> = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..repeats.max(1) {
        let stop = Arc::new(AtomicBool::new(false));
        let c0 = crate::machine::process_cpu_seconds();
        let (summary, _) = runner::run(&cfg, &RunOptions { progress: false }, stop)
            .map_err(|e| format!("{}: {e}", s.label))?;
        let c1 = crate::machine::process_cpu_seconds();
        if let (Some(a), Some(b)) = (c0, c1) {
            let secs = (b - a - setup_cpu).max(0.0);
            let rx = summary.rx.max(1) as f64;
            cpu.push((
                secs * summary.tsc_ghz * 1e9 / rx,
                secs / (summary.seconds * s.workers as f64).max(1e-9),
            ));
        }
        runs.push(summary);
        tick();
    }
    let pick = |f: fn(&Summary) -> f64| Stat::of(&runs.iter().map(f).collect::<Vec<_>>());
    let last = runs.last().ok_or("no runs")?;
    Ok(ReplayResult {
        scenario: s.clone(),
        config: cfg_path,
        gen_command: gen_command(s, trace_packets, &pcap),
        trace_packets,
        packets: last.rx,
        repeats: runs.len(),
        mpps: pick(|r| r.mpps),
        cycles_per_packet: pick(|r| r.cycles_per_packet),
        ns_per_packet: pick(|r| r.ns_per_packet),
        cpu_cycles_per_packet: Stat::of(&cpu.iter().map(|c| c.0).collect::<Vec<_>>()),
        cpu_share: Stat::of(&cpu.iter().map(|c| c.1).collect::<Vec<_>>()),
        gbps: pick(|r| r.gbps),
        avg_frame_bytes: last.avg_frame_bytes,
        drops: last
            .drops
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        tx: last.tx,
        rx: last.rx,
        conserved: runs.iter().all(|r| r.conserved()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_text_loads() {
        let mut s = Scenario::target(None);
        s.services = 2;
        s.backends = 3;
        let t = config_text(&s, Path::new("/tmp/x.pcap"), 3, 32);
        let cfg = Config::parse(&t).unwrap();
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        assert_eq!(cfg.service.len(), 2);
        assert_eq!(cfg.dataplane.workers, 1);
    }

    #[test]
    fn test_trace_packets_in_bounds() {
        for frame in [64, 512, 1500] {
            for flows in [1, 1000, 1_000_000] {
                for quick in [false, true] {
                    let s = Scenario {
                        frame,
                        flows,
                        ..Scenario::target(None)
                    };
                    let n = s.trace_packets(quick);
                    assert!(
                        (1 << 14..=1 << 20).contains(&n),
                        "{frame} {flows} {quick}: {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn test_vips_distinct() {
        let v: std::collections::HashSet<_> = (0..1000).map(|i| vip(i, false)).collect();
        assert_eq!(v.len(), 1000);
    }
}
