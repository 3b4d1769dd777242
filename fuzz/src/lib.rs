//! Shared pieces of dpgw's fuzz targets: the fixed gateway configuration the
//! pipeline target runs against, and an output checker that re-parses what the
//! pipeline transmits with its own small parser (not the `vxlan` crate's), so
//! that a bug in the crate's views cannot hide a malformed output.
//!
//! The targets themselves live in `fuzz_targets/`; see `docs/hardening.md`.
//!
//! ```
//! let t = dpgw_fuzz::tables(false);
//! assert_eq!(t.lb.len(), 4);
//! // A frame too short for Ethernet is a counted drop, never a panic.
//! dpgw_fuzz::check_pipeline(&[0u8; 3], false);
//! ```

use std::sync::OnceLock;

use dataplane::config::Config;
use dataplane::io::buf::HeapBuf;
use dataplane::io::Packet;
use dataplane::pipeline::{Meta, Pipeline, Verdict};
use dataplane::stats::DropReason;
use dataplane::tables::Tables;

/// The gateway the pipeline target runs against: two VTEPs (v4 and v6), two
/// VXLAN and Geneve ports, a tenant ACL with a VNI default, and five services covering
/// every encapsulation and a service whose only backend is down.
/// `{VTEPS}` is replaced by the VTEP list (strict, or empty = any destination).
pub const FIXED_TOML: &str = r#"
[dataplane]
flow_capacity = 64
[pcap]
input = ["fuzz.pcap"]
[gateway]
vtep_ips = [{VTEPS}]
vxlan_ports = [4789, 8472]
geneve_ports = [6081]
underlay_ips = ["10.0.0.1", "fd00::1"]
local_mac = "02:00:00:00:00:01"
next_hop_mac = "02:00:00:00:00:fe"
mtu = 1500
[acl]
default = "allow"
[[acl.vni]]
vni = 666
default = "deny"
[[acl.rule]]
src = "any"
dst = "any"
proto = "tcp"
dst_ports = "23"
action = "deny"
[[acl.rule]]
vni = 100
src = "10.66.0.0/16"
dst = "any"
action = "deny"
[[acl.rule]]
vni = 666
src = "10.0.0.0/8"
dst = "192.168.0.0/16"
proto = "udp"
action = "allow"
priority = 1
[[service]]
name = "web"
vip = "192.168.0.1"
port = 80
proto = "tcp"
encap = "ipip"
table_size = 251
[[service.backend]]
ip = "10.9.0.1"
[[service.backend]]
ip = "10.9.0.2"
[[service]]
name = "dns"
vip = "192.168.0.2"
port = 53
proto = "udp"
encap = "gue"
table_size = 251
[[service.backend]]
ip = "10.9.0.3"
[[service]]
name = "web6"
vip = "fd01::1"
port = 80
proto = "tcp"
encap = "vxlan"
table_size = 251
[[service.backend]]
ip = "fd09::1"
mac = "02:be:00:00:00:01"
[[service]]
name = "gen"
vip = "192.168.0.4"
port = 8080
proto = "tcp"
encap = "geneve"
table_size = 251
[[service.backend]]
ip = "10.9.0.5"
mac = "02:be:00:00:00:02"
[[service]]
name = "dead"
vip = "192.168.0.3"
port = 443
proto = "tcp"
table_size = 251
[[service.backend]]
ip = "10.9.0.4"
state = "down"
"#;

/// The fixed tables: `strict` = only 10.0.0.1 and fd00::1 are our VTEPs;
/// otherwise any destination is ours.
pub fn tables(strict: bool) -> &'static Tables {
    static STRICT: OnceLock<Tables> = OnceLock::new();
    static ANY: OnceLock<Tables> = OnceLock::new();
    let (cell, vteps) = if strict {
        (&STRICT, "\"10.0.0.1\", \"fd00::1\"")
    } else {
        (&ANY, "")
    };
    cell.get_or_init(|| {
        let text = FIXED_TOML.replace("{VTEPS}", vteps);
        let cfg = Config::parse(&text).expect("fixed config parses");
        Tables::build(&cfg, 1).expect("fixed config builds")
    })
}

