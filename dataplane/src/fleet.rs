//! Flow-state sharing among the gateways of a fleet (`[fleet]`): each tells
//! its peers the backend it chose for every new service flow, so a peer that
//! ECMP later hands a packet of that flow (a gateway drained, died, or the
//! path set changed) finds the choice and keeps the connection on its
//! backend even when the Maglev table changed meanwhile.
//!
//! * **Workers** gather new flows in a [`Batch`] of their own and pay one
//!   lock-free queue push per burst that had new flows (nothing per packet
//!   of a known flow): [`FleetLink::offer`]. A full queue drops the batch and
//!   counts its records. On a flow-table miss the LB stage looks up the
//!   shared store ([`lb::shared_flows::SharedFlows`], a seqlock table: no
//!   lock, no allocation) before Maglev and takes the shared backend if it is
//!   still eligible.
//! * **The sync thread** ([`run`]) batches the records into datagrams (at
//!   most [`MAX_DATAGRAM`] bytes, sent when full or `flush_ms` after the first
//!   record), authenticated with HMAC-SHA256 under the fleet key, to every
//!   peer over UDP; it is also the store's only writer. Every second without
//!   records it sends an empty datagram (a heartbeat), so a silent peer is
//!   noticed and reported (`fleet_peer_silent`).
//! * **Accepted** only from a configured peer address, with a valid MAC, and
//!   not replayed (per peer: the sender's epoch, its start time, must not go
//!   back; sequence numbers are checked against a 64-datagram window).
//!   Everything else is dropped and counted by reason before it can touch
//!   the store, so forged or replayed floods evict nothing.
//!
//! Wire format (v1), big-endian: `"DPGS"`, version 1, flags 0, record count
//! (u16), epoch (u64, ms since the Unix epoch), sequence (u64), then per record
//! the flow hash (u64), v6 flag (u8), backend address (16 bytes, IPv4
//! zero-extended), then the 32-byte HMAC-SHA256 of everything before it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use hmac::{Hmac, Mac};
use lb::shared_flows::{Installed, SharedFlows};
use sha2::Sha256;

use crate::config::{Config, FleetSection};
use crate::log::{self, Level};

/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1400;
const HEADER: usize = 24;
const MAC_LEN: usize = 32;
const RECORD: usize = 25;
/// Records per datagram.
pub const MAX_RECORDS: usize = (MAX_DATAGRAM - HEADER - MAC_LEN) / RECORD;
const MAGIC: &[u8; 4] = b"DPGS";
/// Batches waiting for the sync thread (all workers together; 131072 records).
const QUEUE: usize = 1 << 12;
/// Records a worker gathers before one queue push.
pub const BATCH: usize = 32;
/// A peer unheard for this long is reported silent.
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// One shared choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub hash: u64,
    pub addr: u128,
    pub v6: bool,
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not from a configured peer address.
    UnknownPeer,
    /// Too short, too long, wrong magic/version, or a count that does not match its length.
    Malformed,
    /// The MAC does not verify (wrong key, or changed on the way).
    BadMac,
    /// Seen already, or older than what the peer sent since.
    Replay,
}

/// Counters (all monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    pub sent_records: AtomicU64,
    pub sent_datagrams: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received_datagrams: AtomicU64,
    pub received_records: AtomicU64,
    pub installed: AtomicU64,
    pub evicted: AtomicU64,
    pub rejected_unknown_peer: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_bad_mac: AtomicU64,
    pub rejected_replay: AtomicU64,
    pub queue_full: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Up to [`BATCH`] records of one worker: the unit of the queue, so a
/// worker pays one queue operation per burst of new flows, not one each.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    n: usize,
    r: [Record; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            n: 0,
            r: [Record {
                hash: 0,
                addr: 0,
                v6: false,
            }; BATCH],
        }
    }
}

