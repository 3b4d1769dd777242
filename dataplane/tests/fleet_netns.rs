//! A fleet of three gateways behind a router doing ECMP, learned over BGP from
//! real routing daemons (Debian's BIRD 2 and FRR), with `contrib/bgp/`'s
//! configs. Each gateway namespace runs `dpgw run` (AF_PACKET) with an
//! `[announce]` section and a routing daemon beside it; a client with a kernel
//! VXLAN device talks HTTP to a VIP through the anycast VTEP; three (then
//! four) backends are kernel VXLAN devices with the VIP on `lo` and a real
//! HTTP server.
//!
//! ```text
//!  client ns ── r-c │ rt ns (BIRD or FRR, ECMP, L4 multipath hash) │ brg 198.18.3.1/24
//!  c0 198.18.1.10   │                                                ├─ gw1 ns: g0 198.18.3.11 (daemon), dpgw underlay .21, VTEP 198.18.0.1
//!  vxlan0 → 198.18.0.1                                               ├─ gw2 ns: .12 / .22
//!                   │ br0 198.18.2.1/24 ── backends 198.18.2.11..14  └─ gw3 ns: .13 / .23
//! ```
//!
//! Checked: the router learns the VTEP from all three gateways as one 3-way
//! multipath route; new connections spread over the gateways; `gateway
//! drain` withdraws (and `undrain` restores) the route while forwarding
//! goes on; SIGKILL of a dpgw withdraws its route with nobody cleaning up
//! (fate-sharing through its TUN device); long-lived connections through
//! these events (counted per event); `apply` on all three gives one digest.
//! Needs root and `ip netns`: `#[ignore]`d, run by `scripts/test.sh` as root.

mod afpacket_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use afpacket_support::{require_root_netns, Netns};
use ctl::{Client, Command, Data};

const VIP: &str = "10.96.0.100";
const VTEP: &str = "198.18.0.1";
const BACKENDS: [&str; 4] = ["198.18.2.11", "198.18.2.12", "198.18.2.13", "198.18.2.14"];
/// Serving from the start (the fourth is added by some events).
const INITIAL: usize = 3;
/// UDP port of the flow-state sync between gateways.
const SYNC_PORT: u16 = 7801;

fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:01:{:02x}", i + 1)
}

fn gw_addr(i: usize) -> String {
    format!("198.18.3.{}", 11 + i)
}

fn gw_underlay(i: usize) -> String {
    format!("198.18.3.{}", 21 + i)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Daemon {
    Bird,
    Frr,
}

/// Long-lived HTTP/1.1 keep-alive connections: `python3 - N PERIOD SECONDS
/// READY` opens N connections (spread over the first second), each sends a
/// request every PERIOD seconds until SECONDS have passed, creates the file
/// READY once every connection had its first answer, and prints one JSON
/// list: per connection the backends that answered and the error that ended
/// it (null if none).
const PY_LONG: &str = r#"
import http.client, json, sys, threading, time
n, period, secs, ready = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
res = [None] * n
t_end = time.time() + secs
answered = [0]
lock = threading.Lock()
def run(i):
    time.sleep(i / n)
    names, err = [], None
    try:
        c = http.client.HTTPConnection('10.96.0.100', 80, timeout=4)
        while time.time() < t_end:
            c.request('GET', '/name')
            r = c.getresponse()
            nm = r.read().decode().strip()
            if not names:
                with lock:
                    answered[0] += 1
                    if answered[0] == n:
                        open(ready, 'w').close()
            if not names or names[-1] != nm:
                names.append(nm)
            time.sleep(period)
        c.close()
    except Exception as e:
        err = '%s at %.1fs' % (type(e).__name__, secs - (t_end - time.time()))
    res[i] = {'names': names, 'err': err}
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res))
"#;

/// `python3 - N`: N short connections, one request each; the backend per connection or ERR.
const PY_SHORT: &str = r#"
import http.client, json, sys
out = []
for i in range(int(sys.argv[1])):
    try:
        c = http.client.HTTPConnection('10.96.0.100', 80, timeout=3)
        c.request('GET', '/name')
        out.append(c.getresponse().read().decode().strip())
        c.close()
    except Exception as e:
        out.append('ERR')
print(json.dumps(out))
"#;

struct Gateway {
    ns: Netns,
    dpgw: Option<Child>,
    sock: PathBuf,
    cfg: PathBuf,
    log: PathBuf,
}

