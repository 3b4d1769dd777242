//! What the harnesses that run `dpgw run` as a child share: a guard that
//! stops it (SIGTERM, then SIGKILL after 10 s) and a reader of one of its
//! threads' on-CPU time.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Owns a running daemon; dropping it stops the daemon.
pub struct Daemon(pub Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// On-CPU time of the thread named `name` of process `pid`, ns (`schedstat`).
pub fn thread_cpu_ns(pid: u32, name: &str) -> Option<u64> {
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            return s.split_whitespace().next()?.parse().ok();
        }
    }
    None
}
