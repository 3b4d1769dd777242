//! A worker never waits for the control side's telemetry, and its counters
//! still add up.
//!
//! The test holds the lock of the worker's telemetry slot (as the control
//! thread does while it copies it for `stats` or `/metrics`) for two
//! seconds while the worker, through the real `run_worker` loop, processes
//! traffic under six snapshots published one after another. Each snapshot
//! names its matching ACL rule and its only backend differently, so a count
//! attributed with the wrong snapshot shows up under the wrong name.
//!
//! What is promised and checked:
//!
//! * during the hold the worker takes every snapshot and processes every
//!   packet (its published `rx` reaches the total, and its generation the
//!   last one) — before, it blocked at the first snapshot change;
//! * after the hold its counts reach the slot without the worker exiting;
//! * and they are exact: each rule id and backend has precisely the packets
//!   of its snapshot, the service all of them, nothing is counted twice
//!   (also not by the final hand-off at exit), and `rx == tx + drops`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::Config;
use dataplane::engine::{run_worker, Shared};
use dataplane::io::buf::HeapBuf;
use dataplane::io::{Burst, Queue};
use dataplane::stats::Telemetry;
use dataplane::tables::Tables;

const PHASES: usize = 6;
const PER_PHASE: u64 = 20_000;
const TOTAL: u64 = PHASES as u64 * PER_PHASE;
/// A phase's packets are released this long after the previous phase's,
/// so the snapshot changes are spread over the hold.
const PHASE_GAP: Duration = Duration::from_millis(250);
const HOLD: Duration = Duration::from_secs(2);
/// Length of the inner frame (what the service counters count in bytes).
const INNER_LEN: usize = 128;

fn matching_rule(phase: usize) -> u32 {
    100 + phase as u32
}

fn other_rule(phase: usize) -> u32 {
    200 + phase as u32
}

fn backend(phase: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1 + phase as u8))
}

/// The snapshot of `phase` (generation `phase + 1`): default-deny ACL whose
/// allow rule for the VIP and an unrelated deny rule swap places from one
/// phase to the next, and the service's only backend is the phase's own.
fn tables(phase: usize) -> Tables {
    let allow = format!(
        // Stateless: every packet is classified and counted (a stateful
        // allow, the default under `default = "deny"`, counts only the
        // packets that create a connection).
        "[[acl.rule]]\nid = {}\ndst = \"192.168.0.1/32\"\naction = \"allow\"\nstateful = false\n",
        matching_rule(phase)
    );
    let deny = format!(
        "[[acl.rule]]\nid = {}\ndst = \"172.31.0.0/16\"\naction = \"deny\"\n",
        other_rule(phase)
    );
    let (first, second) = if phase.is_multiple_of(2) {
        (allow, deny)
    } else {
        (deny, allow)
    };
    let text = format!(
        r#"[dataplane]
no_pin = true
acl_cache = 1024
[pcap]
input = ["x.pcap"]
[gateway]
vtep_ips = ["10.0.0.1"]
underlay_ips = ["10.0.0.1"]
[acl]
default = "deny"
{first}{second}
[[service]]
name = "web"
vip = "192.168.0.1"
port = 80
proto = "tcp"
encap = "ipip"
[[service.backend]]
ip = "{}"
"#,
        backend(phase)
    );
    let cfg = Config::parse(&text).unwrap();
    Tables::build(&cfg, phase as u64 + 1).unwrap()
}

