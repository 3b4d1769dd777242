//! Both directions between an overlay and the outside, between Linux network
//! namespaces: two clients behind kernel VXLAN devices (VNI 100) talk TCP
//! and UDP to a server outside the overlay (plain IP behind the router);
//! `dpgw run` (AF_PACKET, two workers) decapsulates their packets and routes
//! them out, and the server's replies, plain IP to the clients' overlay
//! addresses, come back to the gateway (the router's route for the tenant
//! prefix) and are encapsulated to the VTEP each address was learned behind.
//!
//! ```text
//!  cl1 ns: c0 198.18.1.10, vxlan0 VNI 100 → 198.18.0.1, 172.16.0.10/24 ─┐
//!  cl2 ns: c0 198.18.3.20, vxlan0 VNI 100 → 198.18.0.1, 172.16.0.11/24 ─┤ rt ns (router)
//!  srv ns: s0 203.0.113.10/24 (TCP 8000, UDP 7) ────────────────────────┤ 172.16.0.0/16 via 198.18.0.1
//!  gw ns:  g0 (dpgw: VTEP 198.18.0.1, next hop 198.18.0.254) ────────────┘
//! ```
//!
//! Every veth keeps its default offloads. Needs root and `ip netns`:
//! `#[ignore]`d, run by `scripts/test.sh` as root (`-- --ignored`); asked for
//! without root, it fails.

mod afpacket_support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use afpacket_support::{ping, require_root_netns, Netns};
use ctl::{Client, Command, Data};

const GW_MAC: &str = "02:00:00:00:00:01";
const SERVER: &str = "203.0.113.10";

/// The server: TCP on :8000 answers each line `L` with `SRC L` (the peer's
/// address) and a line `BIG N` with N bytes; UDP on :7 answers `SRC LEN`.
const PY_SERVER: &str = r#"
import socket, threading
def tcp_conn(c, a):
    f = c.makefile('rb')
    for line in f:
        line = line.strip().decode()
        if line.startswith('BIG '):
            c.sendall(b'x' * int(line[4:]))
        else:
            c.sendall(('%s %s\n' % (a[0], line)).encode())
    c.close()
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('203.0.113.10', 8000)); s.listen(64)
    while True:
        c, a = s.accept()
        threading.Thread(target=tcp_conn, args=(c, a), daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('203.0.113.10', 7))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(('%s %d' % (a[0], len(d))).encode(), a)
threading.Thread(target=tcp, daemon=True).start()
udp()
"#;

/// A client: `python3 - SRC N` opens N TCP connections from SRC to the
/// server (3 lines each) and sends N UDP datagrams from SRC; prints one JSON
/// object {"tcp": [answers...], "udp": [answers...]} (`ERR` for a failure).
const PY_CLIENT: &str = r#"
import json, socket, sys
src, n = sys.argv[1], int(sys.argv[2])
tcp, udp = [], []
for i in range(n):
    try:
        c = socket.create_connection(('203.0.113.10', 8000), timeout=3, source_address=(src, 0))
        f = c.makefile('rb')
        got = []
        for k in range(3):
            c.sendall(('hello%d\n' % k).encode())
            got.append(f.readline().decode().strip())
        c.close()
        tcp.append(got[0] if len(set(g.split()[0] for g in got)) == 1 else 'SPLIT')
    except Exception as e:
        tcp.append('ERR')
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.bind((src, 0))
    got = 'ERR'
    for attempt in range(3):
        s.sendto(b'u' * 100, ('203.0.113.10', 7))
        try:
            got = s.recvfrom(200)[0].decode(); break
        except socket.timeout:
            pass
    s.close()
    udp.append(got)
print(json.dumps({'tcp': tcp, 'udp': udp}))
"#;

/// A download: `python3 - SRC BYTES` asks the server for BYTES bytes and
/// prints how many arrived (within 20 s).
const PY_DOWNLOAD: &str = r#"
import socket, sys, time
src, want = sys.argv[1], int(sys.argv[2])
c = socket.create_connection(('203.0.113.10', 8000), timeout=20, source_address=(src, 0))
c.sendall(('BIG %d\n' % want).encode())
got, t0 = 0, time.time()
try:
    while got < want and time.time() - t0 < 20:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
except Exception:
    pass
print(got)
"#;

