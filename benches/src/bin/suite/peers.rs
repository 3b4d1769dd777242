//! Peers measured on the same machine in the same run (`dpdk-testpmd`,
//! `dpdk-test-acl` through `acl-bench --peer`), and published figures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use benches::sanity::{check_timed, testpmd_floor_mpps, Status};
use serde::Serialize;

/// `dpdk-testpmd` forwarding on one `net_null` port: the I/O ceiling of a
/// device that costs nothing (no DMA, no wire).
#[derive(Clone, Debug, Serialize)]
pub struct TestpmdResult {
    pub mode: String,
    pub command: String,
    /// `failed`: not run, or its run is not a measurement (`benches::sanity`);
    /// then every figure is null and `reason` says why.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Packets received by the port over the measuring interval / wall time.
    pub mpps: Option<f64>,
    /// Wall-clock TSC cycles per packet (one forwarding core).
    pub cycles_per_packet: Option<f64>,
    /// testpmd's CPU time (its forwarding core; the interactive main core
    /// sleeps) × TSC rate / packets.
    pub cpu_cycles_per_packet: Option<f64>,
    /// CPU time / wall time of testpmd over the interval.
    pub cpu_share: Option<f64>,
    pub note: String,
}

impl TestpmdResult {
    fn failed(mut self, reason: String) -> TestpmdResult {
        self.status = Status::Failed;
        self.reason = Some(reason);
        self.mpps = None;
        self.cycles_per_packet = None;
        self.cpu_cycles_per_packet = None;
        self.cpu_share = None;
        self
    }
}

/// Runs testpmd interactively on one `net_null` port, on hugepages when
/// they can be had (as root: [`hugepages`]), as `dpdk-bench` does and DPDK
/// is meant to run; otherwise with `--no-huge` (which costs testpmd about
/// 1.6× the cycles per packet here), said in the result's `note`.
pub fn testpmd(mode: &str, seconds: f64, tsc_ghz: f64) -> TestpmdResult {
    let mut eal = vec!["--no-pci".to_string()];
    let huge = hugepages();
    if huge.is_err() {
        eal.extend(["--no-huge".into(), "-m".into(), "512".into()]);
    }
    eal.extend(["--vdev=net_null0".into(), "-l".into(), "0-1".into()]);
    let mut r = testpmd_on(
        mode,
        &eal,
        &["--total-num-mbufs=16384".into()],
        seconds,
        tsc_ghz,
        testpmd_floor_mpps("net_null"),
    );
    let mem = match huge {
        Ok(h) => format!("hugepages ({h})"),
        Err(e) => format!("--no-huge ({e})"),
    };
    r.note = if r.note.is_empty() {
        mem
    } else {
        format!("{mem}; {}", r.note)
    };
    r
}

/// Hugepages for the run: 512 × 2 MiB reserved and hugetlbfs mounted, as root.
/// `Err` says why not (then every process runs with `--no-huge`).
pub fn hugepages() -> Result<String, String> {
    let nr = "/proc/sys/vm/nr_hugepages";
    let have: u64 = std::fs::read_to_string(nr)
        .map_err(|e| format!("{nr}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{nr}: {e}"))?;
    if have < 512 {
        std::fs::write(nr, "512").map_err(|e| format!("cannot reserve hugepages ({nr}): {e}"))?;
    }
    let free = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if free < 256 {
        return Err(format!(
            "only {free} free hugepages (need 256 × 2 MiB; {nr} = {have})"
        ));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("hugetlbfs"))
    {
        std::fs::create_dir_all("/dev/hugepages").map_err(|e| format!("/dev/hugepages: {e}"))?;
        let st = Command::new("mount")
            .args(["-t", "hugetlbfs", "nodev", "/dev/hugepages"])
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !st.success() {
            return Err("mount -t hugetlbfs failed".into());
        }
    }
    Ok(format!("{free} × 2 MiB free"))
}