/// The verdict the decap and inner-parse stages must give, from the `vxlan`
/// crate's own functions: `Err(reason)` for a drop there, `Ok` with the inner
/// frame's parse otherwise.
fn expected_front(frame: &[u8], t: &Tables) -> Result<(usize, usize, vxlan::Inner), DropReason> {
    let d = vxlan::decap(frame, &t.decap).map_err(DropReason::from)?;
    assert!(
        d.inner_offset + d.inner_len <= frame.len(),
        "decap points past the frame"
    );
    let inner = &frame[d.inner_offset..d.inner_offset + d.inner_len];
    let p = vxlan::parse_inner(inner, d.vni).map_err(DropReason::from)?;
    if !vxlan::inner_checksum_ok(inner, &p) {
        return Err(DropReason::InnerBadChecksum);
    }
    assert!(
        p.l3_offset + p.l3_len <= inner.len(),
        "parse_inner points past the frame"
    );
    Ok((d.inner_offset, d.inner_len, p))
}

/// Ones' complement sum of `b` (RFC 1071), folded.
pub fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u32::from(u16::from_be_bytes([c[0], c[1]]))
        } else {
            u32::from(c[0]) << 8
        };
        s += w;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An IP packet found by [`reparse`].
#[derive(Debug)]
pub struct Reparsed {
    /// Offset of the IP header in the frame.
    pub l3: usize,
    pub v6: bool,
    /// IPv4 header length (40 for IPv6).
    pub hl: usize,
    /// The IPv4 header checksum verifies (always true for IPv6).
    pub csum_ok: bool,
    /// IPv4 protocol / IPv6 next header.
    pub proto: u8,
}

/// Re-parses a frame the pipeline transmitted: Ethernet (up to two tags),
/// then an IPv4 or IPv6 header whose length fields agree exactly with the
/// frame's length (the pipeline trims padding). Panics if it does not.
pub fn reparse(f: &[u8]) -> Reparsed {
    assert!(
        f.len() >= 14,
        "transmitted frame shorter than Ethernet: {f:02x?}"
    );
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut l3 = 14;
    for _ in 0..2 {
        if et == 0x8100 || et == 0x88a8 {
            assert!(f.len() >= l3 + 4, "tag past the end");
            et = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]);
            l3 += 4;
        }
    }
    let ip = &f[l3..];
    match et {
        0x0800 => {
            assert!(ip.len() >= 20, "IPv4 header past the end");
            assert_eq!(ip[0] >> 4, 4);
            let hl = usize::from(ip[0] & 15) * 4;
            assert!(hl >= 20 && hl <= ip.len(), "IHL {hl} vs {}", ip.len());
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(total, ip.len(), "IPv4 total length != frame");
            Reparsed {
                l3,
                v6: false,
                hl,
                csum_ok: ones_sum(&ip[..hl]) == 0xffff,
                proto: ip[9],
            }
        }
        0x86dd => {
            assert!(ip.len() >= 40, "IPv6 header past the end");
            assert_eq!(ip[0] >> 4, 6);
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(40 + plen, ip.len(), "IPv6 payload length != frame");
            Reparsed {
                l3,
                v6: true,
                hl: 40,
                csum_ok: true,
                proto: ip[6],
            }
        }
        _ => panic!("transmitted a non-IP frame (ethertype {et:#06x})"),
    }
}

