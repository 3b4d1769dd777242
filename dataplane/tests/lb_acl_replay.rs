//! End-to-end replays through `dpgw replay` with services and ACL rules:
//! encapsulation to backends (checked byte-wise here and by tshark), flow
//! stickiness, cross-instance consistency, and ACL drops matching an
//! independent count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use dataplane::gen::{generate, GenSpec, Popularity};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 9, 0, 1),
    Ipv4Addr::new(10, 9, 0, 2),
    Ipv4Addr::new(10, 9, 0, 3),
];

fn capture(dir: &Path, seed: u64, flows: usize, packets: usize) -> PathBuf {
    let spec = GenSpec {
        packets,
        flows,
        frame_size: 100,
        tcp_pct: 100,
        popularity: Popularity::Uniform,
        seed,
        dsts: vec![IpAddr::V4(VIP)],
        dports: vec![80],
        ..Default::default()
    };
    let p = dir.join(format!("in-{seed}.pcap"));
    std::fs::write(&p, generate(&spec).unwrap().buf).unwrap();
    p
}

fn service(encap: &str) -> String {
    let mut s = format!(
        "[[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\nencap = \"{encap}\"\n"
    );
    for (i, b) in BACKENDS.iter().enumerate() {
        s.push_str(&format!(
            "[[service.backend]]\nip = \"{b}\"\nmac = \"02:be:00:00:00:0{}\"\n",
            i + 1
        ));
    }
    s
}

fn replay(
    dir: &Path,
    input: &Path,
    extra: &str,
    workers: usize,
    tag: &str,
) -> (serde_json::Value, PathBuf) {
    let cfg = dir.join(format!("{tag}.toml"));
    let out = dir.join(format!("{tag}.out.pcap"));
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nworkers = {workers}\nno_pin = true\n[pcap]\ninput = [{:?}]\noutput = {:?}\n[gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [\"10.0.0.1\"]\n{extra}",
            input.display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dpgw"))
        .args(["replay", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let drops: u64 = j["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        j["rx"].as_u64().unwrap(),
        j["tx"].as_u64().unwrap() + drops,
        "conservation: {j}"
    );
    (j, out)
}

fn read_pcap(p: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(p).unwrap();
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= d.len() {
        let n = u32::from_le_bytes([d[o + 8], d[o + 9], d[o + 10], d[o + 11]]) as usize;
        out.push(d[o + 16..o + 16 + n].to_vec());
        o += 16 + n;
    }
    out
}

/// The inner (client) flow of an input VXLAN frame: (src, sport).
fn input_flow(f: &[u8]) -> (Ipv4Addr, u16) {
    let inner_ip = 14 + 20 + 8 + 8 + 14;
    let src = Ipv4Addr::new(
        f[inner_ip + 12],
        f[inner_ip + 13],
        f[inner_ip + 14],
        f[inner_ip + 15],
    );
    let sport = u16::from_be_bytes([f[inner_ip + 20], f[inner_ip + 21]]);
    (src, sport)
}

/// For an IPIP output frame: (outer dst, inner src, inner sport).
fn ipip_flow(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16) {
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    assert_eq!(f[14 + 9], 4, "outer protocol is IPIP");
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let inner = 34;
    assert_eq!(
        &f[inner + 16..inner + 20],
        &VIP.octets(),
        "inner destination is the VIP"
    );
    let src = Ipv4Addr::new(f[inner + 12], f[inner + 13], f[inner + 14], f[inner + 15]);
    let sport = u16::from_be_bytes([f[inner + 20], f[inner + 21]]);
    (dst, src, sport)
}

fn tshark_count(p: &Path, extra: &[&str], filter: &str) -> Option<usize> {
    let o = Command::new("tshark")
        .arg("-r")
        .arg(p)
        .args(extra)
        .args(["-Y", filter])
        .output()
        .ok()?;
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(String::from_utf8_lossy(&o.stdout).lines().count())
}

fn tshark_or_skip(p: &Path, extra: &[&str], filter: &str, want: usize) {
    match tshark_count(p, extra, filter) {
        Some(n) => assert_eq!(n, want, "tshark -Y {filter:?}"),
        None if std::env::var_os("CI").is_some() => panic!("tshark is required in CI"),
        None => eprintln!("tshark not installed: skipping the dissection check"),
    }
    if let Some(bad) = tshark_count(p, extra, "_ws.malformed") {
        assert_eq!(bad, 0, "malformed packets in {}", p.display());
    }
}

#[test]
fn ipip_sticky_even_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 11, 600, 6000);
    let (j, out) = replay(dir.path(), &input, &service("ipip"), 1, "a");
    assert_eq!(j["tx"].as_u64(), Some(6000), "{j}");
    let ins = read_pcap(&input);
    let outs = read_pcap(&out);
    assert_eq!(ins.len(), outs.len());
    let mut flow_backend: HashMap<(Ipv4Addr, u16), Ipv4Addr> = HashMap::new();
    for (i, o) in ins.iter().zip(outs.iter()) {
        let (dst, src, sport) = ipip_flow(o);
        assert_eq!(
            (src, sport),
            input_flow(i),
            "packet order and inner flow kept"
        );
        assert!(
            BACKENDS.contains(&dst),
            "outer destination {dst} is a backend"
        );
        let prev = flow_backend.insert((src, sport), dst);
        assert!(
            prev.is_none() || prev == Some(dst),
            "a flow changed backend"
        );
        // The inner IP packet is carried unchanged (no TTL decrement for DSR).
        let inner_in = &i[14 + 20 + 8 + 8 + 14..];
        assert_eq!(&o[34..], inner_in, "inner packet intact");
    }
    let mut per: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for b in flow_backend.values() {
        *per.entry(*b).or_default() += 1;
    }
    assert_eq!(per.len(), 3);
    for (b, n) in &per {
        assert!(
            *n > 600 / 3 * 7 / 10,
            "backend {b} got {n} of 600 flows: {per:?}"
        );
    }
    // Another instance (and another worker count) picks the same backends.
    let (_, out2) = replay(dir.path(), &input, &service("ipip"), 2, "b");
    let mut map2: HashMap<(Ipv4Addr, u16), Ipv4Addr> = HashMap::new();
    for o in read_pcap(&out2) {
        let (dst, src, sport) = ipip_flow(&o);
        map2.insert((src, sport), dst);
    }
    assert_eq!(
        flow_backend, map2,
        "two gateways with the same config agree on every flow"
    );
    tshark_or_skip(
        &out,
        &[],
        &format!("ip.proto == 4 && ip.dst == {VIP}"),
        6000,
    );
    // The service counters and the flow table are visible in the summary's drops: none.
    assert!(j["drops"].as_object().unwrap().is_empty(), "{j}");
}

#[test]
fn backend_order_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 5, 200, 1000);
    let (_, a) = replay(dir.path(), &input, &service("ipip"), 1, "a");
    let mut reversed =
        format!("[[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\n");
    for b in BACKENDS.iter().rev() {
        reversed.push_str(&format!("[[service.backend]]\nip = \"{b}\"\n"));
    }
    let (_, b) = replay(dir.path(), &input, &reversed, 1, "b");
    assert_eq!(read_pcap(&a), read_pcap(&b));
}

