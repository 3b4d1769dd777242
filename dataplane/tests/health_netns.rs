//! Backend health checks end to end, between Linux network namespaces, on the
//! kernel-peer topology of `e2e_netns.rs`: a client behind a kernel VXLAN
//! device, a router, `dpgw run` on AF_PACKET, three backends (kernel VXLAN
//! device, VIP on `lo`, a Python HTTP server on port 80 of every address that
//! answers with its name, or with the status written in its `status` file).
//!
//! In-band probes leave dpgw encapsulated like client traffic (VXLAN, VNI 100,
//! to the VIP, from the underlay address 198.18.0.1); the backends answer
//! straight to that address (DSR), through the router, back to dpgw.
//!
//! One test walks the cases of issue 14 in order, on one topology and one
//! daemon (checks switched with `service health`): a stopped server goes out of
//! rotation within `interval × fall + 1 s` and comes back within `interval ×
//! rise + 1 s` without moving other flows; HTTP 500 is unhealthy under `http`
//! and healthy under `tcp`; a VIP missing on `lo` is unhealthy in-band and
//! healthy direct; SYNs dropped by nftables → timeout, answered by RST →
//! refused; all down → `no_backend` drops and the service reported unhealthy;
//! one back → traffic resumes. `--nocapture` prints the detection times.
//!
//! Needs root, `ip netns`, `nft` and `python3`: `#[ignore]`d, run by
//! `scripts/test.sh` as root.

mod afpacket_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use afpacket_support::{require_root_netns, Netns};
use ctl::{Client, Command, Data, Health, HealthKind, HealthMode, HealthSpec, StatsReport};

const GW_MAC: &str = "02:00:00:00:00:01";
const VIP: &str = "10.96.0.100";
const BACKENDS: [&str; 3] = ["198.18.2.11", "198.18.2.12", "198.18.2.13"];
const INTERVAL_MS: u32 = 200;
const RISE: u32 = 2;
const FALL: u32 = 2;

fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:01:{:02x}", i + 1)
}

/// `python3 -c PY_SERVER NAME DIR`: HTTP/1.1 on port 80 of every address;
/// answers NAME, or an empty answer with the status in DIR/status if present.
const PY_SERVER: &str = r#"
import http.server, os, socketserver, sys
name, d = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        code = 200
        try:
            code = int(open(os.path.join(d, 'status')).read().strip())
        except Exception:
            pass
        body = (name + '\n').encode()
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(('0.0.0.0', 80), H).serve_forever()
"#;

/// `python3 - SECONDS GAP`: new connections (one request each) for SECONDS;
/// prints one JSON list of [seconds since start, backend name or ERR].
const PY_TIMED: &str = r#"
import http.client, json, sys, time
secs, gap = float(sys.argv[1]), float(sys.argv[2])
out, t0 = [], time.time()
while time.time() - t0 < secs:
    t = time.time() - t0
    try:
        c = http.client.HTTPConnection('10.96.0.100', 80, timeout=0.5)
        c.request('GET', '/name'); r = c.getresponse()
        out.append([t, r.read().decode().strip() if r.status == 200 else 'HTTP%d' % r.status])
        c.close()
    except Exception:
        out.append([t, 'ERR'])
    time.sleep(gap)
print(json.dumps(out))
"#;

/// Long-lived connections: opens K keep-alive connections, prints their first
/// answers, waits for the file argv[2], asks again on each, prints the answers.
const PY_LONG: &str = r#"
import http.client, json, os, sys, time
k, flag = int(sys.argv[1]), sys.argv[2]
conns, first = [], []
for i in range(k):
    c = http.client.HTTPConnection('10.96.0.100', 80, timeout=3)
    c.request('GET', '/name'); first.append(c.getresponse().read().decode().strip())
    conns.append(c)
print(json.dumps(first), flush=True)
t0 = time.time()
while not os.path.exists(flag) and time.time() - t0 < 60:
    time.sleep(0.05)
second = []
for c in conns:
    try:
        c.request('GET', '/name'); second.append(c.getresponse().read().decode().strip())
    except Exception:
        second.append('ERR')
