//! AF_XDP backend (`dataplane.io = "afxdp"`): XDP sockets on any Linux
//! interface, the fast path that Katran and Cilium users get from XDP, without
//! giving the NIC to DPDK.
//!
//! * **Steering.** dpgw loads its own six-instruction XDP program (no clang,
//!   no libbpf: the bytecode is below) with an `XSKMAP`, and attaches it to
//!   every receive interface through a BPF link: every frame that arrives on
//!   queue *q* goes to the XDP socket in slot *q*, and a queue without a socket
//!   passes the frame to the kernel (`bpf_redirect_map(.., XDP_PASS)`). The link
//!   belongs to this process: the program is detached when dpgw exits, however
//!   it exits (the kernel closes the link's descriptor), so a crashed gateway
//!   never leaves an interface black-holed. Another XDP program on the
//!   interface is an error naming it (`EBUSY`), never replaced.
//! * **Native or generic.** `afxdp.mode = "auto"` (the default) attaches in
//!   the driver (native XDP: veth, most 10G+ NICs) and falls back to the
//!   kernel's generic hook when the driver has none; `"native"` and
//!   `"generic"` insist. Sockets are bound in copy mode (`XDP_COPY`): the frame
//!   is copied once into our memory (UMEM), which every driver supports,
//!   veth included (veth has no zero-copy).
//! * **One queue per worker.** Worker *w* binds queue *w* of each interface,
//!   so an interface needs at least as many RX queues as there are workers
//!   (RSS spreads flows over them; `ip link add .. type veth numrxqueues N`
//!   for veth); fewer is an error that says so.
//! * **Rings.** Each socket has its own UMEM: `2 × ring_size` frames for
//!   receive (all of them in the fill ring, which has room for twice that
//!   because the kernel publishes how far it has read only lazily; each frame
//!   goes back as soon as it is copied out) and `ring_size` frames for
//!   transmit (recycled from the completion ring). RX copies each frame into a [`HeapBuf`] from the
//!   queue's pool, as the AF_PACKET backend does, so the engine and every
//!   stage are the same for both; TX copies the frame into a free UMEM frame,
//!   posts it in the TX ring and kicks the kernel with `sendto` (copy mode
//!   sends only from a system call; at most 32 frames per call, so a burst
//!   takes a few). A full TX ring or no free frame leaves packets in the burst
//!   (the engine retries, then counts `tx_full`). No system call per packet on
//!   receive, none at all while the fill ring needs no wakeup.
//! * **Transmit interface.** `afxdp.tx_interface` (default: the first
//!   interface). When it is also a receive interface, one socket does both.
//!
//! What the kernel no longer does for frames it hands to XDP: no skb, no
//! `tcpdump` tap, no IP stack (nothing to drop at ingress as with AF_PACKET).
//! What it no longer does *for us*: a frame whose sender left its checksum to
//! offload (`CHECKSUM_PARTIAL`, a veth peer on this host with offloads at
//! their default) arrives with the checksum unfinished, and XDP carries no
//! `virtio_net_hdr` to say so. Such frames reach the engine as they are; the
//! AF_PACKET backend completes them. See the README's AF_XDP section.
//!
//! Every error names the interface and the call, e.g.
//! `afxdp: eth0: bind(queue 1): Invalid argument (eth0 has 1 RX queue(s); ...)`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::buf::HeapBuf;
use super::{Burst, Packet, Queue, MAX_BURST};
use crate::config::{AfXdpSection, XdpMode};

/// Buffers per worker pool: a full burst in flight twice, plus slack.
const POOL_SIZE: usize = 2 * MAX_BURST + crate::io::MAX_HELD;
/// The kernel keeps this much headroom in front of every received frame in
/// UMEM (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: usize = 256;
const IDLE_POLLS_BEFORE_SLEEP: u32 = 64;
const IDLE_POLL_TIMEOUT_MS: i32 = 10;
/// Most `sendto` kicks per burst (copy mode sends 32 frames per call).
const MAX_KICKS: u32 = 16;

// linux/if_xdp.h
const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_COPY: u16 = 1 << 1;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
// linux/bpf.h, linux/if_link.h
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `sizeof(union bpf_attr)` of the headers this was written against; the
/// kernel accepts a larger or smaller attr as long as the unknown tail is zero.
const BPF_ATTR_SIZE: usize = 144;

/// A failed call on an interface.
#[derive(Debug, thiserror::Error)]
#[error("afxdp: {iface}: {call}: {source}{hint}")]
pub struct AfXdpError {
    pub iface: String,
    pub call: String,
    pub source: io::Error,
    /// What to do about it, when we know (starts with a space).
    pub hint: String,
}

impl AfXdpError {
    fn last(iface: &str, call: impl Into<String>) -> AfXdpError {
        AfXdpError {
            iface: iface.to_string(),
            call: call.into(),
            source: io::Error::last_os_error(),
            hint: String::new(),
        }
    }