/// Runs testpmd interactively with EAL arguments `eal` (a `--file-prefix` is
/// added) and testpmd arguments `app` (after `-i --forward-mode=MODE`):
/// `start`, wait `seconds`, `show port stats all` twice (the second prints the
/// packet rate since the first), `stop`, `quit`. The run is a measurement
/// only if it passes [`check_timed`] with `floor_mpps`, the rate below which
/// no working run on the device falls ([`testpmd_floor_mpps`]); otherwise
/// the result is `failed`, with the reason and no figures.
pub fn testpmd_on(
    mode: &str,
    eal: &[String],
    app: &[String],
    seconds: f64,
    tsc_ghz: f64,
    floor_mpps: f64,
) -> TestpmdResult {
    let prefix = format!("dpgw-bench-{}-{mode}", std::process::id());
    let mut args: Vec<String> = eal.to_vec();
    args.push(format!("--file-prefix={prefix}"));
    args.extend(["--".into(), "-i".into(), format!("--forward-mode={mode}")]);
    args.extend(app.iter().cloned());
    let command = format!("dpdk-testpmd {}", args.join(" "));
    let mut res = TestpmdResult {
        mode: mode.to_string(),
        command,
        status: Status::Ok,
        reason: None,
        mpps: None,
        cycles_per_packet: None,
        cpu_cycles_per_packet: None,
        cpu_share: None,
        note: String::new(),
    };
    let child = Command::new("dpdk-testpmd")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return res.failed(format!("cannot run dpdk-testpmd: {e}")),
    };
    let pid = child.id();
    let mut cpu = (None, None);
    let mut wall = seconds;
    if let Some(mut stdin) = child.stdin.take() {
        let mut send = |s: &str| {
            let _ = stdin.write_all(s.as_bytes());
            let _ = stdin.flush();
        };
        std::thread::sleep(Duration::from_millis(1500)); // EAL init
        send("start\n");
        std::thread::sleep(Duration::from_millis(500));
        let t0 = std::time::Instant::now();
        cpu.0 = crate::machine::cpu_seconds(Some(pid));
        send("show port stats all\n");
        std::thread::sleep(Duration::from_secs_f64(seconds));
        cpu.1 = crate::machine::cpu_seconds(Some(pid));
        send("show port stats all\n");
        wall = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200));
        send("stop\n");
        send("quit\n");
    }
    // Bounded wait: testpmd exits on `quit`; a stuck one is killed (it is our child).
    let mut waited = 0;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if waited < 100 => {
                std::thread::sleep(Duration::from_millis(100));
                waited += 1;
            }
            _ => {
                let _ = child.kill();
                res.note = "testpmd did not exit after `quit`; killed".into();
                break;
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return res.failed(format!("reading testpmd output: {e}")),
    };
    let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&prefix));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // RX packets of the port at the two `show port stats` (lines with RX-missed).
    let rx: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("RX-missed"))
        .filter_map(|l| {
            l.split("RX-packets:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let last_line = || {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    };
    let (a, b) = match rx.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => {
            return res.failed(format!(
                "could not read two port statistics from testpmd (exit {:?}): {}",
                out.status.code(),
                last_line()
            ))
        }
    };
    let (c0, c1) = match cpu {
        (Some(c0), Some(c1)) => (c0, c1),
        _ => return res.failed(format!("could not read testpmd's CPU time (pid {pid})")),
    };
    let pkts = b - a;
    if let Err(why) = check_timed(pkts, seconds, wall, floor_mpps) {
        return res.failed(why);
    }
    res.mpps = Some(pkts / wall / 1e6);
    res.cpu_share = Some((c1 - c0) / wall);
    res.cpu_cycles_per_packet = Some((c1 - c0) * tsc_ghz * 1e9 / pkts);
    res.cycles_per_packet = Some(wall * tsc_ghz * 1e9 / pkts);
    res
}

/// `acl-bench --peer` on one ClassBench set.
#[derive(Clone, Debug, Serialize)]
pub struct AclPeer {
    pub set: String,
    pub rules: Option<u64>,
    pub command: String,
    /// `failed`: `dpdk-test-acl` gave no figure that passed
    /// `benches::sanity::check_test_acl` for any alg (or acl-bench did not
    /// run); then the figures are null and `reason` says why.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub ours_cycles_per_packet: Option<f64>,
    pub peer_alg: Option<String>,
    pub peer_cycles_per_packet: Option<f64>,
    /// ours / peer (below 1: we are faster).
    pub ratio: Option<f64>,
    pub note: String,
}

impl AclPeer {
    fn failed(mut self, reason: String) -> AclPeer {
        self.status = Status::Failed;
        self.reason = Some(reason);
        self.peer_alg = None;
        self.peer_cycles_per_packet = None;
        self.ratio = None;
        self
    }
}

/// `acl-bench` next to this executable (built by `cargo build -p benches`).
pub fn acl_bench_path() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join("acl-bench");
    p.is_file().then_some(p)
}

