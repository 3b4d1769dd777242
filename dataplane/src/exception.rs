//! Is this frame for the gateway itself? The fast path's classification of
//! frames that are not VXLAN ([`is_exception`]: ARP for our addresses,
//! ICMP/ICMPv6 echo to them, neighbour discovery). Workers hand such frames
//! to a [`crate::punt::Punt`]; the slow-path thread ([`crate::slowpath`])
//! answers them.
//!
//! Frames with VLAN tags are not handled here (the fast path drops them).
//!
//! ```
//! use dataplane::exception::{classify, Exception};
//! // An ARP request (who has 192.0.2.1?) to the broadcast address.
//! let mut f = vec![0xff; 6];
//! f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
//! f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
//! let ours = [u32::from(std::net::Ipv4Addr::new(192, 0, 2, 1))];
//! assert_eq!(classify(&f, &ours, &[]), Some(Exception::Arp));
//! assert_eq!(classify(&f, &[], &[]), None);
//! ```

use crate::tables::Tables;

pub(crate) const ETH_HDR: usize = 14;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(crate) const IPV6_HDR: usize = 40;
pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(crate) const ICMPV6_NS: u8 = 135;
pub(crate) const ICMPV6_NA: u8 = 136;

/// Kinds of frames the slow path answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// ARP whose target protocol address is ours (requests and replies).
    Arp,
    /// ICMP echo request to one of our IPv4 addresses.
    IcmpEcho,
    /// ICMPv6 echo request to one of our IPv6 addresses.
    Icmpv6Echo,
    /// Neighbour solicitation for one of our addresses, or any neighbour advertisement.
    Ndp,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn be128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}

/// Classifies an untagged Ethernet frame against our addresses (IPv4 as `u32`,
/// IPv6 as `u128`, as in `vxlan::DecapConfig`). Never panics.
pub fn classify(frame: &[u8], v4: &[u32], v6: &[u128]) -> Option<Exception> {
    classify_with(frame, |a| v4.contains(&a), |a| v6.contains(&a))
}

/// [`classify`] with "is this address ours?" as functions.
#[inline]
pub fn classify_with(
    frame: &[u8],
    ours_v4: impl Fn(u32) -> bool,
    ours_v6: impl Fn(u128) -> bool,
) -> Option<Exception> {
    if frame.len() < ETH_HDR {
        return None;
    }
    let l3 = &frame[ETH_HDR..];
    match be16(frame, 12) {
        ETHERTYPE_ARP => {
            // htype 1, ptype IPv4, hlen 6, plen 4.
            if l3.len() < 28
                || be16(l3, 0) != 1
                || be16(l3, 2) != ETHERTYPE_IPV4
                || l3[4] != 6
                || l3[5] != 4
            {
                return None;
            }
            let op = be16(l3, 6);
            (matches!(op, 1 | 2) && ours_v4(be32(l3, 24))).then_some(Exception::Arp)
        }
        ETHERTYPE_IPV4 => {
            if l3.len() < 20 || l3[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            // Protocol ICMP, not a fragment (offset 0, MF clear), room for the ICMP type.
            if ihl < 20 || l3.len() < ihl + 8 || l3[9] != 1 || be16(l3, 6) & 0x3fff != 0 {
                return None;
            }
            (l3[ihl] == 8 && ours_v4(be32(l3, 16))).then_some(Exception::IcmpEcho)
        }
        ETHERTYPE_IPV6 => {
            if l3.len() < IPV6_HDR + 8 || l3[0] >> 4 != 6 || l3[6] != 58 {
                return None;
            }
            let dst = be128(l3, 24);
            let icmp = &l3[IPV6_HDR..];
            match icmp[0] {
                ICMPV6_ECHO_REQUEST => ours_v6(dst).then_some(Exception::Icmpv6Echo),
                ICMPV6_NS => {
                    (icmp.len() >= 24 && ours_v6(be128(icmp, 8))).then_some(Exception::Ndp)
                }
                ICMPV6_NA => {
                    let multicast = l3[24] == 0xff;
                    (icmp.len() >= 24 && (multicast || ours_v6(dst))).then_some(Exception::Ndp)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// True for frames the slow path handles: ARP for our addresses, ICMP/ICMPv6
/// echo requests to them, neighbour solicitations for them and neighbour
/// advertisements. "Our addresses" are the snapshot's VTEP addresses
/// (`t.decap.vtep_v4` / `vtep_v6`) and underlay source addresses
/// (`t.underlay_v4` / `underlay_v6`). Meant for frames that fail decap with
/// `NotIp` or `NotUdp`; cheap (a few compares), never panics.
#[inline]
pub fn is_exception(frame: &[u8], t: &Tables) -> bool {
    let u4 = t.underlay_v4.map(u32::from);
    let u6 = t.underlay_v6.map(u128::from);
    classify_with(
        frame,
        |a| t.decap.vtep_v4.contains(&a) || u4 == Some(a),
        |a| t.decap.vtep_v6.contains(&a) || u6 == Some(a),
    )
    .is_some()
}
