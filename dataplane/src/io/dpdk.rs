//! DPDK backend: the system DPDK 22.11 through `dpdk-sys`, behind safe wrappers.
//!
//! - [`Eal`]: the environment abstraction layer, initialised once per process
//!   from the EAL arguments of the config (`[dpdk] eal_args`), so real NICs
//!   (`-a 0000:01:00.0`) and virtual devices (`--vdev=net_null0`) work the same way.
//! - [`Mempool`]: an mbuf pool (one per NUMA socket in use).
//! - [`Port`]: an ethdev port: configure (RSS when the device has it), queue
//!   setup, start/stop/close, link status, statistics.
//! - [`Mbuf`]: one single-segment packet buffer, implementing [`Packet`]; dropping
//!   it frees it back to its pool.
//! - [`DpdkQueue`]: one worker's queue pair, implementing [`Queue`].
//! - [`open`] / [`DpdkRuntime::open`]: everything the engine needs from a
//!   [`DpdkConfig`] and a worker count.
//!
//! # Lifetimes
//!
//! `Packet` values carry no lifetime, so an [`Mbuf`] can outlive every handle of
//! this module. To keep that sound, mempools are never freed and the EAL is never
//! cleaned up: DPDK memory lives until the process exits. Ports are stopped
//! when the [`DpdkRuntime`] and all of its queues are gone (not closed: a later
//! `DpdkRuntime::open` in the same process may configure them again).
//!
//! # Threads and the mempool cache
//!
//! DPDK's per-lcore mempool cache is used only by threads that have an lcore id.
//! The engine's workers are plain threads, so [`DpdkQueue::on_worker_thread`]
//! registers the calling thread with `rte_thread_register()` (it takes a free lcore
//! id; the EAL's own `-l` list only reserves the ids it names). The first
//! `rx_burst` calls it if the engine did not, so it happens on the polling thread
//! (after the engine pinned it). If no id is free the queue still works, just
//! without the cache: mempool operations from threads without an lcore id go
//! straight to the pool's multi-producer/consumer ring.
//!
//! # Multi-segment packets
//!
//! The engine sees single-segment frames only. Scatter RX is not enabled, and the
//! pool's data room (2048 B + 128 B headroom) holds a standard frame, so a
//! driver hands out a chain only for a frame longer than that (e.g. `net_pcap`
//! replaying a jumbo capture). Such a chain is linearised in place when it fits in
//! its first segment's buffer, otherwise it is freed at RX and counted in
//! [`QueueStats::rx_multiseg_dropped`] (it never reaches the engine, so it is in the
//! port's `ipackets` but not in the engine's `rx`). Jumbo frames are out of scope.
//!
//! ```no_run
//! use dataplane::io::dpdk::{open, DpdkConfig};
//! use dataplane::io::{Burst, Queue};
//!
//! let cfg = DpdkConfig {
//!     eal_args: ["--no-huge", "-m", "256", "--no-pci", "--vdev=net_null0"]
//!         .map(String::from)
//!         .to_vec(),
//!     ..DpdkConfig::default()
//! };
//! let (rt, mut queues) = open(&cfg, 1).unwrap();
//! let q = &mut queues[0];
//! q.on_worker_thread();
//! let mut burst = Burst::new();
//! let n = q.rx_burst(&mut burst, 32);
//! let sent = q.tx_burst(&mut burst);
//! burst.drain(..).for_each(|p| q.free(p));
//! println!("{n} received, {sent} sent, {:?}", rt.port_stats());
//! ```

use std::ffi::{CStr, CString};
use std::fmt;
use std::mem::{self, MaybeUninit};
use std::os::raw::{c_char, c_int};
use std::ptr::{self, NonNull};
use std::slice;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use serde::Serialize;

pub use dpdk_sys as sys;
use dpdk_sys::{
    rte_eth_conf, rte_eth_dev_info, rte_eth_link, rte_eth_stats, rte_mbuf, rte_mempool,
};

use super::{Burst, Packet, Queue, MAX_BURST};

/// Mbuf data room: a standard frame plus DPDK's headroom (`RTE_MBUF_DEFAULT_BUF_SIZE`).
pub const MBUF_DATA_ROOM: u16 = dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

/// Headroom DPDK leaves in front of received data (`RTE_PKTMBUF_HEADROOM`).
pub const MBUF_HEADROOM: u16 = dpdk_sys::RTE_PKTMBUF_HEADROOM as u16;

/// Highest port id DPDK supports, plus one (`RTE_MAX_ETHPORTS`).
pub const MAX_PORTS: usize = dpdk_sys::RTE_MAX_ETHPORTS as usize;

/// The `[dpdk]` section of the configuration, taken as it is.
pub use crate::config::DpdkSection as DpdkConfig;

/// An error from DPDK or from the DPDK configuration.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error(
        "the DPDK EAL is already initialised in this process (it can be initialised only once)"
    )]
    AlreadyInitialised,
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    #[error("{call} failed: {errno}")]
    Call { call: String, errno: Errno },
    #[error("port {port} does not exist ({available} ports available: {names})")]
    NoSuchPort {
        port: u16,
        available: u16,
        names: String,
    },
    #[error("no port named {0:?}")]
    NoSuchPortName(String),
    #[error("port {0} is already in use by this process")]
    PortBusy(u16),
    #[error("invalid [dpdk] configuration: {0}")]
    Config(String),
}