struct Fleet {
    // Dropped in order: processes first (Drop below), then namespaces.
    client: Netns,
    rt: Netns,
    gws: Vec<Gateway>,
    _backends: Vec<Netns>,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    frr_dirs: Vec<PathBuf>,
    sharing: bool,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for g in &mut self.gws {
            if let Some(mut c) = g.dpgw.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // FRR daemons run in the namespaces (killed with them); their runtime dirs:
        for d in &self.frr_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn contrib(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/bgp")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{ifname}/address"))
        .trim()
        .to_string()
}

fn spawn_logged(ns: &Netns, program: &str, args: &[&str], log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    ns.command(program)
        .args(args)
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

/// Starts BIRD with `conf` in `ns`.
fn start_bird(fleet: &mut Fleet, ns_idx: Option<usize>, tag: &str, conf: &str) {
    let dir = fleet.dir.path().to_path_buf();
    let cf = dir.join(format!("bird-{tag}.conf"));
    std::fs::write(&cf, conf).unwrap();
    let ctl = dir.join(format!("bird-{tag}.ctl"));
    let ns = match ns_idx {
        Some(i) => &fleet.gws[i].ns,
        None => &fleet.rt,
    };
    // Check the config first: a syntax error names its line.
    let out = ns.try_sh(&format!("bird -p -c {}", cf.display()));
    assert!(
        out.status.success(),
        "bird -p {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = spawn_logged(
        ns,
        "bird",
        &[
            "-f",
            "-c",
            &cf.to_string_lossy(),
            "-s",
            &ctl.to_string_lossy(),
        ],
        &dir.join(format!("bird-{tag}.log")),
    );
    fleet.children.push(child);
}

/// Starts zebra + bgpd in `ns` (a pathspace of their own) and loads `conf`
/// with vtysh, as the `frr` service does with frr.conf.
fn start_frr(fleet: &mut Fleet, ns_idx: Option<usize>, tag: &str, conf: &str) {
    let dir = fleet.dir.path().to_path_buf();
    let ns = match ns_idx {
        Some(i) => &fleet.gws[i].ns,
        None => &fleet.rt,
    };
    let space = ns.name.clone();
    let run = PathBuf::from(format!("/var/run/frr/{space}"));
    std::fs::create_dir_all(&run).unwrap();
    std::process::Command::new("chown")
        .args(["frr:frr", &run.to_string_lossy()])
        .status()
        .expect("chown");
    fleet.frr_dirs.push(run.clone());
    let cf = dir.join(format!("frr-{tag}.conf"));
    std::fs::write(&cf, conf).unwrap();
    let mut children = Vec::new();
    for d in ["zebra", "bgpd"] {
        let pid = run.join(format!("{d}.pid"));
        let child = spawn_logged(
            ns,
            &format!("/usr/lib/frr/{d}"),
            &[
                "-N",
                &space,
                "-f",
                "/dev/null",
                "-i",
                &pid.to_string_lossy(),
            ],
            &dir.join(format!("frr-{tag}-{d}.log")),
        );
        children.push(child);
        let t0 = Instant::now();
        while !run.join(format!("{d}.vty")).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{d} did not start in {}",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fleet.children.extend(children);
    let out = std::process::Command::new("vtysh")
        .args(["-N", &space, "-f", &cf.to_string_lossy()])
        .output()
        .expect("vtysh");
    assert!(
        out.status.success(),
        "vtysh -f {tag}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build(daemons: [Daemon; 4], sharing: bool) -> Fleet {
    let rt = Netns::new("fl-rt");
    let client = Netns::new("fl-cl");
    let gws: Vec<Gateway> = (0..3)
        .map(|i| Gateway {
            ns: Netns::new(&format!("fl-gw{}", i + 1)),
            dpgw: None,
            sock: PathBuf::new(),
            cfg: PathBuf::new(),
            log: PathBuf::new(),
        })
        .collect();
    let backends: Vec<Netns> = (0..BACKENDS.len())
        .map(|i| Netns::new(&format!("fl-b{}", i + 1)))
        .collect();
    let mut fleet = Fleet {
        client,
        rt,
        gws,
        _backends: Vec::new(),
        dir: tempfile::tempdir().expect("tempdir"),
        children: Vec::new(),
        frr_dirs: Vec::new(),
        sharing,
    };
    if sharing {
        use std::os::unix::fs::PermissionsExt;
        let k = fleet.dir.path().join("fleet.key");
        std::fs::write(&k, "fleet-test-key-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let quiet = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0";
    for ns in [&fleet.rt, &fleet.client]
        .into_iter()
        .chain(fleet.gws.iter().map(|g| &g.ns))
        .chain(backends.iter())
    {
        ns.sh(quiet);
    }
    let rt = &fleet.rt;
    rt.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1");
    rt.sh("ip link add br0 type bridge && ip link set br0 up && ip addr add 198.18.2.1/24 dev br0");
    rt.sh("ip link add brg type bridge && ip link set brg up && ip addr add 198.18.3.1/24 dev brg");
    rt.sh(&format!(
        "ip link add r-c type veth peer name c0 netns {}",
        fleet.client.name
    ));
    rt.sh("ip addr add 198.18.1.1/24 dev r-c && ip link set r-c up");
    rt.sh("ip route add 10.200.0.0/24 via 198.18.1.10");
    fleet.client.sh(&format!(
        "ip link set c0 up && ip addr add 198.18.1.10/24 dev c0 && ip route add default via 198.18.1.1 && \
         ip link add vxlan0 type vxlan id 100 remote {VTEP} local 198.18.1.10 dstport 4789 dev c0 && \
         ip link set vxlan0 up && ip addr add 10.200.0.10/24 dev vxlan0 && \
         sysctl -qw net.ipv4.conf.c0.rp_filter=0 net.ipv4.conf.vxlan0.rp_filter=0 && \
         ip neigh add 10.200.0.1 lladdr 02:00:00:00:00:01 dev vxlan0 nud permanent && \
         ip route add {VIP}/32 via 10.200.0.1 dev vxlan0"
    ));
    for (i, g) in fleet.gws.iter().enumerate() {
        rt.sh(&format!(
            "ip link add r-g{n} type veth peer name g0 netns {ns} && ip link set r-g{n} master brg up",
            n = i + 1,
            ns = g.ns.name
        ));
        // The kernel owns .1N (the routing daemon's BGP session); dpgw owns
        // .2N (its underlay source) and the anycast VTEP, on the same MAC.
        // The kernel must not answer for the VTEP's traffic (dpgw reads it
        // off the ring): it drops it before routing, silently.
        g.ns.sh(&format!(
            "ip link set g0 up && ip addr add {a}/24 dev g0 && \
             nft add table ip fleet && \
             nft add chain ip fleet pre '{{ type filter hook prerouting priority -300; }}' && \
             nft add rule ip fleet pre ip daddr {VTEP} drop",
            a = gw_addr(i)
        ));
    }
    let mut servers = Vec::new();
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
        let www = fleet.dir.path().join(format!("www{}", i + 1));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("name"), format!("backend{}\n", i + 1)).unwrap();
        let server = b
            .command("python3")
            .args([
                "-m",
                "http.server",
                "80",
                "--bind",
                VIP,
                "--protocol",
                "HTTP/1.1",
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start http.server");
        servers.push(server);
    }
    fleet.children.extend(servers);
    for b in &backends {
        let t0 = Instant::now();
        while !b.sh("ss -ltn").contains(&format!("{VIP}:80")) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no server in {}",
                b.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fleet._backends = backends;
    // Routing daemons: the router, then one beside each gateway, each from
    // contrib/bgp with only the gateway's own address (and name) replaced.
    match daemons[0] {
        Daemon::Bird => start_bird(&mut fleet, None, "router", &contrib("bird-router.conf")),
        Daemon::Frr => start_frr(&mut fleet, None, "router", &contrib("frr-router.conf")),
    }
    for i in 0..3 {
        let me = gw_addr(i);
        match daemons[i + 1] {
            Daemon::Bird => {
                let c = contrib("bird-gateway.conf").replace("198.18.3.11", &me);
                start_bird(&mut fleet, Some(i), &format!("gw{}", i + 1), &c);
            }
            Daemon::Frr => {
                let c = contrib("frr-gateway.conf")
                    .replace("198.18.3.11", &me)
                    .replace("dpgw-gw1", &format!("dpgw-gw{}", i + 1));
                start_frr(&mut fleet, Some(i), &format!("gw{}", i + 1), &c);
            }
        }
    }
    for i in 0..3 {
        start_dpgw(&mut fleet, i);
    }
    fleet
}

fn services_toml(backends: &[usize]) -> String {
    let mut s = format!(
        "[acl]\ndefault = \"allow\"\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"vxlan\"\n"
    );
    for &i in backends {
        s.push_str(&format!(
            "[[service.backend]]\nip = \"{}\"\nmac = \"{}\"\n",
            BACKENDS[i],
            backend_mac(i)
        ));
    }
    s
}

fn start_dpgw(fleet: &mut Fleet, i: usize) {
    let rt_mac = mac_of(&fleet.rt, "brg");
    let fleet_section = if fleet.sharing {
        let peers: Vec<String> = (0..3)
            .filter(|&p| p != i)
            .map(|p| format!("\"{}:{SYNC_PORT}\"", gw_addr(p)))
            .collect();
        format!(
            "[fleet]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey_file = \"{}\"\n",
            gw_addr(i),
            peers.join(", "),
            fleet.dir.path().join("fleet.key").display()
        )
    } else {
        String::new()
    };
    let g = &mut fleet.gws[i];
    let gw_mac = mac_of(&g.ns, "g0");
    g.sock = fleet.dir.path().join(format!("gw{}.sock", i + 1));
    g.cfg = fleet.dir.path().join(format!("gw{}.toml", i + 1));
    g.log = fleet.dir.path().join(format!("gw{}.log", i + 1));
    let text = format!(
        "[dataplane]\nworkers = 1\nio = \"afpacket\"\nno_pin = true\n\
         [afpacket]\ninterfaces = [\"g0\"]\nblock_size = 65536\nblock_count = 32\ntx_frames = 256\npoll_when_idle = true\n\
         [gateway]\nvtep_ips = [\"{VTEP}\"]\nunderlay_ips = [\"{u}\"]\nlocal_mac = \"{gw_mac}\"\n\
         next_hop_mac = \"{rt_mac}\"\nnext_hop_ip = \"198.18.3.1\"\nnon_vip = \"drop\"\n\
         [control]\nsocket = \"{sock}\"\n\
         [announce]\nrequire_healthy_service = true\n\
         {fleet_section}{svc}",
        u = gw_underlay(i),
        sock = g.sock.display(),
        svc = services_toml(&(0..INITIAL).collect::<Vec<_>>()),
    );
    dataplane::config::Config::parse(&text).expect("fleet config parses");
    std::fs::write(&g.cfg, &text).unwrap();
    let log = std::fs::File::create(&g.log).unwrap();
    let child =
        g.ns.command(env!("CARGO_BIN_EXE_dpgw"))
            .args(["run", "--config"])
            .arg(&g.cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dpgw");
    g.dpgw = Some(child);
    let t0 = Instant::now();
    while Client::connect(&g.sock, Duration::from_secs(2)).is_err() {
        if let Some(st) = g.dpgw.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!(
                "dpgw gw{} exited ({st}):\n{}",
                i + 1,
                std::fs::read_to_string(&g.log).unwrap_or_default()
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ctl(sock: &Path, cmd: Command) -> Result<Option<Data>, String> {
    let mut c = Client::connect(sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    c.data(cmd).map_err(|e| e.to_string())
}

fn status(g: &Gateway) -> ctl::GatewayReport {
    match ctl(&g.sock, Command::GatewayStatus) {
        Ok(Some(Data::Gateway(r))) => r,
        other => panic!("gateway status: {other:?}"),
    }
}

/// The router's next hops for the VTEP.
fn paths(fleet: &Fleet) -> Vec<String> {
    let out = fleet.rt.sh(&format!("ip -4 route show {VTEP}/32"));
    let mut v: Vec<String> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Waits until the router has exactly `want` next hops; the time it took.
fn wait_paths(fleet: &Fleet, want: &[String], limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let p = paths(fleet);
        if p == want {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            let mut logs = String::new();
            let mut files: Vec<_> = std::fs::read_dir(fleet.dir.path())
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "log"))
            {
                logs.push_str(&format!(
                    "--- {}\n{}",
                    f.display(),
                    std::fs::read_to_string(f).unwrap_or_default()
                ));
            }
            for (i, g) in fleet.gws.iter().enumerate() {
                let o = g.ns.try_sh(&format!(
                    "ip route show proto 201; ip link show dpgw-announce; \
                     vtysh -N {n} -c 'show bgp summary' -c 'show ip route' -c 'show bgp ipv4 unicast' 2>/dev/null; \
                     birdc -s {d}/bird-gw{i}.ctl show route all 2>/dev/null",
                    n = g.ns.name,
                    d = fleet.dir.path().display(),
                    i = i + 1
                ));
                logs.push_str(&format!(
                    "--- gw{} kernel: {}{}",
                    i + 1,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            panic!(
                "router next hops {p:?}, want {want:?} after {limit:?}\nrouter: {}{}\n{logs}",
                fleet.rt.sh("ip route"),
                fleet.rt.sh(&format!(
                    "birdc -s {d}/bird-router.ctl show route all 2>/dev/null; \
                     vtysh -N {n} -c 'show bgp summary' -c 'show bgp ipv4 unicast' 2>/dev/null; true",
                    d = fleet.dir.path().display(),
                    n = fleet.rt.name
                ))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hops(idx: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = idx.iter().map(|&i| gw_addr(i)).collect();
    v.sort();
    v
}

fn run_py(ns: &Netns, script: &str, args: &[String]) -> std::process::Child {
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

fn py_json(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {s:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn tx_of(g: &Gateway) -> u64 {
    match ctl(&g.sock, Command::Stats) {
        Ok(Some(Data::Stats(s))) => s.total.tx,
        other => panic!("stats: {other:?}"),
    }
}

/// Broken connections of one long-lived run: ended by an error, or answered
/// by more than one backend (the second one reset it, or it moved).
fn broken(v: &serde_json::Value) -> (usize, Vec<String>) {
    let mut why = Vec::new();
    for c in v.as_array().expect("list") {
        let names = c["names"].as_array().map_or(0, |n| n.len());
        if !c["err"].is_null() || names != 1 {
            why.push(format!("{}", c));
        }
    }
    (why.len(), why)
}

/// Runs `conns` long-lived connections for `secs`, with `event` done after
/// 2 s; the broken connections.
fn through<F: FnOnce(&mut Fleet)>(
    fleet: &mut Fleet,
    conns: usize,
    secs: f64,
    event: F,
) -> (usize, Vec<String>) {
    let ready = fleet.dir.path().join("ready");
    let _ = std::fs::remove_file(&ready);
    let child = run_py(
        &fleet.client,
        PY_LONG,
        &[
            conns.to_string(),
            "0.2".into(),
            (secs + 1.0).to_string(),
            ready.to_string_lossy().into_owned(),
        ],
    );
    // The event comes once every connection is established and answered
    // (on a loaded machine that can take more than the first second).
    let t0 = Instant::now();
    while !ready.exists() && t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    event(fleet);
    broken(&py_json(child))
}

fn set_backends(fleet: &Fleet, idx: &[usize]) {
    let f = fleet.dir.path().join("desired.toml");
    std::fs::write(&f, services_toml(idx)).unwrap();
    for g in &fleet.gws {
        if g.dpgw.is_none() {
            continue;
        }
        let r = ctl(
            &g.sock,
            Command::Apply {
                content: std::fs::read_to_string(&f).unwrap(),
                base_dir: None,
                dry_run: false,
            },
        );
        assert!(matches!(r, Ok(Some(Data::Applied(_)))), "apply: {r:?}");
    }
}

fn fleet_report(g: &Gateway) -> Option<ctl::FleetReport> {
    match ctl(&g.sock, Command::Stats) {
        Ok(Some(Data::Stats(s))) => s.fleet,
        other => panic!("stats: {other:?}"),
    }
}

/// One fleet at a time: each is 8 namespaces, 3 dpgw and 4 routing daemons.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fleet_case(daemons: [Daemon; 4], sharing: bool) {
    require_root_netns();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let mut fleet = build(daemons, sharing);
    let all = hops(&[0, 1, 2]);
    let t = wait_paths(&fleet, &all, Duration::from_secs(40));
    eprintln!("fleet {daemons:?}: 3-way multipath after {t:?}");
    for g in &fleet.gws {
        let s = status(g);
        assert!(s.announced && !s.drained, "{s:?}");
        assert_eq!(s.reason, "forwarding");
        assert_eq!(s.prefixes, [format!("{VTEP}/32")]);
    }

    // New connections spread over the three gateways.
    let before: Vec<u64> = fleet.gws.iter().map(tx_of).collect();
    let names = py_json(run_py(&fleet.client, PY_SHORT, &["90".into()]));
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!names.contains(&"ERR"), "{names:?}");
    let per_gw: Vec<u64> = fleet
        .gws
        .iter()
        .zip(&before)
        .map(|(g, b)| tx_of(g) - b)
        .collect();
    eprintln!("fleet: packets forwarded per gateway for 90 connections: {per_gw:?}");
    assert!(
        per_gw.iter().all(|&n| n > 0),
        "ECMP did not spread: {per_gw:?}"
    );

    // apply: one desired file, one digest; twice is a no-op; an error changes nothing.
    let f = fleet.dir.path().join("same.toml");
    std::fs::write(&f, services_toml(&[0, 1, 2])).unwrap();
    let mut digests = Vec::new();
    for g in &fleet.gws {
        let r = ctl(
            &g.sock,
            Command::Apply {
                content: std::fs::read_to_string(&f).unwrap(),
                base_dir: None,
                dry_run: false,
            },
        );
        match r {
            Ok(Some(Data::Applied(a))) => {
                assert!(a.changes.is_empty(), "already equal: {:?}", a.changes);
                digests.push(a.digest_after);
            }
            other => panic!("apply: {other:?}"),
        }
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let bad = ctl(
        &fleet.gws[0].sock,
        Command::Apply {
            content: services_toml(&[0]).replace("port = 80", "port = 80\nscheduler_x = 1"),
            base_dir: None,
            dry_run: false,
        },
    );
    assert!(
        bad.as_ref().is_err_and(|e| e.contains("scheduler_x")),
        "{bad:?}"
    );

    let mut report: BTreeMap<&str, usize> = BTreeMap::new();
    let conns = 300;
    // (a) drain one gateway: withdrawn, still forwarding; nothing breaks.
    let (n, why) = through(&mut fleet, conns, 6.0, |fl| {
        let t0 = Instant::now();
        let s = match ctl(&fl.gws[0].sock, Command::GatewayDrain) {
            Ok(Some(Data::Gateway(s))) => s,
            other => panic!("drain: {other:?}"),
        };
        assert!(!s.announced && s.drained, "{s:?}");
        assert_eq!(s.reason, "drained by operator");
        wait_paths(fl, &hops(&[1, 2]), Duration::from_secs(10));
        eprintln!(
            "fleet: drain -> withdrawn at the router in {:?}",
            t0.elapsed()
        );
    });
    report.insert("a_drain", n);
    assert_eq!(n, 0, "drain broke connections: {why:?}");
    match ctl(&fleet.gws[0].sock, Command::GatewayUndrain) {
        Ok(Some(Data::Gateway(s))) => assert!(s.announced && !s.drained, "{s:?}"),
        other => panic!("undrain: {other:?}"),
    }
    wait_paths(&fleet, &all, Duration::from_secs(10));

    // (b) SIGKILL one dpgw: its route goes with its device; nothing breaks
    // beyond what was in flight inside it.
    let (n, why) = through(&mut fleet, conns, 7.0, |fl| {
        let mut c = fl.gws[1].dpgw.take().unwrap();
        let t0 = Instant::now();
        c.kill().unwrap();
        c.wait().unwrap();
        wait_paths(fl, &hops(&[0, 2]), Duration::from_secs(10));
        eprintln!(
            "fleet: SIGKILL -> withdrawn at the router in {:?}",
            t0.elapsed()
        );
    });
    report.insert("b_sigkill", n);
    assert_eq!(n, 0, "a killed gateway broke connections: {why:?}");
    // More kill trials for the withdrawal time (FLEET_KILL_TRIALS, default 3).
    let trials: usize = std::env::var("FLEET_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut times = Vec::new();
    for _ in 0..trials {
        start_dpgw(&mut fleet, 1);
        wait_paths(&fleet, &all, Duration::from_secs(20));
        let mut c = fleet.gws[1].dpgw.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        times.push(wait_paths(&fleet, &hops(&[0, 2]), Duration::from_secs(10)));
    }
    times.sort();
    if !times.is_empty() {
        eprintln!(
            "fleet {:?}: SIGKILL -> withdrawal over {} trials: p50 {:?}, max {:?}",
            daemons[2],
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    start_dpgw(&mut fleet, 1);
    wait_paths(&fleet, &all, Duration::from_secs(20));

    // (c) add a backend: flows keep their gateway and their entries.
    let (n, why) = through(&mut fleet, conns, 5.0, |fl| set_backends(fl, &[0, 1, 2, 3]));
    report.insert("c_add_backend", n);
    assert_eq!(n, 0, "adding a backend broke connections: {why:?}");
    // (d) remove a backend: only its connections break.
    let (n, why) = through(&mut fleet, conns, 5.0, |fl| set_backends(fl, &[0, 1, 2]));
    report.insert("d_remove_backend", n);
    let not_b4 = why.iter().filter(|w| !w.contains("backend4")).count();
    assert_eq!(not_b4, 0, "removing backend4 broke others: {why:?}");
    // (e) drain a gateway and add a backend within the same second: the
    // moved flows have no entry on their new gateway and the new Maglev
    // table sends some elsewhere. Without sharing they break (recorded);
    // with sharing the peers' choices keep every one.
    let (n, why) = through(&mut fleet, conns, 6.0, |fl| {
        ctl(&fl.gws[2].sock, Command::GatewayDrain).expect("drain");
        set_backends(fl, &[0, 1, 2, 3]);
    });
    report.insert("e_drain_and_add", n);
    if sharing {
        assert_eq!(n, 0, "with sharing, drain + add broke connections: {why:?}");
        let reps: Vec<ctl::FleetReport> = fleet
            .gws
            .iter()
            .filter(|g| g.dpgw.is_some())
            .map(|g| fleet_report(g).expect("fleet report"))
            .collect();
        let used: u64 = reps.iter().map(|r| r.used).sum();
        let sent: u64 = reps.iter().map(|r| r.sent_records).sum();
        let bytes: u64 = reps.iter().map(|r| r.sent_bytes).sum();
        let dgrams: u64 = reps.iter().map(|r| r.sent_datagrams).sum();
        let rejected: u64 = reps
            .iter()
            .map(|r| {
                r.rejected_bad_mac
                    + r.rejected_replay
                    + r.rejected_malformed
                    + r.rejected_unknown_peer
            })
            .sum();
        eprintln!(
            "fleet sharing: records sent {sent}, datagrams {dgrams}, bytes {bytes}, shared choices used {used}, rejected {rejected}"
        );
        assert!(used > 0, "no shared choice was used: {reps:?}");
        assert_eq!(rejected, 0, "{reps:?}");
        assert!(
            reps.iter().all(|r| r.peers.iter().all(|p| !p.silent)),
            "{reps:?}"
        );
        // A datagram from a host that is not a peer (the router), and one
        // with the wrong key from there: refused and counted, nothing installed.
        let before = fleet_report(&fleet.gws[0]).unwrap();
        fleet.rt.sh(&format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(b'DPGS\\x01\\x00\\x00\\x00' + bytes(16 + 32), ('{}', {SYNC_PORT})) for _ in range(50)]\"",
            gw_addr(0)
        ));
        std::thread::sleep(Duration::from_millis(300));
        let after = fleet_report(&fleet.gws[0]).unwrap();
        assert_eq!(
            after.rejected_unknown_peer - before.rejected_unknown_peer,
            50,
            "{after:?}"
        );
        assert_eq!(
            after.installed,
            before.installed + (after.received_records - before.received_records)
        );
    }
    eprintln!(
        "fleet {daemons:?} sharing {sharing}: broken of {conns} long-lived connections per event: {report:?} ({:?} in all)",
        t_start.elapsed()
    );
}

#[test]
#[ignore = "needs root, ip netns, bird and frr: run by scripts/test.sh as root"]
fn fleet_bird_router_mixed_gateways() {
    fleet_case(
        [Daemon::Bird, Daemon::Bird, Daemon::Frr, Daemon::Bird],
        false,
    );
}

#[test]
#[ignore = "needs root, ip netns, bird and frr: run by scripts/test.sh as root"]
fn fleet_bird_router_flow_sharing() {
    fleet_case(
        [Daemon::Bird, Daemon::Bird, Daemon::Frr, Daemon::Bird],
        true,
    );
}

#[test]
#[ignore = "needs root, ip netns, bird and frr: run by scripts/test.sh as root"]
fn fleet_frr_router_mixed_gateways_flow_sharing() {
    fleet_case([Daemon::Frr, Daemon::Frr, Daemon::Bird, Daemon::Frr], true);
}
