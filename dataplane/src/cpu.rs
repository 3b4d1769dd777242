//! CPU helpers for the fast path and the benchmarks: the time-stamp counter,
//! prefetch hints, the scheduler's on-CPU time of a thread, and a thread's
//! priority. The one copy
//! of each (benches use these too).

/// Nanoseconds the calling thread has run on a CPU (Linux schedstat); 0 if unknown.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Gives the calling thread the lowest scheduling priority (nice 19), so that
/// background work on it (the ACL recompile) yields to the control loop and
/// the workers on a shared core. Best effort: failure is ignored.
pub fn lower_thread_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours; on Linux, PRIO_PROCESS with who = 0 sets the calling thread's
    // nice value only (it is a per-thread attribute under NPTL).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS as _, 0, 19);
    }
}

/// Asks the CPU to bring the cache line holding `p` into its caches, without
/// waiting for it (a no-op on non-x86 targets). `p` need not be valid.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: PREFETCHT0 is a hint: it performs no architectural memory
        // access and cannot fault, whatever the address; SSE is part of x86-64.
        unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
    }
}

/// Reads the CPU's time-stamp counter (0 on non-x86 targets).
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no memory effects and is available on every x86-64 CPU.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}
