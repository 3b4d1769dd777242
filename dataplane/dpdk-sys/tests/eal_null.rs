//! Smoke test of the raw bindings and the shim: EAL without hugepages, a
//! `net_null` vdev (loaded as a driver plugin by the shared EAL), one queue pair,
//! rx and tx bursts, and the mempool's in-use count back to zero afterwards.
//! One test fn: the EAL can be initialised only once per process.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr;

use dpdk_sys::*;

fn errno_str() -> String {
    // SAFETY: rte_errno is the calling thread's TLS variable; rte_strerror returns
    // a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(rte_strerror(dpdk_sys_rte_errno())) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn eal_null_rx_tx() {
    let prefix = format!("dpdk-sys-test-{}", std::process::id());
    let args: Vec<CString> = [
        "dpdk-sys-test",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--no-telemetry",
        "--log-level=lib.eal:error",
        "-l",
        "0",
        "--vdev=net_null0",
    ]
    .iter()
    .map(|s| CString::new(*s).unwrap())
    .chain([CString::new(format!("--file-prefix={prefix}")).unwrap()])
    .collect();
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    // SAFETY: argv points to NUL-terminated strings that outlive the call (EAL may
    // permute the pointer array, which we own); called once in this process.
    let rc = unsafe { rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    assert!(rc >= 0, "rte_eal_init: {}", errno_str());

    // SAFETY: the EAL is initialised.
    let nports = unsafe { rte_eth_dev_count_avail() };
    assert_eq!(
        nports, 1,
        "net_null0 was not probed (driver plugin not loaded?)"
    );

    let name = CString::new("dpdk_sys_test_pool").unwrap();
    // SAFETY: EAL initialised, name is NUL-terminated.
    let pool = unsafe {
        rte_pktmbuf_pool_create(
            name.as_ptr(),
            1023,
            0,
            0,
            RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            SOCKET_ID_ANY,
        )
    };
    assert!(!pool.is_null(), "pool: {}", errno_str());

    let conf = rte_eth_conf::default();
    // SAFETY: port 0 exists (count_avail == 1), conf is a valid zeroed config,
    // the rx/tx confs may be NULL (driver defaults) and the pool is live.
    unsafe {
        assert_eq!(rte_eth_dev_configure(0, 1, 1, &conf), 0);
        assert_eq!(
            rte_eth_rx_queue_setup(0, 0, 128, SOCKET_ID_ANY as u32, ptr::null(), pool),
            0
        );
        assert_eq!(
            rte_eth_tx_queue_setup(0, 0, 128, SOCKET_ID_ANY as u32, ptr::null()),
            0
        );
        assert_eq!(rte_eth_dev_start(0), 0);
    }

    let mut pkts = [ptr::null_mut::<rte_mbuf>(); 32];
    // SAFETY: the port is started, queue 0 is set up and used by this thread only,
    // pkts has room for 32 pointers.
    let n = unsafe { dpdk_sys_rte_eth_rx_burst(0, 0, pkts.as_mut_ptr(), 32) };
    assert_eq!(n, 32, "net_null always has packets");
    // SAFETY: the pool is live.
    assert_eq!(unsafe { rte_mempool_in_use_count(pool) }, 32);
    for &m in &pkts {
        // SAFETY: m is a freshly received single-segment mbuf we own.
        let (len, head) = unsafe { ((*m).data_len, dpdk_sys_rte_pktmbuf_headroom(m)) };
        assert_eq!(len, 64, "net_null default packet size");
        assert_eq!(u32::from(head), RTE_PKTMBUF_HEADROOM);
    }
    // SAFETY: as above; the tx queue takes ownership of the sent mbufs.
    let sent = unsafe { dpdk_sys_rte_eth_tx_burst(0, 0, pkts.as_mut_ptr(), 32) };
    assert_eq!(sent, 32);
    // SAFETY: the pool is live; net_null frees transmitted mbufs immediately.
    assert_eq!(unsafe { rte_mempool_in_use_count(pool) }, 0);

    let mut stats = rte_eth_stats::default();
    // SAFETY: port 0 is valid, stats is a writable struct.
    unsafe { assert_eq!(rte_eth_stats_get(0, &mut stats), 0) };
    assert_eq!(stats.ipackets, 32);
    assert_eq!(stats.opackets, 32);

    // SAFETY: no mbufs or queues are used any more.
    unsafe {
        assert_eq!(rte_eth_dev_stop(0), 0);
        assert_eq!(rte_eth_dev_close(0), 0);
        rte_eal_cleanup();
    }
    // The runtime directory (as root; elsewhere it is under XDG_RUNTIME_DIR).
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}
