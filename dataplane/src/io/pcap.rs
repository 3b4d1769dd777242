//! pcap replay backend: captures are preloaded into memory, spread over the
//! workers by a symmetric flow hash (software RSS), and replayed `loops` times as
//! fast as the workers take them. Each receive copies the frame into a buffer of
//! the worker's own pool (the work a NIC's DMA does), so stages can rewrite it in
//! place, strip headers and prepend new ones into the headroom.

use std::sync::{Arc, Mutex};

use super::buf::HeapBuf;
use super::{Burst, Packet, Queue};
use crate::config::{PcapSection, PcapSplit};
use crate::pcapfile::{write_record, Capture, PcapError};

/// Buffers per worker pool: enough for the largest burst in flight twice.
const POOL_SIZE: usize = 2 * super::MAX_BURST + super::MAX_HELD;

/// Opens a replay: preloads every input capture and spreads its frames over
/// `workers` queues (software RSS). With `sec.output`, the queues also record
/// what they transmit into the returned slots (see [`output_file`]).
pub fn open_queues(
    sec: &PcapSection,
    workers: usize,
) -> Result<(Vec<PcapQueue>, Option<OutputSlots>), PcapError> {
    let mut caps = Vec::new();
    for p in &sec.input {
        caps.push(crate::pcapfile::read_file(p)?);
    }
    let traces = split_by(&caps, workers, sec.split);
    drop(caps);
    let slots: Option<OutputSlots> = sec
        .output
        .as_ref()
        .map(|_| Arc::new(Mutex::new(Vec::new())));
    let queues = traces
        .into_iter()
        .enumerate()
        .map(|(i, t)| PcapQueue::new(t, sec.loops, slots.clone().map(|s| (i, s))))
        .collect();
    Ok((queues, slots))
}

/// The output capture (a pcap file) of the queues that shared `slots`, worker
/// by worker. `None` if a queue panicked while holding the slots.
pub fn output_file(slots: &OutputSlots) -> Option<Vec<u8>> {
    let mut file = crate::pcapfile::global_header().to_vec();
    let s = slots.lock().ok()?;
    for part in s.iter() {
        file.extend_from_slice(part);
    }
    Some(file)
}

/// Frames assigned to one worker, packed in one allocation.
#[derive(Debug, Default)]
pub struct WorkerTrace {
    data: Vec<u8>,
    recs: Vec<(u32, u32, u64)>, // (offset, len, ts)
    max_frame: usize,
    wire_bytes: u64,
}

impl WorkerTrace {
    fn push(&mut self, frame: &[u8], ts: u64) {
        self.recs
            .push((self.data.len() as u32, frame.len() as u32, ts));
        self.data.extend_from_slice(frame);
        self.max_frame = self.max_frame.max(frame.len());
        self.wire_bytes += crate::stats::wire_bytes(frame.len());
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }
}

/// Splits captures over `workers` queues by a symmetric hash of the outer flow.
pub fn split(captures: &[Capture], workers: usize) -> Vec<WorkerTrace> {
    split_by(captures, workers, PcapSplit::Rss)
}

/// Splits captures over `workers` queues as `how` says: each flow (outer
/// hash) on one queue, in capture order.
pub fn split_by(captures: &[Capture], workers: usize, how: PcapSplit) -> Vec<WorkerTrace> {
    let workers = workers.max(1);
    let mut out: Vec<WorkerTrace> = (0..workers).map(|_| WorkerTrace::default()).collect();
    // Balanced: packets per flow hash, then the flows dealt out largest
    // first (ties by hash: the same split every run) to the least loaded.
    let mut worker_of = std::collections::HashMap::new();
    if how == PcapSplit::Balanced && workers > 1 {
        let mut count: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for cap in captures {
            for (_, frame) in cap.iter() {
                *count.entry(rss_hash(frame)).or_default() += 1;
            }
        }
        let mut flows: Vec<(u64, u32)> = count.into_iter().map(|(h, n)| (n, h)).collect();
        flows.sort_unstable_by(|a, b| b.cmp(a));
        let mut load = vec![0u64; workers];
        for (n, h) in flows {
            let w = (0..workers).min_by_key(|&w| (load[w], w)).unwrap_or(0);
            load[w] += n;
            worker_of.insert(h, w);
        }
    }
    for cap in captures {
        for (r, frame) in cap.iter() {
            let w = if workers == 1 {
                0
            } else {
                let h = rss_hash(frame);
                match how {
                    PcapSplit::Rss => h as usize % workers,
                    PcapSplit::Balanced => worker_of.get(&h).copied().unwrap_or(0),
                }
            };
            out[w].push(frame, r.ts_ns);
        }
    }
    out
}

