//! Software TCP segmentation: what a NIC's TSO does to a super-frame.
//!
//! A Linux host whose veth or virtual NIC keeps its default offloads hands
//! packet sockets TCP "super-frames" (GSO): one frame with up to 64 KiB of TCP
//! payload and the headers of one segment, to be cut into segments of
//! `gso_size` payload bytes by whoever transmits it. A gateway that forwards
//! such a frame must segment it itself, as the kernel's own forwarding does.
//!
//! [`GsoPlan::new`] walks the headers in front of the TCP header (Ethernet, up
//! to two VLAN tags, IPv4 or IPv6, and for tunnelled traffic one UDP header
//! with an 8-byte VXLAN header — or, to UDP port 6081, a Geneve header of 8
//! bytes plus its options length — and the inner Ethernet/IP headers) and checks
//! that they lead exactly to the TCP header the sender named (`csum_start`).
//! [`GsoPlan::write`] then writes segment `i` into a caller's buffer, fixing
//! what differs per segment: every IP length (and IPv4 ID, incremented per
//! segment, and header checksum), every UDP length (the outer UDP checksum
//! becomes 0 over IPv4, or is computed over IPv6), the TCP sequence number,
//! the flags (FIN and PSH only on the last segment, CWR only on the first) and
//! the TCP checksum. No allocation.
//!
//! ```
//! # use vxlan::gso::GsoPlan;
//! // Ethernet + IPv4 + TCP with 3000 payload bytes, MSS 1400: three segments.
//! let mut f = vec![0u8; 14 + 20 + 20 + 3000];
//! f[12] = 0x08;
//! f[14] = 0x45;
//! f[14 + 9] = 6;
//! f[14 + 20 + 12] = 0x50;
//! let plan = GsoPlan::new(&f, 34, 1400).unwrap();
//! assert_eq!(plan.segments(), 3);
//! let mut buf = [0u8; 1500];
//! assert_eq!(plan.write(&f, 2, &mut buf), Some(14 + 20 + 20 + 200));
//! ```

use crate::checksum::{accumulate, fold, pseudo_header_v4, pseudo_header_v6};
use crate::{array, be16, be32, put16, put32};

const ETH_HDR: usize = 14;
const VLAN_TAG: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPV6_HDR: usize = 40;
const UDP_HDR: usize = 8;
const VXLAN_HDR: usize = 8;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_MIN: usize = 20;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Most IP/UDP headers a plan fixes (outer IP, UDP, inner IP).
const MAX_FIXUPS: usize = 3;

/// Why a frame cannot be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoError {
    /// The headers do not lead to a TCP header at the given offset (not
    /// IPv4/IPv6, IPv6 extension headers, another tunnel, or a lying offset).
    BadHeaders,
    /// The frame ends inside its headers.
    Truncated,
    /// `mss` is 0.
    BadMss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fixup {
    Ipv4(usize),
    Ipv6(usize),
    /// UDP at this offset; true when carried in IPv6 (checksum required).
    Udp(usize, bool),
}

/// How to cut one super-frame into segments (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct GsoPlan {
    fix: [Option<Fixup>; MAX_FIXUPS],
    /// The IP header right in front of TCP.
    l3: Fixup,
    tcp: usize,
    hdr_len: usize,
    payload: usize,
    mss: usize,
}

/// A big-endian u16 at `at`, or `None` past the end (the planner's reads:
/// the frame comes from outside and may be cut anywhere).
#[inline]
fn get16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|_| be16(b, at))
}

