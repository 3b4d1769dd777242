//! Third-party VXLAN captures (see shared/testdata/pcap/PROVENANCE.md) through
//! decap and parse_inner.

use std::net::IpAddr;
use vxlan::{decap, parse_inner, DecapConfig, DecapError};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/pcap/vxlan/"
);

/// Reads a classic pcap (either byte order, µs or ns timestamps); returns the
/// captured bytes of each record.
fn read_pcap(name: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(format!("{DIR}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(data.len() >= 24, "{name}: short global header");
    let magic = [data[0], data[1], data[2], data[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        m => panic!("{name}: not a classic pcap (magic {m:02x?})"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(&data, 20), 1, "{name}: link type is not Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32_at(&data, at + 8) as usize;
        let start = at + 16;
        assert!(
            start + incl <= data.len(),
            "{name}: record runs past the file"
        );
        out.push(data[start..start + incl].to_vec());
        at = start + incl;
    }
    assert_eq!(at, data.len(), "{name}: trailing bytes");
    out
}

fn any() -> DecapConfig {
    DecapConfig::default()
}

#[test]
fn tcpdump_vxlan_all_ten_vni_100() {
    let pkts = read_pcap("tcpdump-vxlan.pcap");
    assert_eq!(pkts.len(), 10);
    for (i, p) in pkts.iter().enumerate() {
        let d = decap(p, &any()).unwrap_or_else(|e| panic!("packet {i}: {e:?}"));
        assert_eq!(d.vni, 100);
        assert!(!d.outer_v6);
        assert!(d.inner_offset + d.inner_len <= p.len());
        // Inner is ICMP echo or ARP (tcpdump-vxlan.out).
        let inner = &p[d.inner_offset..d.inner_offset + d.inner_len];
        match parse_inner(inner, d.vni) {
            Ok(k) => assert_eq!(
                (k.key.proto, k.key.sport, k.key.dport, k.key.vni),
                (1, 0, 0, 100)
            ),
            Err(e) => assert_eq!(e, vxlan::InnerError::NotIp, "packet {i}"),
        }
    }
}

#[test]
fn tcpdump_vxlan_vtep_filter() {
    let pkts = read_pcap("tcpdump-vxlan.pcap");
    // Only the packets to one of the two endpoints are ours.
    let dsts: Vec<u32> = pkts
        .iter()
        .map(|p| {
            let (_, l3) = vxlan::ethernet::walk(p).unwrap();
            vxlan::ipv4::Ipv4Packet::new_checked(&p[l3..])
                .unwrap()
                .dst_addr()
                .into()
        })
        .collect();
    let mine = dsts[0];
    let cfg = DecapConfig {
        vtep_v4: vec![mine],
        ..any()
    };
    for (p, d) in pkts.iter().zip(&dsts) {
        let r = decap(p, &cfg);
        if *d == mine {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(DecapError::WrongVtep));
        }
    }
    assert!(
        dsts.iter().any(|d| *d != mine),
        "capture should have both directions"
    );
}

#[test]
fn tcpdump_vxlan_port_8472() {
    let pkts = read_pcap("tcpdump-vxlan_port_8472.pcap");
    assert!(!pkts.is_empty());
    for p in &pkts {
        assert_eq!(
            decap(
                p,
                &DecapConfig {
                    ports: vec![4789],
                    ..any()
                }
            ),
            Err(DecapError::NotVxlan)
        );
        assert_eq!(decap(p, &any()), Err(DecapError::NotVxlan));
        let d = decap(
            p,
            &DecapConfig {
                ports: vec![8472],
                ..any()
            },
        )
        .unwrap();
        assert_eq!(d.vni, 100);
    }
}

#[test]
fn pcapplusplus_gbp_flags() {
    for (name, vni) in [
        ("pcapplusplus-Vxlan1.pcap", 3_000_001),
        ("pcapplusplus-Vxlan2.pcap", 300),
    ] {
        let pkts = read_pcap(name);
        assert_eq!(pkts.len(), 1);
        let d = decap(&pkts[0], &any()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(d.vni, vni, "{name}");
        // The view exposes the GBP fields the fast path ignores.
        let vx = vxlan::vxlan::VxlanPacket::new_checked(&pkts[0][d.inner_offset - 8..]).unwrap();
        if vni == 300 {
            assert!(!vx.gbp() && vx.policy_applied());
            assert_eq!(vx.group_policy_id(), 32639);
        } else {
            assert!(vx.gbp() && vx.dont_learn() && vx.policy_applied());
            assert_eq!(vx.group_policy_id(), 100);
        }
    }
}

#[test]
fn tcpdump_gso_all_combinations() {
    for (outer6, inner6) in [(false, false), (false, true), (true, false), (true, true)] {
        let name = format!(
            "tcpdump-gso-{}-vxlan-{}.pcap",
            if outer6 { "ipv6" } else { "ipv4" },
            if inner6 { "ipv6" } else { "ipv4" }
        );
        let pkts = read_pcap(&name);
        assert_eq!(pkts.len(), 1);
        let p = &pkts[0];
        let d = decap(p, &any()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!((d.vni, d.outer_v6), (5001, outer6), "{name}");
        let i = parse_inner(&p[d.inner_offset..d.inner_offset + d.inner_len], d.vni).unwrap();
        assert_eq!(i.key.proto, 6, "{name}");
        assert_eq!(i.key.v6, inner6, "{name}");
        assert_eq!(i.key.vni, 5001);
        assert_ne!(i.key.sport, 0);
        assert_ne!(i.key.dport, 0);
        // The inner IP packet runs to the end of the (super-)frame.
        assert_eq!(d.inner_offset + i.l3_offset + i.l3_len, p.len(), "{name}");
    }
    // tshark: inner TCP source ports.
    let sport = |n: &str| {
        let p = &read_pcap(n)[0];
        let d = decap(p, &any()).unwrap();
        parse_inner(&p[d.inner_offset..d.inner_offset + d.inner_len], d.vni)
            .unwrap()
            .key
            .sport
    };
    assert_eq!(sport("tcpdump-gso-ipv4-vxlan-ipv4.pcap"), 37099);
    assert_eq!(sport("tcpdump-gso-ipv6-vxlan-ipv6.pcap"), 43583);
}

#[test]
fn zeek_triple_one_level_only() {
    let pkts = read_pcap("zeek-vxlan-triple-v2.pcap");
    assert!(!pkts.is_empty());
    for p in &pkts {
        let d = decap(p, &any()).unwrap();
        assert_eq!(d.vni, 1);
        let inner = &p[d.inner_offset..d.inner_offset + d.inner_len];
        // The inner frame is itself VXLAN (VNI 2), and parse_inner sees it as UDP to 4789.
        let k = parse_inner(inner, d.vni).unwrap().key;
        assert_eq!((k.proto, k.dport), (17, 4789));
        let d2 = decap(inner, &any()).unwrap();
        assert_eq!(d2.vni, 2);
        let inner2 = &inner[d2.inner_offset..d2.inner_offset + d2.inner_len];
        assert_eq!(decap(inner2, &any()).unwrap().vni, 3);
    }
}

#[test]
fn zeek_other_captures() {
    for (name, vni) in [
        ("zeek-vxlan.pcap", 123),
        ("zeek-vxlan-encapsulated-http.pcap", 1),
        ("zeek-vxlan-inner-tcp-bad-checksum.pcap", 42),
        ("zeek-vxlan-encapsulated-igmp-v2.pcap", 4242),
    ] {
        let pkts = read_pcap(name);
        let mut ok = 0;
        for p in &pkts {
            if let Ok(d) = decap(p, &any()) {
                assert_eq!(d.vni, vni, "{name}");
                let _ = parse_inner(&p[d.inner_offset..d.inner_offset + d.inner_len], d.vni);
                ok += 1;
            }
        }
        assert!(ok > 0, "{name}: nothing decapsulated");
    }
    // Inner TCP with a wrong checksum is still parsed (we do not verify L4).
    let p = &read_pcap("zeek-vxlan-inner-tcp-bad-checksum.pcap")[0];
    let d = decap(p, &any()).unwrap();
    let i = parse_inner(&p[d.inner_offset..d.inner_offset + d.inner_len], d.vni).unwrap();
    assert_eq!(i.key.proto, 6);
}

#[test]
fn truncated_captures_never_panic() {
    for name in [
        "tcpdump-vxlan.pcap",
        "pcapplusplus-Vxlan1.pcap",
        "tcpdump-gso-ipv6-vxlan-ipv6.pcap",
        "zeek-vxlan-triple-v2.pcap",
    ] {
        let p = &read_pcap(name)[0];
        for n in 0..p.len() {
            match decap(&p[..n], &any()) {
                Ok(d) => {
                    assert!(d.inner_offset + d.inner_len <= n);
                    let _ = parse_inner(&p[d.inner_offset..d.inner_offset + d.inner_len], d.vni);
                }
                Err(e) => assert!(
                    matches!(e, DecapError::Truncated | DecapError::BadIpHeader),
                    "{name} {n}: {e:?}"
                ),
            }
            let _ = parse_inner(&p[..n], 0);
        }
    }
}

#[test]
fn encap_matches_capture_layout() {
    // Re-encapsulate the first tcpdump inner frame and compare the VXLAN/UDP
    // bytes that do not depend on our choices.
    let p = &read_pcap("tcpdump-vxlan.pcap")[0];
    let d = decap(p, &any()).unwrap();
    let inner = &p[d.inner_offset..d.inner_offset + d.inner_len];
    let (_, l3) = vxlan::ethernet::walk(p).unwrap();
    let ip = vxlan::ipv4::Ipv4Packet::new_checked(&p[l3..]).unwrap();
    let o = vxlan::Outer {
        src_mac: p[6..12].try_into().unwrap(),
        dst_mac: p[0..6].try_into().unwrap(),
        vlan: None,
        src_ip: IpAddr::V4(ip.src_addr()),
        dst_ip: IpAddr::V4(ip.dst_addr()),
        ttl: ip.ttl(),
    };
    let mut h = vec![0u8; vxlan::vxlan_header_len(&o)];
    vxlan::emit_vxlan(&o, 1, 4789, 100, inner, &mut h);
    assert_eq!(h.len(), d.inner_offset);
    assert_eq!(&h[..14], &p[..14]);
    assert_eq!(&h[l3 + 12..l3 + 20], &p[l3 + 12..l3 + 20]); // addresses
    assert_eq!(&h[h.len() - 8..], &p[d.inner_offset - 8..d.inner_offset]); // VXLAN header
    assert_eq!(&h[l3 + 2..l3 + 4], &p[l3 + 2..l3 + 4]); // total length
}
