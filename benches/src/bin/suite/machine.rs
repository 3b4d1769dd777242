//! What the numbers were measured on: CPU, cores, TSC rate, commit, date.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dataplane::cpu::rdtsc;
use serde::Serialize;

/// The machine and source tree a report was produced on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs this process may run on (`available_parallelism`).
    pub cores: usize,
    /// Invariant TSC rate, calibrated against the monotonic clock.
    pub tsc_ghz: f64,
    pub kernel: String,
    pub git_commit: String,
    /// The working tree had uncommitted changes.
    pub git_dirty: bool,
    /// Start of the run, UTC, RFC 3339.
    pub date_utc: String,
    /// 1-minute load average at the start (a shared machine makes numbers noisy).
    pub load_avg_start: f64,
    pub hostname: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let git_commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let git_dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        Machine {
            cpu_model,
            cores,
            tsc_ghz: tsc_ghz(),
            kernel,
            git_commit,
            git_dirty,
            date_utc: utc_now(),
            load_avg_start: load_avg(),
            hostname,
        }
    }
}

/// 1-minute load average (0 if unknown).
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// `/proc/<pid>/stat` (all threads, including exited ones; 10 ms resolution).
/// `None` = this process.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100).
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time of this process (all threads, including exited ones) in seconds,
/// with nanosecond resolution (`CLOCK_PROCESS_CPUTIME_ID`); falls back to
/// `/proc/self/stat` (10 ms resolution).
pub fn process_cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    } else {
        cpu_seconds(None)
    }
}

/// TSC ticks per nanosecond: the median of five 40 ms calibrations.
pub fn tsc_ghz() -> f64 {
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let c0 = rdtsc();
            while t0.elapsed() < Duration::from_millis(40) {
                std::hint::spin_loop();
            }
            let c1 = rdtsc();
            c1.wrapping_sub(c0) as f64 / t0.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the epoch as RFC 3339 UTC (civil-from-days, H. Hinnant).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpu_seconds_grows() {
        // Spin until the precise clock shows 0.3 s of CPU (however busy the
        // machine is), then the coarse /proc figure must have moved too.
        let a = cpu_seconds(None).unwrap();
        let p0 = process_cpu_seconds().unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while process_cpu_seconds().unwrap() - p0 < 0.3 && t.elapsed() < Duration::from_secs(60) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let b = cpu_seconds(None).unwrap();
        assert!(b - a >= 0.2, "/proc/self/stat: {a} -> {b}");
        assert!(process_cpu_seconds().unwrap() - p0 >= 0.3);
    }

    #[test]
    fn test_format_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_398_264), "2026-11-23T01:44:24Z");
    }
}