impl GsoPlan {
    /// Plans the segmentation of `frame` (an Ethernet frame) whose TCP header
    /// starts at `tcp` into segments of at most `mss` payload bytes.
    pub fn new(frame: &[u8], tcp: usize, mss: usize) -> Result<GsoPlan, GsoError> {
        if mss == 0 {
            return Err(GsoError::BadMss);
        }
        let mut fix = [None; MAX_FIXUPS];
        let mut nfix = 0;
        let mut at = 0usize;
        let mut l3 = None;
        // At most two rounds: outer headers, then (after a UDP tunnel) inner ones.
        for _round in 0..2 {
            let mut et = get16(frame, at + 12).ok_or(GsoError::Truncated)?;
            at += ETH_HDR;
            let mut tags = 0;
            while (et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ) && tags < 2 {
                et = get16(frame, at + 2).ok_or(GsoError::Truncated)?;
                at += VLAN_TAG;
                tags += 1;
            }
            let (ip, next, hl) = match et {
                ETHERTYPE_IPV4 => {
                    let vihl = *frame.get(at).ok_or(GsoError::Truncated)?;
                    let hl = usize::from(vihl & 0x0f) * 4;
                    if vihl >> 4 != 4 || hl < 20 {
                        return Err(GsoError::BadHeaders);
                    }
                    let proto = *frame.get(at + 9).ok_or(GsoError::Truncated)?;
                    (Fixup::Ipv4(at), proto, hl)
                }
                ETHERTYPE_IPV6 => {
                    let v = *frame.get(at).ok_or(GsoError::Truncated)?;
                    if v >> 4 != 6 {
                        return Err(GsoError::BadHeaders);
                    }
                    let nh = *frame.get(at + 6).ok_or(GsoError::Truncated)?;
                    (Fixup::Ipv6(at), nh, IPV6_HDR)
                }
                _ => return Err(GsoError::BadHeaders),
            };
            if nfix == MAX_FIXUPS {
                return Err(GsoError::BadHeaders);
            }
            fix[nfix] = Some(ip);
            nfix += 1;
            at += hl;
            match next {
                PROTO_TCP if at == tcp => {
                    l3 = Some(ip);
                    break;
                }
                PROTO_UDP if at + UDP_HDR + VXLAN_HDR < tcp && nfix < MAX_FIXUPS => {
                    fix[nfix] = Some(Fixup::Udp(at, matches!(ip, Fixup::Ipv6(_))));
                    nfix += 1;
                    // The kernel's Geneve GSO uses the IANA port; the Geneve
                    // header is 8 bytes + options (VXLAN's is 8).
                    let tunnel = if get16(frame, at + 2) == Some(crate::geneve::PORT) {
                        let b0 = *frame.get(at + UDP_HDR).ok_or(GsoError::Truncated)?;
                        crate::geneve::HEADER_LEN + crate::geneve::options_len(b0)
                    } else {
                        VXLAN_HDR
                    };
                    at += UDP_HDR + tunnel;
                }
                _ => return Err(GsoError::BadHeaders),
            }
        }
        let l3 = l3.ok_or(GsoError::BadHeaders)?;
        let off = *frame.get(tcp + 12).ok_or(GsoError::Truncated)?;
        let tcp_len = usize::from(off >> 4) * 4;
        if tcp_len < TCP_MIN {
            return Err(GsoError::BadHeaders);
        }
        let hdr_len = tcp + tcp_len;
        if hdr_len > frame.len() {
            return Err(GsoError::Truncated);
        }
        Ok(GsoPlan {
            fix,
            l3,
            tcp,
            hdr_len,
            payload: frame.len() - hdr_len,
            mss,
        })
    }

