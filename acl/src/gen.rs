//! A seedable trace generator: random points inside randomly chosen rules.

use crate::parse::TraceEntry;
use crate::rule::{Family, Key, Prefix, Rule};

/// SplitMix64: small, seedable, good enough for test traffic.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi.wrapping_sub(lo).wrapping_add(1);
        if span == 0 {
            self.next_u64()
        } else {
            lo + self.next_u64() % span
        }
    }
}

fn point(rng: &mut SplitMix64, p: &Prefix, v6: bool) -> u128 {
    let (lo, hi) = match p {
        Prefix::Any if v6 => (0, u128::MAX),
        Prefix::Any => (0, u128::from(u32::MAX)),
        _ => p.range(),
    };
    let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    lo | (r & (hi ^ lo))
}

/// `n` keys, each a uniformly random point inside a rule chosen uniformly
/// from `rules` (`filter` = that rule's index in `rules`). Family-agnostic
/// rules give IPv4 or IPv6 keys at random; rules without a VNI give VNI 0.
/// The same seed gives the same trace. Empty `rules` give an empty trace.
pub fn generate_trace(rules: &[Rule], n: usize, seed: u64) -> Vec<TraceEntry> {
    let mut rng = SplitMix64::new(seed);
    if rules.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            let i = rng.range(0, rules.len() as u64 - 1) as usize;
            let r = &rules[i];
            let v6 = match r.family() {
                Family::V4 => false,
                Family::V6 => true,
                Family::Any => rng.next_u64() & 1 == 1,
            };
            let key = Key {
                vni: r.vni.unwrap_or(0),
                src: point(&mut rng, &r.src, v6),
                dst: point(&mut rng, &r.dst, v6),
                sport: rng.range(r.src_ports.lo.into(), r.src_ports.hi.into()) as u16,
                dport: rng.range(r.dst_ports.lo.into(), r.dst_ports.hi.into()) as u16,
                proto: r.proto.value | (rng.next_u64() as u8 & !r.proto.mask),
                v6,
            };
            TraceEntry {
                key,
                filter: i as u32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_prefix;
    use crate::rule::{PortRange, ProtoMatch};

    #[test]
    fn test_points_inside() {
        let rules = vec![
            Rule {
                src: parse_prefix("10.0.0.0/8").unwrap(),
                dst_ports: PortRange::new(100, 200).unwrap(),
                proto: ProtoMatch::new(6, 0xfe),
                ..Rule::default()
            },
            Rule {
                vni: Some(9),
                dst: parse_prefix("2001:db8::/32").unwrap(),
                ..Rule::default()
            },
            Rule::default(),
        ];
        let t = generate_trace(&rules, 500, 1);
        assert_eq!(t, generate_trace(&rules, 500, 1));
        assert_ne!(t, generate_trace(&rules, 500, 2));
        for e in &t {
            assert!(rules[e.filter as usize].matches(&e.key), "{e:?}");
            if !e.key.v6 {
                assert!(e.key.src <= u128::from(u32::MAX));
            }
        }
        assert!(t.iter().any(|e| e.filter == 2 && e.key.v6));
        assert!(t.iter().any(|e| e.filter == 2 && !e.key.v6));
    }
}
