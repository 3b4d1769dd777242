//! Health checks and the slow path on DPDK, where the kernel does not own the
//! port: `dpgw run` with `io = "dpdk"` on a `net_af_packet` vdev bound to the
//! gateway's veth in the health-check topology (`health_netns.rs`). ARP for
//! the VTEP, the next hop's resolution and the in-band HTTP probes all leave
//! through worker 0's DPDK TX queue (`punt::Inject`); their answers are
//! punted from the DPDK RX path. A backend whose server stops goes down,
//! and comes back when it restarts; the clients' connections avoid it.
//!
//! Needs root and `ip netns` (and DPDK, `--features dpdk`): `#[ignore]`d, run
//! by `scripts/test.sh` as root.
#![cfg(feature = "dpdk")]

mod health_support;

use std::time::Duration;

use ctl::Health;
use health_support::*;

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root (with --features dpdk)"]
fn dpdk_health_checks_and_slow_path_through_the_workers() {
    require_root_netns();
    let mut topo = build_topology("dh");
    let cfg = config(&topo, &http_check());
    let prefix = format!("dpgw-dh-{}", std::process::id());
    // The same configuration on DPDK: the veth through net_af_packet.
    let dpdk = format!(
        "[dataplane]\nworkers = 2\nio = \"dpdk\"\nno_pin = true\n\
         [dpdk]\neal_args = [\"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-telemetry\", \
         \"--file-prefix={prefix}\", \"--vdev=net_af_packet0,iface=g0,qpairs=2\"]\n\
         rx_desc = 512\ntx_desc = 512\nmbufs = 8191\nmbuf_cache = 32\n"
    );
    let rest = cfg
        .split_once("[gateway]")
        .map(|(_, r)| format!("[gateway]{r}"))
        .unwrap();
    // DPDK's net_af_packet reads frames without the kernel's checksum
    // state: a forwarded frame whose checksum the sender left to offload
    // (veth default) would reach the backends with a partial checksum. The
    // router computes it instead (a NIC on the wire always carries full
    // checksums; dpgw's own AF_PACKET backend completes them itself).
    topo.rt.sh("ethtool -K r-g tx off >/dev/null");
    start_dpgw(&mut topo, &format!("{dpdk}{rest}"));
    let sock = topo.sock();
    for i in 0..3 {
        wait_health(&topo, i, Health::Healthy, Duration::from_secs(10));
    }
    let fall_window = Duration::from_millis(u64::from(INTERVAL_MS * FALL) + 1000);
    let rise_window = Duration::from_millis(u64::from(INTERVAL_MS * RISE) + 1000);
    // Clients reach all three backends.
    let before = names(&timed(&topo, 1.5, 0.02));
    assert!(
        (1..=3).all(|i| before.contains_key(&format!("backend{i}"))),
        "{before:?} {:?}\n{}",
        stats(&sock).total,
        topo.log()
    );
    topo.stop_server(0);
    let took = wait_health(&topo, 0, Health::Unhealthy, fall_window);
    let after = names(&timed(&topo, 1.5, 0.02));
    assert!(
        !after.contains_key("backend1")
            && after.contains_key("backend2")
            && after.contains_key("backend3"),
        "{after:?}"
    );
    topo.start_server(0);
    let back = wait_health(&topo, 0, Health::Healthy, rise_window);
    let again = names(&timed(&topo, 1.5, 0.02));
    assert!(again.contains_key("backend1"), "{again:?}");
    let s = stats(&sock);
    assert!(
        s.total.punted > 0,
        "answers were punted from the DPDK RX path"
    );
    println!("dpdk: down after {took:?}, back after {back:?}; before {before:?} after {after:?}");
}
