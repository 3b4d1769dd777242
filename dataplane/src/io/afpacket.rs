//! AF_PACKET backend: memory-mapped rings on any Linux interface (veth in tests).
//!
//! Each worker owns, per receive interface, one socket with a TPACKET_V3 RX ring
//! (blocks of packets the kernel fills and hands over whole), and one socket with
//! a TX ring on the transmit interface. The TX ring is TPACKET_V2: the kernel's
//! TPACKET_V3 TX path only accepts fixed-size frames laid out like V2 and gives
//! nothing in return, so V2 is the well-trodden choice (one socket cannot mix
//! versions, hence two sockets per worker).
//!
//! * Several workers share an interface through `PACKET_FANOUT` (hash mode: the
//!   kernel's symmetric flow hash, so both directions of a flow and every packet
//!   of one VXLAN flow land on one worker). The group id is unique per run: the
//!   first socket asks the kernel for a fresh id (`PACKET_FANOUT_FLAG_UNIQUEID`),
//!   the others join it.
//! * Busy polling: `rx_burst` reads block headers in shared memory, no system
//!   call per packet or per burst. With `poll_when_idle`, a worker that found
//!   nothing many times in a row sleeps in `poll(2)` (at most 10 ms, so it still
//!   sees the stop flag).
//! * RX copies each frame into a [`HeapBuf`] from the queue's own pool (so stages
//!   can strip and prepend headers) and returns a block to the kernel as soon as
//!   its last packet is copied. Frames we transmitted ourselves are not received
//!   (`PACKET_IGNORE_OUTGOING`, and `PACKET_OUTGOING` frames are skipped too on
//!   kernels without it).
//! * TX writes frames into the ring and kicks the kernel with one
//!   `sendto(MSG_DONTWAIT)` per burst. A full ring leaves packets in the burst
//!   (the engine retries, then counts `tx_full`).
//!
//! Checksums: a frame that was generated on this host and crossed a veth with
//! checksum offload at its default still carries a partial checksum (the kernel
//! marks it `TP_STATUS_CSUMNOTREADY`): the L4 checksum field holds only the
//! pseudo-header sum, and the sender counted on "hardware" to finish it. Every
//! container host's veth pairs work this way. The RX sockets ask for a
//! `virtio_net_hdr` in front of each frame (`PACKET_VNET_HDR`), whose
//! `csum_start`/`csum_offset` say where the checksum is, and RX completes it
//! in the copy, as the kernel's own forwarding does (`skb_checksum_help`):
//! counted in `csum_completed`; offsets outside the frame are dropped and
//! counted (`csum_bad_offsets`). Without the header (kernels that refuse it),
//! such frames are counted in `csum_not_ready` and passed on as they are.
//! Super-frames of the kernel's segmentation offload (GSO: a TCP frame of up
//! to 64 KiB, `gso_type` set, what a bulk TCP sender behind a veth produces)
//! are cut into segments of `gso_size` payload bytes in the copy, as a NIC's
//! TSO or the kernel's forwarding would ([`vxlan::gso`], plain and
//! VXLAN-tunnelled TCP over IPv4/IPv6): counted in `gso_frames` and
//! `gso_segments`. A super-frame that cannot be segmented (other headers, no
//! room in the burst) is dropped before the engine and counted in
//! `gso_dropped`.
//!
//! Every error names the interface and the system call, e.g.
//! `afpacket: eth0: setsockopt(PACKET_RX_RING): Invalid argument`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::buf::{HeapBuf, HEADROOM, TAILROOM};
use super::{Burst, Packet, Queue, MAX_BURST};
use crate::config::AfPacketSection;