print(json.dumps(second), flush=True)
"#;

struct Topo {
    backends: Vec<Netns>,
    client: Netns,
    gw: Netns,
    rt: Netns,
    dir: tempfile::TempDir,
    dpgw: Option<Child>,
    servers: Vec<Option<Child>>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut c) = self.dpgw.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in self.servers.iter_mut().flatten() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Topo {
    fn start_server(&mut self, i: usize) {
        let d = self.dir.path().join(format!("b{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        let c = self.backends[i]
            .command("python3")
            .args(["-c", PY_SERVER, &format!("backend{}", i + 1)])
            .arg(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the HTTP server");
        self.servers[i] = Some(c);
        let t0 = Instant::now();
        while !self.backends[i].sh("ss -ltn").contains("0.0.0.0:80") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "server {i} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn set_status(&self, i: usize, status: Option<u16>) {
        let f = self.dir.path().join(format!("b{}", i + 1)).join("status");
        match status {
            Some(s) => std::fs::write(f, s.to_string()).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dpgw.log")).unwrap_or_default()
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("dpgw.sock")
    }
}

fn build_topology() -> Topo {
    let rt = Netns::new("hc-rt");
    let gw = Netns::new("hc-gw");
    let client = Netns::new("hc-cl");
    let backends: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("hc-b{i}"))).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0";
    for ns in [&rt, &gw, &client].into_iter().chain(backends.iter()) {
        ns.sh(quiet);
    }
    rt.sh("sysctl -qw net.ipv4.ip_forward=1");
    rt.sh("ip link add br0 type bridge && ip link set br0 up && ip addr add 198.18.2.1/24 dev br0");
    rt.sh(&format!(
        "ip link add r-c type veth peer name c0 netns {}",
        client.name
    ));
    rt.sh("ip addr add 198.18.1.1/24 dev r-c && ip link set r-c up");
    rt.sh(&format!(
        "ip link add r-g type veth peer name g0 netns {}",
        gw.name
    ));
    rt.sh("ip addr add 198.18.0.254/24 dev r-g && ip link set r-g up");
    rt.sh("ip route add 10.200.0.0/24 via 198.18.1.10");
    client.sh(
        "ip link set c0 up && ip addr add 198.18.1.10/24 dev c0 && ip route add default via 198.18.1.1 && \
         ip link add vxlan0 type vxlan id 100 remote 198.18.0.1 local 198.18.1.10 dstport 4789 dev c0 && \
         ip link set vxlan0 up && ip addr add 10.200.0.10/24 dev vxlan0 && \
         sysctl -qw net.ipv4.conf.c0.rp_filter=0 net.ipv4.conf.vxlan0.rp_filter=0",
    );
    client.sh(&format!(
        "ip neigh add 10.200.0.1 lladdr {GW_MAC} dev vxlan0 nud permanent && \
         ip route add {VIP}/32 via 10.200.0.1 dev vxlan0"
    ));
    gw.sh("ip link set g0 up");
    for (i, b) in backends.iter().enumerate() {
        let ip = BACKENDS[i];
        rt.sh(&format!(
            "ip link add r-b{n} type veth peer name e0 netns {ns} && ip link set r-b{n} master br0 up",
            n = i + 1,
            ns = b.name
        ));
        b.sh(&format!(
            "ip link set e0 up && ip addr add {ip}/24 dev e0 && ip route add default via 198.18.2.1 && \
             ip link add vxlan0 type vxlan id 100 local {ip} dstport 4789 dev e0 && \
             ip link set vxlan0 address {mac} && ip link set vxlan0 up && \
             ip addr add {VIP}/32 dev lo && \
             sysctl -qw net.ipv4.conf.e0.rp_filter=0 net.ipv4.conf.vxlan0.rp_filter=0 net.ipv4.conf.lo.rp_filter=0",
            mac = backend_mac(i)
        ));
    }
    let mut topo = Topo {
        backends,
        client,
        gw,
        rt,
        dir,
        dpgw: None,
        servers: vec![None, None, None],
    };
    for i in 0..3 {
        topo.start_server(i);
    }
    topo
}

fn http_check() -> HealthSpec {
    HealthSpec {
        kind: HealthKind::Http,
        path: "/name".into(),
        vni: Some(100),
        interval_ms: INTERVAL_MS,
        timeout_ms: 100,
        rise: RISE,
        fall: FALL,
        ..HealthSpec::default()
    }
}

fn config(topo: &Topo) -> String {
    let rt_mac = topo
        .rt
        .sh("cat /sys/class/net/r-g/address")
        .trim()
        .to_string();
    let mut backends = String::new();
    for (i, ip) in BACKENDS.iter().enumerate() {
        backends.push_str(&format!(
            "[[service.backend]]\nip = \"{ip}\"\nmac = \"{}\"\n",
            backend_mac(i)
        ));
    }
    format!(
        "[dataplane]\nworkers = 2\nio = \"afpacket\"\nno_pin = true\n\
         [afpacket]\ninterfaces = [\"g0\"]\nblock_size = 65536\nblock_count = 64\ntx_frames = 512\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\"]\nunderlay_ips = [\"198.18.0.1\"]\nlocal_mac = \"{GW_MAC}\"\n\
         next_hop_mac = \"{rt_mac}\"\nnext_hop_ip = \"198.18.0.254\"\nnon_vip = \"drop\"\n\
         [control]\nsocket = \"{sock}\"\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"vxlan\"\n\
         [service.health]\nkind = \"http\"\npath = \"/name\"\nvni = 100\ninterval_ms = {INTERVAL_MS}\n\
         timeout_ms = 100\nrise = {RISE}\nfall = {FALL}\n{backends}",
        sock = topo.sock().display(),
    )
}

fn start_dpgw(topo: &mut Topo, cfg_text: &str) {
    dataplane::config::Config::parse(cfg_text).expect("config parses");
    let cfg_path = topo.dir.path().join("dpgw.toml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let log = std::fs::File::create(topo.dir.path().join("dpgw.log")).unwrap();
    let child = topo
        .gw
        .command(env!("CARGO_BIN_EXE_dpgw"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start dpgw");
    topo.dpgw = Some(child);
    let t0 = Instant::now();
    while Client::connect(&topo.sock(), Duration::from_secs(2)).is_err() {
        if let Some(st) = topo.dpgw.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("dpgw exited ({st}):\n{}", topo.log());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no control socket:\n{}",
            topo.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ctl(sock: &Path, cmd: Command) -> Option<Data> {
    let mut c = Client::connect(sock, Duration::from_secs(5)).expect("connect control socket");
    c.data(cmd).expect("control request")
}

fn stats(sock: &Path) -> StatsReport {
    match ctl(sock, Command::Stats) {
        Some(Data::Stats(s)) => *s,
        other => panic!("stats answered {other:?}"),
    }
}

/// (health, last result) per backend of "web".
fn health(sock: &Path) -> BTreeMap<IpAddr, (Health, String)> {
    match ctl(
        sock,
        Command::BackendList {
            service: Some("web".into()),
        },
    ) {
        Some(Data::Backends { backends }) => backends
            .into_iter()
            .map(|b| {
                // No row until the checker has seen the service (at start).
                let h = b.health.unwrap_or(ctl::HealthRow {
                    service: b.service,
                    ip: b.backend.ip,
                    health: Health::Unknown,
                    last: None,
                    latency_us: None,
                    since_ms: 0,
                    checks: 0,
                });
                (b.backend.ip, (h.health, h.last.unwrap_or_default()))
            })
            .collect(),
        other => panic!("backend list answered {other:?}"),
    }
}

fn ip(i: usize) -> IpAddr {
    BACKENDS[i].parse().unwrap()
}

/// Waits until backend `i` has health `want`; returns how long it took.
fn wait_health(topo: &Topo, i: usize, want: Health, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let h = health(&topo.sock());
        if h[&ip(i)].0 == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "backend{} not {want} within {within:?}: {h:?}\n{}",
            i + 1,
            topo.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_py(ns: &Netns, script: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = ns
        .command("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// New connections for `secs`: (time since start, answer) each.
fn timed(topo: &Topo, secs: f64, gap: f64) -> Vec<(f64, String)> {
    let out = run_py(
        &topo.client,
        PY_TIMED,
        &[&secs.to_string(), &gap.to_string()],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

fn names(v: &[(f64, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, n) in v {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

fn set_check(topo: &Topo, h: HealthSpec) {
    ctl(
        &topo.sock(),
        Command::ServiceHealth {
            name: "web".into(),
            health: Some(h),
        },
    );
}

fn nft(b: &Netns, rule: &str) {
    b.sh(&format!(
        "nft add table inet hc && nft 'add chain inet hc in {{ type filter hook input priority 0 ; }}' && \
         nft add rule inet hc in tcp dport 80 {rule}"
    ));
}

fn nft_clear(b: &Netns) {
    let _ = b.try_sh("nft delete table inet hc");
}

#[test]
#[ignore = "needs root, ip netns and nft: run by scripts/test.sh as root"]
fn health_checks_inband_through_the_data_path() {
    require_root_netns();
    let t_start = Instant::now();
    let mut topo = build_topology();
    let cfg = config(&topo);
    start_dpgw(&mut topo, &cfg);
    let sock = topo.sock();
    let fall_window = Duration::from_millis(u64::from(INTERVAL_MS * FALL) + 1000);
    let rise_window = Duration::from_millis(u64::from(INTERVAL_MS * RISE) + 1000);

    // Every backend becomes healthy through in-band checks (VXLAN to the VIP,
    // answers by DSR to the underlay address).
    for i in 0..3 {
        wait_health(&topo, i, Health::Healthy, Duration::from_secs(5));
    }
    let h = health(&sock);
    assert!(h.values().all(|(_, l)| l == "ok"), "{h:?}");

    // (1) Stop backend1's server. Long-lived connections on the others first.
    let flag = topo.dir.path().join("go");
    let mut long = topo
        .client
        .command("python3")
        .args(["-", "24"])
        .arg(&flag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("long-lived client");
    {
        use std::io::Write;
        long.stdin
            .take()
            .unwrap()
            .write_all(PY_LONG.as_bytes())
            .unwrap();
    }
    let mut long_out = std::io::BufReader::new(long.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut long_out, &mut line).unwrap();
    let first: Vec<String> =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));

    topo.stop_server(0);
    let t_kill = Instant::now();
    // New connections during and after the detection window.
    let window = fall_window.as_secs_f64();
    let during = timed(&topo, window + 1.0, 0.02);
    let detect = t_kill.elapsed();
    let h = health(&sock);
    assert_eq!(h[&ip(0)].0, Health::Unhealthy, "{h:?}\n{}", topo.log());
    let failed: Vec<f64> = during
        .iter()
        .filter(|(_, n)| n != "backend2" && n != "backend3")
        .map(|(t, _)| *t)
        .collect();
    let last_fail = failed.iter().cloned().fold(0.0, f64::max);
    println!(
        "stopped backend1: {} connections in {:.1}s, {} failed, last failure at {last_fail:.3}s (bound {window:.1}s)",
        during.len(),
        detect.as_secs_f64(),
        failed.len()
    );
    assert!(
        last_fail < window,
        "a new connection failed after interval x fall + 1 s: {during:?}"
    );
    // Upper bound on failures: at most the connections made in the window
    // that Maglev sent to backend1 (about a third of them); with a 20 ms gap
    // and a window of interval × fall + 1 s that is well below half.
    let in_window = during.iter().filter(|(t, _)| *t < window).count();
    assert!(
        failed.len() * 2 <= in_window.max(1),
        "{} of {in_window} connections failed in the window",
        failed.len()
    );
    // Start it again: back in rotation within interval × rise + 1 s.
    topo.start_server(0);
    let back = wait_health(&topo, 0, Health::Healthy, rise_window);
    println!("backend1 back after {:.3}s", back.as_secs_f64());
    let after = names(&timed(&topo, 1.0, 0.01));
    assert!(
        after.get("backend1").copied().unwrap_or(0) > 0 && !after.contains_key("ERR"),
        "after backend1 came back: {after:?}"
    );
    // The other backends' long-lived flows did not move.
    std::fs::write(&flag, b"go").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut long_out, &mut line).unwrap();
    let _ = long.wait();
    let second: Vec<String> =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    for (a, b) in first.iter().zip(&second) {
        if a != "backend1" {
            assert_eq!(
                a, b,
                "a flow of a healthy backend moved: {first:?} -> {second:?}"
            );
        }
    }

    // (2) HTTP 500: unhealthy under http, healthy under tcp.
    topo.set_status(1, Some(500));
    wait_health(&topo, 1, Health::Unhealthy, fall_window);
    assert_eq!(health(&sock)[&ip(1)].1, "http 500");
    set_check(
        &topo,
        HealthSpec {
            kind: HealthKind::Tcp,
            ..http_check()
        },
    );
    wait_health(&topo, 1, Health::Healthy, rise_window);
    topo.set_status(1, None);
    set_check(&topo, http_check());
    for i in 0..3 {
        wait_health(&topo, i, Health::Healthy, rise_window);
    }

    // (3) VIP removed from backend3's lo, server still up on its address:
    // unhealthy in-band, healthy direct.
    topo.backends[2].sh(&format!("ip addr del {VIP}/32 dev lo"));
    wait_health(&topo, 2, Health::Unhealthy, fall_window);
    assert_eq!(health(&sock)[&ip(2)].1, "timeout");
    set_check(
        &topo,
        HealthSpec {
            mode: HealthMode::Direct,
            ..http_check()
        },
    );
    wait_health(&topo, 2, Health::Healthy, rise_window);
    topo.backends[2].sh(&format!("ip addr add {VIP}/32 dev lo"));
    set_check(&topo, http_check());
    for i in 0..3 {
        wait_health(&topo, i, Health::Healthy, rise_window);
    }

    // (4) SYNs dropped → timeout; answered by RST → refused; all down →
    // no_backend and the service unhealthy; one back → traffic resumes.
    nft(&topo.backends[1], "tcp flags syn drop");
    wait_health(&topo, 1, Health::Unhealthy, fall_window);
    assert_eq!(health(&sock)[&ip(1)].1, "timeout");
    nft(&topo.backends[2], "reject with tcp reset");
    wait_health(&topo, 2, Health::Unhealthy, fall_window);
    assert_eq!(health(&sock)[&ip(2)].1, "refused");
    nft(&topo.backends[0], "reject with tcp reset");
    wait_health(&topo, 0, Health::Unhealthy, fall_window);
    let s0 = stats(&sock);
    assert_eq!(s0.health.unhealthy_services, vec!["web".to_string()]);
    let none = names(&timed(&topo, 0.5, 0.05));
    assert_eq!(none.keys().collect::<Vec<_>>(), vec!["ERR"], "{none:?}");
    let s1 = stats(&sock);
    let nb = |s: &StatsReport| s.total.drops.get("no_backend").copied().unwrap_or(0);
    assert!(
        nb(&s1) > nb(&s0),
        "no no_backend drops counted: {:?}",
        s1.total.drops
    );
    nft_clear(&topo.backends[0]);
    wait_health(&topo, 0, Health::Healthy, rise_window);
    assert!(stats(&sock).health.unhealthy_services.is_empty());
    let resumed = names(&timed(&topo, 0.5, 0.02));
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        vec!["backend1"],
        "{resumed:?}"
    );
    let s = stats(&sock);
    assert!(s.health.transitions >= 10, "{:?}", s.health);
    for r in ["ok", "timeout", "refused", "http_status"] {
        assert!(
            s.health.results.get(r).copied().unwrap_or(0) > 0,
            "{r}: {:?}",
            s.health
        );
    }
    // One log line per transition.
    let log = topo.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("dpgw: health: service web"))
        .count();
    assert_eq!(lines as u64, s.health.transitions, "{log}");
    println!("health test took {:.1}s", t_start.elapsed().as_secs_f64());
}