/// A DPDK error number with DPDK's description (`rte_strerror`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's `rte_errno`.
    pub fn last() -> Errno {
        // SAFETY: reads the calling thread's TLS `rte_errno`; no preconditions.
        Errno(unsafe { sys::dpdk_sys_rte_errno() })
    }

    /// From a DPDK function's negative return value (`-errno`).
    pub fn from_ret(ret: c_int) -> Errno {
        Errno(ret.saturating_abs())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: rte_strerror accepts any value and returns a NUL-terminated string
        // (static, or in a per-thread buffer valid until the next call on this thread).
        let msg = unsafe { CStr::from_ptr(sys::rte_strerror(self.0)) };
        write!(f, "{} (errno {})", msg.to_string_lossy(), self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn call_err(call: impl Into<String>, errno: Errno) -> DpdkError {
    DpdkError::Call {
        call: call.into(),
        errno,
    }
}

/// Checks a DPDK `int` return value (0 or positive = success, negative = -errno).
fn check(ret: c_int, call: impl FnOnce() -> String) -> Result<c_int, DpdkError> {
    if ret < 0 {
        Err(call_err(call(), Errno::from_ret(ret)))
    } else {
        Ok(ret)
    }
}

const EAL_NONE: u8 = 0;
const EAL_BUSY: u8 = 1;
const EAL_READY: u8 = 2;
static EAL_STATE: AtomicU8 = AtomicU8::new(EAL_NONE);

/// Proof that the EAL is initialised in this process (a zero-size token).
///
/// The EAL is never cleaned up (see the module docs), so the token stays valid
/// for the life of the process.
#[derive(Clone, Copy, Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (no program name: `dpgw` is prepended).
    ///
    /// Only one initialisation per process succeeds; a second call returns
    /// [`DpdkError::AlreadyInitialised`]. If DPDK rejects the arguments, DPDK itself
    /// decides whether a retry is allowed. The calling thread's CPU affinity is
    /// restored afterwards (`rte_eal_init` pins the caller to the main lcore, and
    /// threads spawned later would inherit that).
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        let argv0 = "dpgw".to_string();
        let cargs = std::iter::once(&argv0)
            .chain(args)
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::BadArgument(a.clone())))
            .collect::<Result<Vec<CString>, _>>()?;
        let argc = c_int::try_from(cargs.len())
            .map_err(|_| DpdkError::Config("too many EAL arguments".into()))?;
        if EAL_STATE
            .compare_exchange(EAL_NONE, EAL_BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DpdkError::AlreadyInitialised);
        }
        // rte_eal_init may permute argv (getopt); it gets its own pointer array.
        let mut argv: Vec<*mut c_char> = cargs.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(ptr::null_mut());
        let affinity = current_affinity();
        // SAFETY: argv holds argc pointers to NUL-terminated strings (plus a NULL
        // terminator) that stay alive (leaked on success); EAL_STATE guarantees no other thread
        // runs rte_eal_init concurrently, and at most one success per process.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            let errno = Errno::last();
            EAL_STATE.store(EAL_NONE, Ordering::Release);
            return Err(call_err(format!("rte_eal_init({})", args.join(" ")), errno));
        }
        if let Some(set) = affinity {
            restore_affinity(&set);
        }
        // Some of DPDK keeps pointers into argv (e.g. the syslog ident taken from
        // argv[0]); the strings live as long as the EAL does: the whole process.
        mem::forget(cargs);
        mem::forget(argv);
        EAL_STATE.store(EAL_READY, Ordering::Release);
        Ok(Eal { _private: () })
    }

    /// The token, if the EAL was initialised earlier in this process.
    pub fn get() -> Option<Eal> {
        (EAL_STATE.load(Ordering::Acquire) == EAL_READY).then_some(Eal { _private: () })
    }

    /// Number of lcores the EAL knows (its `-l` list plus registered threads).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: the EAL is initialised (self is the proof).
        unsafe { sys::rte_lcore_count() }
    }

    /// Ids of the available ethdev ports.
    pub fn port_ids(&self) -> Vec<u16> {
        let mut ids = Vec::new();
        let mut next = 0u16;
        loop {
            // SAFETY: the EAL is initialised; the function only reads the port table.
            let p = unsafe {
                sys::rte_eth_find_next_owned_by(next, u64::from(sys::RTE_ETH_DEV_NO_OWNER))
            };
            if p >= MAX_PORTS as u64 {
                break;
            }
            let Ok(p) = u16::try_from(p) else { break };
            ids.push(p);
            next = p + 1;
        }
        ids
    }

    /// The id of the port with this device name (e.g. `net_null0`, `0000:01:00.0`).
    pub fn port_by_name(&self, name: &str) -> Result<u16, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::NoSuchPortName(name.into()))?;
        let mut id = 0u16;
        // SAFETY: the EAL is initialised, c is NUL-terminated, id is writable.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if ret != 0 {
            return Err(DpdkError::NoSuchPortName(name.into()));
        }
        Ok(id)
    }

    /// The device name of a port.
    pub fn port_name(&self, port: u16) -> Option<String> {
        let mut buf = [0 as c_char; dpdk_sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: the EAL is initialised and buf is RTE_ETH_NAME_MAX_LEN bytes,
        // the size the function requires.
        let ret = unsafe { sys::rte_eth_dev_get_name_by_port(port, buf.as_mut_ptr()) };
        if ret != 0 {
            return None;
        }
        // SAFETY: on success the buffer holds a NUL-terminated name.
        Some(
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: set is a writable cpu_set_t of the size passed; pid 0 = this thread.
    let ret = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (ret == 0).then_some(set)
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: set is a valid cpu_set_t of the size passed; pid 0 = this thread.
    // Failure leaves the EAL's pinning in place, which is harmless.
    unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), set) };
}

/// An mbuf pool. Copyable handle; the pool itself is never freed (see module docs).
#[derive(Clone, Copy)]
pub struct Mempool {
    mp: NonNull<rte_mempool>,
}

// SAFETY: a DPDK mempool is multi-producer/multi-consumer safe (ring_mp_mc, the
// default handler) and lives until the process exits; the handle is a pointer.
unsafe impl Send for Mempool {}
// SAFETY: as above; every method takes &self and DPDK synchronises internally.
unsafe impl Sync for Mempool {}

impl fmt::Debug for Mempool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mempool")
            .field("ptr", &self.mp)
            .field("in_use", &self.in_use())
            .field("avail", &self.avail())
            .finish()
    }
}