/// Buffers per worker pool: a full burst in flight twice, plus slack.
const POOL_SIZE: usize = 2 * MAX_BURST + crate::io::MAX_HELD;
/// Nominal RX frame size given to the kernel (TPACKET_V3 packs frames of any
/// size into a block; this only sets `tp_frame_nr`).
const RX_FRAME_SIZE: u32 = 2048;
/// Offset of the frame data in a TPACKET_V2 TX frame (TPACKET_ALIGN(sizeof(tpacket2_hdr))).
const TX_DATA_OFF: usize = 32;
/// Offset of the `sockaddr_ll` after a `tpacket3_hdr` (TPACKET_ALIGN(sizeof(tpacket3_hdr))).
const V3_SLL_OFF: usize = 48;
/// Consecutive empty polls before a worker with `poll_when_idle` sleeps in poll(2).
const IDLE_POLLS_BEFORE_SLEEP: u32 = 64;
const IDLE_POLL_TIMEOUT_MS: i32 = 10;
/// `setsockopt(SOL_PACKET, PACKET_VNET_HDR)` (linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;
/// Size of the `virtio_net_hdr` the kernel writes in front of each frame with
/// `PACKET_VNET_HDR`: flags u8, gso_type u8, hdr_len, gso_size, csum_start,
/// csum_offset (u16 each, native byte order).
const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at csum_start/csum_offset is partial.
const VNET_F_NEEDS_CSUM: u8 = 1;

/// A failed system call on an interface.
#[derive(Debug, thiserror::Error)]
#[error("afpacket: {iface}: {call}: {source}")]
pub struct AfPacketError {
    pub iface: String,
    pub call: &'static str,
    pub source: io::Error,
}

impl AfPacketError {
    fn last(iface: &str, call: &'static str) -> AfPacketError {
        AfPacketError {
            iface: iface.to_string(),
            call,
            source: io::Error::last_os_error(),
        }
    }

    fn invalid(iface: &str, call: &'static str, msg: String) -> AfPacketError {
        AfPacketError {
            iface: iface.to_string(),
            call,
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
        }
    }
}

/// Counters of one queue that the engine's counters do not cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfPacketCounters {
    /// Frames the kernel put in our RX rings (PACKET_STATISTICS `tp_packets`).
    pub kernel_packets: u64,
    /// Frames the kernel dropped because our RX ring was full (`tp_drops`).
    pub kernel_drops: u64,
    /// Times the kernel found its next block still ours and stopped filling
    /// the ring until we gave one back (`tp_freeze_q_cnt`).
    pub kernel_freezes: u64,
    /// Frames larger than our buffers (dropped before the engine saw them).
    pub oversize: u64,
    /// Frames skipped because we sent them ourselves (kernels without IGNORE_OUTGOING).
    pub outgoing_skipped: u64,
    /// Frames received with a partial checksum that could not be completed
    /// (no `virtio_net_hdr` from this kernel): passed on as they are.
    pub csum_not_ready: u64,
    /// Frames whose partial checksum (checksum offload on the sender) RX completed.
    pub csum_completed: u64,
    /// Frames with a partial checksum whose offsets lie outside the frame (dropped).
    pub csum_bad_offsets: u64,
    /// Segmentation-offload super-frames cut into segments, and the segments.
    pub gso_frames: u64,
    pub gso_segments: u64,
    /// Super-frames that could not be segmented (dropped).
    pub gso_dropped: u64,
    /// TX frames the kernel rejected (TP_STATUS_WRONG_FORMAT).
    pub tx_wrong_format: u64,
    /// `sendto` kicks, and how many of them failed (frames stay queued and are
    /// sent by the next kick).
    pub tx_kicks: u64,
    pub tx_kick_errors: u64,
    /// Times a worker slept in poll(2).
    pub idle_sleeps: u64,
}

/// An mmap'ed ring, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; the queue that
// owns it is used by one thread at a time.
unsafe impl Send for Mmap {}

