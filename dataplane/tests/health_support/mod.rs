//! The health-check topology (see `health_netns.rs`), shared by the test and
//! the detection-time benchmark (`health_bench.rs`).
#![allow(dead_code)]

#[path = "../afpacket_support/mod.rs"]
mod afpacket_support;
pub use afpacket_support::{require_root_netns, Netns};
pub use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ctl::{Client, Command, Data, Health, HealthKind, HealthSpec, StatsReport};

pub const GW_MAC: &str = "02:00:00:00:00:01";
pub const VIP: &str = "10.96.0.100";
pub const BACKENDS: [&str; 3] = ["198.18.2.11", "198.18.2.12", "198.18.2.13"];
pub const INTERVAL_MS: u32 = 200;
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;

pub fn backend_mac(i: usize) -> String {
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

/// `python3 - SECONDS GAP [FLAG]`: new connections (one request each) for
/// SECONDS (creating the file FLAG after the first 10); prints one JSON list
/// of [Unix time in seconds, backend name or ERR].
pub const PY_TIMED: &str = r#"
import http.client, json, sys, time
secs, gap = float(sys.argv[1]), float(sys.argv[2])
flag = sys.argv[3] if len(sys.argv) > 3 else None
out, t0 = [], time.time()
while time.time() - t0 < secs:
    if flag and len(out) == 10:
        open(flag, 'w').close()
    t = time.time()
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
pub const PY_LONG: &str = r#"
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

pub struct Topo {
    pub backends: Vec<Netns>,
    pub client: Netns,
    pub gw: Netns,
    pub rt: Netns,
    pub dir: tempfile::TempDir,
    pub dpgw: Option<Child>,
    pub servers: Vec<Option<Child>>,
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
    pub fn start_server(&mut self, i: usize) {
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

    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn set_status(&self, i: usize, status: Option<u16>) {
        let f = self.dir.path().join(format!("b{}", i + 1)).join("status");
        match status {
            Some(s) => std::fs::write(f, s.to_string()).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dpgw.log")).unwrap_or_default()
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("dpgw.sock")
    }
}

pub fn build_topology(tag: &str) -> Topo {
    let rt = Netns::new(&format!("{tag}-rt"));
    let gw = Netns::new(&format!("{tag}-gw"));
    let client = Netns::new(&format!("{tag}-cl"));
    let backends: Vec<Netns> = (1..=3)
        .map(|i| Netns::new(&format!("{tag}-b{i}")))
        .collect();
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

pub fn http_check() -> HealthSpec {
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

/// The daemon's config: service "web" (VXLAN to the three backends) with `health`.
pub fn config(topo: &Topo, health: &HealthSpec) -> String {
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
         [service.health]\n{h}{backends}",
        sock = topo.sock().display(),
        h = toml::to_string(health).expect("health section as TOML"),
    )
}

pub fn start_dpgw(topo: &mut Topo, cfg_text: &str) {
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

pub fn ctl(sock: &Path, cmd: Command) -> Option<Data> {
    let mut c = Client::connect(sock, Duration::from_secs(5)).expect("connect control socket");
    c.data(cmd).expect("control request")
}

pub fn stats(sock: &Path) -> StatsReport {
    match ctl(sock, Command::Stats) {
        Some(Data::Stats(s)) => *s,
        other => panic!("stats answered {other:?}"),
    }
}

/// (health, last result) per backend of "web".
pub fn health(sock: &Path) -> BTreeMap<IpAddr, (Health, String)> {
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

pub fn ip(i: usize) -> IpAddr {
    BACKENDS[i].parse().unwrap()
}

/// Waits until backend `i` has health `want`; returns how long it took.
pub fn wait_health(topo: &Topo, i: usize, want: Health, within: Duration) -> Duration {
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

/// Starts `python3 -` with `script` on stdin in `ns`.
pub fn spawn_py(ns: &Netns, script: &str, args: &[&str]) -> Child {
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
    child
}

pub fn run_py(ns: &Netns, script: &str, args: &[&str]) -> String {
    let out = spawn_py(ns, script, args).wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answers of a [`PY_TIMED`] client started with [`spawn_py`].
pub fn timed_output(c: Child) -> Vec<(f64, String)> {
    let out = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

/// New connections for `secs`: (Unix time, answer) each.
pub fn timed(topo: &Topo, secs: f64, gap: f64) -> Vec<(f64, String)> {
    let out = run_py(
        &topo.client,
        PY_TIMED,
        &[&secs.to_string(), &gap.to_string()],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

/// When (Unix time) backend `i` last changed its health, from `since_ms`.
pub fn unhealthy_since(topo: &Topo, i: usize) -> f64 {
    match ctl(
        &topo.sock(),
        Command::BackendList {
            service: Some("web".into()),
        },
    ) {
        Some(Data::Backends { backends }) => {
            let now = unix_now();
            let b = backends
                .iter()
                .find(|b| b.backend.ip == ip(i))
                .and_then(|b| b.health.as_ref())
                .expect("a health row");
            now - b.since_ms as f64 / 1e3
        }
        other => panic!("backend list answered {other:?}"),
    }
}

/// Seconds since the Unix epoch (the client's `time.time()`).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn names(v: &[(f64, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, n) in v {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

pub fn set_check(topo: &Topo, h: HealthSpec) {
    ctl(
        &topo.sock(),
        Command::ServiceHealth {
            name: "web".into(),
            health: Some(h),
        },
    );
}

pub fn nft(b: &Netns, rule: &str) {
    b.sh(&format!(
        "nft add table inet hc && nft 'add chain inet hc in {{ type filter hook input priority 0 ; }}' && \
         nft add rule inet hc in tcp dport 80 {rule}"
    ));
}

pub fn nft_clear(b: &Netns) {
    let _ = b.try_sh("nft delete table inet hc");
}
