//! End to end, between Linux network namespaces: a client behind a kernel VXLAN
//! device talks TCP (HTTP/1.1) to a service VIP; `dpgw run` (AF_PACKET, two
//! workers) decapsulates, filters and load-balances to three backends, each a
//! kernel VXLAN device plus a real `python3 -m http.server` on the VIP that
//! answers with its own name; replies go straight back to the client (DSR).
//!
//! ```text
//!  client ns                     rt ns (router)                      gw ns
//!  c0 198.18.1.10 ─── r-c 198.18.1.1 │ r-g 198.18.0.254 ───────── g0 (dpgw: VTEP 198.18.0.1)
//!  vxlan0 VNI 100 → 198.18.0.1       │ br0 198.18.2.1
//!  10.200.0.10/24                    ├─ r-b1 ── e0 198.18.2.11  backend1 ns: vxlan0 (MAC 02:..:01:01), VIP on lo
//!                                    ├─ r-b2 ── e0 198.18.2.12  backend2 ns
//!                                    └─ r-b3 ── e0 198.18.2.13  backend3 ns
//! ```
//!
//! The router ARPs for the VTEP (answered by dpgw's exception path), dpgw
//! resolves the router as its next hop by ARP (`next_hop_ip`). ACL rules and
//! backend changes go through the control socket (the `ctl` client library
//! that `dpgwctl` is built on). Every veth keeps its default offloads (as on
//! any container host): the client's frames reach dpgw with partial TCP
//! checksums, which dpgw completes before forwarding (the test checks the
//! counter). Needs root and `ip netns`: `#[ignore]`d, run by
//! `scripts/test.sh` as root (`-- --ignored`); asked for without root, it fails.

mod afpacket_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use afpacket_support::{exception_hook_wired, ping, require_root_netns, Netns};
use ctl::{Action, BackendSpec, BackendState, Client, Command, Data, MacAddr, RuleSpec};

const GW_MAC: &str = "02:00:00:00:00:01";
const VIP: &str = "10.96.0.100";
const BACKENDS: [&str; 3] = ["198.18.2.11", "198.18.2.12", "198.18.2.13"];

fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:01:{:02x}", i + 1)
}

/// HTTP/1.1 client: `python3 - N REQS TIMEOUT` opens N connections one after
/// the other, sends REQS requests on each (keep-alive) and prints one JSON list:
/// the backend name per connection, `SPLIT:a,b` if one connection was answered
/// by several backends, `ERR` if it failed.
const PY_CLIENT: &str = r#"
import http.client, json, sys
n, reqs, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
out = []
for i in range(n):
    try:
        c = http.client.HTTPConnection('10.96.0.100', 80, timeout=timeout)
        names = set()
        for r in range(reqs):
            c.request('GET', '/name')
            resp = c.getresponse()
            names.add(resp.read().decode().strip())
        c.close()
        out.append(names.pop() if len(names) == 1 else 'SPLIT:' + ','.join(sorted(names)))
    except Exception as e:
        out.append('ERR')
print(json.dumps(out))
"#;

/// Long-lived connections: opens K keep-alive connections, prints their first
/// answers as one JSON line, waits for the file argv[2] to exist, asks again on
/// each and prints the second answers.
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
while not os.path.exists(flag) and time.time() - t0 < 30:
    time.sleep(0.05)
second = []
for c in conns:
    try:
        c.request('GET', '/name'); second.append(c.getresponse().read().decode().strip())
    except Exception:
        second.append('ERR')
print(json.dumps(second), flush=True)
"#;

/// TCP sink: `python3 -c PY_SINK VIP` accepts on VIP:8080, reads each
/// connection to EOF and answers with the number of bytes read.
const PY_SINK: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(64)
def serve(c):
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        n += len(d)
    c.sendall(str(n).encode()); c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Uploads: `python3 - N BYTES` sends BYTES bytes on each of N connections to
/// VIP:8080 and prints one JSON list of the counts the sink answered (-1 on error).
const PY_UPLOAD: &str = r#"
import json, socket, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(n):
    try:
        c = socket.create_connection(('10.96.0.100', 8080), timeout=10)
        c.sendall(bytes(size)); c.shutdown(socket.SHUT_WR)
        r = b''
        while True:
            d = c.recv(100)
            if not d:
                break
            r += d
        out.append(int(r))
    except Exception:
        out.append(-1)
print(json.dumps(out))
"#;

