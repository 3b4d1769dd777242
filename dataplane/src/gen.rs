//! The traffic generator behind `dpgw gen`: VXLAN captures for tests and
//! benchmarks, deterministic for a given seed.
//!
//! Frames are built with `etherparse` (off the fast path, and a second
//! implementation beside `vxlan`'s emitters, which the pipeline then parses):
//! the inner frame with its `PacketBuilder`, the outer headers with its header
//! types, because RFC 7348 wants a zero UDP checksum over IPv4, which the
//! builder always computes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    TcpHeader, UdpHeader,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::pcapfile::PcapWriter;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Popularity {
    Uniform,
    /// Zipf with exponent `s` (rank r is chosen with probability ∝ 1/r^s).
    Zipf(f64),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenSpec {
    pub packets: usize,
    pub flows: usize,
    /// VNIs used: `vni_base .. vni_base + vnis`.
    pub vnis: u32,
    pub vni_base: u32,
    /// Inner Ethernet frame length (14 + IP + L4 + payload), at least the headers.
    pub frame_size: usize,
    pub inner_v6: bool,
    pub outer_v6: bool,
    /// Percentage of flows that are TCP (the rest UDP).
    pub tcp_pct: u8,
    pub popularity: Popularity,
    pub seed: u64,
    /// Outer destination (our VTEP).
    pub vtep: IpAddr,
    /// Inner destinations, chosen per flow round-robin.
    pub dsts: Vec<IpAddr>,
    /// Inner destination ports, chosen per flow round-robin.
    pub dports: Vec<u16>,
    pub vxlan_port: u16,
    pub inner_ttl: u8,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            packets: 1000,
            flows: 100,
            vnis: 1,
            vni_base: 100,
            frame_size: 64,
            inner_v6: false,
            outer_v6: false,
            tcp_pct: 50,
            popularity: Popularity::Uniform,
            seed: 1,
            vtep: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dsts: Vec::new(),
            dports: vec![80],
            vxlan_port: 4789,
            inner_ttl: 64,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    vni: u32,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    outer_src: IpAddr,
}

fn flows(spec: &GenSpec, rng: &mut SmallRng) -> Vec<Flow> {
    let n = spec.flows.max(1);
    (0..n)
        .map(|i| {
            let src = if spec.inner_v6 {
                IpAddr::V6(Ipv6Addr::from(
                    0xfd00_0000_0000_0000_0000_0000_0000_0000u128 | (i as u128 + 1),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    0x0a00_0000u32 | (i as u32 + 1) & 0x00ff_ffff,
                ))
            };
            let dst = if spec.dsts.is_empty() {
                if spec.inner_v6 {
                    IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 1))
                } else {
                    IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))
                }
            } else {
                spec.dsts[i % spec.dsts.len()]
            };
            let dport = spec
                .dports
                .get(i % spec.dports.len().max(1))
                .copied()
                .unwrap_or(80);
            let proto = if rng.gen_range(0..100u8) < spec.tcp_pct {
                IpNumber::TCP.0
            } else {
                IpNumber::UDP.0
            };
            let host = (i % 250) as u8 + 1;
            let outer_src = if spec.outer_v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, host as u16))
            } else {
                IpAddr::V4(Ipv4Addr::new(172, 16, 0, host))
            };
            Flow {
                vni: spec.vni_base + (i as u32 % spec.vnis.max(1)),
                src,
                dst,
                proto,
                sport: rng.gen_range(1024..=65535),
                dport,
                outer_src,
            }
        })
        .collect()
}