impl Mempool {
    /// Creates a packet mbuf pool (`rte_pktmbuf_pool_create`) of `n_mbufs` mbufs with
    /// `data_room` bytes each (headroom included: use [`MBUF_DATA_ROOM`]), a per-lcore
    /// cache of `cache` mbufs, on NUMA `socket` (`None` = any).
    pub fn new(
        _eal: &Eal,
        name: &str,
        n_mbufs: u32,
        cache: u32,
        data_room: u16,
        socket: Option<u32>,
    ) -> Result<Mempool, DpdkError> {
        if cache > dpdk_sys::RTE_MEMPOOL_CACHE_MAX_SIZE
            || u64::from(cache) * 3 > u64::from(n_mbufs) * 2
        {
            return Err(DpdkError::Config(format!(
                "mbuf cache {cache} must be at most {} and at most 2/3 of the {n_mbufs} mbufs",
                dpdk_sys::RTE_MEMPOOL_CACHE_MAX_SIZE
            )));
        }
        if data_room <= MBUF_HEADROOM {
            return Err(DpdkError::Config(format!(
                "mbuf data room {data_room} must exceed the headroom {MBUF_HEADROOM}"
            )));
        }
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.into()))?;
        let socket_id = socket.map_or(dpdk_sys::SOCKET_ID_ANY, |s| {
            c_int::try_from(s).unwrap_or(dpdk_sys::SOCKET_ID_ANY)
        });
        // SAFETY: the EAL is initialised (_eal is the proof); cname is NUL-terminated.
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(cname.as_ptr(), n_mbufs, cache, 0, data_room, socket_id)
        };
        NonNull::new(mp).map(|mp| Mempool { mp }).ok_or_else(|| {
            call_err(
                format!("rte_pktmbuf_pool_create({name}, {n_mbufs} mbufs)"),
                Errno::last(),
            )
        })
    }

    /// The pool of this name, if one exists.
    ///
    /// # Safety
    /// A pool of that name, if any, must be a packet mbuf pool
    /// (`rte_pktmbuf_pool_create`): [`alloc`](Self::alloc) and RX queues treat it
    /// as one.
    pub unsafe fn lookup(_eal: &Eal, name: &str) -> Option<Mempool> {
        let cname = CString::new(name).ok()?;
        // SAFETY: the EAL is initialised; cname is NUL-terminated.
        let mp = unsafe { sys::rte_mempool_lookup(cname.as_ptr()) };
        NonNull::new(mp).map(|mp| Mempool { mp })
    }

    /// Mbufs currently allocated (held by drivers, queues or the engine).
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is live (never freed).
        unsafe { sys::rte_mempool_in_use_count(self.mp.as_ptr()) }
    }

    /// Mbufs free in the pool (ring plus per-lcore caches).
    pub fn avail(&self) -> u32 {
        // SAFETY: the pool is live (never freed).
        unsafe { sys::rte_mempool_avail_count(self.mp.as_ptr()) }
    }

    /// An empty single-segment mbuf (`data().is_empty()`, headroom [`MBUF_HEADROOM`]),
    /// or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is live and is a pktmbuf pool (created by
        // rte_pktmbuf_pool_create, or found by `lookup`, whose caller vouched for it).
        let m = unsafe { sys::dpdk_sys_rte_pktmbuf_alloc(self.mp.as_ptr()) };
        // SAFETY: a freshly allocated mbuf is owned by us, single-segment, refcnt 1.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }

    /// The raw pool pointer (for `dpdk_sys` calls).
    pub fn as_ptr(&self) -> *mut rte_mempool {
        self.mp.as_ptr()
    }
}

/// One single-segment packet buffer. Dropping it frees it to its pool.
pub struct Mbuf {
    m: NonNull<rte_mbuf>,
}

// SAFETY: an Mbuf is the unique owner of its buffer (refcnt 1, checked at RX);
// freeing from any thread is safe (mempools are MP/MC).
unsafe impl Send for Mbuf {}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("ptr", &self.m)
            .field("len", &self.raw().data_len)
            .field("headroom", &self.raw().data_off)
            .finish()
    }
}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `m` must be a valid mbuf that the caller owns exclusively (not referenced by
    /// a driver or another handle), with `nb_segs == 1` and refcnt 1, from a pool
    /// that is never freed.
    pub unsafe fn from_raw(m: NonNull<rte_mbuf>) -> Mbuf {
        Mbuf { m }
    }

    /// Gives up ownership; the caller must free or transmit the mbuf.
    pub fn into_raw(self) -> NonNull<rte_mbuf> {
        let m = self.m;
        mem::forget(self);
        m
    }

    /// The raw mbuf (still owned by `self`).
    pub fn as_ptr(&self) -> *mut rte_mbuf {
        self.m.as_ptr()
    }

    /// The port the driver says the mbuf was received on (`u16::MAX` when it does not
    /// say, e.g. `net_ring`, or for allocated mbufs).
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    fn raw(&self) -> &rte_mbuf {
        // SAFETY: self owns a valid mbuf (from_raw's contract); the header is only
        // written through &mut self.
        unsafe { self.m.as_ref() }
    }

    fn raw_mut(&mut self) -> &mut rte_mbuf {
        // SAFETY: as in raw(), and &mut self makes this the only reference.
        unsafe { self.m.as_mut() }
    }

    /// Sets data_len and keeps pkt_len equal to it (single segment).
    fn set_window(&mut self, off: u16, len: u16) {
        let r = self.raw_mut();
        r.data_off = off;
        r.data_len = len;
        r.pkt_len = u32::from(len);
    }
}

