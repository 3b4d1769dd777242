//! Schedulers (`scheduler = ...`) and the new-flow rate cap, through the real
//! `LbTables` + `FlowTable` API: round robin's exact weighted shares,
//! least_conn's balance while flows of random lengths come and go (with the
//! active-flow counts checked against the table's live entries), src_ip's
//! affinity and disruption, and the cap's "hash, do not store" policy.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use lb::{
    build, flow_hash, tcp_flags, BackendSpec, BackendState, FlowKey, FlowTable, FlowTableConfig,
    LbTables, LbVerdict, Proto, Scheduler, ServiceIdx, ServiceSpec, Services,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn backend_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8))
}

fn services(sched: Scheduler, weights: &[u32]) -> Services {
    let mut s = Services::new();
    let mut spec = ServiceSpec::new("web", VIP.into(), 80, Proto::Tcp);
    spec.table_size = 4099;
    spec.scheduler = sched;
    s.add_service(spec).unwrap();
    for (i, &w) in weights.iter().enumerate() {
        let mut b = BackendSpec::new(backend_ip(i + 1));
        b.weight = w;
        s.add_backend("web", b).unwrap();
    }
    s
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        vni: 1,
        src: u128::from(0xac10_0000u32.wrapping_add(i.wrapping_mul(7919))),
        dst: u128::from(u32::from(VIP)),
        sport: 1024 + (i % 50000) as u16,
        dport: 80,
        proto: 6,
        v6: false,
    }
}

