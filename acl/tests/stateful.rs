//! Property: the stateful classifier (`conntrack::decide` over a compiled
//! `Classifier` and per-worker `ConnTables`) equals a straightforward model
//! (a list of connections per worker, the linear classifier) on random rule
//! sets (stateful, stateless and default rules, random VNI defaults) and
//! random sequences of packets of both directions, on two workers, with
//! flushes and a clock that moves (so entries time out per TCP state).

use acl::conntrack::{self, tcp, ConnKey, ConnTables, Decision, Hit, State, Timeouts};
use acl::{
    Action, Classifier, Key, LinearClassifier, PortRange, Prefix, ProtoMatch, Rule, RuleSet,
};
use proptest::prelude::*;
use std::net::Ipv4Addr;

const ADDRS: [u32; 4] = [0x0a00_0001, 0x0a00_0002, 0xc0a8_0001, 0xc0a8_0102];
const PORTS: [u16; 3] = [80, 1000, 2000];
const PROTOS: [u8; 3] = [6, 17, 1];

const TO: Timeouts = Timeouts {
    tcp_syn_ms: 1_000,
    tcp_established_ms: 5_000,
    tcp_fin_ms: 2_000,
    tcp_rst_ms: 500,
    udp_ms: 3_000,
    icmp_ms: 1_000,
    other_ms: 4_000,
};

fn prefix(i: usize, len: u8) -> Prefix {
    if i >= ADDRS.len() {
        Prefix::Any
    } else {
        Prefix::v4(Ipv4Addr::from(ADDRS[i]), len).unwrap()
    }
}

prop_compose! {
    fn arb_rule()(
        s in 0usize..6, sl in prop_oneof![Just(32u8), Just(24), Just(8)],
        d in 0usize..6, dl in prop_oneof![Just(32u8), Just(24), Just(8)],
        proto in prop_oneof![Just(ProtoMatch::ANY), Just(ProtoMatch::exact(6)), Just(ProtoMatch::exact(17))],
        dport in prop_oneof![Just(PortRange::ANY), Just(PortRange::single(80)), Just(PortRange::new(1000, 2000).unwrap())],
        vni in prop_oneof![Just(None), Just(Some(1u32)), Just(Some(2u32))],
        deny in prop::bool::weighted(0.3),
        stateful in prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
    ) -> Rule {
        Rule {
            vni,
            src: prefix(s, sl),
            dst: prefix(d, dl),
            proto,
            dst_ports: dport,
            action: if deny { Action::Deny } else { Action::Allow },
            stateful: if deny { None } else { stateful },
            ..Rule::default()
        }
    }
}

/// A connection of the case's pool: (vni, a, b, a's port, b's port, proto).
type Pool = (u32, usize, usize, u16, u16, u8);

fn arb_pool() -> impl Strategy<Value = Pool> {
    (
        1u32..3,
        0usize..4,
        0usize..4,
        0usize..3,
        0usize..3,
        0usize..3,
    )
        .prop_map(|(v, a, b, pa, pb, pr)| (v, a, b, PORTS[pa], PORTS[pb], PROTOS[pr]))
}

#[derive(Clone, Debug)]
enum Ev {
    /// (worker, connection of the pool, TCP flags, a → b?)
    Pkt(usize, usize, u8, bool),
    Flush(Option<u32>),
    /// Clock step (ms).
    Wait(u64),
}

fn arb_ev() -> impl Strategy<Value = Ev> {
    let flags = prop_oneof![
        Just(tcp::SYN),
        Just(tcp::SYN | tcp::ACK),
        Just(tcp::ACK),
        Just(tcp::ACK),
        Just(tcp::FIN | tcp::ACK),
        Just(tcp::RST),
    ];
    prop_oneof![
        16 => (0usize..2, 0usize..6, flags, any::<bool>())
            .prop_map(|(w, c, f, dir)| Ev::Pkt(w, c, f, dir)),
        1 => prop_oneof![Just(None), Just(Some(1u32)), Just(Some(2u32))].prop_map(Ev::Flush),
        // Steps of 0 or at least the last-seen granule: the model's "last
        // seen" is then simply the time of the last packet.
        3 => prop_oneof![Just(0u64), Just(100), Just(450), Just(900), Just(1_600), Just(2_600), Just(6_000)]
            .prop_map(Ev::Wait),
    ]
}

/// The model's connection.
#[derive(Clone, Debug)]
struct Conn {
    key: ConnKey,
    orig_hi: bool,
    last: u64,
    replied: bool,
    picked: bool,
    fin: bool,
    rst: bool,
    dead: bool,
}

impl Conn {
    fn state(&self) -> State {
        if self.key.proto != 6 {
            State::Active
        } else if self.rst {
            State::Closed
        } else if self.fin {
            State::Closing
        } else if self.replied || self.picked {
            State::Established
        } else {
            State::SynSent
        }
    }
    fn alive(&self, now: u64) -> bool {
        let timeout = match (self.key.proto, self.state()) {
            (6, State::SynSent) => TO.tcp_syn_ms,
            (6, State::Closing) => TO.tcp_fin_ms,
            (6, State::Closed) => TO.tcp_rst_ms,
            (6, _) => TO.tcp_established_ms,
            (17, _) => TO.udp_ms,
            (1, _) => TO.icmp_ms,
            _ => TO.other_ms,
        };
        !self.dead && now - self.last <= timeout
    }
}

