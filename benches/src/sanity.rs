//! Whether a peer's run is a measurement.
//!
//! A peer that did not run properly still prints numbers: a `dpdk-testpmd`
//! whose forwarding core barely ran reported 0.0039 Mpps on `net_null`
//! (660 453 cycles/packet), and a ratio against that figure ("0.00×") says
//! nothing about us. Every peer run (`dpdk-testpmd`, `dpdk-test-acl`) goes
//! through one of these checks before its figures are used; a run that fails
//! one is reported as failed, with the reason, and nothing is derived from it.
//!
//! ```
//! use benches::sanity::{check_timed, testpmd_floor_mpps};
//! // 2 M packets in 1 s on net_null: a working run.
//! assert!(check_timed(2e6, 1.0, 1.02, testpmd_floor_mpps("net_null")).is_ok());
//! // 3 900 packets in 1 s: testpmd did not really forward.
//! assert!(check_timed(3900.0, 1.0, 1.02, testpmd_floor_mpps("net_null")).is_err());
//! ```

use serde::Serialize;

/// Whether a peer's figures are a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not run, or run and failed a check: its figures are absent and no
    /// ratio is computed against it (the result's `reason` says why).
    Failed,
}

/// Lowest rate, Mpps, `dpdk-testpmd` (any forwarding mode) reaches on
/// `device` when it works; 0 for devices without a known floor.
///
/// `net_null` hands out and takes back mbufs without touching them (no DMA,
/// no wire, no copy): testpmd forwards 18–80 Mpps on one core here (io;
/// macswap a little less). `net_pcap` with `infinite_rx` copies each frame out
/// of memory and writes it to `/dev/null` through libpcap: ≈ 10 Mpps. 0.5 Mpps
/// is 20–160× below those, ≈ 6 000 TSC cycles per packet at 3 GHz: a slow or
/// shared core does not fall that far, a forwarding core that did not run (or
/// a port that did not forward) does. A device fed by outside traffic (a NIC,
/// `net_af_packet`, `net_tap`) has no floor: its rate is the offered load's.
pub fn testpmd_floor_mpps(device: &str) -> f64 {
    if device.starts_with("net_null") || device.starts_with("net_pcap") {
        0.5
    } else {
        0.0
    }
}

/// Why a run that counted `packets` over a measuring interval of `lasted_s`
/// seconds, asked to last `asked_s`, is not a measurement of a device whose
/// working floor is `floor_mpps`; `Ok` if it is one.
///
/// The interval may run a little long (the commands that open and close it
/// are sent to a process that has to read them), not short, and not more
/// than twice as long plus a second: beyond that the machine stalled and the
/// packet counts do not belong to the interval we timed.
pub fn check_timed(
    packets: f64,
    asked_s: f64,
    lasted_s: f64,
    floor_mpps: f64,
) -> Result<(), String> {
    if !(packets.is_finite() && packets > 0.0) {
        return Err(format!(
            "no packets counted in the measuring interval ({packets})"
        ));
    }
    if !(lasted_s.is_finite() && lasted_s >= 0.9 * asked_s) {
        return Err(format!(
            "the measuring interval lasted {lasted_s:.3} s, shorter than the {asked_s} s asked"
        ));
    }
    if lasted_s > 2.0 * asked_s + 1.0 {
        return Err(format!(
            "the measuring interval lasted {lasted_s:.1} s for {asked_s} s asked: the machine stalled"
        ));
    }
    let mpps = packets / lasted_s / 1e6;
    if mpps < floor_mpps {
        return Err(format!(
            "{mpps:.4} Mpps is below {floor_mpps} Mpps, the floor of a working run on this device \
             ({packets} packets in {lasted_s:.2} s)"
        ));
    }
    Ok(())
}

/// Most cycles per packet a working `rte_acl` lookup takes here: the slowest
/// seen, best of scalar/sse/avx2, is ≈ 815 (fw1_10k) and scalar alone a few
/// thousand; 100 000 is far beyond any of them. Above it the lookups did not
/// have a core.
pub const ACL_PEER_MAX_CYCLES: f64 = 100_000.0;

/// Fewest cycles per packet any 5-tuple classification takes: less means the
/// peer's timing is broken (or nothing was classified).
pub const ACL_PEER_MIN_CYCLES: f64 = 1.0;

/// What `dpdk-test-acl` says about one run, from its summary line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestAclRun {
    pub iterations: u64,
    pub packets: u64,
    pub cycles_per_packet: f64,
}

/// Reads `dpdk-test-acl`'s summary line (the last one that has it):
/// `search_ip5tuples  @lcore 0: 2 iterations, 20320 pkts, 1 categories,
/// 8776316 cycles (0.00 sec), 431.91 cycles/pkt, 5672539.59 pkt/sec`.
pub fn parse_test_acl(text: &str) -> Option<TestAclRun> {
    let line = text
        .lines()
        .rfind(|l| l.contains("cycles/pkt") && l.contains("iterations"))?;
    // The number before each label.
    let before = |label: &str| -> Option<&str> {
        let (head, _) = line.split_once(label)?;
        head.split_whitespace().last()
    };
    Some(TestAclRun {
        iterations: before(" iterations")?.parse().ok()?,
        packets: before(" pkts")?.parse().ok()?,
        cycles_per_packet: before(" cycles/pkt")?.parse().ok()?,
    })
}