impl Mmap {
    fn new(fd: RawFd, len: usize, iface: &str) -> Result<Mmap, AfPacketError> {
        // SAFETY: a fresh shared mapping of the packet socket's ring; the kernel
        // checks `len` against the ring it set up; no Rust memory is aliased.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        let p = if p == libc::MAP_FAILED {
            // MAP_LOCKED fails without enough RLIMIT_MEMLOCK: retry without it.
            // SAFETY: as above.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(AfPacketError::last(iface, "mmap"));
            }
            p
        } else {
            p
        };
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| AfPacketError::invalid(iface, "mmap", "null mapping".into()))?;
        Ok(Mmap { ptr, len })
    }

    /// The 32-bit status word at `off` (block or frame status), shared with the kernel.
    #[inline(always)]
    fn status(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len && off & 3 == 0);
        // SAFETY: `off` is a block/frame start inside the mapping (callers compute
        // it from the ring geometry), 4-aligned because blocks/frames are
        // page/16-aligned; the kernel writes this word concurrently, which is why
        // it is accessed atomically.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    #[inline(always)]
    fn read_u32(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.len);
        // SAFETY: in bounds (callers check `off + 4 <= len`); the kernel does not
        // write a block while it is owned by user space (status USER), so a plain
        // unaligned read is a consistent snapshot.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_unaligned() }
    }

    #[inline(always)]
    fn read_u16(&self, off: usize) -> u16 {
        debug_assert!(off + 2 <= self.len);
        // SAFETY: as for `read_u32`.
        unsafe { self.ptr.as_ptr().add(off).cast::<u16>().read_unaligned() }
    }

    #[inline(always)]
    fn read_u8(&self, off: usize) -> u8 {
        debug_assert!(off < self.len);
        // SAFETY: as for `read_u32`.
        unsafe { *self.ptr.as_ptr().add(off) }
    }

    /// Bytes `off..off + len` of the mapping.
    #[inline(always)]
    fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "ring slice out of bounds"
        );
        // SAFETY: bounds checked above; the region belongs to user space while
        // its block/frame status says so (callers check it first).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    #[inline(always)]
    fn write(&mut self, off: usize, bytes: &[u8]) {
        assert!(
            off.checked_add(bytes.len()).is_some_and(|e| e <= self.len),
            "ring write out of bounds"
        );
        // SAFETY: bounds checked above; the frame is AVAILABLE (owned by user
        // space) when callers write to it, so the kernel does not read it now.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len())
        }
    }

    #[inline(always)]
    fn write_u32(&mut self, off: usize, v: u32) {
        self.write(off, &v.to_ne_bytes());
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `mmap` returned; nothing borrows it
        // any more (borrows are tied to `&self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn setsockopt<T>(
    fd: RawFd,
    level: i32,
    name: i32,
    val: &T,
    iface: &str,
    call: &'static str,
) -> Result<(), AfPacketError> {
    // SAFETY: `val` points to a live `T` of the size passed; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(AfPacketError::last(iface, call));
    }
    Ok(())
}