    fn invalid(iface: &str, call: impl Into<String>, msg: String) -> AfXdpError {
        AfXdpError {
            iface: iface.to_string(),
            call: call.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
            hint: String::new(),
        }
    }

    fn hint(mut self, h: impl Into<String>) -> AfXdpError {
        self.hint = format!(" ({})", h.into());
        self
    }
}

/// Counters of one queue that the engine's counters do not cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfXdpCounters {
    /// Frames read from our RX rings.
    pub rx_frames: u64,
    /// Frames the kernel could not give us: our RX ring was full
    /// (`rx_ring_full`), no frame in the fill ring (`rx_fill_ring_empty_descs`),
    /// or other reasons (`rx_dropped`), from `XDP_STATISTICS`.
    pub kernel_ring_full: u64,
    pub kernel_fill_empty: u64,
    pub kernel_dropped: u64,
    /// Descriptors the kernel rejected (`rx_invalid_descs`, `tx_invalid_descs`).
    pub kernel_invalid_descs: u64,
    /// Frames larger than our buffers (dropped before the engine saw them).
    pub oversize: u64,
    /// `sendto` kicks, those that failed with something other than "try
    /// again", and wakeups of the fill ring.
    pub tx_kicks: u64,
    pub tx_kick_errors: u64,
    pub rx_wakeups: u64,
    /// Times a worker slept in poll(2).
    pub idle_sleeps: u64,
}

/// A memory mapping (UMEM or a ring), unmapped on drop.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the queue that owns
// it is used by one thread at a time.
unsafe impl Send for Region {}

impl Region {
    /// Anonymous memory for a UMEM (page-aligned, as the kernel requires).
    fn anonymous(len: usize, iface: &str) -> Result<Region, AfXdpError> {
        // SAFETY: a fresh private anonymous mapping; no Rust memory is aliased.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Region::from_mmap(p, len, iface, "mmap(UMEM)")
    }

    /// A ring of an XDP socket at its page offset.
    fn ring(fd: RawFd, len: usize, pgoff: libc::off_t, iface: &str) -> Result<Region, AfXdpError> {
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks
        // `len` against the ring it set up.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        Region::from_mmap(p, len, iface, "mmap(ring)")
    }

    fn from_mmap(
        p: *mut libc::c_void,
        len: usize,
        iface: &str,
        call: &'static str,
    ) -> Result<Region, AfXdpError> {
        if p == libc::MAP_FAILED {
            return Err(AfXdpError::last(iface, call));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| AfXdpError::invalid(iface, call, "null mapping".into()))?;
        Ok(Region { ptr, len })
    }

    #[inline(always)]
    fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "UMEM slice out of bounds"
        );
        // SAFETY: bounds checked above; the frame is ours (taken from the RX
        // ring, not yet returned to the fill ring), so the kernel does not
        // write it now.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    #[inline(always)]
    fn slice_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "UMEM slice out of bounds"
        );
        // SAFETY: bounds checked above; the frame is on our free list (not in
        // the TX ring), so the kernel does not read it now.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what mmap returned; borrows are tied to `&self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One single-producer single-consumer ring shared with the kernel: the
/// fill and TX rings (we produce), the RX and completion rings (we consume).
struct Ring {
    map: Region,
    prod_off: usize,
    cons_off: usize,
    flags_off: usize,
    desc_off: usize,
    mask: u32,
    size: u32,
    /// Our index (producer index of a ring we fill, consumer index of one we read).
    local: u32,
    /// The kernel's index as last read, for a producer ring plus `size` (so
    /// `cached - local` is the free space); for a consumer ring its producer index.
    cached: u32,
    /// Descriptor size: 8 (fill, completion: an address) or 16 (`xdp_desc`).
    desc_size: usize,
}