/// Runs one frame through the whole pipeline (decap → inner parse → ACL → LB
/// → encap / route) against [`tables`]`(strict)` and checks the result:
///
/// * decap and inner-parse drops carry exactly the reason the `vxlan` crate
///   gives for the frame;
/// * `acl_deny` exactly when the compiled ACL denies the flow key;
/// * a transmitted frame re-parses ([`reparse`]) with lengths that agree with
///   the frame, goes local MAC → next hop; an encapsulated one has a valid
///   outer IPv4 checksum and carries the inner packet unchanged; a routed one
///   is the inner packet with its TTL / hop limit one lower and its checksum
///   exactly as valid as it came in;
/// * `ttl_expired` only for routed packets whose TTL / hop limit was ≤ 1.
pub fn check_pipeline(frame: &[u8], strict: bool) {
    let t = tables(strict);
    let mut pipeline = Pipeline::default();
    let mut buf = HeapBuf::with_capacity(frame.len().max(64));
    buf.load(frame, 0);
    let mut pkts = [buf];
    let mut meta = [Meta::default()];
    let mut v = [Verdict::Tx];
    pipeline.run(t, 0, &mut pkts, &mut meta, &mut v);
    let out = pkts[0].data();

    let (inner_off, inner_len, inner) = match expected_front(frame, t) {
        Err(reason) => {
            // Frames that are not VXLAN but are for the gateway itself (ARP,
            // ICMP echo, neighbour discovery, health-probe answers to a probe
            // port) go to the slow path instead.
            let want = if matches!(
                reason,
                DropReason::NotIp | DropReason::NotUdp | DropReason::NotVxlan
            ) && dataplane::exception::is_exception(frame, t)
            {
                Verdict::Punt
            } else {
                Verdict::Drop(reason)
            };
            assert_eq!(v[0], want, "front-end verdict");
            return;
        }
        Ok(x) => x,
    };
    let inner_frame = &frame[inner_off..inner_off + inner_len];
    let l3 = inner.l3_offset;
    let ip_in = &inner_frame[l3..l3 + inner.l3_len];
    let k = inner.key;

    // A later fragment (no ports) to the VIP address of a service of its
    // protocol (and VNI), with no first fragment seen (a fresh pipeline):
    // held for its first fragment, before the ACL.
    let dst_ip = if k.v6 {
        std::net::IpAddr::V6(k.dst.into())
    } else {
        std::net::IpAddr::V4((k.dst as u32).into())
    };
    let later = if k.v6 {
        vxlan::ipv6::walk_extensions(ip_in)
            .ok()
            .and_then(|u| u.fragment)
            .is_some_and(|f| f.offset != 0)
    } else {
        u16::from_be_bytes([ip_in[6], ip_in[7]]) & 0x1fff != 0
    };
    if later
        && t.lb.services().any(|(_, s)| {
            s.vip == dst_ip
                && s.proto.number() == k.proto
                && s.vni.is_none_or(|v| v == k.vni)
        })
    {
        assert_eq!(v[0], Verdict::Hold, "later fragment to a VIP not held");
        return;
    }
    assert_ne!(v[0], Verdict::Hold, "held, but not a later fragment to a VIP");

    // ACL, by the compiled classifier on its own.
    let acl_key = acl::Key {
        vni: k.vni,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        v6: k.v6,
    };
    let denied = t.acl.as_ref().is_some_and(|a| {
        a.classifier.action(a.classifier.classify(&acl_key), k.vni) == acl::Action::Deny
    });
    if denied {
        assert_eq!(v[0], Verdict::Drop(DropReason::AclDeny));
        return;
    }
    assert_ne!(
        v[0],
        Verdict::Drop(DropReason::AclDeny),
        "allowed flow dropped by the ACL"
    );

    let mut lb_key = lb::FlowKey {
        vni: k.vni,
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        v6: k.v6,
    };
    // An ICMP error to a VIP goes where the flow it quotes goes.
    let msg = if k.v6 {
        (ip_in[6] == 58).then(|| &ip_in[40..])
    } else {
        let first = u16::from_be_bytes([ip_in[6], ip_in[7]]) & 0x1fff == 0;
        (first && k.proto == 1).then(|| &ip_in[usize::from(ip_in[0] & 15) * 4..])
    };
    if let Some(msg) = msg.filter(|_| t.lb.services().any(|(_, s)| s.vip == dst_ip)) {
        use vxlan::icmp::QuoteError;
        match vxlan::icmp::quoted_flow(msg, k.v6) {
            Ok(None) => {}
            Ok(Some(q)) => {
                lb_key = lb::FlowKey {
                    src: q.src,
                    dst: q.dst,
                    sport: q.sport,
                    dport: q.dport,
                    proto: q.proto,
                    ..lb_key
                };
                if t.lb.lookup_service(&lb_key).is_none() {
                    assert_eq!(v[0], Verdict::Drop(DropReason::IcmpNoService));
                    return;
                }
            }
            Err(e) => {
                let r = match e {
                    QuoteError::Truncated => DropReason::IcmpQuoteTruncated,
                    QuoteError::Lies => DropReason::IcmpQuoteBad,
                    QuoteError::NotTcpUdp => DropReason::IcmpNoService,
                };
                assert_eq!(v[0], Verdict::Drop(r), "ICMP error to a VIP");
                return;
            }
        }
    }
    let svc = t.lb.lookup_service(&lb_key);
    match (svc, v[0]) {
        (Some(_), Verdict::Drop(r)) => assert!(
            matches!(
                r,
                DropReason::NoBackend | DropReason::MtuExceeded | DropReason::NoHeadroom
            ),
            "service packet dropped as {r:?}"
        ),
        (Some(s), Verdict::Tx) => {
            assert!(meta[0].finished, "service packet not encapsulated");
            let svc = t.lb.service(s).expect("service index valid");
            // Would the encapsulated packet exceed the MTU? Then the only
            // thing that may be sent is an ICMP "too big" reply to the client.
            let outer_ip = if t.lb.backends(s).iter().any(|b| b.ip.is_ipv6()) {
                40
            } else {
                20
            };
            let extra = match svc.encap {
                lb::EncapKind::Ipip => 0,
                lb::EncapKind::Gue => 8 + 4,
                lb::EncapKind::Vxlan | lb::EncapKind::Geneve => 8 + 8 + l3,
            };
            if ip_in.len() + outer_ip + extra > usize::from(t.mtu) {
                check_too_big(out, frame);
            } else {
                check_encap(out, t, svc, inner_frame, l3, ip_in);
            }
        }
        (None, Verdict::Drop(DropReason::MtuExceeded)) => {
            // Routed packets are not fragmented: over the MTU and not
            // answerable (IPv4 without DF) they are dropped.
            assert!(
                ip_in.len() > usize::from(t.mtu),
                "routed packet within the MTU dropped"
            );
        }
        (None, Verdict::Drop(r)) => {
            assert_eq!(r, DropReason::TtlExpired, "routed packet dropped as {r:?}");
            let ttl = if k.v6 { ip_in[7] } else { ip_in[8] };
            assert!(ttl <= 1, "TTL {ttl} counted as expired");
        }
        (None, Verdict::Tx) if ip_in.len() > usize::from(t.mtu) => {
            // Over the MTU (IPv6 or DF): the packet became a "too big" reply.
            assert!(meta[0].finished, "oversized routed packet sent as is");
            check_too_big(out, frame);
        }
        (None, Verdict::Tx) => {
            assert!(!meta[0].finished);
            check_routed(out, t, inner_frame, l3, ip_in);
        }
        (_, Verdict::Punt) => panic!("a VXLAN packet was punted to the slow path"),
        (_, Verdict::Hold) => unreachable!("checked above"),
    }
}

