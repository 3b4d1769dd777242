//! Flow-table admission under a flood and connection ends (issue 16).
//!
//! 10 000 established flows (two packets each: promoted to the protected
//! segment) go through a 64 Ki-entry table; then the backend set changes (a
//! backend is added, so Maglev would now send some of those flows elsewhere)
//! and a flood of 10 M one-packet flows passes (a few seconds in the test
//! profile), with a packet of an established flow every 64 flood packets —
//! far too rarely for a plain LRU to keep them (each set sees ~78 new flows
//! between two packets of one established flow). Every established flow must
//! keep its backend afterwards (0 moved), and only probationary entries may
//! have been evicted.

use std::net::{IpAddr, Ipv4Addr};

use lb::{
    build, tcp_flags, BackendSpec, BackendState, FlowKey, FlowTable, FlowTableConfig, LbTables,
    LbVerdict, Proto, ServiceSpec, Services,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn services(n: u8) -> Services {
    let mut s = Services::new();
    let mut spec = ServiceSpec::new("web", VIP.into(), 80, Proto::Tcp);
    spec.table_size = 4099;
    s.add_service(spec).unwrap();
    for i in 1..=n {
        s.add_backend(
            "web",
            BackendSpec::new(IpAddr::V4(Ipv4Addr::new(192, 168, 0, i))),
        )
        .unwrap();
    }
    s
}

fn key(src: u32, sport: u16) -> FlowKey {
    FlowKey {
        vni: 1,
        src: u128::from(src),
        dst: u128::from(u32::from(VIP)),
        sport,
        dport: 80,
        proto: 6,
        v6: false,
    }
}

fn established(i: u32) -> FlowKey {
    key(0x0a00_0000 + i, 40000 + (i % 20000) as u16)
}

/// Backend address chosen for each of `keys` (one burst at a time).
fn send(t: &LbTables, ft: &mut FlowTable, keys: &[FlowKey], flags: &[u8], now: u64) -> Vec<u128> {
    let mut out = vec![LbVerdict::NotService; keys.len()];
    let mut got = Vec::with_capacity(keys.len());
    for (c, o) in keys.chunks(32).zip(out.chunks_mut(32)) {
        let f = if flags.is_empty() {
            &[][..]
        } else {
            &flags[..c.len()]
        };
        t.process_burst_flags_with(c, f, ft, now, o, None::<fn(*const u8)>);
    }
    for o in &out {
        match o {
            LbVerdict::Forward { svc, backend, .. } => {
                got.push(t.backend_ref(*svc, *backend).unwrap().addr)
            }
            v => panic!("not forwarded: {v:?}"),
        }
    }
    got
}

fn table(capacity: usize) -> FlowTable {
    FlowTable::new(FlowTableConfig {
        capacity,
        tcp_timeout: 300_000,
        udp_timeout: 30_000,
        fin_timeout: 10_000,
    })
}

#[test]
fn flood_of_one_packet_flows_moves_no_established_flow() {
    let flood: u32 = 10_000_000;
    let mut s = services(10);
    let t = build(&s).unwrap();
    let mut ft = table(1 << 16);
    let est: Vec<FlowKey> = (0..10_000).map(established).collect();
    let first = send(&t, &mut ft, &est, &[], 1);
    let again = send(&t, &mut ft, &est, &[], 2);
    assert_eq!(first, again);
    assert_eq!(ft.stats().promoted, 10_000);
    // A new backend: Maglev now maps about 1/11 of the flows to it, so an
    // evicted established flow would show up as moved.
    s.add_backend(
        "web",
        BackendSpec::new(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 99))),
    )
    .unwrap();
    let t2 = LbTables::rebuild(&t, &s).unwrap();
    let would_move = {
        let mut fresh = table(1 << 16);
        let re = send(&t2, &mut fresh, &est, &[], 3);
        re.iter().zip(&first).filter(|(a, b)| a != b).count()
    };
    assert!(
        would_move > 500,
        "the new backend takes a share: {would_move}"
    );
    // The flood: one SYN each from distinct sources, interleaved with the
    // established flows' packets every 64 flood packets.
    let before = ft.stats();
    let mut burst = Vec::with_capacity(32);
    let mut est_i = 0usize;
    let mut now = 10u64;
    for i in 0..flood {
        burst.push(key(0xc000_0000 + i, (i % 60000) as u16 + 1024));
        if i % 64 == 0 {
            burst.push(est[est_i % est.len()]);
            est_i += 1;
        }
        if burst.len() >= 32 {
            let flags: Vec<u8> = burst.iter().map(|_| 0).collect();
            send(&t2, &mut ft, &burst, &flags, now);
            burst.clear();
            now += 1;
        }
    }
    let after = ft.stats();
    let evicted = after.evictions - before.evictions;
    assert!(
        evicted as u32 > flood / 2,
        "the flood churned the table: {evicted}"
    );
    assert_eq!(after.evicted_protected, 0, "{after:?}");
    assert_eq!(after.evicted_probationary, after.evictions);
    let last = send(&t2, &mut ft, &est, &[], now + 1);
    let moved = last.iter().zip(&first).filter(|(a, b)| a != b).count();
    assert_eq!(moved, 0, "established flows moved by a {flood}-flow flood");
}