/// Why a `dpdk-test-acl` run asked for `iterations_asked` passes over a trace
/// of `trace_len` packets is not a measurement; `Ok` if it is one.
pub fn check_test_acl(
    run: &TestAclRun,
    iterations_asked: u64,
    trace_len: u64,
) -> Result<(), String> {
    if run.packets == 0 {
        return Err("no packets classified".into());
    }
    if run.iterations != iterations_asked {
        return Err(format!(
            "ran {} passes over the trace, {iterations_asked} asked",
            run.iterations
        ));
    }
    if run.packets != iterations_asked * trace_len {
        return Err(format!(
            "classified {} packets, {iterations_asked} × {trace_len} expected: it did not read the trace we measured",
            run.packets
        ));
    }
    let c = run.cycles_per_packet;
    if !(c.is_finite() && (ACL_PEER_MIN_CYCLES..=ACL_PEER_MAX_CYCLES).contains(&c)) {
        return Err(format!(
            "{c} cycles/packet is outside {ACL_PEER_MIN_CYCLES}–{ACL_PEER_MAX_CYCLES}, what a working lookup takes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NULL_FLOOR: f64 = 0.5;

    #[test]
    fn test_timed_normal_run() {
        assert_eq!(testpmd_floor_mpps("net_null0"), NULL_FLOOR);
        // 18 Mpps over a 1 s interval that took 1.05 s.
        assert_eq!(check_timed(18.9e6, 1.0, 1.05, NULL_FLOOR), Ok(()));
        // A device without a floor: any positive count over the interval.
        assert_eq!(
            check_timed(10.0, 3.0, 3.1, testpmd_floor_mpps("net_tap0")),
            Ok(())
        );
    }

    #[test]
    fn test_timed_zero_packets() {
        for p in [0.0, -5.0, f64::NAN] {
            let e = check_timed(p, 1.0, 1.0, NULL_FLOOR).unwrap_err();
            assert!(e.contains("no packets"), "{e}");
        }
        // Even where there is no floor.
        assert!(check_timed(0.0, 1.0, 1.0, 0.0).is_err());
    }

    #[test]
    fn test_timed_far_below_floor() {
        // The run of issue 19: 0.0039 Mpps on net_null.
        let e = check_timed(3_900.0, 1.0, 1.0, NULL_FLOOR).unwrap_err();
        assert!(e.contains("below 0.5 Mpps"), "{e}");
        // Just under the floor fails too; just over passes.
        assert!(check_timed(0.49e6, 1.0, 1.0, NULL_FLOOR).is_err());
        assert!(check_timed(0.51e6, 1.0, 1.0, NULL_FLOOR).is_ok());
    }

    #[test]
    fn test_timed_interval_not_as_asked() {
        let e = check_timed(10e6, 1.0, 0.5, NULL_FLOOR).unwrap_err();
        assert!(e.contains("shorter"), "{e}");
        let e = check_timed(10e6, 1.0, 3.5, NULL_FLOOR).unwrap_err();
        assert!(e.contains("stalled"), "{e}");
        assert!(check_timed(10e6, 3.0, 3.4, NULL_FLOOR).is_ok());
    }

    /// Lines as dpdk-test-acl 22.11 prints them (`--verbose=1`).
    const TEST_ACL_OUT: &str = "\
rte_acl_build(3) finished with 0
search_ip5tuples_once(1, 256, scalar) returns 10160
search_ip5tuples_once(1, 256, scalar) returns 10160
search_ip5tuples  @lcore 0: 2 iterations, 20320 pkts, 1 categories, 8776316 cycles (0.00 sec), 431.91 cycles/pkt, 5672539.59 pkt/sec
";

    #[test]
    fn test_acl_normal_run() {
        let r = parse_test_acl(TEST_ACL_OUT).unwrap();
        assert_eq!(
            r,
            TestAclRun {
                iterations: 2,
                packets: 20_320,
                cycles_per_packet: 431.91
            }
        );
        assert_eq!(check_test_acl(&r, 2, 10_160), Ok(()));
        assert_eq!(parse_test_acl("EAL: error\nno summary"), None);
    }

    #[test]
    fn test_acl_zero_packets() {
        let r = TestAclRun {
            iterations: 2,
            packets: 0,
            cycles_per_packet: 0.0,
        };
        assert!(check_test_acl(&r, 2, 10_160)
            .unwrap_err()
            .contains("no packets"));
    }

    #[test]
    fn test_acl_far_outside_plausible_cost() {
        let slow = TestAclRun {
            iterations: 2,
            packets: 20_320,
            cycles_per_packet: 660_453.0,
        };
        assert!(check_test_acl(&slow, 2, 10_160)
            .unwrap_err()
            .contains("outside"));
        let broken_clock = TestAclRun {
            cycles_per_packet: 0.0,
            ..slow
        };
        assert!(check_test_acl(&broken_clock, 2, 10_160).is_err());
    }

    #[test]
    fn test_acl_not_the_run_asked() {
        let r = parse_test_acl(TEST_ACL_OUT).unwrap();
        // Fewer passes than asked, or another trace length.
        assert!(check_test_acl(&r, 5, 10_160)
            .unwrap_err()
            .contains("passes"));
        assert!(check_test_acl(&r, 2, 10_000).unwrap_err().contains("trace"));
    }
}