impl Ring {
    #[inline(always)]
    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.map.len && off & 3 == 0);
        // SAFETY: the producer/consumer/flags offsets come from
        // XDP_MMAP_OFFSETS and lie inside the mapping, 4-aligned; the kernel
        // updates these words concurrently, hence atomics.
        unsafe { &*self.map.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn producer(size: u32, map: Region, off: &RingOffsets, desc_size: usize) -> Ring {
        let mut r = Ring::consumer(size, map, off, desc_size);
        r.cached = r
            .word(r.cons_off)
            .load(Ordering::Acquire)
            .wrapping_add(size);
        r.local = r.word(r.prod_off).load(Ordering::Relaxed);
        r
    }

    fn consumer(size: u32, map: Region, off: &RingOffsets, desc_size: usize) -> Ring {
        Ring {
            map,
            prod_off: off.producer as usize,
            cons_off: off.consumer as usize,
            flags_off: off.flags as usize,
            desc_off: off.desc as usize,
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
            desc_size,
        }
    }

    /// Free slots of a producer ring, up to `want`.
    #[inline(always)]
    fn free(&mut self, want: u32) -> u32 {
        let mut free = self.cached.wrapping_sub(self.local);
        if free < want {
            self.cached = self
                .word(self.cons_off)
                .load(Ordering::Acquire)
                .wrapping_add(self.size);
            free = self.cached.wrapping_sub(self.local);
        }
        free.min(want)
    }

    /// Entries ready in a consumer ring, up to `want`.
    #[inline(always)]
    fn ready(&mut self, want: u32) -> u32 {
        let mut n = self.cached.wrapping_sub(self.local);
        if n < want {
            self.cached = self.word(self.prod_off).load(Ordering::Acquire);
            n = self.cached.wrapping_sub(self.local);
        }
        n.min(want)
    }

    #[inline(always)]
    fn slot(&self, i: u32) -> usize {
        let idx = (self.local.wrapping_add(i) & self.mask) as usize;
        let off = self.desc_off + idx * self.desc_size;
        assert!(
            off + self.desc_size <= self.map.len,
            "ring slot out of bounds"
        );
        off
    }

    /// Address at slot `i` past our index (fill/completion rings).
    #[inline(always)]
    fn addr(&self, i: u32) -> u64 {
        let off = self.slot(i);
        // SAFETY: in bounds (checked by `slot`), 8-aligned (the kernel aligns
        // descriptor arrays); the slot is between our index and the kernel's, so
        // the kernel does not touch it now.
        unsafe { self.map.ptr.as_ptr().add(off).cast::<u64>().read() }
    }

    #[inline(always)]
    fn set_addr(&mut self, i: u32, addr: u64) {
        let off = self.slot(i);
        // SAFETY: as for `addr`.
        unsafe { self.map.ptr.as_ptr().add(off).cast::<u64>().write(addr) }
    }

    /// `xdp_desc` at slot `i`: (addr, len).
    #[inline(always)]
    fn desc(&self, i: u32) -> (u64, u32) {
        let off = self.slot(i);
        // SAFETY: as for `addr`; an xdp_desc is { u64 addr; u32 len; u32 options }.
        unsafe {
            let p = self.map.ptr.as_ptr().add(off);
            (p.cast::<u64>().read(), p.add(8).cast::<u32>().read())
        }
    }

    #[inline(always)]
    fn set_desc(&mut self, i: u32, addr: u64, len: u32) {
        let off = self.slot(i);
        // SAFETY: as for `desc`.
        unsafe {
            let p = self.map.ptr.as_ptr().add(off);
            p.cast::<u64>().write(addr);
            p.add(8).cast::<u32>().write(len);
            p.add(12).cast::<u32>().write(0);
        }
    }

    /// Publishes `n` produced entries (producer ring).
    #[inline(always)]
    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.word(self.prod_off)
            .store(self.local, Ordering::Release);
    }

    /// Gives `n` consumed entries back (consumer ring).
    #[inline(always)]
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.word(self.cons_off)
            .store(self.local, Ordering::Release);
    }

    /// Entries of a producer ring the kernel has not consumed yet.
    #[inline(always)]
    fn pending(&self) -> u32 {
        self.local
            .wrapping_sub(self.word(self.cons_off).load(Ordering::Acquire))
    }

    #[inline(always)]
    fn needs_wakeup(&self) -> bool {
        self.word(self.flags_off).load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RingOffsets {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fr: RingOffsets,
    cr: RingOffsets,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

fn setsockopt<T>(fd: RawFd, name: i32, val: &T, iface: &str, call: &str) -> Result<(), AfXdpError> {
    // SAFETY: `val` points to a live `T` of the size passed; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(AfXdpError::last(iface, call));
    }
    Ok(())
}

/// `bpf(2)` with an attr buffer built by the caller.
fn bpf(cmd: libc::c_long, attr: &mut [u8; BPF_ATTR_SIZE]) -> io::Result<RawFd> {
    // SAFETY: `attr` is a live, zero-padded bpf_attr of the size passed; the
    // pointers inside it (set by the callers) point to live buffers that
    // outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), BPF_ATTR_SIZE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as RawFd)
}

fn put_u32(a: &mut [u8; BPF_ATTR_SIZE], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8; BPF_ATTR_SIZE], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor returned by the kernel that nothing
    // else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8
        | ((off as u16) as u64) << 16
        | ((imm as u32) as u64) << 32
}

