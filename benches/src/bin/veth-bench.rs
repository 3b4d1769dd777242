//! `veth-bench`: dpgw on AF_PACKET against the Linux kernel doing the same job
//! (VXLAN decap + a filter rule + IPv4 forwarding) on the same veth topology,
//! driven by `trafgen` (Debian's `netsniff-ng`). Root only; it builds its own
//! namespaces and removes them (and every process left in them) on exit, also
//! on panic.
//!
//! ```text
//!  ns gen              ns dut                         ns sink
//!  trafgen --> vg ==== d0 [gateway] d1 ==== vs --> nft ingress drop
//!  (CPU 0)                (CPU 1)
//! ```
//!
//! * The generator (`trafgen`, TX ring, one process pinned to CPU 0) sends
//!   VXLAN (VNI 100) frames with 64-byte inner frames to 256 inner flows.
//! * The gateway is either the kernel (a `vxlan` device, an nftables forward
//!   chain with one deny rule, `ip_forward`) or `dpgw run` with `io =
//!   "afpacket"` on `d0`/`d1`, one worker pinned to CPU 1, the control thread
//!   on CPU 0, the same deny rule in its ACL. The inner frames leave on `d1`.
//! * The sink drops everything at its ingress hook; `vs`'s `rx_packets` (veth
//!   counts them when `d1` hands a frame over) is what was forwarded.
//!
//! CPU attribution: everything the gateway costs, wherever it runs, over the
//! frames delivered to the sink. For the kernel, RPS on `d0` sends the receive
//! softirq of every frame to CPU 1, so CPU 1 does the whole job (decapsulate,
//! filter, forward, transmit, and the sink's receive up to its drop). For
//! dpgw, the worker owns CPU 1 and the kernel's receive on `d0` (up to the
//! AF_PACKET tap) runs in softirq on CPU 0, as a deployment keeps a NIC's
//! interrupts off its poll-mode cores: sharing CPU 1 with the worker lost
//! 60–75 % of a 100 kpps stream at a quarter of CPU 1's time, in ring freezes
//! (`kernel_freezes`), on kernel 6.18. The cost per forwarded packet is
//! (CPU 1's busy time — the window's wall time minus CPU 1's idle time,
//! which `NO_HZ_IDLE` kernels measure exactly — + CPU 0's irq + softirq
//! time, tick sampled, from `/proc/stat`) over the window, divided by the
//! packets delivered to the sink in it, for every gateway. The sink's own receive runs on CPU 1 for both.
//!
//! With `--afxdp` dpgw is also measured on AF_XDP (`io = "afxdp"`): its XDP
//! program on `d0` (native: veth runs it in its NAPI poll, on CPU 0 like the
//! AF_PACKET receive) redirects every frame into the worker's XDP socket,
//! before there is an skb, so no nftables drop is needed; transmit on `d1`
//! goes through the XDP socket's TX ring (copy mode: the kernel builds one
//! skb per frame on `sendto`). The rounds alternate kernel, AF_PACKET,
//! AF_XDP.
//!
//! dpgw runs with `poll_when_idle = true` (the worker sleeps in `poll(2)` after
//! 64 empty polls), so a worker that keeps up does not bill its spinning as
//! work; a saturated one is busy 100 % either way.
//!
//! Rounds alternate kernel / dpgw; figures are medians. The zero-loss rate is
//! a bisection over `trafgen --rate` (paced, one `sendto` per frame): the
//! highest rate at which at most `--loss-tolerance` of the frames sent were
//! not delivered.
//!
//! `trafgen`'s TX ring needs a socket send buffer larger than the default
//! (with 212 992 bytes its flush fails with EAGAIN on veth), and the
//! namespaces cannot change `net.core.wmem_default`: the harness raises it to
//! 4 MiB for its run and puts the old value back on exit. Likewise
//! `net.core.netdev_max_backlog` (1000 → 10 000): the paced generator sends
//! in bursts, and with 1000 the kernel gateway lost 7–17 % of a 50 kpps
//! stream in CPU 1's backlog queue (softnet drops) with everything forwarded
//! (`IpForwDatagrams`) — a limit of the queue between the two veths, not of
//! either gateway; with 10 000 it forwards 300 kpps paced without a loss.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::daemon::{thread_cpu_ns, Daemon};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "veth-bench",
    about = "dpgw on AF_PACKET vs the Linux kernel (vxlan + nftables + forwarding) on veth, driven by trafgen (root)"
)]
struct Cli {
    /// The dpgw binary (default: `dpgw` next to this executable).
    #[arg(long)]
    dpgw: Option<PathBuf>,
    /// Seconds per saturation measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Rounds (alternating kernel / dpgw); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bisection steps of the zero-loss search (0: no search).
    #[arg(long, default_value_t = 6)]
    search_steps: usize,
    /// Seconds per zero-loss trial.
    #[arg(long, default_value_t = 2.0)]
    search_secs: f64,
    /// Share of the frames sent that may be lost in a "zero-loss" trial.
    #[arg(long, default_value_t = 0.0001)]
    loss_tolerance: f64,
    /// One short round, no search (a functional check, figures not meant).
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also measure dpgw on AF_XDP (`io = "afxdp"`, native XDP on `d0`),
    /// in the same alternation (kernel, AF_PACKET, AF_XDP).
    #[arg(long)]
    afxdp: bool,
}