impl Packet for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        let r = self.raw();
        // SAFETY: for a single-segment mbuf, buf_addr + data_off .. + data_len lies
        // inside the mbuf's buffer (DPDK's invariant, kept by every method here);
        // the buffer is owned by self and only written through &mut self.
        unsafe {
            slice::from_raw_parts(
                r.buf_addr.cast::<u8>().add(usize::from(r.data_off)),
                usize::from(r.data_len),
            )
        }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let r = self.raw();
        let (addr, off, len) = (r.buf_addr.cast::<u8>(), r.data_off, r.data_len);
        // SAFETY: as in data(); &mut self guarantees exclusive access, and refcnt 1
        // (checked at RX, true for alloc) means no other mbuf shares the buffer.
        unsafe { slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)) }
    }

    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.raw().data_off)
    }

    #[inline]
    fn adj(&mut self, n: usize) {
        let r = self.raw();
        let (off, len) = (r.data_off, r.data_len);
        assert!(
            n <= usize::from(len),
            "Mbuf::adj({n}) on a {len}-byte packet"
        );
        // n <= len <= u16::MAX, and off + len <= buf_len.
        let n = n as u16;
        self.set_window(off + n, len - n);
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        let r = self.raw();
        let (off, len) = (r.data_off, r.data_len);
        if n > usize::from(off) {
            return false;
        }
        let n = n as u16;
        self.set_window(off - n, len + n);
        true
    }

    #[inline]
    fn trim(&mut self, len: usize) {
        let r = self.raw();
        let (off, cur) = (r.data_off, r.data_len);
        if len < usize::from(cur) {
            self.set_window(off, len as u16);
        }
    }
}

impl Mbuf {
    /// Bytes free after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        let r = self.raw();
        usize::from(r.buf_len).saturating_sub(usize::from(r.data_off) + usize::from(r.data_len))
    }

    /// Grows the data by `n` bytes at the end; false (and unchanged) without tailroom.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        let r = self.raw();
        let (off, len) = (r.data_off, r.data_len);
        // off + len + n <= buf_len <= u16::MAX.
        self.set_window(off, len + n as u16);
        true
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf (from_raw's contract) and it is not used after.
        unsafe { sys::dpdk_sys_rte_pktmbuf_free(self.m.as_ptr()) }
    }
}

/// Link state of a port.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Mbit/s; `None` when the driver does not know.
    pub speed_mbps: Option<u32>,
    pub full_duplex: bool,
    pub autoneg: bool,
}

/// Port counters (`rte_eth_stats`), as a plain struct.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PortStats {
    pub port: u16,
    pub name: String,
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Packets the hardware dropped because no RX descriptor was free.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// What a device can do (the parts of `rte_eth_dev_info` we use).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// RSS hash types the device supports (`flow_type_rss_offloads`; 0 = no RSS).
    pub rss_offloads: u64,
    /// NUMA socket of the device, `None` when unknown (virtual devices).
    pub socket: Option<u32>,
}

/// Ports claimed by a live [`Port`] in this process (bit per port id).
static PORTS_IN_USE: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(MAX_PORTS <= 64);

/// Exclusive control of one ethdev port. Dropping it stops the port if started.
#[derive(Debug)]
pub struct Port {
    id: u16,
    name: String,
    started: bool,
    rss: bool,
}

