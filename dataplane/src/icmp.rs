//! "Fragmentation needed" (ICMP type 3 code 4) and "packet too big" (ICMPv6
//! type 2) replies for packets that would exceed the link MTU once
//! encapsulated to a backend. The reply goes back the way the packet came: as
//! VXLAN from the VTEP it was sent to, to the VTEP that sent it, in the same
//! VNI; its inner packet is from the VIP to the client and quotes the start of
//! the client's packet (RFC 792 / RFC 4443), so the client's stack lowers its
//! path MTU for that destination.
//!
//! It is built in place, in the buffer of the packet it answers: that packet
//! was larger than the MTU, so the reply (at most ~200 bytes) always fits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::burst::Meta;
use crate::io::Packet;

/// Bytes of the offending packet quoted in the reply (its IP header and the
/// start of its payload).
const QUOTE: usize = 128;

/// Turns `p` — the decapsulated inner frame (Ethernet at offset 0, IP at
/// `m.l3_off`), whose original outer headers are still in the headroom (the
/// `m.outer_len` bytes before it) — into the ICMP reply to the client,
/// announcing `mtu` (the largest inner IP packet that fits). `local_mac` is our
/// source MAC. Returns false (packet unchanged in meaning, to be dropped) if
/// the outer headers cannot be recovered.
pub fn too_big_reply<P: Packet>(p: &mut P, m: &Meta, mtu: u32, local_mac: [u8; 6]) -> bool {
    let l3 = m.l3_off as usize;
    let outer_len = m.outer_len as usize;
    let data = p.data();
    if data.len() < l3 + 20 || outer_len < 14 + 20 + 16 {
        return false;
    }
    // The client's inner frame: MACs, and the quote.
    let inner_dst_mac: [u8; 6] = data[0..6].try_into().unwrap_or([0; 6]);
    let inner_src_mac: [u8; 6] = data[6..12].try_into().unwrap_or([0; 6]);
    let mut quote = [0u8; QUOTE];
    let qn = (data.len() - l3).min(QUOTE);
    quote[..qn].copy_from_slice(&data[l3..l3 + qn]);
    let inner_v6 = m.key.v6;
    // The original outer headers, still in front of the data.
    if !p.prepend(outer_len) {
        return false;
    }
    let f = p.data();
    let Some((client_vtep, our_vtep, client_mac, dport)) = outer_endpoints(&f[..outer_len]) else {
        p.adj(outer_len);
        return false;
    };
    // The reply's inner IP packet, built on the stack.
    let mut ip = [0u8; 40 + 8 + QUOTE];
    let ip_len = if inner_v6 {
        let src = Ipv6Addr::from(m.key.dst).octets();
        let dst = Ipv6Addr::from(m.key.src).octets();
        let icmp_len = 8 + qn;
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
        ip[6] = 58;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&dst);
        let icmp = &mut ip[40..40 + icmp_len];
        icmp[0] = 2; // packet too big
        icmp[1] = 0;
        icmp[4..8].copy_from_slice(&mtu.max(1280).to_be_bytes());
        icmp[8..8 + qn].copy_from_slice(&quote[..qn]);
        let c = vxlan::checksum::l4_checksum_v6(&src, &dst, 58, icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        40 + icmp_len
    } else {
        let src = Ipv4Addr::from(m.key.dst as u32).octets();
        let dst = Ipv4Addr::from(m.key.src as u32).octets();
        let icmp_len = 8 + qn;
        let total = 20 + icmp_len;
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = vxlan::checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let icmp = &mut ip[20..20 + icmp_len];
        icmp[0] = 3; // destination unreachable
        icmp[1] = 4; // fragmentation needed and DF set
        icmp[6..8].copy_from_slice(&(mtu.min(u16::MAX as u32) as u16).to_be_bytes());
        icmp[8..8 + qn].copy_from_slice(&quote[..qn]);
        let c = vxlan::checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        total
    };
    let outer = vxlan::Outer {
        src_mac: local_mac,
        dst_mac: client_mac,
        vlan: None,
        src_ip: our_vtep,
        dst_ip: client_vtep,
        ttl: 64,
    };
    let hl = vxlan::vxlan_header_len(&outer);
    let inner_frame_len = 14 + ip_len;
    let total = hl + inner_frame_len;
    if p.data().len() < total {
        p.adj(outer_len);
        return false;
    }
    p.trim(total);
    let d = p.data_mut();
    let (hdr, inner) = d.split_at_mut(hl);
    // Inner Ethernet: back to the client, from the MAC it sent to.
    inner[0..6].copy_from_slice(&inner_src_mac);
    inner[6..12].copy_from_slice(&inner_dst_mac);
    inner[12..14].copy_from_slice(if inner_v6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    inner[14..14 + ip_len].copy_from_slice(&ip[..ip_len]);
    let sport = vxlan::flow_src_port(&m.key.reversed());
    vxlan::emit_vxlan(&outer, sport, dport, m.vni, inner, hdr);
    true
}

/// (client VTEP, our VTEP, client-side MAC, VXLAN UDP port) from outer headers.
fn outer_endpoints(o: &[u8]) -> Option<(IpAddr, IpAddr, [u8; 6], u16)> {
    let mac: [u8; 6] = o.get(6..12)?.try_into().ok()?;
    let mut off = 12;
    let mut et = u16::from_be_bytes([*o.get(off)?, *o.get(off + 1)?]);
    while et == 0x8100 || et == 0x88a8 {
        off += 4;
        et = u16::from_be_bytes([*o.get(off)?, *o.get(off + 1)?]);
    }
    let l3 = off + 2;
    let (src, dst, l4) = match et {
        0x0800 => {
            let h = o.get(l3..l3 + 20)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            let s: [u8; 4] = h[12..16].try_into().ok()?;
            let d: [u8; 4] = h[16..20].try_into().ok()?;
            (IpAddr::V4(s.into()), IpAddr::V4(d.into()), l3 + ihl)
        }
        0x86dd => {
            let h = o.get(l3..l3 + 40)?;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            // Extension headers were walked by decap; the UDP header ends 16
            // bytes before the inner frame.
            (
                IpAddr::V6(s.into()),
                IpAddr::V6(d.into()),
                o.len().checked_sub(16)?,
            )
        }
        _ => return None,
    };
    let udp = o.get(l4..l4 + 4)?;
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    Some((src, dst, mac, dport))
}
