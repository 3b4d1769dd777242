//! Hostile traffic, replayed through the real `dpgw replay` binary.
//!
//! Every group of frames (truncations at every offset, lying length fields,
//! all VXLAN flag values, IP options, fragments, IPv6 extension chains, TTL
//! 0/1, broadcast and multicast sources, runts, jumbos, random bytes) is built
//! here by a small packet writer of its own, written to a capture in a temp
//! dir and replayed. For each group the test computes what must happen to
//! every frame with [`reference`], a model of the documented checks (README
//! "Drop reasons" and "What happens to a packet", `vxlan::decap`'s check
//! order) written without the `vxlan` crate, and asserts:
//!
//! * the exact count per drop reason and of transmitted frames;
//! * `rx == tx + punted + Σ drops` and exit status 0 (no panic, no bad counter);
//! * the transmitted frames, in order, are exactly the expected ones: routed
//!   inner packets with the MACs rewritten, the TTL / hop limit one lower and
//!   the IPv4 checksum updated; encapsulated ones with a valid outer header
//!   carrying the inner packet unchanged.
//!
//! Some groups also pin hand-derived counts (e.g. truncation: 34 `truncated`
//! then `bad_ip_header` up to the full length), so the model cannot drift
//! with the code.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------- the gateway

const VTEP4: [u8; 4] = [10, 0, 0, 1];
const VTEP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const MTU: usize = 1500;
/// The one service: TCP 192.168.0.1:80 → 10.9.0.1 over IPIP from 10.0.0.1.
const VIP: [u8; 4] = [192, 168, 0, 1];
const VIP_PORT: u16 = 80;
const BACKEND: [u8; 4] = [10, 9, 0, 1];

fn config(input: &Path, output: &Path, workers: usize) -> String {
    format!(
        r#"[dataplane]
workers = {workers}
no_pin = true
flow_capacity = 4096
[pcap]
input = [{input:?}]
output = {output:?}
loops = 1
[gateway]
vtep_ips = ["10.0.0.1", "fd00::1"]
vxlan_ports = [{VXLAN_PORT}]
geneve_ports = [{GENEVE_PORT}]
underlay_ips = ["10.0.0.1"]
local_mac = "02:00:00:00:00:01"
next_hop_mac = "02:00:00:00:00:fe"
mtu = {MTU}
[[service]]
name = "web"
vip = "192.168.0.1"
port = {VIP_PORT}
proto = "tcp"
encap = "ipip"
table_size = 251
[[service.backend]]
ip = "10.9.0.1"
"#,
        input = input.display().to_string(),
        output = output.display().to_string(),
    )
}

// ------------------------------------------------------------ packet writer

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn eth(dst: [u8; 6], src: [u8; 6], et: u16) -> Vec<u8> {
    let mut v = dst.to_vec();
    v.extend_from_slice(&src);
    v.extend_from_slice(&et.to_be_bytes());
    v
}