fn packet_socket(iface: &str) -> Result<OwnedFd, AfPacketError> {
    // Protocol 0: the socket receives nothing until it is bound with a protocol.
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AfPacketError::last(iface, "socket(AF_PACKET, SOCK_RAW)"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's index, or an error naming it.
pub fn if_index(iface: &str) -> Result<i32, AfPacketError> {
    let name = CString::new(iface).map_err(|_| {
        AfPacketError::invalid(
            iface,
            "if_nametoindex",
            "interface name contains NUL".into(),
        )
    })?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(AfPacketError::last(iface, "if_nametoindex"));
    }
    Ok(idx as i32)
}

fn ifreq_for(iface: &str) -> Result<libc::ifreq, AfPacketError> {
    let bytes = iface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(AfPacketError::invalid(
            iface,
            "ioctl",
            "interface name too long".into(),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// The interface's MTU (SIOCGIFMTU).
pub fn if_mtu(fd: RawFd, iface: &str) -> Result<u32, AfPacketError> {
    let mut req = ifreq_for(iface)?;
    // SAFETY: SIOCGIFMTU reads the name and writes `ifru_mtu` of a live ifreq.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut req as *mut libc::ifreq) };
    if r != 0 {
        return Err(AfPacketError::last(iface, "ioctl(SIOCGIFMTU)"));
    }
    // SAFETY: the kernel filled the `ifru_mtu` member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(0) as u32)
}

/// The interface's MAC address (SIOCGIFHWADDR).
pub fn if_mac(iface: &str) -> Result<[u8; 6], AfPacketError> {
    let fd = packet_socket(iface)?;
    let mut req = ifreq_for(iface)?;
    // SAFETY: SIOCGIFHWADDR reads the name and writes `ifru_hwaddr` of a live ifreq.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFHWADDR as _,
            &mut req as *mut libc::ifreq,
        )
    };
    if r != 0 {
        return Err(AfPacketError::last(iface, "ioctl(SIOCGIFHWADDR)"));
    }
    // SAFETY: the kernel filled the `ifru_hwaddr` member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

fn bind(fd: RawFd, ifindex: i32, protocol: u16, iface: &str) -> Result<(), AfPacketError> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a live sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(AfPacketError::last(iface, "bind"));
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// One TPACKET_V3 receive ring on one interface.
struct RxRing {
    iface: String,
    fd: OwnedFd,
    map: Mmap,
    block_size: usize,
    block_count: usize,
    /// Block we are reading (or waiting for).
    cur: usize,
    /// Packets left in the current block (0 = not opened yet).
    left: u32,
    /// Offset of the next packet header inside the current block.
    off: usize,
    /// The kernel writes a `virtio_net_hdr` in front of each frame.
    vnet_hdr: bool,
}

impl RxRing {
    fn open(
        iface: &str,
        sec: &AfPacketSection,
        fanout: &mut Option<u16>,
    ) -> Result<RxRing, AfPacketError> {
        let ifindex = if_index(iface)?;
        let fd = packet_socket(iface)?;
        let raw = fd.as_raw_fd();
        let page = page_size();
        let bs = sec.block_size as usize;
        if !bs.is_power_of_two() || bs < page {
            return Err(AfPacketError::invalid(
                iface,
                "setsockopt(PACKET_RX_RING)",
                format!("afpacket.block_size {bs} must be a power of two and a multiple of the page size {page}"),
            ));
        }
        if sec.block_count == 0 {
            return Err(AfPacketError::invalid(
                iface,
                "setsockopt(PACKET_RX_RING)",
                "afpacket.block_count must be at least 1".into(),
            ));
        }
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
            iface,
            "setsockopt(PACKET_VERSION)",
        )?;
        // Before the ring: the kernel refuses it afterwards. Not fatal on
        // kernels without it (partial checksums are then only counted).
        let one: libc::c_int = 1;
        let vnet_hdr = setsockopt(
            raw,
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            &one,
            iface,
            "setsockopt(PACKET_VNET_HDR)",
        )
        .is_ok();
        let frame = RX_FRAME_SIZE.min(sec.block_size);
        let req = libc::tpacket_req3 {
            tp_block_size: sec.block_size,
            tp_block_nr: sec.block_count,
            tp_frame_size: frame,
            tp_frame_nr: (sec.block_size / frame) * sec.block_count,
            tp_retire_blk_tov: sec.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            iface,
            "setsockopt(PACKET_RX_RING)",
        )?;
        let len = bs * sec.block_count as usize;
        let map = Mmap::new(raw, len, iface)?;
        // Not fatal where the kernel is older than 4.20: outgoing frames are
        // skipped by their packet type instead.
        let one: libc::c_int = 1;
        let _ = setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
            iface,
            "setsockopt(PACKET_IGNORE_OUTGOING)",
        );
        bind(raw, ifindex, libc::ETH_P_ALL as u16, iface)?;
        match *fanout {
            None => {
                // The group's own hook replaces the socket's, so it needs its
                // own IGNORE_OUTGOING flag.
                let arg: u32 = (libc::PACKET_FANOUT_HASH
                    | libc::PACKET_FANOUT_FLAG_UNIQUEID
                    | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING)
                    << 16;
                setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_FANOUT,
                    &arg,
                    iface,
                    "setsockopt(PACKET_FANOUT)",
                )?;
                let mut got: u32 = 0;
                let mut l = std::mem::size_of::<u32>() as libc::socklen_t;
                // SAFETY: `got`/`l` are live and sized for the u32 the kernel writes.
                let r = unsafe {
                    libc::getsockopt(
                        raw,
                        libc::SOL_PACKET,
                        libc::PACKET_FANOUT,
                        (&mut got as *mut u32).cast(),
                        &mut l,
                    )
                };
                if r != 0 {
                    return Err(AfPacketError::last(iface, "getsockopt(PACKET_FANOUT)"));
                }
                *fanout = Some((got & 0xffff) as u16);
            }
            Some(id) => {
                let arg: u32 = u32::from(id)
                    | ((libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16);
                setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_FANOUT,
                    &arg,
                    iface,
                    "setsockopt(PACKET_FANOUT)",
                )?;
            }
        }
        if sec.promiscuous {
            let mreq = libc::packet_mreq {
                mr_ifindex: ifindex,
                mr_type: libc::PACKET_MR_PROMISC as u16,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq,
                iface,
                "setsockopt(PACKET_ADD_MEMBERSHIP)",
            )?;
        }
        Ok(RxRing {
            iface: iface.to_string(),
            fd,
            map,
            block_size: bs,
            block_count: sec.block_count as usize,
            cur: 0,
            left: 0,
            off: 0,
            vnet_hdr,
        })
    }

    /// Copies up to `max - burst.len()` frames into buffers from `pool`.
    #[inline]
    fn rx(
        &mut self,
        burst: &mut Burst<HeapBuf>,
        max: usize,
        pool: &mut Vec<HeapBuf>,
        c: &mut AfPacketCounters,
    ) -> usize {
        let mut n = 0;
        while burst.len() < max {
            let base = self.cur * self.block_size;
            if self.left == 0 {
                // Block descriptor: version u32, offset_to_priv u32, then
                // tpacket_hdr_v1 { block_status, num_pkts, offset_to_first_pkt, .. }.
                if self.map.status(base + 8).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                let num = self.map.read_u32(base + 12);
                let first = self.map.read_u32(base + 16) as usize;
                if num == 0 || first >= self.block_size {
                    self.release_block();
                    continue;
                }
                self.left = num;
                self.off = first;
            }
            // The buffer this frame is copied into (a GSO super-frame takes
            // several from the pool instead and gives this one back).
            let Some(buf) = pool.pop() else { break };
            let mut spare = Some(buf);
            let h = base + self.off;
            let mut next = 0usize;
            let mut take = None;
            // A header that does not fit the block ends the block (kernel bug guard).
            if self.off + V3_SLL_OFF + 20 <= self.block_size {
                next = self.map.read_u32(h) as usize;
                let snaplen = self.map.read_u32(h + 12) as usize;
                let status = self.map.read_u32(h + 20);
                let mac = self.map.read_u16(h + 24) as usize;
                let pkttype = self.map.read_u8(h + V3_SLL_OFF + 10);
                let vnet = (self.vnet_hdr && mac >= V3_SLL_OFF + 20 + VNET_HDR_LEN)
                    .then(|| VnetHdr::read(&self.map, h + mac - VNET_HDR_LEN));
                if self.off + mac + snaplen > self.block_size {
                    self.left = 1;
                } else if pkttype == libc::PACKET_OUTGOING {
                    c.outgoing_skipped += 1;
                } else if snaplen + HEADROOM + TAILROOM > spare.as_ref().map_or(0, buf_capacity) {
                    match vnet {
                        Some(v) if v.gso_type != 0 => {
                            let src = self.map.slice(h + mac, snaplen);
                            if let Some(b) = spare.take() {
                                n += segment(src, v, b, burst, pool, c);
                            }
                        }
                        _ => c.oversize += 1,
                    }
                } else {
                    let csum = match vnet {
                        Some(v) if v.flags & VNET_F_NEEDS_CSUM != 0 => {
                            Some((v.csum_start, v.csum_offset))
                        }
                        _ => {
                            if status & libc::TP_STATUS_CSUMNOTREADY != 0 {
                                c.csum_not_ready += 1;
                            }
                            None
                        }
                    };
                    take = Some((h + mac, snaplen, csum));
                }
            } else {
                self.left = 1;
            }
            match (take, spare) {
                (Some((at, len, csum)), Some(mut buf)) => {
                    buf.load(self.map.slice(at, len), 0);
                    let ok = match csum {
                        None => true,
                        Some((start, off)) => {
                            let done = vxlan::checksum::complete_partial(
                                buf.data_mut(),
                                usize::from(start),
                                usize::from(off),
                            );
                            if done {
                                c.csum_completed += 1;
                            } else {
                                c.csum_bad_offsets += 1;
                            }
                            done
                        }
                    };
                    if ok {
                        burst.push(buf);
                        n += 1;
                    } else {
                        pool.push(buf);
                    }
                }
                (_, Some(buf)) => pool.push(buf),
                (_, None) => {}
            }
            self.left -= 1;
            if self.left == 0 || next == 0 {
                self.release_block();
            } else {
                self.off += next;
            }
        }
        n
    }

    #[inline]
    fn release_block(&mut self) {
        let base = self.cur * self.block_size;
        self.map
            .status(base + 8)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.left = 0;
        self.cur = (self.cur + 1) % self.block_count;
    }

    fn stats(&self, c: &mut AfPacketCounters) {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut l = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st`/`l` are live and sized for tpacket_stats_v3 (what a V3
        // socket writes). Reading resets the kernel's counters, so we accumulate.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut l,
            )
        };
        if r == 0 {
            c.kernel_packets += u64::from(st.tp_packets);
            c.kernel_drops += u64::from(st.tp_drops);
            c.kernel_freezes += u64::from(st.tp_freeze_q_cnt);
        }
    }
}

/// Cuts a GSO super-frame into segments, each in a buffer of `pool` (the
/// first in `first`), appended to `burst`; returns how many. Nothing is added
/// (and the super-frame counts as dropped) unless every segment fits.
fn segment(
    src: &[u8],
    v: VnetHdr,
    first: HeapBuf,
    burst: &mut Burst<HeapBuf>,
    pool: &mut Vec<HeapBuf>,
    c: &mut AfPacketCounters,
) -> usize {
    pool.push(first);
    let plan =
        match vxlan::gso::GsoPlan::new(src, usize::from(v.csum_start), usize::from(v.gso_size)) {
            Ok(p) => p,
            Err(_) => {
                c.gso_dropped += 1;
                return 0;
            }
        };
    let segs = plan.segments();
    if segs > burst.remaining_capacity() || segs > pool.len() {
        c.gso_dropped += 1;
        return 0;
    }
    let start = burst.len();
    for i in 0..segs {
        let Some(mut b) = pool.pop() else { break };
        if b.load_with(plan.segment_len(i), |dst| plan.write(src, i, dst)) {
            burst.push(b);
        } else {
            pool.push(b);
            // Undo: a super-frame goes whole or not at all.
            for b in burst.drain(start..) {
                pool.push(b);
            }
            c.gso_dropped += 1;
            return 0;
        }
    }
    c.gso_frames += 1;
    c.gso_segments += segs as u64;
    segs
}

/// The fields of a `virtio_net_hdr` that RX uses.
#[derive(Clone, Copy, Debug)]
struct VnetHdr {
    flags: u8,
    gso_type: u8,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at `off` (the kernel wrote it right before the frame,
    /// in native byte order: legacy virtio).
    #[inline]
    fn read(map: &Mmap, off: usize) -> VnetHdr {
        VnetHdr {
            flags: map.read_u8(off),
            gso_type: map.read_u8(off + 1),
            gso_size: map.read_u16(off + 4),
            csum_start: map.read_u16(off + 6),
            csum_offset: map.read_u16(off + 8),
        }
    }
}

fn buf_capacity(b: &HeapBuf) -> usize {
    b.headroom() + b.data().len() + b.tailroom()
}

/// One TPACKET_V2 transmit ring.
struct TxRing {
    iface: String,
    fd: OwnedFd,
    map: Mmap,
    frame_size: usize,
    frames: usize,
    head: usize,
    /// Frames handed to the ring since the last successful kick.
    unkicked: bool,
}

impl TxRing {
    fn open(iface: &str, sec: &AfPacketSection, max_buf: usize) -> Result<TxRing, AfPacketError> {
        let ifindex = if_index(iface)?;
        let fd = packet_socket(iface)?;
        let raw = fd.as_raw_fd();
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
            iface,
            "setsockopt(PACKET_VERSION)",
        )?;
        let page = page_size();
        let frame_size = (TX_DATA_OFF + max_buf).next_power_of_two().max(2048);
        let block_size = frame_size.max(page);
        let per_block = block_size / frame_size;
        let want = (sec.tx_frames as usize).max(per_block);
        let blocks = want.div_ceil(per_block);
        let frames = blocks * per_block;
        let req = libc::tpacket_req {
            tp_block_size: block_size as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: frames as u32,
        };
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_TX_RING,
            &req,
            iface,
            "setsockopt(PACKET_TX_RING)",
        )?;
        let map = Mmap::new(raw, block_size * blocks, iface)?;
        // Protocol 0: this socket only sends.
        bind(raw, ifindex, 0, iface)?;
        Ok(TxRing {
            iface: iface.to_string(),
            fd,
            map,
            frame_size,
            frames,
            head: 0,
            unkicked: false,
        })
    }

    /// Frame offset of ring slot `i` (frames never straddle blocks: a block holds
    /// a whole number of them).
    #[inline(always)]
    fn frame_off(&self, i: usize) -> usize {
        i * self.frame_size
    }

    /// Copies `data` into the next free frame; false if the ring is full.
    #[inline]
    fn push(&mut self, data: &[u8], c: &mut AfPacketCounters) -> bool {
        let off = self.frame_off(self.head);
        let st = self.map.status(off).load(Ordering::Acquire);
        if st & libc::TP_STATUS_WRONG_FORMAT != 0 {
            c.tx_wrong_format += 1;
        } else if st != libc::TP_STATUS_AVAILABLE {
            return false;
        }
        if TX_DATA_OFF + data.len() > self.frame_size {
            // Cannot happen: frames are sized for the largest buffer. Refuse it
            // rather than write past the frame.
            return false;
        }
        self.map.write(off + TX_DATA_OFF, data);
        self.map.write_u32(off + 4, data.len() as u32); // tp_len
        self.map
            .status(off)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.head = (self.head + 1) % self.frames;
        self.unkicked = true;
        true
    }

    /// One `sendto` for everything queued.
    #[inline]
    fn kick(&mut self, c: &mut AfPacketCounters) {
        if !self.unkicked {
            return;
        }
        c.tx_kicks += 1;
        // SAFETY: a zero-length sendto with no buffer and no address: the kernel
        // transmits the frames marked SEND_REQUEST in the mapped ring.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            c.tx_kick_errors += 1;
        } else {
            self.unkicked = false;
        }
    }
}

/// One worker's AF_PACKET queue: RX rings on every configured interface and a TX
/// ring on the transmit interface.
pub struct AfPacketQueue {
    rx: Vec<RxRing>,
    next_rx: usize,
    tx: TxRing,
    pool: Vec<HeapBuf>,
    poll_when_idle: bool,
    idle: u32,
    counters: AfPacketCounters,
}

impl AfPacketQueue {
    /// Counters of this queue; reads (and accumulates) the kernel's ring statistics.
    pub fn counters(&mut self) -> AfPacketCounters {
        for r in &self.rx {
            r.stats(&mut self.counters);
        }
        self.counters
    }

    /// The interfaces this queue receives on.
    pub fn interfaces(&self) -> Vec<&str> {
        self.rx.iter().map(|r| r.iface.as_str()).collect()
    }

    /// The interface this queue transmits on.
    pub fn tx_interface(&self) -> &str {
        &self.tx.iface
    }

    fn sleep_until_readable(&mut self) {
        let mut fds: arrayvec::ArrayVec<libc::pollfd, 16> = arrayvec::ArrayVec::new();
        for r in self.rx.iter().take(16) {
            fds.push(libc::pollfd {
                fd: r.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            });
        }
        self.counters.idle_sleeps += 1;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                IDLE_POLL_TIMEOUT_MS,
            );
        }
    }
}

impl Queue for AfPacketQueue {
    type Pkt = HeapBuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Burst<HeapBuf>, max: usize) -> usize {
        let max = max.min(MAX_BURST);
        let rings = self.rx.len();
        let mut n = 0;
        for k in 0..rings {
            if burst.len() >= max {
                break;
            }
            let i = (self.next_rx + k) % rings;
            n += self.rx[i].rx(burst, max, &mut self.pool, &mut self.counters);
        }
        self.next_rx = (self.next_rx + 1) % rings.max(1);
        if n == 0 {
            // A kick that failed earlier (ENOBUFS, ...) is retried while idle.
            self.tx.kick(&mut self.counters);
            self.idle += 1;
            if self.poll_when_idle && self.idle >= IDLE_POLLS_BEFORE_SLEEP {
                self.idle = 0;
                self.sleep_until_readable();
            }
        } else {
            self.idle = 0;
        }
        n
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Burst<HeapBuf>) -> usize {
        let mut sent = 0;
        for p in burst.iter() {
            if !self.tx.push(p.data(), &mut self.counters) {
                break;
            }
            sent += 1;
        }
        for p in burst.drain(..sent) {
            self.pool.push(p);
        }
        self.tx.kick(&mut self.counters);
        sent
    }

    #[inline]
    fn free(&mut self, pkt: HeapBuf) {
        self.pool.push(pkt);
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tx.kick(&mut self.counters);
        Ok(())
    }

    fn io_counters(&mut self) -> Vec<(&'static str, u64)> {
        let c = self.counters();
        vec![
            ("kernel_packets", c.kernel_packets),
            ("kernel_drops", c.kernel_drops),
            ("kernel_freezes", c.kernel_freezes),
            ("oversize", c.oversize),
            ("gso_frames", c.gso_frames),
            ("gso_segments", c.gso_segments),
            ("gso_dropped", c.gso_dropped),
            ("outgoing_skipped", c.outgoing_skipped),
            ("csum_completed", c.csum_completed),
            ("csum_bad_offsets", c.csum_bad_offsets),
            ("csum_not_ready", c.csum_not_ready),
            ("tx_wrong_format", c.tx_wrong_format),
            ("tx_kick_errors", c.tx_kick_errors),
        ]
    }
}

/// Largest frame a queue on `iface` receives: the MTU plus Ethernet and two VLAN tags.
fn max_frame_for(iface: &str) -> Result<usize, AfPacketError> {
    if_index(iface)?;
    let fd = packet_socket(iface)?;
    let mtu = if_mtu(fd.as_raw_fd(), iface)? as usize;
    Ok(mtu.max(1500) + 14 + 8)
}

/// Opens one queue per worker: every worker gets an RX ring on each of
/// `sec.interfaces` (joined to one fanout group per interface, unique to this
/// call) and a TX ring on `sec.tx_interface` (default: the first interface).
pub fn open_queues(
    sec: &AfPacketSection,
    workers: usize,
) -> Result<Vec<AfPacketQueue>, AfPacketError> {
    let first = sec.interfaces.first().ok_or_else(|| {
        AfPacketError::invalid("-", "open", "afpacket.interfaces is empty".into())
    })?;
    let tx_if = sec.tx_interface.as_deref().unwrap_or(first);
    let mut max_frame = max_frame_for(tx_if)?;
    for i in &sec.interfaces {
        max_frame = max_frame.max(max_frame_for(i)?);
    }
    let mut groups: Vec<Option<u16>> = vec![None; sec.interfaces.len()];
    let mut queues = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let mut rx = Vec::with_capacity(sec.interfaces.len());
        for (i, name) in sec.interfaces.iter().enumerate() {
            rx.push(RxRing::open(name, sec, &mut groups[i])?);
        }
        let tx = TxRing::open(tx_if, sec, HEADROOM + max_frame + TAILROOM)?;
        let pool = (0..POOL_SIZE)
            .map(|_| HeapBuf::with_capacity(max_frame))
            .collect();
        queues.push(AfPacketQueue {
            rx,
            next_rx: 0,
            tx,
            pool,
            poll_when_idle: sec.poll_when_idle,
            idle: 0,
            counters: AfPacketCounters::default(),
        });
    }
    Ok(queues)
}

/// A plain AF_PACKET socket for occasional sends (the slow path's replies): one
/// `send` per frame, no ring.
pub struct RawSender {
    iface: String,
    fd: OwnedFd,
}

impl RawSender {
    pub fn open(iface: &str) -> Result<RawSender, AfPacketError> {
        let ifindex = if_index(iface)?;
        let fd = packet_socket(iface)?;
        bind(fd.as_raw_fd(), ifindex, 0, iface)?;
        Ok(RawSender {
            iface: iface.to_string(),
            fd,
        })
    }

    pub fn interface(&self) -> &str {
        &self.iface
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live buffer of the length passed.
        let r = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