/// Zipf sampler over ranks 0..n by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += 1.0 / (r as f64).powf(s);
            cdf.push(acc);
        }
        for c in cdf.iter_mut() {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// MACs of the generated traffic: the sending VTEP, the gateway, and the
/// client and service inside the overlay.
const CLIENT_VTEP_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const INNER_SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const INNER_DST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;
/// Header lengths the inner frame size is made of.
const ETH_LEN: usize = Ethernet2Header::LEN;
const TCP_LEN: usize = TcpHeader::MIN_LEN;
const UDP_LEN: usize = UdpHeader::LEN;
/// TCP segments: sequence and acknowledgement numbers, window.
const TCP_SEQ: u32 = 1;
const TCP_WINDOW: u16 = 65535;

/// Writes the capture `spec` describes.
pub fn generate(spec: &GenSpec) -> Result<PcapWriter, String> {
    let min = if spec.inner_v6 {
        ETH_LEN + Ipv6Header::LEN + TCP_LEN
    } else {
        ETH_LEN + Ipv4Header::MIN_LEN + TCP_LEN
    };
    if spec.frame_size < min {
        return Err(format!(
            "frame size {} is below the {min} bytes of inner headers (TCP worst case)",
            spec.frame_size
        ));
    }
    if spec.frame_size > 9000 {
        return Err(format!("frame size {} is above 9000", spec.frame_size));
    }
    if spec.outer_v6 != spec.vtep.is_ipv6() {
        return Err("the VTEP address family must match --outer".into());
    }
    if spec.dsts.iter().any(|d| d.is_ipv6() != spec.inner_v6) {
        return Err("inner destination addresses must match --inner".into());
    }
    let last_vni = u64::from(spec.vni_base) + u64::from(spec.vnis.max(1)) - 1;
    if last_vni > u64::from(vxlan::vxlan::MAX_VNI) {
        return Err(format!("VNI {last_vni} does not fit in VXLAN's 24 bits"));
    }
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let fl = flows(spec, &mut rng);
    let zipf = match spec.popularity {
        Popularity::Zipf(s) => Some(Zipf::new(fl.len(), s)),
        Popularity::Uniform => None,
    };
    let pattern: Vec<u8> = (0..spec.frame_size).map(|i| i as u8).collect();
    let mut w = PcapWriter::new();
    // The UDP payload (VXLAN header and inner frame), then the whole frame.
    let mut udp_payload = Vec::with_capacity(vxlan::vxlan::HEADER_LEN + spec.frame_size);
    let mut frame = Vec::with_capacity(spec.frame_size + 80);
    for n in 0..spec.packets {
        let f = match &zipf {
            Some(z) => fl[z.sample(&mut rng)],
            None => fl[rng.gen_range(0..fl.len())],
        };
        udp_payload.clear();
        udp_payload.resize(vxlan::vxlan::HEADER_LEN, 0);
        vxlan::vxlan::VxlanRepr { vni: f.vni }
            .emit(&mut udp_payload)
            .map_err(|e| format!("VXLAN header for VNI {}: {e}", f.vni))?;
        write_inner(&f, spec.inner_ttl, &pattern, &mut udp_payload)?;
        let key = vxlan::FlowKey {
            vni: f.vni,
            src: ip_u128(f.src),
            dst: ip_u128(f.dst),
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
            v6: f.src.is_ipv6(),
        };
        frame.clear();
        write_outer(
            f.outer_src,
            spec.vtep,
            vxlan::flow_src_port(&key),
            spec.vxlan_port,
            &udp_payload,
            &mut frame,
        )?;
        frame.extend_from_slice(&udp_payload);
        w.write(1_700_000_000_000_000_000 + n as u64 * 1000, &frame);
    }
    Ok(w)
}

/// Appends flow `f`'s inner frame to `out`: Ethernet, IPv4 (DF,
/// identification 0) or IPv6, TCP (PSH|ACK) or UDP with valid checksums, and
/// as payload the start of `pattern` (0, 1, 2, …), so that the frame is
/// `pattern.len()` bytes long.
fn write_inner(f: &Flow, ttl: u8, pattern: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let eth = PacketBuilder::ethernet2(INNER_SRC_MAC, INNER_DST_MAC);
    let (ip, ip_len) = match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            (eth.ipv4(s.octets(), d.octets(), ttl), Ipv4Header::MIN_LEN)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), ttl), Ipv6Header::LEN),
        _ => return Err("inner source and destination families differ".into()),
    };
    let l4_len = if f.proto == IpNumber::TCP.0 {
        TCP_LEN
    } else {
        UDP_LEN
    };
    let payload_len = pattern
        .len()
        .checked_sub(ETH_LEN + ip_len + l4_len)
        .ok_or("frame size below the inner headers")?;
    let payload = &pattern[..payload_len];
    let r = if f.proto == IpNumber::TCP.0 {
        let mut tcp = TcpHeader::new(f.sport, f.dport, TCP_SEQ, TCP_WINDOW);
        tcp.acknowledgment_number = TCP_SEQ;
        tcp.ack = true;
        tcp.psh = true;
        ip.tcp_header(tcp).write(out, payload)
    } else {
        ip.udp(f.sport, f.dport).write(out, payload)
    };
    r.map_err(|e| format!("building the inner frame: {e}"))
}