/// An IPv4 header (with `opts`, padded to 4 bytes) and a correct checksum.
fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    flg_off: u16,
    opts: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let mut o = opts.to_vec();
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let hl = 20 + o.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (hl / 4) as u8;
    h[2..4].copy_from_slice(&((hl + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&flg_off.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(&o);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn fix_ipv4_csum(h: &mut [u8]) {
    let hl = usize::from(h[0] & 15) * 4;
    h[10] = 0;
    h[11] = 0;
    let c = csum(&h[..hl.min(h.len())]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

fn ipv6(src: [u8; 16], dst: [u8; 16], nh: u8, hop: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = nh;
    h[7] = hop;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// A TCP (20 B) or UDP (8 B) header followed by `payload` bytes, or just
/// `payload` bytes for other protocols.
fn l4(proto: u8, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    match proto {
        6 => {
            v.extend_from_slice(&sport.to_be_bytes());
            v.extend_from_slice(&dport.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            v.extend_from_slice(&sport.to_be_bytes());
            v.extend_from_slice(&dport.to_be_bytes());
            v.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            v.extend_from_slice(&[0, 0]);
        }
        _ => {}
    }
    v.extend((0..payload).map(|i| (i * 7 + 3) as u8));
    v
}

/// What the inner packet looks like.
#[derive(Clone)]
struct InnerSpec {
    v6: bool,
    src4: [u8; 4],
    dst4: [u8; 4],
    src6: [u8; 16],
    dst6: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: usize,
    /// IPv4 flags + fragment offset word.
    flg_off: u16,
    /// IPv4 options.
    opts: Vec<u8>,
    /// IPv6 extension headers: (type, bytes of the header without its first
    /// byte, which is filled in with the next header).
    ext: Vec<(u8, Vec<u8>)>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Default for InnerSpec {
    fn default() -> Self {
        InnerSpec {
            v6: false,
            src4: [10, 1, 0, 7],
            dst4: [192, 168, 50, 1],
            src6: [0xfd, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            dst6: [0xfd, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            proto: 6,
            sport: 40000,
            dport: 8080,
            ttl: 64,
            payload: 30,
            flg_off: 0x4000,
            opts: Vec::new(),
            ext: Vec::new(),
            src_mac: [0x02, 0xaa, 0, 0, 0, 1],
            dst_mac: [0x02, 0xbb, 0, 0, 0, 1],
        }
    }
}

/// IPv6 extension headers (first byte = next header, filled in by `ext_chain`).
fn ext_chain(first_nh_out: &mut u8, ext: &[(u8, Vec<u8>)], last: u8) -> Vec<u8> {
    let mut out = Vec::new();
    *first_nh_out = ext.first().map_or(last, |e| e.0);
    for (i, (_, body)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(last, |e| e.0);
        let mut b = body.clone();
        b[0] = next;
        out.extend_from_slice(&b);
    }
    out
}

/// Hop-by-hop / destination options / routing header of `units` 8-byte units.
fn opt_ext(kind: u8, units: usize) -> (u8, Vec<u8>) {
    let mut b = vec![0u8; units * 8];
    b[1] = (units - 1) as u8;
    if kind != 43 {
        // PadN over the rest.
        b[2] = 1;
        b[3] = (units * 8 - 4) as u8;
    }
    (kind, b)
}

fn frag_ext(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let mut b = vec![0u8; 8];
    b[2..4].copy_from_slice(&((offset & 0xfff8) | u16::from(more)).to_be_bytes());
    b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    (44, b)
}

fn inner_frame(s: &InnerSpec) -> Vec<u8> {
    let body = l4(s.proto, s.sport, s.dport, s.payload);
    if s.v6 {
        let mut nh = 0;
        let ext = ext_chain(&mut nh, &s.ext, s.proto);
        let mut f = eth(s.dst_mac, s.src_mac, 0x86dd);
        f.extend(ipv6(s.src6, s.dst6, nh, s.ttl, ext.len() + body.len()));
        f.extend(ext);
        f.extend(body);
        f
    } else {
        let mut f = eth(s.dst_mac, s.src_mac, 0x0800);
        f.extend(ipv4(
            s.src4,
            s.dst4,
            s.proto,
            s.ttl,
            s.flg_off,
            &s.opts,
            body.len(),
        ));
        f.extend(body);
        f
    }
}

/// The outer side.
#[derive(Clone)]
struct OuterSpec {
    v6: bool,
    vlans: Vec<u16>,
    src_mac: [u8; 6],
    src4: [u8; 4],
    dst4: [u8; 4],
    src6: [u8; 16],
    dst6: [u8; 16],
    flg_off: u16,
    opts: Vec<u8>,
    ext: Vec<(u8, Vec<u8>)>,
    dport: u16,
    flags: u8,
    vni: u32,
    /// A Geneve header (fixed part and options, as they go on the wire) in
    /// place of the VXLAN header; `dport` should then be `GENEVE_PORT`.
    geneve: Option<Vec<u8>>,
}

impl Default for OuterSpec {
    fn default() -> Self {
        OuterSpec {
            v6: false,
            vlans: Vec::new(),
            src_mac: [0x02, 0xc1, 0, 0, 0, 1],
            src4: [172, 16, 0, 9],
            dst4: VTEP4,
            src6: [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            dst6: VTEP6,
            flg_off: 0,
            opts: Vec::new(),
            ext: Vec::new(),
            dport: VXLAN_PORT,
            flags: 0x08,
            vni: 100,
            geneve: None,
        }
    }
}

fn vxlan_frame(o: &OuterSpec, inner: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&49152u16.to_be_bytes());
    udp.extend_from_slice(&o.dport.to_be_bytes());
    let tunnel = o.geneve.as_ref().map_or(8, Vec::len);
    udp.extend_from_slice(&((8 + tunnel + inner.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    if let Some(g) = &o.geneve {
        udp.extend_from_slice(g);
    } else {
        udp.extend_from_slice(&[o.flags, 0, 0, 0]);
        udp.extend_from_slice(&(o.vni << 8).to_be_bytes());
    }
    udp.extend_from_slice(inner);
    let mut f = LOCAL_MAC.to_vec();
    f.extend_from_slice(&o.src_mac);
    for v in &o.vlans {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    if o.v6 {
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let mut nh = 0;
        let ext = ext_chain(&mut nh, &o.ext, 17);
        f.extend(ipv6(o.src6, o.dst6, nh, 64, ext.len() + udp.len()));
        f.extend(ext);
    } else {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend(ipv4(o.src4, o.dst4, 17, 64, o.flg_off, &o.opts, udp.len()));
    }
    f.extend(udp);
    f
}

fn frame(o: &OuterSpec, i: &InnerSpec) -> Vec<u8> {
    vxlan_frame(o, &inner_frame(i))
}

/// Offset of the outer IP header of a frame built by `vxlan_frame`.
fn outer_l3(o: &OuterSpec) -> usize {
    14 + 4 * o.vlans.len()
}

// --------------------------------------------------------- reference model

/// What must happen to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Drop(&'static str),
    /// For the gateway itself: handed to the slow path (`punted`, not a drop).
    Punt,
    /// Transmitted exactly as these bytes (routed).
    Routed(Vec<u8>),
    /// Too big to encapsulate with DF set: an ICMP "fragmentation needed"
    /// reply goes back to the client's VTEP (`client`, the outer source),
    /// announcing `MTU - 20`, from the VIP to the inner source `inner_src`.
    TooBig {
        client: Vec<u8>,
        inner_src: [u8; 4],
        vni: u32,
    },
    /// Encapsulated to the backend; the payload is this inner IP packet.
    Encap(Vec<u8>),
}

/// Walks Ethernet and up to two VLAN tags: (ethertype, L3 offset).
fn walk_eth(f: &[u8]) -> Option<(u16, usize)> {
    if f.len() < 14 {
        return None;
    }
    let mut et = be16(f, 12);
    let mut off = 14;
    for _ in 0..2 {
        if et != 0x8100 && et != 0x88a8 {
            break;
        }
        if f.len() < off + 4 {
            return None;
        }
        et = be16(f, off + 2);
        off += 4;
    }
    Some((et, off))
}

enum V6Walk {
    Upper {
        proto: u8,
        off: usize,
        frag: Option<u16>,
    },
    Truncated,
    TooMany,
}

/// IPv6 extension headers (HBH 0, routing 43, dest opts 60, AH 51,
/// fragment 44); a chain of more than 8 is refused (README / `vxlan::decap`
/// docs); stops after a non-first fragment header.
fn walk_v6(pkt: &[u8]) -> V6Walk {
    let mut nh = pkt[6];
    let mut off = 40;
    let mut frag = None;
    for n in 0..=8 {
        let len = match nh {
            0 | 43 | 60 | 51 | 44 if n == 8 => return V6Walk::TooMany,
            0 | 43 | 60 => match pkt.get(off + 1) {
                Some(l) => (usize::from(*l) + 1) * 8,
                None => return V6Walk::Truncated,
            },
            51 => match pkt.get(off + 1) {
                Some(l) => (usize::from(*l) + 2) * 4,
                None => return V6Walk::Truncated,
            },
            44 => 8,
            _ => {
                return V6Walk::Upper {
                    proto: nh,
                    off,
                    frag,
                }
            }
        };
        if pkt.len() < off + len {
            return V6Walk::Truncated;
        }
        let this = nh;
        nh = pkt[off];
        if this == 44 {
            let fo = be16(pkt, off + 2) & 0xfff8;
            frag = Some(fo);
            off += len;
            if fo != 0 {
                return V6Walk::Upper {
                    proto: nh,
                    off,
                    frag,
                };
            }
        } else {
            off += len;
        }
    }
    V6Walk::TooMany
}

/// The gateway's fragment associations as the model sees them (README,
/// "What happens to a packet", 2): a first fragment to the service records
/// its datagram (VNI, source, IP identification; the service is TCP to one
/// VIP); a later fragment to the VIP address then goes where its first went,
/// and one whose first has not come is held and, its first never coming in
/// these groups, dropped as `frag_unmatched`.
#[derive(Default)]
struct FragModel {
    seen: std::collections::HashSet<(u32, [u8; 4], u16)>,
    /// Later fragments the model expects to be held (and never released).
    held: usize,
}

/// The documented fate of `f` under [`config`], after the frames `m` saw.
fn reference(f: &[u8], m: &mut FragModel) -> Expect {
    match front_reference(f, m) {
        Expect::Drop("not_ip" | "not_udp" | "not_vxlan") if for_the_gateway(f) => Expect::Punt,
        e => e,
    }
}

/// The exception path (README `exception`; `dataplane::exception` docs):
/// untagged ARP for one of our addresses, ICMP / ICMPv6 echo requests to
/// them, neighbour solicitations for them, and neighbour advertisements (to
/// us or to a multicast group), and answers to health probes (TCP or UDP to
/// one of them at a destination port of 61440 or above, within the IP
/// length). Our addresses: VTEPs and underlay sources.
fn for_the_gateway(f: &[u8]) -> bool {
    if f.len() < 14 {
        return false;
    }
    let l3 = &f[14..];
    let probe = |l4: Option<&[u8]>| l4.is_some_and(|p| p.len() >= 4 && be16(p, 2) >= 0xF000);
    match be16(f, 12) {
        0x0800 if l3.len() >= 20 && matches!(l3[9], 6 | 17) => {
            let hl = usize::from(l3[0] & 15) * 4;
            let total = usize::from(be16(l3, 2));
            l3[0] >> 4 == 4
                && hl >= 20
                && total >= hl
                && total <= l3.len()
                && be16(l3, 6) & 0x3fff == 0
                && l3[16..20] == VTEP4
                && probe(l3.get(hl..total))
        }
        0x86dd if l3.len() >= 40 && matches!(l3[6], 6 | 17) => {
            let end = 40 + usize::from(be16(l3, 4));
            l3[0] >> 4 == 6 && end <= l3.len() && l3[24..40] == VTEP6 && probe(l3.get(40..end))
        }
        0x0806 => {
            l3.len() >= 28
                && be16(l3, 0) == 1
                && be16(l3, 2) == 0x0800
                && l3[4] == 6
                && l3[5] == 4
                && matches!(be16(l3, 6), 1 | 2)
                && l3[24..28] == VTEP4
        }
        0x0800 => {
            if l3.len() < 20 || l3[0] >> 4 != 4 {
                return false;
            }
            let hl = usize::from(l3[0] & 15) * 4;
            hl >= 20
                && l3.len() >= hl + 8
                && l3[9] == 1
                && be16(l3, 6) & 0x3fff == 0
                && l3[hl] == 8
                && l3[16..20] == VTEP4
        }
        0x86dd => {
            if l3.len() < 48 || l3[0] >> 4 != 6 || l3[6] != 58 {
                return false;
            }
            let icmp = &l3[40..];
            match icmp[0] {
                128 => l3[24..40] == VTEP6,
                135 => icmp.len() >= 24 && icmp[8..24] == VTEP6,
                136 => icmp.len() >= 24 && (l3[24] == 0xff || l3[24..40] == VTEP6),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The documented fate of `f` as far as the outer headers decide it.
fn front_reference(f: &[u8], m: &mut FragModel) -> Expect {
    use Expect::Drop;
    // 1-2: Ethernet, tags, ethertype.
    let Some((et, l3)) = walk_eth(f) else {
        return Drop("truncated");
    };
    let ip = &f[l3..];
    // 3-6: IP header, checksum, fragments, protocol.
    let (l4, end, ours) = match et {
        0x0800 => {
            if ip.len() < 20 {
                return Drop("truncated");
            }
            let hl = usize::from(ip[0] & 15) * 4;
            if ip[0] >> 4 != 4 || hl < 20 {
                return Drop("bad_ip_header");
            }
            if ip.len() < hl {
                return Drop("truncated");
            }
            let total = usize::from(be16(ip, 2));
            if total < hl || total > ip.len() {
                return Drop("bad_ip_header");
            }
            if csum(&ip[..hl]) != 0 {
                return Drop("bad_ip_checksum");
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return Drop("outer_fragment");
            }
            if ip[9] != 17 {
                return Drop("not_udp");
            }
            (hl, total, ip[16..20] == VTEP4)
        }
        0x86dd => {
            if ip.len() < 40 {
                return Drop("truncated");
            }
            if ip[0] >> 4 != 6 {
                return Drop("bad_ip_header");
            }
            let total = 40 + usize::from(be16(ip, 4));
            if total > ip.len() {
                return Drop("bad_ip_header");
            }
            let pkt = &ip[..total];
            let l4 = if pkt[6] == 17 {
                40
            } else {
                match walk_v6(pkt) {
                    V6Walk::Truncated => return Drop("truncated"),
                    V6Walk::TooMany => return Drop("bad_ip_header"),
                    V6Walk::Upper { frag: Some(_), .. } => return Drop("outer_fragment"),
                    V6Walk::Upper { proto, .. } if proto != 17 => return Drop("not_udp"),
                    V6Walk::Upper { off, .. } => off,
                }
            };
            (l4, total, pkt[24..40] == VTEP6)
        }
        _ => return Drop("not_ip"),
    };
    // 7-11: UDP, port, VTEP, UDP length, VXLAN flags.
    if end - l4 < 8 {
        return Drop("truncated");
    }
    let geneve = match be16(ip, l4 + 2) {
        VXLAN_PORT => false,
        GENEVE_PORT => true,
        _ => return Drop("not_vxlan"),
    };
    if !ours {
        return Drop("wrong_vtep");
    }
    let ulen = usize::from(be16(ip, l4 + 4));
    if ulen < 16 || ulen > end - l4 {
        return Drop("bad_udp_length");
    }
    // Bytes of the tunnel header (VXLAN 8, Geneve 8 + options).
    let tunnel = if geneve {
        // RFC 8926: version 0; options within the UDP payload, each within
        // the options; O flag; critical options; protocol Ethernet.
        let g = &ip[l4 + 8..l4 + ulen];
        let opt_len = usize::from(g[0] & 0x3f) * 4;
        if g[0] >> 6 != 0 || 8 + opt_len > g.len() {
            return Drop("bad_geneve_header");
        }
        if g[1] & 0x80 != 0 {
            return Drop("geneve_control");
        }
        if g[1] & 0x40 != 0 && opt_len > 0 {
            return Drop("geneve_critical");
        }
        let mut at = 8;
        while at < 8 + opt_len {
            if g[at + 2] & 0x80 != 0 {
                return Drop("geneve_critical");
            }
            at += 4 + usize::from(g[at + 3] & 0x1f) * 4;
            if at > 8 + opt_len {
                return Drop("bad_geneve_header");
            }
        }
        if be16(g, 2) != 0x6558 {
            return Drop("geneve_proto");
        }
        8 + opt_len
    } else {
        if ip[l4 + 8] & 0x08 == 0 {
            return Drop("bad_vxlan_flags");
        }
        8
    };
    let inner = &ip[l4 + 8 + tunnel..l4 + ulen];
    let client = if et == 0x0800 {
        ip[12..16].to_vec()
    } else {
        ip[8..24].to_vec()
    };
    let vni = u32::from_be_bytes([0, ip[l4 + 12], ip[l4 + 13], ip[l4 + 14]]);
    match inner_reference(inner, vni, m) {
        Expect::TooBig { inner_src, .. } => Expect::TooBig {
            client,
            inner_src,
            vni,
        },
        e => e,
    }
}

/// The fate of a decapsulated inner frame.
fn inner_reference(inner: &[u8], vni: u32, m: &mut FragModel) -> Expect {
    use Expect::Drop;
    let Some((et, l3)) = walk_eth(inner) else {
        return Drop("inner_truncated");
    };
    let ip = &inner[l3..];
    // (total length, protocol, ports present, L4 bytes available, dst, dport)
    let (total, v6, to_vip) = match et {
        0x0800 => {
            if ip.len() < 20 {
                return Drop("inner_truncated");
            }
            let hl = usize::from(ip[0] & 15) * 4;
            if ip[0] >> 4 != 4 || hl < 20 {
                return Drop("inner_bad_header");
            }
            if ip.len() < hl {
                return Drop("inner_truncated");
            }
            let total = usize::from(be16(ip, 2));
            if total < hl || total > ip.len() {
                return Drop("inner_bad_header");
            }
            let proto = ip[9];
            let first = be16(ip, 6) & 0x1fff == 0;
            let has_ports = first && (proto == 6 || proto == 17);
            if has_ports && total - hl < 4 {
                return Drop("inner_truncated");
            }
            // RFC 1812 §5.2.2: a bad inner header checksum is discarded.
            if csum(&ip[..hl]) != 0 {
                return Drop("inner_bad_checksum");
            }
            let dport = if has_ports { be16(ip, hl + 2) } else { 0 };
            let src = [ip[12], ip[13], ip[14], ip[15]];
            let (more, later) = (be16(ip, 6) & 0x2000 != 0, !first);
            let dgram = (vni, src, be16(ip, 4));
            let to_vip = if later && ip[16..20] == VIP && proto == 6 {
                if !m.seen.contains(&dgram) {
                    m.held += 1;
                    return Drop("frag_unmatched");
                }
                true
            } else {
                ip[16..20] == VIP && proto == 6 && dport == VIP_PORT
            };
            if to_vip && first && more {
                m.seen.insert(dgram);
            }
            (total, false, to_vip)
        }
        0x86dd => {
            if ip.len() < 40 {
                return Drop("inner_truncated");
            }
            if ip[0] >> 4 != 6 {
                return Drop("inner_bad_header");
            }
            let total = 40 + usize::from(be16(ip, 4));
            if total > ip.len() {
                return Drop("inner_bad_header");
            }
            let pkt = &ip[..total];
            let (proto, off, first) = if pkt[6] == 6 || pkt[6] == 17 {
                (pkt[6], 40, true)
            } else {
                match walk_v6(pkt) {
                    V6Walk::Truncated => return Drop("inner_truncated"),
                    V6Walk::TooMany => return Drop("inner_bad_header"),
                    V6Walk::Upper { proto, off, frag } => (proto, off, frag.is_none_or(|o| o == 0)),
                }
            };
            if first && (proto == 6 || proto == 17) && total - off < 4 {
                return Drop("inner_truncated");
            }
            (total, true, false)
        }
        _ => return Drop("inner_not_ip"),
    };
    let pkt = &ip[..total];
    if to_vip {
        // No ACL; one active backend. IPIP adds a 20-byte outer IPv4 header.
        if total + 20 > MTU {
            // DF set: the client is told (ICMP type 3 code 4); else dropped.
            if be16(ip, 6) & 0x4000 != 0 {
                let inner_src = [ip[12], ip[13], ip[14], ip[15]];
                return Expect::TooBig {
                    client: Vec::new(),
                    inner_src,
                    vni: 0,
                };
            }
            return Drop("mtu_exceeded");
        }
        return Expect::Encap(pkt.to_vec());
    }
    // Routed: TTL / hop limit, then MTU of the transmit link.
    let ttl_at = if v6 { 7 } else { 8 };
    if pkt[ttl_at] <= 1 {
        return Drop("ttl_expired");
    }
    if total > MTU {
        return Drop("mtu_exceeded");
    }
    let mut out = inner[..l3 + total].to_vec();
    out[0..6].copy_from_slice(&NEXT_HOP_MAC);
    out[6..12].copy_from_slice(&LOCAL_MAC);
    out[l3 + ttl_at] -= 1;
    if !v6 {
        // The checksum was verified above.
        fix_ipv4_csum(&mut out[l3..]);
    }
    Expect::Routed(out)
}

// ----------------------------------------------------------------- replaying

struct Outcome {
    json: serde_json::Value,
    out: Vec<Vec<u8>>,
}

fn replay(name: &str, frames: &[Vec<u8>], workers: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(format!("{name}.pcap"));
    let output = dir.path().join("out.pcap");
    let mut w = dataplane::pcapfile::PcapWriter::new();
    for (i, f) in frames.iter().enumerate() {
        w.write(1_700_000_000_000_000_000 + i as u64 * 1000, f);
    }
    std::fs::write(&input, &w.buf).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&input, &output, workers)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dpgw"))
        .args(["replay", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: dpgw exited with {:?}\nstderr: {}\nstdout: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let cap = dataplane::pcapfile::read_file(&output).expect("output capture reads");
    let out = cap.iter().map(|(_, f)| f.to_vec()).collect();
    Outcome { json, out }
}

/// Drops by reason, plus "punted" when frames went to the slow path.
fn fates_of(json: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut m = drops_of(json);
    let punted = json["punted"].as_u64().unwrap_or(0);
    if punted > 0 {
        m.insert("punted".into(), punted);
    }
    m
}

fn drops_of(json: &serde_json::Value) -> BTreeMap<String, u64> {
    json["drops"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// Checks one encapsulated frame against the inner packet it must carry.
fn check_encap(name: &str, i: usize, got: &[u8], inner_ip: &[u8]) {
    let ctx = format!("{name}: encapsulated frame {i}");
    assert!(got.len() >= 34, "{ctx}: too short");
    assert_eq!(&got[0..6], &NEXT_HOP_MAC, "{ctx}: dst MAC");
    assert_eq!(&got[6..12], &LOCAL_MAC, "{ctx}: src MAC");
    assert_eq!(be16(got, 12), 0x0800, "{ctx}: ethertype");
    let ip = &got[14..];
    assert_eq!(ip[0], 0x45, "{ctx}: version/IHL");
    assert_eq!(usize::from(be16(ip, 2)), ip.len(), "{ctx}: total length");
    assert_eq!(csum(&ip[..20]), 0, "{ctx}: header checksum");
    assert_eq!(
        ip[9],
        if inner_ip[0] >> 4 == 6 { 41 } else { 4 },
        "{ctx}: protocol"
    );
    assert_eq!(&ip[12..16], &VTEP4, "{ctx}: outer source");
    assert_eq!(&ip[16..20], &BACKEND, "{ctx}: outer destination");
    assert!(ip[8] > 0, "{ctx}: outer TTL");
    assert_eq!(&ip[20..], inner_ip, "{ctx}: inner packet changed");
}

/// Replays `frames` and checks everything against the model. Returns the
/// counts (reason or "tx" → n) for hand-written assertions.
fn run_group(name: &str, frames: &[Vec<u8>]) -> BTreeMap<String, u64> {
    run_group_workers(name, frames, 1)
}

fn run_group_workers(name: &str, frames: &[Vec<u8>], workers: usize) -> BTreeMap<String, u64> {
    let mut model = FragModel::default();
    let expect: Vec<Expect> = frames.iter().map(|f| reference(f, &mut model)).collect();
    // Held fragments stay within the hold buffer, so that none is dropped
    // as `frag_hold_full` however fast the replay runs.
    assert!(model.held <= 32, "{name}: {} fragments held", model.held);
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in &expect {
        let k = match e {
            Expect::Drop(r) => r.to_string(),
            Expect::Punt => "punted".to_string(),
            _ => "tx".to_string(),
        };
        *want.entry(k).or_insert(0) += 1;
    }
    let o = replay(name, frames, workers);
    let rx = o.json["rx"].as_u64().unwrap();
    let tx = o.json["tx"].as_u64().unwrap();
    let drops = drops_of(&o.json);
    let punted = o.json["punted"].as_u64().unwrap();
    assert_eq!(rx, frames.len() as u64, "{name}: rx");
    assert_eq!(
        rx,
        tx + punted + drops.values().sum::<u64>(),
        "{name}: rx != tx + punted + drops: {}",
        o.json
    );
    let mut got = fates_of(&o.json);
    if tx > 0 {
        got.insert("tx".into(), tx);
    }
    if got != want {
        // Name the first frames whose fate differs, for the failure message.
        let mut detail = String::new();
        let mut found = 0;
        for (i, (f, e)) in frames.iter().zip(&expect).enumerate().take(600) {
            let alone = replay("single", std::slice::from_ref(f), 1);
            let d = fates_of(&alone.json);
            let g = d.keys().next().cloned().unwrap_or_else(|| "tx".into());
            let w = match e {
                Expect::Drop(r) => r.to_string(),
                Expect::Punt => "punted".into(),
                _ => "tx".into(),
            };
            if g != w {
                detail.push_str(&format!(
                    "  frame {i} (len {}): got {g}, expected {w}: {:02x?}\n",
                    f.len(),
                    &f[..f.len().min(96)]
                ));
                found += 1;
                if found >= 6 {
                    break;
                }
            }
        }
        panic!("{name}: counts differ\n got:      {got:?}\n expected: {want:?}\n{detail}");
    }
    let tx_expect: Vec<&Expect> = expect
        .iter()
        .filter(|e| !matches!(e, Expect::Drop(_) | Expect::Punt))
        .collect();
    assert_eq!(
        o.out.len(),
        tx_expect.len(),
        "{name}: frames in the output capture"
    );
    if workers == 1 {
        for (i, (g, e)) in o.out.iter().zip(tx_expect).enumerate() {
            match e {
                Expect::Routed(bytes) => assert_eq!(g, bytes, "{name}: routed frame {i} differs"),
                Expect::Encap(inner) => check_encap(name, i, g, inner),
                Expect::TooBig {
                    client,
                    inner_src,
                    vni,
                } => check_too_big(name, i, g, client, *inner_src, *vni),
                Expect::Drop(_) | Expect::Punt => unreachable!(),
            }
        }
    } else {
        // Several workers interleave their output: compare routed frames as
        // multisets and count the encapsulated ones.
        let mut want_routed: Vec<&Vec<u8>> = tx_expect
            .iter()
            .filter_map(|e| match e {
                Expect::Routed(b) => Some(b),
                _ => None,
            })
            .collect();
        let too_big = tx_expect
            .iter()
            .filter(|e| matches!(e, Expect::TooBig { .. }))
            .count();
        assert_eq!(
            too_big, 0,
            "{name}: multi-worker groups carry no too-big packets"
        );
        let mut got_routed: Vec<&Vec<u8>> = o.out.iter().filter(|g| !is_encap(g)).collect();
        want_routed.sort();
        got_routed.sort();
        assert_eq!(got_routed, want_routed, "{name}: routed frames differ");
        let encaps = tx_expect
            .iter()
            .filter(|e| matches!(e, Expect::Encap(_)))
            .count();
        assert_eq!(
            o.out.iter().filter(|g| is_encap(g)).count(),
            encaps,
            "{name}: encapsulated frames"
        );
    }
    got
}

/// Checks an ICMP "fragmentation needed" reply sent back to the client.
fn check_too_big(name: &str, i: usize, got: &[u8], client: &[u8], inner_src: [u8; 4], vni: u32) {
    let ctx = format!("{name}: ICMP too-big frame {i}");
    let (et, l3) = walk_eth(got).expect("Ethernet");
    let ip = &got[l3..];
    let udp = match et {
        0x0800 => {
            assert_eq!(csum(&ip[..20]), 0, "{ctx}: outer checksum");
            assert_eq!(&ip[16..20], client, "{ctx}: outer destination");
            assert_eq!(&ip[12..16], &VTEP4, "{ctx}: outer source");
            usize::from(ip[0] & 15) * 4
        }
        0x86dd => {
            assert_eq!(&ip[24..40], client, "{ctx}: outer destination");
            assert_eq!(&ip[8..24], &VTEP6, "{ctx}: outer source");
            40
        }
        e => panic!("{ctx}: ethertype {e:#x}"),
    };
    assert_eq!(
        ip[if et == 0x0800 { 9 } else { 6 }],
        17,
        "{ctx}: outer protocol"
    );
    let vx = &ip[udp + 8..];
    if be16(ip, udp + 2) == GENEVE_PORT {
        // Back over Geneve: version 0, no options, Ethernet.
        assert_eq!(&vx[..4], &[0, 0, 0x65, 0x58], "{ctx}: Geneve header");
    } else {
        assert_ne!(vx[0] & 0x08, 0, "{ctx}: VXLAN I flag");
    }
    assert_eq!(
        u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        vni,
        "{ctx}: VNI"
    );
    let inner = &vx[8..];
    let (iet, il3) = walk_eth(inner).expect("inner Ethernet");
    assert_eq!(iet, 0x0800, "{ctx}: inner ethertype");
    let iip = &inner[il3..];
    assert_eq!(csum(&iip[..20]), 0, "{ctx}: inner checksum");
    assert_eq!(iip[9], 1, "{ctx}: ICMP");
    assert_eq!(&iip[12..16], &VIP, "{ctx}: from the VIP");
    assert_eq!(&iip[16..20], &inner_src, "{ctx}: to the client");
    let icmp = &iip[usize::from(iip[0] & 15) * 4..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "{ctx}: type/code");
    assert_eq!(usize::from(be16(icmp, 6)), MTU - 20, "{ctx}: next-hop MTU");
    assert_eq!(csum(icmp), 0, "{ctx}: ICMP checksum");
}

fn is_encap(g: &[u8]) -> bool {
    g.len() >= 34
        && be16(g, 12) == 0x0800
        && g[14 + 12..14 + 16] == VTEP4
        && g[14 + 16..14 + 20] == BACKEND
}

fn count(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

// ------------------------------------------------------------------- corpus

/// A few valid frames: every outer/inner family pair, a tagged one, and one
/// to the service VIP.
fn base_frames() -> Vec<(String, OuterSpec, InnerSpec)> {
    let mut v = Vec::new();
    for ov6 in [false, true] {
        for iv6 in [false, true] {
            let o = OuterSpec {
                v6: ov6,
                ..Default::default()
            };
            let i = InnerSpec {
                v6: iv6,
                proto: if iv6 { 17 } else { 6 },
                ..Default::default()
            };
            v.push((
                format!(
                    "outer{}-inner{}",
                    if ov6 { 6 } else { 4 },
                    if iv6 { 6 } else { 4 }
                ),
                o,
                i,
            ));
        }
    }
    v.push((
        "vlan-vip".into(),
        OuterSpec {
            vlans: vec![7],
            ..Default::default()
        },
        InnerSpec {
            dst4: VIP,
            dport: VIP_PORT,
            ..Default::default()
        },
    ));
    v
}

/// Every prefix of each base frame (outer truncation), and every prefix of
/// the inner frame re-wrapped with consistent outer lengths (inner truncation).
fn truncations() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (_, o, i) in base_frames() {
        let f = frame(&o, &i);
        for n in 0..=f.len() {
            out.push(f[..n].to_vec());
        }
        let inner = inner_frame(&i);
        for n in 0..=inner.len() {
            out.push(vxlan_frame(&o, &inner[..n]));
        }
    }
    out
}

#[test]
fn hostile_truncated_at_every_offset() {
    let frames = truncations();
    let got = run_group("truncated", &frames);
    // Hand-derived: a frame cut before the end of the outer IP header is
    // `truncated`; after it, the IP length runs past the buffer
    // (`bad_ip_header`); only the whole frame passes. Inner cuts: before the
    // end of the inner IP header `inner_truncated`, after it
    // `inner_bad_header`, and the whole frame passes.
    let mut truncated = 0;
    let mut bad_ip = 0;
    let mut inner_trunc = 0;
    let mut inner_bad = 0;
    let mut tx = 0;
    for (_, o, i) in base_frames() {
        let f = frame(&o, &i);
        let ip_end = outer_l3(&o) + if o.v6 { 40 } else { 20 };
        truncated += ip_end as u64;
        bad_ip += (f.len() - ip_end) as u64;
        let inner = inner_frame(&i);
        let iip_end = 14 + if i.v6 { 40 } else { 20 };
        inner_trunc += iip_end as u64;
        inner_bad += (inner.len() - iip_end) as u64;
        tx += 2;
    }
    assert_eq!(count(&got, "truncated"), truncated);
    assert_eq!(count(&got, "bad_ip_header"), bad_ip);
    assert_eq!(count(&got, "inner_truncated"), inner_trunc);
    assert_eq!(count(&got, "inner_bad_header"), inner_bad);
    assert_eq!(count(&got, "tx"), tx);
    eprintln!("truncated: {} frames: {got:?}", frames.len());
}

/// Outer IPv4 total length, IHL and UDP length, larger and smaller than the
/// frame; inner IPv4 total length and IHL, inner IPv6 payload length.
fn length_lies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let o = OuterSpec::default();
    let i = InnerSpec::default();
    let base = frame(&o, &i);
    let l3 = outer_l3(&o);
    let real_total = base.len() - l3;
    // Outer IPv4 total length: 0..=real+16 (checksum fixed each time).
    for t in 0..=real_total + 16 {
        let mut f = base.clone();
        f[l3 + 2..l3 + 4].copy_from_slice(&(t as u16).to_be_bytes());
        fix_ipv4_csum(&mut f[l3..]);
        out.push(f);
    }
    // The same with Ethernet padding after the packet: smaller totals trim.
    for pad in [1usize, 6, 60] {
        let mut f = base.clone();
        f.extend(std::iter::repeat_n(0xee, pad));
        out.push(f);
    }
    // Outer IHL 0..=15, checksum fixed over whatever the IHL claims.
    for ihl in 0..16u8 {
        let mut f = base.clone();
        f[l3] = 0x40 | ihl;
        fix_ipv4_csum(&mut f[l3..]);
        out.push(f);
        // And with the checksum left as it was.
        let mut g = base.clone();
        g[l3] = 0x40 | ihl;
        out.push(g);
    }
    // Wrong IP versions.
    for ver in 0..16u8 {
        let mut f = base.clone();
        f[l3] = (ver << 4) | 5;
        fix_ipv4_csum(&mut f[l3..]);
        out.push(f);
    }
    // UDP length 0..=payload+8.
    let udp = l3 + 20;
    let payload = base.len() - udp;
    for u in 0..=payload + 8 {
        let mut f = base.clone();
        f[udp + 4..udp + 6].copy_from_slice(&(u as u16).to_be_bytes());
        out.push(f);
    }
    // IPv6 outer payload length 0..=real+8.
    let o6 = OuterSpec {
        v6: true,
        ..Default::default()
    };
    let b6 = frame(&o6, &i);
    let real = b6.len() - 14 - 40;
    for p in 0..=real + 8 {
        let mut f = b6.clone();
        f[18..20].copy_from_slice(&(p as u16).to_be_bytes());
        out.push(f);
    }
    // Inner IPv4 total length and IHL, inner IPv6 payload length, with the
    // outer lengths consistent.
    let inner = inner_frame(&i);
    let it = inner.len() - 14;
    for t in 0..=it + 8 {
        let mut x = inner.clone();
        x[16..18].copy_from_slice(&(t as u16).to_be_bytes());
        fix_ipv4_csum(&mut x[14..]);
        out.push(vxlan_frame(&o, &x));
    }
    for ihl in 0..16u8 {
        let mut x = inner.clone();
        x[14] = 0x40 | ihl;
        fix_ipv4_csum(&mut x[14..]);
        out.push(vxlan_frame(&o, &x));
    }
    let i6 = InnerSpec {
        v6: true,
        ..Default::default()
    };
    let inner6 = inner_frame(&i6);
    let ip6 = inner6.len() - 54;
    for p in 0..=ip6 + 8 {
        let mut x = inner6.clone();
        x[18..20].copy_from_slice(&(p as u16).to_be_bytes());
        out.push(vxlan_frame(&o, &x));
    }
    // A UDP inner packet whose own UDP length lies (not checked: forwarded).
    let iu = InnerSpec {
        proto: 17,
        ..Default::default()
    };
    let mut x = inner_frame(&iu);
    x[38..40].copy_from_slice(&9999u16.to_be_bytes());
    out.push(vxlan_frame(&o, &x));
    out
}

#[test]
fn hostile_lengths_that_lie() {
    let frames = length_lies();
    let got = run_group("lengths", &frames);
    // Exact counts come from the model; the hand-derived sweep is
    // `hostile_outer_total_length_sweep_exact`.
    assert!(count(&got, "bad_udp_length") > 0 && count(&got, "bad_ip_header") > 0);
    assert!(count(&got, "inner_bad_header") > 0 && count(&got, "inner_truncated") > 0);
    assert!(count(&got, "tx") > 0);
    eprintln!("lengths: {} frames: {got:?}", frames.len());
}

#[test]
fn hostile_outer_total_length_sweep_exact() {
    let o = OuterSpec::default();
    let base = frame(&o, &InnerSpec::default());
    let real = base.len() - 14;
    let mut frames = Vec::new();
    for t in 0..=real + 16 {
        let mut f = base.clone();
        f[16..18].copy_from_slice(&(t as u16).to_be_bytes());
        fix_ipv4_csum(&mut f[14..]);
        frames.push(f);
    }
    let got = run_group("total-length", &frames);
    assert_eq!(count(&got, "bad_ip_header"), 20 + 16);
    assert_eq!(count(&got, "truncated"), 8);
    assert_eq!(count(&got, "bad_udp_length"), (real - 28) as u64);
    assert_eq!(count(&got, "tx"), 1);
}

#[test]
fn hostile_vxlan_flags_all_256() {
    let mut frames = Vec::new();
    for ov6 in [false, true] {
        for flags in 0..=255u8 {
            let o = OuterSpec {
                v6: ov6,
                flags,
                ..Default::default()
            };
            let mut f = frame(&o, &InnerSpec::default());
            // Reserved bytes set too: ignored.
            let vx = outer_l3(&o) + if ov6 { 40 } else { 20 } + 8;
            f[vx + 1] = flags.rotate_left(3);
            f[vx + 2] = !flags;
            f[vx + 7] = flags;
            frames.push(f);
        }
    }
    let got = run_group("vxlan-flags", &frames);
    assert_eq!(count(&got, "bad_vxlan_flags"), 256);
    assert_eq!(count(&got, "tx"), 256);
}

#[test]
fn hostile_vni_values() {
    let mut frames = Vec::new();
    for vni in [0u32, 1, 100, 0x00ff_fffe, 0x00ff_ffff] {
        for dst4 in [[192, 168, 50, 1], VIP] {
            let i = InnerSpec {
                dst4,
                dport: VIP_PORT,
                ..Default::default()
            };
            frames.push(frame(
                &OuterSpec {
                    vni,
                    ..Default::default()
                },
                &i,
            ));
        }
    }
    let got = run_group("vni", &frames);
    assert_eq!(
        count(&got, "tx"),
        frames.len() as u64,
        "VNI 0 and 2^24-1 are valid: {got:?}"
    );
}

/// IPv4 options on the outer and inner headers (NOP, EOL, record route,
/// timestamp, router alert, and garbage option bytes: options are skipped, not
/// interpreted).
fn option_frames() -> Vec<Vec<u8>> {
    let opts: Vec<Vec<u8>> = vec![
        vec![1, 1, 1, 0],
        vec![0x94, 4, 0, 0],
        vec![7, 7, 4, 0, 0, 0, 0],
        vec![0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0xff; 40],
        vec![0; 40],
        vec![1; 36],
    ];
    let mut out = Vec::new();
    for o in &opts {
        let os = OuterSpec {
            opts: o.clone(),
            ..Default::default()
        };
        out.push(frame(&os, &InnerSpec::default()));
        let is = InnerSpec {
            opts: o.clone(),
            ..Default::default()
        };
        out.push(frame(&OuterSpec::default(), &is));
        let vip = InnerSpec {
            opts: o.clone(),
            dst4: VIP,
            dport: VIP_PORT,
            ..Default::default()
        };
        out.push(frame(&OuterSpec::default(), &vip));
        // Outer options with a stale checksum.
        let mut f = frame(&os, &InnerSpec::default());
        f[14 + 20] ^= 0x40;
        out.push(f);
    }
    out
}

#[test]
fn hostile_ip_options() {
    let frames = option_frames();
    let got = run_group("ip-options", &frames);
    assert_eq!(count(&got, "bad_ip_checksum"), 7);
    assert_eq!(count(&got, "tx"), 21);
}

/// Outer and inner fragments: first, middle, last, overlapping; IPv4 and IPv6.
fn fragment_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // (flags/offset word): first (MF), middle (MF + 8·n), last (8·n), and two
    // overlapping ones (offsets 8 and 16 with 32 bytes each), DF + offset.
    let words: [u16; 7] = [
        0x2000,
        0x2000 | 3,
        6,
        0x2000 | 1,
        0x2000 | 2,
        0x4000 | 1,
        0x1fff,
    ];
    for w in words {
        out.push(frame(
            &OuterSpec {
                flg_off: w,
                ..Default::default()
            },
            &InnerSpec::default(),
        ));
        for dst4 in [[192, 168, 50, 1], VIP] {
            let i = InnerSpec {
                flg_off: w,
                dst4,
                dport: VIP_PORT,
                ..Default::default()
            };
            out.push(frame(&OuterSpec::default(), &i));
        }
    }
    // IPv6 fragment headers: first (offset 0, M), middle, last, overlapping,
    // and one behind a destination-options header.
    let frags = [(0u16, true), (24, true), (48, false), (8, true), (16, true)];
    for (off, more) in frags {
        let o = OuterSpec {
            v6: true,
            ext: vec![frag_ext(off, more)],
            ..Default::default()
        };
        out.push(frame(&o, &InnerSpec::default()));
        let i = InnerSpec {
            v6: true,
            proto: 17,
            ext: vec![frag_ext(off, more)],
            ..Default::default()
        };
        out.push(frame(&OuterSpec::default(), &i));
    }
    let o = OuterSpec {
        v6: true,
        ext: vec![opt_ext(60, 1), frag_ext(0, true)],
        ..Default::default()
    };
    out.push(frame(&o, &InnerSpec::default()));
    let i = InnerSpec {
        v6: true,
        ext: vec![opt_ext(60, 1), frag_ext(64, false)],
        ..Default::default()
    };
    out.push(frame(&OuterSpec::default(), &i));
    out
}

#[test]
fn hostile_fragments() {
    let frames = fragment_frames();
    let got = run_group("fragments", &frames);
    // Every outer fragment is refused (no reassembly); inner fragments are
    // forwarded: those of a service flow to its backend, the later ones
    // after their first (the first fragment comes first here), the others
    // routed.
    assert_eq!(count(&got, "outer_fragment"), 7 + 5 + 1);
    assert_eq!(count(&got, "tx"), 14 + 5 + 1);
}

/// IPv6 extension header chains, outer and inner: each kind, chains of 1..=9
/// headers (more than 8 is refused), chains that run past the packet, AH, a
/// chain ending in "no next header" or TCP.
/// A chain of `n` hop-by-hop / routing / destination-options headers.
fn chain(n: usize) -> Vec<(u8, Vec<u8>)> {
    let kinds = [0u8, 43, 60];
    (0..n).map(|k| opt_ext(kinds[k % 3], 1 + k % 3)).collect()
}

/// Outer and inner IPv6 frames carrying a chain of `n` extension headers.
fn chain_frames(n: usize) -> [Vec<u8>; 2] {
    let o = OuterSpec {
        v6: true,
        ext: chain(n),
        ..Default::default()
    };
    let i = InnerSpec {
        v6: true,
        ext: chain(n),
        ..Default::default()
    };
    [
        frame(&o, &InnerSpec::default()),
        frame(&OuterSpec::default(), &i),
    ]
}

fn ext_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // 1..=7 and 9, 10 headers (exactly 8: `hostile_ipv6_chain_of_eight`).
    for n in (1..=10usize).filter(|n| *n != 8) {
        out.extend(chain_frames(n));
    }
    // AH (length in 4-byte units + 2).
    let ah = (51u8, {
        let mut b = vec![0u8; 16];
        b[1] = 2;
        b
    });
    out.push(frame(
        &OuterSpec {
            v6: true,
            ext: vec![ah.clone()],
            ..Default::default()
        },
        &InnerSpec::default(),
    ));
    out.push(frame(
        &OuterSpec::default(),
        &InnerSpec {
            v6: true,
            ext: vec![ah],
            ..Default::default()
        },
    ));
    // A header whose length runs past the packet: the last header claims 255
    // units.
    for outer in [true, false] {
        let mut e = opt_ext(60, 1);
        e.1[1] = 255;
        if outer {
            out.push(frame(
                &OuterSpec {
                    v6: true,
                    ext: vec![opt_ext(0, 1), e],
                    ..Default::default()
                },
                &InnerSpec::default(),
            ));
        } else {
            out.push(frame(
                &OuterSpec::default(),
                &InnerSpec {
                    v6: true,
                    ext: vec![opt_ext(0, 1), e],
                    ..Default::default()
                },
            ));
        }
    }
    // Ending in no-next-header (59) or TCP instead of UDP on the outer side.
    for proto in [59u8, 6] {
        let o = OuterSpec {
            v6: true,
            ext: vec![opt_ext(0, 1)],
            ..Default::default()
        };
        let mut f = frame(&o, &InnerSpec::default());
        f[14 + 40] = proto;
        out.push(f);
    }
    // Inner chain ending in no-next-header / ICMPv6 (no ports).
    for proto in [59u8, 58] {
        let i = InnerSpec {
            v6: true,
            proto,
            ext: vec![opt_ext(60, 2)],
            ..Default::default()
        };
        out.push(frame(&OuterSpec::default(), &i));
    }
    out
}

#[test]
fn hostile_ipv6_extension_chains() {
    let frames = ext_frames();
    let got = run_group("ipv6-ext", &frames);
    // Chains of 9 and 10 headers: refused outer and inner.
    assert_eq!(count(&got, "bad_ip_header"), 2);
    assert_eq!(count(&got, "inner_bad_header"), 2);
    assert_eq!(count(&got, "truncated"), 1);
    assert_eq!(count(&got, "inner_truncated"), 1);
    assert_eq!(count(&got, "not_udp"), 2);
    assert_eq!(count(&got, "tx"), 7 + 7 + 2 + 2);
}

/// README / `vxlan::decap` docs: "more than 8 [extension headers] →
/// BadIpHeader", so a chain of exactly 8 must pass, outer and inner.
/// Regression: `vxlan::ipv6::walk_extensions` used to return `Malformed` after
/// its 8th header without looking at the next-header value (off by one).
#[test]
fn hostile_ipv6_chain_of_eight() {
    let got = run_group("ipv6-ext-8", &chain_frames(8));
    assert_eq!(count(&got, "tx"), 2, "{got:?}");
}

#[test]
fn hostile_ttl() {
    let mut frames = Vec::new();
    for ttl in [0u8, 1, 2, 255] {
        for v6 in [false, true] {
            for dst4 in [[192, 168, 50, 1], VIP] {
                let i = InnerSpec {
                    v6,
                    ttl,
                    dst4,
                    dport: VIP_PORT,
                    ..Default::default()
                };
                frames.push(frame(&OuterSpec::default(), &i));
            }
        }
    }
    let got = run_group("ttl", &frames);
    // Routed TTL/hop limit 0 and 1: expired (v4 + v6 + the v6 "VIP" twin,
    // which is not a service); to the service VIP: encapsulated regardless.
    assert_eq!(count(&got, "ttl_expired"), 2 * 3);
    assert_eq!(count(&got, "tx"), 16 - 6);
}

/// A Geneve header: version/options length byte `b0`, flags, protocol, VNI
/// 100, then `opts`.
fn geneve_hdr(b0: u8, flags: u8, proto: u16, opts: &[u8]) -> Vec<u8> {
    let mut g = vec![b0, flags];
    g.extend_from_slice(&proto.to_be_bytes());
    g.extend_from_slice(&(100u32 << 8).to_be_bytes());
    g.extend_from_slice(opts);
    g
}

fn geneve_outer(v6: bool, g: Vec<u8>) -> OuterSpec {
    OuterSpec {
        v6,
        dport: GENEVE_PORT,
        geneve: Some(g),
        ..Default::default()
    }
}

/// Geneve's first two bytes at every value (version, options length, O, C,
/// reserved), over 40 bytes of non-critical 1-word options (so the announced
/// length decides how much of them is skipped and what is left for the
/// inner frame), over IPv4 and IPv6 outers.
#[test]
fn hostile_geneve_header_bytes() {
    let opts: Vec<u8> = [0x01u8, 0x02, 0x01, 0x00].repeat(10);
    let inner = inner_frame(&InnerSpec::default());
    let mut frames = Vec::new();
    for ov6 in [false, true] {
        for b0 in 0..=255u8 {
            for flags in [0x00u8, 0x40, 0x80, 0x3f] {
                let g = geneve_hdr(
                    b0,
                    flags,
                    0x6558,
                    &opts[..(usize::from(b0 & 0x3f) * 4).min(40)],
                );
                frames.push(vxlan_frame(&geneve_outer(ov6, g), &inner));
            }
        }
    }
    let got = run_group("geneve-bytes", &frames);
    // Hand count, per outer family, of the frames whose announced options
    // fit in the 40 bytes given (b0 & 0x3f ≤ 10, 11 values, version 0):
    // flags 0 and reserved → forwarded (22), O → control (11), C → critical
    // with options (10) and forwarded without (1). Versions 1..3 (3 × 64 b0
    // values × 4 flags) → bad header. Longer announced options eat the inner
    // frame (bad header when past the payload, else what the bytes say).
    assert!(
        count(&got, "bad_geneve_header") >= 2 * 3 * 64 * 4,
        "{got:?}"
    );
    assert!(count(&got, "geneve_control") >= 2 * 11, "{got:?}");
    assert!(count(&got, "geneve_critical") >= 2 * 10, "{got:?}");
    assert_eq!(count(&got, "tx"), 2 * 23, "{got:?}");
}

/// Every prefix of Geneve frames (with 12 bytes of options; to a routed
/// destination and to the VIP), and every prefix of the inner frame
/// re-wrapped; a Geneve packet to the VIP is encapsulated to the backend.
#[test]
fn hostile_geneve_truncated_and_to_vip() {
    let opts = [
        0x01u8, 0x02, 0x03, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, 0x01, 0x02, 0x04, 0x00,
    ];
    let mut frames = Vec::new();
    let mut whole = 0u64;
    for ov6 in [false, true] {
        for dst4 in [[192, 168, 50, 1], VIP] {
            let o = geneve_outer(ov6, geneve_hdr(3, 0, 0x6558, &opts));
            let i = InnerSpec {
                dst4,
                dport: VIP_PORT,
                ..Default::default()
            };
            let inner = inner_frame(&i);
            let f = vxlan_frame(&o, &inner);
            for n in 0..=f.len() {
                frames.push(f[..n].to_vec());
            }
            for n in 0..=inner.len() {
                frames.push(vxlan_frame(&o, &inner[..n]));
            }
            whole += 2;
        }
    }
    let got = run_group("geneve-truncated", &frames);
    // Only the whole frames pass (once as a prefix, once re-wrapped).
    assert_eq!(count(&got, "tx"), whole, "{got:?}");
}

/// Inner IPv4 headers with a wrong checksum (RFC 1812 §5.2.2): every 16-bit
/// word of the header, options included, off by one bit, routed and to the
/// service VIP, plus the intact frames; over IPv4 and IPv6 outers.
#[test]
fn hostile_inner_bad_checksum() {
    let mut frames = Vec::new();
    let (mut bad, mut corrupted) = (0u64, 0u64);
    for outer_v6 in [false, true] {
        let o = OuterSpec {
            v6: outer_v6,
            ..Default::default()
        };
        for dst4 in [[192, 168, 50, 1], VIP] {
            for opts in [Vec::new(), vec![1, 1, 1, 0]] {
                let i = InnerSpec {
                    dst4,
                    dport: VIP_PORT,
                    opts: opts.clone(),
                    ..Default::default()
                };
                let good = inner_frame(&i);
                frames.push(vxlan_frame(&o, &good));
                let hl = 20 + opts.len();
                for word in 0..hl / 2 {
                    // Bit 0 of the word's low byte (TOS, length, id, offset,
                    // TTL, checksum, addresses, options).
                    let mut f = good.clone();
                    f[14 + 2 * word + 1] ^= 1;
                    if word != 1 {
                        bad += 1;
                    }
                    corrupted += 1;
                    frames.push(vxlan_frame(&o, &f));
                }
            }
        }
    }
    let got = run_group("inner_csum", &frames);
    // Hand count: every corruption but the total length's is a checksum
    // error; a total length one byte longer than the frame is a bad header,
    // one shorter parses and fails the checksum.
    let csum = count(&got, "inner_bad_checksum");
    assert!(csum >= bad, "{got:?}");
    assert_eq!(csum + count(&got, "inner_bad_header"), corrupted, "{got:?}");
    // The 8 intact frames go out (4 routed, 4 to the VIP).
    assert_eq!(count(&got, "tx"), 8, "{got:?}");
}

/// Broadcast / multicast source MACs and addresses, outer and inner; outer
/// destinations that are broadcast or multicast (not our VTEP).
fn bcast_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for mac in [
        [0xff; 6],
        [0x01, 0x00, 0x5e, 0, 0, 1],
        [0x33, 0x33, 0, 0, 0, 1],
        [0; 6],
    ] {
        out.push(frame(
            &OuterSpec {
                src_mac: mac,
                ..Default::default()
            },
            &InnerSpec::default(),
        ));
        out.push(frame(
            &OuterSpec::default(),
            &InnerSpec {
                src_mac: mac,
                ..Default::default()
            },
        ));
    }
    for src in [
        [255, 255, 255, 255],
        [224, 0, 0, 1],
        [0, 0, 0, 0],
        [127, 0, 0, 1],
    ] {
        out.push(frame(
            &OuterSpec {
                src4: src,
                ..Default::default()
            },
            &InnerSpec::default(),
        ));
        out.push(frame(
            &OuterSpec::default(),
            &InnerSpec {
                src4: src,
                ..Default::default()
            },
        ));
        out.push(frame(
            &OuterSpec::default(),
            &InnerSpec {
                src4: src,
                dst4: VIP,
                dport: VIP_PORT,
                ..Default::default()
            },
        ));
    }
    let mut ff02 = [0u8; 16];
    ff02[0] = 0xff;
    ff02[1] = 2;
    ff02[15] = 1;
    out.push(frame(
        &OuterSpec {
            v6: true,
            src6: ff02,
            ..Default::default()
        },
        &InnerSpec::default(),
    ));
    out.push(frame(
        &OuterSpec::default(),
        &InnerSpec {
            v6: true,
            src6: ff02,
            ..Default::default()
        },
    ));
    for dst in [[255, 255, 255, 255], [224, 0, 0, 1], [10, 0, 0, 255]] {
        out.push(frame(
            &OuterSpec {
                dst4: dst,
                ..Default::default()
            },
            &InnerSpec::default(),
        ));
    }
    out.push(frame(
        &OuterSpec {
            v6: true,
            dst6: ff02,
            ..Default::default()
        },
        &InnerSpec::default(),
    ));
    out
}

#[test]
fn hostile_broadcast_multicast() {
    let frames = bcast_frames();
    let got = run_group("bcast", &frames);
    // Sources are not policed (see docs/hardening.md); multicast/broadcast
    // destinations are not our VTEP.
    assert_eq!(count(&got, "wrong_vtep"), 4);
    assert_eq!(count(&got, "tx"), frames.len() as u64 - 4);
}

#[test]
fn hostile_runts_and_odd_ethernet() {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for n in 0..14 {
        frames.push(vec![0xab; n]);
    }
    let base = frame(&OuterSpec::default(), &InnerSpec::default());
    // Every ethertype class: ARP, LLDP, IPv4-as-length (802.3), tags.
    for et in [
        0x0806u16, 0x88cc, 0x0040, 0x05dc, 0x8100, 0x88a8, 0x9100, 0x86dd, 0x0800,
    ] {
        let mut f = base[..60.min(base.len())].to_vec();
        f[12..14].copy_from_slice(&et.to_be_bytes());
        frames.push(f);
    }
    // One, two and three VLAN tags (only two are walked: the third leaves a
    // tag ethertype, which is not IP).
    for n in 1..=3 {
        frames.push(frame(
            &OuterSpec {
                vlans: vec![5; n],
                ..Default::default()
            },
            &InnerSpec::default(),
        ));
    }
    // A tag cut in half.
    let mut f = base[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00]);
    frames.push(f);
    let got = run_group("runts", &frames);
    assert!(count(&got, "truncated") >= 14);
    assert_eq!(count(&got, "tx"), 2);
}

/// Routed frames of 9000 B (jumbo) and 65535 B (the largest capture record),
/// every outer/inner family pair, inner UDP.
fn routed_jumbos() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (ov6, iv6) in [(false, false), (true, true), (false, true)] {
        for target in [9000usize, 65535] {
            let o = OuterSpec {
                v6: ov6,
                ..Default::default()
            };
            let hdr = frame(
                &o,
                &InnerSpec {
                    v6: iv6,
                    payload: 0,
                    proto: 17,
                    ..Default::default()
                },
            )
            .len();
            let i = InnerSpec {
                v6: iv6,
                payload: target - hdr,
                proto: 17,
                ..Default::default()
            };
            let f = frame(&o, &i);
            assert_eq!(f.len(), target);
            frames.push(f);
        }
    }
    frames
}

#[test]
fn hostile_jumbo() {
    // A 9000-byte frame to the service cannot be encapsulated within the
    // 1500-byte MTU; inner packets of exactly 1500 B (routed) and 1480 B
    // (IPIP adds 20) still pass, 1481 B to the service does not. Too big
    // with DF set: an ICMP "fragmentation needed" goes back to the client;
    // without DF: dropped.
    let mut frames = Vec::new();
    let o = OuterSpec::default();
    let vip = |payload, flg_off| InnerSpec {
        payload,
        dst4: VIP,
        dport: VIP_PORT,
        flg_off,
        ..Default::default()
    };
    let hdr = frame(&o, &vip(0, 0x4000)).len();
    let inner_hdr = 14 + 20 + 20;
    for df in [0x4000u16, 0] {
        frames.push(frame(&o, &vip(9000 - hdr, df)));
        frames.push(frame(&o, &vip(1480 + 14 - inner_hdr, df)));
        frames.push(frame(&o, &vip(1481 + 14 - inner_hdr, df)));
    }
    frames.push(frame(
        &o,
        &InnerSpec {
            payload: 1500 + 14 - inner_hdr,
            ..Default::default()
        },
    ));
    let o6 = OuterSpec {
        v6: true,
        ..Default::default()
    };
    frames.push(frame(&o6, &vip(1481 + 14 - inner_hdr, 0x4000)));
    let got = run_group("jumbo", &frames);
    assert_eq!(count(&got, "mtu_exceeded"), 2, "{got:?}");
    // Two ICMP replies (9000 and 1481 with DF) + one over the IPv6 underlay,
    // two 1480-byte packets encapsulated, one routed.
    assert_eq!(count(&got, "tx"), 6, "{got:?}");
}

/// A routed inner packet larger than `gateway.mtu` (the transmit link's MTU,
/// README) must not be sent onto the link as it is: dropped (`mtu_exceeded`)
/// or answered (ICMP, as the service path does), but no transmitted IP packet
/// may exceed the MTU. Regression: the route stage used to forward 9000- and
/// 65535-byte frames onto the 1500-byte link (only the encapsulation path
/// checked the MTU).
#[test]
fn hostile_jumbo_routed_respects_mtu() {
    let frames = routed_jumbos();
    let o = replay("jumbo-routed", &frames, 1);
    let tx = o.json["tx"].as_u64().unwrap();
    let drops = drops_of(&o.json);
    assert_eq!(tx + drops.values().sum::<u64>(), frames.len() as u64);
    for (i, g) in o.out.iter().enumerate() {
        let (_, l3) = walk_eth(g).expect("Ethernet");
        assert!(
            g.len() - l3 <= MTU,
            "transmitted frame {i}: a {}-byte IP packet on a {MTU}-byte link (drops {drops:?})",
            g.len() - l3
        );
    }
}

/// Frames for the gateway itself and near misses: ARP requests/replies for
/// our VTEP and for another address, tagged ARP, ICMP echo request / reply,
/// fragmented echo, ICMPv6 echo, neighbour solicitation for us and for
/// another target, neighbour advertisements to a multicast group and to
/// someone else.
fn gateway_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let arp = |op: u16, target: [u8; 4], tagged: bool| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0xc1, 0, 0, 0, 1]);
        if tagged {
            f.extend_from_slice(&[0x81, 0, 0, 5]);
        }
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&[2, 0xc1, 0, 0, 0, 1, 172, 16, 0, 9, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&target);
        f
    };
    for op in [1u16, 2, 3] {
        out.push(arp(op, VTEP4, false));
    }
    out.push(arp(1, [10, 0, 0, 2], false));
    out.push(arp(1, VTEP4, true));
    for (ty, dst, flg) in [
        (8u8, VTEP4, 0u16),
        (0, VTEP4, 0),
        (8, [10, 0, 0, 2], 0),
        (8, VTEP4, 0x2000),
    ] {
        let icmp = [ty, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4];
        let mut f = eth(LOCAL_MAC, [2, 0xc1, 0, 0, 0, 1], 0x0800);
        f.extend(ipv4([172, 16, 0, 9], dst, 1, 64, flg, &[], icmp.len()));
        f.extend_from_slice(&icmp);
        out.push(f);
    }
    let mut ff02 = [0u8; 16];
    ff02[0] = 0xff;
    ff02[1] = 2;
    ff02[15] = 1;
    let other = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    for (ty, dst, target) in [
        (128u8, VTEP6, VTEP6),
        (129, VTEP6, VTEP6),
        (135, ff02, VTEP6),
        (135, ff02, other),
        (136, ff02, other),
        (136, other, other),
        (136, VTEP6, other),
    ] {
        let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target);
        let mut f = eth(LOCAL_MAC, [2, 0xc1, 0, 0, 0, 1], 0x86dd);
        f.extend(ipv6(
            [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            dst,
            58,
            255,
            icmp.len(),
        ));
        f.extend_from_slice(&icmp);
        out.push(f);
    }
    out
}

#[test]
fn hostile_for_the_gateway() {
    let frames = gateway_frames();
    let got = run_group("gateway", &frames);
    // ARP request and reply for 10.0.0.1, echo request to it (not the
    // fragment), ICMPv6 echo to fd00::1, NS for fd00::1, NA to ff02::1 and
    // to fd00::1.
    assert_eq!(count(&got, "punted"), 2 + 1 + 1 + 1 + 2, "{got:?}");
    assert_eq!(count(&got, "not_ip"), 3, "{got:?}");
    assert_eq!(count(&got, "outer_fragment"), 1, "{got:?}");
}

/// Deterministic pseudo-random bytes (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random bytes, random bytes behind valid outer headers, and valid frames
/// with a few random bytes flipped.
fn random_frames(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut r = Rng(seed);
    let bases: Vec<Vec<u8>> = base_frames().iter().map(|(_, o, i)| frame(o, i)).collect();
    let mut out = Vec::new();
    for k in 0..n {
        let f = match k % 3 {
            0 => {
                let len = r.below(1600) as usize;
                (0..len).map(|_| r.next() as u8).collect()
            }
            1 => {
                let b = &bases[r.below(bases.len() as u64) as usize];
                let keep = r.below(b.len() as u64) as usize;
                let mut f = b[..keep].to_vec();
                let extra = r.below(200) as usize;
                f.extend((0..extra).map(|_| r.next() as u8));
                f
            }
            _ => {
                let mut f = bases[r.below(bases.len() as u64) as usize].clone();
                for _ in 0..=r.below(4) {
                    let at = r.below(f.len() as u64) as usize;
                    f[at] ^= 1 << r.below(8);
                }
                f
            }
        };
        out.push(f);
    }
    out
}

#[test]
fn hostile_random_bytes() {
    let frames = random_frames(0x5eed, 3000);
    let got = run_group("random", &frames);
    eprintln!("random: {} frames: {got:?}", frames.len());
    assert!(
        got.len() >= 5,
        "random frames should hit many reasons: {got:?}"
    );
}

/// Everything at once, spread over two workers (software RSS, several
/// queues): the same counts, and the routed output as a multiset.
#[test]
fn hostile_everything_two_workers() {
    let mut frames = truncations();
    frames.extend(length_lies());
    frames.extend(option_frames());
    frames.extend(fragment_frames());
    frames.extend(ext_frames());
    frames.extend(bcast_frames());
    frames.extend(gateway_frames());
    frames.extend(random_frames(0xfeed, 2000));
    let n = frames.len();
    let got = run_group_workers("everything", &frames, 2);
    eprintln!("everything (2 workers): {n} frames: {got:?}");
}