/// Symmetric hash of the outer IPv4/IPv6 addresses and TCP/UDP ports (after up to
/// two VLAN tags), like a NIC's symmetric Toeplitz RSS; 0 for anything else.
pub fn rss_hash(f: &[u8]) -> u32 {
    let mut off = 12;
    let mut et = match f.get(12..14) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => return 0,
    };
    for _ in 0..2 {
        if et == 0x8100 || et == 0x88a8 {
            off += 4;
            et = match f.get(off..off + 2) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => return 0,
            };
        }
    }
    let l3 = off + 2;
    let (a, b, proto, l4) = match et {
        0x0800 => {
            let Some(h) = f.get(l3..l3 + 20) else {
                return 0;
            };
            let ihl = (h[0] & 0x0f) as usize * 4;
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            let a = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as u128;
            let b = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as u128;
            (a, b, if frag { 0 } else { h[9] }, l3 + ihl)
        }
        0x86dd => {
            let Some(h) = f.get(l3..l3 + 40) else {
                return 0;
            };
            let a = u128::from_be_bytes(h[8..24].try_into().unwrap_or([0; 16]));
            let b = u128::from_be_bytes(h[24..40].try_into().unwrap_or([0; 16]));
            (a, b, h[6], l3 + 40)
        }
        _ => return 0,
    };
    let (pa, pb) = if proto == 6 || proto == 17 {
        match f.get(l4..l4 + 4) {
            Some(p) => (
                u16::from_be_bytes([p[0], p[1]]) as u64,
                u16::from_be_bytes([p[2], p[3]]) as u64,
            ),
            None => (0, 0),
        }
    } else {
        (0, 0)
    };
    // Order-independent combination, then a 64-bit mix.
    let fold = |x: u128| (x as u64) ^ ((x >> 64) as u64);
    let x = fold(a) ^ fold(b);
    let y = fold(a).wrapping_add(fold(b));
    let z = (pa ^ pb) | ((pa + pb) << 17);
    let mut h = x ^ y.rotate_left(29) ^ z.rotate_left(47) ^ proto as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Collected output of every worker, written to the output capture at the end.
pub type OutputSlots = Arc<Mutex<Vec<Vec<u8>>>>;

/// One worker's replay queue.
pub struct PcapQueue {
    trace: WorkerTrace,
    idx: usize,
    /// Remaining passes including the current one; `None` = forever.
    loops_left: Option<u64>,
    pool: Vec<HeapBuf>,
    out: Option<(usize, Vec<u8>, OutputSlots)>,
    done: bool,
}

impl PcapQueue {
    /// `loops == 0` replays forever. `output`: (worker index, shared slots).
    pub fn new(trace: WorkerTrace, loops: u64, output: Option<(usize, OutputSlots)>) -> PcapQueue {
        let cap = trace.max_frame.max(2048);
        let pool = (0..POOL_SIZE)
            .map(|_| HeapBuf::with_capacity(cap))
            .collect();
        let done = trace.is_empty();
        PcapQueue {
            trace,
            idx: 0,
            loops_left: if loops == 0 { None } else { Some(loops) },
            pool,
            out: output.map(|(i, s)| (i, Vec::new(), s)),
            done,
        }
    }

    /// Frames per pass and their wire bytes (frame + FCS + preamble + gap).
    pub fn pass_size(&self) -> (usize, u64) {
        (self.trace.len(), self.trace.wire_bytes)
    }
}