impl Batch {
    /// Adds a record; true when the batch is now full.
    #[inline]
    pub fn push(&mut self, hash: u64, addr: u128, v6: bool) -> bool {
        self.r[self.n] = Record { hash, addr, v6 };
        self.n += 1;
        self.n == BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn records(&self) -> &[Record] {
        &self.r[..self.n]
    }
}

/// What workers and the sync thread share: the outgoing queue, the store of
/// peers' choices, counters and the peers' state.
pub struct FleetLink {
    out: ArrayQueue<Batch>,
    pub store: Arc<SharedFlows>,
    pub counters: Counters,
    peers: Mutex<Vec<PeerState>>,
}

impl std::fmt::Debug for FleetLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetLink")
    }
}

#[derive(Clone, Debug)]
struct PeerState {
    addr: SocketAddr,
    last_heard: Option<Instant>,
    silent: bool,
}

impl FleetLink {
    pub fn new(section: &FleetSection) -> FleetLink {
        FleetLink {
            out: ArrayQueue::new(QUEUE),
            store: Arc::new(SharedFlows::new(section.capacity)),
            counters: Counters::default(),
            peers: Mutex::new(
                section
                    .peers
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .map(|addr| PeerState {
                        addr,
                        last_heard: None,
                        silent: false,
                    })
                    .collect(),
            ),
        }
    }

    /// A worker's new flows: queued for the peers (never blocks; a full
    /// queue loses the batch, counted). Empties `b`.
    #[inline]
    pub fn offer(&self, b: &mut Batch) {
        if b.n == 0 {
            return;
        }
        let n = b.n as u64;
        if self.out.push(*b).is_err() {
            self.counters.queue_full.fetch_add(n, Ordering::Relaxed);
        }
        b.n = 0;
    }

    /// For `dpgwctl stats` and the metrics.
    pub fn report(&self) -> ctl::FleetReport {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        ctl::FleetReport {
            capacity: self.store.capacity() as u64,
            sent_records: l(&c.sent_records),
            sent_datagrams: l(&c.sent_datagrams),
            sent_bytes: l(&c.sent_bytes),
            received_datagrams: l(&c.received_datagrams),
            received_records: l(&c.received_records),
            installed: l(&c.installed),
            evicted: l(&c.evicted),
            used: self.store.used(),
            rejected_unknown_peer: l(&c.rejected_unknown_peer),
            rejected_malformed: l(&c.rejected_malformed),
            rejected_bad_mac: l(&c.rejected_bad_mac),
            rejected_replay: l(&c.rejected_replay),
            queue_full: l(&c.queue_full),
            send_errors: l(&c.send_errors),
            peers: peers
                .iter()
                .map(|p| ctl::FleetPeer {
                    addr: p.addr.to_string(),
                    last_heard_s: p.last_heard.map(|t| t.elapsed().as_secs_f64()),
                    silent: p.silent || p.last_heard.is_none(),
                })
                .collect(),
        }
    }
}

/// Reads the fleet key: at least 16 bytes (trailing whitespace ignored), in
/// a file nobody but its owner may read.
pub fn load_key(path: &Path) -> Result<Vec<u8>, String> {
    let what = format!("fleet.key_file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{what}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what}: mode {mode:04o} lets others read the key (chmod 600 it)"
        ));
    }
    let mut key = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if key.len() < 16 {
        return Err(format!(
            "{what}: {} bytes; a key needs at least 16 (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
            key.len()
        ));
    }
    Ok(key)
}

