//! Every wire format dpgw parses or emits: Ethernet (with up to two 802.1Q /
//! 802.1ad tags), ARP, IPv4, IPv6 (with extension headers), ICMP and ICMPv6,
//! UDP, RFC 7348 VXLAN, and the encapsulations dpgw sends to backends (VXLAN,
//! IP-in-IP, GUE).
//!
//! Two layers:
//!
//! * Per protocol, a zero-copy view `XxxPacket<T: AsRef<[u8]>>` with
//!   `new_checked(buf)?`, inline getters and (for `T: AsMut<[u8]>`) setters, and a
//!   small `XxxRepr` value with `parse`/`emit`. If `new_checked` returns `Ok`, no
//!   accessor of that view panics: length fields are checked against each other
//!   and against the buffer, and payloads are trimmed to the declared length.
//! * The fast path used by the engine: [`decap()`] (outer headers → VNI and inner
//!   frame position), [`parse_inner`] (inner frame → [`FlowKey`]),
//!   [`decrement_ttl`], [`set_macs`], and the encapsulation writers in [`encap`].
//!   They take plain byte slices, never allocate and never panic on any input.
//!
//! The crate is pure: no I/O, no threads, no `unsafe`.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use vxlan::{decap, parse_inner, DecapConfig, InnerSpec, Outer};
//!
//! // Build an inner TCP frame and wrap it in VXLAN (VNI 42) ...
//! let spec = InnerSpec {
//!     src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2],
//!     src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
//!     proto: 6, sport: 1234, dport: 80, ttl: 64, frame_len: 128,
//! };
//! let mut inner = Vec::new();
//! vxlan::build_inner_frame(&spec, &mut inner);
//! let outer = Outer {
//!     src_mac: [2, 0, 0, 0, 0, 3], dst_mac: [2, 0, 0, 0, 0, 4], vlan: None,
//!     src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), dst_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
//!     ttl: 64,
//! };
//! let mut pkt = vec![0u8; vxlan::vxlan_header_len(&outer)];
//! vxlan::emit_vxlan(&outer, 50000, 4789, 42, &inner, &mut pkt);
//! pkt.extend_from_slice(&inner);
//!
//! // ... and take it apart again.
//! let cfg = DecapConfig { vtep_v4: vec![u32::from(Ipv4Addr::new(192, 0, 2, 2))], vtep_v6: vec![], ports: vec![], geneve_ports: vec![] };
//! let d = decap(&pkt, &cfg).unwrap();
//! assert_eq!(d.vni, 42);
//! let frame = &pkt[d.inner_offset..d.inner_offset + d.inner_len];
//! let inner = parse_inner(frame, d.vni).unwrap();
//! assert_eq!((inner.key.sport, inner.key.dport, inner.key.proto), (1234, 80, 6));
//! ```
#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod decap;
pub mod encap;
pub mod ethernet;
pub mod fdb;
pub mod flow;
pub mod geneve;
pub mod gso;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod rewrite;
pub mod udp;
#[allow(clippy::module_inception)]
pub mod vxlan;

pub use decap::{
    decap, outer_endpoints, outer_endpoints_tunnel, Decap, DecapConfig, DecapError, OuterEndpoints,
};
pub use encap::{
    build_inner_frame, emit_geneve, emit_gue, emit_ipip, emit_vxlan, geneve_header_len,
    gue_header_len, ipip_header_len, vxlan_header_len, InnerSpec, Outer,
};
pub use flow::{
    flow_src_port, inner_checksum_ok, parse_inner, symmetric_hash, FlowKey, FragKind, Inner,
    InnerError,
};
pub use rewrite::{decrement_ttl, set_macs, TtlError};

use core::fmt;

/// Why a protocol view or representation rejected a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ends before a header (or a declared length) that must be read.
    Truncated,
    /// A field is invalid or length fields contradict each other or the buffer.
    Malformed,
    /// A checksum does not verify.
    BadChecksum,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "truncated",
            WireError::Malformed => "malformed",
            WireError::BadChecksum => "bad checksum",
        })
    }
}

impl std::error::Error for WireError {}

/// Result of the wire views and representations.
pub type Result<T> = core::result::Result<T, WireError>;

/// IP protocol / IPv6 next-header numbers used in this crate (IANA).
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4 in IP (RFC 2003).
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 in IP (RFC 2473 / RFC 4213).
    pub const IPV6: u8 = 41;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// IPsec authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT: u8 = 59;
    /// IPv6 destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// The IANA-assigned VXLAN UDP port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// Reads a big-endian u16 at `at`. Callers have checked the bounds; out of
/// bounds yields 0 rather than a panic.
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// Reads a big-endian u32 at `at` (0 if out of bounds).
#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

/// Reads a big-endian u128 at `at` (0 if out of bounds).
#[inline(always)]
pub(crate) fn be128(b: &[u8], at: usize) -> u128 {
    match b.get(at..at + 16) {
        Some(s) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(s);
            u128::from_be_bytes(a)
        }
        None => 0,
    }
}

/// Copies a fixed-size array out of `b` at `range` (zeros if out of bounds).
#[inline(always)]
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        a.copy_from_slice(s);
    }
    a
}

/// Writes `v` big-endian at `at` (no-op if out of bounds).
#[inline(always)]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes `v` big-endian at `at` (no-op if out of bounds).
#[inline(always)]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Copies `v` into `b` at `at` (no-op if out of bounds).
#[inline(always)]
pub(crate) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(at..at + v.len()) {
        s.copy_from_slice(v);
    }
}
