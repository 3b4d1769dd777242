//! Property: the compiled classifier agrees with the linear reference on
//! random rule sets (IPv4, IPv6, family-agnostic and VNI-scoped rules,
//! overlapping ranges, wildcards, masked protocols, explicit priorities) and
//! on random keys, most of them points inside random rules.

use std::net::{Ipv4Addr, Ipv6Addr};

use acl::{
    generate_trace, Action, BuildParams, Classifier, Key, LinearClassifier, PortRange, Prefix,
    ProtoMatch, Rule, RuleSet, Walk, NO_MATCH,
};
use proptest::prelude::*;

// Small pools make rules overlap and share boundaries.
const V4_BASES: [u32; 4] = [0x0a00_0000, 0x0a01_0200, 0xc0a8_0101, 0xffff_fff0];
const V6_BASES: [u128; 3] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0001_0000_0000_0000_0000_0001,
    0xfe80_0000_0000_0000_0000_0000_0000_0000,
];
const PORTS: [u16; 6] = [0, 53, 80, 443, 1024, 65535];

fn prefix(family: u8, base: usize, len: u8, wild: bool) -> Prefix {
    if wild {
        return Prefix::Any;
    }
    match family {
        0 => Prefix::v4(Ipv4Addr::from(V4_BASES[base % 4]), len % 33).unwrap(),
        _ => Prefix::v6(Ipv6Addr::from(V6_BASES[base % 3]), len).unwrap(),
    }
}

fn ports(a: usize, b: usize, wild: bool) -> PortRange {
    if wild {
        return PortRange::ANY;
    }
    let (x, y) = (PORTS[a % 6], PORTS[b % 6]);
    PortRange::new(x.min(y), x.max(y)).unwrap()
}

prop_compose! {
    fn arb_rule()(
        family in 0u8..3,
        sb in 0usize..4, sl in 0u8..=128, sw in prop::bool::weighted(0.3),
        db in 0usize..4, dl in 0u8..=128, dw in prop::bool::weighted(0.3),
        pa in 0usize..6, pb in 0usize..6, pw in prop::bool::weighted(0.4),
        qa in 0usize..6, qb in 0usize..6, qw in prop::bool::weighted(0.3),
        proto in prop_oneof![
            Just(ProtoMatch::ANY),
            Just(ProtoMatch::exact(6)),
            Just(ProtoMatch::exact(17)),
            Just(ProtoMatch::new(6, 0xfe)),
            Just(ProtoMatch::new(1, 0x0f)),
        ],
        // 0x100_0001 shares its low 24 bits with 1: VNIs wider than the
        // classifier's 24-bit lanes must still be told apart.
        vni in prop_oneof![Just(None), Just(Some(1u32)), Just(Some(2u32)), Just(Some(0x100_0001u32))],
        deny in any::<bool>(),
        priority in prop_oneof![3 => Just(None), 1 => (0u32..4).prop_map(Some)],
    ) -> Rule {
        // family 2 = both addresses "any" (matches both families).
        let (src, dst) = if family == 2 {
            (Prefix::Any, Prefix::Any)
        } else {
            (prefix(family, sb, sl, sw), prefix(family, db, dl, dw))
        };
        Rule {
            id: None,
            vni,
            src,
            dst,
            proto,
            src_ports: ports(pa, pb, pw),
            dst_ports: ports(qa, qb, qw),
            action: if deny { Action::Deny } else { Action::Allow },
            priority,
            stateful: None,
        }
    }
}

prop_compose! {
    fn arb_key()(
        v6 in any::<bool>(),
        vni in prop_oneof![4 => 0u32..4, 1 => Just(0x100_0001u32), 1 => Just(0x100_0002u32)],
        s in 0usize..4, sr in any::<u128>(), sbits in 0u32..=128,
        d in 0usize..4, dr in any::<u128>(), dbits in 0u32..=128,
        sport in prop_oneof![(0usize..6).prop_map(|i| PORTS[i]), any::<u16>()],
        dport in prop_oneof![(0usize..6).prop_map(|i| PORTS[i]), any::<u16>()],
        proto in prop_oneof![Just(6u8), Just(7u8), Just(17u8), Just(1u8), Just(17u8), any::<u8>()],
    ) -> Key {
        // A pool address with some random low bits flipped.
        let near = |i: usize, r: u128, bits: u32| -> u128 {
            if v6 {
                V6_BASES[i % 3] ^ (r & (u128::MAX >> (128 - bits.max(1))))
            } else {
                u128::from(V4_BASES[i % 4] ^ ((r as u32) & (u32::MAX >> (32 - (bits % 33).max(1)))))
            }
        };
        Key { vni, src: near(s, sr, sbits), dst: near(d, dr, dbits), sport, dport, proto, v6 }
    }
}

fn params() -> impl Strategy<Value = BuildParams> {
    (
        1usize..6,
        2usize..9,
        1u32..10,
        prop_oneof![Just(0u8), Just(8), Just(16), Just(24)],
        prop::option::of(prop_oneof![
            Just(Walk::One),
            Just(Walk::Group),
            Just(Walk::Interleave)
        ]),
    )
        .prop_map(|(binth, spfac, max_bits, split_len, walk)| BuildParams {
            binth,
            spfac,
            max_bits,
            split_len,
            walk,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_agrees_with_linear(
        rules in prop::collection::vec(arb_rule(), 0..60),
        keys in prop::collection::vec(arb_key(), 0..64),
        seed in any::<u64>(),
        params in params(),
        vni_default in prop::option::of((0u32..4, any::<bool>())),
    ) {
        let mut set = RuleSet::new(Action::Deny);
        if let Some((v, allow)) = vni_default {
            set.set_vni_default(v, if allow { Action::Allow } else { Action::Deny });
        }
        set.extend(rules).unwrap();
        let lin = LinearClassifier::new(&set);
        let c = Classifier::with_params(&set, params);
        prop_assert_eq!(c.len(), set.len());
        let mut all: Vec<Key> = generate_trace(set.rules(), 128, seed)
            .into_iter()
            .map(|e| e.key)
            .collect();
        all.extend(keys);
        let mut out = vec![0u32; all.len()];
        c.classify_burst(&all, &mut out);
        for (k, &got) in all.iter().zip(&out) {
            let want = lin.classify(k);
            prop_assert_eq!(got, want, "key {:?}", k);
            prop_assert_eq!(c.classify(k), want);
            prop_assert_eq!(c.action(got, k.vni), lin.action(want, k.vni));
            if got != NO_MATCH {
                prop_assert!(c.rule(got).matches(k));
                prop_assert_eq!(c.rule(got), lin.rule(want));
            }
        }
    }
}
