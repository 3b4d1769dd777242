#include "shim.h"

uint16_t dpdk_sys_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **rx_pkts, uint16_t nb_pkts) {
    return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t dpdk_sys_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **tx_pkts, uint16_t nb_pkts) {
    return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *dpdk_sys_rte_pktmbuf_alloc(struct rte_mempool *mp) {
    return rte_pktmbuf_alloc(mp);
}

int dpdk_sys_rte_pktmbuf_alloc_bulk(struct rte_mempool *pool,
                                    struct rte_mbuf **mbufs, unsigned int count) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, count);
}

void dpdk_sys_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void dpdk_sys_free_simple_bulk(struct rte_mbuf **mbufs, unsigned int count) {
    if (count == 0)
        return;
    struct rte_mempool *mp = mbufs[0]->pool;
    unsigned int simple = 0;
    for (unsigned int i = 0; i < count; i++) {
        struct rte_mbuf *m = mbufs[i];
        /* What rte_pktmbuf_prefree_seg checks, minus m->next, which is NULL
         * in a single-segment mbuf: the one field of its second cache line. */
        if (likely(m->pool == mp && RTE_MBUF_DIRECT(m) &&
                   rte_mbuf_refcnt_read(m) == 1 && m->nb_segs == 1))
            mbufs[simple++] = m;
        else
            rte_pktmbuf_free(m);
    }
    if (simple != 0)
        rte_mempool_put_bulk(mp, (void **)mbufs, simple);
}

char *dpdk_sys_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) {
    return rte_pktmbuf_adj(m, len);
}

char *dpdk_sys_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) {
    return rte_pktmbuf_prepend(m, len);
}

int dpdk_sys_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) {
    return rte_pktmbuf_trim(m, len);
}

char *dpdk_sys_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
    return rte_pktmbuf_append(m, len);
}

uint16_t dpdk_sys_rte_pktmbuf_headroom(const struct rte_mbuf *m) {
    return rte_pktmbuf_headroom(m);
}

uint16_t dpdk_sys_rte_pktmbuf_tailroom(const struct rte_mbuf *m) {
    return rte_pktmbuf_tailroom(m);
}

void *dpdk_sys_rte_pktmbuf_mtod(const struct rte_mbuf *m) {
    return rte_pktmbuf_mtod(m, void *);
}

int dpdk_sys_rte_pktmbuf_linearize(struct rte_mbuf *m) {
    return rte_pktmbuf_linearize(m);
}

unsigned int dpdk_sys_rte_lcore_id(void) { return rte_lcore_id(); }

int dpdk_sys_rte_errno(void) { return rte_errno; }

uint64_t dpdk_sys_rss_hf_ip_tcp_udp(void) {
    return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
}