/// The steering program, for the XSKMAP `map_fd`:
/// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`
fn steering_program(map_fd: RawFd) -> [u64; 6] {
    [
        // r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
        insn(0x61, 2, 1, 16, 0),
        // r1 = map (ld_imm64 with BPF_PSEUDO_MAP_FD; two slots)
        insn(0x18, 1, 1, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the slot is empty
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // call bpf_redirect_map
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // exit (r0 = the helper's verdict)
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// The steering program attached to one interface (its map, program and
/// link). Dropping it detaches the program.
pub struct Attachment {
    iface: String,
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// True when attached in the driver (native XDP), false for generic.
    pub native: bool,
}

impl Attachment {
    fn attach(
        iface: &str,
        ifindex: u32,
        slots: u32,
        mode: XdpMode,
    ) -> Result<Attachment, AfXdpError> {
        let mut a = [0u8; BPF_ATTR_SIZE];
        put_u32(&mut a, 0, BPF_MAP_TYPE_XSKMAP);
        put_u32(&mut a, 4, 4);
        put_u32(&mut a, 8, 4);
        put_u32(&mut a, 12, slots.max(1));
        let map = bpf(BPF_MAP_CREATE, &mut a).map_err(|source| AfXdpError {
            iface: iface.into(),
            call: "bpf(BPF_MAP_CREATE, XSKMAP)".into(),
            source,
            hint: " (needs root or CAP_BPF + CAP_NET_ADMIN, and a kernel with XDP sockets)".into(),
        })?;
        let map = owned(map);
        let prog = steering_program(map.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"dpgw_xsks");
        let mut a = [0u8; BPF_ATTR_SIZE];
        put_u32(&mut a, 0, BPF_PROG_TYPE_XDP);
        put_u32(&mut a, 4, prog.len() as u32);
        put_u64(&mut a, 8, prog.as_ptr() as u64);
        put_u64(&mut a, 16, license.as_ptr() as u64);
        put_u32(&mut a, 24, 1); // log_level
        put_u32(&mut a, 28, log.len() as u32);
        put_u64(&mut a, 32, log.as_mut_ptr() as u64);
        a[48..64].copy_from_slice(&name);
        put_u32(&mut a, 68, BPF_XDP); // expected_attach_type
        let prog_fd = bpf(BPF_PROG_LOAD, &mut a).map_err(|source| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let msg = String::from_utf8_lossy(&log[..end])
                .trim()
                .replace('\n', "; ");
            AfXdpError {
                iface: iface.into(),
                call: "bpf(BPF_PROG_LOAD)".into(),
                source,
                hint: if msg.is_empty() {
                    String::new()
                } else {
                    format!(" (verifier: {msg})")
                },
            }
        })?;
        let prog_fd = owned(prog_fd);
        let tries: &[(u32, bool)] = match mode {
            XdpMode::Auto => &[(XDP_FLAGS_DRV_MODE, true), (XDP_FLAGS_SKB_MODE, false)],
            XdpMode::Native => &[(XDP_FLAGS_DRV_MODE, true)],
            XdpMode::Generic => &[(XDP_FLAGS_SKB_MODE, false)],
        };
        let mut last = None;
        for &(flags, native) in tries {
            let mut a = [0u8; BPF_ATTR_SIZE];
            put_u32(&mut a, 0, prog_fd.as_raw_fd() as u32);
            put_u32(&mut a, 4, ifindex);
            put_u32(&mut a, 8, BPF_XDP);
            put_u32(&mut a, 12, flags);
            match bpf(BPF_LINK_CREATE, &mut a) {
                Ok(link) => {
                    return Ok(Attachment {
                        iface: iface.into(),
                        map,
                        _prog: prog_fd,
                        _link: owned(link),
                        native,
                    })
                }
                Err(e) => {
                    let busy = e.raw_os_error() == Some(libc::EBUSY);
                    let err = AfXdpError {
                        iface: iface.into(),
                        call: format!(
                            "bpf(BPF_LINK_CREATE, {} XDP)",
                            if native { "native" } else { "generic" }
                        ),
                        source: e,
                        hint: String::new(),
                    };
                    if busy {
                        return Err(err.hint(format!(
                            "another XDP program is attached to {iface}; see `ip link show {iface}`, detach it with `ip link set {iface} xdp off`"
                        )));
                    }
                    last = Some(err);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| AfXdpError::invalid(iface, "attach", "no mode".into()))
            .hint(match mode {
                XdpMode::Native => "the driver has no native XDP; try afxdp.mode = \"generic\"",
                _ => "the interface takes no XDP program",
            }))
    }

    /// Puts the socket `xsk` in slot `queue`: frames of that queue go to it.
    fn insert(&self, queue: u32, xsk: RawFd) -> Result<(), AfXdpError> {
        let key = queue;
        let val = xsk as u32;
        let mut a = [0u8; BPF_ATTR_SIZE];
        put_u32(&mut a, 0, self.map.as_raw_fd() as u32);
        put_u64(&mut a, 8, &key as *const u32 as u64);
        put_u64(&mut a, 16, &val as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map_err(|source| AfXdpError {
            iface: self.iface.clone(),
            call: format!("bpf(BPF_MAP_UPDATE_ELEM, queue {queue})"),
            source,
            hint: String::new(),
        })?;
        Ok(())
    }
}

/// One XDP socket bound to one queue of one interface, with its own UMEM.
struct Xsk {
    iface: String,
    fd: OwnedFd,
    umem: Region,
    chunk: u64,
    fill: Ring,
    comp: Ring,
    rx: Option<Ring>,
    tx: Option<Ring>,
    /// UMEM frames free for transmit.
    tx_free: Vec<u64>,
    /// Receive frames not in the fill ring. The kernel takes fill entries in
    /// batches and publishes its consumer index lazily, so the ring can look
    /// full while it holds frames it has not used yet: twice the ring's size
    /// in receive frames, the rest waiting here.
    rx_spare: Vec<u64>,
    /// Largest frame a TX chunk holds.
    tx_max: usize,
}

/// Ring and UMEM geometry of one socket.
#[derive(Clone, Copy)]
struct Geometry {
    ring: u32,
    chunk: u32,
}

impl Xsk {
    fn open(
        iface: &str,
        ifindex: u32,
        queue: u32,
        g: Geometry,
        want_rx: bool,
        want_tx: bool,
    ) -> Result<Xsk, AfXdpError> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(AfXdpError::last(iface, "socket(AF_XDP)")
                .hint("needs root or CAP_NET_RAW, and a kernel built with CONFIG_XDP_SOCKETS"));
        }
        let fd = owned(fd);
        let raw = fd.as_raw_fd();
        // Frames 0..2*ring receive, 2*ring..3*ring transmit.
        let rx_frames = if want_rx { 2 * g.ring as u64 } else { 0 };
        let frames = rx_frames + g.ring as u64;
        let len = (frames * g.chunk as u64) as usize;
        let umem = Region::anonymous(len, iface)?;
        let reg = UmemReg {
            addr: umem.ptr.as_ptr() as u64,
            len: len as u64,
            chunk_size: g.chunk,
            ..UmemReg::default()
        };
        setsockopt(raw, XDP_UMEM_REG, &reg, iface, "setsockopt(XDP_UMEM_REG)")?;
        let n = g.ring;
        // The kernel takes fill entries from a private copy of the producer
        // index and publishes its consumer index only when that copy runs
        // out. A fill ring no larger than the frames put in it therefore
        // looks full to us until the kernel has used up every entry, and is
        // then empty until our next poll: `xdp_fill_empty` drops at every
        // lap (1520 in 1.9 M frames saturating, up to 4 % paced, on veth).
        // Twice the receive frames leaves room for all of them however late
        // the kernel publishes.
        let fill_n = (2 * rx_frames as u32).max(n);
        setsockopt(
            raw,
            XDP_UMEM_FILL_RING,
            &fill_n,
            iface,
            "setsockopt(XDP_UMEM_FILL_RING)",
        )?;
        setsockopt(
            raw,
            XDP_UMEM_COMPLETION_RING,
            &n,
            iface,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        )?;
        if want_rx {
            setsockopt(raw, XDP_RX_RING, &n, iface, "setsockopt(XDP_RX_RING)")?;
        }
        if want_tx {
            setsockopt(raw, XDP_TX_RING, &n, iface, "setsockopt(XDP_TX_RING)")?;
        }
        let mut off = MmapOffsets::default();
        let mut optlen = std::mem::size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: `off` is a live MmapOffsets of `optlen` bytes the kernel fills.
        let r = unsafe {
            libc::getsockopt(
                raw,
                SOL_XDP,
                XDP_MMAP_OFFSETS,
                (&mut off as *mut MmapOffsets).cast(),
                &mut optlen,
            )
        };
        if r != 0 {
            return Err(AfXdpError::last(iface, "getsockopt(XDP_MMAP_OFFSETS)"));
        }
        let map_n = |o: &RingOffsets, n: u32, desc: usize, pgoff| {
            Region::ring(raw, o.desc as usize + n as usize * desc, pgoff, iface)
        };
        let map = |o: &RingOffsets, desc: usize, pgoff| map_n(o, n, desc, pgoff);
        let mut fill = Ring::producer(
            fill_n,
            map_n(&off.fr, fill_n, 8, XDP_UMEM_PGOFF_FILL_RING)?,
            &off.fr,
            8,
        );
        let comp = Ring::consumer(
            n,
            map(&off.cr, 8, XDP_UMEM_PGOFF_COMPLETION_RING)?,
            &off.cr,
            8,
        );
        let rx = if want_rx {
            Some(Ring::consumer(
                n,
                map(&off.rx, 16, XDP_PGOFF_RX_RING)?,
                &off.rx,
                16,
            ))
        } else {
            None
        };
        let tx = if want_tx {
            Some(Ring::producer(
                n,
                map(&off.tx, 16, XDP_PGOFF_TX_RING)?,
                &off.tx,
                16,
            ))
        } else {
            None
        };
        // Every receive frame starts in the fill ring.
        let mut rx_spare: Vec<u64> = (0..rx_frames).rev().map(|f| f * g.chunk as u64).collect();
        if want_rx {
            let k = fill.free(rx_frames as u32);
            for i in 0..k {
                let a = rx_spare.pop().unwrap_or(0);
                fill.set_addr(i, a);
            }
            fill.submit(k);
        }
        let tx_free = if want_tx {
            (rx_frames..frames).map(|f| f * g.chunk as u64).collect()
        } else {
            Vec::new()
        };
        let sa = SockaddrXdp {
            family: AF_XDP as u16,
            flags: XDP_COPY | XDP_USE_NEED_WAKEUP,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            let e = AfXdpError::last(iface, format!("bind(queue {queue})"));
            let queues = rx_queues(iface);
            return Err(match queues {
                Some(q) if queue >= q => e.hint(format!(
                    "{iface} has {q} RX queue(s) and worker {queue} needs queue {queue}: one queue per worker; for veth, create it with `numrxqueues`/`numtxqueues`"
                )),
                _ if queue > 0 => e.hint(format!(
                    "worker {queue} binds queue {queue}: {iface} needs one RX queue per worker"
                )),
                _ => e,
            });
        }
        Ok(Xsk {
            iface: iface.to_string(),
            fd,
            umem,
            chunk: g.chunk as u64,
            fill,
            comp,
            rx,
            tx,
            tx_free,
            rx_spare,
            tx_max: g.chunk as usize,
        })
    }

    /// Copies up to `max - burst.len()` received frames into buffers from `pool`.
    #[inline]
    fn rx(
        &mut self,
        burst: &mut Burst<HeapBuf>,
        max: usize,
        pool: &mut Vec<HeapBuf>,
        max_frame: usize,
        c: &mut AfXdpCounters,
    ) -> usize {
        let Some(rx) = self.rx.as_mut() else {
            return 0;
        };
        let room = max.saturating_sub(burst.len()).min(pool.len()) as u32;
        let n = rx.ready(room);
        if n == 0 {
            if !self.rx_spare.is_empty() {
                self.refill();
            }
            if self.fill.needs_wakeup() {
                c.rx_wakeups += 1;
                // SAFETY: a zero-length non-blocking receive on our socket: it
                // only asks the driver to look at the fill ring.
                unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        0,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    );
                }
            }
            return 0;
        }
        let mut got = 0;
        for i in 0..n {
            let (addr, len) = rx.desc(i);
            let len = len as usize;
            if len > max_frame {
                c.oversize += 1;
            } else if let Some(mut b) = pool.pop() {
                b.load(self.umem.slice(addr as usize, len), 0);
                burst.push(b);
                got += 1;
            }
            // Never beyond its capacity: it holds at most every receive frame.
            self.rx_spare.push(addr & !(self.chunk - 1));
        }
        rx.release(n);
        self.refill();
        c.rx_frames += n as u64;
        got
    }

    /// Gives spare receive frames to the kernel, as many as the fill ring takes.
    #[inline]
    fn refill(&mut self) {
        let k = self.fill.free(self.rx_spare.len() as u32);
        for i in 0..k {
            if let Some(a) = self.rx_spare.pop() {
                self.fill.set_addr(i, a);
            }
        }
        if k > 0 {
            self.fill.submit(k);
        }
    }

    /// Frames the kernel finished sending go back to the free list.
    #[inline]
    fn reap(&mut self) {
        let n = self.comp.ready(self.comp.size);
        for i in 0..n {
            let a = self.comp.addr(i);
            self.tx_free.push(a);
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// Posts frames from the front of `burst`; returns how many were posted.
    #[inline]
    fn post(&mut self, burst: &Burst<HeapBuf>) -> usize {
        self.reap();
        let Some(tx) = self.tx.as_mut() else {
            return 0;
        };
        let want = burst.len().min(self.tx_free.len()) as u32;
        let n = tx.free(want);
        let mut posted = 0;
        for p in burst.iter().take(n as usize) {
            let d = p.data();
            if d.len() > self.tx_max {
                break;
            }
            let Some(addr) = self.tx_free.pop() else {
                break;
            };
            self.umem
                .slice_mut(addr as usize, d.len())
                .copy_from_slice(d);
            tx.set_desc(posted, addr, d.len() as u32);
            posted += 1;
        }
        if posted > 0 {
            tx.submit(posted);
        }
        posted as usize
    }

    /// Asks the kernel to send what the TX ring holds (copy mode sends only
    /// from a system call, 32 frames per call).
    #[inline]
    fn kick(&mut self, c: &mut AfXdpCounters) {
        let Some(tx) = self.tx.as_ref() else { return };
        for _ in 0..MAX_KICKS {
            if tx.pending() == 0 {
                return;
            }
            c.tx_kicks += 1;
            // SAFETY: a zero-length non-blocking send on our socket: it only
            // tells the kernel to process the TX ring.
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
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) => continue,
                    _ => {
                        c.tx_kick_errors += 1;
                        return;
                    }
                }
            }
        }
    }

    fn stats(&self, c: &mut AfXdpCounters) {
        let mut s = XdpStatistics::default();
        let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
        // SAFETY: `s` is a live XdpStatistics of `len` bytes the kernel fills.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut s as *mut XdpStatistics).cast(),
                &mut len,
            )
        };
        if r == 0 {
            c.kernel_ring_full += s.rx_ring_full;
            c.kernel_fill_empty += s.rx_fill_ring_empty_descs;
            c.kernel_dropped += s.rx_dropped;
            c.kernel_invalid_descs += s.rx_invalid_descs + s.tx_invalid_descs;
        }
    }
}

