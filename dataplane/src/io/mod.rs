//! I/O backends and the packet/queue contracts the engine is generic over.
//!
//! A backend gives each worker one [`Queue`]: `rx_burst` fills a caller-owned
//! [`Burst`], `tx_burst` sends from the front of one, `free` returns a packet the
//! engine dropped. Every packet that `rx_burst` hands out comes back exactly once,
//! through `tx_burst` (sent) or `free` (dropped, or unsent after retries).

// The backends that talk to the kernel and to DPDK need unsafe code (each
// block with a SAFETY comment); nothing else in the crate may.
#[allow(unsafe_code)]
pub mod afpacket;
#[allow(unsafe_code)]
pub mod afxdp;
pub mod buf;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
pub mod pcap;

use arrayvec::ArrayVec;

/// Largest burst the engine supports (the configured burst is 1..=MAX_BURST).
pub const MAX_BURST: usize = 256;

/// Most packets a worker keeps beyond its bursts (fragments waiting for
/// their first fragment, `crate::frag`): the backends' buffer pools hold
/// two full bursts plus this many.
pub const MAX_HELD: usize = 64;

/// One packet buffer owned by the engine between rx and tx/free.
///
/// `data()` is the frame; `adj`/`prepend` move the start (decap strips the outer
/// headers, encap prepends new ones into the headroom) without copying the payload.
pub trait Packet {
    fn data(&self) -> &[u8];
    fn data_mut(&mut self) -> &mut [u8];
    /// Bytes free in front of the data for `prepend`.
    fn headroom(&self) -> usize;
    /// Removes `n` bytes from the front. `n <= data().len()` (panics otherwise: engine bug).
    fn adj(&mut self, n: usize);
    /// Grows the data by `n` bytes at the front; false (and unchanged) without headroom.
    fn prepend(&mut self, n: usize) -> bool;
    /// Shortens the frame to `len` bytes (no-op if already shorter).
    fn trim(&mut self, len: usize);
}

/// A reader of a backend's port counters (DPDK ports), for the control side,
/// which does not own the backend; installed with
/// [`crate::engine::Shared::set_port_source`].
pub type PortSource = Box<dyn Fn() -> Vec<ctl::PortCounters> + Send + Sync>;

/// A caller-owned burst of packets (fixed capacity, no allocation per burst).
pub type Burst<P> = ArrayVec<P, MAX_BURST>;

/// One worker's RX/TX queue pair on a backend.
pub trait Queue: Send {
    type Pkt: Packet;
    /// Appends up to `max` received packets to `burst`; returns how many were added.
    /// Returns 0 when nothing is waiting (the worker polls again).
    fn rx_burst(&mut self, burst: &mut Burst<Self::Pkt>, max: usize) -> usize;
    /// Sends packets from the front of `burst`, removing the ones sent; returns how
    /// many were sent. Unsent packets stay in `burst` (the engine retries, then frees
    /// and counts them as `tx_full`).
    fn tx_burst(&mut self, burst: &mut Burst<Self::Pkt>) -> usize;
    /// Returns a packet the engine will not send.
    fn free(&mut self, pkt: Self::Pkt);
    /// Returns every packet of `pkts` at once (the burst's drops); the default
    /// frees them one by one.
    fn free_burst(&mut self, pkts: &mut Burst<Self::Pkt>) {
        for p in pkts.drain(..) {
            self.free(p);
        }
    }
    /// True when the input is exhausted and will never produce more (finite replay).
    fn rx_done(&self) -> bool {
        false
    }
    /// Flushes buffered output (end of run).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The backend's own counters of this queue (what never reaches the
    /// engine's counters: kernel ring drops, checksums completed, ...), by
    /// stable name. Called at the end of a run, never per packet.
    fn io_counters(&mut self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// A packet holding a copy of `frame`, to transmit on this queue (the
    /// slow path's frames when the workers own the I/O, see
    /// [`crate::punt::Inject`]); `None` where the backend has no pool.
    fn alloc_frame(&mut self, frame: &[u8]) -> Option<Self::Pkt> {
        let _ = frame;
        None
    }
}

/// A queue of one of the two backends on the kernel's interfaces (AF_PACKET,
/// AF_XDP). Both hand out [`buf::HeapBuf`]s, so the runner drives them as one
/// type: the engine is compiled once for both (one match per burst, not per
/// packet).
pub enum HostQueue {
    Packet(afpacket::AfPacketQueue),
    Xdp(afxdp::AfXdpQueue),
}

impl Queue for HostQueue {
    type Pkt = buf::HeapBuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Burst<buf::HeapBuf>, max: usize) -> usize {
        match self {
            HostQueue::Packet(q) => q.rx_burst(burst, max),
            HostQueue::Xdp(q) => q.rx_burst(burst, max),
        }
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Burst<buf::HeapBuf>) -> usize {
        match self {
            HostQueue::Packet(q) => q.tx_burst(burst),
            HostQueue::Xdp(q) => q.tx_burst(burst),
        }
    }

    #[inline]
    fn free(&mut self, pkt: buf::HeapBuf) {
        match self {
            HostQueue::Packet(q) => q.free(pkt),
            HostQueue::Xdp(q) => q.free(pkt),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            HostQueue::Packet(q) => q.flush(),
            HostQueue::Xdp(q) => q.flush(),
        }
    }

    fn io_counters(&mut self) -> Vec<(&'static str, u64)> {
        match self {
            HostQueue::Packet(q) => q.io_counters(),
            HostQueue::Xdp(q) => q.io_counters(),
        }
    }
}
