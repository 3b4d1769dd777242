//! Detection-time benchmark for health checks (issue 14), on the topology of
//! `health_netns.rs`: a client opens a new connection every 20 ms while one
//! backend's HTTP server is killed; per trial it reports the time from the
//! kill to the checker's `unhealthy` and to the last new connection that
//! failed (the last one the dead backend was given), and how many failed.
//! Run for the default settings and for `interval_ms = 200, fall = 2`:
//!
//! ```text
//! cargo test -p dataplane --test health_bench -- --ignored --nocapture
//! HEALTH_TRIALS=20 (default)
//! ```
//!
//! A benchmark, not a test (no timing assertion); not among the root targets
//! of `scripts/test.sh`.

mod health_support;

use std::time::{Duration, Instant};

use ctl::{Health, HealthKind, HealthSpec};
use health_support::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn run(topo: &mut Topo, name: &str, spec: &HealthSpec, trials: usize) {
    set_check(topo, spec.clone());
    let rise = Duration::from_millis(u64::from(spec.interval_ms * spec.rise) + 3000);
    for i in 0..3 {
        wait_health(topo, i, Health::Healthy, rise);
    }
    let window = f64::from(spec.interval_ms * spec.fall + spec.timeout_ms) / 1e3 + 1.0;
    let (mut detect, mut last, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        let victim = trial % 3;
        let started = topo.dir.path().join(format!("started-{name}-{trial}"));
        let client = spawn_py(
            &topo.client,
            PY_TIMED,
            &[
                &(window + 1.0).to_string(),
                "0.02",
                &started.to_string_lossy(),
            ],
        );
        let t0 = Instant::now();
        while !started.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "client did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Kill at a random phase of the check interval.
        std::thread::sleep(Duration::from_millis(
            (trial as u64 * 37) % u64::from(spec.interval_ms),
        ));
        let t_kill = unix_now();
        topo.stop_server(victim);
        let out = timed_output(client);
        wait_health(topo, victim, Health::Unhealthy, Duration::from_secs(10));
        let d = unhealthy_since(topo, victim) - t_kill;
        let victim_name = format!("backend{}", victim + 1);
        let fails: Vec<f64> = out
            .iter()
            .filter(|(t, n)| *t >= t_kill && (n == "ERR" || *n == victim_name))
            .map(|(t, _)| t - t_kill)
            .collect();
        let l = fails.iter().cloned().fold(0.0, f64::max);
        println!(
            "{name} trial {trial:2}: unhealthy after {d:.3}s, last failed connection {l:.3}s, {} failed of {}",
            fails.len(),
            out.iter().filter(|(t, _)| *t >= t_kill).count()
        );
        detect.push(d);
        last.push(l);
        failed.push(fails.len() as f64);
        topo.start_server(victim);
        wait_health(topo, victim, Health::Healthy, rise);
    }
    println!(
        "{name}: {trials} trials: detection p50 {:.3}s max {:.3}s; last failed connection p50 {:.3}s max {:.3}s; failed connections per trial p50 {} max {}",
        pct(&mut detect, 0.5),
        pct(&mut detect, 1.0),
        pct(&mut last, 0.5),
        pct(&mut last, 1.0),
        pct(&mut failed, 0.5),
        pct(&mut failed, 1.0),
    );
}

