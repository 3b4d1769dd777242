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

/// CPU ids a thread can be pinned to: 0..MAX_CPUS (the kernel's `cpu_set_t`).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Restricts the calling thread (and the threads it starts from now on,
/// which inherit the mask) to `cpus`. Errors name the CPU set and the
/// kernel's reason (e.g. a CPU that is not online).
pub fn pin_thread_to(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= MAX_CPUS {
            return Err(format!("CPU {c} is out of range (0..{MAX_CPUS})"));
        }
        // SAFETY: c < CPU_SETSIZE, the size of the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size passed; pid 0 = the
    // calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(format!(
            "cannot pin to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The CPUs online on this machine (`/sys/devices/system/cpu/online`, e.g.
/// `0-3,6`), whatever the calling thread's own mask; if that cannot be
/// read, the CPUs the calling thread may run on.
pub fn online_cpus() -> Vec<usize> {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()));
    match parsed {
        Some(v) if !v.is_empty() => v,
        _ => core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
    }
}

/// A kernel CPU list (`0-3,6`) as ids; `None` if malformed.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b >= MAX_CPUS {
                    return None;
                }
                v.extend(a..=b);
            }
            None => v.push(part.parse().ok()?),
        }
    }
    Some(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_cpu_list() {
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert!(online_cpus().contains(&0));
    }

    #[test]
    fn test_pin_thread_to() {
        // On a thread of its own: the mask stays with it.
        std::thread::spawn(|| {
            let e = pin_thread_to(&[MAX_CPUS]).unwrap_err();
            assert!(e.contains("out of range"), "{e}");
            // CPU 1023 is not online on any machine this runs on.
            let e = pin_thread_to(&[MAX_CPUS - 1]).unwrap_err();
            assert!(e.starts_with("cannot pin to CPUs [1023]"), "{e}");
            pin_thread_to(&[0]).unwrap();
            let allowed = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let line = allowed
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap();
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        })
        .join()
        .unwrap();
    }
}