struct Model {
    tables: Vec<Vec<Conn>>,
    lin: LinearClassifier,
    set: RuleSet,
}

impl Model {
    fn decide(&mut self, me: usize, k: &Key, flags: u8, now: u64) -> Decision {
        let (ck, fwd) = ConnKey::of(k);
        let order: Vec<usize> = std::iter::once(me)
            .chain((0..self.tables.len()).filter(|&t| t != me))
            .collect();
        for t in order {
            if let Some(c) = self.tables[t]
                .iter_mut()
                .find(|c| c.key == ck && c.alive(now))
            {
                let from_hi = !fwd;
                let reply = from_hi != c.orig_hi;
                if ck.proto == 6
                    && flags & tcp::SYN != 0
                    && flags & tcp::ACK == 0
                    && !reply
                    && matches!(c.state(), State::Closing | State::Closed)
                {
                    c.dead = true;
                    break; // re-opened: new
                }
                c.replied |= reply;
                if ck.proto == 6 {
                    c.rst |= flags & tcp::RST != 0;
                    c.fin |= flags & tcp::FIN != 0;
                }
                c.last = now;
                return Decision::Known(Hit {
                    reply,
                    remote: t != me,
                    worker: t,
                    state: c.state(),
                });
            }
        }
        let m = self.lin.classify(k);
        let rules = self.set.ordered();
        let default = *self
            .set
            .vni_defaults
            .get(&k.vni)
            .unwrap_or(&self.set.default_action);
        let (action, stateful) = match rules.get(m as usize) {
            Some(r) => (
                r.action,
                r.action == Action::Allow && r.stateful.unwrap_or(default == Action::Deny),
            ),
            None => (default, false),
        };
        if action == Action::Deny {
            return Decision::Denied { matched: m };
        }
        if !stateful || (k.proto == 6 && flags & tcp::RST != 0) {
            return Decision::Allowed {
                matched: m,
                created: false,
            };
        }
        let bare_syn = flags & tcp::SYN != 0 && flags & tcp::ACK == 0;
        self.tables[me].push(Conn {
            key: ck,
            orig_hi: !fwd,
            last: now,
            replied: false,
            picked: k.proto != 6 || !bare_syn,
            fin: false,
            rst: false,
            dead: false,
        });
        Decision::Allowed {
            matched: m,
            created: true,
        }
    }

    fn flush(&mut self, vni: Option<u32>) {
        for c in self.tables.iter_mut().flatten() {
            if vni.is_none_or(|v| v == c.key.vni) {
                c.dead = true;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn stateful_classifier_equals_model(
        rules in prop::collection::vec(arb_rule(), 0..8),
        default_deny in prop::bool::weighted(0.7),
        catch_all in any::<bool>(),
        vni_defaults in prop::collection::vec((1u32..3, any::<bool>()), 0..3),
        pool in prop::collection::vec(arb_pool(), 1..6),
        events in prop::collection::vec(arb_ev(), 1..250),
    ) {
        let mut set = RuleSet::new(if default_deny { Action::Deny } else { Action::Allow });
        for (v, d) in vni_defaults {
            set.set_vni_default(v, if d { Action::Deny } else { Action::Allow });
        }
        set.extend(rules).unwrap();
        if catch_all {
            // Allow everything else: stateful where the VNI's default is deny.
            set.push(Rule::default()).unwrap();
        }
        let c = Classifier::new(&set);
        // Big enough that no set fills (fullness is a unit test's business).
        let ct = ConnTables::new(2, 4096);
        let mut w = [ct.writer(0).unwrap(), ct.writer(1).unwrap()];
        let mut model = Model { tables: vec![Vec::new(), Vec::new()], lin: LinearClassifier::new(&set), set };
        let mut now = 1_000u64;
        for (i, ev) in events.iter().enumerate() {
            match *ev {
                Ev::Wait(ms) => now += ms,
                Ev::Flush(v) => {
                    ct.flush(v).unwrap();
                    model.flush(v);
                }
                Ev::Pkt(wk, ci, flags, dir) => {
                    let (vni, a, b, pa, pb, proto) = pool[ci % pool.len()];
                    let (src, dst, sport, dport) = if dir { (a, b, pa, pb) } else { (b, a, pb, pa) };
                    let (sport, dport) = if proto == 1 { (0, 0) } else { (sport, dport) };
                    let f = if proto == 6 { flags } else { 0 };
                    let k = Key {
                        vni,
                        src: u128::from(ADDRS[src]),
                        dst: u128::from(ADDRS[dst]),
                        sport,
                        dport,
                        proto,
                        v6: false,
                    };
                    let got = conntrack::decide(&mut w[wk], &c, &k, f, now, &TO);
                    let want = model.decide(wk, &k, f, now);
                    prop_assert_eq!(got, want, "event {} {:?} at {}", i, ev, now);
                }
            }
        }
        // The tables hold what the model holds.
        let mut live = 0;
        ct.for_each(now, &TO, |_| live += 1);
        let want = model.tables.iter().flatten().filter(|c| c.alive(now)).count();
        prop_assert_eq!(live, want);
    }
}