#[test]
fn gue_and_vxlan_encap_dissect() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 3, 50, 500);
    let (j, out) = replay(dir.path(), &input, &service("gue"), 1, "gue");
    assert_eq!(j["tx"].as_u64(), Some(500));
    for o in read_pcap(&out) {
        assert_eq!(o[14 + 9], 17, "GUE is UDP");
        assert_eq!(u16::from_be_bytes([o[36], o[37]]), 6080);
        assert_eq!(
            &o[42 + 16..42 + 20],
            &VIP.octets(),
            "inner IP right after UDP"
        );
    }
    tshark_or_skip(
        &out,
        &["-d", "udp.port==6080,ip"],
        &format!("ip.dst == {VIP} && tcp.dstport == 80"),
        500,
    );

    let (j, out) = replay(dir.path(), &input, &service("vxlan"), 1, "vx");
    assert_eq!(j["tx"].as_u64(), Some(500));
    let macs: HashSet<[u8; 6]> = (1..=3).map(|i| [2, 0xbe, 0, 0, 0, i]).collect();
    for o in read_pcap(&out) {
        assert_eq!(u16::from_be_bytes([o[36], o[37]]), 4789);
        let inner = &o[50..];
        let dmac: [u8; 6] = inner[0..6].try_into().unwrap();
        assert!(
            macs.contains(&dmac),
            "inner destination MAC is the backend's"
        );
        let vni = u32::from_be_bytes([0, o[46], o[47], o[48]]);
        assert_eq!(vni, 100, "VNI kept");
    }
    tshark_or_skip(
        &out,
        &[],
        &format!("vxlan && ip.dst == {VIP} && tcp.dstport == 80"),
        500,
    );
}

#[test]
fn no_backend_and_non_vip() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 9, 20, 100);
    let empty =
        format!("[[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\n");
    let (j, _) = replay(dir.path(), &input, &empty, 1, "nb");
    assert_eq!(j["drops"]["no_backend"].as_u64(), Some(100), "{j}");
    // A service on another port: the traffic is not for it and is routed.
    let other = service("ipip").replace("port = 80", "port = 443");
    let (j, _) = replay(dir.path(), &input, &other, 1, "nv");
    assert_eq!(j["tx"].as_u64(), Some(100), "{j}");
    let (j, _) = replay(dir.path(), &input, &format!("{other}\n"), 1, "nv2");
    assert_eq!(j["tx"].as_u64(), Some(100));
}

