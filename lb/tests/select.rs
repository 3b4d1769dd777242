//! Backend selection through LbTables + FlowTable: stickiness, removal, drain,
//! down, service lookup precedence, bursts and determinism.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb::{
    build, flow_hash, BackendSpec, BackendState, EncapKind, FlowKey, FlowTable, FlowTableConfig,
    LbTables, LbVerdict, MacAddr, Proto, ServiceSpec, Services,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn backend_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, i))
}

fn services(n: u8) -> Services {
    let mut s = Services::new();
    let mut spec = ServiceSpec::new("web", VIP.into(), 80, Proto::Tcp);
    spec.table_size = 4099;
    s.add_service(spec).unwrap();
    for i in 1..=n {
        s.add_backend("web", BackendSpec::new(backend_ip(i)))
            .unwrap();
    }
    s
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        vni: 1,
        src: u128::from(0xac10_0000u32 + i * 7919),
        dst: u128::from(u32::from(VIP)),
        sport: 1024 + (i % 50000) as u16,
        dport: 80,
        proto: 6,
        v6: false,
    }
}

fn flows() -> FlowTable {
    FlowTable::new(FlowTableConfig {
        capacity: 1 << 14,
        tcp_timeout: 300,
        udp_timeout: 30,
        fin_timeout: 10,
    })
}

/// Sends one packet of each flow `0..n` at time `now`; returns flow → (backend ip, new).
fn run(t: &LbTables, ft: &mut FlowTable, n: u32, now: u64) -> Vec<(IpAddr, bool)> {
    (0..n)
        .map(|i| {
            let k = key(i);
            let svc = t.lookup_service(&k).expect("service");
            let sel = t.select(svc, &k, flow_hash(&k), ft, now).expect("backend");
            (sel.backend.ip(), sel.new_flow)
        })
        .collect()
}

const FLOWS: u32 = 3000;

#[test]
fn flows_stick_across_backend_add_and_weight_change() {
    let mut desired = services(5);
    let t1 = build(&desired).unwrap();
    let mut ft = flows();
    let first = run(&t1, &mut ft, FLOWS, 0);
    assert!(first.iter().all(|&(_, new)| new));

    desired
        .add_backend("web", BackendSpec::new(backend_ip(6)))
        .unwrap();
    desired.set_weight("web", backend_ip(1), 4).unwrap();
    let t2 = LbTables::rebuild(&t1, &desired).unwrap();
    // Without the flow table many flows would move (so this test can fail) ...
    let fresh = run(&t2, &mut flows(), FLOWS, 1);
    let would_move = first.iter().zip(&fresh).filter(|(a, b)| a.0 != b.0).count();
    assert!(would_move > FLOWS as usize / 10, "{would_move}");
    // ... with it none does.
    let second = run(&t2, &mut ft, FLOWS, 1);
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!((a.0, b.1), (b.0, false), "flow {i}");
    }
    let s = ft.stats();
    assert_eq!(
        (s.hits, s.misses, s.rehomed),
        (FLOWS as u64, FLOWS as u64, 0)
    );
}

#[test]
fn removed_backend_flows_move_others_stay() {
    let mut desired = services(5);
    let t1 = build(&desired).unwrap();
    let mut ft = flows();
    let first = run(&t1, &mut ft, FLOWS, 0);
    // Remove 192.168.0.1, which sorts first: every other backend's index shifts,
    // and their flows must still be recognised (by address).
    desired.del_backend("web", backend_ip(1)).unwrap();
    let t2 = LbTables::rebuild(&t1, &desired).unwrap();
    let second = run(&t2, &mut ft, FLOWS, 1);
    let mut moved = 0;
    for (a, b) in first.iter().zip(&second) {
        if a.0 == backend_ip(1) {
            assert_ne!(b.0, backend_ip(1));
            assert!(b.1, "a moved flow is a new selection");
            moved += 1;
        } else {
            assert_eq!((b.0, b.1), (a.0, false));
        }
    }
    assert!(moved > 0);
    assert_eq!(ft.stats().rehomed, moved);
    // The index hint is refreshed: the reported index is the new one.
    for i in 0..FLOWS {
        let k = key(i);
        let sel = t2
            .select(
                t2.lookup_service(&k).unwrap(),
                &k,
                flow_hash(&k),
                &mut ft,
                2,
            )
            .unwrap();
        let svc = t2.lookup_service(&k).unwrap();
        assert_eq!(
            t2.backends(svc)[usize::from(sel.backend.index)].ip,
            sel.backend.ip()
        );
        assert!(!sel.new_flow);
    }
}

