//! Services, backends, Maglev consistent hashing and the per-worker flow table.
//!
//! What this crate promises:
//! * **Deterministic selection.** A new flow's backend depends only on the flow
//!   ([`flow_hash`] of the 5-tuple + VNI, fixed keys) and on the service's
//!   *set* of eligible backends and weights ([`maglev`], backends sorted by key,
//!   XXH64 with fixed seeds). Gateways with the same configuration agree; nothing
//!   is random, nothing depends on the order backends were added.
//! * **Maglev's guarantees** (Eisenbud et al., NSDI 2016): with equal weights each
//!   backend owns ⌊M/N⌋ or ⌈M/N⌉ table entries; removing one backend moves its
//!   entries and few others. The paper's and Envoy's vectors are reproduced exactly.
//! * **Connection stickiness** via a fixed-capacity per-worker [`FlowTable`]:
//!   a flow keeps its backend while that backend is in the service and not
//!   `Down` (adding backends, changing weights or draining does not move it);
//!   flows of removed or down backends are re-selected on their next packet;
//!   `Draining` and weight-0 backends keep their flows and get no new ones.
//! * **Schedulers per service** ([`sched`]): `maglev` (the above), `src_ip`
//!   (Maglev on the client address alone), and `round_robin`, `least_conn`,
//!   `weighted_least_conn`, whose choices depend on the worker's history
//!   (round-robin position, active-flow counts kept in its flow table), so
//!   only the hash schedulers are deterministic across gateways. A per-worker
//!   new-flow rate cap per service sends flows over it where the hash points
//!   without storing them.
//! * **No allocation, lock or atomic per packet**; the snapshot [`LbTables`] is
//!   immutable and built off the fast path from the desired state [`Services`].
//!
//! The crate only decides: encapsulation bytes are written by the `vxlan` crate.
//!
//! ```
//! use lb::{build, flow_hash, BackendSpec, FlowKey, FlowTable, FlowTableConfig, Proto,
//!          ServiceSpec, Services};
//! use std::net::Ipv4Addr;
//!
//! let mut desired = Services::new();
//! let vip = Ipv4Addr::new(10, 99, 0, 1);
//! desired.add_service(ServiceSpec::new("web", vip.into(), 80, Proto::Tcp)).unwrap();
//! for i in 1..=3 {
//!     desired.add_backend("web", BackendSpec::new(Ipv4Addr::new(192, 168, 0, i).into())).unwrap();
//! }
//! let tables = build(&desired).unwrap();
//! let mut flows = FlowTable::new(FlowTableConfig::default());
//!
//! let key = FlowKey {
//!     vni: 7,
//!     src: u32::from(Ipv4Addr::new(172, 16, 0, 9)).into(),
//!     dst: u32::from(vip).into(),
//!     sport: 40000,
//!     dport: 80,
//!     proto: 6,
//!     v6: false,
//! };
//! let svc = tables.lookup_service(&key).unwrap();
//! let first = tables.select(svc, &key, flow_hash(&key), &mut flows, 0).unwrap();
//! assert!(first.new_flow);
//! let again = tables.select(svc, &key, flow_hash(&key), &mut flows, 1).unwrap();
//! assert_eq!((again.backend, again.new_flow), (first.backend, false));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod flow_table;
pub mod health;
pub mod maglev;
pub mod sched;
pub mod shared_flows;
pub mod spec;
mod tables;

pub use flow_table::{FlowStats, FlowTable, FlowTableConfig};
pub use health::{Health, HealthKind, HealthMap, HealthMode, HealthSpec, OnDown};
pub use maglev::BackendIdx;
pub use sched::{SchedState, Scheduler};
pub use spec::{
    BackendSpec, BackendState, EncapKind, LbError, MacAddr, Proto, ServiceSpec, Services,
};
pub use tables::{
    build, tcp_flags, Backend, BackendRef, LbTables, LbVerdict, Selected, Service, ServiceIdx,
};

/// The flow key the engine passes. IPv4 addresses are `u32::from(Ipv4Addr)`
/// zero-extended to `u128` with `v6 = false`; `dst`/`dport` are the VIP side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// VXLAN network identifier (tenant).
    pub vni: u32,
    /// Inner source address.
    pub src: u128,
    /// Inner destination address.
    pub dst: u128,
    /// Inner source port.
    pub sport: u16,
    /// Inner destination port.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Whether the addresses are IPv6.
    pub v6: bool,
}

// Fixed keys (hex digits of pi): the hash must be the same in every process and
// on every machine so that gateways agree on backends. A consequence is that
// anyone can compute it; a crafted flood can at worst crowd one flow-table set
// (evicting flows there, which then re-select the same Maglev backend).
const K0: u64 = 0x243F_6A88_85A3_08D3;
const K1: u64 = 0x1319_8A2E_0370_7344;
const K2: u64 = 0xA409_3822_299F_31D0;
const K3: u64 = 0x082E_FA98_EC4E_6C89;
const K4: u64 = 0x4528_21E6_38D0_1377;
const K5: u64 = 0xBE54_66CF_34E9_0C6C;

/// 64×64→128-bit multiply folded to 64 bits (the wyhash/foldhash mixer).
#[inline(always)]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The flow hash of the 5-tuple + VNI: deterministic (fixed keys, no per-process
/// seed), three multiplications. The low bits index the flow table's sets, the
/// high 32 bits index the Maglev table.
#[inline]
pub fn flow_hash(k: &FlowKey) -> u64 {
    let a = fold_mul(k.src as u64 ^ K0, (k.src >> 64) as u64 ^ K1);
    let b = fold_mul(k.dst as u64 ^ K2, (k.dst >> 64) as u64 ^ K3);
    let c = (u64::from(k.vni) << 32) | (u64::from(k.sport) << 16) | u64::from(k.dport);
    let d = (u64::from(k.proto) << 1) | u64::from(k.v6);
    fold_mul(a ^ c ^ K4, b.rotate_left(17) ^ d ^ K5)
}

/// The client hash of the `src_ip` scheduler: the source address, its
/// family and the VNI (the client's identity within its tenant), nothing
/// else, so every flow of a client indexes the same Maglev entry.
#[inline]
pub fn client_hash(k: &FlowKey) -> u64 {
    let a = fold_mul(k.src as u64 ^ K0, (k.src >> 64) as u64 ^ K1);
    fold_mul(a ^ K4, ((u64::from(k.vni) << 1) | u64::from(k.v6)) ^ K5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_is_fixed() {
        // Every input field matters (the pinned value is in tests/select.rs).
        let k = FlowKey {
            vni: 1,
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            sport: 1234,
            dport: 80,
            proto: 6,
            v6: false,
        };
        let h = flow_hash(&k);
        assert_eq!(h, flow_hash(&k.clone()));
        let mut k2 = k;
        k2.v6 = true;
        assert_ne!(h, flow_hash(&k2));
        let mut k3 = k;
        k3.sport = 1235;
        assert_ne!(h, flow_hash(&k3));
        let mut k4 = k;
        k4.vni = 2;
        assert_ne!(h, flow_hash(&k4));
    }
}