struct Topo {
    rt: Netns,
    gw: Netns,
    cl: Vec<Netns>,
    srv: Netns,
    dir: tempfile::TempDir,
    dpgw: Option<Child>,
    server: Option<Child>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in [self.dpgw.take(), self.server.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{ifname}/address"))
        .trim()
        .to_string()
}

fn build(tag: &str) -> Topo {
    let rt = Netns::new(&format!("{tag}-rt"));
    let gw = Netns::new(&format!("{tag}-gw"));
    let srv = Netns::new(&format!("{tag}-srv"));
    let cl: Vec<Netns> = (1..=2)
        .map(|i| Netns::new(&format!("{tag}-c{i}")))
        .collect();
    let quiet = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0";
    for ns in [&rt, &gw, &srv].into_iter().chain(cl.iter()) {
        ns.sh(quiet);
    }
    rt.sh("sysctl -qw net.ipv4.ip_forward=1");
    rt.sh(&format!(
        "ip link add r-g type veth peer name g0 netns {}",
        gw.name
    ));
    rt.sh("ip addr add 198.18.0.254/24 dev r-g && ip link set r-g up");
    rt.sh(&format!(
        "ip link add r-s type veth peer name s0 netns {}",
        srv.name
    ));
    rt.sh("ip addr add 203.0.113.1/24 dev r-s && ip link set r-s up");
    // The tenant prefix is behind the gateway.
    rt.sh("ip route add 172.16.0.0/16 via 198.18.0.1");
    srv.sh("ip link set s0 up && ip addr add 203.0.113.10/24 dev s0 && ip route add default via 203.0.113.1");
    for (i, c) in cl.iter().enumerate() {
        let (net, me, ovl) = match i {
            0 => ("198.18.1", "198.18.1.10", "172.16.0.10"),
            _ => ("198.18.3", "198.18.3.20", "172.16.0.11"),
        };
        rt.sh(&format!(
            "ip link add r-c{n} type veth peer name c0 netns {ns} && ip addr add {net}.1/24 dev r-c{n} && ip link set r-c{n} up",
            n = i + 1,
            ns = c.name
        ));
        // vxlan0 keeps the kernel's default MTU (1450 over a 1500 underlay).
        c.sh(&format!(
            "ip link set c0 up && ip addr add {me}/24 dev c0 && ip route add default via {net}.1 && \
             ip link add vxlan0 type vxlan id 100 remote 198.18.0.1 local {me} dstport 4789 dev c0 && \
             ip link set vxlan0 up && ip addr add {ovl}/24 dev vxlan0 && \
             ip neigh add 172.16.0.1 lladdr {GW_MAC} dev vxlan0 nud permanent && \
             ip route add 203.0.113.0/24 via 172.16.0.1 dev vxlan0 && \
             sysctl -qw net.ipv4.conf.c0.rp_filter=0 net.ipv4.conf.vxlan0.rp_filter=0"
        ));
    }
    gw.sh("ip link set g0 up");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = srv
        .command("python3")
        .args(["-c", PY_SERVER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let t0 = Instant::now();
    while !srv.sh("ss -ltn").contains("203.0.113.10:8000") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Topo {
        rt,
        gw,
        cl,
        srv,
        dir,
        dpgw: None,
        server: Some(server),
    }
}

fn config(topo: &Topo, acl: &str) -> String {
    format!(
        "[dataplane]\nworkers = 2\nio = \"afpacket\"\nno_pin = true\n\
         [afpacket]\ninterfaces = [\"g0\"]\nblock_size = 65536\nblock_count = 64\ntx_frames = 512\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\"]\nlocal_mac = \"{GW_MAC}\"\n\
         next_hop_mac = \"{rt}\"\nnext_hop_ip = \"198.18.0.254\"\nmtu = 1500\n\
         [control]\nsocket = \"{sock}\"\n\
         [[tenant]]\nvni = 100\nprefixes = [\"172.16.0.0/16\"]\n{acl}",
        rt = mac_of(&topo.rt, "r-g"),
        sock = topo.dir.path().join("dpgw.sock").display(),
    )
}

fn start_dpgw(topo: &mut Topo, cfg_text: &str) -> PathBuf {
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
    let sock = topo.dir.path().join("dpgw.sock");
    let t0 = Instant::now();
    while Client::connect(&sock, Duration::from_secs(2)).is_err() {
        if let Some(st) = topo.dpgw.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("dpgw exited ({st}):\n{}", log_of(topo));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no control socket:\n{}",
            log_of(topo)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sock
}

fn log_of(topo: &Topo) -> String {
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

#[derive(serde::Deserialize, Debug)]
struct Answers {
    tcp: Vec<String>,
    udp: Vec<String>,
}

fn talk(ns: &Netns, src: &str, n: usize) -> Answers {
    let out = run_py(ns, PY_CLIENT, &[src, &n.to_string()]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

fn ctl(sock: &Path, cmd: Command) -> Option<Data> {
    let mut c = Client::connect(sock, Duration::from_secs(5)).expect("connect control socket");
    c.data(cmd).expect("control request")
}

fn stats(sock: &Path) -> ctl::StatsReport {
    match ctl(sock, Command::Stats) {
        Some(Data::Stats(s)) => *s,
        other => panic!("stats: {other:?}"),
    }
}

fn vteps(sock: &Path) -> Vec<ctl::VtepRow> {
    match ctl(sock, Command::VtepList { vni: Some(100) }) {
        Some(Data::Vteps { vteps, .. }) => vteps,
        other => panic!("vtep list: {other:?}"),
    }
}

fn learned_at(sock: &Path, addr: &str) -> Option<IpAddr> {
    let a: IpAddr = addr.parse().unwrap();
    vteps(sock)
        .into_iter()
        .find(|v| v.addr == a && v.source == "learned")
        .map(|v| v.vtep)
}

/// Waits until traffic passes both ways (the gateway resolves its next hop
/// and the router the gateway's VTEP address on the first packets).
fn wait_ready(topo: &Topo) {
    let t0 = Instant::now();
    while !ping(&topo.cl[0], SERVER, 2) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no echo reply through the gateway:\n{}",
            log_of(topo)
        );
    }
}

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn overlay_two_way_tcp_udp_learning_and_moves() {
    require_root_netns();
    let mut topo = build("ovl");
    let cfg = config(&topo, "");
    let sock = start_dpgw(&mut topo, &cfg);
    wait_ready(&topo);

    // Both clients get their own replies, over TCP and UDP: the server sees
    // their overlay addresses (no NAT), and its answers reach each one's
    // VTEP through the gateway.
    for (i, src) in ["172.16.0.10", "172.16.0.11"].iter().enumerate() {
        let a = talk(&topo.cl[i], src, 10);
        assert!(
            a.tcp.iter().all(|x| x == &format!("{src} hello0")),
            "client {src} TCP: {:?}\n{}",
            a.tcp,
            log_of(&topo)
        );
        assert!(
            a.udp.iter().all(|x| x == &format!("{src} 100")),
            "client {src} UDP: {:?}",
            a.udp
        );
    }
    assert_eq!(
        learned_at(&sock, "172.16.0.10"),
        Some("198.18.1.10".parse().unwrap())
    );
    assert_eq!(
        learned_at(&sock, "172.16.0.11"),
        Some("198.18.3.20".parse().unwrap())
    );
    let s = stats(&sock);
    let o = s.overlay.clone().expect("overlay counters");
    assert!(o.encapsulated >= 80, "{o:?}");
    assert!(o.learned >= 2, "{o:?}");
    // Two workers took part (AF_PACKET fanout spreads the flows).
    let busy = s.workers.iter().filter(|w| w.rx > 0).count();
    assert_eq!(busy, 2, "both workers received traffic: {:?}", s.workers);

    // A large download: the server's full-size segments do not fit the
    // 1500-byte link once encapsulated; the gateway answers "fragmentation
    // needed" (1450) and the server's PMTU discovery adapts.
    // (The client's own link can carry more: only the gateway's is small.)
    topo.rt.sh("ip link set r-c1 mtu 1600");
    topo.cl[0].sh("ip link set c0 mtu 1600 && ip link set vxlan0 mtu 1500");
    let got = run_py(&topo.cl[0], PY_DOWNLOAD, &["172.16.0.10", "2000000"]);
    assert_eq!(
        got.trim(),
        "2000000",
        "download through the gateway\n{}",
        log_of(&topo)
    );
    assert!(stats(&sock).icmp_too_big_sent >= 1);
    topo.cl[0].sh("ip link set vxlan0 mtu 1450");

    // A spoofed source outside the tenant's prefixes teaches nothing.
    topo.cl[0].sh("ip addr add 10.99.0.5/32 dev vxlan0");
    let _ = talk(&topo.cl[0], "10.99.0.5", 1);
    assert!(
        !vteps(&sock)
            .iter()
            .any(|v| v.addr == "10.99.0.5".parse::<IpAddr>().unwrap()),
        "{:?}",
        vteps(&sock)
    );

    // 172.16.0.10 moves from behind VTEP 198.18.1.10 to behind 198.18.3.20:
    // its next packet moves the entry, and its replies follow it.
    let moved_before = stats(&sock).overlay.unwrap().moved;
    topo.cl[0].sh("ip addr del 172.16.0.10/24 dev vxlan0");
    topo.cl[1].sh("ip addr add 172.16.0.10/24 dev vxlan0");
    let a = talk(&topo.cl[1], "172.16.0.10", 5);
    assert!(
        a.tcp.iter().all(|x| x == "172.16.0.10 hello0")
            && a.udp.iter().all(|x| x == "172.16.0.10 100"),
        "after the move: {a:?}"
    );
    assert_eq!(
        learned_at(&sock, "172.16.0.10"),
        Some("198.18.3.20".parse().unwrap())
    );
    assert!(stats(&sock).overlay.unwrap().moved > moved_before);

    // A static entry wins over learning, and `vtep flush` forgets learned ones.
    ctl(
        &sock,
        Command::VtepAdd {
            vni: 100,
            addr: "172.16.0.11".parse().unwrap(),
            vtep: "198.18.3.20".parse().unwrap(),
            mac: Some(mac_of(&topo.cl[1], "vxlan0").parse().unwrap()),
        },
    );
    let a = talk(&topo.cl[1], "172.16.0.11", 3);
    assert!(a.udp.iter().all(|x| x == "172.16.0.11 100"), "{a:?}");
    match ctl(&sock, Command::VtepFlush { vni: Some(100) }) {
        Some(Data::Vteps {
            flushed: Some(n), ..
        }) => assert!(n >= 1),
        other => panic!("{other:?}"),
    }
    let rows = vteps(&sock);
    assert!(rows.iter().all(|v| v.source == "static"), "{rows:?}");
    // Unknown after the flush: dropped as no_vtep until the client speaks.
    let before = stats(&sock)
        .total
        .drops
        .get("no_vtep")
        .copied()
        .unwrap_or(0);
    assert!(
        !ping(&topo.srv, "172.16.0.10", 3),
        "answered with no VTEP known"
    );
    let t0 = Instant::now();
    let mut after = before;
    while after == before && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        after = stats(&sock)
            .total
            .drops
            .get("no_vtep")
            .copied()
            .unwrap_or(0);
    }
    assert!(
        after > before,
        "no_vtep {before} -> {after}: {:?}",
        vteps(&sock)
    );
    // The books balance.
    let t = stats(&sock).total;
    let drops: u64 = t.drops.values().sum();
    assert_eq!(t.rx, t.tx + t.punted + drops, "{t:?}");
}

/// A keep-alive client: `python3 - SRC FLAG` opens one TCP connection from
/// SRC, exchanges a line, prints the answer, waits for the file FLAG, then
/// exchanges another line on the same connection and prints it (`ERR` on
/// failure).
const PY_KEEP: &str = r#"
import os, socket, sys, time
src, flag = sys.argv[1], sys.argv[2]
c = socket.create_connection(('203.0.113.10', 8000), timeout=5, source_address=(src, 0))
f = c.makefile('rb')
c.sendall(b'one\n'); print(f.readline().decode().strip(), flush=True)
t0 = time.time()
while not os.path.exists(flag) and time.time() - t0 < 30:
    time.sleep(0.05)
try:
    c.sendall(b'two\n'); print(f.readline().decode().strip() or 'ERR', flush=True)
except Exception:
    print('ERR', flush=True)
"#;

/// Opens a TCP connection to ADDR:PORT (`python3 - ADDR PORT`): prints `OK`
/// or `BLOCKED` (no answer within 3 s).
const PY_CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('OK')
except Exception:
    print('BLOCKED')
"#;

/// Stateful micro-segmentation across the two directions: VNI 100 is
/// default-deny, and one allow rule (stateful by default there) lets
/// 172.16.0.0/24 open connections to the server's network. The clients'
/// TCP and UDP work both ways (the replies, plain IP into VNI 100, match no
/// rule: the connection table lets them in, also when the reply lands on
/// the other worker than the request); a connection the server opens toward
/// a client is blocked and counted; after `conn flush` an established
/// connection is judged by the rules again: the client's next segment (the
/// originator's, allowed) re-creates it and it goes on.
#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn overlay_stateful_acl_both_directions() {
    require_root_netns();
    let mut topo = build("ovs");
    let cfg = config(
        &topo,
        "[acl]\ndefault = \"allow\"\n[[acl.vni]]\nvni = 100\ndefault = \"deny\"\n\
         [[acl.rule]]\nvni = 100\nsrc = \"172.16.0.0/24\"\ndst = \"203.0.113.0/24\"\naction = \"allow\"\n",
    );
    let sock = start_dpgw(&mut topo, &cfg);
    wait_ready(&topo);
    let a = talk(&topo.cl[0], "172.16.0.10", 20);
    assert!(
        a.tcp.iter().all(|x| x == "172.16.0.10 hello0")
            && a.udp.iter().all(|x| x == "172.16.0.10 100"),
        "client through a default-deny VNI with a stateful allow: {a:?}\n{}",
        log_of(&topo)
    );
    let s = stats(&sock);
    let ct = s
        .conntrack
        .iter()
        .find(|c| c.vni == 100)
        .cloned()
        .unwrap_or_else(|| panic!("no conntrack counters: {:?}", s.conntrack));
    assert!(ct.created >= 40, "{ct:?}");
    assert!(ct.hits > 0, "{ct:?}");
    assert!(
        ct.remote_hits > 0,
        "some replies landed on the other worker and were found there: {ct:?}"
    );

    // The server opening a connection toward the client: no rule allows
    // it, no connection is known: blocked, counted as acl_deny.
    let mut listener = topo
        .cl[0]
        .command("python3")
        .args([
            "-c",
            "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
             s.bind(('172.16.0.10', 9000)); s.listen(8)\nwhile True: s.accept()[0].close()",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client listener");
    let denies = |s: &ctl::StatsReport| s.total.drops.get("acl_deny").copied().unwrap_or(0);
    let before = denies(&stats(&sock));
    let out = run_py(&topo.srv, PY_CONNECT, &["172.16.0.10", "9000"]);
    assert_eq!(
        out.trim(),
        "BLOCKED",
        "the server must not reach into VNI 100"
    );
    assert!(denies(&stats(&sock)) > before);
    // While the client may open the same kind of connection itself.
    let a = talk(&topo.cl[0], "172.16.0.10", 1);
    assert_eq!(a.tcp, vec!["172.16.0.10 hello0".to_string()]);

    // conn flush: the established connection is re-created by the client's
    // next segment (loose pickup; documented).
    let flag = topo.dir.path().join("go");
    let mut keep = topo.cl[0]
        .command("python3")
        .args(["-", "172.16.0.10"])
        .arg(&flag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("keep-alive client");
    {
        use std::io::Write;
        keep.stdin
            .take()
            .unwrap()
            .write_all(PY_KEEP.as_bytes())
            .unwrap();
    }
    let mut out = std::io::BufReader::new(keep.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "172.16.0.10 one");
    let created = |s: &ctl::StatsReport| {
        s.conntrack
            .iter()
            .find(|c| c.vni == 100)
            .map_or(0, |c| c.created)
    };
    let c0 = created(&stats(&sock));
    match ctl(&sock, Command::ConnFlush { vni: Some(100) }) {
        Some(Data::ConnFlushed { flushed }) => assert!(flushed >= 1),
        other => panic!("conn flush: {other:?}"),
    }
    std::fs::write(&flag, b"").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = keep.wait();
    assert_eq!(
        line.trim(),
        "172.16.0.10 two",
        "the connection after conn flush"
    );
    assert!(
        created(&stats(&sock)) > c0,
        "re-created by the client's segment"
    );
    let t = stats(&sock).total;
    let drops: u64 = t.drops.values().sum();
    assert_eq!(t.rx, t.tx + t.punted + drops, "{t:?}");
    let _ = listener.kill();
    let _ = listener.wait();
}