fn check_routed(out: &[u8], t: &Tables, inner_frame: &[u8], l3: usize, ip_in: &[u8]) {
    let r = reparse(out);
    assert_eq!(r.l3, l3);
    assert_eq!(&out[0..6], &t.next_hop_mac, "routed dst MAC");
    assert_eq!(&out[6..12], &t.local_mac, "routed src MAC");
    assert_eq!(
        &out[12..l3],
        &inner_frame[12..l3],
        "tags / ethertype changed"
    );
    let ip_out = &out[l3..];
    assert_eq!(ip_out.len(), ip_in.len());
    let ttl_at = if r.v6 { 7 } else { 8 };
    assert!(ip_in[ttl_at] > 1);
    assert_eq!(
        ip_out[ttl_at],
        ip_in[ttl_at] - 1,
        "TTL not decremented by one"
    );
    for i in 0..ip_in.len() {
        let skip = i == ttl_at || (!r.v6 && (i == 10 || i == 11));
        if !skip {
            assert_eq!(ip_out[i], ip_in[i], "routed packet byte {i} changed");
        }
    }
    if !r.v6 {
        let was_ok = ones_sum(&ip_in[..r.hl]) == 0xffff;
        assert_eq!(r.csum_ok, was_ok, "checksum validity changed by forwarding");
    }
}