    /// Number of segments (at least 1, also for a frame without payload).
    pub fn segments(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Bytes of headers in front of each segment's payload.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Length of segment `i`.
    pub fn segment_len(&self, i: usize) -> usize {
        let start = (i * self.mss).min(self.payload);
        let end = (start + self.mss).min(self.payload);
        self.hdr_len + (end - start)
    }

    /// Writes segment `i` of `frame` (the frame the plan was made for) into
    /// `out` and returns its length; `None` if `i` is past the last segment,
    /// `out` is too small, or `frame` is not the planned frame's length.
    pub fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) -> Option<usize> {
        if i >= self.segments() || frame.len() != self.hdr_len + self.payload {
            return None;
        }
        let len = self.segment_len(i);
        let out = out.get_mut(..len)?;
        let start = self.hdr_len + (i * self.mss).min(self.payload);
        out[..self.hdr_len].copy_from_slice(&frame[..self.hdr_len]);
        out[self.hdr_len..].copy_from_slice(&frame[start..start + (len - self.hdr_len)]);
        let last = i + 1 == self.segments();
        // TCP sequence number and flags.
        let t = self.tcp;
        let seq = be32(out, t + 4).wrapping_add((i * self.mss) as u32);
        put32(out, t + 4, seq);
        let mut flags = out[t + 13];
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[t + 13] = flags;
        // Lengths (and IPv4 IDs and header checksums), outer to inner.
        let mut udp6 = None;
        for f in self.fix.iter().flatten() {
            match *f {
                Fixup::Ipv4(o) => {
                    put16(out, o + 2, (len - o) as u16);
                    put16(out, o + 4, be16(out, o + 4).wrapping_add(i as u16));
                    put16(out, o + 10, 0);
                    let hl = usize::from(out[o] & 0x0f) * 4;
                    let c = !fold(accumulate(0, &out[o..o + hl]));
                    put16(out, o + 10, c);
                }
                Fixup::Ipv6(o) => {
                    put16(out, o + 4, (len - o - IPV6_HDR) as u16);
                }
                Fixup::Udp(o, v6) => {
                    put16(out, o + 4, (len - o) as u16);
                    put16(out, o + 6, 0);
                    if v6 {
                        udp6 = Some(o);
                    }
                }
            }
        }
        // TCP checksum over the pseudo-header of the IP header in front of it.
        put16(out, t + 16, 0);
        let ph = pseudo_of(out, self.l3, PROTO_TCP, len - t);
        let c = !fold(accumulate(ph, &out[t..]));
        put16(out, t + 16, c);
        // An outer UDP over IPv6 needs its checksum (after everything inside).
        if let Some(o) = udp6 {
            let ip = self
                .fix
                .iter()
                .flatten()
                .rev()
                .find(|f| matches!(f, Fixup::Ipv6(x) if *x < o))
                .copied()?;
            let ul = len - o;
            let ph = pseudo_of(out, ip, PROTO_UDP, ul);
            let c = match !fold(accumulate(ph, &out[o..])) {
                0 => 0xffff,
                c => c,
            };
            put16(out, o + 6, c);
        }
        Some(len)
    }
}