#[test]
fn down_moves_draining_and_weight_zero_keep_but_take_no_new_flows() {
    let mut desired = services(5);
    let t1 = build(&desired).unwrap();
    let mut ft = flows();
    let first = run(&t1, &mut ft, FLOWS, 0);
    desired
        .set_state("web", backend_ip(2), BackendState::Down)
        .unwrap();
    desired
        .set_state("web", backend_ip(3), BackendState::Draining)
        .unwrap();
    desired.set_weight("web", backend_ip(4), 0).unwrap();
    let t2 = LbTables::rebuild(&t1, &desired).unwrap();
    let second = run(&t2, &mut ft, FLOWS, 1);
    for (a, b) in first.iter().zip(&second) {
        if a.0 == backend_ip(2) {
            assert!(b.0 != backend_ip(2) && b.1);
            // Re-selected among the eligible ones only.
            assert!(b.0 == backend_ip(1) || b.0 == backend_ip(5), "{}", b.0);
        } else {
            assert_eq!((b.0, b.1), (a.0, false));
        }
    }
    // New flows only go to 1 and 5, about evenly.
    let mut per: HashMap<IpAddr, u32> = HashMap::new();
    for (ip, new) in run(&t2, &mut flows(), FLOWS, 2) {
        assert!(new);
        *per.entry(ip).or_default() += 1;
    }
    assert_eq!(per.len(), 2, "{per:?}");
    for c in per.values() {
        assert!((1300..=1700).contains(c), "{per:?}");
    }
    let svc = t2.service_by_name("web").unwrap();
    let slots: Vec<(IpAddr, u32)> = t2.backends(svc).iter().map(|b| (b.ip, b.slots)).collect();
    assert_eq!(slots[1].1 + slots[2].1 + slots[3].1, 0, "{slots:?}");
    assert_eq!(slots[0].1 + slots[4].1, 4099);
}

#[test]
fn no_eligible_backend_is_no_backend() {
    let mut desired = services(2);
    desired
        .set_state("web", backend_ip(1), BackendState::Down)
        .unwrap();
    desired
        .set_state("web", backend_ip(2), BackendState::Draining)
        .unwrap();
    let t = build(&desired).unwrap();
    let mut ft = flows();
    let k = key(1);
    let svc = t.lookup_service(&k).unwrap();
    assert!(t.service(svc).unwrap().table().is_empty());
    assert_eq!(t.select(svc, &k, flow_hash(&k), &mut ft, 0), None);
    let mut out = [LbVerdict::default(); 1];
    t.process_burst(&[k], &mut ft, 0, &mut out);
    assert_eq!(out[0], LbVerdict::NoBackend(svc));
    assert_eq!(ft.live(0), 0, "nothing pinned");
    // A service without any backend behaves the same.
    let mut empty = Services::new();
    empty
        .add_service(ServiceSpec::new("e", VIP.into(), 80, Proto::Tcp))
        .unwrap();
    let t = build(&empty).unwrap();
    assert_eq!(t.select(svc, &k, flow_hash(&k), &mut ft, 0), None);
}