#[test]
fn acl_rules_drop_exactly_the_expected_packets() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 21, 400, 4000);
    // Deny sources 10.0.0.0/25 (flow sources are 10.0.0.1, 10.0.0.2, ...) to port 80,
    // allow the rest by default.
    let rules = "[acl]\ndefault = \"allow\"\n[[acl.rule]]\nsrc = \"10.0.0.0/25\"\nproto = \"tcp\"\ndst_ports = \"80\"\naction = \"deny\"\n";
    let (j, _) = replay(
        dir.path(),
        &input,
        &format!("{rules}{}", service("ipip")),
        1,
        "acl",
    );
    let expected = read_pcap(&input)
        .iter()
        .filter(|f| {
            let (src, _) = input_flow(f);
            u32::from(src) & 0xffff_ff80 == 0x0a00_0000
        })
        .count() as u64;
    assert!(expected > 0 && expected < 4000);
    assert_eq!(j["drops"]["acl_deny"].as_u64(), Some(expected), "{j}");
    assert_eq!(j["tx"].as_u64(), Some(4000 - expected));
    // Per-VNI default: deny everything of VNI 100 unless a rule allows it.
    let rules = "[acl]\ndefault = \"allow\"\n[[acl.vni]]\nvni = 100\ndefault = \"deny\"\n[[acl.rule]]\nvni = 100\nsrc = \"10.0.0.0/25\"\naction = \"allow\"\n";
    let (j, _) = replay(dir.path(), &input, rules, 1, "acl2");
    assert_eq!(j["tx"].as_u64(), Some(expected), "{j}");
    assert_eq!(j["drops"]["acl_deny"].as_u64(), Some(4000 - expected));
}

#[test]
fn bad_service_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let input = capture(dir.path(), 1, 2, 2);
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nworkers = 0\n[pcap]\ninput = [{:?}]\n[[service]]\nname = \"a\"\nvip = \"{VIP}\"\nport = 80\nproto = \"tcp\"\ntable_size = 1000\n",
            input.display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dpgw"))
        .args(["replay", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("dataplane.workers"), "{e}");
    assert!(e.contains("table_size") || e.contains("prime"), "{e}");
}

#[test]
fn too_big_for_the_mtu_answers_the_client() {
    let dir = tempfile::tempdir().unwrap();
    for (v6, encap) in [(false, "ipip"), (false, "vxlan"), (true, "ipip")] {
        let vip: IpAddr = if v6 {
            "fd01::1".parse().unwrap()
        } else {
            IpAddr::V4(VIP)
        };
        let spec = GenSpec {
            packets: 20,
            flows: 5,
            frame_size: 1400,
            inner_v6: v6,
            tcp_pct: 100,
            seed: 4,
            dsts: vec![vip],
            dports: vec![80],
            ..Default::default()
        };
        let input = dir.path().join(format!("big-{v6}-{encap}.pcap"));
        std::fs::write(&input, generate(&spec).unwrap().buf).unwrap();
        let backend = if v6 { "fd09::1" } else { "10.9.0.1" };
        let underlay = if v6 {
            "\"10.0.0.1\", \"fd00::1\""
        } else {
            "\"10.0.0.1\""
        };
        let svc = format!(
            "[[service]]\nname = \"web\"\nvip = \"{vip}\"\nport = 80\nproto = \"tcp\"\nencap = \"{encap}\"\n[[service.backend]]\nip = \"{backend}\"\nmac = \"02:be:00:00:00:01\"\n"
        );
        let extra = svc;
        let tag = format!("big-{v6}-{encap}");
        let cfg = dir.path().join(format!("{tag}.toml"));
        let out = dir.path().join(format!("{tag}.out.pcap"));
        std::fs::write(
            &cfg,
            format!(
                "[pcap]\ninput = [{:?}]\noutput = {:?}\n[gateway]\nvtep_ips = [\"10.0.0.1\"]\nunderlay_ips = [{underlay}]\nmtu = 1400\n{extra}",
                input.display().to_string(),
                out.display().to_string()
            ),
        )
        .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_dpgw"))
            .args(["replay", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            j["tx"].as_u64(),
            Some(20),
            "{tag}: every packet becomes a reply: {j}"
        );
        for f in read_pcap(&out) {
            // VXLAN back to the client's VTEP (172.16.0.x), from ours.
            assert_eq!(
                &f[26..30],
                &[10, 0, 0, 1],
                "{tag}: outer source is our VTEP"
            );
            assert_eq!(
                &f[30..32],
                &[172, 16],
                "{tag}: outer destination is the client VTEP"
            );
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), 4789);
        }
        let filter = if v6 {
            "vxlan && icmpv6.type == 2 && icmpv6.mtu == 1360".to_string()
        } else if encap == "ipip" {
            "vxlan && icmp.type == 3 && icmp.code == 4 && icmp.mtu == 1380".to_string()
        } else {
            "vxlan && icmp.type == 3 && icmp.code == 4 && icmp.mtu == 1350".to_string()
        };
        tshark_or_skip(&out, &[], &filter, 20);
    }
}
