//! Finds the system DPDK with pkg-config, compiles the C shim with DPDK's cflags,
//! and generates bindings for the allowlisted part of the API with bindgen.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Functions of the DPDK API (real exported symbols) that the bindings cover.
const FUNCTIONS: &[&str] = &[
    "rte_eal_init",
    "rte_eal_cleanup",
    "rte_eal_process_type",
    "rte_strerror",
    "rte_socket_id",
    "rte_lcore_count",
    "rte_get_main_lcore",
    "rte_thread_register",
    "rte_thread_unregister",
    "rte_pktmbuf_pool_create",
    "rte_pktmbuf_free_bulk",
    "rte_mempool_lookup",
    "rte_mempool_avail_count",
    "rte_mempool_in_use_count",
    "rte_mempool_free",
    "rte_eth_dev_count_avail",
    "rte_eth_find_next_owned_by",
    "rte_eth_dev_is_valid_port",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_get_name_by_port",
    "rte_eth_dev_socket_id",
    "rte_eth_dev_info_get",
    "rte_eth_dev_configure",
    "rte_eth_dev_adjust_nb_rx_tx_desc",
    "rte_eth_rx_queue_setup",
    "rte_eth_tx_queue_setup",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_dev_close",
    "rte_eth_link_get_nowait",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_eth_promiscuous_enable",
    "rte_eth_macaddr_get",
    // The shim: real symbols for static-inline functions and macros.
    "dpdk_sys_.*",
];

const TYPES: &[&str] = &[
    "rte_mbuf",
    "rte_mempool",
    "rte_eth_conf",
    "rte_eth_dev_info",
    "rte_eth_rxconf",
    "rte_eth_txconf",
    "rte_eth_link",
    "rte_eth_stats",
    "rte_ether_addr",
    "rte_proc_type_t",
];

const VARS: &[&str] = &[
    "RTE_MAX_ETHPORTS",
    "RTE_MAX_LCORE",
    "RTE_MAX_QUEUES_PER_PORT",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_MEMPOOL_CACHE_MAX_SIZE",
    "RTE_MEMPOOL_NAMESIZE",
    "RTE_ETH_NAME_MAX_LEN",
    "RTE_ETH_LINK_UP",
    "RTE_ETH_LINK_DOWN",
    "RTE_ETH_LINK_FULL_DUPLEX",
    "RTE_ETH_SPEED_NUM_NONE",
    "RTE_ETH_SPEED_NUM_UNKNOWN",
    "RTE_ETH_DEV_NO_OWNER",
    "SOCKET_ID_ANY",
    "LCORE_ID_ANY",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Link lines (and the version check) through the pkg-config crate: it emits
    // `rustc-link-lib=rte_eal` etc. for the shared libraries pkg-config lists.
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| panic!("system DPDK not found via pkg-config (libdpdk): {e}"));

    // The raw cflags: besides -I they contain `-include rte_config.h` and
    // `-march=...`, which the pkg-config crate does not return.
    let cflags = pkg_config_cflags();

    let mut cc = cc::Build::new();
    cc.file("shim/shim.c")
        .include("shim")
        .opt_level(3)
        .warnings(true);
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.compile("dpdk_sys_shim");

    let mut builder = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&cflags)
        .clang_arg("-Ishim")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_recursively(true)
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        // rte_mempool's internals are never touched from Rust: keep it opaque
        // so its many cache-aligned members don't have to be laid out.
        .opaque_type("rte_mempool")
        .opaque_type("rte_mempool_.*")
        .opaque_type("rte_eth_dev_portconf")
        .opaque_type("rte_eth_switch_info");
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    let bindings = builder
        .generate()
        .expect("bindgen failed on the DPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");

    // Exposed to dependents' build scripts as DEP_DPDK_VERSION / DEP_DPDK_INCLUDE.
    println!("cargo:version={}", lib.version);
    if let Some(inc) = lib.include_paths.first() {
        println!("cargo:include={}", inc.display());
    }
}

fn pkg_config_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running {pkg_config} --cflags libdpdk: {e}"));
    assert!(
        out.status.success(),
        "{pkg_config} --cflags libdpdk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pkg-config output is not UTF-8")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
