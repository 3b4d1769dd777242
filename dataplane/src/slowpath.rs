//! The slow path: the gateway's own small host stack, off the fast path.
//!
//! One slow-path thread ([`SlowPath`]) drains the punt queue
//! ([`crate::punt::QueuePunt`]) into a `smoltcp` interface (ARP replies,
//! ICMP echo replies, neighbour advertisements for our addresses) and sends its
//! replies on its own AF_PACKET socket, one `send` per frame.
//!
//! The same thread resolves the next hop: with `[gateway] next_hop_ip`, it sends
//! ARP requests (IPv4) or neighbour solicitations (IPv6) for it, every second
//! while unresolved and every `next_hop_refresh_s` once resolved, learns its MAC
//! from any ARP or NDP frame that carries it, and publishes it in
//! [`Shared::learned_next_hop`] (encoding in [`NextHop`]). Without a reply for
//! three refresh periods the next hop counts as unresolved again.
//!
//! The same thread runs the backend health checker ([`crate::health::Prober`]):
//! it sends the probes through the same sink and takes their answers from the
//! punt queue before smoltcp sees them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv6Packet, Icmpv6Repr, IpCidr, IpProtocol, Ipv6Packet,
    Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

use crate::config::Config;
use crate::engine::Shared;
use crate::punt::{NextHop, Punt, PuntQueue, QueuePunt, NEXT_HOP_PENDING, PUNT_FRAME, PUNT_SLOTS};
use vxlan::ethernet::HEADER_LEN as ETH_HDR;

/// Where the slow path's frames go.
pub trait FrameSink: Send {
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

impl FrameSink for Arc<crate::punt::Inject> {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.push(frame) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the queue to the workers is full",
            ))
        }
    }
}

impl FrameSink for crate::io::afpacket::RawSender {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        crate::io::afpacket::RawSender::send(self, frame)
    }
}

/// What the slow path needs from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowPathConfig {
    pub mac: [u8; 6],
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub prefix_len_v4: u8,
    pub prefix_len_v6: u8,
    pub next_hop_ip: Option<IpAddr>,
    pub refresh: Duration,
}

impl SlowPathConfig {
    /// Our addresses are `gateway.vtep_ips` and `gateway.underlay_ips`.
    pub fn from_config(cfg: &Config) -> SlowPathConfig {
        let g = &cfg.gateway;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for a in g.vtep_ips.iter().chain(g.underlay_ips.iter()) {
            match a {
                IpAddr::V4(x) if !v4.contains(x) => v4.push(*x),
                IpAddr::V6(x) if !v6.contains(x) => v6.push(*x),
                _ => {}
            }
        }
        SlowPathConfig {
            mac: g.local_mac,
            v4,
            v6,
            prefix_len_v4: g.prefix_len_v4.min(32),
            prefix_len_v6: g.prefix_len_v6.min(128),
            next_hop_ip: g.next_hop_ip,
            refresh: Duration::from_secs(u64::from(g.next_hop_refresh_s.max(1))),
        }
    }