/// UDP echo on the VIP: `python3 -c PY_ECHO VIP NAME` answers each datagram
/// with `NAME LENGTH` (what it received, reassembled by the kernel).
const PY_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7))
while True:
    d, a = s.recvfrom(65536)
    s.sendto(('%s %d' % (sys.argv[2], len(d))).encode(), a)
"#;

/// UDP client: `python3 - N SIZE` sends one SIZE-byte datagram from each of N
/// sockets (so N flows) to VIP:7 (up to 3 tries, 2 s each) and prints one
/// JSON list of the answers (`ERR` for none).
const PY_UDP: &str = r#"
import json, socket, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.bind(('10.200.0.10', 0))
    got = 'ERR'
    for attempt in range(3):
        s.sendto(bytes([i % 256]) * size, ('10.96.0.100', 7))
        try:
            got = s.recvfrom(100)[0].decode()
            break
        except socket.timeout:
            pass
    s.close()
    out.append(got)
print(json.dumps(out))
"#;

struct Topo {
    // Every namespace is deleted (with the processes in it) when dropped.
    _backends: Vec<Netns>,
    client: Netns,
    gw: Netns,
    rt: Netns,
    dir: tempfile::TempDir,
    dpgw: Option<Child>,
    servers: Vec<Child>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut c) = self.dpgw.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{ifname}/address"))
        .trim()
        .to_string()
}

fn build_topology() -> Topo {
    build_topology_tagged("e2e")
}

/// The topology above, its namespaces named after `tag` (tests of this file
/// run in parallel, in one process).
fn build_topology_tagged(tag: &str) -> Topo {
    let rt = Netns::new(&format!("{tag}-rt"));
    let gw = Netns::new(&format!("{tag}-gw"));
    let client = Netns::new(&format!("{tag}-cl"));
    let backends: Vec<Netns> = (1..=3)
        .map(|i| Netns::new(&format!("{tag}-b{i}")))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers = Vec::new();
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
    // Replies of the backends (DSR) reach the client's overlay address through its underlay one.
    rt.sh("ip route add 10.200.0.0/24 via 198.18.1.10");

    client.sh(
        "ip link set c0 up && ip addr add 198.18.1.10/24 dev c0 && ip route add default via 198.18.1.1 && \
         ip link add vxlan0 type vxlan id 100 remote 198.18.0.1 local 198.18.1.10 dstport 4789 dev c0 && \
         ip link set vxlan0 up && ip addr add 10.200.0.10/24 dev vxlan0 && \
         sysctl -qw net.ipv4.conf.c0.rp_filter=0 net.ipv4.conf.vxlan0.rp_filter=0",
    );
    // The gateway's inner MAC is static (no ARP inside the overlay) and the VIP is behind it.
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
        let www = dir.path().join(format!("www{}", i + 1));
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
        // A TCP sink on the VIP (service "upload"): reads until EOF, answers
        // with the byte count. Bulk uploads make the client's kernel send
        // segmentation-offload super-frames.
        let sink = b
            .command("python3")
            .args(["-c", PY_SINK, VIP])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sink");
        servers.push(sink);
    }
    for b in &backends {
        let t0 = Instant::now();
        while !b.sh("ss -ltn").contains(&format!("{VIP}:80"))
            || !b.sh("ss -ltn").contains(&format!("{VIP}:8080"))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "http.server did not start in {}",
                b.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Topo {
        _backends: backends,
        servers,
        client,
        gw,
        rt,
        dir,
        dpgw: None,
    }
}

fn config(topo: &Topo) -> String {
    let rt_mac = mac_of(&topo.rt, "r-g");
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
         [acl]\ndefault = \"allow\"\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"vxlan\"\n{backends}\
         [[service]]\nname = \"upload\"\nvip = \"{VIP}\"\nport = 8080\nproto = \"tcp\"\nencap = \"vxlan\"\n{backends}",
        sock = topo.dir.path().join("dpgw.sock").display(),
    )
}

