//! What crosses between the fast path and the slow path: the punt queue
//! (frames a worker hands to the slow path, copied into a bounded lock-free
//! queue of fixed buffers, dropped when full, never blocking) and the next-hop
//! state the slow path learns and the workers read once per burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Where the slow path gets packets the fast path does not handle (ARP, ICMP
/// echo and neighbour discovery for our own addresses). Implementations must
/// not block: copy into a bounded queue and drop when it is full.
pub trait Punt: Send {
    fn punt(&mut self, frame: &[u8]);
}

/// Largest frame the slow path takes (bigger pings are dropped).
pub const PUNT_FRAME: usize = 2048;
/// Buffers in the punt queue (shared by all workers).
pub const PUNT_SLOTS: usize = 512;

/// Bit set in [`crate::engine::Shared::learned_next_hop`] when the low 48 bits are a learned MAC.
pub const NEXT_HOP_LEARNED: u64 = 1 << 48;
/// Bit set (alone) in [`crate::engine::Shared::learned_next_hop`] while `next_hop_ip` is
/// configured but not resolved: traffic to the next hop must be dropped
/// (`next_hop_unresolved`).
pub const NEXT_HOP_PENDING: u64 = 1 << 49;

/// What the fast path should use as the next-hop MAC, decoded from
/// [`crate::engine::Shared::learned_next_hop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// No resolution configured (value 0): use `Tables::next_hop_mac`.
    Configured,
    /// Learned by ARP/ND.
    Learned([u8; 6]),
    /// Resolution configured but no answer (yet, or any more): drop with
    /// `DropReason::NextHopUnresolved`.
    Unresolved,
}

impl NextHop {
    /// Decodes a value of [`crate::engine::Shared::learned_next_hop`].
    #[inline(always)]
    pub fn decode(v: u64) -> NextHop {
        if v & NEXT_HOP_LEARNED != 0 {
            let b = v.to_be_bytes();
            NextHop::Learned([b[2], b[3], b[4], b[5], b[6], b[7]])
        } else if v & NEXT_HOP_PENDING != 0 {
            NextHop::Unresolved
        } else {
            NextHop::Configured
        }
    }

    /// The value to store in [`crate::engine::Shared::learned_next_hop`].
    pub fn encode(self) -> u64 {
        match self {
            NextHop::Configured => 0,
            NextHop::Unresolved => NEXT_HOP_PENDING,
            NextHop::Learned(m) => {
                NEXT_HOP_LEARNED | u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
            }
        }
    }

    /// The MAC to send to, given the configured one; `None` = unresolved.
    #[inline(always)]
    pub fn mac(self, configured: [u8; 6]) -> Option<[u8; 6]> {
        match self {
            NextHop::Configured => Some(configured),
            NextHop::Learned(m) => Some(m),
            NextHop::Unresolved => None,
        }
    }
}

pub(crate) struct PuntBuf {
    pub(crate) len: usize,
    pub(crate) data: [u8; PUNT_FRAME],
}

/// The bounded queue between the workers and the slow path.
pub(crate) struct PuntQueue {
    pub(crate) full: ArrayQueue<Box<PuntBuf>>,
    pub(crate) free: ArrayQueue<Box<PuntBuf>>,
    pub(crate) punted: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl PuntQueue {
    pub(crate) fn new(slots: usize) -> PuntQueue {
        let free = ArrayQueue::new(slots);
        for _ in 0..slots {
            let _ = free.push(Box::new(PuntBuf {
                len: 0,
                data: [0; PUNT_FRAME],
            }));
        }
        PuntQueue {
            full: ArrayQueue::new(slots),
            free,
            punted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

/// A worker's handle on the punt queue: copies the frame into a free buffer
/// (lock-free), wakes the slow path; drops the frame when no buffer is free.
pub struct QueuePunt {
    pub(crate) q: Arc<PuntQueue>,
    pub(crate) wake: std::thread::Thread,
}

impl Punt for QueuePunt {
    fn punt(&mut self, frame: &[u8]) {
        if frame.len() > PUNT_FRAME {
            self.q.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(mut b) = self.q.free.pop() else {
            self.q.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        b.len = frame.len();
        b.data[..frame.len()].copy_from_slice(frame);
        match self.q.full.push(b) {
            Ok(()) => {
                self.q.punted.fetch_add(1, Ordering::Relaxed);
                self.wake.unpark();
            }
            Err(b) => {
                let _ = self.q.free.push(b);
                self.q.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The way back for a slow path whose I/O belongs to the workers (DPDK: the
/// kernel does not own the NIC): the slow path's frames (ARP/ND replies and
/// requests, echo replies, health probes) are copied into fixed buffers of a
/// bounded lock-free queue, and worker 0 sends them on its TX queue between
/// bursts. Never blocking, no allocation after [`Inject::new`]; a full queue
/// drops the frame (counted).
pub struct Inject {
    q: PuntQueue,
    /// Frames a worker sent.
    pub sent: AtomicU64,
    /// Frames dropped: queue full, too big, no buffer from the driver's pool, or
    /// the TX queue full.
    pub dropped: AtomicU64,
}

impl Inject {
    pub fn new(slots: usize) -> Inject {
        Inject {
            q: PuntQueue::new(slots),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `frame` for a worker to send; false (counted) when it cannot.
    pub fn push(&self, frame: &[u8]) -> bool {
        if frame.len() > PUNT_FRAME {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(mut b) = self.q.free.pop() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        b.len = frame.len();
        b.data[..frame.len()].copy_from_slice(frame);
        if let Err(b) = self.q.full.push(b) {
            let _ = self.q.free.push(b);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// True when nothing waits (one atomic read: the worker's per-loop test).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.q.full.is_empty()
    }

    /// Hands up to `max` queued frames to `each`, oldest first.
    pub fn drain(&self, max: usize, mut each: impl FnMut(&[u8])) {
        for _ in 0..max {
            let Some(b) = self.q.full.pop() else { break };
            each(&b.data[..b.len]);
            let _ = self.q.free.push(b);
        }
    }
}
