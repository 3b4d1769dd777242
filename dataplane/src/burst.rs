//! The burst vocabulary every stage speaks: per-packet [`Meta`] and
//! [`Verdict`], and the [`Stage`] trait. A stage fills a verdict per packet;
//! the worker acts once per burst.

use crate::io::Packet;
use crate::stats::DropReason;
use crate::tables::Tables;

/// What happens to a packet at the end of the burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Tx,
    /// For the gateway itself: handed to the slow path (and freed here).
    Punt,
    Drop(DropReason),
    /// A later fragment whose first fragment has not been seen: the worker
    /// holds it (see `frag`) and sends it on, or drops it, on a later burst.
    Hold,
}

/// Whether every verdict in `v` equals the first (true for an empty slice).
/// The worker asks once per burst; compared as bytes, the scan vectorizes,
/// where the derived `==` decodes each verdict's niche first (about 2
/// cycles/packet on a 32-packet burst).
#[inline]
#[allow(unsafe_code)] // the module's one unsafe block: a byte view of `v`
pub fn uniform(v: &[Verdict]) -> bool {
    const _: () = assert!(std::mem::size_of::<Verdict>() == 1);
    // SAFETY: a Verdict is one byte (asserted above) and has no padding, so
    // the slice is `v.len()` initialized bytes, borrowed for as long as `v`.
    // Each value has one encoding (the payload's discriminant, or a niche
    // value for the other variants), so equal bytes are equal verdicts
    // (checked for every pair by the test below).
    let b: &[u8] = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len()) };
    match b.split_first() {
        None => true,
        Some((&f, rest)) => rest.iter().fold(0u8, |a, &x| a | (x ^ f)) == 0,
    }
}

/// Per-packet state passed between stages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meta {
    pub vni: u32,
    pub key: vxlan::FlowKey,
    /// Offset of the inner IP header in the (decapsulated) frame.
    pub l3_off: u16,
    /// Bytes of outer headers decap removed (still in the headroom).
    pub outer_len: u16,
    /// Geneve header length (with options) if the packet came over Geneve,
    /// 0 for VXLAN: replies go back the way the packet came.
    pub geneve_len: u16,
    /// Set by a stage that already produced the final frame (e.g. encapsulation
    /// to a backend), so routing leaves it alone.
    pub finished: bool,
    /// A plain IP packet from the outside to a tenant address (`vni` is the
    /// tenant's; nothing was decapsulated): [`crate::overlay`] sends it in.
    pub inbound: bool,
    /// Fragment kind of the inner packet (set by the inner parse).
    pub frag: vxlan::FragKind,
    /// Its IPv4 / IPv6 fragment identification (0 if not a fragment).
    pub frag_id: u32,
    /// What connection tracking found ([`ct`] bits), written by the
    /// conntrack lookup for every packet still to be sent while the snapshot
    /// has stateful rules (`Tables::ct_active`); not meaningful otherwise.
    pub ct: u8,
}

/// [`Meta::ct`] bits.
pub mod ct {
    /// A packet of a known connection (or an ICMP error quoting one): the
    /// ACL stage does not classify it.
    pub const KNOWN: u8 = 1;
    /// From the connection's responder.
    pub const REPLY: u8 = 2;
    /// The connection is in another worker's table.
    pub const REMOTE: u8 = 4;
    /// An ICMP error quoting a known connection.
    pub const RELATED: u8 = 8;
    /// This packet created its connection (stateful rule).
    pub const NEW: u8 = 16;
    /// A stateful rule allowed it but the table was full (`ct_full`).
    pub const FULL: u8 = 32;
}

/// One step of the pipeline. Implementations look only at packets whose verdict
/// is still `Tx`.
pub trait Stage {
    fn process<P: Packet>(
        &mut self,
        t: &Tables,
        pkts: &mut [P],
        meta: &mut [Meta],
        verdicts: &mut [Verdict],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_agrees_with_eq_for_every_pair() {
        let mut all = vec![Verdict::Tx, Verdict::Punt, Verdict::Hold];
        all.extend(DropReason::ALL.iter().map(|&r| Verdict::Drop(r)));
        for &a in &all {
            for &b in &all {
                assert_eq!(uniform(&[a, b]), a == b, "{a:?} {b:?}");
                assert_eq!(uniform(&[a, a, a, b]), a == b, "{a:?} {b:?}");
            }
            assert!(uniform(&[a; 32]));
        }
        assert!(uniform(&[]));
    }
}