/// Runs `acl-bench --json --peer` (ClassBench trace if given, else `--gen N`).
pub fn acl_peer(
    bin: &Path,
    set: &str,
    rules: &Path,
    trace: Option<&Path>,
    gen: usize,
    iters: usize,
) -> AclPeer {
    let mut args: Vec<String> = vec!["--rules".into(), rules.display().to_string()];
    match trace {
        Some(t) => args.extend(["--trace".into(), t.display().to_string()]),
        None => args.extend(["--gen".into(), gen.to_string()]),
    }
    args.extend([
        "--iters".into(),
        iters.to_string(),
        "--json".into(),
        "--peer".into(),
    ]);
    let command = format!("acl-bench {}", args.join(" "));
    let mut r = AclPeer {
        set: set.to_string(),
        rules: None,
        command,
        status: Status::Ok,
        reason: None,
        ours_cycles_per_packet: None,
        peer_alg: None,
        peer_cycles_per_packet: None,
        ratio: None,
        note: String::new(),
    };
    let out = match Command::new(bin).args(&args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => return r.failed(format!("cannot run acl-bench: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(v) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        return r.failed(format!(
            "acl-bench printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    };
    r.rules = v.get("rules").and_then(|x| x.as_u64());
    r.ours_cycles_per_packet = v.get("cycles_per_packet").and_then(|x| x.as_f64());
    r.peer_alg = v
        .get("peer_best_alg")
        .and_then(|x| x.as_str())
        .map(String::from);
    r.peer_cycles_per_packet = v
        .get("peer_best_cycles_per_packet")
        .and_then(|x| x.as_f64());
    // acl-bench keeps only rte_acl runs that passed the sanity check; without
    // one the peer failed, for the reasons it gives per alg.
    let Some(peer) = r.peer_cycles_per_packet else {
        let why: Vec<String> = v
            .get("peer_failed")
            .and_then(|x| x.as_object())
            .map(|m| {
                m.iter()
                    .map(|(alg, why)| format!("{alg}: {}", why.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        return r.failed(if why.is_empty() {
            "dpdk-test-acl gave no figure (see acl-bench --peer)".into()
        } else {
            format!("dpdk-test-acl: {}", why.join("; "))
        });
    };
    match r.ours_cycles_per_packet {
        Some(ours) => r.ratio = Some(ours / peer),
        None => r.note = "acl-bench gave no figure of ours".into(),
    }
    r
}

/// A published per-core figure, converted to cycles per packet.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub system: &'static str,
    pub what: &'static str,
    pub cycles_per_packet: &'static str,
    /// The figure as a number (the middle of a range).
    pub cycles_mid: f64,
    pub source: &'static str,
}

pub fn published() -> Vec<Published> {
    vec![
        Published {
            system: "Katran (XDP)",
            what: "Maglev + IPIP encap, 5.2 Mpps/core at 3.6 GHz",
            cycles_per_packet: "≈ 690",
            cycles_mid: 690.0,
            source: "published by Facebook; conversion as listed in DESIGN.md",
        },
        Published {
            system: "VPP",
            what: "IPv4 forwarding + ACL",
            cycles_per_packet: "226–273",
            cycles_mid: 249.5,
            source: "FD.io CSIT reports; range as listed in DESIGN.md",
        },
        Published {
            system: "ixy.rs",
            what: "bidirectional forwarding, batch 32",
            cycles_per_packet: "≈ 100",
            cycles_mid: 100.0,
            source:
                "Ellmann, Emmerich et al., ANCS 2019 (ixy languages paper); as listed in DESIGN.md",
        },
    ]
}

/// The Linux kernel doing dpgw's job on veth (`veth-bench --afxdp`: kernel
/// vxlan + nftables + forwarding vs dpgw on AF_PACKET and on AF_XDP, driven
/// by `trafgen`).
#[derive(Clone, Debug, Serialize)]
pub struct VethPeer {
    pub command: String,
    /// `failed`: not run (not root, a tool or binary missing) or its run
    /// forwarded nothing; then the figures are null and `reason` says why.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub kernel_ns_per_packet: Option<f64>,
    pub dpgw_ns_per_packet: Option<f64>,
    /// Kernel ns/packet over dpgw's (above 1: dpgw is cheaper; issue 19's goal is 3).
    pub per_core_ratio: Option<f64>,
    pub kernel_zero_loss_pps: Option<f64>,
    pub dpgw_zero_loss_pps: Option<f64>,
    /// dpgw on AF_XDP: ns per forwarded packet, kernel / it, zero-loss rate.
    pub afxdp_ns_per_packet: Option<f64>,
    pub afxdp_per_core_ratio: Option<f64>,
    pub afxdp_zero_loss_pps: Option<f64>,
    /// veth-bench's whole JSON output.
    pub raw: Option<serde_json::Value>,
}

/// Runs `veth-bench --json` (next to this executable, with the `dpgw` beside
/// it); `quick`: one short round, no zero-loss search.
pub fn veth_peer(quick: bool) -> VethPeer {
    let me = std::env::current_exe().ok();
    let dir = me.as_ref().and_then(|m| m.parent().map(Path::to_path_buf));
    let bin = dir.as_ref().map(|d| d.join("veth-bench"));
    let mut args = vec!["--json".to_string(), "--afxdp".to_string()];
    if quick {
        args.push("--quick".into());
    }
    let mut p = VethPeer {
        command: format!("veth-bench {}", args.join(" ")),
        status: Status::Failed,
        reason: None,
        kernel_ns_per_packet: None,
        dpgw_ns_per_packet: None,
        per_core_ratio: None,
        kernel_zero_loss_pps: None,
        dpgw_zero_loss_pps: None,
        afxdp_ns_per_packet: None,
        afxdp_per_core_ratio: None,
        afxdp_zero_loss_pps: None,
        raw: None,
    };
    let Some(bin) = bin.filter(|b| b.is_file()) else {
        p.reason = Some("veth-bench not found next to suite (cargo build --profile production -p benches --bins)".into());
        return p;
    };
    let out = match Command::new(&bin).args(&args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => {
            p.reason = Some(format!("{}: {e}", bin.display()));
            return p;
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        p.reason = Some(
            err.lines()
                .last()
                .unwrap_or("veth-bench failed")
                .trim()
                .to_string(),
        );
        return p;
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            p.reason = Some(format!("veth-bench printed no JSON: {e}"));
            return p;
        }
    };
    let f = |g: &str, k: &str| v[g][k].as_f64();
    let (kf, df, xf) = (
        f("kernel", "forwarded_pps"),
        f("dpgw", "forwarded_pps"),
        f("afxdp", "forwarded_pps"),
    );
    // A gateway that forwarded (almost) nothing was not measured.
    if [kf, df, xf].iter().any(|x| x.unwrap_or(0.0) < 1000.0) {
        p.reason = Some(format!(
            "a gateway forwarded under 1000 pps (kernel {:?}, dpgw AF_PACKET {:?}, dpgw AF_XDP {:?}): not a measurement",
            kf, df, xf
        ));
        p.raw = Some(v);
        return p;
    }
    p.status = Status::Ok;
    p.kernel_ns_per_packet = f("kernel", "dut_ns_per_packet");
    p.dpgw_ns_per_packet = f("dpgw", "dut_ns_per_packet");
    p.per_core_ratio = v["per_core_ratio"].as_f64();
    p.kernel_zero_loss_pps = f("kernel", "zero_loss_pps");
    p.dpgw_zero_loss_pps = f("dpgw", "zero_loss_pps");
    p.afxdp_ns_per_packet = f("afxdp", "dut_ns_per_packet");
    p.afxdp_per_core_ratio = v["afxdp_per_core_ratio"].as_f64();
    p.afxdp_zero_loss_pps = f("afxdp", "zero_loss_pps");
    p.raw = Some(v);
    p
}