/// Appends the outer Ethernet, IP and UDP headers of a VXLAN packet from
/// `src` to `vtep` carrying `udp_payload` (the VXLAN header and the inner
/// frame) to `out`: over IPv4 with DF set, identification 0 and UDP checksum
/// 0 (RFC 7348), over IPv6 with the UDP checksum computed (RFC 8200).
fn write_outer(
    src: IpAddr,
    vtep: IpAddr,
    sport: u16,
    dport: u16,
    udp_payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let udp_len = UDP_LEN + udp_payload.len();
    let too_long = |_| format!("a {udp_len}-byte UDP datagram does not fit in an IP packet");
    let len16 = u16::try_from(udp_len).map_err(too_long)?;
    let io = |e: std::io::Error| e.to_string();
    match (src, vtep) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Header::new(len16, OUTER_TTL, IpNumber::UDP, s.octets(), d.octets())
                .map_err(|e| e.to_string())?;
            let udp = UdpHeader {
                source_port: sport,
                destination_port: dport,
                length: len16,
                checksum: 0,
            };
            eth_header(EtherType::IPV4).write(out).map_err(io)?;
            ip.write(out).map_err(io)?;
            udp.write(out).map_err(io)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: len16,
                next_header: IpNumber::UDP,
                hop_limit: OUTER_TTL,
                source: s.octets(),
                destination: d.octets(),
            };
            let udp = UdpHeader::with_ipv6_checksum(sport, dport, &ip, udp_payload)
                .map_err(|e| e.to_string())?;
            eth_header(EtherType::IPV6).write(out).map_err(io)?;
            ip.write(out).map_err(io)?;
            udp.write(out).map_err(io)
        }
        _ => Err("outer source and VTEP families differ".into()),
    }
}

fn eth_header(ether_type: EtherType) -> Ethernet2Header {
    Ethernet2Header {
        source: CLIENT_VTEP_MAC,
        destination: GATEWAY_MAC,
        ether_type,
    }
}

pub fn ip_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_deterministic_and_sized() {
        let spec = GenSpec {
            packets: 50,
            flows: 10,
            ..Default::default()
        };
        let a = generate(&spec).unwrap().buf;
        let b = generate(&spec).unwrap().buf;
        assert_eq!(a, b);
        let cap = crate::pcapfile::parse(a, std::path::Path::new("g")).unwrap();
        assert_eq!(cap.records.len(), 50);
        let cfg = vxlan::DecapConfig {
            vtep_v4: vec![0x0a00_0001],
            vtep_v6: vec![],
            ports: vec![4789],
            geneve_ports: vec![],
        };
        for (_, f) in cap.iter() {
            let d = vxlan::decap(f, &cfg).unwrap();
            assert_eq!(d.inner_len, 64);
            assert_eq!(d.vni, 100);
        }
    }

    #[test]
    fn test_zipf_skewed() {
        let z = Zipf::new(1000, 1.1);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut top = 0;
        for _ in 0..10000 {
            if z.sample(&mut rng) < 10 {
                top += 1;
            }
        }
        assert!(top > 3000, "top-10 share {top}/10000");
    }

    #[test]
    fn test_rejects_vnis_beyond_24_bits() {
        let spec = GenSpec {
            vni_base: vxlan::vxlan::MAX_VNI,
            vnis: 2,
            ..Default::default()
        };
        let e = generate(&spec).err().unwrap();
        assert!(e.contains("16777216"), "{e}");
        let spec = GenSpec {
            vni_base: vxlan::vxlan::MAX_VNI,
            packets: 3,
            ..Default::default()
        };
        assert!(generate(&spec).is_ok());
    }

    #[test]
    fn test_rejects_small_frames() {
        let spec = GenSpec {
            frame_size: 40,
            ..Default::default()
        };
        assert!(generate(&spec).is_err());
    }
}
