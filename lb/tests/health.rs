//! Health in the snapshot: unhealthy backends take no new flows; their pinned
//! flows move (`rehome`) or stay (`keep`); unknown counts as healthy; all
//! unhealthy → no backend and the service reports itself unhealthy.

use std::net::IpAddr;

use lb::flow_table::{FlowTable, FlowTableConfig};
use lb::{
    BackendSpec, FlowKey, Health, HealthKind, HealthMap, HealthSpec, LbTables, OnDown, Proto,
    ServiceSpec, Services,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const B: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

fn services(on_down: OnDown) -> Services {
    let spec = ServiceSpec {
        health: Some(HealthSpec {
            kind: HealthKind::Tcp,
            on_down,
            ..HealthSpec::default()
        }),
        table_size: 251,
        backends: B.iter().map(|b| BackendSpec::new(ip(b))).collect(),
        ..ServiceSpec::new("web", ip("10.96.0.1"), 80, Proto::Tcp)
    };
    Services::from_specs([spec]).unwrap()
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        vni: 1,
        src: u128::from(0x0a01_0000 + i),
        dst: u128::from(0x0a60_0001u32),
        sport: 1024 + (i % 50000) as u16,
        dport: 80,
        proto: 6,
        v6: false,
    }
}

fn pick_all(t: &LbTables, flows: &mut FlowTable, n: u32) -> Vec<Option<IpAddr>> {
    let svc = t.service_by_name("web").unwrap();
    (0..n)
        .map(|i| {
            let k = key(i);
            t.select(svc, &k, lb::flow_hash(&k), flows, 0)
                .map(|s| s.backend.ip())
        })
        .collect()
}

fn map(entries: &[(&str, Health)]) -> HealthMap {
    entries
        .iter()
        .map(|(b, h)| (("web".to_string(), ip(b)), *h))
        .collect()
}

#[test]
fn test_unhealthy_rehome_and_keep() {
    for on_down in [OnDown::Rehome, OnDown::Keep] {
        let s = services(on_down);
        let t0 = LbTables::rebuild_with_health(&LbTables::empty(), &s, &HealthMap::new()).unwrap();
        assert!(t0
            .service(t0.service_by_name("web").unwrap())
            .unwrap()
            .healthy());
        let mut flows = FlowTable::new(FlowTableConfig::default());
        let before = pick_all(&t0, &mut flows, 600);
        assert!(before.iter().any(|b| *b == Some(ip(B[0]))));
        // Backend 0 unhealthy, 1 healthy, 2 unknown.
        let m = map(&[(B[0], Health::Unhealthy), (B[1], Health::Healthy)]);
        let t1 = LbTables::rebuild_with_health(&t0, &s, &m).unwrap();
        let after = pick_all(&t1, &mut flows, 600);
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(ip(B[0])) {
                match on_down {
                    OnDown::Rehome => assert_ne!(*a, Some(ip(B[0]))),
                    OnDown::Keep => assert_eq!(a, b),
                }
            } else {
                // Flows of the other backends did not move.
                assert_eq!(a, b);
            }
        }
        // New flows avoid it either way.
        let mut fresh = FlowTable::new(FlowTableConfig::default());
        let new = pick_all(&t1, &mut fresh, 600);
        assert!(new.iter().all(|b| b.is_some() && *b != Some(ip(B[0]))));
        assert!(new.contains(&Some(ip(B[2]))), "unknown counts as healthy");
        // All unhealthy: no backend, the service reports itself unhealthy.
        let m = map(&[
            (B[0], Health::Unhealthy),
            (B[1], Health::Unhealthy),
            (B[2], Health::Unhealthy),
        ]);
        let t2 = LbTables::rebuild_with_health(&t1, &s, &m).unwrap();
        let svc = t2.service(t2.service_by_name("web").unwrap()).unwrap();
        assert!(!svc.healthy());
        let mut fresh = FlowTable::new(FlowTableConfig::default());
        assert!(pick_all(&t2, &mut fresh, 50).iter().all(Option::is_none));
    }
}

#[test]
fn test_health_ignored_without_checks() {
    let mut s = services(OnDown::Rehome);
    s.set_health("web", None).unwrap();
    let m = map(&[(B[0], Health::Unhealthy)]);
    let t = LbTables::rebuild_with_health(&LbTables::empty(), &s, &m).unwrap();
    let mut flows = FlowTable::new(FlowTableConfig::default());
    assert!(pick_all(&t, &mut flows, 300).contains(&Some(ip(B[0]))));
}

#[test]
fn test_service_validation_names_health_keys() {
    let mut s = services(OnDown::Rehome);
    let bad = HealthSpec {
        kind: HealthKind::Http,
        ..HealthSpec::default()
    };
    let udp = ServiceSpec {
        health: Some(bad.clone()),
        ..ServiceSpec::new("dns", ip("10.96.0.53"), 53, Proto::Udp)
    };
    let e = s.add_service(udp).unwrap_err().to_string();
    assert!(e.contains("health.kind") && e.contains("dns"), "{e}");
    let e = s
        .set_health(
            "web",
            Some(HealthSpec {
                rise: 0,
                ..bad.clone()
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("health.rise"), "{e}");
    // Nothing half-applied.
    assert_eq!(
        s.get("web").unwrap().health.as_ref().unwrap().kind,
        HealthKind::Tcp
    );
    let mut vx = ServiceSpec::new("vx", ip("10.96.0.9"), 80, Proto::Tcp);
    vx.encap = lb::EncapKind::Vxlan;
    vx.health = Some(HealthSpec {
        kind: HealthKind::Tcp,
        ..HealthSpec::default()
    });
    let e = s.add_service(vx).unwrap_err().to_string();
    assert!(e.contains("health.vni"), "{e}");
}
