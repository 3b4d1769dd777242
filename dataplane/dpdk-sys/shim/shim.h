/*
 * Real symbols for DPDK's static-inline functions and macros, so Rust can call
 * them. Each wrapper is a one-line forward to the inline function of the same
 * name without the `dpdk_sys_` prefix; see the DPDK 22.11 API docs for semantics.
 */
#ifndef DPDK_SYS_SHIM_H
#define DPDK_SYS_SHIM_H

#include <stdint.h>

#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

uint16_t dpdk_sys_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t dpdk_sys_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *dpdk_sys_rte_pktmbuf_alloc(struct rte_mempool *mp);
int dpdk_sys_rte_pktmbuf_alloc_bulk(struct rte_mempool *pool,
                                    struct rte_mbuf **mbufs, unsigned int count);
void dpdk_sys_rte_pktmbuf_free(struct rte_mbuf *m);
/* Not a DPDK function: frees `count` mbufs like rte_pktmbuf_free_bulk. Those
 * that are direct, single-segment, unshared and from the first one's pool go
 * back to it in one rte_mempool_put_bulk; the rest through rte_pktmbuf_free.
 * Reorders `mbufs`. */
void dpdk_sys_free_simple_bulk(struct rte_mbuf **mbufs, unsigned int count);
char *dpdk_sys_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *dpdk_sys_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
int dpdk_sys_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
char *dpdk_sys_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t dpdk_sys_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t dpdk_sys_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
/* rte_pktmbuf_mtod(m, void *) */
void *dpdk_sys_rte_pktmbuf_mtod(const struct rte_mbuf *m);
int dpdk_sys_rte_pktmbuf_linearize(struct rte_mbuf *m);

unsigned int dpdk_sys_rte_lcore_id(void);
/* The calling thread's rte_errno (a per-lcore TLS variable behind a macro). */
int dpdk_sys_rte_errno(void);

/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP (function-like macros in C). */
uint64_t dpdk_sys_rss_hf_ip_tcp_udp(void);

#endif