impl Queue for PcapQueue {
    type Pkt = HeapBuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Burst<HeapBuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max && !self.done && !burst.is_full() {
            if self.idx == self.trace.recs.len() {
                self.idx = 0;
                if let Some(l) = &mut self.loops_left {
                    *l -= 1;
                    if *l == 0 {
                        self.done = true;
                        break;
                    }
                }
            }
            let Some(mut buf) = self.pool.pop() else {
                break;
            };
            let (off, len, ts) = self.trace.recs[self.idx];
            let (off, len) = (off as usize, len as usize);
            buf.load(&self.trace.data[off..off + len], ts);
            burst.push(buf);
            self.idx += 1;
            n += 1;
        }
        n
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Burst<HeapBuf>) -> usize {
        let n = burst.len();
        for buf in burst.drain(..) {
            if let Some((_, out, _)) = &mut self.out {
                write_record(out, buf.ts_ns(), buf.data());
            }
            self.pool.push(buf);
        }
        n
    }

    #[inline]
    fn free(&mut self, pkt: HeapBuf) {
        self.pool.push(pkt);
    }

    fn rx_done(&self) -> bool {
        self.done
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some((i, out, slots)) = &mut self.out {
            let mut s = slots
                .lock()
                .map_err(|_| std::io::Error::other("output lock poisoned"))?;
            if s.len() <= *i {
                s.resize(*i + 1, Vec::new());
            }
            s[*i].append(out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rss_symmetric() {
        // IPv4 UDP 10.0.0.1:1000 -> 10.0.0.2:4789 and the reverse.
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&4789u16.to_be_bytes());
        let h1 = rss_hash(&f);
        let mut g = f.clone();
        g[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 2]);
        g[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 1]);
        g[34..36].copy_from_slice(&4789u16.to_be_bytes());
        g[36..38].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(h1, rss_hash(&g));
        f[34..36].copy_from_slice(&1001u16.to_be_bytes());
        assert_ne!(h1, rss_hash(&f));
        assert_eq!(rss_hash(&[0u8; 5]), 0);
    }

    /// `split = "balanced"` keeps each flow (both directions) on one worker
    /// and evens out the packet counts that the hash split leaves unequal.
    #[test]
    fn test_balanced_split() {
        let frame = |a: u8, b: u8, sport: u16, dport: u16| {
            let mut f = vec![0u8; 60];
            f[12] = 0x08;
            f[14] = 0x45;
            f[14 + 9] = 17;
            f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, a]);
            f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, b]);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            f
        };
        // 40 flows of 1..=40 packets, each direction in turn.
        let mut cap = Capture::default();
        for flow in 0..40u16 {
            for k in 0..=flow {
                let f = if k % 2 == 0 {
                    frame(1, 2, 1000 + flow, 4789)
                } else {
                    frame(2, 1, 4789, 1000 + flow)
                };
                let off = cap.data.len();
                cap.data.extend_from_slice(&f);
                cap.records.push(crate::pcapfile::Record {
                    offset: off,
                    len: f.len(),
                    ts_ns: 0,
                });
            }
        }
        let total = cap.records.len();
        let where_is = |t: &[WorkerTrace]| {
            let mut at = std::collections::HashMap::new();
            for (w, tr) in t.iter().enumerate() {
                for r in &tr.recs {
                    let f = &tr.data[r.0 as usize..(r.0 + r.1) as usize];
                    let h = rss_hash(f);
                    assert_eq!(*at.entry(h).or_insert(w), w, "a flow on two workers");
                }
            }
        };
        for workers in [2usize, 3] {
            let rss = split_by(std::slice::from_ref(&cap), workers, PcapSplit::Rss);
            let bal = split_by(std::slice::from_ref(&cap), workers, PcapSplit::Balanced);
            where_is(&rss);
            where_is(&bal);
            let spread = |t: &[WorkerTrace]| {
                let n: Vec<usize> = t.iter().map(|t| t.len()).collect();
                assert_eq!(n.iter().sum::<usize>(), total);
                n.iter().max().unwrap() - n.iter().min().unwrap()
            };
            // Largest first to the least loaded: within one (the smallest) flow.
            assert!(
                spread(&bal) <= 1,
                "balanced over {workers}: spread {}",
                spread(&bal)
            );
            assert!(spread(&rss) > spread(&bal), "the hash split is uneven here");
        }
        // One worker: everything, in order.
        let one = split_by(std::slice::from_ref(&cap), 1, PcapSplit::Balanced);
        assert_eq!(one[0].len(), total);
    }

    #[test]
    fn test_replay_loops_and_accounting() {
        let mut cap = Capture::default();
        for i in 0..5u8 {
            let off = cap.data.len();
            cap.data.extend_from_slice(&[i; 60]);
            cap.records.push(crate::pcapfile::Record {
                offset: off,
                len: 60,
                ts_ns: i as u64,
            });
        }
        let traces = split(&[cap], 1);
        let mut q = PcapQueue::new(traces.into_iter().next().unwrap(), 3, None);
        let mut burst = Burst::new();
        let mut total = 0;
        loop {
            let n = q.rx_burst(&mut burst, 4);
            if n == 0 && q.rx_done() {
                break;
            }
            total += n;
            let p = burst.pop().unwrap();
            q.free(p);
            q.tx_burst(&mut burst);
        }
        assert_eq!(total, 15);
        assert_eq!(q.pool.len(), POOL_SIZE);
    }
}