/// An `AF_INET` datagram socket for interface ioctls.
fn ioctl_socket(iface: &str) -> Result<OwnedFd, AfXdpError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AfXdpError::last(iface, "socket(AF_INET)"));
    }
    Ok(owned(fd))
}

/// The number of RX queues of `iface` (`ETHTOOL_GCHANNELS`), if the driver says.
fn rx_queues(iface: &str) -> Option<u32> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let fd = ioctl_socket(iface).ok()?;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined,
    // rx_count, tx_count, other_count, combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = ch.as_mut_ptr().cast();
    // SAFETY: SIOCETHTOOL reads the name and the command at `ifru_data`, a live
    // ethtool_channels (`ch`), and writes that struct only.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCETHTOOL as _,
            &mut req as *mut libc::ifreq,
        )
    };
    if r != 0 {
        return None;
    }
    Some(ch[5].max(ch[8]))
}

/// One worker's AF_XDP queue: a socket on queue *w* of every receive
/// interface, and one on the transmit interface (the same socket when it is
/// also a receive interface).
pub struct AfXdpQueue {
    socks: Vec<Xsk>,
    /// Index in `socks` of the transmit socket.
    tx: usize,
    next_rx: usize,
    pool: Vec<HeapBuf>,
    max_frame: usize,
    poll_when_idle: bool,
    idle: u32,
    counters: AfXdpCounters,
    /// Keeps the steering programs attached while any queue runs.
    _attached: Arc<Vec<Attachment>>,
}

