//! The traffic generator behind `dpgw gen`: VXLAN captures for tests and
//! benchmarks, deterministic for a given seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
                6
            } else {
                17
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

/// Writes the capture `spec` describes.
pub fn generate(spec: &GenSpec) -> Result<PcapWriter, String> {
    let min = if spec.inner_v6 {
        14 + 40 + 20
    } else {
        14 + 20 + 20
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
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let fl = flows(spec, &mut rng);
    let zipf = match spec.popularity {
        Popularity::Zipf(s) => Some(Zipf::new(fl.len(), s)),
        Popularity::Uniform => None,
    };
    let mut w = PcapWriter::new();
    let mut inner = Vec::with_capacity(spec.frame_size);
    let mut frame = Vec::with_capacity(spec.frame_size + 80);
    let client_mac = [0x02, 0xc1, 0, 0, 0, 1];
    let gw_mac = [0x02, 0, 0, 0, 0, 0x01];
    for n in 0..spec.packets {
        let f = match &zipf {
            Some(z) => fl[z.sample(&mut rng)],
            None => fl[rng.gen_range(0..fl.len())],
        };
        inner.clear();
        vxlan::build_inner_frame(
            &vxlan::InnerSpec {
                src_mac: [0x02, 0xaa, 0, 0, 0, 1],
                dst_mac: [0x02, 0xbb, 0, 0, 0, 1],
                src: f.src,
                dst: f.dst,
                proto: f.proto,
                sport: f.sport,
                dport: f.dport,
                ttl: spec.inner_ttl,
                frame_len: spec.frame_size,
            },
            &mut inner,
        );
        let outer = vxlan::Outer {
            src_mac: client_mac,
            dst_mac: gw_mac,
            vlan: None,
            src_ip: f.outer_src,
            dst_ip: spec.vtep,
            ttl: 64,
        };
        let key = vxlan::FlowKey {
            vni: f.vni,
            src: ip_u128(f.src),
            dst: ip_u128(f.dst),
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
            v6: f.src.is_ipv6(),
        };
        let hl = vxlan::vxlan_header_len(&outer);
        frame.clear();
        frame.resize(hl, 0);
        vxlan::emit_vxlan(
            &outer,
            vxlan::flow_src_port(&key),
            spec.vxlan_port,
            f.vni,
            &inner,
            &mut frame[..hl],
        );
        frame.extend_from_slice(&inner);
        w.write(1_700_000_000_000_000_000 + n as u64 * 1000, &frame);
    }
    Ok(w)
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
    fn test_rejects_small_frames() {
        let spec = GenSpec {
            frame_size: 40,
            ..Default::default()
        };
        assert!(generate(&spec).is_err());
    }
}
