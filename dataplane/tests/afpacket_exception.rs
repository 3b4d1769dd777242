//! The exception path on real traffic: a Linux host in another namespace ARPs
//! for, pings (IPv4 and IPv6, with neighbour discovery) the gateway's VTEP
//! address served by `dpgw run`'s AF_PACKET code path, and the gateway resolves
//! its configured next hop by ARP. Needs root and `ip netns`: `#[ignore]`d, run by
//! `scripts/test.sh` as root (`-- --ignored`); asked for without root, it fails.

mod afpacket_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afpacket_support::{exception_hook_wired, ping, require_root_netns, Netns};
use dataplane::config::Config;
use dataplane::io::afpacket::if_mac;
use dataplane::punt::NextHop;

const GW_MAC: &str = "02:00:00:00:00:01";

#[test]
#[ignore = "needs root and ip netns: run by scripts/test.sh as root"]
fn exception_path_answers_arp_ping_ndp_and_resolves_next_hop() {
    require_root_netns();
    assert!(
        exception_hook_wired(),
        "the Decap stage must punt ARP/ICMP/ND for our addresses (counted as `punted`)"
    );
    let gw = Netns::new("exc-gw");
    let host = Netns::new("exc-host");
    gw.sh(&format!(
        "ip link add name gw0 type veth peer name h0 netns {}",
        host.name
    ));
    gw.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link set gw0 up");
    host.sh(
        "ip link set h0 up && ip addr add 198.18.0.2/24 dev h0 && ip -6 addr add fd00:18::2/64 dev h0 nodad",
    );
    let host_mac = {
        gw.enter();
        // Only `gw0` is visible here; read the host side's MAC through `ip`.
        let out = host.sh("cat /sys/class/net/h0/address");
        dataplane::config::parse_mac(out.trim()).unwrap()
    };
    assert_ne!(
        if_mac("gw0").unwrap(),
        dataplane::config::parse_mac(GW_MAC).unwrap()
    );

    // dpgw answers with `local_mac`, not the veth's own address: promiscuous
    // mode is what lets it see frames for that MAC.
    let cfg_text = format!(
        "[dataplane]\nworkers = 2\nio = \"afpacket\"\nno_pin = true\n\
         [afpacket]\ninterfaces = [\"gw0\"]\nblock_size = 65536\nblock_count = 64\ntx_frames = 256\n\
         [gateway]\nvtep_ips = [\"198.18.0.1\", \"fd00:18::1\"]\nlocal_mac = \"{GW_MAC}\"\n\
         next_hop_ip = \"198.18.0.2\"\nnext_hop_refresh_s = 5\n"
    );
    let cfg = Config::parse(&cfg_text).unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let shared = dataplane::runner::prepare(&cfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, shared2) = (stop.clone(), shared.clone());
    let runner = std::thread::spawn(move || {
        dataplane::runner::run_prepared(
            &cfg,
            &dataplane::runner::RunOptions::default(),
            stop2,
            shared2,
        )
        .map(|(s, _)| s)
    });

    // The next hop (the Linux host) is resolved by ARP.
    let t0 = Instant::now();
    loop {
        let nh = NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire));
        if nh == NextHop::Learned(host_mac) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "next hop not resolved: {nh:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let ping4 = ping(&host, "198.18.0.1", 10);
    let neigh4 = host.sh("ip neigh show 198.18.0.1 dev h0");
    let ping6 = ping(&host, "fd00:18::1", 10);
    let neigh6 = host.sh("ip -6 neigh show fd00:18::1 dev h0");
    // Nobody answers for an address that is not ours.
    let ping_other = ping(&host, "198.18.0.9", 2);

    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap().expect("afpacket run");
    assert!(ping4, "no IPv4 echo reply\n{}", summary.human());
    assert!(neigh4.contains(GW_MAC), "ARP entry: {neigh4}");
    assert!(ping6, "no ICMPv6 echo reply\n{}", summary.human());
    assert!(neigh6.contains(GW_MAC), "ND entry: {neigh6}");
    assert!(!ping_other);
    assert!(summary.conserved(), "{}", summary.human());
    // The ARP frames, echo requests and solicitations were punted.
    assert!(summary.punted >= 4, "{}", summary.human());
}