#[test]
#[ignore = "benchmark: needs root, ip netns and python3; run with --ignored --nocapture"]
fn health_detection_times() {
    require_root_netns();
    let trials: usize = std::env::var("HEALTH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut topo = build_topology("hb");
    let defaults = HealthSpec {
        kind: HealthKind::Http,
        path: "/name".into(),
        vni: Some(100),
        ..HealthSpec::default()
    };
    let cfg = config(&topo, &defaults);
    start_dpgw(&mut topo, &cfg);
    println!(
        "loadavg: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    run(
        &mut topo,
        "interval 200 ms, fall 2",
        &HealthSpec {
            interval_ms: 200,
            timeout_ms: 100,
            fall: 2,
            ..defaults.clone()
        },
        trials,
    );
    run(
        &mut topo,
        "defaults (1000 ms, timeout 500, rise 2, fall 3)",
        &defaults,
        trials,
    );
    println!(
        "loadavg: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// CPU time (user + system, ns) of the thread called `comm` in process `pid`.
fn thread_cpu(pid: u32, comm: &str) -> Option<u64> {
    let tick = 1e9 / 100.0; // USER_HZ
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let p = e.ok()?.path();
        let c = std::fs::read_to_string(p.join("comm")).ok()?;
        if c.trim() == comm {
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, s): (u64, u64) = (f[11].parse().ok()?, f[12].parse().ok()?);
            return Some(((u + s) as f64 * tick) as u64);
        }
    }
    None
}

/// The checker's own CPU with 1000 in-band checked backends at
/// `interval_ms = 1000` (each answering: one namespace holds all 1000
/// addresses, one VXLAN device without a local address takes the probes for
/// all of them, the VIP on `lo` answers; `arp_announce = 2` there, because the
/// slow path, smoltcp, ignores ARP requests whose sender, here the VIP, is
/// not on its subnet). Prints CPU ms per second of the
/// slow-path thread (`dpgw-slow`, which runs the checker), checks per second,
/// snapshots published per second in the steady state and punted frames per
/// second.
#[test]
#[ignore = "benchmark: needs root and ip netns; run with --ignored --nocapture"]
fn health_checker_cpu_1000_backends() {
    require_root_netns();
    let gw = Netns::new("hcpu-gw");
    let be = Netns::new("hcpu-be");
    let dir = tempfile::tempdir().unwrap();
    gw.sh(&format!(
        "ip link add g0 type veth peer name b0 netns {}",
        be.name
    ));
    gw.sh("ip link set g0 up");
    let n = 1000usize;
    let addr = |i: usize| format!("198.19.{}.{}", i / 250, i % 250 + 1);
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("addr add {}/32 dev b0\n", addr(i)));
    }
    std::fs::write(dir.path().join("addrs"), batch).unwrap();
    be.sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
    be.sh(&format!(
        "ip link set b0 up && ip addr add 198.18.0.254/24 dev b0 && ip -batch {} && \
         ip link add vxlan0 type vxlan id 100 dstport 4789 dev b0 && ip link set vxlan0 address 02:00:00:00:01:01 && \
         ip link set vxlan0 up && ip addr add {VIP}/32 dev lo && \
         sysctl -qw net.ipv4.conf.vxlan0.rp_filter=0 net.ipv4.conf.b0.rp_filter=0 net.core.somaxconn=4096",
        dir.path().join("addrs").display()
    ));
    let mut listener = be
        .command("python3")
        .args([
            "-c",
            "import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],80));s.listen(4096)\nwhile True: time.sleep(3600)",
            VIP,
        ])
        .spawn()
        .unwrap();
    let b0_mac = be.sh("cat /sys/class/net/b0/address").trim().to_string();
    let mut backends = String::new();
    for i in 0..n {
        backends.push_str(&format!(
            "[[service.backend]]\nip = \"{}\"\nmac = \"02:00:00:00:01:01\"\n",
            addr(i)
        ));
    }
    let sock = dir.path().join("dpgw.sock");
    let cfg = format!(
        "[dataplane]\nworkers = 1\nio = \"afpacket\"\nno_pin = true\n\
         [afpacket]\ninterfaces = [\"g0\"]\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\"]\nunderlay_ips = [\"198.18.0.1\"]\nlocal_mac = \"{GW_MAC}\"\n\
         next_hop_mac = \"{b0_mac}\"\nnon_vip = \"drop\"\n\
         [control]\nsocket = \"{}\"\n\
         [[service]]\nname = \"big\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"vxlan\"\ntable_size = 65537\n\
         [service.health]\nkind = \"tcp\"\nvni = 100\n{backends}",
        sock.display()
    );
    let cfg_path = dir.path().join("dpgw.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("dpgw.log")).unwrap();
    let mut dpgw = gw
        .command(env!("CARGO_BIN_EXE_dpgw"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = dpgw.id();
    let stats = |sock: &std::path::Path| -> Option<ctl::StatsReport> {
        let mut c = ctl::Client::connect(sock, Duration::from_secs(2)).ok()?;
        match c.data(ctl::Command::Stats).ok()? {
            Some(ctl::Data::Stats(s)) => Some(*s),
            _ => None,
        }
    };
    let t0 = Instant::now();
    loop {
        if let Some(s) = stats(&sock) {
            let healthy = s
                .health
                .backends
                .iter()
                .filter(|b| b.health == Health::Healthy)
                .count();
            if healthy == n {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not all {n} backends healthy: {:?} {:?}\n{}",
            stats(&sock).map(|s| (s.health.results, s.total)),
            stats(&sock).map(|s| s.health.backends.into_iter().take(3).collect::<Vec<_>>()),
            std::fs::read_to_string(dir.path().join("dpgw.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "loadavg: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for round in 0..3 {
        let s0 = stats(&sock).unwrap();
        let c0 = thread_cpu(pid, "dpgw-slow").expect("the slow-path thread");
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(10));
        let c1 = thread_cpu(pid, "dpgw-slow").unwrap();
        let s1 = stats(&sock).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let checks = |s: &ctl::StatsReport| s.health.results.values().sum::<u64>();
        println!(
            "round {round}: checker (dpgw-slow) CPU {:.1} ms/s; {:.0} checks/s (ok {:.0}/s); {:.2} snapshots/s; {:.0} punted/s",
            (c1 - c0) as f64 / 1e6 / secs,
            (checks(&s1) - checks(&s0)) as f64 / secs,
            (s1.health.results.get("ok").copied().unwrap_or(0)
                - s0.health.results.get("ok").copied().unwrap_or(0)) as f64
                / secs,
            (s1.generation - s0.generation) as f64 / secs,
            (s1.total.punted - s0.total.punted) as f64 / secs,
        );
    }
    println!(
        "loadavg: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = dpgw.kill();
    let _ = dpgw.wait();
    let _ = listener.kill();
    let _ = listener.wait();
}