fn pseudo_of(b: &[u8], ip: Fixup, proto: u8, l4_len: usize) -> u64 {
    match ip {
        Fixup::Ipv4(o) => {
            pseudo_header_v4(array(b, o + 12), array(b, o + 16), proto, l4_len as u16)
        }
        Fixup::Ipv6(o) => {
            pseudo_header_v6(&array(b, o + 8), &array(b, o + 24), proto, l4_len as u32)
        }
        Fixup::Udp(..) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{l4_checksum_v4, l4_checksum_v6, verify};

    fn ipv4(proto: u8, payload_len: usize, id: u16) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[6] = 0x40;
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 200, 0, 10]);
        h[16..20].copy_from_slice(&[10, 96, 0, 100]);
        h
    }

    fn tcp(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t.extend_from_slice(payload);
        t
    }

    fn eth(et: u16) -> Vec<u8> {
        let mut e = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        e.extend_from_slice(&et.to_be_bytes());
        e
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Plain IPv4 TCP: every segment is a valid packet, the payload and the
    /// sequence numbers line up, the flags are split as TSO does.
    #[test]
    fn test_segments_ipv4_tcp() {
        let data = payload(4000);
        let flags = TCP_PSH | TCP_FIN | TCP_CWR | 0x10;
        let mut f = eth(ETHERTYPE_IPV4);
        f.extend(ipv4(6, 20 + data.len(), 7));
        f.extend(tcp(&data, 1000, flags));
        let plan = GsoPlan::new(&f, 34, 1448).unwrap();
        assert_eq!(plan.segments(), 3);
        let mut got = Vec::new();
        let mut buf = [0u8; 1600];
        for i in 0..3 {
            let n = plan.write(&f, i, &mut buf).unwrap();
            let s = &buf[..n];
            assert!(verify(&s[14..34]), "segment {i}: IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([s[16], s[17]])), n - 14);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 7 + i as u16);
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 1000 + (i * 1448) as u32);
            let fl = s[47];
            assert_eq!(
                fl & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "segment {i} flags {fl:#x}"
            );
            assert_eq!(fl & TCP_CWR != 0, i == 0, "segment {i} flags {fl:#x}");
            assert_eq!(
                l4_checksum_v4([10, 200, 0, 10], [10, 96, 0, 100], 6, &s[34..]),
                0
            );
            got.extend_from_slice(&s[54..]);
        }
        assert_eq!(got, data);
        assert_eq!(plan.write(&f, 3, &mut buf), None);
        assert_eq!(plan.write(&f, 0, &mut [0u8; 100]), None);
    }

    /// VXLAN over IPv6 around IPv4 TCP: outer IPv6 and UDP lengths follow,
    /// the outer UDP checksum is computed, the inner packet is valid.
    #[test]
    fn test_segments_vxlan_in_ipv6() {
        let data = payload(3000);
        let mut inner = eth(ETHERTYPE_IPV4);
        inner.extend(ipv4(6, 20 + data.len(), 100));
        inner.extend(tcp(&data, 5, 0x18));
        let mut f = eth(ETHERTYPE_IPV6);
        let mut ip6 = vec![0u8; 40];
        ip6[0] = 0x60;
        ip6[6] = 17;
        ip6[7] = 64;
        ip6[8] = 0xfd;
        ip6[23] = 1;
        ip6[24] = 0xfd;
        ip6[39] = 2;
        f.extend_from_slice(&ip6);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&50000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&4789u16.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 100, 0]);
        let inner_off = f.len();
        f.extend_from_slice(&inner);
        let tcp_off = inner_off + 14 + 20;
        let plan = GsoPlan::new(&f, tcp_off, 1400).unwrap();
        assert_eq!(plan.segments(), 3);
        let mut buf = [0u8; 1600];
        let mut got = Vec::new();
        for i in 0..3 {
            let n = plan.write(&f, i, &mut buf).unwrap();
            let s = &buf[..n];
            assert_eq!(usize::from(u16::from_be_bytes([s[18], s[19]])), n - 14 - 40);
            assert_eq!(usize::from(u16::from_be_bytes([s[58], s[59]])), n - 54);
            let src: [u8; 16] = s[22..38].try_into().unwrap();
            let dst: [u8; 16] = s[38..54].try_into().unwrap();
            assert_eq!(
                l4_checksum_v6(&src, &dst, 17, &s[54..]),
                0,
                "outer UDP checksum"
            );
            let ip = &s[inner_off + 14..];
            assert!(verify(&ip[..20]));
            assert_eq!(
                l4_checksum_v4([10, 200, 0, 10], [10, 96, 0, 100], 6, &ip[20..]),
                0
            );
            got.extend_from_slice(&ip[40..]);
        }
        assert_eq!(got, data);
    }

    /// VXLAN over IPv4: the outer UDP checksum is zero (allowed over IPv4).
    #[test]
    fn test_segments_vxlan_in_ipv4_zero_udp_checksum() {
        let data = payload(2000);
        let mut inner = eth(ETHERTYPE_IPV4);
        inner.extend(ipv4(6, 20 + data.len(), 1));
        inner.extend(tcp(&data, 5, 0x10));
        let mut f = eth(ETHERTYPE_IPV4);
        f.extend(ipv4(17, 8 + 8 + inner.len(), 9));
        let mut udp = vec![0u8; 8];
        udp[6] = 0x12;
        f.extend_from_slice(&udp);
        f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 100, 0]);
        f.extend_from_slice(&inner);
        let plan = GsoPlan::new(&f, 14 + 20 + 16 + 14 + 20, 1000).unwrap();
        let mut buf = [0u8; 1600];
        for i in 0..plan.segments() {
            let n = plan.write(&f, i, &mut buf).unwrap();
            assert!(verify(&buf[14..34]));
            assert_eq!(&buf[40..42], &[0, 0], "outer UDP checksum");
            assert_eq!(usize::from(u16::from_be_bytes([buf[38], buf[39]])), n - 34);
        }
    }

    /// Geneve (port 6081) with 8 bytes of options over IPv4: the inner TCP is
    /// found after the options and every segment keeps them.
    #[test]
    fn test_segments_geneve_with_options() {
        let data = payload(2500);
        let mut inner = eth(ETHERTYPE_IPV4);
        inner.extend(ipv4(6, 20 + data.len(), 1));
        inner.extend(tcp(&data, 5, 0x10));
        let gen = [
            0x02, 0, 0x65, 0x58, 0, 0, 7, 0, 0x01, 0x02, 0x03, 0x01, 9, 9, 9, 9,
        ];
        let mut f = eth(ETHERTYPE_IPV4);
        f.extend(ipv4(17, 8 + gen.len() + inner.len(), 9));
        let mut udp = vec![0u8; 8];
        udp[2..4].copy_from_slice(&6081u16.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend_from_slice(&gen);
        f.extend_from_slice(&inner);
        let inner_off = 14 + 20 + 8 + gen.len();
        let plan = GsoPlan::new(&f, inner_off + 14 + 20, 1000).unwrap();
        assert_eq!(plan.segments(), 3);
        // Without the options counted, the TCP header would not be where the
        // sender said: on port 4789 the same frame is refused.
        let mut v = f.clone();
        v[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&4789u16.to_be_bytes());
        assert!(GsoPlan::new(&v, inner_off + 14 + 20, 1000).is_err());
        let mut buf = [0u8; 1600];
        let mut got = Vec::new();
        for i in 0..plan.segments() {
            let n = plan.write(&f, i, &mut buf).unwrap();
            assert!(verify(&buf[14..34]));
            assert_eq!(usize::from(u16::from_be_bytes([buf[38], buf[39]])), n - 34);
            assert_eq!(&buf[42..58], &gen, "Geneve header and options kept");
            let ip = &buf[inner_off + 14..n];
            assert!(verify(&ip[..20]));
            got.extend_from_slice(&ip[40..]);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn test_refuses_what_it_cannot_segment() {
        let data = payload(100);
        let mut f = eth(ETHERTYPE_IPV4);
        f.extend(ipv4(6, 20 + data.len(), 7));
        f.extend(tcp(&data, 0, 0));
        assert_eq!(GsoPlan::new(&f, 34, 0).unwrap_err(), GsoError::BadMss);
        assert_eq!(GsoPlan::new(&f, 30, 100).unwrap_err(), GsoError::BadHeaders);
        assert_eq!(
            GsoPlan::new(&f[..40], 34, 100).unwrap_err(),
            GsoError::Truncated
        );
        let mut udp = f.clone();
        udp[14 + 9] = 17;
        assert_eq!(
            GsoPlan::new(&udp, 34, 100).unwrap_err(),
            GsoError::BadHeaders
        );
        let arp = eth(0x0806);
        assert_eq!(
            GsoPlan::new(&arp, 34, 100).unwrap_err(),
            GsoError::BadHeaders
        );
        for cut in 0..f.len() {
            let _ = GsoPlan::new(&f[..cut], 34, 10);
        }
    }
}