/// An ICMP "fragmentation needed" / "packet too big" reply: a well-formed
/// VXLAN frame back to the client's VTEP (the input's outer source) whose
/// inner packet is ICMP (type 3 code 4) or ICMPv6 (type 2).
fn check_too_big(out: &[u8], input: &[u8]) {
    let r = reparse(out);
    assert!(r.csum_ok, "ICMP reply: outer checksum");
    assert_eq!(r.proto, 17, "ICMP reply: not UDP");
    let (_, in_l3) = vxlan::ethernet::walk(input).expect("input parsed before");
    let (src_at, len) = if r.v6 { (8, 16) } else { (12, 4) };
    assert_eq!(
        &out[r.l3 + src_at + len..r.l3 + src_at + 2 * len],
        &input[in_l3 + src_at..in_l3 + src_at + len],
        "ICMP reply: not sent back to the client's VTEP"
    );
    let inner = &out[r.l3 + r.hl + 16..];
    let ir = reparse(inner);
    assert!(ir.csum_ok, "ICMP reply: inner checksum");
    let icmp = &inner[ir.l3 + ir.hl..];
    if ir.v6 {
        assert_eq!((ir.proto, icmp[0]), (58, 2), "ICMPv6 packet too big");
    } else {
        assert_eq!(
            (ir.proto, icmp[0], icmp[1]),
            (1, 3, 4),
            "ICMP fragmentation needed"
        );
        assert_eq!(ones_sum(icmp), 0xffff, "ICMP checksum");
    }
}

fn check_encap(
    out: &[u8],
    t: &Tables,
    svc: &lb::Service,
    inner_frame: &[u8],
    l3: usize,
    ip_in: &[u8],
) {
    let r = reparse(out);
    assert_eq!(r.l3, 14, "encapsulated frame carries a tag");
    assert_eq!(&out[0..6], &t.next_hop_mac, "outer dst MAC");
    assert_eq!(&out[6..12], &t.local_mac, "outer src MAC");
    assert!(r.csum_ok, "outer IPv4 checksum");
    let outer_ip = &out[14..];
    let payload = &outer_ip[r.hl..];
    match svc.encap {
        lb::EncapKind::Ipip => {
            assert_eq!(r.proto, if ip_in[0] >> 4 == 6 { 41 } else { 4 });
            assert_eq!(payload, ip_in, "IPIP payload is not the inner packet");
        }
        lb::EncapKind::Gue => {
            assert_eq!(r.proto, 17);
            let ulen = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
            assert_eq!(ulen, payload.len(), "GUE UDP length");
            assert_eq!(u16::from_be_bytes([payload[2], payload[3]]), t.gue_port);
            assert!(
                payload.ends_with(ip_in),
                "GUE payload does not end with the inner packet"
            );
        }
        lb::EncapKind::Vxlan | lb::EncapKind::Geneve => {
            assert_eq!(r.proto, 17);
            let ulen = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
            assert_eq!(ulen, payload.len(), "VXLAN/Geneve UDP length");
            if svc.encap == lb::EncapKind::Vxlan {
                assert_eq!(payload[8] & 0x08, 0x08, "VXLAN I flag");
            } else {
                assert_eq!(
                    &payload[8..12],
                    &[0, 0, 0x65, 0x58],
                    "Geneve v0, no options"
                );
            }
            let f = &payload[16..];
            assert_eq!(f.len(), l3 + ip_in.len());
            assert_eq!(&f[6..12], &t.local_mac, "inner src MAC");
            assert_eq!(
                &f[12..],
                &inner_frame[12..l3 + ip_in.len()],
                "VXLAN inner frame changed"
            );
        }
    }
    if !r.v6 {
        let total = out.len() - 14;
        assert!(
            total <= usize::from(t.mtu),
            "encapsulated packet of {total} bytes above the MTU"
        );
    }
}