fn mac(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Builds one datagram.
pub fn encode(key: &[u8], epoch: u64, seq: u64, records: &[Record]) -> Vec<u8> {
    debug_assert!(records.len() <= MAX_RECORDS);
    let mut d = Vec::with_capacity(HEADER + records.len() * RECORD + MAC_LEN);
    d.extend_from_slice(MAGIC);
    d.push(1);
    d.push(0);
    d.extend_from_slice(&(records.len() as u16).to_be_bytes());
    d.extend_from_slice(&epoch.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    for r in records {
        d.extend_from_slice(&r.hash.to_be_bytes());
        d.push(u8::from(r.v6));
        d.extend_from_slice(&r.addr.to_be_bytes());
    }
    let m = mac(key, &d);
    d.extend_from_slice(&m);
    d
}

/// Replay state of one peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    epoch: u64,
    top: u64,
    /// Bit i = `top - i` was seen.
    seen: u64,
}

impl Window {
    /// Accepts `(epoch, seq)` once.
    fn accept(&mut self, epoch: u64, seq: u64) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch || self.seen == 0 {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// Checks a datagram from `from` and returns its records (the replay window
/// of that peer is advanced only for a datagram whose MAC verified).
pub fn decode<'a>(
    key: &[u8],
    peers: &[SocketAddr],
    windows: &mut HashMap<SocketAddr, Window>,
    from: SocketAddr,
    d: &'a [u8],
) -> Result<impl Iterator<Item = Record> + 'a, Reject> {
    if !peers.contains(&from) {
        return Err(Reject::UnknownPeer);
    }
    if d.len() < HEADER + MAC_LEN || d.len() > MAX_DATAGRAM || &d[..4] != MAGIC || d[4] != 1 {
        return Err(Reject::Malformed);
    }
    let count = usize::from(u16::from_be_bytes([d[6], d[7]]));
    if HEADER + count * RECORD + MAC_LEN != d.len() {
        return Err(Reject::Malformed);
    }
    let (body, tag) = d.split_at(d.len() - MAC_LEN);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(body);
    if m.verify_slice(tag).is_err() {
        return Err(Reject::BadMac);
    }
    let epoch = u64::from_be_bytes(d[8..16].try_into().expect("8"));
    let seq = u64::from_be_bytes(d[16..24].try_into().expect("8"));
    if !windows.entry(from).or_default().accept(epoch, seq) {
        return Err(Reject::Replay);
    }
    Ok(body[HEADER..].chunks_exact(RECORD).map(|r| Record {
        hash: u64::from_be_bytes(r[..8].try_into().expect("8")),
        v6: r[8] != 0,
        addr: u128::from_be_bytes(r[9..25].try_into().expect("16")),
    }))
}

/// Parses `[fleet]`'s addresses.
pub fn addresses(f: &FleetSection) -> Result<(SocketAddr, Vec<SocketAddr>), String> {
    f.addresses()
}

/// The sync thread's body: until `stop()` is true, receives and installs
/// peers' records and sends ours. The socket and key are opened by the caller
/// ([`open`]) so that errors stop the daemon before it starts.
pub fn run(
    link: Arc<FleetLink>,
    sock: UdpSocket,
    key: Vec<u8>,
    section: FleetSection,
    max_age_ms: u64,
    stop: impl Fn() -> bool,
) {
    let (_, peers) = match addresses(&section) {
        Ok(a) => a,
        Err(_) => return,
    };
    let t0 = Instant::now();
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    let mut seq = 0u64;
    let mut windows: HashMap<SocketAddr, Window> = HashMap::new();
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_RECORDS);
    let mut batch_since = Instant::now();
    let mut last_sent = Instant::now();
    let mut last_check = Instant::now();
    let flush = Duration::from_millis(section.flush_ms.max(1));
    let mut buf = vec![0u8; 65536];
    let c = &link.counters;
    let send = |batch: &mut Vec<Record>, seq: &mut u64| {
        *seq += 1;
        let d = encode(&key, epoch, *seq, batch);
        for p in &peers {
            match sock.send_to(&d, p) {
                Ok(n) => {
                    c.sent_datagrams.fetch_add(1, Ordering::Relaxed);
                    c.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    c.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.sent_records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    };
    while !stop() {
        link.store.set_now(t0.elapsed().as_millis() as u64);
        // Receive what is there (the read timeout paces the loop).
        for _ in 0..256 {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => break,
            };
            c.received_datagrams.fetch_add(1, Ordering::Relaxed);
            match decode(&key, &peers, &mut windows, from, &buf[..n]) {
                Err(r) => {
                    let ctr = match r {
                        Reject::UnknownPeer => &c.rejected_unknown_peer,
                        Reject::Malformed => &c.rejected_malformed,
                        Reject::BadMac => &c.rejected_bad_mac,
                        Reject::Replay => &c.rejected_replay,
                    };
                    ctr.fetch_add(1, Ordering::Relaxed);
                }
                Ok(records) => {
                    let mut k = 0u64;
                    for r in records {
                        k += 1;
                        match link.store.install(r.hash, r.addr, r.v6, max_age_ms) {
                            Installed::Evicted => {
                                c.evicted.fetch_add(1, Ordering::Relaxed);
                            }
                            Installed::New | Installed::Updated => {}
                        }
                        c.installed.fetch_add(1, Ordering::Relaxed);
                    }
                    c.received_records.fetch_add(k, Ordering::Relaxed);
                    let mut ps = link.peers.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(p) = ps.iter_mut().find(|p| p.addr == from) {
                        if p.silent {
                            log::event(Level::Info, "fleet_peer_back", &[("peer", &from)]);
                        }
                        p.last_heard = Some(Instant::now());
                        p.silent = false;
                    }
                }
            }
        }
        // Send ours: full datagrams at once, the rest after `flush`.
        while let Some(b) = link.out.pop() {
            for &r in b.records() {
                if batch.is_empty() {
                    batch_since = Instant::now();
                }
                batch.push(r);
                if batch.len() == MAX_RECORDS {
                    send(&mut batch, &mut seq);
                    last_sent = Instant::now();
                }
            }
        }
        if (!batch.is_empty() && batch_since.elapsed() >= flush)
            || last_sent.elapsed() >= Duration::from_secs(1)
        {
            send(&mut batch, &mut seq);
            last_sent = Instant::now();
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let mut ps = link.peers.lock().unwrap_or_else(|p| p.into_inner());
            for p in ps.iter_mut() {
                let quiet = p.last_heard.is_none_or(|t| t.elapsed() > SILENT_AFTER)
                    && t0.elapsed() > SILENT_AFTER;
                if quiet && !p.silent {
                    p.silent = true;
                    log::event(
                        Level::Warn,
                        "fleet_peer_silent",
                        &[
                            ("peer", &p.addr),
                            (
                                "last_heard_s",
                                &p.last_heard.map_or("never".to_string(), |t| {
                                    format!("{:.1}", t.elapsed().as_secs_f64())
                                }),
                            ),
                        ],
                    );
                }
            }
        }
    }
}

/// Binds the sync socket and reads the key (errors name the key).
pub fn open(section: &FleetSection) -> Result<(UdpSocket, Vec<u8>), String> {
    let (listen, _) = addresses(section)?;
    let key = load_key(&section.key_file)?;
    let sock = UdpSocket::bind(listen).map_err(|e| format!("fleet.listen {listen}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(1)))
        .map_err(|e| format!("fleet.listen {listen}: {e}"))?;
    Ok((sock, key))
}

/// Starts the sync thread if `cfg` has `[fleet]` (the link lives in the tables).
pub fn start(
    cfg: &Config,
    link: Option<Arc<FleetLink>>,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    let (Some(section), Some(link)) = (cfg.fleet.clone(), link) else {
        return Ok(None);
    };
    let (sock, key) = open(&section)?;
    let max_age_ms = u64::from(cfg.dataplane.tcp_timeout_s.max(cfg.dataplane.udp_timeout_s)) * 1000;
    // Off the workers' cores when there is one free (in a flood the sync
    // thread is busy, and sharing a worker's core costs that worker).
    let worker_cores: Vec<usize> = if cfg.dataplane.cores.is_empty() {
        (0..cfg.dataplane.workers).collect()
    } else {
        cfg.dataplane.cores.clone()
    };
    let spare = crate::cpu::online_cpus()
        .into_iter()
        .rev()
        .find(|c| !worker_cores.contains(c));
    // With `control_cores` the thread keeps the control CPUs it inherits.
    let pin = !cfg.dataplane.no_pin && cfg.dataplane.control_cores.is_empty();
    std::thread::Builder::new()
        .name("dpgw-fleet".into())
        .spawn(move || {
            if let (true, Some(c)) = (pin, spare) {
                let _ = crate::cpu::pin_thread_to(&[c]);
            }
            run(link, sock, key, section, max_age_ms, stop)
        })
        .map(Some)
        .map_err(|e| format!("fleet: spawning its thread: {e}"))
}

/// `IpAddr` of a record's address (for logs and tests).
pub fn record_ip(r: &Record) -> IpAddr {
    if r.v6 {
        IpAddr::V6(r.addr.into())
    } else {
        IpAddr::V4((r.addr as u32).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "198.18.3.12:4790".parse().unwrap()
    }

    fn recs(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                hash: 0x1234_0000 + i as u64,
                addr: 0xc612_020b,
                v6: false,
            })
            .collect()
    }

    #[test]
    fn test_roundtrip_and_every_rejection() {
        let key = b"0123456789abcdef0123".to_vec();
        let peers = [peer()];
        let mut w = HashMap::new();
        let d = encode(&key, 100, 1, &recs(MAX_RECORDS));
        assert!(d.len() <= MAX_DATAGRAM, "{}", d.len());
        let got: Vec<Record> = decode(&key, &peers, &mut w, peer(), &d).unwrap().collect();
        assert_eq!(got, recs(MAX_RECORDS));
        assert_eq!(record_ip(&got[0]).to_string(), "198.18.2.11");
        // Replayed.
        assert_eq!(
            decode(&key, &peers, &mut w, peer(), &d).err(),
            Some(Reject::Replay)
        );
        // Unknown peer.
        let other: SocketAddr = "198.18.3.99:4790".parse().unwrap();
        assert_eq!(
            decode(&key, &peers, &mut w, other, &d).err(),
            Some(Reject::UnknownPeer)
        );
        // Wrong key.
        let forged = encode(b"not-the-fleet-key!!", 100, 2, &recs(3));
        assert_eq!(
            decode(&key, &peers, &mut w, peer(), &forged).err(),
            Some(Reject::BadMac)
        );
        // A flipped bit in a record.
        let mut flipped = encode(&key, 100, 3, &recs(3));
        flipped[HEADER + 5] ^= 1;
        assert_eq!(
            decode(&key, &peers, &mut w, peer(), &flipped).err(),
            Some(Reject::BadMac)
        );
        // Truncated, huge, empty, wrong count, wrong magic.
        let good = encode(&key, 100, 4, &recs(3));
        for bad in [
            good[..good.len() - 1].to_vec(),
            vec![0u8; MAX_DATAGRAM + 1],
            Vec::new(),
            {
                let mut b = good.clone();
                b[7] = 4;
                b
            },
            {
                let mut b = good.clone();
                b[0] = b'X';
                b
            },
        ] {
            assert_eq!(
                decode(&key, &peers, &mut w, peer(), &bad).err(),
                Some(Reject::Malformed)
            );
        }
        // The forged ones did not advance the window: seq 2 and 3 are still new.
        assert!(decode(&key, &peers, &mut w, peer(), &encode(&key, 100, 3, &[])).is_ok());
        assert!(decode(&key, &peers, &mut w, peer(), &good).is_ok());
    }

    #[test]
    fn test_replay_window() {
        let mut w = Window::default();
        assert!(w.accept(10, 5));
        assert!(!w.accept(10, 5));
        assert!(w.accept(10, 7));
        assert!(w.accept(10, 6), "late but inside the window");
        assert!(!w.accept(10, 6));
        assert!(w.accept(10, 200));
        assert!(!w.accept(10, 100), "too old for the window");
        assert!(
            !w.accept(9, 1000),
            "an older epoch (a replay from before a restart)"
        );
        assert!(w.accept(11, 1), "a restart");
        assert!(!w.accept(10, 500));
    }

    #[test]
    fn test_key_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "short\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_key(&p).unwrap_err().contains("at least 16"));
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(load_key(&p).unwrap().len(), 32);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&p).unwrap_err();
        assert!(e.contains("0644") && e.contains("fleet.key_file"), "{e}");
        assert!(load_key(&dir.path().join("nope"))
            .unwrap_err()
            .contains("fleet.key_file"));
    }
}