/// A VXLAN frame carrying TCP `10.1.0.1:40000 → 192.168.0.1:80`.
fn frame() -> Vec<u8> {
    let mut inner = Vec::with_capacity(128);
    vxlan::build_inner_frame(
        &vxlan::InnerSpec {
            src_mac: [2, 0xaa, 0, 0, 0, 1],
            dst_mac: [2, 0xbb, 0, 0, 0, 1],
            src: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
            proto: 6,
            sport: 40000,
            dport: 80,
            ttl: 64,
            frame_len: INNER_LEN,
        },
        &mut inner,
    );
    let o = vxlan::Outer {
        src_mac: [2, 0xc1, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
        src_ip: IpAddr::V4(Ipv4Addr::new(172, 16, 0, 9)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        ttl: 64,
    };
    let mut f = vec![0u8; vxlan::vxlan_header_len(&o)];
    vxlan::emit_vxlan(&o, 50000, 4789, 100, &inner, &mut f);
    f.extend_from_slice(&inner);
    f
}

/// An in-memory queue that hands out `PER_PHASE` packets per phase and,
/// right after the last packet of a phase, publishes the next phase's
/// snapshot: the worker loads snapshots only between bursts, so every packet
/// of phase k is processed under snapshot k. It ends once `finish` is set.
struct PhasedQueue {
    shared: Arc<Shared>,
    next: std::vec::IntoIter<Tables>,
    frame: Vec<u8>,
    pool: Vec<HeapBuf>,
    phase: usize,
    in_phase: u64,
    start: Instant,
    finish: Arc<AtomicBool>,
}

impl Queue for PhasedQueue {
    type Pkt = HeapBuf;

    fn rx_burst(&mut self, burst: &mut Burst<HeapBuf>, max: usize) -> usize {
        if self.phase == PHASES || self.start.elapsed() < PHASE_GAP * self.phase as u32 {
            return 0;
        }
        let n = (max as u64).min(PER_PHASE - self.in_phase) as usize;
        for _ in 0..n {
            let mut b = self
                .pool
                .pop()
                .unwrap_or_else(|| HeapBuf::with_capacity(2048));
            b.load(&self.frame, 0);
            burst.push(b);
        }
        self.in_phase += n as u64;
        if self.in_phase == PER_PHASE {
            self.phase += 1;
            self.in_phase = 0;
            if let Some(t) = self.next.next() {
                self.shared.store_tables(Arc::new(t));
            }
        }
        n
    }

    fn tx_burst(&mut self, burst: &mut Burst<HeapBuf>) -> usize {
        let n = burst.len();
        self.pool.extend(burst.drain(..));
        n
    }

    fn free(&mut self, pkt: HeapBuf) {
        self.pool.push(pkt);
    }

    fn rx_done(&self) -> bool {
        self.phase == PHASES && self.finish.load(Ordering::Relaxed)
    }
}

fn counted(t: &Telemetry) -> u64 {
    t.services.get("web").map_or(0, |s| s.packets)
}

#[test]
fn telemetry_hand_off_never_blocks_the_worker() {
    let shared = Shared::new(tables(0), 1);
    let finish = Arc::new(AtomicBool::new(false));
    let queue = PhasedQueue {
        shared: shared.clone(),
        next: (1..PHASES).map(tables).collect::<Vec<_>>().into_iter(),
        frame: frame(),
        pool: Vec::new(),
        phase: 0,
        in_phase: 0,
        start: Instant::now(),
        finish: finish.clone(),
    };

    // The control side is busy with the worker's telemetry from the start.
    let held = shared.telemetry[0].lock().unwrap();
    let t0 = Instant::now();
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || run_worker(0, queue, shared, 32, None, None))
    };
    let published = &shared.published[0];
    let mut rx_seen = Vec::new();
    loop {
        let rx = published.rx.load(Ordering::Relaxed);
        if rx_seen.last() != Some(&rx) {
            rx_seen.push(rx);
        }
        // Hold for HOLD at least, and until the worker is through (a
        // loaded machine may be slow), but not forever.
        if (t0.elapsed() >= HOLD && rx == TOTAL) || t0.elapsed() > HOLD * 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let generation = shared.seen_generation[0].load(Ordering::Acquire);
    assert_eq!(
        rx_seen.last(),
        Some(&TOTAL),
        "the worker stalled while its telemetry was held (rx seen: {rx_seen:?}, generation {generation})"
    );
    assert_eq!(generation, PHASES as u64, "not every snapshot was taken");
    assert!(
        rx_seen.len() > 2,
        "rx did not advance step by step during the hold: {rx_seen:?}"
    );
    drop(held);

    // Released: the idle worker hands its counts over at its next try.
    let deadline = Instant::now() + Duration::from_secs(20);
    while counted(&shared.telemetry[0].lock().unwrap()) < TOTAL {
        assert!(Instant::now() < deadline, "telemetry never handed over");
        std::thread::sleep(Duration::from_millis(5));
    }

    finish.store(true, Ordering::Relaxed);
    let res = worker.join().unwrap();
    assert_eq!(res.stats.rx, TOTAL);
    assert_eq!(res.stats.tx, TOTAL, "drops: {:?}", res.stats.drops_named());
    assert_eq!(res.stats.rx, res.stats.tx + res.stats.total_drops());

    let tel = shared.telemetry[0].lock().unwrap().clone();
    assert_eq!(tel.services["web"].packets, TOTAL);
    assert_eq!(tel.services["web"].bytes, TOTAL * INNER_LEN as u64);
    assert_eq!(tel.services.len(), 1);
    for phase in 0..PHASES {
        assert_eq!(
            tel.rule_hits.get(&matching_rule(phase)),
            Some(&PER_PHASE),
            "rule hits of phase {phase}: {:?}",
            tel.rule_hits
        );
        assert_eq!(
            tel.rule_hits.get(&other_rule(phase)).copied().unwrap_or(0),
            0
        );
        assert_eq!(
            tel.backends
                .get(&("web".to_string(), backend(phase)))
                .map(|b| b.packets),
            Some(PER_PHASE),
            "backend of phase {phase}: {:?}",
            tel.backends
        );
    }
    assert_eq!(tel.rule_hits.values().sum::<u64>(), TOTAL);
    assert_eq!(tel.backends.values().map(|b| b.packets).sum::<u64>(), TOTAL);
    let c = tel.acl_cache;
    assert_eq!(c.hits + c.misses + c.bypassed, TOTAL, "{c:?}");
    assert_eq!(
        tel.burst_cycle_buckets.iter().sum::<u64>(),
        res.stats.bursts,
        "every burst timed once"
    );
}