/// Checks every protocol view of the `vxlan` crate on `data`: where
/// `new_checked` accepts, every accessor runs (and may not panic), the
/// representation re-emits, and the declared lengths stay inside the buffer.
pub fn check_views(data: &[u8]) {
    use vxlan::{ethernet, ipv4, ipv6, udp, vxlan as vx};
    if let Ok(e) = ethernet::EthernetFrame::new_checked(data) {
        let _ = (
            e.dst_addr(),
            e.src_addr(),
            e.ethertype(),
            e.tag(0),
            e.tag(1),
            e.tag(2),
        );
        assert!(e.header_len() <= data.len());
        assert_eq!(e.payload().len(), data.len() - e.header_len());
        if let Ok(r) = ethernet::EthernetRepr::parse(&e) {
            let mut buf = vec![0u8; r.header_len()];
            r.emit(&mut buf).expect("ethernet repr re-emits");
            assert_eq!(&buf[..], &data[..r.header_len()]);
        }
    }
    if let Ok(p) = ipv4::Ipv4Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.dscp_ecn(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
        );
        let _ = (
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.options(),
        );
        assert!(p.header_len() <= p.total_len() && p.total_len() <= data.len());
        assert_eq!(p.payload().len(), p.total_len() - p.header_len());
        let ok = p.verify_checksum();
        assert_eq!(
            ok,
            ones_sum(&data[..p.header_len()]) == 0xffff,
            "checksum verify disagrees"
        );
        if let Ok(r) = ipv4::Ipv4Repr::parse(&p) {
            let mut buf = [0u8; 20];
            r.emit(&mut buf).expect("ipv4 repr re-emits");
            assert_eq!(ones_sum(&buf), 0xffff);
        }
    }
    if let Ok(p) = ipv6::Ipv6Packet::new_checked(data) {
        let _ = (
            p.traffic_class(),
            p.flow_label(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
        );
        assert!(p.total_len() <= data.len());
        assert_eq!(p.payload().len(), p.payload_len());
        if let Ok(u) = p.upper_layer() {
            assert!(u.offset <= p.total_len(), "upper layer past the packet");
        }
        if let Ok(r) = ipv6::Ipv6Repr::parse(&p) {
            let mut buf = [0u8; 40];
            r.emit(&mut buf).expect("ipv6 repr re-emits");
            assert_eq!(&buf[..], &data[..40]);
        }
    }
    if let Ok(u) = udp::UdpPacket::new_checked(data) {
        let _ = (u.src_port(), u.dst_port(), u.checksum());
        assert!(u.len() >= 8 && u.len() <= data.len());
        assert_eq!(u.payload().len(), u.len() - 8);
        let _ = u.verify_checksum_v4([1, 2, 3, 4].into(), [5, 6, 7, 8].into());
        if let Ok(r) = udp::UdpRepr::parse(&u) {
            let mut buf = [0u8; 8];
            r.emit(&mut buf).expect("udp repr re-emits");
            assert_eq!(&buf[..6], &data[..6]);
        }
    }
    if let Ok(x) = vx::VxlanPacket::new_checked(data) {
        let _ = (
            x.flags(),
            x.gbp(),
            x.dont_learn(),
            x.policy_applied(),
            x.group_policy_id(),
            x.payload(),
        );
        if let Ok(r) = vx::VxlanRepr::parse(&x) {
            assert!(x.vni_valid());
            let mut buf = [0u8; 8];
            r.emit(&mut buf).expect("vxlan repr re-emits");
            assert_eq!(&buf[4..7], &data[4..7]);
        }
    }
}