impl Port {
    /// Claims port `id` (one [`Port`] per port id at a time in this process).
    pub fn new(eal: &Eal, id: u16) -> Result<Port, DpdkError> {
        // SAFETY: the EAL is initialised; the call only reads the port table.
        if usize::from(id) >= MAX_PORTS || unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            let ids = eal.port_ids();
            let names = ids
                .iter()
                .map(|p| format!("{p}={}", eal.port_name(*p).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(DpdkError::NoSuchPort {
                port: id,
                available: ids.len() as u16,
                names,
            });
        }
        let bit = 1u64 << id;
        if PORTS_IN_USE.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return Err(DpdkError::PortBusy(id));
        }
        Ok(Port {
            id,
            name: eal.port_name(id).unwrap_or_default(),
            started: false,
            rss: false,
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// The device name (`net_null0`, `0000:01:00.0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when [`configure`](Self::configure) turned RSS on.
    pub fn rss_enabled(&self) -> bool {
        self.rss
    }

    pub fn info(&self) -> Result<PortInfo, DpdkError> {
        let info = self.raw_info()?;
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name points to the driver's static NUL-terminated name.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: the port id is valid (checked in new).
        let socket = unsafe { sys::rte_eth_dev_socket_id(self.id) };
        Ok(PortInfo {
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            rss_offloads: info.flow_type_rss_offloads,
            socket: u32::try_from(socket).ok(),
        })
    }

    fn raw_info(&self) -> Result<rte_eth_dev_info, DpdkError> {
        let mut info = rte_eth_dev_info::default();
        // SAFETY: the port id is valid and info is a writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(self.id, &mut info) };
        check(ret, || format!("rte_eth_dev_info_get(port {})", self.id))?;
        Ok(info)
    }

    /// Configures `rxq` RX and `txq` TX queues. RSS (IP/TCP/UDP hash types the
    /// device supports) is enabled when `rss` is set, there is more than one RX
    /// queue and the device reports RSS offloads (`net_null` reports emulated ones).
    pub fn configure(&mut self, rxq: u16, txq: u16, rss: bool) -> Result<(), DpdkError> {
        let info = self.raw_info()?;
        if rxq > info.max_rx_queues || txq > info.max_tx_queues {
            return Err(DpdkError::Config(format!(
                "port {} ({}) supports {} RX / {} TX queues, {rxq} / {txq} wanted",
                self.id, self.name, info.max_rx_queues, info.max_tx_queues
            )));
        }
        let mut conf = rte_eth_conf::default();
        self.rss = false;
        if rss && rxq > 1 && info.flow_type_rss_offloads != 0 {
            // SAFETY: pure function returning a constant.
            let hf = unsafe { sys::dpdk_sys_rss_hf_ip_tcp_udp() } & info.flow_type_rss_offloads;
            if hf != 0 {
                conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_hf = hf;
                self.rss = true;
            }
        }
        // SAFETY: the port id is valid, conf is a fully initialised configuration
        // that lives across the call, and this Port has exclusive control.
        let ret = unsafe { sys::rte_eth_dev_configure(self.id, rxq, txq, &conf) };
        check(ret, || {
            format!(
                "rte_eth_dev_configure(port {}, {rxq} rxq, {txq} txq)",
                self.id
            )
        })?;
        Ok(())
    }

    /// Rounds descriptor counts to the device's limits.
    pub fn adjust_desc(&self, rx: u16, tx: u16) -> Result<(u16, u16), DpdkError> {
        let (mut rx, mut tx) = (rx, tx);
        // SAFETY: the port id is valid; rx and tx are writable u16s.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.id, &mut rx, &mut tx) };
        check(ret, || {
            format!("rte_eth_dev_adjust_nb_rx_tx_desc(port {})", self.id)
        })?;
        Ok((rx, tx))
    }

    /// Sets up RX queue `q` with `desc` descriptors, filled from `pool`.
    pub fn rx_queue_setup(&mut self, q: u16, desc: u16, pool: Mempool) -> Result<(), DpdkError> {
        let socket = self
            .info()?
            .socket
            .unwrap_or(dpdk_sys::SOCKET_ID_ANY as u32);
        // SAFETY: the port is configured by this Port; a NULL rxconf means the
        // driver's defaults; the pool is a live pktmbuf pool that is never freed.
        let ret = unsafe {
            sys::rte_eth_rx_queue_setup(self.id, q, desc, socket, ptr::null(), pool.as_ptr())
        };
        check(ret, || {
            format!(
                "rte_eth_rx_queue_setup(port {}, queue {q}, {desc} desc)",
                self.id
            )
        })?;
        Ok(())
    }

    /// Sets up TX queue `q` with `desc` descriptors.
    pub fn tx_queue_setup(&mut self, q: u16, desc: u16) -> Result<(), DpdkError> {
        let socket = self
            .info()?
            .socket
            .unwrap_or(dpdk_sys::SOCKET_ID_ANY as u32);
        // SAFETY: the port is configured by this Port; a NULL txconf means the
        // driver's defaults.
        let ret = unsafe { sys::rte_eth_tx_queue_setup(self.id, q, desc, socket, ptr::null()) };
        check(ret, || {
            format!(
                "rte_eth_tx_queue_setup(port {}, queue {q}, {desc} desc)",
                self.id
            )
        })?;
        Ok(())
    }

    /// Enables promiscuous mode; false when the driver does not support it.
    pub fn promiscuous_enable(&mut self) -> bool {
        // SAFETY: the port id is valid and controlled by this Port.
        unsafe { sys::rte_eth_promiscuous_enable(self.id) == 0 }
    }

    pub fn start(&mut self) -> Result<(), DpdkError> {
        // SAFETY: the port id is valid and controlled by this Port.
        let ret = unsafe { sys::rte_eth_dev_start(self.id) };
        check(ret, || {
            format!("rte_eth_dev_start(port {} {})", self.id, self.name)
        })?;
        self.started = true;
        Ok(())
    }

    /// Stops the port (its queues must not be polled any more).
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        if !self.started {
            return Ok(());
        }
        self.started = false;
        // SAFETY: the port id is valid and controlled by this Port; DpdkQueues keep
        // the Port alive, so no queue of it is polled once this runs.
        let ret = unsafe { sys::rte_eth_dev_stop(self.id) };
        check(ret, || format!("rte_eth_dev_stop(port {})", self.id))?;
        Ok(())
    }

    /// Stops and closes the port, releasing the device (a virtual device's port
    /// id disappears).
    pub fn close(mut self) -> Result<(), DpdkError> {
        self.stop()?;
        // SAFETY: the port is stopped and controlled by this Port, which is consumed.
        let ret = unsafe { sys::rte_eth_dev_close(self.id) };
        check(ret, || format!("rte_eth_dev_close(port {})", self.id))?;
        Ok(())
    }

    pub fn link(&self) -> Result<LinkStatus, DpdkError> {
        let mut link = rte_eth_link::default();
        // SAFETY: the port id is valid and link is writable.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.id, &mut link) };
        check(ret, || format!("rte_eth_link_get_nowait(port {})", self.id))?;
        let l = link;
        let speed = l.link_speed;
        Ok(LinkStatus {
            up: u32::from(l.link_status()) == dpdk_sys::RTE_ETH_LINK_UP,
            speed_mbps: (speed != dpdk_sys::RTE_ETH_SPEED_NUM_NONE
                && speed != dpdk_sys::RTE_ETH_SPEED_NUM_UNKNOWN)
                .then_some(speed),
            full_duplex: u32::from(l.link_duplex()) == dpdk_sys::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: l.link_autoneg() != 0,
        })
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = rte_eth_stats::default();
        // SAFETY: the port id is valid and s is writable.
        let ret = unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        check(ret, || format!("rte_eth_stats_get(port {})", self.id))?;
        Ok(PortStats {
            port: self.id,
            name: self.name.clone(),
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    pub fn stats_reset(&mut self) -> Result<(), DpdkError> {
        // SAFETY: the port id is valid and controlled by this Port.
        let ret = unsafe { sys::rte_eth_stats_reset(self.id) };
        check(ret, || format!("rte_eth_stats_reset(port {})", self.id))?;
        Ok(())
    }

    /// The port's MAC address.
    pub fn mac_addr(&self) -> Result<[u8; 6], DpdkError> {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: the port id is valid and mac is writable.
        let ret = unsafe { sys::rte_eth_macaddr_get(self.id, &mut mac) };
        check(ret, || format!("rte_eth_macaddr_get(port {})", self.id))?;
        Ok(mac.addr_bytes)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Best effort: a failed stop leaves the port running, nothing to do about it.
        let _ = self.stop();
        PORTS_IN_USE.fetch_and(!(1u64 << self.id), Ordering::AcqRel);
    }
}

/// State shared by a runtime and its queues; the ports stop when the last goes.
#[derive(Debug)]
struct Shared {
    eal: Eal,
    ports: Vec<Port>,
    pools: Vec<Mempool>,
}

/// The ports and pools of one [`open`]; telemetry for the control side.
#[derive(Debug)]
pub struct DpdkRuntime {
    shared: Arc<Shared>,
}

impl DpdkRuntime {
    /// Configures and starts the ports of `cfg` on an initialised EAL with one RX and
    /// one TX queue per worker on each port, and returns one [`DpdkQueue`] per worker
    /// (worker `i` uses queue `i`). Port counters are reset. `cfg.eal_args` is
    /// ignored here.
    pub fn open(
        eal: &Eal,
        cfg: &DpdkConfig,
        workers: usize,
    ) -> Result<(DpdkRuntime, Vec<DpdkQueue>), DpdkError> {
        let nq = u16::try_from(workers)
            .ok()
            .filter(|n| *n > 0 && u32::from(*n) <= dpdk_sys::RTE_MAX_QUEUES_PER_PORT)
            .ok_or_else(|| {
                DpdkError::Config(format!(
                    "workers = {workers}: need 1..=1024 queues per port"
                ))
            })?;
        if cfg.ports.is_empty() {
            return Err(DpdkError::Config(
                "ports: at least one port is needed".into(),
            ));
        }
        let tx_port = cfg.tx_port.unwrap_or(cfg.ports[0]);
        let mut ids: Vec<u16> = cfg.ports.clone();
        ids.push(tx_port);
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != cfg.ports.len() + usize::from(!cfg.ports.contains(&tx_port)) {
            return Err(DpdkError::Config(format!(
                "ports {:?}: a port is listed twice",
                cfg.ports
            )));
        }
        // Every descriptor of every RX ring can hold an mbuf, every worker can hold
        // a full burst and its cache: fewer mbufs than that can stall RX for good.
        let need = u64::from(cfg.rx_desc) * u64::from(nq) * ids.len() as u64
            + workers as u64 * (MAX_BURST as u64 + u64::from(cfg.mbuf_cache));
        if u64::from(cfg.mbufs) < need {
            return Err(DpdkError::Config(format!(
                "mbufs = {} is too few for {} port(s) x {workers} worker(s) x {} RX descriptors \
                 plus bursts and caches: at least {need}",
                cfg.mbufs,
                ids.len(),
                cfg.rx_desc
            )));
        }

        let mut ports = ids
            .iter()
            .map(|id| Port::new(eal, *id))
            .collect::<Result<Vec<_>, _>>()?;
        // Queue limits first: cheaper to report than a failed pool allocation.
        for port in &ports {
            let info = port.info()?;
            if nq > info.max_rx_queues || nq > info.max_tx_queues {
                return Err(DpdkError::Config(format!(
                    "port {} ({}) supports {} RX / {} TX queues, {workers} workers need {nq} of each",
                    port.id, port.name, info.max_rx_queues, info.max_tx_queues
                )));
            }
        }
        let mut pools: Vec<(Option<u32>, Mempool)> = Vec::new();
        for port in &mut ports {
            let socket = port.info()?.socket;
            let pool = match pools.iter().find(|(s, _)| *s == socket) {
                Some((_, p)) => *p,
                None => {
                    let s = socket.map_or("any".to_string(), |s| s.to_string());
                    // Same parameters, same pool: a later open in this process reuses it.
                    let name = format!("dpgw_{s}_{}_{}", cfg.mbufs, cfg.mbuf_cache);
                    // SAFETY: the "dpgw_" names are given only to pktmbuf pools,
                    // by this function.
                    let p = match unsafe { Mempool::lookup(eal, &name) } {
                        Some(p) => p,
                        None => Mempool::new(
                            eal,
                            &name,
                            cfg.mbufs,
                            cfg.mbuf_cache,
                            MBUF_DATA_ROOM,
                            socket,
                        )?,
                    };
                    pools.push((socket, p));
                    p
                }
            };
            port.configure(nq, nq, cfg.rss)?;
            let (rxd, txd) = port.adjust_desc(cfg.rx_desc, cfg.tx_desc)?;
            for q in 0..nq {
                port.rx_queue_setup(q, rxd, pool)?;
                port.tx_queue_setup(q, txd)?;
            }
            if cfg.promiscuous {
                port.promiscuous_enable();
            }
            port.start()?;
            // Counters describe this runtime, not an earlier one on the same port
            // (drivers without a reset keep counting; not an error).
            let _ = port.stats_reset();
        }
        let shared = Arc::new(Shared {
            eal: *eal,
            ports,
            pools: pools.into_iter().map(|(_, p)| p).collect(),
        });
        let rx_pool = shared.pools[0];
        let queues = (0..nq)
            .map(|q| DpdkQueue {
                _shared: Arc::clone(&shared),
                rx_ports: cfg.ports.clone(),
                next_rx: 0,
                tx_port,
                queue: q,
                pool: rx_pool,
                thread_ready: false,
                stats: QueueStats::default(),
            })
            .collect();
        Ok((DpdkRuntime { shared }, queues))
    }

    /// Counters of every port (RX ports and the TX port), in port id order.
    pub fn port_stats(&self) -> Vec<PortStats> {
        self.shared
            .ports
            .iter()
            .map(|p| {
                p.stats().unwrap_or_else(|_| PortStats {
                    port: p.id,
                    name: p.name.clone(),
                    ..PortStats::default()
                })
            })
            .collect()
    }

    /// Link state of every port, in port id order.
    pub fn links(&self) -> Vec<(u16, LinkStatus)> {
        self.shared
            .ports
            .iter()
            .map(|p| (p.id, p.link().unwrap_or_default()))
            .collect()
    }

    /// The ports, in port id order.
    pub fn ports(&self) -> &[Port] {
        &self.shared.ports
    }

    /// The mbuf pools (one per NUMA socket in use).
    pub fn mempools(&self) -> &[Mempool] {
        &self.shared.pools
    }

    /// Mbufs currently allocated from this runtime's pools.
    pub fn mbufs_in_use(&self) -> u64 {
        self.shared
            .pools
            .iter()
            .map(|p| u64::from(p.in_use()))
            .sum()
    }

    pub fn eal(&self) -> Eal {
        self.shared.eal
    }
}

impl DpdkRuntime {
    /// A reader of the ports' counters for the control side, which does not
    /// hold the runtime (the runner installs it with `engine::Shared::set_port_source`): it
    /// answers while the runtime (or one of its queues) is alive, and nothing
    /// after (a weak handle: it keeps no port open).
    pub fn port_source(&self) -> super::PortSource {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        Box::new(move || match weak.upgrade() {
            Some(shared) => DpdkRuntime { shared }
                .port_stats()
                .into_iter()
                .map(|p| ctl::PortCounters {
                    port: p.port,
                    name: p.name,
                    ipackets: p.ipackets,
                    opackets: p.opackets,
                    ibytes: p.ibytes,
                    obytes: p.obytes,
                    imissed: p.imissed,
                    ierrors: p.ierrors,
                    oerrors: p.oerrors,
                    rx_nombuf: p.rx_nombuf,
                })
                .collect(),
            None => Vec::new(),
        })
    }
}

/// Initialises the EAL from `cfg.eal_args` and opens the ports (see
/// [`DpdkRuntime::open`]). Once per process: the EAL cannot be initialised twice.
pub fn open(cfg: &DpdkConfig, workers: usize) -> Result<(DpdkRuntime, Vec<DpdkQueue>), DpdkError> {
    let eal = Eal::init(&cfg.eal_args)?;
    DpdkRuntime::open(&eal, cfg, workers)
}

/// Per-queue counters for what never reaches the engine.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Multi-segment frames made single-segment in place.
    pub rx_linearized: u64,
    /// Multi-segment (or shared) frames freed at RX because they could not be
    /// made single-segment.
    pub rx_multiseg_dropped: u64,
}

/// One worker's queue pair: RX queue `queue_id` on each RX port, TX queue
/// `queue_id` on the TX port.
#[derive(Debug)]
pub struct DpdkQueue {
    /// Keeps the ports started (and the runtime's state alive) while the queue lives.
    _shared: Arc<Shared>,
    rx_ports: Vec<u16>,
    next_rx: usize,
    tx_port: u16,
    queue: u16,
    pool: Mempool,
    /// on_worker_thread ran (explicitly, or lazily at the first rx_burst).
    thread_ready: bool,
    stats: QueueStats,
}

impl DpdkQueue {
    /// Call first thing on the worker thread: gives the thread an EAL lcore id
    /// (`rte_thread_register`) so the mempool's per-lcore cache is used; the id is
    /// released when the thread exits. Returns the lcore id, or `None` if none was
    /// free (the queue then works without the cache).
    ///
    /// `rx_burst` calls it by itself the first time, so an engine that knows
    /// nothing about DPDK gets the cache on the thread that polls the queue.
    pub fn on_worker_thread(&mut self) -> Option<u32> {
        self.thread_ready = true;
        // SAFETY: reads the calling thread's TLS lcore id; the EAL is initialised.
        let id = unsafe { sys::dpdk_sys_rte_lcore_id() };
        if id != dpdk_sys::LCORE_ID_ANY {
            return Some(id);
        }
        // SAFETY: the EAL is initialised (the queue exists); registers this thread only.
        if unsafe { sys::rte_thread_register() } != 0 {
            return None;
        }
        // The id is the thread's until it exits (the queue may be dropped elsewhere).
        let kept = LCORE_REGISTRATION
            .try_with(|r| *r.borrow_mut() = Some(LcoreRegistration))
            .is_ok();
        if !kept {
            // SAFETY: this thread registered itself just above; undo it.
            unsafe { sys::rte_thread_unregister() };
            return None;
        }
        // SAFETY: as above.
        Some(unsafe { sys::dpdk_sys_rte_lcore_id() })
    }

    /// The queue id this worker uses on every port.
    pub fn queue_id(&self) -> u16 {
        self.queue
    }

    pub fn tx_port(&self) -> u16 {
        self.tx_port
    }

    pub fn rx_ports(&self) -> &[u16] {
        &self.rx_ports
    }

    /// The pool RX fills from (for building packets, e.g. replies).
    pub fn mempool(&self) -> Mempool {
        self.pool
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Makes a received mbuf single-segment and unshared, or frees it.
    #[cold]
    fn fix_multiseg(&mut self, m: NonNull<rte_mbuf>) -> Option<Mbuf> {
        // SAFETY: m was just received: the driver handed ownership to us.
        let r = unsafe { m.as_ref() };
        // SAFETY: as above; reading the refcnt field of a live mbuf.
        let shared = r.refcnt != 1;
        // SAFETY: m is an owned, unshared chain; linearize copies the tail segments
        // into the first one when there is room, frees them, and fails otherwise.
        if !shared && unsafe { sys::dpdk_sys_rte_pktmbuf_linearize(m.as_ptr()) } == 0 {
            self.stats.rx_linearized += 1;
            // SAFETY: now a single-segment mbuf with refcnt 1 that we own.
            return Some(unsafe { Mbuf::from_raw(m) });
        }
        self.stats.rx_multiseg_dropped += 1;
        // SAFETY: we own the chain (or our reference to a shared one); freeing drops it.
        unsafe { sys::dpdk_sys_rte_pktmbuf_free(m.as_ptr()) };
        None
    }
}

impl Queue for DpdkQueue {
    type Pkt = Mbuf;

    fn alloc_frame(&mut self, frame: &[u8]) -> Option<Mbuf> {
        let mut m = self.pool.alloc()?;
        if !m.append(frame.len()) {
            return None;
        }
        m.data_mut().copy_from_slice(frame);
        Some(m)
    }

    fn rx_burst(&mut self, burst: &mut Burst<Mbuf>, max: usize) -> usize {
        if !self.thread_ready {
            self.on_worker_thread();
        }
        let want = max.min(burst.remaining_capacity());
        let mut raw = [const { MaybeUninit::<*mut rte_mbuf>::uninit() }; MAX_BURST];
        let nports = self.rx_ports.len();
        let mut added = 0;
        for i in 0..nports {
            let left = want - added;
            if left == 0 {
                break;
            }
            // next_rx < nports and i < nports: one subtraction, not a
            // division per burst.
            let at = self.next_rx + i;
            let port = self.rx_ports[if at >= nports { at - nports } else { at }];
            // SAFETY: the port is started and kept so by self._shared; queue
            // `self.queue` was set up on it and is polled only through this
            // DpdkQueue (&mut self); raw has room for left <= MAX_BURST pointers.
            let n = unsafe {
                sys::dpdk_sys_rte_eth_rx_burst(
                    port,
                    self.queue,
                    raw.as_mut_ptr().cast(),
                    left as u16,
                )
            };
            for slot in &raw[..usize::from(n)] {
                // SAFETY: the driver wrote the first n slots.
                let Some(m) = NonNull::new(unsafe { slot.assume_init() }) else {
                    continue;
                };
                // SAFETY: m is a received mbuf, owned by us now.
                let r = unsafe { m.as_ref() };
                // One compare of the two adjacent u16 fields.
                let pkt = if (u32::from(r.nb_segs) << 16 | u32::from(r.refcnt)) == 0x1_0001 {
                    // SAFETY: single-segment, refcnt 1, owned, from a never-freed pool.
                    unsafe { Mbuf::from_raw(m) }
                } else {
                    match self.fix_multiseg(m) {
                        Some(p) => p,
                        None => continue,
                    }
                };
                // Cannot fail (at most remaining_capacity were requested); if it
                // did, the packet is dropped (freed) rather than leaked.
                if burst.try_push(pkt).is_ok() {
                    added += 1;
                }
            }
        }
        if nports > 1 {
            self.next_rx = (self.next_rx + 1) % nports;
        }
        added
    }

    fn tx_burst(&mut self, burst: &mut Burst<Mbuf>) -> usize {
        let n = burst.len();
        if n == 0 {
            return 0;
        }
        let mut raw = [const { MaybeUninit::<*mut rte_mbuf>::uninit() }; MAX_BURST];
        for (slot, m) in raw.iter_mut().zip(burst.iter()) {
            slot.write(m.as_ptr());
        }
        // SAFETY: the TX port is started and kept so by self._shared; TX queue
        // `self.queue` is used only through this DpdkQueue (&mut self); the first n
        // slots hold valid single-segment mbufs we own. The driver takes ownership
        // of the first `sent` of them.
        let sent = unsafe {
            sys::dpdk_sys_rte_eth_tx_burst(
                self.tx_port,
                self.queue,
                raw.as_mut_ptr().cast(),
                n as u16,
            )
        };
        let sent = usize::from(sent).min(n);
        // The driver owns the sent mbufs now: forget our handles, keep the rest.
        burst.drain(..sent).for_each(mem::forget);
        sent
    }

    fn free(&mut self, pkt: Mbuf) {
        drop(pkt);
    }

    fn free_burst(&mut self, pkts: &mut Burst<Mbuf>) {
        let mut raw = [const { MaybeUninit::<*mut rte_mbuf>::uninit() }; MAX_BURST];
        let mut n = 0;
        for m in pkts.drain(..) {
            raw[n].write(m.into_raw().as_ptr());
            n += 1;
        }
        // SAFETY: the first n slots hold single-segment mbufs we owned (their
        // handles were consumed by into_raw, so nothing frees them twice);
        // the shim returns each to its pool (what rte_pktmbuf_free_bulk does,
        // about 2 cycles/packet cheaper on net_null).
        unsafe { sys::dpdk_sys_free_simple_bulk(raw.as_mut_ptr().cast(), n as u32) };
    }
}

/// Held in a thread-local by a thread that `rte_thread_register` gave an lcore id:
/// its destructor runs on that thread when it exits and releases the id.
struct LcoreRegistration;

impl Drop for LcoreRegistration {
    fn drop(&mut self) {
        // SAFETY: a thread-local's destructor runs on its own thread, which
        // registered itself; the call releases the calling thread's lcore id. Mbufs
        // left in that lcore's mempool cache stay counted as available and are
        // reused by the next thread that gets the id.
        unsafe { sys::rte_thread_unregister() };
    }
}

thread_local! {
    static LCORE_REGISTRATION: std::cell::RefCell<Option<LcoreRegistration>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_overrides() {
        let c: DpdkConfig = toml::from_str("").unwrap();
        assert_eq!(c, DpdkConfig::default());
        assert_eq!(c.ports, vec![0]);
        assert_eq!(
            (c.rx_desc, c.tx_desc, c.mbufs, c.mbuf_cache),
            (1024, 1024, 8191, 256)
        );
        assert!(c.rss && c.promiscuous && c.tx_port.is_none());

        let c: DpdkConfig = toml::from_str(
            "eal_args = [\"--no-huge\", \"--vdev=net_null0\"]\nports = [1, 2]\ntx_port = 3\nrss = false\n",
        )
        .unwrap();
        assert_eq!(c.eal_args, vec!["--no-huge", "--vdev=net_null0"]);
        assert_eq!((c.ports, c.tx_port, c.rss), (vec![1, 2], Some(3), false));
    }

    #[test]
    fn config_rejects_unknown_and_bad_values() {
        let e = toml::from_str::<DpdkConfig>("port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `port`"), "{e}");
        assert!(toml::from_str::<DpdkConfig>("ports = [70000]\n").is_err());
        assert!(toml::from_str::<DpdkConfig>("rx_desc = -1\n").is_err());
    }

    #[test]
    fn errno_text_comes_from_dpdk() {
        // rte_strerror needs no EAL: plain errno values and DPDK's own.
        assert!(Errno(libc::ENOMEM).to_string().contains("errno 12"));
        assert_eq!(Errno::from_ret(-22), Errno(22));
    }
}