    fn check(&self) -> Result<(), String> {
        match self.next_hop_ip {
            Some(IpAddr::V4(_)) if self.v4.is_empty() => Err(
                "gateway.next_hop_ip: an IPv4 next hop needs an IPv4 address in gateway.vtep_ips or underlay_ips"
                    .into(),
            ),
            Some(IpAddr::V6(_)) if self.v6.is_empty() => Err(
                "gateway.next_hop_ip: an IPv6 next hop needs an IPv6 address in gateway.vtep_ips or underlay_ips"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Counters of the slow path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowPathStats {
    /// Frames the workers queued / dropped because the queue was full (or too big).
    pub punted: u64,
    pub punt_dropped: u64,
    /// Frames the slow path took from the queue.
    pub handled: u64,
    /// Frames sent (replies and resolution requests) and send failures.
    pub sent: u64,
    pub send_errors: u64,
    /// ARP requests / neighbour solicitations sent for the next hop.
    pub resolve_requests: u64,
    /// Times the next hop's MAC was (re)confirmed.
    pub resolved: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
    resolve_requests: AtomicU64,
    resolved: AtomicU64,
}

/// The running slow-path thread. Stopped (and joined) by [`SlowPath::stop`] or on drop.
pub struct SlowPath {
    q: Arc<PuntQueue>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SlowPath {
    /// Starts the slow path for an AF_PACKET or AF_XDP run: replies go out
    /// through a plain packet socket on `tx_iface` (the backend's
    /// `tx_interface`, default its first interface).
    pub fn start(
        cfg: &Config,
        shared: Arc<Shared>,
        tx_iface: Option<&str>,
    ) -> Result<SlowPath, String> {
        let iface = tx_iface.ok_or("at least one interface is required")?;
        let sink = crate::io::afpacket::RawSender::open(iface).map_err(|e| e.to_string())?;
        SlowPath::spawn(SlowPathConfig::from_config(cfg), Box::new(sink), shared)
    }

    /// Starts the slow path for a backend whose workers own the I/O (DPDK):
    /// its frames go out through worker 0 ([`crate::punt::Inject`], installed
    /// in `shared.inject`, which must happen before the workers start).
    pub fn start_injecting(cfg: &Config, shared: Arc<Shared>) -> Result<SlowPath, String> {
        let inj = Arc::new(crate::punt::Inject::new(PUNT_SLOTS));
        if shared.inject.set(inj.clone()).is_err() {
            return Err("a slow path already runs for these workers".into());
        }
        SlowPath::spawn(SlowPathConfig::from_config(cfg), Box::new(inj), shared)
    }

    /// Starts the slow path with any frame sink (tests use a channel).
    pub fn spawn(
        sc: SlowPathConfig,
        sink: Box<dyn FrameSink>,
        shared: Arc<Shared>,
    ) -> Result<SlowPath, String> {
        sc.check()?;
        let q = Arc::new(PuntQueue::new(PUNT_SLOTS));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        if sc.next_hop_ip.is_some() {
            // Before any worker runs: nothing leaves for an unknown next hop.
            shared
                .learned_next_hop
                .store(NEXT_HOP_PENDING, Ordering::Release);
        }
        let (q2, c2, s2) = (q.clone(), counters.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("dpgw-slow".into())
            .spawn(move || slow_loop(sc, sink, shared, q2, c2, s2))
            .map_err(|e| format!("spawning the slow-path thread: {e}"))?;
        Ok(SlowPath {
            q,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// A punt handle for one worker.
    pub fn punt(&self) -> Box<dyn Punt> {
        let wake = match &self.thread {
            Some(t) => t.thread().clone(),
            None => std::thread::current(),
        };
        Box::new(QueuePunt {
            q: self.q.clone(),
            wake,
        })
    }

    pub fn stats(&self) -> SlowPathStats {
        let c = &self.counters;
        SlowPathStats {
            punted: self.q.punted.load(Ordering::Relaxed),
            punt_dropped: self.q.dropped.load(Ordering::Relaxed),
            handled: c.handled.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            resolve_requests: c.resolve_requests.load(Ordering::Relaxed),
            resolved: c.resolved.load(Ordering::Relaxed),
        }
    }

    /// Stops and joins the thread; returns the final counters.
    pub fn stop(mut self) -> SlowPathStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The smoltcp device: one pending received frame, and the sink for replies.
struct Dev {
    frame: Vec<u8>,
    pending: bool,
    sink: Box<dyn FrameSink>,
    counters: Arc<Counters>,
}

impl Dev {
    fn send(&mut self, frame: &[u8]) {
        match self.sink.send(frame) {
            Ok(()) => self.counters.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a> {
    sink: &'a mut Box<dyn FrameSink>,
    counters: &'a Counters,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        match self.sink.send(&buf) {
            Ok(()) => self.counters.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.send_errors.fetch_add(1, Ordering::Relaxed),
        };
        r
    }
}

impl phy::Device for Dev {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        if !self.pending {
            return None;
        }
        self.pending = false;
        let Dev {
            frame,
            sink,
            counters,
            ..
        } = self;
        Some((Rx(frame), Tx { sink, counters }))
    }

    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx {
            sink: &mut self.sink,
            counters: &self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = PUNT_FRAME;
        c.checksum = ChecksumCapabilities::default();
        c
    }
}

/// Builds the smoltcp interfaces for our addresses (smoltcp holds at most two
/// addresses per interface, so there is one interface per pair; every frame is
/// offered to each, and each answers only for its own addresses).
fn interfaces(sc: &SlowPathConfig, dev: &mut Dev, now: smoltcp::time::Instant) -> Vec<Interface> {
    let mut cidrs: Vec<IpCidr> = Vec::new();
    for a in &sc.v4 {
        cidrs.push(IpCidr::new((*a).into(), sc.prefix_len_v4));
    }
    for a in &sc.v6 {
        cidrs.push(IpCidr::new((*a).into(), sc.prefix_len_v6));
    }
    let mut out = Vec::new();
    for chunk in cidrs.chunks(2) {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(sc.mac)));
        cfg.random_seed = u64::from(std::process::id()) ^ now.total_micros() as u64;
        let mut iface = Interface::new(cfg, dev, now);
        iface.update_ip_addrs(|addrs| {
            for c in chunk {
                let _ = addrs.push(*c);
            }
        });
        match sc.next_hop_ip {
            Some(IpAddr::V4(nh)) => {
                let _ = iface.routes_mut().add_default_ipv4_route(nh);
            }
            Some(IpAddr::V6(nh)) => {
                let _ = iface.routes_mut().add_default_ipv6_route(nh);
            }
            None => {}
        }
        out.push(iface);
    }
    out
}

fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An ARP request for `target` from `src` (broadcast).
pub fn arp_request(mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: src,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut buf = vec![0u8; ETH_HDR + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    buf
}

/// An ICMPv6 NDP message (solicitation or advertisement) in an Ethernet frame.
fn ndp_frame(
    mac: [u8; 6],
    eth_dst: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ndp: NdiscRepr,
) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(ndp);
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut buf = vec![0u8; ETH_HDR + ip.buffer_len() + icmp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress(eth_dst),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut eth);
    let mut ipp = Ipv6Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp);
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(ipp.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// A neighbour solicitation for `target` from `src` (to its solicited-node group).
pub fn neighbor_solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let g = group.octets();
    ndp_frame(
        mac,
        [0x33, 0x33, g[12], g[13], g[14], g[15]],
        src,
        group,
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(mac))),
        },
    )
}

/// What an ARP/NDP frame tells about `ip`'s MAC, if anything.
fn mac_of(frame: &[u8], ip: IpAddr) -> Option<[u8; 6]> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match (eth.ethertype(), ip) {
        (EthernetProtocol::Arp, IpAddr::V4(ip)) => {
            let ArpRepr::EthernetIpv4 {
                source_hardware_addr,
                source_protocol_addr,
                ..
            } = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?
            else {
                return None;
            };
            (source_protocol_addr == ip && source_hardware_addr.is_unicast())
                .then_some(source_hardware_addr.0)
        }
        (EthernetProtocol::Ipv6, IpAddr::V6(ip)) => {
            let ipp = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let ipr = Ipv6Repr::parse(&ipp).ok()?;
            if ipr.next_header != IpProtocol::Icmpv6 {
                return None;
            }
            let icmp = Icmpv6Packet::new_checked(ipp.payload()).ok()?;
            let repr = Icmpv6Repr::parse(
                &ipr.src_addr,
                &ipr.dst_addr,
                &icmp,
                &ChecksumCapabilities::default(),
            )
            .ok()?;
            let ll = |l: Option<RawHardwareAddress>| -> Option<[u8; 6]> {
                let b = l?;
                let b = b.as_bytes();
                (b.len() == 6).then(|| [b[0], b[1], b[2], b[3], b[4], b[5]])
            };
            match repr {
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    target_addr,
                    lladdr,
                    ..
                }) if target_addr == ip => Some(ll(lladdr).unwrap_or(eth.src_addr().0)),
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { lladdr, .. })
                    if ipr.src_addr == ip =>
                {
                    ll(lladdr)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Answers a unicast neighbour solicitation for one of our addresses (smoltcp
/// only answers the multicast ones; Linux probes reachability with unicast).
/// The reply to an ARP request for one of our addresses from a sender outside
/// our subnets, which smoltcp ignores. A DSR backend on our link asks that way
/// (Linux takes the sender address from the packet it wants to send: the VIP
/// of a health probe's answer), and Linux hosts answer such requests.
fn off_subnet_arp_reply(frame: &[u8], sc: &SlowPathConfig) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?
    else {
        return None;
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(sc.prefix_len_v4))
        .unwrap_or(0);
    let on_link = sc
        .v4
        .iter()
        .any(|a| u32::from(*a) & mask == u32::from(source_protocol_addr) & mask);
    if !sc.v4.contains(&target_protocol_addr)
        || on_link
        || !source_hardware_addr.is_unicast()
        || source_protocol_addr.is_unspecified()
    {
        return None;
    }
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(sc.mac),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut buf = vec![0u8; ETH_HDR + arp.buffer_len()];
    let mut out = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(sc.mac),
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut out);
    arp.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
    Some(buf)
}

fn unicast_ns_reply(frame: &[u8], sc: &SlowPathConfig) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv6 {
        return None;
    }
    let ipp = Ipv6Packet::new_checked(eth.payload()).ok()?;
    let ipr = Ipv6Repr::parse(&ipp).ok()?;
    if ipr.next_header != IpProtocol::Icmpv6
        || ipr.dst_addr.is_multicast()
        || ipr.src_addr.is_unspecified()
    {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(ipp.payload()).ok()?;
    let repr = Icmpv6Repr::parse(
        &ipr.src_addr,
        &ipr.dst_addr,
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .ok()?;
    let Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) = repr else {
        return None;
    };
    if !sc.v6.contains(&target_addr) || ipr.hop_limit != 255 {
        return None;
    }
    Some(ndp_frame(
        sc.mac,
        eth.src_addr().0,
        target_addr,
        ipr.src_addr,
        NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            target_addr,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(sc.mac))),
        },
    ))
}

/// Next-hop resolution state.
struct Resolver {
    target: IpAddr,
    request: Vec<u8>,
    learned: Option<[u8; 6]>,
    confirmed: Option<Instant>,
    next_send: Instant,
    refresh: Duration,
}

impl Resolver {
    fn new(sc: &SlowPathConfig, now: Instant) -> Option<Resolver> {
        let target = sc.next_hop_ip?;
        let request = match target {
            IpAddr::V4(t) => arp_request(sc.mac, *sc.v4.first()?, t),
            IpAddr::V6(t) => neighbor_solicit(sc.mac, *sc.v6.first()?, t),
        };
        Some(Resolver {
            target,
            request,
            learned: None,
            confirmed: None,
            next_send: now,
            refresh: sc.refresh,
        })
    }

    fn retry(&self) -> Duration {
        self.refresh.min(Duration::from_secs(1))
    }
}

fn slow_loop(
    sc: SlowPathConfig,
    sink: Box<dyn FrameSink>,
    shared: Arc<Shared>,
    q: Arc<PuntQueue>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let t0 = Instant::now();
    let now_s =
        |t: Instant| smoltcp::time::Instant::from_micros(t.duration_since(t0).as_micros() as i64);
    let mut dev = Dev {
        frame: Vec::with_capacity(PUNT_FRAME),
        pending: false,
        sink,
        counters: counters.clone(),
    };
    let mut ifaces = interfaces(&sc, &mut dev, now_s(Instant::now()));
    let mut sockets = SocketSet::new(Vec::new());
    let mut resolver = Resolver::new(&sc, Instant::now());
    let mut prober = crate::health::Prober::new();
    while !stop.load(Ordering::Acquire) {
        while let Some(b) = q.full.pop() {
            let n = b.len.min(PUNT_FRAME);
            dev.frame.clear();
            dev.frame.extend_from_slice(&b.data[..n]);
            let _ = q.free.push(b);
            counters.handled.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if prober.handle(&dev.frame, &shared, now) {
                for f in prober.out.drain(..) {
                    dev.send(&f);
                }
                continue;
            }
            if let Some(r) = resolver.as_mut() {
                if let Some(mac) = mac_of(&dev.frame, r.target) {
                    r.learned = Some(mac);
                    r.confirmed = Some(now);
                    counters.resolved.fetch_add(1, Ordering::Relaxed);
                    shared
                        .learned_next_hop
                        .store(NextHop::Learned(mac).encode(), Ordering::Release);
                }
            }
            if let Some(reply) = off_subnet_arp_reply(&dev.frame, &sc) {
                dev.send(&reply);
                continue;
            }
            if let Some(reply) = unicast_ns_reply(&dev.frame, &sc) {
                dev.send(&reply);
                continue;
            }
            for iface in ifaces.iter_mut() {
                dev.pending = true;
                iface.poll(now_s(now), &mut dev, &mut sockets);
            }
            dev.pending = false;
        }
        let now = Instant::now();
        let mut wait = Duration::from_millis(100).min(prober.poll(&shared, now));
        for f in prober.out.drain(..) {
            dev.send(&f);
        }
        if let Some(r) = resolver.as_mut() {
            if let Some(c) = r.confirmed {
                if r.learned.is_some() && now.duration_since(c) > 3 * r.refresh {
                    r.learned = None;
                    shared
                        .learned_next_hop
                        .store(NEXT_HOP_PENDING, Ordering::Release);
                }
            }
            if now >= r.next_send {
                let req = r.request.clone();
                dev.send(&req);
                counters.resolve_requests.fetch_add(1, Ordering::Relaxed);
                r.next_send = now
                    + if r.learned.is_some() {
                        r.refresh
                    } else {
                        r.retry()
                    };
            }
            wait = wait.min(r.next_send.saturating_duration_since(now));
        }
        if q.full.is_empty() {
            std::thread::park_timeout(wait.max(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exception::{classify, Exception};
    use crate::tables::Tables;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr};
    use std::sync::mpsc;

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x22];
    const OUR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const OUR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7);

    struct ChanSink(mpsc::Sender<Vec<u8>>);
    impl FrameSink for ChanSink {
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            let _ = self.0.send(frame.to_vec());
            Ok(())
        }
    }

    fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let icmp = Icmpv4Repr::EchoRequest {
            ident: 7,
            seq_no: 3,
            data: b"hello dpgw",
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ETH_HDR + ip.buffer_len() + icmp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(PEER_MAC),
            dst_addr: EthernetAddress(OUR_MAC),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut ipp, &ChecksumCapabilities::default());
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(ipp.payload_mut()),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    fn icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let icmp = Icmpv6Repr::EchoRequest {
            ident: 9,
            seq_no: 1,
            data: b"hello v6",
        };
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ETH_HDR + ip.buffer_len() + icmp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(PEER_MAC),
            dst_addr: EthernetAddress(OUR_MAC),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut eth);
        let mut ipp = Ipv6Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut ipp);
        icmp.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(ipp.payload_mut()),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    fn v4s() -> Vec<u32> {
        vec![u32::from(OUR4)]
    }
    fn v6s() -> Vec<u128> {
        vec![u128::from(OUR6)]
    }