/// Keys to classify: points inside the rules (`acl::generate_trace`), their
/// corners, and keys cut from the fuzz input itself.
fn keys_for(rules: &[acl::Rule], data: &[u8]) -> Vec<acl::Key> {
    let seed = data
        .iter()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b));
    let mut keys: Vec<acl::Key> = acl::generate_trace(rules, 64, seed)
        .into_iter()
        .map(|e| e.key)
        .collect();
    for r in rules {
        let (slo, shi) = r.src.range();
        let (dlo, dhi) = r.dst.range();
        let v6 = r.family() == acl::Family::V6;
        for (s, d, sp, dp) in [
            (slo, dlo, r.src_ports.lo, r.dst_ports.lo),
            (shi, dhi, r.src_ports.hi, r.dst_ports.hi),
            (
                shi.wrapping_add(1),
                dlo.wrapping_sub(1),
                r.src_ports.hi.wrapping_add(1),
                r.dst_ports.lo.wrapping_sub(1),
            ),
        ] {
            let (s, d) = if v6 {
                (s, d)
            } else {
                (s & 0xffff_ffff, d & 0xffff_ffff)
            };
            keys.push(acl::Key {
                vni: r.vni.unwrap_or(0),
                src: s,
                dst: d,
                sport: sp,
                dport: dp,
                proto: r.proto.value,
                v6,
            });
        }
    }
    for c in data.chunks_exact(16) {
        let v6 = c[0] & 1 == 1;
        let w = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        let (src, dst) = if v6 {
            (
                u128::from(w(1)) << 96 | u128::from(w(5)),
                u128::from(w(9)) << 64,
            )
        } else {
            (u128::from(w(1)), u128::from(w(5)))
        };
        keys.push(acl::Key {
            vni: u32::from(c[9] & 3) * 100,
            src,
            dst,
            sport: u16::from_be_bytes([c[10], c[11]]),
            dport: u16::from_be_bytes([c[12], c[13]]),
            proto: c[14],
            v6,
        });
    }
    keys
}

/// The compiled classifier and the linear reference agree (matched rule and
/// action) on many keys, one at a time and in bursts.
pub fn agree_set(set: &acl::RuleSet, data: &[u8]) {
    let c = acl::Classifier::new(set);
    let l = acl::LinearClassifier::new(set);
    assert_eq!(c.len(), l.len());
    let keys = keys_for(&set.ordered(), data);
    let mut out = vec![0u32; keys.len()];
    c.classify_burst(&keys, &mut out);
    for (k, got) in keys.iter().zip(&out) {
        let want = l.classify(k);
        assert_eq!(
            c.classify(k),
            want,
            "classifier disagrees with the reference on {k:?}"
        );
        assert_eq!(*got, want, "classify_burst disagrees on {k:?}");
        assert_eq!(c.action(want, k.vni), l.action(want, k.vni));
    }
}