impl AfXdpQueue {
    /// Counters of this queue; adds the kernel's socket statistics.
    pub fn counters(&self) -> AfXdpCounters {
        let mut c = self.counters;
        for s in &self.socks {
            s.stats(&mut c);
        }
        c
    }

    /// The interface this queue transmits on.
    pub fn tx_interface(&self) -> &str {
        &self.socks[self.tx].iface
    }

    fn sleep_until_readable(&mut self) {
        let mut fds: arrayvec::ArrayVec<libc::pollfd, 16> = arrayvec::ArrayVec::new();
        for s in self.socks.iter().filter(|s| s.rx.is_some()).take(16) {
            fds.push(libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
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

impl Queue for AfXdpQueue {
    type Pkt = HeapBuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Burst<HeapBuf>, max: usize) -> usize {
        let max = max.min(MAX_BURST);
        let socks = self.socks.len();
        let mut n = 0;
        for k in 0..socks {
            if burst.len() >= max {
                break;
            }
            let i = (self.next_rx + k) % socks;
            n += self.socks[i].rx(
                burst,
                max,
                &mut self.pool,
                self.max_frame,
                &mut self.counters,
            );
        }
        self.next_rx = (self.next_rx + 1) % socks.max(1);
        if n == 0 {
            // Frames a kick could not send earlier go out while idle.
            self.socks[self.tx].kick(&mut self.counters);
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
        let s = &mut self.socks[self.tx];
        let sent = s.post(burst);
        s.kick(&mut self.counters);
        for p in burst.drain(..sent) {
            self.pool.push(p);
        }
        sent
    }

    #[inline]
    fn free(&mut self, pkt: HeapBuf) {
        self.pool.push(pkt);
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socks[self.tx].kick(&mut self.counters);
        Ok(())
    }

    fn io_counters(&mut self) -> Vec<(&'static str, u64)> {
        let c = self.counters();
        vec![
            ("xdp_rx_frames", c.rx_frames),
            ("xdp_ring_full", c.kernel_ring_full),
            ("xdp_fill_empty", c.kernel_fill_empty),
            ("xdp_dropped", c.kernel_dropped),
            ("xdp_invalid_descs", c.kernel_invalid_descs),
            ("oversize", c.oversize),
            ("tx_kick_errors", c.tx_kick_errors),
            ("rx_wakeups", c.rx_wakeups),
        ]
    }
}

/// Which mode each receive interface was attached in, for the start-up log.
pub fn describe(queues: &[AfXdpQueue]) -> Vec<(String, bool)> {
    queues
        .first()
        .map(|q| {
            q._attached
                .iter()
                .map(|a| (a.iface.clone(), a.native))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens one queue per worker: the steering program on every receive
/// interface, worker *w*'s sockets on queue *w*, and a transmit socket on
/// `sec.tx_interface` (default: the first interface).
pub fn open_queues(sec: &AfXdpSection, workers: usize) -> Result<Vec<AfXdpQueue>, AfXdpError> {
    let first = sec
        .interfaces
        .first()
        .ok_or_else(|| AfXdpError::invalid("-", "open", "afxdp.interfaces is empty".into()))?;
    let tx_if = sec.tx_interface.as_deref().unwrap_or(first).to_string();
    let workers = workers.max(1);
    let index = |name: &str| -> Result<u32, AfXdpError> {
        let c = CString::new(name)
            .map_err(|_| AfXdpError::invalid(name, "if_nametoindex", "name contains NUL".into()))?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if i == 0 {
            return Err(AfXdpError::last(name, "if_nametoindex"));
        }
        Ok(i)
    };
    let mut max_frame = 0usize;
    let mut names: Vec<String> = sec.interfaces.clone();
    if !names.contains(&tx_if) {
        names.push(tx_if.clone());
    }
    let mut indexes = Vec::with_capacity(names.len());
    for n in &names {
        indexes.push(index(n)?);
        let mtu = super::afpacket::if_mtu(ioctl_socket(n)?.as_raw_fd(), n)
            .map_err(|e| AfXdpError::invalid(n, "ioctl(SIOCGIFMTU)", e.to_string()))?
            as usize;
        max_frame = max_frame.max(mtu.max(1500) + 14 + 8);
    }
    // A chunk holds the kernel's headroom and the frame.
    let chunk = if max_frame + XDP_PACKET_HEADROOM <= 2048 {
        2048
    } else if max_frame + XDP_PACKET_HEADROOM <= 4096 {
        4096
    } else {
        return Err(AfXdpError::invalid(
            first,
            "open",
            format!("frames of {max_frame} bytes (MTU) do not fit a 4096-byte UMEM frame: lower the MTU to 3800 or less, or use io = \"afpacket\""),
        ));
    };
    let g = Geometry {
        ring: sec.ring_size,
        chunk,
    };
    let mut attached = Vec::with_capacity(sec.interfaces.len());
    for (name, &ifindex) in names.iter().zip(&indexes).take(sec.interfaces.len()) {
        attached.push(Attachment::attach(name, ifindex, workers as u32, sec.mode)?);
    }
    let mut per_worker = Vec::with_capacity(workers);
    for w in 0..workers as u32 {
        let mut socks = Vec::with_capacity(names.len());
        for (k, (name, &ifindex)) in names.iter().zip(&indexes).enumerate() {
            let is_rx = k < sec.interfaces.len();
            let is_tx = *name == tx_if;
            let s = Xsk::open(name, ifindex, w, g, is_rx, is_tx)?;
            if is_rx {
                attached[k].insert(w, s.fd.as_raw_fd())?;
            }
            socks.push(s);
        }
        per_worker.push(socks);
    }
    let attached = Arc::new(attached);
    let tx = names.iter().position(|n| *n == tx_if).unwrap_or(0);
    Ok(per_worker
        .into_iter()
        .map(|socks| AfXdpQueue {
            socks,
            tx,
            next_rx: 0,
            pool: (0..POOL_SIZE)
                .map(|_| HeapBuf::with_capacity(max_frame))
                .collect(),
            max_frame,
            poll_when_idle: sec.poll_when_idle,
            idle: 0,
            counters: AfXdpCounters::default(),
            _attached: attached.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_lays_them_out() {
        // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm } on little-endian.
        let i = insn(0x61, 2, 1, 16, 0).to_le_bytes();
        assert_eq!(i, [0x61, 0x12, 16, 0, 0, 0, 0, 0]);
        let i = insn(0x18, 1, 1, 0, 7).to_le_bytes();
        assert_eq!(i, [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        let i = insn(0xb7, 3, 0, -1, -2).to_le_bytes();
        assert_eq!(i, [0xb7, 0x03, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff]);
        let p = steering_program(5);
        assert_eq!(p.len(), 6);
        assert_eq!(p[4].to_le_bytes()[0], 0x85);
        assert_eq!((p[4] >> 32) as i32, BPF_FUNC_REDIRECT_MAP);
        assert_eq!(p[5] & 0xff, 0x95);
    }

    #[test]
    fn abi_struct_sizes_match_linux() {
        assert_eq!(std::mem::size_of::<SockaddrXdp>(), 16);
        assert_eq!(std::mem::size_of::<UmemReg>(), 32);
        assert_eq!(std::mem::size_of::<MmapOffsets>(), 128);
        assert_eq!(std::mem::size_of::<XdpStatistics>(), 48);
    }

    #[test]
    fn an_empty_interface_list_is_an_error() {
        let sec = AfXdpSection::default();
        let e = open_queues(&sec, 1).err().expect("must fail");
        assert!(e.to_string().contains("afxdp.interfaces is empty"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let sec = AfXdpSection {
            interfaces: vec!["dpgw-no-such0".into()],
            ..AfXdpSection::default()
        };
        let e = open_queues(&sec, 1).err().expect("must fail");
        let s = e.to_string();
        assert!(
            s.contains("dpgw-no-such0") && s.contains("if_nametoindex"),
            "{s}"
        );
    }
}