    #[test]
    fn test_classify() {
        let arp = arp_request(PEER_MAC, PEER4, OUR4);
        assert_eq!(classify(&arp, &v4s(), &[]), Some(Exception::Arp));
        // ARP for someone else.
        let other = arp_request(PEER_MAC, PEER4, Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(classify(&other, &v4s(), &v6s()), None);
        let ping = icmp_echo(PEER4, OUR4);
        assert_eq!(classify(&ping, &v4s(), &[]), Some(Exception::IcmpEcho));
        assert_eq!(classify(&icmp_echo(PEER4, PEER4), &v4s(), &[]), None);
        let ping6 = icmpv6_echo(PEER6, OUR6);
        assert_eq!(classify(&ping6, &[], &v6s()), Some(Exception::Icmpv6Echo));
        let ns = neighbor_solicit(PEER_MAC, PEER6, OUR6);
        assert_eq!(classify(&ns, &[], &v6s()), Some(Exception::Ndp));
        assert_eq!(
            classify(&neighbor_solicit(PEER_MAC, PEER6, PEER6), &[], &v6s()),
            None
        );
        // Truncations of every kind never panic and never match.
        for f in [&arp, &ping, &ping6, &ns] {
            for l in 0..f.len().min(60) {
                let _ = classify(&f[..l], &v4s(), &v6s());
            }
        }
        assert_eq!(classify(&ping[..30], &v4s(), &[]), None);
        // An echo reply is not an exception.
        let mut reply = ping.clone();
        reply[ETH_HDR + 20] = 0;
        assert_eq!(classify(&reply, &v4s(), &[]), None);
    }

    #[test]
    fn test_next_hop_encoding() {
        let m = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        for nh in [
            NextHop::Configured,
            NextHop::Unresolved,
            NextHop::Learned(m),
        ] {
            assert_eq!(NextHop::decode(nh.encode()), nh);
        }
        assert_eq!(NextHop::decode(0), NextHop::Configured);
        assert_eq!(NextHop::Learned(m).mac([9; 6]), Some(m));
        assert_eq!(NextHop::Configured.mac([9; 6]), Some([9; 6]));
        assert_eq!(NextHop::Unresolved.mac([9; 6]), None);
    }

    fn start(next_hop: Option<IpAddr>) -> (SlowPath, mpsc::Receiver<Vec<u8>>, Arc<Shared>) {
        let cfg = Config::parse("[pcap]\ninput = [\"x.pcap\"]\n").unwrap();
        let shared = Shared::new(Tables::build(&cfg, 1).unwrap(), 1);
        let (tx, rx) = mpsc::channel();
        let sc = SlowPathConfig {
            mac: OUR_MAC,
            v4: vec![OUR4],
            v6: vec![OUR6],
            prefix_len_v4: 24,
            prefix_len_v6: 64,
            next_hop_ip: next_hop,
            refresh: Duration::from_secs(30),
        };
        let sp = SlowPath::spawn(sc, Box::new(ChanSink(tx)), shared.clone()).unwrap();
        (sp, rx, shared)
    }

    fn recv(rx: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a frame from the slow path")
    }

    #[test]
    fn test_slow_path_answers_arp_and_ping() {
        let (sp, rx, _) = start(None);
        let mut punt = sp.punt();
        punt.punt(&arp_request(PEER_MAC, PEER4, OUR4));
        let reply = recv(&rx);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr().0, PEER_MAC);
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr.0, OUR_MAC);
                assert_eq!(source_protocol_addr, OUR4);
                assert_eq!(target_protocol_addr, PEER4);
            }
            _ => panic!("not an Ethernet/IPv4 ARP reply"),
        }
        punt.punt(&icmp_echo(PEER4, OUR4));
        let reply = recv(&rx);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr().0, PEER_MAC);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR4, PEER4));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                assert_eq!((ident, seq_no, data), (7, 3, &b"hello dpgw"[..]));
            }
            r => panic!("not an echo reply: {r:?}"),
        }
        let st = sp.stop();
        assert_eq!(st.punted, 2);
        assert_eq!(st.handled, 2);
        assert_eq!(st.sent, 2);
    }

    #[test]
    fn test_arp_from_off_subnet_sender() {
        let (sp, rx, _) = start(None);
        let mut punt = sp.punt();
        let vip = Ipv4Addr::new(10, 96, 0, 100);
        punt.punt(&arp_request(PEER_MAC, vip, OUR4));
        let reply = recv(&rx);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr().0, PEER_MAC);
        match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr.0, OUR_MAC);
                assert_eq!((source_protocol_addr, target_protocol_addr), (OUR4, vip));
            }
            _ => panic!("not an Ethernet/IPv4 ARP reply"),
        }
        // On-link senders are still answered once (by smoltcp).
        punt.punt(&arp_request(PEER_MAC, PEER4, OUR4));
        recv(&rx);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        sp.stop();
    }

    fn parse_na(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, Ipv6Addr) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr().0, PEER_MAC);
        let ipp = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let ipr = Ipv6Repr::parse(&ipp).unwrap();
        let icmp = Icmpv6Packet::new_checked(ipp.payload()).unwrap();
        match Icmpv6Repr::parse(
            &ipr.src_addr,
            &ipr.dst_addr,
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .unwrap()
        {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                target_addr,
                lladdr,
                ..
            }) => {
                assert_eq!(lladdr.unwrap().as_bytes(), &OUR_MAC);
                (ipr.src_addr, ipr.dst_addr, target_addr)
            }
            r => panic!("not a neighbour advertisement: {r:?}"),
        }
    }

    #[test]
    fn test_slow_path_answers_ndp_and_ping6() {
        let (sp, rx, _) = start(None);
        let mut punt = sp.punt();
        // Multicast solicitation (address resolution): smoltcp answers.
        punt.punt(&neighbor_solicit(PEER_MAC, PEER6, OUR6));
        assert_eq!(parse_na(&recv(&rx)), (OUR6, PEER6, OUR6));
        // Unicast solicitation (reachability probe): answered by us.
        let uni = ndp_frame(
            PEER_MAC,
            OUR_MAC,
            PEER6,
            OUR6,
            NdiscRepr::NeighborSolicit {
                target_addr: OUR6,
                lladdr: Some(RawHardwareAddress::from(EthernetAddress(PEER_MAC))),
            },
        );
        punt.punt(&uni);
        assert_eq!(parse_na(&recv(&rx)), (OUR6, PEER6, OUR6));
        punt.punt(&icmpv6_echo(PEER6, OUR6));
        let reply = recv(&rx);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        let ipp = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let ipr = Ipv6Repr::parse(&ipp).unwrap();
        let icmp = Icmpv6Packet::new_checked(ipp.payload()).unwrap();
        match Icmpv6Repr::parse(
            &ipr.src_addr,
            &ipr.dst_addr,
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .unwrap()
        {
            Icmpv6Repr::EchoReply { ident, data, .. } => {
                assert_eq!((ident, data), (9, &b"hello v6"[..]))
            }
            r => panic!("not an echo reply: {r:?}"),
        }
        sp.stop();
    }

    #[test]
    fn test_next_hop_resolution() {
        let (sp, rx, shared) = start(Some(IpAddr::V4(PEER4)));
        assert_eq!(
            NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire)),
            NextHop::Unresolved
        );
        // The slow path asks at once ...
        let req = recv(&rx);
        assert_eq!(req, arp_request(OUR_MAC, OUR4, PEER4));
        // ... and learns from the reply.
        let mut reply = arp_request(PEER_MAC, PEER4, OUR4);
        reply[ETH_HDR + 7] = 2; // operation: reply
        sp.punt().punt(&reply);
        let t0 = Instant::now();
        while NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire))
            != NextHop::Learned(PEER_MAC)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "next hop not learned"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sp.stop().resolved, 1);
    }

    #[test]
    fn test_next_hop_resolution_v6() {
        let (sp, rx, shared) = start(Some(IpAddr::V6(PEER6)));
        let req = recv(&rx);
        assert_eq!(req, neighbor_solicit(OUR_MAC, OUR6, PEER6));
        let na = ndp_frame(
            PEER_MAC,
            OUR_MAC,
            PEER6,
            OUR6,
            NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::SOLICITED,
                target_addr: PEER6,
                lladdr: Some(RawHardwareAddress::from(EthernetAddress(PEER_MAC))),
            },
        );
        assert_eq!(classify(&na, &[], &v6s()), Some(Exception::Ndp));
        sp.punt().punt(&na);
        let t0 = Instant::now();
        while NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire))
            != NextHop::Learned(PEER_MAC)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "next hop not learned"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sp.stop();
    }

    #[test]
    fn test_punt_queue_bounded() {
        // No slow path draining: the queue fills and further punts are dropped.
        let q = Arc::new(PuntQueue::new(4));
        let mut p = QueuePunt {
            q: q.clone(),
            wake: std::thread::current(),
        };
        let f = arp_request(PEER_MAC, PEER4, OUR4);
        for _ in 0..6 {
            p.punt(&f);
        }
        p.punt(&vec![0u8; PUNT_FRAME + 1]);
        assert_eq!(q.punted.load(Ordering::Relaxed), 4);
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.full.len(), 4);
    }
}