/// [`agree_set`] on `rules` with `default`.
pub fn agree(rules: &[acl::Rule], default: acl::Action, data: &[u8]) {
    let mut set = acl::RuleSet::new(default);
    for r in rules {
        set.push(r.clone()).expect("valid rule");
    }
    agree_set(&set, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz-smoke.sh`: UDP (a DNS answer) to the gateway's
    /// own address at a health-probe port (>= 0xF000) is punted as a probe
    /// answer, not dropped as `not_vxlan`; the checker's model must agree.
    #[test]
    fn test_udp_to_a_probe_port_is_punted() {
        let frame: &[u8] = &[
            0x01, 0x6c, 0xf0, 0x49, 0xb2, 0xde, 0x6e, 0x30, 0x46, 0x9a, 0x23, 0xfb, 0xfa, 0x08,
            0x00, 0x45, 0x00, 0x00, 0x8d, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x25, 0xd6, 0x0a,
            0x00, 0x00, 0x8a, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x35, 0xf4, 0xd6, 0x00, 0x79, 0x44,
            0xf6, 0x21, 0x8c, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x08,
            0x61, 0x63, 0x63, 0x6f, 0x75, 0x6e, 0x74, 0x73, 0x06, 0x67, 0x6f, 0x6f, 0x67, 0x6c,
            0x65, 0x02, 0x63, 0x6f, 0x02, 0x69, 0x6c, 0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c,
            0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0xbc, 0x58, 0x00, 0x1d, 0x0e, 0x61, 0x63, 0x63,
            0x6f, 0x75, 0x6e, 0x74, 0x73, 0x2d, 0x63, 0x63, 0x74, 0x6c, 0x64, 0x01, 0x6c, 0x06,
            0x67, 0x6f, 0x6f, 0x67, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x0e, 0x61, 0x63,
            0x63, 0x6f, 0x75, 0x6e, 0x74, 0x73, 0x2d, 0x63, 0x63, 0x74, 0x6c, 0x64, 0x01, 0x4c,
            0xc0, 0x44, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x77, 0x00, 0x04, 0x4a, 0x7d,
            0x47, 0x5e,
        ];
        check_pipeline(frame, true);
        check_pipeline(frame, false);
    }

    /// Every frame of the committed and shared captures goes through the
    /// checker under both VTEP configs (the checker itself must accept what
    /// the pipeline does with real traffic).
    #[test]
    fn test_captures_pass_the_checker() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("pcaps/demo.pcap")];
        for d in ["general", "vxlan", "geneve"] {
            if let Ok(rd) = std::fs::read_dir(root.join("../shared/testdata/pcap").join(d)) {
                files.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng")),
                );
            }
        }
        let mut n = 0;
        for f in files {
            let Ok(cap) = dataplane::pcapfile::read_file(&f) else {
                continue;
            };
            for (_, frame) in cap.iter() {
                check_pipeline(frame, false);
                check_pipeline(frame, true);
                check_views(frame);
                n += 1;
            }
        }
        assert!(n > 100, "only {n} frames found");
    }

    /// Every input a fuzz run found (kept in `fuzz/regressions/<target>/`)
    /// passes its target's checks.
    #[test]
    fn test_regressions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/pipeline");
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            if let Some((&sel, frame)) = data.split_first() {
                check_pipeline(frame, sel & 1 == 1);
                check_pipeline(frame, sel & 1 == 0);
                n += 1;
            }
        }
        assert!(n >= 1, "regression inputs missing");
    }

    #[test]
    fn test_generated_services_are_encapsulated() {
        // Inner flows to each service VIP, v4 and v6 outer.
        for (dst, dport, proto) in [
            ("192.168.0.1", 80u16, 6u8),
            ("192.168.0.2", 53, 17),
            ("192.168.0.3", 443, 6),
            ("fd01::1", 80, 6),
            ("192.168.7.7", 8080, 17),
        ] {
            let dst: std::net::IpAddr = dst.parse().unwrap();
            let src: std::net::IpAddr = if dst.is_ipv6() {
                "fd02::9".parse().unwrap()
            } else {
                "10.1.2.3".parse().unwrap()
            };
            for frame_len in [128usize, 1600] {
                let mut inner = Vec::new();
                vxlan::build_inner_frame(
                    &vxlan::InnerSpec {
                        src_mac: [2, 0, 0, 0, 0, 9],
                        dst_mac: [2, 0, 0, 0, 0, 8],
                        src,
                        dst,
                        proto,
                        sport: 40000,
                        dport,
                        ttl: 9,
                        frame_len,
                    },
                    &mut inner,
                );
                for vtep in ["10.0.0.1", "fd00::1"] {
                    let o = vxlan::Outer {
                        src_mac: [2, 0, 0, 0, 0, 7],
                        dst_mac: [2, 0, 0, 0, 0, 1],
                        vlan: Some(5),
                        src_ip: if vtep.contains(':') {
                            "fd00::7".parse().unwrap()
                        } else {
                            "10.0.0.7".parse().unwrap()
                        },
                        dst_ip: vtep.parse().unwrap(),
                        ttl: 64,
                    };
                    let mut f = vec![0u8; vxlan::vxlan_header_len(&o)];
                    vxlan::emit_vxlan(&o, 1234, 4789, 100, &inner, &mut f);
                    f.extend_from_slice(&inner);
                    check_pipeline(&f, true);
                    check_pipeline(&f, false);
                }
            }
        }
    }
}