#[test]
fn without_the_second_packet_a_flood_does_evict() {
    // The control: flows seen once (never promoted) are fair game.
    let t = build(&services(4)).unwrap();
    let mut ft = table(1 << 10);
    let once: Vec<FlowKey> = (0..512).map(established).collect();
    send(&t, &mut ft, &once, &[], 1);
    let flood: Vec<FlowKey> = (0..20_000).map(|i| key(0xc000_0000 + i, 1024)).collect();
    send(&t, &mut ft, &flood, &[], 2);
    let live: Vec<FlowKey> = ft.iter(3).map(|f| f.key).collect();
    let kept = once.iter().filter(|k| live.contains(k)).count();
    assert!(
        kept < 50,
        "{kept} of 512 one-packet flows survived a 20k flood"
    );
}

#[test]
fn rst_ends_fin_shortens_syn_reselects() {
    let mut s = services(4);
    let t = build(&s).unwrap();
    let mut ft = table(1 << 12);
    let k = established(7);
    let b = send(&t, &mut ft, &[k], &[tcp_flags::SYN], 1)[0];
    assert_eq!(ft.live(1), 1);
    // RST: forwarded to the flow's backend, entry gone at once.
    assert_eq!(
        send(&t, &mut ft, &[k], &[tcp_flags::RST | tcp_flags::ACK], 2)[0],
        b
    );
    assert_eq!(ft.live(2), 0);
    assert_eq!(ft.stats().reset, 1);
    // A RST for an unknown flow stores nothing.
    send(&t, &mut ft, &[established(8)], &[tcp_flags::RST], 2);
    assert_eq!(ft.live(2), 0);
    assert_eq!(ft.stats().reset, 2);

    // FIN: the timeout becomes fin_timeout (10 s), also after later ACKs.
    send(&t, &mut ft, &[k], &[tcp_flags::SYN], 10);
    send(&t, &mut ft, &[k], &[tcp_flags::ACK], 11);
    send(&t, &mut ft, &[k], &[tcp_flags::FIN | tcp_flags::ACK], 1_000);
    send(&t, &mut ft, &[k], &[tcp_flags::ACK], 2_000);
    assert_eq!(ft.stats().closed, 1);
    assert_eq!(ft.live(2_000 + 10_000), 1, "alive at fin_timeout");
    assert_eq!(ft.live(2_000 + 10_001), 0, "gone after fin_timeout");
    // Without a FIN it lives tcp_timeout.
    let k2 = established(9);
    send(&t, &mut ft, &[k2], &[tcp_flags::SYN], 20_000);
    assert_eq!(ft.live(20_000 + 200_000), 1);

    // SYN on an entry whose backend is draining: re-selected; an ACK keeps it.
    let k3 = established(11);
    let b3 = send(&t, &mut ft, &[k3], &[tcp_flags::SYN], 30_000)[0];
    let ip = IpAddr::V4(Ipv4Addr::from(b3 as u32));
    s.set_state("web", ip, BackendState::Draining).unwrap();
    let t2 = LbTables::rebuild(&t, &s).unwrap();
    assert_eq!(
        send(&t2, &mut ft, &[k3], &[tcp_flags::ACK], 30_001)[0],
        b3,
        "draining keeps"
    );
    assert_eq!(
        send(
            &t2,
            &mut ft,
            &[k3],
            &[tcp_flags::SYN | tcp_flags::ACK],
            30_002
        )[0],
        b3,
        "a SYN-ACK is not a new connection"
    );
    let rehomed = ft.stats().rehomed;
    let nb = send(&t2, &mut ft, &[k3], &[tcp_flags::SYN], 30_003)[0];
    assert_ne!(nb, b3, "a new SYN leaves the draining backend");
    assert_eq!(ft.stats().rehomed, rehomed + 1);
    assert_eq!(
        send(&t2, &mut ft, &[k3], &[tcp_flags::ACK], 30_004)[0],
        nb,
        "and sticks"
    );
}