fn start_dpgw(topo: &mut Topo, cfg_text: &str) -> PathBuf {
    dataplane::config::Config::parse(cfg_text).expect("e2e config parses");
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
    let sock = topo.dir.path().join("dpgw.sock");
    let t0 = Instant::now();
    while Client::connect(&sock, Duration::from_secs(2)).is_err() {
        if let Some(st) = topo.dpgw.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("dpgw exited ({st}):\n{}", dpgw_log(topo));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no control socket:\n{}",
            dpgw_log(topo)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sock
}

fn dpgw_log(topo: &Topo) -> String {
    std::fs::read_to_string(topo.dir.path().join("dpgw.log")).unwrap_or_default()
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

/// Opens `n` connections (`reqs` requests each); the backend name per connection.
fn connections(topo: &Topo, n: usize, reqs: usize, timeout_s: f64) -> Vec<String> {
    let out = run_py(
        &topo.client,
        PY_CLIENT,
        &[&n.to_string(), &reqs.to_string(), &timeout_s.to_string()],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

fn ctl(sock: &Path, cmd: Command) -> Option<Data> {
    let mut c = Client::connect(sock, Duration::from_secs(5)).expect("connect control socket");
    c.data(cmd).expect("control request")
}

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn e2e_vxlan_client_acl_maglev_backends() {
    require_root_netns();
    let t_start = Instant::now();
    let hook = exception_hook_wired();
    assert!(
        hook,
        "the Decap stage must punt ARP/ICMP/ND for our addresses (counted as `punted`)"
    );
    let mut topo = build_topology();
    if !hook {
        // Transitional: without the Decap stage's exception hook nobody answers
        // ARP for the VTEP, so the router gets a static entry.
        println!("NOTE: exception hook not wired; static ARP entry for the VTEP, ARP/ping checks skipped");
        topo.rt.sh(&format!(
            "ip neigh replace 198.18.0.1 lladdr {GW_MAC} dev r-g nud permanent"
        ));
    }
    let cfg = config(&topo);
    let sock = start_dpgw(&mut topo, &cfg);

    if hook {
        // ARP and ping to the VTEP address: from the router (on link) and from
        // the client (routed; the reply goes through dpgw's next hop).
        assert!(
            ping(&topo.rt, "198.18.0.1", 10),
            "no echo reply from the router's side\n{}",
            dpgw_log(&topo)
        );
        let neigh = topo.rt.sh("ip neigh show 198.18.0.1 dev r-g");
        assert!(
            neigh.contains(GW_MAC),
            "router's ARP entry for the VTEP: {neigh}"
        );
        assert!(
            ping(&topo.client, "198.18.0.1", 10),
            "no echo reply to the client\n{}",
            dpgw_log(&topo)
        );
    }

    // 90 connections, 3 requests each on one keep-alive connection (with 90,
    // a backend below 10 is a one-in-a-million event for a fair spread).
    let names = connections(&topo, 90, 3, 5.0);
    let per = count(&names);
    for i in 1..=3 {
        let k = format!("backend{i}");
        let got = per.get(&k).copied().unwrap_or(0);
        assert!(
            got >= 10,
            "backend{i} answered {got} of 90 connections: {per:?}\n{}",
            dpgw_log(&topo)
        );
    }
    // Every connection was answered, each by exactly one backend.
    assert_eq!(per.values().sum::<usize>(), 90);
    assert!(per.keys().all(|k| k.starts_with("backend")), "{per:?}");

    // ACL: denying the client's overlay prefix makes new connections fail;
    // removing the rule restores them.
    let ids = match ctl(
        &sock,
        Command::RuleAdd {
            rule: RuleSpec {
                vni: None,
                src: "10.200.0.0/24".into(),
                dst: "any".into(),
                proto: "any".into(),
                src_ports: "any".into(),
                dst_ports: "any".into(),
                action: Action::Deny,
                priority: Some(1),
                id: None,
                stateful: None,
            },
        },
    ) {
        Some(Data::RuleIds { ids }) => ids,
        other => panic!("rule add answered {other:?}"),
    };
    let denied = connections(&topo, 3, 1, 1.0);
    assert!(
        denied.iter().all(|n| n == "ERR"),
        "connections passed a deny rule: {denied:?}"
    );
    for id in ids {
        ctl(&sock, Command::RuleDel { id });
    }
    let allowed = connections(&topo, 5, 1, 3.0);
    assert!(
        allowed.iter().all(|n| n.starts_with("backend")),
        "after removing the rule: {allowed:?}"
    );

    // Backend changes while connections run. Long-lived connections first.
    let flag = topo.dir.path().join("go");
    let mut long = topo
        .client
        .command("python3")
        // 30 connections: with 3 backends, none on backend1 by chance has
        // probability (2/3)^30 < 1e-5 (it was 2.6 % with 9).
        .args(["-", "30"])
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

    // Drain backend1: no new connections go to it, its existing ones stay.
    ctl(
        &sock,
        Command::BackendState {
            service: "web".into(),
            ip: BACKENDS[0].parse().unwrap(),
            state: BackendState::Draining,
        },
    );
    let after_drain = count(&connections(&topo, 30, 1, 3.0));
    assert!(
        !after_drain.contains_key("backend1"),
        "drained backend got new connections: {after_drain:?}"
    );
    assert!(!after_drain.contains_key("ERR"), "{after_drain:?}");

    // Remove backend2: new connections only go to backend3.
    ctl(
        &sock,
        Command::BackendDel {
            service: "web".into(),
            ip: BACKENDS[1].parse().unwrap(),
        },
    );
    let after_del = count(&connections(&topo, 20, 1, 3.0));
    assert_eq!(
        after_del.get("backend3").copied(),
        Some(20),
        "after removing backend2: {after_del:?}"
    );

    // Add backend2 back: it takes new connections again.
    let mut b = BackendSpec::new(BACKENDS[1].parse().unwrap());
    b.mac = Some(MacAddr(
        dataplane::config::parse_mac(&backend_mac(1)).unwrap(),
    ));
    ctl(
        &sock,
        Command::BackendAdd {
            service: "web".into(),
            backend: b,
        },
    );
    let after_add = count(&connections(&topo, 30, 1, 3.0));
    assert!(
        after_add.get("backend2").copied().unwrap_or(0) >= 5,
        "re-added backend2: {after_add:?}"
    );
    assert!(!after_add.contains_key("backend1"), "{after_add:?}");

    // The long-lived connections opened before the changes: the ones on the
    // drained backend1 and on backend3 kept their backend.
    std::fs::write(&flag, b"go").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut long_out, &mut line).unwrap();
    let _ = long.wait();
    let second: Vec<String> =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        if a == "backend1" || a == "backend3" {
            assert_eq!(
                a, b,
                "a long-lived connection moved: first {first:?}, second {second:?}"
            );
        }
    }
    assert!(
        first.iter().any(|n| n == "backend1"),
        "no long-lived connection on backend1: {first:?}"
    );

    // Bulk uploads through the gateway (default offloads: the client's kernel
    // hands dpgw TCP super-frames, which it must segment): every byte arrives.
    let size = 2_000_000usize;
    let out = run_py(&topo.client, PY_UPLOAD, &["4", &size.to_string()]);
    let counts: Vec<i64> = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("upload output {out:?}: {e}\n{}", dpgw_log(&topo)));
    assert_eq!(
        counts,
        vec![size as i64; 4],
        "uploads through the gateway\n{}",
        dpgw_log(&topo)
    );

    // Stop dpgw cleanly: its final counters are conserved.
    if let Some(mut c) = topo.dpgw.take() {
        // SAFETY: SIGTERM to the dpgw process this test started.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let _ = c.wait();
    }
    let log = dpgw_log(&topo);
    assert!(log.contains("final counters"), "{log}");
    // The veths run with their default offloads: the client's TCP segments
    // reach dpgw with partial checksums, which AF_PACKET RX completes.
    let completed: u64 = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("io csum_completed"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(completed > 0, "no partial checksum was completed:\n{log}");
    println!("e2e took {:.1} s\n{log}", t_start.elapsed().as_secs_f64());
}

/// Fragments end to end: a UDP echo service on the VIP, 4000-byte datagrams
/// from the client over its 1450-byte overlay (1500-byte underlay), so its
/// kernel sends each as three fragments; the gateway sends all three to one
/// backend (the later ones carry no ports: without the fragment association
/// they would be `non_vip` drops here), whose kernel reassembles the
/// datagram and answers with its name and the length it received.
#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn e2e_udp_fragments_reach_one_backend() {
    require_root_netns();
    let mut topo = build_topology_tagged("e2f");
    for (i, b) in topo._backends.iter().enumerate() {
        let echo = b
            .command("python3")
            .args(["-c", PY_ECHO, VIP, &format!("backend{}", i + 1)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the echo server");
        topo.servers.push(echo);
    }
    for b in &topo._backends {
        let t0 = Instant::now();
        while !b.sh("ss -lun").contains(&format!("{VIP}:7 ")) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "echo did not start in {}",
                b.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut cfg = config(&topo);
    let mut backends = String::new();
    for (i, ip) in BACKENDS.iter().enumerate() {
        backends.push_str(&format!(
            "[[service.backend]]\nip = \"{ip}\"\nmac = \"{}\"\n",
            backend_mac(i)
        ));
    }
    cfg.push_str(&format!(
        "[[service]]\nname = \"echo\"\nvip = \"{VIP}\"\nport = 7\nproto = \"udp\"\nencap = \"vxlan\"\n{backends}"
    ));
    let sock = start_dpgw(&mut topo, &cfg);
    let mtu = topo.client.sh("cat /sys/class/net/vxlan0/mtu");
    assert_eq!(mtu.trim(), "1450", "client overlay MTU");

    let size = 4000usize;
    let out = run_py(&topo.client, PY_UDP, &["30", &size.to_string()]);
    let answers: Vec<String> = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client output {out:?}: {e}\n{}", dpgw_log(&topo)));
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        let (name, len) = a
            .split_once(' ')
            .unwrap_or_else(|| panic!("no answer: {answers:?}\n{}", dpgw_log(&topo)));
        assert_eq!(
            len,
            size.to_string(),
            "{a}: the backend got part of a datagram"
        );
        *per.entry(name.to_string()).or_default() += 1;
    }
    assert!(per.len() >= 2, "30 flows on one backend: {per:?}");
    let Some(Data::Stats(s)) = ctl(&sock, Command::Stats) else {
        panic!("no stats")
    };
    let f = &s.fragments;
    // 30 datagrams of 3 fragments (more if a try was repeated), in order.
    assert!(f.first >= 30 && f.associated >= 60, "{f:?}");
    assert_eq!(f.table_full, 0, "{f:?}");
    assert!(
        !s.total.drops.contains_key("frag_unmatched"),
        "{:?}",
        s.total.drops
    );
    println!("fragments: {f:?}, per backend {per:?}");
}

/// A download: `python3 - BYTES TIMEOUT` GETs /big from the VIP and prints
/// how many bytes (headers and body) arrived before the end or the timeout.
const PY_DOWNLOAD: &str = r#"
import socket, sys, time
want, timeout = int(sys.argv[1]), float(sys.argv[2])
c = socket.create_connection(('10.96.0.100', 80), timeout=timeout)
c.sendall(b'GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
got, t0 = 0, time.time()
try:
    while time.time() - t0 < timeout:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
except Exception:
    pass
print(got)
"#;

/// PMTU discovery through the gateway: the backends' direct replies to the
/// client cross a 1400-byte link (the router's side toward the client), so
/// the router answers their full-size segments with "fragmentation needed"
/// addressed to the VIP, which the router routes to the gateway as plain IP.
/// Without `[[tenant]]` the gateway cannot tell whose flow it is about (the
/// VNI), drops it and the download stalls; once the client's overlay prefix
/// is a tenant (`dpgwctl tenant add`, live), the error goes to the backend
/// owning the flow, whose TCP lowers its segment size, and a 2 MB download
/// completes.
#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn e2e_pmtu_discovery_on_the_direct_return_path() {
    require_root_netns();
    let mut topo = build_topology_tagged("e2p");
    let size = 2_000_000usize;
    for i in 0..BACKENDS.len() {
        let www = topo.dir.path().join(format!("www{}", i + 1));
        std::fs::write(www.join("big"), vec![b'x'; size]).unwrap();
    }
    topo.rt.sh(&format!("ip route add {VIP}/32 via 198.18.0.1"));
    topo.rt.sh("ip link set r-c mtu 1400");
    let cfg = config(&topo);
    let sock = start_dpgw(&mut topo, &cfg);
    let body = |timeout: &str| -> usize {
        let out = run_py(&topo.client, PY_DOWNLOAD, &[&size.to_string(), timeout]);
        out.trim().parse::<usize>().unwrap_or(0)
    };
    let stalled = body("4");
    assert!(
        stalled < size,
        "without forwarding the errors the download should stall (got {stalled})"
    );
    let Some(Data::Stats(s)) = ctl(&sock, Command::Stats) else {
        panic!("no stats")
    };
    let dropped = s.total.drops.get("not_udp").copied().unwrap_or(0);
    assert!(
        dropped >= 1,
        "the errors reach the gateway: {:?}",
        s.total.drops
    );
    ctl(
        &sock,
        Command::TenantAdd {
            tenant: ctl::TenantSpec {
                vni: 100,
                prefixes: vec!["10.200.0.0/24".into()],
                encap: ctl::OverlayEncap::Vxlan,
                vtep: Vec::new(),
            },
        },
    );
    let got = body("20");
    let Some(Data::Stats(s)) = ctl(&sock, Command::Stats) else {
        panic!("no stats")
    };
    // (The count includes the response headers.)
    assert!(
        got > size,
        "got {got}: download with PMTU discovery through the gateway (errors forwarded: {})\n{}",
        s.icmp_errors_forwarded,
        dpgw_log(&topo)
    );
    assert!(s.icmp_errors_forwarded >= 1, "{s:?}");
    println!(
        "stalled at {stalled} bytes without; {got} with {} ICMP errors forwarded",
        s.icmp_errors_forwarded
    );
}