#[test]
fn expired_flow_is_reselected() {
    let mut desired = services(3);
    let t1 = build(&desired).unwrap();
    let mut ft = flows();
    let k = key(7);
    let svc = t1.lookup_service(&k).unwrap();
    let a = t1.select(svc, &k, flow_hash(&k), &mut ft, 0).unwrap();
    // Add many backends: a re-selection after the timeout may pick another one,
    // and is reported as new in any case.
    for i in 10..60 {
        desired
            .add_backend("web", BackendSpec::new(backend_ip(i)))
            .unwrap();
    }
    let t2 = LbTables::rebuild(&t1, &desired).unwrap();
    let b = t2.select(svc, &k, flow_hash(&k), &mut ft, 300).unwrap();
    assert_eq!((b.backend.ip(), b.new_flow), (a.backend.ip(), false));
    let c = t2.select(svc, &k, flow_hash(&k), &mut ft, 601).unwrap();
    assert!(c.new_flow);
    assert_eq!(ft.stats().expired, 1);
    let fresh = t2.select(svc, &k, flow_hash(&k), &mut flows(), 0).unwrap();
    assert_eq!(c.backend, fresh.backend);
}

#[test]
fn service_lookup_precedence_and_families() {
    let mut s = Services::new();
    let mut any = ServiceSpec::new("any", VIP.into(), 80, Proto::Tcp);
    any.backends = vec![BackendSpec::new(backend_ip(1))];
    let mut scoped = ServiceSpec::new("scoped", VIP.into(), 80, Proto::Tcp);
    scoped.vni = Some(5);
    scoped.backends = vec![BackendSpec::new(backend_ip(2))];
    let mut only9 = ServiceSpec::new("only9", VIP.into(), 443, Proto::Tcp);
    only9.vni = Some(9);
    only9.backends = vec![BackendSpec::new(backend_ip(3))];
    let vip6: Ipv6Addr = "fd00::80".parse().unwrap();
    let mut v6 = ServiceSpec::new("v6", vip6.into(), 53, Proto::Udp);
    v6.encap = EncapKind::Vxlan;
    let mut b6 = BackendSpec::new("fd00::1".parse().unwrap());
    b6.mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
    v6.backends = vec![b6];
    for spec in [any, scoped, only9, v6] {
        s.add_service(spec).unwrap();
    }
    let t = build(&s).unwrap();
    let name = |k: &FlowKey| {
        t.lookup_service(k)
            .map(|i| t.service(i).unwrap().name.clone())
    };
    let mut k = key(1);
    assert_eq!(name(&k).as_deref(), Some("any"));
    k.vni = 5;
    assert_eq!(name(&k).as_deref(), Some("scoped"));
    k.vni = 6;
    assert_eq!(name(&k).as_deref(), Some("any"));
    k.dport = 443;
    assert_eq!(name(&k), None);
    k.vni = 9;
    assert_eq!(name(&k).as_deref(), Some("only9"));
    k.proto = 17;
    assert_eq!(name(&k), None);
    let mut k = key(1);
    k.dst += 1;
    assert_eq!(name(&k), None);
    k = key(1);
    k.v6 = true;
    assert_eq!(name(&k), None, "same bits as IPv6 are another address");

    let k6 = FlowKey {
        vni: 77,
        src: u128::from("fd00::9".parse::<Ipv6Addr>().unwrap()),
        dst: u128::from(vip6),
        sport: 5353,
        dport: 53,
        proto: 17,
        v6: true,
    };
    let svc = t.lookup_service(&k6).unwrap();
    let sel = t.select(svc, &k6, flow_hash(&k6), &mut flows(), 0).unwrap();
    assert_eq!(sel.backend.ip(), "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(sel.backend.mac, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(sel.backend.encap, EncapKind::Vxlan);
    assert!(sel.backend.v6);

    assert_eq!(LbTables::empty().lookup_service(&k6), None);
}

#[test]
fn burst_matches_per_packet_select() {
    let t = build(&services(7)).unwrap();
    let mut keys: Vec<FlowKey> = (0..200).map(key).collect();
    // Some non-service packets and repeats.
    for i in (0..200).step_by(13) {
        keys[i].dport = 8080;
    }
    for i in (100..200).step_by(3) {
        keys[i] = keys[i - 100];
    }
    // A small table and a large one (the prefetch passes depend on the used ways, not the capacity).
    for capacity in [1 << 10, 1 << 16] {
        let cfg = FlowTableConfig {
            capacity,
            tcp_timeout: 300,
            udp_timeout: 30,
            fin_timeout: 10,
        };
        let mut ft_a = FlowTable::new(cfg);
        let mut ft_b = FlowTable::new(cfg);
        let mut out = vec![LbVerdict::default(); keys.len()];
        for now in [5, 6] {
            t.process_burst(&keys, &mut ft_a, now, &mut out);
            for (k, v) in keys.iter().zip(&out) {
                let want = match t.lookup_service(k) {
                    None => LbVerdict::NotService,
                    Some(svc) => match t.select(svc, k, flow_hash(k), &mut ft_b, now) {
                        Some(sel) => {
                            assert_eq!(t.backend_ref(svc, sel.backend.index), Some(&sel.backend));
                            LbVerdict::Forward {
                                svc,
                                backend: sel.backend.index,
                                new_flow: sel.new_flow,
                            }
                        }
                        None => LbVerdict::NoBackend(svc),
                    },
                };
                assert_eq!(*v, want);
            }
        }
        assert_eq!(ft_a.stats(), ft_b.stats());
        assert!(ft_a.stats().hits > 0);
    }
}

#[test]
fn gateways_agree_whatever_the_insertion_order() {
    let mut a = Services::new();
    let mut b = Services::new();
    for s in [&mut a, &mut b] {
        let mut spec = ServiceSpec::new("web", VIP.into(), 80, Proto::Tcp);
        spec.table_size = 65537;
        s.add_service(spec).unwrap();
    }
    for i in 1..=40 {
        let mut be = BackendSpec::new(backend_ip(i));
        be.weight = u32::from(i % 3) + 1;
        a.add_backend("web", be.clone()).unwrap();
    }
    for i in (1..=40).rev() {
        let mut be = BackendSpec::new(backend_ip(i));
        be.weight = u32::from(i % 3) + 1;
        b.add_backend("web", be).unwrap();
    }
    let (ta, tb) = (build(&a).unwrap(), build(&b).unwrap());
    let svc = ta.service_by_name("web").unwrap();
    assert_eq!(
        ta.service(svc).unwrap().table(),
        tb.service(svc).unwrap().table()
    );
    assert_eq!(
        run(&ta, &mut flows(), FLOWS, 0),
        run(&tb, &mut flows(), FLOWS, 0)
    );
    // Golden value: the flow hash and the table are fixed functions of the
    // configuration, so this choice must never change between builds/machines.
    let k = key(12345);
    assert_eq!(flow_hash(&k), 0x06dc_a068_f7ff_8885);
    let sel = ta.select(svc, &k, flow_hash(&k), &mut flows(), 0).unwrap();
    assert_eq!(sel.backend.ip(), backend_ip(29));
}

#[test]
fn rebuild_reuses_unchanged_tables() {
    let mut s = services(4);
    let mut other = ServiceSpec::new("other", Ipv4Addr::new(10, 99, 0, 2).into(), 80, Proto::Tcp);
    other.backends = vec![BackendSpec::new(backend_ip(9))];
    s.add_service(other).unwrap();
    let t1 = build(&s).unwrap();
    s.add_backend("web", BackendSpec::new(backend_ip(5)))
        .unwrap();
    let t2 = LbTables::rebuild(&t1, &s).unwrap();
    let ptr = |t: &LbTables, n: &str| {
        t.service(t.service_by_name(n).unwrap())
            .unwrap()
            .table()
            .as_ptr()
    };
    assert_eq!(ptr(&t1, "other"), ptr(&t2, "other"));
    assert_ne!(ptr(&t1, "web"), ptr(&t2, "web"));
    // A Down backend is not a table input, but changes indices: no reuse then.
    s.add_backend(
        "other",
        BackendSpec {
            state: BackendState::Down,
            ..BackendSpec::new(backend_ip(1))
        },
    )
    .unwrap();
    let t3 = LbTables::rebuild(&t2, &s).unwrap();
    let o = t3.service(t3.service_by_name("other").unwrap()).unwrap();
    assert_eq!(o.backends()[usize::from(o.table()[0])].ip, backend_ip(9));
}

/// `process_burst_with` and a prefetch function: the same verdicts as
/// `process_burst`, and every prefetched address lies inside the table. The
/// prefetches run only when the used ways occupy more than 32 KiB: first
/// with an L1-sized footprint (200 flows in a 64 Ki-entry table, 25 KiB: no
/// calls), with 300 more (64 KiB: calls), then with 30 000 more (2.4 MiB; also
/// past the 2 MiB above which `process_burst`, without a prefetch function,
/// touches the lines with plain loads).
#[test]
fn prefetching_changes_nothing_but_is_called_inside_the_table() {
    let t = build(&services(5)).unwrap();
    let big = || {
        FlowTable::new(FlowTableConfig {
            capacity: 1 << 16,
            tcp_timeout: 300,
            udp_timeout: 30,
            fin_timeout: 10,
        })
    };
    let (mut plain, mut pre) = (big(), big());
    let calls = std::cell::Cell::new(0usize);
    // Prefetched addresses (checked against the table at the end: its set
    // metadata and entries are two allocations, not one range).
    let seen = std::cell::RefCell::new(Vec::new());
    let pf = |p: *const u8| {
        calls.set(calls.get() + 1);
        seen.borrow_mut().push(p as usize);
    };
    let mut keys: Vec<FlowKey> = (0..200).map(key).collect();
    keys[7].dport = 81; // not a service: never prefetched
    let run = |plain: &mut FlowTable, pre: &mut FlowTable, keys: &[FlowKey], now: u64| {
        for chunk in keys.chunks(32) {
            let mut a = [LbVerdict::NotService; 32];
            let mut b = [LbVerdict::NotService; 32];
            t.process_burst(chunk, plain, now, &mut a[..chunk.len()]);
            t.process_burst_with(chunk, pre, now, &mut b[..chunk.len()], Some(pf));
            assert_eq!(a, b, "at {now}");
        }
    };
    for round in 0..3u64 {
        run(&mut plain, &mut pre, &keys, round);
    }
    assert_eq!(calls.get(), 0, "an L1-sized table is not prefetched");
    assert!(pre.footprint_bytes() <= 32 << 10);
    // Past 32 KiB, still far below 2 MiB: prefetched.
    let some: Vec<FlowKey> = (1000..1300).map(key).collect();
    run(&mut plain, &mut pre, &some, 3);
    assert!((33 << 10..2 << 20).contains(&pre.footprint_bytes()));
    assert!(calls.get() > 0, "an L2-sized table is prefetched");
    let more: Vec<FlowKey> = (1300..31_000).map(key).collect();
    run(&mut plain, &mut pre, &more, 3);
    assert!(pre.footprint_bytes() > 2 << 20, "{}", pre.footprint_bytes());
    calls.set(0);
    for round in 4..6u64 {
        run(&mut plain, &mut pre, &keys, round);
    }
    // Two rounds, each: every service packet's metadata (199), and its
    // entry where a tag matches (all of them unless a full set evicted the
    // flow while the table filled).
    assert!(
        (199 * 2 + 199 * 2 * 9 / 10..=199 * 4).contains(&calls.get()),
        "{} calls",
        calls.get()
    );
    let seen = seen.borrow();
    assert!(!seen.is_empty());
    for &p in seen.iter() {
        assert!(pre.holds(p as *const u8), "{p:#x} is not in the table");
        assert!(!plain.holds(p as *const u8));
    }
}