/// Which dpgw I/O backend a run uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Io {
    AfPacket,
    AfXdp,
}

/// One gateway's figures (medians over the rounds).
#[derive(Clone, Debug, Serialize)]
pub struct Gateway {
    pub name: String,
    /// Frames per second the generator got out of `vg` (saturating runs).
    pub offered_pps: f64,
    /// Frames per second delivered to the sink.
    pub forwarded_pps: f64,
    /// Share of the offered frames not delivered.
    pub loss: f64,
    /// CPU 1 busy share over the window (1.0 = the whole core).
    pub dut_cpu_share: f64,
    /// CPU 1 busy ns per forwarded packet.
    pub dut_ns_per_packet: f64,
    /// Forwarded packets per second per CPU-1 core-second.
    pub pps_per_core: f64,
    /// CPU 0 (generator) busy share, for reference.
    pub gen_cpu_share: f64,
    /// CPU 0's irq + softirq share (the receive on `d0` when RPS is off):
    /// counted in the cost.
    pub gen_softirq_share: f64,
    /// Every round's `dut_ns_per_packet`.
    pub rounds_ns_per_packet: Vec<f64>,
    /// Highest paced rate with loss ≤ tolerance (None: not searched).
    pub zero_loss_pps: Option<f64>,
    /// The paced generator's own ceiling (the search's upper bound).
    pub search_ceiling_pps: Option<f64>,
    /// dpgw's worker thread on-CPU share of the window (dpgw only).
    pub worker_cpu_share: Option<f64>,
    /// dpgw's own counters over the saturating windows, summed (dpgw only):
    /// received, transmitted, drops by reason.
    pub dpgw_rx: Option<u64>,
    pub dpgw_tx: Option<u64>,
    pub dpgw_drops: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub kernel: Gateway,
    /// dpgw on AF_PACKET.
    pub dpgw: Gateway,
    /// Kernel ns per forwarded packet / dpgw's (≥ 3 is issue 19's goal).
    pub per_core_ratio: f64,
    /// dpgw zero-loss rate / the kernel's (None when either was not searched).
    pub zero_loss_ratio: Option<f64>,
    /// dpgw on AF_XDP (`--afxdp`; None otherwise).
    pub afxdp: Option<Gateway>,
    /// Kernel ns per forwarded packet / dpgw-on-AF_XDP's.
    pub afxdp_per_core_ratio: Option<f64>,
    /// dpgw-on-AF_XDP zero-loss rate / the kernel's.
    pub afxdp_zero_loss_ratio: Option<f64>,
    pub rounds: usize,
    pub secs: f64,
    pub loss_tolerance: f64,
    pub load_avg: String,
    pub kernel_release: String,
    pub frame: String,
    pub attribution: String,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(r) => {
            let table = table(&r);
            if cli.json {
                eprint!("{table}");
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
            } else {
                print!("{table}");
            }
        }
        Err(e) => {
            eprintln!("veth-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn table(r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<38} {:>11} {:>11} {:>7} {:>6} {:>9} {:>9} {:>11} {:>12}",
        "gateway",
        "offered pps",
        "fwd pps",
        "loss",
        "CPU1",
        "CPU0 sirq",
        "ns/pkt",
        "pps/core",
        "0-loss pps"
    );
    for g in [Some(&r.kernel), Some(&r.dpgw), r.afxdp.as_ref()]
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            o,
            "{:<38} {:>11.0} {:>11.0} {:>6.2}% {:>5.0}% {:>8.0}% {:>9.0} {:>11.0} {:>12}",
            g.name,
            g.offered_pps,
            g.forwarded_pps,
            g.loss * 100.0,
            g.dut_cpu_share * 100.0,
            g.gen_softirq_share * 100.0,
            g.dut_ns_per_packet,
            g.pps_per_core,
            match (g.zero_loss_pps, g.search_ceiling_pps) {
                (Some(z), Some(c)) if z >= c * 0.999 => format!(">= {z:.0}"),
                (Some(z), _) => format!("{z:.0}"),
                _ => "-".into(),
            }
        );
    }
    for g in [Some(&r.dpgw), r.afxdp.as_ref()].into_iter().flatten() {
        if let (Some(rx), Some(tx), Some(d)) = (g.dpgw_rx, g.dpgw_tx, &g.dpgw_drops) {
            let _ = writeln!(
                o,
                "{} counters over the saturating windows: rx {rx}, tx {tx}, drops {d:?}",
                g.name
            );
        }
    }
    let _ = writeln!(
        o,
        "per-core ratio (kernel ns/pkt / dpgw AF_PACKET ns/pkt): {:.2}x  (goal >= 3)",
        r.per_core_ratio
    );
    if let Some(x) = r.afxdp_per_core_ratio {
        let _ = writeln!(
            o,
            "per-core ratio (kernel ns/pkt / dpgw AF_XDP ns/pkt): {x:.2}x  (goal >= 3)"
        );
    }
    if let Some(z) = r.zero_loss_ratio {
        let _ = writeln!(o, "zero-loss rate ratio dpgw AF_PACKET / kernel: {z:.2}x");
    }
    if let Some(z) = r.afxdp_zero_loss_ratio {
        let _ = writeln!(o, "zero-loss rate ratio dpgw AF_XDP / kernel: {z:.2}x");
    }
    let _ = writeln!(
        o,
        "medians of {} rounds of {:.1} s; load {}; {}",
        r.rounds, r.secs, r.load_avg, r.frame
    );
    o
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("sh -c {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with every process in it) on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("vb-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"))?;
        let ns = Netns(name);
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }
    fn sh(&self, cmd: &str) -> Result<String, String> {
        sh(&format!("ip netns exec {} sh -c '{}'", self.0, cmd))
            .map_err(|e| format!("[{}] {e}", self.0))
    }
    fn counter(&self, dev: &str, what: &str) -> Result<u64, String> {
        self.sh(&format!("cat /sys/class/net/{dev}/statistics/{what}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{dev} {what}: {e}"))
    }
    fn mac(&self, dev: &str) -> Result<String, String> {
        Ok(self
            .sh(&format!("cat /sys/class/net/{dev}/address"))?
            .trim()
            .to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Puts a sysctl back on drop.
struct Sysctl {
    key: &'static str,
    old: String,
}

impl Sysctl {
    fn set(key: &'static str, value: &str) -> Result<Sysctl, String> {
        let old = sh(&format!("sysctl -n {key}"))?.trim().to_string();
        sh(&format!("sysctl -qw {key}={value}"))?;
        Ok(Sysctl { key, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = sh(&format!("sysctl -qw {}={}", self.key, self.old));
    }
}

/// One CPU's `/proc/stat` counters: (idle + iowait, irq + softirq), in
/// clock ticks (`USER_HZ`).
///
/// Only the idle time is exact: with `NO_HZ_IDLE` the kernel measures it
/// when the CPU enters and leaves idle, while user, system, irq and softirq
/// are sampled at the timer tick. A poll-mode worker that wakes just after
/// each tick and sleeps again before the next is almost never seen busy by
/// the tick: AF_PACKET's worker (woken by its ring's block timer) showed
/// 11 % of CPU 1 by the busy fields while its own `schedstat` said 69 %. So
/// busy time is the window's wall time minus the exact idle time.
fn cpu_ticks(cpu: usize) -> Result<(u64, u64), String> {
    let s = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let tag = format!("cpu{cpu} ");
    let line = s
        .lines()
        .find(|l| l.starts_with(&tag))
        .ok_or_else(|| format!("/proc/stat has no cpu{cpu}"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        return Err(format!("/proc/stat: short line {line:?}"));
    }
    // user nice system idle iowait irq softirq [steal guest guest_nice]
    Ok((v[3] + v[4], v[5] + v[6]))
}

/// Clock ticks per second of `/proc/stat`.
fn user_hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

struct Topo {
    gen: Netns,
    dut: Netns,
    sink: Netns,
    d1_mac: String,
    vs_mac: String,
    cfg: PathBuf,
}

/// The inner frames' next hop (the sink) and the kernel vxlan device's MAC.
const INNER_GW_MAC: &str = "02:00:00:00:00:01";

fn topology(dir: &Path) -> Result<Topo, String> {
    let gen = Netns::new("gen")?;
    let dut = Netns::new("dut")?;
    let sink = Netns::new("sink")?;
    gen.sh(&format!(
        "ip link add vg type veth peer name d0 netns {}",
        dut.0
    ))?;
    dut.sh(&format!(
        "ip link add d1 type veth peer name vs netns {}",
        sink.0
    ))?;
    gen.sh("ip link set vg up && ip addr add 198.18.0.2/24 dev vg")?;
    dut.sh("ip link set d0 up && ip link set d1 up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0")?;
    sink.sh("ip link set vs up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1")?;
    sink.sh("nft add table netdev s && nft \"add chain netdev s in { type filter hook ingress device vs priority 0; policy drop; }\"")?;
    let d0_mac = dut.mac("d0")?;
    let d1_mac = dut.mac("d1")?;
    let vs_mac = sink.mac("vs")?;
    let vg_mac = gen.mac("vg")?;
    let cfg = dir.join("trafgen.cfg");
    std::fs::write(&cfg, trafgen_config(&vg_mac, &d0_mac)?)
        .map_err(|e| format!("{}: {e}", cfg.display()))?;
    Ok(Topo {
        gen,
        dut,
        sink,
        d1_mac,
        vs_mac,
        cfg,
    })
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    dataplane::config::parse_mac(s).map_err(|e| format!("MAC {s:?}: {e}"))
}

/// 256 VXLAN frames (VNI 100, 64-byte inner UDP frames to 10.1.0.0–255), one
/// trafgen packet block each.
fn trafgen_config(vg: &str, d0: &str) -> Result<String, String> {
    let (vg, d0, gw) = (mac(vg)?, mac(d0)?, mac(INNER_GW_MAC)?);
    let mut o = String::from("/* veth-bench: VXLAN VNI 100, 64 B inner frames, 256 flows */\n");
    for i in 0..256u16 {
        let spec = vxlan::InnerSpec {
            src_mac: [2, 0, 0, 0, 0, 0x10],
            dst_mac: gw,
            src: "10.2.0.1".parse().unwrap(),
            dst: format!("10.1.0.{i}").parse().unwrap(),
            proto: 17,
            sport: 1000 + i,
            dport: 5000,
            ttl: 64,
            frame_len: 64,
        };
        let mut inner = Vec::new();
        vxlan::build_inner_frame(&spec, &mut inner);
        let outer = vxlan::Outer {
            src_mac: vg,
            dst_mac: d0,
            vlan: None,
            src_ip: "198.18.0.2".parse().unwrap(),
            dst_ip: "198.18.0.1".parse().unwrap(),
            ttl: 64,
        };
        let mut pkt = vec![0u8; vxlan::vxlan_header_len(&outer)];
        vxlan::emit_vxlan(&outer, 40000 + i, 4789, 100, &inner, &mut pkt);
        pkt.extend_from_slice(&inner);
        o.push_str("{ ");
        for (k, b) in pkt.iter().enumerate() {
            if k > 0 {
                o.push_str(", ");
            }
            let _ = write!(o, "0x{b:02x}");
        }
        o.push_str(" }\n");
    }
    Ok(o)
}

fn kernel_up(t: &Topo) -> Result<(), String> {
    t.dut.sh(&format!(
        "echo 2 > /sys/class/net/d0/queues/rx-0/rps_cpus && ip addr add 198.18.0.1/24 dev d0 && ip addr add 10.9.0.1/24 dev d1 && \
         ip link add vxlan0 type vxlan id 100 local 198.18.0.1 dstport 4789 dev d0 nolearning && \
         ip link set vxlan0 address {INNER_GW_MAC} && ip link set vxlan0 up && ip addr add 10.2.0.254/16 dev vxlan0 && \
         sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.vxlan0.rp_filter=0 net.ipv4.conf.d0.rp_filter=0 && \
         ip neigh replace 10.9.0.2 lladdr {} dev d1 nud permanent && ip route add 10.1.0.0/16 via 10.9.0.2 dev d1 && \
         nft add table inet f && nft \"add chain inet f fw {{ type filter hook forward priority 0; policy accept; }}\" && \
         nft add rule inet f fw ip saddr 192.168.0.0/16 drop",
        t.vs_mac
    ))?;
    Ok(())
}

fn kernel_down(t: &Topo) -> Result<(), String> {
    t.dut.sh(
        "nft delete table inet f; ip link del vxlan0; ip addr flush dev d0; ip addr flush dev d1; \
         sysctl -qw net.ipv4.ip_forward=0",
    )?;
    Ok(())
}

fn dpgw_config(t: &Topo, sock: &Path, io: Io) -> String {
    // `dataplane.io` and its section share the name.
    let kind = match io {
        Io::AfPacket => "afpacket",
        Io::AfXdp => "afxdp",
    };
    format!(
        "[dataplane]\nworkers = 1\ncores = [1]\ncontrol_cores = [0]\nio = \"{kind}\"\n\
         [{kind}]\ninterfaces = [\"d0\"]\ntx_interface = \"d1\"\npoll_when_idle = true\n\
         [control]\nsocket = \"{}\"\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\"]\nlocal_mac = \"{}\"\nnext_hop_mac = \"{}\"\n\
         [acl]\ndefault = \"allow\"\n[[acl.rule]]\nsrc = \"192.168.0.0/16\"\naction = \"deny\"\n",
        sock.display(),
        t.d1_mac,
        t.vs_mac
    )
}

struct Window {
    sent: u64,
    delivered: u64,
    secs: f64,
    dut_busy: f64,
    gen_busy: f64,
    /// CPU 0's irq + softirq share: the receive on `d0` when it runs there.
    gen_softirq: f64,
}

/// Runs trafgen (saturating, or paced at `rate` pps) for `secs` and counts.
fn window(t: &Topo, secs: f64, rate: Option<f64>) -> Result<Window, String> {
    let pace = match rate {
        Some(r) => format!("--rate {}pps", r.max(1.0) as u64),
        None => String::new(),
    };
    let cmd = format!(
        "ip netns exec {} taskset -c 0 trafgen --no-sock-mem --cpus 1 --no-cpu-stats --dev vg --conf {} {pace}",
        t.gen.0,
        t.cfg.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &format!("exec {cmd}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: trafgen forks a worker per CPU, and the
        // parent does not pass SIGINT on.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    // Let the rings and caches warm up, then measure.
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(Some(st)) = child.try_wait() {
        let out = child.wait_with_output().ok();
        return Err(format!(
            "trafgen exited early ({st}): {}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default()
        ));
    }
    let s0 = t.gen.counter("vg", "tx_packets")?;
    let r0 = t.sink.counter("vs", "rx_packets")?;
    let t0 = Instant::now();
    let (b1, c1) = (cpu_ticks(1)?, cpu_ticks(0)?);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (b1e, c1e) = (cpu_ticks(1)?, cpu_ticks(0)?);
    let dt = t0.elapsed().as_secs_f64();
    let s1 = t.gen.counter("vg", "tx_packets")?;
    // SAFETY: kill(2) with a negative pid signals the process group we made.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    child.wait().map_err(|e| format!("trafgen: {e}"))?;
    // Frames in flight when the generator stopped still arrive.
    std::thread::sleep(Duration::from_millis(200));
    let r1 = t.sink.counter("vs", "rx_packets")?;
    let ticks = dt * user_hz();
    // Busy = wall time minus the exact idle time (see `cpu_ticks`).
    let share = |(a, _): (u64, u64), (b, _): (u64, u64)| {
        (1.0 - b.saturating_sub(a) as f64 / ticks).clamp(0.0, 1.0)
    };
    let soft0 = (c1e.1.saturating_sub(c1.1) as f64 / ticks).clamp(0.0, 1.0);
    Ok(Window {
        sent: s1 - s0,
        // Sent during the window, delivered up to the drain: the loss measure
        // of the paced trials. The rate uses `delivered` over `secs` too: the
        // frames sent in the window are the ones delivered.
        delivered: r1 - r0,
        secs: dt,
        dut_busy: share(b1, b1e),
        gen_busy: share(c1, c1e),
        gen_softirq: soft0,
    })
}

struct Sample {
    counters: Option<Counters>,
    offered: f64,
    forwarded: f64,
    loss: f64,
    dut_share: f64,
    gen_share: f64,
    gen_softirq: f64,
    worker_share: Option<f64>,
}

/// dpgw's rx, tx and drops by reason.
#[derive(Clone, Default)]
struct Counters {
    rx: u64,
    tx: u64,
    drops: std::collections::BTreeMap<String, u64>,
}

fn counters(sock: &Path) -> Result<Counters, String> {
    let mut c = ctl::Client::connect(sock, Duration::from_secs(5))
        .map_err(|e| format!("control socket {}: {e}", sock.display()))?;
    match c.data(ctl::Command::Stats).map_err(|e| e.to_string())? {
        Some(ctl::Data::Stats(s)) => Ok(Counters {
            rx: s.total.rx,
            tx: s.total.tx,
            drops: s.total.drops,
        }),
        other => Err(format!("stats answered {other:?}")),
    }
}

impl Counters {
    fn minus(&self, b: &Counters) -> Counters {
        let mut drops = self.drops.clone();
        for (k, v) in drops.iter_mut() {
            *v -= b.drops.get(k).copied().unwrap_or(0);
        }
        drops.retain(|_, v| *v > 0);
        Counters {
            rx: self.rx - b.rx,
            tx: self.tx - b.tx,
            drops,
        }
    }
}

/// The dpgw under test: its pid (for the worker's CPU time) and socket.
struct Dut<'a> {
    pid: u32,
    sock: &'a Path,
}

fn saturate(t: &Topo, secs: f64, dut: Option<Dut>) -> Result<Sample, String> {
    let worker = dut.as_ref().map(|d| d.pid);
    let c0 = dut.as_ref().map(|d| counters(d.sock)).transpose()?;
    let w0 = worker.and_then(|p| thread_cpu_ns(p, "dpgw-w0"));
    let t0 = Instant::now();
    let w = window(t, secs, None)?;
    let el = t0.elapsed().as_secs_f64();
    let w1 = worker.and_then(|p| thread_cpu_ns(p, "dpgw-w0"));
    // The workers publish their counters every few bursts; let them settle.
    std::thread::sleep(Duration::from_millis(100));
    let c1 = dut.as_ref().map(|d| counters(d.sock)).transpose()?;
    // Frames delivered after the window (the drain) were sent inside it; the
    // window's delivered count would include the first 300 ms' backlog too,
    // so clamp to what was sent.
    let delivered = w.delivered.min(w.sent);
    Ok(Sample {
        counters: match (c1, c0) {
            (Some(a), Some(b)) => Some(a.minus(&b)),
            _ => None,
        },
        offered: w.sent as f64 / w.secs,
        forwarded: delivered as f64 / w.secs,
        loss: 1.0 - delivered as f64 / (w.sent.max(1)) as f64,
        dut_share: w.dut_busy,
        gen_share: w.gen_busy,
        gen_softirq: w.gen_softirq,
        worker_share: match (w0, w1) {
            (Some(a), Some(b)) => Some((b - a) as f64 / 1e9 / el),
            _ => None,
        },
    })
}

/// Highest paced rate in (0, ceiling] with loss ≤ tol, by bisection.
fn zero_loss(t: &Topo, steps: usize, secs: f64, tol: f64) -> Result<(f64, f64), String> {
    let trial = |rate: f64| -> Result<Window, String> {
        let w = window(t, secs, Some(rate))?;
        eprintln!(
            "veth-bench:   paced {rate:>10.0} pps: sent {} delivered {} ({:+})",
            w.sent,
            w.delivered,
            w.delivered as i64 - w.sent as i64
        );
        Ok(w)
    };
    // The paced generator's own ceiling: ask for far more than it can do.
    let c = trial(10_000_000.0)?;
    let ceiling = c.sent as f64 / c.secs;
    let ok = |w: &Window| (w.sent as f64 - w.delivered as f64) <= tol * w.sent as f64;
    if ok(&c) {
        return Ok((ceiling, ceiling));
    }
    let (mut lo, mut hi) = (0.0f64, ceiling);
    for _ in 0..steps {
        let mid = (lo + hi) / 2.0;
        let w = trial(mid)?;
        if ok(&w) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((lo, ceiling))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

fn summarize(name: &str, s: &[Sample]) -> Gateway {
    let m = |f: &dyn Fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let ns: Vec<f64> = s
        .iter()
        .map(|x| (x.dut_share + x.gen_softirq) * 1e9 / x.forwarded.max(1.0))
        .collect();
    let nspp = median(&ns);
    let mut g = Gateway {
        name: name.into(),
        offered_pps: m(&|x| x.offered),
        forwarded_pps: m(&|x| x.forwarded),
        loss: m(&|x| x.loss),
        dut_cpu_share: m(&|x| x.dut_share),
        dut_ns_per_packet: nspp,
        pps_per_core: if nspp > 0.0 { 1e9 / nspp } else { 0.0 },
        gen_cpu_share: m(&|x| x.gen_share),
        gen_softirq_share: m(&|x| x.gen_softirq),
        rounds_ns_per_packet: ns,
        zero_loss_pps: None,
        search_ceiling_pps: None,
        worker_cpu_share: s
            .iter()
            .map(|x| x.worker_share)
            .collect::<Option<Vec<_>>>()
            .map(|v| median(&v)),
        dpgw_rx: None,
        dpgw_tx: None,
        dpgw_drops: None,
    };
    if let Some(cs) = s
        .iter()
        .map(|x| x.counters.clone())
        .collect::<Option<Vec<_>>>()
    {
        let mut sum = Counters::default();
        for c in cs {
            sum.rx += c.rx;
            sum.tx += c.tx;
            for (k, v) in c.drops {
                *sum.drops.entry(k).or_default() += v;
            }
        }
        g.dpgw_rx = Some(sum.rx);
        g.dpgw_tx = Some(sum.tx);
        g.dpgw_drops = Some(sum.drops);
    }
    g
}

fn check_tools() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (it builds network namespaces)".into());
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("trafgen", "netsniff-ng"),
        ("nft", "nftables"),
        ("taskset", "util-linux"),
        ("sysctl", "procps"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "`{tool}` not found (Debian package {pkg}; scripts/setup.sh installs it)"
            ));
        }
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus < 2 {
        return Err(format!(
            "needs 2 CPUs (generator on 0, gateway on 1); {cpus} available"
        ));
    }
    Ok(())
}

fn start_dpgw(t: &Topo, bin: &Path, dir: &Path, io: Io) -> Result<Daemon, String> {
    // The kernel's receive on d0 (up to the AF_PACKET tap, or veth's NAPI
    // running the XDP program) stays on CPU 0, off the worker's core; it is
    // counted through CPU 0's softirq time.
    t.dut
        .sh("echo 0 > /sys/class/net/d0/queues/rx-0/rps_cpus")?;
    if io == Io::AfPacket {
        // The VXLAN frames dpgw takes from its tap need nothing more from
        // the kernel: dropped at d0's ingress hook (after the taps), they
        // skip the route lookup and `ip_error` that otherwise cost more than
        // dpgw itself (README, "I/O backends": AF_PACKET). AF_XDP takes the
        // frames before there is an skb: nothing to drop.
        t.dut.sh("nft add table netdev dpgw && nft \"add chain netdev dpgw in { type filter hook ingress device d0 priority 0; }\" && nft add rule netdev dpgw in ip daddr 198.18.0.1 udp dport 4789 drop")?;
    }
    let sock = dir.join("ctl.sock");
    let cfg = dir.join("dpgw.toml");
    std::fs::write(&cfg, dpgw_config(t, &sock, io))
        .map_err(|e| format!("{}: {e}", cfg.display()))?;
    let log = std::fs::File::create(dir.join("dpgw.log")).map_err(|e| e.to_string())?;
    let child = Command::new("ip")
        .args(["netns", "exec", &t.dut.0])
        .arg(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = child.id();
    let mut d = Daemon(Some(child));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some(c) = d.0.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                let log = std::fs::read_to_string(dir.join("dpgw.log")).unwrap_or_default();
                return Err(format!("dpgw exited at start ({st}): {}", log.trim()));
            }
        }
        if thread_cpu_ns(pid, "dpgw-w0").is_some() && sock.exists() {
            std::thread::sleep(Duration::from_millis(300));
            return Ok(d);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("dpgw did not start its worker within 20 s".into())
}

fn run(cli: &Cli) -> Result<Results, String> {
    check_tools()?;
    let bin = match &cli.dpgw {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("dpgw"),
    };
    if !bin.is_file() {
        return Err(format!(
            "dpgw binary {} not found (build it: cargo build --profile production -p dataplane --bin dpgw, or pass --dpgw)",
            bin.display()
        ));
    }
    let (rounds, secs, steps) = if cli.quick {
        (1, 1.0, 0)
    } else {
        (cli.rounds.max(1), cli.secs, cli.search_steps)
    };
    let dir = std::env::temp_dir().join(format!("veth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _wmem = Sysctl::set("net.core.wmem_default", "4194304")?;
    let _backlog = Sysctl::set("net.core.netdev_max_backlog", "10000")?;
    let t = topology(&dir)?;
    let mut ios = vec![Io::AfPacket];
    if cli.afxdp {
        ios.push(Io::AfXdp);
    }
    let stop_dpgw = |d: Daemon, io: Io| -> Result<(), String> {
        drop(d);
        // Its final I/O counters (ring drops and the like), for the record.
        let log = std::fs::read_to_string(dir.join("dpgw.log")).unwrap_or_default();
        let io_lines: Vec<&str> = log
            .lines()
            .filter_map(|l| l.trim().strip_prefix("io "))
            .collect();
        eprintln!(
            "veth-bench:   dpgw {io:?} I/O counters: {}",
            io_lines.join("; ")
        );
        if io == Io::AfPacket {
            t.dut.sh("nft delete table netdev dpgw")?;
        }
        Ok(())
    };
    let mut ks = Vec::new();
    let mut ds: Vec<Vec<Sample>> = ios.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        kernel_up(&t)?;
        ks.push(saturate(&t, secs, None)?);
        kernel_down(&t)?;
        for (k, &io) in ios.iter().enumerate() {
            let d = start_dpgw(&t, &bin, &dir, io)?;
            let pid = d.0.as_ref().map(|c| c.id()).unwrap_or(0);
            let sock = dir.join("ctl.sock");
            ds[k].push(saturate(&t, secs, Some(Dut { pid, sock: &sock }))?);
            stop_dpgw(d, io)?;
        }
    }
    let mut kernel = summarize("Linux vxlan + nftables + forwarding", &ks);
    let mut gws: Vec<Gateway> = ios
        .iter()
        .zip(&ds)
        .map(|(io, s)| {
            summarize(
                match io {
                    Io::AfPacket => "dpgw AF_PACKET (1 worker)",
                    Io::AfXdp => "dpgw AF_XDP (1 worker)",
                },
                s,
            )
        })
        .collect();
    if steps > 0 {
        eprintln!("veth-bench: zero-loss search, kernel");
        kernel_up(&t)?;
        let (z, c) = zero_loss(&t, steps, cli.search_secs, cli.loss_tolerance)?;
        kernel.zero_loss_pps = Some(z);
        kernel.search_ceiling_pps = Some(c);
        kernel_down(&t)?;
        for (g, &io) in gws.iter_mut().zip(&ios) {
            eprintln!("veth-bench: zero-loss search, {}", g.name);
            let d = start_dpgw(&t, &bin, &dir, io)?;
            let (z, c) = zero_loss(&t, steps, cli.search_secs, cli.loss_tolerance)?;
            stop_dpgw(d, io)?;
            g.zero_loss_pps = Some(z);
            g.search_ceiling_pps = Some(c);
        }
    }
    let afxdp = if cli.afxdp { gws.pop() } else { None };
    let dpgw = gws.remove(0);
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
    let load_avg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let per_core = |g: &Gateway| {
        if g.dut_ns_per_packet > 0.0 {
            kernel.dut_ns_per_packet / g.dut_ns_per_packet
        } else {
            0.0
        }
    };
    let zero_loss_ratio = |g: &Gateway| match (g.zero_loss_pps, kernel.zero_loss_pps) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Ok(Results {
        per_core_ratio: per_core(&dpgw),
        zero_loss_ratio: zero_loss_ratio(&dpgw),
        afxdp_per_core_ratio: afxdp.as_ref().map(per_core),
        afxdp_zero_loss_ratio: afxdp.as_ref().and_then(zero_loss_ratio),
        afxdp,
        kernel,
        dpgw,
        rounds,
        secs,
        loss_tolerance: cli.loss_tolerance,
        load_avg,
        kernel_release,
        frame: "VXLAN VNI 100, 64 B inner UDP frames (110 B outer), 256 flows".into(),
        attribution: "(CPU 1 busy = wall - exact idle + CPU 0 irq+softirq, /proc/stat) / frames delivered to the sink; kernel: RPS puts d0's receive on CPU 1; dpgw: worker on CPU 1, d0's receive softirq (AF_PACKET) or XDP NAPI poll (AF_XDP) on CPU 0".into(),
    })
}