fn flows(capacity: usize) -> FlowTable {
    FlowTable::new(FlowTableConfig {
        capacity,
        tcp_timeout: 300,
        udp_timeout: 30,
        fin_timeout: 10,
    })
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One packet through the burst API (the engine's path); returns the
/// backend index (None: not forwarded) and whether it is a new flow.
fn send(t: &LbTables, ft: &mut FlowTable, k: &FlowKey, flags: u8, now: u64) -> Option<(u16, bool)> {
    let mut out = [LbVerdict::NotService];
    t.process_burst_flags_with(
        std::slice::from_ref(k),
        &[flags],
        ft,
        now,
        &mut out,
        None::<fn(*const u8)>,
    );
    match out[0] {
        LbVerdict::Forward {
            backend, new_flow, ..
        } => Some((backend, new_flow)),
        _ => None,
    }
}

/// Per-backend live entries of the flow table (the truth the counts follow).
fn live_per_backend(t: &LbTables, ft: &FlowTable, now: u64) -> Vec<u32> {
    let bs = t.backends(ServiceIdx(0));
    let mut v = vec![0u32; bs.len()];
    for f in ft.iter(now) {
        let i = bs
            .iter()
            .position(|b| b.backend_ref().addr == f.pinned.addr)
            .unwrap();
        v[i] += 1;
    }
    v
}

#[test]
fn round_robin_gives_exact_weighted_shares() {
    // Weights 1..4, plus a draining, a weight-0 and a down backend (never chosen).
    let mut s = services(Scheduler::RoundRobin, &[1, 2, 3, 4, 5, 0, 5]);
    s.set_state("web", backend_ip(5), BackendState::Draining)
        .unwrap();
    s.set_state("web", backend_ip(7), BackendState::Down)
        .unwrap();
    let t = build(&s).unwrap();
    let mut ft = flows(1 << 14);
    let total: u32 = 1 + 2 + 3 + 4;
    let rounds = 50;
    let mut got = vec![0u32; 7];
    let mut window = vec![0u32; 7];
    for i in 0..total * rounds {
        let (b, new) = send(&t, &mut ft, &key(i), tcp_flags::SYN, 0).unwrap();
        assert!(new);
        got[usize::from(b)] += 1;
        window[usize::from(b)] += 1;
        // Smooth: every window of Σw consecutive new flows is already exact.
        if (i + 1) % total == 0 {
            assert_eq!(window, vec![1, 2, 3, 4, 0, 0, 0], "window ending at {i}");
            window.fill(0);
        }
    }
    assert_eq!(
        got,
        vec![rounds, 2 * rounds, 3 * rounds, 4 * rounds, 0, 0, 0]
    );
    // Smooth WRR interleaves: the weight-4 backend never gets 4 in a row.
    let mut ft = flows(1 << 10);
    let seq: Vec<u16> = (0..total)
        .map(|i| send(&t, &mut ft, &key(100_000 + i), 0, 0).unwrap().0)
        .collect();
    assert!(
        seq.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{seq:?}"
    );
    // Established flows are sticky whatever the rotation says.
    let mut ft = flows(1 << 14);
    let first: Vec<u16> = (0..500)
        .map(|i| send(&t, &mut ft, &key(i), 0, 0).unwrap().0)
        .collect();
    let again: Vec<u16> = (0..500)
        .map(|i| send(&t, &mut ft, &key(i), 0, 1).unwrap().0)
        .collect();
    assert_eq!(first, again);
}

/// Flows of random lengths open (SYN) and end (client RST, or abandoned and
/// left to expire) at random through the burst API, on least_conn and on
/// maglev for comparison. Checks, at every new flow, that it went to a
/// backend with the fewest counted flows; after full sweeps, that the counts
/// equal the table's live entries exactly; and the spread (max − min of
/// live flows per backend) stays within the bound.
fn churn(sched: Scheduler, weights: &[u32], seed: u64) -> (u32, f64) {
    let t = build(&services(sched, weights)).unwrap();
    let svc = ServiceIdx(0);
    let mut ft = flows(1 << 13);
    let mut rng = Rng(seed);
    // ≈ 300-500 flows live, 1-40 packets each. (key, packets left, abandoned at the end instead of reset, last packet)
    let mut live: Vec<(FlowKey, u32, bool, u64)> = Vec::new();
    let mut next = 0u32;
    let mut checked = 0u32;
    let mut worst_spread = 0u32;
    let mut worst_ratio = 0f64;
    let mut now = 1000u64;
    for step in 0..40_000u32 {
        if step % 10 == 0 {
            // Time runs: abandoned flows expire after 300 ticks; live ones
            // idle for 100 get a keepalive.
            now += 1;
            for f in live.iter_mut().filter(|f| now - f.3 > 100) {
                let (_, new) = send(&t, &mut ft, &f.0, tcp_flags::ACK, now).unwrap();
                assert!(
                    !new,
                    "step {step}: an established flow lost its entry {:?}",
                    ft.stats()
                );
                f.3 = now;
            }
        }
        let opens = live.len() < 100 || (live.len() < 500 && rng.below(16) == 0);
        if opens {
            let k = key(next);
            next += 1;
            let ends = ft.stats().evictions + ft.stats().expired;
            let (b, new) = send(&t, &mut ft, &k, tcp_flags::SYN, now).unwrap();
            assert!(new);
            // The greedy property, on the counts the scheduler saw: those
            // after the packet less this flow (the burst's sweep runs before
            // the choice; an eviction after it would blur the picture).
            let quiet = ft.stats().evictions + ft.stats().expired == ends;
            if let Some(mut c) = t.active_flows(svc, &ft).filter(|_| quiet) {
                let b = usize::from(b);
                c[b] -= 1;
                checked += 1;
                if sched == Scheduler::LeastConn {
                    assert_eq!(
                        c[b],
                        *c.iter().min().unwrap(),
                        "step {step}: {c:?} chose {b}"
                    );
                } else {
                    let load = |i: usize| f64::from(c[i] + 1) / f64::from(weights[i]);
                    let best = (0..c.len()).map(load).fold(f64::MAX, f64::min);
                    assert!(load(b) <= best + 1e-9, "step {step}: {c:?} chose {b}");
                }
            }
            let len = 1 + rng.below(40) as u32;
            live.push((k, len, rng.below(4) == 0, now));
        } else {
            // One packet of a random live flow; it ends when its length is spent.
            let j = rng.below(live.len() as u64) as usize;
            live[j].1 -= 1;
            live[j].3 = now;
            let (k, left, abandon, _) = live[j];
            if left == 0 {
                live.swap_remove(j);
                if !abandon {
                    send(&t, &mut ft, &k, tcp_flags::RST | tcp_flags::ACK, now).unwrap();
                }
            } else {
                let (_, new) = send(&t, &mut ft, &k, tcp_flags::ACK, now).unwrap();
                assert!(!new, "step {step}: an established flow lost its entry");
            }
        }
        if step % 4 != 3 {
            continue;
        }
        let truth = live_per_backend(&t, &ft, now);
        if step % 1000 == 999 {
            ft.sweep(now, usize::MAX);
            if let Some(c) = t.active_flows(svc, &ft) {
                assert_eq!(c, truth, "step {step}: counts differ from live entries");
            }
        }
        let (mx, mn) = (*truth.iter().max().unwrap(), *truth.iter().min().unwrap());
        worst_spread = worst_spread.max(mx - mn);
        let total: u32 = truth.iter().sum();
        let wsum: u32 = weights.iter().sum();
        if total >= 100 {
            for (c, &w) in truth.iter().zip(weights) {
                let share = f64::from(total) * f64::from(w) / f64::from(wsum);
                worst_ratio = worst_ratio.max((f64::from(*c) - share).abs() / share);
            }
        }
    }
    if sched.counts() {
        // Most choices were checked (the others had an entry end between).
        assert!(
            checked * 4 > next * 3,
            "{checked} of {next} new flows checked"
        );
    }
    (worst_spread, worst_ratio)
}

#[test]
fn least_conn_keeps_active_flows_balanced_under_churn() {
    let w = [1u32; 8];
    let (lc, _) = churn(Scheduler::LeastConn, &w, 7);
    let (mg, _) = churn(Scheduler::Maglev, &w, 7);
    // The bound: never more than 8 flows between the busiest and the idlest
    // of 8 backends (≈ 300-500 flows live; 5 seen: departures open the gap,
    // the next arrivals close it; abandoned flows count until they expire).
    // Maglev, which does not look at load, drifts much further (31 seen).
    eprintln!("spread of live flows per backend: least_conn {lc}, maglev {mg}");
    assert!(lc <= 8, "least_conn spread {lc}");
    assert!(
        mg > 2 * lc,
        "maglev {mg} vs least_conn {lc}: the test does not discriminate"
    );
}

#[test]
fn weighted_least_conn_follows_weights_under_churn() {
    let w = [1u32, 2, 3, 6];
    let (_, wlc) = churn(Scheduler::WeightedLeastConn, &w, 11);
    // Within 25 % of its weighted share once 100 flows are live (18 % seen).
    eprintln!("weighted_least_conn worst relative deviation {wlc:.3}");
    assert!(wlc <= 0.25, "{wlc}");
    // least_conn ignores weights (IPVS lc): equal active counts.
    let t = build(&services(Scheduler::LeastConn, &w)).unwrap();
    let mut ft = flows(1 << 14);
    for i in 0..1200 {
        send(&t, &mut ft, &key(i), tcp_flags::SYN, 0).unwrap();
    }
    assert_eq!(t.active_flows(ServiceIdx(0), &ft).unwrap(), vec![300; 4]);
    let t = build(&services(Scheduler::WeightedLeastConn, &w)).unwrap();
    let mut ft = flows(1 << 14);
    for i in 0..1200 {
        send(&t, &mut ft, &key(i), tcp_flags::SYN, 0).unwrap();
    }
    assert_eq!(
        t.active_flows(ServiceIdx(0), &ft).unwrap(),
        vec![100, 200, 300, 600]
    );
}

#[test]
fn active_counts_follow_every_way_an_entry_ends() {
    let t = build(&services(Scheduler::LeastConn, &[1, 1, 1, 1])).unwrap();
    let svc = ServiceIdx(0);
    let sum = |ft: &FlowTable| t.active_flows(svc, ft).unwrap().iter().sum::<u32>();
    // RST.
    let mut ft = flows(1 << 12);
    for i in 0..100 {
        send(&t, &mut ft, &key(i), tcp_flags::SYN, 0).unwrap();
    }
    assert_eq!(sum(&ft), 100);
    for i in 0..40 {
        send(&t, &mut ft, &key(i), tcp_flags::RST, 1).unwrap();
    }
    assert_eq!(sum(&ft), 60);
    // Idle expiry found by a lookup (then re-created: counted once again;
    // `select` does not sweep, a burst would).
    let k = key(50);
    let sel = t.select(svc, &k, flow_hash(&k), &mut ft, 400).unwrap();
    assert!(sel.new_flow);
    assert_eq!(sum(&ft), 60, "expired and re-inserted");
    assert_eq!(ft.stats().expired, 1);
    // Idle expiry found by the sweep.
    ft.sweep(400, usize::MAX);
    assert_eq!(sum(&ft), 1);
    // clear().
    ft.clear();
    assert_eq!(sum(&ft), 0);
    // Eviction: one set of 8 ways, 100 flows through it.
    let mut ft = flows(8);
    for i in 0..100 {
        send(&t, &mut ft, &key(i), 0, 0).unwrap();
    }
    assert!(ft.stats().evictions >= 92);
    assert_eq!(sum(&ft), 8);
    assert_eq!(
        t.active_flows(svc, &ft).unwrap(),
        live_per_backend(&t, &ft, 0)
    );
    // Re-homing when a backend goes down moves its flows' counts.
    let mut s = services(Scheduler::LeastConn, &[1, 1, 1, 1]);
    let t = build(&s).unwrap();
    let mut ft = flows(1 << 12);
    for i in 0..400 {
        send(&t, &mut ft, &key(i), 0, 0).unwrap();
    }
    assert_eq!(t.active_flows(svc, &ft).unwrap(), vec![100; 4]);
    s.set_state("web", backend_ip(2), BackendState::Down)
        .unwrap();
    let t2 = LbTables::rebuild(&t, &s).unwrap();
    for i in 0..400 {
        send(&t2, &mut ft, &key(i), 0, 1).unwrap();
    }
    let c = t2.active_flows(svc, &ft).unwrap();
    assert_eq!(c[1], 0, "{c:?}");
    assert_eq!(c.iter().sum::<u32>(), 400);
    assert_eq!(c, live_per_backend(&t2, &ft, 1));
    assert!(
        c.iter().all(|&x| x == 0 || (133..=134).contains(&x)),
        "{c:?}"
    );
}

#[test]
fn src_ip_pins_clients_and_removal_moves_only_its_clients() {
    let n = 10;
    let mut s = services(Scheduler::SrcIp, &vec![1; n]);
    let t = build(&s).unwrap();
    let clients = 5000u32;
    let client_key = |c: u32, f: u32| FlowKey {
        src: u128::from(0x0a00_0000 + c * 13),
        sport: 2000 + f as u16,
        ..key(0)
    };
    let assign = |t: &LbTables| -> Vec<IpAddr> {
        let mut ft = flows(1 << 16);
        (0..clients)
            .map(|c| {
                let ips: Vec<IpAddr> = (0..6)
                    .map(|f| {
                        let k = client_key(c, f);
                        let svc = t.lookup_service(&k).unwrap();
                        t.select(svc, &k, flow_hash(&k), &mut ft, 0)
                            .unwrap()
                            .backend
                            .ip()
                    })
                    .collect();
                assert!(ips.iter().all(|ip| *ip == ips[0]), "client {c}: {ips:?}");
                ips[0]
            })
            .collect()
    };
    let before = assign(&t);
    let mut per: HashMap<IpAddr, u32> = HashMap::new();
    for ip in &before {
        *per.entry(*ip).or_default() += 1;
    }
    assert_eq!(per.len(), n);
    for (ip, c) in &per {
        assert!((400..=600).contains(c), "{ip}: {c} of {clients} clients");
    }
    let gone = backend_ip(4);
    s.del_backend("web", gone).unwrap();
    let after = assign(&LbTables::rebuild(&t, &s).unwrap());
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    let of_gone = before.iter().filter(|b| **b == gone).count();
    eprintln!(
        "src_ip: {of_gone} clients of the removed backend moved, {moved_others} others moved"
    );
    assert!(after.iter().all(|a| *a != gone));
    // Maglev's disruption bound: few clients of the remaining backends move.
    assert!(moved_others * 50 <= clients as usize, "{moved_others}");
}

#[test]
fn rate_cap_hashes_without_storing_above_the_rate() {
    let mut s = services(Scheduler::Maglev, &[1; 5]);
    let mut capped = s.get("web").unwrap().clone();
    capped.new_flow_rate = 100;
    s.del_service("web").unwrap();
    s.add_service(capped).unwrap();
    let t = build(&s).unwrap();
    let plain = build(&services(Scheduler::Maglev, &[1; 5])).unwrap();
    // Times in ms: the default timeouts (TCP 300 s).
    let mut ft = FlowTable::new(FlowTableConfig {
        capacity: 1 << 14,
        ..FlowTableConfig::default()
    });
    let mut pf = flows(1 << 14);
    let pick = |t: &LbTables, ft: &mut FlowTable, i: u32, now: u64| {
        send(t, ft, &key(i), tcp_flags::SYN, now).unwrap().0
    };
    for i in 0..1000 {
        // Every flow, limited or not, goes where Maglev sends it.
        assert_eq!(
            pick(&t, &mut ft, i, 5),
            pick(&plain, &mut pf, i, 5),
            "flow {i}"
        );
    }
    assert_eq!(ft.stats().rate_limited, 900);
    assert_eq!(ft.live(5), 100, "only the admitted flows are stored");
    // 10 ms later: one more token; a second later: a full bucket (100).
    for i in 1000..1010 {
        pick(&t, &mut ft, i, 15);
    }
    assert_eq!(ft.live(15), 101);
    for i in 2000..2200 {
        pick(&t, &mut ft, i, 2000);
    }
    assert_eq!(ft.live(2000), 201);
    assert_eq!(ft.stats().rate_limited, 900 + 9 + 100);
    let mut taken = Vec::new();
    ft.sched_mut()
        .take_rate_limited(|name, n| taken.push((name.to_string(), n)));
    assert_eq!(taken, vec![("web".to_string(), 1009)]);
    ft.sched_mut()
        .take_rate_limited(|_, _| panic!("taken twice"));
    // Established flows are not capped: their packets are hits.
    let hits = ft.stats().hits;
    for i in 0..100 {
        pick(&t, &mut ft, i, 2001);
    }
    assert_eq!(ft.stats().hits, hits + 100);
}

#[test]
fn scheduler_and_rate_are_config_keys() {
    let text = "name = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nproto = \"tcp\"\nscheduler = \"least_conn\"\nnew_flow_rate = 5000\n";
    let spec: ServiceSpec = toml::from_str(text).unwrap();
    assert_eq!(
        (spec.scheduler, spec.new_flow_rate),
        (Scheduler::LeastConn, 5000)
    );
    let again: ServiceSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
    // Defaults are not written back (configs stay as they were).
    let plain = ServiceSpec::new("a", "10.0.0.1".parse().unwrap(), 80, Proto::Tcp);
    let t = toml::to_string(&plain).unwrap();
    assert!(
        !t.contains("scheduler") && !t.contains("new_flow_rate"),
        "{t}"
    );
    let e = toml::from_str::<ServiceSpec>(&text.replace("least_conn", "leastconn"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scheduler") && e.contains("weighted_least_conn"),
        "{e}"
    );
    for s in Scheduler::ALL {
        assert_eq!(s.as_str().parse::<Scheduler>(), Ok(s));
    }
}
